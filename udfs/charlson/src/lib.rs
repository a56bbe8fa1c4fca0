//! Charlson comorbidity weight of one ICD-10 code (Charlson 1987 weights,
//! ICD-10 coding of Quan et al., Med Care 2005;43:1130-9). Summed over a
//! person's distinct conditions it gives the Charlson Comorbidity Index, a
//! standard predictor of 1-year mortality.
//!
//! Works on full codes ("E11.2") and on codes generalised to their
//! three-character category ("E11"): a category whose weight depends on the
//! fourth character gets the lower weight.
#![cfg_attr(not(test), no_std)]

kexin_guest::export_abi!(
    r#"{"abi":1,"functions":[{"name":"charlson_weight","kind":"scalar","args":["utf8"],"returns":"i32","domain":{"range":[0,6]},"description":"Charlson comorbidity weight (0-6) of an ICD-10 code, Quan 2005 coding"}]}"#
);

/// (letter, category, optional fourth character) of an ICD-10 code.
fn parse(code: &str) -> Option<(u8, u32, Option<u32>)> {
    let b: [u8; 8] = {
        let mut out = [0u8; 8];
        let mut n = 0;
        for c in code.bytes().filter(|c| *c != b'.' && *c != b' ') {
            if n == 8 {
                return None;
            }
            out[n] = c.to_ascii_uppercase();
            n += 1;
        }
        if n < 3 {
            return None;
        }
        out
    };
    if !b[0].is_ascii_uppercase() || !b[1].is_ascii_digit() || !b[2].is_ascii_digit() {
        return None;
    }
    let cat = u32::from(b[1] - b'0') * 10 + u32::from(b[2] - b'0');
    let sub = if b[3].is_ascii_digit() {
        Some(u32::from(b[3] - b'0'))
    } else {
        None
    };
    Some((b[0], cat, sub))
}

/// The weight (0–6); `None` if the text is not an ICD-10 code.
pub fn charlson_weight(code: &str) -> Option<i32> {
    let (l, c, s) = parse(code)?;
    let sub = |set: &[u32]| s.map_or(false, |d| set.contains(&d));
    let w = match l {
        // Metastatic solid tumour (6) before any malignancy (2).
        b'C' if (77..=80).contains(&c) => 6,
        b'C' if matches!(c, 0..=26 | 30..=34 | 37..=41 | 43 | 45..=58 | 60..=76 | 81..=85 | 88 | 90..=97) => {
            2
        }
        b'B' if matches!(c, 20..=22 | 24) => 6,
        // Moderate or severe liver disease (3).
        b'I' if c == 85 && sub(&[0, 9]) => 3,
        b'I' if (c == 86 && sub(&[4])) || (c == 98 && sub(&[2])) => 3,
        b'K' if (c == 70 && sub(&[4]))
            || (c == 71 && sub(&[1]))
            || (c == 72 && sub(&[1, 9]))
            || (c == 76 && sub(&[5, 6, 7])) =>
        {
            3
        }
        // Diabetes: with chronic complications (2), otherwise (1).
        b'E' if (10..=14).contains(&c) => {
            if sub(&[2, 3, 4, 5, 7]) {
                2
            } else {
                1
            }
        }
        // Hemiplegia or paraplegia (2).
        b'G' if matches!(c, 81 | 82)
            || (c == 4 && sub(&[1]))
            || (c == 11 && sub(&[4]))
            || (c == 80 && sub(&[1, 2]))
            || (c == 83 && sub(&[0, 1, 2, 3, 4, 9])) =>
        {
            2
        }
        // Renal disease (2).
        b'N' if matches!(c, 18 | 19)
            || (matches!(c, 3 | 5) && sub(&[2, 3, 4, 5, 6, 7]))
            || (c == 25 && sub(&[0])) =>
        {
            2
        }
        b'I' if (c == 12 && sub(&[0])) || (c == 13 && sub(&[1])) => 2,
        b'Z' if (c == 49 && sub(&[0, 1, 2]))
            || (c == 94 && sub(&[0]))
            || (c == 99 && sub(&[2])) =>
        {
            2
        }
        // Weight-1 conditions.
        b'I' if matches!(c, 21 | 22 | 43 | 50 | 60..=69 | 70 | 71) => 1,
        b'I' if (c == 25 && sub(&[2, 5]))
            || (c == 9 && sub(&[9]))
            || (c == 11 && sub(&[0]))
            || (c == 13 && sub(&[0, 2]))
            || (c == 42 && sub(&[0, 5, 6, 7, 8, 9]))
            || (c == 27 && sub(&[8, 9]))
            || (c == 73 && sub(&[1, 8, 9]))
            || (c == 77 && sub(&[1]))
            || (c == 79 && sub(&[0, 2])) =>
        {
            1
        }
        b'G' if matches!(c, 45 | 46 | 30) || (c == 31 && sub(&[1])) => 1,
        b'F' if matches!(c, 0..=3) || (c == 5 && sub(&[1])) => 1,
        b'J' if matches!(c, 40..=47 | 60..=67)
            || (c == 68 && sub(&[4]))
            || (c == 70 && sub(&[1, 3])) =>
        {
            1
        }
        b'M' if matches!(c, 5 | 6 | 32..=34)
            || (c == 31 && sub(&[5]))
            || (c == 35 && sub(&[1, 3]))
            || (c == 36 && sub(&[0])) =>
        {
            1
        }
        b'K' if matches!(c, 25..=28 | 73 | 74) => 1,
        b'K' if (c == 70 && sub(&[0, 1, 2, 3, 9]))
            || (c == 71 && sub(&[3, 4, 5, 7]))
            || (c == 76 && sub(&[0, 2, 3, 4, 8, 9]))
            || (c == 55 && sub(&[1, 8, 9])) =>
        {
            1
        }
        b'B' if c == 18 => 1,
        b'H' if c == 34 && sub(&[0]) => 1,
        b'P' if c == 29 && sub(&[0]) => 1,
        b'Z' if (c == 95 && sub(&[8, 9])) || (c == 94 && sub(&[4])) => 1,
        _ => 0,
    };
    Some(w)
}

#[cfg(target_arch = "wasm32")]
#[no_mangle]
pub extern "C" fn kx_charlson_weight(call: u32) -> i32 {
    kexin_guest::map_i32(call, |r| charlson_weight(r.str(0)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quan_2005_categories() {
        for (code, w) in [
            ("I21.9", 1), // myocardial infarction
            ("I50.9", 1), // congestive heart failure
            ("I63.9", 1), // cerebrovascular disease
            ("J44.1", 1), // chronic pulmonary disease
            ("E11.9", 1), // diabetes without complication
            ("E11.2", 2), // diabetes with renal complication
            ("E11", 1),   // generalised category: the lower weight
            ("N18.3", 2), // chronic kidney disease
            ("C34.1", 2), // lung cancer
            ("C78.0", 6), // secondary (metastatic) neoplasm
            ("B20", 6),   // HIV disease
            ("K72.1", 3), // chronic hepatic failure
            ("G81.9", 2), // hemiplegia
            ("J18.9", 0), // pneumonia: not a Charlson condition
            ("I10", 0),   // essential hypertension: not a Charlson condition
            ("O80", 0),
            ("k25.0", 1), // lower case accepted
        ] {
            assert_eq!(charlson_weight(code), Some(w), "{code}");
        }
        assert_eq!(charlson_weight("hello"), None);
        assert_eq!(charlson_weight("E1"), None);
    }
}
