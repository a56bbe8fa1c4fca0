//! Exact samplers for differential-privacy noise on the integers.
//!
//! The discrete Laplace and discrete Gaussian samplers of Canonne, Kamath
//! and Steinke, "The Discrete Gaussian for Differential Privacy" (NeurIPS
//! 2020), Algorithms 1–3. Every step uses integer arithmetic and unbiased
//! uniform integers from a cryptographically secure generator: there is no
//! floating-point Laplace, so none of the precision attacks on textbook
//! implementations (Mironov 2012) apply. Parameters are rationals; arithmetic
//! that would overflow fails closed.
//!
//! The query path's DP mode (scene `privacy = {…}`) builds on these; the
//! samplers are tested here against their exact distributions.

use rand::{CryptoRng, Rng};

use crate::error::{Error, Result};

/// A positive rational `num / den`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ratio {
    pub num: u64,
    pub den: u64,
}

impl Ratio {
    pub fn new(num: u64, den: u64) -> Result<Ratio> {
        if num == 0 || den == 0 {
            return Err(Error::internal("noise parameters must be positive"));
        }
        Ok(Ratio { num, den })
    }
}

/// Bernoulli(num / den), for num <= den.
fn bernoulli<R: Rng + CryptoRng>(rng: &mut R, num: u128, den: u128) -> bool {
    debug_assert!(num <= den && den > 0);
    rng.random_range(0..den) < num
}

/// Bernoulli(exp(-num / den)), exactly (CKS20 Algorithm 1).
pub fn bernoulli_exp<R: Rng + CryptoRng>(rng: &mut R, num: u128, den: u128) -> Result<bool> {
    if den == 0 {
        return Err(Error::internal("noise: zero denominator"));
    }
    if num <= den {
        // Sample A_k ~ Bernoulli(γ / k) until one is 0; exp(-γ) is the
        // probability that this first happens at an odd k.
        let mut k: u128 = 1;
        loop {
            let kd = den
                .checked_mul(k)
                .ok_or_else(|| Error::internal("noise: overflow"))?;
            if !bernoulli(rng, num, kd) {
                return Ok(k % 2 == 1);
            }
            k += 1;
        }
    }
    // exp(-γ) = exp(-1)^⌊γ⌋ · exp(-(γ - ⌊γ⌋)).
    let whole = num / den;
    for _ in 0..whole {
        if !bernoulli_exp(rng, 1, 1)? {
            return Ok(false);
        }
    }
    bernoulli_exp(rng, num % den, den)
}

/// Discrete Laplace with scale `scale`: P(y) ∝ exp(-|y| / scale)
/// (CKS20 Algorithm 2, which samples Lap_Z(t/s): here t = scale.num and
/// s = scale.den).
pub fn discrete_laplace<R: Rng + CryptoRng>(rng: &mut R, scale: Ratio) -> Result<i64> {
    let (t, s) = (u128::from(scale.num), u128::from(scale.den));
    loop {
        let u = rng.random_range(0..t);
        if !bernoulli_exp(rng, u, t)? {
            continue;
        }
        let mut v: u128 = 0;
        while bernoulli_exp(rng, 1, 1)? {
            v += 1;
        }
        let x = u + t
            .checked_mul(v)
            .ok_or_else(|| Error::internal("noise: overflow"))?;
        let y = x / s;
        let negative: bool = rng.random();
        if negative && y == 0 {
            continue;
        }
        let y = i64::try_from(y).map_err(|_| Error::internal("noise: overflow"))?;
        return Ok(if negative { -y } else { y });
    }
}

/// Discrete Gaussian with variance parameter `sigma2` = σ²:
/// P(y) ∝ exp(-y² / 2σ²) (CKS20 Algorithm 3).
pub fn discrete_gaussian<R: Rng + CryptoRng>(rng: &mut R, sigma2: Ratio) -> Result<i64> {
    let (num, den) = (u128::from(sigma2.num), u128::from(sigma2.den));
    // t = ⌊σ⌋ + 1, with ⌊σ⌋ = ⌊√(num/den)⌋ computed on integers.
    // (⌊√⌊x⌋⌋ = ⌊√x⌋ for real x ≥ 0.)
    let t = isqrt(num / den) + 1;
    let t64 = u64::try_from(t).map_err(|_| Error::internal("noise: sigma too large"))?;
    let overflow = || Error::internal("noise: overflow");
    loop {
        let y = discrete_laplace(rng, Ratio::new(t64, 1)?)?;
        // γ = (|y| - σ²/t)² / 2σ² = (|y|·t·den - num)² / (2·num·t²·den).
        let a = u128::from(y.unsigned_abs())
            .checked_mul(t)
            .and_then(|v| v.checked_mul(den))
            .ok_or_else(overflow)?;
        let diff = a.abs_diff(num);
        let g_num = diff.checked_mul(diff).ok_or_else(overflow)?;
        let g_den = num
            .checked_mul(2)
            .and_then(|v| v.checked_mul(t))
            .and_then(|v| v.checked_mul(t))
            .and_then(|v| v.checked_mul(den))
            .ok_or_else(overflow)?;
        if bernoulli_exp(rng, g_num, g_den)? {
            return Ok(y);
        }
    }
}

