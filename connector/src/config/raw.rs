//! Stage one: serde structs that mirror the TOML file and reject unknown keys.
//!
//! Everything is optional here so that a missing key becomes a validation problem (reported
//! together with all the others) rather than a serde error that stops at the first one.
//! Scalars are wrapped in [`Spanned`] for line numbers. Tables are not: toml 0.8 cannot span a
//! table written with dotted keys (`deadband.absolute = 1`), so a table's line comes from its
//! fields or, for array-of-tables elements (`[[plc]]`), from the element span.

use std::fmt;
use std::ops::Range;

use schemars::JsonSchema;
use serde::de::{self, value::MapAccessDeserializer, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

mod dps;
mod rules;
pub use dps::*;
pub use rules::*;

use super::schema::{
    CompressionName, PayloadName, Refused, SecurityModeName, SecurityPolicyName, UploadVia,
    WhenFullName, WriteTypeName,
};

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

/// An opcua-connector config file: one production line.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("required" = ["line", "plc"]))]
pub struct RawConfig {
    /// The production line this file configures; required.
    pub line: Option<RawLine>,
    /// `[[plc]]`: one OPC UA server (PLC, gateway or simulator); at least one.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub plc: Vec<Spanned<RawPlc>>,
    /// The connector's OPC UA application certificate and trust lists.
    pub pki: Option<RawPki>,
    /// The outputs: `[sink.parquet]` files and a `[sink.mqtt]` broker.
    pub sink: Option<RawSinks>,
    /// Azure IoT Hub: the connector as one device or IoT Edge module; absent: no hub.
    pub hub: Option<RawHub>,
    /// Azure Device Provisioning Service: assigns the [hub] identity at the first start; absent: the [hub] identity is configured.
    pub dps: Option<RawDps>,
    /// Store-and-forward on disk for `[sink.mqtt]` and `[hub]`; absent: the defaults.
    pub buffer: Option<RawBuffer>,
    /// `[[write]]`: a node the cloud may write (an allow-list).
    #[serde(default)]
    pub write: Vec<Spanned<RawWrite>>,
    /// `[[method]]`: a cloud direct method mapped to an OPC UA method call.
    #[serde(default)]
    pub method: Vec<Spanned<RawMethod>>,
    /// Prometheus `/metrics` and `/healthz` over HTTP; absent: no listener.
    pub metrics: Option<RawMetrics>,
    /// `[[rule]]`: a local rule that acts on the line (writes, method calls, alerts) when a
    /// condition on node values holds, whether or not the cloud is reachable.
    #[serde(default)]
    pub rule: Vec<Spanned<RawRule>>,
}

/// `[line]`: the production line.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLine {
    /// Line id (letters, digits, `_ . -`), in file paths, topics and every row; required.
    #[schemars(required)]
    pub id: Option<Spanned<String>>,
    /// Plant or site (letters, digits, `_ . -`); default none.
    pub site: Option<Spanned<String>>,
}

/// `[[plc]]`: one OPC UA server (PLC, gateway or the simulator).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPlc {
    /// PLC id (letters, digits, `_ . -`), unique in the file; required.
    #[schemars(required)]
    pub id: Option<Spanned<String>>,
    /// OPC UA endpoint, `opc.tcp://host[:port][/path]`; required.
    #[schemars(required)]
    pub endpoint: Option<Spanned<String>>,
    /// Security policy; default "None" (which goes only with security_mode "None").
    #[schemars(with = "Option<SecurityPolicyName>")]
    pub security_policy: Option<Spanned<String>>,
    /// Message security mode; default "None" (which goes only with security_policy "None").
    #[schemars(with = "Option<SecurityModeName>")]
    pub security_mode: Option<Spanned<String>>,
    /// "anonymous" (default), { username, password_env | password_file } or { cert_file, key_file }.
    pub auth: Option<RawAuth>,
    /// Cloud writes and method calls running at once on this PLC at most; default 4.
    #[schemars(range(min = 1))]
    pub max_concurrent_commands: Option<Spanned<i64>>,
    /// `[[plc.group]]`: one OPC UA subscription of this PLC.
    #[serde(default)]
    pub group: Vec<Spanned<RawGroup>>,
    /// `[[plc.events]]`: events (alarms and conditions) of this PLC.
    #[serde(default)]
    pub events: Vec<Spanned<RawEvents>>,
}

/// `auth = "anonymous"` or an inline table; which table shape it is gets decided in validation.
#[derive(Debug)]
pub enum RawAuth {
    Anonymous,
    Table(RawAuthTable),
}

