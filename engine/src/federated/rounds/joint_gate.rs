//! The joint gate over additive secret shares (three or more nodes).
//!
//! ```text
//! round 0  each node sends every other node one share of its partial vector
//! round 1  each node broadcasts its sum of shares at every cell's person count
//! round 2  each node broadcasts its sum of shares at every total of the
//!          cells whose joint person count reached the threshold
//! ```
//!
//! Every node plays the same role. What opens is the joint person count of
//! every cell, then the joint totals of the passing cells: no node sees
//! another's partial, and no suppressed cell's totals open.

use kexin_mpc::aggregate::Aggregation;
use kexin_mpc::message::Message;
use kexin_mpc::share::Scalar;

use super::{Abort, Outbound, Patience, Role, Step, mpc_rule};
use crate::federated::{JointPlan, JointRows};

/// Where a node is in the three rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Round 0 sent; waiting for every other node's share.
    Shares,
    /// Person counts broadcast; waiting for the others'.
    Persons,
    /// The passing cells' totals broadcast (`passing` is set).
    Totals,
}

/// One node of a joint gate. Its input is a secret: `Debug` does not show
/// it, and it is wiped on drop.
pub struct JointGate<'a> {
    plan: &'a JointPlan,
    parties: usize,
    agg: Aggregation,
    input: Vec<Scalar>,
    stage: Stage,
    passing: Vec<usize>,
}

impl std::fmt::Debug for JointGate<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JointGate")
            .field("parties", &self.parties)
            .field("stage", &self.stage)
            .field("agg", &self.agg)
            .finish_non_exhaustive()
    }
}

impl Drop for JointGate<'_> {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.input);
    }
}

impl<'a> JointGate<'a> {
    /// Node `me` of `parties`, contributing `input` (the plan's partial
    /// vector, or [`JointPlan::withheld_input`]).
    pub fn new(
        session: [u8; 32],
        me: usize,
        parties: usize,
        plan: &'a JointPlan,
        input: &[i128],
    ) -> Result<JointGate<'a>, Abort> {
        let agg = Aggregation::new(session, me as u16, parties, plan.len())
            .map_err(|_| Abort::fed("fewer than three parties"))?;
        let input = input
            .iter()
            .map(|v| kexin_mpc::share::encode_int(*v))
            .collect::<Result<_, _>>()
            .map_err(|_| Abort::fed("a partial total is out of range"))?;
        Ok(JointGate {
            plan,
            parties,
            agg,
            input,
            stage: Stage::Shares,
            passing: vec![],
        })
    }

    /// The same message to every other node.
    fn broadcast(&self, m: Message) -> Vec<Outbound> {
        self.agg
            .others()
            .map(|to| Outbound {
                to,
                message: m.clone(),
            })
            .collect()
    }

    /// Go as far as the messages received allow (a fast peer's next round
    /// may already be here).
    fn advance(&mut self) -> Result<Step<JointRows>, Abort> {
        let mut send = Vec::new();
        loop {
            match self.stage {
                Stage::Shares if self.agg.complete(0) => {
                    self.agg.sum_shares().map_err(mpc_rule)?;
                    let at = self.plan.person_positions();
                    let m = self.agg.open(1, &at).map_err(mpc_rule)?;
                    send.extend(self.broadcast(m));
                    self.stage = Stage::Persons;
                }
                Stage::Persons if self.agg.complete(1) => {
                    let persons = self
                        .agg
                        .opened(1, &self.plan.person_positions())
                        .map_err(mpc_rule)?;
                    self.passing = self.plan.passing(&persons);
                    let at = self.plan.value_positions(&self.passing);
                    let m = self.agg.open(2, &at).map_err(mpc_rule)?;
                    send.extend(self.broadcast(m));
                    self.stage = Stage::Totals;
                }
                Stage::Totals if self.agg.complete(2) => {
                    let at = self.plan.value_positions(&self.passing);
                    let values = self.agg.opened(2, &at).map_err(mpc_rule)?;
                    let rows = self
                        .plan
                        .release(&self.passing, &values, self.parties)
                        .map_err(|_| Abort::fed("the opened totals do not form a result"))?;
                    return Ok(Step::done(send, rows));
                }
                _ => return Ok(Step::wait(send, Patience::ROUND)),
            }
        }
    }
}

