//! The baseline of `benches/load.sh`: the least a metering gateway on pingora can do, so the
//! load benchmark can show what tollgate's own request path costs on top of it, on the same
//! machine in the same run.
//!
//! ```text
//! cargo run --release --example baseline_proxy -- LISTEN ORIGIN REDIS_URL
//! ```
//!
//! One pingora worker thread (work stealing off, as tollgate runs), every request proxied to
//! ORIGIN over a pooled connection. `GET /open` goes straight through; any other path first
//! runs one `EVALSHA` of a one-line script (`INCRBY` of one key) on a redis-rs
//! `ConnectionManager` — "pingora + one EVALSHA per call", with no identification, no plan, no
//! limits, no headers and no metrics. Same allocator (mimalloc) as tollgate.

#![forbid(unsafe_code)]

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use redis::aio::ConnectionManager;
use tokio::sync::OnceCell;

/// The allocator tollgate uses, so the comparison is of the request paths, not of mallocs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Baseline {
    origin: String,
    redis: redis::Client,
    /// Made on first use, on the worker thread's runtime (a connection's driver lives where it
    /// was made).
    conn: OnceCell<ConnectionManager>,
    script: redis::Script,
}

#[async_trait]
impl ProxyHttp for Baseline {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        if session.req_header().uri.path() == "/open" {
            return Ok(false);
        }
        let conn = self
            .conn
            .get_or_try_init(|| ConnectionManager::new(self.redis.clone()))
            .await
            .map_err(|e| Error::because(ErrorType::ConnectError, "redis", e))?;
        let mut conn = conn.clone();
        let _: i64 = self
            .script
            .key("baseline:counter")
            .invoke_async(&mut conn)
            .await
            .map_err(|e| Error::because(ErrorType::InternalError, "evalsha", e))?;
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.origin.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, origin, redis_url] = args.as_slice() else {
        return Err("usage: baseline_proxy LISTEN ORIGIN REDIS_URL".into());
    };
    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let baseline = Baseline {
        origin: origin.clone(),
        redis: redis::Client::open(redis_url.as_str())?,
        conn: OnceCell::new(),
        script: redis::Script::new("return redis.call('INCRBY', KEYS[1], 1)"),
    };
    let mut proxy = http_proxy_service(&server.configuration, baseline);
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever();
}
