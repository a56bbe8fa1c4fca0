//! Differential-privacy mode: contribution bounding, noise, partition
//! selection and accuracy for scenes with `privacy = {…}`.
//!
//! A DP query runs as one aggregate over the researcher's (checked, masked)
//! input: `GROUP BY <the researcher's keys>` with a single hidden aggregate,
//! `kexin_dp(person, args…)`, that keeps for every person at most
//! `rows_per_person` rows per group — the rows with the smallest keyed
//! priority, so the choice is deterministic and independent of the
//! database's order or `random()` — with each argument clamped to its public
//! bounds and quantized to a fixed-point grid. After execution, each person
//! is kept in at most `groups_per_person` groups (again by keyed priority),
//! the group totals are summed exactly on integers, and discrete Laplace
//! noise (CKS20, [`crate::noise`]) calibrated to the bounded contribution is
//! added to every measured total. Released values are derived from the
//! noisy totals only (post-processing) and snapped to a grid no finer than
//! their noise scale.
//!
//! ## Accounting
//! A query charges the scene's `epsilon_per_query`, split evenly over the
//! totals it measures (distinct persons always, plus rows, non-null counts,
//! sums and sums of squares as its aggregates need). One person changes a
//! total of one group by at most the per-group sensitivity and appears in at
//! most `groups_per_person` groups, so each total over all groups is
//! `ε_query / measured`-DP and the query is `ε_query`-DP by basic composition.
//!
//! ## Partition selection
//! Group keys from a declared public domain (a column's `domain`, a UDF's
//! declared value list) are released for every domain value, present in the
//! data or not. Keys drawn from the data are released only when the noisy
//! distinct-person count reaches `τ = 1 + ⌈t·ln(L / (δ(1 + e^{-1/t})))⌉`
//! (`t` the persons noise scale, `L` = `groups_per_person`): a group that
//! exists only because of one person is released with probability at most
//! `δ / L`, so the query is `(ε_query, δ)`-DP. Without `delta` such keys are
//! refused. The scene's `min_persons` then applies to the noisy person
//! count (post-processing, free).

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, LargeBinaryArray, LargeBinaryBuilder, RecordBatch,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::common::{Result as DfResult, ScalarValue, exec_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, Expr, GroupsAccumulator, JoinType,
    LogicalPlan, Signature, Volatility, cast as cast_expr, lit,
};
use rand::{CryptoRng, Rng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cells::{Identity, each_person, grow};
use crate::error::{Code, Error, Result};
use crate::gate::{self, Cell};
use crate::noise::{Ratio, discrete_laplace};
use crate::policy::{Dataset, OutputRules, PrivacyRules, PublicValue};
use crate::udf::QueryUdfs;

/// Name of the hidden contribution column.
const CONTRIBUTIONS: &str = "__kexin_dp";
/// At most this many measured arguments per query.
const MAX_ARGS: usize = 16;
/// At most this many cells in an enumerated public domain.
const MAX_DOMAIN_CELLS: usize = 10_000;
/// Fixed-point grid: at most this many steps between 0 and a bound.
const QUANTUM_STEPS: f64 = 65_536.0;

fn refuse<T>(code: Code, rule: &'static str) -> Result<T> {
    Err(Error::refused(code, rule))
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::internal(format!("dp: {e}"))
}

// ---------------------------------------------------------------- keyed priority

/// A keyed 64-bit mix (SplitMix64 finalizer rounds). It only decides which
/// of one person's rows or groups count; privacy does not depend on it
/// (any choice made from one person's own data keeps the bound), the key
/// only keeps the choice unpredictable to the researcher.
fn mix(key: u64, a: u64, b: u64) -> u64 {
    fn fin(mut h: u64) -> u64 {
        h ^= h >> 30;
        h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^= h >> 27;
        h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^ (h >> 31)
    }
    fin(fin(key ^ a)
        .wrapping_add(b)
        .wrapping_add(0x9e37_79b9_7f4a_7c15))
}

fn row_priority(key: u64, person: u64, vals: &[i64], nulls: u32) -> u64 {
    let mut h = mix(key, person, u64::from(nulls));
    for v in vals {
        h = mix(key, h, *v as u64);
    }
    h
}

// ---------------------------------------------------------------- kexin_dp

/// One measured argument: public bounds and fixed-point quantum.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ArgSpec {
    pub lo: f64,
    pub hi: f64,
    pub quantum: f64,
}

impl ArgSpec {
    /// Bounds `[lo, hi]` with a quantum no finer than `10^-decimals` and
    /// at most [`QUANTUM_STEPS`] steps to the larger bound, rounded up to
    /// 1, 2 or 5 × 10ⁿ.
    pub fn new(lo: f64, hi: f64, decimals: u32) -> ArgSpec {
        let finest = 10f64.powi(-(decimals as i32));
        let q = (lo.abs().max(hi.abs()) / QUANTUM_STEPS).max(finest);
        ArgSpec {
            lo,
            hi,
            quantum: nice_step(q),
        }
    }
    fn qlo(&self) -> i64 {
        (self.lo / self.quantum).round() as i64
    }
    fn qhi(&self) -> i64 {
        (self.hi / self.quantum).round() as i64
    }
    fn quantize(&self, x: f64) -> Option<i64> {
        if x.is_nan() {
            return None;
        }
        let q = (x / self.quantum).round();
        Some((q as i64).clamp(self.qlo(), self.qhi()))
    }
    /// max |q| over the bounds, in quanta.
    fn qmax(&self) -> u64 {
        self.qlo().unsigned_abs().max(self.qhi().unsigned_abs())
    }
    /// The midpoint of the bounds, in quanta.
    fn qmid(&self) -> i64 {
        self.qlo() + (self.qhi() - self.qlo()) / 2
    }
    /// max |q − midpoint| over the bounds, in quanta: centring halves the
    /// sensitivity of AVG and VAR for bounds away from zero.
    fn qhalf(&self) -> u64 {
        (self.qmid() - self.qlo())
            .unsigned_abs()
            .max((self.qhi() - self.qmid()).unsigned_abs())
    }
}

/// `kexin_dp(person, a1, …, am)`: per group, per person, the kept rows
/// (at most `k`, smallest keyed priority) of quantized, clamped arguments.
/// Its output (and its partial state) is a binary encoding of them.
#[derive(Debug, Clone)]
pub struct Contributions {
    signature: Signature,
    k: usize,
    args: Vec<ArgSpec>,
    key: u64,
}

impl PartialEq for Contributions {
    fn eq(&self, o: &Self) -> bool {
        self.k == o.k && self.args == o.args && self.key == o.key
    }
}
impl Eq for Contributions {}
impl std::hash::Hash for Contributions {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.k.hash(state);
        self.key.hash(state);
        for a in &self.args {
            a.lo.to_bits().hash(state);
            a.hi.to_bits().hash(state);
            a.quantum.to_bits().hash(state);
        }
    }
}

impl Contributions {
    pub fn new(k: usize, args: Vec<ArgSpec>, key: u64) -> Self {
        Self {
            signature: Signature::variadic_any(Volatility::Immutable),
            k: k.max(1),
            args,
            key,
        }
    }
    fn acc(&self) -> ContribAcc {
        ContribAcc {
            k: self.k,
            args: self.args.clone(),
            key: self.key,
            groups: Vec::new(),
        }
    }
}

