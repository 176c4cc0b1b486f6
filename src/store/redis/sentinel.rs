//! Finding the primary through Redis Sentinel (`store.kind: redis-sentinel`).
//!
//! A self-hosted Redis kept available by Sentinel has no name that follows the primary: the
//! Sentinels watch the servers, promote a replica when the primary fails, and tell clients
//! where the primary is now (`SENTINEL get-master-addr-by-name`). So every connection the
//! store makes to the primary (the reservation connection, the request path's and the admin
//! API's, the subscription to plan changes) asks the Sentinels first, in turn, and connects
//! where the first that answers says. It asks again each time it connects, never from a cache:
//! a connection is made again exactly when the last one failed or found a replica, which is
//! when a remembered address is likely wrong.
//!
//! When does a connection give up its server: the reservation connection on any failure (as
//! for `kind: redis`), the others on a `READONLY` reply (the old primary, demoted, keeps the
//! connections made before and refuses writes) and on a lost or refused connection or a reply
//! that never came (a primary that died: redis-rs would otherwise keep reconnecting to its
//! address). Sentinel answers with the promoted replica's address as soon as it is a primary,
//! before the other servers are told, so a gateway that asks then is not sent back to the old
//! one.
//!
//! The Sentinel that answered is asked first next time (the order the Sentinel client
//! guidelines recommend); one that cannot be reached within the store's timeout is skipped.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::StoreError;

/// The Sentinels of one monitored primary, and how to reach the primary once found.
pub(crate) struct Sentinel {
    /// The name the Sentinels monitor the primary under.
    name: String,
    /// The Sentinels, as written in `sentinels`.
    nodes: Vec<(String, redis::Client)>,
    /// The certificates trusted for TLS (`ca_file`), instead of the public roots; empty: the
    /// roots.
    ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// The primary's connection settings (password, database) from `store.url`; its address
    /// is replaced by the one the Sentinels give.
    primary: redis::ConnectionInfo,
    /// Bounds asking one Sentinel.
    timeout: Duration,
    /// The Sentinel that answered last.
    first: AtomicUsize,
    /// The primary's address when last asked, to log a move once.
    last: Mutex<Option<(String, u16)>>,
    /// How many times the primary was found somewhere else than the time before.
    moves: AtomicU64,
}

