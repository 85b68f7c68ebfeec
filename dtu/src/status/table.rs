//! The status as a table, in the spirit of `drbdadm status`: one row per
//! aspect, words where a number alone would not say enough.

use std::fmt::Write as _;
use std::time::Duration;

use super::{LatencyStats, QuicStatus, Status};
use crate::units::{format_bytes, format_duration};

/// A measured rate; `units::format_rate` reads 0 as "unlimited".
fn format_rate(bps: u64) -> String {
    if bps == 0 {
        "0bit".into()
    } else {
        crate::units::format_rate(bps)
    }
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |ms| format!("{ms:.1} ms"))
}

/// A latency in the unit that reads best (µs below 1 ms, s above 10 s).
fn latency(ms: Option<f64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) if ms < 1.0 => format!("{:.0} µs", ms * 1e3),
        Some(ms) if ms >= 10_000.0 => format!("{:.1} s", ms / 1e3),
        Some(ms) if ms >= 100.0 => format!("{ms:.0} ms"),
        Some(ms) => format!("{ms:.2} ms"),
    }
}

fn distribution(l: &LatencyStats) -> String {
    if l.count == 0 {
        return "-".into();
    }
    let mut s = format!(
        "p50 {}, p90 {}, p99 {}, max {} ({} samples",
        latency(l.p50_ms),
        latency(l.p90_ms),
        latency(l.p99_ms),
        latency(l.max_ms),
        l.count
    );
    if l.saturated > 0 {
        let _ = write!(s, ", {} over an hour", l.saturated);
    }
    s.push(')');
    s
}

fn quic(q: &QuicStatus) -> String {
    let mut s = format!(
        "{} packets sent, {} lost ({:.2}%, {}), {} congestion events",
        q.sent_packets,
        q.lost_packets,
        q.loss_pct(),
        format_bytes(q.lost_bytes),
        q.congestion_events
    );
    if let (Some(mtu), Some(cwnd)) = (q.path_mtu, q.cwnd_bytes) {
        let _ = write!(
            s,
            "; path mtu {mtu}, cwnd {}, rtt {}",
            format_bytes(cwnd),
            opt_ms(q.rtt_ms)
        );
    }
    let _ = write!(
        s,
        "; {} connection{}",
        q.connections,
        if q.connections == 1 { "" } else { "s" }
    );
    s
}

/// An age from a status that may have come from elsewhere: never panics.
/// Long work: done of total, rate and time left.
fn progress(p: &super::Progress) -> String {
    let pct = if p.total_bytes == 0 {
        100.0
    } else {
        p.done_bytes as f64 * 100.0 / p.total_bytes as f64
    };
    format!(
        "{:.1}% of {} at {}/s, {} left",
        pct,
        format_bytes(p.total_bytes),
        format_rate(p.rate_bps as u64),
        p.eta_s
            .map_or("-".into(), |s| format_duration(Duration::from_secs_f64(s)))
    )
}

