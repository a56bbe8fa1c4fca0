//! Differential-privacy mode: contribution bounding, noise, partition
//! selection and accuracy for scenes with `privacy = {…}`.
//!
//! A DP query runs as a scan of the researcher's (checked, masked) input
//! that projects, row by row, the group keys, the raw person key and the
//! measured arguments, clamped to their public bounds and quantized to a
//! fixed-point grid ([`Scan`], one per partition, rows bucketed by person
//! hash). Per bucket, each person then keeps at most `groups_per_person`
//! groups and `rows_per_person` rows per group — those with the smallest
//! keyed priority, so the choice is deterministic and independent of row
//! order, partitioning or the database's `random()`. The group totals are
//! summed exactly on integers, and discrete Laplace noise (CKS20,
//! [`crate::noise`]) calibrated to the bounded contribution is added to
//! every measured total. Released values are derived from the noisy totals
//! only (post-processing) and snapped to a grid no finer than their noise
//! scale.
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

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::logical_expr::{Expr, JoinType, LogicalPlan, cast as cast_expr, lit};
use rand::{CryptoRng, Rng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cells::{Identity, each_person};
use crate::error::{Code, Error, Result, refuse};
use crate::gate::{self, Cell};
use crate::noise::{Ratio, discrete_laplace};
use crate::policy::{Dataset, OutputRules, PrivacyRules, PublicValue};
use crate::udf::QueryUdfs;

/// At most this many measured arguments per query.
const MAX_ARGS: usize = 16;
/// At most this many cells in an enumerated public domain.
const MAX_DOMAIN_CELLS: usize = 10_000;
/// Fixed-point grid: at most this many steps between 0 and a bound.
const QUANTUM_STEPS: f64 = 65_536.0;

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

// ---------------------------------------------------------------- scan and bounding

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
        // Round half away from zero without a libm call (`as` truncates,
        // saturating beyond the i64 range before the clamp).
        let y = x / self.quantum;
        let q = (y + 0.5f64.copysign(y)) as i64;
        Some(q.clamp(self.qlo(), self.qhi()))
    }
    /// max |q| over the bounds, in quanta.
    fn qmax(&self) -> u64 {
        self.qlo().unsigned_abs().max(self.qhi().unsigned_abs())
    }
    /// The midpoint of the bounds, in quanta.
    pub(crate) fn qmid(&self) -> i64 {
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

/// How rows are kept: at most `k` per person and group, at most `l` groups
/// per person, both by keyed priority.
#[derive(Debug, Clone)]
pub struct Bounding {
    pub k: usize,
    pub l: usize,
    pub args: Vec<ArgSpec>,
    /// Keys of the row and group priorities.
    pub row_key: u64,
    pub group_key: u64,
}

/// The distinct group keys seen, as Arrow row bytes.
#[derive(Debug, Default)]
struct Groups {
    index: HashMap<u64, Vec<u32>, BuildHasherDefault<Identity>>,
    keys: Vec<Vec<u8>>,
    hashes: Vec<u64>,
}

impl Groups {
    fn id(&mut self, bytes: &[u8]) -> u32 {
        let h = key_hash(bytes);
        let ids = self.index.entry(h).or_default();
        for id in ids.iter() {
            if self.keys[*id as usize] == bytes {
                return *id;
            }
        }
        let id = self.keys.len() as u32;
        self.keys.push(bytes.to_vec());
        self.hashes.push(h);
        ids.push(id);
        id
    }
}

/// A fast hash of group-key bytes, eight bytes at a time.
fn key_hash(bytes: &[u8]) -> u64 {
    let mut h = 0x9e37_79b9_7f4a_7c15u64 ^ bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = mix(h, u64::from_le_bytes(w), 0);
    }
    let rest = chunks.remainder();
    let mut w = [0u8; 8];
    w[..rest.len()].copy_from_slice(rest);
    mix(h, u64::from_le_bytes(w), 1)
}

/// Rows are bucketed by the top bits of the person hash, so that the
/// per-person state of one bucket fits in cache while it is built.
const BUCKET_BITS: u32 = 8;

/// The scan rows of one bucket: person hash, group id, null mask and the
/// quantized, clamped arguments (`m` per row).
#[derive(Debug, Default)]
struct Rows {
    /// (person, group id, null mask) per row.
    rows: Vec<(u64, u32, u32)>,
    vals: Vec<i64>,
}

/// One partition of the DP scan: its rows, quantized and bucketed by person.
/// Nothing is bounded yet; [`Mechanism::totals`] does that per bucket.
#[derive(Debug)]
pub struct Scan {
    key_fields: Vec<SortField>,
    args: Vec<ArgSpec>,
    groups: Groups,
    buckets: Vec<Rows>,
    rows: usize,
}

