//! Dead letters: messages that a destination can never accept (larger than its limit, or
//! refused with a permanent reason) are moved aside into `dead-letters.jsonl` in the
//! destination's buffer directory, so that the stream goes on and nothing is lost silently.
//!
//! One JSON object per line: `time` (RFC 3339, UTC), `topic`, `epoch` and `seq` (read from the
//! message where it has them), `reason`, `bytes` (of the body), `gzip`, and `body_base64`. The
//! file holds at most [`MAX_BYTES`]; past that a dead letter is only counted and logged.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;

/// The most the dead-letter file grows to.
pub const MAX_BYTES: u64 = 64 << 20;

pub const FILE: &str = "dead-letters.jsonl";

#[derive(Debug)]
pub struct DeadLetters {
    path: PathBuf,
    bytes: u64,
}

/// Where a dead letter went.
#[derive(Debug, PartialEq, Eq)]
pub enum Kept {
    /// Appended to the file (fsynced).
    Stored,
    /// The file is at [`MAX_BYTES`]: counted and logged only.
    FileFull,
}

impl DeadLetters {
    pub fn open(dir: &Path) -> DeadLetters {
        let path = dir.join(FILE);
        let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
        DeadLetters { path, bytes }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves one message aside.
    pub fn put(
        &mut self,
        topic: &str,
        gzip: bool,
        body: &[u8],
        reason: &str,
    ) -> std::io::Result<Kept> {
        let (epoch, seq) = header_fields(gzip, body);
        let record = serde_json::json!({
            "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "topic": topic,
            "epoch": epoch,
            "seq": seq,
            "reason": reason,
            "bytes": body.len(),
            "gzip": gzip,
            "body_base64": base64::engine::general_purpose::STANDARD.encode(body),
        });
        let mut line = record.to_string();
        line.push('\n');
        if self.bytes + line.len() as u64 > MAX_BYTES {
            return Ok(Kept::FileFull);
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        f.write_all(line.as_bytes())?;
        f.sync_data()?;
        self.bytes += line.len() as u64;
        Ok(Kept::Stored)
    }
}

/// The `epoch` and `seq` of a telemetry message, read from its first bytes (they come before
/// the samples).
pub fn header_fields(gzip: bool, body: &[u8]) -> (Option<String>, Option<u64>) {
    let mut head = Vec::with_capacity(512);
    if gzip {
        let _ = flate2::read::GzDecoder::new(body)
            .take(512)
            .read_to_end(&mut head);
    } else {
        head.extend_from_slice(&body[..body.len().min(512)]);
    }
    let text = String::from_utf8_lossy(&head);
    let after = |key: &str| text.find(key).map(|i| &text[i + key.len()..]);
    let epoch = after("\"epoch\":\"")
        .and_then(|r| r.split('"').next())
        .map(str::to_owned);
    let seq = after("\"seq\":").and_then(|r| {
        r.split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|d| d.parse().ok())
    });
    (epoch, seq)
}

/// Reads every dead letter of a file (for tests and tools).
pub fn read_all(path: &Path) -> std::io::Result<Vec<serde_json::Value>> {
    let mut text = String::new();
    File::open(path)?.read_to_string(&mut text)?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letters_keep_the_message_and_name_its_seq() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = DeadLetters::open(dir.path());
        let body = br#"{"schema":2,"epoch":"00112233aabbccdd","line":"l","seq":42,"samples":[]}"#;
        assert_eq!(
            d.put("t/a", false, body, "too large").unwrap(),
            Kept::Stored
        );
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(body).unwrap();
            e.finish().unwrap()
        };
        d.put("t/b", true, &gz, "0x99 payload format invalid")
            .unwrap();
        let all = read_all(d.path()).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0]["seq"], 42);
        assert_eq!(all[0]["epoch"], "00112233aabbccdd");
        assert_eq!(all[1]["seq"], 42);
        assert_eq!(all[1]["gzip"], true);
        let back = base64::engine::general_purpose::STANDARD
            .decode(all[0]["body_base64"].as_str().unwrap())
            .unwrap();
        assert_eq!(back, body);
        // Reopened: the size is known, appends go on.
        let mut again = DeadLetters::open(dir.path());
        assert!(again.bytes > 0);
        again.put("t/c", false, b"x", "r").unwrap();
        assert_eq!(read_all(again.path()).unwrap().len(), 3);
    }
}
