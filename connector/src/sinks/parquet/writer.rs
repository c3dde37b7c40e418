//! One chunk file: written under a temporary name, fsynced, renamed into place.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ::parquet::arrow::ArrowWriter;
use ::parquet::basic::{Compression as Codec, Encoding, GzipLevel, ZstdLevel};
use ::parquet::file::metadata::KeyValue;
use ::parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};
use ::parquet::schema::types::ColumnPath;
use arrow_array::RecordBatch;

use super::error::ParquetError;
use super::schema::{META_FIRST_TIME, META_LAST_TIME};
use super::table::Table;
use crate::config::Compression;

/// Rows per row group at most (a chunk of the default 1M rows is one row group).
pub const ROW_GROUP_ROWS: usize = 1_000_000;
/// Encoded bytes per row group at most: bounds the writer's memory when values are large.
pub const ROW_GROUP_BYTES: usize = 64 * 1024 * 1024;

/// A chunk that has been completed and renamed into place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkInfo {
    /// Final path (`DIR/line=<line>/date=YYYY-MM-DD/<plc>-YYYYMMDDTHHMMSSZ-NNNNNN.parquet`).
    pub path: PathBuf,
    pub rows: u64,
    /// File size in bytes.
    pub bytes: u64,
}

/// Writer settings of schema v2 (the "tuned" encodings), with the chunk-independent footer
/// metadata in `key_value`.
pub(crate) fn writer_properties(
    compression: Compression,
    key_value: Vec<KeyValue>,
    table: Table,
) -> Result<WriterProperties, ParquetError> {
    let codec = match compression {
        Compression::Zstd { level } => Codec::ZSTD(
            ZstdLevel::try_new(level)
                .map_err(|e| ParquetError::Config(format!("zstd level {level}: {e}")))?,
        ),
        Compression::Snappy => Codec::SNAPPY,
        Compression::Gzip => Codec::GZIP(GzipLevel::default()),
        Compression::None => Codec::UNCOMPRESSED,
    };
    let mut builder = WriterProperties::builder()
        .set_writer_version(WriterVersion::PARQUET_2_0)
        .set_compression(codec)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_max_row_group_bytes(Some(ROW_GROUP_BYTES))
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_dictionary_enabled(false)
        .set_key_value_metadata(Some(key_value));
    for col in table.dictionary_columns() {
        builder = builder.set_column_dictionary_enabled(ColumnPath::from(col), true);
    }
    for col in table.delta_columns() {
        builder =
            builder.set_column_encoding(ColumnPath::from(*col), Encoding::DELTA_BINARY_PACKED);
    }
    for col in table.split_columns() {
        builder = builder.set_column_encoding(ColumnPath::from(*col), Encoding::BYTE_STREAM_SPLIT);
    }
    Ok(builder.build())
}

/// RFC 3339 UTC with microseconds, e.g. `2026-11-26T03:12:00.123456Z`.
pub(crate) fn format_time_us(us: i64) -> String {
    match chrono::DateTime::from_timestamp_micros(us) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        None => us.to_string(),
    }
}

/// The open chunk. Dropping it without [`ChunkWriter::finish`] leaves only a temporary file
/// that readers ignore (and the next start removes).
pub(crate) struct ChunkWriter {
    path: PathBuf,
    tmp_path: PathBuf,
    writer: ArrowWriter<File>,
    rows: u64,
    min_time: i64,
    max_time: i64,
    opened_at: SystemTime,
}

impl ChunkWriter {
    /// Creates `tmp_path` (which must not exist) for a chunk that will become `path`.
    pub(crate) fn create(
        path: PathBuf,
        tmp_path: PathBuf,
        props: WriterProperties,
        schema: arrow_schema::SchemaRef,
        opened_at: SystemTime,
    ) -> Result<Self, ParquetError> {
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&tmp_path)
            .map_err(|e| ParquetError::io("create chunk", &tmp_path, e))?;
        let writer = match ArrowWriter::try_new(file, schema, Some(props)) {
            Ok(w) => w,
            Err(e) => {
                remove_quietly(&tmp_path);
                return Err(ParquetError::parquet("start chunk", tmp_path, e));
            }
        };
        Ok(ChunkWriter {
            path,
            tmp_path,
            writer,
            rows: 0,
            min_time: i64::MAX,
            max_time: i64::MIN,
            opened_at,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn rows(&self) -> u64 {
        self.rows
    }

    pub(crate) fn opened_at(&self) -> SystemTime {
        self.opened_at
    }

    pub(crate) fn set_opened_at(&mut self, t: SystemTime) {
        self.opened_at = t;
    }

    /// Bytes written to the file so far plus the estimated encoded size of the row group in
    /// progress.
    pub(crate) fn estimated_bytes(&self) -> u64 {
        (self.writer.bytes_written() + self.writer.in_progress_size()) as u64
    }

    /// Appends a batch whose `time` column spans `time_range` (earliest, latest).
    pub(crate) fn write(
        &mut self,
        batch: &RecordBatch,
        time_range: (i64, i64),
    ) -> Result<(), ParquetError> {
        self.writer
            .write(batch)
            .map_err(|e| ParquetError::parquet("write chunk", &self.tmp_path, e))?;
        self.rows += batch.num_rows() as u64;
        self.min_time = self.min_time.min(time_range.0);
        self.max_time = self.max_time.max(time_range.1);
        Ok(())
    }

    /// Writes the footer, fsyncs the file and renames it to its final name. The caller fsyncs
    /// the directory ([`sync_dir`]) to make the rename durable. On error the temporary file is
    /// removed and no final file exists.
    pub(crate) fn finish(mut self) -> Result<ChunkInfo, ParquetError> {
        if self.rows > 0 {
            self.writer.append_key_value_metadata(KeyValue::new(
                META_FIRST_TIME.to_string(),
                format_time_us(self.min_time),
            ));
            self.writer.append_key_value_metadata(KeyValue::new(
                META_LAST_TIME.to_string(),
                format_time_us(self.max_time),
            ));
        }
        let result = self
            .writer
            .finish()
            .map_err(|e| ParquetError::parquet("finish chunk", &self.tmp_path, e))
            .and_then(|_| {
                self.writer
                    .inner()
                    .sync_all()
                    .map_err(|e| ParquetError::io("fsync chunk", &self.tmp_path, e))
            });
        let bytes = self.writer.bytes_written() as u64;
        let ChunkWriter {
            path,
            tmp_path,
            writer,
            rows,
            ..
        } = self;
        drop(writer); // closes the file
        if let Err(e) = result {
            remove_quietly(&tmp_path);
            return Err(e);
        }
        if let Err(e) = fs::rename(&tmp_path, &path) {
            remove_quietly(&tmp_path);
            return Err(ParquetError::io("rename chunk into place", &path, e));
        }
        Ok(ChunkInfo { path, rows, bytes })
    }

    /// Gives the chunk up: its temporary file is removed, nothing becomes visible.
    pub(crate) fn abort(self) {
        let tmp_path = self.tmp_path.clone();
        drop(self);
        remove_quietly(&tmp_path);
    }
}

fn remove_quietly(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove temporary chunk")
        }
    }
}

/// fsyncs a directory so that entries created or renamed in it survive a power loss.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), ParquetError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ParquetError::io("fsync directory", dir, e))
}

/// `mkdir -p` that fsyncs the parent of every directory it creates.
pub(crate) fn create_dir_durable(dir: &Path) -> Result<(), ParquetError> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_durable(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(ParquetError::io("create directory", dir, e)),
    }
    match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => sync_dir(parent),
        None => sync_dir(Path::new(".")),
    }
}
