//! Federation with real processes: three `kexin node` servers on loopback,
//! the researcher's `kexin federate` and `kexin psi`, and a misbehaving
//! party (an in-test impostor holding node h3's key) that crashes, sends
//! garbage, replays, forges its sender index or sends invalid encodings.
//!
//! Every fault must end with no release anywhere and an `aborted` audit
//! entry, under the same session digest, at the honest nodes.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use datafusion::prelude::{ParquetReadOptions, SessionContext};
use kexin::federation::{FromNode, ToNode};
use kexin::net::{Link, MPC};
use kexin_engine::federated::session_id;
use kexin_engine::identity::tag;
use kexin_engine::policy::Space;
use serde_json::Value;

use crate::support;

use support::nodes::{BIN, Federation, path};

/// Pooled plaintext reference: the same SQL shape run by plain DataFusion
/// over every node's file, each node's part computed separately (persons
/// are counted per node) and summed. The independent reference, so plain
/// DataFusion on purpose.
#[allow(
    clippy::disallowed_methods,
    reason = "the pooled plaintext reference: plain DataFusion over every node's files, outside the engine"
)]
async fn pooled(dir: &Path, nodes: &[&str], per_node: &str, combine: &str) -> Vec<Vec<String>> {
    let ctx = SessionContext::new();
    let mut parts = Vec::new();
    for n in nodes {
        for t in ["admissions", "patients"] {
            let file = dir.join(n).join(format!("{t}.parquet"));
            ctx.register_parquet(
                format!("{t}_{n}"),
                path(&file),
                ParquetReadOptions::default(),
            )
            .await
            .expect("register");
        }
        parts.push(per_node.replace("{n}", n));
    }
    let sql = combine.replace("{parts}", &parts.join(" UNION ALL "));
    let batches = ctx
        .sql(&sql)
        .await
        .expect("plan")
        .collect()
        .await
        .expect("run");
    let mut rows = Vec::new();
    for b in &batches {
        for r in 0..b.num_rows() {
            rows.push(
                (0..b.num_columns())
                    .map(|c| {
                        datafusion::arrow::util::display::array_value_to_string(b.column(c), r)
                            .expect("display")
                    })
                    .collect(),
            );
        }
    }
    rows
}

#[test]
fn joint_result_equals_the_pooled_computation_and_is_audited_alike() {
    let f = Federation::new(3, 10, &["h1", "h2", "h3"]);
    let sql = "SELECT department, COUNT(*) AS n, COUNT(DISTINCT id_card) AS persons, \
               SUM(length_of_stay) AS days, AVG(cost) AS mean_cost, VAR(length_of_stay) AS var_los, \
               COUNT(diagnosis) AS coded FROM admissions GROUP BY department";
    let (code, out) = f.federate("joint-diabetes", "h1,h2,h3", sql);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["status"], "released");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // Per node: counts, distinct persons, the sums the statistics need
    // (cost clamped to its bounds, as the policy does at the scan).
    let reference = rt.block_on(pooled(
        &f.dir,
        &["h1", "h2", "h3"],
        "SELECT department, COUNT(*) AS n, COUNT(DISTINCT id_card) AS p, \
         SUM(CAST(length_of_stay AS DOUBLE)) AS s, SUM(CAST(length_of_stay AS DOUBLE) * CAST(length_of_stay AS DOUBLE)) AS s2, \
         SUM(LEAST(GREATEST(CAST(cost AS DOUBLE), 0.0), 200000.0)) AS c, COUNT(cost) AS cn, \
         COUNT(diagnosis) AS dx \
         FROM admissions_{n} GROUP BY department",
        "SELECT department, SUM(n), SUM(p), SUM(s), SUM(c) / SUM(cn), \
         (SUM(s2) - SUM(s) * SUM(s) / SUM(n)) / (SUM(n) - 1), SUM(dx) \
         FROM ({parts}) GROUP BY department HAVING SUM(p) >= 10 ORDER BY department",
    ));
    let rows = out["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), reference.len(), "same released cells");
    for (got, want) in rows.iter().zip(&reference) {
        assert_eq!(got[0].as_str().unwrap(), want[0], "department");
        assert_eq!(
            got[1].as_i64().unwrap().to_string(),
            want[1],
            "COUNT(*) exact"
        );
        assert_eq!(
            got[2].as_i64().unwrap().to_string(),
            want[2],
            "persons exact"
        );
        let f64_of = |s: &str| s.parse::<f64>().expect("number");
        assert_eq!(got[3].as_f64().unwrap(), f64_of(&want[3]), "SUM exact");
        let mean = f64_of(&want[4]);
        assert!(
            (got[4].as_f64().unwrap() - mean).abs() <= 0.0051,
            "AVG {} vs {mean}",
            got[4]
        );
        let var = f64_of(&want[5]);
        assert!(
            (got[5].as_f64().unwrap() - var).abs() <= 0.0051,
            "VAR {} vs {var}",
            got[5]
        );
        assert_eq!(
            got[6].as_i64().unwrap().to_string(),
            want[6],
            "COUNT(col) exact"
        );
    }
    // Every node logged the release under the same session digest and
    // the same output digest.
    let session = out["session"].as_str().expect("session");
    let digests: Vec<Value> = ["h1", "h2", "h3"]
        .iter()
        .map(|n| {
            let e = f.entry(n, session);
            assert_eq!(e["kind"], "federated");
            assert_eq!(e["decision"], "released");
            e["output_sha256"].clone()
        })
        .collect();
    assert!(digests.windows(2).all(|w| w[0] == w[1]) && digests[0].is_string());
    // A local query on the federated scene is refused: no node answers
    // its own part.
    let local = Command::new(BIN)
        .args([
            "query",
            "--local",
            "--space",
            path(&f.dir),
            "--node",
            "h1",
            "--scene",
            "joint-diabetes",
            "--as",
            "alice",
            "--format",
            "json",
            "SELECT department, COUNT(*) FROM admissions GROUP BY department",
        ])
        .output()
        .expect("query");
    let v: Value = serde_json::from_slice(&local.stdout).expect("json");
    assert_eq!(v["code"], "KX-SCENE");
    f.verify_logs(&["h1", "h2", "h3"]);
}

