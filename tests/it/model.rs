//! Property test: random sequences of reservations (several meters, idempotency keys, several
//! periods), refunds, settlements to measured amounts and replays against a model, on the
//! embedded store and on real Redis. Every answer and every counter must match the model after
//! every step; the model admits a reservation only if each blocking meter stays within its limit.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use proptest::prelude::*;
use tollgate::store::embedded::EmbeddedStore;
use tollgate::store::redis::RedisStore;
use tollgate::store::{Adjustment, Charge, ReplayMarker, Reservation, Reserved, Store};

use crate::common::RedisServer;

/// Meters: (name, limit, blocking).
const METERS: [(&str, u64, bool); 3] = [("a", 5, true), ("b", 3, true), ("c", 4, false)];

#[derive(Debug, Clone)]
enum Op {
    Reserve {
        tenant: u8,
        period: u8,
        units: [u8; 3],
        replay: Option<u8>,
    },
    Refund {
        pick: usize,
    },
    Settle {
        pick: usize,
        measured: [u8; 3],
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..2, 0u8..2, [0u8..3, 0u8..3, 0u8..3], proptest::option::of(0u8..3))
            .prop_map(|(tenant, period, units, replay)| Op::Reserve { tenant, period, units, replay }),
        1 => (0usize..64).prop_map(|pick| Op::Refund { pick }),
        1 => (0usize..64, [0u8..7, 0u8..7, 0u8..7]).prop_map(|(pick, measured)| Op::Settle { pick, measured }),
    ]
}

fn reservation(
    tenant: u8,
    period: u8,
    units: [u8; 3],
    replay: Option<u8>,
    expire_at: i64,
) -> Reservation {
    let charges = METERS
        .iter()
        .zip(units)
        .filter(|(_, u)| *u > 0)
        .map(|((name, limit, blocking), u)| Charge {
            key: format!("tg:{{t{tenant}}}:m:{name}:p{period}"),
            units: u64::from(u),
            limit: blocking.then_some(*limit),
            expire_at,
        })
        .collect();
    let replay = replay.map(|r| ReplayMarker {
        key: format!("tg:{{t{tenant}}}:idem:k{r}"),
        expire_at,
    });
    Reservation {
        charges,
        replay,
        burst: None,
    }
}

