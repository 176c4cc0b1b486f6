//! The reservation path's own connection to one Redis server (`redis://` over TCP,
//! `rediss://` over TLS, or `redis+unix://`): the reservations that are ready in one turn of
//! the gateway thread's task queue are written to the socket together, as one script call, by
//! the connection's flushing task, or sooner in parts when the turn holds a large burst (see
//! [`Split`]); several batches may be in flight at once.
//!
//! Why not the redis-rs multiplexed connection every other store call uses: that connection
//! writes from a driver task of its own, fed by the batching task. On a gateway thread with many
//! calls ready at once, a reservation then waited for two full turns of the thread's task queue
//! before it reached Redis (the batching task's turn, then the driver's), so the calls of a
//! burst went to Redis after all of them had been admitted, and the thread then had nothing to
//! do but wait for that batch: `perf sched` of the metered route in `benches/load.sh` showed the
//! gateway's core idle 5–13% of the time. Here a reservation waits for one turn at most: its
//! request task queues it and wakes the flushing task, which runs after the tasks already
//! woken in that turn and writes everything they queued.
//!
//! Why not write a reservation at once, from its own request task, when no batch is in flight
//! (as this module did before): on loopback, each write that finds Redis asleep makes the
//! gateway's core wake it on the other core with an inter-processor interrupt, several
//! microseconds of the gateway's core in a VM, and the calls then come back in small groups
//! that wake the load generator and the origin more often too. Side by side
//! (`benches/compare.sh`, two runs of 10 rounds, 2026-12-05): writing at once ran 5.95 calls
//! per script run, the flushing task alone 10.1; the gateway's CPU per metered call, as a
//! multiple of the unmetered one's, fell from 1.255 and 1.281 to 1.221 and 1.211 (lower in 19
//! of the 20 rounds, the same in the other), and the interrupts per metered call from 0.326
//! to 0.311 (0.24–0.25 per unmetered call).
//!
//! Why several batches in flight rather than one: holding the next batch until the previous
//! one's reply is in makes batches larger (12.5 calls per script run against 10.1) but leaves
//! the gateway's core waiting (96% busy against 98%); side by side (`benches/compare.sh`, 10
//! rounds, 2026-12-05) metered / unmetered fell from 0.814 to 0.756 and the gateway's CPU per
//! metered call rose from 1.218× to 1.288× the unmetered one's.
//!
//! Over TLS the flushing task writes every batch (a TLS stream has no write that a request
//! task could try without waiting); the calls still wait for one turn at most. A `rediss://`
//! URL that turns off certificate checks (`#insecure`) and clusters keep the batching task (see
//! [`super::Batcher`]).
//!
//! A connection that fails (an I/O error, end of stream, or no reply for
//! [`super::LATE_REPLY_WAIT`] while one is due) fails every call waiting on it, and the next
//! reservation opens a new one. `NOSCRIPT` (a restarted Redis, `SCRIPT FLUSH`) means nothing
//! of that batch ran: the batch is run again through the multiplexed connection, which loads
//! the script first.

use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pingora::time::fast_timeout::fast_timeout;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::net::{tcp, unix, TcpStream, UnixStream};
use tokio::sync::{oneshot, Notify};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::sentinel::Sentinel;
use super::{Reservation, Reserved, Shared, StoreError, LATE_REPLY_WAIT};
use crate::store::batch::send_answers;

/// Most calls one batch carries.
const MAX_BATCH: usize = 128;

/// The smallest batch written before the flushing task's turn (see [`Split`]).
const MIN_SPLIT: usize = 8;

/// Calls over which [`Split`] measures how many are waiting at once.
const SPLIT_WINDOW: u32 = 256;

/// How often an idle reader checks whether its connection was given up.
const READ_TICK: Duration = Duration::from_secs(1);

type Answer = Result<Reserved, StoreError>;
type Call = (Arc<Reservation>, oneshot::Sender<Answer>);

/// Where the server listens.
enum Target {
    Tcp(String),
    Tls {
        host: String,
        port: u16,
        connector: TlsConnector,
    },
    Unix(PathBuf),
}

