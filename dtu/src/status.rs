//! Status: the numbers an operator looks at, in one structure rendered three
//! ways: a table in the spirit of `drbdadm status`, JSON for scripts, and
//! Prometheus text for monitoring.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::Volume;
use crate::nvbuf::NvbufStats;
use crate::primary::LinkState;
use crate::units::{format_bytes, format_duration};

/// A measured rate; `units::format_rate` reads 0 as "unlimited".
fn format_rate(bps: u64) -> String {
    if bps == 0 {
        "0bit".into()
    } else {
        crate::units::format_rate(bps)
    }
}

/// Either side's status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum Status {
    Primary(Box<PrimaryStatus>),
    Remote(Box<RemoteStatus>),
}

/// Byte and operation counters since start.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct ByteCounters {
    pub plain: u64,
    pub encoded: u64,
    pub wire: u64,
    pub writes: u64,
    pub reads: u64,
}

/// Per-second rates from periodic samples of a counter.
#[derive(Debug, Clone)]
pub struct RateMeter {
    last: Option<(Instant, u64)>,
    rate: f64,
}

impl Default for RateMeter {
    fn default() -> Self {
        RateMeter {
            last: None,
            rate: 0.0,
        }
    }
}

impl RateMeter {
    /// Records the counter's value; the rate is the change since the last
    /// sample, smoothed over a few samples.
    pub fn sample(&mut self, now: Instant, value: u64) {
        if let Some((t, v)) = self.last {
            let dt = now.saturating_duration_since(t).as_secs_f64();
            if dt > 0.0 {
                let r = value.saturating_sub(v) as f64 / dt;
                self.rate = if self.rate == 0.0 {
                    r
                } else {
                    0.5 * self.rate + 0.5 * r
                };
            }
        }
        self.last = Some((now, value));
    }
    pub fn per_second(&self) -> f64 {
        self.rate
    }
}

/// The primary's status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PrimaryStatus {
    pub volume: String,
    pub volume_size: u64,
    pub epoch: u32,
    pub uptime_s: f64,
    /// connecting | connected | refused
    pub connection: String,
    pub peer: Option<String>,
    pub connection_detail: Option<String>,
    pub rtt_ms: Option<f64>,
    pub link_throughput_bps: f64,
    pub host_throughput_bps: f64,
    pub lanes: usize,
    pub encode_workers: usize,
    pub inflight_bytes: u64,
    pub buffered_bytes: u64,
    pub nvbuf_capacity: u64,
    pub nvbuf_fill_pct: f64,
    pub nvbuf_waiting_writers: u64,
    pub nvbuf_full_waits: u64,
    pub records_per_flush: f64,
    pub oldest_unreplicated_s: Option<f64>,
    pub trigger: String,
    pub effective_trigger: String,
    pub delay_ms: f64,
    pub spoofing_enabled: bool,
    pub spoofing_active: bool,
    pub dirty_threshold_pct: f64,
    pub dirty_pct: Option<f64>,
    /// Host operations answered per trigger.
    pub answered: AnsweredBy,
    pub compression_ratio: f64,
    pub retransmits: u64,
    pub nacks: u64,
    pub writes: u64,
    pub reads: u64,
    pub bytes_written: u64,
    pub highest_seq: u64,
    pub buffered_seq: u64,
    pub remote_received_seq: u64,
    pub remote_stored_seq: u64,
    pub recovered_at_start: usize,
    /// Primary→replica delay (submission to remote-stored), p50 and p99.
    pub replication_delay_p50_ms: Option<f64>,
    pub replication_delay_p99_ms: Option<f64>,
    /// Host ack latency, p50 and p99.
    pub ack_latency_p50_ms: Option<f64>,
    pub ack_latency_p99_ms: Option<f64>,
    pub failed: Option<String>,
}

/// Answers per trigger.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct AnsweredBy {
    pub received: u64,
    pub buffered: u64,
    pub sent: u64,
    pub remote_received: u64,
    pub remote_stored: u64,
}

impl AnsweredBy {
    fn from_array(a: [u64; 5]) -> Self {
        AnsweredBy {
            received: a[0],
            buffered: a[1],
            sent: a[2],
            remote_received: a[3],
            remote_stored: a[4],
        }
    }
}

