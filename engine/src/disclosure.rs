//! Disclosure checks: which base columns can reach which part of the output.
//!
//! The checker walks the researcher's logical plan (before masking) and
//! tracks, for every column each node produces, the base columns it derives
//! from ([`Lin`]). The rules, in SCQL-CCL style, follow the column kinds:
//!
//! - identifiers never leave, never appear in predicates, group keys or
//!   arithmetic; the person key may only be compared with another person key
//!   (person-key joins, `IN` cohort subqueries) or counted;
//! - sensitive columns appear only inside aggregates and predicates, and as
//!   group keys only when their mask generalizes them;
//! - the query releases exactly one aggregate at its top ("the releasing
//!   aggregate"); below it there are no aggregates, windows, LIMIT, ORDER BY or
//!   set operations, and above it no HAVING and no subqueries;
//! - aggregate arguments are arithmetic only (no CASE, comparisons or other
//!   conditionals that could single one person out of a big cell), only
//!   allow-listed aggregate functions run, and MIN/MAX never touch sensitive
//!   columns.

use std::collections::BTreeMap;

use datafusion::common::DFSchema;
use datafusion::common::tree_node::TreeNode;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, JoinType, LogicalPlan, Operator};

use crate::error::{Code, Error, Result, refuse};
use crate::policy::{ColumnKind, Dataset};
use crate::udf::UdfFacts;

/// Where one column of a plan node's output comes from.
#[derive(Debug, Clone, Default)]
struct Lin {
    bases: Vec<Base>,
    /// The column is a base column passed through unchanged (maybe aliased).
    pure: bool,
    /// The column is (derived from) an aggregate result.
    aggregated: bool,
    /// Derived through a UDF without a declared finite output domain.
    unbounded: bool,
    /// The output of a UDF with a declared finite domain (or that column
    /// passed through): a generalisation, groupable whatever its inputs.
    generalized: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Base {
    kind: ColumnKind,
    groupable: bool,
    person_key: bool,
}

impl Lin {
    fn has(&self, kind: ColumnKind) -> bool {
        self.bases.iter().any(|b| b.kind == kind)
    }
    fn is_person_key(&self) -> bool {
        self.pure && self.bases.len() == 1 && self.bases[0].person_key
    }
    fn merge(&mut self, other: &Lin) {
        for b in &other.bases {
            if !self.bases.contains(b) {
                self.bases.push(*b);
            }
        }
        self.aggregated |= other.aggregated;
        self.unbounded |= other.unbounded;
    }
}

/// What the gate needs to know about the released columns.
#[derive(Debug, Clone)]
pub struct Analysis {
    /// Per output column: true for aggregate results, false for group keys.
    pub aggregated: Vec<bool>,
}

/// Aggregate functions a researcher may call, by DataFusion's canonical name.
const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "stddev",
    "stddev_pop",
    "var",
    "var_pop",
    "var_samp",
    "stddev_samp",
];

/// Functions allowed inside aggregate arguments: arithmetic only.
const ARITHMETIC_FUNCTIONS: &[&str] = &[
    "abs", "round", "floor", "ceil", "sqrt", "ln", "log10", "log2", "exp", "power", "pow", "trunc",
];

/// The checker for one scene's datasets.
#[derive(Debug)]
pub struct Checker<'a> {
    datasets: BTreeMap<&'a str, &'a Dataset>,
    /// Approved UDFs callable in this query.
    udfs: BTreeMap<String, UdfFacts>,
}

impl<'a> Checker<'a> {
    pub fn new(datasets: impl IntoIterator<Item = &'a Dataset>) -> Self {
        Self {
            datasets: datasets.into_iter().map(|d| (d.name.as_str(), d)).collect(),
            udfs: BTreeMap::new(),
        }
    }

    /// The approved UDFs of the query: scalar ones may appear in aggregate
    /// arguments (their code was reviewed), aggregate ones may be released,
    /// and only those with a finite declared domain may form group keys.
    pub fn with_udfs(mut self, udfs: BTreeMap<String, UdfFacts>) -> Self {
        self.udfs = udfs;
        self
    }

    fn arithmetic_only(&self, e: &Expr) -> Result<()> {
        arithmetic_only(e, &self.udfs)
    }

