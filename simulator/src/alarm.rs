//! The bottling line's alarm `Filler.TemperatureHigh` (an AlarmConditionType condition whose
//! source is `Filler`): active while `Filler.ProductTemperature` > `Filler.TemperatureLimit`,
//! evaluated at each update of either. Every state change (activation, clear, acknowledgement)
//! is one event; [`ConditionEvent`] answers the standard select clauses itself (async-opcua's
//! generated condition structs give the `Comment`, `LastSeverity` and `Quality` values as
//! ExtensionObjects and `ConditionId` as null), and [`register_select_paths`] lets the server's
//! filter validation accept inherited fields and `ConditionId`.
//!
//! The state outlives server restarts (it lives in the runtime's services); events emitted
//! while the endpoint is down reach nobody, ConditionRefresh reports the state again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, RwLock};

use opcua::nodes::{DefaultTypeTree, Event, TypeTree};
use opcua::server::SubscriptionCache;
use opcua::types::{
    AttributeId, ByteString, DateTime, EventField, LocalizedText, NodeClass, NodeId, NumericRange,
    ObjectId, ObjectTypeId, QualifiedName, StatusCode, Variant,
};

use crate::model::Model;

/// Node ids (string identifiers in the bottling-line namespace) the alarm is made of.
pub const CONDITION: &str = "Filler.TemperatureHigh";
pub const SOURCE: &str = "Filler";
pub const TEMPERATURE: &str = "Filler.ProductTemperature";
pub const LIMIT: &str = "Filler.TemperatureLimit";
/// ConditionName of the alarm and Severity of its events.
pub const NAME: &str = "TemperatureHigh";
pub const SEVERITY: u16 = 700;
pub const MSG_ACTIVE: &str = "Filler product temperature above limit";
pub const MSG_CLEARED: &str = "Filler product temperature back within limit";

/// The node ids of the condition and its source in the current server.
#[derive(Debug, Clone)]
pub struct AlarmIds {
    pub condition: NodeId,
    pub source: NodeId,
}

#[derive(Debug, Clone)]
struct State {
    active: bool,
    acked: bool,
    retain: bool,
    comment: LocalizedText,
    client_user_id: String,
    /// The latest event of the condition (what ConditionRefresh sends again, and whose
    /// EventId Acknowledge must name).
    last: Option<ConditionEvent>,
}

/// The alarm: its variables, its ids in the current server, its state.
#[derive(Debug)]
pub struct Alarm {
    /// Model indexes of the temperature and the limit.
    vars: OnceLock<(usize, usize)>,
    ids: RwLock<Option<AlarmIds>>,
    state: Mutex<State>,
    seq: AtomicU64,
}

impl Default for Alarm {
    fn default() -> Self {
        Alarm {
            vars: OnceLock::new(),
            ids: RwLock::new(None),
            state: Mutex::new(State {
                active: false,
                acked: true,
                retain: false,
                comment: LocalizedText::null(),
                client_user_id: String::new(),
                last: None,
            }),
            seq: AtomicU64::new(1),
        }
    }
}

impl Alarm {
    /// Binds the model's temperature and limit variables.
    pub fn bind_vars(&self, temperature: usize, limit: usize) {
        let _ = self.vars.set((temperature, limit));
    }

    /// The condition's ids in the server now live (`None`: the nodeset has no condition).
    pub fn set_ids(&self, ids: Option<AlarmIds>) {
        *self.ids.write().unwrap_or_else(|e| e.into_inner()) = ids;
    }

    pub fn ids(&self) -> Option<AlarmIds> {
        self.ids.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Does an update of model variable `idx` call for an evaluation?
    pub fn watches(&self, idx: usize) -> bool {
        self.vars.get().is_some_and(|&(t, l)| idx == t || idx == l)
    }

    pub fn is_condition(&self, id: &NodeId) -> bool {
        self.ids().is_some_and(|i| &i.condition == id)
    }

    /// Evaluates the alarm against the model's current values; returns the event of a state
    /// change.
    pub fn evaluate(&self, model: &Model) -> Option<ConditionEvent> {
        let &(t, l) = self.vars.get()?;
        let temperature = model.vars.get(t)?.value.as_f64()?;
        let limit = model.vars.get(l)?.value.as_f64()?;
        let ids = self.ids()?;
        let active = temperature > limit;
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if active == s.active {
            return None;
        }
        s.active = active;
        let message = if active {
            s.acked = false;
            s.comment = LocalizedText::null();
            s.client_user_id = String::new();
            MSG_ACTIVE
        } else {
            MSG_CLEARED
        };
        s.retain = s.active || !s.acked;
        Some(self.event(&mut s, &ids, message))
    }

    /// Acknowledges the condition's latest event `event_id` with `comment` by `user`.
    pub fn acknowledge(
        &self,
        event_id: &ByteString,
        comment: &LocalizedText,
        user: &str,
    ) -> Result<ConditionEvent, StatusCode> {
        let ids = self.ids().ok_or(StatusCode::BadNodeIdUnknown)?;
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.last.as_ref().is_none_or(|e| &e.event_id != event_id) {
            return Err(StatusCode::BadEventIdUnknown);
        }
        if s.acked {
            return Err(StatusCode::BadConditionBranchAlreadyAcked);
        }
        s.acked = true;
        s.retain = s.active;
        s.comment = comment.clone();
        s.client_user_id = user.to_owned();
        let message = format!("Acknowledged: {}", comment.text);
        Ok(self.event(&mut s, &ids, &message))
    }

    /// The latest event of the condition if it is retained (for ConditionRefresh).
    pub fn retained(&self) -> Option<ConditionEvent> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.last.clone().filter(|_| s.retain)
    }

