//! The joint gate under fully homomorphic encryption (TFHE): one node
//! aggregates, one holds the decryption key, every node contributes.
//!
//! ```text
//! round 0  every node but the aggregator → aggregator: its partial
//!          totals encrypted under the key holder's compact public key
//!          ([`Sealed`]: a flag byte, then the ciphertexts)
//! round 1  aggregator → key holder: the sum of every contribution, each
//!          cell's totals replaced by zero under encryption unless its
//!          joint person count reaches the threshold
//! round 2  key holder → every other node: the decrypted gated cells
//!          ([`Opened`], JSON)
//! ```
//!
//! No node sees a suppressed cell's totals or another node's partial. An
//! empty round-1 or round-2 payload says "aborted", so the others stop at
//! once instead of waiting out the aggregator's allowance.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kexin_mpc::fhe::{Aggregator, Encryptor, KeyHolder, Layout};
use kexin_mpc::message::Inbox;

use super::{Abort, MAX_PAYLOAD, Outbound, Patience, Role, Step, Then, mpc_rule, outbound};
use crate::federated::{JointPartial, JointPlan, JointRows};
use crate::policy::FheGate;

/// How long the aggregator may take for `totals` joint totals on 2 cores:
/// about 12 ms per 2-bit block to expand and sanitize each contribution
/// (up to 32 blocks per total and party), carry propagation, and the gate
/// (0.3 s per 32-bit compare and select). Generous: the round aborts only
/// past it.
pub fn allowance(totals: usize) -> Duration {
    Duration::from_secs(30) + Duration::from_secs(6) * totals as u32
}

/// The threshold when a node took part without its data: every joint
/// count is under it, since each node's count is under 2^32 / nodes
/// ([`Encryptor::encrypt`] refuses more) and there are at least three
/// nodes.
const NO_CELL_PASSES: u32 = u32::MAX;

const ABORTED: Abort = Abort::fed("another node aborted the FHE gate");

/// What the key holder tells every node: per cell, `None` (suppressed) or
/// the joint totals.
pub type Opened = Vec<Option<Vec<i64>>>;

/// Round 0's payload: `withheld` is set by a node whose execution failed
/// (it encrypts zeros, the same work). Under any set flag the aggregator
/// gates at a threshold no joint count reaches, so every cell is
/// suppressed: what the researcher sees does not say which node failed, or
/// that one did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub withheld: bool,
    pub ciphertexts: Vec<u8>,
}

impl Sealed {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.ciphertexts.len());
        out.push(u8::from(self.withheld));
        out.extend_from_slice(&self.ciphertexts);
        out
    }

    pub fn decode(mut b: Vec<u8>) -> Result<Sealed, Abort> {
        let withheld = match b.first() {
            Some(0) => false,
            Some(1) => true,
            _ => return Err(Abort::fed("a node sent a malformed contribution")),
        };
        b.remove(0);
        Ok(Sealed {
            withheld,
            ciphertexts: b,
        })
    }
}

/// Round 2's payload: the opened cells, or empty when the key holder
/// aborted.
pub fn encode_opened(opened: Option<&Opened>) -> Vec<u8> {
    opened
        .map(|o| serde_json::to_vec(o).unwrap_or_default())
        .unwrap_or_default()
}

pub fn decode_opened(p: &[u8]) -> Result<Opened, Abort> {
    if p.is_empty() {
        return Err(ABORTED);
    }
    serde_json::from_slice(p).map_err(|_| Abort::fed("the key holder sent a malformed result"))
}

/// What a node does in the gate, with the key material it needs.
pub enum Part {
    /// Holds the server key: adds and gates.
    Aggregator(Arc<Aggregator>),
    /// Holds the secret key: decrypts the gated outputs only.
    KeyHolder(Box<KeyHolder>),
    /// Only encrypts.
    Contributor,
}

/// The aggregator's and the key holder's party indices in `nodes`.
pub fn positions(nodes: &[String], gate: &FheGate) -> Result<(usize, usize), Abort> {
    let pos = |n: &str| nodes.iter().position(|x| x == n);
    let agg = pos(&gate.aggregator).ok_or(Abort::fed("the FHE aggregator is not a party"))?;
    let kh = pos(&gate.key_holder).ok_or(Abort::fed("the FHE key holder is not a party"))?;
    Ok((agg, kh))
}

