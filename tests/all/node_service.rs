//! The node as a service: `kexin node` says `ready` only when it takes
//! requests, `kexin query` asks the node's server by default and gets
//! exactly what the in-process path (`--local`) gives, the link's member
//! must be the signer, a member sees only the contracts they may, and
//! SIGTERM stops the node cleanly.

use std::process::Command;
use std::time::{Duration, Instant};

use kexin::federation::{FromNode, ToNode};
use kexin_engine::Code;
use kexin_engine::policy::Space;
use serde_json::Value;

use crate::support::nodes::{BIN, Federation, path, start_node};

const SQL: &str = "SELECT sex, count(*) AS n, avg(age) AS mean_age FROM patients GROUP BY sex";

/// `kexin query … --format json` on h1 as `actor`, remote unless `local`.
fn query(f: &Federation, actor: &str, scene: &str, sql: &str, local: bool) -> (i32, Value, String) {
    let mut args = vec![
        "query",
        "--space",
        path(&f.dir),
        "--node",
        "h1",
        "--scene",
        scene,
        "--as",
        actor,
        "--format",
        "json",
    ];
    if local {
        args.push("--local");
    }
    args.push(sql);
    let out = Command::new(BIN).args(&args).output().expect("run query");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), v, stderr)
}

#[test]
fn a_remote_query_answers_as_the_local_one() {
    let f = Federation::new(3, 10, &["h1"]);
    // Released: the same rows, columns and explanation, in a new audit
    // entry each.
    let (rc, remote, err) = query(&f, "alice", "diabetes-2027", SQL, false);
    assert_eq!(rc, 0, "{remote} {err}");
    let (rc_local, local, _) = query(&f, "alice", "diabetes-2027", SQL, true);
    assert_eq!(rc_local, 0);
    assert_eq!(remote["status"], "released");
    for k in [
        "columns",
        "rows",
        "suppressed_groups",
        "explanation",
        "contract",
    ] {
        assert_eq!(remote[k], local[k], "{k}");
    }
    assert!(remote["audit_seq"].as_u64().is_some() && remote["checkpoint"].is_string());
    assert_ne!(remote["audit_seq"], local["audit_seq"]);
    // Refused: the same code, rule and exit status, and no data.
    for (actor, scene, sql) in [
        ("alice", "diabetes-2027", "SELECT * FROM patients"),
        ("bob", "diabetes-2027", SQL),
        ("alice", "no-such-scene", SQL),
        ("alice", "diabetes-2027", "SELECT count(*) FROM nowhere"),
    ] {
        let (rc, remote, err) = query(&f, actor, scene, sql, false);
        let (rc_local, local, _) = query(&f, actor, scene, sql, true);
        assert_eq!(remote["status"], "refused", "{remote} {err}");
        assert_eq!(
            (rc, &remote["code"], &remote["rule"]),
            (rc_local, &local["code"], &local["rule"])
        );
        assert_eq!(remote["rows"], Value::Array(vec![]));
    }
    // A node that is not running: a plain error, not a refusal.
    let out = Command::new(BIN)
        .args([
            "query",
            "--space",
            path(&f.dir),
            "--node",
            "h2",
            "--scene",
            "diabetes-2027",
            "--as",
            "alice",
            SQL,
        ])
        .output()
        .expect("run query");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach node h2"), "{err}");
}

