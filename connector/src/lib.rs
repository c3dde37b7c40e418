//! opcua-connector: OPC UA PLC subscriptions to Parquet and MQTT (IoT Hub to follow).
//!
//! Data flow, one folder per stage:
//! - [`config`]: the line's TOML file, validated into typed settings.
//! - [`opcua`]: sessions, namespace resolution, browse, subscriptions; notifications become
//!   [`sample::Sample`]s.
//! - [`pipeline`]: bounded hand-off from the OPC UA callbacks to the sinks, with backpressure.
//! - [`sinks`]: `parquet` chunk files, `mqtt` telemetry, the `hub` (Azure IoT Hub) dialect.
//! - [`buffer`]: the durable store-and-forward queue in front of the broker and hub senders.
//! - [`telemetry`]: counters and progress.
//! - [`runner`]: starts a line (sessions + writers) and drains it on stop.
//! - [`commands`]: `run`, `check`, `browse`, `demo`.
//! - [`writes`]: the pure core of cloud-to-PLC writes (coercion, requests, acks); not wired yet.

pub mod buffer;
pub mod commands;
pub mod config;
pub mod opcua;
pub mod pipeline;
pub mod runner;
pub mod sample;
pub mod sinks;
pub mod telemetry;
pub mod writes;
