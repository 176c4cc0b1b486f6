//! The request path's side of usage events: encode, then hand over without waiting.
//!
//! `Emitter::emit` runs in pingora's `logging` phase. It never awaits: the event is encoded
//! straight into a bounded in-memory queue (`queue.rs`), and the spool writer (`service.rs`)
//! takes it from there. When the queue is full (the spool writer is behind, for example on a
//! stalled disk) the event is dropped, counted in
//! `tollgate_events_dropped_total{reason="queue_full"}` and logged: backpressure on a response
//! would be worse than a counted loss.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use jiff::Timestamp;

use super::event::{period_label, period_of, CallEvent};
use super::metrics::Metrics;
use super::outcome::Outcome;
use super::queue::{EventQueue, Refusal};
use crate::config::{Plan, Route};
use crate::meter::period::Window;
use crate::pipeline::identity::Caller;
use crate::pipeline::milestone::{Identify, Milestone};
use crate::pipeline::{Admission, Refused, Rejection};

/// Hands events from the request path to the spool writer.
pub struct Emitter {
    queue: Arc<EventQueue>,
    source: String,
    metrics: Arc<Metrics>,
    dropped: AtomicU64,
}

impl Emitter {
    /// An emitter feeding `queue`, naming itself `source` (`tollgate/<instance>`). Dropping
    /// it closes the queue.
    pub fn new(queue: Arc<EventQueue>, source: String, metrics: Arc<Metrics>) -> Emitter {
        Emitter {
            queue,
            source,
            metrics,
            dropped: AtomicU64::new(0),
        }
    }

    /// The `source` of every event.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Queues one event; never blocks.
    pub fn emit(&self, event: &CallEvent<'_>) {
        let queued = self.queue.push(|buf| event.encode_into(buf));
        self.queued(queued);
    }

    /// Queues a lifecycle milestone's event (`dev.tollgate.milestone`); never blocks.
    pub fn emit_milestone(&self, time: Timestamp, milestone: &Milestone) {
        self.queue_encoded(super::event::encode_milestone(
            &self.source,
            time,
            milestone,
        ));
    }

    /// Queues an anonymous → identified merge's event (`dev.tollgate.identify`); never blocks.
    pub fn emit_identify(&self, time: Timestamp, identify: &Identify) {
        self.queue_encoded(super::event::encode_identify(&self.source, time, identify));
    }

    /// Queues an operator's usage correction's event (`dev.tollgate.adjustment`); never blocks.
    pub fn emit_adjustment(&self, time: Timestamp, adjustment: &super::event::Adjustment<'_>) {
        self.queue_encoded(super::event::encode_adjustment(
            &self.source,
            time,
            adjustment,
        ));
    }

    fn queue_encoded(&self, encoded: Result<Bytes, serde_json::Error>) {
        let queued = self.queue.push(|buf| {
            buf.extend_from_slice(&encoded?);
            Ok(())
        });
        self.queued(queued);
    }

    fn queued(&self, queued: Result<(), Refusal<serde_json::Error>>) {
        match queued {
            Ok(()) => {}
            Err(Refusal::Full) => self.drop_event("queue_full", "the spool writer is behind"),
            Err(Refusal::Closed) => self.drop_event("closed", "the spool writer has stopped"),
            Err(Refusal::Encode(e)) => self.drop_event("encode_error", &e.to_string()),
            Err(Refusal::TooLarge) => self.drop_event(
                "encode_error",
                "the event is over the spool's 1 MiB record limit",
            ),
        }
    }

    /// Counts every drop; logs the 1st, 2nd, 4th, 8th, … so an overload cannot flood the log.
    fn drop_event(&self, reason: &'static str, why: &str) {
        self.metrics
            .events_dropped
            .with_label_values(&[reason])
            .inc();
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(
                reason,
                dropped_so_far = n,
                "Usage event dropped: {why}; see tollgate_events_dropped_total."
            );
        }
    }
}

impl Drop for Emitter {
    /// The request path is gone: the spool writer takes what is queued and stops.
    fn drop(&mut self) {
        self.queue.close();
    }
}

