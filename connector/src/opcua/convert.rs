//! OPC UA data values to samples: every built-in type to its Parquet value column.

use std::sync::{Arc, OnceLock};

use opcua::types::{ContextOwned, DataValue, DateTime, Variant};

use crate::opcua::resolve::Namespaces;
use crate::opcua::structures::Structures;
use crate::sample::{Item, Origin, Sample, SampleValue, TypeName};

/// 1601-01-01T00:00:00Z, OPC UA's null DateTime, in µs since the Unix epoch.
const NULL_US: i64 = -11_644_473_600_000_000;

/// Microseconds since the Unix epoch of an OPC UA DateTime (100 ns ticks since 1601).
pub fn micros(t: &DateTime) -> i64 {
    t.as_chrono().timestamp_micros()
}

/// Builds a sample from a notification. `received_us` is used when the value carries neither
/// a source nor a server timestamp.
/// NodeId values are written in namespace-URI form with `ns`, like the `node` column; a
/// structure the session decoded is named by `structures`.
pub fn sample(
    item: &Arc<Item>,
    dv: DataValue,
    received_us: i64,
    ns: &Namespaces,
    structures: Option<&Structures>,
) -> Sample {
    // A null DateTime (1601-01-01) is no timestamp. Compared in µs: `DateTime::is_null`
    // builds the 1601 epoch anew at every call (a tenth of the CPU per sample).
    let present = |t: &Option<DateTime>| t.as_ref().map(micros).filter(|&us| us != NULL_US);
    let server_time_us = present(&dv.server_timestamp);
    let time_us = present(&dv.source_timestamp)
        .or(server_time_us)
        .unwrap_or(received_us);
    let status = dv.status.map(|s| s.bits()).unwrap_or(0);
    let (type_name, value) = match dv.value {
        Some(v) => named(v, ns, structures),
        None => (TypeName::NULL, SampleValue::Null),
    };
    Sample {
        item: item.clone(),
        time_us,
        server_time_us,
        status,
        type_name,
        value,
        origin: Origin::Live,
    }
}

fn scalar_type(v: &Variant) -> u8 {
    use opcua::types::VariantScalarTypeId as T;
    match v.scalar_type_id() {
        Some(t) => match t {
            T::Boolean => 1,
            T::SByte => 2,
            T::Byte => 3,
            T::Int16 => 4,
            T::UInt16 => 5,
            T::Int32 => 6,
            T::UInt32 => 7,
            T::Int64 => 8,
            T::UInt64 => 9,
            T::Float => 10,
            T::Double => 11,
            T::String => 12,
            T::DateTime => 13,
            T::Guid => 14,
            T::ByteString => 15,
            T::XmlElement => 16,
            T::NodeId => 17,
            T::ExpandedNodeId => 18,
            T::StatusCode => 19,
            T::QualifiedName => 20,
            T::LocalizedText => 21,
            T::ExtensionObject => 22,
            T::DataValue => 23,
            T::Variant => 24,
            T::DiagnosticInfo => 25,
        },
        None => 0,
    }
}

/// [`value`], with a decoded structure's type named after it.
pub fn named(
    v: Variant,
    ns: &Namespaces,
    structures: Option<&Structures>,
) -> (TypeName, SampleValue) {
    let name = structures.and_then(|s| s.type_name(&v));
    let (type_name, value) = value(v, ns);
    (name.unwrap_or(type_name), value)
}

/// The type name and value column of a variant.
pub fn value(v: Variant, ns: &Namespaces) -> (TypeName, SampleValue) {
    let builtin = scalar_type(&v);
    let scalar = |builtin| TypeName::builtin(builtin, false);
    let out = match v {
        Variant::Empty => return (TypeName::NULL, SampleValue::Null),
        Variant::Boolean(b) => SampleValue::Bool(b),
        Variant::SByte(x) => SampleValue::Int(x.into()),
        Variant::Byte(x) => SampleValue::Int(x.into()),
        Variant::Int16(x) => SampleValue::Int(x.into()),
        Variant::UInt16(x) => SampleValue::Int(x.into()),
        Variant::Int32(x) => SampleValue::Int(x.into()),
        Variant::UInt32(x) => SampleValue::Int(x.into()),
        Variant::Int64(x) => SampleValue::Int(x),
        Variant::UInt64(x) => SampleValue::UInt(x),
        Variant::Float(x) => SampleValue::Double(x.into()),
        Variant::Double(x) => SampleValue::Double(x),
        Variant::String(s) => SampleValue::String(s.as_ref().to_owned()),
        Variant::DateTime(t) => SampleValue::Time(micros(&t)),
        Variant::Guid(g) => SampleValue::String(g.to_string()),
        Variant::ByteString(b) => SampleValue::Bytes(b.value.unwrap_or_default()),
        Variant::XmlElement(x) => SampleValue::String(x.to_string()),
        Variant::NodeId(n) => SampleValue::String(ns.uri_form(&n)),
        Variant::ExpandedNodeId(n) if n.namespace_uri.is_null() && n.server_index == 0 => {
            SampleValue::String(ns.uri_form(&n.node_id))
        }
        Variant::ExpandedNodeId(n) => SampleValue::String(n.to_string()),
        Variant::StatusCode(s) => SampleValue::Int(s.bits().into()),
        Variant::QualifiedName(q) => SampleValue::String(q.name.as_ref().to_owned()),
        Variant::LocalizedText(t) => SampleValue::String(t.text.as_ref().to_owned()),
        Variant::Array(ref a) => {
            let builtin = a.value_type as u8;
            return (
                TypeName::builtin(builtin, true),
                SampleValue::Json(json(&v)),
            );
        }
        other => SampleValue::Json(json(&other)),
    };
    (scalar(builtin), out)
}

