//! On-disk encoding of the nvbuf: the superblock and the record / wrap-marker
//! headers, with their checksums. Pure byte (de)serialisation with no I/O, so
//! that recovery can run every decode against untrusted bytes without panicking
//! (see the format description in [`super`]).

/// Magic at the start of each superblock slot.
pub const SB_MAGIC: [u8; 8] = *b"DTUNVBUF";
/// The on-disk format version this code writes. Version 1 (no metadata
/// area, no durable frontier in records) is still read.
pub const FORMAT_VERSION: u32 = 2;
/// The older version this code still opens.
pub const FORMAT_VERSION_1: u32 = 1;
/// Bytes reserved for each of the two superblock slots (one page each, so a
/// torn page can only ever damage one slot).
pub const SB_SLOT_LEN: usize = 4096;
/// Bytes of a superblock slot that carry data in version 1.
pub const SB_LEN_V1: usize = 128;
/// Bytes of the metadata area the nvbuf keeps for its owner (the primary's
/// generations and flags), written atomically with the superblock.
pub const META_LEN: usize = 256;
/// Bytes of a superblock slot that carry data (the rest stays zero).
pub const SB_LEN: usize = SB_LEN_V1 + META_LEN;
/// Offset of the ring: right after the two superblock slots.
pub const RING_OFFSET: usize = 2 * SB_SLOT_LEN;
/// Length of a record header and of a wrap marker.
pub const REC_HEADER_LEN: usize = 64;
/// Records start on multiples of this inside the ring.
pub const REC_ALIGN: usize = 8;
/// Smallest nvbuf file accepted.
pub const MIN_SIZE: u64 = 4 << 20;
/// Default nvbuf file size.
pub const DEFAULT_SIZE: u64 = 1 << 30;

/// Magic of a record header ("NVRC").
pub const REC_MAGIC: u32 = u32::from_le_bytes(*b"NVRC");
/// Magic of a wrap marker ("NVWR"): the rest of the ring lap is unused.
pub const WRAP_MAGIC: u32 = u32::from_le_bytes(*b"NVWR");

/// Decoded superblock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub volume_id: [u8; 16],
    pub epoch: u32,
    /// Random per-file value stamped into every record, so records of an
    /// earlier nvbuf formatted over the same file can never be taken as ours.
    pub instance: u32,
    pub generation: u64,
    pub file_size: u64,
    pub ring_offset: u64,
    pub ring_len: u64,
    pub tail_lsn: u64,
    pub tail_seq: u64,
    pub head_lsn: u64,
    pub next_seq: u64,
    /// First seq this nvbuf was created with.
    pub base_seq: u64,
    /// Everything below this lsn was durable when the superblock was
    /// written (0 in version 1): evidence recovery weighs against damage.
    pub durable_lsn: u64,
    /// The owner's metadata (see [`super::Nvbuf::set_meta`]); zeros in a
    /// version-1 file.
    pub meta: [u8; META_LEN],
}

/// Why a superblock slot could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SbProblem {
    /// Magic missing: unwritten, zeroed or not an nvbuf.
    NoMagic,
    /// Magic present but the checksum does not match: torn or corrupt.
    BadCrc,
    /// A well-formed superblock of a format version this code does not know.
    UnknownVersion(u32),
    /// Checksum fine but the fields contradict each other.
    Inconsistent(&'static str),
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}
fn get_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}
fn get_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

/// The crc of a superblock covers everything but its own field (bytes 12..16),
/// so magic, version and crc sit at the same place in every format version.
fn sb_crc(b: &[u8], len: usize) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&b[0..12]);
    h.update(&b[16..len]);
    h.finalize()
}

