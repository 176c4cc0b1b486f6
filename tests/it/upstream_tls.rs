//! Upstreams over TLS, named by host name: the certificate is checked against the target's
//! name (or `sni`) and the `ca_file`, a failed check is a refunded 502, `host_header` sets the
//! `Host` the upstream gets, and health probes connect as calls do.

use crate::common::events::{metric, metrics};
use crate::common::tls::TestCa;
use crate::common::{render, Gateway, RedisServer, Stack, Upstream, ACME_KEY};

const YAML: &str = r#"
server: { listen: "{listen}", threads: 2 }
admin: { listen: "{admin}" }
store: { kind: redis, url: "{redis}", timeout: 2s }
upstreams:
  secure: { targets: ["{target}"], tls: true, connect_timeout: 2s {extra} }
tenants:
  acme: { plan: free, keys: [{ id: acme-1, sha256: "{acme_sha}" }] }
plans:
  free: { meters: { requests: { limit: 1000, period: month } } }
routes:
  - { name: api, match: { path_prefix: / }, upstream: secure, meter: { requests: 1 } }
"#;

/// A gateway in front of an HTTPS upstream signed by a fresh private CA; `target` is written
/// with `{port}` for the upstream's port, `extra` adds settings to the upstream.
struct TlsStack {
    stack: Stack,
    /// Holds the CA file.
    _dir: tempfile::TempDir,
}

async fn start(target: &str, extra: &str) -> TlsStack {
    let ca = TestCa::new();
    let upstream = Upstream::start_tls(ca.server.clone()).await;
    let port = upstream.addr().rsplit_once(':').unwrap().1.to_string();
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_path = ca.write_ca(dir.path());
    let yaml = YAML
        .replace("{target}", &target.replace("{port}", &port))
        .replace(
            "{extra}",
            &extra.replace("{ca}", &ca_path.to_string_lossy()),
        );
    let gateway = Gateway::start(&render(&yaml, &redis.url(), &upstream.addr())).await;
    TlsStack {
        stack: Stack {
            gateway,
            upstream,
            redis,
            client: crate::common::client(),
        },
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_name_target_over_tls_with_a_ca_file_gets_the_call() {
    let t = start(
        "localhost:{port}",
        r#", ca_file: "{ca}", host_header: api.example.com"#,
    )
    .await;

    let answer = t.stack.get("/v1/items", Some(ACME_KEY)).await;

    assert_eq!(answer.status, 200, "{}", answer.body);
    let seen = answer.echoed_headers();
    assert_eq!(seen["host"], ["api.example.com"], "host_header: {seen:?}");
    // The name the client called travels on in X-Forwarded-Host.
    let called = t.stack.gateway.listen_addr().to_string();
    assert_eq!(seen["x-forwarded-host"], [called], "{seen:?}");
    assert_eq!(seen["x-tollgate-tenant"], ["acme"], "{seen:?}");
    assert!(!seen.contains_key("authorization"), "{seen:?}");
    assert_eq!(t.stack.upstream.hits(), 1);
    assert_eq!(t.stack.month_counter("acme", "requests").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ip_target_is_checked_against_its_address() {
    // The test certificate names 127.0.0.1 as well as localhost.
    let t = start("127.0.0.1:{port}", r#", ca_file: "{ca}""#).await;

    let answer = t.stack.get("/v1/items", Some(ACME_KEY)).await;

    assert_eq!(answer.status, 200, "{}", answer.body);
    // Without host_header the upstream gets the client's Host, and no X-Forwarded-Host.
    let host = t.stack.gateway.listen_addr().to_string();
    let seen = answer.echoed_headers();
    assert_eq!(seen["host"], [host]);
    assert!(!seen.contains_key("x-forwarded-host"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_not_signed_by_a_trusted_ca_is_a_refunded_502() {
    // No ca_file: the system's roots, which do not know the test CA.
    let t = start("localhost:{port}", "").await;

    let answer = t.stack.get("/v1/items", Some(ACME_KEY)).await;

    assert_eq!(answer.status, 502, "{}", answer.body);
    let problem = answer.problem(502);
    assert_eq!(
        problem["type"], "urn:tollgate:upstream-unavailable",
        "{problem}"
    );
    assert_eq!(
        t.stack.upstream.hits(),
        0,
        "no request went over the failed handshake"
    );
    assert_eq!(
        t.stack.month_counter("acme", "requests").await,
        0,
        "refunded"
    );
    let text = metrics(&t.stack.gateway).await;
    let target = format!(
        "localhost:{}",
        t.stack.upstream.addr().rsplit_once(':').unwrap().1
    );
    let labels = [("upstream", "secure"), ("target", target.as_str())];
    assert_eq!(
        metric(&text, "tollgate_upstream_connect_errors_total", &labels),
        1.0,
        "a failed handshake counts as a failed connect: {text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_for_another_name_is_refused() {
    let t = start(
        "localhost:{port}",
        r#", ca_file: "{ca}", sni: api.example.com"#,
    )
    .await;

    let answer = t.stack.get("/v1/items", Some(ACME_KEY)).await;

    assert_eq!(answer.status, 502, "{}", answer.body);
    assert_eq!(t.stack.upstream.hits(), 0);
    assert_eq!(t.stack.month_counter("acme", "requests").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn health_probes_check_the_certificate_as_calls_do() {
    // The first round of probes starts with the gateway; a generous timeout, so that a
    // handshake slowed by a loaded machine does not fail the trusted target's probe.
    let probes = ", health_check: { path: /_health, interval: 2s, timeout: 2s }";
    let trusted = start(
        "localhost:{port}",
        &format!(r#", ca_file: "{{ca}}", host_header: api.example.com{probes}"#),
    )
    .await;
    let untrusted = start("localhost:{port}", probes).await;

    crate::common::events::wait_for(
        "probes of both",
        std::time::Duration::from_secs(10),
        || async {
            trusted.stack.upstream.health().probes >= 1 && probe_failures(&untrusted).await >= 1.0
        },
    )
    .await;

    // Over TLS with the upstream's CA, and with its host_header as Host.
    let health = trusted.stack.upstream.health();
    assert_eq!(
        health.last.map(|(host, _)| host),
        Some("api.example.com".to_string())
    );
    let text = metrics(&trusted.stack.gateway).await;
    assert_eq!(
        metric(
            &text,
            "tollgate_upstream_target_up",
            &[("upstream", "secure")]
        ),
        1.0,
        "{text}"
    );
    // Without it the handshake fails: no probe reaches the server, and the target is out.
    assert_eq!(untrusted.stack.upstream.health().probes, 0);
    let text = metrics(&untrusted.stack.gateway).await;
    assert_eq!(
        metric(
            &text,
            "tollgate_upstream_target_up",
            &[("upstream", "secure")]
        ),
        0.0,
        "{text}"
    );
}

/// Failed health probes of the TLS stack's one target.
async fn probe_failures(t: &TlsStack) -> f64 {
    let text = metrics(&t.stack.gateway).await;
    let labels = [("upstream", "secure"), ("result", "fail")];
    metric(&text, "tollgate_upstream_health_checks_total", &labels)
}
