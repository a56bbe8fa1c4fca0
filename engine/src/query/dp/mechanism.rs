//! DP steps 5–7: the mechanism over the bounded totals: noise scales,
//! discrete Laplace noise, partition selection, values snapped to a grid,
//! accuracy intervals, and the exact totals of federated exact scenes.

// The parent's imports and its siblings' items: one DP module, cut in
// three files.
use super::*;

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
    #[allow(
        clippy::too_many_arguments,
        reason = "the calibration's inputs mirror the scene's privacy and output rules"
    )]
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

    pub(super) fn stat(&self, s: Stat) -> usize {
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
    pub(super) fn add_row(&self, t: &mut [i128], vals: &[i64], nulls: u32, mids: &[i64]) {
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
    pub(super) fn bound(
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
    pub(super) fn sum(&self, b: &Bounding, table: &PersonTable, totals: &mut [Vec<i128>]) {
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
        let mut contribution = crate::accounting::Contribution {
            persons: Some(0),
            rows: 0,
        };
        let rows_at = self.stats.iter().position(|s| *s == Stat::Rows);
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
            contribution.persons = Some(
                contribution.persons.unwrap_or(0) + u64::try_from(t[0].max(0)).unwrap_or(u64::MAX),
            );
            if let Some(r) = rows_at {
                contribution.rows += u64::try_from(t[r].max(0)).unwrap_or(u64::MAX);
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
            contribution,
        })
    }

    /// 95%-interval half-width (in grid units) of stat `s` at level `alpha`.
    pub(super) fn half(&self, s: Stat, alpha: f64) -> f64 {
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
pub(super) fn derived(est: f64, lo: f64, hi: f64) -> (Cell, Option<Accuracy>) {
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
pub(super) fn ratio_range(slo: f64, shi: f64, clo: f64, chi: f64) -> (f64, f64) {
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
pub(super) fn snap(v: f64, scale: f64) -> (f64, f64) {
    let step = nice_step(scale);
    ((v / step).round() * step, step)
}

/// Print-friendly: round to the decimals of `step`.
pub(super) fn tidy(v: f64, step: f64) -> f64 {
    if step >= 1.0 {
        return v.round();
    }
    let d = (-step.log10()).ceil().clamp(0.0, 12.0) as i32;
    let s = 10f64.powi(d);
    (v * s).round() / s
}

pub(super) fn as_f64(r: Ratio) -> f64 {
    r.num as f64 / r.den as f64
}

/// A rational no smaller than `t` (so the noise is never weaker).
pub(super) fn ratio_at_least(t: f64) -> Result<Ratio> {
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

pub(super) fn key_text(key: &[Cell]) -> String {
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
    /// What the released cells used of the data (exact, before noise): for
    /// the node's private accounting, never stored with the answer.
    #[serde(skip)]
    pub contribution: crate::accounting::Contribution,
}
