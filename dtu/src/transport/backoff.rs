//! Capped exponential backoff with jitter, for the primary's reconnects.
//!
//! Doubling keeps a dead remote from being hammered; the cap keeps the
//! reconnect prompt once it is back; the jitter keeps several primaries that
//! lost the same remote from reconnecting in lockstep.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Waits `base`, `2 base`, `4 base`, ... up to `cap`, each scaled by a
/// random factor in [0.75, 1.25) and never above `cap`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    current: Duration,
    rng: StdRng,
}

impl Backoff {
    /// Jitter from the operating system's entropy.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff::with_rng(base, cap, StdRng::from_entropy())
    }

    /// Jitter from a seed: the same seed gives the same waits.
    pub fn with_seed(base: Duration, cap: Duration, seed: u64) -> Self {
        Backoff::with_rng(base, cap, StdRng::seed_from_u64(seed))
    }

    fn with_rng(base: Duration, cap: Duration, rng: StdRng) -> Self {
        let cap = cap.max(base);
        Backoff {
            base,
            cap,
            current: base,
            rng,
        }
    }

    /// The next wait. (Not an `Iterator`: the sequence never ends, and
    /// callers want a `Duration`, not an `Option`.)
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Duration {
        let d = self.current;
        self.current = self.current.saturating_mul(2).min(self.cap);
        let jitter = self.rng.gen_range(0.75..1.25);
        d.mul_f64(jitter).min(self.cap)
    }

    /// Back to `base`, after a connection that worked.
    pub fn reset(&mut self) {
        self.current = self.base;
    }

    /// The wait before jitter that the next call starts from.
    pub fn current(&self) -> Duration {
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_with_bounded_jitter_and_resets() {
        let (base, cap) = (Duration::from_millis(100), Duration::from_secs(2));
        let mut b = Backoff::with_seed(base, cap, 7);
        let waits: Vec<Duration> = (0..10).map(|_| b.next()).collect();
        let nominal = [100u64, 200, 400, 800, 1600, 2000, 2000, 2000, 2000, 2000];
        for (w, n) in waits.iter().zip(nominal) {
            let n = Duration::from_millis(n);
            assert!(
                *w >= n.mul_f64(0.75) && *w <= n.mul_f64(1.25).min(cap),
                "{w:?} vs {n:?}"
            );
        }
        assert!(
            waits.windows(2).any(|p| p[0] != p[1]),
            "jitter varies: {waits:?}"
        );
        b.reset();
        assert_eq!(b.current(), base);
        assert!(b.next() <= Duration::from_millis(125));
    }

    #[test]
    fn a_seed_repeats_its_waits() {
        let run = |seed| {
            let mut b = Backoff::with_seed(Duration::from_millis(10), Duration::from_secs(1), seed);
            (0..8).map(|_| b.next()).collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }
}
