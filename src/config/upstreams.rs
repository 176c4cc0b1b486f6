//! Decoding of `upstreams`: targets (`IP:PORT`, or `HOST:PORT` looked up now), timeouts,
//! passive and active health, TLS and the `Host` the upstream gets.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use super::decode::Decoder;
use super::model::*;
use super::node::Node;
use super::sections::opt_duration;
use crate::proxy::balance::{Balancer, HealthPolicy};

const KEYS: &[&str] = &[
    "targets",
    "connect_timeout",
    "read_timeout",
    "max_fails",
    "fail_timeout",
    "tls",
    "sni",
    "ca_file",
    "host_header",
    "resolve_every",
    "health_check",
    "request_headers",
];

const HEALTH_CHECK_KEYS: &[&str] = &["path", "interval", "timeout", "fails", "passes", "expect"];

pub(super) fn upstreams(d: &mut Decoder, n: &Node) -> BTreeMap<String, Arc<Upstream>> {
    let mut out = BTreeMap::new();
    for (name, _, v) in d.named(n, "`upstreams`") {
        if let Some(up) = upstream(d, name.clone(), v) {
            out.insert(name, Arc::new(up));
        }
    }
    out
}

fn upstream(d: &mut Decoder, name: String, v: &Node) -> Option<Upstream> {
    let what = format!("upstream `{name}`");
    let f = d.fields(v, &what, KEYS)?;
    let targets = d.require(&f, "targets", &what).and_then(|t| {
        let list = d.list(t, "`targets`")?;
        if list.is_empty() {
            d.err(t.pos, format!("{what} needs at least one target"));
            return None;
        }
        let targets: Vec<_> = list.iter().filter_map(|a| target(d, a)).collect();
        (targets.len() == list.len()).then_some(targets)
    });
    let connect_timeout = opt_duration(
        d,
        f.get("connect_timeout"),
        "`connect_timeout`",
        Duration::from_secs(2),
    );
    let read_timeout = opt_duration(
        d,
        f.get("read_timeout"),
        "`read_timeout`",
        Duration::from_secs(30),
    );
    let defaults = HealthPolicy::default();
    let max_fails = match f.get("max_fails") {
        Some(n) => d.int(n, "`max_fails`", 0, 1_000_000).map(|m| m as u32),
        None => Some(defaults.max_fails),
    };
    let fail_timeout = opt_duration(
        d,
        f.get("fail_timeout"),
        "`fail_timeout`",
        defaults.fail_timeout,
    );
    let resolve_every = opt_duration(
        d,
        f.get("resolve_every"),
        "`resolve_every`",
        Duration::from_secs(30),
    )
    .and_then(|r| {
        if r < Duration::from_secs(1) {
            if let Some(n) = f.get("resolve_every") {
                d.err(n.pos, "`resolve_every` must be at least 1s");
            }
            return None;
        }
        Some(r)
    });
    let tls = match f.get("tls") {
        Some(n) => d.bool(n, "`tls`"),
        None => Some(false),
    };
    // Each of these three: None when not written, Some(None) when written wrong.
    let sni = f.get("sni").map(|n| {
        let s = d.string(n, "`sni`")?;
        if !valid_host(&s) && s.parse::<std::net::IpAddr>().is_err() {
            d.err(
                n.pos,
                format!("`sni` must be a host name or an IP address, found \"{s}\""),
            );
            return None;
        }
        Some(s)
    });
    // Read only where it is used: without TLS the one error is that it is there.
    let ca = f.get("ca_file").filter(|_| tls != Some(false)).map(|n| {
        let certs = d.ca_file(Some(n), "ca_file", None, "")?;
        pingora_ca(&certs).map_err(|e| d.err(n.pos, e)).ok()
    });
    let host_header = f.get("host_header").map(|n| {
        let s = d.string(n, "`host_header`")?;
        match http::HeaderValue::from_str(&s) {
            Ok(h) if !s.is_empty() && !s.contains(['/', ' ', '@']) => Some(h),
            _ => {
                d.err(n.pos, format!("`host_header` must be a host, optionally with a port, such as \"api.example.com\", found \"{s}\""));
                None
            }
        }
    });
    let health_check = f.get("health_check").map(|n| health_check(d, n));
    let request_headers = match f.get("request_headers") {
        Some(n) => request_headers(d, n),
        None => Some(Vec::new()),
    };
    if tls == Some(false) {
        // Settings that mean something only with TLS are mistakes without it.
        for key in ["sni", "ca_file"] {
            if let Some(n) = f.get(key) {
                d.err(n.pos, format!("`{key}` is used only with `tls: true`"));
            }
        }
    }
    let mut targets = targets?;
    let health = HealthPolicy {
        max_fails: max_fails?,
        fail_timeout: fail_timeout?,
    };
    let (sni, ca, host_header) = (written(sni)?, written(ca)?, written(host_header)?);
    let health_check = written(health_check)?;
    let tls = tls?.then_some(UpstreamTls { ca });
    for t in &mut targets {
        match (&tls, &sni) {
            (None, _) => t.sni.clear(),
            (Some(_), Some(sni)) => t.sni.clone_from(sni),
            (Some(_), None) => {}
        }
    }
    let request_headers = request_headers?;
    Some(Upstream {
        name,
        request_headers,
        balance: Balancer::new(
            targets
                .iter()
                .enumerate()
                .flat_map(|(i, t)| t.addrs.iter().map(move |a| (i, *a)))
                .collect(),
            health,
        ),
        targets,
        tls,
        host_header,
        connect_timeout: connect_timeout?,
        read_timeout: read_timeout?,
        resolve_every: resolve_every?,
        resolved_at: Default::default(),
        health_check,
        probed_at: Default::default(),
    })
}

