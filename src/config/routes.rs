//! Decoding of `routes`.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU64;
use std::sync::Arc;

use http::{Method, StatusCode};

use super::decode::Decoder;
use super::model::*;
use super::node::{Node, Value};

pub(super) fn routes(
    d: &mut Decoder,
    n: &Node,
    upstreams: &BTreeMap<String, Arc<Upstream>>,
    declared: &Declared,
    plugins: &crate::plugins::Configured,
) -> Vec<Arc<Route>> {
    let Some(items) = d.list(n, "`routes`") else {
        return Vec::new();
    };
    if items.is_empty() {
        d.err(n.pos, "`routes` must hold at least one route");
    }
    let known = Known {
        upstreams,
        declared,
        plugins,
    };
    let mut names = BTreeSet::new();
    let mut out: Vec<Arc<Route>> = Vec::new();
    let mut lines = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Some(route) = route(d, item, i, &known) else {
            continue;
        };
        if !names.insert(route.name.clone()) {
            d.err(
                item.pos,
                format!(
                    "two routes are named `{}`; route names must be unique",
                    route.name
                ),
            );
        }
        // First match wins: a route every call of which an earlier one takes is a mistake
        // (a catch-all written first, say) that would otherwise show only as calls going to
        // the wrong place.
        if let Some((earlier, line)) = out
            .iter()
            .zip(&lines)
            .find(|(e, _)| shadows(&e.matcher, &route.matcher))
        {
            d.err(
                item.pos,
                format!(
                    "route `{}` can never match: route `{}` (line {line}) comes first and takes every call it would (the first route that matches wins); put `{}` before it",
                    route.name, earlier.name, route.name
                ),
            );
        }
        lines.push(item.pos.line);
        out.push(Arc::new(route));
    }
    out
}

/// Whether every call that `later` matches is matched by `earlier` too. Host patterns count
/// only when written alike (`*.example.com` is not taken to cover `api.example.com`), so this
/// errs on the side of saying nothing.
fn shadows(earlier: &RouteMatch, later: &RouteMatch) -> bool {
    use crate::pipeline::route::prefix_matches;
    let methods = earlier.methods.is_empty()
        || (!later.methods.is_empty() && later.methods.iter().all(|m| earlier.methods.contains(m)));
    let hosts = earlier.hosts.is_empty()
        || (!later.hosts.is_empty() && later.hosts.iter().all(|h| earlier.hosts.contains(h)));
    let path = match (&earlier.path, &later.path) {
        (PathMatch::Exact(a), PathMatch::Exact(b)) => a == b,
        (PathMatch::Prefix(a), PathMatch::Exact(b) | PathMatch::Prefix(b)) => prefix_matches(a, b),
        (PathMatch::Exact(_), PathMatch::Prefix(_)) => false,
    };
    methods && hosts && path
}

struct Known<'a> {
    upstreams: &'a BTreeMap<String, Arc<Upstream>>,
    declared: &'a Declared,
    plugins: &'a crate::plugins::Configured,
}

/// Names declared anywhere in the file, valid or not. References are checked against these, so
/// that one broken plan or upstream yields one error, not one more for every route naming it.
#[derive(Default)]
pub(super) struct Declared {
    /// Upstream names.
    pub upstreams: BTreeSet<String>,
    /// Meter names of every plan.
    pub meters: BTreeSet<String>,
    /// Feature names of every plan.
    pub features: BTreeSet<String>,
}

impl Declared {
    /// Collects names leniently from the raw `upstreams` and `plans` nodes.
    pub fn scan(upstreams: Option<&Node>, plans: Option<&Node>) -> Declared {
        let mut out = Declared {
            upstreams: keys(upstreams).map(|(k, _)| k.to_string()).collect(),
            ..Declared::default()
        };
        for (_, plan) in keys(plans) {
            let field = |name: &str| match &plan.value {
                Value::Map(e) => e
                    .iter()
                    .find(|(k, _)| matches!(&k.value, Value::Str(s) if s == name))
                    .map(|(_, v)| v),
                _ => None,
            };
            out.meters
                .extend(keys(field("meters")).map(|(k, _)| k.to_string()));
            if let Some(Value::Seq(items)) = field("features").map(|f| &f.value) {
                out.features
                    .extend(items.iter().filter_map(|i| match &i.value {
                        Value::Str(s) => Some(s.clone()),
                        _ => None,
                    }));
            }
        }
        out
    }
}

