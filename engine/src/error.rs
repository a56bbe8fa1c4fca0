//! Errors: refusals (the caller asked for something not allowed) are kept
//! apart from failures (kexin or its environment is broken).
//!
//! A refusal carries a fixed [`Code`] and a fixed rule text. Neither ever
//! contains a cell value, a key or a data-dependent count, so a refusal can be
//! shown to a researcher and written to the audit log as it is.

use std::fmt;

/// Fixed refusal codes. Their string forms are a contract with users' scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Code {
    /// The SQL text is larger than the configured limit.
    SqlSize,
    /// The SQL text does not parse, or nests deeper than the limit.
    SqlSyntax,
    /// An expression nests deeper than the node's limit (long operator
    /// chains included).
    SqlDepth,
    /// The SQL names a table, column or function the scene does not provide.
    SqlUnknown,
    /// Not a single read-only SELECT.
    ShapeStatement,
    /// No releasing aggregate at the top of the query.
    ShapeNoAggregate,
    /// LIMIT, OFFSET, ORDER BY or DISTINCT below the releasing aggregate.
    ShapeBelowAggregate,
    /// Window functions anywhere.
    ShapeWindow,
    /// UNION / INTERSECT / EXCEPT.
    ShapeSetOperation,
    /// Literal relations (VALUES lists) or queries without a dataset.
    ShapeValues,
    /// Subqueries in expressions that could carry unreleased aggregates.
    ShapeSubquery,
    /// An aggregate below the releasing aggregate.
    ShapeNestedAggregate,
    /// HAVING over released groups.
    ShapeHaving,
    /// A join that is not an equi-join on the person key.
    DiscJoin,
    /// An identifier column outside the uses allowed for identifiers.
    DiscIdentifier,
    /// A sensitive column released or grouped without an aggregate.
    DiscSensitive,
    /// An aggregate function that reveals single values, or a FILTER clause.
    DiscAggregateFunction,
    /// MIN/MAX on a sensitive column.
    DiscMinMax,
    /// Conditional or other non-linear expressions (CASE, comparisons,
    /// rounding, integer division, …) in an aggregate argument's lineage.
    DiscConditional,
    /// A scalar function or operator outside the allow-list, or a pattern,
    /// length, count or format argument that is not a literal.
    DiscFunction,
    /// Scene unknown, not valid today, or the caller is not its requester.
    Scene,
    /// A UDF module is not approved for the scene, or its bytes no longer
    /// match the approved digest.
    UdfUnapproved,
    /// A UDF module is malformed, too large or too slow to compile.
    UdfModule,
    /// A UDF module imports something the kexin ABI does not provide.
    UdfImport,
    /// A UDF module's manifest or ABI exports are missing or invalid.
    UdfManifest,
    /// A UDF call does not match the declared signature.
    UdfSignature,
    /// A UDF used as a group key has no declared finite output domain.
    UdfDomain,
    /// A UDF ran out of fuel or time.
    UdfFuel,
    /// A UDF exceeded its memory or table limit.
    UdfMemory,
    /// A UDF exhausted its stack.
    UdfStack,
    /// A UDF trapped.
    UdfTrap,
    /// A UDF's output failed validation.
    UdfOutput,
    /// DP mode: a query shape DP cannot release (ORDER BY/LIMIT, output
    /// expressions over aggregates).
    DpShape,
    /// DP mode: an aggregate without a DP mechanism (MIN/MAX, UDAFs,
    /// COUNT(DISTINCT) of anything but the person key).
    DpAggregate,
    /// DP mode: an aggregate argument without public bounds.
    DpBounds,
    /// DP mode: group keys drawn from the data without `delta`, or a public
    /// domain too large to enumerate.
    DpPartition,
    /// DP mode: the researcher's budget under the scene cannot cover the query.
    DpBudget,
    /// The request's signature, certificate, timestamp or nonce does not
    /// check out (replayed, stale, signed by someone else, unknown member).
    Auth,
    /// The scene needs consent and the consent registry cannot be read.
    Consent,
    /// No agreed, unexpired, non-exhausted contract covers the query.
    Contract,
    /// The requester is outside the space's jurisdiction and the query read a
    /// dataset on the space's export negative list.
    CrossBorder,
    /// An airlock action that is not allowed (self-approval, wrong role,
    /// a result that is not held).
    Review,
    /// The query failed while running (the cause is never shown).
    Exec,
    /// Deadline or memory limit reached.
    ExecLimit,
    /// Kexin failed; the details are in the operator's log.
    Internal,
    /// A federated request the federation cannot run: fewer than three
    /// parties, an unknown node, group keys without a public domain.
    Federation,
    /// A federated round ended with no release: a party dropped out, timed
    /// out, or sent a malformed, replayed or invalid message.
    FedAbort,
    /// An individual's contribution refused: no current grant for the
    /// scene, a value outside its range, a malformed report, or a second
    /// contribution to the open batch.
    Contribution,
    /// A contribution batch under the scene's minimum size: nothing is
    /// released.
    Batch,
    /// Between nodes: a peer refused to witness a checkpoint (smaller than
    /// one it holds, a rollback; or another root at the same size, a fork).
    Witness,
    /// A call to a node's API that is malformed before any rule runs: a
    /// body that does not parse or is over its size limit, an unknown
    /// route or method.
    Request,
    /// A dispute refused: not a party to the entry, no such entry or
    /// dispute, a malformed reason, or a resolution by a member who may not
    /// make it.
    Dispute,
}

