//! Telemetry to Azure IoT Hub: the MQTT sender of `cloud::mqtt` with the hub's client id,
//! username, SAS password (renewed by reconnecting before it expires) or X.509 certificate,
//! and the hub's telemetry topic with its property bag. QoS 1, 256 KB per message.

use std::sync::Arc;
use std::time::SystemTime;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};

use super::connection::{ConnectionString, Identity, SecretKey};
use super::files::FileUploads;
use super::sas;
use crate::cloud::mqtt::sender::{proxy, rustls_config, Renewer};
use crate::cloud::mqtt::TopicFn;
use crate::config::{HubAuth, HubConfig, HubTransport, Secret, HUB_MAX_MESSAGE_BYTES};

/// The largest packet taken from the hub.
pub const C2D_MAX_INCOMING: usize = 2 << 20;

/// The path of IoT Hub's MQTT-over-WebSockets endpoint.
pub const WEBSOCKET_PATH: &str = "/$iothub/websocket";

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{0}")]
    Secret(String),
    #[error("connection string: {0}")]
    ConnectionString(String),
    #[error("{0}")]
    Tls(String),
    #[error("endpoint {0:?} is not host:port")]
    Endpoint(String),
    #[error("file upload: {0}")]
    Files(String),
}

/// A configured hub identity, ready to connect.
pub struct Hub {
    cfg: HubConfig,
    identity: Identity,
    /// Where the TCP connection goes (the gateway for IoT Edge, else the hub).
    connect_host: String,
    key: Option<SecretKey>,
    client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// The configured proxy, or none at all: the environment's `HTTPS_PROXY` is not used (the
/// hub's MQTT connection does not see it either; one place configures the way out).
pub fn with_proxy(
    builder: reqwest::ClientBuilder,
    proxy: Option<&reqwest::Proxy>,
) -> reqwest::ClientBuilder {
    match proxy {
        Some(p) => builder.proxy(p.clone()),
        None => builder.no_proxy(),
    }
}

/// The connection string (whitespace around it trimmed).
fn connection_string(s: &Secret) -> Result<String, HubError> {
    s.read("connection_string")
        .map(|t| t.trim().to_owned())
        .map_err(HubError::Secret)
}

impl Hub {
    /// Reads the connection string (never logged) or the X.509 identity.
    pub fn new(cfg: &HubConfig) -> Result<Hub, HubError> {
        match &cfg.auth {
            HubAuth::ConnectionString(s) => {
                let cs: ConnectionString =
                    connection_string(s)?
                        .parse()
                        .map_err(|e: super::ConnectionStringError| {
                            HubError::ConnectionString(e.to_string())
                        })?;
                if cs.x509 {
                    return Err(HubError::ConnectionString(
                        "x509=true needs the certificate files: use [hub] x509 = { host, device_id, cert_file, key_file }".into(),
                    ));
                }
                Ok(Hub {
                    cfg: cfg.clone(),
                    identity: cs.identity(),
                    connect_host: cs.connect_host().to_owned(),
                    key: cs.shared_access_key.clone(),
                    client_cert: None,
                })
            }
            HubAuth::X509 {
                host,
                device_id,
                module_id,
                cert_file,
                key_file,
            } => Ok(Hub {
                cfg: cfg.clone(),
                identity: Identity {
                    host: host.clone(),
                    device_id: device_id.clone(),
                    module_id: module_id.clone(),
                },
                connect_host: host.clone(),
                key: None,
                client_cert: Some((cert_file.clone(), key_file.clone())),
            }),
            HubAuth::Dps(_) => Err(HubError::ConnectionString(
                "the identity is assigned by DPS at run time ([dps])".into(),
            )),
        }
    }

    /// The identity DPS assigned: `key` signs the SAS tokens (the device key DPS took), or
    /// `client_cert` (certificate and key files) authenticates with X.509.
    pub fn assigned(
        cfg: &HubConfig,
        identity: Identity,
        key: Option<SecretKey>,
        client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    ) -> Hub {
        Hub {
            cfg: cfg.clone(),
            connect_host: identity.host.clone(),
            identity,
            key,
            client_cert,
        }
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The MQTT username, with `[hub] model_id` (IoT Plug and Play) when it is set.
    pub fn username(&self) -> String {
        self.identity.username(self.cfg.model_id.as_deref())
    }

    /// TLS to the hub: its CA file, and the X.509 client certificate when configured.
    fn tls(&self) -> Result<rustls::ClientConfig, HubError> {
        let client = self
            .client_cert
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()));
        rustls_config(self.cfg.ca_file.as_ref(), client).map_err(|e| HubError::Tls(e.to_string()))
    }

