//! Zipf-distributed ranks in `1..=n`: the host model's hot spots. The
//! sampling is `rand_distr`'s (rejection sampling with constant memory and
//! expected O(1) time for any `n`, so hot spots on a terabyte volume cost no
//! more than on a megabyte one); this wrapper gives it the model's integer
//! ranks and its tolerance of odd parameters.

use rand::Rng;
use rand_distr::Distribution;

/// Samples rank `k` with probability proportional to `1 / k^s`.
#[derive(Debug, Clone)]
pub struct Zipf {
    n: u64,
    dist: rand_distr::Zipf<f64>,
}

impl Zipf {
    /// `n` elements (at least 1), exponent `s` (0 is uniform; a negative or
    /// NaN exponent counts as 0, as a workload file cannot ask for a
    /// distribution that favours the last block).
    pub fn new(n: u64, s: f64) -> Self {
        let n = n.max(1);
        let s = if s > 0.0 { s } else { 0.0 };
        let s = if s.is_finite() { s } else { 1e9 };
        let dist = rand_distr::Zipf::new(n, s).expect("n >= 1 and a finite s >= 0");
        Zipf { n, dist }
    }

    /// A rank in `1..=n`; rank 1 is the most frequent.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        // The float sample is integral and in [1, n]; the clamp only guards
        // the rounding of an `n` above 2^53.
        (self.dist.sample(rng) as u64).clamp(1, self.n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn check(n: u64, s: f64) {
        let z = Zipf::new(n, s);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let draws = 200_000;
        let mut counts = vec![0u64; n as usize + 1];
        for _ in 0..draws {
            let k = z.sample(&mut rng);
            assert!((1..=n).contains(&k));
            counts[k as usize] += 1;
        }
        let norm: f64 = (1..=n).map(|k| 1.0 / (k as f64).powf(s)).sum();
        for k in [1u64, 2, 3, 10] {
            let want = draws as f64 / (k as f64).powf(s) / norm;
            let got = counts[k as usize] as f64;
            assert!(
                (got - want).abs() < 5.0 * want.sqrt() + 1.0,
                "n={n} s={s} k={k}: got {got}, want {want}"
            );
        }
    }

    #[test]
    fn frequencies_follow_the_law() {
        check(1000, 1.0);
        check(1000, 0.8);
        check(50, 1.5);
        check(20, 0.0);
    }

    #[test]
    fn huge_domains_are_fine() {
        let z = Zipf::new(1 << 40, 1.1);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        // P(1) = 1 / sum(k^-1.1, k = 1..2^40) ≈ 1 / 9.95.
        let ones = (0..10_000).filter(|_| z.sample(&mut rng) == 1).count();
        assert!((850..1160).contains(&ones), "{ones}");
    }

    #[test]
    fn odd_parameters_still_sample_in_range() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for (n, s) in [
            (0, 1.0),
            (1, 1.0),
            (10, -3.0),
            (10, f64::NAN),
            (10, f64::INFINITY),
        ] {
            let z = Zipf::new(n, s);
            for _ in 0..100 {
                assert!((1..=n.max(1)).contains(&z.sample(&mut rng)));
            }
        }
    }
}
