//! A hospital brings its own data (`kexin dataset add`): one refusal per
//! error class with nothing written, conversions (timestamps to dates,
//! record numbers kept as text), stable person ordinals across loads, the
//! copy's digest in every query's audit entry, and a tampered copy that
//! stops the node from opening.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::UInt32Type;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use kexin_engine::gate::Cell;
use kexin_engine::node::data;
use kexin_engine::node::{Node, QueryRequest, Status};
use kexin_engine::policy::{ORDINAL_COLUMN, Space};

const POLICY: &str = r#"
[space]
name = "ingest-test"
nodes = ["h1"]

[limits]
response_quantum_ms = 0

[member.alice]
role = "researcher"
org = "org:a"

[member.hana]
role = "holder"
org = "org:h"
nodes = ["h1"]

[dataset.register]
source = "{node}/register.csv"
person_key = "mrn"
person_key_scheme = "hospital-record"
one_row_per_person = true

[dataset.register.columns]
mrn      = { grade = 4, kind = "identifier", mask = "pseudonym" }
ward     = { grade = 1, kind = "attribute" }
admitted = { grade = 2, kind = "quasi", mask = "month" }
cost     = { grade = 3, kind = "sensitive", bounds = [0, 100000] }

[scene.s]
contract  = "none"
purpose   = "DUO:0000006"
requester = "org:a"
datasets  = ["register"]
valid     = ["2020-01-01", "2099-12-31"]
output    = { min_persons = 10, round_to = 1, decimals = 1 }
"#;

/// One row per person `first..last`: record numbers with leading zeros,
/// ward A for even and B for odd persons, admission dates as pandas
/// writes timestamps (every third as a bare date), cost 10 × the person.
fn register_csv(first: u32, last: u32) -> String {
    let mut s = String::from("mrn,ward,admitted,cost,notes\n");
    for i in first..last {
        let ward = if i % 2 == 0 { "A" } else { "B" };
        let day = 1 + i % 28;
        let date = if i % 3 == 0 {
            format!("2024-03-{day:02}")
        } else {
            format!("2024-03-{day:02} 08:30:00")
        };
        s.push_str(&format!("{i:06},{ward},{date},{},free text\n", i * 10));
    }
    s
}

fn space(dir: &Path, csv: &str) -> Space {
    std::fs::create_dir_all(dir.join("h1")).unwrap();
    std::fs::write(dir.join("space.toml"), POLICY).unwrap();
    std::fs::write(dir.join("h1/register.csv"), csv).unwrap();
    Space::load(dir).unwrap()
}

/// Record number → ordinal, as the node's copy holds them.
fn ordinals(dir: &Path) -> BTreeMap<String, u32> {
    let f = File::open(data::copy_path(&dir.join("h1"), "register")).unwrap();
    let r = ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap();
    let mut out = BTreeMap::new();
    for b in r {
        let b = b.unwrap();
        let keys = b.column_by_name("mrn").unwrap().as_string::<i32>().clone();
        let ords = b
            .column_by_name(ORDINAL_COLUMN)
            .unwrap()
            .as_primitive::<UInt32Type>()
            .clone();
        for i in 0..b.num_rows() {
            out.insert(keys.value(i).to_string(), ords.value(i));
        }
    }
    out
}

fn audit_entries(dir: &Path) -> Vec<kexin_engine::audit::AuditEntry> {
    kexin_engine::store::Store::open(&dir.join("h1"), "kexin/ingest-test/h1")
        .unwrap()
        .entries()
        .unwrap()
}

async fn query(dir: &Path, sql: &str) -> kexin_engine::node::Outcome {
    let node = Node::open(Arc::new(Space::load(dir).unwrap()), "h1")
        .await
        .unwrap();
    node.query(&QueryRequest::new("s", "alice", sql)).await
}

