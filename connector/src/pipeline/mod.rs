//! The pipeline of one PLC: from the OPC UA callbacks to every output of the line.
//!
//! - [`channel`]: the bounded hand-off from the subscription callbacks (backpressure, never a
//!   dropped sample).
//! - [`fanout`]: the PLC's writer thread, which hands every batch to each [`Output`] in turn:
//!   the Parquet chunks and one telemetry encoder per destination. A new kind of output is one
//!   more variant of [`Output`].

pub mod channel;
pub mod fanout;

pub use channel::{channel, Batch, SampleSender};
pub use fanout::{Output, Writer};
