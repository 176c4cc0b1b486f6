//! UTC calendar arithmetic for period keys and reset times, from the system clock.
//!
//! (Howard Hinnant's `days_from_civil` / `civil_from_days`, so the tests need no date crate.)

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, now.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Today's UTC date as `(year, month, day)`.
pub fn today() -> (i64, u32, u32) {
    civil_from_days(now_secs().div_euclid(86_400))
}

/// `YYYY-MM-01` of the current UTC month: the period start of a `month` meter with no anchor.
pub fn month_start() -> String {
    let (y, m, _) = today();
    format!("{y:04}-{m:02}-01")
}

/// `YYYY-MM-DD` of today (UTC): the period start of a `day` meter.
pub fn day_start() -> String {
    let (y, m, d) = today();
    format!("{y:04}-{m:02}-{d:02}")
}

/// The first instant of next UTC month, as RFC 3339 (`2026-12-01T00:00:00Z`).
pub fn next_month_rfc3339() -> String {
    let (y, m) = next_month();
    format!("{y:04}-{m:02}-01T00:00:00Z")
}

/// The first instant of tomorrow (UTC), as RFC 3339.
pub fn tomorrow_rfc3339() -> String {
    let (y, m, d) = civil_from_days(now_secs().div_euclid(86_400) + 1);
    format!("{y:04}-{m:02}-{d:02}T00:00:00Z")
}

/// Seconds from now until the first instant of next UTC month.
pub fn secs_to_next_month() -> i64 {
    let (y, m) = next_month();
    days_from_civil(y, m, 1) * 86_400 - now_secs()
}

fn next_month() -> (i64, u32) {
    let (y, m, _) = today();
    if m == 12 {
        (y + 1, 1)
    } else {
        (y, m + 1)
    }
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[test]
fn calendar_round_trips() {
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(days_from_civil(2026, 12, 1), 20_788);
    assert_eq!(civil_from_days(20_788), (2026, 12, 1));
    assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
}
