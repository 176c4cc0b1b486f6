//! Usage events (SPEC §6): one per identified call, spooled to disk, delivered to every sink,
//! none lost while a sink is down or the gateway is killed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::events::{
    assert_cloudevent, file_events, ids, metric, metrics, stream_events, unique_ids, wait_for,
};
use crate::common::nats::NatsServer;
use crate::common::receiver::Receiver;
use crate::common::tls::TestCa;
use crate::common::{
    clock, get, render, Gateway, RedisServer, Upstream, ACME_KEY, BETA_KEY, GAMMA_KEY,
};

/// `acme` (plan `free`): plenty of requests. `beta` (plan `tiny`): 5 requests a month, then 402.
/// `gamma` (plan `bursty`): one call, then 429. Calls without a key: 401.
/// `{sinks}` is filled in per test; the spool lives in the gateway's directory.
/// `{base}` is [`BASE`].
const YAML: &str = r#"
{base}tenants:
  acme:
    plan: free
    keys: [{ id: acme-1, sha256: "{acme_sha}" }]
  beta:
    plan: tiny
    keys: [{ id: beta-1, sha256: "{beta_sha}" }]
  gamma:
    plan: bursty
    keys: [{ id: gamma-1, sha256: "{gamma_sha}" }]
plans:
  free:
    meters:
      requests: { limit: 100000, period: month }
  tiny:
    meters:
      requests: { limit: 5, period: month }
  bursty:
    rate_limit: { requests: 1, per: 1h, burst: 1 }
    meters:
      requests: { limit: 100000, period: day }
routes:
  - name: health
    match: { path: /health }
    upstream: product
    auth: none
  - name: api
    match: { path_prefix: / }
    upstream: product
    meter: { requests: 1 }
telemetry:
  spool: "{dir}/spool"
  instance: test-gw
  retry_max: 300ms
  sinks:
{sinks}
"#;

const SOURCE: &str = "tollgate/test-gw";

/// The listeners, the store and the upstream of every config here.
const BASE: &str = r#"server:
  listen: "{listen}"
  threads: 2
  grace_period: 1s
admin:
  listen: "{admin}"
store:
  kind: redis
  url: "{redis}"
  timeout: 2s
upstreams:
  product:
    targets: ["{upstream}"]
"#;

/// A file sink in the gateway's directory and a Redis stream sink on `{events}`.
const FILE_AND_STREAM: &str = r#"
    - kind: file
      path: "{dir}/events.jsonl"
    - kind: redis_stream
      url: "{events}"
      stream: "tollgate:events"
      max_len: 100000
"#;

struct Telemetry {
    gateway: Gateway,
    _upstream: Upstream,
    redis: RedisServer,
    /// The Redis the `redis_stream` sink writes to (separate, so it can go down alone).
    events: RedisServer,
}

impl Telemetry {
    async fn start(sinks: &str) -> Telemetry {
        Telemetry::start_with(sinks, &[]).await
    }

    async fn start_with(sinks: &str, fill: &[(&str, &str)]) -> Telemetry {
        let redis = RedisServer::start().await;
        let events = RedisServer::start().await;
        let upstream = Upstream::start().await;
        let mut yaml = YAML
            .replace("{base}", BASE)
            .replace("{sinks}", sinks.trim_matches('\n'));
        yaml = yaml.replace("{events}", &events.url());
        for (k, v) in fill {
            yaml = yaml.replace(k, v);
        }
        let gateway = Gateway::start(&render(&yaml, &redis.url(), &upstream.addr())).await;
        Telemetry {
            gateway,
            _upstream: upstream,
            redis,
            events,
        }
    }

    fn dir(&self) -> std::path::PathBuf {
        self.gateway.config_path().parent().unwrap().to_path_buf()
    }

    fn file_events(&self) -> Vec<Value> {
        file_events(&self.dir().join("events.jsonl"))
    }

    async fn wait_for_file(&self, n: usize) {
        wait_for(
            &format!("{n} events in the file"),
            Duration::from_secs(30),
            || async { self.file_events().len() >= n },
        )
        .await;
    }

    /// Waits until `tollgate_events_spooled` reads `n` (0: every sink has acknowledged all).
    async fn wait_for_spooled(&self, n: f64) {
        wait_for(
            &format!("{n} events spooled"),
            Duration::from_secs(10),
            || async {
                metric(
                    &metrics(&self.gateway).await,
                    "tollgate_events_spooled",
                    &[],
                ) == n
            },
        )
        .await;
    }