/// Rates the primary samples once a second.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rates {
    pub link_bps: f64,
    pub host_bps: f64,
}

impl PrimaryStatus {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn build(
        volume: &Volume,
        epoch: u32,
        snap: crate::primary::SenderSnapshot,
        nv: NvbufStats,
        counters: ByteCounters,
        uptime: Duration,
        recovered: usize,
        encode_workers: usize,
        lanes: usize,
        rates: Rates,
    ) -> PrimaryStatus {
        let (connection, peer, detail) = match &snap.link {
            LinkState::Connecting {
                attempts,
                last_error,
            } => (
                "connecting",
                None,
                last_error
                    .as_ref()
                    .map(|e| format!("attempt {attempts}: {e}")),
            ),
            LinkState::Connected { since, peer } => (
                "connected",
                Some(peer.clone()),
                Some(format!("for {}", format_duration(since.elapsed()))),
            ),
            LinkState::Refused { reason } => ("refused", None, Some(reason.clone())),
        };
        PrimaryStatus {
            volume: dtu_proto::handshake::volume_hex(&volume.id),
            volume_size: volume.size,
            epoch,
            uptime_s: uptime.as_secs_f64(),
            connection: connection.into(),
            peer,
            connection_detail: detail,
            rtt_ms: snap.rtt.map(|d| d.as_secs_f64() * 1e3),
            link_throughput_bps: rates.link_bps * 8.0,
            host_throughput_bps: rates.host_bps * 8.0,
            lanes,
            encode_workers,
            inflight_bytes: snap.progress.inflight_bytes,
            buffered_bytes: nv.used_bytes,
            nvbuf_capacity: nv.capacity,
            nvbuf_fill_pct: nv.fill_pct,
            nvbuf_waiting_writers: nv.waiting_appenders,
            nvbuf_full_waits: nv.full_waits,
            records_per_flush: nv.records_per_flush(),
            oldest_unreplicated_s: snap.oldest_unstored.map(|d| d.as_secs_f64()),
            trigger: snap.policy.trigger.to_string(),
            effective_trigger: snap.effective.to_string(),
            delay_ms: snap.policy.delay.as_secs_f64() * 1e3,
            spoofing_enabled: snap.policy.spoofing,
            spoofing_active: snap.spoofing_active,
            dirty_threshold_pct: snap.policy.dirty_threshold,
            dirty_pct: snap.dirty,
            answered: AnsweredBy::from_array(snap.stats.answered_by),
            compression_ratio: if counters.encoded == 0 {
                1.0
            } else {
                counters.plain as f64 / counters.encoded as f64
            },
            retransmits: snap.stats.retransmits,
            nacks: snap.stats.nacks,
            writes: counters.writes,
            reads: counters.reads,
            bytes_written: counters.plain,
            highest_seq: snap.progress.highest,
            buffered_seq: snap.progress.buffered,
            remote_received_seq: snap.progress.remote_received,
            remote_stored_seq: snap.progress.remote_stored,
            recovered_at_start: recovered,
            replication_delay_p50_ms: ms(snap.stats.replication_delay.quantile(0.5)),
            replication_delay_p99_ms: ms(snap.stats.replication_delay.quantile(0.99)),
            ack_latency_p50_ms: ms(snap.stats.answer_latency.quantile(0.5)),
            ack_latency_p99_ms: ms(snap.stats.answer_latency.quantile(0.99)),
            failed: snap.failed,
        }
    }
}

/// The remote's status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RemoteStatus {
    pub volume: String,
    pub volume_size: u64,
    pub uptime_s: f64,
    pub connection: String,
    pub peer: Option<String>,
    pub primary_epoch: u32,
    pub rtt_ms: Option<f64>,
    pub replica: String,
    /// False after a machine crash until the replay passes `inconsistent_until`.
    pub consistent: bool,
    pub inconsistent_until: Option<u64>,
    /// Why the replica cannot be trusted (empty when consistent).
    #[serde(default)]
    pub inconsistent_reasons: Vec<String>,
    pub received_seq: u64,
    pub applied_seq: u64,
    pub stored_seq: u64,
    pub pending_bytes: u64,
    pub apply_throughput_bps: f64,
    pub decode_workers: usize,
    pub lanes: usize,
    pub chunks: u64,
    pub duplicates: u64,
    pub checksum_failures: u64,
    pub decode_failures: u64,
    pub applied_ops: u64,
    pub applied_bytes: u64,
    pub syncs: u64,
    pub ops_per_sync: f64,
    pub last_checkpoint: Option<String>,
    pub refused: u64,
    pub last_refusal: Option<String>,
}

