//! A federated GROUP BY over three nodes vs plain DataFusion on the pooled
//! rows, and the cost of the secure-aggregation rounds themselves.
//!
//! By default a small space is generated (3 hospitals × 5,000 patients). Set
//! `KEXIN_BENCH_SPACE` to a 3-hospital space made by `kexin gen` (for
//! example the ~10M-row one `benches/federation.sh` builds) to measure that.
//! The three node servers run in this process on loopback (TLS included) and
//! share the machine's cores, as the pooled query does.

// Bench code: a panic is the failure report, and plain DataFusion sessions
// are the independent reference.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    reason = "a bench aborts on setup failure and compares against plain DataFusion"
)]

mod support;

use std::path::PathBuf;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use kexin::federation::federate;
use kexin_engine::policy::Space;
use kexin_mpc::aggregate::Aggregation;
use kexin_mpc::share::encode_int;

const SQL: &str = "SELECT department, COUNT(*) AS n, AVG(cost) AS mean_cost, SUM(length_of_stay) AS bed_days \
                   FROM admissions GROUP BY department";

fn space() -> (PathBuf, Option<tempfile::TempDir>) {
    if let Ok(dir) = std::env::var("KEXIN_BENCH_SPACE") {
        return (PathBuf::from(dir), None);
    }
    let t = tempfile::tempdir().expect("tempdir");
    kexin::synth::generate(
        t.path(),
        &kexin::synth::GenOptions {
            hospitals: 3,
            patients: 5_000,
            seed: 1,
            csv: false,
            quiet: true,
            fhe_keys: false,
        },
    )
    .expect("generate");
    (t.path().to_path_buf(), Some(t))
}

fn bench(c: &mut Criterion) {
    let (dir, _keep) = space();
    let space = Arc::new(Space::load(&dir).expect("space"));
    support::start_nodes(&space);
    let alice = kexin::members::load_key(&dir, "alice", None).expect("key");
    let nodes: Vec<String> = ["h1", "h2", "h3"].iter().map(|s| s.to_string()).collect();
    let run = || {
        let out =
            federate(&space, "alice", &alice, "joint-diabetes", &nodes, SQL).expect("federate");
        assert_eq!(
            out.status,
            kexin::federation::JointStatus::Released,
            "{:?}",
            out.rule
        );
        out
    };
    run();

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let ctx = SessionContext::new();
    let files: Vec<String> = ["h1", "h2", "h3"]
        .iter()
        .map(|n| {
            dir.join(n)
                .join("admissions.parquet")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let df = rt
        .block_on(ctx.read_parquet(files, ParquetReadOptions::default()))
        .expect("read");
    ctx.register_table("admissions", df.into_view())
        .expect("register");

    let mut g = c.benchmark_group("federated_groupby_3_nodes");
    g.sample_size(10);
    g.bench_function("plain_datafusion_pooled", |b| {
        b.iter(|| rt.block_on(async { ctx.sql(SQL).await.unwrap().collect().await.unwrap() }))
    });
    // The federated side always counts distinct persons per cell (the
    // joint gate needs them); the same count in plain DataFusion:
    let with_persons = SQL.replace(
        "COUNT(*) AS n,",
        "COUNT(*) AS n, COUNT(DISTINCT id_card) AS persons,",
    );
    g.bench_function("plain_datafusion_pooled_with_persons", |b| {
        b.iter(|| {
            rt.block_on(async {
                ctx.sql(&with_persons)
                    .await
                    .unwrap()
                    .collect()
                    .await
                    .unwrap()
            })
        })
    });
    g.bench_function("kexin_federated", |b| b.iter(run));
    g.finish();

    // The rounds alone: three parties in memory, share + sum + open all.
    let mut g = c.benchmark_group("mpc_round");
    for len in [40usize, 6_000] {
        g.bench_function(format!("3_parties_{len}_totals"), |b| {
            b.iter(|| {
                let mut ps: Vec<Aggregation> = (0..3)
                    .map(|i| Aggregation::new([7; 32], i, 3, len).unwrap())
                    .collect();
                let input = vec![encode_int(12_345).unwrap(); len];
                let mut wire = Vec::new();
                for (i, p) in ps.iter_mut().enumerate() {
                    for (to, m) in p.share(&input).unwrap() {
                        wire.push((i, to as usize, m.encode()));
                    }
                }
                for (_, to, bytes) in wire.drain(..) {
                    ps[to].receive(&bytes).unwrap();
                }
                let all: Vec<usize> = (0..len).collect();
                for (i, p) in ps.iter_mut().enumerate() {
                    p.sum_shares().unwrap();
                    let m = p.open(1, &all).unwrap().encode();
                    for to in 0..3 {
                        if to != i {
                            wire.push((i, to, m.clone()));
                        }
                    }
                }
                for (_, to, bytes) in wire.drain(..) {
                    ps[to].receive(&bytes).unwrap();
                }
                ps[0].opened(1, &all).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
