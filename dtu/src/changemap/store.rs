//! The bytes under a changed-block map: the [`MapStore`] trait, a sparse file
//! ([`SparseFile`]: positional writes, fdatasync, holes punched for pages
//! that hold nothing) and an in-memory store ([`MemMapStore`]) built on the
//! nvbuf's [`MemStore`], so tests and the deterministic simulator take the
//! same crash images (only flushed pages, torn sectors) as for the nvbuf.
//!
//! Why not [`crate::nvbuf::NvStore`] itself: its `read` cannot fail (the
//! nvbuf reads through a map), but a pread of a map file can, and that must
//! be an error, not a panic; and the map needs two things a ring does not:
//! finding the few pages that hold data in a mostly-hole file without
//! reading it all (`SEEK_DATA`), and giving space back when a page empties
//! (`FALLOC_FL_PUNCH_HOLE`).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read};
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::nvbuf::{MemStore, NvStore};

use super::error::ChangeMapError;
use super::format::{Header, HEADER_LEN, HEADER_SLOT};

/// Random-access bytes with an explicit durability barrier.
///
/// Writes and erasures are not durable until [`MapStore::sync`] returns;
/// until then a crash may keep any mix of old and new 512-byte sectors of
/// what was written. The map serialises its own writes, so implementations
/// only need `&self` methods that are safe to call from several threads.
pub trait MapStore: Send + Sync {
    /// What to call the store in messages (its path).
    fn name(&self) -> String;
    /// Length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the store holds no bytes.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Grows the store to `len` bytes; the new bytes read as zeros (a hole
    /// where the store can).
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Fills `buf` from `off`; reading past the end is an error.
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes `data` at `off` (not yet durable).
    fn write_at(&self, off: u64, data: &[u8]) -> io::Result<()>;
    /// Makes `off..off+len` read as zeros, giving the space back where the
    /// store can (not yet durable).
    fn zero_range(&self, off: u64, len: u64) -> io::Result<()>;
    /// Makes every earlier write and erasure durable.
    fn sync(&self) -> io::Result<()>;
    /// The parts of `off..off+len` that may hold non-zero bytes, in order.
    /// The default (all of it) is always correct, only slower to scan. Only
    /// called while the map is opened, never concurrently.
    fn data_ranges(&self, off: u64, len: u64) -> io::Result<Vec<Range<u64>>> {
        Ok(std::iter::once(off..off + len).collect())
    }
}

/// A map file: created sparse with mode 0600, read and written with
/// positional I/O, made durable with fdatasync, and opened with an exclusive
/// advisory lock held for the life of the store (a second DTU on the same
/// map is refused).
pub struct SparseFile {
    // Holds the exclusive lock; closing it releases the lock.
    file: File,
    path: PathBuf,
}

fn io_err(path: &Path, what: &'static str) -> impl FnOnce(io::Error) -> ChangeMapError {
    let store = path.display().to_string();
    move |source| ChangeMapError::Io {
        store,
        what,
        source,
    }
}

