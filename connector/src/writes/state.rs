//! What the write service must remember across restarts: the desired `$version` last handled
//! per twin property (applied or refused, so a restart does not apply old state again) and
//! the ids of recent plain-MQTT requests with the status of their answers (so a request
//! delivered again is not applied again).
//!
//! An append-only journal, one JSON record per line (`{"twin":"a.b","v":7}`,
//! `{"req":"r-1","a":{"id":"r-1","status":200,"detail":"written"}}`), appended and fsynced by
//! a thread of its own so that an fsync never holds up an acknowledgement (the last records
//! are on disk when the state is dropped). Every change appends one short record; nothing is
//! re-serialized whole per request. When the records appended since the last compaction
//! outnumber the live ones (at least [`COMPACT_AFTER`]), the thread rewrites the live state to
//! a temporary file, fsyncs it and renames it over the journal, so the file stays below about
//! twice the live state: at most [`REMEMBERED_REQUESTS`] request records of at most
//! [`MAX_RECORD_BYTES`] each, plus one per mapped property.
//!
//! Nothing in a record echoes a written value: answers are kept as id, status and a detail
//! cut to [`MAX_DETAIL_CHARS`] (a duplicate is answered with those, without `value` or
//! `outputs`). Request ids are at most [`super::MAX_ID_BYTES`] long (longer ones are refused
//! before they get here).
//!
//! Crash safety: a record torn by a crash (the last line without its newline) and lines that
//! do not parse are skipped (logged once with their count); a compaction is atomic (rename).
//! A crash can lose the records not yet fsynced: the twin's reported acknowledgements cover
//! twin versions at the next start. A journal that cannot be read is moved aside to
//! `*.corrupt`. A `state.json` of an older version next to the journal is read once and then
//! removed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::error;

/// Request ids remembered (and their answers), newest last.
pub const REMEMBERED_REQUESTS: usize = 10_000;

/// A compaction waits for at least this many appended records.
pub const COMPACT_AFTER: usize = 1_000;

/// Strings of a remembered answer (`detail`, `error`) are cut to this many characters.
pub const MAX_DETAIL_CHARS: usize = 160;

/// The largest record: a request id of at most 128 bytes and an answer of id, status and a
/// detail of at most 160 characters (4 bytes each at worst), with JSON's quoting.
pub const MAX_RECORD_BYTES: usize = 1_024;

/// Records waiting for the journal thread at most; the service waits for the disk beyond.
const JOURNAL_QUEUE: usize = 4_096;

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Record {
    Twin {
        twin: String,
        v: i64,
    },
    Request {
        req: String,
        a: Value,
    },
    /// The twin versions handled so far belong to an earlier twin (the newest was `v`): a
    /// new one starts from nothing.
    TwinSetAside {
        twin_set_aside: i64,
    },
    /// The hub identity (`host/device[/module]`) the twin versions are of.
    Identity {
        identity: String,
    },
}

/// The file of an older version: one JSON document.
#[derive(Debug, Default, Deserialize)]
struct Legacy {
    #[serde(default)]
    twin: BTreeMap<String, i64>,
    #[serde(default)]
    requests: Vec<(String, Value)>,
}

/// The remembered state: what the service asks, and what the journal thread compacts.
#[derive(Debug, Default, Clone)]
struct Live {
    /// The hub identity the twin versions are of (none before it was first recorded).
    identity: Option<String>,
    twin: BTreeMap<String, i64>,
    order: VecDeque<String>,
    /// Answers by request id; `Value::Null` while the request is in progress (in memory only).
    answers: HashMap<String, Value>,
}

