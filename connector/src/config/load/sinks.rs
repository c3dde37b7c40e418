//! What stays on this machine: `[sink.parquet]`, the `[buffer]` in front of the broker and
//! the hub, and the `[metrics]` endpoint.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::raw::Spanned;

use super::{format_size, Check};
use crate::config::raw::{RawBuffer, RawHub, RawMetrics, RawParquet};
use crate::config::types::*;

/// Default `[sink.parquet] dir`.
pub const DEFAULT_PARQUET_DIR: &str = "data";
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
pub const DEFAULT_ROLL_ROWS: usize = 1_000_000;
pub const DEFAULT_ROLL_BYTES: u64 = 128 * 1024 * 1024;
pub const DEFAULT_ROLL_INTERVAL: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_QUEUE_SAMPLES: usize = 1_000_000;

/// `<dir>-events`, beside the samples' directory (never inside: readers of the samples' data
/// set read every file below it).
pub fn default_events_dir(dir: &std::path::Path) -> PathBuf {
    // `data/` and `data/.` name `data`: the sibling is `data-events`.
    let dir: PathBuf = dir.components().collect();
    let mut name = dir.into_os_string();
    name.push("-events");
    PathBuf::from(name)
}

/// `path` absolute and without `.` / `..` components, for comparing two directories.
fn normalized(path: &std::path::Path) -> PathBuf {
    use std::path::Component;
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let mut out = PathBuf::new();
    for c in absolute.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

impl Check<'_> {
    /// `hub`: the file's `[hub]`, for an upload through it.
    pub(super) fn parquet(
        &mut self,
        raw: RawParquet,
        hub: Option<&RawHub>,
    ) -> Option<ParquetSinkConfig> {
        let k = |name: &str| format!("sink.parquet.{name}");
        let dir = match &raw.dir {
            None => Some(PathBuf::from(DEFAULT_PARQUET_DIR)),
            Some(d) => self.non_empty(d, &k("dir")).map(PathBuf::from),
        };
        let events_dir = match (&raw.events_dir, &dir) {
            (Some(d), _) => self.non_empty(d, &k("events_dir")).map(PathBuf::from),
            (None, Some(dir)) => Some(default_events_dir(dir)),
            (None, None) => None,
        };
        if let (Some(e), Some(d)) = (&events_dir, &dir) {
            let (ea, da) = (normalized(e), normalized(d));
            if ea.starts_with(&da) || da.starts_with(&ea) {
                let message = format!(
                    "events_dir {:?} and dir {:?} must not contain each other: readers of the samples' data set would read events too",
                    e.display(),
                    d.display()
                );
                let span = raw
                    .events_dir
                    .as_ref()
                    .or(raw.dir.as_ref())
                    .map(|s| s.span());
                self.problem(span, &k("events_dir"), message);
            }
        }
        let compression = match &raw.compression {
            None => Some(Compression::Zstd {
                level: DEFAULT_ZSTD_LEVEL,
            }),
            Some(c) => {
                let parsed = match c.get_ref().as_str() {
                    "zstd" => Some(Compression::Zstd {
                        level: DEFAULT_ZSTD_LEVEL,
                    }),
                    "snappy" => Some(Compression::Snappy),
                    "gzip" => Some(Compression::Gzip),
                    "none" => Some(Compression::None),
                    other => other
                        .strip_prefix("zstd:")
                        .and_then(|l| l.parse::<i32>().ok())
                        .filter(|l| (1..=22).contains(l))
                        .map(|level| Compression::Zstd { level }),
                };
                if parsed.is_none() {
                    let message = format!("unknown compression {:?}: use zstd, zstd:LEVEL (1..=22), snappy, gzip or none", c.get_ref());
                    self.at(c, &k("compression"), message);
                }
                parsed
            }
        };
        let roll_rows = match &raw.roll_rows {
            None => NonZeroUsize::new(DEFAULT_ROLL_ROWS),
            Some(r) => self.count(r, &k("roll_rows")),
        };
        let roll_bytes = match &raw.roll_bytes {
            None => Some(DEFAULT_ROLL_BYTES),
            Some(b) => self.size(b, &k("roll_bytes")).and_then(|n| {
                if n == 0 {
                    self.at(b, &k("roll_bytes"), "must be greater than 0");
                }
                (n > 0).then_some(n)
            }),
        };
        let roll_interval = match &raw.roll_interval {
            None => Some(DEFAULT_ROLL_INTERVAL),
            Some(d) => self.positive_duration(d, &k("roll_interval")),
        };
        let queue_samples = match &raw.queue_samples {
            None => NonZeroUsize::new(DEFAULT_QUEUE_SAMPLES),
            Some(q) => self.count(q, &k("queue_samples")),
        };
        let defaults = ParquetRetention::default();
        let max_bytes = match &raw.max_bytes {
            None => Some(defaults.max_bytes),
            Some(b) => self.size(b, &k("max_bytes")),
        };
        let max_age = match &raw.max_age {
            None => Some(defaults.max_age),
            Some(d) => self.duration(d, &k("max_age")),
        };
        let min_free = match &raw.min_free {
            None => Some(defaults.min_free),
            Some(b) => self.size(b, &k("min_free")),
        };
        let upload = match &raw.upload {
            None => Some(None),
            Some(u) => self.upload(u.get_ref(), Some(u.span()), hub).map(Some),
        };
        Some(ParquetSinkConfig {
            upload: upload?,
            events_dir: events_dir?,
            dir: dir?,
            compression: compression?,
            roll_rows: roll_rows?,
            roll_bytes: roll_bytes?,
            roll_interval: roll_interval?,
            queue_samples: queue_samples?,
            retention: ParquetRetention {
                max_bytes: max_bytes?,
                max_age: max_age?,
                min_free: min_free?,
            },
        })
    }

    pub(super) fn buffer(&mut self, raw: Option<&RawBuffer>) -> Option<BufferConfig> {
        let defaults = BufferConfig::default();
        let Some(raw) = raw else {
            return Some(defaults);
        };
        let k = |name: &str| format!("buffer.{name}");
        let dir = match &raw.dir {
            None => Some(defaults.dir),
            Some(d) => self.non_empty(d, &k("dir")).map(PathBuf::from),
        };
        let max_bytes = match &raw.max_bytes {
            None => Some(defaults.max_bytes),
            Some(b) => self.positive_size(b, &k("max_bytes")),
        };
        let when_full = match &raw.when_full {
            None => Some(defaults.when_full),
            Some(w) => match w.get_ref().as_str() {
                "drop_oldest" => Some(WhenFull::DropOldest),
                "pause" => Some(WhenFull::Pause),
                other => {
                    self.at(
                        w,
                        &k("when_full"),
                        format!("unknown policy {other:?}: use drop_oldest or pause"),
                    );
                    None
                }
            },
        };
        let segment_bytes = match &raw.segment_bytes {
            None => Some(defaults.segment_bytes),
            Some(b) => self.positive_size(b, &k("segment_bytes")),
        };
        let min_free = match &raw.min_free {
            None => Some(defaults.min_free),
            Some(b) => self.size(b, &k("min_free")),
        };
        if let (Some(seg), Some(max)) = (segment_bytes, max_bytes) {
            if seg > max {
                let message = format!(
                    "segment_bytes {} is larger than max_bytes {}",
                    format_size(seg),
                    format_size(max)
                );
                let span = raw
                    .segment_bytes
                    .as_ref()
                    .or(raw.max_bytes.as_ref())
                    .map(Spanned::span);
                self.problem(span, &k("segment_bytes"), message);
                return None;
            }
        }
        Some(BufferConfig {
            dir: dir?,
            max_bytes: max_bytes?,
            when_full: when_full?,
            segment_bytes: segment_bytes?,
            min_free: min_free?,
        })
    }

    pub(super) fn metrics(&mut self, raw: &RawMetrics) -> Option<MetricsConfig> {
        let listen = self.required(&raw.listen, self.header("metrics"), "metrics.listen")?;
        match listen.get_ref().parse::<SocketAddr>() {
            Ok(addr) => {
                if !addr.ip().is_loopback() {
                    self.warn(Some(listen.span()), "metrics.listen", format!("{addr} is not a loopback address: /metrics and /healthz (line, plc and destination names, counters) are served without authentication to every network it reaches; use 127.0.0.1 unless a firewall or proxy guards it"));
                }
                Some(MetricsConfig { listen: addr })
            }
            Err(_) => {
                let message = format!(
                    "{:?} is not an address: write IP:PORT, e.g. \"127.0.0.1:9464\"",
                    listen.get_ref()
                );
                self.at(listen, "metrics.listen", message);
                None
            }
        }
    }

    /// One message must fit in one buffer segment (a segment is at most half of
    /// `max_bytes`): the largest message is the broker's `max_message_bytes` or IoT Hub's
    /// limit, whichever is configured.
    pub(super) fn segment_holds_a_message(
        &mut self,
        buffer: &BufferConfig,
        mqtt_limit: Option<usize>,
        hub: bool,
    ) {
        let segment = buffer.segment_bytes.min(buffer.max_bytes / 2);
        let largest = [mqtt_limit, hub.then_some(HUB_MAX_MESSAGE_BYTES)];
        let Some(msg) = largest.into_iter().flatten().max().map(|n| n as u64) else {
            return;
        };
        if segment < msg + 1024 {
            let message = format!(
                "[buffer] segments of {segment} bytes (segment_bytes, at most max_bytes / 2) cannot hold a message of {msg} bytes: raise segment_bytes and max_bytes or lower max_message_bytes"
            );
            self.problem(self.header("buffer"), "buffer.segment_bytes", message);
        }
    }
}
