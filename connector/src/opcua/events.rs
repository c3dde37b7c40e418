//! Events (`[[plc.events]]`): one subscription per event stream with one event monitored item
//! on its source node (the Server object by default), the standard fields of BaseEventType and
//! the condition types selected, an OfType filter where asked. Each event becomes an
//! [`EventRecord`] in a sample of the stream, which lands in the events table and in telemetry.
//!
//! Select clauses name the type that declares each field (a server may refuse a field named
//! through a subtype). A clause the server refuses yields no value; some servers leave it out
//! of the event's field list instead of sending a null, so the positions are taken from the
//! filter result when the list is short.

use std::sync::{Arc, OnceLock};

use opcua::client::Session;
use opcua::types::{
    AttributeId, ContentFilter, ContentFilterElement, ElementOperand, EventFilter,
    EventFilterResult, ExtensionObject, FilterOperator, LiteralOperand, MethodId,
    MonitoredItemCreateRequest, MonitoringMode, MonitoringParameters, NodeId, NumericRange,
    ObjectTypeId, QualifiedName, ReadValueId, SimpleAttributeOperand, StatusCode,
    TimestampsToReturn, Variant,
};
use tracing::{debug, info, warn};

use crate::config::{EventField, Events, Plc};
use crate::metrics::PlcMetrics;
use crate::opcua::convert;
use crate::opcua::flatten::Watch;
use crate::opcua::resolve::Namespaces;
use crate::opcua::subscribe::{Callback, Created, Decoding, Recovery};
use crate::pipeline::SampleSender;
use crate::sample::{EventRecord, Item, Origin, Sample, SampleValue, TypeName};

const BASE_EVENT: u32 = 2041;
const CONDITION: u32 = 2782;
const ACKNOWLEDGEABLE: u32 = 2881;
const ALARM: u32 = 2915;
/// RefreshStartEventType, RefreshEndEventType: the brackets of a ConditionRefresh, no rows.
const REFRESH_MARKERS: [u32; 2] = [2787, 2788];

/// The standard fields, in select-clause order: (declaring type, browse path). An empty path
/// is the ConditionId (the NodeId attribute of the condition).
pub const STANDARD: [(u32, &str); 17] = [
    (BASE_EVENT, "EventId"),
    (BASE_EVENT, "EventType"),
    (BASE_EVENT, "SourceNode"),
    (BASE_EVENT, "SourceName"),
    (BASE_EVENT, "Time"),
    (BASE_EVENT, "ReceiveTime"),
    (BASE_EVENT, "Message"),
    (BASE_EVENT, "Severity"),
    (CONDITION, ""),
    (CONDITION, "ConditionName"),
    (CONDITION, "BranchId"),
    (CONDITION, "Retain"),
    (CONDITION, "EnabledState/Id"),
    (CONDITION, "Comment"),
    (ACKNOWLEDGEABLE, "AckedState/Id"),
    (ACKNOWLEDGEABLE, "ConfirmedState/Id"),
    (ALARM, "ActiveState/Id"),
];

/// The last event of each condition of a PLC, kept across sessions: a ConditionRefresh (after
/// every new session) sends it again, and it is not a new event.
#[derive(Debug, Default)]
pub struct LastEvents(std::sync::Mutex<std::collections::HashMap<Condition, Vec<u8>>>);

/// A condition of a stream: (stream name, condition id).
type Condition = (Arc<str>, String);

impl LastEvents {
    /// Whether `event_id` is news for `condition` of `stream` (and remembers it).
    fn news(&self, stream: &Arc<str>, condition: &str, event_id: &[u8]) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let key = (stream.clone(), condition.to_owned());
        if last.get(&key).is_some_and(|id| id.as_slice() == event_id) {
            return false;
        }
        last.insert(key, event_id.to_vec());
        true
    }
}

/// How the fields of one stream's events are read.
#[derive(Debug)]
pub struct EventDecode {
    /// The PLC's last event of each condition.
    pub last: Arc<LastEvents>,
    /// The configured extra fields, after the standard ones.
    pub extra: Vec<String>,
    /// Field positions when the server leaves refused clauses out (set from the filter
    /// result); clause `i` is at `positions[i]`, `None`: refused.
    pub positions: OnceLock<Vec<Option<usize>>>,
}

impl EventDecode {
    fn clauses(&self) -> usize {
        STANDARD.len() + self.extra.len()
    }

