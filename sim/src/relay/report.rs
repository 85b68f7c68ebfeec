//! Human-readable relay reports: the periodic one-line summary of the last
//! interval (rate delivered, queue depth, drops by cause, mean one-way
//! delay, per direction) and the full summary printed on exit or SIGUSR1.

use std::fmt::Write;

use super::{DirectionStats, RelayStats};
use crate::link::{LinkConfig, LinkStats};
use dtu_proto::units::format_bytes;

fn mbit(bytes: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        0.0
    } else {
        bytes as f64 * 8.0 / secs / 1e6
    }
}

fn ms(ns: f64) -> f64 {
    ns / 1e6
}

fn interval_part(name: &str, d: &LinkStats, secs: f64) -> String {
    let delay = if d.delay.count > 0 {
        format!("{:.1}ms", ms(d.delay.sum_ns as f64 / d.delay.count as f64))
    } else {
        "-".into()
    };
    format!(
        "{name} {:.3}Mbit/s {}pkt/s q {} drop q{} l{} o{} delay {}",
        mbit(d.bytes_delivered, secs),
        (d.packets_delivered as f64 / secs.max(1e-9)).round(),
        format_bytes(d.queue_bytes),
        d.dropped_queue,
        d.dropped_loss,
        d.dropped_outage,
        delay
    )
}

/// One line about what happened between two snapshots.
pub fn format_interval(prev: &RelayStats, cur: &RelayStats) -> String {
    let secs = cur.elapsed_s - prev.elapsed_s;
    let up = cur.up.link.delta(&prev.up.link);
    let down = cur.down.link.delta(&prev.down.link);
    format!(
        "linkemu {:7.1}s | {} | {}",
        cur.elapsed_s,
        interval_part("up", &up, secs),
        interval_part("down", &down, secs)
    )
}

fn direction(out: &mut String, name: &str, cfg: &LinkConfig, d: &DirectionStats, secs: f64) {
    let l = &d.link;
    let _ = writeln!(out, "  {name:<5} {}", cfg.describe());
    let _ = writeln!(
        out,
        "        in {} pkts / {}, delivered {} pkts / {} (mean {:.3} Mbit/s)",
        l.packets_in,
        format_bytes(l.bytes_in),
        l.packets_delivered,
        format_bytes(l.bytes_delivered),
        mbit(l.bytes_delivered, secs)
    );
    let _ = writeln!(
        out,
        "        dropped: queue {}, loss {}, outage {}; duplicated {}, reordered {}, corrupted {}",
        l.dropped_queue, l.dropped_loss, l.dropped_outage, l.duplicated, l.reordered, l.corrupted
    );
    let fmt = |v: Option<std::time::Duration>| {
        v.map_or("-".to_string(), |d| format!("{:.2}", d.as_secs_f64() * 1e3))
    };
    let _ = writeln!(
        out,
        "        one-way delay min/mean/max {}/{}/{} ms; queue now {}, peak {}; in flight {}",
        fmt(l.delay.min()),
        fmt(l.delay.mean()),
        fmt(l.delay.max()),
        format_bytes(l.queue_bytes),
        format_bytes(l.queue_peak_bytes),
        l.in_flight
    );
    let _ = writeln!(
        out,
        "        release lateness mean/max {}/{} ms; tcp retransmits {}, send errors {}",
        fmt(d.late.mean()),
        fmt(d.late.max()),
        d.tcp_retransmits,
        d.send_errors
    );
}

/// The full summary, several lines.
pub fn format_summary(s: &RelayStats) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "linkemu summary after {:.1} s: {} -> {}, seed {}",
        s.elapsed_s, s.listen, s.forward, s.seed
    );
    direction(&mut out, "up", &s.config.up, &s.up, s.elapsed_s);
    direction(&mut out, "down", &s.config.down, &s.down, s.elapsed_s);
    let _ = writeln!(
        out,
        "  udp flows {}, tcp connections {} ({} open)",
        s.udp_flows, s.tcp_connections, s.tcp_open
    );
    out
}
