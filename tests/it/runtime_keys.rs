//! API keys filed in the store at runtime (`tg:key:<sha256>`), the issued key format with its
//! checksum, and the promise that only hashes are ever stored or logged.

use crate::common::gateway::{file_key, keys_cli};
use crate::common::Stack;

const YAML: &str = r#"
server:
  listen: "{listen}"
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
plans:
  free:
    meters:
      requests: { limit: 1000, period: month }
  pro:
    meters:
      requests: { limit: 100000, period: month }
routes:
  - name: api
    match: { path_prefix: /v1/ }
    upstream: product
    meter: { requests: 1 }
"#;

async fn redis_dump(stack: &Stack) -> String {
    let mut conn = stack.redis.conn().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut dump = String::new();
    for k in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&k)
            .query_async(&mut conn)
            .await
            .unwrap();
        let value: String = match kind.as_str() {
            "hash" => {
                let v: Vec<String> = redis::cmd("HGETALL")
                    .arg(&k)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                v.join(" ")
            }
            _ => redis::cmd("GET")
                .arg(&k)
                .query_async(&mut conn)
                .await
                .unwrap_or_default(),
        };
        dump.push_str(&format!("{k} = {value}\n"));
    }
    dump
}

async fn lookups(stack: &Stack) -> u64 {
    let mut conn = stack.redis.conn().await;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .and_then(|l| l.split(['=', ',']).nth(1))
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_filed_key_works_on_the_next_call_and_a_revoked_one_is_refused_on_the_next() {
    let stack = Stack::start(YAML).await;
    let (key, sha) = file_key(&stack.gateway, "acme");
    assert!(key.starts_with("tg_live_") && key.len() == 44, "{key}");

    let ok = stack.get("/v1/items", Some(&key)).await;
    assert_eq!(
        ok.echoed_headers()["x-tollgate-tenant"],
        vec!["acme".to_string()]
    );
    assert_eq!(
        ok.echoed_headers()["x-tollgate-plan"],
        vec!["free".to_string()]
    );
    assert_eq!(stack.month_counter("acme", "requests").await, 1);

    keys_cli(&stack.gateway, &["keys", "revoke", "--sha256", &sha]);
    let refused = stack.get("/v1/items", Some(&key)).await;
    assert_eq!(refused.problem(401)["type"], "urn:tollgate:unauthenticated");
    assert_eq!(
        stack.month_counter("acme", "requests").await,
        1,
        "a refused call counts nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_of_a_tenant_known_only_to_the_store_takes_the_tenants_plan_override() {
    let stack = Stack::start(YAML).await;
    let (key, _) = file_key(&stack.gateway, "newco");

    let no_plan = stack.get("/v1/items", Some(&key)).await;
    let body = no_plan.problem(401);
    assert!(
        body["detail"].as_str().unwrap().contains("has no plan"),
        "{body}"
    );

    stack
        .redis
        .command(&["HSET", "tg:{newco}:tenant", "plan", "pro"])
        .await;
    let ok = stack.get("/v1/items", Some(&key)).await;
    assert_eq!(
        ok.echoed_headers()["x-tollgate-tenant"],
        vec!["newco".to_string()]
    );
    assert_eq!(
        ok.echoed_headers()["x-tollgate-plan"],
        vec!["pro".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mistyped_key_is_refused_before_any_store_look_up() {
    let stack = Stack::start(YAML).await;
    let (key, _) = file_key(&stack.gateway, "acme");
    let mut typo = key.clone().into_bytes();
    typo[20] = if typo[20] == b'x' { b'y' } else { b'x' };
    let typo = String::from_utf8(typo).unwrap();

    let before = lookups(&stack).await;
    let refused = stack.get("/v1/items", Some(&typo)).await;
    let body = refused.problem(401);
    assert!(
        body["detail"].as_str().unwrap().contains("checksum"),
        "{body}"
    );
    assert!(
        !body.to_string().contains(&typo[8..]),
        "the detail never echoes the key: {body}"
    );
    assert_eq!(
        lookups(&stack).await,
        before,
        "no store look-up for a key that fails its checksum"
    );
    assert_eq!(stack.upstream.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_plaintext_key_reaches_redis_or_the_logs() {
    let stack = Stack::start(YAML).await;
    let (key, sha) = file_key(&stack.gateway, "acme");
    assert_eq!(stack.get("/v1/items", Some(&key)).await.status, 200);
    let _ = stack
        .get("/v1/items", Some("tg_live_not_issued_at_all"))
        .await;

    let dump = redis_dump(&stack).await;
    assert!(dump.contains(&format!("tg:key:{sha}")), "{dump}");
    assert!(
        !dump.contains(&key) && !dump.contains(&key[8..]),
        "plaintext key in Redis:\n{dump}"
    );
    let logs = stack.gateway.stderr();
    assert!(
        !logs.contains(&key[8..]),
        "plaintext key in the logs:\n{logs}"
    );
    assert!(
        !logs.contains("not_issued_at_all"),
        "a presented key in the logs:\n{logs}"
    );
}
