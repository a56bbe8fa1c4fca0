//! Gated query vs plain DataFusion on the same Parquet file.
//!
//! By default a small space is generated (1 hospital, 20,000 patients, about
//! 70,000 admissions). Set `KEXIN_BENCH_SPACE` to a space made by `kexin gen`
//! (for example the 10M-row one that `benches/compare.sh` builds) to measure
//! that instead. The gated side is the whole path a researcher pays for:
//! parse, checks, rewrite, masked execution, gate and the durable audit append.

// Test and bench code: a panic is the failure report, and plain DataFusion
// sessions are the independent reference.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

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
        },
    )
    .expect("generate");
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
}

criterion_group!(benches, bench);
criterion_main!(benches);
