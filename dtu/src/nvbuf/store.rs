//! The byte store under the nvbuf: the [`NvStore`] trait, the real
//! memory-mapped file ([`MmapStore`]) and an in-memory store with a separate
//! durable copy ([`MemStore`]) that tests and the deterministic simulator use to
//! model what survives a crash (lost unflushed pages, torn sectors, bit rot).
//! The format, ring and recovery code only ever sees the trait.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use memmap2::Mmap;

use super::error::NvbufError;
use super::format::{Superblock, RING_OFFSET, SB_SLOT_LEN};

/// Page size used to round flush ranges, like msync does.
pub const PAGE: usize = 4096;
/// Unit of a torn write in [`MemStore::crash_image_torn`].
pub const SECTOR: usize = 512;

/// Random-access bytes with an explicit durability barrier.
///
/// `write` only changes the working bytes; only `flush_range` makes them
/// durable. Offsets and lengths are always in bounds when the nvbuf calls
/// these (it checks everything it reads from disk first); out-of-bounds calls
/// are caller bugs and panic.
pub trait NvStore: Send + Sync {
    /// Size in bytes.
    fn len(&self) -> usize;
    /// Whether the store has no bytes at all.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copies `buf.len()` bytes at `off` into `buf`.
    fn read(&self, off: usize, buf: &mut [u8]);
    /// Copies `data` to `off` (not yet durable).
    fn write(&mut self, off: usize, data: &[u8]);
    /// Makes every byte of `off..off+len` durable (it may flush more).
    fn flush_range(&self, off: usize, len: usize) -> std::io::Result<()>;
    /// Grows the store to `len` bytes of zeros past the old end (salvage of
    /// a truncated file). Stores that cannot grow say so.
    fn grow(&mut self, len: usize) -> std::io::Result<()> {
        let _ = len;
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "this store cannot grow",
        ))
    }
    /// A handle that flushes without borrowing the store, so that appends
    /// (which need `&mut`) go on while a flush runs. Stores that cannot offer
    /// one return `None` and are flushed through `flush_range` under a shared
    /// borrow, which makes appends wait for the flush.
    fn flusher(&self) -> Option<Arc<dyn Flusher>> {
        None
    }
}

/// Flushes ranges of a store independently of access to its bytes.
pub trait Flusher: Send + Sync {
    /// Same contract as [`NvStore::flush_range`].
    fn flush_range(&self, off: usize, len: usize) -> std::io::Result<()>;
}

impl<S: NvStore + ?Sized> NvStore for Box<S> {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn read(&self, off: usize, buf: &mut [u8]) {
        (**self).read(off, buf)
    }
    fn write(&mut self, off: usize, data: &[u8]) {
        (**self).write(off, data)
    }
    fn flush_range(&self, off: usize, len: usize) -> std::io::Result<()> {
        (**self).flush_range(off, len)
    }
    fn grow(&mut self, len: usize) -> std::io::Result<()> {
        (**self).grow(len)
    }
    fn flusher(&self) -> Option<Arc<dyn Flusher>> {
        (**self).flusher()
    }
}

/// The nvbuf file, mapped shared for reading and written with positional
/// writes, opened with an exclusive advisory lock held for the life of the
/// store.
///
/// Why records do not go in through the map: on ext4, a page dirtied
/// through a shared mapping goes through `page_mkwrite` on its first write
/// after each writeback, which dirties the inode in the journal, so every
/// msync (or fdatasync) of such a page waits for a journal commit: 3.4 ms
/// per 4 KiB record against 0.2 ms for `pwrite` + `fdatasync` of the same
/// preallocated bytes, measured on this project's machines. The page cache
/// is shared, so the map still sees every byte written.
pub struct MmapStore {
    map: Mmap,
    /// The same open file, shared with the flusher, so that a flush needs
    /// no borrow of the store and appends continue meanwhile.
    file: Arc<StoreFile>,
    path: PathBuf,
}

/// The file under an [`MmapStore`], and the first write error it met: a
/// failed write is reported by the next flush (and every one after it), so
/// no record whose bytes may be missing is ever reported durable.
struct StoreFile {
    // Holds the exclusive lock; closing it releases the lock.
    file: File,
    write_error: Mutex<Option<String>>,
}

