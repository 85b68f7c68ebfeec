//! One bitmap page in memory: the bits of up to [`PAGE_EXTENTS`] extents
//! with their count, or just "every bit set" without the array, so that a
//! region that is wholly different (a long sequential write, a page wholly
//! cleared after `mark_all`) costs a few dozen bytes instead of 4 KiB. The
//! bits are a difference from the map's fill (see [`super`]); this module
//! only knows bits.

use super::format::{PAGE_BYTES, PAGE_EXTENTS, PAGE_WORDS};

/// The bits of one page.
pub(super) struct Page {
    /// `None`: every one of the `valid` bits is set.
    words: Option<Box<[u64; PAGE_WORDS]>>,
    count: u32,
    /// Bits this page describes (fewer in the volume's last page).
    valid: u32,
    /// Change number of the latest change that made an extent of this page
    /// marked; such a mark is durable once a flush covering it completed.
    pub(super) last_mark: u64,
}

/// `(word index, mask)` for every word overlapping bits `lo..hi`.
fn word_masks(lo: u32, hi: u32) -> impl Iterator<Item = (usize, u64)> {
    let mut i = lo;
    std::iter::from_fn(move || {
        if i >= hi {
            return None;
        }
        let w = i / 64;
        let start = i % 64;
        let end = (hi - w * 64).min(64);
        let width = end - start;
        let mask = if width == 64 {
            u64::MAX
        } else {
            ((1u64 << width) - 1) << start
        };
        i = w * 64 + end;
        Some((w as usize, mask))
    })
}

impl Page {
    pub(super) fn empty(valid: u32) -> Page {
        debug_assert!(valid > 0 && u64::from(valid) <= PAGE_EXTENTS);
        Page {
            words: Some(Box::new([0; PAGE_WORDS])),
            count: 0,
            valid,
            last_mark: 0,
        }
    }

    pub(super) fn full(valid: u32) -> Page {
        Page {
            words: None,
            count: valid,
            valid,
            last_mark: 0,
        }
    }

    /// A page from the bit words read from disk; bits at or past `valid`
    /// are dropped and their number returned.
    pub(super) fn from_words(mut words: Box<[u64; PAGE_WORDS]>, valid: u32) -> (Page, u32) {
        let mut ignored = 0;
        for (w, word) in words.iter_mut().enumerate() {
            let first = w as u32 * 64;
            let keep = if first >= valid {
                0
            } else if valid - first >= 64 {
                u64::MAX
            } else {
                (1u64 << (valid - first)) - 1
            };
            ignored += (*word & !keep).count_ones();
            *word &= keep;
        }
        let count = words.iter().map(|w| w.count_ones()).sum();
        let mut page = Page {
            words: Some(words),
            count,
            valid,
            last_mark: 0,
        };
        page.compact();
        (page, ignored)
    }

    pub(super) fn count(&self) -> u32 {
        self.count
    }

    /// Heap bytes this page holds (the map entry itself is counted by the
    /// caller).
    pub(super) fn heap_bytes(&self) -> usize {
        self.words.as_ref().map_or(0, |_| PAGE_WORDS * 8)
    }

    pub(super) fn get(&self, i: u32) -> bool {
        match &self.words {
            None => i < self.valid,
            Some(w) => w[(i / 64) as usize] >> (i % 64) & 1 == 1,
        }
    }

    /// Drops the array of a full page.
    fn compact(&mut self) {
        if self.count == self.valid {
            self.words = None;
        }
    }

    /// Sets bits `lo..hi` (within `valid`); returns how many were newly set.
    pub(super) fn set(&mut self, lo: u32, hi: u32) -> u32 {
        debug_assert!(lo <= hi && hi <= self.valid);
        let Some(words) = self.words.as_mut() else {
            return 0;
        };
        let mut newly = 0;
        for (w, mask) in word_masks(lo, hi) {
            newly += (mask & !words[w]).count_ones();
            words[w] |= mask;
        }
        self.count += newly;
        self.compact();
        newly
    }

    /// Clears bits `lo..hi` (within `valid`); returns how many were set.
    pub(super) fn clear(&mut self, lo: u32, hi: u32) -> u32 {
        debug_assert!(lo <= hi && hi <= self.valid);
        if lo == hi {
            return 0;
        }
        let valid = self.valid;
        let words = self.words.get_or_insert_with(|| {
            let mut all = Box::new([0u64; PAGE_WORDS]);
            for (w, mask) in word_masks(0, valid) {
                all[w] = mask;
            }
            all
        });
        let mut cleared = 0;
        for (w, mask) in word_masks(lo, hi) {
            cleared += (mask & words[w]).count_ones();
            words[w] &= !mask;
        }
        self.count -= cleared;
        self.compact();
        cleared
    }