impl Live {
    fn apply(&mut self, r: Record) {
        match r {
            Record::Twin { twin, v } => {
                let e = self.twin.entry(twin).or_insert(v);
                *e = (*e).max(v);
            }
            Record::Request { req, a } => self.remember(req, a),
            Record::TwinSetAside { .. } => self.twin.clear(),
            Record::Identity { identity } => self.identity = Some(identity),
        }
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

    /// The records of the live state (finished requests only), oldest first.
    fn records(&self) -> Vec<Record> {
        let twin = self.twin.iter().map(|(k, v)| Record::Twin {
            twin: k.clone(),
            v: *v,
        });
        let requests = self.order.iter().filter_map(|id| {
            let a = self.answers.get(id)?;
            (!a.is_null()).then(|| Record::Request {
                req: id.clone(),
                a: a.clone(),
            })
        });
        let identity = self.identity.iter().map(|i| Record::Identity {
            identity: i.clone(),
        });
        identity.chain(twin).chain(requests).collect()
    }

    fn len(&self) -> usize {
        self.twin.len() + self.order.len()
    }
}

/// An answer as remembered: `value` and `outputs` left out, strings cut.
pub fn compact(answer: &Value) -> Value {
    let Value::Object(o) = answer else {
        return Value::Null;
    };
    let mut out = serde_json::Map::new();
    for (k, v) in o {
        match (k.as_str(), v) {
            ("value" | "outputs" | "duplicate", _) => {}
            (_, Value::String(s)) => {
                out.insert(k.clone(), Value::from(cut(s, MAX_DETAIL_CHARS)));
            }
            (_, Value::Number(_) | Value::Bool(_)) => {
                out.insert(k.clone(), v.clone());
            }
            _ => {}
        }
    }
    Value::Object(out)
}

/// `s` cut to `max` characters, with `...` when cut.
pub fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some((at, _)) => format!("{}...", &s[..at]),
    }
}

/// The persisted state, in memory.
#[derive(Debug)]
pub struct State {
    live: Live,
    journal: Option<(SyncSender<Record>, std::thread::JoinHandle<()>)>,
}

impl Drop for State {
    fn drop(&mut self) {
        if let Some((tx, thread)) = self.journal.take() {
            drop(tx);
            let _ = thread.join();
        }
    }
}

/// Reads the journal at `path`: the live state and how many lines were skipped.
fn read_journal(path: &Path) -> std::io::Result<(Live, usize)> {
    let bytes = std::fs::read(path)?;
    let mut live = Live::default();
    let mut skipped = 0;
    let mut lines = bytes.split(|b| *b == b'\n').peekable();
    while let Some(line) = lines.next() {
        if lines.peek().is_none() {
            // The part after the last newline: empty, or a record torn by a crash.
            skipped += usize::from(!line.is_empty());
            break;
        }
        match serde_json::from_slice::<Record>(line) {
            Ok(r) => live.apply(r),
            Err(_) => skipped += 1,
        }
    }
    Ok((live, skipped))
}

