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
            Outcome::BadRequest => "bad_request",
            Outcome::StoreUnavailable => "store_unavailable",
            Outcome::PluginDenied => "plugin_denied",
            Outcome::Internal => "internal_error",
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
            Rejection::RateLimited(_) => Outcome::RateLimited,
            Rejection::QuotaExceeded(_) => Outcome::QuotaExceeded,
            Rejection::StoreUnavailable => Outcome::StoreUnavailable,
            Rejection::Internal(_) => Outcome::Internal,
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
                m.meter_units
                    .with_label_values(&[plan, &meter.name])
                    .inc_by(meter.units);
            }
        }
        tracing::debug!(
            tenant = admitted.map_or("", |a| a.caller.tenant.name.as_str()),
            route,
            plan,
            outcome = self.outcome.as_str(),
            status = self.status,
            latency_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            "Call finished."
        );
    }
}