    /// The client of the hub's file-upload API, with this identity, the hub's TLS and proxy.
    pub fn file_uploads(&self) -> Result<FileUploads, HubError> {
        FileUploads::new(
            &self.identity,
            self.key.clone(),
            self.cfg.sas_ttl,
            self.tls()?,
            self.cfg.https_endpoint.as_deref(),
            self.http_proxy().map_err(HubError::Files)?,
        )
        .map_err(HubError::Files)
    }

    /// MQTT 3.1.1 options: client id, keep-alive, TLS on 8883 or WebSockets on 443 (to the
    /// hub, its gateway or the configured `endpoint`; the test-only plain endpoint), the proxy
    /// and the X.509 client certificate when configured.
    pub fn options(&self) -> Result<MqttOptions, HubError> {
        let parse = |ep: &String| -> Result<(String, u16), HubError> {
            let (h, p) = ep
                .rsplit_once(':')
                .ok_or_else(|| HubError::Endpoint(ep.clone()))?;
            let port = p.parse().map_err(|_| HubError::Endpoint(ep.clone()))?;
            Ok((
                h.trim_start_matches('[').trim_end_matches(']').to_owned(),
                port,
            ))
        };
        let websockets = self.cfg.transport == HubTransport::WebSockets;
        let (host, port, tls) = match (&self.cfg.insecure_endpoint, &self.cfg.endpoint) {
            (Some(ep), _) => {
                let (h, p) = parse(ep)?;
                (h, p, false)
            }
            (None, Some(ep)) => {
                let (h, p) = parse(ep)?;
                (h, p, true)
            }
            (None, None) if websockets => (self.connect_host.clone(), 443, true),
            (None, None) => (self.connect_host.clone(), 8883, true),
        };
        let address = if tls && websockets {
            let h = if host.contains(':') {
                format!("[{host}]")
            } else {
                host.clone()
            };
            format!("wss://{h}:{port}{WEBSOCKET_PATH}")
        } else {
            host
        };
        let mut o = MqttOptions::new(self.identity.client_id(), address, port);
        o.set_keep_alive(std::time::Duration::from_secs(60));
        o.set_clean_session(true);
        o.set_inflight(100);
        // In: room for an oversized cloud-to-device message, refused by the write service
        // without dropping the connection (IoT Hub itself sends at most 64 KiB).
        o.set_max_packet_size(C2D_MAX_INCOMING, HUB_MAX_MESSAGE_BYTES + 4096);
        if self.key.is_none() {
            // X.509: the username without a password.
            o.set_credentials(self.username(), "");
        }
        if tls {
            let config = TlsConfiguration::Rustls(Arc::new(self.tls()?));
            o.set_transport(if websockets {
                Transport::wss_with_config(config)
            } else {
                Transport::tls_with_config(config)
            });
        }
        if let Some(p) = &self.cfg.proxy {
            o.set_proxy(proxy(p).map_err(HubError::Secret)?);
        }
        Ok(o)
    }

    /// Makes a fresh SAS token each time it is called (None for X.509).
    pub fn renewer(&self) -> Option<Renewer> {
        let key = self.key.clone()?;
        let (resource, username, ttl) = (
            self.identity.resource_uri(),
            self.username(),
            self.cfg.sas_ttl,
        );
        Some(Arc::new(move || {
            let issued = SystemTime::now();
            let expiry = sas::expiry_unix_s(issued, ttl);
            let token = sas::sas_token(&resource, key.expose_base64(), expiry, None)
                .map_err(|e| e.to_string())?;
            Ok((username.clone(), token, sas::renew_at(issued, ttl)))
        }))
    }

    /// The telemetry topic of a (plc, group) stream, with the hub's message properties.
    pub fn telemetry_topics(&self) -> TopicFn {
        let identity = self.identity.clone();
        let payload = self.cfg.payload;
        Arc::new(move |plc, group| identity.telemetry_topic(payload, plc, group))
    }

    /// The topic of an event stream's messages (`messageType=event`).
    pub fn event_topics(&self) -> TopicFn {
        let identity = self.identity.clone();
        let payload = self.cfg.payload;
        Arc::new(move |plc, group| identity.event_topic(payload, plc, group))
    }

