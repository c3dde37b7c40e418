//! Counters of everything the connector does, per PLC, readable by the progress display,
//! summaries, logs, tests and the Prometheus endpoint ([`http`]).

pub mod http;

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
    /// Samples whose status carries the Overflow info bit (the server's queue dropped values).
    pub overflows: AtomicU64,
    /// Notification messages missing in the sequence, recovered by Republish, and lost.
    pub sequence_gaps: AtomicU64,
    pub republished: AtomicU64,
    pub lost_messages: AtomicU64,
    /// Times the OPC UA side had to wait because the sink's queue was full (slow disk).
    pub backpressure_waits: AtomicU64,
    pub samples_written: AtomicU64,
    pub chunks_written: AtomicU64,
    pub bytes_written: AtomicU64,
    pub write_errors: AtomicU64,
    /// Source time of the newest sample received, µs since the epoch.
    pub last_sample_us: AtomicI64,
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
}

impl Metrics {
    pub fn total(&self, f: impl Fn(&PlcMetrics) -> &AtomicU64) -> u64 {
        self.plcs.iter().map(|p| f(p).load(Ordering::Relaxed)).sum()
    }
}
