//! `onboarding:` — lifecycle milestones (SPEC §2, §6). The validated types live here too, so the
//! section is one file, but for `webhooks`, decoded in `webhooks.rs`.

use std::num::NonZeroU64;
use std::time::Duration;

use http::HeaderName;

use super::decode::Decoder;
use super::node::{Node, Pos};
use super::webhooks::{self, Webhook};
use super::Telemetry;

/// `onboarding:` — present means milestones are detected (and emitted when `telemetry` is set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Onboarding {
    /// What counts as `activated`, if configured.
    pub activation: Option<Activation>,
    /// The header carrying the client-side anonymous id analytics SDKs send
    /// (`anonymous_id_header`, default `x-anonymous-id`), lower-cased.
    pub anonymous_id_header: HeaderName,
    /// `webhooks`: milestones POSTed, signed, to each URL (delivered as telemetry sinks).
    pub webhooks: Vec<Webhook>,
}

/// The header analytics SDKs send a visitor's anonymous id in, unless `anonymous_id_header`
/// names another.
pub const DEFAULT_ANONYMOUS_ID_HEADER: &str = "x-anonymous-id";

/// `onboarding.activation`: `calls` admitted calls within `within` of the first call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activation {
    /// Admitted calls needed.
    pub calls: NonZeroU64,
    /// Counted from the tenant's first call.
    pub within: Duration,
}

/// `telemetry` is the `telemetry` section as decoded (`None`: absent; `Some(None)`: present
/// but broken), which webhooks are delivered through.
pub(super) fn onboarding(
    d: &mut Decoder,
    n: &Node,
    telemetry: Option<&Option<Telemetry>>,
) -> Option<Onboarding> {
    let f = d.fields(
        n,
        "`onboarding`",
        &["activation", "anonymous_id_header", "webhooks"],
    )?;
    // Every key is decoded before any early return, so each reports its mistakes.
    let webhooks = f.get("webhooks").map(|n| {
        let hooks = webhooks::webhooks(d, n);
        if let Some(hooks) = &hooks {
            fit_telemetry(d, n.pos, hooks, telemetry);
        }
        hooks
    });
    let activation = match f.get("activation") {
        Some(n) => activation(d, n).map(Some),
        None => Some(None),
    };
    let anonymous_id_header = match f.get("anonymous_id_header") {
        Some(n) => {
            let name = d.string(n, "`onboarding.anonymous_id_header`")?;
            match HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
                Ok(h) => h,
                Err(_) => {
                    d.err(
                        n.pos,
                        format!("`onboarding.anonymous_id_header` must be a header name, found `{name}`"),
                    );
                    return None;
                }
            }
        }
        None => HeaderName::from_static(DEFAULT_ANONYMOUS_ID_HEADER),
    };
    let webhooks = match webhooks {
        Some(w) => w?,
        None => Vec::new(),
    };
    Some(Onboarding {
        activation: activation?,
        anonymous_id_header,
        webhooks,
    })
}

/// Webhooks are telemetry sinks (see `config::decode_root`): they need the section, and a
/// sink of its own may not take a webhook's name.
fn fit_telemetry(
    d: &mut Decoder,
    at: Pos,
    hooks: &[Webhook],
    telemetry: Option<&Option<Telemetry>>,
) {
    match telemetry {
        None if !hooks.is_empty() => d.err(
            at,
            "`onboarding.webhooks` needs a `telemetry` section: webhooks are delivered from its spool and retried until acknowledged",
        ),
        Some(Some(t)) => {
            for hook in hooks {
                let name = hook.sink().name;
                if t.sinks.iter().any(|s| s.name == name) {
                    d.err(
                        at,
                        format!(
                            "a sink is named `{name}`, the name of the webhook to {}; rename the sink",
                            hook.url
                        ),
                    );
                }
            }
        }
        _ => {}
    }
}

fn activation(d: &mut Decoder, n: &Node) -> Option<Activation> {
    let f = d.fields(n, "`onboarding.activation`", &["calls", "within"])?;
    let calls = d
        .require(&f, "calls", "`onboarding.activation`")
        .and_then(|n| d.int(n, "`onboarding.activation.calls`", 1, i64::MAX))
        .and_then(|c| NonZeroU64::new(c as u64));
    let within = d
        .require(&f, "within", "`onboarding.activation`")
        .and_then(|n| d.duration(n, "`onboarding.activation.within`"));
    let within = match within {
        Some(w) if w.is_zero() => {
            if let Some(n) = f.get("within") {
                d.err(
                    n.pos,
                    "`onboarding.activation.within` must be longer than 0",
                );
            }
            None
        }
        other => other,
    };
    Some(Activation {
        calls: calls?,
        within: within?,
    })
}
