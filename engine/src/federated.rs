//! One node's part of a federated computation: the researcher's signed
//! request, the partial aggregates the node computes under its own policy,
//! the joint gate and release, and the audit record every participating
//! node writes with the same session digest.
//!
//! The protocol that combines the partials (secret sharing, opening) lives
//! in `kexin-mpc`; the transport in the root crate. This module never sees
//! another node's data, only totals opened by the protocol.
//!
//! A federated query is planned like a DP query ([`crate::dp::plan`]): the
//! researcher's COUNT, COUNT(DISTINCT person key), SUM, AVG, VAR and STDDEV
//! become integer totals per cell (persons, rows, counts, sums and centred
//! second moments on a fixed-point grid), over the cells of the group keys'
//! declared public domains — the same cells at every node, so the partial
//! vectors add up position by position. In a scene with `privacy`, each
//! node adds its share of discrete Laplace noise before sharing and the
//! per-person bounding of DP mode applies; without it, the totals are exact
//! and the joint result equals the pooled computation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::audit::AuditEntry;
use crate::dp::{self, Accuracy, Mechanism, Output, Stat};
use crate::error::{Code, Error, Refusal, Result, refuse};
use crate::gate::Cell;
use crate::identity::{Signed, tag};
use crate::node::{Node, QueryRequest, Trace, refusal};
use crate::policy::{Dataset, OutputRules, PrivacyRules};
use crate::store::now_utc;

/// The smallest federation: with two parties, the total minus your own
/// input is the other's input.
pub const MIN_NODES: usize = 3;

/// A researcher's federated query, signed with [`tag::FEDERATE`] and sent,
/// unchanged, to every node it names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FederateBody {
    pub space: String,
    pub scene: String,
    pub member: String,
    /// The participating nodes, in the order that numbers the parties.
    pub nodes: Vec<String>,
    pub sql: String,
    pub nonce: String,
    pub time: String,
}

/// A researcher's private set intersection request, signed with
/// [`tag::PSI`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PsiBody {
    pub space: String,
    pub scene: String,
    pub member: String,
    /// Exactly two nodes: the first learns the (noisy) result and returns
    /// it; the second supplies its blinded set (and payload).
    pub nodes: Vec<String>,
    /// `cardinality`, or `sum` of `column` over the intersection.
    pub mode: String,
    pub column: Option<String>,
    pub nonce: String,
    pub time: String,
}

/// The session digest: SHA-256 over the domain tag and the signed request,
/// so every node derives the same 32 bytes and no two requests share one.
pub fn session_id<T: Serialize>(tag: &str, env: &Signed<T>) -> Result<[u8; 32]> {
    let mut h = Sha256::new();
    h.update(b"kexin/session/v1\0");
    h.update(tag.as_bytes());
    h.update([0]);
    h.update(serde_json::to_vec(env).map_err(Error::internal)?);
    Ok(h.finalize().into())
}

/// What a node must agree on with every other before any share moves.
#[derive(Debug, Clone)]
pub struct JointPlan {
    mechanism: Mechanism,
    pub columns: Vec<String>,
    cells: Vec<Vec<Cell>>,
    /// No DP: exact totals, thresholded at `min_persons`.
    exact: bool,
    output: OutputRules,
    /// DP scenes: rows per person per cell, cells per person.
    bounding: (usize, usize),
    /// Digest of the decomposition (cells, stats, outputs, grid, threshold):
    /// nodes whose plans differ do not start.
    pub digest: String,
}

/// One node's part of a federated computation: the plan every node must
/// agree on and this node's partial totals (noise shares included).
#[derive(Debug, Clone)]
pub struct JointPartial {
    pub plan: JointPlan,
    /// Cells × stats, in the plan's order.
    pub input: Vec<i128>,
    /// The node's execution failed in a way that can depend on its data:
    /// `input` is [`JointPlan::withheld_input`], and the FHE gate is told to
    /// pass no cell. The cause is in the node's trace, for its audit entry.
    pub withheld: bool,
}

/// What a node whose execution failed adds to every cell's person count:
/// far below any other party's (at most 2^64) and within the shares'
/// range (2^120), so that no joint cell reaches the threshold.
pub const WITHHELD_PERSONS: i128 = 1 << 100;

