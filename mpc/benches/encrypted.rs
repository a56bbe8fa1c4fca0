//! Costs of the encrypted mechanisms on this machine's cores:
//! - FHE gate (TFHE): one contributor's encryption of 10 cells × 3 totals,
//!   the aggregator's sum of three such contributions (expansion and
//!   unchecked additions), and the gate per cell: the 32-bit compare and
//!   select alone, and a cell with a count and two 64-bit totals;
//! - Prio3: a client's shard, and the two aggregators' verification and
//!   aggregation per report (a batch of 1 000).

// Bench code: a panic is the failure report.
#![allow(clippy::expect_used, reason = "a bench aborts on setup failure")]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kexin_mpc::fhe::{Aggregator, Encryptor, KeyHolder, Layout};
use kexin_mpc::prio3::{Batch, Measure, Stored, Vdaf, verify_key};

fn fhe(c: &mut Criterion) {
    let (_, public) = KeyHolder::generate().expect("keys");
    let enc = Encryptor::new(public.compact.clone());
    let agg = Aggregator::new(public.server.clone());
    let mut g = c.benchmark_group("fhe");
    g.sample_size(10);

    let layout = Layout::new(10, 3, 0).expect("layout");
    let partial: Vec<i128> = (0..30).map(|i| 100 + i).collect();
    g.throughput(Throughput::Elements(layout.len() as u64));
    g.bench_function("encrypt_10_cells_x_3_totals", |x| {
        x.iter(|| enc.encrypt(&layout, &partial, 3).expect("encrypt"))
    });
    let three: Vec<Vec<u8>> = (0..3)
        .map(|_| enc.encrypt(&layout, &partial, 3).expect("encrypt"))
        .collect();
    g.throughput(Throughput::Elements(3 * layout.len() as u64));
    g.bench_function("sum_3_contributions_of_30_totals", |x| {
        x.iter(|| agg.sum(&layout, &three).expect("sum"))
    });

    g.throughput(Throughput::Elements(1));
    for (name, stats) in [
        ("gate_one_cell_compare_select_u32", 1),
        ("gate_one_cell_count_and_two_u64_totals", 3),
    ] {
        let l = Layout::new(1, stats, 0).expect("layout");
        let one: Vec<i128> = (0..stats as i128).map(|i| 12 + i).collect();
        let sealed = vec![enc.encrypt(&l, &one, 1).expect("encrypt")];
        let totals = agg.sum(&l, &sealed).expect("sum");
        g.bench_function(name, |x| {
            x.iter(|| agg.gate(totals.clone(), 10).expect("gate"))
        });
    }
    g.finish();
}

fn prio3(c: &mut Criterion) {
    let mut g = c.benchmark_group("prio3");
    for (name, m, value) in [
        ("histogram_5", Measure::Histogram { buckets: 5 }, 2),
        ("sum_max_200", Measure::Sum { max: 200 }, 77),
    ] {
        let vdaf = Vdaf::new(m).expect("vdaf");
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("{name}_client_shard"), |x| {
            x.iter(|| vdaf.shard(b"bench", value).expect("shard"))
        });
        let reports: Vec<_> = (0..1000)
            .map(|_| vdaf.shard(b"bench", value).expect("shard"))
            .collect();
        let key = verify_key(&[1; 32], &[2; 32]);
        let stored = |a: usize| -> Vec<Stored> {
            reports
                .iter()
                .map(|r| Stored {
                    nonce: r.nonce,
                    public_share: r.public_share.clone(),
                    input_share: r.input_shares[a].clone(),
                })
                .collect()
        };
        let (s0, s1) = (stored(0), stored(1));
        g.throughput(Throughput::Elements(reports.len() as u64));
        g.bench_function(format!("{name}_both_aggregators_1000_reports"), |x| {
            x.iter(|| {
                let mut b0 = Batch::new(vdaf.clone(), 0, b"bench", key, s0.clone()).expect("b");
                let mut b1 = Batch::new(vdaf.clone(), 1, b"bench", key, s1.clone()).expect("b");
                let v0 = b0.verifier_shares().expect("v");
                let v1 = b1.verifier_shares().expect("v");
                b0.combine(&v1).expect("combine");
                b1.combine(&v0).expect("combine");
                let (a0, a1) = (
                    b0.aggregate_share(&[]).expect("agg"),
                    b1.aggregate_share(&[]).expect("agg"),
                );
                b0.open(&a0, &a1).expect("open")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, fhe, prio3);
criterion_main!(benches);
