//! Column masks and clamps, applied at the base-table scan.
//!
//! Each visible column is replaced by `kexin_mask(column)`, a scalar function
//! that first clamps numbers to the column's public bounds (NaN becomes NULL)
//! and then applies the mask. The result has the column's own type, so
//! everything above the scan — predicates, joins, functions, casts — sees only
//! the masked value and the plan's schema does not change.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Date32Array, Float32Array, Float64Array, StringArray,
    StringViewArray, new_null_array,
};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type,
};
use datafusion::common::{Result as DfResult, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

pub use crate::clock::{civil_from_days, days_from_civil};
pub use crate::keys::SecretKey;

/// The masks a column policy can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MaskKind {
    /// Released as stored (subject to the disclosure rules of its kind).
    None,
    /// Always NULL.
    Redact,
    /// HMAC-SHA256 under a key derived per scene from the node's master key.
    Pseudonym,
    /// Keep the first `a` and last `b` characters, star the rest.
    Partial(u32, u32),
    /// Numbers floored to a multiple of `n`.
    Band(u32),
    /// The first `n` characters.
    Prefix(u32),
    /// Dates truncated to the first day of the month.
    Month,
    /// Dates truncated to the first day of the year.
    Year,
}

impl MaskKind {
    /// Parse the policy-file form: `redact`, `pseudonym`, `partial(3,4)`,
    /// `band(5)`, `prefix(4)`, `month`, `year`, `none`.
    pub fn parse(s: &str) -> Result<MaskKind, String> {
        let s = s.trim();
        let args = |name: &str| -> Option<Vec<u32>> {
            let inner = s.strip_prefix(name)?.strip_prefix('(')?.strip_suffix(')')?;
            inner
                .split(',')
                .map(|x| x.trim().parse::<u32>().ok())
                .collect()
        };
        let bad = || {
            format!(
                "unknown mask {s:?} (expected none, redact, pseudonym, partial(a,b), band(n), prefix(n), month or year)"
            )
        };
        Ok(match s {
            "none" => MaskKind::None,
            "redact" => MaskKind::Redact,
            "pseudonym" => MaskKind::Pseudonym,
            "month" => MaskKind::Month,
            "year" => MaskKind::Year,
            _ if s.starts_with("partial(") => match args("partial").as_deref() {
                Some([a, b]) if *a + *b > 0 && *a + *b <= 16 => MaskKind::Partial(*a, *b),
                _ => return Err("partial(a,b) needs two whole numbers with 0 < a+b <= 16".into()),
            },
            _ if s.starts_with("band(") => match args("band").as_deref() {
                Some([n]) if (1..=1_000_000).contains(n) => MaskKind::Band(*n),
                _ => return Err("band(n) needs a whole number 1..=1000000".into()),
            },
            _ if s.starts_with("prefix(") => match args("prefix").as_deref() {
                Some([n]) if (1..=64).contains(n) => MaskKind::Prefix(*n),
                _ => return Err("prefix(n) needs a whole number 1..=64".into()),
            },
            _ => return Err(bad()),
        })
    }

    /// The mask coarsens values into a small public domain (usable as group key).
    pub fn generalizes(self) -> bool {
        matches!(
            self,
            MaskKind::Band(_) | MaskKind::Prefix(_) | MaskKind::Month | MaskKind::Year
        )
    }

    /// The mask removes or replaces the identifying value.
    pub fn hides_identity(self) -> bool {
        matches!(
            self,
            MaskKind::Redact | MaskKind::Pseudonym | MaskKind::Partial(..)
        )
    }

    /// Can this mask (and optional bounds) apply to a column of `dt`?
    pub fn check_type(self, dt: &DataType, has_bounds: bool) -> Result<(), String> {
        let numeric = matches!(
            dt,
            DataType::Int16
                | DataType::Int32
                | DataType::Int64
                | DataType::Float32
                | DataType::Float64
        );
        let string = matches!(dt, DataType::Utf8 | DataType::Utf8View);
        let date = matches!(dt, DataType::Date32);
        if has_bounds && !numeric {
            return Err(format!("bounds need a numeric column, found {dt}"));
        }
        let ok = match self {
            MaskKind::None | MaskKind::Redact => {
                numeric || string || date || matches!(dt, DataType::Boolean)
            }
            MaskKind::Pseudonym | MaskKind::Partial(..) | MaskKind::Prefix(_) => string,
            MaskKind::Band(_) => numeric,
            MaskKind::Month | MaskKind::Year => date,
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "mask {self:?} cannot apply to a column of type {dt}"
            ))
        }
    }
}

