//! The Parquet sink of one PLC: buffers samples into record batches, writes them into the open
//! chunk of their UTC day, rolls chunks by rows / bytes / age / day, names and places them in
//! Hive partitions.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ::parquet::file::metadata::KeyValue;
use ::parquet::file::properties::WriterProperties;
use chrono::{DateTime, Utc};

use super::error::ParquetError;
use super::schema::{
    META_CONNECTOR_VERSION, META_LINE, META_PLC, META_SCHEMA_VERSION, META_SITE, PARTITION_DATE,
    PARTITION_LINE,
};
use super::table::{Rows, Table};
use super::writer::{self, ChunkInfo, ChunkWriter};
use crate::config::{Line, ParquetSinkConfig};
use crate::sample::Sample;

/// Rows buffered in Arrow builders before they are encoded into the open chunk as one record
/// batch; bounds the memory of the builders.
pub const BATCH_ROWS: usize = 65_536;

/// A record batch is also written once its variable-length values (strings, byte strings,
/// JSON) reach this many bytes, so that large values never approach Arrow's 2 GiB offset
/// limit of a column and memory stays bounded. One value is at most 16 MiB (strings, byte
/// strings) or one OPC UA message (64 MiB, arrays and structures as JSON): the session's
/// decoding limits.
pub const BATCH_VAR_BYTES: usize = 64 << 20;

/// Assumed encoded size of a buffered row while nothing of the chunk has been encoded yet
/// (used only for the `roll_bytes` check; real data is 2-8 B/row).
const ASSUMED_BYTES_PER_ROW: u64 = 8;

const CHUNK_SUFFIX: &str = ".parquet";
const TEMP_SUFFIX: &str = ".tmp";

/// Counters of one sink.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParquetSinkStats {
    /// Rows in completed (renamed, durable) chunks.
    pub rows_written: u64,
    /// Completed chunks.
    pub chunks_written: u64,
    /// Bytes of completed chunks.
    pub bytes_written: u64,
    /// Rows accepted into the chunk that is still open.
    pub rows_open: u64,
    /// Rows lost because writing their chunk failed (the error was returned to the caller).
    pub rows_discarded: u64,
    /// Temporary files of interrupted chunks removed at start.
    pub temp_files_removed: u64,
    /// The most recently completed chunk.
    pub last_chunk: Option<ChunkInfo>,
}

/// At most this many chunks are open at once, each for samples of another UTC day. Two cover
/// midnight (late samples of the old day beside the new one); the third takes a sample with an
/// old source timestamp (a value unchanged for days) without closing either. Opening one more
/// completes the chunk written least recently.
pub const MAX_OPEN_CHUNKS: usize = 3;

/// A chunk of a day that the wall clock has left is completed once no sample has reached it
/// for this long: `date=` partitions of past days are then complete shortly after midnight,
/// while a PLC whose clock lags still fills its chunk until its own midnight.
pub const PAST_DAY_GRACE: Duration = Duration::from_secs(10);

const US_PER_DAY: i64 = 86_400_000_000;
/// Days since 1970-01-01 of 0000-01-01 and 9999-12-31: the days a chunk name can show.
const FIRST_NAMEABLE_DAY: i64 = -719_528;
const LAST_NAMEABLE_DAY: i64 = 2_932_896;

/// Writes the samples of one PLC into rolling Parquet chunk files.
///
/// Layout: `DIR/line=<line>/date=YYYY-MM-DD/<plc>-YYYYMMDDTHHMMSSZ-NNNNNN.parquet`. A chunk
/// holds the samples of one UTC day (by their `time`), the day of its `date=` partition; date
/// and time of the name are those of its first sample. `NNNNNN` is a sequence that continues
/// after the existing chunks of this PLC in the directory. A chunk is written as
/// `.<name>.parquet.tmp`, fsynced, renamed, and the directory fsynced.
pub struct ParquetSink {
    cfg: ParquetSinkConfig,
    plc: String,
    /// What it writes; a samples sink hands events on to `events`, opened at the first.
    table: Table,
    events: Option<Box<ParquetSink>>,
    events_retention: Option<std::sync::Arc<super::retention::Retention>>,
    line: Line,
    /// `DIR/line=<line>` (`EVENTS_DIR/line=<line>` for events)
    base: PathBuf,
    props: WriterProperties,
    batch_rows: usize,
    /// The open chunks, one per day, the one written least recently first.
    open: Vec<OpenChunk>,
    /// The builder of the last completed chunk, emptied, for the next one.
    spare: Option<Rows>,
    next_seq: u64,
    /// The partition directory whose existing chunks were last scanned for the sequence.
    scanned_dir: Option<PathBuf>,
    stats: ParquetSinkStats,
    /// The line's retention, told of every completed chunk.
    retention: Option<std::sync::Arc<super::retention::Retention>>,
}