impl AggregateUDFImpl for Contributions {
    fn name(&self) -> &str {
        "kexin_dp"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::LargeBinary)
    }
    fn accumulator(&self, _: AccumulatorArgs) -> DfResult<Box<dyn Accumulator>> {
        let mut acc = self.acc();
        grow(&mut acc.groups, 1);
        Ok(Box::new(OneGroup(acc)))
    }
    fn state_fields(&self, _: StateFieldsArgs) -> DfResult<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            "rows",
            DataType::LargeBinary,
            true,
        ))])
    }
    fn groups_accumulator_supported(&self, _: AccumulatorArgs) -> bool {
        true
    }
    fn create_groups_accumulator(
        &self,
        _: AccumulatorArgs,
    ) -> DfResult<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(self.acc()))
    }
    fn default_value(&self, _: &DataType) -> DfResult<ScalarValue> {
        Ok(ScalarValue::LargeBinary(Some(Vec::new())))
    }
}

/// The kept rows of one group: person slots of `k` rows each.
#[derive(Debug, Default)]
struct GroupRows {
    index: HashMap<u64, u32, BuildHasherDefault<Identity>>,
    persons: Vec<u64>,
    used: Vec<u8>,
    prio: Vec<u64>,
    nulls: Vec<u32>,
    vals: Vec<i64>,
}

impl GroupRows {
    fn insert(&mut self, k: usize, person: u64, prio: u64, vals: &[i64], nulls: u32) {
        let m = vals.len();
        let s = match self.index.get(&person) {
            Some(s) => *s as usize,
            None => {
                let s = self.persons.len();
                self.index.insert(person, s as u32);
                self.persons.push(person);
                self.used.push(0);
                self.prio.resize(self.prio.len() + k, u64::MAX);
                self.nulls.resize(self.nulls.len() + k, 0);
                self.vals.resize(self.vals.len() + k * m, 0);
                s
            }
        };
        let base = s * k;
        let used = self.used[s] as usize;
        let row = if used < k {
            self.used[s] += 1;
            used
        } else {
            // Replace the kept row with the largest priority, if larger.
            let (r, top) = (0..k)
                .map(|r| (r, self.prio[base + r]))
                .max_by_key(|x| x.1)
                .unwrap_or((0, 0));
            if prio >= top {
                return;
            }
            r
        };
        self.prio[base + row] = prio;
        self.nulls[base + row] = nulls;
        self.vals[(base + row) * m..(base + row + 1) * m].copy_from_slice(vals);
    }

    /// `person u64 | used u8 | used × (prio u64 | nulls u32 | m × i64)`, little endian.
    fn encode(&self, k: usize, m: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.persons.len() * (9 + 12 + 8 * m));
        for (s, p) in self.persons.iter().enumerate() {
            out.extend_from_slice(&p.to_le_bytes());
            out.push(self.used[s]);
            for r in 0..self.used[s] as usize {
                let i = s * k + r;
                out.extend_from_slice(&self.prio[i].to_le_bytes());
                out.extend_from_slice(&self.nulls[i].to_le_bytes());
                for v in &self.vals[i * m..(i + 1) * m] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
        out
    }

    fn size(&self) -> usize {
        self.index.capacity() * 16
            + self.persons.capacity() * 8
            + self.used.capacity()
            + self.prio.capacity() * 8
            + self.nulls.capacity() * 4
            + self.vals.capacity() * 8
    }
}

/// One person's kept rows inside an encoded group.
struct Encoded<'a> {
    bytes: &'a [u8],
    m: usize,
}

impl<'a> Encoded<'a> {
    fn row_len(&self) -> usize {
        12 + 8 * self.m
    }
    /// Each person: (person, offset of its first row, rows), in order.
    fn persons(&self) -> Result<Vec<(u64, usize, u8)>> {
        let mut out = Vec::new();
        let mut at = 0;
        let b = self.bytes;
        while at < b.len() {
            if at + 9 > b.len() {
                return Err(internal("truncated contribution"));
            }
            let p = u64::from_le_bytes(b[at..at + 8].try_into().map_err(internal)?);
            let used = b[at + 8];
            let start = at + 9;
            at = start + used as usize * self.row_len();
            if at > b.len() {
                return Err(internal("truncated contribution"));
            }
            out.push((p, start, used));
        }
        Ok(out)
    }
    /// Row `r` from `start`: (prio, nulls, values).
    fn row(&self, start: usize, r: usize, vals: &mut [i64]) -> (u64, u32) {
        let at = start + r * self.row_len();
        let b = &self.bytes[at..at + self.row_len()];
        let mut p = [0u8; 8];
        p.copy_from_slice(&b[..8]);
        let mut n = [0u8; 4];
        n.copy_from_slice(&b[8..12]);
        for (i, v) in vals.iter_mut().enumerate() {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[12 + 8 * i..20 + 8 * i]);
            *v = i64::from_le_bytes(x);
        }
        (u64::from_le_bytes(p), u32::from_le_bytes(n))
    }
}

#[derive(Debug)]
struct ContribAcc {
    k: usize,
    args: Vec<ArgSpec>,
    key: u64,
    groups: Vec<GroupRows>,
}

impl ContribAcc {
    fn emit(&mut self, emit_to: EmitTo) -> ArrayRef {
        let groups = emit_to.take_needed(&mut self.groups);
        let mut b = LargeBinaryBuilder::new();
        for g in groups {
            b.append_value(g.encode(self.k, self.args.len()));
        }
        Arc::new(b.finish())
    }
}

impl GroupsAccumulator for ContribAcc {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> DfResult<()> {
        grow(&mut self.groups, total_num_groups);
        let m = self.args.len();
        if values.len() != m + 1 || m > MAX_ARGS {
            return exec_err!("kexin_dp: wrong number of arguments");
        }
        let cols: Vec<ArrayRef> = values[1..]
            .iter()
            .map(|a| cast(a, &DataType::Float64))
            .collect::<std::result::Result<_, _>>()?;
        let cols: Vec<_> = cols
            .iter()
            .map(|c| c.as_primitive::<Float64Type>())
            .collect();
        let (k, key) = (self.k, self.key);
        let args = &self.args;
        let groups = &mut self.groups;
        let mut vals = vec![0i64; m];
        each_person(&values[0], opt_filter, |i, person| {
            let mut nulls = 0u32;
            for (a, col) in cols.iter().enumerate() {
                let q = if col.is_null(i) {
                    None
                } else {
                    args[a].quantize(col.value(i))
                };
                match q {
                    Some(q) => vals[a] = q,
                    None => {
                        vals[a] = 0;
                        nulls |= 1 << a;
                    }
                }
            }
            // Rows without arguments are interchangeable: no priority needed.
            let prio = if m == 0 {
                0
            } else {
                row_priority(key, person, &vals, nulls)
            };
            groups[group_indices[i]].insert(k, person, prio, &vals, nulls);
        })
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> DfResult<ArrayRef> {
        Ok(self.emit(emit_to))
    }

    fn state(&mut self, emit_to: EmitTo) -> DfResult<Vec<ArrayRef>> {
        Ok(vec![self.emit(emit_to)])
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> DfResult<()> {
        grow(&mut self.groups, total_num_groups);
        let Some(blobs) = values.first() else {
            return exec_err!("kexin_dp: bad state");
        };
        let blobs: &LargeBinaryArray = blobs.as_binary::<i64>();
        let m = self.args.len();
        let mut vals = vec![0i64; m];
        for (row, g) in group_indices.iter().enumerate() {
            if blobs.is_null(row) {
                continue;
            }
            let enc = Encoded {
                bytes: blobs.value(row),
                m,
            };
            let persons = enc
                .persons()
                .map_err(|e| datafusion::error::DataFusionError::Execution(e.to_string()))?;
            for (p, start, used) in persons {
                for r in 0..used as usize {
                    let (prio, nulls) = enc.row(start, r, &mut vals);
                    self.groups[*g].insert(self.k, p, prio, &vals, nulls);
                }
            }
        }
        Ok(())
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> DfResult<Vec<ArrayRef>> {
        // Each row on its own: a one-row group per input row.
        let n = values.first().map_or(0, |v| v.len());
        let mut single = ContribAcc {
            k: self.k,
            args: self.args.clone(),
            key: self.key,
            groups: Vec::new(),
        };
        let idx: Vec<usize> = (0..n).collect();
        single.update_batch(values, &idx, opt_filter, n)?;
        Ok(vec![single.emit(EmitTo::All)])
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.groups.iter().map(GroupRows::size).sum::<usize>()
    }
}

/// The accumulator for aggregates without GROUP BY.
#[derive(Debug)]
struct OneGroup(ContribAcc);

impl Accumulator for OneGroup {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        let n = values.first().map_or(0, |v| v.len());
        self.0.update_batch(values, &vec![0; n], None, 1)
    }
    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        let arr = self.0.emit(EmitTo::All);
        grow(&mut self.0.groups, 1);
        ScalarValue::try_from_array(&arr, 0)
    }
    fn size(&self) -> usize {
        self.0.size()
    }
    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        Ok(vec![self.evaluate()?])
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        let n = states.first().map_or(0, |v| v.len());
        self.0.merge_batch(states, &vec![0; n], 1)
    }
}

