//! One registration with DPS over MQTT (rumqttc, TLS with the connector's rustls roots):
//! connect as the registration (SAS password or X.509 certificate), subscribe to the answers,
//! publish the register request, poll the operation's status after each `retry-after` until
//! DPS says where the device goes, then disconnect.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::protocol::{self, Answer};
use crate::cloud::hub::sas;
use crate::cloud::mqtt::sender::{
    network_options, refused_login, rustls_config, server_certificate_failed,
};
use crate::config::{DpsConfig, DpsCredential, DPS_PORT};

/// How long DPS may take to answer a request (or to accept the connection) before the
/// attempt counts as failed.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// The lifetime of the registration's SAS token (it is used once, at connect).
const TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Why a registration ended without an assignment. Never holds a key or a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// DPS refused the credential (CONNACK, 401, a certificate refused in the handshake).
    #[error("DPS refused the credential: {0}")]
    Refused(String),
    /// The enrollment is disabled, the registration failed, or another 4xx.
    #[error("DPS did not assign the device: {0}")]
    Failed(String),
    /// 429: throttled.
    #[error("DPS throttled the registration (429): retry after {} s", .0.as_secs())]
    Throttled(Duration),
    /// The connection, a timeout, a 5xx, an unreadable answer, the credential's file.
    #[error("{0}")]
    Error(String),
    /// Shut down while registering.
    #[error("stopped")]
    Stopped,
}

/// Where DPS is: the configured endpoint, or the global one on 8883.
pub fn address(dps: &DpsConfig) -> (String, u16) {
    if let Some(ep) = &dps.endpoint {
        if let Some((h, p)) = ep.rsplit_once(':') {
            if let Ok(port) = p.parse() {
                let host = h.trim_start_matches('[').trim_end_matches(']');
                return (host.to_owned(), port);
            }
        }
    }
    (dps.global_endpoint.clone(), DPS_PORT)
}

/// The client options of a registration: `key` is the device key (base64) that signs the
/// SAS password, `None` with an X.509 credential.
fn options(dps: &DpsConfig, key: Option<&str>) -> Result<MqttOptions, RegisterError> {
    let (host, port) = address(dps);
    let mut o = MqttOptions::new(dps.registration_id.clone(), host, port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(true);
    // An assignment can carry a custom payload and a trust bundle of CA certificates: more
    // than rumqttc's default of 10 KiB.
    o.set_max_packet_size(256 * 1024, 16 * 1024);
    let password = match key {
        Some(k) => {
            let expiry = sas::expiry_unix_s(SystemTime::now(), TOKEN_TTL);
            protocol::password(&dps.id_scope, &dps.registration_id, k, expiry)
                .map_err(|e| RegisterError::Error(format!("the device key: {e}")))?
        }
        None => String::new(),
    };
    o.set_credentials(
        protocol::username(&dps.id_scope, &dps.registration_id),
        password,
    );
    let client = match &dps.credential {
        DpsCredential::X509 {
            cert_file,
            key_file,
        } => Some((cert_file.as_path(), key_file.as_path())),
        _ => None,
    };
    let tls = rustls_config(Some(&dps.ca_file), client)
        .map_err(|e| RegisterError::Error(format!("TLS to DPS: {e}")))?;
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(tls),
    )));
    Ok(o)
}

/// Registers once: the assigned hub's host and the device id. `polls` counts the
/// operation-status requests.
pub async fn register(
    dps: &DpsConfig,
    key: Option<&str>,
    polls: &AtomicU64,
    shutdown: &CancellationToken,
) -> Result<(String, String), RegisterError> {
    let (client, mut eventloop) = AsyncClient::new(options(dps, key)?, 10);
    eventloop.set_network_options(network_options());
    let outcome = exchange(
        &client,
        &mut eventloop,
        &dps.registration_id,
        polls,
        shutdown,
    )
    .await;
    let _ = client.try_disconnect();
    if outcome.is_ok() {
        // Let the DISCONNECT go out (best effort, briefly).
        let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
    }
    outcome
}

async fn exchange(
    client: &AsyncClient,
    eventloop: &mut rumqttc::EventLoop,
    registration_id: &str,
    polls: &AtomicU64,
    shutdown: &CancellationToken,
) -> Result<(String, String), RegisterError> {
    let mut rid = 0u64;
    // The request whose answer is awaited, and until when.
    let mut waiting: Option<u64> = None;
    let mut due = Instant::now() + ANSWER_TIMEOUT;
    // The next status poll: when, and for which operation.
    let mut poll: Option<(Instant, String)> = None;
    let sent = |r: Result<(), rumqttc::ClientError>| {
        r.map_err(|e| RegisterError::Error(format!("cannot send to DPS: {e}")))
    };
    loop {
        let poll_at = poll.as_ref().map(|(t, _)| *t);
        tokio::select! {
            _ = shutdown.cancelled() => return Err(RegisterError::Stopped),
            _ = tokio::time::sleep_until(due) => {
                return Err(RegisterError::Error(format!(
                    "no answer from DPS within {} s", ANSWER_TIMEOUT.as_secs()
                )));
            }
            _ = async { tokio::time::sleep_until(poll_at.unwrap_or(due)).await }, if poll_at.is_some() => {
                if let Some((_, op)) = poll.take() {
                    rid += 1;
                    sent(client.try_publish(protocol::status_topic(rid, &op), QoS::AtLeastOnce, false, Vec::new()))?;
                    polls.fetch_add(1, Ordering::Relaxed);
                    waiting = Some(rid);
                    due = Instant::now() + ANSWER_TIMEOUT;
                }
            }
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    sent(client.try_subscribe(protocol::RESPONSES, QoS::AtLeastOnce))?;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    rid += 1;
                    sent(client.try_publish(
                        protocol::register_topic(rid),
                        QoS::AtLeastOnce,
                        false,
                        protocol::register_body(registration_id),
                    ))?;
                    waiting = Some(rid);
                    due = Instant::now() + ANSWER_TIMEOUT;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let Some(response) = protocol::parse_response_topic(&p.topic) else {
                        continue;
                    };
                    if waiting.is_none() || response.rid != waiting {
                        continue;
                    }
                    waiting = None;
                    match protocol::parse_answer(&response, &p.payload) {
                        Answer::Assigned { hub, device_id } => return Ok((hub, device_id)),
                        Answer::Assigning { operation_id, retry_after } => {
                            let at = Instant::now() + retry_after;
                            poll = Some((at, operation_id));
                            due = at + ANSWER_TIMEOUT;
                        }
                        Answer::Failed(m) => return Err(RegisterError::Failed(m)),
                        Answer::Refused(m) => return Err(RegisterError::Refused(m)),
                        Answer::Throttled(d) => return Err(RegisterError::Throttled(d)),
                        Answer::Error(m) => return Err(RegisterError::Error(format!("DPS answered {m}"))),
                    }
                }
                Ok(_) => {}
                // Our check of DPS's certificate failed: a matter of [dps] ca_file (or the
                // clock, or a TLS-inspecting proxy), not of the credential.
                Err(e) if server_certificate_failed(&e) => {
                    return Err(RegisterError::Failed(format!(
                        "DPS's certificate fails the check with [dps] ca_file: {e}"
                    )))
                }
                Err(e) if refused_login(&e) => return Err(RegisterError::Refused(e.to_string())),
                Err(e) => return Err(RegisterError::Error(format!("connection to DPS: {e}"))),
            },
        }
    }
}