/// An open chunk, the rows buffered for it, and when it last got a sample.
struct OpenChunk {
    /// UTC day of its samples, in days since 1970-01-01.
    day: i64,
    writer: ChunkWriter,
    builder: Rows,
    last_sample_at: SystemTime,
}

impl OpenChunk {
    /// Rows in the chunk: encoded and buffered.
    fn rows(&self) -> u64 {
        self.writer.rows() + self.builder.rows() as u64
    }
}

impl std::fmt::Debug for ParquetSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let open: Vec<&Path> = self.open.iter().map(|c| c.writer.path()).collect();
        f.debug_struct("ParquetSink")
            .field("base", &self.base)
            .field("plc", &self.plc)
            .field("open_chunks", &open)
            .field("stats", &self.stats)
            .finish()
    }
}

impl ParquetSink {
    /// Prepares `DIR/line=<line>` and removes temporary files that an interrupted run of this
    /// PLC's sink left behind (each is logged with a warning and counted in
    /// [`ParquetSinkStats::temp_files_removed`]). No file is opened until the first sample.
    pub fn new(cfg: ParquetSinkConfig, line: Line, plc: &str) -> Result<Self, ParquetError> {
        Self::of(Table::Samples, cfg, line, plc)
    }

    /// A sink of `table`: the samples under `dir`, the events under `events_dir`.
    fn of(
        table: Table,
        cfg: ParquetSinkConfig,
        line: Line,
        plc: &str,
    ) -> Result<Self, ParquetError> {
        check_id("line id", &line.id)?;
        check_id("plc id", plc)?;
        let mut key_value = vec![
            KeyValue::new(META_SCHEMA_VERSION.to_string(), table.version().to_string()),
            KeyValue::new(META_LINE.to_string(), line.id.clone()),
        ];
        if let Some(site) = &line.site {
            key_value.push(KeyValue::new(META_SITE.to_string(), site.clone()));
        }
        key_value.push(KeyValue::new(META_PLC.to_string(), plc.to_string()));
        key_value.push(KeyValue::new(
            META_CONNECTOR_VERSION.to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ));
        let props = writer::writer_properties(cfg.compression, key_value, table)?;

        let root = match table {
            Table::Samples => &cfg.dir,
            Table::Events => &cfg.events_dir,
        };
        let base = root.join(format!("{PARTITION_LINE}={}", line.id));
        if table == Table::Samples {
            // The events sink opens at the first event; what a crash left of its chunks goes
            // now.
            let events = cfg.events_dir.join(format!("{PARTITION_LINE}={}", line.id));
            if events.is_dir() {
                remove_temp_files(&events, plc)?;
            }
        }
        writer::create_dir_durable(&base)?;
        let removed = remove_temp_files(&base, plc)?;

        Ok(ParquetSink {
            table,
            events: None,
            events_retention: None,
            line,
            batch_rows: BATCH_ROWS,
            cfg,
            plc: plc.to_string(),
            base,
            props,
            open: Vec::with_capacity(MAX_OPEN_CHUNKS),
            spare: None,
            next_seq: 1,
            scanned_dir: None,
            retention: None,
            stats: ParquetSinkStats {
                temp_files_removed: removed,
                ..Default::default()
            },
        })
    }

    /// Completed chunks are added to the line's `retention`, which applies its limits.
    pub fn with_retention(
        mut self,
        retention: std::sync::Arc<super::retention::Retention>,
    ) -> Self {
        self.retention = Some(retention);
        self
    }

