//! One shutdown signal for a running line: a root [`CancellationToken`] whose child tokens
//! stop the stages in the order that drains the data path, each stage's tasks tracked by a
//! [`TaskTracker`], and one grace time per stage.
//!
//! Order: the write service (no new PLC writes), the PLC sessions (no new samples), the
//! writer threads (queues drained into the open chunks and outboxes, chunks closed), the
//! cloud connections (deliver what they can, the rest stays on disk), the HTTP endpoint.
//!
//! The whole stop fits in [`BUDGET`] (5 s: Docker, IoT Edge and systemd's defaults kill after
//! about 10 s): each stage gets a share, and the writers (which complete the open chunks) get
//! the most. A stage that overruns its share costs only its share.

use std::time::Duration;

use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tracing::{error, warn};

/// How long a whole stop may take.
pub const BUDGET: Duration = Duration::from_secs(5);

/// Each stage's share of [`BUDGET`], in stop order: write service, PLC sessions, writers,
/// cloud connections, HTTP endpoint.
const SHARES: [Duration; 5] = [
    Duration::from_millis(500),
    Duration::from_millis(1_000),
    Duration::from_millis(2_300),
    Duration::from_millis(1_000),
    Duration::from_millis(200),
];

/// How long the cloud connections keep delivering what is buffered after their stop (what
/// is left stays on disk for the next start); within their share.
pub const DRAIN: Duration = Duration::from_millis(700);

/// The tasks of one stage and the token that tells them to stop.
pub struct Stage {
    name: &'static str,
    /// Whether a task still running after the grace time may lose data (logged as an error).
    lossy: bool,
    pub token: CancellationToken,
    pub tasks: TaskTracker,
}

impl Stage {
    /// Cancels the stage and waits up to `grace` for its tasks; says whether they all ended.
    async fn stop(&self, grace: Duration) -> bool {
        self.token.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait()).await.is_ok() {
            return true;
        }
        let (stage, tasks, grace_s) = (self.name, self.tasks.len(), grace.as_secs_f64());
        if self.lossy {
            error!(
                stage,
                tasks, grace_s, "did not stop within the grace time: what it held may be lost"
            );
        } else {
            warn!(stage, tasks, grace_s, "did not stop within the grace time");
        }
        false
    }
}

/// The stages of a running line, children of one root token.
pub struct Shutdown {
    root: CancellationToken,
    pub writes: Stage,
    pub sessions: Stage,
    pub writers: Stage,
    pub senders: Stage,
    pub http: Stage,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl Shutdown {
    pub fn new() -> Shutdown {
        let root = CancellationToken::new();
        let stage = |name, lossy| Stage {
            name,
            lossy,
            token: root.child_token(),
            tasks: TaskTracker::new(),
        };
        Shutdown {
            writes: stage("write service", false),
            sessions: stage("plc sessions", false),
            writers: stage("writers", true),
            senders: stage("cloud connections", false),
            http: stage("metrics endpoint", false),
            root,
        }
    }

    /// Cancels every stage at once when dropped (unless disarmed): a line that fails half-way
    /// through starting stops what it had started.
    pub fn abort_on_drop(&self) -> DropGuard {
        self.root.clone().drop_guard()
    }

    /// Stops every stage in order, each within its share of `budget` ([`BUDGET`] scaled).
    pub async fn stop(&self, budget: Duration) {
        let total: Duration = SHARES.iter().sum();
        let stages = [
            &self.writes,
            &self.sessions,
            &self.writers,
            &self.senders,
            &self.http,
        ];
        for (stage, share) in stages.into_iter().zip(SHARES) {
            let grace = budget.mul_f64(share.as_secs_f64() / total.as_secs_f64());
            stage.stop(grace).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn stages_stop_in_order_and_a_stuck_one_costs_its_grace() {
        let s = Shutdown::new();
        let order = Arc::new(Mutex::new(Vec::new()));
        for (i, stage) in [&s.writes, &s.sessions, &s.writers, &s.senders, &s.http]
            .into_iter()
            .enumerate()
        {
            let (token, order) = (stage.token.clone(), order.clone());
            stage.tasks.spawn(async move {
                token.cancelled().await;
                order.lock().unwrap().push(i);
            });
        }
        // A task of the writers' stage that ignores its token.
        s.writers
            .tasks
            .spawn(tokio::time::sleep(Duration::from_secs(3600)));
        let start = tokio::time::Instant::now();
        s.stop(BUDGET).await;
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
        // The stuck stage cost its share (the writers': 2.3 s of 5 s); the others none.
        assert_eq!(start.elapsed(), Duration::from_millis(2_300));
        assert!(
            !s.root.is_cancelled(),
            "each stage was stopped by its own token"
        );
    }
}
