//! Decoding of `server`, `admin`, `store`, `upstreams`, `tenants` and `auth`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

use super::decode::Decoder;
use super::model::*;
use super::node::Node;

pub(super) fn server(d: &mut Decoder, n: &Node) -> Option<Server> {
    let f = d.fields(
        n,
        "`server`",
        &[
            "listen",
            "threads",
            "grace_period",
            "unready_delay",
            "read_timeout",
            "access_log_sample",
            "preserve_header_case",
            "x_forwarded_for",
            "tls",
            "request_id",
            "http2",
            "max_request_body",
        ],
    )?;
    let listen = d
        .require(&f, "listen", "`server`")
        .and_then(|n| addr(d, n, "`server.listen`"));
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let threads = match f.get("threads") {
        Some(n) => d.int(n, "`server.threads`", 1, 1024).map(|t| t as usize),
        None => Some(cores),
    };
    let grace_period = opt_duration(
        d,
        f.get("grace_period"),
        "`server.grace_period`",
        Duration::from_secs(5),
    );
    let read_timeout = opt_duration(
        d,
        f.get("read_timeout"),
        "`server.read_timeout`",
        Duration::from_secs(15),
    );
    let unready_delay = opt_duration(
        d,
        f.get("unready_delay"),
        "`server.unready_delay`",
        Duration::from_secs(1),
    );
    let access_log_sample = match f.get("access_log_sample") {
        Some(n) => d.number(n, "`server.access_log_sample`").and_then(|v| {
            if !(0.0..=1.0).contains(&v) {
                d.err(
                    n.pos,
                    "`server.access_log_sample` must be between 0 (off) and 1 (every call)",
                );
                return None;
            }
            Some(v)
        }),
        None => Some(1.0),
    };
    let preserve_header_case = match f.get("preserve_header_case") {
        Some(n) => d.bool(n, "`server.preserve_header_case`"),
        None => Some(false),
    };
    let append_forwarded_for = match f.get("x_forwarded_for") {
        Some(n) => d.word(
            n,
            "`server.x_forwarded_for`",
            &[("append", true), ("keep", false)],
        ),
        None => Some(true),
    };
    let tls = match f.get("tls") {
        Some(n) => server_tls(d, n).map(Some),
        None => Some(None),
    };
    let request_id = match f.get("request_id") {
        Some(n) => d.bool(n, "`server.request_id`"),
        None => Some(false),
    };
    let http2 = match f.get("http2") {
        Some(n) => d.bool(n, "`server.http2`"),
        None => Some(false),
    };
    let max_request_body = match f.get("max_request_body") {
        Some(n) => d.size(n, "`server.max_request_body`").map(Some),
        None => Some(None),
    };
    Some(Server {
        max_request_body: max_request_body?,
        http2: http2?,
        request_id: request_id?,
        tls: tls?,
        listen: listen?,
        threads: threads?,
        grace_period: grace_period?,
        unready_delay: unready_delay?,
        read_timeout: read_timeout?,
        access_log_sample: access_log_sample?,
        preserve_header_case: preserve_header_case?,
        append_forwarded_for: append_forwarded_for?,
    })
}

/// `proxy` is `server.listen`, when it parsed: the admin listener must not share its address.
/// (pingora binds listeners with `SO_REUSEPORT`, so both would bind, and the kernel would then
/// deal connections between them: half of all calls would reach the admin API.)
pub(super) fn admin(d: &mut Decoder, n: &Node, proxy: Option<SocketAddr>) -> Option<Admin> {
    let f = d.fields(n, "`admin`", &["listen", "token"])?;
    let listen = d
        .require(&f, "listen", "`admin`")
        .and_then(|n| {
            let a = addr(d, n, "`admin.listen`")?;
            let overlaps = |p: SocketAddr| {
                p.port() == a.port()
                    && a.port() != 0
                    && (p.ip() == a.ip() || p.ip().is_unspecified() || a.ip().is_unspecified())
            };
            if let Some(p) = proxy.filter(|p| overlaps(*p)) {
                d.err(
                    n.pos,
                    format!("`admin.listen` ({a}) overlaps `server.listen` ({p}): give the admin listener a port of its own"),
                );
                return None;
            }
            Some(a)
        });
    let token = match f.get("token") {
        Some(n) => d.string(n, "`admin.token`").filter(|t| !t.is_empty()),
        None => None,
    };
    Some(Admin {
        listen: listen?,
        token,
    })
}