#[test]
fn the_link_member_must_sign_and_sees_only_their_contracts() {
    let f = Federation::new(3, 10, &["h1"]);
    let space = Space::load(&f.dir).expect("space");
    let key = |m: &str| kexin::members::load_key(&f.dir, m, None).expect("key");
    let wait = Duration::from_secs(30);
    // alice's signed query sent over bob's link is refused, and so is a
    // replay of a request the node already answered.
    let env = kexin::members::query(
        &space,
        "h1",
        "alice",
        &key("alice"),
        "diabetes-2027",
        None,
        SQL,
    )
    .expect("sign");
    let answer =
        kexin::federation::ask(&space, "h1", &key("bob"), &ToNode::Query(env.clone()), wait)
            .expect("ask");
    assert!(
        matches!(
            answer,
            FromNode::Refused {
                code: Code::Auth,
                ..
            }
        ),
        "{answer:?}"
    );
    let first = kexin::federation::ask(
        &space,
        "h1",
        &key("alice"),
        &ToNode::Query(env.clone()),
        wait,
    )
    .expect("ask");
    let FromNode::Outcome(o) = first else {
        panic!("{first:?}")
    };
    assert_eq!(
        o.status,
        kexin_engine::node::Status::Released,
        "{:?}",
        o.rule
    );
    let again = kexin::federation::ask(&space, "h1", &key("alice"), &ToNode::Query(env), wait)
        .expect("ask");
    let FromNode::Outcome(o) = again else {
        panic!("{again:?}")
    };
    assert_eq!(o.code, Some(Code::Auth), "a replayed request is refused");

    // Contracts: a researcher sees their own, a holder of h1 all of them.
    let contracts =
        |m: &str| match kexin::federation::ask(&space, "h1", &key(m), &ToNode::Contracts, wait)
            .expect("ask")
        {
            FromNode::Contracts(c) => c,
            other => panic!("{other:?}"),
        };
    let all = contracts("carol");
    assert!(!all.is_empty());
    let mine = contracts("alice");
    assert!(mine.iter().all(|c| c.terms.requester == "alice"));
    assert_eq!(
        mine.len(),
        all.iter().filter(|c| c.terms.requester == "alice").count()
    );
    assert!(
        contracts("grace")
            .iter()
            .all(|c| c.terms.requester == "grace")
    );
}

