//! Which target of an upstream takes the next call: round-robin over the targets that are
//! taking calls, with passive health checks. A target written as a host name is as many
//! targets as its name has addresses ([`Endpoint`]s, each with its own health; see
//! [`super::resolve`] for how they follow the name), so "target" below means one address.
//!
//! A target whose connects fail `max_fails` times in a row is taken out of rotation for
//! `fail_timeout` (nginx's `max_fails`/`fail_timeout`, counted as consecutive failures, as
//! Envoy's outlier detection counts them). Without it a dead target costs every call that
//! lands on it a failed connect before the retry on the next target, and a target that drops
//! SYNs costs each of them the whole `connect_timeout`. After `fail_timeout` the target takes
//! calls again; the first connect that succeeds clears its count, the first that fails takes
//! it out again at once. Only connects are judged: an answer, a `5xx` included, is the
//! application speaking, and a target that answers is up.
//!
//! With `health_check` configured, active probes (see [`super::health`]) judge each target
//! too: `fails` failed probes in a row take it out until `passes` pass in a row, whatever its
//! connects do meanwhile. A probe that passes also counts as a connect that succeeded, so a
//! target taken out by failed connects comes back with it, before `fail_timeout`.
//!
//! The state is a few atomics per target: while every target is up a call costs a load of the
//! endpoint list, the cursor's increment, a reference count's increment and decrement, and
//! three relaxed loads (the picked target's `probe_down` and `out_until` in
//! [`Balancer::pick`], its `fails` in [`Balancer::connected`]); the clock is read only when a
//! target is out.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::config::Upstream;
use crate::telemetry::metrics::Metrics;

/// Passive health settings of one upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Consecutive failed connects that take a target out of rotation; 0 never does.
    pub max_fails: u32,
    /// How long a target stays out.
    pub fail_timeout: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
        }
    }
}

/// One address calls connect to: a target written as an address, or one of the addresses
/// its host name resolves to (every one of them takes calls, as nginx and Envoy's DNS
/// clusters do: a name behind which a service runs several instances spreads the calls over
/// all of them). Health is kept per address, so one dead instance behind a name is left out
/// without the others.
#[derive(Debug)]
pub struct Endpoint {
    /// Its target's index in the upstream's `targets`.
    pub target: usize,
    /// Where calls connect.
    pub addr: SocketAddr,
    /// `addr` as the metrics' `address` label.
    pub address: String,
    /// Failed connects since the last one that succeeded.
    fails: AtomicU32,
    /// Milliseconds after the balancer's `epoch` until which it takes no calls; 0 while it does.
    out_until: AtomicU64,
    /// Taken out by failed health probes, until enough pass.
    probe_down: AtomicBool,
    /// Failed probes since the last one that passed.
    probe_fails: AtomicU32,
    /// Passed probes since the last one that failed.
    probe_passes: AtomicU32,
}

impl Endpoint {
    fn new(target: usize, addr: SocketAddr) -> Endpoint {
        Endpoint {
            target,
            addr,
            address: addr.to_string(),
            fails: AtomicU32::new(0),
            out_until: AtomicU64::new(0),
            probe_down: AtomicBool::new(false),
            probe_fails: AtomicU32::new(0),
            probe_passes: AtomicU32::new(0),
        }
    }
}

/// Round-robin cursor over one upstream's endpoints and their health (runtime state shared by
/// every call; a reload starts afresh).
#[derive(Debug)]
pub struct Balancer {
    next: AtomicUsize,
    /// Every target's addresses, target by target; never empty (a target keeps its last
    /// addresses while its name resolves to none).
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    /// When a target goes out of rotation, and for how long.
    pub policy: HealthPolicy,
    /// Origin of the `out_until` times.
    epoch: Instant,
}

/// What a failed connect did to its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// Counted; the endpoint still takes calls.
    Counted,
    /// This failure took the endpoint out of rotation.
    TakenOut,
    /// It was out already (a call that picked it before it went out, or all are out).
    AlreadyOut,
}

