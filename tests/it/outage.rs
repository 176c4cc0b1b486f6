//! Redis trouble: killed (fail_open / fail_closed, then back), scripts flushed, readiness.

use std::time::{Duration, Instant};

use crate::common::{Stack, ACME_KEY, BETA_KEY};

/// `store.timeout` is 100 ms: every store call gives up after that.
const YAML: &str = r#"
server:
  listen: "{listen}"
  threads: 2
admin:
  listen: "{admin}"
store:
  kind: redis
  url: "{redis}"
  timeout: 100ms
  on_outage: {on_outage}
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

/// How long the gateway may take to notice that Redis is back.
const RECOVERY: Duration = Duration::from_secs(15);

async fn stack(on_outage: &str) -> Stack {
    Stack::start(&YAML.replace("{on_outage}", on_outage)).await
}

/// Calls until a call is metered again on the restarted (empty) Redis (its answer carries the
/// usage headers); returns the counter once settled. A reservation sent while Redis was coming
/// back may have timed out (that call went through unmetered) and run late: the gateway then
/// refunds it as soon as its reply arrives, so the counter is read after that has had time.
async fn wait_until_metered(stack: &Stack) -> i64 {
    let deadline = Instant::now() + RECOVERY;
    loop {
        let answer = stack.get("/v1/items", Some(ACME_KEY)).await;
        assert!(
            matches!(answer.status, 200 | 503),
            "{} {}",
            answer.status,
            answer.body
        );
        if answer.status == 200 && answer.header("ratelimit").is_some() {
            tokio::time::sleep(Duration::from_millis(500)).await;
            return stack.month_counter("acme", "requests").await;
        }
        assert!(
            Instant::now() < deadline,
            "metering did not resume within {RECOVERY:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fail_open_proxies_while_redis_is_down_and_meters_again_after() {
    let mut stack = stack("fail_open").await;
    assert_eq!(stack.get("/v1/items", Some(ACME_KEY)).await.status, 200);
    assert_eq!(stack.month_counter("acme", "requests").await, 1);

    stack.redis.kill();
    for call in 0..3 {
        let answer = stack.get("/v1/items", Some(ACME_KEY)).await;
        assert_eq!(
            answer.status, 200,
            "call {call} during the outage: {}",
            answer.body
        );
        assert_eq!(
            answer.json()["path"],
            "/v1/items",
            "proxied to the upstream"
        );
    }
    assert_eq!(stack.upstream.hits(), 4);

    stack.redis.restart().await;
    let counted = wait_until_metered(&stack).await;
    assert_eq!(stack.get("/v1/items", Some(ACME_KEY)).await.status, 200);
    assert_eq!(
        stack.month_counter("acme", "requests").await,
        counted + 1,
        "exactly one more"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fail_closed_answers_503_quickly_while_redis_is_down_and_meters_again_after() {
    let mut stack = stack("fail_closed").await;
    assert_eq!(stack.get("/v1/items", Some(ACME_KEY)).await.status, 200);

    stack.redis.kill();
    for call in 0..3 {
        let started = Instant::now();
        let answer = stack.get("/v1/items", Some(ACME_KEY)).await;
        let took = started.elapsed();

        let problem = answer.problem(503);
        assert_eq!(problem["type"], "urn:tollgate:store-unavailable");
        assert_eq!(problem["instance"], "/v1/items");
        assert!(
            answer
                .header("retry-after")
                .is_some_and(|v| v.parse::<u64>().is_ok()),
            "{answer:?}"
        );
        assert!(
            took < Duration::from_secs(1),
            "call {call}: 503 took {took:?} with a 100 ms timeout"
        );
    }
    assert_eq!(
        stack.upstream.hits(),
        1,
        "nothing is proxied while the store is down"
    );

    stack.redis.restart().await;
    let counted = wait_until_metered(&stack).await;
    assert_eq!(
        counted, 1,
        "the restarted Redis counts the first admitted call only"
    );
    assert_eq!(stack.get("/v1/items", Some(ACME_KEY)).await.status, 200);
    assert_eq!(stack.month_counter("acme", "requests").await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_follows_the_store() {
    let mut stack = stack("fail_open").await;
    let client = &stack.client;
    let ready = stack.gateway.admin_url("/readyz");
    let status = |c: &reqwest::Client| {
        let request = c.get(&ready).send();
        async move { request.await.unwrap().status().as_u16() }
    };
    assert_eq!(status(client).await, 200);

    stack.redis.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    while status(client).await != 503 {
        assert!(
            Instant::now() < deadline,
            "/readyz still 200 5 s after Redis died"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    stack.redis.restart().await;
    let deadline = Instant::now() + RECOVERY;
    while status(client).await != 200 {
        assert!(
            Instant::now() < deadline,
            "/readyz not 200 {RECOVERY:?} after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn script_flush_between_calls_keeps_exact_counts() {
    // fail_closed: were a flushed script to break a call, it would show as a 503.
    let stack = stack("fail_closed").await;
    let call = || stack.get("/v1/items", Some(ACME_KEY));

    for n in 1..=3 {
        assert_eq!(call().await.status, 200, "call {n}");
    }
    stack.redis.command(&["SCRIPT", "FLUSH"]).await;
    for n in 4..=5 {
        let answer = call().await;
        assert_eq!(
            answer.status, 200,
            "call {n} after SCRIPT FLUSH: {}",
            answer.body
        );
        assert_eq!(stack.month_counter("acme", "requests").await, n);
    }
    stack.redis.command(&["SCRIPT", "FLUSH"]).await;
    let answer = call().await;
    assert_eq!(
        answer.status, 402,
        "call 6 is over the limit of 5: {}",
        answer.body
    );
    assert_eq!(stack.month_counter("acme", "requests").await, 5);
    assert_eq!(stack.upstream.hits(), 5);
}

/// Three calls while Redis hangs: each must come back within 1 s despite the hang (the store
/// timeout is 100 ms), with `status`. Returns nothing; asserts as it goes.
async fn calls_during_hang(stack: &Stack, status: u16) {
    for call in 0..3 {
        let started = Instant::now();
        let answer = stack.get("/v1/items", Some(ACME_KEY)).await;
        let took = started.elapsed();
        assert_eq!(
            answer.status, status,
            "call {call} while Redis hangs: {}",
            answer.body
        );
        assert!(
            took < Duration::from_secs(1),
            "call {call}: took {took:?} with a 100 ms timeout"
        );
    }
}

/// Calls until one is admitted again (bounded by `RECOVERY`).
async fn wait_until_admitted(stack: &Stack) {
    let deadline = Instant::now() + RECOVERY;
    while stack.get("/v1/items", Some(ACME_KEY)).await.status != 200 {
        assert!(
            Instant::now() < deadline,
            "metering did not resume within {RECOVERY:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn store_timeout_bounds_calls_while_redis_hangs_fail_closed() {
    let stack = stack("fail_closed").await;
    assert_eq!(stack.get("/v1/items", Some(ACME_KEY)).await.status, 200);

    stack.redis.pause();
    calls_during_hang(&stack, 503).await;
    stack.redis.resume();

    wait_until_admitted(&stack).await;
    assert_eq!(
        stack.upstream.hits(),
        2,
        "no call was proxied during the hang"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn store_timeout_bounds_calls_while_redis_hangs_fail_open() {
    let stack = stack("fail_open").await;
    assert_eq!(stack.get("/v1/items", Some(ACME_KEY)).await.status, 200);

    stack.redis.pause();
    calls_during_hang(&stack, 200).await;
    stack.redis.resume();

    assert_eq!(
        stack.upstream.hits(),
        4,
        "every call was proxied during the hang"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_refused_during_a_redis_hang_are_not_charged_after_it() {
    let stack = stack("fail_closed").await;
    assert_eq!(stack.get("/v1/items", Some(ACME_KEY)).await.status, 200);

    stack.redis.pause();
    calls_during_hang(&stack, 503).await;
    stack.redis.resume();
    // Redis now runs whatever was queued while it hung. Wait until a call is admitted again.
    wait_until_admitted(&stack).await;

    // Two calls were admitted (one before, one after); the three 503s were never served. Their
    // reservations ran late, when Redis resumed, and the gateway refunds each as its late reply
    // comes in, through its other connection: that can land after the next call is admitted, so
    // the counter is polled (within `RECOVERY`) rather than read once.
    let deadline = Instant::now() + RECOVERY;
    let mut charged = stack.month_counter("acme", "requests").await;
    while charged != 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        charged = stack.month_counter("acme", "requests").await;
    }
    assert_eq!(
        charged, 2,
        "503s must not be charged (still so after {RECOVERY:?})"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plan_on_outage_overrides_the_store_default() {
    // The store fails open; plan `strict` (tenant beta) fails closed.
    let yaml = YAML
        .replace("{on_outage}", "fail_open")
        .replace(
            "      - id: acme-1\n        sha256: \"{acme_sha}\"\n",
            "      - id: acme-1\n        sha256: \"{acme_sha}\"\n  beta:\n    plan: strict\n    keys:\n      - id: beta-1\n        sha256: \"{beta_sha}\"\n",
        )
        .replace(
            "routes:",
            "  strict:\n    meters:\n      requests: { limit: 5, period: month }\n    on_outage: fail_closed\nroutes:",
        );
    let mut stack = Stack::start(&yaml).await;
    assert_eq!(stack.get("/v1/items", Some(BETA_KEY)).await.status, 200);

    stack.redis.kill();

    assert_eq!(
        stack.get("/v1/items", Some(ACME_KEY)).await.status,
        200,
        "free fails open"
    );
    let answer = stack.get("/v1/items", Some(BETA_KEY)).await;
    assert_eq!(
        answer.problem(503)["type"],
        "urn:tollgate:store-unavailable"
    );
}
