//! Private set intersection between two nodes (ECDH over ristretto255).
//!
//! Cardinality ([`PsiCount`], both nodes play it):
//!
//! ```text
//! round 0  each node sends its items hashed to the group and blinded by
//!          its secret scalar, shuffled
//! round 1  each node returns the other's points raised to its own scalar
//! ```
//!
//! Both learn the overlap size (the first node releases it, with noise).
//!
//! Sum over the intersection ([`PsiSum`]):
//!
//! ```text
//! round 0  first → second: its blinded items, shuffled
//!          second → first: an ElGamal public key and (blinded item,
//!          Enc(value)) pairs, shuffled
//! round 1  second → first: the first's points reblinded
//!          first → second: the sum of the ciphertexts whose item matched,
//!          plus an encryption of the first's noise
//! ```
//!
//! The first learns the overlap size, the second only the noisy sum.

use std::collections::HashSet;

use kexin_mpc::elgamal::{Ciphertext, KeyPair, PublicKey};
use kexin_mpc::message::Inbox;
use kexin_mpc::psi::{Party, decode, intersection_size};

use super::{Abort, MAX_PAYLOAD, Outbound, Patience, Role, Step, mpc_rule, outbound};
use crate::federated::{PsiSet, psi_noise};

const MALFORMED: Abort = Abort::fed("a party sent a malformed message");
const WRONG_LENGTH: Abort = Abort::fed("a party sent a share vector of the wrong length");

/// A payload of 32-byte group elements.
pub fn encode_points(p: &[[u8; 32]]) -> Vec<u8> {
    p.concat()
}

/// [`encode_points`]'s inverse; anything but whole points is malformed.
pub fn decode_points(p: &[u8]) -> Result<Vec<[u8; 32]>, Abort> {
    if !p.len().is_multiple_of(32) {
        return Err(MALFORMED);
    }
    Ok(p.chunks_exact(32)
        .map(|c| {
            let mut b = [0u8; 32];
            b.copy_from_slice(c);
            b
        })
        .collect())
}

/// The second node's round 0 of a PSI sum: its public key, then (blinded
/// item, ciphertext of its value) pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SumOffer {
    pub public_key: [u8; 32],
    pub pairs: Vec<([u8; 32], [u8; 64])>,
}

impl SumOffer {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + 96 * self.pairs.len());
        out.extend_from_slice(&self.public_key);
        for (p, c) in &self.pairs {
            out.extend_from_slice(p);
            out.extend_from_slice(c);
        }
        out
    }

    pub fn decode(b: &[u8]) -> Result<SumOffer, Abort> {
        let (key, rest) = b.split_first_chunk::<32>().ok_or(MALFORMED)?;
        if !rest.len().is_multiple_of(96) {
            return Err(MALFORMED);
        }
        let pairs = rest
            .chunks_exact(96)
            .map(|c| {
                let (p, ct) = c.split_at(32);
                let mut point = [0u8; 32];
                point.copy_from_slice(p);
                let mut cipher = [0u8; 64];
                cipher.copy_from_slice(ct);
                (point, cipher)
            })
            .collect();
        Ok(SumOffer {
            public_key: *key,
            pairs,
        })
    }
}

/// The two nodes' common state: the session, who is who, the secret
/// scalar, and the receive-side check.
#[derive(Debug)]
struct Pair {
    session: [u8; 32],
    me: u16,
    other: u16,
    party: Party,
    inbox: Inbox,
}

impl Pair {
    fn new(session: [u8; 32], me: usize) -> Result<Pair, Abort> {
        let (me, other) = (me as u16, 1 - me as u16);
        Ok(Pair {
            session,
            me,
            other,
            party: Party::new(session).map_err(mpc_rule)?,
            inbox: Inbox::new(session, &[other], MAX_PAYLOAD),
        })
    }

    fn to_other(&self, round: u32, payload: Vec<u8>) -> Vec<Outbound> {
        vec![outbound(self.session, self.me, self.other, round, payload)]
    }

    fn payload(&mut self, inbound: &[u8]) -> Result<Vec<u8>, Abort> {
        Ok(self.inbox.accept(inbound).map_err(mpc_rule)?.payload)
    }
}