    /// The value of clause `i` in an event's field list.
    fn field<'a>(&self, fields: &'a [Variant], i: usize) -> Option<&'a Variant> {
        let at = if fields.len() >= self.clauses() {
            Some(i)
        } else {
            self.positions
                .get()
                .and_then(|p| p.get(i).copied().flatten())
        };
        at.and_then(|k| fields.get(k))
            .filter(|v| !matches!(v, Variant::Empty))
    }

    /// Notes the server's answer to the select clauses.
    pub fn accepted(&self, result: &ExtensionObject) -> Vec<usize> {
        let Some(r) = result.inner_as::<EventFilterResult>() else {
            return Vec::new();
        };
        let statuses = r.select_clause_results.clone().unwrap_or_default();
        let mut next = 0;
        let positions = statuses
            .iter()
            .map(|s| {
                s.is_good().then(|| {
                    next += 1;
                    next - 1
                })
            })
            .collect();
        let _ = self.positions.set(positions);
        statuses
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.is_good())
            .map(|(i, _)| i)
            .collect()
    }

    /// The name of clause `i` for logs.
    pub fn clause_name(&self, i: usize) -> String {
        match STANDARD.get(i) {
            Some((_, "")) => "ConditionId".to_owned(),
            Some((_, p)) => (*p).to_owned(),
            None => self
                .extra
                .get(i - STANDARD.len())
                .cloned()
                .unwrap_or_default(),
        }
    }

    /// One event of `stream` as a sample; `None` for the markers of a ConditionRefresh.
    pub fn row(
        &self,
        stream: &Arc<Item>,
        fields: &[Variant],
        received_us: i64,
        ns: &Namespaces,
    ) -> Option<Sample> {
        let f = |i: usize| self.field(fields, i);
        let node = |i: usize| match f(i) {
            Some(Variant::NodeId(n)) if !n.is_null() => Some(ns.uri_form(n)),
            Some(Variant::ExpandedNodeId(n)) if !n.node_id.is_null() => {
                Some(ns.uri_form(&n.node_id))
            }
            _ => None,
        };
        let text = |i: usize| match f(i) {
            Some(Variant::String(s)) => s.value().clone(),
            Some(Variant::LocalizedText(t)) => t.text.value().clone(),
            Some(Variant::QualifiedName(q)) => q.name.value().clone(),
            _ => None,
        };
        let boolean = |i: usize| match f(i) {
            Some(Variant::Boolean(b)) => Some(*b),
            _ => None,
        };
        let time = |i: usize| match f(i) {
            Some(Variant::DateTime(t)) => Some(convert::micros(t)),
            _ => None,
        };
        if let Some(Variant::NodeId(t)) = f(1) {
            if t.namespace == 0
                && REFRESH_MARKERS
                    .iter()
                    .any(|m| t.identifier == opcua::types::Identifier::Numeric(*m))
            {
                return None;
            }
        }
        let extra: Vec<(String, String)> = self
            .extra
            .iter()
            .enumerate()
            .filter_map(|(k, name)| {
                f(STANDARD.len() + k).map(|v| (name.clone(), plain_json(v.clone(), ns)))
            })
            .collect();
        let fields_json = (!self.extra.is_empty()).then(|| {
            let mut out = String::from("{");
            for (k, (name, json)) in extra.iter().enumerate() {
                if k > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(name.clone()).to_string());
                out.push(':');
                out.push_str(json);
            }
            out.push('}');
            out
        });
        let receive = time(5);
        let record = EventRecord {
            event_id: match f(0) {
                Some(Variant::ByteString(b)) => b.value.clone().unwrap_or_default(),
                _ => Vec::new(),
            },
            event_type: node(1).unwrap_or_default(),
            source_node: node(2).unwrap_or_default(),
            source_name: text(3).unwrap_or_default(),
            receive_time_us: receive,
            message: text(6).unwrap_or_default(),
            severity: match f(7) {
                Some(Variant::UInt16(s)) => *s,
                Some(Variant::UInt32(s)) => u16::try_from(*s).unwrap_or(u16::MAX),
                Some(Variant::Int32(s)) => u16::try_from(*s).unwrap_or(0),
                _ => 0,
            },
            condition_id: node(8),
            condition_name: text(9),
            branch_id: node(10),
            retain: boolean(11),
            enabled: boolean(12),
            comment: text(13),
            acked: boolean(14),
            confirmed: boolean(15),
            active: boolean(16),
            fields_json,
        };
        if let Some(condition) = &record.condition_id {
            if !record.event_id.is_empty()
                && !self.last.news(&stream.group, condition, &record.event_id)
            {
                // The same event again (a ConditionRefresh): no new row.
                return None;
            }
        }
        Some(Sample {
            item: stream.clone(),
            time_us: time(4).or(receive).unwrap_or(received_us),
            server_time_us: receive,
            status: 0,
            type_name: TypeName::NULL,
            value: SampleValue::Event(Box::new(record)),
            origin: Origin::Live,
        })
    }
}

