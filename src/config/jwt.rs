//! Decoding of `auth.jwt`: the token issuers a gateway trusts.

use std::collections::BTreeSet;
use std::time::Duration;

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use super::decode::Decoder;
use super::model::{JwtIssuer, JwtKeys};
use super::node::{Node, Value};
use crate::pipeline::jwt::ALGORITHMS;

const KEYS: &[&str] = &[
    "issuer",
    "audience",
    "algorithms",
    "jwks_url",
    "public_key_file",
    "secret",
    "tenant_claim",
    "plan_claim",
    "default_plan",
    "user_claim",
    "leeway",
    "jwks_refresh",
];

/// Shortest accepted HMAC secret: RFC 7518 §3.2 asks for a key at least as long as the hash.
const MIN_SECRET: usize = 32;

/// `auth.jwt`: a list of issuers, each decoded on its own so one bad issuer does not hide the
/// errors of the next.
pub(super) fn issuers(d: &mut Decoder, n: &Node, plans: &BTreeSet<String>) -> Vec<JwtIssuer> {
    let Some(items) = d.list(n, "`auth.jwt`") else {
        return Vec::new();
    };
    let mut out: Vec<JwtIssuer> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let what = format!("`auth.jwt[{i}]`");
        if let Some(issuer) = issuer(d, item, &what, plans) {
            if out.iter().any(|o| o.issuer == issuer.issuer) {
                d.err(
                    item.pos,
                    format!(
                        "{what}: issuer `{}` is listed twice; merge the two entries",
                        issuer.issuer
                    ),
                );
                continue;
            }
            out.push(issuer);
        }
    }
    out
}

fn issuer(d: &mut Decoder, n: &Node, what: &str, plans: &BTreeSet<String>) -> Option<JwtIssuer> {
    let f = d.fields(n, what, KEYS)?;
    let issuer = d
        .require(&f, "issuer", what)
        .and_then(|v| non_empty(d, v, "`issuer`"));
    let audiences = d
        .require(&f, "audience", what)
        .and_then(|v| match &v.value {
            Value::Seq(_) => {
                let list = d.strings(v, "`audience`")?;
                if list.is_empty() {
                    d.err(
                        v.pos,
                        format!("{what}: `audience` needs at least one value"),
                    );
                }
                Some(list.into_iter().map(|(s, _)| s).collect::<Vec<_>>())
            }
            _ => non_empty(d, v, "`audience`").map(|s| vec![s]),
        });
    let algorithms = d
        .require(&f, "algorithms", what)
        .and_then(|v| algorithms(d, v, what));
    let tenant_claim = d
        .require(&f, "tenant_claim", what)
        .and_then(|v| non_empty(d, v, "`tenant_claim`"));
    let plan_claim = f
        .get("plan_claim")
        .and_then(|v| non_empty(d, v, "`plan_claim`"));
    let user_claim = f
        .get("user_claim")
        .and_then(|v| non_empty(d, v, "`user_claim`"));
    let default_plan = f.get("default_plan").and_then(|v| {
        let s = d.string(v, "`default_plan`")?;
        if !plans.contains(&s) {
            d.err(
                v.pos,
                format!("{what}: `default_plan` names plan `{s}`, which is not defined"),
            );
        }
        Some(s)
    });
    let leeway = match f.get("leeway") {
        Some(v) => d.duration(v, "`leeway`")?,
        None => Duration::from_secs(30),
    };
    if leeway > Duration::from_secs(300) {
        if let Some(v) = f.get("leeway") {
            d.err(v.pos, format!("{what}: `leeway` above 5m would accept tokens long expired; clocks that far apart need fixing instead"));
        }
    }
    let refresh = match f.get("jwks_refresh") {
        Some(v) => refresh_bounds(d, v, what)?,
        None => (Duration::from_secs(60), Duration::from_secs(3600)),
    };
    let keys = key_source(d, &f, n, what, algorithms.as_deref());
    Some(JwtIssuer {
        issuer: issuer?,
        audiences: audiences?,
        algorithms: algorithms?,
        keys: keys?,
        tenant_claim: tenant_claim?,
        plan_claim,
        default_plan,
        user_claim,
        leeway,
        jwks_min_refresh: refresh.0,
        jwks_max_refresh: refresh.1,
    })
}

fn non_empty(d: &mut Decoder, n: &Node, what: &str) -> Option<String> {
    let s = d.string(n, what)?;
    if s.is_empty() {
        d.err(n.pos, format!("{what} must not be empty"));
        return None;
    }
    Some(s)
}

