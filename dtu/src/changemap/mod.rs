//! The changed-block map: a persistent, crash-safe bitmap of the extents in
//! which the primary's local copy may differ from the replica (DRBD's
//! quick-sync bitmap, VVR's data change map). It owns the on-disk format,
//! marking before a data write (durable with a group-committed sync shared
//! by concurrent writers), lazy clearing after a resync, "everything" and
//! "nothing" in O(1), iteration for the resync and the out-of-sync figures.
//! RAM follows what is marked, not the volume; on disk it is a sparse file
//! whose holes are the pages where nothing was ever marked.
//!
//! # Use
//!
//! A host write in `ahead` mode: `if map.mark(off, len)? { map.persist()? }`
//! (or [`ChangeMap::mark_durable`]), then write the data. A mark must reach
//! the disk before the data it describes, or a crash in between loses the
//! difference. [`ChangeMap::mark`] answers `true` whenever the marks it
//! touched may not be durable yet, including marks set by another thread
//! whose persist has not returned. The resync walks
//! [`ChangeMap::next_marked`], copies each run, and calls
//! [`ChangeMap::clear`]; clears are written with the next persist (a lost
//! clear only costs copying that extent again). The caller must make sure no
//! host write to an extent raced with the copy it clears.
//!
//! # Format (version 1, integers little endian)
//!
//! ```text
//! 0        4096     8192                                        8192 + 4096 × pages
//! | hdr 0  | hdr 1  | page 0 | page 1 | ...   (holes where nothing was marked) |
//! ```
//!
//! **Header**, in two alternating one-page slots like the nvbuf superblock:
//! `magic "DTUCHMAP" | version u32 | crc32 u32 | volume id (16) | volume size u64 |
//! generation u64 | base u64 | map length u64 | fill generation u32 |
//! log2 granularity u32 | fill u32 | reserved u32`, 80 bytes, the crc over all
//! but its own field. Write `generation` goes to slot `generation % 2` and is
//! synced before the next header write starts, so the other slot always
//! holds the previous durable header; open uses the valid one with the
//! higher generation. `base` is the owner's generation id of the replica
//! state the map is relative to.
//!
//! **Pages.** Page `p` describes extents `p × 32704 ..` (511 words of 64
//! bits; extent `e` covers bytes `e × granularity ..`). A page on disk is a
//! tag word (`"CMPG"` and the fill generation) then its 511 words. An
//! extent is marked when its bit differs from the header's `fill`: with
//! `fill` = 0 the bits are the marks, after `mark_all` (`fill` = 1) they are
//! the extents cleared since. A page that is all zeros (a hole), whose tag
//! is the previous fill generation's, or whose tag is zero (a first write
//! torn before its tag sector) reads as "no bit set".
//!
//! **Crash safety.** A flush writes the header (when it changed) and syncs,
//! erases every page when the fill changed (so pages of the previous fill
//! generation, now stale by their tag, are zero before any page is written
//! again) and syncs, then writes the dirty pages and syncs. One flush at a
//! time, from a snapshot taken when it starts, so a lazily written clear can
//! never overwrite a newer mark. A torn page write leaves, sector by sector,
//! old or new bits, and both hold every mark that a returned persist made
//! durable; a page whose tag sector was lost reads as the fill. `mark_all`
//! and `clear_all` are one header write and one erase (a hole punch), not a
//! write of every page. Open erases stale pages and treats a page with a
//! foreign tag as damaged: all its extents marked.
//!
//! # Cost per TiB of volume
//!
//! One page (4 KiB in RAM and on disk) covers 32,704 extents: 127.75 MiB of
//! volume at 4 KiB granularity, 2 GiB at 64 KiB, 32 GiB at 1 MiB. A page
//! holds a 4 KiB bit array in RAM only where some but not all of its extents
//! differ from the fill; a region that wholly differs costs about 50 bytes
//! of RAM (and its page on disk), an untouched one nothing at all (a hole).
//! Why 64 KiB by default: see [`DEFAULT_GRANULARITY`].
//!
//! | granularity | disk, worst (sparse) | RAM, worst | typical |
//! |---|---|---|---|
//! | 4 KiB | 32.1 MiB (8,209 pages) | ≈ 32.5 MiB | 4 KiB per touched 127.75 MiB region |
//! | 64 KiB (default) | 2.01 MiB (514 pages) | ≈ 2.03 MiB | 4 KiB per touched 2 GiB region |
//! | 1 MiB | 132 KiB (33 pages) | ≈ 134 KiB | 4 KiB per touched 32 GiB region |
//!
//! plus 8 KiB of headers on disk and a few hundred bytes of RAM. A 16 TiB
//! volume at 4 KiB: a 513 MiB sparse file, 513 MiB of RAM only if every
//! region is partly marked. `mark_all` and `clear_all` free every page.

