//! The disk spool: events wait here until every sink has acknowledged them.
//!
//! Layout of the spool directory:
//! - `<first seq, 20 digits>.seg`: segment files of records, each framed as
//!   `len: u32 LE | crc32: u32 LE | seq: u64 LE | payload` (the CRC covers `seq` and the payload);
//! - `<sink>.ack`: the sequence number of the first record the sink has not acknowledged, as
//!   decimal text with a checksum, overwritten in place (see `position.rs`).
//!
//! Every record carries its own sequence number, so a corrupted record can be skipped without
//! renumbering the records after it, and positions stay meaningful across restarts.
//!
//! Durability: one writer appends batches to the file as they come ([`Spool::write`]) and
//! `fsync`s them together ([`Spool::sync`]); only then are the records visible to the sinks. A
//! crash of the process loses only what was not yet written: a written record is in the
//! kernel's page cache, and the next start finds it (and `fsync`s it before any sink reads it).
//! A crash of the machine (a power cut, a kernel panic) can also lose what was written but not
//! yet fsynced. So the writer writes often (`flush_interval`, what a process crash can lose) and
//! fsyncs less often (`sync_interval`, what a power cut can lose): an fsync, and the delivery to
//! every sink that follows it, cost the same for ten events as for a thousand. A crash after a
//! sink delivered but before its position was saved makes that sink deliver the batch again:
//! delivery is at least once, and every event carries a stable `id` to deduplicate on.
//!
//! On open, each segment is checked record by record. A record whose checksum fails but whose
//! length fits is skipped; a torn record at the end (a crash mid-write) is cut off. Both are
//! logged and counted in `tollgate_events_corrupt_total`; every sound record is still delivered.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::watch;

mod frames;
mod position;
mod reader;
mod record;

use frames::BufferPool;
pub use frames::{FrameError, Frames};
use position::PositionFile;
pub use reader::{Batch, Reader};
use record::{recover, stamp};

use super::metrics::Metrics;
use crate::config::OnFull;

/// Bytes in front of each payload.
const HEADER: usize = 16;
/// The largest event the spool stores; a usage event is well under a kilobyte.
pub const MAX_RECORD: usize = 1 << 20;
/// How much a reader reads at once: always at least one whole record.
const READ_CHUNK: usize = 2 * MAX_RECORD;

/// A spool that could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("spool {path}: {source}")]
pub struct SpoolError {
    path: PathBuf,
    source: std::io::Error,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError {
        path: path.to_path_buf(),
        source,
    }
}

/// How big the spool may grow and what gives when it is full.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Size bound of all segments together.
    pub max_bytes: u64,
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// What to drop when the bound is reached.
    pub on_full: OnFull,
}

impl Limits {
    /// Segments of an eighth of the bound, between 64 KiB and 64 MiB: small enough that space
    /// comes back soon after sinks acknowledge, big enough that files stay few.
    pub fn new(max_bytes: u64, on_full: OnFull) -> Limits {
        Limits {
            max_bytes,
            segment_bytes: (max_bytes / 8).clamp(64 << 10, 64 << 20),
            on_full,
        }
    }
}

/// What one write or sync did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Records fsynced and made visible to the sinks by this call (written by it or before).
    pub written: u64,
    /// Records dropped to respect the size bound: new ones (`drop_newest`, or too big) or old
    /// unacknowledged ones (`drop_oldest`).
    pub dropped: u64,
    /// Records written but not yet fsynced when the call returned: the next [`Spool::sync`]
    /// makes them visible.
    pub unsynced: u64,
}

/// A write or fsync that failed: the records it held are lost to this run (their sequence
/// numbers are not used again; any that reached the disk whole are delivered after a restart).
#[derive(Debug, thiserror::Error)]
#[error("{error} ({lost} usage events not spooled)")]
pub struct Failed {
    /// What failed.
    pub error: SpoolError,
    /// Records given up.
    pub lost: u64,
    /// What the call did before it failed (a sync it needed first, records it dropped).
    pub done: Appended,
}

struct Segment {
    base: u64,
    /// One past the last sequence number written to it.
    end: u64,
    /// Bytes fsynced: readers never read past this.
    bytes: u64,
    path: PathBuf,
}

