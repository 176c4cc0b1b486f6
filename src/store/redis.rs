//! The Redis backend: one Lua script per reservation, over one multiplexed connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;

use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::Script;
use tokio::sync::OnceCell;

use super::batch::Batcher;

mod pipe;
pub(crate) mod sentinel;

use super::{keys, Adjustment, KeyRecord, PlanOverrides, Reservation, Reserved, Store, StoreError};

/// How long a reply may take before the connection is given up on.
const LATE_REPLY_WAIT: Duration = Duration::from_secs(30);

/// Counters in Redis, shared by every gateway instance.
///
/// The connection is made on first use, inside the runtime that serves requests: a redis-rs
/// connection's driver task lives on the runtime that created it, and pingora builds its
/// runtimes only when the server starts.
///
/// Reservations do not go to Redis one by one: the reservations that are ready while a batch is
/// in flight go together, in one script call (see [`pipe`] for one server, [`Batcher`] for
/// clusters). Under load this turns a write, a read, a reply to parse and a script
/// start per call into one of each per batch; each reservation is still decided on its own and
/// all-or-nothing, so batching changes nothing about exactness.
///
/// Against a Redis Cluster (`store.kind: redis-cluster`) the same holds per slot: every key of
/// one tenant carries the `{tenant}` hash tag (SPEC §9), so one call's keys share a slot, and a
/// batch is split into one script call per slot, sent at once (see [`per_slot`]).
pub struct RedisStore {
    shared: Arc<Shared>,
    reserves: OnceCell<Batcher<Arc<Reservation>, Reserved>>,
    /// The reservation path's own connection to one server, over TCP, TLS or a unix socket
    /// (see [`pipe`]); clusters, and TLS without certificate checks, use `reserves`.
    pipe: Option<pipe::Pipe>,
    settles: OnceCell<Batcher<Vec<Adjustment>, ()>>,
}

/// What the batching task and direct calls both use.
struct Shared {
    backend: Backend,
    conn: Slot,
    control: Slot,
    reserve: Script,
    refund: Script,
    lookup: Script,
    settle: Script,
    adjust: Script,
}

impl RedisStore {
    /// A store for `url`; nothing is connected yet. A `rediss://` URL connects with TLS,
    /// trusting `ca` when it is not empty (`store.ca_file`), else the webpki roots.
    pub fn new(
        url: &str,
        ca: &[rustls::pki_types::CertificateDer<'static>],
        timeout: Duration,
    ) -> Result<RedisStore, StoreError> {
        // rustls needs the process's crypto provider (installed at start-up; again here for
        // stores built outside `main`, as tests do).
        crate::install_crypto_provider();
        let client = client_trusting(url, ca).map_err(|e| StoreError::Backend(e.to_string()))?;
        let config = manager_config(timeout);
        let pipe = pipe::Pipe::for_server(client.get_connection_info(), ca, timeout, None);
        Ok(RedisStore::with_backend(
            Backend::Single {
                client,
                config,
                sentinel: None,
            },
            pipe,
        ))
    }

    /// A store on the primary that the Redis Sentinels at `sentinels` monitor under the name
    /// `url` gives as its host (`redis://[:PASSWORD@]NAME[/DB]`); nothing is connected yet.
    /// Every connection asks the Sentinels where the primary is first (see [`sentinel`]).
    pub fn sentinel(
        url: &str,
        sentinels: &[String],
        ca: &[rustls::pki_types::CertificateDer<'static>],
        timeout: Duration,
    ) -> Result<RedisStore, StoreError> {
        crate::install_crypto_provider();
        let sentinel = Arc::new(sentinel::Sentinel::new(url, sentinels, ca, timeout)?);
        let client = redis::Client::open(url).map_err(backend)?;
        let config = manager_config(timeout);
        let pipe = pipe::Pipe::for_server(
            client.get_connection_info(),
            ca,
            timeout,
            Some(sentinel.clone()),
        );
        Ok(RedisStore::with_backend(
            Backend::Single {
                client,
                config,
                sentinel: Some(sentinel),
            },
            pipe,
        ))
    }

    /// A store on the Redis Cluster that `seeds` (`redis://` or `rediss://` URLs of some of
    /// its nodes) belong to; nothing is connected yet. With TLS, `ca` (when not empty) is
    /// trusted for every node instead of the webpki roots, as for one server.
    pub fn cluster(
        seeds: &[String],
        ca: &[rustls::pki_types::CertificateDer<'static>],
        timeout: Duration,
    ) -> Result<RedisStore, StoreError> {
        crate::install_crypto_provider();
        let certs = || redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(crate::tls::pem(ca)),
        };
        let mut builder = redis::cluster::ClusterClient::builder(seeds.iter().map(String::as_str))
            .connection_timeout(timeout)
            .response_timeout(LATE_REPLY_WAIT.max(timeout))
            .retries(1)
            .max_retry_wait(500);
        if !ca.is_empty() {
            builder = builder.certs(certs());
        }
        let cluster = builder.build().map_err(backend)?;
        let seeds = seeds
            .iter()
            .map(|u| {
                if ca.is_empty() {
                    redis::Client::open(u.as_str())
                } else {
                    redis::Client::build_with_tls(u.as_str(), certs())
                }
                .map_err(backend)
            })
            .collect::<Result<_, _>>()?;
        Ok(RedisStore::with_backend(
            Backend::Cluster { cluster, seeds },
            None,
        ))
    }

    fn with_backend(backend: Backend, pipe: Option<pipe::Pipe>) -> RedisStore {
        let shared = Shared {
            backend,
            conn: Slot::default(),
            control: Slot::default(),
            reserve: Script::new(include_str!("reserve.lua")),
            refund: Script::new(include_str!("refund.lua")),
            lookup: Script::new(include_str!("lookup_key.lua")),
            settle: Script::new(include_str!("settle.lua")),
            adjust: Script::new(include_str!("adjust.lua")),
        };
        RedisStore {
            shared: Arc::new(shared),
            reserves: OnceCell::new(),
            pipe,
            settles: OnceCell::new(),
        }
    }
}

/// A redis-rs client for `info`, trusting `ca` over TLS when it is not empty (else the public
/// roots, as redis-rs does).
fn client_trusting(
    info: impl redis::IntoConnectionInfo,
    ca: &[rustls::pki_types::CertificateDer<'static>],
) -> redis::RedisResult<redis::Client> {
    if ca.is_empty() {
        redis::Client::open(info)
    } else {
        // redis-rs takes the roots as PEM only.
        redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(crate::tls::pem(ca)),
            },
        )
    }
}

/// The settings of the request path's and the admin API's connections to one server.
///
/// Retrying is our caller's business (bounded by `store.timeout`); the manager's defaults
/// would keep a call waiting for seconds while Redis is away. The response timeout is longer
/// than `store.timeout` on purpose: a reservation the caller gave up on keeps waiting for its
/// reply so it can refund itself (see `StoreHandle::reserve`).
fn manager_config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(LATE_REPLY_WAIT.max(timeout)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500))
}

