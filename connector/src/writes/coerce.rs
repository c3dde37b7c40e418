//! JSON value to the OPC UA type of a `[[write]]` mapping, then its `min`/`max`.

use base64::Engine as _;
use opcua::types::{ByteString, LocalizedText, UAString, Variant};
use serde_json::Value;

use super::Refusal;
use crate::config::types::{WriteMapping, WriteType};

/// The JSON kind of a value, for refusal reasons.
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Converts `value` to the mapping's type and checks the mapping's `min`/`max`.
///
/// Boolean takes only `true`/`false`; integer types take JSON integers within the type's
/// range, or numbers with a zero fraction; Float/Double take numbers (finite only, and within
/// `f32` range for Float); String and LocalizedText take strings, ByteString a base64
/// string. Nothing else is parsed out of strings.
pub fn coerce(value: &Value, mapping: &WriteMapping) -> Result<Variant, Refusal> {
    coerce_within(value, mapping.write_type, bounds(mapping))
}

/// Converts `value` to `ty` with the type's own range as the only limit (method arguments).
pub fn coerce_type(value: &Value, ty: WriteType) -> Result<Variant, Refusal> {
    let range = ty.numeric_range().unwrap_or((f64::MIN, f64::MAX));
    coerce_within(value, ty, range)
}

fn coerce_within(value: &Value, ty: WriteType, (lo, hi): (f64, f64)) -> Result<Variant, Refusal> {
    let wrong = || Refusal::WrongType {
        expected: ty.name(),
        got: json_kind(value),
    };
    match ty {
        WriteType::Boolean => match value {
            Value::Bool(b) => Ok(Variant::Boolean(*b)),
            _ => Err(wrong()),
        },
        WriteType::String => match value {
            Value::String(s) => Ok(Variant::String(UAString::from(s.as_str()))),
            _ => Err(wrong()),
        },
        WriteType::ByteString => match value {
            Value::String(s) => base64::engine::general_purpose::STANDARD
                .decode(s)
                .map(|b| Variant::ByteString(ByteString::from(b)))
                .map_err(|_| Refusal::WrongType {
                    expected: "ByteString (base64)",
                    got: "string that is not base64",
                }),
            _ => Err(wrong()),
        },
        WriteType::LocalizedText => match value {
            Value::String(s) => Ok(Variant::LocalizedText(Box::new(LocalizedText::new(
                "",
                s.as_str(),
            )))),
            _ => Err(wrong()),
        },
        WriteType::Float | WriteType::Double => {
            let Value::Number(n) = value else {
                return Err(wrong());
            };
            let f = n.as_f64().ok_or_else(wrong)?;
            if !f.is_finite() {
                return Err(wrong());
            }
            let out_of_range = || Refusal::OutOfRange {
                value: n.to_string(),
                min: lo,
                max: hi,
            };
            if ty == WriteType::Float {
                let g = f as f32;
                if !g.is_finite() {
                    return Err(out_of_range());
                }
                let back = f64::from(g);
                if back < lo || back > hi {
                    return Err(out_of_range());
                }
                Ok(Variant::Float(g))
            } else {
                if f < lo || f > hi {
                    return Err(out_of_range());
                }
                // -0.0 is written as 0.0: PLCs and readers treat them alike.
                Ok(Variant::Double(if f == 0.0 { 0.0 } else { f }))
            }
        }
        _ => {
            let Value::Number(n) = value else {
                return Err(wrong());
            };
            let out_of_range = || Refusal::OutOfRange {
                value: n.to_string(),
                min: lo,
                max: hi,
            };
            let v: i128 = if let Some(i) = n.as_i64() {
                i128::from(i)
            } else if let Some(u) = n.as_u64() {
                i128::from(u)
            } else {
                let f = n.as_f64().ok_or_else(wrong)?;
                if !f.is_finite() || f.fract() != 0.0 {
                    return Err(Refusal::WrongType {
                        expected: ty.name(),
                        got: "fractional number",
                    });
                }
                // Anything beyond ±2^100 is out of every integer type's range; the cast of a
                // smaller integral f64 is exact.
                if f.abs() > 1e30 {
                    return Err(out_of_range());
                }
                f as i128
            };
            // Exact integer comparison: v >= ceil(lo) and v <= floor(hi); `as` saturates.
            if v < lo.ceil() as i128 || v > hi.floor() as i128 {
                return Err(out_of_range());
            }
            to_int_variant(ty, v).ok_or_else(out_of_range)
        }
    }
}

