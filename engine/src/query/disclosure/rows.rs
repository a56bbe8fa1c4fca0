//! The rows below the releasing aggregate: scans, projections, filters,
//! joins and cohorts, what each row-level expression derives from
//! (linearity), and the function allow-list. Everything here refuses with
//! a fixed code; nothing reads data.

use super::*;

impl Checker<'_> {
    /// Everything below the releasing aggregate.
    pub(super) fn below(&self, plan: &LogicalPlan) -> Result<Vec<Lin>> {
        self.rows(plan, false)
    }

    /// The body of a cohort subquery: like [`Self::below`], but its top may
    /// be one aggregate grouped by the person key alone (with HAVING), whose
    /// every value depends on one person's rows only.
    pub(super) fn cohort(&self, plan: &LogicalPlan) -> Result<Vec<Lin>> {
        self.rows(plan, true)
    }

    pub(super) fn rows(&self, plan: &LogicalPlan, per_person: bool) -> Result<Vec<Lin>> {
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
                                domain: c.domain.as_ref().map(Vec::len),
                            }],
                            pure: true,
                            interval: c.bounds,
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
                let input = self.rows(&p.input, per_person)?;
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
                // `FROM a, b WHERE a.pk = b.pk`: the filter keys the cross join.
                let input = match f.input.as_ref() {
                    LogicalPlan::Join(j) => {
                        self.join(j, &split_conjunction(&f.predicate), per_person)?
                    }
                    other => self.rows(other, per_person)?,
                };
                self.predicate(&f.predicate, f.input.schema(), &input)?;
                Ok(input)
            }
            LogicalPlan::SubqueryAlias(a) => self.rows(&a.input, per_person),
            LogicalPlan::Join(j) => self.join(j, &[], per_person),
            LogicalPlan::Aggregate(agg) if per_person => {
                let input = self.below(&agg.input)?;
                let schema = agg.input.schema();
                let mut out = Vec::new();
                for g in &agg.group_expr {
                    let l = self.lin(g, schema, &input)?;
                    if !l.is_person_key() {
                        return refuse(
                            Code::ShapeSubquery,
                            "a cohort subquery groups by the person key alone",
                        );
                    }
                    out.push(l);
                }
                if out.len() != 1 {
                    return refuse(
                        Code::ShapeSubquery,
                        "a cohort subquery groups by the person key alone",
                    );
                }
                for a in &agg.aggr_expr {
                    let Expr::AggregateFunction(f) = strip(a) else {
                        return refuse(
                            Code::DiscAggregateFunction,
                            "only plain aggregate calls may be used",
                        );
                    };
                    if !AGGREGATES.contains(&f.func.name().to_ascii_lowercase().as_str()) {
                        return refuse(
                            Code::DiscAggregateFunction,
                            "only COUNT, SUM, AVG, MIN, MAX, STDDEV and VAR aggregates may be used",
                        );
                    }
                    let mut l = Lin::default();
                    for arg in &f.params.args {
                        no_subqueries(arg)?;
                        let a = self.lin(arg, schema, &input)?;
                        if a.has(ColumnKind::Identifier) && !a.is_person_key() {
                            return refuse(
                                Code::DiscIdentifier,
                                "identifier columns may only be counted",
                            );
                        }
                        l.merge(&a);
                    }
                    if let Some(filter) = &f.params.filter {
                        self.predicate(filter, schema, &input)?;
                    }
                    l.aggregated = true;
                    l.pure = false;
                    l.bases.iter_mut().for_each(|b| b.person_key = false);
                    out.push(l);
                }
                Ok(out)
            }
            LogicalPlan::Aggregate(_) | LogicalPlan::Distinct(_) => refuse(
                Code::ShapeNestedAggregate,
                "aggregates and DISTINCT below the releasing aggregate are not allowed (per-person ones only inside a person-key cohort)",
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

    /// A join: an equi-join on the person key between its two sides, given
    /// in `ON`, in the join filter or (for a comma join) in the WHERE
    /// conjuncts `outer` above it. The side an outer join null-extends
    /// becomes non-linear: NULL there can mean "this person has no row".
    pub(super) fn join(&self, j: &Join, outer: &[&Expr], per_person: bool) -> Result<Vec<Lin>> {
        fn cross(p: &LogicalPlan) -> Option<&Join> {
            match p {
                LogicalPlan::Join(inner) if inner.on.is_empty() && inner.filter.is_none() => {
                    Some(inner)
                }
                _ => None,
            }
        }
        // Nested comma joins (`FROM a, b, c WHERE …`) share the WHERE.
        let left = match cross(&j.left) {
            Some(inner) => self.join(inner, outer, per_person)?,
            None => self.rows(&j.left, per_person)?,
        };
        let right = match cross(&j.right) {
            Some(inner) => self.join(inner, outer, per_person)?,
            None => self.rows(&j.right, per_person)?,
        };
        let nleft = left.len();
        let mut both = left.clone();
        both.extend(right.iter().cloned());
        let schema = j
            .left
            .schema()
            .join(j.right.schema())
            .map_err(Error::internal)?;
        for (l, r) in &j.on {
            let ll = self.lin(l, j.left.schema(), &left)?;
            let rl = self.lin(r, j.right.schema(), &right)?;
            if !(ll.is_person_key() && rl.is_person_key()) {
                return refuse(Code::DiscJoin, "joins must be equi-joins on the person key");
            }
        }
        // The SQL planner leaves `ON a = b` in the join filter; the
        // optimizer extracts equi-join keys later. Either way a join needs a
        // person-key equality that links its two sides.
        let mut keyed = !j.on.is_empty();
        let mut conjuncts: Vec<&Expr> = outer.to_vec();
        if let Some(filter) = &j.filter {
            conjuncts.extend(split_conjunction(filter));
            self.predicate(filter, &schema, &both)?;
        }
        for c in conjuncts {
            if let Expr::BinaryExpr(BinaryExpr {
                left: l,
                op: Operator::Eq,
                right: r,
            }) = c
                && let (Expr::Column(a), Expr::Column(b)) = (strip(l), strip(r))
                && let (Ok(ia), Ok(ib)) = (schema.index_of_column(a), schema.index_of_column(b))
                && (ia < nleft) != (ib < nleft)
                && both.get(ia).is_some_and(Lin::is_person_key)
                && both.get(ib).is_some_and(Lin::is_person_key)
            {
                keyed = true;
            }
        }
        if !keyed {
            return refuse(Code::DiscJoin, "joins must be equi-joins on the person key");
        }
        let extended = |mut side: Vec<Lin>| {
            side.iter_mut().for_each(|l| {
                l.nonlinear = true;
                l.interval = l.interval.map(|(lo, hi)| (lo.min(0.0), hi.max(0.0)));
            });
            side
        };
        let all = match j.join_type {
            JoinType::LeftSemi | JoinType::LeftAnti => left,
            JoinType::RightSemi | JoinType::RightAnti => right,
            JoinType::Inner => both,
            JoinType::Left => [left, extended(right)].concat(),
            JoinType::Right => [extended(left), right].concat(),
            JoinType::Full => [extended(left), extended(right)].concat(),
            _ => return refuse(Code::DiscJoin, "this join type is not supported"),
        };
        if all.len() != j.schema.fields().len() {
            return refuse(Code::DiscJoin, "this join type is not supported");
        }
        Ok(all)
    }

    pub(super) fn predicate(&self, e: &Expr, schema: &DFSchema, input: &[Lin]) -> Result<()> {
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
            // The correlation of an EXISTS cohort: inner pk = outer pk. The
            // outer side was checked to be a person key where the EXISTS
            // stands ([`Self::exists`]).
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::Eq,
                right,
            }) if matches!(
                (left.as_ref(), right.as_ref()),
                (Expr::OuterReferenceColumn(..), _) | (_, Expr::OuterReferenceColumn(..))
            ) =>
            {
                let inner = match (left.as_ref(), right.as_ref()) {
                    (Expr::OuterReferenceColumn(..), other) => other,
                    (other, _) => other,
                };
                if self.lin(inner, schema, input)?.is_person_key() {
                    Ok(())
                } else {
                    refuse(
                        Code::ShapeSubquery,
                        "EXISTS subqueries are correlated by the person key only",
                    )
                }
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
                if !ins.subquery.outer_ref_columns.is_empty() {
                    return refuse(
                        Code::ShapeSubquery,
                        "IN subqueries are uncorrelated person-key cohorts",
                    );
                }
                let l = self.lin(&ins.expr, schema, input)?;
                let sub = self.cohort(&ins.subquery.subquery)?;
                if l.is_person_key() && sub.len() == 1 && sub[0].is_person_key() {
                    return Ok(());
                }
                refuse(
                    Code::ShapeSubquery,
                    "IN (SELECT …) is allowed only as a person-key cohort: person_key IN (SELECT person_key …)",
                )
            }
            Expr::Exists(ex) => self.exists(&ex.subquery, schema, input),
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

    /// `[NOT] EXISTS (…)` must be correlated with the outer query by the
    /// person key and nothing else; an uncorrelated EXISTS is one bit about
    /// the whole table that one person can flip.
    pub(super) fn exists(
        &self,
        sub: &datafusion::logical_expr::Subquery,
        schema: &DFSchema,
        input: &[Lin],
    ) -> Result<()> {
        let correlated = !sub.outer_ref_columns.is_empty()
            && sub.outer_ref_columns.iter().all(|o| match o {
                Expr::OuterReferenceColumn(_, c) => schema
                    .index_of_column(c)
                    .ok()
                    .and_then(|i| input.get(i))
                    .is_some_and(Lin::is_person_key),
                _ => false,
            });
        if !correlated {
            return refuse(
                Code::ShapeSubquery,
                "EXISTS is allowed only as a person-key cohort: EXISTS (SELECT … WHERE t.person_key = outer.person_key …)",
            );
        }
        self.cohort(&sub.subquery).map(|_| ())
    }

    /// Whether `e` is linear in the data: `+`, `-`, scaling by a literal,
    /// division by a literal that yields decimals, negation, casts,
    /// literals, columns and approved
    /// scalar UDFs (reviewed code). Anything else can be a condition in
    /// disguise (`1 / ((x - v) * (x - v) + 1)` in integers is 1 only at v).
    pub(super) fn linear(&self, e: &Expr, schema: &DFSchema) -> bool {
        let mut ok = true;
        let _ = e.apply(|x| {
            let fine = match x {
                Expr::Column(_)
                | Expr::Literal(..)
                | Expr::Alias(_)
                | Expr::Negative(_)
                | Expr::Cast(_)
                | Expr::TryCast(_)
                | Expr::AggregateFunction(_) => true,
                Expr::BinaryExpr(b) => match b.op {
                    Operator::Plus | Operator::Minus => true,
                    // A product of two data values is a polynomial: a high
                    // enough degree magnifies one person's change past any
                    // rounding in a small cell. Scaling by a literal is fine.
                    Operator::Multiply => is_literal(&b.left) || is_literal(&b.right),
                    // Division by a literal into decimals scales; a computed
                    // divisor has a pole (`1 / (x - v)`), and integer
                    // division is a step function.
                    Operator::Divide => {
                        is_literal(&b.right)
                            && x.get_type(schema).is_ok_and(|t| {
                                matches!(
                                    t,
                                    datafusion::arrow::datatypes::DataType::Float16
                                        | datafusion::arrow::datatypes::DataType::Float32
                                        | datafusion::arrow::datatypes::DataType::Float64
                                        | datafusion::arrow::datatypes::DataType::Decimal128(..)
                                )
                            })
                    }
                    _ => false,
                },
                Expr::ScalarFunction(f) => {
                    self.udfs.get(f.func.name()).is_some_and(|u| !u.aggregate)
                }
                _ => false,
            };
            if !fine {
                ok = false;
                return Ok(TreeNodeRecursion::Stop);
            }
            if matches!(x, Expr::AggregateFunction(_)) {
                return Ok(TreeNodeRecursion::Jump);
            }
            Ok(TreeNodeRecursion::Continue)
        });
        ok
    }

    /// The allow-list of expression forms, operators and scalar functions.
    pub(super) fn allowed(&self, e: &Expr) -> Result<()> {
        let mut bad = None;
        let _ = e.apply(|x| {
            let verdict = match x {
                Expr::Column(_)
                | Expr::Literal(..)
                | Expr::Alias(_)
                | Expr::Not(_)
                | Expr::IsNull(_)
                | Expr::IsNotNull(_)
                | Expr::IsTrue(_)
                | Expr::IsFalse(_)
                | Expr::IsUnknown(_)
                | Expr::IsNotTrue(_)
                | Expr::IsNotFalse(_)
                | Expr::IsNotUnknown(_)
                | Expr::Negative(_)
                | Expr::Between(_)
                | Expr::Case(_)
                | Expr::Cast(_)
                | Expr::TryCast(_)
                | Expr::AggregateFunction(_)
                | Expr::OuterReferenceColumn(..)
                | Expr::ScalarSubquery(_)
                | Expr::InSubquery(_)
                | Expr::Exists(_)
                | Expr::SetComparison(_)
                | Expr::WindowFunction(_) => Ok(()),
                Expr::InList(l) => {
                    if l.list.iter().all(is_literal) {
                        Ok(())
                    } else {
                        Err("IN lists hold literals only")
                    }
                }
                Expr::Like(l) | Expr::SimilarTo(l) => {
                    if is_literal(&l.pattern) {
                        Ok(())
                    } else {
                        Err("LIKE and SIMILAR TO patterns must be literals")
                    }
                }
                Expr::BinaryExpr(b) => match b.op {
                    Operator::Eq
                    | Operator::NotEq
                    | Operator::Lt
                    | Operator::LtEq
                    | Operator::Gt
                    | Operator::GtEq
                    | Operator::Plus
                    | Operator::Minus
                    | Operator::Multiply
                    | Operator::Divide
                    | Operator::Modulo
                    | Operator::And
                    | Operator::Or
                    | Operator::IsDistinctFrom
                    | Operator::IsNotDistinctFrom
                    | Operator::StringConcat => Ok(()),
                    Operator::RegexMatch
                    | Operator::RegexIMatch
                    | Operator::RegexNotMatch
                    | Operator::RegexNotIMatch
                    | Operator::LikeMatch
                    | Operator::ILikeMatch
                    | Operator::NotLikeMatch
                    | Operator::NotILikeMatch => {
                        if is_literal(&b.right) {
                            Ok(())
                        } else {
                            Err("regular expression and LIKE patterns must be literals")
                        }
                    }
                    _ => Err("this operator is not on the allow-list"),
                },
                Expr::ScalarFunction(f) => {
                    let name = f.func.name();
                    if self.udfs.get(name).is_some_and(|u| !u.aggregate) {
                        Ok(())
                    } else if let Some((_, literal)) =
                        FUNCTIONS.iter().find(|(n, _)| n.eq_ignore_ascii_case(name))
                    {
                        function_args(name, &f.args, literal)
                    } else if self.udfs.get(name).is_some_and(|u| u.aggregate) {
                        // An aggregate UDF is planned as an aggregate, never here.
                        Err("this function is not on the allow-list")
                    } else {
                        Err("this function is not on the allow-list")
                    }
                }
                _ => Err("this expression form is not on the allow-list"),
            };
            if let Err(rule) = verdict {
                bad = Some(rule);
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        });
        match bad {
            Some(rule) => refuse(Code::DiscFunction, rule),
            None => Ok(()),
        }
    }
}