/// Subscribes the event streams of a PLC: one subscription each, its one item on the source
/// node. A stream the server refuses (unknown source, not an event notifier, a bad filter, no
/// room for one more subscription) is logged and counted in `failed_items`; the data and the
/// other streams run. After subscribing, ConditionRefresh
/// asks for the current state of the retained conditions (answered with their events; a
/// server without it is fine).
pub async fn subscribe_events(
    session: &Session,
    plc: &Plc,
    decoding: &Decoding,
    (tx, recovery, metrics): (&SampleSender, &Recovery, &Arc<PlcMetrics>),
) -> Result<Vec<Created>, StatusCode> {
    let mut created = Vec::new();
    for ev in &plc.events {
        let ns = &decoding.ns;
        let resolved = ns
            .resolve(&ev.source)
            .map_err(|e| e.to_string())
            .and_then(|source| filter(ev, ns).map(|f| (source, f)));
        let (source, (filter, mut decode)) = match resolved {
            Ok(r) => r,
            Err(e) => {
                PlcMetrics::add(&metrics.failed_items, 1);
                warn!(plc = %plc.id, events = %ev.name, error = %e, "event stream not subscribed");
                continue;
            }
        };
        decode.last = decoding.last_events.clone();
        let stream = Arc::new(Item {
            plc: plc.id.as_str().into(),
            group: ev.name.as_str().into(),
            node: ns.uri_form(&source).into(),
            name: ev.name.as_str().into(),
        });
        let watch = Arc::new(Watch {
            events: Some(decode),
            ..Watch::of_items(vec![stream], Default::default(), ns.clone(), None)
        });
        let (callback, sub_id) = Callback::new(watch.clone(), tx, metrics, recovery);
        let publishing_ms = ev.publishing_interval.as_secs_f64() * 1000.0;
        let keep_alive = ((5_000.0 / publishing_ms.max(1.0)) as u32).clamp(3, 1000);
        let lifetime = (keep_alive * 3).max((60_000.0 / publishing_ms.max(1.0)) as u32);
        let subscription = session
            .create_subscription(
                ev.publishing_interval,
                lifetime,
                keep_alive,
                0,
                0,
                true,
                callback,
            )
            .await;
        let id = match subscription {
            Ok(id) => id,
            Err(e) => {
                // The data keeps flowing without this stream; it is tried again with the
                // next subscribe round.
                PlcMetrics::add(&metrics.failed_items, 1);
                warn!(plc = %plc.id, events = %ev.name, status = %e.status(), "event stream not subscribed: the server refused its subscription");
                continue;
            }
        };
        sub_id.store(id, std::sync::atomic::Ordering::Relaxed);
        let request = MonitoredItemCreateRequest {
            item_to_monitor: ReadValueId {
                node_id: source.clone(),
                attribute_id: AttributeId::EventNotifier as u32,
                ..Default::default()
            },
            monitoring_mode: MonitoringMode::Reporting,
            requested_parameters: MonitoringParameters {
                client_handle: 1,
                sampling_interval: 0.0,
                filter: ExtensionObject::from_message(filter),
                queue_size: ev.queue_size,
                discard_oldest: true,
            },
        };
        let result = session
            .create_monitored_items(id, TimestampsToReturn::Neither, vec![request])
            .await;
        let result = match result {
            Ok(mut r) if !r.is_empty() => r.swap_remove(0).result,
            other => {
                let _ = session.delete_subscriptions(&[id]).await;
                let status = other
                    .err()
                    .map_or(StatusCode::BadUnexpectedError, |e| e.status());
                PlcMetrics::add(&metrics.failed_items, 1);
                warn!(plc = %plc.id, events = %ev.name, status = %status, "event stream not subscribed");
                continue;
            }
        };
        if !result.status_code.is_good() {
            PlcMetrics::add(&metrics.failed_items, 1);
            warn!(plc = %plc.id, events = %ev.name, source = %ns.uri_form(&source), status = %result.status_code, "event stream not subscribed: the server refused the source or the filter");
            let _ = session.delete_subscriptions(&[id]).await;
            continue;
        }
        if let Some(decode) = &watch.events {
            let refused = decode.accepted(&result.filter_result);
            let names: Vec<String> = refused.iter().map(|&i| decode.clause_name(i)).collect();
            if refused.iter().any(|&i| i < 8 || i >= STANDARD.len()) {
                warn!(plc = %plc.id, events = %ev.name, fields = ?names, "the server refused event fields: they stay empty");
            } else if !refused.is_empty() {
                info!(plc = %plc.id, events = %ev.name, fields = ?names, "the server has no condition fields (no alarms and conditions): they stay empty");
            }
        }
        PlcMetrics::add(&metrics.monitored_items, 1);
        info!(plc = %plc.id, events = %ev.name, source = %ns.uri_form(&source), "event stream subscribed");
        created.push(Created {
            id,
            watch,
            losses: recovery.losses.clone(),
        });
        let refresh = session
            .call_one((
                NodeId::from(ObjectTypeId::ConditionType),
                NodeId::from(MethodId::ConditionType_ConditionRefresh),
                Some(vec![Variant::UInt32(id)]),
            ))
            .await;
        match refresh {
            Ok(r) if r.status_code.is_good() => {}
            Ok(r) => {
                debug!(plc = %plc.id, events = %ev.name, status = %r.status_code, "no ConditionRefresh: the current alarm states come with their next change")
            }
            Err(e) => {
                debug!(plc = %plc.id, events = %ev.name, status = %e.status(), "no ConditionRefresh")
            }
        }
    }
    Ok(created)
}

