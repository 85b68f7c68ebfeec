//! Recovery scan: walks the ring from the superblock's tail and returns every
//! record that is provably ours, intact and in order, stopping at the first
//! byte that is not. Works on untrusted bytes: every length and position read
//! from the store is bounds-checked before use, so a truncated, zeroed or
//! bit-flipped file yields a correct prefix, never a wrong record or a panic.
//!
//! Where the scan stops is either the end of what was written (a torn,
//! unflushed tail after a crash: nothing answered was lost) or damage to
//! records that had been durable (answered writes lost). [`evidence`] tells
//! the two apart: every record carries the durable frontier at the moment
//! it was appended, and the superblock the one at its last write; if any of
//! them vouches that bytes past the stop were durable, the stop is damage.

use super::format::{
    max_payload, record_crc, record_size, RawHeader, Superblock, REC_HEADER_LEN, REC_MAGIC,
    RING_OFFSET, WRAP_MAGIC,
};
use super::{Lsn, RecordHeader, Seq};

/// Read access to the bytes recovery walks. A store shorter than its
/// superblock says (a truncated file) reads as zeros past its end.
pub(crate) trait ScanView {
    fn read(&self, off: usize, buf: &mut [u8]);
}

/// A store seen as `len` bytes, zero past its real end.
pub(crate) struct Padded<'a, S: ?Sized> {
    pub store: &'a S,
    pub real_len: usize,
}

impl<S: super::store::NvStore + ?Sized> ScanView for Padded<'_, S> {
    fn read(&self, off: usize, buf: &mut [u8]) {
        buf.fill(0);
        if off >= self.real_len {
            return;
        }
        let n = buf.len().min(self.real_len - off);
        self.store.read(off, &mut buf[..n]);
    }
}

/// One record found by the scan, with its place in the log.
pub(crate) struct Found {
    pub hdr: RecordHeader,
    pub payload: Vec<u8>,
    pub start: Lsn,
    pub end: Lsn,
}

/// Result of a scan.
pub(crate) struct Scan {
    /// Records of complete seqs, in log order.
    pub records: Vec<Found>,
    /// Just past the last record of the last complete seq: where appends resume.
    pub end_lsn: Lsn,
    /// Set when the scan stopped on evidence of a torn or corrupt write, as
    /// opposed to the plain end of the log (unwritten or stale bytes).
    pub stopped: Option<String>,
    /// How the scan ended, always set (for logs).
    pub end: String,
    /// A trailing seq whose chunks were not all present, dropped.
    pub dropped_incomplete: Option<Seq>,
    /// Highest epoch seen on any accepted record or wrap marker.
    pub max_epoch: u32,
    /// Bytes of log walked from the tail.
    pub scanned: u64,
    /// The lsn of the first byte the scan did not accept.
    pub stop_lsn: Lsn,
    /// The seq the scan expected next there (the first one not recovered).
    pub first_unrecovered: Seq,
    /// Epoch of the last accepted record (0: none).
    pub last_epoch: u32,
}

/// What valid records past the stop say about it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Evidence {
    /// The furthest durable frontier vouched for (by a record past the stop
    /// or by the superblock).
    pub durable_frontier: Lsn,
    /// Valid records of this nvbuf found past the stop.
    pub records_beyond: u64,
    /// The highest seq among them.
    pub highest_seq_beyond: Option<Seq>,
    /// Just past the last of them (the stop when there are none).
    pub end_beyond: Lsn,
}

enum Stop {
    /// End of the log: nothing of ours was damaged here.
    Clean(String),
    /// A record of ours that is damaged or contradicts the log.
    Damaged(String),
}

struct Pending {
    seq: Seq,
    next_chunk: u32,
    chunk_count: u32,
    epoch: u32,
}

