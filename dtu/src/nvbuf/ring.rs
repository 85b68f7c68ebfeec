//! The live ring: [`Nvbuf`] with append, group-commit `sync_to`, release,
//! read-back, backpressure and statistics, plus create / open (which runs the
//! recovery scan). Locking: the store sits in a `RwLock` (appends and
//! superblock writes copy under the write lock; flushes and reads run under the
//! read lock), bookkeeping in a `Mutex` taken after it, and superblock updates
//! are serialised by their own mutex taken before both.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use super::error::NvbufError;
use super::format::META_LEN;
use super::format::{
    encode_wrap, max_payload, record_size, RawHeader, SbProblem, Superblock, FORMAT_VERSION,
    MIN_SIZE, REC_HEADER_LEN, REC_MAGIC, RING_OFFSET, SB_SLOT_LEN,
};
use super::recovery::{evidence, scan, Padded};
use super::store::{Flusher, MmapStore, NvStore, PAGE};
use super::{Loss, Lsn, NvbufConfig, NvbufStats, OnLoss, RecordHeader, Recovery, Seq, Wait};

/// A flusher also persists the superblock once this fraction of the ring is
/// released but not yet reusable.
const SB_LAZY_DIVISOR: u64 = 8;

/// The non-volatile buffer. `Send + Sync`; share it as `Arc<Nvbuf>`.
pub struct Nvbuf<S: NvStore = MmapStore> {
    store: RwLock<S>,
    /// Flushes without the store lock when the store offers it.
    flusher: Option<Arc<dyn Flusher>>,
    state: Mutex<State>,
    /// Appenders waiting for space.
    space_cv: Condvar,
    /// `sync_to` callers waiting for the current flusher.
    flush_cv: Condvar,
    /// Generation of the last durable superblock; held while writing one.
    sb_writer: Mutex<u64>,
    /// The owner's metadata, written with every superblock.
    meta: Mutex<[u8; META_LEN]>,
    label: PathBuf,
    volume_id: [u8; 16],
    instance: u32,
    epoch: u32,
    base_seq: Seq,
    ring_len: u64,
    file_size: u64,
    max_payload: usize,
}

struct Entry {
    hdr: RecordHeader,
    start: Lsn,
    end: Lsn,
    payload_len: u32,
    /// When it was appended; `None` for a record recovered at open.
    at: Option<Instant>,
}

#[derive(Default)]
struct State {
    head: Lsn,
    durable: Lsn,
    flushing: bool,
    index: VecDeque<Entry>,
    /// (seq, chunk_index, chunk_count) of the last appended record.
    last: Option<(Seq, u32, u32)>,
    next_seq: Seq,
    last_complete_seq: Option<Seq>,
    durable_seq: Option<Seq>,
    /// Just past the last released record, and the first unreleased seq.
    released_tail: Lsn,
    released_tail_seq: Seq,
    /// Tail recorded in the durable superblock: space before it + ring is free.
    sb_tail: Lsn,
    /// Durable frontier recorded in the durable superblock.
    sb_durable: Lsn,
    unreleased_seqs: u64,
    appended_records: u64,
    appended_bytes: u64,
    durable_records: u64,
    flushes: u64,
    flushed_records: u64,
    full_waits: u64,
    waiting: u64,
    sb_writes: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
fn rlock<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}
fn wlock<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

impl Nvbuf<MmapStore> {
    /// Creates a new nvbuf file of `cfg.size` bytes (preallocated, zeroed,
    /// exclusively locked). Refuses a non-empty existing file unless
    /// `cfg.overwrite`.
    pub fn create(path: &Path, cfg: &NvbufConfig) -> Result<Nvbuf, NvbufError> {
        let size = checked_size(cfg.size)?;
        let store = MmapStore::create(path, size, cfg.overwrite)?;
        Nvbuf::format(store, cfg, path.to_path_buf())
    }

    /// Opens an existing nvbuf for `volume_id`, recovers its records, and bumps
    /// and persists the epoch. A second open of the same file while the first
    /// is open is refused. Durable records that cannot be recovered are
    /// salvaged as [`OnLoss::Salvage`] says; see [`Nvbuf::open_with`].
    pub fn open(path: &Path, volume_id: [u8; 16]) -> Result<(Nvbuf, Recovery), NvbufError> {
        Nvbuf::open_with(path, volume_id, OnLoss::Salvage)
    }

    /// [`Nvbuf::open`], choosing what happens when recovery finds durable
    /// records damaged or the file truncated: with [`OnLoss::Refuse`] the
    /// open fails with [`NvbufError::Lost`] and the file is left as it was.
    pub fn open_with(
        path: &Path,
        volume_id: [u8; 16],
        on_loss: OnLoss,
    ) -> Result<(Nvbuf, Recovery), NvbufError> {
        let store = MmapStore::open(path)?;
        Nvbuf::recover(store, volume_id, path.to_path_buf(), on_loss)
    }

