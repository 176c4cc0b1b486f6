//! The only place that writes error bodies: RFC 9457 `application/problem+json` (SPEC §5).

use bytes::Bytes;
use http::StatusCode;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;
use serde_json::{json, Map, Value};

use crate::config::FixedResponse;
use crate::meter::period::Period;
use crate::pipeline::headers::{self, UsageView};
use crate::pipeline::identity::AuthFailure;
use crate::pipeline::{Refused, Rejection};

const QUOTA_EXCEEDED: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";

/// A problem answer: status, headers and the body's fields.
pub struct Problem {
    /// HTTP status.
    pub status: StatusCode,
    /// Extra response headers.
    pub headers: Vec<(&'static str, String)>,
    /// The JSON body.
    pub body: Map<String, Value>,
}

impl Problem {
    /// A problem with the standard members set.
    pub fn new(
        status: StatusCode,
        kind: &str,
        title: &str,
        detail: String,
        instance: &str,
    ) -> Problem {
        let mut body = Map::new();
        body.insert("type".into(), json!(kind));
        body.insert("title".into(), json!(title));
        body.insert("status".into(), json!(status.as_u16()));
        body.insert("detail".into(), json!(detail));
        body.insert("instance".into(), json!(instance));
        Problem {
            status,
            headers: Vec::new(),
            body,
        }
    }

    fn with(mut self, key: &str, value: Value) -> Problem {
        self.body.insert(key.into(), value);
        self
    }

