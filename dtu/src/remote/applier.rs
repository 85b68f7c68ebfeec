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

use dtu_proto::frame::MarkerKind;
use dtu_proto::generation::Gen;
use dtu_proto::receiver::Apply;
use dtu_proto::Seq;

use crate::digest::{replica_digests, Digest};

use crate::replica::{Inconsistency, Replica, VolumeState};

use super::undo::UndoState;

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
    /// The undo journal could not save what a write would overwrite (or
    /// take a checkpoint): the write is not applied unprotected.
    #[error("undo journal at seq {seq}: {source}")]
    Undo {
        seq: Seq,
        #[source]
        source: crate::undo::UndoError,
    },
}

/// What applying an operation means beyond the replica's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// A write, trim or flush.
    Data,
    /// A checkpoint: the replica now holds the volume as of this label.
    Checkpoint {
        seq: Seq,
        kind: u8,
        time_us: u64,
        label: String,
    },
    /// The digests a digest request asked for, of the replica exactly as
    /// it is after every earlier seq: the answer for the primary.
    Digests { seq: Seq, digests: Vec<Digest> },
    /// A sync towards this generation began or completed.
    Sync {
        seq: Seq,
        kind: MarkerKind,
        gen: Gen,
    },
}

/// Writes operations to a replica and keeps its state file in step.
pub struct Applier {
    replica: Arc<dyn Replica>,
    state: Arc<Mutex<VolumeState>>,
    applied: Seq,
    synced: Seq,
    /// Bytes written since the last sync.
    unsynced_bytes: u64,
    /// A sync completes at this seq, towards this generation: recorded once
    /// the replica is synced through it, not before (a crash in between
    /// must not leave a half-synced replica marked consistent).
    sync_done: Option<(Seq, Gen)>,
    /// The undo journal, when on: every write and trim is saved in it, and
    /// the save made durable, before the replica is changed.
    undo: Option<Arc<Mutex<UndoState>>>,
    /// Writes and trims through this seq are saved and synced in the
    /// journal already ([`Applier::protect`]).
    protected: Seq,
    /// The journal could not follow a restart of the stream: applying stops.
    undo_broken: Option<String>,
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
            sync_done: None,
            undo: None,
            protected: stored,
            undo_broken: None,
        }
    }

    /// Saves the old contents of every block a write or trim overwrites in
    /// `undo` (durably) before it is applied; checkpoints begin its eras.
    pub fn with_undo(mut self, undo: Arc<Mutex<UndoState>>) -> Applier {
        self.undo = Some(undo);
        self
    }

    fn undo_lock(undo: &Mutex<UndoState>) -> MutexGuard<'_, UndoState> {
        undo.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `op` must be protected ([`Applier::protect`]) before it is applied.
    pub fn needs_protect(&self, op: &Apply) -> bool {
        self.undo.is_some()
            && matches!(op, Apply::Write { .. } | Apply::Trim { .. })
            && op.seq() > self.protected
    }

    /// Saves, with one journal sync for all of them, the old contents of
    /// every write and trim of `ops` (the next operations to apply, in seq
    /// order) up to the first checkpoint among them: the saves of one era
    /// are all made before any of its writes, which is right because only
    /// a block's first overwrite in an era is saved. Without a journal, or
    /// for operations already protected, it does nothing; [`Applier::apply`]
    /// protects what was not.
    pub fn protect(&mut self, ops: &[Apply]) -> Result<(), ApplyError> {
        let Some(undo) = &self.undo else {
            return Ok(());
        };
        let mut u = Self::undo_lock(undo);
        let mut last = None;
        for op in ops {
            let seq = op.seq();
            if seq <= self.protected {
                continue;
            }
            match op {
                Apply::Write { chunks, .. } => {
                    for (offset, data) in chunks {
                        u.save(seq, *offset, data.len() as u64, self.replica.as_ref())
                            .map_err(|source| ApplyError::Undo { seq, source })?;
                    }
                }
                Apply::Trim { offset, length, .. }
                    if !dtu_proto::planted::active(dtu_proto::planted::Bug::UndoSkipsTrim) =>
                {
                    u.save(seq, *offset, *length, self.replica.as_ref())
                        .map_err(|source| ApplyError::Undo { seq, source })?;
                }
                Apply::Checkpoint { .. } => break,
                _ => {}
            }
            last = Some(seq);
        }
        if let Some(seq) = last {
            u.sync()
                .map_err(|source| ApplyError::Undo { seq, source })?;
            self.protected = seq;
        }
        Ok(())
    }

    fn state(&self) -> MutexGuard<'_, VolumeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `batch[i]`, the next operation of a batch: first, if the
    /// undo journal must save what it overwrites, saves that for it and
    /// for the rest of its era in the batch, with one journal sync
    /// ([`Applier::protect`]).
    pub fn apply_in_batch(&mut self, batch: &[Apply], i: usize) -> Result<Applied, ApplyError> {
        if self.needs_protect(&batch[i]) {
            self.protect(&batch[i..])?;
        }
        self.apply(&batch[i])
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
        if let Some(why) = &self.undo_broken {
            return Err(ApplyError::Undo {
                seq,
                source: crate::undo::UndoError::Replica {
                    what: "the journal could not follow the stream's restart",
                    source: std::io::Error::other(why.clone()),
                },
            });
        }
        if self.needs_protect(op) {
            self.protect(std::slice::from_ref(op))?;
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
            Apply::Checkpoint {
                seq,
                kind,
                time_us,
                label,
            } => {
                if let Some(undo) = self.undo.clone() {
                    // Everything before the checkpoint is made durable,
                    // replica and position, first: a view (or a rollback)
                    // at it reads the replica wherever the journal saved
                    // nothing, so neither a machine crash nor the replay
                    // after it (rewriting older data) may take the replica
                    // back to before the checkpoint the catalog names.
                    self.make_durable()?;
                    // Mid-sync, replaying after a crash or never synced,
                    // the replica is not a state the host's volume passed
                    // through: a view at this point would show what the
                    // host never had, so it is not kept (a replayed one,
                    // taken when the replica was in order, is).
                    let not_a_state = self.state().inconsistencies().into_iter().find(|i| {
                        matches!(
                            i,
                            Inconsistency::SyncTarget { .. }
                                | Inconsistency::Replay { .. }
                                | Inconsistency::ReplayUnbounded { .. }
                                | Inconsistency::NeverSynced
                        )
                    });
                    let mut u = Self::undo_lock(&undo);
                    match not_a_state {
                        Some(why) if !u.holds_seq(*seq) => tracing::warn!(
                            "checkpoint {label:?} at seq {seq} is not kept as a point in time: \
                             the replica is not a state the host's volume passed through ({why})"
                        ),
                        _ => u
                            .checkpoint(*seq, *kind, *time_us, label)
                            .map_err(|source| ApplyError::Undo { seq: *seq, source })?,
                    }
                }
                self.protected = self.protected.max(*seq);
                Applied::Checkpoint {
                    seq: *seq,
                    kind: *kind,
                    time_us: *time_us,
                    label: label.clone(),
                }
            }
            Apply::Marker { seq, kind, gen } => {
                match kind {
                    // A replica without a generation yet gets one derived
                    // from the target (any nonzero value would do).
                    MarkerKind::SyncStart => {
                        self.sync_done = None;
                        self.state()
                            .begin_sync(*gen, gen.rotate_left(17) | 1)
                            .map_err(|source| ApplyError::State { seq: *seq, source })?;
                    }
                    MarkerKind::SyncDone => self.sync_done = Some((*seq, *gen)),
                }
                Applied::Sync {
                    seq: *seq,
                    kind: *kind,
                    gen: *gen,
                }
            }
            Apply::Digest {
                seq,
                offset,
                length,
                block,
            } => {
                let digests = replica_digests(self.replica.as_ref(), *offset, *length, *block)
                    .map_err(|source| ApplyError::Write { seq: *seq, source })?;
                Applied::Digests { seq: *seq, digests }
            }
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
        Ok(self.make_durable()?.map(|seq| {
            let bytes = std::mem::take(&mut self.unsynced_bytes);
            (seq, bytes)
        }))
    }

    /// Syncs the replica, then records the synced seq durably; answers it.
    fn make_durable(&mut self) -> Result<Option<Seq>, ApplyError> {
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
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let was = st.inconsistencies().len();
            st.set_synced(seq)
                .map_err(|source| ApplyError::State { seq, source })?;
            if let Some((at, gen)) = self.sync_done.filter(|(at, _)| *at <= seq) {
                st.finish_sync(gen)
                    .map_err(|source| ApplyError::State { seq: at, source })?;
                self.sync_done = None;
                tracing::info!(
                    "the replica holds the primary's volume of generation {gen:016x} (synced through seq {seq})"
                );
            }
            st.sync()
                .map_err(|source| ApplyError::State { seq, source })?;
            if was > 0 && st.inconsistencies().is_empty() {
                tracing::info!("replica is consistent again at seq {seq}");
            }
        }
        self.synced = seq;
        Ok(Some(seq))
    }

    /// The stream restarts after `seq` (a sync or an adoption decided at
    /// connect; the state file was moved with it).
    pub fn rebase(&mut self, seq: Seq) {
        if let Some(undo) = &self.undo {
            if let Err(e) = Self::undo_lock(undo).rebase(seq) {
                tracing::error!(
                    "the undo journal cannot follow the stream's restart at seq {seq}: {e}"
                );
                self.undo_broken = Some(format!("at the restart at seq {seq}: {e}"));
            }
        }
        self.protected = seq;
        self.applied = seq;
        self.synced = seq;
        self.unsynced_bytes = 0;
        self.sync_done = None;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::undo::{AsOf, UndoOptions};
    use crate::replica::FileReplica;
    use bytes::Bytes;

    fn write(seq: Seq, off: u64, byte: u8) -> Apply {
        Apply::Write {
            seq,
            chunks: vec![(off, Bytes::from(vec![byte; 4096]))],
        }
    }

    fn checkpoint(seq: Seq, label: &str) -> Apply {
        Apply::Checkpoint {
            seq,
            kind: 0,
            time_us: 1_000_000 * seq,
            label: label.into(),
        }
    }

    /// One batch holding checkpoints and the writes between them: each
    /// era's saves are made before its writes, and no later era's write
    /// is saved into an earlier one; the views hold what they should.
    #[test]
    fn a_batch_across_checkpoints_saves_each_era_before_its_writes() {
        let dir = tempfile::tempdir().unwrap();
        let size = 1 << 20;
        let path = dir.path().join("r.img");
        let replica: Arc<dyn Replica> = Arc::new(FileReplica::open(&path, size).unwrap());
        let (mut vs, resume) = VolumeState::open(
            &dir.path().join("r.state"),
            [1; 16],
            replica.as_ref(),
            false,
        )
        .unwrap();
        // A replica in sync with the primary: its checkpoints are kept.
        vs.adopt(0x11, false).unwrap();
        let undo = Arc::new(Mutex::new(
            UndoState::open(&UndoOptions::beside(&path), 4096, size).unwrap(),
        ));
        let mut a = Applier::new(replica.clone(), Arc::new(Mutex::new(vs)), resume.stored)
            .with_undo(undo.clone());
        let s = resume.stored;
        let batch = vec![
            checkpoint(s + 1, "c0"),
            write(s + 2, 0, 0xa),
            Apply::Trim {
                seq: s + 3,
                offset: 8192,
                length: 4096,
            },
            write(s + 4, 8192, 0x1),
            checkpoint(s + 5, "c1"),
            write(s + 6, 0, 0xb),
            write(s + 7, 4096, 0xb),
            write(s + 8, 8192, 0xb),
            checkpoint(s + 9, "c2"),
            write(s + 10, 0, 0xc),
        ];
        for i in 0..batch.len() {
            a.apply_in_batch(&batch, i).unwrap();
        }
        a.sync().unwrap();
        let view = |label: &str| {
            let u = undo.lock().unwrap();
            let e = u.resolve(&AsOf::Label(label.into())).unwrap();
            let mut buf = vec![0u8; 3 * 4096];
            u.read_as_of(&e, 0, &mut buf, replica.as_ref()).unwrap();
            [buf[0], buf[4096], buf[8192]]
        };
        assert_eq!(view("c0"), [0, 0, 0]);
        assert_eq!(view("c1"), [0xa, 0, 0x1]);
        assert_eq!(view("c2"), [0xb, 0xb, 0xb]);
        let mut live = vec![0u8; 3 * 4096];
        replica.read_at(0, &mut live).unwrap();
        assert_eq!([live[0], live[4096], live[8192]], [0xc, 0xb, 0xb]);
    }
}

