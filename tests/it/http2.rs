//! `server.http2`: callers speaking HTTP/2 (ALPN over `tls`, prior-knowledge h2c without) are
//! identified, metered and refused exactly as over HTTP/1.1.

use std::time::Duration;

use reqwest::Version;

use crate::common::http::read;
use crate::common::tls::TestCa;
use crate::common::{render, Answer, Gateway, RedisServer, Upstream, ACME_KEY, ACME_ON_PRODUCT};

/// `{tls}` is the TLS setting, if any; `{h2}` is `true` or `false`. The free plan's limit is 1000.
const YAML: &str = r#"
server: { listen: "{listen}", threads: 2, http2: {h2} {tls} }
admin: { listen: "{admin}" }
store: { kind: redis, url: "{redis}", timeout: 2s }
upstreams:
  product: { targets: ["{upstream}"] }
"#;

struct H2 {
    gw: Gateway,
    redis: RedisServer,
    _upstream: Upstream,
    _certs: tempfile::TempDir,
}

async fn start(h2: bool, ca: Option<&TestCa>) -> H2 {
    let certs = tempfile::tempdir().unwrap();
    let tls = match ca {
        Some(ca) => {
            std::fs::write(certs.path().join("s.pem"), &ca.server_cert_pem).unwrap();
            std::fs::write(certs.path().join("s.key"), &ca.server_key_pem).unwrap();
            let dir = certs.path().display();
            format!(", tls: {{ cert_file: \"{dir}/s.pem\", key_file: \"{dir}/s.key\" }}")
        }
        None => String::new(),
    };
    let yaml = format!("{YAML}{ACME_ON_PRODUCT}")
        .replace("{h2}", &h2.to_string())
        .replace("{tls}", &tls)
        .replace("limit: 1000", "limit: 2");
    let (redis, upstream) = (RedisServer::start().await, Upstream::start().await);
    let gw = Gateway::start(&render(&yaml, &redis.url(), &upstream.addr())).await;
    H2 {
        gw,
        redis,
        _upstream: upstream,
        _certs: certs,
    }
}

/// A client trusting `ca` that offers HTTP/2 and HTTP/1.1 by ALPN.
fn alpn_client(ca: &TestCa) -> reqwest::Client {
    tollgate::install_crypto_provider();
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.ca_pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn get(client: &reqwest::Client, url: &str) -> (Version, Answer) {
    let resp = client.get(url).bearer_auth(ACME_KEY).send().await.unwrap();
    (resp.version(), read(resp).await)
}

#[tokio::test(flavor = "multi_thread")]
async fn over_tls_h2_callers_are_metered_and_refused_as_over_http1() {
    let ca = TestCa::new();
    let s = start(true, Some(&ca)).await;
    let (client, url) = (
        alpn_client(&ca),
        format!("https://{}/v1/items", s.gw.listen_addr()),
    );

    let (v1, first) = get(&client, &url).await;
    let (_, _) = get(&client, &url).await;
    let (v3, refused) = get(&client, &url).await;

    assert_eq!((v1, first.status), (Version::HTTP_2, 200), "{}", first.body);
    assert!(first.header("ratelimit").is_some(), "{:?}", first.headers);
    assert_eq!(first.echoed_headers()["x-tollgate-tenant"], ["acme"]);
    assert_eq!(
        (v3, refused.status),
        (Version::HTTP_2, 402),
        "{}",
        refused.body
    );
    assert_eq!(refused.problem(402)["meter"], "requests");
    let key = crate::common::month_key("acme", "requests");
    assert_eq!(s.redis.get_int(&key).await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_http2_a_tls_caller_offering_h2_gets_http1() {
    let ca = TestCa::new();
    let s = start(false, Some(&ca)).await;

    let (version, answer) = get(
        &alpn_client(&ca),
        &format!("https://{}/v1/items", s.gw.listen_addr()),
    )
    .await;

    assert_eq!((version, answer.status), (Version::HTTP_11, 200));
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http2_by_prior_knowledge_and_http1_share_the_port() {
    let s = start(true, None).await;
    let url = s.gw.url("/v1/items");
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    let (v1, over_h2c) = get(&h2c, &url).await;
    let (v2, over_h1) = get(&crate::common::client(), &url).await;

    assert_eq!(
        (v1, over_h2c.status),
        (Version::HTTP_2, 200),
        "{}",
        over_h2c.body
    );
    assert_eq!(
        (v2, over_h1.status),
        (Version::HTTP_11, 200),
        "{}",
        over_h1.body
    );
    let key = crate::common::month_key("acme", "requests");
    assert_eq!(s.redis.get_int(&key).await, 2);
}