/// What the store talks to.
enum Backend {
    /// One Redis server: at `client`'s address, or the primary `sentinel` names.
    Single {
        client: redis::Client,
        config: ConnectionManagerConfig,
        sentinel: Option<Arc<sentinel::Sentinel>>,
    },
    /// A Redis Cluster; `seeds` also carry the subscription to plan changes (a `PUBLISH` on
    /// any node of a cluster reaches the subscribers of every node).
    Cluster {
        cluster: redis::cluster::ClusterClient,
        seeds: Vec<redis::Client>,
    },
}

/// A connection to either backend; cheap to clone, like the connections it wraps.
///
/// A server that answers `READONLY` was demoted to a replica by a failover, and redis-rs keeps
/// the connection (it reconnects only when the socket fails). A managed Redis moves its
/// endpoint's name to the new primary, so the connection is marked stale and the next
/// [`Slot::get`] connects afresh. (A cluster follows its primaries itself.)
///
/// Behind Redis Sentinel (`moves` set), a connection that is lost or refused, or whose reply
/// never comes, is marked stale too: redis-rs would reconnect to the same address, a primary
/// that may have died, while the next [`Slot::get`] asks the Sentinels where the primary is.
#[derive(Clone)]
struct Conn {
    kind: ConnKind,
    /// Why the connection is given up: [`FRESH`] while it is not.
    stale: Arc<AtomicU8>,
    /// Behind Sentinel: the primary's moves ([`sentinel::Sentinel::moves`]) when it was made;
    /// it is given up once the primary moved since, and on a lost connection too.
    moves: Option<u64>,
}

/// A connection in use.
const FRESH: u8 = 0;
/// Given up: the server answered `READONLY`.
const STALE_REPLICA: u8 = 1;
/// Given up: the connection was lost (behind Sentinel).
const STALE_LOST: u8 = 2;

