//! The remote's point in time: the checkpoint [`Catalog`] and the undo
//! [`Journal`] of [`crate::undo`], opened beside the replica and driven by
//! the applier (save before every write and trim, sync before the replica
//! write, a new era at every checkpoint), and read for as-of views.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dtu_proto::Seq;
use serde::{Deserialize, Serialize};

use crate::replica::Replica;
use crate::undo::{reconcile, Catalog, Entry, Journal, Limits, UndoError, MAX_CHECKPOINTS};

/// Where the undo journal lives and how much history it keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UndoOptions {
    /// Holds `catalog` and the `undo/` segments.
    pub dir: PathBuf,
    /// The oldest checkpoints go while the journal holds more than this.
    pub max_bytes: u64,
    /// The oldest checkpoints go once older than this.
    pub max_age: Option<Duration>,
}

/// Default `undo.max_bytes`.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 30;

impl UndoOptions {
    /// The default for a replica at `replica`: `<replica>.undo`, 64 GiB, no age limit.
    pub fn beside(replica: &Path) -> UndoOptions {
        let mut s = replica.to_path_buf().into_os_string();
        s.push(".undo");
        UndoOptions {
            dir: PathBuf::from(s),
            max_bytes: DEFAULT_MAX_BYTES,
            max_age: None,
        }
    }
}

/// A checkpoint as `dtu checkpoints` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    pub seq: Seq,
    /// The primary's wall time, microseconds since the Unix epoch.
    pub time_us: u64,
    pub kind: String,
    pub label: String,
    pub era: u64,
    /// Bytes of the undo segment of this checkpoint's era: the old
    /// contents saved from it until the next checkpoint.
    pub undo_bytes: u64,
}

/// Which checkpoint an as-of view shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AsOf {
    /// The nearest checkpoint at or before this wall time (µs since the Unix epoch).
    Time(u64),
    /// The newest checkpoint with this label.
    Label(String),
}

impl std::fmt::Display for AsOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AsOf::Time(t) => f.write_str(&crate::undo::fmt_time_us(*t)),
            AsOf::Label(l) => write!(f, "{l:?}"),
        }
    }
}

/// The catalog and the journal of one remote.
#[derive(Debug)]
pub struct UndoState {
    catalog: Catalog,
    journal: Journal,
}

pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl UndoState {
    /// Opens (creating) the catalog and the journal in `opts.dir`, logs a
    /// torn tail and what reconciling them after a crash changed.
    pub fn open(
        opts: &UndoOptions,
        block_size: u64,
        volume_size: u64,
    ) -> Result<UndoState, UndoError> {
        std::fs::create_dir_all(&opts.dir).map_err(|source| UndoError::Io {
            path: opts.dir.clone(),
            what: "cannot create the undo directory",
            source,
        })?;
        let mut catalog = Catalog::open(&opts.dir.join("catalog"))?;
        let (mut journal, report) = Journal::open(&opts.dir.join("undo"), block_size, volume_size)?;
        for t in &report.torn {
            tracing::warn!(
                "undo journal: era {} ({}): a torn last write was cut at byte {} ({} bytes): {}",
                t.era,
                t.path.display(),
                t.offset,
                t.cut_bytes,
                t.what
            );
        }
        journal.set_limits(Limits {
            max_bytes: Some(opts.max_bytes),
            warn_bytes: Some(opts.max_bytes / 10 * 9),
            max_age: opts.max_age,
            // The catalog holds at most this many; one place for the next.
            max_eras: Some(MAX_CHECKPOINTS - 1),
        });
        let rec = reconcile(&mut catalog, &mut journal)?;
        for (c, why) in &rec.dropped_checkpoints {
            tracing::warn!("checkpoint {c} dropped: {why}");
        }
        for (d, why) in &rec.dropped_eras {
            tracing::warn!("undo era {} (seq {}) dropped: {why}", d.era, d.begin_seq);
        }
        for (era, why) in &rec.kept_eras {
            tracing::info!("undo era {era} kept: {why}");
        }
        tracing::info!(
            "undo journal {}: {} checkpoints, {} eras, {} bytes",
            opts.dir.display(),
            catalog.len(),
            journal.eras().len(),
            journal.stats().disk_bytes
        );
        Ok(UndoState { catalog, journal })
    }

    /// Saves the old contents of `off..off+len` before the write or trim at `seq`.
    pub fn save(
        &mut self,
        seq: Seq,
        off: u64,
        len: u64,
        replica: &dyn Replica,
    ) -> Result<(), UndoError> {
        self.journal.save_before_write(seq, off, len, replica)?;
        Ok(())
    }

    /// Makes the saves durable: before the replica writes they protect.
    pub fn sync(&mut self) -> Result<(), UndoError> {
        self.journal.sync()
    }

    /// A checkpoint was applied: a new era begins at it and it enters the
    /// catalog (a replayed one is recognised and left as it is); then
    /// retention drops the oldest points over the limits.
    pub fn checkpoint(
        &mut self,
        seq: Seq,
        kind: u8,
        time_us: u64,
        label: &str,
    ) -> Result<(), UndoError> {
        let eras = self.journal.eras();
        // A checkpoint replayed after a crash (its era began, the replica's
        // position was not yet durable) already has its era.
        if let Some(&(era, _, _)) = eras.iter().find(|e| e.1 == seq) {
            if self.catalog.by_era(era).is_none()
                && self.catalog.newest().is_none_or(|n| n.era < era)
            {
                let time = eras.iter().find(|e| e.0 == era).map_or(time_us, |e| e.2);
                self.append(seq, kind, time, label, era)?;
            }
            return Ok(());
        }
        // The primary's clock stepped back: the point keeps its place in
        // the stream, its time is the newest's (times must not go back).
        // A primary that sends no time (0): the remote's time of applying it.
        let mut time = if time_us == 0 { now_us() } else { time_us };
        if let Some(&(_, _, newest)) = eras.last() {
            if time < newest {
                tracing::warn!(
                    "checkpoint {label:?} at seq {seq} has a time ({}) before the newest checkpoint's ({}): the primary's clock went back; it is recorded at the newest's time",
                    crate::undo::fmt_time_us(time_us),
                    crate::undo::fmt_time_us(newest)
                );
                time = newest;
            }
        }
        let era = self.journal.begin_era(seq, time)?;
        self.append(seq, kind, time, label, era)?;
        for d in self.journal.retain(now_us())? {
            if let Some(c) = self.catalog.drop_era(d.era)? {
                tracing::info!(
                    "retention: checkpoint {c} and its undo era {} dropped",
                    d.era
                );
            }
        }
        Ok(())
    }

    fn append(
        &mut self,
        seq: Seq,
        kind: u8,
        time_us: u64,
        label: &str,
        era: u64,
    ) -> Result<(), UndoError> {
        // A kind this build does not know is kept as manual rather than
        // stopping the remote.
        let kind = if dtu_proto::frame::CheckpointKind::from_byte(kind).is_some() {
            kind
        } else {
            0
        };
        let mut label = label.to_string();
        while label.len() > crate::undo::MAX_LABEL {
            label.pop();
        }
        self.catalog.append(Entry {
            seq,
            time_us,
            kind,
            label,
            era,
        })?;
        Ok(())
    }

    /// The stream restarts after `pos` (a connect decided a sync or an
    /// adoption). If that is before the newest checkpoint, the seqs that
    /// follow belong to another numbering: the journal could not tell its
    /// writes from replays and would save nothing for them, so every
    /// checkpoint and era goes (loudly); history starts again at the next
    /// checkpoint. Answers how many checkpoints went.
    pub fn rebase(&mut self, pos: Seq) -> Result<usize, UndoError> {
        let Some(&(_, newest_seq, _)) = self.journal.eras().last() else {
            return Ok(0);
        };
        if pos >= newest_seq {
            return Ok(0);
        }
        let gone = self.catalog.drop_where(|_| true)?;
        while let Some(&(era, _, _)) = self.journal.eras().first() {
            self.journal.drop_era(era)?;
        }
        tracing::error!(
            "the stream restarts at seq {pos}, before the newest checkpoint (seq {newest_seq}): \
             the undo journal cannot follow another numbering of the writes; its {} checkpoints \
             are dropped and history starts again at the next checkpoint",
            gone.len()
        );
        Ok(gone.len())
    }

    /// The checkpoints held, oldest first.
    pub fn list(&self) -> Vec<CheckpointInfo> {
        let stats = self.journal.stats();
        self.catalog
            .list()
            .iter()
            .map(|c| CheckpointInfo {
                seq: c.seq,
                time_us: c.time_us,
                kind: c.kind_name().to_string(),
                label: c.label.clone(),
                era: c.era,
                undo_bytes: stats
                    .eras
                    .iter()
                    .find(|e| e.era == c.era)
                    .map_or(0, |e| e.disk_bytes),
            })
            .collect()
    }

    /// The checkpoint an as-of view at `at` shows: the nearest at or
    /// before the time, or the newest with the label.
    pub fn resolve(&self, at: &AsOf) -> Result<Entry, UndoError> {
        Ok(match at {
            AsOf::Time(t) => self.catalog.at_or_before(*t)?.clone(),
            AsOf::Label(l) => self.catalog.by_label(l)?.clone(),
        })
    }

    /// The checkpoint of undo era `era`, if still held.
    pub fn resolve_era(&self, era: u64) -> Option<Entry> {
        self.catalog.by_era(era).cloned()
    }

    /// Fills `buf` with the volume at `off` as it was at checkpoint `entry`.
    pub fn read_as_of(
        &self,
        entry: &Entry,
        off: u64,
        buf: &mut [u8],
        replica: &dyn Replica,
    ) -> Result<(), UndoError> {
        self.journal.read_as_of(entry.era, off, buf, replica)
    }

    /// Bytes the journal holds on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.journal.stats().disk_bytes
    }
}
