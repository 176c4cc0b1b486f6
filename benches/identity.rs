//! What does identifying a caller cost?
//!
//! `identify/*` runs the whole of `Gateway::admit` on a route that is not metered (so no store
//! call), once per credential kind: a static API key, and JWTs signed RS256, ES256 and HS256
//! whose issuer's JWKS is already cached (fetched once from a local HTTP server before timing).
//! Those tokens are remembered once verified, so `identify/jwt_*` is the cost of a token's
//! reuse; `verify_first_sight/*` is the full verification (signature included) of a token the
//! gateway has not seen yet. Keys are made by the `openssl` tool.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a bench may panic: that is how it reports a broken set-up

use std::hint::black_box;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate::config::load_str;
use tollgate::meter::period::SystemClock;
use tollgate::pipeline::Gateway;
use tollgate::store::{embedded::EmbeddedStore, StoreHandle};
use tollgate::telemetry::metrics::Metrics;

const LOCALHOST: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
const KEY: &str = "tg_live_benchmarkbenchmarkbenchmark00";
const SECRET: &str = "a-bench-secret-of-at-least-32-bytes!";

/// A private key in PKCS#8 PEM made by `openssl genpkey` with `args`.
fn private_pem(dir: &std::path::Path, name: &str, args: &[&str]) -> Vec<u8> {
    let path = dir.join(name);
    let status = Command::new("openssl")
        .arg("genpkey")
        .args(args)
        .arg("-out")
        .arg(&path)
        .status()
        .expect("the identity bench makes keys with `openssl`; install it");
    assert!(status.success());
    std::fs::read(path).unwrap()
}

/// Serves `body` as the answer to every request on a free port; returns the URL.
async fn serve(body: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: max-age=3600\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(answer.as_bytes()).await;
        }
    });
    format!("http://{addr}/jwks.json")
}

fn config(jwks_url: &str) -> String {
    format!(
        "server: {{ listen: \"127.0.0.1:1\" }}\n\
         store: {{ kind: embedded }}\n\
         tenants:\n  acme:\n    plan: free\n    keys: [{{ id: k, sha256: \"{sha}\" }}]\n\
         auth:\n  jwt:\n\
         \x20   - {{ issuer: \"https://idp/\", audience: api, algorithms: [RS256, ES256], jwks_url: \"{jwks_url}\", tenant_claim: org }}\n\
         \x20   - {{ issuer: \"https://hs/\", audience: api, algorithms: [HS256], secret: \"{SECRET}\", tenant_claim: org }}\n\
         plans:\n  free:\n    meters:\n      requests: {{ limit: 1000000000000, period: month }}\n\
         routes:\n  - {{ name: free, match: {{ path_prefix: / }}, respond: {{ body: ok }} }}\n",
        sha = tollgate::keys::sha256_hex(KEY)
    )
}

fn bearer(credential: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {credential}")).unwrap(),
    );
    h
}

fn bench(c: &mut Criterion) {
    tollgate::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let rsa_pem = private_pem(
        dir.path(),
        "rsa.pem",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    );
    let ec_pem = private_pem(
        dir.path(),
        "ec.pem",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let rsa = EncodingKey::from_rsa_pem(&rsa_pem).unwrap();
    let ec = EncodingKey::from_ec_pem(&ec_pem).unwrap();
    let mut jwks = Vec::new();
    for (key, alg, kid) in [
        (&rsa, Algorithm::RS256, "rsa"),
        (&ec, Algorithm::ES256, "ec"),
    ] {
        let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(key, alg).unwrap();
        jwk.common.key_id = Some(kid.into());
        jwks.push(jwk);
    }
    let doc = serde_json::json!({ "keys": jwks }).to_string();
    let url = rt.block_on(serve(doc));

    let config = load_str("bench.yaml", &config(&url), &|_| None).expect("bench config is valid");
    let metrics = Arc::new(Metrics::unregistered().unwrap());
    let store = EmbeddedStore::open(&dir.path().join("usage.db")).unwrap();
    let store = StoreHandle::new(Arc::new(store), Duration::from_secs(1), &metrics);
    let gw = Gateway::new(&config, store, Arc::new(SystemClock), metrics);
    let jwt = tollgate::pipeline::jwt::JwtAuth::new(&config.auth.jwt);

    let claims = |iss: &str| {
        serde_json::json!({"iss": iss, "aud": "api", "org": "acme", "sub": "u1",
                           "exp": jiff::Timestamp::now().as_second() + 3600})
    };
    let token = |alg, kid: Option<&str>, key: &EncodingKey, iss: &str| {
        let mut h = Header::new(alg);
        h.kid = kid.map(String::from);
        jsonwebtoken::encode(&h, &claims(iss), key).unwrap()
    };
    let hs = EncodingKey::from_secret(SECRET.as_bytes());
    let cases = [
        ("api_key", bearer(KEY)),
        (
            "jwt_rs256",
            bearer(&token(Algorithm::RS256, Some("rsa"), &rsa, "https://idp/")),
        ),
        (
            "jwt_es256",
            bearer(&token(Algorithm::ES256, Some("ec"), &ec, "https://idp/")),
        ),
        (
            "jwt_hs256",
            bearer(&token(Algorithm::HS256, None, &hs, "https://hs/")),
        ),
    ];
    // Warm: the first JWT call fetches the JWKS; every case must be admitted.
    for (name, headers) in &cases {
        let admitted = rt.block_on(gw.admit(&Method::GET, None, "/x", headers, LOCALHOST));
        assert!(admitted.is_ok(), "{name} is not admitted");
    }

    let now = jiff::Timestamp::now().as_second();
    let mut v = c.benchmark_group("verify_first_sight");
    for (name, headers) in &cases[1..] {
        let token = tollgate::pipeline::identity::bearer_token(headers).unwrap();
        assert!(
            rt.block_on(jwt.verify(token, now)).is_ok(),
            "{name} verifies"
        );
        v.bench_function(*name, |b| {
            b.iter(|| {
                rt.block_on(jwt.verify_uncached(black_box(token), now))
                    .is_ok()
            })
        });
    }
    v.finish();

    let mut g = c.benchmark_group("identify");
    for (name, headers) in &cases {
        g.bench_function(*name, |b| {
            b.iter(|| {
                rt.block_on(gw.admit(&Method::GET, None, "/x", black_box(headers), LOCALHOST))
                    .is_ok()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
