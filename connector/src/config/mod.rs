//! Configuration: one TOML file per line.
//!
//! Two stages: raw serde structs that reject unknown keys, then validation into real types
//! that reports every problem at once with file, line and key path.
//!
//! - `raw`: the file as written: serde structs with spans, unknown keys refused.
//! - `keypath`: the key path at a byte offset, for serde errors that carry only a span.
//! - `types`: the validated configuration every other module reads.
//! - `load`: reading and checking a file: [`load()`], [`parse()`], [`ConfigError`], [`Problem`],
//!   the check's state with the helpers every concern uses, and the assembly of a
//!   [`Config`]. The checks by concern are its children, in `load/`:
//!   - `plc.rs`: `[line]`, `[[plc]]` (endpoint, security, auth), their groups and browse
//!     selections, `[pki]`;
//!   - `sinks.rs`: `[sink.parquet]`, `[buffer]` (and that a segment holds one message),
//!     `[metrics]`;
//!   - `cloud.rs`: `[sink.mqtt]` (url, topic templates, tls) and `[hub]` (connection string
//!     or x509);
//!   - `dps.rs`: `[dps]`, the provisioning service that assigns the `[hub]` identity;
//!   - `writes.rs`: `[[write]]` and `[[method]]`;
//!   - `tests/`: the check's tests, one file per concern.
//! - `ids`: the rules for IoT Hub device and module ids ([`is_valid_id`]) and for the IoT Plug
//!   and Play model id ([`check_model_id`], a DTMI).
//! - `plan`: renders a validated config for `opcua-connector check`.
//! - `schema`: the JSON Schema of the file, derived from `raw` (`opcua-connector schema`,
//!   `configs/opcua-connector.schema.json`), for editors.
//!
//! Nothing here uses the rest of the crate: every other module stands on it.

pub mod acquisition;
pub mod cloud;
pub mod dps;
mod ids;
mod keypath;
pub mod load;
pub mod plan;
pub mod raw;
pub mod rules;
pub mod schema;
pub mod types;

pub use ids::{check_model_id, is_dtmi_segment, is_valid_id, MAX_MODEL_ID};
pub use load::{load, parse, ConfigError, Problem};
pub use types::*;