    /// `DIR/line=<line>`, where this line's chunks go.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// Rows per record batch (default [`BATCH_ROWS`]); smaller values bound memory further.
    pub fn with_batch_rows(mut self, rows: usize) -> Self {
        self.batch_rows = rows.max(1);
        self
    }

    /// Appends samples to the open chunk of their UTC day (opening one if needed) and rolls a
    /// chunk when it reaches `roll_rows`, `roll_bytes` or `roll_interval`. On error the chunk
    /// concerned is given up (its temporary file removed; its rows and the rest of `samples`
    /// are counted in [`ParquetSinkStats::rows_discarded`]) and the next call starts afresh.
    pub fn write(&mut self, samples: &[Sample]) -> Result<(), ParquetError> {
        let now = SystemTime::now();
        if self.table == Table::Samples && samples.iter().any(|s| Table::Events.holds(s)) {
            // Events go to their own table (a batch of an event stream holds only events).
            if samples.iter().all(|s| Table::Events.holds(s)) {
                return self.events_sink()?.write_at(samples, now);
            }
            let (events, rows): (Vec<Sample>, Vec<Sample>) = samples
                .iter()
                .cloned()
                .partition(|s| Table::Events.holds(s));
            let written = self.events_sink().and_then(|e| e.write_at(&events, now));
            return self.write_at(&rows, now).and(written);
        }
        self.write_at(samples, now)
    }

    /// The sink of this PLC's events, opened at the first event.
    fn events_sink(&mut self) -> Result<&mut ParquetSink, ParquetError> {
        if self.events.is_none() {
            let mut sink = Self::of(
                Table::Events,
                self.cfg.clone(),
                self.line.clone(),
                &self.plc,
            )?;
            sink.retention = self.events_retention.clone();
            self.events = Some(Box::new(sink));
        }
        Ok(self.events.as_deref_mut().expect("opened above"))
    }

    /// Counters of the events table (`None` before the first event).
    pub fn events_stats(&self) -> Option<ParquetSinkStats> {
        self.events.as_ref().map(|e| e.stats())
    }

    /// Completed event chunks go to `retention` (of the events directory).
    pub fn with_events_retention(
        mut self,
        retention: std::sync::Arc<super::retention::Retention>,
    ) -> Self {
        self.events_retention = Some(retention);
        self
    }

    /// [`ParquetSink::write`] with the wall clock reading `now`.
    pub(crate) fn write_at(
        &mut self,
        samples: &[Sample],
        now: SystemTime,
    ) -> Result<(), ParquetError> {
        if let Err(e) = self.roll_due(now) {
            self.stats.rows_discarded += samples.len() as u64;
            return Err(e);
        }
        for (i, sample) in samples.iter().enumerate() {
            let idx = match self.chunk_for(sample.time_us, now) {
                Ok(idx) => idx,
                Err(e) => {
                    self.stats.rows_discarded += (samples.len() - i) as u64;
                    return Err(e);
                }
            };
            // On error the sample is already counted with its chunk.
            if let Err(e) = self.append(idx, sample, now) {
                self.stats.rows_discarded += (samples.len() - i - 1) as u64;
                return Err(e);
            }
        }
        let mut idx = 0;
        while idx < self.open.len() {
            if self.bytes_limit_reached(idx) {
                self.finish_chunk(idx)?;
            } else {
                idx += 1;
            }
        }
        Ok(())
    }

    /// Rolls the chunks that are due: open for `roll_interval`, or of a day the wall clock has
    /// left and without a sample for [`PAST_DAY_GRACE`]. Returns the last one completed. Call
    /// it periodically (e.g. every second) so that a quiet PLC's chunks are completed too.
    pub fn tick(&mut self, now: SystemTime) -> Result<Option<ChunkInfo>, ParquetError> {
        if let Some(r) = &self.retention {
            r.tick();
        }
        let events = match self.events.as_deref_mut() {
            Some(e) => e.tick(now).map(|_| ()),
            None => Ok(()),
        };
        let rolled = self.roll_due(now);
        events.and(rolled)
    }

