//! Gated query vs plain DataFusion on the same Parquet file.
//!
//! By default a small space is generated (1 hospital, 20,000 patients, about
//! 70,000 admissions). Set `KEXIN_BENCH_SPACE` to a space made by `kexin gen`
//! (for example the 10M-row one that `benches/compare.sh` builds) to measure
//! that instead. The gated side is the whole path a researcher pays for:
//! parse, checks, rewrite, masked execution, gate and the durable audit append.

// Test and bench code: a panic is the failure report, and plain DataFusion
// sessions are the independent reference.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    reason = "a bench aborts on setup failure and compares against plain DataFusion"
)]

use std::path::PathBuf;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use kexin_engine::node::{Node, QueryRequest, Status};
use kexin_engine::policy::Space;

/// (name, SQL): the same text runs gated and plain.
const QUERIES: &[(&str, &str)] = &[
    (
        "counts",
        "SELECT department, count(*) AS n FROM admissions GROUP BY department",
    ),
    (
        "sums_with_dominance",
        "SELECT department, count(*) AS n, avg(cost) AS mean_cost, sum(length_of_stay) AS bed_days \
         FROM admissions GROUP BY department",
    ),
];

fn space() -> (PathBuf, Option<tempfile::TempDir>) {
    if let Ok(dir) = std::env::var("KEXIN_BENCH_SPACE") {
        return (PathBuf::from(dir), None);
    }
    let t = tempfile::tempdir().expect("tempdir");
    kexin::synth::generate(
        t.path(),
        &kexin::synth::GenOptions {
            hospitals: 1,
            patients: 20_000,
            seed: 1,
            csv: false,
            quiet: true,
            fhe_keys: false,
        },
    )
    .expect("generate");
    // The bench measures the work: answers are not padded to a quantum.
    let policy = t.path().join("space.toml");
    let text = std::fs::read_to_string(&policy).expect("space.toml");
    std::fs::write(
        &policy,
        text.replace("response_quantum_ms = 500", "response_quantum_ms = 0"),
    )
    .expect("space.toml");
    (t.path().to_path_buf(), Some(t))
}

fn bench(c: &mut Criterion) {
    let (dir, _keep) = space();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let node = rt.block_on(async {
        let space = Arc::new(Space::load(&dir).expect("space"));
        Node::open(space, "h1").await.expect("node")
    });
    let ctx = SessionContext::new();
    let path = dir.join("h1/admissions.parquet");
    rt.block_on(ctx.register_parquet(
        "admissions",
        path.to_str().expect("utf8"),
        ParquetReadOptions::default(),
    ))
    .expect("register");
    for (name, sql) in QUERIES {
        let req = QueryRequest {
            scene: "diabetes-2027".into(),
            actor: "alice".into(),
            sql: (*sql).into(),
            contract: None,
        };
        assert_eq!(rt.block_on(node.query(&req)).status, Status::Released);
        let mut g = c.benchmark_group(format!("groupby_admissions_{name}"));
        g.sample_size(10);
        g.bench_function("plain_datafusion", |b| {
            b.iter(|| {
                rt.block_on(async {
                    ctx.sql(sql)
                        .await
                        .expect("plan")
                        .collect()
                        .await
                        .expect("run")
                })
            })
        });
        g.bench_function("kexin_gated", |b| b.iter(|| rt.block_on(node.query(&req))));
        g.finish();
    }
    dp(c, &rt, &dir);
}

/// Two bench-only scenes over the same data: threshold-only (no dominance
/// rule) for alice's organisation and DP for erin's (one requester may not
/// hold both over the same columns), with a per-query ε small enough for
/// every iteration to fit erin's organisation's budget.
const BENCH_SCENES: &str = r#"
[scene.bench-threshold]
contract  = "none"    # in-house test scene: no data-use contract
purpose   = "DUO:0000006"
requester = "org:whu-med"
datasets  = ["admissions"]
valid     = ["2026-01-01", "2030-12-31"]
output    = { min_persons = 10, round_to = 1, decimals = 1 }

[scene.bench-dp]
contract  = "none"    # in-house test scene: no data-use contract
purpose   = "DUO:0000006"
requester = "org:hubei-cdc"
datasets  = ["admissions"]
valid     = ["2026-01-01", "2030-12-31"]
output    = { min_persons = 10, decimals = 1 }
privacy   = { epsilon_total = 5.0, epsilon_per_query = 0.0001, delta = 1e-9 }
"#;

/// DP mode vs the same query threshold-only. A DP repeat is answered from
/// the release cache, so every iteration asks a new (equivalent) query:
/// a no-op condition with a fresh constant, on both sides.
fn dp(c: &mut Criterion, rt: &tokio::runtime::Runtime, dir: &std::path::Path) {
    let text = std::fs::read_to_string(dir.join("space.toml")).expect("space.toml") + BENCH_SCENES;
    let space = Arc::new(Space::parse(dir, "space.toml", &text, [0; 32]).expect("bench scenes"));
    // Charges go to erin's organisation's ledger under the bench-only scene.
    let node = rt.block_on(Node::open(space, "h1")).expect("node");
    for (name, sql) in QUERIES {
        let mut g = c.benchmark_group(format!("dp_admissions_{name}"));
        g.sample_size(10);
        for scene in ["bench-threshold", "bench-dp"] {
            let mut i = 0u64;
            g.bench_function(scene, |b| {
                b.iter(|| {
                    i += 1;
                    let sql = sql.replace(
                        "FROM admissions",
                        &format!("FROM admissions WHERE cost > -{i}"),
                    );
                    let actor = if scene == "bench-dp" { "erin" } else { "alice" };
                    let o = rt.block_on(node.query(&QueryRequest {
                        scene: scene.into(),
                        actor: actor.into(),
                        sql,
                        contract: None,
                    }));
                    assert_eq!(o.status, Status::Released, "{:?}", o.rule);
                    o
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
