//! The remote builds its own status: the receiver's frontiers and counters
//! under the core's lock, then the apply rate and QUIC's figures, turned
//! into the plain [`RemoteStatus`] the display renders.

use crate::status::{ConnectionState, RemoteStatus};

use super::Remote;

pub(super) fn build(remote: &Remote) -> RemoteStatus {
    let core = &remote.core;
    let apply_bps = core
        .apply_rate
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .per_second()
        * 8.0;
    let quic = core.quic.status();
    let (checkpoints, oldest_checkpoint, undo_bytes, undo_window_s) = match &core.undo {
        Some(u) => {
            let u = u.lock().unwrap_or_else(|p| p.into_inner());
            (
                Some(u.len()),
                u.oldest().map(|e| e.to_string()),
                u.disk_bytes(),
                u.oldest()
                    .map(|e| super::undo::now_us().saturating_sub(e.time_us) as f64 / 1e6),
            )
        }
        None => (None, None, 0, None),
    };
    let (reasons, gens, sync_target) = {
        let vs = core.volume_state.lock().unwrap_or_else(|p| p.into_inner());
        (vs.inconsistencies(), vs.gens(), vs.sync_target())
    };
    let st = core.lock();
    let r = &st.receiver;
    let stats = r.stats();
    let consistent = reasons.is_empty();
    RemoteStatus {
        volume: dtu_proto::handshake::volume_hex(&remote.volume.id),
        volume_size: remote.volume.size,
        uptime_s: remote.started.elapsed().as_secs_f64(),
        connection: if st.peer.is_some() {
            ConnectionState::Connected
        } else {
            ConnectionState::Waiting
        },
        peer: st.peer.clone(),
        primary_epoch: r.epoch_seen(),
        rtt_ms: r.rtt().smoothed.map(|d| d.as_secs_f64() * 1e3),
        replica: remote.replica_path.display().to_string(),
        consistent,
        inconsistent_until: reasons.iter().find_map(|i| match i {
            crate::replica::Inconsistency::Replay { until } => Some(*until),
            _ => None,
        }),
        inconsistent_reasons: reasons.iter().map(|r| r.to_string()).collect(),
        received_seq: r.received_upto(),
        applied_seq: r.applied_upto(),
        stored_seq: r.stored_upto(),
        pending_bytes: r.pending_bytes(),
        apply_throughput_bps: apply_bps,
        decode_workers: remote.workers,
        lanes: st.lanes,
        chunks: stats.chunks,
        duplicates: stats.duplicates,
        checksum_failures: stats.checksum_failures,
        decode_failures: stats.decode_failures,
        applied_ops: stats.applied_ops,
        applied_bytes: stats.applied_bytes,
        stored_bytes: st.stored_bytes,
        syncs: st.syncs,
        ops_per_sync: if st.syncs == 0 {
            0.0
        } else {
            stats.applied_ops as f64 / st.syncs as f64
        },
        last_checkpoint: st.last_checkpoint.clone(),
        checkpoints,
        oldest_checkpoint,
        undo_bytes,
        undo_window_s,
        hold: st.hold.describe(),
        view: remote
            .views
            .current()
            .map(|(e, url)| format!("checkpoint {e} at {url}")),
        failed: st.failed.clone(),
        refused: st.refused,
        last_refusal: st.last_refusal.clone(),
        generation: crate::status::gen_hex(gens.current),
        generation_history: gens
            .history
            .iter()
            .filter(|g| **g != 0)
            .map(|g| crate::status::gen_hex(*g))
            .collect(),
        sync_target: (sync_target != 0).then(|| crate::status::gen_hex(sync_target)),
        decision: st.decision.clone(),
        quic,
    }
}
