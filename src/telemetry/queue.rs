//! The bounded in-memory queue between the request path and the spool writer.
//!
//! Events are encoded straight into one shared buffer, each behind its length (`u32` LE); the
//! spool writer swaps the buffer for an empty one once per batch and cuts it into records.
//!
//! Why not a channel of one allocation per event (`tokio::sync::mpsc`, as before): each event
//! was then allocated on the proxy thread and freed on a telemetry thread, and the channel's
//! slots and permits moved between threads with every event. On a gateway sharing one core with
//! its telemetry threads (`benches/telemetry.sh`'s setup) that made the proxy thread's own work
//! dearer by far more than the event's encoding: its user time per call rose 2.5–3 µs with the
//! whole pipeline on, against under 1 µs for building and encoding the event. With the shared
//! buffer the request path touches one lock and memory it reuses, and the writer takes hundreds
//! of events per lock (figures in the README's Telemetry section).
//!
//! The lock is held while an event is encoded (about 0.3 µs). With one proxy thread the only
//! other party is the writer, which holds it to swap two buffers once per batch, so the request
//! path waits on it only in that instant. Several proxy threads take turns on it: at 100k
//! events a second the lock is held 3% of the time, so a wait is rare and short. Far beyond
//! that, encoding into a buffer per thread and only copying under the lock would shorten it.

use std::sync::{Condvar, Mutex, MutexGuard};

use bytes::Bytes;

use super::spool::KEEP_BUFFER;

/// Why an event was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal<E> {
    /// The queue holds its capacity: the spool writer is behind.
    Full,
    /// The spool writer has stopped (or the queue was closed).
    Closed,
    /// The event could not be encoded; nothing of it was queued.
    Encode(E),
    /// The encoded event is longer than a record may be (4 GiB); nothing of it was queued.
    TooLarge,
}

/// Encoded events waiting for the spool writer.
pub struct EventQueue {
    pending: Mutex<Pending>,
    /// Signalled when the first event of a batch arrives, and on close.
    ready: Condvar,
    capacity: usize,
}

#[derive(Default)]
struct Pending {
    /// Records laid end to end: `len: u32 LE | event`.
    buf: Vec<u8>,
    events: usize,
    closed: bool,
    /// The writer is blocked in [`EventQueue::wait`] and needs a signal.
    waiting: bool,
}

/// The length prefix of a record in the buffer.
const LEN: usize = 4;

impl EventQueue {
    /// A queue holding at most `capacity` events.
    pub fn new(capacity: usize) -> EventQueue {
        EventQueue {
            pending: Mutex::new(Pending::default()),
            ready: Condvar::new(),
            capacity,
        }
    }

