//! The hand-off from OPC UA notification callbacks to the sink writer threads.
//!
//! Callbacks run inside the session's event loop and must not stall it for long: a batch
//! goes into a bounded queue with `try_send`. When the queue is full (the disk is slower than
//! the PLC), the callback waits for room (`block_in_place`, so the runtime's other tasks go
//! on), which holds back Publish requests and lets the server queue: real backpressure, never
//! a dropped sample. Every wait is counted.

use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use crate::metrics::PlcMetrics;
use crate::ratelog::RateLog;
use crate::sample::Sample;

/// Samples that found no writer (it died): one line, then one a minute, for every PLC.
static NO_WRITER: RateLog = RateLog::per_minute();

pub type Batch = Vec<Sample>;

/// The sending side, one per PLC, cloned into every subscription callback.
#[derive(Debug, Clone)]
pub struct SampleSender {
    tx: SyncSender<Batch>,
    metrics: Arc<PlcMetrics>,
    /// The local rules' share of the samples, when rules read this PLC.
    tap: Option<Arc<super::tap::Tap>>,
}

/// A bounded queue of `capacity` batches (one batch per notification message).
pub fn channel(capacity: usize, metrics: Arc<PlcMetrics>) -> (SampleSender, Receiver<Batch>) {
    let (tx, rx) = mpsc::sync_channel(capacity.max(1));
    (
        SampleSender {
            tx,
            metrics,
            tap: None,
        },
        rx,
    )
}

impl SampleSender {
    /// Samples of the nodes the local rules read also go to `tap`.
    pub fn with_tap(mut self, tap: Option<Arc<super::tap::Tap>>) -> Self {
        self.tap = tap;
        self
    }

    /// The PLC's data session went down (`true`: the rules no longer know its values) or
    /// resumed with its subscriptions.
    pub fn session_down(&self, down: bool) {
        if let Some(t) = &self.tap {
            t.down(down);
        }
    }

    /// Hands a batch on; waits (counted) when the queue is full. Returns false when the
    /// writer is gone (shutting down, or it died): the batch is counted as dropped.
    pub fn send(&self, batch: Batch) -> bool {
        if batch.is_empty() {
            return true;
        }
        if let Some(t) = &self.tap {
            t.offer(&batch);
        }
        let n = batch.len() as u64;
        let sent = match self.tx.try_send(batch) {
            Ok(()) => true,
            Err(TrySendError::Disconnected(_)) => false,
            Err(TrySendError::Full(batch)) => {
                PlcMetrics::add(&self.metrics.backpressure_waits, 1);
                let tx = self.tx.clone();
                let blocking_ok = tokio::runtime::Handle::try_current()
                    .map(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
                    .unwrap_or(false);
                if blocking_ok {
                    tokio::task::block_in_place(move || tx.send(batch).is_ok())
                } else {
                    tx.send(batch).is_ok()
                }
            }
        };
        if !sent {
            PlcMetrics::add(&self.metrics.samples_dropped, n);
            if let Some(more) = NO_WRITER.hit() {
                tracing::error!(plc = %self.metrics.plc, samples = n, suppressed = more,
                    "samples dropped: the PLC's writer thread has stopped");
            }
        }
        sent
    }
}