impl Scan {
    /// A scan of batches laid out as `[keys…, person, args…]`.
    pub fn new(args: &[ArgSpec], key_types: &[DataType]) -> Scan {
        Scan {
            key_fields: key_types
                .iter()
                .map(|t| SortField::new(t.clone()))
                .collect(),
            args: args.to_vec(),
            groups: Groups::default(),
            buckets: (0..1 << BUCKET_BITS).map(|_| Rows::default()).collect(),
            rows: 0,
        }
    }

    /// Approximate heap use, for the node's memory limit.
    pub fn bytes(&self) -> usize {
        self.rows * (16 + 8 * self.args.len())
            + self.groups.keys.iter().map(|k| k.len() + 48).sum::<usize>()
    }

    /// Add one batch of the scan.
    pub fn add_batch(&mut self, batch: &RecordBatch) -> Result<()> {
        let nk = self.key_fields.len();
        let m = self.args.len();
        if batch.num_columns() != nk + 1 + m || m > MAX_ARGS {
            return Err(internal("unexpected scan width"));
        }
        let gids: Vec<u32> = if nk == 0 {
            vec![self.groups.id(&[]); batch.num_rows()]
        } else if nk == 1 && *batch.column(0).data_type() == DataType::Utf8View {
            self.view_ids(batch.column(0))?
        } else {
            let conv = RowConverter::new(self.key_fields.clone()).map_err(internal)?;
            let rows = conv
                .convert_columns(&batch.columns()[..nk])
                .map_err(internal)?;
            let mut out = Vec::with_capacity(batch.num_rows());
            let mut last: Option<(usize, u32)> = None;
            for i in 0..batch.num_rows() {
                let row = rows.row(i);
                let id = match last {
                    Some((j, id)) if rows.row(j) == row => id,
                    _ => self.groups.id(row.as_ref()),
                };
                last = Some((i, id));
                out.push(id);
            }
            out
        };
        let cols: Vec<ArrayRef> = batch.columns()[nk + 1..]
            .iter()
            .map(|a| cast(a, &DataType::Float64))
            .collect::<std::result::Result<_, _>>()
            .map_err(internal)?;
        let cols: Vec<_> = cols
            .iter()
            .map(|c| c.as_primitive::<Float64Type>())
            .collect();
        let args = &self.args;
        let buckets = &mut self.buckets;
        let mut added = 0;
        each_person(batch.column(nk), None, |i, person| {
            let bucket = &mut buckets[(person >> (64 - BUCKET_BITS)) as usize];
            let mut nulls = 0u32;
            for (a, col) in cols.iter().enumerate() {
                let q = if col.is_null(i) {
                    None
                } else {
                    args[a].quantize(col.value(i))
                };
                match q {
                    Some(q) => bucket.vals.push(q),
                    None => {
                        bucket.vals.push(0);
                        nulls |= 1 << a;
                    }
                }
            }
            bucket.rows.push((person, gids[i], nulls));
            added += 1;
        })
        .map_err(internal)?;
        self.rows += added;
        Ok(())
    }
}

impl Scan {
    /// Group ids of a single string-view key column. Within one array, equal
    /// views are equal strings (short strings are inline; long ones point
    /// at the same bytes), and Parquet's dictionary-encoded columns decode
    /// to repeated views: so each distinct view is encoded once, not each
    /// row. The cache is per batch, since long views index its buffers.
    fn view_ids(&mut self, col: &ArrayRef) -> Result<Vec<u32>> {
        let arr = col.as_string_view();
        let views = arr.views();
        let conv = RowConverter::new(self.key_fields.clone()).map_err(internal)?;
        let mut cache: HashMap<u128, u32, BuildHasherDefault<ViewHasher>> = HashMap::default();
        let mut null_id = None;
        let mut out = Vec::with_capacity(arr.len());
        for (i, view) in views.iter().enumerate() {
            let cached = if arr.is_null(i) {
                null_id
            } else {
                cache.get(view).copied()
            };
            let id = match cached {
                Some(id) => id,
                None => {
                    let rows = conv.convert_columns(&[col.slice(i, 1)]).map_err(internal)?;
                    let id = self.groups.id(rows.row(0).as_ref());
                    if arr.is_null(i) {
                        null_id = Some(id);
                    } else if cache.len() < 1 << 16 {
                        cache.insert(*view, id);
                    }
                    id
                }
            };
            out.push(id);
        }
        Ok(out)
    }
}

/// Hashes a 128-bit string view by mixing its halves.
#[derive(Default)]
struct ViewHasher(u64);

impl std::hash::Hasher for ViewHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = key_hash(bytes);
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = mix(0, v as u64, (v >> 64) as u64);
    }
}

