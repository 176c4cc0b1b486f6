//! How many usage events per second get through the spool to a sink on this machine?
//!
//! Each iteration moves one batch of 512 realistic events (about 450 bytes of JSON each): the
//! spool writer appends and fsyncs it, the sink's reader reads it back, the sink delivers it,
//! and the sink's position is saved (one write in place). Throughput is in events.
//!
//! - `encode_event`: the request path's share: one usage event encoded (UUIDv7, time, JSON) and
//!   written into the queue's buffer (drained by the bench, as the spool writer would).
//! - `spool_append`: the writer alone (append + fsync), with the reader acknowledging so the
//!   spool stays small: the ceiling of what the gateway can accept durably.
//! - `spool_5_writes_5_fsyncs` against `spool_5_writes_1_fsync`: the same 510 events written
//!   as five batches of 102 (what 20 ms of calls make at 5,000 a second), each fsynced (before
//!   `telemetry.sync_interval`) or all five by one fsync (with it, the default).
//! - `file_direct`: baseline, no spool: the file sink writing and fsyncing the batch.
//! - `spool_to_file`: the whole path to the file sink.
//! - `spool_to_redis_stream`: the whole path to a private `redis-server` (unix socket), one
//!   pipelined `XADD … MAXLEN ~` per event.
//!
//! Group `encode`: one typical usage event encoded alone, by the hand-written encoder the request
//! path uses (`hand_written`) and by the serde encoder it replaced (`serde_reference`).

#![allow(clippy::expect_used, clippy::unwrap_used)] // a bench may panic: that is how it reports a broken set-up

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tollgate::config::OnFull;
use tollgate::config::Tenant;
use tollgate::pipeline::identity::{Caller, IdentityKind};
use tollgate::telemetry::emit::Emitter;
use tollgate::telemetry::event::CallEvent;
use tollgate::telemetry::metrics::Metrics;
use tollgate::telemetry::queue::EventQueue;
use tollgate::telemetry::sinks::file::FileSink;
use tollgate::telemetry::sinks::redis_stream::RedisStreamSink;
use tollgate::telemetry::sinks::Sink;
use tollgate::telemetry::spool::{Frames, Limits, Reader, Spool};

const BATCH: usize = 512;

fn events() -> Vec<Bytes> {
    (0..BATCH)
        .map(|i| {
            Bytes::from(format!(
                r#"{{"specversion":"1.0","id":"019ac0de-0000-7000-8000-{i:012}","source":"tollgate/bench","type":"dev.tollgate.request","subject":"acme","time":"2026-11-26T12:00:00.123Z","datacontenttype":"application/json","data":{{"tenant":"acme","identity":"api_key","key_id":"acme-ci","user":null,"anonymous_id":null,"plan":"free","route":"api","method":"GET","path":"/v1/search/{i}","status":200,"outcome":"allowed","meters":{{"requests":1}},"period":"2026-11","latency_ms":3.2}}}}"#
            ))
        })
        .collect()
}

fn spool(dir: &std::path::Path) -> Arc<Spool> {
    let metrics = Arc::new(Metrics::unregistered().unwrap());
    let limits = Limits::new(1 << 30, OnFull::DropNewest);
    Spool::open(dir, &["sink".to_string()], limits, metrics).unwrap()
}

/// A private redis-server on a unix socket, killed on drop.
struct Redis(Child, tempfile::TempDir);