fn opt_age(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| {
        Duration::try_from_secs_f64(s).map_or_else(|_| format!("{s} s"), format_duration)
    })
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut row = |k: &str, v: String| rows.push((k.to_string(), v));
        let title = match self {
            Status::Primary(p) => {
                row("role", "primary".into());
                row(
                    "volume",
                    format!("{} ({})", p.volume, format_bytes(p.volume_size)),
                );
                row("epoch", p.epoch.to_string());
                row(
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
                );
                row("link rtt", opt_ms(p.rtt_ms));
                row(
                    "throughput",
                    format!(
                        "link {}/s, host {}/s",
                        format_rate(p.link_throughput_bps as u64),
                        format_rate(p.host_throughput_bps as u64)
                    ),
                );
                row(
                    "lanes",
                    format!("{} lanes, {} encode workers", p.lanes, p.encode_workers),
                );
                row("in flight", format_bytes(p.inflight_bytes));
                row(
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
                );
                row("oldest unreplicated", opt_age(p.oldest_unreplicated_s));
                let m = &p.mirror;
                row(
                    "mirror",
                    format!(
                        "{}, generation {}{}",
                        if m.mode.is_empty() {
                            "journal"
                        } else {
                            &m.mode
                        },
                        m.generation,
                        if m.has_map {
                            format!(", {} out of sync", format_bytes(m.out_of_sync_bytes))
                        } else {
                            String::new()
                        }
                    ),
                );
                if let Some(d) = &m.decision {
                    row("decision", d.clone());
                }
                if m.sync.sync.active {
                    row(
                        "sync",
                        format!(
                            "to generation {:016x}{}: {}",
                            m.sync.target,
                            if m.sync.checksum { " (checksum)" } else { "" },
                            progress(&m.sync.sync)
                        ),
                    );
                }
                if m.restore.active {
                    row(
                        "restore",
                        format!(
                            "from the remote: {}; host reads served by the remote {}",
                            progress(&m.restore),
                            format_bytes(m.restore_on_demand_bytes)
                        ),
                    );
                }
                if m.sync.verify.active {
                    row(
                        "verify",
                        format!(
                            "{}{}",
                            progress(&m.sync.verify),
                            if m.sync.verify_repair {
                                ", repairing"
                            } else {
                                ""
                            }
                        ),
                    );
                }
                if m.sync.mismatched_bytes > 0 || m.sync.last_verify_unix.is_some() {
                    row(
                        "last verify",
                        format!(
                            "{} in {} ranges differ{}",
                            format_bytes(m.sync.mismatched_bytes),
                            m.sync.mismatches.len(),
                            m.sync
                                .last_verify_unix
                                .map(|t| format!(", finished at unix time {t}"))
                                .unwrap_or_default()
                        ),
                    );
                }
                row(
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
                );
                row(
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
                );
                row(
                    "dirty",
                    p.dirty_pct
                        .map_or("not reported".into(), |d| format!("{d:.1}%")),
                );
                let a = &p.answered;
                row(
                    "answered by",
                    format!(
                        "received {}, buffered {}, sent {}, remote-received {}, remote-stored {}",
                        a.received, a.buffered, a.sent, a.remote_received, a.remote_stored
                    ),
                );
                row(
                    "seq",
                    format!(
                        "highest {}, buffered {}, remote-received {}, remote-stored {}",
                        p.highest_seq, p.buffered_seq, p.remote_received_seq, p.remote_stored_seq
                    ),
                );
                row("ack latency", distribution(&p.ack_latency));
                for (name, l) in p.ack_latency_by_trigger.named() {
                    // Only the triggers that answered something.
                    if l.count > 0 {
                        row(&format!("  at {name}"), distribution(l));
                    }
                }
                // From the host's write to remote-stored.
                row("replication delay", distribution(&p.replication_delay));
                row("compression", format!("{:.2}:1", p.compression_ratio));
                row(
                    "errors",
                    format!(
                        "{} seqs resent by dtu, {} checksum/decode nacks",
                        p.retransmits, p.nacks
                    ),
                );
                row("quic", quic(&p.quic));
                row(
                    "host",
                    format!(
                        "{} writes ({}), {} reads",
                        p.writes,
                        format_bytes(p.bytes_written),
                        p.reads
                    ),
                );
                if let Some(why) = &p.failed {
                    row("FAILED", why.clone());
                }
                "dtu primary"
            }
            Status::Remote(r) => {
                row("role", "remote".into());
                row(
                    "volume",
                    format!("{} ({})", r.volume, format_bytes(r.volume_size)),
                );
                row(
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
                );
                row("link rtt", opt_ms(r.rtt_ms));
                row("replica", r.replica.clone());
                row(
                    "consistent",
                    if r.consistent {
                        "yes (a prefix of the primary's writes)".into()
                    } else if r.inconsistent_reasons.is_empty() {
                        format!(
                            "NO until seq {} is applied again (machine crash replay)",
                            r.inconsistent_until.unwrap_or_default()
                        )
                    } else {
                        format!("NO: {}", r.inconsistent_reasons.join("; "))
                    },
                );
                if !r.generation.is_empty() {
                    row(
                        "generation",
                        format!(
                            "{}{}",
                            r.generation,
                            r.sync_target
                                .as_ref()
                                .map(|t| format!(", syncing to {t}"))
                                .unwrap_or_default()
                        ),
                    );
                }
                if let Some(d) = &r.decision {
                    row("decision", d.clone());
                }
                row(
                    "seq",
                    format!(
                        "received {}, applied {}, stored {}",
                        r.received_seq, r.applied_seq, r.stored_seq
                    ),
                );
                row(
                    "apply",
                    format!(
                        "{}/s, {} ops ({}, {} synced), {} syncs ({:.1} ops/sync)",
                        format_rate(r.apply_throughput_bps as u64),
                        r.applied_ops,
                        format_bytes(r.applied_bytes),
                        format_bytes(r.stored_bytes),
                        r.syncs,
                        r.ops_per_sync
                    ),
                );
                row(
                    "waiting",
                    format!(
                        "{} decoded, waiting for an earlier seq",
                        format_bytes(r.pending_bytes)
                    ),
                );
                row(
                    "lanes",
                    format!(
                        "{} lanes in use, {} decode workers",
                        r.lanes, r.decode_workers
                    ),
                );
                row(
                    "errors",
                    format!(
                        "{} checksum failures, {} decode failures, {} duplicates dropped",
                        r.checksum_failures, r.decode_failures, r.duplicates
                    ),
                );
                row("quic", quic(&r.quic));
                if let Some(c) = &r.last_checkpoint {
                    row("checkpoint", c.clone());
                }
                if let Some(n) = r.checkpoints {
                    row(
                        "history",
                        format!(
                            "{n} checkpoints held{}{}, undo journal {}",
                            r.oldest_checkpoint
                                .as_ref()
                                .map(|o| format!(", oldest {o}"))
                                .unwrap_or_default(),
                            r.undo_window_s
                                .map(|w| format!(
                                    ", reaching back {}",
                                    dtu_proto::units::format_duration(
                                        std::time::Duration::from_secs_f64(w.max(0.0))
                                    )
                                ))
                                .unwrap_or_default(),
                            dtu_proto::units::format_bytes(r.undo_bytes)
                        ),
                    );
                }
                if let Some(h) = &r.hold {
                    row("HELD", h.clone());
                }
                if let Some(v) = &r.view {
                    row("as-of view", v.clone());
                }
                if let Some(why) = &r.failed {
                    row("STOPPED", format!("the remote stopped applying: {why}"));
                }
                if let Some(why) = &r.last_refusal {
                    row("last refusal", format!("{why} ({} in all)", r.refused));
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
