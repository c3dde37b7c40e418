//! `opcua-connector check --config FILE`: validates offline and prints the resolved plan.

use std::path::Path;

use super::{Failure, Outcome};
use crate::config;

pub fn check(path: &Path) -> Outcome {
    let config = config::load(path).map_err(|e| Failure::Usage(e.to_string()))?;
    for w in &config.warnings {
        eprintln!("warning: {w}");
    }
    print!("{}", config::plan::plan(&config));
    Ok(())
}
