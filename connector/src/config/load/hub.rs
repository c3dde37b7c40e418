//! `[hub]`: the identity (a connection string, `x509`, or DPS's), the way to the hub
//! (`transport`, `endpoint`, `proxy`, the tests' endpoints), its TLS roots and what it sends.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use super::cloud::{parse_host_port, RawProxy, DEFAULT_BATCH_MAX_DELAY};
use super::{is_loopback_host, optional, Check, Span, DEFAULT_PENDING_WRITE_MAX_AGE};
use crate::config::raw::{RawHub, RawMethod, RawWrite, RawX509, Spanned};
use crate::config::types::*;
use crate::config::{check_model_id, is_valid_id};

/// `[hub]` defaults.
pub const DEFAULT_SAS_TTL: Duration = Duration::from_secs(3600);
/// Short enough for tests of token renewal; real deployments keep the default.
pub const MIN_SAS_TTL: Duration = Duration::from_secs(2);
pub const DEFAULT_HUB_BATCH_MAX_SAMPLES: usize = 500;
/// How often `transport = "https"` sends by default.
pub const DEFAULT_SEND_EVERY: Duration = Duration::from_secs(60);

impl Check<'_> {
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
                    let every = self.at_least_a_second(
                        raw.send_every.as_ref(),
                        &k("send_every"),
                        DEFAULT_SEND_EVERY,
                    );
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
        if let Some(every) = &raw.send_every {
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
                .at_least_a_second(Some(i), &k("status_interval"), Duration::ZERO)
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
        let cert_file = self.required_text(&raw.cert_file, parent.clone(), &k("cert_file"));
        let key_file = self.required_text(&raw.key_file, parent, &k("key_file"));
        Some(HubAuth::X509 {
            host: host?,
            device_id: device_id??,
            module_id: optional(module_id)?,
            cert_file: cert_file.map(PathBuf::from)?,
            key_file: key_file.map(PathBuf::from)?,
        })
    }
}