/// A list of Redis Sentinels (`store.sentinels`, a `redis_stream` sink's `sentinels`):
/// `redis://[[USER]:PASSWORD@]HOST:PORT` URLs, at least one.
pub(super) fn sentinels(d: &mut Decoder, n: &Node, what: &str) -> Option<Vec<String>> {
    let urls = d.strings(n, what)?;
    if urls.is_empty() {
        d.err(n.pos, format!("{what} needs at least one Sentinel's URL"));
        return None;
    }
    let mut ok = true;
    for (url, pos) in &urls {
        if let Err(why) = sentinel_node(url, what) {
            d.err(*pos, why);
            ok = false;
        }
    }
    ok.then(|| urls.into_iter().map(|(u, _)| u).collect())
}

/// The `url` of a Redis found through Sentinels (`what` names it):
/// `redis://[[USER]:PASSWORD@]NAME[/DB]`, the host being the name the Sentinels monitor the
/// primary under (so no port).
pub(super) fn sentinel_primary(url: &str, what: &str) -> Result<(), String> {
    let example = "such as \"redis://mymaster/0\" or \"rediss://:PASSWORD@mymaster/0\"";
    let Some(host) = redis_host(url) else {
        return Err(format!("{what} with Sentinels is redis:// (or rediss:// for TLS) with the name they monitor the primary under as host, {example}; found \"{url}\""));
    };
    if host.is_empty() {
        return Err(format!("{what} names no primary: with Sentinels its host is the name they monitor the primary under, {example}"));
    }
    if host.contains(':') {
        return Err(format!("with Sentinels, the host of {what} is the name they monitor the primary under, without a port (they tell where it is), {example}; found \"{host}\""));
    }
    redis::parse_redis_url(url)
        .map(|_| ())
        .ok_or_else(|| format!("{what} is not a valid URL, {example}; found \"{url}\""))
}

/// The `HOST[:PORT]` of a `redis://` or `rediss://` URL (without user, password, database or
/// query); `None` for another scheme.
fn redis_host(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    Some(authority.rsplit_once('@').map_or(authority, |(_, h)| h))
}

/// One Sentinel's URL in `what`: `redis://[[USER]:PASSWORD@]HOST:PORT` (`rediss://` for TLS).
fn sentinel_node(url: &str, what: &str) -> Result<(), String> {
    let why = || {
        format!("{what} are redis://HOST:PORT (or rediss://) URLs of the Sentinels, such as \"redis://10.0.0.5:26379\", found \"{url}\"")
    };
    let host = redis_host(url).ok_or_else(why)?;
    let port = host.rsplit_once(':').map(|(_, p)| p);
    if port
        .and_then(|p| p.parse::<u16>().ok())
        .is_none_or(|p| p == 0)
    {
        return Err(why());
    }
    redis::parse_redis_url(url).map(|_| ()).ok_or_else(why)
}

