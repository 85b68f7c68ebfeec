//! The primary's own durable metadata, kept in the nvbuf's metadata area
//! (written atomically with its superblock): what must survive a restart
//! besides the records themselves. Its generations (current and the ones it
//! moved on from), the remote generation its changed-block map is relative
//! to, whether it was ahead (journal bypassed, writes tracked in the map)
//! when it stopped, how far a verify got, and answered writes the nvbuf lost
//! that the remote has not yet recorded.
//!
//! Layout (little endian): `version u8 (2) | zero [3] | flags u32 |
//! lost epoch u32 | zero u32 | lost first seq u64 | lost last seq u64 (0:
//! unknown) | current gen u64 | history gens [u64; 4] | map base u64 |
//! verify cursor u64 | verify end u64 | cut off since seq u64 | stored seq
//! u64 | primary since (Unix seconds) u64`, the rest zero. Version 1 (the first
//! 32 bytes) is still read. An all-zero area (a new nvbuf) reads as "nothing
//! yet": the primary then picks its first generation.

use dtu_proto::generation::{Gen, Generations, HISTORY};
use dtu_proto::{Epoch, Seq};

use crate::nvbuf::format::META_LEN;

const VERSION: u8 = 2;
const VERSION_1: u8 = 1;
const LOST_WRITES_UNREPORTED: u32 = 1;
const AHEAD: u32 = 2;
const DEMOTED: u32 = 4;

/// Why the metadata area cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the nvbuf's primary metadata has version {0}, this build reads versions 1 and {VERSION}")]
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
    pub gens: Generations,
    /// The remote generation the changed-block map is relative to (0: the
    /// map is not in use).
    pub map_base: Gen,
    /// The primary was ahead (writing to its local copy and the map, not
    /// the journal) when this was written.
    pub ahead: bool,
    /// A verify in progress: the next offset it compares, and where it ends.
    pub verify: Option<(u64, u64)>,
    /// This site was demoted (`dtu demote`): its volume is a remote's
    /// replica now, and the primary must not start on it.
    pub demoted: bool,
    /// The first seq of a write or trim the primary took while it had no
    /// session with the remote (0: none since the remote last stored
    /// everything): from it on, the host wrote while cut off, which a
    /// demotion after a failover reports as a split brain.
    pub cut_off_since: Seq,
    /// Every seq up to this was stored on the replica, as last saved (once
    /// a second and at a clean stop): the records after it are the ones a
    /// demotion lists as possibly missing on the other side.
    pub stored_seq: Seq,
    /// When (Unix seconds) this side became primary: its first start or
    /// its promotion (0: before this was kept). The younger/older-primary
    /// split-brain policies compare it.
    pub primary_since: u64,
}

impl PrimaryMeta {
    /// Notes that the remote stored every seq up to `stored`; whether that
    /// moved [`PrimaryMeta::stored_seq`] (then the caller saves it).
    pub fn note_stored(&mut self, stored: Seq) -> bool {
        let moved = stored > self.stored_seq;
        if moved {
            self.stored_seq = stored;
        }
        moved
    }

    pub fn decode(b: &[u8; META_LEN]) -> Result<PrimaryMeta, MetaVersion> {
        if b.iter().all(|&x| x == 0) {
            return Ok(PrimaryMeta::default());
        }
        if b[0] != VERSION && b[0] != VERSION_1 {
            return Err(MetaVersion(b[0]));
        }
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        let flags = u32_at(4);
        let mut m = PrimaryMeta {
            unreported_loss: (flags & LOST_WRITES_UNREPORTED != 0).then(|| LostWrites {
                epoch: u32_at(8),
                first_seq: u64_at(16),
                last_seq: Some(u64_at(24)).filter(|&l| l != 0),
            }),
            ..PrimaryMeta::default()
        };
        if b[0] == VERSION {
            m.ahead = flags & AHEAD != 0;
            m.demoted = flags & DEMOTED != 0;
            m.gens.current = u64_at(32);
            for (i, g) in m.gens.history.iter_mut().enumerate() {
                *g = u64_at(40 + 8 * i);
            }
            let at = 40 + 8 * HISTORY;
            m.map_base = u64_at(at);
            let (cursor, end) = (u64_at(at + 8), u64_at(at + 16));
            m.verify = (end != 0).then_some((cursor, end));
            m.cut_off_since = u64_at(at + 24);
            m.stored_seq = u64_at(at + 32);
            m.primary_since = u64_at(at + 40);
        }
        Ok(m)
    }

    pub fn encode(&self) -> [u8; META_LEN] {
        let mut b = [0u8; META_LEN];
        b[0] = VERSION;
        let mut flags = 0;
        if let Some(l) = self.unreported_loss {
            flags |= LOST_WRITES_UNREPORTED;
            b[8..12].copy_from_slice(&l.epoch.to_le_bytes());
            b[16..24].copy_from_slice(&l.first_seq.to_le_bytes());
            b[24..32].copy_from_slice(&l.last_seq.unwrap_or(0).to_le_bytes());
        }
        if self.ahead {
            flags |= AHEAD;
        }
        if self.demoted {
            flags |= DEMOTED;
        }
        b[4..8].copy_from_slice(&flags.to_le_bytes());
        b[32..40].copy_from_slice(&self.gens.current.to_le_bytes());
        for (i, g) in self.gens.history.iter().enumerate() {
            b[40 + 8 * i..48 + 8 * i].copy_from_slice(&g.to_le_bytes());
        }
        let at = 40 + 8 * HISTORY;
        b[at..at + 8].copy_from_slice(&self.map_base.to_le_bytes());
        if let Some((cursor, end)) = self.verify {
            b[at + 8..at + 16].copy_from_slice(&cursor.to_le_bytes());
            b[at + 16..at + 24].copy_from_slice(&end.to_le_bytes());
        }
        b[at + 24..at + 32].copy_from_slice(&self.cut_off_since.to_le_bytes());
        b[at + 32..at + 40].copy_from_slice(&self.stored_seq.to_le_bytes());
        b[at + 40..at + 48].copy_from_slice(&self.primary_since.to_le_bytes());
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
        let mut gens = Generations::new(11);
        gens.advance(12);
        let m = PrimaryMeta {
            unreported_loss: Some(LostWrites {
                epoch: 7,
                first_seq: 40,
                last_seq: Some(52),
            }),
            gens,
            map_base: 11,
            ahead: true,
            verify: Some((1 << 20, 1 << 30)),
            demoted: true,
            cut_off_since: 77,
            stored_seq: 1234,
            primary_since: 1_764_000_000,
        };
        assert_eq!(PrimaryMeta::decode(&m.encode()), Ok(m));
        let mut b = m.encode();
        b[0] = 9;
        assert_eq!(PrimaryMeta::decode(&b), Err(MetaVersion(9)));
        // Version 1 held only the loss.
        let mut v1 = m.encode();
        v1[0] = 1;
        v1[32..].fill(0);
        let old = PrimaryMeta::decode(&v1).unwrap();
        assert_eq!(old.unreported_loss, m.unreported_loss);
        assert_eq!(old.gens.current, 0);
    }
}
