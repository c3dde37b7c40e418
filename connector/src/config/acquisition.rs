//! What a PLC's groups and streams take beyond their values: event streams
//! (`[[plc.events]]`), history backfill (`backfill = true`) and shaped telemetry
//! (`[plc.group.telemetry]`).

use std::time::Duration;

use super::types::NodeRef;

/// `[[plc.events]]`: the events (alarms and conditions) of one source node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Events {
    pub name: String,
    /// The node whose events are taken (default the Server object, i=2253).
    pub source: NodeRef,
    /// OfType filter: these event types and their subtypes; empty: all.
    pub types: Vec<NodeRef>,
    /// Fields beyond the standard ones.
    pub fields: Vec<EventField>,
    pub publishing_interval: Duration,
    pub queue_size: u32,
}

impl Events {
    pub const DEFAULT_PUBLISHING: Duration = Duration::from_secs(1);
    pub const DEFAULT_QUEUE: u32 = 1000;
}

/// One more event field: a browse path from the event type that declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventField {
    /// As written (`ActiveState/Id`): the key of its value in `fields_json`.
    pub text: String,
    pub type_id: NodeRef,
    /// Browse names, each (namespace URI, name); no URI = namespace 0.
    pub path: Vec<(Option<String>, String)>,
}

/// `backfill = true` with `backfill_max` and `backfill_rate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackfillConfig {
    /// The longest outage filled (its most recent part).
    pub max: Duration,
    /// Values per second read from history at most.
    pub rate: u32,
}

impl BackfillConfig {
    pub const DEFAULT_MAX: Duration = Duration::from_secs(3600);
    pub const DEFAULT_RATE: u32 = 10_000;
}

/// `[plc.group.telemetry]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shaping {
    pub window: Duration,
    /// In the order of [`Shaping::AGGREGATES`].
    pub aggregates: Vec<&'static str>,
    pub mqtt: bool,
    pub hub: bool,
}

impl Shaping {
    pub const AGGREGATES: [&'static str; 8] =
        ["count", "sum", "min", "max", "mean", "twa", "first", "last"];
}

/// Report by exception (`[plc.group.telemetry]` deadbands and intervals, or a node's
/// `telemetry = { ... }`): which samples of a node go to the telemetry destinations.
#[derive(Debug, Clone, PartialEq)]
pub struct Exception {
    /// A numeric sample goes when it differs from the last one sent by more than this.
    pub deadband_absolute: Option<f64>,
    /// ... or by more than this percentage of the last one's magnitude.
    pub deadband_percent: Option<f64>,
    /// At most one sample per node and interval; the newest goes at its end.
    pub min_interval: Duration,
    /// The last value goes again after this long without a sample sent (heartbeat).
    pub max_interval: Option<Duration>,
    pub mqtt: bool,
    pub hub: bool,
}
