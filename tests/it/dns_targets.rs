//! A target written as a host name with several addresses (a service's instances behind one
//! name): every address takes calls, each is judged healthy on its own, and the name is
//! followed as instances come and go. The gateway gets its own `/etc/hosts` (see
//! [`Gateway::start_with_hosts`]), so the system resolver answers as a DNS server would.

use std::time::{Duration, Instant};

use crate::common::events::{metric, metrics};
use crate::common::gateway::free_port;
use crate::common::http::admin;
use crate::common::{
    client, get, month_key, render, Gateway, RedisServer, Upstream, ACME_KEY, ACME_ON_PRODUCT,
};

const YAML: &str = r#"
server: { listen: "{listen}", threads: 2 }
admin: { listen: "{admin}", token: "an-admin-token-for-the-tests" }
store: { kind: redis, url: "{redis}", timeout: 2s }
upstreams:
  product:
    targets: ["instances.test:{port}"]
    resolve_every: 1s
    health_check: { path: /_health, interval: 200ms }
"#;

/// `instances.test` at 127.0.0.`last` for each of `lasts`.
fn hosts(lasts: &[u8]) -> String {
    let mut text = "127.0.0.1 localhost\n".to_string();
    for last in lasts {
        text.push_str(&format!("127.0.0.{last} instances.test\n"));
    }
    text
}

/// Waits up to 10 s for `check` on the gateway's metrics.
async fn until_metrics(gateway: &Gateway, what: &str, check: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics(gateway).await;
        if check(&text) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within 10 s:\n{text}\n{}",
            gateway.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_address_of_a_name_takes_calls_is_judged_alone_and_is_followed() {
    let port = free_port();
    let at = |last: u8| format!("127.0.0.{last}:{port}");
    let mut upstreams = Vec::new();
    for last in [2, 3, 4, 5] {
        upstreams.push(Upstream::start_on(&at(last)).await);
    }
    let hits = || upstreams.iter().map(Upstream::hits).collect::<Vec<_>>();
    let redis = RedisServer::start().await;
    let yaml = format!("{YAML}{ACME_ON_PRODUCT}").replace("{port}", &port.to_string());
    let gateway =
        Gateway::start_with_hosts(&render(&yaml, &redis.url(), ""), &hosts(&[2, 3, 4])).await;
    let client = client();
    let url = gateway.url("/v1/items");
    let call = || get(&client, &url, Some(ACME_KEY));
    let up = |text: &str, last: u8| {
        metric(
            text,
            "tollgate_upstream_target_up",
            &[("address", &at(last))],
        )
    };

    // `n` calls, all served; how many reached each instance.
    let spread = |n: usize| async move {
        let before = hits();
        for _ in 0..n {
            assert_eq!(call().await.status, 200);
        }
        let after = hits();
        (0..4).map(|i| after[i] - before[i]).collect::<Vec<_>>()
    };

    // Three instances behind the name: the calls go round all three.
    assert_eq!(spread(9).await, [3, 3, 3, 0], "{}", gateway.stderr());

    // One instance fails its health checks: only it is left out.
    upstreams[1].set_health(503);
    until_metrics(&gateway, "127.0.0.3 out", |t| up(t, 3) == 0.0).await;
    assert_eq!(spread(6).await, [3, 0, 3, 0]);
    // The admin API shows each address and why one takes no calls.
    let view = admin(
        &client,
        &gateway,
        reqwest::Method::GET,
        "/admin/v1/upstreams",
        Some("an-admin-token-for-the-tests"),
        None,
    )
    .await;
    assert_eq!(view.status, 200, "{}", view.body);
    let view: serde_json::Value = serde_json::from_str(&view.body).unwrap();
    let targets = view["upstreams"][0]["targets"].as_array().unwrap();
    let shown: Vec<_> = targets
        .iter()
        .map(|t| {
            (
                t["target"].as_str().unwrap().to_string(),
                t["address"].as_str().unwrap().to_string(),
                t["taking_calls"].as_bool().unwrap(),
                t["out_for_health_checks"].as_bool().unwrap(),
            )
        })
        .collect();
    let name = format!("instances.test:{port}");
    assert_eq!(
        shown,
        [
            (name.clone(), at(2), true, false),
            (name.clone(), at(3), false, true),
            (name.clone(), at(4), true, false)
        ]
    );

    // The name moves: .4 leaves, .5 arrives; .3 is still listed and still out.
    gateway.set_hosts(&hosts(&[2, 3, 5]));
    let gone = format!("address=\"{}\"", at(4));
    until_metrics(&gateway, "127.0.0.5 in and 127.0.0.4 gone", |t| {
        up(t, 5) == 1.0
            && !t
                .lines()
                .any(|l| l.starts_with("tollgate_upstream_target_up") && l.contains(&gone))
    })
    .await;
    assert_eq!(spread(6).await, [3, 0, 0, 3]);
    assert_eq!(redis.get_int(&month_key("acme", "requests")).await, 21);
    assert!(
        gateway.stderr().contains("resolves to other addresses now"),
        "{}",
        gateway.stderr()
    );
}
