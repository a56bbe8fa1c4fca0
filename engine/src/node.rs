//! One node: a hospital's data, its policy and state, and the researcher's
//! query path (DESIGN.md steps 1–9).
//!
//! [`Node::query`] never returns an error: every failure becomes a refusal
//! with a fixed code, and every decision — released or refused — is written
//! to the audit log, durably, before the caller sees the result.

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
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::audit::{AuditEntry, Decision, Kind};
use crate::disclosure::Checker;
use crate::dp;
use crate::error::{Code, Error, Refusal, Result};
use crate::gate::{self, Cell};
use crate::identity::{QueryBody, Signed, tag};
use crate::mask::ColumnMask;
use crate::policy::{ConsentMode, ContractMode, Dataset, PrivacyRules, Release, Scene, Space};
use crate::rewrite::{Harden, PolicyRewrite, TableRewrite, harden};
use crate::store::{NodeKeys, Store, UdfApproval, now_utc};
use crate::udf::{QueryUdfs, UdfHost, fault_refusal, find_fault};

// The node's services, as child modules (they see its private fields).
mod budget;
mod contracts;
mod contributions;
mod joint;

pub use joint::JointTrace;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Released,
    Refused,
    Held,
}

/// What the researcher gets back. The JSON shape is a contract.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub status: Status,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
    pub suppressed_groups: usize,
    pub code: Option<Code>,
    pub rule: Option<&'static str>,
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
}

/// What a DP release adds to the outcome.
#[derive(Debug, Clone, Serialize)]
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
        Outcome {
            status: Status::Refused,
            columns: vec![],
            rows: vec![],
            suppressed_groups: 0,
            code: Some(r.code),
            rule: Some(r.rule),
            audit_seq: None,
            explanation: vec![],
            checkpoint: None,
            dp: None,
            airlock: None,
            contract: None,
        }
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
    /// Per dataset: the data file's schema (as DataFusion reads it) and URL.
    tables: HashMap<String, (ListingTableUrl, SchemaRef)>,
    /// The wasmtime sandbox and compiled-module cache for approved UDFs.
    udfs: UdfHost,
    /// The space's other nodes, which accept every DP charge first.
    pub(crate) peers: std::sync::OnceLock<Arc<dyn crate::ledger::PeerLedger>>,
}

/// The result of registering a UDF module on one node.
#[derive(Debug, Clone, Serialize)]
pub struct Registration {
    pub node: String,
    pub scene: String,
    pub digest: String,
    pub functions: Vec<kexin_sandbox::Function>,
    /// False when the module was already approved for the scene here.
    pub newly_approved: bool,
    pub audit_seq: u64,
}