mod error;
pub mod format;
mod page;
mod store;

pub use error::ChangeMapError;
pub use format::{
    DEFAULT_GRANULARITY, MAX_GRANULARITY, MAX_RUN_BYTES, MAX_VOLUME_SIZE, MIN_GRANULARITY,
};
pub use store::{MapStore, MemMapStore, SparseFile};

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Condvar, Mutex, MutexGuard};

use format::{
    classify_tag, page_tag, Geometry, GeometryProblem, Header, HeaderProblem, TagKind,
    BITMAP_OFFSET, FORMAT_VERSION, HEADER_LEN, HEADER_SLOT, PAGE_BYTES, PAGE_EXTENTS,
};
use page::Page;

/// Pages read at once while opening.
const OPEN_READ_PAGES: u64 = 256;

/// A changed-block map over a [`MapStore`]. `Send + Sync`: share it behind
/// an `Arc`; every method takes `&self`.
pub struct ChangeMap<S: MapStore> {
    store: S,
    name: String,
    geo: Geometry,
    volume_id: [u8; 16],
    state: Mutex<State>,
    flushed: Condvar,
}

struct State {
    /// Whether an extent without a bit set in its page is marked.
    fill: bool,
    fill_gen: u32,
    /// The fill generation every page on disk belongs to: the last one
    /// whose erase completed. The flush that carries a fill change assigns
    /// it the generation after this one (at plan time, when no other flush
    /// can move it), however many fill changes failed or were requested
    /// meanwhile, so that pages left on disk are exactly the "previous
    /// generation" open knows as stale.
    erased_gen: u32,
    base: u64,
    /// Generation of the latest durable header.
    header_gen: u64,
    header_dirty: bool,
    /// Every page must be erased on disk (the fill changed) before any page
    /// is written again.
    erase_pending: bool,
    /// Pages with at least one bit set, or emptied and not yet written.
    pages: BTreeMap<u32, Page>,
    /// Pages to write (or erase, when absent or empty) at the next flush.
    dirty: BTreeSet<u32>,
    /// Bits set over all pages.
    bits: u64,
    /// Counts changes; a flush makes every change up to its snapshot durable.
    change: u64,
    durable: u64,
    /// The change that last set the fill.
    fill_change: u64,
    flushing: bool,
    flushes: u64,
    pages_written: u64,
    pages_erased: u64,
    header_writes: u64,
}

/// What [`ChangeMap::open`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenInfo {
    pub granularity: u64,
    pub base: u64,
    pub marked_extents: u64,
    pub marked_bytes: u64,
    /// Generation of the header used.
    pub header_generation: u64,
    /// A header slot that holds something unusable (the other one was used),
    /// e.g. a header write torn by a crash.
    pub damaged_header: Option<String>,
    /// Pages left over from before a `mark_all` / `clear_all`, or torn in
    /// their first write; erased.
    pub stale_pages: u64,
    /// Pages with a foreign tag: erased, and their extents marked.
    pub damaged_pages: u64,
    /// Bits set past the volume's last extent, ignored.
    pub ignored_bits: u64,
}

/// Counters for the status display and the tests.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MapStats {
    pub extents: u64,
    pub granularity: u64,
    pub marked_extents: u64,
    pub marked_bytes: u64,
    /// Pages held in RAM.
    pub allocated_pages: u64,
    /// Of which holding a 4 KiB bit array (the others are wholly set).
    pub page_arrays: u64,
    /// Estimated RAM the map holds, in bytes.
    pub ram_bytes: u64,
    pub dirty_pages: u64,
    pub flushes: u64,
    pub pages_written: u64,
    pub pages_erased: u64,
    pub header_writes: u64,
    pub base: u64,
}

