//! The replica's state file: which prefix of the write stream the replica
//! holds, whether it can be trusted, and which replica it describes, so a
//! restarted remote resumes exactly where it stopped, the primary resends
//! only what is missing, and a replica that was truncated, replaced or
//! changed behind the remote's back is never taken for the one it was.
//!
//! Two 512-byte slots, written alternately, each checksummed (version 2;
//! version 1, without the fields after the boot id, is still read):
//!
//! ```text
//!   0 magic "DTUREPST" | 8 version u32 | 12 generation u64 | 20 volume id [16] |
//!  36 epoch seen u32 | 40 applied seq u64 | 48 synced seq u64 | 56 boot id [36] |
//!  92 flags u32 | 96 inconsistent until u64 | 104 lost first u64 | 112 lost last u64 |
//! 120 lost epoch u32 | 124 zero u32 | 128 replica size u64 | 136 replica device u64 |
//! 144 replica inode u64 | 152 sample digest [32] | 184 crc32 u32
//! ```
//!
//! The remote records `applied` after every operation it writes (a plain
//! positional write, no sync) and `synced` after every replica sync. A
//! process that is killed leaves both in the page cache, so on the same boot
//! the replica holds exactly `applied` once it is synced again: no operation
//! is ever applied twice out of turn. After a machine crash (the boot id
//! differs) only `synced` is trusted; the operations after it are applied
//! again, in order, and until the replica passes the old `applied` it may
//! mix old and new blocks, so it is reported inconsistent until then (and
//! that mark is itself recorded, so a second crash keeps it).
//!
//! Identity: the state records the replica's size and, for a regular file,
//! its device and inode; a clean shutdown also records a digest of 64
//! sampled blocks. At open, a replica of another size or another inode, or
//! one whose sampled blocks changed since the clean shutdown, is refused
//! with a message, unless the operator adopts it, which marks the replica
//! inconsistent until a resync or a verify has proven it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use dtu_proto::generation::{Gen, Generations};
use dtu_proto::{Epoch, Seq, VolumeId};

use super::{Replica, ReplicaIdentity};

const MAGIC: &[u8; 8] = b"DTUREPST";
const VERSION: u32 = 3;
const VERSION_1: u32 = 1;
const VERSION_2: u32 = 2;
const SLOT: usize = 512;
const RECORD_V1: usize = 92;
const RECORD_V2: usize = 184;
const RECORD: usize = 232;
/// Blocks read for the sample digest, and their size.
const SAMPLE_BLOCKS: u64 = 64;
const SAMPLE_BLOCK: usize = 4096;

/// Bits of the state's flags.
mod flag {
    /// The primary lost writes it had answered: the replica may lack them.
    pub const LOST_WRITES: u32 = 1;
    /// The operator adopted a replica whose identity did not match.
    pub const ADOPTED: u32 = 2;
    /// The remote stopped cleanly and the sample digest describes the replica.
    pub const CLEAN: u32 = 4;
    /// After a machine crash: until a primary says how far its stream
    /// reaches, nothing bounds what may have reached the replica.
    pub const REPLAY_BOUND_PENDING: u32 = 8;
    /// The replica was taken as in sync without a sync, as the operator
    /// chose (`assume-in-sync`): recorded, and shown.
    pub const ASSUMED_IN_SYNC: u32 = 16;
    /// The replica was promoted: it is a primary's volume now, and a
    /// remote must not apply a stream to it.
    pub const PROMOTED: u32 = 32;
    /// The replica holds changes its peer never got (a demoted primary's
    /// unreplicated writes): listed in the divergence record beside the
    /// state file.
    pub const DIVERGED: u32 = 64;
    /// The operator said this replica's own changes may be discarded at
    /// the next connect (`dtu demote --discard-my-data`).
    pub const DISCARD_MY_DATA: u32 = 128;
    pub const KNOWN: u32 = LOST_WRITES
        | ADOPTED
        | CLEAN
        | REPLAY_BOUND_PENDING
        | ASSUMED_IN_SYNC
        | PROMOTED
        | DIVERGED
        | DISCARD_MY_DATA;
}

/// Why the state file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
        "replica state file {path} has format version {found}; this build reads versions 1 and {VERSION}"
    )]
    Version { path: PathBuf, found: u32 },
    #[error(
        "the replica is not the one {path} describes: {why}. If this replica is meant to \
         be used anyway, start the remote with --adopt-replica: it is then marked \
         inconsistent until a resync or a verify proves it"
    )]
    NotTheReplica { path: PathBuf, why: String },
}

