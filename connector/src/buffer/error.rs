//! Errors of the store-and-forward buffer. File-system errors name the operation and the path,
//! so a log line such as `cannot write record to data/buffer/mqtt/00000000000000000042.seg: No
//! space left on device (os error 28)` is enough to act on.

use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum BufferError {
    /// A file-system operation failed (`op` is e.g. "write record to", "fsync", "write cursor").
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `when_full = "pause"` and the message does not fit: apply backpressure and retry after
    /// acknowledgements have freed a segment.
    #[error("buffer {name} is full ({bytes} of max_bytes {max_bytes} on disk, when_full = pause)")]
    Full {
        name: String,
        bytes: u64,
        max_bytes: u64,
    },
    /// The file system is full (ENOSPC) or has less free space than `min_free`, and nothing
    /// could be evicted (`when_full = "pause"`, or the buffer holds nothing to drop).
    #[error("buffer {name}: no space left on the file system ({detail})")]
    NoSpace { name: String, detail: String },
    /// A single message larger than a segment (or than `max_bytes / 2`) can never be stored.
    #[error("message of {len} bytes does not fit in a buffer segment (at most {max} bytes)")]
    TooLarge { len: usize, max: u64 },
    /// An acknowledgement for an id that was never handed out (a bug in the caller).
    #[error("acknowledged id {id} was never appended (next id is {next_id})")]
    UnknownId { id: u64, next_id: u64 },
    /// The buffer directory holds something this version cannot use safely.
    #[error("buffer {}: {detail}", path.display())]
    Corrupt { path: PathBuf, detail: String },
    /// A setting or sink name the buffer cannot use.
    #[error("invalid buffer setting: {0}")]
    Config(String),
}

impl BufferError {
    /// A file-system operation failed for want of space (ENOSPC, EDQUOT).
    pub fn is_no_space(&self) -> bool {
        matches!(self, BufferError::Io { source, .. } if super::is_no_space(source))
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        BufferError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
