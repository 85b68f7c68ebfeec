//! Connecting to the remote, without the network: the Hello this primary
//! offers at each connect and the checks on the remote's answer. The QUIC
//! session and the simulator use these same functions, so what the pair
//! agrees at connect is simulated exactly as it ships.

use dtu_proto::codec::Key;
use dtu_proto::frame::{features, hello_flags, Hello, Role};
use dtu_proto::handshake::{self, HandshakeError};
use dtu_proto::{Epoch, Seq};

use crate::config::Volume;

use super::meta::LostWrites;

/// Why the remote's answer ends the attempt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error("the peer is not a remote DTU")]
    NotARemote,
}

/// What the remote's accepted answer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Every seq up to this is stored on the replica.
    pub remote_stored: Seq,
    /// The remote has recorded (durably) that its replica is inconsistent,
    /// so a loss this primary reported need not be reported again.
    pub inconsistent: bool,
}

/// The Hello of a primary of `volume` at `epoch`, whose stream carried over
/// from earlier epochs ends at `carried_over`.
pub fn hello(volume: &Volume, epoch: Epoch, carried_over: Seq, compress: bool) -> Hello {
    let mut feats = features::READS;
    if volume.key.is_some() {
        feats |= features::SEALING;
    }
    if compress {
        feats |= features::COMPRESSION;
    }
    Hello {
        version: dtu_proto::PROTOCOL_VERSION,
        role: Role::Primary,
        volume_id: volume.id,
        volume_size: volume.size,
        block_size: volume.block_size,
        features: feats,
        epoch,
        stored_seq: carried_over,
        highest_seq: 0,
        key_fingerprint: volume
            .key
            .as_ref()
            .map_or(0, |k| Key::from_bytes(k).fingerprint()),
        flags: 0,
    }
}

/// The Hello offered at one connect: how far the stream reaches now, and
/// a loss the remote has not yet recorded.
pub fn offer(template: &Hello, highest: Seq, unreported: Option<&LostWrites>) -> Hello {
    let mut h = template.clone();
    h.highest_seq = highest;
    if unreported.is_some() {
        h.flags |= hello_flags::LOST_WRITES;
    }
    h
}

/// Checks the remote's answer to `sent`.
pub fn check_reply(sent: &Hello, theirs: &Hello) -> Result<Accepted, Refusal> {
    handshake::check(sent, theirs)?;
    if theirs.role != Role::Remote {
        return Err(Refusal::NotARemote);
    }
    Ok(Accepted {
        remote_stored: theirs.stored_seq,
        inconsistent: theirs.flags & hello_flags::INCONSISTENT != 0,
    })
}
