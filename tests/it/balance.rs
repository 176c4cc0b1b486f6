//! Passive health checks: a target whose connects fail is taken out of rotation for
//! `fail_timeout`, the calls go to the targets that answer, and the target comes back once a
//! connect to it succeeds again.

use std::time::Duration;

use crate::common::events::{metric, metrics};
use crate::common::{refused_addr, Stack, Upstream, ACME_KEY, ACME_ON_PRODUCT};

/// One upstream of two targets: the echo server, and `{dead}`, where nothing listens.
const YAML: &str = r#"
server: { listen: "{listen}", threads: 2 }
admin: { listen: "{admin}" }
store: { kind: redis, url: "{redis}", timeout: 2s }
upstreams:
  product: { targets: ["{upstream}", "{dead}"], connect_timeout: 1s {health} }
"#;

async fn stack(dead: &str, health: &str) -> Stack {
    let yaml = format!("{YAML}{ACME_ON_PRODUCT}");
    Stack::start(&yaml.replace("{dead}", dead).replace("{health}", health)).await
}

const UPSTREAM: &str = "tollgate_upstream_connect_errors_total";
const UP: &str = "tollgate_upstream_target_up";

#[tokio::test(flavor = "multi_thread")]
async fn a_target_that_refuses_is_tried_once_then_left_out() {
    let dead = refused_addr();
    let stack = stack(&dead, ", fail_timeout: 60s").await;
    let live = stack.upstream.addr();
    let before = metrics(&stack.gateway).await;
    assert_eq!(metric(&before, UP, &[("target", &dead)]), 1.0, "{before}");
    assert_eq!(metric(&before, UP, &[("target", &live)]), 1.0, "{before}");

    for i in 0..10 {
        let answer = stack.get(&format!("/v1/items/{i}"), Some(ACME_KEY)).await;
        assert_eq!(answer.status, 200, "call {i}: {}", answer.body);
    }

    // Every call reached the live target, and only one ever tried the dead one.
    assert_eq!(stack.upstream.hits(), 10);
    assert_eq!(stack.month_counter("acme", "requests").await, 10);
    let text = metrics(&stack.gateway).await;
    let labels = [("upstream", "product"), ("target", dead.as_str())];
    assert_eq!(metric(&text, UPSTREAM, &labels), 1.0, "{text}");
    assert_eq!(metric(&text, UP, &labels), 0.0, "{text}");
    assert_eq!(metric(&text, UP, &[("target", &live)]), 1.0, "{text}");
    assert!(
        stack
            .gateway
            .stderr()
            .contains("takes no calls until fail_timeout"),
        "a log line says the target went out: {}",
        stack.gateway.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_comes_back_once_fail_timeout_passed_and_it_connects() {
    let dead = refused_addr();
    let stack = stack(&dead, ", fail_timeout: 1s").await;
    for _ in 0..4 {
        assert_eq!(stack.get("/v1/items", Some(ACME_KEY)).await.status, 200);
    }
    let text = metrics(&stack.gateway).await;
    assert_eq!(metric(&text, UP, &[("target", &dead)]), 0.0, "{text}");

    // A server starts where nothing listened; after fail_timeout the target takes calls again.
    let revived = Upstream::start_on(&dead).await;
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    for _ in 0..10 {
        assert_eq!(stack.get("/v1/items", Some(ACME_KEY)).await.status, 200);
    }

    assert_eq!(revived.hits(), 5, "round-robin over both targets again");
    assert_eq!(stack.upstream.hits(), 4 + 5);
    let text = metrics(&stack.gateway).await;
    assert_eq!(metric(&text, UP, &[("target", &dead)]), 1.0, "{text}");
    assert_eq!(metric(&text, UPSTREAM, &[("target", &dead)]), 1.0, "{text}");
    assert!(
        stack.gateway.stderr().contains("back in rotation"),
        "{}",
        stack.gateway.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn max_fails_zero_keeps_trying_the_dead_target() {
    let dead = refused_addr();
    let stack = stack(&dead, ", max_fails: 0").await;

    for _ in 0..10 {
        assert_eq!(stack.get("/v1/items", Some(ACME_KEY)).await.status, 200);
    }

    // Each call that lands on the dead target retries on the live one.
    assert_eq!(stack.upstream.hits(), 10);
    let text = metrics(&stack.gateway).await;
    assert!(
        metric(&text, UPSTREAM, &[("target", &dead)]) >= 5.0,
        "at least every other call tried it: {text}"
    );
    assert_eq!(metric(&text, UP, &[("target", &dead)]), 1.0, "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_target_down_is_a_refunded_502_and_each_was_tried() {
    let (a, b) = (refused_addr(), refused_addr());
    let yaml = format!("{YAML}{ACME_ON_PRODUCT}")
        .replace("\"{upstream}\", \"{dead}\"", &format!("\"{a}\", \"{b}\""))
        .replace("{health}", "");
    let stack = Stack::start(&yaml).await;

    for _ in 0..3 {
        let answer = stack.get("/v1/items", Some(ACME_KEY)).await;
        assert_eq!(answer.status, 502, "{}", answer.body);
    }

    // Both out of rotation, calls still try them rather than failing without a connect.
    assert_eq!(stack.month_counter("acme", "requests").await, 0);
    let text = metrics(&stack.gateway).await;
    let tries =
        metric(&text, UPSTREAM, &[("target", &a)]) + metric(&text, UPSTREAM, &[("target", &b)]);
    assert_eq!(tries, 6.0, "each call tried both targets: {text}");
}