struct State {
    segments: VecDeque<Segment>,
    next_seq: u64,
    acks: BTreeMap<String, u64>,
    /// The segment the writer appends to, if one is open.
    active: Option<u64>,
    /// The last batches written, by first sequence number: a sink that keeps up reads them
    /// from here instead of from disk (no read, no copy).
    tail: VecDeque<(u64, Arc<[Bytes]>)>,
    tail_bytes: usize,
    /// When records were spooled: (first sequence number of a sync, when its first record was
    /// written), oldest first, from the oldest record some sink still needs; for
    /// `tollgate_events_lag_seconds`. At most [`MAX_MARKS`]: past that every other one goes,
    /// so a long outage's oldest ages are known to the spacing of the marks that are left.
    marks: VecDeque<(u64, SystemTime)>,
}

/// Sync marks kept at most: a day of syncs every 100 ms is 864,000; past this many the marks
/// are thinned, so a sink's lag in seconds stays exact while it is short and within a few
/// minutes when it is days.
const MAX_MARKS: usize = 8192;

/// How much of the newest spooled data stays in memory for sinks that keep up: a few syncs'
/// worth on a busy gateway (25k calls a second make about 1.2 MB per 100 ms `sync_interval`),
/// so that a sink taking one sync's events in several deliveries still reads them from here.
const TAIL_BYTES: usize = 4 << 20;
/// The largest write buffer kept between batches (a full batch of usage events is ~300 KB).
pub(crate) const KEEP_BUFFER: usize = 4 << 20;

struct Writer {
    file: Option<File>,
    /// Written to the active segment, not yet fsynced: no sink sees these yet.
    unsynced: Unsynced,
}

#[derive(Default)]
struct Unsynced {
    records: u64,
    bytes: u64,
    /// When the first of them was written.
    since: Option<SystemTime>,
    /// Their payloads, by first sequence number, for the in-memory tail once fsynced.
    batches: Vec<(u64, Arc<[Bytes]>)>,
}

/// The spool of one gateway process: one writer, one reader per sink.
pub struct Spool {
    dir: PathBuf,
    limits: Limits,
    state: Mutex<State>,
    writer: Mutex<Writer>,
    /// Each sink's open position file.
    positions: Mutex<BTreeMap<String, PositionFile>>,
    committed: watch::Sender<u64>,
    metrics: Arc<Metrics>,
    /// Buffers for the in-memory tail's copies of written batches, back from the sinks.
    pool: Arc<BufferPool>,
}

// === impl Spool ===

impl Spool {
    /// Opens (or creates) the spool in `dir` for `sinks`, checking every record on disk.
    pub fn open(
        dir: &Path,
        sinks: &[String],
        limits: Limits,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Spool>, SpoolError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut acks = BTreeMap::new();
        let mut positions = BTreeMap::new();
        for sink in sinks {
            let path = dir.join(format!("{sink}.ack"));
            acks.insert(sink.clone(), position::load(&path, sink)?);
            positions.insert(sink.clone(), PositionFile::new(path));
        }
        let mut bases = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let path = entry.map_err(io_err(dir))?.path();
            let base = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(base) = base {
                bases.push((base, path));
            }
        }
        bases.sort();
        let mut segments = VecDeque::new();
        let mut marks = VecDeque::new();
        let mut next_seq = acks.values().copied().max().unwrap_or(0);
        for (base, path) in bases {
            // Fsynced here, since a crash of the process may have left records written and not
            // yet fsynced (in the page cache): none is delivered before it is on disk.
            let (end, bytes, corrupt) = recover(&path, base)?;
            if corrupt > 0 {
                metrics.events_corrupt.inc_by(corrupt);
            }
            if end == base {
                fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            next_seq = next_seq.max(end);
            // The segment's file was created with its first record.
            let born = fs::metadata(&path)
                .and_then(|m| m.created().or_else(|_| m.modified()))
                .unwrap_or_else(|_| SystemTime::now());
            marks.push_back((base, born));
            segments.push_back(Segment {
                base,
                end,
                bytes,
                path,
            });
        }
        let (committed, _) = watch::channel(next_seq);
        let spool = Arc::new(Spool {
            dir: dir.to_path_buf(),
            limits,
            state: Mutex::new(State {
                segments,
                next_seq,
                acks,
                active: None,
                tail: VecDeque::new(),
                tail_bytes: 0,
                marks,
            }),
            writer: Mutex::new(Writer {
                file: None,
                unsynced: Unsynced::default(),
            }),
            positions: Mutex::new(positions),
            committed,
            metrics,
            pool: Arc::new(BufferPool::default()),
        });
        let mut state = spool.lock_state();
        spool.collect(&mut state)?;
        spool.refresh_gauges(&mut state);
        drop(state);
        Ok(spool)
    }