impl Code {
    /// The stable string form shown to researchers.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::SqlSize => "KX-SQL-SIZE",
            Code::SqlSyntax => "KX-SQL-SYNTAX",
            Code::SqlDepth => "KX-SQL-DEPTH",
            Code::SqlUnknown => "KX-SQL-UNKNOWN",
            Code::ShapeStatement => "KX-SHAPE-STATEMENT",
            Code::ShapeNoAggregate => "KX-SHAPE-NO-AGGREGATE",
            Code::ShapeBelowAggregate => "KX-SHAPE-BELOW-AGGREGATE",
            Code::ShapeWindow => "KX-SHAPE-WINDOW",
            Code::ShapeSetOperation => "KX-SHAPE-SET-OPERATION",
            Code::ShapeValues => "KX-SHAPE-VALUES",
            Code::ShapeSubquery => "KX-SHAPE-SUBQUERY",
            Code::ShapeNestedAggregate => "KX-SHAPE-NESTED-AGGREGATE",
            Code::ShapeHaving => "KX-SHAPE-HAVING",
            Code::DiscJoin => "KX-DISC-JOIN",
            Code::DiscIdentifier => "KX-DISC-IDENTIFIER",
            Code::DiscSensitive => "KX-DISC-SENSITIVE",
            Code::DiscAggregateFunction => "KX-DISC-AGGREGATE-FUNCTION",
            Code::DiscMinMax => "KX-DISC-MINMAX",
            Code::DiscConditional => "KX-DISC-CONDITIONAL",
            Code::DiscFunction => "KX-DISC-FUNCTION",
            Code::Scene => "KX-SCENE",
            Code::UdfUnapproved => "KX-UDF-UNAPPROVED",
            Code::UdfModule => "KX-UDF-MODULE",
            Code::UdfImport => "KX-UDF-IMPORT",
            Code::UdfManifest => "KX-UDF-MANIFEST",
            Code::UdfSignature => "KX-UDF-SIGNATURE",
            Code::UdfDomain => "KX-UDF-DOMAIN",
            Code::UdfFuel => "KX-UDF-FUEL",
            Code::UdfMemory => "KX-UDF-MEMORY",
            Code::UdfStack => "KX-UDF-STACK",
            Code::UdfTrap => "KX-UDF-TRAP",
            Code::UdfOutput => "KX-UDF-OUTPUT",
            Code::DpShape => "KX-DP-SHAPE",
            Code::DpAggregate => "KX-DP-AGGREGATE",
            Code::DpBounds => "KX-DP-BOUNDS",
            Code::DpPartition => "KX-DP-PARTITION",
            Code::DpBudget => "KX-DP-BUDGET",
            Code::Auth => "KX-AUTH",
            Code::Consent => "KX-CONSENT",
            Code::Contract => "KX-CONTRACT",
            Code::CrossBorder => "KX-CROSS-BORDER",
            Code::Review => "KX-REVIEW",
            Code::Exec => "KX-EXEC",
            Code::ExecLimit => "KX-EXEC-LIMIT",
            Code::Internal => "KX-INTERNAL",
            Code::Federation => "KX-FED",
            Code::FedAbort => "KX-FED-ABORT",
            Code::Contribution => "KX-CONTRIB",
            Code::Batch => "KX-BATCH",
            Code::Witness => "KX-WITNESS",
            Code::Request => "KX-REQUEST",
            Code::Dispute => "KX-DISPUTE",
        }
    }

    /// Failures at execution time, after admission: they can depend on the
    /// data (a deadline, a memory limit, a UDF that loops on one value), so
    /// the query path never shows them to the researcher (see
    /// `node::Trace::withheld`).
    pub fn data_dependent(self) -> bool {
        matches!(
            self,
            Code::Exec
                | Code::ExecLimit
                | Code::UdfFuel
                | Code::UdfMemory
                | Code::UdfStack
                | Code::UdfTrap
                | Code::UdfOutput
        )
    }

    /// Process exit status for this code (0 is reserved for released results).
    pub fn exit_status(self) -> i32 {
        match self {
            Code::Internal => 70,
            // As `kexin audit verify --witnesses` when a witness disagrees.
            Code::Witness => 5,
            Code::Exec
            | Code::FedAbort
            | Code::ExecLimit
            | Code::UdfFuel
            | Code::UdfMemory
            | Code::UdfStack
            | Code::UdfTrap
            | Code::UdfOutput => 4,
            Code::Scene
            | Code::Federation
            | Code::Contribution
            | Code::Batch
            | Code::DpBudget
            | Code::Auth
            | Code::Consent
            | Code::Contract
            | Code::Dispute
            | Code::Review => 3,
            _ => 2,
        }
    }
}

