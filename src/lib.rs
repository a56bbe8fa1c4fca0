//! The `kexin` application: command-line interface, synthetic data
//! generator, output rendering and the guided demo. The engine itself lives
//! in `kexin-engine`; this crate wires it to users.
//!
//! | module | holds |
//! |---|---|
//! | [`synth`] | `kexin gen`: deterministic synthetic multi-hospital data and an example policy |
//! | [`members`] | key files; signing queries, certificates, consent receipts, contract and airlock actions; the example space's governance |
//! | [`render`] | table, JSON and CSV output of a query outcome |
//! | [`fhe`] | the FHE key holder's key files: generate, publish, read back verified |
//! | [`contribute`] | `kexin contribute` (an individual's Prio3 report) and `kexin collect` (a researcher's batch) |
//! | [`ledger`] | node-to-node replication of DP charges (every node's ledger holds every charge) |
//! | [`witness`] | nodes keep and countersign each other's checkpoints; `audit verify --witnesses` |
//! | [`twin`] | `kexin twin`: a scene's mock twin generated from the policy alone, and `query --twin` |
//! | [`demo`] | `kexin demo`: allowed, suppressed and refused queries on a small space |
#![forbid(unsafe_code)]

pub mod accounting;
pub mod contribute;
pub mod demo;
pub mod federation;
pub mod fhe;
pub mod ledger;
pub mod members;
pub mod net;
pub mod render;
pub mod synth;
pub mod twin;
pub mod witness;

/// Output formats of `kexin query`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}