    fn event(&self, s: &mut State, ids: &AlarmIds, message: &str) -> ConditionEvent {
        let now = DateTime::now();
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut id = seq.to_be_bytes().to_vec();
        id.extend_from_slice(&now.ticks().to_be_bytes());
        let e = ConditionEvent {
            event_id: ByteString::from(id),
            event_type: ObjectTypeId::AlarmConditionType.into(),
            source_node: ids.source.clone(),
            source_name: SOURCE.into(),
            time: now,
            message: LocalizedText::new("en", message),
            severity: SEVERITY,
            condition: Some(ConditionFields {
                condition_id: ids.condition.clone(),
                retain: s.retain,
                active: s.active,
                acked: s.acked,
                comment: s.comment.clone(),
                client_user_id: s.client_user_id.clone(),
            }),
        };
        s.last = Some(e.clone());
        e
    }
}

/// RefreshStartEvent / RefreshEndEvent of a ConditionRefresh (source: the Server object).
pub fn refresh_event(start: bool) -> ConditionEvent {
    let now = DateTime::now();
    let (ty, text) = if start {
        (
            ObjectTypeId::RefreshStartEventType,
            "ConditionRefresh started",
        )
    } else {
        (
            ObjectTypeId::RefreshEndEventType,
            "ConditionRefresh finished",
        )
    };
    let mut id = b"refresh-".to_vec();
    id.extend_from_slice(&now.ticks().to_be_bytes());
    id.push(u8::from(start));
    ConditionEvent {
        event_id: ByteString::from(id),
        event_type: ty.into(),
        source_node: ObjectId::Server.into(),
        source_name: "Server".into(),
        time: now,
        message: LocalizedText::new("en", text),
        severity: 1,
        condition: None,
    }
}

/// Sends `event` to the event monitored items of its source node and of the Server object.
pub fn emit(subscriptions: &SubscriptionCache, event: &ConditionEvent) {
    let source = event.source_node.clone();
    subscriptions.notify_events([(event as &dyn Event, &source)].into_iter());
}

#[derive(Debug, Clone)]
struct ConditionFields {
    condition_id: NodeId,
    retain: bool,
    active: bool,
    acked: bool,
    comment: LocalizedText,
    client_user_id: String,
}

/// One event of the alarm (or of a ConditionRefresh), answering select clauses by browse path.
#[derive(Debug, Clone)]
pub struct ConditionEvent {
    pub event_id: ByteString,
    pub event_type: NodeId,
    pub source_node: NodeId,
    pub source_name: String,
    pub time: DateTime,
    pub message: LocalizedText,
    pub severity: u16,
    condition: Option<ConditionFields>,
}

fn text(s: &str) -> Variant {
    Variant::from(LocalizedText::new("en", s))
}

impl ConditionEvent {
    fn field(&self, attribute_id: AttributeId, path: &[QualifiedName]) -> Variant {
        let names: Vec<&str> = path.iter().map(|q| q.name.as_ref()).collect();
        let c = self.condition.as_ref();
        if names.is_empty() {
            // ConditionId: the condition's NodeId (ConditionType, empty path, NodeId attribute)
            return match (attribute_id, c) {
                (AttributeId::NodeId, Some(c)) => Variant::from(c.condition_id.clone()),
                _ => Variant::Empty,
            };
        }
        if attribute_id != AttributeId::Value {
            return Variant::Empty;
        }
        match names.as_slice() {
            ["EventId"] => Variant::from(self.event_id.clone()),
            ["EventType"] => Variant::from(self.event_type.clone()),
            ["SourceNode"] => Variant::from(self.source_node.clone()),
            ["SourceName"] => Variant::from(self.source_name.clone()),
            ["Time"] | ["ReceiveTime"] => Variant::from(self.time),
            ["Message"] => Variant::from(self.message.clone()),
            ["Severity"] => Variant::UInt16(self.severity),
            _ => c.map_or(Variant::Empty, |c| c.field(&names)),
        }
    }
}

