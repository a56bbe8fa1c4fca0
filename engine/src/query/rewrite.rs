//! The policy rewrite at the base-table scan, as a DataFusion `AnalyzerRule`.
//!
//! Every scan of a dataset — in the main query, in subqueries, CTEs and joins —
//! becomes
//!
//! ```text
//! SubqueryAlias(<table>,
//!   Projection(kexin_mask(c1) AS c1, …, <raw person key> AS __kexin_pk,
//!     TableScan(__kexin_raw.<table>)))
//! ```
//!
//! so every node above sees only masked, clamped values under the original
//! names and types. The raw person key travels under a reserved name that SQL
//! cannot reference (the researcher's SQL is planned before this rule runs) and
//! is used only by the gate to count distinct persons. Renaming the scan to
//! the reserved `__kexin_raw` schema makes the rule idempotent: DataFusion runs
//! the analyzer again when the plan is optimised, and a renamed scan is left
//! alone.
//!
//! [`harden`] gives expressions that could fail on protected data defined,
//! non-failing semantics: casts become `TRY_CAST`, and a division or modulo by
//! zero yields NULL instead of an error that would act as an oracle.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, Result as DfResult, TableReference, plan_err};
use datafusion::logical_expr::expr::{ScalarFunction, TryCast};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{
    BinaryExpr, Expr, ExprSchemable, Filter, LogicalPlan, Operator, Projection, ScalarUDF,
    SubqueryAlias, TableScan, TableScanBuilder, TableSource, lit, when,
};
use datafusion::optimizer::AnalyzerRule;

use crate::policy::ORDINAL_COLUMN;

/// Reserved schema name for rewritten scans.
pub const RAW_SCHEMA: &str = "__kexin_raw";
/// Reserved column name for the person the gate counts: the row's person
/// ordinal in a loaded dataset, else the raw person key.
pub const PERSON_COLUMN: &str = "__kexin_pk";
/// Reserved column name for the raw person key's text (private set
/// intersection matches persons across nodes by it). Unused, the
/// optimizer drops it, and the key column is not read.
pub const KEY_COLUMN: &str = "__kexin_key";

/// How one table's columns are rewritten.
#[derive(Clone)]
pub struct TableRewrite {
    pub person_key: String,
    /// Column name → mask function (absent: passed through as stored).
    pub masks: HashMap<String, Arc<ScalarUDF>>,
    /// Consent scenes: `kexin_consent(person)`, true for persons whose
    /// grant covers the scene. Rows of anyone else never leave the scan.
    pub consent: Option<Arc<ScalarUDF>>,
    /// A loaded dataset: the node's copy with its person-ordinal column
    /// (the table the SQL sees has the same columns without it). The scan
    /// reads the ordinal as the person.
    pub with_ordinals: Option<Arc<dyn TableSource>>,
}

impl std::fmt::Debug for TableRewrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableRewrite")
            .field("person_key", &self.person_key)
            .field("masks", &self.masks.keys().collect::<Vec<_>>())
            .field("consent", &self.consent.is_some())
            .field("with_ordinals", &self.with_ordinals.is_some())
            .finish()
    }
}

/// The scan rewrite for one scene.
#[derive(Debug)]
pub struct PolicyRewrite {
    tables: HashMap<String, TableRewrite>,
}

impl PolicyRewrite {
    pub fn new(tables: HashMap<String, TableRewrite>) -> Self {
        Self { tables }
    }

