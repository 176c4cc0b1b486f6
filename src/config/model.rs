//! The validated configuration: plain types, no serde, no way to hold an invalid value.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, StatusCode};

use crate::meter::period::Period;
pub use crate::pipeline::client_ip::Cidr;

/// The whole gateway configuration, as loaded from one YAML file.
#[derive(Debug)]
pub struct Config {
    /// The file it came from (reloads read it again).
    pub source: PathBuf,
    /// The public listener.
    pub server: Server,
    /// The admin listener, if configured.
    pub admin: Option<Admin>,
    /// Where usage counters live.
    pub store: Store,
    /// Named upstream pools.
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    /// Tenants declared in the file.
    pub tenants: BTreeMap<String, Arc<Tenant>>,
    /// How callers are identified.
    pub auth: Auth,
    /// Named plans.
    pub plans: BTreeMap<String, Arc<Plan>>,
    /// Routes, in match order.
    pub routes: Vec<Arc<Route>>,
    /// Usage events, if configured.
    pub telemetry: Option<super::Telemetry>,
    /// Lifecycle milestones, if configured.
    pub onboarding: Option<super::Onboarding>,
    /// Browser calls from other origins, if configured.
    pub cors: Option<Arc<Cors>>,
}

/// `cors:`: the origins whose browser scripts may call the API, and the header values the
/// gateway answers them with (built once, cloned per call).
#[derive(Debug)]
pub struct Cors {
    /// `"*"` was listed: every origin.
    pub any_origin: bool,
    /// The origins listed, exactly as browsers send them.
    pub origins: Vec<String>,
    /// The origins listed with a wildcard first label (`https://*.example.com`).
    pub origin_patterns: Vec<OriginPattern>,
    /// `Access-Control-Allow-Methods` of a preflight's answer.
    pub allow_methods: HeaderValue,
    /// `Access-Control-Allow-Headers` of a preflight's answer.
    pub allow_headers: HeaderValue,
    /// `Access-Control-Expose-Headers`: the gateway's headers and `expose_headers`.
    pub expose_headers: HeaderValue,
    /// `Access-Control-Max-Age`, seconds.
    pub max_age: HeaderValue,
    /// `Access-Control-Allow-Credentials: true`: cookies and credentials go with the calls.
    pub allow_credentials: bool,
}

impl Cors {
    /// Whether `origin` may call.
    pub fn allows(&self, origin: &[u8]) -> bool {
        self.any_origin
            || self.origins.iter().any(|o| o.as_bytes() == origin)
            || self.origin_patterns.iter().any(|p| p.matches(origin))
    }
}

/// An allowed origin whose host starts with a wildcard, `https://*.example.com[:port]`: the
/// scheme and port must be the pattern's and the host one or more labels under the domain
/// (`https://pr-12.preview.example.com`), never the domain itself nor another domain ending
/// the same way (`https://evil-example.com`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    /// `https://`
    pub prefix: String,
    /// `.example.com`, with the port when the pattern has one.
    pub suffix: String,
}

impl OriginPattern {
    /// Whether `origin` is one of the pattern's.
    pub fn matches(&self, origin: &[u8]) -> bool {
        let Some(labels) = origin
            .strip_prefix(self.prefix.as_bytes())
            .and_then(|rest| rest.strip_suffix(self.suffix.as_bytes()))
        else {
            return false;
        };
        // Host name labels as browsers send them (lowercase); no port, path or user part can
        // hide in them, and no empty label.
        !labels.is_empty()
            && labels.split(|b| *b == b'.').all(|l| {
                !l.is_empty()
                    && l.iter()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            })
    }
}

