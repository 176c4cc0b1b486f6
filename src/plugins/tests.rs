use super::*;
use crate::config::load_str;
use serde_json::json;

const YAML: &str = r#"
server: { listen: "127.0.0.1:8080" }
store: { kind: embedded, path: "/tmp/unused.db" }
upstreams: { product: { targets: ["127.0.0.1:3000"] } }
plans:
  free:
    meters:
      requests: { limit: 1000, period: month }
      input_tokens: { limit: 100000, period: month }
      output_tokens: { limit: 100000, period: month }
plugins:
  deny-header: { header: x-deny, status: 451, trace: true }
  debug-fail: { when_header: x-fail, trace: true }
  llm-usage: {}
routes:
  - name: ordered
    match: { path_prefix: /ordered }
    upstream: product
    plugins: [deny-header, debug-fail, llm-usage]
    meter:
      requests: 1
      input_tokens: { from_response: "plugin:llm-usage", reserve: 100, default: 3 }
      output_tokens: { from_response: "plugin:llm-usage", reserve: 100 }
  - name: reversed
    match: { path_prefix: / }
    upstream: product
    plugins: [debug-fail, deny-header]
"#;

fn routes() -> Vec<Arc<Route>> {
    let env = |_: &str| None;
    load_str("t.yaml", YAML, &env).unwrap().routes
}

fn headers(names: &[&str]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for n in names {
        h.insert(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_static("1"),
        );
    }
    h
}

fn request(
    calls: &mut Calls,
    route: &str,
    sent: &[&str],
) -> Result<Vec<(HeaderName, HeaderValue)>, Stop> {
    let (m, u, h) = (Method::GET, Uri::from_static("/x"), headers(sent));
    calls.on_request(&Request::new(&m, &u, &h, route))
}

#[test]
fn hooks_run_in_the_listed_order_and_the_first_stop_wins() {
    let routes = routes();
    let mut calls = Calls::start(&routes[0]).unwrap();
    let added = request(&mut calls, "ordered", &[]).unwrap();
    let trace: Vec<&str> = added.iter().map(|(_, v)| v.to_str().unwrap()).collect();
    assert_eq!(trace, ["deny-header", "debug-fail"]);

    let mut calls = Calls::start(&routes[0]).unwrap();
    match request(&mut calls, "ordered", &["x-deny", "x-fail"]) {
        Err(Stop::Denied { plugin, denial }) => {
            assert_eq!((plugin, denial.status.as_u16()), ("deny-header", 451));
        }
        other => panic!("expected a denial, got {other:?}"),
    }
    let mut calls = Calls::start(&routes[1]).unwrap();
    assert!(matches!(
        request(&mut calls, "reversed", &["x-deny", "x-fail"]),
        Err(Stop::Failed {
            plugin: "debug-fail"
        })
    ));
}

#[test]
fn plugin_meters_settle_to_reports_or_defaults_and_events_gain_fields() {
    let routes = routes();
    let mut calls = Calls::start(&routes[0]).unwrap();
    request(&mut calls, "ordered", &[]).unwrap();
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    calls.on_response_headers(StatusCode::OK, &h).unwrap();
    calls.on_response_body(br#"{"model":"m","usage":{"completion_tokens":9}}"#, false);
    calls.finish();
    let got: Vec<(usize, u64, bool)> = calls
        .measured(&routes[0])
        .iter()
        .map(|m| (m.index, m.units, m.defaulted))
        .collect();
    assert_eq!(got, [(1, 3, true), (2, 9, false)]);

    let mut data = EventData::new();
    data.insert("llm".into(), json!("the gateway's own"));
    calls.on_event(&mut data);
    assert_eq!(
        data["llm"],
        json!("the gateway's own"),
        "plugins never rewrite a field"
    );
    let mut data = EventData::new();
    calls.on_event(&mut data);
    assert_eq!(data["llm"]["output_tokens"], 9);
}

#[test]
fn a_panicking_plugin_fails_its_call_and_the_others_go_on() {
    let yaml = YAML
        .replace(
            "debug-fail: { when_header: x-fail, trace: true }",
            "debug-fail: { when_header: x-fail, at: response_body, panic: true }",
        )
        .replace(
            "plugins: [deny-header, debug-fail, llm-usage]",
            "plugins: [debug-fail, llm-usage]",
        );
    let env = |_: &str| None;
    let routes = load_str("t.yaml", &yaml, &env).unwrap().routes;
    let mut calls = Calls::start(&routes[0]).unwrap();
    request(&mut calls, "ordered", &["x-fail"]).unwrap();
    let mut h = HeaderMap::new();
    h.insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    calls.on_response_headers(StatusCode::OK, &h).unwrap();
    // debug-fail panics on the first chunk and sits out the rest; llm-usage reads on.
    calls.on_response_body(b"data: {\"usage\":{\"prompt_tokens\":4,", false);
    calls.on_response_body(b"\"completion_tokens\":6}}\n\n", false);
    calls.finish();
    let got: Vec<u64> = calls.measured(&routes[0]).iter().map(|m| m.units).collect();
    assert_eq!(got, [4, 6]);

    let yaml = yaml.replace("at: response_body", "at: request");
    let routes = load_str("t.yaml", &yaml, &env).unwrap().routes;
    let mut calls = Calls::start(&routes[0]).unwrap();
    assert!(matches!(
        request(&mut calls, "ordered", &["x-fail"]),
        Err(Stop::Failed {
            plugin: "debug-fail"
        })
    ));
}
