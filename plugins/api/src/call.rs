//! What a plugin sees of a call and what it may ask for, hook by hook.
//!
//! Only `http` types and the small types below cross this boundary: no pingora or Redis type
//! does, so a pingora upgrade never touches a plugin.

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};

/// A hook failed. The gateway answers `500` with a problem body when the answer has not started
/// yet (and logs the message, which never reaches the client); later, it logs and stops calling
/// that plugin for the rest of the call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PluginError {
    /// What went wrong, for the operator's log.
    pub message: String,
}

impl PluginError {
    /// An error with `message`.
    pub fn new(message: impl Into<String>) -> PluginError {
        PluginError {
            message: message.into(),
        }
    }
}

/// The request as the client sent it, after the gateway admitted it (`on_request`).
///
/// `#[non_exhaustive]`: later releases may add fields without breaking plugins; build one with
/// [`Request::new`] in tests.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Request<'a> {
    /// The method.
    pub method: &'a Method,
    /// The URI as sent (path and query).
    pub uri: &'a Uri,
    /// The client's headers (credentials included: do not log them).
    pub headers: &'a HeaderMap,
    /// The matched route's name.
    pub route: &'a str,
    /// The calling tenant, when the route identifies callers.
    pub tenant: Option<&'a str>,
    /// The tenant's plan, when the route identifies callers.
    pub plan: Option<&'a str>,
}

impl<'a> Request<'a> {
    /// A request on `route` from nobody in particular; set `tenant` and `plan` after.
    pub fn new(method: &'a Method, uri: &'a Uri, headers: &'a HeaderMap, route: &'a str) -> Self {
        Request {
            method,
            uri,
            headers,
            route,
            tenant: None,
            plan: None,
        }
    }
}

/// The upstream's answer head, after the gateway's own filtering (`on_response_headers`).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Response<'a> {
    /// The status the client will see.
    pub status: StatusCode,
    /// The headers the client will see.
    pub headers: &'a HeaderMap,
}

impl<'a> Response<'a> {
    /// A response head.
    pub fn new(status: StatusCode, headers: &'a HeaderMap) -> Self {
        Response { status, headers }
    }
}

/// A refusal: the gateway answers it as an RFC 9457 `application/problem+json` body with these
/// members (and `instance` = the request path) and the call is not charged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// A 4xx or 5xx status; anything else is answered as 403.
    pub status: StatusCode,
    /// The problem `type`, a URI such as `urn:example:blocked`.
    pub problem_type: String,
    /// A short, fixed summary (`title`).
    pub title: String,
    /// What was wrong and what to do about it (`detail`); never secrets.
    pub detail: String,
}

impl Denial {
    /// A denial with every member of the problem body.
    pub fn new(
        status: StatusCode,
        problem_type: impl Into<String>,
        title: impl Into<String>,
        detail: impl Into<String>,
    ) -> Denial {
        Denial {
            status,
            problem_type: problem_type.into(),
            title: title.into(),
            detail: detail.into(),
        }
    }
}

/// Meter quantities a plugin reports for one call, by meter name.
///
/// They settle the route's meters declared `from_response: "plugin:<this plugin>"`, through the
/// same path as response-measured meters: the reservation is replaced with the reported amount.
/// A meter the route does not declare that way is ignored; a declared meter nothing was
/// reported for settles to its `default`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Measurements {
    values: Vec<(String, u64)>,
}

impl Measurements {
    /// Sets `meter` to `units`, replacing what was reported before. Streams that repeat a
    /// running total (every provider's usage does) just call this on each update.
    pub fn set(&mut self, meter: &str, units: u64) {
        match self.values.iter_mut().find(|(m, _)| m == meter) {
            Some((_, v)) => *v = units,
            None => self.values.push((meter.to_string(), units)),
        }
    }

    /// Adds `units` to `meter` (saturating).
    pub fn add(&mut self, meter: &str, units: u64) {
        let now = self.get(meter).unwrap_or(0);
        self.set(meter, now.saturating_add(units));
    }

    /// What was reported for `meter`, if anything.
    pub fn get(&self, meter: &str) -> Option<u64> {
        self.values
            .iter()
            .find(|(m, _)| m == meter)
            .map(|(_, v)| *v)
    }

    /// Every reported meter, in the order first reported.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.values.iter().map(|(m, v)| (m.as_str(), *v))
    }
}

/// What `on_request` may ask for: deny the call, add upstream request headers, add meter
/// quantities. The first plugin (in the route's order) that denies stops the rest.
#[derive(Debug, Default)]
pub struct RequestActions {
    denial: Option<Denial>,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Quantities added to this plugin's meters for the call (see [`Measurements`]).
    pub meters: Measurements,
}

impl RequestActions {
    /// Refuses the call with a problem body; no later plugin runs and nothing is charged.
    pub fn deny(&mut self, denial: Denial) {
        self.denial = Some(denial);
    }

    /// Appends a header to the request sent upstream. The gateway's own rules still win:
    /// hop-by-hop and credential headers are stripped and `X-Tollgate-*` are overwritten.
    pub fn upstream_header(&mut self, name: HeaderName, value: HeaderValue) {
        self.headers.push((name, value));
    }

    /// The denial, if the plugin denied.
    pub fn denial(&self) -> Option<&Denial> {
        self.denial.as_ref()
    }

    /// Takes the denial and the added headers (for the host).
    pub fn into_parts(self) -> (Option<Denial>, Vec<(HeaderName, HeaderValue)>, Measurements) {
        (self.denial, self.headers, self.meters)
    }
}

/// Extra fields a plugin adds to a usage event's `data` (`on_event`). A field the event already
/// has is kept: plugins add, they never rewrite the contract's fields.
pub type EventData = serde_json::Map<String, serde_json::Value>;
