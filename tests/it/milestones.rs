//! Lifecycle milestones (SPEC §6, `onboarding:`): two gateways on one Redis, under concurrent
//! load on one tenant, fire each milestone exactly once, and exactly one response carries it;
//! the embedded store does the same in-process; `activated` with a moved clock.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::events::{stream_events, wait_for};
use crate::common::{clock, get, render, Gateway, RedisServer, Upstream, ACME_KEY};

const TOKEN: &str = "an-admin-token-for-the-tests";

/// `acme` on `tiny`: 50 requests a month, warned at 40, activated at 45. Both instances emit to
/// one stream.
pub const YAML: &str = r#"
server:
  listen: "{listen}"
  threads: 2
  grace_period: 1s
admin:
  listen: "{admin}"
  token: "an-admin-token-for-the-tests"
store:
  kind: redis
  url: "{redis}"
  timeout: 2s
upstreams:
  product:
    targets: ["{upstream}"]
tenants:
  acme:
    plan: tiny
    keys: [{ id: acme-1, sha256: "{acme_sha}" }]
plans:
  tiny:
    meters:
      requests: { limit: 50, period: month, warn_at: 0.8 }
  pro:
    meters:
      requests: { limit: 100000, period: month }
routes:
  - name: api
    match: { path_prefix: / }
    upstream: product
    meter: { requests: 1 }
telemetry:
  spool: "{dir}/spool"
  instance: test-gw
  retry_max: 300ms
  sinks:
    - kind: redis_stream
      url: "{events}"
      stream: "tollgate:events"
onboarding:
  activation: { calls: 45, within: 7d }
"#;

const STREAM: &str = "tollgate:events";

fn milestones(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["type"] == "dev.tollgate.milestone")
        .collect()
}

