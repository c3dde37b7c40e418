//! The MQTT 5 variant of [`super::sender`]: the same buffer protocol, window, clean sessions
//! and ack correlation, on `rumqttc::v5`.
//!
//! Publishes go out in buffer order; each `Outgoing::Publish(pkid)` pairs the next sent buffer
//! id with its packet id and `Incoming::PubAck(pkid)` acks that id, but only when the PUBACK's
//! reason code is a success (< 0x80; "no matching subscribers" is one). A message refused for
//! good (0x90 topic name invalid, 0x95 packet too large, 0x99 payload format invalid) is moved
//! to the dead letters and the stream goes on; a message larger than the broker's maximum
//! packet size (from its ConnAck) is moved there before it is sent. A message refused for a
//! reason that may pass (e.g. 0x97 quota exceeded, 0x87 not authorized) is logged with its
//! reason, stays in the buffer, and the sender reconnects after a back-off: the buffer rewinds
//! after the ConnAck and the rejected message goes out again, still in order. Sessions start clean, so after
//! every (re)connect rumqttc forgets what was in flight and the buffer hands out every
//! unacknowledged message again (a message can repeat; a consumer drops repeats by `seq`).
//!
//! Messages carry the content type `application/json`; gzip-compressed ones also the user
//! property `content-encoding: gzip`.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{LastWill, Packet, PubAck, PubAckReason, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions, StateError};
use rumqttc::Outgoing;
use tracing::warn;

use super::flow::{permanent, Flow, Sending, WINDOW};
use super::MqttError;
use crate::backoff::Backoff;
use crate::cloud::control::{Control, Message};
use crate::cloud::status::StatusReporter;
use crate::config::MqttSinkConfig;

/// Back-off after a rejected message before the reconnect that re-sends it.
/// After a refused message: 2 s doubling to 30 s (plus jitter) before the next connection.
fn reject_backoff() -> Backoff {
    Backoff::new(Duration::from_secs(2), Duration::from_secs(30))
}