    /// Appends `events` as one batch and fsyncs it; sinks see them once this returns.
    pub fn append(&self, events: &[Bytes]) -> Result<Appended, SpoolError> {
        let mut frames = Frames::default();
        let mut too_large = 0;
        for event in events {
            if !frames.push(event) {
                too_large += 1;
            }
        }
        let mut out = self.append_frames(&mut frames)?;
        out.dropped += too_large;
        Ok(out)
    }

    /// [`Spool::write`] and then [`Spool::sync`]: sinks see `frames` once this returns.
    pub fn append_frames(&self, frames: &mut Frames) -> Result<Appended, SpoolError> {
        let mut out = self.write(frames).map_err(|f| f.error)?;
        let synced = self.sync().map_err(|f| f.error)?;
        out.written += synced.written;
        out.unsynced = synced.unsynced;
        Ok(out)
    }

    /// Appends `frames` to the active segment, written as they are after their headers are
    /// stamped, without an fsync: the sinks see them after the next [`Spool::sync`]. The write
    /// syncs by itself when the segment is full (a segment is closed fsynced) and, before
    /// making room under the size bound, what is already written (so that `drop_oldest` and
    /// `drop_newest` only weigh fsynced segments). `frames` is left empty, its buffer's capacity
    /// kept for the next batch.
    ///
    /// The sinks read the events from a copy of the written buffer, one `memcpy` of the batch,
    /// so that the queue gets its own buffer back at once: the request path then writes into
    /// memory it filled one batch before, likely still in the cache. Sharing the written buffer itself with
    /// the sinks, and giving the queue whichever buffer they had finished with, spared that copy
    /// but made the proxy thread's part of telemetry dearer by more (about 1 µs per call, with
    /// the gateways sharing one core; `benches/telemetry.sh` with `TOGETHER=1`, 2026-12-06).
    pub fn write(&self, frames: &mut Frames) -> Result<Appended, Failed> {
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Appended::default();
        let result = self.write_frames(&mut writer, &mut frames.buf, frames.count, &mut out);
        frames.buf.clear();
        frames.count = 0;
        out.unsynced = writer.unsynced.records;
        result.map(|()| out).map_err(|mut f| {
            f.done.unsynced = out.unsynced;
            f
        })
    }

    /// Fsyncs what [`Spool::write`] wrote and makes it visible to the sinks.
    pub fn sync(&self) -> Result<Appended, Failed> {
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Appended::default();
        self.sync_locked(&mut writer, &mut out, 0)?;
        Ok(out)
    }

