//! Prometheus metrics. Names are part of the contract (SPEC §8); no tenant ids as labels, so the
//! series count stays bounded by the config (routes × plans × outcomes).

use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// `tollgate_requests_total{route,plan,outcome}`
pub const REQUESTS_TOTAL: &str = "tollgate_requests_total";
/// `tollgate_request_duration_seconds{route}`
pub const REQUEST_DURATION: &str = "tollgate_request_duration_seconds";
/// `tollgate_upstream_duration_seconds{upstream}`
pub const UPSTREAM_DURATION: &str = "tollgate_upstream_duration_seconds";
/// `tollgate_upstream_connect_errors_total{upstream,target,address}`: failed connects to a target.
pub const UPSTREAM_CONNECT_ERRORS: &str = "tollgate_upstream_connect_errors_total";
/// `tollgate_upstream_target_up{upstream,target,address}`: 1 while a target takes calls, 0 once failed
/// connects or failed health probes took it out of rotation, until it is back.
pub const UPSTREAM_TARGET_UP: &str = "tollgate_upstream_target_up";
/// `tollgate_upstream_health_checks_total{upstream,target,address,result}`: active health probes,
/// `result` `pass` or `fail`.
pub const UPSTREAM_HEALTH_CHECKS: &str = "tollgate_upstream_health_checks_total";
/// `tollgate_store_duration_seconds{op}`
pub const STORE_DURATION: &str = "tollgate_store_duration_seconds";
/// `tollgate_store_errors_total{kind}`
pub const STORE_ERRORS: &str = "tollgate_store_errors_total";
/// `tollgate_meter_units_total{plan,meter}`
pub const METER_UNITS: &str = "tollgate_meter_units_total";
/// `tollgate_unmetered_total{route,reason}`: calls let through without metering (fail-open).
pub const UNMETERED: &str = "tollgate_unmetered_total";
/// `tollgate_store_late_replies_total{result}`: reservations that timed out and answered later.
pub const LATE_REPLIES: &str = "tollgate_store_late_replies_total";
/// `tollgate_meter_defaults_total{route,meter}`: measured meters settled to their default
/// because the response did not carry the amount.
pub const METER_DEFAULTS: &str = "tollgate_meter_defaults_total";
/// `tollgate_burst_keys`: tenants currently tracked by the burst limiters.
pub const BURST_KEYS: &str = "tollgate_burst_keys";
/// `tollgate_config_reloads_total{result}`
pub const CONFIG_RELOADS: &str = "tollgate_config_reloads_total";
/// `tollgate_events_total{sink,result}`: usage events by sink (`spool` for the spool writer)
/// and result (`delivered`, `failed`, `spooled`, and `gave_up` for milestones a webhook skipped).
pub const EVENTS_TOTAL: &str = "tollgate_events_total";
/// `tollgate_events_spooled`: events in the spool not yet acknowledged by every sink.
pub const EVENTS_SPOOLED: &str = "tollgate_events_spooled";
/// `tollgate_events_lag{sink}`: events in the spool the sink has not acknowledged yet.
pub const EVENTS_LAG: &str = "tollgate_events_lag";
/// `tollgate_events_lag_seconds{sink}`: how long ago the oldest event the sink has not
/// acknowledged was spooled; 0 when it has every event.
pub const EVENTS_LAG_SECONDS: &str = "tollgate_events_lag_seconds";
/// `tollgate_events_dropped_total{reason}`: events given up (`queue_full`, `spool_full`,
/// `spool_error`, `encode_error`, `closed`).
pub const EVENTS_DROPPED: &str = "tollgate_events_dropped_total";
/// `tollgate_events_corrupt_total`: spool records skipped because their checksum failed or a
/// crash tore them.
pub const EVENTS_CORRUPT: &str = "tollgate_events_corrupt_total";

/// `tollgate_limit_calls_total{plan,meter,state}`: calls by where they left a meter:
/// `within` its limit, `near` it (past `warn_at`), `over` it (overage, or refused with 402).
pub const LIMIT_CALLS: &str = "tollgate_limit_calls_total";

/// Buckets for gateway-side latencies: sub-millisecond to a few seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Buckets for store calls, which should take well under a millisecond.
const STORE_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
];

