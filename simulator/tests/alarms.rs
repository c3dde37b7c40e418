//! The TemperatureHigh alarm seen by an async-opcua client: events on the Server object and
//! on `Filler` with the standard select clauses, activation and clear by writing the limit,
//! Acknowledge (i=9111) and ConditionRefresh (i=3875).

mod harness;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::*;
use opcua::client::{EventCallback, Session};
use opcua::types::{
    AttributeId, ByteString, CallMethodRequest, EventFilter, EventFilterResult, ExtensionObject,
    LocalizedText, MethodId, MonitoredItemCreateRequest, MonitoringMode, MonitoringParameters,
    NodeId, NumericRange, ObjectId, ObjectTypeId, QualifiedName, ReadValueId,
    SimpleAttributeOperand, StatusCode, TimestampsToReturn, Variant,
};

/// The select clauses, each with the declaring type (as async-opcua validates them), and the
/// field names the test reads them by.
fn clauses(inherited_on: Option<ObjectTypeId>) -> (Vec<SimpleAttributeOperand>, Vec<&'static str>) {
    use ObjectTypeId::*;
    let list: [(ObjectTypeId, &str); 19] = [
        (BaseEventType, "EventId"),
        (BaseEventType, "EventType"),
        (BaseEventType, "SourceNode"),
        (BaseEventType, "SourceName"),
        (BaseEventType, "Time"),
        (BaseEventType, "ReceiveTime"),
        (BaseEventType, "Message"),
        (BaseEventType, "Severity"),
        (ConditionType, "ConditionName"),
        (ConditionType, "BranchId"),
        (ConditionType, "Retain"),
        (ConditionType, "EnabledState/Id"),
        (ConditionType, "Quality"),
        (ConditionType, "LastSeverity"),
        (ConditionType, "Comment"),
        (ConditionType, "ClientUserId"),
        (AcknowledgeableConditionType, "AckedState/Id"),
        (AlarmConditionType, "ActiveState/Id"),
        (AlarmConditionType, "ActiveState"),
    ];
    let mut ops: Vec<SimpleAttributeOperand> = list
        .iter()
        .map(|(t, p)| SimpleAttributeOperand::new_value(inherited_on.unwrap_or(*t), p))
        .collect();
    let mut names: Vec<&str> = list.iter().map(|(_, p)| *p).collect();
    ops.push(SimpleAttributeOperand {
        type_definition_id: inherited_on.unwrap_or(ConditionType).into(),
        browse_path: Some(vec![]),
        attribute_id: AttributeId::NodeId as u32,
        index_range: NumericRange::None,
    });
    names.push("ConditionId");
    (ops, names)
}

type Events = Arc<Mutex<Vec<(u32, Vec<Variant>)>>>;

async fn monitor(
    session: &Session,
    sub: u32,
    node: NodeId,
    handle: u32,
    inherited_on: Option<ObjectTypeId>,
) -> Vec<&'static str> {
    let (select, names) = clauses(inherited_on);
    let filter = EventFilter {
        select_clauses: Some(select),
        where_clause: Default::default(),
    };
    let created = session
        .create_monitored_items(
            sub,
            TimestampsToReturn::Both,
            vec![MonitoredItemCreateRequest {
                item_to_monitor: ReadValueId {
                    node_id: node,
                    attribute_id: AttributeId::EventNotifier as u32,
                    index_range: NumericRange::None,
                    data_encoding: QualifiedName::null(),
                },
                monitoring_mode: MonitoringMode::Reporting,
                requested_parameters: MonitoringParameters {
                    client_handle: handle,
                    sampling_interval: 0.0,
                    filter: ExtensionObject::from_message(filter),
                    queue_size: 100,
                    discard_oldest: true,
                },
            }],
        )
        .await
        .expect("event item");
    let result = &created[0].result;
    assert_eq!(result.status_code, StatusCode::Good);
    let fr = result
        .filter_result
        .inner_as::<EventFilterResult>()
        .expect("event filter result");
    let statuses = fr.select_clause_results.clone().unwrap_or_default();
    assert!(
        statuses.iter().all(|s| s.is_good()),
        "every select clause accepted: {:?}",
        names.iter().zip(&statuses).collect::<Vec<_>>()
    );
    names
}