impl Sentinel {
    /// The Sentinels at `sentinels` (`redis://HOST:PORT`, with the Sentinels' own password if
    /// they have one) of the primary `url` names: `redis://[:PASSWORD@]NAME[/DB]`, its host
    /// being the monitored name.
    pub(crate) fn new(
        url: &str,
        sentinels: &[String],
        ca: &[rustls::pki_types::CertificateDer<'static>],
        timeout: Duration,
    ) -> Result<Sentinel, StoreError> {
        let primary = redis::IntoConnectionInfo::into_connection_info(url)
            .map_err(|e| StoreError::Backend(format!("url: {e}")))?;
        let name = match primary.addr() {
            redis::ConnectionAddr::Tcp(host, _) | redis::ConnectionAddr::TcpTls { host, .. } => {
                host.clone()
            }
            _ => {
                return Err(StoreError::Backend(
                    "url: the primary's name is a redis:// or rediss:// URL's host".into(),
                ))
            }
        };
        let nodes = sentinels
            .iter()
            .map(|u| {
                super::client_trusting(u.as_str(), ca)
                    .map(|c| (u.clone(), c))
                    .map_err(|e| StoreError::Backend(format!("sentinels: {u}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if nodes.is_empty() {
            return Err(StoreError::Backend("store.urls: no Sentinel".into()));
        }
        Ok(Sentinel {
            name,
            nodes,
            primary,
            timeout,
            ca: ca.to_vec(),
            first: AtomicUsize::new(0),
            last: Mutex::new(None),
            moves: AtomicU64::new(0),
        })
    }

    /// The connection settings of the primary now: its address as the first Sentinel that
    /// answers gives it, with `store.url`'s password and database.
    pub(crate) async fn primary(&self) -> Result<redis::ConnectionInfo, StoreError> {
        let (host, port) = self.locate().await?;
        let addr = match self.primary.addr() {
            // Its certificate is checked against the address the Sentinels give.
            redis::ConnectionAddr::TcpTls { .. } => redis::ConnectionAddr::TcpTls {
                host,
                port,
                insecure: false,
                tls_params: None,
            },
            _ => redis::ConnectionAddr::Tcp(host, port),
        };
        Ok(self.primary.clone().set_addr(addr))
    }

    /// How many times a connection found the primary moved. A connection made before the
    /// last move goes to the old primary (dead, or a replica now): one connection learning of
    /// the move is enough for every other to be made again at its next use, before it sends
    /// anything there (a refund after the reservation connection found the new primary, say).
    pub(crate) fn moves(&self) -> u64 {
        self.moves.load(Ordering::Relaxed)
    }

    /// A redis-rs client for the primary now (nothing connected yet).
    pub(crate) async fn client(&self) -> Result<redis::Client, StoreError> {
        super::client_trusting(self.primary().await?, &self.ca)
            .map_err(|e| StoreError::Backend(e.to_string()))
    }

    /// The primary's address now: asks the Sentinels in turn, starting with the one that
    /// answered last.
    pub(crate) async fn locate(&self) -> Result<(String, u16), StoreError> {
        let n = self.nodes.len();
        let start = self.first.load(Ordering::Relaxed) % n;
        let mut errors = Vec::new();
        for k in 0..n {
            let i = (start + k) % n;
            let (url, client) = &self.nodes[i];
            match self.ask(client).await {
                Ok(addr) => {
                    self.first.store(i, Ordering::Relaxed);
                    self.note(&addr, url);
                    return Ok(addr);
                }
                Err(e) => errors.push(format!("{}: {e}", without_password(url))),
            }
        }
        Err(StoreError::Backend(format!(
            "no Sentinel named a primary for \"{}\" ({})",
            self.name,
            errors.join("; ")
        )))
    }

    /// One Sentinel's answer.
    async fn ask(&self, client: &redis::Client) -> Result<(String, u16), String> {
        let ask = async {
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| e.to_string())?;
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&self.name)
                .query_async::<Option<(String, u16)>>(&mut conn)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("it monitors no primary named \"{}\"", self.name))
        };
        match tokio::time::timeout(self.timeout, ask).await {
            Ok(answer) => answer,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    /// Logs the primary's address when it is not the one found last time.
    fn note(&self, addr: &(String, u16), sentinel: &str) {
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        if last.as_ref() == Some(addr) {
            return;
        }
        let to = format!("{}:{}", addr.0, addr.1);
        let was = last.replace(addr.clone());
        if was.is_some() {
            self.moves.fetch_add(1, Ordering::Relaxed);
        }
        match was {
            None => {
                tracing::info!(primary = %self.name, address = %to, sentinel = %without_password(sentinel), "Redis Sentinel named the primary.")
            }
            Some((h, p)) => {
                tracing::warn!(primary = %self.name, from = %format!("{h}:{p}"), to = %to, sentinel = %without_password(sentinel), "Redis Sentinel names a new primary (a failover); connecting there.")
            }
        }
    }
}

/// `url` without its password, for logs and errors.
fn without_password(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://{}", &url[at + 1..]),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_primary_url_names_the_monitored_primary_and_keeps_its_settings() {
        let s = Sentinel::new(
            "redis://:secret@mymaster/2",
            &["redis://10.0.0.5:26379".to_string()],
            &[],
            Duration::from_millis(50),
        )
        .unwrap();
        assert_eq!(s.name, "mymaster");
        let info = s
            .primary
            .clone()
            .set_addr(redis::ConnectionAddr::Tcp("10.0.0.9".into(), 6380));
        assert_eq!(info.redis_settings().password(), Some("secret"));
        assert_eq!(info.redis_settings().db(), 2);
        assert_eq!(
            info.addr(),
            &redis::ConnectionAddr::Tcp("10.0.0.9".into(), 6380)
        );
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            without_password("redis://:hunter2@10.0.0.5:26379"),
            "redis://10.0.0.5:26379"
        );
        assert_eq!(
            without_password("redis://10.0.0.5:26379"),
            "redis://10.0.0.5:26379"
        );
    }

    #[tokio::test]
    async fn no_sentinel_answering_is_a_store_error_naming_each() {
        // Port 1 on loopback: refused at once.
        let s = Sentinel::new(
            "redis://mymaster",
            &["redis://:pw@127.0.0.1:1".to_string()],
            &[],
            Duration::from_millis(500),
        )
        .unwrap();
        let Err(StoreError::Backend(e)) = s.primary().await else {
            panic!("a primary was found");
        };
        assert!(
            e.contains("no Sentinel named a primary for \"mymaster\""),
            "{e}"
        );
        assert!(e.contains("redis://127.0.0.1:1:"), "{e}");
        assert!(!e.contains("pw"), "{e}");
    }
}
