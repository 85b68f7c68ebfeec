//! Rolling the replica back to a checkpoint: tried first, then committed
//! or abandoned.
//!
//! A trial holds the applier ([`Hold::Trial`]): writes keep arriving and
//! wait in the remote's queue (then in the primary's nvbuf), the replica
//! stays still, and the checkpoint's as-of view is served read-only for
//! inspection. A commit rewrites the replica from the undo journal to the
//! checkpoint's state and gives it a generation of its own, so the primary
//! it left is refused at connect (the remote moved on) instead of streaming
//! writes that follow a state the replica no longer holds. A [`Marker`]
//! written before the first replica write makes the commit crash-safe: the
//! journal is unchanged until the replica is rewritten and synced, so a
//! remote that restarts with the marker present simply redoes it.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use dtu_proto::generation::Gen;
use dtu_proto::Seq;

use crate::replica::{Replica, VolumeState};
use crate::undo::{Entry, RollbackStep, UndoError};

use super::undo::UndoState;

/// What the applier may do now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Hold {
    /// Applying as usual.
    #[default]
    Applying,
    /// A rollback to this checkpoint is being tried: nothing is applied.
    Trial(Entry),
    /// The replica was rolled back to this checkpoint: nothing is applied
    /// until a primary is accepted again (the receiver is rebuilt then, so
    /// nothing that was queued for the old history reaches the replica).
    RolledBack(Entry),
    /// The replica was promoted: it is a primary's volume now; nothing is
    /// applied and every primary is refused.
    Promoted,
}

impl Hold {
    pub fn applying(&self) -> bool {
        matches!(self, Hold::Applying)
    }

    /// One line for `dtu status`.
    pub fn describe(&self) -> Option<String> {
        match self {
            Hold::Applying => None,
            Hold::Trial(e) => Some(format!(
                "rollback trial to checkpoint {e}: applying is paused; `dtu rollback --commit` \
                 rewrites the replica to it, `dtu rollback --abandon` resumes"
            )),
            Hold::RolledBack(e) => Some(format!(
                "rolled back to checkpoint {e}: the replica has a generation of its own; the \
                 primary it left is refused until the pair is brought back into line"
            )),
            Hold::Promoted => Some(
                "promoted: the replica is a primary's volume now; this remote applies nothing"
                    .into(),
            ),
        }
    }
}

/// A commit under way: which checkpoint, and the generation the replica takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    pub era: u64,
    pub seq: Seq,
    pub gen: Gen,
}

const MAGIC: &[u8; 8] = b"DTUROLL1";
const MARKER_LEN: usize = 8 + 3 * 8 + 4;

