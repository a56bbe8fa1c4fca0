//! `kexin-engine`: the trusted side of the sandbox boundary.
//!
//! A researcher's SQL is data: it is parsed, checked and rewritten before it
//! runs, and only what passes the output gate leaves. The modules follow the
//! query path of `docs/query-path.md`, with time and purposes at the ground:
//!
//! | module | holds |
//! |---|---|
//! | [`clock`] | the one clock source, timestamps, calendar days, the freshness window of signed requests |
//! | [`purpose`] | DUO purposes of use and their matching (ICD-10 disease codes) |
//! | [`policy`] | `space.toml`: datasets, column grades/kinds/masks/bounds, scenes, members, limits |
//! | [`mask`] | the column masks and clamps applied at the scan (`kexin_mask`) |
//! | [`disclosure`] | lineage checks: what each output column derives from, refusal rules |
//! | [`rewrite`] | the `AnalyzerRule` that masks every base-table scan; safe expression semantics |
//! | [`gate`] | instrumentation of the releasing aggregate; suppression, rounding, release |
//! | [`cells`] | the hidden per-cell aggregates: capped distinct persons, dominance shares |
//! | [`audit`] | RFC 6962 Merkle hashing and C2SP signed-note checkpoints |
//! | [`store`] | the node's SQLite state, keys, audit log storage and verification |
//! | [`node`] | one node: opening a space and running a researcher's query end to end |
//! | [`noise`] | exact discrete Laplace and Gaussian samplers (CKS20) for DP noise |
//! | [`dp`] | DP mode: contribution bounding, noise calibration, partition selection, accuracy |
//! | [`udf`] | approved WebAssembly UDFs bound into a query as DataFusion functions |
//! | [`identity`] | member key files, operator-signed certificates, signed requests, GB 11643 ID numbers |
//! | [`consent`] | consent receipts, the consent filter at the scan |
//! | [`contribution`] | individuals' Prio3 reports: bodies, measurements, noise shares, the released batch (the node's side is `node/contributions.rs`) |
//! | [`federated`] | a joint computation: the signed requests, the plan every node agrees on, and [`federated::rounds`], each federated protocol as transport-free role types tested in memory |
//! | [`registry`] | the space's registry: issued certificates and consent receipts (SQLite, audited) |
//! | [`ledger`] | one DP budget per requester organisation over all scenes and nodes; peers accept each charge first |
//! | [`witness`] | peers keep and countersign each node's latest checkpoint, so truncation and rollback are caught |
//! | [`airlock`] | results held for data-holder review, signed approvals bound to the held bytes |
//! | [`contract`] | data-use contracts between a holder and a requester, and their negotiation states |
//! | [`error`] | fixed refusal codes, kept apart from internal failures |
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

pub mod airlock;
pub mod audit;
pub mod cells;
pub mod clock;
pub mod consent;
pub mod contract;
pub mod contribution;
pub mod disclosure;
pub mod dp;
pub mod error;
pub mod federated;
pub mod gate;
pub mod identity;
pub mod ledger;
pub mod mask;
pub mod node;
pub mod noise;
pub mod policy;
pub mod purpose;
pub mod registry;
pub mod rewrite;
pub mod store;
pub mod udf;
pub mod witness;

pub use error::{Code, Error, Refusal, Result};
