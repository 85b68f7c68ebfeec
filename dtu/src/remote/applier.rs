//! The applier component: writes released operations to the replica in seq
//! order and makes them durable, keeping the replica's state file in step.
//!
//! [`Applier::apply`] writes one operation and notes it as applied (a plain
//! write of the state, no sync); [`Applier::sync`] makes everything applied
//! durable with one replica sync, then records the synced seq durably in the
//! state file: only then may the remote acknowledge it as Stored. The remote's apply thread and the
//! simulator drive this same code; what they do around it (taking batches
//! from the receiver, sending acks) stays in their thin loops.

use std::sync::{Arc, Mutex, MutexGuard};

use dtu_proto::receiver::Apply;
use dtu_proto::Seq;

use crate::replica::{Replica, VolumeState};

/// Why the replica cannot take an operation: the remote must stop applying.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    #[error("writing seq {seq} to the replica: {source}")]
    Write {
        seq: Seq,
        #[source]
        source: std::io::Error,
    },
    #[error("syncing the replica through seq {seq}: {source}")]
    Sync {
        seq: Seq,
        #[source]
        source: std::io::Error,
    },
    #[error("recording seq {seq} in the replica's state file: {source}")]
    State {
        seq: Seq,
        #[source]
        source: std::io::Error,
    },
    #[error("seq {got} was released after seq {after}: the receiver broke the order")]
    OutOfOrder { got: Seq, after: Seq },
}

/// What applying an operation means beyond the replica's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// A write, trim or flush.
    Data,
    /// A checkpoint: the replica now holds the volume as of this label.
    Checkpoint { seq: Seq, label: String },
}

/// Writes operations to a replica and keeps its state file in step.
pub struct Applier {
    replica: Arc<dyn Replica>,
    state: Arc<Mutex<VolumeState>>,
    applied: Seq,
    synced: Seq,
    /// Bytes written since the last sync.
    unsynced_bytes: u64,
}

impl Applier {
    /// An applier for a replica whose state says every seq up to `stored`
    /// is on it.
    pub fn new(replica: Arc<dyn Replica>, state: Arc<Mutex<VolumeState>>, stored: Seq) -> Applier {
        Applier {
            replica,
            state,
            applied: stored,
            synced: stored,
            unsynced_bytes: 0,
        }
    }

    fn state(&self) -> MutexGuard<'_, VolumeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes one operation (not yet durable).
    pub fn apply(&mut self, op: &Apply) -> Result<Applied, ApplyError> {
        let seq = op.seq();
        if seq != self.applied + 1 {
            return Err(ApplyError::OutOfOrder {
                got: seq,
                after: self.applied,
            });
        }
        let write_err = |source| ApplyError::Write { seq, source };
        let out = match op {
            Apply::Write { chunks, .. } => {
                for (offset, data) in chunks {
                    self.replica.write_at(*offset, data).map_err(write_err)?;
                    self.unsynced_bytes += data.len() as u64;
                }
                Applied::Data
            }
            Apply::Trim { offset, length, .. } => {
                self.replica.trim(*offset, *length).map_err(write_err)?;
                Applied::Data
            }
            Apply::Flush { .. } => Applied::Data,
            Apply::Checkpoint { seq, label } => Applied::Checkpoint {
                seq: *seq,
                label: label.clone(),
            },
        };
        self.state()
            .set_applied(seq)
            .map_err(|source| ApplyError::State { seq, source })?;
        self.applied = seq;
        Ok(out)
    }

    /// Makes every applied operation durable. Returns the newly synced seq
    /// and the bytes it made durable, or `None` when nothing was pending.
    pub fn sync(&mut self) -> Result<Option<(Seq, u64)>, ApplyError> {
        if self.applied == self.synced {
            return Ok(None);
        }
        let seq = self.applied;
        self.replica
            .sync()
            .map_err(|source| ApplyError::Sync { seq, source })?;
        {
            // The synced seq is made durable before anyone is told it is
            // stored: a machine crash must not bring the remote back at an
            // older position than the primary saw acknowledged, since the
            // primary frees what was acknowledged and cannot resend it.
            let mut st = self.state();
            let was = st.inconsistencies().len();
            st.set_synced(seq)
                .and_then(|()| st.sync())
                .map_err(|source| ApplyError::State { seq, source })?;
            if was > 0 && st.inconsistencies().is_empty() {
                tracing::info!("replica is consistent again at seq {seq}");
            }
        }
        self.synced = seq;
        let bytes = std::mem::take(&mut self.unsynced_bytes);
        Ok(Some((seq, bytes)))
    }

    /// The highest seq written to the replica.
    pub fn applied(&self) -> Seq {
        self.applied
    }

    /// The highest seq durable on the replica.
    pub fn synced(&self) -> Seq {
        self.synced
    }

    /// The replica.
    pub fn replica(&self) -> &Arc<dyn Replica> {
        &self.replica
    }
}
