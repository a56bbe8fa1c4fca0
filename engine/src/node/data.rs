//! A data holder's own data on its node: validated ingest into the node's
//! copy, the person index, and the record of what is loaded.
//!
//! [`load`] (`kexin dataset add`) reads Parquet or CSV files, checks them
//! against the dataset's declaration in `space.toml` and converts where
//! the declaration says so (a `date` column from timestamps or text, a
//! `text` column from integers, a `float` column from integers). It
//! writes `<node>/data/<dataset>.parquet`: the declared columns only, and
//! each row's **person ordinal** in [`ORDINAL_COLUMN`].
//!
//! The **person index** maps the keyed digest of a person key (under the
//! dataset's scheme, [`crate::consent::person_digest`]) to a small integer,
//! the same for a person in every dataset of the node and on every later
//! load. The gate counts, caps and bounds persons by ordinal, and consent
//! sets are bitmaps of ordinals, so no query hashes a person-key string.
//!
//! Nothing changes unless every row passes: the copy is written to a
//! temporary file, and the index's new persons, the load record and a
//! `dataset-load` audit entry (with the copy's SHA-256) commit in one
//! transaction before the copy takes its place. The node checks each copy
//! against its recorded digest when it opens, and every later audit entry
//! of a query binds the digests of the datasets its scene reads.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Date32Array, RecordBatch, StringArray, UInt32Array,
};
use datafusion::arrow::compute::{CastOptions, cast, cast_with_options};
use datafusion::arrow::datatypes::{DataType, Date32Type, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::basic::{Compression, Encoding};
use datafusion::parquet::file::properties::WriterProperties;
use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::audit::{AuditEntry, Decision, Kind};
use crate::consent::PersonDigester;
use crate::error::{Error, Result};
use crate::policy::{ColumnPolicy, Dataset, ORDINAL_COLUMN, PersonKeyScheme, Space, ValueType};
use crate::store::{NodeKeys, Store, now_utc};

/// What a load recorded (`kexin dataset list/show`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Loaded {
    pub dataset: String,
    /// The declaration the copy was made under (`space.toml`): a node
    /// does not open when these no longer match it.
    pub source: String,
    pub person_key: String,
    pub person_key_scheme: PersonKeyScheme,
    pub one_row_per_person: bool,
    /// SHA-256 of the node's copy, hex: what audit entries bind.
    pub sha256: String,
    pub rows: u64,
    /// Distinct persons in the dataset.
    pub persons: u64,
    /// Persons this load added to the node's person index.
    pub new_persons: u64,
    /// Column → the type its values have in the copy.
    pub columns: BTreeMap<String, ValueType>,
    /// The files read, as given.
    pub files: Vec<String>,
    /// Conversions made, as `column: from → to`.
    pub converted: Vec<String>,
    /// Columns of the files that the declaration does not name: left out.
    pub dropped: Vec<String>,
    pub loaded_at: String,
    /// The `dataset-load` audit entry.
    pub audit_seq: u64,
}

/// Where the node keeps its copy of `dataset`.
pub fn copy_path(node_dir: &Path, dataset: &str) -> PathBuf {
    node_dir.join("data").join(format!("{dataset}.parquet"))
}

/// Every load recorded on the node, by dataset.
pub fn records(store: &Store) -> Result<BTreeMap<String, Loaded>> {
    let mut stmt = store
        .conn
        .prepare("SELECT record FROM dataset_load ORDER BY dataset")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    let mut out = BTreeMap::new();
    for text in rows {
        let l: Loaded = serde_json::from_str(&text?)
            .map_err(|_| Error::internal("a dataset load record is malformed"))?;
        out.insert(l.dataset.clone(), l);
    }
    Ok(out)
}

/// The loads of node `node` of `space`, read without opening the node.
pub fn list(space: &Space, node: &str) -> Result<BTreeMap<String, Loaded>> {
    node_known(space, node)?;
    let dir = space.dir.join(node);
    let store = Store::open(&dir, &format!("kexin/{}/{}", space.name, node))?;
    records(&store)
}

