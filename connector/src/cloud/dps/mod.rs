//! Azure Device Provisioning Service (`[dps]`): the hub identity (hub host, device id) is
//! assigned at the first start instead of configured, so that a fleet of edge PCs ships with
//! one configuration.
//!
//! - [`protocol`]: DPS's MQTT names (CONNECT fields, topics, bodies, answers) and the device
//!   key of a group enrollment, as pure functions.
//! - [`register`]: one registration over MQTT: register, poll, the assignment.
//! - [`cache`]: the assignment kept in `<buffer dir>/dps/assignment.json`.
//! - [`hub`]: the hub destination with a DPS identity: the cached assignment or a
//!   registration (retried with back-off), then the hub's sender; registered again when the
//!   hub refuses the identity.

pub mod cache;
pub mod hub;
pub mod protocol;
pub mod register;

pub use cache::Assignment;
pub use hub::DpsHub;
