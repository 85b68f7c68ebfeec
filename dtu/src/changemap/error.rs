//! The changed-block map's error type: every way creating, opening, changing
//! or persisting a map can fail, in words an operator can act on.

use std::path::PathBuf;

use super::format::{MAX_GRANULARITY, MIN_GRANULARITY};

/// Errors of the changed-block map.
#[derive(Debug, thiserror::Error)]
pub enum ChangeMapError {
    #[error("changed-block map {store}: {what}: {source}")]
    Io {
        store: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("changed-block map {path} is already in use by another process (or another map in this one); only one DTU may own it")]
    Locked { path: PathBuf },
    #[error("refusing to overwrite {path}: {what}; remove it or ask for overwrite explicitly")]
    Exists { path: PathBuf, what: String },
    #[error("changed-block map granularity of {granularity} bytes is not a power of two from {MIN_GRANULARITY} to {MAX_GRANULARITY} bytes")]
    Granularity { granularity: u64 },
    #[error("a changed-block map cannot describe a volume of {size} bytes: the size must be from 1 byte to {max} bytes")]
    VolumeSize { size: u64, max: u64 },
    #[error(
        "changed-block map {store} is not empty ({len} bytes): a new map needs an empty store"
    )]
    NotEmpty { store: String, len: u64 },
    #[error("changed-block map {store} belongs to volume {found}, not to volume {expected}")]
    WrongVolume {
        store: String,
        expected: String,
        found: String,
    },
    #[error("changed-block map {store} describes a volume of {found} bytes, but the volume has {expected} bytes (resized?)")]
    WrongSize {
        store: String,
        expected: u64,
        found: u64,
    },
    #[error("changed-block map {store} has format version {found}; this build only knows version {supported}")]
    UnknownVersion {
        store: String,
        found: u32,
        supported: u32,
    },
    #[error("no valid changed-block map header in {store} (slot 0: {slot0}; slot 1: {slot1}): not a changed-block map, or both copies are damaged")]
    NoValidHeader {
        store: String,
        slot0: String,
        slot1: String,
    },
    #[error("changed-block map {store} is {actual} bytes but its header says {expected} (truncated or resized?)")]
    LengthMismatch {
        store: String,
        actual: u64,
        expected: u64,
    },
    #[error("range of {len} bytes at offset {offset} is outside the volume of {size} bytes")]
    OutOfRange { offset: u64, len: u64, size: u64 },
}
