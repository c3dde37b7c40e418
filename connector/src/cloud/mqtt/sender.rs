//! The MQTT event-loop task: sends buffered messages in order and removes them from the
//! buffer when the broker acknowledges them.
//!
//! rumqttc gives no per-publish handle, so acks are correlated here: publishes go out in
//! buffer order, each `Outgoing::Publish(pkid)` event pairs the next sent buffer id with its
//! packet id, and `Incoming::PubAck(pkid)` acks that id. Sessions are clean: after every
//! (re)connect rumqttc forgets what was in flight and the buffer hands out every
//! unacknowledged message again, in order (so a message can repeat after a reconnect; a
//! consumer drops repeats by `seq`).

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport,
};

use super::flow::{Flow, Sending, WINDOW};
use crate::cloud::control::{Control, Message};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::MqttError;
use crate::config::{CaRoots, MqttSinkConfig, MqttTransport, ProxyConfig};

/// A rustls client config: the roots (a PEM CA bundle or the system's), and an optional
/// client certificate from PEM files.
pub fn rustls_config(
    ca_file: Option<&CaRoots>,
    client: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<rustls::ClientConfig, MqttError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| MqttError::Tls(format!("cannot read {}: {e}", p.display())))
    };
    let mut roots = rustls::RootCertStore::empty();
    if let Some(CaRoots::System) = ca_file {
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            let why = found
                .errors
                .first()
                .map_or_else(|| "none found".to_owned(), ToString::to_string);
            return Err(MqttError::Tls(format!(
                "ca_file = \"system\": no usable root certificate in the operating system's store ({why})"
            )));
        }
    }
    if let Some(CaRoots::File(ca)) = ca_file {
        let pem = read(ca)?;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| MqttError::Tls(format!("{}: {e}", ca.display())))?;
            roots
                .add(cert)
                .map_err(|e| MqttError::Tls(format!("{}: {e}", ca.display())))?;
        }
        if roots.is_empty() {
            return Err(MqttError::Tls(format!(
                "{}: no certificate in the CA file",
                ca.display()
            )));
        }
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    match client {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let pem = read(cert)?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| MqttError::Tls(format!("{}: {e}", cert.display())))?;
            let pem = read(key)?;
            let key_der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
                pem::Error::NoItemsFound => {
                    MqttError::Tls(format!("{}: no private key", key.display()))
                }
                e => MqttError::Tls(format!("{}: {e}", key.display())),
            })?;
            builder
                .with_client_auth_cert(certs, key_der)
                .map_err(|e| MqttError::Tls(format!("client certificate: {e}")))
        }
    }
}

/// rumqttc's proxy settings: HTTP CONNECT, with basic authentication when configured.
pub fn proxy(cfg: &ProxyConfig) -> Result<rumqttc::Proxy, String> {
    let auth = match &cfg.username {
        None => rumqttc::ProxyAuth::None,
        Some(user) => rumqttc::ProxyAuth::Basic {
            username: user.clone(),
            password: match &cfg.password {
                Some(s) => s.read("proxy_password")?,
                None => String::new(),
            },
        },
    };
    Ok(rumqttc::Proxy {
        ty: rumqttc::ProxyType::Http,
        auth,
        addr: cfg.host.clone(),
        port: cfg.port,
    })
}

/// The broker address rumqttc takes: the host, or for WebSockets the whole url
/// (`ws[s]://host:port/path`; rumqttc reads host and port from it).
fn broker_address(cfg: &MqttSinkConfig) -> String {
    match &cfg.transport {
        MqttTransport::Tcp => cfg.host.clone(),
        MqttTransport::WebSockets { path } => {
            let scheme = if cfg.tls.is_some() { "wss" } else { "ws" };
            let host = if cfg.host.contains(':') {
                format!("[{}]", cfg.host)
            } else {
                cfg.host.clone()
            };
            format!("{scheme}://{host}:{}{path}", cfg.port)
        }
    }
}