impl SparseFile {
    fn open_locked(path: &Path, create: bool) -> Result<File, ChangeMapError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io_err(path, "open"))?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(TryLockError::WouldBlock) => Err(ChangeMapError::Locked {
                path: path.to_path_buf(),
            }),
            Err(TryLockError::Error(e)) => Err(io_err(path, "lock")(e)),
        }
    }

    /// Opens an existing map file exclusively.
    pub fn open(path: &Path) -> Result<SparseFile, ChangeMapError> {
        let file = Self::open_locked(path, false)?;
        Ok(SparseFile {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Creates an empty map file (or, with `overwrite`, empties an existing
    /// one) and locks it; [`super::ChangeMap::create`] then sizes it. A
    /// non-empty existing file is refused unless `overwrite` is set.
    pub fn create(path: &Path, overwrite: bool) -> Result<SparseFile, ChangeMapError> {
        let mut file = Self::open_locked(path, true)?;
        let existing = file.metadata().map_err(io_err(path, "stat"))?.len();
        if existing > 0 && !overwrite {
            return Err(ChangeMapError::Exists {
                path: path.to_path_buf(),
                what: describe_existing(&mut file, existing),
            });
        }
        file.set_len(0).map_err(io_err(path, "truncate"))?;
        file.sync_all().map_err(io_err(path, "sync"))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Make the new directory entry durable too; best effort because
            // some platforms cannot open directories for syncing.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(SparseFile {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes the file system has allocated to the file (`st_blocks` × 512):
    /// what the map really costs on disk.
    pub fn allocated_bytes(&self) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(self.file.metadata()?.blocks() * 512)
    }

    fn write_zeros(&self, off: u64, len: u64) -> io::Result<()> {
        let zeros = vec![0u8; len.min(1 << 20) as usize];
        let mut at = off;
        while at < off + len {
            let n = (off + len - at).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }
}

fn describe_existing(file: &mut File, len: u64) -> String {
    let mut head = vec![0u8; (2 * HEADER_SLOT).min(len) as usize];
    if file.read_exact(&mut head).is_ok() {
        for slot in 0..2 {
            let start = slot * HEADER_SLOT as usize;
            if let Some(b) = head.get(start..start + HEADER_LEN) {
                if let Ok(h) = Header::decode(b) {
                    return format!(
                        "it already holds a changed-block map for volume {}",
                        hex::encode(h.volume_id)
                    );
                }
            }
        }
    }
    format!("the file exists and is not empty ({len} bytes)")
}

impl MapStore for SparseFile {
    fn name(&self) -> String {
        self.path.display().to_string()
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        // Extending with set_len leaves a hole: no block is allocated.
        self.file.set_len(len)
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, off)
    }
    fn write_at(&self, off: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, off)
    }
    fn zero_range(&self, off: u64, len: u64) -> io::Result<()> {
        use rustix::fs::{fallocate, FallocateFlags};
        if len == 0 {
            return Ok(());
        }
        match fallocate(
            &self.file,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            off,
            len,
        ) {
            Ok(()) => Ok(()),
            Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => {
                // No hole punching here: write zeros, but only where there
                // is data, so erasing a large, mostly empty map stays cheap.
                for r in self.data_ranges(off, len)? {
                    self.write_zeros(r.start, r.end - r.start)?;
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn data_ranges(&self, off: u64, len: u64) -> io::Result<Vec<Range<u64>>> {
        use rustix::fs::{seek, SeekFrom};
        use rustix::io::Errno;
        let end = off + len;
        let mut out = Vec::new();
        let mut pos = off;
        while pos < end {
            let data = match seek(&self.file, SeekFrom::Data(pos)) {
                Ok(d) => d,
                // No data at or after `pos`.
                Err(Errno::NXIO) => break,
                // A file system without SEEK_DATA: assume data everywhere.
                Err(Errno::INVAL) | Err(Errno::OPNOTSUPP) if out.is_empty() && pos == off => {
                    return Ok(std::iter::once(off..end).collect());
                }
                Err(e) => return Err(e.into()),
            };
            if data >= end {
                break;
            }
            let hole = seek(&self.file, SeekFrom::Hole(data))?;
            out.push(data..hole.min(end));
            pos = hole;
        }
        Ok(out)
    }
}

/// An in-memory map store over the nvbuf's [`MemStore`]: a working copy
/// that writes change and a durable copy that only `sync` updates, so tests
/// and the simulator can take crash images at any moment.
pub struct MemMapStore {
    inner: Mutex<MemStore>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn out_of_bounds(off: u64, len: usize, size: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("{len} bytes at offset {off} are past the end of the store ({size} bytes)"),
    )
}

impl Default for MemMapStore {
    fn default() -> Self {
        MemMapStore::new()
    }
}

impl MemMapStore {
    /// An empty store, for [`super::ChangeMap::create`].
    pub fn new() -> MemMapStore {
        MemMapStore::from_image(Vec::new())
    }

    /// A store whose working and durable copies are `image` (a crash image
    /// to reopen).
    pub fn from_image(image: Vec<u8>) -> MemMapStore {
        MemMapStore {
            inner: Mutex::new(MemStore::from_image(image)),
        }
    }

    /// What survives a crash that loses every unsynced byte.
    pub fn crash_image(&self) -> Vec<u8> {
        lock(&self.inner).crash_image()
    }

    /// What may survive a crash during writeback: a deterministic
    /// pseudo-random half of the unsynced 512-byte sectors (see
    /// [`MemStore::crash_image_torn`]).
    pub fn crash_image_torn(&self, seed: u64) -> Vec<u8> {
        lock(&self.inner).crash_image_torn(seed)
    }

    /// Everything written (what survives a crash of the process alone).
    pub fn working_image(&self) -> Vec<u8> {
        lock(&self.inner).working_image()
    }

    /// When set, every sync fails (fault injection).
    pub fn set_fail_syncs(&self, fail: bool) {
        lock(&self.inner).set_fail_flushes(fail)
    }

    /// Successful syncs so far.
    pub fn sync_calls(&self) -> u64 {
        lock(&self.inner).flush_calls()
    }

    fn check(store: &MemStore, off: u64, len: usize) -> io::Result<usize> {
        match usize::try_from(off) {
            Ok(o) if o.checked_add(len).is_some_and(|e| e <= store.len()) => Ok(o),
            _ => Err(out_of_bounds(off, len, store.len())),
        }
    }
}

impl MapStore for MemMapStore {
    fn name(&self) -> String {
        "(in memory)".into()
    }
    fn len(&self) -> io::Result<u64> {
        Ok(lock(&self.inner).len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| io::Error::other("too large for memory"))?;
        let mut s = lock(&self.inner);
        if len < s.len() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "an in-memory store cannot shrink",
            ));
        }
        s.grow(len)
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let s = lock(&self.inner);
        let o = Self::check(&s, off, buf.len())?;
        s.read(o, buf);
        Ok(())
    }
    fn write_at(&self, off: u64, data: &[u8]) -> io::Result<()> {
        let mut s = lock(&self.inner);
        let o = Self::check(&s, off, data.len())?;
        s.write(o, data);
        Ok(())
    }
    fn zero_range(&self, off: u64, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| out_of_bounds(off, usize::MAX, 0))?;
        let mut s = lock(&self.inner);
        let o = Self::check(&s, off, len)?;
        s.write(o, &vec![0u8; len]);
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        let s = lock(&self.inner);
        let len = s.len();
        s.flush_range(0, len)
    }
}