impl Superblock {
    pub fn encode(&self) -> [u8; SB_LEN] {
        let mut b = [0u8; SB_LEN];
        b[0..8].copy_from_slice(&SB_MAGIC);
        put_u32(&mut b, 8, FORMAT_VERSION);
        b[16..32].copy_from_slice(&self.volume_id);
        put_u32(&mut b, 32, self.epoch);
        put_u32(&mut b, 36, self.instance);
        put_u64(&mut b, 40, self.generation);
        put_u64(&mut b, 48, self.file_size);
        put_u64(&mut b, 56, self.ring_offset);
        put_u64(&mut b, 64, self.ring_len);
        put_u64(&mut b, 72, self.tail_lsn);
        put_u64(&mut b, 80, self.tail_seq);
        put_u64(&mut b, 88, self.head_lsn);
        put_u64(&mut b, 96, self.next_seq);
        put_u64(&mut b, 104, self.base_seq);
        put_u64(&mut b, 112, self.durable_lsn);
        b[SB_LEN_V1..SB_LEN].copy_from_slice(&self.meta);
        let crc = sb_crc(&b, SB_LEN);
        put_u32(&mut b, 12, crc);
        b
    }

    /// Decodes one slot. `b` may be any length; short input is `NoMagic`.
    pub fn decode(b: &[u8]) -> Result<Superblock, SbProblem> {
        if b.len() < SB_LEN_V1 || b[0..8] != SB_MAGIC {
            return Err(SbProblem::NoMagic);
        }
        let version = get_u32(b, 8);
        let len = if version == FORMAT_VERSION_1 || b.len() < SB_LEN {
            SB_LEN_V1
        } else {
            SB_LEN
        };
        let stored = get_u32(b, 12);
        if stored != sb_crc(b, len) {
            // An unknown version is reported as such when its checksum over
            // the version-1 bytes holds.
            if version > FORMAT_VERSION && stored == sb_crc(b, SB_LEN_V1) {
                return Err(SbProblem::UnknownVersion(version));
            }
            return Err(SbProblem::BadCrc);
        }
        if version != FORMAT_VERSION && version != FORMAT_VERSION_1 {
            return Err(SbProblem::UnknownVersion(version));
        }
        let mut meta = [0u8; META_LEN];
        if len == SB_LEN {
            meta.copy_from_slice(&b[SB_LEN_V1..SB_LEN]);
        }
        let mut volume_id = [0u8; 16];
        volume_id.copy_from_slice(&b[16..32]);
        let sb = Superblock {
            volume_id,
            epoch: get_u32(b, 32),
            instance: get_u32(b, 36),
            generation: get_u64(b, 40),
            file_size: get_u64(b, 48),
            ring_offset: get_u64(b, 56),
            ring_len: get_u64(b, 64),
            tail_lsn: get_u64(b, 72),
            tail_seq: get_u64(b, 80),
            head_lsn: get_u64(b, 88),
            next_seq: get_u64(b, 96),
            base_seq: get_u64(b, 104),
            durable_lsn: if len == SB_LEN { get_u64(b, 112) } else { 0 },
            meta,
        };
        sb.check()?;
        Ok(sb)
    }

    fn check(&self) -> Result<(), SbProblem> {
        if self.ring_offset != RING_OFFSET as u64 {
            return Err(SbProblem::Inconsistent("ring offset"));
        }
        if self.file_size < MIN_SIZE || self.file_size > (1u64 << 48) {
            return Err(SbProblem::Inconsistent("file size"));
        }
        if self.ring_len == 0
            || !self.ring_len.is_multiple_of(REC_ALIGN as u64)
            || self.ring_offset + self.ring_len > self.file_size
        {
            return Err(SbProblem::Inconsistent("ring length"));
        }
        // Lsns only grow by at most a few ring lengths per append; anything near
        // the top of u64 cannot have been written by us and would overflow.
        if self.tail_lsn > self.head_lsn
            || self.head_lsn > u64::MAX / 4
            || self.durable_lsn > self.head_lsn
        {
            return Err(SbProblem::Inconsistent("tail/head position"));
        }
        if !self.tail_lsn.is_multiple_of(REC_ALIGN as u64)
            || !self.head_lsn.is_multiple_of(REC_ALIGN as u64)
        {
            return Err(SbProblem::Inconsistent("unaligned position"));
        }
        if self.tail_seq > self.next_seq || self.base_seq > self.tail_seq {
            return Err(SbProblem::Inconsistent("seq bounds"));
        }
        if self.next_seq > u64::MAX / 2 {
            return Err(SbProblem::Inconsistent("seq range"));
        }
        Ok(())
    }
}

