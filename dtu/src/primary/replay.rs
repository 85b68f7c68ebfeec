//! Replay after a restart: what the nvbuf recovered goes back into the
//! pipeline. Every recovered operation is handed to the sender in seq order
//! (buffered already, no host waiting for it), so it is sent again from the
//! remote's stored seq on; and every recovered record is applied again to the
//! local copy, which a machine crash may have set back (its unsynced writes
//! lost) while the nvbuf kept them. The real primary and the simulator run
//! this same code after every crash.

use std::time::Instant;

use dtu_proto::codec::{decode_chunk, Key};
use dtu_proto::frame::{self, Frame};
use dtu_proto::planted::{self, Bug};
use dtu_proto::sender::{OpKind, Sender, SenderError};
use dtu_proto::Seq;

use crate::nvbuf::Recovery;

use super::ingest::kind_from_flags;
use super::local::{LocalCopy, LocalOp};

/// Why recovered records cannot be replayed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    #[error("recovered records do not form a stream: {0}")]
    Sender(#[from] SenderError),
    #[error("recovered seq {seq} is not a frame this build reads: {why}")]
    Frame { seq: Seq, why: String },
    #[error(
        "recovered seq {seq} does not decode (is volume.key the one it was sealed with?): {why}"
    )]
    Decode { seq: Seq, why: String },
    #[error("replaying seq {seq} into the local copy: {source}")]
    Local {
        seq: Seq,
        #[source]
        source: std::io::Error,
    },
}

/// What a replay put back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Operations handed to the sender.
    pub ops: usize,
    pub first: Option<Seq>,
    pub last: Option<Seq>,
}

/// Hands every recovered operation to `sender`, in seq order, as buffered
/// and answered (nobody waits for it any more).
pub fn into_sender(
    recovery: &Recovery,
    sender: &mut Sender,
    now: Instant,
) -> Result<Replayed, ReplayError> {
    let mut out = Replayed::default();
    let mut current: Option<(Seq, OpKind, u64)> = None;
    let mut flush = |op: (Seq, OpKind, u64), out: &mut Replayed| -> Result<(), ReplayError> {
        sender.recover(op.0, op.1, op.2, now)?;
        out.ops += 1;
        out.first.get_or_insert(op.0);
        out.last = Some(op.0);
        Ok(())
    };
    for (hdr, _) in &recovery.records {
        let kind = kind_from_flags(hdr.flags).unwrap_or(OpKind::Write);
        match &mut current {
            Some((seq, _, bytes)) if *seq == hdr.seq => *bytes += u64::from(hdr.length),
            _ => {
                if let Some(op) = current.take() {
                    flush(op, &mut out)?;
                }
                let bytes = if kind == OpKind::Write {
                    u64::from(hdr.length)
                } else {
                    0
                };
                current = Some((hdr.seq, kind, bytes));
            }
        }
    }
    if let Some(op) = current.take() {
        flush(op, &mut out)?;
    }
    Ok(out)
}

/// Applies every recovered record to the local copy again, in order, and
/// syncs it: afterwards the local copy holds the stream up to the last
/// recovered seq, whatever a crash took from it.
pub fn into_local(
    recovery: &Recovery,
    local: &LocalCopy,
    key: Option<&Key>,
) -> Result<(), ReplayError> {
    let Some(first) = recovery.first_seq else {
        return Ok(());
    };
    // Everything before the first recovered seq was synced to the local copy
    // before the nvbuf released it.
    local.rewind_to(first - 1);
    for (hdr, payload) in &recovery.records {
        let seq = hdr.seq;
        let op = match frame::decode_slice(payload, frame::DEFAULT_MAX_FRAME) {
            Ok(Some((Frame::Write(w), _))) => {
                let data = decode_chunk(&w.chunk, w.id, w.offset, key).map_err(|e| {
                    ReplayError::Decode {
                        seq,
                        why: e.to_string(),
                    }
                })?;
                LocalOp::Write {
                    offset: w.offset,
                    data,
                }
            }
            Ok(Some((Frame::Trim(t), _))) if !planted::active(Bug::ForgetTrimOnReplay) => {
                LocalOp::Trim {
                    offset: t.offset,
                    len: t.length,
                }
            }
            Ok(Some(_)) => LocalOp::None,
            Ok(None) => {
                return Err(ReplayError::Frame {
                    seq,
                    why: "record holds an incomplete frame".into(),
                })
            }
            Err(e) => {
                return Err(ReplayError::Frame {
                    seq,
                    why: e.to_string(),
                })
            }
        };
        let last = hdr.chunk_index + 1 == hdr.chunk_count;
        local
            .apply(seq, &op, last)
            .map_err(|source| ReplayError::Local { seq, source })?;
    }
    local.disk().sync().map_err(|source| ReplayError::Local {
        seq: recovery.last_seq.unwrap_or(first),
        source,
    })?;
    local.set_applied(recovery.last_seq.unwrap_or(first));
    Ok(())
}
