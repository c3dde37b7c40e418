//! Stage two: read the file, deserialize it into [`raw`](super::raw) structs, then validate
//! into [`Config`], collecting every problem with its file, line and key path.
//!
//! Nothing here touches the environment or the files a config names: `password_env` is read
//! and `password_file`, `cert_file` are opened when a session connects. Relative paths (pki
//! dir, parquet dir, cert and password files) are kept exactly as written, so they are
//! relative to the working directory of the process, not to the config file.

use std::fmt;
use std::num::NonZeroUsize;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::Spanned;

use super::keypath::key_path_at;
use super::raw::{Quantity, RawConfig, RawDuration, RawNode, RawSize};
use super::types::*;

// The checks by concern, each an `impl Check` block; this file has what they share.
mod cloud;
mod dps;
mod events;
mod hub;
mod plc;
mod rules;
mod security;
mod shaping;
mod sinks;
#[cfg(test)]
mod tests;
mod upload;
mod writes;

pub use cloud::{
    DEFAULT_BATCH_MAX_DELAY, DEFAULT_COMMAND_TOPIC, DEFAULT_COMMAND_TOPIC_NO_SITE,
    DEFAULT_KEEP_ALIVE, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MQTTS_PORT,
    DEFAULT_MQTT_BATCH_MAX_SAMPLES, DEFAULT_MQTT_PORT, DEFAULT_MQTT_QOS, DEFAULT_MQTT_TOPIC,
    DEFAULT_MQTT_TOPIC_NO_SITE, MAX_MQTT_PACKET_BYTES, MIN_MAX_MESSAGE_BYTES, TOPIC_PLACEHOLDERS,
};
pub use hub::{DEFAULT_HUB_BATCH_MAX_SAMPLES, DEFAULT_SAS_TTL, MIN_SAS_TTL};
pub use plc::DEFAULT_PKI_DIR;
pub use security::is_loopback_host;
pub use sinks::{
    DEFAULT_PARQUET_DIR, DEFAULT_QUEUE_SAMPLES, DEFAULT_ROLL_BYTES, DEFAULT_ROLL_INTERVAL,
    DEFAULT_ROLL_ROWS, DEFAULT_ZSTD_LEVEL,
};
pub use writes::{
    DEFAULT_MAX_CONCURRENT_COMMANDS, DEFAULT_METHOD_TIMEOUT, DEFAULT_PENDING_WRITE_MAX_AGE,
};

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
        warnings: Vec::new(),
    };
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            check.toml_error(&e);
            return Err(ConfigError::Invalid(check.problems));
        }
    };
    match check.config(raw) {
        Some(mut config) if check.problems.is_empty() => {
            config.warnings = std::mem::take(&mut check.warnings);
            Ok(config)
        }
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
        if bytes >= factor && bytes.is_multiple_of(factor) {
            return format!("{}{unit}", bytes / factor);
        }
    }
    format!("{bytes}B")
}

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
    /// Insecure set-ups that are allowed: valid, but said out loud.
    warnings: Vec<Problem>,
}

type Span = Option<Range<usize>>;

