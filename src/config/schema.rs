//! `tollgate schema`: a JSON Schema (draft 2020-12) of the config file, for editors.
//!
//! The decoder in this module's siblings stays the authority (it checks references between
//! sections, ranges and files, which a schema cannot); the schema gives editors completion,
//! hover docs and early red squiggles. `config/tollgate.schema.json` is this output, committed;
//! a test fails when it is stale, and another checks that every shipped config validates
//! against it and that every unknown-key fixture does not.

use serde_json::{json, Map, Value};

/// The schema, as `tollgate schema` prints it.
pub fn schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://tollgate.dev/schema/config.json",
        "title": "tollgate configuration",
        "description": "A reverse-proxy metering gateway. Reference: docs/configuration.md.",
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "server": obj("The public listener.", &["listen"], &[
                ("listen", addr("Address of the public listener, IP:PORT.")),
                ("threads", int("Worker threads of the proxy (default: number of cores).", 1)),
                ("grace_period", duration("How long SIGTERM waits for in-flight calls.")),
                ("unready_delay", duration("After SIGTERM, how long /readyz answers 503 before the listeners close.")),
                ("access_log_sample", json!({"description": "Fraction of calls in the access log (0: off, 1: every call).", "type": "number", "minimum": 0, "maximum": 1})),
                ("read_timeout", duration("Downstream read timeout (per read).")),
                ("preserve_header_case", boolean("Answers keep the header name case the upstream wrote (default false: lowercase, as HTTP/2 carries them).")),
                ("x_forwarded_for", words("append (default): the caller's address is appended to the upstream request's X-Forwarded-For; keep: the header passes as the client sent it.", &["append", "keep"])),
                ("max_request_body", size("The largest request body a route takes unless it sets its own (default: no limit); over it: 413, nothing charged.")),
                ("http2", boolean("Callers may speak HTTP/2 besides HTTP/1.1: negotiated by ALPN with tls, prior-knowledge h2c without (default false).")),
                ("request_id", boolean("Every call gets an id (UUIDv7), sent to the upstream and back to the client as X-Request-Id and used as its usage event's id (default false).")),
                ("tls", obj("The public listener speaks HTTPS (HTTP/1.1 over TLS 1.2/1.3) with this certificate; a reload reads the files again.", &["cert_file", "key_file"], &[
                    ("cert_file", string("PEM certificate chain, the server's certificate first.")),
                    ("key_file", string("PEM private key of that certificate (PKCS #8, PKCS #1 or SEC1).")),
                ])),
            ]),
            "admin": obj("The admin listener: /metrics, /healthz, /readyz and /admin/v1.", &["listen"], &[
                ("listen", addr("Address of the admin listener.")),
                ("token", string("Bearer token of the /admin/v1 routes; without it they are off.")),
            ]),
            "store": obj("Where usage counters live.", &["kind"], &[
                ("kind", words("embedded (one file, one instance), redis (one shared server), redis-sentinel (the primary Redis Sentinel names) or redis-cluster (a shared Redis Cluster).", &["embedded", "redis", "redis-sentinel", "redis-cluster"])),
                ("url", string("redis://host:port/db, rediss://host:port/db (TLS) or redis+unix:///path (kind: redis); redis://[:password@]name/db (rediss:// for TLS) with the name the Sentinels monitor the primary under (kind: redis-sentinel).")),
                ("urls", list("redis-cluster: redis://host:port (or, all of them, rediss:// for TLS) URLs of one or more of the cluster's nodes.", string("A redis:// or rediss:// URL."))),
                ("sentinels", list("redis-sentinel: redis://host:port (or rediss://) URLs of the Sentinels, asked in turn where the primary is.", string("A redis:// or rediss:// URL."))),
                ("path", string("The embedded store's file.")),
                ("timeout", duration("Bound on every store call.")),
                ("ca_file", string("rediss:// url, urls or sentinels: PEM CA certificates trusted for this Redis instead of the public roots.")),
                ("on_outage", on_outage()),
            ]),
            "upstreams": named("Named upstream pools.", obj("One upstream pool.", &["targets"], &[
                ("targets", list("IP:PORT or HOST:PORT targets (a host name is looked up when the config loads), load-balanced round-robin.", string("IP:PORT or HOST:PORT"))),
                ("connect_timeout", duration("Connect timeout per target.")),
                ("read_timeout", duration("Upstream read timeout.")),
                ("max_fails", int("Consecutive failed connects that take a target out of rotation for fail_timeout; 0 never does.", 0)),
                ("fail_timeout", duration("How long a target whose connects failed max_fails times takes no calls.")),
                ("tls", boolean("Connect to the targets over TLS (HTTPS), checking each one's certificate.")),
                ("sni", string("tls: the name every target's certificate is checked against (and sent as SNI); default each target's host name, or its IP address.")),
                ("ca_file", string("tls: PEM CA certificates trusted for the targets instead of the system's roots.")),
                ("host_header", string("The Host header the upstream gets instead of the client's, e.g. api.example.com.")),
                ("request_headers", named("Headers set on every request to this upstream and its health probes, replacing the caller's (e.g. the upstream's own Authorization).", string("The header's value."))),
                ("resolve_every", duration("How often host-name targets are looked up again (default 30s, at least 1s).")),
                ("health_check", obj("Active health checks: a GET of path to every target every interval; a 2xx within timeout passes.", &["path"], &[
                    ("path", string("The path (and query) probed, e.g. /healthz.")),
                    ("interval", duration("Time between rounds of probes (default 5s, at least 100ms).")),
                    ("timeout", duration("How long a probe may take, connect to status line (default 1s, or interval when shorter; at most interval).")),
                    ("fails", int("Failed probes in a row that take a target out of rotation (default 1).", 1)),
                    ("passes", int("Passed probes in a row that bring it back (default 1).", 1)),
                    ("expect", list("The statuses that pass a probe (default: any 2xx).", int("An HTTP status, 100-599.", 100))),
                ])),
            ])),
            "tenants": named("Static tenants, by id (letters, digits, _-.@).", obj("One tenant.", &["plan"], &[
                ("plan", string("The tenant's plan.")),
                ("billing_anchor", int("Monthly periods start on this day (UTC), 1-31.", 1)),
                ("keys", list("API keys, by SHA-256 of the key.", obj("One key.", &["id", "sha256"], &[
                    ("id", string("Shown in logs and events instead of the key.")),
                    ("sha256", string("Lowercase hex SHA-256 of the key (tollgate keys new prints it).")),
                ]))),
            ])),
            "auth": obj("How callers are identified.", &[], &[
                ("api_key", obj("API keys.", &[], &[
                    ("headers", list("Headers searched for a key, in order.", string("A header name."))),
                ])),
                ("jwt", list("Trusted JWT issuers.", jwt_issuer())),
                ("anonymous", obj("Callers with no credentials at all, counted per client IP.", &["plan", "secret"], &[
                    ("plan", string("Their plan.")),
                    ("trusted_proxies", list("Peers whose X-Forwarded-For is believed.", string("An IP or CIDR block."))),
                    ("secret", string("At least 16 characters; keys the anonymous-id hash.")),
                ])),
            ]),
            "plans": named("Plans, by name.", plan()),
            "routes": list("Routes; the first match wins.", route()),
            "plugins": {
                "description": "Compiled-in plugins to set up, by name, each with its own settings ({} for none).",
                "type": "object",
                "additionalProperties": {"type": "object"},
            },
            "telemetry": telemetry(),
            "cors": obj("Browser calls from other origins: the gateway answers preflights itself and lets listed origins read every answer.", &["allow_origins"], &[
                ("allow_origins", list("Origins allowed to call, exactly as browsers send them (https://app.example.com), patterns for every subdomain of a domain (https://*.example.com), or \"*\" for any.", string("An origin, a pattern, or *."))),
                ("allow_methods", list("Methods a preflight may ask for (default GET, HEAD, POST, PUT, PATCH, DELETE).", string("A method."))),
                ("allow_headers", list("Request headers a preflight may ask for (default authorization, x-api-key, content-type, idempotency-key).", string("A header name."))),
                ("expose_headers", list("Answer headers scripts may read, besides the gateway's own (RateLimit, Tollgate-Upgrade, ...).", string("A header name."))),
                ("max_age", duration("How long a browser may keep a preflight's answer (default 10m).")),
                ("allow_credentials", boolean("Cookies and credentials go with the calls (needs the origins listed, not *).")),
            ]),
            "onboarding": obj("Lifecycle milestones (dev.tollgate.milestone events and the Tollgate-Milestone header) and anonymous-to-identified merges (dev.tollgate.identify). Chosen milestones can also be POSTed to `webhooks`, signed per Standard Webhooks.", &[], &[
                ("activation", obj("What makes a tenant `activated`: `calls` admitted metered calls within `within` of its first call.", &["calls", "within"], &[
                    ("calls", int("Admitted calls needed.", 1)),
                    ("within", duration("Counted from the tenant's first call.")),
                ])),
                ("anonymous_id_header", string("The header carrying the visitor's client-side anonymous id, as analytics SDKs send it (default x-anonymous-id). With an identified credential it links the two ids (one dev.tollgate.identify event); on anonymous calls it is their anonymous_id.")),
                ("webhooks", webhooks()),
            ]),
        }
    })
}

