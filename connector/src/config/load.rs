//! Stage two: read the file, deserialize it into [`raw`](super::raw) structs, then validate
//! into [`Config`], collecting every problem with its file, line and key path.
//!
//! Nothing here touches the environment or the files a config names: `password_env` is read
//! and `password_file`, `cert_file` are opened when a session connects. Relative paths (pki
//! dir, parquet dir, cert and password files) are kept exactly as written, so they are
//! relative to the working directory of the process, not to the config file.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::raw::{
    self, Quantity, RawAuth, RawBrowse, RawBuffer, RawConfig, RawDuration, RawGroup, RawHub,
    RawMethod, RawMqtt, RawNode, RawParquet, RawPlc, RawSize, RawTls, RawWrite, RawX509,
};
use super::types::*;
use crate::sinks::hub::is_valid_id;

/// Default `[pki] dir`.
pub const DEFAULT_PKI_DIR: &str = "pki";
/// Default `[sink.parquet] dir`.
pub const DEFAULT_PARQUET_DIR: &str = "data";
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
pub const DEFAULT_ROLL_ROWS: usize = 1_000_000;
pub const DEFAULT_ROLL_BYTES: u64 = 128 * 1024 * 1024;
pub const DEFAULT_ROLL_INTERVAL: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_QUEUE_SAMPLES: usize = 1_000_000;
pub const DEFAULT_METHOD_TIMEOUT: Duration = Duration::from_secs(10);

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

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Every problem found, in file order of discovery; displayed one per line.
    #[error("{}", ProblemList(.0))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// The problems of an invalid config (empty for I/O errors).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(problems) => problems,
            ConfigError::Io { .. } => &[],
        }
    }
}

/// One thing wrong with a config file: `FILE:LINE: KEY: MESSAGE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// 1-based; `None` when the problem is the absence of something.
    pub line: Option<usize>,
    /// Key path such as `plc[0].group[1].publishing_interval`; empty for TOML syntax errors.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

struct ProblemList<'a>(&'a [Problem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Reads and validates one line's config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

/// Validates config text; `source` names the file in problems and in [`Config::source`].
pub fn parse(source: &Path, text: &str) -> Result<Config, ConfigError> {
    let mut check = Check {
        file: source,
        text,
        problems: Vec::new(),
    };
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            check.toml_error(&e);
            return Err(ConfigError::Invalid(check.problems));
        }
    };
    match check.config(raw) {
        Some(config) if check.problems.is_empty() => Ok(config),
        _ => Err(ConfigError::Invalid(check.problems)),
    }
}

/// `"64MiB"`, `"128MB"`, `"1GiB"`, `"512 KiB"`, `"100B"`, `"1.5GiB"`: binary (KiB, MiB, GiB,
/// TiB) and decimal (KB, MB, GB, TB) units, case-insensitive.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(t.len());
    let (number, unit) = (t[..split].replace('_', ""), t[split..].trim());
    if number.is_empty() {
        return Err(format!(
            "{text:?} is not a size: expected a number and a unit, e.g. \"64MiB\""
        ));
    }
    if unit.is_empty() {
        return Err(format!(
            "{text:?} has no unit: write \"{number}B\", \"{number}KiB\" or \"{number}MiB\""
        ));
    }
    let factor: u64 = match unit.to_ascii_lowercase().as_str() {
        "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => {
            return Err(format!(
            "unknown size unit {unit:?} in {text:?}: use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB"
        ))
        }
    };
    let too_big = || format!("size {text:?} is too large");
    if let Ok(n) = number.parse::<u64>() {
        return n.checked_mul(factor).ok_or_else(too_big);
    }
    match number.parse::<f64>() {
        Ok(x) if x.is_finite() => {
            let bytes = (x * factor as f64).round();
            if bytes >= u64::MAX as f64 {
                Err(too_big())
            } else {
                Ok(bytes as u64)
            }
        }
        _ => Err(format!("{text:?} is not a size: bad number {number:?}")),
    }
}

/// The shortest exact form: `128MiB`, `1GiB`, `1500B`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, factor) in UNITS {
        if bytes >= factor && bytes % factor == 0 {
            return format!("{}{unit}", bytes / factor);
        }
    }
    format!("{bytes}B")
}

/// `mqtt://host[:port]` or `mqtts://host[:port]` (IPv6 hosts in brackets), split up.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MqttUrl {
    /// As written.
    text: String,
    tls: bool,
    host: String,
    port: u16,
}

/// Never echoes a url that may carry credentials.
fn parse_mqtt_url(url: &str) -> Result<MqttUrl, String> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("mqtt://") {
        (false, rest)
    } else {
        return Err(if url.contains('@') {
            "the url must start with mqtt:// or mqtts://".to_owned()
        } else {
            format!("url {url:?} must start with mqtt:// or mqtts://")
        });
    };
    if rest.contains('@') {
        return Err(
            "credentials in the url are not allowed: use username and password_env or password_file"
                .to_owned(),
        );
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) {
        return Err(format!(
            "url {url:?} must be mqtt://host[:port] or mqtts://host[:port], without a path"
        ));
    }
    let default_port = if tls {
        DEFAULT_MQTTS_PORT
    } else {
        DEFAULT_MQTT_PORT
    };
    let (host, port) =
        split_host_port(authority).map_err(|reason| format!("url {url:?}: {reason}"))?;
    Ok(MqttUrl {
        text: url.to_owned(),
        tls,
        host: host.to_owned(),
        port: port.unwrap_or(default_port),
    })
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
fn parse_host_port(text: &str) -> Result<(&str, u16), String> {
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

const MQTTS_NEEDS_CA: &str = "missing: give tls.ca_file, the PEM file of the CA that signed the broker's certificate (an mqtts:// url needs it; the system's roots are not used)";

/// Names safe in file paths and MQTT topics.
fn is_safe_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// An optional key after validation: absent (`Some(None)`), valid (`Some(Some(v))`) or
/// invalid (`None`, already reported).
fn optional<T>(checked: Option<Option<T>>) -> Option<Option<T>> {
    checked.map_or(Some(None), |v| v.map(Some))
}

fn is_env_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Validation state: the problems found so far.
struct Check<'a> {
    file: &'a Path,
    text: &'a str,
    problems: Vec<Problem>,
}

type Span = Option<Range<usize>>;

