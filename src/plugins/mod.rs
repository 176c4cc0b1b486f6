//! The plugin host: runs the hooks of a route's plugins for one call, in the route's order, and
//! turns what they report into the pipeline's own terms (headers, denials, measured meters).
//!
//! pingora's types stop at `proxy`; this module speaks `http` types and the plugin API's, so the
//! rules (order, first denial wins, an error never panics, a failed plugin is not called again
//! for the call) live in one place that tests can reach without a proxy.

mod config;
pub mod registry;

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use tollgate_plugin::{
    CallState, Denial, DynPlugin, EventData, Measurements, PluginError, Request, RequestActions,
    Response,
};

pub use config::{decode, route_list, Configured};

use crate::config::{MeasureSource, Route};
use crate::pipeline::measure::Measured;
use crate::pipeline::Admission;

/// One plugin a route calls (`routes[].plugins`).
#[derive(Clone)]
pub struct RoutePlugin(pub Arc<dyn DynPlugin>);

impl std::fmt::Debug for RoutePlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RoutePlugin({})", self.0.name())
    }
}

/// Why the plugins stopped a call before its answer started.
#[derive(Debug)]
pub enum Stop {
    /// A plugin refused it.
    Denied {
        /// Which.
        plugin: &'static str,
        /// Its problem body.
        denial: Denial,
    },
    /// A plugin's hook returned an error (logged here; the client gets a 500 problem body).
    Failed {
        /// Which.
        plugin: &'static str,
    },
}

/// The route's plugins for one call, with each one's per-call state.
pub struct Calls {
    entries: Vec<Entry>,
    /// The body hooks saw `end_of_stream`, or the call was stopped (it has no body to see).
    ended: bool,
}

struct Entry {
    plugin: Arc<dyn DynPlugin>,
    state: CallState,
    meters: Measurements,
    /// The plugin failed in a body hook: it is not called again, and its meters settle to
    /// their defaults.
    failed: bool,
}

/// The request as plugins see it.
pub fn request_view<'a>(
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    admission: &'a Admission,
) -> Request<'a> {
    let (route, who) = match admission {
        Admission::Public(r) => (r, None),
        Admission::Admitted(a) => (&a.route, Some(a)),
    };
    let mut view = Request::new(method, uri, headers, &route.name);
    view.tenant = who.map(|a| a.caller.tenant.name.as_str());
    view.plan = who.map(|a| a.plan.name.as_str());
    view
}

/// Runs one hook, turning a panic into an error: a bug in a plugin fails that call like any
/// other plugin error (a 500 problem body, or the plugin sitting out the rest of the call),
/// instead of dropping the client's connection with the task. Catching costs nothing on the
/// path that does not panic. After a panic the plugin's per-call state may be half-updated,
/// which is why a failed plugin is never called again for the same call.
fn guarded<T>(hook: impl FnOnce() -> Result<T, PluginError>) -> Result<T, PluginError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(hook))
        .unwrap_or_else(|_| Err(PluginError::new("the plugin panicked")))
}

/// Whether any plugin of the route reads response bodies (so they must come uncompressed).
pub fn reads_body(route: &Route) -> bool {
    route.plugins.iter().any(|p| p.0.reads_body())
}

// === impl Calls ===

impl Calls {
    /// The route's plugins for a new call, or `None` when it lists none.
    pub fn start(route: &Route) -> Option<Calls> {
        if route.plugins.is_empty() {
            return None;
        }
        let entries = route
            .plugins
            .iter()
            .map(|p| Entry {
                plugin: p.0.clone(),
                state: p.0.new_call(),
                meters: Measurements::default(),
                failed: false,
            })
            .collect();
        Some(Calls {
            entries,
            ended: false,
        })
    }

