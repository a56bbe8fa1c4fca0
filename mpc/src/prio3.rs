//! Individuals' contributions with Prio3 (the IETF VDAF, draft-irtf-cfrg-vdaf,
//! through the `prio` crate): a client splits a bounded value, or one
//! histogram entry, into shares for two aggregators together with a
//! zero-knowledge validity proof. Neither aggregator alone learns the value;
//! together they check the proof on shares, sum the valid reports and open
//! only the sum.
//!
//! What this module holds, transport-free:
//! - [`Measure`] and [`Vdaf`]: the two kinds of measurement (`Sum` of values
//!   in `0..=max`, `Histogram` of one bucket out of `n`) and the client side
//!   ([`Vdaf::shard`]);
//! - [`Batch`]: one aggregator's side of collecting a batch: verifier shares
//!   out, the peer's in, the accepted reports' aggregate share (with this
//!   aggregator's share of discrete Laplace noise when asked), and the
//!   opened sum.
//!
//! The verify key is drawn jointly at collection time, after every report
//! was submitted, from a 32-byte contribution of each aggregator; a client
//! cannot know it when it builds its proof.

use prio::codec::{Encode, ParameterizedDecode};
use prio::field::{Field128, FieldElementWithInteger};
use prio::vdaf::prio3::{Prio3Histogram, Prio3SumVec};
use prio::vdaf::{AggregateShare, Aggregator, Client, Vdaf as VdafTrait, VerifyTransition};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

pub const NONCE_SIZE: usize = 16;
pub const VERIFY_KEY_SIZE: usize = 32;
/// Largest histogram and largest bound accepted (keeps proofs and shares
/// small: a report is a few KB).
pub const MAX_BUCKETS: usize = 1024;
pub const MAX_BOUND: u64 = 1 << 40;

/// What an individual contributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// A value in `0..=max`; the result is the sum (and the count of
    /// accepted reports).
    Sum { max: u64 },
    /// One of `buckets` buckets; the result is the count per bucket.
    Histogram { buckets: usize },
}

impl Measure {
    /// Length of the aggregate (1 for a sum).
    pub fn len(&self) -> usize {
        match self {
            Measure::Sum { .. } => 1,
            Measure::Histogram { buckets } => *buckets,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The L1 sensitivity of the aggregate to one report (for DP noise).
    pub fn sensitivity(&self) -> u64 {
        match self {
            Measure::Sum { max } => *max,
            Measure::Histogram { .. } => 1,
        }
    }
}

#[derive(Debug, Clone)]
enum Inner {
    Sum(Prio3SumVec),
    Histogram(Prio3Histogram),
}

/// The Prio3 instance for a [`Measure`] with two aggregators.
#[derive(Debug, Clone)]
pub struct Vdaf {
    pub measure: Measure,
    inner: Inner,
}

/// One client's report: the nonce, the public share, and one input share
/// per aggregator (each sent only to its aggregator). `Debug` shows the
/// nonce only.
#[derive(Clone, PartialEq, Eq)]
pub struct Report {
    pub nonce: [u8; NONCE_SIZE],
    pub public_share: Vec<u8>,
    pub input_shares: [Vec<u8>; 2],
}

/// What one aggregator stores of a report. `Debug` shows the nonce only.
#[derive(Clone, PartialEq, Eq)]
pub struct Stored {
    pub nonce: [u8; NONCE_SIZE],
    pub public_share: Vec<u8>,
    pub input_share: Vec<u8>,
}

impl std::fmt::Debug for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Report({:02x?}, ..)", self.nonce)
    }
}

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Stored({:02x?}, ..)", self.nonce)
    }
}

fn chunk_length(bits: usize) -> usize {
    // The draft's advice: about the square root of the number of bits.
    ((bits as f64).sqrt().round() as usize).max(1)
}

fn prio_err(_: impl std::fmt::Debug) -> Error {
    Error::Prio("the report or share was refused")
}

