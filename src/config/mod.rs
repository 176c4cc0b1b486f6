//! Configuration: YAML → node tree (`node.rs`) → checked decoding that collects every error
//! (`decode.rs`, `sections.rs`, `plans.rs`, `routes.rs`) → validated model (`model.rs`).

mod cors;
pub mod decode;
mod jwt;
pub mod model;
pub mod node;
mod onboarding;
mod plans;
mod routes;
pub mod schema;
mod sections;
mod telemetry;
mod upstreams;
mod webhooks;

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

pub use model::*;
use node::{Pos, Value};
pub use onboarding::{Activation, Onboarding};
pub use telemetry::{OnFull, PluginSink, SinkConfig, SinkKind, Telemetry};
pub use webhooks::{Webhook, WebhookSecret};

/// One configuration mistake, printed as `file:line:col: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, as given on the command line.
    pub file: String,
    /// Where in it.
    pub pos: Pos,
    /// What is wrong and, where it helps, what would be right.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.pos.line, self.pos.col, self.message
        )
    }
}

/// Every mistake found in one file.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// Reads and validates a config file, expanding `${VAR}` from the process environment.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_file(path, true)
}

/// [`load`] without looking up the host names of upstream targets (`tollgate check
/// --no-resolve`): every other check is made. The result is for checking only; its host-name
/// targets have no address.
pub fn load_unresolved(path: &Path) -> Result<Config, ConfigErrors> {
    load_file(path, false)
}

fn load_file(path: &Path, resolve_hosts: bool) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            pos: Pos { line: 0, col: 0 },
            message: format!("cannot read the file: {e}"),
        }])
    })?;
    let env = |name: &str| std::env::var(name).ok();
    let mut config = decode_str(&file, &text, &env, resolve_hosts)?;
    config.source = path.to_path_buf();
    Ok(config)
}

/// Validates config text. `file` names it in errors; `env` answers `${VAR}` look-ups.
pub fn load_str(
    file: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    decode_str(file, text, env, true)
}

fn decode_str(
    file: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    resolve_hosts: bool,
) -> Result<Config, ConfigErrors> {
    let root = node::parse(text).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.to_string(),
            pos: e.pos,
            message: e.message,
        }])
    })?;
    let mut d = decode::Decoder::new(file, env);
    d.resolve_hosts = resolve_hosts;
    let config = decode_root(&mut d, &root);
    match config {
        Some(c) if d.errors.is_empty() => Ok(c),
        _ => {
            let mut errors = d.errors;
            if errors.is_empty() {
                errors.push(ConfigError {
                    file: file.to_string(),
                    pos: root.pos,
                    message: "the configuration is incomplete".into(),
                });
            }
            errors.sort_by_key(|e| (e.pos.line, e.pos.col));
            Err(ConfigErrors(errors))
        }
    }
}

const TOP: &[&str] = &[
    "server",
    "admin",
    "store",
    "upstreams",
    "tenants",
    "auth",
    "plans",
    "routes",
    "telemetry",
    "onboarding",
    "cors",
    "plugins",
];

/// Sections of the contract that later releases implement: rejected clearly, never ignored.
const NOT_YET: &[&str] = &[];