impl Code {
    /// Every code, in declaration order.
    pub const ALL: &[Code] = &[
        Code::SqlSize,
        Code::SqlSyntax,
        Code::SqlDepth,
        Code::SqlUnknown,
        Code::ShapeStatement,
        Code::ShapeNoAggregate,
        Code::ShapeBelowAggregate,
        Code::ShapeWindow,
        Code::ShapeSetOperation,
        Code::ShapeValues,
        Code::ShapeSubquery,
        Code::ShapeNestedAggregate,
        Code::ShapeHaving,
        Code::DiscJoin,
        Code::DiscIdentifier,
        Code::DiscSensitive,
        Code::DiscAggregateFunction,
        Code::DiscMinMax,
        Code::DiscConditional,
        Code::DiscFunction,
        Code::Scene,
        Code::UdfUnapproved,
        Code::UdfModule,
        Code::UdfImport,
        Code::UdfManifest,
        Code::UdfSignature,
        Code::UdfDomain,
        Code::UdfFuel,
        Code::UdfMemory,
        Code::UdfStack,
        Code::UdfTrap,
        Code::UdfOutput,
        Code::DpShape,
        Code::DpAggregate,
        Code::DpBounds,
        Code::DpPartition,
        Code::DpBudget,
        Code::Auth,
        Code::Consent,
        Code::Contract,
        Code::CrossBorder,
        Code::Review,
        Code::Exec,
        Code::ExecLimit,
        Code::Internal,
        Code::Federation,
        Code::FedAbort,
        Code::Contribution,
        Code::Batch,
        Code::Witness,
        Code::Request,
        Code::Dispute,
    ];