/// `{ username, password_env | password_file }` or `{ cert_file, key_file }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAuthTable {
    /// User name; with password_env or password_file.
    pub username: Option<Spanned<String>>,
    /// Environment variable holding the password, read at connect.
    pub password_env: Option<Spanned<String>>,
    /// File holding the password (trailing newline stripped), read at connect.
    pub password_file: Option<Spanned<String>>,
    // Known only to be refused with a helpful message; the value is never kept.
    /// Refused: no password in the file; use password_env or password_file.
    #[schemars(with = "Option<Refused>")]
    pub password: Option<Spanned<de::IgnoredAny>>,
    /// X.509 user certificate file, with key_file.
    pub cert_file: Option<Spanned<String>>,
    /// Private key file of cert_file.
    pub key_file: Option<Spanned<String>>,
}

/// `[[plc.group]]`: one OPC UA subscription.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawGroup {
    /// Group name (letters, digits, `_ . -`), unique in the plc; required.
    #[schemars(required)]
    pub name: Option<Spanned<String>>,
    /// How often the server publishes changes, e.g. "100ms"; required, greater than 0.
    #[schemars(required)]
    pub publishing_interval: Option<Spanned<RawDuration>>,
    /// How often the server samples; "0ms" = its fastest rate; default publishing_interval.
    pub sampling_interval: Option<Spanned<RawDuration>>,
    /// Server queue per node: 0 = auto (one publishing interval of samples); default 0.
    #[schemars(range(min = 0, max = 4_294_967_295_u32))]
    pub queue_size: Option<Spanned<i64>>,
    /// Report a change only past { absolute = x } or { percent = x }; default none.
    pub deadband: Option<RawDeadband>,
    /// Node ids, or { id = "...", name = "alias" }; default none (then browse).
    pub nodes: Option<Vec<Spanned<RawNode>>>,
    /// Variables found under a root at connect; default none (then nodes).
    pub browse: Option<Vec<Spanned<RawBrowse>>>,
    /// After a connection outage, read what the subscription missed from the server's
    /// history (nodes with Historizing = true); default false.
    pub backfill: Option<Spanned<bool>>,
    /// The longest outage filled, e.g. "1h" (the older part is reported, not read); default
    /// "1h".
    pub backfill_max: Option<Spanned<RawDuration>>,
    /// At most this many values per second read from the server's history; default 10000.
    #[schemars(range(min = 1, max = 1_000_000))]
    pub backfill_rate: Option<Spanned<i64>>,
    /// Shaped telemetry: one summary per node and window instead of every sample (Parquet
    /// keeps every sample); default none.
    pub telemetry: Option<Spanned<RawShaping>>,
}

/// `[plc.group.telemetry]`: what the group sends as telemetry: tumbling windows of its
/// numeric samples (`window`), or report by exception (deadbands, min and max interval).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawShaping {
    /// Window length, dividing a day: "10s", "1m", "15m"; not with report by exception.
    pub window: Option<Spanned<RawDuration>>,
    /// What each window says: min, max, mean, twa, first, last, count, sum; default all.
    pub aggregates: Option<Spanned<Vec<Spanned<String>>>>,
    /// The telemetry destinations shaped: "mqtt", "hub"; default both.
    pub to: Option<Spanned<Vec<Spanned<String>>>>,
    /// Report by exception: send a numeric sample only when it differs from the last one
    /// sent by more than this.
    pub deadband_absolute: Option<Spanned<f64>>,
    /// Report by exception: send a numeric sample only when it differs from the last one
    /// sent by more than this percentage of the last one's magnitude.
    pub deadband_percent: Option<Spanned<f64>>,
    /// Report by exception: at most one sample per node and this interval (the newest is
    /// sent at its end).
    pub min_interval: Option<Spanned<RawDuration>>,
    /// Report by exception: send a node's last value again when nothing was sent for this
    /// long (heartbeat).
    pub max_interval: Option<Spanned<RawDuration>>,
}

