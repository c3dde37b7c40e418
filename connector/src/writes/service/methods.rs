//! Method calls: IoT Hub direct methods (`$iothub/methods/POST/{name}/?$rid=R`, answered on
//! `$iothub/methods/res/{status}/?$rid=R`) and plain-MQTT calls on
//! `{command_topic}/method/{name}` (de-duplicated by id like write requests, with an optional
//! expiry, answered on `{command_topic}/method/{name}/response` or the MQTT 5 response topic).
//! Each runs its `[[method]]`'s OPC UA method as a task of its own (the method's signature
//! read once per session), answered 200 / 400 / 404 / 500 / 504.

use chrono::Utc;
use opcua::types::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::info;

use super::{add, request_id, text, CommandTopics, Done, MethodAnswer, Reply, Service};
use crate::cloud::control::Message;
use crate::cloud::hub::topics;
use crate::writes::plc::{self, CallError, Signature};
use crate::writes::requests::check_id;
use crate::writes::state::cut;
use crate::writes::MAX_PROPERTY_BYTES;

impl Service {
    /// `$iothub/methods/POST/{name}/?$rid={rid}`: a direct method call.
    pub(super) fn direct_method(&mut self, name: &str, rid: String, payload: &[u8]) {
        let payload = match body_json(payload) {
            Ok(v) => v,
            Err(e) => {
                add(&self.metrics.calls_bad_arguments);
                self.malformed("direct method payload", &e);
                self.publish_hub(
                    topics::method_response(400, &rid),
                    &json!({"error": format!("malformed payload: {e}")}),
                );
                return;
            }
        };
        self.method(name, payload, MethodAnswer::Hub { rid });
    }

    /// A message on `{command_topic}/method/{name}`.
    pub(super) fn mqtt_method(&mut self, name: String, msg: Message, topics: &CommandTopics) {
        let to = |id: &str| Reply {
            id: id.to_owned(),
            topic: msg
                .response_topic
                .clone()
                .unwrap_or_else(|| topics.method_response(&name)),
            correlation: msg.correlation.clone(),
            via_hub: false,
        };
        self.method_request_to(&name, &msg.payload, &to);
    }

