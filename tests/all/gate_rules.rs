//! The release gate on a hand-built data set whose answers are known:
//! distinct-person thresholds (on persons, not rows), the noisy sticky
//! threshold, the dominance rule and rounding.

// Test and bench code: a panic is the failure report, and plain DataFusion
// sessions are the independent reference.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    reason = "tests fail loudly and build reference contexts with plain DataFusion"
)]

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use kexin_engine::gate::Cell;
use kexin_engine::node::{Node, Outcome, QueryRequest, Status};
use kexin_engine::policy::Space;

const POLICY: &str = r#"
[space]
name = "gate-test"
nodes = ["h1"]

[member.alice]
role = "researcher"
org = "org:a"

[dataset.visits]
source = "{node}/visits.parquet"
person_key = "id_card"

[dataset.visits.columns]
id_card = { grade = 4, kind = "identifier", mask = "pseudonym" }
ward    = { grade = 1, kind = "attribute" }
cost    = { grade = 3, kind = "sensitive", bounds = [0, 1000000] }

[scene.s]
contract  = "none"    # in-house test scene: no data-use contract
purpose = "DUO:0000006"
requester = "org:a"
datasets = ["visits"]
valid = ["2020-01-01", "2099-12-31"]
output = { min_persons = 10, round_to = 5, decimals = 1, dominance = [1, 0.6] }
"#;

/// ward A: 30 persons × 1 visit of 100
/// ward B: 9 persons × 3 visits (27 rows, but only 9 persons)
/// ward C: 14 persons, one with a 100000 visit, 13 with 10
/// ward D: 13 persons × 2 visits of 50
fn build(dir: &Path) {
    std::fs::create_dir_all(dir.join("h1")).expect("mkdir");
    std::fs::write(dir.join("space.toml"), POLICY).expect("policy");
    let mut ids = Vec::new();
    let mut wards = Vec::new();
    let mut costs = Vec::new();
    let mut add = |p: String, w: &str, c: f64| {
        ids.push(p);
        wards.push(w.to_string());
        costs.push(c);
    };
    for i in 0..30 {
        add(format!("A{i}"), "A", 100.0);
    }
    for i in 0..9 {
        for _ in 0..3 {
            add(format!("B{i}"), "B", 20.0);
        }
    }
    add("C0".into(), "C", 100_000.0);
    for i in 1..14 {
        add(format!("C{i}"), "C", 10.0);
    }
    for i in 0..13 {
        for _ in 0..2 {
            add(format!("D{i}"), "D", 50.0);
        }
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("id_card", DataType::Utf8, true),
        Field::new("ward", DataType::Utf8, true),
        Field::new("cost", DataType::Float64, true),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(ids)),
        Arc::new(StringArray::from(wards)),
        Arc::new(Float64Array::from(costs)),
    ];
    let batch = RecordBatch::try_new(Arc::clone(&schema), cols).expect("batch");
    let mut w = ArrowWriter::try_new(
        File::create(dir.join("h1/visits.parquet")).expect("file"),
        schema,
        None,
    )
    .expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");
}

async fn ask(dir: &Path, sql: &str) -> Outcome {
    let space = Arc::new(Space::load(dir).expect("space"));
    let node = Node::open(space, "h1").await.expect("node");
    node.query(&QueryRequest {
        scene: "s".into(),
        actor: "alice".into(),
        sql: sql.into(),
        contract: None,
    })
    .await
}

fn wards(o: &Outcome) -> Vec<String> {
    o.rows
        .iter()
        .map(|r| match &r[0] {
            Cell::Text(s) => s.clone(),
            other => panic!("{other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_count_persons_not_rows() {
    let t = tempfile::tempdir().expect("tempdir");
    build(t.path());
    let o = ask(
        t.path(),
        "SELECT ward, count(*) AS visits FROM visits GROUP BY ward ORDER BY ward",
    )
    .await;
    assert_eq!(o.status, Status::Released);
    let w = wards(&o);
    // B has 27 rows but 9 persons: suppressed. D has 13 persons: over any noisy threshold (10..=12).
    assert!(!w.contains(&"B".to_string()), "{w:?}");
    assert!(
        w.contains(&"A".to_string()) && w.contains(&"D".to_string()),
        "{w:?}"
    );
    let d = o
        .rows
        .iter()
        .find(|r| r[0] == Cell::Text("D".into()))
        .expect("D");
    assert_eq!(d[1], Cell::Int(25), "26 visits rounded to a multiple of 5");
    let a = o
        .rows
        .iter()
        .find(|r| r[0] == Cell::Text("A".into()))
        .expect("A");
    assert_eq!(a[1], Cell::Int(30));
    // Wards are drawn from the data: withheld cells are not counted.
    assert_eq!(o.suppressed_groups, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dominance_suppresses_sums_held_by_one_person() {
    let t = tempfile::tempdir().expect("tempdir");
    build(t.path());
    let o = ask(
        t.path(),
        "SELECT ward, sum(cost) AS total FROM visits GROUP BY ward",
    )
    .await;
    assert_eq!(o.status, Status::Released);
    let w = wards(&o);
    assert!(
        !w.contains(&"C".to_string()),
        "C is dominated by one person: {w:?}"
    );
    assert!(w.contains(&"A".to_string()), "{w:?}");
    assert!(
        o.explanation.iter().any(|e| e.contains("dominance")),
        "{:?}",
        o.explanation
    );
    // A count over C reveals no single value: dominance does not apply.
    let o = ask(
        t.path(),
        "SELECT ward, count(*) AS visits FROM visits WHERE ward = 'C' GROUP BY ward",
    )
    .await;
    let w = wards(&o);
    assert_eq!(w, vec!["C".to_string()], "{:?}", o.explanation);
    // An average is a sum in disguise: dominated too.
    let o = ask(
        t.path(),
        "SELECT ward, avg(cost) FROM visits WHERE ward = 'C' GROUP BY ward",
    )
    .await;
    assert!(o.rows.is_empty(), "{:?}", o.rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_noisy_threshold_is_sticky_across_repeats_and_rewrites() {
    let t = tempfile::tempdir().expect("tempdir");
    build(t.path());
    let first = ask(t.path(), "SELECT ward, count(*) FROM visits GROUP BY ward").await;
    for sql in [
        "SELECT ward, count(*) FROM visits GROUP BY ward",
        "SELECT ward, count(*) AS n FROM visits WHERE 1 = 1 GROUP BY ward",
        "SELECT ward, count(cost) FROM visits WHERE cost >= 0 GROUP BY ward ORDER BY ward DESC",
    ] {
        let again = ask(t.path(), sql).await;
        let (mut a, mut b) = (wards(&first), wards(&again));
        a.sort();
        b.sort();
        assert_eq!(a, b, "{sql}: the same cells must get the same decision");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differencing_one_person_out_does_not_reveal_them() {
    let t = tempfile::tempdir().expect("tempdir");
    build(t.path());
    // Ward B is under the threshold whichever way it is asked.
    for sql in [
        "SELECT count(*) FROM visits WHERE ward = 'B'",
        "SELECT sum(cost) FROM visits WHERE ward = 'B'",
        "SELECT count(*) FROM visits WHERE ward = 'B' AND cost > 10",
    ] {
        let o = ask(t.path(), sql).await;
        assert_eq!(o.status, Status::Released, "{sql}");
        assert!(o.rows.is_empty(), "{sql}: {:?}", o.rows);
        assert_eq!(o.suppressed_groups, 1, "{sql}");
    }
}