/// The kept contributions of the persons of one bucket: for each person at
/// most `l` group entries (the smallest keyed group priorities), each with
/// at most `k` rows (the smallest keyed row priorities). Both priorities
/// depend only on the person, the group key and the row's values, so what is
/// kept does not depend on row order or partitioning.
#[derive(Debug, Default)]
struct PersonTable {
    index: HashMap<u64, u32, BuildHasherDefault<Identity>>,
    /// Per person: group entries in use.
    n_groups: Vec<u8>,
    /// Per group entry (person × l): group id, group priority, rows in use.
    gid: Vec<u32>,
    gprio: Vec<u64>,
    used: Vec<u8>,
    /// Per row (entry × k): row priority, null mask, values (× m).
    rprio: Vec<u64>,
    nulls: Vec<u32>,
    vals: Vec<i64>,
    /// The last person's slot: rows of one person often come together.
    last: Option<(u64, usize)>,
}

impl PersonTable {
    fn clear(&mut self) {
        self.index.clear();
        self.n_groups.clear();
        self.gid.clear();
        self.gprio.clear();
        self.used.clear();
        self.rprio.clear();
        self.nulls.clear();
        self.vals.clear();
        self.last = None;
    }

    fn slot(&mut self, person: u64, k: usize, l: usize, m: usize) -> usize {
        if let Some((p, s)) = self.last
            && p == person
        {
            return s;
        }
        let s = match self.index.get(&person) {
            Some(s) => *s as usize,
            None => {
                let s = self.n_groups.len();
                self.index.insert(person, s as u32);
                self.n_groups.push(0);
                self.gid.resize(self.gid.len() + l, 0);
                self.gprio.resize(self.gprio.len() + l, 0);
                self.used.resize(self.used.len() + l, 0);
                self.rprio.resize(self.rprio.len() + l * k, 0);
                self.nulls.resize(self.nulls.len() + l * k, 0);
                self.vals.resize(self.vals.len() + l * k * m, 0);
                s
            }
        };
        self.last = Some((person, s));
        s
    }

    /// Keep a row of `person` in group `g` if its group and row priorities
    /// are among the smallest.
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        k: usize,
        l: usize,
        person: u64,
        g: u32,
        gp: u64,
        rp: u64,
        vals: &[i64],
        nulls: u32,
    ) {
        let m = vals.len();
        let s = self.slot(person, k, l, m);
        let base = s * l;
        let n = self.n_groups[s] as usize;
        let entry = match (0..n).find(|j| self.gid[base + j] == g) {
            Some(j) => base + j,
            None if n < l => {
                self.n_groups[s] += 1;
                self.gid[base + n] = g;
                self.gprio[base + n] = gp;
                self.used[base + n] = 0;
                base + n
            }
            None => {
                // Replace the group with the largest priority, if larger.
                let j = (0..n).max_by_key(|j| self.gprio[base + j]).unwrap_or(0);
                if gp >= self.gprio[base + j] {
                    return;
                }
                self.gid[base + j] = g;
                self.gprio[base + j] = gp;
                self.used[base + j] = 0;
                base + j
            }
        };
        let rbase = entry * k;
        let used = self.used[entry] as usize;
        let r = if used < k {
            self.used[entry] += 1;
            used
        } else {
            let r = (0..k).max_by_key(|r| self.rprio[rbase + r]).unwrap_or(0);
            if rp >= self.rprio[rbase + r] {
                return;
            }
            r
        };
        let at = rbase + r;
        self.rprio[at] = rp;
        self.nulls[at] = nulls;
        self.vals[at * m..(at + 1) * m].copy_from_slice(vals);
    }
}

/// One numbering of the group keys across partitions: the groups, each
/// partition's local-to-global ids, and the keys as cells.
#[allow(clippy::type_complexity)]
fn merge_groups(scans: &[Scan]) -> Result<(Groups, Vec<Vec<u32>>, Vec<Vec<Cell>>)> {
    let mut groups = Groups::default();
    let ids: Vec<Vec<u32>> = scans
        .iter()
        .map(|s| s.groups.keys.iter().map(|k| groups.id(k)).collect())
        .collect();
    let key_fields = scans
        .first()
        .map(|s| s.key_fields.clone())
        .unwrap_or_default();
    let keys: Vec<Vec<Cell>> = if key_fields.is_empty() {
        vec![vec![]; groups.keys.len()]
    } else {
        let conv = RowConverter::new(key_fields).map_err(internal)?;
        let parser = conv.parser();
        let arrays = conv
            .convert_rows(groups.keys.iter().map(|k| parser.parse(k)))
            .map_err(internal)?;
        let cols: Vec<Vec<Cell>> = arrays
            .iter()
            .map(gate::column_cells)
            .collect::<Result<_>>()?;
        (0..groups.keys.len())
            .map(|g| cols.iter().map(|c| c[g].clone()).collect())
            .collect()
    };
    Ok((groups, ids, keys))
}

// ---------------------------------------------------------------- the mechanism

