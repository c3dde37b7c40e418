//! What goes to a broker: `[sink.mqtt]` (its url, topic templates, tls, proxy and status),
//! and the pieces `[hub]` ([`super::hub`]) shares with it: TLS roots, proxies, payloads.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::raw::Spanned;

use super::{format_size, Check};
use crate::config::raw::{Quantity, RawDuration, RawMqtt, RawTls};
use crate::config::types::*;

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
    let found = schemes
        .iter()
        .find_map(|&(scheme, tls, ws, port)| url.strip_prefix(scheme).map(|r| (r, tls, ws, port)));
    let (_, tls, websocket, default_port) = found.unwrap_or(("", false, false, 0));
    let rest = without_user_info(
        url,
        found.map(|f| f.0),
        ("url", "url"),
        URL_FORMS,
        "username and password_env or password_file",
    )?;
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

/// `rest`, what follows a known scheme of `url` (`None`: no known scheme), refused when it
/// carries user info; the errors never echo a url that may hold credentials. `what`: the
/// key's name in the scheme error and in the credentials error.
fn without_user_info<'a>(
    url: &str,
    rest: Option<&'a str>,
    (what, what_with_credentials): (&str, &str),
    forms: &str,
    use_instead: &str,
) -> Result<&'a str, String> {
    let Some(rest) = rest else {
        return Err(if url.contains('@') {
            format!("the {what} must be {forms}")
        } else {
            format!("{what} {url:?} must be {forms}")
        });
    };
    if rest.contains('@') {
        return Err(format!(
            "credentials in the {what_with_credentials} are not allowed: use {use_instead}"
        ));
    }
    Ok(rest)
}

/// `http://host[:port]` of an HTTP proxy (port 80 by default), without credentials.
fn parse_proxy_url(url: &str) -> Result<(String, u16), String> {
    let rest = without_user_info(
        url,
        url.strip_prefix("http://"),
        ("proxy", "proxy url"),
        "http://host:port (an HTTP proxy taking CONNECT)",
        "proxy_username and proxy_password_env or proxy_password_file",
    )?;
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
pub(super) struct RawProxy<'a> {
    pub url: &'a Option<Spanned<String>>,
    pub username: &'a Option<Spanned<String>>,
    pub password_env: &'a Option<Spanned<String>>,
    pub password_file: &'a Option<Spanned<String>>,
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
    pub(super) fn proxy(&mut self, raw: RawProxy<'_>, table: &str) -> Option<Option<ProxyConfig>> {
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

    /// A duration of at least 1 s (`status_interval`, `send_every`), `default` when absent.
    pub(super) fn at_least_a_second(
        &mut self,
        value: Option<&Spanned<RawDuration>>,
        key: &str,
        default: Duration,
    ) -> Option<Duration> {
        let Some(v) = value else {
            return Some(default);
        };
        let d = self.duration(v, key)?;
        if d < Duration::from_secs(1) {
            self.at(v, key, "must be at least 1s");
            return None;
        }
        Some(d)
    }

    pub(super) fn payload(
        &mut self,
        value: &Option<Spanned<String>>,
        key: &str,
    ) -> Option<Payload> {
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
                let interval = self.at_least_a_second(
                    interval.as_ref(),
                    &k("status_interval"),
                    DEFAULT_STATUS_INTERVAL,
                );
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
}
