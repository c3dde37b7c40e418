//! Store-and-forward buffer: a durable FIFO of opaque messages, one per sink (MQTT broker, IoT
//! Hub), so nothing a broker has not acknowledged is lost to a disconnect, a restart or `kill -9`.
//!
//! - [`Buffer`]: append (fsynced before it returns), hand out in order, acknowledge (in any
//!   order), rewind after a reconnect, bounded by `max_bytes` with the `when_full` policy.
//! - `segment`: segment files and the record format; `cursor`: the persisted ack low-water mark;
//!   `files`: the directory scan, durable creates and deletes, reads, free space.
//! - [`outbox`]: what encoders and senders share (seq and epoch: [`seq`], dead letters: [`dead`]).
//! - [`error`]: [`BufferError`], naming path and operation.
//!
//! A message leaves the buffer only when it is acknowledged. After a crash, messages that were
//! acknowledged less than 200 ms before it (the cursor is saved at most every 200 ms) are handed
//! out again: consumers drop such repeats by the payload's `seq`. See `docs/buffer.md`.

mod cursor;
pub mod dead;
pub mod error;
mod files;
pub mod outbox;
mod segment;
pub mod seq;

use std::collections::{BTreeSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::config::{BufferConfig, WhenFull};
pub use error::BufferError;
use files::*;
pub use files::{free_bytes, is_no_space};
use segment::{Segment, HEADER_LEN};

/// The ack cursor is written at most this often (and on `close` / drop).
pub const CURSOR_INTERVAL: Duration = Duration::from_millis(200);

const ACTIVE: &str = "a buffer always has an active segment";

/// Counters and levels of one buffer, for metrics. Counters count since `open`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BufferStats {
    /// Bytes of records in segment files.
    pub bytes_on_disk: u64,
    /// Messages not yet acknowledged (handed out or not).
    pub pending: u64,
    /// Age of the oldest pending message, from its append time.
    pub oldest_pending_age: Option<Duration>,
    pub appended: u64,
    pub acked: u64,
    /// Pending messages evicted to make room (`when_full = "drop_oldest"`).
    pub dropped: u64,
    /// Messages found pending at `open` (from before a restart or crash), handed out again.
    pub replayed: u64,
    /// Torn or corrupt segment tails cut away at `open`.
    pub truncated: u64,
    /// Records that failed their CRC when read back after `open` (logged, skipped).
    pub corrupt: u64,
}

/// A durable FIFO of messages in `dir/<name>/`. One `Buffer` per directory and process.
#[derive(Debug)]
pub struct Buffer {
    name: String,
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    when_full: WhenFull,
    /// Free space to leave on the file system; below it the buffer counts as full.
    min_free: u64,
    /// The free space last read (statvfs) and when: read again after a second, after
    /// 1 MiB appended, or after a segment was deleted.
    free: Option<(Instant, u64)>,
    appended_since_free: u64,
    /// Oldest first; the last one is the active segment that `writer` appends to. Never empty.
    segments: VecDeque<Segment>,
    writer: File,
    /// A failed append could not be cut off again: the next append starts a new segment.
    writer_broken: bool,
    /// A read handle on the segment with the given first id.
    reader: Option<(u64, File)>,
    next_id: u64,
    /// Every stored id up to here is acknowledged (or was dropped).
    acked_low: u64,
    /// Acknowledged ids above `acked_low` (acks out of order).
    acked_above: BTreeSet<u64>,
    /// `next_unsent` continues from here.
    next_send: u64,
    pending: u64,
    bytes: u64,
    oldest_pending_us: Option<i64>,
    /// The last append was refused for want of room, and nothing was freed since.
    full: bool,
    /// `acked_low` or `acked_above` changed since the cursor was last saved.
    cursor_dirty: bool,
    cursor_saved_at: Instant,
    stats: BufferStats,
    scratch: Vec<u8>,
}

