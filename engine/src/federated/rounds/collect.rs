//! Collecting a contribution scene's batch: Prio3 between its two
//! aggregators (the leader, node 0, and the helper, node 1).
//!
//! ```text
//! round 0  each: 32 random bytes (half of the joint verify key) and the
//!          report nonces it holds ([`Hello`])
//! round 1  each: its verifier shares of the reports both hold (in the
//!          leader's order)
//! round 2  each: its aggregate share of the valid reports (plus its share
//!          of the noise in a DP scene)
//! ```
//!
//! Both open the batch total only when at least the scene's minimum number
//! of reports verified; no report's value opens.

use std::collections::{HashMap, HashSet};

use kexin_mpc::message::Inbox;
use kexin_mpc::prio3::{Batch, Stored, Verified, verify_key};

use super::{Abort, MAX_PAYLOAD, Outbound, Patience, Role, Step, outbound};
use crate::contribution::{
    BatchKind, BatchResult, CollectBody, context, half_width, noise_share, vdaf,
};
use crate::error::Code;
use crate::policy::{Contribution, ContributionKind};

const MALFORMED: Abort = Abort::fed("the peer sent a malformed message");
/// Too few reports (held by both, or verified): a refusal, not an abort.
pub const UNDER_MINIMUM: Abort = Abort {
    code: Code::Batch,
    rule: "the batch is under the scene's minimum size",
};

/// Round 0's payload: the sender's half of the verify key, then the nonces
/// of the reports it holds (hex, one per line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub key_half: [u8; 32],
    pub reports: Vec<String>,
}

impl Hello {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.key_half.to_vec();
        out.extend_from_slice(self.reports.join("\n").as_bytes());
        out
    }

    pub fn decode(b: &[u8]) -> Result<Hello, Abort> {
        let (key_half, ids) = b.split_first_chunk::<32>().ok_or(MALFORMED)?;
        let ids = std::str::from_utf8(ids).map_err(|_| MALFORMED)?;
        Ok(Hello {
            key_half: *key_half,
            reports: ids
                .split('\n')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        })
    }
}

/// A released batch and the reports it closed (valid or not: a rejected
/// report is not retried in the next batch).
#[derive(Debug, Clone)]
pub struct Collected {
    pub result: BatchResult,
    pub used: Vec<String>,
}

enum Stage {
    /// Round 0 sent, with this node's key half and reports.
    Hello {
        key_half: [u8; 32],
        reports: Vec<(String, Stored)>,
    },
    /// Verifier shares sent.
    Verify {
        batch: Batch,
        used: Vec<String>,
    },
    /// Aggregate share sent.
    Aggregate {
        batch: Batch,
        used: Vec<String>,
        verdict: Verified,
        mine: Vec<u8>,
    },
    Over,
}

/// One aggregator of a collection. Its reports' shares are secrets:
/// `Debug` shows where it is only.
pub struct Collect<'a> {
    session: [u8; 32],
    me: u16,
    space: &'a str,
    body: &'a CollectBody,
    scene: &'a Contribution,
    inbox: Inbox,
    stage: Stage,
}

impl std::fmt::Debug for Collect<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stage = match self.stage {
            Stage::Hello { .. } => "hello",
            Stage::Verify { .. } => "verify",
            Stage::Aggregate { .. } => "aggregate",
            Stage::Over => "over",
        };
        f.debug_struct("Collect")
            .field("me", &self.me)
            .field("scene", &self.body.scene)
            .field("stage", &stage)
            .finish_non_exhaustive()
    }
}

