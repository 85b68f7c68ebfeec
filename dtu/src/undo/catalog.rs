//! The checkpoint catalog: the remote's crash-safe list of the checkpoints
//! it holds (seq, the primary's wall time, kind, label, and the undo era
//! each one begins), the rule that picks the checkpoint for a time, and the
//! drops that retention and rollback make. It owns one small file.
//!
//! # Format (version 1, integers little endian)
//!
//! ```text
//! header, 24 bytes: magic "DTUCKPT1" | version u32 | count u32 | reserved u32 | crc32 of bytes 0..20
//! count records:    body length u16 | body | crc32 of length and body
//! body:             seq u64 | time_us u64 | era u64 | kind u8 | label (UTF-8, ≤ 256 bytes)
//! ```
//!
//! Every change writes the whole catalog to `NAME.tmp`, syncs it, renames
//! it over `NAME` and syncs the directory, so a crash leaves the old or the
//! new catalog, never a mix. At most [`MAX_CHECKPOINTS`] entries of at most
//! [`MAX_LABEL`] bytes of label: the file never exceeds 1.2 MiB, and open
//! refuses anything larger, any count, length or kind out of bounds, a bad
//! checksum and entries out of order with a [`CatalogError::Damaged`] that
//! names the file and the fault.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use dtu_proto::frame::CheckpointKind;
use dtu_proto::Seq;

use super::error::CatalogError;
use super::journal::EraId;
use super::time::fmt_time_us;

/// Most checkpoints a catalog holds.
pub const MAX_CHECKPOINTS: usize = 4096;
/// Longest label, in bytes: every label the wire carries fits.
pub const MAX_LABEL: usize = 256;
const _: () = assert!(MAX_LABEL >= dtu_proto::frame::MAX_LABEL);

const MAGIC: &[u8; 8] = b"DTUCKPT1";
const VERSION: u32 = 1;
const HEADER: usize = 24;
const BODY_FIXED: usize = 8 + 8 + 8 + 1;
const RECORD_MAX: usize = 2 + BODY_FIXED + MAX_LABEL + 4;
const FILE_MAX: usize = HEADER + MAX_CHECKPOINTS * RECORD_MAX;

/// One checkpoint held by the remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its place in the write stream: the view at this checkpoint holds
    /// every write before it and none after.
    pub seq: Seq,
    /// The primary's wall time, microseconds since the Unix epoch.
    pub time_us: u64,
    /// [`CheckpointKind`] as a byte.
    pub kind: u8,
    pub label: String,
    /// The undo era this checkpoint begins ([`super::Journal::begin_era`]).
    pub era: EraId,
}

impl Entry {
    /// `manual`, `timer`, `shutdown`, `boot`, `install`, `change`, or `unknown`.
    pub fn kind_name(&self) -> &'static str {
        CheckpointKind::from_byte(self.kind).map_or("unknown", CheckpointKind::name)
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} ({}, {}, seq {})",
            self.label,
            self.kind_name(),
            fmt_time_us(self.time_us),
            self.seq
        )
    }
}

/// The checkpoint catalog, kept in seq (and so time and era) order.
#[derive(Debug)]
pub struct Catalog {
    path: PathBuf,
    entries: Vec<Entry>,
}