// ---------------------------------------------------------------- the mechanism

/// A measured total per group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Stat {
    /// Distinct persons.
    Persons,
    /// Kept rows.
    Rows,
    /// Kept rows where argument `i` is not null.
    Count(usize),
    /// Σ argument `i`.
    Sum(usize),
    /// Σ (argument `i` − midpoint of its bounds): AVG's numerator.
    CSum(usize),
    /// Σ (argument `i` − midpoint)²: VAR's second moment.
    CSumSq(usize),
}

/// What one released column is.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Output {
    /// Group key `i`.
    Key(usize),
    /// A count (persons, rows or non-null values) as an integer.
    Count(Stat),
    /// SUM of argument `i`.
    Sum(usize),
    /// AVG of argument `i`.
    Avg(usize),
    /// VAR/STDDEV of argument `i`.
    Var {
        arg: usize,
        sample: bool,
        sqrt: bool,
    },
}

/// Accuracy of one released value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    /// The Laplace scale of the noise in the value's units (for AVG, VAR and
    /// STDDEV: the scale of a Laplace variable with the same 95% interval).
    pub scale: f64,
    /// Contains the value computed exactly on the bounded data with
    /// probability at least 95% (rounding included).
    pub interval: [f64; 2],
}

/// Per person: the (priority, group) pairs it is kept in.
type ChosenGroups = HashMap<u64, Vec<(u64, u32)>, BuildHasherDefault<Identity>>;

/// Everything the release needs besides the data.
#[derive(Debug, Clone)]
pub struct Mechanism {
    pub rows_per_person: usize,
    pub groups_per_person: usize,
    pub args: Vec<ArgSpec>,
    pub stats: Vec<Stat>,
    /// Discrete Laplace parameter per stat, in grid units.
    pub scales: Vec<Ratio>,
    pub outputs: Vec<Output>,
    pub keys: usize,
    /// All cells of a public domain, when every key has one.
    pub domain: Option<Vec<Vec<Cell>>>,
    /// Noisy distinct persons must reach this for a cell to be released.
    pub threshold: f64,
    /// Key of the groups-per-person priority.
    pub group_key: u64,
    pub epsilon: f64,
    /// δ spent by this query (0 with public-domain keys).
    pub delta: f64,
}

