//! A plugin's configuration: the YAML under `plugins.<name>` as a small tree of positioned
//! values, and the error type that points back into the file.
//!
//! Why not serde: tollgate's `check` reports *every* mistake in a file with its `line:col`, and
//! serde stops at the first. Handing plugins the positioned tree (converted from tollgate's own,
//! with `${VAR}` already expanded) lets each plugin validate its settings and still speak in the
//! same `file:line:col: message` voice as the rest of the config.

use std::fmt;

/// One YAML value of a plugin's config, with the position where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigNode {
    /// 1-based line.
    pub line: u64,
    /// 1-based column.
    pub col: u64,
    /// What it holds.
    pub value: ConfigValue,
}

/// The value of a [`ConfigNode`]. Scalars keep the YAML core-schema type the parser gave them.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigValue {
    /// `~`, `null`, or nothing written (`llm-usage:` alone).
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer that fits in i64.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A string (environment references already expanded).
    Str(String),
    /// A list.
    Seq(Vec<ConfigNode>),
    /// A mapping in document order; keys are `Str` nodes.
    Map(Vec<(ConfigNode, ConfigNode)>),
}

/// A mistake in a plugin's config, at the node it concerns. tollgate prints it as
/// `file:line:col: message`, like every other config error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{col}: {message}")]
pub struct ConfigError {
    /// 1-based line.
    pub line: u64,
    /// 1-based column.
    pub col: u64,
    /// What is wrong and, where it helps, what would be right.
    pub message: String,
}

impl ConfigValue {
    /// A word for error messages: "a string", "a mapping", ...
    pub fn kind(&self) -> &'static str {
        match self {
            ConfigValue::Null => "nothing",
            ConfigValue::Bool(_) => "a boolean",
            ConfigValue::Int(_) => "an integer",
            ConfigValue::Float(_) => "a number",
            ConfigValue::Str(_) => "a string",
            ConfigValue::Seq(_) => "a list",
            ConfigValue::Map(_) => "a mapping",
        }
    }
}

impl fmt::Display for ConfigValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())
    }
}

// === impl ConfigNode ===

impl ConfigNode {
    /// A node at `line:col`.
    pub fn new(line: u64, col: u64, value: ConfigValue) -> ConfigNode {
        ConfigNode { line, col, value }
    }

    /// An error located at this node.
    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            line: self.line,
            col: self.col,
            message: message.into(),
        }
    }

    /// `true` for `null` or an empty value.
    pub fn is_null(&self) -> bool {
        matches!(self.value, ConfigValue::Null)
    }

    /// The entries of a mapping as `(key, key node, value)`; `null` reads as an empty mapping.
    pub fn entries(
        &self,
        what: &str,
    ) -> Result<Vec<(&str, &ConfigNode, &ConfigNode)>, ConfigError> {
        match &self.value {
            ConfigValue::Null => Ok(Vec::new()),
            ConfigValue::Map(entries) => Ok(entries
                .iter()
                .filter_map(|(k, v)| match &k.value {
                    ConfigValue::Str(s) => Some((s.as_str(), k, v)),
                    _ => None,
                })
                .collect()),
            other => Err(self.error(format!("{what} must be a mapping, found {}", other.kind()))),
        }
    }

    /// Checks that a mapping holds only `allowed` keys: one error per unknown key, at the key.
    pub fn unknown_keys(&self, what: &str, allowed: &[&str]) -> Vec<ConfigError> {
        match self.entries(what) {
            Ok(entries) => entries
                .into_iter()
                .filter(|(k, _, _)| !allowed.contains(k))
                .map(|(k, key, _)| {
                    key.error(format!(
                        "unknown key `{k}` in {what}; expected one of: {}",
                        allowed.join(", ")
                    ))
                })
                .collect(),
            Err(e) => vec![e],
        }
    }

    /// The value of `key` in a mapping, if present.
    pub fn get(&self, key: &str) -> Option<&ConfigNode> {
        match &self.value {
            ConfigValue::Map(entries) => entries
                .iter()
                .find(|(k, _)| matches!(&k.value, ConfigValue::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// A string.
    pub fn str(&self, what: &str) -> Result<&str, ConfigError> {
        match &self.value {
            ConfigValue::Str(s) => Ok(s),
            other => Err(self.error(format!("{what} must be a string, found {}", other.kind()))),
        }
    }

    /// A whole number of at least 0.
    pub fn u64(&self, what: &str) -> Result<u64, ConfigError> {
        match &self.value {
            ConfigValue::Int(i) if *i >= 0 => Ok(*i as u64),
            ConfigValue::Int(i) => Err(self.error(format!("{what} must be at least 0, found {i}"))),
            other => Err(self.error(format!("{what} must be an integer, found {}", other.kind()))),
        }
    }

    /// A number (integer or float), finite and at least 0.
    pub fn non_negative(&self, what: &str) -> Result<f64, ConfigError> {
        let v = match &self.value {
            ConfigValue::Int(i) => *i as f64,
            ConfigValue::Float(f) => *f,
            other => {
                return Err(self.error(format!("{what} must be a number, found {}", other.kind())))
            }
        };
        if !v.is_finite() || v < 0.0 {
            return Err(self.error(format!("{what} must be a number of at least 0, found {v}")));
        }
        Ok(v)
    }

    /// A boolean.
    pub fn bool(&self, what: &str) -> Result<bool, ConfigError> {
        match &self.value {
            ConfigValue::Bool(b) => Ok(*b),
            other => Err(self.error(format!(
                "{what} must be true or false, found {}",
                other.kind()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn s(line: u64, text: &str) -> ConfigNode {
        ConfigNode::new(line, 3, ConfigValue::Str(text.into()))
    }

    #[test]
    fn errors_point_at_their_node() {
        let map = ConfigNode::new(
            1,
            1,
            ConfigValue::Map(vec![
                (s(2, "header"), s(2, "x-deny")),
                (
                    s(3, "stauts"),
                    ConfigNode::new(3, 11, ConfigValue::Int(403)),
                ),
            ]),
        );
        let errors = map.unknown_keys("`deny-header`", &["header", "status"]);
        assert_eq!(errors.len(), 1);
        assert_eq!(
            errors[0].to_string(),
            "3:3: unknown key `stauts` in `deny-header`; expected one of: header, status"
        );
        assert_eq!(
            map.get("header").unwrap().str("`header`").unwrap(),
            "x-deny"
        );
        let e = map.get("header").unwrap().u64("`header`").unwrap_err();
        assert_eq!(e.message, "`header` must be an integer, found a string");
    }
}
