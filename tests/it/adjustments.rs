//! `POST /admin/v1/tenants/{t}/usage`: support corrects a tenant's usage of the current period
//! (a credit, or a manual charge); every instance counts from the corrected value at once, and
//! the sinks get a `dev.tollgate.adjustment` event with the units applied.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::events::{file_events, wait_for};
use crate::common::http::admin;
use crate::common::{clock, render, Answer, Gateway, RedisServer, Upstream, ACME_KEY};

const TOKEN: &str = "an-admin-token-for-the-tests";

const YAML: &str = r#"
server: { listen: "{listen}" }
admin: { listen: "{admin}", token: "an-admin-token-for-the-tests" }
store: { kind: redis, url: "{redis}", timeout: 2s }
upstreams:
  product: { targets: ["{upstream}"] }
tenants:
  acme: { plan: free, keys: [{ id: acme-1, sha256: "{acme_sha}" }] }
plans:
  free: { meters: { requests: { limit: 3, period: month }, tokens: { limit: 100, period: day } } }
routes:
  - { name: api, match: { path_prefix: / }, upstream: product, meter: { requests: 1 } }
"#;

async fn correct(client: &reqwest::Client, gw: &Gateway, body: Value) -> Answer {
    let path = "/admin/v1/tenants/acme/usage";
    admin(client, gw, Method::POST, path, Some(TOKEN), Some(body)).await
}

async fn call(client: &reqwest::Client, gw: &Gateway) -> u16 {
    crate::common::get(client, &gw.url("/v1/items"), Some(ACME_KEY))
        .await
        .status
}

