//! The apply thread: a thin loop around the [`Applier`] component.
//!
//! It takes every operation the receiver has released (in seq order),
//! applies each one, then makes the whole batch durable with a single
//! replica sync and acknowledges it as Stored: one sync covers as many
//! writes as arrived while the previous one ran.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use dtu_proto::frame::{DigestResponse, Frame, MarkerKind};
use dtu_proto::receiver::Apply;

use super::applier::{Applied, Applier, ApplyError};
use super::RCore;

/// Most bytes applied before a sync, so acks keep flowing under load.
const BATCH_BYTES: u64 = 64 << 20;
/// How often the state file itself is synced (it shortens the replay after
/// a machine crash; correctness does not depend on it).
const STATE_SYNC: Duration = Duration::from_secs(1);

pub(super) fn run(core: Arc<RCore>, wake: Receiver<()>) {
    let mut last_state_sync = Instant::now();
    loop {
        match wake.recv_timeout(Duration::from_millis(200)) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        loop {
            let mut applier = core.applier.lock().unwrap_or_else(|p| p.into_inner());
            let batch = take_batch(&core);
            if batch.is_empty() {
                break;
            }
            if let Err(e) = apply_batch(&core, &mut applier, batch) {
                tracing::error!("the remote stops applying: {e}");
                core.lock().failed = Some(e.to_string());
                core.control_wake.notify_waiters();
                return;
            }
        }
        let now = Instant::now();
        core.apply_rate_sample(now);
        if now.duration_since(last_state_sync) >= STATE_SYNC {
            last_state_sync = now;
            if let Err(e) = core
                .volume_state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .sync()
            {
                tracing::warn!("replica state file sync: {e}");
            }
        }
        if core.is_shutdown() {
            return;
        }
    }
}

fn take_batch(core: &RCore) -> Vec<Apply> {
    let mut st = core.lock();
    // A failure stops applying; a rollback trial or commit holds it.
    if st.failed.is_some() || !st.hold.applying() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut bytes = 0;
    while bytes < BATCH_BYTES {
        let Some(op) = st.receiver.poll_apply() else {
            break;
        };
        bytes += op.bytes();
        out.push(op);
    }
    out
}

/// Applies a batch through the [`Applier`], one sync for all of it, and
/// acknowledges it as Stored.
fn apply_batch(core: &RCore, applier: &mut Applier, batch: Vec<Apply>) -> Result<(), ApplyError> {
    for (i, op) in batch.iter().enumerate() {
        // The undo journal saves what this era's writes overwrite, with
        // one sync, before the first of them reaches the replica.
        match applier.apply_in_batch(&batch, i)? {
            Applied::Data => {}
            Applied::Checkpoint { seq, label, .. } => {
                tracing::info!("checkpoint {label:?} at seq {seq}");
                core.lock().last_checkpoint = Some(format!("{label} (seq {seq})"));
            }
            Applied::Digests { seq, digests } => {
                core.lock()
                    .receiver
                    .push_transmit(Frame::DigestResponse(DigestResponse { seq, digests }));
            }
            Applied::Sync { seq, kind, gen } => match kind {
                MarkerKind::SyncStart => tracing::info!(
                    "seq {seq}: a sync towards generation {gen:016x} begins; the replica is inconsistent until it completes"
                ),
                MarkerKind::SyncDone => tracing::info!(
                    "seq {seq}: the sync towards generation {gen:016x} is complete"
                ),
            },
        }
        core.lock().receiver.on_applied(op);
    }
    if let Some((seq, bytes)) = applier.sync()? {
        let mut st = core.lock();
        st.receiver.on_synced(seq);
        st.syncs += 1;
        st.stored_bytes += bytes;
        drop(st);
        core.applied.send_replace(seq);
    }
    core.control_wake.notify_waiters();
    Ok(())
}