impl State {
    /// Loads the journal at `path` (absent: empty; a legacy `state.json` beside it is read
    /// once) and starts its thread, which rewrites it compacted first.
    pub fn open(path: &Path) -> State {
        let mut live = match read_journal(path) {
            Ok((live, skipped)) => {
                if skipped > 0 {
                    error!(path = %path.display(), skipped,
                        "write state: unreadable records skipped (a crash while appending, or damage); the twin's reported acknowledgements cover the twin");
                }
                live
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Live::default(),
            Err(e) => {
                let aside = path.with_extension("corrupt");
                let _ = std::fs::rename(path, &aside);
                error!(path = %path.display(), moved_to = %aside.display(), error = %e,
                    "cannot read the write state; moved aside, starting from the twin's reported acknowledgements");
                Live::default()
            }
        };
        let legacy = path.with_file_name("state.json");
        if legacy != path {
            if let Ok(bytes) = std::fs::read(&legacy) {
                match serde_json::from_slice::<Legacy>(&bytes) {
                    Ok(old) => {
                        for (k, v) in old.twin {
                            live.apply(Record::Twin { twin: k, v });
                        }
                        for (id, a) in old.requests {
                            if id.len() <= super::MAX_ID_BYTES {
                                live.remember(id, compact(&a));
                            }
                        }
                    }
                    Err(e) => {
                        error!(path = %legacy.display(), error = %e, "the write state of an older version is unreadable; ignored")
                    }
                }
            }
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(JOURNAL_QUEUE);
        let mirror = live.clone();
        let thread = {
            let (path, legacy) = (path.to_owned(), legacy.clone());
            std::thread::spawn(move || journal_thread(path, legacy, mirror, rx))
        };
        State {
            live,
            journal: Some((tx, thread)),
        }
    }

    fn append(&self, r: Record) {
        if let Some((tx, _)) = &self.journal {
            // Blocks only when the disk is JOURNAL_QUEUE records behind.
            let _ = tx.send(r);
        }
    }

    /// The desired version last handled for `property` (0 when never).
    pub fn handled(&self, property: &str) -> i64 {
        self.live.twin.get(property).copied().unwrap_or(0)
    }

    /// Records `version` for `property` if newer; saves. Errors are logged (the write has
    /// happened; only a restart could repeat it).
    pub fn set_handled(&mut self, property: &str, version: i64) {
        if self.handled(property) >= version {
            return;
        }
        self.live.twin.insert(property.to_owned(), version);
        self.append(Record::Twin {
            twin: property.to_owned(),
            v: version,
        });
    }

    /// Raises the handled version of `property` without saving (from the reported section,
    /// and unmapped properties). At most [`REMEMBERED_REQUESTS`] properties are kept: beyond,
    /// a new name is not remembered (its acknowledgement in the twin still counts at the
    /// next GET).
    pub fn raise_handled(&mut self, property: &str, version: i64) {
        let room =
            self.live.twin.len() < REMEMBERED_REQUESTS || self.live.twin.contains_key(property);
        if room && self.handled(property) < version {
            self.live.twin.insert(property.to_owned(), version);
        }
    }

    /// The newest desired version handled for any property (0 when none).
    pub fn newest_handled(&self) -> i64 {
        self.live.twin.values().copied().max().unwrap_or(0)
    }

    /// The hub identity the twin versions are of, if recorded.
    pub fn identity(&self) -> Option<&str> {
        self.live.identity.as_deref()
    }

    /// Records the hub identity the twin versions are of; saves.
    pub fn set_identity(&mut self, identity: &str) {
        if self.identity() != Some(identity) {
            self.live.identity = Some(identity.to_owned());
            self.append(Record::Identity {
                identity: identity.to_owned(),
            });
        }
    }

    /// Forgets every handled twin version (the twin is a new one: its versions start again
    /// at 1); saves. Request ids are kept.
    pub fn set_twin_aside(&mut self) {
        let newest = self.newest_handled();
        self.live.twin.clear();
        self.append(Record::TwinSetAside {
            twin_set_aside: newest,
        });
    }

    /// The remembered answer to request `id` if it was seen (`Null` while in progress).
    pub fn answer(&self, id: &str) -> Option<&Value> {
        self.live.answers.get(id)
    }

    /// Records request `id` as in progress (not saved until it has an answer).
    pub fn begin(&mut self, id: &str) {
        self.live.remember(id.to_owned(), Value::Null);
    }

    /// Forgets request `id` while in progress (answered busy: it may ask again).
    pub fn forget(&mut self, id: &str) {
        if self.live.answers.get(id).is_some_and(Value::is_null) {
            self.live.answers.remove(id);
            self.live.order.retain(|o| o != id);
        }
    }

    /// Records the answer to request `id` (compacted, see [`compact`]); saves.
    pub fn finish(&mut self, id: &str, answer: &Value) {
        let a = compact(answer);
        self.live.remember(id.to_owned(), a.clone());
        self.append(Record::Request {
            req: id.to_owned(),
            a,
        });
    }
}

/// Appends the records it is given (one fsync per batch), compacting when due.
fn journal_thread(path: PathBuf, legacy: PathBuf, mut mirror: Live, rx: Receiver<Record>) {
    let open = |path: &Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    };
    // Start from a compacted journal (drops skipped lines and torn tails).
    let mut file = match compact_to(&path, &mirror).and_then(|()| open(&path)) {
        Ok(f) => {
            if legacy != path {
                let _ = std::fs::remove_file(&legacy);
            }
            Some(f)
        }
        Err(e) => {
            error!(path = %path.display(), error = %e, "cannot write the write state; request ids and twin versions are not kept across a restart");
            None
        }
    };
    let mut appended = 0usize;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter().take(JOURNAL_QUEUE));
        let mut text = Vec::new();
        for r in batch {
            if let Ok(line) = serde_json::to_vec(&r) {
                text.extend_from_slice(&line);
                text.push(b'\n');
            }
            mirror.apply(r);
            appended += 1;
        }
        let result = match file.as_mut() {
            Some(f) => f.write_all(&text).and_then(|()| f.sync_data()),
            None => open(&path).and_then(|mut f| {
                f.write_all(&text)?;
                f.sync_data()?;
                file = Some(f);
                Ok(())
            }),
        };
        if let Err(e) = result {
            error!(path = %path.display(), error = %e, "cannot append to the write state");
            file = None;
        }
        if appended >= COMPACT_AFTER.max(mirror.len()) {
            match compact_to(&path, &mirror).and_then(|()| open(&path)) {
                Ok(f) => {
                    file = Some(f);
                    appended = 0;
                }
                Err(e) => {
                    error!(path = %path.display(), error = %e, "cannot compact the write state")
                }
            }
        }
    }
}