fn io_err<'a>(
    path: &'a Path,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> NvbufError + 'a {
    move |source| NvbufError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

impl MmapStore {
    fn open_locked(path: &Path, create: bool) -> Result<File, NvbufError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            // The host's recent writes (sealed payloads, plain headers):
            // owner only, like the keys.
            .mode(0o600)
            .open(path)
            .map_err(io_err(path, "open"))?;
        // std's advisory lock (flock on Unix, Rust 1.89+): a second DTU, or a
        // second Nvbuf in this process, on the same file is refused.
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(TryLockError::WouldBlock) => Err(NvbufError::Locked {
                path: path.to_path_buf(),
            }),
            Err(TryLockError::Error(e)) => Err(io_err(path, "lock")(e)),
        }
    }

    fn map(file: File, path: &Path) -> Result<MmapStore, NvbufError> {
        // SAFETY: `Mmap::map` is unsafe because the mapped bytes can change
        // or vanish if another party writes or truncates the file while it
        // is mapped. We hold an exclusive lock on the file for the life of
        // the map (every DTU takes it, so no other DTU can map it), we never
        // resize it, and our own writes (`write_at` on the same file) only
        // happen under `&mut self`, while no borrow of the map is alive:
        // `read` copies out and no references escape. The lock is advisory:
        // a process that ignores it and truncates the file would make us
        // fault, which is the inherent limit of mapping a file. Contents are
        // untrusted anyway: recovery validates every byte it reads.
        let map = unsafe { Mmap::map(&file) }.map_err(io_err(path, "mmap"))?;
        Ok(MmapStore {
            map,
            file: Arc::new(StoreFile {
                file,
                write_error: Mutex::new(None),
            }),
            path: path.to_path_buf(),
        })
    }

    /// Opens an existing nvbuf file exclusively and maps it.
    pub fn open(path: &Path) -> Result<MmapStore, NvbufError> {
        let file = Self::open_locked(path, false)?;
        Self::map(file, path)
    }

    /// Creates (or, with `overwrite`, replaces) the file at `path`, fully
    /// preallocated with zeros and synced, locks it exclusively and maps it.
    /// A non-empty existing file is refused unless `overwrite` is set.
    pub fn create(path: &Path, size: u64, overwrite: bool) -> Result<MmapStore, NvbufError> {
        let mut file = Self::open_locked(path, true)?;
        let existing = file.metadata().map_err(io_err(path, "stat"))?.len();
        if existing > 0 && !overwrite {
            return Err(NvbufError::Exists {
                path: path.to_path_buf(),
                what: describe_existing(&mut file, existing),
            });
        }
        file.set_len(0).map_err(io_err(path, "truncate"))?;
        // Real blocks, not a sparse file: a later page fault must never need
        // to allocate (ENOSPC on an mmap write is a SIGBUS), and the zeros make
        // sure no stale bytes of a previous file can look like records.
        let zeros = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            file.write_all(&zeros[..n])
                .map_err(io_err(path, "preallocate"))?;
            left -= n as u64;
        }
        file.sync_all().map_err(io_err(path, "sync"))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Make the new directory entry durable too; best effort because
            // some platforms cannot open directories for syncing.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Self::map(file, path)
    }

    /// The file this store maps.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn describe_existing(file: &mut File, len: u64) -> String {
    let mut head = vec![0u8; RING_OFFSET.min(len as usize)];
    if file.read_exact(&mut head).is_ok() {
        for slot in 0..2 {
            let start = slot * SB_SLOT_LEN;
            if let Some(b) = head.get(start..start + SB_SLOT_LEN) {
                if let Ok(sb) = Superblock::decode(b) {
                    return format!(
                        "it already holds an nvbuf for volume {}",
                        hex::encode(sb.volume_id)
                    );
                }
            }
        }
    }
    format!("the file exists and is not empty ({len} bytes)")
}

impl NvStore for MmapStore {
    fn len(&self) -> usize {
        self.map.len()
    }
    fn read(&self, off: usize, buf: &mut [u8]) {
        buf.copy_from_slice(&self.map[off..off + buf.len()]);
    }
    fn write(&mut self, off: usize, data: &[u8]) {
        assert!(
            off + data.len() <= self.map.len(),
            "nvbuf write out of bounds"
        );
        if let Err(e) = self.file.file.write_all_at(data, off as u64) {
            let mut first = lock(&self.file.write_error);
            if first.is_none() {
                *first = Some(format!(
                    "writing {} bytes at offset {off} of {}: {e}",
                    data.len(),
                    self.path.display()
                ));
            }
        }
    }
    fn flush_range(&self, off: usize, len: usize) -> std::io::Result<()> {
        self.file.flush_range(off, len)
    }
    fn grow(&mut self, len: usize) -> std::io::Result<()> {
        if len <= self.map.len() {
            return Ok(());
        }
        self.file.file.set_len(len as u64)?;
        self.file.file.sync_all()?;
        // SAFETY: as in `MmapStore::map`: we hold the file's exclusive lock,
        // `&mut self` means no borrow of the old map is alive, and the file
        // was just grown to the new length, never shrunk.
        self.map = unsafe { Mmap::map(&self.file.file) }?;
        Ok(())
    }
    fn flusher(&self) -> Option<Arc<dyn Flusher>> {
        Some(self.file.clone())
    }
}

impl Flusher for StoreFile {
    /// fdatasync of the whole file: it covers the range (and any other
    /// record written meanwhile, which group commit wants anyway).
    fn flush_range(&self, _off: usize, _len: usize) -> std::io::Result<()> {
        if let Some(e) = lock(&self.write_error).as_ref() {
            return Err(std::io::Error::other(format!(
                "an earlier write to the nvbuf failed: {e}"
            )));
        }
        self.file.sync_data()
    }
}

