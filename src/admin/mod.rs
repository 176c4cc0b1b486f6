//! The admin listener (SPEC §7): `/metrics`, `/healthz`, `/readyz` for anyone who can reach
//! it, and the `/admin/v1/…` routes behind `Authorization: Bearer <admin.token>`.
//!
//! Without `admin.token` the `/admin/v1/…` routes are off (404), never open. Bodies are JSON
//! both ways, at most 64 KiB in; errors are RFC 9457 problem bodies.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use prometheus::{Encoder, Registry, TextEncoder};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use crate::meter::period::Window;
use crate::pipeline::milestone::Milestone;
use crate::pipeline::Gateway;
use crate::reload::{ReloadError, Reloader};
use crate::store::{keys, KeyRecord};
use crate::telemetry::emit::Emitter;

/// Largest request body the admin routes read.
const MAX_BODY: usize = 64 * 1024;

/// The admin HTTP application.
pub struct AdminApp {
    gateway: Arc<ArcSwap<Gateway>>,
    registry: Registry,
    token: Option<String>,
    reloader: Option<Arc<Reloader>>,
    draining: Arc<AtomicBool>,
    /// Where `plan_changed` milestones go, when telemetry is configured.
    events: Option<Arc<Emitter>>,
}

/// One answer: status, content type, body.
struct Answer {
    status: StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
    www_authenticate: bool,
}

impl Answer {
    fn text(status: StatusCode, body: &str) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
            www_authenticate: false,
        }
    }

    fn json(status: StatusCode, body: &Value) -> Answer {
        Answer {
            status,
            content_type: "application/json",
            body: body.to_string().into_bytes(),
            www_authenticate: false,
        }
    }

    /// An RFC 9457 problem of type `urn:tollgate:admin-<kind>`.
    fn problem(status: StatusCode, kind: &str, detail: impl Into<String>, path: &str) -> Answer {
        let body = json!({
            "type": format!("urn:tollgate:admin-{kind}"),
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "detail": detail.into(),
            "instance": path,
        });
        Answer {
            status,
            content_type: "application/problem+json",
            body: body.to_string().into_bytes(),
            www_authenticate: status == StatusCode::UNAUTHORIZED,
        }
    }
}

/// An admin call as the routes see it (the body already read).
struct Call<'a> {
    method: &'a Method,
    path: &'a str,
    body: &'a [u8],
}

impl AdminApp {
    /// Serves `registry` at `/metrics`, the health of `gateway`, and, with a `token`, the admin
    /// routes (reload needs a `reloader`).
    pub fn new(
        gateway: Arc<ArcSwap<Gateway>>,
        registry: Registry,
        token: Option<String>,
        reloader: Option<Arc<Reloader>>,
        draining: Arc<AtomicBool>,
    ) -> AdminApp {
        AdminApp {
            gateway,
            registry,
            token,
            reloader,
            draining,
            events: None,
        }
    }

    /// Emits `plan_changed` milestones through `events` (the proxy's emitter).
    pub fn with_events(mut self, events: Option<Arc<Emitter>>) -> AdminApp {
        self.events = events;
        self
    }

