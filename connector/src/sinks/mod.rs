//! The outputs of a PLC's writer thread.
//!
//! - [`parquet`]: crash-safe zstd Parquet chunk files, every sample typed.
//! - [`telemetry`]: JSON v1 telemetry messages, batched per group, into a destination's
//!   outbox (broker or hub).

pub mod parquet;
pub mod telemetry;