pub fn options(cfg: &MqttSinkConfig) -> Result<MqttOptions, MqttError> {
    let mut o = MqttOptions::new(cfg.client_id.clone(), broker_address(cfg), cfg.port);
    o.set_keep_alive(cfg.keep_alive.max(Duration::from_secs(1)));
    o.set_clean_session(true);
    o.set_inflight(WINDOW as u16);
    o.set_max_packet_size(cfg.max_message_bytes + 4096, cfg.max_message_bytes + 4096);
    if let Some(user) = &cfg.username {
        let pw = match &cfg.password {
            Some(s) => s.read("password").map_err(MqttError::Tls)?,
            None => String::new(),
        };
        o.set_credentials(user.clone(), pw);
    }
    if let Some(tls) = &cfg.tls {
        let client = match (&tls.cert_file, &tls.key_file) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            _ => None,
        };
        let rc = TlsConfiguration::Rustls(Arc::new(rustls_config(tls.ca_file.as_ref(), client)?));
        o.set_transport(match cfg.transport {
            MqttTransport::Tcp => Transport::tls_with_config(rc),
            MqttTransport::WebSockets { .. } => Transport::wss_with_config(rc),
        });
    } else if let MqttTransport::WebSockets { .. } = cfg.transport {
        o.set_transport(Transport::Ws);
    }
    if let Some(p) = &cfg.proxy {
        o.set_proxy(proxy(p).map_err(MqttError::Tls)?);
    }
    Ok(o)
}

pub use super::flow::Renewer;

/// TCP options: no Nagle delay, so small answers (acknowledgements, PUBACKs, write
/// responses) are not held back ~40 ms waiting for the peer's delayed ACK.
pub fn network_options() -> rumqttc::NetworkOptions {
    let mut n = rumqttc::NetworkOptions::new();
    n.set_tcp_nodelay(true);
    n
}

/// Runs until `shutdown`; then tries for up to `grace` to deliver what is buffered. With
/// `control`, also subscribes to its topics after every ConnAck, hands what arrives on them
/// to the write service and publishes its answers.
pub async fn run(opts: MqttOptions, mut sending: Sending) {
    session(opts, &mut sending, false).await;
}

/// How a [`session`] ended.
#[derive(Debug)]
pub enum Ended {
    /// Shut down (after the drain).
    Stopped,
    /// The broker refused the credentials (`stop_when_refused`): `error` says how, and
    /// `connected` whether it had accepted them earlier in the session.
    Refused {
        error: rumqttc::ConnectionError,
        connected: bool,
    },
}

