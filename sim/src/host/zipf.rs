//! Zipf-distributed ranks in `1..=n` without a table, by rejection-inversion
//! (W. Hörmann and G. Derflinger, "Rejection-inversion to generate variates
//! from monotone discrete distributions", 1996): constant memory and
//! expected O(1) time for any `n`, so hot spots on a terabyte volume cost
//! no more than on a megabyte one.

use rand::Rng;

/// Samples rank `k` with probability proportional to `1 / k^s`.
#[derive(Debug, Clone)]
pub struct Zipf {
    n: u64,
    s: f64,
    h_x1: f64,
    h_n: f64,
    cut: f64,
}

fn helper1(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

fn helper2(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x / 3.0 * (1.0 + 0.25 * x))
    }
}

impl Zipf {
    /// `n` ≥ 1 elements, exponent `s` > 0.
    pub fn new(n: u64, s: f64) -> Self {
        let n = n.max(1);
        let s = if s > 0.0 { s } else { 1e-9 };
        let mut z = Zipf {
            n,
            s,
            h_x1: 0.0,
            h_n: 0.0,
            cut: 0.0,
        };
        z.h_x1 = z.h_integral(1.5) - 1.0;
        z.h_n = z.h_integral(n as f64 + 0.5);
        z.cut = 2.0 - z.h_integral_inv(z.h_integral(2.5) - z.h(2.0));
        z
    }

    fn h(&self, x: f64) -> f64 {
        (-self.s * x.ln()).exp()
    }

    fn h_integral(&self, x: f64) -> f64 {
        let lx = x.ln();
        helper2((1.0 - self.s) * lx) * lx
    }

    fn h_integral_inv(&self, x: f64) -> f64 {
        let t = (x * (1.0 - self.s)).max(-1.0);
        (helper1(t) * x).exp()
    }

    /// A rank in `1..=n`; rank 1 is the most frequent.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        loop {
            let u = self.h_n + rng.gen::<f64>() * (self.h_x1 - self.h_n);
            let x = self.h_integral_inv(u);
            let k = ((x + 0.5) as u64).clamp(1, self.n);
            if k as f64 - x <= self.cut || u >= self.h_integral(k as f64 + 0.5) - self.h(k as f64) {
                return k;
            }
        }
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
    }

    #[test]
    fn huge_domains_are_fine() {
        let z = Zipf::new(1 << 40, 1.1);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        // P(1) = 1 / sum(k^-1.1, k = 1..2^40) ≈ 1 / 9.95.
        let ones = (0..10_000).filter(|_| z.sample(&mut rng) == 1).count();
        assert!((850..1160).contains(&ones), "{ones}");
    }
}
