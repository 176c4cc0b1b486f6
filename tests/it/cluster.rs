//! `store.kind: redis-cluster`: the same exactness, refunds, plan changes and runtime keys as
//! with one Redis server, on a real three-node Redis Cluster whose nodes each hold some of the
//! tenants (SPEC §9: every key of a tenant carries the `{tenant}` hash tag).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::cluster::RedisCluster;
use crate::common::gateway::{file_key, keys_cli};
use crate::common::tls::TestCa;
use crate::common::{
    self, get, month_key, refused_addr, render, Answer, Gateway, Upstream, ACME_KEY, DELTA_KEY,
    GAMMA_KEY,
};

const TOKEN: &str = "an-admin-token-for-the-tests";

/// `acme`, `gamma` and `delta` have 200, 100 and 50 requests a month; milestones are on. Their hash tags fall in
/// the slots of three different nodes (asserted below), so one batch of reservations spans the
/// whole cluster. `/broken/` goes to an upstream that refuses connections (refunded).
const YAML: &str = r#"
server:
  listen: "{listen}"
  threads: 2
admin:
  listen: "{admin}"
  token: "an-admin-token-for-the-tests"
store:
  kind: redis-cluster
  urls: {urls}
  timeout: 2s
  on_outage: fail_closed
upstreams:
  product:
    targets: ["{upstream}"]
  broken:
    targets: ["{refused}"]
    connect_timeout: 500ms
tenants:
  acme:
    plan: two_hundred
    keys:
      - id: acme-1
        sha256: "{acme_sha}"
  gamma:
    plan: one_hundred
    keys:
      - id: gamma-1
        sha256: "{gamma_sha}"
  delta:
    plan: fifty
    keys:
      - id: delta-1
        sha256: "{delta_sha}"
plans:
  two_hundred:
    meters:
      requests: { limit: 200, period: month }
  one_hundred:
    meters:
      requests: { limit: 100, period: month }
  fifty:
    meters:
      requests: { limit: 50, period: month }
  big:
    meters:
      requests: { limit: 100000, period: month }
routes:
  - name: broken
    match: { path_prefix: /broken/ }
    upstream: broken
    meter: { requests: 1 }
  - name: api
    match: { path_prefix: / }
    upstream: product
    meter: { requests: 1 }
onboarding: {}
"#;

/// A cluster, an upstream and a config for gateways on them.
struct Setup {
    cluster: RedisCluster,
    upstream: Upstream,
    yaml: String,
    client: reqwest::Client,
}

impl Setup {
    async fn start() -> Setup {
        Setup::on(RedisCluster::start().await, "").await
    }

    /// On `cluster`, with `store` lines added to the store section.
    async fn on(cluster: RedisCluster, store: &str) -> Setup {
        let upstream = Upstream::start().await;
        let yaml = render(YAML, "", &upstream.addr())
            .replace("{urls}", &format!("{}{store}", cluster.urls_yaml()))
            .replace("{refused}", &refused_addr());
        Setup {
            cluster,
            upstream,
            yaml,
            client: common::client(),
        }
    }

    async fn gateway(&self) -> Gateway {
        Gateway::start(&self.yaml).await
    }

    async fn counter(&self, tenant: &str) -> i64 {
        self.cluster.get_int(&month_key(tenant, "requests")).await
    }

