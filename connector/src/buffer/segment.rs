//! Segment files and their records.
//!
//! A segment is named after the id of its first record, `NNNNNNNNNNNNNNNNNNNN.seg` (20 digits, so
//! names sort by id), and holds records with consecutive ids, each:
//!
//! ```text
//! len u32 | crc32 u32 | id u64 | append time µs i64 | payload (len bytes)
//! ```
//!
//! little-endian; the CRC-32 (IEEE) covers `len`, `id`, the time and the payload.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Bytes before the payload.
pub(crate) const HEADER_LEN: usize = 24;

const SUFFIX: &str = ".seg";
const NAME_DIGITS: usize = 20;

pub(crate) fn file_name(first_id: u64) -> String {
    format!("{first_id:0width$}{SUFFIX}", width = NAME_DIGITS)
}

/// The first id encoded in a segment file name, or `None` for any other file.
pub(crate) fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Encodes one record into `out` (cleared first). The caller checks that `payload` fits a u32.
pub(crate) fn encode(id: u64, time_us: i64, payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&time_us.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = checksum(&out[0..4], &out[8..]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
}

fn checksum(len: &[u8], rest: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(len);
    hasher.update(rest);
    hasher.finalize()
}

/// The fixed part of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub len: u32,
    pub crc: u32,
    pub id: u64,
    pub time_us: i64,
}

impl Header {
    pub(crate) fn parse(bytes: &[u8; HEADER_LEN]) -> Header {
        let u32_at =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let u64_at = |i: usize| {
            let mut b = [0; 8];
            b.copy_from_slice(&bytes[i..i + 8]);
            u64::from_le_bytes(b)
        };
        Header {
            len: u32_at(0),
            crc: u32_at(4),
            id: u64_at(8),
            time_us: u64_at(16) as i64,
        }
    }
}

/// Checks one whole record (`bytes` is exactly header plus payload) against the id it must
/// carry; returns its header, or why it is unusable.
pub(crate) fn verify(bytes: &[u8], expected_id: u64) -> Result<Header, &'static str> {
    let Some(head) = bytes.first_chunk::<HEADER_LEN>() else {
        return Err("short header");
    };
    let header = Header::parse(head);
    if header.len as usize != bytes.len() - HEADER_LEN {
        return Err("length does not match");
    }
    if checksum(&bytes[0..4], &bytes[8..]) != header.crc {
        return Err("bad crc");
    }
    if header.id != expected_id {
        return Err("unexpected id");
    }
    Ok(header)
}

/// One segment file as the buffer knows it.
#[derive(Debug)]
pub(crate) struct Segment {
    pub first_id: u64,
    pub path: PathBuf,
    /// Byte offset of every record; record `i` has id `first_id + i`.
    pub offsets: Vec<u32>,
    /// Bytes of good records (the file may be longer after an append failed and could not be
    /// undone; recovery cuts that tail).
    pub len: u64,
}

impl Segment {
    pub(crate) fn new(first_id: u64, path: PathBuf) -> Segment {
        Segment {
            first_id,
            path,
            offsets: Vec::new(),
            len: 0,
        }
    }

    /// One past the last id held.
    pub(crate) fn end_id(&self) -> u64 {
        self.first_id + self.offsets.len() as u64
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    pub(crate) fn contains(&self, id: u64) -> bool {
        id >= self.first_id && id < self.end_id()
    }

    /// Byte range `[start, end)` of the records with ids `[from, to)` (both within the segment,
    /// `to` may be `end_id()`).
    pub(crate) fn span(&self, from: u64, to: u64) -> (u64, u64) {
        let at = |id: u64| {
            let i = (id - self.first_id) as usize;
            self.offsets.get(i).map_or(self.len, |&o| u64::from(o))
        };
        (at(from), at(to))
    }
}

/// Why a scan stopped before the end of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Torn {
    /// Where the first unusable record starts; the file is cut here.
    pub offset: u64,
    pub file_len: u64,
    pub reason: &'static str,
}

/// Reads a segment file from the start, checking every record, and stops at the first torn or
/// corrupt one.
pub(crate) fn scan(path: &Path, first_id: u64) -> io::Result<(Segment, Option<Torn>)> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut reader = io::BufReader::with_capacity(256 << 10, file);
    let mut segment = Segment::new(first_id, path.to_path_buf());
    let mut record = Vec::new();
    let torn = loop {
        let offset = segment.len;
        let remaining = file_len - offset;
        if remaining == 0 {
            break None;
        }
        let torn = |reason| {
            Some(Torn {
                offset,
                file_len,
                reason,
            })
        };
        if offset > u64::from(u32::MAX) {
            break torn("segment longer than 4 GiB");
        }
        if remaining < HEADER_LEN as u64 {
            break torn("short header");
        }
        let mut head = [0; HEADER_LEN];
        reader.read_exact(&mut head)?;
        let header = Header::parse(&head);
        let record_len = HEADER_LEN as u64 + u64::from(header.len);
        if record_len > remaining {
            break torn("short record");
        }
        record.clear();
        record.extend_from_slice(&head);
        record.resize(record_len as usize, 0);
        reader.read_exact(&mut record[HEADER_LEN..])?;
        if let Err(reason) = verify(&record, segment.end_id()) {
            break torn(reason);
        }
        segment.offsets.push(offset as u32);
        segment.len += record_len;
    };
    Ok((segment, torn))
}
