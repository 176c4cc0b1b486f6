//! The test harness: real Redis, real upstreams, the real gateway binary.

pub mod clock;
pub mod cluster;
pub mod events;
pub mod forwarder;
pub mod gateway;
pub mod http;
pub mod jwt;
pub mod nats;
pub mod providers;
pub mod receiver;
pub mod redis;
pub mod sentinel;
pub mod streamer;
pub mod stripe;
pub mod tls;
pub mod upstream;

pub use gateway::{run_check, Gateway};
pub use http::{client, get, member, raw, send, Answer, RawAnswer};
pub use redis::RedisServer;
pub use upstream::{refused_addr, Upstream};

/// API keys of the test tenants, and the lowercase hex SHA-256 that goes into the YAML.
pub const ACME_KEY: &str = "tg_test_acme";
pub const ACME_SHA: &str = "7984258a30aa8eb69fbceb6ebf17f0a838cdad6a7a2cd72dacc4cb3bd51c12fd";
pub const BETA_KEY: &str = "tg_test_beta";
pub const BETA_SHA: &str = "0929c9be8bb0295ed21654e86831de0dd4d89fcbb32638fed96b0e2c6c7e9b99";
pub const GAMMA_KEY: &str = "tg_test_gamma";
pub const GAMMA_SHA: &str = "2efa8ada56c36b3923cb3333cc63f8c4a087b77d29f6e813c3f0bbceb580434f";
pub const DELTA_KEY: &str = "tg_test_delta";
pub const DELTA_SHA: &str = "364567bc122a2017351332b6822acafde1f06d93b5ecf654814544d11338058a";

/// Fills the placeholders the tests own: `{redis}`, `{upstream}`, and the key hashes
/// `{acme_sha}`, `{beta_sha}`, `{gamma_sha}`, `{delta_sha}`. (`Gateway` fills `{listen}`, `{admin}`, `{dir}`.)
pub fn render(yaml: &str, redis: &str, upstream: &str) -> String {
    yaml.replace("{redis}", redis)
        .replace("{upstream}", upstream)
        .replace("{acme_sha}", ACME_SHA)
        .replace("{beta_sha}", BETA_SHA)
        .replace("{gamma_sha}", GAMMA_SHA)
        .replace("{delta_sha}", DELTA_SHA)
}

/// The start of a config for [`Stack`]: a gateway of two threads with an admin listener, the
/// test's Redis (a 2 s timeout) and the upstream `product`; tenants, plans and routes follow.
pub const STACK_HEAD: &str = r#"
server: { listen: "{listen}", threads: 2 }
admin: { listen: "{admin}" }
store: { kind: redis, url: "{redis}", timeout: 2s }
upstreams:
  product: { targets: ["{upstream}"] }
"#;

/// The end of a config with one tenant and one route, for tests about the upstream `product`
/// they define first: `acme` (key [`ACME_KEY`]) on plan `free` (1,000 requests a month), and
/// every path proxied to `product`, metered one request a call.
pub const ACME_ON_PRODUCT: &str = r#"
tenants:
  acme: { plan: free, keys: [{ id: acme-1, sha256: "{acme_sha}" }] }
plans:
  free: { meters: { requests: { limit: 1000, period: month } } }
routes:
  - { name: api, match: { path_prefix: / }, upstream: product, meter: { requests: 1 } }
"#;

/// The Redis counter of a `month` meter with no billing anchor, for the current UTC month.
pub fn month_key(tenant: &str, meter: &str) -> String {
    format!("tg:{{{tenant}}}:m:{meter}:{}", clock::month_start())
}

/// The Redis counter of a `day` meter, for today (UTC).
pub fn day_key(tenant: &str, meter: &str) -> String {
    format!("tg:{{{tenant}}}:m:{meter}:{}", clock::day_start())
}

/// The usual set-up: Redis, one upstream, one gateway, a client. Dropped gateway first.
pub struct Stack {
    pub gateway: Gateway,
    pub upstream: Upstream,
    pub redis: RedisServer,
    pub client: reqwest::Client,
}

// === impl Stack ===

impl Stack {
    /// Starts Redis and an upstream, renders `yaml` with their addresses, starts the gateway.
    pub async fn start(yaml: &str) -> Stack {
        let redis = RedisServer::start().await;
        let upstream = Upstream::start().await;
        let gateway = Gateway::start(&render(yaml, &redis.url(), &upstream.addr())).await;
        Stack {
            gateway,
            upstream,
            redis,
            client: client(),
        }
    }

    /// `GET path` on the proxy listener, with `Authorization: Bearer <key>` if given.
    pub async fn get(&self, path: &str, key: Option<&str>) -> Answer {
        get(&self.client, &self.gateway.url(path), key).await
    }

    /// A `month` counter's value (0 when absent).
    pub async fn month_counter(&self, tenant: &str, meter: &str) -> i64 {
        self.redis.get_int(&month_key(tenant, meter)).await
    }
}
