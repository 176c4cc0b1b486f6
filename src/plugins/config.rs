//! Decoding of the top-level `plugins:` map: each named plugin is found in the registry and
//! builds itself from its own config node, whose errors come back with their positions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tollgate_plugin::{ConfigNode, ConfigValue, DynPlugin};

use super::{registry, RoutePlugin};
use crate::config::decode::Decoder;
use crate::config::node::{Node, Pos, Value};

/// The plugins the config sets up.
#[derive(Default)]
pub struct Configured {
    /// Built plugins, by name.
    pub built: BTreeMap<String, Arc<dyn DynPlugin>>,
    /// Every name under `plugins:`, valid or not: a route naming a broken plugin gets no second
    /// error for it.
    pub declared: BTreeSet<String>,
}

/// `plugins: { <name>: <its config>, … }`
pub fn decode(d: &mut Decoder, n: &Node) -> Configured {
    let mut out = Configured::default();
    for (name, pos, value) in d.named(n, "`plugins`") {
        out.declared.insert(name.clone());
        let Some(registration) = registry::find(&name) else {
            d.err(pos, unknown("", &name));
            continue;
        };
        let Some(config) = convert(d, value) else {
            continue;
        };
        match (registration.build)(&config) {
            Ok(plugin) => {
                out.built.insert(name, plugin);
            }
            Err(errors) => {
                for e in errors {
                    d.err(
                        Pos {
                            line: e.line,
                            col: e.col,
                        },
                        format!("plugin `{name}`: {}", e.message),
                    );
                }
            }
        }
    }
    out
}

/// A route's `plugins: [name, …]`. Each must be set up under the top-level `plugins:` (where its
/// settings live), so one plugin has one configuration however many routes use it. Returns the
/// names as written (for checking `plugin:<name>` meters) and the plugins that built.
pub fn route_list(
    d: &mut Decoder,
    n: &Node,
    route: &str,
    configured: &Configured,
) -> Option<(BTreeSet<String>, Vec<RoutePlugin>)> {
    let mut names = BTreeSet::new();
    let mut out = Vec::new();
    for (name, pos) in d.strings(n, "`plugins`")? {
        if !names.insert(name.clone()) {
            d.err(pos, format!("{route} lists plugin `{name}` twice"));
            continue;
        }
        match configured.built.get(&name) {
            Some(p) => out.push(RoutePlugin(p.clone())),
            // Declared but broken: its own error says why.
            None if configured.declared.contains(&name) => {}
            None if registry::find(&name).is_some() => d.err(
                pos,
                format!("{route} uses plugin `{name}`, which is not set up under the top-level `plugins`; add `{name}: {{}}` there"),
            ),
            None => d.err(pos, unknown(&format!("{route} uses "), &name)),
        }
    }
    Some((names, out))
}

/// "unknown plugin `x`; this tollgate is built with: …"
fn unknown(prefix: &str, name: &str) -> String {
    format!(
        "{prefix}unknown plugin `{name}`; this tollgate is built with: {}",
        registry::names()
    )
}

/// tollgate's node tree → the API's [`ConfigNode`], expanding `${VAR}` in strings like every
/// other string of the config. `None` when an expansion failed (already reported).
fn convert(d: &mut Decoder, n: &Node) -> Option<ConfigNode> {
    let value = match &n.value {
        Value::Null => ConfigValue::Null,
        Value::Bool(b) => ConfigValue::Bool(*b),
        Value::Int(i) => ConfigValue::Int(*i),
        Value::Float(f) => ConfigValue::Float(*f),
        Value::Str(_) => ConfigValue::Str(d.string(n, "a plugin setting")?),
        Value::Seq(items) => {
            let items: Vec<Option<ConfigNode>> = items.iter().map(|i| convert(d, i)).collect();
            ConfigValue::Seq(items.into_iter().collect::<Option<_>>()?)
        }
        Value::Map(entries) => {
            let mut out = Vec::with_capacity(entries.len());
            let mut ok = true;
            for (k, v) in entries {
                match (convert(d, k), convert(d, v)) {
                    (Some(k), Some(v)) => out.push((k, v)),
                    _ => ok = false,
                }
            }
            if !ok {
                return None;
            }
            ConfigValue::Map(out)
        }
    };
    Some(ConfigNode::new(n.pos.line, n.pos.col, value))
}
