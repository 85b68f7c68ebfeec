//! The primary's own durable metadata, kept in the nvbuf's metadata area
//! (written atomically with its superblock): what must survive a restart
//! besides the records themselves. Today: that answered writes were lost
//! (a damaged nvbuf salvaged with `--accept-nvbuf-loss`) and the remote has
//! not yet recorded it, so the next connection tells it.
//!
//! Layout (little endian): `version u8 (1) | zero [3] | flags u32 |
//! lost epoch u32 | zero u32 | lost first seq u64 | lost last seq u64 (0:
//! unknown)`, the rest zero. An all-zero area (a new nvbuf, or a version-1
//! file) reads as "nothing to report".

use dtu_proto::{Epoch, Seq};

use crate::nvbuf::format::META_LEN;

const VERSION: u8 = 1;
const LOST_WRITES_UNREPORTED: u32 = 1;

/// Why the metadata area cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the nvbuf's primary metadata has version {0}, this build reads version {VERSION}")]
pub struct MetaVersion(pub u8);

/// Answered writes the primary lost and must still report to the remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LostWrites {
    pub epoch: Epoch,
    pub first_seq: Seq,
    pub last_seq: Option<Seq>,
}

/// The decoded metadata.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrimaryMeta {
    pub unreported_loss: Option<LostWrites>,
}

impl PrimaryMeta {
    pub fn decode(b: &[u8; META_LEN]) -> Result<PrimaryMeta, MetaVersion> {
        if b.iter().all(|&x| x == 0) {
            return Ok(PrimaryMeta::default());
        }
        if b[0] != VERSION {
            return Err(MetaVersion(b[0]));
        }
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        let flags = u32_at(4);
        Ok(PrimaryMeta {
            unreported_loss: (flags & LOST_WRITES_UNREPORTED != 0).then(|| LostWrites {
                epoch: u32_at(8),
                first_seq: u64_at(16),
                last_seq: Some(u64_at(24)).filter(|&l| l != 0),
            }),
        })
    }

    pub fn encode(&self) -> [u8; META_LEN] {
        let mut b = [0u8; META_LEN];
        b[0] = VERSION;
        if let Some(l) = self.unreported_loss {
            b[4..8].copy_from_slice(&LOST_WRITES_UNREPORTED.to_le_bytes());
            b[8..12].copy_from_slice(&l.epoch.to_le_bytes());
            b[16..24].copy_from_slice(&l.first_seq.to_le_bytes());
            b[24..32].copy_from_slice(&l.last_seq.unwrap_or(0).to_le_bytes());
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_zeros_mean_nothing() {
        assert_eq!(
            PrimaryMeta::decode(&[0; META_LEN]),
            Ok(PrimaryMeta::default())
        );
        let m = PrimaryMeta {
            unreported_loss: Some(LostWrites {
                epoch: 7,
                first_seq: 40,
                last_seq: Some(52),
            }),
        };
        assert_eq!(PrimaryMeta::decode(&m.encode()), Ok(m));
        let mut b = m.encode();
        b[0] = 9;
        assert_eq!(PrimaryMeta::decode(&b), Err(MetaVersion(9)));
    }
}