/// The ciphertext layout of `plan`: its cells and totals, with the person
/// count and the other plain counts narrow.
pub fn layout(plan: &JointPlan) -> Result<(Layout, u32), Abort> {
    let (cells, stats, count_at, k, counts) = plan
        .gate_shape()
        .map_err(|_| Abort::fed("the plan cannot be gated under FHE"))?;
    let mut layout = Layout::new(cells, stats, count_at)
        .map_err(|_| Abort::fed("too many cells and totals to gate under FHE"))?;
    for c in counts {
        layout = layout
            .narrow(c)
            .map_err(|_| Abort::fed("the plan's counts"))?;
    }
    let k = u32::try_from(k).map_err(|_| Abort::fed("the threshold is out of range"))?;
    Ok((layout, k))
}

/// One node of the FHE gate.
pub struct FheParty<'a> {
    session: [u8; 32],
    me: usize,
    nodes: &'a [String],
    gate: &'a FheGate,
    plan: &'a JointPlan,
    agg: usize,
    kh: usize,
    layout: Layout,
    k: u32,
    part: Part,
    /// This node's round 0 (the aggregator keeps its own).
    mine: Vec<u8>,
    inbox: Inbox,
    /// The aggregator: round-0 contributions by sender.
    received: BTreeMap<u16, Vec<u8>>,
}

impl std::fmt::Debug for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Part::Aggregator(_) => "Aggregator",
            Part::KeyHolder(_) => "KeyHolder",
            Part::Contributor => "Contributor",
        })
    }
}