pub(super) fn store(d: &mut Decoder, n: &Node) -> Option<Store> {
    let f = d.fields(
        n,
        "`store`",
        &[
            "kind",
            "url",
            "urls",
            "path",
            "timeout",
            "on_outage",
            "ca_file",
            "sentinels",
        ],
    )?;
    #[derive(Clone, Copy, PartialEq)]
    enum Kind {
        Embedded,
        Redis,
        Sentinel,
        Cluster,
    }
    let kind_node = d.require(&f, "kind", "`store`")?;
    let kind = d.word(
        kind_node,
        "`store.kind`",
        &[
            ("embedded", Kind::Embedded),
            ("redis", Kind::Redis),
            ("redis-sentinel", Kind::Sentinel),
            ("redis-cluster", Kind::Cluster),
        ],
    )?;
    if let Some(n) = f.get("sentinels").filter(|_| kind != Kind::Sentinel) {
        d.err(
            n.pos,
            "`store.sentinels` is for kind redis-sentinel (a Redis found through its Sentinels)",
        );
    }
    let kind = match kind {
        Kind::Embedded => {
            let path = match f.get("path") {
                Some(n) => d.string(n, "`store.path`").map(PathBuf::from),
                None => Some(PathBuf::from("./data/usage.db")),
            };
            if let Some(n) = f.get("url") {
                d.err(
                    n.pos,
                    "`store.url` is for kind redis; the embedded store takes `path`",
                );
            }
            if let Some(n) = f.get("ca_file") {
                d.err(
                    n.pos,
                    "`store.ca_file` is for kind redis with a rediss:// `url`",
                );
            }
            StoreKind::Embedded { path: path? }
        }
        Kind::Redis => {
            let url = d.require(&f, "url", "`store` of kind redis").and_then(|n| {
                let url = d.string(n, "`store.url`")?;
                let ok = ["redis://", "rediss://", "redis+unix://", "unix://"].iter().any(|p| url.starts_with(p));
                if !ok {
                    d.err(n.pos, format!("`store.url` must start with redis://, rediss:// or redis+unix://, found \"{url}\""));
                    return None;
                }
                Some(url)
            });
            if let Some(n) = f.get("path") {
                d.err(
                    n.pos,
                    "`store.path` is for kind embedded; the redis store takes `url`",
                );
            }
            if let Some(n) = f.get("urls") {
                d.err(
                    n.pos,
                    "`store.urls` is for kind redis-cluster; the redis store takes `url`",
                );
            }
            let ca = d.ca_file(
                f.get("ca_file"),
                "store.ca_file",
                url.as_deref(),
                "rediss://",
            );
            StoreKind::Redis { url: url?, ca: ca? }
        }
        Kind::Sentinel => {
            let url = d
                .require(&f, "url", "`store` of kind redis-sentinel")
                .and_then(|n| {
                    let url = d.string(n, "`store.url`")?;
                    match sentinel_primary(&url, "`store.url`") {
                        Ok(()) => Some(url),
                        Err(why) => {
                            d.err(n.pos, why);
                            None
                        }
                    }
                });
            let sentinels = d
                .require(&f, "sentinels", "`store` of kind redis-sentinel")
                .and_then(|n| sentinels(d, n, "`store.sentinels`"));
            for (key, why) in [
                ("path", "`store.path` is for kind embedded; redis-sentinel takes the primary's name in `url` and the Sentinels in `sentinels`"),
                ("urls", "`store.urls` is for kind redis-cluster; redis-sentinel takes the Sentinels in `sentinels`"),
            ] {
                if let Some(n) = f.get(key) {
                    d.err(n.pos, why);
                }
            }
            // One `ca_file` for the Sentinels and the servers, when either speaks TLS.
            let tls = url.as_deref().is_some_and(|u| u.starts_with("rediss://"))
                || sentinels
                    .iter()
                    .flatten()
                    .any(|u| u.starts_with("rediss://"));
            let ca = match f.get("ca_file") {
                Some(n) if !tls => {
                    d.err(n.pos, "`store.ca_file` is used only when `url` or `sentinels` start with rediss://");
                    None
                }
                n => d.ca_file(n, "store.ca_file", None, "rediss://"),
            };
            StoreKind::RedisSentinel {
                url: url?,
                sentinels: sentinels?,
                ca: ca?,
            }
        }
        Kind::Cluster => {
            let urls = d
                .require(&f, "urls", "`store` of kind redis-cluster")
                .and_then(|n| {
                    let urls = d.strings(n, "`store.urls`")?;
                    let Some((first, _)) = urls.first() else {
                        d.err(n.pos, "`store.urls` needs at least one seed node's URL");
                        return None;
                    };
                    let tls = first.starts_with("rediss://");
                    let mut ok = true;
                    for (url, pos) in &urls {
                        if !url.starts_with("redis://") && !url.starts_with("rediss://") {
                            d.err(*pos, format!("`store.urls` entries must start with redis:// or rediss:// (TLS), found \"{url}\""));
                            ok = false;
                        } else if url.starts_with("rediss://") != tls {
                            d.err(*pos, format!("`store.urls` mixes redis:// and rediss://: a cluster's nodes are all plain or all TLS, found \"{url}\""));
                            ok = false;
                        }
                    }
                    ok.then(|| urls.into_iter().map(|(u, _)| u).collect::<Vec<_>>())
                });
            for (key, why) in [
                (
                    "url",
                    "`store.url` is for kind redis; a cluster takes its seed nodes in `urls`",
                ),
                (
                    "path",
                    "`store.path` is for kind embedded; a cluster takes its seed nodes in `urls`",
                ),
            ] {
                if let Some(n) = f.get(key) {
                    d.err(n.pos, why);
                }
            }
            let ca = match (f.get("ca_file"), &urls) {
                (Some(n), Some(urls)) if !urls.iter().all(|u| u.starts_with("rediss://")) => {
                    d.err(
                        n.pos,
                        "`store.ca_file` is used only with `urls` starting with rediss://",
                    );
                    None
                }
                (n, _) => d.ca_file(n, "store.ca_file", None, "rediss://"),
            };
            StoreKind::RedisCluster {
                urls: urls?,
                ca: ca?,
            }
        }
    };
    let timeout = opt_duration(
        d,
        f.get("timeout"),
        "`store.timeout`",
        Duration::from_millis(50),
    )?;
    if timeout.is_zero() {
        d.err(
            f.get("timeout").map_or(f.pos, |n| n.pos),
            "`store.timeout` must be more than 0",
        );
    }
    let on_outage = match f.get("on_outage") {
        Some(n) => on_outage(d, n, "`store.on_outage`")?,
        None => OnOutage::FailOpen,
    };
    Some(Store {
        kind,
        timeout,
        on_outage,
    })
}