/// One node of a PSI cardinality (node 0 or 1); the result is the overlap
/// size.
#[derive(Debug)]
pub struct PsiCount<'a> {
    pair: Pair,
    items: &'a [Vec<u8>],
    mine: Vec<[u8; 32]>,
    /// The other's set raised to both scalars, once returned.
    reblinded: Option<Vec<[u8; 32]>>,
}

impl<'a> PsiCount<'a> {
    pub fn new(session: [u8; 32], me: usize, items: &'a [Vec<u8>]) -> Result<PsiCount<'a>, Abort> {
        Ok(PsiCount {
            pair: Pair::new(session, me)?,
            items,
            mine: vec![],
            reblinded: None,
        })
    }

    fn next(&mut self, inbound: &[u8]) -> Result<Step<usize>, Abort> {
        let theirs = decode_points(&self.pair.payload(inbound)?)?;
        match &self.reblinded {
            None => {
                let r = self.pair.party.reblind(&theirs).map_err(mpc_rule)?;
                let send = self.pair.to_other(1, encode_points(&r));
                self.reblinded = Some(r);
                Ok(Step::wait(send, Patience::ROUND))
            }
            Some(r) => {
                if theirs.len() != self.mine.len() {
                    return Err(WRONG_LENGTH);
                }
                Ok(Step::done(vec![], intersection_size(&theirs, r)))
            }
        }
    }
}

impl Role for PsiCount<'_> {
    type Output = usize;

    fn start(&mut self) -> Step<usize> {
        match self.pair.party.blind(self.items) {
            Ok(mine) => {
                let send = self.pair.to_other(0, encode_points(&mine));
                self.mine = mine;
                Step::wait(send, Patience::ROUND)
            }
            Err(e) => Step::abort(mpc_rule(e)),
        }
    }

    fn step(&mut self, inbound: &[u8]) -> Step<usize> {
        self.next(inbound).into()
    }
}

/// What a PSI sum ends with at each node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SumEnd {
    /// The first node: the overlap size.
    Count(usize),
    /// The second node: the noisy sum on the payload grid.
    Sum(i64),
}

/// Where a PSI sum node is.
#[derive(Debug)]
enum SumStage {
    /// First: round 0 sent.
    FirstSent {
        mine: usize,
    },
    /// First: the offer is in; the matched items' ciphertexts wait for the
    /// reblinded set.
    FirstOffered {
        mine: usize,
        key: PublicKey,
        doubled: Vec<[u8; 32]>,
        ciphers: Vec<[u8; 64]>,
    },
    /// Second: round 0 sent, keys held.
    SecondSent {
        keys: KeyPair,
    },
    /// Second: the first's set reblinded and returned.
    SecondReturned {
        keys: KeyPair,
    },
    Over,
}

/// One node of a PSI sum: the first adds the matching ciphertexts and its
/// noise, the second decrypts the noisy sum.
#[derive(Debug)]
pub struct PsiSum<'a> {
    pair: Pair,
    items: &'a PsiSet,
    /// First: the payload bound (sensitivity, grid units); second: unused.
    bound: i64,
    epsilon: f64,
    stage: SumStage,
}