/// `server:`
#[derive(Debug)]
pub struct Server {
    /// Address of the public listener.
    pub listen: SocketAddr,
    /// Worker threads of the proxy runtime.
    pub threads: usize,
    /// How long SIGTERM waits for in-flight calls.
    pub grace_period: Duration,
    /// How long `/readyz` answers 503 after SIGTERM before the listeners stop accepting.
    pub unready_delay: Duration,
    /// Downstream read timeout (per read).
    pub read_timeout: Duration,
    /// Fraction of calls written to the access log (0: none, 1: every call).
    pub access_log_sample: f64,
    /// Answers keep the header name case the upstream wrote (else lowercase, as HTTP/2 has it).
    pub preserve_header_case: bool,
    /// `x_forwarded_for: append` (true): the caller's address is appended to the upstream
    /// request's `X-Forwarded-For`; `keep` (false): the header passes as the client sent it.
    pub append_forwarded_for: bool,
    /// `server.tls`: the public listener speaks HTTPS with this certificate.
    pub tls: Option<ServerTls>,
    /// `server.request_id`: every call gets an id, sent as `X-Request-Id` both ways and used as
    /// its usage event's id.
    pub request_id: bool,
    /// `server.http2`: callers may speak HTTP/2 (ALPN `h2` with `tls`, prior-knowledge h2c
    /// without), besides HTTP/1.1.
    pub http2: bool,
    /// `server.max_request_body`: the largest request body a route takes unless it sets its
    /// own; none when unset.
    pub max_request_body: Option<u64>,
}

/// `server.tls`: the public listener's certificate, read when the config loads.
#[derive(Clone)]
pub struct ServerTls {
    /// The certificate chain and its key.
    pub key: Arc<rustls::sign::CertifiedKey>,
}

/// Only whether TLS is on: a reload compares `server` by its `Debug` to report what needs a
/// restart, and a renewed certificate does not (the reload swaps it in).
impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls")
    }
}

/// `admin:`
#[derive(Debug)]
pub struct Admin {
    /// Address of the admin listener.
    pub listen: SocketAddr,
    /// Bearer token for the admin write routes; `None` turns them off.
    pub token: Option<String>,
}

/// `store:`
#[derive(Debug, Clone)]
pub struct Store {
    /// Which backend.
    pub kind: StoreKind,
    /// Upper bound on every store call.
    pub timeout: Duration,
    /// What to do with a call when the store cannot be reached.
    pub on_outage: OnOutage,
}

/// The store backend and its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// One local file; one instance only.
    Embedded {
        /// The file holding the counters.
        path: PathBuf,
    },
    /// A Redis server shared by every instance.
    Redis {
        /// `redis://…`, `rediss://…` (TLS) or `redis+unix://…`.
        url: String,
        /// `ca_file` (`rediss://` only): the certificates trusted for this Redis instead of the
        /// public roots, as `redis-cli --cacert` takes them; read when the config loads.
        ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    },
    /// The primary of a Redis kept available by Sentinel, shared by every instance.
    RedisSentinel {
        /// `redis://[:PASSWORD@]NAME[/DB]` (`rediss://` for TLS): the name the Sentinels
        /// monitor the primary under, as host, with the primary's password and database.
        url: String,
        /// `redis://HOST:PORT` URLs of the Sentinels (with their own password, if any;
        /// `rediss://` for TLS).
        sentinels: Vec<String>,
        /// `ca_file`: the certificates trusted for the Sentinels and the servers that speak
        /// TLS, instead of the public roots.
        ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    },
    /// A Redis Cluster shared by every instance: each tenant's keys live in the slot of its
    /// `{tenant}` hash tag (SPEC §9).
    RedisCluster {
        /// `redis://…` (or, all of them, `rediss://…`) URLs of one or more seed nodes; the rest
        /// of the cluster is discovered.
        urls: Vec<String>,
        /// `ca_file` (`rediss://` only): the certificates trusted for the cluster's nodes instead
        /// of the public roots.
        ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    },
}

/// Behaviour when the store is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnOutage {
    /// Proxy the call unmetered (and say so in logs and metrics).
    FailOpen,
    /// Answer 503 `store-unavailable`.
    FailClosed,
}

