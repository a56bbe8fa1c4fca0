//! Disputes over audited actions.
//!
//! Any party to an audit entry — its actor, a data holder of the node, the
//! space's operator, or an individual whose records the entry's query used
//! — may open a dispute over it: a signed statement of why, recorded with
//! the entry it concerns and an audit entry of its own, and shown to every
//! other party (`kexin dispute list`, a person's history). A data holder of
//! the node or the operator resolves it (upheld or dismissed); the member
//! who opened it may withdraw it. The resolution is signed and audited too.
//! A contract that says so (`pause_on_dispute`) runs no query while a
//! dispute over one of its entries is open.
//!
//! ```text
//!   open (a party signs)                         -> open
//!   resolve: uphold | dismiss (holder, operator) -> upheld | dismissed
//!   resolve: withdraw (the opener)               -> withdrawn
//! ```

use serde::{Deserialize, Serialize};

use crate::closed::closed_set;

/// The longest reason or note, in characters.
pub const MAX_TEXT: usize = 2000;

/// A party's signed request to open a dispute over audit entry `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Opening {
    pub space: String,
    pub node: String,
    /// The audit entry disputed.
    pub seq: u64,
    pub member: String,
    pub reason: String,
    pub nonce: String,
    pub time: String,
}

/// A signed resolution of dispute `dispute`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resolution {
    pub space: String,
    pub node: String,
    pub dispute: u64,
    pub member: String,
    pub outcome: Outcome,
    pub note: String,
    pub nonce: String,
    pub time: String,
}

closed_set! {
    /// How a dispute ends.
    Outcome {
        /// A data holder of the node or the operator finds for the opener.
        Upheld => "upheld",
        /// A data holder of the node or the operator finds against.
        Dismissed => "dismissed",
        /// The member who opened it takes it back.
        Withdrawn => "withdrawn",
    }
}

/// A dispute as the node holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dispute {
    pub id: u64,
    pub node: String,
    /// The audit entry disputed, and what it was about.
    pub seq: u64,
    pub scene: String,
    pub kind: String,
    pub actor: String,
    pub contract: Option<String>,
    pub opened_by: String,
    pub reason: String,
    pub opened_at: String,
    /// The audit entry that recorded the opening.
    pub open_audit_seq: u64,
    /// `open`, or the outcome.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolve_audit_seq: Option<u64>,
    /// The signed opening and resolution (JSON).
    pub signatures: Vec<serde_json::Value>,
}

/// A dispute as a person's history shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub id: u64,
    /// `open`, or the outcome.
    pub state: String,
}

/// The state of a dispute not resolved yet.
pub const OPEN: &str = "open";

impl Dispute {
    pub fn is_open(&self) -> bool {
        self.state == OPEN
    }
}

/// A reason or note a dispute may carry: not empty, at most
/// [`MAX_TEXT`] characters, no control characters but line breaks and tabs.
pub fn text_ok(s: &str) -> bool {
    !s.trim().is_empty()
        && s.chars().count() <= MAX_TEXT
        && s.chars().all(|c| !c.is_control() || c == '\n' || c == '\t')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_bounded_plain_text() {
        assert!(text_ok("the released count includes a withdrawn cohort"));
        assert!(text_ok("line one\nline two"));
        assert!(!text_ok("   "));
        assert!(!text_ok("bell\u{7}"));
        assert!(!text_ok(&"x".repeat(MAX_TEXT + 1)));
        assert!(text_ok(&"字".repeat(MAX_TEXT)));
    }
}
