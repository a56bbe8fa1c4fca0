//! DP step 1: planning. The checked plan becomes a scan of measured rows
//! (group keys, person, clamped and quantized arguments) and a mechanism;
//! argument bounds, output columns, post-processing and the repeat digest.

// The parent's imports and its siblings' items: one DP module, cut in
// three files.
use super::*;

/// A planned DP query.
#[derive(Debug)]
pub struct DpQuery {
    /// The scan: `[keys…, person, args…]`, one row per input row.
    pub plan: LogicalPlan,
    pub mechanism: Mechanism,
    /// Output column names, as the researcher wrote them.
    pub columns: Vec<String>,
    pub bounding: Bounding,
    pub(super) key_types: Vec<DataType>,
}

/// Declared bounds of a base column, by (dataset, column).
pub(super) type BaseBounds<'a> = dyn Fn(&(String, String)) -> Option<(f64, f64)> + 'a;

/// Public bounds of a measured aggregate argument: a column with declared
/// bounds (through casts, aliases and derived tables), an approved UDF
/// with a declared range, a numeric literal, or a CASE whose every
/// non-NULL branch has bounds (their union). The mechanism clamps the
/// argument to these bounds whatever it computes, so they set the
/// sensitivity; a wrong guess here costs accuracy, never privacy.
pub(super) fn value_bounds(
    e: &Expr,
    input: &LogicalPlan,
    base: &BaseBounds<'_>,
    udfs: &QueryUdfs,
    depth: usize,
) -> Option<(f64, f64)> {
    if depth > 32 {
        return None;
    }
    let union = |a: Option<(f64, f64)>, b: (f64, f64)| match a {
        None => Some(b),
        Some((lo, hi)) => Some((lo.min(b.0), hi.max(b.1))),
    };
    match strip(e) {
        Expr::ScalarFunction(s) => udfs
            .facts
            .get(s.func.name())
            .and_then(|u| u.range)
            .map(|(lo, hi)| (lo as f64, hi as f64)),
        Expr::Literal(v, _) => match v.cast_to(&DataType::Float64).ok()? {
            datafusion::common::ScalarValue::Float64(Some(x)) if x.is_finite() => Some((x, x)),
            _ => None,
        },
        Expr::Cast(c) => value_bounds(&c.expr, input, base, udfs, depth + 1),
        Expr::TryCast(c) => value_bounds(&c.expr, input, base, udfs, depth + 1),
        Expr::Case(c) => {
            let mut b = None;
            let branches = c
                .when_then_expr
                .iter()
                .map(|(_, then)| then.as_ref())
                .chain(c.else_expr.as_deref());
            for branch in branches {
                if matches!(strip(branch), Expr::Literal(v, _) if v.is_null()) {
                    continue;
                }
                b = union(b, value_bounds(branch, input, base, udfs, depth + 1)?);
            }
            b
        }
        Expr::Column(c) => {
            if let Some(o) = expr_origin(e, input) {
                return base(&o);
            }
            // A computed column of a derived table: its defining expression.
            let i = input.schema().index_of_column(c).ok()?;
            let (def, below) = defining(input, i)?;
            value_bounds(def, below, base, udfs, depth + 1)
        }
        _ => None,
    }
}

/// The expression that computes column `idx` of `plan`, and the plan it is
/// computed over (through aliases, filters and joins).
pub(super) fn defining(plan: &LogicalPlan, idx: usize) -> Option<(&Expr, &LogicalPlan)> {
    match plan {
        LogicalPlan::Projection(p) => match strip(p.expr.get(idx)?) {
            Expr::Column(c) => defining(&p.input, p.input.schema().index_of_column(c).ok()?),
            other => Some((other, p.input.as_ref())),
        },
        LogicalPlan::SubqueryAlias(a) => defining(&a.input, idx),
        LogicalPlan::Filter(f) => defining(&f.input, idx),
        LogicalPlan::Join(j) => {
            let (side, i) = join_side(j, idx)?;
            defining(side, i)
        }
        _ => None,
    }
}

