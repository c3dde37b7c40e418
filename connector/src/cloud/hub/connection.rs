//! Device and module connection strings, and the identity they name.
//!
//! `HostName=myhub.azure-devices.net;DeviceId=line-a-edge;ModuleId=opcua-connector;SharedAccessKey=...`
//! (Azure IoT SDK parsers: `;`-separated `key=value`, a value may contain `=`). Errors never
//! carry the key, and [`SecretKey`]'s `Debug` prints `***`.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;

use super::sas;
use super::topics;
use crate::config::Payload;

/// A device or module symmetric key (base64 text). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(String);

impl SecretKey {
    /// Checks that `base64` is a non-empty standard base64 key.
    pub fn new(base64: &str) -> Result<SecretKey, ConnectionStringError> {
        match base64::engine::general_purpose::STANDARD.decode(base64) {
            Ok(bytes) if !bytes.is_empty() => Ok(SecretKey(base64.to_owned())),
            _ => Err(ConnectionStringError::BadKey),
        }
    }

    /// The base64 text, for signing SAS tokens.
    pub fn expose_base64(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Who the connector is on the hub: a device, or a module of a device (IoT Edge).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `{hub}.azure-devices.net`: in the username and the SAS resource URI.
    pub host: String,
    pub device_id: String,
    pub module_id: Option<String>,
}

impl Identity {
    /// The MQTT client id: `{device}` or `{device}/{module}`.
    pub fn client_id(&self) -> String {
        topics::client_id(&self.device_id, self.module_id.as_deref())
    }

    /// The MQTT username: `{host}/{device}[/{module}]/?api-version=2021-04-12`, with
    /// `&model-id={DTMI}` (percent-encoded) when the device announces an IoT Plug and Play
    /// model.
    pub fn username(&self, model_id: Option<&str>) -> String {
        topics::username(
            &self.host,
            &self.device_id,
            self.module_id.as_deref(),
            model_id,
        )
    }

    /// The SAS resource URI: `{host}/devices/{device}[/modules/{module}]`.
    pub fn resource_uri(&self) -> String {
        sas::resource_uri(&self.host, &self.device_id, self.module_id.as_deref())
    }

    /// The telemetry topic of one group's batches, with its property bag.
    pub fn telemetry_topic(&self, payload: Payload, plc: &str, group: &str) -> String {
        topics::telemetry_topic(
            &self.device_id,
            self.module_id.as_deref(),
            payload,
            plc,
            group,
        )
    }

    /// The topic of a local rule's alerts (`messageType=alert`).
    pub fn alert_topic(&self, payload: Payload, plc: &str, group: &str) -> String {
        topics::typed_topic(
            &self.device_id,
            self.module_id.as_deref(),
            payload,
            (plc, group),
            "alert",
        )
    }

    pub fn event_topic(&self, payload: Payload, plc: &str, group: &str) -> String {
        topics::event_topic(
            &self.device_id,
            self.module_id.as_deref(),
            payload,
            plc,
            group,
        )
    }
}

/// A parsed device or module connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionString {
    pub host_name: String,
    pub device_id: String,
    pub module_id: Option<String>,
    /// Signs SAS tokens; `None` with `x509`.
    pub shared_access_key: Option<SecretKey>,
    /// An IoT Edge parent to connect through instead of `host_name`.
    pub gateway_host_name: Option<String>,
    /// `x509=true`: authenticate with a client certificate, no SAS token.
    pub x509: bool,
}

impl ConnectionString {
    pub fn identity(&self) -> Identity {
        Identity {
            host: self.host_name.clone(),
            device_id: self.device_id.clone(),
            module_id: self.module_id.clone(),
        }
    }

    /// The host to open the connection to: the gateway if any, else the hub.
    pub fn connect_host(&self) -> &str {
        self.gateway_host_name.as_deref().unwrap_or(&self.host_name)
    }
}

