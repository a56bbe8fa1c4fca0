//! The single-node query path, in the order a query meets it:
//!
//! 1. the fragment and lineage checks on the parsed plan ([`disclosure`]);
//! 2. the rewrite that masks every base-table scan and hardens expressions
//!    ([`rewrite`], with the masks of [`crate::mask`]);
//! 3. approved WebAssembly UDFs bound in as DataFusion functions ([`udf`]);
//! 4. the release gate: instrumentation of the releasing aggregate, the
//!    hidden per-cell aggregates, suppression and rounding ([`gate`],
//!    [`cells`]);
//! 5. or, in a DP scene, bounding, noise and partition selection ([`dp`]).
//!
//! [`crate::node`] runs these steps for a researcher's request.

pub mod cells;
pub mod disclosure;
pub mod dp;
pub mod gate;
pub mod rewrite;
pub mod udf;