/// The effective bounds: the mapping's `min`/`max` within the type's range.
fn bounds(mapping: &WriteMapping) -> (f64, f64) {
    let (tlo, thi) = mapping
        .write_type
        .numeric_range()
        .unwrap_or((f64::MIN, f64::MAX));
    let lo = mapping
        .min
        .filter(|m| !m.is_nan())
        .map_or(tlo, |m| m.max(tlo));
    let hi = mapping
        .max
        .filter(|m| !m.is_nan())
        .map_or(thi, |m| m.min(thi));
    (lo, hi)
}

fn to_int_variant(ty: WriteType, v: i128) -> Option<Variant> {
    Some(match ty {
        WriteType::SByte => Variant::SByte(i8::try_from(v).ok()?),
        WriteType::Byte => Variant::Byte(u8::try_from(v).ok()?),
        WriteType::Int16 => Variant::Int16(i16::try_from(v).ok()?),
        WriteType::UInt16 => Variant::UInt16(u16::try_from(v).ok()?),
        WriteType::Int32 => Variant::Int32(i32::try_from(v).ok()?),
        WriteType::UInt32 => Variant::UInt32(u32::try_from(v).ok()?),
        WriteType::Int64 => Variant::Int64(i64::try_from(v).ok()?),
        WriteType::UInt64 => Variant::UInt64(u64::try_from(v).ok()?),
        WriteType::Boolean
        | WriteType::String
        | WriteType::ByteString
        | WriteType::LocalizedText
        | WriteType::Float
        | WriteType::Double => return None,
    })
}