/// The reservation connection of one store, opened on first use and again after a failure.
pub(super) struct Pipe {
    target: Target,
    /// `AUTH` and `SELECT`, packed, sent first on every connection (empty when not needed).
    setup: Vec<u8>,
    setup_replies: usize,
    /// Bounds opening a connection.
    connect_timeout: Duration,
    link: Mutex<Option<Arc<Link>>>,
    /// Held while a connection is being opened, so a burst of calls opens one.
    opening: tokio::sync::Mutex<()>,
    /// Behind Redis Sentinel: asked where the primary is before each connection (the TCP
    /// target's address is then only the primary's name).
    sentinel: Option<Arc<Sentinel>>,
    /// The primary's moves (see [`Sentinel::moves`]) when the current connection was opened.
    opened_at: std::sync::atomic::AtomicU64,
}

impl Pipe {
    /// A pipe to the server `info` names: over TCP, a unix socket, or TLS trusting `ca` (when
    /// not empty, else the webpki roots, as redis-rs's own connections do). `None` for a TLS
    /// URL without certificate checks (`#insecure`, left to redis-rs) or a TLS config that
    /// cannot be built (redis-rs's connections then report the error). Nothing is connected
    /// yet. With `sentinel`, each connection goes where the Sentinels say the primary is.
    pub(super) fn for_server(
        info: &redis::ConnectionInfo,
        ca: &[rustls::pki_types::CertificateDer<'static>],
        connect_timeout: Duration,
        sentinel: Option<Arc<Sentinel>>,
    ) -> Option<Pipe> {
        let target = match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) => Target::Tcp(format!("{host}:{port}")),
            redis::ConnectionAddr::TcpTls {
                host,
                port,
                insecure: false,
                ..
            } => Target::Tls {
                host: host.clone(),
                port: *port,
                connector: TlsConnector::from(Arc::new(crate::tls::redis_client_config(ca).ok()?)),
            },
            redis::ConnectionAddr::Unix(path) => Target::Unix(path.clone()),
            _ => return None,
        };
        let settings = info.redis_settings();
        let mut setup = Vec::new();
        let mut setup_replies = 0;
        if let Some(password) = settings.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = settings.username() {
                auth.arg(user);
            }
            auth.arg(password);
            setup.extend(auth.get_packed_command());
            setup_replies += 1;
        }
        if settings.db() != 0 {
            setup.extend(redis::cmd("SELECT").arg(settings.db()).get_packed_command());
            setup_replies += 1;
        }
        Some(Pipe {
            target,
            setup,
            setup_replies,
            connect_timeout,
            link: Mutex::new(None),
            opening: tokio::sync::Mutex::new(()),
            sentinel,
            opened_at: Default::default(),
        })
    }

    /// Reserves through the current connection, opening one first if there is none.
    pub(super) async fn reserve(
        &self,
        shared: &Arc<Shared>,
        reservation: Arc<Reservation>,
    ) -> Result<Reserved, StoreError> {
        let link = self.link(shared).await?;
        let answer = link.submit(shared, reservation)?;
        answer
            .await
            .map_err(|_| StoreError::Backend("the reservation connection dropped a call".into()))?
    }

    /// The connection, while it is up and (behind Sentinel) the primary has not moved since
    /// it was opened. One that another connection learnt is to an old primary is given up:
    /// the old primary still took writes, so it is alive but no longer the primary, and
    /// whatever it counts now is lost when it follows the new one, so the calls waiting on
    /// it are answered as an outage rather than as admitted.
    fn current(&self) -> Option<Arc<Link>> {
        let link = self.link.lock().ok()?.clone()?;
        if let Some(s) = &self.sentinel {
            if s.moves() != self.opened_at.load(std::sync::atomic::Ordering::Relaxed) {
                link.give_up("the Redis primary moved (Sentinel named another)");
                return None;
            }
        }
        link.is_up().then_some(link)
    }

    async fn link(&self, shared: &Arc<Shared>) -> Result<Arc<Link>, StoreError> {
        if let Some(link) = self.current() {
            return Ok(link);
        }
        let _opening = self.opening.lock().await;
        if let Some(link) = self.current() {
            return Ok(link);
        }
        let link = tokio::time::timeout(self.connect_timeout, self.open(shared))
            .await
            .map_err(|_| {
                StoreError::Backend(format!(
                    "connecting to Redis took longer than {:?}",
                    self.connect_timeout
                ))
            })?
            .map_err(|e| StoreError::Backend(format!("connecting to Redis: {e}")))?;
        if let Ok(mut slot) = self.link.lock() {
            *slot = Some(link.clone());
        }
        if let Some(s) = &self.sentinel {
            self.opened_at
                .store(s.moves(), std::sync::atomic::Ordering::Relaxed);
        }
        Ok(link)
    }

    /// Connects, sends the setup commands and checks their replies, and starts the
    /// connection's reader and flushing tasks.
    async fn open(&self, shared: &Arc<Shared>) -> io::Result<Arc<Link>> {
        let (mut read, mut write): (Box<dyn AsyncRead + Send + Unpin>, Writer) = match &self.target
        {
            Target::Tcp(addr) => {
                let stream = match &self.sentinel {
                    Some(s) => {
                        let (host, port) = s.locate().await.map_err(io::Error::other)?;
                        TcpStream::connect((host.as_str(), port)).await?
                    }
                    None => TcpStream::connect(addr.as_str()).await?,
                };
                stream.set_nodelay(true)?;
                let (r, w) = stream.into_split();
                (Box::new(r), Writer::Tcp(w))
            }
            Target::Tls {
                host,
                port,
                connector,
            } => {
                let (host, port) = match &self.sentinel {
                    Some(s) => s.locate().await.map_err(io::Error::other)?,
                    None => (host.clone(), *port),
                };
                let stream = TcpStream::connect((host.as_str(), port)).await?;
                stream.set_nodelay(true)?;
                let name = rustls::pki_types::ServerName::try_from(host)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let (r, w) = tokio::io::split(connector.connect(name, stream).await?);
                (Box::new(r), Writer::Tls(tokio::sync::Mutex::new(w)))
            }
            Target::Unix(path) => {
                let (r, w) = UnixStream::connect(path).await?.into_split();
                (Box::new(r), Writer::Unix(w))
            }
        };
        let mut buf = Vec::with_capacity(16 * 1024);
        write.write_all(&self.setup).await?;
        for _ in 0..self.setup_replies {
            match next_frame(&mut read, &mut buf).await? {
                Frame::Simple(_) => {}
                Frame::Error(e) => return Err(io::Error::other(e)),
                Frame::Bulk(_) => {
                    return Err(io::Error::other("unexpected reply to AUTH or SELECT"))
                }
            }
        }
        Ok(Link::start(write, read, buf, shared.clone()))
    }
}