    /// The URL of the device's events endpoint (HTTPS) and a maker of fresh clients for it
    /// (the hub's TLS with the X.509 client certificate when configured, the proxy).
    #[allow(clippy::type_complexity)]
    pub fn events_client(
        &self,
    ) -> Result<
        (
            String,
            Box<dyn Fn() -> Result<reqwest::Client, String> + Send + Sync>,
        ),
        String,
    > {
        if self.identity.module_id.is_some() {
            return Err("transport = \"https\": IoT Hub takes no module telemetry over HTTPS; use a device identity or transport = \"mqtt\"".into());
        }
        let authority = self
            .cfg
            .endpoint
            .clone()
            .unwrap_or_else(|| self.connect_host.clone());
        let url = format!(
            "https://{authority}/devices/{}/messages/events?api-version={}",
            super::encode_component(&self.identity.device_id),
            super::https::EVENTS_API_VERSION
        );
        let tls = self.tls().map_err(|e| e.to_string())?;
        let proxy = self.http_proxy()?;
        let make = move || {
            let b = reqwest::Client::builder()
                .use_preconfigured_tls(tls.clone())
                .https_only(true)
                .connect_timeout(std::time::Duration::from_secs(10))
                .user_agent(concat!("opcua-connector/", env!("CARGO_PKG_VERSION")));
            with_proxy(b, proxy.as_ref())
                .build()
                .map_err(|e| e.to_string())
        };
        Ok((url, Box::new(make)))
    }

    /// The configured proxy for the hub's HTTPS requests (telemetry, file upload).
    pub fn http_proxy(&self) -> Result<Option<reqwest::Proxy>, String> {
        let Some(p) = &self.cfg.proxy else {
            return Ok(None);
        };
        let mut proxy = reqwest::Proxy::all(&p.url).map_err(|e| e.to_string())?;
        if let Some(user) = &p.username {
            let password = match &p.password {
                Some(s) => s.read("proxy_password")?,
                None => String::new(),
            };
            proxy = proxy.basic_auth(user, &password);
        }
        Ok(Some(proxy))
    }

    /// The topic filter of the device's cloud-to-device messages (none for a module).
    pub fn c2d_filter(&self) -> Option<String> {
        self.identity
            .module_id
            .is_none()
            .then(|| super::topics::c2d_filter(&self.identity.device_id))
    }

    /// Who the connector is on the hub: `host/device` or `host/device/module`.
    pub fn identity_text(&self) -> String {
        format!("{}/{}", self.identity.host, self.identity.client_id())
    }

    /// The topic of the local rules' alerts (`messageType=alert`).
    pub fn alert_topics(&self) -> TopicFn {
        let identity = self.identity.clone();
        let payload = self.cfg.payload;
        Arc::new(move |plc, group| identity.alert_topic(payload, plc, group))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Payload;

    fn x509_hub(module_id: Option<&str>, model_id: Option<&str>) -> Hub {
        let cfg = HubConfig {
            auth: HubAuth::X509 {
                host: "myhub.azure-devices.net".into(),
                device_id: "line-a-edge".into(),
                module_id: module_id.map(str::to_owned),
                cert_file: "d.pem".into(),
                key_file: "d.key".into(),
            },
            sas_ttl: std::time::Duration::from_secs(3600),
            insecure_endpoint: Some("127.0.0.1:1883".into()),
            https_endpoint: None,
            endpoint: None,
            transport: crate::config::HubTransport::Mqtt,
            proxy: None,
            ca_file: None,
            batch_max_samples: std::num::NonZeroUsize::MIN,
            batch_max_delay: std::time::Duration::from_millis(200),
            payload: Payload::Json,
            pending_write_max_age: std::time::Duration::from_secs(3600),
            model_id: model_id.map(str::to_owned),
            status_interval: None,
        };
        Hub::new(&cfg).expect("an x509 hub")
    }

    /// The username the CONNECT carries (X.509: set in the options; SAS: by the renewer).
    fn connect_username(hub: &Hub) -> String {
        hub.options()
            .expect("options")
            .credentials()
            .expect("credentials")
            .username
    }

    #[test]
    fn the_connect_username_announces_model_id_only_when_configured() {
        let plain = x509_hub(None, None);
        assert_eq!(
            connect_username(&plain),
            "myhub.azure-devices.net/line-a-edge/?api-version=2021-04-12"
        );
        let pnp = x509_hub(None, Some("dtmi:com:example:BottlingLine;1"));
        assert_eq!(
            connect_username(&pnp),
            "myhub.azure-devices.net/line-a-edge/?api-version=2021-04-12\
             &model-id=dtmi%3Acom%3Aexample%3ABottlingLine%3B1"
        );
        let module = x509_hub(Some("opcua"), Some("dtmi:com:example:BottlingLine;1"));
        assert_eq!(
            connect_username(&module),
            "myhub.azure-devices.net/line-a-edge/opcua/?api-version=2021-04-12\
             &model-id=dtmi%3Acom%3Aexample%3ABottlingLine%3B1"
        );
        assert_eq!(module.username(), connect_username(&module));
    }
}
