//! Additive secret sharing over the ristretto255 scalar field
//! (Z_ℓ, ℓ = 2^252 + 27742317777372353535851937790883648493).
//!
//! A vector of values is split into `n ≥ 3` share vectors: `n − 1` uniformly
//! random, the last the difference, so any `n − 1` shares are independent of
//! the secret and only the sum of all `n` opens it. Parties add share
//! vectors locally (the sum of shares is a share of the sum) and open only
//! the total. Real values travel as fixed-point integers (`round(v·10^d)`),
//! negative ones as their field negation; [`decode_fixed`] maps back and
//! refuses anything outside ±2^120, which no honest sum reaches.

pub use curve25519_dalek::scalar::Scalar;
use subtle::{Choice, ConstantTimeEq};
use zeroize::Zeroize;

use crate::MIN_PARTIES;
use crate::error::{Error, Result};

/// One party's share vector (or a sum of them): a secret until every
/// party's is added. `Debug` shows its length only, it is wiped on drop,
/// and equality runs in constant time.
#[derive(Clone, Default)]
pub struct ShareVec(Vec<Scalar>);

impl ShareVec {
    pub fn new(v: Vec<Scalar>) -> ShareVec {
        ShareVec(v)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_slice(&self) -> &[Scalar] {
        &self.0
    }

    /// The elements at `positions` (a party's part of an opening).
    pub fn pick(&self, positions: &[usize]) -> Result<ShareVec> {
        positions
            .iter()
            .map(|i| self.0.get(*i).copied().ok_or(Error::LengthMismatch))
            .collect::<Result<_>>()
            .map(ShareVec)
    }
}

impl std::fmt::Debug for ShareVec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ShareVec(len = {}, ..)", self.0.len())
    }
}