    fn header(mut self, name: &'static str, value: String) -> Problem {
        self.headers.push((name, value));
        self
    }
}

/// The answer to a refused call.
pub fn rejection(refused: &Refused, path: &str, method: &str, now: jiff::Timestamp) -> Problem {
    let tenant = refused.caller.as_ref().map(|c| c.tenant.name.clone());
    let plan = refused.plan.as_ref();
    let plan_name = plan.map(|p| p.name.clone());
    let with_who = |p: Problem| {
        p.with("tenant", json!(tenant))
            .with("plan", json!(plan_name))
    };
    match &refused.rejection {
        Rejection::BadPath => Problem::new(
            StatusCode::BAD_REQUEST,
            "urn:tollgate:bad-request",
            "Bad request",
            "The path contains `.` or `..` segments, empty segments or needlessly percent-encoded characters; send it in plain form.".into(),
            path,
        ),
        Rejection::BadIdempotencyKey => Problem::new(
            StatusCode::BAD_REQUEST,
            "urn:tollgate:bad-request",
            "Bad request",
            "The Idempotency-Key header must hold 1 to 255 visible characters.".into(),
            path,
        ),
        Rejection::NoRoute => Problem::new(
            StatusCode::NOT_FOUND,
            "urn:tollgate:no-route",
            "No route",
            format!("No route matches {method} {path}."),
            path,
        ),
        Rejection::Unauthenticated(failure) => {
            let challenge = match failure {
                AuthFailure::Missing => "Bearer realm=\"tollgate\"".to_string(),
                other => format!(
                    "Bearer realm=\"tollgate\", error=\"invalid_token\", error_description={}",
                    headers::sf_string(&other.to_string())
                ),
            };
            Problem::new(StatusCode::UNAUTHORIZED, "urn:tollgate:unauthenticated", "Unauthenticated", failure.to_string(), path)
                .header("www-authenticate", challenge)
        }
        Rejection::FeatureNotInPlan(denied) => {
            let plan_name = plan_name.clone().unwrap_or_default();
            let detail = match &denied.upgrade {
                Some(up) => format!("Plan {plan_name} does not include {}. Upgrade to {} to use it.", denied.feature, up.plan),
                None => format!("Plan {plan_name} does not include {}.", denied.feature),
            };
            let mut p = with_who(Problem::new(
                StatusCode::PAYMENT_REQUIRED,
                "urn:tollgate:feature-not-in-plan",
                "Feature not in plan",
                detail,
                path,
            ))
            .with("feature", json!(denied.feature))
            .with("upgrade", upgrade_json(denied.upgrade.as_ref()));
            if let Some(up) = &denied.upgrade {
                p = p.header(headers::TOLLGATE_UPGRADE, headers::upgrade_value(up));
            }
            p
        }
        Rejection::RateLimited(b) => {
            let rate = plan.and_then(|p| p.rate_limit);
            let detail = match rate {
                Some(r) => format!(
                    "Plan {} allows bursts of {} calls ({} per {}); retry in {} s.",
                    plan_name.clone().unwrap_or_default(),
                    r.burst,
                    r.requests,
                    human_duration(r.per),
                    b.retry_after
                ),
                None => format!("Too many calls at once; retry in {} s.", b.retry_after),
            };
            with_who(Problem::new(StatusCode::TOO_MANY_REQUESTS, QUOTA_EXCEEDED, "Too many requests", detail, path))
                .with("violated-policies", json!(["burst"]))
                .header("retry-after", b.retry_after.to_string())
                .header(headers::RATELIMIT_POLICY, format!("\"burst\";q={};w={}", b.quota, b.window_secs))
                .header(headers::RATELIMIT, format!("\"burst\";r=0;t={}", b.retry_after))
        }
        Rejection::TooManyInFlight(c) => {
            let detail = format!(
                "Plan {} allows {} calls at once; retry when one of yours has finished.",
                plan_name.clone().unwrap_or_default(),
                c.limit
            );
            with_who(Problem::new(StatusCode::TOO_MANY_REQUESTS, QUOTA_EXCEEDED, "Too many requests", detail, path))
                .with("violated-policies", json!(["concurrency"]))
                .with("limit", json!(c.limit))
                .header("retry-after", "1".to_string())
        }
        Rejection::QuotaExceeded(q) => {
            let plan_name = plan_name.clone().unwrap_or_default();
            let per = match q.meters.iter().find(|m| m.name == q.meter).map(|m| m.period) {
                Some(Period::Day) => "day",
                _ => "month",
            };
            let upgrade = plan.and_then(|p| p.upgrade.as_ref());
            let needs = q.meters.iter().find(|m| m.name == q.meter).map_or(1, |m| m.units);
            let mut detail = format!("Plan {plan_name} allows {} {} per {per}; {} are used", q.limit, q.meter, q.used);
            if q.used < q.limit {
                detail.push_str(&format!(" and this call needs {needs}"));
            }
            match upgrade {
                Some(up) => detail.push_str(&format!(". Upgrade to {} to continue.", up.plan)),
                None => detail.push_str(&format!(". The quota resets at {}.", rfc3339(q.resets_at))),
            }
            let mut p = with_who(Problem::new(StatusCode::PAYMENT_REQUIRED, QUOTA_EXCEEDED, "Quota exceeded", detail, path))
                .with("violated-policies", json!([q.meter]))
                .with("meter", json!(q.meter))
                .with("limit", json!(q.limit))
                .with("used", json!(q.used))
                .with("resets_at", json!(rfc3339(q.resets_at)))
                .with("upgrade", upgrade_json(upgrade))
                .header("retry-after", q.retry_after.to_string());
            let view = UsageView {
                burst: refused.burst.as_ref(),
                meters: &q.meters,
                upgrade,
                exhausted: Some(&q.meter),
                now,
            };
            p.headers.extend(headers::usage_headers(&view));
            p
        }
        Rejection::StoreUnavailable => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "urn:tollgate:store-unavailable",
            "Usage store unavailable",
            "Usage cannot be checked right now, so the call was not admitted. Retry shortly.".into(),
            path,
        )
        .header("retry-after", "1".into()),
        Rejection::Internal(why) => {
            tracing::error!(reason = why, "Refusing a call on an internal error.");
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "urn:tollgate:internal",
                "Internal error",
                "The gateway could not process the call.".into(),
                path,
            )
        }
        Rejection::TooLarge { limit, length } => too_large(*limit, Some(*length), path),
    }
}