impl Buffer {
    /// Opens (creating if needed) the buffer `cfg.dir/<name>/` and recovers what a crash left:
    /// torn or corrupt tail records are cut away (logged, counted), every stored message not
    /// covered by the ack cursor is pending again, and ids continue after the last one stored.
    pub fn open(cfg: &BufferConfig, name: &str) -> Result<Buffer, BufferError> {
        check_name(name)?;
        let segment_bytes = cfg
            .segment_bytes
            .min(cfg.max_bytes / 2)
            .min(u64::from(u32::MAX));
        if segment_bytes <= HEADER_LEN as u64 {
            return Err(BufferError::Config(format!(
                "max_bytes {} and segment_bytes {} leave no room for a message",
                cfg.max_bytes, cfg.segment_bytes
            )));
        }
        let dir = cfg.dir.join(name);
        fs::create_dir_all(&dir).map_err(|e| BufferError::io("create directory", &dir, e))?;
        let tmp = dir.join(cursor::TMP_FILE);
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(BufferError::io("remove", tmp, e)),
        }

        let (acked_low, acked_above) = match cursor::read(&dir)? {
            cursor::Stored::Missing => (0, Vec::new()),
            cursor::Stored::Acked { low, above } => (low, above),
            cursor::Stored::Unusable(reason) => {
                warn!(
                    buffer = %name,
                    file = %dir.join(cursor::FILE).display(),
                    reason,
                    "ack cursor unusable; every stored message will be sent again"
                );
                (0, Vec::new())
            }
        };

        let mut stats = BufferStats::default();
        let mut segments = recover_segments(&dir, &mut stats)?;
        // Segments before the active one that hold nothing pending are left-overs of deletes
        // that a crash interrupted.
        while segments.len() > 1 && segments[0].end_id() <= acked_low + 1 {
            if let Some(seg) = segments.pop_front() {
                debug!(buffer = %name, file = %seg.path.display(), "removing acknowledged segment");
                remove_segment_file(&seg.path)?;
            }
        }
        while segments.len() > 1 && segments[0].is_empty() {
            if let Some(seg) = segments.pop_front() {
                remove_segment_file(&seg.path)?;
            }
        }

        let next_id = segments
            .back()
            .map_or(1, Segment::end_id)
            .max(acked_low + 1);
        // The active segment must continue at `next_id`; when the cursor is ahead of the
        // stored records (their tail was cut), or nothing is stored, start a new one.
        let reuse = segments.back().is_some_and(|s| s.end_id() == next_id);
        let writer = if reuse {
            let path = &segments.back().expect(ACTIVE).path;
            OpenOptions::new()
                .append(true)
                .open(path)
                .map_err(|e| BufferError::io("open segment", path, e))?
        } else {
            if let Some(last) = segments.back() {
                if last.is_empty() {
                    remove_segment_file(&last.path)?;
                    segments.pop_back();
                }
            }
            let path = dir.join(segment::file_name(next_id));
            let file = create_segment(&dir, &path)?;
            segments.push_back(Segment::new(next_id, path));
            file
        };