#[derive(Clone)]
enum ConnKind {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// The message of a connection given up because the server became a replica.
pub(crate) const REPLICA: &str =
    "Redis answered READONLY: the server is a replica now (a failover?); connecting again";

fn is_readonly(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}

fn holds_readonly(v: &redis::Value) -> bool {
    match v {
        redis::Value::ServerError(e) => e.kind() == Some(redis::ServerErrorKind::ReadOnly),
        _ => false,
    }
}

/// Whether an error says the connection to the server is lost (or was never made).
fn is_lost(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

/// Marks the connection stale when a reply says the server is a replica now, or (behind
/// Sentinel, `follow`) the reply says the connection is lost.
fn mark_stale<T>(
    stale: &AtomicU8,
    follow: bool,
    reply: &redis::RedisResult<T>,
    readonly: impl Fn(&T) -> bool,
) {
    let why = match reply {
        Ok(v) if readonly(v) => STALE_REPLICA,
        Err(e) if is_readonly(e) => STALE_REPLICA,
        Err(e) if follow && is_lost(e) => STALE_LOST,
        _ => return,
    };
    stale.store(why, Ordering::Relaxed);
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        let Conn { kind, stale, moves } = self;
        match kind {
            ConnKind::Single(c) => Box::pin(async move {
                let reply = c.req_packed_command(cmd).await;
                mark_stale(stale, moves.is_some(), &reply, holds_readonly);
                reply
            }),
            ConnKind::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        let Conn { kind, stale, moves } = self;
        match kind {
            ConnKind::Single(c) => Box::pin(async move {
                let replies = c.req_packed_commands(pipeline, offset, count).await;
                mark_stale(
                    stale,
                    moves.is_some(),
                    &replies,
                    |values: &Vec<redis::Value>| values.iter().any(holds_readonly),
                );
                replies
            }),
            ConnKind::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.kind {
            ConnKind::Single(c) => c.get_db(),
            ConnKind::Cluster(c) => c.get_db(),
        }
    }
}

/// A connection made on first use, and made again once a failover marked it stale.
#[derive(Default)]
struct Slot {
    current: arc_swap::ArcSwapOption<Conn>,
    connecting: tokio::sync::Mutex<()>,
}

impl Slot {
    /// The connection, unless it was given up or made before the primary's last move.
    fn fresh(&self, moves: Option<u64>) -> Option<Conn> {
        self.current
            .load()
            .as_deref()
            .filter(|c| c.stale.load(Ordering::Relaxed) == FRESH && c.moves == moves)
            .cloned()
    }

    /// The connection, made by `connect` when there is none or it is stale; `moves` is the
    /// primary's moves now (behind Sentinel).
    async fn get(
        &self,
        moves: Option<u64>,
        connect: impl std::future::Future<Output = Result<Conn, StoreError>>,
    ) -> Result<Conn, StoreError> {
        if let Some(conn) = self.fresh(moves) {
            return Ok(conn);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(conn) = self.fresh(moves) {
            return Ok(conn);
        }
        let given_up = self
            .current
            .load()
            .as_ref()
            .map(|c| c.stale.load(Ordering::Relaxed));
        match given_up {
            Some(STALE_REPLICA) => tracing::warn!("{REPLICA}."),
            Some(STALE_LOST) => {
                tracing::warn!("The connection to the Redis primary was lost; asking the Sentinels where the primary is.")
            }
            _ => {}
        }
        let conn = connect.await?;
        self.current.store(Some(Arc::new(conn.clone())));
        Ok(conn)
    }
}

impl Shared {
    /// The request path's connection: reservations, refunds, settlements, key look-ups.
    async fn conn(&self) -> Result<Conn, StoreError> {
        self.conn.get(self.moves(), self.connect()).await
    }

    /// The primary's moves so far, behind Sentinel.
    fn moves(&self) -> Option<u64> {
        self.sentinel().map(|s| s.moves())
    }

    /// The Sentinels that name the server, if it is found through them.
    fn sentinel(&self) -> Option<&sentinel::Sentinel> {
        match &self.backend {
            Backend::Single {
                sentinel: Some(s), ..
            } => Some(s),
            _ => None,
        }
    }

    async fn connect(&self) -> Result<Conn, StoreError> {
        let mut moves = None;
        match &self.backend {
            Backend::Single { client, config, .. } => {
                let client = match self.sentinel() {
                    Some(s) => {
                        let client = s.client().await?;
                        moves = Some(s.moves());
                        client
                    }
                    None => client.clone(),
                };
                ConnectionManager::new_with_config(client, config.clone())
                    .await
                    .map(ConnKind::Single)
            }
            Backend::Cluster { cluster, .. } => {
                cluster.get_async_connection().await.map(ConnKind::Cluster)
            }
        }
        .map(|kind| Conn {
            kind,
            stale: Arc::default(),
            moves,
        })
        .map_err(backend)
    }

    fn is_cluster(&self) -> bool {
        matches!(self.backend, Backend::Cluster { .. })
    }

    /// A subscriber connection: to the server, or to the first seed node of a cluster that
    /// answers (a cluster delivers a `PUBLISH` on any node to the subscribers of every node).
    async fn pubsub(&self) -> redis::RedisResult<redis::aio::PubSub> {
        match &self.backend {
            Backend::Single { client, .. } => match self.sentinel() {
                Some(s) => {
                    let client = s.client().await.map_err(|e| {
                        redis::RedisError::from((
                            redis::ErrorKind::Io,
                            "Redis Sentinel",
                            e.to_string(),
                        ))
                    })?;
                    client.get_async_pubsub().await
                }
                None => client.get_async_pubsub().await,
            },
            Backend::Cluster { seeds, .. } => {
                let mut last = None;
                for seed in seeds {
                    match seed.get_async_pubsub().await {
                        Ok(pubsub) => return Ok(pubsub),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    redis::RedisError::from((redis::ErrorKind::Io, "no seed node configured"))
                }))
            }
        }
    }

    /// A second connection for everything off the request path: health checks, the admin API,
    /// following plan overrides. A connection's driver task lives on the runtime that made it,
    /// so if a background service or the admin listener made the one the request path uses,
    /// every reservation would hop to that runtime's thread and back (measured: the proxy
    /// thread then spends a quarter of its time waking it).
    async fn control(&self) -> Result<Conn, StoreError> {
        self.control.get(self.moves(), self.connect()).await
    }

    /// Runs a batch of reservations in one script call. Each reservation is still decided on
    /// its own and all-or-nothing (see `reserve.lua`); the batch only shares the round trip and
    /// the script start-up. NOSCRIPT (a restarted Redis, `SCRIPT FLUSH`) means nothing ran, so
    /// the batch is repeated once after loading the script and cannot be charged twice.
    async fn reserve_all(
        &self,
        batch: &[Arc<Reservation>],
    ) -> Result<Vec<Result<Reserved, StoreError>>, StoreError> {
        if self.is_cluster() {
            per_slot(
                batch,
                |r| r.first_key(),
                |b| async move { self.reserve_slot(&b).await },
            )
            .await
        } else {
            self.reserve_slot(batch).await
        }
    }

    /// [`Shared::reserve_all`] for calls whose keys share one slot (or one server).
    async fn reserve_slot(
        &self,
        batch: &[Arc<Reservation>],
    ) -> Result<Vec<Result<Reserved, StoreError>>, StoreError> {
        let cmd = evalsha(self.reserve.get_hash(), batch.iter().map(|r| &**r));
        let mut conn = self.conn().await?;
        let reply: Vec<u8> = match cmd.query_async(&mut conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.reserve.load_async(&mut conn).await.map_err(backend)?;
                cmd.query_async(&mut conn).await.map_err(backend)?
            }
            other => other.map_err(backend)?,
        };
        parse_batch(&reply, batch)
    }

    /// Settles the measured meters of a batch of calls in one script call.
    async fn settle_all(
        &self,
        batch: &[Vec<Adjustment>],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        if self.is_cluster() {
            per_slot(
                batch,
                |a| a.first().map(|a| a.key.as_str()),
                |b| async move { self.settle_slot(&b).await },
            )
            .await
        } else {
            self.settle_slot(batch).await
        }
    }

    /// [`Shared::settle_all`] for calls whose keys share one slot (or one server).
    async fn settle_slot(
        &self,
        batch: &[Vec<Adjustment>],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let mut inv = self.settle.prepare_invoke();
        for a in batch.iter().flatten() {
            inv.key(&a.key).arg(a.delta);
        }
        let mut conn = self.conn().await?;
        let _: i64 = inv.invoke_async(&mut conn).await.map_err(backend)?;
        Ok(batch.iter().map(|_| Ok(())).collect())
    }
}

/// `EVALSHA <reserve> keys… calls (n (units limit expire_at)…)…` as a redis-rs command
/// (the multiplexed and cluster connections).
fn evalsha<'a>(hash: &str, batch: impl Iterator<Item = &'a Reservation> + Clone) -> redis::Cmd {
    let size = EvalshaSize::of(batch.clone());
    let mut cmd = redis::Cmd::with_capacity(size.args, 64 + size.key_bytes + 24 * size.args);
    evalsha_args(hash, batch, size.keys, &mut cmd);
    cmd
}

/// The same command, encoded (RESP) straight into `out`: the reservation connection's write
/// buffer (see [`pipe`](self::pipe)). Building a [`redis::Cmd`] first and packing it copied
/// every argument twice; this writes each once.
fn pack_evalsha<'a>(
    hash: &str,
    batch: impl Iterator<Item = &'a Reservation> + Clone,
    out: &mut Vec<u8>,
) {
    let size = EvalshaSize::of(batch.clone());
    out.reserve(64 + size.key_bytes + 24 * size.args);
    out.push(b'*');
    out.extend_from_slice(itoa::Buffer::new().format(size.args).as_bytes());
    out.extend_from_slice(b"\r\n");
    evalsha_args(hash, batch, size.keys, &mut Resp(out));
}