/// A released joint result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JointRows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
    /// DP scenes: the 95% interval of each released value (parallel to rows).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accuracy: Vec<Vec<Option<Accuracy>>>,
    /// Cells of the public domain whose joint person count missed the
    /// threshold.
    pub suppressed_groups: usize,
    pub explanation: Vec<String>,
}

impl JointRows {
    /// SHA-256 of the released bytes: every node must report the same.
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(
            serde_json::to_vec(&(&self.columns, &self.rows, &self.accuracy)).unwrap_or_default(),
        ))
    }
}

impl JointPlan {
    fn nstats(&self) -> usize {
        self.mechanism.stats.len()
    }

    /// Length of the partial vector: cells × stats.
    pub fn len(&self) -> usize {
        self.cells.len() * self.nstats()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The partial vector of a node that cannot take part with its data:
    /// every cell's person count is `-WITHHELD_PERSONS` and every other
    /// total 0, so the opened joint person counts stay negative and the
    /// round releases what a round whose every cell missed the threshold
    /// releases (no rows, every cell of the domain suppressed).
    pub fn withheld_input(&self) -> Vec<i128> {
        let mut v = vec![0; self.len()];
        for p in self.person_positions() {
            v[p] = -WITHHELD_PERSONS;
        }
        v
    }

    /// Positions of every cell's person count (opened first).
    pub fn person_positions(&self) -> Vec<usize> {
        let persons = self
            .mechanism
            .stats
            .iter()
            .position(|s| *s == Stat::Persons);
        let k = persons.unwrap_or(0);
        (0..self.cells.len())
            .map(|c| c * self.nstats() + k)
            .collect()
    }

    /// For the FHE gate: (cells, totals per cell, position of the person
    /// count within a cell, threshold, positions of the other plain counts
    /// within a cell). Exact plans only.
    #[allow(clippy::type_complexity)]
    pub fn gate_shape(&self) -> Result<(usize, usize, usize, u64, Vec<usize>)> {
        let persons = self
            .mechanism
            .stats
            .iter()
            .position(|s| *s == Stat::Persons)
            .ok_or_else(|| Error::internal("a joint plan without person counts"))?;
        if !self.exact {
            return Err(refusal(
                Code::Federation,
                "the FHE gate applies to exact scenes only",
            ));
        }
        let counts = self
            .mechanism
            .stats
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s, Stat::Rows | Stat::Count(_)))
            .map(|(i, _)| i)
            .collect();
        Ok((
            self.cells.len(),
            self.nstats(),
            persons,
            self.output.min_persons,
            counts,
        ))
    }

    fn threshold(&self) -> f64 {
        if self.exact {
            self.output.min_persons as f64
        } else {
            self.mechanism.threshold
        }
    }

    /// The cells whose joint person count reaches the threshold, given the
    /// opened person counts (parallel to [`Self::person_positions`]).
    pub fn passing(&self, persons: &[i128]) -> Vec<usize> {
        persons
            .iter()
            .enumerate()
            .filter(|(_, p)| (**p as f64) >= self.threshold())
            .map(|(c, _)| c)
            .collect()
    }

    /// Positions of every stat of the passing cells (opened second).
    pub fn value_positions(&self, passing: &[usize]) -> Vec<usize> {
        let n = self.nstats();
        passing
            .iter()
            .flat_map(|c| (0..n).map(move |s| c * n + s))
            .collect()
    }

    /// The released rows from the passing cells' opened totals (parallel to
    /// [`Self::value_positions`]).
    pub fn release(&self, passing: &[usize], values: &[i128], parties: usize) -> Result<JointRows> {
        let n = self.nstats();
        if values.len() != passing.len() * n {
            return Err(Error::internal("opened totals of the wrong length"));
        }
        let mut rows = Vec::new();
        let mut accuracy = Vec::new();
        for (i, c) in passing.iter().enumerate() {
            let key = self
                .cells
                .get(*c)
                .ok_or_else(|| Error::internal("cell index"))?;
            let totals = &values[i * n..(i + 1) * n];
            let mut row = Vec::new();
            let mut acc = Vec::new();
            for o in &self.mechanism.outputs {
                if self.exact {
                    row.push(self.exact_value(*o, key, totals));
                } else {
                    let (cell, a) = self.mechanism.value(*o, key, totals);
                    row.push(cell);
                    acc.push(a);
                }
            }
            rows.push(row);
            if !self.exact {
                accuracy.push(acc);
            }
        }
        let suppressed = self.cells.len() - passing.len();
        let mut explanation = vec![format!(
            "joint result of {parties} nodes: each computed its partial totals under its own policy; the totals were secret-shared and only their sums opened"
        )];
        if self.exact {
            explanation.push(format!(
                "every cell of the keys' public domain is a candidate; cells whose joint person count is under {} are suppressed (persons are counted per node)",
                self.output.min_persons
            ));
        } else {
            explanation.push(format!(
                "differential privacy: at each node a person counts with at most {} row(s) per cell in at most {} cell(s); each node added its share of discrete Laplace noise inside the shares (the sum is the noise of the single-node mechanism, ε = {} per query charged at every node); cells whose noisy joint person count is under {} are suppressed",
                self.bounding.0,
                self.bounding.1,
                self.mechanism.epsilon,
                self.threshold()
            ));
        }
        if suppressed > 0 {
            explanation.push(format!("{suppressed} cell(s) suppressed"));
        }
        Ok(JointRows {
            columns: self.columns.clone(),
            rows,
            accuracy,
            suppressed_groups: suppressed,
            explanation,
        })
    }

    /// A value from exact totals, rounded as the scene's output rules say.
    fn exact_value(&self, o: Output, key: &[Cell], t: &[i128]) -> Cell {
        let m = &self.mechanism;
        let get = |s: Stat| {
            m.stats
                .iter()
                .position(|x| *x == s)
                .map_or(0.0, |i| t[i] as f64)
        };
        let round = |v: f64| {
            let p = 10f64.powi(self.output.decimals as i32);
            (v * p).round() / p
        };
        match o {
            Output::Key(i) => key.get(i).cloned().unwrap_or(Cell::Null),
            Output::Count(s) => {
                // COUNT(col) is the sum of a presence indicator on the grid.
                let unit = match s {
                    Stat::Sum(i) => m.args[i].quantum,
                    _ => 1.0,
                };
                let r = self.output.round_to.max(1) as f64;
                Cell::Int(((get(s) * unit / r).round() * r) as i64)
            }
            Output::Sum(i) => Cell::Float(round(get(Stat::Sum(i)) * m.args[i].quantum)),
            Output::Avg(i) => {
                let a = m.args[i];
                let c = get(Stat::Count(i));
                if c < 1.0 {
                    return Cell::Null;
                }
                let mid = a.qmid() as f64 * a.quantum;
                Cell::Float(round(mid + get(Stat::CSum(i)) / c * a.quantum))
            }
            Output::Var { arg, sample, sqrt } => {
                let a = m.args[arg];
                let (c, s, s2) = (
                    get(Stat::Count(arg)),
                    get(Stat::CSum(arg)),
                    get(Stat::CSumSq(arg)),
                );
                if c < 1.0 || (sample && c < 2.0) {
                    return Cell::Null;
                }
                let q = a.quantum;
                let pop = (s2 / c * q * q - (s / c * q).powi(2)).max(0.0);
                let v = if sample { pop * c / (c - 1.0) } else { pop };
                Cell::Float(round(if sqrt { v.sqrt() } else { v }))
            }
        }
    }
}

