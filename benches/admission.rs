//! What does deciding to admit a call cost, apart from the store round trip?
//!
//! `admit/*` runs the whole of `Gateway::admit` (path check, route match, key hash and look-up,
//! plan, feature gate, burst limiter, period window and counter key) on a route the plan does not
//! meter, so no store call is made; `admit_embedded` adds the embedded store's reserve. Beside
//! them, the baseline is the least any gateway must do: one hash-map look-up of the plaintext
//! key. The parts are benched alone so a regression points at its step.

#![allow(clippy::expect_used)] // a bench may panic: that is how it reports a broken set-up

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use tollgate::config::load_str;
use tollgate::meter::period::{Clock, Period, SystemClock, Window};
use tollgate::pipeline::Gateway;
use tollgate::store::{embedded::EmbeddedStore, keys, StoreHandle};
use tollgate::telemetry::metrics::Metrics;

const LOCALHOST: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
const KEY: &str = "tg_live_benchmarkbenchmarkbenchmark00";

fn config(sha: &str) -> String {
    format!(
        "server: {{ listen: \"127.0.0.1:1\" }}\n\
         store: {{ kind: embedded }}\n\
         tenants:\n  acme:\n    plan: free\n    keys: [{{ id: k, sha256: \"{sha}\" }}]\n\
         plans:\n  free:\n    rate_limit: {{ requests: 1000000000, per: 1s }}\n    meters:\n      requests: {{ limit: 1000000000000, period: month }}\n\
         routes:\n  - {{ name: open, match: {{ path_prefix: /open }}, respond: {{ body: ok }} }}\n\
         \x20 - {{ name: api, match: {{ path_prefix: /v1 }}, respond: {{ body: ok }}, meter: {{ requests: 1 }} }}\n\
         \x20 - {{ name: free, match: {{ path_prefix: / }}, respond: {{ body: ok }} }}\n"
    )
}

fn gateway(dir: &std::path::Path) -> Gateway {
    let text = config(&tollgate::keys::sha256_hex(KEY));
    let config = load_str("bench.yaml", &text, &|_| None).expect("bench config is valid");
    let metrics = Arc::new(Metrics::unregistered().expect("metrics"));
    let store = EmbeddedStore::open(&dir.join("usage.db")).expect("embedded store");
    let store = StoreHandle::new(Arc::new(store), Duration::from_secs(1), &metrics);
    Gateway::new(&config, store, Arc::new(SystemClock), metrics)
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = gateway(dir.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {KEY}")).expect("header"),
    );
    headers.insert("user-agent", HeaderValue::from_static("bench"));

    let mut g = c.benchmark_group("admission");
    g.bench_function("baseline_plain_key_lookup", |b| {
        let map: std::collections::HashMap<String, &str> = [(KEY.to_string(), "acme")].into();
        b.iter(|| {
            let v = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            black_box(v.and_then(|k| map.get(k)))
        })
    });
    g.bench_function("admit_unmetered_route", |b| {
        b.iter(|| {
            rt.block_on(gw.admit(
                &Method::GET,
                None,
                "/search",
                black_box(&headers),
                LOCALHOST,
            ))
            .is_ok()
        })
    });
    g.bench_function("admit_embedded_store", |b| {
        b.iter(|| {
            rt.block_on(gw.admit(
                &Method::GET,
                None,
                "/v1/search",
                black_box(&headers),
                LOCALHOST,
            ))
            .is_ok()
        })
    });
    g.finish();

    let mut p = c.benchmark_group("parts");
    p.bench_function("sha256_of_key", |b| {
        b.iter(|| {
            black_box(<sha2::Sha256 as sha2::Digest>::digest(
                black_box(KEY).as_bytes(),
            ))
        })
    });
    p.bench_function("period_window_and_counter_key", |b| {
        b.iter(|| {
            let w = Window::containing(Period::Month, Some(15), SystemClock.now()).expect("window");
            black_box(keys::counter("acme", "requests", w.start_date))
        })
    });
    p.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