fn keys(n: Option<&Node>) -> impl Iterator<Item = (&str, &Node)> {
    let entries = match n.map(|n| &n.value) {
        Some(Value::Map(e)) => e.as_slice(),
        _ => &[],
    };
    entries.iter().filter_map(|(k, v)| match &k.value {
        Value::Str(s) => Some((s.as_str(), v)),
        _ => None,
    })
}

const ROUTE_KEYS: &[&str] = &[
    "name",
    "match",
    "upstream",
    "respond",
    "auth",
    "meter",
    "feature",
    "refund_on",
    "plugins",
    "max_request_body",
    "read_timeout",
    "rewrite_prefix",
    "request_headers",
];

fn route(d: &mut Decoder, n: &Node, index: usize, known: &Known) -> Option<Route> {
    let f = d.fields(n, &format!("route #{}", index + 1), ROUTE_KEYS)?;
    let name = d
        .require(&f, "name", &format!("route #{}", index + 1))
        .and_then(|n| d.string(n, "`name`"));
    let what = match &name {
        Some(n) => format!("route `{n}`"),
        None => format!("route #{}", index + 1),
    };
    let matcher = d
        .require(&f, "match", &what)
        .and_then(|m| matcher(d, m, &what));
    let target = match (f.get("upstream"), f.get("respond")) {
        (Some(u), None) => d
            .string(u, "`upstream`")
            .and_then(|s| match known.upstreams.get(&s) {
                Some(up) => Some(RouteTarget::Upstream(up.clone())),
                // Declared but broken: its own error says why.
                None if known.declared.upstreams.contains(&s) => None,
                None => {
                    d.err(
                        u.pos,
                        format!(
                            "{what} names upstream `{s}`, which is not defined; upstreams: {}",
                            super::sections::list(&known.declared.upstreams)
                        ),
                    );
                    None
                }
            }),
        (None, Some(r)) => respond(d, r).map(RouteTarget::Respond),
        (Some(_), Some(r)) => {
            d.err(
                r.pos,
                format!("{what} has both `upstream` and `respond`; choose one"),
            );
            None
        }
        (None, None) => {
            d.err(
                f.pos,
                format!("{what} needs `upstream` (proxy) or `respond` (answer by itself)"),
            );
            None
        }
    };
    let auth = match f.get("auth") {
        Some(a) => d.word(
            a,
            "`auth`",
            &[("none", RouteAuth::None), ("required", RouteAuth::Required)],
        )?,
        None => RouteAuth::Required,
    };
    let (plugin_names, plugins) = match f.get("plugins") {
        Some(p) => crate::plugins::route_list(d, p, &what, known.plugins)?,
        None => Default::default(),
    };
    let meter = match f.get("meter") {
        Some(m) => meter(d, m, &what, known, &plugin_names)?,
        None => Vec::new(),
    };
    if auth == RouteAuth::None && !meter.is_empty() {
        if let Some(m) = f.get("meter") {
            d.err(
                m.pos,
                format!(
                    "{what} is `auth: none`, so it cannot be metered; remove `meter` or `auth`"
                ),
            );
        }
    }
    let feature = match f.get("feature") {
        Some(ft) => {
            let s = d.string(ft, "`feature`")?;
            if !known.declared.features.contains(&s) {
                d.err(
                    ft.pos,
                    format!("{what} requires feature `{s}`, which no plan includes"),
                );
            }
            Some(s)
        }
        None => None,
    };
    let refund_on = match f.get("refund_on") {
        Some(r) => refund_on(d, r)?,
        None => RefundOn::default(),
    };
    let max_request_body = match f.get("max_request_body") {
        Some(n) => Some(d.size(n, "`max_request_body`")?),
        None => None,
    };
    let read_timeout = match f.get("read_timeout") {
        Some(n) => {
            let t = d.duration(n, "`read_timeout`")?;
            if t.is_zero() {
                d.err(n.pos, "`read_timeout` must be longer than 0s");
            }
            if f.get("respond").is_some() {
                d.err(
                    n.pos,
                    format!("{what} answers by itself (`respond`); `read_timeout` is for routes with an `upstream`"),
                );
            }
            Some(t)
        }
        None => None,
    };
    let rewrite_prefix = match f.get("rewrite_prefix") {
        Some(n) => {
            let p = d.string(n, "`rewrite_prefix`")?;
            if !crate::pipeline::route::path_is_normal(&p) {
                d.err(
                    n.pos,
                    format!("`rewrite_prefix` must be a path starting with `/`, without `.` or `..` segments, empty segments or encoded unreserved characters, such as \"/v1\"; found \"{p}\""),
                );
            }
            if f.get("respond").is_some() {
                d.err(
                    n.pos,
                    format!("{what} answers by itself (`respond`); `rewrite_prefix` is for routes with an `upstream`"),
                );
            }
            Some(p)
        }
        None => None,
    };
    let request_headers = match f.get("request_headers") {
        Some(n) => {
            if f.get("respond").is_some() {
                d.err(
                    n.pos,
                    format!("{what} answers by itself (`respond`); `request_headers` is for routes with an `upstream`"),
                );
            }
            super::upstreams::request_headers(d, n)?
        }
        None => Vec::new(),
    };
    Some(Route {
        name: name?,
        matcher: matcher?,
        target: target?,
        auth,
        meter,
        feature,
        refund_on,
        plugins,
        max_request_body,
        read_timeout,
        rewrite_prefix,
        request_headers,
    })
}