        let pending: u64 = segments
            .iter()
            .map(|s| s.end_id().saturating_sub(s.first_id.max(acked_low + 1)))
            .sum();
        let bytes = segments.iter().map(|s| s.len).sum();
        let mut buffer = Buffer {
            name: name.to_string(),
            dir,
            max_bytes: cfg.max_bytes,
            segment_bytes,
            when_full: cfg.when_full,
            min_free: cfg.min_free,
            free: None,
            appended_since_free: 0,
            segments,
            writer,
            writer_broken: false,
            reader: None,
            next_id,
            acked_low,
            acked_above: BTreeSet::new(),
            next_send: acked_low + 1,
            pending,
            bytes,
            oldest_pending_us: None,
            full: false,
            cursor_dirty: false,
            cursor_saved_at: Instant::now(),
            stats,
            scratch: Vec::new(),
        };
        for id in acked_above {
            if id > buffer.acked_low
                && buffer.segment_index(id).is_some()
                && buffer.acked_above.insert(id)
            {
                buffer.pending -= 1;
            }
        }
        buffer.advance_low();
        buffer.next_send = buffer.acked_low + 1;
        buffer.delete_acked_segments()?;
        buffer.refresh_oldest();
        buffer.stats.replayed = buffer.pending;
        if buffer.pending > 0 {
            info!(
                buffer = %name,
                pending = buffer.pending,
                "buffer holds unacknowledged messages from before; sending them again"
            );
        }
        Ok(buffer)
    }

    /// Stores `msg` and returns its id (ids increase by one per message and across restarts).
    /// The record is written and fsynced before this returns `Ok`, so it survives a crash or a
    /// power loss. On `Err` nothing is stored and the buffer stays usable.
    pub fn append(&mut self, msg: &[u8]) -> Result<u64, BufferError> {
        let record_len = HEADER_LEN as u64 + msg.len() as u64;
        if record_len > self.segment_bytes {
            return Err(BufferError::TooLarge {
                len: msg.len(),
                max: self.segment_bytes - HEADER_LEN as u64,
            });
        }
        // A full file system is handled like a full buffer: evict (drop_oldest) and try again,
        // or refuse (pause); a few rounds at most, each frees a segment.
        for _ in 0..4 {
            match self.try_append(msg, record_len) {
                Err(e @ BufferError::Io { .. }) if e.is_no_space() => {
                    self.free = None;
                    self.evict_for_space(&e.to_string())?;
                }
                other => return other,
            }
        }
        Err(BufferError::NoSpace {
            name: self.name.clone(),
            detail: "still no space after evicting".into(),
        })
    }

    fn try_append(&mut self, msg: &[u8], record_len: u64) -> Result<u64, BufferError> {
        self.make_room(record_len)?;
        let active = self.segments.back().expect(ACTIVE);
        if self.writer_broken
            || (!active.is_empty() && active.len + record_len > self.segment_bytes)
        {
            self.roll()?;
        }

        let id = self.next_id;
        let time_us = now_us();
        segment::encode(id, time_us, msg, &mut self.scratch);
        let active = self.segments.back_mut().expect(ACTIVE);
        let offset = active.len;
        if let Err((op, e)) = write_record(&mut self.writer, &self.scratch) {
            // Cut the partial record so that the file stays a sequence of whole records.
            let undo = self
                .writer
                .set_len(offset)
                .and_then(|()| self.writer.sync_data());
            if let Err(undo) = undo {
                warn!(
                    buffer = %self.name,
                    file = %active.path.display(),
                    offset,
                    error = %undo,
                    "cannot cut a failed append; the next append starts a new segment"
                );
                self.writer_broken = true;
            }
            return Err(BufferError::io(op, &active.path, e));
        }
        active.offsets.push(offset as u32);
        active.len += record_len;
        self.bytes += record_len;
        self.next_id += 1;
        if self.pending == 0 {
            self.oldest_pending_us = Some(time_us);
        }
        self.pending += 1;
        self.stats.appended += 1;
        self.appended_since_free += record_len;
        self.full = false;
        self.save_cursor_logged();
        Ok(id)
    }

    /// Up to `max` messages, in id order, that were not handed out since `open` or the last
    /// `rewind` and are not acknowledged.
    pub fn next_unsent(&mut self, max: usize) -> Result<Vec<(u64, Vec<u8>)>, BufferError> {
        let mut out = Vec::new();
        let mut corrupt = Vec::new();
        let mut id = self.next_send.max(self.acked_low + 1);
        while out.len() < max {
            let Some(from) = self.first_stored_from(id) else {
                id = self.next_id;
                break;
            };
            let Some(idx) = self.segment_index(from) else {
                break;
            };
            let seg = &self.segments[idx];
            let to = seg
                .end_id()
                .min(from.saturating_add((max - out.len()) as u64));
            let (start, end) = seg.span(from, to);
            let bytes = read_span(&mut self.reader, seg, start, end)?;
            for rid in from..to {
                if self.acked_above.contains(&rid) {
                    continue;
                }
                let (rs, re) = seg.span(rid, rid + 1);
                let record = &bytes[(rs - start) as usize..(re - start) as usize];
                match segment::verify(record, rid) {
                    Ok(_) => out.push((rid, record[HEADER_LEN..].to_vec())),
                    Err(reason) => {
                        warn!(
                            buffer = %self.name,
                            file = %seg.path.display(),
                            offset = rs,
                            id = rid,
                            reason,
                            "buffered record unreadable; skipping it (counted as corrupt)"
                        );
                        corrupt.push(rid);
                    }
                }
            }
            id = to;
        }
        self.next_send = id;
        for rid in corrupt {
            self.stats.corrupt += 1;
            if let Err(e) = self.settle(rid) {
                warn!(buffer = %self.name, error = %e, "cannot settle a corrupt record");
            }
        }
        self.save_cursor_logged();
        Ok(out)
    }

    /// The stored message `id`, if it is still pending (for moving it aside).
    pub fn read(&mut self, id: u64) -> Result<Option<Vec<u8>>, BufferError> {
        if id <= self.acked_low || self.acked_above.contains(&id) {
            return Ok(None);
        }
        let Some(idx) = self.segment_index(id) else {
            return Ok(None);
        };
        let seg = &self.segments[idx];
        let (start, end) = seg.span(id, id + 1);
        let record = read_span(&mut self.reader, seg, start, end)?;
        Ok(segment::verify(&record, id)
            .ok()
            .map(|_| record[HEADER_LEN..].to_vec()))
    }

    /// Hands out every unacknowledged message again, in order (after a reconnect, when the
    /// broker may not have received what was in flight).
    pub fn rewind(&mut self) {
        self.next_send = self.acked_low + 1;
    }

    /// Marks `id` as delivered. Acks may come in any order; repeated acks and acks of dropped
    /// messages are ignored. On `Err` (persisting the cursor or deleting a segment failed) the
    /// ack itself is recorded and the failed step is retried later.
    pub fn ack(&mut self, id: u64) -> Result<(), BufferError> {
        if id >= self.next_id {
            return Err(BufferError::UnknownId {
                id,
                next_id: self.next_id,
            });
        }
        if id <= self.acked_low
            || self.acked_above.contains(&id)
            || self.segment_index(id).is_none()
        {
            return Ok(());
        }
        self.stats.acked += 1;
        self.settle(id)
    }

    /// Persists the ack cursor if it changed and [`CURSOR_INTERVAL`] has passed since the last
    /// save; call it from the sender's idle timer so the last acks of a burst are saved.
    pub fn save_cursor_if_due(&mut self) -> Result<(), BufferError> {
        if !self.cursor_dirty || self.cursor_saved_at.elapsed() < CURSOR_INTERVAL {
            return Ok(());
        }
        self.save_cursor()
    }

    /// Saves the ack cursor and closes the buffer. Dropping it does the same, but only logs
    /// errors.
    pub fn close(mut self) -> Result<(), BufferError> {
        if self.cursor_dirty {
            self.save_cursor()?;
        }
        sync_dir(&self.dir)
    }

    pub fn stats(&self) -> BufferStats {
        let oldest_pending_age = self
            .oldest_pending_us
            .map(|t| Duration::from_micros(now_us().saturating_sub(t).max(0) as u64));
        BufferStats {
            bytes_on_disk: self.bytes,
            pending: self.pending,
            oldest_pending_age,
            ..self.stats.clone()
        }
    }

    /// With `when_full = "pause"`: the last append was refused for want of room and no segment
    /// has been freed since (or the files reach `max_bytes`). Stop taking input until false.
    pub fn is_full(&self) -> bool {
        self.when_full == WhenFull::Pause && (self.full || self.bytes >= self.max_bytes)
    }

    /// The sink name, i.e. the buffer's subdirectory.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Frees room for a record of `record_len` bytes, or refuses it (pause).
    fn make_room(&mut self, record_len: u64) -> Result<(), BufferError> {
        while let Some(free) = self.low_on_disk(record_len) {
            let detail = format!(
                "{free} bytes free on the file system of {}, min_free {}",
                self.dir.display(),
                self.min_free
            );
            self.evict_for_space(&detail)?;
        }
        while self.bytes + record_len > self.max_bytes {
            let active = self.segments.back().expect(ACTIVE);
            if !active.is_empty() && active.end_id() <= self.acked_low + 1 {
                // Everything is acknowledged: a new segment lets the old one be deleted.
                self.roll()?;
                continue;
            }
            match self.when_full {
                WhenFull::Pause => {
                    self.full = true;
                    return Err(BufferError::Full {
                        name: self.name.clone(),
                        bytes: self.bytes,
                        max_bytes: self.max_bytes,
                    });
                }
                WhenFull::DropOldest => self.evict_oldest()?,
            }
        }
        Ok(())
    }

    /// `Some(free bytes)` when appending `record_len` bytes would leave less than `min_free`.
    fn low_on_disk(&mut self, record_len: u64) -> Option<u64> {
        if self.min_free == 0 {
            return None;
        }
        let stale = match self.free {
            None => true,
            Some((at, _)) => {
                at.elapsed() >= Duration::from_secs(1) || self.appended_since_free >= 1 << 20
            }
        };
        if stale {
            let free = free_bytes(&self.dir);
            self.free = Some((Instant::now(), free));
            self.appended_since_free = 0;
        }
        let free = self.free.map_or(u64::MAX, |(_, f)| f);
        let left = free.saturating_sub(self.appended_since_free + record_len);
        (left < self.min_free).then_some(free)
    }

    /// The file system is full or below `min_free`: `drop_oldest` evicts the oldest segment
    /// (if anything is stored), `pause` refuses.
    fn evict_for_space(&mut self, detail: &str) -> Result<(), BufferError> {
        let active = self.segments.back().expect(ACTIVE);
        let nothing_stored = self.segments.len() == 1 && active.is_empty();
        if nothing_stored {
            self.full = true;
            return Err(BufferError::NoSpace {
                name: self.name.clone(),
                detail: detail.to_owned(),
            });
        }
        self.free = None;
        if self.pending == 0 {
            // Everything stored is delivered: a new segment lets the old ones go (whatever
            // the policy); nothing pending is dropped.
            return self.roll();
        }
        if self.when_full == WhenFull::Pause {
            self.full = true;
            return Err(BufferError::NoSpace {
                name: self.name.clone(),
                detail: detail.to_owned(),
            });
        }
        self.evict_oldest()
    }

    /// Deletes the oldest segment, counting its pending messages as dropped.
    fn evict_oldest(&mut self) -> Result<(), BufferError> {
        if self.segments.len() == 1 {
            if self.segments[0].is_empty() {
                // Unreachable: a record is at most max_bytes / 2.
                return Err(BufferError::TooLarge {
                    len: 0,
                    max: self.max_bytes,
                });
            }
            self.roll()?;
            if self.segments.len() == 1 {
                // The old segment was all acknowledged and is gone already; never drop the
                // new active one.
                return Ok(());
            }
        }
        let Some(seg) = self.segments.pop_front() else {
            return Ok(());
        };
        self.forget_reader(seg.first_id);
        let from = seg.first_id.max(self.acked_low + 1);
        let acked = self.acked_above.range(from..seg.end_id()).count() as u64;
        let dropped = seg.end_id().saturating_sub(from) - acked;
        self.acked_low = self.acked_low.max(seg.end_id().saturating_sub(1));
        self.acked_above = self.acked_above.split_off(&(self.acked_low + 1));
        self.pending -= dropped;
        self.stats.dropped += dropped;
        self.cursor_dirty = true;
        self.bytes -= seg.len;
        self.advance_low();
        self.refresh_oldest();
        warn!(
            buffer = %self.name,
            file = %seg.path.display(),
            dropped,
            "buffer full: dropped the oldest segment (when_full = drop_oldest)"
        );
        remove_segment_file(&seg.path)
    }

    /// Starts a new active segment at `next_id` and deletes the old one if fully acknowledged.
    fn roll(&mut self) -> Result<(), BufferError> {
        let active = self.segments.back().expect(ACTIVE);
        if active.is_empty() {
            // Nothing to keep: start the same file over (cuts what a failed append left).
            self.writer
                .set_len(0)
                .map_err(|e| BufferError::io("truncate segment", &active.path, e))?;
            self.writer_broken = false;
            return Ok(());
        }
        let path = self.dir.join(segment::file_name(self.next_id));
        self.writer = create_segment(&self.dir, &path)?;
        self.writer_broken = false;
        self.segments.push_back(Segment::new(self.next_id, path));
        self.delete_acked_segments()
    }

    /// `id` is stored and pending: mark it done and advance the low-water mark.
    fn settle(&mut self, id: u64) -> Result<(), BufferError> {
        self.pending -= 1;
        self.acked_above.insert(id);
        self.cursor_dirty = true;
        if self.advance_low() {
            self.refresh_oldest();
            self.delete_acked_segments()?;
        }
        self.save_cursor_if_due()
    }

    /// Moves `acked_low` over contiguous acknowledged ids; true if it moved.
    fn advance_low(&mut self) -> bool {
        let before = self.acked_low;
        while let Some(next) = self.first_stored_from(self.acked_low + 1) {
            if !self.acked_above.remove(&next) {
                break;
            }
            self.acked_low = next;
        }
        self.acked_low != before
    }

    /// Deletes the segments before the active one whose messages are all acknowledged.
    fn delete_acked_segments(&mut self) -> Result<(), BufferError> {
        while self.segments.len() > 1 && self.segments[0].end_id() <= self.acked_low + 1 {
            let Some(seg) = self.segments.pop_front() else {
                break;
            };
            self.forget_reader(seg.first_id);
            self.bytes -= seg.len;
            self.full = false;
            self.free = None;
            debug!(buffer = %self.name, file = %seg.path.display(), "deleting acknowledged segment");
            remove_segment_file(&seg.path)?;
        }
        Ok(())
    }

    /// The smallest stored id at or after `id`.
    fn first_stored_from(&self, id: u64) -> Option<u64> {
        let i = self.segments.partition_point(|s| s.end_id() <= id);
        self.segments
            .range(i..)
            .find(|s| !s.is_empty())
            .map(|s| s.first_id.max(id))
    }

    /// The index of the segment holding `id`.
    fn segment_index(&self, id: u64) -> Option<usize> {
        let i = self.segments.partition_point(|s| s.end_id() <= id);
        self.segments.get(i).filter(|s| s.contains(id)).map(|_| i)
    }

    /// Reads the append time of the oldest pending message.
    fn refresh_oldest(&mut self) {
        self.oldest_pending_us = None;
        let Some(id) = self.first_stored_from(self.acked_low + 1) else {
            return;
        };
        let Some(idx) = self.segment_index(id) else {
            return;
        };
        let seg = &self.segments[idx];
        let (start, _) = seg.span(id, id + 1);
        match read_span(&mut self.reader, seg, start, start + HEADER_LEN as u64) {
            Ok(bytes) => {
                if let Some(head) = bytes.first_chunk::<HEADER_LEN>() {
                    self.oldest_pending_us = Some(segment::Header::parse(head).time_us);
                }
            }
            Err(e) => {
                warn!(buffer = %self.name, error = %e, "cannot read the oldest message's time")
            }
        }
    }

    fn forget_reader(&mut self, first_id: u64) {
        if self.reader.as_ref().is_some_and(|(f, _)| *f == first_id) {
            self.reader = None;
        }
    }

    fn save_cursor(&mut self) -> Result<(), BufferError> {
        cursor::write(&self.dir, self.acked_low, self.acked_above.iter().copied())?;
        self.cursor_dirty = false;
        self.cursor_saved_at = Instant::now();
        Ok(())
    }

    /// For calls whose own work succeeded: a failed cursor save is logged and retried later.
    fn save_cursor_logged(&mut self) {
        if let Err(e) = self.save_cursor_if_due() {
            warn!(buffer = %self.name, error = %e, "cannot save the ack cursor; will retry");
        }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if self.cursor_dirty {
            if let Err(e) = self.save_cursor() {
                warn!(buffer = %self.name, error = %e, "cannot save the ack cursor on close");
            }
        }
    }
}

#[cfg(test)]
mod tests;
