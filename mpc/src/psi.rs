//! ECDH private set intersection over ristretto255 (the Diffie–Hellman PSI
//! of Meadows 1986 / Huberman–Franklin–Hogg 1999), cardinality only.
//!
//! Each party holds a fresh secret scalar per session. With items hashed to
//! the group, `H(x)`:
//!
//! 1. A sends `{H(a)^α}` shuffled; B sends `{H(b)^β}` shuffled.
//! 2. Each raises the other's points to its own scalar and sends them back,
//!    shuffled: A learns `{H(a)^{αβ}}` and computes `{H(b)^{βα}}` itself.
//! 3. The size of the intersection of the two doubly blinded sets is the
//!    cohort overlap. Shuffling hides which of A's items matched.
//!
//! Hash to group: SHA-512 over a domain tag, the session id and the
//! length-prefixed item, mapped with the RFC 9496 §4.3.4 element derivation
//! (`RistrettoPoint::from_uniform_bytes`). Received points are decoded with
//! RFC 9496 §4.3.1, which rejects every non-canonical or invalid encoding,
//! and the identity is rejected too (it would come from a zero scalar).

use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::IsIdentity;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use sha2::{Digest, Sha512};

use crate::error::{Error, Result};
use crate::share::random_scalar;

/// Domain tag of the item hash.
const TAG: &[u8] = b"kexin/psi/v1";

/// The hash of one item into the group, bound to the session.
pub fn hash_item(session: &[u8; 32], item: &[u8]) -> RistrettoPoint {
    let mut h = Sha512::new();
    h.update(TAG);
    h.update(session);
    h.update((item.len() as u64).to_le_bytes());
    h.update(item);
    let wide: [u8; 64] = h.finalize().into();
    RistrettoPoint::from_uniform_bytes(&wide)
}

/// Decode a received point: canonical encodings only, never the identity.
pub fn decode(bytes: &[u8; 32]) -> Result<RistrettoPoint> {
    let p = CompressedRistretto(*bytes)
        .decompress()
        .ok_or(Error::InvalidPoint)?;
    if p.is_identity() {
        return Err(Error::InvalidPoint);
    }
    Ok(p)
}

/// One party of one PSI session. The scalar is fresh per session and never
/// leaves; it is zeroized on drop.
pub struct Party {
    key: Scalar,
    session: [u8; 32],
}

impl std::fmt::Debug for Party {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Party")
            .field("session", &hex_prefix(&self.session))
            .finish_non_exhaustive()
    }
}

fn hex_prefix(b: &[u8]) -> String {
    b.iter().take(4).map(|x| format!("{x:02x}")).collect()
}

impl Drop for Party {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

fn shuffled(mut v: Vec<[u8; 32]>) -> Result<Vec<[u8; 32]>> {
    shuffle(&mut v)?;
    Ok(v)
}

/// Shuffle in place with a fresh OS-seeded permutation.
pub fn shuffle<T>(v: &mut [T]) -> Result<()> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|_| Error::Randomness)?;
    v.shuffle(&mut rand_chacha::ChaCha20Rng::from_seed(seed));
    Ok(())
}

impl Party {
    /// A party with a fresh random scalar for `session`.
    pub fn new(session: [u8; 32]) -> Result<Party> {
        let key = random_scalar()?;
        if key == Scalar::ZERO {
            return Err(Error::Randomness);
        }
        Ok(Party { key, session })
    }

    /// Step 1: this party's items, hashed and blinded, in random order.
    pub fn blind<T: AsRef<[u8]> + Sync>(&self, items: &[T]) -> Result<Vec<[u8; 32]>> {
        shuffled(self.blind_in_order(items)?)
    }

    /// Step 1 keeping the items' order, for a caller that attaches a
    /// payload to each point and then shuffles the pairs ([`shuffle`]).
    pub fn blind_in_order<T: AsRef<[u8]> + Sync>(&self, items: &[T]) -> Result<Vec<[u8; 32]>> {
        let half = self.half();
        let out: Vec<[u8; 32]> = items
            .par_chunks(BATCH)
            .flat_map_iter(|chunk| {
                let pts: Vec<RistrettoPoint> = chunk
                    .iter()
                    .map(|x| hash_item(&self.session, x.as_ref()) * half)
                    .collect();
                double_and_compress(&pts)
            })
            .collect();
        Ok(out)
    }

    /// Step 2: the other party's blinded points raised to this party's
    /// scalar, in random order. Any invalid point aborts the whole step.
    pub fn reblind(&self, theirs: &[[u8; 32]]) -> Result<Vec<[u8; 32]>> {
        shuffled(self.reblind_in_order(theirs)?)
    }

