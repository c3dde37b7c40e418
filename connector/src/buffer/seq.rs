//! The `seq` of every `plc/group` stream of one destination, and the stream epoch.
//!
//! The next seq per stream is written ahead and made durable before a message with that seq
//! is buffered, so a seq never repeats after a restart or a power loss; a crash between the two
//! leaves an unused seq (a gap without missing data).
//!
//! The epoch is a random id created with the state and carried in every message. If the state
//! is lost (files deleted, unreadable, damaged), a new epoch starts at seq 1: a consumer that
//! de-duplicates on (epoch, seq) takes the new messages as new, never as repeats.
//!
//! Two files, `seq.a` and `seq.b`, written in turn in place (one `fdatasync` per reservation,
//! no rename, no directory fsync after they exist): each holds a line
//! `gen <generation> crc <crc32 of the rest>`, a line `epoch <16 hex digits>`, then one line
//! `<plc>/<group> <next seq>` per stream. The valid one with the higher generation is the
//! state; a write torn by a crash leaves the other, older one, whose seqs no message carries
//! yet. (`seq`, one file renamed into place, is read once from an older version.)

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The two slots, and the single file of an older version.
pub const FILES: [&str; 2] = ["seq.a", "seq.b"];
const LEGACY: &str = "seq";

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
    dir: PathBuf,
    epoch: String,
    next: HashMap<String, u64>,
    /// The generation last written, and the slot it is in.
    generation: u64,
    slot: usize,
    files: Option<[File; 2]>,
}

/// A slot's content: (generation, epoch, next seqs), if whole and valid.
fn parse(text: &str, with_header: bool) -> Result<(u64, String, HashMap<String, u64>), String> {
    let mut lines = text.lines();
    let mut generation = 0;
    if with_header {
        let head = lines.next().ok_or("empty")?;
        let f: Vec<&str> = head.split(' ').collect();
        let (Some(&"gen"), Some(g), Some(&"crc"), Some(c)) =
            (f.first(), f.get(1), f.get(2), f.get(3))
        else {
            return Err(format!("{head:?} is not `gen <n> crc <n>`"));
        };
        generation = g.parse().map_err(|_| format!("bad generation {g:?}"))?;
        let crc: u32 = c.parse().map_err(|_| format!("bad crc {c:?}"))?;
        let rest = &text[head.len() + 1.min(text.len() - head.len())..];
        if crc32fast::hash(rest.as_bytes()) != crc {
            return Err("checksum mismatch (a torn write)".into());
        }
    }
    let mut epoch = None;
    let mut next = HashMap::new();
    for line in lines {
        let (k, v) = line
            .rsplit_once(' ')
            .ok_or_else(|| format!("{line:?} is not `<stream> <seq>`"))?;
        if k == "epoch" {
            if v.len() != 16 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("bad epoch {v:?}"));
            }
            epoch = Some(v.to_owned());
        } else {
            let n = v
                .parse()
                .map_err(|_| format!("{line:?} is not `<stream> <seq>`"))?;
            next.insert(k.to_owned(), n);
        }
    }
    let epoch = epoch.ok_or("no epoch")?;
    Ok((generation, epoch, next))
}

