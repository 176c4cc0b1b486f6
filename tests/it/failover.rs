//! A Redis failover as a managed Redis does it: the endpoint's name moves to the new primary
//! while the old one, demoted to a replica, answers writes with `READONLY` on the connections
//! made before. The gateway gives those connections up and follows the name: metering, admin
//! corrections and the usage events' stream carry on on the new primary, without a restart.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::events::{ids, stream_events, wait_for};
use crate::common::forwarder::Forwarder;
use crate::common::gateway::free_port;
use crate::common::http::admin;
use crate::common::{
    client, get, month_key, render, Gateway, RedisServer, Upstream, ACME_KEY, ACME_ON_PRODUCT,
};

const TOKEN: &str = "an-admin-token-for-the-tests";

/// The store and the events' stream behind one endpoint; then [`ACME_ON_PRODUCT`].
const YAML: &str = r#"
server: { listen: "{listen}", threads: 2 }
admin: { listen: "{admin}", token: "an-admin-token-for-the-tests" }
store: { kind: redis, url: "{redis}", timeout: 500ms, on_outage: fail_closed }
upstreams:
  product: { targets: ["{upstream}"] }
telemetry:
  spool: "{dir}/spool"
  retry_max: 200ms
  sinks:
    - { name: events, kind: redis_stream, url: "{redis}", stream: "tg:events" }
"#;

#[tokio::test(flavor = "multi_thread")]
async fn after_a_failover_metering_corrections_and_events_follow_the_new_primary() {
    let (old, new) = (RedisServer::start().await, RedisServer::start().await);
    let endpoint = Forwarder::start(&old.socket()).await;
    let upstream = Upstream::start().await;
    let yaml = format!("{YAML}{ACME_ON_PRODUCT}");
    let gateway = Gateway::start(&render(&yaml, &endpoint.url(), &upstream.addr())).await;
    let client = client();
    let url = gateway.url("/v1/items");
    let call = || get(&client, &url, Some(ACME_KEY));
    let counter = month_key("acme", "requests");

    for _ in 0..3 {
        assert_eq!(call().await.status, 200);
    }
    assert_eq!(old.get_int(&counter).await, 3);
    // The events' sink is connected (to the old primary) too.
    wait_for("the first events", Duration::from_secs(10), || async {
        stream_events(&old, "tg:events").await.len() == 3
    })
    .await;

    // The failover: the old primary becomes a replica (of a primary it cannot reach, so it
    // keeps its data and refuses writes), and the endpoint now leads to the new one.
    let nowhere = free_port().to_string();
    old.command(&["REPLICAOF", "127.0.0.1", &nowhere]).await;
    endpoint.point_to(&new.socket());

    let (mut refused, started) = (0, Instant::now());
    loop {
        let answer = call().await;
        match answer.status {
            200 => break,
            503 => refused += 1,
            other => panic!("{other} {}", answer.body),
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still refused after {refused} calls: the gateway kept its connection to the replica\n{}",
            gateway.stderr()
        );
    }
    assert!(
        refused <= 2,
        "{refused} calls were refused before the gateway reconnected"
    );
    for _ in 0..4 {
        assert_eq!(call().await.status, 200);
    }
    assert_eq!(new.get_int(&counter).await, 5, "counted on the new primary");
    assert_eq!(old.get_int(&counter).await, 3, "and not on the old one");
    assert!(
        gateway.stderr().contains("READONLY"),
        "the reconnect is logged:\n{}",
        gateway.stderr()
    );

    // The admin API's connection is another: it follows too.
    let body = json!({ "meter": "requests", "delta": -2, "reason": "failover test" });
    let mut tries = 0;
    loop {
        tries += 1;
        let answer = admin(
            &client,
            &gateway,
            reqwest::Method::POST,
            "/admin/v1/tenants/acme/usage",
            Some(TOKEN),
            Some(body.clone()),
        )
        .await;
        if answer.status == 200 {
            break;
        }
        assert!(
            tries < 3,
            "{} {}: the correction still fails",
            answer.status,
            answer.body
        );
    }
    assert_eq!(
        new.get_int(&counter).await,
        3,
        "the credit went to the new primary"
    );

    // Every call's event, and the correction's, reached a primary: the old one before the
    // failover, the new one after (the batch the replica refused included), none lost.
    let total = 3 + refused + 5 + 1;
    wait_for(
        "every event on one primary or the other",
        Duration::from_secs(15),
        || async {
            let events = [
                stream_events(&old, "tg:events").await,
                stream_events(&new, "tg:events").await,
            ]
            .concat();
            ids(&events).len() >= total
        },
    )
    .await;
    let before = stream_events(&old, "tg:events").await;
    let after = stream_events(&new, "tg:events").await;
    assert_eq!(before.len(), 3, "the replica took no event");
    assert_eq!(ids(&[before, after].concat()).len(), total);
}