fn obj(description: &str, required: &[&str], properties: &[(&str, Value)]) -> Value {
    let props: Map<String, Value> = properties
        .iter()
        .map(|(k, v)| ((*k).to_string(), v.clone()))
        .collect();
    let mut o = json!({
        "description": description,
        "type": "object",
        "additionalProperties": false,
        "properties": props,
    });
    if !required.is_empty() {
        o["required"] = json!(required);
    }
    o
}

fn named(description: &str, value: Value) -> Value {
    json!({"description": description, "type": "object", "additionalProperties": value})
}

fn list(description: &str, items: Value) -> Value {
    json!({"description": description, "type": "array", "items": items})
}

fn string(description: &str) -> Value {
    json!({"description": description, "type": "string"})
}

fn int(description: &str, minimum: i64) -> Value {
    json!({"description": description, "type": "integer", "minimum": minimum})
}

fn boolean(description: &str) -> Value {
    json!({"description": description, "type": "boolean"})
}

fn words(description: &str, words: &[&str]) -> Value {
    json!({"description": description, "enum": words})
}

fn addr(description: &str) -> Value {
    json!({"description": description, "type": "string", "pattern": "^(\\$\\{.*\\}|.+:[0-9]+)$"})
}

fn duration(description: &str) -> Value {
    json!({
        "description": format!("{description} A duration: 50ms, 2s, 1m, 1h, 1d."),
        "type": "string",
        "pattern": "^(\\$\\{.*\\}|[0-9]+(ms|s|m|h|d))$",
    })
}

