//! The PLC write of a twin property or an MQTT write request, shared by both: the `max_rate`
//! decision, the node's fitness as checked at connect, the write task, and the answer to its
//! result (a twin acknowledgement or an MQTT write response).

use std::time::Duration;

use opcua::types::Variant;
use serde_json::Value;
use tokio::time::Instant;
use tracing::info;

use super::{add, text, who, Done, Origin, Service, Want, WRITE_TIMEOUT};
use crate::config::types::WriteMapping;
use crate::opcua::link::Link;
use crate::writes::ack::{write_response, TwinAck};
use crate::writes::plc::{self, Failure, Fitness};
use crate::writes::requests::find_mapping;
use crate::writes::Refusal;

/// After a write failed for want of the PLC while its session looked up.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// `max_rate`: with at most one write per `rate`, a write at `now` after one at `last` is too
/// early when less than `rate` has passed; then the instant it may go.
pub(super) fn rate_wait(rate: Duration, last: Option<Instant>, now: Instant) -> Option<Instant> {
    let last = last?;
    (now.saturating_duration_since(last) < rate).then(|| last + rate)
}

/// An old value for the audit record.
fn opt_variant(v: &Option<Variant>) -> String {
    v.as_ref()
        .map_or_else(|| "unknown".to_owned(), |v| text(&plc::variant_json(v)))
}

impl Service {
    pub(super) fn refused(
        &mut self,
        mapping: &WriteMapping,
        origin: Origin,
        value: Value,
        r: &Refusal,
    ) {
        add(&self.metrics.writes_refused);
        let who = who(&origin);
        info!(target: "audit", who = %who, plc = %mapping.plc, node = %mapping.node, property = %mapping.property, new = %text(&value), result = 400, detail = %r, "write refused");
        self.answer_write(&mapping.property, origin, value, 400, r.to_string());
    }

    pub(super) fn answer_write(
        &mut self,
        property: &str,
        origin: Origin,
        value: Value,
        code: u16,
        detail: String,
    ) {
        match origin {
            Origin::Twin { version } => {
                self.state.set_handled(property, version);
                self.twin_ack(&[TwinAck {
                    property: property.to_owned(),
                    value,
                    code,
                    version,
                    description: detail,
                }]);
            }
            Origin::Request(reply) => {
                let body = write_response(&reply.id, code, &detail, Some(&value));
                self.state.finish(&reply.id, &body);
                self.reply(&reply, &body);
            }
            Origin::Rule(rule) => {
                if code != 200 {
                    add(&rule.errors);
                }
                // Refused before it ran: the property's next write may go.
                self.rule_writes.running.remove(property);
            }
        }
    }

    pub(super) fn start_write(
        &mut self,
        mapping: &WriteMapping,
        origin: Origin,
        value: Value,
        variant: Variant,
        link: Link,
    ) {
        let plc_state = self.plcs.get(&mapping.plc);
        let fitness = plc_state.and_then(|s| s.fitness.get(&mapping.property).cloned());
        match fitness {
            Some(Fitness::NotWritable) => {
                return self.refused(mapping, origin, value, &Refusal::NotWritable);
            }
            Some(Fitness::WrongType { node_type }) => {
                let r = Refusal::WrongType {
                    expected: node_type,
                    got: mapping.write_type.name(),
                };
                return self.refused(mapping, origin, value, &r);
            }
            Some(Fitness::Unknown(status)) => {
                add(&self.metrics.writes_failed);
                let detail = format!(
                    "{}: node {} on plc {}",
                    plc::status_name(status),
                    mapping.node,
                    mapping.plc
                );
                info!(target: "audit", who = %who(&origin), plc = %mapping.plc, node = %mapping.node, new = %text(&value), result = 500, detail = %detail, "write failed");
                return self.answer_write(&mapping.property.clone(), origin, value, 500, detail);
            }
            Some(Fitness::Writable) | None => {}
        }
        let node = match link.ns.resolve(&mapping.node) {
            Ok(n) => n,
            Err(e) => {
                add(&self.metrics.writes_failed);
                let detail = format!("BadNodeIdUnknown: {e}");
                return self.answer_write(&mapping.property.clone(), origin, value, 500, detail);
            }
        };
        self.running(&mapping.plc, true);
        if let Some(p) = self.props.get_mut(&mapping.property) {
            p.last_write = Some(Instant::now());
            if matches!(origin, Origin::Twin { .. }) {
                p.running = true;
            }
        }
        let done = self.done_tx.clone();
        let (property, readback) = (mapping.property.clone(), mapping.readback);
        // A rule acts on the value it just saw: reading the old value first (for the audit
        // record) would cost a round trip of its reaction time.
        let read_old = !matches!(origin, Origin::Rule(_));
        tokio::spawn(async move {
            let result =
                plc::write(&link, &node, variant, (read_old, readback), WRITE_TIMEOUT).await;
            let _ = done.send(Done::Written {
                property,
                origin,
                value,
                result,
            });
        });
    }

