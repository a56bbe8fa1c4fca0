//! Approved WebAssembly UDFs as DataFusion functions.
//!
//! Modules live in the space's content store, `udfs/<hex digest>.wasm`. A
//! scene's approved set is the digests its policy lists plus those the
//! node's data holder registered for it. Every query re-reads and re-hashes
//! each approved module (an altered file is refused, never run), compiles
//! it once per node (cached by digest), and registers its functions in the
//! query's own session, each bound to a fresh per-query [`Session`] of
//! instances. The functions see only what the scan rewrite produced: masked,
//! clamped columns of the scene.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{Result as DfResult, ScalarValue};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};
use kexin_sandbox::abi::arrow_type;
use kexin_sandbox::{CallLimits, Fault, Function, Kind, Limits, Module, Sandbox, Session, Type};

use crate::error::{Code, Error, Refusal, Result};

/// The fixed refusal for a sandbox fault.
pub fn fault_refusal(f: Fault) -> Refusal {
    let (code, rule) = match f {
        Fault::Module => (
            Code::UdfModule,
            "the UDF module is malformed, too large, or took too long to compile",
        ),
        Fault::Import => (
            Code::UdfImport,
            "the UDF module imports something the kexin ABI does not provide",
        ),
        Fault::Manifest => (
            Code::UdfManifest,
            "the UDF module's manifest or ABI exports are missing or invalid",
        ),
        Fault::Signature => (
            Code::UdfSignature,
            "the UDF call does not match the function's declared signature",
        ),
        Fault::Fuel => (Code::UdfFuel, "the UDF ran out of fuel or time"),
        Fault::Memory => (
            Code::UdfMemory,
            "the UDF exceeded its memory or table limit",
        ),
        Fault::Stack => (Code::UdfStack, "the UDF exhausted its stack"),
        Fault::Trap => (Code::UdfTrap, "the UDF trapped"),
        Fault::Output => (Code::UdfOutput, "the UDF's output failed validation"),
        Fault::Busy => (
            Code::ExecLimit,
            "the node has no free UDF instance slot; try again later",
        ),
        _ => (Code::UdfTrap, "the UDF failed"),
    };
    Refusal::new(code, rule)
}

/// The sandbox fault inside a DataFusion error, if the error came from a UDF.
pub fn find_fault(e: &DataFusionError) -> Option<Fault> {
    let mut cur: &dyn std::error::Error = e;
    loop {
        if let Some(f) = cur.downcast_ref::<Fault>() {
            return Some(*f);
        }
        if let Some(DataFusionError::External(b)) = cur.downcast_ref::<DataFusionError>()
            && let Some(f) = b.downcast_ref::<Fault>()
        {
            return Some(*f);
        }
        cur = cur.source()?;
    }
}

fn df_fault(f: Fault) -> DataFusionError {
    DataFusionError::External(Box::new(f))
}

/// Where module bytes live: `<space>/udfs/<hex>.wasm`.
pub fn module_path(space_dir: &Path, digest: &str) -> Option<PathBuf> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| space_dir.join("udfs").join(format!("{hex}.wasm")))
}

/// What the disclosure checker needs to know about a UDF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdfFacts {
    pub aggregate: bool,
    /// The output has a declared finite domain (usable as a group key).
    pub finite_domain: bool,
    /// A declared integer range: public bounds for DP sums.
    pub range: Option<(i64, i64)>,
}

/// The node's UDF host: one sandbox and the compiled-module cache.
#[derive(Debug)]
pub struct UdfHost {
    sandbox: Sandbox,
    modules: Mutex<HashMap<String, Module>>,
}

impl UdfHost {
    pub fn new(limits: Limits) -> Result<UdfHost> {
        Ok(UdfHost {
            sandbox: Sandbox::new(limits).map_err(Error::internal)?,
            modules: Mutex::new(HashMap::new()),
        })
    }

    /// Check and compile module bytes (registration path).
    pub fn load_bytes(&self, bytes: &[u8]) -> Result<Module> {
        self.load_hashed(bytes, kexin_sandbox::module_digest(bytes))
    }

