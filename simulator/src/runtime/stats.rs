//! Ground truth: what the simulator produced per node and per group ([`Stats`],
//! [`NodeStats`], [`GroupStats`]), the periodic `--stats-file` writer, and the process's CPU
//! time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::shared::Shared;
use crate::model::{Value, Var, WriteRecord};

/// Ground truth, readable by tests and written to `--stats-file`.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub endpoint: String,
    pub uptime_s: f64,
    pub online: bool,
    pub restarts: u64,
    /// CPU seconds (user + system) of the whole process.
    pub cpu_s: f64,
    /// HistoryRead node operations answered from the history (Good or GoodNoData).
    pub history_reads: u64,
    /// Accepted Acknowledge calls on the alarm condition.
    pub acknowledgements: u64,
    pub groups: Vec<GroupStats>,
    pub nodes: BTreeMap<String, NodeStats>,
}

/// Ground truth of one group.
#[derive(Debug, Clone, Serialize)]
pub struct GroupStats {
    pub name: String,
    pub rate_ms: f64,
    pub ticks: u64,
    pub late_ticks: u64,
    pub running: bool,
    pub vars: usize,
}

/// Ground truth of one variable.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NodeStats {
    pub produced: u64,
    pub produced_offline: u64,
    /// Client writes that reached the model (accepted or refused), and those accepted.
    pub write_attempts: u64,
    pub writes: u64,
    pub last: Value,
    pub status: u32,
    /// The accepted writes, oldest first, each with the time it reached the simulator (the
    /// newest 10,000). Left out of the JSON when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub write_log: Vec<WriteRecord>,
}

impl NodeStats {
    /// The ground truth of one model variable.
    pub(super) fn of(v: &Var) -> Self {
        NodeStats {
            produced: v.produced,
            produced_offline: v.produced_offline,
            write_attempts: v.write_attempts,
            writes: v.writes,
            last: v.value.clone(),
            status: v.status,
            write_log: v.write_log.to_vec(),
        }
    }
}

impl Shared {
    pub(super) fn stats(&self) -> Stats {
        let model = self.model.lock().unwrap_or_else(|e| e.into_inner());
        Stats {
            endpoint: self.endpoint.clone(),
            uptime_s: self.started.elapsed().as_secs_f64(),
            online: self.online.load(Ordering::Relaxed),
            restarts: self.restarts.load(Ordering::Relaxed),
            cpu_s: process_cpu_seconds(),
            history_reads: self.services.counts.history_reads.load(Ordering::Relaxed),
            acknowledgements: self
                .services
                .counts
                .acknowledgements
                .load(Ordering::Relaxed),
            groups: model
                .groups
                .iter()
                .enumerate()
                .map(|(i, g)| GroupStats {
                    name: g.name.clone(),
                    rate_ms: g.rate.as_secs_f64() * 1000.0,
                    ticks: g.ticks,
                    late_ticks: self.late.get(i).map_or(0, |l| l.load(Ordering::Relaxed)),
                    running: g.running,
                    vars: g.vars.len(),
                })
                .collect(),
            nodes: model
                .vars
                .iter()
                .map(|v| (v.id.clone(), NodeStats::of(v)))
                .collect(),
        }
    }
}

/// Writes the stats to `path` now, every 2 s, and once more when `shutdown` is cancelled.
pub(super) fn spawn_stats_writer(
    shared: &Arc<Shared>,
    path: PathBuf,
    shutdown: &CancellationToken,
) -> JoinHandle<()> {
    let shared = shared.clone();
    let token = shutdown.clone();
    tokio::spawn(async move {
        loop {
            write_stats(&shared, &path);
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
        write_stats(&shared, &path);
    })
}

/// Writes the stats as JSON to a temporary file and renames it to `path`, so readers never
/// see a partial file.
fn write_stats(shared: &Shared, path: &Path) {
    let stats = shared.stats();
    let tmp = path.with_extension("tmp");
    let result = serde_json::to_vec(&stats)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        warn!(error = %e, path = %path.display(), "could not write the stats file");
    }
}

/// User + system CPU seconds of this process, from /proc (0 where unavailable).
pub fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return 0.0;
    };
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the command name.
    (ticks(11) + ticks(12)) / 100.0
}
