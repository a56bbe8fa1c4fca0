//! The gated paths side by side with their baselines, in one run.
//!
//! Each path is measured as interleaved pairs (baseline then kexin, then
//! kexin then baseline, …) after one warm-up of each, and reported as the
//! median of each side and the ratio of the medians:
//!
//! | path | kexin side | baseline |
//! |---|---|---|
//! | `threshold` | `GROUP BY` count, threshold scene | plain DataFusion, same SQL, same file |
//! | `dominance` | count, avg and sum with the dominance rule | plain DataFusion |
//! | `dp` | the count in DP mode | the same query threshold-only |
//! | `consent` | the count under a consent scene | the same scene without consent |
//! | `federated` | a joint `GROUP BY` over three node servers | plain DataFusion on the three files pooled |
//!
//! By default small spaces are generated (1 hospital × 20,000 patients and
//! 3 × 5,000). `benches/paths.sh` builds the ~10M-row spaces the README
//! reports and sets `KEXIN_BENCH_SPACE` (one hospital) and
//! `KEXIN_BENCH_FEDERATION` (three). `KEXIN_PAIRS` sets the number of
//! pairs (default 7); `KEXIN_PATHS=threshold,dp` measures only those.
//! For looking into the cost: `KEXIN_BASE_COPY=1` has plain DataFusion
//! read the node's loaded copy instead of the source file, and
//! `KEXIN_BASE_SQL` replaces the baseline's SQL (for example with
//! `count(__kexin_ordinal)` added: what reading the ordinal column costs). It prints a Markdown table, and the same as JSON
//! lines when `KEXIN_PATHS_JSON` names a file.

// Bench code: a panic is the failure report, and plain DataFusion sessions
// are the independent reference.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    reason = "a bench aborts on setup failure and compares against plain DataFusion"
)]

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use datafusion::prelude::{ParquetReadOptions, SessionContext};
use kexin::federation::federate;
use kexin_engine::node::{Node, QueryRequest, Status};
use kexin_engine::policy::Space;

const COUNT: &str = "SELECT department, count(*) AS n FROM admissions GROUP BY department";
const SUMS: &str = "SELECT department, count(*) AS n, avg(cost) AS mean_cost, sum(length_of_stay) AS bed_days \
                    FROM admissions GROUP BY department";

/// Bench-only scenes beside the generated ones: threshold-only, the same
/// with the dominance rule, DP for erin's organisation, and the consent
/// scene's twin without consent.
const BENCH_SCENES: &str = r#"
[scene.bench-threshold]
contract  = "none"
purpose   = "DUO:0000006"
requester = "org:whu-med"
datasets  = ["admissions"]
valid     = ["2026-01-01", "2030-12-31"]
output    = { min_persons = 10, round_to = 1, decimals = 1 }

[scene.bench-dominance]
contract  = "none"
purpose   = "DUO:0000006"
requester = "org:whu-med"
datasets  = ["admissions"]
valid     = ["2026-01-01", "2030-12-31"]
output    = { min_persons = 10, round_to = 1, decimals = 1, dominance = [2, 0.9] }

[scene.bench-dp]
contract  = "none"
purpose   = "DUO:0000006"
requester = "org:hubei-cdc"
datasets  = ["admissions"]
valid     = ["2026-01-01", "2030-12-31"]
output    = { min_persons = 10, decimals = 1 }
privacy   = { epsilon_total = 5.0, epsilon_per_query = 0.0001, delta = 1e-9 }

[scene.bench-no-consent]
contract  = "none"
purpose   = "DUO:0000007"
disease   = "E11"
requester = "org:whu-med"
datasets  = ["patients", "admissions", "labs"]
valid     = ["2026-01-01", "2030-12-31"]
output    = { min_persons = 10, round_to = 5, decimals = 2, dominance = [2, 0.9] }
"#;

