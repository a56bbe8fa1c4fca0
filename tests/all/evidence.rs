//! Portable evidence and disputes: `kexin audit prove --out` writes a bundle
//! that `kexin audit check` verifies with nothing but the operator key (any
//! changed byte of the entry, the proof or the checkpoint fails it), and a
//! dispute over an entry is opened by its parties only, shown to every
//! party, pauses a contract that asks for it, and is resolved on the
//! record. A data holder's accounting statement sums what the node
//! answered and verifies with the node's certified key.

use std::process::Command;

use serde_json::Value;

use crate::support::nodes::{BIN, Federation, path};

const SQL: &str = "SELECT sex, count(*) AS n, avg(age) AS mean_age FROM patients GROUP BY sex";

fn kexin(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().expect("run kexin");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// alice's query on h1 under `scene` (and `contract`), through the server.
fn ask(d: &str, scene: &str, contract: Option<&str>) -> Value {
    let mut args = vec![
        "query", "--space", d, "--node", "h1", "--scene", scene, "--as", "alice", "--format",
        "json",
    ];
    if let Some(c) = contract {
        args.extend(["--contract", c]);
    }
    args.push(SQL);
    let out = Command::new(BIN).args(&args).output().expect("run query");
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

#[test]
fn an_evidence_bundle_checks_offline_and_fails_when_any_byte_changes() {
    let f = Federation::new(3, 10, &["h1", "h2", "h3"]);
    let d = path(&f.dir);
    let v = ask(d, "diabetes-2027", None);
    assert_eq!(v["status"], "released", "{v}");
    let seq = v["audit_seq"].as_u64().expect("audit_seq").to_string();
    // Show h1's checkpoint to its peers now (the servers also do it every
    // few seconds).
    let (rc, out) = kexin(&["audit", "witness", "--space", d, "--node", "h1"]);
    assert_eq!(rc, 0, "{out}");

    let work = tempfile::tempdir().expect("tmp");
    let bundle = work.path().join("entry.json");
    let b = path(&bundle);
    let (rc, out) = kexin(&[
        "audit", "prove", "--space", d, "--node", "h1", "--as", "alice", "--seq", &seq, "--out", b,
        "--format", "json",
    ]);
    assert_eq!(rc, 0, "{out}");
    let written = lines(&out).remove(0);
    assert_eq!(
        written["witnesses"],
        serde_json::json!(["h2", "h3"]),
        "{out}"
    );

    // Checked with space.toml's operator key, with a key given, and with
    // the key the bundle names (which it says is not pinned).
    let (rc, out) = kexin(&["audit", "check", b, "--space", d, "--format", "json"]);
    assert_eq!(rc, 0, "{out}");
    let checked = lines(&out).remove(0);
    assert_eq!(checked["status"], "verified");
    assert_eq!(checked["seq"].as_u64(), seq.parse().ok());
    assert_eq!(checked["entry"]["actor"], "alice");
    let binds = &checked["binds"];
    for field in [
        "sql_sha256",
        "plan_sha256",
        "policy_sha256",
        "output_sha256",
        "contract",
    ] {
        assert!(binds[field].is_string(), "{field}: {binds}");
    }
    assert!(binds["data"]["patients"].is_string(), "{binds}");
    let space = kexin_engine::policy::Space::load(&f.dir).expect("space");
    let op = hex::encode(space.operator_key.expect("operator key").as_bytes());
    // Offline: a copy of the bundle alone, away from the space.
    let alone = tempfile::tempdir().expect("tmp");
    let copy = alone.path().join("copy.json");
    std::fs::copy(&bundle, &copy).expect("copy");
    let (rc, out) = kexin(&["audit", "check", path(&copy), "--operator-key", &op]);
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("countersigned by h2, h3"), "{out}");
    let (rc, out) = kexin(&["audit", "check", path(&copy)]);
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("not pinned"), "{out}");
    // Another operator's key: nothing checks.
    let other = hex::encode(
        ed25519_dalek::SigningKey::from_bytes(&[9; 32])
            .verifying_key()
            .as_bytes(),
    );
    let (rc, out) = kexin(&["audit", "check", path(&copy), "--operator-key", &other]);
    assert_eq!(rc, 5, "{out}");

    // One changed byte of the entry, the path, the leaf or the checkpoint
    // (several places in each) fails the check.
    let original: Value =
        serde_json::from_str(&std::fs::read_to_string(&bundle).expect("read")).expect("json");
    let check_changed = |pointer: &str, index: Option<usize>| {
        let mut v = original.clone();
        let target = v.pointer_mut(pointer).expect("field");
        let text = target.as_str().expect("text").to_string();
        let mut bytes = text.into_bytes();
        let positions: Vec<usize> = match index {
            Some(i) => vec![i],
            None => {
                let n = bytes.len();
                vec![0, n / 7, n / 3, n / 2, 2 * n / 3, n - 2, n - 1]
            }
        };
        for i in positions {
            let saved = bytes[i];
            bytes[i] = if saved == b'a' { b'b' } else { b'a' };
            *v.pointer_mut(pointer).expect("field") =
                Value::String(String::from_utf8_lossy(&bytes).into_owned());
            let file = work.path().join("changed.json");
            std::fs::write(&file, serde_json::to_string(&v).expect("json")).expect("write");
            let (rc, out) = kexin(&["audit", "check", path(&file), "--operator-key", &op]);
            assert_eq!(rc, 5, "{pointer} byte {i}: {out}");
            assert!(out.contains("NOT VERIFIED"), "{out}");
            bytes[i] = saved;
        }
    };
    check_changed("/proof/entry", None);
    check_changed("/proof/leaf", None);
    check_changed("/proof/checkpoint", None);
    if original["proof"]["path"]
        .as_array()
        .is_some_and(|p| !p.is_empty())
    {
        check_changed("/proof/path/0", None);
    }
    check_changed("/witnesses/0/note", None);
    check_changed("/vouch/log_key/signature", Some(3));

    // Another researcher is not shown alice's entry, so gets no bundle.
    let (rc, out) = kexin(&[
        "audit",
        "prove",
        "--space",
        d,
        "--node",
        "h1",
        "--as",
        "bob",
        "--seq",
        &seq,
        "--out",
        path(&work.path().join("bob.json")),
    ]);
    assert_eq!(rc, 3, "{out}");
    assert!(!work.path().join("bob.json").exists());
}

