//! `opcua-connector run --config FILE`: runs until SIGINT/SIGTERM, then drains.

use std::path::Path;

use tracing::{info, warn};

use super::{Failure, Outcome};
use crate::config;
use crate::runner::{self, watchdog};
use tokio_util::sync::CancellationToken;

pub async fn run(path: &Path, hooks: &runner::Hooks) -> Outcome {
    let stop = super::stop_signal();
    let config = config::load(path).map_err(|e| Failure::Usage(e.to_string()))?;
    for w in &config.warnings {
        warn!(file = %w.file.display(), line = w.line, key = %w.key, "insecure set-up: {}", w.message);
    }
    let running = runner::start_with(&config, hooks).map_err(|e| match e {
        // Another instance on the same directories: a set-up error (exit 2), not a fault.
        runner::RunError::Locked(e) => Failure::Usage(e.to_string()),
        e => Failure::Runtime(e.to_string()),
    })?;
    info!(line = %config.line.id, plcs = config.plcs.len(), "running; SIGINT or SIGTERM stops and drains");
    watchdog::ready(&config.line.id, config.plcs.len());
    let watching = CancellationToken::new();
    let watch = tokio::spawn(watchdog::watch(running.watched.clone(), watching.clone()));
    let fatal = running.fatal.clone();
    tokio::select! {
        _ = stop => info!("stopping: closing sessions, draining sinks"),
        _ = fatal.cancelled() => warn!("stopping after a fatal error: closing sessions, draining sinks"),
    }
    // No ping after STOPPING=1 (a ping would re-arm systemd's watchdog during the stop).
    watching.cancel();
    let _ = watch.await;
    watchdog::stopping();
    running.stop().await;
    if fatal.is_cancelled() {
        return Err(Failure::Runtime(
            "stopped after a fatal error (a writer thread or a session task died; see the log above)".into(),
        ));
    }
    info!("stopped");
    Ok(())
}