/// `upstreams.<name>`
#[derive(Debug)]
pub struct Upstream {
    /// The name routes refer to.
    pub name: String,
    /// Targets, used round-robin.
    pub targets: Vec<Target>,
    /// TLS to the targets, when `tls: true`.
    pub tls: Option<UpstreamTls>,
    /// `host_header`: the `Host` the upstream gets instead of the client's.
    pub host_header: Option<http::HeaderValue>,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Timeout of each read from the upstream.
    pub read_timeout: Duration,
    /// How often host-name targets are looked up again.
    pub resolve_every: Duration,
    /// When they were last looked up (runtime state).
    pub resolved_at: std::sync::Mutex<Option<std::time::Instant>>,
    /// Round-robin over the targets taking calls (runtime state, shared by every call).
    pub balance: crate::proxy::balance::Balancer,
    /// `request_headers`: set on every request to the upstream and its health probes,
    /// replacing the caller's (values marked sensitive).
    pub request_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// `health_check`: active probes of every target, when configured.
    pub health_check: Option<HealthCheck>,
    /// When the last round of probes started (runtime state).
    pub probed_at: std::sync::Mutex<Option<std::time::Instant>>,
}

/// `upstreams.<name>.health_check`: a `GET` of `path` to every target every `interval`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Path (and query) probed, starting with `/`.
    pub path: String,
    /// Time between the starts of two rounds of probes.
    pub interval: Duration,
    /// How long a probe may take, from connect to the answer's status line (at most
    /// `interval`).
    pub timeout: Duration,
    /// Failed probes in a row that take a target out of rotation.
    pub fails: u32,
    /// Passed probes in a row that bring it back.
    pub passes: u32,
    /// The statuses that pass a probe; empty: any `2xx`.
    pub expect: Vec<u16>,
}

impl HealthCheck {
    /// Whether an answer with `status` passes a probe.
    pub fn passes_with(&self, status: u16) -> bool {
        if self.expect.is_empty() {
            (200..300).contains(&status)
        } else {
            self.expect.contains(&status)
        }
    }
}

/// One target of an upstream.
#[derive(Debug)]
pub struct Target {
    /// As written in the config (`10.0.0.11:3000`, `api.internal:3000`): its name in metrics
    /// and logs, and what is looked up for a host name.
    pub name: String,
    /// The host name, when the target is written with one.
    pub host: Option<String>,
    /// Where it connects when the config loaded: the written address, or every address its
    /// host name resolved to. The upstream's balancer keeps them from then on, and follows
    /// the name every `resolve_every` (see `proxy::resolve`).
    pub addrs: Vec<SocketAddr>,
    /// The name a TLS target's certificate is checked against (and sent as SNI): the
    /// upstream's `sni`, else the target's host name, else its IP address. Empty without TLS.
    pub sni: String,
}

impl Target {
    /// A target written as `name`, at `addrs` (at least one); `host` when `name` holds a host
    /// name.
    pub fn new(name: String, addrs: Vec<SocketAddr>, host: Option<String>) -> Target {
        let sni = host.clone().unwrap_or_else(|| {
            addrs
                .first()
                .map(|a| a.ip().to_string())
                .unwrap_or_default()
        });
        Target {
            name,
            host,
            addrs,
            sni,
        }
    }
}

/// `upstreams.<name>.tls`, `sni`, `ca_file`.
#[derive(Clone)]
pub struct UpstreamTls {
    /// Certificates trusted instead of the system's roots (`ca_file`).
    pub ca: Option<Arc<pingora::protocols::tls::CaType>>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("ca", &self.ca.as_ref().map(|c| c.len()))
            .finish()
    }
}

impl Upstream {
    /// Whether the host-name targets are due to be looked up again at `now`; if so, counts
    /// them as looked up. Never for an upstream of IP targets only.
    pub fn resolve_due(&self, now: std::time::Instant) -> bool {
        if self.targets.iter().all(|t| t.host.is_none()) {
            return false;
        }
        let Ok(mut last) = self.resolved_at.lock() else {
            return false;
        };
        // The config's load looked them up just now.
        let last = last.get_or_insert(now);
        if now.duration_since(*last) < self.resolve_every {
            return false;
        }
        *last = now;
        true
    }