/// The input of join `j` that its output column `idx` comes from, and the
/// column's index there.
pub(super) fn join_side(
    j: &datafusion::logical_expr::Join,
    idx: usize,
) -> Option<(&LogicalPlan, usize)> {
    let nl = j.left.schema().fields().len();
    match j.join_type {
        JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full => {
            if idx < nl {
                Some((&j.left, idx))
            } else {
                Some((&j.right, idx - nl))
            }
        }
        JoinType::LeftSemi | JoinType::LeftAnti => Some((&j.left, idx)),
        JoinType::RightSemi | JoinType::RightAnti => Some((&j.right, idx)),
        _ => None,
    }
}

/// Where a plan column comes from: a base column of a dataset.
pub(super) fn origin(plan: &LogicalPlan, idx: usize) -> Option<(String, String)> {
    match plan {
        LogicalPlan::Projection(p) => {
            let e = strip(p.expr.get(idx)?);
            match e {
                Expr::Column(c) => origin(&p.input, p.input.schema().index_of_column(c).ok()?),
                Expr::ScalarFunction(f) if f.func.name() == "kexin_mask" => match f.args.first()? {
                    Expr::Column(c) => {
                        let i = p.input.schema().index_of_column(c).ok()?;
                        origin(&p.input, i)
                    }
                    _ => None,
                },
                _ => None,
            }
        }
        LogicalPlan::SubqueryAlias(a) => origin(&a.input, idx),
        LogicalPlan::Filter(f) => origin(&f.input, idx),
        LogicalPlan::Join(j) => {
            let (side, i) = join_side(j, idx)?;
            origin(side, i)
        }
        LogicalPlan::TableScan(s) => Some((
            s.table_name.table().to_string(),
            s.projected_schema.field(idx).name().clone(),
        )),
        _ => None,
    }
}

pub(super) fn strip(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => strip(&a.expr),
        other => other,
    }
}

/// The base column an expression is (through aliases and casts).
pub(super) fn expr_origin(e: &Expr, input: &LogicalPlan) -> Option<(String, String)> {
    match strip(e) {
        Expr::Cast(c) => expr_origin(&c.expr, input),
        Expr::TryCast(c) => expr_origin(&c.expr, input),
        Expr::Column(c) => origin(input, input.schema().index_of_column(c).ok()?),
        _ => None,
    }
}

/// Whether the query has post-processing that runs on the released rows
/// as a table: HAVING, ORDER BY or LIMIT above the releasing aggregate.
pub fn has_post_processing(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Sort(_) | LogicalPlan::Limit(_) | LogicalPlan::Filter(_) => true,
        LogicalPlan::Projection(p) => has_post_processing(&p.input),
        LogicalPlan::SubqueryAlias(a) => has_post_processing(&a.input),
        _ => false,
    }
}

/// For a query with post-processing: which column of the releasing
/// aggregate each output column is. As without post-processing, each
/// output column is a group key or one aggregate call (its interval then
/// follows it); HAVING, ORDER BY and LIMIT may use any of the aggregate's
/// columns.
pub fn post_output_map(plan: &LogicalPlan) -> Result<Vec<usize>> {
    outputs(plan, true).map(|(_, m)| m)
}

