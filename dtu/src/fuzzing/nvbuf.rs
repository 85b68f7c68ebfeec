//! The `nvbuf_recovery` fuzz target's checks: recovery of an nvbuf from
//! raw file bytes, and from a journal built through the real API and then
//! damaged, checked against what was appended. Uses [`MemStore`], whose
//! durable copy models what a crash keeps.

use std::time::Instant;

use crate::nvbuf::format::{
    FORMAT_VERSION_1, MIN_SIZE, RING_OFFSET, SB_LEN, SB_LEN_V1, SB_SLOT_LEN,
};
use crate::nvbuf::{MemStore, Nvbuf, NvbufConfig, NvbufError, RecordHeader, Recovery, Wait};

/// The volume id every fuzzed nvbuf belongs to.
pub const NVBUF_VOLUME: [u8; 16] = *b"dtu-fuzz-volume!";

/// Mode byte (first input byte) bits.
const MODE_STRUCTURED: u8 = 1;
/// Raw mode: recompute both superblock checksums before opening, so the
/// fuzzer can move superblock fields without forging a crc32.
const MODE_FIX_SB_CRC: u8 = 2;

/// Recovers an nvbuf from fuzzed bytes; returns how many records the fuzzed
/// image recovered (0 when it was refused with an error).
///
/// The first byte chooses the mode. Even: **raw**, the rest is the start of
/// the file image, zero-filled to the 4 MiB minimum (a smaller store cannot
/// hold a valid superblock, but the superblock may declare a ring as small
/// as 8 bytes, so a short input can hold a whole ring). Odd:
/// **structured**, the input describes a journal to build (seqs, chunk
/// sizes, an optional fill that puts the log across the ring's end, a
/// reopen, releases, what survives the crash) and then damage to its image
/// (xor bytes in the superblocks, in the log or anywhere, zero a range,
/// truncate); see `build_and_damage`.
///
/// Checks, panicking on a violation: opening returns a typed error or a
/// recovery whose records are complete seqs with dense seq numbers, one
/// epoch per seq, epochs not above the superblock's; after it, a new
/// record appends, syncs and is found, after the recovered ones, by a
/// reopen of what was flushed. In the structured
/// mode also: every recovered record is one that was appended, with its
/// payload, the recovered seqs are a run of the appended ones, and every
/// synced, unreleased seq is recovered unless the damage touched the
/// superblocks or the log.
pub fn nvbuf_recovery(data: &[u8]) -> usize {
    let Some((&mode, rest)) = data.split_first() else {
        return 0;
    };
    if mode & MODE_STRUCTURED != 0 {
        return build_and_damage(rest);
    }
    let mut image = rest.to_vec();
    if image.len() < MIN_SIZE as usize {
        image.resize(MIN_SIZE as usize, 0);
    }
    if mode & MODE_FIX_SB_CRC != 0 {
        for slot in [0, SB_SLOT_LEN] {
            fix_superblock_crc(&mut image[slot..slot + SB_LEN]);
        }
    }
    match Nvbuf::open_in(MemStore::from_image(image), NVBUF_VOLUME) {
        Ok((nv, rec)) => {
            check_recovery(&rec);
            check_appends_after(nv, &rec);
            rec.records.len()
        }
        Err(e) => {
            check_open_error(&e);
            0
        }
    }
}

/// Recomputes the crc of a superblock slot's used bytes in place (the
/// layout in [`crate::nvbuf`]: crc at 12..16 over the other bytes).
fn fix_superblock_crc(sb: &mut [u8]) {
    let version = u32::from_le_bytes([sb[8], sb[9], sb[10], sb[11]]);
    let len = if version == FORMAT_VERSION_1 {
        SB_LEN_V1
    } else {
        SB_LEN
    };
    let mut h = crc32fast::Hasher::new();
    h.update(&sb[0..12]);
    h.update(&sb[16..len]);
    let crc = h.finalize();
    sb[12..16].copy_from_slice(&crc.to_le_bytes());
}

/// Errors that opening a damaged store may give: the format refusing it.
/// Anything else (I/O on a memory store, a lock) is a bug.
fn check_open_error(e: &NvbufError) {
    assert!(
        matches!(
            e,
            NvbufError::TooSmall { .. }
                | NvbufError::WrongVolume { .. }
                | NvbufError::UnknownVersion { .. }
                | NvbufError::NoValidSuperblock { .. }
                | NvbufError::SizeMismatch { .. }
                | NvbufError::EpochExhausted
        ),
        "unexpected error opening a damaged nvbuf: {e}"
    );
}

