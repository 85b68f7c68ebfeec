//! On-disk encoding of the changed-block map: the limits, the geometry that
//! turns a volume size and a granularity into extents and bitmap pages, the
//! two-slot header and the page tag. Pure byte (de)serialisation without I/O,
//! so every decode can be run against untrusted bytes without panicking (see
//! the format description in [`super`]).

/// Magic at the start of each header slot.
pub const MAGIC: [u8; 8] = *b"DTUCHMAP";
/// The on-disk format version this code reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes reserved for each of the two header slots (one page each, so a torn
/// page write can only ever damage one slot).
pub const HEADER_SLOT: u64 = 4096;
/// Bytes of a header slot that carry data (the rest stays zero).
pub const HEADER_LEN: usize = 80;
/// Offset of bitmap page 0: right after the two header slots.
pub const BITMAP_OFFSET: u64 = 2 * HEADER_SLOT;
/// Size of one bitmap page on disk (and of its bit array in memory, less the
/// tag word).
pub const PAGE_BYTES: usize = 4096;
/// 64-bit words of a page that hold bits; word 0 on disk is the tag.
pub const PAGE_WORDS: usize = PAGE_BYTES / 8 - 1;
/// Extents described by one bitmap page (511 × 64).
pub const PAGE_EXTENTS: u64 = (PAGE_WORDS * 64) as u64;

/// Smallest granularity (one bit per 4 KiB, DRBD's default).
pub const MIN_GRANULARITY: u64 = 4 << 10;
/// Largest granularity (DRBD 9.3's largest bitmap block).
pub const MAX_GRANULARITY: u64 = 1 << 20;
/// The default: one bit per 64 KiB. The map is then 2 MiB per TiB (32 MiB
/// for 16 TiB, small enough to hold entirely in RAM in the worst case), one
/// bitmap page covers about 2 GiB of volume, so the hot spots of a workload
/// touch few pages and repeated writes to a region find their extent
/// already marked (no map sync before the data write). It matches the
/// pipeline's default chunk size, and a scattered 4 KiB write costs at most
/// 64 KiB of resync traffic.
pub const DEFAULT_GRANULARITY: u64 = 64 << 10;
/// Largest volume a map describes: 64 TiB (a 2 GiB sparse map file at 4 KiB
/// granularity). Everything above is refused when the map is created or
/// opened.
pub const MAX_VOLUME_SIZE: u64 = 64 << 40;
/// Longest run [`super::ChangeMap::next_marked`] returns, so that one resync
/// step stays a bounded amount of work (at least one extent).
pub const MAX_RUN_BYTES: u64 = 16 << 20;

/// Magic in the high half of a page tag ("CMPG").
const PAGE_MAGIC: u32 = u32::from_le_bytes(*b"CMPG");

/// The tag word a page written in fill generation `fill_gen` starts with.
pub fn page_tag(fill_gen: u32) -> u64 {
    (u64::from(PAGE_MAGIC) << 32) | u64::from(fill_gen)
}

/// What the tag word of a page on disk says about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TagKind {
    /// Written in the current fill generation: its bits count.
    Current,
    /// Left over from the previous fill generation (a crash between a
    /// `mark_all`/`clear_all` and the erase that follows it), or a torn first
    /// write whose tag never reached the disk: it reads as the fill.
    Stale,
    /// Anything else: damage.
    Damaged,
}

/// Classifies the tag of a page with non-zero bytes.
pub fn classify_tag(tag: u64, fill_gen: u32) -> TagKind {
    if tag == page_tag(fill_gen) {
        TagKind::Current
    } else if tag == 0 || tag == page_tag(fill_gen.wrapping_sub(1)) {
        TagKind::Stale
    } else {
        TagKind::Damaged
    }
}

/// Why a granularity or a volume size cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeometryProblem {
    Granularity,
    VolumeSize,
}

/// Extents and pages of a map for one volume size and granularity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub volume_size: u64,
    /// log2 of the granularity.
    pub shift: u32,
    /// Number of extents (the last one may be partial).
    pub extents: u64,
    /// Number of bitmap pages.
    pub pages: u32,
}

impl Geometry {
    /// Checks the limits and computes the layout.
    pub fn new(volume_size: u64, granularity: u64) -> Result<Geometry, GeometryProblem> {
        if !granularity.is_power_of_two()
            || !(MIN_GRANULARITY..=MAX_GRANULARITY).contains(&granularity)
        {
            return Err(GeometryProblem::Granularity);
        }
        if volume_size == 0 || volume_size > MAX_VOLUME_SIZE {
            return Err(GeometryProblem::VolumeSize);
        }
        let shift = granularity.trailing_zeros();
        let extents = volume_size.div_ceil(granularity);
        // At most 2^34 extents, so the page count fits u32 easily.
        let pages = extents.div_ceil(PAGE_EXTENTS) as u32;
        Ok(Geometry {
            volume_size,
            shift,
            extents,
            pages,
        })
    }

    pub fn granularity(&self) -> u64 {
        1 << self.shift
    }

