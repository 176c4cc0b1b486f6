//! Anonymous → identified merge (SPEC §6, `onboarding.anonymous_id_header`): a visitor tries
//! the API anonymously with an analytics SDK's anonymous id, then signs up; the first call that
//! carries both the id and a credential links them with one `dev.tollgate.identify` event,
//! across two gateways sharing one Redis, and every usage event of those calls carries both.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::events::{stream_events, wait_for};
use crate::common::jwt::hs256;
use crate::common::{render, Gateway, RedisServer, Upstream, ACME_KEY};

const HS_SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";
const STREAM: &str = "tollgate:events";

/// Anonymous visitors on `trial`; `acme` by API key; `globex` users by an HS256 JWT naming the
/// user in `sub`. Both instances emit to one stream.
const YAML: &str = r#"
server:
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
tenants:
  acme:
    plan: free
    keys: [{ id: acme-1, sha256: "{acme_sha}" }]
auth:
  anonymous:
    plan: trial
    secret: "a-test-secret-of-enough-length"
  jwt:
    - issuer: "https://hs.example.test/"
      audience: "api.example.test"
      algorithms: ["HS256"]
      secret: "an-hs256-secret-of-at-least-32-bytes!"
      tenant_claim: org
      user_claim: sub
      default_plan: free
plans:
  trial:
    meters:
      requests: { limit: 100, period: day }
  free:
    meters:
      requests: { limit: 1000, period: month }
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
onboarding: {onboarding}
"#;

fn token(org: &str, sub: &str) -> String {
    let now = jiff::Timestamp::now().as_second();
    hs256(
        HS_SECRET.as_bytes(),
        &json!({"alg": "HS256", "typ": "JWT"}),
        &json!({"iss": "https://hs.example.test/", "aud": "api.example.test",
                "exp": now + 600, "org": org, "sub": sub}),
    )
}