/// Header fields as stored in the ring (the public [`super::RecordHeader`] plus
/// what nvbuf adds: its log position, the file instance and the payload length).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawHeader {
    pub magic: u32,
    pub epoch: u32,
    pub lsn: u64,
    pub seq: u64,
    pub offset: u64,
    pub length: u32,
    pub flags: u32,
    pub chunk_index: u32,
    pub chunk_count: u32,
    pub payload_len: u32,
    pub instance: u32,
    /// How far back from this record's lsn everything was durable when it
    /// was appended, plus one (0: not known, as in version 1). Recovery uses
    /// it as evidence: a damaged record below a frontier some later record
    /// vouches for was durable, so its loss is a loss of answered writes
    /// and not a torn tail.
    pub durable_back: u32,
    pub crc: u32,
}

impl RawHeader {
    fn fill(&self, b: &mut [u8; REC_HEADER_LEN]) {
        put_u32(b, 0, self.magic);
        put_u32(b, 4, self.epoch);
        put_u64(b, 8, self.lsn);
        put_u64(b, 16, self.seq);
        put_u64(b, 24, self.offset);
        put_u32(b, 32, self.length);
        put_u32(b, 36, self.flags);
        put_u32(b, 40, self.chunk_index);
        put_u32(b, 44, self.chunk_count);
        put_u32(b, 48, self.payload_len);
        put_u32(b, 52, self.instance);
        put_u32(b, 56, self.durable_back);
    }

    /// Encodes a record header whose crc covers header bytes 0..60 and `payload`.
    pub fn encode_record(&self, payload: &[u8]) -> [u8; REC_HEADER_LEN] {
        let mut b = [0u8; REC_HEADER_LEN];
        self.fill(&mut b);
        let crc = record_crc(&b, payload);
        put_u32(&mut b, 60, crc);
        b
    }

    /// Decodes the fixed fields; the crc is only checked by [`record_crc`] once
    /// the payload has been read.
    pub fn decode(b: &[u8; REC_HEADER_LEN]) -> RawHeader {
        RawHeader {
            magic: get_u32(b, 0),
            epoch: get_u32(b, 4),
            lsn: get_u64(b, 8),
            seq: get_u64(b, 16),
            offset: get_u64(b, 24),
            length: get_u32(b, 32),
            flags: get_u32(b, 36),
            chunk_index: get_u32(b, 40),
            chunk_count: get_u32(b, 44),
            payload_len: get_u32(b, 48),
            instance: get_u32(b, 52),
            durable_back: get_u32(b, 56),
            crc: get_u32(b, 60),
        }
    }

    /// The durable frontier this record vouches for, if it carries one.
    pub fn durable_frontier(&self) -> Option<u64> {
        let back = u64::from(self.durable_back.checked_sub(1)?);
        self.lsn.checked_sub(back)
    }

    /// The `durable_back` value for a record at `lsn` appended while
    /// everything below `durable` was durable.
    pub fn encode_durable_back(lsn: u64, durable: u64) -> u32 {
        // A frontier further back than u32 can say is stated as u32::MAX - 1
        // bytes back: closer than the truth, so never a false alarm.
        let back = lsn.saturating_sub(durable).min(u64::from(u32::MAX) - 1);
        back as u32 + 1
    }
}

/// crc32 over header bytes 0..60 followed by the payload.
pub fn record_crc(hdr: &[u8; REC_HEADER_LEN], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&hdr[0..60]);
    h.update(payload);
    h.finalize()
}

