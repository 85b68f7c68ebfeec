//! The primary as an NBD export: what lets any real host (qemu, the Linux
//! nbd driver, fio, nbdcopy) use the primary DTU as just another disk.
//!
//! An NBD write is answered when the primary answers it under the policy in
//! force; a flush, or a write with FUA, when every earlier write is. Reads
//! come from the local image when there is one, otherwise from the replica.

use std::io;
use std::sync::Arc;

use bytes::Bytes;

use super::{Pending, Primary, PrimaryError};
use crate::nbd::{Export, IoFuture};

/// The NBD face of a [`Primary`].
pub struct PrimaryExport {
    primary: Arc<Primary>,
}

impl PrimaryExport {
    pub fn new(primary: Arc<Primary>) -> Self {
        PrimaryExport { primary }
    }
}

fn io_err(e: PrimaryError) -> io::Error {
    let kind = match e {
        PrimaryError::OutOfRange { .. } => io::ErrorKind::InvalidInput,
        PrimaryError::ShuttingDown => io::ErrorKind::BrokenPipe,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e.to_string())
}

/// Submits on a blocking-capable thread (ingest may wait for room), then
/// awaits the answer without holding one.
fn submit(f: impl FnOnce() -> Result<Pending, PrimaryError> + Send + 'static) -> IoFuture<()> {
    Box::pin(async move {
        let pending = tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| io::Error::other(e.to_string()))?
            .map_err(io_err)?;
        pending.await.map(|_| ()).map_err(io_err)
    })
}

impl Export for PrimaryExport {
    fn size(&self) -> u64 {
        self.primary.volume_size()
    }

    fn read_only(&self) -> bool {
        false
    }

    fn read(&self, offset: u64, len: u32) -> IoFuture<Bytes> {
        let p = self.primary.clone();
        Box::pin(async move { p.read(offset, len).await.map_err(io_err) })
    }

    fn write(&self, offset: u64, data: Bytes, fua: bool) -> IoFuture<()> {
        let p = self.primary.clone();
        let write = submit(move || p.write(offset, data));
        if !fua {
            return write;
        }
        // FUA: answered strictly in order, so the write's own answer already
        // covers every earlier write; a flush adds the local image's sync.
        let p = self.primary.clone();
        Box::pin(async move {
            write.await?;
            submit(move || p.flush()).await
        })
    }

    fn flush(&self) -> IoFuture<()> {
        let p = self.primary.clone();
        submit(move || p.flush())
    }

    fn trim(&self, offset: u64, len: u32) -> IoFuture<()> {
        let p = self.primary.clone();
        submit(move || p.trim(offset, len as u64))
    }
}