impl Mechanism {
    /// Calibrate noise for `outputs` over `args`: ε split evenly over the
    /// measured totals, each scaled to its per-person L1 sensitivity.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        privacy: &PrivacyRules,
        output: &OutputRules,
        args: Vec<ArgSpec>,
        outputs: Vec<Output>,
        keys: usize,
        domain: Option<Vec<Vec<Cell>>>,
        group_key: u64,
    ) -> Result<Mechanism> {
        let k = privacy.rows_per_person as usize;
        let l = privacy.groups_per_person as usize;
        let mut stats = vec![Stat::Persons];
        let mut need = |s: Stat| {
            if !stats.contains(&s) {
                stats.push(s);
            }
        };
        for o in &outputs {
            match *o {
                Output::Key(_) => {}
                Output::Count(s) => need(s),
                Output::Sum(i) => need(Stat::Sum(i)),
                Output::Avg(i) => {
                    need(Stat::CSum(i));
                    need(Stat::Count(i));
                }
                Output::Var { arg, .. } => {
                    need(Stat::CSum(arg));
                    need(Stat::Count(arg));
                    need(Stat::CSumSq(arg));
                }
            }
        }
        let eps_each = privacy.epsilon_per_query / stats.len() as f64;
        let mut scales = Vec::new();
        for s in &stats {
            let per_group: f64 = match *s {
                Stat::Persons => 1.0,
                Stat::Rows | Stat::Count(_) => k as f64,
                Stat::Sum(i) => k as f64 * args[i].qmax() as f64,
                Stat::CSum(i) => k as f64 * args[i].qhalf() as f64,
                Stat::CSumSq(i) => k as f64 * (args[i].qhalf() as f64).powi(2),
            };
            let t = per_group.max(1.0) * l as f64 / eps_each;
            scales.push(ratio_at_least(t)?);
        }
        let (threshold, delta) = if domain.is_some() {
            (output.min_persons as f64, 0.0)
        } else {
            if privacy.delta <= 0.0 {
                return refuse(
                    Code::DpPartition,
                    "group keys drawn from the data need the scene's delta > 0 (partition selection), or keys with a declared public domain",
                );
            }
            let t = as_f64(scales[0]);
            let q = (-1.0 / t).exp();
            let m = (t * (l as f64 / (privacy.delta * (1.0 + q))).ln()).ceil();
            ((1.0 + m).max(output.min_persons as f64), privacy.delta)
        };
        Ok(Mechanism {
            rows_per_person: k,
            groups_per_person: l,
            args,
            stats,
            scales,
            outputs,
            keys,
            domain,
            threshold,
            group_key,
            epsilon: privacy.epsilon_per_query,
            delta,
        })
    }

    fn stat(&self, s: Stat) -> usize {
        self.stats.iter().position(|x| *x == s).unwrap_or(0)
    }

    /// Exact bounded totals per group: contributions decoded, each person
    /// kept in at most `groups_per_person` groups.
    pub fn totals(&self, groups: &[(Vec<Cell>, &[u8])]) -> Result<Vec<(Vec<Cell>, Vec<i128>)>> {
        let m = self.args.len();
        let encoded: Vec<Encoded<'_>> = groups
            .iter()
            .map(|(_, b)| Encoded { bytes: b, m })
            .collect();
        let persons: Vec<Vec<(u64, usize, u8)>> = encoded
            .iter()
            .map(Encoded::persons)
            .collect::<Result<_>>()?;
        // Groups per person: keep the `L` groups with the smallest keyed
        // priority. Only needed when there are more groups than that.
        let l = self.groups_per_person;
        let chosen: Option<ChosenGroups> = (groups.len() > l).then(|| {
            let mut map = ChosenGroups::default();
            for (g, (key, _)) in groups.iter().enumerate() {
                let gk = crate::cells::person_hash(key_text(key).as_bytes());
                for (p, _, _) in &persons[g] {
                    let prio = mix(self.group_key, *p, gk);
                    let e = map.entry(*p).or_default();
                    if e.len() < l {
                        e.push((prio, g as u32));
                    } else if let Some(top) = e.iter_mut().max_by_key(|x| x.0)
                        && prio < top.0
                    {
                        *top = (prio, g as u32);
                    }
                }
            }
            map
        });
        let mut out = Vec::with_capacity(groups.len());
        let mut vals = vec![0i64; m];
        for (g, (key, _)) in groups.iter().enumerate() {
            let mut t = vec![0i128; self.stats.len()];
            for (p, start, used) in &persons[g] {
                if let Some(map) = &chosen
                    && !map
                        .get(p)
                        .is_some_and(|e| e.iter().any(|x| x.1 == g as u32))
                {
                    continue;
                }
                for (si, s) in self.stats.iter().enumerate() {
                    if *s == Stat::Persons {
                        t[si] += 1;
                    } else if *s == Stat::Rows {
                        t[si] += i128::from(*used);
                    }
                }
                for r in 0..*used as usize {
                    let (_, nulls) = encoded[g].row(*start, r, &mut vals);
                    for (si, s) in self.stats.iter().enumerate() {
                        match *s {
                            Stat::Count(i) if nulls & (1 << i) == 0 => t[si] += 1,
                            Stat::Sum(i) if nulls & (1 << i) == 0 => t[si] += i128::from(vals[i]),
                            Stat::CSum(i) if nulls & (1 << i) == 0 => {
                                t[si] += i128::from(vals[i] - self.args[i].qmid())
                            }
                            Stat::CSumSq(i) if nulls & (1 << i) == 0 => {
                                let c = i128::from(vals[i] - self.args[i].qmid());
                                t[si] += c * c
                            }
                            _ => {}
                        }
                    }
                }
            }
            out.push((key.clone(), t));
        }
        Ok(out)
    }

    /// Add noise to every total of every candidate cell and derive the
    /// released values. With a public domain, every domain cell is a
    /// candidate (missing ones with zero totals) and cells outside it are
    /// dropped; otherwise the data's cells are, thresholded.
    pub fn release<R: Rng + CryptoRng>(
        &self,
        totals: Vec<(Vec<Cell>, Vec<i128>)>,
        rng: &mut R,
    ) -> Result<DpRows> {
        let zero = vec![0i128; self.stats.len()];
        let mut outside = 0usize;
        let candidates: Vec<(Vec<Cell>, Vec<i128>)> = match &self.domain {
            Some(cells) => {
                let mut by_key: HashMap<String, Vec<i128>> = HashMap::new();
                for (k, t) in totals {
                    by_key.insert(key_text(&k), t);
                }
                let mut out = Vec::with_capacity(cells.len());
                for c in cells {
                    let t = by_key.remove(&key_text(c)).unwrap_or_else(|| zero.clone());
                    out.push((c.clone(), t));
                }
                outside = by_key.len();
                out
            }
            None => totals,
        };
        let mut rows = Vec::new();
        let mut accuracy = Vec::new();
        let mut small = 0usize;
        for (key, t) in candidates {
            let mut noisy = Vec::with_capacity(t.len());
            for (si, v) in t.iter().enumerate() {
                let z = discrete_laplace(rng, self.scales[si])?;
                noisy.push(v + i128::from(z));
            }
            if (noisy[0] as f64) < self.threshold {
                small += 1;
                continue;
            }
            let mut row = Vec::with_capacity(self.outputs.len());
            let mut acc = Vec::with_capacity(self.outputs.len());
            for o in &self.outputs {
                let (cell, a) = self.value(*o, &key, &noisy);
                row.push(cell);
                acc.push(a);
            }
            rows.push(row);
            accuracy.push(acc);
        }
        // Rows in key order: the data's order says nothing.
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by_key(|i| {
            self.outputs
                .iter()
                .zip(&rows[*i])
                .filter(|(o, _)| matches!(o, Output::Key(_)))
                .map(|(_, c)| key_text(std::slice::from_ref(c)))
                .collect::<Vec<_>>()
        });
        Ok(DpRows {
            rows: order.iter().map(|i| rows[*i].clone()).collect(),
            accuracy: order.iter().map(|i| accuracy[*i].clone()).collect(),
            suppressed: small,
            outside_domain: outside,
        })
    }

    /// 95%-interval half-width (in grid units) of stat `s` at level `alpha`.
    fn half(&self, s: Stat, alpha: f64) -> f64 {
        laplace_half_width(as_f64(self.scales[self.stat(s)]), alpha)
    }

    fn value(&self, o: Output, key: &[Cell], noisy: &[i128]) -> (Cell, Option<Accuracy>) {
        let get = |s: Stat| noisy[self.stat(s)] as f64;
        match o {
            Output::Key(i) => (key.get(i).cloned().unwrap_or(Cell::Null), None),
            Output::Count(s) => {
                let scale = as_f64(self.scales[self.stat(s)]);
                let h = self.half(s, 0.05);
                let (v, step) = snap(get(s), scale);
                let v = v.max(0.0);
                let lo = (v - h - step / 2.0).max(0.0);
                (
                    Cell::Int(v as i64),
                    Some(Accuracy {
                        scale,
                        interval: [tidy(lo, step), tidy(v + h + step / 2.0, step)],
                    }),
                )
            }
            Output::Sum(i) => {
                let q = self.args[i].quantum;
                let s = Stat::Sum(i);
                let scale = as_f64(self.scales[self.stat(s)]) * q;
                let h = self.half(s, 0.05) * q;
                let (v, step) = snap(get(s) * q, scale);
                (
                    Cell::Float(tidy(v, step)),
                    Some(Accuracy {
                        scale,
                        interval: [
                            tidy(v - h - step / 2.0, step),
                            tidy(v + h + step / 2.0, step),
                        ],
                    }),
                )
            }
            Output::Avg(i) => {
                // mid + Σ(x − mid) / n, from the centred sum.
                let a = self.args[i];
                let alpha = 0.05 / 2.0;
                let mid = a.qmid() as f64 * a.quantum;
                let (s, c) = (get(Stat::CSum(i)), get(Stat::Count(i)));
                let (hs, hc) = (
                    self.half(Stat::CSum(i), alpha),
                    self.half(Stat::Count(i), alpha),
                );
                let est = (mid + s / c.max(1.0) * a.quantum).clamp(a.lo, a.hi);
                let (lo, hi) = ratio_range(s - hs, s + hs, c - hc, c + hc);
                let (lo, hi) = (
                    (mid + lo * a.quantum).clamp(a.lo, a.hi),
                    (mid + hi * a.quantum).clamp(a.lo, a.hi),
                );
                derived(est, lo, hi)
            }
            Output::Var { arg, sample, sqrt } => {
                // Variance does not move with the centre: E[c²] − E[c]².
                let a = self.args[arg];
                let alpha = 0.05 / 3.0;
                let q = a.quantum;
                let (s, c, s2) = (
                    get(Stat::CSum(arg)),
                    get(Stat::Count(arg)),
                    get(Stat::CSumSq(arg)),
                );
                let (hs, hc, h2) = (
                    self.half(Stat::CSum(arg), alpha),
                    self.half(Stat::Count(arg), alpha),
                    self.half(Stat::CSumSq(arg), alpha),
                );
                let max_var = ((a.hi - a.lo) / 2.0).powi(2);
                let n = c.max(1.0);
                let m1 = s / n * q;
                let var = (s2 / n * q * q - m1 * m1).clamp(0.0, max_var);
                let (m1lo, m1hi) = ratio_range(s - hs, s + hs, c - hc, c + hc);
                let (m2lo, m2hi) = ratio_range((s2 - h2).max(0.0), s2 + h2, c - hc, c + hc);
                let (m1lo, m1hi) = (m1lo * q, m1hi * q);
                let sq_min = if m1lo <= 0.0 && m1hi >= 0.0 {
                    0.0
                } else {
                    (m1lo * m1lo).min(m1hi * m1hi)
                };
                let sq_max = (m1lo * m1lo).max(m1hi * m1hi);
                let mut lo = (m2lo * q * q - sq_max).clamp(0.0, max_var);
                let mut hi = (m2hi * q * q - sq_min).clamp(0.0, max_var);
                let mut est = var;
                if sample {
                    if c < 2.0 {
                        return (Cell::Null, None);
                    }
                    let f = c / (c - 1.0);
                    let fl = (c + hc) / (c + hc - 1.0);
                    let fh = if c - hc > 1.0 {
                        (c - hc) / (c - hc - 1.0)
                    } else {
                        f64::INFINITY
                    };
                    est *= f;
                    lo *= fl.min(f);
                    hi = (hi * fh).min(max_var * 2.0);
                }
                if sqrt {
                    (est, lo, hi) = (est.sqrt(), lo.sqrt(), hi.sqrt());
                }
                derived(est, lo, hi)
            }
        }
    }
}