#[test]
fn sigterm_stops_the_node_after_its_work() {
    let f = Federation::new(3, 10, &[]);
    let (mut child, mut rest) = start_node(&f.dir, "h1", None);
    // It answers at once after saying ready.
    let (rc, v, err) = query(&f, "alice", "diabetes-2027", SQL, false);
    assert_eq!(rc, 0, "{v} {err}");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let t0 = Instant::now();
    let exit = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the node did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(exit.code(), Some(0));
    assert!(rest.any(|l| l.contains("kexin node h1 stopped")));
    // Nothing listens any more.
    let (rc, _, err) = query(&f, "alice", "diabetes-2027", SQL, false);
    assert_eq!(rc, 1);
    assert!(err.contains("cannot reach node h1"), "{err}");
    // What it acknowledged is in its audit log, which verifies.
    let out = Command::new(BIN)
        .args([
            "audit",
            "verify",
            "--local",
            "--space",
            path(&f.dir),
            "--node",
            "h1",
        ])
        .output()
        .expect("verify");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `kexin ARGS… --format json` (where the command takes a format); exit
/// status and standard output.
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

#[test]
fn governance_goes_through_the_node_server() {
    let f = Federation::new(3, 10, &["h1"]);
    let d = path(&f.dir);

    // Consent: an individual grants through the node, lists and sees
    // their history; a researcher may not read receipts, a holder may.
    let (rc, out) = kexin(&[
        "consent",
        "grant",
        "--space",
        d,
        "--as",
        "p00000",
        "--scene",
        "diabetes-consent",
    ]);
    assert_eq!(rc, 0, "{out}");
    assert!(
        out.contains("recorded grant of diabetes-consent by p00000"),
        "{out}"
    );
    let (rc, out) = kexin(&[
        "consent", "list", "--space", d, "--as", "p00000", "--format", "json",
    ]);
    assert_eq!(rc, 0, "{out}");
    let mine = lines(&out);
    assert!(!mine.is_empty() && mine.iter().all(|r| r["person"] == "p00000"));
    let (rc, out) = kexin(&[
        "consent", "list", "--space", d, "--as", "carol", "--person", "p00000", "--format", "json",
    ]);
    assert_eq!(rc, 0, "{out}");
    assert_eq!(lines(&out).len(), mine.len());
    for args in [
        &[
            "consent", "list", "--space", d, "--as", "alice", "--format", "json",
        ][..],
        &[
            "consent", "history", "--space", d, "--as", "carol", "--format", "json",
        ][..],
    ] {
        let (rc, out) = kexin(args);
        assert_eq!(rc, 3, "{out}");
        assert_eq!(lines(&out)[0]["code"], "KX-AUTH", "{out}");
    }
    let (rc, out) = kexin(&["consent", "history", "--space", d, "--as", "p00000"]);
    assert_eq!(rc, 0, "{out}");

    // Contracts: carol offers, alice agrees, carol finalizes; each sees
    // it, bob (another researcher) does not.
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
        "diabetes-2027",
        "--max-queries",
        "7",
        "--format",
        "json",
    ]);
    assert_eq!(rc, 0, "{out}");
    let offered = lines(&out).remove(0);
    assert_eq!(offered["state"], "OFFERED");
    let id = offered["id"].as_str().expect("id").to_string();
    for (who, state) in [("alice", "AGREED"), ("carol", "FINALIZED")] {
        let (rc, out) = kexin(&[
            "contract", "sign", "--space", d, "--node", "h1", "--as", who, "--id", &id, "--format",
            "json",
        ]);
        assert_eq!(rc, 0, "{out}");
        assert_eq!(lines(&out)[0]["state"], state);
    }
    let shown = |who: &str| {
        let (rc, out) = kexin(&[
            "contract", "show", "--space", d, "--node", "h1", "--as", who, "--id", &id, "--format",
            "json",
        ]);
        assert_eq!(rc, 0, "{out}");
        lines(&out)
    };
    assert_eq!(shown("alice").len(), 1);
    assert_eq!(shown("carol")[0]["state"], "FINALIZED");
    assert!(shown("bob").is_empty());
    // bob cannot take alice's step: he does not see the contract.
    let (rc, out) = kexin(&[
        "contract",
        "terminate",
        "--space",
        d,
        "--node",
        "h1",
        "--as",
        "bob",
        "--id",
        &id,
    ]);
    assert_eq!(rc, 3, "{out}");
    // A holder's signed offer sent over another member's link is refused.
    let space = Space::load(&f.dir).expect("space");
    let key = |m: &str| kexin::members::load_key(&f.dir, m, None).expect("key");
    let terms = kexin::members::offer(
        &space,
        "h1",
        "carol",
        &key("carol"),
        "alice",
        "diabetes-2027",
        kexin::members::Offer {
            max_queries: 3,
            ..Default::default()
        },
    )
    .expect("sign");
    let answer = kexin::federation::ask(
        &space,
        "h1",
        &key("dave"),
        &ToNode::ContractOffer(terms),
        Duration::from_secs(30),
    )
    .expect("ask");
    assert!(
        matches!(
            answer,
            FromNode::Refused {
                code: Code::Auth,
                ..
            }
        ),
        "{answer:?}"
    );

    // UDFs: carol's signed approval goes to her node; a data holder of h2
    // cannot approve a module on h1.
    let module = f.dir.join("doubler.wasm");
    std::fs::write(&module, crate::fixtures::doubler()).expect("write module");
    let m = path(&module);
    let (rc, out) = kexin(&[
        "udf",
        "register",
        "--space",
        d,
        "--scene",
        "diabetes-2027",
        "--as",
        "carol",
        "--format",
        "json",
        m,
    ]);
    assert_eq!(rc, 0, "{out}");
    let approved = lines(&out);
    assert_eq!(approved.len(), 1, "carol holds h1 only: {out}");
    assert_eq!(
        (&approved[0]["node"], &approved[0]["newly_approved"]),
        (&"h1".into(), &true.into())
    );
    let (rc, out) = kexin(&[
        "udf",
        "register",
        "--space",
        d,
        "--scene",
        "diabetes-2027",
        "--node",
        "h1",
        "--as",
        "holder-h2",
        "--format",
        "json",
        m,
    ]);
    assert_eq!(rc, 3, "{out}");
    assert_eq!(lines(&out)[0]["code"], "KX-AUTH");
    let (rc, out) = kexin(&[
        "udf", "list", "--space", d, "--node", "h1", "--as", "alice", "--format", "json",
    ]);
    assert_eq!(rc, 0, "{out}");
    assert!(
        lines(&out)
            .iter()
            .any(|u| u["digest"] == approved[0]["digest"] && u["approved_by"] == "carol")
    );

    // The airlock: alice's held result, reviewed by carol and dave through
    // the node, then fetched by alice; bob sees nothing of it.
    let (rc, held, err) = query(&f, "alice", "diabetes-review", SQL, false);
    assert_eq!(rc, 1, "{held} {err}");
    let held_id = held["airlock"].as_u64().expect("held id");
    let n = held_id.to_string();
    let listed = |who: &str| {
        let (rc, out) = kexin(&[
            "airlock", "list", "--space", d, "--node", "h1", "--as", who, "--format", "json",
        ]);
        assert_eq!(rc, 0, "{out}");
        lines(&out)
    };
    // The requester sees the held result, but not the digest of its
    // unreleased bytes, nor (before release) a proof of its audit entry;
    // a reviewer sees both.
    let mine = listed("alice");
    let entry = mine
        .iter()
        .find(|h| h["id"].as_u64() == Some(held_id))
        .expect("alice's held result");
    assert_eq!(entry["output_sha256"], "");
    let held_seq = held["audit_seq"].as_u64().expect("held entry").to_string();
    let prove = |who: &str| {
        kexin(&[
            "audit", "prove", "--space", d, "--node", "h1", "--as", who, "--seq", &held_seq,
        ])
        .0
    };
    assert_eq!(prove("alice"), 3);
    assert_eq!(prove("carol"), 0);
    // The same for the log read through the server: the held entry is
    // listed to the reviewer, not to its requester until released.
    let seqs = |who: &str| -> Vec<u64> {
        let (rc, out) = kexin(&["audit", "list", "--space", d, "--node", "h1", "--as", who]);
        assert_eq!(rc, 0, "{out}");
        lines(&out)
            .iter()
            .map(|e| e["seq"].as_u64().expect("seq"))
            .collect()
    };
    let held_n: u64 = held_seq.parse().expect("seq");
    assert!(!seqs("alice").contains(&held_n));
    assert!(seqs("carol").contains(&held_n));
    assert!(
        listed("carol")
            .iter()
            .any(|h| h["id"].as_u64() == Some(held_id) && h["output_sha256"] != "")
    );
    assert!(listed("bob").is_empty());
    let (rc, _) = kexin(&["airlock", "show", "--space", d, "--as", "alice", "--id", &n]);
    assert_eq!(rc, 3, "not shown to the requester before release");
    for who in ["carol", "dave"] {
        let (rc, out) = kexin(&["airlock", "approve", "--space", d, "--as", who, "--id", &n]);
        assert_eq!(rc, 0, "{out}");
    }
    let (rc, out) = kexin(&[
        "airlock", "show", "--space", d, "--as", "alice", "--id", &n, "--format", "json",
    ]);
    assert_eq!(rc, 0, "{out}");
    let released: Value = serde_json::from_str(out.trim()).expect("the held bytes");
    assert_eq!(released["status"], "released");
    assert!(!released["rows"].as_array().expect("rows").is_empty());
    // Released: now the requester sees the digest and gets the proof.
    let released_entry = listed("alice")
        .into_iter()
        .find(|h| h["id"].as_u64() == Some(held_id))
        .expect("alice's result");
    assert_ne!(released_entry["output_sha256"], "");
    assert_eq!(prove("alice"), 0);
    assert!(seqs("alice").contains(&held_n));
}

