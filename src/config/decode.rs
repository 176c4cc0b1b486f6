//! Small typed readers over the node tree that collect every error instead of stopping at one.

use std::time::Duration;

use super::node::{Node, Pos, Value};
use super::ConfigError;

/// Reads typed values out of nodes, recording each mistake with its position.
pub struct Decoder<'e> {
    file: String,
    env: &'e dyn Fn(&str) -> Option<String>,
    /// Every error found so far, in document order of discovery.
    pub errors: Vec<ConfigError>,
    /// Whether host names (upstream targets) are looked up; `tollgate check --no-resolve`
    /// turns it off for a machine without the DNS the gateway will have.
    pub resolve_hosts: bool,
}

/// The entries of a mapping whose keys were checked against the allowed set.
pub struct Fields<'n> {
    /// The mapping node itself (for "missing key" errors).
    pub pos: Pos,
    entries: &'n [(Node, Node)],
}

impl<'n> Fields<'n> {
    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| matches!(&k.value, Value::Str(s) if s == key))
            .map(|(_, v)| v)
    }
}

impl<'e> Decoder<'e> {
    /// A decoder for `file`, expanding `${VAR}` with `env`.
    pub fn new(file: &str, env: &'e dyn Fn(&str) -> Option<String>) -> Self {
        Decoder {
            file: file.to_string(),
            env,
            errors: Vec::new(),
            resolve_hosts: true,
        }
    }

