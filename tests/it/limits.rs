//! Limits hold exactly: under concurrency, across gateway instances, across meters; and the
//! usage headers count down and warn as SPEC §4 says.

use std::collections::BTreeMap;

use crate::common::{
    self, clock, get, member, render, Gateway, Stack, ACME_KEY, BETA_KEY, DELTA_KEY, GAMMA_KEY,
};

/// `acme` (plan `small`) has 200 requests and 5 exports a month and no burst limit, so only
/// the meters can refuse a call; `beta` (plan `free`) has 10 requests and a warning at 75%;
/// `gamma` (plan `daily`) has 2 requests a day; `delta` (plan `metered`) 2 a month, with overage.
/// The store fails closed so that a Redis hiccup shows up as a 503, never as a silent overshoot.
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
tenants:
  acme:
    plan: small
    keys:
      - id: acme-1
        sha256: "{acme_sha}"
  beta:
    plan: free
    keys:
      - id: beta-1
        sha256: "{beta_sha}"
  gamma:
    plan: daily
    keys:
      - id: gamma-1
        sha256: "{gamma_sha}"
  delta:
    plan: metered
    keys:
      - id: delta-1
        sha256: "{delta_sha}"
plans:
  small:
    meters:
      requests: { limit: 200, period: month }
      exports: { limit: 5, period: month }
  free:
    meters:
      requests: { limit: 10, period: month, warn_at: 0.75 }
    upgrade: { plan: pro, url: "https://example.com/billing?plan=pro" }
  pro:
    meters:
      requests: { limit: 1000000, period: month }
  daily:
    meters:
      requests: { limit: 2, period: day }
  metered:
    meters:
      requests: { limit: 2, period: month, overage: true }
routes:
  - name: export
    match: { path_prefix: /v1/export }
    upstream: product
    meter: { requests: 1, exports: 5 }
  - name: api
    match: { path_prefix: / }
    upstream: product
    meter: { requests: 1 }
"#;