#[test]
fn dp_joint_result_lies_within_its_stated_interval() {
    let f = Federation::new(3, 10, &["h1", "h2", "h3"]);
    let (code, out) = f.federate_as(
        "erin",
        "joint-diabetes-dp",
        "h1,h2,h3",
        "SELECT sex, COUNT(DISTINCT id_card) AS persons, AVG(height_cm) AS height FROM patients GROUP BY sex",
    );
    assert_eq!(code, 0, "{out}");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let reference = rt.block_on(pooled(
        &f.dir,
        &["h1", "h2", "h3"],
        "SELECT sex, COUNT(DISTINCT id_card) AS p, SUM(LEAST(GREATEST(CAST(height_cm AS DOUBLE), 40.0), 230.0)) AS s, COUNT(height_cm) AS c FROM patients_{n} GROUP BY sex",
        "SELECT sex, SUM(p), SUM(s) / SUM(c) FROM ({parts}) GROUP BY sex ORDER BY sex",
    ));
    let rows = out["rows"].as_array().expect("rows");
    let acc = out["accuracy"].as_array().expect("accuracy");
    assert_eq!(rows.len(), 2);
    for ((row, a), want) in rows.iter().zip(acc).zip(&reference) {
        assert_eq!(row[0].as_str().unwrap(), want[0]);
        for col in [1, 2] {
            let exact: f64 = want[col].parse().expect("number");
            let [lo, hi] = [
                a[col]["interval"][0].as_f64().unwrap(),
                a[col]["interval"][1].as_f64().unwrap(),
            ];
            // The 95% interval, widened threefold: a miss is a ~1e-4 event.
            let (mid, half) = ((lo + hi) / 2.0, (hi - lo) / 2.0);
            assert!(
                (exact - mid).abs() <= 3.0 * half + 1e-9,
                "{}: exact {exact} vs [{lo}, {hi}]",
                want[0]
            );
        }
    }
    assert!(rows.iter().all(|r| r[1].as_i64().unwrap() != 0));
    // ε was charged at every node.
    let session = out["session"].as_str().expect("session");
    for n in ["h1", "h2", "h3"] {
        assert_eq!(f.entry(n, session)["epsilon"], 0.5);
    }
}

