//! `cors`: the gateway answers browsers' preflights itself, charging nothing, and lets a listed
//! origin's scripts read every answer, its own `402` and usage headers included.

use reqwest::Method;

use crate::common::events::{metric, metrics_once};
use crate::common::http::read;
use crate::common::{Answer, Stack, ACME_KEY};

const YAML: &str = r#"
server: { listen: "{listen}", threads: 2 }
admin: { listen: "{admin}" }
store: { kind: redis, url: "{redis}", timeout: 2s }
upstreams:
  product: { targets: ["{upstream}"] }
tenants:
  acme: { plan: free, keys: [{ id: acme-1, sha256: "{acme_sha}" }] }
plans:
  free: { meters: { requests: { limit: 2, period: month } } }
routes:
  - { name: api, match: { path_prefix: / }, upstream: product, meter: { requests: 1 } }
cors:
  allow_origins: ["https://app.example.com"]
  expose_headers: [x-request-id]
  max_age: 1h
"#;

const APP: &str = "https://app.example.com";

async fn send(stack: &Stack, method: Method, origin: &str, key: Option<&str>) -> Answer {
    let mut req = stack
        .client
        .request(method.clone(), stack.gateway.url("/v1/items"))
        .header("origin", origin);
    if method == Method::OPTIONS {
        req = req.header("access-control-request-method", "POST").header(
            "access-control-request-headers",
            "authorization, content-type",
        );
    }
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    read(req.send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_preflight_from_a_listed_origin_is_answered_by_the_gateway_and_charges_nothing() {
    let stack = Stack::start(YAML).await;

    let answer = send(&stack, Method::OPTIONS, APP, None).await;

    assert_eq!(answer.status, 204, "{}", answer.body);
    assert_eq!(answer.header("access-control-allow-origin"), Some(APP));
    assert_eq!(
        answer.header("access-control-allow-methods"),
        Some("GET, HEAD, POST, PUT, PATCH, DELETE")
    );
    assert_eq!(
        answer.header("access-control-allow-headers"),
        Some("authorization, x-api-key, content-type, idempotency-key")
    );
    assert_eq!(answer.header("access-control-max-age"), Some("3600"));
    assert_eq!(
        stack.upstream.hits(),
        0,
        "the upstream never sees a preflight"
    );
    assert_eq!(stack.month_counter("acme", "requests").await, 0);
    let preflight = [("outcome", "preflight")];
    let text = metrics_once(&stack.gateway, "tollgate_requests_total", &preflight, 1.0).await;
    assert_eq!(
        metric(&text, "tollgate_requests_total", &preflight),
        1.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_origin_not_listed_gets_no_permission() {
    let stack = Stack::start(YAML).await;

    let preflight = send(&stack, Method::OPTIONS, "https://evil.example", None).await;
    let call = send(&stack, Method::GET, "https://evil.example", Some(ACME_KEY)).await;

    assert_eq!(preflight.status, 204);
    assert_eq!(preflight.header("access-control-allow-origin"), None);
    assert_eq!(preflight.header("access-control-allow-methods"), None);
    // A call without a preflight (a simple GET) is served, but the browser keeps its answer
    // from the script: no CORS headers.
    assert_eq!(call.status, 200);
    assert_eq!(call.header("access-control-allow-origin"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wildcard_origin_allows_its_subdomains_and_nothing_else() {
    let yaml = YAML.replace(
        r#"allow_origins: ["https://app.example.com"]"#,
        r#"allow_origins: ["https://*.preview.example.com"]"#,
    );
    let stack = Stack::start(&yaml).await;
    let preview = "https://pr-7.preview.example.com";

    let preflight = send(&stack, Method::OPTIONS, preview, None).await;
    let call = send(&stack, Method::GET, preview, Some(ACME_KEY)).await;

    assert_eq!(preflight.status, 204);
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some(preview),
        "the caller's own origin, echoed"
    );
    assert_eq!(call.status, 200, "{}", call.body);
    assert_eq!(call.header("access-control-allow-origin"), Some(preview));
    for other in [
        "https://preview.example.com",
        "https://evil-preview.example.com",
        "http://pr-7.preview.example.com",
    ] {
        let preflight = send(&stack, Method::OPTIONS, other, None).await;
        assert_eq!(
            preflight.header("access-control-allow-origin"),
            None,
            "{other}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listed_origin_can_read_the_usage_headers_and_the_402() {
    let stack = Stack::start(YAML).await;

    let first = send(&stack, Method::GET, APP, Some(ACME_KEY)).await;
    let _ = send(&stack, Method::GET, APP, Some(ACME_KEY)).await;
    let refused = send(&stack, Method::GET, APP, Some(ACME_KEY)).await;

    for (what, answer) in [("proxied 200", &first), ("the gateway's 402", &refused)] {
        assert_eq!(
            answer.header("access-control-allow-origin"),
            Some(APP),
            "{what}"
        );
        assert_eq!(
            answer.header("access-control-expose-headers"),
            Some("RateLimit, RateLimit-Policy, Retry-After, Tollgate-Warning, Tollgate-Upgrade, Tollgate-Milestone, Tollgate-Idempotent-Replay, x-request-id"),
            "{what}"
        );
        let vary: Vec<_> = answer.headers.get_all("vary").iter().collect();
        assert!(
            vary.iter().any(|v| v.to_str().unwrap().contains("Origin")),
            "{what}: {vary:?}"
        );
    }
    assert_eq!(first.status, 200);
    assert!(first.header("ratelimit").is_some());
    assert_eq!(refused.status, 402);
    assert_eq!(refused.problem(402)["meter"], "requests");
    assert_eq!(stack.month_counter("acme", "requests").await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_cors_section_a_preflight_is_a_call_like_any_other() {
    let stack = Stack::start(&YAML[..YAML.find("cors:").unwrap()]).await;

    let answer = send(&stack, Method::OPTIONS, APP, None).await;

    assert_eq!(answer.status, 401, "no credentials: {}", answer.body);
    assert_eq!(answer.header("access-control-allow-origin"), None);
}
