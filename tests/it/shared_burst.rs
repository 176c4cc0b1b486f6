//! `rate_limit.shared: true`: one burst allowance for every gateway instance, kept by Redis in
//! the reservation's script; exact under concurrency, charging nothing when it refuses, and
//! kept by each instance on its own while the store is down.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use crate::common::{
    self, get, member, render, Answer, Gateway, Stack, ACME_KEY, BETA_KEY, GAMMA_KEY,
};

/// `acme` shares a burst of 20 (one call an hour after it) between instances and fails open;
/// `beta` has the same limit kept by each instance; `gamma` shares a burst of 2 refilled one
/// call a second. `/v1/free` charges no meter.
const YAML: &str = r#"
server:
  listen: "{listen}"
  threads: 2
admin:
  listen: "{admin}"
store:
  kind: redis
  url: "{redis}"
  timeout: 500ms
  on_outage: fail_closed
upstreams:
  product:
    targets: ["{upstream}"]
tenants:
  acme: { plan: shared, keys: [{ id: acme-1, sha256: "{acme_sha}" }] }
  beta: { plan: local, keys: [{ id: beta-1, sha256: "{beta_sha}" }] }
  gamma: { plan: refill, keys: [{ id: gamma-1, sha256: "{gamma_sha}" }] }
plans:
  shared:
    rate_limit: { requests: 1, per: 1h, burst: 20, shared: true }
    meters: { requests: { limit: 1000, period: month } }
    on_outage: fail_open
  local:
    rate_limit: { requests: 1, per: 1h, burst: 5 }
    meters: { requests: { limit: 1000, period: month } }
  refill:
    rate_limit: { requests: 1, per: 1s, burst: 2, shared: true }
    meters: { requests: { limit: 1000, period: month } }
routes:
  - { name: free, match: { path_prefix: /v1/free }, upstream: product }
  - { name: api, match: { path_prefix: / }, upstream: product, meter: { requests: 1 } }
"#;

/// Fires `count` calls with `key` at once, alternating between `gateways`.
async fn at_once(gateways: &[&Gateway], key: &'static str, count: usize) -> Vec<Answer> {
    let client = common::client();
    let tasks: Vec<_> = (0..count)
        .map(|i| {
            let (client, url) = (
                client.clone(),
                gateways[i % gateways.len()].url("/v1/items"),
            );
            tokio::spawn(async move { get(&client, &url, Some(key)).await })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

fn statuses(answers: &[Answer]) -> BTreeMap<u16, usize> {
    let mut counts = BTreeMap::new();
    for a in answers {
        *counts.entry(a.status).or_insert(0) += 1;
    }
    counts
}

fn retry_after(answer: &Answer) -> u64 {
    answer
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no delta-seconds Retry-After: {answer:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_calls_at_once_through_two_gateways_admit_exactly_the_burst() {
    let stack = Stack::start(YAML).await;
    let second = Gateway::start(&render(YAML, &stack.redis.url(), &stack.upstream.addr())).await;

    let answers = at_once(&[&stack.gateway, &second], ACME_KEY, 50).await;

    assert_eq!(
        statuses(&answers),
        BTreeMap::from([(200, 20), (429, 30)]),
        "{}",
        stack.gateway.stderr()
    );
    for refused in answers.iter().filter(|a| a.status == 429) {
        let problem = refused.problem(429);
        assert_eq!(problem["violated-policies"], json!(["burst"]), "{problem}");
        assert_eq!(problem["tenant"], "acme");
        assert_eq!(problem["plan"], "shared");
        let wait = retry_after(refused);
        assert!(
            (1..=3600).contains(&wait),
            "Retry-After {wait} must be within the hour one call takes to refill"
        );
        assert_eq!(member(refused, "ratelimit", "burst").int("r"), 0);
    }
    assert_eq!(
        stack.month_counter("acme", "requests").await,
        20,
        "a call the shared limit refused charges nothing"
    );
    assert_eq!(stack.upstream.hits(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_limit_kept_by_each_instance_lets_each_through() {
    let stack = Stack::start(YAML).await;
    let second = Gateway::start(&render(YAML, &stack.redis.url(), &stack.upstream.addr())).await;

    let answers = at_once(&[&stack.gateway, &second], BETA_KEY, 14).await;

    assert_eq!(
        statuses(&answers),
        BTreeMap::from([(200, 10), (429, 4)]),
        "without `shared`, each of the two instances admits its own burst of 5"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_allowance_counts_down_across_instances_and_routes() {
    let stack = Stack::start(YAML).await;
    let second = Gateway::start(&render(YAML, &stack.redis.url(), &stack.upstream.addr())).await;
    let client = common::client();

    for call in 1..=20u16 {
        // Alternate instances, and metered and meter-less routes: one allowance for all.
        let gateway = if call % 2 == 0 {
            &second
        } else {
            &stack.gateway
        };
        let path = if call % 3 == 0 {
            "/v1/free"
        } else {
            "/v1/items"
        };
        let answer = get(&client, &gateway.url(path), Some(ACME_KEY)).await;
        assert_eq!(answer.status, 200, "call {call}: {}", answer.body);
        let policy = member(&answer, "ratelimit-policy", "burst");
        assert_eq!((policy.int("q"), policy.int("w")), (20, 3600), "{policy:?}");
        assert_eq!(
            member(&answer, "ratelimit", "burst").int("r"),
            i64::from(20 - call),
            "call {call} on {path}"
        );
    }
    let answer = get(&client, &second.url("/v1/free"), Some(ACME_KEY)).await;
    assert_eq!(
        answer.problem(429)["violated-policies"],
        json!(["burst"]),
        "a route without meters is limited by the same allowance"
    );

    let key = "tg:{acme}:burst";
    let ttl = stack.redis.ttl(key).await;
    assert!(
        (19 * 3600..=20 * 3600).contains(&ttl),
        "{key} expires when the allowance is full again (20 calls at one an hour); TTL {ttl} s"
    );
    assert_eq!(stack.month_counter("acme", "requests").await, 14);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shared_allowance_refills_at_the_sustained_rate() {
    let stack = Stack::start(YAML).await;
    let second = Gateway::start(&render(YAML, &stack.redis.url(), &stack.upstream.addr())).await;
    let client = common::client();
    let call = |gateway: &Gateway| {
        let (client, url) = (client.clone(), gateway.url("/v1/items"));
        async move { get(&client, &url, Some(GAMMA_KEY)).await }
    };

    assert_eq!(call(&stack.gateway).await.status, 200);
    assert_eq!(call(&second).await.status, 200);
    let refused = call(&stack.gateway).await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(retry_after(&refused), 1, "one call refills every second");

    tokio::time::sleep(Duration::from_millis(1100)).await;

    assert_eq!(call(&second).await.status, 200, "a second later, one call");
    assert_eq!(call(&stack.gateway).await.status, 429, "and only one");
    assert_eq!(stack.month_counter("gamma", "requests").await, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn while_the_store_is_down_each_instance_keeps_the_limit_itself() {
    let mut stack = Stack::start(YAML).await;
    assert_eq!(stack.get("/v1/items", Some(ACME_KEY)).await.status, 200);

    stack.redis.kill();
    let mut counts = BTreeMap::new();
    for _ in 0..25 {
        let answer = stack.get("/v1/items", Some(ACME_KEY)).await;
        *counts.entry(answer.status).or_insert(0) += 1;
    }

    assert_eq!(
        counts,
        BTreeMap::from([(200, 20), (429, 5)]),
        "failing open, the instance's own limiter admits a burst of 20: {}",
        stack.gateway.stderr()
    );
}