pub(crate) fn scan<S: ScanView + ?Sized>(store: &S, sb: &Superblock) -> Scan {
    let r = sb.ring_len;
    let limit = sb.tail_lsn + r;
    let maxp = max_payload(r);
    let mut lsn = sb.tail_lsn;
    let mut records: Vec<Found> = Vec::new();
    let mut pending: Vec<Found> = Vec::new();
    let mut cur: Option<Pending> = None;
    let mut next_seq = sb.tail_seq;
    let mut last_epoch = 0u32;
    let mut max_epoch = 0u32;
    let mut complete_end = lsn;

    let stop = loop {
        if lsn >= limit {
            break Stop::Clean("scanned a full ring".into());
        }
        let pos = (lsn % r) as usize;
        let rem = r - pos as u64;
        if rem < REC_HEADER_LEN as u64 {
            lsn += rem;
            continue;
        }
        let at = RING_OFFSET + pos;
        let mut hb = [0u8; REC_HEADER_LEN];
        store.read(at, &mut hb);
        if hb.iter().all(|&b| b == 0) {
            break Stop::Clean(format!("unwritten space at ring offset {pos}"));
        }
        let h = RawHeader::decode(&hb);
        if h.magic != REC_MAGIC && h.magic != WRAP_MAGIC {
            break Stop::Clean(format!("no record header at ring offset {pos}"));
        }
        // A header that claims to be exactly here is ours; anything else is
        // a leftover of an earlier lap (or noise) and simply ends the log.
        let ours = h.lsn == lsn;
        if h.instance != sb.instance {
            break if ours {
                Stop::Damaged(format!(
                    "torn record header (foreign instance) at ring offset {pos} (lsn {lsn})"
                ))
            } else {
                Stop::Clean(format!("record of another nvbuf at ring offset {pos}"))
            };
        }
        let damaged = |what: String| {
            if ours {
                Stop::Damaged(format!("{what} at ring offset {pos} (lsn {lsn})"))
            } else {
                Stop::Clean(format!("stale bytes at ring offset {pos}"))
            }
        };
        if h.magic == WRAP_MAGIC {
            if h.durable_back != 0 || h.payload_len != 0 || record_crc(&hb, &[]) != h.crc {
                break damaged("torn or corrupt wrap marker".into());
            }
            if !ours {
                break Stop::Clean(format!("stale wrap marker at ring offset {pos}"));
            }
            if h.epoch > sb.epoch {
                break Stop::Damaged(format!(
                    "wrap marker of epoch {} newer than the superblock's {} at ring offset {pos}",
                    h.epoch, sb.epoch
                ));
            }
            if h.epoch < last_epoch {
                break Stop::Clean(format!(
                    "wrap marker of an older epoch at ring offset {pos}"
                ));
            }
            last_epoch = h.epoch;
            max_epoch = max_epoch.max(h.epoch);
            lsn += rem;
            continue;
        }
        let plen = h.payload_len as usize;
        let size = record_size(plen);
        if plen > maxp || size > rem || lsn + size > limit {
            break damaged(format!("record header with impossible length {plen}"));
        }
        let mut payload = vec![0u8; plen];
        store.read(at + REC_HEADER_LEN, &mut payload);
        if record_crc(&hb, &payload) != h.crc {
            break damaged("torn or corrupt record (crc mismatch)".into());
        }
        if !ours {
            break Stop::Clean(format!(
                "record from an earlier lap (lsn {}) at ring offset {pos}",
                h.lsn
            ));
        }
        if h.epoch > sb.epoch {
            break Stop::Damaged(format!(
                "record of epoch {} newer than the superblock's {} at ring offset {pos}",
                h.epoch, sb.epoch
            ));
        }
        if h.epoch < last_epoch {
            // Left over from a log tail that an earlier recovery dropped and a
            // later epoch has since rewritten only partly.
            break Stop::Clean(format!(
                "record of older epoch {} after epoch {last_epoch} at ring offset {pos}",
                h.epoch
            ));
        }
        if h.chunk_count == 0 || h.chunk_index >= h.chunk_count {
            break Stop::Damaged(format!(
                "record with chunk {}/{} at ring offset {pos}",
                h.chunk_index, h.chunk_count
            ));
        }
        let follows = match &cur {
            Some(p) => {
                h.seq == p.seq
                    && h.chunk_index == p.next_chunk
                    && h.chunk_count == p.chunk_count
                    && h.epoch == p.epoch
            }
            None => h.seq == next_seq && h.chunk_index == 0,
        };
        if !follows {
            let expected = match &cur {
                Some(p) => format!(
                    "seq {} chunk {}/{} epoch {}",
                    p.seq, p.next_chunk, p.chunk_count, p.epoch
                ),
                None => format!("seq {next_seq} chunk 0"),
            };
            let found = format!(
                "seq {} chunk {}/{} epoch {}",
                h.seq, h.chunk_index, h.chunk_count, h.epoch
            );
            let newer_epoch = cur.as_ref().is_some_and(|p| h.epoch > p.epoch);
            let msg = format!("expected {expected}, found {found} at ring offset {pos}");
            // A newer epoch in the middle of a seq is a rewrite that overtook a
            // lost chunk of a dropped tail: the crash lost unflushed writes.
            break if newer_epoch {
                Stop::Damaged(format!("log ends mid-seq: {msg}"))
            } else {
                Stop::Damaged(format!("discontinuity: {msg}"))
            };
        }
        last_epoch = h.epoch;
        max_epoch = max_epoch.max(h.epoch);
        let hdr = RecordHeader {
            seq: h.seq,
            epoch: h.epoch,
            offset: h.offset,
            length: h.length,
            flags: h.flags,
            chunk_index: h.chunk_index,
            chunk_count: h.chunk_count,
        };
        pending.push(Found {
            hdr,
            payload,
            start: lsn,
            end: lsn + size,
        });
        lsn += size;
        if h.chunk_index + 1 == h.chunk_count {
            records.append(&mut pending);
            complete_end = lsn;
            next_seq = h.seq + 1;
            cur = None;
        } else {
            cur = Some(Pending {
                seq: h.seq,
                next_chunk: h.chunk_index + 1,
                chunk_count: h.chunk_count,
                epoch: h.epoch,
            });
        }
    };
    let dropped_incomplete = pending.first().map(|f| f.hdr.seq);
    let (end, stopped) = match stop {
        Stop::Clean(s) => (s, None),
        Stop::Damaged(s) => (s.clone(), Some(s)),
    };
    Scan {
        records,
        end_lsn: complete_end,
        stopped,
        end,
        dropped_incomplete,
        max_epoch,
        scanned: lsn - sb.tail_lsn,
        stop_lsn: lsn,
        first_unrecovered: next_seq,
        last_epoch,
    }
}

