//! Differential-privacy mode: contribution bounding, noise, partition
//! selection and accuracy for scenes with `privacy = {…}`.
//!
//! A DP query runs as a scan of the researcher's (checked, masked) input
//! that projects, row by row, the group keys, the raw person key and the
//! measured arguments, clamped to their public bounds and quantized to a
//! fixed-point grid ([`Scan`], one per partition, rows bucketed by person
//! hash). Per bucket, each person then keeps at most `groups_per_person`
//! groups and `rows_per_person` rows per group — those with the smallest
//! keyed priority, so the choice is deterministic and independent of row
//! order, partitioning or the database's `random()`. The group totals are
//! summed exactly on integers, and discrete Laplace noise (CKS20,
//! [`crate::noise`]) calibrated to the bounded contribution is added to
//! every measured total. Released values are derived from the noisy totals
//! only (post-processing) and snapped to a grid no finer than their noise
//! scale.
//!
//! ## Accounting
//! A query charges the scene's `epsilon_per_query`, split evenly over the
//! totals it measures (distinct persons always, plus rows, non-null counts,
//! sums and sums of squares as its aggregates need). One person changes a
//! total of one group by at most the per-group sensitivity and appears in at
//! most `groups_per_person` groups, so each total over all groups is
//! `ε_query / measured`-DP and the query is `ε_query`-DP by basic composition.
//!
//! ## Partition selection
//! Group keys from a declared public domain (a column's `domain`, a UDF's
//! declared value list) are released for every domain value, present in the
//! data or not. Keys drawn from the data are released only when the noisy
//! distinct-person count reaches `τ = 1 + ⌈t·ln(L / (δ(1 + e^{-1/t})))⌉`
//! (`t` the persons noise scale, `L` = `groups_per_person`): a group that
//! exists only because of one person is released with probability at most
//! `δ / L`, so the query is `(ε_query, δ)`-DP. Without `delta` such keys are
//! refused. The scene's `min_persons` then applies to the noisy person
//! count (post-processing, free).

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::logical_expr::{Expr, JoinType, LogicalPlan, cast as cast_expr, lit};
use rand::{CryptoRng, Rng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cells::{Identity, each_person};
use crate::error::{Code, Error, Result, refuse};
use crate::gate::{self, Cell};
use crate::noise::{Ratio, discrete_laplace};
use crate::policy::{Dataset, OutputRules, PrivacyRules, PublicValue};
use crate::udf::QueryUdfs;

/// At most this many measured arguments per query.
const MAX_ARGS: usize = 16;
/// At most this many cells in an enumerated public domain.
const MAX_DOMAIN_CELLS: usize = 10_000;
/// Fixed-point grid: at most this many steps between 0 and a bound.
const QUANTUM_STEPS: f64 = 65_536.0;

fn internal(e: impl std::fmt::Display) -> Error {
    Error::internal(format!("dp: {e}"))
}

// ---------------------------------------------------------------- keyed priority

/// A keyed 64-bit mix (SplitMix64 finalizer rounds). It only decides which
/// of one person's rows or groups count; privacy does not depend on it
/// (any choice made from one person's own data keeps the bound), the key
/// only keeps the choice unpredictable to the researcher.
fn mix(key: u64, a: u64, b: u64) -> u64 {
    fn fin(mut h: u64) -> u64 {
        h ^= h >> 30;
        h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^= h >> 27;
        h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^ (h >> 31)
    }
    fin(fin(key ^ a)
        .wrapping_add(b)
        .wrapping_add(0x9e37_79b9_7f4a_7c15))
}

fn row_priority(key: u64, person: u64, vals: &[i64], nulls: u32) -> u64 {
    let mut h = mix(key, person, u64::from(nulls));
    for v in vals {
        h = mix(key, h, *v as u64);
    }
    h
}

mod bound;
mod mechanism;
mod plan;

pub use bound::*;
pub use mechanism::*;
pub use plan::*;

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, Int64Array, StringArray};
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn privacy(eps: f64, k: u32, l: u32, delta: f64) -> PrivacyRules {
        PrivacyRules {
            epsilon_total: 10.0,
            epsilon_per_query: eps,
            delta,
            rows_per_person: k,
            groups_per_person: l,
        }
    }

    fn rules(min_persons: u64) -> OutputRules {
        OutputRules {
            min_persons,
            round_to: 1,
            decimals: 0,
            dominance: None,
        }
    }

    fn bounding(k: usize, l: usize, spec: ArgSpec) -> Bounding {
        Bounding {
            k,
            l,
            args: vec![spec],
            row_key: 7,
            group_key: 9,
        }
    }

    /// A scan of `rows` = (group, person, value); without groups when
    /// `keyed` is false.
    fn scan(spec: ArgSpec, rows: &[(i64, &str, f64)], keyed: bool) -> Scan {
        let mut cols: Vec<(&str, ArrayRef)> = Vec::new();
        if keyed {
            cols.push((
                "g",
                Arc::new(Int64Array::from(
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                )),
            ));
        }
        cols.push((
            "p",
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
        ));
        cols.push((
            "v",
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            )),
        ));
        let types: &[DataType] = if keyed { &[DataType::Int64] } else { &[] };
        let mut s = Scan::new(&[spec], types);
        s.add_batch(&RecordBatch::try_from_iter(cols).unwrap())
            .unwrap();
        s
    }

    fn by_key(t: Vec<(Vec<Cell>, Vec<i128>)>) -> BTreeMap<String, Vec<i128>> {
        t.into_iter().map(|(k, v)| (key_text(&k), v)).collect()
    }

    #[test]
    fn rows_per_person_and_clamps_bound_a_person() {
        let spec = ArgSpec::new(0.0, 10.0, 0);
        // Person a has 5 rows in group 0, one far out of bounds.
        let rows = [
            (0, "a", 3.0),
            (0, "a", 4.0),
            (0, "a", 1e9),
            (0, "a", 5.0),
            (0, "a", 6.0),
            (0, "b", 2.0),
            (1, "a", 1.0),
        ];
        let m = Mechanism::new(
            &privacy(1.0, 2, 2, 0.0),
            &rules(0),
            vec![spec],
            vec![Output::Key(0), Output::Count(Stat::Rows), Output::Sum(0)],
            1,
            Some(vec![vec![Cell::Int(0)], vec![Cell::Int(1)]]),
        )
        .unwrap();
        let t = by_key(
            m.totals(&bounding(2, 2, spec), &[scan(spec, &rows, true)])
                .unwrap(),
        );
        let (rows_i, sum_i) = (m.stat(Stat::Rows), m.stat(Stat::Sum(0)));
        // Group 0: a keeps 2 rows, b 1 → 3 rows, 2 persons; a's sum ≤ 2 × 10.
        let g0 = &t[&key_text(&[Cell::Int(0)])];
        assert_eq!(g0[0], 2);
        assert_eq!(g0[rows_i], 3);
        assert!(g0[sum_i] <= 20 + 2);
        assert_eq!(t[&key_text(&[Cell::Int(1)])][rows_i], 1);
    }

    #[test]
    fn groups_per_person_is_enforced_deterministically() {
        let spec = ArgSpec::new(0.0, 1.0, 0);
        let rows: Vec<(i64, &str, f64)> = (0..5).map(|g| (g, "a", 1.0)).collect();
        let m = Mechanism::new(
            &privacy(1.0, 1, 2, 0.0),
            &rules(0),
            vec![spec],
            vec![Output::Key(0), Output::Count(Stat::Rows)],
            1,
            Some((0..5).map(|g| vec![Cell::Int(g)]).collect()),
        )
        .unwrap();
        let b = bounding(1, 2, spec);
        let t1 = m.totals(&b, &[scan(spec, &rows, true)]).unwrap();
        let kept: i128 = t1.iter().map(|(_, t)| t[0]).sum();
        assert_eq!(kept, 2, "a counts in exactly 2 of its 5 groups");
        let mut reversed = rows.clone();
        reversed.reverse();
        assert_eq!(
            by_key(t1),
            by_key(m.totals(&b, &[scan(spec, &reversed, true)]).unwrap()),
            "the choice does not depend on row order"
        );
    }

    #[test]
    fn partitioning_does_not_change_what_is_kept() {
        let spec = ArgSpec::new(0.0, 100.0, 0);
        let names: Vec<String> = (0..40).map(|i| format!("p{}", i % 7)).collect();
        let rows: Vec<(i64, &str, f64)> = (0..40)
            .map(|i| (i as i64 % 3, names[i].as_str(), i as f64))
            .collect();
        let m = Mechanism::new(
            &privacy(1.0, 2, 2, 0.0),
            &rules(0),
            vec![spec],
            vec![Output::Key(0), Output::Sum(0)],
            1,
            Some((0..3).map(|g| vec![Cell::Int(g)]).collect()),
        )
        .unwrap();
        let b = bounding(2, 2, spec);
        let whole = m.totals(&b, &[scan(spec, &rows, true)]).unwrap();
        let split = m
            .totals(
                &b,
                &[scan(spec, &rows[17..], true), scan(spec, &rows[..17], true)],
            )
            .unwrap();
        assert_eq!(
            by_key(whole),
            by_key(split),
            "the kept rows do not depend on partitioning or order"
        );
    }

    #[test]
    fn string_view_keys_group_by_value() {
        use datafusion::arrow::array::StringViewArray;
        let spec = ArgSpec::new(0.0, 1.0, 0);
        // Long and short keys, repeated and as separate copies, and a null.
        let long = "a-department-name-longer-than-twelve";
        let keys = StringViewArray::from(vec![
            Some(long),
            Some("short"),
            Some(long),
            None,
            Some("short"),
            None,
        ]);
        let batch = RecordBatch::try_from_iter(vec![
            ("g", Arc::new(keys) as ArrayRef),
            (
                "p",
                Arc::new(StringArray::from(vec!["a", "b", "c", "d", "e", "f"])) as ArrayRef,
            ),
            ("v", Arc::new(Float64Array::from(vec![1.0; 6])) as ArrayRef),
        ])
        .unwrap();
        let mut sc = Scan::new(&[spec], &[DataType::Utf8View]);
        sc.add_batch(&batch).unwrap();
        let m = Mechanism::new(
            &privacy(1.0, 1, 1, 1e-6),
            &rules(0),
            vec![spec],
            vec![Output::Key(0), Output::Count(Stat::Rows)],
            1,
            None,
        )
        .unwrap();
        let t = by_key(m.totals(&bounding(1, 1, spec), &[sc]).unwrap());
        assert_eq!(t.len(), 3);
        assert_eq!(t[&key_text(&[Cell::Text(long.into())])][0], 2);
        assert_eq!(t[&key_text(&[Cell::Text("short".into())])][0], 2);
        assert_eq!(t[&key_text(&[Cell::Null])][0], 2);
    }

    #[test]
    fn steps_and_half_widths() {
        assert_eq!(nice_step(7.3), 10.0);
        assert_eq!(nice_step(14.0), 20.0);
        assert_eq!(nice_step(0.3), 0.5);
        assert_eq!(nice_step(1.0), 1.0);
        // Discrete Laplace, t = 10: P(|Z| > m) ≤ 5% first at m = 29.
        let m = laplace_half_width(10.0, 0.05);
        let q: f64 = (-0.1f64).exp();
        let tail = |m: f64| 2.0 * q.powf(m + 1.0) / (1.0 + q);
        assert!(tail(m) <= 0.05 && tail(m - 1.0) > 0.05, "m = {m}");
    }

    #[test]
    fn intervals_cover_the_bounded_truth() {
        // 95% nominal: over 2,000 releases, coverage should be ≥ 93%.
        let spec = ArgSpec::new(0.0, 10.0, 0);
        let m = Mechanism::new(
            &privacy(0.5, 1, 1, 0.0),
            &rules(0),
            vec![spec],
            vec![Output::Count(Stat::Rows), Output::Sum(0), Output::Avg(0)],
            0,
            Some(vec![vec![]]),
        )
        .unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        // 200 persons, one row each, values averaging 3 (bounds [0, 10],
        // midpoint 5).
        let truth = [200.0, 600.0, 3.0];
        let mut t = vec![0i128; m.stats.len()];
        t[m.stat(Stat::Persons)] = 200;
        t[m.stat(Stat::Rows)] = 200;
        t[m.stat(Stat::Count(0))] = 200;
        t[m.stat(Stat::Sum(0))] = 600;
        t[m.stat(Stat::CSum(0))] = 600 - 5 * 200;
        let mut covered = [0usize; 3];
        for _ in 0..2000 {
            let r = m.release(vec![(vec![], t.clone())], &mut rng).unwrap();
            for (c, a) in r.accuracy[0].iter().enumerate() {
                let a = a.unwrap();
                if a.interval[0] <= truth[c] && truth[c] <= a.interval[1] {
                    covered[c] += 1;
                }
            }
        }
        for c in covered {
            assert!(c >= 1860, "coverage {c}/2000");
        }
    }

    /// StatDP-style check: the output distribution of a count over a
    /// database and its neighbour with one more person differ by at most
    /// e^ε per event, up to sampling error.
    #[test]
    fn neighbouring_databases_are_indistinguishable_beyond_epsilon() {
        let eps = 0.5;
        let spec = ArgSpec::new(0.0, 1.0, 0);
        let m = Mechanism::new(
            &privacy(eps, 1, 1, 0.0),
            &rules(0),
            vec![spec],
            vec![Output::Count(Stat::Persons)],
            0,
            Some(vec![vec![]]),
        )
        .unwrap();
        let run = |n: usize, rng: &mut ChaCha20Rng| -> BTreeMap<i64, usize> {
            // Each person has three rows; bounding keeps one.
            let names: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
            let r: Vec<(i64, &str, f64)> = names
                .iter()
                .flat_map(|p| [(0, p.as_str(), 1.0); 3])
                .collect();
            let t = m
                .totals(&bounding(1, 1, spec), &[scan(spec, &r, false)])
                .unwrap();
            let mut hist = BTreeMap::new();
            for _ in 0..20_000 {
                let out = m.release(t.clone(), rng).unwrap();
                let Cell::Int(v) = out.rows[0][0] else {
                    panic!()
                };
                *hist.entry(v).or_default() += 1;
            }
            hist
        };
        let mut rng = ChaCha20Rng::seed_from_u64(2024);
        let d = run(50, &mut rng);
        let d1 = run(51, &mut rng);
        // One event per output value with enough mass on both sides.
        let mut checked = 0;
        for (v, a) in &d {
            let b = d1.get(v).copied().unwrap_or(0);
            if *a < 500 || b < 500 {
                continue;
            }
            let (pa, pb) = (*a as f64 / 20_000.0, b as f64 / 20_000.0);
            // 4-sigma sampling slack on each estimate.
            let slack = |p: f64| 4.0 * (p * (1.0 - p) / 20_000.0).sqrt();
            assert!(pa - slack(pa) <= eps.exp() * (pb + slack(pb)), "value {v}");
            assert!(pb - slack(pb) <= eps.exp() * (pa + slack(pa)), "value {v}");
            checked += 1;
        }
        assert!(checked >= 3, "too few events to compare");
        // And the mechanism is not trivially constant: the two differ.
        assert_ne!(d, d1);
    }

    #[test]
    fn data_keys_need_delta_and_get_a_threshold() {
        let spec = ArgSpec::new(0.0, 1.0, 0);
        let out = vec![Output::Key(0), Output::Count(Stat::Persons)];
        let err = Mechanism::new(
            &privacy(1.0, 1, 1, 0.0),
            &rules(0),
            vec![spec],
            out.clone(),
            1,
            None,
        )
        .unwrap_err();
        assert!(matches!(err, Error::Refused(r) if r.code == Code::DpPartition));
        let m = Mechanism::new(
            &privacy(1.0, 1, 1, 1e-6),
            &rules(0),
            vec![spec],
            out,
            1,
            None,
        )
        .unwrap();
        // Only persons are measured: t = 1, τ = 1 + ⌈ln(1/(δ(1+e⁻¹)))⌉.
        assert!(m.threshold > 10.0, "threshold {}", m.threshold);
        // A single-person group is almost never released.
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let mut t = vec![0i128; m.stats.len()];
        t[0] = 1;
        let released = (0..20_000)
            .filter(|_| {
                !m.release(vec![(vec![Cell::Int(1)], t.clone())], &mut rng)
                    .unwrap()
                    .rows
                    .is_empty()
            })
            .count();
        assert_eq!(released, 0);
    }
}