fn generated(hospitals: usize, patients: usize) -> (PathBuf, tempfile::TempDir) {
    let t = tempfile::tempdir().expect("tempdir");
    kexin::synth::generate(
        t.path(),
        &kexin::synth::GenOptions {
            hospitals,
            patients,
            seed: 1,
            csv: false,
            quiet: true,
            fhe_keys: false,
        },
    )
    .expect("generate");
    (t.path().to_path_buf(), t)
}

/// The space's policy with answers unpadded (the bench measures the work).
fn unpadded(dir: &Path, extra: &str) -> Arc<Space> {
    let text = std::fs::read_to_string(dir.join("space.toml")).expect("space.toml");
    let text = text.replace("response_quantum_ms = 500", "response_quantum_ms = 0") + extra;
    Arc::new(Space::parse(dir, "space.toml", &text, [0; 32]).expect("policy"))
}

/// One measured path.
struct Pair {
    path: &'static str,
    what: &'static str,
    baseline: &'static str,
    target: f64,
    kexin: Vec<f64>,
    base: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn ms(f: &mut dyn FnMut()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64() * 1e3
}

/// Warm each side once, then `pairs` interleaved pairs.
fn measure(pairs: usize, mut base: impl FnMut(), mut kexin: impl FnMut()) -> (Vec<f64>, Vec<f64>) {
    base();
    kexin();
    let (mut b, mut k) = (Vec::new(), Vec::new());
    for i in 0..pairs {
        if i % 2 == 0 {
            b.push(ms(&mut base));
            k.push(ms(&mut kexin));
        } else {
            k.push(ms(&mut kexin));
            b.push(ms(&mut base));
        }
    }
    (b, k)
}

fn plain(rt: &tokio::runtime::Runtime, files: Vec<String>) -> SessionContext {
    let ctx = SessionContext::new();
    let df = rt
        .block_on(ctx.read_parquet(files, ParquetReadOptions::default()))
        .expect("read");
    ctx.register_table("admissions", df.into_view())
        .expect("register");
    ctx
}

fn run_plain(rt: &tokio::runtime::Runtime, ctx: &SessionContext, sql: &str) {
    let o = std::env::var("KEXIN_BASE_SQL").ok();
    let sql = o.as_deref().unwrap_or(sql);
    rt.block_on(async { ctx.sql(sql).await.unwrap().collect().await.unwrap() });
}

fn ask(rt: &tokio::runtime::Runtime, node: &Node, scene: &str, actor: &str, sql: &str) {
    let o = rt.block_on(node.query(&QueryRequest::new(scene, actor, sql)));
    assert_eq!(o.status, Status::Released, "{scene}: {:?}", o.rule);
}

/// Whether `KEXIN_PATHS` (comma-separated path names; empty: all) asks
/// for `path`.
fn wanted(path: &str) -> bool {
    let only = std::env::var("KEXIN_PATHS").unwrap_or_default();
    only.is_empty() || only.split(',').any(|p| p.trim() == path)
}

fn single_node(pairs: usize, out: &mut Vec<Pair>) {
    let (dir, _keep) = match std::env::var("KEXIN_BENCH_SPACE") {
        Ok(d) => (PathBuf::from(d), None),
        Err(_) => {
            let (d, t) = generated(1, 20_000);
            (d, Some(t))
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let node = rt
        .block_on(Node::open(unpadded(&dir, BENCH_SCENES), "h1"))
        .expect("node");
    let file = if std::env::var("KEXIN_BASE_COPY").is_ok() {
        dir.join("h1/data/admissions.parquet")
    } else {
        dir.join("h1/admissions.parquet")
    };
    let ctx = plain(&rt, vec![file.to_string_lossy().into_owned()]);
    let mut add = |path, what, baseline, target, run: &mut dyn FnMut() -> (Vec<f64>, Vec<f64>)| {
        if !wanted(path) {
            return;
        }
        let (base, kexin) = run();
        out.push(Pair {
            path,
            what,
            baseline,
            target,
            kexin,
            base,
        })
    };
    add(
        "threshold",
        "count by department, threshold scene",
        "plain DataFusion",
        1.10,
        &mut || {
            measure(
                pairs,
                || run_plain(&rt, &ctx, COUNT),
                || ask(&rt, &node, "bench-threshold", "alice", COUNT),
            )
        },
    );
    add(
        "dominance",
        "count + avg + sum, dominance rule",
        "plain DataFusion",
        1.3,
        &mut || {
            measure(
                pairs,
                || run_plain(&rt, &ctx, SUMS),
                || ask(&rt, &node, "bench-dominance", "alice", SUMS),
            )
        },
    );
    // A DP repeat is answered from the release cache: every run asks a new
    // (equivalent) query, on both sides.
    let fresh = |i: &mut u64| {
        *i += 1;
        COUNT.replace(
            "FROM admissions",
            &format!("FROM admissions WHERE cost > -{i}"),
        )
    };
    // Constants never asked before, also across runs on the same space.
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        * 1000;
    let (mut i, mut j) = (start, start);
    add(
        "dp",
        "the count in DP mode",
        "the same query threshold-only",
        1.15,
        &mut || {
            measure(
                pairs,
                || ask(&rt, &node, "bench-threshold", "alice", &fresh(&mut i)),
                || ask(&rt, &node, "bench-dp", "erin", &fresh(&mut j)),
            )
        },
    );
    add(
        "consent",
        "the count under a consent scene",
        "the same scene without consent",
        1.10,
        &mut || {
            measure(
                pairs,
                || ask(&rt, &node, "bench-no-consent", "alice", COUNT),
                || ask(&rt, &node, "diabetes-consent", "alice", COUNT),
            )
        },
    );
}

fn federated(pairs: usize, out: &mut Vec<Pair>) {
    let (dir, _keep) = match std::env::var("KEXIN_BENCH_FEDERATION") {
        Ok(d) => (PathBuf::from(d), None),
        Err(_) => {
            let (d, t) = generated(3, 5_000);
            (d, Some(t))
        }
    };
    let space = unpadded(&dir, "");
    support::start_nodes(&space);
    let alice = kexin::members::load_key(&dir, "alice", None).expect("key");
    let nodes: Vec<String> = ["h1", "h2", "h3"].iter().map(|s| s.to_string()).collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let files = nodes
        .iter()
        .map(|n| {
            dir.join(n)
                .join("admissions.parquet")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let ctx = plain(&rt, files);
    let (base, kexin) = measure(
        pairs,
        || run_plain(&rt, &ctx, SUMS),
        || {
            let o = federate(&space, "alice", &alice, "joint-diabetes", &nodes, SUMS)
                .expect("federate");
            assert_eq!(
                o.status,
                kexin::federation::JointStatus::Released,
                "{:?}",
                o.rule
            );
        },
    );
    out.push(Pair {
        path: "federated",
        what: "count + avg + sum, 3 nodes",
        baseline: "plain DataFusion, pooled",
        target: 1.5,
        kexin,
        base,
    });
}

fn main() {
    let pairs = std::env::var("KEXIN_PAIRS")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(7usize)
        .max(1);
    let mut out = Vec::new();
    if ["threshold", "dominance", "dp", "consent"]
        .iter()
        .any(|p| wanted(p))
    {
        single_node(pairs, &mut out);
    }
    if wanted("federated") {
        federated(pairs, &mut out);
    }
    println!("| path | kexin | baseline | ratio | target |");
    println!("|---|---|---|---|---|");
    let mut json = String::new();
    for p in &out {
        let (k, b) = (median(&p.kexin), median(&p.base));
        println!(
            "| {} | {k:.0} ms | {} {b:.0} ms | {:.2}× | ≤ {:.2}× |",
            p.what,
            p.baseline,
            k / b,
            p.target
        );
        json.push_str(&format!(
            "{{\"path\":\"{}\",\"kexin_ms\":{k:.2},\"baseline_ms\":{b:.2},\"ratio\":{:.3},\"target\":{},\"pairs\":{}}}\n",
            p.path,
            k / b,
            p.target,
            p.kexin.len()
        ));
    }
    if let Ok(f) = std::env::var("KEXIN_PATHS_JSON") {
        std::fs::write(f, json).expect("write results");
    }
}
