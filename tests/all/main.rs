//! kexin's integration tests, in one binary with a module per area. One
//! binary links DataFusion, wasmtime and tfhe once instead of once per
//! area, which is most of what building the tests costs.
//!
//! - `query_path`, `gate_rules`, `release_boundary`: the single-node query
//!   path, the gate, and the release boundary tested the two-worlds way;
//! - `dp`: differential privacy and the attacks it stops;
//! - `udf`: WebAssembly UDFs, hostile modules included;
//! - `governance`: consent, contracts, the airlock, signed requests;
//! - `cli`, `durability`: the command line, audit tampering, kill -9;
//! - `ingest`: a hospital loading its own files (`kexin dataset add`);
//! - `twin`: the mock twin researchers develop on (`kexin twin`);
//! - `layers`: the engine's import circles (only the known ones remain);
//! - `compat`: an audit log written by an earlier version still verifies;
//! - `federation`, `encrypted`: node processes, joint queries, PSI, the
//!   FHE gate and Prio3.
//!
//! Run one area with `cargo test --release --test all <area>::`.

// Test code: a panic is the failure report, and plain DataFusion over the
// raw files is the independent reference some areas check against.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    reason = "tests fail loudly and build reference contexts with plain DataFusion"
)]

// Each area uses its part of the shared helpers.
#[allow(dead_code, reason = "each test area uses part of the shared helpers")]
mod support;

#[path = "../../sandbox/tests/fixtures/mod.rs"]
mod fixtures;

mod cli;
mod compat;
mod dp;
mod durability;
mod encrypted;
mod evidence;
mod federation;
mod gate_rules;
mod governance;
mod http_api;
mod ingest;
mod layers;
mod node_service;
mod query_path;
mod release_boundary;
mod twin;
mod udf;