/// What one flush does, planned under the lock and carried out without it.
struct Plan {
    upto: u64,
    fill_gen: u32,
    header: Option<Header>,
    erase: bool,
    /// Runs of consecutive pages to write: offset and bytes.
    writes: Vec<(u64, Vec<u8>)>,
    /// Runs of consecutive pages to erase: offset and length.
    erases: Vec<(u64, u64)>,
    /// Every page planned, to retry after a failure.
    pages: Vec<u32>,
    /// Pages erased because they were empty (dropped from RAM afterwards).
    emptied: Vec<u32>,
}

#[derive(Default)]
struct Done {
    header: bool,
    erase: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn geometry_error(problem: GeometryProblem, size: u64, granularity: u64) -> ChangeMapError {
    match problem {
        GeometryProblem::Granularity => ChangeMapError::Granularity { granularity },
        GeometryProblem::VolumeSize => ChangeMapError::VolumeSize {
            size,
            max: MAX_VOLUME_SIZE,
        },
    }
}

/// Approximate RAM of one page entry in the B-tree (key, value and the
/// nodes' slack).
const PAGE_ENTRY_BYTES: usize = (std::mem::size_of::<(u32, Page)>() * 3).div_ceil(2);

impl<S: MapStore> ChangeMap<S> {
    fn io(&self, what: &'static str) -> impl FnOnce(std::io::Error) -> ChangeMapError + '_ {
        move |source| ChangeMapError::Io {
            store: self.name.clone(),
            what,
            source,
        }
    }

    /// Formats an empty `store` as a map of `volume_size` bytes at
    /// `granularity` (a power of two from [`MIN_GRANULARITY`] to
    /// [`MAX_GRANULARITY`]) with nothing marked, relative to `base`.
    pub fn create(
        store: S,
        volume_id: [u8; 16],
        volume_size: u64,
        granularity: u64,
        base: u64,
    ) -> Result<ChangeMap<S>, ChangeMapError> {
        let geo = Geometry::new(volume_size, granularity)
            .map_err(|p| geometry_error(p, volume_size, granularity))?;
        let name = store.name();
        let io = |what| {
            let store = name.clone();
            move |source| ChangeMapError::Io {
                store,
                what,
                source,
            }
        };
        let len = store.len().map_err(io("stat"))?;
        if len != 0 {
            return Err(ChangeMapError::NotEmpty { store: name, len });
        }
        store.set_len(geo.file_len()).map_err(io("size"))?;
        let header = Header {
            volume_id,
            volume_size,
            generation: 0,
            base,
            map_len: geo.file_len(),
            fill_gen: 1,
            shift: geo.shift,
            fill: false,
        };
        store
            .write_at(header.slot_offset(), &header.encode())
            .map_err(io("write header"))?;
        store.sync().map_err(io("sync"))?;
        Ok(ChangeMap::assemble(store, name, geo, &header))
    }

    fn assemble(store: S, name: String, geo: Geometry, h: &Header) -> ChangeMap<S> {
        ChangeMap {
            store,
            name,
            geo,
            volume_id: h.volume_id,
            state: Mutex::new(State {
                fill: h.fill,
                fill_gen: h.fill_gen,
                // Open erases stale pages before anything else happens.
                erased_gen: h.fill_gen,
                base: h.base,
                header_gen: h.generation,
                header_dirty: false,
                erase_pending: false,
                pages: BTreeMap::new(),
                dirty: BTreeSet::new(),
                bits: 0,
                change: 0,
                durable: 0,
                fill_change: 0,
                flushing: false,
                flushes: 0,
                pages_written: 0,
                pages_erased: 0,
                header_writes: 0,
            }),
            flushed: Condvar::new(),
        }
    }

    /// Opens the map in `store`, which must describe `volume_id` and a
    /// volume of `volume_size` bytes; stale pages are erased (and damaged
    /// ones marked) durably before it returns.
    pub fn open(
        store: S,
        volume_id: [u8; 16],
        volume_size: u64,
    ) -> Result<(ChangeMap<S>, OpenInfo), ChangeMapError> {
        let name = store.name();
        let io = |what| {
            let store = name.clone();
            move |source| ChangeMapError::Io {
                store,
                what,
                source,
            }
        };
        let len = store.len().map_err(io("stat"))?;
        let mut slots = [Err(HeaderProblem::NoMagic), Err(HeaderProblem::NoMagic)];
        for (i, slot) in slots.iter_mut().enumerate() {
            let off = i as u64 * HEADER_SLOT;
            if len >= off + HEADER_LEN as u64 {
                let mut b = [0u8; HEADER_LEN];
                store.read_at(off, &mut b).map_err(io("read header"))?;
                *slot = Header::decode(&b);
            }
        }
        let (used, header) = match (&slots[0], &slots[1]) {
            (Ok(a), Ok(b)) if b.generation > a.generation => (1, *b),
            (Ok(a), _) => (0, *a),
            (_, Ok(b)) => (1, *b),
            (Err(a), Err(b)) => {
                for p in [a, b] {
                    if let HeaderProblem::UnknownVersion(found) = p {
                        return Err(ChangeMapError::UnknownVersion {
                            store: name,
                            found: *found,
                            supported: FORMAT_VERSION,
                        });
                    }
                }
                return Err(ChangeMapError::NoValidHeader {
                    store: name,
                    slot0: a.to_string(),
                    slot1: b.to_string(),
                });
            }
        };
        let damaged_header = match &slots[1 - used] {
            Err(HeaderProblem::NoMagic) | Ok(_) => None,
            Err(p) => Some(format!("header slot {}: {p}", 1 - used)),
        };
        if header.volume_id != volume_id {
            return Err(ChangeMapError::WrongVolume {
                store: name,
                expected: hex::encode(volume_id),
                found: hex::encode(header.volume_id),
            });
        }
        if header.volume_size != volume_size {
            return Err(ChangeMapError::WrongSize {
                store: name,
                expected: volume_size,
                found: header.volume_size,
            });
        }
        if len != header.map_len {
            return Err(ChangeMapError::LengthMismatch {
                store: name,
                actual: len,
                expected: header.map_len,
            });
        }
        // Decode checked the geometry already; this cannot fail.
        let granularity = 1u64 << header.shift;
        let geo = Geometry::new(header.volume_size, granularity)
            .map_err(|p| geometry_error(p, header.volume_size, granularity))?;
        let map = ChangeMap::assemble(store, name, geo, &header);
        let info = map.load(&header, damaged_header)?;
        Ok((map, info))
    }

    /// Reads every page that holds data, erases stale and damaged ones, and
    /// marks the extents of damaged ones.
    fn load(
        &self,
        header: &Header,
        damaged_header: Option<String>,
    ) -> Result<OpenInfo, ChangeMapError> {
        let geo = self.geo;
        let area = u64::from(geo.pages) * PAGE_BYTES as u64;
        let ranges = self
            .store
            .data_ranges(BITMAP_OFFSET, area)
            .map_err(self.io("find data"))?;
        let mut pages = BTreeMap::new();
        let (mut bits, mut ignored) = (0u64, 0u64);
        let (mut stale, mut damaged) = (Vec::new(), Vec::new());
        let mut next_unread = 0u64;
        let mut buf = vec![0u8; OPEN_READ_PAGES as usize * PAGE_BYTES];
        for r in ranges {
            let first =
                ((r.start.max(BITMAP_OFFSET) - BITMAP_OFFSET) / PAGE_BYTES as u64).max(next_unread);
            let end = ((r.end.min(BITMAP_OFFSET + area) - BITMAP_OFFSET)
                .div_ceil(PAGE_BYTES as u64))
            .min(u64::from(geo.pages));
            let mut p = first;
            while p < end {
                let n = (end - p).min(OPEN_READ_PAGES);
                let chunk = &mut buf[..n as usize * PAGE_BYTES];
                self.store
                    .read_at(geo.page_offset(p as u32), chunk)
                    .map_err(self.io("read page"))?;
                for (i, bytes) in chunk.chunks_exact(PAGE_BYTES).enumerate() {
                    let idx = (p + i as u64) as u32;
                    if bytes.iter().all(|b| *b == 0) {
                        continue;
                    }
                    let mut t = [0u8; 8];
                    t.copy_from_slice(&bytes[..8]);
                    match classify_tag(u64::from_le_bytes(t), header.fill_gen) {
                        TagKind::Current => {
                            let (page, dropped) =
                                Page::from_words(Page::decode_words(bytes), geo.page_extents(idx));
                            ignored += u64::from(dropped);
                            if page.count() > 0 {
                                bits += u64::from(page.count());
                                pages.insert(idx, page);
                            }
                        }
                        TagKind::Stale => stale.push(idx),
                        TagKind::Damaged => damaged.push(idx),
                    }
                }
                p += n;
            }
            next_unread = next_unread.max(end);
        }
        if !stale.is_empty() || !damaged.is_empty() {
            for &p in stale.iter().chain(&damaged) {
                self.store
                    .zero_range(geo.page_offset(p), PAGE_BYTES as u64)
                    .map_err(self.io("erase page"))?;
            }
            self.store.sync().map_err(self.io("sync"))?;
        }
        {
            let mut st = lock(&self.state);
            st.pages = pages;
            st.bits = bits;
            if !header.fill {
                // Damaged pages: everything they describe may differ.
                for &p in &damaged {
                    let valid = geo.page_extents(p);
                    st.pages.insert(p, Page::full(valid));
                    st.bits += u64::from(valid);
                    st.dirty.insert(p);
                }
                if !damaged.is_empty() {
                    st.change += 1;
                }
            }
        }
        self.persist()?;
        Ok(OpenInfo {
            granularity: geo.granularity(),
            base: header.base,
            marked_extents: self.marked_extents(),
            marked_bytes: self.marked_bytes(),
            header_generation: header.generation,
            damaged_header,
            stale_pages: stale.len() as u64,
            damaged_pages: damaged.len() as u64,
            ignored_bits: ignored,
        })
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), ChangeMapError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.geo.volume_size => Ok(()),
            _ => Err(ChangeMapError::OutOfRange {
                offset,
                len,
                size: self.geo.volume_size,
            }),
        }
    }

