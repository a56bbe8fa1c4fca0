//! Distributed discrete Laplace noise: each of `n` parties adds a share, and
//! only the sum of all shares has the discrete Laplace distribution.
//!
//! The discrete Laplace distribution with scale `t`,
//! `P(Z = k) ∝ exp(−|k|/t)`, is the difference of two independent geometric
//! variables with `P(G = k) = (1 − q)·q^k`, `q = e^{−1/t}`. The geometric
//! distribution is infinitely divisible: it is the sum of `n` independent
//! Pólya (negative binomial) variables `NB(1/n, q)`. So if every party adds
//! `NB(1/n, q) − NB(1/n, q)` to its input before sharing, the opened total
//! carries exactly `DLap(t)` — the same noise a single trusted curator would
//! add, with the same ε-DP guarantee for the released total (Goryczka and
//! Xiong 2017; Balle et al. 2020). A party that knows its own share sees the
//! total with the other `n − 1` shares of noise, which is still `ε·n/(n−1)`
//! -DP for it at worst; the README states this.
//!
//! `NB(r, q)` is sampled as a Poisson variable whose rate is drawn from
//! `Gamma(r, q/(1 − q))` (the Gamma–Poisson mixture).

use rand::{CryptoRng, Rng};
use rand_distr::{Distribution, Gamma, Poisson};

use crate::error::{Error, Result};

/// One party's share of discrete Laplace noise with scale `t` (in grid
/// units) split among `parties`.
pub fn laplace_share<R: Rng + CryptoRng>(rng: &mut R, t: f64, parties: usize) -> Result<i64> {
    if !(t.is_finite() && t > 0.0) || parties == 0 {
        return Err(Error::State("noise scale and party count must be positive"));
    }
    let q = (-1.0 / t).exp();
    let r = 1.0 / parties as f64;
    let a = polya(rng, r, q)?;
    let b = polya(rng, r, q)?;
    Ok(a - b)
}

/// `NB(r, q)`: failures before `r` successes with failure probability `q`.
fn polya<R: Rng + CryptoRng>(rng: &mut R, r: f64, q: f64) -> Result<i64> {
    let scale = q / (1.0 - q);
    let gamma = Gamma::new(r, scale).map_err(|_| Error::State("gamma parameters"))?;
    let lambda: f64 = gamma.sample(rng);
    if lambda.is_nan() || lambda <= 0.0 {
        return Ok(0);
    }
    let poisson = Poisson::new(lambda).map_err(|_| Error::State("poisson rate"))?;
    let x: f64 = poisson.sample(rng);
    if !(x.is_finite() && x < i64::MAX as f64) {
        return Err(Error::OutOfRange);
    }
    Ok(x as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// The sum of three parties' shares matches the discrete Laplace pmf at
    /// 0 and ±1 and its variance `2q/(1−q)²`.
    #[test]
    fn three_shares_sum_to_discrete_laplace() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let t = 3.0;
        let q: f64 = (-1.0f64 / t).exp();
        let n = 200_000;
        let mut zero = 0usize;
        let mut one = 0usize;
        let mut sq = 0f64;
        for _ in 0..n {
            let z: i64 = (0..3).map(|_| laplace_share(&mut rng, t, 3).unwrap()).sum();
            zero += usize::from(z == 0);
            one += usize::from(z.abs() == 1);
            sq += (z * z) as f64;
        }
        let p0 = (1.0 - q) / (1.0 + q);
        let p1 = 2.0 * p0 * q;
        let var = 2.0 * q / (1.0 - q).powi(2);
        let f0 = zero as f64 / n as f64;
        let f1 = one as f64 / n as f64;
        // Binomial standard errors are ~0.001 here.
        assert!((f0 - p0).abs() < 0.005, "P(0) {f0} vs {p0}");
        assert!((f1 - p1).abs() < 0.005, "P(|Z|=1) {f1} vs {p1}");
        assert!((sq / n as f64 - var).abs() / var < 0.03, "variance");
    }

    #[test]
    fn bad_parameters_are_refused() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        assert!(laplace_share(&mut rng, 0.0, 3).is_err());
        assert!(laplace_share(&mut rng, 1.0, 0).is_err());
    }
}
