//! The undo journal's and the checkpoint catalog's error types: every way
//! opening, changing or reading them can fail, in words an operator can act
//! on, naming the file and what was wrong with it.

use std::path::PathBuf;

use dtu_proto::Seq;

use super::catalog::Entry;
use super::journal::EraId;
use super::time::fmt_time_us;

/// Errors of the undo journal ([`super::Journal`]) and of [`super::reconcile`].
#[derive(Debug, thiserror::Error)]
pub enum UndoError {
    #[error("undo journal {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("undo journal: block size of {block_size} bytes is not a power of two from 512 bytes to 1 MiB")]
    BlockSize { block_size: u64 },
    #[error("undo journal: a volume of {size} bytes cannot be journalled (it must hold at least one byte and at most 2^62 bytes)")]
    VolumeSize { size: u64 },
    #[error("undo segment {path} is damaged at byte {offset}: {what}; restore the file or remove the undo directory (losing the history it holds)")]
    Damaged {
        path: PathBuf,
        offset: u64,
        what: String,
    },
    #[error("undo segment {path} has no valid header: {what}")]
    BadHeader { path: PathBuf, what: String },
    #[error("undo segment {path} was written for a volume of {found_size} bytes in blocks of {found_block} bytes, not {size} bytes in blocks of {block} bytes (another volume, or the volume was resized)")]
    WrongVolume {
        path: PathBuf,
        size: u64,
        block: u64,
        found_size: u64,
        found_block: u64,
    },
    #[error("undo journal {dir}: era {era} begins at seq {seq}, not after era {prev_era} (seq {prev_seq}): the segments are out of order")]
    EraOrder {
        dir: PathBuf,
        era: EraId,
        seq: Seq,
        prev_era: EraId,
        prev_seq: Seq,
    },
    #[error("a checkpoint at seq {seq} ({}) cannot begin an era: the newest era began at seq {newest_seq} ({}); checkpoints must come in seq and time order", fmt_time_us(*time_us), fmt_time_us(*newest_time_us))]
    CheckpointOrder {
        seq: Seq,
        time_us: u64,
        newest_seq: Seq,
        newest_time_us: u64,
    },
    #[error("range of {len} bytes at offset {offset} is outside the volume of {size} bytes")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("undo era {era} is not held (held: {held})")]
    NoSuchEra { era: EraId, held: String },
    #[error("replica: {what}: {source}")]
    Replica {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// Errors of the checkpoint catalog ([`super::Catalog`]).
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("checkpoint catalog {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint catalog {path} is damaged: {what}; restore it from a backup or remove it (losing the list of checkpoints, not the replica)")]
    Damaged { path: PathBuf, what: String },
    #[error("no checkpoint is held yet")]
    Empty,
    #[error("no checkpoint at or before {}: the oldest point held is {oldest}", fmt_time_us(*asked_us))]
    BeforeOldest { asked_us: u64, oldest: Box<Entry> },
    #[error("no checkpoint is labelled {label:?}")]
    NoSuchLabel { label: String },
    #[error("checkpoint {new} is not after the newest held, {newest}: checkpoints must come in seq, time and era order")]
    OutOfOrder { new: Box<Entry>, newest: Box<Entry> },
    #[error("checkpoint label of {len} bytes is longer than the {max} bytes allowed")]
    LabelTooLong { len: usize, max: usize },
    #[error("checkpoint kind {kind} is not one of manual (0), timer (1), shutdown (2), boot (3), install (4), change (5)")]
    Kind { kind: u8 },
    #[error(
        "the catalog holds {max} checkpoints, as many as it may: drop the oldest first (retention)"
    )]
    Full { max: usize },
}