    fn write_frames(
        &self,
        writer: &mut Writer,
        buf: &mut Vec<u8>,
        count: usize,
        out: &mut Appended,
    ) -> Result<(), Failed> {
        let want = buf.len() as u64;
        if writer.unsynced.records > 0 {
            let state = self.lock_state();
            let full = used(&state) + writer.unsynced.bytes + want > self.limits.max_bytes;
            drop(state);
            if full {
                self.sync_locked(writer, out, count as u64)?;
            }
        }
        let (mut seq, mut room) = {
            let mut state = self.lock_state();
            let room = self
                .make_room(&mut state, writer, want, out)
                .map_err(|error| Failed {
                    error,
                    lost: count as u64,
                    done: *out,
                })?;
            (
                state.next_seq + writer.unsynced.records,
                room.saturating_sub(writer.unsynced.bytes),
            )
        };
        let first = seq;
        // Stamp each record that fits with its sequence number and checksum; one that does not
        // is dropped, and the records after it move down over it (only then is anything
        // copied).
        let mut kept = Vec::with_capacity(count);
        let (mut read, mut write) = (0, 0);
        while let Some(len) = buf.get(read..read + 4) {
            let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
            let size = HEADER + len;
            if read + size > buf.len() {
                break; // unreachable: `Frames` holds whole records only
            }
            read += size;
            if len > MAX_RECORD || size as u64 > room {
                out.dropped += 1;
                continue;
            }
            room -= size as u64;
            if write != read - size {
                buf.copy_within(read - size..read, write);
            }
            stamp(&mut buf[write..write + size], seq);
            kept.push(write + HEADER..write + size);
            write += size;
            seq += 1;
        }
        buf.truncate(write);
        if buf.is_empty() {
            return Ok(());
        }
        let records = seq - first;
        if writer.file.is_none() {
            // A new segment starts here; nothing is unsynced (closing one syncs it first).
            let path = self.segment_path(first);
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| Failed {
                    error: io_err(&path)(e),
                    lost: records,
                    done: *out,
                })?;
            let mut state = self.lock_state();
            state.segments.push_back(Segment {
                base: first,
                end: first,
                bytes: 0,
                path,
            });
            state.active = Some(first);
            writer.file = Some(f);
        }
        if let Some(file) = writer.file.as_mut() {
            if let Err(e) = file.write_all(buf) {
                return Err(self.abandon(writer, e, records, *out));
            }
        }
        let written = buf.len();
        let mut copy = self.pool.get(written);
        copy.extend_from_slice(buf);
        let shared = self.pool.share(copy);
        let events: Arc<[Bytes]> = kept.into_iter().map(|r| shared.slice(r)).collect();
        let u = &mut writer.unsynced;
        u.since.get_or_insert_with(SystemTime::now);
        u.records += records;
        u.bytes += written as u64;
        u.batches.push((first, events));
        let full = {
            let state = self.lock_state();
            state
                .segments
                .back()
                .is_none_or(|s| s.bytes + u.bytes >= self.limits.segment_bytes)
        };
        if full {
            self.sync_locked(writer, out, 0)?;
        }
        Ok(())
    }

    /// Fsyncs the active segment and makes what was written to it visible; closes it when it
    /// is full. On failure, `also_lost` more records (a batch not yet written) count as lost.
    fn sync_locked(
        &self,
        writer: &mut Writer,
        out: &mut Appended,
        also_lost: u64,
    ) -> Result<(), Failed> {
        if writer.unsynced.records == 0 {
            return Ok(());
        }
        if let Some(file) = writer.file.as_ref() {
            if let Err(e) = file.sync_data() {
                let mut failed = self.abandon(writer, e, 0, *out);
                failed.lost += also_lost;
                return Err(failed);
            }
        }
        let unsynced = std::mem::take(&mut writer.unsynced);
        // Sinks that keep up read everything one sync made visible as one batch.
        let events: Arc<[Bytes]> = match <[_; 1]>::try_from(unsynced.batches) {
            Ok([(_, one)]) => one,
            Err(many) => many.iter().flat_map(|(_, b)| b.iter().cloned()).collect(),
        };
        let mut state = self.lock_state();
        let first = state.next_seq;
        state
            .marks
            .push_back((first, unsynced.since.unwrap_or_else(SystemTime::now)));
        if state.marks.len() > MAX_MARKS {
            state.marks = thin(std::mem::take(&mut state.marks));
        }
        state.next_seq += unsynced.records;
        let seq = state.next_seq;
        state.tail_bytes += unsynced.bytes as usize;
        state.tail.push_back((first, events));
        while state.tail_bytes > TAIL_BYTES && state.tail.len() > 1 {
            if let Some((_, old)) = state.tail.pop_front() {
                state.tail_bytes -= old.iter().map(|e| HEADER + e.len()).sum::<usize>();
            }
        }
        let rotate = match state.segments.back_mut() {
            Some(seg) => {
                seg.end = seq;
                seg.bytes += unsynced.bytes;
                seg.bytes >= self.limits.segment_bytes
            }
            None => true,
        };
        out.written += unsynced.records;
        let collected = if rotate {
            writer.file = None;
            state.active = None;
            self.collect(&mut state)
        } else {
            Ok(())
        };
        self.refresh_gauges(&mut state);
        drop(state);
        self.committed.send_replace(seq);
        collected.map_err(|error| Failed {
            error,
            lost: also_lost,
            done: *out,
        })
    }

    /// Gives up the active segment after a failed write or fsync: it is closed where it was
    /// last fsynced, and what was written after that (with `batch`, the records of a write
    /// that failed) is lost to this run. Their sequence numbers are skipped rather than used
    /// again, since some of those records may have reached the disk whole and come back after
    /// a restart.
    fn abandon(
        &self,
        writer: &mut Writer,
        e: std::io::Error,
        batch: u64,
        done: Appended,
    ) -> Failed {
        let lost = std::mem::take(&mut writer.unsynced).records + batch;
        writer.file = None;
        let mut state = self.lock_state();
        let path = state
            .segments
            .back()
            .map_or_else(|| self.dir.clone(), |s| s.path.clone());
        state.next_seq += lost;
        let seq = state.next_seq;
        if let Some(seg) = state.segments.back_mut() {
            seg.end = seq;
        }
        state.active = None;
        // The tail's batches must follow on from each other; readers go to the disk instead.
        state.tail.clear();
        state.tail_bytes = 0;
        self.refresh_gauges(&mut state);
        drop(state);
        self.committed.send_replace(seq);
        Failed {
            error: io_err(&path)(e),
            lost,
            done,
        }
    }

    /// Records that `sink` has delivered everything before `upto`, durably; deletes segments
    /// every sink is past.
    pub fn ack(&self, sink: &str, upto: u64) -> Result<(), SpoolError> {
        // No fsync here, on purpose: a position lost to a power cut (a process crash keeps it,
        // the page cache survives) only makes the sink deliver again, which at-least-once
        // allows; an fsync per acknowledgement cost as much as the spool's own write.
        {
            let mut positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
            let file = positions
                .entry(sink.to_string())
                .or_insert_with(|| PositionFile::new(self.dir.join(format!("{sink}.ack"))));
            file.save(upto)?;
        }
        let mut state = self.lock_state();
        if let Some(pos) = state.acks.get_mut(sink) {
            *pos = (*pos).max(upto);
        }
        self.collect(&mut state)?;
        self.refresh_gauges(&mut state);
        Ok(())
    }

    /// A reader for `sink`, starting at its acknowledged position.
    pub fn reader(self: &Arc<Self>, sink: &str) -> Reader {
        let pos = self.lock_state().acks.get(sink).copied().unwrap_or(0);
        Reader::new(self.clone(), sink, pos, self.committed.subscribe())
    }

    /// Up to `max` events from `pos` on, if the in-memory tail still holds `pos`; with the
    /// sequence number after the last one.
    fn read_tail(&self, pos: u64, max: usize) -> Option<(Arc<[Bytes]>, u64)> {
        let state = self.lock_state();
        let (oldest, _) = state.tail.front()?;
        if *oldest > pos || pos >= state.next_seq {
            return None;
        }
        // A sink that keeps up asks for exactly the batch written last: share it.
        if let Some((first, batch)) = state.tail.back() {
            let end = first + batch.len() as u64;
            if *first == pos && end == state.next_seq && batch.len() <= max {
                return Some((batch.clone(), end));
            }
        }
        let mut events = Vec::new();
        let mut end = pos;
        for (first, batch) in &state.tail {
            let last = first + batch.len() as u64;
            if last <= end {
                continue;
            }
            let from = (end - first) as usize;
            let take = (batch.len() - from).min(max - events.len());
            events.extend_from_slice(&batch[from..from + take]);
            end += take as u64;
            if events.len() >= max {
                break;
            }
        }
        Some((events.into(), end))
    }

    /// Records not yet acknowledged by `sink`.
    pub fn lag(&self, sink: &str) -> u64 {
        let state = self.lock_state();
        let ack = state.acks.get(sink).copied().unwrap_or(0);
        state.next_seq - ack.max(first_base(&state))
    }

    /// Records not yet acknowledged by every sink.
    pub fn spooled(&self) -> u64 {
        let state = self.lock_state();
        state.next_seq - min_ack(&state).max(first_base(&state))
    }

    /// Segment files currently on disk (for tests).
    pub fn segment_count(&self) -> usize {
        self.lock_state().segments.len()
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state as consistent as the last completed
        // step, so carrying on is better than taking the background service down with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn segment_path(&self, base: u64) -> PathBuf {
        self.dir.join(format!("{base:020}.seg"))
    }

    /// Room left for `want` bytes under the bound, after applying `on_full`.
    fn make_room(
        &self,
        state: &mut State,
        writer: &mut Writer,
        want: u64,
        out: &mut Appended,
    ) -> Result<u64, SpoolError> {
        if self.limits.on_full == OnFull::DropOldest {
            while used(state) + want > self.limits.max_bytes && !state.segments.is_empty() {
                if state.segments.len() == 1 && state.active.is_some() {
                    writer.file = None;
                    state.active = None;
                }
                let min = min_ack(state);
                if let Some(seg) = state.segments.pop_front() {
                    out.dropped += seg.end - seg.base.max(min).min(seg.end);
                    fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
                    // What is gone from disk is gone for every reader.
                    while state
                        .tail
                        .front()
                        .is_some_and(|(first, _)| *first < seg.end)
                    {
                        if let Some((_, old)) = state.tail.pop_front() {
                            state.tail_bytes -= old.iter().map(|e| HEADER + e.len()).sum::<usize>();
                        }
                    }
                }
            }
        }
        Ok(self.limits.max_bytes.saturating_sub(used(state)))
    }

    /// Deletes closed segments that every sink has acknowledged.
    fn collect(&self, state: &mut State) -> Result<(), SpoolError> {
        let min = min_ack(state);
        while let Some(seg) = state.segments.front() {
            if seg.end > min || state.active == Some(seg.base) {
                break;
            }
            fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
            state.segments.pop_front();
        }
        Ok(())
    }

    /// Brings the gauges up to date, `tollgate_events_lag_seconds` included (the spool writer
    /// calls this every second when nothing else does, so that a sink's lag keeps growing
    /// while no event arrives).
    pub fn refresh(&self) {
        let mut state = self.lock_state();
        self.refresh_gauges(&mut state);
    }

    fn refresh_gauges(&self, state: &mut State) {
        let first = first_base(state);
        let min = min_ack(state).max(first);
        // Marks before the one holding the oldest record any sink needs are of no more use.
        while state.marks.get(1).is_some_and(|(seq, _)| *seq <= min) {
            state.marks.pop_front();
        }
        self.metrics
            .events_spooled
            .set((state.next_seq - min) as i64);
        let now = SystemTime::now();
        for (sink, ack) in &state.acks {
            let pos = (*ack).max(first);
            self.metrics
                .events_lag
                .with_label_values(&[sink])
                .set((state.next_seq - pos) as i64);
            let age = match state.marks.partition_point(|(seq, _)| *seq <= pos) {
                _ if pos >= state.next_seq => 0.0,
                0 => 0.0,
                i => now
                    .duration_since(state.marks[i - 1].1)
                    .map_or(0.0, |d| d.as_secs_f64()),
            };
            self.metrics
                .events_lag_seconds
                .with_label_values(&[sink])
                .set(age);
        }
    }
}

