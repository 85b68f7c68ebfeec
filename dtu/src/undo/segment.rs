//! The on-disk format of one undo era's segment file, and the scan that
//! reads one back after a crash. It owns the byte layout, its bounds and
//! checksums, and the rule that tells a torn last write (cut and reported)
//! from damage before the tail (a loud [`UndoError::Damaged`]).
//!
//! # Format (version 1, integers little endian)
//!
//! ```text
//! header, 64 bytes: magic "DTUUNDO1" | version u32 | block size u32 | volume size u64 |
//!                   era u64 | begin seq u64 | begin time_us u64 | reserved 12 | crc32 of 0..60
//! records:          magic "UNDR" | kind u8 (1 data, 2 zeros) | reserved 3 | seq u64 |
//!                   first block u64 | blocks u32 | data length u32 | reserved u32 |
//!                   crc32 of the 36 bytes before it and of the data | data
//! ```
//!
//! A data record holds the old bytes of `blocks` whole blocks (the last
//! block of the volume may be short), at most [`MAX_RECORD_DATA`] bytes; a
//! zeros record (tombstone) holds none. A segment is created whole (header
//! written to `NAME.tmp`, synced, renamed, directory synced), then records
//! are appended, each in one positional write, and made durable by the
//! journal's `sync`. So only records after the last sync can be torn: a bad
//! record with no valid record anywhere after it is a torn tail; a bad
//! record followed by a valid one is damage.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use dtu_proto::Seq;

use super::error::UndoError;

pub const HEADER_LEN: u64 = 64;
pub const RECORD_HEADER: usize = 40;
/// Largest data record: 1 MiB of old contents.
pub const MAX_RECORD_DATA: usize = 1 << 20;

const MAGIC: &[u8; 8] = b"DTUUNDO1";
const RECORD_MAGIC: &[u8; 4] = b"UNDR";
const VERSION: u32 = 1;
pub const KIND_DATA: u8 = 1;
pub const KIND_ZERO: u8 = 2;

/// What a segment's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub block_size: u64,
    pub volume_size: u64,
    pub era: u64,
    pub begin_seq: Seq,
    pub time_us: u64,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut b = [0u8; HEADER_LEN as usize];
        b[..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(self.block_size as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.volume_size.to_le_bytes());
        b[24..32].copy_from_slice(&self.era.to_le_bytes());
        b[32..40].copy_from_slice(&self.begin_seq.to_le_bytes());
        b[40..48].copy_from_slice(&self.time_us.to_le_bytes());
        let crc = crc32fast::hash(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<SegmentHeader, String> {
        if b.len() < HEADER_LEN as usize {
            return Err(format!(
                "the file is {} bytes, shorter than the {HEADER_LEN}-byte header",
                b.len()
            ));
        }
        if &b[..8] != MAGIC {
            return Err("it does not start with \"DTUUNDO1\": not an undo segment".into());
        }
        if crc32fast::hash(&b[..60]) != u32_at(b, 60) {
            return Err("the header checksum does not match".into());
        }
        let version = u32_at(b, 8);
        if version != VERSION {
            return Err(format!(
                "format version {version}; this build knows version {VERSION}"
            ));
        }
        Ok(SegmentHeader {
            block_size: u64::from(u32_at(b, 12)),
            volume_size: u64_at(b, 16),
            era: u64_at(b, 24),
            begin_seq: u64_at(b, 32),
            time_us: u64_at(b, 40),
        })
    }
}

/// One record's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: u8,
    pub seq: Seq,
    pub first_block: u64,
    pub blocks: u32,
    pub data_len: u32,
}

impl RecordHeader {
    /// The record: header with its checksum over header and `data`, then `data`.
    pub fn encode(&self, data: &[u8]) -> Vec<u8> {
        let mut b = Vec::with_capacity(RECORD_HEADER + data.len());
        b.extend_from_slice(RECORD_MAGIC);
        b.push(self.kind);
        b.extend_from_slice(&[0; 3]);
        b.extend_from_slice(&self.seq.to_le_bytes());
        b.extend_from_slice(&self.first_block.to_le_bytes());
        b.extend_from_slice(&self.blocks.to_le_bytes());
        b.extend_from_slice(&self.data_len.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(&b);
        h.update(data);
        b.extend_from_slice(&h.finalize().to_le_bytes());
        b.extend_from_slice(data);
        b
    }

    /// Parses and bounds a record header against the volume's geometry;
    /// answers the header and the checksum it carries.
    fn decode(b: &[u8; RECORD_HEADER], geo: &Geometry) -> Result<(RecordHeader, u32), String> {
        if &b[..4] != RECORD_MAGIC {
            return Err("no record starts here".into());
        }
        let r = RecordHeader {
            kind: b[4],
            seq: u64_at(b, 8),
            first_block: u64_at(b, 16),
            blocks: u32_at(b, 24),
            data_len: u32_at(b, 28),
        };
        if b[5..8] != [0; 3] || u32_at(b, 32) != 0 {
            return Err("reserved bytes are not zero".into());
        }
        if r.blocks == 0 {
            return Err("the record saves no block".into());
        }
        let end = r.first_block.checked_add(u64::from(r.blocks));
        if end.is_none_or(|end| end > geo.blocks) {
            return Err(format!(
                "blocks {}+{} lie outside the volume's {} blocks",
                r.first_block, r.blocks, geo.blocks
            ));
        }
        let want = match r.kind {
            KIND_DATA => geo.bytes_of(r.first_block, u64::from(r.blocks)),
            KIND_ZERO => 0,
            k => return Err(format!("unknown record kind {k}")),
        };
        if u64::from(r.data_len) != want || want > MAX_RECORD_DATA as u64 {
            return Err(format!(
                "data length {} does not fit {} blocks of kind {} (expected {want}, at most {MAX_RECORD_DATA})",
                r.data_len, r.blocks, r.kind
            ));
        }
        Ok((r, u32_at(b, 36)))
    }
}

/// The volume's shape, as the journal sees it.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub block_size: u64,
    pub volume_size: u64,
    pub blocks: u64,
}

