//! The outbox of one telemetry destination (broker or hub): the durable [`Buffer`] the
//! encoders append to and the sender drains, the per-stream `seq` written ahead, and the
//! wake-up of the sender. Buffered messages are framed with their topic and gzip flag.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Buffer, BufferError};
use crate::config::{BufferConfig, WhenFull};
use crate::metrics::MqttMetrics;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("buffer: {0}")]
    Buffer(#[from] BufferError),
    #[error("cannot write {path}: {source}")]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the encoders and the sender share: the buffer, the per-stream sequence numbers and a
/// wake-up for the sender.
pub struct Outbox {
    pub buffer: Mutex<Buffer>,
    pub wake: tokio::sync::Notify,
    pub metrics: Arc<MqttMetrics>,
    seq: Mutex<SeqState>,
    pause: bool,
}

/// Next `seq` per `plc/group` stream, written ahead (tmp + fsync + rename) before a message
/// with that seq is buffered, so seq never repeats after a restart. A crash between the two
/// leaves an unused seq: a gap without missing data.
struct SeqState {
    path: PathBuf,
    next: HashMap<String, u64>,
}

impl SeqState {
    fn load(path: PathBuf) -> SeqState {
        let next = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect();
        SeqState { path, next }
    }

    fn reserve(&mut self, stream: &str, n: u64) -> Result<u64, OutboxError> {
        let first = *self.next.get(stream).unwrap_or(&1);
        self.next.insert(stream.to_owned(), first + n);
        let mut text = String::new();
        for (k, v) in &self.next {
            text.push_str(&format!("{k} {v}\n"));
        }
        let tmp = self.path.with_extension("tmp");
        let err = |source| OutboxError::State {
            path: self.path.clone(),
            source,
        };
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        Ok(first)
    }
}

impl Outbox {
    pub fn open(buffer: &BufferConfig, name: &str) -> Result<Arc<Outbox>, OutboxError> {
        let b = Buffer::open(buffer, name)?;
        let dir = buffer_dir(buffer, name);
        std::fs::create_dir_all(&dir).map_err(|source| OutboxError::State {
            path: dir.clone(),
            source,
        })?;
        Ok(Arc::new(Outbox {
            buffer: Mutex::new(b),
            wake: tokio::sync::Notify::new(),
            metrics: Arc::default(),
            seq: Mutex::new(SeqState::load(dir.join("seq"))),
            pause: buffer.when_full == WhenFull::Pause,
        }))
    }

    /// Reserves `n` consecutive seqs of `stream` (written ahead); returns the first.
    pub fn reserve(&self, stream: &str, n: u64) -> Result<u64, OutboxError> {
        self.seq
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reserve(stream, n)
    }

    /// Buffers one encoded message. With `when_full = "pause"` a full buffer makes the caller
    /// (a writer thread) wait, which backs up to the OPC UA side; nothing is dropped.
    pub fn push(&self, frame: &[u8]) -> Result<(), OutboxError> {
        loop {
            let r = self
                .buffer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .append(frame);
            match r {
                Ok(_) => {
                    self.metrics
                        .messages_buffered
                        .fetch_add(1, Ordering::Relaxed);
                    self.wake.notify_one();
                    return Ok(());
                }
                Err(BufferError::Full { .. }) if self.pause => {
                    self.metrics.pause_waits.fetch_add(1, Ordering::Relaxed);
                    self.wake.notify_one();
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => {
                    self.metrics.buffer_errors.fetch_add(1, Ordering::Relaxed);
                    return Err(e.into());
                }
            }
        }
    }
}

/// A buffered message: `topic_len u16 | topic | flags u8 | body`.
pub fn frame(topic: &str, gzip: bool, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(3 + topic.len() + body.len());
    f.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    f.extend_from_slice(topic.as_bytes());
    f.push(u8::from(gzip));
    f.extend_from_slice(body);
    f
}

/// The parts of a buffered message.
pub fn unframe(f: &[u8]) -> Option<(&str, bool, &[u8])> {
    let len = usize::from(u16::from_be_bytes([*f.first()?, *f.get(1)?]));
    let topic = std::str::from_utf8(f.get(2..2 + len)?).ok()?;
    let gzip = *f.get(2 + len)? == 1;
    Some((topic, gzip, f.get(3 + len..)?))
}

/// The directory a sink's buffer lives in.
pub fn buffer_dir(cfg: &BufferConfig, name: &str) -> PathBuf {
    cfg.dir.join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let f = frame("a/b", true, b"{}");
        assert_eq!(unframe(&f), Some(("a/b", true, &b"{}"[..])));
        assert_eq!(unframe(&[0, 9, b'x']), None);
    }

    #[test]
    fn seq_is_written_ahead_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("seq");
        let mut s = SeqState::load(p.clone());
        assert_eq!(s.reserve("p/g", 3).unwrap(), 1);
        assert_eq!(s.reserve("p/g", 1).unwrap(), 4);
        assert_eq!(s.reserve("p/h", 1).unwrap(), 1);
        let mut again = SeqState::load(p);
        assert_eq!(again.reserve("p/g", 1).unwrap(), 5);
        assert_eq!(again.reserve("p/h", 1).unwrap(), 2);
    }
}