    /// Bytes of the whole map on disk (headers and every page).
    pub fn file_len(&self) -> u64 {
        BITMAP_OFFSET + u64::from(self.pages) * PAGE_BYTES as u64
    }

    /// Offset of page `p` on disk.
    pub fn page_offset(&self, p: u32) -> u64 {
        BITMAP_OFFSET + u64::from(p) * PAGE_BYTES as u64
    }

    /// Extents described by page `p` (all but the last page are full).
    pub fn page_extents(&self, p: u32) -> u32 {
        let start = u64::from(p) * PAGE_EXTENTS;
        (self.extents - start).min(PAGE_EXTENTS) as u32
    }

    /// Extents touched by the byte range (`len` > 0, in bounds): first and
    /// one past the last.
    pub fn touched(&self, offset: u64, len: u64) -> (u64, u64) {
        (
            offset >> self.shift,
            (offset + len).div_ceil(1 << self.shift),
        )
    }

    /// Extents lying wholly inside the byte range; the last extent ends at
    /// the volume's end, so a range reaching it covers a partial last extent.
    pub fn covered(&self, offset: u64, len: u64) -> (u64, u64) {
        let g = 1u64 << self.shift;
        let first = offset.div_ceil(g);
        let end = offset + len;
        let last = if end >= self.volume_size {
            self.extents
        } else {
            end >> self.shift
        };
        (first, last.max(first))
    }

    /// Byte range of extents `first..end`, clipped to the volume.
    pub fn bytes(&self, first: u64, end: u64) -> (u64, u64) {
        let off = first << self.shift;
        let stop = (end << self.shift).min(self.volume_size);
        (off, stop - off)
    }
}

/// The decoded header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub volume_id: [u8; 16],
    pub volume_size: u64,
    /// Counts header writes; slot = generation % 2.
    pub generation: u64,
    /// Replica state the map is relative to (the owner's generation id).
    pub base: u64,
    /// Bytes of the map on disk, as a cross-check of the geometry.
    pub map_len: u64,
    /// Bumped on every `mark_all` / `clear_all`; pages carry it in their tag.
    pub fill_gen: u32,
    /// log2 of the granularity.
    pub shift: u32,
    /// What an extent whose page holds no bit for it is: marked (true,
    /// after `mark_all`) or not.
    pub fill: bool,
}

/// Why a header slot could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderProblem {
    /// No magic: never written, zeroed, or not a changed-block map.
    NoMagic,
    /// Magic present but the checksum does not match: torn or corrupt.
    BadCrc,
    /// A well-formed header of a format version this code does not know.
    UnknownVersion(u32),
    /// Checksum fine but the fields contradict each other.
    Inconsistent(&'static str),
}

impl std::fmt::Display for HeaderProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderProblem::NoMagic => write!(f, "no header"),
            HeaderProblem::BadCrc => write!(f, "checksum mismatch (torn or damaged)"),
            HeaderProblem::UnknownVersion(v) => write!(f, "unknown format version {v}"),
            HeaderProblem::Inconsistent(what) => write!(f, "inconsistent {what}"),
        }
    }
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

/// The crc covers every header byte but its own field (12..16).
fn header_crc(b: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&b[0..12]);
    h.update(&b[16..HEADER_LEN]);
    h.finalize()
}

impl Header {
    /// Offset of the slot this header goes to.
    pub fn slot_offset(&self) -> u64 {
        (self.generation % 2) * HEADER_SLOT
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        put_u32(&mut b, 8, FORMAT_VERSION);
        b[16..32].copy_from_slice(&self.volume_id);
        put_u64(&mut b, 32, self.volume_size);
        put_u64(&mut b, 40, self.generation);
        put_u64(&mut b, 48, self.base);
        put_u64(&mut b, 56, self.map_len);
        put_u32(&mut b, 64, self.fill_gen);
        put_u32(&mut b, 68, self.shift);
        put_u32(&mut b, 72, u32::from(self.fill));
        let crc = header_crc(&b);
        put_u32(&mut b, 12, crc);
        b
    }

    /// Decodes one slot; `b` may be any length (short input is `NoMagic`).
    pub fn decode(b: &[u8]) -> Result<Header, HeaderProblem> {
        if b.len() < HEADER_LEN || b[0..8] != MAGIC {
            return Err(HeaderProblem::NoMagic);
        }
        if get_u32(b, 12) != header_crc(b) {
            return Err(HeaderProblem::BadCrc);
        }
        let version = get_u32(b, 8);
        if version != FORMAT_VERSION {
            return Err(HeaderProblem::UnknownVersion(version));
        }
        let mut volume_id = [0u8; 16];
        volume_id.copy_from_slice(&b[16..32]);
        let fill = match get_u32(b, 72) {
            0 => false,
            1 => true,
            _ => return Err(HeaderProblem::Inconsistent("fill flag")),
        };
        let h = Header {
            volume_id,
            volume_size: get_u64(b, 32),
            generation: get_u64(b, 40),
            base: get_u64(b, 48),
            map_len: get_u64(b, 56),
            fill_gen: get_u32(b, 64),
            shift: get_u32(b, 68),
            fill,
        };
        let geo = h.geometry()?;
        if h.map_len != geo.file_len() {
            return Err(HeaderProblem::Inconsistent("map length"));
        }
        Ok(h)
    }