/// Looks past `from` (where the scan stopped) for records of this nvbuf
/// that are intact, sit exactly at their own lsn in the current lap and are
/// not older than `min_epoch` (the last accepted record's: older ones are
/// leftovers of a tail an earlier recovery already dropped), and gathers the
/// durable frontier they vouch for. A record that does not match is stepped
/// over eight bytes at a time, since after damage nothing says where the
/// next record starts.
pub(crate) fn evidence<S: ScanView + ?Sized>(
    store: &S,
    sb: &Superblock,
    from: Lsn,
    min_epoch: u32,
) -> Evidence {
    let r = sb.ring_len;
    let limit = sb.tail_lsn + r;
    let maxp = max_payload(r);
    let mut ev = Evidence {
        durable_frontier: sb.durable_lsn,
        end_beyond: from,
        ..Evidence::default()
    };
    let align = super::format::REC_ALIGN as u64;
    let mut lsn = from.next_multiple_of(align);
    let mut hb = [0u8; REC_HEADER_LEN];
    while lsn < limit {
        let pos = (lsn % r) as usize;
        let rem = r - pos as u64;
        if rem < REC_HEADER_LEN as u64 {
            lsn += rem;
            continue;
        }
        store.read(RING_OFFSET + pos, &mut hb[..4]);
        let magic = u32::from_le_bytes([hb[0], hb[1], hb[2], hb[3]]);
        if magic != REC_MAGIC && magic != WRAP_MAGIC {
            lsn += align;
            continue;
        }
        store.read(RING_OFFSET + pos, &mut hb);
        let h = RawHeader::decode(&hb);
        let plausible = h.lsn == lsn
            && h.instance == sb.instance
            && h.epoch >= min_epoch
            && h.epoch <= sb.epoch;
        if !plausible {
            lsn += align;
            continue;
        }
        if magic == WRAP_MAGIC {
            if h.payload_len == 0 && record_crc(&hb, &[]) == h.crc {
                lsn += rem;
            } else {
                lsn += align;
            }
            continue;
        }
        let plen = h.payload_len as usize;
        let size = record_size(plen);
        if plen > maxp || size > rem || lsn + size > limit {
            lsn += align;
            continue;
        }
        let mut payload = vec![0u8; plen];
        store.read(RING_OFFSET + pos + REC_HEADER_LEN, &mut payload);
        if record_crc(&hb, &payload) != h.crc {
            lsn += align;
            continue;
        }
        ev.records_beyond += 1;
        ev.highest_seq_beyond = ev.highest_seq_beyond.max(Some(h.seq));
        if let Some(f) = h.durable_frontier() {
            ev.durable_frontier = ev.durable_frontier.max(f);
        }
        lsn += size;
        ev.end_beyond = lsn;
    }
    ev
}