/// [`run`] with one client: until shutdown or, with `stop_when_refused`, until the broker
/// refuses the credentials (instead of retrying them after the long back-off), so that the
/// caller can get new ones (IoT Hub: register again with DPS) and start a new session with
/// `sending` (its control channel is put back). Nothing buffered is lost either way.
pub async fn session(
    mut opts: MqttOptions,
    sending: &mut Sending,
    stop_when_refused: bool,
) -> Ended {
    let (outbox, shutdown, grace) = (
        sending.outbox.clone(),
        sending.shutdown.clone(),
        sending.grace,
    );
    let mut control = sending.control.take().unwrap_or_else(Control::none);
    let qos = if sending.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let mut flow = Flow::new(
        outbox.clone(),
        qos == QoS::AtMostOnce,
        "mqtt",
        sending.renew.clone(),
    );
    flow.set_topics(sending.topics.clone());
    if let Some((user, pass)) = flow.credentials() {
        opts.set_credentials(user, pass);
    }
    // What rumqttc refuses to send ("Cannot send packet of size ..."): moved aside before.
    flow.set_limit(opts.max_packet_size());
    flow.set_keep_alive(opts.keep_alive());
    let (client, mut eventloop) = AsyncClient::new(opts, WINDOW + 8);
    eventloop.set_network_options(network_options());
    let mut ended = Ended::Stopped;
    let mut accepted = false;
    while flow.keep_going(&shutdown, grace) {
        flow.send_control(&mut control, |out| {
            client
                .try_publish(&out.topic, QoS::AtLeastOnce, false, out.payload.clone())
                .is_ok()
        });
        flow.fill(|topic, _gzip, body| {
            client.try_publish(topic, qos, false, body.to_vec()).is_ok()
        });
        let event = tokio::select! {
            e = eventloop.poll() => e,
            _ = control.ready() => continue,
            _ = flow.renewal_due() => {
                // Reconnect with a fresh token: what was in flight goes out again after the
                // ConnAck (the buffer rewinds).
                if let Some((user, pass)) = flow.credentials() {
                    eventloop.mqtt_options.set_credentials(user, pass);
                    flow.renewed();
                }
                eventloop.clean();
                flow.disconnected();
                continue;
            }
            _ = outbox.wake.notified(), if flow.connected => continue,
            _ = flow.ping_overdue() => {
                eventloop.clean();
                if flow.after_failure(flow.hung(), false, &shutdown).await {
                    break;
                }
                continue;
            }
            _ = tokio::time::sleep(Duration::from_millis(100)), if flow.draining() => continue,
            _ = shutdown.cancelled(), if !flow.draining() => continue,
        };
        if matches!(event, Ok(Event::Incoming(_))) {
            flow.heard();
        }
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                flow.connack();
                accepted = true;
                control.subscribe("mqtt", |topic| {
                    client
                        .try_subscribe(topic, QoS::AtLeastOnce)
                        .map_err(|e| e.to_string())
                });
            }
            Ok(Event::Incoming(Packet::Publish(p))) => control.deliver(Message {
                topic: p.topic.clone(),
                payload: p.payload.to_vec(),
                response_topic: None,
                correlation: None,
            }),
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => flow.outgoing_publish(pkid),
            Ok(Event::Outgoing(Outgoing::PingReq)) => flow.ping_sent(),
            Ok(Event::Incoming(Packet::PubAck(p))) => {
                if let Some(id) = flow.puback(p.pkid) {
                    flow.ack(id);
                }
            }
            Ok(_) => {}
            Err(e) => {
                let refused = refused_login(&e);
                if refused && stop_when_refused && !flow.draining() {
                    flow.disconnected();
                    ended = Ended::Refused {
                        error: e,
                        connected: accepted,
                    };
                    break;
                }
                if flow.after_failure(e.to_string(), refused, &shutdown).await {
                    break;
                }
            }
        }
    }
    let _ = client.try_disconnect();
    flow.shut();
    sending.control = Some(control);
    ended
}

/// The broker (or hub) refused the credentials (a CONNACK, or a certificate in the TLS
/// handshake): retried with the long back-off.
pub fn refused_login(e: &rumqttc::ConnectionError) -> bool {
    use rumqttc::ConnectReturnCode as C;
    matches!(
        e,
        rumqttc::ConnectionError::ConnectionRefused(C::BadUserNamePassword | C::NotAuthorized)
    ) || certificate_refused(e)
}

/// A TLS certificate was refused, ours by the server (a fatal alert about it) or the server's
/// by us: nothing a quick retry mends, so it is paced like a refused password.
pub fn certificate_refused(e: &(dyn std::error::Error + 'static)) -> bool {
    use rustls::AlertDescription as A;
    let of = |r: &rustls::Error| match r {
        rustls::Error::InvalidCertificate(_) => true,
        rustls::Error::AlertReceived(a) => matches!(
            a,
            A::BadCertificate
                | A::UnsupportedCertificate
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::UnknownCA
                | A::AccessDenied
                | A::CertificateRequired
                // A certificate whose signature does not verify (e.g. made by another CA of
                // the same name) is answered with this one.
                | A::DecryptError
        ),
        _ => false,
    };
    let mut at: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = at {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return of(r);
        }
        // io::Error's source() skips the error it wraps: look at that one directly.
        let wrapped = err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        if let Some(r) = wrapped {
            return of(r);
        }
        at = err.source();
    }
    false
}