    /// The geometry the header describes, with its limits checked.
    pub fn geometry(&self) -> Result<Geometry, HeaderProblem> {
        if self.shift >= 64 {
            return Err(HeaderProblem::Inconsistent("granularity"));
        }
        Geometry::new(self.volume_size, 1u64 << self.shift).map_err(|p| match p {
            GeometryProblem::Granularity => HeaderProblem::Inconsistent("granularity"),
            GeometryProblem::VolumeSize => HeaderProblem::Inconsistent("volume size"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIB: u64 = 1 << 40;

    fn header() -> Header {
        let geo = Geometry::new(10 << 30, 65536).unwrap();
        Header {
            volume_id: [7; 16],
            volume_size: geo.volume_size,
            generation: 3,
            base: 42,
            map_len: geo.file_len(),
            fill_gen: 9,
            shift: geo.shift,
            fill: true,
        }
    }

    #[test]
    fn header_roundtrip_and_damage() {
        let h = header();
        let b = h.encode();
        assert_eq!(Header::decode(&b), Ok(h));
        assert_eq!(Header::decode(&b[..20]), Err(HeaderProblem::NoMagic));
        for i in 0..HEADER_LEN {
            let mut d = b;
            d[i] ^= 0x10;
            assert!(Header::decode(&d).is_err(), "flip in byte {i} accepted");
        }
        let mut bad = h;
        bad.shift = 11;
        assert_eq!(
            Header::decode(&bad.encode()),
            Err(HeaderProblem::Inconsistent("granularity"))
        );
        let mut bad = h;
        bad.volume_size = MAX_VOLUME_SIZE + 1;
        assert_eq!(
            Header::decode(&bad.encode()),
            Err(HeaderProblem::Inconsistent("volume size"))
        );
        let mut bad = h;
        bad.map_len += 4096;
        assert_eq!(
            Header::decode(&bad.encode()),
            Err(HeaderProblem::Inconsistent("map length"))
        );
        let mut v2 = h.encode();
        put_u32(&mut v2, 8, 2);
        let crc = header_crc(&v2);
        put_u32(&mut v2, 12, crc);
        assert_eq!(Header::decode(&v2), Err(HeaderProblem::UnknownVersion(2)));
    }

    #[test]
    fn limits() {
        for g in [0, 1, 2048, 12288, 2 << 20] {
            assert_eq!(Geometry::new(1 << 30, g), Err(GeometryProblem::Granularity));
        }
        assert_eq!(Geometry::new(0, 4096), Err(GeometryProblem::VolumeSize));
        assert_eq!(
            Geometry::new(MAX_VOLUME_SIZE + 1, 4096),
            Err(GeometryProblem::VolumeSize)
        );
        let g = Geometry::new(MAX_VOLUME_SIZE, MIN_GRANULARITY).unwrap();
        assert_eq!(g.extents, 1 << 34);
    }

    /// The per-TiB figures in the module header and the README.
    #[test]
    fn documented_costs() {
        let pages = |g| Geometry::new(TIB, g).unwrap().pages;
        assert_eq!(pages(4 << 10), 8209); // 32.07 MiB
        assert_eq!(pages(64 << 10), 514); // 2.01 MiB
        assert_eq!(pages(1 << 20), 33); // 132 KiB
        let g = Geometry::new(16 * TIB, 4 << 10).unwrap();
        assert_eq!(g.pages, 131_329);
        assert_eq!(g.file_len(), 8192 + 131_329 * 4096); // 513.01 MiB
                                                         // Region one page covers: 127.75 MiB at 4 KiB.
        assert_eq!(PAGE_EXTENTS * 4096, 127 * (1 << 20) + 768 * 1024);
    }

    #[test]
    fn extent_ranges() {
        let g = Geometry::new(10 * 4096 + 100, 4096).unwrap();
        assert_eq!(g.extents, 11);
        assert_eq!(g.touched(4095, 2), (0, 2));
        assert_eq!(g.touched(4096, 4096), (1, 2));
        assert_eq!(g.covered(4095, 4098), (1, 2));
        assert_eq!(g.covered(100, 200), (1, 1));
        // The partial last extent is covered by a range reaching the end.
        assert_eq!(g.covered(40960, 100), (10, 11));
        assert_eq!(g.bytes(10, 11), (40960, 100));
        assert_eq!(g.page_extents(0), 11);
    }

    #[test]
    fn tags() {
        assert_eq!(classify_tag(page_tag(5), 5), TagKind::Current);
        assert_eq!(classify_tag(page_tag(4), 5), TagKind::Stale);
        assert_eq!(classify_tag(0, 5), TagKind::Stale);
        assert_eq!(classify_tag(page_tag(3), 5), TagKind::Damaged);
        assert_eq!(classify_tag(12345, 5), TagKind::Damaged);
        assert_eq!(classify_tag(page_tag(u32::MAX), 0), TagKind::Stale);
    }
}
