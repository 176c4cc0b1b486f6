//! `max_request_body`: a body over the route's limit is answered 413 and charged nothing,
//! whether its length was announced or it was streamed.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::events::{metric, metrics_once};
use crate::common::{Stack, ACME_KEY};

const YAML: &str = r#"
server: { listen: "{listen}", threads: 2, max_request_body: 1kb }
admin: { listen: "{admin}" }
store: { kind: redis, url: "{redis}", timeout: 2s }
upstreams:
  product: { targets: ["{upstream}"] }
tenants:
  acme: { plan: free, keys: [{ id: acme-1, sha256: "{acme_sha}" }] }
plans:
  free: { meters: { requests: { limit: 1000, period: month } } }
routes:
  - { name: upload, match: { path_prefix: /v1/upload }, upstream: product, meter: { requests: 1 }, max_request_body: 4kb }
  - { name: api, match: { path_prefix: / }, upstream: product, meter: { requests: 1 } }
"#;

/// How the request's body is sent.
enum Body {
    /// With `Content-Length`.
    Sized(usize),
    /// `Transfer-Encoding: chunked`, in chunks of these sizes.
    Chunked(Vec<usize>),
}

/// `POST path` with `body` on a connection of its own (`Connection: close`); the answer's status
/// and body, read to the end of the connection.
async fn post(stack: &Stack, path: &str, body: Body) -> (u16, String) {
    let mut conn = TcpStream::connect(stack.gateway.listen_addr())
        .await
        .unwrap();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: api.example.com\r\nAuthorization: Bearer {ACME_KEY}\r\n\
         Content-Type: application/octet-stream\r\nConnection: close\r\n"
    )
    .into_bytes();
    match body {
        Body::Sized(n) => {
            request.extend(format!("Content-Length: {n}\r\n\r\n").bytes());
            request.extend(std::iter::repeat_n(b'x', n));
        }
        Body::Chunked(sizes) => {
            request.extend(b"Transfer-Encoding: chunked\r\n\r\n");
            for n in sizes {
                request.extend(format!("{n:x}\r\n").bytes());
                request.extend(std::iter::repeat_n(b'x', n));
                request.extend(b"\r\n");
            }
            request.extend(b"0\r\n\r\n");
        }
    }
    conn.write_all(&request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer))
        .await
        .expect("the gateway answered and closed within 10 s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer:?}"));
    assert!(
        status != 413 || head.contains("application/problem+json"),
        "{head}"
    );
    (status, body.to_string())
}

/// `tollgate_requests_total{outcome="too_large"}`, once it reads at least 1.
async fn too_large_calls(stack: &Stack) -> f64 {
    let too_large = [("outcome", "too_large")];
    let text = metrics_once(&stack.gateway, "tollgate_requests_total", &too_large, 1.0).await;
    metric(&text, "tollgate_requests_total", &too_large)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_announced_over_the_limit_is_refused_before_anything_is_charged() {
    let stack = Stack::start(YAML).await;

    let (status, body) = post(&stack, "/v1/items", Body::Sized(2048)).await;

    assert_eq!(status, 413, "{body}");
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["type"], "urn:tollgate:request-too-large");
    assert_eq!(problem["title"], "Content too large");
    assert_eq!(problem["status"], 413);
    assert_eq!(problem["instance"], "/v1/items");
    assert_eq!(problem["max_request_body"], 1024);
    assert_eq!(
        problem["detail"],
        "The request body is 2048 bytes; this route takes at most 1024. Nothing was charged."
    );
    assert_eq!(stack.upstream.hits(), 0, "the upstream never saw it");
    assert_eq!(stack.month_counter("acme", "requests").await, 0);

    // At the limit it goes through, and is charged.
    let (status, body) = post(&stack, "/v1/items", Body::Sized(1024)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(stack.month_counter("acme", "requests").await, 1);
    assert_eq!(too_large_calls(&stack).await, 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_may_take_more_than_the_server_wide_limit() {
    let stack = Stack::start(YAML).await;

    let (status, body) = post(&stack, "/v1/upload", Body::Sized(3000)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(&stack, "/v1/upload", Body::Sized(5000)).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("at most 4096"), "{body}");

    assert_eq!(stack.upstream.hits(), 1);
    assert_eq!(stack.month_counter("acme", "requests").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_body_is_cut_off_at_the_limit_and_refunded() {
    let stack = Stack::start(YAML).await;

    // Within the limit, streamed: served and charged.
    let (status, body) = post(&stack, "/v1/items", Body::Chunked(vec![300, 300, 300])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(stack.month_counter("acme", "requests").await, 1);

    // Past it: the call was admitted (no length to check), then cut off and refunded.
    let (status, body) = post(&stack, "/v1/items", Body::Chunked(vec![600, 600, 600])).await;
    assert_eq!(status, 413, "{body}");
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["type"], "urn:tollgate:request-too-large");
    assert_eq!(
        problem["detail"],
        "The request body passed 1024 bytes, the most this route takes. Nothing was charged."
    );
    assert_eq!(stack.month_counter("acme", "requests").await, 1, "refunded");
    assert_eq!(too_large_calls(&stack).await, 1.0);
}