/// `[[plc.events]]`: an event subscription.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEvents {
    /// Name of the event stream (letters, digits, `_ . -`), unique among the plc's groups and
    /// events; required.
    #[schemars(required)]
    pub name: Option<Spanned<String>>,
    /// The node whose events are taken (an object with EventNotifier); default the Server
    /// object "i=2253" (every event of the server).
    pub source: Option<Spanned<String>>,
    /// Only events of these types and their subtypes, e.g. ["i=2915"] (AlarmConditionType);
    /// default all.
    pub types: Option<Vec<Spanned<String>>>,
    /// More event fields beside the standard ones: { path = "InputNode", type = "i=2915" }.
    pub fields: Option<Vec<Spanned<RawEventField>>>,
    /// How often the server publishes events; default "1s".
    pub publishing_interval: Option<Spanned<RawDuration>>,
    /// Events the server queues between publishes; default 1000.
    #[schemars(range(min = 1, max = 100_000))]
    pub queue_size: Option<Spanned<i64>>,
}

/// `{ path = "InputNode", type = "i=2915" }`: one more event field.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEventField {
    /// Browse path from the event type, `/`-separated, e.g. "ActiveState/Id"; a name of
    /// another namespace as "nsu=URI;Name"; required.
    #[schemars(required)]
    pub path: Option<Spanned<String>>,
    /// The event type that declares the field; default "i=2041" (BaseEventType).
    #[serde(rename = "type")]
    pub type_id: Option<Spanned<String>>,
}

/// `{ absolute = x }` or `{ percent = x }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct RawDeadband {
    /// A change of at least this much, in the value's unit (0 or more).
    #[schemars(range(min = 0))]
    pub absolute: Option<Spanned<f64>>,
    /// A change of at least this percent of the EURange (0 to 100).
    #[schemars(range(min = 0, max = 100))]
    pub percent: Option<Spanned<f64>>,
}

/// `"nsu=...;s=..."` or `{ id = "nsu=...;s=...", name = "alias" }`.
#[derive(Debug)]
pub enum RawNode {
    Id(String),
    Table(RawNodeTable),
}

/// `{ id = "nsu=...;s=...", name = "alias" }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawNodeTable {
    /// Node id, e.g. "nsu=urn:example:filler;s=Filler.Speed"; required.
    #[schemars(required)]
    pub id: Option<Spanned<String>>,
    /// Tag name in rows instead of the browse path; unique in the plc.
    pub name: Option<Spanned<String>>,
    /// Fields of a structure value that also land as rows `<tag>.<field>`, e.g.
    /// ["Speed", "Main.Speed", "Axes[1].Position"]; default none.
    pub flatten: Option<Spanned<Vec<Spanned<String>>>>,
    /// Report by exception of this node, overriding the group's `[plc.group.telemetry]`
    /// keys of the same name: { deadband_absolute, deadband_percent, min_interval,
    /// max_interval }.
    pub telemetry: Option<Spanned<RawNodeTelemetry>>,
}

/// `{ root, recursive, include, exclude }`: the variables under a root, found at connect.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBrowse {
    /// Node id to start from; required.
    #[schemars(required)]
    pub root: Option<Spanned<String>>,
    /// The whole tree below root; default false (its direct children only).
    pub recursive: Option<Spanned<bool>>,
    /// Glob on the browse path, e.g. "*Temp*"; default all.
    pub include: Option<Spanned<String>>,
    /// Glob on the browse path, applied after include; default none.
    pub exclude: Option<Spanned<String>>,
}

/// `[pki]`: the connector's OPC UA application certificate and trust lists.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPki {
    /// Directory of own/ trusted/ rejected/ issuers/; default "pki".
    pub dir: Option<Spanned<String>>,
    /// Accept unknown server certificates; default false (refused, copied to rejected/).
    pub trust_unknown_servers: Option<Spanned<bool>>,
}

/// `[sink.*]`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSinks {
    /// Parquet chunk files; absent: no Parquet output.
    pub parquet: Option<RawParquet>,
    /// An MQTT 3.1.1 or 5 broker; absent: no broker output.
    pub mqtt: Option<RawMqtt>,
}

