//! The files under a buffer: the directory scan and tail repair at open, segment files
//! created and removed durably, record writes and span reads, and the file system's free
//! space (shared with the Parquet retention).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::warn;

use super::segment::{self, Segment};
use super::{BufferError, BufferStats};

/// Free bytes for an unprivileged writer on the file system of `dir` (u64::MAX if unknown).
pub fn free_bytes(dir: &Path) -> u64 {
    rustix::fs::statvfs(dir)
        .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
        .unwrap_or(u64::MAX)
}

/// Sink names become directory names: plain ASCII, not hidden.
pub(super) fn check_name(name: &str) -> Result<(), BufferError> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(BufferError::Config(format!(
            "buffer name {name:?} must be ASCII letters, digits, '-', '_' or '.', not starting with '.'"
        )))
    }
}

/// Scans every segment file in `dir` in id order, cutting torn or corrupt tails.
pub(super) fn recover_segments(
    dir: &Path,
    stats: &mut BufferStats,
) -> Result<VecDeque<Segment>, BufferError> {
    let entries = fs::read_dir(dir).map_err(|e| BufferError::io("list directory", dir, e))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| BufferError::io("list directory", dir, e))?;
        let name = entry.file_name();
        if let Some(first_id) = name.to_str().and_then(segment::parse_file_name) {
            found.push((first_id, entry.path()));
        }
    }
    found.sort();

    let mut segments: VecDeque<Segment> = VecDeque::with_capacity(found.len());
    for (first_id, path) in found {
        let (seg, torn) = segment::scan(&path, first_id)
            .map_err(|e| BufferError::io("read segment", &path, e))?;
        if let Some(torn) = torn {
            warn!(
                file = %path.display(),
                offset = torn.offset,
                cut_bytes = torn.file_len - torn.offset,
                reason = torn.reason,
                "buffer segment ends in a torn or corrupt record; cutting it there"
            );
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| BufferError::io("open segment", &path, e))?;
            file.set_len(torn.offset)
                .and_then(|()| file.sync_all())
                .map_err(|e| BufferError::io("truncate segment", &path, e))?;
            stats.truncated += 1;
        }
        if let Some(prev) = segments.back() {
            if !prev.is_empty() && seg.first_id < prev.end_id() {
                return Err(BufferError::Corrupt {
                    path,
                    detail: format!(
                        "segment overlaps the one before (ids up to {})",
                        prev.end_id() - 1
                    ),
                });
            }
        }
        segments.push_back(seg);
    }
    Ok(segments)
}

pub(super) fn create_segment(dir: &Path, path: &Path) -> Result<File, BufferError> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| BufferError::io("create segment", path, e))?;
    // A left-over empty or torn file of the same name holds nothing to keep.
    file.set_len(0)
        .map_err(|e| BufferError::io("truncate segment", path, e))?;
    file.sync_all()
        .map_err(|e| BufferError::io("fsync", path, e))?;
    sync_dir(dir)?;
    Ok(file)
}

pub(super) fn remove_segment_file(path: &Path) -> Result<(), BufferError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(BufferError::io("delete segment", path, e)),
    }
}

/// Makes created and renamed entries of `dir` durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), BufferError> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| BufferError::io("fsync directory", dir, e))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

pub(super) fn write_record(file: &mut File, bytes: &[u8]) -> Result<(), (&'static str, io::Error)> {
    file.write_all(bytes).map_err(|e| ("write record to", e))?;
    file.sync_data().map_err(|e| ("fsync", e))
}

/// Reads bytes `[start, end)` of `seg`, through a cached read handle.
pub(super) fn read_span(
    reader: &mut Option<(u64, File)>,
    seg: &Segment,
    start: u64,
    end: u64,
) -> Result<Vec<u8>, BufferError> {
    if reader
        .as_ref()
        .is_none_or(|(first, _)| *first != seg.first_id)
    {
        let file =
            File::open(&seg.path).map_err(|e| BufferError::io("open segment", &seg.path, e))?;
        *reader = Some((seg.first_id, file));
    }
    let Some((_, file)) = reader.as_mut() else {
        return Ok(Vec::new());
    };
    let mut bytes = vec![0; (end - start) as usize];
    file.seek(SeekFrom::Start(start))
        .and_then(|_| file.read_exact(&mut bytes))
        .map_err(|e| BufferError::io("read segment", &seg.path, e))?;
    Ok(bytes)
}

/// ENOSPC or EDQUOT.
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

pub(super) fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}