    /// [`UdfHost::load_bytes`] for bytes whose digest the caller computed.
    fn load_hashed(&self, bytes: &[u8], digest: String) -> Result<Module> {
        if let Some(m) = self.cached(&digest)? {
            return Ok(m);
        }
        let m = self
            .sandbox
            .load(bytes)
            .map_err(|f| Error::Refused(fault_refusal(f)))?;
        self.modules
            .lock()
            .map_err(|_| Error::internal("module cache lock poisoned"))?
            .insert(digest, m.clone());
        Ok(m)
    }

    fn cached(&self, digest: &str) -> Result<Option<Module>> {
        Ok(self
            .modules
            .lock()
            .map_err(|_| Error::internal("module cache lock poisoned"))?
            .get(digest)
            .cloned())
    }

    /// Load an approved module from the content store, refusing it if the
    /// file is missing or its bytes hash to anything but `digest`.
    pub fn load_approved(&self, space_dir: &Path, digest: &str) -> Result<Module> {
        let unapproved = || {
            Error::refused(
                Code::UdfUnapproved,
                "an approved UDF module is missing or no longer matches its digest",
            )
        };
        let path = module_path(space_dir, digest).ok_or_else(unapproved)?;
        let bytes = std::fs::read(&path).map_err(|_| unapproved())?;
        let actual = kexin_sandbox::module_digest(&bytes);
        if actual != digest {
            return Err(unapproved());
        }
        self.load_hashed(&bytes, actual)
    }
}

/// The functions one query may call, bound to that query's instances.
#[derive(Debug, Default)]
pub struct QueryUdfs {
    pub scalars: Vec<ScalarUDF>,
    pub aggregates: Vec<AggregateUDF>,
    pub facts: BTreeMap<String, UdfFacts>,
    /// Function name → module digest, for the audit record.
    pub digests: BTreeMap<String, String>,
    /// Function name → declared utf8 value list: a public domain for DP
    /// group keys.
    pub domains: BTreeMap<String, Vec<String>>,
    /// A signature mismatch seen while planning. DataFusion turns coercion
    /// errors into plan-error text, so the fault is kept here as well.
    planning_fault: Arc<Mutex<Option<Fault>>>,
    /// Rows whose UDF call faulted and counted as NULL in this query.
    row_faults: Arc<AtomicUsize>,
}

/// How many rows of one query may fault (and count as NULL) before the
/// whole query fails instead: past this the module is broken, not a few
/// values unlucky, and isolating every row would cost a call per row.
pub const MAX_ROW_FAULTS: usize = 64;

/// Faults the module's own code raised on some input, which isolating the
/// rows can pin down, as opposed to a call the host refused.
fn row_fault(f: Fault) -> bool {
    matches!(
        f,
        Fault::Fuel | Fault::Memory | Fault::Stack | Fault::Trap | Fault::Output
    )
}

/// Rows `at..at + len` of every array.
fn rows_of(arrays: &[ArrayRef], at: usize, len: usize) -> Vec<ArrayRef> {
    arrays.iter().map(|a| a.slice(at, len)).collect()
}

impl QueryUdfs {
    /// The sandbox fault recorded while planning, if any.
    pub fn planning_fault(&self) -> Option<Fault> {
        self.planning_fault.lock().ok().and_then(|f| *f)
    }

    /// Bind every function of `modules` to fresh per-query sessions.
    pub fn bind(modules: &[Module], limits: CallLimits) -> Result<QueryUdfs> {
        let mut out = QueryUdfs::default();
        for m in modules {
            let session = Arc::new(m.session(limits));
            for f in &m.manifest().functions {
                if out.facts.contains_key(&f.name) {
                    return Err(Error::refused(
                        Code::UdfManifest,
                        "two approved UDF modules declare the same function name",
                    ));
                }
                out.facts.insert(
                    f.name.clone(),
                    UdfFacts {
                        aggregate: f.kind == Kind::Aggregate,
                        finite_domain: f.finite_domain(),
                        range: match &f.domain {
                            Some(kexin_sandbox::Domain::Range([lo, hi])) => Some((*lo, *hi)),
                            _ => None,
                        },
                    },
                );
                if let Some(kexin_sandbox::Domain::Values(v)) = &f.domain {
                    out.domains.insert(f.name.clone(), v.clone());
                }
                out.digests.insert(f.name.clone(), m.digest().to_string());
                let w = Arc::new(Wasm {
                    decl: f.clone(),
                    digest: m.digest().to_string(),
                    signature: Signature::user_defined(Volatility::Immutable),
                    session: Arc::clone(&session),
                    planning_fault: Arc::clone(&out.planning_fault),
                    row_faults: Arc::clone(&out.row_faults),
                });
                match f.kind {
                    Kind::Scalar => out.scalars.push(ScalarUDF::new_from_impl(WasmScalar(w))),
                    Kind::Aggregate => out
                        .aggregates
                        .push(AggregateUDF::new_from_impl(WasmAggregate(w))),
                }
            }
        }
        Ok(out)
    }
}

