//! The researcher's query path, table-driven: SQL in, decision and result out.
//!
//! One synthetic space is generated per test binary. Allowed queries are
//! compared with plain DataFusion running hand-written masks over the raw
//! Parquet files; attack queries must be refused with an exact code or have
//! their cells suppressed.

// Test and bench code: a panic is the failure report, and plain DataFusion
// sessions are the independent reference.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    reason = "tests fail loudly and build reference contexts with plain DataFusion"
)]

use crate::support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use kexin_engine::Code;
use kexin_engine::gate::Cell;
use kexin_engine::node::{Node, Outcome, Status};
use support::ask;

fn space_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| support::generated_space(2, 3000, 7))
}

async fn node() -> Node {
    support::open_h1(space_dir()).await
}

async fn alice(sql: &str) -> Outcome {
    ask(&node().await, "diabetes-2027", "alice", sql).await
}

// ---------------------------------------------------------------- refusals

/// (case, scene, researcher, SQL, expected code)
pub(crate) const REFUSED: &[(&str, &str, &str, &str, &str)] = &[
    (
        "row-level select",
        "diabetes-2027",
        "alice",
        "SELECT * FROM patients",
        "KX-SHAPE-NO-AGGREGATE",
    ),
    (
        "distinct values list",
        "diabetes-2027",
        "alice",
        "SELECT DISTINCT diagnosis FROM admissions",
        "KX-SHAPE-NO-AGGREGATE",
    ),
    (
        "group by name",
        "diabetes-2027",
        "alice",
        "SELECT name, count(*) FROM patients GROUP BY name",
        "KX-DISC-IDENTIFIER",
    ),
    (
        "group by person key",
        "diabetes-2027",
        "alice",
        "SELECT id_card, count(*) FROM admissions GROUP BY id_card",
        "KX-DISC-IDENTIFIER",
    ),
    (
        "id number predicate",
        "diabetes-2027",
        "alice",
        "SELECT count(*) FROM patients WHERE id_card = '42010219800101001X'",
        "KX-DISC-IDENTIFIER",
    ),
    (
        "id list predicate",
        "diabetes-2027",
        "alice",
        "SELECT count(*) FROM patients WHERE id_card IN ('a', 'b')",
        "KX-DISC-IDENTIFIER",
    ),
    (
        "name prefix predicate",
        "diabetes-2027",
        "alice",
        "SELECT count(*) FROM patients WHERE name LIKE '王%'",
        "KX-DISC-IDENTIFIER",
    ),
    (
        "phone substring",
        "diabetes-2027",
        "alice",
        "SELECT count(*) FROM patients WHERE substr(phone, 1, 3) = '138'",
        "KX-DISC-IDENTIFIER",
    ),
    (
        "arithmetic on identifier",
        "diabetes-2027",
        "alice",
        "SELECT count(id_card || 'x') FROM patients",
        "KX-DISC-IDENTIFIER",
    ),
    (
        "sum of identifier",
        "diabetes-2027",
        "alice",
        "SELECT sum(length(id_card)) FROM patients",
        "KX-DISC-IDENTIFIER",
    ),
    (
        "max of sensitive",
        "diabetes-2027",
        "alice",
        "SELECT max(cost) FROM admissions",
        "KX-DISC-MINMAX",
    ),
    (
        "min of lab value",
        "diabetes-2027",
        "alice",
        "SELECT test, min(value) FROM labs GROUP BY test",
        "KX-DISC-MINMAX",
    ),
    (
        "case tracker in sum",
        "diabetes-2027",
        "alice",
        "SELECT sum(CASE WHEN cost > 199000 THEN cost ELSE 0 END) FROM admissions",
        "KX-DISC-CONDITIONAL",
    ),
    (
        "boolean cast tracker",
        "diabetes-2027",
        "alice",
        "SELECT sum(cost * CAST(cost > 199000 AS INT)) FROM admissions",
        "KX-DISC-CONDITIONAL",
    ),
    (
        "coalesce tracker",
        "diabetes-2027",
        "alice",
        "SELECT avg(coalesce(nullif(cost, 123.45), 0)) FROM admissions",
        "KX-DISC-CONDITIONAL",
    ),
    (
        "filter clause",
        "diabetes-2027",
        "alice",
        "SELECT avg(cost) FILTER (WHERE length_of_stay > 80) FROM admissions",
        "KX-DISC-AGGREGATE-FUNCTION",
    ),
    (
        "median",
        "diabetes-2027",
        "alice",
        "SELECT median(cost) FROM admissions",
        "KX-DISC-AGGREGATE-FUNCTION",
    ),
    (
        "array_agg",
        "diabetes-2027",
        "alice",
        "SELECT array_agg(diagnosis) FROM admissions",
        "KX-DISC-AGGREGATE-FUNCTION",
    ),
    (
        "group by raw sensitive",
        "diabetes-2027",
        "alice",
        "SELECT cost, count(*) FROM admissions GROUP BY cost",
        "KX-DISC-SENSITIVE",
    ),
    (
        "limit below aggregate",
        "diabetes-2027",
        "alice",
        "SELECT count(*) FROM (SELECT cost FROM admissions ORDER BY cost DESC LIMIT 1) t",
        "KX-SHAPE-BELOW-AGGREGATE",
    ),
    (
        "nested aggregate",
        "diabetes-2027",
        "alice",
        "SELECT avg(c) FROM (SELECT department, sum(cost) AS c FROM admissions GROUP BY department) t",
        "KX-SHAPE-NESTED-AGGREGATE",
    ),
    (
        "join on non-key",
        "diabetes-2027",
        "alice",
        "SELECT count(*) FROM admissions a JOIN labs l ON a.diagnosis = l.test",
        "KX-DISC-JOIN",
    ),
    (
        "cross join",
        "diabetes-2027",
        "alice",
        "SELECT count(*) FROM patients p CROSS JOIN labs l",
        "KX-DISC-JOIN",
    ),
    (
        "researcher id list join",
        "diabetes-2027",
        "alice",
        "SELECT count(*) FROM (VALUES ('42010219800101001X')) v(id) JOIN patients p ON v.id = p.id_card",
        "KX-SHAPE-VALUES",
    ),
    (
        "window",
        "diabetes-2027",
        "alice",
        "SELECT diagnosis, rank() OVER (ORDER BY count(*)) FROM admissions GROUP BY diagnosis",
        "KX-SHAPE-WINDOW",
    ),
    (
        "union",
        "diabetes-2027",
        "alice",
        "SELECT count(*) FROM admissions UNION ALL SELECT count(*) FROM labs",
        "KX-SHAPE-SET-OPERATION",
    ),
    (
        "rollup",
        "diabetes-2027",
        "alice",
        "SELECT department, count(*) FROM admissions GROUP BY ROLLUP(department)",
        "KX-SHAPE-SET-OPERATION",
    ),
    (
        "differencing with scalar subqueries",
        "diabetes-2027",
        "alice",
        "SELECT (SELECT count(*) FROM admissions) - (SELECT count(*) FROM admissions WHERE cost < 199999)",
        "KX-SHAPE-SUBQUERY",
    ),
    (
        "scalar subquery in filter",
        "diabetes-2027",
        "alice",
        "SELECT count(*) FROM admissions WHERE cost > (SELECT avg(cost) FROM admissions)",
        "KX-SHAPE-SUBQUERY",
    ),
    (
        "explain",
        "diabetes-2027",
        "alice",
        "EXPLAIN SELECT count(*) FROM admissions",
        "KX-SHAPE-STATEMENT",
    ),
    (
        "explain analyze",
        "diabetes-2027",
        "alice",
        "EXPLAIN ANALYZE SELECT count(*) FROM admissions",
        "KX-SHAPE-STATEMENT",
    ),
    (
        "delete",
        "diabetes-2027",
        "alice",
        "DELETE FROM admissions",
        "KX-SHAPE-STATEMENT",
    ),
    (
        "create table as",
        "diabetes-2027",
        "alice",
        "CREATE TABLE t AS SELECT * FROM patients",
        "KX-SHAPE-STATEMENT",
    ),
    (
        "two statements",
        "diabetes-2027",
        "alice",
        "SELECT count(*) FROM admissions; SELECT count(*) FROM labs",
        "KX-SHAPE-STATEMENT",
    ),
    (
        "syntax error",
        "diabetes-2027",
        "alice",
        "SELEC count(*) FROM admissions",
        "KX-SQL-SYNTAX",
    ),
    (
        "unknown table",
        "diabetes-2027",
        "alice",
        "SELECT count(*) FROM secrets",
        "KX-SQL-UNKNOWN",
    ),
    (
        "column outside the scene",
        "service-planning",
        "bob",
        "SELECT diagnosis, count(*) FROM admissions GROUP BY diagnosis",
        "KX-SQL-UNKNOWN",
    ),
    (
        "dataset outside the scene",
        "service-planning",
        "bob",
        "SELECT count(*) FROM labs",
        "KX-SQL-UNKNOWN",
    ),
    (
        "expired scene",
        "flu-2024",
        "alice",
        "SELECT count(*) FROM admissions",
        "KX-SCENE",
    ),
    (
        "another org's scene",
        "service-planning",
        "alice",
        "SELECT sex, count(*) FROM patients GROUP BY sex",
        "KX-SCENE",
    ),
    (
        "unknown scene",
        "nope",
        "alice",
        "SELECT count(*) FROM admissions",
        "KX-SCENE",
    ),
    (
        "unknown researcher",
        "diabetes-2027",
        "mallory",
        "SELECT count(*) FROM admissions",
        "KX-SCENE",
    ),
    (
        "holder is not a researcher",
        "diabetes-2027",
        "carol",
        "SELECT count(*) FROM admissions",
        "KX-SCENE",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_the_exact_code_and_no_data() {
    let node = node().await;
    let mut failures = Vec::new();
    for (case, scene, actor, sql, code) in REFUSED {
        let o = ask(&node, scene, actor, sql).await;
        if o.status != Status::Refused || o.code.map(Code::as_str) != Some(*code) {
            failures.push(format!(
                "{case}: expected {code}, got {:?} {:?} {:?}",
                o.status, o.code, o.rule
            ));
            continue;
        }
        assert!(
            o.rows.is_empty() && o.columns.is_empty(),
            "{case}: a refusal carries no data"
        );
        assert!(o.audit_seq.is_some(), "{case}: refusals are audited");
        assert_ne!(o.exit_status(), 0, "{case}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_deeply_nested_sql_are_refused() {
    let big = format!(
        "SELECT count(*) FROM admissions WHERE department = '{}'",
        "x".repeat(20_000)
    );
    assert_eq!(alice(&big).await.code, Some(Code::SqlSize));
    let deep = format!(
        "SELECT count(*) FROM admissions WHERE {}1 = 1{}",
        "(".repeat(200),
        ")".repeat(200)
    );
    assert_eq!(alice(&deep).await.code, Some(Code::SqlSyntax));
}

// ---------------------------------------------------------------- suppression and safe semantics

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn singling_out_by_predicates_is_suppressed() {
    for sql in [
        // a handful of the most expensive stays
        "SELECT count(*) FROM admissions WHERE cost > 199990",
        // the masked region never equals a full county code
        "SELECT count(*) FROM patients WHERE region = '420102'",
        // the oldest band in one small region and sex
        "SELECT region, sex, count(*) FROM patients WHERE age >= 90 GROUP BY region, sex",
    ] {
        let o = alice(sql).await;
        assert_eq!(o.status, Status::Released, "{sql}: {:?}", o.code);
        assert!(
            o.rows.is_empty(),
            "{sql}: small cells must not be released: {:?}",
            o.rows
        );
        if !sql.contains("GROUP BY") {
            // One global cell: that it was withheld is what the empty
            // result says anyway. Keys drawn from the data are not counted.
            assert_eq!(o.suppressed_groups, 1, "{sql}");
        } else {
            assert_eq!(o.suppressed_groups, 0, "{sql}");
        }
    }
    // HAVING runs after the gate, on released cells: asking for the small
    // counts finds none.
    let o =
        alice("SELECT diagnosis, count(*) FROM admissions GROUP BY diagnosis HAVING count(*) < 3")
            .await;
    assert_eq!(o.status, Status::Released, "{:?}", o.rule);
    assert!(o.rows.is_empty(), "{:?}", o.rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_expressions_get_defined_semantics_not_error_oracles() {
    // Division by zero and failing casts would otherwise be a data-dependent error.
    for sql in [
        "SELECT department, count(*) AS s FROM admissions WHERE cost / (length_of_stay - length_of_stay) > 0 GROUP BY department",
        "SELECT count(*) FROM admissions WHERE CAST(diagnosis AS INT) > 0",
        "SELECT count(*) FROM admissions WHERE 1 / (length_of_stay - 3) > 0",
        "SELECT department, avg(cost) AS s FROM admissions WHERE sqrt(cost - 5000) > 10 GROUP BY department",
        "SELECT count(*) FROM admissions WHERE ln(cost - 5000) > 1",
        "SELECT count(*) FROM admissions WHERE admit_date > diagnosis",
        "SELECT count(*) FROM admissions WHERE abs(length_of_stay * 0 - 9223372036854775807 - 1) > 0",
        "SELECT count(*) FROM admissions WHERE (length_of_stay * 0 - 9223372036854775807 - 1) / -1 > 0",
    ] {
        let o = alice(sql).await;
        assert_eq!(
            o.status,
            Status::Released,
            "{sql}: {:?} {:?}",
            o.code,
            o.rule
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arguments_that_can_be_non_finite_are_refused_before_running() {
    // A non-finite value could withhold a whole cell for one row: such
    // arguments are not linear in the data, or their rows can exceed what
    // a sum can hold, and are refused with a fixed code.
    for (sql, code) in [
        (
            "SELECT sum(cost * 1e308) FROM admissions",
            Code::DiscAggregateFunction,
        ),
        (
            "SELECT sum(exp(cost)) FROM admissions",
            Code::DiscConditional,
        ),
        (
            "SELECT avg(exp(cost) - exp(cost)) FROM admissions",
            Code::DiscConditional,
        ),
    ] {
        let o = alice(sql).await;
        assert_eq!(o.code, Some(code), "{sql}: {:?}", o.rule);
        assert!(o.rows.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masks_apply_everywhere_above_the_scan() {
    // substr cannot recover the masked digits of a region code.
    let o = alice(
        "SELECT substr(region, 1, 6) AS r, count(*) FROM patients GROUP BY substr(region, 1, 6)",
    )
    .await;
    assert_eq!(o.status, Status::Released);
    assert!(!o.rows.is_empty());
    for r in &o.rows {
        let Cell::Text(s) = &r[0] else {
            panic!("{r:?}")
        };
        assert_eq!(s.len(), 4, "region leaked past prefix(4): {s}");
    }
    // CTEs and subqueries see the banded age.
    let o = alice("WITH x AS (SELECT age FROM patients) SELECT age, count(*) FROM x GROUP BY age")
        .await;
    assert_eq!(o.status, Status::Released);
    for r in &o.rows {
        let Cell::Int(a) = r[0] else { panic!("{r:?}") };
        assert_eq!(a % 10, 0, "age not banded in a CTE: {a}");
    }
    let o = alice("SELECT a FROM (SELECT age + 0 AS a FROM patients) t GROUP BY a").await;
    assert_eq!(o.status, Status::Released);
    for r in &o.rows {
        let Cell::Int(a) = r[0] else { panic!("{r:?}") };
        assert_eq!(a % 10, 0, "age not banded in a subquery: {a}");
    }
    // Dates as years only.
    let o = alice("SELECT birth_date, count(*) FROM patients GROUP BY birth_date").await;
    assert_eq!(o.status, Status::Released);
    for r in &o.rows {
        let Cell::Text(d) = &r[0] else {
            panic!("{r:?}")
        };
        assert!(
            d.ends_with("-01-01"),
            "birth date not generalized to a year: {d}"
        );
    }
}

// ---------------------------------------------------------------- correctness against plain DataFusion

/// Run `sql` with plain DataFusion over the raw Parquet files of node h1.
async fn reference(sql: &str) -> Vec<Vec<Option<f64>>> {
    let ctx = SessionContext::new();
    for t in ["patients", "admissions", "labs"] {
        let path = space_dir().join("h1").join(format!("{t}.parquet"));
        ctx.register_parquet(
            t,
            path.to_str().expect("utf8 path"),
            ParquetReadOptions::default(),
        )
        .await
        .expect("register");
    }
    let batches = ctx
        .sql(sql)
        .await
        .expect("plan")
        .collect()
        .await
        .expect("run");
    let mut rows = Vec::new();
    for b in batches {
        let cols: Vec<_> = (0..b.num_columns())
            .map(|c| cast(b.column(c), &DataType::Float64).expect("numeric reference column"))
            .collect();
        for r in 0..b.num_rows() {
            rows.push(
                cols.iter()
                    .map(|c| {
                        let c = c.as_primitive::<Float64Type>();
                        (!c.is_null(r)).then(|| c.value(r))
                    })
                    .collect(),
            );
        }
    }
    rows
}

fn num(c: &Cell) -> Option<f64> {
    match c {
        Cell::Int(i) => Some(*i as f64),
        Cell::Float(f) => Some(*f),
        Cell::Null => None,
        other => panic!("not a number: {other:?}"),
    }
}

fn round_to(v: f64, step: f64) -> f64 {
    ((v + step / 2.0) / step).floor() * step
}

/// Compare a released result with the reference. The reference's last column
/// is the distinct-person count per group; the key is every column marked in
/// `key`. Groups at or above min_persons + spread must be released with the
/// reference's values; groups under min_persons must not be.
fn compare(
    o: &Outcome,
    reference: &[Vec<Option<f64>>],
    key: &[bool],
    check: impl Fn(usize, f64, f64) -> bool,
) {
    assert_eq!(o.status, Status::Released, "{:?} {:?}", o.code, o.rule);
    let released: BTreeMap<String, &Vec<Cell>> = o
        .rows
        .iter()
        .map(|r| {
            let k: Vec<String> = r
                .iter()
                .zip(key)
                .filter(|(_, k)| **k)
                .map(|(c, _)| format!("{:?}", num(c)))
                .collect();
            (k.join("|"), r)
        })
        .collect();
    let mut matched = 0;
    for row in reference {
        let persons = row.last().copied().flatten().unwrap_or(0.0);
        let k: Vec<String> = row
            .iter()
            .zip(key)
            .filter(|(_, k)| **k)
            .map(|(c, _)| format!("{c:?}"))
            .collect();
        let k = k.join("|");
        match released.get(&k) {
            Some(rel) => {
                assert!(
                    persons >= 10.0,
                    "group {k} released with only {persons} persons"
                );
                for (i, (c, is_key)) in rel.iter().zip(key).enumerate() {
                    if *is_key {
                        continue;
                    }
                    let (got, want) = (num(c).unwrap_or(f64::NAN), row[i].unwrap_or(f64::NAN));
                    assert!(
                        check(i, got, want),
                        "group {k} column {i}: kexin {got}, reference {want}"
                    );
                }
                matched += 1;
            }
            None => assert!(
                persons < 13.0,
                "group {k} with {persons} persons was suppressed"
            ),
        }
    }
    assert_eq!(
        matched,
        o.rows.len(),
        "every released row has a reference group"
    );
    assert!(matched > 0, "the comparison compared something");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_by_banded_age_match_datafusion() {
    let o =
        alice("SELECT sex = 'M' AS male, age, count(*) AS n FROM patients GROUP BY sex, age").await;
    let r = reference(
        "SELECT CASE WHEN sex = 'M' THEN 1 ELSE 0 END AS male, \
                floor(LEAST(GREATEST(age, 0), 100) / 10.0) * 10 AS age, \
                count(*) AS n, count(DISTINCT id_card) AS persons \
         FROM patients GROUP BY 1, 2",
    )
    .await;
    let o = Outcome {
        rows: o
            .rows
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r[0] = match r[0] {
                    Cell::Bool(b) => Cell::Int(i64::from(b)),
                    ref other => other.clone(),
                };
                r
            })
            .collect(),
        ..o
    };
    compare(&o, &r, &[true, true, false], |_, got, want| {
        got == round_to(want, 5.0)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clamped_means_by_department_match_datafusion() {
    let o = alice("SELECT department, avg(cost) AS mean_cost, count(*) AS n FROM admissions GROUP BY department").await;
    let r = reference(
        "SELECT avg(LEAST(GREATEST(cost, 0), 200000)) AS mean_cost, count(*) AS n, \
                count(DISTINCT id_card) AS persons FROM admissions GROUP BY department",
    )
    .await;
    // Departments are text; every department is large, so all are released
    // and the rows can be matched by their values.
    assert_eq!(o.status, Status::Released);
    assert_eq!(o.suppressed_groups, 0);
    let mut got: Vec<(f64, f64)> = o
        .rows
        .iter()
        .map(|r| {
            (
                num(&r[1]).unwrap_or(f64::NAN),
                num(&r[2]).unwrap_or(f64::NAN),
            )
        })
        .collect();
    let mut want: Vec<(f64, f64)> = r
        .iter()
        .map(|r| {
            (
                (r[0].unwrap_or(f64::NAN) * 100.0).round() / 100.0,
                round_to(r[1].unwrap_or(f64::NAN), 5.0),
            )
        })
        .collect();
    got.sort_by(|a, b| a.0.total_cmp(&b.0));
    want.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn person_key_joins_and_cohorts_match_datafusion() {
    let o = alice(
        "SELECT p.age, count(DISTINCT p.id_card) AS persons_released, avg(l.value) AS mean_hba1c \
         FROM patients p JOIN labs l ON p.id_card = l.id_card \
         WHERE l.test = 'hba1c' AND p.id_card IN (SELECT id_card FROM admissions WHERE diagnosis = 'E11') \
         GROUP BY p.age",
    )
    .await;
    let r = reference(
        "SELECT floor(LEAST(GREATEST(p.age, 0), 100) / 10.0) * 10 AS age, count(DISTINCT p.id_card) AS n, \
                avg(LEAST(GREATEST(l.value, 0), 1000)) AS mean, count(DISTINCT p.id_card) AS persons \
         FROM patients p JOIN labs l ON p.id_card = l.id_card \
         WHERE l.test = 'hba1c' AND p.id_card IN (SELECT id_card FROM admissions WHERE substr(diagnosis, 1, 3) = 'E11') \
         GROUP BY 1",
    )
    .await;
    compare(&o, &r, &[true, false, false], |i, got, want| match i {
        1 => got == round_to(want, 5.0),
        _ => got == (want * 100.0).round() / 100.0,
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_json_shape_is_stable() {
    let o = alice("SELECT sex, count(*) AS n FROM patients GROUP BY sex ORDER BY sex").await;
    let v: serde_json::Value = serde_json::to_value(&o).expect("json");
    for k in [
        "status",
        "columns",
        "rows",
        "suppressed_groups",
        "code",
        "rule",
        "audit_seq",
    ] {
        assert!(v.get(k).is_some(), "missing {k}");
    }
    assert_eq!(v["status"], "released");
    assert_eq!(v["columns"], serde_json::json!(["sex", "n"]));
    assert_eq!(v["rows"][0][0], "F");
    let n = v["rows"][0][1].as_i64().expect("count");
    assert_eq!(n % 5, 0, "rounded to round_to = 5");
    assert!(n > 1000);
}

#[test]
fn reference_helper_is_not_vacuous() {
    // The correctness tests above rely on `round_to`; make sure it rounds.
    assert_eq!(round_to(12.0, 5.0), 10.0);
    assert_eq!(round_to(13.0, 5.0), 15.0);
}