    /// The first bit at or after `from` that is `value`, if any.
    pub(super) fn next(&self, from: u32, value: bool) -> Option<u32> {
        if from >= self.valid {
            return None;
        }
        let Some(words) = &self.words else {
            return value.then_some(from);
        };
        let flip = if value { 0 } else { u64::MAX };
        let mut w = (from / 64) as usize;
        let mut word = (words[w] ^ flip) & (u64::MAX << (from % 64));
        loop {
            if word != 0 {
                let i = w as u32 * 64 + word.trailing_zeros();
                return (i < self.valid).then_some(i);
            }
            w += 1;
            if w * 64 >= self.valid as usize {
                return None;
            }
            word = words[w] ^ flip;
        }
    }

    /// The page as stored: `tag` then the words, little endian.
    pub(super) fn encode(&self, tag: u64, out: &mut [u8]) {
        debug_assert_eq!(out.len(), PAGE_BYTES);
        out[0..8].copy_from_slice(&tag.to_le_bytes());
        match &self.words {
            Some(words) => {
                for (chunk, w) in out[8..].chunks_exact_mut(8).zip(words.iter()) {
                    chunk.copy_from_slice(&w.to_le_bytes());
                }
            }
            None => {
                out[8..].fill(0);
                for (w, mask) in word_masks(0, self.valid) {
                    out[8 + w * 8..16 + w * 8].copy_from_slice(&mask.to_le_bytes());
                }
            }
        }
    }

    /// The bit words of a stored page (after its tag).
    pub(super) fn decode_words(bytes: &[u8]) -> Box<[u64; PAGE_WORDS]> {
        let mut words = Box::new([0u64; PAGE_WORDS]);
        for (w, chunk) in words.iter_mut().zip(bytes[8..].chunks_exact(8)) {
            let mut a = [0u8; 8];
            a.copy_from_slice(chunk);
            *w = u64::from_le_bytes(a);
        }
        words
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_next(bits: &[bool], from: u32, value: bool) -> Option<u32> {
        (from as usize..bits.len())
            .find(|&i| bits[i] == value)
            .map(|i| i as u32)
    }

    #[test]
    fn against_a_vector_of_bools() {
        let mut rng = 0x1234_5678_9abc_def0u64;
        let mut next = move |n: u32| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % u64::from(n)) as u32
        };
        for valid in [
            1u32,
            63,
            64,
            65,
            130,
            PAGE_EXTENTS as u32 - 1,
            PAGE_EXTENTS as u32,
        ] {
            let mut page = Page::empty(valid);
            let mut model = vec![false; valid as usize];
            for step in 0..400 {
                let lo = next(valid);
                let span = if step % 7 == 0 { valid } else { 200 };
                let hi = (lo + next(span) + 1).min(valid);
                if next(2) == 0 {
                    let want = model[lo as usize..hi as usize]
                        .iter()
                        .filter(|b| !**b)
                        .count();
                    assert_eq!(page.set(lo, hi) as usize, want);
                    model[lo as usize..hi as usize].fill(true);
                } else {
                    let want = model[lo as usize..hi as usize]
                        .iter()
                        .filter(|b| **b)
                        .count();
                    assert_eq!(page.clear(lo, hi) as usize, want);
                    model[lo as usize..hi as usize].fill(false);
                }
                if step % 50 == 0 {
                    page.set(0, valid);
                    model.fill(true);
                    assert!(page.words.is_none(), "a full page drops its array");
                }
                assert_eq!(page.count() as usize, model.iter().filter(|b| **b).count());
                let probe = next(valid);
                assert_eq!(page.get(probe), model[probe as usize]);
                for value in [true, false] {
                    assert_eq!(page.next(probe, value), model_next(&model, probe, value));
                }
                let mut bytes = vec![0u8; PAGE_BYTES];
                page.encode(77, &mut bytes);
                let (back, ignored) = Page::from_words(Page::decode_words(&bytes), valid);
                assert_eq!(ignored, 0);
                assert_eq!(back.count(), page.count());
                assert_eq!(back.next(0, true), page.next(0, true));
                assert_eq!(back.next(0, false), page.next(0, false));
            }
        }
    }

    #[test]
    fn bits_past_the_end_are_dropped() {
        let mut words = Box::new([0u64; PAGE_WORDS]);
        words[0] = u64::MAX;
        words[1] = 1;
        let (page, ignored) = Page::from_words(words, 10);
        assert_eq!((page.count(), ignored), (10, 55));
        assert_eq!(page.heap_bytes(), 0);
    }
}