    /// Completes the open chunks, if any; returns the one written last.
    pub fn close(&mut self) -> Result<Option<ChunkInfo>, ParquetError> {
        let mut last = None;
        let mut first_error = None;
        if let Some(e) = self.events.as_deref_mut() {
            if let Err(e) = e.close() {
                first_error = Some(e);
            }
        }
        while !self.open.is_empty() {
            match self.finish_chunk(0) {
                Ok(info) => last = info.or(last),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(last),
        }
    }

    pub fn stats(&self) -> ParquetSinkStats {
        let mut stats = self.stats.clone();
        stats.rows_open = self.open.iter().map(OpenChunk::rows).sum();
        stats
    }

    /// The final path of the open chunk written last.
    pub fn open_chunk_path(&self) -> Option<&Path> {
        self.open.last().map(|c| c.writer.path())
    }

    /// The final paths of the open chunks, the one written least recently first.
    pub fn open_chunk_paths(&self) -> Vec<&Path> {
        self.open.iter().map(|c| c.writer.path()).collect()
    }

    /// The index of the open chunk for a sample at `time_us`, opened if needed. It becomes
    /// the last in `open` (written most recently).
    fn chunk_for(&mut self, time_us: i64, now: SystemTime) -> Result<usize, ParquetError> {
        let day = sample_day(time_us).unwrap_or_else(|| clock_day(now));
        if self.open.last().is_some_and(|c| c.day == day) {
            return Ok(self.open.len() - 1);
        }
        if let Some(pos) = self.open.iter().position(|c| c.day == day) {
            let chunk = self.open.remove(pos);
            self.open.push(chunk);
            return Ok(self.open.len() - 1);
        }
        if self.open.len() >= MAX_OPEN_CHUNKS {
            self.finish_chunk(0)?;
        }
        self.open_chunk(time_us, day, now)?;
        Ok(self.open.len() - 1)
    }

    /// Appends to the buffered batch of chunk `idx`.
    fn append(&mut self, idx: usize, sample: &Sample, now: SystemTime) -> Result<(), ParquetError> {
        let chunk = &mut self.open[idx];
        chunk.builder.append(sample);
        chunk.last_sample_at = now;
        let mut roll = chunk.rows() >= self.cfg.roll_rows.get() as u64;
        if chunk.builder.rows() >= self.batch_rows || chunk.builder.var_bytes() >= BATCH_VAR_BYTES {
            self.flush_batch(idx)?;
            roll = roll || self.bytes_limit_reached(idx);
        }
        if roll {
            self.finish_chunk(idx)?;
        }
        Ok(())
    }

    fn bytes_limit_reached(&self, idx: usize) -> bool {
        if self.cfg.roll_bytes == 0 {
            return false;
        }
        let chunk = &self.open[idx];
        let encoded = chunk.writer.estimated_bytes();
        let per_row = match chunk.writer.rows() {
            0 => ASSUMED_BYTES_PER_ROW,
            rows => encoded.div_ceil(rows),
        };
        encoded + per_row * chunk.builder.rows() as u64 >= self.cfg.roll_bytes
    }

    /// Completes every chunk that is due at `now` (see [`ParquetSink::tick`]).
    fn roll_due(&mut self, now: SystemTime) -> Result<Option<ChunkInfo>, ParquetError> {
        let interval = self.cfg.roll_interval;
        let today = clock_day(now);
        let mut last = None;
        let mut idx = 0;
        while idx < self.open.len() {
            let chunk = &mut self.open[idx];
            let old = match now.duration_since(chunk.writer.opened_at()) {
                Ok(age) => !interval.is_zero() && age >= interval,
                Err(_) => {
                    // The clock went backwards: count the age from now on.
                    chunk.writer.set_opened_at(now);
                    false
                }
            };
            let day_over = chunk.day < today
                && now
                    .duration_since(chunk.last_sample_at)
                    .is_ok_and(|quiet| quiet >= PAST_DAY_GRACE);
            if old || day_over {
                last = self.finish_chunk(idx)?.or(last);
            } else {
                idx += 1;
            }
        }
        Ok(last)
    }

    /// Opens a chunk for `day`, named after its first sample at `first_time_us`, as the last
    /// in `open`.
    fn open_chunk(
        &mut self,
        first_time_us: i64,
        day: i64,
        now: SystemTime,
    ) -> Result<(), ParquetError> {
        let t = match sample_day(first_time_us) {
            Some(_) => DateTime::from_timestamp_micros(first_time_us),
            None => None,
        };
        let t = t.unwrap_or_else(|| {
            tracing::warn!(
                time_us = first_time_us,
                plc = %self.plc,
                "sample time out of range for a chunk name; naming the chunk by the clock"
            );
            DateTime::<Utc>::from(now)
        });
        let dir = self
            .base
            .join(format!("{PARTITION_DATE}={}", t.format("%Y-%m-%d")));
        writer::create_dir_durable(&dir)?;
        if self.scanned_dir.as_deref() != Some(dir.as_path()) {
            let max = max_chunk_seq(&dir, &self.plc)?;
            self.next_seq = self.next_seq.max(max.saturating_add(1));
            self.scanned_dir = Some(dir.clone());
        }
        let (path, tmp_path) = loop {
            let name = chunk_file_name(&self.plc, t, self.next_seq);
            let path = dir.join(&name);
            let tmp_path = dir.join(temp_file_name(&name));
            self.next_seq += 1;
            if !exists(&path) && !exists(&tmp_path) {
                break (path, tmp_path);
            }
        };
        let writer =
            ChunkWriter::create(path, tmp_path, self.props.clone(), self.table.schema(), now)?;
        let builder = self
            .spare
            .take()
            .unwrap_or_else(|| self.table.builder(BATCH_ROWS));
        self.open.push(OpenChunk {
            day,
            writer,
            builder,
            last_sample_at: now,
        });
        Ok(())
    }

    /// Encodes the buffered rows of chunk `idx` into it. On error the chunk is given up.
    fn flush_batch(&mut self, idx: usize) -> Result<(), ParquetError> {
        let chunk = &mut self.open[idx];
        let Some(range) = chunk.builder.time_range() else {
            return Ok(());
        };
        let rows = chunk.builder.rows() as u64;
        let result = match chunk.builder.finish() {
            Ok(batch) => chunk.writer.write(&batch, range),
            Err(source) => Err(ParquetError::Arrow {
                path: chunk.writer.path().to_owned(),
                source,
            }),
        };
        if let Err(e) = result {
            self.discard_chunk(idx, rows);
            return Err(e);
        }
        Ok(())
    }

    /// Completes chunk `idx` and removes it from `open`.
    fn finish_chunk(&mut self, idx: usize) -> Result<Option<ChunkInfo>, ParquetError> {
        if idx >= self.open.len() {
            return Ok(None);
        }
        self.flush_batch(idx)?;
        let OpenChunk {
            writer, builder, ..
        } = self.open.remove(idx);
        self.spare = Some(builder);
        let rows = writer.rows();
        let info = match writer.finish() {
            Ok(info) => info,
            Err(e) => {
                self.stats.rows_discarded += rows;
                return Err(e);
            }
        };
        self.stats.rows_written += info.rows;
        self.stats.chunks_written += 1;
        self.stats.bytes_written += info.bytes;
        self.stats.last_chunk = Some(info.clone());
        tracing::debug!(path = %info.path.display(), rows = info.rows, bytes = info.bytes, "parquet chunk written");
        if let Some(dir) = info.path.parent() {
            writer::sync_dir(dir)?;
        }
        if let Some(r) = &self.retention {
            r.add(&info.path, info.bytes);
        }
        Ok(Some(info))
    }

    /// Gives up chunk `idx` after an error; `extra` rows were taken out of its builder.
    fn discard_chunk(&mut self, idx: usize, extra: u64) {
        // A failed finish may leave the builder half-emptied: it is dropped, not reused.
        let chunk = self.open.remove(idx);
        self.stats.rows_discarded += extra + chunk.rows();
        chunk.writer.abort();
    }
}

impl Drop for ParquetSink {
    /// Completes the open chunks if the owner did not call [`ParquetSink::close`].
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::warn!(error = %e, "cannot complete the open parquet chunks on drop");
        }
    }
}

