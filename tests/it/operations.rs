//! Operating a fleet: the admin API changes plans and keys on every instance at once, and the
//! config reloads without a failed call.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::http::admin;
use crate::common::{render, Answer, Gateway, RedisServer, Upstream, ACME_KEY};

const TOKEN: &str = "an-admin-token-for-the-tests";

const YAML: &str = r#"
server:
  listen: "{listen}"
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
    plan: free
    keys:
      - id: acme-1
        sha256: "{acme_sha}"
plans:
  free:
    meters:
      requests: { limit: 1000, period: month }
  pro:
    meters:
      requests: { limit: 100000, period: month }
routes:
  - name: api
    match: { path_prefix: / }
    upstream: product
    meter: { requests: 1 }
"#;

/// Two gateways sharing one Redis and one upstream.
struct Fleet {
    a: Gateway,
    b: Gateway,
    redis: RedisServer,
    _upstream: Upstream,
    client: reqwest::Client,
}

impl Fleet {
    /// An admin call to `gw` with the right token.
    async fn admin(&self, gw: &Gateway, method: &str, path: &str, body: Option<Value>) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        admin(&self.client, gw, method, path, Some(TOKEN), body).await
    }

    async fn start(yaml: &str) -> Fleet {
        let redis = RedisServer::start().await;
        let upstream = Upstream::start().await;
        let rendered = render(yaml, &redis.url(), &upstream.addr());
        Fleet {
            a: Gateway::start(&rendered).await,
            b: Gateway::start(&rendered).await,
            redis,
            _upstream: upstream,
            client: crate::common::client(),
        }
    }
}

async fn call(client: &reqwest::Client, gw: &Gateway, key: &str) -> Answer {
    crate::common::get(client, &gw.url("/v1/items"), Some(key)).await
}

