//! What a node does for each signed request: check the signer against the
//! link, authenticate and compute through the engine, say Ready and wait
//! for Go, run the protocol's role through the pump, audit, answer. No
//! round logic and no payload layout lives here: the roles are
//! [`kexin_engine::federated::rounds`].

use std::sync::Arc;

use anyhow::{Result, anyhow};
use kexin_engine::audit::Kind;
use kexin_engine::contribution::{CollectBody, ContributionBody};
use kexin_engine::federated::rounds::collect::{Collect, Collected};
use kexin_engine::federated::rounds::fhe_gate::{self, FheParty, Part};
use kexin_engine::federated::rounds::psi::SumEnd;
use kexin_engine::federated::rounds::{Abort, JointGate, PsiCount, PsiSum};
use kexin_engine::federated::{
    FederateBody, JointDecision, JointPartial, JointRows, PsiBody, PsiMode, session_id,
};
use kexin_engine::identity::{Signed, tag};
use kexin_engine::node::{JointTrace, QueryRequest};
use kexin_engine::policy::FheGate;
use kexin_engine::{Code, Refusal};

use super::config::node_key;
use super::server::{Inbound, NodeServer};
use super::wire::{FromNode, PsiResult};
use crate::net::Link;

/// A request whose signer is not the member on the TLS link.
pub(super) const OTHER_SIGNER: Refusal = Refusal::new(
    Code::Auth,
    "the request is signed by another member than the link's",
);

/// What a PSI node ends with.
#[derive(Debug)]
enum PsiDone {
    /// The overlap size (the first node).
    Count(usize),
    /// The noisy sum on the payload grid (the second node, `--mode sum`).
    Sum(i64),
    /// The second node in cardinality mode.
    Nothing,
}

type Rx = std::sync::mpsc::Receiver<Inbound>;

impl NodeServer {
    fn refuse(
        &self,
        link: &mut Link,
        req: &QueryRequest,
        kind: Kind,
        session: &[u8; 32],
        trace: &JointTrace,
        r: Refusal,
    ) -> Result<()> {
        let seq = self
            .node
            .audit_joint(req, kind, session, trace, JointDecision::Refused(r))
            .ok();
        link.send_json(&FromNode::refused(r, seq))
    }

    /// Audit an aborted round (`kind`: federated or psi) and tell the
    /// researcher; nothing is released.
    fn abort(
        &self,
        link: &mut Link,
        req: &QueryRequest,
        kind: Kind,
        session: &[u8; 32],
        trace: &JointTrace,
        why: &'static str,
    ) -> Result<()> {
        tracing::warn!(target: "kexin::node", "{kind} round aborted: {why}");
        let seq = self
            .node
            .audit_joint(req, kind, session, trace, JointDecision::Aborted(why))
            .ok();
        link.send_json(&FromNode::Aborted {
            rule: why.into(),
            audit_seq: seq,
        })
    }

    // ------------------------------------------------------------ joint gate

    pub(super) fn federate(
        &self,
        mut link: Link,
        member: &str,
        env: Signed<FederateBody>,
    ) -> Result<()> {
        let session = session_id(tag::FEDERATE, &env)?;
        let b = env.body.clone();
        let req = QueryRequest::new(&b.scene, &b.member, &b.sql);
        let none = JointTrace::default();
        if member != b.member {
            return self.refuse(
                &mut link,
                &req,
                Kind::Federated,
                &session,
                &none,
                OTHER_SIGNER,
            );
        }
        let me = match self.node.authenticate_federate(&env) {
            Ok(i) => i,
            Err(e) => {
                let r = e.as_refusal();
                return self.refuse(&mut link, &req, Kind::Federated, &session, &none, r);
            }
        };
        let (partial, trace) = self.rt.block_on(self.node.joint_partial(&req, &b.nodes));
        let partial = match partial {
            Ok(p) => p,
            Err(e) => {
                let r = e.as_refusal();
                return self.refuse(&mut link, &req, Kind::Federated, &session, &trace, r);
            }
        };
        let gate = self
            .space
            .scenes
            .get(&b.scene)
            .and_then(|s| s.fhe_gate.clone());
        // A node whose execution failed (`partial.withheld`) still runs
        // every round, with a partial that suppresses every joint cell.
        let outcome = self.in_session(session, &b.nodes, |rx| match &gate {
            Some(g) => self.fhe_gated(&mut link, &b.nodes, me, session, &partial, g, &rx),
            None => self.joint_gate(&mut link, &b.nodes, me, session, &partial, &rx),
        })?;
        match outcome {
            Ok(rows) => {
                let seq = self.node.audit_joint(
                    &req,
                    Kind::Federated,
                    &session,
                    &trace,
                    JointDecision::Released(&rows),
                )?;
                link.send_json(&FromNode::Released {
                    result: rows,
                    audit_seq: seq,
                })
            }
            Err(a) => self.abort(&mut link, &req, Kind::Federated, &session, &trace, a.rule),
        }
    }

