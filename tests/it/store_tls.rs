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