    async fn admin(
        &self,
        gw: &Gateway,
        method: &str,
        path: &str,
        body: serde_json::Value,
    ) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let req = self
            .client
            .request(method, gw.admin_url(path))
            .bearer_auth(TOKEN)
            .json(&body);
        common::http::read(req.send().await.unwrap()).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_of_tenants_on_three_nodes_through_two_gateways_never_overshoot() {
    let s = Setup::start().await;
    let a = s.gateway().await;
    let b = s.gateway().await;
    let tenants = [
        ("acme", ACME_KEY, 200),
        ("gamma", GAMMA_KEY, 100),
        ("delta", DELTA_KEY, 50),
    ];

    // 500 + 250 + 125 calls at once, interleaved across tenants and gateways.
    let mut tasks = Vec::new();
    for i in 0..875usize {
        let (tenant, key, _) = match i % 7 {
            0..=3 => tenants[0],
            4 | 5 => tenants[1],
            _ => tenants[2],
        };
        let url = [&a, &b][i % 2].url("/v1/items");
        let client = s.client.clone();
        tasks.push(tokio::spawn(async move {
            (tenant, get(&client, &url, Some(key)).await)
        }));
    }
    let mut statuses: BTreeMap<(&str, u16), usize> = BTreeMap::new();
    for task in tasks {
        let (tenant, answer) = task.await.unwrap();
        assert!(
            answer.status == 200 || answer.status == 402,
            "{tenant}: only 200 and 402 may answer; got {} {}",
            answer.status,
            answer.body
        );
        *statuses.entry((tenant, answer.status)).or_insert(0) += 1;
    }

    for (tenant, _, limit) in tenants {
        assert_eq!(
            statuses.get(&(tenant, 200)).copied().unwrap_or(0),
            limit,
            "{tenant}: {statuses:?}\n{}",
            a.stderr()
        );
        assert_eq!(s.counter(tenant).await, limit as i64, "{tenant}'s counter");
    }
    assert_eq!(
        s.upstream.hits(),
        350,
        "only admitted calls reach the upstream"
    );
    let mut nodes: Vec<usize> = Vec::new();
    for (tenant, _, _) in tenants {
        nodes.push(s.cluster.node_of(&month_key(tenant, "requests")).await);
    }
    nodes.sort_unstable();
    nodes.dedup();
    assert_eq!(
        nodes.len(),
        3,
        "the three tenants' counters live on three nodes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shared_burst_limit_holds_across_gateways_beside_other_nodes_tenants() {
    let mut s = Setup::start().await;
    s.yaml = s.yaml.replace(
        "  fifty:\n    meters:",
        "  fifty:\n    rate_limit: { requests: 1, per: 1h, burst: 30, shared: true }\n    meters:",
    );
    let a = s.gateway().await;
    let b = s.gateway().await;

    // 100 calls of `delta` (a burst of 30, on one node) and 100 of `acme` (no burst limit, on
    // another), at once, interleaved across the two gateways: batches mix the two slots.
    let mut tasks = Vec::new();
    for i in 0..200usize {
        let (tenant, key) = [("delta", DELTA_KEY), ("acme", ACME_KEY)][i % 2];
        let url = [&a, &b][(i / 2) % 2].url("/v1/items");
        let client = s.client.clone();
        tasks.push(tokio::spawn(async move {
            (tenant, get(&client, &url, Some(key)).await.status)
        }));
    }
    let mut statuses: BTreeMap<(&str, u16), usize> = BTreeMap::new();
    for task in tasks {
        let (tenant, status) = task.await.unwrap();
        *statuses.entry((tenant, status)).or_insert(0) += 1;
    }

    assert_eq!(
        statuses,
        BTreeMap::from([
            (("acme", 200), 100),
            (("delta", 200), 30),
            (("delta", 429), 70)
        ]),
        "{}",
        a.stderr()
    );
    assert_eq!(s.counter("delta").await, 30, "a 429 charges nothing");
    assert_eq!(s.counter("acme").await, 100);
}

#[tokio::test(flavor = "multi_thread")]
async fn refunds_and_a_flushed_script_cache_keep_the_count_exact() {
    let s = Setup::start().await;
    let gw = s.gateway().await;

    for i in 1..=3 {
        let ok = get(&s.client, &gw.url("/v1/items"), Some(GAMMA_KEY)).await;
        assert_eq!(ok.status, 200, "call {i}: {}", ok.body);
        let broken = get(&s.client, &gw.url("/broken/x"), Some(GAMMA_KEY)).await;
        assert_eq!(broken.status, 502, "call {i}: {}", broken.body);
        // The next reservation finds no script on any node: loaded again, counted once.
        s.cluster.on_every_node(&["SCRIPT", "FLUSH"]).await;
    }

    assert_eq!(
        s.counter("gamma").await,
        3,
        "three calls went through; the three refused by the upstream were refunded"
    );

    // An operator's correction runs its script on the tenant's node.
    let credit = s
        .admin(
            &gw,
            "POST",
            "/admin/v1/tenants/gamma/usage",
            json!({"meter": "requests", "delta": -2}),
        )
        .await;
    assert_eq!(credit.status, 200, "{}", credit.body);
    assert_eq!(credit.json()["used"], 1);
    assert_eq!(s.counter("gamma").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plan_change_on_one_gateway_reaches_the_other_and_a_later_one() {
    let s = Setup::start().await;
    let a = s.gateway().await;
    let b = s.gateway().await;
    let plan_on = |gw: &Gateway| {
        let (client, url) = (s.client.clone(), gw.url("/v1/items"));
        async move {
            get(&client, &url, Some(DELTA_KEY)).await.echoed_headers()["x-tollgate-plan"][0].clone()
        }
    };
    assert_eq!(plan_on(&b).await, "fifty");

    let set = s
        .admin(
            &a,
            "PUT",
            "/admin/v1/tenants/delta/plan",
            json!({"plan": "big"}),
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.body);

    let started = Instant::now();
    while plan_on(&b).await != "big" {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "gateway b still bills delta on fifty after 2 s:\n{}",
            b.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A gateway started now finds the override by scanning every node.
    let c = s.gateway().await;
    assert_eq!(plan_on(&c).await, "big", "{}", c.stderr());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_filed_in_the_cluster_works_and_once_revoked_is_refused() {
    let s = Setup::start().await;
    let gw = s.gateway().await;
    let (key, sha) = file_key(&gw, "acme");

    let ok = get(&s.client, &gw.url("/v1/items"), Some(&key)).await;
    assert_eq!(ok.status, 200, "{}\n{}", ok.body, gw.stderr());
    assert_eq!(
        ok.echoed_headers()["x-tollgate-tenant"],
        vec!["acme".to_string()]
    );
    assert_eq!(s.counter("acme").await, 1);

    keys_cli(&gw, &["keys", "revoke", "--sha256", &sha]);
    let refused = get(&s.client, &gw.url("/v1/items"), Some(&key)).await;
    assert_eq!(refused.problem(401)["type"], "urn:tollgate:unauthenticated");
    assert_eq!(s.counter("acme").await, 1, "a refused call counts nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_milestone_fires_on_exactly_one_call_of_a_concurrent_burst_across_gateways() {
    let s = Setup::start().await;
    let a = s.gateway().await;
    let b = s.gateway().await;

    let mut tasks = Vec::new();
    for i in 0..40usize {
        let (client, url) = (s.client.clone(), [&a, &b][i % 2].url("/v1/items"));
        tasks.push(tokio::spawn(async move {
            get(&client, &url, Some(DELTA_KEY)).await
        }));
    }
    let mut fired = Vec::new();
    for task in tasks {
        let answer = task.await.unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body);
        if let Some(m) = answer.header("tollgate-milestone") {
            fired.push(m.to_string());
        }
    }

    assert_eq!(fired, vec!["\"first_call\"".to_string()], "{}", a.stderr());
    assert_eq!(s.counter("delta").await, 40);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_down_refuses_only_its_tenants_and_metering_resumes_when_it_returns() {
    let mut s = Setup::start().await;
    let gw = s.gateway().await;
    let gamma_node = s.cluster.node_of(&month_key("gamma", "requests")).await;
    let delta_node = s.cluster.node_of(&month_key("delta", "requests")).await;
    assert_ne!(gamma_node, delta_node);
    let call = |key: &'static str| {
        let (client, url) = (s.client.clone(), gw.url("/v1/items"));
        async move { get(&client, &url, Some(key)).await }
    };
    assert_eq!(call(GAMMA_KEY).await.status, 200);
    assert_eq!(call(DELTA_KEY).await.status, 200);

    s.cluster.kill(gamma_node);
    let started = Instant::now();
    let refused = call(GAMMA_KEY).await;
    assert_eq!(
        refused.problem(503)["type"],
        "urn:tollgate:store-unavailable"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "a call waited {:?} for a dead node; store.timeout is 2s",
        started.elapsed()
    );
    let other = call(DELTA_KEY).await;
    assert_eq!(
        other.status,
        200,
        "delta's node is up: {}\n{}",
        other.body,
        gw.stderr()
    );

    s.cluster.restart(gamma_node).await;
    let started = Instant::now();
    loop {
        let answer = call(GAMMA_KEY).await;
        if answer.status == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "gamma still refused 10 s after its node came back: {}\n{}",
            answer.body,
            gw.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        s.counter("gamma").await,
        1,
        "the node came back empty (no persistence); one call since"
    );
    assert_eq!(s.counter("delta").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_tls_with_the_ca_file_a_cluster_counts_exactly_and_without_it_is_unreachable() {
    let ca = TestCa::new();
    let cluster = RedisCluster::start_tls(&ca).await;
    let ca_file = format!("\n  ca_file: \"{}\"", cluster.ca_file().display());
    let s = Setup::on(cluster, &ca_file).await;
    assert!(s.yaml.contains("rediss://"), "{}", s.yaml);
    let gw = s.gateway().await;

    let mut tasks = Vec::new();
    for i in 0..90usize {
        let key = if i % 3 == 0 { GAMMA_KEY } else { DELTA_KEY };
        let (client, url) = (s.client.clone(), gw.url("/v1/items"));
        tasks.push(tokio::spawn(async move {
            (key, get(&client, &url, Some(key)).await.status)
        }));
    }
    let mut statuses: BTreeMap<(&str, u16), usize> = BTreeMap::new();
    for task in tasks {
        let (key, status) = task.await.unwrap();
        *statuses.entry((key, status)).or_insert(0) += 1;
    }
    assert_eq!(
        statuses,
        BTreeMap::from([
            ((GAMMA_KEY, 200), 30),
            ((DELTA_KEY, 200), 50),
            ((DELTA_KEY, 402), 10)
        ]),
        "{}",
        gw.stderr()
    );
    assert_eq!(s.counter("gamma").await, 30);
    assert_eq!(s.counter("delta").await, 50);

    // The same cluster without the CA: no node's certificate is trusted.
    let untrusting = Gateway::start(&s.yaml.replace(&ca_file, "")).await;
    let refused = get(&s.client, &untrusting.url("/v1/items"), Some(GAMMA_KEY)).await;
    assert_eq!(
        refused.problem(503)["type"],
        "urn:tollgate:store-unavailable"
    );
    assert!(
        untrusting.stderr().contains("invalid peer certificate"),
        "{}",
        untrusting.stderr()
    );
    assert_eq!(s.counter("gamma").await, 30);
}
