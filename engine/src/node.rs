//! One node: a hospital's data, its policy and state, and the researcher's
//! query path (DESIGN.md steps 1–9).
//!
//! [`Node::query`] never returns an error: every failure becomes a refusal
//! with a fixed code, and every decision — released or refused — is written
//! to the audit log, durably, before the caller sees the result.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::optimizer::{Analyzer, AnalyzerRule};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::audit::AuditEntry;
use crate::disclosure::Checker;
use crate::error::{Code, Error, Refusal, Result};
use crate::gate::{self, Cell};
use crate::mask::ColumnMask;
use crate::policy::{ConsentMode, Release, Scene, Space};
use crate::rewrite::{PolicyRewrite, TableRewrite, harden};
use crate::store::{NodeKeys, Store, now_utc};

/// A researcher's request.
#[derive(Debug, Clone)]
pub struct QueryRequest {
    pub scene: String,
    pub actor: String,
    pub sql: String,
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
    space: Arc<Space>,
    name: String,
    dir: PathBuf,
    keys: NodeKeys,
    store: Mutex<Store>,
    /// Per dataset: the data file's schema (as DataFusion reads it) and URL.
    tables: HashMap<String, (ListingTableUrl, SchemaRef)>,
}

fn refusal(code: Code, rule: &'static str) -> Error {
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
        #[allow(clippy::disallowed_methods)]
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
    pub async fn query(&self, req: &QueryRequest) -> Outcome {
        let sql_digest = hex::encode(Sha256::digest(req.sql.as_bytes()));
        let (mut outcome, plan_digest) = match self.run(req).await {
            Ok((o, p)) => (o, Some(p)),
            Err(e) => {
                if let Error::Internal(detail) = &e {
                    // Operator log only; the researcher sees a fixed code.
                    tracing::error!(target: "kexin::node", "internal error: {detail}");
                }
                (Outcome::refused(e.as_refusal()), None)
            }
        };
        let output_digest = (outcome.status == Status::Released).then(|| {
            let bytes = serde_json::to_vec(&(&outcome.columns, &outcome.rows)).unwrap_or_default();
            hex::encode(Sha256::digest(bytes))
        });
        let entry = AuditEntry {
            seq: 0,
            time: now_utc().1,
            node: self.name.clone(),
            actor: req.actor.clone(),
            scene: req.scene.clone(),
            kind: "query".into(),
            decision: match outcome.status {
                Status::Released => "released",
                Status::Refused => "refused",
                Status::Held => "held",
            }
            .into(),
            code: outcome.code.map(|c| c.as_str().to_string()),
            rule: outcome.rule.map(str::to_string),
            sql_sha256: Some(sql_digest),
            plan_sha256: plan_digest,
            policy_sha256: hex::encode(self.space.policy_digest),
            output_sha256: output_digest,
            rows_released: outcome.rows.len() as u64,
            suppressed_groups: outcome.suppressed_groups as u64,
        };
        // The audit record is durable before anything is released.
        let appended = match self.store.lock() {
            Ok(mut store) => store.append(entry, &self.keys),
            Err(_) => Err(Error::internal("state store lock poisoned")),
        };
        match appended {
            Ok((seq, note)) => {
                outcome.audit_seq = Some(seq);
                outcome.checkpoint = Some(note);
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
        if scene.consent == ConsentMode::Required {
            // Seam for the consent registry: fail closed until it exists.
            return Err(refusal(
                Code::Scene,
                "the scene requires consent and the consent registry is unavailable",
            ));
        }
        if scene.privacy.is_some() {
            // Seam for differential privacy: fail closed until it exists.
            return Err(refusal(
                Code::Scene,
                "the scene requires differential privacy, which this node cannot apply",
            ));
        }
        if scene.release == Release::Review {
            return Err(refusal(
                Code::Scene,
                "the scene requires review and this node has no airlock",
            ));
        }
        Ok(scene)
    }

    async fn run(&self, req: &QueryRequest) -> Result<(Outcome, String)> {
        let scene = self.scene_for(req)?;
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

        // Session with only the scene's datasets, and the policy rewrite first.
        let (state, rule) = self.session(scene)?;
        let plan0 = state
            .statement_to_plan(datafusion::sql::parser::Statement::Statement(Box::new(
                stmt,
            )))
            .await
            .map_err(|e| {
                tracing::debug!(target: "kexin::node", "planning failed: {e}");
                refusal(
                    Code::SqlUnknown,
                    "the query names a table, column or function the scene does not provide",
                )
            })?;

        // Step 4: disclosure constraints on the researcher's plan.
        let datasets = scene
            .datasets
            .iter()
            .filter_map(|d| self.space.datasets.get(d));
        let analysis = Checker::new(datasets).check(&plan0)?;

        // Step 3: defined semantics, then masks and clamps at every scan.
        let plan1 = harden(plan0).map_err(Error::internal)?;
        let plan1 = rule.analyze(plan1, state.config_options()).map_err(|e| {
            tracing::debug!(target: "kexin::node", "policy rewrite failed: {e}");
            refusal(
                Code::SqlUnknown,
                "the query does not plan against the scene's schema",
            )
        })?;
        let (plan2, hidden) = gate::instrument(plan1, &scene.output)?;
        let plan_digest = hex::encode(Sha256::digest(
            format!("{}", plan2.display_indent()).as_bytes(),
        ));

        // Step 6: execute with a memory pool and a deadline.
        let physical = state.create_physical_plan(&plan2).await.map_err(|e| {
            tracing::debug!(target: "kexin::node", "physical planning failed: {e}");
            refusal(
                Code::SqlUnknown,
                "the query does not plan against the scene's schema",
            )
        })?;
        let task = state.task_ctx();
        let deadline = Duration::from_secs(limits.timeout_seconds);
        let batches = match tokio::time::timeout(
            deadline,
            datafusion::physical_plan::collect(physical, task),
        )
        .await
        {
            Err(_) => {
                return Err(refusal(
                    Code::ExecLimit,
                    "the query ran past the node's deadline",
                ));
            }
            Ok(Err(e)) => {
                // May quote cell values: debug level, operator log only.
                tracing::debug!(target: "kexin::node", "execution failed: {e}");
                return Err(exec_refusal(&e));
            }
            Ok(Ok(b)) => b,
        };

        // Step 7: the gate.
        let threshold_key = self
            .keys
            .master
            .derive(format!("kexin/threshold/v1/{}", scene.name).as_bytes());
        let released = gate::apply(&batches, hidden, &analysis, &scene.output, &threshold_key)?;
        let mut explanation = vec![format!(
            "each released group counts at least {} distinct persons (noisy threshold); integer results rounded to {}, decimals to {} places",
            scene.output.min_persons, scene.output.round_to, scene.output.decimals
        )];
        if let Some(d) = scene.output.dominance {
            explanation.push(format!(
                "dominance rule: groups where the top {} persons hold more than {:.0}% of a sum are suppressed",
                d.n,
                d.k * 100.0
            ));
        }
        for (why, n) in &released.reasons {
            explanation.push(format!("{n} group(s) suppressed: {why}"));
        }
        Ok((
            Outcome {
                status: Status::Released,
                columns: released.columns,
                rows: released.rows,
                suppressed_groups: released.suppressed_groups,
                code: None,
                rule: None,
                audit_seq: None,
                explanation,
                checkpoint: None,
            },
            plan_digest,
        ))
    }

    /// A fresh session for one query: only the scene's datasets and columns,
    /// the policy rewrite as the first analyzer rule, memory pool and limits.
    fn session(
        &self,
        scene: &Scene,
    ) -> Result<(datafusion::execution::SessionState, Arc<PolicyRewrite>)> {
        let pseudonym_key = self
            .keys
            .master
            .derive(format!("kexin/pseudonym/v1/{}", scene.name).as_bytes());
        let mut rewrites = HashMap::new();
        let mut providers = Vec::new();
        for dname in &scene.datasets {
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
        for (name, table) in providers {
            ctx.register_table(name.as_str(), table)
                .map_err(Error::internal)?;
        }
        Ok((ctx.state(), rule))
    }
}

fn listing_options() -> ListingOptions {
    ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet")
}

/// Map an execution error to a fixed refusal. DataFusion's messages can quote
/// cell values (cast and overflow errors do), so none of it is kept.
fn exec_refusal(e: &DataFusionError) -> Error {
    match e.find_root() {
        DataFusionError::ResourcesExhausted(_) => refusal(
            Code::ExecLimit,
            "the query needs more memory than the node allows",
        ),
        _ => refusal(Code::Exec, "the query failed while running"),
    }
}