/// ⌊√n⌋.
fn isqrt(n: u128) -> u128 {
    if n < 2 {
        return n;
    }
    // Newton's method from above.
    let mut x = n;
    let mut y = x.div_ceil(2);
    while y < x {
        x = y;
        y = (x + n / x) / 2;
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    /// Pearson's χ² over the bins [-k, k] plus two tails, against `pmf`.
    fn chi_square(samples: &[i64], k: i64, pmf: impl Fn(i64) -> f64) -> (f64, usize) {
        let n = samples.len() as f64;
        let mut counts = vec![0f64; (2 * k + 3) as usize];
        for &y in samples {
            let bin = if y < -k {
                0
            } else if y > k {
                (2 * k + 2) as usize
            } else {
                (y + k + 1) as usize
            };
            counts[bin] += 1.0;
        }
        let mut expected = vec![0f64; counts.len()];
        for y in -k..=k {
            expected[(y + k + 1) as usize] = pmf(y) * n;
        }
        let inner: f64 = expected.iter().sum();
        let tail = (n - inner) / 2.0;
        expected[0] = tail;
        expected[(2 * k + 2) as usize] = tail;
        let mut chi = 0.0;
        let mut bins = 0;
        for (o, e) in counts.iter().zip(&expected) {
            if *e >= 5.0 {
                chi += (o - e) * (o - e) / e;
                bins += 1;
            }
        }
        (chi, bins - 1)
    }

    /// The χ² critical value at p = 0.001 for `df` degrees of freedom
    /// (Wilson–Hilferty approximation, accurate to a few percent here).
    fn critical(df: usize) -> f64 {
        let d = df as f64;
        let z = 3.090; // upper 0.1% point of N(0, 1)
        d * (1.0 - 2.0 / (9.0 * d) + z * (2.0 / (9.0 * d)).sqrt()).powi(3)
    }

    #[test]
    fn bernoulli_exp_has_the_right_mean() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        for (num, den) in [(1u128, 2u128), (1, 1), (5, 2), (0, 1)] {
            let n = 200_000;
            let hits = (0..n)
                .filter(|_| bernoulli_exp(&mut rng, num, den).unwrap())
                .count() as f64;
            let p = (-(num as f64) / den as f64).exp();
            let sd = (p * (1.0 - p) / n as f64).sqrt().max(1e-9);
            assert!(
                ((hits / n as f64) - p).abs() < 5.0 * sd,
                "exp(-{num}/{den})"
            );
        }
    }

    #[test]
    fn discrete_laplace_matches_its_pmf() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        for (s, t) in [(3u64, 1u64), (5, 2), (1, 3)] {
            let scale = s as f64 / t as f64;
            let samples: Vec<i64> = (0..100_000)
                .map(|_| discrete_laplace(&mut rng, Ratio::new(s, t).unwrap()).unwrap())
                .collect();
            // P(y) = (1 - p) / (1 + p) · p^|y|, p = exp(-1/scale).
            let p = (-1.0 / scale).exp();
            let pmf = |y: i64| (1.0 - p) / (1.0 + p) * p.powi(y.unsigned_abs() as i32);
            let (chi, df) = chi_square(&samples, (4.0 * scale).ceil() as i64 + 1, pmf);
            assert!(chi < critical(df), "scale {s}/{t}: chi2 {chi:.1} df {df}");
            let mean = samples.iter().sum::<i64>() as f64 / samples.len() as f64;
            assert!(mean.abs() < 0.05 * scale.max(1.0), "mean {mean}");
        }
    }

    #[test]
    fn discrete_gaussian_matches_its_pmf() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        for (num, den) in [(4u64, 1u64), (25, 2), (1, 4)] {
            let s2 = num as f64 / den as f64;
            let samples: Vec<i64> = (0..100_000)
                .map(|_| discrete_gaussian(&mut rng, Ratio::new(num, den).unwrap()).unwrap())
                .collect();
            let bound = (12.0 * s2.sqrt()).ceil() as i64 + 2;
            let z: f64 = (-bound..=bound)
                .map(|y| (-(y * y) as f64 / (2.0 * s2)).exp())
                .sum();
            let pmf = |y: i64| (-(y * y) as f64 / (2.0 * s2)).exp() / z;
            let (chi, df) = chi_square(&samples, (4.0 * s2.sqrt()).ceil() as i64 + 1, pmf);
            assert!(
                chi < critical(df),
                "sigma2 {num}/{den}: chi2 {chi:.1} df {df}"
            );
            let var = samples.iter().map(|y| (y * y) as f64).sum::<f64>() / samples.len() as f64;
            // The discrete Gaussian's variance is at most σ² (and close to it
            // for σ ≥ 1).
            assert!(var <= s2 * 1.03 + 0.01, "variance {var} for sigma2 {s2}");
        }
    }

    #[test]
    fn a_biased_sampler_would_fail_the_test() {
        // The goodness-of-fit test must be able to fail: samples from scale 3
        // checked against the PMF of scale 3.3 are rejected.
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let samples: Vec<i64> = (0..100_000)
            .map(|_| discrete_laplace(&mut rng, Ratio::new(3, 1).unwrap()).unwrap())
            .collect();
        let p = (-1.0f64 / 3.3).exp();
        let pmf = |y: i64| (1.0 - p) / (1.0 + p) * p.powi(y.unsigned_abs() as i32);
        let (chi, df) = chi_square(&samples, 13, pmf);
        assert!(chi > critical(df), "chi2 {chi:.1} df {df}");
    }

    #[test]
    fn integer_square_roots() {
        for n in 0u128..2000 {
            let r = isqrt(n);
            assert!(r * r <= n && (r + 1) * (r + 1) > n, "{n}");
        }
        assert_eq!(isqrt(u128::from(u64::MAX)), u128::from(u32::MAX));
    }

    #[test]
    fn parameters_must_be_positive() {
        assert!(Ratio::new(0, 1).is_err());
        assert!(Ratio::new(1, 0).is_err());
    }
}