    /// Sets (`set`) or clears the bits of extents `first..end`; pages that
    /// changed become dirty and, with `stamp`, record it as their latest
    /// mark. Returns the number of bits changed.
    fn apply(&self, st: &mut State, first: u64, end: u64, set: bool, stamp: Option<u64>) -> u64 {
        let mut changed = 0u64;
        let mut e = first;
        while e < end {
            let p = (e / PAGE_EXTENTS) as u32;
            let start = u64::from(p) * PAGE_EXTENTS;
            let valid = self.geo.page_extents(p);
            let lo = (e - start) as u32;
            let hi = (end - start).min(u64::from(valid)) as u32;
            let n = match (set, st.pages.entry(p)) {
                (true, Entry::Vacant(v)) => {
                    let mut page = if lo == 0 && hi == valid {
                        // Wholly set: no bit array at all.
                        Page::full(valid)
                    } else {
                        let mut page = Page::empty(valid);
                        page.set(lo, hi);
                        page
                    };
                    page.last_mark = stamp.unwrap_or(0);
                    v.insert(page);
                    hi - lo
                }
                (false, Entry::Vacant(_)) => 0,
                (set, Entry::Occupied(mut o)) => {
                    let page = o.get_mut();
                    let n = if set {
                        page.set(lo, hi)
                    } else {
                        page.clear(lo, hi)
                    };
                    if n > 0 {
                        if let Some(s) = stamp {
                            page.last_mark = s;
                        }
                    }
                    n
                }
            };
            if n > 0 {
                st.dirty.insert(p);
                changed += u64::from(n);
            }
            e = start + u64::from(hi);
        }
        if set {
            st.bits += changed;
        } else {
            st.bits -= changed;
        }
        changed
    }