/// Fires `count` calls at once, alternating between the given gateways; returns status counts.
async fn burst_of_calls(gateways: &[&Gateway], count: usize) -> BTreeMap<u16, usize> {
    let client = common::client();
    let mut tasks = Vec::new();
    for i in 0..count {
        let (client, url) = (
            client.clone(),
            gateways[i % gateways.len()].url("/v1/items"),
        );
        tasks.push(tokio::spawn(async move {
            get(&client, &url, Some(ACME_KEY)).await
        }));
    }
    let mut statuses = BTreeMap::new();
    for task in tasks {
        let answer = task.await.unwrap();
        assert!(
            answer.status == 200 || answer.status == 402,
            "only 200 and 402 may answer; got {} {}",
            answer.status,
            answer.body
        );
        *statuses.entry(answer.status).or_insert(0) += 1;
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_never_overshoot_the_limit() {
    let stack = Stack::start(YAML).await;

    let statuses = burst_of_calls(&[&stack.gateway], 500).await;

    assert_eq!(
        statuses,
        BTreeMap::from([(200, 200), (402, 300)]),
        "{}",
        stack.gateway.stderr()
    );
    assert_eq!(stack.month_counter("acme", "requests").await, 200);
    assert_eq!(
        stack.upstream.hits(),
        200,
        "only admitted calls reach the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_sharing_redis_never_overshoot_the_limit() {
    let stack = Stack::start(YAML).await;
    let second = render(YAML, &stack.redis.url(), &stack.upstream.addr());
    let second = Gateway::start(&second).await;

    let statuses = burst_of_calls(&[&stack.gateway, &second], 500).await;

    assert_eq!(statuses, BTreeMap::from([(200, 200), (402, 300)]));
    assert_eq!(stack.month_counter("acme", "requests").await, 200);
    assert_eq!(stack.upstream.hits(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn counter_is_an_integer_key_with_a_ttl() {
    let stack = Stack::start(YAML).await;

    assert_eq!(stack.get("/v1/items", Some(ACME_KEY)).await.status, 200);
    assert_eq!(stack.get("/v1/items", Some(ACME_KEY)).await.status, 200);

    let key = common::month_key("acme", "requests");
    assert_eq!(stack.redis.get_int(&key).await, 2, "counter {key}");
    let ttl = stack.redis.ttl(&key).await;
    assert!(
        ttl > 0,
        "counter {key} must expire after its period; TTL is {ttl}"
    );
    assert!(
        ttl >= clock::secs_to_next_month() - 60,
        "TTL {ttl} s ends before the period does"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_over_one_of_two_meters_is_refused_and_moves_neither() {
    let stack = Stack::start(YAML).await;
    assert_eq!(stack.get("/v1/export", Some(ACME_KEY)).await.status, 200);
    assert_eq!(stack.month_counter("acme", "requests").await, 1);
    assert_eq!(stack.month_counter("acme", "exports").await, 5);

    // `exports` is now exhausted (5 of 5); `requests` has room (1 of 200).
    let answer = stack.get("/v1/export", Some(ACME_KEY)).await;

    let problem = answer.problem(402);
    assert_eq!(problem["meter"], "exports", "{problem}");
    assert_eq!(problem["violated-policies"], serde_json::json!(["exports"]));
    assert_eq!(problem["limit"], 5);
    assert_eq!(problem["used"], 5);
    assert_eq!(
        stack.month_counter("acme", "requests").await,
        1,
        "requests must not move"
    );
    assert_eq!(
        stack.month_counter("acme", "exports").await,
        5,
        "exports must not move"
    );
    assert_eq!(stack.upstream.hits(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn ratelimit_remaining_counts_down_exactly() {
    let stack = Stack::start(YAML).await;
    for used in 1..=10 {
        let answer = stack.get("/v1/items", Some(BETA_KEY)).await;
        assert_eq!(answer.status, 200, "call {used}: {}", answer.body);

        let policy = member(&answer, "ratelimit-policy", "requests");
        assert_eq!(policy.int("q"), 10, "call {used}: {policy:?}");
        assert!(policy.int("w") > 0, "call {used}: {policy:?}");
        let limit = member(&answer, "ratelimit", "requests");
        assert_eq!(limit.int("r"), 10 - used, "call {used}: {limit:?}");
        let reset = limit.int("t");
        let expected = clock::secs_to_next_month();
        assert!(
            (reset - expected).abs() <= 5,
            "call {used}: t={reset}, expected ~{expected}"
        );
    }
    let answer = stack.get("/v1/items", Some(BETA_KEY)).await;
    assert_eq!(answer.status, 402);
    assert_eq!(member(&answer, "ratelimit", "requests").int("r"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn warning_and_upgrade_headers_appear_past_warn_at() {
    let stack = Stack::start(YAML).await;
    // warn_at 0.75 of 10: calls 1-7 are below it, calls 8-10 are past it.
    for used in 1..=10 {
        let answer = stack.get("/v1/items", Some(BETA_KEY)).await;
        assert_eq!(answer.status, 200, "call {used}: {}", answer.body);
        if used <= 7 {
            assert_eq!(answer.header("tollgate-warning"), None, "call {used}");
            assert_eq!(answer.header("tollgate-upgrade"), None, "call {used}");
            continue;
        }
        let warning = answer
            .header("tollgate-warning")
            .unwrap_or_else(|| panic!("call {used}"));
        assert_eq!(warning, format!("\"requests\";used={used};limit=10"));
        let upgrade = answer
            .header("tollgate-upgrade")
            .unwrap_or_else(|| panic!("call {used}"));
        assert_eq!(
            upgrade,
            "\"pro\";url=\"https://example.com/billing?plan=pro\""
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn day_meter_counts_under_todays_key_and_resets_tomorrow() {
    let stack = Stack::start(YAML).await;
    for call in 1..=2 {
        assert_eq!(
            stack.get("/v1/items", Some(GAMMA_KEY)).await.status,
            200,
            "call {call}"
        );
    }

    let answer = stack.get("/v1/items", Some(GAMMA_KEY)).await;

    let problem = answer.problem(402);
    assert_eq!(problem["resets_at"], clock::tomorrow_rfc3339(), "{problem}");
    assert_eq!(
        stack
            .redis
            .get_int(&common::day_key("gamma", "requests"))
            .await,
        2
    );
    let ttl = stack.redis.ttl(&common::day_key("gamma", "requests")).await;
    assert!(ttl > 0, "a day counter expires; TTL is {ttl}");
}

#[tokio::test(flavor = "multi_thread")]
async fn overage_meter_never_blocks_and_counts_past_the_limit() {
    let stack = Stack::start(YAML).await;

    for call in 1..=4 {
        let answer = stack.get("/v1/items", Some(DELTA_KEY)).await;
        assert_eq!(
            answer.status, 200,
            "call {call} of a 2-call overage plan: {}",
            answer.body
        );
        if call > 2 {
            // Past the limit the warning says the call is in overage.
            assert_eq!(
                answer.header("tollgate-warning"),
                Some(format!("\"requests\";used={call};limit=2;overage").as_str())
            );
        }
    }

    assert_eq!(
        stack.month_counter("delta", "requests").await,
        4,
        "overage is counted"
    );
    assert_eq!(stack.upstream.hits(), 4);
}

/// The reservation connection takes the user, the password and the database from the URL,
/// over TCP as over the unix socket the other tests use: exactly the limit is admitted, the
/// counter is in the URL's database, and a wrong password fails the calls (closed) instead of
/// letting them through uncounted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_password_and_database_from_the_url_are_used_over_tcp() {
    let stack = Stack::start(YAML).await;
    let port = crate::common::gateway::free_port();
    let mut admin = stack.redis.conn().await;
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("port")
        .arg(port)
        .query_async(&mut admin)
        .await
        .unwrap();
    let () = redis::cmd("ACL")
        .arg(&["SETUSER", "meter", "on", ">s3cret", "~*", "&*", "+@all"])
        .query_async(&mut admin)
        .await
        .unwrap();
    let url = format!("redis://meter:s3cret@127.0.0.1:{port}/3");
    let gateway = Gateway::start(&render(YAML, &url, &stack.upstream.addr())).await;

    let statuses = burst_of_calls(&[&gateway], 300).await;

    assert_eq!(
        statuses,
        BTreeMap::from([(200, 200), (402, 100)]),
        "{}",
        gateway.stderr()
    );
    let key = common::month_key("acme", "requests");
    let in_db = |db: i64| {
        let key = key.clone();
        let redis = &stack.redis;
        async move {
            let mut conn = redis.conn().await;
            let () = redis::cmd("SELECT")
                .arg(db)
                .query_async(&mut conn)
                .await
                .unwrap();
            let value: Option<i64> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            value.unwrap_or(0)
        }
    };
    assert_eq!(
        in_db(3).await,
        200,
        "the counter lives in the URL's database"
    );
    assert_eq!(in_db(0).await, 0, "and not in database 0");

    let wrong = format!("redis://meter:wrong@127.0.0.1:{port}/3");
    let refused = Gateway::start(&render(YAML, &wrong, &stack.upstream.addr())).await;
    let answer = get(&common::client(), &refused.url("/v1/items"), Some(ACME_KEY)).await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(in_db(3).await, 200, "a refused call counts nothing");
    assert_eq!(stack.upstream.hits(), 200);
}
