//! Where a member's command runs. By default on the node's server: the
//! signed request goes over the member's authenticated link and the node
//! answers. With `--local`, in this process: the command opens the node's
//! state and keys (or the space's registry) itself, which only the node's
//! operator can do, on the node's own machine.

use std::sync::Arc;

use anyhow::{Context, Result};
use ed25519_dalek::SigningKey;
use kexin::federation::{FromNode, ToNode};
use kexin_engine::Code;
use kexin_engine::airlock::{Decision, Held};
use kexin_engine::consent::{ConsentReceipt, ConsentRecord};
use kexin_engine::contract::{Action, Contract, Terms};
use kexin_engine::dispute::{Dispute, Opening, Resolution};
use kexin_engine::identity::{QueryBody, Signed, UdfApprovalBody, UdfSubmissionBody};
use kexin_engine::ledger::Budget;
use kexin_engine::node::{ListedUdf, Node, Outcome, Registration, Submission};
use kexin_engine::policy::Space;
use kexin_engine::registry::{Registry, Use, View};

/// Why a read without `--as` cannot go to a node's server.
pub(crate) const MEMBER_NEEDED: &str =
    "--as MEMBER is needed to ask the node's server (or --local on the node's own machine)";

/// A refusal with its fixed code and rule, from the engine in this process
/// or from a node's answer.
#[derive(Debug)]
pub(crate) struct Refused {
    pub code: Code,
    pub rule: String,
    /// The audit entry that recorded the refusal, when a node says so.
    pub audit_seq: Option<u64>,
}

/// What a command gets back: the value, or a refusal to print.
pub(crate) type Answer<T> = std::result::Result<T, Refused>;

/// An engine result as an answer: refusals are answers, other errors fail
/// the command.
pub(crate) fn answer<T>(r: kexin_engine::Result<T>) -> Result<Answer<T>> {
    match r {
        Ok(v) => Ok(Ok(v)),
        Err(kexin_engine::Error::Refused(r)) => Ok(Err(Refused {
            code: r.code,
            rule: r.rule.to_string(),
            audit_seq: r.audit_seq,
        })),
        Err(e) => Err(e.into()),
    }
}

/// The node a command acts on.
#[derive(Debug)]
pub(crate) enum Target {
    /// This process opened the node (`--local`).
    Local {
        /// The runtime the node was opened on, kept while it is used.
        rt: tokio::runtime::Runtime,
        node: Box<Node>,
        space: Arc<Space>,
    },
    /// This process, for the space's registry only (`--local` consent
    /// commands): no node is opened, so nothing of a node is created.
    Registry,
    /// The node's server, reached as the holder of `key`.
    Remote {
        space: Arc<Space>,
        node: String,
        key: SigningKey,
    },
}

impl Target {
    /// The node `node` (default: the space's first) of `space`: opened here
    /// when `local`, else reached over the network as the holder of `key`.
    pub(crate) fn open(
        space: &Arc<Space>,
        node: Option<String>,
        key: Option<&SigningKey>,
        local: bool,
    ) -> Result<Target> {
        let name = node.unwrap_or_else(|| space.default_node().to_string());
        if local {
            let rt = crate::runtime()?;
            let node = rt.block_on(Node::open(Arc::clone(space), &name))?;
            return Ok(Target::Local {
                rt,
                node: Box::new(node),
                space: Arc::clone(space),
            });
        }
        let key = key.context(MEMBER_NEEDED)?;
        Ok(Target::Remote {
            space: Arc::clone(space),
            node: name,
            key: key.clone(),
        })
    }

    pub(crate) fn name(&self) -> &str {
        match self {
            Target::Local { node, .. } => node.name(),
            Target::Registry => "",
            Target::Remote { node, .. } => node,
        }
    }

    /// Send `msg` to the node's server and read the answer it expects
    /// (`pick` takes it, or gives back any other); a refusal is an answer.
    pub(crate) fn call<T>(
        &self,
        msg: ToNode,
        pick: impl FnOnce(FromNode) -> std::result::Result<T, Box<FromNode>>,
    ) -> Result<Answer<T>> {
        let Target::Remote { space, node, key } = self else {
            anyhow::bail!("this command needs a node (--node), not only the registry");
        };
        let wait = kexin::federation::query_wait(space)?;
        match kexin::federation::ask(space, node, key, &msg, wait)? {
            FromNode::Refused {
                code,
                rule,
                audit_seq,
            } => Ok(Err(Refused {
                code,
                rule,
                audit_seq,
            })),
            got => pick(got)
                .map(Ok)
                .map_err(|other| kexin::federation::unexpected(node, &other)),
        }
    }

