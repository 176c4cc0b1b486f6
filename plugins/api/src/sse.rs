//! Incremental reading of `text/event-stream` bodies, for plugins (and the gateway's own
//! `from_response` meters) that look at streamed answers chunk by chunk.
//!
//! Chunk boundaries fall anywhere (inside a line, between `\r` and `\n`), so the reader keeps
//! the unfinished line and the `data:` lines of the event being read, nothing more: memory is
//! bounded by one event, capped at the limit given to [`EventStream::new`] (longer lines and
//! events are cut there, which spoils that event's JSON rather than memory).

/// Splits an event stream into the `data` of each event (its `data:` lines joined with `\n`).
/// Other fields (`event:`, `id:`, `retry:`, comments) are skipped: the payload names itself in
/// every API this was written for.
#[derive(Debug, Default)]
pub struct EventStream {
    line: Vec<u8>,
    data: Vec<u8>,
    limit: usize,
}

impl EventStream {
    /// A reader that keeps at most `limit` bytes of a line or an event.
    pub fn new(limit: usize) -> EventStream {
        EventStream {
            line: Vec::new(),
            data: Vec::new(),
            limit,
        }
    }

    /// Reads one chunk, calling `on_event` with the data of each event it completes.
    pub fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(&[u8])) {
        let mut rest = chunk;
        while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
            let (head, tail) = rest.split_at(nl);
            rest = &tail[1..];
            if self.line.is_empty() {
                self.on_line(head, &mut on_event);
            } else {
                self.keep(head);
                let line = std::mem::take(&mut self.line);
                self.on_line(&line, &mut on_event);
            }
        }
        self.keep(rest);
    }

    /// The end of the body: completes a last event left without its blank line.
    pub fn finish(&mut self, mut on_event: impl FnMut(&[u8])) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.on_line(&line, &mut on_event);
        }
        let data = std::mem::take(&mut self.data);
        if !data.is_empty() {
            on_event(&data);
        }
    }

    fn keep(&mut self, bytes: &[u8]) {
        let room = self.limit.saturating_sub(self.line.len());
        self.line.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// One line: `data:` lines gather; a blank line ends the event.
    fn on_line(&mut self, line: &[u8], on_event: &mut impl FnMut(&[u8])) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            let data = std::mem::take(&mut self.data);
            if !data.is_empty() {
                on_event(&data);
            }
        } else if let Some(data) = line.strip_prefix(b"data:") {
            let data = data.strip_prefix(b" ").unwrap_or(data);
            if self.data.len() + data.len() < self.limit {
                if !self.data.is_empty() {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(data);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(chunks: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        let mut s = EventStream::new(1 << 20);
        for c in chunks {
            s.feed(c.as_bytes(), |d| {
                out.push(String::from_utf8_lossy(d).into_owned())
            });
        }
        s.finish(|d| out.push(String::from_utf8_lossy(d).into_owned()));
        out
    }

    #[test]
    fn events_across_any_chunk_boundary() {
        let body = "event: message_start\r\ndata: {\"a\":1}\r\n\r\n: comment\ndata: x\ndata: y\n\ndata: [DONE]";
        let want = ["{\"a\":1}", "x\ny", "[DONE]"];
        for split in 0..body.len() {
            let (a, b) = body.split_at(split);
            assert_eq!(events(&[a, b]), want, "split at {split}");
        }
    }

    #[test]
    fn long_lines_are_cut_at_the_limit() {
        let mut s = EventStream::new(8);
        let mut out = Vec::new();
        s.feed(b"data: 0123456789abcdef\n\n", |d| out.push(d.to_vec()));
        assert!(out.iter().all(|e| e.len() <= 8));
    }
}
