//! Time: the node's one clock source, RFC 3339 timestamps, calendar days
//! and the freshness window of signed requests. It depends on nothing else
//! in the crate, so every module that needs time (the audit log, the state
//! store, identities, masks, the policy) can use it without importing each
//! other.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Code, Error, Result, refuse};

/// How far a request's timestamp may be from the receiver's clock.
pub const FRESHNESS_SECONDS: i64 = 300;

/// The current UTC time as (`YYYY-MM-DD`, RFC 3339 with seconds). The one
/// clock source for validity windows and audit timestamps.
pub fn now_utc() -> (String, String) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    let date = format!("{y:04}-{m:02}-{d:02}");
    let ts = format!("{date}T{:02}:{:02}:{:02}Z", s / 3600, (s / 60) % 60, s % 60);
    (date, ts)
}

/// Seconds since the epoch of an RFC 3339 UTC timestamp `YYYY-MM-DDTHH:MM:SSZ`.
pub fn parse_time(ts: &str) -> Option<i64> {
    let b = ts.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[19] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| ts.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let days = days_from_civil(y, mo as u32, d as u32);
    Some(days * 86_400 + h * 3600 + mi * 60 + s)
}

/// Is `time` within the freshness window of the receiver's clock?
pub fn fresh(time: &str) -> Result<()> {
    let now = parse_time(&now_utc().1).ok_or_else(|| Error::internal("clock"))?;
    match parse_time(time) {
        None => refuse(Code::Auth, "the request's timestamp is malformed"),
        Some(t) if (t - now).abs() > FRESHNESS_SECONDS => {
            refuse(Code::Auth, "the request is stale or from the future")
        }
        Some(_) => Ok(()),
    }
}

/// A calendar date `YYYY-MM-DD` that exists.
pub fn valid_date(d: &str) -> bool {
    parse_time(&format!("{d}T00:00:00Z")).is_some_and(|t| {
        let (y, m, dd) = civil_from_days(t.div_euclid(86_400));
        format!("{y:04}-{m:02}-{dd:02}") == d
    })
}

/// Howard Hinnant's `civil_from_days`: days since the epoch → (year, month, day).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Howard Hinnant's `days_from_civil`: (year, month, day) → days since the epoch.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
