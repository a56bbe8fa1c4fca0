//! The policy model: `space.toml`, loaded and validated once at start.
//!
//! The raw TOML shapes (`Raw*`) are parsed with `deny_unknown_fields` so a
//! typo is an error rather than a silently ignored rule; they are then turned
//! into validated types ([`Space`], [`Dataset`], [`ColumnPolicy`], [`Scene`]).
//! Every error names the file, the field and the reason.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::closed::closed_set;
use crate::error::{Error, Result};
use crate::mask::MaskKind;

mod load;
mod raw;
mod scenes;

/// Data classification grade (1 public, 2 internal, 3 sensitive, 4 core/identifying).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Grade(u8);

impl Grade {
    pub fn new(g: u8) -> Option<Self> {
        (1..=4).contains(&g).then_some(Grade(g))
    }
    pub fn get(self) -> u8 {
        self.0
    }
    /// The least strict kind a column of this grade may declare.
    fn minimum_kind(self) -> ColumnKind {
        match self.0 {
            1 | 2 => ColumnKind::Attribute,
            3 => ColumnKind::Sensitive,
            _ => ColumnKind::Identifier,
        }
    }
}

/// What a column reveals about a person, in increasing strictness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnKind {
    /// Not identifying on its own (sex, hospital, department).
    Attribute,
    /// Identifying in combination (age, region, dates): released only generalized.
    Quasi,
    /// A protected value (diagnosis, cost, lab values): only inside aggregates.
    Sensitive,
    /// Identifies a person (ID number, name, phone): never released.
    Identifier,
}

/// Validated policy for one column.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnPolicy {
    pub name: String,
    pub grade: Grade,
    pub kind: ColumnKind,
    pub mask: MaskKind,
    /// Public bounds; values are clamped to them at the scan.
    pub bounds: Option<(f64, f64)>,
    /// A declared public domain of the column's (masked) values: in DP mode
    /// group keys from it are released for every value, without partition
    /// selection.
    pub domain: Option<Vec<PublicValue>>,
    /// The declared value type (`type = "…"`); absent, the mask implies
    /// it where it can ([`ColumnPolicy::value_type`]).
    pub declared_type: Option<ValueType>,
}

closed_set! {
    /// The type a column's values have in the node's copy of a dataset.
    /// `kexin dataset add` converts to it where that loses nothing a
    /// declaration did not ask to drop (timestamps to dates, integers to
    /// text or float) and refuses anything else.
    ValueType {
        Integer => "integer",
        Float => "float",
        Text => "text",
        Date => "date",
        Boolean => "boolean",
    }
}

impl ValueType {
    /// The Arrow type the node's copy stores.
    pub fn arrow(self) -> datafusion::arrow::datatypes::DataType {
        use datafusion::arrow::datatypes::DataType;
        match self {
            ValueType::Integer => DataType::Int64,
            ValueType::Float => DataType::Float64,
            ValueType::Text => DataType::Utf8,
            ValueType::Date => DataType::Date32,
            ValueType::Boolean => DataType::Boolean,
        }
    }
}

closed_set! {
    /// How a dataset's person key names a person, and so how an
    /// individual is linked to their records.
    PersonKeyScheme {
        /// A resident ID number (GB 11643 in China): the operator's
        /// certificate binds it to an individual, and data holders may bind
        /// it too. The same number is the same person on every node.
        NationalId => "national-id",
        /// A hospital's own record number: only that node's data holder
        /// can bind it to an individual.
        HospitalRecord => "hospital-record",
        /// An opaque token (a study ID, a pseudonym from elsewhere), bound
        /// by the node's data holder like a record number.
        Token => "token",
    }
}

/// One value of a declared public domain.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(untagged)]
pub enum PublicValue {
    Int(i64),
    Text(String),
}

/// The most values a declared domain may list.
pub const MAX_DOMAIN_VALUES: usize = 10_000;

