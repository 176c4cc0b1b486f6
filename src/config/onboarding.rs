//! `onboarding:` — lifecycle milestones (SPEC §2, §6). The validated types live here too, so the
//! section is one file, but for `webhooks`, decoded in `webhooks.rs`.
//!
//! `anonymous_id_header` is part of the contract but not of this release, so it is refused at its
//! position rather than ignored.

use std::num::NonZeroU64;
use std::time::Duration;

use super::decode::Decoder;
use super::node::Node;
use super::webhooks::{self, Webhook};

/// `onboarding:` — present means milestones are detected (and emitted when `telemetry` is set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Onboarding {
    /// What counts as `activated`, if configured.
    pub activation: Option<Activation>,
    /// `webhooks`: milestones POSTed, signed, to each URL (delivered as telemetry sinks).
    pub webhooks: Vec<Webhook>,
}

/// `onboarding.activation`: `calls` admitted calls within `within` of the first call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activation {
    /// Admitted calls needed.
    pub calls: NonZeroU64,
    /// Counted from the tenant's first call.
    pub within: Duration,
}

/// Keys of the contract that this release does not implement yet.
const NOT_YET: &[&str] = &["anonymous_id_header"];

pub(super) fn onboarding(d: &mut Decoder, n: &Node) -> Option<Onboarding> {
    let f = d.fields(
        n,
        "`onboarding`",
        &["activation", "anonymous_id_header", "webhooks"],
    )?;
    for key in NOT_YET {
        if let Some(n) = f.get(key) {
            d.err(
                n.pos,
                format!(
                    "`onboarding.{key}` is not supported yet by this version of tollgate; remove it"
                ),
            );
        }
    }
    // Decoded before `activation`, whose mistakes return early, so both report theirs.
    let webhooks = f.get("webhooks").map(|n| webhooks::webhooks(d, n));
    let activation = match f.get("activation") {
        Some(n) => Some(activation(d, n)?),
        None => None,
    };
    let webhooks = match webhooks {
        Some(w) => w?,
        None => Vec::new(),
    };
    Some(Onboarding {
        activation,
        webhooks,
    })
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
