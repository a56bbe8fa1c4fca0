//! One node: a hospital's data, its policy and state, and the researcher's
//! query path (the steps of `docs/query-path.md`).
//!
//! [`Node::query`] never returns an error: every failure becomes a refusal
//! with a fixed code, and every decision — released or refused — is written
//! to the audit log, durably, before the caller sees the result.
//!
//! This file opens a node; its services are child modules, each an
//! `impl Node` block: `query.rs` (the query path), `session.rs` (the one
//! session builder), `dp_mode.rs`, `udfs.rs` (UDF administration),
//! `contracts.rs`, `airlock.rs`, `contributions.rs`, `joint.rs` (its side
//! of joint computations), `budget.rs` and `witness.rs`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::optimizer::analyzer::type_coercion::TypeCoercion;
use datafusion::optimizer::{Analyzer, AnalyzerRule};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::audit::{AuditEntry, Decision, Kind};
use crate::disclosure::Checker;
use crate::dp;
use crate::error::{Code, Error, Refusal, Result};
use crate::gate::{self, Cell};
use crate::identity::{QueryBody, Role, Signed, tag};
use crate::mask::ColumnMask;
use crate::policy::{ConsentMode, ContractMode, Dataset, PrivacyRules, Release, Scene, Space};
use crate::rewrite::{Harden, PolicyRewrite, TableRewrite, harden};
use crate::store::{NodeKeys, Store, UdfApproval, now_utc};
use crate::udf::{QueryUdfs, UdfHost, fault_refusal, find_fault};

// The node's services, as child modules (they see its private fields).
mod accounting;
mod airlock;
mod budget;
mod contracts;
mod contributions;
pub mod data;
mod disputes;
mod dp_mode;
mod joint;
mod query;
mod session;
mod udfs;
mod witness;

pub use joint::JointTrace;
pub use udfs::{ListedUdf, Registration, Submission};

/// A researcher's request.
#[derive(Debug, Clone)]
pub struct QueryRequest {
    pub scene: String,
    pub actor: String,
    pub sql: String,
    /// The contract the query runs under. `None`: the requester's active
    /// contract for the scene on this node, when there is exactly one.
    pub contract: Option<String>,
}

impl QueryRequest {
    pub fn new(scene: &str, actor: &str, sql: &str) -> Self {
        QueryRequest {
            scene: scene.into(),
            actor: actor.into(),
            sql: sql.into(),
            contract: None,
        }
    }
}

/// The decision on a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Released,
    Refused,
    Held,
}

/// What the researcher gets back. The JSON shape is a contract.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub status: Status,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
    pub suppressed_groups: usize,
    pub code: Option<Code>,
    pub rule: Option<String>,
    pub audit_seq: Option<u64>,
    /// Human-readable notes: what was suppressed and why, the rules applied.
    pub explanation: Vec<String>,
    /// The signed checkpoint covering this decision's audit entry.
    pub checkpoint: Option<String>,
    /// DP scenes: budget and per-cell accuracy. Absent elsewhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dp: Option<DpReport>,
    /// Held results: the airlock entry to fetch once a data holder approves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub airlock: Option<u64>,
    /// The contract the query ran under (absent for scenes without one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contract: Option<String>,
    /// Computed on a mock twin's synthetic data (`kexin query --twin`),
    /// never on a person's records: nothing charged, nothing audited.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mock: bool,
}

/// What a DP release adds to the outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DpReport {
    /// ε this query charged (0 for a repeat answered from the cache).
    pub epsilon_charged: f64,
    pub epsilon_spent: f64,
    pub epsilon_remaining: f64,
    pub epsilon_total: f64,
    /// δ this query spent on partition selection (0 for public-domain keys).
    pub delta: f64,
    pub rows_per_person: u32,
    pub groups_per_person: u32,
    /// The audit entry that first released this answer, for a repeat.
    pub repeat_of: Option<u64>,
    /// Per released row and column: the noise scale and 95% interval of
    /// each aggregate (null for group keys).
    pub accuracy: Vec<Vec<Option<dp::Accuracy>>>,
}

