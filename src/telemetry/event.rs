//! The usage event of one call (SPEC §6): CloudEvents 1.0, structured JSON.
//!
//! Events are serialised once, on the request path, into the bytes every sink sends as they are:
//! the spool stores them and sinks never re-encode, so what one sink delivers is byte for byte
//! what every other sink delivers (same `id`, same `time`).

use std::collections::BTreeMap;

use bytes::Bytes;
use jiff::Timestamp;
use serde::Serialize;
use uuid::Uuid;

use crate::meter::period::{Period, Window};
use crate::pipeline::identity::Caller;
use crate::pipeline::meter::MeterUse;
use crate::pipeline::milestone::{Identify, Kind, Milestone};
use crate::telemetry::json;

/// The CloudEvents `type` of a call's usage event.
pub const REQUEST_TYPE: &str = "dev.tollgate.request";

/// The CloudEvents `type` of a lifecycle milestone.
pub const MILESTONE_TYPE: &str = "dev.tollgate.milestone";

/// The CloudEvents `type` of an anonymous → identified merge.
pub const IDENTIFY_TYPE: &str = "dev.tollgate.identify";

/// The CloudEvents `type` of an operator's usage correction.
pub const ADJUSTMENT_TYPE: &str = "dev.tollgate.adjustment";

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
    /// The call's id when `server.request_id` gave it one (its `X-Request-Id`); else the event
    /// gets a fresh one.
    pub id: Option<Uuid>,
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
    ///
    /// Written by hand into one buffer rather than through serde: this runs on the request path
    /// for every call, and serde's serializer (owned id and time strings, a map of the meters,
    /// the formatted time) cost about a microsecond per call there. The bytes are exactly those
    /// of [`CallEvent::encode_reference`] for the same id; the tests hold the two together.
    pub fn encode(&self) -> Result<Bytes, serde_json::Error> {
        self.encode_with_id(self.id.unwrap_or_else(|| new_id(self.time)))
    }

    /// [`CallEvent::encode`], appended to `out` (the telemetry queue's buffer). On an error,
    /// part of the event may have been appended.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        self.write(self.id.unwrap_or_else(|| new_id(self.time)), out)
    }

    /// [`CallEvent::encode`] with a given id.
    fn encode_with_id(&self, id: Uuid) -> Result<Bytes, serde_json::Error> {
        // Sized for a typical event, so encoding does not grow the buffer step by step.
        let mut out = Vec::with_capacity(640);
        self.write(id, &mut out)?;
        // A boxed slice becomes `Bytes` without the separate reference-count allocation a `Vec`
        // with spare capacity needs (the allocator shrinks this one in place).
        Ok(Bytes::from(out.into_boxed_slice()))
    }

    /// Appends the event with id `id` to `out`.
    fn write(&self, id: Uuid, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        let tenant = self.caller.map(|c| c.tenant.name.as_str());
        out.extend_from_slice(br#"{"specversion":"1.0","id":""#);
        out.extend_from_slice(
            id.hyphenated()
                .encode_lower(&mut Uuid::encode_buffer())
                .as_bytes(),
        );
        out.extend_from_slice(br#"","source":"#);
        json::string(out, self.source);
        out.extend_from_slice(br#","type":""#);
        out.extend_from_slice(REQUEST_TYPE.as_bytes());
        out.push(b'"');
        if let Some(tenant) = tenant {
            out.extend_from_slice(br#","subject":"#);
            json::string(out, tenant);
        }
        out.extend_from_slice(br#","time":"#);
        json::time(out, self.time).map_err(serde_json::Error::io)?;
        out.extend_from_slice(br#","datacontenttype":"application/json","data":{"tenant":"#);
        json::opt_string(out, tenant);
        out.extend_from_slice(br#","identity":"#);
        json::opt_string(out, self.caller.map(|c| c.identity.as_str()));
        out.extend_from_slice(br#","key_id":"#);
        json::opt_string(out, self.caller.and_then(|c| c.key_id.as_deref()));
        out.extend_from_slice(br#","user":"#);
        json::opt_string(out, self.caller.and_then(|c| c.user.as_deref()));
        out.extend_from_slice(br#","anonymous_id":"#);
        json::opt_string(out, self.caller.and_then(Caller::anonymous_id));
        out.extend_from_slice(br#","plan":"#);
        json::opt_string(out, self.plan);
        out.extend_from_slice(br#","route":"#);
        json::opt_string(out, self.route);
        out.extend_from_slice(br#","method":"#);
        json::string(out, self.method);
        out.extend_from_slice(br#","path":"#);
        json::string(out, self.path);
        out.extend_from_slice(br#","status":"#);
        json::uint(out, u64::from(self.status));
        out.extend_from_slice(br#","outcome":"#);
        json::string(out, self.outcome);
        out.extend_from_slice(br#","meters":{"#);
        write_meters(out, &self.meters);
        out.extend_from_slice(br#"},"period":"#);
        json::string(out, &self.period);
        out.extend_from_slice(br#","latency_ms":"#);
        // The one float: serde_json's own formatting (shortest round-trip; `null` when not
        // finite), so it cannot drift from what serde writes.
        serde_json::to_writer(&mut *out, &((self.latency_ms * 1000.0).round() / 1000.0))?;
        for (key, value) in self.extra.into_iter().flatten() {
            out.push(b',');
            json::string(out, key);
            out.push(b':');
            serde_json::to_writer(&mut *out, value)?;
        }
        out.extend_from_slice(b"}}");
        Ok(())
    }

    /// The event encoded through serde, as [`CallEvent::encode`] did before it was written by
    /// hand: the reference its bytes are tested against, kept public for the benchmark that
    /// compares the two.
    #[doc(hidden)]
    pub fn encode_reference(&self) -> Result<Bytes, serde_json::Error> {
        self.encode_with_serde(new_id(self.time))
    }

    /// [`CallEvent::encode_reference`] with a given id.
    fn encode_with_serde(&self, id: Uuid) -> Result<Bytes, serde_json::Error> {
        let tenant = self.caller.map(|c| c.tenant.name.as_str());
        let envelope = Envelope {
            specversion: "1.0",
            id: id.hyphenated().to_string(),
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
        let mut out = Vec::with_capacity(640);
        serde_json::to_writer(&mut out, &envelope)?;
        Ok(Bytes::from(out.into_boxed_slice()))
    }
}

/// Most meters a call's event sorts in place; more (never seen in practice) go through a map.
const METERS_SORTED_IN_PLACE: usize = 16;

/// The members of `meters` (no braces): sorted by name, a name given twice keeping its last
/// units, as collecting into a `BTreeMap` does, without building one for the usual few meters.
fn write_meters(out: &mut Vec<u8>, meters: &[(&str, u64)]) {
    let mut first = true;
    let mut member = |out: &mut Vec<u8>, name: &str, units: u64| {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        json::string(out, name);
        out.push(b':');
        json::uint(out, units);
    };
    if meters.len() > METERS_SORTED_IN_PLACE {
        let sorted: BTreeMap<&str, u64> = meters.iter().copied().collect();
        for (name, units) in sorted {
            member(out, name, units);
        }
        return;
    }
    // Selection: each round writes the smallest name greater than the last one written.
    let mut last: Option<&str> = None;
    loop {
        let mut next: Option<(&str, u64)> = None;
        for &(name, units) in meters {
            if last.is_some_and(|l| name <= l) {
                continue;
            }
            // `<=`: of equal names the later one wins.
            if next.is_none_or(|(n, _)| name <= n) {
                next = Some((name, units));
            }
        }
        let Some((name, units)) = next else { break };
        member(out, name, units);
        last = Some(name);
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
        id: new_id(time).hyphenated().to_string(),
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
        id: new_id(time).hyphenated().to_string(),
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

/// An operator's correction of a tenant's usage (`POST /admin/v1/tenants/{t}/usage`).
#[derive(Debug, Serialize)]
pub struct Adjustment<'a> {
    /// Whose usage.
    pub tenant: &'a str,
    /// The tenant's plan when it was made.
    pub plan: &'a str,
    /// Which meter.
    pub meter: &'a str,
    /// Units added: negative for a credit; what was applied, after the floor at zero.
    pub units: i64,
    /// The billing period corrected (`2026-11`, or `2026-11-26` for a daily meter).
    pub period: &'a str,
    /// The operator's note, if any.
    pub reason: Option<&'a str>,
}

/// An adjustment's event (`dev.tollgate.adjustment`), as one line of compact JSON: `data`
/// holds the [`Adjustment`]'s fields, `units` signed, so a billing system adds it to the
/// period's sum of `dev.tollgate.request` meters.
pub fn encode_adjustment(
    source: &str,
    time: Timestamp,
    a: &Adjustment<'_>,
) -> Result<Bytes, serde_json::Error> {
    let envelope = Envelope {
        specversion: "1.0",
        id: new_id(time).hyphenated().to_string(),
        source,
        kind: ADJUSTMENT_TYPE,
        subject: Some(a.tenant),
        time: format!("{time:.3}"),
        datacontenttype: "application/json",
        data: a,
    };
    serde_json::to_vec(&envelope).map(Bytes::from)
}

/// A UUIDv7 for an event at `time`: its milliseconds, then 74 random bits from the thread's
/// user-space generator. (`Uuid::now_v7` asks the kernel for randomness on every call, a
/// system call per event on the request path.)
pub fn new_id(time: Timestamp) -> Uuid {
    use rand::Rng;
    let random: [u8; 10] = rand::rng().random();
    let millis = u64::try_from(time.as_millisecond()).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
}

/// The `period` of an event: `2026-11` for a monthly window (the month it starts in), the day
/// `2026-11-26` for a daily one.
pub fn period_label(period: Period, window: &Window) -> String {
    let d = window.start_date;
    if (0..=9999).contains(&d.year()) {
        // Every event has one: written by hand rather than through `format!`.
        let mut label = String::with_capacity(10);
        crate::store::keys::push_date(&mut label, d);
        if period == Period::Month {
            label.truncate(7);
        }
        return label;
    }
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
    fn period_labels_are_year_month_or_the_day() {
        let mut now: Timestamp = "2024-01-01T12:00:00Z".parse().unwrap();
        for _ in 0..400 {
            for period in [Period::Day, Period::Month] {
                let w = Window::containing(period, Some(31), now).unwrap();
                let d = w.start_date;
                let expected = match period {
                    Period::Month => format!("{:04}-{:02}", d.year(), d.month()),
                    Period::Day => format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day()),
                };
                assert_eq!(period_label(period, &w), expected);
            }
            now += jiff::SignedDuration::from_hours(25);
        }
    }

    use std::sync::Arc;

    use proptest::prelude::*;

    use crate::config::Tenant;
    use crate::pipeline::identity::IdentityKind;

    /// A call's event with every field set and a plugin's extra fields.
    fn full_caller() -> Caller {
        Caller {
            tenant: Arc::new(Tenant::new(
                "acme \"corp\"".into(),
                "pro".into(),
                None,
                Vec::new(),
            )),
            identity: IdentityKind::Jwt,
            key_id: Some("k-1".into()),
            user: Some("user\n1 é".into()),
            client_anonymous_id: Some("anon-1".into()),
        }
    }

    /// Both encoders, same id: the bytes must be the same.
    fn assert_same(e: &CallEvent) {
        let id = new_id(e.time);
        let fast = e.encode_with_id(id).unwrap();
        let reference = e.encode_with_serde(id).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&fast),
            String::from_utf8_lossy(&reference)
        );
        assert_eq!(fast, reference);
    }

    fn event<'a>(caller: Option<&'a Caller>) -> CallEvent<'a> {
        CallEvent {
            id: None,
            source: "tollgate/gw-1",
            time: "2026-11-26T12:00:00.123456Z".parse().unwrap(),
            caller,
            plan: Some("pro"),
            route: Some("api"),
            method: "POST",
            path: "/v1/chat/completions",
            status: 200,
            outcome: "allowed",
            meters: vec![("tokens", 812), ("requests", 1)],
            period: "2026-11".into(),
            latency_ms: 12.0,
            extra: None,
        }
    }

    #[test]
    fn hand_written_matches_serde_without_a_caller() {
        let e = event(None);
        assert_same(&e);
        let v: serde_json::Value = serde_json::from_slice(&e.encode().unwrap()).unwrap();
        assert!(v.get("subject").is_none());
        assert_eq!(v["data"]["identity"], serde_json::Value::Null);
    }

    #[test]
    fn hand_written_matches_serde_with_a_caller_and_extra_fields() {
        let caller = full_caller();
        let mut extra = serde_json::Map::new();
        extra.insert("model".into(), "gpt-\"x\"".into());
        extra.insert("cost".into(), serde_json::json!(0.25));
        extra.insert("nested".into(), serde_json::json!({"a": [1, null, true]}));
        let e = CallEvent {
            extra: Some(&extra),
            ..event(Some(&caller))
        };
        assert_same(&e);
        let v: serde_json::Value = serde_json::from_slice(&e.encode().unwrap()).unwrap();
        assert_eq!(v["subject"], "acme \"corp\"");
        assert_eq!(v["data"]["anonymous_id"], "anon-1");
        assert_eq!(v["data"]["model"], "gpt-\"x\"");
        // An empty map adds nothing.
        let empty = serde_json::Map::new();
        assert_same(&CallEvent {
            extra: Some(&empty),
            ..event(Some(&caller))
        });
        // An anonymous caller's anonymous id is its tenant.
        let anonymous = Caller {
            identity: IdentityKind::Anonymous,
            key_id: None,
            user: None,
            client_anonymous_id: None,
            ..full_caller()
        };
        assert_same(&event(Some(&anonymous)));
    }

    #[test]
    fn hand_written_matches_serde_for_odd_latencies_times_and_many_meters() {
        for latency_ms in [
            0.0,
            -0.0,
            0.0005,
            0.0015,
            1.2345,
            1e9,
            1e21,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            assert_same(&CallEvent {
                latency_ms,
                ..event(None)
            });
        }
        for time in [
            "1969-12-31T23:59:59.9999Z",
            "1900-01-01T00:00:00Z",
            "9999-12-30T22:00:00.999999999Z",
        ] {
            assert_same(&CallEvent {
                time: time.parse().unwrap(),
                ..event(None)
            });
        }
        let names: Vec<String> = (0..40).map(|i| format!("m{}", (i * 7) % 23)).collect();
        let many: Vec<(&str, u64)> = names
            .iter()
            .zip(0..)
            .map(|(n, i)| (n.as_str(), i))
            .collect();
        for n in [0, 1, 2, 16, 17, 40] {
            assert_same(&CallEvent {
                meters: many[..n].to_vec(),
                ..event(None)
            });
        }
    }

    /// A generated caller: tenant, identity (0–2), key id, user, client-side anonymous id.
    type CallerInputs = (String, u8, Option<String>, Option<String>, Option<String>);

    /// The owned inputs of one generated event.
    #[derive(Debug)]
    struct Inputs {
        source: String,
        seconds: i64,
        nanos: i32,
        caller: Option<CallerInputs>,
        plan: Option<String>,
        route: Option<String>,
        method: String,
        path: String,
        status: u16,
        meters: Vec<(String, u64)>,
        period: String,
        latency_ms: f64,
        extra: Option<serde_json::Map<String, serde_json::Value>>,
    }

    /// Strings with what needs escaping: quotes, backslashes, control characters, non-ASCII.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[\\x00-\\x20\"\\\\a-z0-9/é日🦀\\x7f-]{0,24}",
            any::<String>(),
        ]
    }

    fn value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e12..1e12_f64).prop_map(Value::from),
            text().prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec((text(), inner), 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn latency() -> impl Strategy<Value = f64> {
        prop_oneof![
            prop::sample::select(vec![0.0, 0.0005, 0.0015, 12.0, 1.2345, 999.9995, 1e9]),
            0.0..1e9_f64,
            0.0..100.0_f64,
            (0u32..10_000_000).prop_map(|n| f64::from(n) / 10_000.0),
        ]
    }

    fn inputs() -> impl Strategy<Value = Inputs> {
        // 1970-01-01 to the end of 2200.
        let time = (0..7_258_118_400_i64, 0..1_000_000_000_i32);
        let caller = proptest::option::of((
            text(),
            0..3_u8,
            proptest::option::of(text()),
            proptest::option::of(text()),
            proptest::option::of(text()),
        ));
        let call = (
            text(),
            proptest::option::of(text()),
            proptest::option::of(text()),
            text(),
            text(),
            any::<u16>(),
        );
        let meters = proptest::collection::vec(
            (
                prop_oneof!["[a-c]{1,2}", text()],
                prop_oneof![0..10_u64, any::<u64>()],
            ),
            0..=4,
        );
        let extra = proptest::option::of(
            proptest::collection::vec((text(), value()), 1..4)
                .prop_map(|m| m.into_iter().collect::<serde_json::Map<_, _>>()),
        );
        (time, caller, call, meters, text(), latency(), extra).prop_map(
            |(
                (seconds, nanos),
                caller,
                (source, plan, route, method, path, status),
                meters,
                period,
                latency_ms,
                extra,
            )| Inputs {
                source,
                seconds,
                nanos,
                caller,
                plan,
                route,
                method,
                path,
                status,
                meters,
                period,
                latency_ms,
                extra,
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn hand_written_event_is_byte_for_byte_the_serde_one(i in inputs()) {
            let caller = i.caller.as_ref().map(|(tenant, kind, key_id, user, anonymous_id)| Caller {
                tenant: Arc::new(Tenant::new(tenant.clone(), "p".into(), None, Vec::new())),
                identity: [IdentityKind::ApiKey, IdentityKind::Jwt, IdentityKind::Anonymous]
                    [usize::from(*kind)],
                key_id: key_id.as_deref().map(Arc::from),
                user: user.clone(),
                client_anonymous_id: anonymous_id.clone(),
            });
            let e = CallEvent {
                id: None,
                source: &i.source,
                time: Timestamp::new(i.seconds, i.nanos).unwrap(),
                caller: caller.as_ref(),
                plan: i.plan.as_deref(),
                route: i.route.as_deref(),
                method: &i.method,
                path: &i.path,
                status: i.status,
                outcome: "allowed",
                meters: i.meters.iter().map(|(n, u)| (n.as_str(), *u)).collect(),
                period: i.period.clone(),
                latency_ms: i.latency_ms,
                extra: i.extra.as_ref(),
            };
            let id = new_id(e.time);
            let fast = e.encode_with_id(id).unwrap();
            let reference = e.encode_with_serde(id).unwrap();
            prop_assert_eq!(
                String::from_utf8_lossy(&fast),
                String::from_utf8_lossy(&reference)
            );
        }
    }

    #[test]
    fn unauthenticated_event_has_no_subject_and_valid_shape() {
        let e = CallEvent {
            id: None,
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