/// `server.tls`: `cert_file` and `key_file`, read and checked now.
fn server_tls(d: &mut Decoder, n: &Node) -> Option<ServerTls> {
    let f = d.fields(n, "`server.tls`", &["cert_file", "key_file"])?;
    let cert = d
        .require(&f, "cert_file", "`server.tls`")
        .and_then(|c| d.string(c, "`server.tls.cert_file`"));
    let key = d
        .require(&f, "key_file", "`server.tls`")
        .and_then(|k| d.string(k, "`server.tls.key_file`"));
    let (cert, key) = (cert?, key?);
    match crate::tls::read_server_cert(&d.relative(&cert), &d.relative(&key)) {
        Ok(key) => Some(ServerTls { key: Arc::new(key) }),
        Err(e) => {
            d.err(n.pos, e);
            None
        }
    }
}

pub(super) fn on_outage(d: &mut Decoder, n: &Node, what: &str) -> Option<OnOutage> {
    d.word(
        n,
        what,
        &[
            ("fail_open", OnOutage::FailOpen),
            ("fail_closed", OnOutage::FailClosed),
        ],
    )
}

pub(super) fn tenants(
    d: &mut Decoder,
    n: &Node,
    plans: &BTreeSet<String>,
) -> BTreeMap<String, Arc<Tenant>> {
    let mut out = BTreeMap::new();
    // A key digest may belong to one key only, across all tenants.
    let mut seen: HashMap<[u8; 32], String> = HashMap::new();
    for (name, pos, v) in d.named(n, "`tenants`") {
        let what = format!("tenant `{name}`");
        if !super::model::valid_tenant_id(&name) {
            d.err(pos, format!("{what}: tenant ids may use only letters, digits, `_`, `-`, `.` and `@` (at most 128)"));
            continue;
        }
        let Some(f) = d.fields(v, &what, &["plan", "billing_anchor", "keys"]) else {
            continue;
        };
        let plan = d
            .require(&f, "plan", &what)
            .and_then(|p| plan_ref(d, p, &what, plans));
        let billing_anchor = f
            .get("billing_anchor")
            .and_then(|a| d.int(a, "`billing_anchor`", 1, 31))
            .map(|a| a as u8);
        let mut keys = Vec::new();
        if let Some(items) = f.get("keys").and_then(|k| d.list(k, "`keys`")) {
            for item in items {
                let Some(kf) = d.fields(item, "a key", &["id", "sha256"]) else {
                    continue;
                };
                let id = d
                    .require(&kf, "id", "a key")
                    .and_then(|i| d.string(i, "`id`"));
                let digest = d.require(&kf, "sha256", "a key").and_then(|s| {
                    let text = d.string(s, "`sha256`")?;
                    let parsed = (text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
                        .then(|| hex::decode(&text).ok().and_then(|v| <[u8; 32]>::try_from(v).ok()))
                        .flatten();
                    if parsed.is_none() {
                        d.err(s.pos, "`sha256` must be 64 lowercase hex characters (the SHA-256 of the key; `tollgate keys new` prints it)");
                    }
                    parsed.map(|h| (h, s.pos))
                });
                let (Some(id), Some((sha256, pos))) = (id, digest) else {
                    continue;
                };
                if keys.iter().any(|k: &StaticKey| k.id == id) {
                    d.err(item.pos, format!("{what} has two keys with id `{id}`"));
                }
                if let Some(owner) = seen.insert(sha256, format!("{name}/{id}")) {
                    d.err(
                        pos,
                        format!("this key hash is already used by key `{owner}`"),
                    );
                }
                keys.push(StaticKey { id, sha256 });
            }
        }
        if let Some(plan) = plan {
            out.insert(
                name.clone(),
                Arc::new(Tenant::new(name, plan, billing_anchor, keys)),
            );
        }
    }
    out
}

/// The default API-key headers: `Authorization: Bearer <key>` and `X-Api-Key: <key>`.
pub(super) fn default_key_headers() -> Vec<HeaderName> {
    vec![
        http::header::AUTHORIZATION,
        HeaderName::from_static("x-api-key"),
    ]
}

pub(super) fn auth(d: &mut Decoder, n: &Node, plans: &BTreeSet<String>) -> Option<Auth> {
    let f = d.fields(n, "`auth`", &["api_key", "jwt", "anonymous"])?;
    let jwt = match f.get("jwt") {
        Some(v) => super::jwt::issuers(d, v, plans),
        None => Vec::new(),
    };
    let anonymous = match f.get("anonymous") {
        Some(a) => Some(anonymous(d, a, plans)?),
        None => None,
    };
    let mut api_key_headers = default_key_headers();
    if let Some(a) = f.get("api_key") {
        let af = d.fields(a, "`auth.api_key`", &["headers"])?;
        if let Some(h) = af.get("headers") {
            let names = d.strings(h, "`auth.api_key.headers`")?;
            if names.is_empty() {
                d.err(h.pos, "`auth.api_key.headers` needs at least one header");
            }
            api_key_headers = Vec::new();
            for (name, pos) in names {
                match HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
                    Ok(h) => api_key_headers.push(h),
                    Err(_) => d.err(pos, format!("`{name}` is not a valid header name")),
                }
            }
        }
    }
    Some(Auth {
        api_key_headers,
        anonymous,
        jwt,
    })
}

