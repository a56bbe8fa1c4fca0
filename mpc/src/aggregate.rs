//! Secure aggregation among `n ≥ 3` parties, one party's side.
//!
//! ```text
//! round 0      every party splits its input vector into n additive shares
//!              and sends share j to party j (keeping its own)
//! round r ≥ 1  every party broadcasts its summed shares at the positions
//!              the round opens; the sum over all parties is the total there
//! ```
//!
//! Positions opened in a round must be the same at every party: callers
//! derive them from what earlier rounds opened (for example, open the person
//! counts first, then only the cells that pass the threshold). Messages go
//! through [`Inbox`], so each party sends each round exactly once, in order;
//! payloads are checked when their round is consumed: a wrong length or a
//! non-canonical scalar is an error, and every error aborts.

use std::collections::BTreeMap;

use curve25519_dalek::scalar::Scalar;

use crate::MIN_PARTIES;
use crate::error::{Error, Result};
use crate::message::{Inbox, Message};
use crate::share::{ShareVec, add, decode_int, from_bytes, split, to_bytes};

/// One party's state in one aggregation session. It holds shares: its
/// `Debug` names none, and they are wiped on drop.
pub struct Aggregation {
    session: [u8; 32],
    me: u16,
    parties: u16,
    len: usize,
    inbox: Inbox,
    /// Payloads received, by (round, sender), checked when consumed.
    pending: BTreeMap<(u32, u16), Vec<u8>>,
    /// My share of my own input, then the sum of all shares I hold.
    held: Option<ShareVec>,
    summed: bool,
    next_open: u32,
}

impl std::fmt::Debug for Aggregation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aggregation")
            .field("me", &self.me)
            .field("parties", &self.parties)
            .field("len", &self.len)
            .field("pending", &self.pending.len())
            .field("summed", &self.summed)
            .field("next_open", &self.next_open)
            .finish_non_exhaustive()
    }
}

impl Drop for Aggregation {
    fn drop(&mut self) {
        for p in self.pending.values_mut() {
            zeroize::Zeroize::zeroize(p);
        }
    }
}

impl Aggregation {
    /// Party `me` of `parties`, aggregating vectors of `len` elements.
    /// `max_payload` bounds every received message.
    pub fn new(session: [u8; 32], me: u16, parties: usize, len: usize) -> Result<Aggregation> {
        if parties < MIN_PARTIES {
            return Err(Error::TooFewParties {
                min: MIN_PARTIES,
                got: parties,
            });
        }
        let parties = u16::try_from(parties).map_err(|_| Error::State("too many parties"))?;
        if me >= parties {
            return Err(Error::State("party index out of range"));
        }
        let others: Vec<u16> = (0..parties).filter(|p| *p != me).collect();
        Ok(Aggregation {
            session,
            me,
            parties,
            len,
            inbox: Inbox::new(session, &others, len * 32),
            pending: BTreeMap::new(),
            held: None,
            summed: false,
            next_open: 1,
        })
    }