/// OPC UA JSON encoding of a variant (arrays, ExtensionObjects, ...).
pub fn json(v: &Variant) -> String {
    static CTX: OnceLock<ContextOwned> = OnceLock::new();
    let ctx = CTX.get_or_init(ContextOwned::default);
    opcua::types::json::to_string(v, &ctx.context())
        .unwrap_or_else(|e| format!("{{\"error\":\"cannot encode as OPC UA JSON: {e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opcua::types::{ByteString, StatusCode};

    fn item() -> Arc<Item> {
        Arc::new(Item {
            plc: "p".into(),
            group: "g".into(),
            node: "nsu=urn:x;s=A".into(),
            name: "A".into(),
        })
    }

    #[test]
    fn maps_every_scalar_to_its_column() {
        let cases: Vec<(Variant, &str, SampleValue)> = vec![
            (Variant::Boolean(true), "Boolean", SampleValue::Bool(true)),
            (Variant::SByte(-3), "SByte", SampleValue::Int(-3)),
            (
                Variant::UInt32(u32::MAX),
                "UInt32",
                SampleValue::Int(u32::MAX.into()),
            ),
            (
                Variant::Int64(i64::MIN),
                "Int64",
                SampleValue::Int(i64::MIN),
            ),
            (
                Variant::UInt64(u64::MAX),
                "UInt64",
                SampleValue::UInt(u64::MAX),
            ),
            (Variant::Float(1.5), "Float", SampleValue::Double(1.5)),
            (
                Variant::Double(f64::NEG_INFINITY),
                "Double",
                SampleValue::Double(f64::NEG_INFINITY),
            ),
            (
                Variant::from("x"),
                "String",
                SampleValue::String("x".into()),
            ),
            (
                Variant::ByteString(ByteString::from(vec![0u8, 1])),
                "ByteString",
                SampleValue::Bytes(vec![0, 1]),
            ),
            (
                Variant::StatusCode(StatusCode::BadNoCommunication),
                "StatusCode",
                SampleValue::Int(StatusCode::BadNoCommunication.bits().into()),
            ),
        ];
        for (v, ty, expected) in cases {
            let (t, got) = value(v, &Namespaces::default());
            assert_eq!(t.to_string(), ty);
            assert_eq!(got, expected, "{ty}");
        }
        let (t, got) = value(Variant::from(vec![1i32, 2, 3]), &Namespaces::default());
        assert_eq!(t.to_string(), "Array<Int32>");
        let SampleValue::Json(j) = got else {
            panic!("array is JSON")
        };
        assert!(j.contains('1') && j.contains('3'), "{j}");
    }

    #[test]
    fn datetimes_keep_microseconds_and_timestamps_fall_back() {
        let t =
            DateTime::from(chrono::DateTime::from_timestamp(1_700_000_000, 123_456_000).unwrap());
        assert_eq!(micros(&t), 1_700_000_000_123_456);
        let s = sample(
            &item(),
            DataValue {
                value: Some(Variant::Double(1.0)),
                server_timestamp: Some(t),
                ..DataValue::null()
            },
            5,
            &Namespaces::default(),
            None,
        );
        assert_eq!(
            s.time_us, 1_700_000_000_123_456,
            "server timestamp when no source timestamp"
        );
        let s = sample(
            &item(),
            DataValue {
                value: Some(Variant::Double(1.0)),
                source_timestamp: Some(DateTime::null()),
                server_timestamp: Some(DateTime::null()),
                ..DataValue::null()
            },
            5,
            &Namespaces::default(),
            None,
        );
        assert_eq!(
            (s.time_us, s.server_time_us),
            (5, None),
            "null timestamps are none"
        );
        let s = sample(
            &item(),
            DataValue {
                value: None,
                status: Some(StatusCode::BadNoCommunication),
                ..DataValue::null()
            },
            5,
            &Namespaces::default(),
            None,
        );
        assert_eq!(
            (s.time_us, s.status, s.value),
            (5, StatusCode::BadNoCommunication.bits(), SampleValue::Null)
        );
    }
}