impl<'a> Collect<'a> {
    /// Aggregator `me` (0 leader, 1 helper) of `space`, collecting the
    /// batch of `reports` (nonce, stored shares) of the contribution
    /// `scene` that `body` names.
    pub fn new(
        session: [u8; 32],
        me: usize,
        space: &'a str,
        body: &'a CollectBody,
        scene: &'a Contribution,
        reports: Vec<(String, Stored)>,
    ) -> Collect<'a> {
        let me = u16::from(me == 1);
        Collect {
            session,
            me,
            space,
            body,
            scene,
            inbox: Inbox::new(session, &[1 - me], MAX_PAYLOAD),
            stage: Stage::Hello {
                key_half: [0; 32],
                reports,
            },
        }
    }

    fn to_other(&self, round: u32, payload: Vec<u8>) -> Vec<Outbound> {
        vec![outbound(self.session, self.me, 1 - self.me, round, payload)]
    }

    fn begin(&mut self) -> Result<Step<Collected>, Abort> {
        let Stage::Hello { key_half, reports } = &mut self.stage else {
            return Err(Abort::fed("the protocol failed"));
        };
        getrandom::fill(key_half).map_err(|_| Abort::fed("no randomness"))?;
        let hello = Hello {
            key_half: *key_half,
            reports: reports.iter().map(|(id, _)| id.clone()).collect(),
        };
        Ok(Step::wait(
            self.to_other(0, hello.encode()),
            Patience::ROUND,
        ))
    }

    fn next(&mut self, inbound: &[u8]) -> Result<Step<Collected>, Abort> {
        let payload = self.inbox.accept(inbound).map_err(super::mpc_rule)?.payload;
        let c = self.scene;
        match std::mem::replace(&mut self.stage, Stage::Over) {
            Stage::Hello { key_half, reports } => {
                let theirs = Hello::decode(&payload)?;
                let key = if self.me == 0 {
                    verify_key(&key_half, &theirs.key_half)
                } else {
                    verify_key(&theirs.key_half, &key_half)
                };
                // The reports both hold, in the leader's order.
                let held: HashSet<&str> = theirs.reports.iter().map(String::as_str).collect();
                let mut common: Vec<(String, Stored)> = reports
                    .into_iter()
                    .filter(|(id, _)| held.contains(id.as_str()))
                    .collect();
                if self.me == 1 {
                    let order: HashMap<&str, usize> = theirs
                        .reports
                        .iter()
                        .enumerate()
                        .map(|(i, s)| (s.as_str(), i))
                        .collect();
                    common.sort_by_key(|(id, _)| {
                        order.get(id.as_str()).copied().unwrap_or(usize::MAX)
                    });
                }
                if common.len() < c.min_batch {
                    return Err(UNDER_MINIMUM);
                }
                let used: Vec<String> = common.iter().map(|(id, _)| id.clone()).collect();
                let vdaf = vdaf(c).map_err(|_| Abort::fed("the scene's measure"))?;
                let mut batch = Batch::new(
                    vdaf,
                    usize::from(self.me),
                    &context(self.space, &self.body.scene),
                    key,
                    common.into_iter().map(|(_, s)| s).collect(),
                )
                .map_err(|_| Abort::fed("the batch"))?;
                let shares = batch
                    .verifier_shares()
                    .map_err(|_| Abort::fed("verification"))?;
                let send = self.to_other(1, shares);
                self.stage = Stage::Verify { batch, used };
                // The peer verifies every report before it answers.
                Ok(Step::wait(
                    send,
                    Patience {
                        rounds: 2,
                        ..Patience::ROUND
                    },
                ))
            }
            Stage::Verify { mut batch, used } => {
                let verdict = batch
                    .combine(&payload)
                    .map_err(|_| Abort::fed("the peer sent malformed verifier shares"))?;
                if verdict.accepted < c.min_batch {
                    return Err(UNDER_MINIMUM);
                }
                let noise = noise_share(c).map_err(|_| Abort::fed("noise"))?;
                let mine = batch
                    .aggregate_share(&noise)
                    .map_err(|_| Abort::fed("aggregation"))?;
                let send = self.to_other(2, mine.clone());
                self.stage = Stage::Aggregate {
                    batch,
                    used,
                    verdict,
                    mine,
                };
                Ok(Step::wait(send, Patience::ROUND))
            }
            Stage::Aggregate {
                batch,
                used,
                verdict,
                mine,
            } => {
                let values = batch
                    .open(&mine, &payload)
                    .map_err(|_| Abort::fed("the peer sent a malformed aggregate share"))?;
                let result = self.result(&values, &verdict);
                Ok(Step::done(vec![], Collected { result, used }))
            }
            Stage::Over => Err(Abort::fed("the protocol failed")),
        }
    }

    /// What is released: the totals, and the report counts unless noise
    /// was added.
    fn result(&self, values: &[i128], verdict: &Verified) -> BatchResult {
        let c = self.scene;
        let b = self.body;
        let kind = BatchKind::from(&c.kind);
        let labels = match &c.kind {
            ContributionKind::Sum { .. } => vec!["sum".to_string()],
            ContributionKind::Histogram { buckets } => buckets.clone(),
        };
        let dp = c.epsilon;
        let mut explanation = vec![format!(
            "Prio3 ({}) over the two aggregators {} and {}: each saw one share of every report; the validity proofs were checked on shares and only the batch total was opened",
            kind, b.nodes[0], b.nodes[1]
        )];
        explanation.push(format!(
            "released because the batch holds at least {} valid reports",
            c.min_batch
        ));
        if let Some(eps) = dp {
            explanation.push(format!(
                "differential privacy: each aggregator added a share of discrete Laplace noise (ε = {eps} for the batch); report counts are withheld"
            ));
        }
        BatchResult {
            scene: b.scene.clone(),
            kind,
            labels,
            values: values.iter().map(|v| *v as i64).collect(),
            reports: dp.is_none().then_some(verdict.accepted),
            rejected: dp.is_none().then_some(verdict.rejected),
            epsilon: dp,
            half_width_95: dp.map(|e| half_width(c, e)),
            explanation,
        }
    }
}