/// One approved module as `kexin udf list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ListedUdf {
    pub node: String,
    pub scene: String,
    pub digest: String,
    /// `policy` (listed in space.toml) or `registered` (by a data holder).
    pub source: &'static str,
    pub approved_by: Option<String>,
    pub approved_at: Option<String>,
    pub functions: Vec<kexin_sandbox::Function>,
    /// Whether the module file is present and matches its digest.
    pub loadable: bool,
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
        for ds in space.datasets.values() {
            let path = ds.source_for(&space.dir, name);
            let field = |f: &str| format!("dataset.{}.{f}", ds.name);
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
            tables.insert(ds.name.clone(), (url, schema));
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
        })
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Run a researcher's query through the whole path. Never fails: errors
    /// become audited refusals.
    ///
    /// This entry point trusts `req.actor`: it is for callers that have
    /// authenticated the researcher themselves (embedding applications,
    /// tests). The command line and the node server call
    /// [`Node::query_signed`].
    ///
    /// The answer is held back until a multiple of the space's
    /// `limits.response_quantum_ms` after the call began: how long the
    /// work took is visible only in whole quanta.
    pub async fn query(&self, req: &QueryRequest) -> Outcome {
        let start = std::time::Instant::now();
        let mut trace = Trace::default();
        let result = self.run(req, &mut trace).await;
        let outcome = self.finish(req, result, trace);
        self.pad(start).await;
        outcome
    }

    /// Sleep until the next quantum boundary after `start`.
    async fn pad(&self, start: std::time::Instant) {
        let quantum = Duration::from_millis(self.space.limits.response_quantum_ms);
        let until = padded(start.elapsed(), quantum);
        tokio::time::sleep(until.saturating_sub(start.elapsed())).await;
    }

    /// Check a signed request — the member's certificate, the signature, the
    /// binding to this space, node and scene, the timestamp and the nonce —
    /// then run it. A request that fails the check is refused with
    /// `KX-AUTH`, and the refusal is audited too.
    pub async fn query_signed(&self, env: &Signed<QueryBody>) -> Outcome {
        let b = &env.body;
        let req = QueryRequest {
            scene: b.scene.clone(),
            actor: b.member.clone(),
            sql: b.sql.clone(),
            contract: b.contract.clone(),
        };
        let start = std::time::Instant::now();
        match self.authenticate(env) {
            Ok(()) => self.query(&req).await,
            Err(e) => {
                let outcome = self.finish(&req, Err(e), Trace::default());
                self.pad(start).await;
                outcome
            }
        }
    }

    fn authenticate(&self, env: &Signed<QueryBody>) -> Result<()> {
        let b = &env.body;
        if b.space != self.space.name || b.node != self.name {
            return Err(refusal(
                Code::Auth,
                "the request is bound to another space or node",
            ));
        }
        let (key, cert) = crate::registry::View::open(&self.space)
            .map_err(|_| refusal(Code::Auth, "the identity registry is unavailable"))?
            .member_key(&b.member)?;
        env.verify(tag::QUERY, &key, Code::Auth)?;
        if cert.body.role != "researcher" {
            return Err(refusal(Code::Auth, "only researchers submit queries"));
        }
        crate::identity::fresh(&b.time)?;
        self.store_lock()?.take_nonce(&b.member, &b.nonce, &b.time)
    }

    pub(crate) fn store_lock(&self) -> Result<std::sync::MutexGuard<'_, Store>> {
        self.store
            .lock()
            .map_err(|_| Error::internal("state store lock poisoned"))
    }

    /// Audit the decision (durably, before anything is released) and shape
    /// the outcome; a held result goes to the airlock in the same
    /// transaction.
    fn finish(
        &self,
        req: &QueryRequest,
        result: Result<(Outcome, String)>,
        trace: Trace,
    ) -> Outcome {
        let sql_digest = hex::encode(Sha256::digest(req.sql.as_bytes()));
        let (mut outcome, plan_digest) = match result {
            Ok((o, p)) => (o, Some(p)),
            Err(e) => {
                if let Error::Internal(detail) = &e {
                    // Operator log only; the researcher sees a fixed code.
                    // Internal texts are kexin's own (never DataFusion's,
                    // which can quote cell values: see `scrubbed`).
                    tracing::error!(target: "kexin::node", "internal error: {detail}");
                }
                (Outcome::refused(e.as_refusal()), None)
            }
        };
        outcome.contract = trace.contract.clone();
        // A held result is stored as the exact bytes a release will return;
        // the audit log records their digest.
        let held = (trace.hold && outcome.status == Status::Released)
            .then(|| serde_json::to_string(&outcome).unwrap_or_default());
        let output_digest = match &held {
            Some(bytes) => Some(hex::encode(Sha256::digest(bytes.as_bytes()))),
            None => (outcome.status == Status::Released).then(|| {
                let bytes =
                    serde_json::to_vec(&(&outcome.columns, &outcome.rows)).unwrap_or_default();
                hex::encode(Sha256::digest(bytes))
            }),
        };
        if held.is_some() {
            // Nothing of the result leaves until data holders approve it.
            outcome = Outcome {
                status: Status::Held,
                columns: vec![],
                rows: vec![],
                suppressed_groups: 0,
                code: None,
                rule: None,
                audit_seq: None,
                explanation: vec![
                    "the result passed the gate and is held for review by the data holder; fetch it with `kexin airlock show` once approved".into(),
                ],
                checkpoint: None,
                dp: None,
                airlock: None,
                contract: outcome.contract,
            };
        }
        let entry = AuditEntry {
            seq: 0,
            time: now_utc().1,
            node: self.name.clone(),
            actor: req.actor.clone(),
            scene: req.scene.clone(),
            kind: Kind::Query.as_str().into(),
            decision: match outcome.status {
                Status::Released => Decision::Released,
                Status::Refused => Decision::Refused,
                Status::Held => Decision::Held,
            }
            .as_str()
            .into(),
            code: outcome
                .code
                .or(trace.withheld.map(|w| w.code))
                .map(|c| c.as_str().to_string()),
            rule: outcome
                .rule
                .or(trace.withheld.map(|w| w.rule))
                .map(str::to_string),
            sql_sha256: Some(sql_digest),
            plan_sha256: plan_digest,
            policy_sha256: hex::encode(self.space.policy_digest),
            output_sha256: output_digest.clone(),
            rows_released: outcome.rows.len() as u64,
            suppressed_groups: outcome.suppressed_groups as u64,
            udfs: trace.called,
            epsilon: trace.epsilon,
            repeat_of: trace.repeat_of,
            contract: trace.contract.clone(),
            consent_seq: trace.consent.as_ref().map(|c| c.0),
            consent_sha256: trace.consent.as_ref().map(|c| c.1.clone()),
            session: None,
            charged_by: None,
        };
        // A new DP answer is cached in the same transaction as its audit
        // record, so a repeat finds it as soon as it is released.
        let cache = trace
            .cache
            .filter(|_| outcome.status == Status::Released)
            .map(|(digest, stored)| (req.actor.clone(), req.scene.clone(), digest, stored));
        // The audit record is durable before anything is released.
        let mut airlock_id = None;
        let appended = match self.store.lock() {
            Ok(mut store) => store.append_with(entry, &self.keys, |tx, seq| {
                if let Some((actor, scene, digest, stored)) = &cache {
                    tx.execute(
                        "INSERT OR IGNORE INTO dp_release (actor, scene, digest, result, audit_seq)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                        rusqlite::params![actor, scene, digest, stored, seq as i64],
                    )?;
                }
                if let (Some(bytes), Some(digest)) = (&held, &output_digest) {
                    tx.execute(
                        "INSERT INTO airlock (scene, actor, contract, result, digest, state,
                           approvals, held_seq, created_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, 'held', '[]', ?6, ?7)",
                        rusqlite::params![
                            req.scene,
                            req.actor,
                            trace.contract,
                            bytes,
                            digest,
                            seq as i64,
                            now_utc().1
                        ],
                    )?;
                    airlock_id = Some(tx.last_insert_rowid() as u64);
                }
                Ok(())
            }),
            Err(_) => Err(Error::internal("state store lock poisoned")),
        };
        match appended {
            Ok((seq, note)) => {
                outcome.audit_seq = Some(seq);
                outcome.checkpoint = Some(note);
                outcome.airlock = airlock_id;
                outcome
            }
            Err(e) => {
                tracing::error!(target: "kexin::node", "audit append failed: {e}");
                Outcome::refused(Refusal::new(
                    Code::Internal,
                    "the audit log could not be written; nothing released",
                ))
            }
        }
    }

    /// Every module approved for `scene` on this node: the policy's digests
    /// and the data holder's registrations, each loaded from the content
    /// store and checked against its digest.
    fn scene_modules(&self, scene: &Scene) -> Result<Vec<kexin_sandbox::Module>> {
        let mut digests: Vec<String> = scene.udfs.clone();
        for a in self.approvals(Some(&scene.name))? {
            if !digests.contains(&a.digest) {
                digests.push(a.digest);
            }
        }
        digests
            .iter()
            .map(|d| self.udfs.load_approved(&self.space.dir, d))
            .collect()
    }

    fn approvals(&self, scene: Option<&str>) -> Result<Vec<UdfApproval>> {
        self.store
            .lock()
            .map_err(|_| Error::internal("state store lock poisoned"))?
            .udf_approvals(scene)
    }

    /// A data holder approves a module for a scene on this node: the module
    /// is checked (limits, imports, manifest, export types), its function
    /// names must not shadow built-ins or the scene's other modules, its
    /// bytes go to the space's content store, and the approval and its
    /// audit record commit together.
    pub fn register_udf(&self, scene: &str, bytes: &[u8], by: &str) -> Result<Registration> {
        let sc = self
            .space
            .scenes
            .get(scene)
            .ok_or_else(|| refusal(Code::Scene, "unknown scene"))?;
        // Approvals come from the space operator or a data-holder member.
        if by != "operator"
            && self
                .space
                .members
                .get(by)
                .is_none_or(|m| m.role != "holder")
        {
            return Err(Error::config(
                "space.toml",
                format!("member.{by}"),
                "UDF approvals need a member with role \"holder\" (or the operator)",
            ));
        }
        let module = self.udfs.load_bytes(bytes)?;
        let digest = module.digest().to_string();
        let functions = module.manifest().functions.clone();
        let existing = self.approvals(Some(scene))?;
        if let Some(a) = existing.iter().find(|a| a.digest == digest) {
            return Ok(Registration {
                node: self.name.clone(),
                scene: scene.to_string(),
                digest,
                functions,
                newly_approved: false,
                audit_seq: a.audit_seq,
            });
        }
        // Names must be unique across the scene's modules and must not shadow
        // DataFusion's functions.
        let mut others = self.scene_modules(sc).unwrap_or_default();
        others.retain(|m| m.digest() != digest);
        others.push(module.clone());
        let (state, _) = self.session(sc, &QueryUdfs::default(), &sc.datasets, None)?;
        QueryUdfs::bind(&others, sc.udf_limits)?;
        if functions.iter().any(|f| builtin_function(&state, &f.name)) {
            return Err(refusal(
                Code::UdfManifest,
                "a UDF module declares a function with a built-in function's name",
            ));
        }
        let path = crate::udf::module_path(&self.space.dir, &digest)
            .ok_or_else(|| Error::internal("digest without a path"))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        let manifest = serde_json::to_string(module.manifest()).map_err(Error::internal)?;
        let now = now_utc().1;
        let mut entry = self.governance_entry(by, scene, Kind::UdfRegister, Decision::Approved);
        entry.time = now.clone();
        entry.udfs = vec![digest.clone()];
        let (seq, _) = self
            .store
            .lock()
            .map_err(|_| Error::internal("state store lock poisoned"))?
            .append_with(entry, &self.keys, |tx, seq| {
                tx.execute(
                    "INSERT INTO udf_approval
                     (scene, digest, manifest, approved_by, approved_at, audit_seq)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    rusqlite::params![scene, digest, manifest, by, now, seq as i64],
                )?;
                Ok(())
            })?;
        Ok(Registration {
            node: self.name.clone(),
            scene: scene.to_string(),
            digest,
            functions,
            newly_approved: true,
            audit_seq: seq,
        })
    }

    /// Approved modules on this node, optionally for one scene.
    pub fn list_udfs(&self, scene: Option<&str>) -> Result<Vec<ListedUdf>> {
        let mut out = Vec::new();
        for sc in self.space.scenes.values() {
            if scene.is_some_and(|s| s != sc.name) {
                continue;
            }
            let mut seen = Vec::new();
            for d in &sc.udfs {
                seen.push(d.clone());
                out.push(self.listed(sc, d, "policy", None));
            }
            for a in self.approvals(Some(&sc.name))? {
                if seen.contains(&a.digest) {
                    continue;
                }
                let d = a.digest.clone();
                out.push(self.listed(sc, &d, "registered", Some(a)));
            }
        }
        Ok(out)
    }

    fn listed(
        &self,
        sc: &Scene,
        digest: &str,
        source: &'static str,
        approval: Option<UdfApproval>,
    ) -> ListedUdf {
        let module = self.udfs.load_approved(&self.space.dir, digest).ok();
        ListedUdf {
            node: self.name.clone(),
            scene: sc.name.clone(),
            digest: digest.to_string(),
            source,
            approved_by: approval.as_ref().map(|a| a.approved_by.clone()),
            approved_at: approval.as_ref().map(|a| a.approved_at.clone()),
            functions: module
                .as_ref()
                .map(|m| m.manifest().functions.clone())
                .unwrap_or_default(),
            loadable: module.is_some(),
        }
    }

    fn scene_for(&self, req: &QueryRequest) -> Result<&Scene> {
        let scene = self
            .space
            .scenes
            .get(&req.scene)
            .ok_or_else(|| refusal(Code::Scene, "unknown scene"))?;
        let member = self.space.members.get(&req.actor);
        if !member.is_some_and(|m| m.role == "researcher" && m.org == scene.requester) {
            return Err(refusal(
                Code::Scene,
                "the caller is not a researcher of the scene's requester",
            ));
        }
        if !scene.valid_on(&now_utc().0) {
            return Err(refusal(Code::Scene, "the scene is not valid today"));
        }
        Ok(scene)
    }

    async fn run(&self, req: &QueryRequest, trace: &mut Trace) -> Result<(Outcome, String)> {
        if self.scene_for(req)?.federated {
            return Err(refusal(
                Code::Scene,
                "the scene is answered only jointly, with `kexin federate`",
            ));
        }
        let Admitted {
            scene,
            contract,
            udfs,
            state,
            plan: plan1,
            analysis,
        } = self.admit(req, trace).await?;
        if let Some(privacy) = &scene.privacy {
            let contract_cap = contract.as_ref().and_then(|c| c.terms.epsilon);
            let consent_digest = trace.consent.as_ref().map(|c| c.1.clone());
            return self
                .run_dp(
                    req,
                    scene,
                    privacy,
                    contract_cap,
                    &udfs,
                    &state,
                    plan1,
                    consent_digest,
                    trace,
                )
                .await;
        }
        // Only the releasing aggregate runs on the data; what the query
        // does above it runs after the gate, on released cells.
        let aggregate = gate::releasing(&plan1)?.clone();
        let visible = aggregate.schema().as_arrow().clone();
        let (plan2, hidden) = gate::instrument(aggregate, &scene.output)?;
        let plan_digest = hex::encode(Sha256::digest(
            format!("{}", plan1.display_indent()).as_bytes(),
        ));

        // Step 6: execute with a memory pool and a deadline. A failure here
        // can depend on the data: it is answered like a query whose every
        // cell was withheld, and its cause is audited.
        let batches = match state.create_physical_plan(&plan2).await {
            Ok(physical) => self.execute(&state, physical).await,
            Err(e) => Err(plan_refusal(e)),
        };
        let batches = match batches {
            Ok(b) => b,
            Err(Error::Refused(r)) if r.code.data_dependent() => {
                trace.withheld = Some(r);
                Vec::new()
            }
            Err(e) => return Err(e),
        };

        // Step 7: the gate, then the query's post-processing on what passed.
        let threshold_key = self
            .keys
            .master
            .derive(format!("kexin/threshold/v1/{}", scene.name).as_bytes());
        let released = gate::apply(
            &batches,
            &visible,
            hidden,
            &analysis,
            &scene.output,
            &threshold_key,
        )?;
        let post = gate::post_process(&plan1, released.cells)?;
        let physical = state
            .create_physical_plan(&post)
            .await
            .map_err(plan_refusal)?;
        let out = self.execute(&state, physical).await?;
        let columns: Vec<String> = post
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let mut rows = Vec::new();
        for batch in &out {
            let cols = batch
                .columns()
                .iter()
                .map(gate::column_cells)
                .collect::<Result<Vec<_>>>()?;
            for r in 0..batch.num_rows() {
                rows.push(cols.iter().map(|c| c[r].clone()).collect());
            }
        }
        let mut explanation = vec![
            format!(
                "each released cell counts at least {} distinct persons (noisy threshold drawn from the cell's persons), for the cell and for every aggregate's non-NULL, finite values; cells that fail a rule are withheld without saying which rule",
                scene.output.min_persons
            ),
            format!(
                "counts rounded to {}, sums to {} times what one row can add (sums of a plain column: to {}), other values to {} decimal places; values that are not finite are withheld",
                scene.output.round_to,
                scene.output.round_to,
                scene.output.round_to,
                scene.output.decimals
            ),
            "HAVING, ORDER BY, LIMIT and expressions over aggregates run after the gate, on released cells only".into(),
        ];
        explanation.push(match analysis.public_cells {
            Some(_) => "the group keys have a declared public domain: suppressed_groups counts its cells that were not released".into(),
            None => "group keys come from the data: withheld cells are not counted (suppressed_groups is 0)".into(),
        });
        if let Some((seq, _)) = &trace.consent {
            explanation.push(format!(
                "consent: only persons whose grant covered the scene when the query started contribute (consent registry at #{seq})"
            ));
        }
        if let Some(d) = scene.output.dominance {
            explanation.push(format!(
                "dominance rule: cells where the top {} persons hold more than {:.0}% of a sum are withheld",
                d.n,
                d.k * 100.0
            ));
        }
        Ok((
            Outcome {
                status: Status::Released,
                columns,
                rows,
                suppressed_groups: released.suppressed_groups,
                code: None,
                rule: None,
                audit_seq: None,
                explanation,
                checkpoint: None,
                dp: None,
                airlock: None,
                contract: None,
            },
            plan_digest,
        ))
    }

    /// Steps 1–4 and the rewrite of step 3, shared by local and federated
    /// queries: the contract and consent snapshot, parsing, the session
    /// with only the scene's datasets, the export rule, the disclosure
    /// checks, then masks, clamps and consent at every scan.
    pub(crate) async fn admit(
        &self,
        req: &QueryRequest,
        trace: &mut Trace,
    ) -> Result<Admitted<'_>> {
        let scene = self.scene_for(req)?;
        // Step 1: the contract (taken durably, before anything runs) and the
        // consent set, both read once at the query's start.
        let contract = match scene.contract {
            ContractMode::Required => {
                let c = self.take_contract(req)?;
                trace.contract = Some(c.id.clone());
                Some(c)
            }
            ContractMode::None => None,
        };
        let datasets: Vec<String> = scene
            .datasets
            .iter()
            .filter(|d| {
                contract
                    .as_ref()
                    .is_none_or(|c| c.terms.datasets.contains(d))
            })
            .cloned()
            .collect();
        trace.hold = scene.release == Release::Review
            || contract
                .as_ref()
                .is_some_and(|c| c.terms.release == "review");
        let consent = match scene.consent {
            ConsentMode::Required => {
                let set =
                    crate::registry::View::open(&self.space)?.snapshot(scene, &now_utc().0)?;
                trace.consent = Some((set.seq, set.digest()));
                Some(set)
            }
            ConsentMode::None => None,
        };
        let modules = self.scene_modules(scene)?;
        let udfs = QueryUdfs::bind(&modules, scene.udf_limits)?;
        let limits = &self.space.limits;

        // Step 2: parse and check shape.
        if req.sql.len() > limits.max_sql_bytes {
            return Err(refusal(
                Code::SqlSize,
                "the SQL text is larger than the node's limit",
            ));
        }
        let statements = Parser::new(&GenericDialect {})
            .with_recursion_limit(limits.max_sql_depth)
            .try_with_sql(&req.sql)
            .and_then(|mut p| p.parse_statements())
            .map_err(|e| match e {
                ParserError::RecursionLimitExceeded => refusal(
                    Code::SqlSyntax,
                    "the SQL nests deeper than the node's limit",
                ),
                _ => refusal(Code::SqlSyntax, "the SQL does not parse"),
            })?;
        let mut statements = statements.into_iter();
        let (Some(stmt), None) = (statements.next(), statements.next()) else {
            return Err(refusal(
                Code::ShapeStatement,
                "exactly one statement per request",
            ));
        };
        if !matches!(stmt, datafusion::sql::sqlparser::ast::Statement::Query(_)) {
            return Err(refusal(
                Code::ShapeStatement,
                "only read-only SELECT queries are allowed",
            ));
        }
        if expression_too_deep(&stmt, limits.max_expr_depth) {
            return Err(refusal(
                Code::SqlDepth,
                "an expression nests deeper than the node's limit (operator chains count too)",
            ));
        }

        // Session with only the scene's datasets, and the policy rewrite first.
        let (state, rule) = self.session(scene, &udfs, &datasets, consent.as_ref())?;
        let plan0 = state
            .statement_to_plan(datafusion::sql::parser::Statement::Statement(Box::new(
                stmt,
            )))
            .await
            .map_err(|e| {
                tracing::debug!(target: "kexin::node", "planning failed: {}", scrubbed(&e));
                match find_fault(&e).or_else(|| udfs.planning_fault()) {
                    Some(f) => Error::Refused(fault_refusal(f)),
                    None => refusal(
                        Code::SqlUnknown,
                        "the query names a table, column or function the scene does not provide",
                    ),
                }
            })?;
        // Every module the query calls is named in its audit record, whatever
        // the decision.
        trace.called.extend(called_modules(&plan0, &udfs));

        self.check_export(&req.actor, &plan0)?;

        // Step 4: disclosure constraints on the researcher's plan.
        let datasets = scene
            .datasets
            .iter()
            .filter_map(|d| self.space.datasets.get(d));
        let analysis = Checker::new(datasets)
            .with_udfs(udfs.facts.clone())
            .noisy(scene.privacy.is_some())
            .check(&plan0)?;

        // Step 3: defined semantics, then masks and clamps at every scan.
        let plan1 = harden(plan0).map_err(Error::internal)?;
        let plan1 = rule.analyze(plan1, state.config_options()).map_err(|e| {
            tracing::debug!(target: "kexin::node", "policy rewrite failed: {}", scrubbed(&e));
            refusal(
                Code::SqlUnknown,
                "the query does not plan against the scene's schema",
            )
        })?;
        Ok(Admitted {
            scene,
            contract,
            udfs,
            state,
            plan: plan1,
            analysis,
        })
    }

    /// Step 6 for both modes: run under the node's deadline and memory pool.
    pub(crate) async fn execute(
        &self,
        state: &datafusion::execution::SessionState,
        physical: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    ) -> Result<Vec<datafusion::arrow::array::RecordBatch>> {
        let deadline = Duration::from_secs(self.space.limits.timeout_seconds);
        match tokio::time::timeout(
            deadline,
            datafusion::physical_plan::collect(physical, state.task_ctx()),
        )
        .await
        {
            Err(_) => Err(refusal(
                Code::ExecLimit,
                "the query ran past the node's deadline",
            )),
            Ok(Err(e)) => {
                // The text may quote cell values: only its kind is logged.
                tracing::debug!(target: "kexin::node", "execution failed: {}", scrubbed(&e));
                Err(exec_refusal(&e))
            }
            Ok(Ok(b)) => Ok(b),
        }
    }

    /// Steps 5–7 in DP mode: plan the bounded contributions, answer a repeat
    /// from the cache, charge the budget durably, execute, add noise.
    #[allow(
        clippy::too_many_arguments,
        reason = "the DP path's inputs, each from one earlier step of the query path"
    )]
    async fn run_dp(
        &self,
        req: &QueryRequest,
        scene: &Scene,
        privacy: &PrivacyRules,
        contract_cap: Option<f64>,
        udfs: &QueryUdfs,
        state: &datafusion::execution::SessionState,
        plan: datafusion::logical_expr::LogicalPlan,
        consent_digest: Option<String>,
        trace: &mut Trace,
    ) -> Result<(Outcome, String)> {
        let datasets: BTreeMap<String, &Dataset> = scene
            .datasets
            .iter()
            .filter_map(|d| self.space.datasets.get(d).map(|x| (d.clone(), x)))
            .collect();
        // HAVING, ORDER BY and LIMIT run after the mechanism, on the
        // released rows, as in threshold scenes (post-processing costs no
        // budget): the mechanism then releases every column of the
        // releasing aggregate, and the query's plan above it runs on them.
        let (aggregate, post) = if dp::has_post_processing(&plan) {
            let map = dp::post_output_map(&plan)?;
            (gate::releasing(&plan)?.clone(), Some((plan, map)))
        } else {
            (plan, None)
        };
        let q = dp::plan(
            aggregate,
            &datasets,
            udfs,
            privacy,
            &scene.output,
            self.dp_key(scene, "rows"),
            self.dp_key(scene, "groups"),
        )?;
        let optimized = state.optimize(&q.plan).map_err(plan_refusal)?;
        // A different consent set is a different computation: never answered
        // from the cache of another.
        let mut digest = q.digest(&optimized, &self.space.policy_digest);
        if let Some(c) = consent_digest {
            digest = hex::encode(Sha256::digest(format!("{digest}/{c}").as_bytes()));
        }
        let store = || {
            self.store
                .lock()
                .map_err(|_| Error::internal("state store lock poisoned"))
        };
        let mut report = DpReport {
            epsilon_charged: 0.0,
            epsilon_spent: 0.0,
            epsilon_remaining: 0.0,
            epsilon_total: privacy.epsilon_total,
            delta: q.mechanism.delta,
            rows_per_person: privacy.rows_per_person,
            groups_per_person: privacy.groups_per_person,
            repeat_of: None,
            accuracy: vec![],
        };
        let mut explanation = vec![format!(
            "differential privacy: each person counts with at most {} row(s) per group in at most {} group(s); every aggregate has discrete Laplace noise and is snapped to a grid no finer than its noise scale (see dp.accuracy)",
            privacy.rows_per_person, privacy.groups_per_person
        )];
        let cached = store()?.dp_release(&req.actor, &req.scene, &digest)?;
        let (released, spent) = match cached {
            Some((stored, seq)) => {
                // The same computation asked again: the same answer, free.
                let stored: dp::DpRows = serde_json::from_str(&stored).map_err(Error::internal)?;
                trace.epsilon = Some(0.0);
                trace.repeat_of = Some(seq);
                report.repeat_of = Some(seq);
                explanation.push(format!(
                    "this query computes the same as audit entry #{seq}: its answer is returned again and no budget is charged"
                ));
                let store = store()?;
                let spent = store
                    .dp_spent(Some(&scene.requester), Some(&req.scene))?
                    .first()
                    .map_or(0.0, |s| s.epsilon_spent);
                let org_spent = store.dp_org_spent(&scene.requester)?;
                (stored, (spent, org_spent))
            }
            None => {
                // Step 5: charge before execution, durably.
                let charged = self
                    .charge_dp(
                        scene,
                        privacy,
                        contract_cap,
                        &req.actor,
                        q.mechanism.delta,
                        crate::ledger::Replicate::All,
                    )
                    .await?;
                trace.epsilon = Some(privacy.epsilon_per_query);
                report.epsilon_charged = privacy.epsilon_per_query;
                let physical = state
                    .query_planner()
                    .create_physical_plan(&optimized, state)
                    .await
                    .map_err(plan_refusal)?;
                // A failure here can depend on the data: the mechanism then
                // runs over no rows (noise only), like any other release,
                // and the cause is audited.
                let scans = match self.scan_partitions(state, physical, &q).await {
                    Ok(scans) => scans,
                    Err(Error::Refused(r)) if r.code.data_dependent() => {
                        trace.withheld = Some(r);
                        vec![q.scan()]
                    }
                    Err(e) => return Err(e),
                };
                let totals = q.mechanism.totals(&q.bounding, &scans)?;
                let mut seed = [0u8; 32];
                getrandom::fill(&mut seed).map_err(Error::internal)?;
                let mut rng = <rand_chacha::ChaCha20Rng as rand::SeedableRng>::from_seed(seed);
                let out = q.mechanism.release(totals, &mut rng)?;
                trace.cache = Some((
                    digest.clone(),
                    serde_json::to_string(&out).map_err(Error::internal)?,
                ));
                (out, (charged.epsilon_spent, charged.org_epsilon_spent))
            }
        };
        let (spent, org_spent) = spent;
        let org_total = self
            .space
            .requester_budget(&scene.requester)
            .unwrap_or(privacy.epsilon_total);
        report.epsilon_spent = spent;
        report.epsilon_remaining = (privacy.epsilon_total - spent)
            .min(org_total - org_spent)
            .max(0.0);
        explanation.push(format!(
            "privacy budget: ε {:.4} charged, {:.4} of {:.4} spent, {:.4} remaining",
            report.epsilon_charged, spent, privacy.epsilon_total, report.epsilon_remaining
        ));
        if q.mechanism.domain.is_none() {
            explanation.push(format!(
                "group keys come from the data: a group is released only when its noisy person count reaches {} (partition selection, δ = {}); how many were not is not shown",
                q.mechanism.threshold, q.mechanism.delta
            ));
        } else {
            explanation.push(format!(
                "every value of the keys' declared public domain is a candidate (values outside it are never released); cells whose noisy person count is under {} are suppressed",
                scene.output.min_persons
            ));
        }
        if released.suppressed > 0 {
            explanation.push(format!(
                "{} cell(s) suppressed: noisy person count under the threshold",
                released.suppressed
            ));
        }
        let (columns, rows, accuracy) = match &post {
            None => (q.columns, released.rows, released.accuracy),
            Some((plan, map)) => {
                explanation.push(
                    "HAVING, ORDER BY and LIMIT ran after the noise, on the released rows only"
                        .into(),
                );
                self.dp_post_process(state, plan, map, released.rows, released.accuracy)
                    .await?
            }
        };
        report.accuracy = accuracy;
        Ok((
            Outcome {
                status: Status::Released,
                columns,
                rows,
                suppressed_groups: released.suppressed,
                code: None,
                rule: None,
                audit_seq: None,
                explanation,
                checkpoint: None,
                dp: Some(report),
                airlock: None,
                contract: None,
            },
            digest,
        ))
    }

    /// The keyed-priority key `label` (`rows` or `groups`) of DP bounding
    /// under `scene`, derived from the node's master key: the same rows and
    /// groups are kept for a person whatever the file order.
    pub(crate) fn dp_key(&self, scene: &Scene, label: &str) -> u64 {
        let k = self
            .keys
            .master
            .derive(format!("kexin/dp-{label}/v1/{}", scene.name).as_bytes());
        let mut b = [0u8; 8];
        b.copy_from_slice(&k.expose()[..8]);
        u64::from_le_bytes(b)
    }

    /// A DP query's post-processing (HAVING, ORDER BY, LIMIT, its output
    /// columns) over the rows the mechanism released for the releasing
    /// aggregate's columns; each output value keeps its interval (`map`:
    /// the aggregate column of each output column). Returns the output
    /// columns, rows and intervals.
    #[allow(
        clippy::type_complexity,
        reason = "the released batch and its row map, returned together to the one caller"
    )]
    async fn dp_post_process(
        &self,
        state: &datafusion::execution::SessionState,
        plan: &datafusion::logical_expr::LogicalPlan,
        map: &[usize],
        rows: Vec<Vec<Cell>>,
        accuracy: Vec<Vec<Option<dp::Accuracy>>>,
    ) -> Result<(Vec<String>, Vec<Vec<Cell>>, Vec<Vec<Option<dp::Accuracy>>>)> {
        let types: Vec<_> = gate::releasing(plan)?
            .schema()
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        let table = gate::cells_batch(&rows, &types, true)?;
        let post = gate::post_process_tracked(plan, table)?;
        let physical = state
            .create_physical_plan(&post)
            .await
            .map_err(plan_refusal)?;
        let batches = self.execute(state, physical).await?;
        let mut out_rows = Vec::new();
        let mut out_accuracy = Vec::new();
        for b in &batches {
            let columns: Vec<Vec<Cell>> = b
                .columns()
                .iter()
                .map(gate::column_cells)
                .collect::<Result<_>>()?;
            let Some((numbers, values)) = columns.split_last() else {
                continue;
            };
            for (r, n) in numbers.iter().enumerate() {
                let Cell::Int(n) = n else {
                    return Err(Error::internal("a post-processed row without its number"));
                };
                let source = accuracy
                    .get(*n as usize)
                    .ok_or_else(|| Error::internal("a post-processed row number"))?;
                out_rows.push(values.iter().map(|c| c[r].clone()).collect());
                out_accuracy.push(
                    map.iter()
                        .map(|j| source.get(*j).copied().flatten())
                        .collect(),
                );
            }
        }
        let columns = plan
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        Ok((columns, out_rows, out_accuracy))
    }

    /// Step 6 in DP mode: every partition of the scan streams into its own
    /// [`dp::Scan`] (in parallel, under the node's deadline and memory
    /// limit).
    pub(crate) async fn scan_partitions(
        &self,
        state: &datafusion::execution::SessionState,
        physical: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
        q: &dp::DpQuery,
    ) -> Result<Vec<dp::Scan>> {
        use datafusion::physical_plan::ExecutionPlanProperties;
        use futures::StreamExt;
        let parts = physical.output_partitioning().partition_count().max(1);
        let limit = self.space.limits.memory_mb * 1024 * 1024 / parts;
        let ctx = state.task_ctx();
        let mut set = tokio::task::JoinSet::new();
        for p in 0..parts {
            let mut stream = physical
                .execute(p, Arc::clone(&ctx))
                .map_err(|e| exec_refusal(&e))?;
            let mut table = q.scan();
            set.spawn(async move {
                while let Some(batch) = stream.next().await {
                    let batch = batch.map_err(|e| {
                        tracing::debug!(target: "kexin::node", "execution failed: {}", scrubbed(&e));
                        exec_refusal(&e)
                    })?;
                    table.add_batch(&batch)?;
                    if table.bytes() > limit {
                        return Err(refusal(
                            Code::ExecLimit,
                            "the query needs more memory than the node allows",
                        ));
                    }
                }
                Ok(table)
            });
        }
        let all = async {
            let mut tables = Vec::new();
            while let Some(done) = set.join_next().await {
                tables.push(done.map_err(Error::internal)??);
            }
            Ok::<_, Error>(tables)
        };
        let deadline = Duration::from_secs(self.space.limits.timeout_seconds);
        let tables = tokio::time::timeout(deadline, all)
            .await
            .map_err(|_| refusal(Code::ExecLimit, "the query ran past the node's deadline"))??;
        Ok(tables)
    }

    /// A fresh session for one query: only the scene's datasets and columns,
    /// the policy rewrite as the first analyzer rule, memory pool and limits.
    fn session(
        &self,
        scene: &Scene,
        udfs: &QueryUdfs,
        datasets: &[String],
        consent: Option<&crate::consent::ConsentSet>,
    ) -> Result<(datafusion::execution::SessionState, Arc<PolicyRewrite>)> {
        let consent = consent.map(|c| c.clone().into_udf());
        let pseudonym_key = self
            .keys
            .master
            .derive(format!("kexin/pseudonym/v1/{}", scene.name).as_bytes());
        let mut rewrites = HashMap::new();
        let mut providers = Vec::new();
        for dname in datasets {
            let ds = self
                .space
                .datasets
                .get(dname)
                .ok_or_else(|| Error::internal("scene names a missing dataset"))?;
            let (url, file_schema) = self
                .tables
                .get(dname)
                .ok_or_else(|| Error::internal("dataset not opened"))?;
            let fields: Vec<_> = file_schema
                .fields()
                .iter()
                .filter(|f| ds.columns.contains_key(f.name()) && scene.column_visible(ds, f.name()))
                .cloned()
                .collect();
            let schema = Arc::new(Schema::new(fields));
            let mut masks = HashMap::new();
            for f in schema.fields() {
                let Some(c) = ds.columns.get(f.name()) else {
                    continue;
                };
                let key =
                    (c.mask == crate::mask::MaskKind::Pseudonym).then(|| pseudonym_key.clone());
                let m = ColumnMask::new(c.mask, c.bounds, key);
                if !m.is_identity() {
                    masks.insert(c.name.clone(), m.into_udf());
                }
            }
            rewrites.insert(
                dname.clone(),
                TableRewrite {
                    person_key: ds.person_key.clone(),
                    masks,
                    consent: consent.clone(),
                },
            );
            let config = ListingTableConfig::new(url.clone())
                .with_listing_options(listing_options())
                .with_schema(schema);
            let table = ListingTable::try_new(config).map_err(Error::internal)?;
            providers.push((dname.clone(), Arc::new(table)));
        }
        let rule = Arc::new(PolicyRewrite::new(rewrites));
        let mut rules: Vec<Arc<dyn AnalyzerRule + Send + Sync>> = vec![rule.clone()];
        rules.extend(Analyzer::new().rules);
        // Casts that type coercion inserted fail on data like any other:
        // harden once more after it, and coerce the guards it adds.
        rules.push(Arc::new(Harden));
        rules.push(Arc::new(TypeCoercion::new()));
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(self.space.limits.memory_mb * 1024 * 1024, 1.0)
            .build_arc()
            .map_err(Error::internal)?;
        let config = SessionConfig::new().with_information_schema(false);
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_analyzer_rules(rules)
            .build();
        let ctx = SessionContext::new_with_state(state);
        // A UDF may not shadow a built-in function: the checks above reason
        // about built-ins by name.
        for name in udfs.facts.keys() {
            if builtin_function(&ctx.state(), name) {
                return Err(refusal(
                    Code::UdfManifest,
                    "a UDF module declares a function with a built-in function's name",
                ));
            }
        }
        for f in &udfs.scalars {
            ctx.register_udf(f.clone());
        }
        for f in &udfs.aggregates {
            ctx.register_udaf(f.clone());
        }
        for (name, table) in providers {
            ctx.register_table(name.as_str(), table)
                .map_err(Error::internal)?;
        }
        Ok((ctx.state(), rule))
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
