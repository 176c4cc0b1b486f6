//! One sink's way through the spool.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use super::record::{parse, Frame};
use super::{io_err, Spool, SpoolError, READ_CHUNK};

/// Reads one sink's way through the spool, in order, from its acknowledged position.
pub struct Reader {
    spool: Arc<Spool>,
    sink: String,
    /// The next sequence number to hand out.
    pos: u64,
    cursor: Option<Cursor>,
    committed: watch::Receiver<u64>,
    /// Read buffer, kept between batches.
    buf: Vec<u8>,
}

struct Cursor {
    base: u64,
    file: File,
    offset: u64,
}

/// Records read for one delivery: acknowledge `end` once delivered.
#[derive(Debug)]
pub struct Batch {
    /// The events, in spool order (shared with the spool's in-memory tail when read from it).
    pub events: Arc<[Bytes]>,
    /// One past the last sequence number read.
    pub end: u64,
}

// === impl Reader ===

impl Reader {
    pub(super) fn new(
        spool: Arc<Spool>,
        sink: &str,
        pos: u64,
        committed: watch::Receiver<u64>,
    ) -> Reader {
        Reader {
            spool,
            sink: sink.to_string(),
            pos,
            cursor: None,
            committed,
            buf: Vec::new(),
        }
    }

    /// The sink this reader serves.
    pub fn sink(&self) -> &str {
        &self.sink
    }

    /// Up to `max` records after the last batch; empty when the sink has caught up.
    pub fn next_batch(&mut self, max: usize) -> Result<Batch, SpoolError> {
        if let Some((events, end)) = self.spool.read_tail(self.pos, max) {
            self.pos = end;
            return Ok(Batch { events, end });
        }
        let mut events = Vec::new();
        loop {
            let seg = {
                let state = self.spool.lock_state();
                state
                    .segments
                    .iter()
                    .find(|s| s.end > self.pos)
                    .map(|s| (s.base, s.bytes, s.path.clone()))
            };
            let Some((base, committed, path)) = seg else {
                return Ok(Batch {
                    events: events.into(),
                    end: self.pos,
                });
            };
            self.pos = self.pos.max(base);
            if self.cursor.as_ref().map(|c| c.base) != Some(base) {
                match File::open(&path) {
                    Ok(file) => {
                        self.cursor = Some(Cursor {
                            base,
                            file,
                            offset: 0,
                        })
                    }
                    // Deleted meanwhile (drop_oldest): look again.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err(&path)(e)),
                }
            }
            let Some(cursor) = self.cursor.as_mut() else {
                continue;
            };
            let want = (committed.saturating_sub(cursor.offset) as usize).min(READ_CHUNK);
            let buf = &mut self.buf;
            buf.resize(want, 0);
            cursor
                .file
                .seek(SeekFrom::Start(cursor.offset))
                .and_then(|_| cursor.file.read_exact(buf))
                .map_err(io_err(&path))?;
            let mut at = 0;
            while at < buf.len() && events.len() < max {
                match parse(&buf[at..]) {
                    Frame::Record(seq, payload, n) => {
                        if seq >= self.pos {
                            events.push(Bytes::copy_from_slice(payload));
                            self.pos = seq + 1;
                        }
                        at += n;
                    }
                    Frame::Corrupt(n) => at += n,
                    Frame::Torn => break,
                }
            }
            if at == 0 && !buf.is_empty() {
                // Unreadable bytes below the committed length (damaged after the spool was
                // opened): skip them rather than stall the sink.
                tracing::warn!(sink = %self.sink, segment = %path.display(), offset = cursor.offset, "Unreadable spool bytes; skipping to the end of the segment.");
                at = buf.len();
            }
            cursor.offset += at as u64;
            if events.len() >= max {
                break;
            }
            if cursor.offset < committed {
                continue;
            }
            // Read up to the length seen: look again, the writer may have added or closed it.
            let now = {
                let state = self.spool.lock_state();
                let active = state.active == Some(base);
                state
                    .segments
                    .iter()
                    .find(|s| s.base == base)
                    .map(|s| (s.end, s.bytes, active))
            };
            match now {
                Some((_, bytes, _)) if cursor.offset < bytes => continue,
                Some((_, _, true)) => break,
                // Closed and read to its end: whatever is left below `end` was corrupt.
                Some((end, _, false)) => self.pos = self.pos.max(end),
                None => continue,
            }
        }
        Ok(Batch {
            events: events.into(),
            end: self.pos,
        })
    }

    /// Waits until records after `pos` may have been committed.
    pub async fn wait(&mut self) {
        let pos = self.pos;
        let _ = self.committed.wait_for(|c| *c > pos).await;
    }
}
