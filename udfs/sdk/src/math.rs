//! `exp`, `ln` and `pow` for `no_std` guests (`core` has no libm on the
//! toolchains we build with). Accurate to a few ulp over the ranges medical
//! formulas use; the native tests compare against `std`.

const LN2_HI: f64 = 6.931_471_803_691_238_164_90e-01;
const LN2_LO: f64 = 1.908_214_929_270_587_700_02e-10;
const INV_LN2: f64 = 1.442_695_040_888_963_387_00e+00;
const SQRT2: f64 = 1.414_213_562_373_095_1;

/// 2^k for k in the normal exponent range.
fn pow2(k: i64) -> f64 {
    f64::from_bits(((k + 1023) as u64) << 52)
}

/// e^x.
pub fn exp(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    if x > 709.782_712_893_384 {
        return f64::INFINITY;
    }
    if x < -745.133_219_101_941_1 {
        return 0.0;
    }
    // x = k·ln2 + r, |r| <= ln2/2.
    let t = x * INV_LN2;
    let k = if t >= 0.0 {
        (t + 0.5) as i64
    } else {
        (t - 0.5) as i64
    };
    let kf = k as f64;
    let r = (x - kf * LN2_HI) - kf * LN2_LO;
    // Taylor series to r^14/14!: the truncation error is below 1e-17.
    let mut term = 1.0;
    let mut sum = 1.0;
    let mut n = 1.0;
    while n < 15.0 {
        term *= r / n;
        sum += term;
        n += 1.0;
    }
    // Scale in two steps so that k near the ends of the range stays normal.
    let half = k / 2;
    sum * pow2(half) * pow2(k - half)
}

/// Natural logarithm; NaN for negative inputs, -inf for 0.
pub fn ln(x: f64) -> f64 {
    if x.is_nan() || x < 0.0 {
        return f64::NAN;
    }
    if x == 0.0 {
        return f64::NEG_INFINITY;
    }
    if x.is_infinite() {
        return x;
    }
    let (mut x, mut e) = (x, 0i64);
    if x < f64::MIN_POSITIVE {
        // Subnormal: scale into the normal range first.
        x *= pow2(54);
        e -= 54;
    }
    let bits = x.to_bits();
    e += ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    if m > SQRT2 {
        m *= 0.5;
        e += 1;
    }
    // ln m = 2·atanh(s), s = (m-1)/(m+1), |s| <= 0.1716.
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut term = s;
    let mut sum = 0.0;
    let mut k = 1.0;
    while k < 30.0 {
        sum += term / k;
        term *= s2;
        k += 2.0;
    }
    let ef = e as f64;
    ef * LN2_HI + (ef * LN2_LO + 2.0 * sum)
}

/// x^y for x > 0 (NaN otherwise, except x = 0 with y > 0 which is 0).
pub fn pow(x: f64, y: f64) -> f64 {
    if x == 0.0 && y > 0.0 {
        return 0.0;
    }
    if !(x > 0.0) {
        return f64::NAN;
    }
    exp(y * ln(x))
}

/// |x|.
pub fn abs(x: f64) -> f64 {
    f64::from_bits(x.to_bits() & !(1u64 << 63))
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        a == b || abs(a - b) <= rel * abs(b).max(f64::MIN_POSITIVE)
    }

    #[test]
    fn exp_matches_std() {
        let mut x = -700.0;
        while x < 700.0 {
            assert!(
                close(exp(x), std::primitive::f64::exp(x), 4e-15),
                "exp({x})"
            );
            x += 0.37;
        }
        for x in [0.0, 1e-12, -1e-12, 0.5, -0.5, 1.0, 709.0, -744.0] {
            assert!(close(exp(x), x.exp(), 4e-15), "exp({x})");
        }
        assert_eq!(exp(1000.0), f64::INFINITY);
        assert_eq!(exp(-1000.0), 0.0);
    }

    #[test]
    fn ln_matches_std() {
        let mut x = 1e-300;
        while x < 1e300 {
            assert!(close(ln(x), x.ln(), 4e-15), "ln({x})");
            x *= 1.7;
        }
        for x in [1.0, 2.0, 0.5, 1.000_000_1, 0.999_999_9, 5e-324, 88.42] {
            assert!(
                close(ln(x), x.ln(), 4e-15) || abs(ln(x) - x.ln()) < 1e-15,
                "ln({x})"
            );
        }
        assert!(ln(-1.0).is_nan());
        assert_eq!(ln(0.0), f64::NEG_INFINITY);
    }

    #[test]
    fn pow_matches_std() {
        for (x, y) in [
            (0.8 / 0.7, -1.2),
            (0.5, -0.241),
            (0.9938, 75.0),
            (1.7, 2.0),
            (3.0, 0.5),
        ] {
            assert!(close(pow(x, y), x.powf(y), 1e-14), "pow({x}, {y})");
        }
        assert!(pow(-1.0, 0.5).is_nan());
        assert_eq!(pow(0.0, 2.0), 0.0);
    }
}