    /// A method call request (the body of [`Self::mqtt_method`]) answered to `to(id)`: on
    /// the broker, or on the hub for a cloud-to-device request.
    pub(super) fn method_request_to(
        &mut self,
        name: &str,
        payload: &[u8],
        to: &dyn Fn(&str) -> Reply,
    ) {
        if name.len() > MAX_PROPERTY_BYTES {
            add(&self.metrics.calls_unknown);
            let e = format!(
                "method name is {} bytes; at most {MAX_PROPERTY_BYTES}: not answered",
                name.len()
            );
            return self.malformed("method request", &e);
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Call {
            id: String,
            #[serde(default)]
            args: Value,
            #[serde(default)]
            expires: Option<chrono::DateTime<chrono::FixedOffset>>,
        }
        let call = match serde_json::from_slice::<Call>(payload) {
            Ok(c) => match check_id(&c.id) {
                Ok(()) => c,
                Err(e) => {
                    add(&self.metrics.calls_bad_arguments);
                    self.malformed("method request", &e);
                    return self.reply(&to(""), &method_body("", name, 400, Err(e.to_string())));
                }
            },
            Err(e) => {
                add(&self.metrics.calls_bad_arguments);
                self.malformed("method request", &e);
                let id = request_id(payload);
                return self.reply(
                    &to(&id),
                    &method_body(&id, name, 400, Err(format!("malformed: {e}"))),
                );
            }
        };
        let reply = to(&call.id);
        if self.duplicate(&reply) {
            return;
        }
        self.state.begin(&call.id);
        if call.expires.is_some_and(|t| Utc::now() >= t) {
            add(&self.metrics.calls_bad_arguments);
            info!(target: "audit", who = %format!("request {}", call.id), method = %name, result = 400, detail = "expired", "call refused");
            let body = method_body(&call.id, name, 400, Err("expired".into()));
            self.state.finish(&call.id, &body);
            return self.reply(&reply, &body);
        }
        self.method(name, call.args, MethodAnswer::Mqtt(reply));
    }

    pub(super) fn method(&mut self, name: &str, payload: Value, answer: MethodAnswer) {
        let who = answer.who();
        let Some(m) = self.methods.iter().find(|m| m.name == name).cloned() else {
            add(&self.metrics.calls_unknown);
            info!(target: "audit", who = %who, method = %name, result = 404, "unknown method");
            let err = format!("unknown method {:?}", cut(name, 64));
            return self.method_answer(&answer, name, 404, Err(err));
        };
        if let Some(detail) = self.busy(&m.plc) {
            match &answer {
                MethodAnswer::Hub { rid } => self.publish_hub(
                    topics::method_response(503, rid),
                    &json!({ "error": detail }),
                ),
                MethodAnswer::Mqtt(reply) => {
                    // Not remembered: the same id may ask again.
                    self.state.forget(&reply.id);
                    self.reply(reply, &method_body(&reply.id, name, 503, Err(detail)));
                }
                MethodAnswer::Rule(rule) => add(&rule.errors),
            }
            return;
        }
        let state = self.plcs.get(&m.plc);
        let Some(link) = state.and_then(|s| s.link.clone()) else {
            add(&self.metrics.calls_failed);
            let err = format!("BadNotConnected: plc {} is not connected", m.plc);
            info!(target: "audit", who = %who, method = %name, plc = %m.plc, result = 500, detail = %err, "call failed");
            return self.method_answer(&answer, name, 500, Err(err));
        };
        let cached = state.and_then(|s| s.signatures.get(name).cloned());
        self.running(&m.plc, true);
        let done = self.done_tx.clone();
        let name = name.to_owned();
        info!(target: "audit", who = %who, method = %name, plc = %m.plc, object = %m.object, args = %text(&payload), "calling");
        tokio::spawn(async move {
            let generation = link.generation;
            let ids = (link.ns.resolve(&m.object), link.ns.resolve(&m.method));
            let (object, method) = match ids {
                (Ok(o), Ok(me)) => (o, me),
                _ => {
                    let _ = done.send(Done::Called {
                        name,
                        answer,
                        generation,
                        signature: None,
                        result: Err(CallError::Failed(StatusCode::BadNodeIdUnknown)),
                    });
                    return;
                }
            };
            let sig = match cached {
                Some(s) => s,
                None => match tokio::time::timeout(m.timeout, plc::signature(&link, &method)).await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(status)) => {
                        let _ = done.send(Done::Called {
                            name,
                            answer,
                            generation,
                            signature: None,
                            result: Err(CallError::Failed(status)),
                        });
                        return;
                    }
                    Err(_) => {
                        let _ = done.send(Done::Called {
                            name,
                            answer,
                            generation,
                            signature: None,
                            result: Err(CallError::Timeout),
                        });
                        return;
                    }
                },
            };
            let result = plc::call(&link, &object, &method, &sig, &payload, m.timeout).await;
            let _ = done.send(Done::Called {
                name,
                answer,
                generation,
                signature: Some(sig),
                result,
            });
        });
    }

    pub(super) fn called(
        &mut self,
        name: String,
        answer: MethodAnswer,
        generation: u64,
        signature: Option<Signature>,
        result: Result<Value, CallError>,
    ) {
        if let Some(plc) = self
            .methods
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.plc.clone())
        {
            self.running(&plc, false);
        }
        if let (Some(sig), Some(m)) = (signature, self.methods.iter().find(|m| m.name == name)) {
            if let Some(s) = self.plcs.get_mut(&m.plc) {
                if s.link.as_ref().is_some_and(|l| l.generation == generation) {
                    s.signatures.insert(name.clone(), sig);
                }
            }
        }
        let (code, out) = match result {
            Ok(v) => {
                add(&self.metrics.calls_ok);
                (200, Ok(v))
            }
            Err(CallError::BadArguments(m)) => {
                add(&self.metrics.calls_bad_arguments);
                (400, Err(format!("bad arguments: {m}")))
            }
            Err(CallError::Timeout) => {
                add(&self.metrics.calls_timeout);
                (504, Err("the PLC did not answer in time".to_owned()))
            }
            Err(CallError::Failed(s)) => {
                add(&self.metrics.calls_failed);
                (500, Err(plc::status_name(s)))
            }
        };
        let who = answer.who();
        match &out {
            Ok(v) => {
                info!(target: "audit", who = %who, method = %name, result = code, outputs = %text(v), "called")
            }
            Err(e) => {
                info!(target: "audit", who = %who, method = %name, result = code, detail = %e, "call failed")
            }
        }
        self.method_answer(&answer, &name, code, out);
    }

    fn method_answer(
        &mut self,
        answer: &MethodAnswer,
        name: &str,
        code: u16,
        out: Result<Value, String>,
    ) {
        match answer {
            MethodAnswer::Hub { rid } => {
                let body = match out {
                    Ok(v) => v,
                    Err(e) => json!({ "error": e }),
                };
                self.publish_hub(topics::method_response(code, rid), &body);
            }
            MethodAnswer::Mqtt(reply) => {
                let body = method_body(&reply.id, name, code, out);
                self.state.finish(&reply.id, &body);
                self.reply(reply, &body);
            }
            MethodAnswer::Rule(rule) if code != 200 => add(&rule.errors),
            MethodAnswer::Rule(_) => {}
        }
    }
}

impl MethodAnswer {
    /// Who asked, for the audit record.
    fn who(&self) -> String {
        match self {
            MethodAnswer::Hub { rid } => format!("direct method rid {rid}"),
            MethodAnswer::Mqtt(r) => format!("request {}", r.id),
            MethodAnswer::Rule(r) => format!("rule {}", r.rule),
        }
    }
}

/// A method response for MQTT: `{"id", "method", "status", "outputs"}` or `... "error"}`.
fn method_body(id: &str, method: &str, status: u16, out: Result<Value, String>) -> Value {
    let mut b = json!({ "id": id, "method": method, "status": status });
    match out {
        Ok(v) => b["outputs"] = v,
        Err(e) => b["error"] = Value::from(e),
    }
    b
}

/// A method payload: JSON, or nothing (null).
fn body_json(payload: &[u8]) -> Result<Value, serde_json::Error> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(payload)
}