#[test]
fn two_parties_or_a_missing_node_release_nothing() {
    let mut f = Federation::new(3, 3, &["h1", "h2", "h3"]);
    let sql = "SELECT department, COUNT(*) AS n FROM admissions GROUP BY department";
    let (code, out) = f.federate("joint-diabetes", "h1,h2", sql);
    assert_eq!(code, 3, "{out}");
    assert_eq!(out["code"], "KX-FED");
    assert!(out["rows"].as_array().unwrap().is_empty());
    let session = out["session"].as_str().unwrap();
    for n in ["h1", "h2"] {
        assert_eq!(f.entry(n, session)["decision"], "refused");
    }
    // h3 killed: the others are cancelled and audit the abort.
    f.kill("h3");
    let (code, out) = f.federate("joint-diabetes", "h1,h2,h3", sql);
    assert_eq!(code, 4, "{out}");
    assert_eq!(out["status"], "aborted");
    assert_eq!(out["code"], "KX-FED-ABORT");
    assert!(out["rows"].as_array().unwrap().is_empty());
    let session = out["session"].as_str().unwrap();
    for n in ["h1", "h2"] {
        let e = f.entry(n, session);
        assert_eq!(e["decision"], "aborted");
        assert_eq!(e["code"], "KX-FED-ABORT");
        assert_eq!(e["rows_released"], 0);
    }
    // A scene that is not federated is refused by the nodes that answer.
    let (code, out) = f.federate("diabetes-2027", "h1,h2,h3", sql);
    assert_eq!(code, 3, "{out}");
    assert_eq!(out["code"], "KX-FED");
    f.verify_logs(&["h1", "h2"]);
}

/// After the researcher's connection, the impostor accepts the honest
/// nodes' peer links and swallows what they send.
/// It stops listening once `stop` is set (so the next impostor can bind).
fn sink(
    listener: TcpListener,
    cfg: Arc<rustls::ServerConfig>,
    pins: Arc<kexin::net::LivePins>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((tcp, _)) => {
                    tcp.set_nonblocking(false).expect("blocking");
                    let (cfg, pins) = (Arc::clone(&cfg), Arc::clone(&pins));
                    std::thread::spawn(move || {
                        if let Ok((mut l, _)) =
                            Link::accept(tcp, cfg, &pins, Duration::from_secs(10))
                        {
                            while l.recv().is_ok() {}
                        }
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    })
}

#[test]
fn a_federated_scene_is_answered_by_all_of_its_nodes_every_time() {
    // With four hospitals, a release over h1..h3 and another over h1..h4
    // would differ by h4's totals: only the scene's full node set answers.
    let f = Federation::new(4, 5, &["h1", "h2", "h3", "h4"]);
    let sql = "SELECT department, COUNT(*) AS n FROM admissions GROUP BY department";
    let (code, out) = f.federate("joint-diabetes", "h1,h2,h3", sql);
    assert_eq!(code, 3, "{out}");
    assert_eq!(out["code"], "KX-FED");
    assert!(out["rule"].as_str().unwrap().contains("all of its nodes"));
    let (code, out) = f.federate("joint-diabetes", "h4,h2,h3,h1", sql);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out["nodes"].as_array().unwrap().len(), 4);
}

#[test]
fn idle_unauthenticated_connections_do_not_hold_a_node() {
    // Rounds may last 30 s here, but a TLS handshake only 5 s: a flood of
    // idle TCP connections (more than a node serves at once) is cut off
    // by then, and the nodes federate again.
    let f = Federation::new(3, 30, &["h1", "h2", "h3"]);
    let mut idle = Vec::new();
    for n in ["h1", "h2", "h3"] {
        for _ in 0..300 {
            if let Ok(s) = std::net::TcpStream::connect_timeout(
                &f.addr(n).parse().unwrap(),
                Duration::from_secs(2),
            ) {
                idle.push(s);
            }
        }
    }
    assert!(idle.len() > 256, "the flood must exceed a node's slots");
    std::thread::sleep(Duration::from_secs(7));
    let sql = "SELECT department, COUNT(*) AS n FROM admissions GROUP BY department";
    let (code, out) = f.federate("joint-diabetes", "h1,h2,h3", sql);
    assert_eq!(code, 0, "{out}");
    drop(idle);
}

/// How the impostor misbehaves after the researcher's start signal.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// Goes away mid-round (as a killed process does).
    Crash,
    /// Sends bytes that are no protocol message.
    Garbage,
    /// Sends its round-0 share twice.
    Replay,
    /// Sends a share that is not a canonical scalar.
    InvalidScalar,
    /// Claims to be party 0.
    ForgedSender,
}

