//! The line, its PLCs (endpoint, security, auth), their groups and browse selections, and
//! the `[pki]` table.

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::path::PathBuf;

use crate::config::raw::Spanned;

use super::{is_env_name, optional, Check, Span, DEFAULT_MAX_CONCURRENT_COMMANDS};
use crate::config::raw::{self, RawAuth, RawBrowse, RawGroup, RawNode, RawPlc};
use crate::config::types::*;

/// Default `[pki] dir`.
pub const DEFAULT_PKI_DIR: &str = "pki";

impl Check<'_> {
    pub(super) fn line(&mut self, raw: Option<raw::RawLine>) -> Option<Line> {
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

    pub(super) fn plc(&mut self, raw: &RawPlc, span: Span, key: &str) -> Option<Plc> {
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
        let auth = self.auth(raw.auth.as_ref(), span.clone(), key);
        if let (Some(SecurityMode::None), Some(Auth::UserName { .. })) = (&mode, &auth) {
            self.warn(span, &format!("{key}.auth"), "a username on a channel with security_mode = \"None\": the password crosses the network in clear; use security_mode = \"SignAndEncrypt\" (or a certificate)");
        }
        let max_concurrent_commands = match &raw.max_concurrent_commands {
            None => Some(DEFAULT_MAX_CONCURRENT_COMMANDS),
            Some(n) => self
                .count(n, &format!("{key}.max_concurrent_commands"))
                .map(NonZeroUsize::get),
        };

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
        let events = self.events_of(raw, key, &names);
        Some(Plc {
            id: id?,
            endpoint: endpoint?,
            security_policy: policy?,
            security_mode: mode?,
            auth: auth?,
            groups: groups.into_iter().collect::<Option<_>>()?,
            events: events?,
            max_concurrent_commands: max_concurrent_commands?,
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

        let shaping = self.shaping(raw.telemetry.as_ref(), key);
        let group_exception = shaping.as_ref().and_then(|(_, e)| e.clone());
        let mut nodes = Vec::new();
        let mut seen = HashSet::new();
        for (k, entry) in raw.nodes.iter().flatten().enumerate() {
            let nkey = format!("{key}.nodes[{k}]");
            let (id, alias, flatten, telemetry) = match entry.get_ref() {
                RawNode::Id(id) => (
                    Some(Spanned::new(entry.span(), id.clone())),
                    None,
                    None,
                    None,
                ),
                RawNode::Table(t) => (
                    t.id.clone(),
                    t.name.as_ref(),
                    t.flatten.as_ref(),
                    t.telemetry.as_ref(),
                ),
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
            let flatten = self.flatten(flatten, &format!("{nkey}.flatten"));
            let exception = match telemetry {
                None => Some(None),
                Some(t) => {
                    if let Some(message) = node.as_ref().and_then(super::rules::sample_form) {
                        self.at(&id, &nkey, message);
                    }
                    self.node_exception(t, group_exception.as_ref(), &nkey)
                        .map(Some)
                }
            };
            nodes.push(node.zip(alias).zip(flatten).zip(exception).map(
                |(((node, alias), flatten), exception)| NodeEntry {
                    node,
                    alias,
                    flatten,
                    exception,
                },
            ));
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
        let backfill = self.backfill(raw, key);
        let (telemetry, exception) = shaping?;
        Some(Group {
            backfill: backfill?,
            telemetry,
            exception,
            name: name?,
            publishing_interval: publishing?,
            sampling_interval: sampling?,
            queue_size: queue_size?,
            deadband: deadband?,
            nodes: nodes.into_iter().collect::<Option<_>>()?,
            browse: browse.into_iter().collect::<Option<_>>()?,
        })
    }

    /// `backfill`, `backfill_max`, `backfill_rate`; the last two only with the first.
    fn backfill(&mut self, raw: &RawGroup, key: &str) -> Option<Option<BackfillConfig>> {
        let on = raw.backfill.as_ref().is_some_and(|b| *b.get_ref());
        let max = match &raw.backfill_max {
            None => Some(BackfillConfig::DEFAULT_MAX),
            Some(d) => self.positive_duration(d, &format!("{key}.backfill_max")),
        };
        let rate = match &raw.backfill_rate {
            None => Some(BackfillConfig::DEFAULT_RATE),
            Some(r) => match u32::try_from(*r.get_ref()) {
                Ok(n) if (1..=1_000_000).contains(&n) => Some(n),
                _ => {
                    self.at(
                        r,
                        &format!("{key}.backfill_rate"),
                        format!(
                            "backfill_rate {} must be 1..=1000000 values per second",
                            r.get_ref()
                        ),
                    );
                    None
                }
            },
        };
        if !on {
            for (set, k) in [
                (raw.backfill_max.as_ref().map(|s| s.span()), "backfill_max"),
                (
                    raw.backfill_rate.as_ref().map(|s| s.span()),
                    "backfill_rate",
                ),
            ] {
                if let Some(span) = set {
                    self.problem(
                        Some(span),
                        &format!("{key}.{k}"),
                        "only with backfill = true",
                    );
                }
            }
        }
        let (max, rate) = (max?, rate?);
        Some(on.then_some(BackfillConfig { max, rate }))
    }

    /// `flatten = ["Speed", "Axes[1].Position"]`: valid, distinct field paths.
    fn flatten(
        &mut self,
        raw: Option<&Spanned<Vec<Spanned<String>>>>,
        key: &str,
    ) -> Option<Vec<FieldPath>> {
        let Some(raw) = raw else {
            return Some(Vec::new());
        };
        if raw.get_ref().is_empty() {
            self.at(
                raw,
                key,
                "empty: list the structure fields to flatten, or leave flatten out",
            );
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (i, text) in raw.get_ref().iter().enumerate() {
            let fkey = format!("{key}[{i}]");
            match FieldPath::parse(text.get_ref()) {
                Ok(path) if out.contains(&path) => {
                    self.at(text, &fkey, format!("field {path} is listed twice"));
                    ok = false;
                }
                Ok(path) => out.push(path),
                Err(e) => {
                    self.at(
                        text,
                        &fkey,
                        format!("not a field path (Name, Name.Field, Name[0].Field): {e}"),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
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

    pub(super) fn pki(&mut self, raw: Option<raw::RawPki>) -> Option<Pki> {
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
}