impl Role for JointGate<'_> {
    type Output = JointRows;

    fn start(&mut self) -> Step<JointRows> {
        let shares = match self.agg.share(&self.input) {
            Ok(s) => s,
            Err(_) => return Step::abort(Abort::fed("sharing failed")),
        };
        let send = shares
            .into_iter()
            .map(|(to, message)| Outbound { to, message })
            .collect();
        Step::wait(send, Patience::ROUND)
    }

    fn step(&mut self, inbound: &[u8]) -> Step<JointRows> {
        if let Err(e) = self.agg.receive(inbound) {
            return Step::abort(mpc_rule(e));
        }
        self.advance().into()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{partials, plan, pooled};
    use super::super::{TIMED_OUT, drive};
    use super::*;
    use crate::federated::JointPlan;

    const SESSION: [u8; 32] = [7; 32];

    fn gates<'a>(plan: &'a JointPlan, inputs: &[Vec<i128>]) -> Vec<JointGate<'a>> {
        (0..inputs.len())
            .map(|i| JointGate::new(SESSION, i, inputs.len(), plan, &inputs[i]).unwrap())
            .collect()
    }

    fn run(
        plan: &JointPlan,
        inputs: &[Vec<i128>],
        network: impl FnMut(&mut Outbound) -> bool,
    ) -> Vec<Result<JointRows, Abort>> {
        let mut g = gates(plan, inputs);
        let mut roles: Vec<&mut dyn Role<Output = JointRows>> =
            g.iter_mut().map(|r| r as _).collect();
        drive(&mut roles, network)
    }

    #[test]
    fn every_node_releases_the_pooled_rows() {
        let plan = plan();
        for end in run(&plan, &partials(), |_| true) {
            let rows = end.unwrap();
            assert_eq!(rows.rows, pooled());
            assert_eq!(rows.suppressed_groups, 1);
        }
    }

    #[test]
    fn a_withheld_node_suppresses_every_cell() {
        let plan = plan();
        let mut inputs = partials();
        inputs[1] = plan.withheld_input();
        for end in run(&plan, &inputs, |_| true) {
            let rows = end.unwrap();
            assert!(rows.rows.is_empty());
            assert_eq!(rows.suppressed_groups, 3);
        }
    }

    #[test]
    fn two_nodes_cannot_run_a_joint_gate() {
        let plan = plan();
        let e = JointGate::new(SESSION, 0, 2, &plan, &partials()[0]).unwrap_err();
        assert_eq!(e.rule, "fewer than three parties");
    }

    #[test]
    fn a_lost_message_times_out_every_node_that_waits_on_it() {
        let plan = plan();
        // Node 2's share for node 0 never arrives: node 0 sees node 2's
        // round 1 before its round 0 and aborts; the others wait for node
        // 0's round 1 in vain.
        let ends = run(&plan, &partials(), |o| {
            !(o.message.sender == 2 && o.to == 0 && o.message.round == 0)
        });
        assert_eq!(
            ends[0].as_ref().unwrap_err().rule,
            "a party sent a replayed, reordered or foreign message"
        );
        assert_eq!(ends[1].as_ref().unwrap_err(), &TIMED_OUT);
        assert_eq!(ends[2].as_ref().unwrap_err(), &TIMED_OUT);
        // Every message of node 1 is lost: every node waits in vain.
        let ends = run(&plan, &partials(), |o| o.message.sender != 1);
        assert!(ends.iter().all(|e| e.as_ref().err() == Some(&TIMED_OUT)));
    }

    #[test]
    fn a_replayed_or_foreign_message_aborts_its_receiver() {
        let plan = plan();
        // Node 1 claims round 1 for its round-0 share to node 2.
        let ends = run(&plan, &partials(), |o| {
            if o.message.sender == 1 && o.to == 2 && o.message.round == 0 {
                o.message.round = 1;
            }
            true
        });
        assert_eq!(
            ends[2].as_ref().unwrap_err().rule,
            "a party sent a replayed, reordered or foreign message"
        );
        // Another session's message.
        let ends = run(&plan, &partials(), |o| {
            if o.to == 0 {
                o.message.session = [8; 32];
            }
            true
        });
        assert_eq!(
            ends[0].as_ref().unwrap_err().rule,
            "a party sent a replayed, reordered or foreign message"
        );
    }

    #[test]
    fn a_truncated_share_vector_aborts_its_receiver() {
        let plan = plan();
        let ends = run(&plan, &partials(), |o| {
            if o.message.sender == 0 && o.to == 1 && o.message.round == 0 {
                o.message.payload.truncate(32);
            }
            true
        });
        assert!(ends[1].is_err(), "{:?}", ends[1]);
    }
}