    async fn wait_for_stream(&self, n: usize) {
        wait_for(
            &format!("{n} events in the stream"),
            Duration::from_secs(30),
            || async { stream_events(&self.events, "tollgate:events").await.len() >= n },
        )
        .await;
    }
}

/// `calls` of (key, path), `parallel` at a time; returns the statuses in order.
async fn call_all(
    gateway: &Gateway,
    calls: Vec<(Option<&'static str>, String)>,
    parallel: usize,
) -> Called {
    let client = crate::common::client();
    let base = gateway.base();
    let calls = Arc::new(calls);
    let mut tasks = Vec::new();
    for worker in 0..parallel {
        let (client, base, calls) = (client.clone(), base.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in (worker..calls.len()).step_by(parallel) {
                let (key, path) = &calls[i];
                let started = std::time::Instant::now();
                let status = get(&client, &format!("{base}{path}"), *key).await.status;
                out.push((i, status, started.elapsed()));
            }
            out
        }));
    }
    let mut called = Called {
        statuses: vec![0; calls.len()],
        slowest: Duration::ZERO,
    };
    for t in tasks {
        for (i, status, took) in t.await.unwrap() {
            called.statuses[i] = status;
            called.slowest = called.slowest.max(took);
        }
    }
    called
}

/// What [`call_all`] saw.
struct Called {
    /// Every call's status, in call order.
    statuses: Vec<u16>,
    /// The longest any call took.
    slowest: Duration,
}