    /// The other parties, in index order.
    pub fn others(&self) -> impl Iterator<Item = u16> + '_ {
        (0..self.parties).filter(|p| *p != self.me)
    }

    /// Round 0: split `input` and return the message for each other party.
    pub fn share(&mut self, input: &[Scalar]) -> Result<Vec<(u16, Message)>> {
        if self.held.is_some() {
            return Err(Error::State("input already shared"));
        }
        if input.len() != self.len {
            return Err(Error::LengthMismatch);
        }
        let mut shares = split(input, self.parties as usize)?;
        let mine = std::mem::take(&mut shares[self.me as usize]);
        self.held = Some(mine);
        Ok(shares
            .into_iter()
            .enumerate()
            .filter(|(j, _)| *j != self.me as usize)
            .map(|(j, s)| {
                (
                    j as u16,
                    Message {
                        session: self.session,
                        round: 0,
                        sender: self.me,
                        payload: to_bytes(s.as_slice()),
                    },
                )
            })
            .collect())
    }

    /// Take one received message (any round); it is checked against the
    /// session, the sender list and the sender's round order.
    pub fn receive(&mut self, bytes: &[u8]) -> Result<()> {
        let m = self.inbox.accept(bytes)?;
        self.pending.insert((m.round, m.sender), m.payload);
        Ok(())
    }

    /// Has every other party's message for `round` arrived?
    pub fn complete(&self, round: u32) -> bool {
        self.others()
            .all(|p| self.pending.contains_key(&(round, p)))
    }

    /// After round 0 is complete: add the shares received to my own.
    pub fn sum_shares(&mut self) -> Result<()> {
        if self.summed {
            return Err(Error::State("shares already summed"));
        }
        let Some(mine) = self.held.take() else {
            return Err(Error::State("input not shared yet"));
        };
        let mut all = vec![mine];
        for p in self.others().collect::<Vec<_>>() {
            let bytes = self
                .pending
                .remove(&(0, p))
                .ok_or(Error::State("round 0 incomplete"))?;
            all.push(from_bytes(&bytes, self.len)?);
        }
        self.held = Some(add(&all)?);
        self.summed = true;
        Ok(())
    }

    /// Opening round `round` (1, 2, … in order): my summed shares at
    /// `positions`, for every other party.
    pub fn open(&mut self, round: u32, positions: &[usize]) -> Result<Message> {
        if !self.summed || round != self.next_open {
            return Err(Error::State("opening out of order"));
        }
        let held = self.held.as_ref().ok_or(Error::State("no shares"))?;
        let values = held.pick(positions)?;
        self.next_open += 1;
        Ok(Message {
            session: self.session,
            round,
            sender: self.me,
            payload: to_bytes(values.as_slice()),
        })
    }

    /// After opening round `round` is complete: the totals at `positions`.
    pub fn opened(&mut self, round: u32, positions: &[usize]) -> Result<Vec<i128>> {
        if round == 0 || round >= self.next_open {
            return Err(Error::State("round not opened yet"));
        }
        let held = self.held.as_ref().ok_or(Error::State("no shares"))?;
        let mut all = vec![held.pick(positions)?];
        for p in self.others().collect::<Vec<_>>() {
            let bytes = self
                .pending
                .remove(&(round, p))
                .ok_or(Error::State("opening incomplete"))?;
            all.push(from_bytes(&bytes, positions.len())?);
        }
        add(&all)?.as_slice().iter().map(decode_int).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::share::encode_int;

    fn enc(v: &[i128]) -> Vec<Scalar> {
        v.iter().map(|x| encode_int(*x).unwrap()).collect()
    }

    /// Run three parties over an in-memory network: `tamper` may change a
    /// message in flight (from, to, bytes).
    fn run(
        inputs: &[Vec<i128>],
        mut tamper: impl FnMut(u16, u16, &mut Vec<u8>),
    ) -> Result<Vec<Vec<i128>>> {
        let n = inputs.len();
        let len = inputs[0].len();
        let mut ps: Vec<Aggregation> = (0..n)
            .map(|i| Aggregation::new([3; 32], i as u16, n, len).unwrap())
            .collect();
        let mut wire: Vec<(u16, u16, Vec<u8>)> = Vec::new();
        for (i, p) in ps.iter_mut().enumerate() {
            for (to, m) in p.share(&enc(&inputs[i]))? {
                wire.push((i as u16, to, m.encode()));
            }
        }
        let mut deliver = |ps: &mut Vec<Aggregation>, wire: &mut Vec<(u16, u16, Vec<u8>)>| {
            for (from, to, mut bytes) in wire.drain(..) {
                tamper(from, to, &mut bytes);
                ps[to as usize].receive(&bytes)?;
            }
            Ok::<_, Error>(())
        };
        deliver(&mut ps, &mut wire)?;
        let positions: Vec<usize> = (0..len).collect();
        for (i, p) in ps.iter_mut().enumerate() {
            assert!(p.complete(0));
            p.sum_shares()?;
            let m = p.open(1, &positions)?;
            for to in p.others().collect::<Vec<_>>() {
                wire.push((i as u16, to, m.encode()));
            }
        }
        deliver(&mut ps, &mut wire)?;
        ps.iter_mut().map(|p| p.opened(1, &positions)).collect()
    }

    #[test]
    fn three_parties_open_exactly_the_sum() {
        let out = run(
            &[vec![5, -3, 100], vec![7, 0, 1], vec![-2, 9, 1 << 90]],
            |_, _, _| {},
        )
        .unwrap();
        for o in out {
            assert_eq!(o, vec![10, 6, 101 + (1 << 90)]);
        }
    }

    #[test]
    fn tampering_aborts() {
        // A replayed share (the same round twice from one sender).
        let mut seen = None;
        let r = run(&[vec![1], vec![2], vec![3]], |from, to, b| {
            if from == 0 && to == 1 {
                match &seen {
                    None => seen = Some(b.clone()),
                    Some(first) => *b = first.clone(),
                }
            }
        });
        assert_eq!(r.unwrap_err(), Error::Unexpected("replayed round"));
        // A non-canonical scalar.
        let r = run(&[vec![1], vec![2], vec![3]], |from, _, b| {
            if from == 2 {
                let n = b.len();
                b[n - 32..].copy_from_slice(&[0xff; 32]);
            }
        });
        assert_eq!(r.unwrap_err(), Error::InvalidScalar);
        // A short vector.
        let r = run(&[vec![1, 1], vec![2, 2], vec![3, 3]], |from, _, b| {
            if from == 1 {
                b.truncate(b.len() - 32);
                let len = (b.len() - 43) as u32;
                b[39..43].copy_from_slice(&len.to_le_bytes());
            }
        });
        assert_eq!(r.unwrap_err(), Error::LengthMismatch);
        // Two parties are not enough.
        assert!(Aggregation::new([0; 32], 0, 2, 1).is_err());
    }

    #[test]
    fn steps_out_of_order_are_refused() {
        let mut p = Aggregation::new([1; 32], 0, 3, 1).unwrap();
        assert!(p.sum_shares().is_err());
        assert!(p.open(1, &[0]).is_err());
        p.share(&enc(&[1])).unwrap();
        assert!(p.share(&enc(&[1])).is_err());
        assert!(!p.complete(0));
        assert!(p.sum_shares().is_err(), "round 0 incomplete");
    }
}
