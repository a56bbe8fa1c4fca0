//! The `kexin` binary as a user runs it: real processes, files and SQLite.
//! Audit-log tampering, rollback, config errors and the JSON contract.

// Test and bench code: a panic is the failure report, and plain DataFusion
// sessions are the independent reference.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    reason = "tests fail loudly and build reference contexts with plain DataFusion"
)]

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn kexin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kexin"))
        .args(args)
        .output()
        .expect("run kexin")
}

fn generate(dir: &Path) {
    generate_hospitals(dir, "2");
}

fn generate_hospitals(dir: &Path, hospitals: &str) {
    let out = kexin(&[
        "gen",
        "--out",
        dir.to_str().expect("utf8"),
        "--hospitals",
        hospitals,
        "--patients",
        "800",
        "--seed",
        "3",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn query_json(dir: &Path, scene: &str, sql: &str) -> (i32, Value) {
    query_json_as(dir, "alice", scene, sql)
}

fn query_json_as(dir: &Path, actor: &str, scene: &str, sql: &str) -> (i32, Value) {
    let out = kexin(&[
        "query",
        "--local",
        "--space",
        dir.to_str().expect("utf8"),
        "--scene",
        scene,
        "--as",
        actor,
        "--format",
        "json",
        sql,
    ]);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code().unwrap_or(-1), v)
}

/// One JSON value per line of a command's standard output.
fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn verify(dir: &Path) -> (bool, String) {
    let out = kexin(&[
        "audit",
        "verify",
        "--local",
        "--space",
        dir.to_str().expect("utf8"),
    ]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn db(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join("h1").join("kexin.db")).expect("open db")
}

/// A space with a few audited decisions, and a fresh verify.
/// Entries in node h1's audit log (the generator's contracts are there
/// before any query).
fn entries(dir: &Path) -> u64 {
    db(dir)
        .query_row("SELECT count(*) FROM audit", [], |r| r.get::<_, i64>(0))
        .expect("count") as u64
}

/// A space whose h1 log has the generator's `base` entries, then a released
/// query (base+1), a refused one (base+2) and a released one (base+3).
fn space_with_log() -> (tempfile::TempDir, u64) {
    let t = tempfile::tempdir().expect("tempdir");
    generate(t.path());
    let base = entries(t.path());
    for sql in [
        "SELECT sex, count(*) AS n FROM patients GROUP BY sex",
        "SELECT max(cost) FROM admissions",
        "SELECT department, avg(cost) FROM admissions GROUP BY department",
    ] {
        query_json(t.path(), "diabetes-2027", sql);
    }
    let (ok, msg) = verify(t.path());
    assert!(ok, "fresh log verifies: {msg}");
    assert!(msg.contains(&format!("{} entries", base + 3)), "{msg}");
    (t, base)
}

#[test]
fn json_contract_and_exit_status() {
    let t = tempfile::tempdir().expect("tempdir");
    generate(t.path());
    let base = entries(t.path());
    let (code, v) = query_json(
        t.path(),
        "diabetes-2027",
        "SELECT sex, count(*) AS n FROM patients GROUP BY sex ORDER BY sex",
    );
    assert_eq!(code, 0);
    assert_eq!(v["status"], "released");
    assert_eq!(v["columns"], serde_json::json!(["sex", "n"]));
    assert_eq!(v["rows"].as_array().map(Vec::len), Some(2));
    assert_eq!(v["suppressed_groups"], 0);
    assert_eq!(v["code"], Value::Null);
    assert_eq!(v["audit_seq"], base + 1);

    let (code, v) = query_json(
        t.path(),
        "diabetes-2027",
        "SELECT name, count(*) FROM patients GROUP BY name",
    );
    assert_eq!(code, 2, "query-rule refusals exit 2");
    assert_eq!(v["status"], "refused");
    assert_eq!(v["code"], "KX-DISC-IDENTIFIER");
    assert!(v["rule"].as_str().is_some_and(|r| !r.is_empty()));
    assert_eq!(v["rows"], serde_json::json!([]));
    assert_eq!(v["audit_seq"], base + 2);

    let (code, v) = query_json(t.path(), "flu-2024", "SELECT count(*) FROM admissions");
    assert_eq!(
        (code, v["code"].as_str()),
        (3, Some("KX-SCENE")),
        "scene refusals exit 3"
    );

    // Table and CSV renderings of the same released result.
    let out = kexin(&[
        "query",
        "--local",
        "--space",
        t.path().to_str().expect("utf8"),
        "--scene",
        "diabetes-2027",
        "--as",
        "alice",
        "--format",
        "csv",
        "SELECT sex, count(*) AS n FROM patients GROUP BY sex ORDER BY sex",
    ]);
    let csv = String::from_utf8_lossy(&out.stdout);
    assert!(csv.starts_with("sex,n\nF,"), "{csv}");
    // The audit list shows digests and decisions, never the SQL's literals.
    let out = kexin(&[
        "audit",
        "list",
        "--local",
        "--space",
        t.path().to_str().expect("utf8"),
    ]);
    let list = String::from_utf8_lossy(&out.stdout);
    assert_eq!(list.lines().count() as u64, base + 4);
    assert!(list.contains("\"decision\":\"refused\"") && list.contains("KX-DISC-IDENTIFIER"));
    assert!(
        !list.contains("GROUP BY"),
        "SQL text is stored as a digest only"
    );
}

#[test]
fn edited_entry_is_detected() {
    let (t, b) = space_with_log();
    db(t.path())
        .execute(
            "UPDATE audit SET entry = replace(entry, '\"decision\":\"refused\"', '\"decision\":\"released\"') WHERE seq = ?1",
            [b + 2],
        )
        .expect("tamper");
    let (ok, msg) = verify(t.path());
    assert!(!ok && msg.contains("edited"), "{msg}");
}

#[test]
fn edited_entry_with_recomputed_leaf_is_detected() {
    let (t, b) = space_with_log();
    let conn = db(t.path());
    let entry: Vec<u8> = conn
        .query_row("SELECT entry FROM audit WHERE seq = ?1", [b + 2], |r| {
            r.get(0)
        })
        .expect("read");
    let forged = String::from_utf8(entry)
        .expect("utf8")
        .replace("\"refused\"", "\"released\"");
    let mut leaf = vec![0u8];
    leaf.extend_from_slice(forged.as_bytes());
    use sha2::Digest;
    let leaf = sha2::Sha256::digest(&leaf).to_vec();
    conn.execute(
        "UPDATE audit SET entry = ?1, leaf = ?2 WHERE seq = ?3",
        rusqlite::params![forged.as_bytes(), leaf, b + 2],
    )
    .expect("tamper");
    let (ok, msg) = verify(t.path());
    assert!(!ok && msg.contains("does not match"), "{msg}");
}

#[test]
fn deleted_entry_is_detected() {
    let (t, b) = space_with_log();
    db(t.path())
        .execute("DELETE FROM audit WHERE seq = ?1", [b + 2])
        .expect("tamper");
    let (ok, msg) = verify(t.path());
    assert!(!ok && msg.contains("missing"), "{msg}");
}

#[test]
fn truncated_log_is_detected() {
    let (t, b) = space_with_log();
    let conn = db(t.path());
    conn.execute("DELETE FROM audit WHERE seq = ?1", [b + 3])
        .expect("tamper");
    conn.execute("DELETE FROM checkpoint WHERE size = ?1", [b + 3])
        .expect("tamper");
    let (ok, msg) = verify(t.path());
    assert!(!ok && msg.contains("head checkpoint"), "{msg}");
}

#[test]
fn reordered_entries_are_detected() {
    let (t, b) = space_with_log();
    let conn = db(t.path());
    conn.execute_batch(&format!(
        "UPDATE audit SET seq = 100000 WHERE seq = {one};
         UPDATE audit SET seq = {one} WHERE seq = {two};
         UPDATE audit SET seq = {two} WHERE seq = 100000;",
        one = b + 1,
        two = b + 2
    ))
    .expect("tamper");
    let (ok, msg) = verify(t.path());
    assert!(!ok && msg.contains("out of order"), "{msg}");
}

#[test]
fn unsigned_append_is_detected() {
    let (t, b) = space_with_log();
    let conn = db(t.path());
    let entry: Vec<u8> = conn
        .query_row("SELECT entry FROM audit WHERE seq = ?1", [b + 3], |r| {
            r.get(0)
        })
        .expect("read");
    let forged = String::from_utf8(entry)
        .expect("utf8")
        .replace(&format!("\"seq\":{}", b + 3), &format!("\"seq\":{}", b + 4));
    let mut leaf = vec![0u8];
    leaf.extend_from_slice(forged.as_bytes());
    use sha2::Digest;
    let leaf = sha2::Sha256::digest(&leaf).to_vec();
    conn.execute(
        "INSERT INTO audit (seq, entry, leaf) VALUES (?3, ?1, ?2)",
        rusqlite::params![forged.as_bytes(), leaf, b + 4],
    )
    .expect("tamper");
    let (ok, msg) = verify(t.path());
    assert!(!ok && msg.contains("unsigned"), "{msg}");
}

#[test]
fn forged_checkpoint_signature_is_detected() {
    let (t, b) = space_with_log();
    let conn = db(t.path());
    let size = format!("\n{}\n", b + 2);
    conn.execute(
        "UPDATE checkpoint SET note = replace(note, ?1, ?1 || ' ') WHERE size = ?2",
        rusqlite::params![size, b + 2],
    )
    .expect("tamper");
    let (ok, msg) = verify(t.path());
    assert!(
        !ok && msg.contains(&format!("checkpoint {}", b + 2)),
        "{msg}"
    );
}

#[test]
fn rolled_back_database_is_detected() {
    let (t, _) = space_with_log();
    let h1 = t.path().join("h1");
    // Back up the database as it is (3 entries)…
    db(t.path())
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .expect("wal checkpoint");
    let backup = tempfile::tempdir().expect("tempdir");
    std::fs::copy(h1.join("kexin.db"), backup.path().join("kexin.db")).expect("backup");
    // …make one more audited decision, keeping the checkpoint the answer carries…
    let (_, v) = query_json(t.path(), "diabetes-2027", "SELECT count(*) FROM patients");
    let saved_checkpoint = v["checkpoint"]
        .as_str()
        .expect("checkpoint in the answer")
        .to_string();
    // …and restore the backup, as an operator hiding that decision would.
    for f in ["kexin.db-wal", "kexin.db-shm"] {
        let _ = std::fs::remove_file(h1.join(f));
    }
    std::fs::copy(backup.path().join("kexin.db"), h1.join("kexin.db")).expect("restore");
    let (ok, msg) = verify(t.path());
    assert!(!ok && msg.contains("rolled back"), "{msg}");
    // A researcher's saved checkpoint catches it too, even with the head file gone.
    std::fs::remove_file(h1.join("audit.head")).expect("remove head");
    let cp = t.path().join("saved.note");
    std::fs::write(&cp, saved_checkpoint).expect("write");
    let out = kexin(&[
        "audit",
        "verify",
        "--local",
        "--space",
        t.path().to_str().expect("utf8"),
        "--checkpoint",
        cp.to_str().expect("utf8"),
    ]);
    let msg = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && msg.contains("external checkpoint"),
        "{msg}"
    );
}

fn config_error(dir: &Path, from: &str, to: &str, field: &str) {
    let p = dir.join("space.toml");
    let good = std::fs::read_to_string(&p).expect("read");
    assert!(good.contains(from), "fixture lacks {from}");
    std::fs::write(&p, good.replacen(from, to, 1)).expect("write");
    let out = kexin(&[
        "query",
        "--local",
        "--space",
        dir.to_str().expect("utf8"),
        "--scene",
        "diabetes-2027",
        "--as",
        "alice",
        "SELECT count(*) FROM patients",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    std::fs::write(&p, good).expect("restore");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("space.toml") && err.contains(field),
        "error should name {field}: {err}"
    );
}

#[test]
fn config_errors_name_file_and_field() {
    let t = tempfile::tempdir().expect("tempdir");
    generate(t.path());
    config_error(
        t.path(),
        "mask = \"band(10)\"",
        "mask = \"band(ten)\"",
        "dataset.patients.columns.age.mask",
    );
    config_error(
        t.path(),
        "min_persons = 10",
        "min_persons = 0",
        "scene.diabetes-2027.output.min_persons",
    );
    config_error(
        t.path(),
        "person_key = \"id_card\"",
        "person_key = \"name\"",
        "dataset.patients.person_key",
    );
    config_error(
        t.path(),
        "source = \"{node}/labs.parquet\"",
        "source = \"{node}/missing.parquet\"",
        "dataset.labs.source",
    );
    config_error(
        t.path(),
        "diagnosis      = { grade = 3, kind = \"sensitive\", mask = \"prefix(3)\" }",
        "diagnosis      = { grade = 3, kind = \"sensitive\", mask = \"band(3)\" }",
        "dataset.admissions.columns.diagnosis",
    );
    config_error(
        t.path(),
        "[scene.flu-2024]",
        "[scene.flu-2024]\nbogus = 1",
        "line",
    );
}

#[test]
fn gen_does_not_overwrite_a_space_without_force() {
    let t = tempfile::tempdir().expect("tempdir");
    generate(t.path());
    let policy = t.path().join("space.toml");
    let edited = format!(
        "{}\n# a hand-written note\n",
        std::fs::read_to_string(&policy).expect("policy")
    );
    std::fs::write(&policy, &edited).expect("edit");
    let dir = t.path().to_str().expect("utf8");
    let args = [
        "gen",
        "--out",
        dir,
        "--hospitals",
        "2",
        "--patients",
        "300",
        "--seed",
        "4",
    ];
    let out = kexin(&args);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert_eq!(std::fs::read_to_string(&policy).expect("policy"), edited);
    let mut forced = args.to_vec();
    forced.push("--force");
    assert!(kexin(&forced).status.success());
    assert_ne!(std::fs::read_to_string(&policy).expect("policy"), edited);
}

#[test]
fn generator_is_deterministic_and_writes_csv() {
    let a = tempfile::tempdir().expect("tempdir");
    let b = tempfile::tempdir().expect("tempdir");
    for d in [a.path(), b.path()] {
        let out = kexin(&[
            "gen",
            "--out",
            d.to_str().expect("utf8"),
            "--hospitals",
            "2",
            "--patients",
            "300",
            "--seed",
            "11",
            "--csv",
        ]);
        assert!(out.status.success());
    }
    for f in ["h1/patients.csv", "h2/admissions.csv", "h1/labs.csv"] {
        let x = std::fs::read(a.path().join(f)).expect("read");
        assert!(!x.is_empty());
        assert_eq!(
            x,
            std::fs::read(b.path().join(f)).expect("read"),
            "{f} differs between runs"
        );
    }
    // Some persons are patients of both hospitals.
    let ids = |h: &str| -> std::collections::BTreeSet<String> {
        std::fs::read_to_string(a.path().join(h).join("patients.csv"))
            .expect("read")
            .lines()
            .skip(1)
            .filter_map(|l| l.split(',').next().map(str::to_string))
            .collect()
    };
    let shared = ids("h1").intersection(&ids("h2")).count();
    assert!(shared > 20 && shared < 100, "overlap {shared}");
}

#[test]
fn udf_register_list_and_query_from_the_command_line() {
    let t = tempfile::tempdir().unwrap();
    generate(t.path());
    let space = t.path().to_str().unwrap();
    let module = Path::new(env!("CARGO_MANIFEST_DIR")).join("udfs/target/wasm/bmi.wasm");
    assert!(
        module.is_file(),
        "build the example UDFs first: bash udfs/build.sh"
    );
    let module = module.to_str().unwrap();

    // Before approval the function does not exist for the scene.
    let sql = "SELECT sex, avg(bmi(weight_kg, height_cm)) AS mean_bmi FROM patients GROUP BY sex";
    let (code, v) = query_json(t.path(), "diabetes-2027", sql);
    assert_eq!(code, 2);
    assert_eq!(v["code"], "KX-SQL-UNKNOWN");

    // carol is a data holder of h1 only: by default she approves on h1, and
    // h2 refuses her signed approval.
    let out = kexin(&[
        "udf",
        "register",
        "--local",
        "--space",
        space,
        "--scene",
        "diabetes-2027",
        "--as",
        "carol",
        "--format",
        "json",
        module,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1);
    let digest = lines[0]["digest"].as_str().unwrap().to_string();
    assert!(digest.starts_with("sha256:"));
    assert_eq!(lines[0]["node"], "h1");
    assert_eq!(lines[0]["functions"][0]["name"], "bmi");
    assert_eq!(lines[0]["newly_approved"], true);
    let out = kexin(&[
        "udf",
        "register",
        "--local",
        "--space",
        space,
        "--scene",
        "diabetes-2027",
        "--node",
        "h2",
        "--as",
        "carol",
        "--format",
        "json",
        module,
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(json_lines(&out)[0]["code"], "KX-AUTH");

    let out = kexin(&[
        "udf", "list", "--local", "--space", space, "--format", "json",
    ]);
    assert!(out.status.success());
    let listed = json_lines(&out);
    assert_eq!(listed.len(), 1);
    assert!(listed.iter().all(|u| u["digest"] == digest.as_str()
        && u["source"] == "registered"
        && u["approved_by"] == "carol"
        && u["loadable"] == true));

    let (code, v) = query_json(t.path(), "diabetes-2027", sql);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["status"], "released");
    assert_eq!(v["rows"].as_array().unwrap().len(), 2);
    let bmi = v["rows"][0][1].as_f64().unwrap();
    assert!((15.0..35.0).contains(&bmi), "{v}");

    // A refused module: exit status 2 and a fixed code, nothing approved.
    let bad = t.path().join("bad.wasm");
    std::fs::write(&bad, b"\0asm\x01\0\0\0garbage").unwrap();
    let out = kexin(&[
        "udf",
        "register",
        "--local",
        "--space",
        space,
        "--scene",
        "diabetes-2027",
        "--format",
        "json",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["code"], "KX-UDF-MODULE");

    let (ok, report) = verify(t.path());
    assert!(ok, "{report}");
    let kinds: Vec<String> = db(t.path())
        .prepare("SELECT entry FROM audit ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(|e| {
            let v: Value = serde_json::from_slice(&e.unwrap()).unwrap();
            v["kind"].as_str().unwrap().to_string()
        })
        .collect();
    let kinds: Vec<&String> = kinds
        .iter()
        .filter(|k| !k.starts_with("contract-") && *k != "dataset-load")
        .collect();
    // The refused module's registration is audited too.
    assert_eq!(kinds, ["query", "udf-register", "query", "udf-register"]);
}

#[test]
fn audit_list_does_not_create_state() {
    let t = tempfile::tempdir().unwrap();
    generate(t.path());
    // The generator leaves contracts in every node's log: take h1's away to
    // get a node that never ran.
    for f in ["kexin.db", "kexin.db-wal", "kexin.db-shm"] {
        let _ = std::fs::remove_file(t.path().join("h1").join(f));
    }
    let out = kexin(&[
        "audit",
        "list",
        "--local",
        "--space",
        t.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no audit log yet"));
    assert!(!t.path().join("h1").join("kexin.db").exists());
    // Consent commands in process read the registry only: no node opens.
    let out = kexin(&[
        "consent",
        "list",
        "--local",
        "--space",
        t.path().to_str().unwrap(),
        "--as",
        "p00000",
    ]);
    assert!(out.status.success());
    assert!(!t.path().join("h1").join("kexin.db").exists());
}

#[test]
fn dp_query_json_and_budget_show() {
    // One hospital: no other node has to accept the charge (with several,
    // their node servers must run; tests/all/federation.rs covers that).
    let t = tempfile::tempdir().expect("tempdir");
    generate_hospitals(t.path(), "1");
    let dir = t.path().to_str().expect("utf8");
    // erin's DP scenes are diabetes-dp and the federated joint-diabetes-dp;
    // this test charges the first.
    let budget = || {
        let all = json_lines(&kexin(&[
            "budget", "show", "--local", "--space", dir, "--as", "erin", "--format", "json",
        ]));
        assert_eq!(all.len(), 2);
        all.into_iter()
            .filter(|b| b["scene"] == "diabetes-dp")
            .collect::<Vec<_>>()
    };
    // Before any charge the researcher's DP scene is listed, untouched.
    let before = budget();
    assert_eq!(before.len(), 1);
    assert_eq!(before[0]["scene"], "diabetes-dp");
    assert_eq!(before[0]["epsilon_spent"], 0.0);
    assert_eq!(before[0]["epsilon_remaining"], 1.0);

    let sql = "SELECT department, count(*) AS n FROM admissions GROUP BY department";
    let (code, v) = query_json_as(t.path(), "erin", "diabetes-dp", sql);
    assert_eq!(code, 0, "{v}");
    // Every value of the declared department domain is a candidate cell.
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(
        rows.len() + v["suppressed_groups"].as_u64().unwrap() as usize,
        10
    );
    let dp = &v["dp"];
    assert_eq!(dp["epsilon_charged"], 0.1);
    assert_eq!(dp["accuracy"].as_array().unwrap().len(), rows.len());
    for (row, acc) in rows.iter().zip(dp["accuracy"].as_array().unwrap()) {
        assert!(acc[0].is_null());
        let n = row[1].as_f64().unwrap();
        let [lo, hi] = [
            acc[1]["interval"][0].as_f64().unwrap(),
            acc[1]["interval"][1].as_f64().unwrap(),
        ];
        assert!(lo <= n && n <= hi && acc[1]["scale"].as_f64().unwrap() > 0.0);
    }
    // Threshold-only scenes keep their JSON shape: no `dp` key.
    let (_, plain) = query_json(t.path(), "diabetes-2027", sql);
    assert!(plain.get("dp").is_none());

    let after = budget();
    assert!((after[0]["epsilon_spent"].as_f64().unwrap() - 0.1).abs() < 1e-9);
    assert_eq!(after[0]["queries"], 1);
    // The requester organisation's budget over every scene and node.
    assert_eq!(after[0]["org"], "org:hubei-cdc");
    assert_eq!(after[0]["requester_epsilon_total"], 5.0);
    assert!((after[0]["requester_epsilon_spent"].as_f64().unwrap() - 0.1).abs() < 1e-9);
    // The charge is in the query's audit entry.
    let entries = json_lines(&kexin(&["audit", "list", "--local", "--space", dir]));
    let dp_entry = entries
        .iter()
        .find(|e| e["scene"] == "diabetes-dp" && e["kind"] == "query")
        .unwrap();
    assert_eq!(dp_entry["epsilon"], 0.1);
    assert!(verify(t.path()).0);
}

#[test]
fn identities_consent_contracts_and_airlock_from_the_command_line() {
    let t = tempfile::tempdir().unwrap();
    generate(t.path());
    let dir = t.path().to_str().unwrap();
    let key = t.path().join("dana.key");
    // A new member: key file (0600), then a certificate binding an ID number.
    let out = kexin(&[
        "id",
        "new",
        "--out",
        key.to_str().unwrap(),
        "--member",
        "dana",
    ]);
    assert!(out.status.success());
    let public = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(public.len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // The standard's worked example number; a wrong check digit is refused.
    let cert = t.path().join("dana.cert.json");
    let issue = |id: &str| {
        kexin(&[
            "id",
            "issue",
            "--space",
            dir,
            "--member",
            "dana",
            "--role",
            "individual",
            "--public-key",
            &public,
            "--id-number",
            id,
            "--out",
            cert.to_str().unwrap(),
        ])
    };
    assert!(!issue("110105194912310021").status.success());
    let out = issue("11010519491231002X");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&cert).unwrap();
    assert!(
        !text.contains("11010519491231002X"),
        "only a digest of the number"
    );
    let out = kexin(&[
        "id",
        "verify",
        "--space",
        dir,
        "--cert",
        cert.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    // A certificate edited after issue does not verify.
    std::fs::write(&cert, text.replace("individual", "researcher")).unwrap();
    let out = kexin(&[
        "id",
        "verify",
        "--space",
        dir,
        "--cert",
        cert.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3));

    // dana grants, lists, revokes; history is empty (not a patient here).
    let grant = kexin(&[
        "consent",
        "grant",
        "--local",
        "--space",
        dir,
        "--as",
        "dana",
        "--key",
        key.to_str().unwrap(),
        "--scene",
        "diabetes-consent",
        "--until",
        "2027-12-31",
    ]);
    assert!(
        grant.status.success(),
        "{}",
        String::from_utf8_lossy(&grant.stdout)
    );
    let listed = json_lines(&kexin(&[
        "consent", "list", "--local", "--space", dir, "--as", "dana", "--format", "json",
    ]));
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["purpose"], "DS:E11");
    assert_eq!(listed[0]["until"], "2027-12-31");
    // Someone else's key cannot act for dana.
    let out = kexin(&[
        "consent",
        "revoke",
        "--local",
        "--space",
        dir,
        "--as",
        "dana",
        "--scene",
        "diabetes-consent",
        "--key",
        t.path().join("keys").join("p00000.key").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let out = kexin(&[
        "consent", "history", "--local", "--space", dir, "--as", "dana", "--format", "json",
    ]);
    assert!(out.status.success() && out.stdout.is_empty());

    // Contracts: carol offers bob a second contract; bob agrees; carol finalizes.
    let offer = json_lines(&kexin(&[
        "contract",
        "offer",
        "--local",
        "--space",
        dir,
        "--node",
        "h1",
        "--as",
        "carol",
        "--requester",
        "bob",
        "--scene",
        "service-planning",
        "--max-queries",
        "3",
        "--format",
        "json",
    ]));
    assert_eq!(offer[0]["state"], "OFFERED");
    let id = offer[0]["id"].as_str().unwrap().to_string();
    let agreed = json_lines(&kexin(&[
        "contract", "sign", "--local", "--space", dir, "--node", "h1", "--as", "bob", "--id", &id,
        "--format", "json",
    ]));
    assert_eq!(agreed[0]["state"], "AGREED");
    let done = json_lines(&kexin(&[
        "contract", "sign", "--local", "--space", dir, "--node", "h1", "--as", "carol", "--id",
        &id, "--format", "json",
    ]));
    assert_eq!(done[0]["state"], "FINALIZED");
    // bob now has two active contracts for the scene: he must name one.
    let q = |extra: &[&str]| {
        let mut args = vec![
            "query",
            "--local",
            "--space",
            dir,
            "--scene",
            "service-planning",
            "--as",
            "bob",
            "--format",
            "json",
        ];
        args.extend_from_slice(extra);
        args.push("SELECT sex, count(*) FROM patients GROUP BY sex");
        let out = kexin(&args);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.code(), v)
    };
    let (code, v) = q(&[]);
    assert_eq!((code, v["code"].as_str()), (Some(3), Some("KX-CONTRACT")));
    let (code, v) = q(&["--contract", &id]);
    assert_eq!((code, v["contract"].as_str()), (Some(0), Some(id.as_str())));
    let out = kexin(&[
        "contract",
        "terminate",
        "--local",
        "--space",
        dir,
        "--node",
        "h1",
        "--as",
        "bob",
        "--id",
        &id,
    ]);
    assert!(out.status.success());
    let (code, v) = q(&["--contract", &id]);
    assert_eq!((code, v["code"].as_str()), (Some(3), Some("KX-CONTRACT")));

    // The airlock from the command line: held (exit 1), listed, approved twice.
    let out = kexin(&[
        "query",
        "--local",
        "--space",
        dir,
        "--scene",
        "diabetes-review",
        "--as",
        "alice",
        "--format",
        "json",
        "SELECT sex, count(*) FROM patients GROUP BY sex",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let held: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(held["status"], "held");
    let n = held["airlock"].to_string();
    let listed = json_lines(&kexin(&[
        "airlock", "list", "--local", "--space", dir, "--format", "json",
    ]));
    assert_eq!(listed[0]["state"], "held");
    let own = kexin(&[
        "airlock", "approve", "--local", "--space", dir, "--as", "alice", "--id", &n,
    ]);
    assert_eq!(own.status.code(), Some(3));
    for who in ["carol", "dave"] {
        let out = kexin(&[
            "airlock", "approve", "--local", "--space", dir, "--as", who, "--id", &n,
        ]);
        assert!(out.status.success());
    }
    let out = kexin(&[
        "airlock", "show", "--local", "--space", dir, "--as", "alice", "--id", &n, "--format",
        "json",
    ]);
    let released: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(released["status"], "released");
    assert_eq!(released["rows"].as_array().map(Vec::len), Some(2));
    assert!(verify(t.path()).0);
}