#[test]
fn a_member_certified_after_start_up_gets_in_without_a_restart() {
    let f = Federation::new(3, 10, &["h1"]);
    let d = path(&f.dir);
    let key = f.dir.join("dana.key");
    let k = path(&key);
    let (rc, public) = kexin(&["id", "new", "--out", k, "--member", "dana"]);
    assert_eq!(rc, 0, "{public}");
    let public = public.trim().to_string();
    let grant = || {
        kexin(&[
            "consent",
            "grant",
            "--space",
            d,
            "--as",
            "dana",
            "--key",
            k,
            "--scene",
            "diabetes-consent",
        ])
    };
    // Not certified yet: the node does not let the key in.
    let (rc, out) = grant();
    assert_eq!(rc, 1, "{out}");
    let (rc, out) = kexin(&[
        "id",
        "issue",
        "--space",
        d,
        "--member",
        "dana",
        "--role",
        "individual",
        "--public-key",
        &public,
        "--id-number",
        "11010519491231002X",
    ]);
    assert_eq!(rc, 0, "{out}");
    // An unknown key reloads the node's pins at most once a second.
    std::thread::sleep(Duration::from_millis(1100));
    let (rc, out) = grant();
    assert_eq!(rc, 0, "{out}");
    assert!(
        out.contains("recorded grant of diabetes-consent by dana"),
        "{out}"
    );
}

