//! The disk spool on its own: a property test against a simple model (append, write without
//! fsync, sync, deliver, ack, crash, reopen, torn tail), and the two `on_full` policies.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use tollgate::config::OnFull;
use tollgate::telemetry::metrics::Metrics;
use tollgate::telemetry::spool::{Frames, Limits, Reader, Spool};

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
    /// Append events of these padding sizes as one batch (written and fsynced).
    Append(Vec<usize>),
    /// Write events of these padding sizes without an fsync: the sinks see them after a sync
    /// (which the write makes itself when it fills the segment) or after a restart.
    Write(Vec<usize>),
    /// Fsync what was written.
    Sync,
    /// Sink `sink` reads up to `max` events, and acknowledges them if `ack`.
    Deliver { sink: usize, max: usize, ack: bool },
    /// The process dies (nothing in memory survives) and starts again.
    Reopen,
    /// The process dies mid-write, leaving half a record at the end of the last segment.
    TornTail,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => prop::collection::vec(0usize..120, 1..12).prop_map(Op::Append),
        3 => prop::collection::vec(0usize..120, 1..6).prop_map(Op::Write),
        1 => Just(Op::Sync),
        4 => (0..SINKS.len(), 1usize..20, prop::bool::weighted(0.8))
            .prop_map(|(sink, max, ack)| Op::Deliver { sink, max, ack }),
        1 => Just(Op::Reopen),
        1 => Just(Op::TornTail),
    ]
}

/// What the spool must behave like: one list of events, one acknowledged position per sink.
struct Model {
    /// Fsynced: what the sinks may read.
    events: Vec<Bytes>,
    /// Written after those, not yet fsynced.
    unsynced: Vec<Bytes>,
    acked: [u64; 2],
    read: [u64; 2],
}

impl Model {
    /// The events after every one written so far, padded to `sizes`.
    fn next_events(&self, sizes: &[usize]) -> Vec<Bytes> {
        let first = (self.events.len() + self.unsynced.len()) as u64;
        (first..)
            .zip(sizes)
            .map(|(n, size)| event(n, *size))
            .collect()
    }
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
        unsynced: Vec::new(),
        acked: [0; 2],
        read: [0; 2],
    };
    for op in ops {
        match op {
            Op::Append(sizes) => {
                let batch = m.next_events(&sizes);
                let done = spool.append(&batch).unwrap();
                assert_eq!(done.written, (m.unsynced.len() + batch.len()) as u64);
                assert_eq!(done.unsynced, 0);
                m.events.append(&mut m.unsynced);
                m.events.extend(batch);
            }
            Op::Write(sizes) => {
                let batch = m.next_events(&sizes);
                let mut frames = Frames::default();
                for e in &batch {
                    assert!(frames.push(e));
                }
                let done = spool.write(&mut frames).unwrap();
                m.unsynced.extend(batch);
                assert_eq!(done.dropped, 0);
                assert_eq!(done.written + done.unsynced, m.unsynced.len() as u64);
                // A write that filled its segment fsynced it: everything written is visible.
                assert!(done.written == 0 || done.unsynced == 0, "{done:?}");
                m.events.extend(m.unsynced.drain(..done.written as usize));
            }
            Op::Sync => {
                let done = spool.sync().unwrap();
                assert_eq!(done.written, m.unsynced.len() as u64);
                assert_eq!(done.unsynced, 0);
                m.events.append(&mut m.unsynced);
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
                // Unacknowledged events are delivered again after a restart, and what was
                // written but not fsynced survives the process in the page cache.
                m.read = m.acked;
                m.events.append(&mut m.unsynced);
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

/// Writes without an fsync count against the size bound like fsynced ones: a write that needs
/// room fsyncs what is written first, and then either policy weighs whole fsynced segments.
#[test]
fn unsynced_writes_respect_the_size_bound_under_both_policies() {
    for on_full in [OnFull::DropNewest, OnFull::DropOldest] {
        let (_dir, spool) = tiny(on_full);
        let (mut written, mut dropped, mut unsynced) = (0, 0, 0);
        for n in 0..40 {
            let mut frames = Frames::default();
            assert!(frames.push(&event(n, 50)));
            let done = spool.write(&mut frames).unwrap();
            written += done.written;
            dropped += done.dropped;
            unsynced = done.unsynced;
        }
        let done = spool.sync().unwrap();
        assert_eq!(done.written, unsynced, "{on_full:?}");
        written += done.written;
        assert!(dropped > 0, "{on_full:?}: the bound was reached");
        match on_full {
            OnFull::DropNewest => assert_eq!(written + dropped, 40, "{on_full:?}"),
            // Dropped old records were written (and counted) before.
            OnFull::DropOldest => assert_eq!(written, 40, "{on_full:?}"),
        }
        let batch = spool.reader("a").next_batch(100).unwrap();
        assert_eq!(batch.events.len() as u64, 40 - dropped, "{on_full:?}");
        let kept = match on_full {
            OnFull::DropNewest => (event(0, 50), batch.events.first()),
            OnFull::DropOldest => (event(39, 50), batch.events.last()),
        };
        assert_eq!(Some(&kept.0), kept.1, "{on_full:?}");
        assert_eq!(spool.lag("a"), 40 - dropped, "{on_full:?}");
    }
}

/// The sinks see written events only once they are fsynced.
#[test]
fn readers_see_written_events_only_after_the_sync() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path(), Limits::new(1 << 30, OnFull::DropNewest));
    let mut reader = spool.reader("a");
    let mut frames = Frames::default();
    for n in 0..3 {
        assert!(frames.push(&event(n, 10)));
    }
    let done = spool.write(&mut frames).unwrap();
    assert_eq!((done.written, done.unsynced), (0, 3));
    assert!(reader.next_batch(10).unwrap().events.is_empty());
    assert_eq!(spool.lag("a"), 0, "lag counts what the sink could read");
    assert!(frames.push(&event(3, 10)));
    let done = spool.write(&mut frames).unwrap();
    assert_eq!((done.written, done.unsynced), (0, 4));
    let done = spool.sync().unwrap();
    assert_eq!((done.written, done.unsynced), (4, 0));
    let batch = reader.next_batch(10).unwrap();
    let expected: Vec<Bytes> = (0..4).map(|n| event(n, 10)).collect();
    assert_eq!(
        *batch.events,
        expected[..],
        "both writes, in order, as one batch"
    );
    assert_eq!(
        spool.sync().unwrap(),
        Default::default(),
        "nothing left to sync"
    );
}
