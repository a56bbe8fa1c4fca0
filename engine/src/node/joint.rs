//! One node's part of a federated computation (the plan every node agrees
//! on is `crate::federated`): authenticating the signed request, computing
//! this node's partial totals under its own policy, PSI inputs and
//! releases, and the audit entry every participating node writes.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::audit::{AuditEntry, Decision, Kind};
use crate::dp;
use crate::error::{Code, Error, Result, refuse};
use crate::federated::{
    FederateBody, JointDecision, JointFields, JointPartial, JointPlan, MIN_NODES, PsiBody, PsiSet,
    key_text, psi_noise,
};
use crate::gate::Cell;
use crate::identity::{Role, Signed, tag};
use crate::node::{Node, QueryRequest, Trace, refusal};
use crate::policy::{Dataset, PrivacyRules};
use crate::store::now_utc;

/// A node's audit context for one federated computation.
#[derive(Debug, Default)]
pub struct JointTrace(pub(crate) Trace);

impl Node {
    /// Check a federated or PSI request: bound to this space, naming this
    /// node once among distinct nodes of the space, signed by a researcher
    /// with a valid certificate, fresh, and not replayed here. Returns this
    /// node's party index.
    fn authenticate_joint(
        &self,
        body: JointFields<'_>,
        verify: impl FnOnce(&ed25519_dalek::VerifyingKey) -> Result<()>,
        min_nodes: usize,
        max_nodes: usize,
    ) -> Result<usize> {
        let JointFields {
            space,
            scene,
            member,
            nodes,
            nonce,
            time,
        } = body;
        if space != self.space.name {
            return refuse(Code::Auth, "the request is bound to another space");
        }
        let (key, cert) = crate::registry::View::open(&self.space)
            .map_err(|_| refusal(Code::Auth, "the identity registry is unavailable"))?
            .member_key(member)?;
        verify(&key)?;
        if cert.body.role != Role::Researcher {
            return refuse(Code::Auth, "only researchers submit queries");
        }
        crate::identity::fresh(time)?;
        let mut distinct = nodes.to_vec();
        distinct.sort();
        distinct.dedup();
        if distinct.len() != nodes.len() || nodes.iter().any(|n| !self.space.nodes.contains(n)) {
            return refuse(
                Code::Federation,
                "the nodes must be distinct nodes of the space",
            );
        }
        if nodes.len() < min_nodes {
            return refuse(
                Code::Federation,
                "a joint aggregate needs at least three nodes (with two, each learns the other's input)",
            );
        }
        if nodes.len() > max_nodes {
            return refuse(Code::Federation, "too many nodes for this computation");
        }
        if let Some(sc) = self.space.scenes.get(scene).filter(|s| s.federated) {
            let mut declared = sc.nodes.clone();
            declared.sort();
            // A joint aggregate over one node fewer (or more) than another
            // release would reveal that node's totals: always all of them.
            if min_nodes >= MIN_NODES && distinct != declared {
                return refuse(
                    Code::Federation,
                    "a federated scene is answered by all of its nodes together",
                );
            }
            if distinct.iter().any(|n| !declared.contains(n)) {
                return refuse(Code::Federation, "a node that does not answer this scene");
            }
        }
        let me = nodes
            .iter()
            .position(|n| *n == self.name())
            .ok_or_else(|| refusal(Code::Auth, "the request does not name this node"))?;
        self.store_lock()?.take_nonce(member, nonce, time)?;
        Ok(me)
    }

    /// Check a signed federated query (see [`Self::authenticate_joint`]).
    pub fn authenticate_federate(&self, env: &Signed<FederateBody>) -> Result<usize> {
        let b = &env.body;
        self.authenticate_joint(
            JointFields {
                space: &b.space,
                scene: &b.scene,
                member: &b.member,
                nodes: &b.nodes,
                nonce: &b.nonce,
                time: &b.time,
            },
            |k| env.verify(tag::FEDERATE, k, Code::Auth),
            MIN_NODES,
            64,
        )
    }

    /// Check a signed PSI request: exactly two nodes.
    pub fn authenticate_psi(&self, env: &Signed<PsiBody>) -> Result<usize> {
        let b = &env.body;
        self.authenticate_joint(
            JointFields {
                space: &b.space,
                scene: &b.scene,
                member: &b.member,
                nodes: &b.nodes,
                nonce: &b.nonce,
                time: &b.time,
            },
            |k| env.verify(tag::PSI, k, Code::Auth),
            2,
            2,
        )
    }

