//! `opcua-connector run --config FILE`: runs until SIGINT/SIGTERM, then drains.

use std::path::Path;

use tracing::{info, warn};

use super::{Failure, Outcome};
use crate::config;
use crate::runner;

pub async fn run(path: &Path) -> Outcome {
    let config = config::load(path).map_err(|e| Failure::Usage(e.to_string()))?;
    for w in &config.warnings {
        warn!(file = %w.file.display(), line = w.line, key = %w.key, "insecure set-up: {}", w.message);
    }
    let running = runner::start(&config).map_err(|e| Failure::Runtime(e.to_string()))?;
    info!(line = %config.line.id, plcs = config.plcs.len(), "running; SIGINT or SIGTERM stops and drains");
    super::signal().await;
    info!("stopping: closing sessions, draining sinks");
    running.stop().await;
    info!("stopped");
    Ok(())
}
