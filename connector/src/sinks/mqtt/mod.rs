//! MQTT telemetry: samples batched per (plc, group) into JSON v1 messages, written to the
//! durable buffer, and sent from there by one event-loop task; a message leaves the buffer
//! only when the broker acknowledged it (QoS 1; QoS 0 when it was written to the socket).

pub mod control;
pub mod flow;
pub mod payload;
pub mod sender;
pub mod sender_v5;

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::warn;

use crate::buffer::{Buffer, BufferError};
use crate::config::{BufferConfig, MqttSinkConfig, Payload, WhenFull};
use crate::sample::Sample;

/// Counters of the telemetry path.
#[derive(Debug, Default)]
pub struct MqttMetrics {
    pub connected: AtomicBool,
    pub reconnects: AtomicU64,
    pub samples_buffered: AtomicU64,
    pub messages_buffered: AtomicU64,
    pub messages_sent: AtomicU64,
    pub messages_acked: AtomicU64,
    pub bytes_acked: AtomicU64,
    pub buffer_errors: AtomicU64,
    pub pause_waits: AtomicU64,
    /// Reconnects made to renew credentials (IoT Hub SAS tokens).
    pub renewals: AtomicU64,
    /// Messages a broker refused in its PUBACK (MQTT 5 reason code >= 0x80); sent again.
    pub rejected: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("buffer: {0}")]
    Buffer(#[from] BufferError),
    #[error("cannot write {path}: {source}")]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Tls(String),
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

    fn reserve(&mut self, stream: &str, n: u64) -> Result<u64, MqttError> {
        let first = *self.next.get(stream).unwrap_or(&1);
        self.next.insert(stream.to_owned(), first + n);
        let mut text = String::new();
        for (k, v) in &self.next {
            text.push_str(&format!("{k} {v}\n"));
        }
        let tmp = self.path.with_extension("tmp");
        let err = |source| MqttError::State {
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
    pub fn open(
        buffer: &BufferConfig,
        name: &str,
        metrics: Arc<MqttMetrics>,
    ) -> Result<Arc<Outbox>, MqttError> {
        let b = Buffer::open(buffer, name)?;
        let dir = buffer_dir(buffer, name);
        std::fs::create_dir_all(&dir).map_err(|source| MqttError::State {
            path: dir.clone(),
            source,
        })?;
        Ok(Arc::new(Outbox {
            buffer: Mutex::new(b),
            wake: tokio::sync::Notify::new(),
            metrics,
            seq: Mutex::new(SeqState::load(dir.join("seq"))),
            pause: buffer.when_full == WhenFull::Pause,
        }))
    }

    /// Buffers one encoded message. With `when_full = "pause"` a full buffer makes the caller
    /// (a writer thread) wait, which backs up to the OPC UA side; nothing is dropped.
    fn push(&self, frame: &[u8]) -> Result<(), MqttError> {
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

/// Topic of a stream: the template with `{site}`, `{line}`, `{plc}`, `{group}` filled in.
pub fn topic(template: &str, site: &str, line: &str, plc: &str, group: &str) -> String {
    template
        .replace("{site}", site)
        .replace("{line}", line)
        .replace("{plc}", plc)
        .replace("{group}", group)
}

/// The topic of a (plc, group) stream.
pub type TopicFn = Arc<dyn Fn(&str, &str) -> String + Send + Sync>;

/// How an encoder batches and where its messages go.
#[derive(Clone)]
pub struct EncoderSettings {
    pub batch_max_samples: std::num::NonZeroUsize,
    pub batch_max_delay: Duration,
    pub max_message_bytes: usize,
    pub payload: Payload,
    pub topic: TopicFn,
}

impl EncoderSettings {
    /// A generic broker: the topic template of `[sink.mqtt]`.
    pub fn broker(cfg: &MqttSinkConfig, line: &str, site: &str) -> Self {
        let (template, line, site) = (cfg.topic.clone(), line.to_owned(), site.to_owned());
        EncoderSettings {
            batch_max_samples: cfg.batch_max_samples,
            batch_max_delay: cfg.batch_max_delay,
            max_message_bytes: cfg.max_message_bytes,
            payload: cfg.payload,
            topic: Arc::new(move |plc, group| topic(&template, &site, &line, plc, group)),
        }
    }
}

/// Batches the samples of one PLC per group and buffers them as messages.
pub struct Encoder {
    cfg: EncoderSettings,
    line: String,
    outbox: Arc<Outbox>,
    pending: HashMap<Arc<str>, (Instant, Vec<Sample>)>,
}

impl Encoder {
    pub fn new(cfg: EncoderSettings, line: &str, outbox: Arc<Outbox>) -> Self {
        Encoder {
            cfg,
            line: line.to_owned(),
            outbox,
            pending: HashMap::new(),
        }
    }

    /// Adds samples; flushes groups that reached `batch_max_samples`.
    pub fn write(&mut self, samples: &[Sample]) -> Result<(), MqttError> {
        let max = self.cfg.batch_max_samples.get();
        let mut full = Vec::new();
        for s in samples {
            let e = self
                .pending
                .entry(s.item.group.clone())
                .or_insert_with(|| (Instant::now(), Vec::new()));
            e.1.push(s.clone());
            if e.1.len() >= max && !full.contains(&s.item.group) {
                full.push(s.item.group.clone());
            }
        }
        for g in full {
            self.flush_group(&g)?;
        }
        Ok(())
    }

    /// Flushes groups whose oldest sample waited `batch_max_delay`.
    pub fn tick(&mut self) -> Result<(), MqttError> {
        let due: Vec<Arc<str>> = self
            .pending
            .iter()
            .filter(|(_, (since, v))| !v.is_empty() && since.elapsed() >= self.cfg.batch_max_delay)
            .map(|(g, _)| g.clone())
            .collect();
        for g in due {
            self.flush_group(&g)?;
        }
        Ok(())
    }

    /// Flushes everything (shutdown).
    pub fn flush(&mut self) -> Result<(), MqttError> {
        let groups: Vec<Arc<str>> = self.pending.keys().cloned().collect();
        for g in groups {
            self.flush_group(&g)?;
        }
        Ok(())
    }

    fn flush_group(&mut self, group: &Arc<str>) -> Result<(), MqttError> {
        let Some((_, samples)) = self.pending.remove(group) else {
            return Ok(());
        };
        if samples.is_empty() {
            return Ok(());
        }
        let plc = samples[0].item.plc.clone();
        let stream = format!("{plc}/{group}");
        let gzip = self.cfg.payload == Payload::JsonGzip;
        // Room for the frame header and gzip overhead in the message limit.
        let budget = self.cfg.max_message_bytes.saturating_sub(1024).max(1024);
        // Encode the samples once, reserve one seq per message (written ahead), then add the
        // headers.
        let bodies = payload::split(
            &self.line,
            &plc,
            group,
            &samples,
            self.cfg.batch_max_samples.get(),
            budget,
        );
        let first = self
            .outbox
            .seq
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reserve(&stream, bodies.len() as u64)?;
        let messages = bodies
            .iter()
            .zip(first..)
            .map(|(body, seq)| payload::assemble(&self.line, &plc, group, seq, body));
        let topic = (self.cfg.topic)(&plc, group);
        for m in messages {
            let body = if gzip {
                gzip_bytes(m.as_bytes())
            } else {
                m.into_bytes()
            };
            self.outbox.push(&frame(&topic, gzip, &body))?;
        }
        self.outbox
            .metrics
            .samples_buffered
            .fetch_add(samples.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

pub fn gzip_bytes(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4),
        flate2::Compression::fast(),
    );
    if e.write_all(data).is_err() {
        warn!("gzip failed; sending uncompressed");
        return data.to_vec();
    }
    e.finish().unwrap_or_else(|_| data.to_vec())
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
        assert_eq!(
            topic("opcua/{site}/{line}/{plc}/{group}", "s", "l", "p", "g"),
            "opcua/s/l/p/g"
        );
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
