//! The application's write stream: bursts of writes of one block size at
//! a given rate, separated by idle gaps (fixed or exponentially distributed
//! around a mean), at sequential, uniformly random or Zipf-distributed
//! block offsets, carrying data of a chosen compressibility. [`Workload`]
//! turns a [`WorkloadConfig`] into the planned time, offset and bytes of
//! each write; all randomness comes from the seed.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::time::Duration;

use super::data::DataGen;
use super::zipf::Zipf;

/// Where the writes land.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum OffsetPattern {
    /// One block after the other, wrapping at the end of the volume.
    Sequential,
    /// Uniformly random blocks.
    Random,
    /// Zipf-distributed blocks: block `k` (from 0) is hit with probability
    /// proportional to `1 / (k + 1)^exponent`.
    Zipf { exponent: f64 },
}

/// How long the application rests between bursts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum IdleGap {
    Fixed {
        gap: Duration,
    },
    /// Exponentially distributed with this mean.
    Exponential {
        mean: Duration,
    },
}

/// What the application writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkloadConfig {
    /// Bytes per write.
    pub block_size: u32,
    /// Bytes written per burst.
    pub burst_bytes: u64,
    /// Write rate within a burst in bytes/s; 0: as fast as the cache takes them.
    pub burst_rate: u64,
    pub idle: IdleGap,
    pub offsets: OffsetPattern,
    /// Size of the volume the offsets fall in.
    pub volume_bytes: u64,
    /// Target snap compression ratio of the data, 1.0 to 4.0.
    pub compress_ratio: f64,
    pub seed: u64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self {
            block_size: 64 * 1024,
            burst_bytes: 16 << 20,
            burst_rate: 0,
            idle: IdleGap::Fixed {
                gap: Duration::from_secs(1),
            },
            offsets: OffsetPattern::Sequential,
            volume_bytes: 1 << 30,
            compress_ratio: 1.0,
            seed: 1,
        }
    }
}

/// One planned write.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedWrite {
    /// When the application wants to issue it, unless it is stalled.
    pub at: Duration,
    pub offset: u64,
    pub data: Vec<u8>,
}

/// The write stream of a [`WorkloadConfig`].
pub struct Workload {
    cfg: WorkloadConfig,
    blocks: u64,
    rng: ChaCha8Rng,
    data: DataGen,
    zipf: Option<Zipf>,
    next_seq_block: u64,
    in_burst: u64,
    next_at: Duration,
}

impl Workload {
    pub fn new(cfg: WorkloadConfig) -> Self {
        let block = cfg.block_size.max(1) as u64;
        let blocks = (cfg.volume_bytes / block).max(1);
        let zipf = match cfg.offsets {
            OffsetPattern::Zipf { exponent } => Some(Zipf::new(blocks, exponent)),
            _ => None,
        };
        Self {
            data: DataGen::new(block as usize, cfg.compress_ratio, cfg.seed ^ 0xDA7A),
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            blocks,
            zipf,
            next_seq_block: 0,
            in_burst: 0,
            next_at: Duration::ZERO,
            cfg,
        }
    }

    pub fn config(&self) -> &WorkloadConfig {
        &self.cfg
    }

    /// When the next write is due (before a stall shifts it).
    pub fn next_at(&self) -> Duration {
        self.next_at
    }

    /// Restarts the schedule from `t` (after the application was stalled:
    /// it resumes at its pace, it does not catch up).
    pub fn resume_at(&mut self, t: Duration) {
        self.next_at = self.next_at.max(t);
    }

    fn offset(&mut self) -> u64 {
        let block = match self.cfg.offsets {
            OffsetPattern::Sequential => {
                let b = self.next_seq_block;
                self.next_seq_block = (b + 1) % self.blocks;
                b
            }
            OffsetPattern::Random => self.rng.gen_range(0..self.blocks),
            OffsetPattern::Zipf { .. } => {
                self.zipf
                    .as_ref()
                    .expect("built with the pattern")
                    .sample(&mut self.rng)
                    - 1
            }
        };
        block * self.cfg.block_size as u64
    }

    fn idle(&mut self) -> Duration {
        match self.cfg.idle {
            IdleGap::Fixed { gap } => gap,
            IdleGap::Exponential { mean } => {
                let u: f64 = self.rng.gen_range(f64::MIN_POSITIVE..1.0);
                Duration::from_secs_f64(-u.ln() * mean.as_secs_f64())
            }
        }
    }

    /// The next write, and advances the schedule past it.
    pub fn next_write(&mut self) -> PlannedWrite {
        let block = self.cfg.block_size as u64;
        let w = PlannedWrite {
            at: self.next_at,
            offset: self.offset(),
            data: self.data.next_block(),
        };
        self.in_burst += block;
        if self.cfg.burst_rate > 0 {
            self.next_at += Duration::from_secs_f64(block as f64 / self.cfg.burst_rate as f64);
        }
        if self.in_burst >= self.cfg.burst_bytes.max(block) {
            self.in_burst = 0;
            let gap = self.idle();
            self.next_at += gap;
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_rate_and_gaps() {
        let cfg = WorkloadConfig {
            block_size: 1000,
            burst_bytes: 10_000,
            burst_rate: 1_000_000,
            idle: IdleGap::Fixed {
                gap: Duration::from_millis(100),
            },
            ..WorkloadConfig::default()
        };
        let mut w = Workload::new(cfg);
        let times: Vec<Duration> = (0..20).map(|_| w.next_write().at).collect();
        assert_eq!(times[1], Duration::from_millis(1));
        assert_eq!(times[9], Duration::from_millis(9));
        // Burst 2 starts after 10 writes of 1 ms and a 100 ms gap.
        assert_eq!(times[10], Duration::from_millis(110));
    }

    #[test]
    fn offsets() {
        let mk = |offsets| {
            Workload::new(WorkloadConfig {
                block_size: 4096,
                volume_bytes: 4096 * 100,
                offsets,
                ..WorkloadConfig::default()
            })
        };
        let mut s = mk(OffsetPattern::Sequential);
        let o: Vec<u64> = (0..102).map(|_| s.next_write().offset).collect();
        assert_eq!(o[1], 4096);
        assert_eq!(o[100], 0);
        let mut r = mk(OffsetPattern::Random);
        assert!((0..1000).all(|_| r.next_write().offset < 4096 * 100));
        let mut z = mk(OffsetPattern::Zipf { exponent: 1.2 });
        let zeros = (0..2000).filter(|_| z.next_write().offset == 0).count();
        assert!(zeros > 400, "{zeros}");
    }

    #[test]
    fn exponential_gaps_have_the_mean() {
        let mut w = Workload::new(WorkloadConfig {
            block_size: 512,
            burst_bytes: 512,
            burst_rate: 0,
            idle: IdleGap::Exponential {
                mean: Duration::from_millis(10),
            },
            ..WorkloadConfig::default()
        });
        let n = 20_000;
        for _ in 0..n {
            w.next_write();
        }
        let mean = w.next_at().as_secs_f64() / n as f64;
        assert!((mean - 0.010).abs() < 0.0005, "{mean}");
    }
}
