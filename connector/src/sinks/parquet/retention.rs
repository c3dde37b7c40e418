//! Local retention of the line's completed chunks: the oldest go first when the chunks
//! together exceed `max_bytes`, when a chunk is older than `max_age`, or when the file system
//! has less than `min_free` bytes free; with uploads, a chunk also goes `keep_local` after the
//! store confirmed it. One `Retention` per line, shared by the PLCs' sinks and the uploader:
//! each completed chunk is added, and the limits are applied after it, after each confirmed
//! upload and every 10 s.
//!
//! Only completed `*.parquet` chunks of this line are ever deleted (the open chunk is a hidden
//! temporary file); age and order are the chunk's completion time (its mtime). With uploads
//! the index is also the upload queue: a chunk is confirmed by a hidden marker
//! `.<file>.uploaded` beside it (its mtime is when), so a restart knows what is left to
//! upload; a chunk the disk limits delete before it was confirmed is counted as lost.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::buffer::free_bytes;
use crate::metrics::{RetentionMetrics, UploadMetrics};
use crate::ratelog::RateLog;

/// How often the limits are checked besides after each completed chunk.
const EVERY: Duration = Duration::from_secs(10);

/// The limits; zero means none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_age: Duration,
    pub min_free: u64,
    /// Chunks are uploaded: one not yet confirmed is lost when a limit deletes it.
    pub uploads: bool,
    /// With uploads: how long a confirmed chunk stays (`None`: the limits alone decide).
    pub keep_local: Option<Duration>,
}

#[derive(Debug)]
pub struct Retention {
    base: PathBuf,
    limits: Limits,
    metrics: Arc<RetentionMetrics>,
    inner: Mutex<Inner>,
    /// Woken when a chunk is added (the uploader waits on it).
    added: tokio::sync::Notify,
    log_space: RateLog,
    log_error: RateLog,
    log_lost: RateLog,
}

/// A completed chunk.
#[derive(Debug)]
struct Chunk {
    at: SystemTime,
    path: PathBuf,
    bytes: u64,
    /// When the store confirmed it.
    uploaded: Option<SystemTime>,
}

#[derive(Debug)]
struct Inner {
    /// Oldest first.
    chunks: VecDeque<Chunk>,
    bytes: u64,
    checked: Option<Instant>,
}

/// Why a chunk was deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    Bytes,
    Age,
    Space,
    Uploaded,
}

/// The marker of a confirmed upload: `.<file>.uploaded` beside the chunk.
pub fn marker(chunk: &Path) -> PathBuf {
    let name = chunk
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("chunk");
    chunk.with_file_name(format!(".{name}.uploaded"))
}

