#![allow(clippy::unwrap_used, clippy::expect_used)]

use tollgate_plugin::{ConfigNode, ConfigValue, Plugin};

use super::*;
use crate::sink::{classify_for_test, form, remembered_for_test};

fn s(line: u64, text: &str) -> ConfigNode {
    ConfigNode::new(line, 5, ConfigValue::Str(text.into()))
}

fn map(line: u64, entries: Vec<(&str, ConfigNode)>) -> ConfigNode {
    ConfigNode::new(
        line,
        3,
        ConfigValue::Map(entries.into_iter().map(|(k, v)| (s(line, k), v)).collect()),
    )
}

fn good() -> ConfigNode {
    map(
        1,
        vec![
            ("api_key", s(2, "sk_test_secret")),
            ("api_base", s(3, "http://127.0.0.1:9/")),
            (
                "meters",
                map(
                    4,
                    vec![("requests", s(5, "api_requests")), ("tokens", s(6, "tok"))],
                ),
            ),
            ("customers", map(7, vec![("acme", s(8, "cus_A"))])),
        ],
    )
}

fn sink(config: &ConfigNode) -> StripeSink {
    StripeSink::new(StripeMeter::from_config(config).unwrap().settings)
}

fn event(id: &str, tenant: Option<&str>, meters: &str) -> Vec<u8> {
    let tenant = tenant.map_or("null".to_string(), |t| format!("\"{t}\""));
    format!(r#"{{"specversion":"1.0","id":"{id}","source":"tollgate/t","type":"dev.tollgate.request","time":"2026-11-26T12:00:00.123Z","datacontenttype":"application/json","data":{{"tenant":{tenant},"meters":{meters},"outcome":"allowed"}}}}"#).into_bytes()
}

#[test]
fn a_good_config_builds_and_hides_its_key() {
    let p = StripeMeter::from_config(&good()).unwrap();
    assert_eq!(p.settings.api_base, "http://127.0.0.1:9");
    assert_eq!(p.settings.concurrency, 4);
    assert!(!format!("{p:?}").contains("sk_test"));
    assert!(tollgate_plugin::DynPlugin::event_sink(&p)
        .unwrap()
        .is_some());
}

#[test]
fn config_mistakes_are_all_reported_with_positions() {
    let bad = map(
        1,
        vec![
            ("api_key", s(2, "")),
            ("api_base", s(3, "ftp://x")),
            ("meters", map(4, vec![])),
            ("customers", map(5, vec![("acme", s(6, "acme"))])),
            ("customer_from", s(7, "user")),
            ("concurrency", ConfigNode::new(8, 5, ConfigValue::Int(0))),
            ("retries", s(9, "3")),
        ],
    );
    let errors: Vec<String> = StripeMeter::from_config(&bad)
        .unwrap_err()
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(errors.len(), 7, "{errors:#?}");
    assert!(
        errors[0].starts_with("1:5: unknown key `retries`"),
        "{errors:#?}"
    );
    assert!(errors
        .iter()
        .any(|e| e == "2:5: `api_key` is empty (is its environment variable set?)"));
    assert!(errors
        .iter()
        .any(|e| e.starts_with("3:5: `api_base` must start with https://")));
    assert!(errors
        .iter()
        .any(|e| e.starts_with("4:3: `meters` needs at least one entry")));
    assert!(
        errors
            .iter()
            .any(|e| e
                == "6:5: `customers.acme` must be a Stripe customer id (cus_…), found \"acme\"")
    );
    assert!(errors
        .iter()
        .any(|e| e.starts_with("7:5: `customer_from` must be `tenant`")));
    assert!(errors
        .iter()
        .any(|e| e == "8:5: `concurrency` must be 1 to 32, found 0"));

    let empty = ConfigNode::new(1, 3, ConfigValue::Null);
    assert_eq!(StripeMeter::from_config(&empty).unwrap_err().len(), 1);
    let no_customers = map(
        1,
        vec![
            ("api_key", s(2, "k")),
            ("meters", map(3, vec![("r", s(3, "x"))])),
        ],
    );
    let e = StripeMeter::from_config(&no_customers).unwrap_err();
    assert_eq!(
        e[0].message,
        "`stripe-meter` needs `customers` (tenant → cus_…) or `customer_from: tenant`"
    );
}

#[test]
fn events_become_meter_events_with_stable_identifiers() {
    let mut sink = sink(&good());
    let a = event("e1", Some("acme"), r#"{"requests":1,"tokens":0,"other":7}"#);
    let b = event("e2", Some("nobody"), r#"{"requests":1}"#);
    let c = event("e3", None, r#"{"requests":1}"#);
    let d =
        br#"{"specversion":"1.0","id":"m1","type":"dev.tollgate.milestone","time":"x"}"#.to_vec();
    let events: Vec<&[u8]> = vec![&a, &b, &c, &d, b"not json"];
    let (todo, skipped) = sink.plan(&events);
    assert_eq!(
        todo,
        vec![MeterEvent {
            identifier: "e1-requests".into(),
            event_name: "api_requests".into(),
            customer: "cus_A".into(),
            value: 1,
            timestamp: 1_795_694_400,
        }]
    );
    assert_eq!(
        (skipped.no_customer, skipped.zero, skipped.unreadable),
        (2, 1, 1)
    );
    let fields = form(&todo[0]);
    assert_eq!(fields[0], ("event_name", "api_requests".to_string()));
    assert_eq!(
        fields[1],
        ("payload[stripe_customer_id]", "cus_A".to_string())
    );
    assert_eq!(fields[2], ("payload[value]", "1".to_string()));
    assert_eq!(fields[3], ("identifier", "e1-requests".to_string()));
    assert_eq!(fields[4], ("timestamp", "1795694400".to_string()));
}

#[test]
fn customer_from_tenant_maps_any_tenant_but_customers_win() {
    let mut cfg = good();
    if let ConfigValue::Map(m) = &mut cfg.value {
        m.push((s(9, "customer_from"), s(9, "tenant")));
    }
    let mut sink = sink(&cfg);
    let a = event("e1", Some("acme"), r#"{"requests":2}"#);
    let b = event("e2", Some("cus_Zed"), r#"{"requests":3}"#);
    let (todo, _) = sink.plan(&[&a, &b]);
    let got: Vec<(&str, u64)> = todo
        .iter()
        .map(|e| (e.customer.as_str(), e.value))
        .collect();
    assert_eq!(got, vec![("cus_A", 2), ("cus_Zed", 3)]);
}

#[test]
fn answers_are_classified() {
    assert_eq!(
        classify_for_test(
            400,
            br#"{"error":{"code":"resource_already_exists","message":"dup"}}"#
        ),
        "accepted"
    );
    assert_eq!(
        classify_for_test(
            400,
            br#"{"error":{"message":"An event with identifier x already exists."}}"#
        ),
        "accepted"
    );
    assert_eq!(
        classify_for_test(400, br#"{"error":{"message":"No such customer"}}"#),
        "rejected"
    );
    assert_eq!(classify_for_test(404, b""), "rejected");
    assert_eq!(classify_for_test(429, b""), "retry");
    assert_eq!(classify_for_test(500, b"oops"), "retry");
    assert_eq!(classify_for_test(401, b""), "retry");
}

#[test]
fn the_accepted_set_is_bounded() {
    assert_eq!(
        remembered_for_test(2, &["a", "b", "c"]),
        vec![false, true, true]
    );
}
