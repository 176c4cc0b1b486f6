//! `plugin`: a sink a plugin provides ([`tollgate_plugin::EventSink`]). The plugin only says
//! whether a batch arrived; this wrapper makes it a [`Sink`] like the others, so it gets its own
//! spool position, the delivery loop's retries with backoff, lag and metrics.

use async_trait::async_trait;
use bytes::Bytes;
use tollgate_plugin::{DynPlugin, EventSink};

use super::{Sink, SinkError};

/// A plugin's event sink behind the host's [`Sink`] trait.
pub struct PluginSink {
    plugin: &'static str,
    inner: Box<dyn EventSink>,
}

impl PluginSink {
    /// The sink `plugin` provides (the config check already saw it provides one).
    pub fn new(plugin: &std::sync::Arc<dyn DynPlugin>) -> Result<PluginSink, SinkError> {
        let name = plugin.name();
        match plugin.event_sink() {
            Ok(Some(inner)) => Ok(PluginSink {
                plugin: name,
                inner,
            }),
            Ok(None) => Err(SinkError::Plugin(format!(
                "plugin `{name}` provides no telemetry sink"
            ))),
            Err(e) => Err(SinkError::Plugin(format!("{name}: {}", e.message))),
        }
    }
}

#[async_trait]
impl Sink for PluginSink {
    async fn deliver(&mut self, batch: &[Bytes]) -> Result<(), SinkError> {
        // Borrowed views of the spooled bytes: the plugin API speaks plain slices, not `Bytes`.
        let events: Vec<&[u8]> = batch.iter().map(|e| e.as_ref()).collect();
        self.inner
            .deliver(&events)
            .await
            .map_err(|e| SinkError::Plugin(format!("{}: {}", self.plugin, e.message)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    const YAML: &str = r#"
server: { listen: "127.0.0.1:8080" }
store: { kind: embedded, path: "/tmp/unused.db" }
plans: { free: { meters: { requests: { limit: 10, period: month } } } }
routes: [{ name: r, match: { path: / }, respond: { body: hi } }]
plugins:
  stripe-meter:
    api_key: "${KEY}"
    api_base: "https://127.0.0.1:1"
    meters: { requests: api_requests }
    customer_from: tenant
telemetry:
  sinks:
    - kind: plugin
      plugin: stripe-meter
    - kind: plugin
      plugin: stripe-meter
      name: billing-2
"#;

    /// The sink the config names is the plugin's, named after it by default; with the
    /// process's crypto provider its HTTPS client builds, and a failed delivery says why
    /// without the key.
    #[tokio::test]
    async fn a_plugin_sink_builds_from_config_and_fails_without_leaking_the_key() {
        crate::install_crypto_provider();
        let env = |k: &str| (k == "KEY").then(|| "sk_test_secret".to_string());
        let telemetry = load_str("t.yaml", YAML, &env).unwrap().telemetry.unwrap();
        let names: Vec<&str> = telemetry.sinks.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["stripe-meter", "billing-2"]);
        assert_eq!(telemetry.sinks[0].kind.as_str(), "plugin");
        let metrics = crate::telemetry::metrics::Metrics::unregistered().unwrap();
        let mut sink = super::super::build(&telemetry.sinks[0], &metrics).unwrap();
        let event = br#"{"id":"e1","type":"dev.tollgate.request","time":"2026-11-26T12:00:00Z","data":{"tenant":"cus_A","meters":{"requests":1}}}"#;
        let err = sink
            .deliver(&[Bytes::from_static(event)])
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("plugin: stripe-meter: 1 meter event(s) not accepted by Stripe (first: request failed"),
            "{err}"
        );
        assert!(!err.contains("sk_test"), "{err}");
        // Nothing to send is a success.
        let other = br#"{"id":"e2","type":"dev.tollgate.request","time":"2026-11-26T12:00:00Z","data":{"tenant":"cus_A","meters":{"requests":0}}}"#;
        sink.deliver(&[Bytes::from_static(other)]).await.unwrap();
    }
}