/// Resolve the researcher's output columns to the releasing aggregate's
/// output columns; `through_post` lets HAVING, ORDER BY and LIMIT pass
/// (they run on released rows, see [`post_output_map`]).
pub(super) fn outputs(
    plan: &LogicalPlan,
    through_post: bool,
) -> Result<(&datafusion::logical_expr::Aggregate, Vec<usize>)> {
    match plan {
        LogicalPlan::Sort(s) if through_post => outputs(&s.input, true),
        LogicalPlan::Limit(l) if through_post => outputs(&l.input, true),
        LogicalPlan::Filter(f) if through_post => outputs(&f.input, true),
        LogicalPlan::Projection(p) => {
            let (agg, below) = outputs(&p.input, through_post)?;
            let mut out = Vec::new();
            for e in &p.expr {
                let Expr::Column(c) = strip(e) else {
                    return refuse(
                        Code::DpShape,
                        "in DP mode each output column is a group key or one aggregate call",
                    );
                };
                let i = p.input.schema().index_of_column(c).map_err(internal)?;
                out.push(*below.get(i).ok_or_else(|| internal("column index"))?);
            }
            Ok((agg, out))
        }
        LogicalPlan::SubqueryAlias(a) => outputs(&a.input, through_post),
        LogicalPlan::Aggregate(a) => Ok((a, (0..a.schema.fields().len()).collect())),
        LogicalPlan::Sort(_) | LogicalPlan::Limit(_) => refuse(
            Code::DpShape,
            "ORDER BY and LIMIT are not supported in federated scenes (released rows come sorted by group key)",
        ),
        LogicalPlan::Filter(_) => refuse(
            Code::ShapeHaving,
            "HAVING is not supported in federated scenes (filter the released rows yourself)",
        ),
        _ => Err(internal("no releasing aggregate")),
    }
}

