//! Local rules (`[[rule]]`): conditions on node values that act on the line without the
//! cloud: write a `[[write]]` property, call a `[[method]]`, send an alert.
//!
//! - [`condition`]: a condition's value (true, false, unknown, pending) and `for` durations.
//! - This module: the engine, one task on a thread of its own. It takes the samples of the
//!   rules' nodes from each PLC's tap (`pipeline::tap`) as they arrive, evaluates the rules
//!   that read them, and at the instants a `for` completes. A rule fires when `when` holds
//!   and clears when `clear` holds (without `clear`: when `when` is false, not merely
//!   unknown); a firing within `min_interval` of the last one waits for the interval's end
//!   and happens then if `when` still holds. Which rules are fired survives a restart
//!   ([`state`]). Writes and calls go to the write service (allow-list, limits, read-back,
//!   audit records naming the rule); alerts into the telemetry outboxes.
//!
//! Rules run whether or not the cloud is reachable: nothing here waits for a connection.

pub mod condition;
pub mod state;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Action, NodeTest, Rule};
use crate::metrics::{RuleCounters, RuleMetrics};
use crate::pipeline::tap::Tapped;
use crate::sample::{Sample, SampleValue};
use crate::sinks::telemetry::alerts::{Alert, Alerts};
use crate::sinks::telemetry::payload::json_str;
use crate::writes::service::RuleCommand;
use condition::{eval, HoldState, Seen, Truth, Value, Values};

/// One rule and where it stands.
struct Running {
    rule: Rule,
    counters: Arc<RuleCounters>,
    when: HoldState,
    clear: HoldState,
    /// Fired and not cleared yet (kept across restarts, see [`state`]).
    fired: bool,
    /// `when` holds within `min_interval` of the last firing: it fires when the interval is
    /// over if it still holds (counted once as suppressed).
    held_back: bool,
    last_fire: Option<Instant>,
    /// When a `for` of this rule completes.
    wake: Option<Instant>,
    /// Nodes whose values could not be compared, reported once each.
    mismatched: Vec<String>,
}

/// The rule engine of a line.
pub struct Engine {
    rules: Vec<Running>,
    values: HashMap<(String, String), Seen>,
    /// The rules that read each (plc, node).
    readers: HashMap<(String, String), Vec<usize>>,
    commands: Option<mpsc::UnboundedSender<RuleCommand>>,
    alerts: Option<Alerts>,
    /// Which rules are fired, on disk.
    state: state::Fired,
    pub metrics: Arc<RuleMetrics>,
}

/// The nodes each PLC's tap must watch (namespace-URI form).
pub fn watched(rules: &[Rule]) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for t in rules.iter().flat_map(Rule::nodes) {
        let nodes = out.entry(t.plc.clone()).or_default();
        if !nodes.contains(&t.node) {
            nodes.push(t.node.clone());
        }
    }
    out
}

