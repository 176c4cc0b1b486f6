//! The sink: usage events → Stripe meter events, a batch at a time.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;

use futures_util::stream::{self, StreamExt};
use serde::Deserialize;
use tollgate_plugin::{Delivery, EventSink, SinkFailure};

use crate::{Settings, METER_EVENTS_PATH};

/// How many accepted identifiers are remembered, so a batch the host retries (because another
/// request of it failed) does not send again what Stripe already took. It only has to cover
/// one batch (`telemetry.batch` events × meters); what falls out is still deduplicated by
/// Stripe on the identifier.
pub const REMEMBERED: usize = 65_536;

/// The CloudEvents type of a call's usage event: the only one carrying `data.meters`.
const REQUEST_TYPE: &str = "dev.tollgate.request";

/// One request to Stripe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterEvent {
    /// `<event id>-<meter>`: stable across redeliveries of the same usage event.
    pub identifier: String,
    /// The Stripe meter's `event_name`.
    pub event_name: String,
    /// `payload[stripe_customer_id]`.
    pub customer: String,
    /// `payload[value]`: the settled units.
    pub value: u64,
    /// The usage event's time, in Unix seconds.
    pub timestamp: i64,
}

/// What a batch came to, for the log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Skipped {
    /// Events whose tenant has no Stripe customer.
    pub no_customer: u64,
    /// Meters with 0 settled units.
    pub zero: u64,
    /// Events that are not readable usage events.
    pub unreadable: u64,
}

/// The part of a usage event this sink reads.
#[derive(Deserialize)]
struct Event {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    time: String,
    #[serde(default)]
    data: Option<Data>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    meters: BTreeMap<String, u64>,
}

/// How Stripe answered one request.
enum Answer {
    /// Taken, now or before (a duplicate identifier).
    Accepted,
    /// Refused for good: retrying the same request would be refused again.
    Rejected(String),
    /// Not taken this time (429, 5xx, network, credentials): the batch is retried.
    Retry(String),
}

/// Delivers usage events to Stripe (see the crate docs).
pub struct StripeSink {
    settings: Arc<Settings>,
    /// Built on the first delivery, on the runtime that delivers.
    client: Option<reqwest::Client>,
    accepted: Remembered,
    /// Tenants already logged as having no customer (bounded), so the log says it once each.
    unmapped_logged: HashSet<String>,
}

impl StripeSink {
    /// A sink with the plugin's settings; no connection yet.
    pub fn new(settings: Arc<Settings>) -> StripeSink {
        StripeSink {
            settings,
            client: None,
            accepted: Remembered::new(REMEMBERED),
            unmapped_logged: HashSet::new(),
        }
    }

    fn client(&mut self) -> Result<reqwest::Client, SinkFailure> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let client = reqwest::Client::builder()
            .timeout(self.settings.timeout)
            .build()
            .map_err(|e| SinkFailure::new(format!("cannot build the HTTP client: {e}")))?;
        self.client = Some(client.clone());
        Ok(client)
    }

    /// The meter events of `events` not yet accepted, and what was skipped.
    pub fn plan(&mut self, events: &[&[u8]]) -> (Vec<MeterEvent>, Skipped) {
        let mut out = Vec::new();
        let mut skipped = Skipped::default();
        for raw in events {
            let event: Event = match serde_json::from_slice(raw) {
                Ok(e) => e,
                Err(_) => {
                    skipped.unreadable += 1;
                    continue;
                }
            };
            if event.kind != REQUEST_TYPE {
                continue;
            }
            let (Some(data), Ok(time)) = (event.data, event.time.parse::<jiff::Timestamp>()) else {
                skipped.unreadable += 1;
                continue;
            };
            let wanted: Vec<(&String, u64)> = data
                .meters
                .iter()
                .filter(|(m, _)| self.settings.meters.contains_key(*m))
                .map(|(m, u)| (m, *u))
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let tenant = data.tenant.as_deref().unwrap_or("");
            let Some(customer) = (!tenant.is_empty())
                .then(|| self.settings.customer(tenant))
                .flatten()
            else {
                skipped.no_customer += 1;
                if self.unmapped_logged.len() < 1024 && self.unmapped_logged.insert(tenant.into()) {
                    tracing::warn!(
                        plugin = "stripe-meter",
                        tenant,
                        "A tenant has no Stripe customer (`customers` or `customer_from`); its usage is not forwarded."
                    );
                }
                continue;
            };
            for (meter, units) in wanted {
                if units == 0 {
                    skipped.zero += 1;
                    continue;
                }
                let identifier = format!("{}-{meter}", event.id);
                if self.accepted.contains(&identifier) {
                    continue;
                }
                let Some(event_name) = self.settings.meters.get(meter) else {
                    continue;
                };
                out.push(MeterEvent {
                    identifier,
                    event_name: event_name.clone(),
                    customer: customer.to_string(),
                    value: units,
                    timestamp: time.as_second(),
                });
            }
        }
        (out, skipped)
    }

    async fn deliver_all(&mut self, events: &[&[u8]]) -> Result<(), SinkFailure> {
        let (todo, skipped) = self.plan(events);
        if skipped != Skipped::default() {
            tracing::debug!(
                plugin = "stripe-meter",
                no_customer = skipped.no_customer,
                zero_units = skipped.zero,
                unreadable = skipped.unreadable,
                "Usage not forwarded to Stripe (skipped by design)."
            );
        }
        if todo.is_empty() {
            return Ok(());
        }
        let client = self.client()?;
        let settings = self.settings.clone();
        let url = format!("{}{METER_EVENTS_PATH}", settings.api_base);
        let answers: Vec<(String, Answer)> = stream::iter(todo)
            .map(|e| {
                let (client, settings, url) = (&client, &settings, &url);
                async move {
                    let answer = send(client, settings, url, &e).await;
                    (e.identifier, answer)
                }
            })
            .buffer_unordered(settings.concurrency)
            .collect()
            .await;
        let mut failed = 0usize;
        let mut first = None;
        for (identifier, answer) in answers {
            match answer {
                Answer::Accepted => self.accepted.insert(identifier),
                Answer::Rejected(why) => {
                    tracing::warn!(plugin = "stripe-meter", identifier = %identifier, reason = %why, "Stripe rejected a meter event; it is not retried.");
                    self.accepted.insert(identifier);
                }
                Answer::Retry(why) => {
                    failed += 1;
                    first.get_or_insert(why);
                }
            }
        }
        match first {
            None => Ok(()),
            Some(why) => Err(SinkFailure::new(format!(
                "{failed} meter event(s) not accepted by Stripe (first: {why}); the batch is retried, accepted ones are not resent"
            ))),
        }
    }
}

