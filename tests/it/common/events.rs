//! Reading usage events back from the sinks, and checking their CloudEvents shape.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Gateway, RedisServer};

/// Every event in a JSON-lines file (none when the file does not exist yet).
pub fn file_events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// Every event in a Redis stream (field `event` of each entry).
pub async fn stream_events(redis: &RedisServer, stream: &str) -> Vec<Value> {
    let mut conn = redis.conn().await;
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    entries
        .into_iter()
        .map(|(_, fields)| {
            assert_eq!(fields.len(), 1, "one field per entry: {fields:?}");
            assert_eq!(fields[0].0, "event");
            serde_json::from_str(&fields[0].1).unwrap()
        })
        .collect()
}

/// The ids of `events`, asserting none repeats.
pub fn unique_ids(events: &[Value]) -> BTreeSet<String> {
    let ids: BTreeSet<String> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), events.len(), "event ids repeat");
    ids
}

/// The ids of `events`, repeats allowed (at-least-once sinks).
pub fn ids(events: &[Value]) -> BTreeSet<String> {
    events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

/// Polls `probe` every 50 ms until it is true; panics with `what` after `limit`.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !probe().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The gateway's `/metrics` text.
pub async fn metrics(gateway: &Gateway) -> String {
    let client = super::client();
    super::get(&client, &gateway.admin_url("/metrics"), None)
        .await
        .body
}

/// The metrics once `name{labels}` reads at least `want`, or after 5 s. A call's metrics are
/// counted in its last phase, after its answer went out, so a scrape right after the answer
/// can come first.
pub async fn metrics_once(
    gateway: &Gateway,
    name: &str,
    labels: &[(&str, &str)],
    want: f64,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = metrics(gateway).await;
        if metric(&text, name, labels) >= want || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One sample of a metric whose labels include `labels` (0 when absent).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            let matches = (rest.is_empty() || rest.starts_with('{'))
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            matches.then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// Asserts the CloudEvents 1.0 envelope and every SPEC §6 `data` field.
pub fn assert_cloudevent(e: &Value, source: &str) {
    assert_eq!(e["specversion"], "1.0", "{e}");
    assert_eq!(e["type"], "dev.tollgate.request", "{e}");
    assert_eq!(e["source"], source, "{e}");
    assert_eq!(e["datacontenttype"], "application/json", "{e}");
    let id = e["id"].as_str().unwrap();
    let uuid = uuid::Uuid::parse_str(id).unwrap_or_else(|_| panic!("id {id} is not a UUID"));
    assert_eq!(uuid.get_version_num(), 7, "id {id} is not a UUIDv7");
    let time = e["time"].as_str().unwrap();
    assert!(
        time.ends_with('Z') && time.parse::<jiff::Timestamp>().is_ok(),
        "time {time}"
    );
    let data = e["data"].as_object().unwrap();
    for key in [
        "tenant",
        "identity",
        "key_id",
        "user",
        "anonymous_id",
        "plan",
        "route",
        "method",
        "path",
        "status",
        "outcome",
        "meters",
        "period",
        "latency_ms",
    ] {
        assert!(data.contains_key(key), "data.{key} missing: {e}");
    }
    assert!(data["latency_ms"].as_f64().unwrap() >= 0.0, "{e}");
    assert!(data["meters"].is_object(), "{e}");
    match data["tenant"].as_str() {
        Some(t) => assert_eq!(e["subject"], t, "{e}"),
        None => assert!(
            e.get("subject").is_none(),
            "no subject without a tenant: {e}"
        ),
    }
}