    /// Replaces an nvbuf that holds no unreleased records with a new file
    /// of another size, continuing its seqs, epoch and metadata. The new
    /// file is built beside the old one and renamed over it, so a crash
    /// leaves one or the other, never neither.
    pub fn resize_empty(self, path: &Path, size: u64) -> Result<Nvbuf, NvbufError> {
        let st = lock(&self.state);
        if !st.index.is_empty() {
            return Err(NvbufError::InvalidHeader(format!(
                "cannot resize an nvbuf holding {} unreleased records",
                st.index.len()
            )));
        }
        let cfg = NvbufConfig {
            size,
            volume_id: self.volume_id,
            first_seq: st.next_seq,
            overwrite: true,
            first_epoch: self
                .epoch
                .checked_add(1)
                .ok_or(NvbufError::EpochExhausted)?,
            on_loss: super::OnLoss::Refuse,
        };
        drop(st);
        let meta = self.meta();
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".resize");
        let tmp = PathBuf::from(tmp);
        let new = Nvbuf::create(&tmp, &cfg)?;
        new.set_meta(&meta)?;
        drop(self);
        std::fs::rename(&tmp, path).map_err(io(path, "rename the resized nvbuf into place"))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(Nvbuf {
            label: path.to_path_buf(),
            ..new
        })
    }

    /// Opens the file if it exists and is not empty, else creates it.
    pub fn open_or_create(path: &Path, cfg: &NvbufConfig) -> Result<(Nvbuf, Recovery), NvbufError> {
        let exists = std::fs::metadata(path)
            .map(|m| m.len() > 0)
            .unwrap_or(false);
        if exists {
            Nvbuf::open_with(path, cfg.volume_id, cfg.on_loss)
        } else {
            let nv = Nvbuf::create(path, cfg)?;
            let rec = nv.fresh_recovery();
            Ok((nv, rec))
        }
    }

    /// The mapped file.
    pub fn path(&self) -> &Path {
        &self.label
    }
}

fn checked_size(size: u64) -> Result<u64, NvbufError> {
    let size = size / PAGE as u64 * PAGE as u64;
    if size < MIN_SIZE {
        return Err(NvbufError::TooSmall {
            size,
            min: MIN_SIZE,
        });
    }
    Ok(size)
}

impl<S: NvStore> Nvbuf<S> {
    /// Formats `store` (e.g. a [`super::MemStore`]) as a new, empty nvbuf using
    /// all of it. Refuses a store that already holds a valid nvbuf unless
    /// `cfg.overwrite`.
    pub fn create_in(mut store: S, cfg: &NvbufConfig) -> Result<Nvbuf<S>, NvbufError> {
        let len = store.len() as u64;
        checked_size(len)?;
        if !cfg.overwrite {
            if let Some(sb) = read_slots(&store).into_iter().find_map(|s| s.ok()) {
                return Err(NvbufError::Exists {
                    path: PathBuf::from("<store>"),
                    what: format!(
                        "it already holds an nvbuf for volume {}",
                        hex::encode(sb.volume_id)
                    ),
                });
            }
        }
        let zeros = vec![0u8; 1 << 20];
        let mut off = 0usize;
        while off < store.len() {
            let n = zeros.len().min(store.len() - off);
            store.write(off, &zeros[..n]);
            off += n;
        }
        store
            .flush_range(0, store.len())
            .map_err(io("<store>", "flush"))?;
        Nvbuf::format(store, cfg, PathBuf::from("<store>"))
    }

    /// Opens an nvbuf held in `store` and recovers it, as [`Nvbuf::open`].
    pub fn open_in(store: S, volume_id: [u8; 16]) -> Result<(Nvbuf<S>, Recovery), NvbufError> {
        Nvbuf::recover(store, volume_id, PathBuf::from("<store>"), OnLoss::Salvage)
    }

    /// [`Nvbuf::open_in`] with a choice of [`OnLoss`].
    pub fn open_in_with(
        store: S,
        volume_id: [u8; 16],
        on_loss: OnLoss,
    ) -> Result<(Nvbuf<S>, Recovery), NvbufError> {
        Nvbuf::recover(store, volume_id, PathBuf::from("<store>"), on_loss)
    }