/// Every metric the gateway exports.
pub struct Metrics {
    /// Calls by route, plan and outcome.
    pub requests: IntCounterVec,
    /// Whole-call latency by route.
    pub request_duration: HistogramVec,
    /// Upstream latency by upstream.
    pub upstream_duration: HistogramVec,
    /// Failed connects by upstream and target.
    pub upstream_connect_errors: IntCounterVec,
    /// Whether each target takes calls.
    pub upstream_target_up: IntGaugeVec,
    /// Active health probes by upstream, target and result.
    pub upstream_health_checks: IntCounterVec,
    /// Store call latency by operation.
    pub store_duration: HistogramVec,
    /// Store failures by kind.
    pub store_errors: IntCounterVec,
    /// Settled units by plan and meter.
    pub meter_units: IntCounterVec,
    /// Calls proxied without metering, by route and reason.
    pub unmetered: IntCounterVec,
    /// Measured meters settled to their default, by route and meter.
    pub meter_defaults: IntCounterVec,
    /// Timed-out reservations whose reply came later: `refunded` or `unknown`.
    pub late_refunds: IntCounterVec,
    /// Tenants tracked by burst limiters.
    pub burst_keys: IntGauge,
    /// Config reloads by result.
    pub config_reloads: IntCounterVec,
    /// Calls by plan, meter and where they left the meter (within / near / over its limit).
    pub limit_calls: IntCounterVec,
    /// Usage events by sink and result.
    pub events: IntCounterVec,
    /// Events spooled and not yet acknowledged by every sink.
    pub events_spooled: IntGauge,
    /// Events each sink has yet to acknowledge.
    pub events_lag: IntGaugeVec,
    /// Age of the oldest event each sink has yet to acknowledge.
    pub events_lag_seconds: GaugeVec,
    /// Events given up, by reason.
    pub events_dropped: IntCounterVec,
    /// Spool records lost to corruption.
    pub events_corrupt: IntCounter,
}