    fn rewrite_scan(&self, scan: TableScan) -> DfResult<Transformed<LogicalPlan>> {
        if scan.table_name.schema() == Some(RAW_SCHEMA) {
            return Ok(Transformed::no(LogicalPlan::TableScan(scan)));
        }
        let Some(rw) = self.tables.get(scan.table_name.table()) else {
            // Only scene tables are registered; anything else fails closed.
            return plan_err!("kexin: scan of a table outside the scene");
        };
        if !scan.filters.is_empty() || scan.fetch.is_some() {
            // Filters here would run on raw values, below the masks.
            return plan_err!("kexin: pushed-down filters below the policy rewrite");
        }
        let original = scan.table_name.clone();
        let raw_name = TableReference::partial(RAW_SCHEMA, original.table());
        let raw_scan = match &rw.with_ordinals {
            None => TableScanBuilder::new(raw_name.clone(), Arc::clone(&scan.source))
                .with_projection(scan.projection.clone())
                .build()?,
            Some(source) => {
                // The same columns, found by name in the copy, and its
                // ordinal column last.
                let visible = scan.source.schema();
                let full = source.schema();
                let wanted: Vec<usize> = match &scan.projection {
                    Some(p) => p.clone(),
                    None => (0..visible.fields().len()).collect(),
                };
                let mut indices = Vec::with_capacity(wanted.len() + 1);
                for i in wanted {
                    indices.push(full.index_of(visible.field(i).name())?);
                }
                indices.push(full.index_of(ORDINAL_COLUMN)?);
                TableScanBuilder::new(raw_name.clone(), Arc::clone(source))
                    .with_projection(Some(indices))
                    .build()?
            }
        };
        let ordinals = rw.with_ordinals.is_some();
        let mut exprs = Vec::new();
        let mut person = None;
        for field in raw_scan.projected_schema.fields() {
            let name = field.name();
            let column = Expr::Column(Column::new(Some(raw_name.clone()), name.clone()));
            if ordinals && name == ORDINAL_COLUMN {
                exprs.push(column.clone().alias(PERSON_COLUMN));
                person = Some(column);
                continue;
            }
            let masked = match rw.masks.get(name) {
                Some(udf) => Expr::ScalarFunction(ScalarFunction::new_udf(
                    Arc::clone(udf),
                    vec![column.clone()],
                )),
                None => column.clone(),
            };
            exprs.push(masked.alias(name.clone()));
            if *name == rw.person_key {
                exprs.push(column.clone().alias(KEY_COLUMN));
                if !ordinals {
                    exprs.push(column.clone().alias(PERSON_COLUMN));
                    person = Some(column);
                }
            }
        }
        let Some(person) = person else {
            return plan_err!("kexin: the person key is not visible at the scan");
        };
        let mut input = LogicalPlan::TableScan(raw_scan);
        if let Some(udf) = &rw.consent {
            let keep = Expr::ScalarFunction(ScalarFunction::new_udf(Arc::clone(udf), vec![person]));
            input = LogicalPlan::Filter(Filter::try_new(keep, Arc::new(input))?);
        }
        let projection = Projection::try_new(exprs, Arc::new(input))?;
        let alias =
            SubqueryAlias::try_new(Arc::new(LogicalPlan::Projection(projection)), original)?;
        Ok(Transformed::yes(LogicalPlan::SubqueryAlias(alias)))
    }
}

impl AnalyzerRule for PolicyRewrite {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DfResult<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| match node {
            LogicalPlan::TableScan(scan) => self.rewrite_scan(scan),
            // Parents of a rewritten scan see one more (hidden) column.
            other => Ok(Transformed::yes(other.recompute_schema()?)),
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "kexin_policy_rewrite"
    }
}

/// Casts become TRY_CAST; `a / b` and `a % b` become `a / NULLIF(b, 0)`
/// (and, on integers, NULL for a divisor of -1, whose overflow at the
/// type's minimum is an error); `abs` of an integer is NULL at the type's
/// minimum; functions that fail outside their domain (`sqrt`, `ln`, `log`,
/// `acos`, …) get NULL there instead of an error; and a floating-point
/// aggregate argument is NULL where it is not finite, so one row's NaN or
/// infinity cannot decide whether a whole cell is released. Output names
/// are preserved so that references to aggregate results keep resolving.
///
/// It runs twice: on the researcher's plan, and as [`Harden`] after type
/// coercion, whose inserted casts would otherwise fail on data.
pub fn harden(plan: LogicalPlan) -> DfResult<LogicalPlan> {
    harden_with(plan, false)
}

/// `finite`: also guard floating-point aggregate arguments. Only the
/// executed plan gets the guard (the [`Harden`] rule): the researcher's plan
/// keeps plain arguments, which DP planning traces to bounded columns.
fn harden_with(plan: LogicalPlan, finite: bool) -> DfResult<LogicalPlan> {
    plan.transform_up_with_subqueries(|node| {
        let schema = input_schema(&node);
        let aggregate = finite && matches!(node, LogicalPlan::Aggregate(_));
        let names = NamePreserver::new(&node);
        node.map_expressions(|e| {
            let saved = names.save(&e);
            e.transform_up(|x| harden_expr(x, schema.as_ref()))
                .and_then(|t| {
                    t.transform_data(|e| match &schema {
                        Some(s) if aggregate => finite_arguments(e, s),
                        _ => Ok(Transformed::no(e)),
                    })
                })
                .map(|t| t.update_data(|e| saved.restore(e)))
        })
    })
    .map(|t| t.data)
}

/// [`harden`] as the last analyzer rule, after type coercion. Coercion runs
/// again after it (the guards it adds compare with untyped literals).
#[derive(Debug, Default)]
pub struct Harden;

impl AnalyzerRule for Harden {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DfResult<LogicalPlan> {
        harden_with(plan, true)
    }

    fn name(&self) -> &str {
        "kexin_harden"
    }
}

/// The schema a node's expressions are evaluated against.
fn input_schema(node: &LogicalPlan) -> Option<DFSchema> {
    match node.inputs().as_slice() {
        [one] => Some(one.schema().as_ref().clone()),
        [l, r] => l.schema().join(r.schema()).ok(),
        _ => None,
    }
}