/// A field's value as plain JSON, like a sample's `v` in telemetry: numbers and booleans as
/// such (NaN and infinities as strings), texts and node ids as strings, DateTimes as RFC 3339,
/// ByteStrings as base64, arrays and structures as OPC UA JSON.
fn plain_json(v: Variant, ns: &Namespaces) -> String {
    use base64::Engine as _;
    use serde_json::Value as J;
    let (_, value) = convert::value(v, ns);
    let j = match value {
        SampleValue::Null | SampleValue::Event(_) => J::Null,
        SampleValue::Double(d) => serde_json::Number::from_f64(d)
            .map(J::Number)
            .unwrap_or_else(|| J::String(d.to_string())),
        SampleValue::Int(i) => J::from(i),
        SampleValue::UInt(u) => J::from(u),
        SampleValue::Bool(b) => J::Bool(b),
        SampleValue::String(t) => J::String(t),
        SampleValue::Time(us) => J::String(
            chrono::DateTime::from_timestamp_micros(us)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
                .unwrap_or_default(),
        ),
        SampleValue::Bytes(b) => J::String(base64::engine::general_purpose::STANDARD.encode(b)),
        SampleValue::Json(text) => return text,
    };
    j.to_string()
}

/// The select clauses and where clause of a stream, resolved against the server's namespaces.
pub fn filter(events: &Events, ns: &Namespaces) -> Result<(EventFilter, EventDecode), String> {
    let mut clauses: Vec<SimpleAttributeOperand> = STANDARD
        .iter()
        .map(|(ty, path)| operand(NodeId::new(0, *ty), path_of(path), path.is_empty()))
        .collect();
    for field in &events.fields {
        clauses.push(extra_operand(field, ns)?);
    }
    let types = events
        .types
        .iter()
        .map(|t| ns.resolve(t).map_err(|e| e.to_string()))
        .collect::<Result<Vec<NodeId>, String>>()?;
    let filter = EventFilter {
        select_clauses: Some(clauses),
        where_clause: of_types(&types),
    };
    let decode = EventDecode {
        last: Arc::default(),
        extra: events.fields.iter().map(|f| f.text.clone()).collect(),
        positions: OnceLock::new(),
    };
    Ok((filter, decode))
}

fn path_of(path: &str) -> Vec<QualifiedName> {
    if path.is_empty() {
        return Vec::new();
    }
    path.split('/').map(|p| QualifiedName::new(0, p)).collect()
}

fn operand(ty: NodeId, path: Vec<QualifiedName>, node_id: bool) -> SimpleAttributeOperand {
    SimpleAttributeOperand {
        type_definition_id: ty,
        browse_path: Some(path),
        attribute_id: if node_id {
            AttributeId::NodeId as u32
        } else {
            AttributeId::Value as u32
        },
        index_range: NumericRange::None,
    }
}

