//! Lifecycle milestones (SPEC §6, `onboarding:`): detected on the request path from what the
//! call's reservation returned, each fired once across every instance by a set-if-absent in the
//! store ([`StoreHandle::mark_once`]).
//!
//! Cost: the extra store call happens only when the local state says a milestone may just have
//! happened — a tenant this instance has not yet seen have its first call, a reservation whose
//! used-before/used-after straddle `warn_at` or an overage limit, a 402 this instance has not
//! yet marked. Every other call pays look-ups in memory; `activated` counts calls with one more
//! counter in the reservation's script, not with a round trip of its own.
//! A store failure skips the milestone (logged) and never fails the call: a lost hint is better
//! than a refused call.

use super::identity::{Caller, IdentityKind};
use super::meter::{MeterUse, Usage, EXPIRY_GRACE_SECS};
use jiff::Timestamp;

use crate::config::{Activation, Plan, Route};
use crate::meter::period::{Clock, Period, Window};
use crate::store::{keys, Charge, StoreHandle};
use crate::telemetry::event::period_label;

/// Which milestone (the `data.milestone` of its event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A tenant's first admitted call ever.
    FirstCall,
    /// A meter's usage crossed its `warn_at` (once per meter per period).
    LimitWarning,
    /// The first 402 for a meter in a period.
    LimitReached,
    /// The first unit past the limit of an overage meter in a period.
    OverageStarted,
    /// The first feature-gate 402 for a feature in a period.
    FeatureDenied,
    /// `onboarding.activation.calls` admitted calls within `activation.within` of the first.
    Activated,
    /// An admin-API plan change.
    PlanChanged,
}

impl Kind {
    /// Every milestone, in the order the docs list them (config errors name them in this order).
    pub const ALL: [Kind; 7] = [
        Kind::FirstCall,
        Kind::Activated,
        Kind::LimitWarning,
        Kind::LimitReached,
        Kind::FeatureDenied,
        Kind::OverageStarted,
        Kind::PlanChanged,
    ];

    /// The name in events and in `Tollgate-Milestone`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::FirstCall => "first_call",
            Kind::LimitWarning => "limit_warning",
            Kind::LimitReached => "limit_reached",
            Kind::OverageStarted => "overage_started",
            Kind::FeatureDenied => "feature_denied",
            Kind::Activated => "activated",
            Kind::PlanChanged => "plan_changed",
        }
    }
}

/// One milestone that fired, with what its event says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Milestone {
    /// Which.
    pub kind: Kind,
    /// Whose.
    pub tenant: String,
    /// The tenant's plan (after the change, for `plan_changed`).
    pub plan: String,
    /// The meter, for `limit_warning` and `limit_reached`.
    pub meter: Option<String>,
    /// The meter's period label (`2026-11`), for meter milestones.
    pub period: Option<String>,
    /// Units used in the period, for meter milestones.
    pub used: Option<u64>,
    /// The meter's limit, for meter milestones.
    pub limit: Option<u64>,
    /// The plan before, for `plan_changed` (`None`: the tenant had none).
    pub from: Option<String>,
    /// The feature, for `feature_denied`.
    pub feature: Option<String>,
}

impl Milestone {
    fn of_meter(kind: Kind, caller: &Caller, plan: &Plan, m: &MeterUse) -> Milestone {
        Milestone {
            kind,
            tenant: caller.tenant.name.clone(),
            plan: plan.name.clone(),
            meter: Some(m.name.clone()),
            period: Some(period_label(m.period, &m.window)),
            used: Some(m.used),
            limit: Some(m.limit),
            from: None,
            feature: None,
        }
    }

    /// A `plan_changed` milestone (the admin API calls it; one call is one change, so there is
    /// nothing to deduplicate).
    pub fn plan_changed(tenant: &str, from: Option<String>, to: String) -> Milestone {
        Milestone {
            kind: Kind::PlanChanged,
            tenant: tenant.to_string(),
            plan: to,
            meter: None,
            period: None,
            used: None,
            limit: None,
            from,
            feature: None,
        }
    }
}

/// A visitor's client-side anonymous id joined to the identified caller that sent it
/// (`dev.tollgate.identify`, SPEC §6): emitted once per (anonymous id, tenant, user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identify {
    /// The id the visitor's analytics SDK sent (`onboarding.anonymous_id_header`).
    pub anonymous_id: String,
    /// The tenant the credential names.
    pub tenant: String,
    /// The end user, when the credential names one.
    pub user: Option<String>,
}