#[test]
fn thirty_two_queries_from_four_members_at_once() {
    let f = Federation::new(3, 10, &["h1"]);
    let space = std::sync::Arc::new(Space::load(&f.dir).expect("space"));
    // Eight at once from each member: each member's whole share of places.
    let asks = [
        ("alice", "diabetes-2027"),
        ("bob", "service-planning"),
        ("grace", "hk-outcomes"),
        ("carol", "diabetes-2027"),
    ];
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(32));
    let handles: Vec<_> = (0..32)
        .map(|i| {
            let (member, scene) = asks[i % 4];
            let (space, barrier, dir) = (
                std::sync::Arc::clone(&space),
                std::sync::Arc::clone(&barrier),
                f.dir.clone(),
            );
            std::thread::spawn(move || {
                let key = kexin::members::load_key(&dir, member, None).expect("key");
                let sql = "SELECT sex, count(*) AS n FROM patients GROUP BY sex";
                let env = kexin::members::query(&space, "h1", member, &key, scene, None, sql)
                    .expect("sign");
                barrier.wait();
                let answer = kexin::federation::ask(
                    &space,
                    "h1",
                    &key,
                    &ToNode::Query(env),
                    Duration::from_secs(120),
                );
                (member, answer.map_err(|e| format!("{e:#}")))
            })
        })
        .collect();
    let mut released = Vec::new();
    for h in handles {
        let (member, answer) = h.join().expect("thread");
        match answer {
            Ok(FromNode::Outcome(o)) => {
                if member == "alice" {
                    assert_eq!(
                        o.status,
                        kexin_engine::node::Status::Released,
                        "{:?}",
                        o.rule
                    );
                    released.push(o.rows);
                } else if member == "carol" {
                    // Not a researcher of the scene: refused, with its code.
                    assert_eq!(o.status, kexin_engine::node::Status::Refused);
                }
            }
            other => panic!("{member}: {other:?}"),
        }
    }
    assert_eq!(released.len(), 8);
    assert!(
        released.windows(2).all(|w| w[0] == w[1]),
        "the same rows every time"
    );
}