    /// Ready, wait for Go, then the secret-shared joint gate.
    fn joint_gate(
        &self,
        link: &mut Link,
        nodes: &[String],
        me: usize,
        session: [u8; 32],
        partial: &JointPartial,
        rx: &Rx,
    ) -> Result<JointRows, Abort> {
        let plan = &partial.plan;
        self.await_go(link, &ready(plan))?;
        let mut role = JointGate::new(session, me, nodes.len(), plan, &partial.input)?;
        self.pump(&mut role, nodes, rx)
    }

    // -------------------------------------------------------------- FHE gate

    /// The aggregator's server key: read and checked once per key holder
    /// and key (the holder's signed statement names the key in use, so
    /// rotated keys are picked up).
    fn fhe_aggregator(&self, holder: &str) -> Result<Arc<kexin_mpc::fhe::Aggregator>, Abort> {
        let key = node_key(&self.space, &self.cfg, holder)
            .map_err(|_| Abort::fed("the key holder has no certified key"))?;
        let st = crate::fhe::statement(&self.space, &key, holder)
            .map_err(|_| Abort::fed("the key holder's key statement is missing or not verified"))?;
        let id = format!("{holder}/{}", st.server_key_sha256);
        let mut cache = self.fhe.lock().map_err(|_| Abort::fed("lock"))?;
        if let Some((cached, a)) = cache.as_ref()
            && *cached == id
        {
            return Ok(Arc::clone(a));
        }
        let a = Arc::new(
            crate::fhe::aggregator(&self.space, &key, holder).map_err(|_| {
                Abort::fed("the key holder's server key is missing, oversized or not verified")
            })?,
        );
        *cache = Some((id, Arc::clone(&a)));
        Ok(a)
    }