/// Plan a DP query from the rewritten, checked plan.
#[allow(
    clippy::too_many_arguments,
    reason = "the plan rewrite needs the policy, the scene and the bounds it enforces"
)]
pub fn plan(
    plan: LogicalPlan,
    datasets: &BTreeMap<String, &Dataset>,
    udfs: &QueryUdfs,
    privacy: &PrivacyRules,
    output: &OutputRules,
    row_key: u64,
    group_key: u64,
) -> Result<DpQuery> {
    let columns: Vec<String> = plan
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let (agg, map) = outputs(&plan, false)?;
    let input = agg.input.as_ref();
    let nkeys = agg.group_expr.len();
    let column_policy = |o: &(String, String)| {
        datasets
            .get(&o.0)
            .and_then(|d| d.columns.get(&o.1).map(|c| (*d, c)))
    };

    // Group keys: a public domain each, or none.
    let mut domains: Vec<Option<Vec<Cell>>> = Vec::new();
    for g in &agg.group_expr {
        let d = match strip(g) {
            Expr::ScalarFunction(f) => udfs
                .domains
                .get(f.func.name())
                .map(|v| v.iter().map(|s| Cell::Text(s.clone())).collect()),
            e => expr_origin(e, input)
                .and_then(|o| column_policy(&o).and_then(|(_, c)| c.domain.clone()))
                .map(|v| {
                    v.into_iter()
                        .map(|x| match x {
                            PublicValue::Int(i) => Cell::Int(i),
                            PublicValue::Text(s) => Cell::Text(s),
                        })
                        .collect()
                }),
        };
        domains.push(d);
    }
    let domain = if domains.iter().all(Option::is_some) {
        let mut cells: Vec<Vec<Cell>> = vec![vec![]];
        for d in domains.into_iter().flatten() {
            if cells.len().saturating_mul(d.len()) > MAX_DOMAIN_CELLS {
                return refuse(
                    Code::DpPartition,
                    "the group keys' public domains have too many combinations",
                );
            }
            cells = cells
                .into_iter()
                .flat_map(|c| {
                    d.iter().map(move |v| {
                        let mut c = c.clone();
                        c.push(v.clone());
                        c
                    })
                })
                .collect();
        }
        Some(cells)
    } else {
        None
    };

    // Aggregates: measured arguments and what each output is.
    let mut args: Vec<(Expr, ArgSpec)> = Vec::new();
    let mut arg_index = |e: Expr, spec: ArgSpec| -> Result<usize> {
        if let Some(i) = args.iter().position(|(x, s)| *x == e && *s == spec) {
            return Ok(i);
        }
        if args.len() == MAX_ARGS {
            return refuse(Code::DpAggregate, "too many aggregates in one DP query");
        }
        args.push((e, spec));
        Ok(args.len() - 1)
    };
    let mut agg_outputs = Vec::new();
    for a in &agg.aggr_expr {
        let Expr::AggregateFunction(f) = strip(a) else {
            return Err(internal("aggregate expected"));
        };
        let name = f.func.name().to_ascii_lowercase();
        let arg = f.params.args.first().cloned().unwrap_or(lit(1i64));
        if name == "count" {
            if f.params.distinct {
                let o = expr_origin(&arg, input);
                let is_pk = o
                    .as_ref()
                    .and_then(|o| column_policy(o).map(|(d, c)| d.person_key == c.name))
                    .unwrap_or(false);
                if !is_pk {
                    return refuse(
                        Code::DpAggregate,
                        "in DP mode COUNT(DISTINCT …) counts the person key only",
                    );
                }
                agg_outputs.push(Output::Count(Stat::Persons));
            } else if matches!(strip(&arg), Expr::Literal(..)) {
                agg_outputs.push(Output::Count(Stat::Rows));
            } else {
                // COUNT(col) sums a 0/1 presence indicator.
                let present = cast_expr(arg.is_not_null(), DataType::Float64);
                let i = arg_index(present, ArgSpec::new(0.0, 1.0, 0))?;
                agg_outputs.push(Output::Count(Stat::Sum(i)));
            }
            continue;
        }
        if f.params.distinct {
            return refuse(
                Code::DpAggregate,
                "in DP mode COUNT(DISTINCT …) counts the person key only",
            );
        }
        let base = |o: &(String, String)| column_policy(o).and_then(|(_, c)| c.bounds);
        let Some((lo, hi)) = value_bounds(&arg, input, &base, udfs, 0) else {
            return refuse(
                Code::DpBounds,
                "DP aggregates take a column with public bounds, an approved UDF with a declared range, or a CASE whose every branch is one of these or a number",
            );
        };
        let spec = ArgSpec::new(lo, hi, output.decimals);
        let i = arg_index(cast_expr(arg, DataType::Float64), spec)?;
        let out = match name.as_str() {
            "sum" => Output::Sum(i),
            "avg" | "mean" => Output::Avg(i),
            "var" | "var_samp" => Output::Var {
                arg: i,
                sample: true,
                sqrt: false,
            },
            "var_pop" => Output::Var {
                arg: i,
                sample: false,
                sqrt: false,
            },
            "stddev" | "stddev_samp" => Output::Var {
                arg: i,
                sample: true,
                sqrt: true,
            },
            "stddev_pop" => Output::Var {
                arg: i,
                sample: false,
                sqrt: true,
            },
            _ => {
                return refuse(
                    Code::DpAggregate,
                    "DP mode releases COUNT, COUNT(DISTINCT person key), SUM, AVG, VAR and STDDEV only",
                );
            }
        };
        agg_outputs.push(out);
    }
    let outputs: Vec<Output> = map
        .iter()
        .map(|i| {
            if *i < nkeys {
                Output::Key(*i)
            } else {
                agg_outputs[*i - nkeys]
            }
        })
        .collect();

    // The executed plan: the researcher's keys, the person key and the
    // measured arguments, row by row; the bounding happens in PersonTable.
    let (input, pk) = gate::carry(input.clone())?;
    let mut exprs: Vec<Expr> = agg
        .group_expr
        .iter()
        .enumerate()
        .map(|(i, g)| strip(g).clone().alias(format!("__kexin_key{i}")))
        .collect();
    exprs.push(Expr::Column(pk).alias("__kexin_person"));
    exprs.extend(
        args.iter()
            .enumerate()
            .map(|(i, (e, _))| e.clone().alias(format!("__kexin_arg{i}"))),
    );
    let projection =
        datafusion::logical_expr::Projection::try_new(exprs, Arc::new(input)).map_err(internal)?;
    let key_types: Vec<DataType> = projection
        .schema
        .fields()
        .iter()
        .take(nkeys)
        .map(|f| f.data_type().clone())
        .collect();
    let specs: Vec<ArgSpec> = args.iter().map(|(_, s)| *s).collect();
    let bounding = Bounding {
        k: privacy.rows_per_person as usize,
        l: privacy.groups_per_person as usize,
        args: specs.clone(),
        row_key,
        group_key,
    };
    let mechanism = Mechanism::new(privacy, output, specs, outputs, nkeys, domain)?;
    Ok(DpQuery {
        plan: LogicalPlan::Projection(projection),
        mechanism,
        columns,
        bounding,
        key_types,
    })
}

