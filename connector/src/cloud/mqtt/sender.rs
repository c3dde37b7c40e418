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
    AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport,
};

use super::flow::{Flow, Sending, WINDOW};
use crate::cloud::control::{Control, Message};
use crate::cloud::hub::TWIN_RESPONSES;
use crate::cloud::status::StatusReporter;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::atomic::Ordering;

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
    // rumqttc joins "{addr}:{port}": an IPv6 address keeps its brackets.
    let addr = if cfg.host.contains(':') {
        format!("[{}]", cfg.host)
    } else {
        cfg.host.clone()
    };
    Ok(rumqttc::Proxy {
        ty: rumqttc::ProxyType::Http,
        auth,
        addr,
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

/// How long a clean stop waits for its `stopped` status and DISCONNECT to be written.
pub const STOP_WAIT: Duration = Duration::from_millis(250);

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
    let mut status = sending.status.clone().map(StatusReporter::new);
    let will = |s: &StatusReporter| {
        s.will()
            .map(|(topic, body)| LastWill::new(topic, body, QoS::AtLeastOnce, true))
    };
    if let Some(w) = status.as_ref().and_then(will) {
        opts.set_last_will(w);
    }
    let send_limit = sending.send_limit;
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
    flow.set_limit(send_limit.unwrap_or(opts.max_packet_size()));
    flow.set_keep_alive(opts.keep_alive());
    let (client, mut eventloop) = AsyncClient::new(opts, WINDOW + 8);
    eventloop.set_network_options(network_options());
    let mut ended = Ended::Stopped;
    let mut accepted = false;
    while flow.keep_going(&shutdown, grace) {
        if let Some(w) = status.as_ref().filter(|_| !flow.connected).and_then(will) {
            // The will of the connection about to be opened says when it was.
            eventloop.mqtt_options.set_last_will(w);
        }
        flow.send_control(&mut control, |out| {
            client
                .try_publish(&out.topic, QoS::AtLeastOnce, false, out.payload.clone())
                .is_ok()
        });
        if let Some(s) = status.as_mut().filter(|_| flow.has_room()) {
            if let Some((topic, body, retain)) = s.due(|| flow.backlog()) {
                if client
                    .try_publish(topic, QoS::AtLeastOnce, retain, body)
                    .is_ok()
                {
                    flow.status_sent();
                } else {
                    s.not_sent();
                }
            }
        }
        flow.fill(|topic, _gzip, body| {
            client.try_publish(topic, qos, false, body.to_vec()).is_ok()
        });
        let recheck = status.as_ref().map(StatusReporter::recheck);
        let event = tokio::select! {
            e = eventloop.poll() => e,
            _ = control.ready() => continue,
            _ = tokio::time::sleep(recheck.unwrap_or_default()), if recheck.is_some() && flow.connected => continue,
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
                if let Some(s) = status.as_mut() {
                    s.connected();
                    if s.reports() {
                        // The hub's answers to the status PATCHes.
                        let _ = client.try_subscribe(TWIN_RESPONSES, QoS::AtLeastOnce);
                    }
                }
                accepted = true;
                control.subscribe("mqtt", |topic| {
                    client
                        .try_subscribe(topic, QoS::AtLeastOnce)
                        .map_err(|e| e.to_string())
                });
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                match status.as_mut().and_then(|s| s.answered(&p.topic)) {
                    Some(false) => {
                        outbox
                            .metrics
                            .status_failures
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    Some(true) => {}
                    None => control.deliver(Message {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                        response_topic: None,
                        correlation: None,
                    }),
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => flow.outgoing_publish(pkid),
            Ok(Event::Outgoing(Outgoing::PingReq)) => flow.ping_sent(),
            Ok(Event::Incoming(Packet::PubAck(p))) => match flow.puback(p.pkid) {
                Some(id) => flow.ack(id),
                // MQTT 3.1.1 has no refusal in a PUBACK: a status message's is only paired.
                None => {
                    flow.status_puback(p.pkid);
                }
            },
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
    match status.as_ref().and_then(StatusReporter::stopped) {
        // A clean stop says so (retained) before the DISCONNECT, which discards the will.
        Some((topic, body)) if flow.connected => {
            if client
                .try_publish(topic, QoS::AtLeastOnce, true, body)
                .is_ok()
            {
                flow.control_sent();
            }
            let _ = client.try_disconnect();
            // Briefly (the senders' share of the stop is short): acknowledgements that come
            // meanwhile still take their messages out of the buffer.
            let until = tokio::time::Instant::now() + STOP_WAIT;
            while let Ok(Ok(e)) = tokio::time::timeout_at(until, eventloop.poll()).await {
                match e {
                    Event::Outgoing(Outgoing::Disconnect) => break,
                    Event::Outgoing(Outgoing::Publish(pkid)) => flow.outgoing_publish(pkid),
                    Event::Incoming(Packet::PubAck(p)) => {
                        if let Some(id) = flow.puback(p.pkid) {
                            flow.ack(id);
                        }
                    }
                    _ => {}
                }
            }
        }
        _ => {
            let _ = client.try_disconnect();
        }
    }
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
    match tls_error(e) {
        Some(rustls::Error::InvalidCertificate(_)) => true,
        Some(rustls::Error::AlertReceived(a)) => matches!(
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
    }
}

/// Our own check of the server's certificate failed (not the server's alert about ours): a
/// matter of the CA file, the clock or a TLS-inspecting proxy.
pub fn server_certificate_failed(e: &(dyn std::error::Error + 'static)) -> bool {
    matches!(tls_error(e), Some(rustls::Error::InvalidCertificate(_)))
}

/// The rustls error somewhere in `e`'s chain.
fn tls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut at: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = at {
        // io::Error's source() skips the error it wraps: look at that one directly.
        let found = err.downcast_ref::<rustls::Error>().or_else(|| {
            err.downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if found.is_some() {
            return found;
        }
        at = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrapped(e: rustls::Error) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn certificate_refusals_are_told_from_other_tls_failures() {
        use rustls::AlertDescription as A;
        for refused in [
            rustls::Error::AlertReceived(A::BadCertificate),
            rustls::Error::AlertReceived(A::UnknownCA),
            rustls::Error::AlertReceived(A::CertificateRequired),
            rustls::Error::AlertReceived(A::DecryptError),
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
            rustls::Error::InvalidCertificate(rustls::CertificateError::Expired),
        ] {
            let shown = format!("{refused:?}");
            let e = rumqttc::ConnectionError::Io(wrapped(refused));
            assert!(certificate_refused(&e), "{shown}");
        }
        for passing in [
            rumqttc::ConnectionError::Io(wrapped(rustls::Error::AlertReceived(
                rustls::AlertDescription::InternalError,
            ))),
            rumqttc::ConnectionError::Io(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused,
            )),
        ] {
            assert!(!certificate_refused(&passing), "{passing:?}");
        }
    }
}
