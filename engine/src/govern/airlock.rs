//! The airlock: results of scenes (or contracts) with `release = "review"`
//! are held after the gate until data holders of the node approve them.
//!
//! - The held bytes are the exact JSON outcome the researcher will receive;
//!   their SHA-256 is in the audit entry that held them.
//! - A reviewer signs their decision *over that digest*, so an approval
//!   covers exactly the bytes reviewed; release returns those bytes.
//! - Reviewers are data-holder members of this node and never the requester;
//!   a scene may ask for two distinct approvers (`approvers = 2`).
//! - Release is audited with the same output digest; rejection is audited.

use serde::{Deserialize, Serialize};

use crate::audit::Kind;
use crate::closed::closed_set;

closed_set! {
    /// What a signed airlock decision asks.
    Verb {
        /// A data holder approves the held bytes.
        Approve => "approve",
        /// A data holder rejects them.
        Reject => "reject",
        /// See the held bytes: a holder reviewing, or the requester once
        /// released.
        Fetch => "fetch",
    }
}

impl Verb {
    /// The audit entry kind that records this decision (a release is
    /// recorded as [`Kind::AirlockRelease`] by the node instead).
    pub fn audit_kind(self) -> Kind {
        match self {
            Verb::Approve => Kind::AirlockApprove,
            Verb::Reject => Kind::AirlockReject,
            Verb::Fetch => Kind::AirlockFetch,
        }
    }
}

closed_set! {
    /// Where a held result stands.
    State {
        /// Waiting for approvals.
        Held => "held",
        /// Approved by enough reviewers: its requester may fetch it.
        Released => "released",
        /// Rejected: it never leaves.
        Rejected => "rejected",
    }
}

/// A signed airlock action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    pub space: String,
    pub node: String,
    pub id: u64,
    pub action: Verb,
    pub member: String,
    /// The digest of the held bytes the signer reviewed.
    pub output_sha256: String,
    pub nonce: String,
    pub time: String,
}

/// One held result, as `kexin airlock list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Held {
    pub id: u64,
    pub scene: String,
    pub requester: String,
    pub contract: Option<String>,
    pub state: State,
    pub output_sha256: String,
    pub approvals: Vec<String>,
    pub approvers_needed: u8,
    pub held_audit_seq: u64,
    pub created_at: String,
    pub decided_at: Option<String>,
}
