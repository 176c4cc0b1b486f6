//! Decoding of `cors`: which browser origins may call the API, and what they may send and read.

use std::time::Duration;

use http::HeaderValue;

use super::decode::Decoder;
use super::model::{Cors, OriginPattern};
use super::node::{Node, Value};
use super::sections::opt_duration;

const KEYS: &[&str] = &[
    "allow_origins",
    "allow_methods",
    "allow_headers",
    "expose_headers",
    "max_age",
    "allow_credentials",
];

/// Methods a preflight may ask for when `allow_methods` is not written.
const DEFAULT_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];
/// Request headers a preflight may ask for when `allow_headers` is not written: the default
/// credential headers, JSON bodies and retries.
const DEFAULT_HEADERS: &[&str] = &[
    "authorization",
    "x-api-key",
    "content-type",
    "idempotency-key",
];
/// Headers of the gateway's own that a browser script may read.
const GATEWAY_HEADERS: &[&str] = &[
    "RateLimit",
    "RateLimit-Policy",
    "Retry-After",
    "Tollgate-Warning",
    "Tollgate-Upgrade",
    "Tollgate-Milestone",
    "Tollgate-Idempotent-Replay",
];

pub(super) fn cors(d: &mut Decoder, n: &Node) -> Option<Cors> {
    let f = d.fields(n, "`cors`", KEYS)?;
    let origins = d.require(&f, "allow_origins", "`cors`").and_then(|o| {
        let list = d.strings(o, "`cors.allow_origins`")?;
        if list.is_empty() {
            d.err(o.pos, "`cors.allow_origins` needs at least one origin, or \"*\"");
            return None;
        }
        let mut ok = true;
        for (origin, pos) in &list {
            if origin.contains('*') && origin != "*" {
                if let Err(why) = origin_pattern(origin) {
                    d.err(*pos, format!("`cors.allow_origins`: \"{origin}\" {why}"));
                    ok = false;
                }
            } else if origin != "*" && !is_origin(origin) {
                d.err(*pos, format!("`cors.allow_origins`: \"{origin}\" is not an origin such as \"https://app.example.com\" (scheme, host and optional port; no path), a pattern such as \"https://*.example.com\", nor \"*\""));
                ok = false;
            }
        }
        ok.then(|| list.into_iter().map(|(o, _)| o).collect::<Vec<_>>())
    });
    let methods = list_value(
        d,
        f.get("allow_methods"),
        "`cors.allow_methods`",
        DEFAULT_METHODS,
        |m| http::Method::from_bytes(m.as_bytes()).is_ok(),
    );
    let headers = list_value(
        d,
        f.get("allow_headers"),
        "`cors.allow_headers`",
        DEFAULT_HEADERS,
        |h| http::HeaderName::from_bytes(h.as_bytes()).is_ok(),
    );
    let expose = f.get("expose_headers").map_or(Some(Vec::new()), |n| {
        let list = d.strings(n, "`cors.expose_headers`")?;
        Some(list.into_iter().map(|(h, _)| h).collect())
    });
    let max_age = opt_duration(
        d,
        f.get("max_age"),
        "`cors.max_age`",
        Duration::from_secs(600),
    );
    let credentials = match f.get("allow_credentials") {
        Some(n) => d.bool(n, "`cors.allow_credentials`"),
        None => Some(false),
    };
    let star = matches!(
        f.get("allow_origins").map(|o| &o.value),
        Some(Value::Seq(list)) if list.iter().any(|o| matches!(&o.value, Value::Str(s) if s == "*"))
    );
    if credentials == Some(true) && star {
        if let Some(n) = f.get("allow_credentials") {
            d.err(n.pos, "`cors.allow_credentials: true` needs the origins listed: with \"*\" any site could call the API with its visitors' credentials");
        }
        return None;
    }
    let (origins, credentials) = (origins?, credentials?);
    let expose = expose?;
    let exposed: Vec<&str> = GATEWAY_HEADERS
        .iter()
        .copied()
        .chain(expose.iter().map(String::as_str))
        .collect();
    let value = |s: String, what: &str, d: &mut Decoder| {
        HeaderValue::from_str(&s)
            .map_err(|_| {
                d.err(
                    n.pos,
                    format!("`cors`: {what} cannot be sent as a header: {s}"),
                )
            })
            .ok()
    };
    Some(Cors {
        any_origin: origins.iter().any(|o| o == "*"),
        origin_patterns: origins
            .iter()
            .filter_map(|o| origin_pattern(o).ok())
            .collect(),
        origins: origins.into_iter().filter(|o| !o.contains('*')).collect(),
        allow_methods: value(methods?, "allow_methods", d)?,
        allow_headers: value(headers?, "allow_headers", d)?,
        expose_headers: value(exposed.join(", "), "expose_headers", d)?,
        max_age: value(max_age?.as_secs().to_string(), "max_age", d)?,
        allow_credentials: credentials,
    })
}