/// A node's audit context for one federated computation.
#[derive(Debug, Default)]
pub struct JointTrace(Trace);

/// One node's PSI input: distinct raw person keys and, for `--mode sum`,
/// each person's bounded value on the grid `quantum` (|value| ≤ `bound`).
#[derive(Debug, Default)]
pub struct PsiSet {
    pub keys: Vec<Vec<u8>>,
    pub values: Vec<i64>,
    pub quantum: f64,
    pub bound: i64,
}

/// Discrete Laplace noise for a PSI release: sensitivity `sens` grid units
/// at `eps` (the exact integer sampler).
pub fn psi_noise(sens: i64, eps: f64) -> Result<i64> {
    let den = (eps * 1e6).round().max(1.0) as u64;
    let scale = crate::noise::Ratio::new(1_000_000 * sens.max(1) as u64, den)?;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(Error::internal)?;
    let mut rng = <rand_chacha::ChaCha20Rng as rand::SeedableRng>::from_seed(seed);
    crate::noise::discrete_laplace(&mut rng, scale)
}

/// The fields of a joint request that authentication checks.
#[derive(Debug)]
struct JointFields<'a> {
    space: &'a str,
    scene: &'a str,
    member: &'a str,
    nodes: &'a [String],
    nonce: &'a str,
    time: &'a str,
}

