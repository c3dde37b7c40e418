//! Configuration: one TOML file per line.
//!
//! Two stages: raw serde structs that reject unknown keys (`raw`), then validation into real
//! types (`types`) that reports every problem at once with file, line and key path (`load`).
//! `plan` renders a validated config for `opcua-connector check`.

pub mod load;
pub mod plan;
pub mod raw;
pub mod types;

pub use load::{load, parse, ConfigError, Problem};
pub use types::*;