    /// Compute this node's partial totals for a federated query under its
    /// own policy: contract, consent, masks, clamps, the disclosure checks,
    /// and in DP scenes the per-person bounding, a budget charge and this
    /// node's share of the noise (for `parties` nodes). Nothing is audited
    /// here; the caller records the outcome with [`Self::audit_joint`].
    pub async fn joint_partial(
        &self,
        req: &QueryRequest,
        nodes: &[String],
    ) -> (Result<JointPartial>, JointTrace) {
        let mut trace = Trace::default();
        let r = self.joint_partial_inner(req, nodes, &mut trace).await;
        (r, JointTrace(trace))
    }

    async fn joint_partial_inner(
        &self,
        req: &QueryRequest,
        nodes: &[String],
        trace: &mut Trace,
    ) -> Result<JointPartial> {
        let parties = nodes.len();
        if !self.scene_for_joint(req)?.federated {
            return refuse(
                Code::Federation,
                "the scene is not a federated scene (federated = true)",
            );
        }
        let admitted = self.admit(req, trace).await?;
        let scene = admitted.scene;
        let datasets: BTreeMap<String, &Dataset> = scene
            .datasets
            .iter()
            .filter_map(|d| self.space.datasets.get(d).map(|x| (d.clone(), x)))
            .collect();
        let exact = scene.privacy.is_none();
        // Without DP the bounding parameters only shape the plan: the exact
        // totals below neither bound contributions nor add noise.
        let privacy = scene.privacy.clone().unwrap_or(PrivacyRules {
            epsilon_total: 1.0,
            epsilon_per_query: 1.0,
            delta: 1e-9,
            rows_per_person: 1,
            groups_per_person: 1,
        });
        let mut q = dp::plan(
            admitted.plan,
            &datasets,
            &admitted.udfs,
            &privacy,
            &scene.output,
            self.dp_key(scene, "rows"),
            self.dp_key(scene, "groups"),
        )?;
        let Some(cells) = q.mechanism.domain.clone() else {
            return refuse(
                Code::Federation,
                "federated GROUP BY keys need a declared public domain (the same cells at every node)",
            );
        };
        if exact {
            // Exact totals on the scene's decimal grid.
            let quantum = 10f64.powi(-(scene.output.decimals as i32));
            for a in q
                .bounding
                .args
                .iter_mut()
                .chain(q.mechanism.args.iter_mut())
            {
                a.quantum = quantum;
            }
        }
        let state = admitted.state;
        let optimized = state.optimize(&q.plan).map_err(unplanned)?;
        if let (false, Some(p)) = (exact, &scene.privacy) {
            // Every party charges itself; the first also charges the nodes
            // of the space outside the computation, so that every ledger
            // holds the charge once.
            let first = nodes.first().is_some_and(|n| *n == self.name);
            let cap = admitted.contract.as_ref().and_then(|c| c.terms.epsilon);
            self.charge_dp(
                scene,
                p,
                cap,
                &req.actor,
                q.mechanism.delta,
                if first {
                    crate::ledger::Replicate::Outside(nodes)
                } else {
                    crate::ledger::Replicate::Nobody
                },
            )
            .await?;
            trace.epsilon = Some(p.epsilon_per_query);
        }
        let physical = state
            .query_planner()
            .create_physical_plan(&optimized, &state)
            .await
            .map_err(unplanned)?;
        // A failure here can depend on the data (a deadline, the memory
        // pool, a module that faults on too many rows). It must not show:
        // the node still takes part with a vector that suppresses every
        // joint cell (see [`JointPlan::withheld_input`]), so the researcher
        // gets the answer of a round whose every cell missed the
        // threshold, and the cause goes to this node's audit entry only.
        let totals = match self.scan_partitions(&state, physical, &q).await {
            Ok(scans) if exact => q.mechanism.exact_totals(&scans),
            Ok(scans) => q.mechanism.totals(&q.bounding, &scans),
            Err(e) => Err(e),
        };
        let (totals, withheld) = match totals {
            Ok(t) => (t, false),
            Err(Error::Refused(r)) if r.code.data_dependent() => {
                trace.withheld = Some(r);
                (Vec::new(), true)
            }
            Err(e) => return Err(e),
        };
        // Align to the public domain: every node's vector has the same
        // cells in the same order; keys outside the domain are dropped.
        let nstats = q.mechanism.stats.len();
        let mut by_key: BTreeMap<String, Vec<i128>> =
            totals.into_iter().map(|(k, t)| (key_text(&k), t)).collect();
        let mut input = Vec::with_capacity(cells.len() * nstats);
        for c in &cells {
            match by_key.remove(&key_text(c)) {
                Some(t) => input.extend(t),
                None => input.extend(std::iter::repeat_n(0, nstats)),
            }
        }
        if !withheld {
            // This node's own part of every cell, before any noise, for its
            // accounting once the released cells are known.
            let at = |s: crate::dp::Stat| q.mechanism.stats.iter().position(|x| *x == s);
            let (persons, rows) = (at(crate::dp::Stat::Persons), at(crate::dp::Stat::Rows));
            let count = |t: &[i128], i: Option<usize>| {
                i.map_or(0, |i| u64::try_from(t[i].max(0)).unwrap_or(u64::MAX))
            };
            trace.joint_cells = input
                .chunks(nstats.max(1))
                .map(|t| crate::accounting::Contribution {
                    persons: Some(count(t, persons)),
                    rows: count(t, rows),
                })
                .collect();
        }
        if !exact && !withheld {
            // This node's share of the noise of every total.
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(Error::internal)?;
            let mut rng = <rand_chacha::ChaCha20Rng as rand::SeedableRng>::from_seed(seed);
            for (i, v) in input.iter_mut().enumerate() {
                let t = q.mechanism.scale(i % nstats);
                let z = kexin_mpc::noise::laplace_share(&mut rng, t, parties)
                    .map_err(Error::internal)?;
                *v += i128::from(z);
            }
        }
        let digest = hex::encode(Sha256::digest(
            format!(
                "kexin-joint-v1\n{:?}\n{:?}\n{:?}\n{:?}\nexact={exact} thr={} eps={}\n{:?}",
                q.columns,
                q.mechanism.stats,
                q.mechanism.outputs,
                q.mechanism.args,
                q.mechanism.threshold,
                q.mechanism.epsilon,
                cells
            )
            .as_bytes(),
        ));
        let plan = JointPlan {
            mechanism: q.mechanism,
            columns: q.columns,
            cells,
            exact,
            output: scene.output.clone(),
            bounding: (q.bounding.k, q.bounding.l),
            digest,
        };
        Ok(JointPartial {
            input: if withheld {
                plan.withheld_input()
            } else {
                input
            },
            plan,
            withheld,
        })
    }

