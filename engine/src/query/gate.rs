//! The output gate: the engine's own hidden aggregates, the rules every
//! released cell must pass, and post-processing on released cells only.
//!
//! A checked query is one releasing aggregate with post-processing above it
//! (projections over aggregates, HAVING, ORDER BY, LIMIT/OFFSET). Only the
//! aggregate runs on the data: [`instrument`] extends it with hidden columns
//! the researcher never sees:
//!
//! - `kexin_persons(<raw person key>)`: the cell's distinct persons (up to a
//!   cap), and one more per aggregate argument, counted over the rows where
//!   that argument is a finite, non-NULL value — a sum over a big cell that
//!   only one person feeds is a one-person cell;
//! - with a dominance rule, `kexin_dominance(person, |x|)` per value
//!   aggregate (the share of the cell's total held by its top `n` persons);
//! - the cell's rows, summed over the released cells into what the node
//!   contributed ([`Contribution`]): written to the node's private
//!   accounting, never to the researcher. (An exact distinct-person count
//!   per cell would touch every row's person where the capped sets stop
//!   early: measured at 3× the threshold path's time, so exact results
//!   count rows only.)
//!
//! [`apply`] then reads the result: a cell is withheld when any of its person
//! sets falls under a noisy, sticky threshold (`min_persons` plus a keyed
//! pseudo-random offset drawn from the *set of persons*, so rewriting the
//! query, adding literal group keys or asking again cannot re-draw it), when
//! its top contributors dominate a sum, or when a value is not finite.
//! Counts and sums are snapped to the scene's `round_to` grid — sums of a
//! computed argument to `round_to` times the most one row can add, so
//! `SUM(x * 0 + 1)` is rounded like a count — and other aggregates to the
//! scene's decimals.
//!
//! [`post_process`] finally runs the query's own post-processing over the
//! released cells (a table of them, in place of the aggregate), so HAVING,
//! ORDER BY and LIMIT can only ever see what was released. Nothing the gate
//! withholds is counted for keys drawn from the data: the number of withheld
//! cells is reported only when the keys have a declared public domain.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch,
};
use datafusion::arrow::compute::{cast, concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, UInt64Type};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::catalog::MemTable;
use datafusion::common::{Column, TableReference};
use datafusion::datasource::provider_as_source;
use datafusion::logical_expr::{
    AggregateUDF, Expr, ExprFunctionExt, ExprSchemable, LogicalPlan, LogicalPlanBuilder,
    Projection, SubqueryAlias, cast as cast_expr, lit,
};
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::Sha256;

use crate::accounting::Contribution;
use crate::cells::{CappedPersons, DominanceShare};
use crate::disclosure::{Analysis, Output};
use crate::error::{Error, Result};
use crate::keys::SecretKey;
use crate::policy::OutputRules;
use crate::rewrite::{PERSON_COLUMN, RAW_SCHEMA};

const PERSONS: &str = "__kexin_persons";
const DOMINANCE: &str = "__kexin_dominance";
const ROWS: &str = "__kexin_rows";
/// The released cells, as the post-processing's input table.
const RELEASED: &str = "__kexin_released";

/// How many hidden columns the instrumented aggregate appends.
#[derive(Debug, Clone, Copy)]
pub struct Hidden {
    /// Person-set columns: the cell's, then one per aggregate argument.
    pub person_columns: usize,
    /// Dominance columns after the person-set columns.
    pub dominance_columns: usize,
}

/// The hidden column after the dominance columns: the cell's rows.
const CONTRIBUTION_COLUMNS: usize = 1;

fn internal(e: impl std::fmt::Display) -> Error {
    Error::internal(format!("gate: {e}"))
}

