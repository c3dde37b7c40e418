//! The Parquet sink of one PLC: buffers samples into record batches, writes them into the open
//! chunk, rolls chunks by rows / bytes / age, names and places them in Hive partitions.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ::parquet::file::metadata::KeyValue;
use ::parquet::file::properties::WriterProperties;
use chrono::{DateTime, Datelike, Utc};

use super::error::ParquetError;
use super::schema::{
    BatchBuilder, META_CONNECTOR_VERSION, META_LINE, META_PLC, META_SCHEMA_VERSION, META_SITE,
    PARTITION_DATE, PARTITION_LINE, SCHEMA_VERSION,
};
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

/// Writes the samples of one PLC into rolling Parquet chunk files.
///
/// Layout: `DIR/line=<line>/date=YYYY-MM-DD/<plc>-YYYYMMDDTHHMMSSZ-NNNNNN.parquet`; date and
/// time are those of the chunk's first sample (UTC), `NNNNNN` is a sequence that continues
/// after the existing chunks of this PLC in the directory. A chunk is written as
/// `.<name>.parquet.tmp`, fsynced, renamed, and the directory fsynced.
pub struct ParquetSink {
    cfg: ParquetSinkConfig,
    plc: String,
    /// `DIR/line=<line>`
    base: PathBuf,
    props: WriterProperties,
    builder: BatchBuilder,
    batch_rows: usize,
    chunk: Option<ChunkWriter>,
    next_seq: u64,
    /// The partition directory whose existing chunks were last scanned for the sequence.
    scanned_dir: Option<PathBuf>,
    stats: ParquetSinkStats,
    /// The line's retention, told of every completed chunk.
    retention: Option<std::sync::Arc<super::retention::Retention>>,
}

impl std::fmt::Debug for ParquetSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetSink")
            .field("base", &self.base)
            .field("plc", &self.plc)
            .field(
                "open_chunk",
                &self.chunk.as_ref().map(|c| c.path().to_owned()),
            )
            .field("stats", &self.stats)
            .finish()
    }
}

