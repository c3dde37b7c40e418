//! Stage one: serde structs that mirror the TOML file and reject unknown keys.
//!
//! Everything is optional here so that a missing key becomes a validation problem (reported
//! together with all the others) rather than a serde error that stops at the first one.
//! Scalars are wrapped in [`Spanned`] for line numbers. Tables are not: toml 0.8 cannot span a
//! table written with dotted keys (`deadband.absolute = 1`), so a table's line comes from its
//! fields or, for array-of-tables elements (`[[plc]]`), from the element span.

use std::fmt;
use std::ops::Range;

use serde::de::{self, value::MapAccessDeserializer, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// A value and its byte range in the file: [`toml::Spanned`] behind a type of our own, so
/// that the config's JSON Schema can say what it holds (its value's schema, see
/// `config::schema`). Deserializes exactly as `toml::Spanned` does.
#[derive(Clone)]
pub struct Spanned<T>(toml::Spanned<T>);

impl<T> Spanned<T> {
    pub fn new(span: Range<usize>, value: T) -> Self {
        Spanned(toml::Spanned::new(span, value))
    }

    /// The byte range of the value in the file.
    pub fn span(&self) -> Range<usize> {
        self.0.span()
    }

    pub fn get_ref(&self) -> &T {
        self.0.get_ref()
    }

    pub fn into_inner(self) -> T {
        self.0.into_inner()
    }
}

impl<T: fmt::Debug> fmt::Debug for Spanned<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        toml::Spanned::<T>::deserialize(d).map(Spanned)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub line: Option<RawLine>,
    #[serde(default)]
    pub plc: Vec<Spanned<RawPlc>>,
    pub pki: Option<RawPki>,
    pub sink: Option<RawSinks>,
    pub hub: Option<RawHub>,
    pub buffer: Option<RawBuffer>,
    #[serde(default)]
    pub write: Vec<Spanned<RawWrite>>,
    #[serde(default)]
    pub method: Vec<Spanned<RawMethod>>,
    pub metrics: Option<RawMetrics>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLine {
    pub id: Option<Spanned<String>>,
    pub site: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlc {
    pub id: Option<Spanned<String>>,
    pub endpoint: Option<Spanned<String>>,
    pub security_policy: Option<Spanned<String>>,
    pub security_mode: Option<Spanned<String>>,
    pub auth: Option<RawAuth>,
    pub max_concurrent_commands: Option<Spanned<i64>>,
    #[serde(default)]
    pub group: Vec<Spanned<RawGroup>>,
}

/// `auth = "anonymous"` or an inline table; which table shape it is gets decided in validation.
#[derive(Debug)]
pub enum RawAuth {
    Anonymous,
    Table(RawAuthTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuthTable {
    pub username: Option<Spanned<String>>,
    pub password_env: Option<Spanned<String>>,
    pub password_file: Option<Spanned<String>>,
    /// Known only to be refused with a helpful message; the value is never kept.
    pub password: Option<Spanned<de::IgnoredAny>>,
    pub cert_file: Option<Spanned<String>>,
    pub key_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGroup {
    pub name: Option<Spanned<String>>,
    pub publishing_interval: Option<Spanned<RawDuration>>,
    pub sampling_interval: Option<Spanned<RawDuration>>,
    pub queue_size: Option<Spanned<i64>>,
    pub deadband: Option<RawDeadband>,
    pub nodes: Option<Vec<Spanned<RawNode>>>,
    pub browse: Option<Vec<Spanned<RawBrowse>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeadband {
    pub absolute: Option<Spanned<f64>>,
    pub percent: Option<Spanned<f64>>,
}

/// `"nsu=...;s=..."` or `{ id = "nsu=...;s=...", name = "alias" }`.
#[derive(Debug)]
pub enum RawNode {
    Id(String),
    Table(RawNodeTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNodeTable {
    pub id: Option<Spanned<String>>,
    pub name: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBrowse {
    pub root: Option<Spanned<String>>,
    pub recursive: Option<Spanned<bool>>,
    pub include: Option<Spanned<String>>,
    pub exclude: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPki {
    pub dir: Option<Spanned<String>>,
    pub trust_unknown_servers: Option<Spanned<bool>>,
}

/// `[sink.*]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSinks {
    pub parquet: Option<RawParquet>,
    pub mqtt: Option<RawMqtt>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawParquet {
    pub dir: Option<Spanned<String>>,
    pub compression: Option<Spanned<String>>,
    pub roll_rows: Option<Spanned<i64>>,
    pub roll_bytes: Option<Spanned<RawSize>>,
    pub roll_interval: Option<Spanned<RawDuration>>,
    pub queue_samples: Option<Spanned<i64>>,
    pub max_bytes: Option<Spanned<RawSize>>,
    pub max_age: Option<Spanned<RawDuration>>,
    pub min_free: Option<Spanned<RawSize>>,
}

/// `[sink.mqtt]`: a generic MQTT 3.1.1 / 5 broker.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMqtt {
    pub url: Option<Spanned<String>>,
    pub version: Option<Spanned<RawVersion>>,
    pub client_id: Option<Spanned<String>>,
    pub username: Option<Spanned<String>>,
    pub password_env: Option<Spanned<String>>,
    pub password_file: Option<Spanned<String>>,
    /// Known only to be refused with a helpful message; the value is never kept.
    pub password: Option<Spanned<de::IgnoredAny>>,
    pub topic: Option<Spanned<String>>,
    pub command_topic: Option<Spanned<String>>,
    pub qos: Option<Spanned<i64>>,
    pub batch_max_samples: Option<Spanned<i64>>,
    pub batch_max_delay: Option<Spanned<RawDuration>>,
    pub max_message_bytes: Option<Spanned<RawSize>>,
    pub payload: Option<Spanned<String>>,
    pub keep_alive: Option<Spanned<RawDuration>>,
    pub tls: Option<RawTls>,
    pub allow_insecure_commands: Option<Spanned<bool>>,
}

/// `tls = { ca_file, cert_file, key_file }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub ca_file: Option<Spanned<String>>,
    pub cert_file: Option<Spanned<String>>,
    pub key_file: Option<Spanned<String>>,
}

/// `[hub]`: an Azure IoT Hub device or IoT Edge module identity.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHub {
    pub connection_string_env: Option<Spanned<String>>,
    pub connection_string_file: Option<Spanned<String>>,
    /// Known only to be refused with a helpful message; the value is never kept.
    pub connection_string: Option<Spanned<de::IgnoredAny>>,
    pub x509: Option<RawX509>,
    pub sas_ttl: Option<Spanned<RawDuration>>,
    pub insecure_endpoint: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub batch_max_samples: Option<Spanned<i64>>,
    pub batch_max_delay: Option<Spanned<RawDuration>>,
    pub payload: Option<Spanned<String>>,
    pub pending_write_max_age: Option<Spanned<RawDuration>>,
}

/// `x509 = { host, device_id, module_id, cert_file, key_file }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawX509 {
    pub host: Option<Spanned<String>>,
    pub device_id: Option<Spanned<String>>,
    pub module_id: Option<Spanned<String>>,
    pub cert_file: Option<Spanned<String>>,
    pub key_file: Option<Spanned<String>>,
}

/// `[buffer]`: store-and-forward for the broker and hub sinks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBuffer {
    pub dir: Option<Spanned<String>>,
    pub max_bytes: Option<Spanned<RawSize>>,
    pub when_full: Option<Spanned<String>>,
    pub segment_bytes: Option<Spanned<RawSize>>,
    pub min_free: Option<Spanned<RawSize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWrite {
    pub property: Option<Spanned<String>>,
    pub plc: Option<Spanned<String>>,
    pub node: Option<Spanned<String>>,
    #[serde(rename = "type")]
    pub write_type: Option<Spanned<String>>,
    pub min: Option<Spanned<f64>>,
    pub max: Option<Spanned<f64>>,
    pub readback: Option<Spanned<bool>>,
    pub max_rate: Option<Spanned<RawDuration>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMethod {
    pub name: Option<Spanned<String>>,
    pub plc: Option<Spanned<String>>,
    pub object: Option<Spanned<String>>,
    pub method: Option<Spanned<String>>,
    pub timeout: Option<Spanned<RawDuration>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub listen: Option<Spanned<String>>,
}

/// A value that should be a string with a unit; numbers are kept so validation can say
/// "add a unit" instead of a bare type error.
#[derive(Debug, Clone, PartialEq)]
pub enum Quantity {
    Text(String),
    Integer(i64),
    Float(f64),
}

/// A duration as written: `"250ms"`, `"5s"`, `"1h"`.
#[derive(Debug, Clone, PartialEq)]
pub struct RawDuration(pub Quantity);

/// A size as written: `"64MiB"`, `"128MB"`, or an integer number of bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct RawSize(pub Quantity);

/// An MQTT protocol version as written: `"3.1.1"`, `"5"`, or the number `5`.
#[derive(Debug, Clone, PartialEq)]
pub struct RawVersion(pub Quantity);

struct QuantityVisitor(&'static str);

impl Visitor<'_> for QuantityVisitor {
    type Value = Quantity;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Quantity, E> {
        Ok(Quantity::Text(v.to_owned()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Quantity, E> {
        Ok(Quantity::Integer(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Quantity, E> {
        i64::try_from(v)
            .map(Quantity::Integer)
            .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Quantity, E> {
        Ok(Quantity::Float(v))
    }
}

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(QuantityVisitor(
            "a duration with a unit such as \"250ms\" or \"5s\"",
        ))
        .map(RawDuration)
    }
}

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(QuantityVisitor(
            "a size with a unit such as \"64MiB\" or a number of bytes",
        ))
        .map(RawSize)
    }
}

impl<'de> Deserialize<'de> for RawVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(QuantityVisitor("an MQTT version: \"3.1.1\" or \"5\""))
            .map(RawVersion)
    }
}

impl<'de> Deserialize<'de> for RawNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawNode;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a node id string or a table { id = \"...\", name = \"...\" }")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawNode, E> {
                Ok(RawNode::Id(v.to_owned()))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawNode, A::Error> {
                RawNodeTable::deserialize(MapAccessDeserializer::new(map)).map(RawNode::Table)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawAuth {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawAuth;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "\"anonymous\", { username, password_env | password_file } or { cert_file, key_file }",
                )
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawAuth, E> {
                if v == "anonymous" {
                    Ok(RawAuth::Anonymous)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(v), &self))
                }
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawAuth, A::Error> {
                RawAuthTable::deserialize(MapAccessDeserializer::new(map)).map(RawAuth::Table)
            }
        }
        d.deserialize_any(V)
    }
}
