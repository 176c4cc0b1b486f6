//! Active health checks (`upstreams.<name>.health_check`): every `interval`, a `GET` of `path`
//! to each target, on a connection of its own made as a call's would be (same address, TLS,
//! certificate check and connect timeout; see [`super::target_peer`]).
//!
//! Passive checks (see [`super::balance`]) only learn that a target is gone from a call that
//! fails to connect to it, and never learn that a target which accepts connections is not
//! serving (a deploy in progress, a process whose database is gone: it answers `503` to every
//! call, and each of those calls is refunded but not served). A probe finds both before calls
//! do: `fails` failed probes in a row take the target out of rotation until `passes` pass in a
//! row. A probe passes when the status line of a `2xx` answer arrives within `timeout`;
//! anything else (no connection, a TLS failure, no answer in time, another status) fails it.
//!
//! The probe's `Host` is the upstream's `host_header` when it has one, else the target as
//! written (`10.0.0.11:3000`, `api.internal:3000`); its `User-Agent` is
//! `tollgate-health-check`, so an upstream can tell probes from calls in its logs; it carries
//! the upstream's `request_headers`, as calls do. Probes are
//! not calls: they are not metered, not in the access log and not usage events; each is
//! counted in `tollgate_upstream_health_checks_total{upstream,target,result}`.

use std::sync::Arc;

use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;

use super::balance::Endpoint;
use crate::config::{HealthCheck, Upstream};
use crate::telemetry::metrics::Metrics;

/// The probes' `User-Agent`.
const USER_AGENT: &str = "tollgate-health-check";

/// Starts a round of probes for each upstream in `upstreams` whose `interval` has passed. Each
/// round runs as a task of its own, so a slow target delays no other upstream's round.
pub fn start_due(upstreams: &[Arc<Upstream>], connector: &Arc<Connector>, metrics: &Arc<Metrics>) {
    let now = std::time::Instant::now();
    for up in upstreams.iter().filter(|u| u.probe_due(now)) {
        let (up, connector, metrics) = (up.clone(), connector.clone(), metrics.clone());
        tokio::spawn(async move { round(&up, &connector, &metrics).await });
    }
}

/// Probes every target of `up` at once (each address of a host-name target) and records each
/// result.
async fn round(up: &Upstream, connector: &Connector, metrics: &Metrics) {
    let Some(hc) = &up.health_check else {
        return;
    };
    let endpoints = up.balance.endpoints();
    let probes = endpoints
        .iter()
        .map(|e| async move { (e, probe(up, hc, e, connector).await) });
    for (e, result) in futures_util::future::join_all(probes).await {
        record(metrics, up, hc, e, result);
    }
}

/// One probe of endpoint `e`: `Ok` with the answer's status when one came within the timeout.
async fn probe(
    up: &Upstream,
    hc: &HealthCheck,
    e: &Endpoint,
    connector: &Connector,
) -> Result<u16, String> {
    let Some(target) = up.targets.get(e.target) else {
        return Err("no such target".to_string());
    };
    let mut peer = super::target_peer(up, target, e.addr);
    peer.options.connection_timeout = Some(hc.timeout.min(up.connect_timeout));
    peer.options.read_timeout = Some(hc.timeout);
    peer.options.write_timeout = Some(hc.timeout);
    let host = match &up.host_header {
        Some(h) => h.clone(),
        None => http::HeaderValue::from_str(&target.name).map_err(|e| e.to_string())?,
    };
    let exchange = async {
        let mut req =
            RequestHeader::build("GET", hc.path.as_bytes(), Some(3)).map_err(|e| e.to_string())?;
        for (name, value) in [
            (http::header::HOST, host),
            (
                http::header::USER_AGENT,
                http::HeaderValue::from_static(USER_AGENT),
            ),
            (
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            ),
        ] {
            req.insert_header(name, value).map_err(|e| e.to_string())?;
        }
        // A health endpoint behind the upstream's own authentication gets its credentials.
        for (name, value) in &up.request_headers {
            req.insert_header(name.clone(), value.clone())
                .map_err(|e| e.to_string())?;
        }
        // A connection of its own every time: never one a call released to the pool, and never
        // given back to it (it says `Connection: close`), so each probe also proves a connect.
        let (mut session, _) = connector
            .get_http_session(&peer)
            .await
            .map_err(|e| e.to_string())?;
        session
            .write_request_header(Box::new(req))
            .await
            .map_err(|e| e.to_string())?;
        session
            .finish_request_body()
            .await
            .map_err(|e| e.to_string())?;
        session
            .read_response_header()
            .await
            .map_err(|e| e.to_string())?;
        let status = session
            .response_header()
            .map(|r| r.status.as_u16())
            .ok_or_else(|| "no answer".to_string());
        session.shutdown().await;
        status
    };
    match tokio::time::timeout(hc.timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {:?}", hc.timeout)),
    }
}

/// Counts a probe's result, moves the target in or out of rotation when this result decides
/// it, and says so in the metrics and the log.
fn record(
    metrics: &Metrics,
    up: &Upstream,
    hc: &HealthCheck,
    e: &Endpoint,
    result: Result<u16, String>,
) {
    let labels = super::balance::labels(up, e);
    let target = labels[1];
    let failure = match result {
        Ok(status) if hc.passes_with(status) => None,
        Ok(status) => Some(format!("answered {status}")),
        // pingora's errors start with a space.
        Err(e) => Some(e.trim().to_string()),
    };
    let outcome = if failure.is_some() { "fail" } else { "pass" };
    metrics
        .upstream_health_checks
        .with_label_values(&[labels[0], labels[1], labels[2], outcome])
        .inc();
    match failure {
        None => {
            if up.balance.probe_passed(e, hc.passes) {
                metrics.upstream_target_up.with_label_values(&labels).set(1);
                tracing::info!(upstream = %up.name, target = %target, address = %e.address, passes = hc.passes, "An upstream target passed its health checks; it is back in rotation.");
            }
        }
        Some(why) => {
            if up.balance.probe_failed(e, hc.fails) {
                metrics.upstream_target_up.with_label_values(&labels).set(0);
                tracing::warn!(upstream = %up.name, target = %target, address = %e.address, path = %hc.path, error = %why, fails = hc.fails, "An upstream target failed its health checks; it takes no calls until it passes them again.");
            } else {
                tracing::debug!(upstream = %up.name, target = %target, address = %e.address, error = %why, "A health probe failed.");
            }
        }
    }
}
