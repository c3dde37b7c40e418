//! Counters of everything the connector does, readable by the progress display, summaries,
//! logs, tests and the Prometheus endpoint (`http`): per PLC ([`PlcMetrics`]), per telemetry
//! destination ([`MqttMetrics`]) and for cloud-to-PLC writes ([`WriteMetrics`]). Plain
//! atomics, written where the work happens; this module imports nothing of the crate.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

/// Counters of one PLC: its session, subscriptions and the sink writing its samples.
#[derive(Debug, Default)]
pub struct PlcMetrics {
    pub plc: String,
    pub connected: AtomicBool,
    /// Sessions (re)established after the first one.
    pub reconnects: AtomicU64,
    pub connect_failures: AtomicU64,
    pub monitored_items: AtomicU64,
    /// Nodes that could not be resolved or monitored (unknown node, bad browse root, ...).
    pub failed_items: AtomicU64,
    /// Time to create all subscriptions and monitored items, last (re)subscribe, in µs.
    pub subscribe_us: AtomicU64,
    pub samples_received: AtomicU64,
    /// Events of `[[plc.events]]` streams received.
    pub events_received: AtomicU64,
    /// Samples whose status carries the Overflow info bit (the server's queue dropped values).
    pub overflows: AtomicU64,
    /// Notification messages missing in the sequence, recovered by Republish, and lost.
    pub sequence_gaps: AtomicU64,
    pub republished: AtomicU64,
    pub lost_messages: AtomicU64,
    /// Everything lost for good, in one count: notification messages lost (the server no
    /// longer had them, or they were past the republish cap) plus samples with the Overflow
    /// bit (each stands for at least one value the server's queue dropped).
    pub loss_events: AtomicU64,
    /// Values read back from the server's history after outages (`backfill = true`).
    pub backfilled: AtomicU64,
    /// Outage gaps of a node read completely from history.
    pub backfill_gaps: AtomicU64,
    /// Outage gaps (or parts) not backfilled: no history, refused, beyond `backfill_max`.
    pub backfill_unfilled: AtomicU64,
    /// Times the OPC UA side had to wait because the sink's queue was full (slow disk).
    pub backpressure_waits: AtomicU64,
    pub samples_written: AtomicU64,
    /// Samples a failed Parquet write gave up (the chunk could not be written or finished).
    pub samples_discarded: AtomicU64,
    /// Events in completed chunks of the events table.
    pub events_written: AtomicU64,
    /// Events a failed write of the events table gave up.
    pub events_discarded: AtomicU64,
    pub chunks_written: AtomicU64,
    pub bytes_written: AtomicU64,
    pub write_errors: AtomicU64,
    /// When the newest sample was received (our clock, not the server's), µs since the epoch.
    pub last_sample_us: AtomicI64,
    /// Samples handed on after the PLC's writer thread had stopped: counted, never silent.
    pub samples_dropped: AtomicU64,
    /// The PLC's writer thread died (a panic): `/healthz` fails and the process exits 1.
    pub writer_dead: AtomicBool,
    /// The writer thread's loop went round (at least every 50 ms while it is healthy, busy or
    /// idle): what the service watchdog checks.
    pub writer_beat: Arc<Beat>,
}

/// The last time a loop went round, for the service watchdog: a thread that stops beating
/// is stuck (a deadlock, a write that never returns), not merely idle.
#[derive(Debug)]
pub struct Beat {
    /// Milliseconds since [`Beat::origin`].
    last_ms: AtomicU64,
}

impl Default for Beat {
    /// A beat taken now: a stage that has just been created has not stalled.
    fn default() -> Self {
        let b = Beat {
            last_ms: AtomicU64::new(0),
        };
        b.beat();
        b
    }
}

impl Beat {
    /// One clock for every beat of the process.
    fn origin() -> std::time::Instant {
        static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        *ORIGIN.get_or_init(std::time::Instant::now)
    }

