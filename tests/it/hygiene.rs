//! Proxy hygiene: hop-by-hop headers stripped both ways, credentials kept from the upstream,
//! identity headers set by the gateway only, public and self-answering routes, load balancing.

use crate::common::{get, raw, Stack, Upstream, ACME_KEY};

/// `/health` is public; `/hello` is answered by the gateway; `/pair` spreads over two targets.
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
  pair:
    targets: ["{upstream}", "{second}"]
tenants:
  acme:
    plan: free
    keys:
      - id: acme-1
        sha256: "{acme_sha}"
plans:
  free:
    meters:
      requests: { limit: 1000, period: month }
routes:
  - name: health
    match: { path: /health }
    upstream: product
    auth: none
  - name: hello
    match: { path: /hello }
    auth: none
    respond: { status: 200, body: "hello from tollgate", content_type: "text/plain" }
  - name: post-only
    match: { path: /v1/created, methods: [POST] }
    auth: none
    respond: { status: 201, body: "created", content_type: "text/plain" }
  - name: pair
    match: { path_prefix: /pair }
    upstream: pair
    meter: { requests: 1 }
  - name: api
    match: { path_prefix: / }
    upstream: product
    meter: { requests: 1 }
"#;

/// A stack plus the second target of upstream `pair`.
async fn stack() -> (Stack, Upstream) {
    let second = Upstream::start().await;
    let stack = Stack::start(&YAML.replace("{second}", &second.addr())).await;
    (stack, second)
}

const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "te",
    "upgrade",
    "proxy-connection",
    "x-hop-req",
];

#[tokio::test(flavor = "multi_thread")]
async fn hop_by_hop_request_headers_are_not_forwarded() {
    let (stack, _second) = stack().await;

    // Written by hand: a client library might drop or rewrite some of these itself.
    let answer = raw(
        stack.gateway.listen_addr(),
        &format!(
            "GET /v1/items HTTP/1.1\n\
             Host: api.example.com\n\
             Authorization: Bearer {ACME_KEY}\n\
             Connection: close, X-Hop-Req\n\
             X-Hop-Req: 1\n\
             Keep-Alive: timeout=5\n\
             TE: trailers\n\
             Upgrade: h2c\n\
             Proxy-Connection: keep-alive\n\
             X-End-To-End: kept"
        ),
    )
    .await;

    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let echo: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    let headers = echo["headers"].as_object().unwrap();
    for name in HOP_BY_HOP {
        assert!(
            !headers.contains_key(name),
            "upstream received {name}: {echo}"
        );
    }
    assert_eq!(
        echo["headers"]["x-end-to-end"],
        serde_json::json!(["kept"]),
        "{echo}"
    );
    // And on the way back, the upstream's `X-Hop` (named in its `Connection`) is dropped.
    assert!(answer
        .headers
        .iter()
        .all(|(name, _)| name != "x-hop" && name != "keep-alive"));
}

#[tokio::test(flavor = "multi_thread")]
async fn hop_by_hop_response_headers_are_not_passed_down() {
    let (stack, _second) = stack().await;

    let answer = stack.get("/v1/items", Some(ACME_KEY)).await;

    assert_eq!(answer.status, 200);
    // The upstream sent `Connection: x-hop`, `X-Hop: 1` and `Keep-Alive: timeout=5`.
    assert_eq!(answer.header("x-hop"), None, "{:?}", answer.headers);
    assert_eq!(answer.header("keep-alive"), None, "{:?}", answer.headers);
    for value in answer.headers.get_all("connection") {
        let value = value.to_str().unwrap().to_ascii_lowercase();
        assert!(!value.contains("x-hop"), "Connection passed down: {value}");
    }
    assert_eq!(
        answer.header("x-upstream"),
        Some("echo"),
        "end-to-end headers pass"
    );
}

/// The header lines of `answer` whose name is `name` in any case, as they came.
fn lines_named<'a>(answer: &'a crate::common::RawAnswer, name: &str) -> Vec<&'a str> {
    answer
        .head
        .split("\r\n")
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(n, _)| n.eq_ignore_ascii_case(name))
        })
        .collect()
}

async fn get_raw(stack: &Stack, path: &str) -> crate::common::RawAnswer {
    raw(
        stack.gateway.listen_addr(),
        &format!(
            "GET {path} HTTP/1.1\n\
             Host: api.example.com\n\
             X-Api-Key: {ACME_KEY}\n\
             Connection: close"
        ),
    )
    .await
}

fn assert_status_line(answer: &crate::common::RawAnswer, line: &str) {
    let first = answer.head.split("\r\n").next();
    assert_eq!(first, Some(line), "{}", answer.head);
}

