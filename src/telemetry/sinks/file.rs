//! `file`: one JSON object per line, appended, fsynced per batch.

use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use super::{Sink, SinkError};

/// Appends events to a JSON-lines file.
pub struct FileSink {
    path: PathBuf,
    /// Shared with the blocking task that writes; reopened after an error.
    file: Arc<Mutex<Option<File>>>,
}

impl FileSink {
    /// A sink appending to `path` (created, with its directory, on first delivery).
    pub fn new(path: PathBuf) -> FileSink {
        FileSink {
            path,
            file: Arc::new(Mutex::new(None)),
        }
    }
}

/// Writes the events as lines and fsyncs them, opening the file first if needed. One blocking
/// call per batch (tokio's own file type would hop to the blocking pool for every write and for
/// the fsync).
fn append(path: &PathBuf, slot: &Mutex<Option<File>>, events: &[Bytes]) -> std::io::Result<()> {
    let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
    if slot.is_none() {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        *slot = Some(OpenOptions::new().create(true).append(true).open(path)?);
    }
    let result = match slot.as_mut() {
        Some(file) => write_lines(file, events).and_then(|()| file.sync_data()),
        None => Err(std::io::Error::other("the file is not open")),
    };
    if result.is_err() {
        // Reopen next time: the file may have been moved or its disk remounted.
        *slot = None;
    }
    result
}

/// Each event and a newline, written straight from the spool's buffers with `writev` rather
/// than copied into one buffer first (that copy was the sink's one pass over the batch).
fn write_lines(out: &mut impl Write, events: &[Bytes]) -> std::io::Result<()> {
    // Two slices an event: 512 events fill the 1,024 slices Linux takes in one call.
    let mut slices = Vec::with_capacity(2 * events.len().min(512));
    for chunk in events.chunks(512) {
        slices.clear();
        for event in chunk {
            slices.push(IoSlice::new(event));
            slices.push(IoSlice::new(b"\n"));
        }
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            match out.write_vectored(rest) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// The most events one delivery to a file carries, whatever `telemetry.batch` says. A file
/// takes any amount in one append, and each delivery costs an fsync, so the sink writes
/// everything one spool sync made visible at once: a gateway serving 25k calls a second has
/// 2,500 events per 100 ms `sync_interval`, which at 512 a delivery would be five fsyncs instead
/// of one. The bound keeps a sink catching up after an outage to about 4 MB per delivery.
const FILE_BATCH: usize = 8192;

#[async_trait]
impl Sink for FileSink {
    fn max_batch(&self, configured: usize) -> usize {
        configured.max(FILE_BATCH)
    }

    async fn deliver(&mut self, batch: &[Bytes]) -> Result<(), SinkError> {
        // Shares of the spool's buffers, not copies.
        let events = batch.to_vec();
        let (path, file) = (self.path.clone(), self.file.clone());
        tokio::task::spawn_blocking(move || append(&path, &file, &events))
            .await
            .map_err(|e| SinkError::Io(std::io::Error::other(e)))??;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `max` bytes a call, as a pipe or a full disk may.
    struct Short {
        out: Vec<u8>,
        max: usize,
    }

    impl Write for Short {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.max);
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
            let mut left = self.max;
            for b in bufs {
                let n = b.len().min(left);
                self.out.extend_from_slice(&b[..n]);
                left -= n;
                if left == 0 {
                    break;
                }
            }
            Ok(self.max - left)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_event_becomes_one_whole_line_across_short_writes_and_chunks() {
        let events: Vec<Bytes> = (0..1_300)
            .map(|i| Bytes::from(format!("{{\"n\":{i}}}")))
            .collect();
        let mut expected = Vec::new();
        for e in &events {
            expected.extend_from_slice(e);
            expected.push(b'\n');
        }
        for max in [1, 7, 4096, usize::MAX] {
            let mut w = Short {
                out: Vec::new(),
                max,
            };
            write_lines(&mut w, &events).unwrap();
            assert_eq!(w.out, expected, "max {max}");
        }
    }

    #[test]
    fn a_writer_that_takes_nothing_is_an_error() {
        let mut w = Short {
            out: Vec::new(),
            max: 0,
        };
        let e = write_lines(&mut w, &[Bytes::from_static(b"x")]).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WriteZero);
    }

    #[test]
    fn a_delivery_takes_what_one_sync_made_visible_not_just_batch() {
        let sink = FileSink::new(PathBuf::from("events.jsonl"));
        assert_eq!(sink.max_batch(512), FILE_BATCH);
        assert_eq!(
            sink.max_batch(20_000),
            20_000,
            "a larger `batch` still holds"
        );
    }
}
