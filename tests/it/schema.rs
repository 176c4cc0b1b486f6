//! `tollgate schema`: the committed schema is current, every shipped config validates against
//! it, and every config with an unknown key does not.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::gateway::BIN;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A validator for the part of JSON Schema the schema uses: `type`, `properties`, `required`,
/// `additionalProperties`, `items`, `enum`, `anyOf`, `minimum`, `maximum`, `exclusiveMinimum`.
/// (`pattern` is not checked.) Returns the first violation, as a path and a reason.
fn validate(schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    let fail = |why: String| Err(format!("{at}: {why}"));
    if let Some(options) = schema.get("anyOf").and_then(Value::as_array) {
        if !options.iter().any(|o| validate(o, v, at).is_ok()) {
            return fail(format!("matches none of {options:?}"));
        }
    }
    if let Some(words) = schema.get("enum").and_then(Value::as_array) {
        if !words.contains(v) {
            return fail(format!("{v} is not one of {words:?}"));
        }
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let Some(map) = v.as_object() else {
                return fail(format!("{v} is not a mapping"));
            };
            let props = schema.get("properties").and_then(Value::as_object);
            for key in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if !map.contains_key(key.as_str().unwrap()) {
                    return fail(format!("missing {key}"));
                }
            }
            for (k, item) in map {
                let path = format!("{at}.{k}");
                match (
                    props.and_then(|p| p.get(k)),
                    schema.get("additionalProperties"),
                ) {
                    (Some(s), _) => validate(s, item, &path)?,
                    (None, Some(Value::Bool(false))) => return Err(format!("{path}: unknown key")),
                    (None, Some(s @ Value::Object(_))) => validate(s, item, &path)?,
                    (None, _) => {}
                }
            }
        }
        Some("array") => {
            let Some(items) = v.as_array() else {
                return fail(format!("{v} is not a list"));
            };
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate(s, item, &format!("{at}[{i}]"))?;
                }
            }
        }
        Some("string") if !v.is_string() => return fail(format!("{v} is not a string")),
        Some("integer") if !(v.is_i64() || v.is_u64()) => {
            return fail(format!("{v} is not an integer"))
        }
        Some("number") if !v.is_number() => return fail(format!("{v} is not a number")),
        Some("boolean") if !v.is_boolean() => return fail(format!("{v} is not a boolean")),
        _ => {}
    }
    if let Some(n) = v.as_f64() {
        let bound = |k: &str| schema.get(k).and_then(Value::as_f64);
        if bound("minimum").is_some_and(|m| n < m)
            || bound("maximum").is_some_and(|m| n > m)
            || bound("exclusiveMinimum").is_some_and(|m| n <= m)
        {
            return fail(format!("{n} is out of range"));
        }
    }
    Ok(())
}

fn committed_schema() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(root().join("config/tollgate.schema.json")).unwrap(),
    )
    .unwrap()
}

#[test]
fn the_committed_schema_is_what_tollgate_schema_prints() {
    let out = std::process::Command::new(BIN)
        .arg("schema")
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        printed,
        committed_schema(),
        "config/tollgate.schema.json is stale: run `tollgate schema > config/tollgate.schema.json`"
    );
}

#[test]
fn every_shipped_config_validates_and_points_editors_at_the_schema() {
    let schema = committed_schema();
    let mut checked = 0;
    for entry in std::fs::read_dir(root().join("config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            validate(&schema, &yaml(&path), "$")
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let first = std::fs::read_to_string(&path).unwrap();
            assert!(
                first.starts_with("# yaml-language-server: $schema=./tollgate.schema.json"),
                "{} does not start with the schema comment",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 2);
}

#[test]
fn configs_with_an_unknown_key_fail_the_schema_too() {
    let schema = committed_schema();
    let dir = root().join("tests/fixtures/config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "expect") {
            continue;
        }
        // Plugins check their own settings (`tollgate check` does); the schema does not know them.
        let expected = std::fs::read_to_string(&path).unwrap();
        if !expected.contains("unknown key") || expected.contains("plugin `") {
            continue;
        }
        let config = path.with_extension("yaml");
        let result = validate(&schema, &yaml(&config), "$");
        assert!(
            result.is_err(),
            "{} has an unknown key the schema accepts",
            config.display()
        );
        checked += 1;
    }
    assert!(checked >= 2, "found {checked} unknown-key fixtures");
}
