//! The MQTT 5 variant of [`super::sender`]: the same buffer protocol, window, clean sessions
//! and ack correlation, on `rumqttc::v5`.
//!
//! Publishes go out in buffer order; each `Outgoing::Publish(pkid)` pairs the next sent buffer
//! id with its packet id and `Incoming::PubAck(pkid)` acks that id, but only when the PUBACK's
//! reason code is a success (< 0x80; "no matching subscribers" is one). A rejected message
//! (e.g. 0x97 quota exceeded, 0x87 not authorized) is logged with its reason, stays in the
//! buffer, and the sender reconnects after a back-off: the buffer rewinds after the ConnAck
//! and the rejected message goes out again, still in order. Sessions start clean, so after
//! every (re)connect rumqttc forgets what was in flight and the buffer hands out every
//! unacknowledged message again (a message can repeat; a consumer drops repeats by `seq`).
//!
//! Messages carry the content type `application/json`; gzip-compressed ones also the user
//! property `content-encoding: gzip`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{Packet, PubAck, PubAckReason, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc::Outgoing;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::sender::Renewer;
use super::{unframe, MqttError, Outbox};
use crate::config::MqttSinkConfig;

/// Messages in flight at once (also the client's request channel size), as in the 3.1.1
/// sender. The broker's Receive Maximum can lower what rumqttc keeps unacknowledged.
const WINDOW: usize = 100;

/// Back-off after a rejected message before the reconnect that re-sends it.
const REJECT_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// MQTT 5 client options for `[sink.mqtt]`. Credentials (password secret) and the TLS
/// transport come from the 3.1.1 [`super::sender::options`], so both versions resolve them the
/// same way.
pub fn options(cfg: &MqttSinkConfig) -> Result<MqttOptions, MqttError> {
    let v3 = super::sender::options(cfg)?;
    let mut o = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
    o.set_keep_alive(cfg.keep_alive.max(Duration::from_secs(5)));
    o.set_clean_start(true);
    o.set_outgoing_inflight_upper_limit(WINDOW as u16);
    // The largest packet we accept; what we may send is the broker's limit from its ConnAck.
    o.set_max_packet_size(Some(
        u32::try_from(cfg.max_message_bytes + 4096).unwrap_or(u32::MAX),
    ));
    if let Some(login) = v3.credentials() {
        o.set_credentials(login.username, login.password);
    }
    o.set_transport(v3.transport());
    Ok(o)
}

/// The reason code of a PUBACK (MQTT 5, 3.4.2.1).
pub fn reason_code(r: PubAckReason) -> u8 {
    match r {
        PubAckReason::Success => 0x00,
        PubAckReason::NoMatchingSubscribers => 0x10,
        PubAckReason::UnspecifiedError => 0x80,
        PubAckReason::ImplementationSpecificError => 0x83,
        PubAckReason::NotAuthorized => 0x87,
        PubAckReason::TopicNameInvalid => 0x90,
        PubAckReason::PacketIdentifierInUse => 0x91,
        PubAckReason::QuotaExceeded => 0x97,
        PubAckReason::PayloadFormatInvalid => 0x99,
    }
}

/// The PUBLISH properties of a buffered message.
pub fn properties(gzip: bool) -> PublishProperties {
    PublishProperties {
        content_type: Some("application/json".into()),
        user_properties: if gzip {
            vec![("content-encoding".into(), "gzip".into())]
        } else {
            Vec::new()
        },
        ..PublishProperties::default()
    }
}

/// Which buffer id a packet id stands for: ids handed to the client wait in `sent` until
/// rumqttc writes them (`Outgoing::Publish(pkid)`, in request order), then in `inflight`
/// until their PUBACK.
#[derive(Default)]
struct Window {
    sent: VecDeque<u64>,
    inflight: HashMap<u16, u64>,
}

impl Window {
    fn room(&self) -> usize {
        WINDOW.saturating_sub(self.sent.len() + self.inflight.len())
    }