/// What a query run leaves for its audit record.
#[derive(Debug, Default)]
pub(crate) struct Trace {
    /// Digests of the UDF modules the query calls.
    pub(crate) called: Vec<String>,
    /// DP: ε charged, the answer this repeats, the answer to cache.
    pub(crate) epsilon: Option<f64>,
    pub(crate) repeat_of: Option<u64>,
    pub(crate) cache: Option<(String, String)>,
    /// The contract taken for this query.
    pub(crate) contract: Option<String>,
    /// Consent scenes: the snapshot the query used (sequence, set digest).
    pub(crate) consent: Option<(u64, String)>,
    /// The result goes to the airlock instead of the researcher.
    pub(crate) hold: bool,
    /// Execution failed after admission (a limit, a UDF fault, an error
    /// the hardening did not foresee). Such a failure can depend on the
    /// data, so the researcher gets the answer of a query whose every cell
    /// was withheld; the cause goes to the audit entry only.
    pub(crate) withheld: Option<Refusal>,
    /// What this node's data contributed to a result that passed the gate.
    pub(crate) contribution: Option<crate::accounting::Contribution>,
    /// Joint computations: this node's own contribution to each cell of
    /// the plan (before any noise), to sum over the released cells.
    pub(crate) joint_cells: Vec<crate::accounting::Contribution>,
}

/// What [`Node::admit`] hands to execution.
pub(crate) struct Admitted<'a> {
    pub scene: &'a Scene,
    pub contract: Option<crate::contract::Contract>,
    pub udfs: QueryUdfs,
    pub state: datafusion::execution::SessionState,
    /// The checked, hardened and policy-rewritten plan.
    pub plan: datafusion::logical_expr::LogicalPlan,
    pub analysis: crate::disclosure::Analysis,
}

impl Outcome {
    fn refused(r: Refusal) -> Self {
        Outcome::refusal(r.code, r.rule.to_string(), None)
    }

    /// A refusal with its fixed code and rule, as a client shows one it
    /// received (`audit_seq`: the entry that recorded it, if any).
    pub fn refusal(code: Code, rule: String, audit_seq: Option<u64>) -> Self {
        Outcome {
            status: Status::Refused,
            columns: vec![],
            rows: vec![],
            suppressed_groups: 0,
            code: Some(code),
            rule: Some(rule),
            audit_seq,
            explanation: vec![],
            checkpoint: None,
            dp: None,
            airlock: None,
            contract: None,
            mock: false,
        }
    }

    /// The released rows as one Arrow batch, its columns named as
    /// released, each in the type its cells have (integers; floats when
    /// any cell is one; booleans; text; a column with no value at all is
    /// text), every column nullable. Only released values decide it.
    pub fn to_batch(&self) -> Result<datafusion::arrow::record_batch::RecordBatch> {
        use datafusion::arrow::datatypes::Field;
        let types = vec![DataType::Utf8; self.columns.len()];
        let b = gate::cells_batch(&self.rows, &types, false)?;
        let fields: Vec<Field> = b
            .schema()
            .fields()
            .iter()
            .zip(&self.columns)
            .map(|(f, name)| Field::new(name, f.data_type().clone(), true))
            .collect();
        datafusion::arrow::record_batch::RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            b.columns().to_vec(),
        )
        .map_err(Error::internal)
    }

    /// 0 released, 1 held, otherwise the refusal code's exit status.
    pub fn exit_status(&self) -> i32 {
        match self.status {
            Status::Released => 0,
            Status::Held => 1,
            Status::Refused => self
                .code
                .map_or(Code::Internal.exit_status(), Code::exit_status),
        }
    }
}

/// An open node.
#[derive(Debug)]
pub struct Node {
    pub(crate) space: Arc<Space>,
    pub(crate) name: String,
    dir: PathBuf,
    pub(crate) keys: NodeKeys,
    pub(crate) store: Mutex<Store>,
    /// Per dataset: the data file's URL, schema and load record.
    tables: HashMap<String, Table>,
    /// The wasmtime sandbox and compiled-module cache for approved UDFs.
    udfs: UdfHost,
    /// The space's other nodes, which accept every DP charge first.
    pub(crate) peers: std::sync::OnceLock<Arc<dyn crate::ledger::PeerLedger>>,
    /// The last consent set read per scene, with what it was read at
    /// (registry version, date, bindings): a query reuses it while none of
    /// them changed, so a grant or revocation takes effect at the next
    /// query and unchanged grants are not read and matched again.
    pub(crate) consent_sets:
        Mutex<HashMap<String, (ConsentKey, crate::consent::ConsentSet, String)>>,
    /// A mock twin (`kexin twin`): its data is synthetic, its queries
    /// charge no budget, hold nothing for review and write no audit entry.
    pub(crate) mock: bool,
}

