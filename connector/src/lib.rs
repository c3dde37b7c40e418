//! opcua-connector: every sample of a line's PLCs to Parquet, MQTT and Azure IoT Hub, and
//! cloud writes back to the PLCs through an allow-list.
//!
//! The modules, in the order data flows through them:
//! - [`config`]: the line's TOML file, validated into typed settings (every problem at once).
//! - [`opcua`]: PLC sessions, namespaces, browse, subscriptions; notifications become
//!   [`sample::Sample`] batches; the session handle that writes use ([`opcua::link`]).
//! - [`pipeline`]: per PLC, the bounded hand-off from the OPC UA callbacks and the writer
//!   thread that fans each batch out to the line's outputs.
//! - [`sinks`]: the outputs: `parquet` chunk files and `telemetry` encoders (JSON v1 messages
//!   into a destination's outbox).
//! - [`cloud`]: the two-way connections to an MQTT broker and to IoT Hub: telemetry out of the
//!   outbox, cloud-to-PLC requests in and answers out.
//! - [`buffer`]: the durable store-and-forward queue and the outbox built on it.
//!
//! Beside the flow:
//! - [`writes`]: cloud-to-PLC writes and method calls (twin, MQTT requests, direct methods),
//!   from the cloud connections' control channels to the PLC write sessions.
//! - [`rules`]: local rules: conditions on the samples of a PLC's tap that write, call (through
//!   the write service) and send alerts (into the telemetry outboxes) without the cloud.
//! - [`sample`], [`metrics`], [`backoff`], [`ratelog`]: the ground every stage stands on: the
//!   unit of data, the counters, the retry pacing, the pacing of repeating error lines.
//! - [`http`]: `/metrics` and `/healthz`.
//! - [`runner`]: wires a line and stops it in order; [`commands`]: `run`, `check`, `browse`,
//!   `schema`, `dtdl`, `demo`.
//!
//! Imports follow the flow: a stage uses the stages after it (opcua -> pipeline -> sinks ->
//! cloud -> buffer), never one before it; `writes` uses `opcua` and `cloud`; `rules` uses
//! `pipeline` (its tap), `sinks` (alerts) and `writes` (its commands); everything may use
//! the ground modules (`config` too), which use nothing of the crate; `http` reads counters
//! and outboxes; only `runner` and `commands` see the whole, and nothing imports them. A unit
//! test (`layout_tests`) keeps it so.

/// The version and the git commit built from, e.g. `0.1.0 (1a2b3c4d5e6f)`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("OPCUA_CONNECTOR_COMMIT"),
    ")"
);

/// The git commit built from (`unknown` outside a checkout; `-modified` with local changes).
pub const COMMIT: &str = env!("OPCUA_CONNECTOR_COMMIT");

pub mod backoff;
pub mod buffer;
pub mod cloud;
pub mod commands;
pub mod config;
pub mod http;
pub mod metrics;
pub mod opcua;
pub mod pipeline;
pub mod ratelog;
pub mod rules;
pub mod runner;
pub mod sample;
pub mod sinks;
pub mod writes;

#[cfg(test)]
mod layout_tests;