impl ParquetSink {
    /// Prepares `DIR/line=<line>` and removes temporary files that an interrupted run of this
    /// PLC's sink left behind (each is logged with a warning and counted in
    /// [`ParquetSinkStats::temp_files_removed`]). No file is opened until the first sample.
    pub fn new(cfg: ParquetSinkConfig, line: Line, plc: &str) -> Result<Self, ParquetError> {
        check_id("line id", &line.id)?;
        check_id("plc id", plc)?;
        let mut key_value = vec![
            KeyValue::new(META_SCHEMA_VERSION.to_string(), SCHEMA_VERSION.to_string()),
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
        let props = writer::writer_properties(cfg.compression, key_value)?;

        let base = cfg.dir.join(format!("{PARTITION_LINE}={}", line.id));
        writer::create_dir_durable(&base)?;
        let removed = remove_temp_files(&base, plc)?;

        Ok(ParquetSink {
            builder: BatchBuilder::new(BATCH_ROWS),
            batch_rows: BATCH_ROWS,
            cfg,
            plc: plc.to_string(),
            base,
            props,
            chunk: None,
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

    /// Appends samples to the open chunk (opening one if needed) and rolls it when it reaches
    /// `roll_rows`, `roll_bytes` or `roll_interval`. On error the open chunk is given up (its
    /// temporary file removed; its rows and the rest of `samples` are counted in
    /// [`ParquetSinkStats::rows_discarded`]) and the next call starts a new chunk.
    pub fn write(&mut self, samples: &[Sample]) -> Result<(), ParquetError> {
        if let Err(e) = self.roll_if_old(SystemTime::now()) {
            self.stats.rows_discarded += samples.len() as u64;
            return Err(e);
        }
        for (i, sample) in samples.iter().enumerate() {
            if self.chunk.is_none() {
                if let Err(e) = self.open_chunk(sample.time_us) {
                    self.stats.rows_discarded += (samples.len() - i) as u64;
                    return Err(e);
                }
            }
            // On error the sample is already counted with its chunk.
            if let Err(e) = self.append(sample) {
                self.stats.rows_discarded += (samples.len() - i - 1) as u64;
                return Err(e);
            }
        }
        if self.chunk.is_some() && self.bytes_limit_reached() {
            self.finish_chunk()?;
        }
        Ok(())
    }

    /// Rolls the open chunk if it has been open for `roll_interval`; returns it if it did.
    /// Call it periodically (e.g. every second) so that a quiet PLC's chunk is completed too.
    pub fn tick(&mut self, now: SystemTime) -> Result<Option<ChunkInfo>, ParquetError> {
        if let Some(r) = &self.retention {
            r.tick();
        }
        self.roll_if_old(now)
    }

    /// Completes the open chunk, if any.
    pub fn close(&mut self) -> Result<Option<ChunkInfo>, ParquetError> {
        self.finish_chunk()
    }

    pub fn stats(&self) -> ParquetSinkStats {
        let mut stats = self.stats.clone();
        stats.rows_open =
            self.chunk.as_ref().map_or(0, ChunkWriter::rows) + self.builder.rows() as u64;
        stats
    }

    /// The final path of the open chunk.
    pub fn open_chunk_path(&self) -> Option<&Path> {
        self.chunk.as_ref().map(ChunkWriter::path)
    }

    /// Appends to the open chunk's buffered batch.
    fn append(&mut self, sample: &Sample) -> Result<(), ParquetError> {
        self.builder.append(sample);
        let chunk_rows =
            self.chunk.as_ref().map_or(0, ChunkWriter::rows) + self.builder.rows() as u64;
        let mut roll = chunk_rows >= self.cfg.roll_rows.get() as u64;
        if self.builder.rows() >= self.batch_rows || self.builder.var_bytes() >= BATCH_VAR_BYTES {
            self.flush_batch()?;
            roll = roll || self.bytes_limit_reached();
        }
        if roll {
            self.finish_chunk()?;
        }
        Ok(())
    }

    fn bytes_limit_reached(&self) -> bool {
        let Some(chunk) = &self.chunk else {
            return false;
        };
        if self.cfg.roll_bytes == 0 {
            return false;
        }
        let encoded = chunk.estimated_bytes();
        let per_row = match chunk.rows() {
            0 => ASSUMED_BYTES_PER_ROW,
            rows => encoded.div_ceil(rows),
        };
        encoded + per_row * self.builder.rows() as u64 >= self.cfg.roll_bytes
    }

    fn roll_if_old(&mut self, now: SystemTime) -> Result<Option<ChunkInfo>, ParquetError> {
        let interval = self.cfg.roll_interval;
        let Some(chunk) = self.chunk.as_mut() else {
            return Ok(None);
        };
        if interval.is_zero() {
            return Ok(None);
        }
        match now.duration_since(chunk.opened_at()) {
            Ok(age) if age >= interval => self.finish_chunk(),
            Ok(_) => Ok(None),
            Err(_) => {
                // The clock went backwards: count the age from now on.
                chunk.set_opened_at(now);
                Ok(None)
            }
        }
    }

    fn open_chunk(&mut self, first_time_us: i64) -> Result<(), ParquetError> {
        let t = DateTime::from_timestamp_micros(first_time_us)
            .filter(|t| (0..=9999).contains(&t.year()))
            .unwrap_or_else(|| {
                tracing::warn!(
                    time_us = first_time_us,
                    plc = %self.plc,
                    "sample time out of range for a chunk name; naming the chunk by the clock"
                );
                Utc::now()
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
        let chunk = ChunkWriter::create(path, tmp_path, self.props.clone(), SystemTime::now())?;
        self.chunk = Some(chunk);
        Ok(())
    }

    /// Encodes the buffered rows into the open chunk.
    fn flush_batch(&mut self) -> Result<(), ParquetError> {
        let Some(range) = self.builder.time_range() else {
            return Ok(());
        };
        let Some(chunk) = self.chunk.as_mut() else {
            // Rows are only buffered while a chunk is open; keep them for the next one.
            return Ok(());
        };
        let rows = self.builder.rows() as u64;
        let result = match self.builder.finish() {
            Ok(batch) => chunk.write(&batch, range),
            Err(source) => Err(ParquetError::Arrow {
                path: chunk.path().to_owned(),
                source,
            }),
        };
        if let Err(e) = result {
            self.discard_chunk(rows);
            return Err(e);
        }
        Ok(())
    }

    fn finish_chunk(&mut self) -> Result<Option<ChunkInfo>, ParquetError> {
        if self.chunk.is_none() {
            return Ok(None);
        }
        self.flush_batch()?;
        let Some(chunk) = self.chunk.take() else {
            return Ok(None);
        };
        let rows = chunk.rows();
        let info = match chunk.finish() {
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

    /// Gives up the open chunk after an error; `extra` rows were taken out of the builder.
    fn discard_chunk(&mut self, extra: u64) {
        let mut lost = extra + self.builder.rows() as u64;
        if let Some(chunk) = self.chunk.take() {
            lost += chunk.rows();
            chunk.abort();
        }
        self.stats.rows_discarded += lost;
        // A failed finish may leave the builders half-emptied: start afresh.
        self.builder = BatchBuilder::new(BATCH_ROWS);
    }
}

impl Drop for ParquetSink {
    /// Completes the open chunk if the owner did not call [`ParquetSink::close`].
    fn drop(&mut self) {
        if self.chunk.is_some() {
            if let Err(e) = self.finish_chunk() {
                tracing::warn!(error = %e, "cannot complete the open parquet chunk on drop");
            }
        }
    }
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
