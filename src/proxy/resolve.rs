//! Host-name targets looked up again while the gateway runs, every `resolve_every`.
//!
//! The config's load looks each name up once (so a name that does not resolve is a config
//! error), but the addresses behind a name move: a cloud load balancer's change as it scales,
//! a service's as it is redeployed. A gateway that kept its first answer until a reload would
//! connect to addresses nobody serves any more, as nginx does without `resolve`. So a
//! background task looks the names up again: a target keeps its address while the name still
//! resolves to it (no churn, and its pooled connections stay useful), moves to the first
//! address otherwise, and keeps the old one when a look-up fails or answers nothing (a DNS
//! hiccup must not take a working target away).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Target, Upstream};

/// How long one look-up may take before the target keeps its address until the next round.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Looks up again, with the system's resolver, the host-name targets of each upstream in
/// `upstreams` whose `resolve_every` has passed.
pub async fn refresh_due(upstreams: &[Arc<Upstream>]) {
    for up in upstreams {
        if !up.resolve_due(Instant::now()) {
            continue;
        }
        for target in up.targets.iter().filter(|t| t.host.is_some()) {
            refresh(&up.name, target, |name| async move {
                match tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host(name)).await {
                    Ok(Ok(addrs)) => Ok(addrs.collect()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {LOOKUP_TIMEOUT:?}")),
                }
            })
            .await;
        }
    }
}

/// Looks `target` up with `lookup` and moves it to a new address if its current one is gone.
/// Returns whether it moved.
pub async fn refresh<F, Fut>(upstream: &str, target: &Target, lookup: F) -> bool
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<Vec<SocketAddr>, String>>,
{
    let current = target.addr();
    match lookup(target.name.clone()).await {
        Ok(addrs) => match pick(current, &addrs) {
            Some(next) if next != current => {
                target.set_addr(next);
                tracing::info!(upstream = %upstream, target = %target.name, from = %current, to = %next, "An upstream target's host name now resolves elsewhere; new connections go to the new address.");
                true
            }
            Some(_) => false,
            None => {
                tracing::warn!(upstream = %upstream, target = %target.name, address = %current, "An upstream target's host name resolved to no address; it keeps the last one.");
                false
            }
        },
        Err(e) => {
            tracing::warn!(upstream = %upstream, target = %target.name, address = %current, error = %e, "Looking up an upstream target's host name failed; it keeps the last address.");
            false
        }
    }
}

/// The address to use: the current one while the name still resolves to it, else the first.
fn pick(current: SocketAddr, addrs: &[SocketAddr]) -> Option<SocketAddr> {
    if addrs.contains(&current) {
        Some(current)
    } else {
        addrs.first().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(addr: &str) -> Target {
        Target::new(
            "api.internal:3000".into(),
            addr.parse().unwrap(),
            Some("api.internal".into()),
        )
    }

    fn addrs(list: &[&str]) -> Result<Vec<SocketAddr>, String> {
        Ok(list.iter().map(|a| a.parse().unwrap()).collect())
    }

    #[tokio::test]
    async fn a_target_moves_when_its_address_is_gone_and_stays_while_it_is_listed() {
        let t = target("10.0.0.1:3000");
        // Still among the answers (in any place): it stays.
        let moved = refresh("up", &t, |_| async {
            addrs(&["10.0.0.2:3000", "10.0.0.1:3000"])
        });
        assert!(!moved.await);
        assert_eq!(t.addr(), "10.0.0.1:3000".parse().unwrap());
        // Gone: the first of the new answers.
        let moved = refresh("up", &t, |_| async {
            addrs(&["10.0.0.3:3000", "10.0.0.4:3000"])
        });
        assert!(moved.await);
        assert_eq!(t.addr(), "10.0.0.3:3000".parse().unwrap());
    }

    #[tokio::test]
    async fn a_failed_or_empty_look_up_keeps_the_last_address() {
        let t = target("10.0.0.1:3000");
        assert!(!refresh("up", &t, |_| async { Err("SERVFAIL".to_string()) }).await);
        assert!(!refresh("up", &t, |_| async { addrs(&[]) }).await);
        assert_eq!(t.addr(), "10.0.0.1:3000".parse().unwrap());
    }

    #[tokio::test]
    async fn the_look_up_asks_for_the_name_as_written() {
        let t = target("10.0.0.1:3000");
        let asked = std::sync::Mutex::new(String::new());
        refresh("up", &t, |name| {
            *asked.lock().unwrap() = name;
            async { addrs(&["10.0.0.1:3000"]) }
        })
        .await;
        assert_eq!(*asked.lock().unwrap(), "api.internal:3000");
    }
}
