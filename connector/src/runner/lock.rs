//! One connector per directory: a running line holds an exclusive lock (`flock`) on
//! `.opcua-connector.lock` in each directory it writes (PKI, Parquet, buffer), with its pid
//! in the file. A second instance on any of them stops before it touches anything, naming
//! the directory and the holder. The lock goes with the process (also on `kill -9`).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

pub const FILE: &str = ".opcua-connector.lock";

/// A held lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{} is in use by another opcua-connector (pid {}); one instance per PKI, Parquet and buffer directory", dir.display(), holder.map_or("unknown".to_owned(), |p| p.to_string()))]
    Held { dir: PathBuf, holder: Option<u32> },
    #[error("cannot lock {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Locks `dir` (created if missing) for this process.
pub fn acquire(dir: &Path) -> Result<DirLock, LockError> {
    let path = dir.join(FILE);
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(LockError::Held {
                dir: dir.to_owned(),
                holder: text.trim().parse().ok(),
            });
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .map_err(io)?;
    Ok(DirLock { _file: file })
}

/// Locks every distinct directory of `dirs`, in order.
pub fn acquire_all<'a>(
    dirs: impl IntoIterator<Item = &'a Path>,
) -> Result<Vec<DirLock>, LockError> {
    let mut seen: Vec<PathBuf> = Vec::new();
    let mut locks = Vec::new();
    for d in dirs {
        let key = std::fs::canonicalize(d).unwrap_or_else(|_| d.to_owned());
        if seen.contains(&key) {
            continue;
        }
        locks.push(acquire(d)?);
        seen.push(std::fs::canonicalize(d).unwrap_or(key));
    }
    Ok(locks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let dir = tempfile::tempdir().unwrap();
        let held = acquire(dir.path()).unwrap();
        let again = acquire(dir.path()).unwrap_err();
        let text = again.to_string();
        assert!(
            matches!(again, LockError::Held { holder: Some(p), .. } if p == std::process::id()),
            "{text}"
        );
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        drop(held);
        assert!(acquire(dir.path()).is_ok(), "released on drop");
    }

    #[test]
    fn the_same_directory_twice_is_locked_once() {
        let dir = tempfile::tempdir().unwrap();
        let locks = acquire_all([dir.path(), dir.path()]).unwrap();
        assert_eq!(locks.len(), 1);
    }
}