impl Loaded {
    /// Whether `ds`, as `space.toml` declares it now, is what this copy was
    /// made under: the same source, person key and scheme, and every
    /// declared column in the copy with the declared type. `Err` names the
    /// field that changed.
    pub fn matches(&self, ds: &Dataset) -> std::result::Result<(), (String, &'static str)> {
        let field = |f: &str| format!("dataset.{}.{f}", ds.name);
        if self.source != ds.source {
            return Err((field("source"), "changed since the dataset was loaded"));
        }
        if self.person_key != ds.person_key {
            return Err((field("person_key"), "changed since the dataset was loaded"));
        }
        if self.person_key_scheme != ds.person_key_scheme {
            return Err((
                field("person_key_scheme"),
                "changed since the dataset was loaded",
            ));
        }
        if self.one_row_per_person != ds.one_row_per_person {
            return Err((
                field("one_row_per_person"),
                "changed since the dataset was loaded",
            ));
        }
        for c in ds.columns.values() {
            let at = || field(&format!("columns.{}", c.name));
            match self.columns.get(&c.name) {
                None => return Err((at(), "declared after the dataset was loaded")),
                Some(t) if c.value_type().is_some_and(|d| d != *t) => {
                    return Err((at(), "its type changed since the dataset was loaded"));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// SHA-256 of a file, hex.
pub fn file_sha256(path: &Path) -> Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn node_known(space: &Space, node: &str) -> Result<()> {
    if space.nodes.iter().any(|n| n == node) {
        Ok(())
    } else {
        Err(Error::config(
            "space.toml",
            "space.nodes",
            format!("no node named {node:?}"),
        ))
    }
}

/// A refusal of the input: names the file, where in it, and why (never a
/// value: the holder's terminal may be logged).
fn bad(file: &Path, at: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::config(file.display().to_string(), at, reason)
}

/// The files an argument names: the file itself, or a folder's `.parquet`
/// and `.csv` files (sorted, not recursive).
fn expand(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && Format::of(f).is_some())
                .collect();
            if found.is_empty() {
                return Err(bad(p, "folder", "holds no .parquet or .csv file"));
            }
            found.sort();
            out.extend(found);
        } else if !p.is_file() {
            return Err(bad(p, "file", "does not exist"));
        } else if Format::of(p).is_none() {
            return Err(bad(p, "file", "is not a .parquet or .csv file"));
        } else {
            out.push(p.clone());
        }
    }
    if out.is_empty() {
        return Err(Error::config("dataset add", "files", "no input files"));
    }
    Ok(out)
}

#[derive(Clone, Copy)]
enum Format {
    Parquet,
    Csv,
}

impl Format {
    fn of(p: &Path) -> Option<Format> {
        match p.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "parquet" => Some(Format::Parquet),
            "csv" => Some(Format::Csv),
            _ => None,
        }
    }
}

type Batches = Box<dyn Iterator<Item = std::result::Result<RecordBatch, ArrowError>>>;

const BATCH_ROWS: usize = 64 * 1024;

/// Open one input: its schema and its batches. CSV columns declared as
/// text or dates are read as text (type inference would turn record
/// numbers with leading zeros into integers); others are inferred over the
/// whole file.
fn open_input(path: &Path, ds: &Dataset) -> Result<(SchemaRef, Batches)> {
    let unreadable = |what: &str| bad(path, "file", format!("is not a readable {what} file"));
    match Format::of(path) {
        Some(Format::Parquet) => {
            let f = File::open(path)?;
            let b = ParquetRecordBatchReaderBuilder::try_new(f)
                .map_err(|_| unreadable("Parquet"))?
                .with_batch_size(BATCH_ROWS);
            let schema = Arc::clone(b.schema());
            let r = b.build().map_err(|_| unreadable("Parquet"))?;
            Ok((schema, Box::new(r)))
        }
        Some(Format::Csv) => {
            use datafusion::arrow::csv::reader::{Format as CsvFormat, ReaderBuilder};
            let mut f = File::open(path)?;
            let (inferred, _) = CsvFormat::default()
                .with_header(true)
                .infer_schema(&mut f, None)
                .map_err(|_| unreadable("CSV"))?;
            f.rewind()?;
            let fields: Vec<Field> = inferred
                .fields()
                .iter()
                .map(|f| {
                    let as_text = ds
                        .columns
                        .get(f.name())
                        .and_then(ColumnPolicy::value_type)
                        .is_some_and(|t| matches!(t, ValueType::Text | ValueType::Date));
                    if as_text {
                        Field::new(f.name(), DataType::Utf8, true)
                    } else {
                        f.as_ref().clone()
                    }
                })
                .collect();
            let schema = Arc::new(Schema::new(fields));
            let r = ReaderBuilder::new(Arc::clone(&schema))
                .with_header(true)
                .with_batch_size(BATCH_ROWS)
                .build(f)
                .map_err(|_| unreadable("CSV"))?;
            Ok((schema, Box::new(r)))
        }
        None => Err(bad(path, "file", "is not a .parquet or .csv file")),
    }
}

/// The type a found column takes when the declaration does not say.
fn natural(found: &DataType) -> Option<ValueType> {
    match found {
        t if t.is_integer() => Some(ValueType::Integer),
        t if t.is_floating() => Some(ValueType::Float),
        DataType::Decimal128(..) | DataType::Decimal256(..) => Some(ValueType::Float),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Some(ValueType::Text),
        DataType::Date32 | DataType::Date64 => Some(ValueType::Date),
        DataType::Boolean => Some(ValueType::Boolean),
        _ => None,
    }
}

fn is_text(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// Whether values of type `found` convert to `to` without loss the
/// declaration did not ask for.
fn convertible(found: &DataType, to: ValueType) -> bool {
    match to {
        ValueType::Integer => found.is_integer(),
        ValueType::Float => {
            found.is_integer()
                || found.is_floating()
                || matches!(found, DataType::Decimal128(..) | DataType::Decimal256(..))
        }
        ValueType::Text => is_text(found) || found.is_integer(),
        ValueType::Date => {
            is_text(found)
                || matches!(
                    found,
                    DataType::Date32 | DataType::Date64 | DataType::Timestamp(..)
                )
        }
        ValueType::Boolean => matches!(found, DataType::Boolean),
    }
}

/// The target type of one declared column in one file.
fn target(path: &Path, c: &ColumnPolicy, found: &DataType) -> Result<ValueType> {
    let at = format!("column {}", c.name);
    let t = match c.value_type() {
        Some(t) if convertible(found, t) => t,
        Some(t) => {
            return Err(bad(
                path,
                at,
                format!(
                    "wrong type: found {found}, declared {t} (converted only from {})",
                    match t {
                        ValueType::Integer => "integers",
                        ValueType::Float => "integers, floats and decimals",
                        ValueType::Text => "text and integers",
                        ValueType::Date => "dates, timestamps and YYYY-MM-DD text",
                        ValueType::Boolean => "booleans",
                    }
                ),
            ));
        }
        None => natural(found).ok_or_else(|| {
            bad(
                path,
                at.clone(),
                format!(
                    "wrong type: found {found}; declare the column's type (type = \"date\" converts timestamps to dates)"
                ),
            )
        })?,
    };
    c.mask
        .check_type(&t.arrow(), c.bounds.is_some())
        .map_err(|reason| bad(path, at, format!("wrong type: {reason}")))?;
    Ok(t)
}

/// Convert one column to its target type. Text that is not a date is
/// refused with the first such row (1-based within the file).
fn convert(
    path: &Path,
    name: &str,
    a: &ArrayRef,
    to: ValueType,
    first_row: u64,
) -> Result<ArrayRef> {
    let at = |row: usize| format!("row {}, column {name}", first_row + row as u64);
    let strict = CastOptions {
        safe: false,
        ..Default::default()
    };
    let out = match to {
        ValueType::Date if is_text(a.data_type()) => {
            // YYYY-MM-DD, or a timestamp's text (pandas writes both).
            let text = cast(a, &DataType::Utf8).map_err(Error::internal)?;
            let d = cast(&text, &DataType::Date32).map_err(Error::internal)?;
            let ts = cast(&text, &DataType::Timestamp(TimeUnit::Nanosecond, None))
                .and_then(|t| cast(&t, &DataType::Date32))
                .map_err(Error::internal)?;
            let (text, d, ts) = (
                text.as_string::<i32>(),
                d.as_primitive::<Date32Type>(),
                ts.as_primitive::<Date32Type>(),
            );
            let mut out = Vec::with_capacity(text.len());
            for i in 0..text.len() {
                out.push(if text.is_null(i) || text.value(i).trim().is_empty() {
                    None
                } else if d.is_valid(i) {
                    Some(d.value(i))
                } else if ts.is_valid(i) {
                    Some(ts.value(i))
                } else {
                    return Err(bad(
                        path,
                        at(i),
                        "unparseable date: expected YYYY-MM-DD or a timestamp",
                    ));
                });
            }
            Arc::new(Date32Array::from(out)) as ArrayRef
        }
        _ => cast_with_options(a, &to.arrow(), &strict).map_err(|_| {
            bad(
                path,
                format!("column {name}"),
                format!("a value does not fit the column's type {to}"),
            )
        })?,
    };
    Ok(out)
}

/// The node's person index, read for one load: digests → ordinals, and
/// the persons the load adds.
struct Index {
    known: HashMap<[u8; 32], u32>,
    added: Vec<([u8; 32], u32)>,
    next: u32,
}

impl Index {
    fn read(store: &Store) -> Result<Index> {
        let mut stmt = store
            .conn
            .prepare("SELECT digest, ordinal FROM person_index")?;
        let mut known = HashMap::new();
        let mut next = 0u32;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (d, o) = row?;
            let d: [u8; 32] = d
                .try_into()
                .map_err(|_| Error::internal("person index digest is malformed"))?;
            let o = u32::try_from(o).map_err(|_| Error::internal("person ordinal out of range"))?;
            next = next.max(o.saturating_add(1));
            known.insert(d, o);
        }
        Ok(Index {
            known,
            added: Vec::new(),
            next,
        })
    }

    fn ordinal(&mut self, digest: [u8; 32]) -> Result<u32> {
        if let Some(&o) = self.known.get(&digest) {
            return Ok(o);
        }
        let o = self.next;
        self.next = o
            .checked_add(1)
            .ok_or_else(|| Error::internal("the person index is full"))?;
        self.known.insert(digest, o);
        self.added.push((digest, o));
        Ok(o)
    }
}

/// The ordinals of the persons whose digests are given, as the node's
/// person index holds them (persons it has never seen have none).
pub fn ordinals_of<'a>(
    store: &Store,
    digests: impl IntoIterator<Item = &'a [u8; 32]>,
) -> Result<RoaringBitmap> {
    let mut stmt = store
        .conn
        .prepare_cached("SELECT ordinal FROM person_index WHERE digest = ?1")?;
    let mut out = RoaringBitmap::new();
    for d in digests {
        use rusqlite::OptionalExtension;
        let o: Option<i64> = stmt.query_row([d.as_slice()], |r| r.get(0)).optional()?;
        if let Some(o) = o.and_then(|o| u32::try_from(o).ok()) {
            out.insert(o);
        }
    }
    Ok(out)
}

