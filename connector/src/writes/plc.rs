//! The OPC UA side of cloud-to-PLC writes and method calls: checks of a mapped node at
//! connect (DataType, AccessLevel), a write with the old value and a readback, and a method
//! call with its arguments converted by the method's InputArguments.

use std::time::Duration;

use opcua::client::Session;
use opcua::types::{
    AccessLevelType, Argument, AttributeId, BrowseDescription, BrowseDirection, BrowseResultMask,
    CallMethodRequest, DataValue, NodeId, ReadValueId, ReferenceTypeId, StatusCode,
    TimestampsToReturn, Variant, WriteValue,
};
use serde_json::Value;

use super::coerce::coerce_type;
use super::Refusal;
use crate::config::types::{WriteMapping, WriteType};
use crate::opcua::link::Link;

/// What the connect-time check found out about a mapped node.
#[derive(Debug, Clone, PartialEq)]
pub enum Fitness {
    Writable,
    /// AccessLevel or UserAccessLevel lacks CurrentWrite.
    NotWritable,
    /// The node's DataType is another built-in type than the mapping's.
    WrongType {
        node_type: &'static str,
    },
    /// The node does not exist or cannot be resolved (a status name).
    Unknown(StatusCode),
}

/// Why a write or call did not succeed at the PLC.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The PLC says the node is not writable (BadNotWritable, BadUserAccessDenied, ...).
    NotWritable(StatusCode),
    /// The PLC refused (any other bad status): final.
    Refused(StatusCode),
    /// The PLC could not be reached (no session, connection lost, timeout): worth a retry.
    Unreachable(StatusCode),
}

impl Failure {
    pub fn status(&self) -> StatusCode {
        match self {
            Failure::NotWritable(s) | Failure::Refused(s) | Failure::Unreachable(s) => *s,
        }
    }

    fn of(status: StatusCode) -> Failure {
        if unreachable(status) {
            Failure::Unreachable(status)
        } else if matches!(
            status,
            StatusCode::BadNotWritable
                | StatusCode::BadUserAccessDenied
                | StatusCode::BadWriteNotSupported
        ) {
            Failure::NotWritable(status)
        } else {
            Failure::Refused(status)
        }
    }
}

/// Statuses that mean the request did not get through (or its answer did not come back).
pub fn unreachable(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BadNotConnected
            | StatusCode::BadConnectionClosed
            | StatusCode::BadSecureChannelClosed
            | StatusCode::BadSessionClosed
            | StatusCode::BadSessionIdInvalid
            | StatusCode::BadSessionNotActivated
            | StatusCode::BadServerNotConnected
            | StatusCode::BadCommunicationError
            | StatusCode::BadNoCommunication
            | StatusCode::BadTimeout
            | StatusCode::BadRequestTimeout
            | StatusCode::BadServerHalted
            | StatusCode::BadTcpInternalError
            | StatusCode::BadDisconnect
            | StatusCode::BadShutdown
    )
}

/// The name of a status code (`BadNotWritable`), without its description.
pub fn status_name(status: StatusCode) -> String {
    status.sub_code().name().to_owned()
}

/// OPC UA built-in type ids (Part 6) of the types a mapping can have.
fn builtin_id(t: WriteType) -> u32 {
    match t {
        WriteType::Boolean => 1,
        WriteType::SByte => 2,
        WriteType::Byte => 3,
        WriteType::Int16 => 4,
        WriteType::UInt16 => 5,
        WriteType::Int32 => 6,
        WriteType::UInt32 => 7,
        WriteType::Int64 => 8,
        WriteType::UInt64 => 9,
        WriteType::Float => 10,
        WriteType::Double => 11,
        WriteType::String => 12,
        WriteType::ByteString => 15,
        WriteType::LocalizedText => 21,
    }
}

/// The mapping type of a built-in DataType node id (`i=1` .. `i=12`, `i=15`, `i=21` in
/// namespace 0).
pub fn write_type_of(data_type: &NodeId) -> Option<WriteType> {
    if data_type.namespace != 0 {
        return None;
    }
    let opcua::types::Identifier::Numeric(n) = data_type.identifier else {
        return None;
    };
    WriteType::ALL.into_iter().find(|t| builtin_id(*t) == n)
}

fn read_id(node: &NodeId, attribute: AttributeId) -> ReadValueId {
    ReadValueId {
        node_id: node.clone(),
        attribute_id: attribute as u32,
        ..Default::default()
    }
}

