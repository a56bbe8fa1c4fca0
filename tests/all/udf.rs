//! WebAssembly UDFs end to end: the example modules from `udfs/` (built by
//! `udfs/build.sh`) approved for a scene and called from SQL, compared with
//! independent references; hostile modules failing closed while the node
//! keeps serving; approval, tampering and audit.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    reason = "tests fail loudly and build reference contexts with plain DataFusion"
)]

use crate::fixtures;

use crate::support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Float64Type, Int32Type};
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use kexin_engine::gate::Cell;
use kexin_engine::node::{Node, Outcome, Status};
use kexin_engine::policy::Space;

/// The scene used for hostile modules: tight limits so loops end fast.
const LAB_SCENE: &str = r#"
[scene.udf-lab]
contract  = "none"    # in-house test scene: no data-use contract
purpose   = "DUO:0000006"
requester = "org:whu-med"
datasets  = ["patients", "admissions", "labs"]
valid     = ["2026-01-01", "2030-12-31"]
output    = { min_persons = 10, round_to = 5, decimals = 2, dominance = [2, 0.9] }
udf_limits = { fuel_per_call = 2000000, fuel_per_row = 2000, call_timeout_ms = 2000, memory_mb = 16 }
"#;

fn wasm(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("udfs/target/wasm")
        .join(format!("{name}.wasm"));
    std::fs::read(&p).unwrap_or_else(|_| {
        panic!(
            "{} is missing: build the example UDFs first with `bash udfs/build.sh`",
            p.display()
        )
    })
}

fn space_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = support::generated_space(1, 4000, 11);
        let toml = dir.join("space.toml");
        let mut text = std::fs::read_to_string(&toml).unwrap();
        text.push_str(LAB_SCENE);
        std::fs::write(&toml, text).unwrap();
        dir
    })
}

/// The node with every example module approved for diabetes-2027 (once).
async fn node() -> Node {
    static REGISTERED: OnceLock<()> = OnceLock::new();
    let node = support::open_h1(space_dir()).await;
    REGISTERED.get_or_init(|| {
        for m in ["bmi", "egfr", "eag", "age_band", "charlson", "geomean"] {
            support::approve(&node, "diabetes-2027", &wasm(m), "carol")
                .unwrap_or_else(|e| panic!("registering {m}: {e}"));
        }
    });
    node
}

async fn ask(node: &Node, scene: &str, sql: &str) -> Outcome {
    support::ask(node, scene, "alice", sql).await
}

fn released(o: &Outcome) -> BTreeMap<String, f64> {
    assert_eq!(o.status, Status::Released, "{o:?}");
    o.rows
        .iter()
        .map(|r| {
            let key = match &r[0] {
                Cell::Text(s) => s.clone(),
                Cell::Int(i) => i.to_string(),
                other => format!("{other:?}"),
            };
            let v = match r.last().unwrap() {
                Cell::Int(i) => *i as f64,
                Cell::Float(f) => *f,
                other => panic!("not numeric: {other:?}"),
            };
            (key, v)
        })
        .collect()
}

/// Alice's query under diabetes-2027, which must be released, as a map.
async fn alice_released(n: &Node, sql: &str) -> BTreeMap<String, f64> {
    released(&ask(n, "diabetes-2027", sql).await)
}

fn assert_close(got: &BTreeMap<String, f64>, want: &BTreeMap<String, f64>, tol: f64) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (k, g) in got {
        let w = want[k];
        assert!((g - w).abs() <= tol, "{k}: wasm {g} vs reference {w}");
    }
}

// ------------------------------------------------- real UDFs vs references

/// `sql` in plain DataFusion over h1's raw files (`labs`, `patients`,
/// `admissions`, unmasked): the independent reference.
async fn raw(sql: &str) -> Vec<RecordBatch> {
    let ctx = SessionContext::new();
    for t in ["labs", "patients", "admissions"] {
        ctx.register_parquet(
            t,
            space_dir()
                .join(format!("h1/{t}.parquet"))
                .to_str()
                .unwrap(),
            ParquetReadOptions::default(),
        )
        .await
        .unwrap();
    }
    ctx.sql(sql).await.unwrap().collect().await.unwrap()
}