/// The releasing aggregate of a checked plan (under its post-processing).
pub fn releasing(plan: &LogicalPlan) -> Result<&LogicalPlan> {
    match plan {
        LogicalPlan::Aggregate(_) => Ok(plan),
        LogicalPlan::Projection(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Sort(_)
        | LogicalPlan::Limit(_)
        | LogicalPlan::Filter(_) => match plan.inputs().as_slice() {
            [input] => releasing(input),
            _ => Err(internal("no releasing aggregate")),
        },
        _ => Err(internal("no releasing aggregate")),
    }
}

/// Add the gate's hidden aggregates to the releasing aggregate.
pub fn instrument(plan: LogicalPlan, rules: &OutputRules) -> Result<(LogicalPlan, Hidden)> {
    let LogicalPlan::Aggregate(agg) = plan else {
        return Err(internal("no releasing aggregate"));
    };
    let (input, pk) = carry(Arc::unwrap_or_clone(agg.input))?;
    let schema = input.schema().clone();
    // The researcher's aggregate arguments, each once, before any hidden
    // aggregate is added. Literal arguments (COUNT(*)) add no person set.
    let mut args: Vec<Expr> = Vec::new();
    let mut value_args: Vec<Expr> = Vec::new();
    for e in &agg.aggr_expr {
        let Expr::AggregateFunction(f) = strip(e) else {
            continue;
        };
        let Some(arg) = f.params.args.first() else {
            continue;
        };
        if matches!(strip(arg), Expr::Literal(..)) {
            continue;
        }
        if !args.contains(arg) {
            args.push(arg.clone());
        }
        // Dominance is a share of a numeric total; counts and a wasm
        // aggregate over strings or dates have none.
        if !f.func.name().eq_ignore_ascii_case("count")
            && arg
                .get_type(&schema)
                .is_ok_and(|t| t.is_numeric() || t.is_null())
        {
            value_args.push(arg.clone());
        }
    }
    let mut aggr = agg.aggr_expr;
    let pk_expr = Expr::Column(pk);
    // Persons are counted up to the highest threshold any cell can get.
    let cap = (rules.min_persons + threshold_spread(rules.min_persons)) as usize;
    let persons = AggregateUDF::new_from_impl(CappedPersons::new(cap));
    aggr.push(persons.call(vec![pk_expr.clone()]).alias(PERSONS));
    let mut person_columns = 1;
    for (i, arg) in args.into_iter().enumerate() {
        // A finite value: NULL, NaN and ±inf rows add nothing to the
        // aggregate (the hardened plan drops non-finite values), so they
        // make no one a contributor either.
        let present = match arg.get_type(&schema) {
            Ok(DataType::Float16 | DataType::Float32 | DataType::Float64) => {
                (arg.clone() - arg).eq(lit(0.0))
            }
            _ => arg.is_not_null(),
        };
        let call = persons
            .call(vec![pk_expr.clone()])
            .filter(present)
            .build()
            .map_err(internal)?;
        aggr.push(call.alias(format!("{PERSONS}_{i}")));
        person_columns += 1;
    }
    let mut dominance_columns = 0;
    if let Some(d) = rules.dominance {
        let udaf = AggregateUDF::new_from_impl(DominanceShare::new(d.n));
        for (i, arg) in value_args.into_iter().enumerate() {
            let call = udaf.call(vec![pk_expr.clone(), cast_expr(arg, DataType::Float64)]);
            aggr.push(call.alias(format!("{DOMINANCE}_{i}")));
            dominance_columns += 1;
        }
    }
    aggr.push(datafusion::functions_aggregate::count::count(lit(1)).alias(ROWS));
    let rebuilt =
        datafusion::logical_expr::Aggregate::try_new(Arc::new(input), agg.group_expr, aggr)
            .map_err(internal)?;
    Ok((
        LogicalPlan::Aggregate(rebuilt),
        Hidden {
            person_columns,
            dominance_columns,
        },
    ))
}

fn strip(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => strip(&a.expr),
        other => other,
    }
}

/// What the gate lets out of the releasing aggregate.
#[derive(Debug, Clone)]
pub struct Released {
    /// The released cells: the aggregate's visible columns, rounded.
    pub cells: RecordBatch,
    /// Withheld cells, told only for keys with a declared public domain
    /// (0 otherwise): a function of what was released.
    pub suppressed_groups: usize,
    /// The released cells' rows and persons (private to the node).
    pub contribution: Contribution,
}

