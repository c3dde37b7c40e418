//! The OPC UA adapter: an async-opcua node manager that imports the nodesets (and the
//! `--scale` variables) into the address space and maps reads, writes, subscriptions and
//! method calls onto the model.
//!
//! Our own node manager (instead of async-opcua's `SimpleNodeManager`) lets writes be checked
//! by the model (range, writability) *and* stored in the address space in one step, so a read
//! right after a write returns the written value.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use opcua::nodes::AccessLevel;
use opcua::nodes::{NodeSet2Import, NodeSetImport};
use opcua::server::address_space::{
    read_node_value, write_node_value, AddressSpace, NodeType, VariableBuilder,
};
use opcua::server::diagnostics::NamespaceMetadata;
use opcua::server::node_manager::memory::{
    InMemoryNodeManager, InMemoryNodeManagerImpl, InMemoryNodeManagerImplBuilder,
};
use opcua::server::node_manager::{
    HistoryNode, MethodCall, ParsedReadValueId, RequestContext, ServerContext, WriteNode,
};
use opcua::server::CreateMonitoredItem;
use opcua::sync::RwLock;
use opcua::types::{
    Argument, AttributeId, BrowseDirection, DataEncoding, DataTypeDefinition, DataValue, NodeClass,
    NodeId, NumericRange, ObjectId, ReadRawModifiedDetails, ReferenceTypeId, StatusCode,
    TimestampsToReturn, Variant,
};

use crate::convert::{data_type_of, from_variant, to_variant};
use crate::history::History;
use crate::model::{Model, Refusal, VarType};
use crate::scale::ScaleSpec;
use crate::structs::StructTypes;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

/// A method's declared arguments, read from its InputArguments/OutputArguments properties.
#[derive(Debug, Clone)]
pub struct MethodBinding {
    pub index: usize,
    pub inputs: Vec<Option<VarType>>,
    pub outputs: Vec<Option<VarType>>,
}

/// Node ids of this server instance mapped to the model (namespace indexes can change
/// between restarts, so this is rebuilt with every server).
#[derive(Debug, Default)]
pub struct Binding {
    pub vars: HashMap<NodeId, usize>,
    pub methods: HashMap<NodeId, MethodBinding>,
    pub ids: Vec<NodeId>,
    /// DataType of every structure variable (by model index).
    pub data_types: HashMap<usize, NodeId>,
}

pub type PlcNodeManager = InMemoryNodeManager<PlcNodeManagerImpl>;

pub struct PlcNodeManagerBuilder {
    pub imports: Vec<NodeSet2Import>,
    pub scale: Option<ScaleSpec>,
    pub model: Arc<Mutex<Model>>,
    pub online: Arc<std::sync::atomic::AtomicBool>,
    pub services: Services,
}

/// Counts of service operations the simulator answered, for the ground truth.
#[derive(Debug, Default)]
pub struct ServiceCounts {
    /// HistoryRead node operations answered from the history (Good or GoodNoData).
    pub history_reads: AtomicU64,
    /// Accepted Acknowledge calls on the alarm condition.
    pub acknowledgements: AtomicU64,
}

/// What outlives a server instance (restarts rebuild the server, not these).
#[derive(Debug, Clone, Default)]
pub struct Services {
    /// `None` with `--no-history`.
    pub history: Option<Arc<History>>,
    pub counts: Arc<ServiceCounts>,
    /// The TemperatureHigh alarm (inert when the nodesets lack its nodes).
    pub alarm: Option<Arc<crate::alarm::Alarm>>,
}

pub struct PlcNodeManagerImpl {
    namespaces: Vec<NamespaceMetadata>,
    model: Arc<Mutex<Model>>,
    online: Arc<std::sync::atomic::AtomicBool>,
    pub binding: OnceLock<Binding>,
    pub structs: StructTypes,
    pub services: Services,
}

impl InMemoryNodeManagerImplBuilder for PlcNodeManagerBuilder {
    type Impl = PlcNodeManagerImpl;

