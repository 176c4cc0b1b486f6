//! A sink's saved spool position: `<sink>.ack`, overwritten in place.
//!
//! The file holds one fixed-width line, `<position, 20 digits> <crc32 of those digits, 8 hex>`,
//! written with a single `pwrite` at offset 0 into a file kept open. Saving used to write a
//! temporary file and rename it over: an inode created and a directory changed per delivered
//! batch, which the profile showed as a sixth of the telemetry thread's time. A write this small
//! cannot be torn by a process crash; should a power cut leave the line damaged, its checksum
//! fails and the sink starts over from the oldest spooled event (more duplicates, never a gap).
//! A position written by an earlier version (the bare number) is still read.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{io_err, SpoolError};

/// Digits of the position, a space, 8 hex digits of checksum, a newline.
const LINE: usize = 20 + 1 + 8 + 1;

/// The open position file of one sink.
pub(super) struct PositionFile {
    path: PathBuf,
    file: Option<File>,
}

impl PositionFile {
    pub(super) fn new(path: PathBuf) -> PositionFile {
        PositionFile { path, file: None }
    }

    /// Saves `pos` (not fsynced: a lost position only means delivering again).
    pub(super) fn save(&mut self, pos: u64) -> Result<(), SpoolError> {
        let line = encode(pos);
        let result = match self.file.take() {
            Some(f) => f.write_all_at(&line, 0).map(|()| f),
            // A fresh open: cut off whatever longer text an earlier version left after the line.
            None => OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&self.path)
                .and_then(|f| f.write_all_at(&line, 0).map(|()| f))
                .and_then(|f| f.set_len(LINE as u64).map(|()| f)),
        };
        match result {
            Ok(f) => {
                self.file = Some(f);
                Ok(())
            }
            // Reopen next time: the file may have been removed or its disk remounted.
            Err(e) => Err(io_err(&self.path)(e)),
        }
    }
}

fn encode(pos: u64) -> [u8; LINE] {
    let digits = format!("{pos:020}");
    let text = format!("{digits} {:08x}\n", crc32fast::hash(digits.as_bytes()));
    let mut line = [b' '; LINE];
    line.copy_from_slice(text.as_bytes());
    line
}

/// The position in `text`, or `None` if it is damaged.
pub(super) fn decode(text: &str) -> Option<u64> {
    let mut parts = text.split_whitespace();
    let digits = parts.next()?;
    let pos = digits.parse().ok()?;
    match (parts.next(), parts.next()) {
        // Written by an earlier version: the number alone.
        (None, _) => Some(pos),
        (Some(sum), None) => {
            let sum = u32::from_str_radix(sum, 16).ok()?;
            (sum == crc32fast::hash(digits.as_bytes())).then_some(pos)
        }
        _ => None,
    }
}

/// Reads the position saved at `path`: 0 when there is none or it is damaged.
pub(super) fn load(path: &Path, sink: &str) -> Result<u64, SpoolError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(decode(&text).unwrap_or_else(|| {
            tracing::warn!(sink = %sink, file = %path.display(), "Unreadable spool position; the sink starts over from the oldest spooled event.");
            0
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io_err(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_damage_is_detected() {
        for pos in [0, 1, 299, u64::MAX] {
            let line = encode(pos);
            let text = std::str::from_utf8(&line).unwrap();
            assert_eq!(decode(text), Some(pos), "{text}");
        }
        assert_eq!(
            decode("1234\n"),
            Some(1234),
            "the format of earlier versions"
        );
        assert_eq!(decode("00000000000000000300 00000000\n"), None);
        assert_eq!(decode("00000000000000000310 deadbeef\n"), None);
        assert_eq!(decode(""), None);
        assert_eq!(decode("garbage"), None);
    }

    #[test]
    fn saving_overwrites_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.ack");
        std::fs::write(&path, "12345678901234567890123456789012345").unwrap();
        let mut f = PositionFile::new(path.clone());
        f.save(7).unwrap();
        f.save(42).unwrap();
        assert_eq!(load(&path, "s").unwrap(), 42);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), LINE as u64);
    }
}