/// The arguments of the reserve script's call, in order, whatever they are written into.
fn evalsha_args<'a>(
    hash: &str,
    batch: impl Iterator<Item = &'a Reservation> + Clone,
    keys: usize,
    out: &mut impl Args,
) {
    out.bytes(b"EVALSHA");
    out.bytes(hash.as_bytes());
    out.int(keys);
    let mut calls = 0usize;
    for r in batch.clone() {
        calls += 1;
        if let Some(burst) = &r.burst {
            out.bytes(burst.key.as_bytes());
        }
        if let Some(marker) = &r.replay {
            out.bytes(marker.key.as_bytes());
        }
        for c in &r.charges {
            out.bytes(c.key.as_bytes());
        }
    }
    out.int(calls);
    for r in batch {
        out.int(r.charges.len());
        out.int(r.replay.as_ref().map_or(0, |m| m.expire_at));
        match &r.burst {
            Some(b) => {
                out.int(b.interval_us.max(1));
                out.int(b.size);
            }
            None => out.int(0u64),
        }
        for c in &r.charges {
            out.int(c.units);
            out.int(c.limit.map_or(-1i64, |l| l.min(i64::MAX as u64) as i64));
            out.int(c.expire_at);
        }
    }
}

/// How big a batch's reserve call is, to size its buffer once (grown argument by argument, the
/// buffers were reallocated several times per batch).
struct EvalshaSize {
    /// Keys: per call, its replay marker's and its counters'.
    keys: usize,
    key_bytes: usize,
    /// Arguments: the command, the hash, the key count, the keys, the call count, and per call
    /// its charge count, marker expiry, burst interval (and size, when it has one), per charge
    /// units, limit and expiry.
    args: usize,
}

impl EvalshaSize {
    fn of<'a>(batch: impl Iterator<Item = &'a Reservation>) -> EvalshaSize {
        let (mut keys, mut key_bytes, mut calls, mut charges) = (0, 0, 0, 0);
        let mut bursts = 0;
        for r in batch {
            calls += 1;
            charges += r.charges.len();
            bursts += usize::from(r.burst.is_some());
            keys += r.charges.len() + usize::from(r.replay.is_some());
            key_bytes += r.charges.iter().map(|c| c.key.len()).sum::<usize>()
                + r.replay.as_ref().map_or(0, |m| m.key.len())
                + r.burst.as_ref().map_or(0, |b| b.key.len());
        }
        keys += bursts;
        EvalshaSize {
            keys,
            key_bytes,
            args: 4 + keys + 3 * calls + bursts + 3 * charges,
        }
    }
}

/// Where [`evalsha_args`] writes a command's arguments.
trait Args {
    fn bytes(&mut self, arg: &[u8]);
    fn int(&mut self, arg: impl itoa::Integer + redis::ToRedisArgs);
}

impl Args for redis::Cmd {
    fn bytes(&mut self, arg: &[u8]) {
        self.arg(arg);
    }

    fn int(&mut self, arg: impl itoa::Integer + redis::ToRedisArgs) {
        self.arg(arg);
    }
}

/// RESP bulk strings, appended to a buffer.
struct Resp<'a>(&'a mut Vec<u8>);

impl Args for Resp<'_> {
    fn bytes(&mut self, arg: &[u8]) {
        crate::resp::bulk(self.0, arg);
    }

    fn int(&mut self, arg: impl itoa::Integer + redis::ToRedisArgs) {
        let mut digits = itoa::Buffer::new();
        self.bytes(digits.format(arg).as_bytes());
    }
}

/// Splits the reserve script's reply into one answer per reservation. The reply is words
/// separated by single spaces: per call, a status word only when it was not admitted (`bU`
/// refused by its burst limit for U microseconds, and nothing more; `r` replay, `dI` denied by
/// counter I, `e` a counter holds no integer), then one value per counter and, with a burst
/// limit, the calls left in it (see `reserve.lua`).
fn parse_batch(
    reply: &[u8],
    batch: &[Arc<Reservation>],
) -> Result<Vec<Result<Reserved, StoreError>>, StoreError> {
    enum Status {
        Admitted,
        Replayed,
        Denied(usize),
        NotAnInteger,
        RateLimited(u64),
    }
    let malformed = || {
        StoreError::Backend(format!(
            "unexpected reply from the reserve script: {:?}",
            String::from_utf8_lossy(reply)
        ))
    };
    let mut words = reply
        .split(|b| *b == b' ')
        .filter(|_| !reply.is_empty())
        .peekable();
    let mut out = Vec::with_capacity(batch.len());
    for r in batch {
        let n = r.charges.len();
        // A status word starts with a letter; an admitted call has none.
        let status = match words.next_if(|w| w.first().is_some_and(u8::is_ascii_alphabetic)) {
            None => Status::Admitted,
            Some(b"r") => Status::Replayed,
            Some(b"e") => Status::NotAnInteger,
            Some([b'b', wait @ ..]) => std::str::from_utf8(wait)
                .ok()
                .and_then(|w| w.parse::<u64>().ok())
                .map(Status::RateLimited)
                .ok_or_else(malformed)?,
            Some([b'd', index @ ..]) => std::str::from_utf8(index)
                .ok()
                .and_then(|i| i.parse::<usize>().ok())
                .filter(|i| (1..=n).contains(i))
                .map(|i| Status::Denied(i - 1))
                .ok_or_else(malformed)?,
            Some(_) => return Err(malformed()),
        };
        // The counters' values, then the burst allowance left when the call has a burst limit;
        // nothing for a call its burst limit refused.
        let n = match status {
            Status::RateLimited(_) => 0,
            _ => n + usize::from(r.burst.is_some()),
        };
        let mut used = Vec::with_capacity(n);
        for _ in 0..n {
            let value = words
                .next()
                .and_then(|w| std::str::from_utf8(w).ok())
                .and_then(|w| w.parse::<i64>().ok())
                .ok_or_else(malformed)?;
            used.push(value.max(0) as u64);
        }
        out.push(match status {
            Status::Admitted => Ok(Reserved::Admitted(used)),
            Status::Replayed => Ok(Reserved::Replayed(used)),
            Status::Denied(index) => Ok(Reserved::Denied { index, used }),
            Status::RateLimited(wait) => Ok(Reserved::RateLimited {
                retry_after: Duration::from_micros(wait),
            }),
            Status::NotAnInteger => Err(StoreError::Backend(
                "a usage counter in Redis does not hold an integer; nothing was reserved".into(),
            )),
        });
    }
    if words.next().is_some() {
        return Err(malformed());
    }
    Ok(out)
}