fn anonymous(d: &mut Decoder, n: &Node, plans: &BTreeSet<String>) -> Option<Anonymous> {
    let what = "`auth.anonymous`";
    let f = d.fields(n, what, &["plan", "trusted_proxies", "secret"])?;
    let plan = d
        .require(&f, "plan", what)
        .and_then(|p| plan_ref(d, p, what, plans));
    let mut trusted_proxies = Vec::new();
    if let Some(t) = f.get("trusted_proxies") {
        for (s, pos) in d.strings(t, "`trusted_proxies`")? {
            match s.parse::<Cidr>() {
                Ok(c) => trusted_proxies.push(c),
                Err(e) => d.err(pos, e),
            }
        }
    }
    let secret = d.require(&f, "secret", what).and_then(|s| {
        let v = d.string(s, "`secret`")?;
        if v.len() < 16 {
            d.err(s.pos, "`auth.anonymous.secret` must be at least 16 characters: it keys the hash that turns client IPs into anonymous ids, and must be the same on every instance");
            return None;
        }
        Some(v)
    });
    Some(Anonymous {
        plan: plan?,
        trusted_proxies,
        secret: secret?,
    })
}

/// A `plan:` value that must name a configured plan.
fn plan_ref(d: &mut Decoder, n: &Node, what: &str, plans: &BTreeSet<String>) -> Option<String> {
    let s = d.string(n, "`plan`")?;
    if !plans.contains(&s) {
        d.err(
            n.pos,
            format!(
                "{what} names plan `{s}`, which is not defined; plans: {}",
                list(plans)
            ),
        );
        return None;
    }
    Some(s)
}

fn addr(d: &mut Decoder, n: &Node, what: &str) -> Option<SocketAddr> {
    let s = d.string(n, what)?;
    match s.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            d.err(n.pos, format!("{what} must be an IP address and port such as \"127.0.0.1:8080\", found \"{s}\""));
            None
        }
    }
}

pub(super) fn opt_duration(
    d: &mut Decoder,
    n: Option<&Node>,
    what: &str,
    default: Duration,
) -> Option<Duration> {
    match n {
        Some(n) => d.duration(n, what),
        None => Some(default),
    }
}

pub(super) fn list(names: &BTreeSet<String>) -> String {
    if names.is_empty() {
        return "(none)".into();
    }
    names
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}
