//! Active health checks: the gateway probes every target's `health_check.path` and leaves out
//! of rotation a target that fails its probes, before any call pays for it, until it passes
//! them again.

use std::time::Duration;

use crate::common::events::{metric, metrics, wait_for};
use crate::common::{refused_addr, Stack, Upstream, ACME_KEY, ACME_ON_PRODUCT};

/// One upstream of two targets: the stack's echo server and `{second}`, probed every 300 ms.
const YAML: &str = r#"
server: { listen: "{listen}", threads: 2 }
admin: { listen: "{admin}" }
store: { kind: redis, url: "{redis}", timeout: 2s }
upstreams:
  product:
    targets: ["{upstream}", "{second}"]
    connect_timeout: 1s
    health_check: { path: /_health, interval: 300ms, timeout: 250ms {checks} }
"#;

async fn stack(second: &str, checks: &str) -> Stack {
    let yaml = format!("{YAML}{ACME_ON_PRODUCT}")
        .replace("{second}", second)
        .replace("{checks}", checks);
    Stack::start(&yaml).await
}

const UP: &str = "tollgate_upstream_target_up";
const CHECKS: &str = "tollgate_upstream_health_checks_total";
const CONNECT_ERRORS: &str = "tollgate_upstream_connect_errors_total";

/// Waits until `target`'s `tollgate_upstream_target_up` reads `up`.
async fn wait_up(stack: &Stack, target: &str, up: f64) {
    wait_for(
        &format!("{target} to read {up} in {UP}"),
        Duration::from_secs(10),
        || async {
            let text = metrics(&stack.gateway).await;
            metric(&text, UP, &[("upstream", "product"), ("target", target)]) == up
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_failing_its_probes_takes_no_calls_until_it_passes_them_again() {
    let sick = Upstream::start().await;
    let stack = stack(&sick.addr(), ", fails: 2, passes: 2").await;
    let (live, sick_addr) = (stack.upstream.addr(), sick.addr());

    // It answers calls, but its health endpoint says it cannot serve.
    sick.set_health(503);
    wait_up(&stack, &sick_addr, 0.0).await;
    let probes_at_out = sick.health().probes;
    assert!(probes_at_out >= 2, "two failed probes in a row took it out");
    for i in 0..10 {
        let answer = stack.get(&format!("/v1/items/{i}"), Some(ACME_KEY)).await;
        assert_eq!(answer.status, 200, "call {i}: {}", answer.body);
    }
    assert_eq!(sick.hits(), 0, "no call went to the target out of rotation");
    assert_eq!(stack.upstream.hits(), 10);
    let text = metrics(&stack.gateway).await;
    let sick_labels = [("upstream", "product"), ("target", sick_addr.as_str())];
    assert!(
        metric(
            &text,
            CHECKS,
            &[sick_labels[0], sick_labels[1], ("result", "fail")]
        ) >= 2.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            CHECKS,
            &[("target", live.as_str()), ("result", "pass")]
        ) >= 2.0,
        "the healthy target is probed too: {text}"
    );
    assert_eq!(metric(&text, UP, &[("target", live.as_str())]), 1.0);
    let log = stack.gateway.stderr();
    assert!(
        log.contains("failed its health checks") && log.contains("answered 503"),
        "a warn line names the target and why: {log}"
    );

    // Healthy again: back after two passed probes, and the calls are shared again.
    sick.set_health(200);
    wait_up(&stack, &sick_addr, 1.0).await;
    for _ in 0..10 {
        assert_eq!(stack.get("/v1/items", Some(ACME_KEY)).await.status, 200);
    }
    assert_eq!(sick.hits(), 5, "round-robin over both targets again");
    assert_eq!(stack.month_counter("acme", "requests").await, 20);
    assert!(stack.gateway.stderr().contains("passed its health checks"));

    // The probe asked for the path with the target as its Host, and said who it is.
    let health = sick.health();
    assert_eq!(
        health.last,
        Some((sick_addr.clone(), "tollgate-health-check".to_string()))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_where_nothing_listens_is_found_by_the_probes_before_any_call() {
    let dead = refused_addr();
    let stack = stack(&dead, "").await;

    // `fails` defaults to 1: the first round takes it out.
    wait_up(&stack, &dead, 0.0).await;
    for i in 0..10 {
        let answer = stack.get(&format!("/v1/items/{i}"), Some(ACME_KEY)).await;
        assert_eq!(answer.status, 200, "call {i}: {}", answer.body);
    }

    // No call tried it: without the probes, one would have paid a failed connect first.
    assert_eq!(stack.upstream.hits(), 10);
    let text = metrics(&stack.gateway).await;
    assert_eq!(
        metric(&text, CONNECT_ERRORS, &[("target", &dead)]),
        0.0,
        "{text}"
    );
    assert!(
        metric(&text, CHECKS, &[("target", &dead), ("result", "fail")]) >= 1.0,
        "{text}"
    );

    // A server starts there: the next passed probe brings it back (`passes` defaults to 1).
    let revived = Upstream::start_on(&dead).await;
    wait_up(&stack, &dead, 1.0).await;
    for _ in 0..10 {
        assert_eq!(stack.get("/v1/items", Some(ACME_KEY)).await.status, 200);
    }
    assert_eq!(revived.hits(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_probe_slower_than_its_timeout_fails() {
    // The probe asks for `/slow/800/_health`, which the echo server answers after 800 ms.
    let second = Upstream::start().await;
    let yaml = format!("{YAML}{ACME_ON_PRODUCT}")
        .replace("{second}", &second.addr())
        .replace("path: /_health", "path: /slow/800/_health")
        .replace("{checks}", "");
    let stack = Stack::start(&yaml).await;

    wait_up(&stack, &second.addr(), 0.0).await;
    wait_up(&stack, &stack.upstream.addr(), 0.0).await;
    let log = stack.gateway.stderr();
    assert!(log.contains("no answer within 250ms"), "{log}");

    // Every target out: calls still try them, and are served.
    for _ in 0..4 {
        assert_eq!(stack.get("/v1/items", Some(ACME_KEY)).await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn expect_lists_the_statuses_that_pass() {
    let second = Upstream::start().await;
    let stack = stack(&second.addr(), ", expect: [200, 401]").await;
    let addr = second.addr();

    // A health endpoint behind authentication answers 401: listed, so it passes.
    second.set_health(401);
    let probes = second.health().probes;
    wait_for("two more probes", Duration::from_secs(10), || async {
        second.health().probes >= probes + 2
    })
    .await;
    wait_up(&stack, &addr, 1.0).await;

    // A 2xx that is not listed fails.
    second.set_health(204);
    wait_up(&stack, &addr, 0.0).await;
    wait_up(&stack, &stack.upstream.addr(), 1.0).await;
}
