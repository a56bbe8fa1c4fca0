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

use crate::error::{Error, Result};
use crate::mask::MaskKind;

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
    pub columns: BTreeMap<String, ColumnPolicy>,
}

impl Dataset {
    pub fn source_for(&self, space_dir: &Path, node: &str) -> PathBuf {
        space_dir.join(self.source.replace("{node}", node))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    Auto,
    Review,
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
    pub role: String,
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
}

impl Default for Limits {
    /// 16 KiB of SQL, 48 levels of nesting, expressions 128 deep, 120 s per
    /// query, 4 GiB memory pool, answers padded to 500 ms.
    fn default() -> Self {
        Self {
            max_sql_bytes: 16 * 1024,
            max_sql_depth: 48,
            max_expr_depth: 128,
            timeout_seconds: 120,
            memory_mb: 4096,
            response_quantum_ms: 500,
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

// ---------------------------------------------------------------- raw shapes

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpaceFile {
    space: RawSpace,
    #[serde(default)]
    limits: Option<RawLimits>,
    #[serde(default)]
    member: BTreeMap<String, RawMember>,
    #[serde(default)]
    dataset: BTreeMap<String, RawDataset>,
    #[serde(default)]
    scene: BTreeMap<String, RawScene>,
    #[serde(default)]
    privacy: Option<RawSpacePrivacy>,
}

/// `[privacy]`: what one requester organisation may spend in all.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpacePrivacy {
    epsilon_per_requester: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpace {
    name: String,
    nodes: Vec<String>,
    operator_key: Option<String>,
    jurisdiction: Option<String>,
    #[serde(default)]
    export_negative_list: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_sql_bytes: Option<usize>,
    max_sql_depth: Option<usize>,
    max_expr_depth: Option<usize>,
    timeout_seconds: Option<u64>,
    memory_mb: Option<usize>,
    response_quantum_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMember {
    role: String,
    org: String,
    #[serde(default)]
    nodes: Vec<String>,
    jurisdiction: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDataset {
    source: String,
    person_key: String,
    columns: BTreeMap<String, RawColumn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawColumn {
    grade: u8,
    kind: Option<ColumnKind>,
    mask: Option<String>,
    bounds: Option<[f64; 2]>,
    domain: Option<Vec<PublicValue>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScene {
    purpose: String,
    disease: Option<String>,
    purpose_zh: Option<String>,
    #[serde(default)]
    non_profit: bool,
    irb: Option<String>,
    requester: String,
    datasets: Vec<String>,
    columns: Option<Vec<String>>,
    consent: Option<String>,
    valid: [String; 2],
    release: Option<String>,
    approvers: Option<u8>,
    contract: Option<String>,
    #[serde(default)]
    federated: bool,
    nodes: Option<Vec<String>>,
    fhe_gate: Option<RawFheGate>,
    contribution: Option<RawContribution>,
    output: Option<RawOutput>,
    privacy: Option<RawPrivacy>,
    #[serde(default)]
    udfs: Vec<String>,
    udf_limits: Option<kexin_sandbox::CallLimitsOverride>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFheGate {
    aggregator: String,
    key_holder: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContribution {
    kind: String,
    max: Option<u64>,
    buckets: Option<Vec<String>>,
    min_batch: Option<usize>,
    aggregators: [String; 2],
    epsilon: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    min_persons: Option<u64>,
    round_to: Option<u64>,
    decimals: Option<u32>,
    dominance: Option<(usize, f64)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrivacy {
    epsilon_total: f64,
    epsilon_per_query: f64,
    delta: Option<f64>,
    rows_per_person: Option<u32>,
    groups_per_person: Option<u32>,
}

/// `space.toml` read one section at a time; `file` names it in errors.
struct Sections<'a> {
    file: &'a str,
}

impl Sections<'_> {
    /// `[space]`: the name and the nodes.
    fn space(&self, space: &RawSpace) -> Result<String> {
        let err = |field: String, reason: String| Error::config(self.file, field, reason);
        let name = space.name.trim().to_string();
        if name.is_empty() {
            return Err(err("space.name".into(), "must not be empty".into()));
        }
        if space.nodes.is_empty() {
            return Err(err("space.nodes".into(), "list at least one node".into()));
        }
        for n in &space.nodes {
            if !valid_name(n) {
                return Err(err(
                    "space.nodes".into(),
                    format!("node name {n:?} must be 1-32 of [a-z0-9_-]"),
                ));
            }
        }
        Ok(name)
    }

    /// `[limits]`, each within its range.
    fn limits(&self, raw: Option<RawLimits>) -> Result<Limits> {
        let err = |field: String, reason: String| Error::config(self.file, field, reason);
        let mut limits = Limits::default();
        if let Some(l) = raw {
            if let Some(v) = l.max_sql_bytes {
                if !(64..=1 << 20).contains(&v) {
                    return Err(err(
                        "limits.max_sql_bytes".into(),
                        "must be 64..=1048576".into(),
                    ));
                }
                limits.max_sql_bytes = v;
            }
            if let Some(v) = l.max_sql_depth {
                if !(4..=200).contains(&v) {
                    return Err(err("limits.max_sql_depth".into(), "must be 4..=200".into()));
                }
                limits.max_sql_depth = v;
            }
            if let Some(v) = l.max_expr_depth {
                if !(8..=1024).contains(&v) {
                    return Err(err(
                        "limits.max_expr_depth".into(),
                        "must be 8..=1024".into(),
                    ));
                }
                limits.max_expr_depth = v;
            }
            if let Some(v) = l.timeout_seconds {
                if !(1..=86_400).contains(&v) {
                    return Err(err(
                        "limits.timeout_seconds".into(),
                        "must be 1..=86400".into(),
                    ));
                }
                limits.timeout_seconds = v;
            }
            if let Some(v) = l.memory_mb {
                if !(64..=1 << 20).contains(&v) {
                    return Err(err(
                        "limits.memory_mb".into(),
                        "must be 64..=1048576".into(),
                    ));
                }
                limits.memory_mb = v;
            }
            if let Some(v) = l.response_quantum_ms {
                if v > 60_000 {
                    return Err(err(
                        "limits.response_quantum_ms".into(),
                        "must be 0..=60000".into(),
                    ));
                }
                limits.response_quantum_ms = v;
            }
        }
        Ok(limits)
    }

    /// `[member.*]`: names, roles, the nodes they act for, jurisdictions.
    fn members(
        &self,
        raw: BTreeMap<String, RawMember>,
        nodes: &[String],
    ) -> Result<BTreeMap<String, Member>> {
        let err = |field: String, reason: String| Error::config(self.file, field, reason);
        let mut members = BTreeMap::new();
        for (mname, m) in raw {
            if !valid_name(&mname) {
                return Err(err(
                    format!("member.{mname}"),
                    "member name must be 1-32 of [a-z0-9_-]".into(),
                ));
            }
            if !["researcher", "holder", "operator", "individual", "node"]
                .contains(&m.role.as_str())
            {
                return Err(err(
                    format!("member.{mname}.role"),
                    format!(
                        "unknown role {:?} (expected researcher, holder, operator, individual or node)",
                        m.role
                    ),
                ));
            }
            for n in &m.nodes {
                if !nodes.contains(n) {
                    return Err(err(
                        format!("member.{mname}.nodes"),
                        format!("{n:?} is not a node of the space"),
                    ));
                }
            }
            if let Some(j) = &m.jurisdiction
                && !iso3166(j)
            {
                return Err(err(
                    format!("member.{mname}.jurisdiction"),
                    "expected a two-letter ISO 3166 code such as CN or HK".into(),
                ));
            }
            members.insert(
                mname.clone(),
                Member {
                    name: mname,
                    role: m.role,
                    org: m.org,
                    nodes: m.nodes,
                    jurisdiction: m.jurisdiction,
                },
            );
        }
        Ok(members)
    }

    /// `[dataset.*]`: sources, person keys, and every column's policy.
    fn datasets(&self, raw: BTreeMap<String, RawDataset>) -> Result<BTreeMap<String, Dataset>> {
        let err = |field: String, reason: String| Error::config(self.file, field, reason);
        let mut datasets = BTreeMap::new();
        for (dname, d) in raw {
            let at = |f: &str| format!("dataset.{dname}.{f}");
            if !valid_name(&dname) {
                return Err(err(
                    format!("dataset.{dname}"),
                    "dataset name must be 1-32 of [a-z0-9_]".into(),
                ));
            }
            if d.source.trim().is_empty() {
                return Err(err(at("source"), "must not be empty".into()));
            }
            if Path::new(&d.source).is_absolute() || d.source.contains("..") {
                return Err(err(
                    at("source"),
                    "must be a relative path inside the space".into(),
                ));
            }
            let mut columns = BTreeMap::new();
            for (cname, c) in d.columns {
                let cat = |f: &str| format!("dataset.{dname}.columns.{cname}.{f}");
                if !valid_name(&cname) {
                    return Err(err(
                        cat("name"),
                        "column name must be 1-32 of [a-z0-9_]".into(),
                    ));
                }
                let grade = Grade::new(c.grade)
                    .ok_or_else(|| err(cat("grade"), "must be 1, 2, 3 or 4".into()))?;
                let kind = c.kind.unwrap_or(grade.minimum_kind());
                if kind < grade.minimum_kind() {
                    return Err(err(
                        cat("kind"),
                        format!(
                            "{kind:?} is less strict than grade {}'s default {:?}; a column may only be stricter than its grade",
                            grade.get(),
                            grade.minimum_kind()
                        ),
                    ));
                }
                let mask = match &c.mask {
                    Some(m) => MaskKind::parse(m).map_err(|reason| err(cat("mask"), reason))?,
                    None => MaskKind::None,
                };
                match kind {
                    ColumnKind::Identifier if !mask.hides_identity() => {
                        return Err(err(
                            cat("mask"),
                            "identifier columns need mask \"pseudonym\", \"redact\" or \"partial(a,b)\"".into(),
                        ));
                    }
                    ColumnKind::Quasi if !mask.generalizes() => {
                        return Err(err(
                            cat("mask"),
                            "quasi-identifiers need a generalizing mask: band(n), prefix(n), month or year".into(),
                        ));
                    }
                    _ => {}
                }
                let bounds = match c.bounds {
                    Some([lo, hi]) => {
                        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                            return Err(err(
                                cat("bounds"),
                                "need two finite numbers with lower < upper".into(),
                            ));
                        }
                        Some((lo, hi))
                    }
                    None => None,
                };
                if let Some(values) = &c.domain {
                    let distinct: BTreeSet<&PublicValue> = values.iter().collect();
                    let one_type = values.iter().all(|v| matches!(v, PublicValue::Int(_)))
                        || values.iter().all(|v| matches!(v, PublicValue::Text(_)));
                    if values.is_empty()
                        || values.len() > MAX_DOMAIN_VALUES
                        || distinct.len() != values.len()
                        || !one_type
                    {
                        return Err(err(
                            cat("domain"),
                            format!(
                                "need 1..={MAX_DOMAIN_VALUES} distinct values, all integers or all strings"
                            ),
                        ));
                    }
                    if kind == ColumnKind::Identifier {
                        return Err(err(
                            cat("domain"),
                            "identifier columns cannot have a public domain".into(),
                        ));
                    }
                }
                columns.insert(
                    cname.clone(),
                    ColumnPolicy {
                        name: cname,
                        grade,
                        kind,
                        mask,
                        bounds,
                        domain: c.domain.clone(),
                    },
                );
            }
            match columns.get(&d.person_key) {
                None => {
                    return Err(err(
                        at("person_key"),
                        format!("{:?} is not a column of the dataset", d.person_key),
                    ));
                }
                Some(c) if c.kind != ColumnKind::Identifier || c.mask != MaskKind::Pseudonym => {
                    return Err(err(
                        at("person_key"),
                        "the person key must be an identifier column with mask \"pseudonym\""
                            .into(),
                    ));
                }
                Some(_) => {}
            }
            datasets.insert(
                dname.clone(),
                Dataset {
                    name: dname,
                    source: d.source,
                    person_key: d.person_key,
                    columns,
                },
            );
        }
        Ok(datasets)
    }

    /// `[scene.*]`, against the datasets and nodes already read.
    fn scenes(
        &self,
        raw: BTreeMap<String, RawScene>,
        datasets: &BTreeMap<String, Dataset>,
        nodes: &[String],
    ) -> Result<BTreeMap<String, Scene>> {
        let err = |field: String, reason: String| Error::config(self.file, field, reason);
        let mut scenes = BTreeMap::new();
        for (sname, s) in raw {
            let at = |f: &str| format!("scene.{sname}.{f}");
            if !valid_name(&sname) {
                return Err(err(
                    format!("scene.{sname}"),
                    "scene name must be 1-32 of [a-z0-9_-]".into(),
                ));
            }
            if s.purpose.trim().is_empty() {
                return Err(err(at("purpose"), "must not be empty".into()));
            }
            if s.requester.trim().is_empty() {
                return Err(err(at("requester"), "must not be empty".into()));
            }
            if s.datasets.is_empty() && s.contribution.is_none() {
                return Err(err(at("datasets"), "list at least one dataset".into()));
            }
            for d in &s.datasets {
                if !datasets.contains_key(d) {
                    return Err(err(at("datasets"), format!("unknown dataset {d:?}")));
                }
            }
            let columns = match s.columns {
                None => None,
                Some(list) => {
                    let mut set = BTreeSet::new();
                    for qc in list {
                        let ok = qc.split_once('.').is_some_and(|(d, c)| {
                            s.datasets.iter().any(|x| x == d)
                                && datasets.get(d).is_some_and(|ds| ds.columns.contains_key(c))
                        });
                        if !ok {
                            return Err(err(
                                at("columns"),
                                format!(
                                    "{qc:?} is not dataset.column of a dataset listed in the scene"
                                ),
                            ));
                        }
                        set.insert(qc);
                    }
                    Some(set)
                }
            };
            let consent = match s.consent.as_deref() {
                None | Some("none") => ConsentMode::None,
                Some("required") => ConsentMode::Required,
                Some(other) => {
                    return Err(err(
                        at("consent"),
                        format!("{other:?}: expected \"required\" or \"none\""),
                    ));
                }
            };
            let release = match s.release.as_deref() {
                None | Some("auto") => Release::Auto,
                Some("review") => Release::Review,
                Some(other) => {
                    return Err(err(
                        at("release"),
                        format!("{other:?}: expected \"auto\" or \"review\""),
                    ));
                }
            };
            let purpose_code = crate::purpose::Purpose::parse(&s.purpose, s.disease.as_deref())
                .map_err(|e| err(at("purpose"), e))?;
            let scene_nodes = s.nodes.clone().unwrap_or_else(|| nodes.to_vec());
            if s.nodes.is_some() && !s.federated {
                return Err(err(
                    at("nodes"),
                    "only federated scenes list their nodes".into(),
                ));
            }
            if let Some(n) = scene_nodes.iter().find(|n| !nodes.contains(n)) {
                return Err(err(at("nodes"), format!("{n:?} is not in space.nodes")));
            }
            if s.federated && release == Release::Review {
                return Err(err(
                    at("release"),
                    "federated scenes release automatically (no node holds a joint result for review)".into(),
                ));
            }
            let fhe_gate = match s.fhe_gate {
                None => None,
                Some(g) => {
                    if !s.federated || s.privacy.is_some() {
                        return Err(err(
                            at("fhe_gate"),
                            "only federated scenes without DP gate under FHE".into(),
                        ));
                    }
                    if g.aggregator == g.key_holder
                        || !scene_nodes.contains(&g.aggregator)
                        || !scene_nodes.contains(&g.key_holder)
                    {
                        return Err(err(
                            at("fhe_gate"),
                            "aggregator and key_holder must be two different nodes of the scene"
                                .into(),
                        ));
                    }
                    Some(FheGate {
                        aggregator: g.aggregator,
                        key_holder: g.key_holder,
                    })
                }
            };
            let contribution = match s.contribution {
                None => None,
                Some(c) => {
                    let bad = |why: &str| err(at("contribution"), why.to_string());
                    if s.federated {
                        return Err(bad("a contribution scene is not a federated query scene"));
                    }
                    let kind = match (c.kind.as_str(), c.max, c.buckets) {
                        ("sum", Some(max), None) if (1..=(1u64 << 40)).contains(&max) => {
                            ContributionKind::Sum { max }
                        }
                        ("histogram", None, Some(b))
                            if (2..=1024).contains(&b.len())
                                && b.iter().collect::<BTreeSet<_>>().len() == b.len() =>
                        {
                            ContributionKind::Histogram { buckets: b }
                        }
                        _ => {
                            return Err(bad(
                                "expected kind = \"sum\" with max in 1..=2^40, or kind = \"histogram\" with 2..=1024 distinct buckets",
                            ));
                        }
                    };
                    let [a, b] = c.aggregators;
                    if a == b || !nodes.contains(&a) || !nodes.contains(&b) {
                        return Err(bad("aggregators must be two different nodes of the space"));
                    }
                    let min_batch = c.min_batch.unwrap_or(100);
                    if !(2..=10_000_000).contains(&min_batch) {
                        return Err(bad("min_batch must be 2..=10000000"));
                    }
                    if let Some(e) = c.epsilon
                        && !(e.is_finite() && (1e-3..=100.0).contains(&e))
                    {
                        return Err(bad("epsilon must be in 0.001..=100"));
                    }
                    Some(Contribution {
                        kind,
                        min_batch,
                        aggregators: [a, b],
                        epsilon: c.epsilon,
                    })
                }
            };
            let approvers = s.approvers.unwrap_or(1);
            if !(1..=2).contains(&approvers) {
                return Err(err(at("approvers"), "must be 1 or 2".into()));
            }
            let contract = match s.contract.as_deref() {
                None | Some("required") => ContractMode::Required,
                Some("none") => ContractMode::None,
                Some(other) => {
                    return Err(err(
                        at("contract"),
                        format!("{other:?}: expected \"required\" or \"none\""),
                    ));
                }
            };
            if contribution.is_some() && contract == ContractMode::Required {
                return Err(err(
                    at("contract"),
                    "a contribution scene releases only batch totals: set contract = \"none\""
                        .into(),
                ));
            }
            let [from, to] = s.valid;
            for (f, v) in [("valid[0]", &from), ("valid[1]", &to)] {
                if !valid_date(v) {
                    return Err(err(at(f), format!("{v:?} is not a date YYYY-MM-DD")));
                }
            }
            if from > to {
                return Err(err(at("valid"), "the start is after the end".into()));
            }
            let raw_out = s.output.unwrap_or(RawOutput {
                min_persons: None,
                round_to: None,
                decimals: None,
                dominance: None,
            });
            let min_persons = raw_out.min_persons.unwrap_or(10);
            if min_persons < 2 {
                return Err(err(at("output.min_persons"), "must be at least 2".into()));
            }
            let round_to = raw_out.round_to.unwrap_or(1);
            if round_to == 0 || round_to > 1000 {
                return Err(err(at("output.round_to"), "must be 1..=1000".into()));
            }
            let decimals = raw_out.decimals.unwrap_or(2);
            if decimals > 6 {
                return Err(err(at("output.decimals"), "must be 0..=6".into()));
            }
            let dominance = match raw_out.dominance {
                None => None,
                Some((n, k)) => {
                    if !((1..=3).contains(&n) && k > 0.0 && k <= 1.0) {
                        return Err(err(
                            at("output.dominance"),
                            "expected [n, k] with n in 1..=3 and 0 < k <= 1".into(),
                        ));
                    }
                    Some(Dominance { n, k })
                }
            };
            let privacy = match s.privacy {
                None => None,
                Some(p) => {
                    let delta = p.delta.unwrap_or(0.0);
                    let ok = p.epsilon_total.is_finite()
                        && p.epsilon_total > 0.0
                        && p.epsilon_total <= 100.0
                        && p.epsilon_per_query.is_finite()
                        && p.epsilon_per_query >= 1e-4
                        && p.epsilon_per_query <= p.epsilon_total
                        && (0.0..1e-3).contains(&delta);
                    if !ok {
                        return Err(err(
                            at("privacy"),
                            "need 0.0001 <= epsilon_per_query <= epsilon_total <= 100 and 0 <= delta < 0.001"
                                .into(),
                        ));
                    }
                    let rows_per_person = p.rows_per_person.unwrap_or(1);
                    let groups_per_person = p.groups_per_person.unwrap_or(1);
                    if !(1..=100).contains(&rows_per_person)
                        || !(1..=1000).contains(&groups_per_person)
                    {
                        return Err(err(
                            at("privacy"),
                            "need rows_per_person in 1..=100 and groups_per_person in 1..=1000"
                                .into(),
                        ));
                    }
                    if dominance.is_some() {
                        return Err(err(
                            at("output.dominance"),
                            "the dominance rule does not apply in DP mode (contributions are bounded and noised); remove it"
                                .into(),
                        ));
                    }
                    Some(PrivacyRules {
                        epsilon_total: p.epsilon_total,
                        epsilon_per_query: p.epsilon_per_query,
                        delta,
                        rows_per_person,
                        groups_per_person,
                    })
                }
            };
            let udfs: Vec<String> = s.udfs.iter().map(|u| u.to_ascii_lowercase()).collect();
            for u in &udfs {
                let ok = u
                    .strip_prefix("sha256:")
                    .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
                if !ok {
                    return Err(err(
                        at("udfs"),
                        format!("{u:?} is not sha256:<64 hex digits>"),
                    ));
                }
            }
            let udf_limits = kexin_sandbox::Limits::default()
                .call_limits(&s.udf_limits.unwrap_or_default())
                .map_err(|e| err(at("udf_limits"), e.to_string()))?;
            scenes.insert(
                sname.clone(),
                Scene {
                    name: sname,
                    purpose: s.purpose,
                    disease: s.disease,
                    purpose_code,
                    purpose_zh: s.purpose_zh,
                    non_profit: s.non_profit,
                    irb: s.irb,
                    requester: s.requester,
                    datasets: s.datasets,
                    columns,
                    consent,
                    valid_from: from,
                    valid_to: to,
                    release,
                    approvers,
                    contract,
                    federated: s.federated,
                    nodes: scene_nodes,
                    fhe_gate,
                    contribution,
                    output: OutputRules {
                        min_persons,
                        round_to,
                        decimals,
                        dominance,
                    },
                    privacy,
                    udfs,
                    udf_limits,
                },
            );
        }
        Ok(scenes)
    }

    /// `[privacy]`: the budget per requester organisation.
    fn privacy(&self, raw: Option<RawSpacePrivacy>) -> Result<Option<f64>> {
        let err = |field: String, reason: String| Error::config(self.file, field, reason);
        let epsilon_per_requester = match raw {
            None => None,
            Some(p)
                if p.epsilon_per_requester.is_finite()
                    && (1e-4..=100.0).contains(&p.epsilon_per_requester) =>
            {
                Some(p.epsilon_per_requester)
            }
            Some(_) => {
                return Err(err(
                    "privacy.epsilon_per_requester".into(),
                    "must be 0.0001..=100".into(),
                ));
            }
        };
        Ok(epsilon_per_requester)
    }
}

// ---------------------------------------------------------------- loading

impl Space {
    /// Load `DIR/space.toml`.
    pub fn load(dir: &Path) -> Result<Space> {
        let path = dir.join("space.toml");
        let file = path.display().to_string();
        let bytes = std::fs::read(&path)
            .map_err(|e| Error::config(&file, "(file)", format!("cannot read: {e}")))?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| Error::config(&file, "(file)", "not valid UTF-8"))?;
        Self::parse(dir, &file, text, Sha256::digest(&bytes).into())
    }

    /// Parse and validate policy text. `file` is only used in error messages.
    pub fn parse(dir: &Path, file: &str, text: &str, policy_digest: [u8; 32]) -> Result<Space> {
        let raw: RawSpaceFile = toml::from_str(text).map_err(|e| {
            let field = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].lines().count().max(1);
                    format!("line {line}")
                })
                .unwrap_or_else(|| "(document)".into());
            Error::config(file, field, e.message().to_string())
        })?;
        let err = |field: String, reason: String| Error::config(file, field, reason);
        let sections = Sections { file };
        let name = sections.space(&raw.space)?;
        let limits = sections.limits(raw.limits)?;
        let members = sections.members(raw.member, &raw.space.nodes)?;
        let datasets = sections.datasets(raw.dataset)?;
        let scenes = sections.scenes(raw.scene, &datasets, &raw.space.nodes)?;
        let operator_key = match &raw.space.operator_key {
            None => None,
            Some(k) => Some(crate::identity::parse_public_key(k).ok_or_else(|| {
                err(
                    "space.operator_key".into(),
                    "expected a hex-encoded ed25519 public key".into(),
                )
            })?),
        };
        let jurisdiction = raw.space.jurisdiction.unwrap_or_else(|| "CN".into());
        if !iso3166(&jurisdiction) {
            return Err(err(
                "space.jurisdiction".into(),
                "expected a two-letter ISO 3166 code such as CN".into(),
            ));
        }
        for d in &raw.space.export_negative_list {
            if !datasets.contains_key(d) {
                return Err(err(
                    "space.export_negative_list".into(),
                    format!("{d:?} is not a dataset"),
                ));
            }
        }
        let epsilon_per_requester = sections.privacy(raw.privacy)?;
        exact_beside_dp(&scenes, &datasets).map_err(|(f, r)| err(f, r))?;
        Ok(Space {
            dir: dir.to_path_buf(),
            name,
            operator_key,
            epsilon_per_requester,
            jurisdiction,
            export_negative_list: raw.space.export_negative_list,
            nodes: raw.space.nodes,
            datasets,
            scenes,
            members,
            limits,
            policy_digest,
        })
    }

    pub fn default_node(&self) -> &str {
        // `parse` guarantees at least one node.
        self.nodes.first().map(String::as_str).unwrap_or("h1")
    }
}

/// A requester with a DP scene may not also hold an exact scene over any
/// of the same columns: the exact answers would return what the DP
/// scene's budget protects. (The person key does not count: it is never
/// released.) Returns the field and reason of the first conflict.
fn exact_beside_dp(
    scenes: &BTreeMap<String, Scene>,
    datasets: &BTreeMap<String, Dataset>,
) -> std::result::Result<(), (String, String)> {
    let visible = |s: &Scene| -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for d in s.datasets.iter().filter_map(|d| datasets.get(d)) {
            for c in d.columns.keys() {
                if *c != d.person_key && s.column_visible(d, c) {
                    out.insert(format!("{}.{c}", d.name));
                }
            }
        }
        out
    };
    for dp in scenes.values().filter(|s| s.privacy.is_some()) {
        let protected = visible(dp);
        for exact in scenes
            .values()
            .filter(|s| s.privacy.is_none() && s.requester == dp.requester)
        {
            let exact_columns = visible(exact);
            let shared: Vec<&str> = exact_columns
                .intersection(&protected)
                .map(String::as_str)
                .take(3)
                .collect();
            if !shared.is_empty() {
                return Err((
                    format!("scene.{}", exact.name),
                    format!(
                        "requester {} also has the DP scene {} over the same columns ({}): exact answers here would return what that scene's privacy budget protects; give the scenes different requesters or disjoint columns",
                        exact.requester,
                        dp.name,
                        shared.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn iso3166(s: &str) -> bool {
    s.len() == 2 && s.bytes().all(|b| b.is_ascii_uppercase())
}

fn valid_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let num = |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<u32>().ok());
    matches!((num(0..4), num(5..7), num(8..10)), (Some(_), Some(m), Some(d)) if (1..=12).contains(&m) && (1..=31).contains(&d))
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