/// `SELECT key, value …` in plain DataFusion over h1's raw files: the
/// independent reference (an SQL formula of a UDF is no longer a linear
/// aggregate argument kexin would accept outside DP).
async fn plain(sql: &str) -> BTreeMap<String, f64> {
    let batches = raw(sql).await;
    let mut out = BTreeMap::new();
    for b in &batches {
        let k = datafusion::arrow::compute::cast(
            b.column(0),
            &datafusion::arrow::datatypes::DataType::Utf8,
        )
        .unwrap();
        let v = datafusion::arrow::compute::cast(
            b.column(1),
            &datafusion::arrow::datatypes::DataType::Float64,
        )
        .unwrap();
        for r in 0..b.num_rows() {
            out.insert(
                k.as_string::<i32>().value(r).to_string(),
                v.as_primitive::<Float64Type>().value(r),
            );
        }
    }
    out
}

#[tokio::test]
async fn bmi_matches_the_formula_in_sql() {
    let n = node().await;
    let w = alice_released(
        &n,
        "SELECT sex, AVG(bmi(weight_kg, height_cm)) FROM patients GROUP BY sex",
    )
    .await;
    let s = plain(
        "SELECT sex, AVG(weight_kg / ((height_cm / 100.0) * (height_cm / 100.0))) FROM patients GROUP BY sex",
    )
    .await;
    assert_eq!(w.len(), 2);
    assert!(w.values().all(|b| (15.0..35.0).contains(b)), "{w:?}");
    assert_close(&w, &s, 0.0101);
}

#[tokio::test]
async fn hba1c_to_eag_matches_the_adag_regression() {
    let n = node().await;
    let filter = "FROM labs WHERE test = 'hba1c' AND value BETWEEN 3 AND 20";
    let w = alice_released(
        &n,
        &format!("SELECT unit, AVG(hba1c_to_eag(value)) {filter} GROUP BY unit"),
    )
    .await;
    let s = plain(&format!(
        "SELECT unit, AVG(28.7 * value - 46.7) {filter} GROUP BY unit"
    ))
    .await;
    assert_close(&w, &s, 0.0101);
}

#[tokio::test]
async fn age_band_groups_like_the_same_bands_written_in_sql() {
    let n = node().await;
    let w = alice_released(
        &n,
        "SELECT age_band(birth_date, DATE '2026-01-01') AS band, COUNT(*) \
         FROM patients GROUP BY band",
    )
    .await;
    // birth_date is masked to January 1st of the birth year, so the age on
    // 2026-01-01 is 2026 minus the year.
    let s = alice_released(
        &n,
        "SELECT CASE WHEN 2026 - date_part('year', birth_date) < 18 THEN '0-17' \
                         WHEN 2026 - date_part('year', birth_date) < 45 THEN '18-44' \
                         WHEN 2026 - date_part('year', birth_date) < 65 THEN '45-64' \
                         WHEN 2026 - date_part('year', birth_date) < 75 THEN '65-74' \
                         ELSE '75+' END AS band, COUNT(*) FROM patients GROUP BY band",
    )
    .await;
    assert!(w.len() >= 4, "{w:?}");
    assert_close(&w, &s, 0.0);
}

#[tokio::test]
async fn charlson_weights_group_like_the_quan_categories() {
    let n = node().await;
    let w = alice_released(
        &n,
        "SELECT charlson_weight(diagnosis) AS w, COUNT(*) FROM admissions GROUP BY w",
    )
    .await;
    // The generator's codes, masked to three characters, by Quan 2005.
    let s = alice_released(
        &n,
        "SELECT CASE WHEN diagnosis IN ('C34', 'C16', 'N18') THEN 2 \
                         WHEN diagnosis IN ('I21', 'I63', 'I50', 'J44', 'E11') THEN 1 \
                         ELSE 0 END AS w, COUNT(*) FROM admissions GROUP BY w",
    )
    .await;
    assert_eq!(w.keys().collect::<Vec<_>>(), ["0", "1", "2"]);
    assert_close(&w, &s, 0.0);
}