impl ConditionFields {
    fn field(&self, names: &[&str]) -> Variant {
        match names {
            ["ConditionName"] => Variant::from(NAME),
            ["ConditionClassId"] => {
                Variant::from(NodeId::from(ObjectTypeId::ProcessConditionClassType))
            }
            ["ConditionClassName"] => text("Process"),
            ["BranchId"] => Variant::from(NodeId::null()),
            ["Retain"] => Variant::Boolean(self.retain),
            ["EnabledState"] => text("Enabled"),
            ["EnabledState", "Id"] | ["ConfirmedState", "Id"] => Variant::Boolean(true),
            ["ConfirmedState"] => text("Confirmed"),
            ["ActiveState"] => text(if self.active { "Active" } else { "Inactive" }),
            ["ActiveState", "Id"] => Variant::Boolean(self.active),
            ["AckedState"] => text(if self.acked {
                "Acknowledged"
            } else {
                "Unacknowledged"
            }),
            ["AckedState", "Id"] => Variant::Boolean(self.acked),
            ["Quality"] => Variant::StatusCode(StatusCode::Good),
            ["LastSeverity"] => Variant::UInt16(SEVERITY),
            ["Comment"] => Variant::from(self.comment.clone()),
            ["ClientUserId"] => Variant::from(self.client_user_id.clone()),
            _ => Variant::Empty,
        }
    }
}

impl EventField for ConditionEvent {
    fn get_value(
        &self,
        attribute_id: AttributeId,
        _index_range: &NumericRange,
        remaining_path: &[QualifiedName],
    ) -> Variant {
        self.field(attribute_id, remaining_path)
    }
}

impl Event for ConditionEvent {
    fn get_field(
        &self,
        _type_definition_id: &NodeId,
        attribute_id: AttributeId,
        _index_range: &NumericRange,
        browse_path: &[QualifiedName],
    ) -> Variant {
        self.field(attribute_id, browse_path)
    }

    fn time(&self) -> &DateTime {
        &self.time
    }

    fn event_type_id(&self) -> &NodeId {
        &self.event_type
    }
}

const BASE_FIELDS: &[&[&str]] = &[
    &["EventId"],
    &["EventType"],
    &["SourceNode"],
    &["SourceName"],
    &["Time"],
    &["ReceiveTime"],
    &["Message"],
    &["Severity"],
];
const CONDITION_FIELDS: &[&[&str]] = &[
    &["ConditionName"],
    &["ConditionClassId"],
    &["ConditionClassName"],
    &["BranchId"],
    &["Retain"],
    &["EnabledState"],
    &["EnabledState", "Id"],
    &["Quality"],
    &["LastSeverity"],
    &["Comment"],
    &["ClientUserId"],
];
const ACK_FIELDS: &[&[&str]] = &[
    &["AckedState"],
    &["AckedState", "Id"],
    &["ConfirmedState"],
    &["ConfirmedState", "Id"],
];
const ALARM_FIELDS: &[&[&str]] = &[&["ActiveState"], &["ActiveState", "Id"]];

/// async-opcua validates a select clause only against the properties its typeDefinitionId
/// declares itself. This registers, on ConditionType, AcknowledgeableConditionType and
/// AlarmConditionType, every field our events answer that the type has (inherited ones too)
/// and the empty path (`ConditionId`, NodeId attribute), with placeholder node ids in `ns`.
/// Paths already known (loaded from the core namespace) are left alone.
pub fn register_select_paths(type_tree: &mut DefaultTypeTree, ns: u16) {
    let types: [(ObjectTypeId, Vec<&[&str]>); 3] = [
        (
            ObjectTypeId::ConditionType,
            [BASE_FIELDS, CONDITION_FIELDS].concat(),
        ),
        (
            ObjectTypeId::AcknowledgeableConditionType,
            [BASE_FIELDS, CONDITION_FIELDS, ACK_FIELDS].concat(),
        ),
        (
            ObjectTypeId::AlarmConditionType,
            [BASE_FIELDS, CONDITION_FIELDS, ACK_FIELDS, ALARM_FIELDS].concat(),
        ),
    ];
    for (ty, paths) in types {
        let ty: NodeId = ty.into();
        let id = |p: &str| NodeId::new(ns, format!("EventField.{}.{p}", ty.as_u32().unwrap_or(0)));
        if type_tree.find_type_prop_by_browse_path(&ty, &[]).is_none() {
            type_tree.add_type_property(&id("ConditionId"), &ty, &[], NodeClass::Object);
        }
        for path in paths {
            let qn: Vec<QualifiedName> = path.iter().map(|n| QualifiedName::new(0, *n)).collect();
            if type_tree.find_type_prop_by_browse_path(&ty, &qn).is_none() {
                let refs: Vec<&QualifiedName> = qn.iter().collect();
                type_tree.add_type_property(&id(&path.join("/")), &ty, &refs, NodeClass::Variable);
            }
        }
    }
}