/// A measured total per group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
#[derive(Debug, Clone, Copy, PartialEq)]
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

/// Everything the release needs besides the data.
#[derive(Debug, Clone)]
pub struct Mechanism {
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
            args,
            stats,
            scales,
            outputs,
            keys,
            domain,
            threshold,
            epsilon: privacy.epsilon_per_query,
            delta,
        })
    }

    fn stat(&self, s: Stat) -> usize {
        self.stats.iter().position(|x| *x == s).unwrap_or(0)
    }

    /// Exact bounded totals per group: the partitions' rows, bucket by
    /// bucket (in parallel), go through the per-person bounding, and the
    /// kept contributions are summed on integers.
    pub fn totals(&self, b: &Bounding, scans: &[Scan]) -> Result<Vec<(Vec<Cell>, Vec<i128>)>> {
        let (groups, ids, keys) = merge_groups(scans)?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let parts: Vec<Vec<Vec<i128>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (groups, ids) = (&groups, &ids);
                    scope.spawn(move || {
                        let mut totals = vec![vec![0i128; self.stats.len()]; groups.keys.len()];
                        let mut table = PersonTable::default();
                        for bucket in (t..1 << BUCKET_BITS).step_by(threads) {
                            table.clear();
                            self.bound(b, scans, ids, groups, bucket, &mut table);
                            self.sum(b, &table, &mut totals);
                        }
                        totals
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().map_err(|_| internal("a bounding thread panicked")))
                .collect::<Result<_>>()
        })?;
        let mut totals = vec![vec![0i128; self.stats.len()]; groups.keys.len()];
        for part in parts {
            for (t, p) in totals.iter_mut().zip(part) {
                for (x, y) in t.iter_mut().zip(p) {
                    *x += y;
                }
            }
        }
        Ok(keys.into_iter().zip(totals).collect())
    }

    /// Exact totals per group with no per-person bounding: every kept row
    /// counts, persons are counted once per group. For federated scenes
    /// without DP, whose joint result must equal the pooled computation.
    pub fn exact_totals(&self, scans: &[Scan]) -> Result<Vec<(Vec<Cell>, Vec<i128>)>> {
        let (groups, ids, keys) = merge_groups(scans)?;
        let n = groups.keys.len();
        // Rows are bucketed by person hash, so buckets hold disjoint persons:
        // each thread takes every `threads`-th bucket, counts distinct
        // (person, group) pairs by sorting, and sums the other totals.
        let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
        let m = self.args.len();
        let mids: Vec<i64> = self.args.iter().map(ArgSpec::qmid).collect();
        let parts: Vec<Vec<Vec<i128>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (ids, mids) = (&ids, &mids);
                    scope.spawn(move || {
                        let mut totals = vec![vec![0i128; self.stats.len()]; n];
                        let mut pairs: Vec<(u64, u32)> = Vec::new();
                        for bucket in (t..1 << BUCKET_BITS).step_by(threads) {
                            pairs.clear();
                            for (scan, ids) in scans.iter().zip(ids) {
                                let rows = &scan.buckets[bucket];
                                for (r, (person, gid, nulls)) in
                                    rows.rows.iter().copied().enumerate()
                                {
                                    let g = ids[gid as usize];
                                    pairs.push((person, g));
                                    let vals = &rows.vals[r * m..(r + 1) * m];
                                    self.add_row(&mut totals[g as usize], vals, nulls, mids);
                                }
                            }
                            pairs.sort_unstable();
                            pairs.dedup();
                            if let Some(si) = self.stats.iter().position(|s| *s == Stat::Persons) {
                                for (_, g) in &pairs {
                                    totals[*g as usize][si] += 1;
                                }
                            }
                        }
                        totals
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().map_err(|_| internal("a totals thread panicked")))
                .collect::<Result<_>>()
        })?;
        let mut totals = vec![vec![0i128; self.stats.len()]; n];
        for part in parts {
            for (t, p) in totals.iter_mut().zip(part) {
                for (x, y) in t.iter_mut().zip(p) {
                    *x += y;
                }
            }
        }
        Ok(keys.into_iter().zip(totals).collect())
    }

    /// One kept row's contribution to every total but the person count
    /// (`mids`: each argument's midpoint in quanta, computed once by the
    /// caller).
    fn add_row(&self, t: &mut [i128], vals: &[i64], nulls: u32, mids: &[i64]) {
        for (si, st) in self.stats.iter().enumerate() {
            let present = |i: usize| nulls & (1 << i) == 0;
            match *st {
                Stat::Rows => t[si] += 1,
                Stat::Count(i) if present(i) => t[si] += 1,
                Stat::Sum(i) if present(i) => t[si] += i128::from(vals[i]),
                Stat::CSum(i) if present(i) => t[si] += i128::from(vals[i] - mids[i]),
                Stat::CSumSq(i) if present(i) => {
                    let c = i128::from(vals[i] - mids[i]);
                    t[si] += c * c
                }
                _ => {}
            }
        }
    }

    /// The discrete Laplace scale of stat `i`, in grid units.
    pub fn scale(&self, i: usize) -> f64 {
        self.scales.get(i).map_or(0.0, |r| as_f64(*r))
    }

    /// Run one bucket's rows of every partition through the bounding.
    fn bound(
        &self,
        b: &Bounding,
        scans: &[Scan],
        ids: &[Vec<u32>],
        groups: &Groups,
        bucket: usize,
        table: &mut PersonTable,
    ) {
        let m = self.args.len();
        for (scan, ids) in scans.iter().zip(ids) {
            let rows = &scan.buckets[bucket];
            for (i, (person, gid, nulls)) in rows.rows.iter().copied().enumerate() {
                let g = ids[gid as usize];
                let vals = &rows.vals[i * m..(i + 1) * m];
                let gp = mix(b.group_key, person, groups.hashes[g as usize]);
                // Rows without arguments are interchangeable: no priority needed.
                let rp = if m == 0 {
                    0
                } else {
                    row_priority(b.row_key, person, vals, nulls)
                };
                table.add(b.k, b.l, person, g, gp, rp, vals, nulls);
            }
        }
    }

    /// Add one bucket's kept contributions to the group totals.
    fn sum(&self, b: &Bounding, table: &PersonTable, totals: &mut [Vec<i128>]) {
        let (k, l, m) = (b.k, b.l, self.args.len());
        let mids: Vec<i64> = self.args.iter().map(ArgSpec::qmid).collect();
        for s in 0..table.n_groups.len() {
            for j in 0..table.n_groups[s] as usize {
                let e = s * l + j;
                let t = &mut totals[table.gid[e] as usize];
                let used = table.used[e] as usize;
                if let Some(si) = self.stats.iter().position(|s| *s == Stat::Persons) {
                    t[si] += 1;
                }
                for r in 0..used {
                    let at = e * k + r;
                    let vals = &table.vals[at * m..(at + 1) * m];
                    self.add_row(t, vals, table.nulls[at], &mids);
                }
            }
        }
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
                // Keys outside the domain are dropped without a word: even
                // whether there are any would be an exact fact about the data.
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
            // With keys from the data, the number of candidate groups is an
            // exact count of distinct keys: it is not reported.
            suppressed: if self.domain.is_some() { small } else { 0 },
        })
    }

    /// 95%-interval half-width (in grid units) of stat `s` at level `alpha`.
    fn half(&self, s: Stat, alpha: f64) -> f64 {
        laplace_half_width(as_f64(self.scales[self.stat(s)]), alpha)
    }

    pub(crate) fn value(
        &self,
        o: Output,
        key: &[Cell],
        noisy: &[i128],
    ) -> (Cell, Option<Accuracy>) {
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

/// What a DP query releases; stored as JSON in the release cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpRows {
    pub rows: Vec<Vec<Cell>>,
    pub accuracy: Vec<Vec<Option<Accuracy>>>,
    /// Public-domain cells whose noisy person count missed the threshold
    /// (always 0 with keys from the data, whose candidates are not counted).
    pub suppressed: usize,
}