/// A derived value: its Laplace-equivalent scale from the interval width.
fn derived(est: f64, lo: f64, hi: f64) -> (Cell, Option<Accuracy>) {
    let scale = ((hi - lo) / 2.0 / 20f64.ln()).max(f64::MIN_POSITIVE);
    let (v, step) = snap(est.clamp(lo, hi), scale);
    let (lo, hi) = (lo.min(v), hi.max(v));
    (
        Cell::Float(tidy(v, step)),
        Some(Accuracy {
            scale,
            interval: [tidy(lo - step / 2.0, step), tidy(hi + step / 2.0, step)],
        }),
    )
}

/// Range of `s / c` for `s ∈ [slo, shi]`, `c ∈ [clo, chi]` with `c ≥ 1`.
fn ratio_range(slo: f64, shi: f64, clo: f64, chi: f64) -> (f64, f64) {
    let (clo, chi) = (clo.max(1.0), chi.max(1.0));
    let corners = [slo / clo, slo / chi, shi / clo, shi / chi];
    (
        corners.iter().copied().fold(f64::INFINITY, f64::min),
        corners.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    )
}

/// Smallest `m` with `P(|Z| > m) ≤ alpha` for discrete Laplace with scale
/// `t`: `P(|Z| > m) = 2e^{-(m+1)/t} / (1 + e^{-1/t})`.
pub fn laplace_half_width(t: f64, alpha: f64) -> f64 {
    let q = (-1.0 / t).exp();
    let m = (t * (2.0 / (alpha * (1.0 + q))).ln()).ceil() - 1.0;
    m.max(0.0)
}

/// The smallest 1, 2 or 5 × 10ⁿ that is at least `x` (> 0).
pub fn nice_step(x: f64) -> f64 {
    let x = x.max(1e-12);
    let mut p = 10f64.powf(x.log10().floor());
    loop {
        for f in [1.0, 2.0, 5.0] {
            if f * p >= x * (1.0 - 1e-12) {
                return f * p;
            }
        }
        p *= 10.0;
    }
}

/// Snap `v` to a grid no finer than `scale` (and no finer than 1 for
/// counts, which `scale ≥ 1` guarantees). Returns (value, step).
fn snap(v: f64, scale: f64) -> (f64, f64) {
    let step = nice_step(scale);
    ((v / step).round() * step, step)
}

/// Print-friendly: round to the decimals of `step`.
fn tidy(v: f64, step: f64) -> f64 {
    if step >= 1.0 {
        return v.round();
    }
    let d = (-step.log10()).ceil().clamp(0.0, 12.0) as i32;
    let s = 10f64.powi(d);
    (v * s).round() / s
}

fn as_f64(r: Ratio) -> f64 {
    r.num as f64 / r.den as f64
}

/// A rational no smaller than `t` (so the noise is never weaker).
fn ratio_at_least(t: f64) -> Result<Ratio> {
    if !t.is_finite() || t <= 0.0 {
        return Err(internal("noise scale out of range"));
    }
    let scaled = (t * 1000.0).ceil();
    if scaled < 1.8e19 {
        Ratio::new(scaled as u64, 1000)
    } else if t.ceil() < 1.8e19 {
        Ratio::new(t.ceil() as u64, 1)
    } else {
        Err(internal("noise scale out of range"))
    }
}

fn key_text(key: &[Cell]) -> String {
    key.iter()
        .map(Cell::key_text)
        .collect::<Vec<_>>()
        .join("\u{1}")
}

/// What a DP query releases.
#[derive(Debug, Clone, PartialEq)]
pub struct DpRows {
    pub rows: Vec<Vec<Cell>>,
    pub accuracy: Vec<Vec<Option<Accuracy>>>,
    /// Candidate cells whose noisy person count missed the threshold.
    pub suppressed: usize,
    /// Data groups outside the declared public domain (not released).
    pub outside_domain: usize,
}

// ---------------------------------------------------------------- planning

/// A planned DP query.
#[derive(Debug)]
pub struct DpQuery {
    pub plan: LogicalPlan,
    pub mechanism: Mechanism,
    /// Output column names, as the researcher wrote them.
    pub columns: Vec<String>,
}

/// Where a plan column comes from: a base column of a dataset.
fn origin(plan: &LogicalPlan, idx: usize) -> Option<(String, String)> {
    match plan {
        LogicalPlan::Projection(p) => {
            let e = strip(p.expr.get(idx)?);
            match e {
                Expr::Column(c) => origin(&p.input, p.input.schema().index_of_column(c).ok()?),
                Expr::ScalarFunction(f) if f.func.name() == "kexin_mask" => match f.args.first()? {
                    Expr::Column(c) => {
                        let i = p.input.schema().index_of_column(c).ok()?;
                        origin(&p.input, i)
                    }
                    _ => None,
                },
                _ => None,
            }
        }
        LogicalPlan::SubqueryAlias(a) => origin(&a.input, idx),
        LogicalPlan::Filter(f) => origin(&f.input, idx),
        LogicalPlan::Join(j) => {
            let nl = j.left.schema().fields().len();
            match j.join_type {
                JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full => {
                    if idx < nl {
                        origin(&j.left, idx)
                    } else {
                        origin(&j.right, idx - nl)
                    }
                }
                JoinType::LeftSemi | JoinType::LeftAnti => origin(&j.left, idx),
                JoinType::RightSemi | JoinType::RightAnti => origin(&j.right, idx),
                _ => None,
            }
        }
        LogicalPlan::TableScan(s) => Some((
            s.table_name.table().to_string(),
            s.projected_schema.field(idx).name().clone(),
        )),
        _ => None,
    }
}

fn strip(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => strip(&a.expr),
        other => other,
    }
}

/// The base column an expression is (through aliases and casts).
fn expr_origin(e: &Expr, input: &LogicalPlan) -> Option<(String, String)> {
    match strip(e) {
        Expr::Cast(c) => expr_origin(&c.expr, input),
        Expr::TryCast(c) => expr_origin(&c.expr, input),
        Expr::Column(c) => origin(input, input.schema().index_of_column(c).ok()?),
        _ => None,
    }
}

/// Resolve the researcher's output columns to the releasing aggregate's
/// output columns.
fn outputs(plan: &LogicalPlan) -> Result<(&datafusion::logical_expr::Aggregate, Vec<usize>)> {
    match plan {
        LogicalPlan::Projection(p) => {
            let (agg, below) = outputs(&p.input)?;
            let mut out = Vec::new();
            for e in &p.expr {
                let Expr::Column(c) = strip(e) else {
                    return refuse(
                        Code::DpShape,
                        "in DP mode each output column is a group key or one aggregate call",
                    );
                };
                let i = p.input.schema().index_of_column(c).map_err(internal)?;
                out.push(*below.get(i).ok_or_else(|| internal("column index"))?);
            }
            Ok((agg, out))
        }
        LogicalPlan::SubqueryAlias(a) => outputs(&a.input),
        LogicalPlan::Aggregate(a) => Ok((a, (0..a.schema.fields().len()).collect())),
        LogicalPlan::Sort(_) | LogicalPlan::Limit(_) => refuse(
            Code::DpShape,
            "ORDER BY and LIMIT are not supported in DP mode (released rows come sorted by group key)",
        ),
        _ => Err(internal("no releasing aggregate")),
    }
}