fn algorithms(d: &mut Decoder, n: &Node, what: &str) -> Option<Vec<Algorithm>> {
    let list = d.strings(n, "`algorithms`")?;
    if list.is_empty() {
        d.err(
            n.pos,
            format!("{what}: `algorithms` needs at least one algorithm; they are never taken from the token"),
        );
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (name, pos) in list {
        match ALGORITHMS.iter().find(|(n, _)| *n == name) {
            Some((_, alg)) => out.push(*alg),
            None => {
                ok = false;
                let names: Vec<&str> = ALGORITHMS.iter().map(|(n, _)| *n).collect();
                d.err(
                    pos,
                    format!(
                        "`{name}` is not a supported token algorithm; use one of: {}",
                        names.join(", ")
                    ),
                );
            }
        }
    }
    if !ok {
        return None;
    }
    let hmac = out
        .iter()
        .filter(|a| a.family() == AlgorithmFamily::Hmac)
        .count();
    if hmac != 0 && hmac != out.len() {
        d.err(
            n.pos,
            format!("{what}: HS* algorithms cannot be mixed with public-key ones in one issuer: a public key would then be accepted as an HMAC secret"),
        );
        return None;
    }
    Some(out)
}

fn refresh_bounds(d: &mut Decoder, n: &Node, what: &str) -> Option<(Duration, Duration)> {
    let f = d.fields(n, "`jwks_refresh`", &["min", "max"])?;
    let min = match f.get("min") {
        Some(v) => d.duration(v, "`jwks_refresh.min`")?,
        None => Duration::from_secs(60),
    };
    let max = match f.get("max") {
        Some(v) => d.duration(v, "`jwks_refresh.max`")?,
        None => Duration::from_secs(3600),
    };
    if min < Duration::from_secs(1) || min > max {
        d.err(
            n.pos,
            format!("{what}: `jwks_refresh` needs 1s <= min <= max"),
        );
        return None;
    }
    Some((min, max))
}

/// Exactly one of `jwks_url`, `public_key_file`, `secret`, matching the pinned algorithms.
fn key_source(
    d: &mut Decoder,
    f: &super::decode::Fields,
    n: &Node,
    what: &str,
    algorithms: Option<&[Algorithm]>,
) -> Option<JwtKeys> {
    let given: Vec<&str> = ["jwks_url", "public_key_file", "secret"]
        .into_iter()
        .filter(|k| f.get(k).is_some())
        .collect();
    if given.len() != 1 {
        d.err(
            n.pos,
            format!(
                "{what} needs exactly one of `jwks_url`, `public_key_file`, `secret`{}",
                if given.is_empty() {
                    String::new()
                } else {
                    format!("; found {}", given.join(", "))
                }
            ),
        );
        return None;
    }
    let family = algorithms.and_then(|a| a.first()).map(|a| a.family());
    let hmac = family == Some(AlgorithmFamily::Hmac);
    if let Some(v) = f.get("secret") {
        let s = d.string(v, "`secret`")?;
        if family.is_some() && !hmac {
            d.err(v.pos, format!("{what}: `secret` is for HS256/384/512; the pinned algorithms need `jwks_url` or `public_key_file`"));
            return None;
        }
        if s.len() < MIN_SECRET {
            d.err(
                v.pos,
                format!("{what}: `secret` must be at least {MIN_SECRET} bytes"),
            );
            return None;
        }
        return Some(JwtKeys::Secret(DecodingKey::from_secret(s.as_bytes())));
    }
    if hmac {
        d.err(
            n.pos,
            format!("{what}: HS* algorithms take their key from `secret`"),
        );
        return None;
    }
    if let Some(v) = f.get("jwks_url") {
        let url = d.string(v, "`jwks_url`")?;
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            d.err(
                v.pos,
                format!("{what}: `jwks_url` must be an http:// or https:// URL"),
            );
            return None;
        }
        return Some(JwtKeys::Jwks { url });
    }
    let v = f.get("public_key_file")?;
    let path = d.string(v, "`public_key_file`")?;
    let path = d.relative(&path);
    let pem = match std::fs::read(&path) {
        Ok(pem) => pem,
        Err(e) => {
            d.err(
                v.pos,
                format!("{what}: cannot read `{}`: {e}", path.display()),
            );
            return None;
        }
    };
    let key = match family {
        Some(AlgorithmFamily::Rsa) => DecodingKey::from_rsa_pem(&pem),
        Some(AlgorithmFamily::Ec) => DecodingKey::from_ec_pem(&pem),
        Some(AlgorithmFamily::Ed) => DecodingKey::from_ed_pem(&pem),
        _ => return None,
    };
    match key {
        Ok(key) => Some(JwtKeys::PublicKey(key)),
        Err(e) => {
            d.err(
                v.pos,
                format!(
                    "{what}: `{}` is not a PEM public key for the pinned algorithms: {e}",
                    path.display()
                ),
            );
            None
        }
    }
}
