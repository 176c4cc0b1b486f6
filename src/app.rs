//! Composition root: a validated config becomes a pingora server with its services.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::admin::AdminApp;
use crate::config::Config;
use crate::meter::period::{Clock, SystemClock};
use crate::pipeline::Gateway;
use crate::proxy::Proxy;
use crate::reload::Reloader;
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
    // The plan follower (below) settles this once it has loaded the overrides.
    store.hold_calls_until_plans_load();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
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
        store.clone(),
        clock.clone(),
        metrics.clone(),
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

    let proxy = Proxy::new(gateway.clone(), &config.server, events.clone());
    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        proxy,
        "tollgate proxy",
    );
    let server_cert = match &config.server.tls {
        Some(tls) => {
            let cert = Arc::new(crate::tls::ServerCert::new(tls.key.clone()));
            let mut settings = TlsSettings::with_callbacks(Box::new(NoTlsCallbacks))
                .context("setting up TLS on the public listener")?;
            settings.set_cert_resolver(cert.clone());
            if config.server.http2 {
                settings.enable_h2();
            }
            proxy.add_tls_with_settings(&config.server.listen.to_string(), None, settings);
            Some(cert)
        }
        None => {
            if config.server.http2 {
                if let Some(app) = proxy.app_logic_mut() {
                    let mut options = HttpServerOptions::default();
                    options.h2c = true;
                    app.server_options = Some(options);
                }
            }
            proxy.add_tcp(&config.server.listen.to_string());
            None
        }
    };
    server.add_service(proxy);

    let listen = config.server.listen;
    let draining = Arc::new(AtomicBool::new(false));
    let lifecycle = Lifecycle {
        draining: draining.clone(),
        unready_delay: config.server.unready_delay,
    };
    let admin = config.admin.as_ref().map(|a| (a.listen, a.token.clone()));
    let from_file = !config.source.as_os_str().is_empty();
    let reloader = from_file.then(|| {
        Arc::new(
            Reloader::new(config, gateway.clone(), store.clone(), clock, metrics)
                .with_server_cert(server_cert),
        )
    });
    if let Some((admin_listen, token)) = &admin {
        let mut svc = Service::new(
            "tollgate admin".into(),
            AdminApp::new(
                gateway.clone(),
                registry,
                token.clone(),
                reloader.clone(),
                draining.clone(),
            )
            .with_events(events),
        );
        svc.threads = Some(1);
        svc.add_tcp(&admin_listen.to_string());
        server.add_service(svc);
    }
    if let Some(reloader) = reloader {
        server.add_service(background_service(
            "config reload",
            ReloadTriggers { reloader },
        ));
    }
    server.add_service(background_service("plan overrides", PlanFollower { store }));
    server.add_service(background_service(
        "jwks refresh",
        JwksRefresh {
            gateway: gateway.clone(),
        },
    ));
    server.add_service(background_service(
        "upstream dns",
        UpstreamDns {
            gateway: gateway.clone(),
        },
    ));
    server.add_service(background_service(
        "upstream health",
        UpstreamHealth {
            gateway: gateway.clone(),
        },
    ));
    server.add_service(background_service("housekeeping", Housekeeping { gateway }));
    if let Some(telemetry) = telemetry {
        server.add_service(background_service("telemetry", telemetry));
    }

    tracing::info!(listen = %listen, admin = ?admin.map(|a| a.0), "Starting tollgate.");
    server.run(RunArgs {
        shutdown_signal: Box::new(lifecycle),
    });
    tracing::info!("Stopped.");
    Ok(())
}

/// How the process ends. SIGTERM first turns `/readyz` to 503 and waits `server.unready_delay`
/// (so load balancers stop sending new calls while they still can), then pingora stops
/// accepting, lets in-flight calls finish within `server.grace_period` and stops the
/// background services (the event spool flushes on that signal). SIGINT stops at once;
/// SIGQUIT is pingora's graceful upgrade.
struct Lifecycle {
    draining: Arc<AtomicBool>,
    unready_delay: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for Lifecycle {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut quit), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("Cannot listen for signals; stop the gateway with SIGKILL.");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = quit.recv() => ShutdownSignal::GracefulUpgrade,
            _ = int.recv() => ShutdownSignal::FastShutdown,
            _ = term.recv() => {
                self.draining.store(true, Ordering::SeqCst);
                tracing::info!(unready_delay_ms = self.unready_delay.as_millis() as u64, "SIGTERM: /readyz answers 503; listeners close after the unready delay.");
                tokio::time::sleep(self.unready_delay).await;
                ShutdownSignal::GracefulTerminate
            }
        }
    }
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
        every(Duration::from_secs(30), &mut shutdown, || async {
            let gw = self.gateway.load();
            let tracked = gw.plans.retain_recent();
            gw.metrics.burst_keys.set(tracked as i64);
        })
        .await;
    }
}