/// What a consent set was read at: the registry's version, the query's
/// date, and the node's last person binding.
pub(crate) type ConsentKey = ((u64, u64), String, u64);

/// One dataset as the node reads it.
#[derive(Debug)]
pub(crate) struct Table {
    pub(crate) url: ListingTableUrl,
    /// The file's schema as DataFusion reads it.
    pub(crate) schema: SchemaRef,
    /// Loaded with `kexin dataset add`: the node's copy, with a person
    /// ordinal per row, and its SHA-256. `None`: read from the declared
    /// source as it is (persons are then told apart by their key's text).
    pub(crate) sha256: Option<String>,
}

/// The first multiple of `quantum` at or after `elapsed` (at least one
/// quantum); `elapsed` itself when padding is off.
pub fn padded(elapsed: Duration, quantum: Duration) -> Duration {
    if quantum.is_zero() {
        return elapsed;
    }
    let q = quantum.as_nanos();
    let n = elapsed.as_nanos().div_ceil(q).max(1);
    let nanos = n.saturating_mul(q);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

pub(crate) fn refusal(code: Code, rule: &'static str) -> Error {
    Error::refused(code, rule)
}

impl Node {
    /// Open node `name` of `space`: keys, state database, data schemas. Checks
    /// every column policy against the data file's types.
    pub async fn open(space: Arc<Space>, name: &str) -> Result<Node> {
        if !space.nodes.iter().any(|n| n == name) {
            return Err(Error::config(
                "space.toml",
                "space.nodes",
                format!("no node named {name:?}"),
            ));
        }
        let dir = space.dir.join(name);
        let origin = format!("kexin/{}/{}", space.name, name);
        let keys = NodeKeys::load_or_create(&dir, &origin)?;
        let store = Store::open(&dir, &origin)?;
        // Only used to read the data files' schemas; no query runs here.
        #[allow(
            clippy::disallowed_methods,
            reason = "schema discovery only: no researcher SQL runs in this context, it never reaches the session builder"
        )]
        let ctx = SessionContext::new();
        let mut tables = HashMap::new();
        let loads = data::records(&store)?;
        if let Some(missing) = space
            .datasets
            .keys()
            .find(|d| !loads.is_empty() && !loads.contains_key(*d))
        {
            // Persons are told apart by ordinal in loaded datasets and by
            // key text in others: one query over both would mix the two.
            return Err(Error::config(
                "space.toml",
                format!("dataset.{missing}"),
                format!(
                    "node {name} has loaded datasets but not this one; load it with `kexin dataset add --node {name} --dataset {missing}`"
                ),
            ));
        }
        for ds in space.datasets.values() {
            let loaded = loads.get(&ds.name);
            let path = match loaded {
                Some(_) => data::copy_path(&dir, &ds.name),
                None => ds.source_for(&space.dir, name),
            };
            let field = |f: &str| format!("dataset.{}.{f}", ds.name);
            if let Some(Err((field, why))) = loaded.map(|l| l.matches(ds)) {
                return Err(Error::config(
                    "space.toml",
                    field,
                    format!(
                        "{why} on node {name}; load it again with `kexin dataset add --node {name} --dataset {}`",
                        ds.name
                    ),
                ));
            }
            if let Some(l) = loaded
                && (!path.is_file() || data::file_sha256(&path)? != l.sha256)
            {
                return Err(Error::Verify(format!(
                    "node {name}'s copy of dataset {} does not match the digest its load recorded; load it again with `kexin dataset add`",
                    ds.name
                )));
            }
            if !path.is_file() {
                return Err(Error::config(
                    "space.toml",
                    field("source"),
                    format!("{} does not exist", path.display()),
                ));
            }
            let url = ListingTableUrl::parse(path.to_string_lossy())
                .map_err(|_| Error::config("space.toml", field("source"), "not a usable path"))?;
            let schema = listing_options()
                .infer_schema(&ctx.state(), &url)
                .await
                .map_err(|_| {
                    Error::config("space.toml", field("source"), "not a readable Parquet file")
                })?;
            for c in ds.columns.values() {
                let f = schema.field_with_name(&c.name).map_err(|_| {
                    Error::config(
                        "space.toml",
                        format!("dataset.{}.columns.{}", ds.name, c.name),
                        "not in the data file",
                    )
                })?;
                if let Some(d) = &c.domain {
                    let ints = matches!(d.first(), Some(crate::policy::PublicValue::Int(_)));
                    let t = f.data_type();
                    let ok = if ints {
                        t.is_integer()
                    } else {
                        matches!(t, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8)
                    };
                    if !ok {
                        return Err(Error::config(
                            "space.toml",
                            format!("dataset.{}.columns.{}.domain", ds.name, c.name),
                            "integer domains need an integer column, string domains a string column",
                        ));
                    }
                }
                c.mask
                    .check_type(f.data_type(), c.bounds.is_some())
                    .map_err(|reason| {
                        Error::config(
                            "space.toml",
                            format!("dataset.{}.columns.{}", ds.name, c.name),
                            reason,
                        )
                    })?;
            }
            if loaded.is_some()
                && schema
                    .field_with_name(crate::policy::ORDINAL_COLUMN)
                    .is_err()
            {
                return Err(Error::Verify(format!(
                    "node {name}'s copy of dataset {} has no person ordinals",
                    ds.name
                )));
            }
            tables.insert(
                ds.name.clone(),
                Table {
                    url,
                    schema,
                    sha256: loaded.map(|l| l.sha256.clone()),
                },
            );
        }
        Ok(Node {
            space,
            name: name.to_string(),
            dir,
            keys,
            store: Mutex::new(store),
            tables,
            udfs: UdfHost::new(kexin_sandbox::Limits::default())?,
            peers: std::sync::OnceLock::new(),
            consent_sets: Mutex::new(HashMap::new()),
            mock: false,
        })
    }

    /// Open the node of a mock twin (`kexin twin` wrote its space and
    /// data): queries run the same admission, rewrite, UDFs and gate, but
    /// their outcomes are marked mock, charge no budget, are never held
    /// for review and write no audit entry.
    pub async fn open_twin(space: Arc<Space>, name: &str) -> Result<Node> {
        let mut node = Node::open(space, name).await?;
        node.mock = true;
        Ok(node)
    }

    /// Whether this is a mock twin's node.
    pub fn is_twin(&self) -> bool {
        self.mock
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The space this node belongs to.
    pub fn space(&self) -> &Space {
        &self.space
    }

    /// Dataset → SHA-256 of the node's copy, for the loaded datasets
    /// `scene` reads (what its audit entries bind).
    pub(crate) fn data_digests(&self, scene: &str) -> BTreeMap<String, String> {
        let Some(sc) = self.space.scenes.get(scene) else {
            return BTreeMap::new();
        };
        sc.datasets
            .iter()
            .filter_map(|d| {
                let t = self.tables.get(d)?;
                Some((d.clone(), t.sha256.clone()?))
            })
            .collect()
    }

    /// Whether the node's datasets are loaded copies with person ordinals.
    pub(crate) fn ordinals(&self) -> bool {
        self.tables.values().any(|t| t.sha256.is_some())
    }

    pub(crate) fn store_lock(&self) -> Result<std::sync::MutexGuard<'_, Store>> {
        self.store
            .lock()
            .map_err(|_| Error::internal("state store lock poisoned"))
    }
}

