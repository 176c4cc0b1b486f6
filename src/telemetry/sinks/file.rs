//! `file`: one JSON object per line, appended, fsynced per batch.

use std::fs::{File, OpenOptions};
use std::io::Write;
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
    /// The lines of a batch, kept between batches: a fresh buffer of a batch's size cost a page
    /// fault per 4 KiB (the allocator returns freed large blocks to the kernel).
    buf: Vec<u8>,
}

impl FileSink {
    /// A sink appending to `path` (created, with its directory, on first delivery).
    pub fn new(path: PathBuf) -> FileSink {
        FileSink {
            path,
            file: Arc::new(Mutex::new(None)),
            buf: Vec::new(),
        }
    }
}

/// Writes and fsyncs `buf`, opening the file first if needed. One blocking call per batch
/// (tokio's own file type would hop to the blocking pool for every write and for the fsync).
fn append(path: &PathBuf, slot: &Mutex<Option<File>>, buf: &[u8]) -> std::io::Result<()> {
    let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
    if slot.is_none() {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        *slot = Some(OpenOptions::new().create(true).append(true).open(path)?);
    }
    let result = match slot.as_mut() {
        Some(file) => file.write_all(buf).and_then(|()| file.sync_data()),
        None => Err(std::io::Error::other("the file is not open")),
    };
    if result.is_err() {
        // Reopen next time: the file may have been moved or its disk remounted.
        *slot = None;
    }
    result
}

#[async_trait]
impl Sink for FileSink {
    async fn deliver(&mut self, batch: &[Bytes]) -> Result<(), SinkError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.reserve(batch.iter().map(|e| e.len() + 1).sum());
        for event in batch {
            buf.extend_from_slice(event);
            buf.push(b'\n');
        }
        let (path, file) = (self.path.clone(), self.file.clone());
        let (result, buf) = tokio::task::spawn_blocking(move || {
            let result = append(&path, &file, &buf);
            (result, buf)
        })
        .await
        .map_err(|e| SinkError::Io(std::io::Error::other(e)))?;
        if buf.capacity() <= crate::telemetry::spool::KEEP_BUFFER {
            self.buf = buf;
        }
        Ok(result?)
    }
}
