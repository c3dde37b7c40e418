//! What the write service must remember across restarts: the desired `$version` last handled
//! per twin property (applied or refused, so a restart does not apply old state again) and
//! the ids of recent plain-MQTT requests (so a request delivered again is not applied again).
//!
//! One small JSON file, replaced atomically (write to a temporary file, fsync, rename,
//! fsync the directory) after every change, by a thread of its own so that an fsync never
//! holds up an acknowledgement (the last change is on disk when the state is dropped). A
//! crash can lose the last changes: the twin's reported acknowledgements cover them at the
//! next start. A file that cannot be read is moved aside to `*.corrupt` and logged; the
//! service then starts from the twin's reported acknowledgements.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::error;

/// Request ids remembered (and their answers), newest last.
pub const REMEMBERED_REQUESTS: usize = 10_000;

/// The file, as read.
#[derive(Debug, Default, Deserialize, PartialEq)]
struct OnDisk {
    #[serde(default)]
    twin: BTreeMap<String, i64>,
    #[serde(default)]
    requests: Vec<(String, Value)>,
}

/// The file, as written: the same shape as [`OnDisk`], borrowing the state.
#[derive(Serialize)]
struct Snapshot<'a> {
    twin: &'a BTreeMap<String, i64>,
    requests: Vec<(&'a str, &'a Value)>,
}

/// The persisted state, in memory.
#[derive(Debug)]
pub struct State {
    twin: BTreeMap<String, i64>,
    order: VecDeque<String>,
    /// Answers by request id; `Value::Null` while the request is in progress.
    answers: HashMap<String, Value>,
    saver: Option<(
        std::sync::mpsc::Sender<Vec<u8>>,
        std::thread::JoinHandle<()>,
    )>,
}

impl Drop for State {
    fn drop(&mut self) {
        if let Some((tx, thread)) = self.saver.take() {
            drop(tx);
            let _ = thread.join();
        }
    }
}

/// Writes the newest snapshot it is given, skipping ones already replaced.
fn saver(
    path: PathBuf,
) -> (
    std::sync::mpsc::Sender<Vec<u8>>,
    std::thread::JoinHandle<()>,
) {
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let thread = std::thread::spawn(move || {
        while let Ok(mut disk) = rx.recv() {
            while let Ok(newer) = rx.try_recv() {
                disk = newer;
            }
            if let Err(e) = write_atomically(&path, &disk) {
                error!(path = %path.display(), error = %e, "cannot save the write state");
            }
        }
    });
    (tx, thread)
}

impl State {
    /// Loads `path` (absent: empty).
    pub fn open(path: &Path) -> State {
        let mut state = State {
            twin: BTreeMap::new(),
            order: VecDeque::new(),
            answers: HashMap::new(),
            saver: Some(saver(path.to_owned())),
        };
        let disk = match std::fs::read(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => OnDisk::default(),
            Err(e) => {
                error!(path = %path.display(), error = %e, "cannot read the write state; starting without it");
                OnDisk::default()
            }
            Ok(bytes) => match serde_json::from_slice::<OnDisk>(&bytes) {
                Ok(d) => d,
                Err(e) => {
                    let aside = path.with_extension("json.corrupt");
                    let _ = std::fs::rename(path, &aside);
                    error!(path = %path.display(), moved_to = %aside.display(), error = %e,
                        "the write state is unreadable; moved aside, starting from the twin's reported acknowledgements");
                    OnDisk::default()
                }
            },
        };
        state.twin = disk.twin;
        for (id, answer) in disk.requests {
            state.remember(id, answer);
        }
        state
    }

    /// The desired version last handled for `property` (0 when never).
    pub fn handled(&self, property: &str) -> i64 {
        self.twin.get(property).copied().unwrap_or(0)
    }

    /// Records `version` for `property` if newer; saves. Errors are logged (the write has
    /// happened; only a restart could repeat it).
    pub fn set_handled(&mut self, property: &str, version: i64) {
        if self.handled(property) >= version {
            return;
        }
        self.twin.insert(property.to_owned(), version);
        self.save();
    }

    /// Raises the handled version of `property` without saving (from the reported section).
    pub fn raise_handled(&mut self, property: &str, version: i64) {
        if self.handled(property) < version {
            self.twin.insert(property.to_owned(), version);
        }
    }

    /// The answer to request `id` if it was seen (`Null` while in progress).
    pub fn answer(&self, id: &str) -> Option<&Value> {
        self.answers.get(id)
    }

    /// Records request `id` as in progress (not saved until it has an answer).
    pub fn begin(&mut self, id: &str) {
        self.remember(id.to_owned(), Value::Null);
    }

    /// Records the answer to request `id`; saves.
    pub fn finish(&mut self, id: &str, answer: Value) {
        self.remember(id.to_owned(), answer);
        self.save();
    }

    fn remember(&mut self, id: String, answer: Value) {
        if !self.answers.contains_key(&id) {
            if self.order.len() >= REMEMBERED_REQUESTS {
                if let Some(old) = self.order.pop_front() {
                    self.answers.remove(&old);
                }
            }
            self.order.push_back(id.clone());
        }
        self.answers.insert(id, answer);
    }

    pub fn save(&self) {
        let snapshot = Snapshot {
            twin: &self.twin,
            requests: self
                .order
                .iter()
                .filter_map(|id| {
                    let a = self.answers.get(id)?;
                    (!a.is_null()).then_some((id.as_str(), a))
                })
                .collect(),
        };
        let bytes = match serde_json::to_vec(&snapshot) {
            Ok(b) => b,
            Err(e) => return error!(error = %e, "cannot encode the write state"),
        };
        if let Some((tx, _)) = &self.saver {
            let _ = tx.send(bytes);
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn versions_and_answers_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w/state.json");
        let mut s = State::open(&path);
        assert_eq!(s.handled("a.b"), 0);
        s.set_handled("a.b", 7);
        s.set_handled("a.b", 5);
        s.begin("r1");
        assert_eq!(s.answer("r1"), Some(&Value::Null));
        s.finish("r1", json!({"status": 200}));
        s.begin("r2");
        drop(s);
        let s = State::open(&path);
        assert_eq!(s.handled("a.b"), 7, "never lowered");
        assert_eq!(s.answer("r1"), Some(&json!({"status": 200})));
        assert_eq!(s.answer("r2"), None, "in-progress requests are not saved");
    }

    #[test]
    fn a_corrupt_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, b"{not json").unwrap();
        let s = State::open(&path);
        assert_eq!(s.handled("x"), 0);
        assert!(dir.path().join("state.json.corrupt").exists());
    }

    #[test]
    fn old_request_ids_are_forgotten_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = State::open(&dir.path().join("s.json"));
        for i in 0..REMEMBERED_REQUESTS + 5 {
            s.remember(format!("r{i}"), json!(i));
        }
        assert_eq!(s.answer("r0"), None);
        assert_eq!(s.answer("r5"), Some(&json!(5)));
        assert_eq!(s.order.len(), REMEMBERED_REQUESTS);
    }
}
