//! Cloud connections: the two-way links to an MQTT broker and to Azure IoT Hub. Each drains a
//! destination's outbox (telemetry, acknowledged before it leaves the buffer) and carries the
//! cloud-to-PLC traffic of that connection both ways ([`control`]).
//!
//! - [`mqtt`]: the sender loop shared by MQTT 3.1.1 and 5 (`flow`), and each version's client.
//! - [`hub`]: the IoT Hub device dialect (connection strings, SAS tokens, topics) and the hub's
//!   connection options.
//! - [`dps`]: the Device Provisioning Service, which assigns the hub identity at run time.
//! - [`control`]: requests in (twin, write requests, methods), answers out.

pub mod control;
pub mod dps;
pub mod hub;
pub mod mqtt;
pub mod status;