/// Stand in for `victim` (listening on its federation address with its
/// key): relay the researcher's request to the real node (running
/// elsewhere) so the plan digests agree, then misbehave.
fn impostor(
    f: &Federation,
    victim: &str,
    real: String,
    fault: Fault,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let space = Space::load(&f.dir).expect("space");
    let pins = Arc::new(kexin::net::LivePins::fixed(
        kexin::federation::pins(&space).expect("pins"),
    ));
    let me = kexin::members::load_key(&f.dir, &format!("node-{victim}"), None).expect("key");
    let alice = kexin::members::load_key(&f.dir, "alice", None).expect("alice");
    let listener = TcpListener::bind(f.addr(victim)).expect("bind the victim's address");
    let peers: Vec<String> = ["h1", "h2"].iter().map(|n| f.addr(n)).collect();
    let peer_keys: Vec<_> = ["h1", "h2"]
        .iter()
        .map(|n| {
            kexin::members::load_key(&f.dir, &format!("node-{n}"), None)
                .expect("peer key")
                .verifying_key()
        })
        .collect();
    std::thread::spawn(move || {
        let t = Duration::from_secs(10);
        let cfg = kexin::net::server_config(&me, Arc::clone(&pins)).expect("tls");
        // The researcher's request; the real nodes' witnessing (they show
        // their checkpoints to this address every few seconds) may come
        // first and is dropped.
        let (mut researcher, env) = loop {
            let (tcp, _) = listener.accept().expect("accept");
            let Ok((mut link, _)) = Link::accept(tcp, Arc::clone(&cfg), &pins, t) else {
                continue;
            };
            if let Ok(ToNode::Federate(env)) = link.recv_json::<ToNode>() {
                break (link, env);
            }
        };
        let sunk = sink(listener, cfg, pins, Arc::clone(&stop));
        let session = session_id(tag::FEDERATE, &env).expect("session");
        let mut real_link =
            Link::connect(&real, &alice, &me.verifying_key(), t).expect("reach the real node");
        real_link.send_json(&ToNode::Federate(env)).expect("relay");
        let ready: FromNode = real_link.recv_json().expect("ready");
        let FromNode::Ready { len, .. } = ready.clone() else {
            panic!("real node refused: {ready:?}")
        };
        researcher.send_json(&ready).expect("relay ready");
        let go: ToNode = researcher.recv_json().expect("go");
        assert!(matches!(go, ToNode::Go));
        drop(real_link);
        if fault == Fault::Crash {
            drop(researcher);
            sunk.join().expect("sink");
            return;
        }
        drop(researcher);
        let mut agg = kexin_mpc::aggregate::Aggregation::new(session, 2, 3, len).expect("agg");
        let zeros = vec![kexin_mpc::share::encode_int(0).expect("zero"); len];
        let shares = agg.share(&zeros).expect("share");
        for (i, (addr, key)) in peers.iter().zip(&peer_keys).enumerate() {
            let mut link = Link::connect(addr, &me, key, t).expect("peer link");
            let (_, m) = shares
                .iter()
                .find(|(to, _)| *to as usize == i)
                .expect("share for peer");
            let mut bytes = m.encode();
            match fault {
                Fault::Garbage => bytes = b"\x07not a kexin message at all".to_vec(),
                Fault::InvalidScalar => {
                    let n = bytes.len();
                    bytes[n - 32..].copy_from_slice(&[0xff; 32]);
                }
                Fault::ForgedSender => bytes[37] = 0,
                _ => {}
            }
            link.send(MPC, &bytes).expect("send");
            if fault == Fault::Replay {
                link.send(MPC, &bytes).expect("replay");
            }
            // Keep the link open until the honest nodes have decided.
            std::mem::forget(link);
        }
        sunk.join().expect("sink");
    })
}

