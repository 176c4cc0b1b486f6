//! What the upstream gets besides the caller's request: a route's `rewrite_prefix` replaces the
//! part of the path the route matched (the query kept), and an upstream's `request_headers`
//! (its own credentials, for an API the gateway resells) and a route's replace what the caller
//! sent, on calls (the upstream's also on health probes), without the secret showing anywhere.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{Stack, ACME_KEY, STACK_HEAD};

/// After [`STACK_HEAD`]: a second upstream under its `upstreams`, then the rest.
const YAML: &str = r#"
  resold:
    targets: ["{upstream}"]
    request_headers: { Authorization: "Bearer upstream-secret", X-Upstream-Team: "billing" }
    health_check: { path: /_health, interval: 1s }
tenants:
  acme: { plan: free, keys: [{ id: acme-1, sha256: "{acme_sha}" }] }
plans:
  free: { meters: { requests: { limit: 1000, period: month } } }
routes:
  - { name: billing, match: { path_prefix: /billing/v1 }, upstream: product, rewrite_prefix: /v1, meter: { requests: 1 } }
  - { name: strip, match: { path_prefix: /api/ }, upstream: product, rewrite_prefix: /, meter: { requests: 1 } }
  - { name: exact, match: { path: /old/report }, upstream: product, rewrite_prefix: /v2/report, meter: { requests: 2 } }
  - { name: resold-beta, match: { path_prefix: /resold/beta }, upstream: resold, request_headers: { X-Upstream-Team: beta, OpenAI-Beta: "assistants=v2" }, meter: { requests: 1 } }
  - { name: resold, match: { path_prefix: /resold }, upstream: resold, meter: { requests: 1 } }
  - { name: api, match: { path_prefix: / }, upstream: product, meter: { requests: 1 } }
"#;

/// The echo of the upstream's request for a call to `path`.
async fn echoed(stack: &Stack, path: &str, extra: &[(&str, &str)]) -> Value {
    let mut req = stack
        .client
        .get(stack.gateway.url(path))
        .bearer_auth(ACME_KEY);
    for (name, value) in extra {
        req = req.header(*name, *value);
    }
    let answer = crate::common::http::read(req.send().await.unwrap()).await;
    assert_eq!(answer.status, 200, "{path}: {}", answer.body);
    serde_json::from_str(&answer.body).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_rewrites_the_prefix_it_matched_and_keeps_the_rest_and_the_query() {
    let stack = Stack::start(&format!("{STACK_HEAD}{YAML}")).await;

    for (called, sent) in [
        ("/billing/v1/items?x=1&y=2", "/v1/items?x=1&y=2"),
        ("/billing/v1", "/v1"),
        ("/billing/v1/", "/v1/"),
        ("/api/items/7", "/items/7"),
        ("/api/", "/"),
        ("/old/report?month=11", "/v2/report?month=11"),
        // Not the billing route's prefix on whole segments: the catch-all keeps the path.
        ("/billing/v1x", "/billing/v1x"),
    ] {
        let echo = echoed(&stack, called, &[]).await;
        assert_eq!(echo["path"], sent, "{called}");
    }
    // Each call metered by the route it matched (the exact route charges 2).
    assert_eq!(stack.month_counter("acme", "requests").await, 8);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstreams_headers_replace_the_callers_on_calls_and_probes_and_stay_secret() {
    let stack = Stack::start(&format!("{STACK_HEAD}{YAML}")).await;

    // The upstream's headers replace the caller's; a route's go over the upstream's.
    for (path, sent, expected) in [
        (
            "/resold/things",
            ("x-upstream-team", "evil"),
            [
                ("authorization", "Bearer upstream-secret"),
                ("x-upstream-team", "billing"),
                ("x-tollgate-tenant", "acme"),
            ],
        ),
        (
            "/resold/beta/things",
            ("openai-beta", "mine"),
            [
                ("authorization", "Bearer upstream-secret"),
                ("x-upstream-team", "beta"),
                ("openai-beta", "assistants=v2"),
            ],
        ),
    ] {
        let echo = echoed(&stack, path, &[sent]).await;
        for (name, value) in expected {
            assert_eq!(
                echo["headers"][name],
                serde_json::json!([value]),
                "{path}: {echo}"
            );
        }
    }

    // Another upstream gets neither, and never the caller's key.
    let echo = echoed(&stack, "/v1/items", &[("x-upstream-team", "mine")]).await;
    let headers = &echo["headers"];
    assert!(headers.get("authorization").is_none(), "{echo}");
    assert_eq!(
        headers["x-upstream-team"],
        serde_json::json!(["mine"]),
        "{echo}"
    );

    // Health probes of the upstream carry them too.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stack.upstream.health().probes == 0 {
        assert!(Instant::now() < deadline, "no probe within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        stack.upstream.health().last_authorization,
        "Bearer upstream-secret"
    );
    assert!(
        !stack.gateway.stderr().contains("upstream-secret"),
        "{}",
        stack.gateway.stderr()
    );
}
