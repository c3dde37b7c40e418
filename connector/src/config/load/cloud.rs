//! What goes to the cloud: `[sink.mqtt]` (its url, topic templates and tls) and `[hub]` (its
//! identity: a connection string or x509).

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::raw::Spanned;

use super::{format_size, is_loopback_host, optional, Check, Span, DEFAULT_PENDING_WRITE_MAX_AGE};
use crate::config::raw::{
    Quantity, RawDuration, RawHub, RawMethod, RawMqtt, RawTls, RawWrite, RawX509,
};
use crate::config::types::*;
use crate::config::{check_model_id, is_valid_id};

/// `[sink.mqtt]` defaults.
pub const DEFAULT_MQTT_PORT: u16 = 1883;
pub const DEFAULT_MQTTS_PORT: u16 = 8883;
pub const DEFAULT_MQTT_TOPIC: &str = "opcua/{site}/{line}/{plc}/{group}";
/// The default topic when `line.site` is not set.
pub const DEFAULT_MQTT_TOPIC_NO_SITE: &str = "opcua/{line}/{plc}/{group}";
/// The default base of the cloud-to-PLC topics.
pub const DEFAULT_COMMAND_TOPIC: &str = "opcua/{site}/{line}/cmd";
/// The default base of the cloud-to-PLC topics when `line.site` is not set.
pub const DEFAULT_COMMAND_TOPIC_NO_SITE: &str = "opcua/{line}/cmd";
pub const DEFAULT_MQTT_QOS: u8 = 1;
pub const DEFAULT_MQTT_BATCH_MAX_SAMPLES: usize = 1000;
pub const DEFAULT_BATCH_MAX_DELAY: Duration = Duration::from_millis(200);
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// The smallest `max_message_bytes`: one message must hold at least one sample.
pub const MIN_MAX_MESSAGE_BYTES: u64 = 1024;
/// The MQTT limit on a packet's remaining length.
pub const MAX_MQTT_PACKET_BYTES: u64 = 268_435_455;
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(30);

/// `[hub]` defaults.
pub const DEFAULT_SAS_TTL: Duration = Duration::from_secs(3600);
/// Short enough for tests of token renewal; real deployments keep the default.
pub const MIN_SAS_TTL: Duration = Duration::from_secs(2);
pub const DEFAULT_HUB_BATCH_MAX_SAMPLES: usize = 500;
/// How often `transport = "https"` sends by default.
pub const DEFAULT_SEND_EVERY: Duration = Duration::from_secs(60);
/// The shortest time between two status updates by default.
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(30);

/// `mqtt://`, `mqtts://`, `ws://` or `wss://` with `host[:port]` (IPv6 hosts in brackets),
/// and a path for the WebSockets ones, split up.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MqttUrl {
    /// As written.
    text: String,
    tls: bool,
    host: String,
    port: u16,
    /// The upgrade request's path (WebSockets), `None` for MQTT over TCP.
    websocket_path: Option<String>,
}

/// The path of a `ws://` or `wss://` url without one.
pub const DEFAULT_WEBSOCKET_PATH: &str = "/mqtt";
const URL_FORMS: &str =
    "mqtt://host[:port], mqtts://host[:port], ws://host[:port][/path] or wss://host[:port][/path]";