impl std::fmt::Debug for FheParty<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FheParty")
            .field("me", &self.me)
            .field("part", &self.part)
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl<'a> FheParty<'a> {
    /// Node `me` of `nodes`, gating `partial` under `gate`. `encryptor` is
    /// the key holder's verified public key; `part` must be the key
    /// material [`positions`] calls for.
    pub fn new(
        session: [u8; 32],
        me: usize,
        nodes: &'a [String],
        gate: &'a FheGate,
        partial: &'a JointPartial,
        encryptor: &Encryptor,
        part: Part,
    ) -> Result<FheParty<'a>, Abort> {
        let (agg, kh) = positions(nodes, gate)?;
        let fits = match part {
            Part::Aggregator(_) => me == agg,
            Part::KeyHolder(_) => me == kh,
            Part::Contributor => me != agg && me != kh,
        };
        if !fits || agg == kh {
            return Err(Abort::fed("the FHE gate's parts are misassigned"));
        }
        let plan = &partial.plan;
        let (layout, k) = layout(plan)?;
        let zeros = vec![0; plan.len()];
        let input = if partial.withheld {
            &zeros
        } else {
            &partial.input
        };
        let mine = Sealed {
            withheld: partial.withheld,
            ciphertexts: encryptor
                .encrypt(&layout, input, nodes.len())
                .map_err(|_| Abort::fed("a partial total is out of range for the FHE gate"))?,
        }
        .encode();
        let others = (0..nodes.len()).filter(|j| *j != me);
        let schedule: Vec<(u16, Vec<u32>)> = if me == agg {
            others
                .map(|j| (j as u16, if j == kh { vec![0, 2] } else { vec![0] }))
                .collect()
        } else if me == kh {
            vec![(agg as u16, vec![1])]
        } else {
            vec![(kh as u16, vec![2])]
        };
        Ok(FheParty {
            session,
            me,
            nodes,
            gate,
            plan,
            agg,
            kh,
            layout,
            k,
            part,
            mine,
            inbox: Inbox::scheduled(session, &schedule, MAX_PAYLOAD),
            received: BTreeMap::new(),
        })
    }

    /// The others wait this long for the gated result.
    fn patience(&self) -> Patience {
        Patience {
            rounds: 1,
            compute: allowance(self.layout.len()),
        }
    }

    fn to(&self, to: usize, round: u32, payload: Vec<u8>) -> Outbound {
        outbound(self.session, self.me as u16, to as u16, round, payload)
    }

    fn to_others(&self, round: u32, payload: &[u8]) -> Vec<Outbound> {
        (0..self.nodes.len())
            .filter(|j| *j != self.me)
            .map(|j| self.to(j, round, payload.to_vec()))
            .collect()
    }

    /// The aggregator, once every contribution is in: add them and gate.
    fn gated(&mut self, aggregator: &Aggregator) -> Result<Vec<u8>, Abort> {
        let mut all = vec![std::mem::take(&mut self.mine)];
        all.extend(std::mem::take(&mut self.received).into_values());
        let mut withheld = false;
        let mut sealed = Vec::with_capacity(all.len());
        for p in all {
            let s = Sealed::decode(p)?;
            withheld |= s.withheld;
            sealed.push(s.ciphertexts);
        }
        let k = if withheld { NO_CELL_PASSES } else { self.k };
        let totals = aggregator.sum(&self.layout, &sealed).map_err(mpc_rule)?;
        tracing::info!(
            target: "kexin::node",
            "FHE gate: {} unchecked additions, {} carry propagations, {} cells",
            totals.stats.unchecked_adds,
            totals.stats.propagations,
            self.layout.cells
        );
        aggregator.gate(totals, k).map_err(mpc_rule)
    }

    /// The released rows from the opened cells.
    fn finish(&self, opened: &Opened) -> Result<JointRows, Abort> {
        let (cells, stats) = (self.layout.cells, self.layout.stats);
        if opened.len() != cells || opened.iter().flatten().any(|v| v.len() != stats) {
            return Err(Abort::fed(
                "the key holder sent a result of the wrong shape",
            ));
        }
        let passing: Vec<usize> = (0..cells).filter(|c| opened[*c].is_some()).collect();
        let values: Vec<i128> = opened
            .iter()
            .flatten()
            .flatten()
            .map(|v| i128::from(*v))
            .collect();
        let mut rows = self
            .plan
            .release(&passing, &values, self.nodes.len())
            .map_err(|_| Abort::fed("the opened totals do not form a result"))?;
        if let Some(first) = rows.explanation.first_mut() {
            *first = format!(
                "joint result of {} nodes under an FHE gate: each node encrypted its partial totals under {}'s TFHE public key; {} added them and applied the person threshold under encryption; {} decrypted only the gated totals (suppressed cells decrypt to zero)",
                self.nodes.len(),
                self.gate.key_holder,
                self.gate.aggregator,
                self.gate.key_holder
            );
        }
        Ok(rows)
    }

    fn next(&mut self, inbound: &[u8]) -> Step<JointRows> {
        let m = match self.inbox.accept(inbound) {
            Ok(m) => m,
            Err(e) => return Step::abort(mpc_rule(e)),
        };
        match &self.part {
            Part::Aggregator(a) if m.round == 0 => {
                let a = Arc::clone(a);
                self.received.insert(m.sender, m.payload);
                if self.received.len() + 1 < self.nodes.len() {
                    return Step::wait(vec![], Patience::ROUND);
                }
                match self.gated(&a) {
                    Ok(g) => Step::wait(vec![self.to(self.kh, 1, g)], self.patience()),
                    // Tell the key holder at once.
                    Err(why) => Step {
                        send: vec![self.to(self.kh, 1, vec![])],
                        then: Then::Abort(why),
                    },
                }
            }
            Part::KeyHolder(h) => {
                let opened = if m.payload.is_empty() {
                    Err(ABORTED)
                } else {
                    h.open(&self.layout, &m.payload).map_err(mpc_rule)
                };
                match opened {
                    Ok(cells) => {
                        let opened: Opened = cells
                            .into_iter()
                            .map(|c| c.map(|v| v.into_iter().map(|x| x as i64).collect()))
                            .collect();
                        let send = self.to_others(2, &encode_opened(Some(&opened)));
                        match self.finish(&opened) {
                            Ok(rows) => Step::done(send, rows),
                            Err(why) => Step {
                                send,
                                then: Then::Abort(why),
                            },
                        }
                    }
                    Err(why) => Step {
                        send: self.to_others(2, &encode_opened(None)),
                        then: Then::Abort(why),
                    },
                }
            }
            // The aggregator's round 2 and a contributor's: the result.
            _ => decode_opened(&m.payload)
                .and_then(|o| self.finish(&o))
                .map(|rows| Step::done(vec![], rows))
                .into(),
        }
    }
}

