//! The module manifest: which functions a module provides and their types.
//!
//! A module exports `kexin_manifest() -> i64` returning `(ptr << 32) | len`
//! of a UTF-8 JSON document in its memory (ABI.md, "Manifest"). The host
//! parses it as untrusted input: size-limited, unknown fields rejected, every
//! name and type checked.

use std::collections::{BTreeSet, HashSet};

use serde::{Deserialize, Serialize};

use crate::error::Fault;

/// Largest manifest accepted, bytes.
pub const MAX_MANIFEST_BYTES: usize = 64 << 10;
/// Most functions one module may declare.
pub const MAX_FUNCTIONS: usize = 64;
/// Most arguments one function may take.
pub const MAX_ARGS: usize = 8;
/// Largest aggregate state, bytes.
pub const MAX_STATE_BYTES: u32 = 4096;
/// Most values a declared output domain may hold (group keys).
pub const MAX_DOMAIN: usize = 10_000;

/// Value types of the ABI. Each maps to one Arrow type on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Type {
    /// Arrow Int32, 4 bytes per value.
    I32,
    /// Arrow Int64, 8 bytes per value.
    I64,
    /// Arrow Float64, 8 bytes per value.
    F64,
    /// Arrow Boolean, one byte per value (0 or 1) in guest memory.
    Bool,
    /// Arrow Utf8: u32 offsets (rows + 1) and UTF-8 bytes.
    Utf8,
    /// Arrow Date32: days since 1970-01-01 as i32.
    Date,
}

impl Type {
    /// The ABI's type code (ABI.md, "Type codes").
    pub fn code(self) -> u32 {
        match self {
            Type::I32 => 1,
            Type::I64 => 2,
            Type::F64 => 3,
            Type::Bool => 4,
            Type::Utf8 => 5,
            Type::Date => 6,
        }
    }
    /// Bytes per value in guest memory; `None` for variable width.
    pub fn width(self) -> Option<usize> {
        match self {
            Type::I32 | Type::Date => Some(4),
            Type::I64 | Type::F64 => Some(8),
            Type::Bool => Some(1),
            Type::Utf8 => None,
        }
    }
    pub fn is_numeric(self) -> bool {
        matches!(self, Type::I32 | Type::I64 | Type::F64)
    }
}

/// Scalar functions map batches to batches; aggregates fold batches into a
/// fixed-size state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Scalar,
    Aggregate,
}

/// A declared finite output domain. Required for a function used as a group
/// key, and checked on every output value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Domain {
    /// Utf8 results: the complete list of possible values.
    Values(Vec<String>),
    /// Integer results: an inclusive range.
    Range([i64; 2]),
}

