//! The end-to-end suite: simulator <-> connector <-> brokers <-> files, in one process over
//! loopback. One test binary (each scenario file a module) so that the connector, the
//! simulator, rumqttd and parquet are linked once.

// Test code: an unwrap is a failed test with its reason (workspace lint `unwrap_used`).
#![allow(clippy::unwrap_used)]

mod backfill;
mod busy;
mod c2d;
mod chaos;
mod dps;
mod dtdl;
mod e2e;
mod events;
mod exception;
mod https;
mod hub;
mod hub_tls;
mod limits;
mod mosquitto;
mod mqtt;
mod mqtt_v5;
mod refusals;
mod rules;
mod secure;
mod service;
mod status;
mod structures;
mod transports;
mod twin_identity;
mod unattended;
mod writes;
