//! Differential-privacy mode end to end: noisy answers with intervals, the
//! durable budget ledger, equivalent-query caching, and the attacks DP is
//! there to stop — a differencing pair, an averaging loop, a random-subset
//! reconstruction — each run against a threshold-only scene as well, where
//! it succeeds, so the tests show DP is what stops them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    reason = "tests fail loudly and build reference contexts with plain DataFusion"
)]

use crate::support;

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::prelude::SessionContext;
use kexin_engine::gate::Cell;
use kexin_engine::node::{Outcome, Status};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use support::{ask, open_h1};

fn code(o: &Outcome) -> &'static str {
    o.code.map_or("", |c| c.as_str())
}

fn num(c: &Cell) -> f64 {
    match c {
        Cell::Int(i) => *i as f64,
        Cell::Float(f) => *f,
        other => panic!("not a number: {other:?}"),
    }
}

// ---------------------------------------------------------------- a tiny space

/// A one-table space of `n` persons: `code` (0..n, an attribute anyone may
/// filter on) and a secret bit `flag`. Scene `dp` is in DP mode with the
/// given budget; scene `plain` is threshold-only. `researchers` members
/// r0, r1, … share the requester organisation.
async fn tiny_space(n: usize, bits: &[i64], epsilon_total: f64, researchers: usize) -> PathBuf {
    let dir = tempfile::tempdir().unwrap().keep();
    std::fs::create_dir_all(dir.join("h1")).unwrap();
    let ids: Vec<String> = (0..n).map(|i| format!("P{i:04}")).collect();
    let batch = RecordBatch::try_from_iter(vec![
        (
            "id_card",
            Arc::new(StringArray::from(
                ids.iter().map(String::as_str).collect::<Vec<_>>(),
            )) as ArrayRef,
        ),
        (
            "code",
            Arc::new(Int64Array::from((0..n as i64).collect::<Vec<_>>())) as ArrayRef,
        ),
        (
            "flag",
            Arc::new(Int64Array::from(bits.to_vec())) as ArrayRef,
        ),
    ])
    .unwrap();
    SessionContext::new()
        .read_batch(batch)
        .unwrap()
        .write_parquet(
            dir.join("h1/t.parquet").to_str().unwrap(),
            DataFrameWriteOptions::new().with_single_file_output(true),
            None,
        )
        .await
        .unwrap();
    // Budgets are per requester organisation: each researcher r<i> is its
    // own organisation with its own DP scene dp<i>, so that the trials below
    // are independent attackers. The threshold-only scene belongs to yet
    // another organisation (an exact scene beside a DP scene of the same
    // requester is a configuration error).
    let scenes: String = (0..researchers)
        .map(|i| {
            format!(
                r#"[member.r{i}]
role = "researcher"
org = "org:lab{i}"

[scene.dp{i}]
contract  = "none"    # in-house test scene: no data-use contract
purpose   = "DUO:0000006"
requester = "org:lab{i}"
datasets  = ["t"]
valid     = ["2026-01-01", "2030-12-31"]
output    = {{ min_persons = 2, decimals = 0 }}
privacy   = {{ epsilon_total = {epsilon_total}, epsilon_per_query = 0.1 }}

"#
            )
        })
        .collect();
    let toml = format!(
        r#"[space]
name = "tiny"
nodes = ["h1"]

[limits]
response_quantum_ms = 0   # hundreds of queries; no timing is measured

[member.p0]
role = "researcher"
org = "org:plain"

[dataset.t]
source = "{{node}}/t.parquet"
person_key = "id_card"

[dataset.t.columns]
id_card = {{ grade = 4, kind = "identifier", mask = "pseudonym" }}
code    = {{ grade = 1, kind = "attribute" }}
flag    = {{ grade = 3, kind = "sensitive", bounds = [0, 1] }}

{scenes}
[scene.plain]
contract  = "none"    # in-house test scene: no data-use contract
purpose   = "DUO:0000006"
requester = "org:plain"
datasets  = ["t"]
valid     = ["2026-01-01", "2030-12-31"]
output    = {{ min_persons = 5, round_to = 1, decimals = 0 }}
"#
    );
    std::fs::write(dir.join("space.toml"), toml).unwrap();
    dir
}

