//! The host model's run loop, in real time: the application's writes (from
//! a [`Workload`]) enter a write cache of fixed capacity; the cache issues
//! them to the mirror device in order with at most `max_outstanding` in
//! flight; a write leaves the cache when the device acknowledges it. Dirty %
//! is the share of the capacity held by written-but-unacknowledged data;
//! when the next write does not fit, the application stalls until an
//! acknowledgement frees room, then resumes at its own pace. Every
//! `sample_interval` a [`Sample`] is recorded, and every `report_interval`
//! the dirty % is reported to the sink.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::data::snap_ratio;
use super::series::{quantile, Sample, Summary, TimeSeries};
use super::workload::{PlannedWrite, Workload, WorkloadConfig};
use super::MirrorSink;

/// A host run that cannot start.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HostError {
    #[error("the cache ({cache} bytes) must hold at least one block ({block} bytes)")]
    CacheTooSmall { cache: u64, block: u32 },
    #[error("give a duration or a byte count, or the application never stops")]
    Endless,
    #[error("{0} must be positive")]
    Zero(&'static str),
}

/// Everything about one host run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HostConfig {
    /// A name for the run (the legend of its plot).
    pub scenario: String,
    pub workload: WorkloadConfig,
    /// Write cache capacity in bytes.
    pub cache_bytes: u64,
    /// Most writes issued to the device and not yet acknowledged.
    pub max_outstanding: usize,
    pub sample_interval: Duration,
    /// How often the dirty % is reported to the sink.
    pub report_interval: Duration,
    /// The application stops writing after this long...
    pub duration: Option<Duration>,
    /// ...or after writing this many bytes, whichever comes first.
    pub total_bytes: Option<u64>,
    /// After the application stops, keep running until the cache is clean.
    pub drain: bool,
    /// Longest wait for the cache to drain.
    pub drain_timeout: Duration,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            scenario: "host".into(),
            workload: WorkloadConfig::default(),
            cache_bytes: 64 << 20,
            max_outstanding: 32,
            sample_interval: Duration::from_millis(100),
            report_interval: Duration::from_millis(100),
            duration: Some(Duration::from_secs(10)),
            total_bytes: None,
            drain: true,
            drain_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Default)]
struct Acc {
    dirty: u64,
    outstanding: u64,
    acked_interval: u64,
    acked_total: u64,
    lat_interval: Vec<f64>,
    lat_all: Vec<f64>,
    failed: u64,
}

struct Shared {
    acc: Mutex<Acc>,
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Acc> {
        // A panicking sink callback must not wedge the model: keep the data.
        self.acc.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        bytes as f64 * 8.0 / d.as_secs_f64() / 1e6
    }
}