#[tokio::test]
async fn geomean_aggregate_matches_exp_of_mean_log() {
    let n = node().await;
    let w = alice_released(
        &n,
        "SELECT department, geomean(cost) FROM admissions GROUP BY department",
    )
    .await;
    // Costs clamped to the column's bounds as kexin's scan does; ln only of
    // positive values (kexin's ln is NULL elsewhere).
    let s = plain(
        "SELECT department, exp(AVG(ln(CASE WHEN least(cost, 200000) > 0 THEN least(cost, 200000) END))) \
         FROM admissions GROUP BY department",
    )
    .await;
    assert!(w.len() >= 5, "{w:?}");
    for (k, g) in &w {
        let want = s[k];
        assert!(
            (g - want).abs() <= 1e-6 * want + 0.0101,
            "{k}: {g} vs {want}"
        );
    }
}

/// The CKD-EPI 2021 equation written independently with std's `powf`.
fn egfr_reference(creatinine_umol: f64, age: i32, female: bool) -> Option<f64> {
    if !(10.0..=3000.0).contains(&creatinine_umol) || !(18..=120).contains(&age) {
        return None;
    }
    let scr = creatinine_umol / 88.42;
    let (k, a) = if female { (0.7, -0.241) } else { (0.9, -0.302) };
    Some(
        142.0
            * (scr / k).min(1.0).powf(a)
            * (scr / k).max(1.0).powf(-1.2)
            * 0.9938f64.powf(f64::from(age))
            * if female { 1.012 } else { 1.0 },
    )
}

#[tokio::test]
async fn egfr_matches_a_native_reference_on_the_same_masked_inputs() {
    let n = node().await;
    let w = alice_released(
        &n,
        "SELECT p.sex, AVG(egfr_ckd_epi_2021(l.value, p.age, p.sex)) \
             FROM labs l JOIN patients p ON l.id_card = p.id_card \
             WHERE l.test = 'creatinine' GROUP BY p.sex",
    )
    .await;
    // Reference: the raw Parquet files with the scene's masks applied by hand
    // (age → band(10) lower bound; lab value clamped to [0, 1000]).
    let batches = raw(
        "SELECT CAST(p.sex AS VARCHAR) AS sex, p.age, l.value FROM labs l \
         JOIN patients p ON l.id_card = p.id_card WHERE l.test = 'creatinine'",
    )
    .await;
    let mut sums: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for b in &batches {
        let sex = datafusion::arrow::compute::cast(
            b.column(0),
            &datafusion::arrow::datatypes::DataType::Utf8,
        )
        .unwrap();
        let sex = sex.as_string::<i32>();
        let age = b.column(1).as_primitive::<Int32Type>();
        let val = b.column(2).as_primitive::<Float64Type>();
        for i in 0..b.num_rows() {
            let masked_age = age.value(i).div_euclid(10) * 10;
            let v = val.value(i).clamp(0.0, 1000.0);
            if let Some(e) = egfr_reference(v, masked_age, sex.value(i) == "F") {
                let s = sums.entry(sex.value(i).to_string()).or_default();
                s.0 += e;
                s.1 += 1.0;
            }
        }
    }
    let want: BTreeMap<String, f64> = sums.into_iter().map(|(k, (s, c))| (k, s / c)).collect();
    assert_close(&w, &want, 0.0101);
}

// ----------------------------------------------------------- policy rules