    /// The distinct raw person keys this node may contribute to a PSI
    /// under the scene: the scene's first dataset, through the same
    /// admission as a query (contract, consent filter at the scan). The
    /// keys never leave the node; the caller blinds them. The scene needs a
    /// privacy budget, from which the releasing node charges ε.
    pub async fn psi_items(
        &self,
        req: &QueryRequest,
        column: Option<&str>,
    ) -> (Result<PsiSet>, JointTrace) {
        let mut trace = Trace::default();
        let r = self.psi_items_inner(req, column, &mut trace).await;
        (r, JointTrace(trace))
    }

    /// The grid and bound of a PSI payload column: per person the sum of
    /// at most `rows_per_person` clamped values, on a fixed-point grid.
    pub fn psi_payload(&self, scene: &str, column: &str) -> Result<(dp::ArgSpec, i64)> {
        let sc = self
            .space
            .scenes
            .get(scene)
            .ok_or_else(|| refusal(Code::Scene, "unknown scene"))?;
        let k = sc.privacy.as_ref().map_or(1, |p| p.rows_per_person) as f64;
        let ds = sc
            .datasets
            .first()
            .and_then(|d| self.space.datasets.get(d))
            .ok_or_else(|| refusal(Code::Scene, "the scene has no dataset"))?;
        let col = ds
            .columns
            .get(column)
            .filter(|c| sc.column_visible(ds, &c.name) && c.name != ds.person_key)
            .ok_or_else(|| {
                refusal(
                    Code::SqlUnknown,
                    "the PSI column is not a column of the scene's first dataset",
                )
            })?;
        let Some((lo, hi)) = col.bounds else {
            return refuse(
                Code::DpBounds,
                "the PSI sum takes a column with public bounds",
            );
        };
        // A person's sum of 1..k clamped values lies in [min(0, k·lo), max(0, k·hi)].
        let spec = dp::ArgSpec::new((lo * k).min(0.0), (hi * k).max(0.0), sc.output.decimals);
        let bound = ((lo * k).abs().max((hi * k).abs()) / spec.quantum).ceil() as i64;
        Ok((spec, bound.max(1)))
    }

