//! The outbox of one telemetry destination (broker or hub): the durable [`Buffer`] the
//! encoders append to and the sender drains, the per-stream `seq` and epoch written ahead
//! ([`super::seq`]), the dead letters ([`super::dead`]) and the wake-up of the sender.
//! Buffered messages are framed with their topic and gzip flag.
//!
//! Nothing stops the writer thread that pushes: a message over the destination's limit is
//! dead-lettered; when the buffer or its file system is full and nothing can be evicted
//! (`when_full = "pause"`), messages wait in memory (up to [`HOLD_BYTES`], in order) and go
//! in once room is freed; beyond that they are refused, counted and logged (rate-limited).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tracing::{error, info, warn};

use super::dead::{DeadLetters, Kept};
use super::seq::{Found, SeqState};
use super::{Buffer, BufferError};
use crate::config::BufferConfig;
use crate::metrics::MqttMetrics;
use crate::ratelog::RateLog;

/// Messages held in memory while the buffer cannot take them (pause, full disk).
pub const HOLD_BYTES: usize = 32 << 20;

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
    name: String,
    dir: PathBuf,
    epoch: String,
    seq: Mutex<SeqState>,
    dead: Mutex<DeadLetters>,
    held: Mutex<Held>,
    /// The largest body the destination takes (its message limit).
    max_body: usize,
    log_dead: RateLog,
    log_held: RateLog,
    log_refused: RateLog,
}

#[derive(Default)]
struct Held {
    frames: VecDeque<Vec<u8>>,
    bytes: usize,
}

impl Outbox {
    /// Opens the buffer `name` of `buffer.dir` for a destination that takes bodies of at most
    /// `max_body` bytes.
    pub fn open(
        buffer: &BufferConfig,
        name: &str,
        max_body: usize,
    ) -> Result<Arc<Outbox>, OutboxError> {
        // The seq state first: a directory with nothing in it yet is a first start.
        let dir = buffer_dir(buffer, name);
        let (seq, found) = SeqState::load(&dir);
        let b = Buffer::open(buffer, name)?;
        match &found {
            Found::Continued => {}
            Found::First => info!(buffer = name, epoch = seq.epoch(), "seq epoch started"),
            Found::Lost(reason) => warn!(
                buffer = name,
                epoch = seq.epoch(),
                reason,
                "seq state lost: a new epoch starts at seq 1 (consumers de-duplicate on epoch and seq)"
            ),
        }
        Ok(Arc::new(Outbox {
            buffer: Mutex::new(b),
            wake: tokio::sync::Notify::new(),
            metrics: Arc::default(),
            name: name.to_owned(),
            dir: dir.clone(),
            epoch: seq.epoch().to_owned(),
            seq: Mutex::new(seq),
            dead: Mutex::new(DeadLetters::open(&dir)),
            held: Mutex::default(),
            max_body,
            log_dead: RateLog::per_minute(),
            log_held: RateLog::per_minute(),
            log_refused: RateLog::per_minute(),
        }))
    }

    /// The stream epoch carried in every message of this destination.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Reserves `n` consecutive seqs of `stream` (written ahead); returns the first. On `Err`
    /// nothing is reserved.
    pub fn reserve(&self, stream: &str, n: u64) -> Result<u64, OutboxError> {
        let mut seq = self.seq.lock().unwrap_or_else(|e| e.into_inner());
        seq.reserve(stream, n).map_err(|source| OutboxError::State {
            path: self.dir.join("seq"),
            source,
        })
    }