/// Apply the release rules to the executed, instrumented aggregate.
/// `batches` may be empty (nothing ran): the answer is then the same as
/// when every cell is withheld.
pub fn apply(
    batches: &[RecordBatch],
    visible: &Schema,
    hidden: Hidden,
    analysis: &Analysis,
    rules: &OutputRules,
    threshold_key: &SecretKey,
) -> Result<Released> {
    let width = analysis.outputs.len();
    if visible.fields().len() != width {
        return Err(internal("unexpected aggregate width"));
    }
    let visible = Arc::new(Schema::new(
        visible
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), f.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    let mut kept = Vec::new();
    let mut contribution = Contribution::default();
    for batch in batches {
        let extra = width + hidden.person_columns + hidden.dominance_columns;
        if batch.num_columns() != extra + CONTRIBUTION_COLUMNS {
            return Err(internal("unexpected result width"));
        }
        let n = batch.num_rows();
        let mut keep = vec![true; n];
        for j in 0..hidden.person_columns {
            let sets = batch.column(width + j).as_list::<i32>();
            for (r, k) in keep.iter_mut().enumerate() {
                if !*k {
                    continue;
                }
                let mut set: Vec<u64> = if sets.is_null(r) {
                    Vec::new()
                } else {
                    sets.value(r).as_primitive::<UInt64Type>().values().to_vec()
                };
                set.sort_unstable();
                if (set.len() as u64) < threshold(threshold_key, rules.min_persons, &set) {
                    *k = false;
                }
            }
        }
        if let Some(d) = rules.dominance {
            for j in 0..hidden.dominance_columns {
                let c = cast(
                    batch.column(width + hidden.person_columns + j),
                    &DataType::Float64,
                )
                .map_err(internal)?;
                let s = c.as_primitive::<Float64Type>();
                for (r, k) in keep.iter_mut().enumerate() {
                    if s.is_null(r) || s.value(r) > d.k {
                        *k = false;
                    }
                }
            }
        }
        let mut columns = Vec::with_capacity(width);
        for (c, out) in analysis.outputs.iter().enumerate() {
            let (col, finite) = snap(batch.column(c), *out, rules)?;
            if let Some(finite) = finite {
                for (k, f) in keep.iter_mut().zip(finite) {
                    *k &= f;
                }
            }
            columns.push(col);
        }
        let counted = |i: usize| {
            cast(batch.column(extra + i), &DataType::Int64)
                .map_err(internal)
                .map(|c| c.as_primitive::<Int64Type>().clone())
        };
        let rows = counted(0)?;
        for (r, k) in keep.iter().enumerate() {
            if *k {
                contribution.rows += rows.value(r).max(0) as u64;
            }
        }
        let snapped = RecordBatch::try_new(Arc::clone(&visible), columns).map_err(internal)?;
        let mask = BooleanArray::from(keep);
        kept.push(filter_record_batch(&snapped, &mask).map_err(internal)?);
    }
    let cells = concat_batches(&visible, &kept).map_err(internal)?;
    let suppressed_groups = analysis.public_cells.map_or(0, |all| {
        usize::try_from(all.saturating_sub(cells.num_rows() as u64)).unwrap_or(usize::MAX)
    });
    Ok(Released {
        cells,
        suppressed_groups,
        contribution,
    })
}

/// Snap one output column to its grid, in its own type. Returns, for float
/// columns, which rows are finite (the others are withheld).
fn snap(col: &ArrayRef, out: Output, rules: &OutputRules) -> Result<(ArrayRef, Option<Vec<bool>>)> {
    let step = match out {
        Output::Key => return Ok((Arc::clone(col), None)),
        Output::Count | Output::Sum { row_bound: None } => Some(rules.round_to as f64),
        Output::Sum { row_bound: Some(b) } => Some(rules.round_to as f64 * b.max(1.0).ceil()),
        Output::Other { row_bound: None } => None,
        Output::Other { row_bound: Some(b) } => {
            Some((b * 1e-4).max(10f64.powi(-(rules.decimals as i32))))
        }
    };
    let t = col.data_type();
    if t.is_integer() {
        let v = cast(col, &DataType::Int64).map_err(internal)?;
        let v = v.as_primitive::<Int64Type>();
        let step = step.unwrap_or(1.0);
        let ok: Vec<bool> = v
            .iter()
            .map(|_| step.is_finite() && step < 9.0e15)
            .collect();
        let grid = step.min(9.0e15) as i128;
        let snapped: Int64Array = v
            .iter()
            .map(|x| {
                x.map(|i| {
                    let g = grid.max(1);
                    ((i as i128 + g / 2).div_euclid(g) * g)
                        .clamp(i64::MIN as i128, i64::MAX as i128) as i64
                })
            })
            .collect();
        let back = cast(&(Arc::new(snapped) as ArrayRef), t).map_err(internal)?;
        return Ok((back, Some(ok)));
    }
    if t.is_floating() || matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..)) {
        let v = cast(col, &DataType::Float64).map_err(internal)?;
        let v = v.as_primitive::<Float64Type>();
        let scale = 10f64.powi(rules.decimals as i32);
        let mut ok = Vec::with_capacity(v.len());
        let snapped: Float64Array = v
            .iter()
            .map(|x| {
                let y = x.map(|f| match step {
                    Some(s) => (f / s).round() * s,
                    None => (f * scale).round() / scale,
                });
                ok.push(y.is_none_or(f64::is_finite));
                y
            })
            .collect();
        let back = cast(&(Arc::new(snapped) as ArrayRef), t).map_err(internal)?;
        return Ok((back, Some(ok)));
    }
    Ok((Arc::clone(col), None))
}

