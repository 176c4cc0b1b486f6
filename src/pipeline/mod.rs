//! The request path, in the order it happens (SPEC §3). One file per step:
//! `route` → `identity` → `plan` (plan and feature) → `burst` → `meter` (a shared burst limit is
//! checked with the reservation); `headers` builds the usage headers of the answer.

pub mod burst;
pub mod client_ip;
pub mod concurrency;
pub mod headers;
pub mod identity;
pub mod jwt;
pub mod measure;
pub mod meter;
pub mod milestone;
pub mod plan;
pub mod route;

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, Method};

use crate::config::{Config, OnOutage, Plan, Route, RouteAuth, Tenant};
use crate::meter::period::Clock;
use crate::store::{self, StoreHandle};
use crate::telemetry::metrics::Metrics;
use burst::{BurstExceeded, BurstState};
use identity::{AnonymousTier, ApiKeys, AuthFailure, Caller, KeyCheck};
use meter::{QuotaExceeded, Usage};
use plan::{FeatureDenied, Plans};
use route::RouteTable;

/// The compiled configuration and the parts every call uses.
pub struct Gateway {
    routes: RouteTable,
    keys: ApiKeys,
    jwt: jwt::JwtAuth,
    tenants: std::collections::BTreeMap<String, Arc<Tenant>>,
    anonymous: Option<AnonymousTier>,
    /// Plans and their burst limiters.
    pub plans: Plans,
    /// The counter store.
    pub store: StoreHandle,
    clock: Arc<dyn Clock>,
    on_outage: OnOutage,
    /// Metrics.
    /// Every upstream of the config, routed to or not (their host names are kept resolved).
    pub upstreams: Vec<Arc<crate::config::Upstream>>,
    /// `cors`: browser calls from other origins.
    pub cors: Option<Arc<crate::config::Cors>>,
    pub metrics: Arc<Metrics>,
    /// Fraction of calls written to the access log.
    pub access_log_sample: f64,
    /// Whether lifecycle milestones are detected (`onboarding:` is configured).
    pub milestones: bool,
    /// What makes a tenant `activated`, when milestones are on and it is configured.
    activation: Option<crate::config::Activation>,
    /// Where a visitor's client-side anonymous id comes from, when onboarding is configured.
    anonymous_id_header: Option<http::HeaderName>,
    /// `server.max_request_body`, for routes without their own.
    max_request_body: Option<u64>,
}

