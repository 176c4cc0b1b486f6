//! The `stripe-meter` plugin as a telemetry sink: real gateway, real Redis, real upstream and a
//! Stripe-like receiver that checks the request shape and fails now and then. Every (usage
//! event, meter) with units above 0 must end up stored exactly once under its identifier, with
//! the settled units, the mapped customer and the event's time; unmapped tenants and 0-unit
//! meters are skipped.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::events::{file_events, metric, metrics, wait_for};
use crate::common::stripe::{StripeReceiver, API_KEY};
use crate::common::{
    client, get, render, Gateway, RedisServer, Upstream, ACME_KEY, BETA_KEY, DELTA_KEY,
};

const YAML: &str = r#"
server:
  listen: "{listen}"
  threads: 2
admin:
  listen: "{admin}"
store:
  kind: redis
  url: "{redis}"
  timeout: 2s
upstreams:
  product:
    targets: ["{upstream}"]
tenants:
  acme:
    plan: free
    keys: [{ id: acme-1, sha256: "{acme_sha}" }]
  beta:
    plan: free
    keys: [{ id: beta-1, sha256: "{beta_sha}" }]
  cus_Delta:
    plan: free
    keys: [{ id: delta-1, sha256: "{delta_sha}" }]
plans:
  free:
    meters:
      requests: { limit: 100000, period: month }
      tokens: { limit: 100000, period: month }
routes:
  - name: units
    match: { path_prefix: /llm/header }
    upstream: product
    meter:
      requests: 1
      tokens: { from_response: "header:x-units", reserve: 10 }
plugins:
  stripe-meter:
    api_key: "{api_key}"
    api_base: "{api_base}"
    concurrency: 3
    meters:
      requests: api_requests
      tokens: llm_tokens
    {customers}
telemetry:
  spool: "{dir}/spool"
  instance: test-gw
  batch: 16
  retry_max: 300ms
  sinks:
    - kind: file
      path: "{dir}/events.jsonl"
    - kind: plugin
      plugin: stripe-meter
"#;

const ACME_CALLS: usize = 60;
const BETA_CALLS: usize = 10;

/// The receiver, Redis, the upstream and the gateway, with `customers` as the plugin's
/// customer mapping (YAML at the plugin's indentation).
struct Setup {
    receiver: StripeReceiver,
    gateway: Gateway,
    _redis: RedisServer,
    _upstream: Upstream,
}

async fn start(customers: &str) -> Setup {
    let receiver = StripeReceiver::start().await;
    let redis = RedisServer::start().await;
    let upstream = Upstream::start().await;
    let yaml = YAML
        .replace("{api_key}", API_KEY)
        .replace("{api_base}", &receiver.base())
        .replace("{customers}", customers);
    let gateway = Gateway::start(&render(&yaml, &redis.url(), &upstream.addr())).await;
    Setup {
        receiver,
        gateway,
        _redis: redis,
        _upstream: upstream,
    }
}

