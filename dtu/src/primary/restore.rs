//! Instant restore of a lost local copy from the remote (US 6,598,131,
//! Exhibit B): a primary started on a new, empty disk with
//! `--restore-from-remote` treats its local copy as a cache of the replica.
//! [`Restore`] owns the restore map (one bit per 1 MiB extent not yet
//! local, persisted beside the local copy as `<local>.restore`: 128 KiB per
//! TiB of volume, in RAM and on disk) and [`RestoringDisk`] wraps the local
//! copy so that nothing reads an extent that is not there yet: host reads
//! of such extents go to the remote ([`super::Primary::read`]), and a sync
//! or verify that would read one fails instead of sending zeros. The
//! background rebuild (`run`) copies the missing extents, a few at a time,
//! and installs each only if no host write reached that extent locally
//! after its fetch began (the fetch waits for every seq submitted before,
//! so older data never lands over a newer write); otherwise it fetches the
//! extent again. A host read of an extent the rebuild is fetching waits
//! for that fetch to end rather than fetch it a second time, and a read of
//! an extent no fetch holds moves the rebuild there, so a host reading
//! through the volume runs just behind the rebuild. The map is saved after
//! the local copy is synced, so a crash can only make an extent be fetched
//! twice.

use std::collections::HashMap;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dtu_proto::generation::Decision;

use crate::replica::{Replica, ReplicaIdentity, Span};

use super::core::Core;

/// The restore map's unit: one bit per extent.
pub const EXTENT: u64 = 1 << 20;
/// Extents fetched at once: enough to keep a long line busy (4 MiB in
/// flight covers the bandwidth-delay product of 100 Mbit/s at 300 ms).
pub const PARALLEL: usize = 4;
/// The map is saved at most this often while the rebuild runs.
const SAVE_EVERY: Duration = Duration::from_secs(1);
const MAGIC: &[u8; 8] = b"DTURST01";
const HEADER: usize = 8 + 8 + 8 + 8 + 4;

/// Where the restore map of the local copy at `local` lives.
pub fn map_path(local: &Path) -> PathBuf {
    let mut p = local.as_os_str().to_owned();
    p.push(".restore");
    PathBuf::from(p)
}

struct Inner {
    /// Bit set: the extent is not local yet.
    missing: Vec<u64>,
    missing_count: u64,
    /// Extents being fetched, and whether a host write reached them
    /// locally since the fetch began.
    fetching: HashMap<u64, bool>,
    /// Where the next search for a missing extent starts.
    cursor: u64,
}

impl Inner {
    fn is_missing(&self, e: u64) -> bool {
        self.missing[(e / 64) as usize] & (1 << (e % 64)) != 0
    }
    fn clear(&mut self, e: u64) {
        self.missing[(e / 64) as usize] &= !(1 << (e % 64));
        self.missing_count -= 1;
    }
}

/// The restore map and the rebuild's figures.
pub struct Restore {
    path: PathBuf,
    size: u64,
    /// Bytes per bit: [`EXTENT`] (the simulator's volumes are smaller).
    extent: u64,
    extents: u64,
    inner: Mutex<Inner>,
    done: AtomicBool,
    started: Instant,
    /// Extents missing when this process started.
    missing_at_start: u64,
    /// Bytes the rebuild installed, and host reads served by the remote.
    restored_bytes: AtomicU64,
    on_demand_bytes: AtomicU64,
    /// What the last connect said of the remote as a source:
    /// [`SOURCE_UNKNOWN`], [`SOURCE_OK`] or [`SOURCE_REFUSED`].
    source: AtomicU8,
    /// Woken when a fetch ends (installed, refused or abandoned): host
    /// reads waiting on the rebuild's fetches look again.
    fetch_ended: tokio::sync::Notify,
}

/// Where a host read's extents stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadState {
    /// Every extent is local.
    Local,
    /// Some are not local, and the rebuild is fetching each of those.
    Fetching,
    /// Some are not local and no fetch holds them.
    Missing,
}

const SOURCE_UNKNOWN: u8 = 0;
const SOURCE_OK: u8 = 1;
const SOURCE_REFUSED: u8 = 2;

