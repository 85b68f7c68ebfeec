//! The NBD front end: a server speaking the fixed newstyle Network Block
//! Device protocol (NetworkBlockDevice/nbd `doc/proto.md`) over TCP and unix
//! sockets, so any real host (qemu, the Linux nbd driver, nbdcopy, fio) can
//! use a DTU as "just another disk".
//!
//! This module owns the [`Export`] trait (what a served volume must offer),
//! the server ([`NbdServer`]) and [`FileExport`], an export over a regular
//! file or block device. The wire format lives in [`wire`] as pure functions
//! (fuzzed and property-tested), the option haggling in `handshake`, the
//! request loop in `transmission`, TLS (NBD_OPT_STARTTLS) in [`tls`].
//! Structured replies, the `base:allocation` metadata context with
//! NBD_CMD_BLOCK_STATUS, sparse reads (NBD_REPLY_TYPE_OFFSET_HOLE) and
//! NBD_CMD_CACHE are spoken to clients that ask; simple replies to those
//! that do not. Extended headers are refused with `NBD_REP_ERR_UNSUP`,
//! which every client handles.

mod file_export;
mod handshake;
mod server;
pub mod tls;
mod transmission;
pub mod wire;

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

pub use crate::replica::Span;
pub use file_export::FileExport;
pub use server::{ConnectionEnd, Limits, NbdError, NbdServer};

/// The future every [`Export`] operation returns.
pub type IoFuture<T> = Pin<Box<dyn Future<Output = std::io::Result<T>> + Send + 'static>>;

/// One part of a sparse read: bytes, or a run that reads as zeros.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Data { offset: u64, data: Bytes },
    Hole { offset: u64, len: u32 },
}

/// A volume served over NBD.
///
/// The server checks every request against [`Export::size`] and
/// [`Export::read_only`] before it calls the export, so implementations only
/// see in-range requests of at most [`wire::MAX_REQUEST_LEN`] bytes (trim
/// excepted: it carries no payload and may be up to 4 GiB - 1).
/// Calls may overlap: the server keeps many requests in flight per
/// connection and serves several connections at once.
pub trait Export: Send + Sync + 'static {
    /// Bytes in the volume.
    fn size(&self) -> u64;
    /// Whether writes, trims and write-zeroes are refused (`EPERM`).
    fn read_only(&self) -> bool;
    /// Preferred block size for NBD_INFO_BLOCK_SIZE (min 1 or 512, preferred this, max 32 MiB).
    fn block_size(&self) -> u32 {
        4096
    }
    /// Reads exactly `len` bytes at `offset`.
    fn read(&self, offset: u64, len: u32) -> IoFuture<Bytes>;
    /// `fua`: the write must be durable (as the export defines it) before the future resolves.
    fn write(&self, offset: u64, data: Bytes, fua: bool) -> IoFuture<()>;
    /// Makes every write completed so far durable.
    fn flush(&self) -> IoFuture<()>;
    /// Discards `len` bytes at `offset` (a hint: the range may keep its data).
    fn trim(&self, offset: u64, len: u32) -> IoFuture<()>;
    /// The allocation of `offset..offset+len` (`len` > 0), for
    /// NBD_CMD_BLOCK_STATUS: runs in order from `offset`. A prefix of the
    /// range is enough. Default: all data, which is always true.
    fn spans(&self, offset: u64, len: u64) -> IoFuture<Vec<Span>> {
        Box::pin(async move {
            Ok(vec![Span {
                offset,
                len,
                hole: false,
            }])
        })
    }
    /// Reads `len` bytes at `offset` as pieces covering the range in order,
    /// holes sent as NBD_REPLY_TYPE_OFFSET_HOLE instead of zeros to clients
    /// that negotiated structured replies. Default: one [`Export::read`].
    fn read_sparse(&self, offset: u64, len: u32) -> IoFuture<Vec<Piece>> {
        let read = self.read(offset, len);
        Box::pin(async move {
            let data = read.await?;
            Ok(vec![Piece::Data { offset, data }])
        })
    }
    /// NBD_CMD_CACHE: bring the range into whatever cache the export has.
    /// Default: nothing, for exports without a cache worth warming.
    fn cache(&self, _offset: u64, _len: u32) -> IoFuture<()> {
        Box::pin(async { Ok(()) })
    }
    /// Default: a write of zeros.
    fn write_zeroes(&self, offset: u64, len: u32, fua: bool) -> IoFuture<()> {
        // Shared static zeros: a large zeroing request costs no allocation.
        static ZEROS: [u8; 1 << 20] = [0; 1 << 20];
        let mut writes = Vec::new();
        let end = offset + u64::from(len);
        let mut at = offset;
        while at < end {
            let n = (end - at).min(ZEROS.len() as u64) as usize;
            writes.push(self.write(at, Bytes::from_static(&ZEROS[..n]), fua));
            at += n as u64;
        }
        Box::pin(async move {
            for w in writes {
                w.await?;
            }
            Ok(())
        })
    }
}