// ---------------------------------------------------------------- planning

/// A planned DP query.
#[derive(Debug)]
pub struct DpQuery {
    /// The scan: `[keys…, person, args…]`, one row per input row.
    pub plan: LogicalPlan,
    pub mechanism: Mechanism,
    /// Output column names, as the researcher wrote them.
    pub columns: Vec<String>,
    pub bounding: Bounding,
    key_types: Vec<DataType>,
}

/// Declared bounds of a base column, by (dataset, column).
type BaseBounds<'a> = dyn Fn(&(String, String)) -> Option<(f64, f64)> + 'a;

/// Public bounds of a measured aggregate argument: a column with declared
/// bounds (through casts, aliases and derived tables), an approved UDF
/// with a declared range, a numeric literal, or a CASE whose every
/// non-NULL branch has bounds (their union). The mechanism clamps the
/// argument to these bounds whatever it computes, so they set the
/// sensitivity; a wrong guess here costs accuracy, never privacy.
fn value_bounds(
    e: &Expr,
    input: &LogicalPlan,
    base: &BaseBounds<'_>,
    udfs: &QueryUdfs,
    depth: usize,
) -> Option<(f64, f64)> {
    if depth > 32 {
        return None;
    }
    let union = |a: Option<(f64, f64)>, b: (f64, f64)| match a {
        None => Some(b),
        Some((lo, hi)) => Some((lo.min(b.0), hi.max(b.1))),
    };
    match strip(e) {
        Expr::ScalarFunction(s) => udfs
            .facts
            .get(s.func.name())
            .and_then(|u| u.range)
            .map(|(lo, hi)| (lo as f64, hi as f64)),
        Expr::Literal(v, _) => match v.cast_to(&DataType::Float64).ok()? {
            datafusion::common::ScalarValue::Float64(Some(x)) if x.is_finite() => Some((x, x)),
            _ => None,
        },
        Expr::Cast(c) => value_bounds(&c.expr, input, base, udfs, depth + 1),
        Expr::TryCast(c) => value_bounds(&c.expr, input, base, udfs, depth + 1),
        Expr::Case(c) => {
            let mut b = None;
            let branches = c
                .when_then_expr
                .iter()
                .map(|(_, then)| then.as_ref())
                .chain(c.else_expr.as_deref());
            for branch in branches {
                if matches!(strip(branch), Expr::Literal(v, _) if v.is_null()) {
                    continue;
                }
                b = union(b, value_bounds(branch, input, base, udfs, depth + 1)?);
            }
            b
        }
        Expr::Column(c) => {
            if let Some(o) = expr_origin(e, input) {
                return base(&o);
            }
            // A computed column of a derived table: its defining expression.
            let i = input.schema().index_of_column(c).ok()?;
            let (def, below) = defining(input, i)?;
            value_bounds(def, below, base, udfs, depth + 1)
        }
        _ => None,
    }
}