impl Role for Collect<'_> {
    type Output = Collected;

    fn start(&mut self) -> Step<Collected> {
        self.begin().into()
    }

    fn step(&mut self, inbound: &[u8]) -> Step<Collected> {
        self.next(inbound).into()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{TIMED_OUT, drive};
    use super::*;

    const SESSION: [u8; 32] = [5; 32];

    fn scene(min_batch: usize, epsilon: Option<f64>) -> Contribution {
        Contribution {
            kind: ContributionKind::Sum { max: 100 },
            min_batch,
            aggregators: ["h1".into(), "h2".into()],
            epsilon,
        }
    }

    fn body() -> CollectBody {
        CollectBody {
            space: "s".into(),
            scene: "steps".into(),
            member: "r".into(),
            nodes: vec!["h1".into(), "h2".into()],
            nonce: "n".into(),
            time: "t".into(),
        }
    }

    /// Each person's report as the two aggregators store it.
    fn reports(c: &Contribution, values: &[u64]) -> [Vec<(String, Stored)>; 2] {
        let v = vdaf(c).unwrap();
        let ctx = context("s", "steps");
        let mut out: [Vec<(String, Stored)>; 2] = [vec![], vec![]];
        for x in values {
            let r = v.shard(&ctx, *x).unwrap();
            for (i, held) in out.iter_mut().enumerate() {
                held.push((
                    hex::encode(r.nonce),
                    Stored {
                        nonce: r.nonce,
                        public_share: r.public_share.clone(),
                        input_share: r.input_shares[i].clone(),
                    },
                ));
            }
        }
        out
    }

    fn collect(
        c: &Contribution,
        held: [Vec<(String, Stored)>; 2],
        network: impl FnMut(&mut Outbound) -> bool,
    ) -> Vec<Result<Collected, Abort>> {
        let b = body();
        let [l, h] = held;
        let mut leader = Collect::new(SESSION, 0, "s", &b, c, l);
        let mut helper = Collect::new(SESSION, 1, "s", &b, c, h);
        drive(&mut [&mut leader, &mut helper], network)
    }

    #[test]
    fn both_aggregators_open_the_exact_sum_of_the_common_reports() {
        let c = scene(3, None);
        let [mut l, mut h] = reports(&c, &[10, 20, 30, 40, 7]);
        // The helper lacks the last report and holds them in another order.
        l.rotate_left(1);
        h.pop();
        h.reverse();
        for end in collect(&c, [l, h], |_| true) {
            let got = end.unwrap();
            assert_eq!(got.result.values, vec![100]);
            assert_eq!(got.result.reports, Some(4));
            assert_eq!(got.used.len(), 4);
        }
    }

    #[test]
    fn a_batch_under_the_minimum_opens_nothing() {
        let c = scene(4, None);
        let [l, mut h] = reports(&c, &[1, 2, 3, 4]);
        h.pop();
        let ends = collect(&c, [l, h], |_| true);
        assert!(
            ends.iter()
                .all(|e| e.as_ref().err() == Some(&UNDER_MINIMUM))
        );
    }

    #[test]
    fn tampered_verifier_or_aggregate_shares_abort() {
        let c = scene(2, None);
        let held = || reports(&c, &[5, 6, 7]);
        for round in [0u32, 1, 2] {
            let ends = collect(&c, held(), |o| {
                if o.message.sender == 1 && o.message.round == round {
                    o.message.payload.truncate(if round == 0 { 31 } else { 3 });
                }
                true
            });
            assert!(ends[0].is_err(), "round {round}: {:?}", ends[0]);
            assert!(ends[0].as_ref().err() != Some(&TIMED_OUT), "round {round}");
        }
        // The helper's aggregate share never arrives.
        let ends = collect(&c, held(), |o| {
            !(o.message.sender == 1 && o.message.round == 2)
        });
        assert_eq!(ends[0].as_ref().err(), Some(&TIMED_OUT));
    }

    #[test]
    fn the_hello_codec_round_trips() {
        let h = Hello {
            key_half: [9; 32],
            reports: vec!["ab".into(), "cd".into()],
        };
        assert_eq!(Hello::decode(&h.encode()), Ok(h));
        let empty = Hello {
            key_half: [0; 32],
            reports: vec![],
        };
        assert_eq!(Hello::decode(&empty.encode()), Ok(empty));
        assert_eq!(Hello::decode(&[0; 31]), Err(MALFORMED));
    }
}
