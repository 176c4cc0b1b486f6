//! The Redis backend: one Lua script per reservation, over one multiplexed connection.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use tokio::sync::OnceCell;

use super::{Charge, Reserved, Store, StoreError};

/// How long a reply may take before redis-rs gives up on it.
const LATE_REPLY_WAIT: Duration = Duration::from_secs(30);

/// Counters in Redis, shared by every gateway instance.
///
/// The connection is made on first use, inside the runtime that serves requests: a redis-rs
/// connection's driver task lives on the runtime that created it, and pingora builds its
/// runtimes only when the server starts.
pub struct RedisStore {
    client: redis::Client,
    config: ConnectionManagerConfig,
    conn: OnceCell<ConnectionManager>,
    reserve: Script,
    refund: Script,
}

impl RedisStore {
    /// A store for `url`; nothing is connected yet.
    pub fn new(url: &str, timeout: Duration) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url).map_err(|e| StoreError::Backend(e.to_string()))?;
        // Retrying is our caller's business (bounded by `store.timeout`); the manager's defaults
        // would keep a call waiting for seconds while Redis is away. The response timeout is
        // longer than `store.timeout` on purpose: a reservation the caller gave up on keeps
        // waiting for its reply so it can refund itself (see `StoreHandle::reserve`).
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(LATE_REPLY_WAIT.max(timeout)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        Ok(RedisStore {
            client,
            config,
            conn: OnceCell::new(),
            reserve: Script::new(include_str!("reserve.lua")),
            refund: Script::new(include_str!("refund.lua")),
        })
    }

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
}

fn backend(e: redis::RedisError) -> StoreError {
    StoreError::Backend(e.to_string())
}

#[async_trait]
impl Store for RedisStore {
    async fn reserve(&self, charges: &[Charge]) -> Result<Reserved, StoreError> {
        let mut inv = self.reserve.prepare_invoke();
        for c in charges {
            inv.key(&c.key)
                .arg(c.units)
                .arg(c.limit.map_or(-1i64, |l| l.min(i64::MAX as u64) as i64))
                .arg(c.expire_at);
        }
        let mut conn = self.conn().await?;
        let out: Vec<i64> = inv.invoke_async(&mut conn).await.map_err(backend)?;
        parse_reserved(&out, charges.len())
    }

    async fn refund(&self, charges: &[Charge]) -> Result<(), StoreError> {
        if charges.is_empty() {
            return Ok(());
        }
        let mut inv = self.refund.prepare_invoke();
        for c in charges {
            inv.key(&c.key).arg(c.units);
        }
        let mut conn = self.conn().await?;
        let _: i64 = inv.invoke_async(&mut conn).await.map_err(backend)?;
        Ok(())
    }

    async fn get(&self, keys: &[String]) -> Result<Vec<u64>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn().await?;
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

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(backend)?;
        Ok(())
    }
}

fn parse_reserved(out: &[i64], n: usize) -> Result<Reserved, StoreError> {
    let malformed =
        || StoreError::Backend(format!("unexpected reply from the reserve script: {out:?}"));
    if out.len() != n + 2 {
        return Err(malformed());
    }
    let used: Vec<u64> = out[2..].iter().map(|v| (*v).max(0) as u64).collect();
    match out[0] {
        1 => Ok(Reserved::Admitted(used)),
        0 if out[1] >= 1 && (out[1] as usize) <= n => Ok(Reserved::Denied {
            index: out[1] as usize - 1,
            used,
        }),
        _ => Err(malformed()),
    }
}
