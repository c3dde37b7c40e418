//! The validated configuration: real types, every reference checked.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

pub use super::acquisition::*;
pub use super::cloud::*;
pub use super::dps::*;
pub use super::rules::*;

/// One production line: everything one TOML file configures.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from (for messages).
    pub source: PathBuf,
    pub line: Line,
    pub plcs: Vec<Plc>,
    pub pki: Pki,
    pub parquet: Option<ParquetSinkConfig>,
    /// `[sink.mqtt]`: any MQTT 3.1.1 / 5 broker.
    pub mqtt: Option<MqttSinkConfig>,
    /// `[hub]`: Azure IoT Hub device or IoT Edge module identity.
    pub hub: Option<HubConfig>,
    /// `[buffer]`: store-and-forward for everything sent to a broker or hub. Defaults apply
    /// when a broker or hub sink is configured without it.
    pub buffer: BufferConfig,
    pub writes: Vec<WriteMapping>,
    pub methods: Vec<MethodMapping>,
    pub metrics: Option<MetricsConfig>,
    /// `[[rule]]`: local rules.
    pub rules: Vec<Rule>,
    /// Insecure but allowed set-ups (`check` prints them, `run` logs them at start).
    pub warnings: Vec<super::load::Problem>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub id: String,
    pub site: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityPolicy {
    None,
    Basic256Sha256,
    Aes128Sha256RsaOaep,
    Aes256Sha256RsaPss,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityMode {
    None,
    Sign,
    SignAndEncrypt,
}

/// A secret given by reference: never inline in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    /// The name of an environment variable.
    Env(String),
    /// A file whose content (trailing newline stripped) is the secret.
    File(PathBuf),
}

