//! The assignment cache: `<buffer dir>/dps/assignment.json`, written atomically (temporary
//! file, fsync, rename, fsync of the directory), so that a restart connects to the assigned
//! hub without registering again (DPS limits registrations, and a plant's network may let the
//! hub through on a day DPS is away). A cache for another ID scope, registration id or kind
//! of credential belongs to another configuration: it is not used.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What DPS assigned, and to which registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub id_scope: String,
    pub registration_id: String,
    /// `symmetric_key`, `group_key` or `x509`.
    pub credential: String,
    /// The hub's host name.
    pub assigned_hub: String,
    pub device_id: String,
    /// When DPS assigned it (RFC 3339, UTC).
    pub assigned_at: String,
}

impl Assignment {
    /// Whether it was made for this registration.
    pub fn matches(&self, id_scope: &str, registration_id: &str, credential: &str) -> bool {
        self.id_scope == id_scope
            && self.registration_id.eq_ignore_ascii_case(registration_id)
            && self.credential == credential
    }
}

/// The cache file of a buffer directory.
pub fn path(buffer_dir: &Path) -> PathBuf {
    buffer_dir.join("dps").join("assignment.json")
}

/// What the cache holds.
#[derive(Debug)]
pub enum Cached {
    None,
    Found(Assignment),
    /// A file that cannot be read or is not an assignment: the reason.
    Unreadable(String),
}

pub fn load(path: &Path) -> Cached {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Cached::None,
        Err(e) => return Cached::Unreadable(e.to_string()),
    };
    match serde_json::from_slice(&bytes) {
        Ok(a) => Cached::Found(a),
        Err(e) => Cached::Unreadable(e.to_string()),
    }
}

/// Writes `a` to `path` atomically.
pub fn store(path: &Path, a: &Assignment) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        let mut text = serde_json::to_vec_pretty(a).map_err(std::io::Error::other)?;
        text.push(b'\n');
        f.write_all(&text)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Removes the cache (the hub refused its identity); a missing file is fine.
pub fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment() -> Assignment {
        Assignment {
            id_scope: "0ne00000A0A".into(),
            registration_id: "line-a".into(),
            credential: "group_key".into(),
            assigned_hub: "plant.azure-devices.net".into(),
            device_id: "line-a".into(),
            assigned_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn stored_assignments_load_back_and_match_only_their_registration() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path());
        assert!(matches!(load(&p), Cached::None));
        store(&p, &assignment()).unwrap();
        let Cached::Found(a) = load(&p) else {
            panic!("not found")
        };
        assert_eq!(a, assignment());
        assert!(a.matches("0ne00000A0A", "LINE-A", "group_key"));
        assert!(!a.matches("0ne00000B0B", "line-a", "group_key"));
        assert!(!a.matches("0ne00000A0A", "line-b", "group_key"));
        assert!(!a.matches("0ne00000A0A", "line-a", "x509"));
        // Rewritten in place, no temporary file left.
        store(
            &p,
            &Assignment {
                device_id: "d2".into(),
                ..assignment()
            },
        )
        .unwrap();
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["assignment.json"]);
        remove(&p).unwrap();
        remove(&p).unwrap();
        assert!(matches!(load(&p), Cached::None));
    }

    #[test]
    fn a_damaged_cache_is_unreadable_not_an_assignment() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path());
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"{\"id_scope\":").unwrap();
        assert!(matches!(load(&p), Cached::Unreadable(_)));
    }
}