/// How one endpoint stands (see [`Balancer::status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointStatus {
    /// It takes calls now.
    pub taking_calls: bool,
    /// Failed health probes took it out, until enough pass.
    pub out_for_health_checks: bool,
    /// Failed connects took it out for this many more milliseconds.
    pub out_for_connects_ms: Option<u64>,
    /// Failed connects since the last one that succeeded.
    pub failed_connects: u32,
}

/// How a new look-up changed a target's addresses.
#[derive(Debug, Default)]
pub struct Moved {
    /// Addresses that take calls from now on.
    pub added: Vec<Arc<Endpoint>>,
    /// Addresses that no longer do.
    pub removed: Vec<Arc<Endpoint>>,
}

impl Balancer {
    /// A balancer over `addrs`: each target's index and its addresses (at least one in all).
    pub fn new(addrs: Vec<(usize, SocketAddr)>, policy: HealthPolicy) -> Balancer {
        let endpoints = addrs
            .into_iter()
            .map(|(t, a)| Arc::new(Endpoint::new(t, a)))
            .collect();
        Balancer {
            next: AtomicUsize::new(0),
            endpoints: ArcSwap::from_pointee(endpoints),
            policy,
            epoch: Instant::now(),
        }
    }

    /// Every endpoint now, target by target.
    pub fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints.load_full()
    }

    /// How many endpoints there are now (a call that keeps failing to connect tries each once).
    pub fn endpoint_count(&self) -> usize {
        self.endpoints.load().len()
    }

    /// The endpoint for the next call: the next in turn that takes calls, so the calls spread
    /// evenly over those; when none does, the next in turn anyway (a call answered by an
    /// endpoint that came back beats a certain 502). `None` only if there is no endpoint.
    pub fn pick(&self) -> Option<Arc<Endpoint>> {
        let all = self.endpoints.load();
        let n = all.len();
        if n == 0 {
            return None;
        }
        let first = self.next.fetch_add(1, Relaxed) % n;
        if self.takes_calls(&all[first], None) {
            return Some(all[first].clone());
        }
        let now = self.now_ms();
        for _ in 1..n {
            let i = self.next.fetch_add(1, Relaxed) % n;
            if self.takes_calls(&all[i], Some(now)) {
                return Some(all[i].clone());
            }
        }
        // None takes calls: give back the turns looked at, so the next call starts at the
        // next endpoint instead of always at the same one.
        self.next.fetch_sub(n - 1, Relaxed);
        Some(all[first].clone())
    }

    /// The endpoint for a call's retry after `last` failed to connect: the next after it that
    /// takes calls, or when none does the next after it anyway. A call that keeps failing so
    /// tries each endpoint once, in order. (If the addresses changed meanwhile and `last` is
    /// gone, a pick as for a new call.)
    pub fn next_after(&self, last: &Endpoint) -> Option<Arc<Endpoint>> {
        let all = self.endpoints.load();
        let n = all.len();
        let Some(at) = all.iter().position(|e| std::ptr::eq(&**e, last)) else {
            return self.pick();
        };
        let now = self.now_ms();
        let i = (1..n)
            .map(|k| (at + k) % n)
            .find(|&i| self.takes_calls(&all[i], Some(now)))
            .unwrap_or((at + 1) % n);
        Some(all[i].clone())
    }

    /// Counts a failed connect to `e`.
    pub fn connect_failed(&self, e: &Endpoint) -> Failed {
        if self.policy.max_fails == 0 {
            return Failed::Counted;
        }
        let fails = e.fails.fetch_add(1, Relaxed).saturating_add(1);
        if fails < self.policy.max_fails {
            return Failed::Counted;
        }
        let now = self.now_ms();
        if e.out_until.load(Relaxed) > now {
            return Failed::AlreadyOut;
        }
        let until = now.saturating_add(self.policy.fail_timeout.as_millis() as u64);
        // Never 0, which means "takes calls".
        e.out_until.store(until.max(1), Relaxed);
        if e.probe_down.load(Relaxed) {
            return Failed::AlreadyOut;
        }
        Failed::TakenOut
    }

    /// Counts a connect to `e` that succeeded; true when it had been out of rotation and is
    /// back.
    pub fn connected(&self, e: &Endpoint) -> bool {
        // The common case, every call: one relaxed load.
        if e.fails.load(Relaxed) == 0 {
            return false;
        }
        e.fails.store(0, Relaxed);
        e.out_until.swap(0, Relaxed) != 0 && !e.probe_down.load(Relaxed)
    }

    /// Counts a health probe of `e` that failed; true when this one took it out of rotation
    /// (the `fails`-th in a row).
    pub fn probe_failed(&self, e: &Endpoint, fails: u32) -> bool {
        e.probe_passes.store(0, Relaxed);
        let failed = e.probe_fails.fetch_add(1, Relaxed).saturating_add(1);
        if failed < fails || e.probe_down.load(Relaxed) {
            return false;
        }
        e.probe_down.store(true, Relaxed);
        // Out already for its connects: not newly out.
        e.out_until.load(Relaxed) <= self.now_ms()
    }

    /// Counts a health probe of `e` that passed; true when it takes calls again and did not
    /// before (the `passes`-th in a row after it went out, or out for its connects, which
    /// this probe's connect clears).
    pub fn probe_passed(&self, e: &Endpoint, passes: u32) -> bool {
        e.probe_fails.store(0, Relaxed);
        let passed = e.probe_passes.fetch_add(1, Relaxed).saturating_add(1);
        let was_up = self.takes_calls(e, None);
        if e.probe_down.load(Relaxed) && passed >= passes {
            e.probe_down.store(false, Relaxed);
        }
        e.fails.store(0, Relaxed);
        e.out_until.store(0, Relaxed);
        !was_up && self.takes_calls(e, None)
    }

    /// Makes `addrs` target `target`'s addresses (a new look-up of its name): an address still
    /// listed keeps its endpoint and health, a new one takes calls at once, one no longer
    /// listed takes no new calls. The order of the answer does not matter (resolvers rotate
    /// it); an empty one changes nothing.
    pub fn set_addresses(&self, target: usize, addrs: &[SocketAddr]) -> Moved {
        let mut wanted: Vec<SocketAddr> = addrs.to_vec();
        wanted.sort();
        wanted.dedup();
        let now = self.endpoints.load_full();
        let mut moved = Moved::default();
        if wanted.is_empty() {
            return moved;
        }
        let mut next = Vec::with_capacity(now.len() + wanted.len());
        let mut placed = false;
        for e in now.iter() {
            if e.target != target {
                next.push(e.clone());
                continue;
            }
            if !placed {
                placed = true;
                for a in &wanted {
                    match now.iter().find(|o| o.target == target && o.addr == *a) {
                        Some(kept) => next.push(kept.clone()),
                        None => {
                            let e = Arc::new(Endpoint::new(target, *a));
                            moved.added.push(e.clone());
                            next.push(e);
                        }
                    }
                }
            }
            if !wanted.contains(&e.addr) {
                moved.removed.push(e.clone());
            }
        }
        if !placed {
            for a in &wanted {
                let e = Arc::new(Endpoint::new(target, *a));
                moved.added.push(e.clone());
                next.push(e);
            }
        }
        if !moved.added.is_empty() || !moved.removed.is_empty() {
            self.endpoints.store(Arc::new(next));
        }
        moved
    }

    /// How `e` stands now, for the admin API: whether it takes calls, and why not.
    pub fn status(&self, e: &Endpoint) -> EndpointStatus {
        let now = self.now_ms();
        let until = e.out_until.load(Relaxed);
        EndpointStatus {
            taking_calls: self.takes_calls(e, Some(now)),
            out_for_health_checks: e.probe_down.load(Relaxed),
            out_for_connects_ms: (until > now).then(|| until - now),
            failed_connects: e.fails.load(Relaxed),
        }
    }

    /// Whether `e` takes calls now (`now` read on demand).
    fn takes_calls(&self, e: &Endpoint, now: Option<u64>) -> bool {
        if e.probe_down.load(Relaxed) {
            return false;
        }
        let until = e.out_until.load(Relaxed);
        until == 0 || until <= now.unwrap_or_else(|| self.now_ms())
    }

    fn now_ms(&self) -> u64 {
        // At least 1, so that a time never reads as "takes calls".
        (self.epoch.elapsed().as_millis() as u64).max(1)
    }
}

