//! The output gate: the engine's own hidden aggregates, and the rules every
//! released cell must pass.
//!
//! [`instrument`] extends the releasing aggregate with hidden columns the
//! researcher never sees: `COUNT(DISTINCT <raw person key>)` per group and,
//! when the scene has a dominance rule, `kexin_dominance(person, |x|)` per
//! value aggregate (the share of the cell's total held by its top `n`
//! persons). The raw person key is carried from the scans up to the aggregate
//! through the researcher's projections, filters, aliases and joins.
//!
//! [`apply`] then reads the result: a group is suppressed when its distinct
//! persons fall under a noisy, sticky threshold (`min_persons` plus a keyed
//! pseudo-random offset that depends only on the group's key and person count,
//! so asking again or rewriting the query cannot re-roll it), when its top
//! contributors dominate a sum, or when a value is not finite. Released
//! integer aggregates are rounded to `round_to`, floating ones to `decimals`.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::common::Column;
use datafusion::logical_expr::{
    AggregateUDF, Expr, ExprSchemable, LogicalPlan, Projection, SubqueryAlias, cast as cast_expr,
};
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::Sha256;

use crate::cells::{CappedPersons, DominanceShare};
use crate::disclosure::Analysis;
use crate::error::{Error, Result};
use crate::mask::SecretKey;
use crate::policy::OutputRules;
use crate::rewrite::PERSON_COLUMN;

const PERSONS: &str = "__kexin_persons";
const DOMINANCE: &str = "__kexin_dominance";

/// How many hidden columns the instrumented plan appends to the output.
#[derive(Debug, Clone, Copy)]
pub struct Hidden {
    /// Number of dominance columns after the persons column.
    pub dominance_columns: usize,
}

/// Add the gate's hidden aggregates to the releasing aggregate.
pub fn instrument(plan: LogicalPlan, rules: &OutputRules) -> Result<(LogicalPlan, Hidden)> {
    let (plan, hidden) = top(plan, rules)?;
    Ok((
        plan,
        Hidden {
            dominance_columns: hidden.len() - 1,
        },
    ))
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::internal(format!("gate instrumentation: {e}"))
}

/// Rebuild the chain above the releasing aggregate; returns the hidden columns.
fn top(plan: LogicalPlan, rules: &OutputRules) -> Result<(LogicalPlan, Vec<Column>)> {
    match plan {
        LogicalPlan::Projection(p) => {
            let (input, hidden) = top(Arc::unwrap_or_clone(p.input), rules)?;
            let mut exprs = p.expr;
            exprs.extend(hidden.iter().cloned().map(Expr::Column));
            let proj = LogicalPlan::Projection(
                Projection::try_new(exprs, Arc::new(input)).map_err(internal)?,
            );
            // Column expressions keep their qualifier in the output schema.
            let hidden = requalify(&proj, hidden);
            Ok((proj, hidden))
        }
        LogicalPlan::SubqueryAlias(a) => {
            let (input, hidden) = top(Arc::unwrap_or_clone(a.input), rules)?;
            let alias =
                SubqueryAlias::try_new(Arc::new(input), a.alias.clone()).map_err(internal)?;
            let hidden = hidden
                .into_iter()
                .map(|c| Column::new(Some(a.alias.clone()), c.name))
                .collect();
            Ok((LogicalPlan::SubqueryAlias(alias), hidden))
        }
        node @ (LogicalPlan::Sort(_) | LogicalPlan::Limit(_)) => {
            let exprs = node.expressions();
            let input = node
                .inputs()
                .first()
                .map(|p| (*p).clone())
                .ok_or_else(|| internal("no input"))?;
            let (input, hidden) = top(input, rules)?;
            let rebuilt = node.with_new_exprs(exprs, vec![input]).map_err(internal)?;
            Ok((rebuilt, hidden))
        }
        LogicalPlan::Aggregate(agg) => {
            let (input, pk) = carry(Arc::unwrap_or_clone(agg.input))?;
            // Arguments of the researcher's value aggregates (not COUNT), taken
            // before any hidden aggregate is added.
            let value_args: Vec<Expr> = agg
                .aggr_expr
                .iter()
                .map(|e| match e {
                    Expr::Alias(a) => a.expr.as_ref(),
                    other => other,
                })
                .filter_map(|e| match e {
                    Expr::AggregateFunction(f) if !f.func.name().eq_ignore_ascii_case("count") => {
                        f.params.args.first().cloned()
                    }
                    _ => None,
                })
                // Dominance is a share of a numeric total; a wasm aggregate
                // over strings or dates has none.
                .filter(|a| {
                    a.get_type(input.schema())
                        .is_ok_and(|t| t.is_numeric() || t.is_null())
                })
                .collect();
            let mut aggr = agg.aggr_expr;
            let pk_expr = Expr::Column(pk);
            // Persons are counted up to the highest threshold any group can get.
            let cap = (rules.min_persons + threshold_spread(rules.min_persons)) as usize;
            let persons = AggregateUDF::new_from_impl(CappedPersons::new(cap));
            aggr.push(persons.call(vec![pk_expr.clone()]).alias(PERSONS));
            let mut hidden = vec![Column::new_unqualified(PERSONS)];
            if let Some(d) = rules.dominance {
                let udaf = AggregateUDF::new_from_impl(DominanceShare::new(d.n));
                for (i, arg) in value_args.into_iter().enumerate() {
                    let name = format!("{DOMINANCE}_{i}");
                    let call = udaf.call(vec![pk_expr.clone(), cast_expr(arg, DataType::Float64)]);
                    aggr.push(call.alias(name.clone()));
                    hidden.push(Column::new_unqualified(name));
                }
            }
            let rebuilt =
                datafusion::logical_expr::Aggregate::try_new(Arc::new(input), agg.group_expr, aggr)
                    .map_err(internal)?;
            Ok((LogicalPlan::Aggregate(rebuilt), hidden))
        }
        _ => Err(internal("no releasing aggregate")),
    }
}