fn ms(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64() * 1e3)
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |ms| format!("{ms:.1} ms"))
}

fn opt_age(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| format_duration(Duration::from_secs_f64(s)))
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut rows: Vec<(&str, String)> = Vec::new();
        let title = match self {
            Status::Primary(p) => {
                rows.push(("role", "primary".into()));
                rows.push((
                    "volume",
                    format!("{} ({})", p.volume, format_bytes(p.volume_size)),
                ));
                rows.push(("epoch", p.epoch.to_string()));
                rows.push((
                    "connection",
                    format!(
                        "{}{}{}",
                        p.connection,
                        p.peer
                            .as_ref()
                            .map(|x| format!(" to {x}"))
                            .unwrap_or_default(),
                        p.connection_detail
                            .as_ref()
                            .map(|x| format!(" ({x})"))
                            .unwrap_or_default()
                    ),
                ));
                rows.push(("link rtt", opt_ms(p.rtt_ms)));
                rows.push((
                    "throughput",
                    format!(
                        "link {}/s, host {}/s",
                        format_rate(p.link_throughput_bps as u64),
                        format_rate(p.host_throughput_bps as u64)
                    ),
                ));
                rows.push((
                    "lanes",
                    format!("{} lanes, {} encode workers", p.lanes, p.encode_workers),
                ));
                rows.push(("in flight", format_bytes(p.inflight_bytes)));
                rows.push((
                    "nvbuf",
                    format!(
                        "{} of {} ({:.1}%){}, {:.1} records/flush",
                        format_bytes(p.buffered_bytes),
                        format_bytes(p.nvbuf_capacity),
                        p.nvbuf_fill_pct,
                        if p.nvbuf_waiting_writers > 0 {
                            format!(", FULL: {} writers waiting", p.nvbuf_waiting_writers)
                        } else {
                            String::new()
                        },
                        p.records_per_flush
                    ),
                ));
                rows.push(("oldest unreplicated", opt_age(p.oldest_unreplicated_s)));
                rows.push((
                    "trigger",
                    format!(
                        "{} (in force now: {}){}",
                        p.trigger,
                        p.effective_trigger,
                        if p.delay_ms > 0.0 {
                            format!(" + {:.0} ms delay", p.delay_ms)
                        } else {
                            String::new()
                        }
                    ),
                ));
                rows.push((
                    "spoofing",
                    format!(
                        "{} ({}, threshold {:.0}%)",
                        if p.spoofing_active {
                            "ACTIVE"
                        } else {
                            "inactive"
                        },
                        if p.spoofing_enabled {
                            "enabled"
                        } else {
                            "disabled"
                        },
                        p.dirty_threshold_pct
                    ),
                ));
                rows.push((
                    "dirty",
                    p.dirty_pct
                        .map_or("not reported".into(), |d| format!("{d:.1}%")),
                ));
                let a = &p.answered;
                rows.push((
                    "answered by",
                    format!(
                        "received {}, buffered {}, sent {}, remote-received {}, remote-stored {}",
                        a.received, a.buffered, a.sent, a.remote_received, a.remote_stored
                    ),
                ));
                rows.push((
                    "seq",
                    format!(
                        "highest {}, buffered {}, remote-received {}, remote-stored {}",
                        p.highest_seq, p.buffered_seq, p.remote_received_seq, p.remote_stored_seq
                    ),
                ));
                rows.push((
                    "ack latency",
                    format!(
                        "p50 {}, p99 {}",
                        opt_ms(p.ack_latency_p50_ms),
                        opt_ms(p.ack_latency_p99_ms)
                    ),
                ));
                rows.push((
                    "replication delay",
                    format!(
                        "p50 {}, p99 {} (write to remote-stored)",
                        opt_ms(p.replication_delay_p50_ms),
                        opt_ms(p.replication_delay_p99_ms)
                    ),
                ));
                rows.push(("compression", format!("{:.2}:1", p.compression_ratio)));
                rows.push((
                    "errors",
                    format!(
                        "{} retransmits, {} checksum/decode nacks",
                        p.retransmits, p.nacks
                    ),
                ));
                rows.push((
                    "host",
                    format!(
                        "{} writes ({}), {} reads",
                        p.writes,
                        format_bytes(p.bytes_written),
                        p.reads
                    ),
                ));
                if let Some(why) = &p.failed {
                    rows.push(("FAILED", why.clone()));
                }
                "dtu primary"
            }
            Status::Remote(r) => {
                rows.push(("role", "remote".into()));
                rows.push((
                    "volume",
                    format!("{} ({})", r.volume, format_bytes(r.volume_size)),
                ));
                rows.push((
                    "connection",
                    format!(
                        "{}{}, primary epoch {}",
                        r.connection,
                        r.peer
                            .as_ref()
                            .map(|x| format!(" from {x}"))
                            .unwrap_or_default(),
                        r.primary_epoch
                    ),
                ));
                rows.push(("link rtt", opt_ms(r.rtt_ms)));
                rows.push(("replica", r.replica.clone()));
                rows.push((
                    "consistent",
                    if r.consistent {
                        "yes (a prefix of the primary's writes)".into()
                    } else {
                        format!(
                            "NO until seq {} is applied again (machine crash replay)",
                            r.inconsistent_until.unwrap_or_default()
                        )
                    },
                ));
                rows.push((
                    "seq",
                    format!(
                        "received {}, applied {}, stored {}",
                        r.received_seq, r.applied_seq, r.stored_seq
                    ),
                ));
                rows.push((
                    "apply",
                    format!(
                        "{}/s, {} ops ({}), {} syncs ({:.1} ops/sync)",
                        format_rate(r.apply_throughput_bps as u64),
                        r.applied_ops,
                        format_bytes(r.applied_bytes),
                        r.syncs,
                        r.ops_per_sync
                    ),
                ));
                rows.push((
                    "waiting",
                    format!(
                        "{} decoded, waiting for an earlier seq",
                        format_bytes(r.pending_bytes)
                    ),
                ));
                rows.push((
                    "lanes",
                    format!(
                        "{} lanes in use, {} decode workers",
                        r.lanes, r.decode_workers
                    ),
                ));
                rows.push((
                    "errors",
                    format!(
                        "{} checksum failures, {} decode failures, {} duplicates dropped",
                        r.checksum_failures, r.decode_failures, r.duplicates
                    ),
                ));
                if let Some(c) = &r.last_checkpoint {
                    rows.push(("checkpoint", c.clone()));
                }
                if let Some(why) = &r.last_refusal {
                    rows.push(("last refusal", format!("{why} ({} in all)", r.refused)));
                }
                "dtu remote"
            }
        };
        writeln!(f, "{title}")?;
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in rows {
            writeln!(f, "  {k:<width$}  {v}")?;
        }
        Ok(())
    }
}

