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