impl SeqState {
    /// Reads the state of `dir`; missing or unreadable state starts a new epoch (written at
    /// the first [`SeqState::reserve`]).
    pub fn load(dir: &Path) -> (SeqState, Found) {
        let mut best: Option<(u64, usize, String, HashMap<String, u64>)> = None;
        let mut problems = Vec::new();
        let mut any = false;
        for (i, name) in FILES.iter().enumerate() {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    any = true;
                    match parse(&text, true) {
                        Ok((g, e, n)) => {
                            if best.as_ref().is_none_or(|b| g > b.0) {
                                best = Some((g, i, e, n));
                            }
                        }
                        Err(why) => problems.push(format!("{}: {why}", path.display())),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => problems.push(format!("cannot read {}: {e}", path.display())),
            }
        }
        if best.is_none() {
            let legacy = dir.join(LEGACY);
            if let Ok(text) = std::fs::read_to_string(&legacy) {
                any = true;
                match parse(&text, false) {
                    Ok((_, e, n)) => best = Some((0, 1, e, n)),
                    Err(why) => problems.push(format!("{}: {why}", legacy.display())),
                }
            }
        }
        let state = |generation, slot, epoch, next| SeqState {
            dir: dir.to_owned(),
            epoch,
            next,
            generation,
            slot,
            files: None,
        };
        if let Some((g, slot, e, n)) = best {
            return (state(g, slot, e, n), Found::Continued);
        }
        let found = if any || !problems.is_empty() {
            Found::Lost(problems.join("; "))
        } else {
            // Segments or a cursor without seq files: the state was lost.
            let others = std::fs::read_dir(dir)
                .map(|d| d.flatten().next().is_some())
                .unwrap_or(false);
            if others {
                Found::Lost(format!("no seq state in {}", dir.display()))
            } else {
                Found::First
            }
        };
        (state(0, 1, new_epoch(), HashMap::new()), found)
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Reserves `n` consecutive seqs of `stream` and returns the first. They count as used
    /// only once written; on `Err` nothing is reserved and the same seqs come next time.
    pub fn reserve(&mut self, stream: &str, n: u64) -> std::io::Result<u64> {
        let first = *self.next.get(stream).unwrap_or(&1);
        let mut rest = format!("epoch {}\n", self.epoch);
        for (k, v) in &self.next {
            let v = if k == stream { first + n } else { *v };
            rest.push_str(&format!("{k} {v}\n"));
        }
        if !self.next.contains_key(stream) {
            rest.push_str(&format!("{stream} {}\n", first + n));
        }
        let generation = self.generation + 1;
        let slot = 1 - self.slot;
        let text = format!(
            "gen {generation} crc {}\n{rest}",
            crc32fast::hash(rest.as_bytes())
        );
        let files = self.files()?;
        let f = &mut files[slot];
        f.rewind()?;
        f.write_all(text.as_bytes())?;
        f.set_len(text.len() as u64)?;
        f.sync_data()?;
        self.generation = generation;
        self.slot = slot;
        self.next.insert(stream.to_owned(), first + n);
        Ok(first)
    }

    /// The two slot files, opened (and created durably) on first use.
    fn files(&mut self) -> std::io::Result<&mut [File; 2]> {
        if self.files.is_none() {
            let open = |name: &str| -> std::io::Result<(File, bool)> {
                let path = self.dir.join(name);
                let existed = path.exists();
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(path)?;
                Ok((f, existed))
            };
            let (a, a_existed) = open(FILES[0])?;
            let (b, b_existed) = open(FILES[1])?;
            if !(a_existed && b_existed) {
                File::open(&self.dir)?.sync_all()?;
            }
            let _ = std::fs::remove_file(self.dir.join(LEGACY));
            self.files = Some([a, b]);
        }
        self.files
            .as_mut()
            .ok_or_else(|| std::io::Error::other("seq files not open"))
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
    fn a_torn_write_falls_back_to_the_other_slot() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = SeqState::load(dir.path());
        s.reserve("p/g", 10).unwrap(); // gen 1 -> seq.a
        s.reserve("p/g", 5).unwrap(); // gen 2 -> seq.b: next 16
                                      // A crash while writing gen 3 into seq.a: its content is cut short.
        let a = dir.path().join(FILES[0]);
        let text = std::fs::read_to_string(&a).unwrap();
        std::fs::write(
            &a,
            &text.replace("gen 1", "gen 3").as_bytes()[..text.len() - 3],
        )
        .unwrap();
        let (mut back, found) = SeqState::load(dir.path());
        assert_eq!(found, Found::Continued);
        assert_eq!(back.reserve("p/g", 1).unwrap(), 16, "the newest whole slot");
    }

    #[test]
    fn a_lost_or_broken_state_starts_a_new_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = SeqState::load(dir.path());
        s.reserve("p/g", 10).unwrap();
        s.reserve("p/g", 1).unwrap();
        let first_epoch = s.epoch().to_owned();
        drop(s);
        std::fs::write(dir.path().join("segment"), b"x").unwrap();
        for f in FILES {
            std::fs::remove_file(dir.path().join(f)).unwrap();
        }
        let (mut lost, found) = SeqState::load(dir.path());
        assert!(
            matches!(found, Found::Lost(ref r) if r.contains("no seq state")),
            "{found:?}"
        );
        assert_ne!(lost.epoch(), first_epoch);
        assert_eq!(lost.reserve("p/g", 1).unwrap(), 1);
        drop(lost);
        for f in FILES {
            std::fs::write(dir.path().join(f), "gen 1 crc 0\nepoch zz\n").unwrap();
        }
        let (_, found) = SeqState::load(dir.path());
        assert!(
            matches!(found, Found::Lost(ref r) if r.contains("checksum")),
            "{found:?}"
        );
    }

    #[test]
    fn an_older_versions_single_file_is_continued() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("seq"), "epoch 00000000000000aa\np/g 7\n").unwrap();
        let (mut s, found) = SeqState::load(dir.path());
        assert_eq!(found, Found::Continued);
        assert_eq!(s.epoch(), "00000000000000aa");
        assert_eq!(s.reserve("p/g", 1).unwrap(), 7);
        assert!(!dir.path().join("seq").exists(), "replaced by the slots");
        let (mut again, _) = SeqState::load(dir.path());
        assert_eq!(again.reserve("p/g", 1).unwrap(), 8);
    }

    #[test]
    fn a_failed_write_reserves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = SeqState::load(dir.path());
        assert_eq!(s.reserve("p/g", 2).unwrap(), 1);
        // The next slot's file replaced by a read-only handle: the write fails.
        let files = s.files.as_mut().unwrap();
        files[1] = File::open(dir.path().join(FILES[1])).unwrap();
        assert!(s.reserve("p/g", 5).is_err());
        s.files = None;
        assert_eq!(s.reserve("p/g", 1).unwrap(), 3);
    }
}