#[tokio::test]
async fn udf_rules_fail_closed() {
    let n = node().await;
    for (sql, code) in [
        // No finite domain: cannot be a group key.
        (
            "SELECT bmi(weight_kg, height_cm) AS b, COUNT(*) FROM patients GROUP BY b",
            "KX-UDF-DOMAIN",
        ),
        // ... not even through a subquery.
        (
            "SELECT b, COUNT(*) FROM (SELECT bmi(weight_kg, height_cm) AS b FROM patients) t GROUP BY b",
            "KX-UDF-DOMAIN",
        ),
        (
            "SELECT AVG(bmi('a', 'b')) FROM patients",
            "KX-UDF-SIGNATURE",
        ),
        (
            "SELECT AVG(bmi(weight_kg)) FROM patients",
            "KX-UDF-SIGNATURE",
        ),
        // Identifiers stay identifiers inside a UDF.
        (
            "SELECT charlson_weight(id_card) AS w, COUNT(*) FROM patients GROUP BY w",
            "KX-DISC-IDENTIFIER",
        ),
        // A UDF result is still a row value: no releasing it unaggregated.
        (
            "SELECT bmi(weight_kg, height_cm) FROM patients",
            "KX-SHAPE-NO-AGGREGATE",
        ),
    ] {
        let o = ask(&n, "diabetes-2027", sql).await;
        assert_eq!(o.status, Status::Refused, "{sql}");
        assert_eq!(o.code.map(|c| c.as_str()), Some(code), "{sql}");
    }
    // A module approved for one scene does not exist in another.
    let o = ask(
        &n,
        "udf-lab",
        "SELECT AVG(bmi(weight_kg, height_cm)) FROM patients",
    )
    .await;
    assert_eq!(o.code.map(|c| c.as_str()), Some("KX-SQL-UNKNOWN"));
}

#[tokio::test]
async fn wasm_aggregate_cells_pass_the_gate() {
    let n = node().await;
    // Region prefixes have a few small groups: they are suppressed for a
    // wasm aggregate exactly as for a built-in one.
    let sql = |agg: &str| {
        format!(
            "SELECT region, {agg} FROM admissions a JOIN patients p ON a.id_card = p.id_card \
             WHERE a.diagnosis = 'C16' GROUP BY region"
        )
    };
    let w = ask(&n, "diabetes-2027", &sql("geomean(cost)")).await;
    let b = ask(&n, "diabetes-2027", &sql("AVG(cost)")).await;
    assert_eq!(w.status, Status::Released);
    assert_eq!(w.suppressed_groups, b.suppressed_groups);
    assert!(!w.rows.is_empty(), "{w:?}");
    // Some region of the data is withheld for both (a cell under the
    // threshold): fewer cells than the regions that have C16 stays at all.
    let all = ask(
        &n,
        "diabetes-2027",
        "SELECT region, count(*) FROM patients GROUP BY region",
    )
    .await;
    assert!(w.rows.len() < all.rows.len(), "{w:?}");
    assert_eq!(
        released(&w).keys().collect::<Vec<_>>(),
        released(&b).keys().collect::<Vec<_>>()
    );
}

// ------------------------------------------------------- hostile modules

#[tokio::test]
async fn hostile_modules_fail_closed_and_the_node_keeps_serving() {
    let space = Arc::new(Space::load(space_dir()).expect("space loads"));
    let n = Node::open(space, "h1").await.unwrap();
    let healthy = "SELECT sex, COUNT(*) FROM patients GROUP BY sex";
    let expected = [
        ("infinite_loop", "KX-UDF-FUEL"),
        ("memory_bomb", "KX-UDF-MEMORY"),
        ("unbounded_recursion", "KX-UDF-STACK"),
        ("output_length_lie", "KX-UDF-OUTPUT"),
        // Claims 8 bytes of output whatever the batch: invalid for a batch,
        // valid for the single rows the host then isolates, so each row
        // gets the module's (constant) answer.
        ("output_short", ""),
        ("unreachable", "KX-UDF-TRAP"),
        ("divide_by_zero", "KX-UDF-TRAP"),
        ("table_bomb", "KX-UDF-MEMORY"),
        ("guest_error_status", "KX-UDF-TRAP"),
    ];
    // Every hostile module declares `evil`, so each runs in its own space
    // copy of the scene: register, call, check, then remove the approval by
    // using a fresh scene name.
    for ((name, bytes), (want_name, code)) in fixtures::hostile().into_iter().zip(expected) {
        assert_eq!(name, want_name);
        let dir = tempfile::tempdir().unwrap();
        let scene_space = copy_space(dir.path());
        let sp = Arc::new(Space::load(&scene_space).unwrap());
        let node = Node::open(sp, "h1").await.unwrap();
        support::approve(&node, "udf-lab", &bytes, "carol")
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let o = ask(
            &node,
            "udf-lab",
            "SELECT sex, SUM(evil(weight_kg)) FROM patients GROUP BY sex",
        )
        .await;
        assert_eq!(o.status, Status::Released, "{name}: {o:?}");
        assert_eq!(o.code, None, "{name}");
        if code.is_empty() {
            assert_eq!(o.rows.len(), 2, "{name}: {o:?}");
            let ok = ask(&node, "udf-lab", healthy).await;
            assert_eq!(ok.status, Status::Released, "{name}: {ok:?}");
            continue;
        }
        // Every row faults, far past what isolating rows tolerates: the
        // module is broken. The researcher sees what a query whose every
        // cell was withheld shows, and the fault's code is audited.
        assert!(o.rows.is_empty(), "{name}: {o:?}");
        assert_eq!(
            o.suppressed_groups, 2,
            "{name}: sex has a public domain of two"
        );
        let store = kexin_engine::store::Store::open(&scene_space.join("h1"), "x").unwrap();
        let entry = store
            .entries()
            .unwrap()
            .into_iter()
            .find(|e| Some(e.seq) == o.audit_seq)
            .unwrap();
        assert_eq!(entry.decision, "released", "{name}");
        assert_eq!(entry.code.as_deref(), Some(code), "{name}");
        // The same node answers the next query.
        let ok = ask(&node, "udf-lab", healthy).await;
        assert_eq!(ok.status, Status::Released, "{name}: {ok:?}");
    }
    assert_eq!(
        ask(&n, "diabetes-2027", healthy).await.status,
        Status::Released
    );
}

