//! `webhook`: one `onboarding.webhooks` entry. Each chosen milestone is POSTed on its own, the
//! body being the CloudEvent as spooled, signed per Standard Webhooks:
//!
//! ```text
//! webhook-id:        <the event's CloudEvents id>     (the same on every attempt)
//! webhook-timestamp: <Unix seconds of this attempt>
//! webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>
//! ```
//!
//! The sink reads the whole spool like every other sink and skips what it does not carry: a
//! byte search finds the rare milestone among the usage events before anything is parsed.
//! Delivery is at least once: any 2xx acknowledges one event; anything else fails the batch,
//! which the delivery loop retries with backoff. The ids already acknowledged in a failing batch
//! are remembered, so a retry resends only what is missing (a restart forgets them: receivers
//! deduplicate on `webhook-id`). The timestamp is signed afresh at each attempt, so receivers
//! that bound its age (five minutes in the reference libraries) accept a late retry too.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::{Sink, SinkError};
use crate::config::Webhook;
use crate::telemetry::event::MILESTONE_TYPE;

/// Upper bound on one POST, connecting included.
const TIMEOUT: Duration = Duration::from_secs(10);

/// POSTs chosen milestones, signed, to one URL.
pub struct WebhookSink {
    client: reqwest::Client,
    url: String,
    key: Vec<u8>,
    /// `data.milestone` values this webhook carries.
    events: Vec<&'static str>,
    /// Ids the receiver acknowledged in the batch being delivered; emptied once it is done.
    accepted: HashSet<String>,
}

impl std::fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSink")
            .field("url", &self.url)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

/// The fields of a spooled event the sink looks at.
#[derive(Deserialize)]
struct Head {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Option<HeadData>,
}

#[derive(Deserialize)]
struct HeadData {
    #[serde(default)]
    milestone: Option<String>,
}

impl WebhookSink {
    /// A sink for `hook`. Redirects are not followed: a POST answered 3xx was not accepted.
    pub fn new(hook: &Webhook) -> Result<WebhookSink, SinkError> {
        // An `https://` client needs the process's TLS provider; `build` panics without one.
        crate::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SinkError::Http(e.to_string()))?;
        Ok(WebhookSink {
            client,
            url: hook.url.clone(),
            key: hook.secret.key().to_vec(),
            events: hook.events.iter().map(|k| k.as_str()).collect(),
            accepted: HashSet::new(),
        })
    }

    /// The id of `event` when this webhook carries it.
    fn wanted(&self, event: &[u8]) -> Option<String> {
        if !contains(event, MILESTONE_TYPE.as_bytes()) {
            return None;
        }
        let head: Head = serde_json::from_slice(event).ok()?;
        let milestone = head.data?.milestone?;
        (head.kind == MILESTONE_TYPE && self.events.contains(&milestone.as_str()))
            .then_some(head.id)
    }

    async fn post(&self, id: &str, event: &Bytes) -> Result<(), SinkError> {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let response = self
            .client
            .post(&self.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                signature(&self.key, id, timestamp, event),
            )
            .body(event.clone())
            .send()
            .await
            .map_err(|e| SinkError::Http(format!("{}: {e}", self.url)))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(SinkError::Http(format!(
                "{} answered {status} to webhook {id}",
                self.url
            )))
        }
    }
}

#[async_trait]
impl Sink for WebhookSink {
    async fn deliver(&mut self, batch: &[Bytes]) -> Result<(), SinkError> {
        for event in batch {
            let Some(id) = self.wanted(event) else {
                continue;
            };
            if self.accepted.contains(&id) {
                continue;
            }
            self.post(&id, event).await?;
            self.accepted.insert(id);
        }
        // The batch is acknowledged; the next call brings a new one.
        self.accepted.clear();
        Ok(())
    }
}

/// `v1,` + base64(HMAC-SHA256(`key`, "{id}.{timestamp}.{body}")): the Standard Webhooks
/// signature.
pub fn signature(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    // HMAC takes a key of any length; the error case cannot happen.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag)
    )
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::milestone::Kind;

    #[test]
    fn signs_the_standard_webhooks_test_vector() {
        let key = base64::engine::general_purpose::STANDARD
            .decode("C2FVsBQIhrscChlQIMV+b5sSYspob7oD")
            .unwrap();
        assert_eq!(
            signature(
                &key,
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1_649_367_553,
                br#"{"email":"test@example.com","username":"test_user"}"#
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn picks_only_the_chosen_milestones() {
        let config = crate::config::load_str(
            "t.yaml",
            r#"
server: { listen: "127.0.0.1:8080" }
store: { kind: embedded, path: "/tmp/unused.db" }
plans: { free: {} }
routes: [{ name: r, match: { path: / }, respond: { body: hi } }]
telemetry: { sinks: [{ kind: file, path: events.jsonl }] }
onboarding:
  webhooks:
    - url: "http://127.0.0.1:1/hook"
      events: [first_call, limit_reached]
      secret: "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
"#,
            &|_| None,
        )
        .unwrap();
        let hook = &config.onboarding.unwrap().webhooks[0];
        assert_eq!(hook.events, vec![Kind::FirstCall, Kind::LimitReached]);
        let sink = WebhookSink::new(hook).unwrap();
        let milestone = |m: &str| {
            format!(
                r#"{{"id":"e-{m}","type":"dev.tollgate.milestone","data":{{"milestone":"{m}"}}}}"#
            )
        };
        assert_eq!(
            sink.wanted(milestone("first_call").as_bytes()).as_deref(),
            Some("e-first_call")
        );
        assert_eq!(sink.wanted(milestone("limit_warning").as_bytes()), None);
        let request = r#"{"id":"r","type":"dev.tollgate.request","data":{"milestone":"first_call","note":"dev.tollgate.milestone"}}"#;
        assert_eq!(sink.wanted(request.as_bytes()), None);
        assert!(!format!("{sink:?}").contains("C2FV"));
    }
}
