//! Errors of the Parquet sink. Each names the operation and the path it concerns, so a log line
//! such as `cannot create chunk /data/line=a/date=2026-11-26/.filler-...parquet.tmp: No space
//! left on device (os error 28)` is enough to act on.

use std::path::PathBuf;

use arrow_schema::ArrowError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ParquetError {
    /// A file-system operation failed (`op` is e.g. "create chunk", "fsync directory").
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The Parquet encoder failed while writing or finishing a chunk.
    #[error("cannot {op} {}: {source}", path.display())]
    Parquet {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: ::parquet::errors::ParquetError,
    },
    /// Building a record batch from the buffered samples failed (a bug, reported, not a panic).
    #[error("cannot build record batch for {}: {source}", path.display())]
    Arrow {
        path: PathBuf,
        #[source]
        source: ArrowError,
    },
    /// A setting that the sink cannot use (e.g. an unusable zstd level or plc id).
    #[error("invalid parquet sink setting: {0}")]
    Config(String),
}

impl ParquetError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ParquetError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn parquet(
        op: &'static str,
        path: impl Into<PathBuf>,
        source: ::parquet::errors::ParquetError,
    ) -> Self {
        ParquetError::Parquet {
            op,
            path: path.into(),
            source,
        }
    }
}