/// One connection: the calls waiting to be written, and the batches waiting for replies.
struct Link {
    write: Writer,
    state: Mutex<State>,
    /// Wakes the flushing task.
    flush: Notify,
}

#[derive(Default)]
struct State {
    /// Why the connection was given up; calls fail with it from then on.
    down: Option<String>,
    /// Calls not written yet.
    pending: Vec<Call>,
    /// Batches written, oldest first, with when they were written; replies come in this order.
    in_flight: VecDeque<(Instant, Vec<Call>)>,
    /// Bytes not written yet because the socket's buffer was full.
    backlog: Vec<u8>,
    flusher_woken: bool,
    split: Split,
}

/// When a batch is written before the flushing task's turn: once it holds half of the calls
/// that were recently waiting on this connection at once.
///
/// Why: calls arrive in bursts. The gateway thread reads a burst of requests in one turn of its
/// task queue and admits each one; the flushing task runs after them, so the whole burst went to
/// Redis as one batch, and the thread, with every call of the burst waiting on that reply, had
/// nothing left to do until it came. Under steady load the calls then stay together as one
/// burst, round after round: in `benches/load.sh` (32 connections) the metered route's core
/// was idle 7% of the time, asleep about 23 times per 1,000 calls, against never on the
/// unmetered route. Writing the first half of a burst as soon as it is admitted puts Redis to
/// work while the thread admits the second half, and its replies are back by then. Fixed
/// splits against one batch per turn, the metered route of `benches/load.sh` by hand with wrk's
/// connections varied (2026-12-05, a 2-core VM with halt polling off; req/s, medians of 4
/// interleaved rounds of 5 s):
///
/// | connections | one batch per turn | at most 8 | at most 16 | at most 24 |
/// |---|---|---|---|---|
/// | 16 | 34,164 | **36,924** | 34,410 | 34,403 |
/// | 32 | 36,213 | 38,035 | **38,986** | 38,661 |
/// | 64 | **36,673** | 35,372 | 36,240 | 36,210 |
///
/// The best split is about half of the calls waiting at once, and a fixed one costs the loads it
/// does not fit (smaller batches mean more writes and more script runs), so the split follows the
/// largest number of calls waiting at once in the last [`SPLIT_WINDOW`] calls, halved and kept
/// between [`MIN_SPLIT`] and [`MAX_BATCH`]. Against one batch per turn (3 interleaved rounds):
/// 34,856 → 36,825 req/s with 16 connections, 36,946 → 39,182 with 32, 37,194 → 37,588 with
/// 64; the gateway's core went from 91%, 93% and 99% busy to 97%, 99% and 100%, and its CPU
/// time per call did not change (25.2 → 25.3 µs with 32 connections).
#[derive(Debug)]
struct Split {
    /// Write a batch as soon as it holds this many calls.
    at: usize,
    /// The most calls waiting at once (pending or in flight) in this window so far.
    peak: usize,
    /// Calls submitted in this window so far.
    seen: u32,
}

