//! Body-mass index: weight (kg) / height (m)².
#![cfg_attr(not(test), no_std)]

kexin_guest::export_abi!(
    r#"{"abi":1,"functions":[{"name":"bmi","kind":"scalar","args":["f64","f64"],"returns":"f64","description":"body-mass index from weight in kg and height in cm"}]}"#
);

/// BMI in kg/m²; `None` outside plausible adult measurements
/// (weight 1–500 kg, height 40–260 cm).
pub fn bmi(weight_kg: f64, height_cm: f64) -> Option<f64> {
    if !(1.0..=500.0).contains(&weight_kg) || !(40.0..=260.0).contains(&height_cm) {
        return None;
    }
    let m = height_cm / 100.0;
    Some(weight_kg / (m * m))
}

#[cfg(target_arch = "wasm32")]
#[no_mangle]
pub extern "C" fn kx_bmi(call: u32) -> i32 {
    kexin_guest::map2_f64(call, bmi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_reference_values() {
        // 70 kg at 175 cm is 22.86 kg/m² (WHO "normal" band 18.5–24.9).
        assert!((bmi(70.0, 175.0).unwrap() - 22.857_142_857).abs() < 1e-9);
        // 95 kg at 170 cm: 32.87 (obese class I).
        assert!((bmi(95.0, 170.0).unwrap() - 32.871_972_318).abs() < 1e-9);
        assert_eq!(bmi(70.0, 0.0), None);
        assert_eq!(bmi(f64::NAN, 170.0), None);
    }
}