/// Never echoes a url that may carry credentials.
fn parse_mqtt_url(url: &str) -> Result<MqttUrl, String> {
    let schemes = [
        ("mqtts://", true, false, DEFAULT_MQTTS_PORT),
        ("mqtt://", false, false, DEFAULT_MQTT_PORT),
        ("wss://", true, true, 443),
        ("ws://", false, true, 80),
    ];
    let Some((rest, tls, websocket, default_port)) = schemes
        .iter()
        .find_map(|&(scheme, tls, ws, port)| url.strip_prefix(scheme).map(|r| (r, tls, ws, port)))
    else {
        return Err(if url.contains('@') {
            format!("the url must be {URL_FORMS}")
        } else {
            format!("url {url:?} must be {URL_FORMS}")
        });
    };
    if rest.contains('@') {
        return Err(
            "credentials in the url are not allowed: use username and password_env or password_file"
                .to_owned(),
        );
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.contains(['?', '#']) || path.contains(['?', '#']) {
        return Err(format!("url {url:?} must be {URL_FORMS}, without a query"));
    }
    let websocket_path = if websocket {
        Some(if path.is_empty() {
            DEFAULT_WEBSOCKET_PATH.to_owned()
        } else {
            path.to_owned()
        })
    } else {
        if !path.is_empty() && path != "/" {
            return Err(format!(
                "url {url:?} must be {URL_FORMS}: only WebSockets urls have a path"
            ));
        }
        None
    };
    let (host, port) =
        split_host_port(authority).map_err(|reason| format!("url {url:?}: {reason}"))?;
    Ok(MqttUrl {
        text: url.to_owned(),
        tls,
        host: host.to_owned(),
        port: port.unwrap_or(default_port),
        websocket_path,
    })
}

/// `http://host[:port]` of an HTTP proxy (port 80 by default), without credentials.
fn parse_proxy_url(url: &str) -> Result<(String, u16), String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(if url.contains('@') {
            "the proxy must be http://host:port (an HTTP proxy taking CONNECT)".to_owned()
        } else {
            format!("proxy {url:?} must be http://host:port (an HTTP proxy taking CONNECT)")
        });
    };
    if rest.contains('@') {
        return Err(
            "credentials in the proxy url are not allowed: use proxy_username and proxy_password_env or proxy_password_file"
                .to_owned(),
        );
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) {
        return Err(format!(
            "proxy {url:?} must be http://host:port, without a path"
        ));
    }
    let (host, port) =
        split_host_port(authority).map_err(|reason| format!("proxy {url:?}: {reason}"))?;
    Ok((host.to_owned(), port.unwrap_or(80)))
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`; the host without brackets.
fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "unclosed [ in an IPv6 host".to_owned())?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("unexpected {p:?} after the IPv6 host"))?,
            ),
        };
        (host, port)
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("no host".to_owned());
    }
    let port = port
        .map(|p| match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("port {p:?} must be 1..=65535")),
        })
        .transpose()?;
    Ok((host, port))
}

/// `host:port` with a port (for `hub.insecure_endpoint`).
pub(super) fn parse_host_port(text: &str) -> Result<(&str, u16), String> {
    if text.contains("://") {
        return Err(format!(
            "{text:?} must be host:port, without a scheme, e.g. \"127.0.0.1:1883\""
        ));
    }
    match split_host_port(text) {
        Ok((host, Some(port))) => Ok((host, port)),
        Ok((_, None)) => Err(format!(
            "{text:?} has no port: write host:port, e.g. \"127.0.0.1:1883\""
        )),
        Err(reason) => Err(format!("{text:?} is not host:port: {reason}")),
    }
}

/// The placeholders a topic template may use.
pub const TOPIC_PLACEHOLDERS: [&str; 4] = ["site", "line", "plc", "group"];

/// A topic to publish to, with `{site}`, `{line}`, `{plc}` and `{group}` placeholders.
fn check_topic_template(template: &str, has_site: bool) -> Result<(), String> {
    if template.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if template.contains(['+', '#']) {
        return Err(format!(
            "topic {template:?} contains a wildcard (+ or #), which a published topic cannot have"
        ));
    }
    if template.starts_with('$') {
        return Err(format!(
            "topic {template:?} starts with $, which brokers reserve for themselves"
        ));
    }
    if template.contains('\0') {
        return Err("topic must not contain a NUL character".to_owned());
    }
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        if rest[i..].starts_with('}') {
            return Err(format!("topic {template:?} has a '}}' without '{{'"));
        }
        let after = &rest[i + 1..];
        let end = after
            .find(['{', '}'])
            .filter(|&j| after[j..].starts_with('}'))
            .ok_or_else(|| format!("topic {template:?} has a '{{' without '}}'"))?;
        let name = &after[..end];
        if !TOPIC_PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "unknown placeholder {{{name}}} in topic {template:?}: use {{site}}, {{line}}, {{plc}} or {{group}}"
            ));
        }
        if name == "site" && !has_site {
            return Err(format!(
                "topic {template:?} uses {{site}} but line.site is not set"
            ));
        }
        rest = &after[end + 1..];
    }
    Ok(())
}

const MQTTS_NEEDS_CA: &str = "missing: give tls.ca_file, the PEM file of the CA that signed the broker's certificate (an mqtts:// or wss:// url needs it), or \"system\" to trust the operating system's roots";
const SYSTEM_ROOTS: &str = "trusts every root certificate of the operating system's store (any public CA can vouch for the server): prefer the PEM file of the one CA that signs it";

/// The proxy keys of `[sink.mqtt]` and `[hub]`.
struct RawProxy<'a> {
    url: &'a Option<Spanned<String>>,
    username: &'a Option<Spanned<String>>,
    password_env: &'a Option<Spanned<String>>,
    password_file: &'a Option<Spanned<String>>,
}

impl Check<'_> {
    /// `ca_file`: a PEM file, or `"system"` (warned about).
    pub(super) fn ca_roots(&mut self, value: &Spanned<String>, key: &str) -> Option<CaRoots> {
        if value.get_ref() == "system" {
            self.warn(Some(value.span()), key, SYSTEM_ROOTS);
            return Some(CaRoots::System);
        }
        self.non_empty(value, key)
            .map(|f| CaRoots::File(PathBuf::from(f)))
    }

    /// `proxy`, `proxy_username`, `proxy_password_env` / `_file` under `table`.
    fn proxy(&mut self, raw: RawProxy<'_>, table: &str) -> Option<Option<ProxyConfig>> {
        let k = |name: &str| format!("{table}.{name}");
        let password = self.secret_ref(raw.password_env, raw.password_file, &k("proxy_password"));
        let Some(url) = raw.url else {
            for (given, name) in [
                (raw.username, "proxy_username"),
                (raw.password_env, "proxy_password_env"),
                (raw.password_file, "proxy_password_file"),
            ] {
                if let Some(given) = given {
                    self.at(given, &k(name), "proxy credentials need a proxy");
                    return None;
                }
            }
            return Some(None);
        };
        let parsed = match parse_proxy_url(url.get_ref()) {
            Ok(p) => Some(p),
            Err(message) => {
                self.at(url, &k("proxy"), message);
                None
            }
        };
        let username = self.optional_non_empty(raw.username, &k("proxy_username"));
        let password = password?;
        if raw.username.is_none() {
            for (given, name) in [
                (raw.password_env, "proxy_password_env"),
                (raw.password_file, "proxy_password_file"),
            ] {
                if let Some(given) = given {
                    self.at(given, &k(name), "a proxy password needs proxy_username");
                    return None;
                }
            }
        }
        if let (Some(u), Some(_)) = (raw.username, &password) {
            self.warn(Some(u.span()), &k("proxy_username"), "basic authentication at an http:// proxy: the proxy password crosses the network in clear (to the proxy; the broker or hub connection itself stays TLS)");
        }
        let (host, port) = parsed?;
        Some(Some(ProxyConfig {
            url: url.get_ref().clone(),
            host,
            port,
            username: username?,
            password,
        }))
    }

    /// A status interval: at least 1 s, default 30 s.
    fn status_interval(
        &mut self,
        value: Option<&Spanned<RawDuration>>,
        key: &str,
    ) -> Option<Duration> {
        let Some(v) = value else {
            return Some(DEFAULT_STATUS_INTERVAL);
        };
        let d = self.duration(v, key)?;
        if d < Duration::from_secs(1) {
            self.at(v, key, "must be at least 1s");
            return None;
        }
        Some(d)
    }

    fn payload(&mut self, value: &Option<Spanned<String>>, key: &str) -> Option<Payload> {
        let Some(p) = value else {
            return Some(Payload::Json);
        };
        match p.get_ref().as_str() {
            "json" => Some(Payload::Json),
            "json+gzip" => Some(Payload::JsonGzip),
            other => {
                self.at(
                    p,
                    key,
                    format!("unknown payload {other:?}: use json or json+gzip"),
                );
                None
            }
        }
    }

    pub(super) fn mqtt(
        &mut self,
        raw: &RawMqtt,
        line_id: &str,
        has_site: bool,
    ) -> Option<MqttSinkConfig> {
        let k = |name: &str| format!("sink.mqtt.{name}");
        let header = self.header("sink.mqtt");
        let url = self.required(&raw.url, header, &k("url")).and_then(|u| {
            match parse_mqtt_url(u.get_ref()) {
                Ok(parsed) => Some((u, parsed)),
                Err(message) => {
                    self.at(u, &k("url"), message);
                    None
                }
            }
        });
        let version = match &raw.version {
            None => Some(MqttVersion::V311),
            Some(v) => {
                let parsed = match &v.get_ref().0 {
                    Quantity::Text(t) if t == "3.1.1" => Some(MqttVersion::V311),
                    Quantity::Text(t) if t == "5" || t == "5.0" => Some(MqttVersion::V5),
                    Quantity::Integer(5) => Some(MqttVersion::V5),
                    _ => None,
                };
                if parsed.is_none() {
                    let written = match &v.get_ref().0 {
                        Quantity::Text(t) => format!("{t:?}"),
                        Quantity::Integer(n) => n.to_string(),
                        Quantity::Float(x) => x.to_string(),
                    };
                    let message = format!("unknown MQTT version {written}: use \"3.1.1\" or \"5\"");
                    self.at(v, &k("version"), message);
                }
                parsed
            }
        };
        let client_id = match &raw.client_id {
            None => Some(format!("opcua-connector-{line_id}")),
            Some(c) => self.non_empty(c, &k("client_id")),
        };
        let username = self.optional_non_empty(&raw.username, &k("username"));
        if let Some(p) = &raw.password {
            self.at(p, &k("password"), "inline passwords are not allowed: use password_env (an environment variable name) or password_file");
        }
        let mut password = self.secret_ref(&raw.password_env, &raw.password_file, &k("password"));
        if raw.username.is_none() {
            for (given, name) in [
                (&raw.password_env, "password_env"),
                (&raw.password_file, "password_file"),
            ] {
                if let Some(given) = given {
                    self.at(given, &k(name), "a password needs a username");
                    password = None;
                    break;
                }
            }
        }
        let topic = match &raw.topic {
            None if has_site => Some(DEFAULT_MQTT_TOPIC.to_owned()),
            None => Some(DEFAULT_MQTT_TOPIC_NO_SITE.to_owned()),
            Some(t) => match check_topic_template(t.get_ref(), has_site) {
                Ok(()) => Some(t.get_ref().clone()),
                Err(message) => {
                    self.at(t, &k("topic"), message);
                    None
                }
            },
        };
        let command_topic = match &raw.command_topic {
            None if has_site => Some(DEFAULT_COMMAND_TOPIC.to_owned()),
            None => Some(DEFAULT_COMMAND_TOPIC_NO_SITE.to_owned()),
            Some(t) => {
                let text = t.get_ref();
                let checked = check_topic_template(text, has_site).and_then(|()| {
                    if text.contains("{plc}") || text.contains("{group}") {
                        Err(format!("command topic {text:?} is per line: only {{site}} and {{line}} can be used"))
                    } else {
                        Ok(())
                    }
                });
                match checked {
                    Ok(()) => Some(text.trim_end_matches('/').to_owned()),
                    Err(message) => {
                        self.at(t, &k("command_topic"), message);
                        None
                    }
                }
            }
        };
        let qos = match &raw.qos {
            None => Some(DEFAULT_MQTT_QOS),
            Some(q) => match *q.get_ref() {
                0 => Some(0),
                1 => Some(1),
                2 => {
                    self.at(q, &k("qos"), "qos 2 is not supported: use 1 (at least once); every message carries a seq number per group, so consumers can drop duplicates without the extra round trips of qos 2");
                    None
                }
                n => {
                    self.at(q, &k("qos"), format!("qos {n} must be 0 or 1"));
                    None
                }
            },
        };
        let batch_max_samples = match &raw.batch_max_samples {
            None => NonZeroUsize::new(DEFAULT_MQTT_BATCH_MAX_SAMPLES),
            Some(n) => self.count(n, &k("batch_max_samples")),
        };
        let batch_max_delay = match &raw.batch_max_delay {
            None => Some(DEFAULT_BATCH_MAX_DELAY),
            Some(d) => self.positive_duration(d, &k("batch_max_delay")),
        };
        let max_message_bytes = match &raw.max_message_bytes {
            None => Some(DEFAULT_MAX_MESSAGE_BYTES),
            Some(b) => self.size(b, &k("max_message_bytes")).and_then(|n| {
                let message = if n < MIN_MAX_MESSAGE_BYTES {
                    format!("{} is too small: at least 1KiB, so that one message holds at least one sample", format_size(n))
                } else if n > MAX_MQTT_PACKET_BYTES {
                    format!("{} is above the MQTT packet limit of {MAX_MQTT_PACKET_BYTES} bytes", format_size(n))
                } else {
                    return usize::try_from(n).ok();
                };
                self.at(b, &k("max_message_bytes"), message);
                None
            }),
        };
        let payload = self.payload(&raw.payload, &k("payload"));
        let keep_alive = match &raw.keep_alive {
            None => Some(DEFAULT_KEEP_ALIVE),
            Some(d) => self.duration(d, &k("keep_alive")).and_then(|ka| {
                let whole = ka.subsec_nanos() == 0;
                if whole && (1..=u64::from(u16::MAX)).contains(&ka.as_secs()) {
                    return Some(ka);
                }
                self.at(
                    d,
                    &k("keep_alive"),
                    "must be whole seconds from 1s to 65535s (MQTT sends it in seconds, 16 bits)",
                );
                None
            }),
        };
        let proxy = self.proxy(
            RawProxy {
                url: &raw.proxy,
                username: &raw.proxy_username,
                password_env: &raw.proxy_password_env,
                password_file: &raw.proxy_password_file,
            },
            "sink.mqtt",
        );
        let tls = raw.tls.as_ref().map(|t| self.tls(t));
        let tls = match (&url, tls) {
            // The url is already reported.
            (None, _) => None,
            (Some((_, u)), None) if !u.tls => Some(None),
            (Some((span, _)), None) => {
                self.at(span, &k("tls.ca_file"), MQTTS_NEEDS_CA);
                None
            }
            (Some((span, u)), Some(_)) if !u.tls => {
                let at = raw
                    .tls
                    .as_ref()
                    .and_then(|t| {
                        [&t.ca_file, &t.cert_file, &t.key_file]
                            .into_iter()
                            .flatten()
                            .next()
                    })
                    .map_or_else(|| span.span(), |s| s.span());
                self.problem(
                    Some(at),
                    &k("tls"),
                    "tls needs an mqtts:// or wss:// url (this one is plain)",
                );
                None
            }
            (Some((span, _)), Some(Some(t))) if t.ca_file.is_none() => {
                self.at(span, &k("tls.ca_file"), MQTTS_NEEDS_CA);
                None
            }
            (Some(_), Some(t)) => t.map(Some),
        };
        let status = match (&raw.status_topic, &raw.status_interval) {
            (None, None) => Some(None),
            (None, Some(i)) => {
                self.at(
                    i,
                    &k("status_interval"),
                    "status_interval needs status_topic",
                );
                None
            }
            (Some(t), interval) => {
                let text = t.get_ref();
                let checked = check_topic_template(text, has_site).and_then(|()| {
                    if text.contains("{plc}") || text.contains("{group}") {
                        Err(format!("status topic {text:?} is per line: only {{site}} and {{line}} can be used"))
                    } else {
                        Ok(())
                    }
                });
                let topic = match checked {
                    Ok(()) => Some(text.clone()),
                    Err(message) => {
                        self.at(t, &k("status_topic"), message);
                        None
                    }
                };
                let interval = self.status_interval(interval.as_ref(), &k("status_interval"));
                topic.zip(interval).map(Some)
            }
        };
        let (_, url) = url?;
        Some(MqttSinkConfig {
            status: status?,
            url: url.text,
            host: url.host,
            port: url.port,
            tls: tls?,
            transport: match url.websocket_path {
                Some(path) => MqttTransport::WebSockets { path },
                None => MqttTransport::Tcp,
            },
            proxy: proxy?,
            version: version?,
            client_id: client_id?,
            username: username?,
            password: password?,
            topic: topic?,
            command_topic: command_topic?,
            qos: qos?,
            batch_max_samples: batch_max_samples?,
            batch_max_delay: batch_max_delay?,
            max_message_bytes: max_message_bytes?,
            payload: payload?,
            allow_insecure_commands: raw
                .allow_insecure_commands
                .as_ref()
                .is_some_and(|a| *a.get_ref()),
            keep_alive: keep_alive?,
        })
    }

    fn tls(&mut self, raw: &RawTls) -> Option<TlsConfig> {
        let k = |name: &str| format!("sink.mqtt.tls.{name}");
        let ca_file = match &raw.ca_file {
            None => Some(None),
            Some(ca) => self.ca_roots(ca, &k("ca_file")).map(Some),
        };
        let pair = match (&raw.cert_file, &raw.key_file) {
            (None, None) => Some((None, None)),
            (Some(c), Some(key)) => {
                let c = self.non_empty(c, &k("cert_file"));
                let key = self.non_empty(key, &k("key_file"));
                c.zip(key).map(|(c, key)| (Some(c), Some(key)))
            }
            (Some(c), None) => {
                self.at(
                    c,
                    &k("key_file"),
                    "missing: a client certificate needs cert_file and key_file",
                );
                None
            }
            (None, Some(key)) => {
                self.at(
                    key,
                    &k("cert_file"),
                    "missing: a client certificate needs cert_file and key_file",
                );
                None
            }
        };
        let (cert_file, key_file) = pair?;
        Some(TlsConfig {
            ca_file: ca_file?,
            cert_file: cert_file.map(PathBuf::from),
            key_file: key_file.map(PathBuf::from),
        })
    }

    /// `dps`: the file's `[dps]` when it has one (`Some(None)`: with problems), which assigns
    /// the identity.
    pub(super) fn hub(
        &mut self,
        raw: &RawHub,
        dps: Option<Option<DpsConfig>>,
    ) -> Option<HubConfig> {
        let k = |name: &str| format!("hub.{name}");
        let header = self.header("hub");
        if let Some(inline) = &raw.connection_string {
            self.at(inline, &k("connection_string"), "inline connection strings are not allowed (they hold the device key): use connection_string_env (an environment variable name) or connection_string_file");
        }
        let auth = match (
            &raw.connection_string_env,
            &raw.connection_string_file,
            &raw.x509,
        ) {
            _ if dps.is_some() => self.hub_dps_identity(raw, dps.clone().flatten()),
            (None, None, None) => {
                if raw.connection_string.is_none() {
                    self.problem(header.clone(), "hub", "missing identity: give connection_string_env, connection_string_file or x509 = { host, device_id, cert_file, key_file }");
                }
                None
            }
            (env, file, None) => self
                .secret_ref(env, file, &k("connection_string"))
                .and_then(|s| s.map(HubAuth::ConnectionString)),
            (None, None, Some(x)) => self.x509(x, header.clone()),
            (env, file, Some(_)) => {
                let given = env
                    .as_ref()
                    .map(|e| (e, "connection_string_env"))
                    .or(file.as_ref().map(|f| (f, "connection_string_file")));
                if let Some((given, name)) = given {
                    self.at(
                        given,
                        &k(name),
                        "give a connection string or x509, not both",
                    );
                }
                None
            }
        };
        let sas_ttl = match &raw.sas_ttl {
            None => Some(DEFAULT_SAS_TTL),
            Some(t) if raw.x509.is_some() => {
                self.at(
                    t,
                    &k("sas_ttl"),
                    "x509 authentication uses no SAS token: remove sas_ttl",
                );
                None
            }
            Some(t) => self.duration(t, &k("sas_ttl")).and_then(|d| {
                if d < MIN_SAS_TTL {
                    self.at(t, &k("sas_ttl"), "must be at least 2s (default 1h)");
                    return None;
                }
                Some(d)
            }),
        };
        let insecure_endpoint = self.test_endpoint(
            raw.insecure_endpoint.as_ref(),
            &k("insecure_endpoint"),
            "plain MQTT to the hub (no TLS): for tests against a local hub double only",
            "insecure_endpoint sends the SAS token in clear and takes commands from whoever answers, so it is allowed on 127.0.0.1, ::1 or localhost only (tests)",
        );
        // TLS on the hub's HTTPS API (file upload), checked against the hub's name.
        let https_endpoint = self.test_endpoint(
            raw.https_endpoint.as_ref(),
            &k("https_endpoint"),
            "the hub's HTTPS API is reached at a loopback address: for tests against a local hub double only",
            "https_endpoint is for tests against a local hub double (127.0.0.1, ::1 or localhost)",
        );
        let endpoint = match (&raw.endpoint, &raw.insecure_endpoint) {
            (None, _) => Some(None),
            (Some(e), Some(_)) => {
                self.at(
                    e,
                    &k("endpoint"),
                    "give endpoint (TLS) or insecure_endpoint (plain, tests only), not both",
                );
                None
            }
            (Some(e), None) => match parse_host_port(e.get_ref()) {
                Ok(_) => Some(Some(e.get_ref().clone())),
                Err(message) => {
                    self.at(e, &k("endpoint"), message);
                    None
                }
            },
        };
        let transport = match &raw.transport {
            None => Some(HubTransport::Mqtt),
            Some(t) => match t.get_ref().as_str() {
                "mqtt" => Some(HubTransport::Mqtt),
                "websockets" if raw.insecure_endpoint.is_some() => {
                    self.at(t, &k("transport"), "websockets is MQTT over WebSockets over TLS: not with insecure_endpoint (plain MQTT); use endpoint for a TLS test hub");
                    None
                }
                "websockets" => Some(HubTransport::WebSockets),
                "https" if raw.insecure_endpoint.is_some() => {
                    self.at(t, &k("transport"), "https is TLS: not with insecure_endpoint (plain MQTT); use endpoint for a TLS test hub");
                    None
                }
                "https" => {
                    let every = match &raw.send_every {
                        None => Some(DEFAULT_SEND_EVERY),
                        Some(given) => self.duration(given, &k("send_every")).and_then(|d| {
                            if d < Duration::from_secs(1) {
                                self.at(given, &k("send_every"), "must be at least 1s");
                                return None;
                            }
                            Some(d)
                        }),
                    };
                    if let Some(i) = &raw.status_interval {
                        self.at(i, &k("status_interval"), "reported properties need the twin, which transport = \"https\" does not have: use mqtt or websockets");
                    }
                    if let Some(x) = &raw.x509 {
                        if let Some(m) = &x.module_id {
                            self.at(m, &k("x509.module_id"), "transport = \"https\" sends a device's telemetry; IoT Hub takes no module telemetry over HTTPS");
                        }
                    }
                    every.map(|send_every| HubTransport::Https { send_every })
                }
                other => {
                    self.at(
                        t,
                        &k("transport"),
                        format!("unknown transport {other:?}: use \"mqtt\" (port 8883), \"websockets\" (port 443) or \"https\" (telemetry only)"),
                    );
                    None
                }
            },
        };
        if let (Some(every), false) = (
            &raw.send_every,
            matches!(transport, Some(HubTransport::Https { .. })),
        ) {
            if raw
                .transport
                .as_ref()
                .is_none_or(|t| t.get_ref() != "https")
            {
                self.at(
                    every,
                    &k("send_every"),
                    "send_every goes with transport = \"https\"",
                );
            }
        }
        let proxy = self.proxy(
            RawProxy {
                url: &raw.proxy,
                username: &raw.proxy_username,
                password_env: &raw.proxy_password_env,
                password_file: &raw.proxy_password_file,
            },
            "hub",
        );
        let ca_file = match (&raw.ca_file, &raw.insecure_endpoint, &raw.https_endpoint) {
            (Some(ca), Some(_), None) => {
                self.at(ca, &k("ca_file"), "ca_file is not used with insecure_endpoint (plain MQTT, for tests only): remove one, or give https_endpoint (a test hub's HTTPS API, which uses it)");
                None
            }
            (Some(ca), _, _) => self.ca_roots(ca, &k("ca_file")).map(Some),
            (None, Some(_), None) => Some(None),
            (None, _, _) => {
                self.problem(header, &k("ca_file"), "missing: give ca_file, the PEM file of the hub's root CA (DigiCert Global Root G2 for Azure IoT Hub), or \"system\" to trust the operating system's roots");
                None
            }
        };
        let batch_max_samples = match &raw.batch_max_samples {
            None => NonZeroUsize::new(DEFAULT_HUB_BATCH_MAX_SAMPLES),
            Some(n) => self.count(n, &k("batch_max_samples")),
        };
        let batch_max_delay = match &raw.batch_max_delay {
            None => Some(DEFAULT_BATCH_MAX_DELAY),
            Some(d) => self.positive_duration(d, &k("batch_max_delay")),
        };
        let payload = self.payload(&raw.payload, &k("payload"));
        let pending_write_max_age = match &raw.pending_write_max_age {
            None => Some(DEFAULT_PENDING_WRITE_MAX_AGE),
            Some(d) => self.positive_duration(d, &k("pending_write_max_age")),
        };
        let status_interval = match &raw.status_interval {
            None => Some(None),
            Some(i) => self
                .status_interval(Some(i), &k("status_interval"))
                .map(Some),
        };
        let model_id = match &raw.model_id {
            None => Some(None),
            Some(m) => match check_model_id(m.get_ref()) {
                Ok(()) => Some(Some(m.get_ref().clone())),
                Err(message) => {
                    self.at(m, &k("model_id"), message);
                    None
                }
            },
        };
        if raw.connection_string.is_some() {
            return None;
        }
        Some(HubConfig {
            status_interval: status_interval?,
            auth: auth?,
            sas_ttl: sas_ttl?,
            insecure_endpoint: insecure_endpoint?,
            https_endpoint: https_endpoint?,
            endpoint: endpoint?,
            transport: transport?,
            proxy: proxy?,
            ca_file: ca_file?,
            batch_max_samples: batch_max_samples?,
            batch_max_delay: batch_max_delay?,
            payload: payload?,
            pending_write_max_age: pending_write_max_age?,
            model_id: model_id?,
        })
    }

    /// `[hub] transport = "https"` serves no requests: `[[write]]` / `[[method]]` are an error
    /// when nothing else uses them (no `[sink.mqtt]`, no `[[rule]]`), else a warning.
    pub(super) fn https_commands(
        &mut self,
        writes: &[Spanned<RawWrite>],
        methods: &[Spanned<RawMethod>],
        broker: bool,
        rules: bool,
    ) {
        let first = writes
            .first()
            .map(|w| (w.span(), "write"))
            .or_else(|| methods.first().map(|m| (m.span(), "method")));
        let Some((span, what)) = first else {
            return;
        };
        let message = "transport = \"https\" carries telemetry only: the hub's twin, direct methods and cloud-to-device messages need mqtt or websockets";
        if broker || rules {
            let message =
                format!("{message}; [[write]] / [[method]] serve [sink.mqtt] and local rules only");
            self.warn(Some(span), &format!("{what}[0]"), message);
        } else {
            let message = format!("{message}, and nothing else here ([sink.mqtt], [[rule]]) uses [[write]] / [[method]]: remove them or use transport = \"mqtt\"");
            self.problem(Some(span), &format!("{what}[0]"), message);
        }
    }

    /// A tests-only `host:port` of `[hub]`: on loopback a warning (`warning`), elsewhere an
    /// error (`why` says why loopback only). `Some(None)`: not given.
    fn test_endpoint(
        &mut self,
        raw: Option<&Spanned<String>>,
        key: &str,
        warning: &str,
        why: &str,
    ) -> Option<Option<String>> {
        let Some(e) = raw else {
            return Some(None);
        };
        match parse_host_port(e.get_ref()) {
            Ok((host, _)) if is_loopback_host(host) => {
                self.warn(Some(e.span()), key, warning);
                Some(Some(e.get_ref().clone()))
            }
            Ok((host, _)) => {
                self.at(e, key, format!("{host:?} is not a loopback address: {why}"));
                None
            }
            Err(message) => {
                self.at(e, key, message);
                None
            }
        }
    }

    fn x509(&mut self, raw: &RawX509, header: Span) -> Option<HubAuth> {
        let k = |name: &str| format!("hub.x509.{name}");
        // The inline table has no span of its own: point at its first key.
        let parent = [
            &raw.host,
            &raw.device_id,
            &raw.module_id,
            &raw.cert_file,
            &raw.key_file,
        ]
        .into_iter()
        .flatten()
        .next()
        .map(Spanned::span)
        .or(header);
        let host = self.required(&raw.host, parent.clone(), &k("host")).and_then(|h| {
            let v = h.get_ref();
            let ok = !v.is_empty()
                && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
            if !ok {
                self.at(h, &k("host"), format!("{v:?} is not a host name: write the hub's host name, e.g. \"myhub.azure-devices.net\""));
            }
            ok.then(|| v.clone())
        });
        let mut id = |value: &Spanned<String>, name: &str| {
            let v = value.get_ref();
            if is_valid_id(v) {
                Some(v.clone())
            } else {
                self.at(value, &k(name), format!("{v:?} is not an IoT Hub id: 1 to 128 of A-Z a-z 0-9 - : . + % _ # * ? ! ( ) , = @ ; $ '"));
                None
            }
        };
        let device_id = raw.device_id.as_ref().map(|d| id(d, "device_id"));
        let module_id = raw.module_id.as_ref().map(|m| id(m, "module_id"));
        if raw.device_id.is_none() {
            self.problem(parent.clone(), &k("device_id"), "missing");
        }
        let cert_file = self
            .required(&raw.cert_file, parent.clone(), &k("cert_file"))
            .and_then(|c| self.non_empty(c, &k("cert_file")));
        let key_file = self
            .required(&raw.key_file, parent, &k("key_file"))
            .and_then(|c| self.non_empty(c, &k("key_file")));
        Some(HubAuth::X509 {
            host: host?,
            device_id: device_id??,
            module_id: optional(module_id)?,
            cert_file: cert_file.map(PathBuf::from)?,
            key_file: key_file.map(PathBuf::from)?,
        })
    }
}