/// Looks host-name targets up again every `resolve_every` (see [`crate::proxy::resolve`]). The
/// upstreams are taken from the gateway on every tick, so a reload's are followed too.
struct UpstreamDns {
    gateway: Arc<ArcSwap<Gateway>>,
}

#[async_trait]
impl BackgroundService for UpstreamDns {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        every(Duration::from_secs(1), &mut shutdown, || async {
            let gw = self.gateway.load_full();
            crate::proxy::resolve::refresh_due(&gw.upstreams, &gw.metrics).await;
        })
        .await;
    }
}

/// Probes the targets of upstreams with a `health_check` (see `proxy::health`). The upstreams
/// are taken from the gateway on every tick, so a reload's new upstreams are followed (and
/// start with every target in rotation, as a reload's balancers do).
struct UpstreamHealth {
    gateway: Arc<ArcSwap<Gateway>>,
}

#[async_trait]
impl BackgroundService for UpstreamHealth {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Created here, inside the service's runtime. No probe gives its connection back to
        // the pool, so each one connects afresh.
        let connector = Arc::new(pingora::connectors::http::Connector::new(None));
        // The shortest `interval` allowed.
        every(Duration::from_millis(100), &mut shutdown, || async {
            let gw = self.gateway.load();
            crate::proxy::health::start_due(&gw.upstreams, &connector, &gw.metrics);
        })
        .await;
    }
}

/// Fetches every issuer's JWKS at startup and keeps it fresh (see `Jwks::refresh_if_due`).
/// The key sets are taken from the gateway on every tick, so a reload's new issuers are
/// followed too.
struct JwksRefresh {
    gateway: Arc<ArcSwap<Gateway>>,
}

#[async_trait]
impl BackgroundService for JwksRefresh {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        every(Duration::from_millis(250), &mut shutdown, || async {
            let sets = self.gateway.load().jwks();
            let mut due = tokio::task::JoinSet::new();
            for set in sets.into_iter().filter(|s| s.is_due()) {
                due.spawn(async move { set.refresh_if_due().await });
            }
            while due.join_next().await.is_some() {}
        })
        .await;
    }
}

/// Runs `round` every `period` until `shutdown` fires, which also ends a round in progress. A
/// round longer than `period` delays the next tick rather than making ticks bunch up after it.
async fn every<F, Fut>(period: Duration, shutdown: &mut ShutdownWatch, mut round: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = round() => {}
        }
    }
}

/// pingora's TLS listener takes callbacks or certificate files; the certificate comes from
/// [`crate::tls::ServerCert`] instead, and nothing needs calling back.
struct NoTlsCallbacks;

#[async_trait]
impl pingora::listeners::TlsAccept for NoTlsCallbacks {}

/// Applies plan overrides set on any instance (see `Store::follow_plans`).
struct PlanFollower {
    store: StoreHandle,
}

#[async_trait]
impl BackgroundService for PlanFollower {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.store.follow_plans(shutdown).await;
    }
}

/// Reloads the config on SIGHUP and when its file changes.
struct ReloadTriggers {
    reloader: Arc<Reloader>,
}

#[async_trait]
impl BackgroundService for ReloadTriggers {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let watch = self.reloader.watch(shutdown.clone());
        let hangups = async {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                tracing::warn!(
                    "Cannot listen for SIGHUP; reload with the admin API or by editing the file."
                );
                return std::future::pending().await;
            };
            while hup.recv().await.is_some() {
                let _ = self.reloader.reload("SIGHUP");
            }
        };
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = watch => {}
            _ = hangups => {}
        }
    }
}