    pub(super) fn written(
        &mut self,
        property: String,
        origin: Origin,
        value: Value,
        result: Result<plc::Written, Failure>,
    ) {
        let Some(mapping) = find_mapping(&self.writes, &property).cloned() else {
            return;
        };
        self.running(&mapping.plc, false);
        let twin = matches!(origin, Origin::Twin { .. });
        let rule = matches!(origin, Origin::Rule(_));
        if twin {
            if let Some(p) = self.props.get_mut(&property) {
                p.running = false;
            }
        }
        let who = who(&origin);
        match result {
            Ok(w) => {
                add(&self.metrics.writes_ok);
                let now = w
                    .now
                    .as_ref()
                    .map(plc::variant_json)
                    .unwrap_or_else(|| value.clone());
                info!(target: "audit", who = %who, plc = %mapping.plc, node = %mapping.node, property = %property, old = %opt_variant(&w.old), new = %text(&now), result = 200, plc_ms = w.took.as_secs_f64() * 1000.0, "written");
                let detail = if mapping.readback {
                    "written; read back"
                } else {
                    "written"
                };
                self.answer_write(&property, origin, now, 200, detail.to_owned());
            }
            Err(Failure::NotWritable(s)) => {
                add(&self.metrics.writes_refused);
                let detail = format!("node not writable ({})", plc::status_name(s));
                info!(target: "audit", who = %who, plc = %mapping.plc, node = %mapping.node, new = %text(&value), result = 400, detail = %detail, "write refused by the plc");
                self.answer_write(&property, origin, value, 400, detail);
            }
            Err(Failure::Refused(s)) => {
                add(&self.metrics.writes_failed);
                let detail = plc::status_name(s);
                info!(target: "audit", who = %who, plc = %mapping.plc, node = %mapping.node, new = %text(&value), result = 500, detail = %detail, "write refused by the plc");
                self.answer_write(&property, origin, value, 500, detail);
            }
            Err(Failure::Unreachable(s)) => {
                add(&self.metrics.writes_unreachable);
                info!(target: "audit", who = %who, plc = %mapping.plc, node = %mapping.node, new = %text(&value), result = 500, detail = %plc::status_name(s), "write did not reach the plc");
                match origin {
                    Origin::Twin { version } => {
                        let detail = format!(
                            "{}: plc {} unreachable; written when it is back",
                            plc::status_name(s),
                            mapping.plc
                        );
                        let p = self.props.entry(property.clone()).or_default();
                        // Keep it unless a newer desired value replaced it meanwhile.
                        if p.pending.is_none() {
                            p.pending = Some(Want {
                                version,
                                value: value.clone(),
                                told_unreachable: true,
                                not_before: Some(Instant::now() + RETRY_AFTER),
                            });
                            self.twin_ack(&[TwinAck {
                                property: property.clone(),
                                value,
                                code: 500,
                                version,
                                description: detail,
                            }]);
                        }
                    }
                    Origin::Rule(rule) => {
                        // Tried again: what the rule wants the property to be.
                        return self.rule_unreachable(&property, rule, value);
                    }
                    Origin::Request(_) => {
                        let detail = format!(
                            "{}: plc {} unreachable; not written",
                            plc::status_name(s),
                            mapping.plc
                        );
                        self.answer_write(&property, origin, value, 500, detail);
                    }
                }
            }
        }
        if twin {
            self.kick(&property);
        }
        if rule {
            self.rule_written(&property);
        }
    }
}
