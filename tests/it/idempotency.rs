//! `Idempotency-Key`: a call that repeats one already admitted for the same tenant is let
//! through uncharged, decided in the same atomic script as the reservation.

use crate::common::{Stack, ACME_KEY, BETA_KEY};

const YAML: &str = r#"
server:
  listen: "{listen}"
admin:
  listen: "{admin}"
store:
  kind: redis
  url: "{redis}"
  timeout: 2s
upstreams:
  product:
    targets: ["{upstream}"]
tenants:
  acme:
    plan: free
    keys: [{ id: acme-1, sha256: "{acme_sha}" }]
  beta:
    plan: free
    keys: [{ id: beta-1, sha256: "{beta_sha}" }]
plans:
  free:
    meters:
      requests: { limit: 2, period: month }
routes:
  - name: api
    match: { path_prefix: / }
    upstream: product
    meter: { requests: 1 }
"#;

async fn call(
    stack: &Stack,
    path: &str,
    key: &str,
    idempotency_key: &str,
) -> crate::common::Answer {
    let response = stack
        .client
        .post(stack.gateway.url(path))
        .header("authorization", format!("Bearer {key}"))
        .header("idempotency-key", idempotency_key)
        .send()
        .await
        .unwrap();
    crate::common::http::read(response).await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_key_sent_10_times_concurrently_is_charged_once() {
    let stack = std::sync::Arc::new(Stack::start(YAML).await);
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let stack = stack.clone();
            tokio::spawn(async move { call(&stack, "/v1/orders", ACME_KEY, "order-42").await })
        })
        .collect();
    let mut replays = 0;
    for c in calls {
        let answer = c.await.unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body);
        if answer.header("tollgate-idempotent-replay") == Some("?1") {
            replays += 1;
        }
    }
    assert_eq!(replays, 9, "one call charged, nine replays");
    assert_eq!(stack.month_counter("acme", "requests").await, 1);
    assert_eq!(
        stack.upstream.hits(),
        10,
        "replays still reach the upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_passes_even_at_the_limit_and_a_new_key_does_not() {
    let stack = Stack::start(YAML).await;
    assert_eq!(call(&stack, "/v1/a", ACME_KEY, "k1").await.status, 200);
    assert_eq!(call(&stack, "/v1/a", ACME_KEY, "k2").await.status, 200);
    assert_eq!(stack.month_counter("acme", "requests").await, 2);
    let replay = call(&stack, "/v1/a", ACME_KEY, "k1").await;
    assert_eq!(replay.status, 200);
    assert_eq!(replay.header("tollgate-idempotent-replay"), Some("?1"));
    assert_eq!(call(&stack, "/v1/a", ACME_KEY, "k3").await.status, 402);
    assert_eq!(stack.month_counter("acme", "requests").await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_are_per_tenant() {
    let stack = Stack::start(YAML).await;
    assert_eq!(call(&stack, "/v1/a", ACME_KEY, "shared").await.status, 200);
    let other = call(&stack, "/v1/a", BETA_KEY, "shared").await;
    assert_eq!(other.header("tollgate-idempotent-replay"), None);
    assert_eq!(stack.month_counter("acme", "requests").await, 1);
    assert_eq!(stack.month_counter("beta", "requests").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refunded_call_is_charged_when_retried() {
    let stack = Stack::start(YAML).await;
    assert_eq!(
        call(&stack, "/status/502", ACME_KEY, "retry-me")
            .await
            .status,
        502
    );
    assert_eq!(
        stack.month_counter("acme", "requests").await,
        0,
        "the failed call was refunded"
    );
    let retried = call(&stack, "/v1/a", ACME_KEY, "retry-me").await;
    assert_eq!(retried.status, 200);
    assert_eq!(
        retried.header("tollgate-idempotent-replay"),
        None,
        "the refund dropped the marker"
    );
    assert_eq!(stack.month_counter("acme", "requests").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_key_is_400() {
    let stack = Stack::start(YAML).await;
    let refused = call(&stack, "/v1/a", ACME_KEY, &"x".repeat(256)).await;
    assert_eq!(refused.problem(400)["type"], "urn:tollgate:bad-request");
    assert_eq!(stack.month_counter("acme", "requests").await, 0);
}
