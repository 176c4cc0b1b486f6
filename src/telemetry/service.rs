//! The telemetry background service: the spool writer and one delivery loop per sink.
//!
//! ```text
//! logging() --encode--> [bounded queue] --> writer: write batches, fsync --> spool segments
//!                                                                    |--> sink A loop (own position)
//!                                                                    |--> sink B loop (own position)
//! ```
//!
//! On SIGTERM the writer keeps taking events until the process exits (pingora waits
//! `server.grace_period` for calls in flight, and their events come after the signal), so what
//! was queued reaches the disk; sinks keep delivering meanwhile and pick up from their saved
//! positions at the next start.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::oneshot;

use super::emit::Emitter;
use super::metrics::Metrics;
use super::queue::EventQueue;
use super::sinks::{self, backoff, Sink};
use super::spool::{Appended, Failed, Limits, Reader, Spool};
use crate::config::Telemetry;

/// The background half of telemetry; [`TelemetryService::new`] also returns the request path's
/// [`Emitter`].
pub struct TelemetryService {
    queue: Mutex<Option<Arc<EventQueue>>>,
    sinks: Mutex<Vec<(String, Box<dyn Sink>)>>,
    spool: Arc<Spool>,
    batch: usize,
    retry_max: Duration,
    flush_interval: Duration,
    sync_interval: Duration,
    metrics: Arc<Metrics>,
}

impl TelemetryService {
    /// Opens the spool (checking what a previous run left there) and builds the sinks.
    pub fn new(
        config: &Telemetry,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<(Emitter, TelemetryService)> {
        let names: Vec<String> = config.sinks.iter().map(|s| s.name.clone()).collect();
        let limits = Limits::new(config.max_spool_bytes, config.on_full);
        let spool = Spool::open(&config.spool, &names, limits, metrics.clone())
            .context("opening the telemetry spool")?;
        let mut sinks = Vec::with_capacity(config.sinks.len());
        for s in &config.sinks {
            let sink = sinks::build(s, &metrics)
                .with_context(|| format!("telemetry sink `{}`", s.name))?;
            sinks.push((s.name.clone(), sink));
        }
        let queue = Arc::new(EventQueue::new(config.queue.get()));
        let source = format!("tollgate/{}", config.instance);
        let emitter = Emitter::new(queue.clone(), source, metrics.clone());
        Ok((
            emitter,
            TelemetryService {
                queue: Mutex::new(Some(queue)),
                sinks: Mutex::new(sinks),
                spool,
                batch: config.batch.get(),
                retry_max: config.retry_max,
                flush_interval: config.flush_interval,
                sync_interval: config.sync_interval,
                metrics,
            },
        ))
    }

    /// Spawns the spool writer's thread: it takes events from the queue, writes them in
    /// batches, fsyncs every few batches, and stops when the queue is closed (the [`Emitter`] is gone)
    /// and empty.
    ///
    /// A plain thread rather than a task: the writer blocks on `fdatasync` (milliseconds) and
    /// sleeps while a batch gathers, and a thread of its own does both without waking anything
    /// else. Handing each batch from a task to tokio's blocking pool cost two more thread
    /// switches per batch, on the request path's core when the gateway is pinned to one.
    fn spawn_writer(
        &self,
        queue: Arc<EventQueue>,
        stopping: Arc<AtomicBool>,
        done: oneshot::Sender<()>,
    ) -> std::io::Result<()> {
        let writer = SpoolWriter {
            queue,
            spool: self.spool.clone(),
            batch: self.batch,
            flush_interval: self.flush_interval,
            sync_interval: self.sync_interval,
            metrics: self.metrics.clone(),
            stopping,
        };
        std::thread::Builder::new()
            .name("tollgate spool".into())
            .spawn(move || {
                yield_to_requests("spool writer");
                writer.run();
                let _ = done.send(());
            })
            .map(|_| ())
    }
}

#[async_trait]
impl BackgroundService for TelemetryService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // The background service's runtime has one thread (pingora's default), this one: the
        // sinks' delivery loops spawned below run on it too.
        yield_to_requests("delivery");
        let queue = self.queue.lock().map(|mut q| q.take()).unwrap_or(None);
        let Some(queue) = queue else {
            return;
        };
        let sinks = self
            .sinks
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default();
        for (name, sink) in sinks {
            let delivery = Delivery {
                reader: self.spool.reader(&name),
                spool: self.spool.clone(),
                sink,
                batch: self.batch,
                retry_max: self.retry_max,
                metrics: self.metrics.clone(),
            };
            tokio::spawn(delivery.run());
        }
        let stopping = Arc::new(AtomicBool::new(false));
        let (done_tx, mut done) = oneshot::channel();
        if let Err(e) = self.spawn_writer(queue, stopping.clone(), done_tx) {
            tracing::error!(error = %e, "Could not start the spool writer; usage events will be dropped.");
            return;
        }
        // This task stays alive while the writer runs: the sinks' delivery loops live on its
        // runtime.
        tokio::select! {
            _ = &mut done => return,
            _ = shutdown.changed() => {}
        }
        stopping.store(true, Ordering::Relaxed);
        tracing::info!("Shutting down; writing queued usage events to the spool.");
        let _ = done.await;
    }
}