impl Secret {
    /// Reads the secret. `key` names it in errors as the config does (`password` gives
    /// `password_env` / `password_file`); the value never appears in them.
    pub fn read(&self, key: &str) -> Result<String, String> {
        match self {
            Secret::Env(name) => std::env::var(name)
                .map_err(|_| format!("environment variable {name} ({key}_env) is not set")),
            Secret::File(path) => std::fs::read_to_string(path)
                .map(|t| t.trim_end_matches(['\r', '\n']).to_owned())
                .map_err(|e| format!("cannot read {key}_file {}: {e}", path.display())),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    Anonymous,
    UserName {
        username: String,
        password: Secret,
    },
    Certificate {
        cert_file: PathBuf,
        key_file: PathBuf,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plc {
    pub id: String,
    /// `opc.tcp://host:port/path`
    pub endpoint: String,
    pub security_policy: SecurityPolicy,
    pub security_mode: SecurityMode,
    pub auth: Auth,
    pub groups: Vec<Group>,
    /// Event subscriptions (`[[plc.events]]`).
    pub events: Vec<Events>,
    /// Cloud writes and method calls running at once on this PLC at most; more are
    /// answered 503 busy (twin writes wait).
    pub max_concurrent_commands: usize,
}

/// A node id as written in the config, before it is resolved against a server.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NodeRef {
    /// `nsu=URI;s=...` (preferred: stable across server restarts).
    Uri {
        namespace_uri: String,
        identifier: Identifier,
    },
    /// `ns=N;s=...`: resolved through the server's namespace array at every connect.
    Index {
        namespace: u16,
        identifier: Identifier,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identifier {
    Numeric(u32),
    String(String),
    /// Canonical lowercase form `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    Guid(String),
    /// Base64 text of the opaque bytes.
    Opaque(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeEntry {
    pub node: NodeRef,
    /// Tag name for rows and payloads (`name = "..."`); default: the browse path.
    pub alias: Option<String>,
    /// Fields of a structure value that also land as rows of their own (`flatten = [...]`).
    pub flatten: Vec<FieldPath>,
    /// Report by exception of this node (its own `telemetry = { ... }` merged with the
    /// group's), when it differs from the group's.
    pub exception: Option<Exception>,
}

/// A field inside a structure value: `Main.Speed`, `Axes[1].Position`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldPath {
    pub steps: Vec<FieldStep>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FieldStep {
    /// A field by its name in the DataTypeDefinition.
    Field(String),
    /// An element of an array field, from 0.
    Index(usize),
}

impl FieldPath {
    /// Parses `Name(.Name|[n])*`; names are any text without `.`, `[`, `]`.
    pub fn parse(text: &str) -> Result<FieldPath, String> {
        let mut steps = Vec::new();
        let mut rest = text;
        let mut expect_name = true;
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix('[') {
                let Some((n, r)) = r.split_once(']') else {
                    return Err(format!("{text:?}: `[` without `]`"));
                };
                let i: usize = n
                    .parse()
                    .map_err(|_| format!("{text:?}: `[{n}]` is not an index (0, 1, ...)"))?;
                if steps.is_empty() {
                    return Err(format!("{text:?}: starts with an index, not a field name"));
                }
                steps.push(FieldStep::Index(i));
                rest = r;
                expect_name = false;
                continue;
            }
            let r = if expect_name {
                rest
            } else {
                rest.strip_prefix('.')
                    .ok_or_else(|| format!("{text:?}: expected `.` or `[` after `]`"))?
            };
            let end = r.find(['.', '[', ']']).unwrap_or(r.len());
            if end == 0 {
                return Err(format!("{text:?}: empty field name"));
            }
            if r[end..].starts_with(']') {
                return Err(format!("{text:?}: `]` without `[`"));
            }
            steps.push(FieldStep::Field(r[..end].to_owned()));
            rest = &r[end..];
            expect_name = false;
        }
        if steps.is_empty() {
            return Err("empty field path".to_owned());
        }
        Ok(FieldPath { steps })
    }
}

impl std::fmt::Display for FieldPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, step) in self.steps.iter().enumerate() {
            match step {
                FieldStep::Field(n) if i == 0 => f.write_str(n)?,
                FieldStep::Field(n) => write!(f, ".{n}")?,
                FieldStep::Index(k) => write!(f, "[{k}]")?,
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrowseSelection {
    pub root: NodeRef,
    pub recursive: bool,
    /// Glob on the browse path (`*Temp*`); all variables if absent.
    pub include: Option<String>,
    pub exclude: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Deadband {
    None,
    Absolute(f64),
    Percent(f64),
}

/// 0 in the file: enough to hold every sample of one publishing interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueSize {
    Auto,
    Fixed(NonZeroUsize),
}

/// One OPC UA subscription (split further if the server's limits demand).
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub name: String,
    pub publishing_interval: Duration,
    /// `Duration::ZERO` = the server's fastest rate.
    pub sampling_interval: Duration,
    pub queue_size: QueueSize,
    pub deadband: Deadband,
    pub nodes: Vec<NodeEntry>,
    pub browse: Vec<BrowseSelection>,
    /// History backfill after outages (`backfill = true`).
    pub backfill: Option<BackfillConfig>,
    /// Shaped telemetry (`[plc.group.telemetry]` with a window).
    pub telemetry: Option<Shaping>,
    /// Report by exception (`[plc.group.telemetry]` with deadbands or intervals).
    pub exception: Option<Exception>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pki {
    pub dir: PathBuf,
    pub trust_unknown_servers: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Zstd { level: i32 },
    Snappy,
    Gzip,
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ParquetSinkConfig {
    pub dir: PathBuf,
    /// Where the events table goes (`[[plc.events]]`); default `<dir>-events`.
    pub events_dir: PathBuf,
    pub compression: Compression,
    pub roll_rows: NonZeroUsize,
    pub roll_bytes: u64,
    pub roll_interval: Duration,
    /// Samples buffered between the OPC UA side and the writer; when full, the OPC UA side
    /// waits (backpressure) and the wait is counted.
    pub queue_samples: NonZeroUsize,
    /// Local retention of completed chunks.
    pub retention: ParquetRetention,
    /// Uploads of completed chunks, when configured.
    pub upload: Option<UploadConfig>,
}

/// `[sink.parquet.upload]`.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadConfig {
    /// Where the chunks go.
    pub to: UploadTarget,
    /// How long a confirmed chunk stays on disk (`None`: the retention limits decide).
    pub keep_local: Option<Duration>,
}

/// `to = "<store URL>"` or `via = "iothub"`.
#[derive(Debug, Clone, PartialEq)]
pub enum UploadTarget {
    /// An object store, through the `object_store` crate.
    Store(StoreTarget),
    /// IoT Hub's file upload, with the `[hub]` identity.
    IotHub,
}

/// An object store: `to`, `options`, `secret_env` / `secret_file`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreTarget {
    /// The store and key prefix: `az://container/prefix`, `s3://bucket/prefix`, ...
    pub url: String,
    /// The store's settings (object_store configuration keys), in the file's order.
    pub options: Vec<(String, String)>,
    /// Secret settings, read when the uploader starts.
    pub secrets: Vec<(String, Secret)>,
}

impl std::fmt::Display for UploadTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UploadTarget::Store(s) => f.write_str(&s.url),
            UploadTarget::IotHub => f.write_str("IoT Hub file upload"),
        }
    }
}

/// `[sink.parquet]` `max_bytes`, `max_age`, `min_free`: the oldest completed chunks are
/// deleted while one is exceeded. Zero: no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParquetRetention {
    pub max_bytes: u64,
    pub max_age: Duration,
    pub min_free: u64,
}

impl Default for ParquetRetention {
    fn default() -> Self {
        ParquetRetention {
            max_bytes: 0,
            max_age: Duration::ZERO,
            min_free: 256 << 20,
        }
    }
}

/// OPC UA built-in types a cloud write may be coerced to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteType {
    Boolean,
    SByte,
    Byte,
    Int16,
    UInt16,
    Int32,
    UInt32,
    Int64,
    UInt64,
    Float,
    Double,
    String,
    /// From a base64 string (e.g. the EventId of an event, to acknowledge it).
    ByteString,
    /// From a string (the text; no locale), e.g. an acknowledgement's comment.
    LocalizedText,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WriteMapping {
    /// Desired property (dotted path for nested) or write-topic key.
    pub property: String,
    pub plc: String,
    pub node: NodeRef,
    pub write_type: WriteType,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub readback: bool,
    pub max_rate: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MethodMapping {
    pub name: String,
    pub plc: String,
    pub object: NodeRef,
    pub method: NodeRef,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    pub listen: std::net::SocketAddr,
}

impl SecurityPolicy {
    /// The name used in the config file.
    pub fn name(self) -> &'static str {
        match self {
            SecurityPolicy::None => "None",
            SecurityPolicy::Basic256Sha256 => "Basic256Sha256",
            SecurityPolicy::Aes128Sha256RsaOaep => "Aes128_Sha256_RsaOaep",
            SecurityPolicy::Aes256Sha256RsaPss => "Aes256_Sha256_RsaPss",
        }
    }

    pub const ALL: [SecurityPolicy; 4] = [
        SecurityPolicy::None,
        SecurityPolicy::Basic256Sha256,
        SecurityPolicy::Aes128Sha256RsaOaep,
        SecurityPolicy::Aes256Sha256RsaPss,
    ];

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

impl SecurityMode {
    /// The name used in the config file.
    pub fn name(self) -> &'static str {
        match self {
            SecurityMode::None => "None",
            SecurityMode::Sign => "Sign",
            SecurityMode::SignAndEncrypt => "SignAndEncrypt",
        }
    }

    pub const ALL: [SecurityMode; 3] = [
        SecurityMode::None,
        SecurityMode::Sign,
        SecurityMode::SignAndEncrypt,
    ];

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }
}

impl WriteType {
    pub const ALL: [WriteType; 14] = [
        WriteType::Boolean,
        WriteType::SByte,
        WriteType::Byte,
        WriteType::Int16,
        WriteType::UInt16,
        WriteType::Int32,
        WriteType::UInt32,
        WriteType::Int64,
        WriteType::UInt64,
        WriteType::Float,
        WriteType::Double,
        WriteType::String,
        WriteType::ByteString,
        WriteType::LocalizedText,
    ];