/// Checks mapped nodes: DataType, AccessLevel and UserAccessLevel in one Read. A node whose
/// DataType is abstract, an enumeration or a structure passes the type check (the PLC has
/// the last word when it is written).
pub async fn check(link: &Link, mappings: &[&WriteMapping]) -> Result<Vec<Fitness>, StatusCode> {
    let mut out = vec![Fitness::Writable; mappings.len()];
    let mut reads = Vec::new();
    let mut index = Vec::new();
    for (i, m) in mappings.iter().enumerate() {
        match link.ns.resolve(&m.node) {
            Ok(id) => {
                for a in [
                    AttributeId::DataType,
                    AttributeId::AccessLevel,
                    AttributeId::UserAccessLevel,
                ] {
                    reads.push(read_id(&id, a));
                }
                index.push(i);
            }
            Err(_) => out[i] = Fitness::Unknown(StatusCode::BadNodeIdUnknown),
        }
    }
    if reads.is_empty() {
        return Ok(out);
    }
    let values = link
        .session
        .read(&reads, TimestampsToReturn::Neither, 0.0)
        .await
        .map_err(|e| e.status())?;
    for (k, &i) in index.iter().enumerate() {
        let dv = |j: usize| values.get(3 * k + j);
        let bad = (0..3)
            .filter_map(dv)
            .filter_map(|d| d.status)
            .find(|s| s.is_bad());
        if let Some(s) = bad {
            out[i] = Fitness::Unknown(s);
            continue;
        }
        let level = |d: Option<&DataValue>| match d.and_then(|d| d.value.as_ref()) {
            Some(Variant::Byte(b)) => Some(AccessLevelType::from_bits_truncate(*b)),
            _ => None,
        };
        let writable = [level(dv(1)), level(dv(2))]
            .into_iter()
            .all(|l| l.is_none_or(|l| l.contains(AccessLevelType::CurrentWrite)));
        if !writable {
            out[i] = Fitness::NotWritable;
            continue;
        }
        if let Some(Variant::NodeId(dt)) = dv(0).and_then(|d| d.value.as_ref()) {
            if let Some(node_type) = write_type_of(dt) {
                if node_type != mappings[i].write_type {
                    out[i] = Fitness::WrongType {
                        node_type: node_type.name(),
                    };
                }
            }
        }
    }
    Ok(out)
}

/// What a write did: the value before and (with readback) after.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub old: Option<Variant>,
    pub now: Option<Variant>,
    /// How long the PLC part took (old value, write, readback).
    pub took: Duration,
}

async fn read_value(session: &Session, node: &NodeId) -> Result<Option<Variant>, Failure> {
    let values = session
        .read(
            &[read_id(node, AttributeId::Value)],
            TimestampsToReturn::Neither,
            0.0,
        )
        .await
        .map_err(|e| Failure::of(e.status()))?;
    let dv = values.into_iter().next();
    match dv.as_ref().and_then(|d| d.status) {
        Some(s) if s.is_bad() => Err(Failure::of(s)),
        _ => Ok(dv.and_then(|d| d.value)),
    }
}

/// Reads the old value, writes `value`, reads it back (with `readback`), all within `timeout`.
pub async fn write(
    link: &Link,
    node: &NodeId,
    value: Variant,
    (read_old, readback): (bool, bool),
    timeout: Duration,
) -> Result<Written, Failure> {
    let session = &link.session;
    let started = std::time::Instant::now();
    let work = async {
        // The old value is for the audit record only; a node that cannot be read can still be
        // written.
        let old = if read_old {
            read_value(session, node).await.ok().flatten()
        } else {
            None
        };
        let results = session
            .write(&[WriteValue {
                node_id: node.clone(),
                attribute_id: AttributeId::Value as u32,
                index_range: Default::default(),
                value: DataValue::value_only(value),
            }])
            .await
            .map_err(|e| Failure::of(e.status()))?;
        let status = results
            .into_iter()
            .next()
            .unwrap_or(StatusCode::BadUnexpectedError);
        if status.is_bad() {
            return Err(Failure::of(status));
        }
        let now = if readback {
            read_value(session, node).await?
        } else {
            None
        };
        Ok(Written {
            old,
            now,
            took: started.elapsed(),
        })
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(Failure::Unreachable(StatusCode::BadTimeout)))
}

/// A method's input and output arguments (from its InputArguments / OutputArguments
/// properties; absent properties mean none).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Signature {
    pub inputs: Vec<Argument>,
    pub outputs: Vec<Argument>,
}

