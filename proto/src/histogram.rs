//! The latency histogram behind every latency and delay dtu reports (the
//! host's answer latency per trigger, the primary→replica delay): an
//! HdrHistogram recording microseconds with two significant digits, so a
//! quantile is within 1 % of the true value, in constant memory (about
//! 30 KiB) whatever the run's length. Values above [`HIGHEST`] are counted
//! at [`HIGHEST`] (and in [`Histogram::saturated`]), never refused.

use std::time::Duration;

/// The largest latency told apart from larger ones: one hour. A write that
/// waited longer is recorded as one hour.
pub const HIGHEST: Duration = Duration::from_secs(3600);
const HIGHEST_US: u64 = HIGHEST.as_micros() as u64;
/// Two significant digits: relative error below 1 % (at most 1/128).
const SIGNIFICANT_DIGITS: u8 = 2;

/// Counts of durations, in microseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    h: hdrhistogram::Histogram<u64>,
    /// Exact sum of the recorded values (after saturation), in µs.
    sum_us: u64,
    saturated: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            h: hdrhistogram::Histogram::new_with_bounds(1, HIGHEST_US, SIGNIFICANT_DIGITS)
                .expect("constant bounds are valid"),
            sum_us: 0,
            saturated: 0,
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Histogram {
    /// Records one duration; above [`HIGHEST`] it counts as [`HIGHEST`].
    pub fn record(&mut self, d: Duration) {
        let mut us = micros(d);
        if us > HIGHEST_US {
            us = HIGHEST_US;
            self.saturated += 1;
        }
        self.h.saturating_record(us);
        self.sum_us = self.sum_us.saturating_add(us);
    }

    pub fn count(&self) -> u64 {
        self.h.len()
    }

    pub fn is_empty(&self) -> bool {
        self.h.is_empty()
    }

    /// The largest value recorded (zero when empty).
    pub fn max(&self) -> Duration {
        if self.is_empty() {
            return Duration::ZERO;
        }
        Duration::from_micros(self.h.max())
    }

    /// The sum of every value recorded.
    pub fn sum(&self) -> Duration {
        Duration::from_micros(self.sum_us)
    }

    /// How many values were above [`HIGHEST`] and counted as it.
    pub fn saturated(&self) -> u64 {
        self.saturated
    }

    /// The `q` quantile (0..=1), within 1 % of the true value; `None` when
    /// empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.is_empty() {
            return None;
        }
        let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
        Some(Duration::from_micros(self.h.value_at_quantile(q)))
    }

    /// How many values are at or below `d`. Values within the histogram's
    /// resolution above `d` (less than 1 % of `d`) count as below it.
    pub fn count_at_or_below(&self, d: Duration) -> u64 {
        if self.is_empty() {
            return 0;
        }
        self.h.count_between(0, micros(d).min(HIGHEST_US))
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        // Same bounds on both sides, so the addition cannot fail.
        self.h.add(&other.h).expect("histograms share their bounds");
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
        self.saturated += other.saturated;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within_1pct(got: Duration, want: Duration) -> bool {
        let (g, w) = (got.as_secs_f64(), want.as_secs_f64());
        (g - w).abs() <= w * 0.01
    }

    #[test]
    fn quantiles_are_within_one_percent() {
        let mut h = Histogram::default();
        for ms in 1..=1000u64 {
            h.record(Duration::from_millis(ms));
        }
        for (q, want) in [(0.5, 500), (0.9, 900), (0.99, 990), (1.0, 1000)] {
            let got = h.quantile(q).unwrap();
            assert!(
                within_1pct(got, Duration::from_millis(want)),
                "q{q}: {got:?}"
            );
        }
        assert_eq!(h.count(), 1000);
        assert_eq!(h.sum(), Duration::from_millis(500_500));
        assert_eq!(Histogram::default().quantile(0.5), None);
    }

    /// The old log-bucket histogram reported t1's delay as 100.0 ms for p50
    /// and p99 alike: every value between 89.2 and 100 ms fell in one bucket.
    #[test]
    fn close_values_are_told_apart() {
        let mut h = Histogram::default();
        for i in 0..100u64 {
            // 90.0 .. 99.9 ms
            h.record(Duration::from_micros(90_000 + i * 100));
        }
        let p50 = h.quantile(0.5).unwrap();
        let p99 = h.quantile(0.99).unwrap();
        assert!(within_1pct(p50, Duration::from_micros(94_900)), "{p50:?}");
        assert!(within_1pct(p99, Duration::from_micros(99_800)), "{p99:?}");
        assert!(p99 > p50);
    }

    #[test]
    fn small_and_huge_values_never_panic() {
        let mut h = Histogram::default();
        h.record(Duration::ZERO);
        h.record(Duration::from_nanos(300));
        h.record(Duration::MAX);
        h.record(HIGHEST * 2);
        assert_eq!(h.count(), 4);
        assert_eq!(h.saturated(), 2);
        assert!(within_1pct(h.max(), HIGHEST));
        assert_eq!(h.quantile(0.25), Some(Duration::ZERO));
        assert!(h.quantile(f64::NAN).is_some());
        assert_eq!(h.count_at_or_below(Duration::from_micros(1)), 2);
        assert_eq!(h.count_at_or_below(Duration::MAX), 4);
    }

    #[test]
    fn counts_at_bucket_bounds_and_merge() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        for ms in [1, 2, 5, 10] {
            a.record(Duration::from_millis(ms));
        }
        for ms in [20, 50] {
            b.record(Duration::from_millis(ms));
        }
        a.merge(&b);
        assert_eq!(a.count(), 6);
        assert_eq!(a.count_at_or_below(Duration::from_millis(5)), 3);
        assert_eq!(a.count_at_or_below(Duration::from_micros(4_900)), 2);
        assert_eq!(a.count_at_or_below(Duration::from_millis(50)), 6);
        assert_eq!(a.sum(), Duration::from_millis(88));
    }
}