    /// A `ca_file` (`key` names it in errors): a PEM file relative to the config file's
    /// directory, read and checked now so `tollgate check` reports a bad one at its position,
    /// and only with a `url` starting with `tls_scheme`. No node: no extra certificates.
    pub fn ca_file(
        &mut self,
        n: Option<&Node>,
        key: &str,
        url: Option<&str>,
        tls_scheme: &str,
    ) -> Option<Vec<rustls::pki_types::CertificateDer<'static>>> {
        let Some(n) = n else {
            return Some(Vec::new());
        };
        let path = self.string(n, &format!("`{key}`"))?;
        if url.is_some_and(|u| !u.starts_with(tls_scheme)) {
            self.err(
                n.pos,
                format!("`{key}` is used only with a `url` starting with {tls_scheme}"),
            );
            return None;
        }
        crate::tls::read_ca_file(&self.relative(&path))
            .map_err(|e| self.err(n.pos, e))
            .ok()
    }

    /// A path written in the config, relative to the config file's directory.
    pub fn relative(&self, path: &str) -> std::path::PathBuf {
        let path = std::path::Path::new(path);
        match std::path::Path::new(&self.file).parent() {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_path_buf(),
        }
    }

    /// Records an error at `pos`.
    pub fn err(&mut self, pos: Pos, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.clone(),
            pos,
            message: message.into(),
        });
    }

    /// A mapping whose keys must all be in `allowed`; unknown keys are reported one by one.
    pub fn fields<'n>(&mut self, n: &'n Node, what: &str, allowed: &[&str]) -> Option<Fields<'n>> {
        let Value::Map(entries) = &n.value else {
            self.err(
                n.pos,
                format!("{what} must be a mapping, found {}", n.value.kind()),
            );
            return None;
        };
        for (k, _) in entries {
            let Value::Str(name) = &k.value else { continue };
            if !allowed.contains(&name.as_str()) {
                let message = match allowed.iter().find(|a| edit_distance(a, name) <= 2) {
                    Some(near) => format!("unknown key `{name}` in {what}; did you mean `{near}`?"),
                    None => format!(
                        "unknown key `{name}` in {what}; expected one of: {}",
                        allowed.join(", ")
                    ),
                };
                self.err(k.pos, message);
            }
        }
        Some(Fields {
            pos: n.pos,
            entries,
        })
    }

    /// A mapping with free-form keys (names of plans, tenants, ...): `(name, key pos, value)`.
    pub fn named<'n>(&mut self, n: &'n Node, what: &str) -> Vec<(String, Pos, &'n Node)> {
        match &n.value {
            Value::Map(entries) => entries
                .iter()
                .filter_map(|(k, v)| match &k.value {
                    Value::Str(name) => Some((name.clone(), k.pos, v)),
                    _ => None,
                })
                .collect(),
            Value::Null => Vec::new(),
            other => {
                self.err(
                    n.pos,
                    format!("{what} must be a mapping of names, found {}", other.kind()),
                );
                Vec::new()
            }
        }
    }

    /// A required key: reports it missing at the mapping's position.
    pub fn require<'n>(&mut self, f: &Fields<'n>, key: &str, what: &str) -> Option<&'n Node> {
        let v = f.get(key);
        if v.is_none() {
            self.err(f.pos, format!("{what} is missing `{key}`"));
        }
        v
    }

    /// A string, with `${VAR}` / `${VAR:-default}` expanded.
    pub fn string(&mut self, n: &Node, what: &str) -> Option<String> {
        match &n.value {
            Value::Str(s) => self.expand(s, n.pos),
            other => {
                self.err(
                    n.pos,
                    format!("{what} must be a string, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// A list of nodes (`null` reads as an empty list).
    pub fn list<'n>(&mut self, n: &'n Node, what: &str) -> Option<&'n [Node]> {
        match &n.value {
            Value::Seq(items) => Some(items),
            Value::Null => Some(&[]),
            other => {
                self.err(
                    n.pos,
                    format!("{what} must be a list, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// A list of strings.
    pub fn strings(&mut self, n: &Node, what: &str) -> Option<Vec<(String, Pos)>> {
        let items = self.list(n, what)?;
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            if let Some(s) = self.string(item, what) {
                out.push((s, item.pos));
            }
        }
        Some(out)
    }

    /// An integer in `min..=max`. A string holding an integer (for example from `${VAR}`) is
    /// accepted too.
    pub fn int(&mut self, n: &Node, what: &str, min: i64, max: i64) -> Option<i64> {
        let v = match &n.value {
            Value::Int(i) => *i,
            Value::Str(s) => {
                let s = self.expand(s, n.pos)?;
                match s.trim().parse::<i64>() {
                    Ok(i) => i,
                    Err(_) => {
                        self.err(n.pos, format!("{what} must be an integer, found \"{s}\""));
                        return None;
                    }
                }
            }
            other => {
                self.err(
                    n.pos,
                    format!("{what} must be an integer, found {}", other.kind()),
                );
                return None;
            }
        };
        if v < min || v > max {
            let range = if max == i64::MAX {
                format!("at least {min}")
            } else {
                format!("between {min} and {max}")
            };
            self.err(n.pos, format!("{what} must be {range}, found {v}"));
            return None;
        }
        Some(v)
    }

    /// A number (integer or float).
    pub fn number(&mut self, n: &Node, what: &str) -> Option<f64> {
        match &n.value {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            other => {
                self.err(
                    n.pos,
                    format!("{what} must be a number, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// A boolean.
    pub fn bool(&mut self, n: &Node, what: &str) -> Option<bool> {
        match &n.value {
            Value::Bool(b) => Some(*b),
            other => {
                self.err(
                    n.pos,
                    format!("{what} must be true or false, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// A duration such as `50ms`, `2s`, `1m`, `1h`, `1d`.
    pub fn duration(&mut self, n: &Node, what: &str) -> Option<Duration> {
        let s = self.string(n, what)?;
        match parse_duration(&s) {
            Some(d) => Some(d),
            None => {
                self.err(
                    n.pos,
                    format!("{what} must be a duration like 50ms, 2s, 1m, 1h or 1d, found \"{s}\""),
                );
                None
            }
        }
    }

    /// A size in bytes: an integer, or a string such as `512kb`, `10mb`, `1gb` (units of 1024).
    pub fn size(&mut self, n: &Node, what: &str) -> Option<u64> {
        if let Value::Int(_) = n.value {
            return self.int(n, what, 0, i64::MAX).map(|i| i as u64);
        }
        let s = self.string(n, what)?;
        match parse_size(&s) {
            Some(size) => Some(size),
            None => {
                self.err(
                    n.pos,
                    format!("{what} must be a size like 512kb, 10mb or 1gb (or a number of bytes), found \"{s}\""),
                );
                None
            }
        }
    }

    /// One of a fixed set of words.
    pub fn word<T: Copy>(&mut self, n: &Node, what: &str, words: &[(&str, T)]) -> Option<T> {
        let s = self.string(n, what)?;
        match words.iter().find(|(w, _)| *w == s) {
            Some((_, v)) => Some(*v),
            None => {
                let names: Vec<&str> = words.iter().map(|(w, _)| *w).collect();
                self.err(
                    n.pos,
                    format!("{what} must be one of: {}; found \"{s}\"", names.join(", ")),
                );
                None
            }
        }
    }

    /// Expands `${NAME}` and `${NAME:-default}`.
    fn expand(&mut self, s: &str, pos: Pos) -> Option<String> {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                self.err(
                    pos,
                    "unterminated `${` in string; write ${NAME} or ${NAME:-default}",
                );
                return None;
            };
            let inner = &after[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            let valid =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                self.err(
                    pos,
                    format!("`${{{inner}}}` is not a valid environment variable reference"),
                );
                return None;
            }
            match ((self.env)(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    self.err(
                        pos,
                        format!("environment variable `{name}` is not set (write ${{{name}:-default}} to give a default)"),
                    );
                    return None;
                }
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Some(out)
    }
}

/// Levenshtein distance, for "did you mean" hints on short key names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Parses `<integer><unit>` with unit `ms`, `s`, `m`, `h` or `d`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => return Some(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(secs).map(Duration::from_secs)
}

/// `512kb`, `10mb`, `1gb` (units of 1024), `100b` or `100`: bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let scale: u64 = match unit {
        "" | "b" => 1,
        "kb" => 1 << 10,
        "mb" => 1 << 20,
        "gb" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("100b"), Some(100));
        assert_eq!(parse_size("512kb"), Some(512 * 1024));
        assert_eq!(parse_size("10MB"), Some(10 * 1024 * 1024));
        assert_eq!(parse_size("1gb"), Some(1 << 30));
        for bad in ["", "mb", "10 mb", "1.5mb", "10m", "-1", "99999999999999gb"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("50ms"), Some(Duration::from_millis(50)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1d"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1"), None);
        assert_eq!(parse_duration("ms"), None);
        assert_eq!(parse_duration("1w"), None);
        assert_eq!(parse_duration("-1s"), None);
    }

    #[test]
    fn env_expansion() {
        let env = |k: &str| (k == "HOST").then(|| "db".to_string());
        let mut d = Decoder::new("f.yaml", &env);
        let p = Pos { line: 1, col: 1 };
        assert_eq!(
            d.expand("redis://${HOST}:${PORT:-6379}/0", p).as_deref(),
            Some("redis://db:6379/0")
        );
        assert_eq!(d.expand("${MISSING}", p), None);
        assert_eq!(d.errors.len(), 1);
        assert!(
            d.errors[0].message.contains("`MISSING` is not set"),
            "{}",
            d.errors[0]
        );
    }
}