fn size(description: &str) -> Value {
    json!({
        "description": format!("{description} A size: a number of bytes, or 512kb, 10mb, 1gb (units of 1024)."),
        "anyOf": [
            {"type": "integer", "minimum": 0},
            {"type": "string", "pattern": "^(\\$\\{.*\\}|[0-9]+([kKmMgG]?[bB])?)$"},
        ],
    })
}

fn on_outage() -> Value {
    words(
        "When the store is down: admit unmetered (fail_open) or answer 503 (fail_closed).",
        &["fail_open", "fail_closed"],
    )
}

fn jwt_issuer() -> Value {
    obj(
        "One token issuer. Exactly one of jwks_url, public_key_file, secret.",
        &["issuer", "audience", "algorithms", "tenant_claim"],
        &[
            ("issuer", string("The exact `iss` of its tokens.")),
            (
                "audience",
                json!({"description": "Accepted `aud` values.", "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}),
            ),
            (
                "algorithms",
                list(
                    "Pinned algorithms; never taken from the token.",
                    words(
                        "A JOSE algorithm.",
                        &[
                            "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
                            "EdDSA", "HS256", "HS384", "HS512",
                        ],
                    ),
                ),
            ),
            ("jwks_url", string("The issuer's JWKS (http or https).")),
            (
                "public_key_file",
                string("One PEM public key, relative to the config file."),
            ),
            ("secret", string("HMAC secret for HS*, at least 32 bytes.")),
            ("tenant_claim", string("The claim naming the tenant.")),
            ("plan_claim", string("The claim naming the plan.")),
            (
                "default_plan",
                string("Plan of tenants known only from their token."),
            ),
            (
                "user_claim",
                string("The claim naming the end user (goes into events)."),
            ),
            (
                "leeway",
                duration("Clock skew allowed on exp and nbf (at most 5m)."),
            ),
            (
                "jwks_refresh",
                obj(
                    "Bounds on how long a fetched JWKS is kept.",
                    &[],
                    &[("min", duration("Floor.")), ("max", duration("Ceiling."))],
                ),
            ),
        ],
    )
}

fn plan() -> Value {
    obj(
        "One plan.",
        &[],
        &[
            (
                "rate_limit",
                obj(
                    "Burst limit per tenant: per instance, or shared by every instance.",
                    &["requests", "per"],
                    &[
                        ("requests", int("Calls allowed per `per`.", 1)),
                        ("per", duration("The window.")),
                        (
                            "burst",
                            int("Calls allowed at once (default: requests).", 1),
                        ),
                        (
                            "shared",
                            boolean("Count the limit in the Redis store, one allowance for every instance (default: false, each instance's own)."),
                        ),
                    ],
                ),
            ),
            (
                "concurrency",
                int("Most calls of one tenant in flight at once, on each instance.", 1),
            ),
            (
                "meters",
                named(
                    "Metered quotas, by meter name.",
                    obj(
                        "One quota.",
                        &["limit", "period"],
                        &[
                            ("limit", int("Units allowed per period.", 1)),
                            ("period", words("Billing period.", &["day", "month"])),
                            (
                                "warn_at",
                                json!({"description": "Fraction of the limit past which callers are warned, in (0, 1].", "type": "number", "exclusiveMinimum": 0, "maximum": 1}),
                            ),
                            (
                                "overage",
                                boolean("Past the limit, keep admitting and count overage."),
                            ),
                        ],
                    ),
                ),
            ),
            (
                "features",
                list("Features of the plan.", string("A feature name.")),
            ),
            (
                "upgrade",
                obj(
                    "The upgrade offered near and at the limits.",
                    &["plan", "url"],
                    &[
                        ("plan", string("The plan to upgrade to.")),
                        ("url", string("Where to upgrade.")),
                    ],
                ),
            ),
            ("on_outage", on_outage()),
        ],
    )
}

fn route() -> Value {
    let measured = obj(
        "A quantity read from the response.",
        &["from_response"],
        &[
            (
                "from_response",
                string("json:<path>, header:<name> (JSON bodies and SSE streams)."),
            ),
            (
                "reserve",
                int("Units reserved on admission, settled after the answer.", 0),
            ),
            (
                "default",
                int("Units settled when the response does not say.", 0),
            ),
        ],
    );
    obj(
        "One route.",
        &["name", "match"],
        &[
            ("name", string("Unique route name (metrics label, events).")),
            (
                "match",
                obj(
                    "What the route matches.",
                    &[],
                    &[
                        ("path", string("An exact path.")),
                        ("path_prefix", string("A path prefix (whole segments).")),
                        ("methods", list("HTTP methods.", string("A method."))),
                        ("host", json!({"description": "The host names the call must be for (api.example.com, or *.example.com for every subdomain): one, or a list.", "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]})),
                    ],
                ),
            ),
            ("upstream", string("The upstream pool.")),
            (
                "respond",
                obj(
                    "Answer by itself instead of proxying.",
                    &[],
                    &[
                        ("status", int("Status code.", 100)),
                        ("body", string("Body.")),
                        ("content_type", string("Content-Type.")),
                    ],
                ),
            ),
            (
                "auth",
                words(
                    "`none`: public, not identified, not metered.",
                    &["none", "required"],
                ),
            ),
            (
                "meter",
                json!({
                    "description": "Units charged per admitted call, by meter.",
                    "type": "object",
                    "additionalProperties": {"anyOf": [{"type": "integer", "minimum": 0}, measured]},
                }),
            ),
            ("feature", string("A feature the plan must include.")),
            ("max_request_body", size("The largest request body this route takes (default server.max_request_body); over it: 413, nothing charged.")),
            ("read_timeout", duration("How long this route's calls wait on each read from the upstream (default: the upstream's read_timeout).")),
            ("request_headers", named("Headers set on this route's calls to the upstream, over the upstream's own request_headers.", string("The header's value."))),
            ("rewrite_prefix", string("Replaces the part of the path the route matched in the upstream's request, e.g. /billing/v1 -> /v1 (the rest and the query kept).")),
        ("plugins", list("Plugins run on this route, in order (each set up under the top-level plugins).", string("A plugin name."))),
            (
                "refund_on",
                json!({"description": "Which upstream failures refund the call.", "anyOf": [
                    {"type": "string"}, {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}}
                ]}),
            ),
        ],
    )
}

fn webhooks() -> Value {
    use crate::pipeline::milestone::Kind;
    let names = Kind::ALL.map(Kind::as_str);
    list(
        "Milestones POSTed one by one, signed per Standard Webhooks, delivered from the telemetry spool (needs `telemetry`).",
        obj(
            "One webhook.",
            &["url", "events", "secret"],
            &[
                ("url", string("http://… or https://…")),
                (
                    "events",
                    list("The milestones posted (at least one).", words("A milestone.", &names)),
                ),
                (
                    "secret",
                    string("whsec_ followed by base64 of 24 to 64 bytes: the signing key."),
                ),
                (
                    "timeout",
                    duration("Upper bound on one POST, connecting included; then the attempt failed and is retried (default 10s)."),
                ),
                (
                    "ca_file",
                    string("https:// only: a PEM file (relative to the config file) of CA certificates trusted besides the public webpki roots, for a receiver behind a private CA."),
                ),
                (
                    "give_up_after",
                    duration("How long one milestone may keep failing before this webhook skips it (logged, counted), so later ones go on. Not set: retried for as long as the spool holds it."),
                ),
            ],
        ),
    )
}

fn telemetry() -> Value {
    let sink = json!({
        "description": "One sink; the keys allowed depend on `kind`.",
        "type": "object",
        "required": ["kind"],
        "additionalProperties": false,
        "properties": {
            "kind": words("Where events go.", &["file", "redis_stream", "http", "nats", "plugin"]),
            "name": string("Unique sink name (metrics label, position file); default: the kind, or the plugin's name."),
            "path": string("file: the JSON-lines file."),
            "url": string("redis_stream: redis://…, rediss://… (TLS) or redis+unix://…; http: http://… or https://…; nats: nats://…"),
            "stream": string("redis_stream: the stream key; nats: a stream to create on the subject."),
            "max_len": int("redis_stream: MAXLEN ~ of every XADD.", 1),
            "sentinels": list("redis_stream: redis://host:port URLs of Redis Sentinels; `url` is then redis://NAME/DB with the name they monitor the primary under.", string("A redis:// URL.")),
            "subject": string("nats: the subject."),
            "timeout": duration("http, nats: bound on one delivery."),
            "ca_file": string("A PEM file of CA certificates. http (https:// only): trusted besides the public roots; redis_stream (rediss:// only): trusted instead of them."),
            "plugin": string("plugin: the plugin providing the sink (set up under the top-level plugins)."),
        }
    });
    obj(
        "Usage events: spooled on disk, delivered to every sink.",
        &[],
        &[
            ("spool", string("The spool directory.")),
            (
                "instance",
                string("The <instance> of source: tollgate/<instance> (default: host name)."),
            ),
            (
                "queue",
                int(
                    "Events queued in memory before the spool writer takes them.",
                    1,
                ),
            ),
            (
                "batch",
                int("Most events one sink delivery carries; with this many queued the spool writer writes at once.", 1),
            ),
            ("max_spool_mb", int("The spool's size bound, in MiB.", 1)),
            (
                "on_full",
                words(
                    "What a full spool gives up.",
                    &["drop_newest", "drop_oldest"],
                ),
            ),
            (
                "retry_max",
                duration("Longest wait between delivery attempts of a failing sink."),
            ),
            (
                "flush_interval",
                duration("How long the spool writer gathers events before writing a partial batch; what a crash of the process can lose."),
            ),
            (
                "sync_interval",
                duration("Longest time between a spool write and its fsync, after which the sinks see it; what a power cut can lose. At least flush_interval."),
            ),
            ("sinks", list("Where events are delivered.", sink)),
        ],
    )
}