/// The UTC day of a sample time, in days since 1970-01-01, if a chunk name can show it.
pub(crate) fn sample_day(time_us: i64) -> Option<i64> {
    let day = time_us.div_euclid(US_PER_DAY);
    (FIRST_NAMEABLE_DAY..=LAST_NAMEABLE_DAY)
        .contains(&day)
        .then_some(day)
}

/// The UTC day of the wall clock reading `now`.
fn clock_day(now: SystemTime) -> i64 {
    DateTime::<Utc>::from(now)
        .timestamp_micros()
        .div_euclid(US_PER_DAY)
}

fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// Ids become path components: only ASCII letters, digits, `-`, `_`, `.`, and no leading `.`
/// or `_` (readers skip such files and directories).
fn check_id(what: &str, id: &str) -> Result<(), ParquetError> {
    let ok_chars = id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if id.is_empty() || !ok_chars || id.starts_with(['.', '_']) {
        return Err(ParquetError::Config(format!(
            "{what} {id:?} cannot be used in a file path: use ASCII letters, digits, '-', '_', '.' \
             and do not start with '.' or '_'"
        )));
    }
    Ok(())
}

/// `<plc>-YYYYMMDDTHHMMSSZ-NNNNNN.parquet`
pub(crate) fn chunk_file_name(plc: &str, first: DateTime<Utc>, seq: u64) -> String {
    format!(
        "{plc}-{}-{seq:06}{CHUNK_SUFFIX}",
        first.format("%Y%m%dT%H%M%SZ")
    )
}