    /// Whether a round of health probes is due at `now` (the first at once); if so, counts
    /// it as started. Never for an upstream without `health_check`.
    pub fn probe_due(&self, now: std::time::Instant) -> bool {
        let Some(hc) = &self.health_check else {
            return false;
        };
        let Ok(mut last) = self.probed_at.lock() else {
            return false;
        };
        if last.is_some_and(|l| now.duration_since(l) < hc.interval) {
            return false;
        }
        *last = Some(now);
        true
    }
}

/// The tenant id rule: letters, digits, `_`, `-`, `.` and `@`, 1 to 128 of them. Tenant ids go
/// into Redis keys (inside the `{…}` hash tag) and into headers; the config, token claims and
/// the admin API all check them with this one rule.
pub fn valid_tenant_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.@".contains(c))
}

/// `tenants.<name>`
#[derive(Debug, Clone)]
pub struct Tenant {
    /// Tenant id.
    pub name: String,
    /// Plan name (validated to exist).
    pub plan: String,
    /// Day of month on which monthly periods start (1–31), if not the 1st.
    pub billing_anchor: Option<u8>,
    /// API keys, stored as SHA-256 digests.
    pub keys: Vec<StaticKey>,
    /// `name` as the `X-Tollgate-Tenant` value, built on the tenant's first proxied call (see
    /// [`Tenant::header_value`]).
    header: OnceLock<Option<HeaderValue>>,
}

impl Tenant {
    /// A tenant with these fields.
    pub fn new(
        name: String,
        plan: String,
        billing_anchor: Option<u8>,
        keys: Vec<StaticKey>,
    ) -> Tenant {
        Tenant {
            name,
            plan,
            billing_anchor,
            keys,
            header: OnceLock::new(),
        }
    }

    /// The same tenant on `plan`.
    pub fn on_plan(&self, plan: String) -> Tenant {
        Tenant {
            plan,
            ..self.clone()
        }
    }

    /// `name` as a header value, or `None` when it cannot be one (a JWT's tenant claim with a
    /// control character, say). Every proxied call sends it upstream as `X-Tollgate-Tenant`:
    /// a configured tenant builds it once and then hands out copies that share one buffer, where
    /// building it per call cost an allocation and a copy of the name (`benches/callgrind.sh`).
    pub fn header_value(&self) -> Option<&HeaderValue> {
        self.header
            .get_or_init(|| HeaderValue::from_str(&self.name).ok())
            .as_ref()
    }
}

/// One API key of a static tenant.
#[derive(Debug, Clone)]
pub struct StaticKey {
    /// The key's id (appears in events and logs; never the key itself).
    pub id: String,
    /// SHA-256 of the key.
    pub sha256: [u8; 32],
}

/// `auth:`
#[derive(Debug)]
pub struct Auth {
    /// Headers searched for an API key, in order.
    pub api_key_headers: Vec<HeaderName>,
    /// The anonymous tier, if calls without credentials are allowed.
    pub anonymous: Option<Anonymous>,
    /// Trusted JWT issuers, in config order.
    pub jwt: Vec<JwtIssuer>,
}

/// `auth.jwt[]`: one issuer whose signed tokens identify callers.
#[derive(Debug, Clone)]
pub struct JwtIssuer {
    /// The exact `iss` its tokens carry.
    pub issuer: String,
    /// Accepted `aud` values: a token must name at least one.
    pub audiences: Vec<String>,
    /// The only algorithms accepted; never taken from the token.
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// Where the verification keys come from.
    pub keys: JwtKeys,
    /// The claim naming the tenant.
    pub tenant_claim: String,
    /// The claim naming the plan, if tokens carry one.
    pub plan_claim: Option<String>,
    /// The plan of tenants known only from their token, without a plan claim.
    pub default_plan: Option<String>,
    /// The claim naming the end user (goes into events).
    pub user_claim: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: std::time::Duration,
    /// Shortest time a fetched key set is kept before refreshing, whatever Cache-Control says.
    pub jwks_min_refresh: std::time::Duration,
    /// Longest time a fetched key set is kept before refreshing.
    pub jwks_max_refresh: std::time::Duration,
}