/// Whether a connect's decision leaves the remote holding this primary's
/// whole volume, so that a restore may read from it: it resumes the same
/// stream, or resyncs from a changed-block map that marks nothing. Any
/// other decision needs the local copy as a source, which a restore lacks.
pub fn source_holds_volume(decision: &Decision, map_marked: u64) -> bool {
    map_marked == 0
        && matches!(
            decision,
            Decision::Resume
                | Decision::Resync {
                    all: false,
                    checksum: false
                }
        )
}

impl Restore {
    /// A restore of everything, for a new local copy of `size` bytes.
    pub fn everything(path: PathBuf, size: u64) -> Restore {
        Self::everything_by(path, size, EXTENT)
    }

    /// The same with `extent` bytes per bit (a power of two).
    pub fn everything_by(path: PathBuf, size: u64, extent: u64) -> Restore {
        assert!(extent.is_power_of_two(), "an extent is a power of two");
        let extents = size.div_ceil(extent);
        let mut missing = vec![u64::MAX; extents.div_ceil(64) as usize];
        if !extents.is_multiple_of(64) {
            if let Some(last) = missing.last_mut() {
                *last = (1u64 << (extents % 64)) - 1;
            }
        }
        Self::with(path, size, extent, missing, extents)
    }

    fn with(path: PathBuf, size: u64, extent: u64, missing: Vec<u64>, count: u64) -> Restore {
        Restore {
            path,
            size,
            extent,
            extents: size.div_ceil(extent),
            inner: Mutex::new(Inner {
                missing,
                missing_count: count,
                fetching: HashMap::new(),
                cursor: 0,
            }),
            done: AtomicBool::new(count == 0),
            started: Instant::now(),
            missing_at_start: count,
            restored_bytes: AtomicU64::new(0),
            on_demand_bytes: AtomicU64::new(0),
            source: AtomicU8::new(SOURCE_UNKNOWN),
            fetch_ended: tokio::sync::Notify::new(),
        }
    }

    /// The restore under way at `path`, if there is one. A map that cannot
    /// be read whole restores everything again: the replica holds the
    /// volume, so fetching an extent twice costs only time.
    pub fn open(path: PathBuf, size: u64) -> io::Result<Option<Restore>> {
        Self::open_by(path, size, EXTENT)
    }

