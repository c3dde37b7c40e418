//! Parquet chunk sink (schema version 2).
//!
//! - [`schema`]: the Arrow schema, footer metadata keys, and the column builders.
//! - [`writer`]: one chunk file (temporary name, fsync, rename) and the tuned writer settings.
//! - [`sink`]: [`ParquetSink`], one per PLC: rolling, naming, Hive partitions, crash cleanup.
//! - [`retention`]: the line's completed chunks kept within `max_bytes`, `max_age`, `min_free`,
//!   `keep_local`; with uploads, also the upload queue (confirmed chunks have a marker).
//! - [`upload`]: completed chunks to object storage or through IoT Hub's file upload
//!   (`[sink.parquet.upload]`); [`integrity`]: Content-MD5 on its Azure and GCS requests.
//! - [`error`]: [`ParquetError`], naming path and operation.
//!
//! See `docs/parquet.md` for the file layout and queries.

pub mod error;
pub mod events;
pub mod integrity;
pub mod retention;
pub mod schema;
pub mod sink;
pub mod table;
pub mod upload;
pub mod writer;

pub use error::ParquetError;
pub use schema::{schema, SCHEMA_VERSION};
pub use sink::{ParquetSink, ParquetSinkStats, BATCH_ROWS};
pub use writer::ChunkInfo;

#[cfg(test)]
mod tests;
