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
use crate::ratelog::RateLog;
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
    /// Test hook: panic after this many batches (proves that a dead writer is noticed).
    pub panic_after: Option<u64>,
    /// Test hook: hang while this file exists (proves that the service watchdog notices a
    /// stuck writer, and that pings resume when it goes on).
    pub hang_while: Option<std::path::PathBuf>,
    /// Repeating failures of an output (a full disk fails every batch): logged once a minute.
    pub log: FailureLogs,
}

/// One [`RateLog`] per kind of failure.
#[derive(Debug, Default)]
pub struct FailureLogs(std::collections::HashMap<&'static str, RateLog>);

impl FailureLogs {
    fn hit(&mut self, what: &'static str) -> Option<u64> {
        self.0.entry(what).or_insert_with(RateLog::per_minute).hit()
    }
}

impl Writer {
    /// Runs until the queue's senders are gone or `stop` is cancelled, then drains the queue
    /// and closes the outputs. Meant for a thread of its own.
    pub fn run(mut self, stop: CancellationToken) {
        let mut batches = 0u64;
        loop {
            self.metrics.writer_beat.beat();
            if let Some(p) = self.hang_while.as_deref().filter(|p| p.exists()) {
                tracing::warn!(plc = %self.metrics.plc, "test hook: writer thread hangs");
                while p.exists() {
                    std::thread::sleep(TICK);
                }
                tracing::warn!(plc = %self.metrics.plc, "test hook: writer thread goes on");
            }
            match self.rx.recv_timeout(TICK) {
                Ok(batch) => {
                    batches += 1;
                    if self.panic_after.is_some_and(|n| batches > n) {
                        panic!("test hook: writer thread of plc {} fails", self.metrics.plc);
                    }
                    self.write(&batch)
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            for o in self.outputs.iter_mut() {
                if let Err(failed) = o.tick(&self.metrics) {
                    fail(&self.metrics, &mut self.log, failed, 0);
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
        // Parquet first: completing the open chunk (one fsync and a rename) is what a short
        // stop must not miss; the telemetry flush appends its last batches after it.
        self.outputs
            .sort_by_key(|o| matches!(o, Output::Telemetry(_)));
        for o in self.outputs.iter_mut() {
            if let Err(failed) = o.close(&self.metrics) {
                fail(&self.metrics, &mut self.log, failed, 0);
            }
        }
    }

    fn write(&mut self, batch: &Batch) {
        for o in self.outputs.iter_mut() {
            if let Err(failed) = o.write(batch) {
                fail(&self.metrics, &mut self.log, failed, batch.len());
            }
        }
    }
}

/// Counts a failure; logs it the first time, then once a minute with the count left out.
fn fail(m: &PlcMetrics, logs: &mut FailureLogs, (what, e): Failed, samples: usize) {
    PlcMetrics::add(&m.write_errors, 1);
    if let Some(more) = logs.hit(what) {
        error!(plc = %m.plc, error = %e, samples, suppressed = more, "{what}");
    }
}

fn publish_stats(sink: &ParquetSink, m: &PlcMetrics) {
    let s = sink.stats();
    m.samples_written.store(s.rows_written, Ordering::Relaxed);
    m.samples_discarded
        .store(s.rows_discarded, Ordering::Relaxed);
    m.chunks_written.store(s.chunks_written, Ordering::Relaxed);
    m.bytes_written.store(s.bytes_written, Ordering::Relaxed);
    if let Some(e) = sink.events_stats() {
        m.events_written.store(e.rows_written, Ordering::Relaxed);
        m.events_discarded
            .store(e.rows_discarded, Ordering::Relaxed);
    }
}
