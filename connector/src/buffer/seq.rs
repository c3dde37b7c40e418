//! The `seq` of every `plc/group` stream of one destination, and the stream epoch.
//!
//! The next seq per stream is written ahead (tmp + fsync + rename + directory fsync) before a
//! message with that seq is buffered, so a seq never repeats after a restart or a power loss; a
//! crash between the two leaves an unused seq (a gap without missing data).
//!
//! The epoch is a random id created with the state and carried in every message. If the state
//! is lost (file deleted, unreadable, damaged), a new epoch starts at seq 1: a consumer that
//! de-duplicates on (epoch, seq) takes the new messages as new, never as repeats.
//!
//! File `seq`: a line `epoch <16 hex digits>`, then one line `<plc>/<group> <next seq>` per
//! stream.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// How the state was found at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Read as written: the epoch goes on.
    Continued,
    /// No state and nothing else in the directory: a first start.
    First,
    /// The state is gone or unreadable (the reason): a new epoch.
    Lost(String),
}

pub struct SeqState {
    path: PathBuf,
    dir: PathBuf,
    epoch: String,
    next: HashMap<String, u64>,
}

impl SeqState {
    /// Reads `dir/seq`; a missing or unreadable file starts a new epoch (not written until the
    /// first [`SeqState::reserve`]).
    pub fn load(dir: &Path) -> (SeqState, Found) {
        let path = dir.join("seq");
        let fresh = |found| {
            let state = SeqState {
                path: path.clone(),
                dir: dir.to_owned(),
                epoch: new_epoch(),
                next: HashMap::new(),
            };
            (state, found)
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Segments or a cursor beside a missing seq file: the state was lost.
                let others = std::fs::read_dir(dir)
                    .map(|d| d.flatten().any(|e| e.file_name() != "seq.tmp"))
                    .unwrap_or(false);
                return fresh(if others {
                    Found::Lost(format!("{} is missing", path.display()))
                } else {
                    Found::First
                });
            }
            Err(e) => return fresh(Found::Lost(format!("cannot read {}: {e}", path.display()))),
        };
        let mut epoch = None;
        let mut next = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let parsed = line.rsplit_once(' ').and_then(|(k, v)| {
                if k == "epoch" {
                    let ok = v.len() == 16 && v.bytes().all(|b| b.is_ascii_hexdigit());
                    epoch = ok.then(|| v.to_owned());
                    return ok.then_some(());
                }
                next.insert(k.to_owned(), v.parse::<u64>().ok()?);
                Some(())
            });
            if parsed.is_none() {
                return fresh(Found::Lost(format!(
                    "{} line {}: {line:?} is not `<stream> <seq>`",
                    path.display(),
                    i + 1
                )));
            }
        }
        let Some(epoch) = epoch else {
            return fresh(Found::Lost(format!("{} has no epoch", path.display())));
        };
        let state = SeqState {
            path,
            dir: dir.to_owned(),
            epoch,
            next,
        };
        (state, Found::Continued)
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Reserves `n` consecutive seqs of `stream` and returns the first. They count as used
    /// only once written; on `Err` nothing is reserved and the same seqs come next time.
    pub fn reserve(&mut self, stream: &str, n: u64) -> std::io::Result<u64> {
        let first = *self.next.get(stream).unwrap_or(&1);
        let mut text = format!("epoch {}\n", self.epoch);
        for (k, v) in &self.next {
            let v = if k == stream { first + n } else { *v };
            text.push_str(&format!("{k} {v}\n"));
        }
        if !self.next.contains_key(stream) {
            text.push_str(&format!("{stream} {}\n", first + n));
        }
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        self.next.insert(stream.to_owned(), first + n);
        Ok(first)
    }
}

/// 64 random bits as 16 hex digits (the standard library's per-process random keys, mixed
/// with the clock and the pid).
fn new_epoch() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(now);
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_is_written_ahead_and_survives_a_restart_in_its_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, found) = SeqState::load(dir.path());
        assert_eq!(found, Found::First);
        assert_eq!(s.reserve("p/g", 3).unwrap(), 1);
        assert_eq!(s.reserve("p/g", 1).unwrap(), 4);
        assert_eq!(s.reserve("p/h", 1).unwrap(), 1);
        let epoch = s.epoch().to_owned();
        let (mut again, found) = SeqState::load(dir.path());
        assert_eq!(found, Found::Continued);
        assert_eq!(again.epoch(), epoch);
        assert_eq!(again.reserve("p/g", 1).unwrap(), 5);
        assert_eq!(again.reserve("p/h", 1).unwrap(), 2);
    }

    #[test]
    fn a_lost_or_broken_state_starts_a_new_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = SeqState::load(dir.path());
        s.reserve("p/g", 10).unwrap();
        let first_epoch = s.epoch().to_owned();
        std::fs::write(dir.path().join("segment"), b"x").unwrap();
        std::fs::remove_file(dir.path().join("seq")).unwrap();
        let (mut lost, found) = SeqState::load(dir.path());
        assert!(
            matches!(found, Found::Lost(ref r) if r.contains("missing")),
            "{found:?}"
        );
        assert_ne!(lost.epoch(), first_epoch);
        assert_eq!(lost.reserve("p/g", 1).unwrap(), 1);
        std::fs::write(dir.path().join("seq"), "epoch zz\np/g 4\n").unwrap();
        let (_, found) = SeqState::load(dir.path());
        assert!(matches!(found, Found::Lost(_)), "{found:?}");
        std::fs::write(dir.path().join("seq"), "p/g 4\n").unwrap();
        let (_, found) = SeqState::load(dir.path());
        assert!(
            matches!(found, Found::Lost(ref r) if r.contains("no epoch")),
            "{found:?}"
        );
    }

    #[test]
    fn a_failed_write_reserves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = SeqState::load(dir.path());
        assert_eq!(s.reserve("p/g", 2).unwrap(), 1);
        // The temp file's place taken by a directory: the write fails.
        std::fs::create_dir(dir.path().join("seq.tmp")).unwrap();
        assert!(s.reserve("p/g", 5).is_err());
        std::fs::remove_dir(dir.path().join("seq.tmp")).unwrap();
        assert_eq!(s.reserve("p/g", 1).unwrap(), 3);
    }
}
