//! Writes and calls of the local rules (`[[rule]]`): the same path as a cloud request (the
//! `[[write]]` allow-list, type and limits, `max_rate`, `max_concurrent_commands`, read-back,
//! the audit record, here with `who = "rule <name>"`), answered to nobody.
//!
//! A rule's write is the state the rule wants its property in, so per property:
//! - one write at a time, in the order the rule asked (an open then a close reach the PLC in
//!   that order);
//! - a write that cannot go yet (the PLC not connected or its nodes not checked yet, busy, or
//!   `max_rate`) waits and goes as soon as it can; one the PLC did not get (unreachable) is
//!   tried again every second; a newer write of the property replaces the one waiting (the
//!   older never reached the PLC, so nothing is written twice);
//! - a write refused for good (type, limits, not writable, the PLC's refusal) counts as an
//!   error of the rule and is not tried again.
//!
//! Calls are not repeated: a call that fails counts as an error of the rule.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use serde_json::Value;
use tokio::time::Instant;
use tracing::{info, warn};

use super::write::rate_wait;
use super::{add, text, MethodAnswer, Origin, Service};
use crate::metrics::RuleCounters;
use crate::ratelog::RateLog;
use crate::writes::coerce::coerce;
use crate::writes::requests::find_mapping;

/// After a rule write did not reach its PLC.
const RETRY_AFTER: Duration = Duration::from_secs(1);

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

/// A rule write waiting for its turn.
#[derive(Debug)]
struct Waiting {
    rule: Arc<RuleCounters>,
    value: Value,
    since: StdInstant,
    not_before: Option<Instant>,
}

/// The rule writes of the service, per property.
#[derive(Debug, Default)]
pub(super) struct RuleWrites {
    waiting: HashMap<String, Waiting>,
    pub(super) running: HashSet<String>,
}

impl Service {
    pub(super) fn rule(&mut self, cmd: RuleCommand) {
        match cmd {
            RuleCommand::Write {
                rule,
                property,
                value,
                since,
            } => {
                let w = Waiting {
                    rule,
                    value,
                    since,
                    not_before: None,
                };
                if let Some(old) = self.rule_writes.waiting.insert(property.clone(), w) {
                    info!(target: "audit", who = %format!("rule {}", old.rule.rule), property = %property, new = %text(&old.value), "rule write replaced by a newer one of the rule before it could go: not written");
                }
                self.kick_rule(&property);
            }
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

    /// Rule writes whose wait may be over (the 200 ms tick).
    pub(super) fn rule_tick(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .rule_writes
            .waiting
            .iter()
            .filter(|(p, w)| {
                !self.rule_writes.running.contains(*p) && w.not_before.is_none_or(|t| t <= now)
            })
            .map(|(p, _)| p.clone())
            .collect();
        for p in due {
            self.kick_rule(&p);
        }
    }

    /// A rule write of `property` finished (any result).
    pub(super) fn rule_written(&mut self, property: &str) {
        self.rule_writes.running.remove(property);
        self.kick_rule(property);
    }

    /// A rule write the PLC did not get: tried again unless a newer one waits.
    pub(super) fn rule_unreachable(
        &mut self,
        property: &str,
        rule: Arc<RuleCounters>,
        value: Value,
    ) {
        self.rule_writes.running.remove(property);
        if !self.rule_writes.waiting.contains_key(property) {
            let w = Waiting {
                rule,
                value,
                since: StdInstant::now(),
                not_before: Some(Instant::now() + RETRY_AFTER),
            };
            self.rule_writes.waiting.insert(property.to_owned(), w);
        }
    }

    /// A rule's action is issued to the PLC now: its latency since the firing sample.
    fn issued(&self, since: StdInstant) {
        if let Some(m) = &self.rule_metrics {
            m.action_latency.observe(since.elapsed());
        }
    }

    /// Starts the waiting write of `property` if it can go now.
    fn kick_rule(&mut self, property: &str) {
        static WAIT: RateLog = RateLog::per_minute();
        if self.rule_writes.running.contains(property) {
            return;
        }
        let Some(w) = self.rule_writes.waiting.get(property) else {
            return;
        };
        let now = Instant::now();
        if w.not_before.is_some_and(|t| t > now) {
            return;
        }
        let Some(mapping) = find_mapping(&self.writes, property).cloned() else {
            // The config check makes this impossible; said anyway.
            if let Some(w) = self.rule_writes.waiting.remove(property) {
                add(&self.metrics.writes_refused);
                add(&w.rule.errors);
                warn!(target: "audit", who = %format!("rule {}", w.rule.rule), property = %property, result = 400, "write refused: not mapped");
            }
            return;
        };
        // The PLC's session when the write may go now, else why not.
        let link = match self.plcs.get(&mapping.plc) {
            None => Err("unknown"),
            Some(s) if !s.checked => Err("not connected, or its nodes are being checked"),
            Some(s) if s.busy() => Err("busy (max_concurrent_commands)"),
            Some(s) => s.link.clone().ok_or("not connected"),
        };
        let rate = mapping.max_rate.and_then(|r| {
            let last = self.props.get(property).and_then(|p| p.last_write);
            rate_wait(r, last, now)
        });
        let link = match (link, rate) {
            (Ok(link), None) => link,
            (why, rate) => {
                if let Some(w) = self.rule_writes.waiting.get_mut(property) {
                    w.not_before = rate;
                    if let (Err(why), Some(more)) = (why, WAIT.hit()) {
                        info!(who = %format!("rule {}", w.rule.rule), plc = %mapping.plc, property = %property, suppressed = more, "a rule write waits for its plc: {why}");
                    }
                }
                return;
            }
        };
        let Some(w) = self.rule_writes.waiting.remove(property) else {
            return;
        };
        let origin = Origin::Rule(w.rule.clone());
        let variant = match coerce(&w.value, &mapping) {
            Ok(v) => v,
            Err(r) => return self.refused(&mapping, origin, w.value, &r),
        };
        self.issued(w.since);
        self.rule_writes.running.insert(property.to_owned());
        self.start_write(&mapping, origin, w.value, variant, link);
    }
}
