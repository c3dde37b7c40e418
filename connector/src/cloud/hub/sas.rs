//! Shared access signature (SAS) tokens for a device or module symmetric key, signed exactly
//! as Microsoft's SDKs sign them (the test vectors below were computed with them):
//!
//! ```text
//! sr  = percent-encode(resource URI)           no safe characters: '/' -> %2F
//! sig = percent-encode(base64(HMAC-SHA256(base64-decode(key), sr + "\n" + expiry)))
//! SharedAccessSignature sr={sr}&sig={sig}&se={expiry}[&skn={policy}]
//! ```
//!
//! IoT Hub disconnects an MQTT 3.1.1 client whose token expired; the connector reconnects
//! with a fresh token at [`renew_at`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SasError {
    #[error("the shared access key is not base64")]
    BadKey,
    #[error("the shared access key is empty")]
    EmptyKey,
    #[error("the resource uri is empty")]
    EmptyResource,
}

/// Percent-encodes everything but the RFC 3986 unreserved characters (`A-Z a-z 0-9 - . _ ~`),
/// as Python's `urllib.parse.quote(text, safe="")`, with upper-case hex digits.
pub fn encode_component(text: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

/// The resource a device or module token grants: `{host}/devices/{device}` or
/// `{host}/devices/{device}/modules/{module}`. The host is lower-cased; ids keep their case
/// (they are case-sensitive) and are percent-encoded per segment where needed (`a:b` ->
/// `a%3Ab`; plain ids are unchanged).
pub fn resource_uri(host: &str, device_id: &str, module_id: Option<&str>) -> String {
    let mut uri = format!(
        "{}/devices/{}",
        host.to_ascii_lowercase(),
        encode_component(device_id)
    );
    if let Some(module) = module_id {
        uri.push_str("/modules/");
        uri.push_str(&encode_component(module));
    }
    uri
}

/// A token for `resource_uri`, valid until `expiry_unix_s` (seconds since the Unix epoch),
/// signed with `key_base64`. `key_name` is the shared access policy (`skn`), `None` for a
/// device or module key.
pub fn sas_token(
    resource_uri: &str,
    key_base64: &str,
    expiry_unix_s: u64,
    key_name: Option<&str>,
) -> Result<String, SasError> {
    if resource_uri.is_empty() {
        return Err(SasError::EmptyResource);
    }
    let key = base64::engine::general_purpose::STANDARD
        .decode(key_base64.trim())
        .map_err(|_| SasError::BadKey)?;
    if key.is_empty() {
        return Err(SasError::EmptyKey);
    }
    let sr = encode_component(resource_uri);
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| SasError::BadKey)?;
    mac.update(format!("{sr}\n{expiry_unix_s}").as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let mut token = format!(
        "SharedAccessSignature sr={sr}&sig={}&se={expiry_unix_s}",
        encode_component(&signature)
    );
    if let Some(name) = key_name {
        token.push_str("&skn=");
        token.push_str(&encode_component(name));
    }
    Ok(token)
}

/// The `se` of a token issued at `issued` for `ttl`: seconds since the Unix epoch, rounded
/// up so the token lives at least `ttl`.
pub fn expiry_unix_s(issued: SystemTime, ttl: Duration) -> u64 {
    let end = issued
        .checked_add(ttl)
        .unwrap_or(issued)
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    end.as_secs() + u64::from(end.subsec_nanos() > 0)
}

/// When to reconnect with a fresh token issued at `issued` for `ttl`: when 15 % of the
/// lifetime is left (the Azure SDKs' renewal buffer), and at least 1 s before it expires
/// (never before `issued`).
pub fn renew_at(issued: SystemTime, ttl: Duration) -> SystemTime {
    let buffer = (ttl / 20 * 3).max(Duration::from_secs(1)).min(ttl);
    issued.checked_add(ttl - buffer).unwrap_or(issued)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Computed with Microsoft's Azure IoT Python device SDK.
    const VECTORS: [(&str, &str, u64, &str); 3] = [
        (
            "myhub.azure-devices.net/devices/device-001",
            "c2VjcmV0LWRldmljZS1rZXktMDAxLTAxMjM0NTY3ODk=",
            1767225600,
            "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fdevice-001&sig=naf90TjQVvBG83HhSshseiyROJtAk%2FTbGw1aRy8M1s8%3D&se=1767225600",
        ),
        (
            "myhub.azure-devices.net/devices/line-a-edge/modules/opcua-connector",
            "bW9kdWxlLWtleS1hYmNkZWZnaGlqa2xtbm9wcXJzdHV2",
            1798761600,
            "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fline-a-edge%2Fmodules%2Fopcua-connector&sig=8RpeDTetdLBVDMdO9%2B%2FEX6N44GQcwT4iWL0jAXqCpnY%3D&se=1798761600",
        ),
        (
            "contoso-plant.azure-devices.net/devices/filler-1",
            "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MDEyMzQ1Njc4OTA=",
            2000000000,
            "SharedAccessSignature sr=contoso-plant.azure-devices.net%2Fdevices%2Ffiller-1&sig=4729KaP34EdcATar1xBnVxzHCcETaOPMyIv%2FHf%2FikMg%3D&se=2000000000",
        ),
    ];

    #[test]
    fn tokens_match_the_azure_sdk_vectors_byte_for_byte() {
        for (uri, key, expiry, expected) in VECTORS {
            assert_eq!(sas_token(uri, key, expiry, None).unwrap(), expected);
        }
    }

    #[test]
    fn resource_uris_of_the_vectors_are_built_from_the_identity() {
        assert_eq!(
            resource_uri("MyHub.Azure-Devices.net", "device-001", None),
            VECTORS[0].0
        );
        assert_eq!(
            resource_uri(
                "myhub.azure-devices.net",
                "line-a-edge",
                Some("opcua-connector")
            ),
            VECTORS[1].0
        );
        assert_eq!(
            resource_uri("contoso-plant.azure-devices.net", "filler-1", None),
            VECTORS[2].0
        );
    }

    #[test]
    fn resource_uri_encodes_ids_per_segment_and_keeps_their_case() {
        assert_eq!(
            resource_uri("h.example", "Line:A/1", Some("m#1")),
            "h.example/devices/Line%3AA%2F1/modules/m%231"
        );
    }

    #[test]
    fn policy_token_appends_the_key_name() {
        let (uri, key, expiry, expected) = VECTORS[0];
        let token = sas_token(uri, key, expiry, Some("device policy")).unwrap();
        assert_eq!(token, format!("{expected}&skn=device%20policy"));
    }

    #[test]
    fn bad_keys_and_empty_resources_are_errors() {
        let uri = VECTORS[0].0;
        assert_eq!(
            sas_token(uri, "not base64!", 1, None),
            Err(SasError::BadKey)
        );
        assert_eq!(sas_token(uri, "", 1, None), Err(SasError::EmptyKey));
        assert_eq!(
            sas_token("", VECTORS[0].1, 1, None),
            Err(SasError::EmptyResource)
        );
    }

    #[test]
    fn encode_component_keeps_only_unreserved_characters() {
        assert_eq!(encode_component("aZ09-._~"), "aZ09-._~");
        assert_eq!(encode_component("a/b+c=d e"), "a%2Fb%2Bc%3Dd%20e");
        assert_eq!(encode_component("é"), "%C3%A9");
        assert_eq!(encode_component("$.ct"), "%24.ct");
    }

    #[test]
    fn expiry_rounds_up_to_whole_seconds() {
        let t = |s: u64, ms: u64| UNIX_EPOCH + Duration::from_secs(s) + Duration::from_millis(ms);
        assert_eq!(expiry_unix_s(t(1000, 0), Duration::from_secs(3600)), 4600);
        assert_eq!(expiry_unix_s(t(1000, 1), Duration::from_secs(3600)), 4601);
    }

    #[test]
    fn renewal_leaves_fifteen_percent_and_at_least_one_second() {
        let issued = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let after = |ttl: Duration| renew_at(issued, ttl).duration_since(issued).unwrap();
        assert_eq!(after(Duration::from_secs(3600)), Duration::from_secs(3060));
        assert_eq!(after(Duration::from_secs(60)), Duration::from_secs(51));
        // 15 % of 2 s is 0.3 s: the 1 s floor wins.
        assert_eq!(after(Duration::from_secs(2)), Duration::from_secs(1));
        assert_eq!(after(Duration::from_millis(500)), Duration::ZERO);
        assert_eq!(after(Duration::ZERO), Duration::ZERO);
    }
}
