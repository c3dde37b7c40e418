//! The pieces of the line's DTDL Interface that do not depend on the line: the JSON of DTDL
//! elements (fields, objects, arrays, enums), the schemas of the OPC UA types a write or a
//! method argument has, and the schemas of the connector's message bodies (samples,
//! windows, events, alerts).

use opcua::types::{Identifier, NodeId};
use serde_json::{json, Map, Value};

use super::model::{cut, MAX_TEXT};
use crate::config::WriteType;

pub(super) fn with_text(
    mut element: Map<String, Value>,
    description: &str,
    comment: &str,
) -> Value {
    if !description.is_empty() {
        element.insert("description".into(), cut(description, MAX_TEXT).into());
    }
    if !comment.is_empty() {
        element.insert("comment".into(), cut(comment, MAX_TEXT).into());
    }
    Value::Object(element)
}

/// An Object field.
pub(super) fn field(name: &str, schema: Value, description: &str) -> Value {
    let mut f = Map::new();
    f.insert("name".into(), name.into());
    f.insert("schema".into(), schema);
    with_text(f, description, "")
}

pub(super) fn object(fields: Vec<Value>) -> Value {
    json!({"@type": "Object", "fields": fields})
}

pub(super) fn array(element: Value) -> Value {
    json!({"@type": "Array", "elementSchema": element})
}

/// An Enum of strings, each its own name.
pub(super) fn string_enum(values: &[&str]) -> Value {
    let values: Vec<Value> = values
        .iter()
        .map(|v| json!({"name": v, "enumValue": v}))
        .collect();
    json!({"@type": "Enum", "valueSchema": "string", "enumValues": values})
}

/// What a sample's `v` (or an alert value's) can be: DTDL v3 has no union of schemas.
pub(super) const ANY_VALUE: &str = "the value as the node's type makes it: a JSON number (Int64 and UInt64 as strings), boolean or string (ByteString base64, DateTime RFC 3339, NaN and infinities as \"NaN\", \"Infinity\", \"-Infinity\"), arrays and structures in OPC UA JSON, null for none. DTDL has no union schema: string stands for all of them";

/// The DTDL primitive schema of a `[[write]]` type (and of a method's input argument).
pub fn write_schema(t: WriteType) -> &'static str {
    match t {
        WriteType::Boolean => "boolean",
        WriteType::SByte
        | WriteType::Byte
        | WriteType::Int16
        | WriteType::UInt16
        | WriteType::Int32 => "integer",
        WriteType::UInt32 | WriteType::Int64 | WriteType::UInt64 => "long",
        WriteType::Float => "float",
        WriteType::Double => "double",
        WriteType::String | WriteType::ByteString | WriteType::LocalizedText => "string",
    }
}

/// What DTDL's primitive schema does not say of an OPC UA type.
pub(super) fn type_note(t: WriteType) -> Option<String> {
    let (lo, hi) = match t {
        WriteType::SByte => (i64::from(i8::MIN), i64::from(i8::MAX)),
        WriteType::Byte => (0, i64::from(u8::MAX)),
        WriteType::Int16 => (i64::from(i16::MIN), i64::from(i16::MAX)),
        WriteType::UInt16 => (0, i64::from(u16::MAX)),
        WriteType::UInt32 => (0, i64::from(u32::MAX)),
        WriteType::UInt64 => {
            return Some(
                "whole numbers from 0; above 9223372036854775807 beyond DTDL's long".to_owned(),
            )
        }
        WriteType::ByteString => return Some("base64 of the bytes".to_owned()),
        WriteType::LocalizedText => return Some("the text, without a locale".to_owned()),
        _ => return None,
    };
    Some(format!("whole numbers from {lo} to {hi}"))
}

/// The schema of an output argument, as the connector answers it (`variant_json`): a known
/// built-in type, or `None`.
pub(super) fn output_schema(data_type: &NodeId) -> Option<Value> {
    if data_type.namespace != 0 {
        return None;
    }
    let Identifier::Numeric(n) = data_type.identifier else {
        return None;
    };
    Some(match n {
        1 => "boolean".into(),
        2..=6 => "integer".into(),
        7..=9 => "long".into(),
        10 => "float".into(),
        11 => "double".into(),
        // String, Guid, ByteString (base64), StatusCode (its name).
        12 | 14 | 15 | 19 => "string".into(),
        13 => "dateTime".into(),
        21 => object(vec![
            field("Locale", "string".into(), ""),
            field("Text", "string".into(), ""),
        ]),
        _ => return None,
    })
}

/// `value_rank` levels of Array around `schema` (0: one level, for "one or more").
pub(super) fn ranked(schema: Value, value_rank: i32) -> Value {
    match value_rank {
        r if r >= 1 => (0..r).fold(schema, |s, _| array(s)),
        0 => array(schema),
        _ => schema,
    }
}

/// The fields every message body starts with.
pub(super) fn header_fields() -> Vec<Value> {
    vec![
        field("schema", "integer".into(), "payload schema version: 2"),
        field(
            "epoch",
            "string".into(),
            "16 hex digits; a new one when the connector's seq state was lost",
        ),
        field("line", "string".into(), "the line id"),
        field("plc", "string".into(), "the plc id"),
        field("group", "string".into(), "the group or event stream name"),
        field(
            "seq",
            "long".into(),
            "one more per message of this plc and group within an epoch: drop repeats by (epoch, plc, group, seq)",
        ),
    ]
}

