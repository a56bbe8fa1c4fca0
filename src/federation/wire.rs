//! The control messages between researchers (or individuals) and nodes,
//! as JSON frames. Peer messages of the protocols are
//! [`kexin_mpc::message::Message`]s, made by the roles of
//! [`kexin_engine::federated::rounds`].

use kexin_engine::accounting::SignedStatement;
use kexin_engine::airlock::{self, Held};
use kexin_engine::consent::{ConsentReceipt, ConsentRecord};
use kexin_engine::contract::{Action, Contract, Terms};
use kexin_engine::contribution::{BatchResult, CollectBody, ContributionBody};
use kexin_engine::dispute::{self, Dispute};
use kexin_engine::evidence::Vouch;
use kexin_engine::federated::{FederateBody, JointRows, PsiBody, PsiMode};
use kexin_engine::identity::{QueryBody, Signed, UdfApprovalBody, UdfSubmissionBody};
use kexin_engine::ledger::Budget;
use kexin_engine::log_view::LogPage;
use kexin_engine::node::{ListedUdf, Outcome, Registration, Submission};
use kexin_engine::registry::Use;
use kexin_engine::store::AuditProof;
use kexin_engine::{Code, Refusal};
use serde::{Deserialize, Serialize};

/// Researcher → node.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToNode {
    Federate(Signed<FederateBody>),
    Go,
    Cancel,
    Psi(Signed<PsiBody>),
    /// An individual's report for this aggregator.
    Contribute(Signed<ContributionBody>),
    /// A researcher collects a contribution scene's open batch.
    Collect(Signed<CollectBody>),
    /// Node → node: a DP charge to record before the sender computes.
    Charge(kexin_engine::ledger::Charge),
    /// Node → node: the sender's latest signed checkpoint, to witness.
    Witness {
        verifier: String,
        note: String,
    },
    /// Anyone → node: which checkpoint of `node` do you hold?
    Witnessed {
        node: String,
    },
    /// A researcher's query on this node.
    Query(Signed<QueryBody>),
    /// The contracts on this node the link's member may see.
    Contracts,
    /// A data holder's signed contract offer.
    ContractOffer(Signed<Terms>),
    /// A signed contract action (agree, finalize, terminate).
    ContractAct(Signed<Action>),
    /// The results held on this node that the link's member may see.
    Airlock,
    /// A signed airlock decision (approve, reject, fetch).
    AirlockAct(Signed<airlock::Decision>),
    /// A person's signed consent receipt, for the space's registry.
    Consent(Signed<ConsentReceipt>),
    /// Consent receipts on record: the link's member's own (individuals),
    /// or any person's (data holders, the operator).
    Consents {
        person: Option<String>,
        scene: Option<String>,
    },
    /// Every audited use of the link's member's records (individuals).
    History,
    /// A signed approval of a WebAssembly module, with the module
    /// (base64).
    UdfRegister {
        approval: Signed<UdfApprovalBody>,
        module: String,
    },
    /// The modules approved on this node (for one scene).
    Udfs {
        scene: Option<String>,
    },
    /// A researcher's signed submission of a module for review, with the
    /// module (base64).
    UdfSubmit {
        submission: Signed<UdfSubmissionBody>,
        module: String,
    },
    /// The modules submitted on this node the link's member may see.
    UdfSubmissions {
        scene: Option<String>,
    },
    /// A signed approval of a submitted module (the node has its bytes).
    UdfApprove(Signed<UdfApprovalBody>),
    /// The DP ledger rows the link's member may see.
    Budgets {
        actor: Option<String>,
        scene: Option<String>,
    },
    /// The evidence that audit entry `seq` is in this node's log, under
    /// the checkpoint of tree size `size` (the latest when absent).
    Prove {
        seq: u64,
        #[serde(default)]
        size: Option<u64>,
    },
    /// Anyone → node: the checkpoint of `node` you hold, countersigned,
    /// with your log key's vouch (for an evidence bundle).
    Cosign {
        node: String,
    },
    /// A party's signed opening of a dispute over an audit entry.
    DisputeOpen(Signed<dispute::Opening>),
    /// A signed resolution of a dispute.
    DisputeResolve(Signed<dispute::Resolution>),
    /// The disputes on this node the link's member may see.
    Disputes,
    /// A signed accounting statement for the link's member, over the days
    /// `from`..=`to`.
    Statement {
        from: Option<String>,
        to: Option<String>,
    },
    /// One page of this node's log: the leaves from entry `from` (at most
    /// `limit`) under the checkpoint of tree size `size` (the latest when
    /// absent), with the entries the link's member may see.
    AuditLog {
        size: Option<u64>,
        from: u64,
        limit: u64,
    },
}