    async fn route(&self, call: &Call<'_>, authorization: Option<&str>) -> Answer {
        let get = call.method == Method::GET || call.method == Method::HEAD;
        match call.path {
            "/healthz" if get => Answer::text(StatusCode::OK, "ok\n"),
            "/readyz" if get && self.draining.load(Ordering::SeqCst) => {
                Answer::text(StatusCode::SERVICE_UNAVAILABLE, "draining: shutting down\n")
            }
            "/readyz" if get => match self.gateway.load().store.ping().await {
                Ok(()) => Answer::text(StatusCode::OK, "ready\n"),
                Err(e) => Answer::text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("not ready: {e}\n"),
                ),
            },
            "/metrics" if get => self.metrics(),
            "/healthz" | "/readyz" | "/metrics" => {
                Answer::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            p if p.starts_with("/admin/") => match self.authorize(authorization, p) {
                Ok(()) => self.admin(call).await,
                Err(refused) => refused,
            },
            _ => Answer::text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    fn metrics(&self) -> Answer {
        let mut buf = Vec::new();
        match TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            Ok(()) => Answer {
                status: StatusCode::OK,
                content_type: "text/plain; version=0.0.4",
                body: buf,
                www_authenticate: false,
            },
            Err(e) => Answer::text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }

    /// The bearer admin token, compared in constant time.
    fn authorize(&self, authorization: Option<&str>, path: &str) -> Result<(), Answer> {
        let Some(token) = &self.token else {
            return Err(Answer::problem(
                StatusCode::NOT_FOUND,
                "off",
                "The admin API is off: set `admin.token` in the config to turn it on.",
                path,
            ));
        };
        let presented = authorization
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        match presented {
            Some(t) if bool::from(t.as_bytes().ct_eq(token.as_bytes())) => Ok(()),
            Some(_) => Err(Answer::problem(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "The admin token is wrong.",
                path,
            )),
            None => Err(Answer::problem(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Send the admin token as `Authorization: Bearer <token>`.",
                path,
            )),
        }
    }

    async fn admin(&self, call: &Call<'_>) -> Answer {
        let rest = call.path.trim_start_matches("/admin/v1/");
        let parts: Vec<&str> = rest.split('/').collect();
        let m = call.method;
        match parts.as_slice() {
            ["reload"] if m == Method::POST => self.reload(call.path),
            ["tenants"] if m == Method::GET => self.list_tenants(),
            ["upstreams"] if m == Method::GET => self.list_upstreams(),
            ["tenants", t, "usage"] if m == Method::GET => self.usage(t, call.path).await,
            ["tenants", t, "usage"] if m == Method::POST => self.adjust(t, call).await,
            ["tenants", t, "plan"] if m == Method::PUT => self.set_plan(t, call).await,
            ["tenants", t, "keys"] if m == Method::POST => self.create_key(t, call).await,
            ["tenants", t, "keys"] if m == Method::GET => self.list_keys(t, call.path).await,
            ["tenants", t, "keys", id] if m == Method::DELETE => {
                self.revoke_key(t, id, call.path).await
            }
            ["reload"]
            | ["upstreams"]
            | ["tenants", _, "usage" | "plan" | "keys"]
            | ["tenants", _, "keys", _] => Answer::problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                format!("{m} is not allowed here."),
                call.path,
            ),
            _ => Answer::problem(
                StatusCode::NOT_FOUND,
                "no-route",
                "No admin route has this path.",
                call.path,
            ),
        }
    }

    fn reload(&self, path: &str) -> Answer {
        let Some(reloader) = &self.reloader else {
            return Answer::problem(
                StatusCode::CONFLICT,
                "no-file",
                "This gateway was not started from a config file.",
                path,
            );
        };
        match reloader.reload("admin API") {
            Ok(done) => Answer::json(
                StatusCode::OK,
                &json!({"reloaded": true, "needs_restart": done.needs_restart}),
            ),
            Err(ReloadError::Invalid(errors)) => {
                let list: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
                let mut a = Answer::problem(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid-config",
                    "The config file has errors; the old config keeps serving.",
                    path,
                );
                if let Ok(mut body) = serde_json::from_slice::<Value>(&a.body) {
                    body["errors"] = json!(list);
                    a.body = body.to_string().into_bytes();
                }
                a
            }
            Err(e) => Answer::problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "reload-failed",
                e.to_string(),
                path,
            ),
        }
    }

    /// The tenant's plan name: the override, else the config's. `None`: nobody knows it.
    fn plan_of(&self, gw: &Gateway, tenant: &str) -> Option<String> {
        gw.store
            .plan_override(tenant)
            .filter(|p| gw.plans.contains(p))
            .or_else(|| gw.tenant(tenant).map(|t| t.plan.clone()))
    }

