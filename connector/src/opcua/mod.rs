//! The OPC UA side: sessions, node identity, browse, subscriptions, sample conversion.
//!
//! - [`connect`]: what a session is opened with (client, endpoint, certificate check,
//!   identity) and which failures are refusals.
//! - [`session`]: one PLC's data session (connect, subscribe, reconnect, republish) and its
//!   write session.
//! - [`subscribe`]: subscriptions and monitored items of the configured groups; notifications
//!   become [`Sample`](crate::sample::Sample) batches handed to the pipeline.
//! - [`targets`]: the nodes of a group (explicit, browsed), named.
//! - [`resolve`]: namespace URIs to indexes, node ids of the config to the server's.
//! - [`browse`]: walking an address space (`opcua-connector browse`, `browse` groups).
//! - [`convert`]: OPC UA values to samples; [`structures`]: the server's own structure types,
//!   decoded from their DataTypeDefinitions; [`flatten`]: chosen structure fields as rows.
//! - [`backfill`]: after an outage, what the subscriptions missed, read from the server's
//!   history.
//! - [`events`]: event subscriptions (alarms and conditions) and their fields.
//! - [`link`]: the session handle used for writes and method calls.
//! - [`tcp`]: the socket connector (TCP_NODELAY).
//! - [`trust`]: our check of a server's certificate (alternative names in any order, CAs in
//!   `pki/issuers/` with their CRLs).

pub mod backfill;
pub mod browse;
pub mod connect;
pub mod convert;
pub mod events;
pub mod flatten;
pub mod link;
pub mod resolve;
pub mod session;
pub mod structures;
pub mod subscribe;
pub mod targets;
pub mod tcp;
pub mod trust;
