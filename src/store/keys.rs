//! The store's key schema (SPEC §9). Other tools read these keys: never change them.
//!
//! The tenant sits in a `{hash tag}` so that all of one tenant's keys land in one Redis Cluster
//! slot, which is what lets one Lua script touch several of its meters atomically.

use jiff::civil::Date;

/// `tg:{<tenant>}:m:<meter>:<period start>` — a usage counter.
pub fn counter(tenant: &str, meter: &str, period_start: Date) -> String {
    // Built by hand: this runs for every meter of every metered call.
    let mut key = String::with_capacity(tenant.len() + meter.len() + 20);
    key.push_str("tg:{");
    key.push_str(tenant);
    key.push_str("}:m:");
    key.push_str(meter);
    key.push(':');
    push_date(&mut key, period_start);
    key
}

/// `YYYY-MM-DD`, as jiff's `Display` of a date writes it.
pub(crate) fn push_date(out: &mut String, d: Date) {
    let (y, m, day) = (d.year(), d.month(), d.day());
    if !(0..=9999).contains(&y) {
        use std::fmt::Write;
        let _ = write!(out, "{d}");
        return;
    }
    let digits = |n: u32, width: u32, out: &mut String| {
        for i in (0..width).rev() {
            out.push(char::from(b'0' + ((n / 10u32.pow(i)) % 10) as u8));
        }
    };
    digits(y as u32, 4, out);
    out.push('-');
    digits(m as u32, 2, out);
    out.push('-');
    digits(day as u32, 2, out);
}

/// `tg:{<tenant>}:tenant` — a tenant's overrides (hash).
pub fn tenant(tenant: &str) -> String {
    format!("tg:{{{tenant}}}:tenant")
}

/// `tg:{<tenant>}:idem:<sha256 hex of the Idempotency-Key>` — marks a call already charged.
pub fn replay(tenant: &str, key_sha256_hex: &str) -> String {
    format!("tg:{{{tenant}}}:idem:{key_sha256_hex}")
}

/// `tg:{<tenant>}:burst` — a shared burst limit's state: the theoretical arrival time of the
/// tenant's next call, in microseconds of the store's clock (GCRA).
pub fn burst(tenant: &str) -> String {
    format!("tg:{{{tenant}}}:burst")
}

/// `tg:{<tenant>}:keys` — a tenant's runtime keys: key id → SHA-256 hex (hash), so a key can be
/// revoked by its id.
pub fn tenant_keys(tenant: &str) -> String {
    format!("tg:{{{tenant}}}:keys")
}

/// `tg:{<tenant>}:ms:<milestone>[:<meter>][:<period start>]` — set once (`SET NX`) when a
/// lifecycle milestone fires, so that it fires once across every instance.
pub fn milestone(
    tenant: &str,
    milestone: &str,
    meter: Option<&str>,
    period_start: Option<Date>,
) -> String {
    let mut key = format!("tg:{{{tenant}}}:ms:{milestone}");
    if let Some(m) = meter {
        key.push(':');
        key.push_str(m);
    }
    if let Some(p) = period_start {
        key.push(':');
        key.push_str(&p.to_string());
    }
    key
}

/// `tg:{<tenant>}:ms:identify:<32 hex>` — the mark of one (anonymous id, tenant, user) merge:
/// the first 16 bytes of SHA-256 over the anonymous id and the user, so the key's length and
/// characters do not depend on what a client sent.
pub fn identify(tenant: &str, anonymous_id: &str, user: Option<&str>) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(anonymous_id.as_bytes());
    // A separator no visible-ASCII anonymous id contains, then whether a user is named, so
    // ("a", user "b") and ("a\0b", none) cannot collide.
    h.update([0u8]);
    match user {
        Some(u) => {
            h.update([1u8]);
            h.update(u.as_bytes());
        }
        None => h.update([0u8]),
    }
    let digest = h.finalize();
    format!("tg:{{{tenant}}}:ms:identify:{}", hex::encode(&digest[..16]))
}

/// `tg:{<tenant>}:activation` — admitted calls since the tenant's first, for the `activated`
/// milestone; expires when `onboarding.activation.within` since the first call is over.
pub fn activation(tenant: &str) -> String {
    format!("tg:{{{tenant}}}:activation")
}

/// Pub/sub channel on which a tenant whose overrides changed is announced.
pub const TENANT_CHANGES: &str = "tollgate:tenant-changes";

/// `tg:key:<sha256 hex>` — a runtime API key (hash).
pub fn api_key(sha256_hex: &str) -> String {
    format!("tg:key:{sha256_hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_the_spec() {
        let d: Date = "2026-11-15".parse().unwrap();
        assert_eq!(
            counter("acme", "requests", d),
            "tg:{acme}:m:requests:2026-11-15"
        );
        assert_eq!(tenant("acme"), "tg:{acme}:tenant");
        assert_eq!(api_key("9f86"), "tg:key:9f86");
        assert_eq!(
            milestone("acme", "first_call", None, None),
            "tg:{acme}:ms:first_call"
        );
        assert_eq!(
            milestone("acme", "limit_reached", Some("requests"), Some(d)),
            "tg:{acme}:ms:limit_reached:requests:2026-11-15"
        );
    }

    #[test]
    fn counter_dates_are_written_as_jiff_writes_them() {
        for text in [
            "0000-01-01",
            "0001-02-03",
            "0999-12-31",
            "1970-01-01",
            "2026-11-26",
            "9999-12-31",
        ] {
            let d: Date = text.parse().unwrap();
            assert_eq!(counter("t", "m", d), format!("tg:{{t}}:m:m:{d}"));
            assert_eq!(counter("t", "m", d), format!("tg:{{t}}:m:m:{text}"));
        }
        let mut d: Date = "2024-01-01".parse().unwrap();
        for _ in 0..800 {
            assert_eq!(
                counter("acme", "requests", d),
                format!("tg:{{acme}}:m:requests:{d}")
            );
            d = d.tomorrow().unwrap();
        }
        let far = Date::new(-5, 3, 4).unwrap();
        assert_eq!(counter("t", "m", far), format!("tg:{{t}}:m:m:{far}"));
    }
}