    fn format(store: S, cfg: &NvbufConfig, label: PathBuf) -> Result<Nvbuf<S>, NvbufError> {
        let file_size = store.len() as u64;
        let ring_len = file_size - RING_OFFSET as u64;
        let nv = Nvbuf {
            flusher: store.flusher(),
            store: RwLock::new(store),
            state: Mutex::new(State {
                next_seq: cfg.first_seq,
                released_tail_seq: cfg.first_seq,
                ..State::default()
            }),
            space_cv: Condvar::new(),
            flush_cv: Condvar::new(),
            sb_writer: Mutex::new(0),
            meta: Mutex::new([0; META_LEN]),
            label,
            volume_id: cfg.volume_id,
            instance: rand::random(),
            epoch: cfg.first_epoch.max(1),
            base_seq: cfg.first_seq,
            ring_len,
            file_size,
            max_payload: max_payload(ring_len),
        };
        nv.persist_superblock()?;
        Ok(nv)
    }

    fn recover(
        mut store: S,
        volume_id: [u8; 16],
        label: PathBuf,
        on_loss: OnLoss,
    ) -> Result<(Nvbuf<S>, Recovery), NvbufError> {
        let len = store.len() as u64;
        if len < RING_OFFSET as u64 {
            return Err(NvbufError::TooSmall {
                size: len,
                min: MIN_SIZE,
            });
        }
        let slots = read_slots(&store);
        if let Some(v) = slots.iter().find_map(|s| match s {
            Err(SbProblem::UnknownVersion(v)) => Some(*v),
            _ => None,
        }) {
            return Err(NvbufError::UnknownVersion {
                found: v,
                supported: FORMAT_VERSION,
            });
        }
        let sb = match slots
            .iter()
            .filter_map(|s| s.as_ref().ok())
            .max_by_key(|sb| sb.generation)
        {
            Some(sb) => *sb,
            None => {
                let describe = |s: &Result<Superblock, SbProblem>| match s {
                    Ok(_) => "valid".to_string(),
                    Err(SbProblem::NoMagic) => "no superblock magic".to_string(),
                    Err(SbProblem::BadCrc) => "checksum mismatch".to_string(),
                    Err(SbProblem::UnknownVersion(v)) => format!("unknown version {v}"),
                    Err(SbProblem::Inconsistent(w)) => format!("inconsistent {w}"),
                };
                return Err(NvbufError::NoValidSuperblock {
                    slot0: describe(&slots[0]),
                    slot1: describe(&slots[1]),
                });
            }
        };
        if sb.volume_id != volume_id {
            return Err(NvbufError::WrongVolume {
                expected: hex::encode(volume_id),
                found: hex::encode(sb.volume_id),
            });
        }
        if sb.file_size < len {
            return Err(NvbufError::SizeMismatch {
                actual: len,
                expected: sb.file_size,
            });
        }
        let view = Padded {
            store: &store,
            real_len: len as usize,
        };
        let sc = scan(&view, &sb);
        let ev = evidence(&view, &sb, sc.stop_lsn, sc.last_epoch);
        let loss = if sb.file_size > len {
            // Whatever lived past the cut is gone, and nothing says how much
            // of it was durable: treat it as lost.
            let last = sb
                .next_seq
                .checked_sub(1)
                .filter(|&l| l >= sc.first_unrecovered);
            Some(Loss {
                first_seq: sc.first_unrecovered,
                last_seq: last.max(ev.highest_seq_beyond),
                bytes: sb.file_size - len,
                cause: format!(
                    "the file was truncated from {} to {len} bytes",
                    sb.file_size
                ),
            })
        } else if ev.durable_frontier > sc.stop_lsn {
            Some(Loss {
                first_seq: sc.first_unrecovered,
                last_seq: ev.highest_seq_beyond,
                bytes: ev.durable_frontier.max(ev.end_beyond) - sc.stop_lsn,
                cause: format!(
                    "records that had been made durable are damaged ({}); {} intact records follow the damage",
                    sc.end, ev.records_beyond
                ),
            })
        } else {
            None
        };
        if let Some(loss) = &loss {
            if on_loss == OnLoss::Refuse {
                return Err(NvbufError::Lost {
                    path: label,
                    recovered: sc
                        .records
                        .last()
                        .map(|f| f.hdr.seq)
                        .map(|last| (sc.records[0].hdr.seq, last)),
                    loss: Box::new(loss.clone()),
                });
            }
            if sb.file_size > len {
                store
                    .grow(sb.file_size as usize)
                    .map_err(io(&label, "extend the truncated file"))?;
            }
        }
        let len = store.len() as u64;
        let epoch = sb
            .epoch
            .max(sc.max_epoch)
            .checked_add(1)
            .ok_or(NvbufError::EpochExhausted)?;
        let mut st = State {
            head: sc.end_lsn,
            durable: sc.end_lsn,
            next_seq: sb.tail_seq,
            released_tail: sb.tail_lsn,
            released_tail_seq: sb.tail_seq,
            sb_tail: sb.tail_lsn,
            sb_durable: sb.durable_lsn,
            durable_seq: sb.tail_seq.checked_sub(1).filter(|s| *s >= sb.base_seq),
            ..State::default()
        };
        let mut records = Vec::with_capacity(sc.records.len());
        for f in sc.records {
            let h = f.hdr;
            st.index.push_back(Entry {
                hdr: h,
                start: f.start,
                end: f.end,
                payload_len: f.payload.len() as u32,
                at: None,
            });
            if h.chunk_index + 1 == h.chunk_count {
                st.unreleased_seqs += 1;
                st.next_seq = h.seq + 1;
                st.last_complete_seq = Some(h.seq);
                st.durable_seq = Some(h.seq);
            }
            st.last = Some((h.seq, h.chunk_index, h.chunk_count));
            records.push((h, f.payload));
        }
        let ring_len = sb.ring_len;
        let nv = Nvbuf {
            flusher: store.flusher(),
            store: RwLock::new(store),
            state: Mutex::new(st),
            space_cv: Condvar::new(),
            flush_cv: Condvar::new(),
            sb_writer: Mutex::new(sb.generation),
            meta: Mutex::new(sb.meta),
            label,
            volume_id,
            instance: sb.instance,
            epoch,
            base_seq: sb.base_seq,
            ring_len,
            file_size: sb.file_size,
            max_payload: max_payload(ring_len),
        };
        // Erase the dropped tail (the chunks of an incomplete seq, any
        // intact records the scan could not reach, and up to the frontier
        // of an accepted loss), so that it is reported once, not again on
        // every later open: left in place, its records vouch for a durable
        // frontier past where the next open's log ends, and a crash before
        // the next write would read as lost writes.
        erase_log(
            &mut *wlock(&nv.store),
            ring_len,
            sc.end_lsn,
            sc.stop_lsn.max(ev.end_beyond).max(ev.durable_frontier),
        );
        // And the header slot where the log now ends.
        {
            let pos = sc.end_lsn % ring_len;
            let at = if ring_len - pos < REC_HEADER_LEN as u64 {
                0
            } else {
                pos
            };
            wlock(&nv.store).write(RING_OFFSET + at as usize, &[0u8; REC_HEADER_LEN]);
        }
        // What we just read may only be in the page cache of a process that
        // died: make it durable before anyone treats it as buffered.
        nv.flush(0, len as usize).map_err(io(&nv.label, "flush"))?;
        nv.persist_superblock()?;
        let rec = Recovery {
            first_seq: records.first().map(|r| r.0.seq),
            last_seq: records.last().map(|r| r.0.seq),
            records,
            stopped: sc.stopped,
            end: sc.end,
            dropped_incomplete: sc.dropped_incomplete,
            previous_epoch: sb.epoch,
            epoch,
            superblock_generation: sb.generation,
            scanned_bytes: sc.scanned,
            loss,
        };
        Ok((nv, rec))
    }

