//! Encrypted joint statistics with real node processes: the FHE-gated
//! release (TFHE) against the plaintext gate, and individuals' Prio3
//! contributions from `kexin contribute` to `kexin collect`.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use kexin::federation::{FromNode, ToNode};
use kexin::net::Link;
use kexin_engine::contribution::{self as kc, ContributionBody};
use kexin_engine::identity::{Signed, nonce, tag};
use kexin_engine::policy::Space;
use serde_json::Value;

use crate::support;

use crate::fixtures;

use support::nodes::{BIN, Federation, path};

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().expect("run kexin");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn json(text: &str) -> Value {
    serde_json::from_str(text.lines().next().unwrap_or_default())
        .unwrap_or_else(|_| panic!("no JSON in: {text}"))
}

/// In the 3 × 600-patient space of seed 11, women of 90 and over reach
/// `min_persons = 10` jointly and men do not: the gate has one cell to
/// release and one to suppress.
const GATED_SQL: &str = "SELECT sex, COUNT(DISTINCT id_card) AS patients, AVG(height_cm) AS mean_height, SUM(weight_kg) AS total_weight FROM patients WHERE age >= 90 GROUP BY sex";

#[test]
fn the_fhe_gate_releases_what_the_plaintext_gate_releases() {
    let mut f = Federation::new(3, 120, &[]);
    let d = f.dir.clone();
    let (code, out) = run(&["fhe", "keygen", "--space", path(&d), "--node", "h3"]);
    assert_eq!(code, 0, "{out}");
    // `evil` doubles at h1 and h3 and faults on every row at h2, for the
    // failed-execution check below.
    let unreachable = fixtures::hostile()
        .into_iter()
        .find(|(n, _)| *n == "unreachable")
        .unwrap()
        .1;
    for (n, module) in [
        ("h1", fixtures::doubler()),
        ("h2", unreachable),
        ("h3", fixtures::doubler()),
    ] {
        let file = d.join(format!("evil-{n}.wasm"));
        std::fs::write(&file, module).unwrap();
        for scene in ["joint-diabetes", "joint-diabetes-fhe"] {
            let (code, out) = run(&[
                "udf",
                "register",
                "--local",
                "--space",
                path(&d),
                "--scene",
                scene,
                "--node",
                n,
                path(&file),
            ]);
            assert_eq!(code, 0, "{out}");
        }
    }
    for n in ["h1", "h2", "h3"] {
        f.start(n, None);
    }
    // The same query under the secret-shared gate (joint-diabetes) and
    // under the FHE gate (joint-diabetes-fhe): same plan, same threshold.
    let (c1, plain) = f.federate("joint-diabetes", "h1,h2,h3", GATED_SQL);
    let (c2, fhe) = f.federate("joint-diabetes-fhe", "h1,h2,h3", GATED_SQL);
    assert_eq!((c1, c2), (0, 0), "{plain}\n{fhe}");
    assert_eq!(fhe["status"], "released");
    assert_eq!(fhe["rows"], plain["rows"]);
    assert_eq!(fhe["suppressed_groups"], plain["suppressed_groups"]);
    let suppressed = fhe["suppressed_groups"].as_u64().unwrap();
    assert!(
        suppressed > 0,
        "the query must have cells under the threshold"
    );
    assert!(!fhe["rows"].as_array().unwrap().is_empty());
    assert!(
        fhe["explanation"][0].as_str().unwrap().contains("FHE gate"),
        "{fhe}"
    );
    // Every node released the same rows under the same session.
    let session = fhe["session"].as_str().unwrap();
    let digests: Vec<Value> = ["h1", "h2", "h3"]
        .iter()
        .map(|n| {
            let e = f.entry(n, session);
            assert_eq!(e["decision"], "released");
            e["output_sha256"].clone()
        })
        .collect();
    assert!(digests.windows(2).all(|w| w[0] == w[1]));
    f.verify_logs(&["h1", "h2", "h3"]);

    // The key holder rotates its keys: the aggregator picks up the new
    // server key (a stale one would make the key holder refuse).
    let (code, out) = run(&["fhe", "keygen", "--space", path(&d), "--node", "h3"]);
    assert_eq!(code, 0, "{out}");
    let (code, again) = f.federate("joint-diabetes-fhe", "h1,h2,h3", GATED_SQL);
    assert_eq!(code, 0, "{again}");
    assert_eq!(again["rows"], plain["rows"]);

    // h2's execution fails (its module faults on every row): under either
    // gate the researcher gets a release with every cell suppressed, the
    // answer of a world where no cell reaches the threshold, not an abort
    // that only this world would show. h2 audits the cause.
    let failing = "SELECT sex, COUNT(evil(weight_kg)) AS n FROM patients GROUP BY sex";
    for scene in ["joint-diabetes", "joint-diabetes-fhe"] {
        let (code, v) = f.federate(scene, "h1,h2,h3", failing);
        assert_eq!(code, 0, "{scene}: {v}");
        assert_eq!(v["status"], "released", "{scene}: {v}");
        assert!(v["code"].is_null(), "{scene}: {v}");
        assert!(v["rows"].as_array().unwrap().is_empty(), "{scene}: {v}");
        assert_eq!(v["suppressed_groups"], 2, "{scene}: {v}");
        let session = v["session"].as_str().unwrap();
        for n in ["h1", "h2", "h3"] {
            let e = f.entry(n, session);
            assert_eq!(e["decision"], "released", "{scene} {n}: {e}");
            let want = if n == "h2" { Some("KX-UDF-TRAP") } else { None };
            assert_eq!(e["code"].as_str(), want, "{scene} {n}: {e}");
        }
        for r in v["nodes"].as_array().unwrap() {
            assert_eq!(r["decision"], "released", "{scene}: {v}");
            assert!(r["rule"].is_null(), "{scene}: {v}");
        }
    }

    // A public key that does not match the key holder's signed statement:
    // no node encrypts, nothing is released.
    let pk = d.join("fhe/h3/public.key");
    let mut bytes = std::fs::read(&pk).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&pk, bytes).unwrap();
    let (code, v) = f.federate("joint-diabetes-fhe", "h1,h2,h3", GATED_SQL);
    assert_eq!(code, 4, "{v}");
    assert_eq!(v["code"], "KX-FED-ABORT");
    assert!(v["rows"].as_array().unwrap().is_empty());
}

