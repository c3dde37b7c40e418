//! The validated settings of the cloud destinations: `[sink.mqtt]`, `[hub]` (its identity,
//! transport, TLS roots and proxy) and the `[buffer]` they send from.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use super::types::Secret;
use super::DpsConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttVersion {
    V311,
    V5,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    Json,
    JsonGzip,
}

/// The certificates a TLS server's chain must end in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaRoots {
    /// A PEM file of one or more CA certificates.
    File(PathBuf),
    /// The operating system's root store (`ca_file = "system"`, an explicit opt-in that
    /// `check` points out).
    System,
}

impl std::fmt::Display for CaRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaRoots::File(p) => write!(f, "{}", p.display()),
            CaRoots::System => f.write_str("the system's root certificates"),
        }
    }
}

/// An HTTP proxy that the MQTT connection is tunnelled through (HTTP CONNECT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// `http://host:port` as written (no credentials in it).
    pub url: String,
    pub host: String,
    pub port: u16,
    /// Basic authentication: the username, with the password from the environment or a file.
    pub username: Option<String>,
    pub password: Option<Secret>,
}

/// How an MQTT connection is carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MqttTransport {
    /// MQTT straight over TCP (TLS when configured).
    Tcp,
    /// MQTT over WebSockets (`ws://`, `wss://`): the upgrade request's path.
    WebSockets { path: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The CA of the broker's certificate: a PEM file, or the system's roots when asked for
    /// (`"system"`); required for mqtts:// and wss://.
    pub ca_file: Option<CaRoots>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MqttSinkConfig {
    /// `mqtt://host:port`, `mqtts://host:port`, `ws://host:port/path` or
    /// `wss://host:port/path`.
    pub url: String,
    pub host: String,
    pub port: u16,
    pub tls: Option<TlsConfig>,
    pub transport: MqttTransport,
    /// An HTTP CONNECT proxy between the connector and the broker.
    pub proxy: Option<ProxyConfig>,
    pub version: MqttVersion,
    /// Client id; default `opcua-connector-{line}`.
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Template with `{site}`, `{line}`, `{plc}`, `{group}`.
    pub topic: String,
    /// Base of the cloud-to-PLC topics (template with `{site}`, `{line}`): write requests on
    /// `{base}/write`, answers on `{base}/write/response`; method calls on
    /// `{base}/method/{name}`, answers on `{base}/method/{name}/response`.
    pub command_topic: String,
    /// 0 or 1 (never 2).
    pub qos: u8,
    pub batch_max_samples: NonZeroUsize,
    pub batch_max_delay: Duration,
    pub max_message_bytes: usize,
    pub payload: Payload,
    pub keep_alive: Duration,
    /// Serve writes and methods over plain `mqtt://` without a username (explicit opt-in).
    pub allow_insecure_commands: bool,
    /// The retained status topic (template with `{site}`, `{line}`) and the shortest time
    /// between two updates.
    pub status: Option<(String, Duration)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubAuth {
    /// A device or module connection string from an environment variable or a file.
    ConnectionString(Secret),
    X509 {
        host: String,
        device_id: String,
        module_id: Option<String>,
        cert_file: PathBuf,
        key_file: PathBuf,
    },
    /// Assigned by the Device Provisioning Service (`[dps]`) at the first start.
    Dps(Box<DpsConfig>),
}

/// How the connection to IoT Hub is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubTransport {
    /// MQTT over TLS on port 8883.
    Mqtt,
    /// MQTT over WebSockets over TLS on port 443, where a firewall allows only HTTPS.
    WebSockets,
    /// Telemetry only, POSTed over HTTPS on a schedule with the connection closed between
    /// (no twin, methods or cloud-to-device messages).
    Https { send_every: Duration },
}

/// IoT Hub's limit for one device-to-cloud message (body and properties).
pub const HUB_MAX_MESSAGE_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct HubConfig {
    pub auth: HubAuth,
    /// SAS token lifetime; renewed (reconnect with a fresh token) before it expires.
    pub sas_ttl: Duration,
    /// Tests only: connect to this `host:port` with plain MQTT instead of the hub's 8883/TLS.
    pub insecure_endpoint: Option<String>,
    /// Tests only: the hub's HTTPS API (file upload) at this loopback `host:port` instead of
    /// the hub's 443; TLS is still checked against the hub's host name.
    pub https_endpoint: Option<String>,
    /// A TLS endpoint instead of the hub's (`host:port`, e.g. a private or test hub): the
    /// certificate is checked against that host.
    pub endpoint: Option<String>,
    /// MQTT on 8883, or MQTT over WebSockets on 443 (`/$iothub/websocket`).
    pub transport: HubTransport,
    /// An HTTP CONNECT proxy between the connector and the hub.
    pub proxy: Option<ProxyConfig>,
    /// The roots of the hub's TLS (a PEM file, or the system's on request); required but with
    /// a plain `insecure_endpoint`.
    pub ca_file: Option<CaRoots>,
    pub batch_max_samples: NonZeroUsize,
    pub batch_max_delay: Duration,
    pub payload: Payload,
    /// A desired value waiting for its PLC longer than this is not written: acknowledged
    /// 400 expired.
    pub pending_write_max_age: Duration,
    /// The connector's state in the reported property `connectorStatus`, at most this often.
    pub status_interval: Option<Duration>,
    /// IoT Plug and Play: the DTDL model id (a DTMI) announced in the MQTT username.
    pub model_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Evict the oldest buffered messages (counted) to make room.
    DropOldest,
    /// Stop taking new samples: backpressure up to the OPC UA side.
    Pause,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub when_full: WhenFull,
    /// Size of one segment file.
    pub segment_bytes: u64,
    /// Free space to leave on the buffer's file system: below it the buffer counts as full
    /// (`when_full` applies).
    pub min_free: u64,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            dir: PathBuf::from("data/buffer"),
            max_bytes: 2 << 30,
            when_full: WhenFull::DropOldest,
            segment_bytes: 16 << 20,
            min_free: 256 << 20,
        }
    }
}
