//! The replica: the remote's copy of the volume, and the small state file
//! that says which prefix of the write stream it holds.
//!
//! [`Replica`] is the trait an embedder implements to put the replica
//! somewhere else (an object store, a SAN LUN through its own API);
//! [`FileReplica`] is the one dtu ships, over a regular file or a block
//! device, with positional writes and `fdatasync` batched by the caller so
//! one sync covers many writes. A trimmed range reads back as zeros: a hole
//! is punched where the file system allows it, zeros are written otherwise.

mod state;

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

pub use state::{Resume, StateError, VolumeState};

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
    #[error("cannot open replica {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("replica {path} holds {actual} bytes but the volume is {expected} bytes")]
    Size {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
}

impl FileReplica {
    /// Opens (creating a sparse file of `size` bytes if it does not exist)
    /// the replica at `path`. A regular file shorter than the volume is
    /// extended; a block device must be at least `size` bytes.
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
            if meta.is_file() && !read_only {
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
}
