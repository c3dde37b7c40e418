//! The pipeline of one PLC: from the OPC UA callbacks to every output of the line.
//!
//! - [`channel`]: the bounded hand-off from the subscription callbacks (backpressure, never a
//!   dropped sample).
//! - [`fanout`]: the PLC's writer thread, which hands every batch to each [`Output`] in turn:
//!   the Parquet chunks and one telemetry encoder per destination. A new kind of output is one
//!   more variant of [`Output`].
//! - [`tap`]: the samples of the nodes the local rules read, handed to the rule engine as
//!   they arrive.

pub mod channel;
pub mod fanout;
pub mod tap;

pub use channel::{channel, Batch, SampleSender};
pub use fanout::{Output, Writer};
