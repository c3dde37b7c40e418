//! Write requests: plain-MQTT request bodies, expiry, and IoT Hub desired-property patches
//! (de-duplication by id is in [`super::state`]).

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::state::cut;
use super::{Refusal, MAX_ID_BYTES, MAX_PROPERTY_BYTES};

/// A parse error in an answer or a log line is cut to this many characters (it can quote the
/// input: an unknown field's name).
pub const MAX_ERROR_CHARS: usize = 200;
use crate::config::types::WriteMapping;

/// A plain-MQTT write request, as parsed from its body.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteRequest {
    pub id: String,
    pub property: String,
    pub value: Value,
    pub expires: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    id: String,
    property: String,
    value: Value,
    #[serde(default)]
    expires: Option<String>,
}

/// Parses `{"id": "...", "property": "...", "value": <json>, "expires": "<RFC 3339>"?}`;
/// unknown fields, an empty id or property, and a bad timestamp are refused as malformed.
pub fn parse_request(body: &[u8]) -> Result<WriteRequest, Refusal> {
    let raw: RawRequest = serde_json::from_slice(body)
        .map_err(|e| Refusal::Malformed(cut(&e.to_string(), MAX_ERROR_CHARS)))?;
    check_id(&raw.id)?;
    if raw.property.is_empty() {
        return Err(Refusal::Malformed("empty property".into()));
    }
    if raw.property.len() > MAX_PROPERTY_BYTES {
        return Err(Refusal::Malformed(format!(
            "property is {} bytes; at most {MAX_PROPERTY_BYTES}",
            raw.property.len()
        )));
    }
    let expires = match raw.expires {
        None => None,
        Some(text) => Some(
            DateTime::parse_from_rfc3339(&text)
                .map_err(|e| Refusal::Malformed(format!("expires {:?}: {e}", cut(&text, 40))))?
                .with_timezone(&Utc),
        ),
    };
    Ok(WriteRequest {
        id: raw.id,
        property: raw.property,
        value: raw.value,
        expires,
    })
}

/// A request id: not empty, at most [`MAX_ID_BYTES`].
pub fn check_id(id: &str) -> Result<(), Refusal> {
    if id.is_empty() {
        return Err(Refusal::Malformed("empty id".into()));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(Refusal::Malformed(format!(
            "id is {} bytes; at most {MAX_ID_BYTES}",
            id.len()
        )));
    }
    Ok(())
}

/// The `[[write]]` mapping for a property (exact match of its dotted path).
pub fn find_mapping<'a>(mappings: &'a [WriteMapping], property: &str) -> Option<&'a WriteMapping> {
    mappings.iter().find(|m| m.property == property)
}

/// Whether the request's deadline has passed (a request without one never expires).
pub fn expired(req: &WriteRequest, now: DateTime<Utc>) -> bool {
    req.expires.is_some_and(|deadline| now >= deadline)
}

/// One mapped desired property of a patch.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredProperty {
    /// The mapping's dotted path.
    pub property: String,
    pub value: Value,
}

/// An IoT Hub desired-properties document (full `desired` section or PATCH).
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredPatch {
    pub version: i64,
    /// Mapped properties present in the document, in key order.
    pub properties: Vec<DesiredProperty>,
    /// Dotted paths of keys that match no mapping (`$`-keys such as `$metadata` excluded).
    pub unmapped: Vec<String>,
}

/// Parses a desired-properties JSON: `$version` (required integer) and the properties of
/// `mappings` found by their dotted path (`a.b.c` walks nested objects). Keys starting with
/// `$` (`$metadata`, `$version`) are skipped; other keys that no mapping covers are listed in
/// `unmapped` (the deepest path that no mapping continues).
pub fn desired_patch(body: &[u8], mappings: &[WriteMapping]) -> Result<DesiredPatch, Refusal> {
    let doc: Value = serde_json::from_slice(body)
        .map_err(|e| Refusal::Malformed(cut(&e.to_string(), MAX_ERROR_CHARS)))?;
    let Value::Object(obj) = doc else {
        return Err(Refusal::Malformed(
            "desired properties are not an object".into(),
        ));
    };
    let version = match obj.get("$version") {
        None => return Err(Refusal::Malformed("missing $version".into())),
        Some(v) => v
            .as_i64()
            .ok_or_else(|| Refusal::Malformed(format!("$version is not an integer: {v}")))?,
    };
    let mut patch = DesiredPatch {
        version,
        properties: Vec::new(),
        unmapped: Vec::new(),
    };
    walk(&obj, "", mappings, &mut patch);
    Ok(patch)
}