#[cfg(test)]
mod loud {
    use super::*;
    use crate::remote::undo::UndoOptions;
    use crate::replica::FileReplica;
    use bytes::Bytes;

    /// A write the undo journal cannot save for is not applied, not even
    /// its first chunk: the applier answers the journal's error (the remote
    /// stops applying) and the replica keeps its bytes.
    #[test]
    fn a_write_the_journal_cannot_save_is_refused_and_not_applied() {
        let dir = tempfile::tempdir().unwrap();
        let size = 1 << 20;
        let path = dir.path().join("r.img");
        let replica: Arc<dyn Replica> = Arc::new(FileReplica::open(&path, size).unwrap());
        replica.write_at(0, &[7; 4096]).unwrap();
        let (mut vs, resume) = VolumeState::open(
            &dir.path().join("r.state"),
            [1; 16],
            replica.as_ref(),
            false,
        )
        .unwrap();
        // A replica in sync with the primary: its checkpoints are kept.
        vs.adopt(0x11, false).unwrap();
        let opts = UndoOptions::beside(&path);
        let undo = Arc::new(Mutex::new(UndoState::open(&opts, 4096, size).unwrap()));
        let mut a =
            Applier::new(replica.clone(), Arc::new(Mutex::new(vs)), resume.stored).with_undo(undo);
        let s = resume.stored;
        let cp = Apply::Checkpoint {
            seq: s + 1,
            kind: 0,
            time_us: 1,
            label: "c".into(),
        };
        a.apply_in_batch(std::slice::from_ref(&cp), 0).unwrap();
        // A write running past the volume's end: the journal refuses to
        // save it, before the replica sees any of it.
        let w = Apply::Write {
            seq: s + 2,
            chunks: vec![
                (0, Bytes::from(vec![9u8; 4096])),
                (size - 4096, Bytes::from(vec![9u8; 8192])),
            ],
        };
        let batch = [w];
        match a.apply_in_batch(&batch, 0) {
            Err(ApplyError::Undo { seq, .. }) => assert_eq!(seq, s + 2),
            other => panic!("expected an undo error, got {other:?}"),
        }
        let mut buf = vec![0u8; 4096];
        replica.read_at(0, &mut buf).unwrap();
        assert_eq!(buf, vec![7u8; 4096], "the write was applied unprotected");
        assert_eq!(a.applied(), s + 1);
    }
}

