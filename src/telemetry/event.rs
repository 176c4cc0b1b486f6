//! The usage event of one call (SPEC §6): CloudEvents 1.0, structured JSON.
//!
//! Events are serialised once, on the request path, into the bytes every sink sends as they are:
//! the spool stores them and sinks never re-encode, so what one sink delivers is byte for byte
//! what every other sink delivers (same `id`, same `time`).

use std::collections::BTreeMap;

use bytes::Bytes;
use jiff::Timestamp;
use serde::Serialize;

use crate::meter::period::{Period, Window};
use crate::pipeline::identity::Caller;
use crate::pipeline::meter::MeterUse;
use crate::pipeline::milestone::{Identify, Kind, Milestone};

/// The CloudEvents `type` of a call's usage event.
pub const REQUEST_TYPE: &str = "dev.tollgate.request";

/// The CloudEvents `type` of a lifecycle milestone.
pub const MILESTONE_TYPE: &str = "dev.tollgate.milestone";

/// The CloudEvents `type` of an anonymous → identified merge.
pub const IDENTIFY_TYPE: &str = "dev.tollgate.identify";

/// A CloudEvents 1.0 envelope.
#[derive(Serialize)]
struct Envelope<'a, D> {
    specversion: &'static str,
    id: String,
    source: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    time: String,
    datacontenttype: &'static str,
    data: D,
}

/// `data` of a usage event.
#[derive(Serialize)]
struct Data<'a> {
    tenant: Option<&'a str>,
    identity: Option<&'static str>,
    key_id: Option<&'a str>,
    user: Option<&'a str>,
    anonymous_id: Option<&'a str>,
    plan: Option<&'a str>,
    route: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    status: u16,
    outcome: &'static str,
    meters: BTreeMap<&'a str, u64>,
    period: String,
    latency_ms: f64,
    /// Fields plugins added (`on_event`); never one of the fields above.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    extra: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

/// The fields of `data` every event has: plugins may not set them.
pub const DATA_FIELDS: &[&str] = &[
    "tenant",
    "identity",
    "key_id",
    "user",
    "anonymous_id",
    "plan",
    "route",
    "method",
    "path",
    "status",
    "outcome",
    "meters",
    "period",
    "latency_ms",
];

/// Everything a usage event says about one call; [`CallEvent::encode`] makes the JSON.
pub struct CallEvent<'a> {
    /// `tollgate/<instance>`.
    pub source: &'a str,
    /// When the call finished.
    pub time: Timestamp,
    /// Who called, when they were identified.
    pub caller: Option<&'a Caller>,
    /// Their plan, when resolved.
    pub plan: Option<&'a str>,
    /// The matched route.
    pub route: Option<&'a str>,
    /// Request method.
    pub method: &'a str,
    /// Request path (no query string: it may carry secrets).
    pub path: &'a str,
    /// The status sent (0 when none was).
    pub status: u16,
    /// `outcome` (SPEC §6).
    pub outcome: &'static str,
    /// Settled quantities: (meter, units).
    pub meters: Vec<(&'a str, u64)>,
    /// The billing period the call counts in.
    pub period: String,
    /// Time from request to the end of the answer.
    pub latency_ms: f64,
    /// Fields plugins added to `data`, if any (see [`DATA_FIELDS`]).
    pub extra: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

impl CallEvent<'_> {
    /// The event as one line of compact JSON (never contains a newline), with a fresh UUIDv7 id.
    pub fn encode(&self) -> Result<Bytes, serde_json::Error> {
        let tenant = self.caller.map(|c| c.tenant.name.as_str());
        let envelope = Envelope {
            specversion: "1.0",
            id: new_id(self.time),
            source: self.source,
            kind: REQUEST_TYPE,
            subject: tenant,
            time: format!("{:.3}", self.time),
            datacontenttype: "application/json",
            data: Data {
                tenant,
                identity: self.caller.map(|c| c.identity.as_str()),
                key_id: self.caller.and_then(|c| c.key_id.as_deref()),
                user: self.caller.and_then(|c| c.user.as_deref()),
                anonymous_id: self.caller.and_then(Caller::anonymous_id),
                plan: self.plan,
                route: self.route,
                method: self.method,
                path: self.path,
                status: self.status,
                outcome: self.outcome,
                meters: self.meters.iter().copied().collect(),
                period: self.period.clone(),
                latency_ms: (self.latency_ms * 1000.0).round() / 1000.0,
                extra: self.extra.filter(|e| !e.is_empty()),
            },
        };
        // Sized for a typical event, so encoding does not grow the buffer step by step.
        let mut out = Vec::with_capacity(640);
        serde_json::to_writer(&mut out, &envelope)?;
        // A boxed slice becomes `Bytes` without the separate reference-count allocation a `Vec`
        // with spare capacity needs (the allocator shrinks this one in place).
        Ok(Bytes::from(out.into_boxed_slice()))
    }
}

