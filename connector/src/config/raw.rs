//! Stage one: serde structs that mirror the TOML file and reject unknown keys.
//!
//! Everything is optional here so that a missing key becomes a validation problem (reported
//! together with all the others) rather than a serde error that stops at the first one.
//! Scalars are wrapped in [`Spanned`] for line numbers. Tables are not: toml 0.8 cannot span a
//! table written with dotted keys (`deadband.absolute = 1`), so a table's line comes from its
//! fields or, for array-of-tables elements (`[[plc]]`), from the element span.
//!
//! [`key_path_at`] names the key at a byte offset (`plc[0].group[1].nodes[2]`): serde errors
//! carry a span but no path.

use std::fmt;

use serde::de::{self, value::MapAccessDeserializer, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

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

/// The key path (`plc[0].group[1].nodes[2]`, `sink.parquet.bogus`) of the key or value at byte
/// `offset` of a TOML document, for errors that only carry a span.
///
/// A lenient scanner, not a parser: it understands table headers (counting `[[array]]`
/// elements), dotted and quoted keys, inline tables, arrays, strings and comments, and gives up
/// (`None`) on anything it does not recognise.
pub fn key_path_at(text: &str, offset: usize) -> Option<String> {
    let mut s = Scanner {
        src: text.as_bytes(),
        pos: 0,
        target: offset,
        aot: Vec::new(),
    };
    match s.document() {
        Scan::Found(path) if !path.is_empty() => Some(path),
        _ => None,
    }
}

enum Scan {
    /// Scanned past this item without reaching the target.
    Continue,
    Found(String),
    GiveUp,
}

macro_rules! scan {
    ($e:expr) => {
        match $e {
            Scan::Continue => {}
            other => return other,
        }
    };
}

struct Scanner<'a> {
    src: &'a [u8],
    pos: usize,
    target: usize,
    /// Array-of-tables seen so far (indexed path such as `plc[0].group`) and their lengths.
    aot: Vec<(String, usize)>,
}