/// The expression that computes column `idx` of `plan`, and the plan it is
/// computed over (through aliases, filters and joins).
fn defining(plan: &LogicalPlan, idx: usize) -> Option<(&Expr, &LogicalPlan)> {
    match plan {
        LogicalPlan::Projection(p) => match strip(p.expr.get(idx)?) {
            Expr::Column(c) => defining(&p.input, p.input.schema().index_of_column(c).ok()?),
            other => Some((other, p.input.as_ref())),
        },
        LogicalPlan::SubqueryAlias(a) => defining(&a.input, idx),
        LogicalPlan::Filter(f) => defining(&f.input, idx),
        LogicalPlan::Join(j) => {
            let (side, i) = join_side(j, idx)?;
            defining(side, i)
        }
        _ => None,
    }
}

/// The input of join `j` that its output column `idx` comes from, and the
/// column's index there.
fn join_side(j: &datafusion::logical_expr::Join, idx: usize) -> Option<(&LogicalPlan, usize)> {
    let nl = j.left.schema().fields().len();
    match j.join_type {
        JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full => {
            if idx < nl {
                Some((&j.left, idx))
            } else {
                Some((&j.right, idx - nl))
            }
        }
        JoinType::LeftSemi | JoinType::LeftAnti => Some((&j.left, idx)),
        JoinType::RightSemi | JoinType::RightAnti => Some((&j.right, idx)),
        _ => None,
    }
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
            let (side, i) = join_side(j, idx)?;
            origin(side, i)
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

/// Whether the query has post-processing that runs on the released rows
/// as a table: HAVING, ORDER BY or LIMIT above the releasing aggregate.
pub fn has_post_processing(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Sort(_) | LogicalPlan::Limit(_) | LogicalPlan::Filter(_) => true,
        LogicalPlan::Projection(p) => has_post_processing(&p.input),
        LogicalPlan::SubqueryAlias(a) => has_post_processing(&a.input),
        _ => false,
    }
}

/// For a query with post-processing: which column of the releasing
/// aggregate each output column is. As without post-processing, each
/// output column is a group key or one aggregate call (its interval then
/// follows it); HAVING, ORDER BY and LIMIT may use any of the aggregate's
/// columns.
pub fn post_output_map(plan: &LogicalPlan) -> Result<Vec<usize>> {
    outputs(plan, true).map(|(_, m)| m)
}