/// 413: the request body is over the route's `max_request_body` (`length` when the request
/// announced it; a streamed body is cut off when it passes the limit).
pub fn too_large(limit: u64, length: Option<u64>, path: &str) -> Problem {
    let detail = match length {
        Some(length) => format!("The request body is {length} bytes; this route takes at most {limit}. Nothing was charged."),
        None => format!("The request body passed {limit} bytes, the most this route takes. Nothing was charged."),
    };
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "urn:tollgate:request-too-large",
        "Content too large",
        detail,
        path,
    )
    .with("max_request_body", json!(limit))
}

/// 502/504 when the upstream failed.
pub fn upstream_unavailable(timed_out: bool, charged: bool, path: &str) -> Problem {
    let (status, what) = if timed_out {
        (
            StatusCode::GATEWAY_TIMEOUT,
            "The upstream did not answer in time.",
        )
    } else {
        (
            StatusCode::BAD_GATEWAY,
            "The upstream could not be reached.",
        )
    };
    let charge = if charged {
        " The call was charged: this route does not refund such failures."
    } else {
        " The call was not charged."
    };
    Problem::new(
        status,
        "urn:tollgate:upstream-unavailable",
        "Upstream unavailable",
        format!("{what}{charge}"),
        path,
    )
}

/// A plugin's denial (its own status, type, title and detail), or a 500 for a plugin's error,
/// whose message stays in the log: it may name internals.
pub fn plugin_stop(stop: &crate::plugins::Stop, path: &str) -> Problem {
    match stop {
        crate::plugins::Stop::Denied { plugin, denial } => Problem::new(
            denial.status,
            &denial.problem_type,
            &denial.title,
            denial.detail.clone(),
            path,
        )
        .with("plugin", json!(plugin)),
        crate::plugins::Stop::Failed { plugin } => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "urn:tollgate:plugin-error",
            "Plugin error",
            format!("The gateway's `{plugin}` plugin failed on this call; it was not charged. Try again, or tell the API's operator if it persists."),
            path,
        )
        .with("plugin", json!(plugin)),
    }
}

/// Writes a problem answer; the connection stays open for the next call.
pub async fn write_problem(session: &mut Session, p: Problem) -> Result<()> {
    let body = Bytes::from(serde_json::to_vec(&Value::Object(p.body)).unwrap_or_default());
    let mut resp = ResponseHeader::build(p.status, Some(p.headers.len() + 3))?;
    resp.insert_header("content-type", "application/problem+json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    for (name, value) in p.headers {
        resp.append_header(name, value)?;
    }
    write(session, resp, body).await
}

/// Writes a route's fixed `respond:` answer, with the usage headers.
pub async fn write_fixed(
    session: &mut Session,
    fixed: &FixedResponse,
    extra: Vec<(&'static str, String)>,
) -> Result<()> {
    let mut resp = ResponseHeader::build(fixed.status, Some(extra.len() + 2))?;
    resp.insert_header("content-type", fixed.content_type.as_str())?;
    resp.insert_header("content-length", fixed.body.len().to_string())?;
    for (name, value) in extra {
        resp.append_header(name, value)?;
    }
    write(session, resp, fixed.body.clone()).await
}

/// Writes an answer without a body (a CORS preflight's `204`).
pub async fn write_head(session: &mut Session, mut resp: ResponseHeader) -> Result<()> {
    super::RequestId::add_header(session.req_header(), &mut resp)?;
    session.write_response_header(Box::new(resp), true).await
}

async fn write(session: &mut Session, mut resp: ResponseHeader, body: Bytes) -> Result<()> {
    super::RequestId::add_header(session.req_header(), &mut resp)?;
    super::cors::add_headers(session.req_header(), &mut resp)?;
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

fn upgrade_json(up: Option<&crate::config::Upgrade>) -> Value {
    match up {
        Some(u) => json!({ "plan": u.plan, "url": u.url }),
        None => Value::Null,
    }
}

/// `2026-12-01T00:00:00Z`
pub fn rfc3339(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn human_duration(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}
