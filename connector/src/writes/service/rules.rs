//! Writes and calls of the local rules (`[[rule]]`): the same path as a cloud request (the
//! `[[write]]` allow-list, type and limits, `max_rate`, `max_concurrent_commands`, read-back,
//! the audit record, here with `who = "rule <name>"`), answered to nobody: a failure counts
//! as an error of the rule. Never retried: the rule acts again when it fires again. At start,
//! before every PLC's write session is up and checked (at most 5 s), actions wait for it.

use std::sync::Arc;
use std::time::Instant as StdInstant;

use serde_json::Value;
use tokio::time::Instant;
use tracing::info;

use super::write::rate_wait;
use super::{add, text, MethodAnswer, Origin, Service};
use crate::cloud::control::INBOUND_QUEUE;
use crate::metrics::RuleCounters;
use crate::writes::coerce::coerce;
use crate::writes::requests::find_mapping;
use crate::writes::Refusal;

/// What a rule asks of the write service.
#[derive(Debug)]
pub enum RuleCommand {
    /// Write `value` to a `[[write]]` property.
    Write {
        rule: Arc<RuleCounters>,
        property: String,
        value: Value,
        /// When the sample that fired the rule arrived.
        since: StdInstant,
    },
    /// Call a `[[method]]` with these input arguments.
    Call {
        rule: Arc<RuleCounters>,
        method: String,
        args: Vec<Value>,
        since: StdInstant,
    },
}

impl Service {
    pub(super) fn rule(&mut self, cmd: RuleCommand) {
        // At start a rule may fire on the first samples before the write session is up: its
        // action waits for it (at most the start's grace), as a cloud request does.
        if self.starting() && self.held_rules.len() < INBOUND_QUEUE {
            self.held_rules.push(cmd);
            return;
        }
        match cmd {
            RuleCommand::Write {
                rule,
                property,
                value,
                since,
            } => self.rule_write(rule, &property, value, since),
            RuleCommand::Call {
                rule,
                method,
                args,
                since,
            } => {
                let payload = if args.is_empty() {
                    Value::Null
                } else {
                    Value::Array(args)
                };
                self.issued(since);
                self.method(&method, payload, MethodAnswer::Rule(rule));
            }
        }
    }

    /// A rule's action is issued to the PLC now: its latency since the firing sample.
    fn issued(&self, since: StdInstant) {
        if let Some(m) = &self.rule_metrics {
            m.action_latency.observe(since.elapsed());
        }
    }

    fn rule_write(
        &mut self,
        rule: Arc<RuleCounters>,
        property: &str,
        value: Value,
        since: StdInstant,
    ) {
        let origin = Origin::Rule(rule.clone());
        let Some(mapping) = find_mapping(&self.writes, property).cloned() else {
            // The config check makes this impossible; said anyway.
            add(&self.metrics.writes_refused);
            add(&rule.errors);
            let r = Refusal::NotMapped {
                property: property.to_owned(),
            };
            info!(target: "audit", who = %format!("rule {}", rule.rule), property = %property, new = %text(&value), result = 400, detail = %r, "write refused");
            return;
        };
        if let Some(detail) = self.busy(&mapping.plc) {
            add(&rule.errors);
            info!(target: "audit", who = %format!("rule {}", rule.rule), plc = %mapping.plc, property = %property, new = %text(&value), result = 503, detail = %detail, "write not issued");
            return;
        }
        let variant = match coerce(&value, &mapping) {
            Ok(v) => v,
            Err(r) => return self.refused(&mapping, origin, value, &r),
        };
        if let Some(rate) = mapping.max_rate {
            let last = self.props.get(&mapping.property).and_then(|p| p.last_write);
            if rate_wait(rate, last, Instant::now()).is_some() {
                let r = Refusal::Malformed(format!(
                    "rate limited: at most one write per {} ms to {}",
                    rate.as_millis(),
                    mapping.property
                ));
                return self.refused(&mapping, origin, value, &r);
            }
        }
        let link = self
            .plcs
            .get(&mapping.plc)
            .and_then(|s| s.link.clone().filter(|_| s.checked));
        match link {
            Some(link) => {
                self.issued(since);
                self.start_write(&mapping, origin, value, variant, link);
            }
            None => {
                add(&self.metrics.writes_unreachable);
                let detail = format!(
                    "BadNotConnected: plc {} is not connected; not written",
                    mapping.plc
                );
                info!(target: "audit", who = %format!("rule {}", rule.rule), plc = %mapping.plc, node = %mapping.node, new = %text(&value), result = 500, detail = %detail, "write failed");
                self.answer_write(&mapping.property, origin, value, 500, detail);
            }
        }
    }
}