/// Why a call is refused before it reaches the upstream. `proxy::respond` turns each into its
/// HTTP answer; nothing else writes error bodies.
#[derive(Debug)]
pub enum Rejection {
    /// The path is spelled in a way routes are not matched against.
    BadPath,
    /// No route matches.
    NoRoute,
    /// An `Idempotency-Key` that is empty, too long or not visible text.
    BadIdempotencyKey,
    /// The caller could not be identified.
    Unauthenticated(AuthFailure),
    /// The route needs a feature the plan lacks.
    FeatureNotInPlan(FeatureDenied),
    /// Too many calls at once.
    RateLimited(BurstExceeded),
    /// Too many calls of the tenant in flight (`concurrency`).
    TooManyInFlight(concurrency::ConcurrencyExceeded),
    /// A blocking meter would pass its limit.
    QuotaExceeded(Box<QuotaExceeded>),
    /// The store is down and the plan fails closed.
    StoreUnavailable,
    /// A state the config should have ruled out.
    Internal(&'static str),
    /// The request's `Content-Length` is over the route's `max_request_body`.
    TooLarge {
        /// The route's limit, in bytes.
        limit: u64,
        /// The request's `Content-Length`.
        length: u64,
    },
}

/// A call allowed through to its route's target.
pub enum Admission {
    /// An `auth: none` route: not identified, not metered.
    Public(Arc<Route>),
    /// An identified, metered call.
    Admitted(Box<Admitted>),
}

/// Everything the rest of the call needs to know about an admitted caller.
pub struct Admitted {
    /// The route.
    pub route: Arc<Route>,
    /// Who.
    pub caller: Caller,
    /// On which plan.
    pub plan: Arc<Plan>,
    /// Burst allowance after this call, if the plan has a rate limit.
    pub burst: Option<BurstState>,
    /// The call's place among its tenant's calls in flight, if the plan limits them; given
    /// back when the call's state is dropped, at the end of its answer.
    pub in_flight: Option<concurrency::Slot>,
    /// What was reserved.
    pub usage: Usage,
    /// Lifecycle milestones this call fired.
    pub milestones: Vec<milestone::Milestone>,
    /// The anonymous → identified merge this call made, if it was the first to.
    pub identify: Option<milestone::Identify>,
}

/// Who was refused, when they got far enough to be known (for the answer and the metrics).
pub struct Refused {
    /// Why.
    pub rejection: Rejection,
    /// The matched route, if any.
    pub route: Option<Arc<Route>>,
    /// The identified caller, if any.
    pub caller: Option<Caller>,
    /// Their plan, if resolved.
    pub plan: Option<Arc<Plan>>,
    /// Burst state, when the burst step passed.
    pub burst: Option<BurstState>,
    /// Lifecycle milestones this refusal fired (`limit_reached`, `feature_denied`).
    pub milestones: Vec<milestone::Milestone>,
    /// The anonymous → identified merge this call made (a refused call is still identified).
    pub identify: Option<milestone::Identify>,
}

/// The call's `Idempotency-Key`, if it sent one (a quoted or plain string of 1–255 visible
/// characters; stored only as a hash).
fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, Rejection> {
    // A `HeaderName` rather than a `&str`: a string is parsed and lowercased on every look-up.
    static IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static("idempotency-key");
    let Some(value) = headers.get(&IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map(|v| v.trim().trim_matches('"'))
        .unwrap_or_default();
    if key.is_empty() || key.len() > 255 {
        return Err(Rejection::BadIdempotencyKey);
    }
    Ok(Some(key))
}

/// The request's `Content-Length`, when it has one (pingora refuses a malformed one).
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

impl Gateway {
    /// Builds the request path from a validated config.
    pub fn new(
        config: &Config,
        store: StoreHandle,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Gateway {
        crate::proxy::balance::reset_metrics(&metrics, config.upstreams.values().map(|u| &**u));
        Gateway {
            upstreams: config.upstreams.values().cloned().collect(),
            cors: config.cors.clone(),
            routes: RouteTable::new(config.routes.clone()),
            anonymous: config.auth.anonymous.as_ref().and_then(AnonymousTier::new),
            jwt: jwt::JwtAuth::new(&config.auth.jwt),
            tenants: config.tenants.clone(),
            keys: ApiKeys::new(
                config.auth.api_key_headers.clone(),
                identity::static_index(config.tenants.values()),
            ),
            plans: Plans::new(
                config.plans.values(),
                &metrics,
                !matches!(config.store.kind, crate::config::StoreKind::Embedded { .. }),
            ),
            store,
            clock,
            on_outage: config.store.on_outage,
            metrics,
            access_log_sample: config.server.access_log_sample,
            milestones: config.onboarding.is_some(),
            activation: config
                .onboarding
                .as_ref()
                .and_then(|o| o.activation.clone()),
            anonymous_id_header: config
                .onboarding
                .as_ref()
                .map(|o| o.anonymous_id_header.clone()),
            max_request_body: config.server.max_request_body,
        }
    }

    /// Whether routes are matched by host too, so [`Gateway::admit`] needs the call's host.
    pub fn routes_by_host(&self) -> bool {
        self.routes.by_host()
    }

    /// The largest request body `route` takes: its own `max_request_body`, else the server's.
    pub fn body_limit(&self, route: &Route) -> Option<u64> {
        route.max_request_body.or(self.max_request_body)
    }

    /// Decides whether a call may go through, reserving its usage if so (SPEC §3, steps 1–6).
    pub async fn admit(
        &self,
        method: &Method,
        host: Option<&str>,
        path: &str,
        headers: &HeaderMap,
        peer: IpAddr,
    ) -> Result<Admission, Box<Refused>> {
        let mut refused = Refused {
            rejection: Rejection::NoRoute,
            route: None,
            caller: None,
            plan: None,
            burst: None,
            milestones: Vec::new(),
            identify: None,
        };
        macro_rules! step {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(rejection) => {
                        refused.rejection = rejection;
                        return Err(Box::new(refused));
                    }
                }
            };
        }
        step!(if route::path_is_normal(path) {
            Ok(())
        } else {
            Err(Rejection::BadPath)
        });
        let route = step!(self
            .routes
            .pick(method, host, path)
            .ok_or(Rejection::NoRoute))
        .clone(); // 1. where
        refused.route = Some(route.clone());
        // A body announced too large is refused before anything is charged or identified; one
        // that arrives too large without a length is cut off in `proxy::request_body_filter`.
        if let Some(limit) = self.body_limit(&route) {
            if let Some(length) = content_length(headers).filter(|&l| l > limit) {
                step!(Err(Rejection::TooLarge { limit, length }));
            }
        }
        if route.auth == RouteAuth::None {
            return Ok(Admission::Public(route));
        }
        let caller = step!(self.identify(headers, peer).await); // 2. who
        self.store.plan_overrides_loaded().await;
        let mut caller = self.with_plan_override(caller);
        if let Some(header) = &self.anonymous_id_header {
            caller.client_anonymous_id = identity::client_anonymous_id(headers, header);
            refused.identify = milestone::identify(&self.store, &caller, self.clock.as_ref()).await;
        }
        refused.caller = Some(caller.clone());
        let plan = step!(self.plans.resolve(&caller)); // 3. what they bought
        refused.plan = Some(plan.plan.clone());
        let featured = self.plans.check_feature(&plan.plan, &route);
        if let (true, Err(Rejection::FeatureNotInPlan(f))) = (self.milestones, &featured) {
            let now = self.clock.now();
            refused.milestones.extend(
                milestone::on_feature_denied(
                    &self.store,
                    &caller,
                    &plan.plan,
                    &route,
                    &f.feature,
                    now,
                )
                .await,
            );
        }
        step!(featured); // 4. may they

        // 5. not too fast: here when each instance keeps the limit; with the reservation when
        // the store keeps it for all of them.
        let burst = match (&plan.burst, &plan.shared_burst) {
            (Some(b), None) => Some(step!(b
                .check(&caller.tenant.name)
                .map_err(Rejection::RateLimited))),
            _ => None,
        };
        refused.burst = burst;
        // 5b. not too many at once: taken before the reservation, so a call refused here is
        // charged nothing; given back if the reservation refuses the call.
        let in_flight = match &plan.in_flight {
            Some(f) => Some(step!(f
                .acquire(&caller.tenant.name)
                .map_err(Rejection::TooManyInFlight))),
            None => None,
        };
        let now = self.clock.now();
        let idempotency_key = step!(idempotency_key(headers));
        let reserved = meter::reserve(
            &self.store,
            now,
            &caller,
            plan,
            &route,
            self.on_outage,
            meter::Extra {
                idempotency_key,
                activation: milestone::activation_charge(
                    &self.store,
                    self.activation.as_ref(),
                    &caller.tenant.name,
                    now,
                ),
            },
        )
        .await;
        if let Err(Rejection::QuotaExceeded(q)) = &reserved {
            refused.burst = refused.burst.or(q.burst);
        }
        if let (true, Err(Rejection::QuotaExceeded(q))) = (self.milestones, &reserved) {
            refused.milestones.extend(
                milestone::on_quota_exceeded(&self.store, &caller, &plan.plan, &q.meter, &q.meters)
                    .await,
            );
        }
        let usage = step!(reserved); // 6. not too much
        if !usage.metered {
            self.metrics
                .unmetered
                .with_label_values(&[&route.name, "store_unavailable"])
                .inc();
        }
        let milestones = if self.milestones && usage.metered && !usage.replayed {
            milestone::after_admit(
                &self.store,
                &caller,
                &plan.plan,
                &usage,
                now,
                self.activation.as_ref(),
            )
            .await
        } else {
            Vec::new()
        };
        Ok(Admission::Admitted(Box::new(Admitted {
            route,
            caller,
            plan: plan.plan.clone(),
            burst: burst.or(usage.burst),
            in_flight,
            usage,
            milestones,
            identify: refused.identify.take(),
        })))
    }

    /// The caller on the plan an operator set for its tenant (`PUT /admin/v1/tenants/{t}/plan`),
    /// which wins over the config, the token's claim and the key record. An override naming a
    /// plan this config lacks (set before a reload removed it) is ignored, with a warning.
    fn with_plan_override(&self, mut caller: Caller) -> Caller {
        let Some(plan) = self.store.plan_override(&caller.tenant.name) else {
            return caller;
        };
        if plan == caller.tenant.plan || caller.identity == identity::IdentityKind::Anonymous {
            return caller;
        }
        if !self.plans.contains(&plan) {
            tracing::warn!(tenant = %caller.tenant.name, plan = %plan, "The tenant's plan override names no configured plan; ignoring it.");
            return caller;
        }
        caller.tenant = Arc::new(caller.tenant.on_plan(plan));
        caller
    }

    /// A JWT (a bearer credential with two dots, when issuers are configured), else an API key,
    /// else anonymous (when configured and no credential at all was sent). A call that sends a
    /// bad credential is refused, never quietly treated as anonymous.
    async fn identify(&self, headers: &HeaderMap, peer: IpAddr) -> Result<Caller, Rejection> {
        if !self.jwt.is_empty() {
            if let Some(token) = identity::bearer_token(headers).filter(|t| jwt::looks_like_jwt(t))
            {
                return self
                    .jwt_caller(token)
                    .await
                    .map_err(Rejection::Unauthenticated);
            }
        }
        match (self.keys.authenticate(headers), &self.anonymous) {
            (Ok(KeyCheck::Found(caller)), _) => Ok(caller),
            (Ok(KeyCheck::LookUp(digest)), _) => self.runtime_key(digest).await,
            (Err(AuthFailure::Missing), Some(anonymous)) => Ok(anonymous.caller(peer, headers)),
            (Err(failure), _) => Err(Rejection::Unauthenticated(failure)),
        }
    }

    /// The caller a verified token names. The plan is the token's plan claim when it has one,
    /// else the configured tenant's plan, else the issuer's `default_plan`.
    async fn jwt_caller(&self, token: &str) -> Result<Caller, AuthFailure> {
        let claims = self.jwt.verify(token, self.clock.now().as_second()).await?;
        let default_plan = self
            .jwt
            .issuer(claims.issuer)
            .and_then(|i| i.default_plan.clone());
        let configured = self.tenants.get(&claims.tenant);
        let plan = match claims.plan {
            Some(p) if self.plans.contains(&p) => p,
            Some(_) => return Err(AuthFailure::UnknownPlanClaim),
            None => configured
                .map(|t| t.plan.clone())
                .or(default_plan)
                .ok_or(AuthFailure::NoPlan)?,
        };
        let tenant = match configured {
            Some(t) if t.plan == plan => t.clone(),
            Some(t) => Arc::new(t.on_plan(plan)),
            None => Arc::new(Tenant::new(claims.tenant, plan, None, Vec::new())),
        };
        Ok(Caller {
            tenant,
            identity: identity::IdentityKind::Jwt,
            key_id: None,
            user: claims.user,
            client_anonymous_id: None,
        })
    }

    /// A key not in the config, looked up in the store on every call, so a key filed or revoked
    /// there takes effect on the next call. Its tenant is the config's when the config has it
    /// (with the config's plan), else the tenant's plan override in the store.
    async fn runtime_key(&self, digest: [u8; 32]) -> Result<Caller, Rejection> {
        let record = match self.store.lookup_key(&hex::encode(digest)).await {
            Ok(Some(record)) => record,
            Ok(None) => return Err(Rejection::Unauthenticated(AuthFailure::UnknownKey)),
            Err(e) => {
                tracing::warn!(error = %e, "Store unavailable; cannot look up an API key.");
                return Err(Rejection::StoreUnavailable);
            }
        };
        let tenant = match self.tenants.get(&record.tenant) {
            Some(t) => t.clone(),
            None => {
                let plan = record
                    .plan
                    .filter(|p| self.plans.contains(p))
                    .ok_or(Rejection::Unauthenticated(AuthFailure::NoPlan))?;
                Arc::new(Tenant::new(record.tenant, plan, None, Vec::new()))
            }
        };
        Ok(Caller {
            tenant,
            identity: identity::IdentityKind::ApiKey,
            key_id: Some(Arc::from(record.id)),
            user: None,
            client_anonymous_id: None,
        })
    }

    /// Step 8 for response-measured meters: replaces each reservation with the measured amount
    /// in one store call, and updates `admitted` to the settled units.
    ///
    /// The store call runs in the background: it happens after the answer was sent, and
    /// awaiting it would hold the client's connection (pingora logs a call before reading the
    /// next request on the connection) for a store round trip.
    pub fn settle(&self, admitted: &mut Admitted, measured: &[measure::Measured]) {
        let mut adjustments = Vec::with_capacity(measured.len());
        for m in measured {
            let Some(route_meter) = admitted.route.meter.get(m.index) else {
                continue;
            };
            let Some(j) = admitted
                .usage
                .meters
                .iter()
                .position(|u| u.name == route_meter.name)
            else {
                continue;
            };
            let (usage, charge) = (
                &mut admitted.usage.meters[j],
                admitted.usage.reservation.charges.get(j),
            );
            if m.defaulted {
                self.metrics
                    .meter_defaults
                    .with_label_values(&[&admitted.route.name, &usage.name])
                    .inc();
            }
            let delta = m.units as i64 - usage.units as i64;
            if let (Some(charge), true) = (charge, delta != 0) {
                adjustments.push(store::Adjustment {
                    key: charge.key.clone(),
                    delta,
                });
            }
            usage.used = (usage.used as i64 + delta).max(0) as u64;
            usage.units = m.units;
        }
        if adjustments.is_empty() {
            return;
        }
        let store = self.store.clone();
        let tenant = admitted.caller.tenant.name.clone();
        tokio::spawn(async move {
            if let Err(e) = store.settle(&adjustments).await {
                tracing::warn!(tenant = %tenant, error = %e, ?adjustments, "Settling measured usage failed; the reservation stands.");
            }
        });
    }

    /// Takes back an admitted call's reservation (upstream failed).
    pub async fn refund(&self, admitted: &Admitted) {
        meter::refund(&self.store, &admitted.caller.tenant.name, &admitted.usage).await;
    }

    /// Headers that carry credentials: never forwarded upstream.
    pub fn credential_headers(&self) -> &[http::HeaderName] {
        self.keys.headers()
    }

    /// A tenant of the config.
    pub fn tenant(&self, name: &str) -> Option<&Arc<Tenant>> {
        self.tenants.get(name)
    }

    /// The config's tenants, by id.
    pub fn tenants(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        self.tenants.values()
    }

    /// The JWKS-backed key sets of `auth.jwt`, for the background refresher.
    pub fn jwks(&self) -> Vec<Arc<jwt::Jwks>> {
        self.jwt.key_sets()
    }

    /// The current time, from the injected clock.
    pub fn now(&self) -> jiff::Timestamp {
        self.clock.now()
    }
}