/// Events of `name`, with their `data`.
fn named<'a>(events: &[&'a Value], name: &str) -> Vec<&'a Value> {
    events
        .iter()
        .copied()
        .filter(|e| e["data"]["milestone"] == name)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_under_load_fire_each_milestone_once_on_one_response() {
    let redis = RedisServer::start().await;
    let events = RedisServer::start().await;
    let upstream = Upstream::start().await;
    let yaml = render(YAML, &redis.url(), &upstream.addr()).replace("{events}", &events.url());
    let a = Gateway::start(&yaml).await;
    let b = Gateway::start(&yaml).await;
    let client = crate::common::client();

    // 80 calls, 8 at a time on each instance: 50 admitted, 30 refused.
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..16 {
        let url = if worker % 2 == 0 {
            a.url("/v1/items")
        } else {
            b.url("/v1/items")
        };
        let client = client.clone();
        tasks.spawn(async move {
            let mut answers = Vec::new();
            for _ in 0..5 {
                let r = get(&client, &url, Some(ACME_KEY)).await;
                answers.push((r.status, r.header("tollgate-milestone").map(str::to_string)));
            }
            answers
        });
    }
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let mut hinted: BTreeMap<String, Vec<u16>> = BTreeMap::new();
    while let Some(answers) = tasks.join_next().await {
        for (status, hint) in answers.unwrap() {
            *statuses.entry(status).or_default() += 1;
            if let Some(h) = hint {
                hinted.entry(h).or_default().push(status);
            }
        }
    }
    assert_eq!(statuses, BTreeMap::from([(200, 50), (402, 30)]));
    assert_eq!(
        hinted,
        BTreeMap::from([
            ("\"activated\"".to_string(), vec![200]),
            ("\"first_call\"".to_string(), vec![200]),
            ("\"limit_warning\"".to_string(), vec![200]),
            ("\"limit_reached\"".to_string(), vec![402]),
        ]),
        "each milestone on exactly one response"
    );

    wait_for(
        "80 usage events and 4 milestones",
        Duration::from_secs(10),
        || async { stream_events(&events, STREAM).await.len() >= 84 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = stream_events(&events, STREAM).await;
    assert_eq!(all.len(), 84, "nothing more arrives");
    let fired = milestones(&all);
    assert_eq!(fired.len(), 4);
    let activated = named(&fired, "activated");
    assert_eq!(activated.len(), 1);
    assert_eq!(
        activated[0]["data"],
        json!({"tenant": "acme", "milestone": "activated", "plan": "tiny"})
    );
    let period = clock::month_start()[..7].to_string();
    let first = named(&fired, "first_call");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["subject"], "acme");
    assert_eq!(
        first[0]["data"],
        json!({"tenant": "acme", "milestone": "first_call", "plan": "tiny"})
    );
    let warning = named(&fired, "limit_warning");
    assert_eq!(warning.len(), 1);
    assert_eq!(
        warning[0]["data"],
        json!({"tenant": "acme", "milestone": "limit_warning", "plan": "tiny",
               "meter": "requests", "period": period, "used": 40, "limit": 50}),
        "fired by the call that reached 0.8 × 50"
    );
    let reached = named(&fired, "limit_reached");
    assert_eq!(reached.len(), 1);
    assert_eq!(
        reached[0]["data"],
        json!({"tenant": "acme", "milestone": "limit_reached", "plan": "tiny",
               "meter": "requests", "period": period, "used": 50, "limit": 50})
    );
    for e in &fired {
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["source"], "tollgate/test-gw");
    }

    // A restart forgets what the instance knew; the store still says it happened.
    let mut redis_conn = redis.conn().await;
    let marks: Vec<String> = redis::cmd("KEYS")
        .arg("tg:{acme}:ms:*")
        .query_async(&mut redis_conn)
        .await
        .unwrap();
    assert_eq!(marks.len(), 4, "{marks:?}");
    let c = Gateway::start(&yaml).await;
    let again = get(&client, &c.url("/v1/items"), Some(ACME_KEY)).await;
    assert_eq!(again.status, 402);
    assert_eq!(again.header("tollgate-milestone"), None);

    // plan_changed: once per change through the admin API, with from and to.
    let put = |plan: Value| {
        let client = client.clone();
        let url = a.admin_url("/admin/v1/tenants/acme/plan");
        async move {
            let r = client
                .put(url)
                .bearer_auth(TOKEN)
                .json(&json!({ "plan": plan }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    };
    put(json!("pro")).await;
    put(json!("pro")).await; // not a change
    put(Value::Null).await; // back to the config's plan
    wait_for(
        "two plan_changed events",
        Duration::from_secs(10),
        || async {
            named(
                &milestones(&stream_events(&events, STREAM).await),
                "plan_changed",
            )
            .len()
                >= 2
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = stream_events(&events, STREAM).await;
    let fired = milestones(&all);
    let changed: Vec<Value> = named(&fired, "plan_changed")
        .into_iter()
        .map(|e| e["data"].clone())
        .collect();
    assert_eq!(
        changed,
        vec![
            json!({"tenant": "acme", "milestone": "plan_changed", "plan": "pro", "from": "tiny", "to": "pro"}),
            json!({"tenant": "acme", "milestone": "plan_changed", "plan": "tiny", "from": "pro", "to": "tiny"}),
        ]
    );
    assert_eq!(fired.len(), 6, "nothing else fired");
}

/// `acme` on a 5-a-month plan warned at 3, with an overage meter past 3, on the embedded store,
/// events to a file.
const EMBEDDED: &str = r#"
server:
  listen: "{listen}"
  threads: 2
  grace_period: 1s
admin:
  listen: "{admin}"
store:
  kind: embedded
  path: "{dir}/usage.db"
upstreams:
  product:
    targets: ["{upstream}"]
tenants:
  acme:
    plan: free
    keys: [{ id: acme-1, sha256: "{acme_sha}" }]
plans:
  free:
    meters:
      requests: { limit: 5, period: month, warn_at: 0.6 }
      extra: { limit: 3, period: month, overage: true }
    features: [search]
  pro:
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
    meter: { requests: 1, extra: 1 }
telemetry:
  spool: "{dir}/spool"
  instance: test-gw
  sinks:
    - kind: file
      path: "{dir}/events.jsonl"
onboarding: {}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn the_embedded_store_fires_each_milestone_once_and_remembers_across_a_restart() {
    let upstream = Upstream::start().await;
    let mut gateway = Gateway::start(&render(EMBEDDED, "", &upstream.addr())).await;
    let client = crate::common::client();
    let mut hints = Vec::new();
    for _ in 0..7 {
        let r = get(&client, &gateway.url("/v1/items"), Some(ACME_KEY)).await;
        hints.push((r.status, r.header("tollgate-milestone").map(str::to_string)));
    }
    let hint = |s: &str| Some(format!("\"{s}\""));
    assert_eq!(
        hints,
        vec![
            (200, hint("first_call")),
            (200, None),
            (200, hint("limit_warning")),
            (200, hint("overage_started")),
            (200, None),
            (402, hint("limit_reached")),
            (402, None),
        ]
    );

    // A feature the plan lacks: the first 402 for it fires `feature_denied`, the next does not.
    let mut denied = Vec::new();
    for _ in 0..2 {
        let r = get(&client, &gateway.url("/v1/export"), Some(ACME_KEY)).await;
        denied.push((r.status, r.header("tollgate-milestone").map(str::to_string)));
    }
    assert_eq!(denied, [(402, hint("feature_denied")), (402, None)]);

    gateway.stop().await;
    gateway.start_again().await;
    let r = get(&client, &gateway.url("/v1/items"), Some(ACME_KEY)).await;
    assert_eq!((r.status, r.header("tollgate-milestone")), (402, None));

    let path = gateway.config_path().parent().unwrap().join("events.jsonl");
    wait_for(
        "10 usage events and 5 milestones",
        Duration::from_secs(10),
        || {
            let path = path.clone();
            async move { crate::common::events::file_events(&path).len() >= 15 }
        },
    )
    .await;
    let all = crate::common::events::file_events(&path);
    let names: Vec<&str> = milestones(&all)
        .iter()
        .map(|e| e["data"]["milestone"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "first_call",
            "limit_warning",
            "overage_started",
            "limit_reached",
            "feature_denied",
        ]
    );
    let period = clock::month_start()[..7].to_string();
    assert_eq!(
        milestones(&all)[4]["data"],
        json!({"tenant": "acme", "milestone": "feature_denied", "plan": "free",
               "feature": "export", "period": period})
    );
    let overage = all
        .iter()
        .find(|e| e["data"]["milestone"] == "overage_started")
        .unwrap();
    assert_eq!(overage["data"]["meter"], "extra");
    assert_eq!(overage["data"]["used"], 4);
    assert_eq!(overage["data"]["limit"], 3);
}

/// `activated` with a moved clock, through the library's request path against real Redis (only
/// the library lets a test inject the clock). Times are set in 2098: marks and counters expire
/// at real wall-clock times.
mod activated {
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::{Arc, Mutex};

    use http::{HeaderMap, HeaderValue, Method};
    use jiff::Timestamp;
    use tollgate::meter::period::Clock;
    use tollgate::pipeline::milestone::Kind;
    use tollgate::pipeline::{Admission, Gateway};
    use tollgate::store::StoreHandle;
    use tollgate::telemetry::metrics::Metrics;

    use crate::common::{RedisServer, ACME_KEY, ACME_SHA};

    struct MovedClock(Mutex<Timestamp>);

    impl Clock for MovedClock {
        fn now(&self) -> Timestamp {
            *self.0.lock().unwrap()
        }
    }

    /// A gateway with its own memory on `redis`: 3 calls within 1h of the first activate.
    fn gateway(redis: &RedisServer, clock: Arc<MovedClock>) -> Gateway {
        let yaml = format!(
            "server: {{ listen: \"127.0.0.1:1\" }}\n\
             store: {{ kind: redis, url: \"{}\", timeout: 1s }}\n\
             tenants:\n  acme:\n    plan: free\n    keys: [{{ id: ci, sha256: \"{ACME_SHA}\" }}]\n\
             plans:\n  free:\n    meters:\n      requests: {{ limit: 100, period: month }}\n\
             routes:\n  - {{ name: api, match: {{ path_prefix: / }}, respond: {{ body: ok }}, meter: {{ requests: 1 }} }}\n\
             onboarding:\n  activation: {{ calls: 3, within: 1h }}\n",
            redis.url()
        );
        let config = tollgate::config::load_str("activated.yaml", &yaml, &|_| None).unwrap();
        let metrics = Arc::new(Metrics::unregistered().unwrap());
        let store = StoreHandle::open(&config.store, &metrics).unwrap();
        Gateway::new(&config, store, clock, metrics)
    }

    /// One call at `at`; the milestones it fired.
    async fn call(gw: &Gateway, clock: &MovedClock, at: &str) -> Vec<Kind> {
        *clock.0.lock().unwrap() = at.parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", HeaderValue::from_static(ACME_KEY));
        let peer = IpAddr::V4(Ipv4Addr::LOCALHOST);
        match gw.admit(&Method::GET, None, "/v1/x", &headers, peer).await {
            Ok(Admission::Admitted(a)) => a.milestones.iter().map(|m| m.kind).collect(),
            _ => panic!("the call should be admitted"),
        }
    }

    /// Two instances on one Redis, after the tenant's first call (on `a`, at 10:00).
    async fn first_call_on_a() -> (RedisServer, Arc<MovedClock>, Gateway, Gateway) {
        let redis = RedisServer::start().await;
        let clock = Arc::new(MovedClock(Mutex::new(Timestamp::UNIX_EPOCH)));
        let (a, b) = (
            gateway(&redis, clock.clone()),
            gateway(&redis, clock.clone()),
        );
        assert_eq!(
            call(&a, &clock, "2098-03-01T10:00:00Z").await,
            [Kind::FirstCall]
        );
        (redis, clock, a, b)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn inside_the_window_it_fires_once_at_the_nth_call_across_instances() {
        let (_redis, clock, a, b) = first_call_on_a().await;
        // b has never seen the tenant: its count still continues a's.
        assert!(call(&b, &clock, "2098-03-01T10:10:00Z").await.is_empty());
        assert_eq!(
            call(&b, &clock, "2098-03-01T10:59:00Z").await,
            [Kind::Activated]
        );
        assert!(call(&a, &clock, "2098-03-01T10:59:30Z").await.is_empty());
        assert!(call(&b, &clock, "2098-03-01T11:30:00Z").await.is_empty());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn outside_the_window_it_never_fires() {
        let (redis, clock, a, b) = first_call_on_a().await;
        assert!(call(&a, &clock, "2098-03-01T10:30:00Z").await.is_empty());
        // The third call comes a second after the hour: on the instance that knows the first
        // call's time, and on one that does not (it counts, but the window is checked).
        for at in ["2098-03-01T11:00:01Z", "2098-03-01T11:05:00Z"] {
            assert!(call(&a, &clock, at).await.is_empty(), "{at}");
            assert!(call(&b, &clock, at).await.is_empty(), "{at}");
        }
        let mut conn = redis.conn().await;
        let activated: Option<String> = redis::cmd("GET")
            .arg("tg:{acme}:ms:activated")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(activated, None);
    }
}