/// The keys `tg:{*}:tenant`, by `SCAN`: of the server, or of the cluster node at `node`.
async fn scan_tenants(
    conn: &mut Conn,
    node: Option<&(String, u16)>,
) -> Result<Vec<String>, StoreError> {
    let mut names: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg("tg:{*}:tenant")
            .arg("COUNT")
            .arg(1000);
        let (next, batch): (u64, Vec<String>) = match (&mut conn.kind, node) {
            (ConnKind::Cluster(cluster), Some((host, port))) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                });
                let value = cluster.route_command(cmd, routing).await.map_err(backend)?;
                redis::from_redis_value(value).map_err(|e| StoreError::Backend(e.to_string()))?
            }
            _ => cmd.query_async(conn).await.map_err(backend)?,
        };
        names.extend(batch);
        if next == 0 {
            return Ok(names);
        }
        cursor = next;
    }
}

/// The cluster's primaries that are up, as `(host, port)`, from `CLUSTER NODES`.
async fn primaries(conn: &mut Conn) -> Result<Vec<(String, u16)>, StoreError> {
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(conn)
        .await
        .map_err(backend)?;
    Ok(parse_primaries(&nodes))
}

/// `CLUSTER NODES` lines: `<id> <host:port@bus-port[,hostname]> <flags> …`; the primaries not
/// flagged as failing.
fn parse_primaries(nodes: &str) -> Vec<(String, u16)> {
    nodes
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let addr = fields.nth(1)?;
            let flags = fields.next()?;
            let flags: Vec<&str> = flags.split(',').collect();
            if !flags.contains(&"master") || flags.contains(&"fail") || flags.contains(&"noaddr") {
                return None;
            }
            let addr = addr.split(['@', ',']).next()?;
            let (host, port) = addr.rsplit_once(':')?;
            Some((host.to_string(), port.parse().ok()?))
        })
        .collect()
}

/// Runs `run` once per cluster slot that `items` touch (the slot of each item's first key;
/// all of one call's keys share it), all at once, and puts the answers back in `items`' order.
/// A slot whose call failed fails only its own items.
async fn per_slot<T, R, Fut>(
    items: &[T],
    first_key: impl Fn(&T) -> Option<&str>,
    run: impl Fn(Vec<T>) -> Fut,
) -> Result<Vec<Result<R, StoreError>>, StoreError>
where
    T: Clone,
    Fut: std::future::Future<Output = Result<Vec<Result<R, StoreError>>, StoreError>>,
{
    let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let slot = first_key(item).map_or(0, |k| slot(k.as_bytes()));
        match groups.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, members)) => members.push(i),
            None => groups.push((slot, vec![i])),
        }
    }
    let runs = groups.iter().map(|(_, members)| {
        let part: Vec<T> = members.iter().map(|i| items[*i].clone()).collect();
        run(part)
    });
    let answers = futures_util::future::join_all(runs).await;
    let mut out: Vec<Option<Result<R, StoreError>>> = items.iter().map(|_| None).collect();
    for ((_, members), answer) in groups.iter().zip(answers) {
        match answer {
            Ok(results) => {
                for (i, result) in members.iter().zip(results) {
                    out[*i] = Some(result);
                }
            }
            Err(e) => {
                for i in members {
                    out[*i] = Some(Err(StoreError::Backend(e.to_string())));
                }
            }
        }
    }
    Ok(out
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Err(StoreError::Backend("no answer for a call".into()))))
        .collect())
}