impl EventSink for StripeSink {
    fn deliver<'a>(&'a mut self, events: &'a [&'a [u8]]) -> Delivery<'a> {
        Box::pin(self.deliver_all(events))
    }
}

/// The form fields of one meter event, in the documented names.
pub fn form(e: &MeterEvent) -> [(&'static str, String); 5] {
    [
        ("event_name", e.event_name.clone()),
        ("payload[stripe_customer_id]", e.customer.clone()),
        ("payload[value]", e.value.to_string()),
        ("identifier", e.identifier.clone()),
        ("timestamp", e.timestamp.to_string()),
    ]
}

/// POSTs one meter event and classifies the answer.
async fn send(client: &reqwest::Client, settings: &Settings, url: &str, e: &MeterEvent) -> Answer {
    let response = client
        .post(url)
        .bearer_auth(&settings.api_key)
        .form(&form(e))
        .send()
        .await;
    let response = match response {
        Ok(r) => r,
        // reqwest's message names the URL, never the headers: no key in it.
        Err(err) => return Answer::Retry(format!("request failed: {err}")),
    };
    let status = response.status();
    if status.is_success() {
        return Answer::Accepted;
    }
    let body = response.bytes().await.unwrap_or_default();
    classify(status.as_u16(), &body)
}

/// Stripe's error body: `{"error": {"type", "code", "message"}}`.
#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: StripeError,
}

#[derive(Deserialize, Default)]
struct StripeError {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// A non-2xx answer: a duplicate identifier counts as accepted (Stripe has the event);
/// throttling, server errors and credential problems are retried; any other client error is a
/// permanent rejection.
fn classify(status: u16, body: &[u8]) -> Answer {
    let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let message: String = parsed
        .error
        .message
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect();
    let duplicate = matches!(status, 400 | 409)
        && (parsed.error.code.as_deref() == Some("resource_already_exists")
            || message.contains("already exists"));
    if duplicate {
        return Answer::Accepted;
    }
    let why = format!("Stripe answered {status}: {message}");
    match status {
        401 | 403 | 408 | 409 | 429 => Answer::Retry(why),
        s if s >= 500 => Answer::Retry(why),
        _ => Answer::Rejected(why),
    }
}

/// A bounded set: the oldest entry leaves when it is full.
struct Remembered {
    set: HashSet<String>,
    order: VecDeque<String>,
    cap: usize,
}

impl Remembered {
    fn new(cap: usize) -> Remembered {
        Remembered {
            set: HashSet::new(),
            order: VecDeque::new(),
            cap,
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    fn insert(&mut self, id: String) {
        if self.set.contains(&id) {
            return;
        }
        if self.order.len() >= self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.set.insert(id.clone());
        self.order.push_back(id);
    }
}

#[cfg(test)]
pub(crate) fn classify_for_test(status: u16, body: &[u8]) -> &'static str {
    match classify(status, body) {
        Answer::Accepted => "accepted",
        Answer::Rejected(_) => "rejected",
        Answer::Retry(_) => "retry",
    }
}

#[cfg(test)]
pub(crate) fn remembered_for_test(cap: usize, ids: &[&str]) -> Vec<bool> {
    let mut r = Remembered::new(cap);
    for id in ids {
        r.insert(id.to_string());
    }
    ids.iter().map(|id| r.contains(id)).collect()
}