/// Every other mark, and the first and the last: the oldest record's age never reads younger
/// than it is, and the newest sync keeps its own mark.
fn thin(marks: VecDeque<(u64, SystemTime)>) -> VecDeque<(u64, SystemTime)> {
    let last = marks.len().saturating_sub(1);
    marks
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % 2 == 0 || *i == last)
        .map(|(_, m)| m)
        .collect()
}

/// Bytes of every segment, as far as fsynced.
fn used(state: &State) -> u64 {
    state.segments.iter().map(|g| g.bytes).sum()
}

fn min_ack(state: &State) -> u64 {
    state
        .acks
        .values()
        .copied()
        .min()
        .unwrap_or(state.next_seq)
        .min(state.next_seq)
}

fn first_base(state: &State) -> u64 {
    state
        .segments
        .front()
        .map_or(state.next_seq, |s| s.base)
        .min(state.next_seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> Arc<Spool> {
        let metrics = Arc::new(Metrics::unregistered().unwrap());
        let limits = Limits::new(1 << 30, OnFull::DropNewest);
        Spool::open(dir, &["a".to_string()], limits, metrics).unwrap()
    }

    fn event(n: u64) -> String {
        format!("{{\"n\":{n}}}")
    }

    fn frames(ns: std::ops::Range<u64>) -> Frames {
        let mut f = Frames::default();
        for n in ns {
            assert!(f.push(event(n).as_bytes()));
        }
        f
    }

    fn read_all(spool: &Arc<Spool>) -> Vec<String> {
        let batch = spool.reader("a").next_batch(100).unwrap();
        batch
            .events
            .iter()
            .map(|e| String::from_utf8(e.to_vec()).unwrap())
            .collect()
    }

    /// A write that fails loses its batch and whatever was written unsynced before it; the
    /// segment closes where it was last fsynced, and later records go to a new segment whose
    /// sequence numbers come after the lost ones, so that records of the failed segment that
    /// did reach the disk come back after a restart without two records sharing a number.
    #[test]
    fn a_failed_write_closes_the_segment_and_skips_the_lost_sequence_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open(dir.path());
        assert_eq!(spool.append_frames(&mut frames(0..3)).unwrap().written, 3);
        assert_eq!(spool.write(&mut frames(3..5)).unwrap().unsynced, 2);
        // The next write fails: the writer's handle on the segment becomes a read-only one.
        {
            let path = spool.lock_state().segments.back().unwrap().path.clone();
            let mut writer = spool.writer.lock().unwrap();
            writer.file = Some(File::open(path).unwrap());
        }
        let failed = spool.write(&mut frames(5..9)).unwrap_err();
        assert_eq!(failed.lost, 2 + 4, "{failed}");
        assert_eq!(failed.done.unsynced, 0);
        assert_eq!(spool.append_frames(&mut frames(9..11)).unwrap().written, 2);
        assert_eq!(spool.segment_count(), 2, "a new segment after the failure");
        let expected: Vec<String> = [0, 1, 2, 9, 10].into_iter().map(event).collect();
        assert_eq!(read_all(&spool), expected, "the lost records are skipped");
        drop(spool);

        // The two records written before the failure are in the file whole: after a restart
        // they are delivered, in order, and nothing is numbered twice.
        let spool = open(dir.path());
        let expected: Vec<String> = [0, 1, 2, 3, 4, 9, 10].into_iter().map(event).collect();
        assert_eq!(read_all(&spool), expected);
    }

    #[test]
    fn thinning_keeps_the_first_and_the_last_mark() {
        let t = SystemTime::UNIX_EPOCH;
        let marks: VecDeque<_> = (0..7).map(|i| (i * 10, t)).collect();
        let seqs: Vec<u64> = thin(marks).into_iter().map(|(s, _)| s).collect();
        assert_eq!(seqs, [0, 20, 40, 60]);
        let marks: VecDeque<_> = (0..6).map(|i| (i * 10, t)).collect();
        let seqs: Vec<u64> = thin(marks).into_iter().map(|(s, _)| s).collect();
        assert_eq!(seqs, [0, 20, 40, 50]);
    }

    #[test]
    fn lag_in_seconds_is_zero_once_a_sink_has_every_event() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open(dir.path());
        let lag = || {
            spool
                .metrics
                .events_lag_seconds
                .with_label_values(&["a"])
                .get()
        };
        assert_eq!(lag(), 0.0, "nothing spooled");
        spool.append_frames(&mut frames(0..3)).unwrap();
        spool.write(&mut frames(3..5)).unwrap();
        spool.refresh();
        let waiting = lag();
        assert!((0.0..5.0).contains(&waiting), "{waiting}");
        spool.ack("a", 3).unwrap();
        assert_eq!(
            lag(),
            0.0,
            "the unsynced records are not yet the sink's to read"
        );
        spool.sync().unwrap();
        spool.refresh();
        assert!(lag() >= 0.0 && spool.lag("a") == 2);
        spool.ack("a", 5).unwrap();
        assert_eq!(lag(), 0.0);
        assert!(
            spool.lock_state().marks.len() <= 1,
            "marks of acknowledged records are dropped"
        );
    }
}
