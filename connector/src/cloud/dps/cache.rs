//! The assignment cache: `<buffer dir>/dps/assignment.json`, written atomically (temporary
//! file, fsync, rename, fsync of the directory), so that a restart connects to the assigned
//! hub without registering again (DPS limits registrations, and a plant's network may let the
//! hub through on a day DPS is away). A cache for another ID scope, registration id, kind of
//! credential or credential (a rotated key, a renewed certificate: told by a fingerprint, never
//! the secret) belongs to another configuration: it is not used, and the connector registers
//! rather than first offering the hub an identity made for the old credential.

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
    /// [`fingerprint`] of the device key (SAS) or of the certificate (X.509) it was assigned
    /// with (empty in a cache written before fingerprints: not used, registered again).
    #[serde(default)]
    pub credential_fingerprint: String,
    /// The hub's host name.
    pub assigned_hub: String,
    pub device_id: String,
    /// When DPS assigned it (RFC 3339, UTC).
    pub assigned_at: String,
}

/// What an assignment is checked against: the configured registration.
#[derive(Debug, Clone, Copy)]
pub struct Registration<'a> {
    pub id_scope: &'a str,
    pub registration_id: &'a str,
    pub credential: &'a str,
    pub credential_fingerprint: &'a str,
}

/// Why a cached assignment is not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// Another ID scope, registration id or kind of credential: another configuration.
    Registration,
    /// The same registration with another key or certificate (rotated, renewed).
    Credential,
}

impl Assignment {
    /// Whether it was made for this registration and credential.
    pub fn check(&self, r: &Registration<'_>) -> Result<(), Mismatch> {
        if self.id_scope != r.id_scope
            || !self.registration_id.eq_ignore_ascii_case(r.registration_id)
            || self.credential != r.credential
        {
            Err(Mismatch::Registration)
        } else if self.credential_fingerprint != r.credential_fingerprint {
            Err(Mismatch::Credential)
        } else {
            Ok(())
        }
    }
}

/// `sha256:` and the first 16 bytes (hex) of the SHA-256 of `credential` (the device key's
/// base64 text, or the certificate's DER): tells one credential from another without the
/// cache holding anything that signs.
pub fn fingerprint(credential: &[u8]) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(credential);
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
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
            credential_fingerprint: fingerprint(b"key-1"),
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
        let key_1 = fingerprint(b"key-1");
        let this = Registration {
            id_scope: "0ne00000A0A",
            registration_id: "LINE-A",
            credential: "group_key",
            credential_fingerprint: &key_1,
        };
        assert_eq!(a.check(&this), Ok(()));
        for other in [
            Registration {
                id_scope: "0ne00000B0B",
                ..this
            },
            Registration {
                registration_id: "line-b",
                ..this
            },
            Registration {
                credential: "x509",
                ..this
            },
        ] {
            assert_eq!(a.check(&other), Err(Mismatch::Registration), "{other:?}");
        }
        let key_2 = fingerprint(b"key-2");
        let rotated = Registration {
            credential_fingerprint: &key_2,
            ..this
        };
        assert_eq!(a.check(&rotated), Err(Mismatch::Credential));
        assert!(
            key_1.starts_with("sha256:") && key_1.len() == 7 + 32,
            "{key_1}"
        );
        assert_ne!(key_1, key_2);
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