/// How long the mark of an anonymous → identified link is kept: 400 days, past a yearly
/// renewal. Links are made by visitors, so without an expiry their marks would pile up in
/// Redis for good (about 100 bytes each); the same link made again after this long fires its
/// event again, which a consumer joining on the pair takes as a repeat.
const IDENTIFY_MARK_SECS: i64 = 400 * 86_400;

/// The merge of a call's client-side anonymous id into its identified caller, the first time
/// any instance sees that (anonymous id, tenant, user): a set-if-absent of
/// `tg:{<tenant>}:ms:identify:<hash>`, kept [`IDENTIFY_MARK_SECS`] (see the configuration
/// reference for what the keys cost). After the first call this instance answers
/// from memory, so a visitor's later calls pay no round trip. `None` for anonymous callers and
/// calls without an anonymous id.
pub async fn identify(store: &StoreHandle, caller: &Caller, clock: &dyn Clock) -> Option<Identify> {
    if caller.identity == IdentityKind::Anonymous {
        return None;
    }
    let anonymous_id = caller.client_anonymous_id.as_deref()?;
    let tenant = caller.tenant.name.as_str();
    let user = caller.user.as_deref();
    let key = keys::identify(tenant, anonymous_id, user);
    let expire_at = clock.now().as_second() + IDENTIFY_MARK_SECS;
    once(store, &key, Some(expire_at)).await.then(|| Identify {
        anonymous_id: anonymous_id.to_string(),
        tenant: tenant.to_string(),
        user: user.map(str::to_string),
    })
}

/// Whether `used` is at or past the meter's warning threshold (the `warn_at` part of
/// [`MeterUse::warns`]).
fn past_warning(m: &MeterUse, used: u64) -> bool {
    m.warn_at.is_some_and(|w| used as f64 >= w * m.limit as f64)
}

/// The charge that counts this call towards `activated`, riding in the reservation: one unit
/// on `tg:{<tenant>}:activation`, which expires when the window since the first call closes.
///
/// The first call's time comes from this instance's memory of the `first_call` mark; an
/// instance that has not seen the tenant yet assumes the window starts now. That guess only
/// ever sets the counter's expiry when the counter is created, which happens on the tenant's
/// very first call (then the guess is right) or after the real window closed; and `activated`
/// itself is only fired inside the real window (see [`after_admit`]), so the guess cannot fire
/// it late. `None` once the tenant is known to be activated or past its window.
pub fn activation_charge(
    store: &StoreHandle,
    activation: Option<&Activation>,
    tenant: &str,
    now: Timestamp,
) -> Option<Charge> {
    let activation = activation?;
    if store.marked(&mark_key(tenant, Kind::Activated)).is_some() {
        return None;
    }
    let now = now.as_second();
    let first = store
        .marked(&mark_key(tenant, Kind::FirstCall))
        .unwrap_or(now);
    let end = window_end(first, activation);
    (now < end).then(|| Charge {
        key: keys::activation(tenant),
        units: 1,
        limit: None,
        expire_at: end,
    })
}

fn window_end(first: i64, activation: &Activation) -> i64 {
    let within = i64::try_from(activation.within.as_secs()).unwrap_or(i64::MAX);
    first.saturating_add(within)
}

fn mark_key(tenant: &str, kind: Kind) -> String {
    keys::milestone(tenant, kind.as_str(), None, None)
}

/// Milestones of an admitted, charged call: `first_call`; `activated` when this call's
/// reservation took the activation counter to `activation.calls` inside the window since the
/// first call; `limit_warning` for each meter this reservation carried across its `warn_at`
/// and `overage_started` for each overage meter it carried past its limit (used-before on one
/// side, used-after on the other; with concurrent calls exactly one reservation straddles each
/// threshold).
pub async fn after_admit(
    store: &StoreHandle,
    caller: &Caller,
    plan: &Plan,
    usage: &Usage,
    now: Timestamp,
    activation: Option<&Activation>,
) -> Vec<Milestone> {
    let tenant = caller.tenant.name.as_str();
    let now = now.as_second();
    let mut fired = Vec::new();
    let plain = |kind| Milestone {
        kind,
        tenant: tenant.to_string(),
        plan: plan.name.clone(),
        meter: None,
        period: None,
        used: None,
        limit: None,
        from: None,
        feature: None,
    };
    // The mark holds the first call's time (Unix seconds), which `activated` counts from.
    let first = match mark(store, &mark_key(tenant, Kind::FirstCall), now, None).await {
        Some(None) => {
            fired.push(plain(Kind::FirstCall));
            Some(now)
        }
        Some(Some(at)) => Some(at),
        None => None,
    };
    if let (Some(activation), Some(count), Some(first)) = (activation, usage.activation, first) {
        if count == activation.calls.get()
            && now < window_end(first, activation)
            && once(store, &mark_key(tenant, Kind::Activated), None).await
        {
            fired.push(plain(Kind::Activated));
        }
    }
    for m in &usage.meters {
        let before = m.used.saturating_sub(m.units);
        let crossed = [
            (
                Kind::LimitWarning,
                !past_warning(m, before) && past_warning(m, m.used),
            ),
            (
                Kind::OverageStarted,
                m.overage && before <= m.limit && m.used > m.limit,
            ),
        ];
        for (kind, _) in crossed.into_iter().filter(|(_, crossed)| *crossed) {
            if once(store, &meter_key(tenant, kind, m), Some(meter_expiry(m))).await {
                fired.push(Milestone::of_meter(kind, caller, plan, m));
            }
        }
    }
    fired
}