impl Default for Split {
    fn default() -> Split {
        Split {
            at: MAX_BATCH,
            peak: 0,
            seen: 0,
        }
    }
}

impl Split {
    /// Counts one submitted call, with `waiting` calls (itself included) now on the connection;
    /// returns the current split.
    fn on_submit(&mut self, waiting: usize) -> usize {
        self.peak = self.peak.max(waiting);
        self.seen += 1;
        if self.seen >= SPLIT_WINDOW {
            self.at = (self.peak / 2).clamp(MIN_SPLIT, MAX_BATCH);
            self.peak = 0;
            self.seen = 0;
        }
        self.at
    }
}

impl Link {
    fn start(
        write: Writer,
        read: Box<dyn AsyncRead + Send + Unpin>,
        buf: Vec<u8>,
        shared: Arc<Shared>,
    ) -> Arc<Link> {
        let link = Arc::new(Link {
            write,
            state: Mutex::new(State::default()),
            flush: Notify::new(),
        });
        tokio::spawn(link.clone().read_replies(read, buf, shared.clone()));
        tokio::spawn(link.clone().flush_pending(shared));
        link
    }

    fn state(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        self.state.lock().map_err(|_| {
            StoreError::Backend("the reservation connection's state is poisoned".into())
        })
    }

    fn is_up(&self) -> bool {
        self.state.lock().is_ok_and(|s| s.down.is_none())
    }

    /// Gives the connection up (its reader and flushing tasks then end).
    fn give_up(&self, why: &str) {
        if let Ok(mut state) = self.state() {
            if state.down.is_none() {
                fail(&mut state, why.to_string());
            }
        }
        self.flush.notify_one();
    }

    /// Queues one call for the flushing task, which writes the calls queued in this turn of
    /// the thread's task queue as one batch; a batch that reaches the split (see [`Split`]) is
    /// written at once.
    fn submit(
        &self,
        shared: &Shared,
        reservation: Arc<Reservation>,
    ) -> Result<oneshot::Receiver<Answer>, StoreError> {
        let (reply, answer) = oneshot::channel();
        let mut state = self.state()?;
        if let Some(why) = &state.down {
            return Err(StoreError::Backend(why.clone()));
        }
        state.pending.push((reservation, reply));
        // `in_flight` holds a few batches at most: counting them is cheaper than keeping a count.
        let waiting =
            state.pending.len() + state.in_flight.iter().map(|(_, c)| c.len()).sum::<usize>();
        if state.pending.len() >= state.split.on_submit(waiting) {
            self.write_pending(&mut state, shared);
        } else if !state.flusher_woken {
            state.flusher_woken = true;
            self.flush.notify_one();
        }
        Ok(answer)
    }

