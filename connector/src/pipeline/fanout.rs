//! The writer thread of one PLC: every batch goes to each output in turn; outputs roll and
//! flush on time; at the end the queue is drained into the outputs and they are closed.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::Batch;
use crate::metrics::PlcMetrics;
use crate::sinks::parquet::ParquetSink;
use crate::sinks::telemetry::Encoder;

/// How often the writer wakes without a batch, to roll chunks and flush telemetry batches.
const TICK: Duration = Duration::from_millis(50);

/// Where a PLC's samples go.
pub enum Output {
    /// Parquet chunk files (every sample, typed).
    Parquet(ParquetSink),
    /// Telemetry messages into one destination's outbox (broker or hub).
    Telemetry(Encoder),
}

/// What failed (the log line's message) and why.
type Failed = (&'static str, String);

impl Output {
    fn write(&mut self, batch: &Batch) -> Result<(), Failed> {
        match self {
            Output::Parquet(s) => s
                .write(batch)
                .map_err(|e| ("parquet write failed", e.to_string())),
            Output::Telemetry(e) => e
                .write(batch)
                .map_err(|e| ("mqtt buffering failed", e.to_string())),
        }
    }

    /// Time-driven work: roll a chunk, flush a batch that waited long enough.
    fn tick(&mut self, m: &PlcMetrics) -> Result<(), Failed> {
        match self {
            Output::Parquet(s) => {
                let r = s.tick(SystemTime::now());
                publish_stats(s, m);
                r.map(|_| ())
                    .map_err(|e| ("parquet roll failed", e.to_string()))
            }
            Output::Telemetry(e) => e
                .tick()
                .map_err(|e| ("mqtt buffering failed", e.to_string())),
        }
    }

    /// At the end: pending batches buffered, the open chunk closed.
    fn close(&mut self, m: &PlcMetrics) -> Result<(), Failed> {
        match self {
            Output::Parquet(s) => {
                let r = s.close();
                publish_stats(s, m);
                if let Ok(Some(c)) = &r {
                    info!(plc = %m.plc, path = %c.path.display(), rows = c.rows, "last chunk closed");
                }
                r.map(|_| ())
                    .map_err(|e| ("closing the last chunk failed", e.to_string()))
            }
            Output::Telemetry(e) => e
                .flush()
                .map_err(|e| ("mqtt buffering failed at shutdown", e.to_string())),
        }
    }
}

/// One PLC's writer: its outputs, its queue, its counters.
pub struct Writer {
    pub outputs: Vec<Output>,
    pub rx: Receiver<Batch>,
    pub metrics: Arc<PlcMetrics>,
}

impl Writer {
    /// Runs until the queue's senders are gone or `stop` is cancelled, then drains the queue
    /// and closes the outputs. Meant for a thread of its own.
    pub fn run(mut self, stop: CancellationToken) {
        loop {
            match self.rx.recv_timeout(TICK) {
                Ok(batch) => self.write(&batch),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            for o in self.outputs.iter_mut() {
                if let Err(failed) = o.tick(&self.metrics) {
                    fail(&self.metrics, failed);
                }
            }
            if stop.is_cancelled() {
                break;
            }
        }
        // Drain whatever is queued, then close the open chunk and flush the batches.
        while let Ok(batch) = self.rx.try_recv() {
            self.write(&batch);
        }
        // Telemetry first: a flush only appends to the outbox, closing a chunk fsyncs.
        self.outputs
            .sort_by_key(|o| matches!(o, Output::Parquet(_)));
        for o in self.outputs.iter_mut() {
            if let Err(failed) = o.close(&self.metrics) {
                fail(&self.metrics, failed);
            }
        }
    }

    fn write(&mut self, batch: &Batch) {
        for o in self.outputs.iter_mut() {
            if let Err((what, e)) = o.write(batch) {
                PlcMetrics::add(&self.metrics.write_errors, 1);
                error!(plc = %self.metrics.plc, error = %e, samples = batch.len(), "{what}");
            }
        }
    }
}

fn fail(m: &PlcMetrics, (what, e): Failed) {
    PlcMetrics::add(&m.write_errors, 1);
    error!(plc = %m.plc, error = %e, "{what}");
}

fn publish_stats(sink: &ParquetSink, m: &PlcMetrics) {
    let s = sink.stats();
    m.samples_written.store(s.rows_written, Ordering::Relaxed);
    m.chunks_written.store(s.chunks_written, Ordering::Relaxed);
    m.bytes_written.store(s.bytes_written, Ordering::Relaxed);
}
