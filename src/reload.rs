//! Hot reload: the config file read again, checked in full, and swapped in atomically.
//!
//! A reload builds a whole new [`Gateway`] (routes, plans, tenants, auth, upstreams) beside the
//! running one and swaps the pointer. Calls already admitted keep the gateway they started with
//! until they finish, so no call in flight fails or changes its rules half-way. A config with any
//! error is not applied: the old one keeps serving, the errors are logged with their positions
//! and `tollgate_config_reloads_total{result="error"}` counts it. Sections that cannot change
//! without restarting (listeners, threads, the store, the admin token, telemetry) are reported instead of
//! half-applied.
//!
//! The public listener's certificate (`server.tls`) is read again and swapped in, so a renewed
//! certificate takes a reload, not a restart.
//!
//! What a reload resets: burst-limit state (each plan's limiter starts full again) and the JWKS
//! caches (fetched again on the next call). Counters live in the store and are untouched.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::config::{self, Config};
use crate::meter::period::Clock;
use crate::pipeline::Gateway;
use crate::store::StoreHandle;
use crate::telemetry::metrics::Metrics;

/// What a successful reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Sections that changed in the file but need a restart to take effect.
    pub needs_restart: Vec<&'static str>,
}

/// Why a reload was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new file does not pass `tollgate check`; the old config keeps serving.
    #[error("the new config has errors; the old one keeps serving:\n{0}")]
    Invalid(#[from] config::ConfigErrors),
    /// Another reload holds the lock (it cannot, unless one panicked).
    #[error("the reload lock is poisoned")]
    Poisoned,
}

/// Reloads one config file into the running gateway.
pub struct Reloader {
    path: PathBuf,
    gateway: Arc<ArcSwap<Gateway>>,
    store: StoreHandle,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    /// The config running now; also serialises reloads.
    running: Mutex<Config>,
    /// The public listener's certificate, when `server.tls` is on: a reload swaps in the one
    /// its files hold now.
    server_cert: Option<Arc<crate::tls::ServerCert>>,
}

impl Reloader {
    /// A reloader for the gateway built from `running`.
    pub fn new(
        running: Config,
        gateway: Arc<ArcSwap<Gateway>>,
        store: StoreHandle,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Reloader {
        Reloader {
            path: running.source.clone(),
            gateway,
            store,
            clock,
            metrics,
            running: Mutex::new(running),
            server_cert: None,
        }
    }

    /// Renews `cert` on every reload from the config's `server.tls` files.
    pub fn with_server_cert(mut self, cert: Option<Arc<crate::tls::ServerCert>>) -> Reloader {
        self.server_cert = cert;
        self
    }

    /// The file reloads read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads, checks and applies the config file; `why` names the trigger in the log.
    pub fn reload(&self, why: &str) -> Result<Reloaded, ReloadError> {
        let mut running = self.running.lock().map_err(|_| ReloadError::Poisoned)?;
        let next = match config::load(&self.path) {
            Ok(c) => c,
            Err(errors) => {
                self.count("error");
                tracing::error!(trigger = why, errors = %errors, "Config reload refused; the old config keeps serving.");
                return Err(errors.into());
            }
        };
        let needs_restart = restart_sections(&running, &next);
        let gateway = Gateway::new(
            &next,
            self.store.clone(),
            self.clock.clone(),
            self.metrics.clone(),
        );
        self.gateway.store(Arc::new(gateway));
        // A renewed certificate applies without a restart (turning TLS on or off does not).
        if let (Some(cert), Some(tls)) = (&self.server_cert, &next.server.tls) {
            cert.replace(tls.key.clone());
        }
        self.count("ok");
        if needs_restart.is_empty() {
            tracing::info!(trigger = why, "Config reloaded.");
        } else {
            tracing::warn!(trigger = why, needs_restart = ?needs_restart, "Config reloaded; these sections changed but take effect only after a restart.");
        }
        // Keep what was running for the sections that were not applied, so the next reload
        // reports them again until the process restarts.
        let Config {
            server,
            admin,
            store,
            telemetry,
            ..
        } = std::mem::replace(&mut *running, next);
        running.server = server;
        running.admin = admin;
        running.store = store;
        running.telemetry = telemetry;
        Ok(Reloaded { needs_restart })
    }

    fn count(&self, result: &str) {
        self.metrics
            .config_reloads
            .with_label_values(&[result])
            .inc();
    }

    /// Reloads whenever the file changes, checking once a second until `shutdown` fires.
    ///
    /// The file's identity (modification time, length, inode) is polled rather than watched with
    /// inotify on purpose: editors save by writing a new file and renaming it over the old one,
    /// and orchestrators swap a symlink; both replace the inode a watch would be attached to,
    /// while a poll of the path sees every one of them.
    pub async fn watch(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut seen = identity(&self.path);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let now = identity(&self.path);
            if now != seen && now.is_some() {
                seen = now;
                let _ = self.reload("file changed");
            }
        }
    }
}

/// What identifies one version of the file, following symlinks.
fn identity(path: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// Sections whose change needs a restart: listeners and threads, the admin listener and token,
/// the store, and telemetry (the spool and its sinks).
fn restart_sections(running: &Config, next: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let differs =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    if differs(&running.server, &next.server) {
        out.push("server");
    }
    if differs(&running.admin, &next.admin) {
        out.push("admin");
    }
    if differs(&running.store, &next.store) {
        out.push("store");
    }
    // A webhook's secret is redacted from `Debug`, so webhooks are compared by value too.
    if differs(&running.telemetry, &next.telemetry) || webhooks(running) != webhooks(next) {
        out.push("telemetry");
    }
    out
}

/// The webhooks the telemetry service delivers (`onboarding.webhooks`, as sinks).
fn webhooks(config: &Config) -> Vec<&crate::config::Webhook> {
    config
        .telemetry
        .iter()
        .flat_map(|t| &t.sinks)
        .filter_map(|s| match &s.kind {
            crate::config::SinkKind::Webhook(w) => Some(w),
            _ => None,
        })
        .collect()
}