/// One person's report with a poisoned leader share: it decodes, so both
/// aggregators store it, but its validity proof fails at collection.
fn send_poisoned(space: &Space, person: &str, key: &ed25519_dalek::SigningKey, f: &Federation) {
    let c = space.scenes["wearable-steps"].contribution.clone().unwrap();
    let mut report = kc::vdaf(&c)
        .unwrap()
        .shard(&kc::context(&space.name, "wearable-steps"), 2)
        .unwrap();
    report.input_shares[0][3] ^= 1;
    let view = kexin_engine::registry::View::open(space).unwrap();
    for (i, node) in ["h1", "h2"].iter().enumerate() {
        let (node_key, _) = view.member_key(&format!("node-{node}")).unwrap();
        let mut link =
            Link::connect(&f.addr(node), key, &node_key, Duration::from_secs(10)).unwrap();
        let body = ContributionBody {
            space: space.name.clone(),
            scene: "wearable-steps".into(),
            person: person.into(),
            node: (*node).into(),
            report: hex::encode(report.nonce),
            public_share: kc::encode_b64(&report.public_share),
            input_share: kc::encode_b64(&report.input_shares[i]),
            nonce: nonce().unwrap(),
            time: kexin_engine::store::now_utc().1,
        };
        link.send_json(&ToNode::Contribute(
            Signed::sign(tag::CONTRIBUTE, body, key).unwrap(),
        ))
        .unwrap();
        assert!(matches!(
            link.recv_json::<FromNode>().unwrap(),
            FromNode::Accepted { .. }
        ));
    }
}