impl Vdaf {
    pub fn new(measure: Measure) -> Result<Vdaf> {
        let inner = match measure {
            Measure::Sum { max } => {
                if max == 0 || max > MAX_BOUND {
                    return Err(Error::Prio("the bound must be in 1..=2^40"));
                }
                let bits = 64 - max.leading_zeros() as usize;
                Inner::Sum(
                    Prio3SumVec::new_sum_vec(2, u128::from(max), 1, chunk_length(bits))
                        .map_err(prio_err)?,
                )
            }
            Measure::Histogram { buckets } => {
                if !(2..=MAX_BUCKETS).contains(&buckets) {
                    return Err(Error::Prio("a histogram needs 2..=1024 buckets"));
                }
                Inner::Histogram(
                    Prio3Histogram::new_histogram(2, buckets, chunk_length(buckets))
                        .map_err(prio_err)?,
                )
            }
        };
        Ok(Vdaf { measure, inner })
    }

    /// Shard `value` (the value of a sum, or the bucket index of a
    /// histogram) under the application context `ctx` (the scene).
    pub fn shard(&self, ctx: &[u8], value: u64) -> Result<Report> {
        let mut nonce = [0u8; NONCE_SIZE];
        getrandom::fill(&mut nonce).map_err(|_| Error::Randomness)?;
        self.shard_with_nonce(ctx, value, nonce)
    }

    fn shard_with_nonce(&self, ctx: &[u8], value: u64, nonce: [u8; NONCE_SIZE]) -> Result<Report> {
        fn go<V: Client<NONCE_SIZE>>(
            v: &V,
            ctx: &[u8],
            m: &V::Measurement,
            nonce: [u8; NONCE_SIZE],
        ) -> Result<Report> {
            let (public, inputs) = v.shard(ctx, m, &nonce).map_err(prio_err)?;
            let [a, b]: [V::InputShare; 2] = inputs
                .try_into()
                .map_err(|_| Error::Prio("not two input shares"))?;
            Ok(Report {
                nonce,
                public_share: public.get_encoded().map_err(prio_err)?,
                input_shares: [
                    a.get_encoded().map_err(prio_err)?,
                    b.get_encoded().map_err(prio_err)?,
                ],
            })
        }
        match (&self.inner, self.measure) {
            (Inner::Sum(v), Measure::Sum { max }) => {
                if value > max {
                    return Err(Error::OutOfRange);
                }
                go(v, ctx, &vec![u128::from(value)], nonce)
            }
            (Inner::Histogram(v), Measure::Histogram { buckets }) => {
                if value as usize >= buckets {
                    return Err(Error::OutOfRange);
                }
                go(v, ctx, &(value as usize), nonce)
            }
            _ => Err(Error::State("measure and instance disagree")),
        }
    }

    /// Check that a stored share decodes for aggregator `agg_id` (done when
    /// a report arrives, so garbage is refused at once).
    pub fn check_share(&self, agg_id: usize, s: &Stored) -> Result<()> {
        fn go<V: VdafTrait>(v: &V, agg_id: usize, s: &Stored) -> Result<()> {
            V::PublicShare::get_decoded_with_param(v, &s.public_share).map_err(prio_err)?;
            V::InputShare::get_decoded_with_param(&(v, agg_id), &s.input_share)
                .map_err(prio_err)?;
            Ok(())
        }
        if agg_id > 1 {
            return Err(Error::State("two aggregators"));
        }
        match &self.inner {
            Inner::Sum(v) => go(v, agg_id, s),
            Inner::Histogram(v) => go(v, agg_id, s),
        }
    }
}

/// The joint verify key from both aggregators' random contributions.
pub fn verify_key(leader: &[u8; 32], helper: &[u8; 32]) -> [u8; VERIFY_KEY_SIZE] {
    let mut h = Sha256::new();
    h.update(b"kexin/prio3-verify-key/v1");
    h.update(leader);
    h.update(helper);
    h.finalize().into()
}

/// One aggregator's side of one batch (draft-irtf-cfrg-vdaf-18 §5.2, the
/// verification and aggregation of Prio3, §7.2). `Debug` hides the verify
/// key and the shares.
pub struct Batch {
    vdaf: Vdaf,
    agg_id: usize,
    ctx: Vec<u8>,
    key: [u8; VERIFY_KEY_SIZE],
    reports: Vec<Stored>,
    /// This side's verification state and verifier share per report, kept
    /// from round 0 for round 1; `None` where init failed.
    pending: Option<Pending>,
    /// Accepted reports' indices and the aggregate share, once combined.
    accepted: Vec<usize>,
    aggregate: Option<Vec<Field128>>,
}