/// Find each hidden column's qualified name in `plan`'s output schema.
fn requalify(plan: &LogicalPlan, hidden: Vec<Column>) -> Vec<Column> {
    hidden
        .into_iter()
        .map(|c| {
            plan.schema()
                .iter()
                .find(|(_, f)| f.name() == &c.name)
                .map(|(q, f)| Column::new(q.cloned(), f.name().clone()))
                .unwrap_or(c)
        })
        .collect()
}

/// Carry the raw person key from the scans up to `plan`'s output.
pub(crate) fn carry(plan: LogicalPlan) -> Result<(LogicalPlan, Column)> {
    let found = plan
        .schema()
        .iter()
        .find(|(_, f)| f.name() == PERSON_COLUMN)
        .map(|(q, f)| Column::new(q.cloned(), f.name().clone()));
    if let Some(col) = found {
        return Ok((plan, col));
    }
    match plan {
        LogicalPlan::Projection(p) => {
            let (input, pk) = carry(Arc::unwrap_or_clone(p.input))?;
            let mut exprs = p.expr;
            exprs.push(Expr::Column(pk.clone()));
            let proj = Projection::try_new(exprs, Arc::new(input)).map_err(internal)?;
            Ok((LogicalPlan::Projection(proj), pk))
        }
        LogicalPlan::SubqueryAlias(a) => {
            let (input, pk) = carry(Arc::unwrap_or_clone(a.input))?;
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
                let (c, k) = carry(child.clone())?;
                pk.get_or_insert(k);
                inputs.push(c);
            }
            let rebuilt = node.with_new_exprs(exprs, inputs).map_err(internal)?;
            let pk = pk.ok_or_else(|| internal("no person key"))?;
            // Re-resolve: after a join the column keeps its side's qualifier.
            let col = rebuilt
                .schema()
                .iter()
                .find(|(q, f)| f.name() == PERSON_COLUMN && q.cloned() == pk.relation)
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

/// What the gate lets out.
#[derive(Debug, Clone, PartialEq)]
pub struct Released {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
    pub suppressed_groups: usize,
    /// Why groups were suppressed: (rule, count).
    pub reasons: Vec<(&'static str, usize)>,
}

/// Apply the release rules to the executed, instrumented result.
pub fn apply(
    batches: &[RecordBatch],
    hidden: Hidden,
    analysis: &Analysis,
    rules: &OutputRules,
    threshold_key: &SecretKey,
) -> Result<Released> {
    let visible = analysis.aggregated.len();
    let mut columns = Vec::new();
    if let Some(b) = batches.first() {
        columns = b
            .schema()
            .fields()
            .iter()
            .take(visible)
            .map(|f| f.name().clone())
            .collect();
    }
    let mut rows = Vec::new();
    let (mut small, mut dominated, mut nonfinite) = (0usize, 0usize, 0usize);
    for batch in batches {
        if batch.num_columns() != visible + 1 + hidden.dominance_columns {
            return Err(internal("unexpected result width"));
        }
        let persons = cast(batch.column(visible), &DataType::Int64).map_err(internal)?;
        let persons = persons.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        let mut shares = Vec::new();
        for j in 0..hidden.dominance_columns {
            let c = cast(batch.column(visible + 1 + j), &DataType::Float64).map_err(internal)?;
            shares.push(c);
        }
        let cells: Vec<Vec<Cell>> = (0..visible)
            .map(|c| column_cells(batch.column(c)))
            .collect::<Result<_>>()?;
        for r in 0..batch.num_rows() {
            let n = if persons.is_null(r) {
                0
            } else {
                persons.value(r)
            };
            let row: Vec<Cell> = cells.iter().map(|col| col[r].clone()).collect();
            let key: String = row
                .iter()
                .zip(&analysis.aggregated)
                .filter(|(_, agg)| !**agg)
                .map(|(c, _)| c.key_text())
                .collect::<Vec<_>>()
                .join("\u{1}");
            if (n as u64) < threshold(threshold_key, rules.min_persons, &key, n) {
                small += 1;
                continue;
            }
            let mut out = Vec::with_capacity(visible);
            let mut finite = true;
            for (cell, agg) in row.into_iter().zip(&analysis.aggregated) {
                out.push(if *agg {
                    match round(cell, rules) {
                        Some(c) => c,
                        None => {
                            finite = false;
                            Cell::Null
                        }
                    }
                } else {
                    cell
                });
            }
            if !finite {
                nonfinite += 1;
                continue;
            }
            if let Some(d) = rules.dominance {
                let dominated_here = shares.iter().any(|s| {
                    let s = s.as_primitive::<Float64Type>();
                    s.is_null(r) || s.value(r) > d.k
                });
                if dominated_here {
                    dominated += 1;
                    continue;
                }
            }
            rows.push(out);
        }
    }
    let mut reasons = Vec::new();
    if small > 0 {
        reasons.push((
            "fewer distinct persons than the scene's min_persons (noisy threshold)",
            small,
        ));
    }
    if dominated > 0 {
        reasons.push(("dominance: a few persons hold most of a sum", dominated));
    }
    if nonfinite > 0 {
        reasons.push(("a value was not finite", nonfinite));
    }
    Ok(Released {
        columns,
        rows,
        suppressed_groups: small + dominated + nonfinite,
        reasons,
    })
}

/// How far above `min_persons` the noisy threshold can go.
pub fn threshold_spread(min_persons: u64) -> u64 {
    (min_persons / 5).max(1)
}

/// The noisy, sticky threshold for one group: `min_persons + offset`, with the
/// offset in `0..=spread` drawn from HMAC(key, group key ‖ person count).
fn threshold(key: &SecretKey, min_persons: u64, group_key: &str, persons: i64) -> u64 {
    let spread = threshold_spread(min_persons);
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.expose())
        .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default()));
    mac.update(group_key.as_bytes());
    mac.update(&persons.to_le_bytes());
    let out = mac.finalize().into_bytes();
    let mut b = [0u8; 8];
    b.copy_from_slice(&out[..8]);
    min_persons + u64::from_le_bytes(b) % (spread + 1)
}

