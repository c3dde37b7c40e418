//! Conversions between the model's values and OPC UA variants and data types.

use chrono::Utc;
use opcua::types::{
    ByteString, DataTypeId, DateTime, LocalizedText, NodeId, UAString, Variant, VariantScalarTypeId,
};

use crate::model::{Kind, Refusal, Value, VarType};

/// The code of an OPC UA status name (`Good`, `UncertainLastUsableValue`, `BadNoCommunication`).
pub fn status_from_name(name: &str) -> Option<u32> {
    use std::str::FromStr;
    opcua::types::SubStatusCode::from_str(name)
        .ok()
        .map(|s| opcua::types::StatusCode::from_category(s).bits())
}

/// The model kind of an OPC UA built-in data type (namespace 0), if it is one we simulate.
pub fn kind_of(data_type: &NodeId) -> Option<Kind> {
    if data_type.namespace != 0 {
        return None;
    }
    let id = data_type.as_u32()?;
    let k = match id {
        x if x == DataTypeId::Boolean as u32 => Kind::Boolean,
        x if x == DataTypeId::SByte as u32 => Kind::SByte,
        x if x == DataTypeId::Byte as u32 => Kind::Byte,
        x if x == DataTypeId::Int16 as u32 => Kind::Int16,
        x if x == DataTypeId::UInt16 as u32 => Kind::UInt16,
        x if x == DataTypeId::Int32 as u32 => Kind::Int32,
        x if x == DataTypeId::UInt32 as u32 => Kind::UInt32,
        x if x == DataTypeId::Int64 as u32 => Kind::Int64,
        x if x == DataTypeId::UInt64 as u32 => Kind::UInt64,
        x if x == DataTypeId::Float as u32 => Kind::Float,
        x if x == DataTypeId::Double as u32 => Kind::Double,
        x if x == DataTypeId::String as u32 => Kind::String,
        x if x == DataTypeId::LocalizedText as u32 => Kind::LocalizedText,
        x if x == DataTypeId::DateTime as u32 || x == DataTypeId::UtcTime as u32 => Kind::DateTime,
        x if x == DataTypeId::ByteString as u32 => Kind::ByteString,
        _ => return None,
    };
    Some(k)
}

pub fn data_type_of(kind: Kind) -> DataTypeId {
    match kind {
        Kind::Boolean => DataTypeId::Boolean,
        Kind::SByte => DataTypeId::SByte,
        Kind::Byte => DataTypeId::Byte,
        Kind::Int16 => DataTypeId::Int16,
        Kind::UInt16 => DataTypeId::UInt16,
        Kind::Int32 => DataTypeId::Int32,
        Kind::UInt32 => DataTypeId::UInt32,
        Kind::Int64 => DataTypeId::Int64,
        Kind::UInt64 => DataTypeId::UInt64,
        Kind::Float => DataTypeId::Float,
        Kind::Double => DataTypeId::Double,
        Kind::String => DataTypeId::String,
        Kind::LocalizedText => DataTypeId::LocalizedText,
        Kind::DateTime => DataTypeId::DateTime,
        Kind::ByteString => DataTypeId::ByteString,
        Kind::Structure => DataTypeId::Structure,
    }
}

fn scalar_type_of(kind: Kind) -> VariantScalarTypeId {
    match kind {
        Kind::Boolean => VariantScalarTypeId::Boolean,
        Kind::SByte => VariantScalarTypeId::SByte,
        Kind::Byte => VariantScalarTypeId::Byte,
        Kind::Int16 => VariantScalarTypeId::Int16,
        Kind::UInt16 => VariantScalarTypeId::UInt16,
        Kind::Int32 => VariantScalarTypeId::Int32,
        Kind::UInt32 => VariantScalarTypeId::UInt32,
        Kind::Int64 => VariantScalarTypeId::Int64,
        Kind::UInt64 => VariantScalarTypeId::UInt64,
        Kind::Float => VariantScalarTypeId::Float,
        Kind::Double => VariantScalarTypeId::Double,
        Kind::String => VariantScalarTypeId::String,
        Kind::LocalizedText => VariantScalarTypeId::LocalizedText,
        Kind::DateTime => VariantScalarTypeId::DateTime,
        Kind::ByteString => VariantScalarTypeId::ByteString,
        Kind::Structure => VariantScalarTypeId::ExtensionObject,
    }
}

/// The model value as a variant of the variable's type.
pub fn to_variant(value: &Value, ty: VarType) -> Variant {
    if ty.array.is_some() {
        let items = match value {
            Value::Array(items) => items.iter().map(|v| scalar(v, ty.kind)).collect(),
            other => vec![scalar(other, ty.kind)],
        };
        return Variant::from((scalar_type_of(ty.kind), items));
    }
    scalar(value, ty.kind)
}

