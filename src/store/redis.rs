//! The Redis backend: one Lua script per reservation, over one multiplexed connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use tokio::sync::OnceCell;

use super::batch::Batcher;

use super::{keys, Adjustment, KeyRecord, PlanOverrides, Reservation, Reserved, Store, StoreError};

/// How long a reply may take before redis-rs gives up on it.
const LATE_REPLY_WAIT: Duration = Duration::from_secs(30);

/// Counters in Redis, shared by every gateway instance.
///
/// The connection is made on first use, inside the runtime that serves requests: a redis-rs
/// connection's driver task lives on the runtime that created it, and pingora builds its
/// runtimes only when the server starts.
///
/// Reservations do not go to Redis one by one: a batching task collects every reservation that
/// is ready at the same moment and sends them in one script call (see [`Batcher`]). Under load
/// this turns a write, a read, a reply to parse and a script start per call into one of each per
/// batch; each reservation is still decided on its own and all-or-nothing, so batching changes
/// nothing about exactness. (With Redis Cluster a batch would have to be split by slot.)
pub struct RedisStore {
    shared: Arc<Shared>,
    reserves: OnceCell<Batcher<Arc<Reservation>, Reserved>>,
    settles: OnceCell<Batcher<Vec<Adjustment>, ()>>,
}

/// What the batching task and direct calls both use.
struct Shared {
    client: redis::Client,
    config: ConnectionManagerConfig,
    conn: OnceCell<ConnectionManager>,
    control: OnceCell<ConnectionManager>,
    reserve: Script,
    refund: Script,
    lookup: Script,
    settle: Script,
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
        let client = if ca.is_empty() {
            redis::Client::open(url)
        } else {
            // redis-rs takes the roots as PEM only.
            redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(crate::tls::pem(ca)),
                },
            )
        }
        .map_err(|e| StoreError::Backend(e.to_string()))?;
        // Retrying is our caller's business (bounded by `store.timeout`); the manager's defaults
        // would keep a call waiting for seconds while Redis is away. The response timeout is
        // longer than `store.timeout` on purpose: a reservation the caller gave up on keeps
        // waiting for its reply so it can refund itself (see `StoreHandle::reserve`).
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(LATE_REPLY_WAIT.max(timeout)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let shared = Shared {
            client,
            config,
            conn: OnceCell::new(),
            control: OnceCell::new(),
            reserve: Script::new(include_str!("reserve.lua")),
            refund: Script::new(include_str!("refund.lua")),
            lookup: Script::new(include_str!("lookup_key.lua")),
            settle: Script::new(include_str!("settle.lua")),
        };
        Ok(RedisStore {
            shared: Arc::new(shared),
            reserves: OnceCell::new(),
            settles: OnceCell::new(),
        })
    }
}

impl Shared {
    /// The request path's connection: reservations, refunds, settlements, key look-ups.
    async fn conn(&self) -> Result<ConnectionManager, StoreError> {
        let conn = self
            .conn
            .get_or_try_init(|| {
                ConnectionManager::new_with_config(self.client.clone(), self.config.clone())
            })
            .await
            .map_err(backend)?;
        Ok(conn.clone())
    }

    /// A second connection for everything off the request path: health checks, the admin API,
    /// following plan overrides. A connection's driver task lives on the runtime that made it,
    /// so if a background service or the admin listener made the one the request path uses,
    /// every reservation would hop to that runtime's thread and back (measured: the proxy
    /// thread then spends a quarter of its time waking it).
    async fn control(&self) -> Result<ConnectionManager, StoreError> {
        let conn = self
            .control
            .get_or_try_init(|| {
                ConnectionManager::new_with_config(self.client.clone(), self.config.clone())
            })
            .await
            .map_err(backend)?;
        Ok(conn.clone())
    }