#[cfg(test)]
mod not_a_state {
    use super::*;
    use crate::remote::undo::UndoOptions;
    use crate::replica::FileReplica;

    /// A checkpoint that arrives while the replica is part way through a
    /// sync (or never synced) is not kept: its view would show a volume
    /// the host never had. Once the sync is done, checkpoints are kept.
    #[test]
    fn a_checkpoint_during_a_sync_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let size = 1 << 20;
        let path = dir.path().join("r.img");
        let replica: Arc<dyn Replica> = Arc::new(FileReplica::open(&path, size).unwrap());
        let (vs, resume) = VolumeState::open(
            &dir.path().join("r.state"),
            [1; 16],
            replica.as_ref(),
            false,
        )
        .unwrap();
        let undo = Arc::new(Mutex::new(
            UndoState::open(&UndoOptions::beside(&path), 4096, size).unwrap(),
        ));
        let mut a =
            Applier::new(replica, Arc::new(Mutex::new(vs)), resume.stored).with_undo(undo.clone());
        let s = resume.stored;
        let cp = |seq, label: &str| Apply::Checkpoint {
            seq,
            kind: 0,
            time_us: 1_000_000 * seq,
            label: label.into(),
        };
        let ops = [
            cp(s + 1, "never-synced"),
            Apply::Marker {
                seq: s + 2,
                kind: MarkerKind::SyncStart,
                gen: 0x42,
            },
            cp(s + 3, "mid-sync"),
            Apply::Marker {
                seq: s + 4,
                kind: MarkerKind::SyncDone,
                gen: 0x42,
            },
        ];
        for i in 0..ops.len() {
            a.apply_in_batch(&ops, i).unwrap();
        }
        a.sync().unwrap();
        assert!(
            undo.lock().unwrap().is_empty(),
            "{:?}",
            undo.lock().unwrap().list()
        );
        let after = [cp(s + 5, "in-sync")];
        a.apply_in_batch(&after, 0).unwrap();
        let held: Vec<String> = undo
            .lock()
            .unwrap()
            .list()
            .into_iter()
            .map(|c| c.label)
            .collect();
        assert_eq!(held, ["in-sync"]);
    }
}