    /// Step 2 keeping the order: the receiver of payload pairs needs each
    /// doubly blinded point next to its payload.
    pub fn reblind_in_order(&self, theirs: &[[u8; 32]]) -> Result<Vec<[u8; 32]>> {
        let half = self.half();
        let chunks: Vec<Vec<[u8; 32]>> = theirs
            .par_chunks(BATCH)
            .map(|chunk| {
                let pts: Vec<RistrettoPoint> = chunk
                    .iter()
                    .map(|b| decode(b).map(|p| p * half))
                    .collect::<Result<_>>()?;
                Ok(double_and_compress(&pts).collect::<Vec<_>>())
            })
            .collect::<Result<_>>()?;
        Ok(chunks.into_iter().flatten().collect())
    }

    /// `key / 2`: the batch compression below doubles, so multiplying by
    /// half the key and then doubling gives `key · P`, and a whole batch
    /// shares one field inversion instead of one per point.
    fn half(&self) -> Scalar {
        self.key * Scalar::from(2u8).invert()
    }
}

/// Points per batched compression (one inversion per batch).
const BATCH: usize = 256;

/// `compress(2·P)` for every point, with Montgomery's batch inversion.
fn double_and_compress(pts: &[RistrettoPoint]) -> impl Iterator<Item = [u8; 32]> + use<> {
    RistrettoPoint::double_and_compress_batch(pts)
        .into_iter()
        .map(|c| c.to_bytes())
}