/// Plan a DP query from the rewritten, checked plan.
#[allow(clippy::too_many_arguments)]
pub fn plan(
    plan: LogicalPlan,
    datasets: &BTreeMap<String, &Dataset>,
    udfs: &QueryUdfs,
    privacy: &PrivacyRules,
    output: &OutputRules,
    row_key: u64,
    group_key: u64,
) -> Result<DpQuery> {
    let columns: Vec<String> = plan
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let (agg, map) = outputs(&plan)?;
    let input = agg.input.as_ref();
    let nkeys = agg.group_expr.len();
    let column_policy = |o: &(String, String)| {
        datasets
            .get(&o.0)
            .and_then(|d| d.columns.get(&o.1).map(|c| (*d, c)))
    };

    // Group keys: a public domain each, or none.
    let mut domains: Vec<Option<Vec<Cell>>> = Vec::new();
    for g in &agg.group_expr {
        let d = match strip(g) {
            Expr::ScalarFunction(f) => udfs
                .domains
                .get(f.func.name())
                .map(|v| v.iter().map(|s| Cell::Text(s.clone())).collect()),
            e => expr_origin(e, input)
                .and_then(|o| column_policy(&o).and_then(|(_, c)| c.domain.clone()))
                .map(|v| {
                    v.into_iter()
                        .map(|x| match x {
                            PublicValue::Int(i) => Cell::Int(i),
                            PublicValue::Text(s) => Cell::Text(s),
                        })
                        .collect()
                }),
        };
        domains.push(d);
    }
    let domain = if domains.iter().all(Option::is_some) {
        let mut cells: Vec<Vec<Cell>> = vec![vec![]];
        for d in domains.into_iter().flatten() {
            if cells.len().saturating_mul(d.len()) > MAX_DOMAIN_CELLS {
                return refuse(
                    Code::DpPartition,
                    "the group keys' public domains have too many combinations",
                );
            }
            cells = cells
                .into_iter()
                .flat_map(|c| {
                    d.iter().map(move |v| {
                        let mut c = c.clone();
                        c.push(v.clone());
                        c
                    })
                })
                .collect();
        }
        Some(cells)
    } else {
        None
    };

    // Aggregates: measured arguments and what each output is.
    let mut args: Vec<(Expr, ArgSpec)> = Vec::new();
    let mut arg_index = |e: Expr, spec: ArgSpec| -> Result<usize> {
        if let Some(i) = args.iter().position(|(x, s)| *x == e && *s == spec) {
            return Ok(i);
        }
        if args.len() == MAX_ARGS {
            return refuse(Code::DpAggregate, "too many aggregates in one DP query");
        }
        args.push((e, spec));
        Ok(args.len() - 1)
    };
    let mut agg_outputs = Vec::new();
    for a in &agg.aggr_expr {
        let Expr::AggregateFunction(f) = strip(a) else {
            return Err(internal("aggregate expected"));
        };
        let name = f.func.name().to_ascii_lowercase();
        let arg = f.params.args.first().cloned().unwrap_or(lit(1i64));
        if name == "count" {
            if f.params.distinct {
                let o = expr_origin(&arg, input);
                let is_pk = o
                    .as_ref()
                    .and_then(|o| column_policy(o).map(|(d, c)| d.person_key == c.name))
                    .unwrap_or(false);
                if !is_pk {
                    return refuse(
                        Code::DpAggregate,
                        "in DP mode COUNT(DISTINCT …) counts the person key only",
                    );
                }
                agg_outputs.push(Output::Count(Stat::Persons));
            } else if matches!(strip(&arg), Expr::Literal(..)) {
                agg_outputs.push(Output::Count(Stat::Rows));
            } else {
                // COUNT(col) sums a 0/1 presence indicator.
                let present = cast_expr(arg.is_not_null(), DataType::Float64);
                let i = arg_index(present, ArgSpec::new(0.0, 1.0, 0))?;
                agg_outputs.push(Output::Count(Stat::Sum(i)));
            }
            continue;
        }
        if f.params.distinct {
            return refuse(
                Code::DpAggregate,
                "in DP mode COUNT(DISTINCT …) counts the person key only",
            );
        }
        let bounds = match strip(&arg) {
            Expr::ScalarFunction(s) => udfs
                .facts
                .get(s.func.name())
                .and_then(|u| u.range)
                .map(|(lo, hi)| (lo as f64, hi as f64)),
            e => expr_origin(e, input).and_then(|o| column_policy(&o).and_then(|(_, c)| c.bounds)),
        };
        let Some((lo, hi)) = bounds else {
            return refuse(
                Code::DpBounds,
                "DP aggregates take a column with public bounds (or an approved UDF with a declared range)",
            );
        };
        let spec = ArgSpec::new(lo, hi, output.decimals);
        let i = arg_index(cast_expr(arg, DataType::Float64), spec)?;
        let out = match name.as_str() {
            "sum" => Output::Sum(i),
            "avg" | "mean" => Output::Avg(i),
            "var" | "var_samp" => Output::Var {
                arg: i,
                sample: true,
                sqrt: false,
            },
            "var_pop" => Output::Var {
                arg: i,
                sample: false,
                sqrt: false,
            },
            "stddev" | "stddev_samp" => Output::Var {
                arg: i,
                sample: true,
                sqrt: true,
            },
            "stddev_pop" => Output::Var {
                arg: i,
                sample: false,
                sqrt: true,
            },
            _ => {
                return refuse(
                    Code::DpAggregate,
                    "DP mode releases COUNT, COUNT(DISTINCT person key), SUM, AVG, VAR and STDDEV only",
                );
            }
        };
        agg_outputs.push(out);
    }
    let outputs: Vec<Output> = map
        .iter()
        .map(|i| {
            if *i < nkeys {
                Output::Key(*i)
            } else {
                agg_outputs[*i - nkeys]
            }
        })
        .collect();

    // The executed plan: the researcher's keys, one hidden aggregate.
    let (input, pk) = gate::carry(input.clone())?;
    let mut call_args = vec![Expr::Column(pk)];
    call_args.extend(args.iter().map(|(e, _)| e.clone()));
    let specs: Vec<ArgSpec> = args.iter().map(|(_, s)| *s).collect();
    let udaf = AggregateUDF::new_from_impl(Contributions::new(
        privacy.rows_per_person as usize,
        specs.clone(),
        row_key,
    ));
    let exec = datafusion::logical_expr::Aggregate::try_new(
        Arc::new(input),
        agg.group_expr.clone(),
        vec![udaf.call(call_args).alias(CONTRIBUTIONS)],
    )
    .map_err(internal)?;
    let mechanism = Mechanism::new(privacy, output, specs, outputs, nkeys, domain, group_key)?;
    Ok(DpQuery {
        plan: LogicalPlan::Aggregate(exec),
        mechanism,
        columns,
    })
}

impl DpQuery {
    /// Read the executed plan's output: group keys and contributions.
    pub fn groups(&self, batches: &[RecordBatch]) -> Result<Vec<(Vec<Cell>, Vec<u8>)>> {
        let n = self.mechanism.keys;
        let mut out = Vec::new();
        for b in batches {
            if b.num_columns() != n + 1 {
                return Err(internal("unexpected result width"));
            }
            let keys: Vec<Vec<Cell>> = (0..n)
                .map(|c| gate::column_cells(b.column(c)))
                .collect::<Result<_>>()?;
            let blobs = b.column(n).as_binary::<i64>();
            for r in 0..b.num_rows() {
                let key: Vec<Cell> = keys.iter().map(|k| k[r].clone()).collect();
                let bytes = if blobs.is_null(r) {
                    Vec::new()
                } else {
                    blobs.value(r).to_vec()
                };
                out.push((key, bytes));
            }
        }
        Ok(out)
    }

