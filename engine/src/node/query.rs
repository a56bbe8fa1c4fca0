//! The single-node query path as the node runs it, in the order of
//! `docs/query-path.md`: authenticate a signed request, pick the scene,
//! admit the SQL (size, parse, one read-only SELECT, the scene's datasets,
//! the export rule, disclosure checks, masks and consent at every scan),
//! execute under the deadline and memory pool, gate or hand over to DP
//! mode, then audit and pad the answer.

use super::*;

impl Node {
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
    pub(super) async fn pad(&self, start: std::time::Instant) {
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

    pub(super) fn authenticate(&self, env: &Signed<QueryBody>) -> Result<()> {
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
        if cert.body.role != Role::Researcher {
            return Err(refusal(Code::Auth, "only researchers submit queries"));
        }
        crate::identity::fresh(&b.time)?;
        self.store_lock()?.take_nonce(&b.member, &b.nonce, &b.time)
    }

    /// Audit the decision (durably, before anything is released) and shape
    /// the outcome; a held result goes to the airlock in the same
    /// transaction.
    pub(super) fn finish(
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
        if self.mock {
            return self.mock_outcome(outcome, trace.hold);
        }
        let held = (trace.hold && outcome.status == Status::Released)
            .then(|| serde_json::to_string(&outcome).unwrap_or_default());
        // What the result used of the node's data, for its private
        // accounting (the entry carries a commitment only).
        let contributed = match trace.contribution {
            Some(c) if outcome.status == Status::Released => {
                crate::accounting::contributed(c, None).ok()
            }
            _ => None,
        };
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
                mock: false,
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
                .clone()
                .or(trace.withheld.map(|w| w.rule.to_string())),
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
            salt: None,
            data: self.data_digests(&req.scene),
            concerns: None,
            contribution: contributed.as_ref().map(|c| c.commitment()),
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
                if let Some(c) = &contributed {
                    crate::accounting::keep(tx, seq, c)?;
                }
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

    /// A mock twin's answer: marked mock, audited nowhere, and a result
    /// the real node would hold for review is shown with a note instead.
    fn mock_outcome(&self, mut outcome: Outcome, hold: bool) -> Outcome {
        outcome.mock = true;
        outcome.explanation.insert(
            0,
            "mock twin: computed on synthetic data generated from the space's public declarations, not on any person's records; nothing was charged or audited".into(),
        );
        if hold && outcome.status == Status::Released {
            outcome.explanation.push(
                "on the real node this result would be held for review by the data holder (status held)".into(),
            );
        }
        outcome
    }

    /// The consent set a query under `scene` uses now, with its digest:
    /// the registry's covered persons and the keys this node's data
    /// holders bound to them, as ordinals where the data is loaded. Read
    /// again only when the registry, the date or the bindings changed.
    fn consent_set(&self, scene: &Scene) -> Result<(crate::consent::ConsentSet, String)> {
        let view = crate::registry::View::open(&self.space)?;
        let today = now_utc().0;
        let bindings: i64 = self.store_lock()?.conn.query_row(
            "SELECT coalesce(max(audit_seq), 0) FROM person_binding",
            [],
            |r| r.get(0),
        )?;
        let key: super::ConsentKey = (view.version()?, today.clone(), bindings as u64);
        let cached =
            |c: &HashMap<String, (super::ConsentKey, crate::consent::ConsentSet, String)>| {
                c.get(&scene.name)
                    .filter(|(k, _, _)| *k == key)
                    .map(|(_, s, d)| (s.clone(), d.clone()))
            };
        if let Some(hit) = self.consent_sets.lock().ok().and_then(|c| cached(&c)) {
            return Ok(hit);
        }
        let mut set = view.snapshot(scene, &today)?;
        // Persons known by record numbers or tokens: the keys this node's
        // data holders bound to the members who granted.
        let bound = self.bound_digests(&set.persons)?;
        if !bound.is_empty() {
            set = set.with_digests(bound);
        }
        if self.ordinals() {
            let ordinals = {
                let store = self.store_lock()?;
                super::data::ordinals_of(&store, set.digests.iter())?
            };
            set = set.with_ordinals(ordinals);
        }
        let digest = set.digest();
        if let Ok(mut c) = self.consent_sets.lock() {
            c.insert(scene.name.clone(), (key, set.clone(), digest.clone()));
        }
        Ok((set, digest))
    }

    pub(super) fn scene_for(&self, req: &QueryRequest) -> Result<&Scene> {
        let scene = self
            .space
            .scenes
            .get(&req.scene)
            .ok_or_else(|| refusal(Code::Scene, "unknown scene"))?;
        let member = self.space.members.get(&req.actor);
        if !member.is_some_and(|m| m.role == Role::Researcher && m.org == scene.requester) {
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

    pub(super) async fn run(
        &self,
        req: &QueryRequest,
        trace: &mut Trace,
    ) -> Result<(Outcome, String)> {
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
        trace.contribution = Some(released.contribution);
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
                mock: false,
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
                .is_some_and(|c| c.terms.release == crate::policy::Release::Review);
        let consent = match scene.consent {
            ConsentMode::Required => {
                let (set, digest) = self.consent_set(scene)?;
                trace.consent = Some((set.seq, digest));
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
}