/// The recovery's own consistency, whatever the bytes were.
fn check_recovery(rec: &Recovery) {
    let r = &rec.records;
    let mut i = 0;
    while i < r.len() {
        let h0 = &r[i].0;
        assert_eq!(
            h0.chunk_index, 0,
            "seq {} starts at chunk {}",
            h0.seq, h0.chunk_index
        );
        assert!(h0.chunk_count >= 1);
        if i > 0 {
            assert_eq!(h0.seq, r[i - 1].0.seq + 1, "gap before seq {}", h0.seq);
        }
        let count = h0.chunk_count as usize;
        assert!(i + count <= r.len(), "seq {} incomplete", h0.seq);
        for (c, (h, _)) in r[i..i + count].iter().enumerate() {
            assert_eq!(
                (h.seq, h.chunk_index, h.chunk_count, h.epoch),
                (h0.seq, c as u32, h0.chunk_count, h0.epoch),
                "chunks of seq {} out of order or mixed",
                h0.seq
            );
        }
        i += count;
    }
    for w in r.windows(2) {
        assert!(w[0].0.epoch <= w[1].0.epoch, "epochs go backwards");
    }
    for (h, _) in r {
        assert!(
            h.epoch <= rec.previous_epoch,
            "record epoch above the superblock's"
        );
    }
    assert!(rec.epoch > rec.previous_epoch, "epoch not bumped");
    assert_eq!(rec.first_seq, r.first().map(|x| x.0.seq));
    assert_eq!(rec.last_seq, r.last().map(|x| x.0.seq));
    if let (Some(d), Some(l)) = (rec.dropped_incomplete, rec.last_seq) {
        assert_eq!(d, l + 1, "dropped seq does not follow the last recovered");
    }
}

/// After a recovery: a new seq appends where the log ended, and reopening
/// what was flushed gives the recovered records followed by the new one.
fn check_appends_after(nv: Nvbuf<MemStore>, rec: &Recovery) {
    let seq = nv.next_seq();
    if let Some(last) = rec.last_seq {
        assert_eq!(seq, last + 1, "next seq after recovery");
    }
    let hdr = RecordHeader {
        seq,
        epoch: nv.epoch(),
        offset: 4096,
        length: 5,
        flags: 0x5a,
        chunk_index: 0,
        chunk_count: 1,
    };
    let lsn = match nv.append(&hdr, b"after", Instant::now(), Wait::No) {
        Ok(lsn) => lsn,
        // A recovered log can fill a small ring, and the ring a superblock
        // declares may be too small for any payload: nothing more to check.
        Err(NvbufError::Full { .. } | NvbufError::TooLarge { .. }) => return,
        Err(e) => panic!("append after recovery failed: {e}"),
    };
    nv.sync_to(lsn).expect("sync after recovery");
    let mut expected = rec.records.clone();
    expected.push((hdr, b"after".to_vec()));
    // Only what was flushed: recovery flushed the whole file and the new
    // record was synced, so a machine crash now must lose nothing.
    let image = nv.store().crash_image();
    drop(nv);
    match Nvbuf::open_in(MemStore::from_image(image), NVBUF_VOLUME) {
        Ok((_, again)) => {
            check_recovery(&again);
            assert!(
                again.records.starts_with(&expected),
                "reopen lost records: {} recovered and 1 appended, reopen found {} ({})",
                rec.records.len(),
                again.records.len(),
                again.end
            );
        }
        Err(NvbufError::EpochExhausted) => {}
        Err(e) => panic!("reopen after recovery failed: {e}"),
    }
}