/// Runs `ops` on `store` and on the model; panics on the first difference.
async fn check(store: Arc<dyn Store>, ops: &[Op]) {
    let expire_at = jiff::Timestamp::now().as_second() + 3600;
    let mut model: HashMap<String, u64> = HashMap::new();
    let mut markers: HashSet<String> = HashSet::new();
    let mut admitted: Vec<Reservation> = Vec::new();
    for op in ops {
        match op {
            Op::Reserve {
                tenant,
                period,
                units,
                replay,
            } => {
                let r = reservation(*tenant, *period, *units, *replay, expire_at);
                if r.charges.is_empty() {
                    continue;
                }
                let used: Vec<u64> = r
                    .charges
                    .iter()
                    .map(|c| model.get(&c.key).copied().unwrap_or(0))
                    .collect();
                let expected = if r.replay.as_ref().is_some_and(|m| markers.contains(&m.key)) {
                    Reserved::Replayed(used)
                } else if let Some(i) = r
                    .charges
                    .iter()
                    .zip(&used)
                    .position(|(c, u)| c.limit.is_some_and(|l| u + c.units > l))
                {
                    Reserved::Denied { index: i, used }
                } else {
                    Reserved::Admitted(
                        r.charges
                            .iter()
                            .zip(&used)
                            .map(|(c, u)| u + c.units)
                            .collect(),
                    )
                };
                let got = store.clone().reserve(Arc::new(r.clone())).await.unwrap();
                assert_eq!(got, expected, "after {op:?}");
                if let Reserved::Admitted(after) = got {
                    for (c, v) in r.charges.iter().zip(after) {
                        model.insert(c.key.clone(), v);
                        assert!(
                            c.limit.is_none_or(|l| v <= l),
                            "a blocking meter passed its limit"
                        );
                    }
                    if let Some(m) = &r.replay {
                        markers.insert(m.key.clone());
                    }
                    admitted.push(r);
                }
            }
            Op::Settle { pick, measured } => {
                if admitted.is_empty() {
                    continue;
                }
                // A settled reservation is final: the gateway refunds only before settling.
                let r = admitted.remove(pick % admitted.len());
                let adjustments: Vec<Adjustment> = r
                    .charges
                    .iter()
                    .zip(measured)
                    .map(|(c, m)| Adjustment {
                        key: c.key.clone(),
                        delta: i64::from(*m) - c.units as i64,
                    })
                    .collect();
                store.settle(&adjustments).await.unwrap();
                for a in &adjustments {
                    let v = model.entry(a.key.clone()).or_insert(0);
                    *v = (*v as i64 + a.delta).max(0) as u64;
                }
            }
            Op::Refund { pick } => {
                if admitted.is_empty() {
                    continue;
                }
                let r = admitted.remove(pick % admitted.len());
                store.refund(&r).await.unwrap();
                for c in &r.charges {
                    let v = model.entry(c.key.clone()).or_insert(0);
                    *v = v.saturating_sub(c.units);
                }
                if let Some(m) = &r.replay {
                    markers.remove(&m.key);
                }
            }
        }
        let keys: Vec<String> = model.keys().cloned().collect();
        let values = store.get(&keys).await.unwrap();
        for (k, v) in keys.iter().zip(values) {
            assert_eq!(v, model[k], "counter {k} after {op:?}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn embedded_store_matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(&dir.path().join("u.db")).unwrap());
        rt.block_on(check(store, &ops));
    }
}

#[test]
fn redis_store_matches_the_model() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let redis = rt.block_on(RedisServer::start());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    });
    let result = runner.run(&proptest::collection::vec(op(), 1..40), |ops| {
        rt.block_on(async {
            redis.command(&["FLUSHALL"]).await;
            let store =
                RedisStore::new(&redis.url(), &[], std::time::Duration::from_secs(2)).unwrap();
            check(Arc::new(store), &ops).await;
        });
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Every key of the Redis, with its value and whether it expires.
async fn snapshot(redis: &RedisServer) -> Vec<(String, Option<String>, bool)> {
    let mut conn = redis.conn().await;
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.sort();
    let mut out = Vec::new();
    for key in keys {
        let value: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let ttl: i64 = redis::cmd("TTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        out.push((key, value, ttl > 0));
    }
    out
}

/// The script increments first and checks after; a refused call must still leave Redis exactly
/// as it found it: counters it incremented are restored, and one it created is removed again
/// (not left behind at 0).
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_reservation_leaves_redis_exactly_as_it_was() {
    let redis = RedisServer::start().await;
    let store =
        Arc::new(RedisStore::new(&redis.url(), &[], std::time::Duration::from_secs(2)).unwrap());
    let expire_at = jiff::Timestamp::now().as_second() + 3600;
    let charge = |name: &str, units: u64, limit: Option<u64>| Charge {
        key: format!("tg:{{t}}:m:{name}"),
        units,
        limit,
        expire_at,
    };
    // `full` is at its limit; `fresh` does not exist yet; `kept` has some usage.
    let admitted = Reservation {
        charges: vec![charge("full", 3, Some(3)), charge("kept", 2, Some(10))],
        replay: None,
        burst: None,
    };
    let got = store.clone().reserve(Arc::new(admitted)).await.unwrap();
    assert_eq!(got, Reserved::Admitted(vec![3, 2]));
    let before = snapshot(&redis).await;

    for charges in [
        // Created, then refused on the second counter.
        vec![charge("fresh", 1, Some(5)), charge("full", 1, Some(3))],
        // Incremented, created, then refused on the third; a non-blocking one after is read.
        vec![
            charge("kept", 1, Some(10)),
            charge("fresh", 4, None),
            charge("full", 1, Some(3)),
            charge("other", 1, None),
        ],
        // Refused on its own first counter: the units alone exceed the limit.
        vec![charge("fresh", 6, Some(5))],
    ] {
        let n = charges.len();
        let r = Reservation {
            charges,
            replay: Some(ReplayMarker {
                key: "tg:{t}:idem:x".into(),
                expire_at,
            }),
            burst: None,
        };
        let got = store.clone().reserve(Arc::new(r)).await.unwrap();
        let Reserved::Denied { used, .. } = got else {
            panic!("expected a refusal, got {got:?}");
        };
        assert_eq!(used.len(), n);
        assert_eq!(
            snapshot(&redis).await,
            before,
            "Redis changed after {used:?}"
        );
    }
}