/// A declared function bound to a query's session.
#[derive(Debug)]
struct Wasm {
    decl: Function,
    digest: String,
    signature: Signature,
    session: Arc<Session>,
    planning_fault: Arc<Mutex<Option<Fault>>>,
    row_faults: Arc<AtomicUsize>,
}

impl PartialEq for Wasm {
    fn eq(&self, o: &Self) -> bool {
        self.decl.name == o.decl.name && self.digest == o.digest
    }
}
impl Eq for Wasm {}
impl Hash for Wasm {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.decl.name.hash(h);
        self.digest.hash(h);
    }
}

/// Whether a SQL argument of type `from` may be passed as ABI type `to`.
fn coercible(from: &DataType, to: Type) -> bool {
    use DataType as D;
    match (from, to) {
        (D::Null, _) => true,
        (f, Type::F64) => f.is_numeric(),
        (f, Type::I32 | Type::I64) => f.is_integer(),
        (D::Boolean, Type::Bool) => true,
        (D::Utf8 | D::Utf8View | D::LargeUtf8, Type::Utf8) => true,
        (D::Date32 | D::Date64, Type::Date) => true,
        _ => false,
    }
}

impl Wasm {
    /// Count one faulting row; `false` once the query has had too many.
    fn tolerate(&self) -> bool {
        self.row_faults.fetch_add(1, Ordering::Relaxed) < MAX_ROW_FAULTS
    }

    /// Call the scalar over `rows` rows. A fault that rows' values can
    /// cause is pinned down by halving the batch: each row whose own call
    /// faults is NULL, as if its value were missing, so one person's value
    /// changes one value and never the whole query's fate (up to
    /// [`MAX_ROW_FAULTS`] per query).
    fn call_isolated(
        &self,
        arrays: &[ArrayRef],
        rows: usize,
    ) -> std::result::Result<ArrayRef, Fault> {
        match self.session.call_scalar(&self.decl.name, arrays, rows) {
            Err(f) if row_fault(f) && rows == 1 => {
                if self.tolerate() {
                    Ok(datafusion::arrow::array::new_null_array(
                        &arrow_type(self.decl.returns),
                        1,
                    ))
                } else {
                    Err(f)
                }
            }
            Err(f) if row_fault(f) && rows > 1 => {
                let half = rows / 2;
                let left = self.call_isolated(&rows_of(arrays, 0, half), half)?;
                let right = self.call_isolated(&rows_of(arrays, half, rows - half), rows - half)?;
                datafusion::arrow::compute::concat(&[left.as_ref(), right.as_ref()])
                    .map_err(|_| Fault::Output)
            }
            other => other,
        }
    }

    /// Fold `rows` rows into `state`, skipping (as NULL) each row whose own
    /// update faults, like [`Self::call_isolated`]. A failed update leaves
    /// the state as it was.
    fn update_isolated(
        &self,
        state: &mut Vec<u8>,
        arrays: &[ArrayRef],
        rows: usize,
    ) -> std::result::Result<(), Fault> {
        match self
            .session
            .aggregate_update(&self.decl.name, state, arrays, rows)
        {
            Err(f) if row_fault(f) && rows == 1 => {
                if self.tolerate() {
                    Ok(())
                } else {
                    Err(f)
                }
            }
            Err(f) if row_fault(f) && rows > 1 => {
                let half = rows / 2;
                self.update_isolated(state, &rows_of(arrays, 0, half), half)?;
                self.update_isolated(state, &rows_of(arrays, half, rows - half), rows - half)
            }
            other => other,
        }
    }