    /// Runs a batch of reservations in one script call. Each reservation is still decided on
    /// its own and all-or-nothing (see `reserve.lua`); the batch only shares the round trip and
    /// the script start-up. NOSCRIPT (a restarted Redis, `SCRIPT FLUSH`) means nothing ran, so
    /// the batch is repeated once after loading the script and cannot be charged twice.
    async fn reserve_all(
        &self,
        batch: &[Arc<Reservation>],
    ) -> Result<Vec<Result<Reserved, StoreError>>, StoreError> {
        let cmd = self.evalsha(batch);
        let mut conn = self.conn().await?;
        let reply: Vec<u8> = match cmd.query_async(&mut conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.reserve.load_async(&mut conn).await.map_err(backend)?;
                cmd.query_async(&mut conn).await.map_err(backend)?
            }
            other => other.map_err(backend)?,
        };
        let flat = parse_integers(&reply).ok_or_else(|| {
            StoreError::Backend(format!(
                "unexpected reply from the reserve script: {:?}",
                String::from_utf8_lossy(&reply)
            ))
        })?;
        parse_batch(&flat, batch)
    }

    /// Settles the measured meters of a batch of calls in one script call.
    async fn settle_all(
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

    /// `EVALSHA <reserve> keys… calls (n (units limit expire_at)…)…`, in one buffer.
    fn evalsha(&self, batch: &[Arc<Reservation>]) -> redis::Cmd {
        let keys: usize = batch
            .iter()
            .map(|r| r.charges.len() + usize::from(r.replay.is_some()))
            .sum();
        // Sized once: grown argument by argument, the buffers were reallocated several times
        // per batch. Per charge: key, units, limit, expire-at; per call: count and marker.
        let charges: usize = batch.iter().map(|r| r.charges.len()).sum();
        let key_bytes: usize = batch
            .iter()
            .flat_map(|r| r.charges.iter().map(|c| c.key.len()))
            .chain(
                batch
                    .iter()
                    .filter_map(|r| r.replay.as_ref().map(|m| m.key.len())),
            )
            .sum();
        let args = 4 + keys + 2 * batch.len() + 3 * charges;
        let mut cmd = redis::Cmd::with_capacity(args, 64 + key_bytes + 24 * args);
        cmd.arg("EVALSHA").arg(self.reserve.get_hash()).arg(keys);
        for r in batch {
            if let Some(marker) = &r.replay {
                cmd.arg(&marker.key);
            }
            for c in &r.charges {
                cmd.arg(&c.key);
            }
        }
        cmd.arg(batch.len());
        for r in batch {
            cmd.arg(r.charges.len())
                .arg(r.replay.as_ref().map_or(0, |m| m.expire_at));
            for c in &r.charges {
                cmd.arg(c.units)
                    .arg(c.limit.map_or(-1i64, |l| l.min(i64::MAX as u64) as i64))
                    .arg(c.expire_at);
            }
        }
        cmd
    }
}

/// The reserve script's reply: integers separated by single spaces (empty for no integers).
fn parse_integers(reply: &[u8]) -> Option<Vec<i64>> {
    if reply.is_empty() {
        return Some(Vec::new());
    }
    let mut out = Vec::with_capacity(reply.iter().filter(|b| **b == b' ').count() + 1);
    for word in reply.split(|b| *b == b' ') {
        out.push(std::str::from_utf8(word).ok()?.parse().ok()?);
    }
    Some(out)
}

