//! Requests one node answers alone, for members who are not on the node's
//! machine: a researcher's query, contracts, the airlock, individuals'
//! consent, UDF approvals, the DP ledger, audit inclusion proofs and pages
//! of the audit log. Each
//! goes through the same engine call as the in-process path (`--local`), so
//! the rules, the audit entries and the JSON shapes are the same. A signed
//! request must be signed by the link's member; reads show only what the
//! link's member may see.

use std::sync::Arc;

use anyhow::Result;
use kexin_engine::identity::{QueryBody, Role, Signed};
use kexin_engine::registry::{Registry, View};
use kexin_engine::{Code, Refusal};

use super::server::NodeServer;
use super::services::OTHER_SIGNER;
use super::wire::{FromNode, ToNode};
use crate::net::Link;

/// Consent receipts say who granted what: shown to the person, and to data
/// holders and the operator.
const CONSENTS_SHOWN: Refusal = Refusal::new(
    Code::Auth,
    "consent receipts are shown to the person they are about, to data holders and to the operator",
);
/// A person's history is shown to that person only.
const HISTORY_SHOWN: Refusal = Refusal::new(
    Code::Auth,
    "the uses of a person's records are shown to that person only",
);

/// The node cannot vouch for its log key (its member key or certificate
/// is not at hand).
const NO_VOUCH: Refusal = Refusal::new(Code::Witness, "the node cannot vouch for its log key");

/// A module that is not base64.
const MODULE_ENCODING: Refusal = Refusal::new(Code::UdfManifest, "the module is not base64");

/// An engine answer as a message: a refusal keeps its code and rule; any
/// other error is logged here and leaves as the fixed internal refusal.
fn reply<T>(r: kexin_engine::Result<T>, ok: impl FnOnce(T) -> FromNode) -> FromNode {
    match r {
        Ok(v) => ok(v),
        Err(e) => {
            if !matches!(e, kexin_engine::Error::Refused(_)) {
                tracing::warn!(target: "kexin::node", "request failed: {e}");
            }
            FromNode::refused(e.as_refusal(), None)
        }
    }
}

impl NodeServer {
    /// Answer one of the requests this file serves over a peer link;
    /// `member` and `role` are the link's.
    pub(super) fn direct(
        &self,
        mut link: Link,
        member: &str,
        role: &str,
        msg: ToNode,
    ) -> Result<()> {
        let answer = self.answer(member, role, msg)?;
        link.send_json(&answer)
    }