    /// The lock, also when a thread panicked while holding it: the buffer holds whole records
    /// only (a failed write is cut off before the lock is released), so it is still sound.
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues the event `write` appends to the buffer it is given; never blocks on the writer.
    /// When `write` fails, whatever it appended is removed.
    pub fn push<E>(
        &self,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), Refusal<E>> {
        let mut p = self.lock();
        if p.closed {
            return Err(Refusal::Closed);
        }
        if p.events >= self.capacity {
            return Err(Refusal::Full);
        }
        let start = p.buf.len();
        p.buf.extend_from_slice(&[0; LEN]);
        if let Err(e) = write(&mut p.buf) {
            p.buf.truncate(start);
            return Err(Refusal::Encode(e));
        }
        let Ok(len) = u32::try_from(p.buf.len() - start - LEN) else {
            p.buf.truncate(start);
            return Err(Refusal::TooLarge);
        };
        p.buf[start..start + LEN].copy_from_slice(&len.to_le_bytes());
        p.events += 1;
        if p.waiting {
            p.waiting = false;
            drop(p);
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Events queued now.
    pub fn len(&self) -> usize {
        self.lock().events
    }

    /// Whether no event is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Refuses every later event and wakes the writer, which then takes what is queued and
    /// stops.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// Blocks until an event is queued (true) or the queue is closed and empty (false).
    pub fn wait(&self) -> bool {
        let mut p = self.lock();
        loop {
            if p.events > 0 {
                return true;
            }
            if p.closed {
                return false;
            }
            p.waiting = true;
            p = self.ready.wait(p).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Takes every queued event, oldest first. `spare` is an empty buffer that replaces the
    /// queue's; it comes back empty, with the taken buffer's capacity, for the next call, so
    /// the two buffers are reused rather than grown afresh each batch.
    pub fn take(&self, spare: &mut Vec<u8>) -> Vec<Bytes> {
        let events = {
            let mut p = self.lock();
            std::mem::swap(&mut p.buf, spare);
            std::mem::take(&mut p.events)
        };
        // A copy of each record, not one copy of the batch shared by its records: a batch
        // is hundreds of kilobytes, and a fresh allocation that size came from pages the
        // allocator had handed back to the kernel, one page fault per 4 KiB (6% of the
        // telemetry threads' CPU in `perf`). Records of a few hundred bytes reuse memory.
        let mut out = Vec::with_capacity(events);
        let mut rest = &spare[..];
        while let Some((len, after)) = rest.split_first_chunk::<LEN>() {
            let len = u32::from_le_bytes(*len) as usize;
            let Some(event) = after.get(..len) else {
                break; // unreachable: `push` writes whole records only
            };
            out.push(Bytes::copy_from_slice(event));
            rest = &after[len..];
        }
        spare.clear();
        // A burst (up to `queue` events, tens of megabytes) must not keep its buffer for good.
        spare.shrink_to(KEEP_BUFFER);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn push(q: &EventQueue, event: &[u8]) -> Result<(), Refusal<()>> {
        q.push(|buf| {
            buf.extend_from_slice(event);
            Ok(())
        })
    }

    #[test]
    fn events_come_out_whole_and_in_order() {
        let q = EventQueue::new(10);
        push(&q, b"{\"a\":1}").unwrap();
        push(&q, b"").unwrap();
        push(&q, b"{\"b\":2}").unwrap();
        assert_eq!(q.len(), 3);
        let mut spare = Vec::new();
        let events = q.take(&mut spare);
        assert_eq!(events, vec![&b"{\"a\":1}"[..], b"", b"{\"b\":2}"]);
        assert!(q.is_empty());
        assert!(spare.is_empty());
        assert!(q.take(&mut spare).is_empty());
        push(&q, b"next").unwrap();
        assert_eq!(q.take(&mut spare), vec![&b"next"[..]]);
    }

    #[test]
    fn a_burst_does_not_keep_its_buffer() {
        let q = EventQueue::new(usize::MAX);
        let event = vec![b'x'; 64 * 1024];
        for _ in 0..(2 * KEEP_BUFFER / event.len()) {
            push(&q, &event).unwrap();
        }
        let mut spare = Vec::new();
        assert_eq!(q.take(&mut spare).len(), 2 * KEEP_BUFFER / event.len());
        assert!(spare.capacity() <= KEEP_BUFFER, "{}", spare.capacity());
    }

    #[test]
    fn a_full_queue_refuses_until_the_writer_takes() {
        let q = EventQueue::new(2);
        push(&q, b"1").unwrap();
        push(&q, b"2").unwrap();
        assert_eq!(push(&q, b"3"), Err(Refusal::Full));
        assert_eq!(q.take(&mut Vec::new()), vec![&b"1"[..], b"2"]);
        push(&q, b"3").unwrap();
    }

    #[test]
    fn a_failed_encoding_leaves_nothing_behind() {
        let q = EventQueue::new(10);
        push(&q, b"before").unwrap();
        let failed = q.push(|buf| {
            buf.extend_from_slice(b"half an ev");
            Err("no")
        });
        assert_eq!(failed, Err(Refusal::Encode("no")));
        push(&q, b"after").unwrap();
        assert_eq!(q.take(&mut Vec::new()), vec![&b"before"[..], b"after"]);
    }

    #[test]
    fn the_writer_wakes_for_the_first_event_and_on_close() {
        let q = Arc::new(EventQueue::new(10));
        let writer = {
            let q = q.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while q.wait() {
                    got.extend(q.take(&mut Vec::new()));
                }
                got
            })
        };
        push(&q, b"one").unwrap();
        push(&q, b"two").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        push(&q, b"three").unwrap();
        q.close();
        assert_eq!(push(&q, b"late"), Err(Refusal::Closed));
        let got = writer.join().unwrap();
        assert_eq!(got, vec![&b"one"[..], b"two", b"three"]);
    }
}
