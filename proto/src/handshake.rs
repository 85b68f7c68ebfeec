//! The handshake: what each side checks in the peer's [`Hello`] before a
//! single write crosses, so that a misconfigured pair fails loudly at connect
//! instead of mirroring into the wrong volume.

use crate::frame::{Goodbye, GoodbyeReason, Hello, Role};
use crate::PROTOCOL_VERSION;

/// Why a peer's Hello is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("peer speaks protocol version {theirs}, this build speaks {PROTOCOL_VERSION}")]
    Version { theirs: u8 },
    #[error("peer is also a {0:?}: one side must be primary and the other remote")]
    SameRole(Role),
    #[error("peer mirrors volume {theirs}, this side volume {ours}")]
    Volume { ours: String, theirs: String },
    #[error("peer's volume is {theirs} bytes, this side's {ours} bytes")]
    Size { ours: u64, theirs: u64 },
    #[error("peer's block size is {theirs}, this side's {ours}")]
    BlockSize { ours: u32, theirs: u32 },
    #[error("{}", key_mismatch(*.ours, *.theirs))]
    Key { ours: u64, theirs: u64 },
    #[error("primary epoch {theirs} is older than epoch {seen} already seen: a stale primary")]
    StaleEpoch { seen: u32, theirs: u32 },
    #[error(
        "the replica holds seq {stored} but the primary has only assigned up to {primary}: \
         the primary's nvbuf was lost or replaced; re-seed the pair"
    )]
    PrimaryBehind { stored: u64, primary: u64 },
}

impl HandshakeError {
    pub fn reason(&self) -> GoodbyeReason {
        match self {
            HandshakeError::Version { .. } => GoodbyeReason::VersionMismatch,
            HandshakeError::SameRole(_) => GoodbyeReason::RoleMismatch,
            HandshakeError::Volume { .. }
            | HandshakeError::Size { .. }
            | HandshakeError::BlockSize { .. }
            | HandshakeError::Key { .. } => GoodbyeReason::VolumeMismatch,
            HandshakeError::StaleEpoch { .. } | HandshakeError::PrimaryBehind { .. } => {
                GoodbyeReason::StaleEpoch
            }
        }
    }

    /// The frame that tells the peer why.
    pub fn goodbye(&self) -> Goodbye {
        Goodbye {
            reason: self.reason(),
            message: self.to_string(),
        }
    }
}

fn key_mismatch(ours: u64, theirs: u64) -> String {
    let name = |fp: u64| {
        if fp == 0 {
            "no volume key".to_string()
        } else {
            format!("volume key {fp:016x}")
        }
    };
    format!(
        "the volume keys differ: this side has {}, the peer {}; both sides need the same \
         volume.key file (or both none), or every write would be refused",
        name(ours),
        name(theirs)
    )
}

/// Hex form of a volume id, for messages and config files.
pub fn volume_hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks the parts of a Hello both sides must agree on.
pub fn check(ours: &Hello, theirs: &Hello) -> Result<(), HandshakeError> {
    if theirs.version != PROTOCOL_VERSION {
        return Err(HandshakeError::Version {
            theirs: theirs.version,
        });
    }
    if theirs.role == ours.role {
        return Err(HandshakeError::SameRole(theirs.role));
    }
    if theirs.volume_id != ours.volume_id {
        return Err(HandshakeError::Volume {
            ours: volume_hex(&ours.volume_id),
            theirs: volume_hex(&theirs.volume_id),
        });
    }
    if theirs.volume_size != ours.volume_size {
        return Err(HandshakeError::Size {
            ours: ours.volume_size,
            theirs: theirs.volume_size,
        });
    }
    if theirs.block_size != ours.block_size {
        return Err(HandshakeError::BlockSize {
            ours: ours.block_size,
            theirs: theirs.block_size,
        });
    }
    if theirs.key_fingerprint != ours.key_fingerprint {
        return Err(HandshakeError::Key {
            ours: ours.key_fingerprint,
            theirs: theirs.key_fingerprint,
        });
    }
    Ok(())
}