/// `.<name>.tmp`: hidden from readers and from `*.parquet` globs.
pub(crate) fn temp_file_name(chunk_name: &str) -> String {
    format!(".{chunk_name}{TEMP_SUFFIX}")
}

/// The sequence number of a chunk file name of `plc`, if it is one.
pub(crate) fn parse_chunk_name(plc: &str, name: &str) -> Option<u64> {
    let rest = name
        .strip_prefix(plc)?
        .strip_prefix('-')?
        .strip_suffix(CHUNK_SUFFIX)?;
    let (stamp, seq) = rest.split_once('-')?;
    let b = stamp.as_bytes();
    let stamp_ok = b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 8 || i == 15 || c.is_ascii_digit());
    if !stamp_ok || seq.is_empty() || !seq.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    seq.parse().ok()
}

fn is_temp_file_of(plc: &str, name: &str) -> bool {
    name.strip_prefix('.')
        .and_then(|n| n.strip_suffix(TEMP_SUFFIX))
        .and_then(|n| parse_chunk_name(plc, n))
        .is_some()
}

/// Highest sequence number of `plc`'s chunks (completed or temporary) in `dir`, 0 if none.
fn max_chunk_seq(dir: &Path, plc: &str) -> Result<u64, ParquetError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(ParquetError::io("list directory", dir, e)),
    };
    let mut max = 0;
    for entry in entries {
        let entry = entry.map_err(|e| ParquetError::io("list directory", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let name = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(TEMP_SUFFIX))
            .unwrap_or(name);
        if let Some(seq) = parse_chunk_name(plc, name) {
            max = max.max(seq);
        }
    }
    Ok(max)
}

/// Removes `.<plc>-...parquet.tmp` files from every partition directory under `base`.
fn remove_temp_files(base: &Path, plc: &str) -> Result<u64, ParquetError> {
    let mut removed = 0;
    let partitions = fs::read_dir(base).map_err(|e| ParquetError::io("list directory", base, e))?;
    for partition in partitions {
        let partition = partition.map_err(|e| ParquetError::io("list directory", base, e))?;
        let dir = partition.path();
        if !dir.is_dir() {
            continue;
        }
        let entries =
            fs::read_dir(&dir).map_err(|e| ParquetError::io("list directory", &dir, e))?;
        let mut removed_here = false;
        for entry in entries {
            let entry = entry.map_err(|e| ParquetError::io("list directory", &dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !is_temp_file_of(plc, name) {
                continue;
            }
            let path = entry.path();
            tracing::warn!(
                path = %path.display(),
                "removing the temporary file of a parquet chunk interrupted by a crash"
            );
            fs::remove_file(&path)
                .map_err(|e| ParquetError::io("remove temporary chunk", &path, e))?;
            removed += 1;
            removed_here = true;
        }
        if removed_here {
            writer::sync_dir(&dir)?;
        }
    }
    Ok(removed)
}
