//! Where usage counters live: a narrow interface with a Redis and an embedded backend.
//!
//! Every call goes through [`StoreHandle`], which bounds it by `store.timeout` and times it, so
//! no request waits longer than the timeout whatever the backend is doing. The bound uses
//! pingora's shared-tick timer (10 ms resolution, no lock per call) rather than one tokio timer
//! per call: it is set up on every metered request.

pub mod batch;
pub mod embedded;
pub mod keys;
pub mod redis;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use tokio::sync::{watch, Notify};

use crate::config::{Store as StoreConfig, StoreKind};
use pingora::time::fast_timeout::fast_timeout;
use prometheus::{Histogram, IntCounterVec};

use crate::telemetry::metrics::Metrics;

/// One meter's part of a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// The counter key (see [`keys::counter`]).
    pub key: String,
    /// Units to add.
    pub units: u64,
    /// Units allowed in the period; `None` never blocks (overage meters).
    pub limit: Option<u64>,
    /// When the counter expires, in Unix seconds.
    pub expire_at: i64,
}

/// A measured amount replacing what was reserved: `delta` = measured − reserved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adjustment {
    /// The counter key.
    pub key: String,
    /// Units to add (negative: to take back).
    pub delta: i64,
}

/// One call's reservation: its charges, its idempotency marker if the call carried an
/// `Idempotency-Key`, and its plan's burst limit when that is shared by every instance.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reservation {
    /// The charges, all-or-nothing.
    pub charges: Vec<Charge>,
    /// Set when the call is admitted; a later call finding it is a charge-free replay.
    pub replay: Option<ReplayMarker>,
    /// Checked before anything else: a call over it is refused with nothing charged.
    pub burst: Option<BurstCheck>,
}

impl Reservation {
    /// One of the call's keys; they all carry the tenant's hash tag, so they share a slot.
    pub fn first_key(&self) -> Option<&str> {
        self.burst
            .as_ref()
            .map(|b| b.key.as_str())
            .or_else(|| self.replay.as_ref().map(|m| m.key.as_str()))
            .or_else(|| self.charges.first().map(|c| c.key.as_str()))
    }
}

/// A burst limit counted in the store (`rate_limit.shared: true`), so that every instance
/// draws on one allowance: GCRA, as `governor` does in memory, on the store's clock (Redis
/// `TIME`), so instances whose clocks differ still agree. The key holds the theoretical
/// arrival time in microseconds and expires once the allowance is full again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BurstCheck {
    /// `tg:{<tenant>}:burst` (see [`keys::burst`]).
    pub key: String,
    /// Microseconds between calls at the sustained rate: `per` / `requests`, at least 1.
    pub interval_us: u64,
    /// Calls allowed at once.
    pub size: u32,
}

/// `tg:{<tenant>}:idem:<sha256 of the Idempotency-Key>`, kept for 24 hours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayMarker {
    /// The marker's key.
    pub key: String,
    /// When it expires, in Unix seconds.
    pub expire_at: i64,
}

/// The answer to an atomic check-and-reserve of several charges.
///
/// When the reservation carried a [`BurstCheck`] that admitted the call, the values of
/// `Admitted`, `Replayed` and `Denied` end with one more: the calls left in the burst
/// allowance after this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    /// Every charge fitted and was added; counter values after the reservation, in order.
    Admitted(Vec<u64>),
    /// The call repeats one already admitted (same idempotency key): nothing was added.
    /// Counter values as they stand, in order.
    Replayed(Vec<u64>),
    /// Charge `index` would pass its limit; nothing was added. `used` holds the counters' values.
    Denied {
        /// Which charge did not fit.
        index: usize,
        /// Counter values, unchanged, in order.
        used: Vec<u64>,
    },
    /// The reservation's shared burst limit refused the call: nothing was added or checked.
    RateLimited {
        /// How long until a call would be admitted.
        retry_after: Duration,
    },
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The call did not finish within `store.timeout`.
    #[error("the store did not answer within {0:?}")]
    Timeout(Duration),
    /// The backend refused or failed the call.
    #[error("the store failed: {0}")]
    Backend(String),
    /// The embedded store's file could not be written.
    #[error("the store file could not be written: {0}")]
    Io(#[from] std::io::Error),
}

