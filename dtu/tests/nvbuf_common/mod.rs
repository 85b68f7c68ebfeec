//! Shared helpers for the nvbuf integration tests: deterministic record
//! contents (so any recovered record can be checked on its own), and checks
//! that a recovery is a genuine, gap-free prefix.
#![allow(dead_code)]

use dtu::nvbuf::{Lsn, MemStore, NvStore, Nvbuf, NvbufConfig, NvbufError, RecordHeader, Seq, Wait};

pub const VOL: [u8; 16] = *b"nvbuf-test-vol-1";
pub const MIB: usize = 1 << 20;

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Payload bytes determined by (seq, chunk, epoch, len).
pub fn payload(seq: Seq, chunk: u32, epoch: u32, len: usize) -> Vec<u8> {
    let mut s = splitmix(seq ^ ((chunk as u64) << 40) ^ ((epoch as u64) << 52));
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        s = splitmix(s);
        v.extend_from_slice(&s.to_le_bytes());
    }
    v.truncate(len);
    v
}

pub fn header(seq: Seq, chunk: u32, count: u32, epoch: u32, len: usize) -> RecordHeader {
    RecordHeader {
        seq,
        epoch,
        offset: seq.wrapping_mul(4096),
        length: len as u32,
        flags: (seq as u32).wrapping_mul(31) ^ chunk,
        chunk_index: chunk,
        chunk_count: count,
    }
}

/// Appends all chunks of `seq` with the given payload sizes; returns the lsn
/// past the last chunk.
pub fn append_seq<S: NvStore>(
    nv: &Nvbuf<S>,
    seq: Seq,
    sizes: &[usize],
    deadline: Option<std::time::Instant>,
) -> Result<Lsn, NvbufError> {
    let mut lsn = 0;
    for (i, &len) in sizes.iter().enumerate() {
        let h = header(seq, i as u32, sizes.len() as u32, nv.epoch(), len);
        lsn = nv.append(
            &h,
            &payload(seq, i as u32, nv.epoch(), len),
            std::time::Instant::now(),
            deadline.map_or(Wait::Forever, Wait::Until),
        )?;
    }
    Ok(lsn)
}

/// Whether a recovered record is exactly what the helpers would have written.
pub fn genuine(h: &RecordHeader, p: &[u8]) -> bool {
    *h == header(h.seq, h.chunk_index, h.chunk_count, h.epoch, p.len())
        && p == payload(h.seq, h.chunk_index, h.epoch, p.len()).as_slice()
}

/// Checks that records are genuine, complete seqs with dense seq numbers;
/// returns the seqs (one per seq).
pub fn check_prefix(records: &[(RecordHeader, Vec<u8>)]) -> Vec<Seq> {
    let mut seqs = Vec::new();
    let mut i = 0;
    while i < records.len() {
        let (h0, _) = &records[i];
        assert_eq!(
            h0.chunk_index, 0,
            "seq {} does not start at chunk 0",
            h0.seq
        );
        if let Some(&last) = seqs.last() {
            assert_eq!(h0.seq, last + 1, "gap in recovered seqs");
        }
        for c in 0..h0.chunk_count {
            let (h, p) = records
                .get(i + c as usize)
                .unwrap_or_else(|| panic!("seq {} incomplete", h0.seq));
            assert_eq!(
                (h.seq, h.chunk_index, h.chunk_count),
                (h0.seq, c, h0.chunk_count)
            );
            assert_eq!(h.epoch, h0.epoch, "mixed epochs within seq {}", h.seq);
            assert!(
                genuine(h, p),
                "wrong record content for seq {} chunk {c}",
                h.seq
            );
        }
        seqs.push(h0.seq);
        i += h0.chunk_count as usize;
    }
    seqs
}

pub fn mem_nvbuf(size: usize) -> Nvbuf<MemStore> {
    Nvbuf::create_in(MemStore::new(size), &NvbufConfig::new(VOL)).expect("create in memory")
}
