//! One sample as it flows from an OPC UA notification to the sinks.

use std::fmt;
use std::sync::{Arc, RwLock};

/// Where a sample comes from; one per monitored item, shared by all of its samples.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Item {
    pub plc: Arc<str>,
    pub group: Arc<str>,
    /// Node id in namespace-URI form: `nsu=urn:...;s=Filler.Speed`.
    pub node: Arc<str>,
    /// Tag name: the config alias, else the browse path, else the node id.
    pub name: Arc<str>,
}

impl Item {
    /// An item whose node id is its name (tests, fixtures).
    pub fn named(plc: &str, group: &str, name: &str) -> Item {
        Item {
            plc: plc.into(),
            group: group.into(),
            node: name.into(),
            name: name.into(),
        }
    }
}

/// An OPC UA type name, scalar or array: a built-in type (`Double`, `Array<Int32>`) or a
/// server's structure decoded by name (`MotorData`, `Array<MotorData>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TypeName {
    /// OPC UA built-in type id (1 Boolean .. 25 DiagnosticInfo); 0 when the value is empty.
    pub builtin: u8,
    pub array: bool,
    /// A structure's name, interned (see [`TypeName::structure`]); 0 for none.
    pub structure: u32,
}

/// Structure names seen in this process, interned so that a [`TypeName`] stays `Copy`
/// (their number is bounded by the types the servers describe).
static STRUCTURES: RwLock<Vec<Arc<str>>> = RwLock::new(Vec::new());

impl TypeName {
    pub const NULL: TypeName = TypeName {
        builtin: 0,
        array: false,
        structure: 0,
    };

    /// A built-in type, scalar or array.
    pub const fn builtin(builtin: u8, array: bool) -> TypeName {
        TypeName {
            builtin,
            array,
            structure: 0,
        }
    }

    /// A value (or array) of the structure called `name` (an ExtensionObject).
    pub fn structure(name: &str, array: bool) -> TypeName {
        let known = |names: &[Arc<str>]| names.iter().position(|n| &**n == name);
        let index = {
            let names = STRUCTURES.read().unwrap_or_else(|e| e.into_inner());
            known(&names)
        };
        let index = index.unwrap_or_else(|| {
            let mut names = STRUCTURES.write().unwrap_or_else(|e| e.into_inner());
            known(&names).unwrap_or_else(|| {
                names.push(name.into());
                names.len() - 1
            })
        });
        TypeName {
            builtin: 22,
            array,
            structure: u32::try_from(index + 1).unwrap_or(0),
        }
    }

    fn name(&self) -> Arc<str> {
        let names = STRUCTURES.read().unwrap_or_else(|e| e.into_inner());
        match (self.structure as usize)
            .checked_sub(1)
            .and_then(|i| names.get(i))
        {
            Some(n) => n.clone(),
            None => Self::builtin_name(self.builtin).into(),
        }
    }

    pub fn builtin_name(id: u8) -> &'static str {
        match id {
            1 => "Boolean",
            2 => "SByte",
            3 => "Byte",
            4 => "Int16",
            5 => "UInt16",
            6 => "Int32",
            7 => "UInt32",
            8 => "Int64",
            9 => "UInt64",
            10 => "Float",
            11 => "Double",
            12 => "String",
            13 => "DateTime",
            14 => "Guid",
            15 => "ByteString",
            16 => "XmlElement",
            17 => "NodeId",
            18 => "ExpandedNodeId",
            19 => "StatusCode",
            20 => "QualifiedName",
            21 => "LocalizedText",
            22 => "ExtensionObject",
            23 => "DataValue",
            24 => "Variant",
            25 => "DiagnosticInfo",
            _ => "Null",
        }
    }
}

impl fmt::Display for TypeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.structure != 0 {
            let name = self.name();
            return if self.array {
                write!(f, "Array<{name}>")
            } else {
                f.write_str(&name)
            };
        }
        if self.array {
            write!(f, "Array<{}>", Self::builtin_name(self.builtin))
        } else {
            f.write_str(Self::builtin_name(self.builtin))
        }
    }
}

/// The value of a sample, already mapped to the Parquet value column it lands in.
#[derive(Debug, Clone, PartialEq)]
pub enum SampleValue {
    /// No value (e.g. a Bad status without value).
    Null,
    /// Float, Double -> `value_double`.
    Double(f64),
    /// SByte..Int64, Byte..UInt32 -> `value_int`.
    Int(i64),
    /// UInt64 -> `value_uint`.
    UInt(u64),
    /// Boolean -> `value_bool`.
    Bool(bool),
    /// String, LocalizedText (text), QualifiedName, NodeId, Guid, StatusCode name... -> `value_string`.
    String(String),
    /// DateTime, microseconds since the Unix epoch (UTC) -> `value_time`.
    Time(i64),
    /// ByteString -> `value_bytes`.
    Bytes(Vec<u8>),
    /// Arrays, ExtensionObjects and everything else, as OPC UA JSON -> `value_json`.
    Json(String),
    /// An event of a `[[plc.events]]` stream -> the events table.
    Event(Box<EventRecord>),
}

/// An OPC UA event (an alarm's state change, an operator action, ...): the standard fields of
/// BaseEventType and the condition types, and the configured extra fields. Node ids are in
/// namespace-URI form. The sample carrying it has the event's Time as `time_us` and its
/// ReceiveTime as `server_time_us`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EventRecord {
    pub event_id: Vec<u8>,
    pub event_type: String,
    pub source_node: String,
    pub source_name: String,
    pub receive_time_us: Option<i64>,
    pub message: String,
    pub severity: u16,
    pub condition_id: Option<String>,
    pub condition_name: Option<String>,
    pub branch_id: Option<String>,
    pub retain: Option<bool>,
    pub enabled: Option<bool>,
    pub active: Option<bool>,
    pub acked: Option<bool>,
    pub confirmed: Option<bool>,
    pub comment: Option<String>,
    /// The configured extra fields by path, as a JSON object of OPC UA JSON values; `None`
    /// when the stream has none.
    pub fields_json: Option<String>,
}

/// One sample: a value with its status and timestamps.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub item: Arc<Item>,
    /// Source timestamp; the server timestamp if absent; the receive time if both are absent.
    /// Microseconds since the Unix epoch, UTC.
    pub time_us: i64,
    /// Server timestamp, microseconds since the Unix epoch, UTC.
    pub server_time_us: Option<i64>,
    /// OPC UA status code, 0 = Good. Bad and Uncertain samples are kept.
    pub status: u32,
    pub type_name: TypeName,
    pub value: SampleValue,
    /// How the sample arrived: a notification, or read back from the server's history.
    pub origin: Origin,
}

/// How a sample arrived: the `origin` column and telemetry field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Origin {
    /// A data change notification of a subscription (or a republished one).
    #[default]
    Live,
    /// Read with HistoryRead after a connection outage ([`crate::opcua::backfill`]).
    History,
    /// The last value sent again by report by exception's `max_interval` (telemetry only,
    /// never in Parquet).
    Heartbeat,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Live => "live",
            Origin::History => "history",
            Origin::Heartbeat => "heartbeat",
        }
    }
}
