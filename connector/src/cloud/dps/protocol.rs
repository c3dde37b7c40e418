//! DPS's MQTT names, as its documentation gives them, as pure functions: the CONNECT fields,
//! the register and operation-status topics and bodies, the answers' topics and bodies, and
//! the device key of a group enrollment. Signing reuses the hub's SAS code ([`sas`]): the
//! rules are the same, only the resource differs.

use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::cloud::hub::sas::{self, encode_component, SasError};

/// The DPS MQTT API version sent in the username.
pub const API_VERSION: &str = "2019-03-31";

/// Every answer of DPS arrives under this filter.
pub const RESPONSES: &str = "$dps/registrations/res/#";

/// How long to wait before polling when an answer gives no `retry-after`.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(2);

/// The longest `retry-after` taken as it is (a longer one is cut to this).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// The longest wait a 429's `retry-after` is taken for.
pub const MAX_THROTTLED: Duration = Duration::from_secs(3600);

/// `{idScope}/registrations/{registrationId}/api-version=2019-03-31&ClientVersion=...`.
pub fn username(id_scope: &str, registration_id: &str) -> String {
    let client = encode_component(&format!("opcua-connector/{}", env!("CARGO_PKG_VERSION")));
    format!("{id_scope}/registrations/{registration_id}/api-version={API_VERSION}&ClientVersion={client}")
}

/// The resource a registration's SAS token grants: `{idScope}/registrations/{registrationId}`.
pub fn resource(id_scope: &str, registration_id: &str) -> String {
    format!("{id_scope}/registrations/{registration_id}")
}

/// The CONNECT password: a SAS token for [`resource`] signed with the (derived) device key,
/// valid until `expiry_unix_s`. No `skn`, as Microsoft's SDK sends it.
pub fn password(
    id_scope: &str,
    registration_id: &str,
    key_base64: &str,
    expiry_unix_s: u64,
) -> Result<String, SasError> {
    sas::sas_token(
        &resource(id_scope, registration_id),
        key_base64,
        expiry_unix_s,
        None,
    )
}

/// The device key of a group enrollment: base64(HMAC-SHA256(key = the decoded group key,
/// message = the registration id)).
pub fn derive_device_key(
    group_key_base64: &str,
    registration_id: &str,
) -> Result<String, SasError> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(group_key_base64.trim())
        .map_err(|_| SasError::BadKey)?;
    if key.is_empty() {
        return Err(SasError::EmptyKey);
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| SasError::BadKey)?;
    mac.update(registration_id.as_bytes());
    Ok(base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

/// Publish here to register (request id `rid`).
pub fn register_topic(rid: u64) -> String {
    format!("$dps/registrations/PUT/iotdps-register/?$rid={rid}")
}

/// The register request's body.
pub fn register_body(registration_id: &str) -> Vec<u8> {
    serde_json::json!({ "registrationId": registration_id })
        .to_string()
        .into_bytes()
}

/// Publish here (empty body) to ask how the registration `operation_id` goes.
pub fn status_topic(rid: u64, operation_id: &str) -> String {
    format!(
        "$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={}",
        encode_component(operation_id)
    )
}

/// What an answer's topic says: `$dps/registrations/res/{status}/?$rid={rid}[&retry-after={s}]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub rid: Option<u64>,
    pub retry_after: Option<Duration>,
}

/// Parses an answer's topic; `None` for any other topic.
pub fn parse_response_topic(topic: &str) -> Option<Response> {
    let rest = topic.strip_prefix("$dps/registrations/res/")?;
    let (status, query) = rest.split_once('/')?;
    if status.len() != 3 || !status.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let query = query.strip_prefix('?').unwrap_or(query);
    let (mut rid, mut retry_after) = (None, None);
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("$rid", v)) => rid = v.parse().ok(),
            Some(("retry-after", v)) => {
                retry_after = v.parse::<u64>().ok().map(|s| Duration::from_secs(s.max(1)))
            }
            _ => {}
        }
    }
    Some(Response {
        status: status.parse().ok()?,
        rid,
        retry_after,
    })
}