    /// Buffers one encoded message (a [`frame`]). Never blocks: see the module notes.
    pub fn push(&self, framed: Vec<u8>) -> Result<(), OutboxError> {
        if let Some((topic, gzip, body)) = unframe(&framed) {
            if body.len() > self.max_body {
                let reason = format!(
                    "{} bytes, over the destination's message limit of {} bytes",
                    body.len(),
                    self.max_body
                );
                self.dead_letter(topic, gzip, body, &reason);
                return Ok(());
            }
        }
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = self.drain_held(&mut held) {
            // Held messages go first; this one waits behind them (the error is counted).
            tracing::warn!(buffer = %self.name, error = %e, "cannot move held messages into the buffer");
        }
        if held.frames.is_empty() {
            match self.append(&framed) {
                Ok(()) => return Ok(()),
                Err(OutboxError::Buffer(e @ BufferError::TooLarge { .. })) => {
                    if let Some((topic, gzip, body)) = unframe(&framed) {
                        self.dead_letter(topic, gzip, body, &e.to_string());
                    }
                    return Ok(());
                }
                Err(e) if !is_full(&e) => return Err(e),
                Err(e) => {
                    if let Some(more) = self.log_held.hit() {
                        warn!(buffer = %self.name, error = %e, suppressed = more,
                            "buffer cannot take messages; holding them in memory (telemetry only: Parquet goes on)");
                    }
                }
            }
        }
        if held.bytes + framed.len() <= HOLD_BYTES {
            self.metrics.held_in_memory.fetch_add(1, Ordering::Relaxed);
            held.bytes += framed.len();
            held.frames.push_back(framed);
        } else {
            self.metrics.refused_full.fetch_add(1, Ordering::Relaxed);
            if let Some(more) = self.log_refused.hit() {
                error!(buffer = %self.name, held_bytes = held.bytes, suppressed = more,
                    "buffer full and the memory hold too: telemetry message refused (counted; Parquet keeps the samples)");
            }
        }
        Ok(())
    }