/// How often the spool writer refreshes the spool's gauges when nothing else does.
const GAUGE_REFRESH: Duration = Duration::from_secs(1);

/// The spool writer: queue → batches → spool, on a thread of its own.
struct SpoolWriter {
    queue: Arc<EventQueue>,
    spool: Arc<Spool>,
    batch: usize,
    flush_interval: Duration,
    sync_interval: Duration,
    metrics: Arc<Metrics>,
    /// Set on SIGTERM: write what is queued at once instead of gathering a batch first.
    stopping: Arc<AtomicBool>,
}

impl SpoolWriter {
    /// Writes what is queued every `flush_interval` (at once when `batch` events wait), and
    /// fsyncs what it wrote at most `sync_interval` after the first of it was written, when
    /// waiting for one more write would be later than that.
    fn run(self) {
        // Two buffers take turns: the queue fills one while this thread writes the other.
        let mut spare = Vec::new();
        // When the oldest write not yet fsynced was made.
        let mut unsynced_since: Option<Instant> = None;
        // Syncs and acknowledgements refresh the spool's gauges; when neither happens (no
        // calls, a sink down), this keeps `tollgate_events_lag_seconds` growing.
        let mut refreshed = Instant::now();
        loop {
            let deadline = match unsynced_since {
                Some(t) => (t + self.sync_interval).min(refreshed + GAUGE_REFRESH),
                None => refreshed + GAUGE_REFRESH,
            };
            if !self.queue.wait_until(Some(deadline)) {
                break;
            }
            if refreshed.elapsed() >= GAUGE_REFRESH {
                self.spool.refresh();
                refreshed = Instant::now();
            }
            let stopping = self.stopping.load(Ordering::Relaxed);
            if !self.queue.is_empty() {
                if self.queue.len() < self.batch && !stopping {
                    // Gather for a moment before writing: one write then serves many calls
                    // instead of a few. The wait is what a crash of the process can lose on
                    // top of the batch being written.
                    std::thread::sleep(self.flush_interval);
                }
                // Everything queued is one write, however many events it holds (each sink
                // still takes at most its own batch at a time): behind a burst, fewer and
                // larger writes catch up sooner.
                let mut events = self.queue.take(spare);
                let n = events.len() as u64;
                let at = Instant::now();
                let written = self.spool.write(&mut events);
                spare = events.into_buffer();
                let unsynced = self.count(n, written);
                unsynced_since = match unsynced {
                    0 => None,
                    _ => unsynced_since.or(Some(at)),
                };
            }
            let due = unsynced_since.is_some_and(|t| {
                stopping || t.elapsed() + self.flush_interval >= self.sync_interval
            });
            if due {
                let synced = self.spool.sync();
                self.count(0, synced);
                unsynced_since = None;
            }
        }
        if unsynced_since.is_some() {
            let synced = self.spool.sync();
            self.count(0, synced);
        }
        tracing::info!("Usage event queue closed; every queued event is in the spool.");
    }

    /// Counts what a write of `n` events or a sync (`n` = 0) did; returns how many records
    /// are written but not yet fsynced.
    fn count(&self, n: u64, result: Result<Appended, Failed>) -> u64 {
        let m = &self.metrics;
        let done = match &result {
            Ok(done) => *done,
            Err(f) => f.done,
        };
        m.events
            .with_label_values(&["spool", "spooled"])
            .inc_by(done.written);
        if done.dropped > 0 {
            m.events_dropped
                .with_label_values(&["spool_full"])
                .inc_by(done.dropped);
            tracing::warn!(
                dropped = done.dropped,
                "Telemetry spool is full; events dropped per `telemetry.on_full`."
            );
        }
        match result {
            Ok(done) => done.unsynced,
            Err(f) => {
                m.events_dropped
                    .with_label_values(&["spool_error"])
                    .inc_by(f.lost);
                tracing::error!(error = %f.error, events = f.lost, batch = n, "Could not write usage events to the spool; they are lost.");
                f.done.unsynced
            }
        }
    }
}

