//! `kill -9` at random points while the `kexin` binary writes consents,
//! contracts and airlock approvals: everything a command acknowledged is
//! still there afterwards, and both audit logs verify.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use crate::support;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kexin_engine::consent::Verb;
use kexin_engine::node::{Node, Status};
use kexin_engine::policy::Space;
use kexin_engine::registry::View;

/// A small xorshift generator: the kill points need no cryptography, and
/// the seed is printed so a failure can be replayed.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Run `args`, SIGKILL it after `after` unless it finished; its stdout if it
/// exited successfully (an acknowledgement), else `None`.
fn run_killed(args: &[String], after: Duration) -> Option<String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kexin"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut out = String::new();
            use std::io::Read;
            child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            return status.success().then_some(out);
        }
        if start.elapsed() >= after {
            // Child::kill is SIGKILL on Unix: no handler, no cleanup.
            let _ = child.kill();
            let status = child.wait().unwrap();
            let mut out = String::new();
            use std::io::Read;
            let _ = child.stdout.take().unwrap().read_to_string(&mut out);
            return status.success().then_some(out);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_kill_9() {
    let dir = support::generated_space(2, 300, 9);
    let sp = Arc::new(Space::load(&dir).unwrap());
    // Held results to approve.
    let held: Vec<u64> = {
        let node = Node::open(Arc::clone(&sp), "h1").await.unwrap();
        let key = kexin::members::load_key(&dir, "alice", None).unwrap();
        let mut ids = Vec::new();
        for i in 0..20 {
            let sql = format!("SELECT sex, count(*) FROM patients WHERE age > {i} GROUP BY sex");
            let env =
                kexin::members::query(&sp, "h1", "alice", &key, "diabetes-review", None, &sql)
                    .unwrap();
            let o = node.query_signed(&env).await;
            assert_eq!(o.status, Status::Held);
            ids.push(o.airlock.unwrap());
        }
        ids
    };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("kill schedule seed {seed}");
    let mut rng = Rng(seed);
    let space = dir.to_str().unwrap().to_string();
    let s = |x: &str| x.to_string();

    let mut consents: Vec<(u64, Verb)> = Vec::new();
    let mut contracts: BTreeSet<String> = BTreeSet::new();
    let mut approved: BTreeSet<u64> = BTreeSet::new();
    let mut killed = 0;
    let mut next_held = held.iter();
    let mut grant = true;
    // Per kind: how long an uninterrupted run took, and how many ran.
    // Every fifth command of a kind runs to completion (so each kind is
    // acknowledged), the others are killed at a random point within one
    // and a half times that duration.
    let mut took = [Duration::ZERO; 3];
    let mut runs = [0u32; 3];
    for i in 0..60u64 {
        let kind_of = (i % 3) as usize;
        let after = if runs[kind_of] % 5 == 0 {
            Duration::from_secs(120)
        } else {
            let span = (took[kind_of].as_millis() as u64 * 3 / 2).max(2);
            Duration::from_millis(rng.below(span))
        };
        let (kind, args) = match i % 3 {
            0 => {
                let action = if grant { "grant" } else { "revoke" };
                (
                    0usize,
                    vec![
                        s("consent"),
                        s(action),
                        s("--local"),
                        s("--space"),
                        space.clone(),
                        s("--as"),
                        s("p00001"),
                        s("--scene"),
                        s("diabetes-consent"),
                    ],
                )
            }
            1 => (
                1,
                vec![
                    s("contract"),
                    s("offer"),
                    s("--local"),
                    s("--space"),
                    space.clone(),
                    s("--node"),
                    s("h1"),
                    s("--as"),
                    s("carol"),
                    s("--requester"),
                    s("alice"),
                    s("--scene"),
                    s("diabetes-2027"),
                    s("--max-queries"),
                    (i + 1).to_string(),
                    s("--format"),
                    s("json"),
                ],
            ),
            _ => {
                let Some(id) = next_held.next() else { continue };
                (
                    2,
                    vec![
                        s("airlock"),
                        s("approve"),
                        s("--local"),
                        s("--space"),
                        space.clone(),
                        s("--node"),
                        s("h1"),
                        s("--as"),
                        s("carol"),
                        s("--id"),
                        id.to_string(),
                    ],
                )
            }
        };
        let started = Instant::now();
        let result = run_killed(&args, after);
        if runs[kind] % 5 == 0 {
            took[kind] = started.elapsed();
        }
        runs[kind] += 1;
        let Some(out) = result else {
            killed += 1;
            continue;
        };
        match kind {
            0 => {
                // "recorded grant of … as consent #N (…)"
                let n: u64 = out
                    .split("as consent #")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
                    .expect(&out);
                consents.push((n, if grant { Verb::Grant } else { Verb::Revoke }));
                grant = !grant;
            }
            1 => {
                let v: serde_json::Value = serde_json::from_str(out.trim()).expect(&out);
                contracts.insert(v["id"].as_str().unwrap().to_string());
            }
            _ => {
                let at = args.iter().position(|a| a == "--id").expect("--id");
                let id: u64 = args[at + 1].parse().unwrap();
                assert!(out.contains("1 of 2 approvals"), "{out}");
                approved.insert(id);
            }
        }
    }
    println!(
        "{killed} commands killed; acknowledged: {} consents, {} contracts, {} approvals",
        consents.len(),
        contracts.len(),
        approved.len()
    );
    assert!(
        !consents.is_empty() && !contracts.is_empty() && !approved.is_empty(),
        "each kind of write was acknowledged at least once"
    );

    // Everything acknowledged is there, with what was acknowledged.
    let view = View::open(&sp).unwrap();
    let stored = view.consents(Some("p00001"), None).unwrap();
    for (seq, action) in &consents {
        let r = stored
            .iter()
            .find(|r| r.seq == *seq)
            .expect("acknowledged consent lost");
        assert_eq!(r.action, *action);
    }
    let node = Node::open(Arc::clone(&sp), "h1").await.unwrap();
    let have: BTreeSet<String> = node
        .contracts()
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert!(contracts.is_subset(&have), "acknowledged contract lost");
    for h in node.airlock().unwrap() {
        if approved.contains(&h.id) {
            assert_eq!(h.approvals, ["carol"], "acknowledged approval lost");
        }
    }
    // The node restarts cleanly and both logs verify.
    kexin_engine::store::verify(&dir.join("h1"), None).unwrap();
    kexin_engine::store::verify(&kexin_engine::registry::dir(&dir), None).unwrap();
    let o = support::ask(
        &node,
        "diabetes-2027",
        "alice",
        "SELECT count(*) FROM patients",
    )
    .await;
    assert_eq!(o.status, Status::Released);
    let _ = support::open_h1(&dir).await;
}