/// An in-memory store: a working copy that `write` changes and a durable copy
/// that only `flush_range` updates (whole pages, like msync). Cheap to create,
/// so tests and the simulator can take crash images at any moment.
pub struct MemStore {
    inner: Arc<MemInner>,
    len: usize,
}

struct MemInner {
    work: Mutex<Vec<u8>>,
    durable: Mutex<Vec<u8>>,
    fail_flushes: AtomicBool,
    flushes: AtomicU64,
}

impl MemStore {
    /// A zeroed store of `len` bytes (both copies zero).
    pub fn new(len: usize) -> MemStore {
        MemStore::from_image(vec![0; len])
    }

    /// A store whose working and durable copies are `image`, e.g. a crash
    /// image to recover from.
    pub fn from_image(image: Vec<u8>) -> MemStore {
        MemStore {
            len: image.len(),
            inner: Arc::new(MemInner {
                durable: Mutex::new(image.clone()),
                work: Mutex::new(image),
                fail_flushes: AtomicBool::new(false),
                flushes: AtomicU64::new(0),
            }),
        }
    }

    /// What survives a crash that loses every unflushed page.
    pub fn crash_image(&self) -> Vec<u8> {
        lock(&self.inner.durable).clone()
    }

    /// What may survive a crash when the kernel had started writing back some
    /// unflushed data: the durable copy with a pseudo-random half of the
    /// 512-byte sectors that differ from the working copy taken from the
    /// working copy (so records can be torn anywhere, including inside a page
    /// and out of order). Deterministic for a given `seed`.
    pub fn crash_image_torn(&self, seed: u64) -> Vec<u8> {
        let work = lock(&self.inner.work);
        let mut img = lock(&self.inner.durable).clone();
        let mut rng = SplitMix(seed);
        for (d, w) in img.chunks_mut(SECTOR).zip(work.chunks(SECTOR)) {
            if d != w && rng.next() & 1 == 1 {
                d.copy_from_slice(w);
            }
        }
        img
    }

    /// A copy of the working bytes (what a reader of the live map sees, and
    /// what survives a crash of the process alone).
    pub fn working_image(&self) -> Vec<u8> {
        lock(&self.inner.work).clone()
    }

    /// When set, every flush fails with an I/O error (fault injection).
    pub fn set_fail_flushes(&self, fail: bool) {
        self.inner.fail_flushes.store(fail, Ordering::SeqCst);
    }

    /// Number of successful flushes so far.
    pub fn flush_calls(&self) -> u64 {
        self.inner.flushes.load(Ordering::Relaxed)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl NvStore for MemStore {
    fn len(&self) -> usize {
        self.len
    }
    fn read(&self, off: usize, buf: &mut [u8]) {
        buf.copy_from_slice(&lock(&self.inner.work)[off..off + buf.len()]);
    }
    fn write(&mut self, off: usize, data: &[u8]) {
        lock(&self.inner.work)[off..off + data.len()].copy_from_slice(data);
    }
    fn flush_range(&self, off: usize, len: usize) -> std::io::Result<()> {
        self.inner.flush_range(off, len)
    }
    fn grow(&mut self, len: usize) -> std::io::Result<()> {
        if len > self.len {
            lock(&self.inner.work).resize(len, 0);
            lock(&self.inner.durable).resize(len, 0);
            self.len = len;
        }
        Ok(())
    }
    fn flusher(&self) -> Option<Arc<dyn Flusher>> {
        Some(self.inner.clone())
    }
}

impl Flusher for MemInner {
    fn flush_range(&self, off: usize, len: usize) -> std::io::Result<()> {
        if self.fail_flushes.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("injected flush failure"));
        }
        let work = lock(&self.work);
        let start = off / PAGE * PAGE;
        let end = (off + len)
            .div_ceil(PAGE)
            .saturating_mul(PAGE)
            .min(work.len());
        if start < end {
            lock(&self.durable)[start..end].copy_from_slice(&work[start..end]);
        }
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Small deterministic generator so the crash helpers need no rng argument.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memstore_only_flushed_pages_survive() {
        let mut s = MemStore::new(4 * PAGE);
        s.write(10, b"abc");
        s.write(PAGE + 5, b"xyz");
        s.flush_range(11, 1).unwrap();
        let img = s.crash_image();
        assert_eq!(&img[10..13], b"abc");
        assert_eq!(&img[PAGE + 5..PAGE + 8], &[0, 0, 0]);
        let torn: Vec<_> = (0..64).map(|seed| s.crash_image_torn(seed)).collect();
        assert!(torn.iter().any(|i| &i[PAGE + 5..PAGE + 8] == b"xyz"));
        assert!(torn.iter().any(|i| i[PAGE + 5..PAGE + 8] == [0, 0, 0]));
        s.set_fail_flushes(true);
        assert!(s.flush_range(0, 1).is_err());
    }
}
