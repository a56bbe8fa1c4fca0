//! Disclosure checks: the query fragment kexin accepts, and which base
//! columns can reach which part of the output.
//!
//! The checker is an allow-list. It walks the researcher's logical plan
//! (before masking) and accepts only this fragment (the grammar is in
//! `docs/query-fragment.md`):
//!
//! ```text
//! query     := post* aggregate
//! post      := projection | HAVING | ORDER BY | LIMIT/OFFSET | alias   -- on released cells
//! aggregate := GROUP BY key* with allowed aggregates over rows
//! rows      := scan | rows WHERE pred | rows JOIN rows ON pk = pk
//!            | SELECT exprs FROM rows (derived table) | rows, rows WHERE pk = pk
//! pred      := comparison / boolean logic over allowed expressions
//!            | pk [NOT] IN (cohort) | [NOT] EXISTS (rows WHERE pk = outer.pk …)
//! cohort    := SELECT pk FROM rows [GROUP BY pk [HAVING pred]]
//! ```
//!
//! Every subquery is a person-key cohort, so its answer for one person
//! depends only on that person's rows. For every column each node
//! produces, the checker tracks the base columns it derives from ([`Lin`])
//! and whether anything non-linear (CASE, comparisons, rounding, integer
//! division, outer-join null extension, …) lies on the way. The rules, in
//! SCQL-CCL style, follow the column kinds:
//!
//! - identifiers never leave, never appear in predicates, group keys or
//!   arithmetic; the person key may only be compared with another person key
//!   (person-key joins, cohort subqueries) or counted;
//! - sensitive columns appear only inside aggregates and predicates, and as
//!   group keys only when their mask generalizes them;
//! - the query has exactly one aggregate ("the releasing aggregate"); below it
//!   there are no aggregates (except per-person ones inside cohorts),
//!   windows, LIMIT, ORDER BY or set operations; above it everything is
//!   post-processing of released cells, run after the gate;
//! - outside DP scenes, aggregate arguments are linear in the data through
//!   their whole lineage (derived tables included): a condition one level
//!   down could otherwise single one person out of a big cell;
//! - scalar functions and operators come from an allow-list, and arguments
//!   that steer a function's work or failure (regex patterns, lengths,
//!   counts, formats) must be literals, so no row can make a query fail or
//!   slow down that another row would not.

use std::collections::BTreeMap;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    BinaryExpr, Expr, ExprSchemable, Join, JoinType, LogicalPlan, Operator,
};

use crate::error::{Code, Error, Result, refuse};
use crate::policy::{ColumnKind, Dataset};
use crate::udf::UdfFacts;

mod rows;

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
    /// Something other than `+`, `-`, `×`, `÷` into decimals, casts and
    /// approved UDFs lies on the way from the base columns: a condition,
    /// a step function or an outer join's null extension. Such a column
    /// can be zero for everyone but one person, so outside DP it may not
    /// be aggregated.
    nonlinear: bool,
    /// Public bounds of the column's value per row, where they follow from
    /// the base columns' clamps and literals (interval arithmetic).
    interval: Option<(f64, f64)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Base {
    kind: ColumnKind,
    groupable: bool,
    person_key: bool,
    /// Cells in the column's declared public domain.
    domain: Option<usize>,
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
        self.nonlinear |= other.nonlinear;
    }
}

/// What one column of the releasing aggregate's output is, for the gate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Output {
    /// A group key.
    Key,
    /// A count: snapped to the scene's `round_to` grid.
    Count,
    /// A sum: snapped to `round_to` times the largest value one row can add
    /// (when the argument has public bounds), so a sum of a constant is
    /// rounded like a count however it is written.
    Sum { row_bound: Option<f64> },
    /// Means, spreads, MIN/MAX and UDF aggregates: rounded to the scene's
    /// decimals, and a computed argument to 10⁻⁴ of what one row can be,
    /// so scaling the argument by a literal does not buy precision.
    Other { row_bound: Option<f64> },
}

