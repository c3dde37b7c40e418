//! The validated `[dps]` table: the Azure Device Provisioning Service that assigns the
//! `[hub]` identity (hub host and device id) at the first start, so that a fleet of edge PCs
//! ships with one configuration instead of one connection string each.

use std::path::PathBuf;

use super::types::{CaRoots, Secret};

/// DPS's global device endpoint (MQTT over TLS on [`DPS_PORT`]).
pub const DEFAULT_DPS_GLOBAL_ENDPOINT: &str = "global.azure-devices-provisioning.net";
/// The port of DPS's MQTT endpoint.
pub const DPS_PORT: u16 = 8883;

/// `[dps]`: where to register and with which credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpsConfig {
    /// The DPS instance's ID scope (`0ne...`).
    pub id_scope: String,
    /// The registration id (default: `line.id`), also the MQTT client id.
    pub registration_id: String,
    /// The global endpoint's host (port [`DPS_PORT`]).
    pub global_endpoint: String,
    /// A TLS endpoint (`host:port`) instead of the global one, its certificate checked
    /// against that host (a private or test DPS).
    pub endpoint: Option<String>,
    /// The roots of DPS's TLS.
    pub ca_file: CaRoots,
    pub credential: DpsCredential,
}

/// How the connector proves who it is to DPS (and then to the assigned hub).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DpsCredential {
    /// Individual enrollment: the device key itself.
    SymmetricKey(Secret),
    /// Group enrollment: the group key, from which the device key is derived
    /// (HMAC-SHA256 of the registration id).
    GroupKey(Secret),
    /// An X.509 enrollment: the device certificate (its CN is the registration id).
    X509 {
        cert_file: PathBuf,
        key_file: PathBuf,
    },
}

impl DpsCredential {
    /// Its name in the assignment cache and in messages.
    pub fn kind(&self) -> &'static str {
        match self {
            DpsCredential::SymmetricKey(_) => "symmetric_key",
            DpsCredential::GroupKey(_) => "group_key",
            DpsCredential::X509 { .. } => "x509",
        }
    }
}

/// A DPS registration id: 1 to 128 of `a-z A-Z 0-9 - . _ :`, ending with a letter, a digit
/// or `-` (DPS compares them case-insensitively).
pub fn is_valid_registration_id(id: &str) -> bool {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':');
    (1..=128).contains(&id.len())
        && id.bytes().all(allowed)
        && id
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A DPS ID scope: 1 to 64 letters and digits (`0ne00000A0A`).
pub fn is_valid_id_scope(scope: &str) -> bool {
    (1..=64).contains(&scope.len()) && scope.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_ids_follow_the_dps_rules() {
        for ok in ["line-a-edge", "filler-plant1-007", "A.b_c:d-", "x"] {
            assert!(is_valid_registration_id(ok), "{ok}");
        }
        let long = "a".repeat(129);
        for bad in [
            "", "line a", "line/a", "ends.", "ends_", "ends:", "é", &long,
        ] {
            assert!(!is_valid_registration_id(bad), "{bad}");
        }
    }

    #[test]
    fn id_scopes_are_letters_and_digits() {
        assert!(is_valid_id_scope("0ne00000A0A"));
        for bad in ["", "0ne/1", "0ne 1", "0ne-1"] {
            assert!(!is_valid_id_scope(bad), "{bad}");
        }
    }
}
