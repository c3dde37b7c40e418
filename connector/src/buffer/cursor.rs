//! The `cursor` file: which stored messages are acknowledged.
//!
//! ```text
//! "OCB1" | acked u64 | n u32 | n × id u64 | crc32 u32
//! ```
//!
//! little-endian; `acked` is the low-water mark (every id up to it is acknowledged or was
//! dropped), the `n` ids above it were acknowledged out of order (at most [`MAX_ABOVE`] are
//! kept; any beyond are sent again after a restart); the CRC covers everything before it.
//! Written to `cursor.tmp`, fsynced, then renamed over `cursor`, so a reader sees the old or the
//! new value, never a mix.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use super::error::BufferError;

pub(crate) const FILE: &str = "cursor";
pub(crate) const TMP_FILE: &str = "cursor.tmp";

/// Out-of-order acks kept in the file (the lowest ones, which are sent first after a restart).
pub(crate) const MAX_ABOVE: usize = 65_536;

const MAGIC: &[u8; 4] = b"OCB1";
const FIXED: usize = 4 + 8 + 4;

/// What `read` found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Stored {
    Missing,
    Acked {
        low: u64,
        above: Vec<u64>,
    },
    /// The file exists but cannot be trusted (the reason); the caller replays from the start.
    Unusable(&'static str),
}

pub(crate) fn read(dir: &Path) -> Result<Stored, BufferError> {
    let path = dir.join(FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Stored::Missing),
        Err(e) => return Err(BufferError::io("read cursor", path, e)),
    };
    Ok(decode(&bytes))
}

fn decode(bytes: &[u8]) -> Stored {
    if bytes.len() < FIXED + 4 {
        return Stored::Unusable("too short");
    }
    if &bytes[0..4] != MAGIC {
        return Stored::Unusable("unknown format");
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        return Stored::Unusable("bad crc");
    }
    let u64_at = |i: usize| {
        let mut b = [0; 8];
        b.copy_from_slice(&body[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let low = u64_at(4);
    let n = u32::from_le_bytes([body[12], body[13], body[14], body[15]]) as usize;
    if body.len() != FIXED + n * 8 {
        return Stored::Unusable("wrong length");
    }
    let above = (0..n).map(|i| u64_at(FIXED + i * 8)).collect();
    Stored::Acked { low, above }
}

fn encode(low: u64, above: impl ExactSizeIterator<Item = u64>) -> Vec<u8> {
    let n = above.len().min(MAX_ABOVE);
    let mut bytes = Vec::with_capacity(FIXED + n * 8 + 4);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&low.to_le_bytes());
    bytes.extend_from_slice(&(n as u32).to_le_bytes());
    for id in above.take(n) {
        bytes.extend_from_slice(&id.to_le_bytes());
    }
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

/// Replaces the cursor file (`above` in increasing order).
pub(crate) fn write(
    dir: &Path,
    low: u64,
    above: impl ExactSizeIterator<Item = u64>,
) -> Result<(), BufferError> {
    let bytes = encode(low, above);
    let tmp = dir.join(TMP_FILE);
    let mut file = File::create(&tmp).map_err(|e| BufferError::io("create cursor", &tmp, e))?;
    file.write_all(&bytes)
        .map_err(|e| BufferError::io("write cursor", &tmp, e))?;
    file.sync_data()
        .map_err(|e| BufferError::io("fsync cursor", &tmp, e))?;
    let path = dir.join(FILE);
    fs::rename(&tmp, &path).map_err(|e| BufferError::io("rename cursor to", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_damage() {
        let bytes = encode(41, [43, 47].into_iter());
        assert_eq!(
            decode(&bytes),
            Stored::Acked {
                low: 41,
                above: vec![43, 47]
            }
        );
        let mut damaged = bytes.clone();
        damaged[5] ^= 1;
        assert_eq!(decode(&damaged), Stored::Unusable("bad crc"));
        assert_eq!(decode(&bytes[..10]), Stored::Unusable("too short"));
    }
}
