//! The release boundary, tested the two-worlds way.
//!
//! The attacker is a researcher with a valid scene who knows one patient's
//! exact weight (a rare value) and wants to learn whether her height is
//! exactly 212.3 cm. Two copies of one generated space differ in that
//! height alone: 212.3 in world A, 212.2 in world B. Every attack query runs
//! in both worlds, and everything a researcher sees — status, code, rule,
//! exit status, columns, rows, `suppressed_groups`, explanation — must be
//! the same. Each class of the release-boundary issue has its own queries;
//! the concrete ones are ours, written for this suite.

// Test code: a panic is the failure report, and plain DataFusion over the
// raw files is the independent check that the worlds really differ.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    reason = "tests fail loudly and build reference contexts with plain DataFusion"
)]

use crate::support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{Array, ArrayRef, Float64Array, RecordBatch};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use kexin_engine::Code;
use kexin_engine::gate::Cell;
use kexin_engine::node::{Node, Outcome, Status};
use support::ask;

const WEIGHT: f64 = 187.9;
const HEIGHT_A: f64 = 212.3;
const HEIGHT_B: f64 = 212.2;

/// World A and world B: one space, copied, with the victim's height set.
fn worlds() -> &'static (PathBuf, PathBuf) {
    static DIRS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    DIRS.get_or_init(|| {
        let a = support::generated_space(2, 3000, 11);
        let b = tempfile::tempdir().expect("tempdir").keep();
        copy_dir(&a, &b);
        set_victim(&a.join("h1/patients.parquet"), HEIGHT_A);
        set_victim(&b.join("h1/patients.parquet"), HEIGHT_B);
        // The node reads its loaded copy: load the changed file in each
        // world, as the hospital would.
        for w in [&a, &b] {
            let space = kexin_engine::policy::Space::load(w).unwrap();
            kexin_engine::node::data::load(&space, "h1", "patients", &[], "operator").unwrap();
        }
        (a, b)
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// The first patient of the file becomes the victim: her weight is the
/// attacker's known fact, her height the secret.
fn set_victim(path: &Path, height: f64) {
    let file = std::fs::File::open(path).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    let schema = batches[0].schema();
    let mut out = Vec::new();
    for (i, b) in batches.iter().enumerate() {
        let mut cols: Vec<ArrayRef> = b.columns().to_vec();
        if i == 0 {
            for (name, value) in [("height_cm", height), ("weight_kg", WEIGHT)] {
                let c = schema.index_of(name).unwrap();
                let old = cols[c].as_any().downcast_ref::<Float64Array>().unwrap();
                let new: Float64Array = (0..old.len())
                    .map(|r| {
                        if r == 0 {
                            Some(value)
                        } else {
                            old.is_valid(r).then(|| old.value(r))
                        }
                    })
                    .collect();
                cols[c] = Arc::new(new);
            }
        }
        out.push(RecordBatch::try_new(schema.clone(), cols).unwrap());
    }
    let file = std::fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(file, schema, None).unwrap();
    for b in &out {
        w.write(b).unwrap();
    }
    w.close().unwrap();
}

async fn nodes() -> (Node, Node) {
    let (a, b) = worlds();
    (
        support::open_with_peers(a, "h1").await,
        support::open_with_peers(b, "h1").await,
    )
}

/// Everything a researcher sees of an outcome. DP values are random, so for
/// DP outcomes the values of aggregate cells are left out (their keys, the
/// row count and every other field stay).
fn seen(o: &Outcome) -> String {
    let rows: Vec<Vec<Cell>> = if o.dp.is_some() {
        o.rows
            .iter()
            .map(|r| {
                r.iter()
                    .map(|c| match c {
                        Cell::Float(_) | Cell::Int(_) => Cell::Null,
                        other => other.clone(),
                    })
                    .collect()
            })
            .collect()
    } else {
        o.rows.clone()
    };
    // Without ORDER BY the order of rows is DataFusion's (parallel, not
    // stable): compare them as a set. With ORDER BY the order is a function
    // of the released rows, which are compared.
    let mut rows: Vec<String> = rows.iter().map(|r| format!("{r:?}")).collect();
    rows.sort();
    let dp = o.dp.as_ref().map(|d| {
        (
            d.epsilon_charged,
            d.epsilon_spent,
            d.epsilon_remaining,
            d.delta,
            d.repeat_of.is_some(),
        )
    });
    format!(
        "{:?} {:?} {:?} exit={} cols={:?} rows={:?} suppressed={} expl={:?} dp={:?}",
        o.status,
        o.code,
        o.rule,
        o.exit_status(),
        o.columns,
        rows,
        o.suppressed_groups,
        o.explanation,
        dp
    )
}

/// Run each query in both worlds; every observable must match.
async fn same_in_both_worlds(scene: &str, queries: &[&str]) -> Vec<Outcome> {
    let (a, b) = nodes().await;
    let mut failures = Vec::new();
    let mut outcomes = Vec::new();
    // DP scenes belong to another requester than the exact ones.
    let actor = if scene.contains("-dp") {
        "erin"
    } else {
        "alice"
    };
    for sql in queries {
        let oa = ask(&a, scene, actor, sql).await;
        let ob = ask(&b, scene, actor, sql).await;
        let (sa, sb) = (seen(&oa), seen(&ob));
        if sa != sb {
            failures.push(format!("{sql}\n  A: {sa}\n  B: {sb}"));
        }
        outcomes.push(oa);
    }
    assert!(failures.is_empty(), "leaks:\n{}", failures.join("\n"));
    outcomes
}

/// The victim's row, as the attacker pins it.
const VICTIM: &str = "weight_kg = 187.9 AND height_cm = 212.3";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worlds_differ_where_the_attacker_looks() {
    // Sanity: the property is real. The same question asked of the data
    // directly (in plain DataFusion over the copies the nodes read) tells
    // the worlds apart, so a suite that passed would not pass by accident.
    let (a, b) = worlds();
    for (dir, want) in [(a, 1), (b, 0)] {
        let ctx = datafusion::prelude::SessionContext::new();
        ctx.register_parquet(
            "patients",
            dir.join("h1/data/patients.parquet").to_str().unwrap(),
            Default::default(),
        )
        .await
        .unwrap();
        let df = ctx
            .sql(&format!("SELECT count(*) FROM patients WHERE {VICTIM}"))
            .await
            .unwrap();
        let batches = df.collect().await.unwrap();
        let n = datafusion::arrow::compute::cast(
            batches[0].column(0),
            &datafusion::arrow::datatypes::DataType::Int64,
        )
        .unwrap();
        let n = n
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Int64Array>()
            .unwrap()
            .value(0);
        assert_eq!(n, want);
    }
}

// ---------------------------------------------------------------- class 1: subqueries one person decides

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class1_subqueries_that_one_person_decides() {
    let queries = [
        // An uncorrelated EXISTS switches a whole big cell.
        format!(
            "SELECT sex, count(*) FROM patients WHERE EXISTS (SELECT 1 FROM patients WHERE {VICTIM}) GROUP BY sex"
        ),
        format!(
            "SELECT count(*) FROM patients WHERE NOT EXISTS (SELECT 1 FROM patients WHERE {VICTIM})"
        ),
        // IN on a column other than the person key.
        format!(
            "SELECT count(*) FROM patients WHERE sex IN (SELECT sex FROM patients WHERE {VICTIM})"
        ),
        format!(
            "SELECT count(*) FROM admissions WHERE length_of_stay IN (SELECT age FROM patients WHERE {VICTIM})"
        ),
        // A correlated EXISTS on something other than the person key.
        format!(
            "SELECT count(*) FROM patients p WHERE EXISTS (SELECT 1 FROM patients q WHERE q.sex = p.sex AND q.{})",
            "weight_kg = 187.9 AND q.height_cm = 212.3"
        ),
    ];
    let queries: Vec<&str> = queries.iter().map(String::as_str).collect();
    for o in same_in_both_worlds("diabetes-2027", &queries).await {
        assert_eq!(o.code, Some(Code::ShapeSubquery), "{:?}", o.rule);
    }
    // The same in DP mode, where one ε = 0.1 query used to yield a certain bit.
    let dp = [format!(
        "SELECT sex, count(*) FROM patients WHERE EXISTS (SELECT 1 FROM patients WHERE {VICTIM}) GROUP BY sex"
    )];
    let dp: Vec<&str> = dp.iter().map(String::as_str).collect();
    for o in same_in_both_worlds("diabetes-dp", &dp).await {
        assert_eq!(o.code, Some(Code::ShapeSubquery));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn person_level_cohorts_are_accepted() {
    // Subqueries whose answer for a person depends on that person's rows
    // only: lifted over-refusals, released in both worlds alike.
    let queries = [
        "SELECT sex, count(*) FROM patients WHERE id_card IN (SELECT id_card FROM admissions GROUP BY id_card HAVING count(*) >= 2) GROUP BY sex",
        "SELECT sex, count(*) FROM patients p WHERE EXISTS (SELECT 1 FROM labs l WHERE l.id_card = p.id_card AND l.value > 7) GROUP BY sex",
        "SELECT sex, count(*) FROM patients p WHERE NOT EXISTS (SELECT 1 FROM labs l WHERE l.id_card = p.id_card AND l.value > 7) GROUP BY sex",
        "SELECT count(*) FROM patients p, admissions a WHERE p.id_card = a.id_card",
        "SELECT p.sex, count(*) FROM patients p, admissions a, labs l WHERE p.id_card = a.id_card AND a.id_card = l.id_card GROUP BY p.sex",
    ];
    for (o, sql) in same_in_both_worlds("diabetes-2027", &queries)
        .await
        .iter()
        .zip(queries)
    {
        assert_eq!(
            o.status,
            Status::Released,
            "{sql}: {:?} {:?}",
            o.code,
            o.rule
        );
        assert!(!o.rows.is_empty(), "{sql}: {o:?}");
    }
    // EXISTS and NOT EXISTS split every sex's patients in two (up to the
    // rounding of three counts to 5).
    let (a, _) = nodes().await;
    let count = |o: &Outcome, sex: &str| {
        o.rows
            .iter()
            .find(|r| r[0] == Cell::Text(sex.into()))
            .map(|r| match r[1] {
                Cell::Int(n) => n,
                ref other => panic!("{other:?}"),
            })
            .unwrap()
    };
    let all = ask(
        &a,
        "diabetes-2027",
        "alice",
        "SELECT sex, count(*) FROM patients GROUP BY sex",
    )
    .await;
    let split: Vec<Outcome> = ask_all(&a, &queries[1..3]).await;
    for sex in ["F", "M"] {
        let sum = count(&split[0], sex) + count(&split[1], sex);
        assert!(
            (sum - count(&all, sex)).abs() <= 10,
            "{sex}: {sum} vs {}",
            count(&all, sex)
        );
    }
    // A comma join without a person-key link is still a cross join.
    let o = ask(
        &a,
        "diabetes-2027",
        "alice",
        "SELECT count(*) FROM patients p, admissions a WHERE p.sex = a.department",
    )
    .await;
    assert_eq!(o.code, Some(Code::DiscJoin));
    let o = ask(
        &a,
        "diabetes-2027",
        "alice",
        "SELECT count(*) FROM patients p, admissions a WHERE p.id_card = p.id_card",
    )
    .await;
    assert_eq!(
        o.code,
        Some(Code::DiscJoin),
        "both sides of the join must be linked"
    );
}

async fn ask_all(node: &Node, queries: &[&str]) -> Vec<Outcome> {
    let mut out = Vec::new();
    for q in queries {
        out.push(ask(node, "diabetes-2027", "alice", q).await);
    }
    out
}

// ---------------------------------------------------------------- class 2: conditions one level down

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class2_conditions_in_the_lineage_of_an_aggregate() {
    let queries = [
        // A CASE in a derived table with a constant baseline (dominance
        // would not see a single large contribution).
        format!("SELECT sum(x) FROM (SELECT CASE WHEN {VICTIM} THEN 100000 ELSE 1000 END AS x FROM patients) t"),
        format!("SELECT count(x) FROM (SELECT CASE WHEN {VICTIM} THEN 1 END AS x FROM patients) t"),
        "SELECT avg(x) FROM (SELECT CAST(height_cm = 212.3 AS INT) * 1000 AS x FROM patients WHERE weight_kg > 100) t".into(),
        // Step functions built from arithmetic: integer division, abs,
        // rounding, a computed divisor, a product of data values.
        "SELECT sum(1 / ((CAST(height_cm * 10 AS BIGINT) - 2123) * (CAST(height_cm * 10 AS BIGINT) - 2123) + 1)) FROM patients".into(),
        "SELECT sum(abs(height_cm - 212.25) - abs(height_cm - 212.35)) FROM patients".into(),
        "SELECT sum(round(height_cm - 211.8)) FROM patients WHERE weight_kg > 150".into(),
        "SELECT avg(1.0 / (height_cm - 212.3)) FROM patients".into(),
        "SELECT avg((height_cm - 212.2) * (height_cm - 212.2) * (height_cm - 212.2)) FROM patients".into(),
        // An outer join's NULL extension is a condition too.
        "SELECT count(q.height_cm) FROM patients p LEFT JOIN patients q ON p.id_card = q.id_card AND q.height_cm = 212.3".into(),
    ];
    let queries: Vec<&str> = queries.iter().map(String::as_str).collect();
    for o in same_in_both_worlds("diabetes-2027", &queries).await {
        assert_eq!(o.code, Some(Code::DiscConditional), "{:?}", o.rule);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dp_scenes_take_bounded_conditional_arguments() {
    // DP clamps every measured argument to its public bounds, so the
    // linearity rule does not apply there. A CASE whose branches are
    // numbers or bounded columns has the union of their bounds (a lifted
    // over-refusal: the noise is scaled to it), through derived tables
    // too; the worlds look alike up to that noise. A CASE with a branch
    // without bounds is refused for want of bounds, in both worlds alike.
    let accepted = [
        format!(
            "SELECT sex, sum(x) FROM (SELECT sex, CASE WHEN {VICTIM} THEN 100000 ELSE 0 END AS x FROM patients) t GROUP BY sex"
        ),
        "SELECT sex, sum(CASE WHEN age >= 60 THEN 1 ELSE 0 END) AS older FROM patients GROUP BY sex".into(),
        "SELECT sex, avg(CASE WHEN age >= 60 THEN weight_kg END) FROM patients GROUP BY sex".into(),
    ];
    let accepted: Vec<&str> = accepted.iter().map(String::as_str).collect();
    for o in same_in_both_worlds("diabetes-dp", &accepted).await {
        assert_eq!(o.status, Status::Released, "{:?}", o.rule);
        assert_eq!(o.rows.len(), 2, "sex has a public domain of two");
    }
    let refused = [format!(
        "SELECT sex, sum(CASE WHEN {VICTIM} THEN height_cm * 1000 ELSE 0 END) FROM patients GROUP BY sex"
    )];
    let refused: Vec<&str> = refused.iter().map(String::as_str).collect();
    for o in same_in_both_worlds("diabetes-dp", &refused).await {
        assert_eq!(o.code, Some(Code::DpBounds), "{:?}", o.rule);
    }
}

// ---------------------------------------------------------------- class 3: data-dependent runtime errors

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class3_errors_that_one_value_could_raise() {
    let refused = [
        // Patterns, lengths and counts computed from data.
        "SELECT count(*) FROM patients WHERE regexp_like(sex, region)",
        "SELECT count(*) FROM patients WHERE substr(region, 1, CAST(height_cm AS INT) - 210) = '42'",
        "SELECT count(*) FROM patients WHERE lpad(sex, CAST(height_cm AS INT)) = 'x'",
        "SELECT count(*) FROM patients WHERE sex LIKE region",
        "SELECT count(*) FROM patients WHERE to_timestamp(region) > now()",
        "SELECT count(*) FROM patients WHERE repeat(sex, 100000000) = sex",
    ];
    for o in same_in_both_worlds("diabetes-2027", &refused).await {
        assert_eq!(o.code, Some(Code::DiscFunction), "{:?}", o.rule);
    }
    // Expressions that fail for one value only: a cast inserted by type
    // coercion, abs and division at the integer minimum. They now have
    // defined semantics, and the answer is the same in both worlds.
    let runs = [
        format!(
            "SELECT sex, count(*) FROM patients WHERE birth_date > CASE WHEN {VICTIM} THEN sex ELSE '1900-01-01' END GROUP BY sex"
        ),
        format!(
            "SELECT sex, count(*) FROM patients WHERE abs(CASE WHEN {VICTIM} THEN -9223372036854775807 - 1 ELSE 1 END) > 0 GROUP BY sex"
        ),
        format!(
            "SELECT sex, count(*) FROM patients WHERE (CASE WHEN {VICTIM} THEN -9223372036854775807 - 1 ELSE 1 END) / -1 <> 0 GROUP BY sex"
        ),
        format!(
            "SELECT sex, count(*) FROM patients WHERE (CASE WHEN {VICTIM} THEN -9223372036854775807 - 1 ELSE 1 END) % -1 = 0 GROUP BY sex"
        ),
        format!(
            "SELECT sex, count(*) FROM patients WHERE sqrt(CASE WHEN {VICTIM} THEN -1 ELSE 1 END) > 0 GROUP BY sex"
        ),
    ];
    let runs: Vec<&str> = runs.iter().map(String::as_str).collect();
    for o in same_in_both_worlds("diabetes-2027", &runs).await {
        assert_eq!(o.status, Status::Released, "{:?} {:?}", o.code, o.rule);
    }
    let dp = [format!(
        "SELECT sex, count(*) FROM patients WHERE birth_date > CASE WHEN {VICTIM} THEN sex ELSE '1900-01-01' END GROUP BY sex"
    )];
    let dp: Vec<&str> = dp.iter().map(String::as_str).collect();
    for o in same_in_both_worlds("diabetes-dp", &dp).await {
        assert_eq!(o.status, Status::Released, "{:?} {:?}", o.code, o.rule);
    }
}

// ---------------------------------------------------------------- class 4: the gate's own outputs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class4_the_gate_says_nothing_about_withheld_cells() {
    let released = [
        // Data-derived keys: how many cells were withheld is not told.
        format!("SELECT region, count(*) FROM patients WHERE {VICTIM} GROUP BY region"),
        "SELECT birth_date, count(*) FROM patients WHERE height_cm > 212 GROUP BY birth_date".into(),
        // ORDER BY / LIMIT / OFFSET run after the gate: they cannot walk
        // withheld cells.
        "SELECT region, count(*) AS n FROM patients WHERE height_cm > 200 GROUP BY region ORDER BY n DESC LIMIT 1".into(),
        "SELECT age, count(*) AS n FROM patients WHERE height_cm > 205 GROUP BY age ORDER BY age LIMIT 1 OFFSET 1".into(),
        // HAVING on released cells only.
        "SELECT region, count(*) FROM patients WHERE height_cm > 200 GROUP BY region HAVING count(*) >= 1".into(),
        // Exact-looking counts through sums of constants are rounded.
        "SELECT age, sum(height_cm * 0 + 1) FROM patients WHERE height_cm > 170 GROUP BY age ORDER BY age".into(),
    ];
    let released: Vec<&str> = released.iter().map(String::as_str).collect();
    let out = same_in_both_worlds("diabetes-2027", &released).await;
    for o in &out {
        assert_eq!(o.status, Status::Released, "{:?}", o.rule);
        assert_eq!(
            o.suppressed_groups, 0,
            "data-derived keys never count withheld cells"
        );
    }
    // `sum(x * 0 + 1)` is a count and rounded like one.
    assert!(!out[5].rows.is_empty());
    for r in &out[5].rows {
        match r[1] {
            Cell::Float(f) => assert_eq!(f % 5.0, 0.0, "{r:?}"),
            Cell::Int(i) => assert_eq!(i % 5, 0, "{r:?}"),
            ref other => panic!("{other:?}"),
        }
    }
    // Arguments whose rows can be huge or infinite (a sum that could wrap,
    // a non-finite value) are refused before anything runs.
    let refused = [
        "SELECT sum(CAST(height_cm AS BIGINT) * 9223372036854775807) FROM patients",
        "SELECT sex, avg(height_cm * 1e307 * 1e307) FROM patients GROUP BY sex",
    ];
    for o in same_in_both_worlds("diabetes-2027", &refused).await {
        assert_eq!(o.code, Some(Code::DiscAggregateFunction), "{:?}", o.rule);
    }
    // A global cell and public-domain keys do count withheld cells: that
    // number is a function of what was released.
    let (a, _) = nodes().await;
    let o = ask(
        &a,
        "diabetes-2027",
        "alice",
        &format!("SELECT count(*) FROM patients WHERE {VICTIM}"),
    )
    .await;
    assert_eq!((o.rows.len(), o.suppressed_groups), (0, 1));
    let o = ask(
        &a,
        "diabetes-2027",
        "alice",
        "SELECT sex, count(*) FROM patients WHERE height_cm > 205 GROUP BY sex",
    )
    .await;
    assert_eq!(o.rows.len() + o.suppressed_groups, 2, "{o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn literal_group_keys_cannot_redraw_the_threshold() {
    // Cells of a few persons near the threshold: the decision for each set
    // of persons is the same whatever literal keys are added.
    let (a, _) = nodes().await;
    let base = "SELECT region, count(*) FROM patients WHERE height_cm > 185 GROUP BY region";
    let reference = ask(&a, "diabetes-2027", "alice", base).await;
    assert_eq!(reference.status, Status::Released);
    let released: std::collections::BTreeSet<String> = reference
        .rows
        .iter()
        .map(|r| format!("{:?}", r[0]))
        .collect();
    // (Integer literals in GROUP BY are column positions, so none here.)
    for lit in [
        "'a'", "'b'", "'zz'", "NULL", "3.5", "'x'", "TRUE", "'q'", "'1'", "2.25",
    ] {
        let sql = format!(
            "SELECT region, {lit} AS k, count(*) FROM patients WHERE height_cm > 185 GROUP BY region, {lit}"
        );
        let o = ask(&a, "diabetes-2027", "alice", &sql).await;
        assert_eq!(o.status, Status::Released, "{sql}: {:?}", o.rule);
        let got: std::collections::BTreeSet<String> =
            o.rows.iter().map(|r| format!("{:?}", r[0])).collect();
        assert_eq!(got, released, "{sql}: the threshold was re-drawn");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_processing_runs_on_released_cells() {
    let (a, _) = nodes().await;
    let all = ask(
        &a,
        "diabetes-2027",
        "alice",
        "SELECT department, count(*) AS n FROM admissions GROUP BY department",
    )
    .await;
    assert_eq!(all.status, Status::Released);
    // HAVING is now post-processing: the released cells that satisfy it.
    let having = ask(
        &a,
        "diabetes-2027",
        "alice",
        "SELECT department, count(*) AS n FROM admissions GROUP BY department HAVING count(*) > 300",
    )
    .await;
    assert_eq!(having.status, Status::Released, "{:?}", having.rule);
    let want: Vec<&Vec<Cell>> = all
        .rows
        .iter()
        .filter(|r| matches!(r[1], Cell::Int(n) if n > 300))
        .collect();
    assert_eq!(having.rows.len(), want.len());
    // ORDER BY and LIMIT sort the released (rounded) values.
    let top = ask(
        &a,
        "diabetes-2027",
        "alice",
        "SELECT department, count(*) AS n FROM admissions GROUP BY department ORDER BY n DESC, department LIMIT 3",
    )
    .await;
    assert_eq!(top.rows.len(), 3.min(all.rows.len()));
    let mut sorted = all.rows.clone();
    sorted.sort_by(|x, y| {
        let (Cell::Int(a), Cell::Int(b)) = (&x[1], &y[1]) else {
            panic!()
        };
        b.cmp(a)
            .then(format!("{:?}", x[0]).cmp(&format!("{:?}", y[0])))
    });
    assert_eq!(top.rows, sorted[..top.rows.len()].to_vec());
    // Arithmetic over aggregates sees rounded values: a count shifted by a
    // constant and scaled cannot expose the exact count.
    let shifted = ask(
        &a,
        "diabetes-2027",
        "alice",
        "SELECT department, (count(*) - 11) * 1000000 AS x FROM admissions GROUP BY department",
    )
    .await;
    for r in &shifted.rows {
        let Cell::Int(x) = r[1] else { panic!("{r:?}") };
        assert_eq!((x / 1_000_000 + 11) % 5, 0, "{r:?}");
    }
}

// ---------------------------------------------------------------- class 5: availability

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class5_deep_expressions_are_refused_and_the_node_survives() {
    let (a, _) = nodes().await;
    let chain = format!(
        "SELECT count(*) FROM patients WHERE {}0 > 1",
        "age+".repeat(3500)
    );
    assert!(chain.len() < 16 * 1024);
    let o = ask(&a, "diabetes-2027", "alice", &chain).await;
    assert_eq!(o.code, Some(Code::SqlDepth), "{:?}", o.rule);
    let o = ask(
        &a,
        "diabetes-2027",
        "alice",
        &format!(
            "SELECT count(*) FROM patients WHERE {}0 > 1",
            "age*1+".repeat(60)
        ),
    )
    .await;
    assert_eq!(o.status, Status::Released, "a moderate chain still runs");
}
