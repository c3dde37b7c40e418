//! Telemetry encoders: one PLC's samples batched per group into JSON v1 messages (gzip where
//! asked) and appended to a destination's [`Outbox`]; the cloud connection (`cloud::mqtt`,
//! `cloud::hub`) sends them from there. One encoder per PLC and destination.
//!
//! - [`payload`]: the JSON v1 message text.

pub mod alerts;
pub mod exception;
pub mod payload;
pub mod shape;

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::warn;

use crate::buffer::outbox::{frame, Outbox, OutboxError};
use crate::cloud::mqtt::{topic, TopicFn};
use crate::config::{HubConfig, MqttSinkConfig, Payload, Plc, HUB_MAX_MESSAGE_BYTES};
use crate::sample::Sample;
use shape::{Shaper, Taken};

/// How an encoder batches and where its messages go.
#[derive(Clone)]
pub struct EncoderSettings {
    pub batch_max_samples: std::num::NonZeroUsize,
    pub batch_max_delay: Duration,
    pub max_message_bytes: usize,
    pub payload: Payload,
    pub topic: TopicFn,
    /// The topic of an event stream (`[[plc.events]]`).
    pub event_topic: TopicFn,
    /// The topic of the local rules' alerts (group `alerts`).
    pub alert_topic: TopicFn,
    /// IoT Hub (else a broker): which `[plc.group.telemetry]` apply (`to`).
    pub hub: bool,
}

impl EncoderSettings {
    /// A generic broker: the topic template of `[sink.mqtt]`.
    pub fn broker(cfg: &MqttSinkConfig, line: &str, site: &str) -> Self {
        let (template, line, site) = (cfg.topic.clone(), line.to_owned(), site.to_owned());
        let (events, eline, esite) = (template.clone(), line.clone(), site.clone());
        let (alerts, aline, asite) = (template.clone(), line.clone(), site.clone());
        EncoderSettings {
            batch_max_samples: cfg.batch_max_samples,
            batch_max_delay: cfg.batch_max_delay,
            max_message_bytes: cfg.max_message_bytes,
            payload: cfg.payload,
            topic: Arc::new(move |plc, group| topic(&template, &site, &line, plc, group)),
            event_topic: Arc::new(move |plc, group| topic(&events, &esite, &eline, plc, group)),
            alert_topic: Arc::new(move |plc, group| topic(&alerts, &asite, &aline, plc, group)),
            hub: false,
        }
    }
}

impl EncoderSettings {
    /// IoT Hub: `[hub]` batching, the hub's message limit, `topic` from the hub identity.
    pub fn hub(
        cfg: &HubConfig,
        topic: TopicFn,
        event_topic: TopicFn,
        alert_topic: TopicFn,
    ) -> Self {
        EncoderSettings {
            batch_max_samples: cfg.batch_max_samples,
            batch_max_delay: cfg.batch_max_delay,
            max_message_bytes: HUB_MAX_MESSAGE_BYTES,
            payload: cfg.payload,
            topic,
            event_topic,
            alert_topic,
            hub: true,
        }
    }
}

/// Batches the samples of one PLC per group and buffers them as messages.
pub struct Encoder {
    cfg: EncoderSettings,
    line: String,
    outbox: Arc<Outbox>,
    pending: HashMap<Arc<str>, (Instant, Vec<Sample>)>,
    /// Shaped groups: their windows and what each says.
    shaped: HashMap<Arc<str>, (Shaper, Vec<&'static str>)>,
    /// Groups reported by exception.
    filtered: HashMap<Arc<str>, exception::Filter>,
    /// The PLC whose samples this encoder takes (for the windows' messages).
    plc: Option<Arc<str>>,
}

impl Encoder {
    pub fn new(cfg: EncoderSettings, line: &str, outbox: Arc<Outbox>) -> Self {
        Encoder {
            cfg,
            line: line.to_owned(),
            outbox,
            pending: HashMap::new(),
            shaped: HashMap::new(),
            filtered: HashMap::new(),
            plc: None,
        }
    }

