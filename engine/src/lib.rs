//! `kexin-engine`: the trusted side of the sandbox boundary.
//!
//! A researcher's SQL is data: it is parsed, checked and rewritten before it
//! runs, and only what passes the output gate leaves. The crate is a house
//! of wings over a ground floor; a wing reads the ground and the wings
//! below it, never one above (`tests/all/layers.rs` fails otherwise):
//!
//! | floor | modules | holds |
//! |---|---|---|
//! | ground | [`error`], [`clock`], [`closed`], [`keys`], [`purpose`], [`noise`], [`mask`] | fixed refusal codes; the one clock source; closed sets written as fixed strings; secret keys; DUO purposes; exact discrete Laplace and Gaussian samplers (CKS20); the column masks and clamps applied at the scan |
//! | [`trust`] | [`identity`], [`audit`], [`store`], [`ledger`], [`witness`] | who is who and what is evidence: certificates and signed requests, the RFC 6962 Merkle log with C2SP signed checkpoints, the node's SQLite state, the DP budget ledger, peers' checkpoints |
//! | [`space`] | [`policy`] | `space.toml`: datasets, column grades/kinds/masks/bounds, scenes, members, limits |
//! | [`govern`] | [`registry`], [`consent`], [`contract`], [`airlock`], [`contribution`] | governance as data and rules: certificates and consent receipts, the consent filter, data-use contracts and their states, results held for review, individuals' Prio3 reports |
//! | [`query`] | [`disclosure`], [`rewrite`], [`udf`], [`gate`], [`cells`], [`dp`] | the single-node query path: lineage checks, the rewrite at the scan, WebAssembly UDFs, the release gate and its hidden per-cell aggregates, DP mode |
//! | [`federated`] | [`federated::rounds`] | a joint computation: the signed requests, the plan every node agrees on, and each federated protocol as transport-free role types tested in memory |
//! | [`node`] | `node/` child modules | one node: opening a space, running a researcher's query end to end, and its services (contracts, airlock, contributions, joint computations, budget, witnessing) |
//!
//! Every module also answers at its old flat path (`kexin_engine::dp`,
//! `kexin_engine::policy`, …).
//!
//! ```no_run
//! # async fn demo() -> kexin_engine::Result<()> {
//! use std::sync::Arc;
//! use kexin_engine::{node::{Node, QueryRequest}, policy::Space};
//!
//! let space = Arc::new(Space::load(std::path::Path::new("space"))?);
//! let node = Node::open(space, "h1").await?;
//! let outcome = node
//!     .query(&QueryRequest::new(
//!         "diabetes-2027",
//!         "alice",
//!         "SELECT sex, count(*) FROM patients GROUP BY sex",
//!     ))
//!     .await;
//! println!("{}", serde_json::to_string(&outcome).unwrap_or_default());
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

// The ground: what every wing may read.
pub mod clock;
pub mod closed;
pub mod error;
pub mod keys;
pub mod mask;
pub mod noise;
pub mod purpose;

// The wings, bottom up: a wing reads the ground and the wings below it only
// (`tests/all/layers.rs` checks it).
pub mod federated;
pub mod govern;
pub mod node;
pub mod query;
pub mod space;
pub mod trust;

// Each module also answers at its old path (`kexin_engine::dp`, …), so
// users' code and the crate's own paths keep working.
pub use govern::{accounting, airlock, consent, contract, contribution, dispute, registry};
pub use query::{cells, disclosure, dp, gate, rewrite, udf};
pub use space::policy;
pub use trust::{audit, evidence, identity, ledger, log_view, store, witness};

pub use error::{Code, Error, Refusal, Result};
