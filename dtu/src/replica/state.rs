//! The replica's state file: which prefix of the write stream the replica
//! holds, so a restarted remote resumes exactly where it stopped and the
//! primary resends only what is missing.
//!
//! Two 512-byte slots, written alternately, each checksummed:
//!
//! ```text
//! magic "DTUREPST" | version u32 | generation u64 | volume id [16] |
//! epoch seen u32 | applied seq u64 | synced seq u64 | boot id [36] | crc32 u32
//! ```
//!
//! The remote records `applied` after every operation it writes (a plain
//! positional write, no sync) and `synced` after every replica sync. A
//! process that is killed leaves both in the page cache, so on the same boot
//! the replica holds exactly `applied` once it is synced again: no operation
//! is ever applied twice out of turn. After a machine crash (the boot id
//! differs) only `synced` is trusted; the operations after it are applied
//! again, in order, and until the replica passes the old `applied` it may
//! mix old and new blocks, so it is reported inconsistent until then.
//! The epoch of the last primary seen is synced when it changes: it is what
//! refuses a stale primary.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use dtu_proto::{Epoch, Seq, VolumeId};

use super::Replica;

const MAGIC: &[u8; 8] = b"DTUREPST";
const VERSION: u32 = 1;
const SLOT: usize = 512;
const RECORD: usize = 8 + 4 + 8 + 16 + 4 + 8 + 8 + 36;

/// Why the state file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot use replica state file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("replica state file {path} belongs to volume {found}, not {expected}")]
    OtherVolume {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("replica state file {path} has no valid slot (both checksums fail): the replica's position is unknown; re-seed it")]
    Corrupt { path: PathBuf },
    #[error(
        "replica state file {path} has format version {found}; this build reads version {VERSION}"
    )]
    Version { path: PathBuf, found: u32 },
}

/// Where a restarted remote resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// Every seq up to this is durable on the replica.
    pub stored: Seq,
    pub epoch_seen: Epoch,
    /// After a machine crash: the replica may mix states until it has
    /// applied this seq again.
    pub inconsistent_until: Option<Seq>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    generation: u64,
    volume_id: VolumeId,
    epoch_seen: Epoch,
    applied: Seq,
    synced: Seq,
    boot_id: [u8; 36],
}

impl Record {
    fn encode(&self) -> [u8; SLOT] {
        let mut b = [0u8; SLOT];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_be_bytes());
        b[12..20].copy_from_slice(&self.generation.to_be_bytes());
        b[20..36].copy_from_slice(&self.volume_id);
        b[36..40].copy_from_slice(&self.epoch_seen.to_be_bytes());
        b[40..48].copy_from_slice(&self.applied.to_be_bytes());
        b[48..56].copy_from_slice(&self.synced.to_be_bytes());
        b[56..92].copy_from_slice(&self.boot_id);
        let crc = crc32fast::hash(&b[..RECORD]);
        b[RECORD..RECORD + 4].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// `Ok(None)` for a slot that is empty or damaged.
    fn decode(b: &[u8], path: &Path) -> Result<Option<Record>, StateError> {
        if b.len() < RECORD + 4 || &b[0..8] != MAGIC {
            return Ok(None);
        }
        let crc = u32::from_be_bytes(b[RECORD..RECORD + 4].try_into().unwrap());
        if crc != crc32fast::hash(&b[..RECORD]) {
            return Ok(None);
        }
        let version = u32::from_be_bytes(b[8..12].try_into().unwrap());
        if version != VERSION {
            return Err(StateError::Version {
                path: path.to_path_buf(),
                found: version,
            });
        }
        let u64_at = |at: usize| u64::from_be_bytes(b[at..at + 8].try_into().unwrap());
        Ok(Some(Record {
            generation: u64_at(12),
            volume_id: b[20..36].try_into().unwrap(),
            epoch_seen: u32::from_be_bytes(b[36..40].try_into().unwrap()),
            applied: u64_at(40),
            synced: u64_at(48),
            boot_id: b[56..92].try_into().unwrap(),
        }))
    }
}

/// This machine's boot id: changes exactly when the page cache was lost.
fn boot_id() -> [u8; 36] {
    let mut id = [b'-'; 36];
    if let Ok(s) = std::fs::read_to_string("/proc/sys/kernel/random/boot_id") {
        let s = s.trim().as_bytes();
        let n = s.len().min(36);
        id[..n].copy_from_slice(&s[..n]);
    }
    id
}

/// The open state file of one replica.
#[derive(Debug)]
pub struct VolumeState {
    file: File,
    path: PathBuf,
    rec: Record,
}

