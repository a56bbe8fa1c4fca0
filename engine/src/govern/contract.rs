//! Data-use contracts between a data holder (for one node) and a requester.
//!
//! A contract binds the holder, the requester, the scene, the datasets, the
//! release mode, a maximum number of queries, an optional privacy budget and
//! an expiry date. Its states follow the Dataspace Protocol's contract
//! negotiation (Eclipse Dataspace Protocol, "Contract Negotiation" states),
//! reduced to the ones a two-party agreement needs:
//!
//! ```text
//!   offer (holder signs the terms)      -> OFFERED
//!   agree (requester signs)             -> AGREED
//!   finalize (a holder countersigns)    -> FINALIZED
//!   terminate (either party, any time)  -> TERMINATED
//! ```
//!
//! Queries run only under an AGREED or FINALIZED contract that has not
//! expired and has queries left; the count is taken, durably, when a query
//! starts. Every state change is a signed action stored with the contract and
//! an entry in the node's audit log, committed together.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::audit::Kind;
use crate::closed::closed_set;
use crate::policy::Release;

/// What the holder offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Terms {
    pub space: String,
    pub node: String,
    /// The data-holder member who offers.
    pub holder: String,
    /// The researcher the contract is for.
    pub requester: String,
    pub scene: String,
    /// The datasets the requester may query (a subset of the scene's).
    pub datasets: Vec<String>,
    /// `auto` or `review` (held in the airlock). A contract can make the
    /// scene's release stricter, never looser.
    pub release: Release,
    pub max_queries: u64,
    /// DP scenes: this contract's cap on the requester's ε under the scene.
    pub epsilon: Option<f64>,
    /// Last valid day (UTC, inclusive).
    pub valid_to: String,
    /// No query runs under the contract while a dispute over one of its
    /// audit entries is open ([`crate::dispute`]). Absent (false) from
    /// terms that do not ask for it, so older contracts keep their ids.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pause_on_dispute: bool,
    /// The value rule: what one released result under the contract is
    /// worth (in the contract's unit, e.g. fen). A single node's result is
    /// the node's; a joint result is split among the nodes in proportion to
    /// the persons each contributed ([`crate::accounting`]). Absent from
    /// terms without one, so older contracts keep their ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fee_per_release: Option<u64>,
    pub nonce: String,
    pub time: String,
}

impl Terms {
    /// `ct-` and the first 16 hex digits of SHA-256 over the terms' JSON.
    pub fn id(&self) -> String {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        format!("ct-{}", &hex::encode(Sha256::digest(bytes))[..16])
    }
}

/// A signed state change of an existing contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    pub space: String,
    pub node: String,
    pub contract: String,
    pub action: Verb,
    pub member: String,
    pub nonce: String,
    pub time: String,
}

closed_set! {
    /// What a signed contract action does.
    Verb {
        /// The requester accepts the offered terms.
        Agree => "agree",
        /// A data holder of the node confirms the agreement.
        Finalize => "finalize",
        /// Either side ends the contract.
        Terminate => "terminate",
    }
}

impl Verb {
    /// The audit entry kind that records this action.
    pub fn audit_kind(self) -> Kind {
        match self {
            Verb::Agree => Kind::ContractAgree,
            Verb::Finalize => Kind::ContractFinalize,
            Verb::Terminate => Kind::ContractTerminate,
        }
    }
}

closed_set! {
    /// Negotiation states (Dataspace Protocol names).
    State {
        Offered => "OFFERED",
        Agreed => "AGREED",
        Finalized => "FINALIZED",
        Terminated => "TERMINATED",
    }
}

impl State {
    /// Queries may run in this state.
    pub fn active(self) -> bool {
        matches!(self, State::Agreed | State::Finalized)
    }
    /// The state `action` leads to from here, if it is allowed.
    pub fn after(self, action: Verb) -> Option<State> {
        match (self, action) {
            (State::Offered, Verb::Agree) => Some(State::Agreed),
            (State::Agreed, Verb::Finalize) => Some(State::Finalized),
            (s, Verb::Terminate) if s != State::Terminated => Some(State::Terminated),
            _ => None,
        }
    }
}

/// A contract as a node holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Contract {
    pub id: String,
    pub state: State,
    pub terms: Terms,
    pub queries_used: u64,
    pub updated_at: String,
    /// The signed offer and every signed action, in order (JSON).
    pub signatures: Vec<serde_json::Value>,
}

impl Contract {
    pub fn queries_left(&self) -> u64 {
        self.terms.max_queries.saturating_sub(self.queries_used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_states() {
        assert_eq!(State::Offered.after(Verb::Agree), Some(State::Agreed));
        assert_eq!(State::Offered.after(Verb::Finalize), None);
        assert_eq!(State::Agreed.after(Verb::Finalize), Some(State::Finalized));
        assert_eq!(State::Agreed.after(Verb::Agree), None);
        assert_eq!(
            State::Finalized.after(Verb::Terminate),
            Some(State::Terminated)
        );
        assert_eq!(State::Terminated.after(Verb::Terminate), None);
        assert!(!State::Offered.active() && State::Agreed.active());
        assert!(!State::Terminated.active());
        for s in [
            State::Offered,
            State::Agreed,
            State::Finalized,
            State::Terminated,
        ] {
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
    }
}