#[test]
fn kill_9_of_the_node_loses_no_acknowledged_governance_write() {
    let mut f = Federation::new(3, 10, &[]);
    let (mut child, rest) = start_node(&f.dir, "h1", None);
    std::thread::spawn(move || rest.count());
    let space = std::sync::Arc::new(Space::load(&f.dir).expect("space"));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Four writers offer contracts through the node as fast as it answers;
    // each keeps the ids the node acknowledged.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (space, stop, dir) = (
                std::sync::Arc::clone(&space),
                std::sync::Arc::clone(&stop),
                f.dir.clone(),
            );
            std::thread::spawn(move || {
                crate::support::nodes::offer_until_stopped(&space, w, &stop, |holder, terms| {
                    let key = kexin::members::load_key(&dir, holder, None).expect("key");
                    match kexin::federation::ask(
                        &space,
                        "h1",
                        &key,
                        &ToNode::ContractOffer(terms),
                        Duration::from_secs(10),
                    ) {
                        Ok(FromNode::Contract(c)) => Some(c.id),
                        Ok(other) => panic!("{other:?}"),
                        Err(_) => None,
                    }
                })
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    child.kill().expect("kill -9");
    child.wait().expect("wait");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let acknowledged: Vec<String> = writers
        .into_iter()
        .flat_map(|w| w.join().expect("writer"))
        .collect();
    assert!(
        !acknowledged.is_empty(),
        "the node acknowledged writes before the kill"
    );
    println!(
        "{} contract offers acknowledged before kill -9",
        acknowledged.len()
    );
    // Started again, the node holds every contract it acknowledged.
    f.start("h1", None);
    let held = match kexin::federation::ask(
        &space,
        "h1",
        &kexin::members::load_key(&f.dir, "carol", None).expect("key"),
        &ToNode::Contracts,
        Duration::from_secs(30),
    )
    .expect("ask")
    {
        FromNode::Contracts(c) => c,
        other => panic!("{other:?}"),
    };
    let ids: std::collections::BTreeSet<&str> = held.iter().map(|c| c.id.as_str()).collect();
    for id in &acknowledged {
        assert!(ids.contains(id.as_str()), "acknowledged contract {id} lost");
    }
    let out = Command::new(BIN)
        .args([
            "audit",
            "verify",
            "--local",
            "--space",
            path(&f.dir),
            "--node",
            "h1",
        ])
        .output()
        .expect("verify");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn anyone_gets_a_checked_inclusion_proof_of_an_audit_entry() {
    let f = Federation::new(3, 10, &["h1"]);
    let d = path(&f.dir);
    let (rc, v, err) = query(&f, "alice", "diabetes-2027", SQL, false);
    assert_eq!(rc, 0, "{v} {err}");
    let seq = v["audit_seq"].as_u64().expect("audit_seq").to_string();
    let prove = |who: &str| {
        let (rc, out) = kexin(&[
            "audit", "prove", "--space", d, "--node", "h1", "--as", who, "--seq", &seq, "--format",
            "json",
        ]);
        assert_eq!(rc, 0, "{out}");
        serde_json::from_str::<kexin_engine::store::AuditProof>(out.trim()).expect("a proof")
    };
    // The actor sees the entry; another researcher gets the same proof
    // without it.
    let mine = prove("alice");
    let entry: Value = serde_json::from_str(mine.entry.as_deref().expect("shown")).expect("json");
    assert_eq!(
        (entry["actor"].as_str(), entry["seq"].as_u64()),
        (Some("alice"), mine.seq.into())
    );
    let theirs = prove("bob");
    assert_eq!(theirs.entry, None);
    assert_eq!((&theirs.leaf, theirs.seq), (&mine.leaf, mine.seq));
    // Checked independently with the node's published key; any change
    // to the path, the leaf or the entry fails.
    let key = kexin_engine::store::read_verifier_key(&f.dir.join("h1")).expect("node.pub");
    mine.check(&key).expect("the proof checks");
    if !mine.path.is_empty() {
        let mut bad = mine.clone();
        bad.path[0] = "00".repeat(32);
        assert!(bad.check(&key).is_err());
    }
    let mut bad = mine.clone();
    bad.entry = Some(bad.entry.unwrap_or_default().replace("alice", "alicf"));
    assert!(bad.check(&key).is_err());
    let mut bad = mine.clone();
    bad.seq += 1;
    assert!(bad.check(&key).is_err());
    // No such entry yet: a refusal.
    let (rc, out) = kexin(&[
        "audit", "prove", "--space", d, "--node", "h1", "--as", "bob", "--seq", "999999",
    ]);
    assert_eq!(rc, 3, "{out}");
}

#[test]
fn a_member_lists_and_verifies_a_nodes_log_through_its_server() {
    let f = Federation::new(3, 10, &["h1"]);
    let d = path(&f.dir);
    let (rc, v, err) = query(&f, "alice", "diabetes-2027", SQL, false);
    assert_eq!(rc, 0, "{v} {err}");
    let mine = v["audit_seq"].as_u64().expect("audit_seq");
    // bob's query (not his scene: refused, and audited under his name).
    let (_, b, _) = query(&f, "bob", "diabetes-2027", SQL, false);
    let his = b["audit_seq"].as_u64().expect("bob's entry");
    let list = |who: &str| {
        let (rc, out) = kexin(&["audit", "list", "--space", d, "--node", "h1", "--as", who]);
        assert_eq!(rc, 0, "{out}");
        lines(&out)
    };
    // A researcher sees her own entries only; the node's data holder sees
    // every entry, the same as the operator's in-process list.
    let alice = list("alice");
    assert!(alice.iter().any(|e| e["seq"].as_u64() == Some(mine)));
    assert!(alice.iter().all(|e| e["actor"] == "alice"), "{alice:?}");
    let out = Command::new(BIN)
        .args(["audit", "list", "--local", "--space", d, "--node", "h1"])
        .output()
        .expect("audit list --local");
    assert!(out.status.success());
    let all = list("carol");
    assert_eq!(all, lines(&String::from_utf8_lossy(&out.stdout)));
    assert!(
        all.iter()
            .any(|e| e["seq"].as_u64() == Some(his) && e["actor"] == "bob")
    );
    // Without a member there is no one to ask as.
    let (rc, out) = kexin(&["audit", "list", "--space", d, "--node", "h1"]);
    assert_ne!(rc, 0, "{out}");

    // Verify, keeping the checkpoint; the next check starts from it.
    let kept = f.dir.join("alice-h1.note");
    let verify = || {
        kexin(&[
            "audit",
            "verify",
            "--space",
            d,
            "--node",
            "h1",
            "--as",
            "alice",
            "--keep",
            path(&kept),
        ])
    };
    let (rc, out) = verify();
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("verified through its server"), "{out}");
    let first = std::fs::read_to_string(&kept).expect("kept checkpoint");
    let (rc, _, _) = query(&f, "alice", "diabetes-2027", SQL, false);
    assert_eq!(rc, 0);
    let (rc, out) = verify();
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("consistent with 1 checkpoint"), "{out}");
    assert_ne!(std::fs::read_to_string(&kept).expect("kept"), first);

    // An entry of alice's edited in the node's database (its stored leaf
    // left as it was): her check finds it.
    let db = rusqlite::Connection::open(f.dir.join("h1").join("kexin.db")).expect("db");
    let entry: Vec<u8> = db
        .query_row(
            "SELECT entry FROM audit WHERE seq = ?1",
            [mine as i64],
            |r| r.get(0),
        )
        .expect("entry");
    let text = String::from_utf8(entry).expect("utf8");
    let edited = text.replace("\"rows_released\":", "\"rows_released\":1");
    assert_ne!(edited, text);
    db.execute(
        "UPDATE audit SET entry = ?1 WHERE seq = ?2",
        rusqlite::params![edited.as_bytes(), mine as i64],
    )
    .expect("edit");
    let (rc, out) = verify();
    assert_eq!(rc, 5, "{out}");
    assert!(out.contains("FAILED") && out.contains("edited"), "{out}");
    // Its leaf rewritten to match: the leaves no longer make the signed
    // root, for anyone who checks (bob sees none of alice's entries).
    let leaf = kexin_engine::audit::leaf_hash(edited.as_bytes()).to_vec();
    db.execute(
        "UPDATE audit SET leaf = ?1 WHERE seq = ?2",
        rusqlite::params![leaf, mine as i64],
    )
    .expect("edit leaf");
    let (rc, out) = kexin(&[
        "audit", "verify", "--space", d, "--node", "h1", "--as", "bob",
    ]);
    assert_eq!(rc, 5, "{out}");
    assert!(out.contains("root"), "{out}");
}

