//! An upstream failure (5xx, refused connection) refunds the call's reservation before the
//! answer leaves the gateway; a 4xx is the product's answer and stays charged.

use crate::common::{refused_addr, Stack, ACME_KEY};

/// `/dead/...` goes to an address where nothing listens; everything else to the echo server.
const YAML: &str = r#"
server:
  listen: "{listen}"
  threads: 2
admin:
  listen: "{admin}"
store:
  kind: redis
  url: "{redis}"
  timeout: 2s
  on_outage: fail_closed
upstreams:
  product:
    targets: ["{upstream}"]
  dead:
    targets: ["{dead}"]
    connect_timeout: 1s
tenants:
  acme:
    plan: free
    keys:
      - id: acme-1
        sha256: "{acme_sha}"
plans:
  free:
    meters:
      requests: { limit: 100, period: month }
routes:
  - name: dead
    match: { path_prefix: /dead }
    upstream: dead
    meter: { requests: 1 }
  - name: api
    match: { path_prefix: / }
    upstream: product
    meter: { requests: 1 }
"#;

async fn stack() -> Stack {
    Stack::start(&YAML.replace("{dead}", &refused_addr())).await
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_5xx_is_passed_through_and_refunded() {
    let stack = stack().await;
    assert_eq!(stack.get("/v1/items", Some(ACME_KEY)).await.status, 200);
    assert_eq!(stack.month_counter("acme", "requests").await, 1);

    for code in [502, 500, 503] {
        let answer = stack.get(&format!("/status/{code}"), Some(ACME_KEY)).await;

        assert_eq!(answer.status, code, "{}", answer.body);
        assert_eq!(
            answer.body,
            format!("upstream answered {code}"),
            "the upstream's own body"
        );
        // The refund happens before the answer is sent, so the counter is already back.
        assert_eq!(
            stack.month_counter("acme", "requests").await,
            1,
            "after a {code}"
        );
    }
    assert_eq!(stack.upstream.hits(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_4xx_is_charged() {
    let stack = stack().await;

    let answer = stack.get("/status/404", Some(ACME_KEY)).await;

    assert_eq!(answer.status, 404);
    assert_eq!(
        answer.body, "upstream answered 404",
        "the upstream's own 404, not a no-route problem"
    );
    assert_eq!(stack.month_counter("acme", "requests").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_connection_is_502_upstream_unavailable_and_refunded() {
    let stack = stack().await;
    assert_eq!(stack.get("/v1/items", Some(ACME_KEY)).await.status, 200);

    let answer = stack.get("/dead/items", Some(ACME_KEY)).await;

    let problem = answer.problem(502);
    assert_eq!(problem["type"], "urn:tollgate:upstream-unavailable");
    assert_eq!(problem["instance"], "/dead/items");
    assert!(
        problem["title"].as_str().is_some_and(|t| !t.is_empty()),
        "{problem}"
    );
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(!detail.is_empty(), "{problem}");
    assert!(
        !detail.contains("127.0.0.1"),
        "detail leaks the upstream address: {detail}"
    );
    assert_eq!(
        stack.month_counter("acme", "requests").await,
        1,
        "the failed call is refunded"
    );
}

/// Routes choose which upstream outcomes refund: `/strict` refunds nothing, `/lenient` also
/// refunds a 429.
fn custom_rules() -> String {
    YAML.replace(
        "routes:\n",
        "routes:\n  - name: strict\n    match: { path_prefix: /strict }\n    upstream: dead\n    meter: { requests: 1 }\n    refund_on: []\n  - name: lenient\n    match: { path_prefix: /status }\n    upstream: product\n    meter: { requests: 1 }\n    refund_on: [5xx, 429]\n",
    )
    .replace("{dead}", &refused_addr())
}

#[tokio::test(flavor = "multi_thread")]
async fn refund_rules_are_per_route() {
    let stack = Stack::start(&custom_rules()).await;

    let limited = stack.get("/status/429", Some(ACME_KEY)).await;
    assert_eq!(limited.status, 429);
    assert_eq!(
        stack.month_counter("acme", "requests").await,
        0,
        "429 refunded on this route"
    );
    assert_eq!(stack.get("/status/404", Some(ACME_KEY)).await.status, 404);
    assert_eq!(
        stack.month_counter("acme", "requests").await,
        1,
        "404 charged"
    );

    let unreachable = stack.get("/strict/x", Some(ACME_KEY)).await;
    let body = unreachable.problem(502);
    assert_eq!(body["type"], "urn:tollgate:upstream-unavailable");
    assert!(
        body["detail"].as_str().unwrap().contains("was charged"),
        "{body}"
    );
    assert_eq!(
        stack.month_counter("acme", "requests").await,
        2,
        "refund_on: [] keeps the charge"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_read_timeout_answers_504_and_refunds_while_other_routes_wait() {
    // `/quick/...` waits 300 ms for the upstream; the rest keep the upstream's 30 s.
    let yaml = YAML
        .replace(
            "routes:\n",
            "routes:\n  - name: quick\n    match: { path_prefix: /quick }\n    upstream: product\n    meter: { requests: 1 }\n    read_timeout: 300ms\n",
        )
        .replace("{dead}", &refused_addr());
    let stack = Stack::start(&yaml).await;

    let started = std::time::Instant::now();
    let late = stack.get("/quick/slow/1500", Some(ACME_KEY)).await;
    let waited = started.elapsed();

    let problem = late.problem(504);
    assert_eq!(problem["type"], "urn:tollgate:upstream-unavailable");
    assert_eq!(
        problem["detail"],
        "The upstream did not answer in time. The call was not charged."
    );
    assert!(
        waited < std::time::Duration::from_millis(1_200),
        "answered after the route's 300 ms, not the upstream's answer: {waited:?}"
    );
    assert_eq!(stack.month_counter("acme", "requests").await, 0, "refunded");

    let patient = stack.get("/v1/slow/500", Some(ACME_KEY)).await;
    assert_eq!(patient.status, 200, "{}", patient.body);
    assert_eq!(stack.month_counter("acme", "requests").await, 1);
}
