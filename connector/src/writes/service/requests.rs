//! Plain-MQTT write requests on `{command_topic}/write`: parsed, de-duplicated by id (a
//! request id seen before is answered again with `"duplicate": true`, not applied again; MQTT
//! method calls use the same check), checked (mapping, expiry, type and range, `max_rate`)
//! and written, answered on `{command_topic}/write/response` or the MQTT 5 response topic. A
//! request whose PLC is not connected is answered 500 and not kept; one whose PLC has just
//! connected waits until its nodes are checked.

use chrono::Utc;
use serde_json::Value;
use tokio::time::Instant;
use tracing::info;

use super::write::rate_wait;
use super::{add, request_id, text, who, CommandTopics, Origin, Reply, Service};
use crate::cloud::control::{Inbound, Message, INBOUND_QUEUE};
use crate::writes::ack::write_response;
use crate::writes::coerce::coerce;
use crate::writes::requests::{expired, find_mapping, parse_request};
use crate::writes::Refusal;

impl Service {
    /// A message on `{command_topic}/write`.
    pub(super) fn write_request(&mut self, msg: Message, topics: &CommandTopics) {
        let to = |id: &str| Reply {
            id: id.to_owned(),
            topic: msg
                .response_topic
                .clone()
                .unwrap_or_else(|| topics.write_response.clone()),
            correlation: msg.correlation.clone(),
            via_hub: false,
        };
        self.write_request_to(&msg, &to);
    }

    /// A write request (the body of [`Self::write_request`]) answered to `to(id)`: on the
    /// broker, or on the hub for a cloud-to-device request.
    pub(super) fn write_request_to(&mut self, msg: &Message, to: &dyn Fn(&str) -> Reply) {
        let req = match parse_request(&msg.payload) {
            Ok(r) => r,
            Err(e) => {
                self.malformed("write request", &e);
                let id = request_id(&msg.payload);
                self.reply(&to(&id), &write_response(&id, 400, &e.to_string(), None));
                return;
            }
        };
        let reply = to(&req.id);
        if self.duplicate(&reply) {
            return;
        }
        let origin = Origin::Request(reply.clone());
        let Some(mapping) = find_mapping(&self.writes, &req.property).cloned() else {
            add(&self.metrics.writes_refused);
            let r = Refusal::NotMapped {
                property: req.property.clone(),
            };
            info!(target: "audit", who = %who(&origin), property = %req.property, new = %text(&req.value), result = 400, detail = %r, "write refused");
            self.state.begin(&req.id);
            return self.answer_write(&req.property, origin, req.value, 400, r.to_string());
        };
        let checking = self
            .plcs
            .get(&mapping.plc)
            .is_some_and(|s| s.link.is_some() && !s.checked);
        if checking && self.held.len() < INBOUND_QUEUE {
            // Just connected, its nodes being checked: answered right after.
            self.held
                .push((reply.via_hub, Inbound::Message(msg.clone())));
            return;
        }
        if let Some(detail) = self.busy(&mapping.plc) {
            // Not remembered: the same id may ask again.
            return self.reply(&reply, &write_response(&req.id, 503, &detail, None));
        }
        self.state.begin(&req.id);
        if expired(&req, Utc::now()) {
            return self.refused(&mapping, origin, req.value, &Refusal::Expired);
        }
        let variant = match coerce(&req.value, &mapping) {
            Ok(v) => v,
            Err(r) => return self.refused(&mapping, origin, req.value, &r),
        };
        if let Some(rate) = mapping.max_rate {
            let last = self.props.get(&mapping.property).and_then(|p| p.last_write);
            if rate_wait(rate, last, Instant::now()).is_some() {
                let r = Refusal::Malformed(format!(
                    "rate limited: at most one write per {} ms to {}",
                    rate.as_millis(),
                    mapping.property
                ));
                return self.refused(&mapping, origin, req.value, &r);
            }
        }
        let link = self
            .plcs
            .get(&mapping.plc)
            .and_then(|s| s.link.clone().filter(|_| s.checked));
        match link {
            Some(link) => self.start_write(&mapping, origin, req.value, variant, link),
            None => {
                add(&self.metrics.writes_unreachable);
                let detail = format!(
                    "BadNotConnected: plc {} is not connected; not written",
                    mapping.plc
                );
                info!(target: "audit", who = %who(&origin), plc = %mapping.plc, node = %mapping.node, new = %text(&req.value), result = 500, detail = %detail, "write failed");
                self.answer_write(&mapping.property, origin, req.value, 500, detail);
            }
        }
    }

    /// A request id seen before: answers it again (or says it is in progress), true.
    pub(super) fn duplicate(&mut self, reply: &Reply) -> bool {
        let Some(previous) = self.state.answer(&reply.id).cloned() else {
            return false;
        };
        add(&self.metrics.duplicates);
        info!(target: "audit", who = %format!("request {}", reply.id), result = "duplicate", "request id seen before: not applied again");
        let body = if previous.is_null() {
            {
                let mut b = write_response(
                    &reply.id,
                    202,
                    "duplicate request id: the first request is in progress",
                    None,
                );
                b["duplicate"] = Value::Bool(true);
                b
            }
        } else {
            let mut b = previous;
            b["duplicate"] = Value::Bool(true);
            b
        };
        self.reply(reply, &body);
        true
    }
}
