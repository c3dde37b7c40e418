//! Cloud-to-PLC writes and method calls: requests come in over the cloud connections'
//! control channels and go out to the PLC over its write session.
//!
//! - [`channels`]: the control channels a line's cloud connections carry requests on.
//! - [`service`]: the task that serves the twin, MQTT write requests and methods.
//! - [`plc`]: the OPC UA side (node checks at connect, write with readback, method calls).
//! - [`state`]: what survives a restart (last handled desired versions, request ids).
//! - [`coerce`]: a JSON value to the OPC UA [`Variant`](opcua::types::Variant) of a
//!   `[[write]]` mapping, with its `min`/`max` checks.
//! - [`requests`]: plain-MQTT write requests, expiry, and IoT Hub
//!   desired-property patches.
//! - [`ack`]: IoT Plug and Play acknowledgements and MQTT write responses.

pub mod ack;
pub mod channels;
pub mod coerce;
pub mod plc;
pub mod requests;
pub mod service;
pub mod state;

#[cfg(test)]
mod fuzz_tests;

/// The longest request id (MQTT write and method requests), in bytes. Longer ones are
/// refused with 400 and not remembered.
pub const MAX_ID_BYTES: usize = 128;

/// The longest property name (a request's `property`, a desired property's dotted path), in
/// bytes. Longer ones are refused with 400 (MQTT) or left unacknowledged (twin).
pub const MAX_PROPERTY_BYTES: usize = 128;

/// Why a write was refused before reaching the PLC; every refusal answers 400.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("not mapped: {property}")]
    NotMapped { property: String },
    #[error("wrong type: expected {expected}, got {got}")]
    WrongType {
        expected: &'static str,
        got: &'static str,
    },
    #[error("out of range: {value} not in [{min}, {max}]")]
    OutOfRange { value: String, min: f64, max: f64 },
    #[error("node not writable")]
    NotWritable,
    #[error("expired")]
    Expired,
    /// A desired value that waited for its PLC longer than `pending_write_max_age`.
    #[error(
        "expired: waited {waited_s} s for the plc (pending_write_max_age {max_s} s); not written"
    )]
    TooOld { waited_s: u64, max_s: u64 },
    #[error("malformed: {0}")]
    Malformed(String),
}

impl Refusal {
    /// The status code of the acknowledgement or response (400 for every refusal).
    pub fn code(&self) -> u16 {
        match self {
            Refusal::NotMapped { .. }
            | Refusal::WrongType { .. }
            | Refusal::OutOfRange { .. }
            | Refusal::NotWritable
            | Refusal::Expired
            | Refusal::TooOld { .. }
            | Refusal::Malformed(_) => 400,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_codes_and_reasons() {
        let all = [
            Refusal::NotMapped {
                property: "a.b".into(),
            },
            Refusal::WrongType {
                expected: "Int32",
                got: "string",
            },
            Refusal::OutOfRange {
                value: "5".into(),
                min: 0.0,
                max: 1.0,
            },
            Refusal::NotWritable,
            Refusal::Expired,
            Refusal::Malformed("x".into()),
        ];
        for r in &all {
            assert_eq!(r.code(), 400);
            let text = r.to_string();
            assert!(!text.is_empty());
            assert_eq!(text, text.to_lowercase().replace("int32", "Int32"));
        }
        assert_eq!(all[0].to_string(), "not mapped: a.b");
        assert_eq!(all[1].to_string(), "wrong type: expected Int32, got string");
        assert_eq!(all[2].to_string(), "out of range: 5 not in [0, 1]");
    }
}
