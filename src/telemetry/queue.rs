//! The bounded in-memory queue between the request path and the spool writer.
//!
//! Events are encoded straight into one shared buffer, already framed as the spool stores them
//! ([`Frames`]); the spool writer swaps the buffer for an empty one once per batch and writes
//! it as it is.
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
use std::time::Instant;

use super::spool::{FrameError, Frames};

/// Why an event was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal<E> {
    /// The queue holds its capacity: the spool writer is behind.
    Full,
    /// The spool writer has stopped (or the queue was closed).
    Closed,
    /// The event could not be encoded; nothing of it was queued.
    Encode(E),
    /// The encoded event is longer than a spool record may be (1 MiB); nothing of it was queued.
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
    frames: Frames,
    closed: bool,
    /// The writer is blocked in [`EventQueue::wait`] and needs a signal.
    waiting: bool,
}

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
        if p.frames.len() >= self.capacity {
            return Err(Refusal::Full);
        }
        match p.frames.push_with(write) {
            Ok(()) => {}
            Err(FrameError::Write(e)) => return Err(Refusal::Encode(e)),
            Err(FrameError::TooLarge) => return Err(Refusal::TooLarge),
        }
        if p.waiting {
            p.waiting = false;
            drop(p);
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Events queued now.
    pub fn len(&self) -> usize {
        self.lock().frames.len()
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
        self.wait_until(None)
    }

    /// Blocks until an event is queued or `deadline` has passed (true), or the queue is closed
    /// and empty (false).
    pub fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let mut p = self.lock();
        loop {
            if !p.frames.is_empty() {
                return true;
            }
            if p.closed {
                return false;
            }
            p.waiting = true;
            p = match deadline {
                None => self.ready.wait(p).unwrap_or_else(|e| e.into_inner()),
                Some(at) => {
                    let Some(left) = at.checked_duration_since(Instant::now()) else {
                        p.waiting = false;
                        return true;
                    };
                    match self.ready.wait_timeout(p, left) {
                        Ok((p, _)) => p,
                        Err(e) => e.into_inner().0,
                    }
                }
            };
        }
    }

    /// Takes every queued event, oldest first. `spare` (emptied) becomes the queue's buffer for
    /// the events after: pass a buffer of an earlier batch so that its capacity is reused.
    pub fn take(&self, spare: Vec<u8>) -> Frames {
        let fresh = Frames::new(spare);
        std::mem::replace(&mut self.lock().frames, fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn payloads(f: &Frames) -> Vec<&[u8]> {
        f.payloads().collect()
    }

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
        let events = q.take(Vec::new());
        assert_eq!(
            payloads(&events),
            vec![&b"{\"a\":1}"[..], b"", b"{\"b\":2}"]
        );
        assert!(q.is_empty());
        assert!(q.take(Vec::new()).is_empty());
        push(&q, b"next").unwrap();
        assert_eq!(payloads(&q.take(events.into_buffer())), vec![&b"next"[..]]);
    }

    #[test]
    fn a_burst_does_not_keep_its_buffer() {
        let keep = crate::telemetry::spool::KEEP_BUFFER;
        let q = EventQueue::new(usize::MAX);
        let event = vec![b'x'; 64 * 1024];
        for _ in 0..(2 * keep / event.len()) {
            push(&q, &event).unwrap();
        }
        let taken = q.take(Vec::new());
        assert_eq!(taken.len(), 2 * keep / event.len());
        let spare = taken.into_buffer();
        assert!(spare.capacity() <= keep, "{}", spare.capacity());
    }

    #[test]
    fn an_event_too_large_for_the_spool_is_refused_whole() {
        let q = EventQueue::new(10);
        let big = vec![b'x'; (1 << 20) + 1];
        assert_eq!(push(&q, &big), Err(Refusal::TooLarge));
        push(&q, b"after").unwrap();
        assert_eq!(payloads(&q.take(Vec::new())), vec![&b"after"[..]]);
    }

    #[test]
    fn a_full_queue_refuses_until_the_writer_takes() {
        let q = EventQueue::new(2);
        push(&q, b"1").unwrap();
        push(&q, b"2").unwrap();
        assert_eq!(push(&q, b"3"), Err(Refusal::Full));
        assert_eq!(payloads(&q.take(Vec::new())), vec![&b"1"[..], b"2"]);
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
        assert_eq!(
            payloads(&q.take(Vec::new())),
            vec![&b"before"[..], b"after"]
        );
    }

    #[test]
    fn the_writer_wakes_for_the_first_event_and_on_close() {
        let q = Arc::new(EventQueue::new(10));
        let writer = {
            let q = q.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while q.wait() {
                    let taken = q.take(Vec::new());
                    got.extend(taken.payloads().map(<[u8]>::to_vec));
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
        assert_eq!(
            got,
            vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
        );
    }

    #[test]
    fn a_wait_with_a_deadline_ends_at_it_or_at_close() {
        let q = Arc::new(EventQueue::new(10));
        let past = Instant::now();
        assert!(q.wait_until(Some(past)), "a deadline passed: time to sync");
        assert!(q.is_empty());
        let soon = Instant::now() + std::time::Duration::from_millis(30);
        assert!(q.wait_until(Some(soon)));
        assert!(Instant::now() >= soon, "it waited for the deadline");
        push(&q, b"one").unwrap();
        let later = Instant::now() + std::time::Duration::from_secs(3600);
        assert!(q.wait_until(Some(later)), "an event ends the wait");
        q.take(Vec::new());
        q.close();
        assert!(!q.wait_until(Some(later)), "closed and empty");
    }
}
