//! The public listener over TLS (`server.tls`): callers reach it with HTTPS, calls are
//! metered as over plain HTTP, and a reload swaps in a renewed certificate without a restart.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::http::read;
use crate::common::tls::TestCa;
use crate::common::{month_key, render, Gateway, RedisServer, Upstream, ACME_KEY, ACME_ON_PRODUCT};

const YAML: &str = r#"
server:
  listen: "{listen}"
  threads: 2
  tls: { cert_file: "{certs}/server.pem", key_file: "{certs}/server.key" }
admin: { listen: "{admin}" }
store: { kind: redis, url: "{redis}", timeout: 2s }
upstreams:
  product: { targets: ["{upstream}"] }
"#;

/// A gateway serving HTTPS with `ca`'s server certificate, from files in `certs`.
struct Https {
    gw: Gateway,
    redis: RedisServer,
    upstream: Upstream,
    certs: tempfile::TempDir,
}

impl Https {
    async fn start(ca: &TestCa) -> Https {
        let certs = tempfile::tempdir().unwrap();
        write_server_cert(ca, certs.path());
        let (redis, upstream) = (RedisServer::start().await, Upstream::start().await);
        let yaml = format!("{YAML}{ACME_ON_PRODUCT}")
            .replace("{certs}", &certs.path().display().to_string());
        let gw = Gateway::start(&render(&yaml, &redis.url(), &upstream.addr())).await;
        Https {
            gw,
            redis,
            upstream,
            certs,
        }
    }
}

fn write_server_cert(ca: &TestCa, dir: &Path) {
    std::fs::write(dir.join("server.pem"), &ca.server_cert_pem).unwrap();
    std::fs::write(dir.join("server.key"), &ca.server_key_pem).unwrap();
}

/// An HTTPS client that trusts `ca` alone.
fn trusting(ca: &TestCa) -> reqwest::Client {
    tollgate::install_crypto_provider();
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.ca_pem.as_bytes()).unwrap())
        .http1_only()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn call(client: &reqwest::Client, gw: &Gateway) -> reqwest::Result<crate::common::Answer> {
    let url = format!("https://{}/v1/items", gw.listen_addr());
    let answer = client
        .get(url)
        .bearer_auth(ACME_KEY)
        .header("x-forwarded-proto", "http")
        .send()
        .await?;
    Ok(read(answer).await)
}

#[tokio::test(flavor = "multi_thread")]
async fn https_callers_are_metered_and_plain_http_gets_no_answer() {
    let ca = TestCa::new();
    let Https {
        gw,
        redis,
        upstream,
        ..
    } = Https::start(&ca).await;

    let answer = call(&trusting(&ca), &gw).await.expect("an HTTPS call");

    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.header("ratelimit").is_some(), "{:?}", answer.headers);
    // The upstream learns the caller came over HTTPS, whatever the client claimed.
    assert_eq!(answer.echoed_headers()["x-forwarded-proto"], ["https"]);
    assert_eq!(redis.get_int(&month_key("acme", "requests")).await, 1);
    assert_eq!(upstream.hits(), 1);
    // Plain HTTP to the TLS port is not answered as HTTP, and charges nothing.
    let plain = crate::common::client()
        .get(gw.url("/v1/items"))
        .bearer_auth(ACME_KEY)
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");
    assert_eq!(redis.get_int(&month_key("acme", "requests")).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_serves_the_renewed_certificate_to_new_connections() {
    let old_ca = TestCa::new();
    let https = Https::start(&old_ca).await;
    let (gw, certs) = (&https.gw, &https.certs);
    let new_ca = TestCa::new();
    assert!(call(&trusting(&old_ca), gw).await.is_ok());
    assert!(
        call(&trusting(&new_ca), gw).await.is_err(),
        "the new certificate is not served yet"
    );

    write_server_cert(&new_ca, certs.path());
    gw.signal("HUP");

    // Fresh clients, so each call makes a new connection and handshake.
    let started = Instant::now();
    while call(&trusting(&new_ca), gw).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the renewed certificate is not served 5 s after SIGHUP:\n{}",
            gw.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answer = call(&trusting(&new_ca), gw).await.expect("an HTTPS call");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(call(&trusting(&old_ca), gw).await.is_err());
    assert!(
        !gw.stderr().contains("take effect only after a restart"),
        "a renewed certificate needs no restart:\n{}",
        gw.stderr()
    );
}
