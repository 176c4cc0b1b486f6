//! Which target of an upstream takes the next call: round-robin over the targets that are
//! taking calls, with passive health checks.
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
//! The state is a few atomics per target: while every target is up a call costs the cursor's
//! increment and three relaxed loads (the picked target's `probe_down` and `out_until` in
//! [`Balancer::pick`], its `fails` in [`Balancer::connected`]); the clock is read only when a
//! target is out.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

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

/// Round-robin cursor and health of one upstream's targets (runtime state shared by every
/// call; a reload starts afresh).
#[derive(Debug)]
pub struct Balancer {
    next: AtomicUsize,
    targets: Box<[TargetState]>,
    /// When a target goes out of rotation, and for how long.
    pub policy: HealthPolicy,
    /// Origin of the `out_until` times.
    epoch: Instant,
}

#[derive(Debug, Default)]
struct TargetState {
    /// Failed connects since the last one that succeeded.
    fails: AtomicU32,
    /// Milliseconds after `epoch` until which the target takes no calls; 0 while it does.
    out_until: AtomicU64,
    /// Taken out by failed health probes, until enough pass.
    probe_down: AtomicBool,
    /// Failed probes since the last one that passed.
    probe_fails: AtomicU32,
    /// Passed probes since the last one that failed.
    probe_passes: AtomicU32,
}

/// What a failed connect did to its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// Counted; the target still takes calls.
    Counted,
    /// This failure took the target out of rotation.
    TakenOut,
    /// The target was out already (a call that picked it before it went out, or all are out).
    AlreadyOut,
}

impl Balancer {
    /// A balancer over `targets` targets (at least one).
    pub fn new(targets: usize, policy: HealthPolicy) -> Balancer {
        Balancer {
            next: AtomicUsize::new(0),
            targets: (0..targets.max(1))
                .map(|_| TargetState::default())
                .collect(),
            policy,
            epoch: Instant::now(),
        }
    }

    /// The index of the target for the next call: the next in turn that takes calls, so the
    /// calls spread evenly over those; when every target is out, the next in turn anyway
    /// (a call answered by a target that came back beats a certain 502).
    pub fn pick(&self) -> usize {
        let n = self.targets.len();
        let first = self.next.fetch_add(1, Relaxed) % n;
        if self.takes_calls(first, None) {
            return first;
        }
        let now = self.now_ms();
        for _ in 1..n {
            let i = self.next.fetch_add(1, Relaxed) % n;
            if self.takes_calls(i, Some(now)) {
                return i;
            }
        }
        // None takes calls: give back the turns looked at, so the next call starts at the
        // next target instead of always at the same one.
        self.next.fetch_sub(n - 1, Relaxed);
        first
    }

    /// The target for a call's retry after target `last` failed to connect: the next after it
    /// that takes calls, or when none does the next after it anyway. A call that keeps failing
    /// so tries each target once, in order.
    pub fn next_after(&self, last: usize) -> usize {
        let n = self.targets.len();
        let now = self.now_ms();
        (1..n)
            .map(|k| (last + k) % n)
            .find(|&i| self.takes_calls(i, Some(now)))
            .unwrap_or((last + 1) % n)
    }

    /// Counts a failed connect to target `i`.
    pub fn connect_failed(&self, i: usize) -> Failed {
        let Some(t) = self.targets.get(i) else {
            return Failed::Counted;
        };
        if self.policy.max_fails == 0 {
            return Failed::Counted;
        }
        let fails = t.fails.fetch_add(1, Relaxed).saturating_add(1);
        if fails < self.policy.max_fails {
            return Failed::Counted;
        }
        let now = self.now_ms();
        if t.out_until.load(Relaxed) > now {
            return Failed::AlreadyOut;
        }
        let until = now.saturating_add(self.policy.fail_timeout.as_millis() as u64);
        // Never 0, which means "takes calls".
        t.out_until.store(until.max(1), Relaxed);
        if t.probe_down.load(Relaxed) {
            return Failed::AlreadyOut;
        }
        Failed::TakenOut
    }

    /// Counts a connect to target `i` that succeeded; true when the target had been out of
    /// rotation and is back.
    pub fn connected(&self, i: usize) -> bool {
        let Some(t) = self.targets.get(i) else {
            return false;
        };
        // The common case, every call: one relaxed load.
        if t.fails.load(Relaxed) == 0 {
            return false;
        }
        t.fails.store(0, Relaxed);
        t.out_until.swap(0, Relaxed) != 0 && !t.probe_down.load(Relaxed)
    }

