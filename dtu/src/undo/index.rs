//! The in-RAM index of one undo era: which blocks of the volume the era's
//! segment holds an old copy of, and where. It owns sorted, disjoint
//! extents (first block → block count, data position or tombstone) and
//! the interval arithmetic the journal needs: the gaps a new write must
//! save, the extents a read overlaps, and the sweep that finds the oldest
//! copy of each block across eras.
//!
//! # Cost
//!
//! One B-tree entry per saved extent: an 8-byte key and a 16-byte value in
//! std's B-tree nodes of 11 entries (280 bytes per leaf), at least half
//! full, plus the internal nodes: at most [`INDEX_BYTES_PER_EXTENT`] = 72
//! bytes per extent, about 45 for random inserts. A data extent is one
//! saved record (at most [`super::segment::MAX_RECORD_DATA`] bytes);
//! neighbouring tombstones merge into one extent, so a sparse volume's
//! never-written blocks cost one extent per run, not per block.

use std::collections::BTreeMap;

/// Upper bound of RAM per saved extent, in bytes (see the module doc).
pub const INDEX_BYTES_PER_EXTENT: u64 = 72;

/// Where an extent's old contents are: `data` is the segment offset of its
/// first block's bytes, [`Ext::ZERO`] for a tombstone (the blocks were zeros).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ext {
    pub data: u64,
    pub blocks: u32,
}

impl Ext {
    pub const ZERO: u64 = u64::MAX;

    pub fn is_zero(&self) -> bool {
        self.data == Self::ZERO
    }
}

/// The extents saved in one era, keyed by first block.
#[derive(Debug, Default)]
pub(crate) struct EraIndex {
    map: BTreeMap<u64, Ext>,
    data_blocks: u64,
    zero_blocks: u64,
}

impl EraIndex {
    pub fn extents(&self) -> usize {
        self.map.len()
    }

    pub fn data_blocks(&self) -> u64 {
        self.data_blocks
    }

    pub fn zero_blocks(&self) -> u64 {
        self.zero_blocks
    }

    pub fn index_bytes(&self) -> u64 {
        self.map.len() as u64 * INDEX_BYTES_PER_EXTENT
    }

    /// Records that `blocks` blocks from `start` are saved (none of them
    /// may be saved already: the caller saves only [`EraIndex::gaps`]).
    /// A tombstone merges with tombstone neighbours.
    pub fn insert(&mut self, start: u64, ext: Ext) {
        if ext.is_zero() {
            self.zero_blocks += u64::from(ext.blocks);
        } else {
            self.data_blocks += u64::from(ext.blocks);
        }
        let mut start = start;
        let mut ext = ext;
        if ext.is_zero() {
            if let Some((&ps, &pe)) = self.map.range(..start).next_back() {
                if pe.is_zero()
                    && ps + u64::from(pe.blocks) == start
                    && u64::from(pe.blocks) + u64::from(ext.blocks) <= u64::from(u32::MAX)
                {
                    self.map.remove(&ps);
                    ext.blocks += pe.blocks;
                    start = ps;
                }
            }
            let end = start + u64::from(ext.blocks);
            if let Some(&ne) = self.map.get(&end) {
                if ne.is_zero()
                    && u64::from(ne.blocks) + u64::from(ext.blocks) <= u64::from(u32::MAX)
                {
                    self.map.remove(&end);
                    ext.blocks += ne.blocks;
                }
            }
        }
        self.map.insert(start, ext);
    }

