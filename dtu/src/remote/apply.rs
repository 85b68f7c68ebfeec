//! The applier: the one thread that writes to the replica.
//!
//! It takes every operation the receiver has released (in seq order),
//! writes each one and notes it in the state file, then makes the whole
//! batch durable with a single replica sync and acknowledges it as Stored:
//! one sync covers as many writes as arrived while the previous one ran.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use dtu_proto::receiver::Apply;

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
            let batch = take_batch(&core);
            if batch.is_empty() {
                break;
            }
            if let Err(e) = apply_batch(&core, batch) {
                tracing::error!("replica I/O failed, the remote stops applying: {e}");
                core.lock().failed = Some(format!("replica I/O: {e}"));
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
    if st.failed.is_some() {
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

fn apply_batch(core: &RCore, batch: Vec<Apply>) -> std::io::Result<()> {
    let replica = core.replica.as_ref();
    let mut last = 0;
    let bytes: u64 = batch.iter().map(Apply::bytes).sum();
    for op in &batch {
        match op {
            Apply::Write { chunks, .. } => {
                for (offset, data) in chunks {
                    replica.write_at(*offset, data)?;
                }
            }
            Apply::Trim { offset, length, .. } => replica.trim(*offset, *length)?,
            Apply::Flush { .. } => {}
            Apply::Checkpoint { seq, label } => {
                tracing::info!("checkpoint {label:?} at seq {seq}");
                core.lock().last_checkpoint = Some(format!("{label} (seq {seq})"));
            }
        }
        last = op.seq();
        core.volume_state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_applied(last)?;
        core.lock().receiver.on_applied(op);
    }
    replica.sync()?;
    {
        let mut vs = core.volume_state.lock().unwrap_or_else(|p| p.into_inner());
        let was = vs.inconsistencies().len();
        vs.set_synced(last)?;
        if was > 0 && vs.inconsistencies().is_empty() {
            tracing::info!("replica is consistent again at seq {last}");
        }
    }
    {
        let mut st = core.lock();
        st.receiver.on_synced(last);
        st.syncs += 1;
        st.stored_bytes += bytes;
    }
    core.applied.send_replace(last);
    core.control_wake.notify_waiters();
    Ok(())
}
