//! The usage headers of an answer (SPEC §4): IETF RateLimit fields plus tollgate's warnings.
//!
//! Values are Structured Fields lists (RFC 9651): `"name";param=value`, comma-separated.

use jiff::Timestamp;

use super::burst::BurstState;
use super::meter::MeterUse;
use crate::config::Upgrade;

/// `RateLimit-Policy`
pub const RATELIMIT_POLICY: &str = "RateLimit-Policy";
/// `RateLimit`
pub const RATELIMIT: &str = "RateLimit";
/// `Tollgate-Warning`
pub const TOLLGATE_WARNING: &str = "Tollgate-Warning";
/// `Tollgate-Upgrade`
pub const TOLLGATE_UPGRADE: &str = "Tollgate-Upgrade";

/// `Tollgate-Idempotent-Replay: ?1` — the call repeated an admitted one and was not charged.
pub const TOLLGATE_IDEMPOTENT_REPLAY: &str = "Tollgate-Idempotent-Replay";
/// Names the lifecycle milestone(s) this call fired (SPEC §6).
pub const TOLLGATE_MILESTONE: &str = "Tollgate-Milestone";

/// What the usage headers are built from.
pub struct UsageView<'a> {
    /// Burst state, if the plan has a rate limit.
    pub burst: Option<&'a BurstState>,
    /// Meters charged (values after this call, or unchanged on a 402).
    pub meters: &'a [MeterUse],
    /// The plan's upgrade offer.
    pub upgrade: Option<&'a Upgrade>,
    /// A meter that blocked the call: always warned about.
    pub exhausted: Option<&'a str>,
    /// Now, for the `t` parameters.
    pub now: Timestamp,
}

/// Builds the headers; empty when no policy applied. (Built straight into one buffer per
/// header, numbers with `itoa` rather than `fmt`: this runs on every metered call.)
pub fn usage_headers(v: &UsageView) -> Vec<(&'static str, String)> {
    let mut policy = String::with_capacity(64);
    let mut state = String::with_capacity(64);
    let mut warnings = String::new();
    if let Some(b) = v.burst {
        item(
            &mut policy,
            "burst",
            &[("q", u64::from(b.quota)), ("w", b.window_secs)],
        );
        item(
            &mut state,
            "burst",
            &[("r", u64::from(b.remaining)), ("t", b.window_secs)],
        );
    }
    for m in v.meters {
        item(
            &mut policy,
            &m.name,
            &[("q", m.limit), ("w", m.window.length_secs())],
        );
        item(
            &mut state,
            &m.name,
            &[
                ("r", m.remaining()),
                ("t", m.window.seconds_to_reset(v.now)),
            ],
        );
        if m.warns() || v.exhausted == Some(m.name.as_str()) {
            item(
                &mut warnings,
                &m.name,
                &[("used", m.used), ("limit", m.limit)],
            );
            if m.in_overage() {
                warnings.push_str(";overage");
            }
        }
    }
    let mut out = Vec::with_capacity(4);
    if !policy.is_empty() {
        out.push((RATELIMIT_POLICY, policy));
        out.push((RATELIMIT, state));
    }
    if !warnings.is_empty() {
        out.push((TOLLGATE_WARNING, warnings));
        if let Some(up) = v.upgrade {
            out.push((TOLLGATE_UPGRADE, upgrade_value(up)));
        }
    }
    out
}

/// Appends one list member `"name";k=v;k=v` to `out`, after `, ` unless it is the first.
/// (Meter names are checked at config load to be plain tokens, so they need no escaping.)
fn item(out: &mut String, name: &str, params: &[(&str, u64)]) {
    if !out.is_empty() {
        out.push_str(", ");
    }
    out.push('"');
    out.push_str(name);
    out.push('"');
    let mut digits = itoa::Buffer::new();
    for (key, value) in params {
        out.push(';');
        out.push_str(key);
        out.push('=');
        out.push_str(digits.format(*value));
    }
}

/// `"pro";url="https://…"`
pub fn upgrade_value(up: &Upgrade) -> String {
    format!("{};url={}", sf_string(&up.plan), sf_string(&up.url))
}

/// A Structured Fields string: quoted, with `"` and `\` escaped and non-printable ASCII dropped.
pub fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars().filter(|c| (' '..='~').contains(c)) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::period::{Period, Window};

    #[test]
    fn headers_follow_the_spec_shape() {
        let now: Timestamp = "2026-11-26T12:00:00Z".parse().unwrap();
        let window = Window::containing(Period::Month, None, now).unwrap();
        let meters = vec![MeterUse {
            name: "requests".into(),
            units: 1,
            limit: 1000,
            used: 800,
            overage: false,
            warn_at: Some(0.8),
            period: Period::Month,
            window,
            series: None,
        }];
        let burst = BurstState {
            quota: 20,
            remaining: 19,
            window_secs: 1,
        };
        let up = Upgrade {
            plan: "pro".into(),
            url: "https://example.com/billing?plan=pro".into(),
        };
        let h = usage_headers(&UsageView {
            burst: Some(&burst),
            meters: &meters,
            upgrade: Some(&up),
            exhausted: None,
            now,
        });
        assert_eq!(
            h[0],
            (
                RATELIMIT_POLICY,
                "\"burst\";q=20;w=1, \"requests\";q=1000;w=2592000".into()
            )
        );
        assert_eq!(
            h[1],
            (
                RATELIMIT,
                "\"burst\";r=19;t=1, \"requests\";r=200;t=388800".into()
            )
        );
        assert_eq!(
            h[2],
            (TOLLGATE_WARNING, "\"requests\";used=800;limit=1000".into())
        );
        assert_eq!(
            h[3],
            (
                TOLLGATE_UPGRADE,
                "\"pro\";url=\"https://example.com/billing?plan=pro\"".into()
            )
        );
    }

    #[test]
    fn no_warning_below_the_threshold() {
        let now: Timestamp = "2026-11-26T12:00:00Z".parse().unwrap();
        let window = Window::containing(Period::Day, None, now).unwrap();
        let m = MeterUse {
            name: "r".into(),
            units: 1,
            limit: 10,
            used: 7,
            overage: false,
            warn_at: Some(0.8),
            period: Period::Day,
            window,
            series: None,
        };
        let h = usage_headers(&UsageView {
            burst: None,
            meters: &[m],
            upgrade: None,
            exhausted: None,
            now,
        });
        assert_eq!(h.len(), 2);
    }
}
