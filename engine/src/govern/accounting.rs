//! A data holder's account of what its node answered: per requester, scene
//! and contract, the queries and joint computations its data took part in,
//! how each ended, the ε charged for releases computed on it, what its data
//! contributed (persons and rows) and, under a contract with a value rule,
//! the node's share of each released result's fee.
//!
//! What a release used of a node's data is exact, so it never reaches the
//! researcher: the node keeps it privately ([`Contributed`]) and its audit
//! entry carries only a salted commitment ([`commitment`]). For a joint
//! result a node knows only its own contribution and the joint person
//! count of each released cell, which the secure sum of the result opened
//! to every node anyway; its share of the fee is its persons over the
//! joint persons, so it learns no other node's contribution.
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
    /// Of results that passed the gate (released or held for review): the
    /// persons this node's data contributed, summed over released cells
    /// and results, where the path counts them (DP and joint results).
    /// Shown to the node's data holders and the operator only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persons: Option<u64>,
    /// The rows it contributed, counted the same way (DP and joint results
    /// count rows where the query counts rows, `COUNT(*)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// Under a contract with a value rule: this node's share of the fees of
    /// the released results (a single node's result whole; a joint result
    /// split by persons contributed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
}

/// What a node's data contributed to one release: over the released cells,
/// the rows each counted and (where the path counts them exactly: DP and
/// joint results) the distinct persons in each, summed (a person in two
/// released cells counts twice). Exact, so never shown to the researcher:
/// it goes to the node's private accounting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contribution {
    pub persons: Option<u64>,
    pub rows: u64,
}

pub use crate::store::{Contributed, commitment};

/// A fresh record of `c` (`joint`: the joint persons of a joint result).
pub fn contributed(c: Contribution, joint: Option<u64>) -> Result<Contributed> {
    let mut salt = [0u8; 32];
    getrandom::fill(&mut salt).map_err(Error::internal)?;
    Ok(Contributed {
        persons: c.persons,
        rows: c.rows,
        joint_persons: joint,
        salt,
    })
}

/// Write `c` for audit entry `seq`, in the entry's own transaction.
pub fn keep(tx: &rusqlite::Transaction<'_>, seq: u64, c: &Contributed) -> Result<()> {
    tx.execute(
        "INSERT INTO release_contribution (seq, persons, rows, joint_persons, salt)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        rusqlite::params![
            seq as i64,
            c.persons.map(|p| p as i64),
            c.rows as i64,
            c.joint_persons.map(|j| j as i64),
            c.salt.as_slice()
        ],
    )?;
    Ok(())
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
            let add = |a: Option<u64>, b: Option<u64>| match (a, b) {
                (None, None) => None,
                (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
            };
            t.persons = add(t.persons, l.persons);
            t.rows = add(t.rows, l.rows);
            t.value = match (t.value, l.value) {
                (None, None) => None,
                (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
            };
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
