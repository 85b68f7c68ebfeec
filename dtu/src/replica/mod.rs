//! The replica: the remote's copy of the volume, and the small state file
//! that says which prefix of the write stream it holds.
//!
//! [`Replica`] is the trait an embedder implements to put the replica
//! somewhere else (an object store, a SAN LUN through its own API);
//! [`FileReplica`] is the one dtu ships, over a regular file or a block
//! device, with positional writes and `fdatasync` batched by the caller so
//! one sync covers many writes. A trimmed range reads back as zeros: a hole
//! is punched where the file system allows it, zeros are written otherwise.

mod mem;
mod state;

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

pub use mem::{MemReplica, MemStateStore};
pub use state::{
    boot_id, open_state_file, sample_digest, Inconsistency, OpenState, Resume, StateError,
    StateStore, VolumeState,
};

/// One run of a volume range as the storage holds it: data, or a hole that reads as zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// First byte.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
    /// A hole: reads as zeros, holds nothing.
    pub hole: bool,
}

/// Where the remote writes the volume.
pub trait Replica: Send + Sync + 'static {
    /// Bytes in the volume.
    fn size(&self) -> u64;
    /// Writes `data` at `offset` (not yet durable).
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Fills `buf` from `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Makes `len` bytes at `offset` read back as zeros.
    fn trim(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Makes every earlier write durable.
    fn sync(&self) -> io::Result<()>;
    /// A hint that `offset..offset+len` will be read soon (NBD_CMD_CACHE);
    /// storage that cannot use it ignores it.
    fn prefetch(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }
    /// What identifies this storage, so that a state written for it is not
    /// applied to another; the default names only the size.
    fn identity(&self) -> ReplicaIdentity {
        ReplicaIdentity {
            size: self.size(),
            ..ReplicaIdentity::default()
        }
    }
    /// The runs of `offset..offset+len`; storage that cannot tell reports all of it as data.
    fn spans(&self, offset: u64, len: u64) -> io::Result<Vec<Span>> {
        Ok(vec![Span {
            offset,
            len,
            hole: false,
        }])
    }
}

/// What identifies a replica's storage: its size and, for a regular file,
/// the device and inode it lives on (0 when unknown).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaIdentity {
    pub size: u64,
    pub device: u64,
    pub inode: u64,
}

/// A replica in a regular file or a block device.
#[derive(Debug)]
pub struct FileReplica {
    file: File,
    size: u64,
    path: PathBuf,
    read_only: bool,
}

/// Why a replica cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The file or device could not be opened.
    #[error("cannot open replica {path}: {source}")]
    Open {
        /// The replica.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    #[error(
        "{path} holds {actual} bytes but the volume is {expected} bytes: it was truncated or is \
         the wrong file; dtu does not grow a file that holds data (an empty file is sized for you)"
    )]
    /// The file holds data and is not the volume's size.
    Size {
        /// The replica.
        path: PathBuf,
        /// The volume's size.
        expected: u64,
        /// The file's size.
        actual: u64,
    },
}

impl FileReplica {
    /// Opens (creating a sparse file of `size` bytes if it does not exist
    /// or is empty) the replica at `path`. A file or block device that holds
    /// data must be at least `size` bytes: a shorter one was truncated or is
    /// the wrong file, and is refused rather than silently extended.
    pub fn open(path: &Path, size: u64) -> Result<FileReplica, ReplicaError> {
        Self::open_mode(path, size, false)
    }

    /// Opens an existing replica for reading only (read-only export,
    /// verification).
    pub fn open_read_only(path: &Path, size: u64) -> Result<FileReplica, ReplicaError> {
        Self::open_mode(path, size, true)
    }

    fn open_mode(path: &Path, size: u64, read_only: bool) -> Result<FileReplica, ReplicaError> {
        let open_err = |source| ReplicaError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .create(!read_only)
            .truncate(false)
            // The host's whole volume in plaintext: owner only, like the keys.
            .mode(0o600)
            .open(path)
            .map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        let actual = if meta.is_file() {
            meta.len()
        } else {
            file.seek(SeekFrom::End(0)).map_err(open_err)?
        };
        if actual < size {
            if meta.is_file() && !read_only && actual == 0 {
                file.set_len(size).map_err(open_err)?;
            } else {
                return Err(ReplicaError::Size {
                    path: path.to_path_buf(),
                    expected: size,
                    actual,
                });
            }
        }
        Ok(FileReplica {
            file,
            size,
            path: path.to_path_buf(),
            read_only,
        })
    }

    /// The replica's file or device.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check(&self, offset: u64, len: u64) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "range {offset}+{len} is outside the {}-byte volume",
                    self.size
                ),
            )),
        }
    }

    /// The file's allocation by `SEEK_DATA`/`SEEK_HOLE`, or `None` where the
    /// file cannot tell (block devices and file systems without the calls
    /// answer `EINVAL`/`EOPNOTSUPP`).
    fn seek_spans(&self, offset: u64, len: u64) -> io::Result<Option<Vec<Span>>> {
        use rustix::fs::{seek, SeekFrom};
        use rustix::io::Errno;
        let end = offset + len;
        let mut out: Vec<Span> = Vec::new();
        let mut push = |offset: u64, len: u64, hole: bool| match out.last_mut() {
            Some(last) if last.hole == hole && last.offset + last.len == offset => last.len += len,
            _ => out.push(Span { offset, len, hole }),
        };
        let mut at = offset;
        while at < end {
            // The file offset these calls move is not used by anything
            // else: every read and write here is positional.
            let data = match seek(&self.file, SeekFrom::Data(at)) {
                Ok(d) => d.min(end),
                // No data at or after `at`: the rest is one hole.
                Err(Errno::NXIO) => end,
                Err(Errno::INVAL | Errno::OPNOTSUPP) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            if data > at {
                push(at, data - at, true);
                at = data;
                continue;
            }
            let hole = match seek(&self.file, SeekFrom::Hole(at)) {
                Ok(h) => h.min(end),
                // Past the end of a file shorter than the volume: reads
                // fail there anyway; call it data rather than invent zeros.
                Err(Errno::NXIO) => end,
                Err(Errno::INVAL | Errno::OPNOTSUPP) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            // A hole offset at or before `at` would loop: the file changed
            // under us; report the rest as data, which is always true.
            let hole = if hole <= at { end } else { hole };
            push(at, hole - at, false);
            at = hole;
        }
        Ok(Some(out))
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.read_only {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "replica is open read-only",
            ))
        } else {
            Ok(())
        }
    }
}

impl Replica for FileReplica {
    fn size(&self) -> u64 {
        self.size
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check_writable()?;
        self.check(offset, data.len() as u64)?;
        self.file.write_all_at(data, offset)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check(offset, buf.len() as u64)?;
        self.file.read_exact_at(buf, offset)
    }

    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check_writable()?;
        self.check(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let punched = rustix::fs::fallocate(
            &self.file,
            rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
            offset,
            len,
        );
        if punched.is_ok() {
            return Ok(());
        }
        // Block devices and some file systems cannot punch holes.
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let mut at = offset;
        let end = offset + len;
        while at < end {
            let n = (end - at).min(ZEROS.len() as u64) as usize;
            self.file.write_all_at(&ZEROS[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Asks the kernel to read `offset..offset+len` into the page cache
    /// ahead of use (`POSIX_FADV_WILLNEED`); a hint, so it never blocks on
    /// the reads.
    fn prefetch(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check(offset, len)?;
        let Some(len) = std::num::NonZeroU64::new(len) else {
            return Ok(());
        };
        rustix::fs::fadvise(&self.file, offset, Some(len), rustix::fs::Advice::WillNeed)?;
        Ok(())
    }

    fn identity(&self) -> ReplicaIdentity {
        use std::os::unix::fs::MetadataExt;
        match self.file.metadata() {
            Ok(m) if m.is_file() => ReplicaIdentity {
                size: self.size,
                device: m.dev(),
                inode: m.ino(),
            },
            // A block device's node says nothing stable (names move
            // between boots): its size and the sample digest must do.
            _ => ReplicaIdentity {
                size: self.size,
                ..ReplicaIdentity::default()
            },
        }
    }

    fn spans(&self, offset: u64, len: u64) -> io::Result<Vec<Span>> {
        self.check(offset, len)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        Ok(self.seek_spans(offset, len)?.unwrap_or_else(|| {
            vec![Span {
                offset,
                len,
                hole: false,
            }]
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_reads_trims_and_refuses_out_of_range() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.img");
        let r = FileReplica::open(&path, 1 << 20).unwrap();
        r.write_at(4096, &[7u8; 8192]).unwrap();
        r.sync().unwrap();
        let mut buf = [0u8; 8192];
        r.read_at(4096, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 7));
        r.trim(4096, 4096).unwrap();
        r.read_at(4096, &mut buf).unwrap();
        assert!(buf[..4096].iter().all(|&b| b == 0));
        assert!(buf[4096..].iter().all(|&b| b == 7));
        assert!(r.write_at((1 << 20) - 1, &[1, 2]).is_err());
        assert!(r.read_at(u64::MAX, &mut buf).is_err());

        let ro = FileReplica::open_read_only(&path, 1 << 20).unwrap();
        assert_eq!(
            ro.write_at(0, &[1]).unwrap_err().kind(),
            io::ErrorKind::PermissionDenied
        );
        assert!(matches!(
            FileReplica::open_read_only(&path, 2 << 20),
            Err(ReplicaError::Size { .. })
        ));
    }

    #[test]
    fn spans_follow_the_holes_of_a_sparse_file() {
        const K: u64 = 1 << 10;
        let dir = tempfile::tempdir().unwrap();
        let r = FileReplica::open(&dir.path().join("s.img"), 4096 * K).unwrap();
        let span = |offset, len, hole| Span { offset, len, hole };
        // A fresh file is one hole.
        assert_eq!(r.spans(0, 4096 * K).unwrap(), [span(0, 4096 * K, true)]);
        r.write_at(1024 * K, &[1u8; 64 * 1024]).unwrap();
        r.write_at(3072 * K, &[2u8; 128 * 1024]).unwrap();
        assert_eq!(
            r.spans(0, 4096 * K).unwrap(),
            [
                span(0, 1024 * K, true),
                span(1024 * K, 64 * K, false),
                span(1088 * K, 1984 * K, true),
                span(3072 * K, 128 * K, false),
                span(3200 * K, 896 * K, true),
            ]
        );
        // A range starting inside data and ending inside a hole is clipped.
        assert_eq!(
            r.spans(1056 * K, 64 * K).unwrap(),
            [span(1056 * K, 32 * K, false), span(1088 * K, 32 * K, true)]
        );
        // Trimming punches the hole back.
        r.trim(1024 * K, 64 * K).unwrap();
        assert_eq!(r.spans(0, 2048 * K).unwrap(), [span(0, 2048 * K, true)]);
        assert_eq!(r.spans(5, 0).unwrap(), []);
        assert!(r.spans(4096 * K, 1).is_err());
        // The trait's default for storage that cannot tell: all data.
        struct Opaque;
        impl Replica for Opaque {
            fn size(&self) -> u64 {
                10
            }
            fn write_at(&self, _: u64, _: &[u8]) -> io::Result<()> {
                Ok(())
            }
            fn read_at(&self, _: u64, _: &mut [u8]) -> io::Result<()> {
                Ok(())
            }
            fn trim(&self, _: u64, _: u64) -> io::Result<()> {
                Ok(())
            }
            fn sync(&self) -> io::Result<()> {
                Ok(())
            }
        }
        assert_eq!(Opaque.spans(2, 5).unwrap(), [span(2, 5, false)]);
    }
}