    /// The OPC UA built-in type name, as written in the config.
    pub fn name(self) -> &'static str {
        match self {
            WriteType::Boolean => "Boolean",
            WriteType::SByte => "SByte",
            WriteType::Byte => "Byte",
            WriteType::Int16 => "Int16",
            WriteType::UInt16 => "UInt16",
            WriteType::Int32 => "Int32",
            WriteType::UInt32 => "UInt32",
            WriteType::Int64 => "Int64",
            WriteType::UInt64 => "UInt64",
            WriteType::Float => "Float",
            WriteType::Double => "Double",
            WriteType::String => "String",
            WriteType::ByteString => "ByteString",
            WriteType::LocalizedText => "LocalizedText",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The range of values the type can hold (`None` for Boolean and String, which take no
    /// `min`/`max`).
    pub fn numeric_range(self) -> Option<(f64, f64)> {
        Some(match self {
            WriteType::Boolean
            | WriteType::String
            | WriteType::ByteString
            | WriteType::LocalizedText => return None,
            WriteType::SByte => (i8::MIN.into(), i8::MAX.into()),
            WriteType::Byte => (0.0, u8::MAX.into()),
            WriteType::Int16 => (i16::MIN.into(), i16::MAX.into()),
            WriteType::UInt16 => (0.0, u16::MAX.into()),
            WriteType::Int32 => (i32::MIN.into(), i32::MAX.into()),
            WriteType::UInt32 => (0.0, u32::MAX.into()),
            WriteType::Int64 => (i64::MIN as f64, i64::MAX as f64),
            WriteType::UInt64 => (0.0, u64::MAX as f64),
            WriteType::Float => (f32::MIN.into(), f32::MAX.into()),
            WriteType::Double => (f64::MIN, f64::MAX),
        })
    }
}

impl Auth {
    /// What kind of authentication, never the secret: for plans and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Auth::Anonymous => "anonymous",
            Auth::UserName { .. } => "username",
            Auth::Certificate { .. } => "certificate",
        }
    }
}

/// Why a node id string is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad node id {id:?}: {reason}")]
pub struct NodeRefError {
    pub id: String,
    pub reason: String,
}

impl std::str::FromStr for NodeRef {
    type Err = NodeRefError;