    /// Run a signed query on the node. In process, the node first reaches
    /// its peers' ledgers as its server does (DP charges go to every node).
    pub(crate) fn query(&self, env: Signed<QueryBody>) -> Result<Outcome> {
        if let Target::Local { rt, node, space } = self {
            if let Some(peers) = kexin::ledger::NetLedger::for_node(space, node.name()) {
                peers.install(node);
            }
            return Ok(rt.block_on(node.query_signed(&env)));
        }
        let answer = self.call(ToNode::Query(env), |m| match m {
            FromNode::Outcome(o) => Ok(*o),
            other => Err(Box::new(other)),
        })?;
        Ok(answer.unwrap_or_else(|r| Outcome::refusal(r.code, r.rule, r.audit_seq)))
    }

    /// The contracts the member may see (all of them, in process).
    pub(crate) fn contracts(&self) -> Result<Answer<Vec<Contract>>> {
        match self {
            Target::Local { node, .. } => answer(node.contracts()),
            Target::Remote { .. } | Target::Registry => self.call(ToNode::Contracts, |m| match m {
                FromNode::Contracts(c) => Ok(c),
                other => Err(Box::new(other)),
            }),
        }
    }

    pub(crate) fn contract_offer(&self, env: Signed<Terms>) -> Result<Answer<Contract>> {
        match self {
            Target::Local { node, .. } => answer(node.contract_offer(&env)),
            Target::Remote { .. } | Target::Registry => {
                self.call(ToNode::ContractOffer(env), |m| match m {
                    FromNode::Contract(c) => Ok(*c),
                    other => Err(Box::new(other)),
                })
            }
        }
    }

    pub(crate) fn contract_act(&self, env: Signed<Action>) -> Result<Answer<Contract>> {
        match self {
            Target::Local { node, .. } => answer(node.contract_act(&env)),
            Target::Remote { .. } | Target::Registry => {
                self.call(ToNode::ContractAct(env), |m| match m {
                    FromNode::Contract(c) => Ok(*c),
                    other => Err(Box::new(other)),
                })
            }
        }
    }

    /// The disputes the member may see (all of them, in process).
    pub(crate) fn disputes(&self) -> Result<Answer<Vec<Dispute>>> {
        match self {
            Target::Local { node, .. } => answer(node.disputes()),
            Target::Remote { .. } | Target::Registry => self.call(ToNode::Disputes, |m| match m {
                FromNode::Disputes(d) => Ok(d),
                other => Err(Box::new(other)),
            }),
        }
    }

    pub(crate) fn dispute_open(&self, env: Signed<Opening>) -> Result<Answer<Dispute>> {
        match self {
            Target::Local { node, .. } => answer(node.dispute_open(&env)),
            Target::Remote { .. } | Target::Registry => {
                self.call(ToNode::DisputeOpen(env), |m| match m {
                    FromNode::Dispute(d) => Ok(*d),
                    other => Err(Box::new(other)),
                })
            }
        }
    }

    pub(crate) fn dispute_resolve(&self, env: Signed<Resolution>) -> Result<Answer<Dispute>> {
        match self {
            Target::Local { node, .. } => answer(node.dispute_resolve(&env)),
            Target::Remote { .. } | Target::Registry => {
                self.call(ToNode::DisputeResolve(env), |m| match m {
                    FromNode::Dispute(d) => Ok(*d),
                    other => Err(Box::new(other)),
                })
            }
        }
    }

    /// The held results the member may see (all of them, in process).
    pub(crate) fn airlock(&self) -> Result<Answer<Vec<Held>>> {
        match self {
            Target::Local { node, .. } => answer(node.airlock()),
            Target::Remote { .. } | Target::Registry => self.call(ToNode::Airlock, |m| match m {
                FromNode::Held(h) => Ok(h),
                other => Err(Box::new(other)),
            }),
        }
    }

    pub(crate) fn airlock_act(
        &self,
        env: Signed<Decision>,
    ) -> Result<Answer<(Held, Option<String>)>> {
        match self {
            Target::Local { node, .. } => answer(node.airlock_act(&env)),
            Target::Remote { .. } | Target::Registry => {
                self.call(ToNode::AirlockAct(env), |m| match m {
                    FromNode::Decided { held, bytes } => Ok((held, bytes)),
                    other => Err(Box::new(other)),
                })
            }
        }
    }

    /// Approve the module `bytes` as `env` signs it.
    pub(crate) fn approve_udf(
        &self,
        env: Signed<UdfApprovalBody>,
        bytes: &[u8],
    ) -> Result<Answer<Registration>> {
        match self {
            Target::Local { node, .. } => answer(node.approve_udf(&env, bytes)),
            Target::Remote { .. } | Target::Registry => {
                use base64::Engine as _;
                let module = base64::engine::general_purpose::STANDARD.encode(bytes);
                let msg = ToNode::UdfRegister {
                    approval: env,
                    module,
                };
                self.call(msg, |m| match m {
                    FromNode::Registered(r) => Ok(*r),
                    other => Err(Box::new(other)),
                })
            }
        }
    }