impl<'a> PsiSum<'a> {
    /// The first node (index 0), which adds `bound`-sensitivity discrete
    /// Laplace noise at `epsilon` to the sum it returns.
    pub fn first(
        session: [u8; 32],
        items: &'a PsiSet,
        bound: i64,
        epsilon: f64,
    ) -> Result<PsiSum<'a>, Abort> {
        Ok(PsiSum {
            pair: Pair::new(session, 0)?,
            items,
            bound,
            epsilon,
            stage: SumStage::Over,
        })
    }

    /// The second node (index 1), whose `items` carry the values summed.
    pub fn second(session: [u8; 32], items: &'a PsiSet, epsilon: f64) -> Result<PsiSum<'a>, Abort> {
        Ok(PsiSum {
            pair: Pair::new(session, 1)?,
            items,
            bound: items.bound,
            epsilon,
            stage: SumStage::Over,
        })
    }

    fn begin(&mut self) -> Result<Step<SumEnd>, Abort> {
        let p = &self.pair;
        if p.me == 0 {
            let mine = p.party.blind(&self.items.keys).map_err(mpc_rule)?;
            self.stage = SumStage::FirstSent { mine: mine.len() };
            return Ok(Step::wait(
                p.to_other(0, encode_points(&mine)),
                Patience::ROUND,
            ));
        }
        let keys = KeyPair::generate().map_err(mpc_rule)?;
        let mine = p.party.blind_in_order(&self.items.keys).map_err(mpc_rule)?;
        let mut pairs = mine
            .iter()
            .zip(&self.items.values)
            .map(|(p, v)| Ok((*p, keys.public.encrypt(*v)?.to_bytes())))
            .collect::<kexin_mpc::Result<Vec<_>>>()
            .map_err(mpc_rule)?;
        kexin_mpc::psi::shuffle(&mut pairs).map_err(mpc_rule)?;
        let offer = SumOffer {
            public_key: keys.public.to_bytes(),
            pairs,
        };
        self.stage = SumStage::SecondSent { keys };
        Ok(Step::wait(
            self.pair.to_other(0, offer.encode()),
            Patience::ROUND,
        ))
    }

    fn next(&mut self, inbound: &[u8]) -> Result<Step<SumEnd>, Abort> {
        let payload = self.pair.payload(inbound)?;
        match std::mem::replace(&mut self.stage, SumStage::Over) {
            SumStage::FirstSent { mine } => {
                let offer = SumOffer::decode(&payload)?;
                let key = PublicKey::from_point(decode(&offer.public_key).map_err(mpc_rule)?);
                let (blinded, ciphers): (Vec<_>, Vec<_>) = offer.pairs.into_iter().unzip();
                let doubled = self
                    .pair
                    .party
                    .reblind_in_order(&blinded)
                    .map_err(mpc_rule)?;
                self.stage = SumStage::FirstOffered {
                    mine,
                    key,
                    doubled,
                    ciphers,
                };
                Ok(Step::wait(vec![], Patience::ROUND))
            }
            SumStage::FirstOffered {
                mine,
                key,
                doubled,
                ciphers,
            } => {
                let mine_double = decode_points(&payload)?;
                if mine_double.len() != mine {
                    return Err(WRONG_LENGTH);
                }
                let set: HashSet<&[u8; 32]> = mine_double.iter().collect();
                let mut total = Ciphertext::zero();
                let mut matched = 0usize;
                for (d, c) in doubled.iter().zip(&ciphers) {
                    if set.contains(d) {
                        total = total.add(&Ciphertext::from_bytes(c).map_err(mpc_rule)?);
                        matched += 1;
                    }
                }
                let z = psi_noise(self.bound, self.epsilon).map_err(|_| Abort::fed("noise"))?;
                // The noise's encryption also rerandomizes the sum.
                let noisy = total.add(&key.encrypt(z).map_err(mpc_rule)?);
                Ok(Step::done(
                    self.pair.to_other(1, noisy.to_bytes().to_vec()),
                    SumEnd::Count(matched),
                ))
            }
            SumStage::SecondSent { keys } => {
                let theirs = decode_points(&payload)?;
                let r = self.pair.party.reblind(&theirs).map_err(mpc_rule)?;
                self.stage = SumStage::SecondReturned { keys };
                Ok(Step::wait(
                    self.pair.to_other(1, encode_points(&r)),
                    Patience::ROUND,
                ))
            }
            SumStage::SecondReturned { keys } => {
                let sum = Ciphertext::from_bytes(&payload).map_err(mpc_rule)?;
                let margin = (50.0 * self.bound as f64 / self.epsilon).ceil() as u64;
                let range = (self.items.keys.len() as u64)
                    .saturating_mul(self.bound as u64)
                    .saturating_add(margin);
                let s = keys.decrypt(&sum, range).map_err(|_| {
                    Abort::fed("the encrypted sum does not decrypt to a value in range")
                })?;
                Ok(Step::done(vec![], SumEnd::Sum(s)))
            }
            SumStage::Over => Err(Abort::fed("the protocol failed")),
        }
    }
}