#[test]
fn a_researcher_submits_a_module_and_a_holder_approves_it_by_digest() {
    let f = Federation::new(3, 10, &["h1"]);
    let d = path(&f.dir);
    let module = f.dir.join("doubler.wasm");
    std::fs::write(&module, crate::fixtures::doubler()).expect("write module");
    let m = path(&module);
    let submit = |who: &str, scene: &str| {
        kexin(&[
            "udf", "submit", "--space", d, "--node", "h1", "--scene", scene, "--as", who,
            "--format", "json", m,
        ])
    };
    // grace's organisation is not the scene's requester: refused, audited.
    let (rc, out) = submit("grace", "diabetes-2027");
    assert_eq!(rc, 3, "{out}");
    assert_eq!(lines(&out)[0]["code"], "KX-AUTH");
    assert!(lines(&out)[0]["audit_seq"].as_u64().is_some(), "{out}");
    let (rc, out) = submit("alice", "diabetes-2027");
    assert_eq!(rc, 0, "{out}");
    let sub = lines(&out).remove(0);
    let digest = sub["digest"].as_str().expect("digest").to_string();
    assert_eq!(sub["approved"], false);
    assert!(!sub["functions"].as_array().expect("functions").is_empty());
    // Submitting is not approving: the module is not usable yet.
    let approved = |who: &str| {
        let (rc, out) = kexin(&[
            "udf", "list", "--space", d, "--node", "h1", "--as", who, "--format", "json",
        ]);
        assert_eq!(rc, 0, "{out}");
        lines(&out).iter().any(|u| u["digest"] == digest.as_str())
    };
    assert!(!approved("carol"));
    let pending = |who: &str| {
        let (rc, out) = kexin(&[
            "udf", "pending", "--space", d, "--node", "h1", "--as", who, "--format", "json",
        ]);
        assert_eq!(rc, 0, "{out}");
        lines(&out)
    };
    // The holder sees it with its digest; another researcher does not.
    assert!(
        pending("carol")
            .iter()
            .any(|s| s["digest"] == digest.as_str() && s["submitted_by"] == "alice")
    );
    assert!(pending("bob").is_empty());
    let approve = |who: &str, digest: &str| {
        kexin(&[
            "udf",
            "approve",
            "--space",
            d,
            "--node",
            "h1",
            "--scene",
            "diabetes-2027",
            "--digest",
            digest,
            "--as",
            who,
            "--format",
            "json",
        ])
    };
    // A holder of another node, a researcher, a digest never submitted:
    // refused.
    assert_eq!(approve("holder-h2", &digest).0, 3);
    assert_eq!(approve("alice", &digest).0, 3);
    let (rc, out) = approve("carol", &"ab".repeat(32));
    assert_ne!(rc, 0, "{out}");
    assert_eq!(lines(&out)[0]["code"], "KX-UDF-MODULE");
    assert!(!approved("carol"));
    // carol approves: the module is approved, and the submission says so.
    let (rc, out) = approve("carol", &digest);
    assert_eq!(rc, 0, "{out}");
    assert_eq!(lines(&out)[0]["newly_approved"], true);
    assert!(approved("alice"));
    assert!(pending("alice").iter().all(|s| s["approved"] == true));
}