impl VolumeState {
    /// Opens (or creates) the state file at `path` for `replica` and works
    /// out where to resume. On the same boot the replica is synced first, so
    /// everything applied before a kill counts as stored.
    pub fn open(
        path: &Path,
        volume_id: VolumeId,
        replica: &dyn Replica,
    ) -> Result<(VolumeState, Resume), StateError> {
        let io_err = |source| StateError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            // Beside the replica, owner only like it.
            .mode(0o600)
            .open(path)
            .map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        let now_boot = boot_id();
        if len == 0 {
            let rec = Record {
                generation: 1,
                volume_id,
                epoch_seen: 0,
                applied: 0,
                synced: 0,
                boot_id: now_boot,
            };
            let mut st = VolumeState {
                file,
                path: path.to_path_buf(),
                rec,
            };
            st.file.set_len(2 * SLOT as u64).map_err(io_err)?;
            st.write().map_err(io_err)?;
            st.file.sync_all().map_err(io_err)?;
            return Ok((
                st,
                Resume {
                    stored: 0,
                    epoch_seen: 0,
                    inconsistent_until: None,
                },
            ));
        }
        let mut buf = vec![0u8; 2 * SLOT];
        let n = file.read_at(&mut buf, 0).map_err(io_err)?;
        buf.truncate(n);
        let a = Record::decode(&buf[..n.min(SLOT)], path)?;
        let b = if n > SLOT {
            Record::decode(&buf[SLOT..], path)?
        } else {
            None
        };
        let rec = match (a, b) {
            (Some(a), Some(b)) => {
                if a.generation >= b.generation {
                    a
                } else {
                    b
                }
            }
            (Some(r), None) | (None, Some(r)) => r,
            (None, None) => {
                return Err(StateError::Corrupt {
                    path: path.to_path_buf(),
                })
            }
        };
        if rec.volume_id != volume_id {
            return Err(StateError::OtherVolume {
                path: path.to_path_buf(),
                found: dtu_proto::handshake::volume_hex(&rec.volume_id),
                expected: dtu_proto::handshake::volume_hex(&volume_id),
            });
        }
        let mut st = VolumeState {
            file,
            path: path.to_path_buf(),
            rec,
        };
        let resume = if rec.boot_id == now_boot {
            replica.sync().map_err(io_err)?;
            st.rec.synced = rec.applied;
            Resume {
                stored: rec.applied,
                epoch_seen: rec.epoch_seen,
                inconsistent_until: None,
            }
        } else {
            st.rec.applied = rec.synced;
            Resume {
                stored: rec.synced,
                epoch_seen: rec.epoch_seen,
                inconsistent_until: (rec.applied > rec.synced).then_some(rec.applied),
            }
        };
        st.rec.boot_id = now_boot;
        st.write().map_err(io_err)?;
        st.file.sync_data().map_err(io_err)?;
        Ok((st, resume))
    }

    fn write(&mut self) -> io::Result<()> {
        self.rec.generation += 1;
        let slot = (self.rec.generation % 2) * SLOT as u64;
        self.file.write_all_at(&self.rec.encode(), slot)
    }

    /// Notes that `seq` has been written to the replica (not yet synced).
    pub fn set_applied(&mut self, seq: Seq) -> io::Result<()> {
        self.rec.applied = seq;
        self.write()
    }

    /// Notes that a replica sync covered every seq up to `seq`.
    pub fn set_synced(&mut self, seq: Seq) -> io::Result<()> {
        self.rec.synced = seq;
        self.write()
    }

    /// Records a new primary epoch, durably.
    pub fn set_epoch(&mut self, epoch: Epoch) -> io::Result<()> {
        if epoch == self.rec.epoch_seen {
            return Ok(());
        }
        self.rec.epoch_seen = epoch;
        self.write()?;
        self.file.sync_data()
    }

    /// Makes the last recorded position durable (done now and then, to
    /// shorten the replay after a machine crash).
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    pub fn applied(&self) -> Seq {
        self.rec.applied
    }
    pub fn synced(&self) -> Seq {
        self.rec.synced
    }
    pub fn epoch_seen(&self) -> Epoch {
        self.rec.epoch_seen
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::FileReplica;

    #[test]
    fn resumes_from_applied_on_the_same_boot_and_from_synced_after_a_reboot() {
        let dir = tempfile::tempdir().unwrap();
        let replica = FileReplica::open(&dir.path().join("r"), 4096).unwrap();
        let path = dir.path().join("state");
        let (mut st, r) = VolumeState::open(&path, [1; 16], &replica).unwrap();
        assert_eq!(r.stored, 0);
        st.set_epoch(3).unwrap();
        st.set_applied(10).unwrap();
        st.set_synced(8).unwrap();
        st.set_applied(12).unwrap();
        drop(st);

        let (st, r) = VolumeState::open(&path, [1; 16], &replica).unwrap();
        assert_eq!(
            r,
            Resume {
                stored: 12,
                epoch_seen: 3,
                inconsistent_until: None
            }
        );
        assert_eq!(st.synced(), 12);
        drop(st);

        // Pretend the machine rebooted: rewrite the newest slot's boot id.
        let (mut st, _) = VolumeState::open(&path, [1; 16], &replica).unwrap();
        st.set_applied(15).unwrap();
        st.rec.boot_id = [b'x'; 36];
        st.write().unwrap();
        drop(st);
        let (_, r) = VolumeState::open(&path, [1; 16], &replica).unwrap();
        assert_eq!(
            r,
            Resume {
                stored: 12,
                epoch_seen: 3,
                inconsistent_until: Some(15)
            }
        );
    }

    #[test]
    fn a_torn_slot_falls_back_and_other_volumes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let replica = FileReplica::open(&dir.path().join("r"), 4096).unwrap();
        let path = dir.path().join("state");
        let (mut st, _) = VolumeState::open(&path, [1; 16], &replica).unwrap();
        st.set_applied(5).unwrap();
        st.set_applied(6).unwrap();
        let newest = (st.rec.generation % 2) * SLOT as u64;
        drop(st);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xff; 40], newest + 20).unwrap();
        let (_, r) = VolumeState::open(&path, [1; 16], &replica).unwrap();
        assert_eq!(r.stored, 5, "the older valid slot is used");

        assert!(matches!(
            VolumeState::open(&path, [2; 16], &replica),
            Err(StateError::OtherVolume { .. })
        ));
        f.write_all_at(&[0xff; 2 * SLOT], 0).unwrap();
        assert!(matches!(
            VolumeState::open(&path, [1; 16], &replica),
            Err(StateError::Corrupt { .. })
        ));
    }
}