/// The post-processing of `plan` (everything above its releasing aggregate)
/// over the released cells in place of the aggregate.
pub fn post_process(plan: &LogicalPlan, released: RecordBatch) -> Result<LogicalPlan> {
    post_process_with(plan, released, false)
}

/// The column [`post_process_tracked`] carries through the post-processing.
pub const ROW: &str = "__kexin_row";

/// [`post_process`] where `released` has one more column than the
/// aggregate, last: a row number that every projection above keeps (as
/// its last column, [`ROW`]), so that what the researcher gets can be
/// traced back to the released row it came from (in DP scenes, to carry
/// each value's interval).
pub fn post_process_tracked(plan: &LogicalPlan, released: RecordBatch) -> Result<LogicalPlan> {
    post_process_with(plan, released, true)
}

fn post_process_with(
    plan: &LogicalPlan,
    released: RecordBatch,
    tracked: bool,
) -> Result<LogicalPlan> {
    let agg = releasing(plan)?;
    let names: Vec<Field> = released
        .schema()
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| Field::new(format!("c{i}"), f.data_type().clone(), true))
        .collect();
    let schema = Arc::new(Schema::new(names));
    let batch =
        RecordBatch::try_new(Arc::clone(&schema), released.columns().to_vec()).map_err(internal)?;
    let table = MemTable::try_new(schema, vec![vec![batch]]).map_err(internal)?;
    let name = TableReference::partial(RAW_SCHEMA, RELEASED);
    let scan = LogicalPlanBuilder::scan(name.clone(), provider_as_source(Arc::new(table)), None)
        .and_then(LogicalPlanBuilder::build)
        .map_err(internal)?;
    let mut exprs: Vec<Expr> = agg
        .schema()
        .iter()
        .enumerate()
        .map(|(i, (q, f))| {
            Expr::Column(Column::new(Some(name.clone()), format!("c{i}")))
                .alias_qualified(q.cloned(), f.name())
        })
        .collect();
    if tracked {
        let n = agg.schema().fields().len();
        if released.num_columns() != n + 1 {
            return Err(internal("released rows without their row numbers"));
        }
        exprs.push(Expr::Column(Column::new(Some(name.clone()), format!("c{n}"))).alias(ROW));
    }
    let cells =
        LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(scan)).map_err(internal)?);
    rebuild(plan, cells, tracked)
}

