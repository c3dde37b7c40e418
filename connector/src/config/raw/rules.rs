//! The raw `[[rule]]` tables (local rules) and the keys of report by exception, as written.

use schemars::JsonSchema;
use serde::Deserialize;

use super::{RawDuration, Spanned};
use crate::config::schema::{AnyValue, ConditionList};

/// `[[rule]]`: a local rule: when a condition on node values holds, act on the line (write,
/// call, alert) without the cloud.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Rule name (letters, digits, `_ . -`), unique; in audit records, alerts and metrics;
    /// required.
    #[schemars(required)]
    pub name: Option<Spanned<String>>,
    /// The plc whose nodes the conditions name by default; default the line's only plc.
    pub plc: Option<Spanned<String>>,
    /// When the rule fires: a condition on node values; required.
    #[schemars(required)]
    pub when: Option<Spanned<RawCondition>>,
    /// When a fired rule is cleared (hysteresis): default when `when` no longer holds.
    pub clear: Option<Spanned<RawCondition>>,
    /// No second firing within this interval of the last one (it is counted as suppressed);
    /// default "0s".
    pub min_interval: Option<Spanned<RawDuration>>,
    /// What the rule does when it fires: { write, value }, { call, args }, { alert, severity };
    /// at least one action in on_fire or on_clear.
    pub on_fire: Option<Spanned<Vec<Spanned<RawAction>>>>,
    /// What the rule does when it clears (same actions as on_fire); default nothing.
    pub on_clear: Option<Spanned<Vec<Spanned<RawAction>>>>,
}

/// A condition: one node compared (`node` with one test), or `all` / `any` of conditions;
/// `for` makes it hold only after it was true that long.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCondition {
    /// Node id of a node listed in a group of the plc (nsu= form), e.g.
    /// "nsu=urn:opcua-connector:bottling-line;s=Filler.ProductTemperature".
    pub node: Option<Spanned<String>>,
    /// The plc of `node`; default the rule's.
    pub plc: Option<Spanned<String>>,
    /// True while the value is greater than this number.
    pub above: Option<Spanned<f64>>,
    /// True while the value is less than this number.
    pub below: Option<Spanned<f64>>,
    /// True while the value is greater than or equal to this number.
    pub at_least: Option<Spanned<f64>>,
    /// True while the value is less than or equal to this number.
    pub at_most: Option<Spanned<f64>>,
    /// True while the value equals this number, boolean or text.
    #[schemars(with = "Option<AnyValue>")]
    pub equals: Option<Spanned<toml::Value>>,
    /// True while the value differs from this number, boolean or text.
    #[schemars(with = "Option<AnyValue>")]
    pub not_equals: Option<Spanned<toml::Value>>,
    /// True while low <= value <= high: [low, high].
    pub between: Option<Spanned<Vec<f64>>>,
    /// True while value < low or value > high: [low, high].
    pub outside: Option<Spanned<Vec<f64>>>,
    /// True while the value rises faster than this many units per second (between the last
    /// two samples, on source time).
    pub rate_above: Option<Spanned<f64>>,
    /// True while the value changes by less than this many units per second (negative:
    /// falls faster than).
    pub rate_below: Option<Spanned<f64>>,
    /// True while every condition of the list is.
    #[schemars(with = "Option<ConditionList>")]
    pub all: Option<Spanned<Vec<Spanned<RawCondition>>>>,
    /// True while one condition of the list is.
    #[schemars(with = "Option<ConditionList>")]
    pub any: Option<Spanned<Vec<Spanned<RawCondition>>>>,
    /// Holds only once true for this long without a break, e.g. "5s"; default "0s".
    #[serde(rename = "for")]
    pub hold: Option<Spanned<RawDuration>>,
}

/// One action of a rule: exactly one of write, call, alert.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAction {
    /// The property of a [[write]] to write `value` to (its type, min, max, readback apply).
    pub write: Option<Spanned<String>>,
    /// The value written (with `write`).
    #[schemars(with = "Option<AnyValue>")]
    pub value: Option<Spanned<toml::Value>>,
    /// The name of a [[method]] to call with `args`.
    pub call: Option<Spanned<String>>,
    /// The method's input arguments, in order (with `call`); default none.
    #[schemars(with = "Option<Vec<AnyValue>>")]
    pub args: Option<Spanned<Vec<toml::Value>>>,
    /// An alert message sent to the telemetry destinations (IoT Hub: messageType=alert).
    pub alert: Option<Spanned<String>>,
    /// The alert's severity, 1..=1000 (OPC UA's scale); default 500.
    #[schemars(range(min = 1, max = 1000))]
    pub severity: Option<Spanned<i64>>,
}

/// Report by exception of a node (`telemetry = { ... }` in a node table): overrides the
/// group's keys of the same name.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawNodeTelemetry {
    /// Send a numeric sample only when it differs from the last one sent by more than this.
    pub deadband_absolute: Option<Spanned<f64>>,
    /// Send a numeric sample only when it differs from the last one sent by more than this
    /// percentage of the last one's magnitude.
    pub deadband_percent: Option<Spanned<f64>>,
    /// At most one sample of the node per this interval (the newest is sent at its end).
    pub min_interval: Option<Spanned<RawDuration>>,
    /// Send the last value again when nothing was sent for this long (heartbeat).
    pub max_interval: Option<Spanned<RawDuration>>,
}
