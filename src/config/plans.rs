//! Decoding of `plans`.

use std::collections::{BTreeMap, BTreeSet};
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::Arc;

use super::decode::Decoder;
use super::model::*;
use super::node::Node;
use super::sections::{list, on_outage};
use crate::meter::period::Period;

pub(super) fn plans(
    d: &mut Decoder,
    n: &Node,
    names: &BTreeSet<String>,
) -> BTreeMap<String, Arc<Plan>> {
    let mut out = BTreeMap::new();
    let entries = d.named(n, "`plans`");
    if entries.is_empty() {
        d.err(n.pos, "`plans` must define at least one plan");
    }
    for (name, _, v) in entries {
        if let Some(plan) = plan(d, name.clone(), v, names) {
            out.insert(name, Arc::new(plan));
        }
    }
    out
}

fn plan(d: &mut Decoder, name: String, n: &Node, names: &BTreeSet<String>) -> Option<Plan> {
    let what = format!("plan `{name}`");
    let f = d.fields(
        n,
        &what,
        &[
            "rate_limit",
            "concurrency",
            "meters",
            "features",
            "upgrade",
            "on_outage",
        ],
    )?;
    // Checked now and given up on only at the end, so the plan's other mistakes are reported
    // too.
    let rate_limit = f.get("rate_limit").map(|r| rate_limit(d, r, &what));
    let concurrency = f.get("concurrency").map(|c| {
        d.int(c, "`concurrency`", 1, u32::MAX as i64)
            .and_then(|v| NonZeroU32::new(u32::try_from(v).ok()?))
    });
    let mut meters = BTreeMap::new();
    if let Some(m) = f.get("meters") {
        for (meter, pos, v) in d.named(m, "`meters`") {
            if !valid_name(&meter) {
                d.err(
                    pos,
                    format!("meter name `{meter}` may use only letters, digits, `_` and `-`"),
                );
                continue;
            }
            if let Some(policy) = meter_policy(d, v, &format!("meter `{meter}` of {what}")) {
                meters.insert(meter, policy);
            }
        }
    }
    let features = match f.get("features") {
        Some(n) => d
            .strings(n, "`features`")?
            .into_iter()
            .map(|(s, _)| s)
            .collect(),
        None => BTreeSet::new(),
    };
    let upgrade = match f.get("upgrade") {
        Some(u) => {
            let uf = d.fields(u, "`upgrade`", &["plan", "url"])?;
            let plan = d.require(&uf, "plan", "`upgrade`").and_then(|p| {
                let s = d.string(p, "`upgrade.plan`")?;
                if !names.contains(&s) {
                    d.err(
                        p.pos,
                        format!(
                            "{what} upgrades to plan `{s}`, which is not defined; plans: {}",
                            list(names)
                        ),
                    );
                    return None;
                }
                if s == name {
                    d.err(p.pos, format!("{what} cannot upgrade to itself"));
                    return None;
                }
                Some(s)
            });
            let url = d
                .require(&uf, "url", "`upgrade`")
                .and_then(|u| d.string(u, "`upgrade.url`"));
            Some(Upgrade {
                plan: plan?,
                url: url?,
            })
        }
        None => None,
    };
    let on_outage = match f.get("on_outage") {
        Some(o) => Some(on_outage(d, o, "`on_outage`")?),
        None => None,
    };
    let rate_limit = match rate_limit {
        Some(checked) => Some(checked?),
        None => None,
    };
    let concurrency = match concurrency {
        Some(checked) => Some(checked?),
        None => None,
    };
    let header = http::HeaderValue::from_str(&name).ok();
    Some(Plan {
        name,
        header,
        rate_limit,
        concurrency,
        meters,
        features,
        upgrade,
        on_outage,
    })
}

fn rate_limit(d: &mut Decoder, n: &Node, what: &str) -> Option<RateLimit> {
    let what = format!("`rate_limit` of {what}");
    let f = d.fields(n, &what, &["requests", "per", "burst", "shared"])?;
    let requests = d
        .require(&f, "requests", &what)
        .and_then(|r| d.int(r, "`requests`", 1, u32::MAX as i64));
    let per = d.require(&f, "per", &what).and_then(|p| {
        let v = d.duration(p, "`per`")?;
        if v.is_zero() {
            d.err(p.pos, "`per` must be more than 0");
            return None;
        }
        Some(v)
    });
    let burst = match f.get("burst") {
        Some(b) => d.int(b, "`burst`", 1, u32::MAX as i64),
        None => requests,
    };
    let shared = match f.get("shared") {
        Some(s) => d.bool(s, "`shared`"),
        None => Some(false),
    };
    Some(RateLimit {
        requests: NonZeroU32::new(u32::try_from(requests?).ok()?)?,
        per: per?,
        burst: NonZeroU32::new(u32::try_from(burst?).ok()?)?,
        shared: shared?,
    })
}

fn meter_policy(d: &mut Decoder, n: &Node, what: &str) -> Option<MeterPolicy> {
    let f = d.fields(n, what, &["limit", "period", "warn_at", "overage"])?;
    let limit = d
        .require(&f, "limit", what)
        .and_then(|l| d.int(l, "`limit`", 1, i64::MAX));
    let period = d.require(&f, "period", what).and_then(|p| {
        d.word(
            p,
            "`period`",
            &[("day", Period::Day), ("month", Period::Month)],
        )
    });
    let warn_at = match f.get("warn_at") {
        Some(w) => {
            let v = d.number(w, "`warn_at`")?;
            if !(v > 0.0 && v <= 1.0) {
                d.err(
                    w.pos,
                    format!(
                        "`warn_at` is a fraction of the limit and must be in (0, 1], found {v}"
                    ),
                );
                return None;
            }
            Some(v)
        }
        None => None,
    };
    let overage = match f.get("overage") {
        Some(o) => d.bool(o, "`overage`")?,
        None => false,
    };
    Some(MeterPolicy {
        limit: NonZeroU64::new(u64::try_from(limit?).ok()?)?,
        period: period?,
        warn_at,
        overage,
    })
}

/// Names that appear in Redis keys and header parameters: keep them plain.
pub(super) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}