#[test]
fn individuals_contribute_and_only_a_full_batch_is_released() {
    let mut f = Federation::new(2, 30, &[]);
    let d = f.dir.clone();
    let space = Arc::new(Space::load(&d).unwrap());
    // Simulated wearable users with grants (certified before the nodes
    // start: nodes pin individuals' keys at start).
    let people = kexin::members::simulated_contributors(&space, 121, "wearable-steps").unwrap();
    f.start("h1", None);
    f.start("h2", None);
    let contribute = |who: &str, value: &str| {
        run(&[
            "contribute",
            "--space",
            path(&d),
            "--as",
            who,
            "--scene",
            "wearable-steps",
            "--value",
            value,
            "--format",
            "json",
        ])
    };
    // p00000 has no grant for the scene yet.
    let (code, out) = contribute("p00000", "5k-8k");
    assert_eq!(code, 3, "{out}");
    assert_eq!(json(&out)["code"], "KX-CONTRIB");
    let (code, out) = run(&[
        "consent",
        "grant",
        "--local",
        "--space",
        path(&d),
        "--as",
        "p00000",
        "--scene",
        "wearable-steps",
    ]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = contribute("p00000", "5k-8k");
    assert_eq!(code, 0, "{out}");
    assert_eq!(json(&out)["status"], "accepted");
    // One contribution per person and batch; values outside the scene's
    // buckets never leave the client.
    let (code, out) = contribute("p00000", "<2k");
    assert_eq!(code, 3, "{out}");
    assert!(json(&out)["rule"].as_str().unwrap().contains("already"));
    let (code, out) = contribute("p00001", "a lot");
    assert_eq!((code, json(&out)["code"].clone()), (3, "KX-CONTRIB".into()));

    let collect = || {
        let (code, out) = run(&[
            "collect",
            "--space",
            path(&d),
            "--scene",
            "wearable-steps",
            "--as",
            "alice",
            "--format",
            "json",
        ]);
        (code, json(&out))
    };
    // One report: under the minimum batch of 100, nothing is released.
    let (code, v) = collect();
    assert_eq!(code, 3, "{v}");
    assert_eq!(v["code"], "KX-BATCH");
    assert!(v.get("result").is_none());

    let bands = ["<2k", "2k-5k", "5k-8k", "8k-12k", ">=12k"];
    let mut expected = [0i64, 0, 1, 0, 0];
    for (i, (name, key)) in people[..120].iter().enumerate() {
        let o = kexin::contribute::contribute(&space, name, key, "wearable-steps", bands[i % 5])
            .unwrap();
        assert_eq!(o.status, kexin::federation::JointStatus::Accepted);
        expected[i % 5] += 1;
    }
    let (poisoner, pkey) = &people[120];
    send_poisoned(&space, poisoner, pkey, &f);

    let (code, v) = collect();
    assert_eq!(code, 0, "{v}");
    let r = &v["result"];
    assert_eq!(r["values"], serde_json::json!(expected));
    assert_eq!(r["reports"], 121);
    assert_eq!(r["rejected"], 1);
    assert_eq!(r["labels"], serde_json::json!(bands));
    // The batch is closed: a second collection has nothing to release.
    let (code, v) = collect();
    assert_eq!((code, v["code"].clone()), (3, "KX-BATCH".into()));

    // The audit logs name who contributed, never what.
    let entries = f.audit("h1");
    let mine: Vec<&Value> = entries
        .iter()
        .filter(|e| e["kind"] == "contribution" && e["actor"] == "p00000")
        .collect();
    assert_eq!(
        mine.iter()
            .map(|e| e["decision"].clone())
            .collect::<Vec<_>>(),
        ["refused", "accepted", "refused"]
    );
    for e in &entries {
        let text = e.to_string();
        assert!(
            !text.contains("5k-8k") && !text.contains("input_share"),
            "{text}"
        );
    }
    assert!(
        entries
            .iter()
            .any(|e| e["kind"] == "collection" && e["decision"] == "released")
    );
    f.verify_logs(&["h1", "h2"]);
}

#[test]
fn a_dp_sum_scene_releases_a_noisy_total_and_withholds_counts() {
    let mut f = Federation::new(2, 30, &[]);
    let d = f.dir.clone();
    let space = Arc::new(Space::load(&d).unwrap());
    let people = kexin::members::simulated_contributors(&space, 80, "hba1c-self-report").unwrap();
    f.start("h1", None);
    f.start("h2", None);
    let mut truth = 0i64;
    for (i, (name, key)) in people.iter().enumerate() {
        let v = 40 + (i as i64 * 7) % 50;
        truth += v;
        let o =
            kexin::contribute::contribute(&space, name, key, "hba1c-self-report", &v.to_string())
                .unwrap();
        assert_eq!(o.status, kexin::federation::JointStatus::Accepted);
    }
    let o = kexin::contribute::contribute(
        &space,
        &people[0].0,
        &people[0].1,
        "hba1c-self-report",
        "201",
    )
    .unwrap();
    assert_eq!(o.code, Some(kexin_engine::Code::Contribution));
    let alice = kexin::members::load_key(&d, "alice", None).unwrap();
    let out = kexin::contribute::collect(&space, "alice", &alice, "hba1c-self-report").unwrap();
    assert_eq!(
        out.status,
        kexin::federation::JointStatus::Released,
        "{out:?}"
    );
    let r = out.result.unwrap();
    assert_eq!(r.reports, None);
    let hw = r.half_width_95.unwrap();
    // 200/ε · ln 20 ≈ 599; three half-widths is a 1-in-8000 miss.
    assert!(
        (r.values[0] - truth).abs() as f64 <= 3.0 * hw,
        "{} vs {truth}",
        r.values[0]
    );
}
