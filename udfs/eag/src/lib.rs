//! HbA1c → estimated average glucose (ADAG study, Nathan et al., Diabetes
//! Care 2008): eAG (mg/dL) = 28.7 × A1C − 46.7.
#![cfg_attr(not(test), no_std)]

kexin_guest::export_abi!(
    r#"{"abi":1,"functions":[{"name":"hba1c_to_eag","kind":"scalar","args":["f64"],"returns":"f64","description":"estimated average glucose in mg/dL from HbA1c in percent (ADAG 2008)"}]}"#
);

/// eAG in mg/dL from HbA1c in % (NGSP); `None` outside 3–20 %.
pub fn hba1c_to_eag(hba1c_percent: f64) -> Option<f64> {
    if !(3.0..=20.0).contains(&hba1c_percent) {
        return None;
    }
    Some(28.7 * hba1c_percent - 46.7)
}

#[cfg(target_arch = "wasm32")]
#[no_mangle]
pub extern "C" fn kx_hba1c_to_eag(call: u32) -> i32 {
    kexin_guest::map1_f64(call, hba1c_to_eag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ada_table() {
        // The ADA's published table, rounded to whole mg/dL (half-way cases
        // such as 125.5 are printed rounded up, so allow ±0.5).
        for (a1c, eag) in [
            (5.0, 97.0),
            (6.0, 126.0),
            (7.0, 154.0),
            (8.0, 183.0),
            (9.0, 212.0),
            (10.0, 240.0),
            (12.0, 298.0),
        ] {
            assert!(
                (hba1c_to_eag(a1c).unwrap() - eag).abs() <= 0.5 + 1e-9,
                "A1C {a1c}"
            );
        }
        assert_eq!(hba1c_to_eag(0.5), None);
    }
}
