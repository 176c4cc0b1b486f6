//! A Stripe-like Billing Meter Events receiver for the `stripe-meter` plugin: checks every
//! request's documented shape, stores meter events by `identifier`, answers duplicates the way
//! Stripe does, and fails on purpose: `429` to the second request, and on every third request
//! it stores the event and *then* answers `500` (as a server that committed but lost the
//! answer), so the retry meets the duplicate answer.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use tokio::task::JoinHandle;

use super::receiver::serve;

/// The key the plugin must send.
pub const API_KEY: &str = "sk_test_tollgate_51Hx";

/// The documented form fields, all required, no others.
pub const FIELDS: &[&str] = &[
    "event_name",
    "payload[stripe_customer_id]",
    "payload[value]",
    "identifier",
    "timestamp",
];

/// What the receiver saw.
#[derive(Default)]
pub struct Seen {
    /// Stored meter events by identifier (form field → value).
    pub stored: BTreeMap<String, BTreeMap<String, String>>,
    /// Requests per answer status.
    pub statuses: BTreeMap<u16, usize>,
    /// Requests naming an identifier that was already answered 2xx (the plugin should remember
    /// those and never resend them).
    pub resent_after_ok: usize,
    /// Identifiers answered 2xx.
    ok: std::collections::BTreeSet<String>,
    /// Every request that broke the documented shape, and why.
    pub problems: Vec<String>,
    requests: usize,
}

/// An HTTP/1 server on `127.0.0.1:<free port>`.
pub struct StripeReceiver {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Seen>>,
    task: JoinHandle<()>,
}

impl StripeReceiver {
    /// Starts the receiver.
    pub async fn start() -> StripeReceiver {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (addr, task) = serve(seen.clone(), receive).await;
        StripeReceiver { addr, seen, task }
    }

    /// The `api_base` to configure.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Runs `f` on what was seen so far.
    pub fn seen<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.seen.lock().unwrap())
    }
}

impl Drop for StripeReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    answer(
        status,
        serde_json::json!({"error": {"type": "invalid_request_error", "code": code, "message": message}})
            .to_string(),
    )
}

async fn receive(
    seen: Arc<Mutex<Seen>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut problems = Vec::new();
    if req.method() != hyper::Method::POST {
        problems.push(format!("method {}", req.method()));
    }
    if req.uri().path() != "/v1/billing/meter_events" {
        problems.push(format!("path {}", req.uri().path()));
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    if header("content-type") != "application/x-www-form-urlencoded" {
        problems.push(format!("content-type {:?}", header("content-type")));
    }
    if header("authorization") != format!("Bearer {API_KEY}") {
        problems.push("authorization is not the bearer key".into());
    }
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let form = parse_form(&String::from_utf8_lossy(&body));
    let keys: Vec<&str> = form.keys().map(String::as_str).collect();
    let mut want: Vec<&str> = FIELDS.to_vec();
    want.sort_unstable();
    if keys != want {
        problems.push(format!("form fields {keys:?}"));
    }
    for (k, v) in &form {
        if v.is_empty() {
            problems.push(format!("empty {k}"));
        }
    }
    if form
        .get("payload[value]")
        .is_some_and(|v| v.parse::<u64>().map_or(true, |n| n == 0))
    {
        problems.push(format!("value {:?}", form["payload[value]"]));
    }
    if form
        .get("timestamp")
        .is_some_and(|v| v.parse::<i64>().is_err())
    {
        problems.push(format!("timestamp {:?}", form["timestamp"]));
    }

    let mut seen = seen.lock().unwrap();
    seen.requests += 1;
    let n = seen.requests;
    let identifier = form.get("identifier").cloned().unwrap_or_default();
    let response = if !problems.is_empty() {
        seen.problems.extend(problems);
        error(StatusCode::BAD_REQUEST, "parameter_invalid", "bad request")
    } else if n == 2 {
        error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit",
            "Too many requests.",
        )
    } else {
        if seen.ok.contains(&identifier) {
            seen.resent_after_ok += 1;
        }
        if seen.stored.contains_key(&identifier) {
            error(
                StatusCode::BAD_REQUEST,
                "resource_already_exists",
                &format!("An event with identifier {identifier} already exists."),
            )
        } else {
            seen.stored.insert(identifier.clone(), form.clone());
            if n.is_multiple_of(3) {
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "api_error",
                    "Something went wrong.",
                )
            } else {
                seen.ok.insert(identifier.clone());
                answer(
                    StatusCode::OK,
                    serde_json::json!({"object": "billing.meter_event", "identifier": identifier})
                        .to_string(),
                )
            }
        }
    };
    *seen.statuses.entry(response.status().as_u16()).or_default() += 1;
    Ok(response)
}

/// `a=1&b%5Bc%5D=x+y` → {a: 1, b[c]: "x y"}.
fn parse_form(body: &str) -> BTreeMap<String, String> {
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}
