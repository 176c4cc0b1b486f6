//! `store.kind: redis-sentinel`: the gateway asks Redis Sentinel where the primary is, and
//! follows it through a failover an operator asks for (the old primary is demoted and answers
//! `READONLY`) and through the primary's death (its address stops answering), without a
//! restart: reservations, refunds (the request path's other connection), readiness (the
//! admin side's connection) and the usage events' stream all end up on the new primary.

use std::time::{Duration, Instant};

use crate::common::events::{ids, stream_events};
use crate::common::http::admin;
use crate::common::sentinel::{Sentinel, NAME};
use crate::common::{
    client, get, month_key, render, Gateway, RedisServer, Upstream, ACME_KEY, ACME_ON_PRODUCT,
};

const YAML: &str = r#"
server: { listen: "{listen}", threads: 2 }
admin: { listen: "{admin}" }
store: { kind: redis-sentinel, url: "redis://{name}/0", sentinels: ["{sentinel}"], timeout: 500ms, on_outage: fail_closed }
upstreams:
  product: { targets: ["{upstream}"] }
telemetry:
  spool: "{dir}/spool"
  retry_max: 200ms
  sinks:
    - { name: events, kind: redis_stream, url: "redis://{name}/0", sentinels: ["{sentinel}"], stream: "tg:events" }
"#;

/// Waits up to `secs` seconds for `check`, failing with `what` and the logs.
async fn until<F, Fut>(what: &str, secs: u64, logs: impl Fn() -> String, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what} within {secs} s\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metering_follows_the_primary_sentinel_names_through_a_failover_and_a_death() {
    let a = RedisServer::start_on_port(&[]).await;
    let a_port = a.port().to_string();
    let b = RedisServer::start_on_port(&["--replicaof", "127.0.0.1", &a_port]).await;
    until("the replica in sync", 20, String::new, || async {
        b.replication().await.contains("master_link_status:up")
    })
    .await;
    let sentinel = Sentinel::start(a.port(), 1).await;
    let upstream = Upstream::start().await;
    let yaml = format!("{YAML}{ACME_ON_PRODUCT}")
        .replace("{name}", NAME)
        .replace("{sentinel}", &sentinel.url());
    let gateway = Gateway::start(&render(&yaml, "", &upstream.addr())).await;
    let client = client();
    let counter = month_key("acme", "requests");
    let logs = || format!("{}\n--- sentinel ---\n{}", gateway.stderr(), sentinel.log());

    // On the primary the Sentinel names: calls counted there, a failed call refunded there
    // (so the request path's second connection is made to it too), ready.
    served_then_refunded(&client, &gateway, 3).await;
    assert_eq!(
        a.get_int(&counter).await,
        3,
        "counted on the primary, the 502 refunded"
    );
    let ready = || async {
        admin(
            &client,
            &gateway,
            reqwest::Method::GET,
            "/readyz",
            None,
            None,
        )
        .await
        .status
            == 200
    };
    assert!(ready().await, "{}", logs());
    assert!(
        gateway
            .stderr()
            .contains("Redis Sentinel named the primary"),
        "{}",
        logs()
    );

    // 1. An operator's failover: b is promoted, a demoted to its replica. Calls wait until it
    //    is done (writes the old primary took meanwhile would be lost with any client).
    sentinel.failover().await;
    until("the failover to b", 30, logs, || async {
        sentinel.primary_port().await == Some(b.port())
            && a.replication().await.contains("master_link_status:up")
    })
    .await;
    let after_failover = calls_until_admitted(&client, &gateway.url("/v1/items"), logs).await;
    assert!(
        after_failover <= 2,
        "{after_failover} calls refused after the failover\n{}",
        logs()
    );
    served_then_refunded(&client, &gateway, 3).await;
    assert_eq!(
        b.get_int(&counter).await,
        3 + 4,
        "counted on the new primary, the 502 refunded there\n{}",
        logs()
    );
    assert!(ready().await, "{}", logs());
    assert!(
        gateway.stderr().contains("names a new primary"),
        "{}",
        logs()
    );

    // 2. The primary dies: the Sentinel promotes a again, and the gateway, whose connections
    //    to b are lost, asks it where the primary went. Readiness first, before any call: the
    //    admin side's connection finds the new primary by itself.
    // Every event so far (each call's, the refused ones' included) is on b, and a copy on a.
    let so_far = 4 + after_failover + 5;
    until("the events on b and a copy on a", 15, logs, || async {
        ids(&stream_events(&b, "tg:events").await).len() == so_far
            && ids(&stream_events(&a, "tg:events").await).len() == so_far
    })
    .await;
    until("a in sync with b", 10, logs, || async {
        a.get_int(&counter).await == 7
    })
    .await;
    let mut b = b;
    b.kill();
    until("the failover back to a", 30, logs, || async {
        sentinel.primary_port().await == Some(a.port())
            && a.replication().await.contains("role:master")
    })
    .await;
    until("ready again", 10, logs, ready).await;
    let after_death = calls_until_admitted(&client, &gateway.url("/v1/items"), logs).await;
    served_then_refunded(&client, &gateway, 2).await;
    assert_eq!(
        a.get_int(&counter).await,
        7 + 3,
        "counted on the primary after b died, the 502 refunded there\n{}",
        logs()
    );
    // The events' sink followed too: every event on a, none lost.
    let total = so_far + after_death + 4;
    until("every event on a", 15, logs, || async {
        ids(&stream_events(&a, "tg:events").await).len() >= total
    })
    .await;
    assert_eq!(ids(&stream_events(&a, "tg:events").await).len(), total);
}

