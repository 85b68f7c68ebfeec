//! The undo journal: per-era segments of the old contents of the replica's
//! blocks, saved before their first overwrite (or trim) since the
//! checkpoint that began the era. It owns the directory of segment files,
//! their in-RAM indexes, the as-of read, the rollback plan, retention and
//! recovery after a crash.
//!
//! An era begins at a checkpoint ([`Journal::begin_era`]). A block saved in
//! era E holds its contents at E's checkpoint (it was not written since),
//! so the volume as it was at checkpoint E is the current replica overlaid,
//! block by block, with the oldest copy among eras E, E+1, … — the
//! dm-snapshot copy-on-write store, one per dm-era era. Blocks that read as
//! zeros are saved as tombstones without data. Before the first checkpoint
//! nothing is saved.
//!
//! One journal has one writer (the remote's applier) and `&self` readers.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, FileExt, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use dtu_proto::Seq;

use super::error::UndoError;
use super::index::{Covered, EraIndex, Ext};
use super::segment::{
    self, Geometry, RecordHeader, SegmentHeader, HEADER_LEN, KIND_DATA, KIND_ZERO, MAX_RECORD_DATA,
    RECORD_HEADER,
};
use crate::replica::Replica;

/// Names an undo era: 1 for the first, one more for each later one.
pub type EraId = u64;

/// Retention limits; `None` is no limit. The newest era is never dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Drop the oldest eras while the segments hold more bytes than this
    /// (the hard limit).
    pub max_bytes: Option<u64>,
    /// Above this many bytes [`Journal::over_warning`] answers true (for
    /// status and metrics); nothing is dropped.
    pub warn_bytes: Option<u64>,
    /// Drop an era once its checkpoint is older than this.
    pub max_age: Option<Duration>,
    /// Keep at most this many eras (checkpoints), e.g. 3 generations.
    pub max_eras: Option<usize>,
}

/// One step of a rollback, in volume order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollbackStep {
    Write { off: u64, data: Vec<u8> },
    Zero { off: u64, len: u64 },
}

/// An era dropped by retention or after a rollback; its checkpoint must go too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DroppedEra {
    pub era: EraId,
    pub begin_seq: Seq,
    pub time_us: u64,
}

/// What one era holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EraStats {
    pub era: EraId,
    pub begin_seq: Seq,
    pub time_us: u64,
    /// Bytes of the segment file on disk (headers included).
    pub disk_bytes: u64,
    /// Blocks saved with their old data, and as tombstones.
    pub data_blocks: u64,
    pub zero_blocks: u64,
    pub extents: usize,
    /// RAM of the era's index (an upper bound, see [`super::INDEX_BYTES_PER_EXTENT`]).
    pub index_bytes: u64,
}

/// What the journal holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stats {
    pub eras: Vec<EraStats>,
    pub disk_bytes: u64,
    pub index_bytes: u64,
}

/// A torn last write found and cut at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub era: EraId,
    pub path: PathBuf,
    /// Where the valid records end (the file was cut there).
    pub offset: u64,
    /// Bytes cut off.
    pub cut_bytes: u64,
    pub what: String,
}

/// What [`Journal::open`] found and did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OpenReport {
    pub eras: usize,
    pub records: usize,
    pub torn: Vec<TornTail>,
    /// Half-created segments (`*.tmp`) removed.
    pub removed_temp: Vec<PathBuf>,
}

#[derive(Debug)]
struct Era {
    id: EraId,
    begin_seq: Seq,
    time_us: u64,
    path: PathBuf,
    /// Open for the newest era only (it takes the appends); older eras'
    /// segments are opened for the length of a read, so a journal of
    /// thousands of eras holds one descriptor.
    file: Option<File>,
    /// Where the next record goes: the end of the valid records.
    end: u64,
    index: EraIndex,
}

/// The undo journal of one volume, in one directory.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    geo: Geometry,
    /// Oldest first.
    eras: VecDeque<Era>,
    next_id: EraId,
    limits: Limits,
    /// The newest segment has records not yet synced.
    dirty: bool,
}

const MIN_BLOCK: u64 = 512;
const MAX_BLOCK: u64 = 1 << 20;
const MAX_VOLUME: u64 = 1 << 62;