fn walk(obj: &Map<String, Value>, prefix: &str, mappings: &[WriteMapping], out: &mut DesiredPatch) {
    for (key, value) in obj {
        if key.starts_with('$') {
            continue;
        }
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        if find_mapping(mappings, &path).is_some() {
            out.properties.push(DesiredProperty {
                property: path,
                value: value.clone(),
            });
            continue;
        }
        let continued = mappings.iter().any(|m| {
            m.property.len() > path.len()
                && m.property.starts_with(path.as_str())
                && m.property.as_bytes()[path.len()] == b'.'
        });
        match value {
            Value::Object(inner) if continued => walk(inner, &path, mappings, out),
            _ => out.unmapped.push(path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::types::WriteType;
    use crate::writes::coerce::mapping;
    use serde_json::json;

    #[test]
    fn parses_a_full_request() {
        let r = parse_request(
            br#"{"id":"r1","property":"filler.speed","value":12.5,"expires":"2026-01-02T03:04:05+01:00"}"#,
        )
        .unwrap();
        assert_eq!(r.id, "r1");
        assert_eq!(r.property, "filler.speed");
        assert_eq!(r.value, json!(12.5));
        assert_eq!(r.expires.unwrap().to_rfc3339(), "2026-01-02T02:04:05+00:00");
    }

    #[test]
    fn request_without_expiry_never_expires() {
        let r = parse_request(br#"{"id":"r","property":"p","value":null}"#).unwrap();
        assert_eq!(r.value, Value::Null);
        assert!(r.expires.is_none());
        assert!(!expired(&r, DateTime::<Utc>::MAX_UTC));
    }

    #[test]
    fn refuses_malformed_requests() {
        for body in [
            &br#"{"id":"r","property":"p","value":1,"extra":2}"#[..],
            br#"{"property":"p","value":1}"#,
            br#"{"id":"r","value":1}"#,
            br#"{"id":"r","property":"p"}"#,
            br#"{"id":"","property":"p","value":1}"#,
            br#"{"id":"r","property":"","value":1}"#,
            br#"{"id":7,"property":"p","value":1}"#,
            br#"{"id":"r","property":"p","value":1,"expires":"tomorrow"}"#,
            br#"{"id":"r","property":"p","value":1,"expires":5}"#,
            br#"[1,2]"#,
            b"",
            b"\xff\xfe",
        ] {
            let r = parse_request(body);
            assert!(matches!(r, Err(Refusal::Malformed(_))), "{body:?}: {r:?}");
        }
    }

    #[test]
    fn expiry_is_inclusive() {
        let r = parse_request(
            br#"{"id":"r","property":"p","value":1,"expires":"2026-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        let at = r.expires.unwrap();
        assert!(!expired(&r, at - chrono::Duration::milliseconds(1)));
        assert!(expired(&r, at));
        assert!(expired(&r, at + chrono::Duration::seconds(1)));
    }

    #[test]
    fn finds_mappings_by_exact_path() {
        let ms = [
            mapping("a.b", WriteType::Int32, None, None),
            mapping("speed", WriteType::Double, None, None),
        ];
        assert_eq!(find_mapping(&ms, "a.b").unwrap().property, "a.b");
        assert_eq!(find_mapping(&ms, "speed").unwrap().property, "speed");
        assert!(find_mapping(&ms, "a").is_none());
        assert!(find_mapping(&ms, "a.b.c").is_none());
        assert!(find_mapping(&[], "speed").is_none());
    }

    #[test]
    fn desired_patch_walks_dotted_paths() {
        let ms = [
            mapping("filler.speed", WriteType::Double, None, None),
            mapping("filler.limits.max", WriteType::Int32, None, None),
            mapping("mode", WriteType::String, None, None),
        ];
        let body = json!({
            "$version": 42,
            "$metadata": {"$lastUpdated": "2026-01-01T00:00:00Z", "filler": {"speed": {}}},
            "filler": {"speed": 3.5, "limits": {"max": 9, "min": 1}, "color": "red"},
            "mode": {"nested": "object"},
            "other": 1
        });
        let p = desired_patch(body.to_string().as_bytes(), &ms).unwrap();
        assert_eq!(p.version, 42);
        assert_eq!(
            p.properties,
            vec![
                DesiredProperty {
                    property: "filler.limits.max".into(),
                    value: json!(9)
                },
                DesiredProperty {
                    property: "filler.speed".into(),
                    value: json!(3.5)
                },
                DesiredProperty {
                    property: "mode".into(),
                    value: json!({"nested": "object"})
                },
            ]
        );
        assert_eq!(
            p.unmapped,
            vec!["filler.color", "filler.limits.min", "other"]
        );
    }

    #[test]
    fn desired_patch_prefix_is_not_a_parent() {
        // "fill" must not be taken as a parent of "filler.speed".
        let ms = [mapping("filler.speed", WriteType::Double, None, None)];
        let p = desired_patch(br#"{"$version":1,"fill":{"er":1},"filler":5}"#, &ms).unwrap();
        assert!(p.properties.is_empty());
        assert_eq!(p.unmapped, vec!["fill", "filler"]);
    }

    #[test]
    fn desired_patch_requires_integer_version() {
        let ms = [mapping("a", WriteType::Int32, None, None)];
        for body in [
            &br#"{"a":1}"#[..],
            br#"{"$version":"1","a":1}"#,
            br#"{"$version":1.5,"a":1}"#,
            br#"{"$version":18446744073709551615}"#,
            br#"[]"#,
            br#"null"#,
            b"{",
        ] {
            assert!(
                matches!(desired_patch(body, &ms), Err(Refusal::Malformed(_))),
                "{body:?}"
            );
        }
        let p = desired_patch(br#"{"$version":-3}"#, &ms).unwrap();
        assert_eq!(p.version, -3);
        assert!(p.properties.is_empty() && p.unmapped.is_empty());
    }
}
