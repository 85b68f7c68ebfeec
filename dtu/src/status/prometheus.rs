//! The status as Prometheus metrics, in the OpenMetrics text format written
//! by the `prometheus-client` crate: a collector turns one status snapshot
//! into typed families (counters end in `_total`, units in the name,
//! latency histograms with the fixed bounds of [`LATENCY_BUCKETS_S`]).
//! Names follow drbd-reactor's exporter: `dtu_` prefix, states as a gauge
//! with one labelled series per state (1 for the current one, 0 else).

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::{
    ConnectionState, LatencyStats, PrimaryStatus, QuicStatus, RemoteStatus, Status,
    LATENCY_BUCKETS_S,
};

/// What a scrape of `/metrics` is answered with.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The metrics of one status, OpenMetrics text (ends with `# EOF`).
pub fn encode_openmetrics(status: &Status) -> String {
    let mut registry = Registry::with_prefix("dtu");
    registry.register_collector(Box::new(StatusCollector(status.clone())));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

#[derive(Debug)]
struct StatusCollector(Status);

impl Collector for StatusCollector {
    fn encode(&self, enc: DescriptorEncoder) -> fmt::Result {
        let mut m = Families { enc };
        match &self.0 {
            Status::Primary(p) => primary(&mut m, p),
            Status::Remote(r) => remote(&mut m, r),
        }
    }
}

/// Writes metric families through the crate's encoder.
struct Families<'a> {
    enc: DescriptorEncoder<'a>,
}

impl Families<'_> {
    fn counter(&mut self, name: &str, help: &str, unit: Option<Unit>, v: u64) -> fmt::Result {
        self.enc
            .encode_descriptor(name, help, unit.as_ref(), MetricType::Counter)?
            .encode_counter::<NoLabelSet, _, u64>(&v, None)
    }

    fn gauge(&mut self, name: &str, help: &str, unit: Option<Unit>, v: f64) -> fmt::Result {
        self.enc
            .encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?
            .encode_gauge(&v)
    }

    /// A gauge that exists only while its value is known.
    fn opt_gauge(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        v: Option<f64>,
    ) -> fmt::Result {
        match v {
            Some(v) => self.gauge(name, help, unit, v),
            None => Ok(()),
        }
    }

    fn flag(&mut self, name: &str, help: &str, on: bool) -> fmt::Result {
        self.gauge(name, help, None, f64::from(u8::from(on)))
    }

    /// One series per state, labelled `label`; 1 on `current`, 0 on the rest.
    fn state_set(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        states: &[&str],
        current: &str,
    ) -> fmt::Result {
        let mut me = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        for s in states {
            me.encode_family(&[(label, *s)])?
                .encode_gauge(&i64::from(*s == current))?;
        }
        Ok(())
    }

    fn counter_by(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: &[(&str, u64)],
    ) -> fmt::Result {
        let mut me = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for (l, v) in values {
            me.encode_family(&[(label, *l)])?
                .encode_counter::<NoLabelSet, _, u64>(v, None)?;
        }
        Ok(())
    }

    /// A latency histogram in seconds; one series per `(label value, stats)`
    /// when `label` is given, else the single one.
    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        label: Option<&str>,
        series: &[(&str, &LatencyStats)],
    ) -> fmt::Result {
        let unit = Unit::Seconds;
        let mut me = self
            .enc
            .encode_descriptor(name, help, Some(&unit), MetricType::Histogram)?;
        for (l, stats) in series {
            let buckets = per_bucket(stats);
            match label {
                Some(label) => me
                    .encode_family(&[(label, *l)])?
                    .encode_histogram::<NoLabelSet>(stats.sum_s, stats.count, &buckets, None)?,
                None => {
                    me.encode_histogram::<NoLabelSet>(stats.sum_s, stats.count, &buckets, None)?
                }
            }
        }
        Ok(())
    }

    fn quic(&mut self, q: &QuicStatus) -> fmt::Result {
        let b = || Some(Unit::Bytes);
        self.counter(
            "link_sent",
            "UDP payload bytes QUIC sent to the peer, retransmissions and headers included",
            b(),
            q.udp_tx_bytes,
        )?;
        self.counter(
            "link_received",
            "UDP payload bytes QUIC received from the peer",
            b(),
            q.udp_rx_bytes,
        )?;
        self.counter(
            "quic_connections",
            "QUIC connections established with the peer",
            None,
            q.connections,
        )?;
        self.counter(
            "quic_sent_packets",
            "QUIC packets sent",
            None,
            q.sent_packets,
        )?;
        self.counter(
            "quic_lost_packets",
            "QUIC packets declared lost (QUIC resent their data; dtu did not see it)",
            None,
            q.lost_packets,
        )?;
        self.counter(
            "quic_lost",
            "bytes in QUIC packets declared lost",
            b(),
            q.lost_bytes,
        )?;
        self.counter(
            "quic_congestion_events",
            "times QUIC's congestion controller reduced its window",
            None,
            q.congestion_events,
        )?;
        self.opt_gauge(
            "quic_path_mtu",
            "current QUIC path MTU",
            b(),
            q.path_mtu.map(f64::from),
        )?;
        self.opt_gauge(
            "quic_cwnd",
            "current QUIC congestion window",
            b(),
            q.cwnd_bytes.map(|c| c as f64),
        )?;
        self.opt_gauge(
            "quic_rtt",
            "QUIC's current RTT estimate",
            Some(Unit::Seconds),
            q.rtt_ms.map(|ms| ms / 1e3),
        )
    }

    fn common(
        &mut self,
        role: &str,
        connection: ConnectionState,
        uptime_s: f64,
        rtt_ms: Option<f64>,
    ) -> fmt::Result {
        self.state_set(
            "role",
            "the DTU's role",
            "role",
            &["primary", "remote"],
            role,
        )?;
        let states: Vec<&str> = ConnectionState::ALL.iter().map(|s| s.name()).collect();
        self.state_set(
            "connection_state",
            "the link to the peer",
            "state",
            &states,
            connection.name(),
        )?;
        self.gauge(
            "uptime",
            "time since the DTU started",
            Some(Unit::Seconds),
            uptime_s,
        )?;
        self.opt_gauge(
            "rtt",
            "dtu's smoothed heartbeat round-trip time",
            Some(Unit::Seconds),
            rtt_ms.map(|ms| ms / 1e3),
        )
    }
}