impl StoreError {
    /// A short label for `tollgate_store_errors_total{kind}`.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Timeout(_) => "timeout",
            StoreError::Backend(_) => "backend",
            StoreError::Io(_) => "io",
        }
    }
}

/// A counter store. Implementations must make `reserve` atomic across all its charges and across
/// every gateway instance that shares the store.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Adds every charge if each stays within its limit; otherwise adds nothing.
    ///
    /// Takes the store and the reservation by `Arc` so that its future owns them: a call that
    /// times out hands that same future to a task of its own (see [`StoreHandle::reserve`]),
    /// with no second box around it on every call.
    async fn reserve(
        self: Arc<Self>,
        reservation: Arc<Reservation>,
    ) -> Result<Reserved, StoreError>;
    /// Takes back units added by `reserve` (never below zero; a vanished counter stays vanished)
    /// and drops the reservation's replay marker, so a retry of the failed call is charged.
    async fn refund(&self, reservation: &Reservation) -> Result<(), StoreError>;
    /// Settles response-measured meters: adds each delta (negative takes units back), never
    /// below zero; a counter that expired meanwhile is not recreated.
    async fn settle(&self, adjustments: &[Adjustment]) -> Result<(), StoreError>;
    /// Reads counters (0 when absent).
    async fn get(&self, keys: &[String]) -> Result<Vec<u64>, StoreError>;
    /// An operator's correction of counter `key`: adds `delta` (negative: a credit), never
    /// below zero, keeping the counter until `expire_at` (Unix seconds); a credit to an absent
    /// counter creates nothing. Returns the units actually added and the new value.
    async fn adjust(&self, key: &str, delta: i64, expire_at: i64)
        -> Result<(i64, u64), StoreError>;
    /// Sets `key` to `value` if it is absent, atomically across every instance sharing the
    /// store: `None` when this call set it, else the value already there. `expire_at` (Unix
    /// seconds) bounds its life; `None` keeps it.
    async fn mark_once(
        &self,
        key: &str,
        value: i64,
        expire_at: Option<i64>,
    ) -> Result<Option<i64>, StoreError>;
    /// Checks the store answers.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Looks up a runtime API key by the SHA-256 of the key (SPEC §9 `tg:key:<sha256 hex>`).
    async fn lookup_key(&self, sha256_hex: &str) -> Result<Option<KeyRecord>, StoreError>;
    /// Files a runtime API key (only its hash).
    async fn put_key(&self, sha256_hex: &str, record: &KeyRecord) -> Result<(), StoreError>;
    /// Revokes a runtime API key; `false` when there was none.
    async fn delete_key(&self, sha256_hex: &str) -> Result<bool, StoreError>;
    /// The SHA-256 (hex) of `tenant`'s runtime key with id `id`, if any.
    async fn key_by_id(&self, tenant: &str, id: &str) -> Result<Option<String>, StoreError>;
    /// The ids of `tenant`'s runtime keys, in no particular order.
    async fn key_ids(&self, tenant: &str) -> Result<Vec<String>, StoreError>;
    /// Sets (or, with `None`, clears) a tenant's plan override and tells every instance.
    async fn set_plan(&self, tenant: &str, plan: Option<&str>) -> Result<(), StoreError>;
    /// Every tenant's plan override.
    async fn plan_overrides(&self) -> Result<HashMap<String, String>, StoreError>;
    /// Whether [`Store::follow_plans`] loads overrides other instances set (a shared store).
    fn follows_plans(&self) -> bool {
        false
    }
    /// Keeps `overrides` in step with changes other instances make, until `shutdown` fires,
    /// and [`PlanOverrides::settle`]s them once its first load is done or has failed.
    /// A store only one instance can use has nothing to follow.
    async fn follow_plans(&self, overrides: &PlanOverrides, shutdown: watch::Receiver<bool>) {
        let _ = (overrides, shutdown);
    }
}

/// Tenants' plan overrides as this instance knows them (`tg:{<tenant>}:tenant` field `plan`).
///
/// Read on every call, so the request path pays a map look-up and no store round trip; kept
/// current by [`Store::follow_plans`] (Redis pub/sub), which applies a change made on any
/// instance within milliseconds. Changes are rare, so the map is copied on write.
pub struct PlanOverrides {
    map: ArcSwap<HashMap<String, String>>,
    /// False from start-up until the first load from the store is done (or has failed), while
    /// calls wait for it: see [`StoreHandle::hold_calls_until_plans_load`].
    settled: AtomicBool,
    loaded: Notify,
}