    /// The normalized digest of what this query computes: the optimized
    /// plan with table aliases replaced by the tables they stand for, the
    /// outputs and the mechanism's parameters. Equal digests get the same
    /// (cached) answer.
    pub fn digest(&self, optimized: &LogicalPlan, policy: &[u8; 32]) -> String {
        let text = normalize(optimized);
        let m = &self.mechanism;
        let mut h = Sha256::new();
        h.update(b"kexin-dp-v1\n");
        h.update(text.as_bytes());
        h.update(
            format!(
                "\n{:?}\n{:?}\n{:?}\nk={} l={} eps={} delta={} thr={}\n",
                m.outputs,
                m.args,
                m.domain.as_ref().map(Vec::len),
                m.rows_per_person,
                m.groups_per_person,
                m.epsilon,
                m.delta,
                m.threshold
            )
            .as_bytes(),
        );
        h.update(policy);
        hex::encode(h.finalize())
    }
}

/// The plan text with every alias qualifier replaced by its table and the
/// alias lines dropped, so `FROM t AS a` and `FROM t` read the same.
fn normalize(plan: &LogicalPlan) -> String {
    use datafusion::common::tree_node::TreeNodeRecursion;
    let mut names: HashMap<String, String> = HashMap::new();
    let mut derived = 0usize;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::SubqueryAlias(a) = node {
            let mut inner = a.input.as_ref();
            let canonical = loop {
                match inner {
                    LogicalPlan::SubqueryAlias(x) => inner = x.input.as_ref(),
                    LogicalPlan::Projection(p)
                        if matches!(p.input.as_ref(), LogicalPlan::TableScan(_)) =>
                    {
                        if let LogicalPlan::TableScan(s) = p.input.as_ref() {
                            break s.table_name.table().to_string();
                        }
                    }
                    LogicalPlan::TableScan(s) => break s.table_name.table().to_string(),
                    _ => {
                        derived += 1;
                        break format!("derived{derived}");
                    }
                }
            };
            names.insert(a.alias.table().to_string(), canonical);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    let text = format!("{}", plan.display_indent());
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line.trim_start().starts_with("SubqueryAlias:") {
            continue;
        }
        out.push_str(&requalify(line.trim_start(), &names));
        out.push('\n');
    }
    out
}