#[tokio::test(flavor = "multi_thread")]
async fn a_credit_on_one_instance_lets_calls_through_on_the_other_at_once() {
    let redis = RedisServer::start().await;
    let upstream = Upstream::start().await;
    let yaml = render(YAML, &redis.url(), &upstream.addr());
    let (a, b) = (Gateway::start(&yaml).await, Gateway::start(&yaml).await);
    let client = crate::common::client();
    for _ in 0..3 {
        assert_eq!(call(&client, &a).await, 200);
    }
    assert_eq!(call(&client, &b).await, 402, "the limit of 3 is reached");

    let credit = correct(
        &client,
        &a,
        json!({"meter": "requests", "delta": -2, "reason": "incident 42"}),
    )
    .await;
    assert_eq!(credit.status, 200, "{}", credit.body);
    let body = credit.json();
    assert_eq!(body["tenant"], "acme");
    assert_eq!(body["plan"], "free");
    assert_eq!(body["meter"], "requests");
    assert_eq!(body["delta"], -2);
    assert_eq!(body["applied"], -2);
    assert_eq!(body["used"], 1);
    assert_eq!(body["limit"], 3);
    assert_eq!(body["remaining"], 2);
    assert_eq!(body["period"], clock::month_start()[..7]);
    assert!(body["resets_at"].as_str().is_some_and(|r| r.ends_with('Z')));

    // The other instance reads the same counter: two more calls, then the limit again.
    assert_eq!(call(&client, &b).await, 200);
    assert_eq!(call(&client, &b).await, 200);
    assert_eq!(call(&client, &b).await, 402);

    // A credit larger than the usage resets it to zero, and says what it applied.
    let reset = correct(&client, &b, json!({"meter": "requests", "delta": -100})).await;
    assert_eq!(reset.json()["applied"], -3, "{}", reset.body);
    assert_eq!(reset.json()["used"], 0);
    // A manual charge adds units, past the limit if need be: the next call is refused.
    let charge = correct(&client, &a, json!({"meter": "requests", "delta": 5})).await;
    assert_eq!(charge.json()["applied"], 5, "{}", charge.body);
    assert_eq!(charge.json()["remaining"], 0);
    assert_eq!(call(&client, &a).await, 402);
    let usage = admin(
        &client,
        &b,
        Method::GET,
        "/admin/v1/tenants/acme/usage",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(
        usage.json()["meters"]["requests"]["used"],
        5,
        "{}",
        usage.body
    );
    // A daily meter is corrected in today's counter.
    let tokens = correct(&client, &a, json!({"meter": "tokens", "delta": 7})).await;
    assert_eq!(
        tokens.json()["period"],
        clock::day_start(),
        "{}",
        tokens.body
    );
    let tokens_key = crate::common::day_key("acme", "tokens");
    assert_eq!(redis.get_int(&tokens_key).await, 7);
    // Kept as a reservation keeps it: a day past the period's end.
    let ttl = redis.ttl(&tokens_key).await;
    assert!(ttl > 86_400 && ttl <= 2 * 86_400, "{ttl}");
    assert!(a.stderr().contains("Usage corrected through the admin API"));
    let text = crate::common::events::metrics(&a).await;
    let timed = crate::common::events::metric(
        &text,
        "tollgate_store_duration_seconds_count",
        &[("op", "adjust")],
    );
    assert_eq!(
        timed, 3.0,
        "each correction on a is timed as op=adjust: {text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_correction_is_refused_and_changes_nothing() {
    let redis = RedisServer::start().await;
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&render(YAML, &redis.url(), &upstream.addr())).await;
    let client = crate::common::client();
    assert_eq!(call(&client, &gw).await, 200);

    for (body, status, says) in [
        (
            json!({"meter": "minutes", "delta": -1}),
            400,
            "its meters: requests, tokens",
        ),
        (
            json!({"meter": "requests", "delta": 0}),
            400,
            "other than 0",
        ),
        (
            json!({"meter": "requests", "delta": 1.5}),
            400,
            "whole number",
        ),
        (
            json!({"meter": "requests", "delta": "-1"}),
            400,
            "whole number",
        ),
        (json!({"meter": "requests"}), 400, "whole number"),
        (json!({"delta": -1}), 400, "Send a JSON body"),
        (
            json!({"meter": "requests", "delta": -1, "reason": 42}),
            400,
            "`reason`",
        ),
    ] {
        let answer = correct(&client, &gw, body.clone()).await;
        assert_eq!(answer.status, status, "{body}: {}", answer.body);
        assert!(answer.body.contains(says), "{body}: {}", answer.body);
    }
    let path = "/admin/v1/tenants/nobody/usage";
    let body = Some(json!({"meter": "requests", "delta": -1}));
    let unknown = admin(&client, &gw, Method::POST, path, Some(TOKEN), body.clone()).await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    let path = "/admin/v1/tenants/acme/usage";
    let no_token = admin(&client, &gw, Method::POST, path, None, body).await;
    assert_eq!(no_token.status, 401, "{}", no_token.body);

    let key = crate::common::month_key("acme", "requests");
    assert_eq!(redis.get_int(&key).await, 1, "unchanged");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_embedded_store_corrects_alike_and_the_sinks_get_the_units_applied() {
    let upstream = Upstream::start().await;
    let yaml = YAML.replace(
        r#"store: { kind: redis, url: "{redis}", timeout: 2s }"#,
        "store: { kind: embedded, path: \"{dir}/usage.db\" }\ntelemetry:\n  spool: \"{dir}/spool\"\n  sinks:\n    - { kind: file, path: \"{dir}/events.jsonl\" }",
    );
    let gw = Gateway::start(&render(&yaml, "", &upstream.addr())).await;
    let client = crate::common::client();
    assert_eq!(call(&client, &gw).await, 200);
    assert_eq!(call(&client, &gw).await, 200);

    let credit = correct(
        &client,
        &gw,
        json!({"meter": "requests", "delta": -1, "reason": "goodwill"}),
    )
    .await;
    assert_eq!(
        (
            credit.json()["applied"].clone(),
            credit.json()["used"].clone()
        ),
        (json!(-1), json!(1))
    );
    let reset = correct(&client, &gw, json!({"meter": "requests", "delta": -10})).await;
    assert_eq!(reset.json()["applied"], -1, "{}", reset.body);
    // Nothing left to credit: applied 0, and no event.
    let nothing = correct(&client, &gw, json!({"meter": "requests", "delta": -10})).await;
    assert_eq!(nothing.json()["applied"], 0, "{}", nothing.body);
    let tokens = correct(&client, &gw, json!({"meter": "tokens", "delta": -10})).await;
    assert_eq!(
        tokens.json()["applied"],
        0,
        "a credit creates no counter: {}",
        tokens.body
    );

    let events_file = gw.config_path().parent().unwrap().join("events.jsonl");
    let adjustments = || {
        file_events(&events_file)
            .into_iter()
            .filter(|e| e["type"] == "dev.tollgate.adjustment")
            .collect::<Vec<_>>()
    };
    wait_for("two adjustment events", Duration::from_secs(10), || async {
        adjustments().len() >= 2
    })
    .await;
    let events = adjustments();
    assert_eq!(events.len(), 2, "{events:?}");
    let period = &clock::month_start()[..7];
    assert_eq!(events[0]["subject"], "acme");
    assert_eq!(events[0]["specversion"], "1.0");
    assert_eq!(
        events[0]["data"],
        json!({"tenant": "acme", "plan": "free", "meter": "requests", "units": -1, "period": period, "reason": "goodwill"})
    );
    assert_eq!(
        events[1]["data"],
        json!({"tenant": "acme", "plan": "free", "meter": "requests", "units": -1, "period": period, "reason": null})
    );
    // The calls' events and the corrections sum to the counter: 2 - 1 - 1 = 0.
    let charged: i64 = file_events(&events_file)
        .iter()
        .filter(|e| e["type"] == "dev.tollgate.request")
        .map(|e| e["data"]["meters"]["requests"].as_i64().unwrap_or(0))
        .sum();
    let corrected: i64 = events
        .iter()
        .map(|e| e["data"]["units"].as_i64().unwrap())
        .sum();
    assert_eq!(charged + corrected, 0);
}
