//! `kexin twin`: a mock twin of one scene, for developing SQL and UDFs
//! before they run on anyone's records.
//!
//! The twin is generated only from the space's public declarations
//! (`space.toml`): the scene's datasets and visible columns, each column's
//! type, domain, bounds and mask, and each dataset's person-key scheme. It
//! reads no data file, so it costs no privacy budget and needs no review.
//! One synthetic pool of persons serves every dataset, so person-key joins
//! between the scene's datasets match. Given a query (`--sql`), half of the
//! persons get rows that satisfy its simple filters (`col = v`, `IN`,
//! ranges, `BETWEEN`, `LIKE 'prefix%'`, joined by `AND`), so the query
//! returns rows on the twin.
//!
//! The twin folder holds a one-node space of its own: `source/<ds>.parquet`
//! (what was generated), the node `twin/` with the datasets loaded through
//! `kexin dataset add`'s own path, and `twin.json` (the manifest).
//! `kexin query --twin DIR` opens that node with [`Node::open_twin`]: the
//! same admission, rewrite, UDFs and gate, with outcomes marked mock,
//! nothing charged and no audit entry. Contracts and consent are
//! administrative steps of the real node and are not part of the twin.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Float64Array, Int64Array, StringArray,
};
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::sql::sqlparser::ast::{
    self as sql, BinaryOperator, Expr, UnaryOperator, Visit, Visitor,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use kexin_engine::clock::{civil_from_days, days_from_civil};
use kexin_engine::mask::MaskKind;
use kexin_engine::node::Node;
use kexin_engine::policy::{
    ColumnKind, ColumnPolicy, ConsentMode, ContractMode, Dataset, PersonKeyScheme, PublicValue,
    Space, ValueType,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

/// The twin's one node.
pub const NODE: &str = "twin";
/// The manifest file in a twin folder.
pub const MANIFEST: &str = "twin.json";
/// The manifest's format tag.
pub const FORMAT: &str = "kexin-twin/1";
/// Rows per dataset when `--rows` is not given.
pub const DEFAULT_ROWS: usize = 1000;
/// The most rows per dataset a twin is made with.
pub const MAX_ROWS: usize = 5_000_000;

/// What `kexin twin` was asked.
#[derive(Debug, Clone)]
pub struct TwinOptions {
    pub scene: String,
    /// Rows per dataset (and persons in the pool).
    pub rows: usize,
    /// A query whose filters half of the persons' rows satisfy.
    pub sql: Option<String>,
    /// The generator's seed (random when absent; recorded in the manifest).
    pub seed: Option<u64>,
    /// Replace an existing twin in the output folder.
    pub force: bool,
}

/// `twin.json`: what a twin is of and how it was made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub space: String,
    pub scene: String,
    /// The policy the twin was generated from; a twin of another policy
    /// is refused by `query --twin`.
    pub policy_sha256: String,
    pub node: String,
    pub seed: u64,
    pub persons: usize,
    pub datasets: BTreeMap<String, TwinDataset>,
    /// The query filters the rows were made to satisfy.
    pub aimed_at: Vec<String>,
    /// Filters of the query the generator does not aim at (kept as a count:
    /// their text is the researcher's).
    pub not_aimed_at: usize,
    /// The scene's policy-approved UDF modules that were not in the space
    /// folder, so are not in the twin (add them with `query --udf`).
    pub udfs_missing: Vec<String>,
    pub created_at: String,
    /// Always true: the data is synthetic.
    pub mock: bool,
}

/// One generated dataset.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TwinDataset {
    /// The generated file, relative to the twin folder.
    pub file: String,
    pub rows: usize,
    pub columns: Vec<TwinColumn>,
}

/// One generated column and what its values were drawn from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TwinColumn {
    pub name: String,
    #[serde(rename = "type")]
    pub value_type: String,
    /// `person key (<scheme>)`, `domain`, `bounds`, `synthetic identifiers`,
    /// `synthetic codes` or `type`.
    pub drawn_from: String,
}

