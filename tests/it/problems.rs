//! Every refusal answers an RFC 9457 problem exactly as SPEC §5 shows, with its headers, and
//! changes no counter.

use serde_json::{json, Value};

use crate::common::{clock, member, Answer, Stack, ACME_KEY, BETA_KEY};

/// `acme` (plan `free`): 3 requests a month, feature `search` only, an upgrade offer.
/// `beta` (plan `bursty`): a burst of 2, then one call a minute. No route matches `/other`.
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
    plan: free
    keys:
      - id: acme-1
        sha256: "{acme_sha}"
  beta:
    plan: bursty
    keys:
      - id: beta-1
        sha256: "{beta_sha}"
plans:
  free:
    meters:
      requests: { limit: 3, period: month }
    features: [search]
    upgrade: { plan: pro, url: "https://example.com/billing?plan=pro" }
  bursty:
    rate_limit: { requests: 1, per: 1m, burst: 2 }
    meters:
      requests: { limit: 1000, period: month }
  pro:
    meters:
      requests: { limit: 100000, period: month }
    features: [search, export]
routes:
  - name: export
    match: { path_prefix: /v1/export }
    upstream: product
    feature: export
    meter: { requests: 1 }
  - name: api
    match: { path_prefix: /v1/ }
    upstream: product
    meter: { requests: 1 }
"#;

const UPGRADE_URL: &str = "https://example.com/billing?plan=pro";

/// `title` is a non-empty summary and `detail` a non-empty sentence; neither may leak the key.
fn assert_prose(problem: &Value) {
    for field in ["title", "detail"] {
        let text = problem[field]
            .as_str()
            .unwrap_or_else(|| panic!("no {field}: {problem}"));
        assert!(!text.trim().is_empty(), "empty {field}: {problem}");
        assert!(
            !text.contains("tg_test_"),
            "{field} leaks an API key: {problem}"
        );
    }
}

