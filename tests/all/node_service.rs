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
        .args(["audit", "verify", "--space", path(&f.dir), "--node", "h1"])
        .output()
        .expect("verify");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