    /// `on_request` of each plugin in order; the first denial or error stops the rest. On
    /// success, the headers the plugins add to the upstream request.
    pub fn on_request(
        &mut self,
        request: &Request<'_>,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, Stop> {
        let mut headers = Vec::new();
        for e in &mut self.entries {
            let plugin = e.plugin.name();
            let mut actions = RequestActions::default();
            if let Err(error) = guarded(|| e.plugin.on_request(&mut e.state, request, &mut actions))
            {
                tracing::warn!(plugin, route = request.route, error = %error, "A plugin failed on a request; answering 500.");
                self.ended = true;
                return Err(Stop::Failed { plugin });
            }
            let (denial, added, meters) = actions.into_parts();
            if let Some(mut denial) = denial {
                if !(denial.status.is_client_error() || denial.status.is_server_error()) {
                    denial.status = StatusCode::FORBIDDEN;
                }
                self.ended = true;
                return Err(Stop::Denied { plugin, denial });
            }
            headers.extend(added);
            for (meter, units) in meters.iter() {
                e.meters.add(meter, units);
            }
        }
        Ok(headers)
    }

    /// `on_response_headers` of each plugin in order; the first error stops the call.
    pub fn on_response_headers(
        &mut self,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> Result<(), Stop> {
        let response = Response::new(status, headers);
        for e in &mut self.entries {
            if let Err(error) = guarded(|| e.plugin.on_response_headers(&mut e.state, &response)) {
                let plugin = e.plugin.name();
                tracing::warn!(plugin, error = %error, "A plugin failed on a response head; answering 500.");
                self.ended = true;
                return Err(Stop::Failed { plugin });
            }
        }
        Ok(())
    }

    /// `on_response_body` of each plugin still standing. The chunk is already on its way: an
    /// error here is logged and that plugin sits out the rest of the call.
    pub fn on_response_body(&mut self, chunk: &[u8], end_of_stream: bool) {
        if self.ended {
            return;
        }
        self.ended = end_of_stream;
        for e in self.entries.iter_mut().filter(|e| !e.failed) {
            let result = guarded(|| {
                e.plugin
                    .on_response_body(&mut e.state, chunk, end_of_stream, &mut e.meters)
            });
            if let Err(error) = result {
                let plugin = e.plugin.name();
                tracing::warn!(plugin, error = %error, "A plugin failed on a response body; its meters settle to their defaults.");
                e.failed = true;
            }
        }
    }

    /// The end of the call: plugins that never saw `end_of_stream` (pingora may end a body
    /// without a last chunk marked so) see it now, with an empty chunk.
    pub fn finish(&mut self) {
        self.on_response_body(&[], true);
    }

    /// The amounts of the route's `plugin:<name>` meters: what the plugin reported, else the
    /// meter's `default`.
    pub fn measured(&self, route: &Route) -> Vec<Measured> {
        let mut out = Vec::new();
        for (index, meter) in route.meter.iter().enumerate() {
            let Some(measure) = &meter.measure else {
                continue;
            };
            let MeasureSource::Plugin(name) = &measure.source else {
                continue;
            };
            let reported = self
                .entries
                .iter()
                .find(|e| e.plugin.name() == name && !e.failed)
                .and_then(|e| e.meters.get(&meter.name));
            out.push(Measured {
                index,
                units: reported.unwrap_or(measure.default),
                defaulted: reported.is_none(),
            });
        }
        out
    }

    /// `on_event` of each plugin: fields they add join the event's `data`; a field it already
    /// has is kept (plugins add, they never rewrite the contract's fields). The telemetry side
    /// calls this while building a call's usage event.
    pub fn on_event(&self, data: &mut EventData) {
        for e in &self.entries {
            let mut extra = EventData::new();
            if let Err(error) = guarded(|| e.plugin.on_event(&e.state, &mut extra)) {
                let plugin = e.plugin.name();
                tracing::warn!(plugin, error = %error, "A plugin failed on a usage event; the event goes out without its fields.");
                continue;
            }
            for (k, v) in extra {
                data.entry(k).or_insert(v);
            }
        }
    }
}

#[cfg(test)]
mod tests;