fn retry_after(answer: &Answer) -> i64 {
    let value = answer
        .header("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After: {answer:?}"));
    value
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After is not delta-seconds: {value}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn quota_402_matches_the_spec_field_by_field() {
    let stack = Stack::start(YAML).await;
    for call in 1..=3 {
        assert_eq!(
            stack.get("/v1/search", Some(ACME_KEY)).await.status,
            200,
            "call {call}"
        );
    }

    let answer = stack.get("/v1/search", Some(ACME_KEY)).await;

    let problem = answer.problem(402);
    assert_eq!(
        problem["type"],
        "https://iana.org/assignments/http-problem-types#quota-exceeded"
    );
    assert_eq!(problem["title"], "Quota exceeded");
    assert_eq!(problem["instance"], "/v1/search");
    assert_eq!(problem["violated-policies"], json!(["requests"]));
    assert_eq!(problem["tenant"], "acme");
    assert_eq!(problem["plan"], "free");
    assert_eq!(problem["meter"], "requests");
    assert_eq!(problem["limit"], 3);
    assert_eq!(problem["used"], 3);
    assert_eq!(problem["resets_at"], clock::next_month_rfc3339());
    assert_eq!(
        problem["upgrade"],
        json!({ "plan": "pro", "url": UPGRADE_URL })
    );
    assert_prose(&problem);
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("requests") && detail.contains('3'),
        "detail: {detail}"
    );

    let wait = retry_after(&answer);
    let expected = clock::secs_to_next_month();
    assert!(
        (wait - expected).abs() <= 5,
        "Retry-After {wait}, expected ~{expected}"
    );
    assert_eq!(
        answer.header("tollgate-warning"),
        Some("\"requests\";used=3;limit=3")
    );
    assert_eq!(
        answer.header("tollgate-upgrade"),
        Some(format!("\"pro\";url=\"{UPGRADE_URL}\"").as_str())
    );
    assert_eq!(member(&answer, "ratelimit", "requests").int("r"), 0);
    assert_eq!(
        stack.month_counter("acme", "requests").await,
        3,
        "a 402 changes no counter"
    );
    assert_eq!(stack.upstream.hits(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn feature_402_names_the_feature_and_the_upgrade() {
    let stack = Stack::start(YAML).await;

    let answer = stack.get("/v1/export/all", Some(ACME_KEY)).await;

    let problem = answer.problem(402);
    assert_eq!(problem["type"], "urn:tollgate:feature-not-in-plan");
    assert_eq!(problem["instance"], "/v1/export/all");
    assert_eq!(problem["feature"], "export");
    assert_eq!(problem["tenant"], "acme");
    assert_eq!(problem["plan"], "free");
    assert_eq!(
        problem["upgrade"],
        json!({ "plan": "pro", "url": UPGRADE_URL })
    );
    assert_prose(&problem);
    assert_eq!(
        answer.header("tollgate-upgrade"),
        Some(format!("\"pro\";url=\"{UPGRADE_URL}\"").as_str())
    );
    assert_eq!(
        stack.month_counter("acme", "requests").await,
        0,
        "a 402 changes no counter"
    );
    assert_eq!(stack.upstream.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn burst_429_names_the_burst_policy_and_when_to_retry() {
    let stack = Stack::start(YAML).await;
    for call in 1..=2 {
        let answer = stack.get("/v1/search", Some(BETA_KEY)).await;
        assert_eq!(answer.status, 200, "call {call}: {}", answer.body);
        let policy = member(&answer, "ratelimit-policy", "burst");
        assert_eq!((policy.int("q"), policy.int("w")), (2, 60), "{policy:?}");
        assert_eq!(member(&answer, "ratelimit", "burst").int("r"), 2 - call);
    }

    let answer = stack.get("/v1/search", Some(BETA_KEY)).await;

    let problem = answer.problem(429);
    assert_eq!(
        problem["type"],
        "https://iana.org/assignments/http-problem-types#quota-exceeded"
    );
    assert_eq!(problem["violated-policies"], json!(["burst"]));
    assert_eq!(problem["instance"], "/v1/search");
    assert_eq!(problem["tenant"], "beta");
    assert_eq!(problem["plan"], "bursty");
    assert_prose(&problem);
    let wait = retry_after(&answer);
    assert!(
        (1..=60).contains(&wait),
        "Retry-After {wait} must be within the 60 s window"
    );
    assert_eq!(member(&answer, "ratelimit", "burst").int("r"), 0);
    assert_eq!(
        stack.month_counter("beta", "requests").await,
        2,
        "a 429 changes no counter"
    );
    assert_eq!(stack.upstream.hits(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_key_is_401_with_a_bearer_challenge() {
    let stack = Stack::start(YAML).await;

    let answer = stack.get("/v1/search", None).await;

    let problem = answer.problem(401);
    assert_eq!(problem["type"], "urn:tollgate:unauthenticated");
    assert_eq!(problem["instance"], "/v1/search");
    assert_prose(&problem);
    let challenge = answer
        .header("www-authenticate")
        .expect("no WWW-Authenticate");
    assert!(
        challenge.starts_with("Bearer"),
        "WWW-Authenticate: {challenge}"
    );
    assert_eq!(stack.upstream.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_key_is_401_invalid_token_without_echoing_the_key() {
    let stack = Stack::start(YAML).await;

    let answer = stack.get("/v1/search", Some("tg_test_nobody")).await;

    let problem = answer.problem(401);
    assert_eq!(problem["type"], "urn:tollgate:unauthenticated");
    assert_eq!(problem["instance"], "/v1/search");
    assert_prose(&problem);
    assert!(
        !answer.body.contains("tg_test_nobody"),
        "the body echoes the key: {}",
        answer.body
    );
    let challenge = answer
        .header("www-authenticate")
        .expect("no WWW-Authenticate");
    assert!(
        challenge.starts_with("Bearer"),
        "WWW-Authenticate: {challenge}"
    );
    assert!(
        challenge.contains("error=\"invalid_token\""),
        "WWW-Authenticate: {challenge}"
    );
    assert_eq!(stack.upstream.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_route_is_404_before_any_authentication() {
    let stack = Stack::start(YAML).await;

    // Matching the route is step 1, so even a call without a key learns there is no route.
    let anonymous = stack.get("/other", None).await;
    let known = stack.get("/other/thing", Some(ACME_KEY)).await;

    for (answer, path) in [(anonymous, "/other"), (known, "/other/thing")] {
        let problem = answer.problem(404);
        assert_eq!(problem["type"], "urn:tollgate:no-route");
        assert_eq!(problem["instance"], path);
        assert_prose(&problem);
    }
    assert_eq!(
        stack.month_counter("acme", "requests").await,
        0,
        "a 404 changes no counter"
    );
    assert_eq!(stack.upstream.hits(), 0);
}
