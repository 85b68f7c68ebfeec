//! Tests of the host model in real time against [`RateSink`] and small
//! sinks that acknowledge inline, fail, or count what is in flight. They
//! compare ratios with generous bounds, never absolute timings.

use super::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn base(scenario: &str) -> HostConfig {
    HostConfig {
        scenario: scenario.into(),
        workload: WorkloadConfig {
            block_size: 64 * 1024,
            burst_bytes: u64::MAX / 2,
            burst_rate: 0,
            ..WorkloadConfig::default()
        },
        cache_bytes: 1 << 20,
        max_outstanding: 8,
        sample_interval: Duration::from_millis(50),
        report_interval: Duration::from_millis(50),
        duration: Some(Duration::from_millis(1200)),
        total_bytes: None,
        drain: true,
        drain_timeout: Duration::from_secs(10),
    }
}

#[test]
fn slow_sink_fills_the_cache_and_paces_the_application() {
    // 16 Mbit/s = 2 MB/s; the application would write far faster.
    let sink = Arc::new(RateSink::new(16_000_000, Duration::from_millis(5)));
    let ts = run(&base("slow"), sink.clone()).unwrap();
    let s = &ts.summary;
    assert_eq!(s.acked_bytes, s.app_bytes, "drained");
    assert_eq!(s.failed_writes, 0);
    assert!(s.max_dirty_pct > 90.0, "max dirty {}", s.max_dirty_pct);
    assert!(s.stall_s > 0.3, "stalled {}", s.stall_s);
    // Over the writing phase the sink ran at its rate.
    let writing: Vec<&Sample> = ts
        .samples
        .iter()
        .filter(|x| x.t_s > 0.2 && x.t_s < 1.1)
        .collect();
    let mean_sink = writing.iter().map(|x| x.sink_mbps).sum::<f64>() / writing.len() as f64;
    assert!(
        (0.75..1.1).contains(&(mean_sink / 16.0)),
        "sink {mean_sink} Mbit/s"
    );
    let mean_app = writing.iter().map(|x| x.app_mbps).sum::<f64>() / writing.len() as f64;
    assert!(
        (0.7..1.2).contains(&(mean_app / 16.0)),
        "app {mean_app} Mbit/s"
    );
    assert!(writing.iter().all(|x| x.dirty_peak_pct > 50.0));
    // The drain ends clean.
    assert_eq!(ts.samples.last().unwrap().dirty_pct, 0.0);
    let reports = sink.dirty_reports();
    assert!(reports.len() >= 10, "{} reports", reports.len());
    assert!(reports.iter().all(|p| (0.0..=100.0).contains(p)));
    assert!(reports.iter().any(|&p| p > 80.0));
}

#[test]
fn fast_sink_keeps_the_cache_nearly_clean() {
    let mut cfg = base("fast");
    cfg.workload.burst_rate = 4_000_000; // 32 Mbit/s
    cfg.workload.burst_bytes = 1 << 20;
    cfg.workload.idle = IdleGap::Fixed {
        gap: Duration::from_millis(100),
    };
    cfg.cache_bytes = 16 << 20;
    let sink = Arc::new(RateSink::new(1_000_000_000, Duration::from_millis(1)));
    let ts = run(&cfg, sink).unwrap();
    assert!(
        ts.summary.max_dirty_pct < 10.0,
        "{}",
        ts.summary.max_dirty_pct
    );
    assert_eq!(ts.summary.stall_s, 0.0);
    // Bursts of 1 MiB at 4 MB/s take 262 ms, then 100 ms idle: about 2.9 MB/s on average.
    let avg = ts.summary.app_bytes as f64 / 1.2 / 1e6;
    assert!((2.0..3.6).contains(&avg), "{avg} MB/s");
    let p50 = ts.summary.ack_p50_ms.unwrap();
    assert!(p50 >= 1.0, "{p50}");
}

struct InlineSink {
    fail: bool,
}

impl MirrorSink for InlineSink {
    fn start_write(
        &self,
        _offset: u64,
        _data: Vec<u8>,
        done: Box<dyn FnOnce(Result<(), String>) + Send>,
    ) {
        done(if self.fail {
            Err("refused".into())
        } else {
            Ok(())
        });
    }
}

#[test]
fn inline_acknowledgements_and_byte_limit() {
    let mut cfg = base("inline");
    cfg.duration = None;
    cfg.total_bytes = Some(32 << 20);
    let ts = run(&cfg, Arc::new(InlineSink { fail: false })).unwrap();
    assert_eq!(ts.summary.app_bytes, 32 << 20);
    assert_eq!(ts.summary.acked_bytes, 32 << 20);
    let ts = run(&cfg, Arc::new(InlineSink { fail: true })).unwrap();
    assert_eq!(ts.summary.failed_writes, (32 << 20) / (64 * 1024));
    assert_eq!(ts.summary.acked_bytes, 0);
}

struct Counting {
    inner: RateSink,
    now: Arc<AtomicU64>,
    max: Arc<AtomicU64>,
}

impl MirrorSink for Counting {
    fn start_write(
        &self,
        offset: u64,
        data: Vec<u8>,
        done: Box<dyn FnOnce(Result<(), String>) + Send>,
    ) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
        let now = self.now.clone();
        self.inner.start_write(
            offset,
            data,
            Box::new(move |r| {
                now.fetch_sub(1, Ordering::SeqCst);
                done(r)
            }),
        );
    }
}

#[test]
fn outstanding_writes_are_bounded() {
    let mut cfg = base("bounded");
    cfg.max_outstanding = 3;
    cfg.duration = Some(Duration::from_millis(400));
    let max = Arc::new(AtomicU64::new(0));
    let sink = Counting {
        inner: RateSink::new(50_000_000, Duration::from_millis(20)),
        now: Arc::new(AtomicU64::new(0)),
        max: max.clone(),
    };
    let ts = run(&cfg, Arc::new(sink)).unwrap();
    assert_eq!(max.load(Ordering::SeqCst), 3);
    assert!(ts.samples.iter().all(|s| s.outstanding <= 3));
    assert!(ts.summary.app_bytes > 0);
}

#[test]
fn rejects_impossible_configurations() {
    let sink: Arc<dyn MirrorSink> = Arc::new(InlineSink { fail: false });
    let mut c = base("x");
    c.cache_bytes = 1000;
    assert!(matches!(
        run(&c, sink.clone()),
        Err(HostError::CacheTooSmall { .. })
    ));
    let mut c = base("x");
    c.duration = None;
    assert_eq!(run(&c, sink.clone()).unwrap_err(), HostError::Endless);
}

#[test]
fn data_is_as_compressible_as_asked() {
    let mut cfg = base("compress");
    cfg.duration = None;
    cfg.total_bytes = Some(16 << 20);
    cfg.workload.compress_ratio = 3.0;
    let ts = run(&cfg, Arc::new(InlineSink { fail: false })).unwrap();
    let r = ts.summary.compress_ratio;
    assert!((r / 3.0 - 1.0).abs() < 0.1, "{r}");
}