    /// `nsu=URI;s=..`, `ns=N;i=..`, or a bare identifier (`i=85`) in namespace 0; identifiers
    /// `i=` (UInt32), `s=` (string), `g=` (GUID), `b=` (base64 bytes). The namespace URI ends
    /// at the first `;` (OPC UA percent-encodes `;` inside URIs).
    fn from_str(id: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| NodeRefError {
            id: id.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(rest) = id.strip_prefix("nsu=") {
            let (uri, ident) = rest
                .split_once(';')
                .ok_or_else(|| err("expected nsu=URI;i=.., s=.., g=.. or b=.."))?;
            if uri.is_empty() {
                return Err(err("empty namespace uri"));
            }
            let identifier = Identifier::parse(ident).map_err(|r| err(&r))?;
            Ok(NodeRef::Uri {
                namespace_uri: uri.to_owned(),
                identifier,
            })
        } else if let Some(rest) = id.strip_prefix("ns=") {
            let (ns, ident) = rest
                .split_once(';')
                .ok_or_else(|| err("expected ns=N;i=.., s=.., g=.. or b=.."))?;
            let namespace = ns
                .parse::<u16>()
                .map_err(|_| err("namespace index must be an integer 0..=65535"))?;
            let identifier = Identifier::parse(ident).map_err(|r| err(&r))?;
            Ok(NodeRef::Index {
                namespace,
                identifier,
            })
        } else {
            let identifier = Identifier::parse(id).map_err(|_| {
                err("expected nsu=URI;s=.. (preferred), ns=N;s=.. or a bare i=N in namespace 0")
            })?;
            Ok(NodeRef::Index {
                namespace: 0,
                identifier,
            })
        }
    }
}

impl Identifier {
    /// `i=123`, `s=Name`, `g=GUID`, `b=BASE64`.
    fn parse(text: &str) -> Result<Identifier, String> {
        let (kind, value) = text
            .split_once('=')
            .ok_or_else(|| format!("identifier {text:?} must be i=, s=, g= or b="))?;
        match kind {
            "i" => value
                .parse::<u32>()
                .map(Identifier::Numeric)
                .map_err(|_| format!("numeric identifier {value:?} is not a UInt32")),
            "s" if value.is_empty() => Err("empty string identifier".to_owned()),
            "s" => Ok(Identifier::String(value.to_owned())),
            "g" => canonical_guid(value).map(Identifier::Guid).ok_or_else(|| {
                format!("guid {value:?} is not xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx")
            }),
            "b" if is_base64(value) => Ok(Identifier::Opaque(value.to_owned())),
            "b" => Err(format!("opaque identifier {value:?} is not base64")),
            _ => Err(format!("identifier type {kind:?} must be i, s, g or b")),
        }
    }
}

fn canonical_guid(text: &str) -> Option<String> {
    let text = text
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .unwrap_or(text);
    let groups: Vec<&str> = text.split('-').collect();
    let shape = [8, 4, 4, 4, 12];
    let ok = groups.len() == shape.len()
        && groups
            .iter()
            .zip(shape)
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()));
    ok.then(|| text.to_ascii_lowercase())
}

/// Standard base64 with padding.
fn is_base64(text: &str) -> bool {
    let body = text.trim_end_matches('=');
    !text.is_empty()
        && text.len().is_multiple_of(4)
        && text.len() - body.len() <= 2
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

impl std::fmt::Display for Identifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identifier::Numeric(n) => write!(f, "i={n}"),
            Identifier::String(s) => write!(f, "s={s}"),
            Identifier::Guid(g) => write!(f, "g={g}"),
            Identifier::Opaque(b) => write!(f, "b={b}"),
        }
    }
}

/// The form it was written in (`nsu=URI;s=..`, `ns=N;i=..`, bare `i=85` in namespace 0).
impl std::fmt::Display for NodeRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeRef::Uri {
                namespace_uri,
                identifier,
            } => write!(f, "nsu={namespace_uri};{identifier}"),
            NodeRef::Index {
                namespace: 0,
                identifier,
            } => write!(f, "{identifier}"),
            NodeRef::Index {
                namespace,
                identifier,
            } => write!(f, "ns={namespace};{identifier}"),
        }
    }
}