    /// Moves held messages into the buffer while it takes them (call it periodically).
    pub fn retry_held(&self) -> Result<(), OutboxError> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        self.drain_held(&mut held)
    }

    /// Messages waiting in memory.
    pub fn held(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .frames
            .len()
    }

    fn drain_held(&self, held: &mut Held) -> Result<(), OutboxError> {
        while let Some(f) = held.frames.front() {
            match self.append(f) {
                Ok(()) => {
                    held.bytes -= f.len();
                    held.frames.pop_front();
                }
                Err(e) if is_full(&e) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// At the end (shutdown): what still waits in memory is given up, counted as refused and
    /// logged with its count.
    pub fn give_up_held(&self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self.drain_held(&mut held);
        let n = held.frames.len();
        if n > 0 {
            held.frames.clear();
            held.bytes = 0;
            self.metrics
                .refused_full
                .fetch_add(n as u64, Ordering::Relaxed);
            error!(buffer = %self.name, messages = n,
                "stopping with telemetry messages held in memory (the buffer was full): not buffered, counted as refused; Parquet has their samples");
        }
    }

    fn append(&self, framed: &[u8]) -> Result<(), OutboxError> {
        let r = self
            .buffer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .append(framed);
        match r {
            Ok(_) => {
                self.metrics
                    .messages_buffered
                    .fetch_add(1, Ordering::Relaxed);
                self.wake.notify_one();
                Ok(())
            }
            Err(e) => {
                if !matches!(e, BufferError::Full { .. } | BufferError::NoSpace { .. }) {
                    self.metrics.buffer_errors.fetch_add(1, Ordering::Relaxed);
                }
                self.wake.notify_one();
                Err(e.into())
            }
        }
    }

    /// Moves a message that the destination can never take aside: counted, logged (the first,
    /// then once a minute), kept in the dead-letter file.
    pub fn dead_letter(&self, topic: &str, gzip: bool, body: &[u8], reason: &str) {
        self.metrics.dead_letters.fetch_add(1, Ordering::Relaxed);
        let (epoch, seq) = super::dead::header_fields(gzip, body);
        let kept = self
            .dead
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .put(topic, gzip, body, reason);
        let file = self.dir.join(super::dead::FILE);
        if let Some(more) = self.log_dead.hit() {
            let kept = match &kept {
                Ok(Kept::Stored) => "kept in the dead-letter file".to_owned(),
                Ok(Kept::FileFull) => "NOT kept: the dead-letter file is full".to_owned(),
                Err(e) => format!("NOT kept: {e}"),
            };
            error!(buffer = %self.name, topic, epoch = epoch.as_deref().unwrap_or(""),
                seq = seq.unwrap_or(0), reason, file = %file.display(), kept, suppressed = more,
                "message the destination can never accept moved aside (dead letter); the stream goes on");
        }
    }
}

fn is_full(e: &OutboxError) -> bool {
    matches!(
        e,
        OutboxError::Buffer(BufferError::Full { .. } | BufferError::NoSpace { .. })
    )
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

    fn cfg(dir: &std::path::Path, when_full: crate::config::WhenFull) -> BufferConfig {
        BufferConfig {
            dir: dir.to_owned(),
            max_bytes: 64 << 10,
            when_full,
            segment_bytes: 16 << 10,
            min_free: 0,
        }
    }

    fn body(seq: u64, len: usize) -> Vec<u8> {
        let mut b =
            format!("{{\"schema\":2,\"epoch\":\"0000000000000001\",\"seq\":{seq},\"samples\":[\"")
                .into_bytes();
        b.resize(len, b'x');
        b
    }

    #[test]
    fn a_message_over_the_limit_is_dead_lettered_and_the_rest_buffered() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(
            &cfg(dir.path(), crate::config::WhenFull::DropOldest),
            "mqtt",
            4096,
        )
        .unwrap();
        ob.push(frame("t", false, &body(1, 100))).unwrap();
        ob.push(frame("t", false, &body(2, 5000))).unwrap();
        ob.push(frame("t", false, &body(3, 100))).unwrap();
        assert_eq!(ob.metrics.dead_letters.load(Ordering::Relaxed), 1);
        assert_eq!(ob.metrics.messages_buffered.load(Ordering::Relaxed), 2);
        let dead =
            super::super::dead::read_all(&dir.path().join("mqtt").join(super::super::dead::FILE))
                .unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0]["seq"], 2);
        assert_eq!(dead[0]["topic"], "t");
    }

    #[test]
    fn pause_holds_in_memory_in_order_and_refuses_beyond_the_hold() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(
            &cfg(dir.path(), crate::config::WhenFull::Pause),
            "mqtt",
            1 << 20,
        )
        .unwrap();
        // 64 KiB of buffer: 4 KiB messages fill it after ~15.
        let mut n = 0;
        while ob.held() == 0 {
            n += 1;
            ob.push(frame("t", false, &body(n, 4000))).unwrap();
            assert!(n < 100, "the buffer never filled");
        }
        let stored = n - 1;
        // The writer is never blocked: the next ones wait in memory, in order.
        for _ in 0..5 {
            n += 1;
            ob.push(frame("t", false, &body(n, 4000))).unwrap();
        }
        assert_eq!(ob.held(), 6);
        // Delivering frees segments: the held messages go in, in order.
        {
            let mut b = ob.buffer.lock().unwrap();
            let sent = b.next_unsent(1000).unwrap();
            assert_eq!(sent.len() as u64, stored);
            for (id, _) in sent {
                b.ack(id).unwrap();
            }
        }
        ob.retry_held().unwrap();
        assert_eq!(ob.held(), 0);
        let mut b = ob.buffer.lock().unwrap();
        let seqs: Vec<Option<u64>> = b
            .next_unsent(1000)
            .unwrap()
            .iter()
            .map(|(_, f)| super::super::dead::header_fields(false, unframe(f).unwrap().2).1)
            .collect();
        let want: Vec<Option<u64>> = (stored + 1..=n).map(Some).collect();
        assert_eq!(seqs, want);
        drop(b);
        // Beyond the hold: refused and counted, never blocking.
        let mut pushed = 0;
        while ob.metrics.refused_full.load(Ordering::Relaxed) == 0 {
            ob.push(frame("t", false, &body(0, 4000))).unwrap();
            pushed += 1;
            assert!(pushed < 10_000, "never refused");
        }
        assert!(ob.held() >= HOLD_BYTES / 4100, "{}", ob.held());
    }
}