/// The crate takes per-bucket counts and sums them up itself; the status
/// keeps cumulative ones. `+Inf` holds everything.
fn per_bucket(s: &LatencyStats) -> Vec<(f64, u64)> {
    let mut out = Vec::with_capacity(LATENCY_BUCKETS_S.len() + 1);
    let mut below = 0;
    for (i, le) in LATENCY_BUCKETS_S.iter().enumerate() {
        let cum = s.buckets.get(i).copied().unwrap_or(s.count).max(below);
        out.push((*le, cum - below));
        below = cum;
    }
    out.push((f64::INFINITY, s.count.saturating_sub(below)));
    out
}

const TRIGGERS: [&str; 5] = [
    "received",
    "buffered",
    "sent",
    "remote-received",
    "remote-stored",
];

fn primary(m: &mut Families<'_>, p: &PrimaryStatus) -> fmt::Result {
    let b = || Some(Unit::Bytes);
    let s = || Some(Unit::Seconds);
    m.common("primary", p.connection, p.uptime_s, p.rtt_ms)?;
    m.quic(&p.quic)?;
    m.counter(
        "lane_sent",
        "bytes dtu wrote to its lanes, resent seqs included",
        b(),
        p.lane_bytes,
    )?;
    m.counter(
        "retransmits",
        "seqs dtu sent again (after a nack or a reconnect)",
        None,
        p.retransmits,
    )?;
    m.counter(
        "nacks",
        "chunks the remote refused (checksum or decode) and asked for again",
        None,
        p.nacks,
    )?;
    m.counter(
        "host_writes",
        "write operations accepted from the host",
        None,
        p.writes,
    )?;
    m.counter(
        "host_reads",
        "read operations served to the host",
        None,
        p.reads,
    )?;
    m.counter(
        "host_written",
        "payload bytes the host wrote",
        b(),
        p.bytes_written,
    )?;
    m.counter(
        "encoded",
        "bytes appended to the nvbuf after compression and sealing",
        b(),
        p.encoded_bytes,
    )?;
    m.gauge(
        "compression_ratio",
        "host bytes per encoded byte",
        None,
        p.compression_ratio,
    )?;
    m.gauge(
        "inflight",
        "payload bytes sent and not yet stored by the remote",
        b(),
        p.inflight_bytes as f64,
    )?;
    m.gauge(
        "nvbuf_used",
        "nvbuf bytes holding writes the remote has not stored",
        b(),
        p.buffered_bytes as f64,
    )?;
    m.gauge(
        "nvbuf_capacity",
        "nvbuf ring size",
        b(),
        p.nvbuf_capacity as f64,
    )?;
    m.gauge(
        "nvbuf_waiting_writers",
        "host writes waiting for nvbuf space",
        None,
        p.nvbuf_waiting_writers as f64,
    )?;
    m.counter(
        "nvbuf_full_waits",
        "times a host write had to wait for nvbuf space",
        None,
        p.nvbuf_full_waits,
    )?;
    m.gauge(
        "oldest_unreplicated",
        "age of the oldest write the remote has not stored (0: none)",
        s(),
        p.oldest_unreplicated_s.unwrap_or(0.0),
    )?;
    m.state_set(
        "trigger",
        "the acknowledgement trigger configured",
        "trigger",
        &TRIGGERS,
        &p.trigger,
    )?;
    m.state_set(
        "trigger_in_force",
        "the trigger answering now (remote-stored below the dirty threshold)",
        "trigger",
        &TRIGGERS,
        &p.effective_trigger,
    )?;
    m.flag(
        "spoofing_active",
        "1 while answers before remote-stored are in force",
        p.spoofing_active,
    )?;
    m.gauge(
        "dirty_threshold_ratio",
        "host dirty share at or above which spoofing applies, 0..1",
        None,
        p.dirty_threshold_pct / 100.0,
    )?;
    m.opt_gauge(
        "dirty_ratio",
        "the host's last reported dirty cache share, 0..1",
        None,
        p.dirty_pct.map(|d| d / 100.0),
    )?;
    let answered = p.answered.named().map(|(t, v)| (t, *v));
    m.counter_by(
        "answered",
        "host operations answered, by the trigger that answered them",
        "trigger",
        &answered,
    )?;
    let by = p.ack_latency_by_trigger.named();
    m.histogram(
        "ack_latency",
        "time from a host operation's submission to its answer, by trigger",
        Some("trigger"),
        &by,
    )?;
    m.histogram(
        "replication_delay",
        "time from a host write's submission to remote-stored (primary to replica delay)",
        None,
        &[("", &p.replication_delay)],
    )?;
    for (name, help, v) in [
        ("highest_seq", "highest seq assigned", p.highest_seq),
        (
            "buffered_seq",
            "every seq up to this one is durable in the nvbuf",
            p.buffered_seq,
        ),
        (
            "remote_received_seq",
            "every seq up to this one is received by the remote",
            p.remote_received_seq,
        ),
        (
            "remote_stored_seq",
            "every seq up to this one is stored on the replica",
            p.remote_stored_seq,
        ),
    ] {
        m.gauge(name, help, None, v as f64)?;
    }
    let s = &p.mirror.sync;
    m.flag(
        "ahead",
        "1 while the nvbuf overflowed and writes go to the local copy and the changed-block map",
        p.mirror.mode == "ahead",
    )?;
    m.gauge(
        "out_of_sync",
        "bytes the changed-block map marks: what the replica lacks until a resync",
        Some(Unit::Bytes),
        p.mirror.out_of_sync_bytes as f64,
    )?;
    m.flag("sync_running", "1 while a sync runs", s.sync.active)?;
    m.gauge(
        "sync_remaining",
        "bytes the running sync still has to bring over (0 when none runs)",
        Some(Unit::Bytes),
        s.sync.total_bytes.saturating_sub(s.sync.done_bytes) as f64,
    )?;
    m.counter(
        "sync_copied",
        "bytes copied by syncs since start",
        Some(Unit::Bytes),
        s.copied_bytes,
    )?;
    m.counter(
        "sync_skipped",
        "bytes a checksum sync found equal and did not send",
        Some(Unit::Bytes),
        s.skipped_bytes,
    )?;
    m.flag(
        "verify_running",
        "1 while an online verify runs",
        s.verify.active,
    )?;
    m.counter(
        "verify_compared",
        "bytes compared by online verifies since start",
        Some(Unit::Bytes),
        s.compared_bytes,
    )?;
    m.gauge(
        "verify_mismatched",
        "bytes found different by the last (or running) verify",
        Some(Unit::Bytes),
        s.mismatched_bytes as f64,
    )?;
    m.flag(
        "failed",
        "1 once the pipeline failed for good (see dtu status)",
        p.failed.is_some(),
    )
}

