//! DP mode on a node: the bounding scan over the data files, the
//! mechanism, post-processing on released rows, and the per-scene keys
//! that keep a person's kept rows stable.

use super::*;

impl Node {
    /// Steps 5–7 in DP mode: plan the bounded contributions, answer a repeat
    /// from the cache, charge the budget durably, execute, add noise.
    #[allow(
        clippy::too_many_arguments,
        reason = "the DP path's inputs, each from one earlier step of the query path"
    )]
    pub(super) async fn run_dp(
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
                // Step 5: charge before execution, durably (a mock twin
                // charges nothing: its data is no one's).
                let charged = if self.mock {
                    (0.0, 0.0)
                } else {
                    let c = self
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
                    (c.epsilon_spent, c.org_epsilon_spent)
                };
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
                trace.contribution = Some(out.contribution);
                trace.cache = Some((
                    digest.clone(),
                    serde_json::to_string(&out).map_err(Error::internal)?,
                ));
                (out, charged)
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
                mock: false,
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
    pub(super) async fn dp_post_process(
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
}
