//! The plugin trait, its type-erased form the gateway holds, and registration.

use std::any::Any;
use std::sync::Arc;

use crate::call::{EventData, Measurements, PluginError, Request, RequestActions, Response};
use crate::config::{ConfigError, ConfigNode};
use crate::sink::EventSink;

/// A plugin: built once from its config, then called at each phase of every call on a route
/// that lists it. One method per hook, in the order they run; each defaults to doing nothing.
///
/// Hooks are synchronous on purpose: they run on the proxy's request path, and a hook that could
/// await a network call would make every call on the route as slow as that call. Work that must
/// wait belongs in a background task the plugin owns.
///
/// State for one call lives in [`Plugin::Call`]: the gateway creates one with `Default` when the
/// call starts and hands the same value to each hook of that call, so a plugin keeps what it
/// learnt in `on_request` or from earlier body chunks without locks or maps keyed by call.
pub trait Plugin: Send + Sync + Sized + 'static {
    /// The name routes and the top-level `plugins:` map use (`llm-usage`).
    const NAME: &'static str;

    /// Per-call state (use `()` when there is none).
    type Call: Default + Send + Sync + 'static;

    /// Builds the plugin from its config (`plugins.<NAME>` in the YAML; `Null` when empty),
    /// reporting every mistake with its position.
    fn from_config(config: &ConfigNode) -> Result<Self, Vec<ConfigError>>;

    /// Whether [`Plugin::on_response_body`] reads the body's bytes. When true, the gateway asks
    /// the upstream for an uncompressed answer (it drops `Accept-Encoding`), as it does for its
    /// own response-measured meters: a plugin should not have to inflate gzip to count tokens.
    fn reads_body(&self) -> bool {
        false
    }

    /// After the gateway admitted the call (route, caller, plan and reservation known), before
    /// it goes upstream. May deny, add upstream request headers or add meter quantities.
    fn on_request(
        &self,
        call: &mut Self::Call,
        request: &Request<'_>,
        actions: &mut RequestActions,
    ) -> Result<(), PluginError> {
        let _ = (call, request, actions);
        Ok(())
    }

    /// When the upstream's answer head arrives, before it goes to the client.
    fn on_response_headers(
        &self,
        call: &mut Self::Call,
        response: &Response<'_>,
    ) -> Result<(), PluginError> {
        let _ = (call, response);
        Ok(())
    }

    /// For each chunk of the answer body as it passes to the client. The chunk is already on
    /// its way: a plugin looks, it never holds the stream back, so keep this cheap and keep
    /// memory bounded (parse incrementally, do not buffer whole bodies). `end_of_stream` is
    /// true exactly once per call that was not stopped by a denial or an error before its
    /// answer, possibly with an empty chunk. Reported quantities settle the
    /// route's `plugin:<NAME>` meters when the call ends.
    fn on_response_body(
        &self,
        call: &mut Self::Call,
        chunk: &[u8],
        end_of_stream: bool,
        meters: &mut Measurements,
    ) -> Result<(), PluginError> {
        let _ = (call, chunk, end_of_stream, meters);
        Ok(())
    }

    /// When the call's usage event is built: may add fields to its `data`.
    fn on_event(&self, call: &Self::Call, data: &mut EventData) -> Result<(), PluginError> {
        let _ = (call, data);
        Ok(())
    }

    /// A telemetry sink this plugin provides, for `telemetry.sinks: [{ kind: plugin, plugin:
    /// <NAME> }]`; `None` (the default) when it provides none, which the config check reports.
    ///
    /// The host calls this when it checks the config (to know the plugin provides one) and
    /// again when telemetry starts, each time for a fresh sink: keep it cheap and open
    /// connections on the first delivery, on the runtime that delivers.
    fn event_sink(&self) -> Result<Option<Box<dyn EventSink>>, PluginError> {
        Ok(None)
    }
}

/// Per-call state of one plugin, type-erased so the gateway can hold every plugin's in one list.
pub struct CallState(Box<dyn Any + Send + Sync>);

impl std::fmt::Debug for CallState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallState")
    }
}