/// `health_check: { path, interval, timeout, fails, passes, expect }`.
fn health_check(d: &mut Decoder, n: &Node) -> Option<HealthCheck> {
    let what = "`health_check`";
    let f = d.fields(n, what, HEALTH_CHECK_KEYS)?;
    let path = d.require(&f, "path", what).and_then(|p| {
        let s = d.string(p, "`path`")?;
        match s.parse::<http::uri::PathAndQuery>() {
            Ok(_) if s.starts_with('/') => Some(s),
            _ => {
                d.err(
                    p.pos,
                    format!("`path` must be a path such as \"/healthz\", found \"{s}\""),
                );
                None
            }
        }
    });
    let interval = opt_duration(d, f.get("interval"), "`interval`", Duration::from_secs(5))
        .and_then(|i| {
            if i < Duration::from_millis(100) {
                if let Some(n) = f.get("interval") {
                    d.err(n.pos, "`interval` must be at least 100ms");
                }
                return None;
            }
            Some(i)
        });
    let timeout = match (f.get("timeout"), interval) {
        (Some(n), interval) => d.duration(n, "`timeout`").and_then(|t| {
            if t.is_zero() {
                d.err(n.pos, "`timeout` must be longer than 0s");
                return None;
            }
            match interval {
                Some(i) if t > i => {
                    d.err(n.pos, format!("`timeout` ({t:?}) must not be longer than `interval` ({i:?}): a probe must end before the next one starts"));
                    None
                }
                _ => Some(t),
            }
        }),
        // One second, or the interval when it is shorter.
        (None, Some(i)) => Some(i.min(Duration::from_secs(1))),
        (None, None) => None,
    };
    let mut count = |key: &str| match f.get(key) {
        Some(n) => d.int(n, &format!("`{key}`"), 1, 1_000).map(|c| c as u32),
        None => Some(1),
    };
    let (fails, passes) = (count("fails"), count("passes"));
    let expect = match f.get("expect") {
        Some(n) => d.list(n, "`expect`").and_then(|items| {
            let statuses: Vec<Option<u16>> = items
                .iter()
                .map(|i| d.int(i, "a status in `expect`", 100, 599).map(|s| s as u16))
                .collect();
            if statuses.is_empty() {
                d.err(n.pos, "`expect` needs at least one status");
                return None;
            }
            statuses.into_iter().collect::<Option<Vec<u16>>>()
        }),
        None => Some(Vec::new()),
    };
    Some(HealthCheck {
        path: path?,
        interval: interval?,
        timeout: timeout?,
        fails: fails?,
        passes: passes?,
        expect: expect?,
    })
}

/// An optional setting: `Some(None)` when not written, `None` when written wrong.
fn written<T>(setting: Option<Option<T>>) -> Option<Option<T>> {
    match setting {
        None => Some(None),
        Some(value) => value.map(Some),
    }
}