/// Snap an aggregate value to the output grid; `None` when not finite.
fn round(cell: Cell, rules: &OutputRules) -> Option<Cell> {
    match cell {
        Cell::Int(i) => {
            let step = rules.round_to as i64;
            let r = ((i as i128 + step as i128 / 2).div_euclid(step as i128) * step as i128) as i64;
            Some(Cell::Int(r))
        }
        Cell::Float(f) => {
            if !f.is_finite() {
                return None;
            }
            let scale = 10f64.powi(rules.decimals as i32);
            Some(Cell::Float((f * scale).round() / scale))
        }
        other => Some(other),
    }
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
    fn threshold_is_sticky_and_bounded() {
        let k = SecretKey::from_bytes([1; 32]);
        for n in 0..50 {
            let t = threshold(&k, 10, "g", n);
            assert_eq!(t, threshold(&k, 10, "g", n));
            assert!((10..=12).contains(&t));
        }
        // Different groups get different offsets somewhere.
        let distinct: std::collections::BTreeSet<u64> = (0..40)
            .map(|i| threshold(&k, 10, &format!("g{i}"), 11))
            .collect();
        assert!(distinct.len() > 1);
    }

    #[test]
    fn rounding_snaps_and_rejects_non_finite() {
        assert_eq!(round(Cell::Int(12), &rules()), Some(Cell::Int(10)));
        assert_eq!(round(Cell::Int(13), &rules()), Some(Cell::Int(15)));
        assert_eq!(
            round(Cell::Float(1.23456), &rules()),
            Some(Cell::Float(1.23))
        );
        assert_eq!(round(Cell::Float(f64::NAN), &rules()), None);
        assert_eq!(round(Cell::Float(f64::INFINITY), &rules()), None);
    }
}
