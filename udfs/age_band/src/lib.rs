//! Age band on a reference date, for grouping: a finite, declared domain.
#![cfg_attr(not(test), no_std)]

kexin_guest::export_abi!(
    r#"{"abi":1,"functions":[{"name":"age_band","kind":"scalar","args":["date","date"],"returns":"utf8","domain":{"values":["0-17","18-44","45-64","65-74","75+"]},"description":"age band (0-17, 18-44, 45-64, 65-74, 75+) of a birth date on a reference date"}]}"#
);

/// The band for a birth date on date `at` (both days since 1970-01-01);
/// `None` if `at` is before the birth date.
pub fn age_band(birth: i32, at: i32) -> Option<&'static str> {
    let age = kexin_guest::age_years(birth, at)?;
    Some(match age {
        0..=17 => "0-17",
        18..=44 => "18-44",
        45..=64 => "45-64",
        65..=74 => "65-74",
        _ => "75+",
    })
}

#[cfg(target_arch = "wasm32")]
#[no_mangle]
pub extern "C" fn kx_age_band(call: u32) -> i32 {
    kexin_guest::map_utf8(call, |r| age_band(r.date(0)?, r.date(1)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn band_edges() {
        // 2008-01-01 = 13879; 2026-01-01 = 20454 (exactly 18 years).
        assert_eq!(age_band(13_879, 20_454), Some("18-44"));
        assert_eq!(age_band(13_879, 20_453), Some("0-17"));
        assert_eq!(age_band(0, 20_454), Some("45-64"));
        assert_eq!(age_band(-3_653, 20_454), Some("65-74"));
        assert_eq!(age_band(-10_000, 20_454), Some("75+"));
        assert_eq!(age_band(20_455, 20_454), None);
    }
}