impl Default for PlanOverrides {
    fn default() -> Self {
        PlanOverrides {
            map: ArcSwap::default(),
            settled: AtomicBool::new(true),
            loaded: Notify::new(),
        }
    }
}

impl PlanOverrides {
    /// The first load from the store is done, or failed (calls then go by the config's plans
    /// until a later load succeeds): calls waiting for it go on.
    pub fn settle(&self) {
        if !self.settled.swap(true, Ordering::AcqRel) {
            self.loaded.notify_waiters();
        }
    }

    /// Waits until [`PlanOverrides::settle`], at most `bound`.
    async fn settled(&self, bound: Duration) {
        if self.settled.load(Ordering::Acquire) {
            return;
        }
        let loaded = self.loaded.notified();
        tokio::pin!(loaded);
        loaded.as_mut().enable();
        if self.settled.load(Ordering::Acquire) {
            return;
        }
        let _ = fast_timeout(bound, loaded).await;
    }

    /// The override of `tenant`, if any.
    pub fn get(&self, tenant: &str) -> Option<String> {
        let map = self.map.load();
        if map.is_empty() {
            return None;
        }
        map.get(tenant).cloned()
    }

    /// Sets or clears one tenant's override.
    pub fn set(&self, tenant: &str, plan: Option<String>) {
        self.map.rcu(|m| {
            let mut m = HashMap::clone(m);
            match &plan {
                Some(p) => m.insert(tenant.to_string(), p.clone()),
                None => m.remove(tenant),
            };
            m
        });
    }

    /// Every override, as this instance knows them now.
    pub fn all(&self) -> Arc<HashMap<String, String>> {
        self.map.load_full()
    }

    /// Replaces every override (after a full reload from the store).
    pub fn replace(&self, all: HashMap<String, String>) {
        self.map.store(Arc::new(all));
    }
}

/// A runtime API key on file, with what the store knows of its tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// The tenant the key belongs to.
    pub tenant: String,
    /// The key's id (shown in logs and events instead of the key).
    pub id: String,
    /// The tenant's plan override (`tg:{<tenant>}:tenant` field `plan`), if any.
    pub plan: Option<String>,
}

/// The store as the request path uses it: bounded by the timeout, timed, errors counted.
#[derive(Clone)]
pub struct StoreHandle {
    inner: Arc<dyn Store>,
    timeout: Duration,
    ops: Arc<OpMetrics>,
    overrides: Arc<PlanOverrides>,
    marked: Arc<Marked>,
}

/// Keys this instance knows are set in the store (see [`StoreHandle::mark_once`]): a key once
/// set stays set, so asking again would only cost a round trip. Bounded: when full it is
/// cleared, which costs one extra `SET NX` per key and never a second milestone.
#[derive(Default)]
struct Marked {
    /// Read on every milestone-enabled call, written once per key: a read-write lock, so the
    /// proxy threads' reads do not queue behind each other.
    keys: std::sync::RwLock<HashMap<String, i64>>,
}

/// Most keys [`Marked`] remembers.
const MARKED_MAX: usize = 100_000;

impl Marked {
    fn get(&self, key: &str) -> Option<i64> {
        self.keys.read().ok()?.get(key).copied()
    }

    fn insert(&self, key: &str, value: i64) {
        if let Ok(mut keys) = self.keys.write() {
            if keys.len() >= MARKED_MAX {
                keys.clear();
            }
            keys.insert(key.to_string(), value);
        }
    }
}

/// Metric handles resolved once, so the hot path does no label look-ups.
struct OpMetrics {
    reserve: Histogram,
    refund: Histogram,
    adjust: Histogram,
    get: Histogram,
    ping: Histogram,
    errors: IntCounterVec,
    late_replies: IntCounterVec,
}

impl OpMetrics {
    fn new(m: &Metrics) -> OpMetrics {
        let op = |name: &str| m.store_duration.with_label_values(&[name]);
        OpMetrics {
            reserve: op("reserve"),
            refund: op("refund"),
            adjust: op("adjust"),
            get: op("get"),
            ping: op("ping"),
            errors: m.store_errors.clone(),
            late_replies: m.late_refunds.clone(),
        }
    }
}