fn secret_bits(n: usize, seed: u64) -> Vec<i64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| i64::from(rng.random_bool(0.5))).collect()
}

// ---------------------------------------------------------------- the generated space

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dp_answers_carry_intervals_and_charge_the_budget() {
    let dir = support::generated_space(1, 1500, 31);
    let node = open_h1(&dir).await;
    let sql = "SELECT sex, count(*) AS patients, avg(weight_kg) AS w, sum(length_of_stay) AS los \
               FROM patients JOIN admissions ON patients.id_card = admissions.id_card GROUP BY sex";
    let o = ask(&node, "diabetes-dp", "erin", sql).await;
    assert_eq!(o.status, Status::Released, "{:?} {:?}", o.code, o.rule);
    let dp = o.dp.as_ref().expect("a DP report");
    assert_eq!(dp.epsilon_charged, 0.1);
    assert!((dp.epsilon_remaining - 0.9).abs() < 1e-9);
    assert_eq!(o.columns, ["sex", "patients", "w", "los"]);
    // Both values of the public domain, in key order, each with accuracy.
    let keys: Vec<&Cell> = o.rows.iter().map(|r| &r[0]).collect();
    assert_eq!(keys, [&Cell::Text("F".into()), &Cell::Text("M".into())]);
    for (row, acc) in o.rows.iter().zip(&dp.accuracy) {
        assert!(acc[0].is_none(), "group keys carry no noise");
        for c in 1..4 {
            let a = acc[c].expect("accuracy");
            let v = num(&row[c]);
            assert!(a.scale > 0.0 && a.interval[0] <= v && v <= a.interval[1]);
        }
    }
    // The exact bounded answer: one row per person and group (rows_per_person
    // = 1), each person in one group. Its count is the number of patients
    // with an admission; the noisy count is within 3 interval half-widths
    // of it (a miss has probability < 1e-3).
    let ctx = SessionContext::new();
    ctx.register_parquet(
        "p",
        dir.join("h1/patients.parquet").to_str().unwrap(),
        Default::default(),
    )
    .await
    .unwrap();
    ctx.register_parquet(
        "a",
        dir.join("h1/admissions.parquet").to_str().unwrap(),
        Default::default(),
    )
    .await
    .unwrap();
    let exact = ctx
        .sql("SELECT sex, count(DISTINCT p.id_card) FROM p JOIN a ON p.id_card = a.id_card GROUP BY sex ORDER BY sex")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let counts = datafusion::arrow::compute::cast(
        exact[0].column(1),
        &datafusion::arrow::datatypes::DataType::Int64,
    )
    .unwrap();
    let counts = counts.as_any().downcast_ref::<Int64Array>().unwrap();
    for (i, row) in o.rows.iter().enumerate() {
        let a = dp.accuracy[i][1].unwrap();
        let half = (a.interval[1] - a.interval[0]) / 2.0;
        assert!((num(&row[1]) - counts.value(i) as f64).abs() <= 3.0 * half);
    }
    // The audit entry records the charge; the ledger survives a reopen.
    let entries = kexin_engine::store::Store::open(&dir.join("h1"), "kexin/hubei-demo/h1")
        .unwrap()
        .entries()
        .unwrap();
    assert_eq!(entries.last().unwrap().epsilon, Some(0.1));
    drop(node);
    let again = open_h1(&dir).await;
    let b = again.budgets(Some("erin"), Some("diabetes-dp")).unwrap();
    assert_eq!(b.len(), 1);
    assert!((b[0].epsilon_spent - 0.1).abs() < 1e-9 && b[0].queries == 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dp_refuses_what_it_cannot_release() {
    let dir = support::generated_space(1, 300, 32);
    let node = open_h1(&dir).await;
    let cases = [
        (
            "SELECT sex, max(age) FROM patients GROUP BY sex",
            "KX-DP-AGGREGATE",
        ),
        (
            "SELECT count(DISTINCT region) FROM patients",
            "KX-DP-AGGREGATE",
        ),
        ("SELECT sum(weight_kg * 2) FROM patients", "KX-DP-BOUNDS"),
        (
            "SELECT sex, count(*) * 2 AS n FROM patients GROUP BY sex ORDER BY n",
            "KX-DP-SHAPE",
        ),
        (
            "SELECT sex, count(*) * 2 FROM patients GROUP BY sex",
            "KX-DP-SHAPE",
        ),
        // Identifier and shape rules still apply first.
        (
            "SELECT id_card, count(*) FROM patients GROUP BY id_card",
            "KX-DISC-IDENTIFIER",
        ),
    ];
    for (sql, want) in cases {
        let o = ask(&node, "diabetes-dp", "erin", sql).await;
        assert_eq!(code(&o), want, "{sql}");
    }
    // Refusals charge nothing.
    assert!(
        node.budgets(Some("erin"), None)
            .unwrap()
            .iter()
            .all(|b| b.queries == 0)
    );
    // Keys from the data (region has no declared domain) pass partition
    // selection: released only above the DP threshold, stated in the notes.
    let o = ask(
        &node,
        "diabetes-dp",
        "erin",
        "SELECT region, count(*) FROM patients GROUP BY region",
    )
    .await;
    assert_eq!(o.status, Status::Released);
    assert!(
        o.explanation
            .iter()
            .any(|e| e.contains("partition selection"))
    );
    assert!(o.dp.unwrap().delta > 0.0);
    // How many data groups missed the threshold is an exact count of
    // distinct keys: never reported.
    assert_eq!(o.suppressed_groups, 0);
    let narrow = ask(
        &node,
        "diabetes-dp",
        "erin",
        "SELECT region, count(*) FROM patients WHERE age = 90 GROUP BY region",
    )
    .await;
    assert_eq!(narrow.status, Status::Released);
    assert_eq!(narrow.suppressed_groups, 0);
    assert!(
        narrow
            .explanation
            .iter()
            .all(|e| !e.contains("suppressed:"))
    );
}

/// HAVING, ORDER BY and LIMIT in DP scenes run after the noise, on the
/// released rows: the same noisy cells as the query without them (answered
/// again for free, since the mechanism's computation is the same), filtered,
/// sorted and cut, each value with its own interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dp_post_processing_runs_on_released_rows() {
    let dir = support::generated_space(1, 2000, 34);
    let node = open_h1(&dir).await;
    let base =
        "SELECT department, count(*) AS n, avg(cost) AS c FROM admissions GROUP BY department";
    let all = ask(&node, "diabetes-dp", "erin", base).await;
    assert_eq!(all.status, Status::Released, "{:?}", all.rule);
    assert!(
        all.rows.len() >= 6,
        "most of the ten departments pass: {all:?}"
    );
    let all_acc = &all.dp.as_ref().unwrap().accuracy;
    let median = {
        let mut n: Vec<f64> = all.rows.iter().map(|r| num(&r[1])).collect();
        n.sort_by(f64::total_cmp);
        n[n.len() / 2]
    };
    let post = format!(
        "SELECT department, count(*) AS n, avg(cost) AS c FROM admissions GROUP BY department \
         HAVING count(*) >= {median} ORDER BY n DESC, department LIMIT 3"
    );
    let o = ask(&node, "diabetes-dp", "erin", &post).await;
    assert_eq!(o.status, Status::Released, "{:?} {:?}", o.code, o.rule);
    let dp = o.dp.as_ref().unwrap();
    assert_eq!(dp.epsilon_charged, 0.0, "post-processing costs nothing");
    assert!(dp.repeat_of.is_some());
    assert_eq!(o.columns, ["department", "n", "c"]);
    // The reference: the released rows, filtered, sorted and cut here.
    let mut want: Vec<(Vec<Cell>, Vec<Option<kexin_engine::dp::Accuracy>>)> = all
        .rows
        .iter()
        .cloned()
        .zip(all_acc.iter().cloned())
        .filter(|(r, _)| num(&r[1]) >= median)
        .collect();
    want.sort_by(|(x, _), (y, _)| {
        num(&y[1])
            .total_cmp(&num(&x[1]))
            .then(format!("{:?}", x[0]).cmp(&format!("{:?}", y[0])))
    });
    want.truncate(3);
    let got: Vec<(Vec<Cell>, Vec<Option<kexin_engine::dp::Accuracy>>)> = o
        .rows
        .iter()
        .cloned()
        .zip(dp.accuracy.iter().cloned())
        .collect();
    // The repeat comes from the stored answer (JSON), whose float parsing
    // may move a scale by one unit in the last place: compare scales
    // closely, everything else exactly.
    let close = |a: &[Option<kexin_engine::dp::Accuracy>],
                 b: &[Option<kexin_engine::dp::Accuracy>]| {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| match (x, y) {
                (None, None) => true,
                (Some(x), Some(y)) => {
                    x.interval == y.interval && (x.scale - y.scale).abs() <= 1e-9 * y.scale
                }
                _ => false,
            })
    };
    assert_eq!(got.len(), want.len(), "{got:?}\n{want:?}");
    for ((gr, ga), (wr, wa)) in got.iter().zip(&want) {
        assert_eq!(gr, wr);
        assert!(close(ga, wa), "{ga:?}\n{wa:?}");
    }
    // An output column that is not in the aggregate's order, and a filter
    // on an aggregate the query does not show: a fresh computation of the
    // mechanism (every column of the aggregate is noised), charged once.
    let other = ask(
        &node,
        "diabetes-dp",
        "erin",
        "SELECT avg(cost) AS c, department FROM admissions GROUP BY department HAVING sum(length_of_stay) > 0 ORDER BY department",
    )
    .await;
    assert_eq!(
        other.status,
        Status::Released,
        "{:?} {:?}",
        other.code,
        other.rule
    );
    assert_eq!(other.dp.as_ref().unwrap().epsilon_charged, 0.1);
    assert_eq!(other.columns, ["c", "department"]);
    let keys: Vec<String> = other.rows.iter().map(|r| format!("{:?}", r[1])).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "ordered by department");
    for (row, acc) in other.rows.iter().zip(&other.dp.as_ref().unwrap().accuracy) {
        assert!(acc[1].is_none(), "a key carries no interval");
        let a = acc[0].expect("the average's interval follows it");
        let v = num(&row[0]);
        assert!(a.interval[0] <= v && v <= a.interval[1]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn averaging_loop_with_equivalent_rewrites_gets_one_answer() {
    let dir = support::generated_space(1, 400, 33);
    let node = open_h1(&dir).await;
    let rewrites = [
        "SELECT sex, count(*) AS n, avg(weight_kg) AS w FROM patients GROUP BY sex",
        "select sex, count(*) as n, avg(weight_kg) as w from patients group by sex",
        "SELECT sex, COUNT(1) AS total, AVG(weight_kg) AS mean FROM patients GROUP BY sex",
        "SELECT p.sex, count(*) AS n, avg(p.weight_kg) AS w FROM patients p GROUP BY p.sex",
        "SELECT sex, count(*) AS n, avg(weight_kg) AS w FROM patients WHERE 1 = 1 GROUP BY sex",
        "SELECT sex, count(*) AS n, avg(weight_kg) AS w FROM patients WHERE TRUE AND 2 > 1 GROUP BY sex",
        "SELECT  sex ,count( * ) n ,avg( weight_kg ) w\nFROM patients\nGROUP BY sex",
    ];
    let first = ask(&node, "diabetes-dp", "erin", rewrites[0]).await;
    assert_eq!(first.status, Status::Released);
    let first_seq = first.audit_seq.unwrap();
    for i in 1..1000 {
        let o = ask(&node, "diabetes-dp", "erin", rewrites[i % rewrites.len()]).await;
        assert_eq!(
            o.status,
            Status::Released,
            "{}",
            rewrites[i % rewrites.len()]
        );
        assert_eq!(
            o.rows,
            first.rows,
            "rewrite {} bought fresh noise",
            i % rewrites.len()
        );
        assert_eq!(o.dp.as_ref().unwrap().repeat_of, Some(first_seq));
    }
    let b = node.budgets(Some("erin"), Some("diabetes-dp")).unwrap();
    assert_eq!(b[0].queries, 1, "one charge for 1,000 asks");
    // Rewrites the normalizer does not recognise are charged as new
    // queries: the budget ends the loop after ε_total / ε_query answers.
    let mut released = 1;
    let mut refused = 0;
    for i in 0..50 {
        let o = ask(
            &node,
            "diabetes-dp",
            "erin",
            &format!("SELECT sex, count(*), avg(weight_kg) FROM patients WHERE weight_kg > -{i} GROUP BY sex"),
        )
        .await;
        match o.status {
            Status::Released => released += 1,
            _ => {
                assert_eq!(code(&o), "KX-DP-BUDGET");
                refused += 1;
            }
        }
    }
    assert_eq!(released, 10, "ε_total 1.0 / ε_query 0.1");
    assert_eq!(refused, 41);
    // Exhausted means exhausted, across restarts and for cached answers'
    // neighbours alike; the repeat of a released answer is still free.
    drop(node);
    let node = open_h1(&dir).await;
    assert_eq!(
        code(
            &ask(
                &node,
                "diabetes-dp",
                "erin",
                "SELECT count(*) FROM patients"
            )
            .await
        ),
        "KX-DP-BUDGET"
    );
    assert_eq!(
        ask(&node, "diabetes-dp", "erin", rewrites[3]).await.rows,
        first.rows
    );
    // Only the scene's requester organisation may spend its budget.
    let bob_scene = ask(&node, "diabetes-dp", "bob", rewrites[0]).await;
    assert_eq!(
        code(&bob_scene),
        "KX-SCENE",
        "bob is not a requester of the scene"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differencing_pair_learns_nothing_beyond_epsilon() {
    // 200 researchers each run the classic pair once: the sum of a secret
    // bit over everyone, and over everyone but the target. Half of them
    // target a person whose bit is 1, half one whose bit is 0, so always
    // guessing one value scores exactly 1/2.
    let n = 60;
    let bits = secret_bits(n, 3);
    let one = bits.iter().position(|b| *b == 1).unwrap();
    let zero = bits.iter().position(|b| *b == 0).unwrap();
    let trials = 200;
    let dir = tiny_space(n, &bits, 0.2, trials).await;
    let node = open_h1(&dir).await;
    let q1 = "SELECT sum(flag) FROM t";
    let q2 = |target: usize| format!("SELECT sum(flag) FROM t WHERE code <> {target}");
    // Threshold-only: the difference is the target's bit, every time.
    for target in [one, zero] {
        let plain = num(&ask(&node, "plain", "p0", q1).await.rows[0][0])
            - num(&ask(&node, "plain", "p0", &q2(target)).await.rows[0][0]);
        assert_eq!(plain as i64, bits[target], "the attack works without DP");
    }
    // DP: each pair costs the whole budget of 0.2. Changing the target's bit
    // is two neighbouring steps (remove, add back), so the pair is
    // 0.4-DP for the bit, and on a balanced prior any guess from it is right
    // with probability at most e^0.4 / (1 + e^0.4) ≈ 0.599.
    let mut right = 0;
    for r in 0..trials {
        let (actor, dp) = (format!("r{r}"), format!("dp{r}"));
        let target = if r % 2 == 0 { one } else { zero };
        let a = ask(&node, &dp, &actor, q1).await;
        let b = ask(&node, &dp, &actor, &q2(target)).await;
        assert_eq!(a.status, Status::Released);
        assert_eq!(b.status, Status::Released);
        assert_eq!(
            code(&ask(&node, &dp, &actor, "SELECT count(*) FROM t").await),
            "KX-DP-BUDGET"
        );
        // A cell whose noisy person count missed min_persons is suppressed;
        // the attacker reads it as 0.
        let value = |o: &Outcome| o.rows.first().map_or(0.0, |r| num(&r[0]));
        let guess = i64::from(value(&a) - value(&b) > 0.5);
        right += usize::from(guess == bits[target]);
    }
    let rate = right as f64 / trials as f64;
    let bound = 0.4f64.exp() / (1.0 + 0.4f64.exp());
    // The bound plus 3.5 standard errors of the estimate.
    assert!(
        rate <= bound + 3.5 * (0.25f64 / trials as f64).sqrt(),
        "success rate {rate}"
    );
}

/// Least squares for `A x ≈ y` by the normal equations (Gaussian
/// elimination with partial pivoting, a small ridge term for rank).
fn least_squares(a: &[Vec<f64>], y: &[f64], n: usize) -> Vec<f64> {
    let mut m = vec![vec![0.0; n + 1]; n];
    for (row, yv) in a.iter().zip(y) {
        for i in 0..n {
            for j in 0..n {
                m[i][j] += row[i] * row[j];
            }
            m[i][n] += row[i] * yv;
        }
    }
    for (i, r) in m.iter_mut().enumerate() {
        r[i] += 1e-3;
    }
    for c in 0..n {
        let p = (c..n)
            .max_by(|x, y| m[*x][c].abs().total_cmp(&m[*y][c].abs()))
            .unwrap();
        m.swap(c, p);
        let pivot = m[c].clone();
        for (r, row) in m.iter_mut().enumerate() {
            if r != c {
                let f = row[c] / pivot[c];
                for (x, p) in row[c..].iter_mut().zip(&pivot[c..]) {
                    *x -= f * p;
                }
            }
        }
    }
    (0..n).map(|i| m[i][n] / m[i][i]).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_subset_reconstruction_fails_under_dp() {
    let n = 40;
    let bits = secret_bits(n, 9);
    let dir = tiny_space(n, &bits, 1.0, 1).await;
    let node = open_h1(&dir).await;
    let mut rng = ChaCha8Rng::seed_from_u64(77);
    let accuracy = |x: &[f64]| {
        x.iter()
            .zip(&bits)
            .filter(|(v, b)| i64::from(**v > 0.5) == **b)
            .count() as f64
            / n as f64
    };
    let majority = {
        let ones = bits.iter().sum::<i64>() as f64 / n as f64;
        ones.max(1.0 - ones)
    };
    for (scene, actor) in [("plain", "p0"), ("dp0", "r0")] {
        let (mut rows, mut answers) = (Vec::new(), Vec::new());
        let (mut charged, mut refused) = (0, 0);
        for _ in 0..4 * n {
            let subset: Vec<usize> = (0..n).filter(|_| rng.random_bool(0.5)).collect();
            let list = subset
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(",");
            let o = ask(
                &node,
                scene,
                actor,
                &format!("SELECT sum(flag) FROM t WHERE code IN ({list})"),
            )
            .await;
            if o.status != Status::Released {
                refused += 1;
                continue;
            }
            charged += 1;
            if o.rows.is_empty() {
                continue;
            }
            let mut row = vec![0.0; n];
            for i in &subset {
                row[*i] = 1.0;
            }
            rows.push(row);
            answers.push(num(&o.rows[0][0]));
        }
        let acc = accuracy(&least_squares(&rows, &answers, n));
        if scene == "plain" {
            // Dinur–Nissim: exact subset sums give every bit away.
            assert!(acc > 0.95, "the reconstruction works without DP: {acc}");
        } else {
            assert_eq!(charged, 10, "the budget stops the attack after 10 answers");
            assert_eq!(refused, 4 * n - 10);
            // No better than guessing the majority value, up to sampling noise.
            assert!(
                acc <= majority + 0.25,
                "reconstruction {acc} vs majority {majority}"
            );
        }
    }
}

/// The budget belongs to the requester organisation: two DP scenes over the
/// same data draw on one `[privacy] epsilon_per_requester`; and an exact
/// scene beside a DP scene of the same requester over the same columns is
/// a configuration error, since its answers would undo the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_budget_per_requester_across_scenes() {
    let n = 30;
    let dir = tiny_space(n, &secret_bits(n, 5), 1.0, 1).await;
    let base = std::fs::read_to_string(dir.join("space.toml")).unwrap();
    let second = r#"
[scene.dp0-again]
contract  = "none"
purpose   = "DUO:0000006"
requester = "org:lab0"
datasets  = ["t"]
valid     = ["2026-01-01", "2030-12-31"]
output    = { min_persons = 2, decimals = 0 }
privacy   = { epsilon_total = 1.0, epsilon_per_query = 0.1 }
"#;
    let two = base.replace(
        "[dataset.t]\n",
        "[privacy]\nepsilon_per_requester = 0.5\n\n[dataset.t]\n",
    ) + second;
    std::fs::write(dir.join("space.toml"), &two).unwrap();
    let node = open_h1(&dir).await;
    let mut released = 0;
    for i in 0..12 {
        let scene = if i % 2 == 0 { "dp0" } else { "dp0-again" };
        let o = ask(
            &node,
            scene,
            "r0",
            &format!("SELECT count(*) FROM t WHERE code > {i}"),
        )
        .await;
        if o.status == Status::Released {
            released += 1;
        } else {
            assert_eq!(code(&o), "KX-DP-BUDGET", "{:?}", o.rule);
        }
    }
    assert_eq!(released, 5, "ε 0.5 for the organisation over both scenes");
    let rows = node.budgets(Some("r0"), None).unwrap();
    assert_eq!(rows.len(), 2);
    for b in &rows {
        assert_eq!(b.org, "org:lab0");
        assert!((b.requester_epsilon_spent - 0.5).abs() < 1e-9, "{b:?}");
        assert!((b.requester_epsilon_total - 0.5).abs() < 1e-9, "{b:?}");
        assert_eq!(b.epsilon_remaining, 0.0, "{b:?}");
    }
    drop(node);
    // The threshold-only scene handed to the same requester.
    let exact = base.replace("requester = \"org:plain\"", "requester = \"org:lab0\"");
    std::fs::write(dir.join("space.toml"), &exact).unwrap();
    let err = kexin_engine::policy::Space::load(&dir)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("scene.plain") && err.contains("dp0") && err.contains("t.flag"),
        "{err}"
    );
}

/// An attack of the release-boundary suite, rewritten for the tiny space:
/// its class, its SQL, and the attacker's guess from one answer that the
/// victim's bit is 1.
struct Attack {
    class: &'static str,
    sql: &'static str,
    guess: fn(&Outcome) -> bool,
    /// Whether DP answers it (else it is refused in both worlds alike).
    answered: bool,
}

fn first_value(o: &Outcome) -> Option<f64> {
    o.rows.first().and_then(|r| r.last()).map(num)
}

/// Each class of the release-boundary issue as a pair of neighbouring
/// databases: two worlds that differ in one person's secret bit (person
/// `code = 0`). Every attack is asked once by each of many independent
/// requesters (their own organisation and budget, so fresh noise), half in
/// each world, and the attacker guesses the world from the answer. A query
/// that is ε-DP for the pair lets no guess be right more often than
/// e^ε / (1 + e^ε) (plus δ); the attacks used to give a certain bit, which
/// this catches at any plausible sampling error. Classes 5–8 (availability,
/// budget scope, timing, evidence) have no neighbouring-database form; they
/// are tested in `tests/all/release_boundary.rs`, `tests/all/federation.rs` and the
/// node's unit tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_attack_class_is_a_neighbouring_pair_under_dp() {
    let attacks = [
        // 1: a subquery that the victim alone decides (refused: the guess
        // has nothing to go on).
        Attack {
            class: "1 uncorrelated EXISTS",
            sql: "SELECT count(*) FROM t WHERE EXISTS (SELECT 1 FROM t WHERE code = 0 AND flag = 1)",
            guess: |o| first_value(o).is_some_and(|v| v > 20.0),
            answered: false,
        },
        // 2: a condition in the aggregate's lineage (accepted in DP: its
        // branches are bounded, so it has a sensitivity).
        Attack {
            class: "2 conditional sum",
            sql: "SELECT sum(CASE WHEN code = 0 AND flag = 1 THEN 1 ELSE 0 END) FROM t",
            guess: |o| first_value(o).is_some_and(|v| v > 0.5),
            answered: true,
        },
        Attack {
            class: "2 conditional in a derived table",
            sql: "SELECT sum(x) FROM (SELECT CASE WHEN code = 0 THEN flag ELSE 0 END AS x FROM t) d",
            guess: |o| first_value(o).is_some_and(|v| v > 0.5),
            answered: true,
        },
        // 3: a runtime error that one value raises (division by zero for
        // the victim's bit 1): hardened to NULL, so the row drops out.
        Attack {
            class: "3 data-dependent error",
            sql: "SELECT count(*) FROM t WHERE code = 0 AND 10 / (1 - flag) > 0",
            guess: |o| first_value(o).is_none_or(|v| v < 0.5),
            answered: true,
        },
        // 4: the gate's own outputs: a cell that exists only for the
        // victim (released or not, counted as suppressed or not), and a
        // count written as a sum (refused in DP: no bounds).
        Attack {
            class: "4 victim-only cell",
            sql: "SELECT code, count(*) FROM t WHERE code = 0 AND flag = 1 GROUP BY code",
            guess: |o| !o.rows.is_empty() || o.suppressed_groups > 0,
            answered: true,
        },
        Attack {
            class: "4 count written as a sum",
            sql: "SELECT sum(flag * 0 + 1) FROM t WHERE code = 0 AND flag = 1",
            guess: |o| first_value(o).is_some_and(|v| v > 0.5),
            answered: false,
        },
    ];
    let n = 40;
    let per_world = 150;
    let mut bits = secret_bits(n, 9);
    let mut nodes = Vec::new();
    for victim in [1, 0] {
        bits[0] = victim;
        let dir = tiny_space(n, &bits, 1.0, per_world).await;
        // Keys from the data (the victim-only cell) need a δ.
        let toml = std::fs::read_to_string(dir.join("space.toml")).unwrap();
        let toml = toml.replace(
            "epsilon_per_query = 0.1 }",
            "epsilon_per_query = 0.1, delta = 1e-6 }",
        );
        std::fs::write(dir.join("space.toml"), toml).unwrap();
        nodes.push((victim, open_h1(&dir).await));
    }
    let mut right = vec![0usize; attacks.len()];
    let mut released = vec![0usize; attacks.len()];
    for r in 0..per_world {
        let (actor, scene) = (format!("r{r}"), format!("dp{r}"));
        for (victim, node) in &nodes {
            for (i, a) in attacks.iter().enumerate() {
                let o = ask(node, &scene, &actor, a.sql).await;
                assert_ne!(code(&o), "KX-DP-BUDGET", "{}", a.class);
                assert_ne!(code(&o), "KX-INTERNAL", "{}", a.class);
                released[i] += usize::from(o.status == Status::Released);
                right[i] += usize::from((a.guess)(&o) == (*victim == 1));
            }
        }
    }
    let trials = 2 * per_world;
    let eps = 0.1f64;
    let bound = eps.exp() / (1.0 + eps.exp()) + 1e-6 + 3.5 * (0.25 / trials as f64).sqrt();
    let mut report = Vec::new();
    for (i, a) in attacks.iter().enumerate() {
        let rate = right[i] as f64 / trials as f64;
        report.push(format!(
            "{}: right {rate:.3} (bound {bound:.3}), released {}/{trials}",
            a.class, released[i]
        ));
    }
    let report = report.join("\n");
    for (i, a) in attacks.iter().enumerate() {
        assert!(
            right[i] as f64 / trials as f64 <= bound,
            "{} tells the worlds apart:\n{report}",
            a.class
        );
    }
    // Each attack is answered in every trial or refused in every one, as
    // expected, so the rates mean what they say.
    for (i, a) in attacks.iter().enumerate() {
        let want = if a.answered { trials } else { 0 };
        assert_eq!(released[i], want, "{}:\n{report}", a.class);
    }
    println!("{report}");
}