/// A metered call's answer names the upstream's `X-Upstream` (written title-cased by the
/// upstream) and the gateway's `RateLimit-Policy` as `upstream` and `policy` spell them, and an
/// upstream's own reason phrase (`/reason/...`: `200 Fine Thanks`) survives either way.
async fn assert_header_case(stack: &Stack, upstream: &str, policy: &str) {
    let answer = get_raw(stack, "/v1/items").await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert_status_line(&answer, "HTTP/1.1 200 OK");
    assert_eq!(
        lines_named(&answer, "x-upstream"),
        [format!("{upstream}: echo")]
    );
    let policies = lines_named(&answer, "ratelimit-policy");
    assert_eq!(policies.len(), 1, "{}", answer.head);
    assert!(
        policies[0].starts_with(&format!("{policy}: ")),
        "{}",
        answer.head
    );

    let answer = get_raw(stack, "/reason/x").await;
    assert_status_line(&answer, "HTTP/1.1 200 Fine Thanks");
    assert_eq!(
        lines_named(&answer, "x-upstream"),
        [format!("{upstream}: echo")]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_carry_lowercase_header_names_by_default() {
    let (stack, _second) = stack().await;

    assert_header_case(&stack, "x-upstream", "ratelimit-policy").await;
    // A dozen common names pingora writes title-cased.
    let answer = get_raw(&stack, "/v1/items").await;
    assert_eq!(
        lines_named(&answer, "content-type"),
        ["Content-Type: application/json"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_keep_the_upstreams_header_case_when_asked() {
    let second = Upstream::start().await;
    let yaml = YAML.replace("{second}", &second.addr()).replace(
        "  threads: 2\n",
        "  threads: 2\n  preserve_header_case: true\n",
    );
    let stack = Stack::start(&yaml).await;

    assert_header_case(&stack, "X-Upstream", "RateLimit-Policy").await;
}

/// The `X-Forwarded-For` values the upstream got for a call whose client sent `sent`.
async fn forwarded_for(stack: &Stack, sent: &[&str]) -> Option<Vec<String>> {
    let mut request = stack
        .client
        .get(stack.gateway.url("/v1/items"))
        .header("x-api-key", ACME_KEY);
    for value in sent {
        request = request.header("x-forwarded-for", *value);
    }
    let answer = crate::common::http::read(request.send().await.unwrap()).await;
    answer.echoed_headers().remove("x-forwarded-for")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_upstream_learns_the_callers_address_after_the_clients_own_hops() {
    let (stack, _second) = stack().await;

    assert_eq!(forwarded_for(&stack, &[]).await.unwrap(), ["127.0.0.1"]);
    assert_eq!(
        forwarded_for(&stack, &["203.0.113.7"]).await.unwrap(),
        ["203.0.113.7, 127.0.0.1"]
    );
    assert_eq!(
        forwarded_for(&stack, &["198.51.100.1", "203.0.113.7, 10.0.0.2"])
            .await
            .unwrap(),
        ["198.51.100.1, 203.0.113.7, 10.0.0.2, 127.0.0.1"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn x_forwarded_for_keep_leaves_the_header_as_the_client_sent_it() {
    let second = Upstream::start().await;
    let yaml = YAML
        .replace("{second}", &second.addr())
        .replace("  threads: 2\n", "  threads: 2\n  x_forwarded_for: keep\n");
    let stack = Stack::start(&yaml).await;

    assert_eq!(forwarded_for(&stack, &[]).await, None);
    assert_eq!(
        forwarded_for(&stack, &["203.0.113.7"]).await.unwrap(),
        ["203.0.113.7"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_are_not_forwarded() {
    let (stack, _second) = stack().await;

    let bearer = stack
        .get("/v1/items", Some(ACME_KEY))
        .await
        .echoed_headers();
    let request = stack
        .client
        .get(stack.gateway.url("/v1/items"))
        .header("x-api-key", ACME_KEY);
    let api_key = crate::common::http::read(request.send().await.unwrap())
        .await
        .echoed_headers();

    assert!(!bearer.contains_key("authorization"), "{bearer:?}");
    assert!(!api_key.contains_key("x-api-key"), "{api_key:?}");
    assert_eq!(
        api_key["x-tollgate-tenant"],
        ["acme"],
        "X-Api-Key authenticates too"
    );
    assert_eq!(stack.month_counter("acme", "requests").await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn tollgate_headers_overwrite_client_copies() {
    let (stack, _second) = stack().await;

    let request = stack
        .client
        .get(stack.gateway.url("/v1/items"))
        .header("authorization", format!("Bearer {ACME_KEY}"))
        .header("x-tollgate-tenant", "mallory")
        .header("x-tollgate-tenant", "eve")
        .header("x-tollgate-plan", "enterprise");
    let echoed = crate::common::http::read(request.send().await.unwrap())
        .await
        .echoed_headers();

    assert_eq!(echoed["x-tollgate-tenant"], ["acme"], "{echoed:?}");
    assert_eq!(echoed["x-tollgate-plan"], ["free"], "{echoed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_none_route_needs_no_key_and_counts_nothing() {
    let (stack, _second) = stack().await;

    let anonymous = stack.get("/health", None).await;
    let with_key = stack.get("/health", Some(ACME_KEY)).await;

    for answer in [anonymous, with_key] {
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.json()["path"], "/health");
    }
    assert_eq!(stack.upstream.hits(), 2);
    let key = crate::common::month_key("acme", "requests");
    assert!(
        !stack.redis.exists(&key).await,
        "a public route must not meter"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn respond_route_answers_its_body_without_an_upstream() {
    let (stack, second) = stack().await;

    let answer = get(&stack.client, &stack.gateway.url("/hello"), None).await;

    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, "hello from tollgate");
    assert!(
        answer
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")),
        "{answer:?}"
    );
    assert_eq!(
        stack.upstream.hits() + second.hits(),
        0,
        "no upstream is involved"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_targets_are_used_round_robin() {
    let (stack, second) = stack().await;

    for call in 0..20 {
        let answer = stack.get(&format!("/pair/{call}"), Some(ACME_KEY)).await;
        assert_eq!(answer.status, 200, "call {call}: {}", answer.body);
    }

    assert_eq!(
        (stack.upstream.hits(), second.hits()),
        (10, 10),
        "round-robin splits evenly"
    );
    assert_eq!(stack.month_counter("acme", "requests").await, 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn public_route_drops_client_sent_tollgate_headers() {
    let (stack, _second) = stack().await;

    // No tenant is known on a public route, so the upstream must not see a client's claim.
    let request = stack
        .client
        .get(stack.gateway.url("/health"))
        .header("x-tollgate-tenant", "acme")
        .header("x-tollgate-plan", "enterprise");
    let echoed = crate::common::http::read(request.send().await.unwrap())
        .await
        .echoed_headers();

    assert!(!echoed.contains_key("x-tollgate-tenant"), "{echoed:?}");
    assert!(!echoed.contains_key("x-tollgate-plan"), "{echoed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_match_exact_paths_and_methods() {
    let (stack, _second) = stack().await;
    let url = stack.gateway.url("/v1/created");

    let post = crate::common::send(&stack.client, reqwest::Method::POST, &url, None).await;
    let get_same_path = stack.get("/v1/created", None).await;
    let longer_path = stack.get("/hello/world", None).await;

    assert_eq!((post.status, post.body.as_str()), (201, "created"));
    // Neither matches its specific route, so both fall through to `api`, which wants a key.
    assert_eq!(
        get_same_path.problem(401)["type"],
        "urn:tollgate:unauthenticated"
    );
    assert_eq!(
        longer_path.problem(401)["type"],
        "urn:tollgate:unauthenticated"
    );
    assert_eq!(stack.upstream.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn conflicting_framing_is_forwarded_by_transfer_encoding_alone() {
    let (stack, _second) = stack().await;

    // A request-smuggling shape: the gateway and the upstream could disagree on where it ends.
    // RFC 9112 §6.3: Transfer-Encoding wins, and an intermediary must drop Content-Length before
    // forwarding, so the upstream cannot read the body differently from the gateway.
    let answer = raw(
        stack.gateway.listen_addr(),
        &format!(
            "POST /v1/items HTTP/1.1\n\
             Host: api.example.com\n\
             Authorization: Bearer {ACME_KEY}\n\
             Connection: close\n\
             Content-Length: 4\n\
             Transfer-Encoding: chunked\n\
             \n\
             0\n"
        ),
    )
    .await;

    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let echo: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    let headers = echo["headers"].as_object().unwrap();
    assert!(
        !headers.contains_key("content-length"),
        "upstream saw {headers:?}"
    );
    assert_eq!(stack.upstream.hits(), 1);
    assert_eq!(stack.month_counter("acme", "requests").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn custom_api_key_header_replaces_the_defaults() {
    let yaml = YAML.replace(
        "plans:",
        "auth:\n  api_key:\n    headers: [\"x-tenant-key\"]\nplans:",
    );
    let second = Upstream::start().await;
    let stack = Stack::start(&yaml.replace("{second}", &second.addr())).await;

    let bearer = stack.get("/v1/items", Some(ACME_KEY)).await;
    let request = stack
        .client
        .get(stack.gateway.url("/v1/items"))
        .header("x-tenant-key", ACME_KEY);
    let custom = crate::common::http::read(request.send().await.unwrap()).await;

    assert_eq!(
        bearer.problem(401)["type"],
        "urn:tollgate:unauthenticated",
        "Authorization is off"
    );
    let echoed = custom.echoed_headers();
    assert_eq!(echoed["x-tollgate-tenant"], ["acme"]);
    assert!(
        !echoed.contains_key("x-tenant-key"),
        "the credential is not forwarded: {echoed:?}"
    );
}