/// `GET /v1/items` with `headers`.
async fn call(client: &reqwest::Client, url: &str, headers: &[(&str, String)]) -> u16 {
    let mut req = client.get(url);
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    req.send().await.unwrap().status().as_u16()
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

/// Usage events by (tenant, anonymous_id).
fn usage_by_ids(events: &[Value]) -> BTreeMap<(String, Option<String>), usize> {
    let mut by = BTreeMap::new();
    for e in of_type(events, "dev.tollgate.request") {
        let tenant = e["data"]["tenant"].as_str().unwrap().to_string();
        let tenant = if tenant.starts_with("anon-") {
            "anon-*".to_string()
        } else {
            tenant
        };
        let anonymous_id = e["data"]["anonymous_id"].as_str().map(str::to_string);
        *by.entry((tenant, anonymous_id)).or_default() += 1;
    }
    by
}

#[tokio::test(flavor = "multi_thread")]
async fn an_anonymous_trial_then_sign_up_is_linked_by_one_identify_event_across_instances() {
    let redis = RedisServer::start().await;
    let events = RedisServer::start().await;
    let upstream = Upstream::start().await;
    let yaml = render(YAML, &redis.url(), &upstream.addr())
        .replace("{events}", &events.url())
        .replace("{onboarding}", "{}");
    let a = Gateway::start(&yaml).await;
    let b = Gateway::start(&yaml).await;
    let client = crate::common::client();
    let visitor = "0b5e8a52-4c1e-4b8f-9d0a-6f2f1c3e7a91";

    // The trial: three anonymous calls with the SDK's id.
    for gw in [&a, &b, &a] {
        let anon = [("x-anonymous-id", visitor.to_string())];
        assert_eq!(call(&client, &gw.url("/v1/items"), &anon).await, 200);
    }

    // The sign-up: 40 calls with the key and the same id, 10 at a time on each instance.
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..20 {
        let url = if worker % 2 == 0 {
            a.url("/v1/items")
        } else {
            b.url("/v1/items")
        };
        let client = client.clone();
        tasks.spawn(async move {
            let headers = [
                ("x-api-key", ACME_KEY.to_string()),
                ("x-anonymous-id", visitor.to_string()),
            ];
            let mut statuses = Vec::new();
            for _ in 0..2 {
                statuses.push(call(&client, &url, &headers).await);
            }
            statuses
        });
    }
    while let Some(statuses) = tasks.join_next().await {
        assert_eq!(statuses.unwrap(), vec![200, 200]);
    }

    // A JWT user with the same id (another tenant, a named user): one more link; a second
    // device of that user: another. Without the header, or with a malformed id, no link.
    let jwt = format!("Bearer {}", token("globex", "user-7"));
    let device2 = "second-device-id";
    for (gw, anon) in [(&a, visitor), (&b, visitor), (&b, device2), (&a, device2)] {
        let headers = [
            ("authorization", jwt.clone()),
            ("x-anonymous-id", anon.to_string()),
        ];
        assert_eq!(call(&client, &gw.url("/v1/items"), &headers).await, 200);
    }
    let key = [("x-api-key", ACME_KEY.to_string())];
    assert_eq!(call(&client, &a.url("/v1/items"), &key).await, 200);
    let bad = [
        ("x-api-key", ACME_KEY.to_string()),
        ("x-anonymous-id", "has a space".to_string()),
    ];
    assert_eq!(
        call(&client, &b.url("/v1/items"), &bad).await,
        200,
        "a bad id is ignored, not refused"
    );
    let long = [
        ("x-api-key", ACME_KEY.to_string()),
        ("x-anonymous-id", "x".repeat(129)),
    ];
    assert_eq!(call(&client, &b.url("/v1/items"), &long).await, 200);

    // 3 + 40 + 4 + 3 usage events and 3 identify events (and first_call milestones).
    wait_for("the calls' events", Duration::from_secs(10), || async {
        of_type(
            &stream_events(&events, STREAM).await,
            "dev.tollgate.request",
        )
        .len()
            >= 50
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = stream_events(&events, STREAM).await;
    let mut links: Vec<Value> = of_type(&all, "dev.tollgate.identify")
        .into_iter()
        .map(|e| {
            assert_eq!(e["specversion"], "1.0");
            assert_eq!(e["source"], "tollgate/test-gw");
            assert_eq!(e["subject"], e["data"]["tenant"]);
            e["data"].clone()
        })
        .collect();
    links.sort_by_key(|d| d.to_string());
    assert_eq!(
        links,
        vec![
            json!({"anonymous_id": visitor, "tenant": "acme", "user": null}),
            json!({"anonymous_id": visitor, "tenant": "globex", "user": "user-7"}),
            json!({"anonymous_id": device2, "tenant": "globex", "user": "user-7"}),
        ],
        "one link per (anonymous id, tenant, user), whichever instance saw it first"
    );
    assert_eq!(
        usage_by_ids(&all),
        BTreeMap::from([
            (("anon-*".into(), Some(visitor.into())), 3),
            (("acme".into(), Some(visitor.into())), 40),
            (("acme".into(), None), 3),
            (("globex".into(), Some(visitor.into())), 2),
            (("globex".into(), Some(device2.into())), 2),
        ]),
        "the trial's events carry the SDK's id; the identified calls carry both ids"
    );
    let mut conn = redis.conn().await;
    let marks: Vec<String> = redis::cmd("KEYS")
        .arg("tg:*:ms:identify:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(marks.len(), 3, "{marks:?}");
    for mark in &marks {
        let ttl: i64 = redis::cmd("TTL")
            .arg(mark)
            .query_async(&mut conn)
            .await
            .unwrap();
        let days = 86_400;
        assert!(
            (399 * days..=400 * days).contains(&ttl),
            "{mark} is kept 400 days, not {ttl} s"
        );
    }
    assert!(
        marks
            .iter()
            .all(|k| !k.contains(visitor) && !k.contains("user-7")),
        "the marks hold hashes, not the ids: {marks:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_anonymous_id_header_is_configurable() {
    let redis = RedisServer::start().await;
    let events = RedisServer::start().await;
    let upstream = Upstream::start().await;
    let yaml = render(YAML, &redis.url(), &upstream.addr())
        .replace("{events}", &events.url())
        .replace("{onboarding}", "{ anonymous_id_header: X-Visitor }");
    let gw = Gateway::start(&yaml).await;
    let client = crate::common::client();
    for header in ["x-anonymous-id", "x-visitor"] {
        let headers = [
            ("x-api-key", ACME_KEY.to_string()),
            (header, format!("id-in-{header}")),
        ];
        assert_eq!(call(&client, &gw.url("/v1/items"), &headers).await, 200);
    }
    wait_for("two usage events", Duration::from_secs(10), || async {
        of_type(
            &stream_events(&events, STREAM).await,
            "dev.tollgate.request",
        )
        .len()
            >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all = stream_events(&events, STREAM).await;
    let ids: Vec<&Value> = of_type(&all, "dev.tollgate.request")
        .into_iter()
        .map(|e| &e["data"]["anonymous_id"])
        .collect();
    assert_eq!(ids, vec![&Value::Null, &json!("id-in-x-visitor")]);
    let links: Vec<&Value> = of_type(&all, "dev.tollgate.identify")
        .into_iter()
        .map(|e| &e["data"])
        .collect();
    assert_eq!(
        links,
        vec![&json!({"anonymous_id": "id-in-x-visitor", "tenant": "acme", "user": null})]
    );
}