/// Node → researcher.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FromNode {
    Ready {
        plan: String,
        len: usize,
    },
    Refused {
        code: Code,
        rule: String,
        audit_seq: Option<u64>,
    },
    Released {
        result: JointRows,
        audit_seq: u64,
    },
    Aborted {
        rule: String,
        audit_seq: Option<u64>,
    },
    PsiResult {
        result: PsiResult,
        audit_seq: u64,
    },
    /// The PSI party that supplied its blinded set and releases nothing.
    Done {
        audit_seq: u64,
    },
    /// A contribution stored in the open batch.
    Accepted {
        audit_seq: u64,
    },
    /// A collected batch.
    Collected {
        result: BatchResult,
        audit_seq: u64,
    },
    /// A peer's DP charge recorded here; what the requester has now spent
    /// under the scene.
    Charged {
        epsilon_spent: f64,
    },
    /// The witness's countersignature of a checkpoint it now holds.
    Cosigned {
        note: String,
    },
    /// The latest checkpoint of a node this node witnessed.
    Checkpoint {
        note: Option<String>,
    },
    /// A query's outcome, as `kexin query` prints it.
    Outcome(Box<Outcome>),
    /// Contracts, oldest first.
    Contracts(Vec<Contract>),
    /// A contract after the offer or action that was just recorded.
    Contract(Box<Contract>),
    /// Held results, oldest first.
    Held(Vec<Held>),
    /// A held result after a decision, with its bytes where they are shown.
    Decided {
        held: Held,
        bytes: Option<String>,
    },
    /// A consent receipt as the registry recorded it.
    Recorded(Box<ConsentRecord>),
    /// Consent receipts, in commit order.
    Consents(Vec<ConsentRecord>),
    /// Audited uses of a person's records.
    History(Vec<Use>),
    /// A module approved (or found approved already).
    Registered(Box<Registration>),
    /// Approved modules.
    Udfs(Vec<ListedUdf>),
    /// A module submitted (or found submitted already).
    Submitted(Box<Submission>),
    /// Submitted modules.
    Submissions(Vec<Submission>),
    /// DP ledger rows.
    Budgets(Vec<Budget>),
    /// An inclusion proof, with the node's checkpoint verifier key and
    /// the node's vouch for that key.
    Proof {
        proof: Box<AuditProof>,
        verifier: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vouch: Option<Box<Vouch>>,
    },
    /// A witness's countersignature of the checkpoint it holds of a node
    /// (none held yet: `None`), with the witness's vouch for its log key.
    Cosignature {
        note: Option<String>,
        vouch: Box<Vouch>,
    },
    /// A dispute after the opening or resolution just recorded.
    Dispute(Box<Dispute>),
    /// Disputes, oldest first.
    Disputes(Vec<Dispute>),
    /// A signed accounting statement.
    Statement(Box<SignedStatement>),
    /// A page of the node's log, with its checkpoint verifier key.
    Log {
        page: Box<LogPage>,
        verifier: String,
    },
}

impl FromNode {
    /// A refusal with its fixed code and rule, and the audit entry that
    /// recorded it (`audit_seq`, else the refusal's own).
    pub(crate) fn refused(r: Refusal, audit_seq: Option<u64>) -> FromNode {
        FromNode::Refused {
            code: r.code,
            rule: r.rule.into(),
            audit_seq: audit_seq.or(r.audit_seq),
        }
    }
}

/// What `kexin psi` releases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PsiResult {
    pub mode: PsiMode,
    pub column: Option<String>,
    /// The noisy value (cardinality, or the sum over the intersection).
    pub value: f64,
    /// 95% interval of the noise.
    pub interval: [f64; 2],
    pub epsilon: f64,
    pub explanation: Vec<String>,
}

// ---------------------------------------------------------------- the node