/// A wrap marker: "nothing more in this lap, continue at ring start".
pub fn encode_wrap(epoch: u32, lsn: u64, instance: u32) -> [u8; REC_HEADER_LEN] {
    RawHeader {
        magic: WRAP_MAGIC,
        epoch,
        lsn,
        seq: 0,
        offset: 0,
        length: 0,
        flags: 0,
        chunk_index: 0,
        chunk_count: 0,
        payload_len: 0,
        instance,
        durable_back: 0,
        crc: 0,
    }
    .encode_record(&[])
}

/// Bytes a record with `payload_len` bytes of payload takes in the ring.
pub fn record_size(payload_len: usize) -> u64 {
    (REC_HEADER_LEN + payload_len.div_ceil(REC_ALIGN) * REC_ALIGN) as u64
}

/// Largest payload that can always be appended to a ring of `ring_len` bytes:
/// a record may use at most half the ring, which guarantees that an empty
/// ring can take it whatever the wrap position.
pub fn max_payload(ring_len: u64) -> usize {
    let half = (ring_len / 2) as usize;
    let p = half.saturating_sub(REC_HEADER_LEN) / REC_ALIGN * REC_ALIGN;
    p.min(u32::MAX as usize / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb() -> Superblock {
        Superblock {
            volume_id: [7; 16],
            epoch: 3,
            instance: 99,
            generation: 12,
            file_size: MIN_SIZE,
            ring_offset: RING_OFFSET as u64,
            ring_len: MIN_SIZE - RING_OFFSET as u64,
            tail_lsn: 64,
            tail_seq: 5,
            head_lsn: 128,
            next_seq: 6,
            base_seq: 1,
            durable_lsn: 96,
            meta: [0x5a; META_LEN],
        }
    }

    #[test]
    fn superblock_roundtrip_and_every_bit_flip_is_caught() {
        let b = sb().encode();
        assert_eq!(Superblock::decode(&b), Ok(sb()));
        for bit in 0..SB_LEN * 8 {
            let mut c = b;
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(Superblock::decode(&c).is_err(), "bit {bit} flip accepted");
        }
    }

    #[test]
    fn unknown_version_with_good_crc_is_reported_as_such() {
        let mut b = sb().encode();
        put_u32(&mut b, 8, 3);
        let crc = sb_crc(&b, SB_LEN_V1);
        put_u32(&mut b, 12, crc);
        assert_eq!(Superblock::decode(&b), Err(SbProblem::UnknownVersion(3)));
    }

    #[test]
    fn a_version_1_superblock_is_read_with_empty_metadata() {
        let mut b = sb().encode();
        put_u32(&mut b, 8, FORMAT_VERSION_1);
        b[SB_LEN_V1..].fill(0);
        let crc = sb_crc(&b, SB_LEN_V1);
        put_u32(&mut b, 12, crc);
        let old = Superblock::decode(&b[..SB_LEN_V1]).unwrap();
        assert_eq!(old.meta, [0; META_LEN]);
        assert_eq!(old.durable_lsn, 0);
        assert_eq!(old.tail_seq, sb().tail_seq);
    }

    #[test]
    fn record_header_roundtrip() {
        let h = RawHeader {
            magic: REC_MAGIC,
            epoch: 2,
            lsn: 4096,
            seq: 77,
            offset: 1 << 40,
            length: 5,
            flags: 0xdead,
            chunk_index: 1,
            chunk_count: 3,
            payload_len: 5,
            instance: 42,
            durable_back: RawHeader::encode_durable_back(4096, 1024),
            crc: 0,
        };
        let enc = h.encode_record(b"hello");
        let dec = RawHeader::decode(&enc);
        assert_eq!(dec.crc, record_crc(&enc, b"hello"));
        assert_eq!(RawHeader { crc: 0, ..dec }, h);
        assert_ne!(dec.crc, record_crc(&enc, b"hellO"));
        assert_eq!(dec.durable_frontier(), Some(1024));
        assert_eq!(
            RawHeader {
                durable_back: 0,
                ..dec
            }
            .durable_frontier(),
            None
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(record_size(0), 64);
        assert_eq!(record_size(1), 72);
        assert_eq!(record_size(8), 72);
        assert!(record_size(max_payload(1 << 20)) <= 1 << 19);
    }
}