/// One report's verification state and this aggregator's verifier share.
type Started<V> = (
    <V as Aggregator<VERIFY_KEY_SIZE, NONCE_SIZE>>::VerifyState,
    <V as Aggregator<VERIFY_KEY_SIZE, NONCE_SIZE>>::VerifierShare,
);

/// Round 0's per-report results, by instance.
enum Pending {
    Sum(Vec<Option<Started<Prio3SumVec>>>),
    Histogram(Vec<Option<Started<Prio3Histogram>>>),
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Batch(aggregator {}, {} reports, {} accepted)",
            self.agg_id,
            self.reports.len(),
            self.accepted.len()
        )
    }
}

/// What a batch's verification ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub accepted: usize,
    pub rejected: usize,
}

impl Batch {
    pub fn new(
        vdaf: Vdaf,
        agg_id: usize,
        ctx: &[u8],
        key: [u8; VERIFY_KEY_SIZE],
        reports: Vec<Stored>,
    ) -> Result<Batch> {
        if agg_id > 1 {
            return Err(Error::State("two aggregators"));
        }
        Ok(Batch {
            vdaf,
            agg_id,
            ctx: ctx.to_vec(),
            key,
            reports,
            pending: None,
            accepted: Vec::new(),
            aggregate: None,
        })
    }

    pub fn len(&self) -> usize {
        self.reports.len()
    }

    pub fn is_empty(&self) -> bool {
        self.reports.is_empty()
    }

    /// Round 0 (`verify_init`, draft §5.2): this aggregator's verifier
    /// share of every report, encoded
    /// as `(u32 len | bytes)*` with length 0 for a report it could not even
    /// start verifying (it is rejected by both).
    pub fn verifier_shares(&mut self) -> Result<Vec<u8>> {
        fn go<V: Aggregator<VERIFY_KEY_SIZE, NONCE_SIZE, AggregationParam = ()>>(
            v: &V,
            b: &Batch,
            out: &mut Vec<u8>,
        ) -> Vec<Option<Started<V>>> {
            b.reports
                .iter()
                .map(|r| {
                    let started = (|| {
                        let public =
                            V::PublicShare::get_decoded_with_param(v, &r.public_share).ok()?;
                        let input =
                            V::InputShare::get_decoded_with_param(&(v, b.agg_id), &r.input_share)
                                .ok()?;
                        let (state, share) = v
                            .verify_init(&b.key, &b.ctx, b.agg_id, &(), &r.nonce, &public, &input)
                            .ok()?;
                        let bytes = share.get_encoded().ok()?;
                        Some(((state, share), bytes))
                    })();
                    let bytes = started.as_ref().map_or(&[][..], |(_, b)| b.as_slice());
                    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                    out.extend_from_slice(bytes);
                    started.map(|(s, _)| s)
                })
                .collect()
        }
        let mut out = Vec::new();
        self.pending = Some(match &self.vdaf.inner {
            Inner::Sum(v) => Pending::Sum(go(v, self, &mut out)),
            Inner::Histogram(v) => Pending::Histogram(go(v, self, &mut out)),
        });
        Ok(out)
    }

    /// Round 1 (`verifier_shares_to_message` and `verify_next`, draft
    /// §5.2; Prio3's FLP decision, §7.2.2): combine with the peer's
    /// verifier shares; the reports whose proof holds are aggregated. Both
    /// aggregators reach the same verdict on every report.
    pub fn combine(&mut self, theirs: &[u8]) -> Result<Verified> {
        let pending = self
            .pending
            .take()
            .ok_or(Error::State("verifier shares first"))?;
        let theirs = split_items(theirs, self.reports.len())?;
        fn go<V>(
            v: &V,
            b: &Batch,
            mine: Vec<Option<Started<V>>>,
            theirs: &[&[u8]],
        ) -> Result<(Vec<usize>, Vec<Field128>)>
        where
            V: Aggregator<VERIFY_KEY_SIZE, NONCE_SIZE, AggregationParam = ()>,
            V::AggregateShare: Into<AggregateShare<Field128>>,
        {
            use prio::vdaf::Aggregatable;
            let mut accepted = Vec::new();
            let mut agg = v.aggregate_init(&());
            for (i, m) in mine.into_iter().enumerate() {
                let (Some((state, ours)), false) = (m, theirs[i].is_empty()) else {
                    continue;
                };
                let out = (|| -> Option<V::OutputShare> {
                    let peer = V::VerifierShare::get_decoded_with_param(&state, theirs[i]).ok()?;
                    let shares = if b.agg_id == 0 {
                        [ours, peer]
                    } else {
                        [peer, ours]
                    };
                    let msg = v.verifier_shares_to_message(&b.ctx, &(), shares).ok()?;
                    match v.verify_next(&b.ctx, state, msg).ok()? {
                        VerifyTransition::Finish(out) => Some(out),
                        VerifyTransition::Continue(..) => None,
                    }
                })();
                if let Some(out) = out {
                    agg.accumulate(&out).map_err(prio_err)?;
                    accepted.push(i);
                }
            }
            let agg: AggregateShare<Field128> = agg.into();
            Ok((accepted, agg.as_ref().to_vec()))
        }
        let (accepted, agg) = match (&self.vdaf.inner, pending) {
            (Inner::Sum(v), Pending::Sum(m)) => go(v, self, m, &theirs)?,
            (Inner::Histogram(v), Pending::Histogram(m)) => go(v, self, m, &theirs)?,
            _ => return Err(Error::State("measure and instance disagree")),
        };
        let verdict = Verified {
            accepted: accepted.len(),
            rejected: self.reports.len() - accepted.len(),
        };
        self.accepted = accepted;
        self.aggregate = Some(agg);
        Ok(verdict)
    }

