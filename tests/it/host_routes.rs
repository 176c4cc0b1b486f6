//! `match.host`: one gateway in front of several APIs, told apart by the name the client
//! called: exact names (any case, any port), lists of them, and `*.domain` patterns; a call for
//! no listed name (or with no `Host` at all) matches no such route.

use crate::common::http::{raw, read};
use crate::common::{Stack, ACME_KEY, STACK_HEAD};

/// After [`STACK_HEAD`].
const YAML: &str = r#"
tenants:
  acme: { plan: free, keys: [{ id: acme-1, sha256: "{acme_sha}" }] }
plans:
  free: { meters: { requests: { limit: 1000, period: month } } }
routes:
  - { name: status, match: { host: status.example.com, path_prefix: / }, respond: { body: "all good" }, auth: none }
  - { name: tenant-sites, match: { host: "*.sites.example.com", path_prefix: /v1 }, upstream: product, meter: { requests: 2 } }
  - { name: api, match: { host: [api.example.com, api.example.org], path_prefix: / }, upstream: product, meter: { requests: 1 } }
"#;

/// A call to `path` as if for `host`: (status, body).
async fn call(stack: &Stack, host: &str, path: &str) -> (u16, String) {
    let answer = read(
        stack
            .client
            .get(stack.gateway.url(path))
            .header("host", host)
            .bearer_auth(ACME_KEY)
            .send()
            .await
            .unwrap(),
    )
    .await;
    (answer.status, answer.body)
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_are_chosen_by_the_host_the_client_called() {
    let stack = Stack::start(&format!("{STACK_HEAD}{YAML}")).await;

    for host in [
        "status.example.com",
        "STATUS.Example.com:8080",
        "status.example.com.",
    ] {
        assert_eq!(
            call(&stack, host, "/anything").await,
            (200, "all good".to_string()),
            "{host}"
        );
    }
    // A subdomain at any depth; the echo shows the upstream got the call.
    for host in ["acme.sites.example.com", "eu.acme.sites.example.com"] {
        let (status, body) = call(&stack, host, "/v1/pages").await;
        assert_eq!(status, 200, "{host}: {body}");
        assert!(body.contains("\"path\":\"/v1/pages\""), "{host}: {body}");
    }
    for host in ["api.example.com", "api.example.org"] {
        assert_eq!(call(&stack, host, "/v1/items").await.0, 200, "{host}");
    }
    assert_eq!(
        stack.month_counter("acme", "requests").await,
        2 * 2 + 2,
        "each call metered by its host's route"
    );

    // Not a listed name: no route, nothing charged.
    for host in [
        "sites.example.com",
        "other.example.com",
        "api.example.com.evil",
    ] {
        let (status, body) = call(&stack, host, "/v1/items").await;
        assert_eq!(status, 404, "{host}: {body}");
        assert!(body.contains("urn:tollgate:no-route"), "{host}: {body}");
    }
    // The host's route takes only its paths.
    assert_eq!(call(&stack, "acme.sites.example.com", "/v2/x").await.0, 404);
    // An HTTP/1.0 call without a Host matches no host route.
    let answer = raw(
        stack.gateway.listen_addr(),
        &format!("GET /v1/items HTTP/1.0\nAuthorization: Bearer {ACME_KEY}\n"),
    )
    .await;
    assert_eq!(answer.status, 404, "{}", answer.head);
    assert_eq!(stack.month_counter("acme", "requests").await, 6);
}
