//! `onboarding.webhooks` (SPEC §2, §6): milestones POSTed to a URL, signed per Standard
//! Webhooks. Decoded here, beside `onboarding.rs`; each webhook is delivered as one more
//! telemetry sink (see [`Webhook::sink`]), so it gets its own spool position and the delivery
//! loop's retries, and webhooks need a `telemetry:` section.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use base64::Engine;
use sha2::{Digest, Sha256};

use super::decode::Decoder;
use super::node::Node;
use super::telemetry::{SinkConfig, SinkKind};
use crate::pipeline::milestone::Kind;

/// One entry of `onboarding.webhooks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// `http://…` or `https://…`.
    pub url: String,
    /// The milestones posted, never empty.
    pub events: Vec<Kind>,
    /// The signing key.
    pub secret: WebhookSecret,
    /// Upper bound on one POST, connecting included: a receiver that has not answered by then
    /// failed this attempt, which is retried like any other failure.
    pub timeout: Duration,
    /// How long one milestone may keep failing before the webhook skips it, so the ones after
    /// it go on; `None`: it is retried for as long as the spool holds it.
    pub give_up_after: Option<Duration>,
    /// `ca_file` (`https://` only): certificates trusted besides the webpki roots, for a
    /// receiver behind a private CA.
    pub ca: Vec<rustls::pki_types::CertificateDer<'static>>,
}

/// `timeout` when a webhook does not set it.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A webhook's signing key: the bytes after `whsec_`, base64-decoded. Its `Debug` never shows
/// them, so a logged config (or a reload's comparison of configs) cannot leak the key.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

impl WebhookSecret {
    /// The HMAC-SHA256 key.
    pub fn key(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// The prefix Standard Webhooks puts before a base64 secret.
const SECRET_PREFIX: &str = "whsec_";

impl Webhook {
    /// The telemetry sink that delivers this webhook. It is named after a hash of the URL, not
    /// its place in the list, so reordering the list keeps every webhook's spool position (the
    /// name is the position file's name); the sink's errors name the URL.
    pub fn sink(&self) -> SinkConfig {
        let digest = Sha256::digest(self.url.as_bytes());
        SinkConfig {
            name: format!("webhook-{}", hex::encode(&digest[..4])),
            kind: SinkKind::Webhook(self.clone()),
        }
    }
}

pub(super) fn webhooks(d: &mut Decoder, n: &Node) -> Option<Vec<Webhook>> {
    let items = d.list(n, "`onboarding.webhooks`")?;
    let mut urls = BTreeSet::new();
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for item in items {
        match webhook(d, item) {
            Some(w) if !urls.insert(w.url.clone()) => {
                d.err(
                    item.pos,
                    format!(
                        "two webhooks post to {}; list every event under one of them",
                        w.url
                    ),
                );
                ok = false;
            }
            Some(w) => out.push(w),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn webhook(d: &mut Decoder, n: &Node) -> Option<Webhook> {
    const WHAT: &str = "a webhook";
    let f = d.fields(
        n,
        WHAT,
        &[
            "url",
            "events",
            "secret",
            "timeout",
            "give_up_after",
            "ca_file",
        ],
    )?;
    let url = d.require(&f, "url", WHAT).and_then(|v| {
        let url = d.string(v, "`url` of a webhook")?;
        let ok = ["http://", "https://"]
            .iter()
            .any(|s| url.len() > s.len() && url.starts_with(s));
        if !ok {
            d.err(
                v.pos,
                format!("`url` of a webhook must start with http:// or https://, found \"{url}\""),
            );
        }
        ok.then_some(url)
    });
    let events = d.require(&f, "events", WHAT).and_then(|v| events(d, v));
    let secret = d.require(&f, "secret", WHAT).and_then(|v| {
        let text = d.string(v, "`secret` of a webhook")?;
        match secret(&text) {
            Ok(key) => Some(key),
            Err(why) => {
                d.err(v.pos, format!("`secret` of a webhook {why}"));
                None
            }
        }
    });
    let timeout = match f.get("timeout") {
        Some(v) => positive_duration(d, v, "`timeout` of a webhook"),
        None => Some(DEFAULT_TIMEOUT),
    };
    let give_up_after = match f.get("give_up_after") {
        Some(v) => positive_duration(d, v, "`give_up_after` of a webhook").map(Some),
        None => Some(None),
    };
    let ca = d.ca_file(f.get("ca_file"), "ca_file", url.as_deref(), "https://");
    Some(Webhook {
        url: url?,
        events: events?,
        secret: secret?,
        timeout: timeout?,
        give_up_after: give_up_after?,
        ca: ca?,
    })
}

fn positive_duration(d: &mut Decoder, v: &Node, what: &str) -> Option<Duration> {
    let t = d.duration(v, what)?;
    if t.is_zero() {
        d.err(v.pos, format!("{what} must be more than 0"));
        return None;
    }
    Some(t)
}

fn events(d: &mut Decoder, n: &Node) -> Option<Vec<Kind>> {
    let names = d.strings(n, "`events` of a webhook")?;
    if names.is_empty() {
        d.err(
            n.pos,
            format!(
                "`events` of a webhook needs at least one milestone: {}",
                milestone_names()
            ),
        );
        return None;
    }
    let mut out = Vec::with_capacity(names.len());
    let mut ok = true;
    for (name, pos) in names {
        match Kind::ALL.iter().find(|k| k.as_str() == name) {
            Some(k) if !out.contains(k) => out.push(*k),
            Some(_) => {}
            None => {
                d.err(
                    pos,
                    format!(
                        "unknown milestone `{name}` in `events` of a webhook; expected one of: {}",
                        milestone_names()
                    ),
                );
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

fn milestone_names() -> String {
    Kind::ALL.map(Kind::as_str).join(", ")
}

/// The key of a `whsec_…` secret, or why it is not one. The reason never quotes the secret.
fn secret(text: &str) -> Result<WebhookSecret, &'static str> {
    let Some(encoded) = text.strip_prefix(SECRET_PREFIX) else {
        return Err("must start with `whsec_` followed by base64 (a Standard Webhooks secret)");
    };
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| "must be `whsec_` followed by standard base64")?;
    if !(24..=64).contains(&key.len()) {
        return Err("must decode to 24 to 64 bytes after `whsec_`");
    }
    Ok(WebhookSecret(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_decode_and_never_show() {
        let key = secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(key.key().len(), 24);
        assert_eq!(format!("{key:?}"), "WebhookSecret(<redacted>)");
        assert!(secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(secret("whsec_not base64!").is_err());
        assert!(secret("whsec_c2hvcnQ=").is_err(), "5 bytes is too short");
    }

    #[test]
    fn sink_names_follow_the_url() {
        let hook = |url: &str| Webhook {
            url: url.into(),
            events: vec![Kind::FirstCall],
            secret: WebhookSecret(vec![0; 24]),
            timeout: DEFAULT_TIMEOUT,
            give_up_after: None,
            ca: Vec::new(),
        };
        let a = hook("https://a.example/hook").sink();
        assert!(
            a.name.starts_with("webhook-") && a.name.len() == 16,
            "{}",
            a.name
        );
        assert_eq!(a.name, hook("https://a.example/hook").sink().name);
        assert_ne!(a.name, hook("https://b.example/hook").sink().name);
    }
}