/// What the gate needs to know about the releasing aggregate.
#[derive(Debug, Clone)]
pub struct Analysis {
    /// Per output column of the releasing aggregate: group keys first, then
    /// the aggregates in the order the query wrote them.
    pub outputs: Vec<Output>,
    /// The number of cells the group keys can take when every key is a
    /// column with a declared public domain (1 without GROUP BY); `None`
    /// when a key is drawn from the data. Only then may the number of
    /// withheld cells be told: it is a function of what was released.
    pub public_cells: Option<u64>,
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

/// Scalar functions a query may call, by DataFusion name (canonical names
/// and the aliases planners have used), with the argument positions that
/// must be literals: patterns, lengths, counts and formats steer the work a
/// function does and whether it fails, so they may not come from data.
/// Every function here is total on its inputs once the plan is hardened
/// (NULL outside its domain), so no value can make it raise an error.
const FUNCTIONS: &[(&str, &[usize])] = &[
    // numbers
    ("abs", &[]),
    ("ceil", &[]),
    ("floor", &[]),
    ("round", &[1]),
    ("trunc", &[1]),
    ("signum", &[]),
    ("sqrt", &[]),
    ("cbrt", &[]),
    ("ln", &[]),
    ("log", &[]),
    ("log2", &[]),
    ("log10", &[]),
    ("exp", &[]),
    ("greatest", &[]),
    ("least", &[]),
    ("isnan", &[]),
    ("iszero", &[]),
    // nulls
    ("coalesce", &[]),
    ("nullif", &[]),
    ("nvl", &[]),
    ("ifnull", &[]),
    // text
    ("lower", &[]),
    ("upper", &[]),
    ("btrim", &[1]),
    ("trim", &[1]),
    ("ltrim", &[1]),
    ("rtrim", &[1]),
    ("character_length", &[]),
    ("char_length", &[]),
    ("length", &[]),
    ("octet_length", &[]),
    ("substr", &[1, 2]),
    ("substring", &[1, 2]),
    ("left", &[1]),
    ("right", &[1]),
    ("starts_with", &[1]),
    ("ends_with", &[1]),
    ("strpos", &[1]),
    ("instr", &[1]),
    ("concat", &[]),
    ("concat_ws", &[0]),
    ("replace", &[1, 2]),
    ("split_part", &[1, 2]),
    ("reverse", &[]),
    ("initcap", &[]),
    ("translate", &[1, 2]),
    ("lpad", &[1, 2]),
    ("rpad", &[1, 2]),
    ("regexp_like", &[1, 2]),
    ("regexp_match", &[1, 2]),
    ("regexp_count", &[1, 2, 3]),
    ("regexp_replace", &[1, 2, 3]),
    // dates
    ("date_part", &[0]),
    ("datepart", &[0]),
    ("date_trunc", &[0]),
    ("datetrunc", &[0]),
];

/// The largest magnitude one row may add to a SUM of a computed argument.
const MAX_ROW_BOUND: f64 = 1.0e15;

/// Literal lengths (padding) above this are refused: a literal is the same
/// for every row, but one query may still not ask for gigabytes.
const MAX_LITERAL_LENGTH: i64 = 1024;

/// The checker for one scene's datasets.
#[derive(Debug)]
pub struct Checker<'a> {
    datasets: BTreeMap<&'a str, &'a Dataset>,
    /// Approved UDFs callable in this query.
    udfs: BTreeMap<String, UdfFacts>,
    /// DP scenes bound every person's contribution by clamping the measured
    /// argument itself, so non-linear arguments are allowed there.
    noisy: bool,
}

impl<'a> Checker<'a> {
    pub fn new(datasets: impl IntoIterator<Item = &'a Dataset>) -> Self {
        Self {
            datasets: datasets.into_iter().map(|d| (d.name.as_str(), d)).collect(),
            udfs: BTreeMap::new(),
            noisy: false,
        }
    }

    /// The approved UDFs of the query: scalar ones may appear in aggregate
    /// arguments (their code was reviewed), aggregate ones may be released,
    /// and only those with a finite declared domain may form group keys.
    pub fn with_udfs(mut self, udfs: BTreeMap<String, UdfFacts>) -> Self {
        self.udfs = udfs;
        self
    }

    /// The scene releases through differential privacy: each person's
    /// contribution to an aggregate is clamped and noised, whatever the
    /// argument computes, so the linearity rule does not apply.
    pub fn noisy(mut self, noisy: bool) -> Self {
        self.noisy = noisy;
        self
    }

    fn udf(&self, e: &Expr) -> Option<UdfFacts> {
        match e {
            Expr::ScalarFunction(f) => self.udfs.get(f.func.name()).copied(),
            _ => None,
        }
    }

