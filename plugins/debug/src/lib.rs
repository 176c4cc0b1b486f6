#![forbid(unsafe_code)]
//! Two small plugins for trying tollgate's plugin hooks, and for its tests to prove the hook
//! rules through the real binary (a plugin cannot be compiled in for tests only):
//!
//! - [`DenyHeader`] (`deny-header`) refuses calls that carry a configured request header. It
//!   is useful on its own (block a client-side debug header at the edge), and shows a denial.
//! - [`DebugFail`] (`debug-fail`) returns an error from a chosen hook, but only on calls that
//!   carry a configured request header, so configuring it changes nothing for other calls. It
//!   shows that a plugin's error becomes a `500` problem body and the gateway keeps serving.
//!
//! With `trace: true`, each appends its name to the upstream request header
//! `x-tollgate-plugin-trace` when it lets a call through, which makes the run order visible.

use tollgate_plugin::http::{HeaderName, HeaderValue, StatusCode};
use tollgate_plugin::{
    ConfigError, ConfigNode, Denial, Measurements, Plugin, PluginError, Request, RequestActions,
    Response,
};

/// The upstream request header `trace: true` appends to.
pub const TRACE_HEADER: &str = "x-tollgate-plugin-trace";

/// `deny-header: { header: x-debug, status: 403, trace: false }`
#[derive(Debug)]
pub struct DenyHeader {
    header: HeaderName,
    status: StatusCode,
    trace: bool,
}

/// `debug-fail: { when_header: x-fail, at: request | response_headers | response_body, panic: false, trace: false }`
///
/// With `panic: true` it panics instead of returning an error, to show that the gateway
/// contains a plugin's bug the same way.
#[derive(Debug)]
pub struct DebugFail {
    when_header: HeaderName,
    at: Hook,
    panic: bool,
    trace: bool,
}

/// Where `debug-fail` fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hook {
    Request,
    ResponseHeaders,
    ResponseBody,
}

/// The header a plugin's config names, checked.
fn header_name(config: &ConfigNode, key: &str, what: &str) -> Result<HeaderName, ConfigError> {
    let node = config
        .get(key)
        .ok_or_else(|| config.error(format!("{what} needs `{key}` (a request header name)")))?;
    let text = node.str(&format!("`{key}`"))?;
    HeaderName::from_bytes(text.trim().to_ascii_lowercase().as_bytes())
        .map_err(|_| node.error(format!("`{key}` must be a header name, found \"{text}\"")))
}

/// A true/false setting (default false).
fn flag(config: &ConfigNode, key: &str, errors: &mut Vec<ConfigError>) -> bool {
    match config.get(key).map(|t| t.bool(&format!("`{key}`"))) {
        Some(Ok(b)) => b,
        Some(Err(e)) => {
            errors.push(e);
            false
        }
        None => false,
    }
}

fn traced(actions: &mut RequestActions, name: &'static str) {
    actions.upstream_header(
        HeaderName::from_static(TRACE_HEADER),
        HeaderValue::from_static(name),
    );
}

// === impl DenyHeader ===

impl Plugin for DenyHeader {
    const NAME: &'static str = "deny-header";
    type Call = ();

    fn from_config(config: &ConfigNode) -> Result<Self, Vec<ConfigError>> {
        let what = "`deny-header`";
        let mut errors = config.unknown_keys(what, &["header", "status", "trace"]);
        let header = header_name(config, "header", what).map_err(|e| errors.push(e));
        let status = match config.get("status") {
            None => Ok(StatusCode::FORBIDDEN),
            Some(s) => s
                .u64("`status`")
                .and_then(|c| {
                    u16::try_from(c)
                        .ok()
                        .filter(|c| (400..=599).contains(c))
                        .and_then(|c| StatusCode::from_u16(c).ok())
                        .ok_or_else(|| {
                            s.error(format!("`status` must be from 400 to 599, found {c}"))
                        })
                })
                .map_err(|e| errors.push(e)),
        };
        let trace = flag(config, "trace", &mut errors);
        match (header, status) {
            (Ok(header), Ok(status)) if errors.is_empty() => Ok(DenyHeader {
                header,
                status,
                trace,
            }),
            _ => Err(errors),
        }
    }

