//! Chunking: how one write is cut into pieces that workers encode and decode
//! in parallel (the patent's T3/T4 halves, generalised to N), and how the
//! pieces are put back together in order.
//!
//! Chunks are cut relative to the start of the write, so a write of `len`
//! bytes has `ceil(len / chunk_size)` chunks (one, for an empty write) and
//! each chunk knows its own volume offset; the remote can apply chunks one by
//! one once the whole write has arrived.

use std::ops::Range;

use bytes::{Bytes, BytesMut};

/// Chunk size unless configured otherwise.
pub const DEFAULT_CHUNK_SIZE: usize = 64 << 10;
/// Smallest chunk size: one 4 KiB block. Smaller chunks only multiply the
/// per-chunk overhead (header, checksum, seal tag, a worker hand-off).
pub const MIN_CHUNK_SIZE: usize = 4 << 10;
/// Largest chunk size: 1 MiB, so that several workers share even a
/// medium-sized write; well under the codec's [`crate::codec::MAX_CHUNK`].
pub const MAX_CHUNK_SIZE: usize = 1 << 20;
/// Largest write the primary accepts in one piece: 32 MiB, the largest
/// request the NBD front end takes (Linux's nbd driver and qemu send far
/// less). Bigger host writes are refused, not split, so that one write
/// stays one seq the remote applies whole.
pub const MAX_WRITE_BYTES: usize = 32 << 20;
/// Most chunks one write can have: the largest write cut at the smallest
/// chunk size. The frame decoder refuses a larger `count`, which bounds
/// what the remote allocates to reassemble a write.
pub const MAX_CHUNKS_PER_WRITE: u32 = (MAX_WRITE_BYTES / MIN_CHUNK_SIZE) as u32;

/// The cut of one write into chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPlan {
    pub offset: u64,
    pub len: usize,
    pub chunk_size: usize,
}

/// One piece of a [`ChunkPlan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkSpan {
    pub index: u32,
    /// Volume offset of the chunk's first byte.
    pub offset: u64,
    /// The chunk's bytes within the write's buffer.
    pub range: Range<usize>,
}

impl ChunkPlan {
    /// # Panics
    /// If `chunk_size` is zero.
    pub fn new(offset: u64, len: usize, chunk_size: usize) -> Self {
        assert!(chunk_size > 0, "chunk size must be positive");
        ChunkPlan {
            offset,
            len,
            chunk_size,
        }
    }

    /// Chunks in the write: at least one.
    pub fn count(&self) -> u32 {
        self.len.div_ceil(self.chunk_size).max(1) as u32
    }

    /// The `index`th chunk, or `None` past the end.
    pub fn span(&self, index: u32) -> Option<ChunkSpan> {
        if index >= self.count() {
            return None;
        }
        let start = index as usize * self.chunk_size;
        let end = (start + self.chunk_size).min(self.len);
        Some(ChunkSpan {
            index,
            offset: self.offset + start as u64,
            range: start..end,
        })
    }

    pub fn spans(&self) -> impl Iterator<Item = ChunkSpan> + '_ {
        (0..self.count()).filter_map(|i| self.span(i))
    }
}

/// Collects the decoded chunks of one write, in any order, and yields the
/// write's bytes once every chunk is present.
#[derive(Debug, Clone)]
pub struct Joiner {
    parts: Vec<Option<Bytes>>,
    present: usize,
}

impl Joiner {
    pub fn new(count: u32) -> Self {
        Joiner {
            parts: vec![None; count.max(1) as usize],
            present: 0,
        }
    }

    /// Stores a chunk; returns false if the index is out of range or the
    /// chunk was already present (a duplicate), leaving the joiner as it was.
    pub fn insert(&mut self, index: u32, bytes: Bytes) -> bool {
        match self.parts.get_mut(index as usize) {
            Some(slot @ None) => {
                *slot = Some(bytes);
                self.present += 1;
                true
            }
            _ => false,
        }
    }

    pub fn is_complete(&self) -> bool {
        self.present == self.parts.len()
    }

    /// The joined bytes, or `None` while chunks are missing.
    pub fn join(&self) -> Option<Bytes> {
        if !self.is_complete() {
            return None;
        }
        if self.parts.len() == 1 {
            return self.parts[0].clone();
        }
        let total = self.parts.iter().flatten().map(Bytes::len).sum();
        let mut out = BytesMut::with_capacity(total);
        for p in self.parts.iter().flatten() {
            out.extend_from_slice(p);
        }
        Some(out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_cover_the_write_exactly() {
        let plan = ChunkPlan::new(1000, 150_000, 65536);
        assert_eq!(plan.count(), 3);
        let spans: Vec<_> = plan.spans().collect();
        assert_eq!(spans[0].range, 0..65536);
        assert_eq!(spans[2].range, 131072..150_000);
        assert_eq!(spans[2].offset, 1000 + 131072);
        assert_eq!(ChunkPlan::new(0, 0, 4096).count(), 1);
        assert_eq!(ChunkPlan::new(0, 0, 4096).span(0).unwrap().range, 0..0);
    }

    #[test]
    fn joiner_reassembles_out_of_order_and_refuses_duplicates() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let plan = ChunkPlan::new(0, data.len(), 3000);
        let mut j = Joiner::new(plan.count());
        let mut spans: Vec<_> = plan.spans().collect();
        spans.reverse();
        for s in &spans {
            assert!(j.join().is_none());
            assert!(j.insert(s.index, Bytes::copy_from_slice(&data[s.range.clone()])));
        }
        assert!(!j.insert(0, Bytes::new()));
        assert!(!j.insert(99, Bytes::new()));
        assert_eq!(j.join().unwrap(), &data[..]);
    }
}