impl Drop for ShareVec {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl ConstantTimeEq for ShareVec {
    fn ct_eq(&self, other: &ShareVec) -> Choice {
        // The lengths are public (the plan fixes them).
        if self.0.len() != other.0.len() {
            return Choice::from(0);
        }
        self.0
            .iter()
            .zip(&other.0)
            .fold(Choice::from(1), |acc, (a, b)| acc & a.ct_eq(b))
    }
}

impl PartialEq for ShareVec {
    fn eq(&self, other: &ShareVec) -> bool {
        self.ct_eq(other).into()
    }
}

impl Eq for ShareVec {}

/// Largest magnitude a decoded fixed-point value may have.
const RANGE: u128 = 1 << 120;

/// A uniformly random scalar from the OS (64 bytes reduced, so the bias is
/// below 2^-250).
pub fn random_scalar() -> Result<Scalar> {
    let mut b = [0u8; 64];
    getrandom::fill(&mut b).map_err(|_| Error::Randomness)?;
    let s = Scalar::from_bytes_mod_order_wide(&b);
    zeroize::Zeroize::zeroize(&mut b);
    Ok(s)
}

/// Encode `v` with `decimals` places as a field element.
pub fn encode_fixed(v: f64, decimals: u32) -> Result<Scalar> {
    let scaled = (v * 10f64.powi(decimals as i32)).round();
    if !scaled.is_finite() || scaled.abs() >= RANGE as f64 {
        return Err(Error::OutOfRange);
    }
    let m = scaled.abs() as u128;
    let s = Scalar::from(m);
    Ok(if scaled < 0.0 { -s } else { s })
}

/// Decode a field element encoded by [`encode_fixed`] (or a sum of them).
pub fn decode_fixed(s: &Scalar, decimals: u32) -> Result<f64> {
    let scale = 10f64.powi(decimals as i32);
    if let Some(m) = small(s) {
        return Ok(m as f64 / scale);
    }
    if let Some(m) = small(&-s) {
        return Ok(-(m as f64) / scale);
    }
    Err(Error::OutOfRange)
}

/// The scalar as an integer when it is below [`RANGE`].
fn small(s: &Scalar) -> Option<u128> {
    let b = s.to_bytes();
    if b[16..].iter().any(|&x| x != 0) {
        return None;
    }
    let mut lo = [0u8; 16];
    lo.copy_from_slice(&b[..16]);
    let v = u128::from_le_bytes(lo);
    (v < RANGE).then_some(v)
}

/// Encode a signed integer (a count or a fixed-point total) as a field element.
pub fn encode_int(v: i128) -> Result<Scalar> {
    let m = v.unsigned_abs();
    if m >= RANGE {
        return Err(Error::OutOfRange);
    }
    let s = Scalar::from(m);
    Ok(if v < 0 { -s } else { s })
}

/// Decode a sum of [`encode_int`] values; anything outside ±2^120 (a
/// corrupted or incomplete opening) is refused.
pub fn decode_int(s: &Scalar) -> Result<i128> {
    if let Some(m) = small(s) {
        return Ok(m as i128);
    }
    if let Some(m) = small(&-s) {
        return Ok(-(m as i128));
    }
    Err(Error::OutOfRange)
}

/// A share vector on the wire: 32 bytes per element.
pub fn to_bytes(v: &[Scalar]) -> Vec<u8> {
    v.iter().flat_map(|s| s.to_bytes()).collect()
}

/// Parse a share vector of exactly `len` elements; every element must be
/// the canonical encoding of a field element (a reduced 32-byte integer).
pub fn from_bytes(bytes: &[u8], len: usize) -> Result<ShareVec> {
    if bytes.len() != len * 32 {
        return Err(Error::LengthMismatch);
    }
    bytes
        .chunks_exact(32)
        .map(|c| {
            let mut b = [0u8; 32];
            b.copy_from_slice(c);
            Option::<Scalar>::from(Scalar::from_canonical_bytes(b)).ok_or(Error::InvalidScalar)
        })
        .collect::<Result<_>>()
        .map(ShareVec)
}

/// Split `secret` into `parties` additive share vectors.
pub fn split(secret: &[Scalar], parties: usize) -> Result<Vec<ShareVec>> {
    if parties < MIN_PARTIES {
        return Err(Error::TooFewParties {
            min: MIN_PARTIES,
            got: parties,
        });
    }
    let mut shares = Vec::with_capacity(parties);
    let mut last: Vec<Scalar> = secret.to_vec();
    for _ in 1..parties {
        let r: Vec<Scalar> = (0..secret.len())
            .map(|_| random_scalar())
            .collect::<Result<_>>()?;
        for (l, x) in last.iter_mut().zip(&r) {
            *l -= x;
        }
        shares.push(ShareVec(r));
    }
    shares.push(ShareVec(last));
    Ok(shares)
}

/// Element-wise sum of share vectors (a party adding what it holds, or the
/// opening of a total from every party's sum).
pub fn add(vectors: &[ShareVec]) -> Result<ShareVec> {
    let Some(first) = vectors.first() else {
        return Err(Error::LengthMismatch);
    };
    let mut out = first.clone();
    for v in &vectors[1..] {
        if v.len() != out.len() {
            return Err(Error::LengthMismatch);
        }
        for (o, x) in out.0.iter_mut().zip(&v.0) {
            *o += x;
        }
    }
    Ok(out)
}

/// Open a total from one share vector per party; fewer than
/// [`MIN_PARTIES`] is refused. The opened total is public.
pub fn reconstruct(shares: &[ShareVec]) -> Result<Vec<Scalar>> {
    if shares.len() < MIN_PARTIES {
        return Err(Error::TooFewParties {
            min: MIN_PARTIES,
            got: shares.len(),
        });
    }
    Ok(add(shares)?.as_slice().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn split_then_reconstruct_is_the_identity(
            values in proptest::collection::vec(-1.0e12f64..1.0e12, 0..20),
            parties in 3usize..8,
        ) {
            let secret: Vec<Scalar> = values.iter().map(|v| encode_fixed(*v, 3).unwrap()).collect();
            let shares = split(&secret, parties).unwrap();
            prop_assert_eq!(shares.len(), parties);
            prop_assert_eq!(reconstruct(&shares).unwrap(), secret.clone());
            for (v, s) in values.iter().zip(&secret) {
                let back = decode_fixed(s, 3).unwrap();
                prop_assert!((back - v).abs() <= 0.0005 + v.abs() * 1e-15);
            }
        }

        #[test]
        fn shares_add_to_shares_of_the_sum(a in -1.0e9f64..1.0e9, b in -1.0e9f64..1.0e9) {
            let sa = split(&[encode_fixed(a, 2).unwrap()], 3).unwrap();
            let sb = split(&[encode_fixed(b, 2).unwrap()], 3).unwrap();
            // Each party adds its two shares locally; only the total opens.
            let per_party: Vec<ShareVec> =
                (0..3).map(|i| add(&[sa[i].clone(), sb[i].clone()]).unwrap()).collect();
            let total = decode_fixed(&reconstruct(&per_party).unwrap()[0], 2).unwrap();
            let want = (a * 100.0).round() / 100.0 + (b * 100.0).round() / 100.0;
            prop_assert!((total - want).abs() < 1e-6 * (1.0 + want.abs()));
        }
    }

    #[test]
    fn fewer_than_three_parties_are_refused() {
        let s = [Scalar::from(7u64)];
        assert!(matches!(split(&s, 2), Err(Error::TooFewParties { .. })));
        let shares = split(&s, 3).unwrap();
        assert!(reconstruct(&shares[..2]).is_err());
    }

    #[test]
    fn missing_a_share_reveals_nothing_like_the_secret() {
        // Two of three shares sum to a uniformly random value: the chance
        // it equals the secret is 2^-252.
        let s = [Scalar::from(42u64)];
        for _ in 0..100 {
            let shares = split(&s, 3).unwrap();
            let partial = add(&shares[..2]).unwrap();
            assert_ne!(partial, ShareVec::new(s.to_vec()));
            assert!(
                decode_fixed(&partial.as_slice()[0], 0).is_err(),
                "out of range w.h.p."
            );
        }
    }

    #[test]
    fn integers_and_the_wire_format_round_trip() {
        for v in [0i128, 1, -1, 123_456_789_012, -(1 << 100)] {
            assert_eq!(decode_int(&encode_int(v).unwrap()).unwrap(), v);
        }
        assert!(encode_int(1 << 120).is_err());
        let v: Vec<Scalar> = [5i128, -7]
            .iter()
            .map(|x| encode_int(*x).unwrap())
            .collect();
        assert_eq!(from_bytes(&to_bytes(&v), 2).unwrap().as_slice(), &v[..]);
        assert_eq!(from_bytes(&to_bytes(&v), 3), Err(Error::LengthMismatch));
        // ℓ itself and 2^256 − 1 are not canonical scalars.
        let mut bad = to_bytes(&v);
        bad[..32].copy_from_slice(&[0xff; 32]);
        assert_eq!(from_bytes(&bad, 2), Err(Error::InvalidScalar));
        let ell = (-Scalar::ONE).to_bytes();
        let mut ell_plus = ell;
        ell_plus[0] += 1; // ℓ − 1 + 1 = ℓ
        bad[..32].copy_from_slice(&ell_plus);
        assert_eq!(from_bytes(&bad, 2), Err(Error::InvalidScalar));
    }

    #[test]
    fn out_of_range_values_are_refused() {
        assert!(encode_fixed(f64::NAN, 0).is_err());
        assert!(encode_fixed(1e40, 0).is_err());
        assert_eq!(
            decode_fixed(&encode_fixed(-12.5, 1).unwrap(), 1).unwrap(),
            -12.5
        );
        assert!(add(&[ShareVec::new(vec![Scalar::ONE]), ShareVec::default()]).is_err());
    }

    #[test]
    fn a_share_vector_hides_its_values_and_compares_by_value() {
        let a = ShareVec::new(vec![Scalar::from(1234567u64), Scalar::from(89u64)]);
        assert_eq!(format!("{a:?}"), "ShareVec(len = 2, ..)");
        assert_eq!(a, a.clone());
        assert_ne!(
            a,
            ShareVec::new(vec![Scalar::from(1234567u64), Scalar::from(88u64)])
        );
        assert_ne!(a, ShareVec::new(vec![Scalar::from(1234567u64)]));
        assert_eq!(
            a.pick(&[1]).unwrap(),
            ShareVec::new(vec![Scalar::from(89u64)])
        );
        assert!(a.pick(&[2]).is_err());
    }
}
