//! `file`: one JSON object per line, appended, fsynced per batch.

use std::path::PathBuf;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use super::{Sink, SinkError};

/// Appends events to a JSON-lines file.
pub struct FileSink {
    path: PathBuf,
    file: Option<tokio::fs::File>,
}

impl FileSink {
    /// A sink appending to `path` (created, with its directory, on first delivery).
    pub fn new(path: PathBuf) -> FileSink {
        FileSink { path, file: None }
    }

    async fn open(&mut self) -> Result<&mut tokio::fs::File, SinkError> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                tokio::fs::create_dir_all(dir).await?;
            }
            let f = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .await?;
            self.file = Some(f);
        }
        self.file
            .as_mut()
            .ok_or_else(|| SinkError::Io(std::io::Error::other("file not open")))
    }
}

#[async_trait]
impl Sink for FileSink {
    async fn deliver(&mut self, batch: &[Bytes]) -> Result<(), SinkError> {
        let mut buf = Vec::with_capacity(batch.iter().map(|e| e.len() + 1).sum());
        for event in batch {
            buf.extend_from_slice(event);
            buf.push(b'\n');
        }
        let result = async {
            let file = self.open().await?;
            file.write_all(&buf).await?;
            file.sync_data().await?;
            Ok(())
        }
        .await;
        if result.is_err() {
            // Reopen next time: the file may have been moved or its disk remounted.
            self.file = None;
        }
        result
    }
}
