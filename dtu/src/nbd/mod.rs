//! The NBD front end: a server speaking the fixed newstyle Network Block
//! Device protocol (NetworkBlockDevice/nbd `doc/proto.md`) over TCP and unix
//! sockets, so any real host (qemu, the Linux nbd driver, nbdcopy, fio) can
//! use a DTU as "just another disk".
//!
//! This module owns the [`Export`] trait (what a served volume must offer),
//! the server ([`NbdServer`]) and [`FileExport`], an export over a regular
//! file or block device. The wire format lives in [`wire`] as pure functions
//! (fuzzed and property-tested), the option haggling in `handshake`, the
//! request loop in `transmission`. Only simple replies are spoken: structured
//! replies, TLS, metadata contexts and extended headers are refused with
//! `NBD_REP_ERR_UNSUP`, which every client handles.

mod file_export;
mod handshake;
mod server;
mod transmission;
pub mod wire;

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

pub use file_export::FileExport;
pub use server::{ConnectionEnd, Limits, NbdError, NbdServer};

/// The future every [`Export`] operation returns.
pub type IoFuture<T> = Pin<Box<dyn Future<Output = std::io::Result<T>> + Send + 'static>>;

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
