//! The anonymous tier: calls with no credentials at all get the anonymous plan, counted per
//! client IP under an id that is not the IP.

use crate::common::{Stack, ACME_KEY};

/// Anonymous callers: 2 requests a day, then an offer to sign up. `{trusted}` is filled per test.
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
    keys:
      - id: acme-1
        sha256: "{acme_sha}"
auth:
  anonymous:
    plan: anonymous
    trusted_proxies: {trusted}
    secret: "a-test-secret-of-enough-length"
plans:
  anonymous:
    meters:
      requests: { limit: 2, period: day }
    upgrade: { plan: free, url: "https://example.com/signup" }
  free:
    meters:
      requests: { limit: 1000, period: month }
routes:
  - name: api
    match: { path_prefix: /v1/ }
    upstream: product
    meter: { requests: 1 }
"#;

async fn stack(trusted: &str) -> Stack {
    Stack::start(&YAML.replace("{trusted}", trusted)).await
}

/// `GET /v1/items` without credentials, claiming to come from `xff`.
async fn call(stack: &Stack, xff: &str) -> crate::common::Answer {
    let response = stack
        .client
        .get(stack.gateway.url("/v1/items"))
        .header("x-forwarded-for", xff)
        .send()
        .await
        .unwrap();
    crate::common::http::read(response).await
}

async fn redis_keys(stack: &Stack) -> Vec<String> {
    let mut conn = stack.redis.conn().await;
    redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_ips_behind_a_trusted_proxy_are_counted_apart_under_ids_that_are_not_the_ip() {
    let stack = stack(r#"["127.0.0.1/32"]"#).await;
    let statuses_a: Vec<u16> = [
        call(&stack, "203.0.113.1").await,
        call(&stack, "203.0.113.1").await,
        call(&stack, "203.0.113.1").await,
    ]
    .iter()
    .map(|a| a.status)
    .collect();
    assert_eq!(statuses_a, vec![200, 200, 402]);
    let b = call(&stack, "198.51.100.2").await;
    assert_eq!(b.status, 200, "a second IP has its own quota");

    let tenant = b.echoed_headers()["x-tollgate-tenant"][0].clone();
    assert!(tenant.starts_with("anon-"), "{tenant}");
    assert_eq!(
        b.echoed_headers()["x-tollgate-plan"],
        vec!["anonymous".to_string()]
    );

    let keys = redis_keys(&stack).await;
    let counters: Vec<&String> = keys.iter().filter(|k| k.starts_with("tg:{anon-")).collect();
    assert_eq!(counters.len(), 2, "one counter per IP: {keys:?}");
    assert!(
        keys.iter()
            .all(|k| !k.contains("203.0.113") && !k.contains("198.51.100")),
        "IPs leaked into Redis: {keys:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored() {
    let stack = stack("[]").await;
    assert_eq!(call(&stack, "203.0.113.1").await.status, 200);
    assert_eq!(call(&stack, "203.0.113.2").await.status, 200);
    // Every call came from 127.0.0.1, whatever it claimed: the third one is over the quota.
    assert_eq!(call(&stack, "203.0.113.3").await.status, 402);
    let keys = redis_keys(&stack).await;
    assert_eq!(
        keys.iter().filter(|k| k.starts_with("tg:{anon-")).count(),
        1,
        "{keys:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_anonymous_402_offers_signing_up() {
    let stack = stack("[]").await;
    call(&stack, "x").await;
    call(&stack, "x").await;
    let refused = call(&stack, "x").await;
    let body = refused.problem(402);
    assert_eq!(body["plan"], "anonymous");
    assert_eq!(body["upgrade"]["plan"], "free");
    assert_eq!(body["upgrade"]["url"], "https://example.com/signup");
    assert_eq!(
        refused.header("tollgate-upgrade"),
        Some("\"free\";url=\"https://example.com/signup\"")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_credential_is_401_and_never_anonymous() {
    let stack = stack("[]").await;
    let refused = stack.get("/v1/items", Some("tg_live_not_a_real_key")).await;
    assert_eq!(refused.problem(401)["type"], "urn:tollgate:unauthenticated");
    assert_eq!(stack.upstream.hits(), 0);
    assert!(
        redis_keys(&stack).await.is_empty(),
        "a refused call counts nothing"
    );
    // A good key is still a tenant, not anonymous.
    let ok = stack.get("/v1/items", Some(ACME_KEY)).await;
    assert_eq!(
        ok.echoed_headers()["x-tollgate-tenant"],
        vec!["acme".to_string()]
    );
}
