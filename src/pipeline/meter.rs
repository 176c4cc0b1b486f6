//! Step 6: atomically check and reserve every meter the route charges; refund on failure.

use std::sync::Arc;

use jiff::Timestamp;

use super::burst::BurstState;
use super::identity::Caller;
use super::plan::PlanState;
use super::Rejection;
use crate::config::{OnOutage, Route, RouteMeter};
use crate::meter::period::{Period, Window};
use crate::store::{keys, Charge, ReplayMarker, Reservation, Reserved, StoreError, StoreHandle};
use crate::telemetry::metrics::MeterSeries;

/// Counters are kept one day past their period, so that calls in flight across the boundary
/// still settle into the period they were admitted in and reports can read the last period.
pub(crate) const EXPIRY_GRACE_SECS: i64 = 86_400;

/// One meter as it stands after this call's reservation.
#[derive(Debug, Clone)]
pub struct MeterUse {
    /// Meter name.
    pub name: String,
    /// Units this call reserved.
    pub units: u64,
    /// The plan's limit.
    pub limit: u64,
    /// Units used in the period, including this call.
    pub used: u64,
    /// Whether the meter counts overage instead of blocking.
    pub overage: bool,
    /// Warning threshold (fraction of the limit).
    pub warn_at: Option<f64>,
    /// The period.
    pub period: Period,
    /// The period window the units went into.
    pub window: Window,
    /// Its metric series, when it was charged through a plan of the running gateway.
    pub series: Option<Arc<MeterSeries>>,
}

impl MeterUse {
    /// Units left before the limit.
    pub fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.used)
    }

    /// Whether the caller should be warned: past `warn_at`, or in overage.
    pub fn warns(&self) -> bool {
        self.used > self.limit
            || self
                .warn_at
                .is_some_and(|w| self.used as f64 >= w * self.limit as f64)
    }

    /// Whether this call went past the limit of an overage meter.
    pub fn in_overage(&self) -> bool {
        self.overage && self.used > self.limit
    }
}

/// What a call reserved.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    /// Meters charged, in route order.
    pub meters: Vec<MeterUse>,
    /// What was asked of the store, for refunds. Shared, not copied, with a reservation that
    /// outlives its caller (see `StoreHandle::reserve`).
    pub reservation: Arc<Reservation>,
    /// The call repeated an admitted one with the same `Idempotency-Key`: nothing was charged.
    pub replayed: bool,
    /// False when the store was down and the call went through unmetered (fail_open).
    pub metered: bool,
    /// The tenant's admitted calls since its first, after this one, when the reservation
    /// counted it for `onboarding.activation` (see `milestone::activation_charge`).
    pub activation: Option<u64>,
    /// The burst allowance after this call, when the plan's limit is shared and was checked
    /// here (by the store, or by this instance's limiter while the store was down).
    pub burst: Option<BurstState>,
}

/// A call that would pass a blocking meter's limit.
#[derive(Debug, Clone)]
pub struct QuotaExceeded {
    /// The meter that ran out.
    pub meter: String,
    /// Its limit.
    pub limit: u64,
    /// Units used so far (unchanged by this call).
    pub used: u64,
    /// When the period resets.
    pub resets_at: Timestamp,
    /// Seconds until then.
    pub retry_after: u64,
    /// Every meter the call would have charged, as they stand (for the RateLimit headers).
    pub meters: Vec<MeterUse>,
    /// The shared burst allowance after this call (which it used, though it was refused).
    pub burst: Option<BurstState>,
}

/// What a reservation carries besides the route's meters.
#[derive(Default)]
pub struct Extra<'a> {
    /// The call's `Idempotency-Key`, if it sent one.
    pub idempotency_key: Option<&'a str>,
    /// The charge counting the call towards `activated` (see `milestone::activation_charge`).
    pub activation: Option<Charge>,
}

/// How long an `Idempotency-Key` keeps a call from being charged again.
const REPLAY_WINDOW_SECS: i64 = 86_400;