    /// Encodes the pending calls as one script call and writes it, or queues the bytes when
    /// the socket cannot take them now (and wakes the flushing task to wait for it).
    fn write_pending(&self, state: &mut State, shared: &Shared) {
        if state.pending.is_empty() || state.down.is_some() {
            return;
        }
        let calls = std::mem::take(&mut state.pending);
        let mut bytes = Vec::new();
        super::pack_evalsha(
            shared.reserve.get_hash(),
            calls.iter().map(|(r, _)| &**r),
            &mut bytes,
        );
        state.in_flight.push_back((Instant::now(), calls));
        if state.backlog.is_empty() {
            match self.write.try_write(&bytes) {
                Ok(n) if n == bytes.len() => return,
                Ok(n) => state.backlog.extend_from_slice(&bytes[n..]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    state.backlog.extend_from_slice(&bytes)
                }
                Err(e) => return fail(state, format!("writing to Redis: {e}")),
            }
        } else {
            state.backlog.extend_from_slice(&bytes);
        }
        if !state.flusher_woken {
            state.flusher_woken = true;
            self.flush.notify_one();
        }
    }

    /// The flushing task: writes what the request tasks left pending, and what the socket
    /// could not take at once (over TLS, everything).
    async fn flush_pending(self: Arc<Link>, shared: Arc<Shared>) {
        if let Writer::Tls(tls) = &self.write {
            return self.flush_tls(tls, &shared).await;
        }
        loop {
            self.flush.notified().await;
            loop {
                {
                    let Ok(mut state) = self.state() else { return };
                    state.flusher_woken = false;
                    if state.down.is_some() {
                        return;
                    }
                    self.write_pending(&mut state, &shared);
                    if !state.backlog.is_empty() {
                        match self.write.try_write(&state.backlog) {
                            Ok(n) => {
                                state.backlog.drain(..n);
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                            Err(e) => return fail(&mut state, format!("writing to Redis: {e}")),
                        }
                    }
                    if state.backlog.is_empty() {
                        break;
                    }
                }
                if let Err(e) = self.write.writable().await {
                    if let Ok(mut state) = self.state() {
                        fail(&mut state, format!("writing to Redis: {e}"));
                    }
                    return;
                }
            }
        }
    }

    /// [`Self::flush_pending`] over TLS: takes what is queued (in the order the batches were
    /// queued, which is the order their replies come in) and writes it, waiting as long as the
    /// stream needs; whatever was queued meanwhile goes in the next write.
    async fn flush_tls(&self, tls: &tokio::sync::Mutex<TlsWriter>, shared: &Shared) {
        // Only this task writes, so the lock is never contended; it is what lets the writer
        // live in the link beside the plain sockets' halves.
        let mut writer = tls.lock().await;
        loop {
            self.flush.notified().await;
            loop {
                let bytes = {
                    let Ok(mut state) = self.state() else { return };
                    state.flusher_woken = false;
                    if state.down.is_some() {
                        return;
                    }
                    self.write_pending(&mut state, shared);
                    std::mem::take(&mut state.backlog)
                };
                if bytes.is_empty() {
                    break;
                }
                let written = async {
                    writer.write_all(&bytes).await?;
                    writer.flush().await
                };
                if let Err(e) = written.await {
                    if let Ok(mut state) = self.state() {
                        fail(&mut state, format!("writing to Redis: {e}"));
                    }
                    return;
                }
            }
        }
    }

    /// The reader task: answers each batch from its reply, in order, until the connection
    /// fails.
    async fn read_replies(
        self: Arc<Link>,
        mut read: Box<dyn AsyncRead + Send + Unpin>,
        mut buf: Vec<u8>,
        shared: Arc<Shared>,
    ) {
        let why = loop {
            let mut at = 0;
            let mut bad = None;
            while let Some((frame, used)) = parse_frame(&buf[at..]) {
                at += used;
                let batch = match self.state() {
                    Ok(mut state) => state.in_flight.pop_front(),
                    Err(e) => {
                        bad = Some(e.to_string());
                        break;
                    }
                };
                let Some((_, calls)) = batch else {
                    bad = Some("Redis sent a reply nothing was waiting for".to_string());
                    break;
                };
                match frame {
                    Ok(Frame::Bulk(reply)) => {
                        answer(calls, |batch| super::parse_batch(&reply, batch))
                    }
                    Ok(Frame::Error(e)) if e.starts_with("NOSCRIPT") => {
                        let shared = shared.clone();
                        tokio::spawn(async move {
                            let batch: Vec<_> = calls.iter().map(|(r, _)| r.clone()).collect();
                            let result = shared.reserve_slot(&batch).await;
                            answer(calls, |_| result);
                        });
                    }
                    Ok(Frame::Error(e)) if e.starts_with("READONLY") => {
                        // The server was demoted to a replica (a failover): nothing ran. The
                        // connection is given up, so the next call connects afresh, to where
                        // the URL's name points now (a managed Redis moves it to the new
                        // primary).
                        tracing::warn!("{}.", super::REPLICA);
                        answer(calls, |_| Err(StoreError::Backend(e)));
                        bad = Some(super::REPLICA.to_string());
                        break;
                    }
                    Ok(Frame::Error(e)) => {
                        answer(calls, |_| Err(StoreError::Backend(e)));
                    }
                    Ok(Frame::Simple(_)) | Err(_) => {
                        answer(calls, |_| {
                            Err(StoreError::Backend("unexpected reply from Redis".into()))
                        });
                        bad = Some("Redis sent a reply of an unexpected kind".to_string());
                        break;
                    }
                }
            }
            buf.drain(..at);
            if let Some(why) = bad {
                break why;
            }
            match fast_timeout(READ_TICK, read.read_buf(&mut buf)).await {
                Ok(Ok(0)) => break "Redis closed the connection".to_string(),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => break format!("reading from Redis: {e}"),
                Err(_) => {
                    let Ok(state) = self.state() else { return };
                    if state.down.is_some() {
                        return;
                    }
                    let late = state
                        .in_flight
                        .front()
                        .is_some_and(|(sent, _)| sent.elapsed() >= LATE_REPLY_WAIT);
                    if late {
                        break format!("Redis did not reply within {LATE_REPLY_WAIT:?}");
                    }
                }
            }
        };
        if let Ok(mut state) = self.state() {
            fail(&mut state, why);
        }
        self.flush.notify_one();
    }
}

/// Gives up the connection: every call waiting on it fails with `why`.
fn fail(state: &mut State, why: String) {
    tracing::debug!(reason = %why, "The reservation connection to Redis is down.");
    for (_, calls) in std::mem::take(&mut state.in_flight) {
        answer(calls, |_| Err(StoreError::Backend(why.clone())));
    }
    answer(std::mem::take(&mut state.pending), |_| {
        Err(StoreError::Backend(why.clone()))
    });
    state.backlog.clear();
    state.down = Some(why);
}

/// Sends each call its answer out of `results` (one per call, in order), or the batch's error.
fn answer(
    calls: Vec<Call>,
    results: impl FnOnce(&[Arc<Reservation>]) -> Result<Vec<Answer>, StoreError>,
) {
    let (batch, replies): (Vec<_>, Vec<_>) = calls.into_iter().unzip();
    send_answers(replies, results(&batch));
}

type TlsWriter = WriteHalf<TlsStream<TcpStream>>;

/// The write half of each kind of connection.
enum Writer {
    Tcp(tcp::OwnedWriteHalf),
    Unix(unix::OwnedWriteHalf),
    /// Written by the flushing task alone (see [`Link::flush_tls`]).
    Tls(tokio::sync::Mutex<TlsWriter>),
}

impl Writer {
    /// Writes what the socket takes now; a TLS stream takes nothing here (its flushing task
    /// writes the backlog).
    fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Writer::Tcp(w) => w.try_write(bytes),
            Writer::Unix(w) => w.try_write(bytes),
            Writer::Tls(_) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    async fn writable(&self) -> io::Result<()> {
        match self {
            Writer::Tcp(w) => w.writable().await,
            Writer::Unix(w) => w.writable().await,
            // Not reached: the TLS flushing task waits in its own writes.
            Writer::Tls(_) => Ok(()),
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Writer::Tcp(w) => w.write_all(bytes).await,
            Writer::Unix(w) => w.write_all(bytes).await,
            Writer::Tls(w) => {
                let w = w.get_mut();
                w.write_all(bytes).await?;
                w.flush().await
            }
        }
    }
}

/// The replies this connection gets: the script's string, an error, or `+OK` to setup.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    Bulk(Vec<u8>),
    Error(String),
    Simple(String),
}