/// The one-node space a twin of `scene` runs in, at `dir`: the scene's
/// datasets with only its visible columns, the scene without contract,
/// consent, FHE gate or contributions (administrative steps of the real
/// node), and the space's members, limits and export rules unchanged.
pub fn twin_space(real: &Space, scene: &str, dir: &Path) -> Result<Space> {
    let Some(sc) = real.scenes.get(scene) else {
        bail!("no scene named {scene:?} in space.toml");
    };
    let mut space = real.clone();
    space.dir = dir.to_path_buf();
    space.nodes = vec![NODE.to_string()];
    space.datasets = sc
        .datasets
        .iter()
        .filter_map(|d| real.datasets.get(d))
        .map(|ds| {
            let mut t = ds.clone();
            t.columns.retain(|c, _| sc.column_visible(ds, c));
            t.source = format!("source/{}.parquet", ds.name);
            (ds.name.clone(), t)
        })
        .collect();
    let mut t = sc.clone();
    t.contract = ContractMode::None;
    t.consent = ConsentMode::None;
    t.fhe_gate = None;
    t.contribution = None;
    t.udfs
        .retain(|d| kexin_engine::udf::module_path(dir, d).is_some_and(|p| p.is_file()));
    space.scenes = BTreeMap::from([(scene.to_string(), t)]);
    Ok(space)
}

/// Write a twin of `opts.scene` into `out`.
pub fn make(real: &Space, opts: &TwinOptions, out: &Path) -> Result<Manifest> {
    let Some(scene) = real.scenes.get(&opts.scene) else {
        bail!("no scene named {:?} in space.toml", opts.scene);
    };
    if opts.rows == 0 || opts.rows > MAX_ROWS {
        bail!("--rows must be between 1 and {MAX_ROWS}");
    }
    prepare(out, opts.force)?;
    let seed = match opts.seed {
        Some(s) => s,
        None => {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            u64::from_le_bytes(b)
        }
    };
    let mut udfs_missing = Vec::new();
    for d in &scene.udfs {
        let (Some(from), Some(to)) = (
            kexin_engine::udf::module_path(&real.dir, d),
            kexin_engine::udf::module_path(out, d),
        ) else {
            continue;
        };
        if from.is_file() {
            std::fs::create_dir_all(to.parent().context("module path")?)?;
            std::fs::copy(&from, &to)?;
        } else {
            udfs_missing.push(d.clone());
        }
    }
    let space = twin_space(real, &opts.scene, out)?;
    let wants = match &opts.sql {
        Some(q) => Wants::of(q),
        None => Wants::default(),
    };
    let persons = opts.rows;
    let source = out.join("source");
    std::fs::create_dir_all(&source)?;
    let mut datasets = BTreeMap::new();
    for (i, ds) in space.datasets.values().enumerate() {
        // Each dataset has its own stream, so adding a dataset to the scene
        // does not change the others'.
        let mut rng = ChaCha20Rng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9e37_79b9));
        let (batch, columns) = generate(ds, persons, opts.rows, &wants, &mut rng)?;
        let file = source.join(format!("{}.parquet", ds.name));
        write_parquet(&file, &batch)?;
        kexin_engine::node::data::load(&space, NODE, &ds.name, &[file], "twin")
            .with_context(|| format!("loading the twin's {}", ds.name))?;
        datasets.insert(
            ds.name.clone(),
            TwinDataset {
                file: format!("source/{}.parquet", ds.name),
                rows: batch.num_rows(),
                columns,
            },
        );
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        space: real.name.clone(),
        scene: opts.scene.clone(),
        policy_sha256: hex::encode(real.policy_digest),
        node: NODE.into(),
        seed,
        persons,
        datasets,
        aimed_at: wants.described(),
        not_aimed_at: wants.skipped,
        udfs_missing,
        created_at: kexin_engine::store::now_utc().1,
        mock: true,
    };
    std::fs::write(
        out.join(MANIFEST),
        serde_json::to_string_pretty(&manifest)? + "\n",
    )?;
    Ok(manifest)
}