    /// The lineage of `e`: [`expr_lin`], the allow-list, linearity, bounds
    /// and what UDF calls do.
    fn lin(&self, e: &Expr, schema: &DFSchema, input: &[Lin]) -> Result<Lin> {
        self.allowed(e)?;
        let mut l = expr_lin(e, schema, input)?;
        l.nonlinear |= !self.linear(e, schema);
        l.interval = interval(e, schema, input).or_else(|| {
            // An approved UDF with a declared integer range.
            self.udf(strip(e))
                .and_then(|u| u.range)
                .map(|(lo, hi)| (lo as f64, hi as f64))
        });
        if self.udfs.is_empty() {
            return Ok(l);
        }
        let bare = strip(e);
        let mut unbounded = false;
        let _ = e.apply(|x| {
            if self.udf(x).is_some_and(|u| !u.finite_domain) {
                unbounded = true;
            }
            Ok(TreeNodeRecursion::Continue)
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
        self.top(plan)
    }

    /// The chain above (and including) the releasing aggregate. Everything
    /// above the aggregate runs after the gate, on released cells only.
    fn top(&self, plan: &LogicalPlan) -> Result<Analysis> {
        match plan {
            LogicalPlan::Projection(p) => {
                for e in &p.expr {
                    self.post(e)?;
                }
                self.top(&p.input)
            }
            LogicalPlan::Sort(s) => {
                for e in &s.expr {
                    self.post(&e.expr)?;
                }
                self.top(&s.input)
            }
            LogicalPlan::Limit(l) => {
                for e in l.skip.iter().chain(l.fetch.iter()) {
                    if !is_literal(e) {
                        return refuse(
                            Code::ShapeStatement,
                            "LIMIT and OFFSET take literal numbers",
                        );
                    }
                }
                self.top(&l.input)
            }
            LogicalPlan::Filter(f) => {
                // HAVING: a filter on released cells.
                self.post(&f.predicate)?;
                self.top(&f.input)
            }
            LogicalPlan::SubqueryAlias(a) => self.top(&a.input),
            LogicalPlan::Aggregate(agg) => self.releasing(agg),
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

    /// An expression of the post-processing above the releasing aggregate:
    /// it sees released cells only, but is still held to the allow-list and
    /// may not open a subquery (which would read unreleased rows).
    fn post(&self, e: &Expr) -> Result<()> {
        no_subqueries(e)?;
        if contains_window(e) {
            return refuse(Code::ShapeWindow, "window functions are not allowed");
        }
        let mut nested = false;
        let _ = e.apply(|x| {
            if let Expr::AggregateFunction(_) = x {
                // An aggregate named above the releasing one is a column of
                // it (HAVING count(*) > 10); the planner resolves it so.
                return Ok(TreeNodeRecursion::Jump);
            }
            if let Expr::ScalarFunction(f) = x
                && self.udfs.get(f.func.name()).is_some_and(|u| u.aggregate)
            {
                nested = true;
            }
            Ok(TreeNodeRecursion::Continue)
        });
        if nested {
            return refuse(Code::ShapeNestedAggregate, "aggregates cannot be nested");
        }
        self.allowed(e)
    }

    /// The releasing aggregate.
    fn releasing(&self, agg: &datafusion::logical_expr::Aggregate) -> Result<Analysis> {
        let input = self.below(&agg.input)?;
        let schema = agg.input.schema();
        let mut outputs = Vec::new();
        let mut public_cells = Some(1u64);
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
            let domain = match l.bases.as_slice() {
                [b] if l.pure => b.domain,
                _ => None,
            };
            public_cells = match (public_cells, domain) {
                (Some(n), Some(d)) => n.checked_mul(d as u64),
                _ => None,
            };
            outputs.push(Output::Key);
        }
        for a in &agg.aggr_expr {
            outputs.push(self.aggregate(a, schema, &input)?);
        }
        Ok(Analysis {
            outputs,
            public_cells,
        })
    }

    fn aggregate(&self, e: &Expr, schema: &DFSchema, input: &[Lin]) -> Result<Output> {
        let Expr::AggregateFunction(f) = strip(e) else {
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
        let mut row_bound = None;
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
            if l.nonlinear && !self.noisy {
                return refuse(
                    Code::DiscConditional,
                    "aggregate arguments must be linear in the data through every derived table (+, -, *, / into decimals); put conditions, rounding and CASE in WHERE or GROUP BY",
                );
            }
            // A bare call of an approved scalar UDF is rounded like a
            // column: its code was reviewed with its output's scale.
            let reviewed = self.udf(strip(arg)).is_some_and(|u| !u.aggregate);
            let needs_bounds = !(name == "count"
                || udaf
                || l.pure
                || self.noisy
                || (reviewed && l.interval.is_none()));
            if needs_bounds {
                // A computed argument is snapped to a grid as wide as what
                // one row can add; without public bounds there is no such
                // grid, and past 10^15 integer sums could wrap.
                let Some((lo, hi)) = l.interval else {
                    return refuse(
                        Code::DiscAggregateFunction,
                        "an aggregate of a computed argument needs columns with public bounds (it is rounded by what one row can add)",
                    );
                };
                let bound = lo.abs().max(hi.abs());
                // NaN (an undefined bound) is refused too.
                if bound.is_nan() || bound > MAX_ROW_BOUND {
                    return refuse(
                        Code::DiscAggregateFunction,
                        "an aggregate of a computed argument whose rows can exceed 10^15 in magnitude could overflow",
                    );
                }
                row_bound = Some(bound);
            }
        }
        Ok(match name.as_str() {
            "count" => Output::Count,
            "sum" => Output::Sum { row_bound },
            _ => Output::Other { row_bound },
        })
    }
}

/// The literal-only argument positions of an allow-listed function, and a
/// cap on literal lengths.
fn function_args(
    name: &str,
    args: &[Expr],
    literal: &[usize],
) -> std::result::Result<(), &'static str> {
    for i in literal {
        if let Some(a) = args.get(*i)
            && !is_literal(a)
        {
            return Err(
                "patterns, lengths, counts, formats and date parts must be literals, not computed from data",
            );
        }
    }
    if matches!(name, "lpad" | "rpad")
        && let Some(Expr::Literal(v, _)) = args.get(1).map(strip)
        && literal_int(v).is_none_or(|n| n > MAX_LITERAL_LENGTH)
    {
        return Err("padding lengths are at most 1024");
    }
    Ok(())
}

fn literal_int(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::Int8(Some(i)) => Some(i64::from(*i)),
        ScalarValue::Int16(Some(i)) => Some(i64::from(*i)),
        ScalarValue::Int32(Some(i)) => Some(i64::from(*i)),
        ScalarValue::Int64(Some(i)) => Some(*i),
        ScalarValue::UInt8(Some(i)) => Some(i64::from(*i)),
        ScalarValue::UInt16(Some(i)) => Some(i64::from(*i)),
        ScalarValue::UInt32(Some(i)) => Some(i64::from(*i)),
        ScalarValue::UInt64(Some(i)) => i64::try_from(*i).ok(),
        _ => None,
    }
}

/// A literal, possibly negated or cast: the same for every row.
fn is_literal(e: &Expr) -> bool {
    match e {
        Expr::Literal(..) => true,
        Expr::Alias(a) => is_literal(&a.expr),
        Expr::Negative(x) => is_literal(x),
        Expr::Cast(c) => is_literal(&c.expr),
        Expr::TryCast(c) => is_literal(&c.expr),
        _ => false,
    }
}

fn strip(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => strip(&a.expr),
        other => other,
    }
}