/// A module that fails on one person's value only: that row counts as NULL
/// and the query is answered as usual, the same (keys, counts, status,
/// audited code) as in a world where no one has the value. Before, the
/// fault withheld the whole query in one world only.
#[tokio::test]
async fn a_fault_on_one_persons_value_nulls_that_row_only() {
    let batches = raw("SELECT CAST(weight_kg AS DOUBLE) AS w FROM patients WHERE weight_kg BETWEEN 2 AND 250 GROUP BY weight_kg HAVING count(*) = 1 ORDER BY w LIMIT 1").await;
    let unique = batches[0].column(0).as_primitive::<Float64Type>().value(0);
    let sql = "SELECT sex, COUNT(*) AS n, SUM(evil(weight_kg)) AS s FROM patients GROUP BY sex";
    let mut seen = Vec::new();
    for value in [unique, -1.0] {
        let dir = tempfile::tempdir().unwrap();
        let scene_space = copy_space(dir.path());
        let node = Node::open(Arc::new(Space::load(&scene_space).unwrap()), "h1")
            .await
            .unwrap();
        support::approve(
            &node,
            "udf-lab",
            &fixtures::doubler_trapping_on(value),
            "carol",
        )
        .unwrap();
        let o = ask(&node, "udf-lab", sql).await;
        assert_eq!(o.status, Status::Released, "{value}: {o:?}");
        assert_eq!(o.code, None);
        assert_eq!(o.rows.len(), 2, "{value}: both cells released");
        let entry = kexin_engine::store::Store::open(&scene_space.join("h1"), "x")
            .unwrap()
            .entries()
            .unwrap()
            .into_iter()
            .find(|e| Some(e.seq) == o.audit_seq)
            .unwrap();
        assert_eq!(entry.code, None, "{value}: nothing withheld");
        let keys_and_counts: Vec<(Cell, Cell)> = o
            .rows
            .iter()
            .map(|r| (r[0].clone(), r[1].clone()))
            .collect();
        seen.push((keys_and_counts, o.explanation.clone(), o.suppressed_groups));
    }
    assert_eq!(seen[0], seen[1]);
}

/// A copy of the generated space (policy and h1's data, fresh state).
fn copy_space(to: &Path) -> PathBuf {
    let from = space_dir();
    std::fs::create_dir_all(to.join("h1")).unwrap();
    std::fs::copy(from.join("space.toml"), to.join("space.toml")).unwrap();
    for t in ["patients", "admissions", "labs"] {
        let f = format!("h1/{t}.parquet");
        std::fs::copy(from.join(&f), to.join(&f)).unwrap();
    }
    copy_members(from, to);
    to.to_path_buf()
}

