//! `store.url: rediss://…`: reservations over TLS to a Redis whose certificate a private CA
//! signed, trusted through `store.ca_file` and counted exactly; without the CA, the store is
//! unreachable and the call is answered as an outage whose log line says why.

use crate::common::tls::TestCa;
use crate::common::{client, get, month_key, render, Gateway, RedisServer, Upstream, ACME_KEY};

const YAML: &str = r#"
server:
  listen: "{listen}"
  threads: 2
admin:
  listen: "{admin}"
store:
  kind: redis
  url: "{rediss}"{ca}
  timeout: 1s
  on_outage: fail_closed
upstreams:
  product:
    targets: ["{upstream}"]
tenants:
  acme:
    plan: free
    keys:
      - id: acme-1
        sha256: "{acme_sha}"
plans:
  free:
    meters:
      requests: { limit: 10, period: month }
routes:
  - name: api
    match: { path_prefix: / }
    upstream: product
    meter: { requests: 1 }
"#;

/// A gateway metering on `redis` over TLS, trusting `ca` through `ca_file` when given.
async fn gateway(redis: &RedisServer, upstream: &Upstream, ca: Option<&TestCa>) -> Gateway {
    let ca_line = match ca {
        Some(ca) => {
            let path = ca.write_ca(redis.dir());
            format!("\n  ca_file: \"{}\"", path.display())
        }
        None => String::new(),
    };
    let yaml = YAML
        .replace("{rediss}", &redis.tls_url())
        .replace("{ca}", &ca_line);
    Gateway::start(&render(&yaml, &redis.url(), &upstream.addr())).await
}

#[tokio::test(flavor = "multi_thread")]
async fn over_rediss_with_the_ca_file_a_limit_of_10_admits_exactly_10() {
    let ca = TestCa::new();
    let redis = RedisServer::start_tls(&ca).await;
    let upstream = Upstream::start().await;
    let gw = gateway(&redis, &upstream, Some(&ca)).await;

    let client = client();
    let calls = (0..25).map(|i| {
        let (client, url) = (client.clone(), gw.url(&format!("/v1/items/{i}")));
        tokio::spawn(async move { get(&client, &url, Some(ACME_KEY)).await.status })
    });
    let mut statuses = Vec::new();
    for call in calls.collect::<Vec<_>>() {
        statuses.push(call.await.unwrap());
    }

    statuses.sort_unstable();
    assert_eq!(statuses, [[200; 10].as_slice(), &[402; 15]].concat());
    // Read back over the unix socket: the TLS connection was the gateway's only way in.
    assert_eq!(redis.get_int(&month_key("acme", "requests")).await, 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_redis_certificate_is_an_outage_that_says_why() {
    let ca = TestCa::new();
    let redis = RedisServer::start_tls(&ca).await;
    let upstream = Upstream::start().await;
    let gw = gateway(&redis, &upstream, None).await;

    let answer = get(&client(), &gw.url("/v1/items"), Some(ACME_KEY)).await;

    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(answer.json()["type"], "urn:tollgate:store-unavailable");
    assert_eq!(redis.get_int(&month_key("acme", "requests")).await, 0);
    assert_eq!(upstream.hits(), 0);
    let log = gw.stderr();
    assert!(
        log.contains("certificate"),
        "the log names the certificate problem:\n{log}"
    );
}

/// The reservation connection over TLS is the gateway's own (not redis-rs's): it must also load
/// the script again after `SCRIPT FLUSH`, and reconnect, with a new TLS handshake, after Redis
/// comes back.
#[tokio::test(flavor = "multi_thread")]
async fn over_rediss_counts_stay_exact_through_a_script_flush_and_a_restart() {
    let ca = TestCa::new();
    let mut redis = RedisServer::start_tls(&ca).await;
    let upstream = Upstream::start().await;
    let gw = gateway(&redis, &upstream, Some(&ca)).await;
    let client = client();
    let url = gw.url("/v1/items");
    let call = || get(&client, &url, Some(ACME_KEY));
    let counter = month_key("acme", "requests");

    for _ in 0..3 {
        assert_eq!(call().await.status, 200);
    }
    assert_eq!(redis.get_int(&counter).await, 3);

    redis.command(&["SCRIPT", "FLUSH"]).await;
    for n in 0..2 {
        let answer = call().await;
        assert_eq!(
            answer.status, 200,
            "call {n} after SCRIPT FLUSH: {}",
            answer.body
        );
    }
    assert_eq!(redis.get_int(&counter).await, 5);

    redis.kill();
    let answer = call().await;
    assert_eq!(
        answer.status, 503,
        "fail_closed while Redis is down: {}",
        answer.body
    );

    redis.restart().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let answer = call().await;
        if answer.status == 200 {
            break;
        }
        assert_eq!(answer.status, 503, "{}", answer.body);
        assert!(
            std::time::Instant::now() < deadline,
            "metering did not resume within 15 s of the restart"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // A reservation that timed out while Redis came back refunds itself when its reply lands.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        redis.get_int(&counter).await,
        1,
        "the restarted Redis counts the first admitted call only"
    );
    for _ in 0..2 {
        assert_eq!(call().await.status, 200);
    }
    assert_eq!(redis.get_int(&counter).await, 3);
    assert_eq!(
        upstream.hits(),
        8,
        "only admitted calls reached the upstream"
    );
}