/// Runs the model against `sink` until the application stops (and, with
/// `drain`, the cache is clean); returns what it recorded.
pub fn run(cfg: &HostConfig, sink: Arc<dyn MirrorSink>) -> Result<TimeSeries, HostError> {
    let block = cfg.workload.block_size;
    if block == 0 {
        return Err(HostError::Zero("block size"));
    }
    if cfg.cache_bytes < block as u64 {
        return Err(HostError::CacheTooSmall {
            cache: cfg.cache_bytes,
            block,
        });
    }
    if cfg.duration.is_none() && cfg.total_bytes.is_none() {
        return Err(HostError::Endless);
    }
    if cfg.sample_interval.is_zero() {
        return Err(HostError::Zero("sample interval"));
    }
    if cfg.max_outstanding == 0 {
        return Err(HostError::Zero("max outstanding"));
    }
    let report_every = if cfg.report_interval.is_zero() {
        cfg.sample_interval
    } else {
        cfg.report_interval
    };

    let shared = Arc::new(Shared {
        acc: Mutex::new(Acc::default()),
        cv: Condvar::new(),
    });
    let cap = cfg.cache_bytes;
    let pct = |bytes: u64| bytes as f64 * 100.0 / cap as f64;
    let mut wl = Workload::new(cfg.workload.clone());
    let mut cache: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
    let mut next: Option<PlannedWrite> = None;
    let mut samples = Vec::new();
    let (mut app_bytes, mut app_interval, mut writes) = (0u64, 0u64, 0u64);
    let (mut raw_sampled, mut comp_sampled) = (0f64, 0f64);
    let mut app_done = false;
    let mut app_end = Duration::ZERO;
    let mut stalled_since: Option<Duration> = None;
    let (mut stall_interval, mut stall_total) = (Duration::ZERO, Duration::ZERO);
    let mut peak_interval = 0u64;
    let mut max_dirty = 0u64;
    let mut last_sample = Duration::ZERO;
    let mut next_sample = cfg.sample_interval;
    let mut next_report = report_every;

    let start = Instant::now();
    let issue = |cache: &mut VecDeque<(u64, Vec<u8>)>| loop {
        {
            let mut a = shared.lock();
            if a.outstanding >= cfg.max_outstanding as u64 || cache.is_empty() {
                return;
            }
            a.outstanding += 1;
        }
        let (off, data) = cache.pop_front().expect("checked non-empty");
        let len = data.len() as u64;
        let sh = shared.clone();
        let t0 = Instant::now();
        sink.start_write(
            off,
            data,
            Box::new(move |r| {
                let mut a = sh.lock();
                a.dirty -= len;
                a.outstanding -= 1;
                match r {
                    Ok(()) => {
                        let ms = t0.elapsed().as_secs_f64() * 1e3;
                        a.acked_interval += len;
                        a.acked_total += len;
                        a.lat_interval.push(ms);
                        a.lat_all.push(ms);
                    }
                    Err(_) => a.failed += 1,
                }
                drop(a);
                sh.cv.notify_all();
            }),
        );
    };

    loop {
        let now = start.elapsed();
        // The application writes what is due and fits.
        while !app_done && now < next_sample {
            let over_time = cfg.duration.is_some_and(|d| now >= d);
            let over_bytes = cfg.total_bytes.is_some_and(|b| app_bytes >= b);
            if over_time || over_bytes {
                app_done = true;
                app_end = now;
                if let Some(s) = stalled_since.take() {
                    stall_interval += now - s.max(last_sample);
                    stall_total += now - s;
                }
                break;
            }
            let w = next.get_or_insert_with(|| wl.next_write());
            if w.at > now {
                break;
            }
            let len = w.data.len() as u64;
            {
                let mut a = shared.lock();
                if a.dirty + len > cap {
                    stalled_since.get_or_insert(now);
                    break;
                }
                a.dirty += len;
                peak_interval = peak_interval.max(a.dirty);
                max_dirty = max_dirty.max(a.dirty);
            }
            if let Some(s) = stalled_since.take() {
                stall_interval += now - s.max(last_sample);
                stall_total += now - s;
                wl.resume_at(now);
            }
            let w = next.take().expect("just set");
            if writes % 64 == 0 {
                raw_sampled += w.data.len() as f64;
                comp_sampled += w.data.len() as f64 / snap_ratio(&w.data);
            }
            app_bytes += len;
            app_interval += len;
            writes += 1;
            cache.push_back((w.offset, w.data));
            issue(&mut cache);
        }
        issue(&mut cache);

        let now = start.elapsed();
        let clean = {
            let a = shared.lock();
            a.dirty == 0 && cache.is_empty()
        };
        let finished = app_done && (!cfg.drain || clean || now >= app_end + cfg.drain_timeout);

        if now >= next_report {
            sink.report_dirty(pct(shared.lock().dirty));
            while next_report <= now {
                next_report += report_every;
            }
        }
        if now >= next_sample || finished {
            if let Some(s) = stalled_since {
                stall_interval += now - s.max(last_sample);
            }
            let span = now - last_sample;
            let (dirty, outstanding, acked, mut lat) = {
                let mut a = shared.lock();
                let acked = std::mem::take(&mut a.acked_interval);
                let lat = std::mem::take(&mut a.lat_interval);
                (a.dirty, a.outstanding, acked, lat)
            };
            samples.push(Sample {
                t_s: now.as_secs_f64(),
                dirty_pct: pct(dirty),
                dirty_peak_pct: pct(peak_interval.max(dirty)),
                app_mbps: mbps(app_interval, span),
                sink_mbps: mbps(acked, span),
                ack_p50_ms: quantile(&mut lat, 0.5),
                ack_p99_ms: quantile(&mut lat, 0.99),
                outstanding,
                stall_pct: if span.is_zero() {
                    0.0
                } else {
                    (stall_interval.as_secs_f64() / span.as_secs_f64() * 100.0).min(100.0)
                },
            });
            app_interval = 0;
            stall_interval = Duration::ZERO;
            peak_interval = dirty;
            last_sample = now;
            while next_sample <= now {
                next_sample += cfg.sample_interval;
            }
        }
        if finished {
            break;
        }

        // Sleep until the next write is due, the next sample or report, or an ack.
        let mut until = next_sample.min(next_report);
        if !app_done && stalled_since.is_none() {
            let at = next.as_ref().map_or(wl.next_at(), |w| w.at);
            until = until.min(at);
            if let Some(d) = cfg.duration {
                until = until.min(d);
            }
        }
        let now = start.elapsed();
        if until > now {
            let a = shared.lock();
            // An ack may already have freed room or ended the drain.
            let waiting_for_ack = stalled_since.is_some() || app_done;
            if waiting_for_ack || a.outstanding > 0 {
                let _ = shared.cv.wait_timeout(a, until - now);
            } else {
                drop(a);
                std::thread::sleep(until - now);
            }
        }
    }

    let end = start.elapsed();
    let a = shared.lock();
    let mut all = a.lat_all.clone();
    let summary = Summary {
        duration_s: end.as_secs_f64(),
        app_bytes,
        acked_bytes: a.acked_total,
        writes,
        failed_writes: a.failed,
        stall_s: stall_total.as_secs_f64(),
        max_dirty_pct: pct(max_dirty),
        ack_p50_ms: quantile(&mut all, 0.5),
        ack_p99_ms: quantile(&mut all, 0.99),
        compress_ratio: if comp_sampled > 0.0 {
            raw_sampled / comp_sampled
        } else {
            1.0
        },
    };
    Ok(TimeSeries {
        scenario: cfg.scenario.clone(),
        config: serde_json::to_value(cfg).unwrap_or(serde_json::Value::Null),
        samples,
        summary,
    })
}