    fn clear(&mut self) {
        self.sent.clear();
        self.inflight.clear();
    }
}

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
            Err(e) => warn!(error = %e, "mqtt5: cannot make credentials"),
        }
    }
    let qos = if qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let (client, mut eventloop) = AsyncClient::new(opts, WINDOW + 8);
    let m = outbox.metrics.clone();
    let mut w = Window::default();
    let mut connected = false;
    let mut ever_connected = false;
    let mut failures: u32 = 0;
    // Rejected PUBACKs since the last accepted one (drives the back-off).
    let mut rejections: u32 = 0;
    let mut draining_until: Option<tokio::time::Instant> = None;
    loop {
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
                    warn!("mqtt5: stopping with messages still buffered; they go out after the next start");
                }
                break;
            }
        }
        // Hand buffered messages to the client while the window has room.
        if connected && w.room() > 0 {
            let next = outbox
                .buffer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .next_unsent(w.room());
            match next {
                Ok(batch) => {
                    for (id, f) in batch {
                        let Some((topic, gzip, body)) = unframe(&f) else {
                            warn!(id, "mqtt5: unreadable buffered message skipped");
                            let _ = outbox
                                .buffer
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .ack(id);
                            continue;
                        };
                        let sent = client.try_publish_with_properties(
                            topic,
                            qos,
                            false,
                            body.to_vec(),
                            properties(gzip),
                        );
                        if sent.is_ok() {
                            w.sent.push_back(id);
                        }
                    }
                }
                Err(e) => warn!(error = %e, "mqtt5: cannot read the buffer"),
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
                            eventloop.options.set_credentials(user, pass);
                            renew_at = Some(renew_deadline(at));
                            m.renewals.fetch_add(1, Ordering::Relaxed);
                            info!("mqtt5: credentials renewed, reconnecting");
                        }
                        Err(e) => {
                            warn!(error = %e, "mqtt5: cannot renew credentials, retrying in 5 s");
                            renew_at = Some(tokio::time::Instant::now() + Duration::from_secs(5));
                        }
                    }
                }
                eventloop.clean();
                connected = false;
                w.clear();
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
                w.clear();
                outbox
                    .buffer
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .rewind();
                info!("mqtt5: connected");
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                if let Some(id) = w.sent.pop_front() {
                    m.messages_sent.fetch_add(1, Ordering::Relaxed);
                    if qos == QoS::AtMostOnce {
                        ack(&outbox, id);
                    } else {
                        w.inflight.insert(pkid, id);
                    }
                }
            }
            Ok(Event::Incoming(Packet::PubAck(p))) => {
                let Some(id) = w.inflight.remove(&p.pkid) else {
                    continue;
                };
                if reason_code(p.reason) < 0x80 {
                    rejections = 0;
                    ack(&outbox, id);
                    continue;
                }
                rejections = rejections.saturating_add(1);
                let wait = REJECT_BACKOFF_MAX.min(Duration::from_secs(1u64 << rejections.min(5)));
                warn_rejected(&p, id, wait);
                // Keep the order: drop the connection so the buffer rewinds after the next
                // ConnAck and re-sends from the rejected message on.
                eventloop.clean();
                connected = false;
                m.connected.store(false, Ordering::Relaxed);
                w.clear();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled(), if draining_until.is_none() => {}
                }
            }
            Ok(_) => {}
            Err(e) => {
                if connected || failures == 0 {
                    warn!(error = %e, "mqtt5: connection lost; buffering until the broker is back");
                }
                connected = false;
                m.connected.store(false, Ordering::Relaxed);
                w.clear();
                failures = failures.saturating_add(1);
                let wait = Duration::from_millis((100u64 << failures.min(4)).min(1_000));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled(), if draining_until.is_none() => {}
                }
                if draining_until.is_some() && !connected && failures > 3 {
                    // No broker during the drain: what is buffered stays for the next start.
                    warn!("mqtt5: broker unreachable at shutdown; messages stay buffered on disk");
                    break;
                }
            }
        }
    }
    let _ = client.try_disconnect();
    m.connected.store(false, Ordering::Relaxed);
}

fn warn_rejected(p: &PubAck, id: u64, wait: Duration) {
    let reason_string = p
        .properties
        .as_ref()
        .and_then(|pr| pr.reason_string.as_deref())
        .unwrap_or("");
    warn!(
        id,
        pkid = p.pkid,
        reason = ?p.reason,
        code = format_args!("{:#04x}", reason_code(p.reason)),
        reason_string,
        retry_in = ?wait,
        "mqtt5: broker rejected a message; it stays buffered and is sent again after a reconnect"
    );
}

fn ack(outbox: &Outbox, id: u64) {
    let mut b = outbox.buffer.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = b.ack(id) {
        warn!(error = %e, id, "mqtt5: cannot record the ack");
        return;
    }
    outbox
        .metrics
        .messages_acked
        .fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_success_reason_codes_ack() {
        assert!(reason_code(PubAckReason::Success) < 0x80);
        assert!(reason_code(PubAckReason::NoMatchingSubscribers) < 0x80);
        for r in [
            PubAckReason::UnspecifiedError,
            PubAckReason::ImplementationSpecificError,
            PubAckReason::NotAuthorized,
            PubAckReason::TopicNameInvalid,
            PubAckReason::PacketIdentifierInUse,
            PubAckReason::QuotaExceeded,
            PubAckReason::PayloadFormatInvalid,
        ] {
            assert!(reason_code(r) >= 0x80, "{r:?}");
        }
    }

    #[test]
    fn publish_properties_name_the_encoding() {
        let p = properties(false);
        assert_eq!(p.content_type.as_deref(), Some("application/json"));
        assert!(p.user_properties.is_empty());
        let p = properties(true);
        assert_eq!(p.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            p.user_properties,
            vec![("content-encoding".to_owned(), "gzip".to_owned())]
        );
    }
}
