//! How each call ended, and the metrics and log line that record it.

use std::time::Instant;

use std::sync::Arc;

use crate::config::{Plan, Route};
use crate::pipeline::{Admission, Gateway, Refused, Rejection};

/// The `outcome` of a call (SPEC §6), plus the ways a call can end before identification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Admitted within limits.
    Allowed,
    /// Admitted past the limit of an overage meter.
    Overage,
    /// 402: a meter is exhausted.
    QuotaExceeded,
    /// 402: the plan lacks the route's feature.
    FeatureDenied,
    /// 429: burst limit.
    RateLimited,
    /// 401.
    Unauthenticated,
    /// 5xx from the upstream, or it could not be reached.
    UpstreamError,
    /// An `auth: none` route.
    Public,
    /// 404: no route.
    NoRoute,
    /// 400: malformed request.
    BadRequest,
    /// 503: store down under fail_closed.
    StoreUnavailable,
    /// A plugin on the route refused the call.
    PluginDenied,
    /// 500.
    Internal,
    /// A CORS preflight, answered by the gateway (`cors`).
    Preflight,
    /// 413: the request body is over the route's `max_request_body`.
    TooLarge,
}

impl Outcome {
    /// The label used in metrics and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Overage => "overage",
            Outcome::QuotaExceeded => "quota_exceeded",
            Outcome::FeatureDenied => "feature_denied",
            Outcome::RateLimited => "rate_limited",
            Outcome::Unauthenticated => "unauthenticated",
            Outcome::UpstreamError => "upstream_error",
            Outcome::Public => "public",
            Outcome::NoRoute => "no_route",
            Outcome::Preflight => "preflight",
            Outcome::BadRequest => "bad_request",
            Outcome::StoreUnavailable => "store_unavailable",
            Outcome::PluginDenied => "plugin_denied",
            Outcome::Internal => "internal_error",
            Outcome::TooLarge => "too_large",
        }
    }

    /// The outcome of an admitted call, before the upstream answers.
    pub fn of_admission(a: &Admission) -> Outcome {
        match a {
            Admission::Public(_) => Outcome::Public,
            Admission::Admitted(a) if a.usage.meters.iter().any(|m| m.in_overage()) => {
                Outcome::Overage
            }
            Admission::Admitted(_) => Outcome::Allowed,
        }
    }

    /// The outcome of a refused call.
    pub fn of_rejection(r: &Refused) -> Outcome {
        match r.rejection {
            Rejection::BadPath | Rejection::BadIdempotencyKey => Outcome::BadRequest,
            Rejection::NoRoute => Outcome::NoRoute,
            Rejection::Unauthenticated(_) => Outcome::Unauthenticated,
            Rejection::FeatureNotInPlan(_) => Outcome::FeatureDenied,
            Rejection::RateLimited(_) | Rejection::TooManyInFlight(_) => Outcome::RateLimited,
            Rejection::QuotaExceeded(_) => Outcome::QuotaExceeded,
            Rejection::StoreUnavailable => Outcome::StoreUnavailable,
            Rejection::Internal(_) => Outcome::Internal,
            Rejection::TooLarge { .. } => Outcome::TooLarge,
        }
    }
}

/// The route and plan a call got as far as, when known.
#[derive(Default)]
pub struct Labels {
    /// The matched route.
    pub route: Option<Arc<Route>>,
    /// The caller's plan.
    pub plan: Option<Arc<Plan>>,
    /// The tenant of a refused call that got past identification (for the access log).
    pub tenant: Option<String>,
    /// The meter that refused the call with a 402, if one did.
    pub exhausted: Option<String>,
}

impl Labels {
    /// What a refused call got as far as.
    pub fn of_refused(refused: &Refused) -> Labels {
        Labels {
            route: refused.route.clone(),
            plan: refused.plan.clone(),
            tenant: refused.caller.as_ref().map(|c| c.tenant.name.clone()),
            exhausted: match &refused.rejection {
                Rejection::QuotaExceeded(q) => Some(q.meter.clone()),
                _ => None,
            },
        }
    }
}

/// A finished call, as the metrics and the log see it.
pub struct Finished<'a> {
    /// When it arrived.
    pub started: Instant,
    /// How it ended.
    pub outcome: Outcome,
    /// Its route, if one matched.
    pub route: Option<&'a Route>,
    /// Its plan, if resolved.
    pub plan: Option<&'a Plan>,
    /// What was admitted, if anything.
    pub admission: Option<&'a Admission>,
    /// Whether the reservation was refunded.
    pub refunded: bool,
    /// The status sent (0 when none was).
    pub status: u16,
    /// The caller's tenant, when identified (admitted or refused after step 2).
    pub tenant: Option<&'a str>,
    /// The meter whose limit refused the call (402), if one did.
    pub exhausted: Option<&'a str>,
    /// The call's id (`server.request_id`), if it has one.
    pub request_id: Option<uuid::Uuid>,
}

/// Whether this call goes into the access log: all of them at 1, none at 0, else at random
/// (a per-call coin, so every instance samples alike without coordination).
fn sampled(rate: f64) -> bool {
    rate >= 1.0 || (rate > 0.0 && rand::random::<f64>() < rate)
}

impl Finished<'_> {
    /// Records the call in the metrics and the debug log.
    pub fn record(&self, gw: &Gateway) {
        let route = self.route.map_or("", |r| r.name.as_str());
        let plan = self.plan.map_or("", |p| p.name.as_str());
        let m = &gw.metrics;
        m.requests
            .with_label_values(&[route, plan, self.outcome.as_str()])
            .inc();
        m.request_duration
            .with_label_values(&[route])
            .observe(self.started.elapsed().as_secs_f64());
        let admitted = match self.admission {
            Some(Admission::Admitted(a)) => Some(a),
            _ => None,
        };
        if let Some(a) = admitted.filter(|a| !self.refunded && a.usage.metered && !a.usage.replayed)
        {
            for meter in &a.usage.meters {
                let state = if meter.in_overage() {
                    "over"
                } else if meter.warns() {
                    "near"
                } else {
                    "within"
                };
                // The series resolved with the plan, else (a meter charged outside a running
                // gateway's plans) the labelled look-up.
                match &meter.series {
                    Some(s) => {
                        s.units.inc_by(meter.units);
                        match state {
                            "over" => &s.over,
                            "near" => &s.near,
                            _ => &s.within,
                        }
                        .inc();
                    }
                    None => {
                        m.meter_units
                            .with_label_values(&[plan, &meter.name])
                            .inc_by(meter.units);
                        m.limit_calls
                            .with_label_values(&[plan, &meter.name, state])
                            .inc();
                    }
                }
            }
        }
        if let Some(meter) = self.exhausted {
            m.limit_calls
                .with_label_values(&[plan, meter, "over"])
                .inc();
        }
        if sampled(gw.access_log_sample) {
            tracing::info!(
                target: "tollgate::access",
                tenant = self.tenant.unwrap_or(""),
                route,
                plan,
                outcome = self.outcome.as_str(),
                status = self.status,
                latency_ms = self.started.elapsed().as_secs_f64() * 1000.0,
                request_id = self.request_id.map(tracing::field::display),
                "Call finished."
            );
        }
    }
}