impl Status {
    /// Prometheus text exposition format.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, v: f64| {
            let _ = writeln!(
                out,
                "# HELP dtu_{name} {help}\n# TYPE dtu_{name} gauge\ndtu_{name} {v}"
            );
        };
        match self {
            Status::Primary(p) => {
                gauge(
                    "connected",
                    "1 when the link to the remote is up",
                    (p.connection == "connected") as u8 as f64,
                );
                gauge(
                    "rtt_seconds",
                    "smoothed link round-trip time",
                    p.rtt_ms.unwrap_or(0.0) / 1e3,
                );
                gauge(
                    "link_throughput_bits_per_second",
                    "bits per second written to the lanes",
                    p.link_throughput_bps,
                );
                gauge(
                    "host_throughput_bits_per_second",
                    "bits per second accepted from the host",
                    p.host_throughput_bps,
                );
                gauge(
                    "inflight_bytes",
                    "payload bytes sent and not yet stored by the remote",
                    p.inflight_bytes as f64,
                );
                gauge(
                    "nvbuf_used_bytes",
                    "nvbuf bytes holding unreplicated records",
                    p.buffered_bytes as f64,
                );
                gauge(
                    "nvbuf_capacity_bytes",
                    "nvbuf ring size",
                    p.nvbuf_capacity as f64,
                );
                gauge(
                    "nvbuf_fill_ratio",
                    "nvbuf fill, 0..1",
                    p.nvbuf_fill_pct / 100.0,
                );
                gauge(
                    "nvbuf_waiting_writers",
                    "writers waiting for nvbuf space",
                    p.nvbuf_waiting_writers as f64,
                );
                gauge(
                    "oldest_unreplicated_seconds",
                    "age of the oldest write the remote has not stored",
                    p.oldest_unreplicated_s.unwrap_or(0.0),
                );
                gauge(
                    "spoofing_active",
                    "1 while spoof acks are in force",
                    p.spoofing_active as u8 as f64,
                );
                gauge(
                    "dirty_ratio",
                    "host's last reported dirty cache share, 0..1",
                    p.dirty_pct.unwrap_or(0.0) / 100.0,
                );
                gauge(
                    "compression_ratio",
                    "plain bytes per encoded byte",
                    p.compression_ratio,
                );
                gauge("retransmits_total", "seqs sent again", p.retransmits as f64);
                gauge(
                    "nacks_total",
                    "checksum or decode failures reported by the remote",
                    p.nacks as f64,
                );
                gauge("writes_total", "host writes accepted", p.writes as f64);
                gauge("highest_seq", "highest seq assigned", p.highest_seq as f64);
                gauge(
                    "remote_stored_seq",
                    "highest seq stored on the replica",
                    p.remote_stored_seq as f64,
                );
                let a = &p.answered;
                let _ = writeln!(out, "# HELP dtu_answered_total host operations answered, by trigger\n# TYPE dtu_answered_total counter");
                for (t, v) in [
                    ("received", a.received),
                    ("buffered", a.buffered),
                    ("sent", a.sent),
                    ("remote-received", a.remote_received),
                    ("remote-stored", a.remote_stored),
                ] {
                    let _ = writeln!(out, "dtu_answered_total{{trigger=\"{t}\"}} {v}");
                }
            }
            Status::Remote(r) => {
                gauge(
                    "connected",
                    "1 when a primary is connected",
                    (r.connection == "connected") as u8 as f64,
                );
                gauge(
                    "rtt_seconds",
                    "smoothed link round-trip time",
                    r.rtt_ms.unwrap_or(0.0) / 1e3,
                );
                gauge(
                    "consistent",
                    "1 when the replica is a prefix state of the primary's writes",
                    r.consistent as u8 as f64,
                );
                gauge(
                    "received_seq",
                    "contiguous seq received",
                    r.received_seq as f64,
                );
                gauge(
                    "applied_seq",
                    "highest seq applied to the replica",
                    r.applied_seq as f64,
                );
                gauge(
                    "stored_seq",
                    "highest seq synced on the replica",
                    r.stored_seq as f64,
                );
                gauge(
                    "apply_throughput_bits_per_second",
                    "bits per second applied to the replica",
                    r.apply_throughput_bps,
                );
                gauge(
                    "pending_bytes",
                    "decoded bytes waiting for an earlier seq",
                    r.pending_bytes as f64,
                );
                gauge(
                    "checksum_failures_total",
                    "chunks refused for a checksum mismatch",
                    r.checksum_failures as f64,
                );
                gauge(
                    "decode_failures_total",
                    "chunks refused as undecodable",
                    r.decode_failures as f64,
                );
                gauge(
                    "duplicates_total",
                    "duplicate chunks dropped",
                    r.duplicates as f64,
                );
                gauge(
                    "applied_bytes_total",
                    "payload bytes applied",
                    r.applied_bytes as f64,
                );
                gauge("syncs_total", "replica syncs", r.syncs as f64);
            }
        }
        out
    }
}