/// Load `files` (or, when none are given, the dataset's declared source
/// for this node) as dataset `dataset` of node `node`; `actor` is who
/// asked (recorded in the audit entry). See the module documentation.
pub fn load(
    space: &Space,
    node: &str,
    dataset: &str,
    files: &[PathBuf],
    actor: &str,
) -> Result<Loaded> {
    node_known(space, node)?;
    let ds = space.datasets.get(dataset).ok_or_else(|| {
        Error::config(
            "space.toml",
            format!("dataset.{dataset}"),
            "no such dataset is declared",
        )
    })?;
    let files = if files.is_empty() {
        vec![ds.source_for(&space.dir, node)]
    } else {
        files.to_vec()
    };
    let files = expand(&files)?;
    let dir = space.dir.join(node);
    let origin = format!("kexin/{}/{}", space.name, node);
    let keys = NodeKeys::load_or_create(&dir, &origin)?;
    let mut store = Store::open(&dir, &origin)?;
    let digester = PersonDigester::new(
        &crate::registry::id_key(&space.dir, true)?,
        ds.person_key_scheme,
    );
    let mut index = Index::read(&store)?;

    let final_path = copy_path(&dir, dataset);
    let data_dir = final_path
        .parent()
        .ok_or_else(|| Error::internal("copy path has no folder"))?;
    std::fs::create_dir_all(data_dir)?;
    let tmp = data_dir.join(format!(".{dataset}.parquet.{}.tmp", std::process::id()));
    let written = write_copy(ds, &files, &tmp, &digester, &mut index);
    let (columns, stats) = match written {
        Ok(w) => w,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let sha256 = file_sha256(&tmp)?;
    let mut record = Loaded {
        dataset: dataset.to_string(),
        source: ds.source.clone(),
        person_key: ds.person_key.clone(),
        person_key_scheme: ds.person_key_scheme,
        one_row_per_person: ds.one_row_per_person,
        sha256: sha256.clone(),
        rows: stats.rows,
        persons: stats.persons.len(),
        new_persons: index.added.len() as u64,
        columns,
        files: files.iter().map(|f| f.display().to_string()).collect(),
        converted: stats.converted.into_iter().collect(),
        dropped: stats.dropped.into_iter().collect(),
        loaded_at: now_utc().1,
        audit_seq: 0,
    };
    let mut entry = AuditEntry::new(
        node,
        actor,
        "",
        Kind::DatasetLoad,
        Decision::Recorded,
        &space.policy_digest,
    );
    entry.data.insert(dataset.to_string(), sha256);
    entry.rows_released = 0;
    let committed = store.append_with(entry, &keys, |tx, seq| {
        let mut ins =
            tx.prepare_cached("INSERT INTO person_index (digest, ordinal) VALUES (?1, ?2)")?;
        for (d, o) in &index.added {
            ins.execute(rusqlite::params![d.as_slice(), i64::from(*o)])?;
        }
        record.audit_seq = seq;
        let text = serde_json::to_string(&record).map_err(Error::internal)?;
        tx.execute(
            "INSERT INTO dataset_load (dataset, record, audit_seq) VALUES (?1, ?2, ?3)
             ON CONFLICT (dataset) DO UPDATE SET record = ?2, audit_seq = ?3",
            rusqlite::params![dataset, text, seq as i64],
        )?;
        Ok(())
    });
    if let Err(e) = committed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // Committed: the copy takes its place. Should this rename not happen,
    // the node refuses to open: its copy no longer matches the record.
    std::fs::rename(&tmp, &final_path)?;
    if let Ok(d) = File::open(data_dir) {
        let _ = d.sync_all();
    }
    Ok(record)
}

#[derive(Default)]
struct Stats {
    rows: u64,
    persons: RoaringBitmap,
    converted: std::collections::BTreeSet<String>,
    dropped: std::collections::BTreeSet<String>,
}

/// Read, check and convert every file, writing the copy to `tmp`.
fn write_copy(
    ds: &Dataset,
    files: &[PathBuf],
    tmp: &Path,
    digester: &PersonDigester,
    index: &mut Index,
) -> Result<(BTreeMap<String, ValueType>, Stats)> {
    let mut stats = Stats::default();
    let mut targets: BTreeMap<String, (ValueType, String)> = BTreeMap::new();
    let mut writer: Option<ArrowWriter<File>> = None;
    let mut out_schema: Option<SchemaRef> = None;
    // Per person (ordinal): the file and row first seen, for datasets of
    // one row per person.
    let mut first_row: HashMap<u32, (usize, u64)> = HashMap::new();
    // Person-key text → ordinal within this load (most keys repeat).
    let mut seen: HashMap<String, u32> = HashMap::new();
    for (fi, path) in files.iter().enumerate() {
        let (schema, batches) = open_input(path, ds)?;
        // Every declared column must be there, with a type that converts.
        let mut plan = Vec::new();
        for c in ds.columns.values() {
            let Ok(idx) = schema.index_of(&c.name) else {
                return Err(bad(
                    path,
                    format!("column {}", c.name),
                    "missing column: the dataset declares it, the file does not have it",
                ));
            };
            let found = schema.field(idx).data_type().clone();
            let t = target(path, c, &found)?;
            match targets.get(&c.name) {
                Some((t0, file0)) if *t0 != t => {
                    return Err(bad(
                        path,
                        format!("column {}", c.name),
                        format!(
                            "wrong type: {t} here but {t0} in {file0}; declare the column's type"
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    targets.insert(c.name.clone(), (t, path.display().to_string()));
                }
            }
            if natural(&found) != Some(t) {
                stats.converted.insert(format!("{}: {found} → {t}", c.name));
            }
            plan.push((c, idx, t));
        }
        for f in schema.fields() {
            if !ds.columns.contains_key(f.name()) {
                stats.dropped.insert(f.name().clone());
            }
        }
        let schema_out = out_schema
            .get_or_insert_with(|| {
                let mut fields: Vec<Field> = plan
                    .iter()
                    .map(|(c, _, t)| Field::new(&c.name, t.arrow(), true))
                    .collect();
                fields.push(Field::new(ORDINAL_COLUMN, DataType::UInt32, false));
                Arc::new(Schema::new(fields))
            })
            .clone();
        let w = match &mut writer {
            Some(w) => w,
            None => {
                // Queries read the ordinal column whenever they count
                // persons: stored plain and uncompressed, it decodes at
                // memory speed (compressed or dictionary-encoded it cost
                // as much as the rest of a GROUP BY count).
                let ordinal = datafusion::parquet::schema::types::ColumnPath::from(ORDINAL_COLUMN);
                let props = WriterProperties::builder()
                    .set_compression(Compression::SNAPPY)
                    .set_max_row_group_row_count(Some(1 << 20))
                    .set_column_dictionary_enabled(ordinal.clone(), false)
                    .set_column_encoding(ordinal.clone(), Encoding::DELTA_BINARY_PACKED)
                    .set_column_compression(ordinal, Compression::UNCOMPRESSED)
                    .build();
                let f = File::create(tmp)?;
                writer.insert(
                    ArrowWriter::try_new(f, Arc::clone(&schema_out), Some(props))
                        .map_err(Error::internal)?,
                )
            }
        };
        let mut row0 = 1u64;
        for batch in batches {
            let batch = batch.map_err(|_| {
                bad(
                    path,
                    format!("rows from {row0}"),
                    "cannot be read: a row does not match the file's columns or types",
                )
            })?;
            let mut cols: Vec<ArrayRef> = Vec::with_capacity(plan.len() + 1);
            let mut key: Option<ArrayRef> = None;
            for (c, idx, t) in &plan {
                let a = convert(path, &c.name, batch.column(*idx), *t, row0)?;
                if c.name == ds.person_key {
                    key = Some(Arc::clone(&a));
                }
                cols.push(a);
            }
            let key = key.ok_or_else(|| Error::internal("person key not in the plan"))?;
            let key: &StringArray = key.as_string::<i32>();
            let mut ordinals = Vec::with_capacity(key.len());
            for i in 0..key.len() {
                let row = row0 + i as u64;
                let at = || format!("row {row}, column {}", ds.person_key);
                if key.is_null(i) {
                    return Err(bad(path, at(), "null person key: every row needs one"));
                }
                let k = key.value(i);
                if k.trim().is_empty() {
                    return Err(bad(path, at(), "empty person key: every row needs one"));
                }
                let o = match seen.get(k) {
                    Some(&o) => o,
                    None => {
                        let o = index.ordinal(digester.digest(k))?;
                        seen.insert(k.to_string(), o);
                        o
                    }
                };
                if ds.one_row_per_person {
                    if let Some((f0, r0)) = first_row.get(&o) {
                        return Err(bad(
                            path,
                            at(),
                            format!(
                                "duplicate person key: the dataset has one row per person, and row {r0} of {} has the same person",
                                files[*f0].display()
                            ),
                        ));
                    }
                    first_row.insert(o, (fi, row));
                }
                stats.persons.insert(o);
                ordinals.push(o);
            }
            cols.push(Arc::new(UInt32Array::from(ordinals)));
            let out =
                RecordBatch::try_new(Arc::clone(&schema_out), cols).map_err(Error::internal)?;
            w.write(&out).map_err(Error::internal)?;
            stats.rows += batch.num_rows() as u64;
            row0 += batch.num_rows() as u64;
        }
    }
    match writer {
        Some(w) => {
            let f = w.into_inner().map_err(Error::internal)?;
            f.sync_all()?;
        }
        None => return Err(Error::internal("no input was read")),
    }
    Ok((
        targets.into_iter().map(|(n, (t, _))| (n, t)).collect(),
        stats,
    ))
}

/// A binding as the node keeps it (`kexin id bind`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Binding {
    pub node: String,
    pub person: String,
    pub scheme: PersonKeyScheme,
    pub bound_by: String,
    pub audit_seq: u64,
}

impl super::Node {
    /// A data holder of this node binds an individual member to a person
    /// key of the node: from then on, that person's consent receipts
    /// decide about the rows with that key. The holder signs the key's
    /// digest, never the key. A key bound to another individual is
    /// refused. Refusals are audited.
    pub fn bind_person(
        &self,
        env: &crate::identity::Signed<crate::identity::PersonBindingBody>,
    ) -> Result<Binding> {
        let b = &env.body;
        let r = self.bind_checked(env);
        self.audit_refusal(r, &b.member, "", Kind::PersonBind, None)
    }

    fn bind_checked(
        &self,
        env: &crate::identity::Signed<crate::identity::PersonBindingBody>,
    ) -> Result<Binding> {
        use crate::error::Code;
        use crate::identity::{Role, tag};
        let b = &env.body;
        let refuse = |rule| Err(Error::refused(Code::Auth, rule));
        if b.space != self.space.name || b.node != self.name {
            return refuse("the binding is for another space or node");
        }
        if !self.holder_here(&b.member) {
            return refuse("persons are bound by a data holder of this node");
        }
        let Some(scheme) = PersonKeyScheme::parse(&b.scheme) else {
            return refuse("unknown person-key scheme");
        };
        let digest: [u8; 32] = match hex::decode(&b.person_digest).ok().map(<[u8; 32]>::try_from) {
            Some(Ok(d)) => d,
            _ => return refuse("the person digest is not 32 bytes of hex"),
        };
        self.check_signed(
            env,
            tag::PERSON_BINDING,
            &b.member,
            &b.nonce,
            &b.time,
            Code::Auth,
        )?;
        let (_, cert) = crate::registry::View::open(&self.space)?.member_key(&b.person)?;
        if cert.body.role != Role::Individual {
            return refuse("only individuals are bound to person keys");
        }
        let text = serde_json::to_string(env).map_err(Error::internal)?;
        let mut store = self.store_lock()?;
        let taken: Option<(String, String, i64)> = {
            use rusqlite::OptionalExtension;
            store
                .conn
                .query_row(
                    "SELECT person, bound_by, audit_seq FROM person_binding
                     WHERE scheme = ?1 AND digest = ?2",
                    rusqlite::params![scheme.as_str(), digest.as_slice()],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?
        };
        match taken {
            // Binding again what is bound changes nothing.
            Some((p, by, seq)) if p == b.person => {
                return Ok(Binding {
                    node: self.name.clone(),
                    person: p,
                    scheme,
                    bound_by: by,
                    audit_seq: seq as u64,
                });
            }
            Some(_) => return refuse("the person key is bound to another individual"),
            None => {}
        }
        let e = self.governance_entry(&b.member, "", Kind::PersonBind, Decision::Recorded);
        let (seq, _) = store.append_with(e, &self.keys, |tx, seq| {
            tx.execute(
                "INSERT INTO person_binding (person, scheme, digest, bound_by, binding, audit_seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                rusqlite::params![
                    b.person,
                    scheme.as_str(),
                    digest.as_slice(),
                    b.member,
                    text,
                    seq as i64
                ],
            )?;
            Ok(())
        })?;
        Ok(Binding {
            node: self.name.clone(),
            person: b.person.clone(),
            scheme,
            bound_by: b.member.clone(),
            audit_seq: seq,
        })
    }

    /// The person digests the node's data holders bound to `persons`.
    pub(crate) fn bound_digests(&self, persons: &[String]) -> Result<Vec<[u8; 32]>> {
        let store = self.store_lock()?;
        let mut stmt = store
            .conn
            .prepare_cached("SELECT digest FROM person_binding WHERE person = ?1")?;
        let mut out = Vec::new();
        for p in persons {
            let rows = stmt.query_map([p], |r| r.get::<_, Vec<u8>>(0))?;
            for d in rows {
                if let Ok(d) = <[u8; 32]>::try_from(d?) {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }
}