/// A comma-separated header value of the list at `n` (or of `default`), each item checked.
fn list_value(
    d: &mut Decoder,
    n: Option<&Node>,
    what: &str,
    default: &[&str],
    valid: impl Fn(&str) -> bool,
) -> Option<String> {
    let Some(n) = n else {
        return Some(default.join(", "));
    };
    let list = d.strings(n, what)?;
    let mut ok = true;
    for (item, pos) in &list {
        if !valid(item) {
            d.err(*pos, format!("{what}: \"{item}\" is not a valid name"));
            ok = false;
        }
    }
    ok.then(|| {
        list.iter()
            .map(|(i, _)| i.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// `scheme://host[:port]`, as browsers send `Origin`.
/// `scheme://*.domain[:port]`, the wildcard standing for one or more labels; the domain needs
/// a dot, so that a pattern cannot allow a whole top-level domain (`https://*.com`).
fn origin_pattern(s: &str) -> Result<OriginPattern, &'static str> {
    const SHAPE: &str = "is not a pattern such as \"https://*.example.com\": the wildcard stands for the first labels of the host only";
    let (scheme, rest) = s.split_once("://").ok_or(SHAPE)?;
    let domain = rest.strip_prefix("*.").ok_or(SHAPE)?;
    if domain.contains('*') || !is_origin(&format!("{scheme}://{domain}")) {
        return Err(SHAPE);
    }
    let host = domain.rsplit_once(':').map_or(domain, |(h, _)| h);
    if !host.contains('.') {
        return Err("would allow every site under a top-level domain; name the domain (\"https://*.example.com\")");
    }
    Ok(OriginPattern {
        prefix: format!("{scheme}://"),
        suffix: format!(".{domain}"),
    })
}

fn is_origin(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once("://") else {
        return false;
    };
    !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#', ' ', '@'])
}

#[cfg(test)]
mod tests {
    use super::{is_origin, origin_pattern};

    #[test]
    fn wildcard_origins_match_subdomains_of_their_domain_only() {
        let p = origin_pattern("https://*.example.com").unwrap();
        for ok in [
            "https://app.example.com",
            "https://pr-12.preview.example.com",
        ] {
            assert!(p.matches(ok.as_bytes()), "{ok}");
        }
        for no in [
            "https://example.com",
            "https://.example.com",
            "https://evil-example.com",
            "https://evil.com.example.co",
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://a..example.com",
            "https://user@app.example.com",
            "https://App.example.com",
        ] {
            assert!(!p.matches(no.as_bytes()), "{no}");
        }
        let with_port = origin_pattern("http://*.localhost.test:3000").unwrap();
        assert!(with_port.matches(b"http://a.localhost.test:3000"));
        assert!(!with_port.matches(b"http://a.localhost.test"));
        for bad in [
            "https://*.com",
            "https://app.*.example.com",
            "https://*example.com",
            "*.example.com",
            "https://*.example.com/path",
            "https://*.*.example.com",
        ] {
            assert!(origin_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn origins() {
        for ok in [
            "https://app.example.com",
            "http://localhost:3000",
            "https://[::1]:8443",
        ] {
            assert!(is_origin(ok), "{ok}");
        }
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://",
            "https://a b",
            "null",
        ] {
            assert!(!is_origin(bad), "{bad}");
        }
    }
}
