//! The primary DTU's non-volatile buffer: a preallocated, memory-mapped ring
//! journal holding every write the primary accepted and the remote has not yet
//! stored (the patent's non-volatile buffer and packet allocation table). It
//! owns the on-disk format, appending with group-commit durability, release on
//! the remote's Stored ack, backpressure when full, and crash recovery. Record
//! payloads are opaque bytes (the encoded, possibly sealed, wire frames), so no
//! plaintext sits in the file when sealing is on.
//!
//! # Format (version 1, all integers little endian)
//!
//! ```text
//! 0      4096   8192                                            size
//! | SB 0 | SB 1 | ring: records and wrap markers ...             |
//! ```
//!
//! **Superblocks.** Two slots of one page each; the bytes used are
//! `magic "DTUNVBUF" (8) | version u32 | crc32 u32 | volume id (16) | epoch u32 |
//! instance u32 | generation u64 | file size u64 | ring offset u64 | ring len u64 |
//! tail lsn u64 | tail seq u64 | head lsn u64 | next seq u64 | base seq u64`,
//! 128 bytes with the crc (crc32fast) over all of them except the crc field.
//! Each update writes the slot `generation % 2` and flushes it before the next
//! update may start, so the other slot always holds the previous durable
//! superblock; open uses the valid one with the higher generation. `instance` is
//! random per formatted file and stamped into every record, so records of an
//! earlier nvbuf on the same file can never be mistaken for ours.
//!
//! **Log positions.** An [`Lsn`] is a byte offset in an infinite log; its place
//! in the ring is `ring offset + lsn % ring len`. The tail is the lsn of the
//! first unreleased record (with `tail seq`, its seq); head and next seq in the
//! superblock are informational (written lazily).
//!
//! **Records.** A 64-byte header
//! `magic "NVRC" u32 | epoch u32 | lsn u64 | seq u64 | offset u64 | length u32 |
//! flags u32 | chunk index u32 | chunk count u32 | payload len u32 |
//! instance u32 | reserved u32 (0) | crc32 u32`, the crc covering header bytes
//! 0..60 and the payload; then the payload, padded to 8 bytes. A record never
//! straddles the ring end: if it does not fit in the rest of the lap, a 64-byte
//! wrap marker (magic "NVWR", epoch, lsn, instance, crc) is written there when
//! there is room for one (else the gap is implicit) and the record starts the
//! next lap. A record is at most half the ring, so an empty ring always takes it.
//!
//! **Durability.** `append` only copies into the file (positional writes
//! into the page cache the map reads; see [`MmapStore`] for why not through
//! the map); [`Nvbuf::sync_to`] makes everything appended so far durable
//! with one fdatasync shared by all concurrent callers (group commit). The
//! flush goes through a handle of its own ([`Flusher`]), so appends continue
//! while it runs and the next flush covers all of them. `release_through` frees records in
//! memory; the freed space is reused only after a superblock carrying the new
//! tail is durable (written lazily: when an appender needs the space, or by a
//! flusher once an eighth of the ring is reclaimable), so recovery never scans
//! into reused space. Recovery may therefore hand back records the remote has
//! already stored; the remote ignores seqs it has applied.
//!
//! **Recovery.** Read the newer valid superblock, scan from its tail, accept a
//! record only if its magic, instance, lsn (= its scan position) and crc match,
//! its epoch is not above the superblock's nor below the previous record's,
//! and (seq, chunk) follows the previous record with the same chunk count and
//! epoch within a seq, starting with (tail seq, 0). Stop at the first record
//! that fails; drop a trailing seq whose chunks are not all present. Then the
//! whole file is flushed (so the recovered view is durable), the epoch is
//! bumped and persisted, and appends resume just past the last complete seq,
//! overwriting the torn tail; the epoch check makes any leftover of that tail
//! unacceptable after the new records.

mod error;
pub mod format;
mod recovery;
mod ring;
mod store;

pub use error::NvbufError;
pub use ring::Nvbuf;
pub use store::{Flusher, MemStore, MmapStore, NvStore, PAGE, SECTOR};

use std::time::Duration;

/// Number of a mirrored operation: dense and increasing across the log.
pub type Seq = u64;
/// A byte position in the infinite log (see the format description).
pub type Lsn = u64;

/// One chunk of one mirrored operation, as stored in a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordHeader {
    /// Dense, increasing across the log.
    pub seq: Seq,
    /// Epoch of the primary that wrote it (must equal [`Nvbuf::epoch`]).
    pub epoch: u32,
    /// Volume offset of this chunk (informational for nvbuf).
    pub offset: u64,
    /// Plaintext length of this chunk (informational).
    pub length: u32,
    /// Opaque to nvbuf (op kind + codec flags), stored and returned verbatim.
    pub flags: u32,
    /// 0..chunk_count.
    pub chunk_index: u32,
    /// At least 1; a seq is complete when all its chunks are present.
    pub chunk_count: u32,
}

/// What [`Nvbuf::append`] does when the ring is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Fail with `Full` at once (the simulator, and appenders that first
    /// make what they appended durable).
    No,
    /// Block until space is released or this moment passes.
    Until(std::time::Instant),
    /// Block until space is released.
    Forever,
}

