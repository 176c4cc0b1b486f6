//! The embedded store keeps counts in one local file, across gateway restarts.

use crate::common::{client, get, render, Gateway, Upstream, ACME_KEY};

const YAML: &str = r#"
server:
  listen: "{listen}"
  threads: 2
  grace_period: 1s
admin:
  listen: "{admin}"
store:
  kind: embedded
  path: "{dir}/usage.db"
upstreams:
  product:
    targets: ["{upstream}"]
tenants:
  acme:
    plan: free
    keys:
      - id: acme-1
        sha256: "{acme_sha}"
plans:
  free:
    meters:
      requests: { limit: 5, period: month }
routes:
  - name: api
    match: { path_prefix: / }
    upstream: product
    meter: { requests: 1 }
"#;

/// Makes calls `from..=to` (numbered from 1 within the period) and expects each one admitted.
async fn admitted(gateway: &Gateway, from: usize, to: usize) {
    let client = client();
    for n in from..=to {
        let answer = get(&client, &gateway.url("/v1/items"), Some(ACME_KEY)).await;
        assert_eq!(
            answer.status,
            200,
            "call {n}: {}\n{}",
            answer.body,
            gateway.stderr()
        );
    }
}

/// Call 6 of a 5-a-month plan is refused, reporting 5 used.
async fn limit_bites(gateway: &Gateway) {
    let answer = get(&client(), &gateway.url("/v1/items"), Some(ACME_KEY)).await;
    let problem = answer.problem(402);
    assert_eq!(problem["used"], 5, "{problem}");
    assert_eq!(problem["limit"], 5, "{problem}");
}

#[tokio::test(flavor = "multi_thread")]
async fn counts_survive_a_graceful_restart() {
    let upstream = Upstream::start().await;
    let mut gateway = Gateway::start(&render(YAML, "", &upstream.addr())).await;
    admitted(&gateway, 1, 3).await;

    gateway.stop().await;
    gateway.start_again().await;

    admitted(&gateway, 4, 5).await;
    limit_bites(&gateway).await;
    assert_eq!(upstream.hits(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn counts_survive_a_crash() {
    let upstream = Upstream::start().await;
    let mut gateway = Gateway::start(&render(YAML, "", &upstream.addr())).await;
    admitted(&gateway, 1, 3).await;

    // SIGKILL: an admitted call must already be durable when its answer is sent.
    gateway.kill();
    gateway.start_again().await;

    admitted(&gateway, 4, 5).await;
    limit_bites(&gateway).await;
    assert_eq!(upstream.hits(), 5);
}