/// `[sink.parquet]`: Parquet chunk files.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawParquet {
    /// Directory of the chunk files; default "data".
    pub dir: Option<Spanned<String>>,
    /// Directory of the events table ([[plc.events]]); default "<dir>-events".
    pub events_dir: Option<Spanned<String>>,
    /// zstd, zstd:LEVEL (1..=22), snappy, gzip or none; default "zstd" (level 3).
    #[schemars(with = "Option<CompressionName>")]
    pub compression: Option<Spanned<String>>,
    /// Close a chunk after this many rows; default 1000000.
    #[schemars(range(min = 1))]
    pub roll_rows: Option<Spanned<i64>>,
    /// ... or this many bytes; default "128MiB".
    pub roll_bytes: Option<Spanned<RawSize>>,
    /// ... or this long after it was opened; default "5m".
    pub roll_interval: Option<Spanned<RawDuration>>,
    /// Samples buffered before the writer (then backpressure); default 1000000.
    #[schemars(range(min = 1))]
    pub queue_samples: Option<Spanned<i64>>,
    /// Completed chunks together at most this, oldest deleted first; default 0 (no limit).
    pub max_bytes: Option<Spanned<RawSize>>,
    /// Completed chunks older than this are deleted; default "0s" (no limit).
    pub max_age: Option<Spanned<RawDuration>>,
    /// Free space to leave, oldest chunks deleted below it; default "256MiB" (0: off).
    pub min_free: Option<Spanned<RawSize>>,
    /// Every completed chunk uploaded to object storage or through IoT Hub; default none.
    pub upload: Option<Spanned<RawUpload>>,
}

/// `[sink.parquet.upload]`: every completed chunk to object storage or through IoT Hub.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawUpload {
    /// az://container/prefix, s3://bucket/prefix, gs://bucket/prefix or file:///dir; this or via.
    pub to: Option<Spanned<String>>,
    /// "iothub": IoT Hub's file upload with the [hub] identity (the hub's storage account); this or to.
    #[schemars(with = "Option<UploadVia>")]
    pub via: Option<Spanned<String>>,
    /// How long a chunk stays on disk after the store confirmed it ("0s": deleted at once); default: kept, the retention limits decide.
    pub keep_local: Option<Spanned<RawDuration>>,
    /// The store's settings (object_store configuration keys: aws_region, aws_endpoint, azure_storage_account_name, ...); no secrets.
    #[serde(default)]
    pub options: std::collections::BTreeMap<String, Spanned<String>>,
    /// Secret settings from environment variables: setting = "VARIABLE".
    #[serde(default)]
    pub secret_env: std::collections::BTreeMap<String, Spanned<String>>,
    /// Secret settings from files: setting = "/path/to/file".
    #[serde(default)]
    pub secret_file: std::collections::BTreeMap<String, Spanned<String>>,
}

/// `[sink.mqtt]`: a generic MQTT 3.1.1 / 5 broker.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMqtt {
    /// mqtt://host[:port] (plain, 1883), mqtts://host[:port] (TLS, 8883), wss://host[:port][/path] (MQTT over WebSockets with TLS, 443, path "/mqtt") or ws://host[:port][/path] (plain, 80); required.
    #[schemars(required)]
    pub url: Option<Spanned<String>>,
    /// HTTP proxy to tunnel the connection through (HTTP CONNECT), "http://host:port"; default none.
    pub proxy: Option<Spanned<String>>,
    /// User name for the proxy's basic authentication; default none.
    pub proxy_username: Option<Spanned<String>>,
    /// Environment variable holding the proxy password; only with proxy_username.
    pub proxy_password_env: Option<Spanned<String>>,
    /// File holding the proxy password; only with proxy_username.
    pub proxy_password_file: Option<Spanned<String>>,
    /// MQTT protocol version, "3.1.1" or "5"; default "3.1.1".
    pub version: Option<Spanned<RawVersion>>,
    /// Client id, unique on the broker; default "opcua-connector-{line.id}".
    pub client_id: Option<Spanned<String>>,
    /// User name; default none.
    pub username: Option<Spanned<String>>,
    /// Environment variable holding the password; only with username.
    pub password_env: Option<Spanned<String>>,
    /// File holding the password; only with username.
    pub password_file: Option<Spanned<String>>,
    // Known only to be refused with a helpful message; the value is never kept.
    /// Refused: no password in the file; use password_env or password_file.
    #[schemars(with = "Option<Refused>")]
    pub password: Option<Spanned<de::IgnoredAny>>,
    /// Telemetry topic with {site}, {line}, {plc}, {group}; default "opcua/{site}/{line}/{plc}/{group}".
    pub topic: Option<Spanned<String>>,
    /// Base of the cloud-to-PLC topics, {site} and {line} only; default "opcua/{site}/{line}/cmd".
    pub command_topic: Option<Spanned<String>>,
    /// 0 (at most once) or 1 (at least once); default 1.
    #[schemars(extend("enum" = [0, 1]))]
    pub qos: Option<Spanned<i64>>,
    /// Samples of one group per message at most; default 1000.
    #[schemars(range(min = 1))]
    pub batch_max_samples: Option<Spanned<i64>>,
    /// Longest wait for more samples, greater than 0; default "200ms".
    pub batch_max_delay: Option<Spanned<RawDuration>>,
    /// Largest message body, from "1KiB" to 268435455 bytes; default "256KiB".
    pub max_message_bytes: Option<Spanned<RawSize>>,
    /// json or json+gzip; default "json".
    #[schemars(with = "Option<PayloadName>")]
    pub payload: Option<Spanned<String>>,
    /// Keep-alive, whole seconds from "1s" to "65535s"; default "30s".
    pub keep_alive: Option<Spanned<RawDuration>>,
    /// { ca_file, cert_file, key_file }: TLS of an mqtts:// or wss:// url, which needs it.
    pub tls: Option<RawTls>,
    /// Serve [[write]] / [[method]] over plain mqtt:// without a username; default false.
    pub allow_insecure_commands: Option<Spanned<bool>>,
    /// Retained status topic ({site}, {line}) with a last will: "online" while connected, "offline" with the reason; default none.
    pub status_topic: Option<Spanned<String>>,
    /// Shortest time between two status updates, at least "1s"; default "30s"; only with status_topic.
    pub status_interval: Option<Spanned<RawDuration>>,
}