#[test]
fn each_kind_of_bad_input_is_refused_precisely_and_nothing_changes() {
    let t = tempfile::tempdir().unwrap();
    let good = register_csv(0, 40);
    let sp = space(t.path(), &good);
    let first = data::load(&sp, "h1", "register", &[], "hana").unwrap();
    assert_eq!((first.rows, first.persons, first.new_persons), (40, 40, 40));
    let copy = data::copy_path(&t.path().join("h1"), "register");
    let sha = data::file_sha256(&copy).unwrap();
    assert_eq!(sha, first.sha256);
    let entries = audit_entries(t.path()).len();

    let lines: Vec<&str> = good.lines().collect();
    let with_row = |row: usize, text: &str| {
        let mut l: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
        l[row] = text.to_string();
        l.join("\n") + "\n"
    };
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "missing column",
            good.replace(",cost,", ",price,"),
            "column cost",
            "missing column",
        ),
        (
            "wrong type",
            with_row(5, "000004,A,2024-03-05,four hundred,x"),
            "column cost",
            "wrong type",
        ),
        (
            "unparseable date",
            with_row(7, "000006,A,03/07/2024,60,x"),
            "row 7, column admitted",
            "unparseable date",
        ),
        (
            "null person key",
            with_row(3, ",B,2024-03-03,20,x"),
            "row 3, column mrn",
            "null person key",
        ),
        (
            "empty person key",
            with_row(4, "   ,A,2024-03-04,30,x"),
            "row 4, column mrn",
            "empty person key",
        ),
        (
            "duplicate person key",
            with_row(9, "000002,A,2024-03-09,80,x"),
            "row 9, column mrn",
            "duplicate person key",
        ),
    ];
    for (what, csv, at, reason) in cases {
        let file = t.path().join(format!("{}.csv", what.replace(' ', "-")));
        std::fs::write(&file, csv).unwrap();
        match data::load(&sp, "h1", "register", std::slice::from_ref(&file), "hana") {
            Err(kexin_engine::Error::Config {
                file: f,
                field,
                reason: r,
            }) => {
                assert!(f.ends_with(".csv"), "{what}: {f}");
                assert_eq!(field, at, "{what}: {r}");
                assert!(r.starts_with(reason), "{what}: {r}");
                // No value of the file is quoted.
                assert!(!r.contains("four hundred") && !r.contains("03/07"), "{r}");
            }
            other => panic!("{what}: expected a refusal, got {other:?}"),
        }
        // Nothing changed: the copy, its record, the log, the index.
        assert_eq!(data::file_sha256(&copy).unwrap(), sha, "{what}");
        assert_eq!(data::list(&sp, "h1").unwrap()["register"], first, "{what}");
        assert_eq!(audit_entries(t.path()).len(), entries, "{what}");
        let leftovers: Vec<_> = std::fs::read_dir(copy.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{what}: {leftovers:?}");
    }
    // The refused loads added no one to the index: the next load of 10 new
    // persons adds exactly 10, numbered after the first 40.
    let more = t.path().join("more.csv");
    std::fs::write(&more, register_csv(40, 50)).unwrap();
    let l = data::load(&sp, "h1", "register", &[more], "hana").unwrap();
    assert_eq!((l.rows, l.new_persons), (10, 10));
    assert_eq!(
        ordinals(t.path()).values().copied().collect::<Vec<_>>(),
        (40..50).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_keep_ordinals_and_every_query_binds_the_data_it_read() {
    let t = tempfile::tempdir().unwrap();
    let sp = space(t.path(), &register_csv(0, 60));
    let l1 = data::load(&sp, "h1", "register", &[], "hana").unwrap();
    // Conversions as declared: timestamps and dates to dates; the record
    // numbers stay text with their leading zeros; `notes` is not declared.
    assert_eq!(l1.columns["admitted"].as_str(), "date");
    assert_eq!(l1.columns["mrn"].as_str(), "text");
    assert!(
        l1.converted.iter().any(|c| c.starts_with("admitted:")),
        "{:?}",
        l1.converted
    );
    assert_eq!(l1.dropped, vec!["notes".to_string()]);
    let before = ordinals(t.path());
    assert_eq!(before.len(), 60);
    assert!(before.contains_key("000007"));

    // The answer is the data's: ward A holds persons 0, 2, …, 58.
    let o = query(
        t.path(),
        "SELECT ward, count(*) AS n, sum(cost) AS total FROM register GROUP BY ward ORDER BY ward",
    )
    .await;
    assert_eq!(o.status, Status::Released, "{o:?}");
    let a_total: u32 = (0..60).filter(|i| i % 2 == 0).map(|i| i * 10).sum();
    assert_eq!(o.rows[0][0], Cell::Text("A".into()));
    assert_eq!(o.rows[0][1], Cell::Int(30));
    assert_eq!(o.rows[0][2], Cell::Int(i64::from(a_total)));
    // Months of the converted dates group as dates do.
    let m = query(
        t.path(),
        "SELECT admitted, count(*) AS n FROM register GROUP BY admitted",
    )
    .await;
    assert_eq!(m.status, Status::Released, "{m:?}");
    assert_eq!(m.rows.len(), 1);
    assert_eq!(m.rows[0][1], Cell::Int(60));
    let log = audit_entries(t.path());
    let q1 = log.last().unwrap();
    assert_eq!(q1.kind, "query");
    assert_eq!(q1.data.get("register"), Some(&l1.sha256));
    let load1 = log.iter().find(|e| e.kind == "dataset-load").unwrap();
    assert_eq!((load1.actor.as_str(), &load1.data), ("hana", &q1.data));

    // A new extract: persons 30..90 in reverse order. Those seen before keep
    // their ordinals, the 30 new ones follow.
    let mut rows: Vec<String> = register_csv(30, 90).lines().map(String::from).collect();
    rows[1..].reverse();
    let v2 = t.path().join("extract-2.csv");
    std::fs::write(&v2, rows.join("\n") + "\n").unwrap();
    let l2 = data::load(&sp, "h1", "register", &[v2], "hana").unwrap();
    assert_eq!((l2.rows, l2.persons, l2.new_persons), (60, 60, 30));
    let after = ordinals(t.path());
    for (k, o) in &after {
        match before.get(k) {
            Some(b) => assert_eq!(o, b, "{k} changed its ordinal"),
            None => assert!(*o >= 60, "{k} got a used ordinal {o}"),
        }
    }
    assert_ne!(l2.sha256, l1.sha256);
    let o = query(t.path(), "SELECT count(*) AS n FROM register").await;
    assert_eq!(o.rows[0][0], Cell::Int(60));
    let log = audit_entries(t.path());
    assert_eq!(log.last().unwrap().data.get("register"), Some(&l2.sha256));

    // A copy changed behind the node's back stops it from opening.
    let copy = data::copy_path(&t.path().join("h1"), "register");
    let mut bytes = std::fs::read(&copy).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&copy, bytes).unwrap();
    let e = Node::open(Arc::new(Space::load(t.path()).unwrap()), "h1")
        .await
        .unwrap_err();
    assert!(matches!(e, kexin_engine::Error::Verify(_)), "{e}");
}

#[test]
fn the_command_line_refuses_with_status_2_and_json_says_where() {
    let t = tempfile::tempdir().unwrap();
    let _ = space(t.path(), &register_csv(0, 20).replace(",cost,", ",price,"));
    let out = std::process::Command::new(crate::support::nodes::BIN)
        .args(["dataset", "add", "--space"])
        .arg(t.path())
        .args([
            "--node",
            "h1",
            "--dataset",
            "register",
            "--as",
            "hana",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "refused");
    assert_eq!(v["at"], "column cost");
    // A researcher may not load data.
    let out = std::process::Command::new(crate::support::nodes::BIN)
        .args(["dataset", "add", "--space"])
        .arg(t.path())
        .args(["--node", "h1", "--dataset", "register", "--as", "alice"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!data::copy_path(&t.path().join("h1"), "register").exists());
}

async fn count(node: &Node) -> kexin_engine::node::Outcome {
    node.query(&QueryRequest::new(
        "sc",
        "alice",
        "SELECT count(*) AS n FROM register",
    ))
    .await
}

/// A consent scene over record numbers: who counts is who granted *and*
/// was bound to a record number by the hospital's data holder; on a loaded
/// copy (ordinals) and on a Parquet file read as it is (key text).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_follows_the_bindings_a_holder_signed_for_record_numbers() {
    consent_by_binding(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_follows_bindings_on_data_that_was_never_loaded() {
    consent_by_binding(false).await;
}

/// `register_csv(0, 40)` as a Parquet file with the declared types.
fn register_parquet(path: &Path) {
    use datafusion::arrow::array::{ArrayRef, Date32Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    let n = 40;
    let schema = Arc::new(Schema::new(vec![
        Field::new("mrn", DataType::Utf8, false),
        Field::new("ward", DataType::Utf8, false),
        Field::new("admitted", DataType::Date32, false),
        Field::new("cost", DataType::Int64, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            (0..n).map(|i| format!("{i:06}")),
        )),
        Arc::new(StringArray::from_iter_values(
            (0..n).map(|i| if i % 2 == 0 { "A" } else { "B" }),
        )),
        Arc::new(Date32Array::from_iter_values(
            (0..n).map(|i| 19_783 + i % 28),
        )),
        Arc::new(Int64Array::from_iter_values(
            (0..n).map(|i| i64::from(i) * 10),
        )),
    ];
    let batch = datafusion::arrow::array::RecordBatch::try_new(Arc::clone(&schema), cols).unwrap();
    let mut w =
        datafusion::parquet::arrow::ArrowWriter::try_new(File::create(path).unwrap(), schema, None)
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

async fn consent_by_binding(load: bool) {
    use kexin::members::{self, Issue};
    use kexin_engine::consent::Verb;
    use kexin_engine::identity::Role;
    use kexin_engine::registry::Registry;

    let t = tempfile::tempdir().unwrap();
    let operator = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let policy = POLICY.replacen(
        "nodes = [\"h1\"]",
        &format!(
            "nodes = [\"h1\"]\noperator_key = \"{}\"",
            hex::encode(operator.verifying_key().as_bytes())
        ),
        1,
    ) + r#"
[scene.sc]
contract  = "none"
purpose   = "DUO:0000006"
requester = "org:a"
datasets  = ["register"]
consent   = "required"
valid     = ["2020-01-01", "2099-12-31"]
output    = { min_persons = 10, round_to = 1, decimals = 1 }
"#;
    std::fs::create_dir_all(t.path().join("h1")).unwrap();
    if load {
        std::fs::write(t.path().join("space.toml"), policy).unwrap();
        std::fs::write(t.path().join("h1/register.csv"), register_csv(0, 40)).unwrap();
    } else {
        let policy = policy.replace("register.csv", "register.parquet");
        std::fs::write(t.path().join("space.toml"), policy).unwrap();
        register_parquet(&t.path().join("h1/register.parquet"));
    }
    let sp = Arc::new(Space::load(t.path()).unwrap());
    if load {
        data::load(&sp, "h1", "register", &[], "hana").unwrap();
    }

    // The operator certifies the members and 23 individuals (no ID numbers).
    let mut registry = Registry::open(Arc::clone(&sp)).unwrap();
    members::issue_members(&sp, &mut registry, &operator).unwrap();
    let people: Vec<(String, ed25519_dalek::SigningKey)> = (0..23u8)
        .map(|i| {
            (
                format!("p{i:02}"),
                ed25519_dalek::SigningKey::from_bytes(&[100 + i; 32]),
            )
        })
        .collect();
    let certs = people
        .iter()
        .map(|(name, k)| {
            members::certificate(
                &sp,
                &registry,
                &operator,
                &Issue {
                    member: name,
                    role: Role::Individual,
                    org: "",
                    public_key: k.verifying_key(),
                    id_number: None,
                    real_name_verified: true,
                    valid_to: "2030-12-31",
                },
            )
            .unwrap()
        })
        .collect();
    registry.issue_many(certs).unwrap();
    // All 23 grant the scene.
    for (name, k) in &people {
        let r = members::receipt(&sp, name, k, "sc", Verb::Grant, None, vec![], None).unwrap();
        registry.record_consent(r).unwrap();
    }
    let node = Node::open(Arc::clone(&sp), "h1").await.unwrap();
    // No one is bound yet: no row passes consent (the gate withholds the
    // empty cell).
    let o = count(&node).await;
    assert_ne!(o.rows.first().map(|r| &r[0]), Some(&Cell::Int(23)), "{o:?}");

    // The data holder binds p00..p19 to record numbers 000000..000019.
    let hana = members::load_key(t.path(), "hana", None).unwrap();
    let scheme = kexin_engine::policy::PersonKeyScheme::HospitalRecord;
    for (i, (name, _)) in people.iter().take(20).enumerate() {
        let env =
            members::person_binding(&sp, "h1", "hana", &hana, name, scheme, &format!("{i:06}"))
                .unwrap();
        let b = node.bind_person(&env).unwrap();
        assert_eq!((b.person.as_str(), b.scheme), (name.as_str(), scheme));
    }
    let o = count(&node).await;
    assert_eq!(o.status, Status::Released, "{o:?}");
    assert_eq!(o.rows[0][0], Cell::Int(20), "only the bound grants count");

    // A researcher cannot bind, nor can a record number be bound twice.
    let alice = members::load_key(t.path(), "alice", None).unwrap();
    let env = members::person_binding(&sp, "h1", "alice", &alice, "p20", scheme, "000020").unwrap();
    assert!(matches!(
        node.bind_person(&env),
        Err(kexin_engine::Error::Refused(_))
    ));
    let env = members::person_binding(&sp, "h1", "hana", &hana, "p21", scheme, "000003").unwrap();
    let e = node.bind_person(&env).unwrap_err();
    assert!(e.to_string().contains("another individual"), "{e}");
    // The same key under another scheme is another person: it matches no row.
    let env = members::person_binding(
        &sp,
        "h1",
        "hana",
        &hana,
        "p22",
        kexin_engine::policy::PersonKeyScheme::Token,
        "000021",
    )
    .unwrap();
    node.bind_person(&env).unwrap();
    assert_eq!(count(&node).await.rows[0][0], Cell::Int(20));

    // Two bound persons revoke: their rows leave the next answer.
    for (name, k) in &people[..2] {
        let r = members::receipt(&sp, name, k, "sc", Verb::Revoke, None, vec![], None).unwrap();
        registry.record_consent(r).unwrap();
    }
    assert_eq!(count(&node).await.rows[0][0], Cell::Int(18));
    let log = audit_entries(t.path());
    assert_eq!(
        log.iter()
            .filter(|e| e.kind == "person-bind" && e.decision == "recorded")
            .count(),
        21
    );
    assert!(
        log.iter()
            .any(|e| e.kind == "person-bind" && e.decision == "refused" && e.actor == "alice")
    );
}
