//! A data holder's account of what its node answered: per requester, scene
//! and contract, the queries and joint computations its data took part in,
//! how each ended, and the ε charged for releases computed on it.
//!
//! A statement is computed from the node's audit log under one signed
//! checkpoint (which it carries), and signed with the node's certified
//! member key. [`SignedStatement::check`] verifies it offline with the
//! space's operator key: the node's certificate and log key
//! ([`crate::evidence::Vouch`]), the statement's signature, and the
//! checkpoint's.

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::audit::Checkpoint;
use crate::error::{Code, Error, Result};
use crate::evidence::Vouch;
use crate::identity::{Signed, tag};

/// One requester's use of the node under one scene and contract.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Line {
    pub requester: String,
    pub scene: String,
    pub contract: Option<String>,
    /// Every request answered: released, held, refused or aborted.
    pub queries: u64,
    pub released: u64,
    pub held: u64,
    pub refused: u64,
    /// Joint computations that ended with no release.
    pub aborted: u64,
    /// Of `queries`, this node's parts in joint computations (federated
    /// queries, set intersections).
    pub joint: u64,
    /// ε charged to the requester for releases computed on this node's data.
    pub epsilon: f64,
}

/// A node's statement over a period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    pub space: String,
    pub node: String,
    /// First and last day covered (UTC, inclusive); absent: unbounded.
    pub from: Option<String>,
    pub to: Option<String>,
    pub made_at: String,
    /// The member the statement was made for.
    pub made_for: String,
    /// The node's signed checkpoint the statement was computed under: it
    /// covers the log's first `size` entries.
    pub checkpoint: Option<String>,
    pub lines: Vec<Line>,
}

impl Statement {
    /// The sum over all lines (requester, scene and contract left empty).
    pub fn total(&self) -> Line {
        let mut t = Line::default();
        for l in &self.lines {
            t.queries += l.queries;
            t.released += l.released;
            t.held += l.held;
            t.refused += l.refused;
            t.aborted += l.aborted;
            t.joint += l.joint;
            t.epsilon += l.epsilon;
        }
        t
    }
}

/// A statement signed with the node's member key, with the node's vouch
/// (certificate and log key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedStatement {
    pub statement: Signed<Statement>,
    pub vouch: Vouch,
}

impl SignedStatement {
    /// Verify under the operator key: the vouch names this node, the
    /// statement is signed by the node's certified key, and its checkpoint
    /// by the node's log key.
    pub fn check(&self, operator: &VerifyingKey) -> Result<&Statement> {
        let s = &self.statement.body;
        let bad = |why: &str| Err(Error::Verify(format!("statement: {why}")));
        let (_, log_key) = self.vouch.check(&s.space, &s.node, operator)?;
        let Some(member_key) =
            crate::identity::parse_public_key(&self.vouch.certificate.body.public_key)
        else {
            return bad("the certificate's key is malformed");
        };
        if self
            .statement
            .verify(tag::STATEMENT, &member_key, Code::Auth)
            .is_err()
        {
            return bad("the signature does not verify with the node's certified key");
        }
        if let Some(note) = &s.checkpoint
            && Checkpoint::open(note, &log_key).is_err()
        {
            return bad("the checkpoint is not signed by the node's log key");
        }
        Ok(s)
    }
}