/// Reads the structured description; past its end every value is zero.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Deterministic payload bytes of a (seq, chunk).
fn payload(seq: u64, chunk: u32, len: usize) -> Vec<u8> {
    let mut x = seq
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(u64::from(chunk) << 32 | 1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// One appended record and whether it was made durable.
struct Appended {
    hdr: RecordHeader,
    payload: Vec<u8>,
    synced: bool,
}

/// A journal built from the input, as its image and the model of it.
struct Built {
    image: Vec<u8>,
    appended: Vec<Appended>,
    ring: u64,
    /// Where the fuzzed seqs start in the log (after the fill).
    log_start: u64,
    /// The durable superblock's tail and the head: the log recovery reads.
    tail: u64,
    head: u64,
    first_unreleased: u64,
}

/// What damage reached, to decide what recovery must still find.
#[derive(Default)]
struct Reached {
    truncated: bool,
    superblock: bool,
    log: bool,
}

/// The structured mode of [`nvbuf_recovery`]. Input layout (bytes):
/// `fill` (bit 0: put the log across the ring's end, `gap` from the next
/// u16), `seqs` (1..=6), per seq `chunks` (1..=3) and per chunk a length
/// (x3 bytes), `reopen` (reopen before that seq index), `release` (seqs
/// released and checkpointed), `unsynced` (last seqs not synced, 0..=2),
/// `image` (0: working bytes, 1: only flushed pages, 2+: torn sectors with
/// that seed), then damage ops of 4 bytes `[op, a, b, c]` to the end (see
/// [`damage`]).
fn build_and_damage(data: &[u8]) -> usize {
    let mut inp = Input(data);
    let mut built = build(&mut inp);
    let reached = damage(&mut inp, &mut built);
    let (nv, rec) = match Nvbuf::open_in(MemStore::from_image(built.image), NVBUF_VOLUME) {
        Ok(ok) => ok,
        Err(e) => {
            check_open_error(&e);
            assert!(
                reached.truncated || reached.superblock,
                "an nvbuf with intact superblocks was refused: {e}"
            );
            return 0;
        }
    };
    if reached.truncated {
        let loss = rec
            .loss
            .as_ref()
            .expect("a truncated nvbuf opened without reporting a loss");
        assert!(loss.cause.contains("truncated"), "{loss}");
    }
    check_recovery(&rec);
    let appended = &built.appended;
    // Every record is one that was appended, in a run of whole seqs.
    if let Some((first, _)) = rec.records.first() {
        let at = appended
            .iter()
            .position(|a| a.hdr.seq == first.seq && a.hdr.chunk_index == 0)
            .unwrap_or_else(|| panic!("recovered seq {} was never appended", first.seq));
        assert!(
            rec.records.len() <= appended.len() - at,
            "more records recovered than appended"
        );
        for ((h, p), a) in rec.records.iter().zip(&appended[at..]) {
            assert_eq!(*h, a.hdr, "recovered header differs from the appended one");
            assert!(*p == a.payload, "seq {} payload differs", h.seq);
        }
    }
    // Nothing synced and unreleased is lost unless the damage reached the
    // superblocks or the log.
    if !reached.log && !reached.superblock {
        let unreleased = |seq: u64| seq >= built.first_unreleased;
        let must: Vec<_> = appended
            .iter()
            .filter(|a| a.synced && unreleased(a.hdr.seq))
            .map(|a| (a.hdr, a.payload.clone()))
            .collect();
        let got: Vec<_> = rec
            .records
            .iter()
            .filter(|(h, _)| unreleased(h.seq))
            .cloned()
            .collect();
        assert!(
            got.starts_with(&must),
            "recovery lost synced records: {} of {} found ({})",
            got.len(),
            must.len(),
            rec.end
        );
    }
    let n = rec.records.len();
    check_appends_after(nv, &rec);
    n
}

/// Builds the journal the input describes through the real API.
fn build(inp: &mut Input) -> Built {
    let cfg = NvbufConfig::new(NVBUF_VOLUME).with_size(MIN_SIZE);
    let mut nv = Nvbuf::create_in(MemStore::new(MIN_SIZE as usize), &cfg).expect("create");
    let ring = nv.capacity();
    let mut appended: Vec<Appended> = Vec::new();

    let fill = inp.u8();
    let gap = u64::from(inp.u16() % 2048) / 16 * 16;
    if fill & 1 != 0 {
        // Two records of half the ring less `gap`, released: the log then
        // starts `gap` bytes before the ring's end and wraps.
        let each = ((ring - gap) / 2 - 64) as usize;
        append_seq(&nv, &[each], &mut appended);
        let lsn = append_seq(&nv, &[each], &mut appended);
        nv.sync_to(lsn).expect("sync fill");
        nv.release_through(nv.next_seq() - 1);
        nv.checkpoint().expect("checkpoint");
        for a in &mut appended {
            a.synced = true;
        }
    }
    let seqs = 1 + usize::from(inp.u8() % 6);
    let plan: Vec<Vec<usize>> = (0..seqs)
        .map(|_| {
            let chunks = 1 + usize::from(inp.u8() % 3);
            (0..chunks).map(|_| usize::from(inp.u8()) * 3).collect()
        })
        .collect();
    let reopen = usize::from(inp.u8());
    let release = usize::from(inp.u8()) % (seqs + 1);
    let unsynced = usize::from(inp.u8() % 3).min(seqs);
    let image_kind = inp.u8();

    let first_fuzzed_seq = nv.next_seq();
    let log_start = nv.head_lsn();
    for (i, sizes) in plan.iter().enumerate() {
        if i == reopen {
            // A restart: the recovery must hand back every record so far,
            // and the next seqs carry the new epoch.
            let store = nv.into_store();
            let (again, rec) = Nvbuf::open_in(store, NVBUF_VOLUME).expect("reopen while building");
            check_recovery(&rec);
            let unreleased: Vec<_> = appended
                .iter()
                .filter(|a| a.hdr.seq >= first_fuzzed_seq)
                .map(|a| (a.hdr, a.payload.clone()))
                .collect();
            assert_eq!(rec.records, unreleased, "reopen while building");
            nv = again;
        }
        let lsn = append_seq(&nv, sizes, &mut appended);
        if i + unsynced < seqs {
            nv.sync_to(lsn).expect("sync");
            for a in &mut appended {
                a.synced = true;
            }
        }
    }
    if release > 0 {
        nv.release_through(first_fuzzed_seq + release as u64 - 1);
        nv.checkpoint().expect("checkpoint");
    }
    let stats = nv.stats(Instant::now());
    let image = match image_kind {
        0 => nv.store().working_image(),
        1 => nv.store().crash_image(),
        seed => nv.store().crash_image_torn(u64::from(seed)),
    };
    Built {
        image,
        appended,
        ring,
        log_start,
        tail: stats.head_lsn - stats.used_bytes,
        head: stats.head_lsn,
        first_unreleased: nv.first_unreleased_seq(),
    }
}

/// Appends one seq with chunks of the given payload lengths, without
/// waiting for space; returns the log position past it.
fn append_seq(nv: &Nvbuf<MemStore>, sizes: &[usize], appended: &mut Vec<Appended>) -> u64 {
    // The ring-filling records are megabytes: a plain fill is cheap.
    let big = sizes.iter().any(|&len| len > 1 << 16);
    let seq = nv.next_seq();
    let mut lsn = 0;
    for (i, &len) in sizes.iter().enumerate() {
        let hdr = RecordHeader {
            seq,
            epoch: nv.epoch(),
            offset: seq * 4096,
            length: len as u32,
            flags: seq as u32 ^ (i as u32) << 16,
            chunk_index: i as u32,
            chunk_count: sizes.len() as u32,
        };
        let p = if big {
            vec![seq as u8 ^ 0xf0; len]
        } else {
            payload(seq, i as u32, len)
        };
        lsn = nv
            .append(&hdr, &p, Instant::now(), Wait::No)
            .expect("append");
        appended.push(Appended {
            hdr,
            payload: p,
            synced: false,
        });
    }
    lsn
}

/// Applies the damage ops `[op, a, b, c]` left in the input to the image;
/// `x` is `a, b` as a little-endian u16. By `op % 4`: 0 xors `c` into the
/// superblock area at `x`, 1 into the log at `x` past its start, 2 anywhere
/// at `(op >> 2) << 16 | x`; 3 zeros `c + 1` bytes of the log at `x`, or
/// with bit 2 of `op` set truncates the file by `x + 1` bytes.
fn damage(inp: &mut Input, b: &mut Built) -> Reached {
    let (ring, log_start, tail, head) = (b.ring, b.log_start, b.tail, b.head);
    let len = b.image.len();
    let span = (head - log_start) as usize + 128;
    let in_log = |x: usize| RING_OFFSET + ((log_start + (x % span) as u64) % ring) as usize;
    // Whether a byte is one recovery reads: a used superblock byte, or in
    // the log from the durable tail to the head.
    let log_byte = |at: usize| {
        at >= RING_OFFSET && {
            let pos = (at - RING_OFFSET) as u64;
            (pos + ring - tail % ring) % ring < head - tail
        }
    };
    let sb_byte = |at: usize| at < RING_OFFSET && at % SB_SLOT_LEN < SB_LEN;
    let mut reached = Reached::default();
    let touch = |at: usize, reached: &mut Reached| {
        reached.log |= log_byte(at);
        reached.superblock |= sb_byte(at);
    };
    while !inp.is_empty() {
        let [op, lo, hi, c] = [inp.u8(), inp.u8(), inp.u8(), inp.u8()];
        let x = usize::from(u16::from_le_bytes([lo, hi]));
        let image = &mut b.image;
        let xor_at = match op % 4 {
            0 => Some(x % RING_OFFSET),
            1 => Some(in_log(x)),
            2 => Some((usize::from(op >> 2) << 16 | x) % len),
            _ => None,
        };
        if let Some(at) = xor_at {
            if c != 0 && at < image.len() {
                image[at] ^= c;
                touch(at, &mut reached);
            }
        } else if op & 4 == 0 {
            let start = in_log(x).min(image.len());
            let end = (start + usize::from(c) + 1).min(image.len());
            for (i, byte) in image[start..end].iter_mut().enumerate() {
                if *byte != 0 {
                    *byte = 0;
                    touch(start + i, &mut reached);
                }
            }
        } else {
            let keep = image.len().saturating_sub(x + 1);
            image.truncate(keep);
            reached.truncated = true;
        }
    }
    reached
}
