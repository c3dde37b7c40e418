//! `[dps]`: the Azure Device Provisioning Service that assigns the `[hub]` identity. With it,
//! `[hub]` names no identity (its other keys apply to the assigned hub).

use std::path::PathBuf;

use super::{Check, Span};
use crate::config::raw::{RawDps, RawDpsX509, RawHub, Spanned};
use crate::config::types::*;

const REGISTRATION_ID_RULE: &str =
    "1 to 128 of a-z A-Z 0-9 - . _ :, ending with a letter, a digit or -";

impl Check<'_> {
    /// `[dps]`: `None` when the file has none, `Some(None)` when it has problems (reported),
    /// else the checked table. `line_id` is the default registration id; `has_hub`: the file
    /// has `[hub]`; `upload_via`: its `[sink.parquet.upload] via`, if any.
    pub(super) fn dps(
        &mut self,
        raw: Option<&RawDps>,
        has_hub: bool,
        upload_via: Option<&Spanned<String>>,
        line_id: &str,
    ) -> Option<Option<DpsConfig>> {
        let d = raw?;
        let header = self.header("dps");
        if !has_hub {
            self.problem(header.clone(), "dps", "[dps] assigns the identity of [hub], and there is no [hub]: add [hub] with its ca_file (the root CA of the hub DPS assigns; its other keys, such as endpoint or payload, apply to that hub)");
        }
        if let Some(via) = upload_via {
            self.at(via, "sink.parquet.upload.via", "IoT Hub's file upload is not available with [dps] yet (the identity is assigned at run time): upload to a store with to = \"az://...\" instead");
        }
        Some(self.dps_table(d, header, line_id))
    }

    fn dps_table(&mut self, raw: &RawDps, header: Span, line_id: &str) -> Option<DpsConfig> {
        let k = |name: &str| format!("dps.{name}");
        for (given, name) in [
            (&raw.symmetric_key, "symmetric_key"),
            (&raw.group_key, "group_key"),
        ] {
            if let Some(inline) = given {
                self.at(inline, &k(name), format!("an inline key is not allowed (it is a secret): use {name}_env (an environment variable name) or {name}_file"));
            }
        }
        let id_scope = self
            .required(&raw.id_scope, header.clone(), &k("id_scope"))
            .and_then(|s| {
                if is_valid_id_scope(s.get_ref()) {
                    Some(s.get_ref().clone())
                } else {
                    self.at(s, &k("id_scope"), format!("{:?} is not an ID scope: letters and digits, as the Azure portal shows it on the DPS overview (e.g. \"0ne00000A0A\")", s.get_ref()));
                    None
                }
            });
        let registration_id = match &raw.registration_id {
            Some(r) if is_valid_registration_id(r.get_ref()) => Some(r.get_ref().clone()),
            Some(r) => {
                let message = format!(
                    "{:?} is not a DPS registration id: {REGISTRATION_ID_RULE}",
                    r.get_ref()
                );
                self.at(r, &k("registration_id"), message);
                None
            }
            None if line_id.is_empty() || is_valid_registration_id(line_id) => {
                Some(line_id.to_owned())
            }
            None => {
                let message = format!("missing: the default, line.id {line_id:?}, is not a DPS registration id ({REGISTRATION_ID_RULE}): give registration_id");
                self.problem(header.clone(), &k("registration_id"), message);
                None
            }
        };
        let global_endpoint = match &raw.global_endpoint {
            None => Some(DEFAULT_DPS_GLOBAL_ENDPOINT.to_owned()),
            Some(g) => {
                let v = g.get_ref();
                let ok = !v.is_empty()
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
                if !ok {
                    self.at(g, &k("global_endpoint"), format!("{v:?} is not a host name: write DPS's host, e.g. \"{DEFAULT_DPS_GLOBAL_ENDPOINT}\" (port 8883; use endpoint for host:port)"));
                }
                ok.then(|| v.clone())
            }
        };
        let endpoint = match &raw.endpoint {
            None => Some(None),
            Some(e) => match super::cloud::parse_host_port(e.get_ref()) {
                Ok(_) => Some(Some(e.get_ref().clone())),
                Err(message) => {
                    self.at(e, &k("endpoint"), message);
                    None
                }
            },
        };
        let ca_file = match &raw.ca_file {
            Some(ca) => self.ca_roots(ca, &k("ca_file")),
            None => {
                self.problem(header.clone(), &k("ca_file"), "missing: give ca_file, the PEM file of DPS's root CA (DigiCert Global Root G2 for Azure), or \"system\" to trust the operating system's roots");
                None
            }
        };
        let credential = self.dps_credential(raw, header);
        Some(DpsConfig {
            id_scope: id_scope?,
            registration_id: registration_id?,
            global_endpoint: global_endpoint?,
            endpoint: endpoint?,
            ca_file: ca_file?,
            credential: credential?,
        })
    }

    /// Exactly one of the key sources and `x509`.
    fn dps_credential(&mut self, raw: &RawDps, header: Span) -> Option<DpsCredential> {
        let k = |name: &str| format!("dps.{name}");
        let symmetric = raw.symmetric_key_env.is_some() || raw.symmetric_key_file.is_some();
        let group = raw.group_key_env.is_some() || raw.group_key_file.is_some();
        let given = usize::from(symmetric) + usize::from(group) + usize::from(raw.x509.is_some());
        if given == 0 {
            if raw.symmetric_key.is_none() && raw.group_key.is_none() {
                self.problem(header, "dps", "missing credential: give symmetric_key_env or symmetric_key_file (individual enrollment), group_key_env or group_key_file (group enrollment), or x509 = { cert_file, key_file }");
            }
            return None;
        }
        if given > 1 {
            // Point at the second one given: the group key after a symmetric key, else x509.
            let group_key = [
                (&raw.group_key_env, "dps.group_key_env"),
                (&raw.group_key_file, "dps.group_key_file"),
            ]
            .into_iter()
            .find_map(|(v, key)| v.as_ref().map(|v| (Some(v.span()), key)));
            let x509 = raw
                .x509
                .as_ref()
                .and_then(|x| x.cert_file.as_ref().or(x.key_file.as_ref()))
                .map(|v| (Some(v.span()), "dps.x509"));
            let (span, key) = match (symmetric, group_key, x509) {
                (true, Some(g), _) => g,
                (_, _, Some(x)) => x,
                _ => (header, "dps"),
            };
            self.problem(span, key, "give one credential: a symmetric key (individual enrollment), a group key (group enrollment) or x509, not several");
            return None;
        }
        if symmetric {
            let s = self.secret_ref(
                &raw.symmetric_key_env,
                &raw.symmetric_key_file,
                &k("symmetric_key"),
            )?;
            return s.map(DpsCredential::SymmetricKey);
        }
        if group {
            let s = self.secret_ref(&raw.group_key_env, &raw.group_key_file, &k("group_key"))?;
            return s.map(DpsCredential::GroupKey);
        }
        raw.x509.as_ref().and_then(|x| self.dps_x509(x, header))
    }

    fn dps_x509(&mut self, raw: &RawDpsX509, header: Span) -> Option<DpsCredential> {
        let k = |name: &str| format!("dps.x509.{name}");
        let parent = raw
            .cert_file
            .as_ref()
            .or(raw.key_file.as_ref())
            .map(Spanned::span)
            .or(header);
        let cert_file = self.required_text(&raw.cert_file, parent.clone(), &k("cert_file"));
        let key_file = self.required_text(&raw.key_file, parent, &k("key_file"));
        Some(DpsCredential::X509 {
            cert_file: PathBuf::from(cert_file?),
            key_file: PathBuf::from(key_file?),
        })
    }

    /// The `[hub]` identity with `[dps]` (`None` when `[dps]` has problems): assigned by DPS.
    pub(super) fn hub_dps_identity(
        &mut self,
        raw: &RawHub,
        dps: Option<DpsConfig>,
    ) -> Option<HubAuth> {
        self.hub_without_identity(raw, dps.as_ref());
        dps.map(|d| HubAuth::Dps(Box::new(d)))
    }

    /// With `[dps]`, `[hub]` names no identity: each identity key is a problem.
    fn hub_without_identity(&mut self, raw: &RawHub, dps: Option<&DpsConfig>) {
        let direct = "DPS itself is reached directly over MQTT on 8883 (not over WebSockets, not through the proxy): the registration fails where only 443 or the proxy gets out";
        if let Some(p) = &raw.proxy {
            self.warn(Some(p.span()), "hub.proxy", direct);
        } else if let Some(t) = raw
            .transport
            .as_ref()
            .filter(|t| t.get_ref() == "websockets")
        {
            self.warn(Some(t.span()), "hub.transport", direct);
        }
        if let Some(t) = raw.transport.as_ref().filter(|t| t.get_ref() == "https") {
            self.at(t, "hub.transport", "with [dps] the assigned hub is reached over MQTT (\"mqtt\" or \"websockets\"); transport = \"https\" takes a configured device identity");
        }
        let why = "with [dps] the hub identity is assigned by the provisioning service: remove it from [hub]";
        for (given, name) in [
            (&raw.connection_string_env, "connection_string_env"),
            (&raw.connection_string_file, "connection_string_file"),
        ] {
            if let Some(g) = given {
                self.at(g, &format!("hub.{name}"), why);
            }
        }
        if let Some(x) = &raw.x509 {
            let at = [&x.host, &x.device_id, &x.cert_file, &x.key_file]
                .into_iter()
                .flatten()
                .next()
                .map(Spanned::span);
            let message = "with [dps] the hub identity is assigned by the provisioning service: remove x509 from [hub] (an X.509 enrollment goes in [dps] x509 = { cert_file, key_file })";
            self.problem(at.or_else(|| self.header("hub")), "hub.x509", message);
        }
        let x509 = dps.is_some_and(|d| matches!(d.credential, DpsCredential::X509 { .. }));
        if let (Some(ttl), true) = (&raw.sas_ttl, x509) {
            self.at(
                ttl,
                "hub.sas_ttl",
                "an X.509 enrollment uses no SAS token: remove sas_ttl",
            );
        }
    }
}