    async fn psi_items_inner(
        &self,
        req: &QueryRequest,
        column: Option<&str>,
        trace: &mut Trace,
    ) -> Result<PsiSet> {
        use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, cast, col};
        let scene = self.scene_for_joint(req)?;
        let payload = column
            .map(|c| self.psi_payload(&scene.name, c))
            .transpose()?;
        if scene.privacy.is_none() {
            return refuse(
                Code::Federation,
                "PSI releases a noisy cardinality: the scene needs a privacy budget (privacy = {...})",
            );
        }
        let admitted = self.admit(req, trace).await?;
        // The admitted plan is `SELECT COUNT(*) FROM <dataset>`; below its
        // aggregate is the rewritten scan, which carries the raw person key
        // (persons are matched across nodes by it, not by ordinal).
        let mut plan = &admitted.plan;
        let input = loop {
            match plan {
                LogicalPlan::Aggregate(a) => break a.input.as_ref().clone(),
                other => {
                    plan = other
                        .inputs()
                        .into_iter()
                        .next()
                        .ok_or_else(|| Error::internal("no aggregate in the PSI plan"))?
                }
            }
        };
        let (input, pk) = crate::gate::carry_column(input, crate::rewrite::KEY_COLUMN)?;
        let keys = match column {
            None => LogicalPlanBuilder::from(input)
                .project(vec![Expr::Column(pk)])
                .and_then(|b| b.distinct())
                .and_then(|b| b.build()),
            Some(c) => LogicalPlanBuilder::from(input)
                .aggregate(
                    vec![Expr::Column(pk)],
                    vec![datafusion::functions_aggregate::expr_fn::sum(cast(
                        col(c),
                        datafusion::arrow::datatypes::DataType::Float64,
                    ))],
                )
                .and_then(|b| b.build()),
        }
        .map_err(Error::internal)?;
        let state = admitted.state;
        let optimized = state.optimize(&keys).map_err(Error::internal)?;
        let physical = state
            .query_planner()
            .create_physical_plan(&optimized, &state)
            .await
            .map_err(Error::internal)?;
        let batches = self.execute(&state, physical).await?;
        let mut set = PsiSet::default();
        for b in &batches {
            let keys = crate::gate::column_cells(b.column(0))?;
            let vals = match &payload {
                Some(_) => crate::gate::column_cells(b.column(1))?,
                None => vec![Cell::Null; keys.len()],
            };
            for (k, v) in keys.into_iter().zip(vals) {
                if k == Cell::Null {
                    continue;
                }
                set.keys.push(k.key_text().into_bytes());
                if let Some((spec, bound)) = &payload {
                    // Per person: the clamped sum, on the grid.
                    let x = match v {
                        Cell::Float(f) => f,
                        Cell::Int(i) => i as f64,
                        _ => 0.0,
                    };
                    let q = (x.clamp(spec.lo, spec.hi) / spec.quantum).round() as i64;
                    set.values.push(q.clamp(-bound, *bound));
                }
            }
        }
        if let Some((spec, bound)) = payload {
            set.quantum = spec.quantum;
            set.bound = bound;
        }
        Ok(set)
    }

    /// Release a PSI cardinality with discrete Laplace noise (sensitivity 1:
    /// a person is one item per node) at the scene's ε per query, charged to
    /// the requester's budget (here and at every other node of the space).
    pub async fn psi_release(
        &self,
        req: &QueryRequest,
        size: usize,
        trace: &mut JointTrace,
    ) -> Result<(f64, [f64; 2], f64)> {
        let eps = self.psi_charge(req, trace).await?;
        let z = psi_noise(1, eps)?;
        let h = dp::laplace_half_width(1.0 / eps, 0.05);
        let v = (size as f64 + z as f64).max(0.0);
        Ok((v, [(v - h).max(0.0), v + h], eps))
    }

    /// Charge the scene's ε per query for one PSI release: the releasing
    /// node charges itself and every other node of the space.
    pub async fn psi_charge(&self, req: &QueryRequest, trace: &mut JointTrace) -> Result<f64> {
        let scene = self.scene_for_joint(req)?;
        let Some(p) = &scene.privacy else {
            return refuse(Code::Federation, "the scene has no privacy budget");
        };
        self.charge_dp(
            scene,
            p,
            None,
            &req.actor,
            0.0,
            crate::ledger::Replicate::All,
        )
        .await?;
        trace.0.epsilon = Some(p.epsilon_per_query);
        Ok(p.epsilon_per_query)
    }

    /// The scene's ε per query (PSI scenes have a privacy block).
    pub fn psi_epsilon(&self, scene: &str) -> Result<f64> {
        self.space
            .scenes
            .get(scene)
            .and_then(|s| s.privacy.as_ref())
            .map(|p| p.epsilon_per_query)
            .ok_or_else(|| refusal(Code::Federation, "the scene has no privacy budget"))
    }

    fn scene_for_joint(&self, req: &QueryRequest) -> Result<&crate::policy::Scene> {
        self.space
            .scenes
            .get(&req.scene)
            .ok_or_else(|| refusal(Code::Scene, "unknown scene"))
    }

    /// Record how a federated computation (`kind`: [`Kind::Federated`] or
    /// [`Kind::Psi`]) ended at this node, with the session digest every
    /// node shares. Returns the audit sequence number.
    pub fn audit_joint(
        &self,
        req: &QueryRequest,
        kind: Kind,
        session: &[u8; 32],
        trace: &JointTrace,
        decision: JointDecision<'_>,
    ) -> Result<u64> {
        let t = &trace.0;
        let mut e = AuditEntry::new(
            self.name(),
            &req.actor,
            &req.scene,
            kind,
            match decision {
                JointDecision::Released(_) => Decision::Released,
                JointDecision::Refused(_) => Decision::Refused,
                JointDecision::Aborted(_) => Decision::Aborted,
            },
            &self.space.policy_digest,
        );
        e.time = now_utc().1;
        e.sql_sha256 = Some(hex::encode(Sha256::digest(req.sql.as_bytes())));
        e.session = Some(hex::encode(session));
        e.data = self.data_digests(&req.scene);
        e.udfs = t.called.clone();
        e.epsilon = t.epsilon;
        e.contract = t.contract.clone();
        e.consent_seq = t.consent.as_ref().map(|c| c.0);
        e.consent_sha256 = t.consent.as_ref().map(|c| c.1.clone());
        // A released joint result: this node's own part of the released
        // cells, and their joint persons as the secure sum opened them.
        let contributed = match decision {
            JointDecision::Released(rows) if !t.joint_cells.is_empty() => {
                let mut own = crate::accounting::Contribution {
                    persons: Some(0),
                    rows: 0,
                };
                for c in &rows.opened.cells {
                    if let Some(x) = t.joint_cells.get(*c) {
                        own.persons = Some(own.persons.unwrap_or(0) + x.persons.unwrap_or(0));
                        own.rows += x.rows;
                    }
                }
                let joint: i128 = rows.opened.persons.iter().map(|p| (*p).max(0)).sum();
                crate::accounting::contributed(own, Some(u64::try_from(joint).unwrap_or(u64::MAX)))
                    .ok()
            }
            _ => None,
        };
        e.contribution = contributed.as_ref().map(|c| c.commitment());
        match decision {
            JointDecision::Released(rows) => {
                e.output_sha256 = Some(rows.digest());
                e.rows_released = rows.rows.len() as u64;
                e.suppressed_groups = rows.suppressed_groups as u64;
                // This node took part without its data: the cause.
                e.code = t.withheld.map(|w| w.code.as_str().to_string());
                e.rule = t.withheld.map(|w| w.rule.to_string());
            }
            JointDecision::Refused(r) => {
                e.code = Some(r.code.as_str().to_string());
                e.rule = Some(r.rule.to_string());
            }
            JointDecision::Aborted(why) => {
                e.code = Some(Code::FedAbort.as_str().to_string());
                e.rule = Some(why.to_string());
            }
        }
        let (seq, _) = self.store_lock()?.append_with(e, &self.keys, |tx, seq| {
            if let Some(c) = &contributed {
                crate::accounting::keep(tx, seq, c)?;
            }
            Ok(())
        })?;
        Ok(seq)
    }
}

/// A federated query that does not plan against the scene's schema. The
/// DataFusion text may quote values: only its kind is logged.
fn unplanned(e: datafusion::error::DataFusionError) -> Error {
    tracing::debug!(
        target: "kexin::node",
        "federated planning failed: {}",
        crate::node::scrubbed(&e)
    );
    refusal(
        Code::SqlUnknown,
        "the query does not plan against the scene's schema",
    )
}