/// `data` of a milestone event; fields that do not apply to the milestone are left out.
#[derive(Serialize)]
struct MilestoneData<'a> {
    tenant: &'a str,
    milestone: &'static str,
    plan: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    meter: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    period: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    used: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    feature: Option<&'a str>,
    /// `plan_changed` only: the plan before (`null` when the tenant had none) and after.
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<&'a str>,
}

/// A lifecycle milestone's event (`dev.tollgate.milestone`), as one line of compact JSON.
pub fn encode_milestone(
    source: &str,
    time: Timestamp,
    m: &Milestone,
) -> Result<Bytes, serde_json::Error> {
    let changed = m.kind == Kind::PlanChanged;
    let envelope = Envelope {
        specversion: "1.0",
        id: new_id(time),
        source,
        kind: MILESTONE_TYPE,
        subject: Some(&m.tenant),
        time: format!("{time:.3}"),
        datacontenttype: "application/json",
        data: MilestoneData {
            tenant: &m.tenant,
            milestone: m.kind.as_str(),
            plan: &m.plan,
            meter: m.meter.as_deref(),
            period: m.period.as_deref(),
            used: m.used,
            limit: m.limit,
            feature: m.feature.as_deref(),
            from: changed.then_some(m.from.as_deref()),
            to: changed.then_some(m.plan.as_str()),
        },
    };
    serde_json::to_vec(&envelope).map(Bytes::from)
}

/// `data` of an identify event (SPEC §6): exactly these three fields, `user` `null` when the
/// credential names no end user.
#[derive(Serialize)]
struct IdentifyData<'a> {
    anonymous_id: &'a str,
    tenant: &'a str,
    user: Option<&'a str>,
}

/// An anonymous → identified merge's event (`dev.tollgate.identify`), as one line of compact
/// JSON.
pub fn encode_identify(
    source: &str,
    time: Timestamp,
    i: &Identify,
) -> Result<Bytes, serde_json::Error> {
    let envelope = Envelope {
        specversion: "1.0",
        id: new_id(time),
        source,
        kind: IDENTIFY_TYPE,
        subject: Some(&i.tenant),
        time: format!("{time:.3}"),
        datacontenttype: "application/json",
        data: IdentifyData {
            anonymous_id: &i.anonymous_id,
            tenant: &i.tenant,
            user: i.user.as_deref(),
        },
    };
    serde_json::to_vec(&envelope).map(Bytes::from)
}

/// A UUIDv7 for an event at `time`: its milliseconds, then 74 random bits from the thread's
/// user-space generator. (`Uuid::now_v7` asks the kernel for randomness on every call, a
/// system call per event on the request path.)
fn new_id(time: Timestamp) -> String {
    use rand::Rng;
    let random: [u8; 10] = rand::rng().random();
    let millis = u64::try_from(time.as_millisecond()).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(millis, &random)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// The `period` of an event: `2026-11` for a monthly window (the month it starts in), the day
/// `2026-11-26` for a daily one.
pub fn period_label(period: Period, window: &Window) -> String {
    let d = window.start_date;
    match period {
        Period::Month => format!("{:04}-{:02}", d.year(), d.month()),
        Period::Day => format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day()),
    }
}

/// The period of a call's first meter, if it has one.
pub fn period_of(meters: &[MeterUse]) -> Option<String> {
    meters.first().map(|m| period_label(m.period, &m.window))
}

/// The event id inside an encoded event (for sinks that carry it out of band, like NATS's
/// `Nats-Msg-Id`).
pub fn id_of(event: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: String,
    }
    serde_json::from_slice::<Id>(event).ok().map(|i| i.id)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn unauthenticated_event_has_no_subject_and_valid_shape() {
        let e = CallEvent {
            source: "tollgate/gw-1",
            time: "2026-11-26T12:00:00.123456Z".parse().unwrap(),
            caller: None,
            plan: None,
            route: Some("api"),
            method: "GET",
            path: "/v1/x",
            status: 401,
            outcome: "unauthenticated",
            meters: vec![],
            period: "2026-11".into(),
            latency_ms: 1.23456,
            extra: None,
        };
        let bytes = e.encode().unwrap();
        assert!(!bytes.contains(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["type"], REQUEST_TYPE);
        assert_eq!(v["time"], "2026-11-26T12:00:00.123Z");
        assert!(v.get("subject").is_none());
        assert_eq!(v["data"]["tenant"], serde_json::Value::Null);
        assert_eq!(v["data"]["latency_ms"], 1.235);
        let id = id_of(&bytes).unwrap();
        assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7);
    }

    #[test]
    fn plan_changed_carries_from_and_to_and_no_meter() {
        let m = Milestone::plan_changed("acme", None, "pro".into());
        let time = "2026-11-26T12:00:00Z".parse().unwrap();
        let bytes = encode_milestone("tollgate/gw-1", time, &m).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["type"], MILESTONE_TYPE);
        assert_eq!(v["subject"], "acme");
        assert_eq!(
            v["data"],
            serde_json::json!({"tenant": "acme", "milestone": "plan_changed", "plan": "pro", "from": null, "to": "pro"})
        );
    }
}