    async fn usage(&self, tenant: &str, path: &str) -> Answer {
        let gw = self.gateway.load_full();
        let Some(plan_name) = self.plan_of(&gw, tenant) else {
            return unknown_tenant(tenant, path);
        };
        let Some(plan) = gw.plans.get(&plan_name) else {
            return unknown_tenant(tenant, path);
        };
        let mut windows = Vec::new();
        for (meter, policy) in &plan.meters {
            match current_window(&gw, tenant, policy.period, path) {
                Ok(w) => windows.push((meter, policy, w)),
                Err(answer) => return answer,
            }
        }
        let counter_keys: Vec<String> = windows
            .iter()
            .map(|(meter, _, w)| keys::counter(tenant, meter, w.start_date))
            .collect();
        let used = match gw.store.get(&counter_keys).await {
            Ok(u) => u,
            Err(e) => return store_unavailable(&e, path),
        };
        let mut meters = serde_json::Map::new();
        for ((meter, policy, w), used) in windows.iter().zip(used) {
            let limit = policy.limit.get();
            meters.insert(
                meter.to_string(),
                json!({
                    "used": used,
                    "limit": limit,
                    "remaining": limit.saturating_sub(used),
                    "period": policy.period.as_str(),
                    "period_start": w.start.to_string(),
                    "resets_at": w.end.to_string(),
                    "overage": policy.overage,
                }),
            );
        }
        Answer::json(
            StatusCode::OK,
            &json!({"tenant": tenant, "plan": plan_name, "meters": meters}),
        )
    }

