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
    /// The seq the checkpoint follows: the replica as of it holds every
    /// write up to it.
    pub seq: Seq,
    /// The primary's wall time, microseconds since the Unix epoch.
    pub time_us: u64,
    /// Why it was taken: `manual`, `timer`, `shutdown`, `boot`, `install`
    /// or `change`.
    pub kind: String,
    /// The name it was given.
    pub label: String,
    /// The undo era it opens.
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
    /// The journal is above its warning level (logged once per crossing).
    warned: bool,
}

/// The wall time, µs since the Unix epoch.
pub fn now_us() -> u64 {
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
        Ok(UndoState {
            catalog,
            journal,
            warned: false,
        })
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
    /// Then applies retention, so that a host writing without checkpoints
    /// does not grow the journal past its limits: the oldest checkpoints
    /// go first, never the newest (whose era alone may hold up to the
    /// volume's size).
    pub fn sync(&mut self) -> Result<(), UndoError> {
        self.journal.sync()?;
        self.apply_retention()?;
        let over = self.journal.over_warning();
        if over && !self.warned {
            tracing::warn!(
                "the undo journal holds {} bytes, above its warning level ({} bytes, 90 % of \
                 undo.max_bytes): at the limit the oldest checkpoints are dropped",
                self.journal.stats().disk_bytes,
                self.journal.limits().warn_bytes.unwrap_or(0)
            );
        }
        self.warned = over;
        Ok(())
    }

    /// Drops the oldest checkpoints over the limits (size, age, count).
    fn apply_retention(&mut self) -> Result<(), UndoError> {
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
        self.apply_retention()
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

    /// Whether an era begins at `seq` (a checkpoint applied before).
    pub fn holds_seq(&self, seq: Seq) -> bool {
        self.journal.eras().iter().any(|e| e.1 == seq)
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

    /// The directory holding the catalog and the journal.
    pub fn dir(&self) -> &Path {
        self.catalog.path().parent().unwrap_or(Path::new("."))
    }

    /// The writes that turn the replica back into its state at the
    /// checkpoint of era `era` ([`Journal::rollback_plan`]).
    pub fn rollback_plan(&self, era: u64) -> Result<Vec<crate::undo::RollbackStep>, UndoError> {
        self.journal.rollback_plan(era)
    }

    /// The same steps one at a time ([`Journal::for_each_rollback_step`]).
    pub fn for_each_rollback_step<E: From<UndoError>>(
        &self,
        era: u64,
        f: impl FnMut(crate::undo::RollbackStep) -> Result<(), E>,
    ) -> Result<(), E> {
        self.journal.for_each_rollback_step(era, f)
    }

    /// After the replica was rolled back to the checkpoint of era `era`
    /// and synced: the later eras and their checkpoints go, durably.
    /// Answers the checkpoints that went.
    pub fn drop_after(&mut self, era: u64) -> Result<Vec<Entry>, UndoError> {
        let seq = self
            .catalog
            .by_era(era)
            .map(|e| e.seq)
            .ok_or_else(|| UndoError::NoSuchEra {
                era,
                held: String::new(),
            })?;
        self.journal.drop_eras_after(era)?;
        Ok(self.catalog.drop_after(seq)?)
    }

    /// Checkpoints held.
    pub fn len(&self) -> usize {
        self.catalog.len()
    }

    pub fn is_empty(&self) -> bool {
        self.catalog.is_empty()
    }

    /// The oldest checkpoint held.
    pub fn oldest(&self) -> Option<&Entry> {
        self.catalog.oldest()
    }

    /// Bytes the journal holds on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.journal.stats().disk_bytes
    }
}

/// Parses a wall time for an as-of view, UTC: `@SECS` (seconds since the
/// Unix epoch, as `date +%s` prints) or `YYYY-MM-DD[ T]HH:MM[:SS[.ffffff]]`
/// with an optional ` UTC` or `Z` (the form `dtu checkpoints` prints).
/// Answers microseconds since the Unix epoch.
pub fn parse_time(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Some(secs) = s.strip_prefix('@') {
        return secs.parse::<u64>().ok()?.checked_mul(1_000_000);
    }
    let s = s
        .strip_suffix(" UTC")
        .or_else(|| s.strip_suffix('Z'))
        .unwrap_or(s);
    let (date, time) = s.split_once([' ', 'T'])?;
    let mut d = date.split('-');
    let (y, m, dd): (u64, u64, u64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    if d.next().is_some() || !(1970..=9999).contains(&y) || !(1..=12).contains(&m) {
        return None;
    }
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if dd == 0 || dd > month_days[(m - 1) as usize] {
        return None;
    }
    let (hms, frac) = match time.split_once('.') {
        Some((a, f)) => (a, Some(f)),
        None => (time, None),
    };
    let mut t = hms.split(':');
    let h: u64 = t.next()?.parse().ok()?;
    let mi: u64 = t.next()?.parse().ok()?;
    let sec: u64 = match t.next() {
        Some(x) => x.parse().ok()?,
        None => 0,
    };
    if t.next().is_some() || h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    let us: u64 = match frac {
        Some(f) if !f.is_empty() && f.len() <= 6 && f.bytes().all(|b| b.is_ascii_digit()) => {
            f.parse::<u64>().ok()? * 10u64.pow(6 - f.len() as u32)
        }
        Some(_) => return None,
        None => 0,
    };
    let days = days_from_civil(y, m, dd);
    Some(((days * 86_400 + h * 3600 + mi * 60 + sec) * 1_000_000) + us)
}

/// Days from 1970-01-01 to `y-m-d` (H. Hinnant's algorithm, from 1970).
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A read-only NBD export of the replica as it was at one checkpoint,
/// while replication goes on: the live replica overlaid with the undo
/// journal's copies. If retention drops the checkpoint, reads fail.
pub struct AsOfExport {
    undo: std::sync::Arc<std::sync::Mutex<UndoState>>,
    replica: std::sync::Arc<dyn Replica>,
    entry: Entry,
    size: u64,
}

impl AsOfExport {
    pub(crate) fn new(
        undo: std::sync::Arc<std::sync::Mutex<UndoState>>,
        replica: std::sync::Arc<dyn Replica>,
        entry: Entry,
    ) -> AsOfExport {
        let size = replica.size();
        AsOfExport {
            undo,
            replica,
            entry,
            size,
        }
    }

    /// The checkpoint shown.
    pub fn checkpoint(&self) -> &Entry {
        &self.entry
    }
}

fn read_only_err() -> std::io::Error {
    std::io::Error::from_raw_os_error(libc::EPERM)
}

impl crate::nbd::Export for AsOfExport {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        true
    }

    fn read(&self, offset: u64, len: u32) -> crate::nbd::IoFuture<bytes::Bytes> {
        let undo = self.undo.clone();
        let replica = self.replica.clone();
        let entry = self.entry.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let u = undo.lock().unwrap_or_else(|p| p.into_inner());
                if u.resolve_era(entry.era).is_none() {
                    return Err(std::io::Error::other(format!(
                        "checkpoint {entry} is no longer held (retention dropped it)"
                    )));
                }
                let mut buf = vec![0u8; len as usize];
                u.read_as_of(&entry, offset, &mut buf, replica.as_ref())
                    .map_err(std::io::Error::other)?;
                Ok(bytes::Bytes::from(buf))
            })
            .await
            .map_err(|e| std::io::Error::other(format!("as-of read task failed: {e}")))?
        })
    }

    fn write(&self, _offset: u64, _data: bytes::Bytes, _fua: bool) -> crate::nbd::IoFuture<()> {
        Box::pin(async { Err(read_only_err()) })
    }

    fn flush(&self) -> crate::nbd::IoFuture<()> {
        Box::pin(async { Ok(()) })
    }

    fn trim(&self, _offset: u64, _len: u32) -> crate::nbd::IoFuture<()> {
        Box::pin(async { Err(read_only_err()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::FileReplica;

    #[test]
    fn times_parse_as_dtu_checkpoints_prints_them() {
        assert_eq!(parse_time("@0"), Some(0));
        assert_eq!(parse_time("@1700000000"), Some(1_700_000_000_000_000));
        for us in [0, 951_825_600_500_000, 1_796_215_584_000_001] {
            assert_eq!(parse_time(&crate::undo::fmt_time_us(us)), Some(us));
        }
        assert_eq!(
            parse_time("2026-12-02T12:46:24Z"),
            Some(1_796_215_584_000_000)
        );
        assert_eq!(parse_time("2026-12-02 12:46"), Some(1_796_215_560_000_000));
        for bad in [
            "",
            "c1",
            "@-1",
            "@x",
            "2026-13-01 00:00",
            "2026-02-30 00:00",
            "2026-01-01",
            "2026-01-01 24:00",
            "2026-01-01 00:00:00.1234567",
            "1969-12-31 23:59",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    /// A host writing continuously (random overwrites, a checkpoint every
    /// 256 KiB of writes, sometimes none for a long stretch): the journal
    /// stays under its hard limit plus the newest era (which is never
    /// dropped), the oldest checkpoints go first, and the newest views
    /// stay right.
    #[test]
    fn retention_keeps_the_journal_under_its_limit_while_the_host_writes() {
        use rand::{Rng, SeedableRng};
        let dir = tempfile::tempdir().unwrap();
        let size = 8 << 20;
        let path = dir.path().join("r.img");
        let replica = FileReplica::open(&path, size).unwrap();
        let mut opts = UndoOptions::beside(&path);
        opts.max_bytes = 1 << 20;
        let mut u = UndoState::open(&opts, 4096, size).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let (mut seq, mut since_cp) = (0u64, 0u64);
        let mut labels = Vec::new();
        for i in 0..3000u64 {
            seq += 1;
            let off = rng.gen_range(0..size / 4096) * 4096;
            u.save(seq, off, 4096, &replica).unwrap();
            u.sync().unwrap();
            replica.write_at(off, &[rng.gen(); 4096]).unwrap();
            since_cp += 4096;
            // A long stretch without checkpoints in the middle.
            let gap = if (1000..1600).contains(&i) {
                4 << 20
            } else {
                256 << 10
            };
            if since_cp >= gap {
                seq += 1;
                u.checkpoint(seq, 1, 1_000_000 + seq, &format!("c{i}"))
                    .unwrap();
                labels.push(format!("c{i}"));
                since_cp = 0;
            }
            let held = u.disk_bytes();
            assert!(
                held <= opts.max_bytes + since_cp + (64 << 10),
                "write {i}: the journal holds {held} bytes, over its limit and the newest era"
            );
        }
        let list = u.list();
        assert!(list.len() >= 2, "{list:?}");
        assert!(list.len() < labels.len(), "nothing was dropped");
        // The newest checkpoints are the ones held, in order.
        let held: Vec<&str> = list.iter().map(|c| c.label.as_str()).collect();
        let newest: Vec<&str> = labels[labels.len() - held.len()..]
            .iter()
            .map(String::as_str)
            .collect();
        assert_eq!(held, newest);
    }

    /// The seed's rule through the remote's own state: checkpoints at t3,
    /// t5, t9 and t14 (seconds), with writes and trims in between; t8 shows
    /// t5, t4 shows t3, t15 shows t14, t2 is refused naming t3; each view
    /// holds the bytes as they were at its checkpoint.
    #[test]
    fn nearest_checkpoint_at_or_before_with_writes_and_trims_between() {
        let dir = tempfile::tempdir().unwrap();
        let size = 1 << 20;
        let replica = FileReplica::open(&dir.path().join("r.img"), size).unwrap();
        let mut u =
            UndoState::open(&UndoOptions::beside(&dir.path().join("r.img")), 4096, size).unwrap();
        let s = 1_000_000u64;
        let mut seq = 0;
        let mut views = Vec::new();
        for (i, t) in [3u64, 5, 9, 14].into_iter().enumerate() {
            // Write block 0 with the checkpoint's number, trim block 1 on odd ones.
            seq += 1;
            u.save(seq, 0, 4096, &replica).unwrap();
            u.sync().unwrap();
            replica.write_at(0, &[i as u8 + 1; 4096]).unwrap();
            seq += 1;
            if i % 2 == 1 {
                u.save(seq, 4096, 4096, &replica).unwrap();
                u.sync().unwrap();
                replica.trim(4096, 4096).unwrap();
            } else {
                u.save(seq, 4096, 4096, &replica).unwrap();
                u.sync().unwrap();
                replica.write_at(4096, &[0xa0 + i as u8; 4096]).unwrap();
            }
            seq += 1;
            u.checkpoint(seq, 0, t * s, &format!("t{t}")).unwrap();
            let mut view = vec![0u8; 8192];
            replica.read_at(0, &mut view).unwrap();
            views.push(view);
        }
        // After the last checkpoint the replica moves on.
        seq += 1;
        u.save(seq, 0, 8192, &replica).unwrap();
        u.sync().unwrap();
        replica.write_at(0, &[0xff; 8192]).unwrap();
        for (ask, want, view) in [(8, "t5", 1), (4, "t3", 0), (15, "t14", 3), (9, "t9", 2)] {
            let e = u.resolve(&AsOf::Time(ask * s)).unwrap();
            assert_eq!(e.label, want, "t{ask}");
            let mut buf = vec![0u8; 8192];
            u.read_as_of(&e, 0, &mut buf, &replica).unwrap();
            assert_eq!(buf, views[view], "view at t{ask}");
        }
        let e = u.resolve(&AsOf::Time(2 * s)).unwrap_err().to_string();
        assert!(e.contains("oldest") && e.contains("t3"), "{e}");
        // A replayed checkpoint (same seq) changes nothing.
        let before = u.list();
        u.checkpoint(before[3].seq, 0, 14 * s, "t14").unwrap();
        assert_eq!(u.list(), before);
    }
}