    /// The same with `extent` bytes per bit.
    pub fn open_by(path: PathBuf, size: u64, extent: u64) -> io::Result<Option<Restore>> {
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let extents = size.div_ceil(extent);
        let words = extents.div_ceil(64) as usize;
        let parsed = (|| {
            if bytes.len() != HEADER + words * 8 || &bytes[..8] != MAGIC {
                return None;
            }
            let u = |at: usize| Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?));
            if u(8)? != size || u(16)? != extent {
                return None;
            }
            let count = u(24)?;
            let crc = u32::from_le_bytes(bytes.get(32..36)?.try_into().ok()?);
            if crc32fast::hash(&bytes[HEADER..]) != crc {
                return None;
            }
            let missing: Vec<u64> = bytes[HEADER..]
                .chunks_exact(8)
                .map(|c| c.try_into().map(u64::from_le_bytes).ok())
                .collect::<Option<_>>()?;
            let ones: u64 = missing.iter().map(|w| u64::from(w.count_ones())).sum();
            (ones == count && count <= extents).then_some((missing, count))
        })();
        Ok(Some(match parsed {
            Some((missing, count)) => Self::with(path, size, extent, missing, count),
            None => {
                tracing::warn!(
                    "the restore map {} is damaged or from another volume: every extent is \
                     restored from the remote again",
                    path.display()
                );
                Self::everything_by(path, size, extent)
            }
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether every extent is local.
    pub fn done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    fn extents_of(&self, offset: u64, len: u64) -> std::ops::Range<u64> {
        let end = offset.saturating_add(len).min(self.size);
        (offset / self.extent)..end.div_ceil(self.extent)
    }

    /// Whether any of `offset..offset+len` is not local yet.
    pub fn any_missing(&self, offset: u64, len: u64) -> bool {
        if self.done() {
            return false;
        }
        let inner = self.lock();
        self.extents_of(offset, len).any(|e| inner.is_missing(e))
    }

    /// `offset..offset+len` cut where extents change between local and not
    /// yet local: `(offset, len, local)`.
    pub fn runs(&self, offset: u64, len: u64) -> Vec<(u64, u64, bool)> {
        let end = offset.saturating_add(len).min(self.size);
        let inner = self.lock();
        let mut out: Vec<(u64, u64, bool)> = Vec::new();
        let mut at = offset;
        while at < end {
            let e = at / self.extent;
            let stop = ((e + 1) * self.extent).min(end);
            let local = !inner.is_missing(e);
            match out.last_mut() {
                Some(last) if last.2 == local => last.1 += stop - at,
                _ => out.push((at, stop - at, local)),
            }
            at = stop;
        }
        out
    }

    /// Records what a connect decided (see [`source_holds_volume`]).
    pub fn set_source(&self, ok: bool) {
        let v = if ok { SOURCE_OK } else { SOURCE_REFUSED };
        self.source.store(v, Ordering::Release);
    }

    /// Whether the remote may be read from: a connect said it holds the
    /// volume. Checked after each read, whose connection was accepted
    /// before it was published.
    pub fn source_ok(&self) -> bool {
        self.source.load(Ordering::Acquire) == SOURCE_OK
    }

    /// Extents not local yet.
    pub fn missing_extents(&self) -> u64 {
        self.lock().missing_count
    }

    /// A host read of `offset..offset+len` found extents not local: the
    /// rebuild goes on from the first of them, so a host reading through
    /// the volume finds the extents ahead of it local or on their way (and
    /// waits for those, [`Restore::read_state`]) instead of fetching them
    /// a second time. Random reads only move where the rebuild's search
    /// starts.
    pub fn steer_to(&self, offset: u64, len: u64) {
        let first = self.extents_of(offset, len).start;
        self.lock().cursor = first % self.extents.max(1);
    }

    /// Where the extents of `offset..offset+len` stand.
    pub fn read_state(&self, offset: u64, len: u64) -> ReadState {
        if self.done() {
            return ReadState::Local;
        }
        let inner = self.lock();
        let mut state = ReadState::Local;
        for e in self.extents_of(offset, len) {
            if inner.is_missing(e) {
                if !inner.fetching.contains_key(&e) {
                    return ReadState::Missing;
                }
                state = ReadState::Fetching;
            }
        }
        state
    }

    /// Completes when a fetch ends; create it before [`Restore::read_state`]
    /// and `enable` it, so an end in between is not missed.
    pub fn fetch_ended(&self) -> tokio::sync::futures::Notified<'_> {
        self.fetch_ended.notified()
    }

    /// Counts a host read the remote served.
    pub fn served_from_remote(&self, bytes: u64) {
        self.on_demand_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The next missing extent that no fetch holds, registered as being
    /// fetched; `None` when every missing extent is being fetched.
    pub fn next_extent(&self) -> Option<u64> {
        let mut inner = self.lock();
        if inner.missing_count == 0 {
            return None;
        }
        // Word by word from the cursor round to it again: a 16 TiB volume
        // has 256 Ki words, and only set bits cost a lookup.
        let words = inner.missing.len();
        let start = (inner.cursor / 64) as usize;
        for i in 0..=words {
            let w = (start + i) % words;
            let mut bits = inner.missing[w];
            if i == 0 {
                bits &= u64::MAX << (inner.cursor % 64);
            }
            while bits != 0 {
                let e = w as u64 * 64 + u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                if let std::collections::hash_map::Entry::Vacant(v) = inner.fetching.entry(e) {
                    v.insert(false);
                    inner.cursor = (e + 1) % self.extents;
                    return Some(e);
                }
            }
        }
        None
    }

    /// Writes `data` (extent `e` as the remote holds it) into `disk`,
    /// unless a host write reached the extent locally since its fetch
    /// began: then nothing is written and `false` says to fetch it again.
    pub fn install(&self, e: u64, data: &[u8], disk: &dyn Replica) -> io::Result<bool> {
        let mut inner = self.lock();
        let touched = inner.fetching.remove(&e).unwrap_or(true)
            && !dtu_proto::planted::active(dtu_proto::planted::Bug::RestoreOverWrite);
        if touched || !inner.is_missing(e) {
            drop(inner);
            self.fetch_ended.notify_waiters();
            return Ok(!touched);
        }
        let written = disk.write_at(e * self.extent, data);
        if written.is_ok() {
            inner.clear(e);
        }
        drop(inner);
        self.fetch_ended.notify_waiters();
        written?;
        self.restored_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(true)
    }

    /// Where extent `e` lies: offset and length.
    pub fn extent_range(&self, e: u64) -> (u64, u32) {
        let offset = e * self.extent;
        // An extent is at most 1 MiB: the length fits a u32.
        (offset, self.extent.min(self.size - offset) as u32)
    }

    /// A fetch of extent `e` that failed: it is fetched again later.
    pub fn abandon(&self, e: u64) {
        self.lock().fetching.remove(&e);
        self.fetch_ended.notify_waiters();
    }

    /// Notes a local write to `offset..offset+len` (under the lock the
    /// caller holds while it writes).
    fn touch(inner: &mut Inner, extents: std::ops::Range<u64>) {
        for e in extents {
            if let Some(t) = inner.fetching.get_mut(&e) {
                *t = true;
            }
        }
    }

    /// Saves the map (call after the local copy is synced); once every
    /// extent is local, removes it.
    pub fn save(&self) -> io::Result<()> {
        let (missing, count) = {
            let inner = self.lock();
            (inner.missing.clone(), inner.missing_count)
        };
        if count == 0 {
            match std::fs::remove_file(&self.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            self.done.store(true, Ordering::Release);
            return sync_dir(&self.path);
        }
        let mut bytes = Vec::with_capacity(HEADER + missing.len() * 8);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&self.size.to_le_bytes());
        bytes.extend_from_slice(&self.extent.to_le_bytes());
        bytes.extend_from_slice(&count.to_le_bytes());
        let body: Vec<u8> = missing.iter().flat_map(|w| w.to_le_bytes()).collect();
        bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        bytes.extend_from_slice(&body);
        let tmp = self.path.with_extension("restore.tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_data()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        sync_dir(&self.path)
    }

    /// Saves the map for the first time (a new restore).
    pub fn create(&self) -> io::Result<()> {
        self.save()
    }

    /// The rebuild's progress for the status.
    pub fn progress(&self) -> crate::status::Progress {
        let total = self.size;
        let missing = self.lock().missing_count;
        let done_bytes = total.saturating_sub(missing.saturating_mul(self.extent).min(total));
        let elapsed = self.started.elapsed().as_secs_f64();
        let copied = self.restored_bytes.load(Ordering::Relaxed) as f64;
        let rate = if elapsed > 0.0 { copied / elapsed } else { 0.0 };
        let left = total - done_bytes;
        crate::status::Progress {
            active: !self.done(),
            done_bytes,
            total_bytes: total,
            // Bits per second, as the sync's.
            rate_bps: rate * 8.0,
            eta_s: (rate > 0.0 && left > 0).then(|| left as f64 / rate),
            elapsed_s: elapsed,
        }
    }

    /// Bytes host reads fetched from the remote on demand.
    pub fn on_demand_bytes(&self) -> u64 {
        self.on_demand_bytes.load(Ordering::Relaxed)
    }
}

fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => std::fs::File::open(d)?.sync_all(),
        _ => std::fs::File::open(".")?.sync_all(),
    }
}

fn not_local(offset: u64, len: u64) -> io::Error {
    io::Error::other(format!(
        "{offset}+{len} is not restored from the remote yet: the local copy cannot be read there \
         until the restore completes"
    ))
}

/// The local copy during a restore: writes note the extents they reach;
/// reads of extents not yet local fail rather than return zeros.
pub struct RestoringDisk {
    pub inner: Arc<dyn Replica>,
    pub restore: Arc<Restore>,
}

impl RestoringDisk {
    fn write_with(
        &self,
        offset: u64,
        len: u64,
        f: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<()> {
        if self.restore.done() {
            return f();
        }
        // Held across the write: an install of the same extent waits.
        let mut inner = self.restore.lock();
        Restore::touch(&mut inner, self.restore.extents_of(offset, len));
        f()
    }
}

impl Replica for RestoringDisk {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.write_with(offset, data.len() as u64, || {
            self.inner.write_at(offset, data)
        })
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if self.restore.any_missing(offset, buf.len() as u64) {
            return Err(not_local(offset, buf.len() as u64));
        }
        self.inner.read_at(offset, buf)
    }
    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_with(offset, len, || self.inner.trim(offset, len))
    }
    fn sync(&self) -> io::Result<()> {
        self.inner.sync()
    }
    fn prefetch(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.prefetch(offset, len)
    }
    fn identity(&self) -> ReplicaIdentity {
        self.inner.identity()
    }
    fn spans(&self, offset: u64, len: u64) -> io::Result<Vec<Span>> {
        // What is not local yet may hold anything: data, never a hole.
        if self.restore.any_missing(offset, len) {
            return Ok(vec![Span {
                offset,
                len,
                hole: false,
            }]);
        }
        self.inner.spans(offset, len)
    }
}