/// Puts the calling thread under Linux's `SCHED_BATCH` policy, at nice 0 as before: it
/// gets the same share of the CPU as before, but waking it no longer preempts the thread that
/// is running. Telemetry's two threads are woken often (the delivery thread each time a sink's
/// replies arrive, some dozens of times per batch from a Redis stream; the spool writer several
/// times per batch), and when the gateway shares a core with them each wake-up preempted a
/// proxy thread in the middle of a request: 1,170 times a second at 37k calls a second on one
/// core (`benches/telemetry.sh`'s setup, 2026-12-05). Under `SCHED_BATCH` they run when the
/// proxy thread waits or its time slice ends, by which time more replies are in: in 4
/// alternating pairs of 5 s runs (`chrt -b` on the running threads) the proxy thread was
/// preempted 207 times a second instead of 1,180, the delivery thread woke half as often and
/// used 0.37 µs of CPU per call instead of 0.92, and the spool writer 0.70 µs instead of 0.78.
/// Events wait at most a time slice longer, which `flush_interval` already dwarfs.
///
/// Where the policy cannot be set (another OS; a sandbox forbidding `sched_setscheduler`) the
/// thread keeps the default one, which is only slower.
fn yield_to_requests(thread: &'static str) {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::unix::{
            set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
            ThreadSchedulePolicy,
        };
        use thread_priority::{ThreadPriority, ThreadPriorityOsValue};
        // A normal policy's priority is its nice value: 0, what a process starts with. (Started
        // with a higher one, the thread keeps it: the policy is set first, and raising the
        // priority back to 0 is refused without privileges.)
        let set = set_thread_priority_and_policy(
            thread_native_id(),
            ThreadPriority::Os(ThreadPriorityOsValue::default()),
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch),
        );
        if let Err(e) = set {
            tracing::debug!(thread, error = ?e, "Could not set a telemetry thread's scheduling policy or nice value.");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = thread;
}

/// One sink's delivery loop: read a batch at its position, deliver it until it is acknowledged
/// (retrying with backoff and jitter), save the position, repeat.
struct Delivery {
    reader: Reader,
    spool: Arc<Spool>,
    sink: Box<dyn Sink>,
    batch: usize,
    retry_max: Duration,
    metrics: Arc<Metrics>,
}

impl Delivery {
    async fn run(mut self) {
        let name = self.reader.sink().to_string();
        let mut failures = 0u32;
        loop {
            let batch = match self.reader.next_batch(self.sink.max_batch(self.batch)) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(sink = %name, error = %e, "Could not read the telemetry spool; retrying.");
                    failures += 1;
                    tokio::time::sleep(backoff(failures, self.retry_max)).await;
                    continue;
                }
            };
            if batch.events.is_empty() {
                self.reader.wait().await;
                continue;
            }
            let n = batch.events.len() as u64;
            let mut attempt = 0u32;
            loop {
                match self.sink.deliver(&batch.events).await {
                    Ok(()) => break,
                    Err(e) => {
                        self.metrics
                            .events
                            .with_label_values(&[&name, "failed"])
                            .inc_by(n);
                        let wait = backoff(attempt, self.retry_max);
                        // The first failure and then every tenth, so a long outage stays legible.
                        if attempt.is_multiple_of(10) {
                            tracing::warn!(sink = %name, error = %e, events = n, attempt, retry_in = ?wait, "Usage event delivery failed; retrying.");
                        }
                        attempt += 1;
                        tokio::time::sleep(wait).await;
                    }
                }
            }
            if attempt > 0 {
                tracing::info!(sink = %name, attempts = attempt + 1, "Usage event delivery recovered.");
            }
            self.metrics
                .events
                .with_label_values(&[&name, "delivered"])
                .inc_by(n);
            if let Err(e) = self.spool.ack(&name, batch.end) {
                // The events went out; at worst they go out again after a restart.
                tracing::error!(sink = %name, error = %e, "Could not save the sink's spool position.");
            }
        }
    }
}