    /// The code whose string form is `s`.
    pub fn parse(s: &str) -> Option<Code> {
        Code::ALL.iter().copied().find(|c| c.as_str() == s)
    }
}

/// Serialized as its stable string form (`"KX-..."`).
impl serde::Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Read from its string form; any other string is an error.
impl<'de> serde::Deserialize<'de> for Code {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Code, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Code::parse(&s).ok_or_else(|| serde::de::Error::custom("unknown refusal code"))
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal: fixed code plus the fixed text of the rule that fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub code: Code,
    pub rule: &'static str,
    /// The audit entry that recorded the refusal, once one did (refused
    /// governance actions: contracts, the airlock, UDF approvals, consent).
    pub audit_seq: Option<u64>,
}

impl Refusal {
    pub const fn new(code: Code, rule: &'static str) -> Self {
        Self {
            code,
            rule,
            audit_seq: None,
        }
    }

    /// The same refusal, recorded as audit entry `seq`.
    pub const fn audited(self, seq: u64) -> Self {
        Self {
            audit_seq: Some(seq),
            ..self
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.rule)
    }
}

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The caller asked for something the policy does not allow.
    #[error("refused: {0}")]
    Refused(Refusal),
    /// The space configuration is invalid; names the file, field and reason.
    #[error("{file}: {field}: {reason}")]
    Config {
        file: String,
        field: String,
        reason: String,
    },
    /// The audit log or state database failed verification.
    #[error("verification failed: {0}")]
    Verify(String),
    /// I/O, SQLite, DataFusion or another dependency failed. Never shown to a
    /// researcher verbatim: it may quote data.
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    pub fn refused(code: Code, rule: &'static str) -> Self {
        Error::Refused(Refusal::new(code, rule))
    }

    pub fn config(
        file: impl Into<String>,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Error::Config {
            file: file.into(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn internal(what: impl fmt::Display) -> Self {
        Error::Internal(what.to_string())
    }

    /// The refusal to show a researcher for this error: refusals as they are,
    /// everything else as a fixed internal code.
    /// The code and rule of a refusal; `None` for internal errors.
    pub fn as_refusal_parts(&self) -> Option<(Code, &'static str)> {
        match self {
            Error::Refused(r) => Some((r.code, r.rule)),
            _ => None,
        }
    }

    pub fn as_refusal(&self) -> Refusal {
        match self {
            Error::Refused(r) => *r,
            _ => Refusal::new(
                Code::Internal,
                "internal error; the operator log has details",
            ),
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Internal(format!("sqlite: {e}"))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Internal(format!("io: {e}"))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `Err` with a refusal: the checks' shorthand.
pub(crate) fn refuse<T>(code: Code, rule: &'static str) -> Result<T> {
    Err(Error::refused(code, rule))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code reads back from its string form, and no two share one.
    #[test]
    fn codes_round_trip_through_their_strings() {
        let mut seen = std::collections::BTreeSet::new();
        for c in Code::ALL {
            assert!(seen.insert(c.as_str()), "{c} twice");
            assert_eq!(Code::parse(c.as_str()), Some(*c));
            let json = serde_json::to_string(c).unwrap();
            assert_eq!(serde_json::from_str::<Code>(&json).unwrap(), *c);
        }
        assert!(serde_json::from_str::<Code>("\"KX-NOPE\"").is_err());
        // ALL lists every variant: the enum's declaration has as many.
        let src = include_str!("error.rs");
        let body = &src[src.find("pub enum Code {").unwrap()..];
        let body = &body[..body.find("\n}").unwrap()];
        let variants = body
            .lines()
            .filter(|l| l.starts_with("    ") && !l.trim_start().starts_with("//"))
            .filter(|l| l.trim_end().ends_with(','))
            .count();
        assert_eq!(Code::ALL.len(), variants);
    }
}