/// Why a connection string is not usable. Never contains the key or a signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionStringError {
    #[error("connection string is empty")]
    Empty,
    #[error("connection string part {part} is not key=value")]
    NotKeyValue { part: usize },
    #[error("unknown connection string key {0}")]
    UnknownKey(String),
    #[error("connection string has {0} twice")]
    Duplicate(&'static str),
    #[error("connection string has an empty {0}")]
    EmptyValue(&'static str),
    #[error("connection string has no {0}")]
    Missing(&'static str),
    #[error("connection string {0} is not a valid IoT Hub id")]
    BadId(&'static str),
    #[error("connection string HostName is not a host name")]
    BadHost,
    #[error("connection string x509 must be true or false")]
    BadX509,
    #[error("connection string SharedAccessKey is not base64")]
    BadKey,
    #[error("connection string needs SharedAccessKey or x509=true")]
    NoCredential,
    #[error("connection string has both SharedAccessKey and x509=true: give one")]
    BothCredentials,
    #[error("connection string has a SharedAccessSignature: a pre-made token cannot be renewed, use a connection string with SharedAccessKey or x509=true")]
    PreMadeToken,
    #[error("connection string has SharedAccessKeyName: that is a service (policy) connection string, the connector needs a device or module connection string")]
    PolicyKey,
}

/// IoT Hub device and module ids (checked by the config too, hence defined there).
pub use crate::config::is_valid_id;

const KEYS: [&str; 8] = [
    "HostName",
    "DeviceId",
    "ModuleId",
    "SharedAccessKey",
    "GatewayHostName",
    "x509",
    "SharedAccessSignature",
    "SharedAccessKeyName",
];

/// An unknown key as shown in the error: by name only when it looks like one (letters and
/// `_`, as a malformed part could start with a fragment of the key), with a suggestion for a
/// known key in the wrong case.
fn describe_unknown_key(name: &str, part: usize) -> String {
    if !(1..=24).contains(&name.len())
        || !name.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_')
    {
        return format!("in part {part}");
    }
    match KEYS.iter().find(|k| k.eq_ignore_ascii_case(name)) {
        Some(known) => format!("{name} (did you mean {known}?)"),
        None => name.to_owned(),
    }
}

fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

impl FromStr for ConnectionString {
    type Err = ConnectionStringError;

    /// Surrounding whitespace (a trailing newline from a file) and empty parts (a trailing
    /// `;`) are ignored; keys are case-sensitive as in the Azure SDKs.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        use ConnectionStringError as E;
        let text = text.trim();
        if text.is_empty() {
            return Err(E::Empty);
        }
        let mut host = None;
        let mut device = None;
        let mut module = None;
        let mut key = None;
        let mut gateway = None;
        let mut x509 = None;
        for (i, part) in text.split(';').enumerate() {
            if part.trim().is_empty() {
                continue;
            }
            let (name, value) = part.split_once('=').ok_or(E::NotKeyValue { part: i + 1 })?;
            let (slot, name): (&mut Option<&str>, &'static str) = match name.trim() {
                "HostName" => (&mut host, "HostName"),
                "DeviceId" => (&mut device, "DeviceId"),
                "ModuleId" => (&mut module, "ModuleId"),
                "SharedAccessKey" => (&mut key, "SharedAccessKey"),
                "GatewayHostName" => (&mut gateway, "GatewayHostName"),
                "x509" | "X509Cert" => (&mut x509, "x509"),
                "SharedAccessSignature" => return Err(E::PreMadeToken),
                "SharedAccessKeyName" => return Err(E::PolicyKey),
                other => return Err(E::UnknownKey(describe_unknown_key(other, i + 1))),
            };
            if slot.is_some() {
                return Err(E::Duplicate(name));
            }
            let value = value.trim();
            if value.is_empty() {
                return Err(E::EmptyValue(name));
            }
            *slot = Some(value);
        }
        let host_name = host.ok_or(E::Missing("HostName"))?;
        if !is_host_name(host_name) {
            return Err(E::BadHost);
        }
        let device_id = device.ok_or(E::Missing("DeviceId"))?;
        if !is_valid_id(device_id) {
            return Err(E::BadId("DeviceId"));
        }
        if module.is_some_and(|m| !is_valid_id(m)) {
            return Err(E::BadId("ModuleId"));
        }
        if gateway.is_some_and(|g| !is_host_name(g)) {
            return Err(E::BadHost);
        }
        let x509 = match x509.map(str::to_ascii_lowercase).as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(_) => return Err(E::BadX509),
        };
        let shared_access_key = match (key, x509) {
            (Some(_), true) => return Err(E::BothCredentials),
            (None, false) => return Err(E::NoCredential),
            (Some(k), false) => Some(SecretKey::new(k)?),
            (None, true) => None,
        };
        Ok(ConnectionString {
            host_name: host_name.to_owned(),
            device_id: device_id.to_owned(),
            module_id: module.map(str::to_owned),
            shared_access_key,
            gateway_host_name: gateway.map(str::to_owned),
            x509,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "c2VjcmV0LWRldmljZS1rZXktMDAxLTAxMjM0NTY3ODk=";

    fn parse(text: &str) -> Result<ConnectionString, ConnectionStringError> {
        text.parse()
    }

    #[test]
    fn device_connection_string_with_key_parses() {
        let cs = parse(&format!(
            "HostName=myhub.azure-devices.net;DeviceId=device-001;SharedAccessKey={KEY}\n"
        ))
        .unwrap();
        assert_eq!(cs.host_name, "myhub.azure-devices.net");
        assert_eq!(cs.device_id, "device-001");
        assert_eq!(cs.module_id, None);
        assert_eq!(
            cs.shared_access_key.as_ref().map(SecretKey::expose_base64),
            Some(KEY)
        );
        assert!(!cs.x509);
        assert_eq!(cs.connect_host(), "myhub.azure-devices.net");
        assert_eq!(cs.identity().client_id(), "device-001");
    }

    #[test]
    fn module_connection_string_through_a_gateway_parses() {
        let cs = parse(&format!(
            "HostName=myhub.azure-devices.net;DeviceId=line-a-edge;ModuleId=opcua-connector;\
             SharedAccessKey={KEY};GatewayHostName=edge-gw.local;"
        ))
        .unwrap();
        assert_eq!(cs.module_id.as_deref(), Some("opcua-connector"));
        assert_eq!(cs.connect_host(), "edge-gw.local");
        let id = cs.identity();
        assert_eq!(id.client_id(), "line-a-edge/opcua-connector");
        assert_eq!(
            id.username(None),
            "myhub.azure-devices.net/line-a-edge/opcua-connector/?api-version=2021-04-12"
        );
        assert_eq!(
            id.username(Some("dtmi:com:example:Line;3")),
            "myhub.azure-devices.net/line-a-edge/opcua-connector/?api-version=2021-04-12\
             &model-id=dtmi%3Acom%3Aexample%3ALine%3B3"
        );
        assert_eq!(
            id.resource_uri(),
            "myhub.azure-devices.net/devices/line-a-edge/modules/opcua-connector"
        );
        assert_eq!(
            id.telemetry_topic(Payload::Json, "filler", "fast"),
            "devices/line-a-edge/modules/opcua-connector/messages/events/\
             $.ct=application%2Fjson&$.ce=utf-8&plc=filler&group=fast"
        );
    }

    #[test]
    fn x509_connection_string_has_no_key() {
        for flag in ["x509=true", "x509=True", "X509Cert=true"] {
            let cs = parse(&format!("HostName=h.example;DeviceId=d;{flag}")).unwrap();
            assert!(cs.x509);
            assert_eq!(cs.shared_access_key, None);
        }
    }

    #[test]
    fn key_value_splits_at_the_first_equals_sign() {
        // Base64 padding: the value keeps its `=`s.
        let cs = parse("HostName=h;DeviceId=a=b;SharedAccessKey=AAE=").unwrap();
        assert_eq!(cs.device_id, "a=b");
        assert_eq!(cs.shared_access_key.unwrap().expose_base64(), "AAE=");
    }

    #[test]
    fn bad_connection_strings_are_refused_with_the_reason() {
        use ConnectionStringError as E;
        let cases: &[(&str, E)] = &[
            ("", E::Empty),
            ("  \n", E::Empty),
            ("HostName=h;DeviceId", E::NotKeyValue { part: 2 }),
            ("HostName=h;Foo=1", E::UnknownKey("Foo".into())),
            (
                "HostName=h;DeviceID=d",
                E::UnknownKey("DeviceID (did you mean DeviceId?)".into()),
            ),
            ("HostName=h;Key2=d", E::UnknownKey("in part 2".into())),
            ("HostName=h;HostName=g", E::Duplicate("HostName")),
            ("HostName=;DeviceId=d", E::EmptyValue("HostName")),
            ("DeviceId=d;x509=true", E::Missing("HostName")),
            ("HostName=h;x509=true", E::Missing("DeviceId")),
            ("HostName=h/x;DeviceId=d;x509=true", E::BadHost),
            ("HostName=h;DeviceId=a b;x509=true", E::BadId("DeviceId")),
            (
                "HostName=h;DeviceId=d;ModuleId=a/b;x509=true",
                E::BadId("ModuleId"),
            ),
            ("HostName=h;DeviceId=d;x509=yes", E::BadX509),
            ("HostName=h;DeviceId=d", E::NoCredential),
            ("HostName=h;DeviceId=d;x509=false", E::NoCredential),
            (
                "HostName=h;DeviceId=d;SharedAccessKey=AAE=;x509=true",
                E::BothCredentials,
            ),
            (
                "HostName=h;DeviceId=d;SharedAccessKey=not base64!",
                E::BadKey,
            ),
            (
                "HostName=h;DeviceId=d;SharedAccessSignature=SharedAccessSignature sr=x&sig=y&se=1",
                E::PreMadeToken,
            ),
            (
                "HostName=h;SharedAccessKeyName=iothubowner;SharedAccessKey=AAE=",
                E::PolicyKey,
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text).as_ref(), Err(expected), "{text:?}");
        }
    }

    #[test]
    fn errors_and_debug_never_show_the_key() {
        let secret = "c3VwZXItc2VjcmV0LWtleS12YWx1ZQ==";
        let cs = parse(&format!("HostName=h;DeviceId=d;SharedAccessKey={secret}")).unwrap();
        let debug = format!("{cs:?}");
        assert!(!debug.contains(secret) && debug.contains("***"), "{debug}");
        for bad in [
            format!("HostName=h;DeviceId=d;SharedAccessKey={secret}!"),
            format!("HostName=h;DeviceId=d;SharedAccessKey={secret};x509=true"),
            format!("HostName=h;DeviceId=d;SharedAccessKey={secret};{secret}"),
            format!("HostName=h;DeviceId=d;{secret}x=1"),
            format!("HostName=h;DeviceId=d;SharedAccessSignature={secret}"),
        ] {
            let e = parse(&bad).unwrap_err().to_string();
            assert!(!e.contains(secret) && !e.contains("c3VwZXI"), "{e}");
        }
    }
}