/// The members' keys and the registry that certifies them (approvals are
/// signed), from one space folder to another.
fn copy_members(from: &Path, to: &Path) {
    for sub in ["keys", "registry"] {
        std::fs::create_dir_all(to.join(sub)).unwrap();
        for e in std::fs::read_dir(from.join(sub)).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                std::fs::copy(e.path(), to.join(sub).join(e.file_name())).unwrap();
            }
        }
    }
}

#[tokio::test]
async fn modules_refused_at_registration() {
    let dir = tempfile::tempdir().unwrap();
    let sp = Arc::new(Space::load(&copy_space(dir.path())).unwrap());
    let node = Node::open(sp, "h1").await.unwrap();
    let expected = [
        ("wasi_import", "KX-UDF-IMPORT"),
        ("wrong_signature", "KX-UDF-SIGNATURE"),
        ("malformed", "KX-UDF-MODULE"),
        ("oversized", "KX-UDF-MODULE"),
        ("no_manifest", "KX-UDF-MANIFEST"),
    ];
    for ((name, bytes), (want_name, code)) in fixtures::refused_at_load().into_iter().zip(expected)
    {
        assert_eq!(name, want_name);
        match support::approve(&node, "udf-lab", &bytes, "carol") {
            Err(kexin_engine::Error::Refused(r)) => assert_eq!(r.code.as_str(), code, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    // The node keeps serving.
    let ok = ask(
        &node,
        "udf-lab",
        "SELECT sex, COUNT(*) FROM patients GROUP BY sex",
    )
    .await;
    assert_eq!(ok.status, Status::Released, "{ok:?}");
    // Nothing was approved, nothing stored.
    assert!(node.list_udfs(Some("udf-lab")).unwrap().is_empty());
    assert!(
        !dir.path().join("udfs").exists()
            || std::fs::read_dir(dir.path().join("udfs")).unwrap().count() == 0
    );
}

#[tokio::test]
async fn altered_module_is_refused_and_approval_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let sp = Arc::new(Space::load(&copy_space(dir.path())).unwrap());
    let node = Node::open(sp, "h1").await.unwrap();
    let bytes = wasm("bmi");
    // A researcher cannot approve code for their own queries (a data
    // holder of another node cannot either: tests/all/node_service.rs).
    let e = support::approve(&node, "udf-lab", &bytes, "alice").unwrap_err();
    assert_eq!(e.as_refusal().code, kexin_engine::Code::Auth, "{e}");
    // An approval signed for other bytes does not approve these.
    let carol = kexin::members::load_key(dir.path(), "carol", None).unwrap();
    let other = kexin::members::udf_approval(
        node.space(),
        "h1",
        "carol",
        &carol,
        "udf-lab",
        &wasm("egfr"),
    )
    .unwrap();
    assert!(node.approve_udf(&other, &bytes).is_err());
    let r = support::approve(&node, "udf-lab", &bytes, "carol").unwrap();
    assert!(r.newly_approved);
    assert_eq!(r.digest, kexin_sandbox::module_digest(&bytes));
    // Registering again is idempotent.
    assert!(
        !support::approve(&node, "udf-lab", &bytes, "carol")
            .unwrap()
            .newly_approved
    );
    let q = "SELECT sex, AVG(bmi(weight_kg, height_cm)) FROM patients GROUP BY sex";
    let ok = ask(&node, "udf-lab", q).await;
    assert_eq!(ok.status, Status::Released, "{ok:?}");

    // Swap the stored bytes for another module's: refused, never run.
    let path = kexin_engine::udf::module_path(dir.path(), &r.digest).unwrap();
    std::fs::write(&path, wasm("eag")).unwrap();
    let o = ask(&node, "udf-lab", q).await;
    assert_eq!(o.code.map(|c| c.as_str()), Some("KX-UDF-UNAPPROVED"));
    std::fs::remove_file(&path).unwrap();
    let o = ask(&node, "udf-lab", q).await;
    assert_eq!(o.code.map(|c| c.as_str()), Some("KX-UDF-UNAPPROVED"));
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(ask(&node, "udf-lab", q).await.status, Status::Released);

    // The audit log names the registration and every query's module.
    let store = kexin_engine::store::Store::open(&dir.path().join("h1"), "x").unwrap();
    let entries = store.entries().unwrap();
    let reg: Vec<_> = entries
        .iter()
        .filter(|e| e.kind == "udf-register" && e.decision == "approved")
        .collect();
    assert_eq!(reg.len(), 1);
    // alice's approval and carol's for other bytes were refused, and
    // audited as such.
    let refused = entries
        .iter()
        .filter(|e| e.kind == "udf-register" && e.decision == "refused")
        .count();
    assert_eq!(refused, 2);
    assert_eq!(reg[0].udfs, vec![r.digest.clone()]);
    assert_eq!(reg[0].actor, "carol");
    let queries: Vec<_> = entries.iter().filter(|e| e.kind == "query").collect();
    assert_eq!(queries.len(), 4);
    // The refused ones failed before planning, so only the released queries
    // know which module they called.
    assert_eq!(queries[0].udfs, vec![r.digest.clone()]);
    assert_eq!(queries[3].udfs, vec![r.digest.clone()]);
    assert!(kexin_engine::store::verify(&dir.path().join("h1"), None).is_ok());
}

#[tokio::test]
async fn udfs_see_only_masked_values() {
    // `evil` from the fixtures doubles its input. Summed over `age` (masked
    // to band(10) at the scan), it must equal twice the sum of the *banded*
    // ages computed from the raw file, not twice the raw ages.
    let dir = tempfile::tempdir().unwrap();
    let sp = Arc::new(Space::load(&copy_space(dir.path())).unwrap());
    let node = Node::open(sp, "h1").await.unwrap();
    support::approve(&node, "udf-lab", &fixtures::doubler(), "carol").unwrap();
    let got = released(
        &ask(
            &node,
            "udf-lab",
            "SELECT sex, SUM(evil(age)) FROM patients GROUP BY sex",
        )
        .await,
    );
    let batches = raw("SELECT CAST(sex AS VARCHAR), age FROM patients").await;
    let (mut banded, mut raw): (BTreeMap<String, f64>, BTreeMap<String, f64>) = Default::default();
    for b in &batches {
        let sex = datafusion::arrow::compute::cast(
            b.column(0),
            &datafusion::arrow::datatypes::DataType::Utf8,
        )
        .unwrap();
        let sex = sex.as_string::<i32>();
        let age = b.column(1).as_primitive::<Int32Type>();
        for i in 0..b.num_rows() {
            let a = age.value(i).clamp(0, 100);
            *banded.entry(sex.value(i).to_string()).or_default() += f64::from(2 * (a / 10 * 10));
            *raw.entry(sex.value(i).to_string()).or_default() += f64::from(2 * a);
        }
    }
    assert_close(&got, &banded, 0.0);
    assert!(
        got.iter().all(|(k, v)| (v - raw[k]).abs() > 100.0),
        "{got:?} vs raw {raw:?}"
    );
}

/// A federated scene with UDFs, for the test below.
const JOINT_LAB_SCENE: &str = r#"
[scene.joint-udf-lab]
contract  = "none"
purpose   = "DUO:0000006"
requester = "org:whu-med"
datasets  = ["patients"]
valid     = ["2026-01-01", "2030-12-31"]
federated = true
output    = { min_persons = 10, round_to = 1, decimals = 2 }
udf_limits = { fuel_per_call = 2000000, fuel_per_row = 2000, call_timeout_ms = 2000, memory_mb = 16 }
"#;

/// Two worlds of a federated query: in one, h2's execution fails in a way
/// that can depend on its data (here a module faulting on every row). h2
/// must still take part, with a plan every node agrees on, and the joint
/// result is what a round whose every cell missed the threshold releases:
/// same status, no code, every cell of the public domain suppressed. Before,
/// h2 refused and the researcher saw KX-FED-ABORT in that world only. The
/// cause is in h2's audit entry. The opened sums are formed here as the
/// protocol opens them (the shares of every node's vector add up to the
/// sum of the vectors).
#[tokio::test]
async fn a_node_whose_execution_fails_takes_part_with_every_cell_suppressed() {
    use kexin_engine::federated::{JointDecision, JointPartial};
    use kexin_engine::node::QueryRequest;
    let dir = support::generated_space(3, 300, 13);
    let toml = dir.join("space.toml");
    let mut text = std::fs::read_to_string(&toml).unwrap();
    text.push_str(JOINT_LAB_SCENE);
    std::fs::write(&toml, text).unwrap();
    let nodes: Vec<String> = ["h1", "h2", "h3"].map(String::from).to_vec();
    let req = QueryRequest::new(
        "joint-udf-lab",
        "alice",
        "SELECT sex, COUNT(evil(weight_kg)) AS n FROM patients GROUP BY sex",
    );
    let unreachable = fixtures::hostile()
        .into_iter()
        .find(|(n, _)| *n == "unreachable")
        .unwrap()
        .1;
    let mut worlds = Vec::new();
    for h2_module in [fixtures::doubler(), unreachable] {
        let world = tempfile::tempdir().unwrap().keep();
        std::fs::copy(&toml, world.join("space.toml")).unwrap();
        for n in &nodes {
            std::fs::create_dir_all(world.join(n)).unwrap();
            for t in ["patients", "admissions", "labs"] {
                let f = format!("{n}/{t}.parquet");
                std::fs::copy(dir.join(&f), world.join(&f)).unwrap();
            }
        }
        copy_members(&dir, &world);
        let space = Arc::new(Space::load(&world).unwrap());
        let mut partials: Vec<JointPartial> = Vec::new();
        let mut traces = Vec::new();
        let mut opened_nodes = Vec::new();
        for n in &nodes {
            let node = Node::open(Arc::clone(&space), n).await.unwrap();
            let module = if n == "h2" {
                h2_module.clone()
            } else {
                fixtures::doubler()
            };
            support::approve(&node, "joint-udf-lab", &module, "operator").unwrap();
            let (p, t) = node.joint_partial(&req, &nodes).await;
            partials.push(p.unwrap_or_else(|e| panic!("{n} takes part: {e}")));
            traces.push(t);
            opened_nodes.push(node);
        }
        let plan = &partials[0].plan;
        assert!(partials.iter().all(|p| p.plan.digest == plan.digest));
        let sum: Vec<i128> = (0..plan.len())
            .map(|i| partials.iter().map(|p| p.input[i]).sum())
            .collect();
        let persons: Vec<i128> = plan.person_positions().iter().map(|&i| sum[i]).collect();
        let passing = plan.passing(&persons);
        let values: Vec<i128> = plan
            .value_positions(&passing)
            .iter()
            .map(|&i| sum[i])
            .collect();
        let rows = plan.release(&passing, &values, 3).unwrap();
        let seq = opened_nodes[1]
            .audit_joint(
                &req,
                kexin_engine::audit::Kind::Federated,
                &[7; 32],
                &traces[1],
                JointDecision::Released(&rows),
            )
            .unwrap();
        let entry = kexin_engine::store::Store::open(&world.join("h2"), "x")
            .unwrap()
            .entries()
            .unwrap()
            .into_iter()
            .find(|e| e.seq == seq)
            .unwrap();
        worlds.push((partials[1].withheld, plan.digest.clone(), rows, entry.code));
    }
    let (ok, failed) = (&worlds[0], &worlds[1]);
    assert!(!ok.0 && failed.0, "only the faulting world withholds h2");
    assert_eq!(ok.1, failed.1, "the plans agree in both worlds");
    assert_eq!(ok.2.rows.len(), 2, "both sexes pass: {:?}", ok.2);
    assert_eq!(ok.3, None);
    // The faulting world: a release in which every cell was suppressed.
    let r = &failed.2;
    assert!(r.rows.is_empty(), "{r:?}");
    assert_eq!(r.suppressed_groups, 2, "sex has a public domain of two");
    assert_eq!(r.columns, ok.2.columns);
    assert_eq!(r.explanation[..2], ok.2.explanation[..2]);
    assert_eq!(
        failed.3.as_deref(),
        Some("KX-UDF-TRAP"),
        "h2 audits the cause"
    );
}
