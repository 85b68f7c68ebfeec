//! Accepting a primary: the checks and records the remote makes when a
//! primary's Hello arrives, before a single write crosses. The receiver
//! checks the peer (volume, size, key, epoch, that the primary has not lost
//! seqs the replica holds); the state file records the new epoch, durably,
//! and that the primary lost answered writes when it says so; the answer
//! tells the primary whether the replica is marked inconsistent. The real
//! session and the simulator call this same function.

use std::time::Instant;

use dtu_proto::frame::{hello_flags, Hello};
use dtu_proto::handshake::HandshakeError;
use dtu_proto::Receiver;

use crate::replica::VolumeState;

/// Why a primary is not accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcceptError {
    #[error(transparent)]
    Refused(#[from] HandshakeError),
    #[error("recording the primary in the replica's state file: {0}")]
    State(#[from] std::io::Error),
}

/// Checks `theirs` against this remote's Hello template `ours`, records
/// what must be recorded, and returns the answer to send.
pub fn accept_primary(
    receiver: &mut Receiver,
    state: &mut VolumeState,
    ours: &Hello,
    theirs: &Hello,
    now: Instant,
) -> Result<Hello, AcceptError> {
    let mut reply = receiver.on_hello(ours, theirs, now)?;
    state.set_epoch(theirs.epoch)?;
    state.set_replay_bound(theirs.highest_seq)?;
    if theirs.flags & hello_flags::LOST_WRITES != 0 {
        tracing::error!(
            "the primary (epoch {}) lost answered writes after seq {}: the replica is \
             marked inconsistent until a resync or verify",
            theirs.epoch,
            theirs.stored_seq
        );
        state.set_lost_writes(theirs.epoch, theirs.stored_seq.saturating_add(1), None)?;
    }
    if !state.inconsistencies().is_empty() {
        reply.flags |= hello_flags::INCONSISTENT;
    }
    Ok(reply)
}