fn seg_name(id: EraId) -> String {
    format!("era-{id:016x}.undo")
}

fn parse_name(name: &str) -> Option<EraId> {
    let hex = name.strip_prefix("era-")?.strip_suffix(".undo")?;
    if hex.len() != 16 {
        return None;
    }
    // Ids stay below 2^63 so that the next one never overflows.
    u64::from_str_radix(hex, 16).ok().filter(|id| *id < 1 << 63)
}

fn is_zero(b: &[u8]) -> bool {
    // OR-folding fixed chunks vectorises; `all` with its early exit does not.
    let mut chunks = b.chunks_exact(64);
    chunks.all(|c| c.iter().fold(0, |a, &x| a | x) == 0)
        && chunks.remainder().iter().all(|&x| x == 0)
}

/// The runs of whole blocks in `g0..g1` that lie in holes of the replica
/// (read as zeros without being read), sorted.
fn hole_blocks(
    replica: &dyn Replica,
    geo: &Geometry,
    g0: u64,
    g1: u64,
) -> Result<Vec<(u64, u64)>, UndoError> {
    let bs = geo.block_size;
    let spans = replica
        .spans(g0 * bs, geo.bytes_of(g0, g1 - g0))
        .map_err(|source| UndoError::Replica {
            what: "cannot map the blocks to save",
            source,
        })?;
    let mut out: Vec<(u64, u64)> = Vec::new();
    for s in spans.iter().filter(|s| s.hole) {
        let end = s.offset.saturating_add(s.len);
        let hs = s.offset.div_ceil(bs);
        // A hole to the end of the volume covers its short last block too.
        let he = if end >= geo.volume_size {
            geo.blocks
        } else {
            end / bs
        };
        let (hs, he) = (hs.max(g0), he.min(g1));
        if hs < he {
            match out.last_mut() {
                Some(last) if last.1 >= hs => last.1 = last.1.max(he),
                _ => out.push((hs, he)),
            }
        }
    }
    Ok(out)
}

