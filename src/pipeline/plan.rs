//! Steps 3 and 4: the caller's plan, and whether it includes the route's feature.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::burst::{BurstLimiter, SharedBurst};
use super::concurrency::InFlight;
use super::identity::Caller;
use super::Rejection;
use crate::config::{Plan, Route, Upgrade};
use crate::telemetry::metrics::{MeterSeries, Metrics};

/// A plan and its runtime state.
pub struct PlanState {
    /// The plan as configured.
    pub plan: Arc<Plan>,
    /// Its burst limiter, if it has a rate limit: the limit itself when it is kept per
    /// instance, the fallback while the store is down when it is shared.
    pub burst: Option<BurstLimiter>,
    /// Its burst limit as the store counts it, when `rate_limit.shared` and the store is
    /// shared by instances (Redis; the embedded store serves one instance, whose own limiter is
    /// the same thing).
    pub shared_burst: Option<SharedBurst>,
    /// Its tenants' calls in flight, if it limits them (`concurrency`).
    pub in_flight: Option<Arc<InFlight>>,
    /// Each meter's metric series.
    pub series: BTreeMap<String, Arc<MeterSeries>>,
}

/// Every plan, by name.
pub struct Plans {
    plans: HashMap<String, PlanState>,
}

/// A call to a route whose feature the plan lacks.
#[derive(Debug, Clone)]
pub struct FeatureDenied {
    /// The feature.
    pub feature: String,
    /// Where to get it.
    pub upgrade: Option<Upgrade>,
}