impl DpQuery {
    /// An empty scan for one partition of this query.
    pub fn scan(&self) -> Scan {
        Scan::new(&self.bounding.args, &self.key_types)
    }

    /// The normalized digest of what this query computes: the optimized
    /// plan with table aliases replaced by the tables they stand for, the
    /// outputs and the mechanism's parameters. Equal digests get the same
    /// (cached) answer.
    pub fn digest(&self, optimized: &LogicalPlan, policy: &[u8; 32]) -> String {
        let text = normalize(optimized);
        let m = &self.mechanism;
        let mut h = Sha256::new();
        h.update(b"kexin-dp-v1\n");
        h.update(text.as_bytes());
        h.update(
            format!(
                "\n{:?}\n{:?}\n{:?}\nk={} l={} eps={} delta={} thr={}\n",
                m.outputs,
                m.args,
                m.domain.as_ref().map(Vec::len),
                self.bounding.k,
                self.bounding.l,
                m.epsilon,
                m.delta,
                m.threshold
            )
            .as_bytes(),
        );
        h.update(policy);
        hex::encode(h.finalize())
    }
}

/// The plan text with every alias qualifier replaced by its table and the
/// alias lines dropped, so `FROM t AS a` and `FROM t` read the same.
pub(super) fn normalize(plan: &LogicalPlan) -> String {
    use datafusion::common::tree_node::TreeNodeRecursion;
    let mut names: HashMap<String, String> = HashMap::new();
    let mut derived = 0usize;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::SubqueryAlias(a) = node {
            let mut inner = a.input.as_ref();
            let canonical = loop {
                match inner {
                    LogicalPlan::SubqueryAlias(x) => inner = x.input.as_ref(),
                    LogicalPlan::Projection(p)
                        if matches!(p.input.as_ref(), LogicalPlan::TableScan(_)) =>
                    {
                        if let LogicalPlan::TableScan(s) = p.input.as_ref() {
                            break s.table_name.table().to_string();
                        }
                    }
                    LogicalPlan::TableScan(s) => break s.table_name.table().to_string(),
                    // A consent scene's scan: the consent filter sits under
                    // the mask projection.
                    LogicalPlan::Projection(p)
                        if matches!(p.input.as_ref(), LogicalPlan::Filter(f)
                            if matches!(f.input.as_ref(), LogicalPlan::TableScan(_))) =>
                    {
                        if let LogicalPlan::Filter(f) = p.input.as_ref()
                            && let LogicalPlan::TableScan(s) = f.input.as_ref()
                        {
                            break s.table_name.table().to_string();
                        }
                    }
                    _ => {
                        derived += 1;
                        break format!("derived{derived}");
                    }
                }
            };
            names.insert(a.alias.table().to_string(), canonical);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    let text = format!("{}", plan.display_indent());
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line.trim_start().starts_with("SubqueryAlias:") {
            continue;
        }
        out.push_str(&requalify(line.trim_start(), &names));
        out.push('\n');
    }
    out
}

pub(super) fn requalify(line: &str, names: &HashMap<String, String>) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    let word = |c: char| c.is_alphanumeric() || c == '_';
    while i < chars.len() {
        let starts = word(chars[i]) && (i == 0 || !(word(chars[i - 1]) || chars[i - 1] == '.'));
        if starts {
            let mut j = i;
            while j < chars.len() && word(chars[j]) {
                j += 1;
            }
            let ident: String = chars[i..j].iter().collect();
            if chars.get(j) == Some(&'.')
                && let Some(n) = names.get(&ident)
            {
                out.push_str(n);
            } else {
                out.push_str(&ident);
            }
            i = j;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}
