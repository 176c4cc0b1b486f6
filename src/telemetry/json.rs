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
    // Almost every string of an event needs no escape: check the whole string first, then
    // copy it in one go.
    if !needs_escape(bytes) {
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

/// Whether any byte of `bytes` must be escaped: `"`, `\` or a control character below 0x20.
///
/// Eight bytes at a time, as one `u64` (the bit tricks of "Determine if a word has a byte less
/// than n" and "… has a zero byte", exact as a yes/no answer), then the last few one by one:
/// an event's strings are mostly under 32 bytes, too short for the vectorised loop the compiler
/// makes of a byte-wise check, which then ran entirely in its byte-at-a-time remainder.
fn needs_escape(bytes: &[u8]) -> bool {
    const LO: u64 = u64::from_ne_bytes([0x01; 8]);
    const HI: u64 = u64::from_ne_bytes([0x80; 8]);
    let has_zero = |v: u64| v.wrapping_sub(LO) & !v & HI != 0;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        let v = u64::from_ne_bytes(w);
        if v.wrapping_sub(LO * 0x20) & !v & HI != 0
            || has_zero(v ^ (LO * u64::from(b'"')))
            || has_zero(v ^ (LO * u64::from(b'\\')))
        {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
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
/// Times from 1970 to the end of 9999 (every clock reading in practice) are written from the
/// civil date; any other goes through jiff's formatter. The part up to the second is kept per
/// thread and reused while the second lasts: a busy thread writes many events per second, and
/// only the milliseconds change between them.
pub(crate) fn time(out: &mut Vec<u8>, time: Timestamp) -> std::io::Result<()> {
    let seconds = time.as_second();
    let nanos = time.subsec_nanosecond();
    if !(0..=MAX_FAST_SECOND).contains(&seconds) || nanos < 0 {
        return write!(out, "\"{time:.3}\"");
    }
    let prefix = LAST_SECOND
        .try_with(|last| {
            let (second, prefix) = last.get();
            if second == seconds {
                return prefix;
            }
            let prefix = second_prefix(seconds);
            last.set((seconds, prefix));
            prefix
        })
        // Only while the thread is being torn down.
        .unwrap_or_else(|_| second_prefix(seconds));
    let mut millis = *b"000Z\"";
    put_digits(&mut millis[..3], i64::from(nanos / 1_000_000));
    out.extend_from_slice(&prefix);
    out.extend_from_slice(&millis);
    Ok(())
}

/// `"YYYY-MM-DDTHH:MM:SS.`: the start of [`time`]'s string for a second of the fast range.
type SecondPrefix = [u8; 21];

thread_local! {
    /// The second this thread wrote last (-1: none yet) and its [`SecondPrefix`].
    static LAST_SECOND: std::cell::Cell<(i64, SecondPrefix)> =
        const { std::cell::Cell::new((-1, [0; 21])) };
}

/// The [`SecondPrefix`] of `seconds` after the epoch (`0..=MAX_FAST_SECOND`).
fn second_prefix(seconds: i64) -> SecondPrefix {
    let (year, month, day) = civil_from_days(seconds / 86_400);
    let of_day = seconds % 86_400;
    let mut p = *b"\"0000-00-00T00:00:00.";
    put_digits(&mut p[1..5], year);
    put_digits(&mut p[6..8], month);
    put_digits(&mut p[9..11], day);
    put_digits(&mut p[12..14], of_day / 3600);
    put_digits(&mut p[15..17], of_day / 60 % 60);
    put_digits(&mut p[18..20], of_day % 60);
    p
}

/// The last `dst.len()` decimal digits of the non-negative `n`, zero-padded, into `dst`.
fn put_digits(dst: &mut [u8], mut n: i64) {
    for d in dst.iter_mut().rev() {
        // A single digit: the cast cannot truncate.
        *d = b'0' + (n % 10) as u8;
        n /= 10;
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

    #[test]
    fn time_reuses_the_second_only_within_it() {
        for t in [
            "2026-12-05T09:59:59.000Z",
            "2026-12-05T09:59:59.999999Z",
            "2026-12-05T10:00:00.001Z",
            "2026-12-05T09:59:59.5Z",
            "2026-12-31T23:59:59.999Z",
            "2027-01-01T00:00:00Z",
            "2027-01-01T00:00:00.042Z",
        ] {
            let t: Timestamp = t.parse().unwrap();
            assert_eq!(time_of(t), format!("\"{t:.3}\""));
        }
    }

    proptest! {
        #[test]
        fn needs_escape_is_the_bytewise_check(
            // Mostly bytes that need no escape (ASCII and UTF-8 continuation bytes alike), so
            // long strings without one are common, and now and then one that does.
            bytes in proptest::collection::vec(prop_oneof![
                40 => 0x20_u8..=0x21, 40 => 0x23_u8..=0x5b, 40 => 0x5d_u8..=0xff,
                1 => any::<u8>(), 1 => Just(b'"'), 1 => Just(b'\\'), 1 => Just(0x1f_u8),
            ], 0..48),
        ) {
            let bytewise = bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
            prop_assert_eq!(needs_escape(&bytes), bytewise);
        }

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
