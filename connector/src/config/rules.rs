//! The validated `[[rule]]` tables: local rules that act on the line when a condition on
//! node values holds.

use std::time::Duration;

/// `[[rule]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    /// Fires when it holds.
    pub when: Condition,
    /// Clears a fired rule when it holds; `None`: when `when` is false.
    pub clear: Option<Condition>,
    /// A firing within this interval of the last one is suppressed.
    pub min_interval: Duration,
    pub on_fire: Vec<Action>,
    pub on_clear: Vec<Action>,
}

/// A test, held for `hold` before it counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub test: Test,
    pub hold: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Test {
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Node(NodeTest),
}

/// One node's value compared.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeTest {
    pub plc: String,
    /// In namespace-URI form, as samples name it (`nsu=...;s=...`).
    pub node: String,
    pub op: Op,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Above(f64),
    Below(f64),
    AtLeast(f64),
    AtMost(f64),
    Equals(Scalar),
    NotEquals(Scalar),
    Between(f64, f64),
    Outside(f64, f64),
    /// Units per second between the last two samples (source time).
    RateAbove(f64),
    RateBelow(f64),
}

/// A value compared for equality.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Number(f64),
    Bool(bool),
    Text(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// A `[[write]]` property and the value written (as a cloud write would carry it).
    Write {
        property: String,
        value: serde_json::Value,
    },
    /// A `[[method]]` by name, with its input arguments.
    Call {
        method: String,
        args: Vec<serde_json::Value>,
    },
    /// A message to the telemetry destinations.
    Alert { message: String, severity: u16 },
}

impl Condition {
    /// Every node test of the condition, in file order.
    pub fn nodes(&self) -> Vec<&NodeTest> {
        match &self.test {
            Test::Node(n) => vec![n],
            Test::All(list) | Test::Any(list) => list.iter().flat_map(|c| c.nodes()).collect(),
        }
    }
}

impl Rule {
    /// Every node either condition reads.
    pub fn nodes(&self) -> Vec<&NodeTest> {
        let mut all = self.when.nodes();
        if let Some(c) = &self.clear {
            all.extend(c.nodes());
        }
        all
    }

    /// Its actions, fire first.
    pub fn actions(&self) -> impl Iterator<Item = &Action> {
        self.on_fire.iter().chain(&self.on_clear)
    }
}