/// One declared function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Function {
    pub name: String,
    pub kind: Kind,
    pub args: Vec<Type>,
    pub returns: Type,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<Domain>,
    /// Aggregates only: the size of the state the host keeps between calls.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub state_bytes: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl Function {
    /// Whether the output can only take finitely many declared values.
    pub fn finite_domain(&self) -> bool {
        self.domain.is_some()
    }

    /// The exports this function needs, with their WebAssembly parameter
    /// counts (all i32) and whether they return an i32 status.
    pub fn exports(&self) -> Vec<(String, usize)> {
        match self.kind {
            Kind::Scalar => vec![(format!("kx_{}", self.name), 1)],
            Kind::Aggregate => vec![
                (format!("kx_{}_init", self.name), 1),
                (format!("kx_{}_update", self.name), 2),
                (format!("kx_{}_merge", self.name), 2),
                (format!("kx_{}_finalize", self.name), 2),
            ],
        }
    }

    /// Whether a utf8 or integer value is inside the declared domain.
    pub(crate) fn domain_set(&self) -> Option<DomainCheck> {
        match &self.domain {
            None => None,
            Some(Domain::Values(v)) => Some(DomainCheck::Values(v.iter().cloned().collect())),
            Some(Domain::Range([lo, hi])) => Some(DomainCheck::Range(*lo, *hi)),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum DomainCheck {
    Values(HashSet<String>),
    Range(i64, i64),
}

/// A module's manifest, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub abi: u32,
    pub functions: Vec<Function>,
}

fn valid_name(n: &str) -> bool {
    let b = n.as_bytes();
    (1..=48).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
        && !n.starts_with("kexin")
}

impl Manifest {
    /// Parse and validate manifest bytes read from guest memory.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, Fault> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(Fault::Manifest);
        }
        let m: Manifest = serde_json::from_slice(bytes).map_err(|_| Fault::Manifest)?;
        m.validate()?;
        Ok(m)
    }

    fn validate(&self) -> Result<(), Fault> {
        if self.abi != crate::abi::ABI_VERSION
            || self.functions.is_empty()
            || self.functions.len() > MAX_FUNCTIONS
        {
            return Err(Fault::Manifest);
        }
        let mut names = BTreeSet::new();
        for f in &self.functions {
            if !valid_name(&f.name) || !names.insert(f.name.as_str()) {
                return Err(Fault::Manifest);
            }
            if f.args.is_empty() || f.args.len() > MAX_ARGS || f.description.len() > 1024 {
                return Err(Fault::Manifest);
            }
            match f.kind {
                Kind::Scalar if f.state_bytes != 0 => {
                    return Err(Fault::Manifest);
                }
                Kind::Aggregate
                    if f.state_bytes == 0
                        || f.state_bytes > MAX_STATE_BYTES
                        || f.domain.is_some() =>
                {
                    return Err(Fault::Manifest);
                }
                _ => {}
            }
            match &f.domain {
                None => {}
                Some(Domain::Values(v)) => {
                    let distinct: BTreeSet<&String> = v.iter().collect();
                    if f.returns != Type::Utf8
                        || v.is_empty()
                        || v.len() > MAX_DOMAIN
                        || distinct.len() != v.len()
                        || v.iter().any(|s| s.len() > 64)
                    {
                        return Err(Fault::Manifest);
                    }
                }
                Some(Domain::Range([lo, hi])) => {
                    let span = hi.checked_sub(*lo);
                    if !matches!(f.returns, Type::I32 | Type::I64)
                        || span.is_none_or(|s| !(0..MAX_DOMAIN as i64).contains(&s))
                    {
                        return Err(Fault::Manifest);
                    }
                }
            }
        }
        Ok(())
    }

    pub fn function(&self, name: &str) -> Option<&Function> {
        self.functions.iter().find(|f| f.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_a_wellformed_manifest() {
        let m = Manifest::parse(
            br#"{"abi":1,"functions":[
                {"name":"bmi","kind":"scalar","args":["f64","f64"],"returns":"f64"},
                {"name":"band","kind":"scalar","args":["date"],"returns":"utf8","domain":{"values":["a","b"]}},
                {"name":"gm","kind":"aggregate","args":["f64"],"returns":"f64","state_bytes":16}]}"#,
        )
        .unwrap();
        assert_eq!(m.functions.len(), 3);
        assert!(m.function("band").unwrap().finite_domain());
        assert_eq!(m.function("gm").unwrap().exports().len(), 4);
    }

    proptest::proptest! {
        /// Arbitrary bytes and arbitrary JSON-ish text never panic the parser.
        #[test]
        fn parsing_untrusted_manifests_never_panics(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            text in "[{}\\[\\]\",:a-z0-9 ]{0,200}",
        ) {
            let _ = Manifest::parse(&bytes);
            let _ = Manifest::parse(text.as_bytes());
        }
    }

    #[test]
    fn rejects_bad_manifests() {
        for bad in [
            &br#"{"abi":2,"functions":[{"name":"f","kind":"scalar","args":["f64"],"returns":"f64"}]}"#[..],
            br#"{"abi":1,"functions":[]}"#,
            br#"{"abi":1,"functions":[{"name":"F","kind":"scalar","args":["f64"],"returns":"f64"}]}"#,
            br#"{"abi":1,"functions":[{"name":"kexin_x","kind":"scalar","args":["f64"],"returns":"f64"}]}"#,
            br#"{"abi":1,"functions":[{"name":"f","kind":"scalar","args":["f64"],"returns":"f64"},{"name":"f","kind":"scalar","args":["f64"],"returns":"f64"}]}"#,
            br#"{"abi":1,"functions":[{"name":"f","kind":"scalar","args":["f64"],"returns":"f64","domain":{"values":["a"]}}]}"#,
            br#"{"abi":1,"functions":[{"name":"f","kind":"scalar","args":["f64"],"returns":"i32","domain":{"range":[5,1]}}]}"#,
            br#"{"abi":1,"functions":[{"name":"f","kind":"aggregate","args":["f64"],"returns":"f64"}]}"#,
            br#"{"abi":1,"functions":[{"name":"f","kind":"scalar","args":["f64"],"returns":"f64","extra":1}]}"#,
            br#"{"abi":1,"functions":[{"name":"f","kind":"scalar","args":["f32"],"returns":"f64"}]}"#,
            b"not json",
        ] {
            assert_eq!(Manifest::parse(bad), Err(Fault::Manifest), "{}", String::from_utf8_lossy(bad));
        }
    }
}
