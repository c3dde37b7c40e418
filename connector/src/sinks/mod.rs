//! Sinks: where samples go. Each sink folder has the same files (`config.rs`, `sink.rs`, ...).

pub mod hub;
pub mod mqtt;
pub mod parquet;