impl Retention {
    /// Indexes the completed chunks under `base` (`DIR/line=<line>`) and their markers.
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
                    let uploaded = std::fs::metadata(marker(&path))
                        .ok()
                        .map(|m| m.modified().unwrap_or(at));
                    found.push((at, path, meta.len(), uploaded));
                }
            }
        }
        found.sort();
        let bytes = found.iter().map(|c| c.2).sum();
        metrics.bytes_kept.store(bytes, Ordering::Relaxed);
        let chunks = found
            .into_iter()
            .map(|(at, path, bytes, uploaded)| Chunk {
                at,
                path,
                bytes,
                uploaded,
            })
            .collect();
        Arc::new(Retention {
            base: base.to_owned(),
            limits,
            metrics,
            inner: Mutex::new(Inner {
                chunks,
                bytes,
                checked: None,
            }),
            added: tokio::sync::Notify::new(),
            log_space: RateLog::per_minute(),
            log_error: RateLog::per_minute(),
            log_lost: RateLog::per_minute(),
        })
    }

    /// A chunk was completed: indexed, then the limits applied.
    pub fn add(&self, path: &Path, bytes: u64) {
        {
            let mut inner = self.lock();
            inner.chunks.push_back(Chunk {
                at: SystemTime::now(),
                path: path.to_owned(),
                bytes,
                uploaded: None,
            });
            inner.bytes += bytes;
        }
        self.added.notify_one();
        self.enforce(SystemTime::now());
    }

    /// Resolves when a chunk is added (or was added since the last wait).
    pub async fn added(&self) {
        self.added.notified().await
    }

    /// The oldest chunk not yet confirmed by the store.
    pub fn first_pending(&self) -> Option<(PathBuf, u64)> {
        let inner = self.lock();
        inner
            .chunks
            .iter()
            .find(|c| c.uploaded.is_none())
            .map(|c| (c.path.clone(), c.bytes))
    }

    /// The store confirmed `path`: its marker is written durably (file and directory
    /// synced), then `keep_local` applies.
    pub fn confirmed(&self, path: &Path) -> Result<(), super::ParquetError> {
        if !self.lock().chunks.iter().any(|c| c.path == path) {
            // Deleted meanwhile (and counted there): no marker for a chunk that is gone.
            return Ok(());
        }
        sync_new(&marker(path), true)?;
        let now = SystemTime::now();
        if let Some(c) = self.lock().chunks.iter_mut().find(|c| c.path == path) {
            c.uploaded = Some(now);
        }
        self.enforce(now);
        Ok(())
    }

    /// `path` is gone from the disk (deleted behind the index's back): out of the index.
    pub fn forget(&self, path: &Path) {
        let mut inner = self.lock();
        if let Some(i) = inner.chunks.iter().position(|c| c.path == path) {
            if let Some(c) = inner.chunks.remove(i) {
                inner.bytes -= c.bytes;
            }
        }
    }

    /// The upload backlog into `m`: chunks and bytes not yet confirmed, the oldest one's age.
    pub fn publish_pending(&self, m: &UploadMetrics) {
        let inner = self.lock();
        let pending = inner.chunks.iter().filter(|c| c.uploaded.is_none());
        let (mut n, mut bytes, mut oldest) = (0u64, 0u64, None);
        for c in pending {
            n += 1;
            bytes += c.bytes;
            oldest = oldest.or(Some(c.at));
        }
        let age = oldest
            .and_then(|at| SystemTime::now().duration_since(at).ok())
            .map_or(0, |d| d.as_secs());
        m.pending.store(n, Ordering::Relaxed);
        m.pending_bytes.store(bytes, Ordering::Relaxed);
        m.oldest_pending_s.store(age, Ordering::Relaxed);
    }

    /// Applies the limits if the last check is [`EVERY`] old.
    pub fn tick(&self) {
        let due = self.lock().checked.is_none_or(|t| t.elapsed() >= EVERY);
        if due {
            self.enforce(SystemTime::now());
        }
    }

    /// Deletes the chunks uploaded more than `keep_local` ago, then the oldest chunks while
    /// a limit is exceeded; returns how many.
    pub fn enforce(&self, now: SystemTime) -> usize {
        let mut inner = self.lock();
        inner.checked = Some(Instant::now());
        let mut deleted = 0;
        if let Some(keep) = self.limits.keep_local {
            let kept_long_enough = |c: &Chunk| {
                c.uploaded
                    .is_some_and(|u| now.duration_since(u).unwrap_or_default() >= keep)
            };
            let mut i = 0;
            while i < inner.chunks.len() {
                if !kept_long_enough(&inner.chunks[i]) {
                    i += 1;
                    continue;
                }
                if let Some(c) = inner.chunks.remove(i) {
                    inner.bytes -= c.bytes;
                    deleted += usize::from(self.delete(c, Why::Uploaded));
                }
            }
        }
        while let Some(front) = inner.chunks.front() {
            let l = &self.limits;
            let why = if l.max_bytes > 0 && inner.bytes > l.max_bytes {
                Why::Bytes
            } else if !l.max_age.is_zero()
                && now.duration_since(front.at).unwrap_or_default() > l.max_age
            {
                Why::Age
            } else if l.min_free > 0 && free_bytes(&self.base) < l.min_free {
                Why::Space
            } else {
                break;
            };
            let Some(c) = inner.chunks.pop_front() else {
                break;
            };
            inner.bytes -= c.bytes;
            deleted += usize::from(self.delete(c, why));
        }
        self.metrics
            .bytes_kept
            .store(inner.bytes, Ordering::Relaxed);
        deleted
    }

    /// Deletes one chunk (and its marker), counted; says whether it was deleted.
    fn delete(&self, c: Chunk, why: Why) -> bool {
        let path = &c.path;
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                if let Some(more) = self.log_error.hit() {
                    tracing::error!(path = %path.display(), error = %e, suppressed = more,
                        "retention: cannot delete a chunk; it is no longer tracked");
                }
                return false;
            }
        }
        let _ = std::fs::remove_file(marker(path));
        let m = &self.metrics;
        m.chunks_deleted.fetch_add(1, Ordering::Relaxed);
        m.bytes_deleted.fetch_add(c.bytes, Ordering::Relaxed);
        if self.limits.uploads && c.uploaded.is_none() {
            m.lost_before_upload.fetch_add(1, Ordering::Relaxed);
            if let Some(more) = self.log_lost.hit() {
                tracing::error!(path = %path.display(), reason = ?why, suppressed = more,
                    "retention: deleted a chunk that was not uploaded yet (the disk limits forced it): lost for the store");
            }
        }
        if why == Why::Space {
            m.deleted_for_space.fetch_add(1, Ordering::Relaxed);
            if let Some(more) = self.log_space.hit() {
                tracing::warn!(path = %path.display(), min_free = self.limits.min_free, suppressed = more,
                    "retention: the disk is nearly full; deleted the oldest chunk");
            }
        } else {
            tracing::debug!(path = %path.display(), reason = ?why, "retention: chunk deleted");
        }
        if let Some(dir) = path.parent() {
            // An emptied date= partition goes too (readers list fewer directories).
            let _ = std::fs::remove_dir(dir);
        }
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Makes `file` durable, with its directory entry (created empty first when `create`): the
/// upload marker, and a chunk copied to a `file://` store.
pub(super) fn sync_new(file: &Path, create: bool) -> Result<(), super::ParquetError> {
    let opened = if create {
        std::fs::File::create(file)
    } else {
        std::fs::File::open(file)
    };
    opened
        .and_then(|f| f.sync_all())
        .map_err(|e| super::ParquetError::io("fsync", file, e))?;
    match file.parent() {
        Some(dir) => super::writer::sync_dir(dir),
        None => Ok(()),
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
            ..Limits::default()
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
    fn with_uploads_a_chunk_goes_keep_local_after_its_confirmation_and_a_forced_one_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let a = chunk(dir.path(), "p-1.parquet", 100, Duration::from_secs(30));
        let b = chunk(dir.path(), "p-2.parquet", 100, Duration::from_secs(20));
        let c = chunk(dir.path(), "p-3.parquet", 100, Duration::from_secs(10));
        // a was confirmed before a restart: its marker is found.
        std::fs::write(marker(&a), "").unwrap();
        let m = Arc::new(RetentionMetrics::default());
        let limits = Limits {
            uploads: true,
            keep_local: Some(Duration::ZERO),
            max_bytes: 250,
            ..Limits::default()
        };
        let r = Retention::open(dir.path(), limits, m.clone());
        assert_eq!(r.first_pending().map(|p| p.0), Some(b.clone()));
        let um = crate::metrics::UploadMetrics::default();
        r.publish_pending(&um);
        assert_eq!(um.pending.load(Ordering::Relaxed), 2);
        assert_eq!(um.pending_bytes.load(Ordering::Relaxed), 200);
        assert!(um.oldest_pending_s.load(Ordering::Relaxed) >= 19);
        // keep_local 0s: the confirmed one goes; max_bytes (250) is kept.
        assert_eq!(r.enforce(SystemTime::now()), 1);
        assert!(!a.exists() && !marker(&a).exists() && b.exists() && c.exists());
        assert_eq!(m.lost_before_upload.load(Ordering::Relaxed), 0);
        r.confirmed(&b).unwrap();
        assert!(
            !b.exists() && !marker(&b).exists(),
            "deleted at its confirmation"
        );
        assert_eq!(r.first_pending().map(|p| p.0), Some(c.clone()));
        // Over max_bytes with nothing confirmed: c is deleted before its upload, and lost.
        let d = chunk(dir.path(), "p-4.parquet", 200, Duration::ZERO);
        r.add(&d, 200);
        assert!(!c.exists() && d.exists());
        assert_eq!(m.lost_before_upload.load(Ordering::Relaxed), 1);
        assert_eq!(r.first_pending().map(|p| p.0), Some(d));
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