    fn on_request(
        &self,
        _call: &mut (),
        request: &Request<'_>,
        actions: &mut RequestActions,
    ) -> Result<(), PluginError> {
        if request.headers.contains_key(&self.header) {
            actions.deny(Denial::new(
                self.status,
                "urn:tollgate:plugin:deny-header",
                "Header not allowed",
                format!(
                    "Requests carrying `{}` are refused here; remove the header.",
                    self.header
                ),
            ));
        } else if self.trace {
            traced(actions, Self::NAME);
        }
        Ok(())
    }
}

// === impl DebugFail ===

impl DebugFail {
    /// Fails when the call carries the header and this is the configured hook.
    fn check(&self, triggered: bool, hook: Hook) -> Result<(), PluginError> {
        if triggered && self.at == hook {
            let message = format!(
                "debug-fail: failing at {hook:?} as configured (the call carries `{}`)",
                self.when_header
            );
            if self.panic {
                panic!("{message}");
            }
            return Err(PluginError::new(message));
        }
        Ok(())
    }
}

/// Per-call state of `debug-fail`: whether the request carried the trigger header, learnt in
/// `on_request` and read by the later hooks.
#[derive(Debug, Default)]
pub struct Triggered(bool);

impl Plugin for DebugFail {
    const NAME: &'static str = "debug-fail";
    type Call = Triggered;

    fn from_config(config: &ConfigNode) -> Result<Self, Vec<ConfigError>> {
        let what = "`debug-fail`";
        let mut errors = config.unknown_keys(what, &["when_header", "at", "panic", "trace"]);
        let when_header = header_name(config, "when_header", what).map_err(|e| errors.push(e));
        let at = match config.get("at") {
            None => Ok(Hook::Request),
            Some(n) => match n.str("`at`") {
                Ok("request") => Ok(Hook::Request),
                Ok("response_headers") => Ok(Hook::ResponseHeaders),
                Ok("response_body") => Ok(Hook::ResponseBody),
                Ok(other) => Err(n.error(format!(
                    "`at` must be one of: request, response_headers, response_body; found \"{other}\""
                ))),
                Err(e) => Err(e),
            }
            .map_err(|e| errors.push(e)),
        };
        let panic = flag(config, "panic", &mut errors);
        let trace = flag(config, "trace", &mut errors);
        match (when_header, at) {
            (Ok(when_header), Ok(at)) if errors.is_empty() => Ok(DebugFail {
                when_header,
                at,
                panic,
                trace,
            }),
            _ => Err(errors),
        }
    }

    fn on_request(
        &self,
        call: &mut Triggered,
        request: &Request<'_>,
        actions: &mut RequestActions,
    ) -> Result<(), PluginError> {
        call.0 = request.headers.contains_key(&self.when_header);
        self.check(call.0, Hook::Request)?;
        if self.trace {
            traced(actions, Self::NAME);
        }
        Ok(())
    }

    fn on_response_headers(
        &self,
        call: &mut Triggered,
        _response: &Response<'_>,
    ) -> Result<(), PluginError> {
        self.check(call.0, Hook::ResponseHeaders)
    }

    fn on_response_body(
        &self,
        call: &mut Triggered,
        _chunk: &[u8],
        _end_of_stream: bool,
        _meters: &mut Measurements,
    ) -> Result<(), PluginError> {
        self.check(call.0, Hook::ResponseBody)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tollgate_plugin::ConfigValue;

    fn map(entries: &[(&str, ConfigValue)]) -> ConfigNode {
        let entries = entries
            .iter()
            .enumerate()
            .map(|(i, (k, v))| {
                let line = i as u64 + 2;
                (
                    ConfigNode::new(line, 3, ConfigValue::Str(k.to_string())),
                    ConfigNode::new(line, 10, v.clone()),
                )
            })
            .collect();
        ConfigNode::new(1, 1, ConfigValue::Map(entries))
    }

    #[test]
    fn config_errors_carry_positions() {
        let e = DenyHeader::from_config(&map(&[("status", ConfigValue::Int(200))])).unwrap_err();
        let lines: Vec<String> = e.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "1:1: `deny-header` needs `header` (a request header name)",
                "2:10: `status` must be from 400 to 599, found 200"
            ]
        );
        let e = DebugFail::from_config(&map(&[
            ("when_header", ConfigValue::Str("x-fail".into())),
            ("at", ConfigValue::Str("later".into())),
        ]))
        .unwrap_err();
        assert_eq!(e[0].line, 3);
    }
}
