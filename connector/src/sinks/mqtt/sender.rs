//! The MQTT event-loop task: sends buffered messages in order and removes them from the
//! buffer when the broker acknowledges them.
//!
//! rumqttc gives no per-publish handle, so acks are correlated here: publishes go out in
//! buffer order, each `Outgoing::Publish(pkid)` event pairs the next sent buffer id with its
//! packet id, and `Incoming::PubAck(pkid)` acks that id. Sessions are clean: after every
//! (re)connect rumqttc forgets what was in flight and the buffer hands out every
//! unacknowledged message again, in order (so a message can repeat after a reconnect; a
//! consumer drops repeats by `seq`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{unframe, MqttError, Outbox};
use crate::config::{MqttSinkConfig, Secret};

/// Messages in flight at once (also the client's request channel size).
const WINDOW: usize = 100;

fn secret(s: &Secret) -> Result<String, String> {
    match s {
        Secret::Env(n) => std::env::var(n)
            .map_err(|_| format!("environment variable {n} (password_env) is not set")),
        Secret::File(p) => std::fs::read_to_string(p)
            .map(|t| t.trim_end_matches(['\r', '\n']).to_owned())
            .map_err(|e| format!("cannot read password_file {}: {e}", p.display())),
    }
}

/// A rustls client config from PEM files: the CA bundle, and an optional client certificate.
pub fn rustls_config(
    ca_file: Option<&std::path::Path>,
    client: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<rustls::ClientConfig, MqttError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| MqttError::Tls(format!("cannot read {}: {e}", p.display())))
    };
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca_file {
        let pem = read(ca)?;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
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
            let certs = rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| MqttError::Tls(format!("{}: {e}", cert.display())))?;
            let pem = read(key)?;
            let key_der = rustls_pemfile::private_key(&mut pem.as_slice())
                .map_err(|e| MqttError::Tls(format!("{}: {e}", key.display())))?
                .ok_or_else(|| MqttError::Tls(format!("{}: no private key", key.display())))?;
            builder
                .with_client_auth_cert(certs, key_der)
                .map_err(|e| MqttError::Tls(format!("client certificate: {e}")))
        }
    }
}

pub fn options(cfg: &MqttSinkConfig) -> Result<MqttOptions, MqttError> {
    let mut o = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
    o.set_keep_alive(cfg.keep_alive.max(Duration::from_secs(5)));
    o.set_clean_session(true);
    o.set_inflight(WINDOW as u16);
    o.set_max_packet_size(cfg.max_message_bytes + 4096, cfg.max_message_bytes + 4096);
    if let Some(user) = &cfg.username {
        let pw = match &cfg.password {
            Some(s) => secret(s).map_err(MqttError::Tls)?,
            None => String::new(),
        };
        o.set_credentials(user.clone(), pw);
    }
    if let Some(tls) = &cfg.tls {
        let client = match (&tls.cert_file, &tls.key_file) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            _ => None,
        };
        let rc = rustls_config(tls.ca_file.as_deref(), client)?;
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(rc),
        )));
    }
    Ok(o)
}

/// Fresh credentials: (username, password, when to renew them). IoT Hub SAS tokens expire;
/// the sender reconnects with a fresh one before they do (MQTT 3.1.1 has no re-auth).
pub type Renewer =
    Arc<dyn Fn() -> Result<(String, String, std::time::SystemTime), String> + Send + Sync>;

