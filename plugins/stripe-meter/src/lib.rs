#![forbid(unsafe_code)]
//! `stripe-meter`: forwards settled usage of chosen meters to Stripe's Billing Meter Events API
//! (`POST /v1/billing/meter_events`), as a telemetry sink.
//!
//! It has no call hooks: it provides an [`EventSink`], and the gateway delivers its spooled
//! usage events to it like to any other sink (`telemetry.sinks: [{ kind: plugin, plugin:
//! stripe-meter }]`), so Stripe gets the spool's at-least-once delivery, its own position,
//! retries with backoff and the `tollgate_events_total{sink="stripe-meter"}` metrics.
//!
//! ```yaml
//! plugins:
//!   stripe-meter:
//!     api_key: "${STRIPE_API_KEY}"       # required; never logged
//!     api_base: https://api.stripe.com   # default; tests point it at a local receiver
//!     meters:                            # tollgate meter → Stripe meter `event_name`
//!       requests: api_requests
//!       tokens: llm_tokens
//!     customers:                         # tenant → Stripe customer
//!       acme: cus_NciAYcXfLnqBoz
//!     customer_from: tenant              # optional: else the tenant id is the customer id
//!     concurrency: 4                     # requests in flight per batch (1..=32)
//! telemetry:
//!   sinks:
//!     - kind: plugin
//!       plugin: stripe-meter
//! ```
//!
//! For each usage event and each configured meter with settled units above 0, one meter event:
//! `event_name`, `payload[stripe_customer_id]`, `payload[value]` (the settled units),
//! `identifier` = `<event id>-<meter>` and `timestamp` = the event's `time` in Unix seconds.
//! The identifier is stable across redeliveries, so Stripe deduplicates what the spool sends
//! twice (after a crash, or a batch retried after a partial failure).
//!
//! What is skipped, counted and logged, never an error: events whose tenant has no customer
//! (nobody to bill), meters with 0 units (refunded or unused), events that are not usage
//! events, and meter events Stripe rejects for good (a 4xx other than 401/403/408/409/429:
//! retrying a request Stripe calls invalid would block the sink forever).

mod sink;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tollgate_plugin::{ConfigError, ConfigNode, EventSink, Plugin, PluginError};

pub use sink::{MeterEvent, StripeSink};

/// Stripe's API, when `api_base` is not set.
pub const DEFAULT_API_BASE: &str = "https://api.stripe.com";

/// The path meter events are posted to.
pub const METER_EVENTS_PATH: &str = "/v1/billing/meter_events";

/// Stripe's bound on `event_name` and `identifier`.
pub const MAX_STRIPE_ID: usize = 100;

/// The longest tollgate meter name forwarded: the identifier `<36-character event id>-<meter>`
/// must fit in [`MAX_STRIPE_ID`].
pub const MAX_METER_NAME: usize = MAX_STRIPE_ID - 37;

const KEYS: &[&str] = &[
    "api_key",
    "api_base",
    "meters",
    "customers",
    "customer_from",
    "concurrency",
];

/// The plugin: its settings, shared with every sink it makes.
#[derive(Clone)]
pub struct StripeMeter {
    settings: Arc<Settings>,
}

/// What the config says.
pub struct Settings {
    /// The secret key (`sk_…` or a restricted `rk_…`). Never in a log or an error.
    pub(crate) api_key: String,
    /// `https://api.stripe.com`, without a trailing `/`.
    pub(crate) api_base: String,
    /// tollgate meter → Stripe `event_name`.
    pub(crate) meters: BTreeMap<String, String>,
    /// tenant → Stripe customer id.
    pub(crate) customers: HashMap<String, String>,
    /// `customer_from: tenant`: a tenant without an entry in `customers` is its own customer id.
    pub(crate) customer_from_tenant: bool,
    /// Requests in flight at once within a batch.
    pub(crate) concurrency: usize,
    /// Upper bound on one request.
    pub(crate) timeout: Duration,
}

impl std::fmt::Debug for StripeMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The API key stays out of every `Debug` print.
        f.debug_struct("StripeMeter")
            .field("api_base", &self.settings.api_base)
            .field("meters", &self.settings.meters)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// The Stripe customer billed for `tenant`, if any.
    pub(crate) fn customer<'a>(&'a self, tenant: &'a str) -> Option<&'a str> {
        match self.customers.get(tenant) {
            Some(c) => Some(c),
            None if self.customer_from_tenant => Some(tenant),
            None => None,
        }
    }
}

impl Plugin for StripeMeter {
    const NAME: &'static str = "stripe-meter";
    type Call = ();