/// An issuer's verification keys.
#[derive(Debug, Clone)]
pub enum JwtKeys {
    /// A JWKS document, fetched at startup and refreshed in the background.
    Jwks {
        /// Its URL.
        url: String,
    },
    /// One public key read from a PEM file at startup.
    PublicKey(jsonwebtoken::DecodingKey),
    /// An HMAC secret.
    Secret(jsonwebtoken::DecodingKey),
}

/// `auth.anonymous:` calls with no credentials at all, counted per client IP.
#[derive(Debug)]
pub struct Anonymous {
    /// Their plan.
    pub plan: String,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// Keys the hash that turns a client IP into an anonymous id.
    pub secret: String,
}

/// `plans.<name>`
#[derive(Debug)]
pub struct Plan {
    /// Plan name.
    pub name: String,
    /// `name` as the `X-Tollgate-Plan` value, built once for every proxied call on the plan
    /// (see [`Tenant::header_value`]); `None` when the name cannot be a header value.
    pub header: Option<HeaderValue>,
    /// Burst limit, if any.
    pub rate_limit: Option<RateLimit>,
    /// Most calls of one tenant in flight at once on each instance, if limited.
    pub concurrency: Option<std::num::NonZeroU32>,
    /// Metered quotas, by meter name.
    pub meters: BTreeMap<String, MeterPolicy>,
    /// Features this plan includes.
    pub features: BTreeSet<String>,
    /// Where callers on this plan are sent to upgrade.
    pub upgrade: Option<Upgrade>,
    /// Overrides `store.on_outage` for this plan.
    pub on_outage: Option<OnOutage>,
}

/// `rate_limit: { requests, per, burst, shared }`
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    /// Sustained requests per `per`.
    pub requests: NonZeroU32,
    /// The window of `requests`.
    pub per: Duration,
    /// How many calls may arrive at once.
    pub burst: NonZeroU32,
    /// Counted in the store, one allowance for every instance, rather than in each instance's
    /// memory (see `pipeline::burst`).
    pub shared: bool,
}

/// `meters.<meter>: { limit, period, warn_at, overage }`
#[derive(Debug, Clone)]
pub struct MeterPolicy {
    /// Units allowed per period.
    pub limit: NonZeroU64,
    /// Billing period.
    pub period: Period,
    /// Fraction of the limit past which callers are warned.
    pub warn_at: Option<f64>,
    /// Past the limit, keep admitting and count overage instead of blocking.
    pub overage: bool,
}

/// `upgrade: { plan, url }`
#[derive(Debug, Clone)]
pub struct Upgrade {
    /// The plan to upgrade to.
    pub plan: String,
    /// Where to do it.
    pub url: String,
}