/// Resolve the researcher's output columns to the releasing aggregate's
/// output columns; `through_post` lets HAVING, ORDER BY and LIMIT pass
/// (they run on released rows, see [`post_output_map`]).
fn outputs(
    plan: &LogicalPlan,
    through_post: bool,
) -> Result<(&datafusion::logical_expr::Aggregate, Vec<usize>)> {
    match plan {
        LogicalPlan::Sort(s) if through_post => outputs(&s.input, true),
        LogicalPlan::Limit(l) if through_post => outputs(&l.input, true),
        LogicalPlan::Filter(f) if through_post => outputs(&f.input, true),
        LogicalPlan::Projection(p) => {
            let (agg, below) = outputs(&p.input, through_post)?;
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
        LogicalPlan::SubqueryAlias(a) => outputs(&a.input, through_post),
        LogicalPlan::Aggregate(a) => Ok((a, (0..a.schema.fields().len()).collect())),
        LogicalPlan::Sort(_) | LogicalPlan::Limit(_) => refuse(
            Code::DpShape,
            "ORDER BY and LIMIT are not supported in federated scenes (released rows come sorted by group key)",
        ),
        LogicalPlan::Filter(_) => refuse(
            Code::ShapeHaving,
            "HAVING is not supported in federated scenes (filter the released rows yourself)",
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
    let (agg, map) = outputs(&plan, false)?;
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
        let base = |o: &(String, String)| column_policy(o).and_then(|(_, c)| c.bounds);
        let Some((lo, hi)) = value_bounds(&arg, input, &base, udfs, 0) else {
            return refuse(
                Code::DpBounds,
                "DP aggregates take a column with public bounds, an approved UDF with a declared range, or a CASE whose every branch is one of these or a number",
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

    // The executed plan: the researcher's keys, the person key and the
    // measured arguments, row by row; the bounding happens in PersonTable.
    let (input, pk) = gate::carry(input.clone())?;
    let mut exprs: Vec<Expr> = agg
        .group_expr
        .iter()
        .enumerate()
        .map(|(i, g)| strip(g).clone().alias(format!("__kexin_key{i}")))
        .collect();
    exprs.push(Expr::Column(pk).alias("__kexin_person"));
    exprs.extend(
        args.iter()
            .enumerate()
            .map(|(i, (e, _))| e.clone().alias(format!("__kexin_arg{i}"))),
    );
    let projection =
        datafusion::logical_expr::Projection::try_new(exprs, Arc::new(input)).map_err(internal)?;
    let key_types: Vec<DataType> = projection
        .schema
        .fields()
        .iter()
        .take(nkeys)
        .map(|f| f.data_type().clone())
        .collect();
    let specs: Vec<ArgSpec> = args.iter().map(|(_, s)| *s).collect();
    let bounding = Bounding {
        k: privacy.rows_per_person as usize,
        l: privacy.groups_per_person as usize,
        args: specs.clone(),
        row_key,
        group_key,
    };
    let mechanism = Mechanism::new(privacy, output, specs, outputs, nkeys, domain)?;
    Ok(DpQuery {
        plan: LogicalPlan::Projection(projection),
        mechanism,
        columns,
        bounding,
        key_types,
    })
}

impl DpQuery {
    /// An empty scan for one partition of this query.
    pub fn scan(&self) -> Scan {
        Scan::new(&self.bounding.args, &self.key_types)
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
                self.bounding.k,
                self.bounding.l,
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
                    // A consent scene's scan: the consent filter sits under
                    // the mask projection.
                    LogicalPlan::Projection(p)
                        if matches!(p.input.as_ref(), LogicalPlan::Filter(f)
                            if matches!(f.input.as_ref(), LogicalPlan::TableScan(_))) =>
                    {
                        if let LogicalPlan::Filter(f) = p.input.as_ref()
                            && let LogicalPlan::TableScan(s) = f.input.as_ref()
                        {
                            break s.table_name.table().to_string();
                        }
                    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, Int64Array, StringArray};
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

    fn bounding(k: usize, l: usize, spec: ArgSpec) -> Bounding {
        Bounding {
            k,
            l,
            args: vec![spec],
            row_key: 7,
            group_key: 9,
        }
    }

    /// A scan of `rows` = (group, person, value); without groups when
    /// `keyed` is false.
    fn scan(spec: ArgSpec, rows: &[(i64, &str, f64)], keyed: bool) -> Scan {
        let mut cols: Vec<(&str, ArrayRef)> = Vec::new();
        if keyed {
            cols.push((
                "g",
                Arc::new(Int64Array::from(
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                )),
            ));
        }
        cols.push((
            "p",
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
        ));
        cols.push((
            "v",
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            )),
        ));
        let types: &[DataType] = if keyed { &[DataType::Int64] } else { &[] };
        let mut s = Scan::new(&[spec], types);
        s.add_batch(&RecordBatch::try_from_iter(cols).unwrap())
            .unwrap();
        s
    }

    fn by_key(t: Vec<(Vec<Cell>, Vec<i128>)>) -> BTreeMap<String, Vec<i128>> {
        t.into_iter().map(|(k, v)| (key_text(&k), v)).collect()
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
        let m = Mechanism::new(
            &privacy(1.0, 2, 2, 0.0),
            &rules(0),
            vec![spec],
            vec![Output::Key(0), Output::Count(Stat::Rows), Output::Sum(0)],
            1,
            Some(vec![vec![Cell::Int(0)], vec![Cell::Int(1)]]),
        )
        .unwrap();
        let t = by_key(
            m.totals(&bounding(2, 2, spec), &[scan(spec, &rows, true)])
                .unwrap(),
        );
        let (rows_i, sum_i) = (m.stat(Stat::Rows), m.stat(Stat::Sum(0)));
        // Group 0: a keeps 2 rows, b 1 → 3 rows, 2 persons; a's sum ≤ 2 × 10.
        let g0 = &t[&key_text(&[Cell::Int(0)])];
        assert_eq!(g0[0], 2);
        assert_eq!(g0[rows_i], 3);
        assert!(g0[sum_i] <= 20 + 2);
        assert_eq!(t[&key_text(&[Cell::Int(1)])][rows_i], 1);
    }

    #[test]
    fn groups_per_person_is_enforced_deterministically() {
        let spec = ArgSpec::new(0.0, 1.0, 0);
        let rows: Vec<(i64, &str, f64)> = (0..5).map(|g| (g, "a", 1.0)).collect();
        let m = Mechanism::new(
            &privacy(1.0, 1, 2, 0.0),
            &rules(0),
            vec![spec],
            vec![Output::Key(0), Output::Count(Stat::Rows)],
            1,
            Some((0..5).map(|g| vec![Cell::Int(g)]).collect()),
        )
        .unwrap();
        let b = bounding(1, 2, spec);
        let t1 = m.totals(&b, &[scan(spec, &rows, true)]).unwrap();
        let kept: i128 = t1.iter().map(|(_, t)| t[0]).sum();
        assert_eq!(kept, 2, "a counts in exactly 2 of its 5 groups");
        let mut reversed = rows.clone();
        reversed.reverse();
        assert_eq!(
            by_key(t1),
            by_key(m.totals(&b, &[scan(spec, &reversed, true)]).unwrap()),
            "the choice does not depend on row order"
        );
    }

    #[test]
    fn partitioning_does_not_change_what_is_kept() {
        let spec = ArgSpec::new(0.0, 100.0, 0);
        let names: Vec<String> = (0..40).map(|i| format!("p{}", i % 7)).collect();
        let rows: Vec<(i64, &str, f64)> = (0..40)
            .map(|i| (i as i64 % 3, names[i].as_str(), i as f64))
            .collect();
        let m = Mechanism::new(
            &privacy(1.0, 2, 2, 0.0),
            &rules(0),
            vec![spec],
            vec![Output::Key(0), Output::Sum(0)],
            1,
            Some((0..3).map(|g| vec![Cell::Int(g)]).collect()),
        )
        .unwrap();
        let b = bounding(2, 2, spec);
        let whole = m.totals(&b, &[scan(spec, &rows, true)]).unwrap();
        let split = m
            .totals(
                &b,
                &[scan(spec, &rows[17..], true), scan(spec, &rows[..17], true)],
            )
            .unwrap();
        assert_eq!(
            by_key(whole),
            by_key(split),
            "the kept rows do not depend on partitioning or order"
        );
    }

    #[test]
    fn string_view_keys_group_by_value() {
        use datafusion::arrow::array::StringViewArray;
        let spec = ArgSpec::new(0.0, 1.0, 0);
        // Long and short keys, repeated and as separate copies, and a null.
        let long = "a-department-name-longer-than-twelve";
        let keys = StringViewArray::from(vec![
            Some(long),
            Some("short"),
            Some(long),
            None,
            Some("short"),
            None,
        ]);
        let batch = RecordBatch::try_from_iter(vec![
            ("g", Arc::new(keys) as ArrayRef),
            (
                "p",
                Arc::new(StringArray::from(vec!["a", "b", "c", "d", "e", "f"])) as ArrayRef,
            ),
            ("v", Arc::new(Float64Array::from(vec![1.0; 6])) as ArrayRef),
        ])
        .unwrap();
        let mut sc = Scan::new(&[spec], &[DataType::Utf8View]);
        sc.add_batch(&batch).unwrap();
        let m = Mechanism::new(
            &privacy(1.0, 1, 1, 1e-6),
            &rules(0),
            vec![spec],
            vec![Output::Key(0), Output::Count(Stat::Rows)],
            1,
            None,
        )
        .unwrap();
        let t = by_key(m.totals(&bounding(1, 1, spec), &[sc]).unwrap());
        assert_eq!(t.len(), 3);
        assert_eq!(t[&key_text(&[Cell::Text(long.into())])][0], 2);
        assert_eq!(t[&key_text(&[Cell::Text("short".into())])][0], 2);
        assert_eq!(t[&key_text(&[Cell::Null])][0], 2);
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
        )
        .unwrap();
        let run = |n: usize, rng: &mut ChaCha20Rng| -> BTreeMap<i64, usize> {
            // Each person has three rows; bounding keeps one.
            let names: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
            let r: Vec<(i64, &str, f64)> = names
                .iter()
                .flat_map(|p| [(0, p.as_str(), 1.0); 3])
                .collect();
            let t = m
                .totals(&bounding(1, 1, spec), &[scan(spec, &r, false)])
                .unwrap();
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
        )
        .unwrap();
        // Only persons are measured: t = 1, τ = 1 + ⌈ln(1/(δ(1+e⁻¹)))⌉.
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