fn decode_root(d: &mut decode::Decoder, root: &node::Node) -> Option<Config> {
    if matches!(root.value, Value::Null) {
        d.err(
            root.pos,
            "the file is empty; see config/quickstart.yaml for a starting point",
        );
        return None;
    }
    let f = d.fields(root, "the top level", TOP)?;
    for key in NOT_YET {
        if let Some(n) = f.get(key) {
            d.err(
                n.pos,
                format!("`{key}` is not supported yet by this version of tollgate; remove it"),
            );
        }
    }
    // Names first, so references can be checked wherever they appear.
    let plan_names: BTreeSet<String> = f
        .get("plans")
        .map(|n| d.named(n, "plans").into_iter().map(|(k, _, _)| k).collect())
        .unwrap_or_default();
    let declared = routes::Declared::scan(f.get("upstreams"), f.get("plans"));
    let server = f.get("server").and_then(|n| sections::server(d, n));
    if f.get("server").is_none() {
        d.err(f.pos, "the configuration is missing `server`");
    }
    let admin = f
        .get("admin")
        .and_then(|n| sections::admin(d, n, server.as_ref().map(|s| s.listen)));
    let store = match f.get("store") {
        Some(n) => sections::store(d, n),
        None => {
            d.err(
                f.pos,
                "the configuration is missing `store` (use `store: { kind: embedded }` to start)",
            );
            None
        }
    };
    let upstreams = f
        .get("upstreams")
        .map(|n| upstreams::upstreams(d, n))
        .unwrap_or_default();
    let plans = match f.get("plans") {
        Some(n) => plans::plans(d, n, &plan_names),
        None => {
            d.err(f.pos, "the configuration is missing `plans`");
            Default::default()
        }
    };
    let tenants = f
        .get("tenants")
        .map(|n| sections::tenants(d, n, &plan_names))
        .unwrap_or_default();
    let auth = match f.get("auth") {
        Some(n) => sections::auth(d, n, &plan_names),
        None => Some(Auth {
            api_key_headers: sections::default_key_headers(),
            anonymous: None,
            jwt: Vec::new(),
        }),
    };
    let plugins = f
        .get("plugins")
        .map(|n| crate::plugins::decode(d, n))
        .unwrap_or_default();
    let routes = match f.get("routes") {
        Some(n) => routes::routes(d, n, &upstreams, &declared, &plugins),
        None => {
            d.err(f.pos, "the configuration is missing `routes`");
            Vec::new()
        }
    };
    let telemetry = f
        .get("telemetry")
        .map(|n| telemetry::telemetry(d, n, &plugins));
    let onboarding = f
        .get("onboarding")
        .map(|n| onboarding::onboarding(d, n, telemetry.as_ref()));
    // Each webhook is one more telemetry sink: its own spool position, retried by the delivery
    // loop like any sink (`onboarding` checked that the two sections fit together).
    let telemetry = match (telemetry, &onboarding) {
        (Some(Some(mut t)), Some(Some(o))) => {
            t.sinks.extend(o.webhooks.iter().map(Webhook::sink));
            Some(Some(t))
        }
        (t, _) => t,
    };
    let cors = f.get("cors").map(|n| cors::cors(d, n));
    Some(Config {
        cors: match cors {
            Some(c) => Some(std::sync::Arc::new(c?)),
            None => None,
        },
        source: Default::default(),
        server: server?,
        admin,
        store: store?,
        upstreams,
        tenants,
        auth: auth?,
        plans,
        routes,
        telemetry: telemetry.flatten(),
        onboarding: onboarding.flatten(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    /// Each file in tests/fixtures/config holds one mistake (or, in `many_errors`, several);
    /// the `.expect` file beside it holds the exact lines `tollgate check` must print.
    #[test]
    fn every_broken_fixture_reports_its_exact_errors() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        assert!(
            files.len() >= 20,
            "expected the fixture set, found {} files",
            files.len()
        );
        let mut failures = Vec::new();
        for path in &files {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            let text = std::fs::read_to_string(path).unwrap();
            let expected = std::fs::read_to_string(path.with_extension("expect")).unwrap();
            let got = match load_str(&name, &text, &no_env) {
                Ok(_) => "ok\n".to_string(),
                Err(e) => format!("{e}\n"),
            };
            if got != expected {
                failures.push(format!("{name}:\n  expected: {expected}  got:      {got}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn defaults_and_env_expansion() {
        let text = "server: { listen: \"${ADDR}\" }\nstore: { kind: redis, url: \"${URL:-redis://127.0.0.1:6379/0}\" }\nplans: { free: {} }\nroutes: [{ name: r, match: { path: / }, respond: { body: hi } }]\n";
        let env = |k: &str| (k == "ADDR").then(|| "127.0.0.1:9999".to_string());
        let c = load_str("t.yaml", text, &env).unwrap();
        assert_eq!(c.server.listen.port(), 9999);
        assert_eq!(
            c.store.kind,
            StoreKind::Redis {
                url: "redis://127.0.0.1:6379/0".into(),
                ca: Vec::new(),
            }
        );
        assert_eq!(c.store.timeout, std::time::Duration::from_millis(50));
        assert_eq!(c.store.on_outage, OnOutage::FailOpen);
        assert_eq!(c.auth.api_key_headers.len(), 2);
        assert_eq!(c.routes[0].auth, RouteAuth::Required);
    }

    #[test]
    fn sync_interval_defaults_to_100ms_or_flush_interval_if_longer() {
        use std::time::Duration;
        let base = "server: { listen: \"127.0.0.1:9999\" }\nstore: { kind: embedded }\nplans: { free: {} }\nroutes: [{ name: r, match: { path: / }, respond: { body: hi } }]\ntelemetry: { sinks: [{ kind: file, path: e.jsonl }]";
        let telemetry = |extra: &str| {
            let text = format!("{base}{extra} }}\n");
            load_str("t.yaml", &text, &no_env)
                .unwrap()
                .telemetry
                .unwrap()
        };
        let t = telemetry("");
        assert_eq!(t.flush_interval, Duration::from_millis(20));
        assert_eq!(t.sync_interval, Duration::from_millis(100));
        let t = telemetry(", flush_interval: 500ms");
        assert_eq!(t.sync_interval, Duration::from_millis(500));
        let t = telemetry(", flush_interval: 5ms, sync_interval: 5ms");
        assert_eq!(t.sync_interval, Duration::from_millis(5));
    }
}