/// `routes[]`
#[derive(Debug)]
pub struct Route {
    /// Route name (metrics label, events).
    pub name: String,
    /// Which requests it takes.
    pub matcher: RouteMatch,
    /// Where they go.
    pub target: RouteTarget,
    /// Whether callers must be identified.
    pub auth: RouteAuth,
    /// Meters charged per call, in a stable order.
    pub meter: Vec<RouteMeter>,
    /// Feature a plan must include to use this route.
    pub feature: Option<String>,
    /// Which upstream outcomes refund the call's reservation.
    pub refund_on: RefundOn,
    /// `plugins: [name, …]`: the plugins called on this route, in this order.
    pub plugins: Vec<crate::plugins::RoutePlugin>,
    /// `max_request_body`: the largest request body this route takes, instead of
    /// `server.max_request_body`.
    pub max_request_body: Option<u64>,
    /// `read_timeout`: how long this route's calls wait on each read from the upstream, instead
    /// of the upstream's `read_timeout`.
    pub read_timeout: Option<std::time::Duration>,
    /// `rewrite_prefix`: what replaces the matched path (or path prefix) in the upstream's
    /// request (see [`Route::upstream_path`]).
    pub rewrite_prefix: Option<String>,
    /// `request_headers`: set on this route's calls to the upstream, after (and over) the
    /// upstream's own `request_headers`.
    pub request_headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl Route {
    /// The path and query the upstream gets for a call to `path` (and `query`), when the route
    /// rewrites it: the part of the path the route matched is replaced by `rewrite_prefix`, the
    /// rest and the query kept. `/billing/v1` rewritten to `/v1` sends `/billing/v1/items?x=1`
    /// as `/v1/items?x=1` and `/billing/v1` as `/v1`; `/api` rewritten to `/` sends `/api/items`
    /// as `/items`. `None` when the route keeps the path (or `path` is not one it matched).
    pub fn upstream_path(&self, path: &str, query: Option<&str>) -> Option<String> {
        let to = self.rewrite_prefix.as_deref()?;
        let matched = match &self.matcher.path {
            PathMatch::Exact(p) => p.as_str(),
            // A prefix ending in `/` matched up to its slash; the rest keeps its own.
            PathMatch::Prefix(p) => p.strip_suffix('/').unwrap_or(p),
        };
        let rest = path.strip_prefix(matched)?;
        let mut out = if rest.is_empty() {
            to.to_string()
        } else {
            format!("{}{rest}", to.strip_suffix('/').unwrap_or(to))
        };
        if out.is_empty() {
            out.push('/');
        }
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        Some(out)
    }
}

/// One meter a route charges: `requests: 1`, or
/// `tokens: { from_response: "json:usage.total_tokens", reserve: 1000, default: 0 }`.
#[derive(Debug, Clone)]
pub struct RouteMeter {
    /// The meter.
    pub name: String,
    /// Units reserved when the call is admitted (the admission check uses them). For a fixed
    /// meter these are the units charged.
    pub reserve: NonZeroU64,
    /// For a response-measured meter: where the measured amount is read.
    pub measure: Option<Measure>,
}

/// Where a response-measured meter reads its amount.
#[derive(Debug, Clone)]
pub struct Measure {
    /// A number in the JSON body (or the last SSE event carrying it), or a response header.
    pub source: MeasureSource,
    /// Units settled when the response does not carry the amount.
    pub default: u64,
}

/// `json:<dotted.path>`, `header:<name>` or `plugin:<name>`.
#[derive(Debug, Clone)]
pub enum MeasureSource {
    /// A dotted path into the JSON body; for `text/event-stream`, into each event's data.
    Json(Vec<String>),
    /// A response header holding an integer.
    Header(HeaderName),
    /// What the named plugin (listed on the route) reports for this meter.
    Plugin(String),
}

/// `refund_on:` which upstream outcomes take back what a call reserved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundOn {
    /// No connection to the upstream could be made.
    pub connect_error: bool,
    /// The upstream did not answer in time.
    pub timeout: bool,
    /// Any other transport failure (connection dropped mid-way, malformed answer).
    pub error: bool,
    /// Whole status classes, by first digit (index 4: `4xx`, index 5: `5xx`).
    pub classes: [bool; 6],
    /// Single status codes.
    pub codes: Vec<u16>,
}

impl Default for RefundOn {
    /// Connect errors, timeouts, other transport failures and `5xx`.
    fn default() -> Self {
        RefundOn {
            connect_error: true,
            timeout: true,
            error: true,
            classes: [false, false, false, false, false, true],
            codes: Vec::new(),
        }
    }
}

impl RefundOn {
    /// Whether an upstream answer with this status refunds.
    pub fn status(&self, status: u16) -> bool {
        self.classes
            .get(usize::from(status / 100))
            .copied()
            .unwrap_or(false)
            || self.codes.contains(&status)
    }
}

/// `match:`
#[derive(Debug)]
pub struct RouteMatch {
    /// Exact path or prefix.
    pub path: PathMatch,
    /// Allowed methods; empty means any.
    pub methods: Vec<Method>,
    /// `host`: the host names the call must be for; empty means any.
    pub hosts: Vec<HostPattern>,
}