/// `tls = { ca_file, cert_file, key_file }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM file of the CA(s) of the broker's certificate, or "system" to trust the operating system's root certificates (an explicit opt-in); required.
    #[schemars(required)]
    pub ca_file: Option<Spanned<String>>,
    /// PEM client certificate, with key_file; default none.
    pub cert_file: Option<Spanned<String>>,
    /// PEM private key of cert_file.
    pub key_file: Option<Spanned<String>>,
}

/// `[hub]`: an Azure IoT Hub device or IoT Edge module identity.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHub {
    /// Environment variable holding the device or module connection string.
    pub connection_string_env: Option<Spanned<String>>,
    /// File holding the device or module connection string.
    pub connection_string_file: Option<Spanned<String>>,
    // Known only to be refused with a helpful message; the value is never kept.
    /// Refused (it holds the device key): use connection_string_env or connection_string_file.
    #[schemars(with = "Option<Refused>")]
    pub connection_string: Option<Spanned<de::IgnoredAny>>,
    /// An X.509 identity: { host, device_id, module_id, cert_file, key_file }.
    pub x509: Option<RawX509>,
    /// Lifetime of the SAS tokens, at least "2s"; default "1h"; not with x509.
    pub sas_ttl: Option<Spanned<RawDuration>>,
    /// Tests only: plain MQTT to this loopback host:port instead of the hub; default none.
    pub insecure_endpoint: Option<Spanned<String>>,
    /// Tests only: the hub's HTTPS API (file upload) at this loopback host:port, TLS still checked against the hub's name; default none.
    pub https_endpoint: Option<Spanned<String>>,
    /// PEM file of the hub's root CA, or "system" to trust the operating system's root certificates (an explicit opt-in); required unless insecure_endpoint without https_endpoint.
    pub ca_file: Option<Spanned<String>>,
    /// A TLS endpoint host:port instead of the hub's own (a private hub, a test hub), its certificate checked against that host; default none.
    pub endpoint: Option<Spanned<String>>,
    /// "mqtt" (MQTT over TLS, port 8883), "websockets" (MQTT over WebSockets over TLS, port 443) or "https" (telemetry only, POSTed every send_every, the connection closed between); default "mqtt".
    #[schemars(extend("enum" = ["mqtt", "websockets", "https"]))]
    pub transport: Option<Spanned<String>>,
    /// With transport = "https": how often the buffered telemetry is sent, at least "1s"; default "1m".
    pub send_every: Option<Spanned<RawDuration>>,
    /// HTTP proxy to tunnel the connection through (HTTP CONNECT), "http://host:port"; default none.
    pub proxy: Option<Spanned<String>>,
    /// User name for the proxy's basic authentication; default none.
    pub proxy_username: Option<Spanned<String>>,
    /// Environment variable holding the proxy password; only with proxy_username.
    pub proxy_password_env: Option<Spanned<String>>,
    /// File holding the proxy password; only with proxy_username.
    pub proxy_password_file: Option<Spanned<String>>,
    /// Samples of one group per message at most; default 500.
    #[schemars(range(min = 1))]
    pub batch_max_samples: Option<Spanned<i64>>,
    /// Longest wait for more samples, greater than 0; default "200ms".
    pub batch_max_delay: Option<Spanned<RawDuration>>,
    /// json or json+gzip; default "json".
    #[schemars(with = "Option<PayloadName>")]
    pub payload: Option<Spanned<String>>,
    /// A desired value still waiting for its PLC after this long is not written; default "1h".
    pub pending_write_max_age: Option<Spanned<RawDuration>>,
    /// Report the connector's state (version, PLC sessions, backlog) in the reported property connectorStatus, on change and at most this often, at least "1s"; default none (not reported).
    pub status_interval: Option<Spanned<RawDuration>>,
    /// IoT Plug and Play: the DTDL model id (DTMI, e.g. "dtmi:com:example:BottlingLine;1") announced at connect; default none.
    #[schemars(
        length(max = 128),
        regex(
            pattern = r"^dtmi:[A-Za-z](?:[A-Za-z0-9_]*[A-Za-z0-9])?(?::[A-Za-z](?:[A-Za-z0-9_]*[A-Za-z0-9])?)*;[1-9][0-9]{0,8}(?:\.[1-9][0-9]{0,5})?$"
        )
    )]
    pub model_id: Option<Spanned<String>>,
}