/// Why a replica cannot be trusted to be a state the host's volume passed
/// through.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Inconsistency {
    /// After a machine crash the replay mixes old and new blocks until this
    /// seq is applied again.
    Replay { until: Seq },
    /// After a machine crash, before a primary has said how far its stream
    /// reaches: the replica may hold blocks of writes the state file never
    /// recorded (its last records were not yet synced).
    ReplayUnbounded { from: Seq },
    /// The primary lost writes it had answered (a damaged nvbuf whose loss
    /// the operator accepted): the replica may lack them.
    LostWrites {
        epoch: Epoch,
        first_seq: Seq,
        last_seq: Option<Seq>,
    },
    /// The operator adopted a replica that did not match the state.
    Adopted { why: String },
    /// A sync is bringing the replica to the primary's generation `to`;
    /// until it completes the replica mixes old and new extents.
    SyncTarget { to: Gen },
    /// No primary has synced or adopted this replica yet: it holds whatever
    /// the disk held.
    NeverSynced,
}

impl std::fmt::Display for Inconsistency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Inconsistency::Replay { until } => write!(
                f,
                "replaying after a machine crash: old and new blocks mix until seq {until} is applied again"
            ),
            Inconsistency::ReplayUnbounded { from } => write!(
                f,
                "after a machine crash the replica may hold blocks of writes after seq {from} \
                 that were never recorded; it is inconsistent until the primary connects and \
                 resends its stream"
            ),
            Inconsistency::LostWrites {
                epoch,
                first_seq,
                last_seq,
            } => {
                write!(
                    f,
                    "the primary (epoch {epoch}) lost answered writes from seq {first_seq}"
                )?;
                if let Some(l) = last_seq {
                    write!(f, " to {l}")?;
                }
                write!(
                    f,
                    "; the replica may lack them until a resync or verify proves it"
                )
            }
            Inconsistency::Adopted { why } => write!(
                f,
                "adopted although {why}; unproven until a resync or verify"
            ),
            Inconsistency::SyncTarget { to } => write!(
                f,
                "a sync towards the primary's generation {to:016x} is under way: old and new \
                 extents mix until it completes"
            ),
            Inconsistency::NeverSynced => write!(
                f,
                "never synced: no primary has brought this replica to its volume yet"
            ),
        }
    }
}

/// Where a restarted remote resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// Every seq up to this is durable on the replica.
    pub stored: Seq,
    pub epoch_seen: Epoch,
    /// Why the replica cannot be trusted yet, if it cannot.
    pub inconsistent: Vec<Inconsistency>,
}