impl Check<'_> {
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn problem(&mut self, span: Span, key: &str, message: impl Into<String>) {
        let line = span.map(|s| self.line_of(s.start));
        self.problems.push(Problem {
            file: self.file.to_owned(),
            line,
            key: key.to_owned(),
            message: message.into(),
        });
    }

    fn at<T>(&mut self, value: &Spanned<T>, key: &str, message: impl Into<String>) {
        self.problem(Some(value.span()), key, message);
    }

    fn toml_error(&mut self, e: &toml::de::Error) {
        let span = e.span();
        let key = span
            .as_ref()
            .and_then(|s| raw::key_path_at(self.text, s.start))
            .unwrap_or_default();
        let message = e
            .message()
            .trim()
            .replace('\n', "; ")
            .replace("unknown field", "unknown key");
        self.problem(span, &key, message);
    }

    /// The span of a `[name]` header line, for problems about a table that has no key to
    /// point at.
    fn header(&self, name: &str) -> Span {
        let mut offset = 0;
        for line in self.text.split_inclusive('\n') {
            let t = line.trim_start();
            if let Some(rest) = t.strip_prefix('[') {
                if rest
                    .trim_start()
                    .strip_prefix(name)
                    .is_some_and(|r| r.trim_start().starts_with(']'))
                {
                    return Some(offset..offset + line.len());
                }
            }
            offset += line.len();
        }
        None
    }

    /// A required key: reports it missing at `parent`.
    fn required<'v, T>(
        &mut self,
        value: &'v Option<Spanned<T>>,
        parent: Span,
        key: &str,
    ) -> Option<&'v Spanned<T>> {
        if value.is_none() {
            self.problem(parent, key, "missing");
        }
        value.as_ref()
    }

    fn name(&mut self, value: &Spanned<String>, key: &str) -> Option<String> {
        let v = value.get_ref();
        if is_safe_name(v) {
            Some(v.clone())
        } else {
            self.at(value, key, format!(
                "{v:?} is not a safe name: use only letters, digits, '_', '.' and '-' (it appears in file paths and topics)"
            ));
            None
        }
    }

    fn non_empty(&mut self, value: &Spanned<String>, key: &str) -> Option<String> {
        if value.get_ref().trim().is_empty() {
            self.at(value, key, "must not be empty");
            None
        } else {
            Some(value.get_ref().clone())
        }
    }

    fn node(&mut self, value: &Spanned<String>, key: &str) -> Option<NodeRef> {
        match value.get_ref().parse::<NodeRef>() {
            Ok(node) => Some(node),
            Err(e) => {
                self.at(value, key, e.to_string());
                None
            }
        }
    }

    fn duration(&mut self, value: &Spanned<RawDuration>, key: &str) -> Option<Duration> {
        let add_unit = |n: &str| format!("bare number {n}: add a unit, e.g. \"{n}ms\" or \"{n}s\"");
        let message = match &value.get_ref().0 {
            Quantity::Integer(n) => add_unit(&n.to_string()),
            Quantity::Float(x) => add_unit(&x.to_string()),
            Quantity::Text(t)
                if !t.is_empty() && t.trim().bytes().all(|b| b.is_ascii_digit() || b == b'.') =>
            {
                format!(
                    "{t:?} has no unit: add a unit, e.g. \"{0}ms\" or \"{0}s\"",
                    t.trim()
                )
            }
            Quantity::Text(t) => match humantime::parse_duration(t) {
                Ok(d) => return Some(d),
                Err(e) => {
                    format!("{t:?} is not a duration ({e}); write e.g. \"250ms\", \"5s\", \"1h\"")
                }
            },
        };
        self.at(value, key, message);
        None
    }

    fn positive_duration(&mut self, value: &Spanned<RawDuration>, key: &str) -> Option<Duration> {
        let d = self.duration(value, key)?;
        if d.is_zero() {
            self.at(value, key, "must be greater than 0");
            return None;
        }
        Some(d)
    }

    fn size(&mut self, value: &Spanned<RawSize>, key: &str) -> Option<u64> {
        let result = match &value.get_ref().0 {
            Quantity::Integer(n) => {
                u64::try_from(*n).map_err(|_| format!("size {n} must not be negative"))
            }
            Quantity::Float(x) => Err(format!(
                "size {x} is not a whole number of bytes: write e.g. \"64MiB\""
            )),
            Quantity::Text(t) => parse_size(t),
        };
        result.map_err(|message| self.at(value, key, message)).ok()
    }

    fn count(&mut self, value: &Spanned<i64>, key: &str) -> Option<NonZeroUsize> {
        let n = usize::try_from(*value.get_ref())
            .ok()
            .and_then(NonZeroUsize::new);
        if n.is_none() {
            self.at(
                value,
                key,
                format!("must be a positive integer, not {}", value.get_ref()),
            );
        }
        n
    }

    fn config(&mut self, raw: RawConfig) -> Option<Config> {
        // The broker sink needs the line's id and whether it has a site, even when [line]
        // itself has problems (reported once, by `line`).
        let line_id = raw
            .line
            .as_ref()
            .and_then(|l| l.id.as_ref())
            .map(|id| id.get_ref().clone())
            .unwrap_or_default();
        let has_site = raw.line.as_ref().is_some_and(|l| l.site.is_some());
        let line = self.line(raw.line);
        if raw.plc.is_empty() {
            self.problem(
                None,
                "plc",
                "no [[plc]] configured: a line needs at least one plc",
            );
        }
        let mut plcs = Vec::new();
        let mut plc_ids: Vec<(String, usize)> = Vec::new();
        for (i, plc) in raw.plc.iter().enumerate() {
            let key = format!("plc[{i}]");
            if let Some(id) = &plc.get_ref().id {
                if let Some((_, first)) = plc_ids.iter().find(|(seen, _)| seen == id.get_ref()) {
                    let message =
                        format!("duplicate plc id {:?} (also plc[{first}])", id.get_ref());
                    self.at(id, &format!("{key}.id"), message);
                } else {
                    plc_ids.push((id.get_ref().clone(), i));
                }
            }
            plcs.push(self.plc(plc.get_ref(), Some(plc.span()), &key));
        }
        let plc_names: Vec<String> = plc_ids.into_iter().map(|(id, _)| id).collect();
        let pki = self.pki(raw.pki);
        let (parquet, mqtt) = match raw.sink {
            Some(sink) => (sink.parquet, sink.mqtt),
            None => (None, None),
        };
        let parquet = parquet.map(|p| self.parquet(p));
        let mqtt = mqtt.map(|m| self.mqtt(&m, &line_id, has_site));
        let hub = raw.hub.map(|h| self.hub(&h));
        let buffer = self.buffer(raw.buffer.as_ref());
        let writes: Vec<_> = self.writes(&raw.write, &plc_names);
        let methods: Vec<_> = self.methods(&raw.method, &plc_names);
        let metrics = raw.metrics.map(|m| {
            let listen = self.required(&m.listen, self.header("metrics"), "metrics.listen")?;
            match listen.get_ref().parse::<SocketAddr>() {
                Ok(listen) => Some(MetricsConfig { listen }),
                Err(_) => {
                    let message = format!(
                        "{:?} is not an address: write IP:PORT, e.g. \"127.0.0.1:9464\"",
                        listen.get_ref()
                    );
                    self.at(listen, "metrics.listen", message);
                    None
                }
            }
        });
        Some(Config {
            source: self.file.to_owned(),
            line: line?,
            plcs: plcs.into_iter().collect::<Option<_>>()?,
            pki: pki?,
            parquet: optional(parquet)?,
            mqtt: optional(mqtt)?,
            hub: optional(hub)?,
            buffer: buffer?,
            writes: writes.into_iter().collect::<Option<_>>()?,
            methods: methods.into_iter().collect::<Option<_>>()?,
            metrics: optional(metrics)?,
        })
    }

    fn line(&mut self, raw: Option<raw::RawLine>) -> Option<Line> {
        let Some(raw) = raw else {
            self.problem(None, "line", "missing [line] table with the line id");
            return None;
        };
        let id = self
            .required(&raw.id, self.header("line"), "line.id")
            .and_then(|id| self.name(id, "line.id"));
        let site = raw.site.as_ref().map(|s| self.name(s, "line.site"));
        Some(Line {
            id: id?,
            site: optional(site)?,
        })
    }

    fn plc(&mut self, raw: &RawPlc, span: Span, key: &str) -> Option<Plc> {
        let id = self
            .required(&raw.id, span.clone(), &format!("{key}.id"))
            .and_then(|id| self.name(id, &format!("{key}.id")));
        let endpoint = self
            .required(&raw.endpoint, span.clone(), &format!("{key}.endpoint"))
            .and_then(|e| {
                let v = e.get_ref();
                let host = v
                    .strip_prefix("opc.tcp://")
                    .map(|rest| rest.split(['/', ':']).next().unwrap_or(""));
                match host {
                    Some(h) if !h.is_empty() => Some(v.clone()),
                    Some(_) => {
                        self.at(
                            e,
                            &format!("{key}.endpoint"),
                            format!("endpoint {v:?} has no host"),
                        );
                        None
                    }
                    None => {
                        self.at(
                            e,
                            &format!("{key}.endpoint"),
                            format!("endpoint {v:?} must start with opc.tcp://"),
                        );
                        None
                    }
                }
            });
        let (policy, mode) = self.security(raw, key);
        let auth = self.auth(raw.auth.as_ref(), span, key);

        let mut groups = Vec::new();
        let mut names: Vec<(String, usize)> = Vec::new();
        let mut aliases: HashSet<String> = HashSet::new();
        for (j, group) in raw.group.iter().enumerate() {
            let gkey = format!("{key}.group[{j}]");
            if let Some(name) = &group.get_ref().name {
                if let Some((_, first)) = names.iter().find(|(seen, _)| seen == name.get_ref()) {
                    let message = format!(
                        "duplicate group name {:?} in this plc (also {key}.group[{first}])",
                        name.get_ref()
                    );
                    self.at(name, &format!("{gkey}.name"), message);
                } else {
                    names.push((name.get_ref().clone(), j));
                }
            }
            groups.push(self.group(group.get_ref(), Some(group.span()), &gkey, &mut aliases));
        }
        Some(Plc {
            id: id?,
            endpoint: endpoint?,
            security_policy: policy?,
            security_mode: mode?,
            auth: auth?,
            groups: groups.into_iter().collect::<Option<_>>()?,
        })
    }

    fn security(
        &mut self,
        raw: &RawPlc,
        key: &str,
    ) -> (Option<SecurityPolicy>, Option<SecurityMode>) {
        let pkey = format!("{key}.security_policy");
        let mkey = format!("{key}.security_mode");
        let policy = match &raw.security_policy {
            None => Some(SecurityPolicy::None),
            Some(p) => {
                let found = SecurityPolicy::from_name(p.get_ref());
                if found.is_none() {
                    let names: Vec<_> = SecurityPolicy::ALL.iter().map(|p| p.name()).collect();
                    self.at(
                        p,
                        &pkey,
                        format!(
                            "unknown security policy {:?}: use {}",
                            p.get_ref(),
                            names.join(" | ")
                        ),
                    );
                }
                found
            }
        };
        let mode = match &raw.security_mode {
            None => Some(SecurityMode::None),
            Some(m) => {
                let found = SecurityMode::from_name(m.get_ref());
                if found.is_none() {
                    let names: Vec<_> = SecurityMode::ALL.iter().map(|m| m.name()).collect();
                    self.at(
                        m,
                        &mkey,
                        format!(
                            "unknown security mode {:?}: use {}",
                            m.get_ref(),
                            names.join(" | ")
                        ),
                    );
                }
                found
            }
        };
        if let (Some(p), Some(m)) = (policy, mode) {
            let policy_none = p == SecurityPolicy::None;
            if policy_none != (m == SecurityMode::None) {
                let message = format!(
                    "security_policy {} and security_mode {} do not go together: None goes only with None",
                    p.name(),
                    m.name()
                );
                // Point at whichever was written (a default has no line).
                let span = raw
                    .security_mode
                    .as_ref()
                    .or(raw.security_policy.as_ref())
                    .map(Spanned::span);
                let k = if raw.security_mode.is_some() {
                    &mkey
                } else {
                    &pkey
                };
                self.problem(span, k, message);
                return (None, None);
            }
        }
        (policy, mode)
    }

    fn auth(&mut self, raw: Option<&RawAuth>, plc_span: Span, key: &str) -> Option<Auth> {
        let t = match raw {
            None | Some(RawAuth::Anonymous) => return Some(Auth::Anonymous),
            Some(RawAuth::Table(t)) => t,
        };
        let akey = format!("{key}.auth");
        if let Some(p) = &t.password {
            self.at(p, &format!("{akey}.password"), "inline passwords are not allowed: use password_env (an environment variable name) or password_file");
            return None;
        }
        let file = |s: &Spanned<String>| PathBuf::from(s.get_ref());
        if let Some(username) = &t.username {
            for (extra, name) in [(&t.cert_file, "cert_file"), (&t.key_file, "key_file")] {
                if let Some(extra) = extra {
                    self.at(extra, &format!("{akey}.{name}"), "username auth takes no certificate: use either { username, password_env | password_file } or { cert_file, key_file }");
                    return None;
                }
            }
            let username_ok = self.non_empty(username, &format!("{akey}.username"));
            let password = match (&t.password_env, &t.password_file) {
                (Some(env), None) => {
                    if is_env_name(env.get_ref()) {
                        Some(Secret::Env(env.get_ref().clone()))
                    } else {
                        self.at(
                            env,
                            &format!("{akey}.password_env"),
                            format!("{:?} is not an environment variable name", env.get_ref()),
                        );
                        None
                    }
                }
                (None, Some(f)) => self
                    .non_empty(f, &format!("{akey}.password_file"))
                    .map(|_| Secret::File(file(f))),
                (Some(_), Some(f)) => {
                    self.at(
                        f,
                        &format!("{akey}.password_file"),
                        "give password_env or password_file, not both",
                    );
                    None
                }
                (None, None) => {
                    self.at(
                        username,
                        &format!("{akey}.password_env"),
                        "missing: username auth needs password_env or password_file",
                    );
                    None
                }
            };
            return Some(Auth::UserName {
                username: username_ok?,
                password: password?,
            });
        }
        for (extra, name) in [
            (&t.password_env, "password_env"),
            (&t.password_file, "password_file"),
        ] {
            if let Some(extra) = extra {
                self.at(
                    extra,
                    &format!("{akey}.{name}"),
                    "a password needs a username",
                );
                return None;
            }
        }
        match (&t.cert_file, &t.key_file) {
            (Some(cert), Some(k)) => {
                let c = self.non_empty(cert, &format!("{akey}.cert_file"));
                let k2 = self.non_empty(k, &format!("{akey}.key_file"));
                Some(Auth::Certificate {
                    cert_file: c.map(PathBuf::from)?,
                    key_file: k2.map(PathBuf::from)?,
                })
            }
            (Some(cert), None) => {
                self.at(
                    cert,
                    &format!("{akey}.key_file"),
                    "missing: certificate auth needs cert_file and key_file",
                );
                None
            }
            (None, Some(k)) => {
                self.at(
                    k,
                    &format!("{akey}.cert_file"),
                    "missing: certificate auth needs cert_file and key_file",
                );
                None
            }
            (None, None) => {
                self.problem(plc_span, &akey, "empty auth: use \"anonymous\", { username, password_env | password_file } or { cert_file, key_file }");
                None
            }
        }
    }

    fn group(
        &mut self,
        raw: &RawGroup,
        span: Span,
        key: &str,
        aliases: &mut HashSet<String>,
    ) -> Option<Group> {
        let name = self
            .required(&raw.name, span.clone(), &format!("{key}.name"))
            .and_then(|n| self.name(n, &format!("{key}.name")));
        let publishing = self
            .required(
                &raw.publishing_interval,
                span.clone(),
                &format!("{key}.publishing_interval"),
            )
            .and_then(|d| self.positive_duration(d, &format!("{key}.publishing_interval")));
        let sampling = match &raw.sampling_interval {
            Some(d) => self.duration(d, &format!("{key}.sampling_interval")),
            None => publishing,
        };
        let queue_size = match &raw.queue_size {
            None => Some(QueueSize::Auto),
            Some(q) => match u32::try_from(*q.get_ref()) {
                Ok(0) => Some(QueueSize::Auto),
                Ok(n) => usize::try_from(n)
                    .ok()
                    .and_then(NonZeroUsize::new)
                    .map(QueueSize::Fixed),
                Err(_) => {
                    self.at(
                        q,
                        &format!("{key}.queue_size"),
                        format!(
                            "queue_size {} must be 0 (auto) or a positive UInt32",
                            q.get_ref()
                        ),
                    );
                    None
                }
            },
        };
        let deadband = match &raw.deadband {
            None => Some(Deadband::None),
            Some(d) => match (&d.absolute, &d.percent) {
                (Some(a), None) => {
                    let v = *a.get_ref();
                    if v.is_finite() && v >= 0.0 {
                        Some(Deadband::Absolute(v))
                    } else {
                        self.at(
                            a,
                            &format!("{key}.deadband.absolute"),
                            format!("absolute deadband {v} must be 0 or more"),
                        );
                        None
                    }
                }
                (None, Some(p)) => {
                    let v = *p.get_ref();
                    if (0.0..=100.0).contains(&v) {
                        Some(Deadband::Percent(v))
                    } else {
                        self.at(
                            p,
                            &format!("{key}.deadband.percent"),
                            format!("percent deadband {v} must be within 0..=100"),
                        );
                        None
                    }
                }
                (Some(_), Some(p)) => {
                    self.at(
                        p,
                        &format!("{key}.deadband"),
                        "give absolute or percent, not both",
                    );
                    None
                }
                (None, None) => {
                    self.problem(
                        span.clone(),
                        &format!("{key}.deadband"),
                        "empty deadband: use { absolute = x } or { percent = x }",
                    );
                    None
                }
            },
        };

        let mut nodes = Vec::new();
        let mut seen = HashSet::new();
        for (k, entry) in raw.nodes.iter().flatten().enumerate() {
            let nkey = format!("{key}.nodes[{k}]");
            let (id, alias) = match entry.get_ref() {
                RawNode::Id(id) => (Some(Spanned::new(entry.span(), id.clone())), None),
                RawNode::Table(t) => (t.id.clone(), t.name.as_ref()),
            };
            let Some(id) = id else {
                self.problem(Some(entry.span()), &format!("{nkey}.id"), "missing");
                continue;
            };
            let node = self.node(&id, &nkey);
            if let Some(node) = &node {
                if !seen.insert(node.clone()) {
                    self.at(
                        &id,
                        &nkey,
                        format!("node {:?} is listed twice in this group", id.get_ref()),
                    );
                }
            }
            let alias = match alias {
                None => Some(None),
                Some(a) => {
                    let akey = format!("{nkey}.name");
                    let ok = self.non_empty(a, &akey);
                    if ok.is_some() && !aliases.insert(a.get_ref().clone()) {
                        self.at(
                            a,
                            &akey,
                            format!("tag name {:?} is used twice in this plc", a.get_ref()),
                        );
                    }
                    ok.map(Some)
                }
            };
            nodes.push(
                node.zip(alias)
                    .map(|(node, alias)| NodeEntry { node, alias }),
            );
        }
        let browse: Vec<_> = raw
            .browse
            .iter()
            .flatten()
            .enumerate()
            .map(|(k, b)| self.browse(b.get_ref(), Some(b.span()), &format!("{key}.browse[{k}]")))
            .collect();
        if nodes.is_empty() && browse.is_empty() {
            self.problem(
                span,
                key,
                "a group needs at least one entry in nodes or browse",
            );
        }
        Some(Group {
            name: name?,
            publishing_interval: publishing?,
            sampling_interval: sampling?,
            queue_size: queue_size?,
            deadband: deadband?,
            nodes: nodes.into_iter().collect::<Option<_>>()?,
            browse: browse.into_iter().collect::<Option<_>>()?,
        })
    }

    fn browse(&mut self, raw: &RawBrowse, span: Span, key: &str) -> Option<BrowseSelection> {
        let root = self
            .required(&raw.root, span, &format!("{key}.root"))
            .and_then(|r| self.node(r, &format!("{key}.root")));
        let include = raw
            .include
            .as_ref()
            .map(|g| self.non_empty(g, &format!("{key}.include")));
        let exclude = raw
            .exclude
            .as_ref()
            .map(|g| self.non_empty(g, &format!("{key}.exclude")));
        Some(BrowseSelection {
            root: root?,
            recursive: raw.recursive.as_ref().is_some_and(|r| *r.get_ref()),
            include: optional(include)?,
            exclude: optional(exclude)?,
        })
    }

    fn pki(&mut self, raw: Option<raw::RawPki>) -> Option<Pki> {
        let Some(raw) = raw else {
            return Some(Pki {
                dir: PathBuf::from(DEFAULT_PKI_DIR),
                trust_unknown_servers: false,
            });
        };
        let dir = match &raw.dir {
            None => Some(PathBuf::from(DEFAULT_PKI_DIR)),
            Some(d) => self.non_empty(d, "pki.dir").map(PathBuf::from),
        };
        Some(Pki {
            dir: dir?,
            trust_unknown_servers: raw.trust_unknown_servers.is_some_and(|t| t.into_inner()),
        })
    }

    fn parquet(&mut self, raw: RawParquet) -> Option<ParquetSinkConfig> {
        let k = |name: &str| format!("sink.parquet.{name}");
        let dir = match &raw.dir {
            None => Some(PathBuf::from(DEFAULT_PARQUET_DIR)),
            Some(d) => self.non_empty(d, &k("dir")).map(PathBuf::from),
        };
        let compression = match &raw.compression {
            None => Some(Compression::Zstd {
                level: DEFAULT_ZSTD_LEVEL,
            }),
            Some(c) => {
                let parsed = match c.get_ref().as_str() {
                    "zstd" => Some(Compression::Zstd {
                        level: DEFAULT_ZSTD_LEVEL,
                    }),
                    "snappy" => Some(Compression::Snappy),
                    "gzip" => Some(Compression::Gzip),
                    "none" => Some(Compression::None),
                    other => other
                        .strip_prefix("zstd:")
                        .and_then(|l| l.parse::<i32>().ok())
                        .filter(|l| (1..=22).contains(l))
                        .map(|level| Compression::Zstd { level }),
                };
                if parsed.is_none() {
                    let message = format!("unknown compression {:?}: use zstd, zstd:LEVEL (1..=22), snappy, gzip or none", c.get_ref());
                    self.at(c, &k("compression"), message);
                }
                parsed
            }
        };
        let roll_rows = match &raw.roll_rows {
            None => NonZeroUsize::new(DEFAULT_ROLL_ROWS),
            Some(r) => self.count(r, &k("roll_rows")),
        };
        let roll_bytes = match &raw.roll_bytes {
            None => Some(DEFAULT_ROLL_BYTES),
            Some(b) => self.size(b, &k("roll_bytes")).and_then(|n| {
                if n == 0 {
                    self.at(b, &k("roll_bytes"), "must be greater than 0");
                }
                (n > 0).then_some(n)
            }),
        };
        let roll_interval = match &raw.roll_interval {
            None => Some(DEFAULT_ROLL_INTERVAL),
            Some(d) => self.positive_duration(d, &k("roll_interval")),
        };
        let queue_samples = match &raw.queue_samples {
            None => NonZeroUsize::new(DEFAULT_QUEUE_SAMPLES),
            Some(q) => self.count(q, &k("queue_samples")),
        };
        Some(ParquetSinkConfig {
            dir: dir?,
            compression: compression?,
            roll_rows: roll_rows?,
            roll_bytes: roll_bytes?,
            roll_interval: roll_interval?,
            queue_samples: queue_samples?,
        })
    }

    /// `{name}_env` / `{name}_file` (`prefix` is the key path of `{name}`): at most one of
    /// them; `Some(None)` when neither is given.
    fn secret_ref(
        &mut self,
        env: &Option<Spanned<String>>,
        file: &Option<Spanned<String>>,
        prefix: &str,
    ) -> Option<Option<Secret>> {
        match (env, file) {
            (None, None) => Some(None),
            (Some(env), None) => {
                if is_env_name(env.get_ref()) {
                    Some(Some(Secret::Env(env.get_ref().clone())))
                } else {
                    self.at(
                        env,
                        &format!("{prefix}_env"),
                        format!("{:?} is not an environment variable name", env.get_ref()),
                    );
                    None
                }
            }
            (None, Some(f)) => self
                .non_empty(f, &format!("{prefix}_file"))
                .map(|f| Some(Secret::File(PathBuf::from(f)))),
            (Some(_), Some(f)) => {
                let name = prefix.rsplit('.').next().unwrap_or(prefix);
                self.at(
                    f,
                    &format!("{prefix}_file"),
                    format!("give {name}_env or {name}_file, not both"),
                );
                None
            }
        }
    }

    fn positive_size(&mut self, value: &Spanned<RawSize>, key: &str) -> Option<u64> {
        let n = self.size(value, key)?;
        if n == 0 {
            self.at(value, key, "must be greater than 0");
            return None;
        }
        Some(n)
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

    /// A `{name}` that is optional and must not be empty when given.
    fn optional_non_empty(
        &mut self,
        value: &Option<Spanned<String>>,
        key: &str,
    ) -> Option<Option<String>> {
        optional(value.as_ref().map(|v| self.non_empty(v, key)))
    }

    fn mqtt(&mut self, raw: &RawMqtt, line_id: &str, has_site: bool) -> Option<MqttSinkConfig> {
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
                    "tls needs an mqtts:// url (this one is plain mqtt://)",
                );
                None
            }
            (Some((span, _)), Some(Some(t))) if t.ca_file.is_none() => {
                self.at(span, &k("tls.ca_file"), MQTTS_NEEDS_CA);
                None
            }
            (Some(_), Some(t)) => t.map(Some),
        };
        let (_, url) = url?;
        Some(MqttSinkConfig {
            url: url.text,
            host: url.host,
            port: url.port,
            tls: tls?,
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
            keep_alive: keep_alive?,
        })
    }

    fn tls(&mut self, raw: &RawTls) -> Option<TlsConfig> {
        let k = |name: &str| format!("sink.mqtt.tls.{name}");
        let ca_file = self.optional_non_empty(&raw.ca_file, &k("ca_file"));
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
            ca_file: ca_file?.map(PathBuf::from),
            cert_file: cert_file.map(PathBuf::from),
            key_file: key_file.map(PathBuf::from),
        })
    }

    fn hub(&mut self, raw: &RawHub) -> Option<HubConfig> {
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
        let insecure_endpoint =
            raw.insecure_endpoint
                .as_ref()
                .map(|e| match parse_host_port(e.get_ref()) {
                    Ok(_) => Some(e.get_ref().clone()),
                    Err(message) => {
                        self.at(e, &k("insecure_endpoint"), message);
                        None
                    }
                });
        let ca_file = match (&raw.ca_file, &raw.insecure_endpoint) {
            (Some(ca), Some(_)) => {
                self.at(ca, &k("ca_file"), "ca_file is not used with insecure_endpoint (plain MQTT, for tests only): remove one");
                None
            }
            (Some(ca), None) => self
                .non_empty(ca, &k("ca_file"))
                .map(|c| Some(PathBuf::from(c))),
            (None, Some(_)) => Some(None),
            (None, None) => {
                self.problem(header, &k("ca_file"), "missing: give ca_file, the PEM file of the hub's root CA (DigiCert Global Root G2 for Azure IoT Hub); the system's roots are not used");
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
        if raw.connection_string.is_some() {
            return None;
        }
        Some(HubConfig {
            auth: auth?,
            sas_ttl: sas_ttl?,
            insecure_endpoint: optional(insecure_endpoint)?,
            ca_file: ca_file?,
            batch_max_samples: batch_max_samples?,
            batch_max_delay: batch_max_delay?,
            payload: payload?,
        })
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

    fn buffer(&mut self, raw: Option<&RawBuffer>) -> Option<BufferConfig> {
        let defaults = BufferConfig::default();
        let Some(raw) = raw else {
            return Some(defaults);
        };
        let k = |name: &str| format!("buffer.{name}");
        let dir = match &raw.dir {
            None => Some(defaults.dir),
            Some(d) => self.non_empty(d, &k("dir")).map(PathBuf::from),
        };
        let max_bytes = match &raw.max_bytes {
            None => Some(defaults.max_bytes),
            Some(b) => self.positive_size(b, &k("max_bytes")),
        };
        let when_full = match &raw.when_full {
            None => Some(defaults.when_full),
            Some(w) => match w.get_ref().as_str() {
                "drop_oldest" => Some(WhenFull::DropOldest),
                "pause" => Some(WhenFull::Pause),
                other => {
                    self.at(
                        w,
                        &k("when_full"),
                        format!("unknown policy {other:?}: use drop_oldest or pause"),
                    );
                    None
                }
            },
        };
        let segment_bytes = match &raw.segment_bytes {
            None => Some(defaults.segment_bytes),
            Some(b) => self.positive_size(b, &k("segment_bytes")),
        };
        if let (Some(seg), Some(max)) = (segment_bytes, max_bytes) {
            if seg > max {
                let message = format!(
                    "segment_bytes {} is larger than max_bytes {}",
                    format_size(seg),
                    format_size(max)
                );
                let span = raw
                    .segment_bytes
                    .as_ref()
                    .or(raw.max_bytes.as_ref())
                    .map(Spanned::span);
                self.problem(span, &k("segment_bytes"), message);
                return None;
            }
        }
        Some(BufferConfig {
            dir: dir?,
            max_bytes: max_bytes?,
            when_full: when_full?,
            segment_bytes: segment_bytes?,
        })
    }

    /// `plc = "..."` of a write or method: must name a configured plc.
    fn plc_ref(&mut self, value: &Spanned<String>, key: &str, plcs: &[String]) -> Option<String> {
        if plcs.iter().any(|p| p == value.get_ref()) {
            return Some(value.get_ref().clone());
        }
        let message = format!(
            "no plc {:?} in this file (plcs: {})",
            value.get_ref(),
            plcs.join(", ")
        );
        self.at(value, key, message);
        None
    }

    fn writes(&mut self, raw: &[Spanned<RawWrite>], plcs: &[String]) -> Vec<Option<WriteMapping>> {
        let mut properties: Vec<(String, usize)> = Vec::new();
        let mut out = Vec::new();
        for (i, w) in raw.iter().enumerate() {
            let key = format!("write[{i}]");
            let span = Some(w.span());
            let w = w.get_ref();
            let property = self.required(&w.property, span.clone(), &format!("{key}.property")).and_then(|p| {
                let v = p.get_ref();
                if v.is_empty() || v.split('.').any(str::is_empty) {
                    self.at(p, &format!("{key}.property"), format!("property {v:?} must be a name or a dotted path like \"filler.speedSetpoint\""));
                    return None;
                }
                if let Some((_, first)) = properties.iter().find(|(seen, _)| seen == v) {
                    self.at(p, &format!("{key}.property"), format!("duplicate property {v:?} (also write[{first}])"));
                    return None;
                }
                properties.push((v.clone(), i));
                Some(v.clone())
            });
            let plc = self
                .required(&w.plc, span.clone(), &format!("{key}.plc"))
                .and_then(|p| self.plc_ref(p, &format!("{key}.plc"), plcs));
            let node = self
                .required(&w.node, span.clone(), &format!("{key}.node"))
                .and_then(|n| self.node(n, &format!("{key}.node")));
            let write_type = self
                .required(&w.write_type, span, &format!("{key}.type"))
                .and_then(|t| {
                    let found = WriteType::from_name(t.get_ref());
                    if found.is_none() {
                        let names: Vec<_> = WriteType::ALL.iter().map(|t| t.name()).collect();
                        self.at(
                            t,
                            &format!("{key}.type"),
                            format!(
                                "unknown type {:?}: use one of {}",
                                t.get_ref(),
                                names.join(", ")
                            ),
                        );
                    }
                    found
                });
            let limits = write_type.and_then(|t| self.limits(w, t, &key));
            let max_rate = w
                .max_rate
                .as_ref()
                .map(|d| self.positive_duration(d, &format!("{key}.max_rate")));
            out.push((|| {
                let (min, max) = limits?;
                Some(WriteMapping {
                    property: property?,
                    plc: plc?,
                    node: node?,
                    write_type: write_type?,
                    min,
                    max,
                    readback: w.readback.as_ref().is_none_or(|r| *r.get_ref()),
                    max_rate: optional(max_rate)?,
                })
            })());
        }
        out
    }

    /// `min`/`max` of a write: numeric types only, within the type, `min <= max`.
    #[allow(clippy::type_complexity)]
    fn limits(
        &mut self,
        w: &RawWrite,
        t: WriteType,
        key: &str,
    ) -> Option<(Option<f64>, Option<f64>)> {
        let Some((lo, hi)) = t.numeric_range() else {
            for (bound, name) in [(&w.min, "min"), (&w.max, "max")] {
                if let Some(b) = bound {
                    self.at(
                        b,
                        &format!("{key}.{name}"),
                        format!("type {} takes no {name}", t.name()),
                    );
                    return None;
                }
            }
            return Some((None, None));
        };
        let mut ok = true;
        for (bound, name) in [(&w.min, "min"), (&w.max, "max")] {
            if let Some(b) = bound {
                let v = *b.get_ref();
                if !(v.is_finite() && lo <= v && v <= hi) {
                    self.at(
                        b,
                        &format!("{key}.{name}"),
                        format!("{name} {v} is outside the range of {}", t.name()),
                    );
                    ok = false;
                }
            }
        }
        if let (Some(min), Some(max)) = (&w.min, &w.max) {
            if ok && min.get_ref() > max.get_ref() {
                self.at(
                    max,
                    &format!("{key}.max"),
                    format!("max {} is less than min {}", max.get_ref(), min.get_ref()),
                );
                ok = false;
            }
        }
        ok.then(|| {
            (
                w.min.as_ref().map(|m| *m.get_ref()),
                w.max.as_ref().map(|m| *m.get_ref()),
            )
        })
    }

    fn methods(
        &mut self,
        raw: &[Spanned<RawMethod>],
        plcs: &[String],
    ) -> Vec<Option<MethodMapping>> {
        let mut names: Vec<(String, usize)> = Vec::new();
        let mut out = Vec::new();
        for (i, m) in raw.iter().enumerate() {
            let key = format!("method[{i}]");
            let span = Some(m.span());
            let m = m.get_ref();
            let name = self
                .required(&m.name, span.clone(), &format!("{key}.name"))
                .and_then(|n| {
                    let v = self.non_empty(n, &format!("{key}.name"))?;
                    if let Some((_, first)) = names.iter().find(|(seen, _)| *seen == v) {
                        self.at(
                            n,
                            &format!("{key}.name"),
                            format!("duplicate method name {v:?} (also method[{first}])"),
                        );
                        return None;
                    }
                    names.push((v.clone(), i));
                    Some(v)
                });
            let plc = self
                .required(&m.plc, span.clone(), &format!("{key}.plc"))
                .and_then(|p| self.plc_ref(p, &format!("{key}.plc"), plcs));
            let object = self
                .required(&m.object, span.clone(), &format!("{key}.object"))
                .and_then(|n| self.node(n, &format!("{key}.object")));
            let method = self
                .required(&m.method, span, &format!("{key}.method"))
                .and_then(|n| self.node(n, &format!("{key}.method")));
            let timeout = match &m.timeout {
                None => Some(DEFAULT_METHOD_TIMEOUT),
                Some(t) => self.positive_duration(t, &format!("{key}.timeout")),
            };
            out.push((|| {
                Some(MethodMapping {
                    name: name?,
                    plc: plc?,
                    object: object?,
                    method: method?,
                    timeout: timeout?,
                })
            })());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "line.toml";

    fn problems(text: &str) -> Vec<String> {
        match parse(Path::new(FILE), text) {
            Ok(c) => panic!("expected problems, got {c:#?}"),
            Err(e) => e.problems().iter().map(ToString::to_string).collect(),
        }
    }

    /// The one problem of `text`, asserting its `file:LINE: key` prefix.
    fn assert_problem(text: &str, line: usize, key: &str, message_part: &str) {
        let all = problems(text);
        let prefix = format!("{FILE}:{line}: {key}: ");
        assert!(
            all.iter()
                .any(|p| p.starts_with(&prefix) && p.contains(message_part)),
            "no problem starting {prefix:?} containing {message_part:?} in {all:#?}"
        );
    }

    const MINIMAL: &str = r#"
[line]
id = "line-a"

[[plc]]
id = "filler"
endpoint = "opc.tcp://192.0.2.10:4840"

  [[plc.group]]
  name = "fast"
  publishing_interval = "100ms"
  nodes = ["nsu=urn:example:filler;s=Filler.Speed"]
"#;

    #[test]
    fn full_config_round_trips_to_expected_types() {
        let text = r#"
[line]
id = "line-a"
site = "plant-1"

[[plc]]
id = "filler"
endpoint = "opc.tcp://192.0.2.10:4840"
security_policy = "Basic256Sha256"
security_mode = "SignAndEncrypt"
auth = { username = "connector", password_env = "FILLER_PW" }

  [[plc.group]]
  name = "fast"
  publishing_interval = "100ms"
  sampling_interval = "50ms"
  queue_size = 0
  deadband = { absolute = 0.5 }
  nodes = [
    "nsu=urn:example:filler;s=Filler.Speed",
    { id = "ns=2;i=1042", name = "tank_level" },
    "i=2258",
    "nsu=urn:x;g=6F9619FF-8B86-D011-B42D-00C04FC964FF",
    "nsu=urn:x;b=AQID",
  ]
  browse = [{ root = "nsu=urn:example:filler;s=Filler", recursive = true, include = "*Temp*" }]

  [[plc.group]]
  name = "slow"
  publishing_interval = "1s"
  queue_size = 10
  deadband.percent = 1
  browse = [{ root = "ns=2;s=Tank", exclude = "*Raw*" }]

[[plc]]
id = "labeler"
endpoint = "opc.tcp://labeler.local:4840/ua"
security_policy = "Aes256_Sha256_RsaPss"
security_mode = "Sign"
auth = { cert_file = "certs/labeler.der", key_file = "certs/labeler.pem" }

[pki]
dir = "/var/lib/opcua-connector/pki"
trust_unknown_servers = true

[sink.parquet]
dir = "data"
compression = "zstd:9"
roll_rows = 500_000
roll_bytes = "64MiB"
roll_interval = "1m"
queue_samples = 200_000

[sink.mqtt]
url = "mqtts://broker.example:8884"
version = "5"
client_id = "line-a-connector"
username = "connector"
password_env = "MQTT_PASSWORD"
topic = "plants/{site}/{line}/{plc}/{group}/samples"
qos = 0
batch_max_samples = 2000
batch_max_delay = "500ms"
max_message_bytes = "128KiB"
payload = "json+gzip"
keep_alive = "1m"
tls = { ca_file = "certs/ca.pem", cert_file = "certs/client.pem", key_file = "certs/client.key" }

[hub]
connection_string_file = "/run/secrets/iothub"
sas_ttl = "30m"
ca_file = "certs/digicert-global-root-g2.pem"
batch_max_samples = 250
batch_max_delay = "1s"
payload = "json+gzip"

[buffer]
dir = "/var/lib/opcua-connector/buffer"
max_bytes = "10GiB"
when_full = "pause"
segment_bytes = "64MiB"

[[write]]
property = "fillerSpeedSetpoint"
plc = "filler"
node = "nsu=urn:example:filler;s=Filler.SpeedSetpoint"
type = "Double"
min = 0.0
max = 1200
readback = false
max_rate = "1s"

[[method]]
name = "resetCounters"
plc = "filler"
object = "nsu=urn:example:filler;s=Filler"
method = "nsu=urn:example:filler;s=Filler.ResetCounters"
timeout = "30s"

[metrics]
listen = "127.0.0.1:9464"
"#;
        let config = parse(Path::new(FILE), text).unwrap_or_else(|e| panic!("{e}"));
        let uri = |u: &str, s: &str| NodeRef::Uri {
            namespace_uri: u.into(),
            identifier: Identifier::String(s.into()),
        };
        let ms = Duration::from_millis;
        let expected = Config {
            source: PathBuf::from(FILE),
            line: Line {
                id: "line-a".into(),
                site: Some("plant-1".into()),
            },
            plcs: vec![
                Plc {
                    id: "filler".into(),
                    endpoint: "opc.tcp://192.0.2.10:4840".into(),
                    security_policy: SecurityPolicy::Basic256Sha256,
                    security_mode: SecurityMode::SignAndEncrypt,
                    auth: Auth::UserName {
                        username: "connector".into(),
                        password: Secret::Env("FILLER_PW".into()),
                    },
                    groups: vec![
                        Group {
                            name: "fast".into(),
                            publishing_interval: ms(100),
                            sampling_interval: ms(50),
                            queue_size: QueueSize::Auto,
                            deadband: Deadband::Absolute(0.5),
                            nodes: vec![
                                NodeEntry {
                                    node: uri("urn:example:filler", "Filler.Speed"),
                                    alias: None,
                                },
                                NodeEntry {
                                    node: NodeRef::Index {
                                        namespace: 2,
                                        identifier: Identifier::Numeric(1042),
                                    },
                                    alias: Some("tank_level".into()),
                                },
                                NodeEntry {
                                    node: NodeRef::Index {
                                        namespace: 0,
                                        identifier: Identifier::Numeric(2258),
                                    },
                                    alias: None,
                                },
                                NodeEntry {
                                    node: NodeRef::Uri {
                                        namespace_uri: "urn:x".into(),
                                        identifier: Identifier::Guid(
                                            "6f9619ff-8b86-d011-b42d-00c04fc964ff".into(),
                                        ),
                                    },
                                    alias: None,
                                },
                                NodeEntry {
                                    node: NodeRef::Uri {
                                        namespace_uri: "urn:x".into(),
                                        identifier: Identifier::Opaque("AQID".into()),
                                    },
                                    alias: None,
                                },
                            ],
                            browse: vec![BrowseSelection {
                                root: uri("urn:example:filler", "Filler"),
                                recursive: true,
                                include: Some("*Temp*".into()),
                                exclude: None,
                            }],
                        },
                        Group {
                            name: "slow".into(),
                            publishing_interval: ms(1000),
                            sampling_interval: ms(1000),
                            queue_size: QueueSize::Fixed(NonZeroUsize::new(10).unwrap()),
                            deadband: Deadband::Percent(1.0),
                            nodes: vec![],
                            browse: vec![BrowseSelection {
                                root: NodeRef::Index {
                                    namespace: 2,
                                    identifier: Identifier::String("Tank".into()),
                                },
                                recursive: false,
                                include: None,
                                exclude: Some("*Raw*".into()),
                            }],
                        },
                    ],
                },
                Plc {
                    id: "labeler".into(),
                    endpoint: "opc.tcp://labeler.local:4840/ua".into(),
                    security_policy: SecurityPolicy::Aes256Sha256RsaPss,
                    security_mode: SecurityMode::Sign,
                    auth: Auth::Certificate {
                        cert_file: "certs/labeler.der".into(),
                        key_file: "certs/labeler.pem".into(),
                    },
                    groups: vec![],
                },
            ],
            pki: Pki {
                dir: "/var/lib/opcua-connector/pki".into(),
                trust_unknown_servers: true,
            },
            parquet: Some(ParquetSinkConfig {
                dir: "data".into(),
                compression: Compression::Zstd { level: 9 },
                roll_rows: NonZeroUsize::new(500_000).unwrap(),
                roll_bytes: 64 << 20,
                roll_interval: Duration::from_secs(60),
                queue_samples: NonZeroUsize::new(200_000).unwrap(),
            }),
            writes: vec![WriteMapping {
                property: "fillerSpeedSetpoint".into(),
                plc: "filler".into(),
                node: uri("urn:example:filler", "Filler.SpeedSetpoint"),
                write_type: WriteType::Double,
                min: Some(0.0),
                max: Some(1200.0),
                readback: false,
                max_rate: Some(Duration::from_secs(1)),
            }],
            methods: vec![MethodMapping {
                name: "resetCounters".into(),
                plc: "filler".into(),
                object: uri("urn:example:filler", "Filler"),
                method: uri("urn:example:filler", "Filler.ResetCounters"),
                timeout: Duration::from_secs(30),
            }],
            metrics: Some(MetricsConfig {
                listen: "127.0.0.1:9464".parse().unwrap(),
            }),
            mqtt: Some(MqttSinkConfig {
                url: "mqtts://broker.example:8884".into(),
                host: "broker.example".into(),
                port: 8884,
                tls: Some(TlsConfig {
                    ca_file: Some("certs/ca.pem".into()),
                    cert_file: Some("certs/client.pem".into()),
                    key_file: Some("certs/client.key".into()),
                }),
                version: MqttVersion::V5,
                client_id: "line-a-connector".into(),
                username: Some("connector".into()),
                password: Some(Secret::Env("MQTT_PASSWORD".into())),
                topic: "plants/{site}/{line}/{plc}/{group}/samples".into(),
                command_topic: "opcua/{site}/{line}/cmd".into(),
                qos: 0,
                batch_max_samples: NonZeroUsize::new(2000).unwrap(),
                batch_max_delay: ms(500),
                max_message_bytes: 128 << 10,
                payload: Payload::JsonGzip,
                keep_alive: Duration::from_secs(60),
            }),
            hub: Some(HubConfig {
                auth: HubAuth::ConnectionString(Secret::File("/run/secrets/iothub".into())),
                sas_ttl: Duration::from_secs(30 * 60),
                insecure_endpoint: None,
                ca_file: Some("certs/digicert-global-root-g2.pem".into()),
                batch_max_samples: NonZeroUsize::new(250).unwrap(),
                batch_max_delay: Duration::from_secs(1),
                payload: Payload::JsonGzip,
            }),
            buffer: BufferConfig {
                dir: "/var/lib/opcua-connector/buffer".into(),
                max_bytes: 10 << 30,
                when_full: WhenFull::Pause,
                segment_bytes: 64 << 20,
            },
        };
        assert_eq!(config, expected);
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = parse(Path::new(FILE), MINIMAL).unwrap_or_else(|e| panic!("{e}"));
        let p = &c.plcs[0];
        assert_eq!(
            (p.security_policy, p.security_mode),
            (SecurityPolicy::None, SecurityMode::None)
        );
        assert_eq!(p.auth, Auth::Anonymous);
        let g = &p.groups[0];
        assert_eq!(g.sampling_interval, g.publishing_interval);
        assert_eq!(
            (g.queue_size, g.deadband),
            (QueueSize::Auto, Deadband::None)
        );
        assert_eq!(
            c.pki,
            Pki {
                dir: "pki".into(),
                trust_unknown_servers: false
            }
        );
        assert_eq!((c.parquet, c.metrics, c.line.site), (None, None, None));

        let with_sink = format!("{MINIMAL}\n[sink.parquet]\n");
        let c = parse(Path::new(FILE), &with_sink).unwrap_or_else(|e| panic!("{e}"));
        let sink = c.parquet.unwrap();
        assert_eq!(sink.dir, PathBuf::from("data"));
        assert_eq!(sink.compression, Compression::Zstd { level: 3 });
        assert_eq!(sink.roll_rows.get(), 1_000_000);
        assert_eq!(sink.roll_bytes, 128 << 20);
        assert_eq!(sink.roll_interval, Duration::from_secs(300));
        assert_eq!(sink.queue_samples.get(), 1_000_000);
    }

    #[test]
    fn unknown_key_is_reported_with_line_and_key_path() {
        let text = MINIMAL.replace(
            "  name = \"fast\"\n",
            "  name = \"fast\"\n  publish_interval = \"1s\"\n",
        );
        assert_problem(
            &text,
            11,
            "plc[0].group[0].publish_interval",
            "unknown key `publish_interval`",
        );
    }

    /// MINIMAL plus a table; its first key is on line 15 (the header on 14).
    fn with_table(table: &str, body: &str) -> String {
        format!("{MINIMAL}\n[{table}]\n{body}\n")
    }

    fn parse_ok(text: &str) -> Config {
        parse(Path::new(FILE), text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn mqtt_of(body: &str) -> MqttSinkConfig {
        parse_ok(&with_table("sink.mqtt", body)).mqtt.unwrap()
    }

    const HUB_CS: &str = "connection_string_env = \"IOTHUB_CS\"\nca_file = \"ca.pem\"";

    fn hub_of(body: &str) -> HubConfig {
        parse_ok(&with_table("hub", body)).hub.unwrap()
    }

    #[test]
    fn unknown_keys_in_broker_hub_and_buffer_are_reported() {
        let text = with_table("sink.mqtt", "url = \"mqtt://x\"\nretain = true");
        assert_problem(&text, 16, "sink.mqtt.retain", "unknown key `retain`");
        let text = with_table("hub", &format!("{HUB_CS}\nmodel_id = \"dtmi:x;1\""));
        assert_problem(&text, 17, "hub.model_id", "unknown key `model_id`");
        let text = with_table("buffer", "max_size = \"1GiB\"");
        assert_problem(&text, 15, "buffer.max_size", "unknown key `max_size`");
        let text = with_table("hub", "x509 = { host = \"h\", device = \"d\" }");
        assert_problem(&text, 15, "hub.x509.device", "unknown key `device`");
    }

    #[test]
    fn mqtt_defaults_fill_in_everything_but_the_url() {
        let m = mqtt_of("url = \"mqtt://broker.local\"");
        assert_eq!(
            m,
            MqttSinkConfig {
                url: "mqtt://broker.local".into(),
                host: "broker.local".into(),
                port: 1883,
                tls: None,
                version: MqttVersion::V311,
                client_id: "opcua-connector-line-a".into(),
                username: None,
                password: None,
                // MINIMAL has no line.site.
                topic: "opcua/{line}/{plc}/{group}".into(),
                command_topic: "opcua/{line}/cmd".into(),
                qos: 1,
                batch_max_samples: NonZeroUsize::new(1000).unwrap(),
                batch_max_delay: Duration::from_millis(200),
                max_message_bytes: 256 << 10,
                payload: Payload::Json,
                keep_alive: Duration::from_secs(30),
            }
        );
        let with_site = with_table("sink.mqtt", "url = \"mqtt://b\"")
            .replace("id = \"line-a\"", "id = \"line-a\"\nsite = \"plant-1\"");
        assert_eq!(
            parse_ok(&with_site).mqtt.unwrap().topic,
            "opcua/{site}/{line}/{plc}/{group}"
        );
    }

    #[test]
    fn mqtt_url_gives_host_and_port_with_scheme_defaults() {
        let tls = "\ntls = { ca_file = \"ca.pem\" }";
        let cases = [
            ("mqtt://b.example", "", "b.example", 1883),
            ("mqtt://b.example:1884/", "", "b.example", 1884),
            ("mqtts://b.example", tls, "b.example", 8883),
            ("mqtts://10.0.0.5:9883", tls, "10.0.0.5", 9883),
            ("mqtt://[::1]:1885", "", "::1", 1885),
            ("mqtt://[fd00::7]", "", "fd00::7", 1883),
        ];
        for (url, extra, host, port) in cases {
            let m = mqtt_of(&format!("url = \"{url}\"{extra}"));
            assert_eq!((m.url.as_str(), m.host.as_str(), m.port), (url, host, port));
        }
    }

    #[test]
    fn mqtt_url_problems_name_the_url_key() {
        for (url, part) in [
            ("tcp://b:1883", "must start with mqtt:// or mqtts://"),
            ("mqtt://", "no host"),
            ("mqtt://:1883", "no host"),
            ("mqtt://b:0", "port \"0\" must be 1..=65535"),
            ("mqtt://b:99999", "must be 1..=65535"),
            ("mqtt://b/topic", "without a path"),
            ("mqtt://[::1", "unclosed ["),
        ] {
            let text = with_table("sink.mqtt", &format!("url = \"{url}\""));
            assert_problem(&text, 15, "sink.mqtt.url", part);
        }
        let text = with_table("sink.mqtt", "qos = 1");
        assert_problem(&text, 14, "sink.mqtt.url", "missing");
    }

    #[test]
    fn credentials_in_the_mqtt_url_are_refused_without_echoing_them() {
        let text = with_table("sink.mqtt", "url = \"mqtt://user:hunter2@b\"");
        assert_problem(&text, 15, "sink.mqtt.url", "credentials in the url");
        assert!(!problems(&text).concat().contains("hunter2"));
    }

    #[test]
    fn mqtt_version_is_3_1_1_or_5() {
        assert_eq!(
            mqtt_of("url = \"mqtt://b\"\nversion = \"5\"").version,
            MqttVersion::V5
        );
        assert_eq!(
            mqtt_of("url = \"mqtt://b\"\nversion = 5").version,
            MqttVersion::V5
        );
        assert_eq!(
            mqtt_of("url = \"mqtt://b\"\nversion = \"3.1.1\"").version,
            MqttVersion::V311
        );
        let text = with_table("sink.mqtt", "url = \"mqtt://b\"\nversion = \"3.1\"");
        assert_problem(&text, 16, "sink.mqtt.version", "use \"3.1.1\" or \"5\"");
        let text = with_table("sink.mqtt", "url = \"mqtt://b\"\nversion = 4");
        assert_problem(&text, 16, "sink.mqtt.version", "unknown MQTT version 4");
    }

    #[test]
    fn mqtt_password_comes_from_env_or_file_with_a_username() {
        let m = mqtt_of("url = \"mqtt://b\"\nusername = \"u\"\npassword_file = \"/run/pw\"");
        assert_eq!(
            (m.username.as_deref(), m.password),
            (Some("u"), Some(Secret::File("/run/pw".into())))
        );
        let base = "url = \"mqtt://b\"\nusername = \"u\"\n";
        let text = with_table("sink.mqtt", &format!("{base}password = \"hunter2\""));
        assert_problem(
            &text,
            17,
            "sink.mqtt.password",
            "inline passwords are not allowed",
        );
        assert!(!problems(&text).concat().contains("hunter2"));
        let text = with_table(
            "sink.mqtt",
            &format!("{base}password_env = \"PW\"\npassword_file = \"pw\""),
        );
        assert_problem(
            &text,
            18,
            "sink.mqtt.password_file",
            "give password_env or password_file, not both",
        );
        let text = with_table("sink.mqtt", &format!("{base}password_env = \"MY-PW\""));
        assert_problem(
            &text,
            17,
            "sink.mqtt.password_env",
            "is not an environment variable name",
        );
        let text = with_table("sink.mqtt", "url = \"mqtt://b\"\npassword_env = \"PW\"");
        assert_problem(
            &text,
            16,
            "sink.mqtt.password_env",
            "a password needs a username",
        );
        let text = with_table("sink.mqtt", "url = \"mqtt://b\"\nusername = \"\"");
        assert_problem(&text, 16, "sink.mqtt.username", "must not be empty");
        let text = with_table("sink.mqtt", "url = \"mqtt://b\"\nclient_id = \" \"");
        assert_problem(&text, 16, "sink.mqtt.client_id", "must not be empty");
    }

    #[test]
    fn mqtt_topic_allows_only_known_placeholders_and_no_wildcards() {
        assert_eq!(
            mqtt_of("url = \"mqtt://b\"\ntopic = \"x/{line}/{plc}-{group}\"").topic,
            "x/{line}/{plc}-{group}"
        );
        for (topic, part) in [
            ("opcua/{machine}", "unknown placeholder {machine}"),
            (
                "opcua/{site}/{line}",
                "uses {site} but line.site is not set",
            ),
            ("opcua/+/x", "wildcard"),
            ("opcua/#", "wildcard"),
            ("$SYS/x", "starts with $"),
            ("opcua/{line", "'{' without '}'"),
            ("opcua/{li{ne}", "'{' without '}'"),
            ("opcua/line}", "'}' without '{'"),
            ("", "must not be empty"),
        ] {
            let text = with_table(
                "sink.mqtt",
                &format!("url = \"mqtt://b\"\ntopic = \"{topic}\""),
            );
            assert_problem(&text, 16, "sink.mqtt.topic", part);
        }
    }

    #[test]
    fn mqtt_qos_2_is_refused_with_the_reason() {
        assert_eq!(mqtt_of("url = \"mqtt://b\"\nqos = 0").qos, 0);
        let text = with_table("sink.mqtt", "url = \"mqtt://b\"\nqos = 2");
        assert_problem(&text, 16, "sink.mqtt.qos", "qos 2 is not supported: use 1");
        assert_problem(&text, 16, "sink.mqtt.qos", "drop duplicates");
        let text = with_table("sink.mqtt", "url = \"mqtt://b\"\nqos = -1");
        assert_problem(&text, 16, "sink.mqtt.qos", "must be 0 or 1");
    }

    #[test]
    fn mqtt_batching_sizes_and_keep_alive_are_checked() {
        let m = mqtt_of(
            "url = \"mqtt://b\"\nbatch_max_samples = 1\nbatch_max_delay = \"1s\"\n\
             max_message_bytes = \"1KiB\"\nkeep_alive = \"20m\"\npayload = \"json+gzip\"",
        );
        assert_eq!(
            (
                m.batch_max_samples.get(),
                m.batch_max_delay,
                m.max_message_bytes
            ),
            (1, Duration::from_secs(1), 1024)
        );
        assert_eq!(
            (m.keep_alive, m.payload),
            (Duration::from_secs(1200), Payload::JsonGzip)
        );
        for (body, key, part) in [
            (
                "batch_max_samples = 0",
                "batch_max_samples",
                "positive integer",
            ),
            ("batch_max_delay = 200", "batch_max_delay", "add a unit"),
            (
                "batch_max_delay = \"0ms\"",
                "batch_max_delay",
                "greater than 0",
            ),
            (
                "max_message_bytes = \"512B\"",
                "max_message_bytes",
                "too small",
            ),
            (
                "max_message_bytes = \"1GiB\"",
                "max_message_bytes",
                "MQTT packet limit",
            ),
            (
                "max_message_bytes = \"256 parsecs\"",
                "max_message_bytes",
                "unknown size unit",
            ),
            ("payload = \"xml\"", "payload", "use json or json+gzip"),
            (
                "keep_alive = \"500ms\"",
                "keep_alive",
                "whole seconds from 1s to 65535s",
            ),
            (
                "keep_alive = \"0s\"",
                "keep_alive",
                "whole seconds from 1s to 65535s",
            ),
            (
                "keep_alive = \"1d\"",
                "keep_alive",
                "whole seconds from 1s to 65535s",
            ),
        ] {
            let text = with_table("sink.mqtt", &format!("url = \"mqtt://b\"\n{body}"));
            assert_problem(&text, 16, &format!("sink.mqtt.{key}"), part);
        }
    }

    #[test]
    fn mqtt_tls_goes_with_mqtts_and_needs_a_ca() {
        let m = mqtt_of("url = \"mqtts://b\"\ntls = { ca_file = \"ca.pem\" }");
        assert_eq!(
            m.tls,
            Some(TlsConfig {
                ca_file: Some("ca.pem".into()),
                cert_file: None,
                key_file: None
            })
        );
        let text = with_table("sink.mqtt", "url = \"mqtts://b\"");
        assert_problem(
            &text,
            15,
            "sink.mqtt.tls.ca_file",
            "missing: give tls.ca_file",
        );
        let text = with_table(
            "sink.mqtt",
            "url = \"mqtts://b\"\ntls = { cert_file = \"c.pem\", key_file = \"c.key\" }",
        );
        assert_problem(&text, 15, "sink.mqtt.tls.ca_file", "give");
        let text = with_table(
            "sink.mqtt",
            "url = \"mqtt://b\"\ntls = { ca_file = \"ca.pem\" }",
        );
        assert_problem(&text, 16, "sink.mqtt.tls", "tls needs an mqtts:// url");
        let text = with_table(
            "sink.mqtt",
            "url = \"mqtts://b\"\ntls = { ca_file = \"ca.pem\", cert_file = \"c.pem\" }",
        );
        assert_problem(
            &text,
            16,
            "sink.mqtt.tls.key_file",
            "needs cert_file and key_file",
        );
        let text = with_table(
            "sink.mqtt",
            "url = \"mqtts://b\"\n[sink.mqtt.tls]\nca_file = \"ca.pem\"\nkey_file = \"c.key\"",
        );
        assert_problem(
            &text,
            18,
            "sink.mqtt.tls.cert_file",
            "needs cert_file and key_file",
        );
    }

    #[test]
    fn hub_defaults_and_connection_string_sources() {
        let h = hub_of(HUB_CS);
        assert_eq!(
            h,
            HubConfig {
                auth: HubAuth::ConnectionString(Secret::Env("IOTHUB_CS".into())),
                sas_ttl: Duration::from_secs(3600),
                insecure_endpoint: None,
                ca_file: Some("ca.pem".into()),
                batch_max_samples: NonZeroUsize::new(500).unwrap(),
                batch_max_delay: Duration::from_millis(200),
                payload: Payload::Json,
            }
        );
        // The variable is not read while loading: IOTHUB_CS does not exist here.
        assert!(std::env::var_os("IOTHUB_CS").is_none());
        let h = hub_of("connection_string_file = \"/run/secrets/cs\"\ninsecure_endpoint = \"127.0.0.1:1883\"\nsas_ttl = \"2s\"");
        assert_eq!(
            h.auth,
            HubAuth::ConnectionString(Secret::File("/run/secrets/cs".into()))
        );
        assert_eq!(
            (h.insecure_endpoint.as_deref(), h.ca_file, h.sas_ttl),
            (Some("127.0.0.1:1883"), None, Duration::from_secs(2))
        );
    }

    #[test]
    fn hub_x509_identity_round_trips() {
        let h = hub_of(
            "ca_file = \"ca.pem\"\n[hub.x509]\nhost = \"myhub.azure-devices.net\"\ndevice_id = \"line-a-edge\"\n\
             module_id = \"opcua-connector\"\ncert_file = \"d.pem\"\nkey_file = \"d.key\"",
        );
        assert_eq!(
            h.auth,
            HubAuth::X509 {
                host: "myhub.azure-devices.net".into(),
                device_id: "line-a-edge".into(),
                module_id: Some("opcua-connector".into()),
                cert_file: "d.pem".into(),
                key_file: "d.key".into(),
            }
        );
    }

    #[test]
    fn hub_needs_exactly_one_identity() {
        let text = with_table("hub", "ca_file = \"ca.pem\"");
        assert_problem(
            &text,
            14,
            "hub",
            "missing identity: give connection_string_env, connection_string_file or x509",
        );
        let text = with_table(
            "hub",
            "ca_file = \"ca.pem\"\nconnection_string_env = \"A\"\nconnection_string_file = \"f\"",
        );
        assert_problem(
            &text,
            17,
            "hub.connection_string_file",
            "give connection_string_env or connection_string_file, not both",
        );
        let text = with_table(
            "hub",
            "ca_file = \"ca.pem\"\nconnection_string_env = \"A\"\nx509 = { host = \"h\", device_id = \"d\", cert_file = \"c\", key_file = \"k\" }",
        );
        assert_problem(
            &text,
            16,
            "hub.connection_string_env",
            "give a connection string or x509, not both",
        );
        let text = with_table(
            "hub",
            "ca_file = \"ca.pem\"\nconnection_string_env = \"1X\"",
        );
        assert_problem(
            &text,
            16,
            "hub.connection_string_env",
            "not an environment variable name",
        );
    }

    #[test]
    fn inline_connection_string_is_refused_without_echoing_it() {
        let text = with_table(
            "hub",
            "ca_file = \"ca.pem\"\nconnection_string = \"HostName=h;DeviceId=d;SharedAccessKey=c2VjcmV0\"",
        );
        assert_problem(
            &text,
            16,
            "hub.connection_string",
            "use connection_string_env",
        );
        let all = problems(&text);
        assert_eq!(all.len(), 1, "{all:#?}");
        assert!(!all.concat().contains("c2VjcmV0"));
    }

    #[test]
    fn hub_x509_fields_are_checked() {
        let x509 = |fields: &str| {
            with_table(
                "hub",
                &format!("ca_file = \"ca.pem\"\nx509 = {{ {fields} }}"),
            )
        };
        let text = x509("host = \"h.example\", device_id = \"d\", cert_file = \"c.pem\"");
        assert_problem(&text, 16, "hub.x509.key_file", "missing");
        let text = x509("device_id = \"d\", cert_file = \"c.pem\", key_file = \"k\"");
        assert_problem(&text, 16, "hub.x509.host", "missing");
        let text = x509("host = \"h.example\", cert_file = \"c.pem\", key_file = \"k\"");
        assert_problem(&text, 16, "hub.x509.device_id", "missing");
        let text =
            x509("host = \"https://h\", device_id = \"d\", cert_file = \"c\", key_file = \"k\"");
        assert_problem(&text, 16, "hub.x509.host", "is not a host name");
        let text = x509("host = \"h\", device_id = \"a/b\", cert_file = \"c\", key_file = \"k\"");
        assert_problem(&text, 16, "hub.x509.device_id", "is not an IoT Hub id");
        let text = x509("host = \"h\", device_id = \"d\", module_id = \"\", cert_file = \"c\", key_file = \"k\"");
        assert_problem(&text, 16, "hub.x509.module_id", "is not an IoT Hub id");
        let text = with_table(
            "hub",
            "ca_file = \"ca.pem\"\nsas_ttl = \"1h\"\nx509 = { host = \"h\", device_id = \"d\", cert_file = \"c\", key_file = \"k\" }",
        );
        assert_problem(
            &text,
            16,
            "hub.sas_ttl",
            "x509 authentication uses no SAS token",
        );
    }

    #[test]
    fn hub_ttl_endpoint_ca_and_batching_are_checked() {
        for (body, line, key, part) in [
            ("sas_ttl = \"1s\"", 17, "hub.sas_ttl", "must be at least 2s"),
            ("sas_ttl = 3600", 17, "hub.sas_ttl", "add a unit"),
            (
                "batch_max_samples = 0",
                17,
                "hub.batch_max_samples",
                "positive integer",
            ),
            (
                "batch_max_delay = \"0s\"",
                17,
                "hub.batch_max_delay",
                "greater than 0",
            ),
            (
                "payload = \"avro\"",
                17,
                "hub.payload",
                "use json or json+gzip",
            ),
            (
                "insecure_endpoint = \"127.0.0.1:1883\"",
                16,
                "hub.ca_file",
                "not used with insecure_endpoint",
            ),
        ] {
            let text = with_table("hub", &format!("{HUB_CS}\n{body}"));
            assert_problem(&text, line, key, part);
        }
        for (endpoint, part) in [
            ("127.0.0.1", "has no port"),
            ("mqtt://127.0.0.1:1883", "without a scheme"),
            (":1883", "no host"),
            ("h:x", "must be 1..=65535"),
        ] {
            let text = with_table(
                "hub",
                &format!("connection_string_env = \"CS\"\ninsecure_endpoint = \"{endpoint}\""),
            );
            assert_problem(&text, 16, "hub.insecure_endpoint", part);
        }
        let text = with_table("hub", "connection_string_env = \"CS\"");
        assert_problem(&text, 14, "hub.ca_file", "missing: give ca_file");
    }

    #[test]
    fn buffer_defaults_and_checks() {
        assert_eq!(parse_ok(MINIMAL).buffer, BufferConfig::default());
        assert_eq!(
            parse_ok(&with_table("buffer", "")).buffer,
            BufferConfig {
                dir: "data/buffer".into(),
                max_bytes: 2 << 30,
                when_full: WhenFull::DropOldest,
                segment_bytes: 16 << 20,
            }
        );
        for (body, line, key, part) in [
            (
                "when_full = \"block\"",
                15,
                "buffer.when_full",
                "use drop_oldest or pause",
            ),
            ("dir = \"\"", 15, "buffer.dir", "must not be empty"),
            (
                "max_bytes = \"0B\"",
                15,
                "buffer.max_bytes",
                "greater than 0",
            ),
            (
                "max_bytes = 1.5",
                15,
                "buffer.max_bytes",
                "not a whole number",
            ),
            (
                "segment_bytes = \"0MiB\"",
                15,
                "buffer.segment_bytes",
                "greater than 0",
            ),
            (
                "max_bytes = \"1MiB\"\nsegment_bytes = \"16MiB\"",
                16,
                "buffer.segment_bytes",
                "segment_bytes 16MiB is larger than max_bytes 1MiB",
            ),
            (
                "max_bytes = \"8MiB\"",
                15,
                "buffer.segment_bytes",
                "larger than max_bytes 8MiB",
            ),
        ] {
            assert_problem(&with_table("buffer", body), line, key, part);
        }
    }

    #[test]
    fn every_problem_in_broker_hub_and_buffer_is_reported() {
        let text = format!(
            "{MINIMAL}\n[sink.mqtt]\nurl = \"mqtts://b\"\nqos = 2\ntopic = \"a/{{site}}\"\n\
             keep_alive = \"1ms\"\n\n[hub]\nconnection_string_env = \"A\"\nconnection_string_file = \"b\"\n\
             sas_ttl = \"1s\"\n\n[buffer]\nwhen_full = \"wait\"\n"
        );
        let all = problems(&text);
        let expect = [
            ":15: sink.mqtt.tls.ca_file: ",
            ":16: sink.mqtt.qos: ",
            ":17: sink.mqtt.topic: ",
            ":18: sink.mqtt.keep_alive: ",
            ":22: hub.connection_string_file: ",
            ":23: hub.sas_ttl: ",
            ":20: hub.ca_file: ",
            ":26: buffer.when_full: ",
        ];
        for e in expect {
            assert!(
                all.iter().any(|p| p.contains(e)),
                "missing {e:?} in {all:#?}"
            );
        }
        assert_eq!(all.len(), expect.len(), "{all:#?}");
    }

    #[test]
    fn toml_syntax_error_is_reported_with_its_line() {
        let text = MINIMAL.replace("id = \"filler\"", "id = \"filler");
        let all = problems(&text);
        assert_eq!(all.len(), 1, "{all:#?}");
        assert!(all[0].starts_with(&format!("{FILE}:6:")), "{all:#?}");
    }

    #[test]
    fn bad_node_id_names_the_id() {
        let text = MINIMAL.replace(
            "nsu=urn:example:filler;s=Filler.Speed",
            "nsu=urn:example:filler;x=Speed",
        );
        assert_problem(
            &text,
            12,
            "plc[0].group[0].nodes[0]",
            "bad node id \"nsu=urn:example:filler;x=Speed\"",
        );
    }

    #[test]
    fn bare_number_duration_asks_for_a_unit() {
        let text = MINIMAL.replace("\"100ms\"", "100");
        assert_problem(
            &text,
            11,
            "plc[0].group[0].publishing_interval",
            "add a unit",
        );
        let text = MINIMAL.replace("\"100ms\"", "\"100 parsecs\"");
        assert_problem(
            &text,
            11,
            "plc[0].group[0].publishing_interval",
            "is not a duration",
        );
        let text = MINIMAL.replace("\"100ms\"", "\"0ms\"");
        assert_problem(
            &text,
            11,
            "plc[0].group[0].publishing_interval",
            "greater than 0",
        );
    }

    #[test]
    fn write_to_missing_plc_lists_the_plcs() {
        let text = format!(
            "{MINIMAL}\n[[write]]\nproperty = \"p\"\nplc = \"capper\"\nnode = \"ns=2;i=1\"\ntype = \"Double\"\n"
        );
        assert_problem(
            &text,
            16,
            "write[0].plc",
            "no plc \"capper\" in this file (plcs: filler)",
        );
    }

    #[test]
    fn inline_password_is_refused_with_alternatives() {
        let text = MINIMAL.replace(
            "endpoint = \"opc.tcp://192.0.2.10:4840\"",
            "endpoint = \"opc.tcp://192.0.2.10:4840\"\nauth = { username = \"u\", password = \"hunter2\" }",
        );
        assert_problem(&text, 8, "plc[0].auth.password", "use password_env");
        assert!(!problems(&text).concat().contains("hunter2"));
    }

    #[test]
    fn duplicate_plc_id_points_at_the_second() {
        let text =
            format!("{MINIMAL}\n[[plc]]\nid = \"filler\"\nendpoint = \"opc.tcp://h:4840\"\n");
        assert_problem(&text, 15, "plc[1].id", "duplicate plc id \"filler\"");
    }

    #[test]
    fn every_problem_in_a_file_is_reported() {
        let text = r#"
[line]
id = "line a"

[[plc]]
id = "filler"
endpoint = "http://192.0.2.10"
security_policy = "Basic256Sha256"

  [[plc.group]]
  name = "fast"
  publishing_interval = "100"
  sampling_interval = "5 fortnights"
  deadband = { absolute = 1, percent = 2 }
  nodes = ["ns=x;i=1", "i=85", "i=85"]

  [[plc.group]]
  name = "fast"
  publishing_interval = "1s"

[sink.parquet]
compression = "zstd:40"
roll_bytes = "12 parsecs"
roll_rows = 0

[[write]]
property = "speed"
plc = "capper"
node = "ns=2;s=Speed"
type = "Real"

[[write]]
property = "speed"
plc = "filler"
node = "ns=2;s=Speed"
type = "Int16"
min = 10
max = 1

[[method]]
name = "reset"
plc = "filler"
object = "ns=2;s=Filler"
method = "ns=2;s=Filler.Reset"
timeout = "0s"

[metrics]
listen = "localhost:9464"
"#;
        let all = problems(text);
        let expect = [
            ":3: line.id: ",
            ":7: plc[0].endpoint: ",
            ":8: plc[0].security_policy: ",
            ":12: plc[0].group[0].publishing_interval: ",
            ":13: plc[0].group[0].sampling_interval: ",
            ":14: plc[0].group[0].deadband: ",
            ":15: plc[0].group[0].nodes[0]: ",
            ":15: plc[0].group[0].nodes[2]: ",
            ":18: plc[0].group[1].name: ",
            ":17: plc[0].group[1]: ",
            ":22: sink.parquet.compression: ",
            ":23: sink.parquet.roll_bytes: ",
            ":24: sink.parquet.roll_rows: ",
            ":28: write[0].plc: ",
            ":30: write[0].type: ",
            ":33: write[1].property: ",
            ":38: write[1].max: ",
            ":45: method[0].timeout: ",
            ":48: metrics.listen: ",
        ];
        for e in expect {
            assert!(
                all.iter().any(|p| p.contains(e)),
                "missing {e:?} in {all:#?}"
            );
        }
        assert_eq!(all.len(), expect.len(), "{all:#?}");
    }

    #[test]
    fn security_policy_and_mode_must_agree() {
        let text = MINIMAL.replace(
            "endpoint = \"opc.tcp://192.0.2.10:4840\"",
            "endpoint = \"opc.tcp://192.0.2.10:4840\"\nsecurity_mode = \"Sign\"",
        );
        assert_problem(&text, 8, "plc[0].security_mode", "None goes only with None");
        let text = text.replace("\"Sign\"", "\"Encrypt\"");
        assert_problem(
            &text,
            8,
            "plc[0].security_mode",
            "unknown security mode \"Encrypt\"",
        );
    }

    #[test]
    fn missing_line_and_group_without_nodes_are_problems() {
        let text = MINIMAL.replace("[line]\nid = \"line-a\"\n", "").replace(
            "  nodes = [\"nsu=urn:example:filler;s=Filler.Speed\"]\n",
            "",
        );
        let all = problems(&text);
        assert!(
            all.contains(&format!(
                "{FILE}: line: missing [line] table with the line id"
            )),
            "{all:#?}"
        );
        assert!(
            all.iter()
                .any(|p| p.starts_with(&format!("{FILE}:7: plc[0].group[0]: a group needs"))),
            "{all:#?}"
        );
    }

    #[test]
    fn io_error_names_the_path() {
        let e = load(Path::new("/nonexistent/line.toml")).unwrap_err();
        assert!(matches!(e, ConfigError::Io { .. }));
        assert!(
            e.to_string()
                .starts_with("cannot read /nonexistent/line.toml: "),
            "{e}"
        );
    }

    #[test]
    fn node_ids_parse_in_every_form_and_display_as_written() {
        for id in [
            "nsu=urn:a:b;s=X.Y",
            "nsu=http://x/;i=7",
            "ns=3;s=a;b",
            "i=85",
            "ns=1;b=AAE=",
            "nsu=u;g=00000000-0000-0000-0000-000000000001",
        ] {
            let node: NodeRef = id.parse().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(node.to_string(), id);
        }
        for bad in [
            "",
            "85",
            "nsu=;s=X",
            "nsu=urn:a",
            "ns=70000;i=1",
            "ns=1;i=-1",
            "i=x",
            "s=",
            "g=123",
            "b=!!",
            "q=1",
        ] {
            let e = bad.parse::<NodeRef>().unwrap_err();
            assert!(
                e.to_string().starts_with(&format!("bad node id {bad:?}: ")),
                "{e}"
            );
        }
    }

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("128MB"), Ok(128_000_000));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512 KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1.5kib"), Ok(1536));
        assert_eq!(parse_size("100B"), Ok(100));
        assert!(parse_size("1024").unwrap_err().contains("no unit"));
        assert!(parse_size("12 parsecs")
            .unwrap_err()
            .contains("unknown size unit"));
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999TiB")
            .unwrap_err()
            .contains("too large"));
        assert_eq!(format_size(128 << 20), "128MiB");
        assert_eq!(format_size(1 << 30), "1GiB");
        assert_eq!(format_size(1500), "1500B");
    }

    #[test]
    fn integer_size_is_bytes() {
        let text = format!("{MINIMAL}\n[sink.parquet]\nroll_bytes = 1048576\n");
        let c = parse(Path::new(FILE), &text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.parquet.map(|p| p.roll_bytes), Some(1 << 20));
    }

    #[test]
    fn section_examples_in_configuration_md_are_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
        let doc = std::fs::read_to_string(&path).unwrap();
        let base = MINIMAL.replace("id = \"line-a\"", "id = \"line-a\"\nsite = \"plant-1\"");
        let mut seen = 0;
        for block in doc.split("```toml\n").skip(1) {
            let block = block.split("```").next().unwrap_or_default();
            let sections = ["[sink.", "[hub]", "[buffer]", "[pki]", "[metrics]"];
            if sections.iter().any(|s| block.starts_with(s)) {
                parse(Path::new("example.toml"), &format!("{base}\n{block}"))
                    .unwrap_or_else(|e| panic!("{e}\nin example:\n{block}"));
                seen += 1;
            }
        }
        assert!(
            seen >= 8,
            "only {seen} examples found in {}",
            path.display()
        );
    }

    #[test]
    fn every_file_in_configs_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                load(&path).unwrap_or_else(|e| panic!("{e}"));
                seen += 1;
            }
        }
        assert!(
            seen >= 2,
            "expected demo.toml and line-a.toml in {}",
            dir.display()
        );
    }
}
