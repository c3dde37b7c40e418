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
    self, Quantity, RawAuth, RawBrowse, RawConfig, RawDuration, RawGroup, RawMethod, RawNode,
    RawParquet, RawPlc, RawSize, RawWrite,
};
use super::types::*;

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
        let mut message = e
            .message()
            .trim()
            .replace('\n', "; ")
            .replace("unknown field", "unknown key");
        if let Some(table) = ["sink.mqtt", "hub", "buffer"]
            .into_iter()
            .find(|t| key == *t)
        {
            message.push_str(&format!(" ([{table}] is not supported yet)"));
        }
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
        let parquet = raw.sink.and_then(|s| s.parquet).map(|p| self.parquet(p));
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

    #[test]
    fn unsupported_sections_are_unknown_keys() {
        let text = format!("{MINIMAL}\n[sink.mqtt]\nurl = \"mqtt://x\"\n");
        assert_problem(&text, 14, "sink.mqtt", "not supported yet");
        let text = format!("{MINIMAL}\n[hub]\nconnection_string_env = \"X\"\n");
        assert_problem(&text, 14, "hub", "unknown key `hub`");
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