#[test]
fn misbehaving_parties_abort_the_round_with_no_release() {
    let mut f = Federation::new(3, 3, &["h1", "h2"]);
    let real = format!("127.0.0.1:{}", f.ports[3]);
    f.start("h3", Some(&real));
    let sql =
        "SELECT department, COUNT(*) AS n, SUM(cost) AS cost FROM admissions GROUP BY department";
    for (fault, rule) in [
        (Fault::Crash, "timed out"),
        (Fault::Garbage, "malformed"),
        (Fault::Replay, "replayed"),
        (Fault::InvalidScalar, "invalid share encoding"),
        (Fault::ForgedSender, "another party's index"),
    ] {
        let stop = Arc::new(AtomicBool::new(false));
        let rogue = impostor(&f, "h3", real.clone(), fault, Arc::clone(&stop));
        let (code, out) = f.federate("joint-diabetes", "h1,h2,h3", sql);
        stop.store(true, Ordering::SeqCst);
        assert_eq!(code, 4, "{fault:?}: {out}");
        assert_eq!(out["status"], "aborted", "{fault:?}");
        assert!(
            out["rows"].as_array().unwrap().is_empty(),
            "{fault:?}: nothing released"
        );
        let session = out["session"].as_str().unwrap();
        for n in ["h1", "h2"] {
            let e = f.entry(n, session);
            assert_eq!(e["decision"], "aborted", "{fault:?} at {n}");
            assert!(
                e["rule"].as_str().unwrap().contains(rule),
                "{fault:?} at {n}: {}",
                e["rule"]
            );
            assert!(e["output_sha256"].is_null());
        }
        // The real h3 never got the start signal: it aborted too.
        assert_eq!(f.entry("h3", session)["decision"], "aborted", "{fault:?}");
        rogue.join().expect("impostor");
    }
    f.verify_logs(&["h1", "h2", "h3"]);
}