/// The metrics' labels of endpoint `e` of `up`: upstream, target (as written), address.
pub fn labels<'a>(up: &'a Upstream, e: &'a Endpoint) -> [&'a str; 3] {
    let target = up.targets.get(e.target).map_or("", |t| t.name.as_str());
    [up.name.as_str(), target, e.address.as_str()]
}

/// Counts a failed connect to `e` of `up`: in the metrics, and in a log line when it takes the
/// endpoint out of rotation.
pub fn connect_failed(
    metrics: &Metrics,
    up: &Upstream,
    e: &Endpoint,
    error: &impl std::fmt::Display,
) {
    let labels = labels(up, e);
    metrics
        .upstream_connect_errors
        .with_label_values(&labels)
        .inc();
    if up.balance.connect_failed(e) == Failed::TakenOut {
        metrics.upstream_target_up.with_label_values(&labels).set(0);
        tracing::warn!(
            upstream = %up.name,
            target = %labels[1],
            address = %e.address,
            error = %error,
            max_fails = up.balance.policy.max_fails,
            fail_timeout_ms = up.balance.policy.fail_timeout.as_millis() as u64,
            "An upstream target failed to connect; it takes no calls until fail_timeout has passed."
        );
    }
}

/// Says that endpoint `e` of `up`, out of rotation, connected again.
pub fn back(metrics: &Metrics, up: &Upstream, e: &Endpoint) {
    let labels = labels(up, e);
    metrics.upstream_target_up.with_label_values(&labels).set(1);
    tracing::info!(upstream = %up.name, target = %labels[1], address = %e.address, "An upstream target is back in rotation.");
}