    /// Shapes the groups of `plc` whose `[plc.group.telemetry]` names this destination.
    pub fn with_shaping(mut self, plc: &Plc) -> Self {
        self.plc = Some(plc.id.as_str().into());
        for g in &plc.groups {
            if let Some(t) = &g.telemetry {
                if (self.cfg.hub && t.hub) || (!self.cfg.hub && t.mqtt) {
                    let entry = (Shaper::new(t.window), t.aggregates.clone());
                    self.shaped.insert(g.name.as_str().into(), entry);
                }
            }
            if let Some(e) = &g.exception {
                if (self.cfg.hub && e.hub) || (!self.cfg.hub && e.mqtt) {
                    let own = g.nodes.iter().filter_map(|n| {
                        let e = n.exception.clone()?;
                        Some((n.node.to_string(), e))
                    });
                    let filter = exception::Filter::new(e.clone(), own);
                    self.filtered.insert(g.name.as_str().into(), filter);
                }
            }
        }
        self
    }

    /// Queues a sample for its group's next message; true when the group is full.
    fn queue(&mut self, s: Sample) -> bool {
        let e = self
            .pending
            .entry(s.item.group.clone())
            .or_insert_with(|| (Instant::now(), Vec::new()));
        e.1.push(s);
        e.1.len() >= self.cfg.batch_max_samples.get()
    }

    /// Samples report by exception lets go now, queued; their counts published.
    fn release(&mut self, flush: bool) -> Result<(), OutboxError> {
        if self.filtered.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let mut due = Vec::new();
        let (mut held, mut beats) = (0, 0);
        for f in self.filtered.values_mut() {
            due.extend(if flush { f.flush() } else { f.tick(now) });
            let (h, b) = f.take_counts();
            held += h;
            beats += b;
        }
        let m = &self.outbox.metrics;
        m.exception_suppressed.fetch_add(held, Ordering::Relaxed);
        m.heartbeats.fetch_add(beats, Ordering::Relaxed);
        let mut full = Vec::new();
        for s in due {
            let group = s.item.group.clone();
            if self.queue(s) && !full.contains(&group) {
                full.push(group);
            }
        }
        for g in full {
            self.flush_group(&g)?;
        }
        Ok(())
    }

    /// Adds samples; flushes groups that reached `batch_max_samples`.
    pub fn write(&mut self, samples: &[Sample]) -> Result<(), OutboxError> {
        let mut full = Vec::new();
        let mut late = 0;
        let now = Instant::now();
        for s in samples {
            if let Some((shaper, _)) = self.shaped.get_mut(&s.item.group) {
                match shaper.add(s) {
                    Taken::Windowed => continue,
                    Taken::Raw { late: true } => late += 1,
                    Taken::Raw { late: false } => {}
                }
            }
            let s = match self.filtered.get_mut(&s.item.group) {
                Some(f) => match f.add(s, now) {
                    Some(s) => s,
                    None => continue,
                },
                None => s.clone(),
            };
            let group = s.item.group.clone();
            if self.queue(s) && !full.contains(&group) {
                full.push(group);
            }
        }
        if late > 0 {
            self.outbox
                .metrics
                .shaped_late
                .fetch_add(late, Ordering::Relaxed);
        }
        for g in full {
            self.flush_group(&g)?;
        }
        Ok(())
    }