fn arguments(v: Option<&Variant>) -> Vec<Argument> {
    match v {
        Some(Variant::Array(a)) => a
            .values
            .iter()
            .filter_map(|x| match x {
                Variant::ExtensionObject(eo) => eo.inner_as::<Argument>().cloned(),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Reads a method's signature.
pub async fn signature(link: &Link, method: &NodeId) -> Result<Signature, StatusCode> {
    let browse = BrowseDescription {
        node_id: method.clone(),
        browse_direction: BrowseDirection::Forward,
        reference_type_id: ReferenceTypeId::HasProperty.into(),
        include_subtypes: true,
        node_class_mask: 0,
        result_mask: BrowseResultMask::All as u32,
    };
    let results = link
        .session
        .browse(&[browse], 0, None)
        .await
        .map_err(|e| e.status())?;
    let result = results
        .into_iter()
        .next()
        .ok_or(StatusCode::BadUnexpectedError)?;
    if result.status_code.is_bad() {
        return Err(result.status_code);
    }
    let mut ids: [Option<NodeId>; 2] = [None, None];
    for r in result.references.unwrap_or_default() {
        match r.browse_name.name.as_ref() {
            "InputArguments" => ids[0] = Some(r.node_id.node_id),
            "OutputArguments" => ids[1] = Some(r.node_id.node_id),
            _ => {}
        }
    }
    let mut sig = Signature::default();
    for (k, id) in ids.iter().enumerate() {
        let Some(id) = id else { continue };
        let value = read_value(&link.session, id)
            .await
            .map_err(|f| f.status())?;
        let args = arguments(value.as_ref());
        if k == 0 {
            sig.inputs = args;
        } else {
            sig.outputs = args;
        }
    }
    Ok(sig)
}

/// Converts a direct method's JSON payload to the input arguments: an object by argument
/// name, an array by position, a bare value for a single argument, or null / nothing for
/// none. Scalars of the built-in types a `[[write]]` can have.
pub fn call_arguments(payload: &Value, inputs: &[Argument]) -> Result<Vec<Variant>, Refusal> {
    let malformed = |m: String| Refusal::Malformed(m);
    let values: Vec<&Value> = match payload {
        Value::Null if inputs.is_empty() => Vec::new(),
        Value::Object(o) if o.is_empty() && inputs.is_empty() => Vec::new(),
        Value::Object(o) => {
            for key in o.keys() {
                if !inputs.iter().any(|a| a.name.as_ref() == key) {
                    let names: Vec<&str> = inputs.iter().map(|a| a.name.as_ref()).collect();
                    return Err(malformed(format!(
                        "unknown argument {key:?} (the method takes: {})",
                        if names.is_empty() {
                            "none".to_owned()
                        } else {
                            names.join(", ")
                        }
                    )));
                }
            }
            inputs
                .iter()
                .map(|a| {
                    o.get(a.name.as_ref())
                        .ok_or_else(|| malformed(format!("missing argument {:?}", a.name.as_ref())))
                })
                .collect::<Result<_, _>>()?
        }
        Value::Array(items) => {
            if items.len() != inputs.len() {
                return Err(malformed(format!(
                    "{} arguments given, the method takes {}",
                    items.len(),
                    inputs.len()
                )));
            }
            items.iter().collect()
        }
        other if inputs.len() == 1 => vec![other],
        _ => {
            return Err(malformed(format!(
                "the method takes {} arguments: give an object by name or an array",
                inputs.len()
            )))
        }
    };
    inputs
        .iter()
        .zip(values)
        .map(|(arg, v)| {
            if arg.value_rank >= 0 {
                return Err(malformed(format!(
                    "argument {:?} is an array, which is not supported",
                    arg.name.as_ref()
                )));
            }
            let ty = write_type_of(&arg.data_type).ok_or_else(|| {
                malformed(format!(
                    "argument {:?} has DataType {}, which is not supported",
                    arg.name.as_ref(),
                    arg.data_type
                ))
            })?;
            coerce_type(v, ty).map_err(|r| match r {
                Refusal::WrongType { expected, got } => malformed(format!(
                    "argument {:?}: expected {expected}, got {got}",
                    arg.name.as_ref()
                )),
                Refusal::OutOfRange { value, .. } => malformed(format!(
                    "argument {:?}: {value} is out of the range of {}",
                    arg.name.as_ref(),
                    ty.name()
                )),
                other => other,
            })
        })
        .collect()
}

/// What a method call ended with.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// The arguments do not fit the method (ours or the PLC's verdict): 400.
    BadArguments(String),
    /// Did not answer within the mapping's timeout: 504.
    Timeout,
    /// The PLC answered with a bad status, or could not be reached: 500.
    Failed(StatusCode),
}

/// Calls `method` on `object` with `payload` converted by `sig`; the outputs as JSON by
/// output argument name (`out0`, `out1`, ... when unnamed).
pub async fn call(
    link: &Link,
    object: &NodeId,
    method: &NodeId,
    sig: &Signature,
    payload: &Value,
    timeout: Duration,
) -> Result<Value, CallError> {
    let args = call_arguments(payload, &sig.inputs).map_err(|r| {
        CallError::BadArguments(match r {
            Refusal::Malformed(m) => m,
            other => other.to_string(),
        })
    })?;
    let request = CallMethodRequest {
        object_id: object.clone(),
        method_id: method.clone(),
        input_arguments: Some(args),
    };
    let result = match tokio::time::timeout(timeout, link.session.call_one(request)).await {
        Err(_) => return Err(CallError::Timeout),
        Ok(Err(e)) if e.status() == StatusCode::BadTimeout => return Err(CallError::Timeout),
        Ok(Err(e)) => return Err(CallError::Failed(e.status())),
        Ok(Ok(r)) => r,
    };
    let status = result.status_code;
    if status.is_bad() {
        let arg_status: Vec<String> = result
            .input_argument_results
            .unwrap_or_default()
            .iter()
            .zip(&sig.inputs)
            .filter(|(s, _)| s.is_bad())
            .map(|(s, a)| format!("{}: {}", a.name.as_ref(), status_name(*s)))
            .collect();
        return match status {
            StatusCode::BadInvalidArgument
            | StatusCode::BadTypeMismatch
            | StatusCode::BadArgumentsMissing
            | StatusCode::BadTooManyArguments
            | StatusCode::BadOutOfRange => Err(CallError::BadArguments(if arg_status.is_empty() {
                status_name(status)
            } else {
                format!("{} ({})", status_name(status), arg_status.join(", "))
            })),
            StatusCode::BadTimeout | StatusCode::BadRequestTimeout => Err(CallError::Timeout),
            s => Err(CallError::Failed(s)),
        };
    }
    let mut out = serde_json::Map::new();
    for (i, v) in result
        .output_arguments
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let name = sig
            .outputs
            .get(i)
            .map(|a| a.name.as_ref().to_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| format!("out{i}"));
        out.insert(name, variant_json(v));
    }
    Ok(Value::Object(out))
}

/// A variant as plain JSON for acknowledgements and method outputs: numbers as numbers
/// (64-bit integers exactly), non-finite floats as "NaN" / "Infinity" / "-Infinity",
/// DateTimes as RFC 3339, arrays element by element, anything else as the body of its OPC UA
/// JSON encoding.
pub fn variant_json(v: &Variant) -> Value {
    let float = |f: f64| {
        serde_json::Number::from_f64(f).map_or_else(
            || {
                Value::from(if f.is_nan() {
                    "NaN"
                } else if f > 0.0 {
                    "Infinity"
                } else {
                    "-Infinity"
                })
            },
            Value::Number,
        )
    };
    match v {
        Variant::Empty => Value::Null,
        Variant::Boolean(b) => Value::from(*b),
        Variant::SByte(x) => Value::from(*x),
        Variant::Byte(x) => Value::from(*x),
        Variant::Int16(x) => Value::from(*x),
        Variant::UInt16(x) => Value::from(*x),
        Variant::Int32(x) => Value::from(*x),
        Variant::UInt32(x) => Value::from(*x),
        Variant::Int64(x) => Value::from(*x),
        Variant::UInt64(x) => Value::from(*x),
        Variant::Float(x) => float(f64::from(*x)),
        Variant::Double(x) => float(*x),
        Variant::String(s) => Value::from(s.as_ref()),
        Variant::DateTime(t) => Value::from(t.as_chrono().to_rfc3339()),
        Variant::StatusCode(s) => Value::from(status_name(*s)),
        Variant::Array(a) => Value::Array(a.values.iter().map(variant_json).collect()),
        // OPC UA JSON of a variant is {"Type": n, "Body": ...}: the body is the value.
        other => {
            let text = crate::opcua::convert::json(other);
            match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(mut o)) if o.contains_key("Body") => {
                    o.remove("Body").unwrap_or(Value::Null)
                }
                Ok(v) => v,
                Err(_) => Value::from(text),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opcua::types::UAString;
    use serde_json::json;

    fn arg(name: &str, t: u32) -> Argument {
        Argument {
            name: UAString::from(name),
            data_type: NodeId::new(0, t),
            value_rank: -1,
            array_dimensions: None,
            description: Default::default(),
        }
    }

    #[test]
    fn builtin_types_map_both_ways() {
        for n in 1..=12u32 {
            let t = write_type_of(&NodeId::new(0, n)).expect("built-in");
            assert_eq!(builtin_id(t), n);
        }
        assert_eq!(write_type_of(&NodeId::new(0, 13)), None, "DateTime");
        assert_eq!(write_type_of(&NodeId::new(2, 6)), None, "not namespace 0");
    }

    #[test]
    fn call_arguments_by_name_position_or_bare_value() {
        let inputs = vec![arg("Reason", 12), arg("Count", 7)];
        let by_name = call_arguments(&json!({"Count": 3, "Reason": "shift"}), &inputs).unwrap();
        assert_eq!(
            by_name,
            vec![Variant::from("shift"), Variant::UInt32(3)],
            "in the method's order"
        );
        let by_pos = call_arguments(&json!(["shift", 3]), &inputs).unwrap();
        assert_eq!(by_pos, by_name);
        let one = vec![arg("Reason", 12)];
        assert_eq!(
            call_arguments(&json!("x"), &one).unwrap(),
            vec![Variant::from("x")]
        );
        assert_eq!(call_arguments(&Value::Null, &[]).unwrap(), vec![]);
        assert_eq!(call_arguments(&json!({}), &[]).unwrap(), vec![]);
    }

    #[test]
    fn call_arguments_refuse_what_does_not_fit() {
        let inputs = vec![arg("Reason", 12), arg("Count", 7)];
        let cases = [
            (json!({"Reason": "x"}), "missing argument \"Count\""),
            (
                json!({"Reason": "x", "Count": 1, "Extra": 2}),
                "unknown argument \"Extra\"",
            ),
            (json!(["x"]), "1 arguments given, the method takes 2"),
            (
                json!({"Reason": 5, "Count": 1}),
                "expected String, got integer",
            ),
            (
                json!({"Reason": "x", "Count": -1}),
                "out of the range of UInt32",
            ),
            (json!(7), "give an object by name or an array"),
        ];
        for (payload, want) in cases {
            let err = call_arguments(&payload, &inputs).unwrap_err().to_string();
            assert!(err.contains(want), "{payload}: {err}");
        }
        let mut array = arg("Values", 11);
        array.value_rank = 1;
        let err = call_arguments(&json!([[1.0]]), &[array]).unwrap_err();
        assert!(err.to_string().contains("array"), "{err}");
    }

    #[test]
    fn variants_become_plain_json() {
        assert_eq!(variant_json(&Variant::UInt64(u64::MAX)), json!(u64::MAX));
        assert_eq!(variant_json(&Variant::Int64(i64::MIN)), json!(i64::MIN));
        assert_eq!(variant_json(&Variant::Double(f64::NAN)), json!("NaN"));
        assert_eq!(variant_json(&Variant::Float(1.5)), json!(1.5));
        assert_eq!(variant_json(&Variant::from("a")), json!("a"));
        assert_eq!(variant_json(&Variant::Empty), Value::Null);
        assert_eq!(
            variant_json(&Variant::from(vec![1i32, 2])),
            json!([1, 2]),
            "arrays element by element"
        );
        let guid = opcua::types::Guid::new();
        assert_eq!(
            variant_json(&Variant::from(guid.clone())),
            json!(guid.to_string()),
            "other types: the OPC UA JSON body"
        );
    }

    #[test]
    fn statuses_are_sorted_into_unreachable_not_writable_and_refused() {
        assert_eq!(
            Failure::of(StatusCode::BadNotConnected),
            Failure::Unreachable(StatusCode::BadNotConnected)
        );
        assert_eq!(
            Failure::of(StatusCode::BadNotWritable),
            Failure::NotWritable(StatusCode::BadNotWritable)
        );
        assert_eq!(
            Failure::of(StatusCode::BadOutOfRange),
            Failure::Refused(StatusCode::BadOutOfRange)
        );
        assert_eq!(status_name(StatusCode::BadOutOfRange), "BadOutOfRange");
    }
}