    fn build(self, context: ServerContext, address_space: &mut AddressSpace) -> Self::Impl {
        let mut uris: Vec<String> = Vec::new();
        {
            let mut type_tree = context.type_tree.write();
            for import in &self.imports {
                address_space.import_node_set(import, type_tree.namespaces_mut());
                for ns in import.get_own_namespaces() {
                    if !uris.contains(&ns) {
                        uris.push(ns);
                    }
                }
            }
            if self.scale.is_some() {
                uris.push(crate::scale::NAMESPACE.to_owned());
            }
        }
        let structs = StructTypes::build(address_space, &*context.type_tree.read());
        let mut namespaces = Vec::new();
        for uri in uris {
            let index = context
                .type_tree
                .write()
                .namespaces_mut()
                .add_namespace(&uri);
            address_space.add_namespace(&uri, index);
            namespaces.push(NamespaceMetadata {
                namespace_uri: uri,
                namespace_index: index,
                ..Default::default()
            });
        }
        if let Some(scale) = &self.scale {
            let ns = namespaces
                .iter()
                .find(|n| n.namespace_uri == crate::scale::NAMESPACE)
                .map(|n| n.namespace_index)
                .unwrap_or(1);
            let folder = NodeId::new(ns, "Scale");
            address_space.add_folder(&folder, "Scale", "Scale", &ObjectId::ObjectsFolder.into());
            let model = self.model.lock().unwrap_or_else(|e| e.into_inner());
            for i in 0..scale.count {
                let (name, ty) = crate::scale::node(i);
                let Some(idx) = model.var_index(&crate::scale::id(i)) else {
                    continue;
                };
                let value = to_variant(&model.vars[idx].value, ty);
                VariableBuilder::new(&NodeId::new(ns, name.clone()), name.as_str(), name.as_str())
                    .data_type(data_type_of(ty.kind))
                    .value(value)
                    .organized_by(&folder)
                    .insert(address_space);
            }
        }
        if let Some(ns) = namespaces.first() {
            crate::alarm::register_select_paths(&mut context.type_tree.write(), ns.namespace_index);
        }
        PlcNodeManagerImpl {
            namespaces,
            model: self.model,
            online: self.online,
            binding: OnceLock::new(),
            structs,
            services: self.services,
        }
    }
}

#[async_trait]
impl InMemoryNodeManagerImpl for PlcNodeManagerImpl {
    async fn init(&self, _address_space: &mut AddressSpace, _context: ServerContext) {}

    fn name(&self) -> &str {
        "simulation"
    }

    fn namespaces(&self) -> Vec<NamespaceMetadata> {
        self.namespaces.clone()
    }

    async fn read_values(
        &self,
        context: &RequestContext,
        address_space: &RwLock<AddressSpace>,
        nodes: &[&ParsedReadValueId],
        max_age: f64,
        timestamps_to_return: TimestampsToReturn,
    ) -> Vec<DataValue> {
        let address_space = address_space.read();
        nodes
            .iter()
            .map(|n| match address_space.validate_node_read(context, n) {
                Ok(node) => read_node_value(node, context, n, max_age, timestamps_to_return),
                Err(e) => DataValue {
                    status: Some(e),
                    ..DataValue::null()
                },
            })
            .collect()
    }

    async fn create_value_monitored_items(
        &self,
        context: &RequestContext,
        address_space: &RwLock<AddressSpace>,
        items: &mut [&mut &mut CreateMonitoredItem],
    ) {
        let to_read: Vec<_> = items.iter().map(|r| r.item_to_monitor()).collect();
        let values = self
            .read_values(
                context,
                address_space,
                &to_read,
                0.0,
                TimestampsToReturn::Both,
            )
            .await;
        for (value, item) in values.into_iter().zip(items.iter_mut()) {
            if value.status() != StatusCode::BadAttributeIdInvalid {
                item.set_initial_value(value);
            }
            item.set_status(StatusCode::Good);
        }
    }

    async fn write(
        &self,
        context: &RequestContext,
        address_space: &RwLock<AddressSpace>,
        nodes_to_write: &mut [&mut WriteNode],
    ) -> Result<(), StatusCode> {
        // When the Write reached us, before waiting for the address space (a tick of many
        // values may hold it): the write log's time, on the clock of the source timestamps.
        let arrived = chrono::Utc::now();
        let mut address_space = address_space.write();
        let type_tree = context.type_tree.read();
        let binding = self.binding.get();
        let mut alarm_event = None;
        for write in nodes_to_write.iter_mut() {
            // A read-only variable is "not writable" for everyone; async-opcua would answer
            // BadUserAccessDenied, which suggests that another user could write it.
            if let Some(NodeType::Variable(v)) = address_space.find(&write.value().node_id) {
                if write.value().attribute_id == AttributeId::Value
                    && !v.access_level().contains(AccessLevel::CURRENT_WRITE)
                {
                    write.set_status(StatusCode::BadNotWritable);
                    continue;
                }
            }
            let node = match address_space.validate_node_write(context, write.value(), &*type_tree)
            {
                Ok(node) => node,
                Err(e) => {
                    write.set_status(e);
                    continue;
                }
            };
            if node.node_class() != NodeClass::Variable
                || write.value().attribute_id != AttributeId::Value
            {
                write.set_status(StatusCode::BadNotWritable);
                continue;
            }
            let node_id = node.as_node().node_id().clone();
            if let Some(&idx) = binding.and_then(|b| b.vars.get(&node_id)) {
                if write.value().index_range.has_range() {
                    write.set_status(StatusCode::BadWriteNotSupported);
                    continue;
                }
                let mut model = self.model.lock().unwrap_or_else(|e| e.into_inner());
                let ty = model.vars[idx].ty;
                let online = self.online.load(std::sync::atomic::Ordering::Relaxed);
                let result = write
                    .value()
                    .value
                    .value
                    .as_ref()
                    .ok_or(Refusal::TypeMismatch)
                    .and_then(|v| from_variant(v, ty))
                    .and_then(|v| model.write(idx, v, online, arrived));
                if let Err(refusal) = result {
                    write.set_status(status_of(&refusal));
                    continue;
                }
                alarm_event = alarm_event.or_else(|| {
                    let alarm = self.services.alarm.as_ref().filter(|a| a.watches(idx))?;
                    alarm.evaluate(&model)
                });
            }
            match write_node_value(node, write.value()) {
                Ok(()) => write.set_status(StatusCode::Good),
                Err(e) => {
                    write.set_status(e);
                    continue;
                }
            }
            if let Some(value) = node.as_node().get_attribute(
                TimestampsToReturn::Both,
                AttributeId::Value,
                &NumericRange::None,
                &DataEncoding::Binary,
            ) {
                context
                    .subscriptions
                    .notify_data_change([(value, &node_id, AttributeId::Value)].into_iter());
            }
            if let Some(event) = alarm_event.take() {
                crate::alarm::emit(&context.subscriptions, &event);
            }
        }
        Ok(())
    }