/// `n` calls served (200), then one the upstream fails (502, refunded).
async fn served_then_refunded(client: &reqwest::Client, gateway: &Gateway, n: usize) {
    for _ in 0..n {
        let answer = get(client, &gateway.url("/v1/items"), Some(ACME_KEY)).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    let failed = get(client, &gateway.url("/status/502"), Some(ACME_KEY)).await;
    assert_eq!(failed.status, 502, "{}", failed.body);
}

/// Calls until one is admitted (200); returns how many were refused (503) before it.
async fn calls_until_admitted(
    client: &reqwest::Client,
    url: &str,
    logs: impl Fn() -> String,
) -> usize {
    let (mut refused, started) = (0, Instant::now());
    loop {
        let answer = get(client, url, Some(ACME_KEY)).await;
        match answer.status {
            200 => return refused,
            503 => refused += 1,
            other => panic!("{other} {}\n{}", answer.body, logs()),
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "still refused after {refused} calls\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Over TLS: the Sentinel and both servers speak TLS only (besides the test's own unix
/// sockets), and the gateway trusts them through one `ca_file`, for the store and for the
/// usage events' stream alike.
const TLS_YAML: &str = r#"
server: { listen: "{listen}", threads: 2 }
admin: { listen: "{admin}" }
store: { kind: redis-sentinel, url: "rediss://{name}/0", sentinels: ["{sentinel}"], ca_file: "{ca}", timeout: 500ms, on_outage: fail_closed }
upstreams:
  product: { targets: ["{upstream}"] }
telemetry:
  spool: "{dir}/spool"
  retry_max: 200ms
  sinks:
    - { name: events, kind: redis_stream, url: "rediss://{name}/0", sentinels: ["{sentinel}"], ca_file: "{ca}", stream: "tg:events" }
"#;

#[tokio::test(flavor = "multi_thread")]
async fn over_tls_sentinels_and_servers_are_trusted_through_the_ca_file_and_followed() {
    let ca = crate::common::tls::TestCa::new();
    let a = RedisServer::start_tls_replicating(&ca, None).await;
    let b = RedisServer::start_tls_replicating(&ca, Some(a.tls_port())).await;
    until("the replica in sync over TLS", 20, String::new, || async {
        b.replication().await.contains("master_link_status:up")
    })
    .await;
    let sentinel = Sentinel::start_tls(a.tls_port(), 1, &ca).await;
    let upstream = Upstream::start().await;
    let yaml = format!("{TLS_YAML}{ACME_ON_PRODUCT}")
        .replace("{name}", NAME)
        .replace("{sentinel}", &sentinel.url())
        .replace("{ca}", &a.dir().join("ca.crt").display().to_string());
    let gateway = Gateway::start(&render(&yaml, "", &upstream.addr())).await;
    let client = client();
    let counter = month_key("acme", "requests");
    let logs = || format!("{}\n--- sentinel ---\n{}", gateway.stderr(), sentinel.log());

    served_then_refunded(&client, &gateway, 3).await;
    assert_eq!(a.get_int(&counter).await, 3, "{}", logs());

    sentinel.failover().await;
    until("the failover to b", 30, logs, || async {
        sentinel.primary_port().await == Some(b.tls_port())
            && a.replication().await.contains("master_link_status:up")
    })
    .await;
    let refused = calls_until_admitted(&client, &gateway.url("/v1/items"), logs).await;
    assert!(refused <= 2, "{refused} calls refused\n{}", logs());
    served_then_refunded(&client, &gateway, 2).await;
    assert_eq!(b.get_int(&counter).await, 3 + 3, "{}", logs());
    // Every call's event reached the stream over TLS, before the failover on a (and so on b,
    // its replica) and after it on b: 4 calls, the refused ones, 1 admitted, 3.
    let total = 4 + refused + 1 + 3;
    until("every event on b", 15, logs, || async {
        ids(&stream_events(&b, "tg:events").await).len() >= total
    })
    .await;
    assert_eq!(ids(&stream_events(&b, "tg:events").await).len(), total);
}