// HMAC accepts keys of any length, so `new_from_slice` cannot fail.
fn unreachable_hmac() -> Hmac<Sha256> {
    <Hmac<Sha256> as KeyInit>::new(&Default::default())
}

/// The `kexin_mask` scalar function for one column: clamp, then mask.
#[derive(Debug, Clone)]
pub struct ColumnMask {
    signature: Signature,
    kind: MaskKind,
    bounds: Option<(f64, f64)>,
    /// Only set for pseudonyms: the scene's pseudonym key.
    key: Option<SecretKey>,
}

impl PartialEq for ColumnMask {
    fn eq(&self, o: &Self) -> bool {
        self.kind == o.kind
            && self.bounds.map(|(a, b)| (a.to_bits(), b.to_bits()))
                == o.bounds.map(|(a, b)| (a.to_bits(), b.to_bits()))
            && self.key == o.key
    }
}
impl Eq for ColumnMask {}
impl Hash for ColumnMask {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.kind.hash(state);
        self.bounds
            .map(|(a, b)| (a.to_bits(), b.to_bits()))
            .hash(state);
        self.key.hash(state);
    }
}

impl ColumnMask {
    pub fn new(kind: MaskKind, bounds: Option<(f64, f64)>, key: Option<SecretKey>) -> Self {
        Self {
            signature: Signature::any(1, Volatility::Immutable),
            kind,
            bounds,
            key,
        }
    }

    pub fn into_udf(self) -> Arc<ScalarUDF> {
        Arc::new(ScalarUDF::new_from_impl(self))
    }

    /// Is this a no-op (no mask, no bounds)?
    pub fn is_identity(&self) -> bool {
        self.kind == MaskKind::None && self.bounds.is_none()
    }

