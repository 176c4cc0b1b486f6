//! The disk spool on its own: a property test against a simple model (append, deliver, ack,
//! crash, reopen, torn tail), and the two `on_full` policies.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use tollgate::config::OnFull;
use tollgate::telemetry::metrics::Metrics;
use tollgate::telemetry::spool::{Limits, Reader, Spool};

const SINKS: [&str; 2] = ["a", "b"];

fn open(dir: &Path, limits: Limits) -> (Arc<Spool>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::unregistered().unwrap());
    let sinks: Vec<String> = SINKS.iter().map(|s| s.to_string()).collect();
    (
        Spool::open(dir, &sinks, limits, metrics.clone()).unwrap(),
        metrics,
    )
}

/// Small segments, so a few dozen events already rotate and delete files.
fn small() -> Limits {
    Limits {
        max_bytes: 1 << 30,
        segment_bytes: 600,
        on_full: OnFull::DropNewest,
    }
}

fn event(n: u64, size: usize) -> Bytes {
    let mut text = format!("{{\"n\":{n},\"pad\":\"");
    text.extend(std::iter::repeat_n('x', size));
    text.push_str("\"}");
    Bytes::from(text)
}

#[derive(Debug, Clone)]
enum Op {
    /// Append events of these padding sizes as one batch.
    Append(Vec<usize>),
    /// Sink `sink` reads up to `max` events, and acknowledges them if `ack`.
    Deliver { sink: usize, max: usize, ack: bool },
    /// The process dies (nothing in memory survives) and starts again.
    Reopen,
    /// The process dies mid-write, leaving half a record at the end of the last segment.
    TornTail,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec(0usize..120, 1..12).prop_map(Op::Append),
        4 => (0..SINKS.len(), 1usize..20, prop::bool::weighted(0.8))
            .prop_map(|(sink, max, ack)| Op::Deliver { sink, max, ack }),
        1 => Just(Op::Reopen),
        1 => Just(Op::TornTail),
    ]
}

/// What the spool must behave like: one list of events, one acknowledged position per sink.
struct Model {
    events: Vec<Bytes>,
    acked: [u64; 2],
    read: [u64; 2],
}

fn readers(spool: &Arc<Spool>) -> Vec<Reader> {
    SINKS.iter().map(|s| spool.reader(s)).collect()
}

fn check(spool: &Spool, m: &Model) {
    let total = m.events.len() as u64;
    assert_eq!(spool.spooled(), total - m.acked.iter().min().unwrap());
    for (i, s) in SINKS.iter().enumerate() {
        assert_eq!(spool.lag(s), total - m.acked[i], "lag of {s}");
    }
}

fn tear_last_segment(dir: &Path) {
    let mut segments: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    if let Some(last) = segments.last() {
        let mut bytes = std::fs::read(last).unwrap();
        bytes.extend_from_slice(&[9, 0, 0, 0, 1, 2, 3]);
        std::fs::write(last, bytes).unwrap();
    }
}

fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = open(dir.path(), small());
    let mut rs = readers(&spool);
    let mut m = Model {
        events: Vec::new(),
        acked: [0; 2],
        read: [0; 2],
    };
    for op in ops {
        match op {
            Op::Append(sizes) => {
                let first = m.events.len() as u64;
                let batch: Vec<Bytes> = (first..)
                    .zip(&sizes)
                    .map(|(n, size)| event(n, *size))
                    .collect();
                let done = spool.append(&batch).unwrap();
                assert_eq!(done.written, batch.len() as u64);
                m.events.extend(batch);
            }
            Op::Deliver { sink, max, ack } => {
                let batch = rs[sink].next_batch(max).unwrap();
                let from = m.read[sink] as usize;
                let to = (from + max).min(m.events.len());
                assert_eq!(
                    *batch.events,
                    m.events[from..to],
                    "sink {sink} reads in order"
                );
                m.read[sink] = to as u64;
                assert_eq!(batch.end, to as u64);
                if ack {
                    spool.ack(SINKS[sink], batch.end).unwrap();
                    m.acked[sink] = batch.end;
                }
            }
            Op::Reopen | Op::TornTail => {
                drop(rs);
                drop(spool);
                if matches!(op, Op::TornTail) {
                    tear_last_segment(dir.path());
                }
                let (reopened, metrics) = open(dir.path(), small());
                spool = reopened;
                rs = readers(&spool);
                // Unacknowledged events are delivered again after a restart.
                m.read = m.acked;
                // A torn tail is cut off and counted, once, when there was a segment to tear.
                assert!(metrics.events_corrupt.get() <= 1);
            }
        }
        check(&spool, &m);
    }
    for (i, r) in rs.iter_mut().enumerate() {
        let rest = r.next_batch(usize::MAX).unwrap();
        assert_eq!(
            *rest.events,
            m.events[m.read[i] as usize..],
            "sink {i} gets the rest"
        );
        spool.ack(SINKS[i], rest.end).unwrap();
    }
    assert_eq!(spool.spooled(), 0);
    assert!(
        spool.segment_count() <= 1,
        "acknowledged segments are deleted"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn spool_behaves_like_its_model(ops in prop::collection::vec(op(), 1..60)) {
        run(ops);
    }
}

/// A spool of 2,000 bytes in segments of 500.
fn tiny(on_full: OnFull) -> (tempfile::TempDir, Arc<Spool>) {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_bytes: 2_000,
        segment_bytes: 500,
        on_full,
    };
    let (spool, _) = open(dir.path(), limits);
    (dir, spool)
}

#[test]
fn drop_newest_keeps_what_is_spooled_and_counts_the_rest() {
    let (_dir, spool) = tiny(OnFull::DropNewest);
    let mut written = 0;
    let mut dropped = 0;
    for n in 0..40 {
        let done = spool.append(&[event(n, 50)]).unwrap();
        written += done.written;
        dropped += done.dropped;
    }
    assert!(written > 0 && dropped > 0, "{written} {dropped}");
    assert_eq!(written + dropped, 40);
    let batch = spool.reader("a").next_batch(100).unwrap();
    assert_eq!(batch.events.len() as u64, written);
    assert_eq!(batch.events[0], event(0, 50), "the oldest events are kept");
}

#[test]
fn drop_oldest_makes_room_and_readers_skip_ahead() {
    let (_dir, spool) = tiny(OnFull::DropOldest);
    let mut dropped = 0;
    for n in 0..40 {
        let done = spool.append(&[event(n, 50)]).unwrap();
        assert_eq!(done.written, 1);
        dropped += done.dropped;
    }
    assert!(dropped > 0);
    let batch = spool.reader("a").next_batch(100).unwrap();
    assert_eq!(batch.events.len() as u64 + dropped, 40);
    assert_eq!(
        batch.events.last(),
        Some(&event(39, 50)),
        "the newest events are kept"
    );
    assert_eq!(spool.lag("a"), 40 - dropped);
}