impl Journal {
    /// Opens (creating the directory if needed) the journal in `dir` for a
    /// volume of `volume_size` bytes saved in blocks of `block_size` bytes
    /// (a power of two, 512 B to 1 MiB). Every segment is read and every
    /// record's checksum verified; a torn last record is cut off and
    /// reported, damage before it is an error.
    pub fn open(
        dir: &Path,
        block_size: u64,
        volume_size: u64,
    ) -> Result<(Journal, OpenReport), UndoError> {
        if !block_size.is_power_of_two() || !(MIN_BLOCK..=MAX_BLOCK).contains(&block_size) {
            return Err(UndoError::BlockSize { block_size });
        }
        if volume_size == 0 || volume_size > MAX_VOLUME {
            return Err(UndoError::VolumeSize { size: volume_size });
        }
        let geo = Geometry {
            block_size,
            volume_size,
            blocks: volume_size.div_ceil(block_size),
        };
        let dir_err = |what| {
            let path = dir.to_path_buf();
            move |source| UndoError::Io { path, what, source }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(dir_err("cannot create the directory"))?;
        let mut report = OpenReport::default();
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(dir_err("cannot list the directory"))? {
            let entry = entry.map_err(dir_err("cannot list the directory"))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(id) = parse_name(name) {
                ids.push(id);
            } else if name.strip_suffix(".tmp").and_then(parse_name).is_some() {
                let p = entry.path();
                std::fs::remove_file(&p).map_err(|source| UndoError::Io {
                    path: p.clone(),
                    what: "cannot remove a half-created segment",
                    source,
                })?;
                report.removed_temp.push(p);
            }
        }
        ids.sort_unstable();
        let mut journal = Journal {
            dir: dir.to_path_buf(),
            geo,
            eras: VecDeque::with_capacity(ids.len()),
            next_id: 1,
            limits: Limits::default(),
            dirty: false,
        };
        for id in ids {
            let era = journal.load_era(id, &mut report)?;
            if let Some(prev) = journal.eras.back() {
                if era.begin_seq <= prev.begin_seq || era.time_us < prev.time_us {
                    return Err(UndoError::EraOrder {
                        dir: dir.to_path_buf(),
                        era: era.id,
                        seq: era.begin_seq,
                        prev_era: prev.id,
                        prev_seq: prev.begin_seq,
                    });
                }
            }
            journal.next_id = id + 1;
            if let Some(prev) = journal.eras.back_mut() {
                prev.file = None;
            }
            journal.eras.push_back(era);
        }
        if !report.removed_temp.is_empty() {
            super::sync_dir(dir).map_err(dir_err("cannot sync the directory"))?;
        }
        report.eras = journal.eras.len();
        Ok((journal, report))
    }

    fn load_era(&self, id: EraId, report: &mut OpenReport) -> Result<Era, UndoError> {
        let path = self.dir.join(seg_name(id));
        let io_err = |what| {
            let path = path.clone();
            move |source| UndoError::Io { path, what, source }
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err("cannot open the segment"))?;
        let mut hb = [0u8; HEADER_LEN as usize];
        let len = file.metadata().map_err(io_err("cannot stat"))?.len();
        let n = (len.min(HEADER_LEN)) as usize;
        file.read_exact_at(&mut hb[..n], 0)
            .map_err(io_err("cannot read the header"))?;
        let h = SegmentHeader::decode(&hb[..n]).map_err(|what| UndoError::BadHeader {
            path: path.clone(),
            what,
        })?;
        let begin = h;
        if h.block_size != self.geo.block_size || h.volume_size != self.geo.volume_size {
            return Err(UndoError::WrongVolume {
                path,
                size: self.geo.volume_size,
                block: self.geo.block_size,
                found_size: h.volume_size,
                found_block: h.block_size,
            });
        }
        if h.era != id {
            return Err(UndoError::BadHeader {
                what: format!("its header names era {}, its file name era {id}", h.era),
                path,
            });
        }
        let scan = segment::scan(&file, &path, &self.geo)?;
        let mut index = EraIndex::default();
        for r in &scan.records {
            let h = r.header;
            if h.seq <= begin.begin_seq {
                return Err(UndoError::Damaged {
                    path,
                    offset: r.data_at - RECORD_HEADER as u64,
                    what: format!(
                        "a record of seq {} lies in the era that begins at seq {}",
                        h.seq, begin.begin_seq
                    ),
                });
            }
            if !index
                .gaps(h.first_block, h.first_block + u64::from(h.blocks))
                .eq(&[(h.first_block, h.first_block + u64::from(h.blocks))])
            {
                return Err(UndoError::Damaged {
                    path,
                    offset: r.data_at - RECORD_HEADER as u64,
                    what: format!(
                        "blocks {}+{} are saved twice in one era",
                        h.first_block, h.blocks
                    ),
                });
            }
            let data = if h.kind == KIND_ZERO {
                Ext::ZERO
            } else {
                r.data_at
            };
            index.insert(
                h.first_block,
                Ext {
                    data,
                    blocks: h.blocks,
                },
            );
        }
        report.records += scan.records.len();
        if let Some(t) = scan.torn {
            file.set_len(scan.end)
                .map_err(io_err("cannot cut the torn tail"))?;
            file.sync_all()
                .map_err(io_err("cannot sync the cut segment"))?;
            report.torn.push(TornTail {
                era: id,
                path: path.clone(),
                offset: t.offset,
                cut_bytes: t.file_len - t.offset,
                what: t.what,
            });
        }
        Ok(Era {
            id,
            begin_seq: h.begin_seq,
            time_us: h.time_us,
            path,
            end: scan.end,
            index,
            file: Some(file),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn block_size(&self) -> u64 {
        self.geo.block_size
    }

    pub fn volume_size(&self) -> u64 {
        self.geo.volume_size
    }

    /// The eras held, oldest first: (era, begin seq, begin time).
    pub fn eras(&self) -> Vec<(EraId, Seq, u64)> {
        self.eras
            .iter()
            .map(|e| (e.id, e.begin_seq, e.time_us))
            .collect()
    }

    /// The era writes are saved into now.
    pub fn current_era(&self) -> Option<EraId> {
        self.eras.back().map(|e| e.id)
    }

    /// Whether era `era` holds no saved block.
    pub fn is_era_empty(&self, era: EraId) -> Option<bool> {
        self.find(era).map(|i| self.eras[i].end == HEADER_LEN)
    }

    /// Begins a new era at the checkpoint at `seq` (the primary's wall time
    /// `time_us`), durably, after making the current era's records durable.
    /// Answers the new era's id (for the catalog entry). Asking again for
    /// the newest era's seq and time answers that era (a replayed
    /// checkpoint); an older seq or time is refused.
    pub fn begin_era(&mut self, seq: Seq, time_us: u64) -> Result<EraId, UndoError> {
        if let Some(newest) = self.eras.back() {
            if newest.begin_seq == seq && newest.time_us == time_us {
                return Ok(newest.id);
            }
            if seq <= newest.begin_seq || time_us < newest.time_us {
                return Err(UndoError::CheckpointOrder {
                    seq,
                    time_us,
                    newest_seq: newest.begin_seq,
                    newest_time_us: newest.time_us,
                });
            }
        }
        self.sync()?;
        let id = self.next_id;
        let header = SegmentHeader {
            block_size: self.geo.block_size,
            volume_size: self.geo.volume_size,
            era: id,
            begin_seq: seq,
            time_us,
        };
        let path = self.dir.join(seg_name(id));
        let tmp = self.dir.join(format!("{}.tmp", seg_name(id)));
        let io_err = |what, p: &Path| {
            let p = p.to_path_buf();
            move |source| UndoError::Io {
                path: p,
                what,
                source,
            }
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("cannot create a segment", &tmp))?;
        file.write_all_at(&header.encode(), 0)
            .map_err(io_err("cannot write a segment header", &tmp))?;
        file.sync_all()
            .map_err(io_err("cannot sync a new segment", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err("cannot rename a new segment", &path))?;
        super::sync_dir(&self.dir).map_err(io_err("cannot sync the directory", &self.dir))?;
        if let Some(prev) = self.eras.back_mut() {
            prev.file = None;
        }
        self.eras.push_back(Era {
            id,
            begin_seq: seq,
            time_us,
            path,
            file: Some(file),
            end: HEADER_LEN,
            index: EraIndex::default(),
        });
        self.next_id = id + 1;
        Ok(id)
    }

    fn check_range(&self, off: u64, len: u64) -> Result<(), UndoError> {
        match off.checked_add(len) {
            Some(end) if end <= self.geo.volume_size => Ok(()),
            _ => Err(UndoError::OutOfRange {
                offset: off,
                len,
                size: self.geo.volume_size,
            }),
        }
    }

    /// Blocks touched by `off..off+len` (non-empty range).
    fn block_range(&self, off: u64, len: u64) -> (u64, u64) {
        let bs = self.geo.block_size;
        (off / bs, (off + len).div_ceil(bs))
    }

    /// Saves the current contents of every block of `off..off+len` not yet
    /// saved in the current era, before the write at `seq` overwrites them;
    /// answers the bytes of old data saved (tombstones count 0). Not durable
    /// until [`Journal::sync`]. Without an era (no checkpoint yet) nothing
    /// is saved, nor for a write at or before the newest checkpoint's seq:
    /// that is a replay after a crash, and the saves of its era were made
    /// durable when the next era began. Saving it now would record the
    /// replica as the crash left it, not as it was at the checkpoint.
    pub fn save_before_write(
        &mut self,
        seq: Seq,
        off: u64,
        len: u64,
        replica: &dyn Replica,
    ) -> Result<u64, UndoError> {
        self.save(seq, off, len, replica)
    }

    /// As [`Journal::save_before_write`], before the trim at `seq`: the
    /// trimmed contents are saved too.
    pub fn save_before_trim(
        &mut self,
        seq: Seq,
        off: u64,
        len: u64,
        replica: &dyn Replica,
    ) -> Result<u64, UndoError> {
        self.save(seq, off, len, replica)
    }

    fn save(
        &mut self,
        seq: Seq,
        off: u64,
        len: u64,
        replica: &dyn Replica,
    ) -> Result<u64, UndoError> {
        self.check_range(off, len)?;
        let geo = self.geo;
        let bs = geo.block_size;
        let (lo, hi) = self.block_range(off, len);
        let Some(era) = self.eras.back_mut() else {
            return Ok(0);
        };
        if seq <= era.begin_seq {
            return Ok(0);
        }
        if len == 0 {
            return Ok(0);
        }
        let chunk_blocks = (MAX_RECORD_DATA as u64 / bs).max(1);
        let mut saved = 0;
        let mut buf = Vec::new();
        for (g0, g1) in era.index.gaps(lo, hi) {
            // Whole blocks in holes of the replica are tombstones without a read.
            let holes = hole_blocks(replica, &geo, g0, g1)?;
            let mut h = 0;
            let mut b = g0;
            while b < g1 {
                while h < holes.len() && holes[h].1 <= b {
                    h += 1;
                }
                let next_hole = holes.get(h).copied();
                if let Some((_, he)) = next_hole.filter(|(hs, _)| *hs <= b) {
                    let t = he.min(g1);
                    append(era, &mut self.dirty, KIND_ZERO, seq, b, t - b, &[])?;
                    b = t;
                    continue;
                }
                let data_end = next_hole.map_or(g1, |(hs, _)| hs.min(g1));
                let n = (data_end - b).min(chunk_blocks);
                let start = b * bs;
                let bytes = geo.bytes_of(b, n);
                buf.resize(bytes as usize, 0);
                replica
                    .read_at(start, &mut buf)
                    .map_err(|source| UndoError::Replica {
                        what: "cannot read the blocks to save",
                        source,
                    })?;
                // Split into runs of zero and non-zero blocks.
                let blk = |i: u64| {
                    let s = (i * bs) as usize;
                    let e = ((i + 1) * bs).min(bytes) as usize;
                    &buf[s..e]
                };
                let mut runs = Vec::new();
                let mut i = 0u64;
                while i < n {
                    let zero = is_zero(blk(i));
                    let mut j = i + 1;
                    while j < n && is_zero(blk(j)) == zero {
                        j += 1;
                    }
                    runs.push((i, j, zero));
                    i = j;
                }
                for (i, j, zero) in runs {
                    if zero {
                        append(era, &mut self.dirty, KIND_ZERO, seq, b + i, j - i, &[])?;
                    } else {
                        let s = (i * bs) as usize;
                        let e = (j * bs).min(bytes) as usize;
                        append(
                            era,
                            &mut self.dirty,
                            KIND_DATA,
                            seq,
                            b + i,
                            j - i,
                            &buf[s..e],
                        )?;
                        saved += (e - s) as u64;
                    }
                }
                b += n;
            }
        }
        Ok(saved)
    }

    /// Makes every saved block durable (`fdatasync` of the current
    /// segment). Call it before the replica writes the saves protect, in
    /// the same group commit.
    pub fn sync(&mut self) -> Result<(), UndoError> {
        if !self.dirty {
            return Ok(());
        }
        if let Some(era) = self.eras.back() {
            let Some(file) = &era.file else {
                // Appends open the file and keep it: nothing to sync.
                self.dirty = false;
                return Ok(());
            };
            file.sync_data().map_err(|source| UndoError::Io {
                path: era.path.clone(),
                what: "cannot sync the segment",
                source,
            })?;
        }
        self.dirty = false;
        Ok(())
    }

    fn find(&self, era: EraId) -> Option<usize> {
        let (a, b) = self.eras.as_slices();
        a.binary_search_by_key(&era, |e| e.id).ok().or_else(|| {
            b.binary_search_by_key(&era, |e| e.id)
                .ok()
                .map(|i| i + a.len())
        })
    }

    fn no_such_era(&self, era: EraId) -> UndoError {
        let held = match (self.eras.front(), self.eras.back()) {
            (Some(a), Some(b)) => format!("eras {} to {}", a.id, b.id),
            _ => "none".to_string(),
        };
        UndoError::NoSuchEra { era, held }
    }

    /// For blocks `lo..hi`, the oldest copy of each block saved in era `era`
    /// or later, in block order.
    fn oldest_copies(&self, era: EraId, lo: u64, hi: u64) -> Result<Vec<OldCopy>, UndoError> {
        let first = self.find(era).ok_or_else(|| self.no_such_era(era))?;
        let mut covered = Covered::default();
        let mut out = Vec::new();
        for pos in first..self.eras.len() {
            let e = &self.eras[pos];
            let exts: Vec<(u64, Ext)> = e.index.overlapping(lo, hi).collect();
            let runs: Vec<(u64, u64)> = exts
                .iter()
                .map(|(s, x)| ((*s).max(lo), (s + u64::from(x.blocks)).min(hi)))
                .collect();
            let mut k = 0;
            covered.take_new(&runs, |s, t| {
                // Runs come in order: find the extent holding s.
                while k + 1 < exts.len() && exts[k].0 + u64::from(exts[k].1.blocks) <= s {
                    k += 1;
                }
                out.push(OldCopy {
                    start: s,
                    end: t,
                    pos,
                    ext_start: exts[k].0,
                    ext: exts[k].1,
                });
            });
        }
        out.sort_unstable_by_key(|p| p.start);
        Ok(out)
    }

    /// Fills `buf` with the volume's bytes at `off` as they were at the
    /// checkpoint that began era `era`: the replica's current bytes
    /// overlaid with the oldest copy of each block saved in that era or later.
    pub fn read_as_of(
        &self,
        era: EraId,
        off: u64,
        buf: &mut [u8],
        replica: &dyn Replica,
    ) -> Result<(), UndoError> {
        let len = buf.len() as u64;
        self.check_range(off, len)?;
        if self.find(era).is_none() {
            return Err(self.no_such_era(era));
        }
        replica
            .read_at(off, buf)
            .map_err(|source| UndoError::Replica {
                what: "cannot read the replica",
                source,
            })?;
        if len == 0 {
            return Ok(());
        }
        let bs = self.geo.block_size;
        let (lo, hi) = self.block_range(off, len);
        let end = off + len;
        let mut segments = Segments::new(self);
        for OldCopy {
            start: s,
            end: t,
            pos,
            ext_start,
            ext,
        } in self.oldest_copies(era, lo, hi)?
        {
            let from = (s * bs).max(off);
            let to = (t * bs).min(end);
            let dst = &mut buf[(from - off) as usize..(to - off) as usize];
            if ext.is_zero() {
                dst.fill(0);
            } else {
                segments.read(pos, ext.data + (from - ext_start * bs), dst)?;
            }
        }
        Ok(())
    }

    /// The writes that turn the current replica back into the volume as it
    /// was at the checkpoint that began era `era`, in volume order (each
    /// `Write` at most 1 MiB). Apply them all, sync the replica, then call
    /// [`Journal::drop_eras_after`]. Applying them again after a crash is
    /// harmless: the journal is unchanged until then. Holds every step's
    /// data at once: [`Journal::for_each_rollback_step`] streams them.
    pub fn rollback_plan(&self, era: EraId) -> Result<Vec<RollbackStep>, UndoError> {
        let mut steps = Vec::new();
        self.for_each_rollback_step(era, |step| {
            steps.push(step);
            Ok::<(), UndoError>(())
        })?;
        Ok(steps)
    }

    /// The steps of [`Journal::rollback_plan`], one at a time (adjacent
    /// zero runs merged), so that a rollback of many GiB holds at most one
    /// step's data (1 MiB) in memory. Stops at the first error of `f`.
    pub fn for_each_rollback_step<E: From<UndoError>>(
        &self,
        era: EraId,
        mut f: impl FnMut(RollbackStep) -> Result<(), E>,
    ) -> Result<(), E> {
        let bs = self.geo.block_size;
        let size = self.geo.volume_size;
        let mut segments = Segments::new(self);
        let mut zero: Option<(u64, u64)> = None;
        for OldCopy {
            start: s,
            end: t,
            pos,
            ext_start,
            ext,
        } in self.oldest_copies(era, 0, self.geo.blocks)?
        {
            let from = s * bs;
            let to = (t * bs).min(size);
            if ext.is_zero() {
                match &mut zero {
                    Some((off, len)) if *off + *len == from => *len += to - from,
                    _ => {
                        if let Some((off, len)) = zero.take() {
                            f(RollbackStep::Zero { off, len })?;
                        }
                        zero = Some((from, to - from));
                    }
                }
            } else {
                if let Some((off, len)) = zero.take() {
                    f(RollbackStep::Zero { off, len })?;
                }
                let mut data = vec![0u8; (to - from) as usize];
                segments.read(pos, ext.data + (from - ext_start * bs), &mut data)?;
                f(RollbackStep::Write { off: from, data })?;
            }
        }
        if let Some((off, len)) = zero {
            f(RollbackStep::Zero { off, len })?;
        }
        Ok(())
    }

    /// After a rollback to era `era`'s checkpoint is applied and synced:
    /// drops every later era, durably, newest first, and answers them (their
    /// checkpoints must leave the catalog: `Catalog::drop_after`). Era `era`
    /// stays the current era: its copies still hold the contents at its
    /// checkpoint, which the replica now equals again.
    pub fn drop_eras_after(&mut self, era: EraId) -> Result<Vec<DroppedEra>, UndoError> {
        let pos = self.find(era).ok_or_else(|| self.no_such_era(era))?;
        let mut dropped = Vec::new();
        while self.eras.len() > pos + 1 {
            let Some(e) = self.eras.back() else { break };
            remove_segment(e)?;
            dropped.push(dropped_of(e));
            self.eras.pop_back();
            // The removed segment's unsynced records no longer matter.
            self.dirty = false;
        }
        if !dropped.is_empty() {
            self.sync_dir()?;
        }
        Ok(dropped)
    }

    /// Drops the oldest era, durably, unless it is the only one.
    pub fn drop_oldest(&mut self) -> Result<Option<DroppedEra>, UndoError> {
        if self.eras.len() <= 1 {
            return Ok(None);
        }
        let Some(e) = self.eras.front() else {
            return Ok(None);
        };
        remove_segment(e)?;
        let d = dropped_of(e);
        self.eras.pop_front();
        self.sync_dir()?;
        Ok(Some(d))
    }

    /// Drops era `era` wherever it is, durably. Only for eras that hold
    /// nothing, or the oldest: dropping a non-empty era with older eras
    /// would lose copies their views need ([`super::reconcile`] checks).
    pub(crate) fn drop_era(&mut self, era: EraId) -> Result<DroppedEra, UndoError> {
        let pos = self.find(era).ok_or_else(|| self.no_such_era(era))?;
        let e = &self.eras[pos];
        remove_segment(e)?;
        let d = dropped_of(e);
        if pos + 1 == self.eras.len() {
            self.dirty = false;
        }
        self.eras.remove(pos);
        self.sync_dir()?;
        Ok(d)
    }

    fn sync_dir(&self) -> Result<(), UndoError> {
        super::sync_dir(&self.dir).map_err(|source| UndoError::Io {
            path: self.dir.clone(),
            what: "cannot sync the directory",
            source,
        })
    }

    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Applies the limits at wall time `now_us` (µs since the Unix epoch):
    /// drops the oldest eras first while there are more than `max_eras`,
    /// the segments hold more than `max_bytes`, or the oldest checkpoint is
    /// older than `max_age`; never the newest era. Answers what went, oldest
    /// first: drop their checkpoints from the catalog (`Catalog::drop_era`).
    pub fn retain(&mut self, now_us: u64) -> Result<Vec<DroppedEra>, UndoError> {
        let mut dropped = Vec::new();
        let mut total = self.disk_bytes();
        while self.eras.len() > 1 {
            let Some(oldest) = self.eras.front() else {
                break;
            };
            let l = self.limits;
            let over_count = l.max_eras.is_some_and(|m| self.eras.len() > m.max(1));
            let over_bytes = l.max_bytes.is_some_and(|m| total > m);
            let over_age = l.max_age.is_some_and(|a| {
                now_us.saturating_sub(oldest.time_us)
                    > u64::try_from(a.as_micros()).unwrap_or(u64::MAX)
            });
            if !(over_count || over_bytes || over_age) {
                break;
            }
            remove_segment(oldest)?;
            total -= oldest.end;
            dropped.push(dropped_of(oldest));
            self.eras.pop_front();
        }
        if !dropped.is_empty() {
            self.sync_dir()?;
        }
        Ok(dropped)
    }

    /// Whether the segments hold more than [`Limits::warn_bytes`].
    pub fn over_warning(&self) -> bool {
        self.limits
            .warn_bytes
            .is_some_and(|w| self.disk_bytes() > w)
    }

    fn disk_bytes(&self) -> u64 {
        self.eras.iter().map(|e| e.end).sum()
    }

    /// Bytes and blocks held per era, oldest first, and in all.
    pub fn stats(&self) -> Stats {
        let eras: Vec<EraStats> = self
            .eras
            .iter()
            .map(|e| EraStats {
                era: e.id,
                begin_seq: e.begin_seq,
                time_us: e.time_us,
                disk_bytes: e.end,
                data_blocks: e.index.data_blocks(),
                zero_blocks: e.index.zero_blocks(),
                extents: e.index.extents(),
                index_bytes: e.index.index_bytes(),
            })
            .collect();
        Stats {
            disk_bytes: eras.iter().map(|e| e.disk_bytes).sum(),
            index_bytes: eras.iter().map(|e| e.index_bytes).sum(),
            eras,
        }
    }
}

/// The segment files one read uses: the newest era's open one, older
/// ones opened on first use and closed when the read is done.
struct Segments<'a> {
    journal: &'a Journal,
    opened: Vec<(usize, File)>,
}

impl<'a> Segments<'a> {
    fn new(journal: &'a Journal) -> Segments<'a> {
        Segments {
            journal,
            opened: Vec::new(),
        }
    }

    fn read(&mut self, pos: usize, at: u64, buf: &mut [u8]) -> Result<(), UndoError> {
        let Some(e) = self.journal.eras.get(pos) else {
            return Err(self.journal.no_such_era(u64::MAX));
        };
        let io = |what| {
            move |source| UndoError::Io {
                path: e.path.clone(),
                what,
                source,
            }
        };
        let file = match &e.file {
            Some(f) => f,
            None => match self.opened.iter().position(|(p, _)| *p == pos) {
                Some(i) => &self.opened[i].1,
                None => {
                    let f = File::open(&e.path).map_err(io("cannot open the segment"))?;
                    self.opened.push((pos, f));
                    &self.opened[self.opened.len() - 1].1
                }
            },
        };
        file.read_exact_at(buf, at)
            .map_err(io("cannot read saved blocks"))
    }
}

/// The oldest copy of blocks `start..end`: in the era at position `pos`,
/// inside the extent `ext` that begins at block `ext_start`.
struct OldCopy {
    start: u64,
    end: u64,
    pos: usize,
    ext_start: u64,
    ext: Ext,
}

fn dropped_of(e: &Era) -> DroppedEra {
    DroppedEra {
        era: e.id,
        begin_seq: e.begin_seq,
        time_us: e.time_us,
    }
}

fn remove_segment(e: &Era) -> Result<(), UndoError> {
    match std::fs::remove_file(&e.path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(UndoError::Io {
            path: e.path.clone(),
            what: "cannot remove the segment",
            source,
        }),
    }
}

/// Appends one record to `era` and indexes it.
fn append(
    era: &mut Era,
    dirty: &mut bool,
    kind: u8,
    seq: Seq,
    first_block: u64,
    blocks: u64,
    data: &[u8],
) -> Result<(), UndoError> {
    // Tombstones may cover more blocks than a record can name: split them.
    let mut first_block = first_block;
    let mut blocks = blocks;
    while blocks > 0 {
        let n = blocks.min(u64::from(u32::MAX)) as u32;
        let header = RecordHeader {
            kind,
            seq,
            first_block,
            blocks: n,
            data_len: data.len() as u32,
        };
        let rec = header.encode(data);
        if era.file.is_none() {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&era.path)
                .map_err(|source| UndoError::Io {
                    path: era.path.clone(),
                    what: "cannot open the segment",
                    source,
                })?;
            era.file = Some(f);
        }
        let Some(file) = &era.file else {
            return Ok(());
        };
        file.write_all_at(&rec, era.end)
            .map_err(|source| UndoError::Io {
                path: era.path.clone(),
                what: "cannot append saved blocks",
                source,
            })?;
        *dirty = true;
        let data_at = era.end + RECORD_HEADER as u64;
        era.end += rec.len() as u64;
        era.index.insert(
            first_block,
            Ext {
                data: if kind == KIND_ZERO {
                    Ext::ZERO
                } else {
                    data_at
                },
                blocks: n,
            },
        );
        first_block += u64::from(n);
        blocks -= u64::from(n);
    }
    Ok(())
}