/// Public per-row bounds of a linear expression over columns with bounds.
fn interval(e: &Expr, schema: &DFSchema, input: &[Lin]) -> Option<(f64, f64)> {
    let num = |v: &ScalarValue| -> Option<f64> {
        match v {
            ScalarValue::Float64(Some(f)) => Some(*f),
            ScalarValue::Float32(Some(f)) => Some(f64::from(*f)),
            other => literal_int(other).map(|i| i as f64),
        }
    };
    let hull = |a: [f64; 4]| {
        let lo = a.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = a.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (!lo.is_nan() && !hi.is_nan()).then_some((lo, hi))
    };
    match strip(e) {
        Expr::Column(c) => input.get(schema.index_of_column(c).ok()?)?.interval,
        Expr::Literal(v, _) => num(v).map(|x| (x, x)),
        Expr::Negative(x) => interval(x, schema, input).map(|(lo, hi)| (-hi, -lo)),
        Expr::Cast(c) => interval(&c.expr, schema, input),
        Expr::TryCast(c) => interval(&c.expr, schema, input),
        Expr::BinaryExpr(b) => {
            let (a0, a1) = interval(&b.left, schema, input)?;
            let (b0, b1) = interval(&b.right, schema, input)?;
            match b.op {
                Operator::Plus => hull([a0 + b0, a1 + b1, a0 + b0, a1 + b1]),
                Operator::Minus => hull([a0 - b1, a1 - b0, a0 - b1, a1 - b0]),
                Operator::Multiply => hull([a0 * b0, a0 * b1, a1 * b0, a1 * b1]),
                Operator::Divide if b0 == b1 && b0 != 0.0 => {
                    hull([a0 / b0, a1 / b0, a0 / b0, a1 / b0])
                }
                _ => None,
            }
        }
        _ => None,
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
    lin.pure = matches!(strip(e), Expr::Column(_)) && lin.bases.len() == 1 && {
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
        Ok(TreeNodeRecursion::Continue)
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
        Ok(TreeNodeRecursion::Continue)
    });
    if found {
        return refuse(
            Code::ShapeSubquery,
            "subqueries are only allowed in FROM and as person-key cohorts (pk IN (SELECT pk …), EXISTS on the person key)",
        );
    }
    Ok(())
}
