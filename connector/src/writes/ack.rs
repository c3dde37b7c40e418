//! Acknowledgements: IoT Plug and Play reported properties and MQTT write responses.

use serde_json::{json, Map, Value};

/// One acknowledged desired property.
#[derive(Debug, Clone, PartialEq)]
pub struct TwinAck {
    /// The mapping's dotted path (`a.b.c` is re-nested as `{"a":{"b":{"c":..}}}`).
    pub property: String,
    /// The value now in the PLC (or the desired value when refused).
    pub value: Value,
    /// 200 written, 400 refused, 500 the PLC refused or is unreachable.
    pub code: u16,
    /// The desired `$version` acknowledged.
    pub version: i64,
    pub description: String,
}

impl TwinAck {
    /// `{"value": v, "ac": code, "av": version, "ad": "text"}`.
    pub fn body(&self) -> Value {
        json!({
            "value": self.value,
            "ac": self.code,
            "av": self.version,
            "ad": self.description,
        })
    }
}

/// The reported-properties patch for one acknowledgement.
pub fn twin_ack(ack: &TwinAck) -> Value {
    reported_patch(std::slice::from_ref(ack))
}

/// The reported-properties patch for several acknowledgements, nested by their dotted paths
/// and merged (siblings share their parents; a later ack of the same path wins).
pub fn reported_patch(acks: &[TwinAck]) -> Value {
    let mut root = Map::new();
    for ack in acks {
        let mut node = &mut root;
        let mut parts = ack.property.split('.').peekable();
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                node.insert(part.to_string(), ack.body());
                break;
            }
            let entry = node
                .entry(part.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            let Value::Object(inner) = entry else {
                unreachable!("just made an object")
            };
            node = inner;
        }
    }
    Value::Object(root)
}

/// The largest `value` an MQTT write response echoes (its JSON text, in bytes): a larger one
/// is left out, so an answer is never as large as a hostile request.
pub const MAX_ECHO_BYTES: usize = 1024;

/// The MQTT write response `{"id": .., "status": code, "detail": "..", "value": ..}`;
/// `value` is left out when there is none (a request refused before any value was known) or
/// when its JSON is longer than [`MAX_ECHO_BYTES`].
pub fn write_response(id: &str, status: u16, detail: &str, value: Option<&Value>) -> Value {
    let mut out = Map::new();
    out.insert("id".into(), Value::from(id));
    out.insert("status".into(), Value::from(status));
    out.insert("detail".into(), Value::from(detail));
    if let Some(v) = value.filter(|v| v.to_string().len() <= MAX_ECHO_BYTES) {
        out.insert("value".into(), v.clone());
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writes::Refusal;

    fn ack(property: &str, value: Value, code: u16, version: i64, ad: &str) -> TwinAck {
        TwinAck {
            property: property.into(),
            value,
            code,
            version,
            description: ad.into(),
        }
    }

    #[test]
    fn flat_ack_follows_pnp_convention() {
        let a = ack("speed", json!(12.5), 200, 7, "written");
        assert_eq!(
            twin_ack(&a),
            json!({"speed": {"value": 12.5, "ac": 200, "av": 7, "ad": "written"}})
        );
    }

    #[test]
    fn nested_acks_are_renested_and_merged() {
        let r = Refusal::OutOfRange {
            value: "500".into(),
            min: 0.0,
            max: 100.0,
        };
        let acks = [
            ack("filler.speed", json!(3), 200, 9, "written"),
            ack("filler.limits.max", json!(500), r.code(), 9, &r.to_string()),
            ack("mode", json!("auto"), 500, 9, "BadNotWritable"),
        ];
        assert_eq!(
            reported_patch(&acks),
            json!({
                "filler": {
                    "speed": {"value": 3, "ac": 200, "av": 9, "ad": "written"},
                    "limits": {"max": {"value": 500, "ac": 400, "av": 9,
                        "ad": "out of range: 500 not in [0, 100]"}}
                },
                "mode": {"value": "auto", "ac": 500, "av": 9, "ad": "BadNotWritable"}
            })
        );
        assert_eq!(reported_patch(&[]), json!({}));
    }

    #[test]
    fn later_ack_of_same_path_wins() {
        let acks = [
            ack("a.b", json!(1), 500, 1, "BadTimeout"),
            ack("a.b", json!(2), 200, 2, "written"),
        ];
        assert_eq!(
            reported_patch(&acks),
            json!({"a": {"b": {"value": 2, "ac": 200, "av": 2, "ad": "written"}}})
        );
    }

    #[test]
    fn write_response_shape() {
        assert_eq!(
            write_response("r1", 200, "written", Some(&json!(true))),
            json!({"id": "r1", "status": 200, "detail": "written", "value": true})
        );
        assert_eq!(
            write_response("r2", 400, "expired", None),
            json!({"id": "r2", "status": 400, "detail": "expired"})
        );
        let long = json!("x".repeat(MAX_ECHO_BYTES));
        assert!(write_response("r3", 400, "wrong type", Some(&long))
            .get("value")
            .is_none());
    }
}
