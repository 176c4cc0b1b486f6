//! The embedded backend: counters in memory, every change appended to one local file.
//!
//! Meant for a single instance (quickstart, demos, small deployments): the file is locked, so a
//! second gateway on the same file refuses to start. Each change is written to the file (one
//! `write` per call, no fsync) before the call is answered, so counts survive a crash or restart
//! of the process; a power loss can lose what the OS had not yet written back. The log is
//! compacted on start and whenever it grows well past the live data.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use super::{Adjustment, KeyRecord, Reservation, Reserved, Store, StoreError};

/// Counters in one local file.
pub struct EmbeddedStore {
    state: Mutex<State>,
    /// Held for the life of the store: one instance per file.
    _lock: File,
}

struct State {
    path: PathBuf,
    log: File,
    counters: HashMap<String, Entry>,
    /// Lines appended since the last compaction.
    appended: usize,
}

#[derive(Clone, Copy)]
struct Entry {
    value: u64,
    expire_at: i64,
}

impl EmbeddedStore {
    /// Opens (or creates) the store at `path`, replaying and compacting its log.
    pub fn open(path: &Path) -> Result<EmbeddedStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let lock_path = path.with_extension("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)?;
        if lock.try_lock().is_err() {
            return Err(StoreError::Backend(format!(
                "{} is in use by another tollgate; the embedded store serves one instance (use kind: redis to share counters)",
                path.display()
            )));
        }
        let mut counters = HashMap::new();
        if path.exists() {
            for line in BufReader::new(File::open(path)?).lines() {
                // A torn last line (crash mid-write) is skipped: each line is self-contained.
                if let Some((key, entry)) = parse_line(&line?) {
                    counters.insert(key, entry);
                }
            }
        }
        let now = unix_now();
        counters.retain(|_, e: &mut Entry| e.expire_at > now);
        let log = compact(path, &counters)?;
        Ok(EmbeddedStore {
            state: Mutex::new(State {
                path: path.to_path_buf(),
                log,
                counters,
                appended: 0,
            }),
            _lock: lock,
        })
    }

    fn with_state<T>(
        &self,
        f: impl FnOnce(&mut State) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| StoreError::Backend("store state poisoned".into()))?;
        f(&mut state)
    }
}

impl State {
    fn value(&self, key: &str, now: i64) -> u64 {
        self.counters
            .get(key)
            .filter(|e| e.expire_at > now)
            .map_or(0, |e| e.value)
    }