impl ColumnPolicy {
    /// The column's value type: declared, or implied by its mask (dates
    /// for `month` and `year`, text for `pseudonym`, `partial` and
    /// `prefix`); `None` when neither says (numbers with `band` or bounds
    /// may be integers or floats, unmasked columns any type).
    pub fn value_type(&self) -> Option<ValueType> {
        self.declared_type.or(match self.mask {
            MaskKind::Month | MaskKind::Year => Some(ValueType::Date),
            MaskKind::Pseudonym | MaskKind::Partial(..) | MaskKind::Prefix(_) => {
                Some(ValueType::Text)
            }
            MaskKind::None | MaskKind::Redact | MaskKind::Band(_) => None,
        })
    }

    /// A group key may come from this column (after its mask).
    pub fn groupable(&self) -> bool {
        match self.kind {
            ColumnKind::Attribute | ColumnKind::Quasi => true,
            ColumnKind::Sensitive => self.mask.generalizes(),
            ColumnKind::Identifier => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub name: String,
    /// Path template; `{node}` is replaced by the node name.
    pub source: String,
    pub person_key: String,
    /// What the person key is ([`PersonKeyScheme`]); `national-id` when
    /// not declared.
    pub person_key_scheme: PersonKeyScheme,
    /// Each person has at most one row (a patient register): a second row
    /// with the same person key is refused at ingest.
    pub one_row_per_person: bool,
    pub columns: BTreeMap<String, ColumnPolicy>,
}

/// The column of a node's copy of a dataset that holds each row's person
/// ordinal (`kexin dataset add`); SQL cannot name it.
pub const ORDINAL_COLUMN: &str = "__kexin_ordinal";

impl Dataset {
    pub fn source_for(&self, space_dir: &Path, node: &str) -> PathBuf {
        space_dir.join(self.source.replace("{node}", node))
    }
}

closed_set! {
    /// Whether a scene's (or contract's) results leave at once or wait for
    /// review in the airlock.
    Release {
        Auto => "auto",
        Review => "review",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentMode {
    /// The data holder's own legal basis covers the scene.
    None,
    /// Only persons who granted the scene contribute (consent registry).
    Required,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContractMode {
    /// Queries need an agreed, unexpired, non-exhausted contract (default).
    Required,
    /// In-house analysis under the data holder's own governance: no contract.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dominance {
    /// How many top contributors are looked at.
    pub n: usize,
    /// Suppress when they hold more than this share of the cell's total.
    pub k: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutputRules {
    pub min_persons: u64,
    pub round_to: u64,
    pub decimals: u32,
    pub dominance: Option<Dominance>,
}

/// A DP scene's budget and contribution bounds (`privacy = {…}`).
#[derive(Debug, Clone, PartialEq)]
pub struct PrivacyRules {
    /// The budget of one researcher under the scene, over all queries.
    pub epsilon_total: f64,
    /// What one query charges.
    pub epsilon_per_query: f64,
    /// Per query, spent only on partition selection (group keys drawn from
    /// the data); 0 allows only public-domain group keys.
    pub delta: f64,
    /// At most this many rows of one person count in one group.
    pub rows_per_person: u32,
    /// One person counts in at most this many groups of a query.
    pub groups_per_person: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    pub name: String,
    pub purpose: String,
    pub disease: Option<String>,
    /// The DUO purpose parsed from `purpose` and `disease`.
    pub purpose_code: crate::purpose::Purpose,
    /// The purpose as stated to data subjects in Chinese (处理目的), shown
    /// with consent receipts and history.
    pub purpose_zh: Option<String>,
    /// The requester is a not-for-profit use (DUO modifier NPU).
    pub non_profit: bool,
    /// Ethics approval reference (DUO modifier IRB).
    pub irb: Option<String>,
    pub requester: String,
    pub datasets: Vec<String>,
    /// Optional allow-list of `dataset.column`; `None` means every column of
    /// the listed datasets (the person key is always present, pseudonymised).
    pub columns: Option<BTreeSet<String>>,
    pub consent: ConsentMode,
    pub valid_from: String,
    pub valid_to: String,
    pub release: Release,
    /// Held results need this many distinct data-holder approvals (1 or 2).
    pub approvers: u8,
    pub contract: ContractMode,
    /// Answered only jointly by several nodes (`kexin federate`): no node
    /// releases its own part. Group keys need public domains.
    pub federated: bool,
    /// Federated scenes: the nodes that answer together, every time (default:
    /// every node of the space). Two releases over node sets that differ by
    /// one node would reveal that node's totals.
    pub nodes: Vec<String>,
    /// Federated exact scenes: the release gate is evaluated under FHE by
    /// an aggregator node, and only a key-holder node decrypts what passes.
    pub fhe_gate: Option<FheGate>,
    /// Individuals contribute values under this scene (Prio3, two
    /// aggregator nodes); researchers collect the batch's sum.
    pub contribution: Option<Contribution>,
    pub output: OutputRules,
    pub privacy: Option<PrivacyRules>,
    /// Module digests approved in the policy file (`sha256:<hex>`, lower
    /// case). Nodes add the modules their data holders register.
    pub udfs: Vec<String>,
    /// What every UDF call under this scene may use: the node defaults,
    /// lowered by the scene's `udf_limits` table.
    pub udf_limits: kexin_sandbox::CallLimits,
}

impl Scene {
    pub fn column_visible(&self, dataset: &Dataset, column: &str) -> bool {
        column == dataset.person_key
            || self
                .columns
                .as_ref()
                .is_none_or(|set| set.contains(&format!("{}.{}", dataset.name, column)))
    }

    /// Is `today` (YYYY-MM-DD, UTC) inside the validity window? Both ends inclusive.
    pub fn valid_on(&self, today: &str) -> bool {
        self.valid_from.as_str() <= today && today <= self.valid_to.as_str()
    }
}

/// Who evaluates and who opens an FHE-gated release (node names).
#[derive(Debug, Clone, PartialEq)]
pub struct FheGate {
    pub aggregator: String,
    pub key_holder: String,
}

/// What an individual may contribute under a scene.
#[derive(Debug, Clone, PartialEq)]
pub enum ContributionKind {
    /// A value in `0..=max` (integers); the batch's sum is released.
    Sum { max: u64 },
    /// One of the labelled buckets; the batch's count per bucket is released.
    Histogram { buckets: Vec<String> },
}

/// Individuals' contributions (Prio3) under a scene.
#[derive(Debug, Clone, PartialEq)]
pub struct Contribution {
    pub kind: ContributionKind,
    /// A batch is released only with at least this many valid reports.
    pub min_batch: usize,
    /// The two aggregator nodes (leader first); they must not collude.
    pub aggregators: [String; 2],
    /// Discrete Laplace noise with this ε on each released batch (each
    /// aggregator adds a share); `None` releases the exact sum.
    pub epsilon: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub name: String,
    pub role: crate::identity::Role,
    pub org: String,
    /// Data holders: the nodes whose contracts and airlock they act for.
    pub nodes: Vec<String>,
    /// ISO 3166 code of where the member receives results; the space's own
    /// jurisdiction when absent.
    pub jurisdiction: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_sql_bytes: usize,
    pub max_sql_depth: usize,
    /// How deep one expression may nest, counted on the parsed SQL, long
    /// operator chains (`a + a + … + a`) included: planning and evaluation
    /// recurse over it, and a deep enough chain would exhaust a thread's
    /// stack and abort the node.
    pub max_expr_depth: usize,
    pub timeout_seconds: u64,
    pub memory_mb: usize,
    /// Every answer to a researcher's query leaves the node at a multiple of
    /// this many milliseconds after the request arrived, so its timing says
    /// only how many quanta the work took (0 turns padding off).
    pub response_quantum_ms: u64,
    /// The queries one member may start per minute on a node, whichever
    /// port they come through, with bursts of up to a quarter of that; a
    /// member's queries past the rate wait their turn (0 turns the pace
    /// off).
    pub queries_per_minute: u32,
}

impl Default for Limits {
    /// 16 KiB of SQL, 48 levels of nesting, expressions 128 deep, 120 s per
    /// query, 4 GiB memory pool, answers padded to 500 ms, 240 queries a
    /// minute per member.
    fn default() -> Self {
        Self {
            max_sql_bytes: 16 * 1024,
            max_sql_depth: 48,
            max_expr_depth: 128,
            timeout_seconds: 120,
            memory_mb: 4096,
            response_quantum_ms: 500,
            queries_per_minute: 240,
        }
    }
}

/// A validated space: datasets, scenes, members and limits.
#[derive(Debug, Clone)]
pub struct Space {
    pub dir: PathBuf,
    pub name: String,
    pub nodes: Vec<String>,
    pub datasets: BTreeMap<String, Dataset>,
    pub scenes: BTreeMap<String, Scene>,
    pub members: BTreeMap<String, Member>,
    pub limits: Limits,
    /// SHA-256 of the policy file bytes; recorded in every audit entry.
    pub policy_digest: [u8; 32],
    /// The operator's ed25519 public key: the trust root for member
    /// certificates. Without it no signed request can be checked.
    pub operator_key: Option<ed25519_dalek::VerifyingKey>,
    /// ISO 3166 code of the space (default `CN`).
    pub jurisdiction: String,
    /// Datasets whose results may not go to a requester outside the space's
    /// jurisdiction (the cross-border negative list).
    pub export_negative_list: Vec<String>,
    /// `[privacy] epsilon_per_requester`: the ε one requester organisation
    /// may spend over the space's persons, all its DP scenes and all nodes
    /// together. `None`: the largest `epsilon_total` of its DP scenes.
    pub epsilon_per_requester: Option<f64>,
}

impl Space {
    /// The ε requester organisation `org` may spend in all, over every DP
    /// scene and node of the space; `None` when it has no DP scene.
    pub fn requester_budget(&self, org: &str) -> Option<f64> {
        let largest = self
            .scenes
            .values()
            .filter(|s| s.requester == org)
            .filter_map(|s| s.privacy.as_ref().map(|p| p.epsilon_total))
            .reduce(f64::max)?;
        Some(self.epsilon_per_requester.unwrap_or(largest))
    }

    /// Where `member` receives results.
    pub fn jurisdiction_of(&self, member: &str) -> &str {
        self.members
            .get(member)
            .and_then(|m| m.jurisdiction.as_deref())
            .unwrap_or(&self.jurisdiction)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const GOOD: &str = r#"
[space]
name = "t"
nodes = ["h1"]

[member.alice]
role = "researcher"
org = "org:a"

[dataset.patients]
source = "{node}/patients.parquet"
person_key = "id_card"

[dataset.patients.columns]
id_card = { grade = 4, kind = "identifier", mask = "pseudonym" }
age     = { grade = 2, kind = "quasi", mask = "band(5)", bounds = [0, 100] }
cost    = { grade = 3, bounds = [0, 1000] }

[scene.s1]
purpose = "DUO:0000007"
disease = "E11"
requester = "org:a"
datasets = ["patients"]
valid = ["2026-01-01", "2030-12-31"]
output = { min_persons = 5, dominance = [2, 0.9] }
"#;

    fn parse(text: &str) -> Result<Space> {
        Space::parse(Path::new("/x"), "space.toml", text, [0; 32])
    }

    /// A DP scene for org:a beside GOOD's exact scene s1, seeing `columns`.
    fn with_dp_scene(requester: &str, columns: Option<&str>) -> Result<Space> {
        let columns = columns.map_or(String::new(), |c| format!("columns = [{c}]\n"));
        parse(&format!(
            r#"{GOOD}
[scene.s2]
purpose = "DUO:0000007"
disease = "E11"
requester = "{requester}"
datasets = ["patients"]
{columns}valid = ["2026-01-01", "2030-12-31"]
output = {{ min_persons = 5 }}
privacy = {{ epsilon_total = 2.0, epsilon_per_query = 0.5 }}
"#
        ))
    }

    #[test]
    fn an_exact_scene_beside_a_dp_scene_of_the_same_requester_is_refused() {
        let e = with_dp_scene("org:a", None).unwrap_err().to_string();
        assert!(e.contains("scene.s1") && e.contains("s2"), "{e}");
        assert!(
            e.contains("patients.age") && e.contains("patients.cost"),
            "{e}"
        );
        // One shared column is enough.
        assert!(with_dp_scene("org:a", Some("\"patients.cost\"")).is_err());
        // Another requester, or no column in common, is fine.
        let s = with_dp_scene("org:b", None).unwrap();
        assert_eq!(s.requester_budget("org:b"), Some(2.0));
        assert_eq!(s.requester_budget("org:a"), None);
        let narrow = GOOD.replace(
            "datasets = [\"patients\"]\nvalid",
            "datasets = [\"patients\"]\ncolumns = [\"patients.age\"]\nvalid",
        );
        assert!(narrow.contains("columns = [\"patients.age\"]"));
        let s = parse(&format!(
            "{narrow}\n[scene.s2]\npurpose = \"DUO:0000007\"\ndisease = \"E11\"\nrequester = \"org:a\"\ndatasets = [\"patients\"]\ncolumns = [\"patients.cost\"]\nvalid = [\"2026-01-01\", \"2030-12-31\"]\noutput = {{ min_persons = 5 }}\nprivacy = {{ epsilon_total = 2.0, epsilon_per_query = 0.5 }}\n[privacy]\nepsilon_per_requester = 1.5\n"
        ))
        .unwrap();
        assert_eq!(s.requester_budget("org:a"), Some(1.5));
        assert!(parse(&format!("{GOOD}\n[privacy]\nepsilon_per_requester = 0\n")).is_err());
    }

    #[test]
    fn good_policy_loads_with_defaults() {
        let s = parse(GOOD).unwrap();
        let c = &s.datasets["patients"].columns["cost"];
        assert_eq!(c.kind, ColumnKind::Sensitive);
        assert_eq!(s.scenes["s1"].output.min_persons, 5);
        assert_eq!(s.scenes["s1"].output.round_to, 1);
        assert_eq!(s.limits, Limits::default());
    }

    fn expect_field(text: &str, field: &str) {
        match parse(text) {
            Err(Error::Config { field: f, .. }) => {
                assert!(f.contains(field), "{f} should name {field}")
            }
            other => panic!("expected config error at {field}, got {other:?}"),
        }
    }

    #[test]
    fn config_errors_name_the_field() {
        expect_field(&GOOD.replace("band(5)", "band(0)"), "columns.age.mask");
        expect_field(
            &GOOD.replace("mask = \"band(5)\"", "mask = \"redact\""),
            "columns.age.mask",
        );
        expect_field(
            &GOOD.replace("grade = 3, bounds", "grade = 7, bounds"),
            "columns.cost.grade",
        );
        expect_field(
            &GOOD.replace("bounds = [0, 1000]", "bounds = [10, 1]"),
            "columns.cost.bounds",
        );
        expect_field(
            &GOOD.replace("person_key = \"id_card\"", "person_key = \"nope\""),
            "person_key",
        );
        expect_field(
            &GOOD.replace("datasets = [\"patients\"]", "datasets = [\"x\"]"),
            "scene.s1.datasets",
        );
        expect_field(&GOOD.replace("2030-12-31", "2030-13-31"), "scene.s1.valid");
        expect_field(
            &GOOD.replace("min_persons = 5", "min_persons = 1"),
            "min_persons",
        );
        expect_field(&GOOD.replace("[2, 0.9]", "[5, 0.9]"), "dominance");
        // grade 4 cannot be declared less strict than identifier
        expect_field(
            &GOOD.replace(
                "kind = \"identifier\", mask = \"pseudonym\"",
                "kind = \"quasi\", mask = \"prefix(2)\"",
            ),
            "id_card.kind",
        );
    }

    #[test]
    fn unknown_fields_are_errors_with_a_line() {
        match parse(&GOOD.replace("requester =", "requestr =")) {
            Err(Error::Config { field, reason, .. }) => {
                assert!(field.starts_with("line "), "{field}");
                assert!(reason.contains("requestr"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn column_allow_list_is_checked() {
        let t = GOOD.replace(
            "datasets = [\"patients\"]",
            "datasets = [\"patients\"]\ncolumns = [\"patients.agee\"]",
        );
        expect_field(&t, "scene.s1.columns");
    }
}