fn refund_on(d: &mut Decoder, n: &Node) -> Option<RefundOn> {
    let mut out = RefundOn {
        connect_error: false,
        timeout: false,
        error: false,
        classes: [false; 6],
        codes: Vec::new(),
    };
    for item in d.list(n, "`refund_on`")? {
        let word = match &item.value {
            Value::Int(code) if (400..=599).contains(code) => {
                out.codes.push(*code as u16);
                continue;
            }
            Value::Str(s) => s.as_str(),
            _ => "",
        };
        match word {
            "connect_error" => out.connect_error = true,
            "timeout" => out.timeout = true,
            "error" => out.error = true,
            "4xx" => out.classes[4] = true,
            "5xx" => out.classes[5] = true,
            _ => {
                let found = match &item.value {
                    Value::Int(i) => i.to_string(),
                    Value::Str(s) => format!("\"{s}\""),
                    other => other.kind().to_string(),
                };
                d.err(
                    item.pos,
                    format!("`refund_on` takes connect_error, timeout, error, 4xx, 5xx or a status code from 400 to 599; found {found}"),
                )
            }
        }
    }
    Some(out)
}

fn matcher(d: &mut Decoder, n: &Node, what: &str) -> Option<RouteMatch> {
    let f = d.fields(n, "`match`", &["path", "path_prefix", "methods", "host"])?;
    let path = match (f.get("path"), f.get("path_prefix")) {
        (Some(p), None) => path(d, p, "`path`").map(PathMatch::Exact),
        (None, Some(p)) => path(d, p, "`path_prefix`").map(PathMatch::Prefix),
        (Some(_), Some(p)) => {
            d.err(
                p.pos,
                format!("{what}: `match` takes `path` or `path_prefix`, not both"),
            );
            None
        }
        (None, None) => {
            d.err(
                f.pos,
                format!("{what}: `match` needs `path` or `path_prefix`"),
            );
            None
        }
    };
    let mut methods = Vec::new();
    if let Some(m) = f.get("methods") {
        for (s, pos) in d.strings(m, "`methods`")? {
            match Method::from_bytes(s.to_ascii_uppercase().as_bytes()) {
                Ok(m) => methods.push(m),
                Err(_) => d.err(pos, format!("`{s}` is not an HTTP method")),
            }
        }
    }
    let hosts = match f.get("host") {
        Some(h) => hosts(d, h)?,
        None => Vec::new(),
    };
    Some(RouteMatch {
        path: path?,
        methods,
        hosts,
    })
}

