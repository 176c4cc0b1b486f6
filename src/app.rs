//! Composition root: a validated config becomes a pingora server with its services.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::admin::AdminApp;
use crate::config::Config;
use crate::meter::period::SystemClock;
use crate::pipeline::Gateway;
use crate::proxy::Proxy;
use crate::store::StoreHandle;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::service::TelemetryService;

/// Builds every service from `config` and runs until SIGTERM/SIGINT.
pub fn serve(config: Config) -> anyhow::Result<()> {
    check_free(config.server.listen, "server.listen")?;
    if let Some(admin) = &config.admin {
        check_free(admin.listen, "admin.listen")?;
    }
    let registry = prometheus::default_registry().clone();
    let metrics = Arc::new(Metrics::new(&registry).context("registering metrics")?);
    let store = StoreHandle::open(&config.store, &metrics).context("opening the store")?;
    let telemetry = match &config.telemetry {
        Some(t) => Some(TelemetryService::new(t, metrics.clone())?),
        None => None,
    };
    let (events, telemetry) = match telemetry {
        Some((emitter, service)) => (Some(Arc::new(emitter)), Some(service)),
        None => (None, None),
    };
    let gateway = Arc::new(ArcSwap::from_pointee(Gateway::new(
        &config,
        store,
        Arc::new(SystemClock),
        metrics,
    )));

    // One single-threaded runtime per worker thread instead of one work-stealing runtime: a
    // metered call hands work between tasks (reservation batcher, Redis driver), and without
    // stealing those hand-offs stay on one thread. Measured: 3% fewer instructions per metered
    // call, no change for unmetered ones.
    let conf = ServerConf {
        threads: config.server.threads,
        work_stealing: false,
        grace_period_seconds: Some(config.server.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(config.server.grace_period.as_secs().max(1)),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let proxy = Proxy::new(gateway.clone(), config.server.read_timeout, events);
    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        proxy,
        "tollgate proxy",
    );
    proxy.add_tcp(&config.server.listen.to_string());
    server.add_service(proxy);

    if let Some(admin) = &config.admin {
        let mut svc = Service::new(
            "tollgate admin".into(),
            AdminApp::new(gateway.clone(), registry),
        );
        svc.threads = Some(1);
        svc.add_tcp(&admin.listen.to_string());
        server.add_service(svc);
    }
    server.add_service(background_service("housekeeping", Housekeeping { gateway }));
    if let Some(telemetry) = telemetry {
        server.add_service(background_service("telemetry", telemetry));
    }

    tracing::info!(listen = %config.server.listen, admin = ?config.admin.as_ref().map(|a| a.listen), "Starting tollgate.");
    server.run_forever()
}

/// Fails fast when an address cannot be bound: pingora would otherwise retry every second,
/// forever, while the admin listener reports healthy.
fn check_free(addr: std::net::SocketAddr, key: &str) -> anyhow::Result<()> {
    std::net::TcpListener::bind(addr)
        .map(drop)
        .with_context(|| format!("`{key}` {addr} cannot be bound (is another process using it?)"))
}

/// Periodic upkeep: forgets idle tenants in the burst limiters so memory tracks active tenants.
struct Housekeeping {
    gateway: Arc<ArcSwap<Gateway>>,
}

#[async_trait]
impl BackgroundService for Housekeeping {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {
                    let gw = self.gateway.load();
                    let tracked = gw.plans.retain_recent();
                    gw.metrics.burst_keys.set(tracked as i64);
                }
            }
        }
    }
}
