//! The nvbuf error type: every way creating, opening, appending to or
//! flushing the buffer can fail, with messages an operator can act on.

use std::path::PathBuf;

use super::Seq;

/// Errors of the nvbuf.
#[derive(Debug, thiserror::Error)]
pub enum NvbufError {
    #[error("nvbuf {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("nvbuf {path} is already in use by another process (or another Nvbuf in this one); only one DTU may own an nvbuf")]
    Locked { path: PathBuf },
    #[error("refusing to overwrite {path}: {what}; remove it or ask for overwrite explicitly")]
    Exists { path: PathBuf, what: String },
    #[error("nvbuf size {size} bytes is too small: the minimum is {min} bytes")]
    TooSmall { size: u64, min: u64 },
    #[error("nvbuf belongs to volume {found}, not to volume {expected}")]
    WrongVolume { expected: String, found: String },
    #[error("nvbuf has format version {found}, this build only knows version {supported}")]
    UnknownVersion { found: u32, supported: u32 },
    #[error("no valid nvbuf superblock (slot 0: {slot0}; slot 1: {slot1}): not an nvbuf, or both copies are damaged")]
    NoValidSuperblock { slot0: String, slot1: String },
    #[error(
        "nvbuf file is {actual} bytes but its superblock says {expected} (truncated or resized?)"
    )]
    SizeMismatch { actual: u64, expected: u64 },
    #[error("nvbuf {path}: {loss}{}", recovered_text(recovered))]
    Lost {
        path: PathBuf,
        /// The intact prefix that can be kept (first and last seq).
        recovered: Option<(Seq, Seq)>,
        loss: Box<super::Loss>,
    },
    #[error("epoch counter exhausted")]
    EpochExhausted,
    #[error("record out of order: expected {expected}, got seq {seq} chunk {chunk_index}")]
    OutOfOrder {
        expected: String,
        seq: Seq,
        chunk_index: u32,
    },
    #[error("record carries epoch {got} but this nvbuf is at epoch {current}")]
    WrongEpoch { got: u32, current: u32 },
    #[error("invalid record header: {0}")]
    InvalidHeader(String),
    #[error("record payload of {len} bytes exceeds the nvbuf maximum of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("nvbuf full: a record of {needed} bytes does not fit, {used} of {capacity} bytes hold unreleased records (waited until the deadline)")]
    Full {
        needed: u64,
        used: u64,
        capacity: u64,
    },
    #[error("seq {seq} is not in the nvbuf (released or never appended)")]
    NotFound { seq: Seq },
    #[error("cannot sync to log position {lsn}: only {head} bytes have been appended")]
    BeyondHead { lsn: u64, head: u64 },
}

fn recovered_text(r: &Option<(Seq, Seq)>) -> String {
    match r {
        Some((a, b)) => format!("; the intact prefix holds seqs {a}..={b}"),
        None => "; no intact records precede the loss".into(),
    }
}