/// A finished call, as its usage event sees it.
pub struct Call<'a> {
    /// The call's id (`server.request_id`), if it has one.
    pub id: Option<uuid::Uuid>,
    /// What was admitted, if anything.
    pub admission: Option<&'a Admission>,
    /// Why it was refused, if it was.
    pub refused: Option<&'a Refused>,
    /// Whether the reservation was refunded.
    pub refunded: bool,
    /// How it ended.
    pub outcome: Outcome,
    /// Request method.
    pub method: &'a str,
    /// Request path.
    pub path: &'a str,
    /// The status sent (0 when none was).
    pub status: u16,
    /// Milliseconds from request to the end of the answer.
    pub latency_ms: f64,
    /// Now, from the gateway's clock.
    pub now: Timestamp,
    /// Fields the route's plugins add to `data`.
    pub extra: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

impl Emitter {
    /// Emits the usage event of `call` if it reached identification (SPEC §3 step 2): admitted
    /// calls and refusals from step 2 on. Public routes, unknown routes and malformed requests
    /// never identify anyone, so they have no event.
    pub fn emit_call(&self, call: &Call<'_>) {
        let (caller, plan, route, meters, period) = match (call.admission, call.refused) {
            (Some(Admission::Admitted(a)), _) => {
                let charged = a.usage.metered && !a.usage.replayed && !call.refunded;
                let meters = a
                    .usage
                    .meters
                    .iter()
                    .map(|m| (m.name.as_str(), if charged { m.units } else { 0 }))
                    .collect();
                let period = period_of(&a.usage.meters);
                (
                    Some(&a.caller),
                    Some(&a.plan),
                    Some(&a.route),
                    meters,
                    period,
                )
            }
            (None, Some(r))
                if r.caller.is_some() || matches!(r.rejection, Rejection::Unauthenticated(_)) =>
            {
                let period = match &r.rejection {
                    Rejection::QuotaExceeded(q) => period_of(&q.meters),
                    _ => None,
                };
                (
                    r.caller.as_ref(),
                    r.plan.as_ref(),
                    r.route.as_ref(),
                    Vec::new(),
                    period,
                )
            }
            _ => return,
        };
        let period = period
            .or_else(|| plan_period(route, plan, caller, call.now))
            .unwrap_or_else(|| {
                let d = call.now.to_zoned(jiff::tz::TimeZone::UTC).date();
                format!("{:04}-{:02}", d.year(), d.month())
            });
        self.emit(&CallEvent {
            id: call.id,
            source: &self.source,
            time: call.now,
            caller,
            plan: plan.map(|p| p.name.as_str()),
            route: route.map(|r| r.name.as_str()),
            method: call.method,
            path: call.path,
            status: call.status,
            outcome: call.outcome.as_str(),
            meters,
            period,
            latency_ms: call.latency_ms,
            extra: call.extra,
        });
    }
}

/// The period of the first meter the route charges on the plan, for calls refused before
/// anything was reserved.
fn plan_period(
    route: Option<&Arc<Route>>,
    plan: Option<&Arc<Plan>>,
    caller: Option<&Caller>,
    now: Timestamp,
) -> Option<String> {
    let (route, plan) = (route?, plan?);
    let policy = route.meter.iter().find_map(|m| plan.meters.get(&m.name))?;
    let anchor = caller.and_then(|c| c.tenant.billing_anchor);
    let window = Window::containing(policy.period, anchor, now).ok()?;
    Some(period_label(policy.period, &window))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(path: &str) -> CallEvent<'_> {
        CallEvent {
            id: None,
            source: "tollgate/test",
            time: Timestamp::UNIX_EPOCH,
            caller: None,
            plan: None,
            route: Some("api"),
            method: "GET",
            path,
            status: 401,
            outcome: "unauthenticated",
            meters: Vec::new(),
            period: "1970-01".into(),
            latency_ms: 0.5,
            extra: None,
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_a_dropped_emitter_closes_it() {
        let metrics = Arc::new(Metrics::unregistered().unwrap());
        let queue = Arc::new(EventQueue::new(2));
        let emitter = Emitter::new(queue.clone(), "tollgate/test".into(), metrics.clone());
        for path in ["/1", "/2", "/3"] {
            emitter.emit(&event(path));
        }
        let dropped = |reason: &str| metrics.events_dropped.with_label_values(&[reason]).get();
        assert_eq!(dropped("queue_full"), 1);
        let queued = queue.take(Vec::new());
        assert_eq!(queued.len(), 2);
        for (bytes, path) in queued.payloads().zip(["/1", "/2"]) {
            let v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
            assert_eq!(v["data"]["path"], path);
        }
        drop(emitter);
        assert!(!queue.wait(), "the queue is closed and empty");
        let late = queue.push(|buf| {
            buf.push(b'x');
            Ok::<(), ()>(())
        });
        assert_eq!(late, Err(Refusal::Closed));
    }
}