#[test]
fn a_dispute_is_opened_by_parties_seen_by_every_party_and_pauses_its_contract() {
    let f = Federation::new(3, 10, &["h1"]);
    let d = path(&f.dir);
    // Two walk-through persons grant the consent scene; p00001 does not.
    for p in ["p00000", "p00002"] {
        let (rc, out) = kexin(&[
            "consent",
            "grant",
            "--space",
            d,
            "--as",
            p,
            "--scene",
            "diabetes-consent",
        ]);
        assert_eq!(rc, 0, "{out}");
    }
    // carol offers alice a contract that pauses while a dispute is open.
    let (rc, out) = kexin(&[
        "contract",
        "offer",
        "--space",
        d,
        "--node",
        "h1",
        "--as",
        "carol",
        "--requester",
        "alice",
        "--scene",
        "diabetes-consent",
        "--pause-on-dispute",
        "--format",
        "json",
    ]);
    assert_eq!(rc, 0, "{out}");
    let id = lines(&out)[0]["id"].as_str().expect("id").to_string();
    for who in ["alice", "carol"] {
        let (rc, out) = kexin(&[
            "contract", "sign", "--space", d, "--node", "h1", "--as", who, "--id", &id,
        ]);
        assert_eq!(rc, 0, "{out}");
    }
    let v = ask(d, "diabetes-consent", Some(&id));
    assert_eq!(v["status"], "released", "{v}");
    let seq = v["audit_seq"].as_u64().expect("audit_seq");
    let s = seq.to_string();

    // Which of the two granting persons' records the query used.
    let history = |p: &str| {
        let (rc, out) = kexin(&[
            "consent", "history", "--space", d, "--as", p, "--format", "json",
        ]);
        assert_eq!(rc, 0, "{out}");
        lines(&out)
            .into_iter()
            .find(|u| u["node"] == "h1" && u["audit_seq"].as_u64() == Some(seq))
    };
    let person = ["p00000", "p00002"]
        .into_iter()
        .find(|p| history(p).is_some())
        .expect("a granting person's records were used");

    let open = |who: &str, reason: &str| {
        kexin(&[
            "dispute", "open", "--space", d, "--node", "h1", "--as", who, "--seq", &s, "--reason",
            reason, "--format", "json",
        ])
    };
    // Not parties: another researcher, a person whose records it did not
    // use. A reason with a control character is refused too.
    for who in ["bob", "p00001"] {
        let (rc, out) = open(who, "I object");
        assert_eq!(rc, 3, "{who}: {out}");
        assert_eq!(lines(&out)[0]["code"], "KX-DISPUTE", "{out}");
    }
    let (rc, out) = open(person, "bell\u{7}");
    assert_eq!(rc, 3, "{out}");

    let (rc, out) = open(person, "I did not agree to cost research");
    assert_eq!(rc, 0, "{out}");
    let opened = lines(&out).remove(0);
    assert_eq!(opened["state"], "open");
    assert_eq!(opened["opened_by"], person);
    assert_eq!(opened["contract"], id.as_str());
    let dispute = opened["id"].as_u64().expect("id").to_string();
    // A second open dispute by the same member over the same entry: no.
    let (rc, out) = open(person, "again");
    assert_eq!(rc, 3, "{out}");

    // Every party sees it; another researcher does not.
    let listed = |who: &str| {
        let (rc, out) = kexin(&[
            "dispute", "list", "--space", d, "--node", "h1", "--as", who, "--format", "json",
        ]);
        assert_eq!(rc, 0, "{out}");
        lines(&out)
    };
    for who in ["alice", "carol", "operator", person] {
        let seen = listed(who);
        assert!(
            seen.iter()
                .any(|x| x["id"].as_u64() == opened["id"].as_u64()),
            "{who}: {seen:?}"
        );
    }
    assert!(listed("bob").is_empty());
    let used = history(person).expect("still in the history");
    assert_eq!(used["disputes"][0]["state"], "open", "{used}");

    // The contract is paused: alice's next query under it is refused.
    let v = ask(d, "diabetes-consent", Some(&id));
    assert_eq!(v["code"], "KX-CONTRACT", "{v}");
    assert!(
        v["rule"].as_str().is_some_and(|r| r.contains("paused")),
        "{v}"
    );

    // alice (a party, not a holder) may not decide it; carol dismisses it.
    let resolve = |who: &str, outcome: &str| {
        kexin(&[
            "dispute",
            "resolve",
            "--space",
            d,
            "--node",
            "h1",
            "--as",
            who,
            "--id",
            &dispute,
            "--outcome",
            outcome,
            "--note",
            "the grant covers the scene's purpose",
            "--format",
            "json",
        ])
    };
    let (rc, out) = resolve("alice", "upheld");
    assert_eq!(rc, 3, "{out}");
    let (rc, out) = resolve("carol", "dismissed");
    assert_eq!(rc, 0, "{out}");
    let done = lines(&out).remove(0);
    assert_eq!(
        (done["state"].as_str(), done["resolved_by"].as_str()),
        (Some("dismissed"), Some("carol"))
    );
    let (rc, _) = resolve("carol", "upheld");
    assert_eq!(rc, 3, "a resolved dispute stays resolved");
    assert_eq!(
        history(person).expect("history")["disputes"][0]["state"],
        "dismissed"
    );
    let v = ask(d, "diabetes-consent", Some(&id));
    assert_eq!(v["status"], "released", "{v}");

    // carol opens one herself and withdraws it; only she may.
    let (rc, out) = open("carol", "the output digest does not match our copy");
    assert_eq!(rc, 0, "{out}");
    let second = lines(&out)[0]["id"].as_u64().expect("id").to_string();
    let (rc, out) = kexin(&[
        "dispute",
        "resolve",
        "--space",
        d,
        "--node",
        "h1",
        "--as",
        "alice",
        "--id",
        &second,
        "--outcome",
        "withdrawn",
        "--note",
        "x",
    ]);
    assert_eq!(rc, 3, "{out}");
    let (rc, out) = kexin(&[
        "dispute",
        "resolve",
        "--space",
        d,
        "--node",
        "h1",
        "--as",
        "carol",
        "--id",
        &second,
        "--outcome",
        "withdrawn",
        "--note",
        "our copy was stale",
    ]);
    assert_eq!(rc, 0, "{out}");

    // Each step is in h1's log, naming the entry it concerns, and the log
    // verifies.
    let (rc, out) = kexin(&["audit", "list", "--local", "--space", d, "--node", "h1"]);
    assert_eq!(rc, 0, "{out}");
    let entries = lines(&out);
    let about: Vec<(String, String)> = entries
        .iter()
        .filter(|e| e["concerns"].as_u64() == Some(seq))
        .map(|e| {
            (
                e["kind"].as_str().unwrap_or("").to_string(),
                e["decision"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for step in [
        ("dispute-open", "opened"),
        ("dispute-resolve", "dismissed"),
        ("dispute-resolve", "withdrawn"),
    ] {
        assert!(
            about.contains(&(step.0.to_string(), step.1.to_string())),
            "{step:?} in {about:?}"
        );
    }
    assert!(
        entries
            .iter()
            .any(|e| e["kind"] == "dispute-open" && e["decision"] == "refused"),
        "refusals are audited"
    );
    f.verify_logs(&["h1"]);
}

#[test]
fn a_statement_sums_a_mixed_run_and_verifies_with_the_nodes_key() {
    let f = Federation::new(3, 10, &["h1", "h2", "h3"]);
    let d = path(&f.dir);
    // A mixed run on h1: alice released and refused, erin under DP, and a
    // federated query of all three nodes.
    assert_eq!(ask(d, "diabetes-2027", None)["status"], "released");
    let out = Command::new(BIN)
        .args([
            "query",
            "--space",
            d,
            "--node",
            "h1",
            "--scene",
            "diabetes-2027",
            "--as",
            "alice",
            "SELECT age FROM patients",
        ])
        .output()
        .expect("query");
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(BIN)
        .args([
            "query",
            "--space",
            d,
            "--node",
            "h1",
            "--scene",
            "diabetes-dp",
            "--as",
            "erin",
            "--format",
            "json",
            "SELECT department, count(*) AS admissions FROM admissions GROUP BY department",
        ])
        .output()
        .expect("query");
    let dp: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(dp["status"], "released", "{dp}");
    let (rc, v) = f.federate(
        "joint-diabetes",
        "h1,h2,h3",
        "SELECT department, COUNT(*) AS n FROM admissions GROUP BY department",
    );
    assert_eq!(rc, 0, "{v}");

    let work = tempfile::tempdir().expect("tmp");
    let file = work.path().join("statement.json");
    let (rc, out) = kexin(&[
        "accounting",
        "statement",
        "--space",
        d,
        "--node",
        "h1",
        "--as",
        "carol",
        "--out",
        path(&file),
        "--format",
        "json",
    ]);
    assert_eq!(rc, 0, "{out}");
    let signed: Value = lines(&out).remove(0);
    let st = &signed["statement"]["body"];
    let rows = st["lines"].as_array().expect("lines");
    let sum = |field: &str| -> f64 { rows.iter().map(|l| l[field].as_f64().unwrap_or(0.0)).sum() };

    // The reference: h1's own log, read by the operator in process.
    let (rc, out) = kexin(&["audit", "list", "--local", "--space", d, "--node", "h1"]);
    assert_eq!(rc, 0, "{out}");
    let answered: Vec<Value> = lines(&out)
        .into_iter()
        .filter(|e| ["query", "federated", "psi"].contains(&e["kind"].as_str().unwrap_or("")))
        .collect();
    let count = |decision: &str| {
        answered
            .iter()
            .filter(|e| e["decision"] == decision)
            .count() as f64
    };
    assert_eq!(sum("queries"), answered.len() as f64);
    assert_eq!(sum("released"), count("released"));
    assert_eq!(sum("refused"), count("refused"));
    assert_eq!(sum("held"), count("held"));
    let eps: f64 = answered.iter().filter_map(|e| e["epsilon"].as_f64()).sum();
    assert!((sum("epsilon") - eps).abs() < 1e-9 && eps > 0.0, "{eps}");
    let line = |who: &str, scene: &str| {
        rows.iter()
            .filter(|l| l["requester"] == who && l["scene"] == scene)
            .fold((0, 0, 0, 0), |a, l| {
                (
                    a.0 + l["queries"].as_u64().unwrap_or(0),
                    a.1 + l["released"].as_u64().unwrap_or(0),
                    a.2 + l["refused"].as_u64().unwrap_or(0),
                    a.3 + l["joint"].as_u64().unwrap_or(0),
                )
            })
    };
    let (q, r, x, _) = line("alice", "diabetes-2027");
    assert!(q >= 2 && r >= 1 && x >= 1, "{rows:?}");
    assert_eq!(line("alice", "joint-diabetes").3, 1, "{rows:?}");
    assert_eq!(line("erin", "diabetes-dp").1, 1, "{rows:?}");

    // It verifies offline with the operator key; a changed count does not.
    let (rc, out) = kexin(&["accounting", "verify", path(&file), "--space", d]);
    assert_eq!(rc, 0, "{out}");
    let mut bad: Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("json");
    let n = bad["statement"]["body"]["lines"][0]["released"]
        .as_u64()
        .expect("released");
    bad["statement"]["body"]["lines"][0]["released"] = (n + 1).into();
    let changed = work.path().join("changed.json");
    std::fs::write(&changed, serde_json::to_string(&bad).expect("json")).expect("write");
    let (rc, out) = kexin(&["accounting", "verify", path(&changed), "--space", d]);
    assert_eq!(rc, 5, "{out}");

    // A researcher gets her own lines only; an individual none.
    let (rc, out) = kexin(&[
        "accounting",
        "statement",
        "--space",
        d,
        "--node",
        "h1",
        "--as",
        "alice",
        "--format",
        "csv",
    ]);
    assert_eq!(rc, 0, "{out}");
    let csv: Vec<&str> = out.lines().collect();
    assert!(csv[0].starts_with("requester,scene,contract,"), "{out}");
    assert!(
        csv.len() > 1 && csv[1..].iter().all(|l| l.starts_with("alice,")),
        "{out}"
    );
    let (rc, out) = kexin(&[
        "accounting",
        "statement",
        "--space",
        d,
        "--node",
        "h1",
        "--as",
        "p00000",
    ]);
    assert_eq!(rc, 3, "{out}");
    // A period before any of it: no lines.
    let (rc, out) = kexin(&[
        "accounting",
        "statement",
        "--space",
        d,
        "--node",
        "h1",
        "--as",
        "carol",
        "--to",
        "2020-01-01",
        "--format",
        "json",
    ]);
    assert_eq!(rc, 0, "{out}");
    assert_eq!(
        lines(&out)[0]["statement"]["body"]["lines"],
        serde_json::json!([])
    );
}

/// `SELECT key, count(DISTINCT id_card), count(*) … GROUP BY key` on a
/// node's raw file, with plain DataFusion: the reference for what the
/// node's data contributed.
fn per_group(file: &std::path::Path, key: &str) -> Vec<(u64, u64)> {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let ctx = datafusion::prelude::SessionContext::new();
        ctx.register_parquet("t", path(file), Default::default())
            .await
            .expect("register");
        let b = ctx
            .sql(&format!(
                "SELECT CAST(count(DISTINCT id_card) AS BIGINT), CAST(count(*) AS BIGINT) FROM t GROUP BY {key}"
            ))
            .await
            .expect("sql")
            .collect()
            .await
            .expect("collect");
        let mut out = Vec::new();
        for b in &b {
            use datafusion::arrow::array::AsArray;
            use datafusion::arrow::datatypes::Int64Type;
            let (p, r) = (
                b.column(0).as_primitive::<Int64Type>(),
                b.column(1).as_primitive::<Int64Type>(),
            );
            for i in 0..b.num_rows() {
                out.push((p.value(i) as u64, r.value(i) as u64));
            }
        }
        out
    })
}

/// A node's statement as `member`, parsed.
fn statement(d: &str, node: &str, member: &str) -> Value {
    let (rc, out) = kexin(&[
        "accounting",
        "statement",
        "--space",
        d,
        "--node",
        node,
        "--as",
        member,
        "--format",
        "json",
    ]);
    assert_eq!(rc, 0, "{out}");
    lines(&out).remove(0)["statement"]["body"].clone()
}

/// The statement line of `requester` under `scene`.
fn line_of(st: &Value, requester: &str, scene: &str) -> Value {
    st["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .find(|l| l["requester"] == requester && l["scene"] == scene)
        .cloned()
        .unwrap_or_else(|| panic!("no line for {requester} {scene}: {st}"))
}

#[test]
fn contributions_are_counted_per_release_and_a_joint_fee_is_split_by_persons() {
    let f = Federation::new(3, 10, &["h1", "h2", "h3"]);
    let d = path(&f.dir);
    let holders = [("h1", "carol"), ("h2", "holder-h2"), ("h3", "holder-h3")];
    // A value rule for alice's joint queries: her generated contracts are
    // terminated and each node offers one with a fee of 1000 per release.
    for (node, holder) in holders {
        let (rc, out) = kexin(&[
            "contract", "show", "--space", d, "--node", node, "--as", holder, "--format", "json",
        ]);
        assert_eq!(rc, 0, "{out}");
        for c in lines(&out) {
            if c["terms"]["requester"] == "alice" && c["terms"]["scene"] == "joint-diabetes" {
                let id = c["id"].as_str().expect("id");
                let (rc, out) = kexin(&[
                    "contract",
                    "terminate",
                    "--space",
                    d,
                    "--node",
                    node,
                    "--as",
                    holder,
                    "--id",
                    id,
                ]);
                assert_eq!(rc, 0, "{out}");
            }
        }
        let (rc, out) = kexin(&[
            "contract",
            "offer",
            "--space",
            d,
            "--node",
            node,
            "--as",
            holder,
            "--requester",
            "alice",
            "--scene",
            "joint-diabetes",
            "--fee-per-release",
            "1000",
            "--format",
            "json",
        ]);
        assert_eq!(rc, 0, "{out}");
        let id = lines(&out)[0]["id"].as_str().expect("id").to_string();
        let (rc, out) = kexin(&[
            "contract", "sign", "--space", d, "--node", node, "--as", "alice", "--id", &id,
        ]);
        assert_eq!(rc, 0, "{out}");
    }

    // One single-node release, one refusal, one joint release.
    assert_eq!(ask(d, "diabetes-2027", None)["status"], "released");
    let (rc, v) = f.federate(
        "joint-diabetes",
        "h1,h2,h3",
        "SELECT department, COUNT(*) AS n FROM admissions GROUP BY department",
    );
    assert_eq!(rc, 0, "{v}");
    assert_eq!(v["suppressed_groups"], 0, "{v}");
    let joint_rows: u64 = v["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r[1].as_u64().expect("n"))
        .sum();

    // h1's single-node release: SQL groups patients by sex, every cell
    // released, so h1 contributed each of its rows (exact results count
    // rows only: see gate::Contribution).
    let h1 = statement(d, "h1", "carol");
    let single = line_of(&h1, "alice", "diabetes-2027");
    let raw = |node: &str, ds: &str| f.dir.join(node).join(format!("{ds}.parquet"));
    let by_sex = per_group(&raw("h1", "patients"), "sex");
    assert_eq!(
        single["rows"].as_u64(),
        Some(by_sex.iter().map(|g| g.1).sum()),
        "{single}"
    );
    assert_eq!(single["persons"], Value::Null, "{single}");
    assert_eq!(single["value"], Value::Null, "no value rule: {single}");

    // The joint release: each node counts its own persons and rows of the
    // released cells; the rows add up to the released counts, and the fee
    // splits by persons into shares that add up to the fee.
    let (mut rows, mut value) = (0, 0.0);
    for (node, holder) in holders {
        let l = line_of(&statement(d, node, holder), "alice", "joint-diabetes");
        let own = per_group(&raw(node, "admissions"), "department");
        assert_eq!(
            (l["persons"].as_u64(), l["rows"].as_u64()),
            (
                Some(own.iter().map(|g| g.0).sum()),
                Some(own.iter().map(|g| g.1).sum())
            ),
            "{node}: {l}"
        );
        rows += l["rows"].as_u64().expect("rows");
        let v = l["value"].as_f64().expect("value");
        assert!(v > 0.0 && v < 1000.0, "{node}: {l}");
        value += v;
    }
    assert_eq!(rows, joint_rows);
    assert!((value - 1000.0).abs() < 1e-6, "{value}");

    // None of it reaches the researcher: her statement has no persons,
    // rows or value, and her audit entries only a commitment.
    let mine = line_of(&statement(d, "h1", "alice"), "alice", "joint-diabetes");
    assert!(
        mine.get("persons").is_none() && mine.get("rows").is_none() && mine.get("value").is_none(),
        "{mine}"
    );
    let (rc, out) = kexin(&[
        "audit", "list", "--space", d, "--node", "h1", "--as", "alice",
    ]);
    assert_eq!(rc, 0, "{out}");
    let released: Vec<Value> = lines(&out)
        .into_iter()
        .filter(|e| e["decision"] == "released")
        .collect();
    assert_eq!(released.len(), 2, "{out}");
    for e in &released {
        let c = e["contribution"].as_str().expect("a commitment");
        assert_eq!(c.len(), 64);
        assert!(e.get("persons").is_none() && e.get("rows").is_none(), "{e}");
    }
}
