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
//!
//! Events are posted in spool order and a failing one holds back those after it. With
//! `give_up_after`, a milestone that has kept failing that long is skipped (logged with its id,
//! counted in `tollgate_events_total{sink,result="gave_up"}`) so the webhook moves on: a
//! receiver that refuses one event for good (a 400 for a body it cannot take) then costs that
//! event, not every milestone after it.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::{Sink, SinkError};
use crate::config::Webhook;
use crate::telemetry::event::MILESTONE_TYPE;

/// POSTs chosen milestones, signed, to one URL.
pub struct WebhookSink {
    client: reqwest::Client,
    url: String,
    key: Vec<u8>,
    /// `data.milestone` values this webhook carries.
    events: Vec<&'static str>,
    /// Ids the receiver acknowledged in the batch being delivered; emptied once it is done.
    accepted: HashSet<String>,
    /// `give_up_after` of the webhook.
    give_up_after: Option<Duration>,
    /// When each event that is failing now first failed (only the batch being delivered's).
    failing_since: HashMap<String, Instant>,
    /// Counts the events given up on.
    gave_up: Option<prometheus::IntCounter>,
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
        let tls = crate::tls::client_config(&hook.ca).map_err(SinkError::Tls)?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(hook.timeout)
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
            give_up_after: hook.give_up_after,
            failing_since: HashMap::new(),
            gave_up: None,
        })
    }

    /// Counts the events this webhook gives up on in `counter`.
    pub fn count_give_ups(mut self, counter: prometheus::IntCounter) -> WebhookSink {
        self.gave_up = Some(counter);
        self
    }

    /// After a failed POST of `id`: whether to skip it now (it has failed for `give_up_after`).
    fn gives_up(&mut self, id: &str, error: &SinkError) -> bool {
        let Some(limit) = self.give_up_after else {
            return false;
        };
        let since = *self
            .failing_since
            .entry(id.to_string())
            .or_insert_with(Instant::now);
        if since.elapsed() < limit {
            return false;
        }
        self.failing_since.remove(id);
        if let Some(c) = &self.gave_up {
            c.inc();
        }
        tracing::error!(
            url = %self.url,
            webhook_id = %id,
            failing_for = ?since.elapsed(),
            error = %error,
            "Webhook gave up on a milestone after `give_up_after`; the ones after it go on."
        );
        true
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
            .map_err(|e| SinkError::Http(format!("{}: {}", self.url, super::with_causes(&e))))?;
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
            match self.post(&id, event).await {
                Ok(()) => {
                    self.failing_since.remove(&id);
                }
                Err(e) if self.gives_up(&id, &e) => {}
                Err(e) => return Err(e),
            }
            self.accepted.insert(id);
        }
        // The batch is acknowledged; the next call brings a new one.
        self.accepted.clear();
        self.failing_since.clear();
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
    use std::sync::{Arc, Mutex};

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

    /// The webhook of a config posting `first_call` and `limit_reached` to `url`.
    fn hook(url: &str) -> Webhook {
        let yaml = format!(
            r#"
server: {{ listen: "127.0.0.1:8080" }}
store: {{ kind: embedded, path: "/tmp/unused.db" }}
plans: {{ free: {{}} }}
routes: [{{ name: r, match: {{ path: / }}, respond: {{ body: hi }} }}]
telemetry: {{ sinks: [{{ kind: file, path: events.jsonl }}] }}
onboarding:
  webhooks:
    - url: "{url}"
      events: [first_call, limit_reached]
      secret: "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
"#
        );
        let config = crate::config::load_str("t.yaml", &yaml, &|_| None).unwrap();
        config.onboarding.unwrap().webhooks.remove(0)
    }

    fn milestone(m: &str) -> Bytes {
        Bytes::from(format!(
            r#"{{"id":"e-{m}","type":"dev.tollgate.milestone","data":{{"milestone":"{m}"}}}}"#
        ))
    }

    const REQUEST: &str = r#"{"id":"r","type":"dev.tollgate.request","data":{"milestone":"first_call","note":"dev.tollgate.milestone"}}"#;

    #[test]
    fn picks_only_the_chosen_milestones() {
        let hook = hook("http://127.0.0.1:1/hook");
        assert_eq!(hook.events, vec![Kind::FirstCall, Kind::LimitReached]);
        let sink = WebhookSink::new(&hook).unwrap();
        assert_eq!(
            sink.wanted(&milestone("first_call")).as_deref(),
            Some("e-first_call")
        );
        assert_eq!(sink.wanted(&milestone("limit_warning")), None);
        assert_eq!(sink.wanted(REQUEST.as_bytes()), None);
        assert!(!format!("{sink:?}").contains("C2FV"));
    }

    /// A receiver recording each `webhook-id`; it answers 500 to the first attempt at
    /// `e-limit_reached`, 204 to everything else.
    async fn receiver(seen: Arc<Mutex<Vec<String>>>) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen.clone();
                let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    let id = req.headers()["webhook-id"].to_str().unwrap().to_string();
                    let mut seen = seen.lock().unwrap();
                    seen.push(id.clone());
                    let first = seen.iter().filter(|s| **s == id).count() == 1;
                    let status = if first && id == "e-limit_reached" {
                        500
                    } else {
                        204
                    };
                    let response = hyper::Response::builder()
                        .status(status)
                        .body(http_body_util::Full::new(Bytes::new()));
                    async move { response }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_retry_resends_only_what_was_not_accepted() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let addr = receiver(seen.clone()).await;
        let mut sink = WebhookSink::new(&hook(&format!("http://{addr}/hook"))).unwrap();
        let batch = [
            milestone("first_call"),
            Bytes::from(REQUEST),
            milestone("limit_warning"),
            milestone("limit_reached"),
        ];
        assert!(sink.deliver(&batch).await.is_err());
        sink.deliver(&batch).await.unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            ["e-first_call", "e-limit_reached", "e-limit_reached"]
        );
        // The next batch starts with nothing remembered.
        sink.deliver(&batch[..1]).await.unwrap();
        assert_eq!(seen.lock().unwrap().len(), 4);
    }
}