    async fn history_read_raw_modified(
        &self,
        _context: &RequestContext,
        details: &ReadRawModifiedDetails,
        nodes: &mut [&mut &mut HistoryNode],
        timestamps_to_return: TimestampsToReturn,
    ) -> Result<(), StatusCode> {
        let Some(history) = &self.services.history else {
            return Err(StatusCode::BadHistoryOperationUnsupported);
        };
        if details.is_read_modified {
            return Err(StatusCode::BadHistoryOperationUnsupported);
        }
        let binding = self
            .binding
            .get()
            .ok_or(StatusCode::BadServerNotConnected)?;
        for node in nodes.iter_mut() {
            crate::history::answer(
                history,
                binding,
                details,
                node,
                timestamps_to_return,
                &self.services.counts.history_reads,
            );
        }
        Ok(())
    }

    async fn call(
        &self,
        context: &RequestContext,
        address_space: &RwLock<AddressSpace>,
        methods_to_call: &mut [&mut &mut MethodCall],
    ) -> Result<(), StatusCode> {
        let Some(binding) = self.binding.get() else {
            return Err(StatusCode::BadServerNotConnected);
        };
        for call in methods_to_call.iter_mut() {
            let Some(m) = binding.methods.get(call.method_id()) else {
                call.set_status(StatusCode::BadMethodInvalid);
                continue;
            };
            let args = call.arguments();
            if args.len() < m.inputs.len() {
                call.set_status(StatusCode::BadArgumentsMissing);
                continue;
            }
            if args.len() > m.inputs.len() {
                call.set_status(StatusCode::BadTooManyArguments);
                continue;
            }
            let results: Vec<StatusCode> = args
                .iter()
                .zip(&m.inputs)
                .map(|(a, ty)| match ty {
                    Some(ty) if from_variant(a, *ty).is_err() => StatusCode::BadTypeMismatch,
                    _ => StatusCode::Good,
                })
                .collect();
            if results.iter().any(|s| s.is_bad()) {
                call.set_argument_error(results);
                continue;
            }
            let outcome = self
                .model
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .call(m.index);
            match outcome {
                Ok((outputs, changed)) => {
                    let outputs = m
                        .outputs
                        .iter()
                        .enumerate()
                        .map(|(i, ty)| match (outputs.get(i), ty) {
                            (Some(v), Some(ty)) => to_variant(v, *ty),
                            _ => Variant::Empty,
                        })
                        .collect();
                    call.set_outputs(outputs);
                    call.set_status(StatusCode::Good);
                    self.push_changed(context, address_space, binding, &changed);
                }
                Err(r) => call.set_status(status_of(&r)),
            }
        }
        Ok(())
    }
}

