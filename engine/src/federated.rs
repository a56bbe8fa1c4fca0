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

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::closed::closed_set;
use crate::dp::{Accuracy, Mechanism, Output, Stat};
use crate::error::{Code, Error, Refusal, Result};
use crate::gate::Cell;
use crate::identity::Signed;
use crate::policy::OutputRules;

pub mod rounds;

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
    pub mode: PsiMode,
    pub column: Option<String>,
    pub nonce: String,
    pub time: String,
}

closed_set! {
    /// What a private set intersection releases.
    PsiMode {
        /// The size of the intersection, with DP noise.
        Cardinality => "cardinality",
        /// The sum of a column over the intersection, with DP noise.
        Sum => "sum",
    }
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
    pub(crate) mechanism: Mechanism,
    pub columns: Vec<String>,
    pub(crate) cells: Vec<Vec<Cell>>,
    /// No DP: exact totals, thresholded at `min_persons`.
    pub(crate) exact: bool,
    pub(crate) output: OutputRules,
    /// DP scenes: rows per person per cell, cells per person.
    pub(crate) bounding: (usize, usize),
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
    /// What the secure sum opened to the nodes about the released cells;
    /// kept by each node for its accounting, never sent.
    #[serde(skip)]
    pub opened: Opened,
}

/// The released cells of a joint result as the nodes saw them opened.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Opened {
    /// The released cells' positions in the plan's domain.
    pub cells: Vec<usize>,
    /// Their joint person counts (noisy under DP), parallel to `cells`.
    pub persons: Vec<i128>,
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
    #[allow(
        clippy::type_complexity,
        reason = "the five parts of the gate's shape are named in the doc comment; a struct would be read once"
    )]
    pub fn gate_shape(&self) -> Result<(usize, usize, usize, u64, Vec<usize>)> {
        let persons = self
            .mechanism
            .stats
            .iter()
            .position(|s| *s == Stat::Persons)
            .ok_or_else(|| Error::internal("a joint plan without person counts"))?;
        if !self.exact {
            return Err(Error::refused(
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
        let at = self
            .mechanism
            .stats
            .iter()
            .position(|s| *s == Stat::Persons)
            .unwrap_or(0);
        Ok(JointRows {
            columns: self.columns.clone(),
            rows,
            accuracy,
            suppressed_groups: suppressed,
            explanation,
            opened: Opened {
                cells: passing.to_vec(),
                persons: (0..passing.len()).map(|i| values[i * n + at]).collect(),
            },
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
pub(crate) struct JointFields<'a> {
    pub(crate) space: &'a str,
    pub(crate) scene: &'a str,
    pub(crate) member: &'a str,
    pub(crate) nodes: &'a [String],
    pub(crate) nonce: &'a str,
    pub(crate) time: &'a str,
}

/// How a federated computation ended at this node.
#[derive(Debug)]
pub enum JointDecision<'a> {
    Released(&'a JointRows),
    Refused(Refusal),
    /// The round ended with no release; the reason names the rule.
    Aborted(&'static str),
}

pub(crate) fn key_text(key: &[Cell]) -> String {
    key.iter()
        .map(Cell::key_text)
        .collect::<Vec<_>>()
        .join("\u{1}")
}