/// The object-safe form of [`Plugin`] that the gateway holds (`Arc<dyn DynPlugin>`). Implemented
/// for every `Plugin`; plugin authors never implement it themselves.
pub trait DynPlugin: Send + Sync + 'static {
    /// [`Plugin::NAME`].
    fn name(&self) -> &'static str;
    /// [`Plugin::reads_body`].
    fn reads_body(&self) -> bool;
    /// A fresh [`Plugin::Call`] for a new call.
    fn new_call(&self) -> CallState;
    /// [`Plugin::on_request`].
    fn on_request(
        &self,
        call: &mut CallState,
        request: &Request<'_>,
        actions: &mut RequestActions,
    ) -> Result<(), PluginError>;
    /// [`Plugin::on_response_headers`].
    fn on_response_headers(
        &self,
        call: &mut CallState,
        response: &Response<'_>,
    ) -> Result<(), PluginError>;
    /// [`Plugin::on_response_body`].
    fn on_response_body(
        &self,
        call: &mut CallState,
        chunk: &[u8],
        end_of_stream: bool,
        meters: &mut Measurements,
    ) -> Result<(), PluginError>;
    /// [`Plugin::on_event`].
    fn on_event(&self, call: &CallState, data: &mut EventData) -> Result<(), PluginError>;
    /// [`Plugin::event_sink`].
    fn event_sink(&self) -> Result<Option<Box<dyn EventSink>>, PluginError>;
}

/// A state that belongs to another plugin: the host mixed up its lists. An error, not a panic.
fn foreign(name: &str) -> PluginError {
    PluginError::new(format!(
        "plugin `{name}` was handed another plugin's call state"
    ))
}

impl<P: Plugin> DynPlugin for P {
    fn name(&self) -> &'static str {
        P::NAME
    }
    fn reads_body(&self) -> bool {
        Plugin::reads_body(self)
    }
    fn new_call(&self) -> CallState {
        CallState(Box::new(P::Call::default()))
    }
    fn on_request(
        &self,
        call: &mut CallState,
        request: &Request<'_>,
        actions: &mut RequestActions,
    ) -> Result<(), PluginError> {
        let state = call.0.downcast_mut().ok_or_else(|| foreign(P::NAME))?;
        Plugin::on_request(self, state, request, actions)
    }
    fn on_response_headers(
        &self,
        call: &mut CallState,
        response: &Response<'_>,
    ) -> Result<(), PluginError> {
        let state = call.0.downcast_mut().ok_or_else(|| foreign(P::NAME))?;
        Plugin::on_response_headers(self, state, response)
    }
    fn on_response_body(
        &self,
        call: &mut CallState,
        chunk: &[u8],
        end_of_stream: bool,
        meters: &mut Measurements,
    ) -> Result<(), PluginError> {
        let state = call.0.downcast_mut().ok_or_else(|| foreign(P::NAME))?;
        Plugin::on_response_body(self, state, chunk, end_of_stream, meters)
    }
    fn on_event(&self, call: &CallState, data: &mut EventData) -> Result<(), PluginError> {
        let state = call.0.downcast_ref().ok_or_else(|| foreign(P::NAME))?;
        Plugin::on_event(self, state, data)
    }
    fn event_sink(&self) -> Result<Option<Box<dyn EventSink>>, PluginError> {
        Plugin::event_sink(self)
    }
}

/// Builds a plugin from its config.
pub type Build = fn(&ConfigNode) -> Result<Arc<dyn DynPlugin>, Vec<ConfigError>>;

/// One compiled-in plugin, as listed in the gateway's registry.
#[derive(Clone, Copy)]
pub struct Registration {
    /// [`Plugin::NAME`].
    pub name: &'static str,
    /// [`Plugin::from_config`], erased.
    pub build: Build,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Registration({})", self.name)
    }
}

/// The registry entry of `P`: `static PLUGINS: &[Registration] = &[register::<MyPlugin>()];`
pub const fn register<P: Plugin>() -> Registration {
    Registration {
        name: P::NAME,
        build: build::<P>,
    }
}

fn build<P: Plugin>(config: &ConfigNode) -> Result<Arc<dyn DynPlugin>, Vec<ConfigError>> {
    P::from_config(config).map(|p| Arc::new(p) as Arc<dyn DynPlugin>)
}