fn join(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_owned()
    } else {
        format!("{base}.{key}")
    }
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    fn at(&self, s: &str) -> bool {
        self.src[self.pos.min(self.src.len())..].starts_with(s.as_bytes())
    }

    fn hit(&self, start: usize, end: usize) -> bool {
        (start..end.max(start + 1)).contains(&self.target)
    }

    /// Spaces, tabs and comments; newlines too when `newlines`.
    fn skip_blank(&mut self, newlines: bool) {
        while let Some(c) = self.peek() {
            match c {
                b' ' | b'\t' | b'\r' => self.pos += 1,
                b'\n' if newlines => self.pos += 1,
                b'#' => {
                    while !matches!(self.peek(), None | Some(b'\n')) {
                        self.pos += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn document(&mut self) -> Scan {
        let mut table = String::new();
        loop {
            self.skip_blank(true);
            match self.peek() {
                None => return Scan::Continue,
                Some(b'[') => match self.header() {
                    Ok(path) => table = path,
                    Err(scan) => return scan,
                },
                Some(_) => scan!(self.keyval(&table)),
            }
        }
    }

    /// `[a.b]` or `[[a.b]]`: the indexed path of the table it opens.
    fn header(&mut self) -> Result<String, Scan> {
        let array = self.at("[[");
        self.pos += if array { 2 } else { 1 };
        let mut path = String::new();
        loop {
            self.skip_blank(false);
            let start = self.pos;
            let Some(name) = self.key_segment() else {
                return Err(Scan::GiveUp);
            };
            let end = self.pos;
            path = join(&path, &name);
            self.skip_blank(false);
            let last = self.peek() == Some(b']');
            if last && array {
                let n = match self.aot.iter_mut().find(|(p, _)| *p == path) {
                    Some((_, n)) => {
                        *n += 1;
                        *n - 1
                    }
                    None => {
                        self.aot.push((path.clone(), 1));
                        0
                    }
                };
                // A new element: forget the arrays nested in the previous one.
                let prefix = format!("{path}[");
                self.aot.retain(|(p, _)| !p.starts_with(&prefix));
                path = format!("{path}[{n}]");
            } else if let Some((_, n)) = self.aot.iter().find(|(p, _)| *p == path) {
                path = format!("{path}[{}]", n.saturating_sub(1));
            }
            if self.hit(start, end) {
                return Err(Scan::Found(path));
            }
            match self.peek() {
                Some(b'.') => self.pos += 1,
                Some(b']') => {
                    self.pos += if array { 2 } else { 1 };
                    return Ok(path);
                }
                _ => return Err(Scan::GiveUp),
            }
        }
    }

    /// One bare or quoted key segment.
    fn key_segment(&mut self) -> Option<String> {
        match self.peek()? {
            b'"' | b'\'' => {
                let (start, end) = self.string()?;
                let raw = std::str::from_utf8(&self.src[start..end]).ok()?;
                Some(raw.trim_matches(|c| c == '"' || c == '\'').to_owned())
            }
            _ => {
                let start = self.pos;
                while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
                {
                    self.pos += 1;
                }
                (self.pos > start)
                    .then(|| String::from_utf8_lossy(&self.src[start..self.pos]).into_owned())
            }
        }
    }

    /// `a.b = value` under `base`.
    fn keyval(&mut self, base: &str) -> Scan {
        let mut path = base.to_owned();
        loop {
            self.skip_blank(false);
            let start = self.pos;
            let Some(name) = self.key_segment() else {
                return Scan::GiveUp;
            };
            path = join(&path, &name);
            if self.hit(start, self.pos) {
                return Scan::Found(path);
            }
            self.skip_blank(false);
            match self.peek() {
                Some(b'.') => self.pos += 1,
                Some(b'=') => {
                    self.pos += 1;
                    self.skip_blank(false);
                    return self.value(&path);
                }
                _ => return Scan::GiveUp,
            }
        }
    }

    fn value(&mut self, path: &str) -> Scan {
        let start = self.pos;
        match self.peek() {
            Some(b'{') => {
                self.pos += 1;
                loop {
                    self.skip_blank(true);
                    match self.peek() {
                        Some(b'}') => {
                            self.pos += 1;
                            break;
                        }
                        Some(b',') => self.pos += 1,
                        None => return Scan::GiveUp,
                        Some(_) => scan!(self.keyval(path)),
                    }
                }
            }
            Some(b'[') => {
                self.pos += 1;
                let mut index = 0;
                loop {
                    self.skip_blank(true);
                    match self.peek() {
                        Some(b']') => {
                            self.pos += 1;
                            break;
                        }
                        Some(b',') => {
                            self.pos += 1;
                            index += 1;
                        }
                        None => return Scan::GiveUp,
                        Some(_) => scan!(self.value(&format!("{path}[{index}]"))),
                    }
                }
            }
            Some(b'"' | b'\'') => {
                if self.string().is_none() {
                    return Scan::GiveUp;
                }
            }
            Some(_) => {
                while !matches!(self.peek(), None | Some(b',' | b']' | b'}' | b'\n' | b'#')) {
                    self.pos += 1;
                }
            }
            None => return Scan::GiveUp,
        }
        if self.hit(start, self.pos) {
            Scan::Found(path.to_owned())
        } else {
            Scan::Continue
        }
    }

    /// A basic, literal or multi-line string starting at `pos`; its span with the quotes.
    fn string(&mut self) -> Option<(usize, usize)> {
        let start = self.pos;
        let quote = self.peek()?;
        let triple = if quote == b'"' { "\"\"\"" } else { "'''" };
        if self.at(triple) {
            self.pos += 3;
            while !self.at(triple) {
                if quote == b'"' && self.peek() == Some(b'\\') {
                    self.pos += 1;
                }
                self.peek()?;
                self.pos += 1;
            }
            self.pos += 3;
            // Up to two more quotes may close the content.
            while self.peek() == Some(quote) {
                self.pos += 1;
            }
        } else {
            self.pos += 1;
            loop {
                match self.peek()? {
                    b'\\' if quote == b'"' => self.pos += 2,
                    b'\n' => return None,
                    c if c == quote => {
                        self.pos += 1;
                        break;
                    }
                    _ => self.pos += 1,
                }
            }
        }
        Some((start, self.pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_of(text: &str, needle: &str) -> Option<String> {
        key_path_at(text, text.find(needle).unwrap())
    }

    #[test]
    fn key_path_counts_array_of_tables_per_parent() {
        let text = "[line]\nid = \"a\"\n\n[[plc]]\nid = \"x\"\n[[plc.group]]\nname = \"g0\"\n\
                    [[plc.group]]\nname = \"g1\"\n\n[[plc]]\nid = \"y\"\n[[plc.group]]\nbogus = 1\n";
        assert_eq!(path_of(text, "id = \"a\"").as_deref(), Some("line.id"));
        assert_eq!(
            path_of(text, "\"g1\"").as_deref(),
            Some("plc[0].group[1].name")
        );
        assert_eq!(
            path_of(text, "bogus").as_deref(),
            Some("plc[1].group[0].bogus")
        );
        assert_eq!(path_of(text, "\"y\"").as_deref(), Some("plc[1].id"));
    }

    #[test]
    fn key_path_enters_inline_tables_and_arrays() {
        let text = "[[plc]]\nauth = { username = \"u\", bogus = 1 }\n[[plc.group]]\n\
                    nodes = [\n  \"i=85\", # comment, with [brackets]\n  { id = \"i=1\", nam = \"x\" },\n]\n";
        assert_eq!(path_of(text, "bogus").as_deref(), Some("plc[0].auth.bogus"));
        assert_eq!(
            path_of(text, "nam ").as_deref(),
            Some("plc[0].group[0].nodes[1].nam")
        );
        assert_eq!(
            path_of(text, "\"i=85\"").as_deref(),
            Some("plc[0].group[0].nodes[0]")
        );
    }

    #[test]
    fn key_path_of_header_segment_and_dotted_keys() {
        let text = "[line]\nid = 'a'\n[sink.mqtt]\nurl = \"\"\"x\n]\"\"\"\n[metrics]\ndeadband.absolute = 1\n";
        assert_eq!(path_of(text, "mqtt").as_deref(), Some("sink.mqtt"));
        assert_eq!(
            path_of(text, "absolute").as_deref(),
            Some("metrics.deadband.absolute")
        );
    }
}