/// One complete reply at the start of `buf` and its length; `None` when more bytes are
/// needed. A reply of another kind than a bulk string, an error or a simple string is an
/// `Err` (the reserve script and the setup commands reply with nothing else).
fn parse_frame(buf: &[u8]) -> Option<(Result<Frame, ()>, usize)> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = &buf[1..end];
    let text = || String::from_utf8_lossy(line).into_owned();
    match buf[0] {
        b'+' => Some((Ok(Frame::Simple(text())), end + 2)),
        b'-' => Some((Ok(Frame::Error(text())), end + 2)),
        b'$' => {
            let Some(len) = std::str::from_utf8(line)
                .ok()
                .and_then(|l| l.parse::<usize>().ok())
            else {
                return Some((Err(()), end + 2));
            };
            let start = end + 2;
            if buf.len() < start + len + 2 {
                return None;
            }
            Some((
                Ok(Frame::Bulk(buf[start..start + len].to_vec())),
                start + len + 2,
            ))
        }
        _ => Some((Err(()), end + 2)),
    }
}

/// Reads until one whole reply is in `buf`, and takes it out.
async fn next_frame(
    read: &mut (dyn AsyncRead + Send + Unpin),
    buf: &mut Vec<u8>,
) -> io::Result<Frame> {
    loop {
        if let Some((frame, used)) = parse_frame(buf) {
            buf.drain(..used);
            return frame.map_err(|()| io::Error::other("unexpected reply from Redis"));
        }
        if read.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_frame, Frame, Split, MAX_BATCH, MIN_SPLIT, SPLIT_WINDOW};

    /// Submits one window of calls whose largest number waiting at once is `peak`.
    fn window(split: &mut Split, peak: usize) -> usize {
        let mut at = 0;
        for i in 0..SPLIT_WINDOW as usize {
            at = split.on_submit(if i == 7 { peak } else { 1 });
        }
        at
    }

    #[test]
    fn a_batch_splits_at_half_the_calls_recently_waiting_at_once() {
        let mut split = Split::default();
        // Until a window has been seen, a batch waits for the flushing task (or is full).
        assert_eq!(split.on_submit(40), MAX_BATCH);
        assert_eq!(window(&mut split, 40), 20);
        // Each window starts afresh: a quieter one lowers the split, a busier one raises it.
        assert_eq!(window(&mut split, 24), 12);
        assert_eq!(window(&mut split, 64), 32);
        // Kept between the bounds.
        assert_eq!(window(&mut split, 3), MIN_SPLIT);
        assert_eq!(window(&mut split, 10_000), MAX_BATCH);
    }

    #[test]
    fn replies_are_cut_at_their_ends() {
        assert_eq!(
            parse_frame(b"$5\r\n1 2 3\r\n+OK\r\n"),
            Some((Ok(Frame::Bulk(b"1 2 3".to_vec())), 11))
        );
        assert_eq!(
            parse_frame(b"$0\r\n\r\n"),
            Some((Ok(Frame::Bulk(vec![])), 6))
        );
        assert_eq!(
            parse_frame(b"-NOSCRIPT No matching script\r\n"),
            Some((Ok(Frame::Error("NOSCRIPT No matching script".into())), 30))
        );
        assert_eq!(
            parse_frame(b"+OK\r\n"),
            Some((Ok(Frame::Simple("OK".into())), 5))
        );
        assert_eq!(parse_frame(b":1\r\n"), Some((Err(()), 4)));
        assert_eq!(parse_frame(b"$x\r\n"), Some((Err(()), 4)));
    }

    #[test]
    fn partial_replies_wait_for_more() {
        for partial in [
            &b""[..],
            b"$5",
            b"$5\r\n",
            b"$5\r\n1 2 3",
            b"$5\r\n1 2 3\r",
            b"-ERR",
        ] {
            assert_eq!(
                parse_frame(partial),
                None,
                "{:?}",
                String::from_utf8_lossy(partial)
            );
        }
    }
}
