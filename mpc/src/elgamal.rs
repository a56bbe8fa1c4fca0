//! Exponential ElGamal over ristretto255: additively homomorphic encryption
//! of small integers, for PSI with a payload (the sum of a column over the
//! intersection, as in Private Join and Compute with ElGamal in place of
//! Paillier).
//!
//! `Enc(m; r) = (r·G, m·G + r·Y)` under the public key `Y = x·G`. Sums of
//! ciphertexts encrypt sums of plaintexts; decryption yields `m·G`, and `m`
//! is recovered by baby-step giant-step over a range the caller bounds.

use std::collections::HashMap;

use curve25519_dalek::constants::RISTRETTO_BASEPOINT_TABLE;
use curve25519_dalek::ristretto::{RistrettoBasepointTable, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::Identity;

use crate::error::{Error, Result};
use crate::psi::decode;
use crate::share::random_scalar;

/// Largest baby-step table: ranges beyond (2^22)^2 are refused.
const MAX_TABLE: u64 = 1 << 22;

/// A ciphertext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ciphertext {
    pub c1: RistrettoPoint,
    pub c2: RistrettoPoint,
}

impl Ciphertext {
    pub fn add(&self, o: &Ciphertext) -> Ciphertext {
        Ciphertext {
            c1: self.c1 + o.c1,
            c2: self.c2 + o.c2,
        }
    }

    /// An encryption of zero's neutral element (the empty sum).
    pub fn zero() -> Ciphertext {
        Ciphertext {
            c1: RistrettoPoint::identity(),
            c2: RistrettoPoint::identity(),
        }
    }

    pub fn to_bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[..32].copy_from_slice(self.c1.compress().as_bytes());
        b[32..].copy_from_slice(self.c2.compress().as_bytes());
        b
    }

    /// Decode a received ciphertext: both points canonical, neither the
    /// identity.
    pub fn from_bytes(b: &[u8]) -> Result<Ciphertext> {
        if b.len() != 64 {
            return Err(Error::LengthMismatch);
        }
        let mut x = [0u8; 32];
        x.copy_from_slice(&b[..32]);
        let c1 = decode(&x)?;
        x.copy_from_slice(&b[32..]);
        let c2 = decode(&x)?;
        Ok(Ciphertext { c1, c2 })
    }
}

/// A public key with its precomputed multiplication table.
#[derive(Clone)]
pub struct PublicKey {
    point: RistrettoPoint,
    table: RistrettoBasepointTable,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey")
            .field("point", &self.point.compress())
            .finish_non_exhaustive()
    }
}

impl PublicKey {
    pub fn from_point(point: RistrettoPoint) -> PublicKey {
        PublicKey {
            point,
            table: RistrettoBasepointTable::create(&point),
        }
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.point.compress().to_bytes()
    }

    /// Encrypt `m` with fresh randomness.
    pub fn encrypt(&self, m: i64) -> Result<Ciphertext> {
        let r = random_scalar()?;
        Ok(Ciphertext {
            c1: RISTRETTO_BASEPOINT_TABLE * &r,
            c2: RISTRETTO_BASEPOINT_TABLE * &int(m) + &self.table * &r,
        })
    }
}

/// A key pair; the secret scalar is zeroized on drop.
pub struct KeyPair {
    secret: Scalar,
    pub public: PublicKey,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair").finish_non_exhaustive()
    }
}

impl Drop for KeyPair {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.secret);
    }
}

impl KeyPair {
    pub fn generate() -> Result<KeyPair> {
        let secret = random_scalar()?;
        let point = RISTRETTO_BASEPOINT_TABLE * &secret;
        Ok(KeyPair {
            secret,
            public: PublicKey::from_point(point),
        })
    }

    /// Decrypt a ciphertext whose plaintext lies in `[−range, range]`;
    /// anything else is an error (a corrupted or out-of-range sum).
    pub fn decrypt(&self, c: &Ciphertext, range: u64) -> Result<i64> {
        let m = c.c2 - c.c1 * self.secret;
        discrete_log(&m, range)
    }
}

fn int(m: i64) -> Scalar {
    let s = Scalar::from(m.unsigned_abs());
    if m < 0 { -s } else { s }
}

/// Find `m ∈ [−range, range]` with `m·G = p` (baby-step giant-step).
pub fn discrete_log(p: &RistrettoPoint, range: u64) -> Result<i64> {
    let width = range
        .checked_mul(2)
        .and_then(|w| w.checked_add(1))
        .ok_or(Error::OutOfRange)?;
    let m = (width as f64).sqrt().ceil() as u64;
    if m > MAX_TABLE || range > i64::MAX as u64 / 2 {
        return Err(Error::OutOfRange);
    }
    // Shift by `range` so the unknown is in [0, width).
    let target = p + RISTRETTO_BASEPOINT_TABLE * &Scalar::from(range);
    let g = RISTRETTO_BASEPOINT_TABLE * &Scalar::ONE;
    let mut table = HashMap::with_capacity(m as usize);
    let mut acc = RistrettoPoint::identity();
    for i in 0..m {
        table.entry(acc.compress().to_bytes()).or_insert(i);
        acc += g;
    }
    let giant = RISTRETTO_BASEPOINT_TABLE * &Scalar::from(m);
    let mut y = target;
    for j in 0..=m {
        if let Some(i) = table.get(y.compress().as_bytes()) {
            let t = j * m + i;
            if t < width {
                return Ok(t as i64 - range as i64);
            }
        }
        y -= giant;
    }
    Err(Error::OutOfRange)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_decrypt_to_sums() {
        let k = KeyPair::generate().unwrap();
        let values = [17i64, -5, 40_000, 0, 123];
        let sum = values
            .iter()
            .map(|v| k.public.encrypt(*v).unwrap())
            .fold(Ciphertext::zero(), |a, c| a.add(&c));
        assert_eq!(
            k.decrypt(&sum, 1_000_000).unwrap(),
            values.iter().sum::<i64>()
        );
        // A wire round trip.
        let back = Ciphertext::from_bytes(&sum.to_bytes()).unwrap();
        assert_eq!(k.decrypt(&back, 1_000_000).unwrap(), 40_135);
    }

    #[test]
    fn out_of_range_and_wrong_key_fail() {
        let k = KeyPair::generate().unwrap();
        let other = KeyPair::generate().unwrap();
        let c = k.public.encrypt(5_000).unwrap();
        assert_eq!(k.decrypt(&c, 4_999), Err(Error::OutOfRange));
        assert!(other.decrypt(&c, 100_000).is_err());
        assert_eq!(
            discrete_log(&(RISTRETTO_BASEPOINT_TABLE * &-Scalar::from(77u8)), 100).unwrap(),
            -77
        );
        assert_eq!(
            Ciphertext::from_bytes(&[0xff; 64]),
            Err(Error::InvalidPoint)
        );
        assert_eq!(Ciphertext::from_bytes(&[1; 63]), Err(Error::LengthMismatch));
    }
}
