//! [`FileExport`]: an [`Export`] over a regular file or a block device,
//! built on the replica's [`FileReplica`] so the positional I/O, range
//! checks and hole punching are written once.
//!
//! Durability is the file's: flush is `fdatasync`, FUA is a write followed
//! by `fdatasync`, trim and write-zeroes punch a hole (zeros are written
//! where the file system or device cannot). Allocation (block status,
//! sparse reads) comes from `SEEK_DATA`/`SEEK_HOLE`, cache from
//! `POSIX_FADV_WILLNEED`. Blocking calls run on tokio's blocking pool, so
//! many requests proceed at once.

use std::io;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use super::{Export, IoFuture, Piece};
use crate::replica::{FileReplica, Replica, Span};

/// Reads `offset..offset+len` of `file` as data and hole pieces: holes are
/// not read at all. Blocking.
pub(crate) fn read_pieces(file: &FileReplica, offset: u64, len: u32) -> io::Result<Vec<Piece>> {
    let spans = if len == 0 {
        Vec::new()
    } else {
        file.spans(offset, u64::from(len))?
    };
    let mut pieces = Vec::with_capacity(spans.len());
    for Span { offset, len, hole } in spans {
        // Each run lies inside a range of at most 32 MiB.
        let n = len as u32;
        if hole {
            pieces.push(Piece::Hole { offset, len: n });
        } else {
            let mut buf = vec![0u8; n as usize];
            file.read_at(offset, &mut buf)?;
            pieces.push(Piece::Data {
                offset,
                data: Bytes::from(buf),
            });
        }
    }
    Ok(pieces)
}

/// A file or block device served over NBD.
#[derive(Debug, Clone)]
pub struct FileExport {
    file: Arc<FileReplica>,
    read_only: bool,
}

impl FileExport {
    /// Opens `path` as a `size`-byte export. Writable: a missing file is
    /// created sparse and a short one extended. Read-only: the file must
    /// exist and hold at least `size` bytes.
    pub fn open(path: &Path, size: u64, read_only: bool) -> io::Result<FileExport> {
        let file = if read_only {
            FileReplica::open_read_only(path, size)
        } else {
            FileReplica::open(path, size)
        };
        let file = file.map_err(|e| {
            let kind = match &e {
                crate::replica::ReplicaError::Open { source, .. } => source.kind(),
                crate::replica::ReplicaError::Size { .. } => io::ErrorKind::InvalidInput,
            };
            io::Error::new(kind, e)
        })?;
        Ok(FileExport {
            file: Arc::new(file),
            read_only,
        })
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Runs blocking file I/O off the async workers.
    fn blocking<T, F>(&self, f: F) -> IoFuture<T>
    where
        T: Send + 'static,
        F: FnOnce(&FileReplica) -> io::Result<T> + Send + 'static,
    {
        let file = self.file.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(&file))
                .await
                .map_err(|e| io::Error::other(format!("file I/O task failed: {e}")))?
        })
    }
}

impl Export for FileExport {
    fn size(&self) -> u64 {
        self.file.size()
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read(&self, offset: u64, len: u32) -> IoFuture<Bytes> {
        self.blocking(move |f| {
            let mut buf = vec![0u8; len as usize];
            f.read_at(offset, &mut buf)?;
            Ok(Bytes::from(buf))
        })
    }

    fn write(&self, offset: u64, data: Bytes, fua: bool) -> IoFuture<()> {
        self.blocking(move |f| {
            f.write_at(offset, &data)?;
            if fua {
                f.sync()?;
            }
            Ok(())
        })
    }

    fn flush(&self) -> IoFuture<()> {
        self.blocking(|f| f.sync())
    }

    fn trim(&self, offset: u64, len: u32) -> IoFuture<()> {
        self.blocking(move |f| f.trim(offset, u64::from(len)))
    }

    fn spans(&self, offset: u64, len: u64) -> IoFuture<Vec<Span>> {
        self.blocking(move |f| f.spans(offset, len))
    }

    fn read_sparse(&self, offset: u64, len: u32) -> IoFuture<Vec<Piece>> {
        self.blocking(move |f| read_pieces(f, offset, len))
    }

    fn cache(&self, offset: u64, len: u32) -> IoFuture<()> {
        // A hint the kernel acts on in the background: cheap enough to
        // run inline.
        let r = self.file.prefetch(offset, u64::from(len));
        Box::pin(async move { r })
    }

    fn write_zeroes(&self, offset: u64, len: u32, fua: bool) -> IoFuture<()> {
        // A trimmed range of a FileReplica reads back as zeros.
        self.blocking(move |f| {
            f.trim(offset, u64::from(len))?;
            if fua {
                f.sync()?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_writes_zeroes_and_refuses_writes_when_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.img");
        let e = FileExport::open(&path, 1 << 20, false).unwrap();
        assert_eq!(e.size(), 1 << 20);
        e.write(4096, Bytes::from(vec![9u8; 8192]), true)
            .await
            .unwrap();
        assert_eq!(e.read(4096, 8192).await.unwrap(), vec![9u8; 8192]);
        e.write_zeroes(4096, 4096, false).await.unwrap();
        e.flush().await.unwrap();
        let back = e.read(4096, 8192).await.unwrap();
        assert!(back[..4096].iter().all(|&b| b == 0));
        assert!(back[4096..].iter().all(|&b| b == 9));

        let ro = FileExport::open(&path, 1 << 20, true).unwrap();
        assert!(ro.read_only());
        let err = ro
            .write(0, Bytes::from_static(b"x"), false)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(ro.read(8192, 4).await.unwrap(), vec![9u8; 4]);
        assert!(FileExport::open(&dir.path().join("missing"), 512, true).is_err());
    }

    #[tokio::test]
    async fn sparse_reads_skip_holes_and_cover_the_range() {
        let dir = tempfile::tempdir().unwrap();
        let e = FileExport::open(&dir.path().join("s.img"), 1 << 20, false).unwrap();
        e.write(256 << 10, Bytes::from(vec![5u8; 64 << 10]), false)
            .await
            .unwrap();
        let pieces = e.read_sparse(128 << 10, 256 << 10).await.unwrap();
        assert_eq!(
            pieces,
            [
                Piece::Hole {
                    offset: 128 << 10,
                    len: 128 << 10
                },
                Piece::Data {
                    offset: 256 << 10,
                    data: Bytes::from(vec![5u8; 64 << 10])
                },
                Piece::Hole {
                    offset: 320 << 10,
                    len: 64 << 10
                },
            ]
        );
        e.cache(0, 1 << 20).await.unwrap();
        assert!(e.read_sparse(0, 0).await.unwrap().is_empty());
    }
}
