//! opcua-connector: OPC UA PLC subscriptions to Parquet (and, later, MQTT / IoT Hub).
//!
//! Data flow, one folder per stage:
//! - [`config`]: the line's TOML file, validated into typed settings.
//! - [`opcua`]: sessions, namespace resolution, browse, subscriptions; notifications become
//!   [`sample::Sample`]s.
//! - [`pipeline`]: bounded hand-off from the OPC UA callbacks to the sinks, with backpressure.
//! - [`sinks`]: `parquet` chunk files.
//! - [`telemetry`]: counters and progress.
//! - [`runner`]: starts a line (sessions + writers) and drains it on stop.
//! - [`commands`]: `run`, `check`, `browse`, `demo`.

pub mod commands;
pub mod config;
pub mod opcua;
pub mod pipeline;
pub mod runner;
pub mod sample;
pub mod sinks;
pub mod telemetry;