fn extra_operand(field: &EventField, ns: &Namespaces) -> Result<SimpleAttributeOperand, String> {
    let ty = ns.resolve(&field.type_id).map_err(|e| e.to_string())?;
    let mut path = Vec::new();
    for (uri, name) in &field.path {
        let index = match uri {
            None => 0,
            Some(u) => ns.index_of(u).ok_or_else(|| {
                format!(
                    "field {}: namespace {u:?} unknown to the server",
                    field.text
                )
            })?,
        };
        path.push(QualifiedName::new(index, name.as_str()));
    }
    Ok(operand(ty, path, false))
}

/// OfType(t1) OR OfType(t2) ...; no elements: every event.
fn of_types(types: &[NodeId]) -> ContentFilter {
    if types.is_empty() {
        return ContentFilter { elements: None };
    }
    let element = |index: usize| {
        ExtensionObject::from_message(ElementOperand {
            index: index as u32,
        })
    };
    let of_type = |t: &NodeId| ContentFilterElement {
        filter_operator: FilterOperator::OfType,
        filter_operands: Some(vec![ExtensionObject::from_message(LiteralOperand {
            value: Variant::NodeId(Box::new(t.clone())),
        })]),
    };
    let mut elements = Vec::new();
    let last = types.len() - 1;
    for (i, t) in types.iter().enumerate() {
        if i < last {
            let at = elements.len();
            elements.push(ContentFilterElement {
                filter_operator: FilterOperator::Or,
                filter_operands: Some(vec![element(at + 1), element(at + 2)]),
            });
        }
        elements.push(of_type(t));
    }
    ContentFilter {
        elements: Some(elements),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_event_of_a_condition_again_is_no_news() {
        let last = LastEvents::default();
        let alarms: Arc<str> = "alarms".into();
        assert!(last.news(&alarms, "c1", b"e1"));
        assert!(
            !last.news(&alarms, "c1", b"e1"),
            "a ConditionRefresh repeats it"
        );
        assert!(last.news(&alarms, "c2", b"e1"), "another condition");
        assert!(last.news(&alarms, "c1", b"e2"));
        assert!(
            last.news(&alarms, "c1", b"e1"),
            "only the latest is remembered"
        );
    }

    #[test]
    fn or_of_types_refers_to_its_elements() {
        let ts: Vec<NodeId> = (1..=3).map(|i| NodeId::new(0, i)).collect();
        let f = of_types(&ts);
        let e = f.elements.unwrap();
        let ops: Vec<FilterOperator> = e.iter().map(|x| x.filter_operator).collect();
        assert_eq!(
            ops,
            [
                FilterOperator::Or,
                FilterOperator::OfType,
                FilterOperator::Or,
                FilterOperator::OfType,
                FilterOperator::OfType
            ]
        );
        let idx = |k: usize| -> Vec<u32> {
            e[k].filter_operands
                .as_ref()
                .unwrap()
                .iter()
                .map(|o| o.inner_as::<ElementOperand>().unwrap().index)
                .collect()
        };
        assert_eq!((idx(0), idx(2)), (vec![1, 2], vec![3, 4]));
        assert!(of_types(&[]).elements.is_none());
    }

    #[test]
    fn fields_are_found_in_place_or_by_the_filter_result() {
        let d = EventDecode {
            last: Arc::default(),
            extra: vec!["InputNode".into()],
            positions: OnceLock::new(),
        };
        let mut all: Vec<Variant> = (0..18).map(Variant::Int32).collect();
        assert_eq!(d.field(&all, 9), Some(&Variant::Int32(9)));
        all[9] = Variant::Empty;
        assert_eq!(d.field(&all, 9), None, "a null value is no value");
        // The server refused clauses 8 and 10 and left them out.
        let mut statuses = vec![StatusCode::Good; 18];
        statuses[8] = StatusCode::BadNodeIdUnknown;
        statuses[10] = StatusCode::BadNodeIdUnknown;
        let refused = d.accepted(&ExtensionObject::from_message(EventFilterResult {
            select_clause_results: Some(statuses),
            ..Default::default()
        }));
        assert_eq!(refused, [8, 10]);
        let short: Vec<Variant> = (0..16).map(Variant::Int32).collect();
        assert_eq!(d.field(&short, 7), Some(&Variant::Int32(7)));
        assert_eq!(d.field(&short, 8), None);
        assert_eq!(d.field(&short, 9), Some(&Variant::Int32(8)));
        assert_eq!(d.field(&short, 11), Some(&Variant::Int32(9)));
        assert_eq!(d.field(&short, 17), Some(&Variant::Int32(15)));
        assert_eq!(d.clause_name(8), "ConditionId");
        assert_eq!(d.clause_name(17), "InputNode");
    }
}
