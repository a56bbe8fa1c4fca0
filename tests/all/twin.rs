//! The mock twin (`kexin twin`, `kexin query --twin`): the scene's schema
//! exactly, the same pass/refuse decisions as the real node over a corpus
//! of queries, no value of the real data in any twin file, rows aimed at a
//! query's filters, and nothing charged or audited.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use kexin::twin::{self, TwinOptions};
use kexin_engine::node::{Node, Outcome, QueryRequest, Status};
use kexin_engine::policy::{ColumnKind, ORDINAL_COLUMN, Space};
use serde_json::Value;

fn space_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| support::generated_space(1, 2000, 23))
}

fn space() -> Arc<Space> {
    Arc::new(Space::load(space_dir()).expect("space loads"))
}

fn options(scene: &str, sql: Option<&str>) -> TwinOptions {
    TwinOptions {
        scene: scene.into(),
        rows: 1000,
        sql: sql.map(str::to_string),
        seed: Some(5),
        force: false,
    }
}

/// A fresh twin of `scene` (aimed at `sql`), and its node.
async fn twin_of(scene: &str, sql: Option<&str>) -> (tempfile::TempDir, twin::Manifest, Node) {
    let sp = space();
    let dir = tempfile::tempdir().unwrap();
    twin::make(&sp, &options(scene, sql), dir.path()).expect("twin is made");
    let (m, node) = twin::open(&sp, dir.path()).await.expect("twin opens");
    (dir, m, node)
}

fn class(t: &DataType) -> &'static str {
    match t {
        t if t.is_integer() => "integer",
        t if t.is_floating() => "float",
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text",
        DataType::Date32 | DataType::Date64 => "date",
        DataType::Boolean => "boolean",
        DataType::Dictionary(_, v) => class(v),
        _ => "other",
    }
}

/// Column → type class of a Parquet file.
fn schema_of(path: &Path) -> BTreeMap<String, &'static str> {
    let f = std::fs::File::open(path).unwrap();
    let b = ParquetRecordBatchReaderBuilder::try_new(f).unwrap();
    b.schema()
        .fields()
        .iter()
        .filter(|f| f.name() != ORDINAL_COLUMN)
        .map(|f| (f.name().clone(), class(f.data_type())))
        .collect()
}

