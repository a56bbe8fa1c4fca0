//! `kexin-mpc`: secret sharing, secure aggregation, ECDH-PSI and FHE gating as
//! transport-agnostic state machines.
//!
//! Federation arrives with its own issue; this crate is the place for it and
//! depends on no other kexin crate.
#![forbid(unsafe_code)]

/// The smallest number of parties an additive aggregate may have: with two,
/// the total minus your own input is the other party's input.
pub const MIN_PARTIES: usize = 3;
