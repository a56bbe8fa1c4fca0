//! Trust: who is who, and what is evidence.
//!
//! Member key files, operator-signed certificates and signed requests
//! ([`identity`]); the append-only Merkle audit log and its signed
//! checkpoints ([`audit`]); the node's SQLite state, which owns the log's
//! storage and its verification ([`store`]); the DP budget ledger every
//! node keeps for every charge in the space ([`ledger`]); and the checkpoints
//! a node keeps of its peers' logs ([`witness`]); one entry's portable
//! evidence, checked offline ([`evidence`]). This wing reads the
//! ground (errors, the clock, masks' keys) and nothing else.

pub mod audit;
pub mod evidence;
pub mod identity;
pub mod ledger;
pub mod log_view;
pub mod store;
pub mod witness;