pub(super) fn sample_schema(origins: &[&str]) -> Value {
    let mut fields = vec![
        field("node", "string".into(), "node id in the nsu= form"),
        field(
            "name",
            "string".into(),
            "tag name: the alias or browse path",
        ),
        field(
            "t",
            "dateTime".into(),
            "source timestamp, UTC, microseconds",
        ),
        field("v", "string".into(), ANY_VALUE),
        field(
            "type",
            "string".into(),
            "the OPC UA type of v (Double, Int64, Boolean, ...)",
        ),
        field(
            "st",
            "long".into(),
            "OPC UA status code; left out when Good",
        ),
    ];
    if !origins.is_empty() {
        fields.push(field(
            "origin",
            string_enum(origins),
            "history: read back after an outage; heartbeat: the last value sent again; left out for live samples",
        ));
    }
    object(fields)
}

pub(super) fn window_schema(aggregates: &[&str]) -> Value {
    let mut fields = vec![
        field("node", "string".into(), "node id in the nsu= form"),
        field("name", "string".into(), "tag name"),
        field("start", "dateTime".into(), "window start, UTC"),
        field("end", "dateTime".into(), "window end, UTC"),
    ];
    for a in aggregates {
        fields.push(if *a == "count" {
            field("count", "long".into(), "Good samples in the window")
        } else {
            field(
                a,
                "double".into(),
                "null without a Good sample; NaN and infinities as strings",
            )
        });
    }
    fields.push(field(
        "bad",
        "long".into(),
        "Bad or Uncertain samples left out; left out when none",
    ));
    fields.push(field(
        "partial",
        "boolean".into(),
        "sent before the window ended (shutdown); left out otherwise",
    ));
    object(fields)
}

pub(super) fn event_schema(extra_fields: bool) -> Value {
    let mut fields = vec![
        field("t", "dateTime".into(), "the event's Time"),
        field("received", "dateTime".into(), "ReceiveTime"),
        field(
            "event_id",
            "string".into(),
            "EventId, base64: what an acknowledgement sends back",
        ),
        field("event_type", "string".into(), "node id"),
        field("source_node", "string".into(), "node id"),
        field("source_name", "string".into(), ""),
        field("message", "string".into(), ""),
        field("condition_id", "string".into(), "conditions only"),
        field("condition_name", "string".into(), "conditions only"),
        field("branch_id", "string".into(), "conditions only"),
        field("comment", "string".into(), "conditions only"),
        field("severity", "integer".into(), "1 to 1000"),
    ];
    for flag in ["retain", "enabled", "active", "acked", "confirmed"] {
        fields.push(field(flag, "boolean".into(), "conditions only"));
    }
    if extra_fields {
        fields.push(field(
            "fields",
            json!({
                "@type": "Map",
                "mapKey": {"name": "path", "schema": "string"},
                "mapValue": {"name": "value", "schema": "string"},
            }),
            &format!("the stream's extra fields by path; {ANY_VALUE}"),
        ));
    }
    object(fields)
}

/// The body of the reported property `connectorStatus` (`cloud::status`).
pub(super) fn connector_status_schema() -> Value {
    let plcs = json!({
        "@type": "Map",
        "mapKey": {"name": "plc", "schema": "string"},
        "mapValue": {"name": "session", "schema": string_enum(&["connected", "disconnected"])},
    });
    object(vec![
        field("state", string_enum(&["online"]), ""),
        field(
            "at",
            "dateTime".into(),
            "when the connector made this report",
        ),
        field("version", "string".into(), "the connector's version"),
        field("line", "string".into(), "[line] id"),
        field("plcs", plcs, "each PLC's session, by [[plc]] id"),
        field("plcs_connected", "integer".into(), ""),
        field("plcs_total", "integer".into(), ""),
        field(
            "backlog",
            object(vec![
                field(
                    "messages",
                    "long".into(),
                    "messages buffered, not yet acknowledged",
                ),
                field("bytes", "long".into(), "bytes of the buffer's files"),
                field("oldest_s", "double".into(), "age of the oldest, in seconds"),
            ]),
            "the hub's buffer",
        ),
    ])
}

pub(super) fn alert_schema() -> Value {
    object(vec![
        field("rule", "string".into(), "the [[rule]] name"),
        field("state", string_enum(&["fired", "cleared"]), ""),
        field("t", "dateTime".into(), "the connector's clock"),
        field("message", "string".into(), ""),
        field("severity", "integer".into(), "1 to 1000"),
        field(
            "values",
            array(object(vec![
                field("node", "string".into(), "node id in the nsu= form"),
                field("v", "string".into(), ANY_VALUE),
            ])),
            "the last value of each node the rule reads",
        ),
    ])
}

/// How a Telemetry's message body relates to Plug and Play's usual form.
pub(super) const BODY_COMMENT: &str = "The schema is the whole message body, JSON (gzip-compressed with payload = json+gzip), not an object keyed by this Telemetry's name as Plug and Play telemetry usually is: route or decode by the message's application properties plc and group";