/// The background rebuild: fetches every missing extent from the remote
/// (waiting for the link when it is down) and installs it, until all are
/// local or the primary stops.
pub(crate) async fn run(
    core: Arc<Core>,
    restore: Arc<Restore>,
    disk: Arc<dyn Replica>,
    read_timeout: Duration,
) {
    if restore.done() {
        return;
    }
    tracing::info!(
        "restoring {} of the local copy from the remote in the background",
        crate::units::format_bytes(restore.missing_at_start * restore.extent)
    );
    let mut fetches = tokio::task::JoinSet::new();
    let mut last_save = Instant::now();
    let mut failures = 0u32;
    loop {
        if core.is_shutdown() {
            break;
        }
        while fetches.len() < PARALLEL {
            let Some(e) = restore.next_extent() else {
                break;
            };
            let (core, (offset, len)) = (core.clone(), restore.extent_range(e));
            fetches.spawn(async move {
                // Registered as fetching before this seq is taken: a host
                // write after it is seen by the install.
                let after = core.lock().sender.highest_seq();
                let r =
                    super::session::read_remote(core, offset, len, after, read_timeout, true).await;
                (e, r)
            });
        }
        let Some(joined) = fetches.join_next().await else {
            // Nothing missing is left to fetch.
            break;
        };
        let (e, fetched): (u64, Result<Bytes, super::PrimaryError>) = match joined {
            Ok(x) => x,
            Err(err) => {
                tracing::error!("a restore fetch failed: {err}");
                continue;
            }
        };
        match fetched {
            Ok(_) if !restore.source_ok() => {
                restore.abandon(e);
                tracing::error!(
                    "the restore stops: the remote does not hold this volume (see the decision \
                     in `dtu status`)"
                );
                break;
            }
            Ok(data) => {
                failures = 0;
                let (r, d) = (restore.clone(), disk.clone());
                let installed =
                    tokio::task::spawn_blocking(move || r.install(e, &data, d.as_ref())).await;
                match installed {
                    Ok(Ok(true)) => {}
                    Ok(Ok(false)) => tracing::debug!("extent {e} was written during its fetch"),
                    Ok(Err(err)) => {
                        tracing::error!(
                            "restoring extent {e} into the local copy failed: {err}; the restore \
                             stops (the host's reads of what is missing still go to the remote)"
                        );
                        restore.abandon(e);
                        break;
                    }
                    Err(err) => {
                        tracing::error!("the restore's install task failed: {err}");
                        restore.abandon(e);
                        break;
                    }
                }
            }
            Err(err) => {
                restore.abandon(e);
                failures += 1;
                if failures == 1 || failures.is_multiple_of(30) {
                    tracing::warn!("restore: extent {e} could not be fetched ({err}); retrying");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let finished = restore.lock().missing_count == 0;
        if finished || last_save.elapsed() >= SAVE_EVERY {
            last_save = Instant::now();
            let (r, d) = (restore.clone(), disk.clone());
            let saved = tokio::task::spawn_blocking(move || d.sync().and_then(|()| r.save())).await;
            if let Ok(Err(err)) | Err(err) = saved.map_err(io::Error::other) {
                tracing::error!("saving the restore map failed: {err}; the restore stops");
                break;
            }
            if finished {
                let p = restore.progress();
                tracing::info!(
                    "restore complete: {} copied from the remote in {:.1} s ({}); host reads \
                     fetched {} on demand; the local copy is whole",
                    crate::units::format_bytes(restore.restored_bytes.load(Ordering::Relaxed)),
                    p.elapsed_s,
                    crate::units::format_rate(p.rate_bps as u64),
                    crate::units::format_bytes(restore.on_demand_bytes())
                );
                break;
            }
        }
    }
    fetches.abort_all();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::MemReplica;

    #[test]
    fn the_map_saves_and_loads_and_a_damaged_one_restores_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.img.restore");
        let size = 130 * EXTENT + 5;
        let r = Restore::everything(path.clone(), size);
        assert_eq!(r.lock().missing_count, 131);
        let disk = MemReplica::new(size as usize);
        let e = r.next_extent().unwrap();
        assert!(r.install(e, &vec![7u8; EXTENT as usize], &disk).unwrap());
        r.save().unwrap();
        let back = Restore::open(path.clone(), size).unwrap().unwrap();
        assert_eq!(back.lock().missing_count, 130);
        assert!(!back.any_missing(e * EXTENT, EXTENT));
        assert!(back.any_missing(130 * EXTENT, 5));
        std::fs::write(&path, b"garbage").unwrap();
        let again = Restore::open(path, size).unwrap().unwrap();
        assert_eq!(again.lock().missing_count, 131);
    }

    #[test]
    fn a_16_tib_volume_costs_2_mib_of_map() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.restore");
        let size = 16u64 << 40;
        let r = Restore::everything(path.clone(), size);
        assert_eq!(r.lock().missing.len() * 8, 2 << 20);
        // The last extent, and a cursor that wraps.
        r.lock().cursor = r.extents - 1;
        assert_eq!(r.next_extent(), Some(r.extents - 1));
        assert_eq!(r.next_extent(), Some(0));
        r.abandon(0);
        // The last extent arrived (installing needs a disk that holds it).
        let last = r.extents - 1;
        r.abandon(last);
        r.lock().clear(last);
        r.save().unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            (2 << 20) + HEADER as u64
        );
        let back = Restore::open(path, size).unwrap().unwrap();
        assert!(!back.any_missing(size - EXTENT, EXTENT));
        assert!(back.any_missing(0, 1));
        assert_eq!(back.runs(size - 2 * EXTENT, 2 * EXTENT).len(), 2);
    }

    #[test]
    fn a_write_during_the_fetch_makes_the_install_refetch() {
        let dir = tempfile::tempdir().unwrap();
        let size = 4 * EXTENT;
        let restore = Arc::new(Restore::everything(dir.path().join("r"), size));
        let disk = RestoringDisk {
            inner: Arc::new(MemReplica::new(size as usize)),
            restore: restore.clone(),
        };
        let e = restore.next_extent().unwrap();
        // The host writes the extent while its (older) copy is on the way.
        disk.write_at(e * EXTENT + 10, &[9u8; 4]).unwrap();
        assert!(!restore
            .install(e, &vec![1u8; EXTENT as usize], disk.inner.as_ref())
            .unwrap());
        let mut b = [0u8; 4];
        assert!(
            disk.read_at(e * EXTENT + 10, &mut b).is_err(),
            "not local yet"
        );
        disk.inner.read_at(e * EXTENT + 10, &mut b).unwrap();
        assert_eq!(b, [9u8; 4], "the older copy did not land over the write");
        // Fetched again after the write: installed.
        let e2 = restore.next_extent().unwrap();
        assert_ne!(e2, e, "the cursor moves on; the extent comes round again");
        let mut data = vec![1u8; EXTENT as usize];
        data[10..14].copy_from_slice(&[9u8; 4]);
        loop {
            let x = restore.next_extent().unwrap();
            if x == e {
                assert!(restore.install(e, &data, disk.inner.as_ref()).unwrap());
                break;
            }
            restore.abandon(x);
        }
        disk.read_at(e * EXTENT + 10, &mut b).unwrap();
        assert_eq!(b, [9u8; 4]);
        assert_eq!(
            restore.runs(0, size).iter().filter(|r| r.2).count(),
            1,
            "one local run"
        );
    }
}
