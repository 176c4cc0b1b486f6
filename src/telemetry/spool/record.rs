//! The record format of spool segments, and the check of a segment after a restart.
//!
//! `len: u32 LE | crc32: u32 LE | seq: u64 LE | payload`; the CRC covers `seq` and the payload,
//! so a record moved or renumbered by damage fails its check too.

use std::fs::{self, OpenOptions};
use std::path::Path;

use super::{io_err, SpoolError, HEADER, MAX_RECORD};

pub(super) fn crc(seq: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Fills in the checksum and sequence number of `record`, a whole record whose length is
/// already in place (as [`super::Frames`] lays it out).
pub(super) fn stamp(record: &mut [u8], seq: u64) {
    let sum = crc(seq, &record[HEADER..]);
    record[4..8].copy_from_slice(&sum.to_le_bytes());
    record[8..16].copy_from_slice(&seq.to_le_bytes());
}

/// One parsed frame.
pub(super) enum Frame<'b> {
    /// A sound record and the bytes it took.
    Record(u64, &'b [u8], usize),
    /// A record whose checksum fails: skip this many bytes.
    Corrupt(usize),
    /// Not enough bytes for a whole record (or a length no record can have).
    Torn,
}

pub(super) fn parse(buf: &[u8]) -> Frame<'_> {
    if buf.len() < HEADER {
        return Frame::Torn;
    }
    let word = |at: usize| u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
    let len = word(0) as usize;
    let sum = word(4);
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&buf[8..16]);
    let seq = u64::from_le_bytes(seq);
    if len > MAX_RECORD || buf.len() < HEADER + len {
        return Frame::Torn;
    }
    let payload = &buf[HEADER..HEADER + len];
    if crc(seq, payload) != sum {
        return Frame::Corrupt(HEADER + len);
    }
    Frame::Record(seq, payload, HEADER + len)
}

/// Checks a segment after a restart: skips corrupt records, cuts a torn tail off, and fsyncs
/// it. Returns (one past the last sound sequence number, sound length in bytes, records lost).
pub(super) fn recover(path: &Path, base: u64) -> Result<(u64, u64, u64), SpoolError> {
    let buf = fs::read(path).map_err(io_err(path))?;
    if !buf.is_empty() {
        fs::File::open(path)
            .and_then(|f| f.sync_data())
            .map_err(io_err(path))?;
    }
    let (mut at, mut end, mut corrupt) = (0usize, base, 0u64);
    while at < buf.len() {
        match parse(&buf[at..]) {
            Frame::Record(seq, _, n) => {
                end = end.max(seq + 1);
                at += n;
            }
            Frame::Corrupt(n) => {
                tracing::warn!(segment = %path.display(), offset = at, "Spool record failed its checksum; skipping it.");
                corrupt += 1;
                at += n;
            }
            Frame::Torn => {
                tracing::warn!(segment = %path.display(), offset = at, bytes = buf.len() - at, "Spool segment ends in a torn record (a crash mid-write); cutting it off.");
                corrupt += 1;
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io_err(path))?;
                f.set_len(at as u64)
                    .and_then(|()| f.sync_all())
                    .map_err(io_err(path))?;
                break;
            }
        }
    }
    Ok((end, at as u64, corrupt))
}