impl StoreHandle {
    /// Opens the configured backend. Redis connects lazily on first use.
    pub fn open(config: &StoreConfig, metrics: &Metrics) -> Result<StoreHandle, StoreError> {
        let inner: Arc<dyn Store> = match &config.kind {
            StoreKind::Redis { url, ca } => {
                Arc::new(redis::RedisStore::new(url, ca, config.timeout)?)
            }
            StoreKind::RedisSentinel { url, sentinels, ca } => Arc::new(
                redis::RedisStore::sentinel(url, sentinels, ca, config.timeout)?,
            ),
            StoreKind::RedisCluster { urls, ca } => {
                Arc::new(redis::RedisStore::cluster(urls, ca, config.timeout)?)
            }
            StoreKind::Embedded { path } => Arc::new(embedded::EmbeddedStore::open(path)?),
        };
        Ok(StoreHandle::new(inner, config.timeout, metrics))
    }

    /// Wraps an existing backend (tests, benches).
    pub fn new(inner: Arc<dyn Store>, timeout: Duration, metrics: &Metrics) -> StoreHandle {
        StoreHandle {
            inner,
            timeout,
            ops: Arc::new(OpMetrics::new(metrics)),
            overrides: Arc::default(),
            marked: Arc::default(),
        }
    }

    /// See [`Store::reserve`].
    ///
    /// A reservation that times out may still run: the command was sent, and a store that was
    /// only slow (not gone) executes it later. Dropping the reply would charge the tenant for a
    /// call that was refused, so a timed-out reservation keeps waiting for its reply in the
    /// background and refunds itself if it turns out to have been admitted.
    pub async fn reserve(&self, charges: &Arc<Reservation>) -> Result<Reserved, StoreError> {
        let started = Instant::now();
        let mut call = self.inner.clone().reserve(charges.clone());
        let result = match fast_timeout(self.timeout, &mut call).await {
            Ok(result) => result,
            Err(_) => {
                let (inner, owned) = (self.inner.clone(), charges.clone());
                let late = self.ops.late_replies.clone();
                tokio::spawn(async move {
                    match call.await {
                        Ok(Reserved::Admitted(_)) => {
                            late.with_label_values(&["refunded"]).inc();
                            if let Err(e) = inner.refund(&owned).await {
                                tracing::warn!(error = %e, charges = ?owned, "A late reservation could not be refunded.");
                            }
                        }
                        Ok(
                            Reserved::Denied { .. }
                            | Reserved::Replayed(_)
                            | Reserved::RateLimited { .. },
                        ) => {}
                        Err(e) => {
                            late.with_label_values(&["unknown"]).inc();
                            tracing::warn!(error = %e, charges = ?owned, "A timed-out reservation's outcome is unknown.");
                        }
                    }
                });
                Err(StoreError::Timeout(self.timeout))
            }
        };
        self.observe(&self.ops.reserve, started, &result);
        result
    }

    /// See [`Store::refund`].
    pub async fn refund(&self, charges: &Reservation) -> Result<(), StoreError> {
        self.bounded(&self.ops.refund, self.inner.refund(charges))
            .await
    }

    /// See [`Store::settle`].
    pub async fn settle(&self, adjustments: &[Adjustment]) -> Result<(), StoreError> {
        if adjustments.is_empty() {
            return Ok(());
        }
        self.bounded(&self.ops.refund, self.inner.settle(adjustments))
            .await
    }

    /// See [`Store::key_ids`].
    pub async fn key_ids(&self, tenant: &str) -> Result<Vec<String>, StoreError> {
        self.bounded(&self.ops.get, self.inner.key_ids(tenant))
            .await
    }

    /// See [`Store::get`].
    pub async fn get(&self, keys: &[String]) -> Result<Vec<u64>, StoreError> {
        self.bounded(&self.ops.get, self.inner.get(keys)).await
    }

    /// See [`Store::adjust`].
    pub async fn adjust(
        &self,
        key: &str,
        delta: i64,
        expire_at: i64,
    ) -> Result<(i64, u64), StoreError> {
        self.bounded(&self.ops.adjust, self.inner.adjust(key, delta, expire_at))
            .await
    }