/// What DPS answered, by what it means for the registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 202 (or 200 still assigning): poll `operation_id` after `retry_after`.
    Assigning {
        operation_id: String,
        retry_after: Duration,
    },
    /// 200 assigned: the hub and the device id.
    Assigned { hub: String, device_id: String },
    /// The registration ended without an assignment (`failed`, `disabled`), or DPS refused
    /// it with a 4xx other than 401 and 429: nothing a quick retry mends.
    Failed(String),
    /// 401: the credential (key, token) was refused.
    Refused(String),
    /// 429: throttled, retry after this.
    Throttled(Duration),
    /// 5xx, or an answer that cannot be read: worth a retry.
    Error(String),
}

/// The `message` / `errorMessage` of an error body, cut to 200 characters.
fn error_text(body: &Value) -> String {
    let message = ["message", "errorMessage"]
        .iter()
        .find_map(|k| body.get(*k).and_then(Value::as_str))
        .or_else(|| {
            body.get("registrationState")
                .and_then(|s| s.get("errorMessage"))
                .and_then(Value::as_str)
        })
        .unwrap_or("");
    let code = body
        .get("errorCode")
        .or_else(|| {
            body.get("registrationState")
                .and_then(|s| s.get("errorCode"))
        })
        .map(|c| format!(" (error code {c})"))
        .unwrap_or_default();
    let cut: String = message.chars().take(200).collect();
    format!("{cut}{code}")
}