/// How a federated computation ended at this node.
#[derive(Debug)]
pub enum JointDecision<'a> {
    Released(&'a JointRows),
    Refused(Refusal),
    /// The round ended with no release; the reason names the rule.
    Aborted(&'static str),
}

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
        if cert.body.role != "researcher" {
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
        let derive = |label: &str| {
            let k = self
                .keys
                .master
                .derive(format!("kexin/dp-{label}/v1/{}", scene.name).as_bytes());
            let mut b = [0u8; 8];
            b.copy_from_slice(&k.expose()[..8]);
            u64::from_le_bytes(b)
        };
        let mut q = dp::plan(
            admitted.plan,
            &datasets,
            &admitted.udfs,
            &privacy,
            &scene.output,
            derive("rows"),
            derive("groups"),
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
        let optimized = state.optimize(&q.plan).map_err(|e| {
            tracing::debug!(
                target: "kexin::node",
                "federated planning failed: {}",
                crate::node::scrubbed(&e)
            );
            refusal(
                Code::SqlUnknown,
                "the query does not plan against the scene's schema",
            )
        })?;
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
            .map_err(|e| {
                tracing::debug!(
                    target: "kexin::node",
                    "federated planning failed: {}",
                    crate::node::scrubbed(&e)
                );
                refusal(
                    Code::SqlUnknown,
                    "the query does not plan against the scene's schema",
                )
            })?;
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
        let totals = match totals {
            Ok(t) => Some(t),
            Err(Error::Refused(r)) if r.code.data_dependent() => {
                trace.withheld = Some(r);
                None
            }
            Err(e) => return Err(e),
        };
        // Align to the public domain: every node's vector has the same
        // cells in the same order; keys outside the domain are dropped.
        let nstats = q.mechanism.stats.len();
        let mut by_key: BTreeMap<String, Vec<i128>> = totals
            .iter()
            .flatten()
            .map(|(k, t)| (key_text(k), t.clone()))
            .collect();
        let mut input = Vec::with_capacity(cells.len() * nstats);
        for c in &cells {
            match by_key.remove(&key_text(c)) {
                Some(t) => input.extend(t),
                None => input.extend(std::iter::repeat_n(0, nstats)),
            }
        }
        if !exact && totals.is_some() {
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
        Ok(match totals {
            Some(_) => JointPartial {
                plan,
                input,
                withheld: false,
            },
            None => JointPartial {
                input: plan.withheld_input(),
                plan,
                withheld: true,
            },
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
        // aggregate is the rewritten scan, which carries the raw person key.
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
        let (input, pk) = crate::gate::carry(input)?;
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

    /// Record how a federated computation (`kind` = `federated` or `psi`)
    /// ended at this node, with the session digest every node shares.
    /// Returns the audit sequence number.
    pub fn audit_joint(
        &self,
        req: &QueryRequest,
        kind: &str,
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
                JointDecision::Released(_) => "released",
                JointDecision::Refused(_) => "refused",
                JointDecision::Aborted(_) => "aborted",
            },
            &self.space.policy_digest,
        );
        e.time = now_utc().1;
        e.sql_sha256 = Some(hex::encode(Sha256::digest(req.sql.as_bytes())));
        e.session = Some(hex::encode(session));
        e.udfs = t.called.clone();
        e.epsilon = t.epsilon;
        e.contract = t.contract.clone();
        e.consent_seq = t.consent.as_ref().map(|c| c.0);
        e.consent_sha256 = t.consent.as_ref().map(|c| c.1.clone());
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
        let (seq, _) = self
            .store_lock()?
            .append_with(e, &self.keys, |_, _| Ok(()))?;
        Ok(seq)
    }
}

fn key_text(key: &[Cell]) -> String {
    key.iter()
        .map(Cell::key_text)
        .collect::<Vec<_>>()
        .join("\u{1}")
}