fn remote(m: &mut Families<'_>, r: &RemoteStatus) -> fmt::Result {
    let b = || Some(Unit::Bytes);
    m.common("remote", r.connection, r.uptime_s, r.rtt_ms)?;
    m.quic(&r.quic)?;
    m.flag(
        "consistent",
        "1 when the replica is a prefix state of the primary's writes",
        r.consistent,
    )?;
    for (name, help, v) in [
        (
            "received_seq",
            "every seq up to this one is received",
            r.received_seq,
        ),
        (
            "applied_seq",
            "every seq up to this one is written to the replica",
            r.applied_seq,
        ),
        (
            "stored_seq",
            "every seq up to this one is synced on the replica",
            r.stored_seq,
        ),
    ] {
        m.gauge(name, help, None, v as f64)?;
    }
    m.counter(
        "applied",
        "payload bytes written to the replica",
        b(),
        r.applied_bytes,
    )?;
    m.counter(
        "stored",
        "payload bytes written and synced on the replica",
        b(),
        r.stored_bytes,
    )?;
    m.counter(
        "applied_ops",
        "operations applied to the replica",
        None,
        r.applied_ops,
    )?;
    m.counter("syncs", "replica syncs", None, r.syncs)?;
    m.gauge(
        "pending",
        "decoded bytes waiting for an earlier seq",
        b(),
        r.pending_bytes as f64,
    )?;
    m.counter("chunks", "chunks received", None, r.chunks)?;
    m.counter("duplicates", "duplicate chunks dropped", None, r.duplicates)?;
    m.counter(
        "checksum_failures",
        "chunks refused for a checksum mismatch",
        None,
        r.checksum_failures,
    )?;
    m.counter(
        "decode_failures",
        "chunks refused as undecodable",
        None,
        r.decode_failures,
    )?;
    m.flag(
        "applying",
        "0 once the remote stopped applying after an error (see the status)",
        r.failed.is_none(),
    )?;
    if let Some(n) = r.checkpoints {
        m.gauge(
            "checkpoints",
            "checkpoints held (as-of views)",
            None,
            n as f64,
        )?;
        m.gauge(
            "undo",
            "bytes the undo journal holds",
            b(),
            r.undo_bytes as f64,
        )?;
        if let Some(w) = r.undo_window_s {
            m.gauge(
                "undo_window",
                "how far back the oldest checkpoint held reaches",
                Some(Unit::Seconds),
                w,
            )?;
        }
    }
    m.flag(
        "held",
        "1 while a rollback trial or a committed rollback holds applying",
        r.hold.is_some(),
    )?;
    m.counter(
        "refused_connections",
        "connection attempts refused (certificate or handshake)",
        None,
        r.refused,
    )
}

