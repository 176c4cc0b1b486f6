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

/// Every sample of `metric` summed; for a histogram, its observation counts (the parser files
/// a histogram's `_sum` and `_count` lines under its name too, as untyped samples: skipped).
fn total(scrape: &prometheus_parse::Scrape, metric: &str) -> f64 {
    let of_metric = || scrape.samples.iter().filter(move |s| s.metric == metric);
    let histogram = of_metric().any(|s| matches!(s.value, prometheus_parse::Value::Histogram(_)));
    of_metric()
        .map(|s| match &s.value {
            prometheus_parse::Value::Histogram(h) => h.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Untyped(_) if histogram => 0.0,
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Summary(_) => 0.0,
        })
        .sum()
}

async fn scrape(stack: &Stack) -> prometheus_parse::Scrape {
    let text = crate::common::get(&stack.client, &stack.gateway.admin_url("/metrics"), None)
        .await
        .body;
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("the /metrics answer parses as Prometheus text format")
}

/// The metric names of SPEC §8 a gateway without telemetry exports (the event metrics are
/// checked with telemetry on, in the telemetry tests).
const SPEC_NAMES: &[&str] = &[
    "tollgate_requests_total",
    "tollgate_request_duration_seconds",
    "tollgate_upstream_duration_seconds",
    "tollgate_store_duration_seconds",
    "tollgate_store_errors_total",
    "tollgate_meter_units_total",
    "tollgate_config_reloads_total",
];

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_as_prometheus_text_and_the_spec_names_move_with_calls() {
    let stack = Stack::start(YAML).await;
    stack.get("/v1/items", Some(ACME_KEY)).await; // one call, so every per-call series exists
                                                  // A call is counted just after its answer went out: poll until it is.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let before = loop {
        let s = scrape(&stack).await;
        if total(&s, "tollgate_requests_total") >= 1.0 || std::time::Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    for name in SPEC_NAMES {
        assert!(
            before.samples.iter().any(|s| s.metric == *name),
            "{name} is missing from /metrics"
        );
    }
    stack.get("/v1/items", Some(ACME_KEY)).await; // the limit is 2: allowed
    stack.get("/v1/items", Some(ACME_KEY)).await; // refused, 402
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let after = loop {
        let after = scrape(&stack).await;
        if total(&after, "tollgate_requests_total")
            >= total(&before, "tollgate_requests_total") + 2.0
            || std::time::Instant::now() > deadline
        {
            break after;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let moved = |name: &str| total(&after, name) - total(&before, name);
    assert_eq!(moved("tollgate_requests_total"), 2.0);
    assert_eq!(moved("tollgate_request_duration_seconds"), 2.0);
    assert_eq!(
        moved("tollgate_upstream_duration_seconds"),
        1.0,
        "the 402 never reached it"
    );
    assert!(moved("tollgate_store_duration_seconds") >= 2.0);
    assert_eq!(moved("tollgate_meter_units_total"), 1.0);
    // Per-plan limit states: the second call left `requests` at its limit (near), the third
    // was refused (over).
    let state = |s: &str| {
        after
            .samples
            .iter()
            .filter(|x| {
                x.metric == "tollgate_limit_calls_total" && x.labels.get("state") == Some(s)
            })
            .map(|x| match x.value {
                prometheus_parse::Value::Counter(v) => v,
                _ => 0.0,
            })
            .sum::<f64>()
    };
    assert_eq!(state("within") + state("near"), 2.0);
    assert_eq!(state("over"), 1.0);
    for s in &after.samples {
        assert!(
            s.labels.values().all(|v| !v.contains("acme")),
            "a tenant id in the labels of {}",
            s.metric
        );
    }
}
#[test]
fn the_grafana_dashboard_only_uses_exported_metric_names() {
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring/grafana-dashboard.json"),
    )
    .unwrap();
    let source = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/telemetry/metrics.rs"),
    )
    .unwrap();
    let mut names: Vec<&str> = dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("tollgate_"))
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        let base = name.strip_suffix("_bucket").unwrap_or(name);
        assert!(
            source.contains(&format!("\"{base}\"")),
            "the dashboard uses {name}, which src/telemetry/metrics.rs does not export"
        );
    }
}

/// Every rule of `monitoring/prometheus-alerts.yaml` names metrics tollgate exports, matches label
/// values the source emits, and carries a severity and a summary. (`promtool check rules`
/// validates the PromQL itself.)
#[test]
fn the_alert_rules_only_use_exported_metrics_and_label_values() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("monitoring/prometheus-alerts.yaml")).unwrap();
    let rules: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let metrics = std::fs::read_to_string(root.join("src/telemetry/metrics.rs")).unwrap();
    let mut source = String::new();
    let mut dirs = vec![root.join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                source.push_str(&std::fs::read_to_string(path).unwrap());
            }
        }
    }
    let mut count = 0;
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            count += 1;
            let name = rule["alert"].as_str().unwrap();
            let expr = rule["expr"].as_str().unwrap();
            assert!(
                ["critical", "warning"]
                    .contains(&rule["labels"]["severity"].as_str().unwrap_or("")),
                "{name}: no severity"
            );
            assert!(
                rule["annotations"]["summary"].is_string(),
                "{name}: no summary"
            );
            let mut metric_names = 0;
            for (at, _) in expr.match_indices("tollgate_") {
                let word: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let base = word.strip_suffix("_bucket").unwrap_or(&word);
                assert!(
                    metrics.contains(&format!("\"{base}\"")),
                    "{name} uses {word}, which src/telemetry/metrics.rs does not export"
                );
                metric_names += 1;
                // Label matchers right after the name: each value must be one the code emits.
                let rest = &expr[at + word.len()..];
                if let Some(matchers) = rest.strip_prefix('{').and_then(|r| r.split_once('}')) {
                    for matcher in matchers.0.split(',') {
                        let (label, value) = matcher.split_once('=').unwrap();
                        let value = value.trim().trim_matches('"');
                        assert!(
                            source.contains(&format!("\"{value}\"")),
                            "{name}: {word}{{{label}=\"{value}\"}} matches a value the source never emits"
                        );
                    }
                }
            }
            assert!(metric_names > 0, "{name} names no tollgate metric");
        }
    }
    assert!(count >= 10, "{count} rules");
}