/// Polls `probe` until it returns true, for at most `within`; returns how long it took.
async fn within<F, Fut>(within: Duration, mut probe: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() <= within {
        if probe().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plan_change_through_one_instance_applies_on_the_other_within_a_second() {
    let f = Fleet::start(YAML).await;
    let plan_on_b = || async {
        call(&f.client, &f.b, ACME_KEY).await.echoed_headers()["x-tollgate-plan"][0].clone()
    };
    assert_eq!(plan_on_b().await, "free");

    let set = f
        .admin(
            &f.a,
            "PUT",
            "/admin/v1/tenants/acme/plan",
            Some(json!({"plan": "pro"})),
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.body);
    assert_eq!(set.json()["plan"], "pro");
    let took = within(Duration::from_secs(1), || async {
        plan_on_b().await == "pro"
    })
    .await;
    assert!(
        took.is_some(),
        "instance b still bills acme on free after 1 s"
    );
    let mut conn = f.redis.conn().await;
    let stored: Option<String> = redis::cmd("HGET")
        .arg("tg:{acme}:tenant")
        .arg("plan")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        stored.as_deref(),
        Some("pro"),
        "the override is in the store (SPEC §9)"
    );

    // The tenant list shows it on the other instance, beside a tenant only the store knows.
    let zeta = f
        .admin(
            &f.a,
            "PUT",
            "/admin/v1/tenants/zeta/plan",
            Some(json!({"plan": "free"})),
        )
        .await;
    assert_eq!(zeta.status, 200, "{}", zeta.body);
    let listed = within(Duration::from_secs(1), || async {
        let list = f.admin(&f.b, "GET", "/admin/v1/tenants", None).await;
        list.json()["tenants"].as_array().map_or(0, Vec::len) == 2
    })
    .await;
    assert!(listed.is_some(), "zeta reached b's tenant list within 1 s");
    let list = f.admin(&f.b, "GET", "/admin/v1/tenants", None).await;
    assert_eq!(
        list.json(),
        json!({"tenants": [
            {"tenant": "acme", "plan": "pro", "override": "pro", "in_config": true},
            {"tenant": "zeta", "plan": "free", "override": "free", "in_config": false},
        ]}),
        "{}",
        list.body
    );

    // The usage route shows the new plan's meters, on either instance.
    let usage = f
        .admin(&f.b, "GET", "/admin/v1/tenants/acme/usage", None)
        .await;
    assert_eq!(usage.status, 200, "{}", usage.body);
    let u = usage.json();
    assert_eq!(u["plan"], "pro");
    let used = u["meters"]["requests"]["used"].as_u64().unwrap();
    assert!(used >= 2, "{u}");
    assert_eq!(u["meters"]["requests"]["limit"], 100000);
    assert_eq!(u["meters"]["requests"]["remaining"], 100000 - used);
    assert!(u["meters"]["requests"]["resets_at"]
        .as_str()
        .unwrap()
        .ends_with('Z'));

    // An unknown plan is a 400 that names the configured ones; nothing changes.
    let bad = f
        .admin(
            &f.a,
            "PUT",
            "/admin/v1/tenants/acme/plan",
            Some(json!({"plan": "gold"})),
        )
        .await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("free, pro"), "{}", bad.body);
    assert_eq!(plan_on_b().await, "pro");

    // A new instance started later loads the override at startup, before its first call is
    // admitted: that call is already on pro.
    let mut c = Gateway::start(&render(YAML, &f.redis.url(), &f._upstream.addr())).await;
    let first = call(&f.client, &c, ACME_KEY).await;
    assert_eq!(
        first.echoed_headers()["x-tollgate-plan"],
        ["pro"],
        "{}",
        c.stderr()
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_created_on_one_instance_works_on_both_and_once_revoked_fails_on_both() {
    let f = Fleet::start(YAML).await;
    let created = f
        .admin(
            &f.a,
            "POST",
            "/admin/v1/tenants/acme/keys",
            Some(json!({"id": "ci"})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let key = created.json()["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("tg_live_"));
    assert_eq!(call(&f.client, &f.a, &key).await.status, 200);
    assert_eq!(call(&f.client, &f.b, &key).await.status, 200);

    let dup = f
        .admin(
            &f.b,
            "POST",
            "/admin/v1/tenants/acme/keys",
            Some(json!({"id": "ci"})),
        )
        .await;
    assert_eq!(dup.status, 409, "one id, one key");
    let listed = f
        .admin(&f.b, "GET", "/admin/v1/tenants/acme/keys", None)
        .await;
    assert_eq!(
        listed.json(),
        json!({"tenant": "acme", "keys": [
            {"id": "acme-1", "source": "config"},
            {"id": "ci", "source": "store"},
        ]}),
        "{}",
        listed.body
    );

    let revoked = f
        .admin(&f.b, "DELETE", "/admin/v1/tenants/acme/keys/ci", None)
        .await;
    assert_eq!(revoked.status, 204, "{}", revoked.body);
    for gw in [&f.a, &f.b] {
        let took = within(Duration::from_secs(1), || async {
            call(&f.client, gw, &key).await.status == 401
        })
        .await;
        assert!(took.is_some(), "a revoked key still works after 1 s");
    }
    let again = f
        .admin(&f.a, "DELETE", "/admin/v1/tenants/acme/keys/ci", None)
        .await;
    assert_eq!(again.status, 404);
    let listed = f
        .admin(&f.a, "GET", "/admin/v1/tenants/acme/keys", None)
        .await;
    assert_eq!(
        listed.json()["keys"],
        json!([{"id": "acme-1", "source": "config"}])
    );
    let unknown = f
        .admin(&f.a, "GET", "/admin/v1/tenants/nobody/keys", None)
        .await;
    assert_eq!(unknown.status, 404);
    let static_key = f
        .admin(&f.a, "DELETE", "/admin/v1/tenants/acme/keys/acme-1", None)
        .await;
    assert_eq!(
        static_key.status, 409,
        "a key in the config is revoked there"
    );

    // Only hashes are stored.
    let mut conn = f.redis.conn().await;
    let all: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    for k in &all {
        let dump: Vec<u8> = redis::cmd("DUMP")
            .arg(k)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&dump).contains(&key),
            "{k} holds the plaintext key"
        );
    }
    assert!(!f.a.stderr().contains(&key) && !f.b.stderr().contains(&key));
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_routes_refuse_a_missing_or_wrong_token_and_change_nothing() {
    let f = Fleet::start(YAML).await;
    for token in [
        None,
        Some("wrong"),
        Some("an-admin-token-for-the-tests-but-longer"),
    ] {
        let calls = [
            (
                reqwest::Method::PUT,
                "/admin/v1/tenants/acme/plan",
                Some(json!({"plan": "pro"})),
            ),
            (reqwest::Method::POST, "/admin/v1/tenants/acme/keys", None),
            (reqwest::Method::GET, "/admin/v1/tenants/acme/keys", None),
            (reqwest::Method::GET, "/admin/v1/tenants", None),
            (reqwest::Method::GET, "/admin/v1/tenants/acme/usage", None),
            (
                reqwest::Method::POST,
                "/admin/v1/tenants/acme/usage",
                Some(json!({"meter": "requests", "delta": 5})),
            ),
            (
                reqwest::Method::DELETE,
                "/admin/v1/tenants/acme/keys/acme-1",
                None,
            ),
            (reqwest::Method::POST, "/admin/v1/reload", None),
        ];
        for (method, path, body) in calls {
            let answer = admin(&f.client, &f.a, method.clone(), path, token, body).await;
            assert_eq!(answer.status, 401, "{method} {path} with {token:?}");
            assert_eq!(
                answer.problem(401)["type"],
                "urn:tollgate:admin-unauthenticated"
            );
            assert!(answer
                .header("www-authenticate")
                .unwrap()
                .starts_with("Bearer"));
        }
    }
    let mut conn = f.redis.conn().await;
    let all: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(all.is_empty(), "refused admin calls wrote {all:?}");

    // Without `admin.token` the routes are off, not open.
    let off = Gateway::start(&render(
        &YAML.replace("  token: \"an-admin-token-for-the-tests\"\n", ""),
        &f.redis.url(),
        &f._upstream.addr(),
    ))
    .await;
    let put = f
        .admin(
            &off,
            "PUT",
            "/admin/v1/tenants/acme/plan",
            Some(json!({"plan": "pro"})),
        )
        .await;
    assert_eq!(put.status, 404);
    assert!(put.body.contains("admin.token"));
    // Bodies are bounded.
    let big = f
        .admin(
            &f.a,
            "PUT",
            "/admin/v1/tenants/acme/plan",
            Some(json!({"plan": "x".repeat(100_000)})),
        )
        .await;
    assert_eq!(big.status, 413);
}

/// `YAML` with the free plan's limit set to `limit`.
fn with_limit(limit: u64) -> String {
    YAML.replace(
        "requests: { limit: 1000, period: month }",
        &format!("requests: {{ limit: {limit}, period: month }}"),
    )
}

fn policy_limit(answer: &Answer) -> String {
    answer
        .header("ratelimit-policy")
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn reloads_under_load_fail_no_call_and_a_broken_config_keeps_the_old_one() {
    let f = Fleet::start(YAML).await;
    let gw = &f.a;
    let rendered = |limit| render(&with_limit(limit), &f.redis.url(), &f._upstream.addr());

    // A bounded loop of calls runs through every reload below.
    let (client, url) = (f.client.clone(), gw.url("/v1/items"));
    let load = tokio::spawn(async move {
        let mut statuses = Vec::new();
        for _ in 0..600 {
            statuses.push(
                crate::common::get(&client, &url, Some(ACME_KEY))
                    .await
                    .status,
            );
        }
        statuses
    });

    // 1. The file changes (written beside it and renamed over it, as editors do).
    gw.rewrite_config(&rendered(2000));
    let took = within(Duration::from_secs(3), || async {
        policy_limit(&call(&f.client, gw, ACME_KEY).await).contains("q=2000")
    })
    .await;
    assert!(took.is_some(), "the file change was not picked up");
    // 2. SIGHUP.
    gw.rewrite_config(&rendered(3000));
    gw.signal("HUP");
    let took = within(Duration::from_secs(3), || async {
        policy_limit(&call(&f.client, gw, ACME_KEY).await).contains("q=3000")
    })
    .await;
    assert!(took.is_some(), "SIGHUP did not reload");
    // 3. The admin API.
    let mut broken_free = rendered(4000);
    let reply = f.admin(gw, "POST", "/admin/v1/reload", None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // 4. A broken config is refused; the old one keeps serving.
    broken_free = broken_free.replace("plan: free\n", "plan: gold\n");
    gw.rewrite_config(&broken_free);
    let reply = f.admin(gw, "POST", "/admin/v1/reload", None).await;
    assert_eq!(reply.status, 422, "{}", reply.body);
    assert!(
        reply.body.contains("gold"),
        "the errors are listed: {}",
        reply.body
    );
    assert!(policy_limit(&call(&f.client, gw, ACME_KEY).await).contains("q=3000"));

    let statuses = load.await.unwrap();
    let failed: Vec<_> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(failed.is_empty(), "calls failed during reloads: {failed:?}");

    let metrics = crate::common::get(&f.client, &gw.admin_url("/metrics"), None)
        .await
        .body;
    let count = |result: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("tollgate_config_reloads_total")
                    && l.contains(&format!("result=\"{result}\""))
            })
            .and_then(|l| l.rsplit_once(' '))
            .and_then(|(_, v)| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(count("ok") >= 3.0, "{metrics}");
    assert!(count("error") >= 1.0, "{metrics}");
    // A listener change is reported, not half-applied.
    gw.rewrite_config(&rendered(3000).replace("listen: \"{admin}\"", "listen: \"127.0.0.1:1\""));
    let reply = f.admin(gw, "POST", "/admin/v1/reload", None).await;
    assert_eq!(
        reply.json()["needs_restart"],
        json!(["admin"]),
        "{}",
        reply.body
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_turns_readyz_unready_then_lets_in_flight_calls_finish_and_exits_0() {
    let yaml = YAML.replace(
        "  listen: \"{listen}\"\n",
        "  listen: \"{listen}\"\n  grace_period: 2s\n  unready_delay: 500ms\n",
    ) + "telemetry:\n  spool: \"{dir}/spool\"\n  sinks:\n    - kind: file\n      path: \"{dir}/events.jsonl\"\n";
    let redis = RedisServer::start().await;
    let upstream = Upstream::start().await;
    let mut gw = Gateway::start(&render(&yaml, &redis.url(), &upstream.addr())).await;
    let client = crate::common::client();
    assert_eq!(
        crate::common::get(&client, &gw.admin_url("/readyz"), None)
            .await
            .status,
        200
    );

    // Ten calls the upstream takes 1.5 s to answer are in flight when SIGTERM arrives.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (client, url) = (client.clone(), gw.url("/v1/slow/1500"));
        calls.spawn(async move {
            crate::common::get(&client, &url, Some(ACME_KEY))
                .await
                .status
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let admin_url = gw.admin_url("/readyz");
    let probe = tokio::spawn({
        let client = client.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            crate::common::get(&client, &admin_url, None).await.status
        }
    });
    let (status, took) = gw.terminate().await;
    assert_eq!(probe.await.unwrap(), 503, "/readyz goes unready first");
    let statuses = calls.join_all().await;
    assert_eq!(statuses, vec![200; 10], "in-flight calls complete");
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(
        redis
            .get_int(&crate::common::month_key("acme", "requests"))
            .await,
        10
    );
    // No event is lost: the ten calls' events reach the file sink, at the latest after a
    // restart delivers what was spooled.
    let events = gw.config_path().with_file_name("events.jsonl");
    gw.start_again().await;
    let took = within(Duration::from_secs(5), || async {
        crate::common::events::ids(&crate::common::events::file_events(&events)).len() == 10
    })
    .await;
    assert!(
        took.is_some(),
        "events in the file: {}",
        crate::common::events::file_events(&events).len()
    );
}