#[cfg(test)]
mod tests {
    use super::super::samples;
    use super::*;

    fn lines(s: &Status) -> Vec<String> {
        encode_openmetrics(s).lines().map(str::to_string).collect()
    }

    fn has(lines: &[String], want: &str) -> bool {
        lines.iter().any(|l| l == want)
    }

    #[test]
    fn primary_families_are_typed_and_named() {
        let l = lines(&Status::Primary(Box::new(samples::primary())));
        for want in [
            "# TYPE dtu_link_sent_bytes counter",
            "dtu_link_sent_bytes_total 1200000",
            "# TYPE dtu_quic_lost_packets counter",
            "dtu_quic_lost_packets_total 20",
            "dtu_quic_path_mtu_bytes 1452.0",
            "# TYPE dtu_nvbuf_used_bytes gauge",
            "dtu_nvbuf_used_bytes 1048576.0",
            "dtu_nvbuf_capacity_bytes 67108864.0",
            "# TYPE dtu_connection_state gauge",
            "dtu_connection_state{state=\"connected\"} 1",
            "dtu_connection_state{state=\"waiting\"} 0",
            "dtu_role{role=\"primary\"} 1",
            "dtu_answered_total{trigger=\"buffered\"} 3",
            "# TYPE dtu_ack_latency_seconds histogram",
            "dtu_ack_latency_seconds_count{trigger=\"buffered\"} 3",
            "dtu_ack_latency_seconds_bucket{le=\"0.001\",trigger=\"buffered\"} 3",
            "dtu_ack_latency_seconds_bucket{le=\"0.0005\",trigger=\"buffered\"} 1",
            "dtu_ack_latency_seconds_bucket{le=\"+Inf\",trigger=\"remote-stored\"} 2",
            "# TYPE dtu_replication_delay_seconds histogram",
            "dtu_replication_delay_seconds_count 3",
            "dtu_replication_delay_seconds_bucket{le=\"0.025\"} 2",
            "dtu_replication_delay_seconds_bucket{le=\"+Inf\"} 3",
            "dtu_trigger_in_force{trigger=\"remote-stored\"} 1",
            "dtu_retransmits_total 4",
            "# EOF",
        ] {
            assert!(has(&l, want), "{want:?} missing");
        }
        every_counter_sample_ends_in_total(&l);
    }