    /// Marks every extent the byte range touches, in RAM. Returns `true`
    /// when the caller must [`persist`](Self::persist) before writing the
    /// data: some extent was newly marked, or its mark (from this or another
    /// thread) may not be durable yet.
    pub fn mark(&self, offset: u64, len: u64) -> Result<bool, ChangeMapError> {
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(false);
        }
        let (first, end) = self.geo.touched(offset, len);
        let mut st = lock(&self.state);
        let stamp = st.change + 1;
        let fill = st.fill;
        let newly = self.apply(&mut st, first, end, !fill, Some(stamp));
        if newly > 0 {
            st.change = stamp;
            return Ok(true);
        }
        if fill && st.fill_change > st.durable {
            return Ok(true);
        }
        let (fp, lp) = (
            (first / PAGE_EXTENTS) as u32,
            ((end - 1) / PAGE_EXTENTS) as u32,
        );
        let durable = st.durable;
        Ok(st
            .pages
            .range(fp..=lp)
            .any(|(_, page)| page.last_mark > durable))
    }

    /// [`mark`](Self::mark), then [`persist`](Self::persist) when needed:
    /// once this returns, the marks are durable and the data may be written.
    pub fn mark_durable(&self, offset: u64, len: u64) -> Result<(), ChangeMapError> {
        if self.mark(offset, len)? {
            self.persist()?;
        }
        Ok(())
    }

    /// Clears the extents lying wholly inside the byte range (the volume's
    /// partial last extent counts as whole), in RAM; written by the next
    /// persist. Returns the number of extents that were marked.
    pub fn clear(&self, offset: u64, len: u64) -> Result<u64, ChangeMapError> {
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(0);
        }
        let (first, end) = self.geo.covered(offset, len);
        let mut st = lock(&self.state);
        let fill = st.fill;
        let n = self.apply(&mut st, first, end, fill, None);
        if n > 0 {
            st.change += 1;
        }
        Ok(n)
    }

    /// Marks every extent (a full resync), durably. O(1) in RAM (every
    /// page is dropped); on disk one header write and one hole punch over
    /// the pages.
    pub fn mark_all(&self) -> Result<(), ChangeMapError> {
        self.refill(true, None)
    }

    /// Clears every extent (after a full sync), durably; costs as
    /// [`mark_all`](Self::mark_all).
    pub fn clear_all(&self) -> Result<(), ChangeMapError> {
        self.refill(false, None)
    }

    /// Marks (`marked`) or clears every extent and sets the base, in one
    /// durable header write: the map then is relative to `base`.
    pub fn reset(&self, marked: bool, base: u64) -> Result<(), ChangeMapError> {
        self.refill(marked, Some(base))
    }

    fn refill(&self, marked: bool, base: Option<u64>) -> Result<(), ChangeMapError> {
        {
            let mut st = lock(&self.state);
            st.fill = marked;
            st.pages.clear();
            st.dirty.clear();
            st.bits = 0;
            if let Some(b) = base {
                st.base = b;
            }
            st.header_dirty = true;
            st.erase_pending = true;
            st.change += 1;
            st.fill_change = st.change;
        }
        self.persist()
    }

    /// Records, durably, which replica state the map is relative to.
    pub fn set_base(&self, base: u64) -> Result<(), ChangeMapError> {
        {
            let mut st = lock(&self.state);
            st.base = base;
            st.header_dirty = true;
            st.change += 1;
        }
        self.persist()
    }

    /// The replica state the map is relative to.
    pub fn base(&self) -> u64 {
        lock(&self.state).base
    }

    /// Makes every change made before the call durable: one flush (writes
    /// and a sync) at a time, shared by every caller waiting meanwhile
    /// (group commit). The flush runs without the lock `mark` needs.
    pub fn persist(&self) -> Result<(), ChangeMapError> {
        let mut st = lock(&self.state);
        let target = st.change;
        loop {
            if st.durable >= target {
                return Ok(());
            }
            if st.flushing {
                st = self.flushed.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            st.flushing = true;
            let plan = self.plan(&mut st);
            drop(st);
            let mut done = Done::default();
            let result = self.execute(&plan, &mut done);
            st = lock(&self.state);
            st.flushing = false;
            self.finish(&mut st, plan, &done, result.is_ok());
            self.flushed.notify_all();
            result?;
        }
    }

    fn plan(&self, st: &mut State) -> Plan {
        if st.erase_pending {
            st.fill_gen = st.erased_gen.wrapping_add(1);
        }
        let header = std::mem::take(&mut st.header_dirty).then(|| Header {
            volume_id: self.volume_id,
            volume_size: self.geo.volume_size,
            generation: st.header_gen + 1,
            base: st.base,
            map_len: self.geo.file_len(),
            fill_gen: st.fill_gen,
            shift: self.geo.shift,
            fill: st.fill,
        });
        let tag = page_tag(st.fill_gen);
        let mut plan = Plan {
            upto: st.change,
            fill_gen: st.fill_gen,
            header,
            erase: std::mem::take(&mut st.erase_pending),
            writes: Vec::new(),
            erases: Vec::new(),
            pages: Vec::new(),
            emptied: Vec::new(),
        };
        for p in std::mem::take(&mut st.dirty) {
            let off = self.geo.page_offset(p);
            plan.pages.push(p);
            match st.pages.get(&p).filter(|page| page.count() > 0) {
                Some(page) => {
                    let buf = match plan.writes.last_mut() {
                        Some((o, buf)) if *o + buf.len() as u64 == off => buf,
                        _ => {
                            plan.writes.push((off, Vec::new()));
                            &mut plan.writes.last_mut().expect("just pushed").1
                        }
                    };
                    let at = buf.len();
                    buf.resize(at + PAGE_BYTES, 0);
                    page.encode(tag, &mut buf[at..]);
                }
                None => {
                    plan.emptied.push(p);
                    match plan.erases.last_mut() {
                        Some((o, len)) if *o + *len == off => *len += PAGE_BYTES as u64,
                        _ => plan.erases.push((off, PAGE_BYTES as u64)),
                    }
                }
            }
        }
        plan
    }

    fn execute(&self, plan: &Plan, done: &mut Done) -> Result<(), ChangeMapError> {
        if let Some(h) = &plan.header {
            self.store
                .write_at(h.slot_offset(), &h.encode())
                .map_err(self.io("write header"))?;
            self.store.sync().map_err(self.io("sync header"))?;
            done.header = true;
        }
        if plan.erase {
            let area = u64::from(self.geo.pages) * PAGE_BYTES as u64;
            self.store
                .zero_range(BITMAP_OFFSET, area)
                .map_err(self.io("erase pages"))?;
            self.store.sync().map_err(self.io("sync erase"))?;
            done.erase = true;
        }
        for (off, bytes) in &plan.writes {
            self.store
                .write_at(*off, bytes)
                .map_err(self.io("write pages"))?;
        }
        for (off, len) in &plan.erases {
            self.store
                .zero_range(*off, *len)
                .map_err(self.io("erase empty pages"))?;
        }
        if !plan.pages.is_empty() {
            self.store.sync().map_err(self.io("sync pages"))?;
        }
        Ok(())
    }

    fn finish(&self, st: &mut State, plan: Plan, done: &Done, ok: bool) {
        if let Some(h) = &plan.header {
            if done.header {
                st.header_gen = h.generation;
                st.header_writes += 1;
            } else {
                // Retried with the same generation, so into the same slot:
                // the other one keeps the last durable header.
                st.header_dirty = true;
            }
        }
        if plan.erase && !done.erase {
            st.erase_pending = true;
        }
        if done.erase {
            st.erased_gen = plan.fill_gen;
        }
        if ok {
            st.durable = st.durable.max(plan.upto);
            st.flushes += 1;
            st.pages_written += (plan.pages.len() - plan.emptied.len()) as u64;
            st.pages_erased += plan.emptied.len() as u64;
            // An emptied page leaves RAM only now that its erasure is
            // durable: until then its `last_mark` keeps `mark` answering
            // that a persist is needed.
            for p in plan.emptied {
                let empty = st.pages.get(&p).is_some_and(|page| page.count() == 0);
                if empty && !st.dirty.contains(&p) {
                    st.pages.remove(&p);
                }
            }
        } else {
            st.dirty.extend(plan.pages);
        }
    }

    /// The first extent in `from..end` whose bit is `value` (absent pages
    /// have no bit set), or `end`.
    fn find(&self, st: &State, from: u64, end: u64, value: bool) -> u64 {
        if from >= end {
            return end;
        }
        let first_page = (from / PAGE_EXTENTS) as u32;
        let mut expect = first_page;
        for (&p, page) in st.pages.range(first_page..) {
            let start = u64::from(p) * PAGE_EXTENTS;
            if !value && p > expect {
                // Page `expect` is absent: its bits are all clear.
                break;
            }
            if start >= end {
                return end;
            }
            let bit = if p == first_page {
                (from - start) as u32
            } else {
                0
            };
            if let Some(b) = page.next(bit, value) {
                return (start + u64::from(b)).min(end);
            }
            expect = p + 1;
        }
        if value {
            end
        } else {
            (u64::from(expect) * PAGE_EXTENTS).max(from).min(end)
        }
    }

    /// The first run of marked extents at or after the extent holding
    /// `from`: its byte offset and length (clipped to the volume, at most
    /// [`MAX_RUN_BYTES`] or one extent). `None` when nothing is marked there.
    pub fn next_marked(&self, from: u64) -> Option<(u64, u64)> {
        if from >= self.geo.volume_size {
            return None;
        }
        let n = self.geo.extents;
        let st = lock(&self.state);
        let first = self.find(&st, from >> self.geo.shift, n, !st.fill);
        if first >= n {
            return None;
        }
        let longest = (MAX_RUN_BYTES >> self.geo.shift).max(1);
        let end = self.find(&st, first, n.min(first + longest), st.fill);
        Some(self.geo.bytes(first, end))
    }

    fn marked(&self, st: &State, e: u64) -> bool {
        let p = (e / PAGE_EXTENTS) as u32;
        let bit = (e % PAGE_EXTENTS) as u32;
        st.pages.get(&p).is_some_and(|page| page.get(bit)) != st.fill
    }

    /// Whether the extent holding byte `offset` is marked.
    pub fn is_marked(&self, offset: u64) -> bool {
        offset < self.geo.volume_size && self.marked(&lock(&self.state), offset >> self.geo.shift)
    }

    fn marked_extents_locked(&self, st: &State) -> u64 {
        if st.fill {
            self.geo.extents - st.bits
        } else {
            st.bits
        }
    }

    fn marked_bytes_locked(&self, st: &State) -> u64 {
        let extents = self.marked_extents_locked(st);
        let mut bytes = extents << self.geo.shift;
        if extents > 0 && self.marked(st, self.geo.extents - 1) {
            bytes -= (self.geo.extents << self.geo.shift) - self.geo.volume_size;
        }
        bytes
    }

    /// Number of marked extents (O(1)).
    pub fn marked_extents(&self) -> u64 {
        self.marked_extents_locked(&lock(&self.state))
    }

    /// Bytes of the volume in marked extents: what is out of sync (O(1)).
    pub fn marked_bytes(&self) -> u64 {
        self.marked_bytes_locked(&lock(&self.state))
    }

    /// Pages held in RAM.
    pub fn allocated_pages(&self) -> u64 {
        lock(&self.state).pages.len() as u64
    }

    /// Counters and RAM use.
    pub fn stats(&self) -> MapStats {
        let st = lock(&self.state);
        let arrays = st.pages.values().filter(|p| p.heap_bytes() > 0).count();
        let heap: usize = st.pages.values().map(Page::heap_bytes).sum();
        let ram = std::mem::size_of::<Self>()
            + st.pages.len() * PAGE_ENTRY_BYTES
            + heap
            + st.dirty.len() * 8;
        MapStats {
            extents: self.geo.extents,
            granularity: self.geo.granularity(),
            marked_extents: self.marked_extents_locked(&st),
            marked_bytes: self.marked_bytes_locked(&st),
            allocated_pages: st.pages.len() as u64,
            page_arrays: arrays as u64,
            ram_bytes: ram as u64,
            dirty_pages: st.dirty.len() as u64,
            flushes: st.flushes,
            pages_written: st.pages_written,
            pages_erased: st.pages_erased,
            header_writes: st.header_writes,
            base: st.base,
        }
    }

    pub fn granularity(&self) -> u64 {
        self.geo.granularity()
    }

    pub fn volume_size(&self) -> u64 {
        self.geo.volume_size
    }

    pub fn volume_id(&self) -> [u8; 16] {
        self.volume_id
    }

    /// Number of extents (the last one may be partial).
    pub fn extents(&self) -> u64 {
        self.geo.extents
    }

    /// The store (tests take crash images through it).
    pub fn store(&self) -> &S {
        &self.store
    }
}

impl<S: MapStore> std::fmt::Debug for ChangeMap<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeMap")
            .field("store", &self.name)
            .field("volume_size", &self.geo.volume_size)
            .field("granularity", &self.geo.granularity())
            .field("marked_bytes", &self.marked_bytes())
            .finish()
    }
}