    fn fresh_recovery(&self) -> Recovery {
        Recovery {
            end: "new nvbuf".into(),
            previous_epoch: 0,
            epoch: self.epoch,
            ..Recovery::default()
        }
    }

    /// Epoch of this primary incarnation: bumped and persisted on every open.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The volume this nvbuf belongs to.
    pub fn volume_id(&self) -> [u8; 16] {
        self.volume_id
    }

    /// Ring capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.ring_len
    }

    /// Size of the whole file (superblocks + ring).
    pub fn file_size(&self) -> u64 {
        self.file_size
    }

    /// Largest payload one record may carry (half the ring less a header).
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Seq the next new record must carry (with chunk 0): one past the
    /// highest seq begun so far; after recovery, last complete seq + 1.
    pub fn next_seq(&self) -> Seq {
        lock(&self.state).next_seq
    }

    /// Copies one record into the ring (not yet durable). Records must follow
    /// each other: same seq and chunk index + 1, or [`Nvbuf::next_seq`] with
    /// chunk 0 (else `OutOfOrder`), carrying this nvbuf's epoch. `now` stamps
    /// the record for the status. While the ring is full, `wait` says what
    /// to do: fail at once, or block until space is released or a deadline
    /// passes (then `Full`; chunks of the seq appended before stay, and the
    /// seq continues with the chunk that failed). Only a blocking wait reads
    /// the clock. Returns the log position just past the record, to hand to
    /// [`Nvbuf::sync_to`].
    pub fn append(
        &self,
        hdr: &RecordHeader,
        payload: &[u8],
        now: Instant,
        wait: Wait,
    ) -> Result<Lsn, NvbufError> {
        if hdr.chunk_count == 0 || hdr.chunk_index >= hdr.chunk_count {
            return Err(NvbufError::InvalidHeader(format!(
                "chunk index {} of chunk count {}",
                hdr.chunk_index, hdr.chunk_count
            )));
        }
        if hdr.epoch != self.epoch {
            return Err(NvbufError::WrongEpoch {
                got: hdr.epoch,
                current: self.epoch,
            });
        }
        if payload.len() > self.max_payload {
            return Err(NvbufError::TooLarge {
                len: payload.len(),
                max: self.max_payload,
            });
        }
        let size = record_size(payload.len());
        let mut waiting = false;
        let res = loop {
            let mut store = wlock(&self.store);
            let mut st = lock(&self.state);
            if let Err(e) = check_order(&st, hdr) {
                break Err(e);
            }
            let r = self.ring_len;
            let head = st.head;
            let pos = head % r;
            let rem = r - pos;
            let start = if size <= rem { head } else { head + rem };
            let end = start + size;
            if end - st.sb_tail <= r {
                if start != head && rem >= REC_HEADER_LEN as u64 {
                    let wrap = encode_wrap(self.epoch, head, self.instance);
                    store.write(RING_OFFSET + pos as usize, &wrap);
                }
                let raw = RawHeader {
                    magic: REC_MAGIC,
                    epoch: hdr.epoch,
                    lsn: start,
                    seq: hdr.seq,
                    offset: hdr.offset,
                    length: hdr.length,
                    flags: hdr.flags,
                    chunk_index: hdr.chunk_index,
                    chunk_count: hdr.chunk_count,
                    payload_len: payload.len() as u32,
                    instance: self.instance,
                    durable_back: RawHeader::encode_durable_back(start, st.durable),
                    crc: 0,
                }
                .encode_record(payload);
                let off = RING_OFFSET + (start % r) as usize;
                store.write(off, &raw);
                store.write(off + REC_HEADER_LEN, payload);
                drop(store);
                st.head = end;
                st.index.push_back(Entry {
                    hdr: *hdr,
                    start,
                    end,
                    payload_len: payload.len() as u32,
                    at: Some(now),
                });
                if hdr.chunk_index == 0 {
                    st.next_seq = hdr.seq + 1;
                    st.unreleased_seqs += 1;
                }
                if hdr.chunk_index + 1 == hdr.chunk_count {
                    st.last_complete_seq = Some(hdr.seq);
                }
                st.last = Some((hdr.seq, hdr.chunk_index, hdr.chunk_count));
                st.appended_records += 1;
                st.appended_bytes += payload.len() as u64;
                if waiting {
                    st.waiting -= 1;
                }
                return Ok(end);
            }
            drop(store);
            if end - st.released_tail <= r && st.released_tail > st.sb_tail {
                // The space is released, just not yet recorded durably.
                drop(st);
                if let Err(e) = self.persist_superblock() {
                    break Err(e);
                }
                continue;
            }
            let full = NvbufError::Full {
                needed: size,
                used: st.head - st.released_tail,
                capacity: r,
            };
            if wait == Wait::No {
                st.full_waits += 1;
                break Err(full);
            }
            if !waiting {
                waiting = true;
                st.full_waits += 1;
                st.waiting += 1;
            }
            match wait {
                Wait::Until(d) => {
                    let clock = Instant::now();
                    if clock >= d {
                        break Err(full);
                    }
                    drop(
                        self.space_cv
                            .wait_timeout(st, d - clock)
                            .unwrap_or_else(|p| p.into_inner()),
                    );
                }
                Wait::Forever | Wait::No => {
                    drop(self.space_cv.wait(st).unwrap_or_else(|p| p.into_inner()));
                }
            }
        };
        if waiting {
            lock(&self.state).waiting -= 1;
        }
        res
    }

    /// Blocks until records are released (space may be free again) or
    /// `deadline` passes: how an appender that got `Full` with
    /// [`Wait::No`] waits. Counts as a waiting writer in the status.
    pub fn wait_for_space(&self, deadline: Instant) {
        let mut st = lock(&self.state);
        let released = (st.released_tail, st.sb_tail);
        st.waiting += 1;
        st.full_waits += 1;
        // A release that is recorded but not yet durable frees the space as
        // soon as a superblock says so: write it now instead of waiting.
        if st.released_tail > st.sb_tail {
            drop(st);
            if let Err(e) = self.persist_superblock() {
                tracing::warn!(error = %e, "nvbuf superblock update failed");
            }
            st = lock(&self.state);
        }
        while (st.released_tail, st.sb_tail) == released {
            let clock = Instant::now();
            if clock >= deadline {
                break;
            }
            st = self
                .space_cv
                .wait_timeout(st, deadline - clock)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        st.waiting -= 1;
    }

    /// Group commit: returns once every byte up to `lsn` is durable. One
    /// caller flushes everything appended so far; the others wait for it.
    pub fn sync_to(&self, lsn: Lsn) -> Result<(), NvbufError> {
        let mut st = lock(&self.state);
        if lsn > st.head {
            return Err(NvbufError::BeyondHead { lsn, head: st.head });
        }
        loop {
            if st.durable >= lsn {
                return Ok(());
            }
            if st.flushing {
                st = self.flush_cv.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            st.flushing = true;
            let from = st.durable;
            let to = st.head;
            let records = st.appended_records;
            let complete = st.last_complete_seq;
            drop(st);
            let res = self.flush_log(from, to);
            st = lock(&self.state);
            st.flushing = false;
            self.flush_cv.notify_all();
            res?;
            st.durable = st.durable.max(to);
            if complete > st.durable_seq {
                st.durable_seq = complete;
            }
            st.flushes += 1;
            st.flushed_records += records - st.durable_records;
            st.durable_records = records;
            let lazy = st.released_tail - st.sb_tail >= self.ring_len / SB_LAZY_DIVISOR;
            if lazy && st.durable >= lsn {
                drop(st);
                if let Err(e) = self.persist_superblock() {
                    // The data is durable; only space reuse is delayed, and the
                    // next appender that needs the space retries and reports.
                    tracing::warn!(error = %e, "nvbuf superblock update failed");
                }
                return Ok(());
            }
        }
    }

    fn flush_log(&self, from: Lsn, to: Lsn) -> Result<(), NvbufError> {
        let r = self.ring_len;
        let len = to - from;
        let pos = from % r;
        let res = if len >= r {
            self.flush(RING_OFFSET, r as usize)
        } else if pos + len <= r {
            self.flush(RING_OFFSET + pos as usize, len as usize)
        } else {
            self.flush(RING_OFFSET + pos as usize, (r - pos) as usize)
                .and_then(|_| self.flush(RING_OFFSET, (len - (r - pos)) as usize))
        };
        res.map_err(io(&self.label, "flush"))
    }

    /// Makes a byte range of the store durable; appends continue meanwhile when the
    /// store has a detached flusher.
    fn flush(&self, off: usize, len: usize) -> std::io::Result<()> {
        match &self.flusher {
            Some(f) => f.flush_range(off, len),
            None => rlock(&self.store).flush_range(off, len),
        }
    }

    /// Log position up to which everything is durable.
    pub fn durable_lsn(&self) -> Lsn {
        lock(&self.state).durable
    }

    /// Log position just past the last appended record.
    pub fn head_lsn(&self) -> Lsn {
        lock(&self.state).head
    }

    /// Highest seq whose every chunk is durable (what the pipeline reports as
    /// `buffered`); `None` until one is.
    pub fn durable_seq(&self) -> Option<Seq> {
        lock(&self.state).durable_seq
    }

    /// First seq not yet released.
    pub fn first_unreleased_seq(&self) -> Seq {
        lock(&self.state).released_tail_seq
    }

    /// Frees all records with seq <= `seq` (the remote's Stored ack). Only
    /// whole, fully appended seqs are freed. The space becomes reusable once a
    /// superblock with the new tail is durable, which happens lazily.
    pub fn release_through(&self, seq: Seq) {
        let mut st = lock(&self.state);
        let Some(limit) = st.last_complete_seq.map(|c| c.min(seq)) else {
            return;
        };
        let mut released = false;
        while st.index.front().is_some_and(|e| e.hdr.seq <= limit) {
            let Some(e) = st.index.pop_front() else { break };
            st.released_tail = e.end;
            if e.hdr.chunk_index + 1 == e.hdr.chunk_count {
                st.released_tail_seq = e.hdr.seq + 1;
                st.unreleased_seqs -= 1;
            }
            released = true;
        }
        let waiters = st.waiting > 0;
        drop(st);
        if released && waiters {
            self.space_cv.notify_all();
        }
    }

    /// The owner's metadata area (zeros until first set).
    pub fn meta(&self) -> [u8; META_LEN] {
        *lock(&self.meta)
    }

    /// Replaces the owner's metadata area and makes it durable (with a
    /// superblock write) before returning.
    pub fn set_meta(&self, meta: &[u8; META_LEN]) -> Result<(), NvbufError> {
        *lock(&self.meta) = *meta;
        self.persist_superblock()
    }

    /// The headers of every unreleased record, in log order (what a fold
    /// into the changed-block map must mark).
    pub fn unreleased_headers(&self) -> Vec<RecordHeader> {
        lock(&self.state).index.iter().map(|e| e.hdr).collect()
    }

    /// Releases every record and makes `seq` the next one to append, as if
    /// the seqs between had been appended and stored: the primary folded
    /// them into its changed-block map and will never send them. Durable
    /// (a superblock write) before it returns. `seq` must not go back.
    pub fn skip_to(&self, seq: Seq) -> Result<(), NvbufError> {
        {
            let mut st = lock(&self.state);
            if seq < st.next_seq {
                return Err(NvbufError::InvalidHeader(format!(
                    "cannot skip back to seq {seq}: the next is {}",
                    st.next_seq
                )));
            }
            // A seq half appended (the nvbuf filled between its chunks) is
            // dropped with the rest when the skip goes past it.
            if let Some((s, idx, count)) = st.last {
                if idx + 1 < count && seq <= s {
                    return Err(NvbufError::InvalidHeader(format!(
                        "cannot skip to seq {seq} while seq {s} is half appended"
                    )));
                }
            }
            while let Some(e) = st.index.pop_front() {
                st.released_tail = e.end;
            }
            st.released_tail = st.head;
            st.released_tail_seq = seq;
            st.next_seq = seq;
            st.unreleased_seqs = 0;
            st.last = None;
            st.last_complete_seq = seq.checked_sub(1);
        }
        self.persist_superblock()?;
        self.space_cv.notify_all();
        Ok(())
    }

    /// Records the durable frontier in the superblock if it moved since the
    /// last one: meant for idle moments, so that damage to the last records
    /// written before a pause is recognised as damage, not as a torn tail.
    /// Returns whether a superblock was written.
    pub fn checkpoint_if_behind(&self) -> Result<bool, NvbufError> {
        let behind = {
            let st = lock(&self.state);
            st.durable > st.sb_durable && !st.flushing
        };
        if behind {
            self.persist_superblock()?;
        }
        Ok(behind)
    }

    /// Writes a superblock when records were released since the last one:
    /// run now and then while the host is idle, so that the nvbuf a crash
    /// leaves lists only records the remote may not hold (a demotion after
    /// a failover resyncs what it lists).
    pub fn checkpoint_if_released(&self) -> Result<bool, NvbufError> {
        let behind = {
            let st = lock(&self.state);
            st.released_tail > st.sb_tail && !st.flushing
        };
        if behind {
            self.persist_superblock()?;
        }
        Ok(behind)
    }

    /// Makes released space reusable now by writing and flushing a superblock
    /// with the current tail (also useful before a clean shutdown).
    pub fn checkpoint(&self) -> Result<(), NvbufError> {
        self.persist_superblock()
    }

    /// Copies out the records (all chunks present, in order) of one
    /// unreleased seq. The seq is complete once `next_seq() > seq` and no
    /// append of it is in progress.
    pub fn read_seq(&self, seq: Seq) -> Result<Vec<(RecordHeader, Vec<u8>)>, NvbufError> {
        let store = rlock(&self.store);
        let picked: Vec<(RecordHeader, Lsn, u32)> = {
            let st = lock(&self.state);
            let i = st.index.partition_point(|e| e.hdr.seq < seq);
            st.index
                .range(i..)
                .take_while(|e| e.hdr.seq == seq)
                .map(|e| (e.hdr, e.start, e.payload_len))
                .collect()
        };
        if picked.is_empty() {
            return Err(NvbufError::NotFound { seq });
        }
        // Holding the read lock keeps the space from being reused meanwhile.
        Ok(picked
            .into_iter()
            .map(|(h, start, plen)| {
                let mut buf = vec![0u8; plen as usize];
                let off = RING_OFFSET + (start % self.ring_len) as usize + REC_HEADER_LEN;
                store.read(off, &mut buf);
                (h, buf)
            })
            .collect())
    }

    /// Levels and counters for the status, with ages as of `now`.
    pub fn stats(&self, now: Instant) -> NvbufStats {
        let st = lock(&self.state);
        let used = st.head - st.released_tail;
        NvbufStats {
            capacity: self.ring_len,
            used_bytes: used,
            fill_pct: used as f64 * 100.0 / self.ring_len as f64,
            reclaimable_bytes: st.released_tail - st.sb_tail,
            records: st.index.len() as u64,
            unreleased_seqs: st.unreleased_seqs,
            first_unreleased_seq: st.index.front().map(|e| e.hdr.seq),
            oldest_unreleased_age: st
                .index
                .front()
                .and_then(|e| e.at)
                .map(|at| now.saturating_duration_since(at)),
            epoch: self.epoch,
            next_seq: st.next_seq,
            durable_seq: st.durable_seq,
            head_lsn: st.head,
            durable_lsn: st.durable,
            appended_records: st.appended_records,
            appended_bytes: st.appended_bytes,
            flushes: st.flushes,
            flushed_records: st.flushed_records,
            full_waits: st.full_waits,
            waiting_appenders: st.waiting,
            superblock_writes: st.sb_writes,
        }
    }

    /// Read access to the store, e.g. to take a [`super::MemStore`] crash
    /// image. Appends wait while the guard is held.
    pub fn store(&self) -> RwLockReadGuard<'_, S> {
        rlock(&self.store)
    }

    /// Gives the store back (e.g. to reopen a MemStore in a test).
    pub fn into_store(self) -> S {
        self.store.into_inner().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the next superblock generation into the older slot and flushes
    /// it; only then is the new tail used for space accounting.
    fn persist_superblock(&self) -> Result<(), NvbufError> {
        let mut gen = lock(&self.sb_writer);
        let next = *gen + 1;
        let slot = (next % 2) as usize * SB_SLOT_LEN;
        let tail = {
            let mut store = wlock(&self.store);
            let st = lock(&self.state);
            let sb = Superblock {
                volume_id: self.volume_id,
                epoch: self.epoch,
                instance: self.instance,
                generation: next,
                file_size: self.file_size,
                ring_offset: RING_OFFSET as u64,
                ring_len: self.ring_len,
                tail_lsn: st.released_tail,
                tail_seq: st.released_tail_seq,
                head_lsn: st.head,
                next_seq: st.next_seq,
                base_seq: self.base_seq,
                durable_lsn: st.durable,
                meta: *lock(&self.meta),
            };
            store.write(slot, &sb.encode());
            (sb.tail_lsn, sb.durable_lsn)
        };
        self.flush(slot, SB_SLOT_LEN)
            .map_err(io(&self.label, "flush superblock"))?;
        *gen = next;
        let mut st = lock(&self.state);
        st.sb_tail = st.sb_tail.max(tail.0);
        st.sb_durable = st.sb_durable.max(tail.1);
        st.sb_writes += 1;
        let waiters = st.waiting > 0;
        drop(st);
        if waiters {
            self.space_cv.notify_all();
        }
        Ok(())
    }
}

fn check_order(st: &State, hdr: &RecordHeader) -> Result<(), NvbufError> {
    match st.last {
        Some((seq, idx, count)) if idx + 1 < count => {
            if hdr.seq == seq && hdr.chunk_index == idx + 1 {
                if hdr.chunk_count != count {
                    return Err(NvbufError::InvalidHeader(format!(
                        "seq {seq} chunk count changed from {count} to {}",
                        hdr.chunk_count
                    )));
                }
                Ok(())
            } else {
                Err(NvbufError::OutOfOrder {
                    expected: format!("seq {seq} chunk {}", idx + 1),
                    seq: hdr.seq,
                    chunk_index: hdr.chunk_index,
                })
            }
        }
        _ if hdr.seq == st.next_seq && hdr.chunk_index == 0 => Ok(()),
        _ => Err(NvbufError::OutOfOrder {
            expected: format!("seq {} chunk 0", st.next_seq),
            seq: hdr.seq,
            chunk_index: hdr.chunk_index,
        }),
    }
}

/// Zeroes the log between two lsns (at most one ring length).
fn erase_log<S: NvStore>(store: &mut S, ring_len: u64, from: Lsn, to: Lsn) {
    let zeros = [0u8; 64 << 10];
    let mut at = from;
    let to = to.min(from + ring_len);
    while at < to {
        let pos = at % ring_len;
        let n = (to - at).min(ring_len - pos).min(zeros.len() as u64);
        store.write(RING_OFFSET + pos as usize, &zeros[..n as usize]);
        at += n;
    }
}

fn read_slots<S: NvStore + ?Sized>(store: &S) -> [Result<Superblock, SbProblem>; 2] {
    [0, 1].map(|i| {
        let off = i * SB_SLOT_LEN;
        if store.len() < off + SB_SLOT_LEN {
            return Err(SbProblem::NoMagic);
        }
        let mut b = vec![0u8; SB_SLOT_LEN];
        store.read(off, &mut b);
        Superblock::decode(&b)
    })
}

fn io<'a>(
    label: impl AsRef<Path> + 'a,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> NvbufError + 'a {
    move |source| NvbufError::Io {
        path: label.as_ref().to_path_buf(),
        what,
        source,
    }
}