/// One target: `IP:PORT`, or `HOST:PORT` looked up now (the first address it resolves to). Its
/// `sni` is the host name, or the IP address, for an upstream with TLS to use.
/// Headers the gateway sets itself, or that describe the connection rather than the call:
/// `request_headers` may not set them (why, for the error).
fn reserved_header(name: &http::HeaderName) -> Option<&'static str> {
    if crate::proxy::hygiene::is_hop_by_hop(name) {
        return Some("it is hop-by-hop: it describes one connection, not the call");
    }
    match name.as_str() {
        "host" => Some("the upstream's `host_header` sets it"),
        "content-length" | "transfer-encoding" => {
            Some("the body's framing is the gateway's to write")
        }
        "x-tollgate-tenant" | "x-tollgate-plan" => {
            Some("the gateway tells the upstream who calls with it")
        }
        "x-request-id" => Some("`server.request_id` sets it"),
        "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host" => {
            Some("it says where the call came from, which the gateway knows per call")
        }
        _ => None,
    }
}

/// `request_headers`: header name → value, set on every request to the upstream (and its
/// health probes), replacing what the caller sent. Values are marked sensitive (they are often
/// credentials), and no error repeats one.
pub(super) fn request_headers(
    d: &mut Decoder,
    n: &Node,
) -> Option<Vec<(http::HeaderName, http::HeaderValue)>> {
    let mut out = Vec::new();
    let mut ok = true;
    for (name, pos, v) in d.named(n, "`request_headers`") {
        let value = d.string(v, &format!("the value of `request_headers.{name}`"));
        let Ok(header) = http::HeaderName::from_bytes(name.as_bytes()) else {
            d.err(pos, format!("`request_headers`: \"{name}\" is not a header name (letters, digits and `-`, such as \"Authorization\")"));
            ok = false;
            continue;
        };
        if let Some(why) = reserved_header(&header) {
            d.err(pos, format!("`request_headers` cannot set `{name}`: {why}"));
            ok = false;
            continue;
        }
        let Some(value) = value else {
            ok = false;
            continue;
        };
        match http::HeaderValue::from_str(&value) {
            Ok(mut value) => {
                value.set_sensitive(true);
                out.push((header, value));
            }
            Err(_) => {
                // The value is likely a secret: say what is wrong with it, not what it is.
                d.err(v.pos, format!("the value of `request_headers.{name}` is not a valid header value (visible ASCII and spaces only; no line breaks)"));
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

fn target(d: &mut Decoder, n: &Node) -> Option<Target> {
    let s = d.string(n, "a target")?;
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Some(Target::new(s, vec![addr], None));
    }
    let parts = s
        .rsplit_once(':')
        .filter(|(host, port)| valid_host(host) && port.parse::<u16>().is_ok_and(|p| p > 0));
    let Some((host, _)) = parts else {
        d.err(
            n.pos,
            format!("a target must be IP:PORT or HOST:PORT such as \"10.0.0.11:3000\" or \"api.internal:3000\", found \"{s}\""),
        );
        return None;
    };
    if !d.resolve_hosts {
        // Checked without DNS: an address no one connects to.
        let port = s
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(0);
        let host = host.to_string();
        return Some(Target::new(
            s,
            vec![SocketAddr::from(([0, 0, 0, 0], port))],
            Some(host),
        ));
    }
    match s.to_socket_addrs().map(|a| a.collect::<Vec<_>>()) {
        Ok(addrs) if !addrs.is_empty() => {
            let host = host.to_string();
            Some(Target::new(s, addrs, Some(host)))
        }
        Ok(_) => {
            d.err(
                n.pos,
                format!("target \"{s}\": `{host}` resolves to no address"),
            );
            None
        }
        Err(e) => {
            d.err(
                n.pos,
                format!("target \"{s}\": `{host}` could not be resolved: {e}"),
            );
            None
        }
    }
}

/// A DNS host name: labels of letters, digits, `-` and `_`, separated by dots.
pub(super) fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
        && host.chars().any(|c| c.is_ascii_alphabetic())
}

/// The certificates of a `ca_file` as pingora takes them. Each is parsed here, at load, so a
/// certificate pingora could not parse is an error at its position instead of a failure when
/// a connect first needs it.
fn pingora_ca(
    certs: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<Arc<pingora::protocols::tls::CaType>, String> {
    use pingora::utils::tls::WrappedX509;
    if certs.is_empty() {
        return Err("`ca_file` holds no certificate".into());
    }
    certs
        .iter()
        .map(|der| {
            WrappedX509::try_new(der.to_vec(), |raw| {
                x509_parser::parse_x509_certificate(raw).map(|(_, cert)| cert)
            })
            .map_err(|e| format!("`ca_file` holds a certificate that cannot be read: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Arc::from)
}

#[cfg(test)]
mod tests {
    use super::valid_host;
    use crate::config::load_str;

    fn config(upstream: &str) -> Result<crate::config::Config, String> {
        let text = format!(
            "server: {{ listen: \"127.0.0.1:8080\" }}\nstore: {{ kind: embedded, path: ./u.db }}\nupstreams:\n  product: {upstream}\nplans: {{ free: {{}} }}\nroutes: [{{ name: r, match: {{ path: / }}, upstream: product, auth: none }}]\n"
        );
        load_str("t.yaml", &text, &|_| None).map_err(|e| e.to_string())
    }

    #[test]
    fn host_name_targets_are_resolved_when_the_config_loads() {
        let c = config(r#"{ targets: ["localhost:3000", "127.0.0.1:3001"], tls: true }"#).unwrap();
        let up = &c.upstreams["product"];
        assert_eq!(up.targets[0].name, "localhost:3000");
        let endpoints = up.balance.endpoints();
        assert!(!up.targets[0].addrs.is_empty());
        for e in endpoints.iter().filter(|e| e.target == 0) {
            assert!(e.addr.ip().is_loopback(), "{e:?}");
            assert_eq!(e.addr.port(), 3000);
        }
        assert_eq!(
            endpoints.len(),
            up.targets[0].addrs.len() + 1,
            "every address of the name, and the IP target"
        );
        // With TLS, each target's certificate is checked against its host name, or its IP.
        assert_eq!(up.targets[0].sni, "localhost");
        assert_eq!(up.targets[1].sni, "127.0.0.1");
        assert!(up.tls.as_ref().is_some_and(|t| t.ca.is_none()));
    }

    #[test]
    fn sni_overrides_the_target_names_and_without_tls_none_is_kept() {
        let c = config(r#"{ targets: ["localhost:3000", "127.0.0.1:3001"], tls: true, sni: api.example.com, host_header: "api.example.com:8443" }"#).unwrap();
        let up = &c.upstreams["product"];
        assert!(up.targets.iter().all(|t| t.sni == "api.example.com"));
        assert_eq!(up.host_header.as_ref().unwrap(), "api.example.com:8443");
        let c = config(r#"{ targets: ["localhost:3000"] }"#).unwrap();
        assert!(c.upstreams["product"].tls.is_none());
        assert_eq!(c.upstreams["product"].targets[0].sni, "");
    }

    #[test]
    fn host_names_are_due_for_a_new_look_up_every_resolve_every() {
        use std::time::{Duration, Instant};
        let c = config(r#"{ targets: ["localhost:3000"], resolve_every: 2s }"#).unwrap();
        let up = &c.upstreams["product"];
        let t0 = Instant::now();
        assert!(!up.resolve_due(t0), "looked up when the config loaded");
        assert!(!up.resolve_due(t0 + Duration::from_millis(1_999)));
        assert!(up.resolve_due(t0 + Duration::from_secs(2)));
        assert!(!up.resolve_due(t0 + Duration::from_secs(3)));
        assert!(up.resolve_due(t0 + Duration::from_secs(4)));
        // IP targets are never looked up.
        let c = config(r#"{ targets: ["127.0.0.1:3000"], resolve_every: 1s }"#).unwrap();
        assert!(!c.upstreams["product"].resolve_due(t0 + Duration::from_secs(60)));
        let e = config(r#"{ targets: ["localhost:3000"], resolve_every: 500ms }"#).unwrap_err();
        assert!(e.contains("`resolve_every` must be at least 1s"), "{e}");
    }

    #[test]
    fn a_host_name_that_does_not_resolve_is_an_error_at_its_position() {
        // `.invalid` never resolves (RFC 6761); the rest of the message is the resolver's.
        let e = config(r#"{ targets: ["api.tollgate.invalid:3000"] }"#).unwrap_err();
        assert!(
            e.starts_with("t.yaml:4:24: target \"api.tollgate.invalid:3000\": `api.tollgate.invalid` could not be resolved"),
            "{e}"
        );
    }

    #[test]
    fn host_names() {
        for ok in [
            "api.internal",
            "localhost",
            "my_svc.ns.svc.cluster.local",
            "a-b.example.com",
        ] {
            assert!(valid_host(ok), "{ok}");
        }
        for bad in [
            "",
            "10.0.0.1",
            "a..b",
            "-",
            "api.example.com/",
            "a b",
            "[::1]",
        ] {
            assert!(!valid_host(bad), "{bad}");
        }
    }
}