    /// The indices of the accepted reports (after [`Self::combine`]).
    pub fn accepted(&self) -> &[usize] {
        &self.accepted
    }

    /// Round 2 (`aggregate`, draft §5.3): this aggregator's aggregate
    /// share, with `noise` (this
    /// aggregator's share of the DP noise, one integer per aggregate
    /// entry; empty for none) added in the field.
    pub fn aggregate_share(&self, noise: &[i64]) -> Result<Vec<u8>> {
        let agg = self
            .aggregate
            .as_ref()
            .ok_or(Error::State("combine first"))?;
        if !noise.is_empty() && noise.len() != agg.len() {
            return Err(Error::LengthMismatch);
        }
        let mut out = Vec::with_capacity(agg.len() * 16);
        for (i, f) in agg.iter().enumerate() {
            let n = noise.get(i).copied().unwrap_or(0);
            let noisy = *f + signed(n);
            out.extend_from_slice(&u128::from(noisy).to_be_bytes());
        }
        Ok(out)
    }

    /// Open the sum from both aggregate shares (`unshard`, draft §5.4): per
    /// aggregate entry a signed
    /// integer (noise may take a small count below zero).
    pub fn open(&self, mine: &[u8], theirs: &[u8]) -> Result<Vec<i128>> {
        let n = self.vdaf.measure.len();
        if mine.len() != n * 16 || theirs.len() != n * 16 {
            return Err(Error::LengthMismatch);
        }
        let p = Field128::modulus();
        let elems = |b: &[u8]| -> Result<Vec<Field128>> {
            b.chunks_exact(16)
                .map(|c| {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(c);
                    let x = u128::from_be_bytes(a);
                    if x >= p {
                        return Err(Error::Prio("an aggregate share out of the field"));
                    }
                    Ok(Field128::from(x))
                })
                .collect()
        };
        let (a, b) = (elems(mine)?, elems(theirs)?);
        Ok(a.iter()
            .zip(&b)
            .map(|(x, y)| {
                let v = u128::from(*x + *y);
                if v > p / 2 {
                    -((p - v) as i128)
                } else {
                    v as i128
                }
            })
            .collect())
    }
}

fn signed(n: i64) -> Field128 {
    let m = Field128::from(u128::from(n.unsigned_abs()));
    if n < 0 { Field128::from(0u128) - m } else { m }
}