    pub fn beat(&self) {
        let ms = u64::try_from(Self::origin().elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long since the last beat.
    pub fn age(&self) -> std::time::Duration {
        let now = Self::origin().elapsed();
        now.saturating_sub(std::time::Duration::from_millis(
            self.last_ms.load(Ordering::Relaxed),
        ))
    }
}

impl PlcMetrics {
    pub fn new(plc: &str) -> Arc<Self> {
        Arc::new(PlcMetrics {
            plc: plc.to_owned(),
            ..Default::default()
        })
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// All counters of a running connector.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    pub plcs: Vec<Arc<PlcMetrics>>,
    /// Local retention of the line's Parquet chunks.
    pub retention: Arc<RetentionMetrics>,
    /// Uploads of the chunks, when configured.
    pub upload: Option<Arc<UploadMetrics>>,
    /// The local rules, when `[[rule]]` is configured.
    pub rules: Option<Arc<RuleMetrics>>,
    /// Registrations with the Device Provisioning Service, when `[dps]` is configured.
    pub dps: Option<Arc<DpsMetrics>>,
}

/// Counters of the Device Provisioning Service (`[dps]`): registrations by result.
#[derive(Debug, Default)]
pub struct DpsMetrics {
    /// Registrations that ended with an assignment.
    pub assigned: AtomicU64,
    /// DPS refused the credential (CONNACK not authorized, 401, a refused certificate).
    pub refused: AtomicU64,
    /// The enrollment is disabled, the registration failed, or DPS answered another 4xx.
    pub failed: AtomicU64,
    /// DPS answered 429 (throttled): retried after its retry-after.
    pub throttled: AtomicU64,
    /// The connection to DPS failed, DPS did not answer in time, answered 5xx or something
    /// unreadable, or the credential could not be read.
    pub errors: AtomicU64,
    /// Operation-status polls sent.
    pub polls: AtomicU64,
    /// Starts that used the cached assignment without registering.
    pub cache_used: AtomicU64,
    /// Registrations started because the hub refused the assigned identity.
    pub reprovisions: AtomicU64,
    /// The assignment cache could not be read (a damaged file), written or removed.
    pub cache_errors: AtomicU64,
}

/// Counters of the Parquet retention (one per line).
#[derive(Debug, Default)]
pub struct RetentionMetrics {
    pub chunks_deleted: AtomicU64,
    pub bytes_deleted: AtomicU64,
    /// Deleted because the disk was below `min_free` (the others: `max_bytes`, `max_age`).
    pub deleted_for_space: AtomicU64,
    /// Bytes of completed chunks kept on disk.
    pub bytes_kept: AtomicU64,
    /// Deleted by the disk limits before they were uploaded (with `[sink.parquet.upload]`):
    /// lost for the store.
    pub lost_before_upload: AtomicU64,
}

/// Counters of `[sink.parquet.upload]` (one per line).
#[derive(Debug, Default)]
pub struct UploadMetrics {
    /// Chunks and bytes confirmed by the store.
    pub chunks: AtomicU64,
    pub bytes: AtomicU64,
    /// Attempts that failed (each retried).
    pub failures: AtomicU64,
    /// Completed chunks not yet confirmed, their bytes, and the age of the oldest, in s.
    pub pending: AtomicU64,
    pub pending_bytes: AtomicU64,
    pub oldest_pending_s: AtomicU64,
}

impl Metrics {
    pub fn total(&self, f: impl Fn(&PlcMetrics) -> &AtomicU64) -> u64 {
        self.plcs.iter().map(|p| f(p).load(Ordering::Relaxed)).sum()
    }
}

/// Counters of the telemetry path.
#[derive(Debug, Default)]
pub struct MqttMetrics {
    pub connected: AtomicBool,
    pub reconnects: AtomicU64,
    pub samples_buffered: AtomicU64,
    /// Windows of shaped telemetry (`[plc.group.telemetry]`) encoded.
    pub windows_buffered: AtomicU64,
    /// Samples of a shaped group that came after their window was sent (sent raw).
    pub shaped_late: AtomicU64,
    /// Samples held back by report by exception (within the deadband or min_interval).
    pub exception_suppressed: AtomicU64,
    /// Last values sent again by report by exception's max_interval (heartbeats).
    pub heartbeats: AtomicU64,
    /// Alerts of the local rules buffered.
    pub alerts_buffered: AtomicU64,
    pub messages_buffered: AtomicU64,
    pub messages_sent: AtomicU64,
    pub messages_acked: AtomicU64,
    pub bytes_acked: AtomicU64,
    pub buffer_errors: AtomicU64,
    /// Messages that had to wait in memory because the buffer could not take them.
    pub held_in_memory: AtomicU64,
    /// Reconnects made to renew credentials (IoT Hub SAS tokens).
    pub renewals: AtomicU64,
    /// Status updates that the hub (reported connectorStatus) or the broker (an MQTT 5 PUBACK
    /// refusing the status topic) did not take.
    pub status_failures: AtomicU64,
    /// Messages a broker refused in its PUBACK (MQTT 5 reason code >= 0x80) for a reason
    /// that may pass (quota, not authorized); sent again.
    pub rejected: AtomicU64,
    /// Messages the destination can never take (over its limit, or refused for good): moved
    /// to the dead-letter file.
    pub dead_letters: AtomicU64,
    /// Messages not buffered: the buffer (or its disk) was full and the memory hold too.
    pub refused_full: AtomicU64,
}

/// Counters of cloud-to-PLC writes and calls, by result.
#[derive(Debug, Default)]
pub struct WriteMetrics {
    /// Written (200).
    pub writes_ok: AtomicU64,
    /// Refused before the PLC (400): not mapped, wrong type, out of range, not writable,
    /// expired, rate limited, malformed.
    pub writes_refused: AtomicU64,
    /// The PLC refused (500).
    pub writes_failed: AtomicU64,
    /// The PLC was unreachable (500; twin writes are retried).
    pub writes_unreachable: AtomicU64,
    pub calls_ok: AtomicU64,
    pub calls_bad_arguments: AtomicU64,
    pub calls_unknown: AtomicU64,
    pub calls_timeout: AtomicU64,
    pub calls_failed: AtomicU64,
    /// Requests repeated by id (answered again, not applied).
    pub duplicates: AtomicU64,
    /// Messages that could not be understood (topic or body).
    pub malformed: AtomicU64,
    /// Inbound messages dropped because too many were waiting (shared with the senders).
    pub dropped: Arc<AtomicU64>,
    /// Requests answered 503 busy: their PLC had `max_concurrent_commands` running, or too
    /// many requests were held at start.
    pub busy: AtomicU64,
    /// Reported-properties PATCHes throttled (429), failed (5xx) or unanswered: sent again.
    pub acks_retried: AtomicU64,
    /// Reported-properties PATCHes refused with another 4xx: not sent again.
    pub acks_refused: AtomicU64,
    /// Answers dropped because too many were waiting for the cloud connection.
    pub answers_dropped: Arc<AtomicU64>,
    /// Cloud-to-device messages that were write or method requests.
    pub c2d_requests: AtomicU64,
    /// Cloud-to-device messages that were not requests (counted, logged, not acted upon).
    pub c2d_other: AtomicU64,
    /// Cloud-to-device messages refused for their size (over 64 KiB).
    pub c2d_refused: AtomicU64,
}

/// Counters of one local rule (`[[rule]]`).
#[derive(Debug, Default)]
pub struct RuleCounters {
    pub rule: String,
    /// Times its condition held and its actions ran.
    pub firings: AtomicU64,
    /// Times its condition held within `min_interval` of the last firing: the firing waited
    /// for the interval's end.
    pub suppressed: AtomicU64,
    /// Times a fired rule cleared.
    pub clears: AtomicU64,
    /// Actions that failed (refused, PLC error or unreachable, busy, max_rate) and values
    /// that could not be compared (a text where a number was expected).
    pub errors: AtomicU64,
}

/// The milliseconds that bound the buckets of [`Latency`].
pub const LATENCY_BUCKETS_MS: [f64; 12] = [
    0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 250.0, 1000.0,
];

/// A histogram of durations (Prometheus buckets, cumulative when rendered).
#[derive(Debug, Default)]
pub struct Latency {
    /// Per bucket of [`LATENCY_BUCKETS_MS`] (not cumulative), then the overflow.
    pub buckets: [AtomicU64; 13],
    pub count: AtomicU64,
    /// Sum in microseconds.
    pub sum_us: AtomicU64,
}

impl Latency {
    pub fn observe(&self, d: std::time::Duration) {
        let ms = d.as_secs_f64() * 1000.0;
        let i = LATENCY_BUCKETS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }
}

/// Counters of the local rules.
#[derive(Debug, Default)]
pub struct RuleMetrics {
    pub rules: Vec<Arc<RuleCounters>>,
    /// Samples of rule nodes the engine could not take in time (its queue was full).
    pub inputs_dropped: Arc<AtomicU64>,
    /// From a sample's arrival to the rule's PLC write or call being issued.
    pub action_latency: Latency,
}