/// Every value of a Parquet file's column `col`, as text.
fn values(path: &Path, col: &str) -> BTreeSet<String> {
    let f = std::fs::File::open(path).unwrap();
    let mut out = BTreeSet::new();
    for b in ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap()
    {
        let b = b.unwrap();
        let Some(a) = b.column_by_name(col) else {
            continue;
        };
        let a = datafusion::arrow::compute::cast(a, &DataType::Utf8).unwrap();
        let a = a.as_string::<i32>();
        out.extend(
            (0..a.len())
                .filter(|&i| a.is_valid(i))
                .map(|i| a.value(i).to_string()),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twin_has_exactly_the_scenes_visible_schema() {
    let sp = space();
    for scene in ["diabetes-2027", "service-planning"] {
        let (dir, m, _node) = twin_of(scene, None).await;
        let sc = &sp.scenes[scene];
        assert_eq!(
            m.datasets.keys().collect::<BTreeSet<_>>(),
            sc.datasets.iter().collect::<BTreeSet<_>>()
        );
        for d in &sc.datasets {
            let ds = &sp.datasets[d];
            let real = schema_of(&ds.source_for(&sp.dir, "h1"));
            let want: BTreeMap<String, &str> = real
                .into_iter()
                .filter(|(c, _)| sc.column_visible(ds, c))
                .collect();
            // The generated file and the twin node's loaded copy alike.
            for f in [
                dir.path().join("source").join(format!("{d}.parquet")),
                kexin_engine::node::data::copy_path(&dir.path().join(twin::NODE), d),
            ] {
                assert_eq!(schema_of(&f), want, "{scene}: {}", f.display());
            }
        }
    }
}

/// Queries beyond the query-path corpus: allowed ones of several scenes,
/// and decisions that depend on the scene (DP, export, federation, review).
const MORE: &[(&str, &str, &str)] = &[
    (
        "diabetes-2027",
        "alice",
        "SELECT sex, count(*) AS n FROM patients GROUP BY sex",
    ),
    (
        "diabetes-2027",
        "alice",
        "SELECT department, avg(cost) AS c, sum(length_of_stay) AS s FROM admissions GROUP BY department",
    ),
    (
        "diabetes-2027",
        "alice",
        "SELECT p.sex, count(DISTINCT a.id_card) AS n FROM patients p JOIN admissions a ON p.id_card = a.id_card WHERE a.diagnosis LIKE 'E11%' GROUP BY p.sex",
    ),
    (
        "diabetes-2027",
        "alice",
        "SELECT age, count(*) AS n FROM patients GROUP BY age ORDER BY age",
    ),
    (
        "diabetes-2027",
        "alice",
        "SELECT test, avg(value) AS v FROM labs GROUP BY test HAVING count(*) > 5",
    ),
    (
        "diabetes-2027",
        "alice",
        "SELECT date_trunc('year', admit_date) AS y, count(*) AS n FROM admissions GROUP BY 1",
    ),
    (
        "diabetes-2027",
        "alice",
        "SELECT region, count(*) AS n FROM patients GROUP BY region",
    ),
    (
        "diabetes-2027",
        "alice",
        "SELECT count(*) AS n FROM patients WHERE age BETWEEN 40 AND 60",
    ),
    (
        "service-planning",
        "bob",
        "SELECT sex, avg(cost) AS c FROM patients p JOIN admissions a ON p.id_card = a.id_card GROUP BY sex",
    ),
    (
        "service-planning",
        "bob",
        "SELECT department, count(*) AS n FROM admissions GROUP BY department",
    ),
    (
        "diabetes-dp",
        "erin",
        "SELECT sex, count(*) AS n FROM patients GROUP BY sex",
    ),
    ("diabetes-dp", "erin", "SELECT max(cost) FROM admissions"),
    ("diabetes-dp", "erin", "SELECT * FROM labs"),
    (
        "hk-outcomes",
        "grace",
        "SELECT sex, count(*) AS n FROM patients GROUP BY sex",
    ),
    (
        "hk-outcomes",
        "grace",
        "SELECT department, count(*) AS n FROM admissions GROUP BY department",
    ),
    (
        "joint-diabetes",
        "alice",
        "SELECT sex, count(*) AS n FROM patients GROUP BY sex",
    ),
    (
        "diabetes-review",
        "alice",
        "SELECT sex, count(*) AS n FROM patients GROUP BY sex",
    ),
    (
        "diabetes-consent",
        "alice",
        "SELECT department, count(*) AS n FROM admissions GROUP BY department",
    ),
];

/// Passes (released or held) or the refusal code.
fn decision(o: &Outcome) -> String {
    match o.status {
        Status::Released | Status::Held => "passes".into(),
        Status::Refused => o.code.map_or("?", |c| c.as_str()).to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twin_passes_and_refuses_the_same_queries_as_the_real_node() {
    let real = support::open_h1(space_dir()).await;
    let mut corpus: Vec<(&str, &str, &str)> = crate::query_path::REFUSED
        .iter()
        .map(|(_, scene, actor, sql, _)| (*scene, *actor, *sql))
        // A twin is of a scene the policy declares.
        .filter(|(scene, _, _)| sp_has(scene))
        .collect();
    corpus.extend(MORE.iter().copied());
    assert!(corpus.len() >= 30, "{}", corpus.len());
    let mut twins: BTreeMap<&str, (tempfile::TempDir, Node)> = BTreeMap::new();
    let (mut passed, mut refused) = (0, 0);
    let mut differ = Vec::new();
    for (scene, actor, sql) in &corpus {
        if !twins.contains_key(scene) {
            let (d, _, n) = twin_of(scene, None).await;
            twins.insert(scene, (d, n));
        }
        let twin = &twins[scene].1;
        let want = decision(&support::ask(&real, scene, actor, sql).await);
        let got = support::ask(twin, scene, actor, sql).await;
        assert!(got.mock && got.audit_seq.is_none(), "{sql}");
        if decision(&got) != want {
            differ.push(format!(
                "{scene} {actor} {sql}: real {want}, twin {}",
                decision(&got)
            ));
        }
        if want == "passes" {
            passed += 1;
        } else {
            refused += 1;
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
    assert!(
        passed >= 10 && refused >= 30,
        "{passed} passed, {refused} refused"
    );
}

fn sp_has(scene: &str) -> bool {
    static SPACE: OnceLock<Arc<Space>> = OnceLock::new();
    SPACE.get_or_init(space).scenes.contains_key(scene)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_value_of_the_real_data_is_in_any_twin_file() {
    let sp = space();
    let (dir, _, _node) = twin_of("diabetes-2027", None).await;
    let mut files = Vec::new();
    for sub in ["source", "twin/data"] {
        for e in std::fs::read_dir(dir.path().join(sub)).unwrap() {
            files.push(e.unwrap().path());
        }
    }
    let mut checked = 0;
    for ds in sp.scenes["diabetes-2027"]
        .datasets
        .iter()
        .map(|d| &sp.datasets[d])
    {
        let raw = ds.source_for(&sp.dir, "h1");
        let types = schema_of(&raw);
        for c in ds.columns.values() {
            // Identifiers always; sensitive values unless they are small
            // integers of a public range, where every value is a possible
            // one (length of stay in 0..=90).
            let check = c.kind == ColumnKind::Identifier
                || (c.kind == ColumnKind::Sensitive && types[&c.name] != "integer");
            if !check {
                continue;
            }
            let real = values(&raw, &c.name);
            assert!(!real.is_empty(), "{}.{}", ds.name, c.name);
            for f in &files {
                let twin = values(f, &c.name);
                let shared: Vec<_> = twin.intersection(&real).take(3).collect();
                assert!(
                    shared.is_empty(),
                    "{}.{} in {}: {shared:?}",
                    ds.name,
                    c.name,
                    f.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 8, "{checked}");
    // Integer identifiers are unique and outside any real range.
    let ids = values(
        &dir.path().join("source/admissions.parquet"),
        "admission_id",
    );
    assert_eq!(ids.len(), 1000);
    assert!(
        ids.iter()
            .all(|v| v.parse::<i64>().is_ok_and(|n| n >= 9_000_000_000))
    );
    // Nor any other text of the real files: every byte sequence of a real
    // person key is absent from the twin's files.
    let real_keys = values(
        &sp.datasets["patients"].source_for(&sp.dir, "h1"),
        "id_card",
    );
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        for k in real_keys.iter().take(200) {
            assert!(
                !bytes.windows(k.len()).any(|w| w == k.as_bytes()),
                "a real ID number in {}",
                f.display()
            );
        }
    }
}

const AIMED: &str = "SELECT a.department, count(*) AS n, avg(a.cost) AS c FROM admissions a JOIN patients p ON p.id_card = a.id_card WHERE a.diagnosis LIKE 'E11%' AND p.age >= 40 AND p.age < 60 AND a.admit_date >= DATE '2024-01-01' AND p.sex = 'F' GROUP BY a.department";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twin_aimed_at_a_query_answers_it_with_rows() {
    // Without aiming, no synthetic diagnosis starts with E11.
    let (_d, m, plain) = twin_of("diabetes-2027", None).await;
    assert!(m.aimed_at.is_empty());
    let o = support::ask(&plain, "diabetes-2027", "alice", AIMED).await;
    assert_eq!(o.status, Status::Released);
    assert!(o.rows.is_empty(), "{:?}", o.rows);

    let (_d, m, aimed) = twin_of("diabetes-2027", Some(AIMED)).await;
    assert_eq!(m.aimed_at.len(), 5, "{:?}", m.aimed_at);
    let o = support::ask(&aimed, "diabetes-2027", "alice", AIMED).await;
    assert_eq!(o.status, Status::Released);
    assert!(o.rows.len() >= 5, "{:?}", o.rows);
    assert!(o.explanation[0].starts_with("mock twin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twin_charges_nothing_audits_nothing_and_takes_the_researchers_module() {
    let (dir, _, node) = twin_of("diabetes-dp", None).await;
    // ε 1 at 0.1 a query would stop the eleventh query on a real node.
    for _ in 0..15 {
        let o = support::ask(
            &node,
            "diabetes-dp",
            "erin",
            "SELECT sex, count(*) AS n FROM patients GROUP BY sex",
        )
        .await;
        assert_eq!(o.status, Status::Released, "{:?}", o.rule);
        let dp = o.dp.as_ref().unwrap();
        assert_eq!(dp.epsilon_charged, 0.0);
        assert_eq!(dp.epsilon_remaining, dp.epsilon_total);
    }
    let origin = format!("kexin/{}/{}", space().name, twin::NODE);
    let log = kexin_engine::store::Store::open(&dir.path().join(twin::NODE), &origin)
        .unwrap()
        .entries()
        .unwrap();
    assert!(log.iter().all(|e| e.kind == "dataset-load"), "{log:?}");

    // A module the researcher wrote runs under the scene on the twin; a
    // real node takes modules only from a data holder's signed approval.
    let (_d, _, node) = twin_of("diabetes-2027", None).await;
    node.twin_udf("diabetes-2027", &crate::fixtures::doubler())
        .unwrap();
    let o = support::ask(
        &node,
        "diabetes-2027",
        "alice",
        "SELECT sex, sum(evil(height_cm)) AS h FROM patients GROUP BY sex",
    )
    .await;
    assert_eq!(o.status, Status::Released, "{:?}", o.rule);
    assert_eq!(o.rows.len(), 2);
    let real = support::open_h1(space_dir()).await;
    assert!(!real.is_twin());
    assert!(
        real.twin_udf("diabetes-2027", &crate::fixtures::doubler())
            .is_err()
    );
    // A query does not reach a twin through the trusting entry point by
    // accident: the outcome says mock.
    let o = node
        .query(&QueryRequest::new(
            "diabetes-2027",
            "alice",
            "SELECT count(*) AS n FROM labs",
        ))
        .await;
    assert!(o.mock);
}

const BIN: &str = env!("CARGO_BIN_EXE_kexin");

#[test]
fn the_command_line_makes_a_twin_and_queries_it() {
    let d = support::nodes::path(space_dir());
    let out = tempfile::tempdir().unwrap();
    let twin_dir = out.path().join("t");
    let t = support::nodes::path(&twin_dir);
    let run = |args: &[&str]| {
        let o = std::process::Command::new(BIN).args(args).output().unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    let (rc, text) = run(&[
        "twin",
        "--space",
        d,
        "--scene",
        "diabetes-2027",
        "--out",
        t,
        "--rows",
        "500",
        "--sql",
        AIMED,
        "--format",
        "json",
    ]);
    assert_eq!(rc, 0, "{text}");
    let m: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(m["mock"], true);
    assert_eq!(m["datasets"]["admissions"]["rows"], 500);
    // A second twin into the same folder needs --force.
    let (rc, text) = run(&["twin", "--space", d, "--scene", "diabetes-2027", "--out", t]);
    assert_ne!(rc, 0, "{text}");
    assert!(text.contains("--force"), "{text}");

    let (rc, text) = run(&[
        "query",
        "--space",
        d,
        "--twin",
        t,
        "--scene",
        "diabetes-2027",
        "--as",
        "alice",
        "--format",
        "json",
        AIMED,
    ]);
    assert_eq!(rc, 0, "{text}");
    let o: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(o["mock"], true);
    assert_eq!(o["audit_seq"], Value::Null);
    assert!(!o["rows"].as_array().unwrap().is_empty(), "{text}");
    // The same refusal code and exit status as on a real node.
    let (rc, text) = run(&[
        "query",
        "--space",
        d,
        "--twin",
        t,
        "--scene",
        "diabetes-2027",
        "--as",
        "alice",
        "SELECT * FROM patients",
    ]);
    assert_eq!(rc, 2, "{text}");
    assert!(
        text.contains("MOCK TWIN") && text.contains("KX-SHAPE-NO-AGGREGATE"),
        "{text}"
    );
    // A twin is of one scene.
    let (rc, text) = run(&[
        "query",
        "--space",
        d,
        "--twin",
        t,
        "--scene",
        "diabetes-dp",
        "--as",
        "erin",
        "SELECT count(*) FROM labs",
    ]);
    assert_ne!(rc, 0);
    assert!(text.contains("is of scene diabetes-2027"), "{text}");
}
