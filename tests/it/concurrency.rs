//! `plans.<name>.concurrency`: a tenant's calls in flight at once, counted from admission to
//! the end of the answer; a call over it gets `429` and is charged nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use crate::common::streamer::Streamer;
use crate::common::{self, get, render, Answer, Gateway, RedisServer, Stack, ACME_KEY, BETA_KEY};

/// `acme` may have 2 calls in flight; `beta` is on a plan without the limit.
const YAML: &str = r#"
server: { listen: "{listen}", threads: 2 }
admin: { listen: "{admin}" }
store: { kind: redis, url: "{redis}", timeout: 2s }
upstreams:
  product: { targets: ["{upstream}"] }
tenants:
  acme: { plan: scraper, keys: [{ id: acme-1, sha256: "{acme_sha}" }] }
  beta: { plan: open, keys: [{ id: beta-1, sha256: "{beta_sha}" }] }
plans:
  scraper:
    concurrency: 2
    meters: { requests: { limit: 1000, period: month } }
  open:
    meters: { requests: { limit: 1000, period: month } }
routes:
  - { name: api, match: { path_prefix: / }, upstream: product, meter: { requests: 1 } }
"#;

/// Starts `count` calls to `path` with `key` at once; returns their tasks.
fn start(
    stack: &Stack,
    key: &'static str,
    path: &str,
    count: usize,
) -> Vec<tokio::task::JoinHandle<Answer>> {
    (0..count)
        .map(|_| {
            let (client, url) = (stack.client.clone(), stack.gateway.url(path));
            tokio::spawn(async move { get(&client, &url, Some(key)).await })
        })
        .collect()
}

async fn statuses(
    tasks: Vec<tokio::task::JoinHandle<Answer>>,
) -> (BTreeMap<u16, usize>, Vec<Answer>) {
    let mut counts = BTreeMap::new();
    let mut answers = Vec::new();
    for task in tasks {
        let answer = task.await.unwrap();
        *counts.entry(answer.status).or_insert(0) += 1;
        answers.push(answer);
    }
    (counts, answers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_over_the_limit_in_flight_get_429_and_are_not_charged() {
    let stack = Stack::start(YAML).await;

    let slow = start(&stack, ACME_KEY, "/v1/slow/2000", 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (counts, answers) = statuses(start(&stack, ACME_KEY, "/v1/items", 3)).await;
    let other = get(
        &stack.client,
        &stack.gateway.url("/v1/items"),
        Some(BETA_KEY),
    )
    .await;

    assert_eq!(
        counts,
        BTreeMap::from([(429, 3)]),
        "two slow calls hold both slots"
    );
    for answer in &answers {
        let problem = answer.problem(429);
        assert_eq!(
            problem["violated-policies"],
            json!(["concurrency"]),
            "{problem}"
        );
        assert_eq!(problem["limit"], 2);
        assert_eq!(problem["tenant"], "acme");
        assert_eq!(problem["plan"], "scraper");
        assert_eq!(answer.header("retry-after"), Some("1"));
    }
    assert_eq!(other.status, 200, "another tenant has slots of its own");
    let (slow, _) = statuses(slow).await;
    assert_eq!(slow, BTreeMap::from([(200, 2)]));
    assert_eq!(
        stack.month_counter("acme", "requests").await,
        2,
        "refused calls charge nothing"
    );

    // The slots are back once the slow calls answered.
    let (counts, _) = statuses(start(&stack, ACME_KEY, "/v1/items", 2)).await;
    assert_eq!(counts, BTreeMap::from([(200, 2)]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_or_refunded_call_gives_its_slot_back() {
    let stack = Stack::start(YAML).await;
    let client = common::client();

    for _ in 0..3 {
        let answer = get(&client, &stack.gateway.url("/status/503"), Some(ACME_KEY)).await;
        assert_eq!(answer.status, 503, "{}", answer.body);
    }
    let (counts, _) = statuses(start(&stack, ACME_KEY, "/v1/items", 2)).await;

    assert_eq!(
        counts,
        BTreeMap::from([(200, 2)]),
        "no slot was kept by a failed call"
    );
    assert_eq!(stack.month_counter("acme", "requests").await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_answer_holds_its_slot_until_its_last_byte() {
    let streamer = Streamer::start(
        vec!["data: first\n\n".to_string()],
        vec!["data: last\n\n".to_string()],
    )
    .await;
    let redis = RedisServer::start().await;
    let yaml = YAML.replace("concurrency: 2", "concurrency: 1");
    let gateway = Gateway::start(&render(&yaml, &redis.url(), &streamer.addr())).await;
    let client = common::client();
    let url = gateway.url("/v1/stream");

    let mut streaming = client.get(&url).bearer_auth(ACME_KEY).send().await.unwrap();
    assert_eq!(streaming.status(), 200);
    let first = tokio::time::timeout(Duration::from_secs(5), streaming.chunk())
        .await
        .expect("the first part arrives while the rest is held back")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("first"));

    // The answer's head went out long ago; the call is still in flight.
    let refused = get(&client, &url, Some(ACME_KEY)).await;
    assert_eq!(
        refused.problem(429)["violated-policies"],
        json!(["concurrency"])
    );

    streamer.release();
    while streaming.chunk().await.unwrap().is_some() {}
    let mut next = None;
    for _ in 0..50 {
        let response = client.get(&url).bearer_auth(ACME_KEY).send().await.unwrap();
        if response.status() == 200 {
            next = Some(response);
            break;
        }
        // The slot is given back when the finished call's state is dropped, just after its
        // last byte went out.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(next.is_some(), "the slot came back once the stream ended");
    streamer.release();
}