impl Plans {
    /// Runtime state for the configured plans; `shared_store` when the store is shared by
    /// instances.
    pub fn new<'a>(
        plans: impl Iterator<Item = &'a Arc<Plan>>,
        metrics: &Metrics,
        shared_store: bool,
    ) -> Plans {
        let plans = plans
            .map(|p| {
                let burst = p.rate_limit.as_ref().map(BurstLimiter::new);
                let shared_burst = p
                    .rate_limit
                    .as_ref()
                    .filter(|r| r.shared && shared_store)
                    .map(SharedBurst::new);
                let series = p
                    .meters
                    .keys()
                    .map(|m| (m.clone(), Arc::new(metrics.meter_series(&p.name, m))))
                    .collect();
                (
                    p.name.clone(),
                    PlanState {
                        plan: p.clone(),
                        burst,
                        shared_burst,
                        in_flight: p.concurrency.map(InFlight::new),
                        series,
                    },
                )
            })
            .collect();
        Plans { plans }
    }

    /// The caller's plan: the tenant's, after admin overrides and token claims were applied in
    /// step 2.
    pub fn resolve(&self, caller: &Caller) -> Result<&PlanState, Rejection> {
        self.plans
            .get(&caller.tenant.plan)
            .ok_or(Rejection::Internal("the tenant's plan is not configured"))
    }

    /// The plan called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Plan>> {
        self.plans.get(name).map(|s| &s.plan)
    }

    /// Every plan name, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.plans.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Whether a plan of that name is configured.
    pub fn contains(&self, name: &str) -> bool {
        self.plans.contains_key(name)
    }

    /// Refuses the call when the route needs a feature the plan lacks.
    pub fn check_feature(&self, plan: &Plan, route: &Route) -> Result<(), Rejection> {
        let Some(feature) = &route.feature else {
            return Ok(());
        };
        if plan.features.contains(feature) {
            return Ok(());
        }
        Err(Rejection::FeatureNotInPlan(FeatureDenied {
            feature: feature.clone(),
            upgrade: self.upgrade_for(plan, feature),
        }))
    }

    /// The first plan up the upgrade chain that includes `feature`, offered with the URL of the
    /// step the caller can take now (their own plan's upgrade link).
    fn upgrade_for(&self, plan: &Plan, feature: &str) -> Option<Upgrade> {
        let first = plan.upgrade.as_ref()?;
        let mut next = Some(first);
        let mut hops = 0;
        while let Some(up) = next {
            let candidate = &self.plans.get(&up.plan)?.plan;
            if candidate.features.contains(feature) {
                return Some(Upgrade {
                    plan: candidate.name.clone(),
                    url: first.url.clone(),
                });
            }
            next = candidate.upgrade.as_ref();
            hops += 1;
            if hops > self.plans.len() {
                break; // a cycle in the upgrade chain
            }
        }
        Some(first.clone())
    }

    /// Forgets idle tenants in every burst limiter; returns how many are still tracked.
    pub fn retain_recent(&self) -> usize {
        self.plans
            .values()
            .filter_map(|p| p.burst.as_ref())
            .map(|b| b.retain_recent())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_feature_offer_names_the_first_plan_up_the_chain_that_has_it() {
        let text = "server: { listen: \"127.0.0.1:1\" }\nstore: { kind: embedded }\n\
            plans:\n  free: { upgrade: { plan: plus, url: \"https://x/up\" } }\n\
            \x20 plus: { features: [search], upgrade: { plan: pro, url: \"https://x/pro\" } }\n\
            \x20 pro: { features: [search, export] }\n\
            routes: [{ name: e, match: { path: /e }, respond: { body: x }, feature: export }]\n";
        let config = crate::config::load_str("t.yaml", text, &|_| None).unwrap();
        let metrics = Metrics::unregistered().unwrap();
        let plans = Plans::new(config.plans.values(), &metrics, false);
        let route = &config.routes[0];
        let Err(Rejection::FeatureNotInPlan(denied)) =
            plans.check_feature(&config.plans["free"], route)
        else {
            panic!("free lacks export");
        };
        let upgrade = denied.upgrade.unwrap();
        assert_eq!(
            (upgrade.plan.as_str(), upgrade.url.as_str()),
            ("pro", "https://x/up")
        );
        assert!(plans.check_feature(&config.plans["pro"], route).is_ok());
    }

    #[test]
    fn every_plans_meter_series_exist_at_zero_and_are_the_labelled_ones() {
        let text = "server: { listen: \"127.0.0.1:1\" }\nstore: { kind: embedded }\n\
            plans:\n  free: { meters: { requests: { limit: 5, period: day } } }\n\
            \x20 pro: { meters: { requests: { limit: 9, period: month }, tokens: { limit: 9, period: month } } }\n\
            routes: [{ name: e, match: { path: /e }, respond: { body: x } }]\n";
        let config = crate::config::load_str("t.yaml", text, &|_| None).unwrap();
        let registry = prometheus::Registry::new();
        let metrics = Metrics::new(&registry).unwrap();
        let plans = Plans::new(config.plans.values(), &metrics, false);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        let zeros = |metric: &str| {
            let mut lines: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with(metric) && l.ends_with("} 0"))
                .collect();
            lines.sort_unstable();
            lines
        };
        assert_eq!(
            zeros(crate::telemetry::metrics::METER_UNITS),
            [
                r#"tollgate_meter_units_total{meter="requests",plan="free"} 0"#,
                r#"tollgate_meter_units_total{meter="requests",plan="pro"} 0"#,
                r#"tollgate_meter_units_total{meter="tokens",plan="pro"} 0"#,
            ]
        );
        // within, near and over for each of the three.
        assert_eq!(zeros(crate::telemetry::metrics::LIMIT_CALLS).len(), 9);
        // A call's handles move the same series a labelled look-up reads.
        let pro = &plans.plans["pro"].series["tokens"];
        pro.units.inc_by(7);
        pro.near.inc();
        assert_eq!(
            metrics
                .meter_units
                .with_label_values(&["pro", "tokens"])
                .get(),
            7
        );
        assert_eq!(
            metrics
                .limit_calls
                .with_label_values(&["pro", "tokens", "near"])
                .get(),
            1
        );
    }
}