    async fn set_plan(&self, tenant: &str, call: &Call<'_>) -> Answer {
        let gw = self.gateway.load_full();
        if !crate::config::valid_tenant_id(tenant) {
            return Answer::problem(
                StatusCode::BAD_REQUEST,
                "bad-request",
                "Tenant ids use letters, digits, `_-.@` (at most 128).",
                call.path,
            );
        }
        let body: Value = match serde_json::from_slice(call.body) {
            Ok(v) => v,
            Err(_) => {
                return Answer::problem(
                    StatusCode::BAD_REQUEST,
                    "bad-request",
                    r#"Send a JSON body: {"plan": "<plan name>"} (null clears the override)."#,
                    call.path,
                )
            }
        };
        let plan = match body.get("plan") {
            Some(Value::String(p)) if gw.plans.contains(p) => Some(p.as_str()),
            Some(Value::Null) => None,
            _ => {
                return Answer::problem(
                    StatusCode::BAD_REQUEST,
                    "unknown-plan",
                    format!(
                        "`plan` must name a configured plan: {}.",
                        gw.plans.names().join(", ")
                    ),
                    call.path,
                )
            }
        };
        let from = self.plan_of(&gw, tenant);
        if let Err(e) = gw.store.set_plan(tenant, plan).await {
            return Answer::problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "store-unavailable",
                e.to_string(),
                call.path,
            );
        }
        tracing::info!(tenant, plan = ?plan, "Plan override set through the admin API.");
        let effective = self.plan_of(&gw, tenant);
        if let (true, Some(events), Some(to)) = (gw.milestones, &self.events, &effective) {
            if from.as_ref() != Some(to) {
                let m = Milestone::plan_changed(tenant, from, to.clone());
                events.emit_milestone(gw.now(), &m);
            }
        }
        Answer::json(
            StatusCode::OK,
            &json!({"tenant": tenant, "plan": effective, "override": plan}),
        )
    }

    /// `GET /admin/v1/tenants`: every tenant this instance knows, those of the config and
    /// those only the store knows (given a plan through the API), with the plan its calls are
    /// billed on now. From memory: the overrides are what this instance follows.
    fn list_tenants(&self) -> Answer {
        let gw = self.gateway.load_full();
        let overrides = gw.store.plan_overrides();
        let mut names: std::collections::BTreeSet<&str> =
            gw.tenants().map(|t| t.name.as_str()).collect();
        names.extend(overrides.keys().map(String::as_str));
        let tenants: Vec<Value> = names
            .into_iter()
            .map(|name| {
                json!({
                    "tenant": name,
                    "plan": self.plan_of(&gw, name),
                    "override": overrides.get(name),
                    "in_config": gw.tenant(name).is_some(),
                })
            })
            .collect();
        Answer::json(StatusCode::OK, &json!({ "tenants": tenants }))
    }

    /// `GET /admin/v1/upstreams`: every upstream's targets, one entry per address (each
    /// address a host-name target resolves to now), and whether each takes calls and why not.
    /// This instance's view: passive health is each instance's own.
    fn list_upstreams(&self) -> Answer {
        let gw = self.gateway.load_full();
        let upstreams: Vec<Value> = gw
            .upstreams
            .iter()
            .map(|up| {
                let endpoints = up.balance.endpoints();
                let targets: Vec<Value> = endpoints
                    .iter()
                    .map(|e| {
                        let status = up.balance.status(e);
                        let [_, target, address] = crate::proxy::balance::labels(up, e);
                        json!({
                            "target": target,
                            "address": address,
                            "taking_calls": status.taking_calls,
                            "out_for_health_checks": status.out_for_health_checks,
                            "out_for_connects_ms": status.out_for_connects_ms,
                            "failed_connects": status.failed_connects,
                        })
                    })
                    .collect();
                json!({ "upstream": up.name, "targets": targets })
            })
            .collect();
        Answer::json(StatusCode::OK, &json!({ "upstreams": upstreams }))
    }

    /// `GET /admin/v1/tenants/{t}/keys`: the ids of the tenant's keys, those in the config
    /// (`source: config`) and those created through this API (`source: store`). Never a key or
    /// its hash.
    async fn list_keys(&self, tenant: &str, path: &str) -> Answer {
        let gw = self.gateway.load_full();
        if self.plan_of(&gw, tenant).is_none() {
            return unknown_tenant(tenant, path);
        }
        let mut stored = match gw.store.key_ids(tenant).await {
            Ok(ids) => ids,
            Err(e) => return store_unavailable(&e, path),
        };
        stored.sort();
        let configured = gw.tenant(tenant).into_iter().flat_map(|t| &t.keys);
        let keys: Vec<Value> = configured
            .map(|k| json!({"id": k.id, "source": "config"}))
            .chain(stored.iter().map(|id| json!({"id": id, "source": "store"})))
            .collect();
        Answer::json(StatusCode::OK, &json!({"tenant": tenant, "keys": keys}))
    }

    async fn create_key(&self, tenant: &str, call: &Call<'_>) -> Answer {
        let gw = self.gateway.load_full();
        if self.plan_of(&gw, tenant).is_none() {
            return unknown_tenant(tenant, call.path);
        }
        let body: Value = if call.body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            match serde_json::from_slice(call.body) {
                Ok(v @ Value::Object(_)) => v,
                _ => {
                    return Answer::problem(
                        StatusCode::BAD_REQUEST,
                        "bad-request",
                        r#"Send no body, or {"id": "<key id>", "test": true}."#,
                        call.path,
                    )
                }
            }
        };
        let prefix = if body["test"] == json!(true) {
            "tg_test"
        } else {
            "tg_live"
        };
        let key = crate::keys::generate(prefix);
        let sha = crate::keys::sha256_hex(&key);
        let id = match body.get("id") {
            Some(Value::String(id)) if crate::config::valid_tenant_id(id) => id.clone(),
            Some(_) => {
                return Answer::problem(
                    StatusCode::BAD_REQUEST,
                    "bad-request",
                    "`id` uses letters, digits, `_-.@` (at most 128).",
                    call.path,
                )
            }
            None => format!("{tenant}-{}", &sha[..8]),
        };
        match gw.store.key_by_id(tenant, &id).await {
            Ok(Some(_)) => {
                return Answer::problem(
                    StatusCode::CONFLICT,
                    "key-exists",
                    format!(
                    "Tenant {tenant} already has a key `{id}`; revoke it first or pick another id."
                ),
                    call.path,
                )
            }
            Ok(None) => {}
            Err(e) => {
                return Answer::problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store-unavailable",
                    e.to_string(),
                    call.path,
                )
            }
        }
        let record = KeyRecord {
            tenant: tenant.to_string(),
            id: id.clone(),
            plan: None,
        };
        if let Err(e) = gw.store.put_key(&sha, &record).await {
            return Answer::problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "store-unavailable",
                e.to_string(),
                call.path,
            );
        }
        tracing::info!(tenant, key_id = %id, sha256 = %sha, "API key created through the admin API.");
        Answer::json(
            StatusCode::CREATED,
            &json!({"id": id, "key": key, "tenant": tenant, "sha256": sha}),
        )
    }

    async fn revoke_key(&self, tenant: &str, id: &str, path: &str) -> Answer {
        let gw = self.gateway.load_full();
        if gw
            .tenant(tenant)
            .is_some_and(|t| t.keys.iter().any(|k| k.id == id))
        {
            return Answer::problem(
                StatusCode::CONFLICT,
                "static-key",
                format!("Key `{id}` is in the config file; remove it there and reload."),
                path,
            );
        }
        let sha = match gw.store.key_by_id(tenant, id).await {
            Ok(Some(sha)) => sha,
            Ok(None) => {
                return Answer::problem(
                    StatusCode::NOT_FOUND,
                    "no-key",
                    format!("Tenant {tenant} has no runtime key `{id}`."),
                    path,
                )
            }
            Err(e) => {
                return Answer::problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store-unavailable",
                    e.to_string(),
                    path,
                )
            }
        };
        match gw.store.delete_key(&sha).await {
            Ok(_) => {
                tracing::info!(tenant, key_id = %id, "API key revoked through the admin API.");
                Answer {
                    status: StatusCode::NO_CONTENT,
                    content_type: "application/json",
                    body: Vec::new(),
                    www_authenticate: false,
                }
            }
            Err(e) => Answer::problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "store-unavailable",
                e.to_string(),
                path,
            ),
        }
    }
}