impl PlcNodeManagerImpl {
    /// Model variable `idx`'s `value` as a variant: structures through the server's data type
    /// tree (a structure that cannot be encoded is logged and reads as null).
    pub fn variant(&self, idx: usize, value: &crate::model::Value, ty: VarType) -> Variant {
        if ty.kind != crate::model::Kind::Structure {
            return to_variant(value, ty);
        }
        let Some(dt) = self.binding.get().and_then(|b| b.data_types.get(&idx)) else {
            return Variant::Empty;
        };
        self.structs
            .to_variant(dt, value, ty.array.is_some())
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "structure value not encodable");
                Variant::Empty
            })
    }

    /// Stores the model's current values of `changed` variables in the address space and
    /// notifies subscribers (used after a method changed the model).
    fn push_changed(
        &self,
        context: &RequestContext,
        address_space: &RwLock<AddressSpace>,
        binding: &Binding,
        changed: &[usize],
    ) {
        if changed.is_empty() {
            return;
        }
        let now = opcua::types::DateTime::now();
        let values: Vec<(DataValue, &NodeId)> = {
            let model = self.model.lock().unwrap_or_else(|e| e.into_inner());
            changed
                .iter()
                .filter_map(|&i| {
                    let v = &model.vars[i];
                    let dv = DataValue {
                        value: Some(self.variant(i, &v.value, v.ty)),
                        status: Some(StatusCode::from(v.status)),
                        source_timestamp: Some(now),
                        server_timestamp: Some(now),
                        ..DataValue::null()
                    };
                    if let Some(h) = &self.services.history {
                        h.record(i, &dv);
                    }
                    binding.ids.get(i).map(|id| (dv, id))
                })
                .collect()
        };
        let mut address_space = address_space.write();
        for (dv, id) in &values {
            if let Some(NodeType::Variable(v)) = address_space.find_mut(*id) {
                v.set_data_value(dv.clone());
            }
        }
        drop(address_space);
        context.subscriptions.notify_data_change(
            values
                .into_iter()
                .map(|(dv, id)| (dv, id, AttributeId::Value)),
        );
    }
}

pub fn status_of(r: &Refusal) -> StatusCode {
    match r {
        Refusal::OutOfRange => StatusCode::BadOutOfRange,
        Refusal::NotWritable => StatusCode::BadNotWritable,
        Refusal::TypeMismatch => StatusCode::BadTypeMismatch,
        Refusal::UnknownMethod => StatusCode::BadMethodInvalid,
        Refusal::BadArguments => StatusCode::BadInvalidArgument,
    }
}

/// What the address space says about a variable: its type, initial value and writability.
pub fn variable_info(
    address_space: &AddressSpace,
    id: &NodeId,
) -> Option<(VarType, Option<Variant>, bool)> {
    let NodeType::Variable(v) = address_space.find(id)? else {
        return None;
    };
    let data_type = v.data_type();
    let kind = crate::convert::kind_of(&data_type).or_else(|| {
        matches!(
            address_space.find(&data_type),
            Some(NodeType::DataType(d))
                if matches!(d.data_type_definition(), Some(DataTypeDefinition::Structure(_)))
        )
        .then_some(crate::model::Kind::Structure)
    })?;
    let value = v.value(
        TimestampsToReturn::Neither,
        &NumericRange::None,
        &DataEncoding::Binary,
        0.0,
    );
    let array = if v.value_rank() >= 1 {
        let from_value = match &value.value {
            Some(Variant::Array(a)) => Some(a.values.len()),
            _ => None,
        };
        let from_dims = v
            .array_dimensions()
            .and_then(|d| d.first().copied())
            .map(|d| d as usize);
        Some(
            from_value
                .filter(|&n| n > 0)
                .or(from_dims.filter(|&n| n > 0))
                .unwrap_or(8),
        )
    } else {
        None
    };
    let writable = v.access_level().contains(AccessLevel::CURRENT_WRITE);
    Some((VarType { kind, array }, value.value, writable))
}

/// Reads a method's InputArguments / OutputArguments properties.
pub fn method_arguments(
    address_space: &AddressSpace,
    type_tree: &dyn opcua::nodes::TypeTree,
    method: &NodeId,
    property: &str,
) -> Vec<Option<VarType>> {
    let Some(NodeType::Variable(v)) = address_space.find_node_by_browse_name(
        method,
        Some((ReferenceTypeId::HasProperty, false)),
        type_tree,
        BrowseDirection::Forward,
        property,
    ) else {
        return Vec::new();
    };
    let value = v.value(
        TimestampsToReturn::Neither,
        &NumericRange::None,
        &DataEncoding::Binary,
        0.0,
    );
    let Some(Variant::Array(a)) = value.value else {
        return Vec::new();
    };
    a.values
        .iter()
        .map(|x| match x {
            Variant::ExtensionObject(e) => e.inner_as::<Argument>().and_then(|arg| {
                let kind = crate::convert::kind_of(&arg.data_type)?;
                let array = (arg.value_rank >= 1).then_some(0);
                Some(VarType { kind, array })
            }),
            _ => None,
        })
        .collect()
}

/// True if `id` is a method node.
pub fn is_method(address_space: &AddressSpace, id: &NodeId) -> bool {
    matches!(address_space.find(id), Some(NodeType::Method(_)))
}
