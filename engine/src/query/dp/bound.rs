//! DP step 4: the scan of measured rows, streamed per partition, and the
//! per-person bounding by keyed priority (at most `rows_per_person` rows in
//! at most `groups_per_person` groups), summed on integers.

// The parent's imports and its siblings' items: one DP module, cut in
// three files.
use super::*;

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
    pub(super) fn qlo(&self) -> i64 {
        (self.lo / self.quantum).round() as i64
    }
    pub(super) fn qhi(&self) -> i64 {
        (self.hi / self.quantum).round() as i64
    }
    /// [`ArgSpec::quantize`] with the bounds in quanta computed once.
    pub(super) fn quantizer(&self) -> Quantizer {
        Quantizer {
            quantum: self.quantum,
            qlo: self.qlo(),
            qhi: self.qhi(),
        }
    }
}

/// Quantizes values of one argument: the grid step and the bounds on it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Quantizer {
    quantum: f64,
    qlo: i64,
    qhi: i64,
}

impl Quantizer {
    #[inline]
    pub(super) fn quantize(&self, x: f64) -> Option<i64> {
        if x.is_nan() {
            return None;
        }
        // Round half away from zero without a libm call (`as` truncates,
        // saturating beyond the i64 range before the clamp).
        let y = x / self.quantum;
        let q = (y + 0.5f64.copysign(y)) as i64;
        Some(q.clamp(self.qlo, self.qhi))
    }
}

impl ArgSpec {
    /// max |q| over the bounds, in quanta.
    pub(super) fn qmax(&self) -> u64 {
        self.qlo().unsigned_abs().max(self.qhi().unsigned_abs())
    }
    /// The midpoint of the bounds, in quanta.
    pub(crate) fn qmid(&self) -> i64 {
        self.qlo() + (self.qhi() - self.qlo()) / 2
    }
    /// max |q − midpoint| over the bounds, in quanta: centring halves the
    /// sensitivity of AVG and VAR for bounds away from zero.
    pub(super) fn qhalf(&self) -> u64 {
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
pub(super) struct Groups {
    pub(super) index: HashMap<u64, Vec<u32>, BuildHasherDefault<Identity>>,
    pub(super) keys: Vec<Vec<u8>>,
    pub(super) hashes: Vec<u64>,
}

impl Groups {
    pub(super) fn id(&mut self, bytes: &[u8]) -> u32 {
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
pub(super) fn key_hash(bytes: &[u8]) -> u64 {
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
pub(super) const BUCKET_BITS: u32 = 8;

/// The scan rows of one bucket: person hash, group id, null mask and the
/// quantized, clamped arguments (`m` per row).
#[derive(Debug, Default)]
pub(super) struct Rows {
    /// (person, group id, null mask) per row.
    pub(super) rows: Vec<(u64, u32, u32)>,
    pub(super) vals: Vec<i64>,
}

/// One partition of the DP scan: its rows, quantized and bucketed by person.
/// Nothing is bounded yet; [`Mechanism::totals`] does that per bucket.
#[derive(Debug)]
pub struct Scan {
    pub(super) key_fields: Vec<SortField>,
    pub(super) args: Vec<ArgSpec>,
    pub(super) groups: Groups,
    pub(super) buckets: Vec<Rows>,
    pub(super) rows: usize,
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
        let args: Vec<Quantizer> = self.args.iter().map(ArgSpec::quantizer).collect();
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
    pub(super) fn view_ids(&mut self, col: &ArrayRef) -> Result<Vec<u32>> {
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
pub(super) struct ViewHasher(u64);

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
pub(super) struct PersonTable {
    pub(super) index: HashMap<u64, u32, BuildHasherDefault<Identity>>,
    /// Per person: group entries in use.
    pub(super) n_groups: Vec<u8>,
    /// Per group entry (person × l): group id, group priority, rows in use.
    pub(super) gid: Vec<u32>,
    pub(super) gprio: Vec<u64>,
    pub(super) used: Vec<u8>,
    /// Per row (entry × k): row priority, null mask, values (× m).
    pub(super) rprio: Vec<u64>,
    pub(super) nulls: Vec<u32>,
    pub(super) vals: Vec<i64>,
    /// The last person's slot: rows of one person often come together.
    pub(super) last: Option<(u64, usize)>,
}

impl PersonTable {
    pub(super) fn clear(&mut self) {
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

    pub(super) fn slot(&mut self, person: u64, k: usize, l: usize, m: usize) -> usize {
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
    #[allow(
        clippy::too_many_arguments,
        reason = "one row of the bounding scan: its key, person, group and argument values"
    )]
    pub(super) fn add(
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
#[allow(
    clippy::type_complexity,
    reason = "groups, ids and keys are built in one pass and consumed together"
)]
pub(super) fn merge_groups(scans: &[Scan]) -> Result<(Groups, Vec<Vec<u32>>, Vec<Vec<Cell>>)> {
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