    fn udf(&self, e: &Expr) -> Option<UdfFacts> {
        match e {
            Expr::ScalarFunction(f) => self.udfs.get(f.func.name()).copied(),
            _ => None,
        }
    }

    /// [`expr_lin`] plus what UDF calls do to the lineage.
    fn lin(&self, e: &Expr, schema: &DFSchema, input: &[Lin]) -> Result<Lin> {
        let mut l = expr_lin(e, schema, input)?;
        if self.udfs.is_empty() {
            return Ok(l);
        }
        let bare = match e {
            Expr::Alias(a) => a.expr.as_ref(),
            other => other,
        };
        let mut unbounded = false;
        let _ = e.apply(|x| {
            if self.udf(x).is_some_and(|u| !u.finite_domain) {
                unbounded = true;
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        });
        if self.udf(bare).is_some_and(|u| u.finite_domain) {
            l.generalized = true;
            l.unbounded = false;
        } else {
            l.unbounded |= unbounded;
            if let Expr::Column(c) = bare
                && let Ok(i) = schema.index_of_column(c)
            {
                l.generalized = input.get(i).is_some_and(|x| x.generalized);
            }
        }
        Ok(l)
    }

    /// Check a whole query plan; returns what the gate needs.
    pub fn check(&self, plan: &LogicalPlan) -> Result<Analysis> {
        let lins = self.top(plan)?;
        Ok(Analysis {
            aggregated: lins.iter().map(|l| l.aggregated).collect(),
        })
    }

    /// The chain above (and including) the releasing aggregate.
    fn top(&self, plan: &LogicalPlan) -> Result<Vec<Lin>> {
        match plan {
            LogicalPlan::Projection(p) => {
                // Checked before descending: a subquery up here would carry an
                // aggregate past the gate.
                for e in &p.expr {
                    no_subqueries(e)?;
                }
                let input = self.top(&p.input)?;
                p.expr
                    .iter()
                    .map(|e| self.lin(e, p.input.schema(), &input))
                    .collect()
            }
            LogicalPlan::Sort(s) => {
                let input = self.top(&s.input)?;
                for e in &s.expr {
                    no_subqueries(&e.expr)?;
                }
                Ok(input)
            }
            LogicalPlan::Limit(l) => {
                for e in l.skip.iter().chain(l.fetch.iter()) {
                    no_subqueries(e)?;
                }
                self.top(&l.input)
            }
            LogicalPlan::SubqueryAlias(a) => self.top(&a.input),
            LogicalPlan::Filter(_) => refuse(
                Code::ShapeHaving,
                "HAVING filters released groups before the gate and would reveal suppressed counts",
            ),
            LogicalPlan::Aggregate(agg) => {
                let input = self.below(&agg.input)?;
                let schema = agg.input.schema();
                let mut out = Vec::new();
                for g in &agg.group_expr {
                    if matches!(g, Expr::GroupingSet(_)) {
                        return refuse(
                            Code::ShapeSetOperation,
                            "ROLLUP, CUBE and GROUPING SETS release overlapping cells",
                        );
                    }
                    no_subqueries(g)?;
                    let l = self.lin(g, schema, &input)?;
                    if l.has(ColumnKind::Identifier) {
                        return refuse(
                            Code::DiscIdentifier,
                            "identifier columns cannot be group keys",
                        );
                    }
                    if l.unbounded {
                        return refuse(
                            Code::UdfDomain,
                            "a UDF used in a group key needs a declared finite output domain",
                        );
                    }
                    if !l.generalized && l.bases.iter().any(|b| !b.groupable) {
                        return refuse(
                            Code::DiscSensitive,
                            "group keys must come from attribute, quasi-identifier or generalized columns",
                        );
                    }
                    out.push(l);
                }
                for a in &agg.aggr_expr {
                    out.push(self.aggregate(a, schema, &input)?);
                }
                Ok(out)
            }
            LogicalPlan::Window(_) => refuse(Code::ShapeWindow, "window functions are not allowed"),
            LogicalPlan::Distinct(_) => refuse(
                Code::ShapeNoAggregate,
                "a query must release aggregates; SELECT DISTINCT lists values",
            ),
            LogicalPlan::Union(_) => refuse(
                Code::ShapeSetOperation,
                "UNION, INTERSECT and EXCEPT are not allowed",
            ),
            _ => {
                // Anything else at the top is a query without a releasing
                // aggregate (or a statement kind refused earlier). Run the
                // below-aggregate checks first so the most specific rule fires.
                self.below(plan)?;
                refuse(
                    Code::ShapeNoAggregate,
                    "a query must release aggregates (COUNT, SUM, AVG, ...) at its top level",
                )
            }
        }
    }

    fn aggregate(&self, e: &Expr, schema: &DFSchema, input: &[Lin]) -> Result<Lin> {
        let inner = match e {
            Expr::Alias(a) => a.expr.as_ref(),
            other => other,
        };
        let Expr::AggregateFunction(f) = inner else {
            return refuse(
                Code::DiscAggregateFunction,
                "only plain aggregate calls may be released",
            );
        };
        let name = f.func.name().to_ascii_lowercase();
        let udaf = self.udfs.get(f.func.name()).is_some_and(|u| u.aggregate);
        if !AGGREGATES.contains(&name.as_str()) && !udaf {
            return refuse(
                Code::DiscAggregateFunction,
                "only COUNT, SUM, AVG, MIN, MAX, STDDEV and VAR aggregates may be released",
            );
        }
        if f.params.filter.is_some() || !f.params.order_by.is_empty() {
            return refuse(
                Code::DiscAggregateFunction,
                "FILTER and ORDER BY inside aggregates are not allowed; use WHERE",
            );
        }
        let mut lin = Lin {
            aggregated: true,
            ..Lin::default()
        };
        for arg in &f.params.args {
            no_subqueries(arg)?;
            let l = self.lin(arg, schema, input)?;
            if l.aggregated {
                return refuse(Code::ShapeNestedAggregate, "aggregates cannot be nested");
            }
            if l.has(ColumnKind::Identifier) && !(name == "count" && l.is_person_key()) {
                return refuse(
                    Code::DiscIdentifier,
                    "identifier columns may only be counted: COUNT(person_key) or COUNT(DISTINCT person_key)",
                );
            }
            if (name == "min" || name == "max") && l.has(ColumnKind::Sensitive) {
                return refuse(
                    Code::DiscMinMax,
                    "MIN and MAX of sensitive columns reveal single values",
                );
            }
            if name != "count" {
                self.arithmetic_only(arg)?;
            }
            lin.merge(&l);
        }
        lin.aggregated = true;
        lin.pure = false;
        Ok(lin)
    }

    /// Everything below the releasing aggregate.
    fn below(&self, plan: &LogicalPlan) -> Result<Vec<Lin>> {
        match plan {
            LogicalPlan::TableScan(scan) => {
                let name = scan.table_name.table();
                let Some(ds) = self.datasets.get(name) else {
                    return refuse(
                        Code::SqlUnknown,
                        "the query names a table that is not in the scene",
                    );
                };
                scan.projected_schema
                    .fields()
                    .iter()
                    .map(|f| match ds.columns.get(f.name()) {
                        Some(c) => Ok(Lin {
                            bases: vec![Base {
                                kind: c.kind,
                                groupable: c.groupable(),
                                person_key: *f.name() == ds.person_key,
                            }],
                            pure: true,
                            ..Lin::default()
                        }),
                        None => refuse(
                            Code::SqlUnknown,
                            "the query names a column that is not in the scene",
                        ),
                    })
                    .collect()
            }
            LogicalPlan::Projection(p) => {
                let input = self.below(&p.input)?;
                p.expr
                    .iter()
                    .map(|e| {
                        no_subqueries(e)?;
                        let l = self.lin(e, p.input.schema(), &input)?;
                        if l.has(ColumnKind::Identifier) && !l.pure {
                            return refuse(
                                Code::DiscIdentifier,
                                "no functions or arithmetic on identifier columns",
                            );
                        }
                        Ok(l)
                    })
                    .collect()
            }
            LogicalPlan::Filter(f) => {
                let input = self.below(&f.input)?;
                self.predicate(&f.predicate, f.input.schema(), &input)?;
                Ok(input)
            }
            LogicalPlan::SubqueryAlias(a) => self.below(&a.input),
            LogicalPlan::Join(j) => {
                let left = self.below(&j.left)?;
                let right = self.below(&j.right)?;
                for (l, r) in &j.on {
                    let ll = self.lin(l, j.left.schema(), &left)?;
                    let rl = self.lin(r, j.right.schema(), &right)?;
                    if !(ll.is_person_key() && rl.is_person_key()) {
                        return refuse(
                            Code::DiscJoin,
                            "joins must be equi-joins on the person key",
                        );
                    }
                }
                let mut both = left.clone();
                both.extend(right.iter().cloned());
                let schema = j
                    .left
                    .schema()
                    .join(j.right.schema())
                    .map_err(Error::internal)?;
                // The SQL planner leaves `ON a = b` in the join filter; the
                // optimizer extracts equi-join keys later. Either way a join
                // needs a person-key equality between its two sides.
                let mut keyed = !j.on.is_empty();
                if let Some(filter) = &j.filter {
                    for conjunct in split_conjunction(filter) {
                        if let Expr::BinaryExpr(BinaryExpr {
                            left: l,
                            op: Operator::Eq,
                            right: r,
                        }) = conjunct
                            && self.lin(l, &schema, &both)?.is_person_key()
                            && self.lin(r, &schema, &both)?.is_person_key()
                        {
                            keyed = true;
                        }
                    }
                    self.predicate(filter, &schema, &both)?;
                }
                if !keyed {
                    return refuse(Code::DiscJoin, "joins must be equi-joins on the person key");
                }
                let all = match j.join_type {
                    JoinType::LeftSemi | JoinType::LeftAnti => left,
                    JoinType::RightSemi | JoinType::RightAnti => right,
                    JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full => both,
                    _ => return refuse(Code::DiscJoin, "this join type is not supported"),
                };
                if all.len() != j.schema.fields().len() {
                    return refuse(Code::DiscJoin, "this join type is not supported");
                }
                Ok(all)
            }
            LogicalPlan::Aggregate(_) | LogicalPlan::Distinct(_) => refuse(
                Code::ShapeNestedAggregate,
                "aggregates and DISTINCT below the releasing aggregate are not allowed",
            ),
            LogicalPlan::Limit(_) | LogicalPlan::Sort(_) => refuse(
                Code::ShapeBelowAggregate,
                "LIMIT, OFFSET and ORDER BY are only allowed above the releasing aggregate",
            ),
            LogicalPlan::Window(_) => refuse(Code::ShapeWindow, "window functions are not allowed"),
            LogicalPlan::Union(_) => refuse(
                Code::ShapeSetOperation,
                "UNION, INTERSECT and EXCEPT are not allowed",
            ),
            LogicalPlan::Values(_) | LogicalPlan::EmptyRelation(_) => refuse(
                Code::ShapeValues,
                "literal relations (VALUES, queries without FROM) are not allowed",
            ),
            LogicalPlan::RecursiveQuery(_) | LogicalPlan::Unnest(_) => refuse(
                Code::ShapeStatement,
                "recursive queries and UNNEST are not allowed",
            ),
            _ => refuse(
                Code::ShapeStatement,
                "only read-only SELECT queries are allowed",
            ),
        }
    }

    fn predicate(&self, e: &Expr, schema: &DFSchema, input: &[Lin]) -> Result<()> {
        // Conjuncts and disjuncts are checked one by one so that a person-key
        // comparison is recognised wherever it stands.
        match e {
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::And | Operator::Or,
                right,
            }) => {
                self.predicate(left, schema, input)?;
                self.predicate(right, schema, input)
            }
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::Eq,
                right,
            }) if self.lin(left, schema, input)?.is_person_key()
                && self.lin(right, schema, input)?.is_person_key() =>
            {
                Ok(())
            }
            Expr::InSubquery(ins) => {
                let l = self.lin(&ins.expr, schema, input)?;
                let sub = self.below(&ins.subquery.subquery)?;
                if !ins.subquery.outer_ref_columns.is_empty() {
                    return refuse(Code::ShapeSubquery, "correlated subqueries are not allowed");
                }
                let inner_is_pk = sub.len() == 1 && sub[0].is_person_key();
                if l.is_person_key() && inner_is_pk {
                    return Ok(());
                }
                if l.has(ColumnKind::Identifier)
                    || sub.iter().any(|s| s.has(ColumnKind::Identifier))
                {
                    return refuse(
                        Code::DiscIdentifier,
                        "identifiers may only be compared with another person key",
                    );
                }
                Ok(())
            }
            Expr::Exists(ex) => {
                if !ex.subquery.outer_ref_columns.is_empty() {
                    return refuse(Code::ShapeSubquery, "correlated subqueries are not allowed");
                }
                self.below(&ex.subquery.subquery).map(|_| ())
            }
            Expr::Not(inner) => self.predicate(inner, schema, input),
            other => {
                no_subqueries(other)?;
                let l = self.lin(other, schema, input)?;
                if l.has(ColumnKind::Identifier) {
                    return refuse(
                        Code::DiscIdentifier,
                        "identifier columns cannot appear in predicates (except person-key joins)",
                    );
                }
                Ok(())
            }
        }
    }
}

