//! Local retention of the line's completed chunks: the oldest go first when the chunks
//! together exceed `max_bytes`, when a chunk is older than `max_age`, or when the file system
//! has less than `min_free` bytes free. One `Retention` per line, shared by the PLCs' sinks:
//! each completed chunk is added, and the limits are applied after it and every 10 s.
//!
//! Only completed `*.parquet` chunks of this line are ever deleted (the open chunk is a hidden
//! temporary file); age and order are the chunk's completion time (its mtime).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::buffer::free_bytes;
use crate::metrics::RetentionMetrics;
use crate::ratelog::RateLog;

/// How often the limits are checked besides after each completed chunk.
const EVERY: Duration = Duration::from_secs(10);

/// The limits; zero means none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_age: Duration,
    pub min_free: u64,
}

#[derive(Debug)]
pub struct Retention {
    base: PathBuf,
    limits: Limits,
    metrics: Arc<RetentionMetrics>,
    inner: Mutex<Inner>,
    log_space: RateLog,
    log_error: RateLog,
}

#[derive(Debug)]
struct Inner {
    /// Completed chunks, oldest first: (completed at, path, bytes).
    chunks: VecDeque<(SystemTime, PathBuf, u64)>,
    bytes: u64,
    checked: Option<Instant>,
}

/// Why a chunk was deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    Bytes,
    Age,
    Space,
}

impl Retention {
    /// Indexes the completed chunks under `base` (`DIR/line=<line>`).
    pub fn open(base: &Path, limits: Limits, metrics: Arc<RetentionMetrics>) -> Arc<Retention> {
        let mut found = Vec::new();
        let mut stack = vec![base.to_owned()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let path = e.path();
                let Ok(meta) = e.metadata() else { continue };
                if meta.is_dir() {
                    stack.push(path);
                } else if is_chunk(&path) {
                    let at = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    found.push((at, path, meta.len()));
                }
            }
        }
        found.sort();
        let bytes = found.iter().map(|c| c.2).sum();
        metrics.bytes_kept.store(bytes, Ordering::Relaxed);
        Arc::new(Retention {
            base: base.to_owned(),
            limits,
            metrics,
            inner: Mutex::new(Inner {
                chunks: found.into(),
                bytes,
                checked: None,
            }),
            log_space: RateLog::per_minute(),
            log_error: RateLog::per_minute(),
        })
    }

    /// A chunk was completed: indexed, then the limits applied.
    pub fn add(&self, path: &Path, bytes: u64) {
        {
            let mut inner = self.lock();
            inner
                .chunks
                .push_back((SystemTime::now(), path.to_owned(), bytes));
            inner.bytes += bytes;
        }
        self.enforce(SystemTime::now());
    }

    /// Applies the limits if the last check is [`EVERY`] old.
    pub fn tick(&self) {
        let due = self.lock().checked.is_none_or(|t| t.elapsed() >= EVERY);
        if due {
            self.enforce(SystemTime::now());
        }
    }

    /// Deletes the oldest chunks while a limit is exceeded; returns how many.
    pub fn enforce(&self, now: SystemTime) -> usize {
        let mut inner = self.lock();
        inner.checked = Some(Instant::now());
        let mut deleted = 0;
        while let Some((at, _, _)) = inner.chunks.front() {
            let l = &self.limits;
            let why = if l.max_bytes > 0 && inner.bytes > l.max_bytes {
                Why::Bytes
            } else if !l.max_age.is_zero()
                && now.duration_since(*at).unwrap_or_default() > l.max_age
            {
                Why::Age
            } else if l.min_free > 0 && free_bytes(&self.base) < l.min_free {
                Why::Space
            } else {
                break;
            };
            let Some((_, path, bytes)) = inner.chunks.pop_front() else {
                break;
            };
            inner.bytes -= bytes;
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    if let Some(more) = self.log_error.hit() {
                        tracing::error!(path = %path.display(), error = %e, suppressed = more,
                            "retention: cannot delete a chunk; it is no longer tracked");
                    }
                    continue;
                }
            }
            deleted += 1;
            let m = &self.metrics;
            m.chunks_deleted.fetch_add(1, Ordering::Relaxed);
            m.bytes_deleted.fetch_add(bytes, Ordering::Relaxed);
            if why == Why::Space {
                m.deleted_for_space.fetch_add(1, Ordering::Relaxed);
                if let Some(more) = self.log_space.hit() {
                    tracing::warn!(path = %path.display(), min_free = l.min_free, suppressed = more,
                        "retention: the disk is nearly full; deleted the oldest chunk");
                }
            } else {
                tracing::debug!(path = %path.display(), reason = ?why, "retention: chunk deleted");
            }
            if let Some(dir) = path.parent() {
                // An emptied date= partition goes too (readers list fewer directories).
                let _ = std::fs::remove_dir(dir);
            }
        }
        self.metrics
            .bytes_kept
            .store(inner.bytes, Ordering::Relaxed);
        deleted
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn is_chunk(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "parquet")
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| !n.starts_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(dir: &Path, name: &str, bytes: usize, age: Duration) -> PathBuf {
        let d = dir.join("date=2026-11-29");
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join(name);
        std::fs::write(&p, vec![0u8; bytes]).unwrap();
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(SystemTime::now() - age).unwrap();
        p
    }

    #[test]
    fn the_oldest_chunks_go_first_by_bytes_and_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let old = chunk(dir.path(), "p-1.parquet", 100, Duration::from_secs(3600));
        let mid = chunk(dir.path(), "p-2.parquet", 100, Duration::from_secs(600));
        let new = chunk(dir.path(), "p-3.parquet", 100, Duration::from_secs(10));
        chunk(dir.path(), ".p-4.parquet.tmp", 100, Duration::ZERO);
        let m = Arc::new(RetentionMetrics::default());
        let limits = Limits {
            max_bytes: 250,
            max_age: Duration::from_secs(1800),
            min_free: 0,
        };
        let r = Retention::open(dir.path(), limits, m.clone());
        assert_eq!(
            m.bytes_kept.load(Ordering::Relaxed),
            300,
            "the temp file is not a chunk"
        );
        assert_eq!(r.enforce(SystemTime::now()), 1);
        assert!(!old.exists() && mid.exists() && new.exists());
        // Ten more minutes than max_age for the middle one.
        let later = SystemTime::now() + Duration::from_secs(1300);
        assert_eq!(r.enforce(later), 1);
        assert!(!mid.exists() && new.exists());
        assert_eq!(m.chunks_deleted.load(Ordering::Relaxed), 2);
        assert_eq!(m.bytes_deleted.load(Ordering::Relaxed), 200);
        let added = chunk(dir.path(), "p-5.parquet", 200, Duration::ZERO);
        r.add(&added, 200);
        assert!(
            !new.exists() && added.exists(),
            "over max_bytes: the oldest went"
        );
    }

    #[test]
    fn a_nearly_full_disk_deletes_the_oldest_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let a = chunk(dir.path(), "p-1.parquet", 10, Duration::from_secs(20));
        let b = chunk(dir.path(), "p-2.parquet", 10, Duration::from_secs(10));
        let m = Arc::new(RetentionMetrics::default());
        // More free space than any disk has: every chunk goes, and then it stops.
        let limits = Limits {
            min_free: u64::MAX,
            ..Limits::default()
        };
        let r = Retention::open(dir.path(), limits, m.clone());
        assert_eq!(r.enforce(SystemTime::now()), 2);
        assert!(!a.exists() && !b.exists());
        assert_eq!(m.deleted_for_space.load(Ordering::Relaxed), 2);
        assert_eq!(r.enforce(SystemTime::now()), 0);
    }
}