    /// The extents that overlap blocks `lo..hi`, in order, unclipped.
    pub fn overlapping(&self, lo: u64, hi: u64) -> impl Iterator<Item = (u64, Ext)> + '_ {
        let first = self
            .map
            .range(..=lo)
            .next_back()
            .filter(|(s, e)| **s < hi && **s + u64::from(e.blocks) > lo)
            .map(|(s, e)| (*s, *e));
        // `range` panics on a reversed range: ask only for a non-empty one.
        let rest_lo = lo.saturating_add(1);
        let rest = (rest_lo < hi)
            .then(|| self.map.range(rest_lo..hi).map(|(s, e)| (*s, *e)))
            .into_iter()
            .flatten();
        first.into_iter().chain(rest)
    }

    /// The runs of blocks in `lo..hi` this era holds no copy of.
    pub fn gaps(&self, lo: u64, hi: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut at = lo;
        for (s, e) in self.overlapping(lo, hi) {
            if s > at {
                out.push((at, s.min(hi)));
            }
            at = at.max(s + u64::from(e.blocks));
        }
        if at < hi {
            out.push((at, hi));
        }
        out
    }
}

/// Sorted, disjoint, coalesced block runs.
#[derive(Debug, Default)]
pub(crate) struct Covered(Vec<(u64, u64)>);

impl Covered {
    /// Calls `emit` for each part of the sorted, disjoint runs `runs` not
    /// yet covered, then covers them; linear in both lists.
    pub fn take_new(&mut self, runs: &[(u64, u64)], mut emit: impl FnMut(u64, u64)) {
        let cov = &self.0;
        let mut j = 0;
        for &(s, t) in runs {
            while j < cov.len() && cov[j].1 <= s {
                j += 1;
            }
            let mut cur = s;
            let mut k = j;
            while k < cov.len() && cov[k].0 < t {
                if cov[k].0 > cur {
                    emit(cur, cov[k].0);
                }
                cur = cur.max(cov[k].1);
                k += 1;
            }
            if cur < t {
                emit(cur, t);
            }
        }
        // Union, by merging two sorted lists.
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(cov.len() + runs.len());
        let (mut a, mut b) = (0, 0);
        while a < cov.len() || b < runs.len() {
            let next = if b >= runs.len() || (a < cov.len() && cov[a].0 <= runs[b].0) {
                a += 1;
                cov[a - 1]
            } else {
                b += 1;
                runs[b - 1]
            };
            match merged.last_mut() {
                Some(last) if next.0 <= last.1 => last.1 = last.1.max(next.1),
                _ => merged.push(next),
            }
        }
        self.0 = merged;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_overlaps_and_tombstone_merging() {
        let mut ix = EraIndex::default();
        ix.insert(10, Ext { data: 0, blocks: 5 });
        ix.insert(
            20,
            Ext {
                data: Ext::ZERO,
                blocks: 2,
            },
        );
        ix.insert(
            22,
            Ext {
                data: Ext::ZERO,
                blocks: 3,
            },
        );
        ix.insert(
            17,
            Ext {
                data: Ext::ZERO,
                blocks: 3,
            },
        );
        assert_eq!(ix.extents(), 2, "tombstones 17..25 merged");
        assert_eq!(ix.gaps(0, 30), vec![(0, 10), (15, 17), (25, 30)]);
        assert_eq!(ix.gaps(12, 14), vec![]);
        assert_eq!(ix.gaps(14, 18), vec![(15, 17)]);
        let o: Vec<_> = ix.overlapping(14, 18).map(|(s, _)| s).collect();
        assert_eq!(o, vec![10, 17]);
        assert_eq!(ix.overlapping(15, 17).count(), 0);
        assert_eq!((ix.data_blocks(), ix.zero_blocks()), (5, 8));
    }

    #[test]
    fn covered_emits_only_new_parts() {
        let mut c = Covered::default();
        let mut got = Vec::new();
        c.take_new(&[(0, 5), (10, 20)], |s, t| got.push((s, t)));
        assert_eq!(got, vec![(0, 5), (10, 20)]);
        got.clear();
        c.take_new(&[(3, 12), (18, 25), (30, 31)], |s, t| got.push((s, t)));
        assert_eq!(got, vec![(5, 10), (20, 25), (30, 31)]);
        assert_eq!(c.0, vec![(0, 25), (30, 31)]);
    }
}
