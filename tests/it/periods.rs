//! Billing periods with a moved clock, through the library's request path against real Redis.
//!
//! These drive `Gateway::admit` directly (no HTTP) because only the library lets a test inject
//! the clock: the binary always runs on the system clock.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

use http::{HeaderMap, HeaderValue, Method};
use jiff::Timestamp;
use tollgate::meter::period::Clock;
use tollgate::pipeline::{Admission, Gateway, Rejection};
use tollgate::store::StoreHandle;
use tollgate::telemetry::metrics::Metrics;

use crate::common::{RedisServer, ACME_KEY, ACME_SHA};

/// A clock the test moves by hand. Tests set it in the future (2098–2099): counters expire at
/// real wall-clock times, and a period already over in real time would expire at once.
struct MovedClock(Mutex<Timestamp>);

impl Clock for MovedClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap()
    }
}

impl MovedClock {
    fn set(&self, t: &str) {
        *self.0.lock().unwrap() = t.parse().unwrap();
    }
}

fn config(redis: &str, anchor: Option<u8>, period: &str) -> tollgate::config::Config {
    let anchor = anchor.map_or(String::new(), |a| format!("    billing_anchor: {a}\n"));
    let yaml = format!(
        "server: {{ listen: \"127.0.0.1:1\" }}\n\
         store: {{ kind: redis, url: \"{redis}\", timeout: 1s }}\n\
         tenants:\n  acme:\n    plan: free\n{anchor}    keys: [{{ id: ci, sha256: \"{ACME_SHA}\" }}]\n\
         plans:\n  free:\n    meters:\n      requests: {{ limit: 3, period: {period} }}\n\
         routes:\n  - {{ name: api, match: {{ path_prefix: / }}, respond: {{ body: ok }}, meter: {{ requests: 1 }} }}\n"
    );
    tollgate::config::load_str("periods.yaml", &yaml, &|_| None).unwrap()
}

async fn gateway(
    redis: &RedisServer,
    anchor: Option<u8>,
    period: &str,
    clock: Arc<MovedClock>,
) -> Gateway {
    let config = config(&redis.url(), anchor, period);
    let metrics = Arc::new(Metrics::unregistered().unwrap());
    let store = StoreHandle::open(&config.store, &metrics).unwrap();
    Gateway::new(&config, store, clock, metrics)
}

fn key_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("x-api-key", HeaderValue::from_static(ACME_KEY));
    h
}

/// Calls until refused; returns how many were admitted (bounded).
async fn admitted_until_refused(gw: &Gateway) -> usize {
    for n in 0..10 {
        match gw
            .admit(&Method::GET, None, "/v1/x", &key_headers(), LOCALHOST)
            .await
        {
            Ok(Admission::Admitted(_)) => {}
            Ok(Admission::Public(_)) => panic!("route should be metered"),
            Err(r) => {
                assert!(
                    matches!(r.rejection, Rejection::QuotaExceeded(_)),
                    "{:?}",
                    r.rejection
                );
                return n;
            }
        }
    }
    panic!("the limit of 3 never bit");
}

#[tokio::test]
async fn monthly_usage_starts_again_at_zero_in_the_next_period() {
    let redis = RedisServer::start().await;
    let clock = Arc::new(MovedClock(Mutex::new(
        "2098-11-30T23:59:58Z".parse().unwrap(),
    )));
    let gw = gateway(&redis, None, "month", clock.clone()).await;
    assert_eq!(admitted_until_refused(&gw).await, 3);
    clock.set("2098-12-01T00:00:00Z");
    assert_eq!(
        admitted_until_refused(&gw).await,
        3,
        "a new month has a fresh quota"
    );
    assert_eq!(redis.get_int("tg:{acme}:m:requests:2098-11-01").await, 3);
    assert_eq!(redis.get_int("tg:{acme}:m:requests:2098-12-01").await, 3);
    // Counters expire one day after their period ends.
    let ttl = redis.ttl("tg:{acme}:m:requests:2098-11-01").await;
    let until = "2098-12-02T00:00:00Z"
        .parse::<Timestamp>()
        .unwrap()
        .as_second()
        - Timestamp::now().as_second();
    assert!((ttl - until).abs() <= 5, "ttl {ttl} vs {until}");
}

#[tokio::test]
async fn daily_usage_resets_at_utc_midnight() {
    let redis = RedisServer::start().await;
    let clock = Arc::new(MovedClock(Mutex::new(
        "2098-11-26T23:59:59Z".parse().unwrap(),
    )));
    let gw = gateway(&redis, None, "day", clock.clone()).await;
    assert_eq!(admitted_until_refused(&gw).await, 3);
    clock.set("2098-11-27T00:00:00Z");
    assert_eq!(admitted_until_refused(&gw).await, 3);
    assert_eq!(redis.get_int("tg:{acme}:m:requests:2098-11-27").await, 3);
}

#[tokio::test]
async fn anchor_31_in_february_starts_the_period_on_the_28th() {
    let redis = RedisServer::start().await;
    let clock = Arc::new(MovedClock(Mutex::new(
        "2099-02-27T12:00:00Z".parse().unwrap(),
    )));
    let gw = gateway(&redis, Some(31), "month", clock.clone()).await;
    assert_eq!(admitted_until_refused(&gw).await, 3);
    assert_eq!(
        redis.get_int("tg:{acme}:m:requests:2099-01-31").await,
        3,
        "period started on Jan 31"
    );
    clock.set("2099-02-28T00:00:00Z");
    assert_eq!(
        admitted_until_refused(&gw).await,
        3,
        "Feb 28 starts the next period"
    );
    assert_eq!(redis.get_int("tg:{acme}:m:requests:2099-02-28").await, 3);
    clock.set("2099-03-30T23:59:59Z");
    assert_eq!(
        admitted_until_refused(&gw).await,
        0,
        "still the period that began Feb 28"
    );
    clock.set("2099-03-31T00:00:00Z");
    assert_eq!(
        admitted_until_refused(&gw).await,
        3,
        "the anchor is 31 again in March, not 28"
    );
    assert_eq!(redis.get_int("tg:{acme}:m:requests:2099-03-31").await, 3);
}