    /// Counts a health probe of target `i` that failed; true when this one took the target
    /// out of rotation (the `fails`-th in a row).
    pub fn probe_failed(&self, i: usize, fails: u32) -> bool {
        let Some(t) = self.targets.get(i) else {
            return false;
        };
        t.probe_passes.store(0, Relaxed);
        let failed = t.probe_fails.fetch_add(1, Relaxed).saturating_add(1);
        if failed < fails || t.probe_down.load(Relaxed) {
            return false;
        }
        t.probe_down.store(true, Relaxed);
        // Out already for its connects: not newly out.
        t.out_until.load(Relaxed) <= self.now_ms()
    }

    /// Counts a health probe of target `i` that passed; true when the target takes calls
    /// again and did not before (the `passes`-th in a row after it went out, or a target out
    /// for its connects, which this probe's connect clears).
    pub fn probe_passed(&self, i: usize, passes: u32) -> bool {
        let Some(t) = self.targets.get(i) else {
            return false;
        };
        t.probe_fails.store(0, Relaxed);
        let passed = t.probe_passes.fetch_add(1, Relaxed).saturating_add(1);
        let was_up = self.takes_calls(i, None);
        if t.probe_down.load(Relaxed) && passed >= passes {
            t.probe_down.store(false, Relaxed);
        }
        t.fails.store(0, Relaxed);
        t.out_until.store(0, Relaxed);
        !was_up && self.takes_calls(i, None)
    }

    /// Whether target `i` takes calls now (`now` read on demand).
    fn takes_calls(&self, i: usize, now: Option<u64>) -> bool {
        let t = &self.targets[i];
        if t.probe_down.load(Relaxed) {
            return false;
        }
        let until = t.out_until.load(Relaxed);
        until == 0 || until <= now.unwrap_or_else(|| self.now_ms())
    }

    fn now_ms(&self) -> u64 {
        // At least 1, so that a time never reads as "takes calls".
        (self.epoch.elapsed().as_millis() as u64).max(1)
    }
}

/// Counts a failed connect to target `i` of `up`: in the metrics, and in a log line when it
/// takes the target out of rotation.
pub fn connect_failed(metrics: &Metrics, up: &Upstream, i: usize, error: &impl std::fmt::Display) {
    let Some(target) = up.targets.get(i).map(|t| &t.name) else {
        return;
    };
    let labels = [up.name.as_str(), target];
    metrics
        .upstream_connect_errors
        .with_label_values(&labels)
        .inc();
    if up.balance.connect_failed(i) == Failed::TakenOut {
        metrics.upstream_target_up.with_label_values(&labels).set(0);
        tracing::warn!(
            upstream = %up.name,
            target = %target,
            error = %error,
            max_fails = up.balance.policy.max_fails,
            fail_timeout_ms = up.balance.policy.fail_timeout.as_millis() as u64,
            "An upstream target failed to connect; it takes no calls until fail_timeout has passed."
        );
    }
}

/// Says that target `i` of `up`, out of rotation, connected again.
pub fn back(metrics: &Metrics, up: &Upstream, i: usize) {
    if let Some(target) = up.targets.get(i).map(|t| &t.name) {
        metrics
            .upstream_target_up
            .with_label_values(&[&up.name, target])
            .set(1);
        tracing::info!(upstream = %up.name, target = %target, "An upstream target is back in rotation.");
    }
}