/// The most units one correction may add or take back.
const MAX_ADJUSTMENT: i64 = 1_000_000_000_000;

/// A correction's `reason`: at most this many characters.
const MAX_REASON: usize = 500;

impl AdminApp {
    /// `POST /admin/v1/tenants/{t}/usage` `{"meter": "requests", "delta": -100, "reason": "…"}`:
    /// corrects the tenant's counter of `meter` for the current period, for support's use (a
    /// failed refund, a goodwill credit, a manual charge). A negative `delta` is a credit; the
    /// counter never goes below zero, so a credit larger than the usage resets it. The change
    /// counts at once on every instance (it is the counter they all read), and, with
    /// `telemetry`, goes to the sinks as a `dev.tollgate.adjustment` event carrying the units
    /// actually applied, so a billing system summing events agrees with the counter.
    async fn adjust(&self, tenant: &str, call: &Call<'_>) -> Answer {
        let path = call.path;
        let gw = self.gateway.load_full();
        let Some(plan_name) = self.plan_of(&gw, tenant) else {
            return unknown_tenant(tenant, path);
        };
        let Some(plan) = gw.plans.get(&plan_name) else {
            return unknown_tenant(tenant, path);
        };
        let usage = r#"Send a JSON body: {"meter": "<meter>", "delta": <units, negative for a credit>, "reason": "<optional note>"}."#;
        let Ok(body) = serde_json::from_slice::<Value>(call.body) else {
            return Answer::problem(StatusCode::BAD_REQUEST, "bad-request", usage, path);
        };
        let Some(meter) = body.get("meter").and_then(Value::as_str) else {
            return Answer::problem(StatusCode::BAD_REQUEST, "bad-request", usage, path);
        };
        let Some(policy) = plan.meters.get(meter) else {
            let names: Vec<&str> = plan.meters.keys().map(String::as_str).collect();
            return Answer::problem(
                StatusCode::BAD_REQUEST,
                "unknown-meter",
                format!(
                    "Plan {plan_name} has no meter {meter}; its meters: {}.",
                    if names.is_empty() {
                        "(none)".to_string()
                    } else {
                        names.join(", ")
                    }
                ),
                path,
            );
        };
        let delta = match body.get("delta").and_then(Value::as_i64) {
            Some(d) if d != 0 && d.abs() <= MAX_ADJUSTMENT => d,
            _ => {
                return Answer::problem(
                    StatusCode::BAD_REQUEST,
                    "bad-request",
                    format!("`delta` must be a whole number of units other than 0, at most {MAX_ADJUSTMENT} either way; negative is a credit."),
                    path,
                )
            }
        };
        let reason = match body.get("reason") {
            None | Some(Value::Null) => None,
            Some(Value::String(r)) if r.chars().count() <= MAX_REASON => Some(r.as_str()),
            Some(_) => {
                return Answer::problem(
                    StatusCode::BAD_REQUEST,
                    "bad-request",
                    format!("`reason` must be a string of at most {MAX_REASON} characters."),
                    path,
                )
            }
        };
        let window = match current_window(&gw, tenant, policy.period, path) {
            Ok(w) => w,
            Err(answer) => return answer,
        };
        let key = keys::counter(tenant, meter, window.start_date);
        let expire_at = window.end.as_second() + crate::pipeline::meter::EXPIRY_GRACE_SECS;
        let (applied, used) = match gw.store.adjust(&key, delta, expire_at).await {
            Ok(r) => r,
            Err(e) => return store_unavailable(&e, path),
        };
        let now = gw.now();
        let period = crate::telemetry::event::period_label(policy.period, &window);
        tracing::info!(
            tenant,
            meter,
            delta,
            applied,
            used,
            reason,
            "Usage corrected through the admin API."
        );
        if let (Some(events), true) = (&self.events, applied != 0) {
            events.emit_adjustment(
                now,
                &crate::telemetry::event::Adjustment {
                    tenant,
                    plan: &plan_name,
                    meter,
                    units: applied,
                    period: &period,
                    reason,
                },
            );
        }
        let limit = policy.limit.get();
        Answer::json(
            StatusCode::OK,
            &json!({
                "tenant": tenant,
                "plan": plan_name,
                "meter": meter,
                "delta": delta,
                "applied": applied,
                "used": used,
                "limit": limit,
                "remaining": limit.saturating_sub(used),
                "period": period,
                "resets_at": window.end.to_string(),
            }),
        )
    }
}

