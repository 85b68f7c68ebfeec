//! A small log-bucketed latency histogram: constant memory whatever the
//! run's length, quantiles within a few percent, cheap enough to record
//! every operation. Used for the primary→replica delay and ack latency.

use std::time::Duration;

/// Buckets per factor of ten.
const PER_DECADE: usize = 20;
/// From 1 µs to 1000 s.
const DECADES: usize = 9;
const BUCKETS: usize = PER_DECADE * DECADES + 1;

/// Counts of durations in logarithmic buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: Duration,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: Duration::ZERO,
        }
    }
}

fn bucket(d: Duration) -> usize {
    let us = d.as_secs_f64() * 1e6;
    if us <= 1.0 {
        return 0;
    }
    ((us.log10() * PER_DECADE as f64).ceil() as usize).min(BUCKETS - 1)
}

fn upper(b: usize) -> Duration {
    Duration::from_secs_f64(10f64.powf(b as f64 / PER_DECADE as f64) / 1e6)
}

impl Histogram {
    pub fn record(&mut self, d: Duration) {
        self.counts[bucket(d)] += 1;
        self.total += 1;
        self.max = self.max.max(d);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> Duration {
        self.max
    }

    /// The `q` quantile (0..=1), as the upper edge of its bucket (never
    /// above the largest value seen); `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(upper(b).min(self.max));
            }
        }
        Some(self.max)
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_a_bucket() {
        let mut h = Histogram::default();
        for ms in 1..=1000u64 {
            h.record(Duration::from_millis(ms));
        }
        let p50 = h.quantile(0.5).unwrap().as_secs_f64();
        let p99 = h.quantile(0.99).unwrap().as_secs_f64();
        assert!((0.5..0.5 * 1.13).contains(&p50), "p50 {p50}");
        assert!((0.99..0.99 * 1.13).contains(&p99), "p99 {p99}");
        assert_eq!(h.quantile(1.0), Some(Duration::from_secs(1)));
        assert_eq!(Histogram::default().quantile(0.5), None);
    }
}
