//! The raw `[dps]` table (Azure Device Provisioning Service), as written.

use schemars::JsonSchema;
use serde::de;
use serde::Deserialize;

use super::Spanned;
use crate::config::schema::Refused;

/// `[dps]`: the Azure Device Provisioning Service assigns the `[hub]` identity (hub and
/// device id) at the first start; `[hub]` then carries no identity of its own.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDps {
    /// The DPS instance's ID scope, e.g. "0ne00000A0A"; required.
    #[schemars(required)]
    pub id_scope: Option<Spanned<String>>,
    /// The registration id (1 to 128 of a-z A-Z 0-9 - . _ :); default the line id.
    pub registration_id: Option<Spanned<String>>,
    /// The global device endpoint's host (MQTT over TLS on 8883); default "global.azure-devices-provisioning.net".
    pub global_endpoint: Option<Spanned<String>>,
    /// A TLS endpoint host:port instead of the global one (a private or test DPS), its certificate checked against that host; default none.
    pub endpoint: Option<Spanned<String>>,
    /// PEM file of DPS's root CA, or "system" to trust the operating system's root certificates (an explicit opt-in); required.
    #[schemars(required)]
    pub ca_file: Option<Spanned<String>>,
    /// Individual enrollment: environment variable holding the device's symmetric key.
    pub symmetric_key_env: Option<Spanned<String>>,
    /// Individual enrollment: file holding the device's symmetric key.
    pub symmetric_key_file: Option<Spanned<String>>,
    /// Group enrollment: environment variable holding the group key (the device key is derived from it).
    pub group_key_env: Option<Spanned<String>>,
    /// Group enrollment: file holding the group key (the device key is derived from it).
    pub group_key_file: Option<Spanned<String>>,
    /// X.509 enrollment: { cert_file, key_file } (the certificate's CN is the registration id).
    pub x509: Option<RawDpsX509>,
    // Known only to be refused with a helpful message; the values are never kept.
    /// Refused (it is a secret): use symmetric_key_env or symmetric_key_file.
    #[schemars(with = "Option<Refused>")]
    pub symmetric_key: Option<Spanned<de::IgnoredAny>>,
    /// Refused (it is a secret): use group_key_env or group_key_file.
    #[schemars(with = "Option<Refused>")]
    pub group_key: Option<Spanned<de::IgnoredAny>>,
}

/// `x509 = { cert_file, key_file }` of `[dps]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDpsX509 {
    /// PEM certificate of the device; required.
    #[schemars(required)]
    pub cert_file: Option<Spanned<String>>,
    /// PEM private key of cert_file; required.
    #[schemars(required)]
    pub key_file: Option<Spanned<String>>,
}