/// 700 allowed calls by acme, 100 by beta (5 allowed, then 402), 100 by gamma (1 allowed, then
/// 429), 100 without a key (401), interleaved.
fn mixed_calls() -> Vec<(Option<&'static str>, String)> {
    (0..1000)
        .map(|i| match i % 10 {
            0 => (Some(BETA_KEY), format!("/v1/beta/{i}")),
            1 => (Some(GAMMA_KEY), format!("/v1/gamma/{i}")),
            2 => (None, format!("/v1/anon/{i}")),
            _ => (Some(ACME_KEY), format!("/v1/acme/{i}")),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_call_is_one_cloudevent_in_each_sink() {
    let receiver = Receiver::start(0).await;
    let nats = NatsServer::start().await;
    let all_four = format!(
        "{FILE_AND_STREAM}{}",
        r#"
    - kind: http
      url: "{ingest}"
    - kind: nats
      url: "{nats}"
      subject: "tollgate.events"
      stream: "TOLLGATE_EVENTS"
"#
    );
    let fill = [("{ingest}", receiver.url()), ("{nats}", nats.url())];
    let fill: Vec<(&str, &str)> = fill.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let t = Telemetry::start_with(&all_four, &fill).await;
    // A public route identifies nobody: no event.
    assert_eq!(
        get(&crate::common::client(), &t.gateway.url("/health"), None)
            .await
            .status,
        200
    );

    let statuses = call_all(&t.gateway, mixed_calls(), 8).await.statuses;

    let mut by_status = BTreeMap::new();
    for s in &statuses {
        *by_status.entry(*s).or_insert(0) += 1;
    }
    assert_eq!(
        by_status,
        BTreeMap::from([(200, 706), (401, 100), (402, 95), (429, 99)])
    );
    t.wait_for_file(1000).await;
    t.wait_for_stream(1000).await;
    let from_file = t.file_events();
    let from_stream = stream_events(&t.events, "tollgate:events").await;
    assert_eq!(from_file.len(), 1000);
    assert_eq!(from_stream.len(), 1000);
    assert_eq!(
        from_file, from_stream,
        "both sinks carry the same events in spool order"
    );
    unique_ids(&from_file);
    t.wait_for_spooled(0.0).await;
    let posted: Vec<Value> =
        receiver.seen(|seen| seen.batches.iter().flat_map(|(_, b)| b.clone()).collect());
    assert_eq!(
        posted, from_file,
        "the HTTP receiver got the same events, once each"
    );
    let info = nats.api("STREAM.INFO.TOLLGATE_EVENTS", json!({})).await;
    assert_eq!(info["state"]["messages"], 1000, "{info}");

    let mut outcomes: BTreeMap<(String, String, u64), usize> = BTreeMap::new();
    for e in &from_file {
        assert_cloudevent(e, SOURCE);
        let d = &e["data"];
        let tenant = d["tenant"].as_str().unwrap_or("-").to_string();
        let outcome = d["outcome"].as_str().unwrap().to_string();
        *outcomes
            .entry((
                tenant.clone(),
                outcome.clone(),
                d["status"].as_u64().unwrap(),
            ))
            .or_default() += 1;
        assert_eq!(d["route"], "api");
        assert_eq!(d["method"], "GET");
        assert!(d["path"].as_str().unwrap().starts_with("/v1/"));
        let period = if tenant == "gamma" {
            clock::day_start()
        } else {
            clock::month_start()[..7].to_string()
        };
        assert_eq!(d["period"], period.as_str(), "{e}");
        match outcome.as_str() {
            "allowed" => {
                assert_eq!(d["meters"], serde_json::json!({"requests": 1}), "{e}");
                assert_eq!(d["identity"], "api_key");
                assert_eq!(d["key_id"], format!("{tenant}-1"));
                assert_eq!(
                    d["plan"],
                    match tenant.as_str() {
                        "acme" => "free",
                        "beta" => "tiny",
                        _ => "bursty",
                    }
                );
            }
            "unauthenticated" => {
                assert_eq!(d["identity"], Value::Null, "{e}");
                assert_eq!(d["plan"], Value::Null, "{e}");
                assert_eq!(d["meters"], serde_json::json!({}), "{e}");
            }
            _ => assert_eq!(
                d["meters"],
                serde_json::json!({}),
                "a refused call settles nothing: {e}"
            ),
        }
    }
    let expected: BTreeMap<(String, String, u64), usize> = [
        (("acme", "allowed", 200), 700),
        (("beta", "allowed", 200), 5),
        (("beta", "quota_exceeded", 402), 95),
        (("gamma", "allowed", 200), 1),
        (("gamma", "rate_limited", 429), 99),
        (("-", "unauthenticated", 401), 100),
    ]
    .into_iter()
    .map(|((t, o, s), n)| ((t.to_string(), o.to_string(), s), n))
    .collect();
    assert_eq!(outcomes, expected);

    wait_for(
        "both sinks acknowledged",
        Duration::from_secs(10),
        || async { metric(&metrics(&t.gateway).await, "tollgate_events_spooled", &[]) == 0.0 },
    )
    .await;
    let text = metrics(&t.gateway).await;
    assert_eq!(
        metric(
            &text,
            "tollgate_events_total",
            &[("sink", "file"), ("result", "delivered")]
        ),
        1000.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "tollgate_events_total",
            &[("sink", "redis_stream"), ("result", "delivered")]
        ),
        1000.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "tollgate_events_dropped_total", &[]),
        0.0,
        "{text}"
    );
    let _ = &t.redis;
}

fn acme_calls(n: usize) -> Vec<(Option<&'static str>, String)> {
    (0..n)
        .map(|i| (Some(ACME_KEY), format!("/v1/items/{i}")))
        .collect()
}

/// A gateway with a file sink and an `http` sink posting to `receiver` (trusting `ca_file` when
/// given), after `calls` calls of `acme` were answered 200 and their events are in the file.
async fn through_http_sink(
    receiver: &Receiver,
    ca_file: Option<&std::path::Path>,
    calls: usize,
) -> Telemetry {
    let ca = ca_file.map_or(String::new(), |p| {
        format!("\n      ca_file: \"{}\"", p.display())
    });
    let sinks = r#"
    - kind: file
      path: "{dir}/events.jsonl"
    - kind: http
      url: "{ingest}"
      timeout: 2s{ca}
"#;
    let t = Telemetry::start_with(sinks, &[("{ingest}", &receiver.url()), ("{ca}", &ca)]).await;
    let statuses = call_all(&t.gateway, acme_calls(calls), 8).await.statuses;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    t.wait_for_file(calls).await;
    t
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sink_down_under_load_loses_nothing_and_fails_no_call() {
    let mut t = Telemetry::start(FILE_AND_STREAM).await;
    t.events.kill();

    let called = call_all(&t.gateway, acme_calls(600), 8).await;

    let statuses = &called.statuses;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    // A sanity bound, not a speed goal (that is the benchmark's): with the sink down, a call
    // still never waits for telemetry, so none takes seconds (a blocked one would wait for the
    // whole outage).
    assert!(
        called.slowest < Duration::from_secs(3),
        "slowest call: {:?}",
        called.slowest
    );
    t.wait_for_file(600).await;
    wait_for(
        "failed deliveries to the stream",
        Duration::from_secs(10),
        || async {
            let text = metrics(&t.gateway).await;
            metric(
                &text,
                "tollgate_events_total",
                &[("sink", "redis_stream"), ("result", "failed")],
            ) > 0.0
                && metric(&text, "tollgate_events_lag", &[("sink", "redis_stream")]) == 600.0
        },
    )
    .await;
    assert_eq!(
        metric(&metrics(&t.gateway).await, "tollgate_events_spooled", &[]),
        600.0
    );
    // How long the stream has been waiting keeps growing while no call comes in; the file sink
    // has every event.
    wait_for(
        "the stream's lag in seconds to pass 1",
        Duration::from_secs(10),
        || async {
            let text = metrics(&t.gateway).await;
            metric(
                &text,
                "tollgate_events_lag_seconds",
                &[("sink", "redis_stream")],
            ) >= 1.0
        },
    )
    .await;
    let text = metrics(&t.gateway).await;
    assert_eq!(
        metric(&text, "tollgate_events_lag_seconds", &[("sink", "file")]),
        0.0
    );

    t.events.restart().await;

    t.wait_for_stream(600).await;
    let from_stream = stream_events(&t.events, "tollgate:events").await;
    assert_eq!(ids(&from_stream), unique_ids(&t.file_events()));
    t.wait_for_spooled(0.0).await;
    let text = metrics(&t.gateway).await;
    assert_eq!(
        metric(
            &text,
            "tollgate_events_lag_seconds",
            &[("sink", "redis_stream")]
        ),
        0.0,
        "caught up"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_then_restart_delivers_the_spool_and_skips_a_corrupt_tail() {
    let mut t = Telemetry::start(FILE_AND_STREAM).await;
    t.events.kill();
    let statuses = call_all(&t.gateway, acme_calls(300), 8).await.statuses;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    t.wait_for_file(300).await;
    t.wait_for_spooled(300.0).await;

    t.gateway.kill();

    // The last record's payload loses a bit (its checksum fails), and a crash mid-write leaves
    // half a record header after it.
    let spooled = t.file_events();
    let lost = spooled.last().unwrap()["id"].as_str().unwrap().to_string();
    let mut segments: Vec<_> = std::fs::read_dir(t.dir().join("spool"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    let last = segments.last().unwrap();
    let mut bytes = std::fs::read(last).unwrap();
    let n = bytes.len();
    bytes[n - 2] ^= 0x01;
    bytes.extend_from_slice(&[0x40, 0, 0, 0, 0xde, 0xad]);
    std::fs::write(last, bytes).unwrap();
    t.events.restart().await;
    t.gateway.start_again().await;

    t.wait_for_stream(299).await;
    t.wait_for_spooled(0.0).await;
    let mut expected = ids(&spooled);
    expected.remove(&lost);
    assert_eq!(
        ids(&stream_events(&t.events, "tollgate:events").await),
        expected
    );
    let text = metrics(&t.gateway).await;
    assert_eq!(
        metric(&text, "tollgate_events_corrupt_total", &[]),
        2.0,
        "{text}"
    );
    assert!(
        t.gateway.stderr().contains("failed its checksum"),
        "the corruption is logged"
    );
}

/// `sync_interval` bounds what a power cut can lose, not a crash of the process: events written
/// to the spool but not yet fsynced (so no sink has them) are in the page cache, and after a
/// `kill -9` the next start finds every one and delivers it.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_between_write_and_fsync_loses_nothing_written() {
    let sinks = r#"
    - kind: file
      path: "{dir}/events.jsonl"
"#;
    // Written every 20 ms, fsynced (and so delivered) only after a minute: never, in this test.
    let mut t = Telemetry::start_with(
        sinks,
        &[(
            "  retry_max: 300ms\n",
            "  retry_max: 300ms\n  flush_interval: 20ms\n  sync_interval: 60s\n",
        )],
    )
    .await;
    let statuses = call_all(&t.gateway, acme_calls(50), 4).await.statuses;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let spool = t.dir().join("spool");
    let written = || {
        let mut n = 0;
        for entry in std::fs::read_dir(&spool).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "seg") {
                let bytes = std::fs::read(&path).unwrap();
                n += bytes
                    .windows(b"\"specversion\"".len())
                    .filter(|w| *w == b"\"specversion\"")
                    .count();
            }
        }
        n
    };
    wait_for(
        "50 events written to the spool",
        Duration::from_secs(10),
        || async { written() == 50 },
    )
    .await;
    assert!(
        t.file_events().is_empty(),
        "no sink sees an event before its fsync"
    );
    assert_eq!(
        metric(&metrics(&t.gateway).await, "tollgate_events_spooled", &[]),
        0.0,
        "nothing counts as spooled before its fsync"
    );

    t.gateway.kill();
    t.gateway.start_again().await;

    t.wait_for_file(50).await;
    let delivered = t.file_events();
    assert_eq!(delivered.len(), 50, "each written event once");
    assert_eq!(unique_ids(&delivered).len(), 50);
    let paths: std::collections::BTreeSet<String> = delivered
        .iter()
        .map(|e| e["data"]["path"].as_str().unwrap().to_string())
        .collect();
    let expected: std::collections::BTreeSet<String> =
        (0..50).map(|i| format!("/v1/items/{i}")).collect();
    assert_eq!(paths, expected, "the calls made before the kill");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_http_receiver_sees_every_event_at_least_once_with_stable_ids() {
    let receiver = Receiver::start(3).await;
    let t = through_http_sink(&receiver, None, 300).await;
    t.wait_for_spooled(0.0).await;
    let spooled = t.file_events();
    receiver.seen(|seen| {
        assert!(seen
            .content_types
            .iter()
            .all(|c| c == "application/cloudevents-batch+json"));
        let mut copies: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
        for (_, batch) in &seen.batches {
            for e in batch {
                copies
                    .entry(e["id"].as_str().unwrap().to_string())
                    .or_default()
                    .push(e);
            }
        }
        assert_eq!(
            copies
                .keys()
                .cloned()
                .collect::<std::collections::BTreeSet<_>>(),
            unique_ids(&spooled)
        );
        let repeated = copies.values().filter(|c| c.len() > 1).count();
        assert!(
            repeated > 0,
            "the 503-answered batches were delivered again"
        );
        for (id, c) in &copies {
            assert!(c.iter().all(|e| e == &c[0]), "redelivered {id} changed");
        }
        let accepted: usize = seen
            .batches
            .iter()
            .filter(|(s, _)| *s == 202)
            .map(|(_, b)| b.len())
            .sum();
        assert_eq!(accepted, 300, "each event acknowledged once");
    });
    let text = metrics(&t.gateway).await;
    assert!(
        metric(
            &text,
            "tollgate_events_total",
            &[("sink", "http"), ("result", "failed")]
        ) > 0.0
    );
}

/// An `https://` ingest behind a private CA: trusted through the sink's `ca_file`, every event
/// arrives over TLS (the first batch answered 503 arrives again), and none is left in the spool.
#[tokio::test(flavor = "multi_thread")]
async fn the_http_sink_delivers_over_https_trusting_its_ca_file() {
    let ca = TestCa::new();
    let receiver = Receiver::start_tls(1, ca.server.clone()).await;
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write_ca(ca_dir.path());
    assert!(receiver.url().starts_with("https://127.0.0.1:"));

    let t = through_http_sink(&receiver, Some(&ca_file), 200).await;

    t.wait_for_spooled(0.0).await;
    let spooled = t.file_events();
    receiver.seen(|seen| {
        assert_eq!(seen.batches[0].0, 503, "the first batch is refused once");
        let accepted: Vec<&Value> = seen
            .batches
            .iter()
            .filter(|(s, _)| *s == 202)
            .flat_map(|(_, b)| b)
            .collect();
        assert_eq!(accepted.len(), 200, "each event acknowledged once");
        let accepted: Vec<Value> = accepted.into_iter().cloned().collect();
        assert_eq!(unique_ids(&accepted), unique_ids(&spooled));
    });
}

/// A `redis_stream` sink on `rediss://`, trusting the Redis's private CA through `ca_file`:
/// every event reaches the stream over TLS. The same sink without the CA gets no connection,
/// and its error names the certificate.
#[tokio::test(flavor = "multi_thread")]
async fn the_stream_sink_appends_over_rediss_trusting_its_ca_file() {
    use tollgate::telemetry::sinks::redis_stream::RedisStreamSink;
    use tollgate::telemetry::sinks::Sink;

    let ca = TestCa::new();
    let tls_redis = RedisServer::start_tls(&ca).await;
    let ca_file = ca.write_ca(tls_redis.dir()).display().to_string();
    let sinks = r#"
    - kind: redis_stream
      url: "{rediss}"
      ca_file: "{ca}"
      stream: "tollgate:events"
"#;
    let fill = [("{rediss}", tls_redis.tls_url()), ("{ca}", ca_file)];
    let fill: Vec<(&str, &str)> = fill.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let t = Telemetry::start_with(sinks, &fill).await;

    let statuses = call_all(&t.gateway, acme_calls(100), 8).await.statuses;

    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    wait_for(
        "100 events in the stream of the TLS Redis",
        Duration::from_secs(30),
        || async { stream_events(&tls_redis, "tollgate:events").await.len() >= 100 },
    )
    .await;
    t.wait_for_spooled(0.0).await;
    let events = stream_events(&tls_redis, "tollgate:events").await;
    assert_eq!(unique_ids(&events).len(), 100);

    let mut untrusted =
        RedisStreamSink::new(&tls_redis.tls_url(), &[], "tg:untrusted", 1000, &[]).unwrap();
    let refused = untrusted
        .deliver(&[bytes::Bytes::from_static(b"{}")])
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("invalid peer certificate"), "{refused}");
}

/// The same receiver without `ca_file`: its certificate is not trusted, so nothing is sent to it,
/// every event stays in the spool, and the failure says why.
#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_https_receiver_gets_nothing_and_the_spool_keeps_every_event() {
    let ca = TestCa::new();
    let receiver = Receiver::start_tls(0, ca.server.clone()).await;

    let t = through_http_sink(&receiver, None, 50).await;

    wait_for(
        "a failed delivery to the untrusted receiver",
        Duration::from_secs(10),
        || async {
            metric(
                &metrics(&t.gateway).await,
                "tollgate_events_total",
                &[("sink", "http"), ("result", "failed")],
            ) > 0.0
        },
    )
    .await;
    receiver.seen(|seen| assert!(seen.batches.is_empty(), "no request got through"));
    let text = metrics(&t.gateway).await;
    assert_eq!(metric(&text, "tollgate_events_spooled", &[]), 50.0);
    let log = t.gateway.stderr();
    assert!(
        log.contains("invalid peer certificate"),
        "the log says the certificate is not trusted:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_writes_queued_events_to_the_spool() {
    let mut t = Telemetry::start(FILE_AND_STREAM).await;
    t.events.kill();
    let statuses = call_all(&t.gateway, acme_calls(200), 8).await.statuses;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    t.gateway.stop().await;
    t.events.restart().await;
    t.gateway.start_again().await;

    t.wait_for_stream(200).await;
    t.wait_for_spooled(0.0).await;
    assert_eq!(
        ids(&stream_events(&t.events, "tollgate:events").await),
        ids(&t.file_events())
    );
    assert_eq!(ids(&t.file_events()).len(), 200);
    let log = t.gateway.stderr();
    assert!(
        log.contains("writing queued usage events")
            || log.contains("every queued event is in the spool"),
        "the writer says it flushed on SIGTERM:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn jetstream_keeps_one_message_per_event_even_when_redelivered() {
    let nats = NatsServer::start().await;
    // The stream sink stays down, so the spool keeps every segment and the NATS sink can be
    // sent back to the start.
    let sinks = r#"
    - kind: file
      path: "{dir}/events.jsonl"
    - kind: nats
      url: "{nats}"
      subject: "tollgate.events"
      stream: "TOLLGATE_EVENTS"
    - kind: redis_stream
      url: "{events}"
"#;
    let mut t = Telemetry::start_with(sinks, &[("{nats}", &nats.url())]).await;
    t.events.kill();
    let statuses = call_all(&t.gateway, acme_calls(300), 8).await.statuses;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    t.wait_for_file(300).await;
    let messages = || async {
        let info = nats.api("STREAM.INFO.TOLLGATE_EVENTS", json!({})).await;
        info["state"]["messages"].as_u64().unwrap_or(0)
    };
    wait_for(
        "300 messages in the stream",
        Duration::from_secs(20),
        || async { messages().await == 300 },
    )
    .await;
    let spooled = t.file_events();
    let first = nats
        .api("STREAM.MSG.GET.TOLLGATE_EVENTS", json!({"seq": 1}))
        .await;
    let headers = String::from_utf8(NatsServer::base64(
        first["message"]["hdrs"].as_str().unwrap(),
    ))
    .unwrap();
    let body: Value = serde_json::from_slice(&NatsServer::base64(
        first["message"]["data"].as_str().unwrap(),
    ))
    .unwrap();
    assert_eq!(body, spooled[0]);
    assert!(
        headers.contains(&format!(
            "Nats-Msg-Id: {}",
            spooled[0]["id"].as_str().unwrap()
        )),
        "{headers}"
    );

    // Forget the NATS sink's position: after a restart it delivers all 300 again.
    t.gateway.stop().await;
    std::fs::remove_file(t.dir().join("spool/nats.ack")).unwrap();
    t.gateway.start_again().await;
    wait_for("the redelivery", Duration::from_secs(20), || async {
        metric(
            &metrics(&t.gateway).await,
            "tollgate_events_total",
            &[("sink", "nats"), ("result", "delivered")],
        ) >= 300.0
    })
    .await;

    assert_eq!(
        messages().await,
        300,
        "JetStream dropped the duplicates by Nats-Msg-Id"
    );
}

/// `acme` (plan `free`, no `export` feature), `beta` (plan `pro`: 2 requests, then overage),
/// callers without a key are anonymous (plan `anon`). `/status/503` makes the upstream fail.
/// `{base}` is [`BASE`].
const OUTCOMES: &str = r#"
{base}tenants:
  acme:
    plan: free
    keys: [{ id: acme-1, sha256: "{acme_sha}" }]
  beta:
    plan: pro
    keys: [{ id: beta-1, sha256: "{beta_sha}" }]
auth:
  anonymous:
    plan: anon
    secret: "a-long-enough-test-secret"
plans:
  anon:
    meters:
      requests: { limit: 100, period: day }
  free:
    meters:
      requests: { limit: 100, period: month }
    features: [search]
  pro:
    meters:
      requests: { limit: 2, period: month, overage: true }
    features: [search, export]
routes:
  - name: export
    match: { path_prefix: /v1/export }
    upstream: product
    feature: export
    meter: { requests: 1 }
  - name: api
    match: { path_prefix: / }
    upstream: product
    meter: { requests: 1 }
telemetry:
  spool: "{dir}/spool"
  instance: test-gw
  sinks:
    - kind: file
      path: "{dir}/events.jsonl"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn events_say_overage_feature_denied_upstream_error_and_anonymous() {
    let redis = RedisServer::start().await;
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&render(
        &OUTCOMES.replace("{base}", BASE),
        &redis.url(),
        &upstream.addr(),
    ))
    .await;
    let client = crate::common::client();
    let calls: [(Option<&str>, &str, u16); 7] = [
        (Some(ACME_KEY), "/v1/items", 200),
        (Some(ACME_KEY), "/status/503", 503),
        (Some(ACME_KEY), "/v1/export/all", 402),
        (Some(BETA_KEY), "/v1/items", 200),
        (Some(BETA_KEY), "/v1/items", 200),
        (Some(BETA_KEY), "/v1/items", 200),
        (None, "/v1/items", 200),
    ];
    for (key, path, status) in calls {
        assert_eq!(
            get(&client, &gateway.url(path), key).await.status,
            status,
            "{path}"
        );
    }
    let file = gateway.config_path().parent().unwrap().join("events.jsonl");
    wait_for("7 events", Duration::from_secs(10), || async {
        file_events(&file).len() >= 7
    })
    .await;

    let events = file_events(&file);
    let summary: Vec<(String, String, u64, Value)> = events
        .iter()
        .map(|e| {
            assert_cloudevent(e, SOURCE);
            let d = &e["data"];
            (
                d["tenant"].as_str().unwrap()[..4].to_string(),
                d["outcome"].as_str().unwrap().to_string(),
                d["status"].as_u64().unwrap(),
                d["meters"].clone(),
            )
        })
        .collect();
    let one = json!({"requests": 1});
    let expected = vec![
        ("acme".into(), "allowed".into(), 200, one.clone()),
        (
            "acme".into(),
            "upstream_error".into(),
            503,
            json!({"requests": 0}),
        ),
        ("acme".into(), "feature_denied".into(), 402, json!({})),
        ("beta".into(), "allowed".into(), 200, one.clone()),
        ("beta".into(), "allowed".into(), 200, one.clone()),
        ("beta".into(), "overage".into(), 200, one.clone()),
        ("anon".into(), "allowed".into(), 200, one),
    ];
    assert_eq!(summary, expected);
    let anonymous = &events[6];
    let tenant = anonymous["data"]["tenant"].as_str().unwrap();
    assert_eq!(anonymous["data"]["identity"], "anonymous");
    assert_eq!(anonymous["data"]["anonymous_id"], tenant);
    assert_eq!(anonymous["data"]["key_id"], Value::Null);
    assert_eq!(anonymous["subject"], tenant);
    assert_eq!(anonymous["data"]["period"], clock::day_start().as_str());
    assert_eq!(events[2]["data"]["route"], "export");
}

/// The `redis_stream` sink speaks RESP itself: over TCP it authenticates (an ACL user, or the
/// default user's password) and selects the database its URL names; an error reply fails the
/// batch without leaving the connection out of step, and the batch goes through once the
/// cause is gone.
#[tokio::test]
async fn the_stream_sink_authenticates_selects_its_database_and_reports_error_replies() {
    use bytes::Bytes;
    use tollgate::telemetry::sinks::redis_stream::RedisStreamSink;
    use tollgate::telemetry::sinks::Sink;

    let dir = tempfile::tempdir().unwrap();
    let addr = crate::common::gateway::free_addr();
    let port = addr.rsplit(':').next().unwrap().to_string();
    let _server = KillOnDrop(
        std::process::Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port,
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--requirepass", "default-secret"])
            .args(["--user", "events", "on", ">events-secret", "~*", "+@all"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is not on PATH; apt-get install redis-server"),
    );
    let admin = redis::Client::open(format!("redis://:default-secret@{addr}/3")).unwrap();
    let mut conn = None;
    for _ in 0..250 {
        if let Ok(c) = admin.get_multiplexed_async_connection().await {
            conn = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut conn = conn.expect("the password-protected redis-server did not come up");
    let events = [
        Bytes::from_static(br#"{"n":1}"#),
        Bytes::from_static(br#"{"n":2,"s":"\r\n$3\r\n"}"#),
        Bytes::from_static(br#"{"n":3}"#),
    ];

    let mut acl = RedisStreamSink::new(
        &format!("redis://events:events-secret@{addr}/3"),
        &[],
        "tg:acl",
        1000,
        &[],
    )
    .unwrap();
    acl.deliver(&events).await.unwrap();
    let mut default = RedisStreamSink::new(
        &format!("redis://:default-secret@{addr}/3"),
        &[],
        "tg:default",
        1000,
        &[],
    )
    .unwrap();
    default.deliver(&events[..1]).await.unwrap();
    let want: Vec<Vec<u8>> = events.iter().map(|e| e.to_vec()).collect();
    assert_eq!(xrange(&mut conn, "tg:acl").await, want);
    assert_eq!(xrange(&mut conn, "tg:default").await, want[..1].to_vec());

    // A wrong password is refused, and the error does not carry the password.
    let mut wrong = RedisStreamSink::new(
        &format!("redis://events:not-it@{addr}/3"),
        &[],
        "tg:acl",
        1000,
        &[],
    )
    .unwrap();
    let refused = wrong.deliver(&events).await.unwrap_err().to_string();
    assert!(refused.contains("WRONGPASS"), "{refused}");
    assert!(!refused.contains("not-it"), "{refused}");

    // The stream's key holds a string: every XADD fails, the batch with them.
    let _: () = redis::cmd("SET")
        .arg("tg:acl")
        .arg("not a stream")
        .query_async(&mut conn)
        .await
        .unwrap();
    let failed = acl.deliver(&events).await.unwrap_err().to_string();
    assert!(failed.contains("WRONGTYPE"), "{failed}");
    let _: () = redis::cmd("DEL")
        .arg("tg:acl")
        .query_async(&mut conn)
        .await
        .unwrap();
    acl.deliver(&events).await.unwrap();
    assert_eq!(xrange(&mut conn, "tg:acl").await, want);

    // A batch longer than one pipelined slice (64 commands) arrives whole and in order, and
    // the connection stays in step for the next batch.
    let many: Vec<Bytes> = (0..200)
        .map(|n| Bytes::from(format!(r#"{{"n":{n}}}"#)))
        .collect();
    let mut sink = RedisStreamSink::new(
        &format!("redis://events:events-secret@{addr}/3"),
        &[],
        "tg:many",
        1000,
        &[],
    )
    .unwrap();
    sink.deliver(&many).await.unwrap();
    sink.deliver(&events).await.unwrap();
    let mut want_many: Vec<Vec<u8>> = many.iter().map(|e| e.to_vec()).collect();
    want_many.extend(want.iter().cloned());
    assert_eq!(xrange(&mut conn, "tg:many").await, want_many);
}

/// A child process killed when the test ends, also when it fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `event` field of every entry of `stream`, raw.
async fn xrange(conn: &mut redis::aio::MultiplexedConnection, stream: &str) -> Vec<Vec<u8>> {
    type Entry = (String, Vec<(String, Vec<u8>)>);
    let entries: Vec<Entry> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .unwrap();
    entries
        .into_iter()
        .map(|(_, fields)| fields[0].1.clone())
        .collect()
}