    /// Sets counters and appends them to the log in one write.
    fn write(&mut self, updates: &[(&str, Entry)]) -> Result<(), StoreError> {
        let mut buf = String::new();
        for (key, e) in updates {
            buf.push_str(&format!("{key} {} {}\n", e.value, e.expire_at));
        }
        self.log.write_all(buf.as_bytes())?;
        for (key, e) in updates {
            self.counters.insert((*key).to_string(), *e);
        }
        self.appended += updates.len();
        if self.appended > 10_000 && self.appended > 4 * self.counters.len() {
            let now = unix_now();
            self.counters.retain(|_, e| e.expire_at > now);
            self.log = compact(&self.path, &self.counters)?;
            self.appended = 0;
        }
        Ok(())
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    /// A reservation's [`BurstCheck`](super::BurstCheck) is not looked at: the gateway never
    /// sends one here, since with one instance its own burst limiter is the shared one.
    async fn reserve(
        self: Arc<Self>,
        reservation: Arc<Reservation>,
    ) -> Result<Reserved, StoreError> {
        let now = unix_now();
        let charges = &reservation.charges;
        self.with_state(|s| {
            let used: Vec<u64> = charges.iter().map(|c| s.value(&c.key, now)).collect();
            if let Some(marker) = &reservation.replay {
                if s.value(&marker.key, now) > 0 {
                    return Ok(Reserved::Replayed(used));
                }
            }
            for (i, c) in charges.iter().enumerate() {
                if c.limit.is_some_and(|l| used[i].saturating_add(c.units) > l) {
                    return Ok(Reserved::Denied { index: i, used });
                }
            }
            let after: Vec<u64> = charges
                .iter()
                .zip(&used)
                .map(|(c, u)| u.saturating_add(c.units))
                .collect();
            let mut updates: Vec<(&str, Entry)> = charges
                .iter()
                .zip(&after)
                .map(|(c, v)| {
                    (
                        c.key.as_str(),
                        Entry {
                            value: *v,
                            expire_at: c.expire_at,
                        },
                    )
                })
                .collect();
            if let Some(marker) = &reservation.replay {
                updates.push((
                    marker.key.as_str(),
                    Entry {
                        value: 1,
                        expire_at: marker.expire_at,
                    },
                ));
            }
            s.write(&updates)?;
            Ok(Reserved::Admitted(after))
        })
    }

    async fn refund(&self, reservation: &Reservation) -> Result<(), StoreError> {
        let now = unix_now();
        self.with_state(|s| {
            let mut updates: Vec<(&str, Entry)> = reservation
                .charges
                .iter()
                .filter_map(|c| {
                    let e = s.counters.get(&c.key).filter(|e| e.expire_at > now)?;
                    Some((
                        c.key.as_str(),
                        Entry {
                            value: e.value.saturating_sub(c.units),
                            expire_at: e.expire_at,
                        },
                    ))
                })
                .collect();
            if let Some(marker) = &reservation.replay {
                // Expired at once: the marker is gone.
                updates.push((
                    marker.key.as_str(),
                    Entry {
                        value: 0,
                        expire_at: 0,
                    },
                ));
            }
            s.write(&updates)
        })
    }

    async fn settle(&self, adjustments: &[Adjustment]) -> Result<(), StoreError> {
        let now = unix_now();
        self.with_state(|s| {
            let updates: Vec<(&str, Entry)> = adjustments
                .iter()
                .filter_map(|a| {
                    let e = s.counters.get(&a.key).filter(|e| e.expire_at > now)?;
                    let value = (e.value as i64).saturating_add(a.delta).max(0) as u64;
                    Some((
                        a.key.as_str(),
                        Entry {
                            value,
                            expire_at: e.expire_at,
                        },
                    ))
                })
                .collect();
            s.write(&updates)
        })
    }

    async fn adjust(
        &self,
        key: &str,
        delta: i64,
        expire_at: i64,
    ) -> Result<(i64, u64), StoreError> {
        let now = unix_now();
        self.with_state(|s| {
            let before = s.value(key, now);
            if before == 0 && delta <= 0 {
                return Ok((0, 0));
            }
            let value = (before as i64).saturating_add(delta).max(0) as u64;
            s.write(&[(key, Entry { value, expire_at })])?;
            Ok((value as i64 - before as i64, value))
        })
    }

    async fn get(&self, keys: &[String]) -> Result<Vec<u64>, StoreError> {
        let now = unix_now();
        self.with_state(|s| Ok(keys.iter().map(|k| s.value(k, now)).collect()))
    }

    async fn mark_once(
        &self,
        key: &str,
        value: i64,
        expire_at: Option<i64>,
    ) -> Result<Option<i64>, StoreError> {
        let now = unix_now();
        self.with_state(|s| {
            if let Some(e) = s.counters.get(key).filter(|e| e.expire_at > now) {
                return Ok(Some(e.value as i64));
            }
            let entry = Entry {
                value: value.max(1) as u64,
                expire_at: expire_at.unwrap_or(i64::MAX),
            };
            s.write(&[(key, entry)])?;
            Ok(None)
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.with_state(|_| Ok(()))
    }

    /// Runtime keys need a shared store; the embedded one knows only the config's keys.
    async fn lookup_key(&self, _sha256_hex: &str) -> Result<Option<KeyRecord>, StoreError> {
        Ok(None)
    }

    async fn put_key(&self, _sha256_hex: &str, _record: &KeyRecord) -> Result<(), StoreError> {
        Err(StoreError::Backend(RUNTIME_KEYS.into()))
    }

    async fn delete_key(&self, _sha256_hex: &str) -> Result<bool, StoreError> {
        Err(StoreError::Backend(RUNTIME_KEYS.into()))
    }

    async fn key_by_id(&self, _tenant: &str, _id: &str) -> Result<Option<String>, StoreError> {
        Ok(None)
    }

    async fn key_ids(&self, _tenant: &str) -> Result<Vec<String>, StoreError> {
        // Runtime keys need a shared store; this one keeps none.
        Ok(Vec::new())
    }

    async fn set_plan(&self, _tenant: &str, _plan: Option<&str>) -> Result<(), StoreError> {
        Err(StoreError::Backend(
            "the embedded store keeps no plan overrides; change the plan in the config and reload, or use store kind redis".into(),
        ))
    }

    async fn plan_overrides(&self) -> Result<HashMap<String, String>, StoreError> {
        Ok(HashMap::new())
    }
}

const RUNTIME_KEYS: &str =
    "the embedded store keeps no runtime API keys; put the key in the config, or use store kind redis";

fn parse_line(line: &str) -> Option<(String, Entry)> {
    let mut parts = line.rsplitn(3, ' ');
    let expire_at = parts.next()?.parse().ok()?;
    let value = parts.next()?.parse().ok()?;
    let key = parts.next()?;
    Some((key.to_string(), Entry { value, expire_at }))
}

/// Rewrites the log to hold only `counters`, atomically (write a temporary file, then rename).
fn compact(path: &Path, counters: &HashMap<String, Entry>) -> Result<File, StoreError> {
    let tmp = path.with_extension("compact");
    {
        let mut f = File::create(&tmp)?;
        let mut buf = String::new();
        for (k, e) in counters {
            buf.push_str(&format!("{k} {} {}\n", e.value, e.expire_at));
        }
        f.write_all(buf.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(OpenOptions::new().append(true).open(path)?)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Charge;

    fn charge(key: &str, units: u64, limit: Option<u64>) -> Charge {
        Charge {
            key: key.into(),
            units,
            limit,
            expire_at: unix_now() + 3600,
        }
    }

    #[tokio::test]
    async fn reserve_is_all_or_nothing_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.db");
        {
            let s = Arc::new(EmbeddedStore::open(&path).unwrap());
            let both = Arc::new(Reservation {
                charges: vec![charge("a", 1, Some(2)), charge("b", 5, Some(5))],
                replay: None,
                burst: None,
            });
            assert_eq!(
                s.clone().reserve(both.clone()).await.unwrap(),
                Reserved::Admitted(vec![1, 5])
            );
            assert_eq!(
                s.clone().reserve(both.clone()).await.unwrap(),
                Reserved::Denied {
                    index: 1,
                    used: vec![1, 5]
                }
            );
            s.refund(&Reservation {
                charges: vec![charge("b", 2, None)],
                replay: None,
                burst: None,
            })
            .await
            .unwrap();
            assert!(
                EmbeddedStore::open(&path).is_err(),
                "a second instance must be refused"
            );
        }
        let s = EmbeddedStore::open(&path).unwrap();
        assert_eq!(
            s.get(&["a".into(), "b".into(), "c".into()]).await.unwrap(),
            vec![1, 3, 0]
        );
    }

    #[tokio::test]
    async fn mark_once_sets_a_key_once_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.db");
        {
            let s = EmbeddedStore::open(&path).unwrap();
            assert_eq!(s.mark_once("ms", 7, None).await.unwrap(), None);
            assert_eq!(s.mark_once("ms", 8, None).await.unwrap(), Some(7));
            let past = Some(unix_now() - 1);
            assert_eq!(s.mark_once("gone", 1, past).await.unwrap(), None);
            assert_eq!(
                s.mark_once("gone", 1, past).await.unwrap(),
                None,
                "an expired mark is absent"
            );
        }
        let s = EmbeddedStore::open(&path).unwrap();
        assert_eq!(s.mark_once("ms", 9, None).await.unwrap(), Some(7));
    }

    #[tokio::test]
    async fn refund_never_goes_negative_nor_recreates() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(EmbeddedStore::open(&dir.path().join("u.db")).unwrap());
        let one = |c| Reservation {
            charges: vec![c],
            replay: None,
            burst: None,
        };
        s.clone()
            .reserve(Arc::new(one(charge("a", 1, None))))
            .await
            .unwrap();
        let two = Reservation {
            charges: vec![charge("a", 5, None), charge("gone", 1, None)],
            replay: None,
            burst: None,
        };
        s.refund(&two).await.unwrap();
        assert_eq!(
            s.get(&["a".into(), "gone".into()]).await.unwrap(),
            vec![0, 0]
        );
    }

    #[tokio::test]
    async fn a_replay_is_charged_once_and_a_refund_drops_the_marker() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(EmbeddedStore::open(&dir.path().join("u.db")).unwrap());
        let marker = crate::store::ReplayMarker {
            key: "idem".into(),
            expire_at: unix_now() + 60,
        };
        let r = Arc::new(Reservation {
            charges: vec![charge("a", 1, Some(5))],
            replay: Some(marker),
            burst: None,
        });
        assert_eq!(
            s.clone().reserve(r.clone()).await.unwrap(),
            Reserved::Admitted(vec![1])
        );
        assert_eq!(
            s.clone().reserve(r.clone()).await.unwrap(),
            Reserved::Replayed(vec![1])
        );
        s.refund(&r).await.unwrap();
        assert_eq!(
            s.clone().reserve(r.clone()).await.unwrap(),
            Reserved::Admitted(vec![1]),
            "refunded, then charged again"
        );
    }
}