/// `x509 = { host, device_id, module_id, cert_file, key_file }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawX509 {
    /// The hub's host name, e.g. "myhub.azure-devices.net"; required.
    #[schemars(required)]
    pub host: Option<Spanned<String>>,
    /// IoT Hub device id; required.
    #[schemars(required)]
    pub device_id: Option<Spanned<String>>,
    /// IoT Edge module id; default none (a device identity).
    pub module_id: Option<Spanned<String>>,
    /// PEM certificate of the identity; required.
    #[schemars(required)]
    pub cert_file: Option<Spanned<String>>,
    /// PEM private key of cert_file; required.
    #[schemars(required)]
    pub key_file: Option<Spanned<String>>,
}

/// `[buffer]`: store-and-forward for the broker and hub sinks.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBuffer {
    /// Directory of the segment files; default "data/buffer".
    pub dir: Option<Spanned<String>>,
    /// Disk space the buffer may use, greater than 0; default "2GiB".
    pub max_bytes: Option<Spanned<RawSize>>,
    /// drop_oldest (evict the oldest) or pause (hold, then refuse new telemetry); default "drop_oldest".
    #[schemars(with = "Option<WhenFullName>")]
    pub when_full: Option<Spanned<String>>,
    /// Size of one segment file, at most max_bytes; default "16MiB".
    pub segment_bytes: Option<Spanned<RawSize>>,
    /// Free space to leave, else the buffer counts as full; default "256MiB" (0: off).
    pub min_free: Option<Spanned<RawSize>>,
}

/// `[[write]]`: a node the cloud may write, with its limits.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawWrite {
    /// Desired property (a dotted path when nested) or write-topic key, unique; required.
    #[schemars(required)]
    pub property: Option<Spanned<String>>,
    /// The id of a [[plc]] in this file; required.
    #[schemars(required)]
    pub plc: Option<Spanned<String>>,
    /// Node id to write; required.
    #[schemars(required)]
    pub node: Option<Spanned<String>>,
    /// OPC UA built-in type the value is written as; required.
    #[serde(rename = "type")]
    #[schemars(required, with = "Option<WriteTypeName>")]
    pub write_type: Option<Spanned<String>>,
    /// Smallest value accepted (numeric types only); default none.
    pub min: Option<Spanned<f64>>,
    /// Largest value accepted (numeric types only); default none.
    pub max: Option<Spanned<f64>>,
    /// Read the node after writing and report what the PLC holds; default true.
    pub readback: Option<Spanned<bool>>,
    /// At most one write to the node per this interval; default none.
    pub max_rate: Option<Spanned<RawDuration>>,
}

/// `[[method]]`: a direct method mapped to an OPC UA method call.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMethod {
    /// Direct method name, unique; required.
    #[schemars(required)]
    pub name: Option<Spanned<String>>,
    /// The id of a [[plc]] in this file; required.
    #[schemars(required)]
    pub plc: Option<Spanned<String>>,
    /// Node id of the object the method belongs to; required.
    #[schemars(required)]
    pub object: Option<Spanned<String>>,
    /// Node id of the method; required.
    #[schemars(required)]
    pub method: Option<Spanned<String>>,
    /// Longest wait for the call, greater than 0; default "10s".
    pub timeout: Option<Spanned<RawDuration>>,
}

/// `[metrics]`: the HTTP endpoint of Prometheus metrics and health.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// IP:PORT of /metrics and /healthz, e.g. "127.0.0.1:9464"; required.
    #[schemars(required)]
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