/// Reserves the route's meters for `caller` on `plan`. A call with an `Idempotency-Key` that
/// repeats one admitted in the last 24 hours for the same tenant is let through uncharged; the
/// check lives in the same atomic script as the reservation, so concurrent repeats are charged
/// once.
pub async fn reserve(
    store: &StoreHandle,
    now: Timestamp,
    caller: &Caller,
    plan_state: &PlanState,
    route: &Route,
    default_outage: OnOutage,
    extra: Extra<'_>,
) -> Result<Usage, Rejection> {
    let plan = &*plan_state.plan;
    let Extra {
        idempotency_key,
        activation,
    } = extra;
    let mut meters = Vec::with_capacity(route.meter.len());
    let mut charges = Vec::with_capacity(route.meter.len());
    for RouteMeter {
        name,
        reserve: units,
        ..
    } in &route.meter
    {
        // A meter the plan does not define is not limited on this plan, so it is not counted.
        let Some(policy) = plan.meters.get(name) else {
            continue;
        };
        let window = Window::containing(policy.period, caller.tenant.billing_anchor, now)
            .map_err(|_| Rejection::Internal("the billing period could not be computed"))?;
        charges.push(Charge {
            key: keys::counter(&caller.tenant.name, name, window.start_date),
            units: units.get(),
            limit: (!policy.overage).then_some(policy.limit.get()),
            expire_at: window.end.as_second() + EXPIRY_GRACE_SECS,
        });
        meters.push(MeterUse {
            name: name.clone(),
            units: units.get(),
            limit: policy.limit.get(),
            used: 0,
            overage: policy.overage,
            warn_at: policy.warn_at,
            period: policy.period,
            window,
            series: plan_state.series.get(name).cloned(),
        });
    }
    // A shared burst limit is checked by the same script, first, so it costs no round trip of
    // its own on a metered route.
    let shared_burst = plan_state.shared_burst.as_ref();
    if charges.is_empty() && shared_burst.is_none() {
        return Ok(Usage {
            meters,
            metered: true,
            ..Usage::default()
        });
    }
    // The activation counter rides in the same script as the meters, after them, so counting
    // calls costs no round trip; it never blocks (no limit), so it cannot deny a call.
    let counts_activation = activation.is_some() && !charges.is_empty();
    if counts_activation {
        charges.extend(activation);
    }
    // A call that charges nothing (only a shared burst limit to check) has nothing to replay.
    let replay = idempotency_key
        .filter(|_| !charges.is_empty())
        .map(|k| ReplayMarker {
            key: keys::replay(&caller.tenant.name, &crate::keys::sha256_hex(k)),
            expire_at: now.as_second() + REPLAY_WINDOW_SECS,
        });
    let reservation = Arc::new(Reservation {
        charges,
        replay,
        burst: shared_burst.map(|b| b.check(&caller.tenant.name)),
    });
    // The burst allowance left comes after the counters' values (see `Reserved`).
    let burst_left = |values: &mut Vec<u64>| {
        shared_burst.and_then(|b| values.pop().map(|left| b.admitted(left)))
    };
    match store.reserve(&reservation).await {
        Ok(Reserved::Admitted(mut after)) => {
            let burst = burst_left(&mut after);
            let activation = counts_activation
                .then(|| after.get(meters.len()).copied())
                .flatten();
            for (m, used) in meters.iter_mut().zip(after) {
                m.used = used;
            }
            Ok(Usage {
                meters,
                reservation,
                metered: true,
                replayed: false,
                activation,
                burst,
            })
        }
        Ok(Reserved::Replayed(mut used)) => {
            let burst = burst_left(&mut used);
            for (m, u) in meters.iter_mut().zip(used) {
                m.used = u;
            }
            // Nothing to refund: the marker belongs to the call that was charged.
            Ok(Usage {
                meters,
                metered: true,
                replayed: true,
                burst,
                ..Usage::default()
            })
        }
        Ok(Reserved::Denied { index, mut used }) => {
            let burst = burst_left(&mut used);
            for (m, u) in meters.iter_mut().zip(&used) {
                m.used = *u;
            }
            let Some(m) = meters.get(index) else {
                return Err(Rejection::Internal(
                    "the store denied a charge the call did not make",
                ));
            };
            Err(Rejection::QuotaExceeded(Box::new(QuotaExceeded {
                meter: m.name.clone(),
                limit: m.limit,
                used: m.used,
                resets_at: m.window.end,
                retry_after: m.window.seconds_to_reset(now),
                meters,
                burst,
            })))
        }
        Ok(Reserved::RateLimited { retry_after }) => match shared_burst {
            Some(b) => Err(Rejection::RateLimited(b.exceeded(retry_after))),
            None => Err(Rejection::Internal(
                "the store rate-limited a call without a burst limit",
            )),
        },
        Err(e) => outage(e, caller, plan_state, route, default_outage),
    }
}

fn outage(
    e: StoreError,
    caller: &Caller,
    plan_state: &PlanState,
    route: &Route,
    default: OnOutage,
) -> Result<Usage, Rejection> {
    let plan = &*plan_state.plan;
    match plan.on_outage.unwrap_or(default) {
        OnOutage::FailOpen => {
            // A shared burst limit the store cannot count is kept by this instance meanwhile.
            let burst = match (&plan_state.shared_burst, &plan_state.burst) {
                (Some(_), Some(local)) => Some(
                    local
                        .check(&caller.tenant.name)
                        .map_err(Rejection::RateLimited)?,
                ),
                _ => None,
            };
            tracing::warn!(tenant = %caller.tenant.name, route = %route.name, error = %e, "Store unavailable; admitting the call unmetered (fail_open).");
            Ok(Usage {
                metered: false,
                burst,
                ..Usage::default()
            })
        }
        OnOutage::FailClosed => {
            tracing::warn!(tenant = %caller.tenant.name, route = %route.name, error = %e, "Store unavailable; refusing the call (fail_closed).");
            Err(Rejection::StoreUnavailable)
        }
    }
}

/// Takes back what `usage` reserved. A failed refund is logged: the tenant was charged for a call
/// that failed, and the log line is what support needs to correct it.
pub async fn refund(store: &StoreHandle, tenant: &str, usage: &Usage) {
    if usage.reservation.charges.is_empty() {
        return;
    }
    if let Err(e) = store.refund(&usage.reservation).await {
        tracing::warn!(tenant = %tenant, error = %e, charges = ?usage.reservation.charges, "Refund failed; the tenant stays charged for a failed call.");
    }
}