/// Parameters for creating an nvbuf.
#[derive(Clone, Debug)]
pub struct NvbufConfig {
    /// File size in bytes (rounded down to a page): default 1 GiB, minimum 4 MiB.
    pub size: u64,
    /// The mirrored volume; a file made for another volume is refused.
    pub volume_id: [u8; 16],
    /// Seq of the first record of a new nvbuf (default 1; 0 means "nothing").
    pub first_seq: Seq,
    /// Let `create` replace an existing non-empty file.
    pub overwrite: bool,
    /// Epoch of a new nvbuf (default 1); a replacement of an older nvbuf
    /// continues above the old one's, so the remote does not take it for a
    /// stale primary.
    pub first_epoch: u32,
    /// What `open_or_create` does with an existing file whose durable
    /// records cannot all be recovered.
    pub on_loss: OnLoss,
}

/// What opening an nvbuf does when recovery finds that records which had
/// been made durable are damaged, or that the file was truncated: the host
/// may have been told those writes were safe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnLoss {
    /// Fail with [`NvbufError::Lost`], naming what is lost, and change
    /// nothing in the file.
    Refuse,
    /// Keep the intact prefix, erase what cannot be recovered, and report
    /// it in [`Recovery::loss`].
    Salvage,
}

/// Durable records recovery could not bring back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loss {
    /// The first seq not recovered.
    pub first_seq: Seq,
    /// The highest seq known to have existed after it, when anything says.
    pub last_seq: Option<Seq>,
    /// Bytes of log (or of file, for a truncation) that cannot be read back.
    pub bytes: u64,
    /// What happened, in words.
    pub cause: String,
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.last_seq {
            Some(last) if last > self.first_seq => write!(f, "seqs {}..={last}", self.first_seq)?,
            Some(_) => write!(f, "seq {}", self.first_seq)?,
            None => write!(f, "seq {} and any after it", self.first_seq)?,
        }
        write!(
            f,
            " ({} bytes) cannot be recovered: {}",
            self.bytes, self.cause
        )
    }
}

impl NvbufConfig {
    /// Defaults (1 GiB, first seq 1, no overwrite) for `volume_id`.
    pub fn new(volume_id: [u8; 16]) -> NvbufConfig {
        NvbufConfig {
            size: format::DEFAULT_SIZE,
            volume_id,
            first_seq: 1,
            overwrite: false,
            first_epoch: 1,
            on_loss: OnLoss::Refuse,
        }
    }

    /// The same with another size.
    pub fn with_size(mut self, size: u64) -> NvbufConfig {
        self.size = size;
        self
    }
}

/// What recovery found when an existing nvbuf was opened.
#[derive(Clone, Debug, Default)]
pub struct Recovery {
    /// Every valid unreleased record, all chunks, in log order.
    pub records: Vec<(RecordHeader, Vec<u8>)>,
    pub first_seq: Option<Seq>,
    pub last_seq: Option<Seq>,
    /// Why the scan stopped early, when it stopped on a torn or corrupt record
    /// (as opposed to the plain end of the log).
    pub stopped: Option<String>,
    /// How the scan ended, always set.
    pub end: String,
    /// A trailing seq that was dropped because not all its chunks were present.
    pub dropped_incomplete: Option<Seq>,
    /// Epoch found in the superblock, and the new epoch now persisted.
    pub previous_epoch: u32,
    pub epoch: u32,
    /// Generation of the superblock recovery started from.
    pub superblock_generation: u64,
    /// Bytes of log walked from the tail.
    pub scanned_bytes: u64,
    /// Durable records that could not be recovered (only with
    /// [`OnLoss::Salvage`]; with `Refuse` the open fails instead).
    pub loss: Option<Loss>,
}

/// Counters and levels for the status display.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct NvbufStats {
    /// Ring bytes.
    pub capacity: u64,
    /// Ring bytes holding unreleased records (incl. wrap gaps).
    pub used_bytes: u64,
    /// `used_bytes` as a percentage of `capacity`.
    pub fill_pct: f64,
    /// Released bytes not reusable until the next superblock write.
    pub reclaimable_bytes: u64,
    /// Unreleased records (chunks).
    pub records: u64,
    /// Unreleased seqs (complete or being appended).
    pub unreleased_seqs: u64,
    pub first_unreleased_seq: Option<Seq>,
    /// Age of the oldest unreleased record (recovered records count from open).
    pub oldest_unreleased_age: Option<Duration>,
    pub epoch: u32,
    pub next_seq: Seq,
    pub durable_seq: Option<Seq>,
    pub head_lsn: Lsn,
    pub durable_lsn: Lsn,
    /// Records and payload bytes appended since open.
    pub appended_records: u64,
    pub appended_bytes: u64,
    /// Data flushes (group commits) and the records they made durable.
    pub flushes: u64,
    pub flushed_records: u64,
    /// Appends that had to wait for space, and how many wait right now.
    pub full_waits: u64,
    pub waiting_appenders: u64,
    pub superblock_writes: u64,
}

impl NvbufStats {
    /// Records made durable per flush (the group-commit ratio).
    pub fn records_per_flush(&self) -> f64 {
        if self.flushes == 0 {
            0.0
        } else {
            self.flushed_records as f64 / self.flushes as f64
        }
    }
}