    fn pseudonym(&self, v: &str) -> String {
        let key = self.key.as_ref().map(|k| *k.expose()).unwrap_or([0; 32]);
        let mut mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(&key).unwrap_or_else(|_| unreachable_hmac());
        mac.update(v.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    fn mask_str(&self, v: &str) -> String {
        match self.kind {
            MaskKind::Pseudonym => self.pseudonym(v),
            MaskKind::Partial(a, b) => {
                let chars: Vec<char> = v.chars().collect();
                let (a, b) = (a as usize, b as usize);
                if chars.len() <= a + b {
                    "*".repeat(chars.len().max(1))
                } else {
                    let mut out: String = chars[..a].iter().collect();
                    out.extend(std::iter::repeat_n('*', chars.len() - a - b));
                    out.extend(&chars[chars.len() - b..]);
                    out
                }
            }
            MaskKind::Prefix(n) => v.chars().take(n as usize).collect(),
            _ => v.to_string(),
        }
    }

    fn clamp_f(&self, v: f64) -> Option<f64> {
        if v.is_nan() {
            return None;
        }
        let v = match self.bounds {
            Some((lo, hi)) => v.clamp(lo, hi),
            None => v,
        };
        Some(match self.kind {
            MaskKind::Band(n) => (v / n as f64).floor() * n as f64,
            _ => v,
        })
    }

    /// The integer clamp and band, computed once per batch: `(lo, hi,
    /// band)`.
    fn int_rule(&self) -> (i64, i64, i64) {
        let (lo, hi) = match self.bounds {
            Some((lo, hi)) => (lo.ceil() as i64, hi.floor() as i64),
            None => (i64::MIN, i64::MAX),
        };
        let band = match self.kind {
            MaskKind::Band(n) => n as i64,
            _ => 1,
        };
        (lo, hi, band)
    }

    fn clamp_int(rule: (i64, i64, i64), v: i64) -> i64 {
        let (lo, hi, band) = rule;
        let v = v.clamp(lo, hi);
        if band == 1 {
            v
        } else {
            // Saturating: near i64::MIN the floor would not fit.
            v.div_euclid(band).saturating_mul(band)
        }
    }

    #[cfg(test)]
    fn clamp_i(&self, v: i64) -> i64 {
        Self::clamp_int(self.int_rule(), v)
    }

    fn apply(&self, arr: &ArrayRef) -> DfResult<ArrayRef> {
        if self.kind == MaskKind::Redact {
            return Ok(new_null_array(arr.data_type(), arr.len()));
        }
        let out: ArrayRef = match arr.data_type() {
            DataType::Utf8 => {
                let a = arr.as_string::<i32>();
                Arc::new(
                    a.iter()
                        .map(|v| v.map(|s| self.mask_str(s)))
                        .collect::<StringArray>(),
                )
            }
            DataType::Utf8View => {
                let a = arr.as_string_view();
                Arc::new(
                    a.iter()
                        .map(|v| v.map(|s| self.mask_str(s)))
                        .collect::<StringViewArray>(),
                )
            }
            // Nulls stay where they are: a whole-array kernel, no per-value
            // options.
            DataType::Int64 => {
                let r = self.int_rule();
                let a = arr.as_primitive::<Int64Type>();
                Arc::new(a.unary::<_, Int64Type>(|x| Self::clamp_int(r, x)))
            }
            DataType::Int32 => {
                let r = self.int_rule();
                let a = arr.as_primitive::<Int32Type>();
                Arc::new(a.unary::<_, Int32Type>(|x| Self::clamp_int(r, x as i64) as i32))
            }
            DataType::Int16 => {
                let r = self.int_rule();
                let a = arr.as_primitive::<Int16Type>();
                Arc::new(a.unary::<_, Int16Type>(|x| Self::clamp_int(r, x as i64) as i16))
            }
            DataType::Float64
                if !arr
                    .as_primitive::<Float64Type>()
                    .values()
                    .iter()
                    .any(|v| v.is_nan()) =>
            {
                // No NaN to turn into NULL.
                let a = arr.as_primitive::<Float64Type>();
                Arc::new(a.unary::<_, Float64Type>(|x| self.clamp_f(x).unwrap_or(x)))
            }
            DataType::Float64 => {
                let a = arr.as_primitive::<Float64Type>();
                Arc::new(
                    a.iter()
                        .map(|v| v.and_then(|x| self.clamp_f(x)))
                        .collect::<Float64Array>(),
                )
            }
            DataType::Float32 => {
                let a = arr.as_primitive::<Float32Type>();
                Arc::new(
                    a.iter()
                        .map(|v| v.and_then(|x| self.clamp_f(x as f64)).map(|x| x as f32))
                        .collect::<Float32Array>(),
                )
            }
            DataType::Date32 => {
                let a = arr.as_primitive::<Date32Type>();
                Arc::new(
                    a.iter()
                        .map(|v| v.map(|d| truncate_date(d, self.kind)))
                        .collect::<Date32Array>(),
                )
            }
            DataType::Boolean if self.kind == MaskKind::None => Arc::clone(arr),
            // Types are checked when the node opens; anything else is a bug.
            _ => return exec_err!("kexin_mask: unsupported column type"),
        };
        Ok(out)
    }
}

/// Days since 1970-01-01 → the same, truncated to month or year start.
fn truncate_date(days: i32, kind: MaskKind) -> i32 {
    let (y, m, _) = civil_from_days(days as i64);
    match kind {
        MaskKind::Month => days_from_civil(y, m, 1) as i32,
        MaskKind::Year => days_from_civil(y, 1, 1) as i32,
        _ => days,
    }
}

impl ScalarUDFImpl for ColumnMask {
    fn name(&self) -> &str {
        "kexin_mask"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        match arg_types.first() {
            Some(t) => Ok(t.clone()),
            None => exec_err!("kexin_mask takes one argument"),
        }
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let n = args.number_rows;
        let Some(arg) = args.args.into_iter().next() else {
            return exec_err!("kexin_mask takes one argument");
        };
        let arr = arg.into_array(n)?;
        Ok(ColumnarValue::Array(self.apply(&arr)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        SecretKey::from_bytes([7; 32])
    }

    #[test]
    fn parse_forms() {
        assert_eq!(
            MaskKind::parse("partial(3, 4)").unwrap(),
            MaskKind::Partial(3, 4)
        );
        assert_eq!(MaskKind::parse("band(5)").unwrap(), MaskKind::Band(5));
        assert_eq!(MaskKind::parse("prefix(4)").unwrap(), MaskKind::Prefix(4));
        assert!(MaskKind::parse("band(-1)").is_err());
        assert!(MaskKind::parse("band(1,2)").is_err());
        assert!(MaskKind::parse("hash").is_err());
    }

    #[test]
    fn string_masks() {
        let m = ColumnMask::new(MaskKind::Partial(3, 4), None, None);
        assert_eq!(m.mask_str("13812345678"), "138****5678");
        assert_eq!(m.mask_str("12345"), "*****");
        let p = ColumnMask::new(MaskKind::Prefix(3), None, None);
        assert_eq!(p.mask_str("E11.9"), "E11");
    }

    #[test]
    fn pseudonyms_depend_on_the_key_and_are_stable() {
        let a = ColumnMask::new(MaskKind::Pseudonym, None, Some(key()));
        let b = ColumnMask::new(
            MaskKind::Pseudonym,
            None,
            Some(key().derive(b"other scene")),
        );
        assert_eq!(
            a.mask_str("420102199001011234"),
            a.mask_str("420102199001011234")
        );
        assert_ne!(
            a.mask_str("420102199001011234"),
            b.mask_str("420102199001011234")
        );
        assert_eq!(a.mask_str("x").len(), 32);
        assert!(!a.mask_str("420102199001011234").contains("4201"));
    }

    #[test]
    fn clamp_then_band() {
        let m = ColumnMask::new(MaskKind::Band(5), Some((0.0, 100.0)), None);
        assert_eq!(m.clamp_i(37), 35);
        assert_eq!(m.clamp_i(-3), 0);
        assert_eq!(m.clamp_i(250), 100);
        let f = ColumnMask::new(MaskKind::None, Some((0.0, 10.0)), None);
        assert_eq!(f.clamp_f(1e308), Some(10.0));
        assert_eq!(f.clamp_f(f64::NAN), None);
        assert_eq!(f.clamp_f(f64::NEG_INFINITY), Some(0.0));
    }

    #[test]
    fn dates_truncate() {
        let d = days_from_civil(2024, 2, 29) as i32;
        assert_eq!(
            civil_from_days(truncate_date(d, MaskKind::Month) as i64),
            (2024, 2, 1)
        );
        assert_eq!(
            civil_from_days(truncate_date(d, MaskKind::Year) as i64),
            (2024, 1, 1)
        );
        assert_eq!(civil_from_days(0), (1970, 1, 1));
    }

    proptest::proptest! {
        #[test]
        fn partial_keeps_length_and_hides_the_middle(v in "[0-9a-zA-Z]{0,24}", a in 0u32..5, b in 0u32..5) {
            proptest::prop_assume!(a + b > 0);
            let m = ColumnMask::new(MaskKind::Partial(a, b), None, None);
            let out = m.mask_str(&v);
            let n = v.chars().count();
            proptest::prop_assert_eq!(out.chars().count(), n.max(1));
            let (a, b) = (a as usize, b as usize);
            if n > a + b {
                proptest::prop_assert!(out.chars().skip(a).take(n - a - b).all(|c| c == '*'));
            } else {
                proptest::prop_assert!(out.chars().all(|c| c == '*'));
            }
        }

        #[test]
        fn band_and_clamp_stay_on_the_grid_inside_bounds(v in proptest::num::i64::ANY, n in 1u32..1000) {
            let m = ColumnMask::new(MaskKind::Band(n), Some((0.0, 100_000.0)), None);
            let out = m.clamp_i(v);
            proptest::prop_assert!((0..=100_000).contains(&out));
            proptest::prop_assert_eq!(out % n as i64, 0);
            proptest::prop_assert!(out <= v.clamp(0, 100_000));
        }

        #[test]
        fn float_clamp_never_leaves_bounds_or_yields_nan(v in proptest::num::f64::ANY) {
            let m = ColumnMask::new(MaskKind::None, Some((-5.0, 5.0)), None);
            match m.clamp_f(v) {
                Some(x) => proptest::prop_assert!((-5.0..=5.0).contains(&x)),
                None => proptest::prop_assert!(v.is_nan()),
            }
        }

        #[test]
        fn prefix_is_a_prefix(v in "\\PC{0,20}", n in 1u32..8) {
            let out = ColumnMask::new(MaskKind::Prefix(n), None, None).mask_str(&v);
            proptest::prop_assert!(v.starts_with(&out));
            proptest::prop_assert!(out.chars().count() <= n as usize);
        }
    }

    #[test]
    fn debug_redacts_keys() {
        assert_eq!(format!("{:?}", key()), "SecretKey(<redacted>)");
    }
}
