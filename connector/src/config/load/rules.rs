//! `[[rule]]`: local rules. Every node a condition reads is listed in a group of its plc,
//! every action names a `[[write]]` property (with a value it accepts), a `[[method]]` or an
//! alert with a telemetry destination; one rule owns each property it writes.

use std::collections::HashMap;

use base64::Engine as _;

use super::{optional, Check, Span};
use crate::config::raw::{RawAction, RawCondition, RawRule, Spanned};
use crate::config::types::*;

/// Conditions nest at most this deep (`all` in `any` in `all` ...).
const MAX_DEPTH: usize = 8;

/// What the rules are checked against.
pub(super) struct Known<'a> {
    pub plcs: Vec<KnownPlc>,
    pub writes: &'a [WriteMapping],
    pub methods: &'a [MethodMapping],
    /// A broker or hub is configured (alerts go there).
    pub telemetry: bool,
}

/// A plc as the file lists it.
pub(super) struct KnownPlc {
    pub id: String,
    /// The nodes listed in its groups, and whether each is flattened (a structure).
    pub nodes: Vec<(NodeRef, bool)>,
    pub groups: Vec<String>,
}

impl Check<'_> {
    pub(super) fn rules(
        &mut self,
        raw: &[Spanned<RawRule>],
        known: &Known<'_>,
    ) -> Vec<Option<Rule>> {
        let mut names: Vec<(String, usize)> = Vec::new();
        // Which rule writes each property (one rule owns a property).
        let mut owners: HashMap<String, String> = HashMap::new();
        let mut out = Vec::new();
        for (i, r) in raw.iter().enumerate() {
            let key = format!("rule[{i}]");
            let span = Some(r.span());
            let r = r.get_ref();
            let name = self
                .required(&r.name, span.clone(), &format!("{key}.name"))
                .and_then(|n| {
                    let v = self.name(n, &format!("{key}.name"))?;
                    if let Some((_, first)) = names.iter().find(|(seen, _)| *seen == v) {
                        let message = format!("duplicate rule name {v:?} (also rule[{first}])");
                        self.at(n, &format!("{key}.name"), message);
                        return None;
                    }
                    names.push((v.clone(), i));
                    Some(v)
                });
            let plc = match &r.plc {
                Some(p) => self.rule_plc(p, &format!("{key}.plc"), known),
                None if known.plcs.len() == 1 => Some(known.plcs[0].id.clone()),
                None => {
                    let message = "the line has several plcs: say which one the conditions read (plc = \"...\"), or give plc in each condition";
                    self.problem(span.clone(), &format!("{key}.plc"), message);
                    None
                }
            };
            let when = self
                .required(&r.when, span.clone(), &format!("{key}.when"))
                .and_then(|w| self.condition(w, plc.as_deref(), &format!("{key}.when"), known, 0));
            let clear = optional(
                r.clear
                    .as_ref()
                    .map(|c| self.condition(c, plc.as_deref(), &format!("{key}.clear"), known, 0)),
            );
            let min_interval = match &r.min_interval {
                None => Some(std::time::Duration::ZERO),
                Some(d) => self.duration(d, &format!("{key}.min_interval")),
            };
            let mut owner = Owner {
                owners: &mut owners,
                rule: name.clone().unwrap_or_default(),
            };
            let on_fire = self.actions(
                r.on_fire.as_ref(),
                &format!("{key}.on_fire"),
                known,
                &mut owner,
            );
            let on_clear = self.actions(
                r.on_clear.as_ref(),
                &format!("{key}.on_clear"),
                known,
                &mut owner,
            );
            let empty = |a: &Option<Vec<Action>>| a.as_ref().is_some_and(Vec::is_empty);
            if empty(&on_fire) && empty(&on_clear) {
                let span = r.on_fire.as_ref().map(|a| a.span()).or(span);
                self.problem(
                    span,
                    &format!("{key}.on_fire"),
                    "the rule does nothing: give on_fire (or on_clear) at least one action",
                );
            }
            out.push((|| {
                Some(Rule {
                    name: name?,
                    when: when?,
                    clear: clear?,
                    min_interval: min_interval?,
                    on_fire: on_fire?,
                    on_clear: on_clear?,
                })
            })());
        }
        out
    }

    fn rule_plc(&mut self, p: &Spanned<String>, key: &str, known: &Known<'_>) -> Option<String> {
        if known.plcs.iter().any(|k| k.id == *p.get_ref()) {
            return Some(p.get_ref().clone());
        }
        let ids: Vec<&str> = known.plcs.iter().map(|k| k.id.as_str()).collect();
        let message = format!(
            "no plc {:?} in this file (plcs: {})",
            p.get_ref(),
            ids.join(", ")
        );
        self.at(p, key, message);
        None
    }

    fn condition(
        &mut self,
        raw: &Spanned<RawCondition>,
        plc: Option<&str>,
        key: &str,
        known: &Known<'_>,
        depth: usize,
    ) -> Option<Condition> {
        let span = Some(raw.span());
        let c = raw.get_ref();
        let hold = match &c.hold {
            None => Some(std::time::Duration::ZERO),
            Some(d) => self.duration(d, &format!("{key}.for")),
        };
        let lists = [("all", &c.all), ("any", &c.any)];
        let given: Vec<&str> = lists
            .iter()
            .filter(|(_, l)| l.is_some())
            .map(|(k, _)| *k)
            .collect();
        let ops = ops_given(c);
        if !given.is_empty() {
            if given.len() > 1 || c.node.is_some() || !ops.is_empty() {
                self.problem(span, key, "give one of: all, any, or node with one test");
                return None;
            }
            if depth >= MAX_DEPTH {
                self.problem(
                    span,
                    key,
                    format!("conditions nest at most {MAX_DEPTH} deep"),
                );
                return None;
            }
            let (kind, list) = if let Some(l) = &c.all {
                ("all", l)
            } else {
                ("any", c.any.as_ref()?)
            };
            if list.get_ref().is_empty() {
                self.at(
                    list,
                    &format!("{key}.{kind}"),
                    "empty: give at least one condition",
                );
                return None;
            }
            let inner: Vec<Option<Condition>> = list
                .get_ref()
                .iter()
                .enumerate()
                .map(|(i, sub)| {
                    self.condition(sub, plc, &format!("{key}.{kind}[{i}]"), known, depth + 1)
                })
                .collect();
            let inner: Vec<Condition> = inner.into_iter().collect::<Option<_>>()?;
            let test = if kind == "all" {
                Test::All(inner)
            } else {
                Test::Any(inner)
            };
            return Some(Condition { test, hold: hold? });
        }
        let node = self.required(&c.node, span.clone(), &format!("{key}.node"));
        let plc = match &c.plc {
            Some(p) => self.rule_plc(p, &format!("{key}.plc"), known),
            None => plc.map(str::to_owned),
        };
        let node = node
            .zip(plc.as_ref())
            .and_then(|(n, plc)| self.rule_node(n, plc, &format!("{key}.node"), known));
        let op = match ops.as_slice() {
            [] => {
                self.problem(span, key, "no test: give one of above, below, at_least, at_most, equals, not_equals, between, outside, rate_above, rate_below");
                None
            }
            [one] => self.op(c, one, key),
            [_, second, ..] => {
                let message = format!(
                    "one test per condition (also {second}): combine tests with all = [...]"
                );
                self.problem(span, key, message);
                None
            }
        };
        Some(Condition {
            test: Test::Node(NodeTest {
                plc: plc?,
                node: node?,
                op: op?,
            }),
            hold: hold?,
        })
    }

    /// A condition's node: listed in a group of `plc`, written in the form samples carry.
    fn rule_node(
        &mut self,
        n: &Spanned<String>,
        plc: &str,
        key: &str,
        known: &Known<'_>,
    ) -> Option<String> {
        let node = self.node(n, key)?;
        if let Some(message) = sample_form(&node) {
            self.at(n, key, message);
            return None;
        }
        let listed = known
            .plcs
            .iter()
            .find(|k| k.id == plc)
            .and_then(|k| k.nodes.iter().find(|(listed, _)| *listed == node));
        match listed {
            None => {
                let message = format!("node {} is not listed in a group of plc {plc:?}: a rule reads the nodes the plc's groups subscribe (nodes = [...])", n.get_ref());
                self.at(n, key, message);
                None
            }
            Some((_, true)) => {
                let message = "the node is a structure with flatten: a rule compares a node's own value (list a scalar node)";
                self.at(n, key, message);
                None
            }
            Some((_, false)) => Some(node.to_string()),
        }
    }

    fn op(&mut self, c: &RawCondition, which: &str, key: &str) -> Option<Op> {
        let k = format!("{key}.{which}");
        let number = |v: &Option<Spanned<f64>>| v.as_ref().map(|v| *v.get_ref());
        let finite = |check: &mut Self, v: &Option<Spanned<f64>>| {
            let s = v.as_ref()?;
            if s.get_ref().is_finite() {
                Some(*s.get_ref())
            } else {
                check.at(s, &k, "must be a finite number");
                None
            }
        };
        match which {
            "above" => finite(self, &c.above).map(Op::Above),
            "below" => finite(self, &c.below).map(Op::Below),
            "at_least" => finite(self, &c.at_least).map(Op::AtLeast),
            "at_most" => finite(self, &c.at_most).map(Op::AtMost),
            "rate_above" => finite(self, &c.rate_above).map(Op::RateAbove),
            "rate_below" => finite(self, &c.rate_below).map(Op::RateBelow),
            "equals" => self.scalar(c.equals.as_ref()?, &k).map(Op::Equals),
            "not_equals" => self.scalar(c.not_equals.as_ref()?, &k).map(Op::NotEquals),
            "between" | "outside" => {
                let v = if which == "between" {
                    c.between.as_ref()?
                } else {
                    c.outside.as_ref()?
                };
                match v.get_ref().as_slice() {
                    [lo, hi] if lo.is_finite() && hi.is_finite() && lo <= hi => {
                        Some(if which == "between" {
                            Op::Between(*lo, *hi)
                        } else {
                            Op::Outside(*lo, *hi)
                        })
                    }
                    _ => {
                        self.at(v, &k, "must be [low, high] with low <= high");
                        None
                    }
                }
            }
            _ => {
                let _ = number(&c.above);
                None
            }
        }
    }

    fn scalar(&mut self, v: &Spanned<toml::Value>, key: &str) -> Option<Scalar> {
        match v.get_ref() {
            toml::Value::Integer(n) => Some(Scalar::Number(*n as f64)),
            toml::Value::Float(x) if x.is_finite() => Some(Scalar::Number(*x)),
            toml::Value::Boolean(b) => Some(Scalar::Bool(*b)),
            toml::Value::String(s) => Some(Scalar::Text(s.clone())),
            _ => {
                self.at(v, key, "compare with a number, a boolean or a text");
                None
            }
        }
    }

    fn actions(
        &mut self,
        raw: Option<&Spanned<Vec<Spanned<RawAction>>>>,
        key: &str,
        known: &Known<'_>,
        owner: &mut Owner<'_>,
    ) -> Option<Vec<Action>> {
        let Some(raw) = raw else {
            return Some(Vec::new());
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (i, a) in raw.get_ref().iter().enumerate() {
            let akey = format!("{key}[{i}]");
            match self.action(a, &akey, known, owner) {
                Some(action) => {
                    let same_target = out.iter().any(|o: &Action| match (o, &action) {
                        (Action::Write { property: a, .. }, Action::Write { property: b, .. }) => {
                            a == b
                        }
                        (Action::Call { method: a, .. }, Action::Call { method: b, .. }) => a == b,
                        (Action::Alert { .. }, Action::Alert { .. }) => true,
                        _ => false,
                    });
                    if same_target {
                        self.at(a, &akey, "conflicting actions: this list already writes this property, calls this method or sends an alert");
                        ok = false;
                    }
                    out.push(action);
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn action(
        &mut self,
        a: &Spanned<RawAction>,
        key: &str,
        known: &Known<'_>,
        owner: &mut Owner<'_>,
    ) -> Option<Action> {
        let span: Span = Some(a.span());
        let r = a.get_ref();
        let kinds = [r.write.is_some(), r.call.is_some(), r.alert.is_some()];
        if kinds.iter().filter(|k| **k).count() != 1 {
            self.problem(
                span,
                key,
                "give exactly one of write (with value), call (with args) or alert (with severity)",
            );
            return None;
        }
        let stray = |check: &mut Self, present: bool, name: &str, with: &str| {
            if present {
                check.problem(
                    span.clone(),
                    &format!("{key}.{name}"),
                    format!("{name} goes with {with} only"),
                );
            }
            !present
        };
        if let Some(p) = &r.write {
            let fine = stray(self, r.args.is_some(), "args", "call")
                & stray(self, r.severity.is_some(), "severity", "alert");
            let value = self.required(&r.value, span.clone(), &format!("{key}.value"));
            let Some(mapping) = known.writes.iter().find(|w| &w.property == p.get_ref()) else {
                let message = format!("no [[write]] property {:?}: a rule writes through the allow-list like the cloud", p.get_ref());
                self.at(p, &format!("{key}.write"), message);
                return None;
            };
            let owned = owner.claim(self, &mapping.property, p, &format!("{key}.write"));
            let value =
                value.and_then(|v| self.write_value(v, mapping, &format!("{key}.value")))?;
            return (fine && owned).then(|| Action::Write {
                property: mapping.property.clone(),
                value,
            });
        }
        if let Some(m) = &r.call {
            let fine = stray(self, r.value.is_some(), "value", "write")
                & stray(self, r.severity.is_some(), "severity", "alert");
            if !known.methods.iter().any(|x| &x.name == m.get_ref()) {
                let message = format!("no [[method]] {:?}", m.get_ref());
                self.at(m, &format!("{key}.call"), message);
                return None;
            }
            let args: Vec<serde_json::Value> = match &r.args {
                None => Vec::new(),
                Some(list) => list
                    .get_ref()
                    .iter()
                    .map(json)
                    .collect::<Option<_>>()
                    .or_else(|| {
                        self.at(
                            list,
                            &format!("{key}.args"),
                            "arguments are numbers, booleans, texts, arrays or tables",
                        );
                        None
                    })?,
            };
            return fine.then(|| Action::Call {
                method: m.get_ref().clone(),
                args,
            });
        }
        let text = r.alert.as_ref()?;
        let fine = stray(self, r.value.is_some(), "value", "write")
            & stray(self, r.args.is_some(), "args", "call");
        if !known.telemetry {
            self.at(
                text,
                &format!("{key}.alert"),
                "an alert goes to the telemetry destinations: configure [sink.mqtt] or [hub]",
            );
            return None;
        }
        if let Some(k) = known
            .plcs
            .iter()
            .find(|k| k.groups.iter().any(|g| g == ALERTS_GROUP))
        {
            let message = format!("plc {:?} has a group named {ALERTS_GROUP:?}: alerts are sent as group {ALERTS_GROUP:?}; rename the group", k.id);
            self.at(text, &format!("{key}.alert"), message);
            return None;
        }
        let message = self.non_empty(text, &format!("{key}.alert"))?;
        let severity = match &r.severity {
            None => Some(500),
            Some(s) => match u16::try_from(*s.get_ref()) {
                Ok(n) if (1..=1000).contains(&n) => Some(n),
                _ => {
                    self.at(s, &format!("{key}.severity"), "severity must be 1..=1000");
                    None
                }
            },
        };
        fine.then_some(Action::Alert {
            message,
            severity: severity?,
        })
    }

    /// A rule's value for `mapping`: of its type and within its limits (the write service
    /// checks it again, as it does a cloud value).
    fn write_value(
        &mut self,
        v: &Spanned<toml::Value>,
        mapping: &WriteMapping,
        key: &str,
    ) -> Option<serde_json::Value> {
        let Some(value) = json(v.get_ref()) else {
            self.at(v, key, "not a value a write takes");
            return None;
        };
        let t = mapping.write_type;
        let whole = |x: f64| x.fract() == 0.0;
        let fits = match t {
            WriteType::Boolean => value.is_boolean(),
            WriteType::String | WriteType::LocalizedText => value.is_string(),
            WriteType::ByteString => value
                .as_str()
                .is_some_and(|b| base64::engine::general_purpose::STANDARD.decode(b).is_ok()),
            WriteType::Float | WriteType::Double => value.as_f64().is_some_and(f64::is_finite),
            _ => value.as_f64().is_some_and(whole),
        };
        if !fits {
            let message = format!(
                "property {:?} is written as {}: {} does not fit",
                mapping.property,
                t.name(),
                v.get_ref()
            );
            self.at(v, key, message);
            return None;
        }
        if let Some(x) = value.as_f64() {
            let (lo, hi) = t.numeric_range().unwrap_or((f64::MIN, f64::MAX));
            if x < lo || x > hi {
                let message = format!("{x} is not a {} ({lo} ..= {hi})", t.name());
                self.at(v, key, message);
                return None;
            }
            let low = mapping.min.is_some_and(|m| x < m);
            let high = mapping.max.is_some_and(|m| x > m);
            if low || high {
                let message = format!(
                    "{x} is outside the [[write]]'s limits [{}, {}]",
                    mapping.min.map_or("-".into(), |m| m.to_string()),
                    mapping.max.map_or("-".into(), |m| m.to_string())
                );
                self.at(v, key, message);
                return None;
            }
        }
        Some(value)
    }
}

/// Which rule writes each property (one rule owns a property), and the rule being checked.
struct Owner<'a> {
    owners: &'a mut HashMap<String, String>,
    rule: String,
}

impl Owner<'_> {
    /// Claims `property` for the rule; false (reported) when another rule owns it.
    fn claim(
        &mut self,
        check: &mut Check<'_>,
        property: &str,
        at: &Spanned<String>,
        key: &str,
    ) -> bool {
        match self.owners.get(property) {
            Some(other) if *other != self.rule => {
                let message = format!("property {property:?} is written by rule {other:?} too: one rule owns a property (rules writing it at once would fight)");
                check.at(at, key, message);
                false
            }
            _ => {
                self.owners.insert(property.to_owned(), self.rule.clone());
                true
            }
        }
    }
}

/// Why `node` is not in the form samples name nodes by (`nsu=<uri>;...`, or `i=...` of
/// namespace 0), if it is not.
pub(super) fn sample_form(node: &NodeRef) -> Option<&'static str> {
    match node {
        NodeRef::Index { namespace, .. } if *namespace != 0 => {
            Some("name the node in the nsu= form (nsu=<namespace uri>;...), as samples carry it")
        }
        NodeRef::Uri { namespace_uri, .. } if namespace_uri == OPC_UA_NAMESPACE => {
            Some("a node of namespace 0 is named without nsu= (e.g. i=2258), as samples carry it")
        }
        _ => None,
    }
}

/// The namespace URI of namespace 0.
const OPC_UA_NAMESPACE: &str = "http://opcfoundation.org/UA/";

/// The group the alerts of a plc are sent as (the telemetry's `ALERTS_GROUP`).
const ALERTS_GROUP: &str = "alerts";

/// The tests a condition gives, in a fixed order.
fn ops_given(c: &RawCondition) -> Vec<&'static str> {
    [
        ("above", c.above.is_some()),
        ("below", c.below.is_some()),
        ("at_least", c.at_least.is_some()),
        ("at_most", c.at_most.is_some()),
        ("equals", c.equals.is_some()),
        ("not_equals", c.not_equals.is_some()),
        ("between", c.between.is_some()),
        ("outside", c.outside.is_some()),
        ("rate_above", c.rate_above.is_some()),
        ("rate_below", c.rate_below.is_some()),
    ]
    .into_iter()
    .filter(|(_, given)| *given)
    .map(|(k, _)| k)
    .collect()
}

/// A TOML value as JSON (dates are not values a rule writes).
fn json(v: &toml::Value) -> Option<serde_json::Value> {
    Some(match v {
        toml::Value::String(s) => serde_json::Value::from(s.clone()),
        toml::Value::Integer(n) => serde_json::Value::from(*n),
        toml::Value::Float(x) => serde_json::Number::from_f64(*x).map(serde_json::Value::Number)?,
        toml::Value::Boolean(b) => serde_json::Value::from(*b),
        toml::Value::Array(a) => {
            serde_json::Value::Array(a.iter().map(json).collect::<Option<_>>()?)
        }
        toml::Value::Table(t) => serde_json::Value::Object(
            t.iter()
                .map(|(k, v)| Some((k.clone(), json(v)?)))
                .collect::<Option<_>>()?,
        ),
        toml::Value::Datetime(_) => return None,
    })
}