impl Geometry {
    /// Bytes held by `n` blocks from `first` (the volume's last block may be short).
    pub fn bytes_of(&self, first: u64, n: u64) -> u64 {
        let start = first.saturating_mul(self.block_size);
        let end = first
            .saturating_add(n)
            .saturating_mul(self.block_size)
            .min(self.volume_size);
        end.saturating_sub(start)
    }
}

/// A record found valid by [`scan`]: where its data starts in the file.
#[derive(Debug, Clone, Copy)]
pub struct Found {
    pub header: RecordHeader,
    pub data_at: u64,
}

/// What [`scan`] found after the last valid record.
#[derive(Debug, Clone)]
pub struct Torn {
    pub offset: u64,
    pub file_len: u64,
    pub what: String,
}

/// The result of a scan: valid records, where the valid part ends, and a
/// torn tail after it if any.
#[derive(Debug)]
pub struct Scan {
    pub records: Vec<Found>,
    pub end: u64,
    pub torn: Option<Torn>,
}

/// Reads the record at `at`; `Ok(None)` past the end, `Err(what)` if it is
/// not a valid record (short, malformed or failing its checksum).
fn read_record(
    file: &File,
    at: u64,
    file_len: u64,
    geo: &Geometry,
    data: &mut Vec<u8>,
) -> Result<Option<(RecordHeader, u64)>, ReadFault> {
    if at >= file_len {
        return Ok(None);
    }
    if file_len - at < RECORD_HEADER as u64 {
        return Err(ReadFault::Bad(format!(
            "only {} bytes remain, less than a record header",
            file_len - at
        )));
    }
    let mut hb = [0u8; RECORD_HEADER];
    file.read_exact_at(&mut hb, at).map_err(ReadFault::Io)?;
    let (h, crc) = RecordHeader::decode(&hb, geo).map_err(ReadFault::Bad)?;
    let data_at = at + RECORD_HEADER as u64;
    let len = u64::from(h.data_len);
    if file_len - data_at < len {
        return Err(ReadFault::Bad(format!(
            "its {len} bytes of data run past the end of the file"
        )));
    }
    data.resize(len as usize, 0);
    file.read_exact_at(data, data_at).map_err(ReadFault::Io)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&hb[..36]);
    hasher.update(data);
    if hasher.finalize() != crc {
        return Err(ReadFault::Bad("its checksum does not match".into()));
    }
    Ok(Some((h, data_at)))
}

enum ReadFault {
    Io(std::io::Error),
    Bad(String),
}

/// Scans the records of the segment `file` (whose header was checked),
/// verifying every checksum; a bad record is a torn tail if no valid record
/// starts anywhere after it, else [`UndoError::Damaged`].
pub fn scan(file: &File, path: &Path, geo: &Geometry) -> Result<Scan, UndoError> {
    let io = |source| UndoError::Io {
        path: path.to_path_buf(),
        what: "cannot read the segment",
        source,
    };
    let file_len = file.metadata().map_err(io)?.len();
    let mut records = Vec::new();
    let mut data = Vec::new();
    let mut at = HEADER_LEN;
    loop {
        match read_record(file, at, file_len, geo, &mut data) {
            Ok(None) => {
                return Ok(Scan {
                    records,
                    end: at,
                    torn: None,
                })
            }
            Ok(Some((header, data_at))) => {
                records.push(Found { header, data_at });
                at = data_at + u64::from(header.data_len);
            }
            Err(ReadFault::Io(e)) => return Err(io(e)),
            Err(ReadFault::Bad(what)) => {
                if let Some(next) = valid_record_after(file, at + 1, file_len, geo).map_err(io)? {
                    return Err(UndoError::Damaged {
                        path: path.to_path_buf(),
                        offset: at,
                        what: format!(
                            "{what}, and a valid record follows at byte {next}, so this is not a torn last write"
                        ),
                    });
                }
                return Ok(Scan {
                    records,
                    end: at,
                    torn: Some(Torn {
                        offset: at,
                        file_len,
                        what,
                    }),
                });
            }
        }
    }
}

/// The offset of the first valid record starting at or after `from`.
fn valid_record_after(
    file: &File,
    from: u64,
    file_len: u64,
    geo: &Geometry,
) -> std::io::Result<Option<u64>> {
    const WINDOW: usize = 64 << 10;
    let mut buf = vec![0u8; WINDOW];
    let mut data = Vec::new();
    let mut base = from;
    while base < file_len {
        let n = ((file_len - base) as usize).min(WINDOW);
        file.read_exact_at(&mut buf[..n], base)?;
        for i in 0..n {
            if buf[i..n].starts_with(RECORD_MAGIC) || (n - i < 4 && buf[i] == RECORD_MAGIC[0]) {
                match read_record(file, base + i as u64, file_len, geo, &mut data) {
                    Ok(Some(_)) => return Ok(Some(base + i as u64)),
                    Err(ReadFault::Io(e)) => return Err(e),
                    _ => {}
                }
            }
        }
        base += n as u64;
    }
    Ok(None)
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
