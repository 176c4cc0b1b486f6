//! Response-measured meters: a call reserves `reserve` units, and when its response has been
//! sent the reservation is settled to the amount the response reports (JSON, the last SSE event
//! carrying it, or a header), or to `default` when it reports none.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{Stack, ACME_KEY};

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
plans:
  free:
    meters:
      requests: { limit: 100000, period: month }
      tokens: { limit: {token_limit}, period: month }
routes:
  - name: units
    match: { path_prefix: /llm/header }
    upstream: product
    meter:
      tokens: { from_response: "header:x-units", reserve: 10 }
  - name: chat
    match: { path_prefix: /llm/ }
    upstream: product
    meter:
      requests: 1
      tokens: { from_response: "json:usage.total_tokens", reserve: 100, default: 7 }
"#;

async fn stack(token_limit: u64) -> Stack {
    Stack::start(&YAML.replace("{token_limit}", &token_limit.to_string())).await
}

/// Settlement happens once the answer is sent: wait (bounded) for the counter to read `want`.
pub(crate) async fn settled(stack: &Stack, meter: &str, want: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = stack.month_counter("acme", meter).await;
        if got == want || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn json_sse_header_and_missing_usage_settle_exactly() {
    let stack = stack(1_000_000).await;
    let json = stack.get("/llm/json/42", Some(ACME_KEY)).await;
    assert_eq!(json.status, 200);
    assert!(
        json.body.contains("\"total_tokens\":42"),
        "the body reaches the client whole"
    );
    assert_eq!(settled(&stack, "tokens", 42).await, 42);

    let sse = stack.get("/llm/sse/30", Some(ACME_KEY)).await;
    assert!(sse.body.ends_with("data: [DONE]\n\n"), "{}", sse.body);
    assert_eq!(
        settled(&stack, "tokens", 72).await,
        72,
        "the last usage event counts"
    );

    assert_eq!(stack.get("/llm/none", Some(ACME_KEY)).await.status, 200);
    assert_eq!(
        settled(&stack, "tokens", 79).await,
        79,
        "no usage: the default (7)"
    );

    assert_eq!(stack.get("/llm/header/5", Some(ACME_KEY)).await.status, 200);
    assert_eq!(settled(&stack, "tokens", 84).await, 84);
    assert_eq!(
        stack.month_counter("acme", "requests").await,
        3,
        "fixed meters are not settled"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_calls_never_reserve_past_the_limit_and_settle_to_the_measured_sum() {
    // 200 calls reserving 100 each against a limit of 5,000: at most 50 reservations fit at
    // once; each settles to 42, which frees room for more.
    let stack = Arc::new(stack(5_000).await);
    let calls: Vec<_> = (0..200)
        .map(|_| {
            let stack = stack.clone();
            tokio::spawn(async move { stack.get("/llm/json/42", Some(ACME_KEY)).await.status })
        })
        .collect();
    let mut admitted = 0;
    for c in calls {
        match c.await.unwrap() {
            200 => admitted += 1,
            402 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(
        admitted >= 50,
        "at least the first 50 reservations fit: {admitted}"
    );
    let want = 42 * admitted;
    assert_eq!(
        settled(&stack, "tokens", want).await,
        want,
        "{admitted} admitted calls of 42 tokens"
    );
    assert!(
        want <= 5_000 + 42,
        "admitted reservations never passed the limit"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_measured_overshoot_is_counted_and_the_next_call_is_refused() {
    // Reserve 100 fits (limit 150), the response says 400: the tenant is over, the answer
    // already sent is not cut, and the next call gets a 402 whose `used` shows the overshoot.
    let stack = stack(150).await;
    let big = stack.get("/llm/json/400", Some(ACME_KEY)).await;
    assert_eq!(big.status, 200);
    assert!(big.body.contains("\"total_tokens\":400"));
    assert_eq!(settled(&stack, "tokens", 400).await, 400);
    let next = stack.get("/llm/json/1", Some(ACME_KEY)).await;
    let body = next.problem(402);
    assert_eq!(body["meter"], "tokens");
    assert_eq!(body["used"], 400);
}