    /// The FHE-gated rounds. The keys are loaded and checked before Ready:
    /// a node without usable keys stops the query before anyone waits on
    /// it.
    #[allow(
        clippy::too_many_arguments,
        reason = "one call site; the parts of one session"
    )]
    fn fhe_gated(
        &self,
        link: &mut Link,
        nodes: &[String],
        me: usize,
        session: [u8; 32],
        partial: &JointPartial,
        gate: &FheGate,
        rx: &Rx,
    ) -> Result<JointRows, Abort> {
        let (agg, kh) = fhe_gate::positions(nodes, gate)?;
        let holder_key = node_key(&self.space, &self.cfg, &gate.key_holder)
            .map_err(|_| Abort::fed("the key holder has no certified key"))?;
        let enc = crate::fhe::encryptor(&self.space, &holder_key, &gate.key_holder)
            .map_err(|_| Abort::fed("the key holder's public key is missing or not verified"))?;
        let part = if me == agg {
            Part::Aggregator(self.fhe_aggregator(&gate.key_holder)?)
        } else if me == kh {
            Part::KeyHolder(Box::new(
                crate::fhe::key_holder(&self.space.dir, &gate.key_holder)
                    .map_err(|_| Abort::fed("the key holder's secret key is unavailable"))?,
            ))
        } else {
            Part::Contributor
        };
        let mut role = FheParty::new(session, me, nodes, gate, partial, &enc, part)?;
        self.await_go(link, &ready(&partial.plan))?;
        self.pump(&mut role, nodes, rx)
    }

    // ----------------------------------------------------------------- Prio3

    /// An individual's report: stored in the open batch, or refused.
    pub(super) fn contribute(
        &self,
        mut link: Link,
        member: &str,
        env: Signed<ContributionBody>,
    ) -> Result<()> {
        if member != env.body.person {
            return link.send_json(&FromNode::refused(OTHER_SIGNER, None));
        }
        match self.node.accept_contribution(&env) {
            Ok(seq) => link.send_json(&FromNode::Accepted { audit_seq: seq }),
            Err(e) => link.send_json(&FromNode::refused(e.as_refusal(), None)),
        }
    }

    /// A researcher's collection: both aggregators verify the open batch's
    /// proofs together and open its sum, if the batch is large enough.
    pub(super) fn collect(
        &self,
        mut link: Link,
        member: &str,
        env: Signed<CollectBody>,
    ) -> Result<()> {
        let session = session_id(tag::COLLECT, &env)?;
        let stop = |link: &mut Link, code: Code, rule: &str| -> Result<()> {
            let seq = self
                .node
                .audit_collection(&env, &session, &[], Err((code, rule)))
                .ok();
            if code == Code::FedAbort {
                link.send_json(&FromNode::Aborted {
                    rule: rule.into(),
                    audit_seq: seq,
                })
            } else {
                link.send_json(&FromNode::Refused {
                    code,
                    rule: rule.into(),
                    audit_seq: seq,
                })
            }
        };
        if member != env.body.member {
            return stop(&mut link, OTHER_SIGNER.code, OTHER_SIGNER.rule);
        }
        let me = match self.node.authenticate_collect(&env) {
            Ok(i) => i,
            Err(e) => {
                let r = e.as_refusal();
                return stop(&mut link, r.code, r.rule);
            }
        };
        let scene = env.body.scene.clone();
        let busy = !self
            .collecting
            .lock()
            .map_err(|_| anyhow!("lock"))?
            .insert(scene.clone());
        if busy {
            return stop(
                &mut link,
                Code::Batch,
                "another collection of this batch is running",
            );
        }
        let result = self.collect_batch(&mut link, &env, me, session, &stop);
        self.collecting
            .lock()
            .map_err(|_| anyhow!("lock"))?
            .remove(&scene);
        result
    }

    /// [`Self::collect`] once this node holds the scene's collection slot.
    fn collect_batch(
        &self,
        link: &mut Link,
        env: &Signed<CollectBody>,
        me: usize,
        session: [u8; 32],
        stop: &dyn Fn(&mut Link, Code, &str) -> Result<()>,
    ) -> Result<()> {
        let reports = match self.node.open_batch(&env.body.scene) {
            Ok(r) => r,
            Err(e) => {
                let r = e.as_refusal();
                return stop(link, r.code, r.rule);
            }
        };
        let outcome = self.in_session(session, &env.body.nodes, |rx| {
            let b = &env.body;
            let (_, c, _) = self.node.contribution_scene(&b.scene).map_err(|e| {
                let r = e.as_refusal();
                Abort {
                    code: r.code,
                    rule: r.rule,
                }
            })?;
            self.await_go(
                link,
                &FromNode::Ready {
                    plan: "collect".into(),
                    len: 0,
                },
            )?;
            let mut role = Collect::new(session, me, &self.space.name, b, c, reports);
            self.pump(&mut role, &b.nodes, &rx)
        })?;
        match outcome {
            Ok(Collected { result, used }) => {
                let seq = self
                    .node
                    .audit_collection(env, &session, &used, Ok(&result))?;
                link.send_json(&FromNode::Collected {
                    result,
                    audit_seq: seq,
                })
            }
            Err(a) => stop(link, a.code, a.rule),
        }
    }

    // ------------------------------------------------------------------- PSI

    pub(super) fn psi(&self, mut link: Link, member: &str, env: Signed<PsiBody>) -> Result<()> {
        let session = session_id(tag::PSI, &env)?;
        let b = env.body.clone();
        let dataset = self
            .space
            .scenes
            .get(&b.scene)
            .and_then(|s| s.datasets.first().cloned())
            .unwrap_or_default();
        let req = QueryRequest::new(
            &b.scene,
            &b.member,
            &format!("SELECT COUNT(*) FROM {dataset}"),
        );
        let mut trace = JointTrace::default();
        if member != b.member {
            return self.refuse(&mut link, &req, Kind::Psi, &session, &trace, OTHER_SIGNER);
        }
        let me = match self.node.authenticate_psi(&env) {
            Ok(i) => i,
            Err(e) => {
                return self.refuse(&mut link, &req, Kind::Psi, &session, &trace, e.as_refusal());
            }
        };
        let column = b.column.clone();
        let sum = match (b.mode, &column) {
            (PsiMode::Cardinality, None) => false,
            (PsiMode::Sum, Some(_)) => true,
            _ => {
                let r = Refusal::new(
                    Code::Federation,
                    "--mode sum takes --column; --mode cardinality takes none",
                );
                return self.refuse(&mut link, &req, Kind::Psi, &session, &trace, r);
            }
        };
        let (items, t) = self
            .rt
            .block_on(self.node.psi_items(&req, column.as_deref()));
        trace = t;
        let items = match items {
            Ok(i) => i,
            Err(e) => {
                return self.refuse(&mut link, &req, Kind::Psi, &session, &trace, e.as_refusal());
            }
        };
        let outcome = self.in_session(session, &b.nodes, |rx| -> Result<PsiDone, Abort> {
            self.await_go(
                &mut link,
                &FromNode::Ready {
                    plan: "psi".into(),
                    len: 0,
                },
            )?;
            if !sum {
                let mut role = PsiCount::new(session, me, &items.keys)?;
                let n = self.pump(&mut role, &b.nodes, &rx)?;
                return Ok(if me == 0 {
                    PsiDone::Count(n)
                } else {
                    PsiDone::Nothing
                });
            }
            let eps = self
                .node
                .psi_epsilon(&b.scene)
                .map_err(|_| Abort::fed("the scene has no privacy budget"))?;
            let mut role = if me == 0 {
                let column = b.column.as_deref().unwrap_or_default();
                let (_, bound) = self
                    .node
                    .psi_payload(&b.scene, column)
                    .map_err(|_| Abort::fed("the PSI column has no bounds"))?;
                PsiSum::first(session, &items, bound, eps)?
            } else {
                PsiSum::second(session, &items, eps)?
            };
            Ok(match self.pump(&mut role, &b.nodes, &rx)? {
                SumEnd::Count(n) => PsiDone::Count(n),
                SumEnd::Sum(s) => PsiDone::Sum(s),
            })
        })?;
        let done = match outcome {
            Ok(d) => d,
            Err(a) => return self.abort(&mut link, &req, Kind::Psi, &session, &trace, a.rule),
        };
        let result = match done {
            PsiDone::Nothing => {
                let rows = JointRows {
                    columns: vec![],
                    rows: vec![],
                    accuracy: vec![],
                    suppressed_groups: 0,
                    explanation: vec!["supplied the blinded set; the first node releases".into()],
                    opened: Default::default(),
                };
                let seq = self.node.audit_joint(
                    &req,
                    Kind::Psi,
                    &session,
                    &trace,
                    JointDecision::Released(&rows),
                )?;
                return link.send_json(&FromNode::Done { audit_seq: seq });
            }
            PsiDone::Count(size) => {
                let (value, interval, epsilon) = match self
                    .rt
                    .block_on(self.node.psi_release(&req, size, &mut trace))
                {
                    Ok(v) => v,
                    Err(e) => {
                        let r = e.as_refusal();
                        return self.refuse(&mut link, &req, Kind::Psi, &session, &trace, r);
                    }
                };
                PsiResult {
                    mode: PsiMode::Cardinality,
                    column: None,
                    value,
                    interval,
                    epsilon,
                    explanation: vec![
                        format!(
                            "ECDH-PSI over ristretto255 between {} and {}: neither node saw the other's list, only blinded, shuffled points",
                            b.nodes[0], b.nodes[1]
                        ),
                        format!(
                            "the cardinality has discrete Laplace noise (sensitivity 1, ε = {epsilon} charged by {} to the requester's budget at every node of the space); the interval holds the exact overlap with 95% probability",
                            b.nodes[0]
                        ),
                    ],
                }
            }
            PsiDone::Sum(noisy) => {
                let epsilon = match self.rt.block_on(self.node.psi_charge(&req, &mut trace)) {
                    Ok(e) => e,
                    Err(e) => {
                        let r = e.as_refusal();
                        return self.refuse(&mut link, &req, Kind::Psi, &session, &trace, r);
                    }
                };
                let q = items.quantum;
                let h =
                    kexin_engine::dp::laplace_half_width(items.bound as f64 / epsilon, 0.05) * q;
                // Printed on the grid's decimals.
                let p = 10f64.powi((-q.log10()).ceil().max(0.0) as i32);
                let tidy = |x: f64| (x * p).round() / p;
                let value = tidy(noisy as f64 * q);
                PsiResult {
                    mode: PsiMode::Sum,
                    column: column.clone(),
                    value,
                    interval: [tidy(value - h), tidy(value + h)],
                    epsilon,
                    explanation: vec![
                        format!(
                            "sum of {} over the persons {} and {} share: {} encrypted each person's value (exponential ElGamal), {} added the matching ciphertexts and the noise without seeing a value or which persons matched",
                            column.as_deref().unwrap_or(""),
                            b.nodes[0],
                            b.nodes[1],
                            b.nodes[1],
                            b.nodes[0]
                        ),
                        format!(
                            "per person at most rows_per_person values, each clamped to the column's bounds; discrete Laplace noise with that sensitivity (ε = {epsilon} charged by {} to the requester's budget at every node of the space); the interval holds the exact sum with 95% probability",
                            b.nodes[1]
                        ),
                    ],
                }
            }
        };
        let rows = JointRows {
            columns: vec![result.mode.to_string()],
            rows: vec![vec![kexin_engine::gate::Cell::Float(result.value)]],
            accuracy: vec![],
            suppressed_groups: 0,
            explanation: result.explanation.clone(),
            opened: Default::default(),
        };
        let seq = self.node.audit_joint(
            &req,
            Kind::Psi,
            &session,
            &trace,
            JointDecision::Released(&rows),
        )?;
        link.send_json(&FromNode::PsiResult {
            result,
            audit_seq: seq,
        })
    }
}

/// A joint plan's Ready message.
fn ready(plan: &kexin_engine::federated::JointPlan) -> FromNode {
    FromNode::Ready {
        plan: plan.digest.clone(),
        len: plan.len(),
    }
}