    fn from_config(config: &ConfigNode) -> Result<Self, Vec<ConfigError>> {
        let what = "`stripe-meter`";
        if config.is_null() {
            return Err(vec![config.error(
                "`stripe-meter` needs `api_key`, `meters` and `customers` or `customer_from: tenant`",
            )]);
        }
        let mut errors = config.unknown_keys(what, KEYS);
        if !errors.is_empty() && config.entries(what).is_err() {
            return Err(errors);
        }
        let mut need = |key: &str| {
            let v = config.get(key);
            if v.is_none() {
                errors.push(config.error(format!("{what} is missing `{key}`")));
            }
            v
        };
        let api_key = need("api_key");
        let meters = need("meters");
        let api_key = api_key.and_then(|n| match n.str("`api_key`") {
            Ok("") => {
                errors.push(n.error("`api_key` is empty (is its environment variable set?)"));
                None
            }
            Ok(k) => Some(k.to_string()),
            Err(e) => {
                errors.push(e);
                None
            }
        });
        let api_base = match config.get("api_base") {
            None => Some(DEFAULT_API_BASE.to_string()),
            Some(n) => match n.str("`api_base`") {
                Ok(b) if b.starts_with("https://") || b.starts_with("http://") => {
                    Some(b.trim_end_matches('/').to_string())
                }
                Ok(b) => {
                    errors.push(n.error(format!(
                        "`api_base` must start with https:// or http://, found \"{b}\""
                    )));
                    None
                }
                Err(e) => {
                    errors.push(e);
                    None
                }
            },
        };
        let meters = meters.map(|n| names(n, "`meters`", false, &mut errors));
        if let (Some(m), Some(n)) = (&meters, config.get("meters")) {
            if m.is_empty() && n.entries("`meters`").is_ok() {
                errors.push(n.error(
                    "`meters` needs at least one entry: tollgate meter → Stripe event_name",
                ));
            }
        }
        let customers = config
            .get("customers")
            .map(|n| names(n, "`customers`", true, &mut errors))
            .unwrap_or_default();
        let customer_from_tenant = match config.get("customer_from") {
            None => false,
            Some(n) => match n.str("`customer_from`") {
                Ok("tenant") => true,
                Ok(other) => {
                    errors.push(n.error(format!(
                        "`customer_from` must be `tenant` (the tenant id is the Stripe customer id), found \"{other}\""
                    )));
                    false
                }
                Err(e) => {
                    errors.push(e);
                    false
                }
            },
        };
        if config.get("customers").is_none() && config.get("customer_from").is_none() {
            errors.push(config.error(
                "`stripe-meter` needs `customers` (tenant → cus_…) or `customer_from: tenant`",
            ));
        }
        let concurrency = match config.get("concurrency") {
            None => 4,
            Some(n) => match n.u64("`concurrency`") {
                Ok(c @ 1..=32) => c as usize,
                Ok(c) => {
                    errors.push(n.error(format!("`concurrency` must be 1 to 32, found {c}")));
                    4
                }
                Err(e) => {
                    errors.push(e);
                    4
                }
            },
        };
        match (api_key, api_base, meters) {
            (Some(api_key), Some(api_base), Some(meters)) if errors.is_empty() => Ok(StripeMeter {
                settings: Arc::new(Settings {
                    api_key,
                    api_base,
                    meters: meters.into_iter().collect(),
                    customers: customers.into_iter().collect(),
                    customer_from_tenant,
                    concurrency,
                    timeout: Duration::from_secs(10),
                }),
            }),
            _ => Err(errors),
        }
    }

    fn event_sink(&self) -> Result<Option<Box<dyn EventSink>>, PluginError> {
        Ok(Some(Box::new(StripeSink::new(self.settings.clone()))))
    }
}

/// A mapping of names to Stripe ids (`meters`: event names; `customers`: `cus_…`).
fn names(
    n: &ConfigNode,
    what: &str,
    customers: bool,
    errors: &mut Vec<ConfigError>,
) -> Vec<(String, String)> {
    let entries = match n.entries(what) {
        Ok(e) => e,
        Err(e) => {
            errors.push(e);
            return Vec::new();
        }
    };
    let mut out = Vec::with_capacity(entries.len());
    for (key, _, v) in entries {
        let what = format!("`{}.{key}`", what.trim_matches('`'));
        let value = match v.str(&what) {
            Ok(s) => s,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        if !customers && key.len() > MAX_METER_NAME {
            errors.push(v.error(format!(
                "{what}: the meter name is longer than {MAX_METER_NAME} characters, so `<event id>-<meter>` would pass Stripe's identifier bound of {MAX_STRIPE_ID}"
            )));
        } else if customers && !value.starts_with("cus_") {
            errors.push(v.error(format!(
                "{what} must be a Stripe customer id (cus_…), found \"{value}\""
            )));
        } else if value.is_empty() || value.len() > MAX_STRIPE_ID {
            errors.push(v.error(format!(
                "{what} must be 1 to {MAX_STRIPE_ID} characters, found {}",
                value.len()
            )));
        } else {
            out.push((key.to_string(), value.to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests;