/// An empty (or new) output folder; an earlier twin is replaced only with
/// `force`, and a folder that is not a twin is never emptied.
fn prepare(out: &Path, force: bool) -> Result<()> {
    let used = out.is_dir() && std::fs::read_dir(out)?.next().is_some();
    if used {
        if !out.join(MANIFEST).is_file() {
            bail!(
                "{} is not empty and holds no twin; choose an empty folder",
                out.display()
            );
        }
        if !force {
            bail!(
                "{} already holds a twin; pass --force to replace it",
                out.display()
            );
        }
        std::fs::remove_dir_all(out)?;
    }
    std::fs::create_dir_all(out)?;
    Ok(())
}

/// Read a twin's manifest and open its node, after checking that the twin
/// was made from `real`'s policy.
pub async fn open(real: &Space, dir: &Path) -> Result<(Manifest, Node)> {
    let text = std::fs::read_to_string(dir.join(MANIFEST))
        .with_context(|| format!("{} holds no twin (no {MANIFEST})", dir.display()))?;
    let m: Manifest = serde_json::from_str(&text).context("the twin manifest is malformed")?;
    if m.format != FORMAT {
        bail!("the twin manifest's format is {:?}, not {FORMAT}", m.format);
    }
    if m.policy_sha256 != hex::encode(real.policy_digest) || m.space != real.name {
        bail!(
            "this twin was made from another version of the space's policy; make it again with `kexin twin`"
        );
    }
    let space = twin_space(real, &m.scene, dir)?;
    let node = Node::open_twin(Arc::new(space), NODE).await?;
    Ok((m, node))
}

fn write_parquet(path: &Path, batch: &RecordBatch) -> Result<()> {
    let f = std::fs::File::create(path)?;
    let mut w = ArrowWriter::try_new(f, batch.schema(), None)?;
    w.write(batch)?;
    w.close()?;
    Ok(())
}

// ------------------------------------------------------------- generation

/// The type a column is generated with: declared or implied by its mask,
/// else what its domain or bounds say, else text.
fn type_of(c: &ColumnPolicy) -> ValueType {
    c.value_type()
        .unwrap_or(match (&c.domain, c.bounds, &c.mask) {
            (Some(d), _, _) if matches!(d.first(), Some(PublicValue::Int(_))) => ValueType::Integer,
            (Some(_), _, _) => ValueType::Text,
            (None, Some(_), _) | (None, None, MaskKind::Band(_)) => ValueType::Float,
            _ => ValueType::Text,
        })
}

/// 1950-01-01 and 2025-12-31 as days since 1970-01-01: the window dates
/// are drawn from when nothing narrows it.
const FIRST_DAY: i32 = -7305;
const LAST_DAY: i32 = 20453;