/// The billing period of `tenant` that `now` is in, for a meter counted per `period`.
fn current_window(
    gw: &Gateway,
    tenant: &str,
    period: crate::meter::period::Period,
    path: &str,
) -> Result<Window, Answer> {
    let anchor = gw.tenant(tenant).and_then(|t| t.billing_anchor);
    Window::containing(period, anchor, gw.now()).map_err(|e| {
        Answer::problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            e.to_string(),
            path,
        )
    })
}

fn store_unavailable(e: &crate::store::StoreError, path: &str) -> Answer {
    Answer::problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "store-unavailable",
        format!("The store did not answer: {e}"),
        path,
    )
}

fn unknown_tenant(tenant: &str, path: &str) -> Answer {
    Answer::problem(
        StatusCode::NOT_FOUND,
        "unknown-tenant",
        format!("Tenant {tenant} is neither in the config nor has a plan set; set one with PUT /admin/v1/tenants/{tenant}/plan."),
        path,
    )
}

/// Reads the request body, refusing more than [`MAX_BODY`].
async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, ()> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = session.read_request_body().await {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let (method, path) = (req.method.clone(), req.uri.path().to_string());
        let authorization = req
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let answer = match read_body(session).await {
            Ok(body) => {
                let call = Call {
                    method: &method,
                    path: &path,
                    body: &body,
                };
                self.route(&call, authorization.as_deref()).await
            }
            Err(()) => Answer::problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                "Admin request bodies are at most 64 KiB.",
                &path,
            ),
        };
        let mut builder = Response::builder()
            .status(answer.status)
            .header("content-type", answer.content_type)
            .header("content-length", answer.body.len());
        if answer.www_authenticate {
            builder = builder.header("www-authenticate", "Bearer realm=\"tollgate-admin\"");
        }
        builder
            .body(answer.body)
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
}