fn is_float(t: &DataType) -> bool {
    matches!(t, DataType::Float16 | DataType::Float32 | DataType::Float64)
}

/// An aggregate's floating-point arguments become NULL where not finite
/// (`x - x = 0` is false for NaN and ±inf).
fn finite_arguments(e: Expr, schema: &DFSchema) -> DfResult<Transformed<Expr>> {
    e.transform_down(|x| match x {
        Expr::AggregateFunction(mut f) => {
            let mut changed = false;
            f.params.args = f
                .params
                .args
                .into_iter()
                .map(|a| {
                    if a.get_type(schema).is_ok_and(|t| is_float(&t)) && !is_guarded(&a) {
                        changed = true;
                        when((a.clone() - a.clone()).eq(lit(0.0)), a).end()
                    } else {
                        Ok(a)
                    }
                })
                .collect::<DfResult<Vec<_>>>()?;
            let e = Expr::AggregateFunction(f);
            Ok(if changed {
                Transformed::new(e, true, TreeNodeRecursion::Jump)
            } else {
                Transformed::new(e, false, TreeNodeRecursion::Jump)
            })
        }
        other => Ok(Transformed::no(other)),
    })
}

/// Already `CASE WHEN x - x = 0 THEN x END` (the rule runs more than once).
fn is_guarded(e: &Expr) -> bool {
    matches!(e, Expr::Case(c) if c.else_expr.is_none()
        && c.when_then_expr.len() == 1
        && matches!(c.when_then_expr[0].0.as_ref(), Expr::BinaryExpr(b)
            if b.op == Operator::Eq
            && matches!(b.left.as_ref(), Expr::BinaryExpr(d) if d.op == Operator::Minus && d.left == d.right && *d.left == *c.when_then_expr[0].1)))
}

fn int_min(t: &DataType) -> Option<Expr> {
    Some(match t {
        DataType::Int8 => lit(i8::MIN),
        DataType::Int16 => lit(i16::MIN),
        DataType::Int32 => lit(i32::MIN),
        DataType::Int64 => lit(i64::MIN),
        _ => return None,
    })
}

fn harden_expr(x: Expr, schema: Option<&DFSchema>) -> DfResult<Transformed<Expr>> {
    let type_of = |e: &Expr| schema.and_then(|s| e.get_type(s).ok());
    Ok(match x {
        Expr::Cast(c) => Transformed::yes(Expr::TryCast(TryCast::new(
            c.expr,
            c.field.data_type().clone(),
        ))),
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: op @ (Operator::Divide | Operator::Modulo),
            right,
        }) if !is_nullif_guard(&right) => {
            let integer = type_of(&right).is_some_and(|t| t.is_signed_integer());
            let mut guarded = datafusion::functions::expr_fn::nullif(*right, lit(0));
            if integer {
                guarded = datafusion::functions::expr_fn::nullif(guarded, lit(-1));
            }
            Transformed::yes(Expr::BinaryExpr(BinaryExpr::new(
                left,
                op,
                Box::new(guarded),
            )))
        }
        Expr::ScalarFunction(mut f) if f.func.name() == "abs" => {
            let min = f.args.first().and_then(type_of).and_then(|t| int_min(&t));
            match (min, f.args.first()) {
                (Some(min), Some(a)) if !is_nullif_guard(a) => {
                    f.args = vec![datafusion::functions::expr_fn::nullif(a.clone(), min)];
                    Transformed::yes(Expr::ScalarFunction(f))
                }
                _ => Transformed::no(Expr::ScalarFunction(f)),
            }
        }
        Expr::ScalarFunction(mut f) => {
            let domain: Option<fn(Expr) -> Expr> = match f.func.name() {
                "sqrt" => Some(|a| a.gt_eq(lit(0))),
                "ln" | "log" | "log2" | "log10" => Some(|a| a.gt(lit(0))),
                "acos" | "asin" | "atanh" => {
                    Some(|a| a.clone().gt_eq(lit(-1)).and(a.lt_eq(lit(1))))
                }
                "acosh" => Some(|a| a.gt_eq(lit(1))),
                _ => None,
            };
            match domain {
                Some(inside) if !f.args.iter().all(|a| matches!(a, Expr::Case(_))) => {
                    f.args = f
                        .args
                        .into_iter()
                        .map(|a| when(inside(a.clone()), a).end())
                        .collect::<DfResult<Vec<_>>>()?;
                    Transformed::yes(Expr::ScalarFunction(f))
                }
                _ => Transformed::no(Expr::ScalarFunction(f)),
            }
        }
        other => Transformed::no(other),
    })
}

/// Already guarded by `nullif` (the rule runs more than once).
fn is_nullif_guard(e: &Expr) -> bool {
    matches!(e, Expr::ScalarFunction(f) if f.func.name() == "nullif")
}
