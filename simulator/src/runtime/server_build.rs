//! Building the async-opcua server for a [`SimConfig`] (endpoints, users, PKI, limits, our
//! node manager) and binding the model to it: node ids resolved in the server's namespace
//! table, values pushed, the listener served.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use opcua::nodes::NodeSet2Import;
use opcua::server::node_manager::memory::InMemoryNodeManagerBuilder;
use opcua::server::{
    Server, ServerBuilder, ServerEndpoint, ServerHandle, ServerUserToken, ANONYMOUS_USER_TOKEN_ID,
};
use opcua::types::NodeId;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::auth::{CountingAuth, Logins};
use super::config::SimConfig;
use super::shared::{Live, Shared};
use crate::error::SimError;
use crate::model::Model;
use crate::server::{
    method_arguments, Binding, MethodBinding, PlcNodeManager, PlcNodeManagerBuilder, Services,
};
use opcua::nodes::AccessLevel;
use opcua::server::diagnostics::DiagnosticsNodeManagerBuilder;

use super::config::BOTTLING_LINE_NAMESPACE;
use crate::alarm::{self, AlarmIds};
use crate::core_wrap::{link_condition_methods, AlarmCoreBuilder, CoreNodeManager};
use opcua::server::address_space::NodeType;

/// Resolves `nsu=URI;s=...` (or `ns=N;...`, or a bare `i=...`) against this server's
/// namespace table.
pub fn resolve(id: &str, ns: &dyn Fn(&str) -> Option<u16>) -> Option<NodeId> {
    if let Some(rest) = id.strip_prefix("nsu=") {
        let (uri, ident) = rest.split_once(';')?;
        let idx = if uri == "http://opcfoundation.org/UA/" {
            0
        } else {
            ns(uri)?
        };
        return NodeId::from_str(&format!("ns={idx};{ident}")).ok();
    }
    NodeId::from_str(id).ok()
}

/// Builds (does not start) a server for `config` advertising `port`: one endpoint per
/// security entry, the users, the limits, and our node manager importing `imports`.
pub(super) fn build_server(
    config: &SimConfig,
    imports: Vec<NodeSet2Import>,
    port: u16,
    model: &Arc<Mutex<Model>>,
    online: &Arc<AtomicBool>,
    logins: &Arc<Logins>,
    services: &Services,
) -> Result<(Server, ServerHandle, Arc<PlcNodeManager>), SimError> {
    let url = format!("opc.tcp://{}:{}/", config.host, port);
    let mut token_ids: Vec<String> = Vec::new();
    if config.anonymous {
        token_ids.push(ANONYMOUS_USER_TOKEN_ID.to_owned());
    }
    token_ids.extend(config.users.iter().map(|(u, _)| u.clone()));
    let mut builder = ServerBuilder::new()
        .application_name("opcua-connector simulator")
        .application_uri("urn:opcua-connector:simulator")
        .product_uri("urn:opcua-connector:simulator")
        .create_sample_keypair(true)
        .pki_dir(&config.pki_dir)
        .host(config.host.clone())
        .port(port)
        .trust_client_certs(config.auto_trust_clients)
        .discovery_urls(vec![url])
        .max_message_size(config.limits.max_message_size)
        .max_chunk_count(config.limits.max_chunk_count)
        .max_array_length(1_000_000)
        .max_sessions(config.limits.max_sessions)
        .diagnostics_enabled(false)
        // whole milliseconds, rounded up: async-opcua's subscription timer
        .subscription_poll_interval_ms(config.publish_tick.as_nanos().div_ceil(1_000_000) as u64)
        .with_authenticator(Arc::new(CountingAuth::new(&config.users, logins.clone())))
        // async-opcua's core node manager, wrapped so that Acknowledge and ConditionRefresh
        // reach the alarm, then its diagnostics node manager, as `ServerBuilder::new` has them.
        .without_node_managers()
        .with_node_manager(InMemoryNodeManagerBuilder::new(AlarmCoreBuilder {
            services: services.clone(),
        }))
        .with_node_manager(DiagnosticsNodeManagerBuilder)
        .with_node_manager(InMemoryNodeManagerBuilder::new(PlcNodeManagerBuilder {
            imports,
            scale: config.scale,
            model: model.clone(),
            online: online.clone(),
            services: services.clone(),
        }));
    for (user, pass) in &config.users {
        builder = builder.add_user_token(
            user.clone(),
            ServerUserToken::user_pass(user.clone(), pass.clone()),
        );
    }
    for (i, (policy, mode)) in config.security.iter().enumerate() {
        builder = builder.add_endpoint(
            format!("ep{i}"),
            ServerEndpoint::new("/", *policy, *mode, &token_ids),
        );
    }
    if !config.security.is_empty() {
        builder = builder.default_endpoint("ep0");
    }
    {
        let l = builder.limits_mut();
        l.subscriptions.min_sampling_interval_ms = config.limits.min_sampling_interval_ms;
        l.subscriptions.min_publishing_interval_ms = config.publish_tick.as_secs_f64() * 1000.0;
        l.subscriptions.max_monitored_items_per_sub = config.limits.max_monitored_items_per_sub;
        l.subscriptions.max_queued_notifications = config.limits.max_queued_notifications;
        l.subscriptions.max_monitored_item_queue_size = config.limits.max_monitored_item_queue_size;
        l.operational.max_monitored_items_per_call = config.limits.max_monitored_items_per_call;
        l.operational.max_nodes_per_read = config.limits.max_nodes_per_read;
        l.operational.max_nodes_per_browse = config.limits.max_nodes_per_browse;
        l.operational.max_nodes_per_method_call = 1_000;
        l.operational
            .max_nodes_per_translate_browse_paths_to_node_ids = 10_000;
        l.operational.max_nodes_per_register_nodes = 100_000;
    }
    // async-opcua prints every namespace it imports to stdout; our stdout carries only the
    // endpoint line, so keep stdout quiet while the nodesets are imported.
    let quiet = gag::Gag::stdout().ok();
    let built = builder.build();
    drop(quiet);
    let (server, handle) = built.map_err(SimError::Server)?;
    let nm = handle
        .node_managers()
        .get_of_type::<PlcNodeManager>()
        .ok_or_else(|| SimError::Server("node manager missing".into()))?;
    Ok((server, handle, nm))
}

