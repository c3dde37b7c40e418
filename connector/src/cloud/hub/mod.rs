//! Azure IoT Hub device dialect: connection strings, SAS tokens and the MQTT names IoT Hub
//! defines (client id, username, telemetry, twin and direct-method topics), as pure
//! functions the connection uses; the telemetry sender; the file-upload API (HTTPS).

pub mod connection;
pub mod current;
pub mod files;
pub mod https;
pub mod sas;
pub mod sender;
pub mod topics;

pub use connection::{is_valid_id, ConnectionString, ConnectionStringError, Identity, SecretKey};
pub use current::CurrentIdentity;
pub use sas::{encode_component, expiry_unix_s, renew_at, resource_uri, sas_token, SasError};
pub use topics::{
    client_id, method_response, parse_incoming, property_bag, telemetry_base, telemetry_topic,
    twin_get, twin_patch_reported, username, Incoming, TopicError, API_VERSION, METHOD_REQUESTS,
    SUBSCRIPTIONS, TWIN_DESIRED_PATCHES, TWIN_RESPONSES,
};
