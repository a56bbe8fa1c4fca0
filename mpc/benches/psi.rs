//! PSI and sharing costs: blinding (hash to group + scalar multiplication)
//! and reblinding (decode + scalar multiplication) per item, on all cores
//! (rayon), and splitting/opening a share vector.

// Bench code: a panic is the failure report.
#![allow(clippy::expect_used, reason = "a bench aborts on setup failure")]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kexin_mpc::psi::Party;
use kexin_mpc::share::{encode_fixed, reconstruct, split};

fn psi(c: &mut Criterion) {
    let items: Vec<String> = (0..10_000).map(|i| format!("4201021990{i:08}")).collect();
    let a = Party::new([1; 32]).expect("party");
    let b = Party::new([1; 32]).expect("party");
    let blinded = a.blind(&items).expect("blind");
    let mut g = c.benchmark_group("psi_10k_items");
    g.throughput(Throughput::Elements(items.len() as u64));
    g.sample_size(10);
    g.bench_function("blind", |x| x.iter(|| a.blind(&items).expect("blind")));
    g.bench_function("reblind", |x| {
        x.iter(|| b.reblind(&blinded).expect("reblind"))
    });
    g.finish();
}

fn shares(c: &mut Criterion) {
    let secret: Vec<_> = (0..1000)
        .map(|i| encode_fixed(i as f64 * 1.5, 2).expect("encode"))
        .collect();
    let mut g = c.benchmark_group("share_1000_values_3_parties");
    g.throughput(Throughput::Elements(secret.len() as u64));
    g.bench_function("split", |x| x.iter(|| split(&secret, 3).expect("split")));
    let s = split(&secret, 3).expect("split");
    g.bench_function("open", |x| x.iter(|| reconstruct(&s).expect("open")));
    g.finish();
}

criterion_group!(benches, psi, shares);
criterion_main!(benches);
