//! IoT Hub cloud-to-device messages (`devices/{id}/messages/devicebound/{properties}`).
//!
//! A message whose application property `request` is `write` or `method` (with `method` the
//! method's name) is a request with the body of an MQTT write request or method call
//! (docs/writes.md): the same allow-list, limits, idempotency by `id` and audit. Its answer
//! goes out as a device-to-cloud message with the application property `messageType`
//! (`writeResponse`, `methodResponse`) and the request's message id as correlation id
//! (`$.cid`). Any other message is counted and logged (rate-limited, its body cut), and
//! nothing is done with it. A message over IoT Hub's 64 KiB limit is refused the same way.
//!
//! Completion: over MQTT IoT Hub completes a cloud-to-device message when the device
//! acknowledges it (PUBACK, QoS 1), which the connection does on receipt, whatever the
//! message asked: a request that fails is answered, not abandoned for redelivery.

use tracing::{info, warn};

use super::{add, Reply, Service};
use crate::cloud::control::{Inbound, Message, INBOUND_QUEUE};
use crate::cloud::hub::topics;
use crate::ratelog::RateLog;
use crate::writes::state::cut;

/// IoT Hub's limit for a cloud-to-device message: a larger one is not acted upon.
pub const C2D_MAX_BYTES: usize = 64 * 1024;
/// The most of an unrelated message's body that goes into the log.
const LOGGED_BODY_CHARS: usize = 120;

impl Service {
    /// A cloud-to-device message with its decoded `properties`.
    pub(super) fn c2d(&mut self, properties: Vec<(String, String)>, msg: Message) {
        let prop = |k: &str| {
            properties
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let message_id = prop("$.mid").map(|m| cut(m, 128));
        // Counted when it first came, not again when replayed after a hold.
        let first = !self.replaying;
        if msg.payload.len() > C2D_MAX_BYTES {
            static LOG: RateLog = RateLog::per_minute();
            add(&self.metrics.c2d_refused);
            if let Some(suppressed) = LOG.hit().filter(|_| first) {
                warn!(bytes = msg.payload.len(), message_id = ?message_id, suppressed,
                    "cloud-to-device message over IoT Hub's {C2D_MAX_BYTES} bytes refused: not acted upon");
            }
            return;
        }
        let (kind, answer_type) = match prop("request") {
            Some("write") => ("write", "writeResponse"),
            Some("method") => ("method", "methodResponse"),
            other => {
                static LOG: RateLog = RateLog::per_minute();
                add(&self.metrics.c2d_other);
                if let Some(suppressed) = LOG.hit() {
                    let body = cut(&String::from_utf8_lossy(&msg.payload), LOGGED_BODY_CHARS);
                    let shown: Vec<String> = properties
                        .iter()
                        .take(8)
                        .map(|(k, v)| format!("{}={}", cut(k, 40), cut(v, 80)))
                        .collect();
                    info!(request = ?other.map(|r| cut(r, 40)), message_id = ?message_id, properties = ?shown,
                        bytes = msg.payload.len(), body = %body, suppressed,
                        "cloud-to-device message that is not a write or method request: counted, not acted upon");
                }
                return;
            }
        };
        if first {
            add(&self.metrics.c2d_requests);
        }
        // Queued in the hub while the connector was away, it comes at the first connect: held
        // like a direct method until the PLC sessions are up.
        if self.starting() && self.held.len() < INBOUND_QUEUE {
            self.held.push((true, Inbound::Message(msg)));
            return;
        }
        let topic = self.c2d_answer_topic(answer_type, message_id.as_deref());
        let to = |id: &str| Reply {
            id: id.to_owned(),
            topic: topic.clone(),
            correlation: None,
            via_hub: true,
        };
        if kind == "write" {
            return self.write_request_to(&msg, &to);
        }
        match prop("method") {
            Some(name) if !name.is_empty() => {
                let name = name.to_owned();
                self.method_request_to(&name, &msg.payload, &to);
            }
            _ => self.malformed(
                "cloud-to-device method request",
                &"no method property: give the method's name in the message property method",
            ),
        }
    }

    /// The device-to-cloud topic of an answer, for the hub identity in use.
    fn c2d_answer_topic(&self, message_type: &str, message_id: Option<&str>) -> String {
        let identity = self.hub_identity.as_ref().and_then(|c| c.get());
        let (device, module) = identity.as_ref().map_or(("", None), |i| {
            (i.device_id.as_str(), i.module_id.as_deref())
        });
        topics::response_topic(device, module, message_type, message_id)
    }
}
