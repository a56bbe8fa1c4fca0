//! One privacy budget per requester organisation, over the whole space.
//!
//! A person's records can be at several hospitals, and every DP scene of a
//! requester reads the same persons. So the ε a requester spends is composed
//! over all of its DP scenes and all nodes: each node's ledger
//! (`store::dp_ledger`) must hold every charge made anywhere in the space.
//! A node therefore replicates each of its DP charges to the space's other
//! nodes *before* it executes, through a [`PeerLedger`] (the node service
//! supplies one that talks to its peers over mutually authenticated TLS),
//! and goes on only when every one of them accepted it. A node that cannot
//! reach them all refuses: a budget that is not known to be there is not
//! spent.
//!
//! Two caps apply to every charge, checked in the same transaction: the
//! scene's `privacy.epsilon_total` (the organisation's spending under that
//! scene) and the space's `[privacy] epsilon_per_requester` (its spending
//! under all scenes; by default the largest `epsilon_total` of its scenes).
//! A refused replication can leave a charge at the nodes that accepted it:
//! the ledger may over-count, never under-count.

use serde::Serialize;

pub use crate::store::{Caps, Charge, Spent};

/// The other nodes of the space, as the ledger reaches them.
pub trait PeerLedger: Send + Sync + std::fmt::Debug {
    /// Replicate `charge` to every node of the space except this one and
    /// those in `skip` (they charge themselves). `Ok` only when every one
    /// accepted it; otherwise the rule that fired.
    fn replicate(&self, charge: &Charge, skip: &[String]) -> std::result::Result<(), &'static str>;
}

/// Who else must record a charge this node makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replicate<'a> {
    /// Every other node of the space (single-node queries, PSI releases).
    All,
    /// Every node outside this set (a federated query's parties, which each
    /// charge themselves).
    Outside(&'a [String]),
    /// No one (another party of a federated query replicates).
    Nobody,
}

/// A requester organisation's budget under one DP scene, as `kexin budget
/// show` lists it (one row per researcher asked about, or per researcher
/// with charges).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Budget {
    pub node: String,
    pub scene: String,
    pub actor: String,
    /// The requester organisation whose budget it is.
    pub org: String,
    pub epsilon_total: f64,
    pub epsilon_per_query: f64,
    /// Spent under this scene by the organisation (all its researchers).
    pub epsilon_spent: f64,
    /// What one more charge may use: the smaller of the scene's and the
    /// organisation's remainders.
    pub epsilon_remaining: f64,
    pub delta_spent: f64,
    pub queries: u64,
    /// The organisation's budget over every DP scene and node.
    pub requester_epsilon_total: f64,
    pub requester_epsilon_spent: f64,
}
