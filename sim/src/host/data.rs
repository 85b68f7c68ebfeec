//! Write payloads that compress by a chosen ratio. A block is a sequence of
//! 64-byte pieces, each either random bytes (incompressible) or one
//! repeated byte (compresses to almost nothing); the share of random pieces
//! is calibrated once, against snap itself (the compressor the DTU uses), so
//! that `snap::raw` shrinks a block by roughly the asked ratio (1:1 to 4:1).
//! Contents are drawn from a seeded generator: each block is new data, but
//! the same seed gives the same blocks.

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

const PIECE: usize = 64;

/// Generates blocks of one size with one target compression ratio.
#[derive(Debug, Clone)]
pub struct DataGen {
    block: usize,
    /// Share of pieces that are random.
    random_share: f64,
    rng: ChaCha8Rng,
    /// Error accumulator spreading random pieces evenly (Bresenham).
    acc: f64,
}

/// Compressed size / original size under snap's raw format.
pub fn snap_ratio(data: &[u8]) -> f64 {
    if data.is_empty() {
        return 1.0;
    }
    let c = snap::raw::Encoder::new()
        .compress_vec(data)
        .map(|v| v.len())
        .unwrap_or(data.len());
    data.len() as f64 / c as f64
}

impl DataGen {
    /// Blocks of `block` bytes that snap compresses about `ratio`:1
    /// (`ratio` is clamped to 1..=4).
    pub fn new(block: usize, ratio: f64, seed: u64) -> Self {
        let ratio = ratio.clamp(1.0, 4.0);
        let block = block.max(1);
        let random_share = if ratio <= 1.0 {
            1.0
        } else {
            calibrate(block, ratio)
        };
        Self {
            block,
            random_share,
            rng: ChaCha8Rng::seed_from_u64(seed),
            acc: 0.0,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block
    }

    /// The next block.
    pub fn next_block(&mut self) -> Vec<u8> {
        let mut out = vec![0u8; self.block];
        self.fill(&mut out);
        out
    }

    fn fill(&mut self, out: &mut [u8]) {
        for piece in out.chunks_mut(PIECE) {
            self.acc += self.random_share;
            if self.acc >= 1.0 {
                self.acc -= 1.0;
                self.rng.fill_bytes(piece);
            } else {
                let b: u8 = self.rng.gen();
                piece.fill(b);
            }
        }
    }
}

/// Finds the share of random pieces giving `ratio` for blocks of `block`
/// bytes, by bisection on the measured snap ratio (which falls as the share
/// rises).
fn calibrate(block: usize, ratio: f64) -> f64 {
    // Measure over at least 256 KiB so small blocks average out.
    let blocks = (256 * 1024 / block).clamp(1, 64);
    let measure = |share: f64| {
        let mut g = DataGen {
            block,
            random_share: share,
            rng: ChaCha8Rng::seed_from_u64(0xC0FFEE),
            acc: 0.0,
        };
        let (mut raw, mut comp) = (0usize, 0f64);
        for _ in 0..blocks {
            let b = g.next_block();
            raw += b.len();
            comp += b.len() as f64 / snap_ratio(&b);
        }
        raw as f64 / comp
    };
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..20 {
        let mid = (lo + hi) / 2.0;
        if measure(mid) > ratio {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo + hi) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_close_to_target() {
        for &block in &[4096usize, 65536, 1 << 20] {
            for &target in &[1.0, 1.5, 2.0, 3.0, 4.0] {
                let mut g = DataGen::new(block, target, 7);
                let blocks = (1 << 21) / block;
                let (mut raw, mut comp) = (0f64, 0f64);
                for _ in 0..blocks.max(2) {
                    let b = g.next_block();
                    raw += b.len() as f64;
                    comp += b.len() as f64 / snap_ratio(&b);
                }
                let got = raw / comp;
                assert!(
                    (got / target - 1.0).abs() < 0.08,
                    "block {block} target {target}: got {got}"
                );
            }
        }
    }

    #[test]
    fn seeded_and_fresh() {
        let mut a = DataGen::new(4096, 2.0, 1);
        let mut b = DataGen::new(4096, 2.0, 1);
        let (a1, a2) = (a.next_block(), a.next_block());
        assert_eq!(a1, b.next_block());
        assert_ne!(a1, a2);
        assert_ne!(a1, DataGen::new(4096, 2.0, 2).next_block());
    }
}