/// `(u32 len | bytes)*` with exactly `n` items.
fn split_items(mut b: &[u8], n: usize) -> Result<Vec<&[u8]>> {
    let mut out = Vec::with_capacity(n);
    while !b.is_empty() {
        let (len, rest) = b
            .split_at_checked(4)
            .ok_or(Error::Malformed("truncated verifier shares"))?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let (item, rest) = rest
            .split_at_checked(len)
            .ok_or(Error::Malformed("truncated verifier shares"))?;
        out.push(item);
        b = rest;
    }
    if out.len() != n {
        return Err(Error::LengthMismatch);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
    use super::*;

    fn stored(r: &Report, agg: usize) -> Stored {
        Stored {
            nonce: r.nonce,
            public_share: r.public_share.clone(),
            input_share: r.input_shares[agg].clone(),
        }
    }

    /// Both aggregators' whole exchange in memory.
    fn collect(vdaf: &Vdaf, reports: &[Report], noise: [&[i64]; 2]) -> (Verified, Vec<i128>) {
        let key = verify_key(&[1; 32], &[2; 32]);
        let mut b: Vec<Batch> = (0..2)
            .map(|a| {
                let s = reports.iter().map(|r| stored(r, a)).collect();
                Batch::new(vdaf.clone(), a, b"scene", key, s).unwrap()
            })
            .collect();
        let v0 = b[0].verifier_shares().unwrap();
        let v1 = b[1].verifier_shares().unwrap();
        let d0 = b[0].combine(&v1).unwrap();
        let d1 = b[1].combine(&v0).unwrap();
        assert_eq!(d0, d1);
        assert_eq!(b[0].accepted(), b[1].accepted());
        let a0 = b[0].aggregate_share(noise[0]).unwrap();
        let a1 = b[1].aggregate_share(noise[1]).unwrap();
        let r0 = b[0].open(&a0, &a1).unwrap();
        assert_eq!(r0, b[1].open(&a1, &a0).unwrap());
        (d0, r0)
    }

    #[test]
    fn a_thousand_individuals_sum_exactly() {
        let vdaf = Vdaf::new(Measure::Sum { max: 20_000 }).unwrap();
        let values: Vec<u64> = (0..1000u64).map(|i| (i * 7919) % 20_001).collect();
        let reports: Vec<Report> = values
            .iter()
            .map(|v| vdaf.shard(b"scene", *v).unwrap())
            .collect();
        let (d, sum) = collect(&vdaf, &reports, [&[], &[]]);
        assert_eq!(
            d,
            Verified {
                accepted: 1000,
                rejected: 0
            }
        );
        assert_eq!(
            sum,
            vec![values.iter().map(|v| i128::from(*v)).sum::<i128>()]
        );
    }

    #[test]
    fn a_histogram_counts_each_bucket_and_noise_shares_add_up() {
        let vdaf = Vdaf::new(Measure::Histogram { buckets: 5 }).unwrap();
        let reports: Vec<Report> = (0..50u64)
            .map(|i| vdaf.shard(b"scene", i % 5).unwrap())
            .collect();
        let (_, h) = collect(&vdaf, &reports, [&[], &[]]);
        assert_eq!(h, vec![10; 5]);
        let (_, noisy) = collect(&vdaf, &reports, [&[3, -2, 0, -20, 1], &[-1, 1, 0, 5, 0]]);
        assert_eq!(noisy, vec![12, 9, 10, -5, 11]);
    }

    #[test]
    fn invalid_proofs_and_out_of_range_values_are_rejected() {
        let vdaf = Vdaf::new(Measure::Sum { max: 100 }).unwrap();
        assert_eq!(vdaf.shard(b"scene", 101), Err(Error::OutOfRange));
        let mut reports: Vec<Report> = (0..10u64)
            .map(|v| vdaf.shard(b"scene", v).unwrap())
            .collect();
        // A poisoned input share (the value part altered), a share for
        // another scene, and a report whose helper share is another
        // report's.
        let last = reports[0].input_shares[0].len() - 1;
        reports[1].input_shares[0][3] ^= 1;
        reports[2].input_shares[0][last] ^= 0x10;
        let other = vdaf.shard(b"another scene", 5).unwrap();
        reports[3] = other;
        reports[4].input_shares[1] = reports[5].input_shares[1].clone();
        let (d, sum) = collect(&vdaf, &reports, [&[], &[]]);
        assert_eq!(d.rejected, 4, "{d:?}");
        assert_eq!(sum, vec![5 + 6 + 7 + 8 + 9]);
    }

    #[test]
    fn garbage_shares_are_refused_on_arrival() {
        let vdaf = Vdaf::new(Measure::Histogram { buckets: 3 }).unwrap();
        let r = vdaf.shard(b"s", 1).unwrap();
        assert!(vdaf.check_share(0, &stored(&r, 0)).is_ok());
        assert!(vdaf.check_share(1, &stored(&r, 1)).is_ok());
        let mut bad = stored(&r, 0);
        bad.input_share.truncate(5);
        assert!(vdaf.check_share(0, &bad).is_err());
    }
}