/// Starts every endpoint of `upstreams` as up in the metrics (and drops the series of
/// endpoints a reload removed).
pub fn reset_metrics<'a>(metrics: &Metrics, upstreams: impl IntoIterator<Item = &'a Upstream>) {
    metrics.upstream_target_up.reset();
    for up in upstreams {
        for e in up.balance.endpoints().iter() {
            metrics
                .upstream_target_up
                .with_label_values(&labels(up, e))
                .set(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_fails: u32, fail_timeout_ms: u64) -> HealthPolicy {
        HealthPolicy {
            max_fails,
            fail_timeout: Duration::from_millis(fail_timeout_ms),
        }
    }

    /// A balancer over `n` targets of one address each (`10.0.0.<i>:80`).
    fn balancer(n: usize, policy: HealthPolicy) -> Balancer {
        Balancer::new((0..n).map(|i| (i, addr(i))).collect(), policy)
    }

    fn addr(i: usize) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i as u8], 80))
    }

    /// The endpoint of target `i` (one address each).
    fn ep(b: &Balancer, i: usize) -> Arc<Endpoint> {
        b.endpoints()[i].clone()
    }

    fn picks(b: &Balancer, n: usize) -> Vec<usize> {
        (0..n).map(|_| b.pick().unwrap().target).collect()
    }

    #[test]
    fn round_robin_while_every_target_is_up() {
        let b = balancer(3, HealthPolicy::default());
        assert_eq!(picks(&b, 6), [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn a_target_out_of_rotation_is_skipped_and_the_rest_share_evenly() {
        let b = balancer(3, policy(1, 60_000));
        assert_eq!(b.connect_failed(&ep(&b, 1)), Failed::TakenOut);
        let picks = picks(&b, 6);
        assert!(!picks.contains(&1), "{picks:?}");
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 3, "{picks:?}");
        assert_eq!(picks.iter().filter(|&&i| i == 2).count(), 3, "{picks:?}");
    }

    #[test]
    fn max_fails_counts_consecutive_failures() {
        let b = balancer(2, policy(3, 60_000));
        let zero = ep(&b, 0);
        assert_eq!(b.connect_failed(&zero), Failed::Counted);
        assert_eq!(b.connect_failed(&zero), Failed::Counted);
        // A success in between starts the count again.
        assert!(!b.connected(&zero), "the target was never out");
        assert_eq!(b.connect_failed(&zero), Failed::Counted);
        assert_eq!(b.connect_failed(&zero), Failed::Counted);
        assert_eq!(b.connect_failed(&zero), Failed::TakenOut);
        assert_eq!(b.connect_failed(&zero), Failed::AlreadyOut);
        assert_eq!(picks(&b, 4), [1, 1, 1, 1]);
    }

    #[test]
    fn max_fails_zero_never_takes_a_target_out() {
        let b = balancer(2, policy(0, 60_000));
        for _ in 0..10 {
            assert_eq!(b.connect_failed(&ep(&b, 0)), Failed::Counted);
        }
        assert_eq!(picks(&b, 4), [0, 1, 0, 1]);
    }

    #[test]
    fn every_target_out_still_picks_round_robin() {
        let b = balancer(2, policy(1, 60_000));
        b.connect_failed(&ep(&b, 0));
        b.connect_failed(&ep(&b, 1));
        let picks = picks(&b, 4);
        assert!(picks.contains(&0) && picks.contains(&1), "{picks:?}");
    }

    #[test]
    fn retries_move_on_from_the_target_that_failed() {
        let b = balancer(4, policy(1, 60_000));
        // Every target out: a call's retries still try each one once, in order.
        for i in 0..4 {
            b.connect_failed(&ep(&b, i));
        }
        let after = |i| b.next_after(&ep(&b, i)).unwrap().target;
        assert_eq!(after(1), 2);
        assert_eq!(after(2), 3);
        assert_eq!(after(3), 0);
        // Some back: the next one taking calls.
        assert!(b.connected(&ep(&b, 0)));
        assert_eq!(after(1), 0);
        assert_eq!(after(3), 0);
        let one = balancer(1, policy(1, 60_000));
        assert_eq!(one.next_after(&ep(&one, 0)).unwrap().target, 0);
    }

    #[test]
    fn failed_probes_take_a_target_out_until_enough_pass() {
        let b = balancer(2, policy(1, 60_000));
        let one = ep(&b, 1);
        assert!(!b.probe_failed(&one, 2), "one failure of two");
        assert!(b.probe_failed(&one, 2), "the second in a row takes it out");
        assert!(!b.probe_failed(&one, 2), "out already");
        assert_eq!(picks(&b, 4), [0, 0, 0, 0]);
        // A connect that succeeds (a call when every target is out) does not bring it back.
        assert!(!b.connected(&one));
        assert!(!b.probe_passed(&one, 2), "one pass of two");
        assert!(
            !b.probe_failed(&one, 2),
            "a failure starts the passes again"
        );
        assert!(!b.probe_passed(&one, 2));
        assert!(b.probe_passed(&one, 2), "two passes in a row bring it back");
        assert!(!b.probe_passed(&one, 2), "reported back once");
        let picks = picks(&b, 4);
        assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 2, "{picks:?}");
    }

    #[test]
    fn a_passed_probe_brings_back_a_target_out_for_its_connects() {
        let b = balancer(2, policy(1, 60_000));
        let zero = ep(&b, 0);
        assert_eq!(b.connect_failed(&zero), Failed::TakenOut);
        assert!(b.probe_passed(&zero, 3), "a probe's connect succeeded");
        assert!(b.takes_calls(&zero, None));
        // Out for its probes, a failed connect does not take it out a second time.
        assert!(b.probe_failed(&zero, 1));
        assert_eq!(b.connect_failed(&zero), Failed::AlreadyOut);
        assert!(!b.probe_failed(&zero, 1));
    }

    #[test]
    fn a_target_comes_back_after_fail_timeout_and_on_a_connect() {
        let b = balancer(2, policy(1, 0));
        let zero = ep(&b, 0);
        assert_eq!(b.connect_failed(&zero), Failed::TakenOut);
        // fail_timeout 0: it takes calls again at once, still counted as failing.
        std::thread::sleep(Duration::from_millis(2));
        assert!(b.takes_calls(&zero, None));
        // A probe that fails takes it out again at once; one that succeeds brings it back.
        assert_eq!(b.connect_failed(&zero), Failed::TakenOut);
        assert!(b.connected(&zero), "back after a successful connect");
        assert!(!b.connected(&zero), "reported back once");
        assert!(b.takes_calls(&zero, None));
    }

    #[test]
    fn every_address_of_a_name_takes_its_share_and_its_own_health() {
        // Target 0 an address; target 1 a name with three addresses.
        let b = Balancer::new(
            vec![(0, addr(1)), (1, addr(2)), (1, addr(3)), (1, addr(4))],
            policy(1, 60_000),
        );
        let addrs: Vec<_> = (0..8).map(|_| b.pick().unwrap().addr).collect();
        for a in [addr(1), addr(2), addr(3), addr(4)] {
            assert_eq!(addrs.iter().filter(|&&x| x == a).count(), 2, "{addrs:?}");
        }
        // One instance behind the name dies: only it is left out.
        assert_eq!(b.connect_failed(&b.endpoints()[2]), Failed::TakenOut);
        let addrs: Vec<_> = (0..6).map(|_| b.pick().unwrap().addr).collect();
        assert!(!addrs.contains(&addr(3)), "{addrs:?}");
        assert_eq!(
            addrs.iter().filter(|&&x| x == addr(4)).count(),
            2,
            "{addrs:?}"
        );
    }

    #[test]
    fn a_new_answer_keeps_the_health_of_addresses_still_listed() {
        let b = Balancer::new(
            vec![(0, addr(1)), (1, addr(2)), (1, addr(3))],
            policy(1, 60_000),
        );
        assert_eq!(b.connect_failed(&b.endpoints()[1]), Failed::TakenOut);
        // The same set in another order: nothing moves.
        let moved = b.set_addresses(1, &[addr(3), addr(2), addr(3)]);
        assert!(
            moved.added.is_empty() && moved.removed.is_empty(),
            "{moved:?}"
        );
        // 10.0.0.3 goes, 10.0.0.5 comes; 10.0.0.2 stays out, as it was.
        let moved = b.set_addresses(1, &[addr(5), addr(2)]);
        assert_eq!(
            moved.added.iter().map(|e| e.addr).collect::<Vec<_>>(),
            [addr(5)]
        );
        assert_eq!(
            moved.removed.iter().map(|e| e.addr).collect::<Vec<_>>(),
            [addr(3)]
        );
        let now: Vec<_> = b.endpoints().iter().map(|e| (e.target, e.addr)).collect();
        assert_eq!(now, [(0, addr(1)), (1, addr(2)), (1, addr(5))]);
        let addrs: Vec<_> = (0..4).map(|_| b.pick().unwrap().addr).collect();
        assert!(!addrs.contains(&addr(2)), "still out: {addrs:?}");
        assert!(addrs.contains(&addr(5)), "{addrs:?}");
        // No address at all: the last ones stay.
        let moved = b.set_addresses(1, &[]);
        assert!(moved.added.is_empty() && moved.removed.is_empty());
        assert_eq!(b.endpoint_count(), 3);
        // A call whose endpoint went away retries on one that is there.
        let gone = moved
            .removed
            .first()
            .cloned()
            .unwrap_or_else(|| Arc::new(Endpoint::new(1, addr(3))));
        assert!(b.next_after(&gone).is_some());
    }
}