/// Binds the model to a freshly built server, pushes the current values and serves.
pub(super) fn go_live(
    shared: &Arc<Shared>,
    server: Server,
    handle: ServerHandle,
    nm: Arc<PlcNodeManager>,
    listener: TcpListener,
) -> JoinHandle<Result<(), String>> {
    let binding = {
        let model = shared.model.lock().unwrap_or_else(|e| e.into_inner());
        let ns = |uri: &str| handle.get_namespace_index(uri);
        let ids: Vec<NodeId> = model
            .vars
            .iter()
            .map(|v| resolve(&v.id, &ns).unwrap_or_else(NodeId::null))
            .collect();
        let asp = nm.address_space().read();
        let type_tree = handle.type_tree().read();
        let methods = model
            .methods
            .iter()
            .enumerate()
            .filter_map(|(index, m)| {
                let id = resolve(&m.id, &ns)?;
                let inputs = method_arguments(&asp, &*type_tree, &id, "InputArguments");
                let outputs = method_arguments(&asp, &*type_tree, &id, "OutputArguments");
                Some((
                    id,
                    MethodBinding {
                        index,
                        inputs,
                        outputs,
                    },
                ))
            })
            .collect();
        let data_types = model
            .vars
            .iter()
            .enumerate()
            .filter(|(_, v)| v.ty.kind == crate::model::Kind::Structure)
            .filter_map(|(i, _)| match asp.find(&ids[i]) {
                Some(opcua::server::address_space::NodeType::Variable(v)) => {
                    Some((i, v.data_type()))
                }
                _ => None,
            })
            .collect();
        Binding {
            data_types,
            vars: ids
                .iter()
                .enumerate()
                .map(|(i, id)| (id.clone(), i))
                .collect(),
            methods,
            ids,
        }
    };
    if let Some(history) = &shared.services.history {
        let mut asp = nm.address_space().write();
        for (i, id) in binding.ids.iter().enumerate() {
            if !history.is_historized(i) {
                continue;
            }
            if let Some(NodeType::Variable(v)) = asp.find_mut(id) {
                v.set_historizing(true);
                v.set_access_level(v.access_level() | AccessLevel::HISTORY_READ);
                v.set_user_access_level(v.user_access_level() | AccessLevel::HISTORY_READ);
            }
        }
    }
    if let Some(alarm) = &shared.services.alarm {
        let ns = |uri: &str| handle.get_namespace_index(uri);
        let id = |s: &str| resolve(&format!("nsu={BOTTLING_LINE_NAMESPACE};s={s}"), &ns);
        let asp = nm.address_space().read();
        let ids = match (id(alarm::CONDITION), id(alarm::SOURCE)) {
            (Some(condition), Some(source))
                if matches!(asp.find(&condition), Some(NodeType::Object(_))) =>
            {
                Some(AlarmIds { condition, source })
            }
            _ => None,
        };
        drop(asp);
        let core = handle.node_managers().get_of_type::<CoreNodeManager>();
        if let (Some(ids), Some(core)) = (&ids, core) {
            link_condition_methods(&core, ids);
        }
        alarm.set_ids(ids);
    }
    *shared.ids.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(binding.ids.clone());
    let _ = nm.inner().binding.set(binding);
    *shared.live.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(Live {
        nm,
        subscriptions: handle.subscriptions().clone(),
    }));
    shared.push_all();
    shared.online.store(true, Ordering::Relaxed);
    tokio::spawn(server.run_with(listener))
}