fn rebuild(plan: &LogicalPlan, cells: LogicalPlan, tracked: bool) -> Result<LogicalPlan> {
    if let LogicalPlan::Aggregate(_) = plan {
        return Ok(cells);
    }
    let inputs = plan.inputs();
    let [input] = inputs.as_slice() else {
        return Err(internal("no releasing aggregate"));
    };
    let input = rebuild(input, cells, tracked)?;
    let mut exprs = plan.expressions();
    if tracked && matches!(plan, LogicalPlan::Projection(_)) {
        exprs.push(Expr::Column(Column::from_name(ROW)));
    }
    plan.with_new_exprs(exprs, vec![input]).map_err(internal)
}

/// How far above `min_persons` the noisy threshold can go.
pub fn threshold_spread(min_persons: u64) -> u64 {
    (min_persons / 5).max(1)
}

/// The noisy, sticky threshold for one set of persons: `min_persons +
/// offset`, with the offset in `0..=spread` drawn from HMAC(key, the sorted
/// person hashes). Only the set decides it: the same persons get the same
/// threshold however the query names their cell. A full set (the cap) is
/// above every threshold.
fn threshold(key: &SecretKey, min_persons: u64, persons: &[u64]) -> u64 {
    let spread = threshold_spread(min_persons);
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.expose())
        .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default()));
    mac.update(&(persons.len() as u64).to_le_bytes());
    for p in persons {
        mac.update(&p.to_le_bytes());
    }
    let out = mac.finalize().into_bytes();
    let mut b = [0u8; 8];
    b.copy_from_slice(&out[..8]);
    min_persons + u64::from_le_bytes(b) % (spread + 1)
}

/// Carry the person (ordinal or raw key, [`PERSON_COLUMN`]) from the
/// scans up to `plan`'s output.
pub(crate) fn carry(plan: LogicalPlan) -> Result<(LogicalPlan, Column)> {
    carry_column(plan, PERSON_COLUMN)
}

/// Carry the hidden column `name` from the scans up to `plan`'s output.
pub(crate) fn carry_column(plan: LogicalPlan, name: &str) -> Result<(LogicalPlan, Column)> {
    let found = plan
        .schema()
        .iter()
        .find(|(_, f)| f.name() == name)
        .map(|(q, f)| Column::new(q.cloned(), f.name().clone()));
    if let Some(col) = found {
        return Ok((plan, col));
    }
    match plan {
        LogicalPlan::Projection(p) => {
            let (input, pk) = carry_column(Arc::unwrap_or_clone(p.input), name)?;
            let mut exprs = p.expr;
            exprs.push(Expr::Column(pk.clone()));
            let proj = Projection::try_new(exprs, Arc::new(input)).map_err(internal)?;
            Ok((LogicalPlan::Projection(proj), pk))
        }
        LogicalPlan::SubqueryAlias(a) => {
            let (input, pk) = carry_column(Arc::unwrap_or_clone(a.input), name)?;
            let alias =
                SubqueryAlias::try_new(Arc::new(input), a.alias.clone()).map_err(internal)?;
            Ok((
                LogicalPlan::SubqueryAlias(alias),
                Column::new(Some(a.alias), pk.name),
            ))
        }
        node @ (LogicalPlan::Filter(_) | LogicalPlan::Join(_)) => {
            let exprs = node.expressions();
            let mut inputs = Vec::new();
            let mut pk = None;
            for child in node.inputs() {
                let (c, k) = carry_column(child.clone(), name)?;
                pk.get_or_insert(k);
                inputs.push(c);
            }
            let rebuilt = node.with_new_exprs(exprs, inputs).map_err(internal)?;
            let pk = pk.ok_or_else(|| internal("no person key"))?;
            // Re-resolve: after a join the column keeps its side's qualifier.
            let col = rebuilt
                .schema()
                .iter()
                .find(|(q, f)| f.name() == name && q.cloned() == pk.relation)
                .map(|(q, f)| Column::new(q.cloned(), f.name().clone()))
                .ok_or_else(|| internal("person key lost"))?;
            Ok((rebuilt, col))
        }
        _ => Err(internal("cannot carry the person key through this node")),
    }
}

