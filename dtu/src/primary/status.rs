//! The primary builds its own status: a short look at the sender under the
//! core's lock, then the nvbuf, the byte counters, the rates and QUIC's
//! figures, turned into the plain [`PrimaryStatus`] the display renders.

use std::sync::atomic::Ordering;
use std::time::Instant;

use dtu_proto::Trigger;

use crate::metrics::latency_stats;
use crate::status::{gen_hex, ByTrigger, ConnectionState, MirrorStatus, PrimaryStatus};
use crate::units::format_duration;

use super::core::LinkState;
use super::Primary;

pub(super) fn build(p: &Primary) -> PrimaryStatus {
    let now = Instant::now();
    // The restore map's lock is never taken under the core's.
    let restore = p
        .core
        .restore
        .as_ref()
        .map(|r| r.progress())
        .unwrap_or_default();
    let on_demand = p.core.restore.as_ref().map_or(0, |r| r.on_demand_bytes());
    // Copy out under the lock; summarise the histograms after it.
    let (progress, stats, rtt, policy, dirty, oldest, link, failed, mirror, degraded, answering) = {
        let st = p.core.lock();
        let s = &st.sender;
        let map = p.core.map.as_deref();
        let mirror = MirrorStatus {
            mode: st.mode.name().into(),
            generation: gen_hex(st.meta.gens.current),
            generation_history: st
                .meta
                .gens
                .history
                .iter()
                .filter(|g| **g != 0)
                .map(|g| gen_hex(*g))
                .collect(),
            decision: st.decision.clone(),
            out_of_sync_bytes: map.map_or(0, |m| m.marked_bytes()),
            has_map: map.is_some(),
            sync: st.sync.status(map, now),
            restore: restore.clone(),
            restore_on_demand_bytes: on_demand,
        };
        (
            s.progress(),
            s.stats().clone(),
            s.rtt().smoothed,
            s.policy(),
            s.dirty(),
            s.oldest_unstored()
                .map(|t| now.saturating_duration_since(t)),
            st.link.clone(),
            st.failed.as_ref().map(ToString::to_string),
            mirror,
            s.degraded(now),
            (s.effective().0, s.spoofing_active(), s.draining_spoofed()),
        )
    };
    let (effective, spoofing_active, draining) = answering;
    let (connection, peer, detail) = match link {
        LinkState::Connecting {
            attempts,
            last_error,
        } => (
            ConnectionState::Connecting,
            None,
            last_error.map(|e| format!("attempt {attempts}: {e}")),
        ),
        LinkState::Connected { since, peer } => (
            ConnectionState::Connected,
            Some(peer),
            Some(format!("for {}", format_duration(since.elapsed()))),
        ),
        LinkState::Refused { reason } => (ConnectionState::Refused, None, Some(reason)),
    };
    let nv = p.core.nvbuf.stats(std::time::Instant::now());
    let c = &p.core.counters;
    let plain = c.plain_bytes.load(Ordering::Relaxed);
    let encoded = c.encoded_bytes.load(Ordering::Relaxed);
    let rates = p.core.rates();
    let ms = |d: Option<std::time::Duration>| d.map(|d| d.as_secs_f64() * 1e3);
    let by_trigger = ByTrigger::from_array(
        Trigger::ALL.map(|t| latency_stats(&stats.answer_latency_by_trigger[t])),
    );
    PrimaryStatus {
        volume: dtu_proto::handshake::volume_hex(&p.volume.id),
        volume_size: p.volume.size,
        epoch: p.epoch,
        uptime_s: p.started.elapsed().as_secs_f64(),
        connection,
        peer,
        connection_detail: detail,
        rtt_ms: ms(rtt),
        link_throughput_bps: rates.link_bps * 8.0,
        host_throughput_bps: rates.host_bps * 8.0,
        lanes: p.lanes,
        encode_workers: p.ingest.encode.threads(),
        inflight_bytes: progress.inflight_bytes,
        buffered_bytes: nv.used_bytes,
        nvbuf_capacity: nv.capacity,
        nvbuf_fill_pct: nv.fill_pct,
        nvbuf_waiting_writers: nv.waiting_appenders,
        nvbuf_full_waits: nv.full_waits,
        records_per_flush: nv.records_per_flush(),
        oldest_unreplicated_s: oldest.map(|d| d.as_secs_f64()),
        trigger: policy.trigger.to_string(),
        effective_trigger: if degraded && effective > Trigger::Buffered {
            "buffered (the link is down)".to_string()
        } else if draining && !policy.spoofing_active(dirty) {
            format!("{effective} (until the backlog spoofed above the dirty threshold is stored)")
        } else {
            effective.to_string()
        },
        delay_ms: policy.delay.as_secs_f64() * 1e3,
        spoofing_enabled: policy.spoofing,
        spoofing_active,
        dirty_threshold_pct: policy.dirty_threshold,
        dirty_pct: dirty,
        answered: ByTrigger::from_array(stats.answered_by.0),
        compression_ratio: if encoded == 0 {
            1.0
        } else {
            plain as f64 / encoded as f64
        },
        retransmits: stats.retransmits,
        nacks: stats.nacks,
        writes: c.writes.load(Ordering::Relaxed),
        reads: c.reads.load(Ordering::Relaxed),
        bytes_written: plain,
        encoded_bytes: encoded,
        lane_bytes: c.wire_bytes.load(Ordering::Relaxed),
        highest_seq: progress.highest,
        buffered_seq: progress.buffered,
        remote_received_seq: progress.remote_received,
        remote_stored_seq: progress.remote_stored,
        recovered_at_start: p.recovered,
        replication_delay_p50_ms: ms(stats.replication_delay.quantile(0.5)),
        replication_delay_p99_ms: ms(stats.replication_delay.quantile(0.99)),
        ack_latency_p50_ms: ms(stats.answer_latency.quantile(0.5)),
        ack_latency_p99_ms: ms(stats.answer_latency.quantile(0.99)),
        replication_delay: latency_stats(&stats.replication_delay),
        ack_latency: latency_stats(&stats.answer_latency),
        ack_latency_by_trigger: by_trigger,
        quic: p.core.quic.status(),
        mirror,
        failed,
    }
}