/// The lineage of an expression over an input with known lineage.
fn expr_lin(e: &Expr, schema: &DFSchema, input: &[Lin]) -> Result<Lin> {
    if contains_window(e) {
        return refuse(Code::ShapeWindow, "window functions are not allowed");
    }
    let mut lin = Lin::default();
    for c in e.column_refs() {
        let idx = schema.index_of_column(c).map_err(|_| {
            Error::refused(
                Code::SqlUnknown,
                "the query names a column that is not in the scene",
            )
        })?;
        match input.get(idx) {
            Some(l) => lin.merge(l),
            None => return Err(Error::internal("lineage index out of range")),
        }
    }
    let bare = match e {
        Expr::Alias(a) => a.expr.as_ref(),
        other => other,
    };
    lin.pure = matches!(bare, Expr::Column(_)) && lin.bases.len() == 1 && {
        // A bare column is pure only if its input column was pure.
        let c = e.column_refs();
        c.iter().all(|c| {
            schema
                .index_of_column(c)
                .ok()
                .and_then(|i| input.get(i))
                .is_some_and(|l| l.pure)
        })
    };
    Ok(lin)
}

fn contains_window(e: &Expr) -> bool {
    let mut found = false;
    let _ = e.apply(|x| {
        if matches!(x, Expr::WindowFunction(_)) {
            found = true;
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    found
}

fn no_subqueries(e: &Expr) -> Result<()> {
    let mut found = false;
    let _ = e.apply(|x| {
        if matches!(
            x,
            Expr::ScalarSubquery(_)
                | Expr::InSubquery(_)
                | Expr::Exists(_)
                | Expr::SetComparison(_)
                | Expr::OuterReferenceColumn(..)
        ) {
            found = true;
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    if found {
        return refuse(
            Code::ShapeSubquery,
            "subqueries are only allowed in FROM and as uncorrelated IN/EXISTS filters",
        );
    }
    Ok(())
}

/// Aggregate arguments may only be arithmetic over columns and literals
/// (and approved scalar UDFs).
fn arithmetic_only(e: &Expr, udfs: &BTreeMap<String, UdfFacts>) -> Result<()> {
    let mut bad = false;
    let _ = e.apply(|x| {
        let ok = match x {
            Expr::Column(_) | Expr::Literal(..) | Expr::Alias(_) | Expr::Negative(_) => true,
            Expr::Cast(_) | Expr::TryCast(_) => true,
            Expr::BinaryExpr(b) => matches!(
                b.op,
                Operator::Plus
                    | Operator::Minus
                    | Operator::Multiply
                    | Operator::Divide
                    | Operator::Modulo
            ),
            Expr::ScalarFunction(f) => {
                ARITHMETIC_FUNCTIONS.contains(&f.func.name().to_ascii_lowercase().as_str())
                    || udfs.get(f.func.name()).is_some_and(|u| !u.aggregate)
            }
            _ => false,
        };
        if !ok {
            bad = true;
            return Ok(datafusion::common::tree_node::TreeNodeRecursion::Stop);
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    if bad {
        return refuse(
            Code::DiscConditional,
            "aggregate arguments may only use arithmetic; put conditions in WHERE",
        );
    }
    Ok(())
}