    /// A researcher's signed submission of a module for review.
    pub(crate) fn submit_udf(
        &self,
        env: Signed<UdfSubmissionBody>,
        bytes: &[u8],
    ) -> Result<Answer<Submission>> {
        match self {
            Target::Local { node, .. } => answer(node.submit_udf(&env, bytes)),
            Target::Remote { .. } | Target::Registry => {
                use base64::Engine as _;
                let module = base64::engine::general_purpose::STANDARD.encode(bytes);
                let msg = ToNode::UdfSubmit {
                    submission: env,
                    module,
                };
                self.call(msg, |m| match m {
                    FromNode::Submitted(s) => Ok(*s),
                    other => Err(Box::new(other)),
                })
            }
        }
    }

    /// The modules submitted on the node that `member` may see.
    pub(crate) fn udf_submissions(
        &self,
        member: &str,
        scene: Option<String>,
    ) -> Result<Answer<Vec<Submission>>> {
        match self {
            Target::Local { node, .. } => answer(node.udf_submissions(member, scene.as_deref())),
            Target::Remote { .. } | Target::Registry => {
                self.call(ToNode::UdfSubmissions { scene }, |m| match m {
                    FromNode::Submissions(s) => Ok(s),
                    other => Err(Box::new(other)),
                })
            }
        }
    }

    /// A signed approval of a submitted module.
    pub(crate) fn approve_submitted(
        &self,
        env: Signed<UdfApprovalBody>,
    ) -> Result<Answer<Registration>> {
        match self {
            Target::Local { node, .. } => answer(node.approve_submitted(&env)),
            Target::Remote { .. } | Target::Registry => {
                self.call(ToNode::UdfApprove(env), |m| match m {
                    FromNode::Registered(r) => Ok(*r),
                    other => Err(Box::new(other)),
                })
            }
        }
    }

    /// The modules approved on the node (for one scene).
    pub(crate) fn udfs(&self, scene: Option<String>) -> Result<Answer<Vec<ListedUdf>>> {
        match self {
            Target::Local { node, .. } => answer(node.list_udfs(scene.as_deref())),
            Target::Remote { .. } | Target::Registry => {
                self.call(ToNode::Udfs { scene }, |m| match m {
                    FromNode::Udfs(u) => Ok(u),
                    other => Err(Box::new(other)),
                })
            }
        }
    }

    /// DP ledger rows (over the network: those the member may see).
    pub(crate) fn budgets(
        &self,
        actor: Option<String>,
        scene: Option<String>,
    ) -> Result<Answer<Vec<Budget>>> {
        match self {
            Target::Local { node, .. } => answer(node.budgets(actor.as_deref(), scene.as_deref())),
            Target::Remote { .. } | Target::Registry => {
                self.call(ToNode::Budgets { actor, scene }, |m| match m {
                    FromNode::Budgets(b) => Ok(b),
                    other => Err(Box::new(other)),
                })
            }
        }
    }

    /// Record a consent receipt in the space's registry (through the node's
    /// server, or directly in process).
    pub(crate) fn consent(
        &self,
        space: &Arc<Space>,
        env: Signed<ConsentReceipt>,
    ) -> Result<Answer<ConsentRecord>> {
        match self {
            Target::Local { .. } | Target::Registry => {
                answer(Registry::open(Arc::clone(space)).and_then(|mut r| r.record_consent(env)))
            }
            Target::Remote { .. } => self.call(ToNode::Consent(env), |m| match m {
                FromNode::Recorded(r) => Ok(*r),
                other => Err(Box::new(other)),
            }),
        }
    }

    /// Consent receipts on record, optionally for one person and/or scene.
    pub(crate) fn consents(
        &self,
        space: &Arc<Space>,
        person: Option<String>,
        scene: Option<String>,
    ) -> Result<Answer<Vec<ConsentRecord>>> {
        match self {
            Target::Local { .. } | Target::Registry => answer(
                View::open(space).and_then(|v| v.consents(person.as_deref(), scene.as_deref())),
            ),
            Target::Remote { .. } => self.call(ToNode::Consents { person, scene }, |m| match m {
                FromNode::Consents(c) => Ok(c),
                other => Err(Box::new(other)),
            }),
        }
    }

    /// Every audited use of `person`'s records (over the network: the
    /// link's member's own).
    pub(crate) fn history(&self, space: &Arc<Space>, person: &str) -> Result<Answer<Vec<Use>>> {
        match self {
            Target::Local { .. } | Target::Registry => {
                answer(Registry::open(Arc::clone(space)).and_then(|r| r.history(person)))
            }
            Target::Remote { .. } => self.call(ToNode::History, |m| match m {
                FromNode::History(h) => Ok(h),
                other => Err(Box::new(other)),
            }),
        }
    }
}