/// Splits the script's flat reply into one answer per reservation.
fn parse_batch(
    flat: &[i64],
    batch: &[Arc<Reservation>],
) -> Result<Vec<Result<Reserved, StoreError>>, StoreError> {
    let malformed = || {
        StoreError::Backend(format!(
            "unexpected reply from the reserve script: {flat:?}"
        ))
    };
    let mut out = Vec::with_capacity(batch.len());
    let mut rest = flat;
    for r in batch {
        let n = r.charges.len();
        if rest.len() < n + 2 {
            return Err(malformed());
        }
        let (head, tail) = rest.split_at(n + 2);
        rest = tail;
        let used: Vec<u64> = head[2..].iter().map(|v| (*v).max(0) as u64).collect();
        out.push(match (head[0], head[1]) {
            (1, _) => Ok(Reserved::Admitted(used)),
            (2, _) => Ok(Reserved::Replayed(used)),
            (0, i) if i >= 1 && (i as usize) <= n => Ok(Reserved::Denied {
                index: i as usize - 1,
                used,
            }),
            (-1, _) => Err(StoreError::Backend(
                "a usage counter in Redis does not hold an integer; nothing was reserved".into(),
            )),
            _ => return Err(malformed()),
        });
    }
    if !rest.is_empty() {
        return Err(malformed());
    }
    Ok(out)
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
    async fn reserve(&self, reservation: &Arc<Reservation>) -> Result<Reserved, StoreError> {
        let batcher = self
            .batcher(
                &self.reserves,
                |s, b| async move { s.reserve_all(&b).await },
            )
            .await;
        batcher.call(reservation.clone()).await
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

    async fn lookup_key(&self, sha256_hex: &str) -> Result<Option<KeyRecord>, StoreError> {
        let mut conn = self.shared.conn().await?;
        let key = keys::api_key(sha256_hex);
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
        // The key and its entry in the tenant's id index, together.
        let _: () = redis::pipe()
            .atomic()
            .cmd("HSET")
            .arg(keys::api_key(sha256_hex))
            .arg("tenant")
            .arg(&record.tenant)
            .arg("id")
            .arg(&record.id)
            .arg("created_at")
            .arg(created_at)
            .ignore()
            .cmd("HSET")
            .arg(keys::tenant_keys(&record.tenant))
            .arg(&record.id)
            .arg(sha256_hex)
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
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("DEL").arg(keys::api_key(sha256_hex));
        if let (Some(tenant), Some(id)) = owner {
            pipe.cmd("HDEL")
                .arg(keys::tenant_keys(&tenant))
                .arg(id)
                .ignore();
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

    async fn set_plan(&self, tenant: &str, plan: Option<&str>) -> Result<(), StoreError> {
        let mut conn = self.shared.control().await?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        match plan {
            Some(p) => pipe
                .cmd("HSET")
                .arg(keys::tenant(tenant))
                .arg("plan")
                .arg(p),
            None => pipe.cmd("HDEL").arg(keys::tenant(tenant)).arg("plan"),
        };
        pipe.ignore()
            .cmd("PUBLISH")
            .arg(keys::TENANT_CHANGES)
            .arg(tenant)
            .ignore();
        let _: () = pipe.query_async(&mut conn).await.map_err(backend)?;
        Ok(())
    }

    async fn plan_overrides(&self) -> Result<HashMap<String, String>, StoreError> {
        let mut conn = self.shared.control().await?;
        let mut names: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg("tg:{*}:tenant")
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(backend)?;
            names.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let mut out = HashMap::new();
        for chunk in names.chunks(500) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.cmd("HGET").arg(key).arg("plan");
            }
            let plans: Vec<Option<String>> = pipe.query_async(&mut conn).await.map_err(backend)?;
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
    async fn follow_plans(&self, overrides: &PlanOverrides, mut shutdown: watch::Receiver<bool>) {
        loop {
            let followed = async {
                let mut pubsub = self.shared.client.get_async_pubsub().await?;
                pubsub.subscribe(keys::TENANT_CHANGES).await?;
                match self.plan_overrides().await {
                    Ok(all) => overrides.replace(all),
                    Err(e) => tracing::warn!(error = %e, "Loading plan overrides failed."),
                }
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
    use super::parse_integers;

    #[test]
    fn reserve_replies_parse_as_integers() {
        assert_eq!(parse_integers(b""), Some(vec![]));
        assert_eq!(
            parse_integers(b"1 0 200 2 0 7 -1 0 0"),
            Some(vec![1, 0, 200, 2, 0, 7, -1, 0, 0])
        );
        assert_eq!(
            parse_integers(b"0 1 9007199254740992"),
            Some(vec![0, 1, 9_007_199_254_740_992])
        );
        assert_eq!(parse_integers(b"1 0 1e+15"), None);
        assert_eq!(parse_integers(b"1  0"), None);
        assert_eq!(parse_integers(b"1 0 "), None);
    }
}