/// Reads an answer (its topic already parsed into `response`).
pub fn parse_answer(response: &Response, body: &[u8]) -> Answer {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    // Polls wait at most a minute; a 429 waits what DPS asked, up to an hour.
    let asked = response.retry_after.unwrap_or(DEFAULT_RETRY_AFTER);
    let retry_after = asked.min(MAX_RETRY_AFTER);
    let throttled_for = asked.min(MAX_THROTTLED);
    match response.status {
        200 | 202 => {}
        401 => return Answer::Refused(format!("401 unauthorized: {}", error_text(&value))),
        429 => return Answer::Throttled(throttled_for),
        s @ 400..=499 => return Answer::Failed(format!("{s}: {}", error_text(&value))),
        s => return Answer::Error(format!("{s}: {}", error_text(&value))),
    }
    let status = value.get("status").and_then(Value::as_str).unwrap_or("");
    match status {
        "assigned" => {
            let state = value.get("registrationState");
            let field = |k: &str| state.and_then(|s| s.get(k)).and_then(Value::as_str);
            match (field("assignedHub"), field("deviceId")) {
                (Some(hub), Some(device))
                    if crate::config::is_valid_id(device)
                        && !hub.is_empty()
                        && hub
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') =>
                {
                    Answer::Assigned {
                        hub: hub.to_owned(),
                        device_id: device.to_owned(),
                    }
                }
                _ => Answer::Error(
                    "an assignment without registrationState.assignedHub and deviceId".into(),
                ),
            }
        }
        "assigning" | "unassigned" | "" if response.status == 202 || !status.is_empty() => {
            match value.get("operationId").and_then(Value::as_str) {
                Some(op) if !op.is_empty() => Answer::Assigning {
                    operation_id: op.to_owned(),
                    retry_after,
                },
                _ => Answer::Error(format!(
                    "{} {status:?} without an operationId",
                    response.status
                )),
            }
        }
        "failed" | "disabled" => {
            Answer::Failed(format!("registration {status}: {}", error_text(&value)))
        }
        other => Answer::Error(format!(
            "{} with an unknown status {:?}",
            response.status,
            other.chars().take(40).collect::<String>()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // shared/research/dps-vectors.md: computed with Microsoft's Azure IoT Python device SDK.
    const SCOPE: &str = "0ne00000A0A";
    const GROUP_KEY: &str = "R3JvdXBFbnJvbGxtZW50S2V5LXBsYW50LTEtMDEyMzQ1Njc4OWFiY2RlZg==";

    #[test]
    fn individual_tokens_match_the_sdk_vectors() {
        assert_eq!(
            password(SCOPE, "line-a-edge", "c2VjcmV0LWRwcy1pbmRpdmlkdWFsLWtleS0wMDE=", 1767225600).unwrap(),
            "SharedAccessSignature sr=0ne00000A0A%2Fregistrations%2Fline-a-edge&sig=V92mmkEct9tj18AWzGI0Uavp7kqyx9QKPDrdHdCp530%3D&se=1767225600"
        );
        assert_eq!(
            password("0ne0012ABCD", "filler-plant1-007", "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MDEyMzQ1Njc4OTA=", 2000000000).unwrap(),
            "SharedAccessSignature sr=0ne0012ABCD%2Fregistrations%2Ffiller-plant1-007&sig=Tr0l5gT%2FWe8YEQGVOdndZ3iGQF1L4wU6mr6enxkYwvo%3D&se=2000000000"
        );
    }

    #[test]
    fn group_keys_derive_the_sdk_device_keys_and_tokens() {
        let vectors = [
            (
                "line-a-edge",
                "Ij5BehncSL60XrKn1eO4N1fry8OVFPIAajXBI5XQlbs=",
                "SharedAccessSignature sr=0ne00000A0A%2Fregistrations%2Fline-a-edge&sig=Y3bhJEFcowuRnjoSFz2m1VWKHNaw9vERkOZjjxs60vU%3D&se=1767225600",
            ),
            (
                "line-b-edge",
                "bbLcTyS0lLWoxrbvU8v3IDgm302gQhOEl4a/vDV5UKA=",
                "SharedAccessSignature sr=0ne00000A0A%2Fregistrations%2Fline-b-edge&sig=rkoAAtT0BNgLnJ99hg3LuwtrNSrn1AoQwyoIrg4vImk%3D&se=1767225600",
            ),
            (
                "filler-plant1-007",
                "rZTYcH3hJYumNnxwNusL4ulg31PU8fyx7xcYvy9O+kg=",
                "SharedAccessSignature sr=0ne00000A0A%2Fregistrations%2Ffiller-plant1-007&sig=mkEX5%2BgDBvWs6l7Md4rE7cWKCqLTikyQfTZVJbj%2FGQ4%3D&se=1767225600",
            ),
        ];
        for (registration, device_key, token) in vectors {
            let derived = derive_device_key(GROUP_KEY, registration).unwrap();
            assert_eq!(derived, device_key, "{registration}");
            assert_eq!(
                password(SCOPE, registration, &derived, 1767225600).unwrap(),
                token
            );
        }
        assert_eq!(derive_device_key("not base64!", "x"), Err(SasError::BadKey));
        assert_eq!(derive_device_key("", "x"), Err(SasError::EmptyKey));
    }

    #[test]
    fn connect_fields_and_topics_are_the_documented_ones() {
        assert_eq!(
            username(SCOPE, "line-a-edge"),
            format!(
                "0ne00000A0A/registrations/line-a-edge/api-version=2019-03-31&ClientVersion=opcua-connector%2F{}",
                env!("CARGO_PKG_VERSION")
            )
        );
        assert_eq!(
            resource(SCOPE, "line-a-edge"),
            "0ne00000A0A/registrations/line-a-edge"
        );
        assert_eq!(
            register_topic(1),
            "$dps/registrations/PUT/iotdps-register/?$rid=1"
        );
        assert_eq!(
            String::from_utf8(register_body("line-a-edge")).unwrap(),
            r#"{"registrationId":"line-a-edge"}"#
        );
        assert_eq!(
            status_topic(2, "4.d0a671905ea5b2c8.42d78160-4c78"),
            "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId=4.d0a671905ea5b2c8.42d78160-4c78"
        );
    }

    #[test]
    fn answer_topics_give_status_rid_and_retry_after() {
        assert_eq!(
            parse_response_topic("$dps/registrations/res/202/?$rid=3&retry-after=1"),
            Some(Response {
                status: 202,
                rid: Some(3),
                retry_after: Some(Duration::from_secs(1))
            })
        );
        assert_eq!(
            parse_response_topic("$dps/registrations/res/200/?$rid=4"),
            Some(Response {
                status: 200,
                rid: Some(4),
                retry_after: None
            })
        );
        // Taken as asked here (a 429 waits up to an hour, a poll up to a minute: see the
        // answers); 0 would poll back to back.
        assert_eq!(
            parse_response_topic("$dps/registrations/res/429/?$rid=1&retry-after=9999")
                .and_then(|r| r.retry_after),
            Some(Duration::from_secs(9999))
        );
        assert_eq!(
            parse_response_topic("$dps/registrations/res/202/?$rid=1&retry-after=0")
                .and_then(|r| r.retry_after),
            Some(Duration::from_secs(1))
        );
        let throttled = Response {
            status: 429,
            rid: Some(1),
            retry_after: Some(Duration::from_secs(9999)),
        };
        assert_eq!(
            parse_answer(&throttled, b"{}"),
            Answer::Throttled(MAX_THROTTLED)
        );
        let assigning = Response {
            status: 202,
            ..throttled
        };
        assert_eq!(
            parse_answer(
                &assigning,
                br#"{"operationId":"op-1","status":"assigning"}"#
            ),
            Answer::Assigning {
                operation_id: "op-1".into(),
                retry_after: MAX_RETRY_AFTER
            }
        );
        let bad_device = Response {
            status: 200,
            ..throttled
        };
        let body = br#"{"status":"assigned","registrationState":{"assignedHub":"h.example","deviceId":"a/b"}}"#;
        assert!(matches!(parse_answer(&bad_device, body), Answer::Error(_)));
        for other in [
            "$iothub/twin/res/200/?$rid=1",
            "$dps/registrations/res/2x0/?$rid=1",
            "$dps/registrations/res/",
        ] {
            assert_eq!(parse_response_topic(other), None, "{other}");
        }
    }

    fn answer(topic: &str, body: &str) -> Answer {
        parse_answer(&parse_response_topic(topic).unwrap(), body.as_bytes())
    }

    #[test]
    fn answers_are_read_as_the_documentation_shows_them() {
        assert_eq!(
            answer(
                "$dps/registrations/res/202/?$rid=1&retry-after=3",
                r#"{"operationId":"4.abc","status":"assigning"}"#
            ),
            Answer::Assigning {
                operation_id: "4.abc".into(),
                retry_after: Duration::from_secs(3)
            }
        );
        assert_eq!(
            answer(
                "$dps/registrations/res/200/?$rid=2",
                r#"{"operationId":"4.abc","status":"assigned","registrationState":{"registrationId":"line-a-edge","assignedHub":"plant.azure-devices.net","deviceId":"line-a-edge","status":"assigned"}}"#
            ),
            Answer::Assigned {
                hub: "plant.azure-devices.net".into(),
                device_id: "line-a-edge".into()
            }
        );
        let disabled = answer(
            "$dps/registrations/res/200/?$rid=2",
            r#"{"operationId":"4.abc","status":"disabled","registrationState":{"errorCode":400,"errorMessage":"the enrollment is disabled"}}"#,
        );
        assert!(
            matches!(&disabled, Answer::Failed(m) if m.contains("disabled") && m.contains("the enrollment is disabled")),
            "{disabled:?}"
        );
        let refused = answer(
            "$dps/registrations/res/401/?$rid=1",
            r#"{"errorCode":401002,"message":"Unauthorized"}"#,
        );
        assert!(
            matches!(&refused, Answer::Refused(m) if m.contains("401002")),
            "{refused:?}"
        );
        assert_eq!(
            answer("$dps/registrations/res/429/?$rid=1&retry-after=7", ""),
            Answer::Throttled(Duration::from_secs(7))
        );
        assert!(matches!(
            answer("$dps/registrations/res/404/?$rid=1", "{}"),
            Answer::Failed(_)
        ));
        assert!(matches!(
            answer("$dps/registrations/res/503/?$rid=1", "oops"),
            Answer::Error(_)
        ));
        assert!(matches!(
            answer(
                "$dps/registrations/res/200/?$rid=1",
                r#"{"status":"assigned"}"#
            ),
            Answer::Error(_)
        ));
        assert!(matches!(
            answer(
                "$dps/registrations/res/202/?$rid=1",
                r#"{"status":"assigning"}"#
            ),
            Answer::Error(_)
        ));
        assert!(matches!(
            answer("$dps/registrations/res/200/?$rid=1", "not json"),
            Answer::Error(_)
        ));
    }
}
