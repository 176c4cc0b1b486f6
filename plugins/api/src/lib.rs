#![forbid(unsafe_code)]
//! `tollgate-plugin`: the extension API of the tollgate gateway.
//!
//! A plugin is a type implementing [`Plugin`]: built once from its YAML config, then called at
//! each phase of every call on a route that lists it, in the route's order:
//!
//! 1. [`Plugin::on_request`]: after admission, before the upstream. May deny with a problem
//!    body ([`Denial`]), add upstream request headers, add meter quantities. The first denial
//!    stops the rest of the list.
//! 2. [`Plugin::on_response_headers`]: the upstream's answer head.
//! 3. [`Plugin::on_response_body`]: each body chunk as it streams past (never delayed); may
//!    report measured meter quantities ([`Measurements`]).
//! 4. [`Plugin::on_event`]: may add fields to the usage event's `data`.
//!
//! Apart from the call hooks, a plugin may provide a telemetry sink ([`Plugin::event_sink`],
//! [`EventSink`]): the gateway then delivers its spooled usage events to the plugin with the
//! same at-least-once guarantee, retries and metrics as its built-in sinks.
//!
//! Only `http` types and this crate's small types cross the API, so a plugin never sees
//! pingora or Redis and survives their upgrades. A hook's `Err` is answered as a `500` problem
//! body while the answer has not started (later it is logged); it never takes the gateway
//! down. Plugins are compiled into the binary and listed in its registry with [`register`].
//!
//! # Example
//!
//! A plugin that refuses calls whose path contains a configured word, and tells the upstream
//! it looked.
//!
//! ```
//! use http::{HeaderName, HeaderValue, StatusCode};
//! use tollgate_plugin::{ConfigError, ConfigNode, Denial, Plugin, PluginError, Request, RequestActions};
//!
//! pub struct BlockWord {
//!     word: String,
//! }
//!
//! impl Plugin for BlockWord {
//!     const NAME: &'static str = "block-word";
//!     type Call = ();
//!
//!     // plugins:
//!     //   block-word: { word: forbidden }
//!     fn from_config(config: &ConfigNode) -> Result<Self, Vec<ConfigError>> {
//!         let mut errors = config.unknown_keys("`block-word`", &["word"]);
//!         let word = match config.get("word") {
//!             Some(w) => w.str("`word`").map_err(|e| errors.push(e)).ok(),
//!             None => {
//!                 errors.push(config.error("`block-word` needs `word`"));
//!                 None
//!             }
//!         };
//!         match word {
//!             Some(w) if errors.is_empty() => Ok(BlockWord { word: w.to_string() }),
//!             _ => Err(errors),
//!         }
//!     }
//!
//!     fn on_request(&self, _: &mut (), req: &Request<'_>, act: &mut RequestActions) -> Result<(), PluginError> {
//!         if req.uri.path().contains(&self.word) {
//!             act.deny(Denial::new(StatusCode::FORBIDDEN, "urn:example:blocked-word", "Blocked",
//!                 format!("Paths may not contain `{}`.", self.word)));
//!         } else {
//!             act.upstream_header(HeaderName::from_static("x-checked-by"), HeaderValue::from_static("block-word"));
//!         }
//!         Ok(())
//!     }
//! }
//!
//! // The gateway lists it in its registry:
//! static PLUGINS: &[tollgate_plugin::Registration] = &[tollgate_plugin::register::<BlockWord>()];
//! # fn main() {
//! # use tollgate_plugin::{ConfigValue, Measurements};
//! # let cfg = ConfigNode::new(1, 1, ConfigValue::Map(vec![(
//! #     ConfigNode::new(2, 3, ConfigValue::Str("word".into())),
//! #     ConfigNode::new(2, 9, ConfigValue::Str("secret".into())))]));
//! # let plugin = (PLUGINS[0].build)(&cfg).unwrap();
//! # let (m, u, h) = (http::Method::GET, http::Uri::from_static("/a/secret"), http::HeaderMap::new());
//! # let mut call = plugin.new_call();
//! # let mut act = RequestActions::default();
//! # plugin.on_request(&mut call, &Request::new(&m, &u, &h, "r"), &mut act).unwrap();
//! # assert_eq!(act.denial().unwrap().status, StatusCode::FORBIDDEN);
//! # }
//! ```

mod call;
mod config;
mod plugin;
mod sink;
pub mod sse;

pub use call::{Denial, EventData, Measurements, PluginError, Request, RequestActions, Response};
pub use config::{ConfigError, ConfigNode, ConfigValue};
pub use plugin::{register, Build, CallState, DynPlugin, Plugin, Registration};
pub use sink::{Delivery, EventSink, SinkFailure};

/// Re-exported so plugins and the gateway agree on one version.
pub use http;
pub use serde_json;
