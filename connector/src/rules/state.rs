//! Which rules are fired, kept on disk (`<buffer dir>/rules/fired.json`) so that a restart
//! does not forget a firing: a rule that fired before the restart clears (and runs its
//! `on_clear`, e.g. closes the valve it opened) when its clear condition holds after it.

use std::collections::BTreeSet;
use std::path::PathBuf;

use tracing::warn;

/// The fired rules and their file.
#[derive(Debug)]
pub struct Fired {
    path: Option<PathBuf>,
    names: BTreeSet<String>,
    /// A failed save was logged (once until one succeeds).
    told: bool,
}

impl Fired {
    /// Reads `path` (nothing fired when it is absent or unreadable: logged).
    pub fn open(path: PathBuf) -> Fired {
        let names = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<Vec<String>>(&bytes).unwrap_or_else(|e| {
                warn!(path = %path.display(), error = %e, "cannot read which rules were fired; starting with none fired");
                Vec::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot read which rules were fired; starting with none fired");
                Vec::new()
            }
        };
        Fired {
            path: Some(path),
            names: names.into_iter().collect(),
            told: false,
        }
    }

    /// Kept in memory only (tests).
    pub fn in_memory() -> Fired {
        Fired {
            path: None,
            names: BTreeSet::new(),
            told: false,
        }
    }

    pub fn is_fired(&self, rule: &str) -> bool {
        self.names.contains(rule)
    }

    /// Records a firing (`true`) or a clear, and saves (write to a temporary file, rename).
    pub fn set(&mut self, rule: &str, fired: bool) {
        let changed = if fired {
            self.names.insert(rule.to_owned())
        } else {
            self.names.remove(rule)
        };
        let Some(path) = self.path.as_ref().filter(|_| changed) else {
            return;
        };
        let saved = (|| {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension("tmp");
            let names: Vec<&String> = self.names.iter().collect();
            std::fs::write(&tmp, serde_json::to_vec(&names).unwrap_or_default())?;
            std::fs::rename(&tmp, path)
        })();
        match saved {
            Ok(()) => self.told = false,
            Err(e) if !self.told => {
                self.told = true;
                warn!(path = %path.display(), error = %e, "cannot save which rules are fired: a restart may forget a firing");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firings_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules").join("fired.json");
        let mut f = Fired::open(path.clone());
        assert!(!f.is_fired("a"));
        f.set("a", true);
        f.set("b", true);
        f.set("b", false);
        let again = Fired::open(path.clone());
        assert!(again.is_fired("a") && !again.is_fired("b"));
        std::fs::write(&path, b"not json").unwrap();
        assert!(!Fired::open(path).is_fired("a"), "damaged: none fired");
    }
}