impl Redis {
    fn start() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("redis.sock");
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--unixsocket",
            ])
            .arg(&socket)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed for this bench");
        for _ in 0..100 {
            if socket.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis(child, dir)
    }

    fn url(&self) -> String {
        format!(
            "redis+unix://{}",
            self.1.path().join("redis.sock").display()
        )
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Append, read back, deliver, acknowledge: one batch through the whole path.
fn through(
    rt: &tokio::runtime::Runtime,
    spool: &Arc<Spool>,
    reader: &mut Reader,
    sink: &mut dyn Sink,
    batch: &[Bytes],
) {
    spool.append(batch).unwrap();
    let read = reader.next_batch(BATCH).unwrap();
    assert_eq!(read.events.len(), BATCH);
    rt.block_on(sink.deliver(&read.events)).unwrap();
    spool.ack("sink", read.end).unwrap();
}

/// The caller of the benches' events: an API key of tenant `acme`.
fn acme() -> Caller {
    Caller {
        tenant: Arc::new(Tenant::new("acme".into(), "free".into(), None, Vec::new())),
        identity: IdentityKind::ApiKey,
        key_id: Some("acme-ci".into()),
        user: None,
        client_anonymous_id: None,
    }
}

fn encode(c: &mut Criterion) {
    let caller = acme();
    let event = CallEvent {
        id: None,
        source: "tollgate/bench",
        time: "2026-11-26T12:00:00.123456Z".parse().unwrap(),
        caller: Some(&caller),
        plan: Some("free"),
        route: Some("api"),
        method: "GET",
        path: "/v1/search/items",
        status: 200,
        outcome: "allowed",
        meters: vec![("requests", 1)],
        period: "2026-11".into(),
        latency_ms: 3.2,
        extra: None,
    };
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("hand_written", |b| {
        b.iter(|| std::hint::black_box(&event).encode().unwrap())
    });
    g.bench_function("serde_reference", |b| {
        b.iter(|| std::hint::black_box(&event).encode_reference().unwrap())
    });
    g.finish();
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let batch = events();
    let mut g = c.benchmark_group("telemetry");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(5));

    g.throughput(Throughput::Elements(1));
    let metrics = Arc::new(Metrics::unregistered().unwrap());
    let queue = Arc::new(EventQueue::new(65_536));
    let emitter = Emitter::new(queue.clone(), "tollgate/bench".into(), metrics);
    let mut spare = Some(Vec::new());
    let caller = acme();
    g.bench_function("encode_event", |b| {
        b.iter(|| {
            emitter.emit(&CallEvent {
                id: None,
                source: emitter.source(),
                time: jiff::Timestamp::now(),
                caller: Some(&caller),
                plan: Some("free"),
                route: Some("api"),
                method: "GET",
                path: "/v1/search/items",
                status: 200,
                outcome: "allowed",
                meters: vec![("requests", 1)],
                period: "2026-11".into(),
                latency_ms: 3.2,
                extra: None,
            });
            spare = Some(queue.take(spare.take().unwrap_or_default()).into_buffer());
        })
    });
    g.throughput(Throughput::Elements(BATCH as u64));

    let dir = tempfile::tempdir().unwrap();
    let s = spool(&dir.path().join("spool"));
    let mut reader = s.reader("sink");
    g.bench_function("spool_append", |b| {
        b.iter(|| {
            s.append(&batch).unwrap();
            let end = reader.next_batch(BATCH).unwrap().end;
            s.ack("sink", end).unwrap();
        })
    });

    // Five small batches, each laid out as the queue lays them out.
    let small: Vec<&[Bytes]> = batch.chunks(102).take(5).collect();
    let frames = |events: &[Bytes]| {
        let mut f = Frames::default();
        for e in events {
            f.push(e);
        }
        f
    };
    g.throughput(Throughput::Elements(5 * 102));
    g.bench_function("spool_5_writes_5_fsyncs", |b| {
        b.iter(|| {
            for events in &small {
                s.append_frames(&mut frames(events)).unwrap();
            }
            let end = reader.next_batch(BATCH).unwrap().end;
            s.ack("sink", end).unwrap();
        })
    });
    g.bench_function("spool_5_writes_1_fsync", |b| {
        b.iter(|| {
            for events in &small {
                s.write(&mut frames(events)).unwrap();
            }
            s.sync().unwrap();
            let end = reader.next_batch(BATCH).unwrap().end;
            s.ack("sink", end).unwrap();
        })
    });
    g.throughput(Throughput::Elements(BATCH as u64));

    let mut direct = FileSink::new(dir.path().join("direct.jsonl"));
    g.bench_function("file_direct", |b| {
        b.iter(|| rt.block_on(direct.deliver(&batch)).unwrap())
    });

    let mut file = FileSink::new(dir.path().join("events.jsonl"));
    g.bench_function("spool_to_file", |b| {
        b.iter(|| through(&rt, &s, &mut reader, &mut file, &batch))
    });

    let redis = Redis::start();
    let mut stream =
        RedisStreamSink::new(&redis.url(), &[], "tollgate:events", 100_000, &[]).unwrap();
    g.bench_function("spool_to_redis_stream", |b| {
        b.iter(|| through(&rt, &s, &mut reader, &mut stream, &batch))
    });
    g.finish();
}

criterion_group!(benches, encode, bench);
criterion_main!(benches);
