//! Alerts of the local rules: one message per firing or clearing, into every telemetry
//! destination's outbox (durable like telemetry, sent when the connection is up). A stream
//! of its own per PLC, group `alerts`:
//! `{"schema":2,"epoch":..,"line":..,"plc":..,"group":"alerts","seq":N,"alerts":[{"rule":..,
//! "state":"fired"|"cleared","t":..,"message":..,"severity":N,"values":[{"node":..,"v":..}]}]}`.
//! On IoT Hub the message has the application property `messageType=alert`.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::payload::{self, json_str, rfc3339, Stream};
use super::{buffer, EncoderSettings};
use crate::buffer::outbox::{Outbox, OutboxError};

/// The group name of the alert streams.
pub const ALERTS_GROUP: &str = "alerts";

/// One alert.
#[derive(Debug, Clone)]
pub struct Alert {
    pub rule: String,
    /// The plc whose stream carries it (the rule's).
    pub plc: String,
    /// `fired` or `cleared`.
    pub state: &'static str,
    pub time_us: i64,
    pub message: String,
    pub severity: u16,
    /// The rule's nodes and their last values, as OPC UA JSON text (`null` when unknown).
    pub values: Vec<(String, String)>,
}

/// Every telemetry destination of the line.
pub struct Alerts {
    line: String,
    destinations: Vec<(EncoderSettings, Arc<Outbox>)>,
}

impl Alerts {
    pub fn new(line: &str, destinations: Vec<(EncoderSettings, Arc<Outbox>)>) -> Alerts {
        Alerts {
            line: line.to_owned(),
            destinations,
        }
    }

    /// Buffers `a` for every destination; the first failure is returned (the others are
    /// still tried).
    pub fn publish(&self, a: &Alert) -> Result<(), OutboxError> {
        let mut body = String::with_capacity(256);
        body.push_str("{\"rule\":");
        json_str(&mut body, &a.rule);
        let _ = write!(
            body,
            ",\"state\":\"{}\",\"t\":\"{}\"",
            a.state,
            rfc3339(a.time_us)
        );
        body.push_str(",\"message\":");
        json_str(&mut body, &a.message);
        let _ = write!(body, ",\"severity\":{},\"values\":[", a.severity);
        for (i, (node, v)) in a.values.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str("{\"node\":");
            json_str(&mut body, node);
            let _ = write!(body, ",\"v\":{v}}}");
        }
        body.push_str("]}");
        let mut result = Ok(());
        for (settings, outbox) in &self.destinations {
            let id = Stream {
                line: &self.line,
                epoch: outbox.epoch(),
                plc: &a.plc,
                group: ALERTS_GROUP,
                array: "alerts",
            };
            let sent = outbox
                .reserve(&format!("{}/{ALERTS_GROUP}", a.plc), 1)
                .and_then(|seq| {
                    let topic = (settings.alert_topic)(&a.plc, ALERTS_GROUP);
                    let m = payload::assemble(id, seq, &body);
                    buffer(outbox, settings.payload, &topic, m)
                });
            match sent {
                Ok(()) => {
                    outbox
                        .metrics
                        .alerts_buffered
                        .fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if result.is_ok() => result = Err(e),
                Err(_) => {}
            }
        }
        result
    }
}
