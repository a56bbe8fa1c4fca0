//! `kexin-sandbox`: the wasmtime host for untrusted researcher UDFs.
//!
//! This crate depends on arrow and wasmtime, never on DataFusion; the engine
//! adapts it into DataFusion UDFs. A module is approved by the SHA-256 digest
//! of its bytes ([`module_digest`]), loaded and checked once by
//! [`Sandbox::load`], and called through a per-query [`Session`]. The batch
//! ABI is specified in `sandbox/ABI.md`.
#![forbid(unsafe_code)]

pub mod abi;
pub mod error;
pub mod host;
pub mod limits;
pub mod manifest;

pub use error::{Error, Fault, Result};
pub use host::{Module, Sandbox, Session};
pub use limits::{CallLimits, CallLimitsOverride, Limits, LimitsBuilder};
pub use manifest::{Domain, Function, Kind, Manifest, Type};

use sha2::{Digest, Sha256};

/// The approval identity of a module: `sha256:<64 hex digits>`.
pub fn module_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn digest_of_empty_module_is_the_sha256_of_nothing() {
        assert_eq!(
            super::module_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
