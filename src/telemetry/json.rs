//! Small JSON writers that append straight into one buffer, for the usage event encoded on the
//! request path ([`super::event::CallEvent::encode`]).
//!
//! Each writes exactly what `serde_json` writes for the same value, so a hand-written event is
//! byte for byte the one serde would make; going through serde's serializer, with its owned
//! strings and a formatted time, cost about a microsecond per call on the proxy thread.

use std::io::Write as _;

use jiff::Timestamp;

/// A JSON string: `s` between quotes, escaped as `serde_json` escapes it: `"` and `\`, and the
/// control characters below 0x20 as `\b \f \n \r \t` or `\u00XX` (lowercase hex). Every other
/// byte, non-ASCII UTF-8 included, is copied as it is.
pub(crate) fn string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    // Almost every string of an event needs no escape: check the whole string first with a
    // loop that does not stop early (the compiler vectorises it), then copy it in one go.
    if !bytes.iter().fold(false, |any, &b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    }) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            0x0c => b'f',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x00..=0x1f => b'u',
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.push(b'\\');
        out.push(escape);
        if escape == b'u' {
            out.extend_from_slice(b"00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// A JSON string, or `null` for `None` (serde's `Option<&str>`).
pub(crate) fn opt_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// An unsigned integer, in decimal.
pub(crate) fn uint(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// The last second of year 9999, the last one the fast path of [`time`] writes itself.
const MAX_FAST_SECOND: i64 = 253_402_300_799;

/// `time` as a JSON string, as `format!("{:.3}", time)` writes it: RFC 3339 in UTC with
/// milliseconds (truncated, not rounded), e.g. `"2026-11-26T12:00:00.123Z"`.
///
/// Times from 1970 to the end of 9999 (every clock reading in practice) are written digit by
/// digit from the civil date; any other goes through jiff's formatter.
pub(crate) fn time(out: &mut Vec<u8>, time: Timestamp) -> std::io::Result<()> {
    let seconds = time.as_second();
    let nanos = time.subsec_nanosecond();
    if !(0..=MAX_FAST_SECOND).contains(&seconds) || nanos < 0 {
        return write!(out, "\"{time:.3}\"");
    }
    let (year, month, day) = civil_from_days(seconds / 86_400);
    let of_day = seconds % 86_400;
    out.push(b'"');
    digits(out, year, 4);
    out.push(b'-');
    digits(out, month, 2);
    out.push(b'-');
    digits(out, day, 2);
    out.push(b'T');
    digits(out, of_day / 3600, 2);
    out.push(b':');
    digits(out, of_day / 60 % 60, 2);
    out.push(b':');
    digits(out, of_day % 60, 2);
    out.push(b'.');
    digits(out, i64::from(nanos / 1_000_000), 3);
    out.extend_from_slice(b"Z\"");
    Ok(())
}

/// The last `width` decimal digits of the non-negative `n`, zero-padded.
fn digits(out: &mut Vec<u8>, n: i64, width: u32) {
    let mut div = 10_i64.pow(width - 1);
    while div > 0 {
        // A single digit: the cast cannot truncate.
        out.push(b'0' + (n / div % 10) as u8);
        div /= 10;
    }
}

/// The proleptic Gregorian (year, month, day) of the `days`-th day after 1970-01-01 (`days`
/// non-negative), by Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March first
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn time_of(t: Timestamp) -> String {
        let mut out = Vec::new();
        time(&mut out, t).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn string_escapes_like_serde_json() {
        for s in [
            "",
            "plain",
            "\"quoted\\\"",
            "\u{0}\u{1}\u{8}\t\n\u{b}\u{c}\r\u{1f} \u{7f}",
            "é ü 日本 🦀",
            "a\"b\\c\nd",
        ] {
            let mut out = Vec::new();
            string(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn time_matches_jiff_at_the_edges() {
        for t in [
            "1970-01-01T00:00:00Z",
            "1970-01-01T00:00:00.000999999Z",
            "1969-12-31T23:59:59.999Z",
            "1969-12-31T23:59:59.5Z",
            "2000-02-29T23:59:59.999999999Z",
            "2026-11-26T12:00:00.123456Z",
            "2100-03-01T00:00:00Z",
            "9999-12-30T22:00:00.999999999Z",
            "0001-01-01T00:00:00Z",
            "-000001-06-15T00:00:00.5Z",
        ] {
            let t: Timestamp = t.parse().unwrap();
            assert_eq!(time_of(t), format!("\"{t:.3}\""));
        }
        for t in [Timestamp::MIN, Timestamp::MAX, Timestamp::UNIX_EPOCH] {
            assert_eq!(time_of(t), format!("\"{t:.3}\""));
        }
    }

    proptest! {
        #[test]
        fn string_matches_serde_json(s in any::<String>()) {
            let mut out = Vec::new();
            string(&mut out, &s);
            prop_assert_eq!(out, serde_json::to_vec(&s).unwrap());
        }

        #[test]
        fn string_with_controls_matches_serde_json(s in "[\\x00-\\x20\"\\\\a-zé🦀\\x7f]{0,40}") {
            let mut out = Vec::new();
            string(&mut out, &s);
            prop_assert_eq!(out, serde_json::to_vec(&s).unwrap());
        }

        #[test]
        fn uint_matches_serde_json(n in any::<u64>()) {
            let mut out = Vec::new();
            uint(&mut out, n);
            prop_assert_eq!(out, serde_json::to_vec(&n).unwrap());
        }

        #[test]
        fn time_matches_jiff_everywhere(
            seconds in Timestamp::MIN.as_second()..=Timestamp::MAX.as_second(),
            nanos in 0..1_000_000_000_i32,
        ) {
            let t = Timestamp::new(seconds, nanos).unwrap_or(Timestamp::MIN);
            prop_assert_eq!(time_of(t), format!("\"{t:.3}\""));
        }

        #[test]
        fn time_matches_jiff_over_the_fast_range(
            seconds in 0..=MAX_FAST_SECOND,
            nanos in 0..1_000_000_000_i32,
        ) {
            let t = Timestamp::new(seconds, nanos).unwrap();
            prop_assert_eq!(time_of(t), format!("\"{t:.3}\""));
        }
    }
}
