//! The admin listener: liveness and Prometheus metrics (SPEC §7, §8).

use crate::common::{Stack, ACME_KEY};

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
    keys:
      - id: acme-1
        sha256: "{acme_sha}"
plans:
  free:
    meters:
      requests: { limit: 2, period: month }
routes:
  - name: api
    match: { path_prefix: / }
    upstream: product
    meter: { requests: 1 }
"#;

/// The value of the sample of `metric` whose labels include every `name="value"` given.
fn sample(text: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let rest = series.strip_prefix(metric)?;
            if !(rest.is_empty() || rest.starts_with('{')) {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse().ok()).flatten()
        })
}

#[tokio::test(flavor = "multi_thread")]
async fn healthz_answers_200() {
    let stack = Stack::start(YAML).await;
    let answer =
        crate::common::get(&stack.client, &stack.gateway.admin_url("/healthz"), None).await;
    assert_eq!(answer.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests_by_route_plan_and_outcome_without_tenant_ids() {
    let stack = Stack::start(YAML).await;
    for _ in 0..3 {
        stack.get("/v1/items", Some(ACME_KEY)).await;
    }

    // A call is counted when pingora logs it, just after its answer went out: poll briefly.
    let allowed = [("route", "api"), ("plan", "free"), ("outcome", "allowed")];
    let refused = [
        ("route", "api"),
        ("plan", "free"),
        ("outcome", "quota_exceeded"),
    ];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let answer = loop {
        let answer =
            crate::common::get(&stack.client, &stack.gateway.admin_url("/metrics"), None).await;
        let counted = sample(&answer.body, "tollgate_requests_total", &allowed) == Some(2.0)
            && sample(&answer.body, "tollgate_requests_total", &refused) == Some(1.0);
        if counted || std::time::Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };

    assert_eq!(answer.status, 200);
    let content_type = answer.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain"),
        "Prometheus text format: {content_type}"
    );
    let text = &answer.body;
    assert_eq!(
        sample(text, "tollgate_requests_total", &allowed),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(text, "tollgate_requests_total", &refused),
        Some(1.0),
        "{text}"
    );
    assert!(text.contains("tollgate_request_duration_seconds"), "{text}");
    assert!(!text.contains("acme"), "no tenant ids in metrics:\n{text}");
}