impl Resume {
    /// After a machine crash: the seq the replay must pass.
    pub fn replay_until(&self) -> Option<Seq> {
        self.inconsistent.iter().find_map(|i| match i {
            Inconsistency::Replay { until } => Some(*until),
            _ => None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    generation: u64,
    volume_id: VolumeId,
    epoch_seen: Epoch,
    applied: Seq,
    synced: Seq,
    boot_id: [u8; 36],
    flags: u32,
    inconsistent_until: Seq,
    lost_first: Seq,
    lost_last: Seq,
    lost_epoch: Epoch,
    id: ReplicaIdentity,
    sample: [u8; 32],
    gens: Generations,
    /// A sync towards this primary generation is under way (0: none).
    sync_target: Gen,
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
        b[92..96].copy_from_slice(&self.flags.to_be_bytes());
        b[96..104].copy_from_slice(&self.inconsistent_until.to_be_bytes());
        b[104..112].copy_from_slice(&self.lost_first.to_be_bytes());
        b[112..120].copy_from_slice(&self.lost_last.to_be_bytes());
        b[120..124].copy_from_slice(&self.lost_epoch.to_be_bytes());
        b[128..136].copy_from_slice(&self.id.size.to_be_bytes());
        b[136..144].copy_from_slice(&self.id.device.to_be_bytes());
        b[144..152].copy_from_slice(&self.id.inode.to_be_bytes());
        b[152..184].copy_from_slice(&self.sample);
        b[184..192].copy_from_slice(&self.gens.current.to_be_bytes());
        for (i, g) in self.gens.history.iter().enumerate() {
            b[192 + 8 * i..200 + 8 * i].copy_from_slice(&g.to_be_bytes());
        }
        b[224..232].copy_from_slice(&self.sync_target.to_be_bytes());
        let crc = crc32fast::hash(&b[..RECORD]);
        b[RECORD..RECORD + 4].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// `Ok(None)` for a slot that is empty or damaged.
    fn decode(b: &[u8], path: &Path) -> Result<Option<Record>, StateError> {
        if b.len() < RECORD_V1 + 4 || &b[0..8] != MAGIC {
            return Ok(None);
        }
        let version = u32::from_be_bytes(b[8..12].try_into().expect("4 bytes"));
        let len = match version {
            VERSION_1 => RECORD_V1,
            VERSION_2 if b.len() >= RECORD_V2 + 4 => RECORD_V2,
            VERSION if b.len() >= RECORD + 4 => RECORD,
            VERSION | VERSION_2 => return Ok(None),
            found => {
                // Only trust the version field of a slot whose checksum holds
                // under some layout we know; otherwise it is just damage.
                let plausible = [RECORD_V1, RECORD_V2, RECORD].iter().any(|&l| {
                    b.len() >= l + 4
                        && u32::from_be_bytes(b[l..l + 4].try_into().expect("4 bytes"))
                            == crc32fast::hash(&b[..l])
                });
                return if plausible {
                    Err(StateError::Version {
                        path: path.to_path_buf(),
                        found,
                    })
                } else {
                    Ok(None)
                };
            }
        };
        let crc = u32::from_be_bytes(b[len..len + 4].try_into().expect("4 bytes"));
        if crc != crc32fast::hash(&b[..len]) {
            return Ok(None);
        }
        let u64_at = |at: usize| u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        let u32_at = |at: usize| u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"));
        let mut rec = Record {
            generation: u64_at(12),
            volume_id: b[20..36].try_into().expect("16 bytes"),
            epoch_seen: u32_at(36),
            applied: u64_at(40),
            synced: u64_at(48),
            boot_id: b[56..92].try_into().expect("36 bytes"),
            flags: 0,
            inconsistent_until: 0,
            lost_first: 0,
            lost_last: 0,
            lost_epoch: 0,
            id: ReplicaIdentity::default(),
            sample: [0; 32],
            gens: Generations::default(),
            sync_target: 0,
        };
        if len >= RECORD_V2 {
            rec.flags = u32_at(92) & flag::KNOWN;
            rec.inconsistent_until = u64_at(96);
            rec.lost_first = u64_at(104);
            rec.lost_last = u64_at(112);
            rec.lost_epoch = u32_at(120);
            rec.id = ReplicaIdentity {
                size: u64_at(128),
                device: u64_at(136),
                inode: u64_at(144),
            };
            rec.sample = b[152..184].try_into().expect("32 bytes");
        }
        if len >= RECORD {
            rec.gens.current = u64_at(184);
            for (i, g) in rec.gens.history.iter_mut().enumerate() {
                *g = u64_at(192 + 8 * i);
            }
            rec.sync_target = u64_at(224);
        }
        Ok(Some(rec))
    }

    fn inconsistencies(&self) -> Vec<Inconsistency> {
        let mut out = Vec::new();
        if self.flags & flag::REPLAY_BOUND_PENDING != 0 {
            out.push(Inconsistency::ReplayUnbounded { from: self.synced });
        } else if self.inconsistent_until > self.applied.min(self.synced) {
            out.push(Inconsistency::Replay {
                until: self.inconsistent_until,
            });
        }
        if self.flags & flag::LOST_WRITES != 0 {
            out.push(Inconsistency::LostWrites {
                epoch: self.lost_epoch,
                first_seq: self.lost_first,
                last_seq: (self.lost_last != 0).then_some(self.lost_last),
            });
        }
        if self.sync_target != 0 {
            out.push(Inconsistency::SyncTarget {
                to: self.sync_target,
            });
        }
        if self.gens.current == 0 {
            out.push(Inconsistency::NeverSynced);
        }
        if self.flags & flag::ADOPTED != 0 {
            out.push(Inconsistency::Adopted {
                why: "its identity did not match the state file".into(),
            });
        }
        out
    }
}

/// This machine's boot id: changes exactly when the page cache was lost.
pub fn boot_id() -> [u8; 36] {
    let mut id = [b'-'; 36];
    if let Ok(s) = std::fs::read_to_string("/proc/sys/kernel/random/boot_id") {
        let s = s.trim().as_bytes();
        let n = s.len().min(36);
        id[..n].copy_from_slice(&s[..n]);
    }
    id
}

/// Where the state's two slots are kept: a small file, or memory in the
/// simulator (which models what a crash keeps).
pub trait StateStore: Send + 'static {
    /// Reads up to `buf.len()` bytes at `off`; returns how many there were.
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<usize>;
    fn write_at(&mut self, off: u64, data: &[u8]) -> io::Result<()>;
    /// Makes every earlier write durable.
    fn sync(&mut self) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
}

impl StateStore for File {
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            match FileExt::read_at(self, &mut buf[n..], off + n as u64)? {
                0 => break,
                k => n += k,
            }
        }
        Ok(n)
    }
    fn write_at(&mut self, off: u64, data: &[u8]) -> io::Result<()> {
        self.write_all_at(data, off)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

/// Opens (creating, mode 0600) a state file.
pub fn open_state_file(path: &Path) -> Result<File, StateError> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|source| StateError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// A digest of 64 blocks of the replica at places fixed by the volume id:
/// cheap to take, and a replica changed behind the remote's back almost
/// never keeps all of them.
pub fn sample_digest(replica: &dyn Replica, volume_id: &VolumeId) -> io::Result<[u8; 32]> {
    let blocks = (replica.size() / SAMPLE_BLOCK as u64).max(1);
    let mut h = blake3::Hasher::new();
    h.update(volume_id);
    let mut buf = vec![0u8; SAMPLE_BLOCK];
    for i in 0..SAMPLE_BLOCKS {
        let pick = blake3::hash(&[&volume_id[..], &i.to_be_bytes()].concat());
        let n = u64::from_be_bytes(pick.as_bytes()[..8].try_into().expect("8 bytes"));
        let off = (n % blocks) * SAMPLE_BLOCK as u64;
        let len = (replica.size() - off).min(SAMPLE_BLOCK as u64) as usize;
        replica.read_at(off, &mut buf[..len])?;
        h.update(&buf[..len]);
    }
    Ok(*h.finalize().as_bytes())
}

/// How to open a state.
#[derive(Debug, Clone, Copy)]
pub struct OpenState<'a> {
    pub volume_id: VolumeId,
    /// This machine's boot id ([`boot_id`]; the simulator passes its own).
    pub boot_id: [u8; 36],
    /// Accept a replica whose identity does not match, marking it
    /// inconsistent.
    pub adopt: bool,
    /// For messages.
    pub path: &'a Path,
}

/// The open state of one replica.
pub struct VolumeState {
    store: Box<dyn StateStore>,
    path: PathBuf,
    rec: Record,
}

impl std::fmt::Debug for VolumeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeState")
            .field("path", &self.path)
            .field("applied", &self.rec.applied)
            .field("synced", &self.rec.synced)
            .finish()
    }
}