/// Step 3: how many doubly blinded points the two sets share.
pub fn intersection_size(mine: &[[u8; 32]], theirs: &[[u8; 32]]) -> usize {
    let set: std::collections::HashSet<&[u8; 32]> = theirs.iter().collect();
    let mut seen = std::collections::HashSet::new();
    mine.iter()
        .filter(|p| set.contains(p) && seen.insert(**p))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT;

    fn hex32(s: &str) -> [u8; 32] {
        let v: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        v.try_into().unwrap()
    }

    /// RFC 9496 Appendix A.1: encodings of 0·B … 15·B.
    const MULTIPLES: [&str; 16] = [
        "0000000000000000000000000000000000000000000000000000000000000000",
        "e2f2ae0a6abc4e71a884a961c500515f58e30b6aa582dd8db6a65945e08d2d76",
        "6a493210f7499cd17fecb510ae0cea23a110e8d5b901f8acadd3095c73a3b919",
        "94741f5d5d52755ece4f23f044ee27d5d1ea1e2bd196b462166b16152a9d0259",
        "da80862773358b466ffadfe0b3293ab3d9fd53c5ea6c955358f568322daf6a57",
        "e882b131016b52c1d3337080187cf768423efccbb517bb495ab812c4160ff44e",
        "f64746d3c92b13050ed8d80236a7f0007c3b3f962f5ba793d19a601ebb1df403",
        "44f53520926ec81fbd5a387845beb7df85a96a24ece18738bdcfa6a7822a176d",
        "903293d8f2287ebe10e2374dc1a53e0bc887e592699f02d077d5263cdd55601c",
        "02622ace8f7303a31cafc63f8fc48fdc16e1c8c8d234b2f0d6685282a9076031",
        "20706fd788b2720a1ed2a5dad4952b01f413bcf0e7564de8cdc816689e2db95f",
        "bce83f8ba5dd2fa572864c24ba1810f9522bc6004afe95877ac73241cafdab42",
        "e4549ee16b9aa03099ca208c67adafcafa4c3f3e4e5303de6026e3ca8ff84460",
        "aa52e000df2e16f55fb1032fc33bc42742dad6bd5a8fc0be0167436c5948501f",
        "46376b80f409b29dc2b5f6f0c52591990896e5716f41477cd30085ab7f10301e",
        "e0c418f7c8d9c4cdd7395b93ea124f3ad99021bb681dfc3302a9d99a2e53e64e",
    ];

    /// RFC 9496 Appendix A.2: invalid encodings (non-canonical field
    /// elements, negative field elements, non-square x², negative xy,
    /// s = −1 and s = 0 with y = 0).
    const INVALID: [&str; 33] = [
        "00ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "f3ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "01ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "ed57ffd8c914fb201471d1c3d245ce3c746fcbe63a3679d51b6a516ebebe0e20",
        "c34c4e1826e5d403b78e246e88aa051c36ccf0aafebffe137d148a2bf9104562",
        "c940e5a4404157cfb1628b108db051a8d439e1a421394ec4ebccb9ec92a8ac78",
        "47cfc5497c53dc8e61c91d17fd626ffb1c49e2bca94eed052281b510b1117a24",
        "f1c6165d33367351b0da8f6e4511010c68174a03b6581212c71c0e1d026c3c72",
        "87260f7a2f12495118360f02c26a470f450dadf34a413d21042b43b9d93e1309",
        "26948d35ca62e643e26a83177332e6b6afeb9d08e4268b650f1f5bbd8d81d371",
        "4eac077a713c57b4f4397629a4145982c661f48044dd3f96427d40b147d9742f",
        "de6a7b00deadc788eb6b6c8d20c0ae96c2f2019078fa604fee5b87d6e989ad7b",
        "bcab477be20861e01e4a0e295284146a510150d9817763caf1a6f4b422d67042",
        "2a292df7e32cababbd9de088d1d1abec9fc0440f637ed2fba145094dc14bea08",
        "f4a9e534fc0d216c44b218fa0c42d99635a0127ee2e53c712f70609649fdff22",
        "8268436f8c4126196cf64b3c7ddbda90746a378625f9813dd9b8457077256731",
        "2810e5cbc2cc4d4eece54f61c6f69758e289aa7ab440b3cbeaa21995c2f4232b",
        "3eb858e78f5a7254d8c9731174a94f76755fd3941c0ac93735c07ba14579630e",
        "a45fdc55c76448c049a1ab33f17023edfb2be3581e9c7aade8a6125215e04220",
        "d483fe813c6ba647ebbfd3ec41adca1c6130c2beeee9d9bf065c8d151c5f396e",
        "8a2e1d30050198c65a54483123960ccc38aef6848e1ec8f5f780e8523769ba32",
        "32888462f8b486c68ad7dd9610be5192bbeaf3b443951ac1a8118419d9fa097b",
        "227142501b9d4355ccba290404bde41575b037693cef1f438c47f8fbf35d1165",
        "5c37cc491da847cfeb9281d407efc41e15144c876e0170b499a96a22ed31e01e",
        "445425117cb8c90edcbc7c1cc0e74f747f2c1efa5630a967c64f287792a48a4b",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        // Also invalid here: the identity (0·B) as a blinded item.
        "0000000000000000000000000000000000000000000000000000000000000000",
        // And the all-ones string.
        "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        // A valid point with its high bit set is non-canonical.
        "e2f2ae0a6abc4e71a884a961c500515f58e30b6aa582dd8db6a65945e08d2df6",
        "6a493210f7499cd17fecb510ae0cea23a110e8d5b901f8acadd3095c73a3b999",
    ];

    #[test]
    fn rfc9496_multiples_of_the_generator() {
        let mut p = RistrettoPoint::default();
        for (i, want) in MULTIPLES.iter().enumerate() {
            assert_eq!(p.compress().to_bytes(), hex32(want), "{i}·B");
            let back = CompressedRistretto(hex32(want)).decompress().unwrap();
            assert_eq!(back, p);
            p += RISTRETTO_BASEPOINT_POINT;
        }
    }

    #[test]
    fn rfc9496_invalid_encodings_are_rejected() {
        for bad in INVALID {
            assert_eq!(decode(&hex32(bad)), Err(Error::InvalidPoint), "{bad}");
        }
        // One bad point aborts a whole reblinding step.
        let p = Party::new([1; 32]).unwrap();
        let mut theirs = p.blind(&["a", "b"]).unwrap();
        theirs.push(hex32(INVALID[12]));
        assert_eq!(p.reblind(&theirs), Err(Error::InvalidPoint));
    }

    #[test]
    fn rfc9496_element_derivation() {
        // RFC 9496 Appendix A.3, first vector.
        let input: Vec<u8> = "5d1be09e3d0c82fc538112490e35701979d99e06ca3e2b5b54bffe8b4dc772c14d98b696a1bbfb5ca32c436cc61c16563790306c79eaca7705668b47dffe5bb6"
            .as_bytes()
            .chunks(2)
            .map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap(), 16).unwrap())
            .collect();
        let p = RistrettoPoint::from_uniform_bytes(&input.try_into().unwrap());
        assert_eq!(
            p.compress().to_bytes(),
            hex32("3066f82a1a747d45120d1740f14358531a8f04bbffe6a819f86dfe50f44a0a46")
        );
    }

    #[test]
    fn cardinality_matches_the_plain_intersection() {
        let session = [7u8; 32];
        let a: Vec<String> = (0..500).map(|i| format!("id-{i}")).collect();
        let b: Vec<String> = (300..900).map(|i| format!("id-{i}")).collect();
        let (pa, pb) = (Party::new(session).unwrap(), Party::new(session).unwrap());
        let (ba, bb) = (pa.blind(&a).unwrap(), pb.blind(&b).unwrap());
        // Nothing in common between singly blinded sets (different keys).
        assert_eq!(intersection_size(&ba, &bb), 0);
        let a_double = pb.reblind(&ba).unwrap(); // B returns A's set to A
        let b_double = pa.reblind(&bb).unwrap(); // A blinds B's set itself
        assert_eq!(intersection_size(&a_double, &b_double), 200);
    }

    #[test]
    fn sessions_do_not_link() {
        // The same item and the same key in two sessions hash apart.
        assert_ne!(hash_item(&[1; 32], b"x"), hash_item(&[2; 32], b"x"));
        // Fresh scalars: the same item blinds differently each session.
        let x = ["110105194912310021"];
        let a = Party::new([3; 32]).unwrap().blind(&x).unwrap();
        let b = Party::new([3; 32]).unwrap().blind(&x).unwrap();
        assert_ne!(a, b);
    }
}
