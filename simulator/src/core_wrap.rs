//! The core (namespace 0) node manager, wrapped so that the condition methods reach the
//! simulator's alarm.
//!
//! async-opcua routes a Call by its *method* id: `Acknowledge` (i=9111, declared on
//! AcknowledgeableConditionType) and `ConditionRefresh` (i=3875, on ConditionType) go to the core
//! node manager, which checks that the object has the method as a HasComponent in its own
//! address space and then answers BadNotSupported. This wrapper delegates everything to
//! async-opcua's `CoreNodeManagerImpl` except those two calls, which it answers from the
//! [`Alarm`]; the runtime adds the references the core's validation needs
//! (`s=Filler.TemperatureHigh` HasComponent i=9111 and Server HasComponent i=3875) to the core
//! address space, see [`link_condition_methods`].

use std::sync::atomic::Ordering;

use async_trait::async_trait;
use opcua::server::address_space::AddressSpace;
use opcua::server::diagnostics::NamespaceMetadata;
use opcua::server::node_manager::memory::{
    CoreNodeManagerBuilder, CoreNodeManagerImpl, InMemoryNodeManager, InMemoryNodeManagerImpl,
    InMemoryNodeManagerImplBuilder,
};
use opcua::server::node_manager::{
    MethodCall, MonitoredItemRef, MonitoredItemUpdateRef, ParsedReadValueId, RequestContext,
    ServerContext,
};
use opcua::server::CreateMonitoredItem;
use opcua::sync::RwLock;
use opcua::types::{
    DataValue, MethodId, MonitoringMode, NodeId, ObjectId, ObjectTypeId, ReferenceTypeId,
    StatusCode, TimestampsToReturn, Variant,
};
use tracing::info;

use crate::alarm::{self, Alarm, AlarmIds};
use crate::server::Services;

pub type CoreNodeManager = InMemoryNodeManager<AlarmCore>;

pub struct AlarmCoreBuilder {
    pub services: Services,
}

impl InMemoryNodeManagerImplBuilder for AlarmCoreBuilder {
    type Impl = AlarmCore;

    fn build(self, context: ServerContext, address_space: &mut AddressSpace) -> AlarmCore {
        AlarmCore {
            inner: CoreNodeManagerBuilder.build(context, address_space),
            services: self.services,
        }
    }
}

pub struct AlarmCore {
    inner: CoreNodeManagerImpl,
    services: Services,
}

/// Adds to the core address space the HasComponent references async-opcua's method
/// validation looks for: condition -> Acknowledge (i=9111), Server -> ConditionRefresh (i=3875).
pub fn link_condition_methods(core: &CoreNodeManager, ids: &AlarmIds) {
    let mut asp = core.address_space().write();
    asp.insert_reference(
        &ids.condition,
        &NodeId::from(MethodId::AcknowledgeableConditionType_Acknowledge),
        ReferenceTypeId::HasComponent,
    );
    asp.insert_reference(
        &NodeId::from(ObjectId::Server),
        &NodeId::from(MethodId::ConditionType_ConditionRefresh),
        ReferenceTypeId::HasComponent,
    );
}

impl AlarmCore {
    fn acknowledge(&self, context: &RequestContext, alarm: &Alarm, call: &mut MethodCall) {
        if !alarm.is_condition(call.object_id()) {
            call.set_status(StatusCode::BadNodeIdInvalid);
            return;
        }
        let args = call.arguments();
        if args.len() < 2 {
            call.set_status(StatusCode::BadArgumentsMissing);
            return;
        }
        let (Variant::ByteString(event_id), Variant::LocalizedText(comment)) = (&args[0], &args[1])
        else {
            let ok = |b: bool| {
                if b {
                    StatusCode::Good
                } else {
                    StatusCode::BadTypeMismatch
                }
            };
            let results = vec![
                ok(matches!(args[0], Variant::ByteString(_))),
                ok(matches!(args[1], Variant::LocalizedText(_))),
            ];
            call.set_argument_error(results);
            call.set_status(StatusCode::BadInvalidArgument);
            return;
        };
        let (event_id, comment) = (event_id.clone(), (**comment).clone());
        let user = context.user_token().0.clone();
        match alarm.acknowledge(&event_id, &comment, &user) {
            Ok(event) => {
                alarm::emit(&context.subscriptions, &event);
                self.services
                    .counts
                    .acknowledgements
                    .fetch_add(1, Ordering::Relaxed);
                info!(
                    condition = %alarm::NAME,
                    comment = ?comment.text.as_ref(),
                    user = %user,
                    "alarm acknowledged"
                );
                call.set_status(StatusCode::Good);
            }
            Err(status) => call.set_status(status),
        }
    }

