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

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, Result as DfResult, TableReference, plan_err};
use datafusion::logical_expr::expr::{ScalarFunction, TryCast};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{
    BinaryExpr, Expr, Filter, LogicalPlan, Operator, Projection, ScalarUDF, SubqueryAlias,
    TableScan, TableScanBuilder, lit, when,
};
use datafusion::optimizer::AnalyzerRule;

/// Reserved schema name for rewritten scans.
pub const RAW_SCHEMA: &str = "__kexin_raw";
/// Reserved column name for the raw person key.
pub const PERSON_COLUMN: &str = "__kexin_pk";

/// How one table's columns are rewritten.
#[derive(Debug, Clone)]
pub struct TableRewrite {
    pub person_key: String,
    /// Column name → mask function (absent: passed through as stored).
    pub masks: HashMap<String, Arc<ScalarUDF>>,
    /// Consent scenes: `kexin_consent(person key)`, true for persons whose
    /// grant covers the scene. Rows of anyone else never leave the scan.
    pub consent: Option<Arc<ScalarUDF>>,
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
        let raw_scan = TableScanBuilder::new(raw_name.clone(), Arc::clone(&scan.source))
            .with_projection(scan.projection.clone())
            .build()?;
        let mut exprs = Vec::new();
        let mut has_pk = false;
        for field in raw_scan.projected_schema.fields() {
            let name = field.name();
            let column = Expr::Column(Column::new(Some(raw_name.clone()), name.clone()));
            let masked = match rw.masks.get(name) {
                Some(udf) => Expr::ScalarFunction(ScalarFunction::new_udf(
                    Arc::clone(udf),
                    vec![column.clone()],
                )),
                None => column.clone(),
            };
            exprs.push(masked.alias(name.clone()));
            if *name == rw.person_key {
                exprs.push(column.alias(PERSON_COLUMN));
                has_pk = true;
            }
        }
        if !has_pk {
            return plan_err!("kexin: the person key is not visible at the scan");
        }
        let pk_column = Expr::Column(Column::new(Some(raw_name.clone()), rw.person_key.clone()));
        let mut input = LogicalPlan::TableScan(raw_scan);
        if let Some(udf) = &rw.consent {
            let keep =
                Expr::ScalarFunction(ScalarFunction::new_udf(Arc::clone(udf), vec![pk_column]));
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

/// Casts become TRY_CAST; `a / b` and `a % b` become `a / NULLIF(b, 0)`;
/// functions that fail outside their domain (`sqrt`, `ln`, `log`, `acos`, …)
/// get NULL there instead of an error. Output names are preserved so that
/// references to aggregate results keep resolving.
pub fn harden(plan: LogicalPlan) -> DfResult<LogicalPlan> {
    plan.transform_up_with_subqueries(|node| {
        let names = NamePreserver::new(&node);
        node.map_expressions(|e| {
            let saved = names.save(&e);
            e.transform_up(harden_expr)
                .map(|t| t.update_data(|e| saved.restore(e)))
        })
    })
    .map(|t| t.data)
}

fn harden_expr(x: Expr) -> DfResult<Transformed<Expr>> {
    Ok(match x {
        Expr::Cast(c) => Transformed::yes(Expr::TryCast(TryCast::new(
            c.expr,
            c.field.data_type().clone(),
        ))),
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: op @ (Operator::Divide | Operator::Modulo),
            right,
        }) => {
            let guarded = datafusion::functions::expr_fn::nullif(*right, lit(0));
            Transformed::yes(Expr::BinaryExpr(BinaryExpr::new(
                left,
                op,
                Box::new(guarded),
            )))
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
                None => Transformed::no(Expr::ScalarFunction(f)),
                Some(inside) => {
                    f.args = f
                        .args
                        .into_iter()
                        .map(|a| when(inside(a.clone()), a).end())
                        .collect::<DfResult<Vec<_>>>()?;
                    Transformed::yes(Expr::ScalarFunction(f))
                }
            }
        }
        other => Transformed::no(other),
    })
}
