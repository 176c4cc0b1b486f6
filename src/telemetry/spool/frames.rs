//! Records laid out as the spool stores them, from the request path to the disk without a copy.
//!
//! The request path encodes each event behind a blank header (`len | crc | seq`, with only `len`
//! filled in: the sequence number is the spool's to give, at write time); the spool writer takes
//! the whole buffer, stamps each header in place and writes the buffer as it is. The sinks then
//! read the events as slices of one copy of that buffer, taken from a [`BufferPool`] and
//! returned to it once the last slice is gone.
//!
//! Before, each event was copied three times between its encoding and the kernel (out of the
//! queue into an allocation of its own, into the spool's frame buffer, and into the file sink's
//! line buffer), and every event was an allocation made on one thread and freed on another.
//! Those copies, allocations and the page faults they brought were about 14% of the spool
//! writer's CPU samples in `perf` (2026-12-06). Measured as a whole, though, the gateway's CPU
//! per call with telemetry on did not move beyond the noise: the spool's and the sink's
//! `fsync`s and the telemetry threads' wake-ups are most of what events cost.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::{HEADER, KEEP_BUFFER, MAX_RECORD};

/// Framed records waiting for the spool, `len: u32 LE | crc32: u32 LE | seq: u64 LE | payload`,
/// with `crc` and `seq` still zero.
#[derive(Debug, Default)]
pub struct Frames {
    pub(super) buf: Vec<u8>,
    pub(super) count: usize,
}

/// Why a record was not added to [`Frames`].
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError<E> {
    /// The payload could not be written; nothing of it was kept.
    Write(E),
    /// The payload is longer than the spool takes ([`MAX_RECORD`]); nothing of it was kept.
    TooLarge,
}

impl Frames {
    /// No records, in `buf` (cleared), whose capacity is reused.
    pub fn new(mut buf: Vec<u8>) -> Frames {
        buf.clear();
        Frames { buf, count: 0 }
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds the record whose payload `write` appends to the buffer it is given. When `write`
    /// fails, or writes more than [`MAX_RECORD`], whatever it appended is removed.
    pub fn push_with<E>(
        &mut self,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), FrameError<E>> {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; HEADER]);
        if let Err(e) = write(&mut self.buf) {
            self.buf.truncate(start);
            return Err(FrameError::Write(e));
        }
        let len = self.buf.len() - start - HEADER;
        let Ok(len32) = u32::try_from(len) else {
            self.buf.truncate(start);
            return Err(FrameError::TooLarge);
        };
        if len > MAX_RECORD {
            self.buf.truncate(start);
            return Err(FrameError::TooLarge);
        }
        self.buf[start..start + 4].copy_from_slice(&len32.to_le_bytes());
        self.count += 1;
        Ok(())
    }

    /// Adds a record with `payload`; false (and nothing added) when it is too large.
    pub fn push(&mut self, payload: &[u8]) -> bool {
        self.push_with(|buf| {
            buf.extend_from_slice(payload);
            Ok::<(), ()>(())
        })
        .is_ok()
    }

    /// The payloads, in order.
    pub fn payloads(&self) -> impl Iterator<Item = &[u8]> {
        let mut rest = &self.buf[..];
        std::iter::from_fn(move || {
            let (len, _) = rest.split_first_chunk::<4>()?;
            let len = u32::from_le_bytes(*len) as usize;
            let payload = rest.get(HEADER..HEADER + len)?;
            rest = &rest[HEADER + len..];
            Some(payload)
        })
    }

    /// The buffer, for the next batch: the records are dropped, the capacity kept unless a
    /// burst made it larger than is worth keeping.
    pub fn into_buffer(self) -> Vec<u8> {
        let mut buf = self.buf;
        buf.clear();
        buf.shrink_to(KEEP_BUFFER);
        buf
    }
}

/// Buffers for the copies of written batches the sinks read, reused: a fresh buffer of a batch's
/// size (hundreds of kilobytes) came from pages the allocator had handed back to the kernel, one
/// page fault per 4 KiB.
#[derive(Debug, Default)]
pub struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
}

/// The most bytes of capacity the pool keeps; buffers beyond it are freed.
const POOL_BYTES: usize = 2 * KEEP_BUFFER;

impl BufferPool {
    /// An empty buffer of at least `room` bytes, an earlier batch's when there is one.
    pub fn get(&self, room: usize) -> Vec<u8> {
        let mut buf = self.lock().pop().unwrap_or_default();
        buf.reserve(room.min(KEEP_BUFFER));
        buf
    }

    /// Takes `buf` back for a later batch (or frees it, when it is too big or the pool full).
    pub fn put(&self, mut buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > KEEP_BUFFER {
            return;
        }
        buf.clear();
        let mut free = self.lock();
        let held: usize = free.iter().map(Vec::capacity).sum();
        if held + buf.capacity() <= POOL_BYTES {
            free.push(buf);
        }
    }

    /// `buf` as shared bytes that hand it back to the pool when the last slice is dropped.
    pub fn share(self: &Arc<Self>, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled {
            buf,
            pool: self.clone(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        // Only whole buffers are ever pushed or popped, so a poisoned pool is still sound.
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A copy of a written batch, owned by the [`Bytes`] its events are sliced from.
struct Pooled {
    buf: Vec<u8>,
    pool: Arc<BufferPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.put(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_keep_their_payloads_and_a_failed_or_oversized_one_leaves_nothing() {
        let mut f = Frames::new(Vec::new());
        assert!(f.push(b"one"));
        assert_eq!(
            f.push_with(|buf| {
                buf.extend_from_slice(b"half");
                Err("no")
            }),
            Err(FrameError::Write("no"))
        );
        assert!(!f.push(&vec![b'x'; MAX_RECORD + 1]));
        assert!(f.push(&vec![b'y'; MAX_RECORD]));
        assert!(f.push(b""));
        assert_eq!(f.len(), 3);
        let got: Vec<&[u8]> = f.payloads().collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], b"one");
        assert_eq!(got[1].len(), MAX_RECORD);
        assert_eq!(got[2], b"");
        assert_eq!(f.buf.len(), 3 * HEADER + 3 + MAX_RECORD);
    }

    #[test]
    fn a_shared_buffer_returns_to_the_pool_with_its_last_slice() {
        let pool = Arc::new(BufferPool::default());
        let mut buf = pool.get(0);
        buf.extend_from_slice(b"hello world");
        let cap = buf.capacity();
        let shared = pool.share(buf);
        let hello = shared.slice(0..5);
        drop(shared);
        assert!(pool.lock().is_empty(), "a slice still holds it");
        assert_eq!(hello, &b"hello"[..]);
        drop(hello);
        let again = pool.get(0);
        assert!(again.is_empty());
        assert_eq!(again.capacity(), cap);
        pool.put(again);
        assert!(pool.get(10 * cap).capacity() >= 10 * cap);
    }

    #[test]
    fn the_pool_keeps_a_bounded_amount() {
        let pool = BufferPool::default();
        for _ in 0..10 {
            pool.put(Vec::with_capacity(KEEP_BUFFER));
        }
        pool.put(Vec::with_capacity(KEEP_BUFFER + 1));
        let held: usize = pool.lock().iter().map(Vec::capacity).sum();
        assert!(held <= POOL_BYTES, "{held}");
        assert!(held >= KEEP_BUFFER);
    }
}