fn scalar(value: &Value, kind: Kind) -> Variant {
    let f = value.as_f64().unwrap_or(0.0);
    let i = match value {
        Value::Int(i) => i128::from(*i),
        Value::UInt(u) => i128::from(*u),
        _ => f as i128,
    };
    match kind {
        Kind::Boolean => Variant::Boolean(f != 0.0),
        Kind::SByte => Variant::SByte(i as i8),
        Kind::Byte => Variant::Byte(i as u8),
        Kind::Int16 => Variant::Int16(i as i16),
        Kind::UInt16 => Variant::UInt16(i as u16),
        Kind::Int32 => Variant::Int32(i as i32),
        Kind::UInt32 => Variant::UInt32(i as u32),
        Kind::Int64 => Variant::Int64(i as i64),
        Kind::UInt64 => Variant::UInt64(i as u64),
        Kind::Float => Variant::Float(f as f32),
        Kind::Double => Variant::Double(f),
        Kind::String => Variant::String(UAString::from(text(value))),
        Kind::LocalizedText => {
            Variant::LocalizedText(Box::new(LocalizedText::new("en", &text(value))))
        }
        Kind::DateTime => match value {
            Value::Time(t) => Variant::DateTime(Box::new(DateTime::from(*t))),
            _ => Variant::DateTime(Box::new(DateTime::null())),
        },
        Kind::ByteString => match value {
            Value::Bytes(b) => Variant::ByteString(ByteString::from(b.clone())),
            _ => Variant::ByteString(ByteString::null()),
        },
        // Structures need the server's data type tree: see `crate::structs`.
        Kind::Structure => Variant::Empty,
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::Text(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        Value::Float(f) => f.to_string(),
        other => format!("{other:?}"),
    }
}

/// A written variant as a model value, if it is exactly of the variable's type.
pub fn from_variant(v: &Variant, ty: VarType) -> Result<Value, Refusal> {
    if ty.array.is_some() {
        let Variant::Array(a) = v else {
            return Err(Refusal::TypeMismatch);
        };
        return a
            .values
            .iter()
            .map(|x| scalar_from(x, ty.kind))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array);
    }
    scalar_from(v, ty.kind)
}

fn scalar_from(v: &Variant, kind: Kind) -> Result<Value, Refusal> {
    Ok(match (v, kind) {
        (Variant::Boolean(b), Kind::Boolean) => Value::Bool(*b),
        (Variant::SByte(x), Kind::SByte) => Value::Int((*x).into()),
        (Variant::Byte(x), Kind::Byte) => Value::Int((*x).into()),
        (Variant::Int16(x), Kind::Int16) => Value::Int((*x).into()),
        (Variant::UInt16(x), Kind::UInt16) => Value::Int((*x).into()),
        (Variant::Int32(x), Kind::Int32) => Value::Int((*x).into()),
        (Variant::UInt32(x), Kind::UInt32) => Value::Int((*x).into()),
        (Variant::Int64(x), Kind::Int64) => Value::Int(*x),
        (Variant::UInt64(x), Kind::UInt64) => Value::UInt(*x),
        (Variant::Float(x), Kind::Float) => Value::Float((*x).into()),
        (Variant::Double(x), Kind::Double) => Value::Float(*x),
        (Variant::String(s), Kind::String) => Value::Text(s.as_ref().to_owned()),
        (Variant::LocalizedText(t), Kind::LocalizedText) => Value::Text(t.text.as_ref().to_owned()),
        (Variant::DateTime(t), Kind::DateTime) => Value::Time(t.as_chrono()),
        (Variant::ByteString(b), Kind::ByteString) => {
            Value::Bytes(b.value.clone().unwrap_or_default())
        }
        _ => return Err(Refusal::TypeMismatch),
    })
}

/// A value read from the address space (a nodeset's initial value) as a model value.
pub fn initial_value(v: Option<&Variant>, ty: VarType) -> Value {
    match v.map(|v| from_variant(v, ty)) {
        Some(Ok(value)) => value,
        _ => match ty.kind {
            Kind::Boolean => Value::Bool(false),
            Kind::UInt64 => Value::UInt(0),
            k if k.is_integer() => Value::Int(0),
            Kind::Float | Kind::Double => Value::Float(0.0),
            Kind::DateTime => Value::Time(Utc::now()),
            Kind::ByteString => Value::Bytes(Vec::new()),
            Kind::Structure => Value::Struct(Default::default()),
            _ => Value::Text(String::new()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_kind() {
        let cases = [
            (Kind::Boolean, Value::Bool(true)),
            (Kind::Int16, Value::Int(-300)),
            (Kind::UInt32, Value::Int(4_000_000_000)),
            (Kind::Int64, Value::Int(-(1 << 40))),
            (Kind::UInt64, Value::UInt(u64::MAX)),
            (Kind::Float, Value::Float(1.5)),
            (Kind::Double, Value::Float(f64::INFINITY)),
            (Kind::String, Value::Text("x".into())),
            (Kind::LocalizedText, Value::Text("y".into())),
            (Kind::ByteString, Value::Bytes(vec![0, 255])),
        ];
        for (kind, value) in cases {
            let ty = VarType { kind, array: None };
            assert_eq!(
                from_variant(&to_variant(&value, ty), ty),
                Ok(value),
                "{kind:?}"
            );
        }
        let ty = VarType {
            kind: Kind::Int32,
            array: Some(2),
        };
        let v = Value::Array(vec![Value::Int(1), Value::Int(2)]);
        assert_eq!(from_variant(&to_variant(&v, ty), ty), Ok(v));
    }

    #[test]
    fn refuses_a_near_miss_type() {
        let ty = VarType {
            kind: Kind::Double,
            array: None,
        };
        assert_eq!(
            from_variant(&Variant::Int32(3), ty),
            Err(Refusal::TypeMismatch)
        );
        assert_eq!(
            from_variant(&Variant::Float(3.0), ty),
            Err(Refusal::TypeMismatch)
        );
    }
}