/// The longest duration a file may give (10 years of 365.25 days).
pub const MAX_DURATION: Duration = Duration::from_secs(315_576_000);

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

    /// An insecure set-up that is allowed: a warning, `FILE:LINE: KEY: MESSAGE`.
    fn warn(&mut self, span: Span, key: &str, message: impl Into<String>) {
        let line = span.map(|s| self.line_of(s.start));
        self.warnings.push(Problem {
            file: self.file.to_owned(),
            line,
            key: key.to_owned(),
            message: message.into(),
        });
    }

    fn toml_error(&mut self, e: &toml::de::Error) {
        let span = e.span();
        let key = span
            .as_ref()
            .and_then(|s| key_path_at(self.text, s.start))
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

    /// A required key whose text must not be empty (a file path): reported missing at
    /// `parent`.
    fn required_text(
        &mut self,
        value: &Option<Spanned<String>>,
        parent: Span,
        key: &str,
    ) -> Option<String> {
        self.required(value, parent, key)
            .and_then(|v| self.non_empty(v, key))
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

    /// Every duration of the file, at most [`MAX_DURATION`] (so that adding one to a clock
    /// never overflows).
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
                Ok(d) if d <= MAX_DURATION => return Some(d),
                Ok(_) => format!(
                    "{t:?} is longer than any duration the connector takes (at most 10 years)"
                ),
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

    /// A `{name}` that is optional and must not be empty when given.
    fn optional_non_empty(
        &mut self,
        value: &Option<Spanned<String>>,
        key: &str,
    ) -> Option<Option<String>> {
        optional(value.as_ref().map(|v| self.non_empty(v, key)))
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
        let upload_via = raw.sink.as_ref().and_then(|s| s.parquet.as_ref());
        let upload_via = upload_via.and_then(|p| p.upload.as_ref()?.get_ref().via.as_ref());
        let dps = self.dps(raw.dps.as_ref(), raw.hub.is_some(), upload_via, &line_id);
        let (parquet, mqtt) = match raw.sink {
            Some(sink) => (sink.parquet, sink.mqtt),
            None => (None, None),
        };
        let parquet = parquet.map(|p| self.parquet(p, raw.hub.as_ref()));
        let commands = !raw.write.is_empty() || !raw.method.is_empty();
        let mqtt = mqtt.map(|m| {
            let checked = self.mqtt(&m, &line_id, has_site);
            if let Some(c) = &checked {
                self.mqtt_commands_secure(&m, c, commands);
            }
            checked
        });
        let hub = raw.hub.map(|h| self.hub(&h, dps));
        let buffer = self.buffer(raw.buffer.as_ref());
        if let Some(buffer) = &buffer {
            // A broker's limit is known once [sink.mqtt] is valid; the hub's is fixed.
            let mqtt_limit = mqtt
                .as_ref()
                .and_then(|m| m.as_ref().map(|m| m.max_message_bytes));
            self.segment_holds_a_message(buffer, mqtt_limit, hub.is_some());
        }
        let writes: Vec<_> = self.writes(&raw.write, &plc_names);
        let methods: Vec<_> = self.methods(&raw.method, &plc_names);
        if let Some(Some(h)) = &hub {
            if matches!(h.transport, HubTransport::Https { .. }) {
                self.https_commands(
                    &raw.write,
                    &raw.method,
                    mqtt.is_some(),
                    !raw.rule.is_empty(),
                );
            }
        }
        let metrics = raw.metrics.map(|m| self.metrics(&m));
        let rules = {
            let writes: Vec<WriteMapping> = writes.iter().flatten().cloned().collect();
            let methods: Vec<MethodMapping> = methods.iter().flatten().cloned().collect();
            let known = rules::Known {
                // From the file as written, so that a plc with a problem of its own still
                // names its nodes (and its problem is not repeated for every rule).
                plcs: raw
                    .plc
                    .iter()
                    .filter_map(|p| {
                        let p = p.get_ref();
                        let nodes = p
                            .group
                            .iter()
                            .flat_map(|g| g.get_ref().nodes.iter().flatten());
                        let nodes = nodes.filter_map(|n| match n.get_ref() {
                            RawNode::Id(id) => Some((id.parse().ok()?, false)),
                            RawNode::Table(t) => {
                                Some((t.id.as_ref()?.get_ref().parse().ok()?, t.flatten.is_some()))
                            }
                        });
                        let groups = p
                            .group
                            .iter()
                            .filter_map(|g| g.get_ref().name.as_ref().map(|n| n.get_ref().clone()));
                        Some(rules::KnownPlc {
                            id: p.id.as_ref()?.get_ref().clone(),
                            nodes: nodes.collect(),
                            groups: groups.collect(),
                        })
                    })
                    .collect(),
                writes: &writes,
                methods: &methods,
                telemetry: mqtt.is_some() || hub.is_some(),
            };
            self.rules(&raw.rule, &known)
        };
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
            rules: rules.into_iter().collect::<Option<_>>()?,
            warnings: Vec::new(),
        })
    }
}