impl Catalog {
    /// Opens the catalog at `path`; a missing file is an empty catalog
    /// (the file is written at the first change). A leftover `NAME.tmp`
    /// from a crash during a change is ignored and replaced later.
    pub fn open(path: &Path) -> Result<Catalog, CatalogError> {
        let io_err = |what| {
            let path = path.to_path_buf();
            move |source| CatalogError::Io { path, what, source }
        };
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Catalog {
                    path: path.to_path_buf(),
                    entries: Vec::new(),
                })
            }
            Err(e) => return Err(io_err("cannot open")(e)),
        };
        let len = file.metadata().map_err(io_err("cannot stat"))?.len();
        if len > FILE_MAX as u64 {
            return Err(damaged(
                path,
                format!("it is {len} bytes, more than a catalog of {MAX_CHECKPOINTS} checkpoints can be ({FILE_MAX} bytes)"),
            ));
        }
        let mut bytes = Vec::with_capacity(len as usize);
        file.read_to_end(&mut bytes)
            .map_err(io_err("cannot read"))?;
        let entries = decode(&bytes).map_err(|what| damaged(path, what))?;
        Ok(Catalog {
            path: path.to_path_buf(),
            entries,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every checkpoint held, oldest first.
    pub fn list(&self) -> &[Entry] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn oldest(&self) -> Option<&Entry> {
        self.entries.first()
    }

    pub fn newest(&self) -> Option<&Entry> {
        self.entries.last()
    }

    /// Adds `entry` after the newest checkpoint, durably. Its seq and era
    /// must be greater than the newest's and its time not earlier; its kind
    /// known and its label at most [`MAX_LABEL`] bytes.
    pub fn append(&mut self, entry: Entry) -> Result<(), CatalogError> {
        if entry.label.len() > MAX_LABEL {
            return Err(CatalogError::LabelTooLong {
                len: entry.label.len(),
                max: MAX_LABEL,
            });
        }
        if CheckpointKind::from_byte(entry.kind).is_none() {
            return Err(CatalogError::Kind { kind: entry.kind });
        }
        if let Some(newest) = self.entries.last() {
            if !in_order(newest, &entry) {
                return Err(CatalogError::OutOfOrder {
                    new: Box::new(entry),
                    newest: Box::new(newest.clone()),
                });
            }
        }
        if self.entries.len() >= MAX_CHECKPOINTS {
            return Err(CatalogError::Full {
                max: MAX_CHECKPOINTS,
            });
        }
        let mut next = self.entries.clone();
        next.push(entry);
        self.replace(next)
    }

    /// The checkpoint to show for `time_us`: the newest one at or before
    /// it. With checkpoints at t3, t5, t9 and t14, t8 gives t5, t4 gives
    /// t3, t15 gives t14, and t2 is refused naming t3, the oldest held.
    /// Of checkpoints sharing one time, the newest (highest seq) answers.
    pub fn at_or_before(&self, time_us: u64) -> Result<&Entry, CatalogError> {
        let oldest = self.entries.first().ok_or(CatalogError::Empty)?;
        let after = self.entries.partition_point(|e| e.time_us <= time_us);
        match after.checked_sub(1) {
            Some(i) => Ok(&self.entries[i]),
            None => Err(CatalogError::BeforeOldest {
                asked_us: time_us,
                oldest: Box::new(oldest.clone()),
            }),
        }
    }

    /// The newest checkpoint labelled `label`.
    pub fn by_label(&self, label: &str) -> Result<&Entry, CatalogError> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.label == label)
            .ok_or_else(|| CatalogError::NoSuchLabel {
                label: label.to_string(),
            })
    }

    /// The checkpoint that begins undo era `era`.
    pub fn by_era(&self, era: EraId) -> Option<&Entry> {
        self.entries
            .binary_search_by_key(&era, |e| e.era)
            .ok()
            .map(|i| &self.entries[i])
    }

    /// Drops the oldest checkpoint, durably (retention).
    pub fn drop_oldest(&mut self) -> Result<Option<Entry>, CatalogError> {
        let Some(first) = self.entries.first().cloned() else {
            return Ok(None);
        };
        self.replace(self.entries[1..].to_vec())?;
        Ok(Some(first))
    }

    /// Drops every checkpoint after `seq`, durably (after a rollback to the
    /// checkpoint at `seq`); answers what went.
    pub fn drop_after(&mut self, seq: Seq) -> Result<Vec<Entry>, CatalogError> {
        self.drop_where(|e| e.seq > seq)
    }

    /// Drops the checkpoint of era `era`, if held, durably.
    pub fn drop_era(&mut self, era: EraId) -> Result<Option<Entry>, CatalogError> {
        Ok(self.drop_where(|e| e.era == era)?.pop())
    }

    /// Drops every checkpoint `gone` answers true for, durably; answers what went.
    pub fn drop_where(
        &mut self,
        mut gone: impl FnMut(&Entry) -> bool,
    ) -> Result<Vec<Entry>, CatalogError> {
        let (dropped, kept): (Vec<Entry>, Vec<Entry>) =
            self.entries.iter().cloned().partition(|e| gone(e));
        if !dropped.is_empty() {
            self.replace(kept)?;
        }
        Ok(dropped)
    }

    /// Writes `entries` durably, then holds them.
    fn replace(&mut self, entries: Vec<Entry>) -> Result<(), CatalogError> {
        let bytes = encode(&entries);
        let tmp = tmp_path(&self.path);
        let io_err = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| CatalogError::Io { path, what, source }
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("cannot create the new catalog", &tmp))?;
        f.write_all(&bytes)
            .map_err(io_err("cannot write the new catalog", &tmp))?;
        f.sync_all()
            .map_err(io_err("cannot sync the new catalog", &tmp))?;
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(io_err(
            "cannot rename the new catalog into place",
            &self.path,
        ))?;
        super::sync_parent(&self.path)
            .map_err(io_err("cannot sync the catalog's directory", &self.path))?;
        self.entries = entries;
        Ok(())
    }
}

