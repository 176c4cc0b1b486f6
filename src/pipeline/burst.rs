//! Step 5: the plan's burst limit, per tenant (GCRA): per gateway instance via governor, or
//! shared by every instance through the store (`rate_limit.shared`).
//!
//! Burst limits protect the upstream from spikes. By default each instance keeps its own (no
//! store round trip), so N instances let a tenant through up to N times the limit. A shared
//! limit is counted by Redis in the same script as the call's meters, so it costs no extra
//! round trip on a metered route (one on a route without meters); when the store is down and
//! the plan fails open, each instance falls back to its own limiter.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::{NoOpMiddleware, StateInformationMiddleware};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::config::RateLimit;
use crate::store::{keys, BurstCheck};

type Keyed<C> = RateLimiter<String, DefaultKeyedStateStore<String>, C, StateInformationMiddleware>;

/// One plan's burst limiter, keyed by tenant.
pub struct BurstLimiter<C: Clock = DefaultClock> {
    limiter: Keyed<C>,
    clock: C,
    /// The burst size (the `q` of the `burst` RateLimit policy).
    pub burst: NonZeroU32,
    /// The `w` of the policy: the plan's `per`, in whole seconds (at least 1), as SPEC §4 shows.
    pub window_secs: u64,
}

/// A plan's burst limit counted by the store, shared by every instance (`rate_limit.shared`).
/// The same GCRA as governor's, so a shared limit admits what one instance's would.
#[derive(Debug, Clone, Copy)]
pub struct SharedBurst {
    interval_us: u64,
    size: u32,
    window_secs: u64,
}

impl SharedBurst {
    /// The store-side form of `limit`.
    pub fn new(limit: &RateLimit) -> SharedBurst {
        let per_call = limit.per / limit.requests.get();
        SharedBurst {
            interval_us: (per_call.as_micros() as u64).max(1),
            size: limit.burst.get(),
            window_secs: window_secs(limit),
        }
    }

    /// The check a reservation for `tenant` carries.
    pub fn check(&self, tenant: &str) -> BurstCheck {
        BurstCheck {
            key: keys::burst(tenant),
            interval_us: self.interval_us,
            size: self.size,
        }
    }

    /// The state to report after the store admitted a call, `left` calls remaining.
    pub fn admitted(&self, left: u64) -> BurstState {
        BurstState {
            quota: self.size,
            remaining: left.min(u64::from(self.size)) as u32,
            window_secs: self.window_secs,
        }
    }

    /// The refusal of a call the store found over the limit.
    pub fn exceeded(&self, retry_after: Duration) -> BurstExceeded {
        BurstExceeded {
            retry_after: retry_secs(retry_after),
            quota: self.size,
            window_secs: self.window_secs,
        }
    }
}

/// The `w` of the policy: `per` in whole seconds, at least 1, as SPEC §4 shows.
fn window_secs(limit: &RateLimit) -> u64 {
    limit.per.as_secs_f64().ceil().max(1.0) as u64
}

/// Whole seconds (at least 1) for `Retry-After`.
fn retry_secs(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

/// What the limiter said about an admitted call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BurstState {
    /// Burst size.
    pub quota: u32,
    /// Calls left right now.
    pub remaining: u32,
    /// Policy window in seconds.
    pub window_secs: u64,
}

/// A call refused by the burst limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BurstExceeded {
    /// Whole seconds (at least 1) until a call would be admitted.
    pub retry_after: u64,
    /// Burst size.
    pub quota: u32,
    /// Policy window in seconds.
    pub window_secs: u64,
}

impl BurstLimiter<DefaultClock> {
    /// A limiter for `limit` on the system's monotonic clock.
    pub fn new(limit: &RateLimit) -> BurstLimiter {
        BurstLimiter::with_clock(limit, DefaultClock::default())
    }
}

impl<C: Clock + Clone> BurstLimiter<C> {
    /// A limiter for `limit` on `clock` (tests move a fake clock).
    pub fn with_clock(limit: &RateLimit, clock: C) -> BurstLimiter<C> {
        let per_call = limit.per / limit.requests.get();
        let quota = Quota::with_period(per_call.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(limit.requests))
            .allow_burst(limit.burst);
        BurstLimiter {
            limiter: RateLimiter::<_, _, _, NoOpMiddleware<C::Instant>>::new(
                quota,
                DefaultKeyedStateStore::default(),
                clock.clone(),
            )
            .with_middleware::<StateInformationMiddleware>(),
            clock,
            burst: limit.burst,
            window_secs: window_secs(limit),
        }
    }

    /// Takes one call from `tenant`'s allowance.
    pub fn check(&self, tenant: &str) -> Result<BurstState, BurstExceeded> {
        match self.limiter.check_key(&tenant.to_string()) {
            Ok(snapshot) => Ok(BurstState {
                quota: self.burst.get(),
                remaining: snapshot.remaining_burst_capacity(),
                window_secs: self.window_secs,
            }),
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Err(BurstExceeded {
                    retry_after: retry_secs(wait),
                    quota: self.burst.get(),
                    window_secs: self.window_secs,
                })
            }
        }
    }

    /// Forgets tenants whose allowance is full again; returns how many are still tracked.
    pub fn retain_recent(&self) -> usize {
        self.limiter.retain_recent();
        self.limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn limit(requests: u32, per: Duration, burst: u32) -> RateLimit {
        RateLimit {
            requests: NonZeroU32::new(requests).unwrap(),
            per,
            burst: NonZeroU32::new(burst).unwrap(),
            shared: false,
        }
    }

    #[test]
    fn burst_then_refill_per_tenant() {
        let clock = FakeRelativeClock::default();
        let b = BurstLimiter::with_clock(&limit(2, Duration::from_secs(1), 3), clock.clone());
        assert_eq!(b.check("a").unwrap().remaining, 2);
        assert_eq!(b.check("a").unwrap().remaining, 1);
        assert_eq!(b.check("a").unwrap().remaining, 0);
        let e = b.check("a").unwrap_err();
        assert_eq!(e.retry_after, 1);
        assert!(b.check("b").is_ok(), "tenants have separate allowances");
        clock.advance(Duration::from_millis(500));
        assert!(b.check("a").is_ok(), "one call refills every 500ms");
        assert!(b.check("a").is_err());
    }

    #[test]
    fn policy_is_burst_over_per() {
        let b = BurstLimiter::new(&limit(10, Duration::from_secs(1), 20));
        assert_eq!((b.burst.get(), b.window_secs), (20, 1));
    }
}