/// `limit_reached` for the meter that refused the call, the first time in its period.
pub async fn on_quota_exceeded(
    store: &StoreHandle,
    caller: &Caller,
    plan: &Plan,
    meter: &str,
    meters: &[MeterUse],
) -> Option<Milestone> {
    let m = meters.iter().find(|m| m.name == meter)?;
    let key = meter_key(&caller.tenant.name, Kind::LimitReached, m);
    once(store, &key, Some(meter_expiry(m)))
        .await
        .then(|| Milestone::of_meter(Kind::LimitReached, caller, plan, m))
}

/// `feature_denied` for a route's feature the caller's plan lacks, the first time in the
/// period: that of the route's first meter on the plan, else the calendar month (as for the
/// call's usage event).
pub async fn on_feature_denied(
    store: &StoreHandle,
    caller: &Caller,
    plan: &Plan,
    route: &Route,
    feature: &str,
    now: Timestamp,
) -> Option<Milestone> {
    let period = route
        .meter
        .iter()
        .find_map(|m| plan.meters.get(&m.name))
        .map_or(Period::Month, |p| p.period);
    let window = Window::containing(period, caller.tenant.billing_anchor, now).ok()?;
    let tenant = caller.tenant.name.as_str();
    let key = keys::milestone(
        tenant,
        Kind::FeatureDenied.as_str(),
        Some(feature),
        Some(window.start_date),
    );
    let expire_at = window.end.as_second() + EXPIRY_GRACE_SECS;
    once(store, &key, Some(expire_at)).await.then(|| Milestone {
        kind: Kind::FeatureDenied,
        tenant: tenant.to_string(),
        plan: plan.name.clone(),
        meter: None,
        period: Some(period_label(period, &window)),
        used: None,
        limit: None,
        from: None,
        feature: Some(feature.to_string()),
    })
}

fn meter_key(tenant: &str, kind: Kind, m: &MeterUse) -> String {
    keys::milestone(
        tenant,
        kind.as_str(),
        Some(&m.name),
        Some(m.window.start_date),
    )
}

/// A meter milestone's mark lives as long as the period's counter.
fn meter_expiry(m: &MeterUse) -> i64 {
    m.window.end.as_second() + EXPIRY_GRACE_SECS
}

/// Whether this call set `key` (fired the milestone).
async fn once(store: &StoreHandle, key: &str, expire_at: Option<i64>) -> bool {
    matches!(mark(store, key, 1, expire_at).await, Some(None))
}

/// `Some(None)`: this call set `key` to `value`; `Some(Some(v))`: it was set already, to `v`;
/// `None`: the store failed (logged; the milestone is skipped, the call goes on).
async fn mark(
    store: &StoreHandle,
    key: &str,
    value: i64,
    expire_at: Option<i64>,
) -> Option<Option<i64>> {
    match store.mark_once(key, value, expire_at).await {
        Ok(before) => Some(before),
        Err(e) => {
            tracing::warn!(key, error = %e, "Store unavailable; a milestone check was skipped.");
            None
        }
    }
}

/// The `Tollgate-Milestone` value: a structured-field string, or a list of them when one call
/// fired several (for example `first_call` and `limit_warning` on a tiny limit).
pub fn header_value(fired: &[Milestone]) -> Option<String> {
    if fired.is_empty() {
        return None;
    }
    Some(
        fired
            .iter()
            .map(|m| format!("\"{}\"", m.kind.as_str()))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_a_structured_field_string_or_list() {
        let m = Milestone::plan_changed("acme", None, "pro".into());
        assert_eq!(header_value(&[]), None);
        assert_eq!(
            header_value(std::slice::from_ref(&m)).as_deref(),
            Some("\"plan_changed\"")
        );
        assert_eq!(
            header_value(&[m.clone(), m]).as_deref(),
            Some("\"plan_changed\", \"plan_changed\"")
        );
    }
}
