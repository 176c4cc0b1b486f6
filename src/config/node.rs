//! A YAML document as a tree of nodes that remember where they were written.
//!
//! The config is decoded from this tree by hand (see `decode.rs`) instead of straight into serde
//! structs, because serde stops at the first unknown key or wrong type while `tollgate check`
//! must report *every* mistake in a file, each with its `line:col`.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;
use std::fmt;

/// Where a node was written: 1-based line and column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pos {
    /// 1-based line.
    pub line: u64,
    /// 1-based column.
    pub col: u64,
}

/// One YAML node and its position.
#[derive(Clone, Debug)]
pub struct Node {
    /// Where the node starts.
    pub pos: Pos,
    /// What it holds.
    pub value: Value,
}

/// The value of a node. Scalars keep the YAML core-schema type the parser gave them.
#[derive(Clone, Debug)]
pub enum Value {
    /// `~`, `null` or an empty value.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer that fits in i64.
    Int(i64),
    /// A floating point number.
    Float(f64),
    /// A string.
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in document order. Keys are strings (non-string keys are rendered as text).
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// A word for error messages: "a string", "a mapping", ...
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "nothing",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// A parse failure of the YAML itself (syntax, duplicate keys, budgets).
#[derive(Debug)]
pub struct ParseError {
    /// Where it happened, when known.
    pub pos: Pos,
    /// What happened.
    pub message: String,
}

/// Parses one YAML document into a node tree.
pub fn parse(text: &str) -> Result<Node, ParseError> {
    let options = serde_saphyr::options! {
        with_snippet: false,
    };
    let spanned: Result<Spanned<Value>, _> = serde_saphyr::from_str_with_options(text, options);
    match spanned {
        Ok(s) => Ok(Node {
            pos: pos_of(&s),
            value: s.value,
        }),
        Err(e) => {
            let pos = e
                .location()
                .map(|l| Pos {
                    line: l.line(),
                    col: l.column(),
                })
                .unwrap_or(Pos { line: 1, col: 1 });
            let message = first_line(&e.without_snippet().to_string());
            Err(ParseError { pos, message })
        }
    }
}

fn first_line(s: &str) -> String {
    // serde-saphyr appends " at line X column Y" to some messages; our prefix already says it.
    let line = s.lines().next().unwrap_or("invalid YAML").trim();
    let line = match line.find(" at line ") {
        Some(i) => &line[..i],
        None => line,
    };
    // Speak of the user's file, not of the parser's options.
    if let Some(rest) = line.strip_prefix("duplicate mapping key: ") {
        let key = rest.split(',').next().unwrap_or(rest).trim();
        return format!("duplicate key `{key}`; each key may appear once in a mapping");
    }
    format!("invalid YAML: {line}")
}

fn pos_of<T>(s: &Spanned<T>) -> Pos {
    Pos {
        line: s.referenced.line(),
        col: s.referenced.column(),
    }
}

fn node(s: Spanned<Value>) -> Node {
    Node {
        pos: pos_of(&s),
        value: s.value,
    }
}

// === impl Value: Deserialize ===

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        i64::try_from(v)
            .map(Value::Int)
            .map_err(|_| E::custom("integer is too large"))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Value>>()? {
            items.push(node(item));
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<Value>>()? {
            let value = map.next_value::<Spanned<Value>>()?;
            let mut key = node(key);
            key.value = match key.value {
                Value::Str(s) => Value::Str(s),
                Value::Int(i) => Value::Str(i.to_string()),
                Value::Bool(b) => Value::Str(b.to_string()),
                Value::Null => Value::Str("null".into()),
                Value::Float(f) => Value::Str(f.to_string()),
                other => {
                    return Err(de::Error::custom(format!(
                        "a mapping key cannot be {}",
                        other.kind()
                    )))
                }
            };
            entries.push((key, node(value)));
        }
        Ok(Value::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_carry_positions() {
        let n = parse("a:\n  b: 5\n  c: [x, \"y\"]\n").unwrap();
        let Value::Map(m) = &n.value else {
            panic!("not a map")
        };
        let (k, v) = &m[0];
        assert_eq!(k.pos, Pos { line: 1, col: 1 });
        let Value::Map(inner) = &v.value else {
            panic!("not a map")
        };
        assert_eq!(inner[0].1.pos, Pos { line: 2, col: 6 });
        assert!(matches!(inner[0].1.value, Value::Int(5)));
        let Value::Seq(s) = &inner[1].1.value else {
            panic!("not a seq")
        };
        assert_eq!(s[1].pos, Pos { line: 3, col: 10 });
    }

    #[test]
    fn syntax_errors_have_positions() {
        let e = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.pos.line >= 1, "{e:?}");
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let e = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(e.pos.line, 2, "{e:?}");
    }
}
