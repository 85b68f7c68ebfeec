//! The primary as an NBD export: what lets any real host (qemu, the Linux
//! nbd driver, fio, nbdcopy) use the primary DTU as just another disk.
//!
//! An NBD write is answered when the primary answers it under the policy in
//! force; a flush, or a write with FUA, when every earlier write is. Reads
//! come from the local image when there is one, otherwise from the replica.
//! Write-zeroes are trims (both copies then read zeros, the local one as a
//! hole) so they cross the link as a range, not as zeros. Allocation for
//! NBD_CMD_BLOCK_STATUS and sparse reads comes from the local image's holes;
//! without one every range is reported as data, which proto.md allows (the
//! replica's holes are a link round trip away and would be stale at once).

use std::io;
use std::sync::Arc;

use bytes::Bytes;

use super::{Pending, Primary, PrimaryError};
use crate::nbd::{Export, IoFuture, Piece};
use crate::replica::Span;

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

/// Cuts `data`, read at `offset`, into pieces along `spans`; where the
/// spans do not cover it exactly the rest is one data piece (always true).
fn pieces_of(offset: u64, data: Bytes, spans: &[Span]) -> Vec<Piece> {
    let end = offset + data.len() as u64;
    let mut pieces = Vec::with_capacity(spans.len().max(1));
    let mut at = offset;
    for s in spans {
        if s.offset != at || s.len == 0 || at >= end {
            break;
        }
        let n = s.len.min(end - at);
        let rel = (at - offset) as usize;
        pieces.push(if s.hole {
            Piece::Hole {
                offset: at,
                len: n as u32,
            }
        } else {
            Piece::Data {
                offset: at,
                data: data.slice(rel..rel + n as usize),
            }
        });
        at += n;
    }
    if at < end {
        let rel = (at - offset) as usize;
        pieces.push(Piece::Data {
            offset: at,
            data: data.slice(rel..),
        });
    }
    pieces
}

/// Runs file I/O on the local image off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("local image I/O task failed: {e}")))?
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

    fn write_zeroes(&self, offset: u64, len: u32, fua: bool) -> IoFuture<()> {
        // The primary's trim makes both copies read back as zeros.
        let trim = self.trim(offset, len);
        let flush = fua.then(|| self.flush());
        Box::pin(async move {
            trim.await?;
            if let Some(f) = flush {
                f.await?;
            }
            Ok(())
        })
    }

    fn spans(&self, offset: u64, len: u64) -> IoFuture<Vec<Span>> {
        let p = self.primary.clone();
        Box::pin(async move {
            // Without a local image: all data (see the module header).
            if p.local.is_none() {
                return Ok(vec![Span {
                    offset,
                    len,
                    hole: false,
                }]);
            }
            blocking(move || match &p.local {
                Some(local) => local.disk().spans(offset, len),
                None => Ok(Vec::new()),
            })
            .await
        })
    }

    fn read_sparse(&self, offset: u64, len: u32) -> IoFuture<Vec<Piece>> {
        let spans = self.spans(offset, u64::from(len));
        let read = self.read(offset, len);
        Box::pin(async move {
            // The whole range goes through the primary's one read path;
            // holes cost no disk I/O to read and are cut out of the reply
            // here, which is where they cost: on the client's wire.
            let spans = if len == 0 { Vec::new() } else { spans.await? };
            let data = read.await?;
            Ok(pieces_of(offset, data, &spans))
        })
    }

    fn cache(&self, offset: u64, len: u32) -> IoFuture<()> {
        // With a local image the kernel can read it ahead; without one,
        // reads go to the remote and nothing here would keep them.
        let r = match &self.primary.local {
            Some(local) => local.disk().prefetch(offset, u64::from(len)),
            None => Ok(()),
        };
        Box::pin(async move { r })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_follow_spans_and_fall_back_to_data() {
        let data = Bytes::from((0..100u8).collect::<Vec<_>>());
        let span = |offset, len, hole| Span { offset, len, hole };
        let p = pieces_of(
            1000,
            data.clone(),
            &[span(1000, 10, true), span(1010, 500, false)],
        );
        assert_eq!(
            p,
            [
                Piece::Hole {
                    offset: 1000,
                    len: 10
                },
                Piece::Data {
                    offset: 1010,
                    data: data.slice(10..)
                }
            ]
        );
        // Spans that do not start at the offset: all data.
        assert_eq!(
            pieces_of(1000, data.clone(), &[span(990, 200, true)]),
            [Piece::Data { offset: 1000, data }]
        );
    }
}