    /// See [`Store::lookup_key`].
    pub async fn lookup_key(&self, sha256_hex: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.bounded(&self.ops.get, self.inner.lookup_key(sha256_hex))
            .await
    }

    /// See [`Store::put_key`].
    pub async fn put_key(&self, sha256_hex: &str, record: &KeyRecord) -> Result<(), StoreError> {
        self.bounded(&self.ops.get, self.inner.put_key(sha256_hex, record))
            .await
    }

    /// See [`Store::delete_key`].
    pub async fn delete_key(&self, sha256_hex: &str) -> Result<bool, StoreError> {
        self.bounded(&self.ops.get, self.inner.delete_key(sha256_hex))
            .await
    }

    /// See [`Store::key_by_id`].
    pub async fn key_by_id(&self, tenant: &str, id: &str) -> Result<Option<String>, StoreError> {
        self.bounded(&self.ops.get, self.inner.key_by_id(tenant, id))
            .await
    }

    /// See [`Store::mark_once`]. A key this instance already saw set is answered with its
    /// value without a store call, so a milestone check costs a round trip only the first time.
    pub async fn mark_once(
        &self,
        key: &str,
        value: i64,
        expire_at: Option<i64>,
    ) -> Result<Option<i64>, StoreError> {
        if let Some(known) = self.marked.get(key) {
            return Ok(Some(known));
        }
        let before = self
            .bounded(&self.ops.get, self.inner.mark_once(key, value, expire_at))
            .await?;
        self.marked.insert(key, before.unwrap_or(value));
        Ok(before)
    }

    /// The value of a [`Store::mark_once`] key, if this instance has seen it set (no store
    /// call).
    pub fn marked(&self, key: &str) -> Option<i64> {
        self.marked.get(key)
    }

    /// The plan override of `tenant` as this instance knows it (no store call).
    pub fn plan_override(&self, tenant: &str) -> Option<String> {
        self.overrides.get(tenant)
    }

    /// Every tenant's plan override, as this instance follows them (see [`PlanOverrides`]).
    pub fn plan_overrides(&self) -> Arc<HashMap<String, String>> {
        self.overrides.all()
    }

    /// Makes calls wait, each at most `store.timeout`, until [`StoreHandle::follow_plans`] has
    /// loaded the plan overrides once. Without it, a call arriving in the first milliseconds
    /// after start-up would be admitted on its tenant's config plan instead of the plan an
    /// admin set: billed on the wrong plan, or refused with 402 after an upgrade. For a store
    /// that keeps no overrides it does nothing.
    pub fn hold_calls_until_plans_load(&self) {
        if self.inner.follows_plans() {
            self.overrides.settled.store(false, Ordering::Release);
        }
    }

    /// Waits, at most `store.timeout`, for the first load of the plan overrides (see
    /// [`StoreHandle::hold_calls_until_plans_load`]); one atomic load once they are in.
    pub async fn plan_overrides_loaded(&self) {
        self.overrides.settled(self.timeout).await;
    }

    /// Sets or clears a plan override in the store (for every instance) and here.
    pub async fn set_plan(&self, tenant: &str, plan: Option<&str>) -> Result<(), StoreError> {
        self.bounded(&self.ops.get, self.inner.set_plan(tenant, plan))
            .await?;
        self.overrides.set(tenant, plan.map(str::to_string));
        Ok(())
    }

    /// Loads every override, then follows changes until `shutdown` fires (see
    /// [`Store::follow_plans`]).
    pub async fn follow_plans(&self, shutdown: watch::Receiver<bool>) {
        self.inner.follow_plans(&self.overrides, shutdown).await;
        self.overrides.settle();
    }

    /// See [`Store::ping`].
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.bounded(&self.ops.ping, self.inner.ping()).await
    }

    async fn bounded<T>(
        &self,
        op: &Histogram,
        fut: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = match fast_timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        };
        self.observe(op, started, &result);
        result
    }

    fn observe<T>(&self, op: &Histogram, started: Instant, result: &Result<T, StoreError>) {
        op.observe(started.elapsed().as_secs_f64());
        if let Err(e) = result {
            self.ops.errors.with_label_values(&[e.kind()]).inc();
        }
    }
}