impl Metrics {
    /// Creates and registers every metric in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Metrics> {
        let m = Metrics {
            requests: IntCounterVec::new(
                Opts::new(REQUESTS_TOTAL, "Calls by route, plan and outcome."),
                &["route", "plan", "outcome"],
            )?,
            request_duration: HistogramVec::new(
                HistogramOpts::new(
                    REQUEST_DURATION,
                    "Time from request to response end, by route.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["route"],
            )?,
            upstream_duration: HistogramVec::new(
                HistogramOpts::new(
                    UPSTREAM_DURATION,
                    "Time waiting for the upstream's response header.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["upstream"],
            )?,
            upstream_connect_errors: IntCounterVec::new(
                Opts::new(
                    UPSTREAM_CONNECT_ERRORS,
                    "Failed connects to upstream targets, by address (each address of a host-name target).",
                ),
                &["upstream", "target", "address"],
            )?,
            upstream_target_up: IntGaugeVec::new(
                Opts::new(
                    UPSTREAM_TARGET_UP,
                    "1 while an upstream target's address takes calls; 0 once failed connects or failed health probes took it out of rotation, until it is back.",
                ),
                &["upstream", "target", "address"],
            )?,
            upstream_health_checks: IntCounterVec::new(
                Opts::new(
                    UPSTREAM_HEALTH_CHECKS,
                    "Active health probes of upstream targets, by result (pass, fail).",
                ),
                &["upstream", "target", "address", "result"],
            )?,
            store_duration: HistogramVec::new(
                HistogramOpts::new(STORE_DURATION, "Store call latency by operation.")
                    .buckets(STORE_BUCKETS.to_vec()),
                &["op"],
            )?,
            store_errors: IntCounterVec::new(
                Opts::new(STORE_ERRORS, "Failed store calls by kind."),
                &["kind"],
            )?,
            meter_units: IntCounterVec::new(
                Opts::new(
                    METER_UNITS,
                    "Units charged (after refunds) by plan and meter.",
                ),
                &["plan", "meter"],
            )?,
            unmetered: IntCounterVec::new(
                Opts::new(
                    UNMETERED,
                    "Calls proxied without metering because the store was unavailable (fail_open).",
                ),
                &["route", "reason"],
            )?,
            meter_defaults: IntCounterVec::new(
                Opts::new(METER_DEFAULTS, "Response-measured meters settled to their default: the response carried no amount."),
                &["route", "meter"],
            )?,
            late_refunds: IntCounterVec::new(
                Opts::new(
                    LATE_REPLIES,
                    "Reservations that timed out but ran later: refunded, or outcome unknown.",
                ),
                &["result"],
            )?,
            burst_keys: IntGauge::new(
                BURST_KEYS,
                "Tenants currently tracked by the burst limiters.",
            )?,
            config_reloads: IntCounterVec::new(
                Opts::new(CONFIG_RELOADS, "Config reloads by result."),
                &["result"],
            )?,
            limit_calls: IntCounterVec::new(
                Opts::new(
                    LIMIT_CALLS,
                    "Metered calls by plan, meter and state: within the limit, near it (past warn_at), over it (overage or 402).",
                ),
                &["plan", "meter", "state"],
            )?,
            events: IntCounterVec::new(
                Opts::new(EVENTS_TOTAL, "Usage events by sink and result."),
                &["sink", "result"],
            )?,
            events_spooled: IntGauge::new(
                EVENTS_SPOOLED,
                "Usage events in the spool not yet acknowledged by every sink.",
            )?,
            events_lag: IntGaugeVec::new(
                Opts::new(EVENTS_LAG, "Usage events the sink has not acknowledged yet."),
                &["sink"],
            )?,
            events_lag_seconds: GaugeVec::new(
                Opts::new(
                    EVENTS_LAG_SECONDS,
                    "Seconds since the oldest usage event the sink has not acknowledged was spooled (0: it has them all).",
                ),
                &["sink"],
            )?,
            events_dropped: IntCounterVec::new(
                Opts::new(EVENTS_DROPPED, "Usage events given up, by reason."),
                &["reason"],
            )?,
            events_corrupt: IntCounter::new(
                EVENTS_CORRUPT,
                "Spool records skipped because they were torn or failed their checksum.",
            )?,
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.request_duration.clone()))?;
        registry.register(Box::new(m.upstream_duration.clone()))?;
        registry.register(Box::new(m.upstream_connect_errors.clone()))?;
        registry.register(Box::new(m.upstream_target_up.clone()))?;
        registry.register(Box::new(m.upstream_health_checks.clone()))?;
        registry.register(Box::new(m.store_duration.clone()))?;
        registry.register(Box::new(m.store_errors.clone()))?;
        registry.register(Box::new(m.meter_units.clone()))?;
        registry.register(Box::new(m.unmetered.clone()))?;
        registry.register(Box::new(m.meter_defaults.clone()))?;
        registry.register(Box::new(m.late_refunds.clone()))?;
        registry.register(Box::new(m.burst_keys.clone()))?;
        registry.register(Box::new(m.config_reloads.clone()))?;
        registry.register(Box::new(m.limit_calls.clone()))?;
        // Series that are zero until something goes wrong still exist from the start, so
        // dashboards and alerts see 0 rather than no data.
        for kind in ["timeout", "backend", "io"] {
            m.store_errors.with_label_values(&[kind]);
        }
        for result in ["ok", "error"] {
            m.config_reloads.with_label_values(&[result]);
        }
        registry.register(Box::new(m.events.clone()))?;
        registry.register(Box::new(m.events_spooled.clone()))?;
        registry.register(Box::new(m.events_lag.clone()))?;
        registry.register(Box::new(m.events_lag_seconds.clone()))?;
        registry.register(Box::new(m.events_dropped.clone()))?;
        registry.register(Box::new(m.events_corrupt.clone()))?;
        Ok(m)
    }

    /// Metrics in a private registry (tests and benches).
    pub fn unregistered() -> prometheus::Result<Metrics> {
        Metrics::new(&Registry::new())
    }

    /// The series of one plan's meter (see [`MeterSeries`]).
    pub fn meter_series(&self, plan: &str, meter: &str) -> MeterSeries {
        let state = |s| self.limit_calls.with_label_values(&[plan, meter, s]);
        MeterSeries {
            units: self.meter_units.with_label_values(&[plan, meter]),
            within: state("within"),
            near: state("near"),
            over: state("over"),
        }
    }
}

/// `tollgate_meter_units_total` and `tollgate_limit_calls_total` of one plan's meter, resolved
/// once when the gateway is built. A labelled look-up hashes its labels and takes the vector's
/// lock on every call; a metered call makes two per meter, about 1k instructions in all
/// (`benches/callgrind.sh`). The series exist, at 0, from the start.
#[derive(Clone)]
pub struct MeterSeries {
    /// Units charged.
    pub units: IntCounter,
    /// Calls that left the meter within its limit.
    pub within: IntCounter,
    /// Calls that left it near its limit (past `warn_at`).
    pub near: IntCounter,
    /// Calls that left it over its limit (overage).
    pub over: IntCounter,
}

impl std::fmt::Debug for MeterSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MeterSeries")
    }
}