#[cfg(test)]
pub(crate) fn mapping(
    property: &str,
    ty: WriteType,
    min: Option<f64>,
    max: Option<f64>,
) -> WriteMapping {
    WriteMapping {
        property: property.to_string(),
        plc: "plc1".to_string(),
        node: "ns=2;s=Setpoint".parse().unwrap(),
        write_type: ty,
        min,
        max,
        readback: false,
        max_rate: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn c(v: Value, ty: WriteType) -> Result<Variant, Refusal> {
        coerce(&v, &mapping("p", ty, None, None))
    }
    fn parsed(text: &str, ty: WriteType) -> Result<Variant, Refusal> {
        coerce(
            &serde_json::from_str(text).unwrap(),
            &mapping("p", ty, None, None),
        )
    }
    fn is_wrong(r: Result<Variant, Refusal>) -> bool {
        matches!(r, Err(Refusal::WrongType { .. }))
    }
    fn is_range(r: Result<Variant, Refusal>) -> bool {
        matches!(r, Err(Refusal::OutOfRange { .. }))
    }

    #[test]
    fn boolean_only_from_true_false() {
        assert_eq!(
            c(json!(true), WriteType::Boolean),
            Ok(Variant::Boolean(true))
        );
        assert_eq!(
            c(json!(false), WriteType::Boolean),
            Ok(Variant::Boolean(false))
        );
        for v in [
            json!(1),
            json!(0),
            json!("true"),
            json!(null),
            json!([true]),
            json!({}),
        ] {
            assert!(is_wrong(c(v, WriteType::Boolean)));
        }
    }

    #[test]
    fn string_only_from_strings() {
        assert_eq!(
            c(json!("héllo"), WriteType::String),
            Ok(Variant::String("héllo".into()))
        );
        assert_eq!(
            c(json!(""), WriteType::String),
            Ok(Variant::String("".into()))
        );
        for v in [
            json!(1),
            json!(true),
            json!(null),
            json!(["a"]),
            json!({"a": 1}),
        ] {
            assert!(is_wrong(c(v, WriteType::String)));
        }
    }

    #[test]
    fn byte_strings_from_base64_and_localized_text_from_strings() {
        assert_eq!(
            c(json!("AAEC/w=="), WriteType::ByteString),
            Ok(Variant::ByteString(ByteString::from(vec![0u8, 1, 2, 255])))
        );
        assert!(is_wrong(c(json!("not base64!"), WriteType::ByteString)));
        assert!(is_wrong(c(json!([0, 1]), WriteType::ByteString)));
        assert_eq!(
            c(json!("checked, valve ok"), WriteType::LocalizedText),
            Ok(Variant::LocalizedText(Box::new(LocalizedText::new(
                "",
                "checked, valve ok"
            ))))
        );
        assert!(is_wrong(c(json!(1), WriteType::LocalizedText)));
    }

    #[test]
    fn small_integers_within_type_range() {
        use WriteType::*;
        assert_eq!(c(json!(-128), SByte), Ok(Variant::SByte(-128)));
        assert_eq!(c(json!(127), SByte), Ok(Variant::SByte(127)));
        assert!(is_range(c(json!(128), SByte)));
        assert!(is_range(c(json!(-129), SByte)));
        assert_eq!(c(json!(255), Byte), Ok(Variant::Byte(255)));
        assert!(is_range(c(json!(256), Byte)));
        assert!(is_range(c(json!(-1), Byte)));
        assert_eq!(c(json!(-32768), Int16), Ok(Variant::Int16(i16::MIN)));
        assert!(is_range(c(json!(32768), Int16)));
        assert_eq!(c(json!(65535), UInt16), Ok(Variant::UInt16(u16::MAX)));
        assert!(is_range(c(json!(65536), UInt16)));
        assert_eq!(c(json!(i32::MIN), Int32), Ok(Variant::Int32(i32::MIN)));
        assert_eq!(c(json!(i32::MAX), Int32), Ok(Variant::Int32(i32::MAX)));
        assert!(is_range(c(json!(i64::from(i32::MAX) + 1), Int32)));
        assert_eq!(c(json!(u32::MAX), UInt32), Ok(Variant::UInt32(u32::MAX)));
        assert!(is_range(c(json!(u64::from(u32::MAX) + 1), UInt32)));
        assert!(is_range(c(json!(-1), UInt32)));
    }

    #[test]
    fn sixty_four_bit_extremes() {
        use WriteType::*;
        assert_eq!(c(json!(i64::MAX), Int64), Ok(Variant::Int64(i64::MAX)));
        assert_eq!(c(json!(i64::MIN), Int64), Ok(Variant::Int64(i64::MIN)));
        assert!(is_range(c(json!(u64::MAX), Int64)));
        assert!(is_range(c(json!(i64::MAX as u64 + 1), Int64)));
        assert_eq!(c(json!(u64::MAX), UInt64), Ok(Variant::UInt64(u64::MAX)));
        assert_eq!(c(json!(0), UInt64), Ok(Variant::UInt64(0)));
        assert!(is_range(c(json!(-1), UInt64)));
        assert!(is_range(c(json!(i64::MIN), UInt64)));
        // Beyond u64 serde_json gives an f64: integral but out of range.
        assert!(is_range(parsed("18446744073709551616", UInt64)));
        assert!(is_range(parsed("1e300", Int64)));
        assert!(is_range(parsed("-1e300", Int64)));
        // 2^62 as a float is exactly representable and fits.
        assert_eq!(
            parsed("4.611686018427388e18", Int64),
            Ok(Variant::Int64(1 << 62))
        );
    }

    #[test]
    fn integers_from_zero_fraction_floats_only() {
        use WriteType::*;
        assert_eq!(parsed("5.0", Int32), Ok(Variant::Int32(5)));
        assert_eq!(parsed("1e3", UInt16), Ok(Variant::UInt16(1000)));
        assert_eq!(parsed("-0", Int32), Ok(Variant::Int32(0)));
        assert_eq!(parsed("-0.0", UInt32), Ok(Variant::UInt32(0)));
        assert_eq!(parsed("-0", Byte), Ok(Variant::Byte(0)));
        assert!(is_wrong(parsed("5.5", Int32)));
        assert!(is_wrong(parsed("0.1", Byte)));
        assert!(is_wrong(parsed("1e-300", Int64)));
        assert!(is_wrong(c(json!("1"), Int32)));
        assert!(is_wrong(c(json!(true), Int32)));
        assert!(is_wrong(c(json!(null), Int32)));
        assert!(is_wrong(c(json!([1]), Int32)));
    }

    #[test]
    fn float_and_double() {
        use WriteType::*;
        assert_eq!(c(json!(1.5), Float), Ok(Variant::Float(1.5)));
        assert_eq!(c(json!(3), Float), Ok(Variant::Float(3.0)));
        assert_eq!(
            c(json!(u64::MAX), Double),
            Ok(Variant::Double(u64::MAX as f64))
        );
        assert!(is_range(parsed("1e300", Float)));
        assert!(is_range(parsed("-1e300", Float)));
        assert_eq!(parsed("1e300", Double), Ok(Variant::Double(1e300)));
        assert_eq!(parsed("1e-300", Float), Ok(Variant::Float(0.0)));
        assert_eq!(c(json!(f64::MAX), Double), Ok(Variant::Double(f64::MAX)));
        assert_eq!(c(json!(f32::MAX), Float), Ok(Variant::Float(f32::MAX)));
        match parsed("-0", Double) {
            Ok(Variant::Double(d)) => assert!(d == 0.0 && d.is_sign_positive()),
            other => panic!("{other:?}"),
        }
        // JSON has no NaN/Inf: serde_json maps them to null, and strings are not parsed.
        assert!(is_wrong(c(json!(f64::NAN), Double)));
        assert!(is_wrong(c(json!(f64::INFINITY), Float)));
        assert!(is_wrong(c(json!("NaN"), Double)));
        assert!(is_wrong(c(json!("1.5"), Float)));
        assert!(is_wrong(c(json!(false), Double)));
    }

    #[test]
    fn mapping_min_max() {
        let m = mapping("speed", WriteType::Int32, Some(0.0), Some(100.0));
        assert_eq!(coerce(&json!(0), &m), Ok(Variant::Int32(0)));
        assert_eq!(coerce(&json!(100), &m), Ok(Variant::Int32(100)));
        assert_eq!(
            coerce(&json!(101), &m),
            Err(Refusal::OutOfRange {
                value: "101".into(),
                min: 0.0,
                max: 100.0
            })
        );
        assert!(is_range(coerce(&json!(-1), &m)));
        // Fractional bounds on an integer type: 1.5..=2.5 admits only 2.
        let m = mapping("x", WriteType::Int64, Some(1.5), Some(2.5));
        assert!(is_range(coerce(&json!(1), &m)));
        assert_eq!(coerce(&json!(2), &m), Ok(Variant::Int64(2)));
        assert!(is_range(coerce(&json!(3), &m)));
        let m = mapping("t", WriteType::Double, Some(-10.5), Some(10.5));
        assert_eq!(coerce(&json!(10.5), &m), Ok(Variant::Double(10.5)));
        assert!(is_range(coerce(&json!(10.500001), &m)));
        assert!(is_range(coerce(&json!(-11), &m)));
        let m = mapping("f", WriteType::Float, None, Some(1.0));
        assert!(is_range(coerce(&json!(1.0001), &m)));
        assert_eq!(coerce(&json!(1.0), &m), Ok(Variant::Float(1.0)));
        // Bounds wider than the type are clipped to it.
        let m = mapping("b", WriteType::Byte, Some(-1e9), Some(1e9));
        assert!(is_range(coerce(&json!(256), &m)));
        assert_eq!(coerce(&json!(255), &m), Ok(Variant::Byte(255)));
        // Max near u64::MAX (an f64 of 2^64) does not admit values beyond the type.
        let m = mapping("u", WriteType::UInt64, None, Some(u64::MAX as f64));
        assert_eq!(coerce(&json!(u64::MAX), &m), Ok(Variant::UInt64(u64::MAX)));
    }

    #[test]
    fn every_type_refuses_null_and_objects() {
        for ty in WriteType::ALL {
            assert!(is_wrong(c(json!(null), ty)), "{ty:?}");
            assert!(is_wrong(c(json!({"v": 1}), ty)), "{ty:?}");
        }
    }
}