impl Engine {
    /// The engine of `rules`; `state` keeps which rules are fired across restarts.
    pub fn new(
        rules: &[Rule],
        commands: Option<mpsc::UnboundedSender<RuleCommand>>,
        alerts: Option<Alerts>,
        state: state::Fired,
    ) -> Engine {
        let mut readers: HashMap<(String, String), Vec<usize>> = HashMap::new();
        let mut running = Vec::new();
        let mut counters = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            for t in r.nodes() {
                let e = readers.entry((t.plc.clone(), t.node.clone())).or_default();
                if !e.contains(&i) {
                    e.push(i);
                }
            }
            let c = Arc::new(RuleCounters {
                rule: r.name.clone(),
                ..Default::default()
            });
            counters.push(c.clone());
            running.push(Running {
                when: HoldState::of(&r.when),
                clear: r.clear.as_ref().map(HoldState::of).unwrap_or_default(),
                rule: r.clone(),
                counters: c,
                fired: state.is_fired(&r.name),
                held_back: false,
                last_fire: None,
                wake: None,
                mismatched: Vec::new(),
            });
        }
        Engine {
            rules: running,
            values: HashMap::new(),
            readers,
            commands,
            alerts,
            state,
            metrics: Arc::new(RuleMetrics {
                rules: counters,
                ..Default::default()
            }),
        }
    }

    /// Runs until `shutdown` or until every tap is gone.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Tapped>, shutdown: CancellationToken) {
        loop {
            let wake = self.rules.iter().filter_map(|r| r.wake).min();
            let sleep = async {
                match wake {
                    Some(w) => tokio::time::sleep_until(w.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                m = rx.recv() => match m {
                    Some(Tapped::Samples(batch, at)) => self.samples(&batch, at),
                    Some(Tapped::Down(plc)) => self.down(&plc, true),
                    Some(Tapped::Up(plc)) => self.down(&plc, false),
                    None => break,
                },
                _ = sleep => self.timers(Instant::now()),
            }
        }
    }

    /// New samples: each updates its node, then the rules reading it are evaluated (a batch
    /// with several samples of one node is evaluated after each, so no crossing is missed).
    pub fn samples(&mut self, batch: &[Sample], arrived: Instant) {
        for s in batch {
            let key = (s.item.plc.to_string(), s.item.node.to_string());
            let Some(readers) = self.readers.get(&key).cloned() else {
                continue;
            };
            let value = match &s.value {
                SampleValue::Double(x) => Value::Number(*x),
                SampleValue::Int(i) => Value::Number(*i as f64),
                SampleValue::UInt(u) => Value::Number(*u as f64),
                SampleValue::Bool(b) => Value::Bool(*b),
                SampleValue::String(t) => Value::Text(t.clone()),
                _ => Value::Other,
            };
            let good = s.status & 0xC000_0000 == 0;
            let prev = self.values.get(&key);
            let rate = match (prev, &value) {
                (Some(p), Value::Number(x)) if good && p.good => match p.value {
                    Value::Number(px) => condition::rate((p.time_us, px), (s.time_us, *x)),
                    _ => None,
                },
                _ => None,
            };
            let seen = Seen {
                value,
                good,
                time_us: s.time_us,
                rate,
                stale: false,
            };
            self.values.insert(key, seen);
            for i in readers {
                self.evaluate(i, Instant::now(), arrived);
            }
        }
    }

    /// A PLC's session is down (`down`): its values are unknown until its next samples or
    /// until the session resumes (its subscriptions then go on from where they were).
    pub fn down(&mut self, plc: &str, down: bool) {
        for ((p, _), v) in self.values.iter_mut() {
            if p == plc {
                v.stale = down;
            }
        }
        let affected: Vec<usize> = (0..self.rules.len())
            .filter(|i| self.rules[*i].rule.nodes().iter().any(|t| t.plc == plc))
            .collect();
        let now = Instant::now();
        for i in affected {
            self.evaluate(i, now, now);
        }
    }

    /// Rules whose `for` completes by `now`.
    pub fn timers(&mut self, now: Instant) {
        let due: Vec<usize> = (0..self.rules.len())
            .filter(|i| self.rules[*i].wake.is_some_and(|w| w <= now))
            .collect();
        for i in due {
            self.evaluate(i, now, now);
        }
    }

    fn evaluate(&mut self, i: usize, now: Instant, arrived: Instant) {
        let Engine { rules, values, .. } = self;
        let r = &mut rules[i];
        let mut lookup = Lookup {
            values,
            mismatched: Vec::new(),
        };
        let mut wake = None;
        let when = eval(&r.rule.when, &mut r.when, now, &mut lookup, &mut wake);
        let cleared = match &r.rule.clear {
            Some(c) => eval(c, &mut r.clear, now, &mut lookup, &mut wake) == Truth::True,
            None => when == Truth::False,
        };
        if r.held_back || (!r.fired && when == Truth::True) {
            // The end of min_interval, when this firing may go.
            if let Some(t) = r.last_fire.map(|t| t + r.rule.min_interval) {
                if t > now {
                    wake = Some(wake.map_or(t, |w: Instant| w.min(t)));
                }
            }
        }
        r.wake = wake;
        for node in lookup.mismatched {
            if !r.mismatched.contains(&node) {
                r.counters
                    .errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                warn!(rule = %r.rule.name, node = %node, "a rule node's value cannot be compared as the rule says (e.g. a text with above); the condition counts as unknown");
                r.mismatched.push(node);
            }
        }
        if r.fired {
            if cleared {
                self.clear(i, arrived);
            }
        } else if when == Truth::True {
            let early = r
                .last_fire
                .is_some_and(|t| now.saturating_duration_since(t) < r.rule.min_interval);
            if !early {
                self.fire(i, now, arrived);
            } else if !r.held_back {
                r.held_back = true;
                r.counters
                    .suppressed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                info!(rule = %r.rule.name, "rule condition holds within min_interval of the last firing: it fires when the interval is over, if it still holds");
            }
        } else {
            r.held_back = false;
        }
    }

    fn fire(&mut self, i: usize, now: Instant, arrived: Instant) {
        let r = &mut self.rules[i];
        r.clear.reset();
        r.fired = true;
        r.held_back = false;
        r.last_fire = Some(now);
        r.counters
            .firings
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        info!(rule = %r.rule.name, "rule fired");
        let (name, actions) = (r.rule.name.clone(), r.rule.on_fire.clone());
        self.state.set(&name, true);
        self.act(i, &actions, "fired", arrived);
    }

    fn clear(&mut self, i: usize, arrived: Instant) {
        let r = &mut self.rules[i];
        r.fired = false;
        r.when.reset();
        r.counters
            .clears
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        info!(rule = %r.rule.name, "rule cleared");
        let (name, actions) = (r.rule.name.clone(), r.rule.on_clear.clone());
        self.state.set(&name, false);
        self.act(i, &actions, "cleared", arrived);
    }

    fn act(&mut self, i: usize, actions: &[Action], state: &'static str, arrived: Instant) {
        let counters = self.rules[i].counters.clone();
        for a in actions {
            let cmd = match a {
                Action::Write { property, value } => RuleCommand::Write {
                    rule: counters.clone(),
                    property: property.clone(),
                    value: value.clone(),
                    since: arrived,
                },
                Action::Call { method, args } => RuleCommand::Call {
                    rule: counters.clone(),
                    method: method.clone(),
                    args: args.clone(),
                    since: arrived,
                },
                Action::Alert { message, severity } => {
                    self.alert(i, state, message, *severity);
                    continue;
                }
            };
            let sent = self.commands.as_ref().is_some_and(|c| c.send(cmd).is_ok());
            if !sent {
                counters
                    .errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                warn!(rule = %counters.rule, "the write service is not running: the rule's write or call is not done");
            }
        }
    }

    fn alert(&self, i: usize, state: &'static str, message: &str, severity: u16) {
        let r = &self.rules[i];
        let Some(alerts) = &self.alerts else {
            return;
        };
        let mut values = Vec::new();
        for t in r.rule.nodes() {
            if values.iter().any(|(n, _)| *n == t.node) {
                continue;
            }
            let v = self.values.get(&(t.plc.clone(), t.node.clone()));
            values.push((t.node.clone(), json_value(v)));
        }
        // The stream of the plc the rule reads first (`when` names at least one node).
        let plc = r
            .rule
            .nodes()
            .first()
            .map(|t| t.plc.clone())
            .unwrap_or_default();
        let a = Alert {
            rule: r.rule.name.clone(),
            plc,
            state,
            time_us: chrono::Utc::now().timestamp_micros(),
            message: message.to_owned(),
            severity,
            values,
        };
        if let Err(e) = alerts.publish(&a) {
            r.counters
                .errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            warn!(rule = %r.rule.name, error = %e, "the rule's alert could not be buffered");
        }
    }
}

/// A value as JSON text for an alert (`null` when unknown, not Good or not comparable).
fn json_value(v: Option<&Seen>) -> String {
    match v.filter(|s| s.good && !s.stale).map(|s| &s.value) {
        Some(Value::Number(x)) if x.is_finite() => format!("{x}"),
        Some(Value::Number(x)) => format!(
            "\"{}\"",
            if x.is_nan() {
                "NaN"
            } else if *x > 0.0 {
                "Infinity"
            } else {
                "-Infinity"
            }
        ),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Text(t)) => {
            let mut out = String::new();
            json_str(&mut out, t);
            out
        }
        _ => "null".to_owned(),
    }
}

/// The engine's values as evaluation reads them.
struct Lookup<'a> {
    values: &'a HashMap<(String, String), Seen>,
    mismatched: Vec<String>,
}

impl Values for Lookup<'_> {
    fn get(&self, t: &NodeTest) -> Option<&Seen> {
        self.values.get(&(t.plc.clone(), t.node.clone()))
    }

    fn mismatch(&mut self, t: &NodeTest) {
        self.mismatched.push(t.node.clone());
    }
}