impl Marker {
    fn encode(&self) -> [u8; MARKER_LEN] {
        let mut b = [0u8; MARKER_LEN];
        b[..8].copy_from_slice(MAGIC);
        b[8..16].copy_from_slice(&self.era.to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.gen.to_le_bytes());
        let crc = crc32fast::hash(&b[..32]);
        b[32..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Marker> {
        if b.len() != MARKER_LEN || &b[..8] != MAGIC {
            return None;
        }
        let word = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let crc = u32::from_le_bytes(b[32..].try_into().unwrap_or_default());
        (crc32fast::hash(&b[..32]) == crc).then(|| Marker {
            era: word(8),
            seq: word(16),
            gen: word(24),
        })
    }

    fn path(dir: &Path) -> PathBuf {
        dir.join("rollback")
    }

    /// The commit left under way in `dir`, if any. A marker that does not
    /// read back whole was never renamed into place complete: it is not
    /// there.
    pub fn load(dir: &Path) -> Result<Option<Marker>, UndoError> {
        let path = Marker::path(dir);
        match std::fs::read(&path) {
            Ok(b) => Marker::decode(&b).map(Some).ok_or(UndoError::Damaged {
                path,
                offset: 0,
                what: "the rollback marker does not read back (remove it only if no rollback \
                       was being committed)"
                    .into(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(UndoError::Io {
                path,
                what: "cannot read the rollback marker",
                source,
            }),
        }
    }

    fn store(&self, dir: &Path) -> Result<(), UndoError> {
        let path = Marker::path(dir);
        let tmp = dir.join("rollback.tmp");
        let io = |what| {
            let path = path.clone();
            move |source| UndoError::Io { path, what, source }
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("cannot create the rollback marker"))?;
        f.write_all(&self.encode())
            .map_err(io("cannot write the rollback marker"))?;
        f.sync_all()
            .map_err(io("cannot sync the rollback marker"))?;
        std::fs::rename(&tmp, &path).map_err(io("cannot rename the rollback marker"))?;
        crate::undo::sync_dir(dir).map_err(io("cannot sync the undo directory"))
    }

    fn remove(dir: &Path) -> Result<(), UndoError> {
        let path = Marker::path(dir);
        std::fs::remove_file(&path).map_err(|source| UndoError::Io {
            path: path.clone(),
            what: "cannot remove the rollback marker",
            source,
        })?;
        crate::undo::sync_dir(dir).map_err(|source| UndoError::Io {
            path,
            what: "cannot sync the undo directory",
            source,
        })
    }
}

/// What a committed rollback did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub checkpoint: Entry,
    pub gen: Gen,
    /// Bytes rewritten from the journal, and bytes zeroed.
    pub written: u64,
    pub zeroed: u64,
    /// Checkpoints after it that went with the history they began.
    pub dropped: Vec<Entry>,
}

/// Why a rollback cannot be done.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    /// The undo journal could not be read or written.
    #[error(transparent)]
    Undo(#[from] UndoError),
    #[error("rolling the replica back: {what}: {source}")]
    Replica {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Why a request about the remote's history (checkpoints, as-of views,
/// rollback) cannot be done.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// The remote keeps no undo journal.
    #[error("this remote keeps no undo journal (undo.enabled = false)")]
    NoJournal,
    /// The undo journal could not be read or written.
    #[error(transparent)]
    Undo(#[from] UndoError),
    /// Retention dropped the checkpoint's era.
    #[error("the checkpoint of undo era {0} is no longer held (retention dropped it)")]
    NoLongerHeld(u64),
    /// The as-of view could not be served.
    #[error(transparent)]
    View(#[from] super::view::ViewError),
    /// No as-of view is served.
    #[error("no as-of view is served")]
    NoView,
    /// The view is a rollback trial's.
    #[error("the view belongs to the rollback trial to checkpoint {0}: commit or abandon it")]
    ViewOfTrial(Box<Entry>),
    #[error("no rollback trial is under way{}", if *.needs_to { ": name the checkpoint (--to)" } else { "" })]
    /// No rollback trial is under way.
    NoTrial {
        /// The request must name a checkpoint.
        needs_to: bool,
    },
    /// A rollback trial is under way.
    #[error("a rollback trial to checkpoint {0} is under way: commit or abandon it first")]
    TrialUnderWay(Box<Entry>),
    #[error("the trial under way is of checkpoint {trial}, not {asked}: commit it without --to, or abandon it and try {asked}")]
    /// The trial under way is of another checkpoint.
    OtherTrial {
        /// The trial's checkpoint.
        trial: Box<Entry>,
        /// The checkpoint asked for.
        asked: Box<Entry>,
    },
    /// The replica was rolled back and waits for the pair.
    #[error("the replica was rolled back to checkpoint {0}; it waits for the pair to be brought back into line")]
    RolledBack(Box<Entry>),
    /// The remote stopped applying.
    #[error("the remote stopped applying: {0}")]
    Stopped(String),
    #[error("the rollback to checkpoint {checkpoint} failed part way: {source}; the replica is inconsistent and the remote stops applying (a restart finishes the rollback if its marker was written)")]
    /// The rollback failed part way; the replica is inconsistent.
    Failed {
        /// The checkpoint rolled back to.
        checkpoint: Box<Entry>,
        /// Why.
        #[source]
        source: RollbackError,
    },
}

/// Rewrites `replica` to the volume as it was at `m`'s checkpoint, gives
/// it generation `m.gen`, then drops the later history. The marker is
/// written first ([`begin`]) and removed last: run again after a crash
/// anywhere in between ([`finish_pending`]), it reaches the same end.
pub fn commit(
    undo: &mut UndoState,
    m: Marker,
    replica: &dyn Replica,
    vstate: &mut VolumeState,
) -> Result<Committed, RollbackError> {
    begin(undo, m)?;
    finish(undo, m, replica, vstate)
}

/// The first step of [`commit`]: the marker, durably, before any replica
/// write; from here a restart finishes the rollback.
pub fn begin(undo: &UndoState, m: Marker) -> Result<(), UndoError> {
    m.store(undo.dir())
}

fn finish(
    undo: &mut UndoState,
    m: Marker,
    replica: &dyn Replica,
    vstate: &mut VolumeState,
) -> Result<Committed, RollbackError> {
    let dir = undo.dir().to_path_buf();
    let checkpoint = undo
        .resolve_era(m.era)
        .filter(|e| e.seq == m.seq)
        .ok_or_else(|| UndoError::NoSuchEra {
            era: m.era,
            held: undo
                .list()
                .iter()
                .map(|c| c.era.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let rep = |what| move |source| RollbackError::Replica { what, source };
    let (mut written, mut zeroed) = (0, 0);
    // One step's data in memory at a time, however large the rollback.
    undo.for_each_rollback_step(m.era, |step| {
        match step {
            RollbackStep::Write { off, data } => {
                replica
                    .write_at(off, &data)
                    .map_err(rep("writing the saved contents"))?;
                written += data.len() as u64;
            }
            RollbackStep::Zero { off, len } => {
                replica
                    .trim(off, len)
                    .map_err(rep("zeroing blocks that were empty"))?;
                zeroed += len;
            }
        }
        Ok::<(), RollbackError>(())
    })?;
    replica.sync().map_err(rep("syncing the replica"))?;
    vstate
        .rolled_back(m.seq, m.gen)
        .map_err(rep("recording the new generation in the state file"))?;
    let dropped = undo.drop_after(m.era)?;
    Marker::remove(&dir)?;
    Ok(Committed {
        checkpoint,
        gen: m.gen,
        written,
        zeroed,
        dropped,
    })
}

/// After a crash: finishes a commit left under way in `undo`'s directory.
pub fn finish_pending(
    undo: &mut UndoState,
    replica: &dyn Replica,
    vstate: &mut VolumeState,
) -> Result<Option<Committed>, RollbackError> {
    match Marker::load(undo.dir())? {
        Some(m) => finish(undo, m, replica, vstate).map(Some),
        None => Ok(None),
    }
}

/// Starts the marker for a commit to `entry` with a fresh generation.
pub fn marker_for(entry: &Entry, gen: Gen) -> Marker {
    Marker {
        era: entry.era,
        seq: entry.seq,
        gen: gen.max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::undo::{AsOf, UndoOptions};
    use crate::replica::FileReplica;

    /// A commit cut short after its marker and part of the rewrite (a
    /// crash) is finished by the next start: the replica equals the
    /// checkpoint, the generation moved on once, the later history went.
    #[test]
    fn a_commit_cut_short_is_finished_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let size = 1 << 20;
        let path = dir.path().join("r.img");
        let replica = FileReplica::open(&path, size).unwrap();
        let opts = UndoOptions::beside(&path);
        let mut u = UndoState::open(&opts, 4096, size).unwrap();
        let (mut vs, _) =
            VolumeState::open(&dir.path().join("r.state"), [1; 16], &replica, false).unwrap();
        vs.adopt(0x77, false).unwrap();
        let mut seq = 0;
        let write = |u: &mut UndoState, off: u64, byte: u8, seq: &mut u64| {
            *seq += 1;
            u.save(*seq, off, 8192, &replica).unwrap();
            u.sync().unwrap();
            replica.write_at(off, &[byte; 8192]).unwrap();
        };
        write(&mut u, 0, 1, &mut seq);
        write(&mut u, 65536, 2, &mut seq);
        seq += 1;
        u.checkpoint(seq, 0, 1_000_000, "c1").unwrap();
        let mut at_c1 = vec![0u8; size as usize];
        replica.read_at(0, &mut at_c1).unwrap();
        write(&mut u, 0, 3, &mut seq);
        write(&mut u, 4096 * 40, 4, &mut seq);
        seq += 1;
        u.checkpoint(seq, 0, 2_000_000, "c2").unwrap();
        write(&mut u, 65536, 5, &mut seq);
        replica.trim(0, 4096).unwrap();

        let c1 = u.resolve(&AsOf::Label("c1".into())).unwrap();
        let m = marker_for(&c1, 0xabc);
        // The crash: the marker is down and the first step is applied.
        begin(&u, m).unwrap();
        if let Some(RollbackStep::Write { off, data }) = u.rollback_plan(c1.era).unwrap().first() {
            replica.write_at(*off, data).unwrap();
        }
        drop(u);
        let mut u = UndoState::open(&opts, 4096, size).unwrap();
        let done = finish_pending(&mut u, &replica, &mut vs).unwrap().unwrap();
        assert_eq!(done.checkpoint.label, "c1");
        assert_eq!(done.dropped.len(), 1);
        let mut now = vec![0u8; size as usize];
        replica.read_at(0, &mut now).unwrap();
        assert!(now == at_c1, "the replica is not the volume at c1");
        assert_eq!(vs.gens().current, 0xabc);
        assert!(vs.gens().passed(0x77));
        assert_eq!(vs.synced(), c1.seq);
        assert_eq!(u.list().len(), 1);
        // Nothing is left to finish; doing it again changes nothing.
        assert!(finish_pending(&mut u, &replica, &mut vs).unwrap().is_none());
        assert!(Marker::load(u.dir()).unwrap().is_none());
    }

    #[test]
    fn a_marker_reads_back_and_a_torn_one_is_refused() {
        let m = Marker {
            era: 3,
            seq: 99,
            gen: 0xfeed,
        };
        assert_eq!(Marker::decode(&m.encode()), Some(m));
        let mut b = m.encode();
        b[20] ^= 1;
        assert_eq!(Marker::decode(&b), None);
        assert_eq!(Marker::decode(&b[..10]), None);
    }
}
