//! `server.request_id`: one id per call, the same in the answer, at the upstream and as the
//! usage event's id, on proxied answers and the gateway's own alike.

use std::time::Duration;

use serde_json::Value;

use crate::common::events::{file_events, wait_for};
use crate::common::http::read;
use crate::common::{Answer, Stack, ACME_KEY, ACME_ON_PRODUCT};

const YAML: &str = r#"
server: { listen: "{listen}", threads: 2, request_id: true }
admin: { listen: "{admin}" }
store: { kind: redis, url: "{redis}", timeout: 2s }
upstreams:
  product: { targets: ["{upstream}"] }
telemetry:
  spool: "{dir}/spool"
  sinks:
    - { kind: file, path: "{dir}/events.jsonl" }
"#;

async fn call(stack: &Stack, key: Option<&str>) -> Answer {
    let mut req = stack
        .client
        .get(stack.gateway.url("/v1/items"))
        .header("x-request-id", "client-chosen");
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    read(req.send().await.unwrap()).await
}

fn events(stack: &Stack) -> Vec<Value> {
    let dir = stack.gateway.config_path().parent().unwrap().to_path_buf();
    file_events(&dir.join("events.jsonl"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_has_one_id_in_its_answer_at_the_upstream_and_in_its_event() {
    let stack = Stack::start(&format!("{YAML}{ACME_ON_PRODUCT}")).await;

    let allowed = call(&stack, Some(ACME_KEY)).await;
    let refused = call(&stack, None).await;

    assert_eq!(allowed.status, 200, "{}", allowed.body);
    assert_eq!(refused.status, 401, "{}", refused.body);
    let ids: Vec<String> = [&allowed, &refused]
        .iter()
        .map(|a| {
            a.header("x-request-id")
                .expect("an id on every answer")
                .to_string()
        })
        .collect();
    for id in &ids {
        let uuid = uuid::Uuid::parse_str(id).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(uuid.get_version_num(), 7, "{id}");
    }
    assert_ne!(ids[0], ids[1]);
    // The upstream got the gateway's id, not the one the client chose.
    assert_eq!(allowed.echoed_headers()["x-request-id"], [ids[0].clone()]);

    wait_for("two events", Duration::from_secs(10), || async {
        events(&stack).len() >= 2
    })
    .await;
    let events = events(&stack);
    let by_outcome = |o: &str| {
        events
            .iter()
            .find(|e| e["data"]["outcome"] == o)
            .unwrap_or_else(|| panic!("no {o} event in {events:?}"))["id"]
            .clone()
    };
    assert_eq!(by_outcome("allowed"), ids[0].as_str());
    assert_eq!(by_outcome("unauthenticated"), ids[1].as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn off_by_default_the_clients_id_passes_untouched() {
    let yaml = format!("{YAML}{ACME_ON_PRODUCT}").replace(", request_id: true", "");
    let stack = Stack::start(&yaml).await;

    let answer = call(&stack, Some(ACME_KEY)).await;

    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-request-id"), None);
    assert_eq!(answer.echoed_headers()["x-request-id"], ["client-chosen"]);
}
