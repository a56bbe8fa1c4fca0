//! Geometric mean, an aggregate: the usual summary for log-normal lab values
//! and costs. Non-positive values and nulls are skipped.
#![cfg_attr(not(test), no_std)]

kexin_guest::export_abi!(
    r#"{"abi":1,"functions":[{"name":"geomean","kind":"aggregate","args":["f64"],"returns":"f64","state_bytes":16,"description":"geometric mean of the positive values"}]}"#
);

/// State: [sum of ln x, count].
pub fn update(state: &mut [f64; 2], x: Option<f64>) {
    if let Some(x) = x.filter(|x| *x > 0.0 && x.is_finite()) {
        state[0] += kexin_guest::math::ln(x);
        state[1] += 1.0;
    }
}

pub fn merge(state: &mut [f64; 2], other: &[f64; 2]) {
    state[0] += other[0];
    state[1] += other[1];
}

pub fn finish(state: &[f64; 2]) -> Option<f64> {
    if state[1] > 0.0 {
        Some(kexin_guest::math::exp(state[0] / state[1]))
    } else {
        None
    }
}

#[cfg(target_arch = "wasm32")]
#[no_mangle]
pub extern "C" fn kx_geomean_init(state: u32) -> i32 {
    kexin_guest::with_state::<2, _, _>(state, |s| *s = [0.0, 0.0]);
    kexin_guest::OK
}

#[cfg(target_arch = "wasm32")]
#[no_mangle]
pub extern "C" fn kx_geomean_update(state: u32, call: u32) -> i32 {
    kexin_guest::with_state::<2, _, _>(state, |s| {
        kexin_guest::for_each_row(call, |r| update(s, r.f64(0)))
    })
}

#[cfg(target_arch = "wasm32")]
#[no_mangle]
pub extern "C" fn kx_geomean_merge(state: u32, other: u32) -> i32 {
    let o = kexin_guest::with_state::<2, _, _>(other, |o| *o);
    kexin_guest::with_state::<2, _, _>(state, |s| merge(s, &o));
    kexin_guest::OK
}

#[cfg(target_arch = "wasm32")]
#[no_mangle]
pub extern "C" fn kx_geomean_finalize(state: u32, call: u32) -> i32 {
    let v = kexin_guest::with_state::<2, _, _>(state, |s| finish(s));
    kexin_guest::finish_f64(call, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometric_mean_of_known_sets() {
        let mut s = [0.0, 0.0];
        for x in [2.0, 8.0] {
            update(&mut s, Some(x));
        }
        assert!((finish(&s).unwrap() - 4.0).abs() < 1e-12);
        // Split and merged equals whole.
        let (mut a, mut b) = ([0.0, 0.0], [0.0, 0.0]);
        update(&mut a, Some(1.0));
        update(&mut b, Some(10.0));
        update(&mut b, Some(100.0));
        update(&mut b, Some(-5.0));
        update(&mut b, None);
        merge(&mut a, &b);
        assert!((finish(&a).unwrap() - 10.0).abs() < 1e-12);
        assert_eq!(finish(&[0.0, 0.0]), None);
    }
}