/// MQTT 5 client options for `[sink.mqtt]`. Credentials (password secret) and the TLS
/// transport come from the 3.1.1 [`super::sender::options`], so both versions resolve them the
/// same way.
pub fn options(cfg: &MqttSinkConfig) -> Result<MqttOptions, MqttError> {
    let v3 = super::sender::options(cfg)?;
    let mut o = MqttOptions::new(cfg.client_id.clone(), v3.broker_address().0, cfg.port);
    o.set_keep_alive(cfg.keep_alive.max(Duration::from_secs(1)));
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
    if let Some(proxy) = v3.proxy() {
        o.set_proxy(proxy);
    }
    o.set_network_options(super::sender::network_options());
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
/// Runs until `shutdown`; then tries for up to `grace` to deliver what is buffered. A PUBACK
/// with a failure reason code does not ack: the connection is dropped after a back-off and
/// the buffer re-sends from that message on, keeping the order.
pub async fn run(mut opts: MqttOptions, sending: Sending) {
    let Sending {
        qos,
        outbox,
        shutdown,
        grace,
        renew,
        control,
        status,
        topics,
        ..
    } = sending;
    let mut control = control.unwrap_or_else(Control::none);
    let mut status = status.map(StatusReporter::new);
    let will = |s: &StatusReporter| {
        s.will()
            .map(|(topic, body)| LastWill::new(topic, body, QoS::AtLeastOnce, true, None))
    };
    if let Some(w) = status.as_ref().and_then(will) {
        opts.set_last_will(w);
    }
    let qos = if qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let mut flow = Flow::new(outbox.clone(), qos == QoS::AtMostOnce, "mqtt5", renew);
    flow.set_topics(topics);
    if let Some((user, pass)) = flow.credentials() {
        opts.set_credentials(user, pass);
    }
    let own_limit = opts.max_packet_size().map_or(usize::MAX, |m| m as usize);
    flow.set_limit(own_limit);
    flow.set_keep_alive(opts.keep_alive());
    let (client, mut eventloop) = AsyncClient::new(opts, WINDOW + 8);
    let mut rejections = reject_backoff();
    while flow.keep_going(&shutdown, grace) {
        if let Some(w) = status.as_ref().filter(|_| !flow.connected).and_then(will) {
            // The will of the connection about to be opened says when it was.
            eventloop.options.set_last_will(w);
        }
        flow.send_control(&mut control, |out| {
            let props = PublishProperties {
                content_type: Some("application/json".to_owned()),
                correlation_data: out.correlation.clone().map(Into::into),
                ..Default::default()
            };
            client
                .try_publish_with_properties(
                    out.topic.as_str(),
                    QoS::AtLeastOnce,
                    false,
                    out.payload.clone(),
                    props,
                )
                .is_ok()
        });
        if let Some(s) = status.as_mut().filter(|_| flow.has_room()) {
            if let Some((topic, body, retain)) = s.due(|| flow.backlog()) {
                let props = PublishProperties {
                    content_type: Some("application/json".to_owned()),
                    ..Default::default()
                };
                if client
                    .try_publish_with_properties(topic, QoS::AtLeastOnce, retain, body, props)
                    .is_ok()
                {
                    flow.status_sent();
                } else {
                    s.not_sent();
                }
            }
        }
        flow.fill(|topic, gzip, body| {
            client
                .try_publish_with_properties(topic, qos, false, body.to_vec(), properties(gzip))
                .is_ok()
        });
        let recheck = status.as_ref().map(StatusReporter::recheck);
        let event = tokio::select! {
            e = eventloop.poll() => e,
            _ = control.ready() => continue,
            _ = tokio::time::sleep(recheck.unwrap_or_default()), if recheck.is_some() && flow.connected => continue,
            _ = flow.renewal_due() => {
                if let Some((user, pass)) = flow.credentials() {
                    eventloop.options.set_credentials(user, pass);
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
            Ok(Event::Incoming(Packet::ConnAck(c))) => {
                let broker = c.properties.and_then(|p| p.max_packet_size);
                flow.set_limit(broker.map_or(own_limit, |b| own_limit.min(b as usize)));
                flow.connack();
                if let Some(s) = status.as_mut() {
                    s.connected();
                }
                control.subscribe("mqtt5", |topic| {
                    client
                        .try_subscribe(topic, QoS::AtLeastOnce)
                        .map_err(|e| e.to_string())
                });
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let (response_topic, correlation) = match p.properties {
                    Some(pr) => (pr.response_topic, pr.correlation_data.map(|b| b.to_vec())),
                    None => (None, None),
                };
                control.deliver(Message {
                    topic: String::from_utf8_lossy(&p.topic).into_owned(),
                    payload: p.payload.to_vec(),
                    response_topic,
                    correlation,
                });
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => flow.outgoing_publish(pkid),
            Ok(Event::Outgoing(Outgoing::PingReq)) => flow.ping_sent(),
            Ok(Event::Incoming(Packet::PubAck(p))) => {
                let code = reason_code(p.reason);
                let Some(id) = flow.puback(p.pkid) else {
                    if flow.status_puback(p.pkid) && code >= 0x80 {
                        // The status topic refused (an ACL): counted, logged, sent again
                        // after the interval. The telemetry goes on.
                        outbox
                            .metrics
                            .status_failures
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if let Some(s) = status.as_mut() {
                            s.refused(&format!("reason {code:#04x} ({:?})", p.reason));
                        }
                    }
                    continue;
                };
                if code < 0x80 {
                    rejections.reset();
                    flow.ack(id);
                    continue;
                }
                if permanent(code) {
                    flow.refused(
                        id,
                        &format!(
                            "refused by the broker with reason {code:#04x} ({:?})",
                            p.reason
                        ),
                    );
                    continue;
                }
                let wait = rejections.next_wait();
                warn_rejected(&p, id, wait);
                outbox
                    .metrics
                    .rejected
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // Keep the order: drop the connection so the buffer rewinds after the next
                // ConnAck and re-sends from the rejected message on.
                eventloop.clean();
                flow.disconnected();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled(), if !flow.draining() => {}
                }
            }
            Ok(_) => {}
            Err(e) => {
                if let Some(code) = undecodable_refusal(&e) {
                    flow.refused_unmatched(code);
                }
                let refused = refused_login(&e);
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
            // Briefly, as the 3.1.1 sender: acknowledgements meanwhile still count.
            let until = tokio::time::Instant::now() + super::sender::STOP_WAIT;
            while let Ok(Ok(e)) = tokio::time::timeout_at(until, eventloop.poll()).await {
                match e {
                    Event::Outgoing(Outgoing::Disconnect) => break,
                    Event::Outgoing(Outgoing::Publish(pkid)) => flow.outgoing_publish(pkid),
                    Event::Incoming(Packet::PubAck(p)) if reason_code(p.reason) < 0x80 => {
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
}

/// A packet from the broker with a permanent reason code that rumqttc could not decode (it
/// knows no 0x95 in a PUBACK, which mosquitto sends for a message over its
/// `message_size_limit`).
fn undecodable_refusal(e: &ConnectionError) -> Option<u8> {
    use rumqttc::v5::mqttbytes::Error as Decode;
    match e {
        ConnectionError::MqttState(StateError::Deserialization(
            Decode::InvalidConnectReturnCode(code) | Decode::InvalidReason(code),
        )) if permanent(*code) => Some(*code),
        _ => None,
    }
}

/// The broker refused the credentials (a CONNACK, or a certificate in the TLS handshake):
/// retried with the long back-off.
fn refused_login(e: &ConnectionError) -> bool {
    use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as C;
    matches!(
        e,
        ConnectionError::ConnectionRefused(
            C::BadUserNamePassword | C::NotAuthorized | C::Banned | C::BadAuthenticationMethod
        )
    ) || super::sender::certificate_refused(e)
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