/// Writes the live state to `path` atomically (temporary file, fsync, rename, fsync dir).
fn compact_to(path: &Path, live: &Live) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        for r in live.records() {
            serde_json::to_writer(&mut f, &r)?;
            f.write_all(b"\n")?;
        }
        f.flush()?;
        f.get_ref().sync_data()?;
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
    fn an_old_twin_set_aside_stays_aside_and_requests_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w/state.jsonl");
        let mut s = State::open(&path);
        s.set_handled("a", 50);
        s.set_handled("b", 48);
        s.finish("r1", &json!({"id": "r1", "status": 200}));
        assert_eq!(s.newest_handled(), 50);
        s.set_twin_aside();
        s.set_handled("a", 1);
        s.set_identity("hub.example/dev-1");
        drop(s);
        let s = State::open(&path);
        assert_eq!(s.identity(), Some("hub.example/dev-1"));
        assert_eq!((s.handled("a"), s.handled("b")), (1, 0));
        assert_eq!(s.newest_handled(), 1);
        assert!(s.answer("r1").is_some(), "request ids are not the twin's");
    }

    #[test]
    fn versions_and_answers_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w/state.jsonl");
        let mut s = State::open(&path);
        assert_eq!(s.handled("a.b"), 0);
        s.set_handled("a.b", 7);
        s.set_handled("a.b", 5);
        s.begin("r1");
        assert_eq!(s.answer("r1"), Some(&Value::Null));
        s.finish(
            "r1",
            &json!({"id": "r1", "status": 200, "value": "x".repeat(5000)}),
        );
        s.begin("r2");
        drop(s);
        let s = State::open(&path);
        assert_eq!(s.handled("a.b"), 7, "never lowered");
        assert_eq!(
            s.answer("r1"),
            Some(&json!({"id": "r1", "status": 200})),
            "no echoed value"
        );
        assert_eq!(s.answer("r2"), None, "in-progress requests are not saved");
        assert!(std::fs::metadata(&path).unwrap().len() < 200);
    }

    #[test]
    fn a_torn_or_damaged_record_is_skipped_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.jsonl");
        std::fs::write(
            &path,
            b"{\"twin\":\"x\",\"v\":3}\n{not json\n{\"req\":\"r1\",\"a\":{\"status\":400}}\n{\"twin\":\"y\",\"v",
        )
        .unwrap();
        let s = State::open(&path);
        assert_eq!(s.handled("x"), 3);
        assert_eq!(s.handled("y"), 0);
        assert_eq!(s.answer("r1"), Some(&json!({"status": 400})));
        drop(s);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text, "{\"twin\":\"x\",\"v\":3}\n{\"req\":\"r1\",\"a\":{\"status\":400}}\n",
            "rewritten clean at open"
        );
    }

    #[test]
    fn a_legacy_state_json_is_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = dir.path().join("state.json");
        std::fs::write(
            &legacy,
            json!({"twin": {"a": 4}, "requests": [["r1", {"id": "r1", "status": 200, "value": 1}]]})
                .to_string(),
        )
        .unwrap();
        let path = dir.path().join("state.jsonl");
        drop(State::open(&path));
        assert!(!legacy.exists());
        let s = State::open(&path);
        assert_eq!(s.handled("a"), 4);
        assert_eq!(s.answer("r1"), Some(&json!({"id": "r1", "status": 200})));
    }

    #[test]
    fn the_journal_stays_bounded_and_old_ids_are_forgotten_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        let mut s = State::open(&path);
        let detail = "d".repeat(10_000);
        for i in 0..3 * REMEMBERED_REQUESTS {
            let id = format!("{i:0>128}");
            s.finish(&id, &json!({"id": id, "status": 400, "detail": detail}));
        }
        assert_eq!(s.answer(&format!("{:0>128}", 0)), None);
        assert!(s
            .answer(&format!("{:0>128}", 3 * REMEMBERED_REQUESTS - 1))
            .is_some());
        assert_eq!(s.live.order.len(), REMEMBERED_REQUESTS);
        drop(s);
        let size = std::fs::metadata(&path).unwrap().len() as usize;
        assert!(
            size <= 2 * (REMEMBERED_REQUESTS + COMPACT_AFTER) * MAX_RECORD_BYTES,
            "{size} bytes"
        );
        let longest = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(str::len)
            .max()
            .unwrap();
        assert!(longest <= MAX_RECORD_BYTES, "{longest}");
        let s = State::open(&path);
        assert_eq!(s.live.order.len(), REMEMBERED_REQUESTS);
    }
}