// ---------------------------------------------------------------- release

/// One released value.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Cell {
    Null,
    Int(i64),
    Float(f64),
    Bool(bool),
    Text(String),
}

impl Cell {
    pub(crate) fn key_text(&self) -> String {
        match self {
            Cell::Null => "\u{0}null".into(),
            Cell::Int(i) => format!("i{i}"),
            Cell::Float(f) => format!("f{f}"),
            Cell::Bool(b) => format!("b{b}"),
            Cell::Text(s) => format!("s{s}"),
        }
    }
}

/// Released rows as a table for their post-processing: each column in the
/// type its cells have (integers, floats when any cell is one, text,
/// booleans; `types[c]` when every cell is NULL), and with `row_numbers`
/// a last Int64 column numbering the rows.
pub(crate) fn cells_batch(
    rows: &[Vec<Cell>],
    types: &[DataType],
    row_numbers: bool,
) -> Result<RecordBatch> {
    use datafusion::arrow::array::{StringArray, new_null_array};
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (c, t) in types.iter().enumerate() {
        let cells: Vec<&Cell> = rows
            .iter()
            .map(|r| r.get(c).unwrap_or(&Cell::Null))
            .collect();
        let has = |f: fn(&Cell) -> bool| cells.iter().any(|x| f(x));
        let col: ArrayRef = if has(|x| matches!(x, Cell::Text(_))) {
            Arc::new(
                cells
                    .iter()
                    .map(|x| match x {
                        Cell::Null => None,
                        Cell::Text(s) => Some(s.clone()),
                        other => Some(other.key_text()),
                    })
                    .collect::<StringArray>(),
            )
        } else if has(|x| matches!(x, Cell::Float(_))) {
            Arc::new(
                cells
                    .iter()
                    .map(|x| match x {
                        Cell::Float(f) => Some(*f),
                        Cell::Int(i) => Some(*i as f64),
                        _ => None,
                    })
                    .collect::<Float64Array>(),
            )
        } else if has(|x| matches!(x, Cell::Int(_))) {
            Arc::new(
                cells
                    .iter()
                    .map(|x| match x {
                        Cell::Int(i) => Some(*i),
                        _ => None,
                    })
                    .collect::<Int64Array>(),
            )
        } else if has(|x| matches!(x, Cell::Bool(_))) {
            Arc::new(
                cells
                    .iter()
                    .map(|x| match x {
                        Cell::Bool(b) => Some(*b),
                        _ => None,
                    })
                    .collect::<BooleanArray>(),
            )
        } else {
            new_null_array(t, rows.len())
        };
        fields.push(Field::new(format!("c{c}"), col.data_type().clone(), true));
        columns.push(col);
    }
    if row_numbers {
        let n = types.len();
        fields.push(Field::new(format!("c{n}"), DataType::Int64, false));
        columns.push(Arc::new(Int64Array::from_iter_values(
            (0..rows.len()).map(|i| i as i64),
        )));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(internal)
}

pub(crate) fn column_cells(arr: &ArrayRef) -> Result<Vec<Cell>> {
    use datafusion::arrow::datatypes::{
        Float32Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt32Type, UInt64Type,
    };
    let n = arr.len();
    let mut out = Vec::with_capacity(n);
    macro_rules! prim {
        ($t:ty, $f:expr) => {{
            let a = arr.as_primitive::<$t>();
            for i in 0..n {
                out.push(if a.is_null(i) {
                    Cell::Null
                } else {
                    $f(a.value(i))
                });
            }
        }};
    }
    match arr.data_type() {
        DataType::Int8 => prim!(Int8Type, |v: i8| Cell::Int(v as i64)),
        DataType::Int16 => prim!(Int16Type, |v: i16| Cell::Int(v as i64)),
        DataType::Int32 => prim!(Int32Type, |v: i32| Cell::Int(v as i64)),
        DataType::Int64 => prim!(Int64Type, Cell::Int),
        DataType::UInt32 => prim!(UInt32Type, |v: u32| Cell::Int(v as i64)),
        DataType::UInt64 => prim!(UInt64Type, |v: u64| Cell::Int(
            i64::try_from(v).unwrap_or(i64::MAX)
        )),
        DataType::Float32 => prim!(Float32Type, |v: f32| Cell::Float(v as f64)),
        DataType::Float64 => prim!(Float64Type, Cell::Float),
        DataType::Boolean => {
            let a = arr.as_boolean();
            for i in 0..n {
                out.push(if a.is_null(i) {
                    Cell::Null
                } else {
                    Cell::Bool(a.value(i))
                });
            }
        }
        DataType::Decimal128(_, _) => {
            let f = cast(arr, &DataType::Float64).map_err(internal)?;
            return column_cells(&f);
        }
        _ => {
            let fmt = ArrayFormatter::try_new(arr.as_ref(), &FormatOptions::default())
                .map_err(internal)?;
            for i in 0..n {
                out.push(if arr.is_null(i) {
                    Cell::Null
                } else {
                    Cell::Text(fmt.value(i).to_string())
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> OutputRules {
        OutputRules {
            min_persons: 10,
            round_to: 5,
            decimals: 2,
            dominance: None,
        }
    }

    #[test]
    fn threshold_is_sticky_bounded_and_drawn_from_the_person_set() {
        let k = SecretKey::from_bytes([1; 32]);
        let set: Vec<u64> = (0..11).collect();
        let t = threshold(&k, 10, &set);
        assert_eq!(t, threshold(&k, 10, &set));
        assert!((10..=12).contains(&t));
        // Other sets of the same size get other offsets somewhere: the
        // draw follows the persons, not the cell's name or size.
        let distinct: std::collections::BTreeSet<u64> = (0..40u64)
            .map(|i| threshold(&k, 10, &(i * 100..i * 100 + 11).collect::<Vec<_>>()))
            .collect();
        assert!(distinct.len() > 1);
    }

    fn snapped(col: ArrayRef, out: Output) -> (ArrayRef, Option<Vec<bool>>) {
        snap(&col, out, &rules()).unwrap()
    }

    #[test]
    fn counts_and_sums_snap_to_the_grid_and_non_finite_is_withheld() {
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![12, 13, 1_000_003]));
        let (c, _) = snapped(Arc::clone(&ints), Output::Count);
        assert_eq!(c.as_primitive::<Int64Type>().values(), &[10, 15, 1_000_005]);
        // A sum of a computed argument whose rows add at most 1000 snaps to
        // 5 × 1000: `SUM(x * 0 + 1000)` says no more than a rounded count.
        let (c, _) = snapped(
            ints,
            Output::Sum {
                row_bound: Some(1000.0),
            },
        );
        assert_eq!(c.as_primitive::<Int64Type>().values(), &[0, 0, 1_000_000]);
        let floats: ArrayRef = Arc::new(Float64Array::from(vec![
            1.23456,
            f64::NAN,
            f64::INFINITY,
            12_000.0,
        ]));
        let (c, ok) = snapped(Arc::clone(&floats), Output::Other { row_bound: None });
        assert_eq!(c.as_primitive::<Float64Type>().value(0), 1.23);
        assert_eq!(ok, Some(vec![true, false, false, true]));
        let (c, _) = snapped(
            floats,
            Output::Sum {
                row_bound: Some(1000.0),
            },
        );
        assert_eq!(c.as_primitive::<Float64Type>().value(3), 10_000.0);
    }
}