fn in_order(prev: &Entry, next: &Entry) -> bool {
    next.seq > prev.seq && next.time_us >= prev.time_us && next.era > prev.era
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

fn damaged(path: &Path, what: String) -> CatalogError {
    CatalogError::Damaged {
        path: path.to_path_buf(),
        what,
    }
}

fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + entries.len() * 64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    for e in entries {
        let start = out.len();
        let body_len = (BODY_FIXED + e.label.len()) as u16;
        out.extend_from_slice(&body_len.to_le_bytes());
        out.extend_from_slice(&e.seq.to_le_bytes());
        out.extend_from_slice(&e.time_us.to_le_bytes());
        out.extend_from_slice(&e.era.to_le_bytes());
        out.push(e.kind);
        out.extend_from_slice(e.label.as_bytes());
        let crc = crc32fast::hash(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }
    out
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Decodes a catalog file; every index is checked against `b.len()` first.
fn decode(b: &[u8]) -> Result<Vec<Entry>, String> {
    if b.len() < HEADER {
        return Err(format!(
            "it is {} bytes, shorter than the {HEADER}-byte header",
            b.len()
        ));
    }
    if &b[..8] != MAGIC {
        return Err("it does not start with \"DTUCKPT1\": not a checkpoint catalog".into());
    }
    if crc32fast::hash(&b[..20]) != u32_at(b, 20) {
        return Err("the header checksum does not match".into());
    }
    let version = u32_at(b, 8);
    if version != VERSION {
        return Err(format!(
            "format version {version}; this build knows version {VERSION}"
        ));
    }
    let count = u32_at(b, 12) as usize;
    if count > MAX_CHECKPOINTS {
        return Err(format!(
            "the header counts {count} checkpoints, more than the {MAX_CHECKPOINTS} allowed"
        ));
    }
    let mut entries: Vec<Entry> = Vec::with_capacity(count);
    let mut at = HEADER;
    for i in 0..count {
        if b.len() - at < 2 {
            return Err(format!(
                "checkpoint {i} of {count} is missing (file ends at byte {})",
                b.len()
            ));
        }
        let body_len = u16::from_le_bytes([b[at], b[at + 1]]) as usize;
        if !(BODY_FIXED..=BODY_FIXED + MAX_LABEL).contains(&body_len) {
            return Err(format!(
                "checkpoint {i} at byte {at} has a body of {body_len} bytes, outside {BODY_FIXED}..={}",
                BODY_FIXED + MAX_LABEL
            ));
        }
        let end = at + 2 + body_len + 4;
        if end > b.len() {
            return Err(format!(
                "checkpoint {i} at byte {at} runs past the end of the file ({} bytes)",
                b.len()
            ));
        }
        if crc32fast::hash(&b[at..end - 4]) != u32_at(b, end - 4) {
            return Err(format!(
                "checkpoint {i} at byte {at}: checksum does not match"
            ));
        }
        let body = &b[at + 2..end - 4];
        let kind = body[24];
        if CheckpointKind::from_byte(kind).is_none() {
            return Err(format!(
                "checkpoint {i} at byte {at} has unknown kind {kind}"
            ));
        }
        let label = std::str::from_utf8(&body[BODY_FIXED..])
            .map_err(|_| format!("checkpoint {i} at byte {at} has a label that is not UTF-8"))?
            .to_string();
        let e = Entry {
            seq: u64_at(body, 0),
            time_us: u64_at(body, 8),
            era: u64_at(body, 16),
            kind,
            label,
        };
        if let Some(prev) = entries.last() {
            if !in_order(prev, &e) {
                return Err(format!(
                    "checkpoint {i} ({e}, era {}) is not after the one before it ({prev}, era {})",
                    e.era, prev.era
                ));
            }
        }
        entries.push(e);
        at = end;
    }
    if at != b.len() {
        return Err(format!(
            "{} bytes follow the last of its {count} checkpoints",
            b.len() - at
        ));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, time_us: u64, label: &str) -> Entry {
        Entry {
            seq,
            time_us,
            kind: 0,
            label: label.into(),
            era: seq,
        }
    }

    #[test]
    fn round_trips_and_refuses_every_truncation_and_flip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog");
        let mut c = Catalog::open(&path).unwrap();
        c.append(entry(3, 30, "a")).unwrap();
        c.append(entry(5, 50, "ß✓")).unwrap();
        c.append(entry(9, 50, &"x".repeat(MAX_LABEL))).unwrap();
        let again = Catalog::open(&path).unwrap();
        assert_eq!(again.list(), c.list());
        let bytes = std::fs::read(&path).unwrap();
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for at in 0..bytes.len() {
            let mut b = bytes.clone();
            b[at] ^= 0x10;
            assert!(decode(&b).is_err(), "flip at {at}");
        }
    }
}