#[test]
fn psi_counts_the_shared_cohort_and_rejects_invalid_points() {
    // h3 takes no part in the PSI but records its charge (one ledger).
    let mut f = Federation::new(3, 3, &["h1", "h2", "h3"]);
    let out = f.psi(&["--format", "json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    // Hospital h treats persons [h·0.85·N, h·0.85·N + N): with N = 600,
    // h1 and h2 share 90 persons.
    let [lo, hi] = [
        v["interval"][0].as_f64().unwrap(),
        v["interval"][1].as_f64().unwrap(),
    ];
    let (mid, half) = ((lo + hi) / 2.0, (hi - lo) / 2.0);
    assert!((90.0 - mid).abs() <= 3.0 * half, "90 vs [{lo}, {hi}]");
    let session = v["session"].as_str().unwrap();
    assert_eq!(f.entry("h1", session)["kind"], "psi");
    assert_eq!(f.entry("h1", session)["rows_released"], 1);
    assert_eq!(f.entry("h2", session)["rows_released"], 0);

    // --mode sum: h2's heights summed over the persons both hold, against
    // the plaintext join of the two files.
    let out = f.psi(&["--mode", "sum", "--column", "height_cm", "--format", "json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let exact = rt.block_on(pooled(
        &f.dir,
        &["h1", "h2"],
        "SELECT 1",
        "SELECT SUM(LEAST(GREATEST(CAST(b.height_cm AS DOUBLE), 40.0), 230.0)) FROM patients_h2 b \
         WHERE b.id_card IN (SELECT id_card FROM patients_h1)",
    ));
    let exact: f64 = exact[0][0].parse().expect("number");
    let s = &v["sum"];
    assert_eq!(s["column"], "height_cm");
    let [lo, hi] = [
        s["interval"][0].as_f64().unwrap(),
        s["interval"][1].as_f64().unwrap(),
    ];
    let (mid, half) = ((lo + hi) / 2.0, (hi - lo) / 2.0);
    assert!((exact - mid).abs() <= 3.0 * half, "{exact} vs [{lo}, {hi}]");
    let session = v["session"].as_str().unwrap();
    for n in ["h1", "h2"] {
        assert_eq!(
            f.entry(n, session)["rows_released"],
            1,
            "{n} released one value"
        );
        assert_eq!(f.entry(n, session)["epsilon"], 0.5);
    }
    // A column without bounds is refused before any point moves.
    let out = f.psi(&["--mode", "sum", "--column", "region", "--format", "json"]);
    assert_eq!(out.status.code(), Some(3));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["code"], "KX-DP-BOUNDS");

    // An impostor for h2 that sends an invalid curve point (RFC 9496: a
    // non-canonical field element) instead of its blinded set.
    let real = format!("127.0.0.1:{}", f.ports[3]);
    f.kill("h2");
    f.start("h2", Some(&real));
    let space = Space::load(&f.dir).expect("space");
    let pins = Arc::new(kexin::net::LivePins::fixed(
        kexin::federation::pins(&space).expect("pins"),
    ));
    let me = kexin::members::load_key(&f.dir, "node-h2", None).expect("key");
    // The PSI request is erin's (the DP scene's requester): relay it as her.
    let erin = kexin::members::load_key(&f.dir, "erin", None).expect("erin");
    let h1 = kexin::members::load_key(&f.dir, "node-h1", None)
        .expect("h1")
        .verifying_key();
    let listener = TcpListener::bind(f.addr("h2")).expect("bind");
    let h1_addr = f.addr("h1");
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let rogue = std::thread::spawn(move || {
        let t = Duration::from_secs(10);
        let cfg = kexin::net::server_config(&me, Arc::clone(&pins)).expect("tls");
        let (tcp, _) = listener.accept().expect("accept");
        let (mut researcher, _) = Link::accept(tcp, Arc::clone(&cfg), &pins, t).expect("handshake");
        let sunk = sink(listener, cfg, pins, stop2);
        let ToNode::Psi(env) = researcher.recv_json().expect("request") else {
            panic!("psi")
        };
        let session = session_id(tag::PSI, &env).expect("session");
        let mut real_link = Link::connect(&real, &erin, &me.verifying_key(), t).expect("real");
        real_link.send_json(&ToNode::Psi(env)).expect("relay");
        let ready: FromNode = real_link.recv_json().expect("ready");
        researcher.send_json(&ready).expect("relay ready");
        let _go: ToNode = researcher.recv_json().expect("go");
        let mut link = Link::connect(&h1_addr, &me, &h1, t).expect("peer");
        // 2^255 − 1: not a canonical encoding.
        let mut bad = [0xffu8; 32];
        bad[31] = 0x7f;
        let m = kexin_mpc::message::Message {
            session,
            round: 0,
            sender: 1,
            payload: bad.repeat(3),
        };
        link.send(MPC, &m.encode()).expect("send");
        drop(researcher);
        sunk.join().expect("sink");
        drop(link);
    });
    let out = f.psi(&["--format", "json"]);
    stop.store(true, Ordering::SeqCst);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(v.get("value").is_none(), "nothing released: {v}");
    let e = f.entry("h1", v["session"].as_str().unwrap());
    assert_eq!(e["decision"], "aborted");
    assert!(
        e["rule"]
            .as_str()
            .unwrap()
            .contains("invalid group element"),
        "{e}"
    );
    rogue.join().expect("rogue");
}

/// `kexin query` on one node as erin under `diabetes-dp` (JSON outcome).
fn dp_query(f: &Federation, node: &str, i: usize) -> Value {
    let out = Command::new(BIN)
        .args([
            "query",
            "--local",
            "--space",
            path(&f.dir),
            "--node",
            node,
            "--scene",
            "diabetes-dp",
            "--as",
            "erin",
            "--format",
            "json",
            &format!("SELECT sex, count(*) FROM patients WHERE age > {i} GROUP BY sex"),
        ])
        .output()
        .expect("query");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "query printed no JSON: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// One privacy budget per requester over every node: a charge made at one
/// node is in every node's ledger before that node computes, so spending at
/// h1 and h2 uses up what h3 may answer; a node that cannot reach all of
/// its peers refuses instead of spending a budget it cannot account for.
#[test]
fn one_dp_budget_across_all_nodes() {
    let mut f = Federation::new(3, 5, &["h1", "h2"]);
    // h3 is down: the charge cannot be recorded everywhere.
    let v = dp_query(&f, "h1", 0);
    assert_eq!(v["code"], "KX-DP-BUDGET", "{v}");
    assert!(v["rule"].as_str().unwrap().contains("unreachable"), "{v}");
    assert!(v["rows"].as_array().unwrap().is_empty());
    f.start("h3", None);
    // h2 accepted that charge before h3 failed: the ledger over-counts by
    // one query (never under-counts). diabetes-dp allows ε 1.0 at 0.1 per
    // query, so 9 more releases remain, wherever they are asked.
    let mut released = 0;
    let mut i = 1;
    let mut refused_at = Vec::new();
    while refused_at.len() < 3 && i < 40 {
        let node = ["h1", "h2", "h3"][i % 3];
        let v = dp_query(&f, node, i);
        match v["status"].as_str() {
            Some("released") => {
                assert!(refused_at.is_empty(), "released after a refusal: {v}");
                released += 1;
            }
            _ => {
                assert_eq!(v["code"], "KX-DP-BUDGET", "{v}");
                refused_at.push(node);
            }
        }
        i += 1;
    }
    assert_eq!(released, 9, "one budget of ten queries over three nodes");
    assert_eq!(refused_at.len(), 3, "every node refuses once it is spent");
    // Every node's ledger holds every charge.
    for n in ["h1", "h2", "h3"] {
        let out = Command::new(BIN)
            .args([
                "budget",
                "show",
                "--space",
                path(&f.dir),
                "--node",
                n,
                "--as",
                "erin",
                "--scene",
                "diabetes-dp",
                "--format",
                "json",
            ])
            .output()
            .expect("budget show");
        let b: Value = serde_json::from_slice(&out.stdout).expect("json");
        let spent = b["epsilon_spent"].as_f64().unwrap();
        assert!(spent >= 0.9 - 1e-9, "{n}: {b}");
        assert!(
            b["epsilon_remaining"].as_f64().unwrap() <= 0.1 + 1e-9,
            "{n}: {b}"
        );
        assert_eq!(b["org"], "org:hubei-cdc");
    }
    // The replicated charges are audited where they were recorded, with the
    // node they came from.
    let from_h1 = f
        .audit("h3")
        .into_iter()
        .filter(|e| e["kind"] == "budget-charge" && e["charged_by"] == "h1")
        .count();
    assert!(from_h1 >= 3, "{from_h1} charges from h1 in h3's log");
    f.verify_logs(&["h1", "h2", "h3"]);
}

fn kexin_cmd(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().expect("run kexin")
}

/// Truncating a node's log and copying an older signed checkpoint into its
/// head passes the node's own verification; the checkpoints its peers
/// witnessed catch it, and the peers refuse to witness the older one.
#[test]
fn witnesses_catch_a_truncated_log() {
    let f = Federation::new(3, 5, &["h1", "h2", "h3"]);
    let dir = path(&f.dir);
    for i in 0..3 {
        let sql = format!("SELECT sex, count(*) FROM patients WHERE age > {i} GROUP BY sex");
        let out = kexin_cmd(&[
            "query",
            "--local",
            "--space",
            dir,
            "--node",
            "h1",
            "--scene",
            "diabetes-2027",
            "--as",
            "alice",
            &sql,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let out = kexin_cmd(&[
        "audit", "witness", "--space", dir, "--node", "h1", "--format", "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let answers: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(answers.len(), 2);
    assert!(
        answers.iter().all(|a| a["cosigned"].is_string()),
        "{answers:?}"
    );
    let verify = |witnesses: bool| {
        let mut args = vec!["audit", "verify", "--local", "--space", dir, "--node", "h1"];
        if witnesses {
            args.push("--witnesses");
        }
        kexin_cmd(&args)
    };
    assert!(verify(true).status.success());

    // The attack: drop the last two entries and their checkpoints, and put
    // the checkpoint that matches what is left back as the head.
    let db = f.dir.join("h1/kexin.db");
    let conn = rusqlite::Connection::open(&db).expect("db");
    let n: i64 = conn
        .query_row("SELECT max(seq) FROM audit", [], |r| r.get(0))
        .expect("size");
    let keep = n - 2;
    let head: String = conn
        .query_row("SELECT note FROM checkpoint WHERE size = ?1", [keep], |r| {
            r.get(0)
        })
        .expect("older checkpoint");
    conn.execute("DELETE FROM audit WHERE seq > ?1", [keep])
        .expect("truncate");
    conn.execute("DELETE FROM checkpoint WHERE size > ?1", [keep])
        .expect("truncate");
    drop(conn);
    std::fs::write(f.dir.join("h1/audit.head"), head).expect("head");

    // Alone, the log looks whole ...
    let alone = verify(false);
    assert!(
        alone.status.success(),
        "{}",
        String::from_utf8_lossy(&alone.stdout)
    );
    // ... but not to the witnesses.
    let witnessed = verify(true);
    assert_eq!(witnessed.status.code(), Some(5));
    let text = String::from_utf8_lossy(&witnessed.stdout);
    assert!(
        text.contains("witnessed by h2") && text.contains("rolled back"),
        "{text}"
    );
    // And they will not take the older checkpoint as the latest.
    let again = kexin_cmd(&["audit", "witness", "--space", dir, "--node", "h1"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stdout).contains("rolled back"));
}