    /// The answer to one of the requests this file serves, for `member`
    /// with certified `role` (a peer link's TLS identity, or an API call's
    /// signature). `Err` is a message this file does not serve.
    pub(crate) fn answer(&self, member: &str, role: &str, msg: ToNode) -> Result<FromNode> {
        let node = &self.node;
        let signed_by = |signer: &str| signer == member;
        Ok(match msg {
            ToNode::Query(env) => self.query(member, env),
            ToNode::Contracts => reply(node.contracts_for(member), FromNode::Contracts),
            ToNode::ContractOffer(env) if signed_by(&env.body.holder) => {
                reply(node.contract_offer(&env), |c| {
                    FromNode::Contract(Box::new(c))
                })
            }
            ToNode::ContractAct(env) if signed_by(&env.body.member) => {
                reply(node.contract_act(&env), |c| FromNode::Contract(Box::new(c)))
            }
            ToNode::Airlock => reply(node.airlock_for(member), FromNode::Held),
            ToNode::AirlockAct(env) if signed_by(&env.body.member) => {
                reply(node.airlock_act(&env), |(held, bytes)| FromNode::Decided {
                    held,
                    bytes,
                })
            }
            ToNode::Consent(env) if signed_by(&env.body.person) => reply(
                Registry::open(Arc::clone(&self.space)).and_then(|mut r| r.record_consent(env)),
                |rec| FromNode::Recorded(Box::new(rec)),
            ),
            ToNode::Consents { person, scene } => {
                let who = match Role::parse(role) {
                    Some(Role::Individual) if person.as_deref().is_none_or(signed_by) => {
                        Some(member.to_string())
                    }
                    Some(Role::Holder | Role::Operator) => person,
                    _ => return Ok(FromNode::refused(CONSENTS_SHOWN, None)),
                };
                reply(
                    View::open(&self.space)
                        .and_then(|v| v.consents(who.as_deref(), scene.as_deref())),
                    FromNode::Consents,
                )
            }
            ToNode::History => {
                if Role::parse(role) != Some(Role::Individual) {
                    return Ok(FromNode::refused(HISTORY_SHOWN, None));
                }
                reply(
                    Registry::open(Arc::clone(&self.space)).and_then(|r| r.history(member)),
                    FromNode::History,
                )
            }
            ToNode::UdfRegister { approval, module } if signed_by(&approval.body.member) => {
                use base64::Engine as _;
                match base64::engine::general_purpose::STANDARD.decode(module.as_bytes()) {
                    Ok(bytes) => reply(node.approve_udf(&approval, &bytes), |r| {
                        FromNode::Registered(Box::new(r))
                    }),
                    Err(_) => FromNode::refused(MODULE_ENCODING, None),
                }
            }
            ToNode::Udfs { scene } => reply(node.list_udfs(scene.as_deref()), FromNode::Udfs),
            ToNode::UdfSubmit { submission, module } if signed_by(&submission.body.member) => {
                use base64::Engine as _;
                match base64::engine::general_purpose::STANDARD.decode(module.as_bytes()) {
                    Ok(bytes) => reply(node.submit_udf(&submission, &bytes), |s| {
                        FromNode::Submitted(Box::new(s))
                    }),
                    Err(_) => FromNode::refused(MODULE_ENCODING, None),
                }
            }
            ToNode::UdfSubmissions { scene } => reply(
                node.udf_submissions(member, scene.as_deref()),
                FromNode::Submissions,
            ),
            ToNode::UdfApprove(env) if signed_by(&env.body.member) => {
                reply(node.approve_submitted(&env), |r| {
                    FromNode::Registered(Box::new(r))
                })
            }
            ToNode::Prove { seq, size } => reply(
                node.audit_proof_at(member, seq, size),
                |(proof, verifier)| {
                    let vouch = self.vouch(&verifier);
                    FromNode::Proof {
                        proof: Box::new(proof),
                        verifier,
                        vouch: vouch.map(Box::new),
                    }
                },
            ),
            ToNode::Cosign { node: of } => match self.vouch(&node.log_verifier()) {
                None => FromNode::refused(NO_VOUCH, None),
                Some(v) => reply(node.cosign_witnessed(&of), |note| FromNode::Cosignature {
                    note,
                    vouch: Box::new(v),
                }),
            },
            ToNode::DisputeOpen(env) if signed_by(&env.body.member) => {
                reply(node.dispute_open(&env), |d| FromNode::Dispute(Box::new(d)))
            }
            ToNode::DisputeResolve(env) if signed_by(&env.body.member) => {
                reply(node.dispute_resolve(&env), |d| {
                    FromNode::Dispute(Box::new(d))
                })
            }
            ToNode::Disputes => reply(node.disputes_for(member), FromNode::Disputes),
            ToNode::Statement { from, to } => reply(
                node.statement(member, from.as_deref(), to.as_deref()),
                |s| match crate::accounting::sign(
                    &self.space,
                    &self.cfg,
                    &self.me,
                    s,
                    &node.log_verifier(),
                ) {
                    Ok(signed) => FromNode::Statement(Box::new(signed)),
                    Err(e) => {
                        tracing::warn!(target: "kexin::node", "statement not signed: {e:#}");
                        FromNode::refused(NO_VOUCH, None)
                    }
                },
            ),
            ToNode::AuditLog { size, from, limit } => reply(
                node.audit_log(member, size, from, limit),
                |(page, verifier)| FromNode::Log {
                    page: Box::new(page),
                    verifier,
                },
            ),
            ToNode::Budgets { actor, scene } => reply(
                node.budgets_for(member, actor.as_deref(), scene.as_deref()),
                FromNode::Budgets,
            ),
            ToNode::ContractOffer(_)
            | ToNode::ContractAct(_)
            | ToNode::AirlockAct(_)
            | ToNode::Consent(_)
            | ToNode::UdfRegister { .. }
            | ToNode::UdfSubmit { .. }
            | ToNode::UdfApprove(_)
            | ToNode::DisputeOpen(_)
            | ToNode::DisputeResolve(_) => FromNode::refused(OTHER_SIGNER, None),
            _ => anyhow::bail!("unexpected control message"),
        })
    }

    /// This node's vouch for its log key `verifier`, signed with its member
    /// key; `None` (logged) when it cannot be made.
    fn vouch(&self, verifier: &str) -> Option<kexin_engine::evidence::Vouch> {
        crate::witness::vouch(&self.space, &self.cfg, &self.me, self.node.name(), verifier)
            .inspect_err(
                |e| tracing::warn!(target: "kexin::node", "no vouch for the log key: {e:#}"),
            )
            .ok()
    }

    /// A researcher's query on this node, in one of the member's places and
    /// one of the node's query slots ([`NodeServer::query_slot`]).
    fn query(&self, member: &str, env: Signed<QueryBody>) -> FromNode {
        if env.body.member != member {
            return FromNode::refused(OTHER_SIGNER, None);
        }
        let _slot = self.query_slot(member);
        let outcome = self.rt.block_on(self.node.query_signed(&env));
        FromNode::Outcome(Box::new(outcome))
    }
}