impl Role for PsiSum<'_> {
    type Output = SumEnd;

    fn start(&mut self) -> Step<SumEnd> {
        self.begin().into()
    }

    fn step(&mut self, inbound: &[u8]) -> Step<SumEnd> {
        self.next(inbound).into()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{TIMED_OUT, drive};
    use super::*;

    const SESSION: [u8; 32] = [3; 32];

    fn items(ids: std::ops::Range<u32>) -> Vec<Vec<u8>> {
        ids.map(|i| format!("person-{i}").into_bytes()).collect()
    }

    fn count(
        a: &[Vec<u8>],
        b: &[Vec<u8>],
        network: impl FnMut(&mut Outbound) -> bool,
    ) -> Vec<Result<usize, Abort>> {
        let mut x = PsiCount::new(SESSION, 0, a).unwrap();
        let mut y = PsiCount::new(SESSION, 1, b).unwrap();
        drive(&mut [&mut x, &mut y], network)
    }

    #[test]
    fn both_nodes_learn_the_overlap_size_only() {
        let (a, b) = (items(0..40), items(25..90));
        assert_eq!(count(&a, &b, |_| true), vec![Ok(15), Ok(15)]);
        assert_eq!(count(&a, &items(100..110), |_| true), vec![Ok(0), Ok(0)]);
    }

    #[test]
    fn a_cardinality_round_aborts_on_a_bad_or_missing_message() {
        let (a, b) = (items(0..10), items(5..20));
        // A point cut short.
        let ends = count(&a, &b, |o| {
            if o.message.sender == 1 && o.message.round == 0 {
                o.message.payload.pop();
            }
            true
        });
        assert_eq!(ends[0], Err(MALFORMED));
        // A reblinded set with one point missing.
        let ends = count(&a, &b, |o| {
            if o.message.sender == 1 && o.message.round == 1 {
                o.message.payload.truncate(32);
            }
            true
        });
        assert_eq!(ends[0], Err(WRONG_LENGTH));
        // The reblinded set never comes back.
        let ends = count(&a, &b, |o| o.message.round == 0);
        assert_eq!(ends, vec![Err(TIMED_OUT), Err(TIMED_OUT)]);
    }

    fn set(ids: std::ops::Range<u32>, value: impl Fn(u32) -> i64) -> PsiSet {
        PsiSet {
            keys: ids.clone().map(|i| format!("p{i}").into_bytes()).collect(),
            values: ids.map(value).collect(),
            quantum: 1.0,
            bound: 100,
        }
    }

    #[test]
    fn the_sum_over_the_overlap_is_near_the_pooled_sum() {
        let first = set(0..30, |_| 0);
        let second = set(20..60, |i| i64::from(i % 7) * 10);
        let exact: i64 = (20..30).map(|i| i64::from(i % 7) * 10).sum();
        // ε = 50 on sensitivity 100: noise of scale 2, far inside ±60.
        let mut x = PsiSum::first(SESSION, &first, 100, 50.0).unwrap();
        let mut y = PsiSum::second(SESSION, &second, 50.0).unwrap();
        let ends = drive(&mut [&mut x, &mut y], |_| true);
        assert_eq!(ends[0], Ok(SumEnd::Count(10)));
        let Ok(SumEnd::Sum(s)) = ends[1] else {
            panic!("{:?}", ends[1])
        };
        assert!((s - exact).abs() < 60, "{s} vs {exact}");
    }

    #[test]
    fn a_sum_round_aborts_on_a_malformed_offer_or_sum() {
        let first = set(0..5, |_| 0);
        let second = set(0..5, |_| 1);
        let run = |network: &mut dyn FnMut(&mut Outbound) -> bool| {
            let mut x = PsiSum::first(SESSION, &first, 100, 1.0).unwrap();
            let mut y = PsiSum::second(SESSION, &second, 1.0).unwrap();
            drive(&mut [&mut x, &mut y], network)
        };
        let ends = run(&mut |o| {
            if o.message.sender == 1 && o.message.round == 0 {
                o.message.payload.truncate(40);
            }
            true
        });
        assert_eq!(ends[0], Err(MALFORMED));
        let ends = run(&mut |o| {
            if o.message.sender == 0 && o.message.round == 1 {
                o.message.payload = vec![0xFF; 64];
            }
            true
        });
        assert!(ends[1].is_err(), "{:?}", ends[1]);
    }

    #[test]
    fn the_offer_codec_round_trips_and_refuses_ragged_input() {
        let o = SumOffer {
            public_key: [1; 32],
            pairs: vec![([2; 32], [3; 64]), ([4; 32], [5; 64])],
        };
        assert_eq!(SumOffer::decode(&o.encode()), Ok(o.clone()));
        let mut b = o.encode();
        b.push(0);
        assert_eq!(SumOffer::decode(&b), Err(MALFORMED));
        assert_eq!(SumOffer::decode(&[0; 31]), Err(MALFORMED));
    }
}