/// The Redis Cluster slot of `key`: CRC16 (XMODEM) of its hash tag (the text between the first
/// `{` and the next `}`, when not empty) or else of the whole key, modulo 16384.
fn slot(key: &[u8]) -> u16 {
    let tag = key
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|b| *b == b'}')
                .filter(|len| *len > 0)
                .map(|len| &rest[..len])
        })
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for b in tag {
        crc ^= u16::from(*b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

impl RedisStore {
    /// The batching task in `cell`, started on first use (on the runtime serving requests).
    async fn batcher<'a, J, R, Fut>(
        &self,
        cell: &'a OnceCell<Batcher<J, R>>,
        run: fn(Arc<Shared>, Vec<J>) -> Fut,
    ) -> &'a Batcher<J, R>
    where
        J: Send + 'static,
        R: Send + 'static,
        Fut: std::future::Future<Output = Result<Vec<Result<R, StoreError>>, StoreError>>
            + Send
            + 'static,
    {
        let shared = self.shared.clone();
        cell.get_or_init(|| async move { Batcher::start(move |batch| run(shared.clone(), batch)) })
            .await
    }
}

fn backend(e: redis::RedisError) -> StoreError {
    StoreError::Backend(e.to_string())
}

#[async_trait]
impl Store for RedisStore {
    async fn reserve(
        self: Arc<Self>,
        reservation: Arc<Reservation>,
    ) -> Result<Reserved, StoreError> {
        if let Some(pipe) = &self.pipe {
            return pipe.reserve(&self.shared, reservation).await;
        }
        let batcher = self
            .batcher(
                &self.reserves,
                |s, b| async move { s.reserve_all(&b).await },
            )
            .await;
        batcher.call(reservation).await
    }

    async fn refund(&self, reservation: &Reservation) -> Result<(), StoreError> {
        if reservation.charges.is_empty() && reservation.replay.is_none() {
            return Ok(());
        }
        let mut inv = self.shared.refund.prepare_invoke();
        inv.arg(reservation.charges.len());
        for c in &reservation.charges {
            inv.key(&c.key).arg(c.units);
        }
        if let Some(marker) = &reservation.replay {
            inv.key(&marker.key);
        }
        let mut conn = self.shared.conn().await?;
        let _: i64 = inv.invoke_async(&mut conn).await.map_err(backend)?;
        Ok(())
    }

    async fn settle(&self, adjustments: &[Adjustment]) -> Result<(), StoreError> {
        let batcher = self
            .batcher(&self.settles, |s, b| async move { s.settle_all(&b).await })
            .await;
        batcher.call(adjustments.to_vec()).await
    }

    async fn get(&self, keys: &[String]) -> Result<Vec<u64>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.shared.control().await?;
        let values: Vec<Option<i64>> = redis::cmd("MGET")
            .arg(keys)
            .query_async(&mut conn)
            .await
            .map_err(backend)?;
        Ok(values
            .into_iter()
            .map(|v| v.unwrap_or(0).max(0) as u64)
            .collect())
    }

    async fn adjust(
        &self,
        key: &str,
        delta: i64,
        expire_at: i64,
    ) -> Result<(i64, u64), StoreError> {
        let mut conn = self.shared.conn().await?;
        let (applied, value): (i64, i64) = self
            .shared
            .adjust
            .key(key)
            .arg(delta)
            .arg(expire_at)
            .invoke_async(&mut conn)
            .await
            .map_err(backend)?;
        Ok((applied, value.max(0) as u64))
    }

    async fn lookup_key(&self, sha256_hex: &str) -> Result<Option<KeyRecord>, StoreError> {
        let mut conn = self.shared.conn().await?;
        let key = keys::api_key(sha256_hex);
        if self.shared.is_cluster() {
            // The key and its tenant's hash live in different slots: a script may touch only
            // its own node's keys, so two look-ups.
            let (tenant, id): (Option<String>, Option<String>) = redis::cmd("HMGET")
                .arg(&key)
                .arg("tenant")
                .arg("id")
                .query_async(&mut conn)
                .await
                .map_err(backend)?;
            let Some(tenant) = tenant else {
                return Ok(None);
            };
            let plan: Option<String> = redis::cmd("HGET")
                .arg(keys::tenant(&tenant))
                .arg("plan")
                .query_async(&mut conn)
                .await
                .map_err(backend)?;
            return Ok(Some(KeyRecord {
                tenant,
                id: id.unwrap_or_default(),
                plan: plan.filter(|p| !p.is_empty()),
            }));
        }
        let found: Option<Vec<String>> =
            match self.shared.lookup.key(&key).invoke_async(&mut conn).await {
                Ok(v) => v,
                Err(e) => return Err(backend(e)),
            };
        Ok(found.and_then(|v| match v.as_slice() {
            [tenant, id, plan] => Some(KeyRecord {
                tenant: tenant.clone(),
                id: id.clone(),
                plan: (!plan.is_empty()).then(|| plan.clone()),
            }),
            _ => None,
        }))
    }

    async fn put_key(&self, sha256_hex: &str, record: &KeyRecord) -> Result<(), StoreError> {
        let mut conn = self.shared.control().await?;
        let created_at = jiff::Timestamp::now().to_string();
        let mut index = redis::cmd("HSET");
        index
            .arg(keys::tenant_keys(&record.tenant))
            .arg(&record.id)
            .arg(sha256_hex);
        let mut key = redis::cmd("HSET");
        key.arg(keys::api_key(sha256_hex))
            .arg("tenant")
            .arg(&record.tenant)
            .arg("id")
            .arg(&record.id)
            .arg("created_at")
            .arg(created_at);
        if self.shared.is_cluster() {
            // The two keys live in different slots, so not in one transaction: the id index
            // first, so a key never exists that its tenant cannot revoke by id.
            let _: () = index.query_async(&mut conn).await.map_err(backend)?;
            let _: () = key.query_async(&mut conn).await.map_err(backend)?;
            return Ok(());
        }
        // The key and its entry in the tenant's id index, together.
        let _: () = redis::pipe()
            .atomic()
            .add_command(key)
            .ignore()
            .add_command(index)
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn delete_key(&self, sha256_hex: &str) -> Result<bool, StoreError> {
        let mut conn = self.shared.control().await?;
        let owner: (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(keys::api_key(sha256_hex))
            .arg("tenant")
            .arg("id")
            .query_async(&mut conn)
            .await
            .map_err(backend)?;
        let mut unindex = None;
        if let (Some(tenant), Some(id)) = owner {
            let mut cmd = redis::cmd("HDEL");
            cmd.arg(keys::tenant_keys(&tenant)).arg(id);
            unindex = Some(cmd);
        }
        let mut delete = redis::cmd("DEL");
        delete.arg(keys::api_key(sha256_hex));
        if self.shared.is_cluster() {
            // Different slots: the key first (revoked from the next call on), then its index.
            let n: i64 = delete.query_async(&mut conn).await.map_err(backend)?;
            if let Some(cmd) = unindex {
                let _: () = cmd.query_async(&mut conn).await.map_err(backend)?;
            }
            return Ok(n > 0);
        }
        let mut pipe = redis::pipe();
        pipe.atomic().add_command(delete);
        if let Some(cmd) = unindex {
            pipe.add_command(cmd).ignore();
        }
        let (n,): (i64,) = pipe.query_async(&mut conn).await.map_err(backend)?;
        Ok(n > 0)
    }

    async fn key_by_id(&self, tenant: &str, id: &str) -> Result<Option<String>, StoreError> {
        let mut conn = self.shared.control().await?;
        redis::cmd("HGET")
            .arg(keys::tenant_keys(tenant))
            .arg(id)
            .query_async(&mut conn)
            .await
            .map_err(backend)
    }

    async fn key_ids(&self, tenant: &str) -> Result<Vec<String>, StoreError> {
        let mut conn = self.shared.control().await?;
        redis::cmd("HKEYS")
            .arg(keys::tenant_keys(tenant))
            .query_async(&mut conn)
            .await
            .map_err(backend)
    }

    async fn set_plan(&self, tenant: &str, plan: Option<&str>) -> Result<(), StoreError> {
        let mut conn = self.shared.control().await?;
        let mut change = match plan {
            Some(_) => redis::cmd("HSET"),
            None => redis::cmd("HDEL"),
        };
        change.arg(keys::tenant(tenant)).arg("plan");
        if let Some(p) = plan {
            change.arg(p);
        }
        let mut announce = redis::cmd("PUBLISH");
        announce.arg(keys::TENANT_CHANGES).arg(tenant);
        if self.shared.is_cluster() {
            // A cluster routes a transaction to one slot's node, and `PUBLISH` has no key:
            // change, then announce (followers re-read the hash, so the order is what counts).
            let _: () = change.query_async(&mut conn).await.map_err(backend)?;
            let _: () = announce.query_async(&mut conn).await.map_err(backend)?;
            return Ok(());
        }
        let _: () = redis::pipe()
            .atomic()
            .add_command(change)
            .ignore()
            .add_command(announce)
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn plan_overrides(&self) -> Result<HashMap<String, String>, StoreError> {
        let mut conn = self.shared.control().await?;
        let names = if self.shared.is_cluster() {
            // SCAN walks one node's keys: walk every primary's.
            let mut names = Vec::new();
            for node in primaries(&mut conn).await? {
                names.extend(scan_tenants(&mut conn, Some(&node)).await?);
            }
            names
        } else {
            scan_tenants(&mut conn, None).await?
        };
        let mut out = HashMap::new();
        for chunk in names.chunks(500) {
            let plans: Vec<Option<String>> = if self.shared.is_cluster() {
                // A pipeline goes to one node; these keys are spread over the cluster.
                let reads = chunk.iter().map(|key| {
                    let mut conn = conn.clone();
                    async move {
                        redis::cmd("HGET")
                            .arg(key)
                            .arg("plan")
                            .query_async::<Option<String>>(&mut conn)
                            .await
                    }
                });
                futures_util::future::try_join_all(reads)
                    .await
                    .map_err(backend)?
            } else {
                let mut pipe = redis::pipe();
                for key in chunk {
                    pipe.cmd("HGET").arg(key).arg("plan");
                }
                pipe.query_async(&mut conn).await.map_err(backend)?
            };
            for (key, plan) in chunk.iter().zip(plans) {
                let tenant = key
                    .strip_prefix("tg:{")
                    .and_then(|k| k.strip_suffix("}:tenant"));
                if let (Some(t), Some(p)) = (tenant, plan) {
                    out.insert(t.to_string(), p);
                }
            }
        }
        Ok(out)
    }

    /// Subscribes to tenant changes, then loads every override (so nothing published between
    /// the load and the subscription is missed), then applies each announced change. When the
    /// subscription drops it starts over after a second, reloading everything, so changes
    /// made while it was down are not lost either.
    fn follows_plans(&self) -> bool {
        true
    }

    async fn follow_plans(&self, overrides: &PlanOverrides, mut shutdown: watch::Receiver<bool>) {
        loop {
            let followed = async {
                let mut pubsub = self.shared.pubsub().await?;
                pubsub.subscribe(keys::TENANT_CHANGES).await?;
                match self.plan_overrides().await {
                    Ok(all) => overrides.replace(all),
                    Err(e) => tracing::warn!(error = %e, "Loading plan overrides failed."),
                }
                overrides.settle();
                let mut messages = pubsub.on_message();
                while let Some(msg) = messages.next().await {
                    let Ok(tenant) = msg.get_payload::<String>() else {
                        continue;
                    };
                    let mut conn = self.shared.control().await.map_err(|e| {
                        redis::RedisError::from((
                            redis::ErrorKind::Io,
                            "no connection",
                            e.to_string(),
                        ))
                    })?;
                    let plan: Option<String> = redis::cmd("HGET")
                        .arg(keys::tenant(&tenant))
                        .arg("plan")
                        .query_async(&mut conn)
                        .await?;
                    tracing::info!(tenant = %tenant, plan = ?plan, "Plan override changed.");
                    overrides.set(&tenant, plan);
                }
                Ok::<(), redis::RedisError>(())
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                result = followed => {
                    // Calls waiting for the first load go on without it.
                    overrides.settle();
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "Following plan changes failed; retrying in 1s.");
                    }
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// `SET key value NX [EX ttl]` and `GET key` in one transaction (any Redis version; `SET
    /// … NX GET` needs 7.0), on the request path's connection: milestone checks run while the
    /// call waits for its answer.
    async fn mark_once(
        &self,
        key: &str,
        value: i64,
        expire_at: Option<i64>,
    ) -> Result<Option<i64>, StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("SET").arg(key).arg(value).arg("NX");
        if let Some(at) = expire_at {
            let ttl = at.saturating_sub(jiff::Timestamp::now().as_second()).max(1);
            pipe.arg("EX").arg(ttl);
        }
        pipe.cmd("GET").arg(key);
        let mut conn = self.shared.conn().await?;
        let (set, now): (Option<String>, Option<String>) =
            pipe.query_async(&mut conn).await.map_err(backend)?;
        Ok(match set {
            Some(_) => None,
            None => Some(now.and_then(|v| v.parse().ok()).unwrap_or(0)),
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.shared.control().await?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(backend)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{evalsha, pack_evalsha, parse_batch, parse_primaries, per_slot, slot, StoreError};
    use crate::store::{BurstCheck, Charge, ReplayMarker, Reservation, Reserved};
    use std::sync::Arc;
    use std::time::Duration;

    /// The reservation connection's own encoding is byte for byte what redis-rs sends for the
    /// same batch: markers and counters, an overage meter (no limit), a limit past `i64::MAX`.
    #[test]
    fn a_packed_reserve_call_is_the_redis_rs_command() {
        let charge = |key: &str, units, limit| Charge {
            key: key.into(),
            units,
            limit,
            expire_at: 1_767_225_600,
        };
        let batch = [
            Reservation {
                charges: vec![charge("tg:{acme}:m:requests:2026-12", 1, Some(1000))],
                replay: None,
                burst: None,
            },
            Reservation {
                charges: vec![
                    charge("tg:{beta}:m:requests:2026-12", 1, Some(u64::MAX)),
                    charge("tg:{beta}:m:tokens:2026-12-05", 4096, None),
                ],
                replay: Some(ReplayMarker {
                    key: "tg:{beta}:idem:9f86d081".into(),
                    expire_at: 1_764_979_200,
                }),
                burst: Some(BurstCheck {
                    key: "tg:{beta}:burst".into(),
                    interval_us: 100_000,
                    size: 20,
                }),
            },
        ];
        let hash = "e0e1f9fabfc9d4800c877a703b823ac0578ff8db";
        let mut packed = b"leading bytes stay".to_vec();
        pack_evalsha(hash, batch.iter(), &mut packed);
        let expected = evalsha(hash, batch.iter()).get_packed_command();
        assert_eq!(
            String::from_utf8_lossy(&packed["leading bytes stay".len()..]),
            String::from_utf8_lossy(&expected)
        );
        assert!(packed.starts_with(b"leading bytes stay*25\r\n$7\r\nEVALSHA\r\n"));
    }

    /// Calls of three tenants, interleaved: each slot's part runs once, in the batch's order,
    /// and every answer goes back to its own call; a slot whose run fails fails only its calls.
    #[tokio::test]
    async fn a_batch_split_by_slot_answers_every_call_in_place() {
        let keys: Vec<String> = ["acme", "gamma", "acme", "delta", "gamma", "acme"]
            .iter()
            .enumerate()
            .map(|(i, t)| format!("tg:{{{t}}}:m:requests:{i}"))
            .collect();
        let runs = std::sync::Mutex::new(Vec::new());
        let answers = per_slot(
            &keys,
            |k| Some(k.as_str()),
            |part: Vec<String>| {
                runs.lock().unwrap().push(part.clone());
                async move {
                    if part[0].contains("{delta}") {
                        return Err(StoreError::Backend("delta's node is down".into()));
                    }
                    Ok(part.into_iter().map(Ok).collect())
                }
            },
        )
        .await
        .unwrap();

        let runs = runs.into_inner().unwrap();
        assert_eq!(runs.len(), 3, "one run per slot: {runs:?}");
        assert!(runs
            .iter()
            .any(|p| p == &[keys[0].clone(), keys[2].clone(), keys[5].clone()]));
        assert!(answers[3].is_err(), "delta's call must fail with its slot");
        for (i, answer) in answers.iter().enumerate() {
            match answer {
                Ok(k) => assert_eq!(k, &keys[i], "call {i} got another call's answer"),
                Err(e) => {
                    assert_eq!(i, 3, "only delta's call fails: {e}");
                    assert!(e.to_string().contains("delta's node is down"), "{e}");
                }
            }
        }
    }

    /// The examples of the Redis Cluster specification, and `CLUSTER KEYSLOT` answers.
    #[test]
    fn slots_follow_the_cluster_specification() {
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"123456789"), 0x31C3, "the CRC16 check value");
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"{user1000}.followers"), slot(b"user1000"));
        assert_ne!(
            slot(b"foo{}{bar}"),
            slot(b"bar"),
            "an empty tag hashes the whole key"
        );
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(slot(b"foo{bar}{zap}"), slot(b"bar"));
        // Every key of a tenant shares the tenant's slot.
        assert_eq!(slot(b"tg:{acme}:m:requests:2026-11-01"), slot(b"acme"));
        assert_eq!(slot(b"tg:{acme}:tenant"), slot(b"tg:{acme}:idem:00ff"));
    }

    #[test]
    fn cluster_nodes_lines_give_the_primaries_that_are_up() {
        let nodes = "\
07c3 127.0.0.1:30004@31004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@31002,node-2.example master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@31003 master - 0 1426238318243 3 connected 10923-16383
6ec2 127.0.0.1:30005@31005 master,fail - 0 1426238316232 5 connected
e7d1 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460
";
        assert_eq!(
            parse_primaries(nodes),
            vec![
                ("127.0.0.1".to_string(), 30002),
                ("127.0.0.1".to_string(), 30003),
                ("127.0.0.1".to_string(), 30001),
            ]
        );
    }

    /// Reservations with `counters` counters each.
    fn calls(counters: &[usize]) -> Vec<Arc<Reservation>> {
        counters
            .iter()
            .map(|&n| {
                Arc::new(Reservation {
                    charges: (0..n)
                        .map(|i| Charge {
                            key: format!("tg:{{t}}:m{i}:2026-12"),
                            units: 1,
                            limit: Some(10),
                            expire_at: 0,
                        })
                        .collect(),
                    replay: None,
                    burst: None,
                })
            })
            .collect()
    }

    /// The answers to `reply` for calls of `counters` counters each, errors as text.
    fn answers(reply: &[u8], counters: &[usize]) -> Option<Vec<Result<Reserved, String>>> {
        let batch = calls(counters);
        let answers = parse_batch(reply, &batch).ok()?;
        Some(
            answers
                .into_iter()
                .map(|a| a.map_err(|e| e.to_string()))
                .collect(),
        )
    }

    #[test]
    fn reserve_replies_split_into_one_answer_per_call() {
        let got = answers(b"200 r 7 d2 3 10 e 0 12 13", &[1, 1, 2, 1, 0, 2])
            .expect("a well-formed reply");
        assert_eq!(got[0], Ok(Reserved::Admitted(vec![200])));
        assert_eq!(got[1], Ok(Reserved::Replayed(vec![7])));
        assert_eq!(
            got[2],
            Ok(Reserved::Denied {
                index: 1,
                used: vec![3, 10]
            })
        );
        assert!(got[3]
            .as_ref()
            .is_err_and(|e| e.contains("not hold an integer")));
        assert_eq!(
            got[4],
            Ok(Reserved::Admitted(vec![])),
            "no counters, no words"
        );
        assert_eq!(got[5], Ok(Reserved::Admitted(vec![12, 13])));
        assert_eq!(got.len(), 6);
        assert_eq!(answers(b"", &[]), Some(vec![]));
        assert_eq!(
            answers(b"9007199254740992", &[1]),
            Some(vec![Ok(Reserved::Admitted(vec![9_007_199_254_740_992]))])
        );
    }

    #[test]
    fn a_burst_limit_adds_the_allowance_left_or_refuses_alone() {
        let mut batch = calls(&[2, 1, 0, 3, 1]);
        for r in &mut batch[..4] {
            if let Some(r) = Arc::get_mut(r) {
                r.burst = Some(BurstCheck {
                    key: "tg:{t}:burst".into(),
                    interval_us: 1000,
                    size: 5,
                });
            }
        }
        let got: Vec<Result<Reserved, String>> =
            parse_batch(b"3 4 2 b250000 1 d1 5 1 0 0 7", &batch)
                .expect("a well-formed reply")
                .into_iter()
                .map(|a| a.map_err(|e| e.to_string()))
                .collect();
        assert_eq!(
            got,
            vec![
                Ok(Reserved::Admitted(vec![3, 4, 2])),
                Ok(Reserved::RateLimited {
                    retry_after: Duration::from_millis(250)
                }),
                Ok(Reserved::Admitted(vec![1])),
                Ok(Reserved::Denied {
                    index: 0,
                    used: vec![5, 1, 0, 0]
                }),
                Ok(Reserved::Admitted(vec![7])),
            ]
        );
        assert!(
            parse_batch(b"3 4", &batch[..1]).is_err(),
            "the allowance left is missing"
        );
    }

    #[test]
    fn malformed_reserve_replies_fail_the_batch() {
        for (reply, counters) in [
            (&b"1e+15"[..], &[1][..]), // exponent form: the script must write integers
            (b"1  2", &[1, 1]),        // an empty word
            (b"1 2 ", &[1, 1]),        // a trailing space
            (b"1", &[1, 1]),           // too few values
            (b"1 2 3", &[1, 1]),       // too many
            (b"d0 1", &[1]),           // counters are numbered from 1
            (b"d2 1", &[1]),           // past the call's counters
            (b"x 1", &[1]),            // an unknown status
        ] {
            assert_eq!(
                answers(reply, counters),
                None,
                "{:?}",
                String::from_utf8_lossy(reply)
            );
        }
    }
}