/// `match.host`: one name or pattern, or a list of them.
fn hosts(d: &mut Decoder, n: &Node) -> Option<Vec<HostPattern>> {
    let names = match &n.value {
        Value::Seq(_) => d.strings(n, "`host`")?,
        _ => vec![(d.string(n, "`host`")?, n.pos)],
    };
    if names.is_empty() {
        d.err(n.pos, "`host` needs at least one host name");
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (name, pos) in names {
        let lower = name.to_ascii_lowercase();
        let pattern = match lower.strip_prefix("*.") {
            // At least two labels under the wildcard: `*.com` would take a whole TLD.
            Some(domain) if super::upstreams::valid_host(domain) && domain.contains('.') => {
                Some(HostPattern::Subdomains(format!(".{domain}")))
            }
            Some(_) => None,
            None if super::upstreams::valid_host(&lower) => Some(HostPattern::Exact(lower)),
            None => None,
        };
        match pattern {
            Some(p) => out.push(p),
            None => {
                d.err(pos, format!("`host` entries are host names such as \"api.example.com\", or \"*.example.com\" for every subdomain of a domain (no scheme, port or path), found \"{name}\""));
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

fn path(d: &mut Decoder, n: &Node, what: &str) -> Option<String> {
    let s = d.string(n, what)?;
    if !s.starts_with('/') {
        d.err(n.pos, format!("{what} must start with `/`, found \"{s}\""));
        return None;
    }
    Some(s)
}

fn respond(d: &mut Decoder, n: &Node) -> Option<FixedResponse> {
    let f = d.fields(n, "`respond`", &["status", "body", "content_type"])?;
    let status = match f.get("status") {
        Some(s) => d
            .int(s, "`status`", 200, 599)
            .and_then(|c| StatusCode::from_u16(c as u16).ok()),
        None => Some(StatusCode::OK),
    };
    let body = match f.get("body") {
        Some(b) => d.string(b, "`body`")?,
        None => String::new(),
    };
    let content_type = match f.get("content_type") {
        Some(c) => d.string(c, "`content_type`")?,
        None => "text/plain".to_string(),
    };
    Some(FixedResponse {
        status: status?,
        body: body.into(),
        content_type,
    })
}

fn meter(
    d: &mut Decoder,
    n: &Node,
    what: &str,
    known: &Known,
    plugins: &BTreeSet<String>,
) -> Option<Vec<RouteMeter>> {
    let mut out = Vec::new();
    for (name, pos, v) in d.named(n, "`meter`") {
        if !known.declared.meters.contains(&name) {
            let all: Vec<&str> = known.declared.meters.iter().map(String::as_str).collect();
            d.err(
                pos,
                format!(
                    "{what} charges meter `{name}`, which no plan defines; meters: {}",
                    all.join(", ")
                ),
            );
            continue;
        }
        let meter = match v.value {
            Value::Map(_) => measured(d, v, &name, what, plugins),
            _ => d
                .int(v, &format!("units of meter `{name}`"), 1, i64::MAX)
                .and_then(|u| NonZeroU64::new(u as u64))
                .map(|reserve| RouteMeter {
                    name: name.clone(),
                    reserve,
                    measure: None,
                }),
        };
        out.extend(meter);
    }
    Some(out)
}

/// `{ from_response: "json:a.b" | "header:x-units" | "plugin:<name>", reserve: N, default: M }`
fn measured(
    d: &mut Decoder,
    n: &Node,
    name: &str,
    route: &str,
    plugins: &BTreeSet<String>,
) -> Option<RouteMeter> {
    let what = format!("meter `{name}`");
    let f = d.fields(n, &what, &["from_response", "reserve", "default"])?;
    let source = d.require(&f, "from_response", &what).and_then(|s| {
        let text = d.string(s, "`from_response`")?;
        let source = match text.split_once(':') {
            Some(("json", path)) if !path.is_empty() && path.split('.').all(|p| !p.is_empty()) => {
                Some(MeasureSource::Json(path.split('.').map(str::to_string).collect()))
            }
            Some(("header", h)) => http::HeaderName::from_bytes(h.trim().to_ascii_lowercase().as_bytes())
                .ok()
                .map(MeasureSource::Header),
            Some(("plugin", p)) if !p.trim().is_empty() => {
                let p = p.trim();
                if !plugins.contains(p) {
                    d.err(s.pos, format!("{what} is measured by plugin `{p}`, which {route} does not list under `plugins`"));
                    return None;
                }
                Some(MeasureSource::Plugin(p.to_string()))
            }
            _ => None,
        };
        if source.is_none() {
            d.err(s.pos, format!("`from_response` must be \"json:<dotted.path>\", \"header:<name>\" or \"plugin:<name>\", found \"{text}\""));
        }
        source
    });
    let reserve = d
        .require(&f, "reserve", &what)
        .and_then(|r| d.int(r, "`reserve`", 1, i64::MAX))
        .and_then(|r| NonZeroU64::new(r as u64));
    let default = match f.get("default") {
        Some(x) => d.int(x, "`default`", 0, i64::MAX)? as u64,
        None => 0,
    };
    Some(RouteMeter {
        name: name.to_string(),
        reserve: reserve?,
        measure: Some(Measure {
            source: source?,
            default,
        }),
    })
}