/// Waits until the receiver stored `n` meter events and every sink acknowledged everything.
async fn wait_stored(s: &Setup, n: usize) {
    wait_for(
        &format!("{n} meter events stored and the spool drained"),
        Duration::from_secs(30),
        || async {
            let stored = s.receiver.seen(|seen| seen.stored.len());
            let spooled = metric(&metrics(&s.gateway).await, "tollgate_events_spooled", &[]);
            stored >= n && spooled == 0.0
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn settled_usage_reaches_stripe_once_per_identifier_despite_failures() {
    let setup = start("customers: { acme: cus_Acme123 }").await;
    let (receiver, gateway) = (&setup.receiver, &setup.gateway);
    let http = client();

    // acme: tokens = i % 4, so every fourth call settles 0 tokens (skipped); beta: unmapped.
    for i in 0..ACME_CALLS {
        let path = format!("/llm/header/{}/{i}", i % 4);
        let a = get(&http, &gateway.url(&path), Some(ACME_KEY)).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    for i in 0..BETA_CALLS {
        let a = get(
            &http,
            &gateway.url(&format!("/llm/header/5/{i}")),
            Some(BETA_KEY),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.body);
    }

    let dir = gateway.config_path().parent().unwrap().to_path_buf();
    let all = ACME_CALLS + BETA_CALLS;
    wait_for(
        &format!("{all} events in the file"),
        Duration::from_secs(30),
        || async { file_events(&dir.join("events.jsonl")).len() >= all },
    )
    .await;
    let events = file_events(&dir.join("events.jsonl"));
    assert_eq!(events.len(), all);

    // What Stripe must hold: one meter event per (event, meter) with units > 0, for acme only.
    let mut want: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut zero = 0;
    for e in &events {
        if e["data"]["tenant"] != "acme" {
            continue;
        }
        let time: jiff::Timestamp = e["time"].as_str().unwrap().parse().unwrap();
        for (meter, event_name) in [("requests", "api_requests"), ("tokens", "llm_tokens")] {
            let units = e["data"]["meters"][meter].as_u64().unwrap();
            if units == 0 {
                zero += 1;
                continue;
            }
            let identifier = format!("{}-{meter}", e["id"].as_str().unwrap());
            want.insert(
                identifier.clone(),
                BTreeMap::from([
                    ("event_name".to_string(), event_name.to_string()),
                    ("identifier".to_string(), identifier),
                    (
                        "payload[stripe_customer_id]".to_string(),
                        "cus_Acme123".to_string(),
                    ),
                    ("payload[value]".to_string(), units.to_string()),
                    ("timestamp".to_string(), time.as_second().to_string()),
                ]),
            );
        }
    }
    assert_eq!(zero, ACME_CALLS / 4, "every fourth call settles 0 tokens");
    let tokens: u64 = events
        .iter()
        .filter(|e| e["data"]["tenant"] == "acme")
        .map(|e| e["data"]["meters"]["tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(tokens, (ACME_CALLS as u64 / 4) * (1 + 2 + 3));
    assert_eq!(want.len(), ACME_CALLS + ACME_CALLS * 3 / 4);

    wait_stored(&setup, want.len()).await;

    receiver.seen(|seen| {
        eprintln!("answers by status: {:?}", seen.statuses);
        assert!(seen.problems.is_empty(), "{:#?}", seen.problems);
        assert_eq!(
            seen.stored.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "exactly the (event, meter) pairs with units > 0 of mapped tenants"
        );
        for (id, fields) in &want {
            assert_eq!(&seen.stored[id], fields, "{id}");
        }
        assert_eq!(
            seen.resent_after_ok, 0,
            "an identifier Stripe accepted is never sent again"
        );
        assert_eq!(seen.statuses.get(&429), Some(&1), "{:?}", seen.statuses);
        assert!(
            seen.statuses.get(&500).is_some_and(|n| *n > 5),
            "{:?}",
            seen.statuses
        );
        assert!(
            seen.statuses.get(&400).is_some_and(|n| *n > 0),
            "redelivered identifiers met the duplicate answer: {:?}",
            seen.statuses
        );
    });

    let text = metrics(gateway).await;
    let label = |result| [("sink", "stripe-meter"), ("result", result)];
    assert_eq!(
        metric(&text, "tollgate_events_total", &label("delivered")),
        all as f64
    );
    assert!(metric(&text, "tollgate_events_total", &label("failed")) > 0.0);
    let log = gateway.stderr();
    assert!(!log.contains(API_KEY), "the API key never reaches the log");
    assert!(
        log.contains("no Stripe customer"),
        "the unmapped tenant is logged"
    );
}

/// `customer_from: tenant`: the tenant id is the Stripe customer id.
#[tokio::test(flavor = "multi_thread")]
async fn customer_from_tenant_bills_the_tenant_id() {
    let setup = start("customer_from: tenant").await;
    let http = client();
    for i in 0..5 {
        let path = format!("/llm/header/2/{i}");
        let a = get(&http, &setup.gateway.url(&path), Some(DELTA_KEY)).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    wait_stored(&setup, 10).await;
    setup.receiver.seen(|seen| {
        assert!(seen.problems.is_empty(), "{:#?}", seen.problems);
        assert_eq!(seen.stored.len(), 10);
        let mut by_name = BTreeMap::new();
        for f in seen.stored.values() {
            assert_eq!(f["payload[stripe_customer_id]"], "cus_Delta");
            *by_name.entry(f["event_name"].clone()).or_insert(0u64) +=
                f["payload[value]"].parse::<u64>().unwrap();
        }
        assert_eq!(
            by_name,
            BTreeMap::from([
                ("api_requests".to_string(), 5),
                ("llm_tokens".to_string(), 10)
            ])
        );
    });
}