impl Role for FheParty<'_> {
    type Output = JointRows;

    fn start(&mut self) -> Step<JointRows> {
        if self.me == self.agg {
            // Its own contribution stays here; the others' come in round 0.
            return Step::wait(vec![], Patience::ROUND);
        }
        let mine = std::mem::take(&mut self.mine);
        Step::wait(vec![self.to(self.agg, 0, mine)], self.patience())
    }

    fn step(&mut self, inbound: &[u8]) -> Step<JointRows> {
        self.next(inbound)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{partials, plan, pooled};
    use super::super::{TIMED_OUT, drive};
    use super::*;
    use kexin_mpc::fhe::PublicKeys;

    const SESSION: [u8; 32] = [11; 32];

    fn keys() -> &'static (KeyHolder, PublicKeys) {
        static KEYS: std::sync::OnceLock<(KeyHolder, PublicKeys)> = std::sync::OnceLock::new();
        KEYS.get_or_init(|| KeyHolder::generate().unwrap())
    }

    /// Node 0 aggregates, node 1 holds the key, node 2 contributes.
    fn run(
        inputs: &[JointPartial],
        network: impl FnMut(&mut Outbound) -> bool,
    ) -> Vec<Result<JointRows, Abort>> {
        let (holder, public) = keys();
        let enc = Encryptor::new(public.compact.clone());
        let agg = Arc::new(Aggregator::new(public.server.clone()));
        let nodes: Vec<String> = ["h1", "h2", "h3"].iter().map(|s| s.to_string()).collect();
        let gate = FheGate {
            aggregator: "h1".into(),
            key_holder: "h2".into(),
        };
        let parts = [
            Part::Aggregator(agg),
            Part::KeyHolder(Box::new(holder.clone())),
            Part::Contributor,
        ];
        let mut parties: Vec<FheParty> = parts
            .into_iter()
            .enumerate()
            .map(|(i, p)| FheParty::new(SESSION, i, &nodes, &gate, &inputs[i], &enc, p).unwrap())
            .collect();
        let mut roles: Vec<&mut dyn Role<Output = JointRows>> =
            parties.iter_mut().map(|r| r as _).collect();
        drive(&mut roles, network)
    }

    fn partial(input: Vec<i128>, withheld: bool) -> JointPartial {
        JointPartial {
            plan: plan(),
            input,
            withheld,
        }
    }

    /// One test, as each run costs seconds of TFHE work: the pooled rows,
    /// a withheld node, an aggregator that fails, and a lost message.
    #[test]
    fn the_fhe_gate_releases_the_pooled_rows_and_aborts_cleanly() {
        let normal: Vec<JointPartial> = partials().into_iter().map(|p| partial(p, false)).collect();
        for end in run(&normal, |_| true) {
            assert_eq!(end.unwrap().rows, pooled());
        }
        // Node 2 failed and takes part with zeros: nothing passes.
        let mut withheld = normal.clone();
        withheld[2] = partial(vec![0; 6], true);
        for end in run(&withheld, |_| true) {
            let rows = end.unwrap();
            assert!(rows.rows.is_empty());
            assert_eq!(rows.suppressed_groups, 3);
        }
        // A garbled contribution: the aggregator aborts and every other
        // node learns it at once (no one times out).
        let ends = run(&normal, |o| {
            if o.message.round == 0 && o.message.sender == 2 {
                o.message.payload = vec![7; 10];
            }
            true
        });
        assert_eq!(
            ends[0],
            Err(Abort::fed("a node sent a malformed contribution"))
        );
        assert_eq!(ends[1], Err(ABORTED));
        assert_eq!(ends[2], Err(ABORTED));
        // The gated result never reaches the key holder.
        let ends = run(&normal, |o| o.message.round != 1);
        assert!(ends.iter().all(|e| e.as_ref().err() == Some(&TIMED_OUT)));
    }

    #[test]
    fn the_payload_codecs_round_trip() {
        let s = Sealed {
            withheld: true,
            ciphertexts: vec![1, 2, 3],
        };
        assert_eq!(Sealed::decode(s.encode()), Ok(s));
        assert!(Sealed::decode(vec![2, 0]).is_err());
        assert!(Sealed::decode(vec![]).is_err());
        let o: Opened = vec![None, Some(vec![3, -4])];
        assert_eq!(decode_opened(&encode_opened(Some(&o))), Ok(o));
        assert_eq!(decode_opened(&encode_opened(None)), Err(ABORTED));
    }
}