fn requalify(line: &str, names: &HashMap<String, String>) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    let word = |c: char| c.is_alphanumeric() || c == '_';
    while i < chars.len() {
        let starts = word(chars[i]) && (i == 0 || !(word(chars[i - 1]) || chars[i - 1] == '.'));
        if starts {
            let mut j = i;
            while j < chars.len() && word(chars[j]) {
                j += 1;
            }
            let ident: String = chars[i..j].iter().collect();
            if chars.get(j) == Some(&'.')
                && let Some(n) = names.get(&ident)
            {
                out.push_str(n);
            } else {
                out.push_str(&ident);
            }
            i = j;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// A cached DP answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stored {
    pub rows: Vec<Vec<Cell>>,
    pub accuracy: Vec<Vec<Option<Accuracy>>>,
    pub suppressed: usize,
    pub outside_domain: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, StringArray};
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn privacy(eps: f64, k: u32, l: u32, delta: f64) -> PrivacyRules {
        PrivacyRules {
            epsilon_total: 10.0,
            epsilon_per_query: eps,
            delta,
            rows_per_person: k,
            groups_per_person: l,
        }
    }

    fn rules(min_persons: u64) -> OutputRules {
        OutputRules {
            min_persons,
            round_to: 1,
            decimals: 0,
            dominance: None,
        }
    }

    /// Contributions of `rows` = (group, person, value) through the accumulator.
    fn contribute(
        k: usize,
        spec: ArgSpec,
        rows: &[(usize, &str, f64)],
        groups: usize,
    ) -> Vec<Vec<u8>> {
        let c = Contributions::new(k, vec![spec], 7);
        let mut acc = c.acc();
        let persons: ArrayRef = Arc::new(StringArray::from(
            rows.iter().map(|r| r.1).collect::<Vec<_>>(),
        ));
        let vals: ArrayRef = Arc::new(Float64Array::from(
            rows.iter().map(|r| r.2).collect::<Vec<_>>(),
        ));
        let idx: Vec<usize> = rows.iter().map(|r| r.0).collect();
        acc.update_batch(&[persons, vals], &idx, None, groups)
            .unwrap();
        let out = acc.evaluate(EmitTo::All).unwrap();
        let out = out.as_binary::<i64>();
        (0..groups).map(|g| out.value(g).to_vec()).collect()
    }

    #[test]
    fn rows_per_person_and_clamps_bound_a_person() {
        let spec = ArgSpec::new(0.0, 10.0, 0);
        // Person a has 5 rows in group 0, one far out of bounds.
        let rows = [
            (0, "a", 3.0),
            (0, "a", 4.0),
            (0, "a", 1e9),
            (0, "a", 5.0),
            (0, "a", 6.0),
            (0, "b", 2.0),
            (1, "a", 1.0),
        ];
        let blobs = contribute(2, spec, &rows, 2);
        let m = Mechanism::new(
            &privacy(1.0, 2, 2, 0.0),
            &rules(0),
            vec![spec],
            vec![Output::Key(0), Output::Count(Stat::Rows), Output::Sum(0)],
            1,
            Some(vec![vec![Cell::Int(0)], vec![Cell::Int(1)]]),
            9,
        )
        .unwrap();
        let groups = vec![
            (vec![Cell::Int(0)], blobs[0].as_slice()),
            (vec![Cell::Int(1)], blobs[1].as_slice()),
        ];
        let t = m.totals(&groups).unwrap();
        let (rows_i, sum_i) = (m.stat(Stat::Rows), m.stat(Stat::Sum(0)));
        // Group 0: a keeps 2 rows, b 1 → 3 rows, 2 persons; a's sum ≤ 2 × 10.
        assert_eq!(t[0].1[0], 2);
        assert_eq!(t[0].1[rows_i], 3);
        assert!(t[0].1[sum_i] <= 20 + 2);
        assert_eq!(t[1].1[rows_i], 1);
    }

    #[test]
    fn groups_per_person_is_enforced_deterministically() {
        let spec = ArgSpec::new(0.0, 1.0, 0);
        let rows: Vec<(usize, &str, f64)> = (0..5).map(|g| (g, "a", 1.0)).collect();
        let blobs = contribute(1, spec, &rows, 5);
        let m = Mechanism::new(
            &privacy(1.0, 1, 2, 0.0),
            &rules(0),
            vec![spec],
            vec![Output::Key(0), Output::Count(Stat::Rows)],
            1,
            Some((0..5).map(|g| vec![Cell::Int(g)]).collect()),
            3,
        )
        .unwrap();
        let groups: Vec<(Vec<Cell>, &[u8])> = (0..5)
            .map(|g| (vec![Cell::Int(g as i64)], blobs[g].as_slice()))
            .collect();
        let t1 = m.totals(&groups).unwrap();
        let kept: i128 = t1.iter().map(|(_, t)| t[0]).sum();
        assert_eq!(kept, 2, "a counts in exactly 2 of its 5 groups");
        assert_eq!(
            t1,
            m.totals(&groups).unwrap(),
            "the choice is deterministic"
        );
    }

    #[test]
    fn partial_states_merge_to_the_same_contributions() {
        let spec = ArgSpec::new(0.0, 100.0, 0);
        let c = Contributions::new(2, vec![spec], 5);
        let rows: Vec<(String, f64)> = (0..40).map(|i| (format!("p{}", i % 7), i as f64)).collect();
        let arrays = |r: &[(String, f64)]| -> Vec<ArrayRef> {
            vec![
                Arc::new(StringArray::from(
                    r.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(),
                )),
                Arc::new(Float64Array::from(
                    r.iter().map(|x| x.1).collect::<Vec<_>>(),
                )),
            ]
        };
        let mut whole = c.acc();
        whole
            .update_batch(&arrays(&rows), &vec![0; 40], None, 1)
            .unwrap();
        let mut a = c.acc();
        let mut b = c.acc();
        a.update_batch(&arrays(&rows[..17]), &[0; 17], None, 1)
            .unwrap();
        b.update_batch(&arrays(&rows[17..]), &[0; 23], None, 1)
            .unwrap();
        let mut fin = c.acc();
        fin.merge_batch(&b.state(EmitTo::All).unwrap(), &[0], 1)
            .unwrap();
        fin.merge_batch(&a.state(EmitTo::All).unwrap(), &[0], 1)
            .unwrap();
        let m = Mechanism::new(
            &privacy(1.0, 2, 1, 0.0),
            &rules(0),
            vec![spec],
            vec![Output::Sum(0)],
            0,
            Some(vec![vec![]]),
            1,
        )
        .unwrap();
        let w = whole.evaluate(EmitTo::All).unwrap();
        let f = fin.evaluate(EmitTo::All).unwrap();
        let tw = m
            .totals(&[(vec![], w.as_binary::<i64>().value(0))])
            .unwrap();
        let tf = m
            .totals(&[(vec![], f.as_binary::<i64>().value(0))])
            .unwrap();
        assert_eq!(
            tw, tf,
            "the kept rows do not depend on partitioning or order"
        );
    }

    #[test]
    fn steps_and_half_widths() {
        assert_eq!(nice_step(7.3), 10.0);
        assert_eq!(nice_step(14.0), 20.0);
        assert_eq!(nice_step(0.3), 0.5);
        assert_eq!(nice_step(1.0), 1.0);
        // Discrete Laplace, t = 10: P(|Z| > m) ≤ 5% first at m = 29.
        let m = laplace_half_width(10.0, 0.05);
        let q: f64 = (-0.1f64).exp();
        let tail = |m: f64| 2.0 * q.powf(m + 1.0) / (1.0 + q);
        assert!(tail(m) <= 0.05 && tail(m - 1.0) > 0.05, "m = {m}");
    }

    #[test]
    fn intervals_cover_the_bounded_truth() {
        // 95% nominal: over 2,000 releases, coverage should be ≥ 93%.
        let spec = ArgSpec::new(0.0, 10.0, 0);
        let m = Mechanism::new(
            &privacy(0.5, 1, 1, 0.0),
            &rules(0),
            vec![spec],
            vec![Output::Count(Stat::Rows), Output::Sum(0), Output::Avg(0)],
            0,
            Some(vec![vec![]]),
            1,
        )
        .unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        // 200 persons, one row each, values averaging 3 (bounds [0, 10],
        // midpoint 5).
        let truth = [200.0, 600.0, 3.0];
        let mut t = vec![0i128; m.stats.len()];
        t[m.stat(Stat::Persons)] = 200;
        t[m.stat(Stat::Rows)] = 200;
        t[m.stat(Stat::Count(0))] = 200;
        t[m.stat(Stat::Sum(0))] = 600;
        t[m.stat(Stat::CSum(0))] = 600 - 5 * 200;
        let mut covered = [0usize; 3];
        for _ in 0..2000 {
            let r = m.release(vec![(vec![], t.clone())], &mut rng).unwrap();
            for (c, a) in r.accuracy[0].iter().enumerate() {
                let a = a.unwrap();
                if a.interval[0] <= truth[c] && truth[c] <= a.interval[1] {
                    covered[c] += 1;
                }
            }
        }
        for c in covered {
            assert!(c >= 1860, "coverage {c}/2000");
        }
    }

    /// StatDP-style check: the output distribution of a count over a
    /// database and its neighbour with one more person differ by at most
    /// e^ε per event, up to sampling error.
    #[test]
    fn neighbouring_databases_are_indistinguishable_beyond_epsilon() {
        let eps = 0.5;
        let spec = ArgSpec::new(0.0, 1.0, 0);
        let m = Mechanism::new(
            &privacy(eps, 1, 1, 0.0),
            &rules(0),
            vec![spec],
            vec![Output::Count(Stat::Persons)],
            0,
            Some(vec![vec![]]),
            1,
        )
        .unwrap();
        let rows = |n: usize| -> Vec<(usize, String, f64)> {
            (0..n).map(|i| (0, format!("p{i}"), 1.0)).collect()
        };
        let run = |n: usize, rng: &mut ChaCha20Rng| -> BTreeMap<i64, usize> {
            let r = rows(n);
            let r: Vec<(usize, &str, f64)> = r.iter().map(|x| (x.0, x.1.as_str(), x.2)).collect();
            let blob = contribute(1, spec, &r, 1).remove(0);
            let t = m.totals(&[(vec![], blob.as_slice())]).unwrap();
            let mut hist = BTreeMap::new();
            for _ in 0..20_000 {
                let out = m.release(t.clone(), rng).unwrap();
                let Cell::Int(v) = out.rows[0][0] else {
                    panic!()
                };
                *hist.entry(v).or_default() += 1;
            }
            hist
        };
        let mut rng = ChaCha20Rng::seed_from_u64(2024);
        let d = run(50, &mut rng);
        let d1 = run(51, &mut rng);
        // One event per output value with enough mass on both sides.
        let mut checked = 0;
        for (v, a) in &d {
            let b = d1.get(v).copied().unwrap_or(0);
            if *a < 500 || b < 500 {
                continue;
            }
            let (pa, pb) = (*a as f64 / 20_000.0, b as f64 / 20_000.0);
            // 4-sigma sampling slack on each estimate.
            let slack = |p: f64| 4.0 * (p * (1.0 - p) / 20_000.0).sqrt();
            assert!(pa - slack(pa) <= eps.exp() * (pb + slack(pb)), "value {v}");
            assert!(pb - slack(pb) <= eps.exp() * (pa + slack(pa)), "value {v}");
            checked += 1;
        }
        assert!(checked >= 3, "too few events to compare");
        // And the mechanism is not trivially constant: the two differ.
        assert_ne!(d, d1);
    }

    #[test]
    fn data_keys_need_delta_and_get_a_threshold() {
        let spec = ArgSpec::new(0.0, 1.0, 0);
        let out = vec![Output::Key(0), Output::Count(Stat::Persons)];
        let err = Mechanism::new(
            &privacy(1.0, 1, 1, 0.0),
            &rules(0),
            vec![spec],
            out.clone(),
            1,
            None,
            1,
        )
        .unwrap_err();
        assert!(matches!(err, Error::Refused(r) if r.code == Code::DpPartition));
        let m = Mechanism::new(
            &privacy(1.0, 1, 1, 1e-6),
            &rules(0),
            vec![spec],
            out,
            1,
            None,
            1,
        )
        .unwrap();
        // t = 2 (ε split over persons and… only persons here: t = 1/1 = 1).
        assert!(m.threshold > 10.0, "threshold {}", m.threshold);
        // A single-person group is almost never released.
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let mut t = vec![0i128; m.stats.len()];
        t[0] = 1;
        let released = (0..20_000)
            .filter(|_| {
                !m.release(vec![(vec![Cell::Int(1)], t.clone())], &mut rng)
                    .unwrap()
                    .rows
                    .is_empty()
            })
            .count();
        assert_eq!(released, 0);
    }
}