/// Starts every target of `upstreams` as up in the metrics (and drops the series of targets a
/// reload removed).
pub fn reset_metrics<'a>(metrics: &Metrics, upstreams: impl IntoIterator<Item = &'a Upstream>) {
    metrics.upstream_target_up.reset();
    for up in upstreams {
        for t in &up.targets {
            metrics
                .upstream_target_up
                .with_label_values(&[&up.name, &t.name])
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

    #[test]
    fn round_robin_while_every_target_is_up() {
        let b = Balancer::new(3, HealthPolicy::default());
        let picks: Vec<_> = (0..6).map(|_| b.pick()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn a_target_out_of_rotation_is_skipped_and_the_rest_share_evenly() {
        let b = Balancer::new(3, policy(1, 60_000));
        assert_eq!(b.connect_failed(1), Failed::TakenOut);
        let picks: Vec<_> = (0..6).map(|_| b.pick()).collect();
        assert!(!picks.contains(&1), "{picks:?}");
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 3, "{picks:?}");
        assert_eq!(picks.iter().filter(|&&i| i == 2).count(), 3, "{picks:?}");
    }

    #[test]
    fn max_fails_counts_consecutive_failures() {
        let b = Balancer::new(2, policy(3, 60_000));
        assert_eq!(b.connect_failed(0), Failed::Counted);
        assert_eq!(b.connect_failed(0), Failed::Counted);
        // A success in between starts the count again.
        assert!(!b.connected(0), "the target was never out");
        assert_eq!(b.connect_failed(0), Failed::Counted);
        assert_eq!(b.connect_failed(0), Failed::Counted);
        assert_eq!(b.connect_failed(0), Failed::TakenOut);
        assert_eq!(b.connect_failed(0), Failed::AlreadyOut);
        assert_eq!((0..4).map(|_| b.pick()).collect::<Vec<_>>(), [1, 1, 1, 1]);
    }

    #[test]
    fn max_fails_zero_never_takes_a_target_out() {
        let b = Balancer::new(2, policy(0, 60_000));
        for _ in 0..10 {
            assert_eq!(b.connect_failed(0), Failed::Counted);
        }
        assert_eq!((0..4).map(|_| b.pick()).collect::<Vec<_>>(), [0, 1, 0, 1]);
    }

    #[test]
    fn every_target_out_still_picks_round_robin() {
        let b = Balancer::new(2, policy(1, 60_000));
        b.connect_failed(0);
        b.connect_failed(1);
        let picks: Vec<_> = (0..4).map(|_| b.pick()).collect();
        assert!(picks.contains(&0) && picks.contains(&1), "{picks:?}");
    }

    #[test]
    fn retries_move_on_from_the_target_that_failed() {
        let b = Balancer::new(4, policy(1, 60_000));
        // Every target out: a call's retries still try each one once, in order.
        for i in 0..4 {
            b.connect_failed(i);
        }
        assert_eq!(b.next_after(1), 2);
        assert_eq!(b.next_after(2), 3);
        assert_eq!(b.next_after(3), 0);
        // Some back: the next one taking calls.
        assert!(b.connected(0));
        assert_eq!(b.next_after(1), 0);
        assert_eq!(b.next_after(3), 0);
        let one = Balancer::new(1, policy(1, 60_000));
        assert_eq!(one.next_after(0), 0);
    }

    #[test]
    fn failed_probes_take_a_target_out_until_enough_pass() {
        let b = Balancer::new(2, policy(1, 60_000));
        assert!(!b.probe_failed(1, 2), "one failure of two");
        assert!(b.probe_failed(1, 2), "the second in a row takes it out");
        assert!(!b.probe_failed(1, 2), "out already");
        assert_eq!((0..4).map(|_| b.pick()).collect::<Vec<_>>(), [0, 0, 0, 0]);
        // A connect that succeeds (a call when every target is out) does not bring it back.
        assert!(!b.connected(1));
        assert!(!b.probe_passed(1, 2), "one pass of two");
        assert!(!b.probe_failed(1, 2), "a failure starts the passes again");
        assert!(!b.probe_passed(1, 2));
        assert!(b.probe_passed(1, 2), "two passes in a row bring it back");
        assert!(!b.probe_passed(1, 2), "reported back once");
        let picks: Vec<_> = (0..4).map(|_| b.pick()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 2, "{picks:?}");
    }

    #[test]
    fn a_passed_probe_brings_back_a_target_out_for_its_connects() {
        let b = Balancer::new(2, policy(1, 60_000));
        assert_eq!(b.connect_failed(0), Failed::TakenOut);
        assert!(b.probe_passed(0, 3), "a probe's connect succeeded");
        assert!(b.takes_calls(0, None));
        // Out for its probes, a failed connect does not take it out a second time.
        assert!(b.probe_failed(0, 1));
        assert_eq!(b.connect_failed(0), Failed::AlreadyOut);
        assert!(!b.probe_failed(0, 1));
    }

    #[test]
    fn a_target_comes_back_after_fail_timeout_and_on_a_connect() {
        let b = Balancer::new(2, policy(1, 0));
        assert_eq!(b.connect_failed(0), Failed::TakenOut);
        // fail_timeout 0: it takes calls again at once, still counted as failing.
        std::thread::sleep(Duration::from_millis(2));
        assert!(b.takes_calls(0, None));
        // A probe that fails takes it out again at once; one that succeeds brings it back.
        assert_eq!(b.connect_failed(0), Failed::TakenOut);
        assert!(b.connected(0), "back after a successful connect");
        assert!(!b.connected(0), "reported back once");
        assert!(b.takes_calls(0, None));
    }
}