    fn refresh(&self, context: &RequestContext, alarm: &Alarm, call: &mut MethodCall) {
        let Some(Variant::UInt32(subscription)) = call.arguments().first().cloned() else {
            call.set_status(if call.arguments().is_empty() {
                StatusCode::BadArgumentsMissing
            } else {
                StatusCode::BadInvalidArgument
            });
            return;
        };
        let mine = context
            .subscriptions
            .get_session_subscriptions(context.session_id())
            .is_some_and(|s| s.lock().contains(subscription));
        if !mine {
            call.set_status(StatusCode::BadSubscriptionIdInvalid);
            return;
        }
        alarm::emit(&context.subscriptions, &alarm::refresh_event(true));
        if let Some(current) = alarm.retained() {
            alarm::emit(&context.subscriptions, &current);
        }
        alarm::emit(&context.subscriptions, &alarm::refresh_event(false));
        call.set_status(StatusCode::Good);
    }
}

#[async_trait]
impl InMemoryNodeManagerImpl for AlarmCore {
    async fn init(&self, address_space: &mut AddressSpace, context: ServerContext) {
        self.inner.init(address_space, context).await
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn namespaces(&self) -> Vec<NamespaceMetadata> {
        self.inner.namespaces()
    }

    async fn read_values(
        &self,
        context: &RequestContext,
        address_space: &RwLock<AddressSpace>,
        nodes: &[&ParsedReadValueId],
        max_age: f64,
        timestamps_to_return: TimestampsToReturn,
    ) -> Vec<DataValue> {
        self.inner
            .read_values(context, address_space, nodes, max_age, timestamps_to_return)
            .await
    }

    async fn create_value_monitored_items(
        &self,
        context: &RequestContext,
        address_space: &RwLock<AddressSpace>,
        items: &mut [&mut &mut CreateMonitoredItem],
    ) {
        self.inner
            .create_value_monitored_items(context, address_space, items)
            .await
    }

    async fn set_monitoring_mode(
        &self,
        context: &RequestContext,
        mode: MonitoringMode,
        items: &[&MonitoredItemRef],
    ) {
        self.inner.set_monitoring_mode(context, mode, items).await
    }

    async fn modify_monitored_items(
        &self,
        context: &RequestContext,
        items: &[&MonitoredItemUpdateRef],
    ) {
        self.inner.modify_monitored_items(context, items).await
    }

    async fn delete_monitored_items(&self, context: &RequestContext, items: &[&MonitoredItemRef]) {
        self.inner.delete_monitored_items(context, items).await
    }

    async fn call(
        &self,
        context: &RequestContext,
        address_space: &RwLock<AddressSpace>,
        methods_to_call: &mut [&mut &mut MethodCall],
    ) -> Result<(), StatusCode> {
        let ack: NodeId = MethodId::AcknowledgeableConditionType_Acknowledge.into();
        let refresh: NodeId = MethodId::ConditionType_ConditionRefresh.into();
        let condition_type: NodeId = ObjectTypeId::ConditionType.into();
        let mut rest: Vec<&mut &mut MethodCall> = Vec::new();
        for call in methods_to_call.iter_mut() {
            match &self.services.alarm {
                Some(alarm) if call.method_id() == &ack => self.acknowledge(context, alarm, call),
                Some(alarm)
                    if call.method_id() == &refresh
                        && (call.object_id() == &ObjectId::Server
                            || call.object_id() == &condition_type) =>
                {
                    self.refresh(context, alarm, call)
                }
                _ => rest.push(&mut **call),
            }
        }
        self.inner.call(context, address_space, &mut rest).await
    }
}