/// One of a route's `match.host` names: `api.example.com`, or `*.example.com` for every
/// subdomain of `example.com` (at any depth, not the domain itself). Compared without case,
/// against the host the client called without its port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// The name itself, in lower case.
    Exact(String),
    /// `.example.com` for `*.example.com`, in lower case.
    Subdomains(String),
}

impl HostPattern {
    /// Whether `host` (a `Host` header's or `:authority`'s value: a name or an address,
    /// perhaps with a port and a trailing dot) is this pattern's.
    pub fn matches(&self, host: &str) -> bool {
        let name = host_name(host);
        match self {
            HostPattern::Exact(n) => name.eq_ignore_ascii_case(n),
            HostPattern::Subdomains(suffix) => {
                name.len() > suffix.len()
                    && name.is_char_boundary(name.len() - suffix.len())
                    && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }
}

/// The name part of a `Host` value: without its port, an IPv6 literal's brackets or a
/// trailing dot.
fn host_name(host: &str) -> &str {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.strip_suffix('.').unwrap_or(name)
}

/// How a route matches the path.
#[derive(Debug)]
pub enum PathMatch {
    /// `path:` — the whole path.
    Exact(String),
    /// `path_prefix:` — the path starts with it.
    Prefix(String),
}

/// Where a route sends its calls.
#[derive(Debug)]
pub enum RouteTarget {
    /// Proxy to a named upstream.
    Upstream(Arc<Upstream>),
    /// Answer with a fixed response.
    Respond(FixedResponse),
}

/// `respond: { status, body, content_type }`
#[derive(Debug)]
pub struct FixedResponse {
    /// Status code.
    pub status: StatusCode,
    /// Body.
    pub body: bytes::Bytes,
    /// Content-Type.
    pub content_type: String,
}

/// `auth:` of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteAuth {
    /// The caller must be identified; the route is metered.
    Required,
    /// Public: not authenticated, not metered.
    None,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns_match_names_without_case_port_or_trailing_dot() {
        let exact = HostPattern::Exact("api.example.com".into());
        for host in [
            "api.example.com",
            "API.Example.com",
            "api.example.com:8443",
            "api.example.com.",
        ] {
            assert!(exact.matches(host), "{host}");
        }
        for host in [
            "example.com",
            "x.api.example.com",
            "api.example.com.evil",
            "",
        ] {
            assert!(!exact.matches(host), "{host}");
        }
        let subdomains = HostPattern::Subdomains(".example.com".into());
        for host in ["a.example.com", "a.b.Example.COM:80", "a.example.com."] {
            assert!(subdomains.matches(host), "{host}");
        }
        for host in [
            "example.com",
            ".example.com",
            "evilexample.com",
            "example.com.evil",
            "[::1]:80",
        ] {
            assert!(!subdomains.matches(host), "{host}");
        }
    }

    #[test]
    fn a_tenants_header_value_is_its_name_built_once_and_kept_across_plans() {
        let t = Tenant::new("acme-co".into(), "free".into(), None, Vec::new());
        let first = t.header_value().cloned();
        assert_eq!(first.as_ref().map(|v| v.as_bytes()), Some(&b"acme-co"[..]));
        // The second call hands out the value built by the first.
        assert!(std::ptr::eq(
            t.header_value().unwrap().as_bytes().as_ptr(),
            first.unwrap().as_bytes().as_ptr()
        ));
        let pro = t.on_plan("pro".into());
        assert_eq!((pro.name.as_str(), pro.plan.as_str()), ("acme-co", "pro"));
        assert_eq!(pro.header_value().unwrap().as_bytes(), b"acme-co");
    }

    #[test]
    fn a_tenant_name_that_cannot_be_a_header_value_has_none() {
        let t = Tenant::new("line\nbreak".into(), "free".into(), None, Vec::new());
        assert!(t.header_value().is_none());
    }
}