/// Persons' synthetic keys. National IDs are valid GB 11643 numbers in
/// region 990101, which no real administrative division has; record
/// numbers and tokens say `TWIN`.
fn person_key(scheme: PersonKeyScheme, ty: ValueType, i: usize) -> Value {
    if ty == ValueType::Integer {
        return Value::Int(9_000_000_000 + i as i64);
    }
    Value::Text(match scheme {
        PersonKeyScheme::NationalId => {
            let day = FIRST_DAY as i64 + (i / 1000) as i64;
            let (y, m, d) = civil_from_days(day);
            let body = format!("990101{y:04}{m:02}{d:02}{:03}", i % 1000);
            let check = kexin_engine::identity::gb11643_check(&body).unwrap_or('0');
            format!("{body}{check}")
        }
        PersonKeyScheme::HospitalRecord => format!("TWIN{i:08}"),
        PersonKeyScheme::Token => format!("twin-{i:08}"),
    })
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` text.
fn days_of(text: &str) -> Option<i32> {
    let mut parts = text.trim().splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let d: i64 = parts.next()?.get(..2)?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    i32::try_from(days_from_civil(y, m as u32, d as u32)).ok()
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Int(i64),
    Float(f64),
    Text(String),
    Date(i32),
    Bool(bool),
}

/// One dataset's rows: `persons` in the pool, `rows` rows (one per person
/// when the dataset has one row per person).
fn generate(
    ds: &Dataset,
    persons: usize,
    rows: usize,
    wants: &Wants,
    rng: &mut ChaCha20Rng,
) -> Result<(RecordBatch, Vec<TwinColumn>)> {
    let owners: Vec<usize> = if ds.one_row_per_person {
        (0..persons).collect()
    } else {
        (0..rows).map(|_| rng.random_range(0..persons)).collect()
    };
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    let mut described = Vec::new();
    for c in ds.columns.values() {
        let ty = type_of(c);
        let want = wants.columns.get(&c.name);
        let mut values = Vec::with_capacity(owners.len());
        for (row, &p) in owners.iter().enumerate() {
            let v = if c.name == ds.person_key {
                person_key(ds.person_key_scheme, ty, p)
            } else {
                // Half of the persons are aimed at the query's filters, on
                // every dataset, so joins over the person key keep them.
                let aimed = want.filter(|_| p % 2 == 0);
                value(c, ty, aimed, row, rng)
            };
            values.push(v);
        }
        described.push(TwinColumn {
            name: c.name.clone(),
            value_type: ty.as_str().to_string(),
            drawn_from: if c.name == ds.person_key {
                format!("person key ({})", ds.person_key_scheme.as_str())
            } else if c.domain.is_some() {
                "domain".into()
            } else if c.bounds.is_some() {
                "bounds".into()
            } else if c.kind == ColumnKind::Identifier {
                "synthetic identifiers".into()
            } else if ty == ValueType::Text {
                "synthetic codes".into()
            } else {
                "type".into()
            },
        });
        fields.push(Field::new(&c.name, ty.arrow(), true));
        arrays.push(column(ty, values));
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?;
    Ok((batch, described))
}

fn column(ty: ValueType, values: Vec<Value>) -> ArrayRef {
    match ty {
        ValueType::Integer => {
            Arc::new(Int64Array::from_iter(values.into_iter().map(|v| match v {
                Value::Int(i) => Some(i),
                _ => None,
            })))
        }
        ValueType::Float => Arc::new(Float64Array::from_iter(values.into_iter().map(
            |v| match v {
                Value::Float(f) => Some(f),
                Value::Int(i) => Some(i as f64),
                _ => None,
            },
        ))),
        ValueType::Text => Arc::new(StringArray::from_iter(values.into_iter().map(
            |v| match v {
                Value::Text(t) => Some(t),
                Value::Int(i) => Some(i.to_string()),
                _ => None,
            },
        ))),
        ValueType::Date => Arc::new(Date32Array::from_iter(values.into_iter().map(
            |v| match v {
                Value::Date(d) => Some(d),
                _ => None,
            },
        ))),
        ValueType::Boolean => Arc::new(BooleanArray::from_iter(values.into_iter().map(
            |v| match v {
                Value::Bool(b) => Some(b),
                _ => None,
            },
        ))),
    }
}

/// How many distinct synthetic codes a text column without a domain has:
/// few enough that groups over it reach a scene's thresholds.
const CODES: u32 = 6;

/// One value of column `c`, aimed at `want` when given.
fn value(
    c: &ColumnPolicy,
    ty: ValueType,
    want: Option<&Want>,
    row: usize,
    rng: &mut ChaCha20Rng,
) -> Value {
    if let Some(v) = want.and_then(|w| aimed(c, ty, w, rng)) {
        return v;
    }
    let domain = c.domain.as_deref().filter(|d| !d.is_empty());
    if c.kind == ColumnKind::Identifier && domain.is_none() {
        // Unique per row, and in a range no real identifier uses.
        match ty {
            ValueType::Integer => return Value::Int(9_000_000_000 + row as i64),
            ValueType::Float => return Value::Float(9.0e9 + row as f64 + 0.5),
            _ => {}
        }
    }
    match ty {
        ValueType::Integer => {
            if let Some(d) = domain
                && let PublicValue::Int(i) = d[rng.random_range(0..d.len())]
            {
                return Value::Int(i);
            }
            let (lo, hi) = int_range(c.bounds);
            Value::Int(rng.random_range(lo..=hi))
        }
        ValueType::Float => {
            let (lo, hi) = c.bounds.unwrap_or((0.0, 1000.0));
            Value::Float(lo + (hi - lo) * rng.random::<f64>())
        }
        ValueType::Text => {
            if let Some(d) = domain {
                return Value::Text(match &d[rng.random_range(0..d.len())] {
                    PublicValue::Text(t) => t.clone(),
                    PublicValue::Int(i) => i.to_string(),
                });
            }
            let k = rng.random_range(1..=CODES);
            Value::Text(match (c.kind, &c.mask) {
                // Unique per row: identifiers never repeat.
                (ColumnKind::Identifier, _) => format!("twin-{}-{row}", c.name),
                // Digit codes whose masked prefix still tells groups apart.
                (_, MaskKind::Prefix(n)) => {
                    format!("{k:0w$}{:02}", rng.random_range(0..100u32), w = *n as usize)
                }
                _ => format!("{}-{k}", c.name),
            })
        }
        ValueType::Date => Value::Date(rng.random_range(FIRST_DAY..=LAST_DAY)),
        ValueType::Boolean => Value::Bool(rng.random()),
    }
}

fn int_range(bounds: Option<(f64, f64)>) -> (i64, i64) {
    match bounds {
        Some((lo, hi)) if lo.ceil() <= hi.floor() => (lo.ceil() as i64, hi.floor() as i64),
        _ => (0, 100),
    }
}

/// A value of `c` that satisfies `w`, or `None` when the generator cannot
/// make one (the row is then drawn as if not aimed).
fn aimed(c: &ColumnPolicy, ty: ValueType, w: &Want, rng: &mut ChaCha20Rng) -> Option<Value> {
    for _ in 0..16 {
        let v = aimed_once(c, ty, w, rng)?;
        if !w.not.iter().any(|n| literal_as(n, ty).as_ref() == Some(&v)) {
            return Some(v);
        }
    }
    None
}

fn aimed_once(c: &ColumnPolicy, ty: ValueType, w: &Want, rng: &mut ChaCha20Rng) -> Option<Value> {
    if let Some(l) = &w.eq {
        return literal_as(l, ty);
    }
    if let Some(list) = &w.one_of {
        let ok: Vec<Value> = list.iter().filter_map(|l| literal_as(l, ty)).collect();
        return (!ok.is_empty()).then(|| ok[rng.random_range(0..ok.len())].clone());
    }
    match ty {
        ValueType::Integer | ValueType::Float => {
            let (blo, bhi) = match ty {
                ValueType::Integer => {
                    let (a, b) = int_range(c.bounds);
                    (a as f64, b as f64)
                }
                _ => c.bounds.unwrap_or((0.0, 1000.0)),
            };
            let lo = w.lo.map_or(blo, |(v, _)| v.max(blo));
            let hi = w.hi.map_or(bhi, |(v, _)| v.min(bhi));
            if ty == ValueType::Integer {
                let mut a = lo.ceil() as i64;
                let mut b = hi.floor() as i64;
                if w.lo.is_some_and(|(v, strict)| strict && a as f64 == v) {
                    a += 1;
                }
                if w.hi.is_some_and(|(v, strict)| strict && b as f64 == v) {
                    b -= 1;
                }
                if let Some(d) = c.domain.as_deref() {
                    let ok: Vec<i64> = d
                        .iter()
                        .filter_map(|p| match p {
                            PublicValue::Int(i) if (a..=b).contains(i) => Some(*i),
                            _ => None,
                        })
                        .collect();
                    return (!ok.is_empty()).then(|| Value::Int(ok[rng.random_range(0..ok.len())]));
                }
                (a <= b).then(|| Value::Int(rng.random_range(a..=b)))
            } else {
                // Strictly inside: endpoints have probability zero.
                (lo < hi).then(|| Value::Float(lo + (hi - lo) * rng.random_range(0.001..0.999)))
            }
        }
        ValueType::Date => {
            let lo = w.lo.map_or(FIRST_DAY, |(v, s)| v as i32 + i32::from(s));
            let hi = w.hi.map_or(LAST_DAY, |(v, s)| v as i32 - i32::from(s));
            (lo <= hi).then(|| Value::Date(rng.random_range(lo..=hi)))
        }
        ValueType::Text => {
            let prefix = w.prefix.as_ref()?;
            if let Some(d) = c.domain.as_deref() {
                let ok: Vec<&String> = d
                    .iter()
                    .filter_map(|p| match p {
                        PublicValue::Text(t) if t.starts_with(prefix.as_str()) => Some(t),
                        _ => None,
                    })
                    .collect();
                return (!ok.is_empty())
                    .then(|| Value::Text(ok[rng.random_range(0..ok.len())].clone()));
            }
            Some(Value::Text(format!(
                "{prefix}{}",
                rng.random_range(0..CODES)
            )))
        }
        ValueType::Boolean => None,
    }
}

/// A query literal as a value of type `ty`, when it is one.
fn literal_as(l: &Literal, ty: ValueType) -> Option<Value> {
    match (l, ty) {
        (Literal::Number(n), ValueType::Integer) => {
            (n.fract() == 0.0).then_some(Value::Int(*n as i64))
        }
        (Literal::Number(n), ValueType::Float) => Some(Value::Float(*n)),
        (Literal::Number(n), ValueType::Text) => Some(Value::Text(n.to_string())),
        (Literal::Text(t), ValueType::Text) => Some(Value::Text(t.clone())),
        (Literal::Text(t), ValueType::Date) => days_of(t).map(Value::Date),
        (Literal::Text(t), ValueType::Integer) => t.parse().ok().map(Value::Int),
        (Literal::Text(t), ValueType::Float) => t.parse().ok().map(Value::Float),
        (Literal::Bool(b), ValueType::Boolean) => Some(Value::Bool(*b)),
        _ => None,
    }
}

// ------------------------------------------------------- a query's filters

#[derive(Debug, Clone, PartialEq)]
enum Literal {
    Number(f64),
    Text(String),
    Bool(bool),
}

/// What a query's filters ask of one column.
#[derive(Debug, Clone, Default)]
struct Want {
    eq: Option<Literal>,
    one_of: Option<Vec<Literal>>,
    /// Lower and upper bounds: (value, strict). Dates are in days.
    lo: Option<(f64, bool)>,
    hi: Option<(f64, bool)>,
    prefix: Option<String>,
    not: Vec<Literal>,
    /// Human-readable form, for the manifest.
    said: Vec<String>,
}

/// The filters of a query the generator aims at, by column name.
#[derive(Debug, Clone, Default)]
struct Wants {
    columns: BTreeMap<String, Want>,
    /// Conjuncts it does not aim at.
    skipped: usize,
}

impl Wants {
    /// The `AND`-joined conjuncts of every `WHERE` in `query` (subqueries
    /// and CTEs included). A query that does not parse aims at nothing:
    /// the node will refuse it the same way on the twin.
    fn of(query: &str) -> Wants {
        let mut wants = Wants::default();
        let Ok(statements) = Parser::new(&GenericDialect {})
            .with_recursion_limit(48)
            .try_with_sql(query)
            .and_then(|mut p| p.parse_statements())
        else {
            return wants;
        };
        struct Wheres<'a>(&'a mut Vec<Expr>);
        impl Visitor for Wheres<'_> {
            type Break = ();
            fn pre_visit_query(&mut self, q: &sql::Query) -> std::ops::ControlFlow<()> {
                if let sql::SetExpr::Select(s) = q.body.as_ref()
                    && let Some(w) = &s.selection
                {
                    self.0.push(w.clone());
                }
                std::ops::ControlFlow::Continue(())
            }
        }
        let mut wheres = Vec::new();
        for s in &statements {
            let _ = s.visit(&mut Wheres(&mut wheres));
        }
        for w in &wheres {
            let mut atoms = Vec::new();
            conjuncts(w, &mut atoms);
            for a in atoms {
                if !wants.add(a) {
                    wants.skipped += 1;
                }
            }
        }
        wants
    }

    fn described(&self) -> Vec<String> {
        self.columns
            .values()
            .flat_map(|w| w.said.iter().cloned())
            .collect()
    }

    /// Aim at one conjunct; false when its shape is not one the generator
    /// knows.
    fn add(&mut self, e: &Expr) -> bool {
        let Some(atoms) = atoms(e) else {
            return false;
        };
        for (col, atom) in atoms {
            self.aim(col, atom, e);
        }
        true
    }

    fn aim(&mut self, col: String, atom: Atom, e: &Expr) {
        let w = self.columns.entry(col).or_default();
        match atom {
            Atom::Eq(l) => w.eq = Some(l),
            Atom::Not(ls) => w.not.extend(ls),
            Atom::OneOf(ls) => w.one_of = Some(ls),
            Atom::Lo(n, strict) => {
                if w.lo.is_none_or(|(o, _)| n > o) {
                    w.lo = Some((n, strict));
                }
            }
            Atom::Hi(n, strict) => {
                if w.hi.is_none_or(|(o, _)| n < o) {
                    w.hi = Some((n, strict));
                }
            }
            Atom::Prefix(p) => w.prefix = Some(p),
        }
        let said = e.to_string();
        if !w.said.contains(&said) {
            w.said.push(said);
        }
    }
}

/// One filter on one column, in a shape the generator aims at.
enum Atom {
    Eq(Literal),
    Not(Vec<Literal>),
    OneOf(Vec<Literal>),
    /// A lower or upper bound: (value, strict); dates in days.
    Lo(f64, bool),
    Hi(f64, bool),
    Prefix(String),
}

/// What a conjunct asks, when it is `col BETWEEN a AND b` or one atom.
fn atoms(e: &Expr) -> Option<Vec<(String, Atom)>> {
    match e {
        Expr::Between {
            expr,
            negated: false,
            low,
            high,
        } => {
            let col = column_of(expr)?;
            let lo = number_of(&literal(low)?)?;
            let hi = number_of(&literal(high)?)?;
            Some(vec![
                (col.clone(), Atom::Lo(lo, false)),
                (col, Atom::Hi(hi, false)),
            ])
        }
        other => Some(vec![atom(other)?]),
    }
}

/// The column a conjunct filters and how, when it is `col op literal`
/// (either way round), `col [NOT] IN (literals)` or `col LIKE 'prefix%'`.
fn atom(e: &Expr) -> Option<(String, Atom)> {
    match e {
        Expr::BinaryOp { left, op, right } => {
            let (col, lit, op) = match (column_of(left), literal(right)) {
                (Some(c), Some(l)) => (c, l, op.clone()),
                _ => (column_of(right)?, literal(left)?, flipped(op)),
            };
            let n = number_of(&lit);
            Some((
                col,
                match op {
                    BinaryOperator::Eq => Atom::Eq(lit),
                    BinaryOperator::NotEq => Atom::Not(vec![lit]),
                    BinaryOperator::Gt => Atom::Lo(n?, true),
                    BinaryOperator::GtEq => Atom::Lo(n?, false),
                    BinaryOperator::Lt => Atom::Hi(n?, true),
                    BinaryOperator::LtEq => Atom::Hi(n?, false),
                    _ => return None,
                },
            ))
        }
        Expr::InList {
            expr,
            list,
            negated,
        } => {
            let lits: Vec<Literal> = list.iter().map(literal).collect::<Option<_>>()?;
            let atom = if *negated {
                Atom::Not(lits)
            } else {
                Atom::OneOf(lits)
            };
            Some((column_of(expr)?, atom))
        }
        Expr::Like {
            negated: false,
            any: false,
            expr,
            pattern,
            escape_char: None,
        } => {
            let Literal::Text(p) = literal(pattern)? else {
                return None;
            };
            let prefix = p.strip_suffix('%').filter(|x| !x.contains(['%', '_']))?;
            Some((column_of(expr)?, Atom::Prefix(prefix.to_string())))
        }
        _ => None,
    }
}

/// Split `e` at top-level `AND`s.
fn conjuncts<'a>(e: &'a Expr, out: &mut Vec<&'a Expr>) {
    match e {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            conjuncts(left, out);
            conjuncts(right, out);
        }
        Expr::Nested(inner) => conjuncts(inner, out),
        other => out.push(other),
    }
}

/// The column a plain column reference names (`c` or `t.c`).
fn column_of(e: &Expr) -> Option<String> {
    match e {
        Expr::Identifier(i) => Some(i.value.clone()),
        Expr::CompoundIdentifier(parts) => parts.last().map(|i| i.value.clone()),
        Expr::Nested(inner) => column_of(inner),
        _ => None,
    }
}

/// A literal: a number (possibly negated), a string, a boolean, or a typed
/// string such as `DATE '2024-01-01'`.
fn literal(e: &Expr) -> Option<Literal> {
    match e {
        Expr::Value(v) => match &v.value {
            sql::Value::Number(n, _) => n.to_string().parse().ok().map(Literal::Number),
            sql::Value::SingleQuotedString(s) => Some(Literal::Text(s.clone())),
            sql::Value::Boolean(b) => Some(Literal::Bool(*b)),
            _ => None,
        },
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match literal(expr)? {
            Literal::Number(n) => Some(Literal::Number(-n)),
            _ => None,
        },
        Expr::TypedString(t) => match &t.value.value {
            sql::Value::SingleQuotedString(s) => Some(Literal::Text(s.clone())),
            _ => None,
        },
        Expr::Nested(inner) => literal(inner),
        _ => None,
    }
}

/// A literal as a number for ranges: numbers as they are, dates in days.
fn number_of(l: &Literal) -> Option<f64> {
    match l {
        Literal::Number(n) => Some(*n),
        Literal::Text(t) => days_of(t).map(f64::from).or_else(|| t.parse().ok()),
        Literal::Bool(_) => None,
    }
}

/// `lit op col` as `col op' lit`.
fn flipped(op: &BinaryOperator) -> BinaryOperator {
    match op {
        BinaryOperator::Gt => BinaryOperator::Lt,
        BinaryOperator::GtEq => BinaryOperator::LtEq,
        BinaryOperator::Lt => BinaryOperator::Gt,
        BinaryOperator::LtEq => BinaryOperator::GtEq,
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_through_day_counts() {
        for (text, days) in [
            ("1970-01-01", 0),
            ("2000-03-01", 11017),
            ("1950-01-01", FIRST_DAY),
            ("2025-12-31", LAST_DAY),
        ] {
            assert_eq!(days_of(text), Some(days), "{text}");
            let (y, m, d) = civil_from_days(i64::from(days));
            assert_eq!(format!("{y:04}-{m:02}-{d:02}"), text);
        }
        assert_eq!(days_of("2024-13-01"), None);
    }

    #[test]
    fn national_ids_are_valid_and_distinct() {
        let a = person_key(PersonKeyScheme::NationalId, ValueType::Text, 0);
        let b = person_key(PersonKeyScheme::NationalId, ValueType::Text, 1000);
        let Value::Text(a) = a else { panic!() };
        let Value::Text(b) = b else { panic!() };
        assert_ne!(a, b);
        assert!(
            kexin_engine::identity::IdCardNumber::parse(&a).is_some(),
            "{a}"
        );
        assert!(a.starts_with("990101"));
    }

    #[test]
    fn filters_are_read_from_conjuncts_only() {
        let w = Wants::of(
            "SELECT d, COUNT(*) FROM a JOIN p ON a.k = p.k WHERE a.diagnosis LIKE 'E11%' AND (p.age >= 40 AND p.age < 60) AND sex IN ('F') AND (x = 1 OR y = 2) AND cost BETWEEN 10 AND 20 AND admit_date >= DATE '2024-01-01' GROUP BY d",
        );
        assert_eq!(w.columns["diagnosis"].prefix.as_deref(), Some("E11"));
        assert_eq!(w.columns["age"].lo, Some((40.0, false)));
        assert_eq!(w.columns["age"].hi, Some((60.0, true)));
        assert_eq!(
            w.columns["sex"].one_of,
            Some(vec![Literal::Text("F".into())])
        );
        assert_eq!(w.columns["cost"].lo, Some((10.0, false)));
        assert_eq!(
            w.columns["admit_date"].lo,
            Some((f64::from(days_of("2024-01-01").unwrap_or(0)), false))
        );
        assert!(!w.columns.contains_key("x"));
        assert_eq!(w.skipped, 1);
        assert_eq!(Wants::of("not sql").columns.len(), 0);
    }
}