/// Runs until `shutdown`; then tries for up to `grace` to deliver what is buffered.
pub async fn run(
    mut opts: MqttOptions,
    qos: u8,
    outbox: Arc<Outbox>,
    shutdown: CancellationToken,
    grace: Duration,
    renew: Option<Renewer>,
) {
    let renew_deadline = |at: std::time::SystemTime| {
        let wait = at
            .duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tokio::time::Instant::now() + wait
    };
    let mut renew_at = None;
    if let Some(r) = &renew {
        match r() {
            Ok((user, pass, at)) => {
                opts.set_credentials(user, pass);
                renew_at = Some(renew_deadline(at));
            }
            Err(e) => warn!(error = %e, "mqtt: cannot make credentials"),
        }
    }
    let qos = if qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let (client, mut eventloop) = AsyncClient::new(opts, WINDOW + 8);
    let m = outbox.metrics.clone();
    let mut sent: VecDeque<u64> = VecDeque::new();
    let mut inflight: HashMap<u16, u64> = HashMap::new();
    let mut connected = false;
    let mut ever_connected = false;
    let mut failures: u32 = 0;
    let mut draining_until: Option<tokio::time::Instant> = None;
    let mut last_report = tokio::time::Instant::now();
    loop {
        if last_report.elapsed() >= REPORT_EVERY {
            last_report = tokio::time::Instant::now();
            report(&outbox);
        }
        if draining_until.is_none() && shutdown.is_cancelled() {
            draining_until = Some(tokio::time::Instant::now() + grace);
        }
        if let Some(t) = draining_until {
            let empty = outbox
                .buffer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .stats()
                .pending
                == 0;
            if empty || tokio::time::Instant::now() >= t {
                if !empty {
                    warn!("mqtt: stopping with messages still buffered; they go out after the next start");
                }
                break;
            }
        }
        // Hand buffered messages to the client while the window has room.
        if connected {
            let room = WINDOW.saturating_sub(sent.len() + inflight.len());
            if room > 0 {
                let next = outbox
                    .buffer
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .next_unsent(room);
                match next {
                    Ok(batch) => {
                        for (id, f) in batch {
                            let Some((topic, _, body)) = unframe(&f) else {
                                warn!(id, "mqtt: unreadable buffered message skipped");
                                let _ = outbox
                                    .buffer
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .ack(id);
                                continue;
                            };
                            if client.try_publish(topic, qos, false, body.to_vec()).is_ok() {
                                sent.push_back(id);
                            }
                        }
                    }
                    Err(e) => warn!(error = %e, "mqtt: cannot read the buffer"),
                }
            }
        }
        let renewal = async {
            match renew_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            e = eventloop.poll() => e,
            _ = renewal => {
                // Reconnect with a fresh token: what was in flight goes out again after the
                // ConnAck (the buffer rewinds).
                renew_at = None;
                if let Some(r) = &renew {
                    match r() {
                        Ok((user, pass, at)) => {
                            eventloop.mqtt_options.set_credentials(user, pass);
                            renew_at = Some(renew_deadline(at));
                            m.renewals.fetch_add(1, Ordering::Relaxed);
                            info!("mqtt: credentials renewed, reconnecting");
                        }
                        Err(e) => {
                            warn!(error = %e, "mqtt: cannot renew credentials, retrying in 5 s");
                            renew_at = Some(tokio::time::Instant::now() + Duration::from_secs(5));
                        }
                    }
                }
                eventloop.clean();
                connected = false;
                sent.clear();
                inflight.clear();
                continue;
            }
            _ = outbox.wake.notified(), if connected => continue,
            _ = tokio::time::sleep(Duration::from_millis(100)), if draining_until.is_some() => continue,
            _ = shutdown.cancelled(), if draining_until.is_none() => continue,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                connected = true;
                failures = 0;
                m.connected.store(true, Ordering::Relaxed);
                if ever_connected {
                    m.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                ever_connected = true;
                sent.clear();
                inflight.clear();
                outbox
                    .buffer
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .rewind();
                info!("mqtt: connected");
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                if let Some(id) = sent.pop_front() {
                    m.messages_sent.fetch_add(1, Ordering::Relaxed);
                    if qos == QoS::AtMostOnce {
                        ack(&outbox, id);
                    } else {
                        inflight.insert(pkid, id);
                    }
                }
            }
            Ok(Event::Incoming(Packet::PubAck(p))) => {
                if let Some(id) = inflight.remove(&p.pkid) {
                    ack(&outbox, id);
                }
            }
            Ok(_) => {}
            Err(e) => {
                if connected || failures == 0 {
                    warn!(error = %e, "mqtt: connection lost; buffering until the broker is back");
                }
                connected = false;
                m.connected.store(false, Ordering::Relaxed);
                sent.clear();
                inflight.clear();
                failures = failures.saturating_add(1);
                let wait = Duration::from_millis((100u64 << failures.min(4)).min(1_000));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled(), if draining_until.is_none() => {}
                }
                if draining_until.is_some() && !connected {
                    // No broker during the drain: what is buffered stays for the next start.
                    if failures > 3 {
                        warn!(
                            "mqtt: broker unreachable at shutdown; messages stay buffered on disk"
                        );
                        break;
                    }
                }
            }
        }
    }
    let _ = client.try_disconnect();
    m.connected.store(false, Ordering::Relaxed);
}

/// How often the sender logs its counters (there is no metrics endpoint yet).
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// Logs buffer bytes, pending messages and the oldest one's age, sent, acked, dropped, reconnects.
fn report(outbox: &Outbox) {
    let s = outbox
        .buffer
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .stats();
    let m = &outbox.metrics;
    info!(
        connected = m.connected.load(Ordering::Relaxed),
        buffer_bytes = s.bytes_on_disk,
        pending = s.pending,
        oldest_pending_s = s.oldest_pending_age.map_or(0.0, |d| d.as_secs_f64()),
        sent = m.messages_sent.load(Ordering::Relaxed),
        acked = m.messages_acked.load(Ordering::Relaxed),
        dropped = s.dropped,
        reconnects = m.reconnects.load(Ordering::Relaxed),
        "telemetry"
    );
}

fn ack(outbox: &Outbox, id: u64) {
    let mut b = outbox.buffer.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = b.ack(id) {
        warn!(error = %e, id, "mqtt: cannot record the ack");
        return;
    }
    outbox
        .metrics
        .messages_acked
        .fetch_add(1, Ordering::Relaxed);
}
