//! The bundled OPC UA simulator of opcua-connector.
//!
//! It serves NodeSet2 models (by default our bottling line) with values that a simulation
//! profile scripts, deterministically, so tests and benchmarks have ground truth.
//!
//! - [`model`]: variables, behaviours, groups, methods and produced-value counts; no OPC UA.
//! - [`profile`]: the TOML profile, checked against the loaded nodesets.
//! - [`scale`]: `--scale N@INTERVAL` generated load variables.
//! - [`history`]: the in-memory history of the counters and its HistoryRead pages.
//! - [`faults`]: the fault kinds (restart, close sessions, freeze, status) and their
//!   `--fault` syntax.
//! - [`alarm`]: the TemperatureHigh alarm condition, its events and their select clauses.
//! - [`core_wrap`]: the core node manager, wrapped so Acknowledge and ConditionRefresh reach
//!   the alarm.
//! - [`convert`]: model values to and from OPC UA variants, data types and status names.
//! - [`server`]: the async-opcua node manager that maps the model onto the address space.
//! - [`structs`]: the nodesets' structure types on the server side and structure values.
//! - [`runtime`]: `start`/`run`, the configuration, nodeset checks, server build, ticking,
//!   fault supervision and restarts, stats.
//! - [`error`]: [`SimError`], and the [`Problem`]s of bad input with file, line and element.
//!
//! The binary (`src/main.rs`, `opcua-simulator`) turns its flags into a [`SimConfig`].
//! Tests embed the library: `start(SimConfig::bottling_line(pki), token).await?` binds
//! `127.0.0.1:0` and reports the bound endpoint with [`Simulator::endpoint_url`].

pub mod alarm;
pub mod convert;
pub mod core_wrap;
pub mod error;
pub mod faults;
pub mod history;
pub mod model;
pub mod profile;
pub mod runtime;
pub mod scale;
pub mod server;
pub mod structs;

pub use error::{Problem, SimError};
pub use faults::{Fault, FaultKind};
pub use runtime::{
    all_security, parse_security, run, start, GroupStats, Limits, LoginStats, Logins, NodeStats,
    SimConfig, Simulator, Source, Stats, BOTTLING_LINE_NAMESPACE, BOTTLING_LINE_NODESET,
    BOTTLING_LINE_PROFILE,
};
pub use scale::ScaleSpec;
