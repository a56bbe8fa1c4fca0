//! The shapes `space.toml` is read into (`deny_unknown_fields`
//! everywhere), before [`super::load`] checks them section by section.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSpaceFile {
    pub(super) space: RawSpace,
    #[serde(default)]
    pub(super) limits: Option<RawLimits>,
    #[serde(default)]
    pub(super) member: BTreeMap<String, RawMember>,
    #[serde(default)]
    pub(super) dataset: BTreeMap<String, RawDataset>,
    #[serde(default)]
    pub(super) scene: BTreeMap<String, RawScene>,
    #[serde(default)]
    pub(super) privacy: Option<RawSpacePrivacy>,
}

/// `[privacy]`: what one requester organisation may spend in all.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSpacePrivacy {
    pub(super) epsilon_per_requester: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSpace {
    pub(super) name: String,
    pub(super) nodes: Vec<String>,
    pub(super) operator_key: Option<String>,
    pub(super) jurisdiction: Option<String>,
    #[serde(default)]
    pub(super) export_negative_list: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) max_sql_bytes: Option<usize>,
    pub(super) max_sql_depth: Option<usize>,
    pub(super) max_expr_depth: Option<usize>,
    pub(super) timeout_seconds: Option<u64>,
    pub(super) memory_mb: Option<usize>,
    pub(super) response_quantum_ms: Option<u64>,
    pub(super) queries_per_minute: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMember {
    pub(super) role: String,
    pub(super) org: String,
    #[serde(default)]
    pub(super) nodes: Vec<String>,
    pub(super) jurisdiction: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDataset {
    pub(super) source: String,
    pub(super) person_key: String,
    pub(super) person_key_scheme: Option<String>,
    #[serde(default)]
    pub(super) one_row_per_person: bool,
    pub(super) columns: BTreeMap<String, RawColumn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawColumn {
    pub(super) grade: u8,
    pub(super) kind: Option<ColumnKind>,
    #[serde(rename = "type")]
    pub(super) value_type: Option<String>,
    pub(super) mask: Option<String>,
    pub(super) bounds: Option<[f64; 2]>,
    pub(super) domain: Option<Vec<PublicValue>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScene {
    pub(super) purpose: String,
    pub(super) disease: Option<String>,
    pub(super) purpose_zh: Option<String>,
    #[serde(default)]
    pub(super) non_profit: bool,
    pub(super) irb: Option<String>,
    pub(super) requester: String,
    pub(super) datasets: Vec<String>,
    pub(super) columns: Option<Vec<String>>,
    pub(super) consent: Option<String>,
    pub(super) valid: [String; 2],
    pub(super) release: Option<String>,
    pub(super) approvers: Option<u8>,
    pub(super) contract: Option<String>,
    #[serde(default)]
    pub(super) federated: bool,
    pub(super) nodes: Option<Vec<String>>,
    pub(super) fhe_gate: Option<RawFheGate>,
    pub(super) contribution: Option<RawContribution>,
    pub(super) output: Option<RawOutput>,
    pub(super) privacy: Option<RawPrivacy>,
    #[serde(default)]
    pub(super) udfs: Vec<String>,
    pub(super) udf_limits: Option<kexin_sandbox::CallLimitsOverride>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFheGate {
    pub(super) aggregator: String,
    pub(super) key_holder: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawContribution {
    pub(super) kind: String,
    pub(super) max: Option<u64>,
    pub(super) buckets: Option<Vec<String>>,
    pub(super) min_batch: Option<usize>,
    pub(super) aggregators: [String; 2],
    pub(super) epsilon: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutput {
    pub(super) min_persons: Option<u64>,
    pub(super) round_to: Option<u64>,
    pub(super) decimals: Option<u32>,
    pub(super) dominance: Option<(usize, f64)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPrivacy {
    pub(super) epsilon_total: f64,
    pub(super) epsilon_per_query: f64,
    pub(super) delta: Option<f64>,
    pub(super) rows_per_person: Option<u32>,
    pub(super) groups_per_person: Option<u32>,
}