    /// Sends the windows the shapers finished (`flush`: every open one, partial).
    fn send_windows(&mut self, flush: bool) -> Result<(), OutboxError> {
        let now_us = chrono::Utc::now().timestamp_micros();
        let Some(plc) = self.plc.clone() else {
            return Ok(());
        };
        let groups: Vec<Arc<str>> = self.shaped.keys().cloned().collect();
        for group in groups {
            let Some((shaper, aggregates)) = self.shaped.get_mut(&group) else {
                continue;
            };
            if flush {
                shaper.flush(now_us);
            } else {
                shaper.tick(now_us);
            }
            let windows = shaper.take();
            if windows.is_empty() {
                continue;
            }
            let aggregates = aggregates.clone();
            let stream = format!("{plc}/{group}");
            let budget = self.cfg.max_message_bytes.saturating_sub(1024).max(1024);
            let id = payload::Stream {
                line: &self.line,
                epoch: self.outbox.epoch(),
                plc: &plc,
                group: &group,
                array: "windows",
            };
            let bodies = payload::split_with(
                id,
                &windows,
                self.cfg.batch_max_samples.get(),
                budget,
                |out, w| payload::window(out, w, &aggregates),
            );
            let first = self.outbox.reserve(&stream, bodies.len() as u64)?;
            let topic = (self.cfg.topic)(&plc, &group);
            for (body, seq) in bodies.iter().zip(first..) {
                let m = payload::assemble(id, seq, body);
                self.push(&topic, m)?;
            }
            self.outbox
                .metrics
                .windows_buffered
                .fetch_add(windows.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    fn push(&self, topic: &str, m: String) -> Result<(), OutboxError> {
        buffer(&self.outbox, self.cfg.payload, topic, m)
    }

    /// Flushes groups whose oldest sample waited `batch_max_delay`; moves messages held in
    /// memory into the buffer once it has room.
    pub fn tick(&mut self) -> Result<(), OutboxError> {
        self.outbox.retry_held()?;
        if !self.shaped.is_empty() {
            self.send_windows(false)?;
        }
        self.release(false)?;
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

    /// Flushes everything (shutdown); what the buffer cannot take by now is given up and
    /// counted.
    pub fn flush(&mut self) -> Result<(), OutboxError> {
        let mut result = if self.shaped.is_empty() {
            Ok(())
        } else {
            self.send_windows(true)
        };
        if let Err(e) = self.release(true) {
            result = Err(e);
        }
        let groups: Vec<Arc<str>> = self.pending.keys().cloned().collect();
        for g in groups {
            if let Err(e) = self.flush_group(&g) {
                result = Err(e);
            }
        }
        self.outbox.give_up_held();
        result
    }

    fn flush_group(&mut self, group: &Arc<str>) -> Result<(), OutboxError> {
        let Some((_, samples)) = self.pending.remove(group) else {
            return Ok(());
        };
        if samples.is_empty() {
            return Ok(());
        }
        let plc = samples[0].item.plc.clone();
        let stream = format!("{plc}/{group}");
        // Room for the frame header and gzip overhead in the message limit.
        let budget = self.cfg.max_message_bytes.saturating_sub(1024).max(1024);
        // Encode the samples once, reserve one seq per message (written ahead), then add the
        // headers.
        let events = matches!(samples[0].value, crate::sample::SampleValue::Event(_));
        let id = payload::Stream {
            line: &self.line,
            epoch: self.outbox.epoch(),
            plc: &plc,
            group,
            array: if events { "events" } else { "samples" },
        };
        let bodies = payload::split(id, &samples, self.cfg.batch_max_samples.get(), budget);
        let first = self.outbox.reserve(&stream, bodies.len() as u64)?;
        let messages = bodies
            .iter()
            .zip(first..)
            .map(|(body, seq)| payload::assemble(id, seq, body));
        let topic = if events {
            (self.cfg.event_topic)(&plc, group)
        } else {
            (self.cfg.topic)(&plc, group)
        };
        for m in messages {
            self.push(&topic, m)?;
        }
        self.outbox
            .metrics
            .samples_buffered
            .fetch_add(samples.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// Buffers message `m` for `topic` in `outbox`, gzip-compressed when `payload` says so.
fn buffer(outbox: &Outbox, payload: Payload, topic: &str, m: String) -> Result<(), OutboxError> {
    let gzip = payload == Payload::JsonGzip;
    let body = if gzip {
        gzip_bytes(m.as_bytes())
    } else {
        m.into_bytes()
    };
    outbox.push(frame(topic, gzip, &body))
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