impl VolumeState {
    /// Opens the state file at `path` for `replica`; see [`VolumeState::open_in`].
    pub fn open(
        path: &Path,
        volume_id: VolumeId,
        replica: &dyn Replica,
        adopt: bool,
    ) -> Result<(VolumeState, Resume), StateError> {
        let file = open_state_file(path)?;
        VolumeState::open_in(
            Box::new(file),
            replica,
            OpenState {
                volume_id,
                boot_id: boot_id(),
                adopt,
                path,
            },
        )
    }

    /// Opens (or creates) a state held in `store` for `replica`, checks
    /// that the replica is the one it describes, and works out where to
    /// resume. On the same boot the replica is synced first, so everything
    /// applied before a kill counts as stored.
    pub fn open_in(
        store: Box<dyn StateStore>,
        replica: &dyn Replica,
        o: OpenState<'_>,
    ) -> Result<(VolumeState, Resume), StateError> {
        let path = o.path;
        let io_err = |source| StateError::Io {
            path: path.to_path_buf(),
            source,
        };
        let len = store.len().map_err(io_err)?;
        let identity = replica.identity();
        if len == 0 {
            let mut st = VolumeState {
                store,
                path: path.to_path_buf(),
                rec: Record {
                    generation: 1,
                    volume_id: o.volume_id,
                    epoch_seen: 0,
                    applied: 0,
                    synced: 0,
                    boot_id: o.boot_id,
                    flags: 0,
                    inconsistent_until: 0,
                    lost_first: 0,
                    lost_last: 0,
                    lost_epoch: 0,
                    id: identity,
                    sample: [0; 32],
                    gens: Generations::default(),
                    sync_target: 0,
                },
            };
            st.write().map_err(io_err)?;
            st.store.sync().map_err(io_err)?;
            return Ok((
                st,
                Resume {
                    stored: 0,
                    epoch_seen: 0,
                    inconsistent: vec![Inconsistency::NeverSynced],
                },
            ));
        }
        let mut buf = vec![0u8; 2 * SLOT];
        let n = store.read_at(0, &mut buf).map_err(io_err)?;
        buf.truncate(n);
        let a = Record::decode(&buf[..n.min(SLOT)], path)?;
        let b = if n > SLOT {
            Record::decode(&buf[SLOT..], path)?
        } else {
            None
        };
        let mut rec = match (a, b) {
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
        if rec.volume_id != o.volume_id {
            return Err(StateError::OtherVolume {
                path: path.to_path_buf(),
                found: dtu_proto::handshake::volume_hex(&rec.volume_id),
                expected: dtu_proto::handshake::volume_hex(&o.volume_id),
            });
        }
        if let Some(why) =
            identity_mismatch(&rec, replica, &identity, &o.volume_id).map_err(io_err)?
        {
            if !o.adopt {
                return Err(StateError::NotTheReplica {
                    path: path.to_path_buf(),
                    why,
                });
            }
            tracing::warn!(
                "adopting replica although {why}: it is marked inconsistent until a resync or verify"
            );
            rec.flags |= flag::ADOPTED;
        }
        rec.id = identity;
        rec.flags &= !flag::CLEAN;
        let mut st = VolumeState {
            store,
            path: path.to_path_buf(),
            rec,
        };
        if rec.boot_id == o.boot_id {
            replica.sync().map_err(io_err)?;
            st.rec.synced = rec.applied;
        } else {
            // The state file's last records may not have reached the disk:
            // the replica can hold writes beyond the recorded `applied`. Only
            // the primary knows how far its stream reaches.
            st.rec.inconsistent_until = st.rec.inconsistent_until.max(rec.applied);
            st.rec.flags |= flag::REPLAY_BOUND_PENDING;
            st.rec.applied = rec.synced;
        }
        st.rec.boot_id = o.boot_id;
        st.write().map_err(io_err)?;
        st.store.sync().map_err(io_err)?;
        let resume = Resume {
            stored: st.rec.synced,
            epoch_seen: st.rec.epoch_seen,
            inconsistent: st.rec.inconsistencies(),
        };
        Ok((st, resume))
    }

    fn write(&mut self) -> io::Result<()> {
        self.rec.generation += 1;
        let slot = (self.rec.generation % 2) * SLOT as u64;
        let enc = self.rec.encode();
        self.store.write_at(slot, &enc)
    }

    /// Notes that `seq` has been written to the replica (not yet synced).
    pub fn set_applied(&mut self, seq: Seq) -> io::Result<()> {
        self.rec.applied = seq;
        if self.rec.inconsistent_until != 0
            && seq >= self.rec.inconsistent_until
            && self.rec.flags & flag::REPLAY_BOUND_PENDING == 0
        {
            self.rec.inconsistent_until = 0;
        }
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
        self.store.sync()
    }

    /// After a machine crash: a primary says no seq above `highest` exists,
    /// so the replay is over once that seq is applied again. Durable.
    pub fn set_replay_bound(&mut self, highest: Seq) -> io::Result<()> {
        if self.rec.flags & flag::REPLAY_BOUND_PENDING == 0 {
            return Ok(());
        }
        self.rec.flags &= !flag::REPLAY_BOUND_PENDING;
        self.rec.inconsistent_until = self.rec.inconsistent_until.max(highest);
        if self.rec.inconsistent_until <= self.rec.applied {
            self.rec.inconsistent_until = 0;
        }
        self.write()?;
        self.store.sync()
    }

    /// Records, durably, that the primary lost answered writes.
    pub fn set_lost_writes(
        &mut self,
        epoch: Epoch,
        first_seq: Seq,
        last_seq: Option<Seq>,
    ) -> io::Result<()> {
        self.rec.flags |= flag::LOST_WRITES;
        self.rec.lost_epoch = epoch;
        self.rec.lost_first = first_seq;
        self.rec.lost_last = last_seq.unwrap_or(0);
        self.write()?;
        self.store.sync()
    }

    /// The generation a sync under way is bringing the replica to (0: none).
    pub fn sync_target(&self) -> Gen {
        self.rec.sync_target
    }

    /// The replica's generations (current 0: never synced).
    pub fn gens(&self) -> Generations {
        self.rec.gens
    }

    /// A sync towards the primary's generation `target` begins: the
    /// replica is inconsistent until [`VolumeState::finish_sync`]. A replica
    /// that never had a generation gets one now, so that a sync interrupted
    /// and resumed is recognised as the same. Durable.
    pub fn begin_sync(&mut self, target: Gen, fresh: Gen) -> io::Result<()> {
        if self.rec.gens.current == 0 {
            self.rec.gens.current = fresh.max(1);
        }
        self.rec.sync_target = target;
        self.write()?;
        self.store.sync()
    }

    /// The sync towards `gen` is complete: the replica now holds the
    /// primary's volume of that generation, which it adopts; what a resync
    /// proves (a loss, an adopted replica) is cleared. Durable.
    pub fn finish_sync(&mut self, gen: Gen) -> io::Result<()> {
        if self.rec.gens.current != gen {
            self.rec.gens.advance(gen);
        }
        self.rec.sync_target = 0;
        self.rec.flags &= !(flag::LOST_WRITES
            | flag::ADOPTED
            | flag::ASSUMED_IN_SYNC
            | flag::DIVERGED
            | flag::DISCARD_MY_DATA);
        self.write()?;
        self.store.sync()
    }

    /// The replica is taken as the primary's volume of generation `gen`
    /// without a sync; `assumed` records that the operator chose so.
    /// Durable.
    pub fn adopt(&mut self, gen: Gen, assumed: bool) -> io::Result<()> {
        if self.rec.gens.current != gen {
            self.rec.gens.advance(gen);
        }
        self.rec.sync_target = 0;
        if assumed {
            self.rec.flags |= flag::ASSUMED_IN_SYNC;
        }
        self.write()?;
        self.store.sync()
    }

    /// The stream restarts after `seq` (a sync or an adoption decided at
    /// connect): the replica's position is that seq from now on. Durable.
    pub fn rebase(&mut self, seq: Seq) -> io::Result<()> {
        self.rec.applied = seq;
        self.rec.synced = seq;
        if self.rec.inconsistent_until != 0 && self.rec.flags & flag::REPLAY_BOUND_PENDING == 0 {
            // A replay is replaced by the sync that follows.
            self.rec.inconsistent_until = 0;
        }
        self.write()?;
        self.store.sync()
    }

    /// The replica was rewritten to the volume as it was at `seq` (a
    /// checkpoint) and leaves the primary's history for a generation of
    /// its own, `gen`: a primary of the old generation is refused at
    /// connect (the remote moved on) rather than streaming writes that
    /// follow a state the replica no longer holds. Idempotent (a rollback
    /// redone after a crash). Durable.
    pub fn rolled_back(&mut self, seq: Seq, gen: Gen) -> io::Result<()> {
        if self.rec.gens.current != gen {
            self.rec.gens.advance(gen);
        }
        self.rec.sync_target = 0;
        self.rec.applied = seq;
        self.rec.synced = seq;
        // A replay after a crash is moot: the replica is now exactly the
        // checkpoint's state.
        self.rec.inconsistent_until = 0;
        self.rec.flags &= !flag::REPLAY_BOUND_PENDING;
        self.write()?;
        self.store.sync()
    }

    /// Promotes the replica to a primary's volume: it leaves the
    /// generation it shares with the old primary for `fresh` (which the old
    /// primary, once a remote, is resynced to from the new primary's map).
    /// Idempotent: a promotion redone after a crash keeps its generation.
    /// Returns the generations and the one the promotion left. Durable.
    pub fn promote(&mut self, fresh: Gen) -> io::Result<(Generations, Gen)> {
        if self.rec.flags & flag::PROMOTED != 0 {
            return Ok((self.rec.gens, self.rec.gens.history[0]));
        }
        let base = self.rec.gens.current;
        self.rec.gens.advance(fresh.max(1));
        self.rec.flags |= flag::PROMOTED;
        self.write()?;
        self.store.sync()?;
        Ok((self.rec.gens, base))
    }

    /// Whether the replica was promoted (a primary's volume now).
    pub fn promoted(&self) -> bool {
        self.rec.flags & flag::PROMOTED != 0
    }

    /// A demoted primary's volume becomes this replica: the state starts
    /// over with the primary's generations and no stream position (the
    /// new primary's stream starts afresh). `diverged` says it holds
    /// writes its peer never got; `discard` that they may be dropped at
    /// the next connect. Durable.
    pub fn demoted(&mut self, gens: Generations, diverged: bool, discard: bool) -> io::Result<()> {
        self.rec.gens = gens;
        self.rec.sync_target = 0;
        self.rec.applied = 0;
        self.rec.synced = 0;
        self.rec.epoch_seen = 0;
        self.rec.inconsistent_until = 0;
        self.rec.flags = 0;
        if diverged {
            self.rec.flags |= flag::DIVERGED;
        }
        if discard {
            self.rec.flags |= flag::DISCARD_MY_DATA;
        }
        self.write()?;
        self.store.sync()
    }

    /// Whether the replica holds changes its peer never got.
    pub fn diverged(&self) -> bool {
        self.rec.flags & flag::DIVERGED != 0
    }

    /// Records, durably, that this replica's own changes may be discarded
    /// at the next connect (cleared when a sync completes).
    pub fn set_discard_my_data(&mut self) -> io::Result<()> {
        self.rec.flags |= flag::DISCARD_MY_DATA;
        self.write()?;
        self.store.sync()
    }

    /// Whether the operator allowed this replica's own changes to be
    /// discarded.
    pub fn discard_my_data(&self) -> bool {
        self.rec.flags & flag::DISCARD_MY_DATA != 0
    }

    /// Whether the replica was taken as in sync on the operator's word.
    pub fn assumed_in_sync(&self) -> bool {
        self.rec.flags & flag::ASSUMED_IN_SYNC != 0
    }

    /// Why the replica cannot be trusted now (empty: it is a state the
    /// host's volume passed through).
    pub fn inconsistencies(&self) -> Vec<Inconsistency> {
        self.rec.inconsistencies()
    }

    /// After a clean stop, with the replica synced: records the sample
    /// digest that the next open checks.
    pub fn close_clean(&mut self, replica: &dyn Replica) -> io::Result<()> {
        self.rec.sample = sample_digest(replica, &self.rec.volume_id)?;
        self.rec.flags |= flag::CLEAN;
        self.write()?;
        self.store.sync()
    }

    /// Makes the last recorded position durable (done now and then, to
    /// shorten the replay after a machine crash).
    pub fn sync(&mut self) -> io::Result<()> {
        self.store.sync()
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

/// Why `replica` is not the one the state describes, if it is not.
fn identity_mismatch(
    rec: &Record,
    replica: &dyn Replica,
    now: &ReplicaIdentity,
    volume_id: &VolumeId,
) -> io::Result<Option<String>> {
    let was = rec.id;
    if was.size == 0 {
        // A version-1 state recorded no identity.
        return Ok(None);
    }
    if was.size != now.size {
        return Ok(Some(format!(
            "the replica holds {} bytes, the state was written for {} bytes (truncated, resized or another file?)",
            now.size, was.size
        )));
    }
    if was.inode != 0 && now.inode != 0 && (was.device, was.inode) != (now.device, now.inode) {
        return Ok(Some(format!(
            "the replica file was replaced (device {} inode {}, the state names device {} inode {})",
            now.device, now.inode, was.device, was.inode
        )));
    }
    if rec.flags & flag::CLEAN != 0 && sample_digest(replica, volume_id)? != rec.sample {
        return Ok(Some(
            "the replica's contents changed since the remote last stopped cleanly".into(),
        ));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::FileReplica;

    fn open(path: &Path, replica: &dyn Replica) -> Result<(VolumeState, Resume), StateError> {
        VolumeState::open(path, [1; 16], replica, false)
    }

    #[test]
    fn resumes_from_applied_on_the_same_boot_and_from_synced_after_a_reboot() {
        let dir = tempfile::tempdir().unwrap();
        let replica = FileReplica::open(&dir.path().join("r"), 4096).unwrap();
        let path = dir.path().join("state");
        let (mut st, r) = open(&path, &replica).unwrap();
        assert_eq!(r.stored, 0);
        assert_eq!(r.inconsistent, vec![Inconsistency::NeverSynced]);
        st.adopt(7, false).unwrap();
        st.set_epoch(3).unwrap();
        st.set_applied(10).unwrap();
        st.set_synced(8).unwrap();
        st.set_applied(12).unwrap();
        drop(st);

        let (st, r) = open(&path, &replica).unwrap();
        assert_eq!(
            r,
            Resume {
                stored: 12,
                epoch_seen: 3,
                inconsistent: vec![]
            }
        );
        assert_eq!(st.synced(), 12);
        drop(st);

        // Pretend the machine rebooted: rewrite the newest slot's boot id.
        let (mut st, _) = open(&path, &replica).unwrap();
        st.set_applied(15).unwrap();
        st.rec.boot_id = [b'x'; 36];
        st.write().unwrap();
        drop(st);
        let (st, r) = open(&path, &replica).unwrap();
        assert_eq!(r.stored, 12);
        assert!(matches!(
            r.inconsistent[..],
            [Inconsistency::ReplayUnbounded { from: 12 }]
        ));
        drop(st);
        // The mark survives a second restart before a primary bounds it...
        let (mut st, r) = open(&path, &replica).unwrap();
        assert_eq!(r.inconsistent.len(), 1);
        // ...a primary whose stream reaches seq 20 bounds it...
        st.set_replay_bound(20).unwrap();
        assert_eq!(
            st.inconsistencies(),
            vec![Inconsistency::Replay { until: 20 }]
        );
        st.set_applied(15).unwrap();
        assert_eq!(st.inconsistencies().len(), 1);
        // ...and it clears once the replay has applied seq 20 again.
        st.set_applied(20).unwrap();
        assert!(st.inconsistencies().is_empty());
    }

    #[test]
    fn a_torn_slot_falls_back_and_other_volumes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let replica = FileReplica::open(&dir.path().join("r"), 4096).unwrap();
        let path = dir.path().join("state");
        let (mut st, _) = open(&path, &replica).unwrap();
        st.set_applied(5).unwrap();
        st.set_applied(6).unwrap();
        let newest = (st.rec.generation % 2) * SLOT as u64;
        drop(st);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xff; 40], newest + 20).unwrap();
        let (_, r) = open(&path, &replica).unwrap();
        assert_eq!(r.stored, 5, "the older valid slot is used");

        assert!(matches!(
            VolumeState::open(&path, [2; 16], &replica, false),
            Err(StateError::OtherVolume { .. })
        ));
        f.write_all_at(&[0xff; 2 * SLOT], 0).unwrap();
        assert!(matches!(
            open(&path, &replica),
            Err(StateError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_replaced_resized_or_changed_replica_is_refused_unless_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let rpath = dir.path().join("r");
        let path = dir.path().join("state");
        let size = 1 << 20;
        let replica = FileReplica::open(&rpath, size).unwrap();
        replica.write_at(0, &[7; 8192]).unwrap();
        let (mut st, _) = open(&path, &replica).unwrap();
        st.adopt(7, false).unwrap();
        st.set_applied(3).unwrap();
        st.set_synced(3).unwrap();
        st.close_clean(&replica).unwrap();
        drop((st, replica));

        // Changed behind the remote's back while it was stopped cleanly.
        let replica = FileReplica::open(&rpath, size).unwrap();
        let (st, _) = open(&path, &replica).unwrap();
        drop(st);
        let (mut st, _) = open(&path, &replica).unwrap();
        st.close_clean(&replica).unwrap();
        drop(st);
        for b in 0..size / 4096 {
            replica.write_at(b * 4096, &[0xab]).unwrap();
        }
        let e = open(&path, &replica).unwrap_err();
        assert!(e.to_string().contains("changed since"), "{e}");
        drop(replica);

        // Replaced by another file of the same size (a file system may hand
        // the new file the old inode number; the sampled blocks still tell).
        std::fs::remove_file(&rpath).unwrap();
        let replica = FileReplica::open(&rpath, size).unwrap();
        let e = open(&path, &replica).unwrap_err();
        assert!(matches!(e, StateError::NotTheReplica { .. }), "{e}");
        // Adopting it is possible and marks it inconsistent.
        let (st, r) = VolumeState::open(&path, [1; 16], &replica, true).unwrap();
        assert!(matches!(
            r.inconsistent[..],
            [Inconsistency::Adopted { .. }]
        ));
        assert_eq!(st.inconsistencies().len(), 1);
        drop(st);
        // The mark is recorded: it stays on the next open.
        let (_, r) = open(&path, &replica).unwrap();
        assert_eq!(r.inconsistent.len(), 1);
    }

    #[test]
    fn lost_writes_are_recorded_durably() {
        let dir = tempfile::tempdir().unwrap();
        let replica = FileReplica::open(&dir.path().join("r"), 4096).unwrap();
        let path = dir.path().join("state");
        let (mut st, _) = open(&path, &replica).unwrap();
        st.adopt(7, false).unwrap();
        st.set_lost_writes(4, 17, Some(30)).unwrap();
        drop(st);
        let (_, r) = open(&path, &replica).unwrap();
        assert_eq!(
            r.inconsistent,
            vec![Inconsistency::LostWrites {
                epoch: 4,
                first_seq: 17,
                last_seq: Some(30)
            }]
        );
        assert!(r.inconsistent[0].to_string().contains("17 to 30"));
    }
}