/// Whether `name` is one of DataFusion's own scalar or aggregate functions.
fn builtin_function(state: &datafusion::execution::SessionState, name: &str) -> bool {
    state.scalar_functions().contains_key(name)
        || state.aggregate_functions().contains_key(name)
        || state.window_functions().contains_key(name)
}

/// Digests of the UDF modules whose functions `plan` calls.
fn called_modules(plan: &datafusion::logical_expr::LogicalPlan, udfs: &QueryUdfs) -> Vec<String> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::logical_expr::Expr;
    let mut out = std::collections::BTreeSet::new();
    let _ = plan.apply_with_subqueries(|node| {
        for e in node.expressions() {
            let _ = e.apply(|x| {
                let name = match x {
                    Expr::ScalarFunction(f) => Some(f.func.name()),
                    Expr::AggregateFunction(f) => Some(f.func.name()),
                    _ => None,
                };
                if let Some(d) = name.and_then(|n| udfs.digests.get(n)) {
                    out.insert(d.clone());
                }
                Ok(TreeNodeRecursion::Continue)
            });
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out.into_iter().collect()
}

/// Planning failures: a sandbox fault keeps its code, anything else is a
/// fixed refusal (DataFusion's text may name data).
fn plan_refusal(e: DataFusionError) -> Error {
    tracing::debug!(target: "kexin::node", "physical planning failed: {}", scrubbed(&e));
    match find_fault(&e) {
        Some(f) => Error::Refused(fault_refusal(f)),
        None => refusal(
            Code::SqlUnknown,
            "the query does not plan against the scene's schema",
        ),
    }
}

/// Whether any expression of `stmt` nests deeper than `limit`, counted on
/// the parsed SQL. The parser builds `a + a + … + a` in a loop, so its own
/// recursion limit never sees such a chain; everything after it (planning,
/// the checks, evaluation) recurses over it. The walk stops at the limit,
/// so it needs no more stack than `limit` levels itself.
fn expression_too_deep(stmt: &datafusion::sql::sqlparser::ast::Statement, limit: usize) -> bool {
    use datafusion::sql::sqlparser::ast::{Expr, Visit, Visitor};
    use std::ops::ControlFlow;
    struct Depth {
        now: usize,
        limit: usize,
    }
    impl Visitor for Depth {
        type Break = ();
        fn pre_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
            self.now += 1;
            if self.now > self.limit {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
        fn post_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
            self.now -= 1;
            ControlFlow::Continue(())
        }
    }
    stmt.visit(&mut Depth { now: 0, limit }).is_break()
}

/// What the operator log may say about a DataFusion error: its kind, never
/// its text (cast, overflow and parse errors quote cell values).
pub(crate) fn scrubbed(e: &DataFusionError) -> &'static str {
    if find_fault(e).is_some() {
        return "UDF fault";
    }
    match e.find_root() {
        DataFusionError::ArrowError(..) => "arrow error",
        DataFusionError::Plan(_) => "planning error",
        DataFusionError::SchemaError(..) => "schema error",
        DataFusionError::Execution(_) => "execution error",
        DataFusionError::ResourcesExhausted(_) => "resources exhausted",
        DataFusionError::NotImplemented(_) => "not implemented",
        DataFusionError::External(_) => "external error",
        _ => "other error",
    }
}

fn listing_options() -> ListingOptions {
    ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet")
}

/// Map an execution error to a fixed refusal. DataFusion's messages can quote
/// cell values (cast and overflow errors do), so none of it is kept. Sandbox
/// faults keep their fixed code.
fn exec_refusal(e: &DataFusionError) -> Error {
    if let Some(f) = find_fault(e) {
        return Error::Refused(fault_refusal(f));
    }
    match e.find_root() {
        DataFusionError::ResourcesExhausted(_) => refusal(
            Code::ExecLimit,
            "the query needs more memory than the node allows",
        ),
        _ => refusal(Code::Exec, "the query failed while running"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_leave_on_quantum_boundaries() {
        let q = Duration::from_millis(500);
        let ms = Duration::from_millis;
        // A fast and a slow answer within one quantum leave together.
        assert_eq!(padded(ms(3), q), ms(500));
        assert_eq!(padded(ms(499), q), ms(500));
        assert_eq!(padded(ms(500), q), ms(500));
        assert_eq!(padded(ms(501), q), ms(1000));
        assert_eq!(padded(Duration::ZERO, q), ms(500));
        // Off: no padding.
        assert_eq!(padded(ms(7), Duration::ZERO), ms(7));
        assert_eq!(padded(Duration::MAX, q), Duration::from_nanos(u64::MAX));
    }
}