    fn coerce(&self, args: &[DataType]) -> DfResult<Vec<DataType>> {
        if args.len() != self.decl.args.len()
            || !args
                .iter()
                .zip(&self.decl.args)
                .all(|(a, t)| coercible(a, *t))
        {
            if let Ok(mut f) = self.planning_fault.lock() {
                *f = Some(Fault::Signature);
            }
            return Err(df_fault(Fault::Signature));
        }
        Ok(self.decl.args.iter().map(|t| arrow_type(*t)).collect())
    }

    /// Materialise and cast arguments to the declared Arrow types.
    fn arrays(&self, args: &[ArrayRef]) -> DfResult<Vec<ArrayRef>> {
        args.iter()
            .zip(&self.decl.args)
            .map(|(a, t)| {
                let want = arrow_type(*t);
                if a.data_type() == &want {
                    Ok(Arc::clone(a))
                } else {
                    Ok(cast(a, &want)?)
                }
            })
            .collect()
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct WasmScalar(Arc<Wasm>);

impl ScalarUDFImpl for WasmScalar {
    fn name(&self) -> &str {
        &self.0.decl.name
    }
    fn signature(&self) -> &Signature {
        &self.0.signature
    }
    fn coerce_types(&self, args: &[DataType]) -> DfResult<Vec<DataType>> {
        self.0.coerce(args)
    }
    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(arrow_type(self.0.decl.returns))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let raw = args
            .args
            .iter()
            .map(|a| a.to_array(rows))
            .collect::<DfResult<Vec<_>>>()?;
        let arrays = self.0.arrays(&raw)?;
        let out = self.0.call_isolated(&arrays, rows).map_err(df_fault)?;
        Ok(ColumnarValue::Array(out))
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct WasmAggregate(Arc<Wasm>);

impl AggregateUDFImpl for WasmAggregate {
    fn name(&self) -> &str {
        &self.0.decl.name
    }
    fn signature(&self) -> &Signature {
        &self.0.signature
    }
    fn coerce_types(&self, args: &[DataType]) -> DfResult<Vec<DataType>> {
        self.0.coerce(args)
    }
    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(arrow_type(self.0.decl.returns))
    }
    fn accumulator(&self, _args: AccumulatorArgs) -> DfResult<Box<dyn Accumulator>> {
        let state = self
            .0
            .session
            .aggregate_init(&self.0.decl.name)
            .map_err(df_fault)?;
        Ok(Box::new(WasmAccumulator {
            wasm: Arc::clone(&self.0),
            state,
        }))
    }
    fn state_fields(&self, args: StateFieldsArgs) -> DfResult<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format_state_name(args.name, "wasm_state"),
            DataType::Binary,
            true,
        ))])
    }
}

/// One group's (or partition's) state of a wasm aggregate, kept host-side.
#[derive(Debug)]
struct WasmAccumulator {
    wasm: Arc<Wasm>,
    state: Vec<u8>,
}

impl Accumulator for WasmAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        let rows = values.first().map_or(0, |a| a.len());
        if rows == 0 {
            return Ok(());
        }
        let arrays = self.wasm.arrays(values)?;
        self.wasm
            .update_isolated(&mut self.state, &arrays, rows)
            .map_err(df_fault)
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        let out = self
            .wasm
            .session
            .aggregate_finalize(&self.wasm.decl.name, &self.state)
            .map_err(df_fault)?;
        ScalarValue::try_from_array(&out, 0)
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.state.capacity()
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::Binary(Some(self.state.clone()))])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        let Some(col) = states.first() else {
            return Ok(());
        };
        let bin = col
            .as_binary_opt::<i32>()
            .ok_or_else(|| df_fault(Fault::Signature))?;
        for other in bin.iter().flatten() {
            self.wasm
                .session
                .aggregate_merge(&self.wasm.decl.name, &mut self.state, other)
                .map_err(df_fault)?;
        }
        Ok(())
    }
}