struct Seen<'a> {
    names: &'a [&'static str],
    fields: Vec<Variant>,
}

impl Seen<'_> {
    fn get(&self, name: &str) -> &Variant {
        let i = self
            .names
            .iter()
            .position(|n| *n == name)
            .expect("selected");
        &self.fields[i]
    }
}

async fn next_event<'a>(
    events: &Events,
    handle: u32,
    from: &mut usize,
    names: &'a [&'static str],
) -> Seen<'a> {
    let fields = eventually("an event", Duration::from_secs(10), || async {
        let e = events.lock().expect("the event list lock");
        let found = e
            .iter()
            .enumerate()
            .skip(*from)
            .find(|(_, (h, _))| *h == handle);
        found.map(|(i, (_, f))| (i, f.clone()))
    })
    .await;
    *from = fields.0 + 1;
    Seen {
        names,
        fields: fields.1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_writes_raise_and_clear_the_alarm_and_acknowledge_works_once() {
    let sim = start(|_| {}).await;
    let session = connect(&sim).await;
    let limit = node(&session, "Filler.TemperatureLimit").await;
    let filler = node(&session, "Filler").await;
    let condition = node(&session, "Filler.TemperatureHigh").await;
    assert_eq!(
        read(&session, &limit).await.value,
        Some(Variant::Float(80.0))
    );

    let events: Events = Arc::default();
    let sink = events.clone();
    let sub = subscription(
        &session,
        EventCallback::new(move |fields, item| {
            sink.lock()
                .unwrap()
                .push((item.client_handle(), fields.unwrap_or_default()));
        }),
    )
    .await;
    let names = monitor(&session, sub, ObjectId::Server.into(), 1, None).await;
    // On the source, with every field selected through AlarmConditionType (inherited ones too).
    let names2 = monitor(
        &session,
        sub,
        filler.clone(),
        2,
        Some(ObjectTypeId::AlarmConditionType),
    )
    .await;
    let (mut on_server, mut on_filler) = (0, 0);

    // Activate: the limit below the product temperature (about 12.5 °C).
    assert_eq!(
        write(&session, &limit, Variant::Float(0.0)).await,
        StatusCode::Good
    );
    let a = next_event(&events, 1, &mut on_server, &names).await;
    assert_eq!(a.get("ActiveState/Id"), &Variant::Boolean(true));
    assert_eq!(
        a.get("ActiveState"),
        &Variant::from(LocalizedText::new("en", "Active"))
    );
    assert_eq!(a.get("AckedState/Id"), &Variant::Boolean(false));
    assert_eq!(a.get("Retain"), &Variant::Boolean(true));
    assert_eq!(
        a.get("Message"),
        &Variant::from(LocalizedText::new(
            "en",
            "Filler product temperature above limit"
        ))
    );
    assert_eq!(a.get("Severity"), &Variant::UInt16(700));
    assert_eq!(a.get("LastSeverity"), &Variant::UInt16(700));
    assert_eq!(a.get("SourceNode"), &Variant::from(filler.clone()));
    assert_eq!(a.get("SourceName"), &Variant::from("Filler"));
    assert_eq!(a.get("ConditionName"), &Variant::from("TemperatureHigh"));
    assert_eq!(a.get("ConditionId"), &Variant::from(condition.clone()));
    assert_eq!(
        a.get("EventType"),
        &Variant::from(NodeId::from(ObjectTypeId::AlarmConditionType))
    );
    assert_eq!(a.get("BranchId"), &Variant::from(NodeId::null()));
    assert_eq!(a.get("EnabledState/Id"), &Variant::Boolean(true));
    assert_eq!(a.get("Quality"), &Variant::StatusCode(StatusCode::Good));
    assert!(matches!(a.get("Time"), Variant::DateTime(_)));
    assert!(matches!(a.get("ReceiveTime"), Variant::DateTime(_)));
    let Variant::ByteString(first_id) = a.get("EventId").clone() else {
        panic!("EventId is a ByteString")
    };
    let b = next_event(&events, 2, &mut on_filler, &names2).await;
    assert_eq!(b.get("EventId"), &Variant::ByteString(first_id.clone()));
    assert_eq!(b.get("ConditionId"), &Variant::from(condition.clone()));
    assert_eq!(b.get("ActiveState/Id"), &Variant::Boolean(true));

    // ConditionRefresh: start, the retained condition (same EventId), end.
    let refresh = session
        .call_one(CallMethodRequest::from((
            NodeId::from(ObjectId::Server),
            NodeId::from(MethodId::ConditionType_ConditionRefresh),
            Some(vec![Variant::UInt32(sub)]),
        )))
        .await
        .expect("refresh call");
    assert_eq!(refresh.status_code, StatusCode::Good);
    let start = next_event(&events, 1, &mut on_server, &names).await;
    assert_eq!(
        start.get("EventType"),
        &Variant::from(NodeId::from(ObjectTypeId::RefreshStartEventType))
    );
    let again = next_event(&events, 1, &mut on_server, &names).await;
    assert_eq!(again.get("EventId"), &Variant::ByteString(first_id.clone()));
    let end = next_event(&events, 1, &mut on_server, &names).await;
    assert_eq!(
        end.get("EventType"),
        &Variant::from(NodeId::from(ObjectTypeId::RefreshEndEventType))
    );
    let _ = next_event(&events, 2, &mut on_filler, &names2).await; // the retained condition

    // Acknowledge: an unknown EventId is refused, the right one accepted once.
    let ack = |id: ByteString, comment: &str| {
        let req = CallMethodRequest::from((
            condition.clone(),
            NodeId::from(MethodId::AcknowledgeableConditionType_Acknowledge),
            Some(vec![
                Variant::from(id),
                Variant::from(LocalizedText::new("en", comment)),
            ]),
        ));
        let session = session.clone();
        async move { session.call_one(req).await.expect("ack call").status_code }
    };
    assert_eq!(
        ack(ByteString::from(vec![1, 2, 3]), "wrong").await,
        StatusCode::BadEventIdUnknown
    );
    assert_eq!(
        ack(first_id.clone(), "checked by operator").await,
        StatusCode::Good
    );
    let k = next_event(&events, 1, &mut on_server, &names).await;
    assert_eq!(
        k.get("Message"),
        &Variant::from(LocalizedText::new(
            "en",
            "Acknowledged: checked by operator"
        ))
    );
    assert_eq!(k.get("AckedState/Id"), &Variant::Boolean(true));
    assert_eq!(k.get("ActiveState/Id"), &Variant::Boolean(true));
    assert_eq!(k.get("Retain"), &Variant::Boolean(true));
    assert_eq!(
        k.get("Comment"),
        &Variant::from(LocalizedText::new("en", "checked by operator"))
    );
    let Variant::ByteString(ack_id) = k.get("EventId").clone() else {
        panic!("EventId")
    };
    assert_ne!(ack_id, first_id, "every event has its own EventId");
    assert_eq!(
        ack(ack_id, "again").await,
        StatusCode::BadConditionBranchAlreadyAcked
    );

    // Clear: acknowledged and inactive, so no longer retained.
    assert_eq!(
        write(&session, &limit, Variant::Float(1000.0)).await,
        StatusCode::Good
    );
    let c = next_event(&events, 1, &mut on_server, &names).await;
    assert_eq!(c.get("ActiveState/Id"), &Variant::Boolean(false));
    assert_eq!(c.get("AckedState/Id"), &Variant::Boolean(true));
    assert_eq!(c.get("Retain"), &Variant::Boolean(false));
    assert_eq!(
        c.get("Message"),
        &Variant::from(LocalizedText::new(
            "en",
            "Filler product temperature back within limit"
        ))
    );
    assert_eq!(sim.sim.stats().acknowledgements, 1);

    // A ConditionRefresh for a subscription of another session is refused.
    let wrong = session
        .call_one(CallMethodRequest::from((
            NodeId::from(ObjectId::Server),
            NodeId::from(MethodId::ConditionType_ConditionRefresh),
            Some(vec![Variant::UInt32(sub + 1000)]),
        )))
        .await
        .expect("refresh call");
    assert_eq!(wrong.status_code, StatusCode::BadSubscriptionIdInvalid);
}
