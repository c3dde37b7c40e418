//! The tap of the local rules: the samples of the nodes the rules read, taken from a PLC's
//! batches as the subscription callbacks hand them on (before the writer thread, so that a
//! Parquet roll never delays a rule), with the instant they arrived.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::{self, error::TrySendError};

use crate::ratelog::RateLog;
use crate::sample::{Origin, Sample};

/// How many samples may wait for the rule engine; more are dropped and counted.
pub const TAP_QUEUE: usize = 65_536;

/// What the rule engine is told about a PLC.
#[derive(Debug)]
pub enum Tapped {
    /// Samples of watched nodes, and when their batch arrived.
    Samples(Vec<Sample>, Instant),
    /// The PLC's data session is down: its nodes' values are no longer known.
    Down(Arc<str>),
    /// The PLC's data session resumed (its subscriptions kept): the values are current again.
    Up(Arc<str>),
}

/// One PLC's tap: its watched nodes (namespace-URI form) and the engine's queue.
#[derive(Debug)]
pub struct Tap {
    plc: Arc<str>,
    nodes: HashSet<Arc<str>>,
    tx: mpsc::Sender<Tapped>,
    /// Samples the engine could not take (its queue full).
    pub dropped: Arc<AtomicU64>,
}

impl Tap {
    pub fn new(
        plc: &str,
        nodes: impl IntoIterator<Item = String>,
        tx: mpsc::Sender<Tapped>,
        dropped: Arc<AtomicU64>,
    ) -> Tap {
        Tap {
            plc: plc.into(),
            nodes: nodes.into_iter().map(Arc::from).collect(),
            tx,
            dropped,
        }
    }

    /// Hands the live samples of watched nodes in `batch` on (values read back from history
    /// after an outage are the past: a rule acts on the present only).
    pub fn offer(&self, batch: &[Sample]) {
        let watched: Vec<Sample> = batch
            .iter()
            .filter(|s| s.origin == Origin::Live && self.nodes.contains(&s.item.node))
            .cloned()
            .collect();
        if watched.is_empty() {
            return;
        }
        let n = watched.len() as u64;
        // Closed: the engine has stopped (shutdown), nothing is behind.
        if let Err(TrySendError::Full(_)) =
            self.tx.try_send(Tapped::Samples(watched, Instant::now()))
        {
            self.lost(n);
        }
    }

    /// The PLC's data session went down (`true`) or resumed.
    pub fn down(&self, down: bool) {
        let plc = self.plc.clone();
        let m = if down {
            Tapped::Down(plc)
        } else {
            Tapped::Up(plc)
        };
        if let Err(TrySendError::Full(_)) = self.tx.try_send(m) {
            self.lost(0);
        }
    }

    fn lost(&self, n: u64) {
        static LOG: RateLog = RateLog::per_minute();
        self.dropped.fetch_add(n.max(1), Ordering::Relaxed);
        if let Some(more) = LOG.hit() {
            tracing::error!(plc = %self.plc, samples = n, suppressed = more,
                "the rule engine is behind: samples of rule nodes dropped (rules act on the next ones)");
        }
    }
}
