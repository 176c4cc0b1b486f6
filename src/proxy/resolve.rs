//! Host-name targets looked up again while the gateway runs, every `resolve_every`.
//!
//! The config's load looks each name up once (so a name that does not resolve is a config
//! error), and every address it resolves to takes calls (a service's instances behind one
//! name, as Docker Compose's `--scale` or a Kubernetes headless Service publish them). But
//! the addresses behind a name move: a cloud load balancer's change as it scales, a service's
//! instances come and go. A gateway that kept its first answer until a reload would connect
//! to addresses nobody serves any more, as nginx does without `resolve`. So a background task
//! looks the names up again: an address still in the answer keeps its place and its health
//! (its pooled connections stay useful), a new one takes calls at once, one gone takes no new
//! calls; a look-up that fails or answers nothing keeps the last addresses (a DNS hiccup must
//! not take a working target away).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::balance::{labels, Moved};
use crate::config::Upstream;
use crate::telemetry::metrics::Metrics;

/// How long one look-up may take before the target keeps its addresses until the next round.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Looks up again, with the system's resolver, the host-name targets of each upstream in
/// `upstreams` whose `resolve_every` has passed; addresses that come or go are counted in or
/// out of `tollgate_upstream_target_up`.
pub async fn refresh_due(upstreams: &[Arc<Upstream>], metrics: &Metrics) {
    for up in upstreams {
        if !up.resolve_due(Instant::now()) {
            continue;
        }
        for i in (0..up.targets.len()).filter(|&i| up.targets[i].host.is_some()) {
            let moved = refresh(up, i, |name| async move {
                match tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host(name)).await {
                    Ok(Ok(addrs)) => Ok(addrs.collect()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {LOOKUP_TIMEOUT:?}")),
                }
            })
            .await;
            for e in &moved.added {
                metrics
                    .upstream_target_up
                    .with_label_values(&labels(up, e))
                    .set(1);
            }
            for e in &moved.removed {
                let _ = metrics
                    .upstream_target_up
                    .remove_label_values(&labels(up, e));
            }
        }
    }
}

/// Looks target `i` of `up` up with `lookup` and makes its answer the target's addresses.
pub async fn refresh<F, Fut>(up: &Upstream, i: usize, lookup: F) -> Moved
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<Vec<SocketAddr>, String>>,
{
    let Some(target) = up.targets.get(i) else {
        return Moved::default();
    };
    match lookup(target.name.clone()).await {
        Ok(addrs) if addrs.is_empty() => {
            tracing::warn!(upstream = %up.name, target = %target.name, "An upstream target's host name resolved to no address; it keeps the last ones.");
            Moved::default()
        }
        Ok(addrs) => {
            let moved = up.balance.set_addresses(i, &addrs);
            if !moved.added.is_empty() || !moved.removed.is_empty() {
                let list = |es: &[Arc<super::balance::Endpoint>]| {
                    es.iter()
                        .map(|e| e.address.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                tracing::info!(upstream = %up.name, target = %target.name, added = %list(&moved.added), removed = %list(&moved.removed), "An upstream target's host name resolves to other addresses now; new connections follow.");
            }
            moved
        }
        Err(e) => {
            tracing::warn!(upstream = %up.name, target = %target.name, error = %e, "Looking up an upstream target's host name failed; it keeps the last addresses.");
            Moved::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream `product` of one host-name target (`localhost:3000`) and one IP target.
    fn upstream() -> Arc<Upstream> {
        let text = "server: { listen: \"127.0.0.1:8080\" }\nstore: { kind: embedded, path: ./u.db }\nupstreams:\n  product: { targets: [\"localhost:3000\", \"10.9.9.9:3000\"] }\nplans: { free: {} }\nroutes: [{ name: r, match: { path: / }, upstream: product, auth: none }]\n";
        let c = crate::config::load_str("t.yaml", text, &|_| None).unwrap();
        c.upstreams["product"].clone()
    }

    fn addrs(list: &[&str]) -> Result<Vec<SocketAddr>, String> {
        Ok(list.iter().map(|a| a.parse().unwrap()).collect())
    }

    fn now(up: &Upstream) -> Vec<(usize, String)> {
        up.balance
            .endpoints()
            .iter()
            .map(|e| (e.target, e.address.clone()))
            .collect()
    }

    #[tokio::test]
    async fn every_address_of_the_answer_takes_calls_and_gone_ones_leave() {
        let up = upstream();
        let moved = refresh(&up, 0, |_| async {
            addrs(&["10.0.0.2:3000", "10.0.0.1:3000"])
        })
        .await;
        assert_eq!(moved.added.len(), 2);
        assert_eq!(
            now(&up),
            [
                (0, "10.0.0.1:3000".to_string()),
                (0, "10.0.0.2:3000".to_string()),
                (1, "10.9.9.9:3000".to_string())
            ]
        );
        // One instance gone, one new: the one that stays keeps its endpoint.
        let kept = up.balance.endpoints()[0].clone();
        let moved = refresh(&up, 0, |_| async {
            addrs(&["10.0.0.3:3000", "10.0.0.1:3000"])
        })
        .await;
        assert_eq!(moved.removed[0].address, "10.0.0.2:3000");
        assert_eq!(moved.added[0].address, "10.0.0.3:3000");
        assert!(Arc::ptr_eq(&kept, &up.balance.endpoints()[0]));
        assert_eq!(up.balance.endpoint_count(), 3);
    }

    #[tokio::test]
    async fn a_failed_or_empty_look_up_keeps_the_last_addresses() {
        let up = upstream();
        let before = now(&up);
        let moved = refresh(&up, 0, |_| async { Err("SERVFAIL".to_string()) }).await;
        assert!(moved.added.is_empty() && moved.removed.is_empty());
        let moved = refresh(&up, 0, |_| async { addrs(&[]) }).await;
        assert!(moved.added.is_empty() && moved.removed.is_empty());
        assert_eq!(now(&up), before);
    }

    #[tokio::test]
    async fn the_look_up_asks_for_the_name_as_written() {
        let up = upstream();
        let asked = std::sync::Mutex::new(String::new());
        refresh(&up, 0, |name| {
            *asked.lock().unwrap() = name;
            async { addrs(&["10.0.0.1:3000"]) }
        })
        .await;
        assert_eq!(*asked.lock().unwrap(), "localhost:3000");
    }
}
