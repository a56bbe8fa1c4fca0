//! `kexin-mpc`: secret sharing, secure aggregation, ECDH-PSI and FHE gating as
//! transport-agnostic state machines. Depends on no other kexin crate.
//!
//! | module | holds |
//! |---|---|
//! | [`share`] | additive secret sharing over the ristretto255 scalar field, fixed-point encoding |
//! | [`elgamal`] | exponential ElGamal over ristretto255: encrypted sums of small integers (PSI payloads) |
//! | [`psi`] | ECDH-PSI cardinality over ristretto255 (RFC 9496 encodings and element derivation) |
//! | [`message`] | the size-limited peer message codec; (session, round, sender) binding |
//! | [`aggregate`] | one party's side of secure aggregation: share, sum, open chosen positions |
//! | [`fhe`] | the release gate on encrypted joint totals (TFHE): key holder, contributors, aggregator |
//! | [`prio3`] | individuals' validity-proved contributions for two aggregators (Prio3) |
//! | [`noise`] | each party's share of distributed discrete Laplace noise |
//! | [`error`] | why a step was rejected (every error aborts the round) |
//!
//! The node server, the TLS peer transport and the federated query
//! planning that drive these live in the root crate (`kexin node`,
//! `kexin federate`, `kexin psi`); see the README.
//!
//! ```
//! use kexin_mpc::share::{decode_fixed, encode_fixed, reconstruct, split};
//! // Three hospitals' totals, each split into three shares.
//! let totals = [120.5, 80.25, 99.0];
//! let per_hospital: Vec<Vec<_>> = totals
//!     .iter()
//!     .map(|t| split(&[encode_fixed(*t, 2).unwrap()], 3).unwrap())
//!     .collect();
//! // Party i adds the i-th share of every hospital; only the sum is opened.
//! let sums: Vec<_> = (0..3)
//!     .map(|i| kexin_mpc::share::add(&per_hospital.iter().map(|s| s[i].clone()).collect::<Vec<_>>()).unwrap())
//!     .collect();
//! let total = decode_fixed(&reconstruct(&sums).unwrap()[0], 2).unwrap();
//! assert_eq!(total, 299.75);
//! ```
#![forbid(unsafe_code)]

pub mod aggregate;
pub mod elgamal;
pub mod error;
pub mod fhe;
pub mod message;
pub mod noise;
pub mod prio3;
pub mod psi;
pub mod share;

pub use error::{Error, Result};

/// The smallest number of parties an additive aggregate may have: with two,
/// the total minus your own input is the other party's input.
pub const MIN_PARTIES: usize = 3;