    /// Counter samples are `NAME_total`; no gauge is named `_total`.
    fn every_counter_sample_ends_in_total(l: &[String]) {
        let mut kind = "";
        let mut family = String::new();
        for line in l {
            if let Some(t) = line.strip_prefix("# TYPE ") {
                let (name, k) = t.split_once(' ').unwrap();
                family = name.to_string();
                kind = if k == "counter" { "counter" } else { "other" };
                assert!(!name.ends_with("_total"), "{line}");
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(name.starts_with(&family), "{line} outside {family}");
                if kind == "counter" {
                    assert_eq!(name, format!("{family}_total"), "{line}");
                }
            }
        }
    }

    #[test]
    fn remote_families_and_unknown_gauges() {
        let l = lines(&Status::Remote(Box::new(samples::remote())));
        for want in [
            "dtu_role{role=\"remote\"} 1",
            "dtu_connection_state{state=\"waiting\"} 1",
            "dtu_applied_bytes_total 32768",
            "dtu_stored_bytes_total 28672",
            "dtu_stored_seq 7.0",
            "dtu_consistent 1.0",
            "dtu_quic_lost_packets_total 20",
        ] {
            assert!(has(&l, want), "{want:?} missing");
        }
        every_counter_sample_ends_in_total(&l);
        // Unknown while no primary is connected: absent, not zero.
        let text = l.join("\n");
        assert!(!text.contains("dtu_quic_cwnd_bytes "), "{text}");
        assert!(!text.contains("dtu_rtt_seconds "), "{text}");
    }

    #[test]
    fn buckets_from_a_short_or_damaged_status_stay_cumulative() {
        let mut s = samples::latency(&[1.0, 2.0, 3.0]);
        s.buckets.truncate(3);
        s.buckets[1] = 0; // not monotonic
        let b = per_bucket(&s);
        assert_eq!(b.len(), LATENCY_BUCKETS_S.len() + 1);
        assert_eq!(b.iter().map(|(_, n)| n).sum::<u64>(), s.count);
    }

    /// The README's metrics table names every family served.
    #[test]
    fn the_readme_lists_every_family() {
        let readme = include_str!("../../../README.md");
        for s in [
            Status::Primary(Box::new(samples::primary())),
            Status::Remote(Box::new(samples::remote())),
        ] {
            for line in lines(&s) {
                if let Some(t) = line.strip_prefix("# TYPE ") {
                    let name = t.split(' ').next().unwrap();
                    assert!(
                        readme.contains(&format!("`{name}")),
                        "README.md does not list {name}"
                    );
                }
            }
        }
    }
}
