//! Starting, ticking, restarting and stopping the simulator.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use opcua::crypto::SecurityPolicy;
use opcua::nodes::NodeSet2Import;
use opcua::server::node_manager::memory::InMemoryNodeManagerBuilder;
use opcua::server::{
    ServerBuilder, ServerEndpoint, ServerHandle, ServerUserToken, SubscriptionCache,
    ANONYMOUS_USER_TOKEN_ID,
};
use opcua::types::{DataValue, DateTime, MessageSecurityMode, NodeId, StatusCode};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::convert::{initial_value, to_variant};
use crate::error::{line_of, Problem, SimError};
use crate::faults::{Fault, FaultKind};
use crate::model::{Model, Value};
use crate::profile::{NodeInfo, Profile};
use crate::scale::ScaleSpec;
use crate::server::{
    is_method, method_arguments, variable_info, Binding, MethodBinding, PlcNodeManager,
    PlcNodeManagerBuilder,
};

/// The bundled bottling-line model and its simulation profile, compiled in so that the
/// binary and the connector's `demo` work from any directory.
pub const BOTTLING_LINE_NODESET: &str = include_str!("../../nodesets/bottling-line.NodeSet2.xml");
pub const BOTTLING_LINE_PROFILE: &str = include_str!("../../nodesets/bottling-line.sim.toml");
/// Namespace URI of the bottling-line model.
pub const BOTTLING_LINE_NAMESPACE: &str = "urn:opcua-connector:bottling-line";

/// An input text and the name it is reported under in errors.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub text: String,
}

impl Source {
    pub fn read(path: impl Into<PathBuf>) -> Result<Self, SimError> {
        let path = path.into();
        let text = std::fs::read_to_string(&path).map_err(|source| SimError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Source {
            name: path.display().to_string(),
            text,
        })
    }
}

/// Server limits; the defaults carry 100,000 monitored items and large messages.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_monitored_items_per_sub: usize,
    pub max_monitored_items_per_call: usize,
    pub max_message_size: usize,
    pub max_chunk_count: usize,
    pub max_queued_notifications: usize,
    pub max_monitored_item_queue_size: usize,
    pub max_sessions: usize,
    pub max_nodes_per_read: usize,
    pub max_nodes_per_browse: usize,
    /// Fastest sampling interval granted. 0 lets a client ask for every change as it
    /// happens; async-opcua otherwise re-times samples that come faster than the granted
    /// interval, which would erase the scan jitter of the source timestamps.
    pub min_sampling_interval_ms: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_monitored_items_per_sub: 200_000,
            max_monitored_items_per_call: 10_000,
            max_message_size: 64 << 20,
            max_chunk_count: 4096,
            max_queued_notifications: 200,
            max_monitored_item_queue_size: 1_000,
            max_sessions: 100,
            max_nodes_per_read: 100_000,
            max_nodes_per_browse: 10_000,
            min_sampling_interval_ms: 0.0,
        }
    }
}

/// Everything `start` needs.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub nodesets: Vec<Source>,
    pub profile: Option<Source>,
    pub host: String,
    /// 0 picks a free port.
    pub port: u16,
    pub scale: Option<ScaleSpec>,
    pub security: Vec<(SecurityPolicy, MessageSecurityMode)>,
    /// Username/password users.
    pub users: Vec<(String, String)>,
    pub anonymous: bool,
    pub pki_dir: PathBuf,
    /// Trust every client certificate (default); otherwise only those in `pki_dir/trusted`.
    pub auto_trust_clients: bool,
    pub faults: Vec<Fault>,
    /// Overrides the profile's seed.
    pub seed: Option<u64>,
    pub limits: Limits,
    /// Written every 2 s and at exit when set.
    pub stats_file: Option<PathBuf>,
}

impl SimConfig {
    /// The bundled bottling line on a free loopback port, every endpoint, anonymous access.
    pub fn bottling_line(pki_dir: impl Into<PathBuf>) -> Self {
        SimConfig {
            nodesets: vec![Source {
                name: "nodesets/bottling-line.NodeSet2.xml".into(),
                text: BOTTLING_LINE_NODESET.into(),
            }],
            profile: Some(Source {
                name: "nodesets/bottling-line.sim.toml".into(),
                text: BOTTLING_LINE_PROFILE.into(),
            }),
            host: "127.0.0.1".into(),
            port: 0,
            scale: None,
            security: all_security(),
            users: Vec::new(),
            anonymous: true,
            pki_dir: pki_dir.into(),
            auto_trust_clients: true,
            faults: Vec::new(),
            seed: None,
            limits: Limits::default(),
            stats_file: None,
        }
    }
}

/// None, and Basic256Sha256 / Aes128_Sha256_RsaOaep / Aes256_Sha256_RsaPss with Sign and
/// SignAndEncrypt.
pub fn all_security() -> Vec<(SecurityPolicy, MessageSecurityMode)> {
    let mut v = vec![(SecurityPolicy::None, MessageSecurityMode::None)];
    for p in [
        SecurityPolicy::Basic256Sha256,
        SecurityPolicy::Aes128Sha256RsaOaep,
        SecurityPolicy::Aes256Sha256RsaPss,
    ] {
        v.push((p, MessageSecurityMode::Sign));
        v.push((p, MessageSecurityMode::SignAndEncrypt));
    }
    v
}

/// Parses `None`, `Basic256Sha256:SignAndEncrypt`, ... (policy names with `_` or `-`).
pub fn parse_security(s: &str) -> Result<(SecurityPolicy, MessageSecurityMode), String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok((SecurityPolicy::None, MessageSecurityMode::None));
    }
    let (p, m) = s
        .split_once(':')
        .ok_or_else(|| format!("security {s:?}: expected None or POLICY:MODE"))?;
    let policy = SecurityPolicy::from_str(&p.replace('_', "-"));
    let policy = match policy {
        Ok(p) if p != SecurityPolicy::Unknown && p != SecurityPolicy::None => p,
        _ => return Err(format!("security {s:?}: unknown policy {p:?}")),
    };
    let mode = match m {
        "Sign" => MessageSecurityMode::Sign,
        "SignAndEncrypt" => MessageSecurityMode::SignAndEncrypt,
        _ => {
            return Err(format!(
                "security {s:?}: mode must be Sign or SignAndEncrypt"
            ))
        }
    };
    Ok((policy, mode))
}

/// Ground truth, readable by tests and written to `--stats-file`.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub endpoint: String,
    pub uptime_s: f64,
    pub online: bool,
    pub restarts: u64,
    /// CPU seconds (user + system) of the whole process.
    pub cpu_s: f64,
    pub groups: Vec<GroupStats>,
    pub nodes: BTreeMap<String, NodeStats>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupStats {
    pub name: String,
    pub rate_ms: f64,
    pub ticks: u64,
    pub late_ticks: u64,
    pub running: bool,
    pub vars: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NodeStats {
    pub produced: u64,
    pub produced_offline: u64,
    /// Client writes that reached the model (accepted or refused), and those accepted.
    pub write_attempts: u64,
    pub writes: u64,
    pub last: Value,
    pub status: u32,
}

struct Live {
    nm: Arc<PlcNodeManager>,
    subscriptions: Arc<SubscriptionCache>,
}

struct Shared {
    model: Arc<Mutex<Model>>,
    live: RwLock<Option<Arc<Live>>>,
    ids: RwLock<Arc<Vec<NodeId>>>,
    online: Arc<AtomicBool>,
    frozen: AtomicBool,
    status_override: AtomicU32,
    restarts: AtomicU64,
    late: Vec<AtomicU64>,
    /// Each variable's type; fixed once the model is built.
    tys: Vec<crate::model::VarType>,
    started: Instant,
    endpoint: String,
}

/// A running simulator. Dropping it does not stop it: cancel the token given to `start`.
pub struct Simulator {
    shared: Arc<Shared>,
    faults: mpsc::UnboundedSender<FaultKind>,
    task: JoinHandle<Result<(), SimError>>,
    port: u16,
}

impl Simulator {
    /// `opc.tcp://HOST:PORT/`, as the server advertises it.
    pub fn endpoint_url(&self) -> &str {
        &self.shared.endpoint
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs a fault now (in addition to the schedule).
    pub fn inject(&self, fault: FaultKind) {
        let _ = self.faults.send(fault);
    }

    /// Ground truth of one node (`nsu=...` form).
    pub fn node_stats(&self, id: &str) -> Option<NodeStats> {
        let model = self.shared.model.lock().unwrap_or_else(|e| e.into_inner());
        let v = &model.vars[model.var_index(id)?];
        Some(NodeStats {
            produced: v.produced,
            produced_offline: v.produced_offline,
            write_attempts: v.write_attempts,
            writes: v.writes,
            last: v.value.clone(),
            status: v.status,
        })
    }

    /// How many times method `id` (`nsu=...` form) ran.
    pub fn method_calls(&self, id: &str) -> Option<u64> {
        let model = self.shared.model.lock().unwrap_or_else(|e| e.into_inner());
        Some(model.methods[model.method_index(id)?].calls)
    }

    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Waits until the simulator stopped (after the shutdown token was cancelled).
    pub async fn wait(self) -> Result<(), SimError> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(SimError::Server(format!("simulator task failed: {e}"))),
        }
    }
}

impl Shared {
    fn stats(&self) -> Stats {
        let model = self.model.lock().unwrap_or_else(|e| e.into_inner());
        Stats {
            endpoint: self.endpoint.clone(),
            uptime_s: self.started.elapsed().as_secs_f64(),
            online: self.online.load(Ordering::Relaxed),
            restarts: self.restarts.load(Ordering::Relaxed),
            cpu_s: process_cpu_seconds(),
            groups: model
                .groups
                .iter()
                .enumerate()
                .map(|(i, g)| GroupStats {
                    name: g.name.clone(),
                    rate_ms: g.rate.as_secs_f64() * 1000.0,
                    ticks: g.ticks,
                    late_ticks: self.late.get(i).map_or(0, |l| l.load(Ordering::Relaxed)),
                    running: g.running,
                    vars: g.vars.len(),
                })
                .collect(),
            nodes: model
                .vars
                .iter()
                .map(|v| {
                    (
                        v.id.clone(),
                        NodeStats {
                            produced: v.produced,
                            produced_offline: v.produced_offline,
                            write_attempts: v.write_attempts,
                            writes: v.writes,
                            last: v.value.clone(),
                            status: v.status,
                        },
                    )
                })
                .collect(),
        }
    }

    /// Pushes model updates (or every variable's current value) into the live address space.
    fn push(&self, updates: impl Iterator<Item = (usize, Value, u32, chrono::DateTime<Utc>)>) {
        let live = self.live.read().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(live) = live else { return };
        let ids = self.ids.read().unwrap_or_else(|e| e.into_inner()).clone();
        let tys = &self.tys;
        let overridden = self.status_override.load(Ordering::Relaxed);
        let now = DateTime::now();
        let values: Vec<(&NodeId, DataValue)> = updates
            .filter_map(|(idx, value, status, t)| {
                let status = if overridden != 0 { overridden } else { status };
                Some((
                    ids.get(idx)?,
                    DataValue {
                        value: Some(to_variant(&value, tys[idx])),
                        status: Some(StatusCode::from(status)),
                        source_timestamp: Some(DateTime::from(t)),
                        server_timestamp: Some(now),
                        ..DataValue::null()
                    },
                ))
            })
            .collect();
        if values.is_empty() {
            return;
        }
        if let Err(e) = live.nm.set_values(
            &live.subscriptions,
            values.into_iter().map(|(id, dv)| (id, None, dv)),
        ) {
            warn!(error = %e, "could not update the address space");
        }
    }

    /// Pushes every variable's current value and status (after a (re)start or a status fault).
    fn push_all(&self) {
        let all: Vec<_> = {
            let model = self.model.lock().unwrap_or_else(|e| e.into_inner());
            let now = Utc::now();
            model
                .vars
                .iter()
                .enumerate()
                .map(|(i, v)| (i, v.value.clone(), v.status, now))
                .collect()
        };
        self.push(all.into_iter());
    }
}

/// Starts the simulator: loads nodesets and profile, binds the endpoint and begins ticking.
/// Bad input returns `SimError::Input` naming the file, line and element.
pub async fn start(config: SimConfig, shutdown: CancellationToken) -> Result<Simulator, SimError> {
    if config.nodesets.is_empty() {
        return Err(SimError::input(
            "--nodeset",
            None,
            "nodesets",
            "at least one nodeset is needed",
        ));
    }
    let profile = match &config.profile {
        Some(p) => Profile::parse(&p.name, &p.text)?,
        None => Profile::empty(),
    };
    let imports = load_imports(&config.nodesets)?;
    let seed = config.seed.unwrap_or(profile.seed);
    let mut model = Model::new(seed, profile.scan_jitter);
    if let Some(scale) = config.scale {
        crate::scale::add_to_model(&mut model, scale);
    }
    let model = Arc::new(Mutex::new(model));
    let online = Arc::new(AtomicBool::new(false));

    let addr = format!("{}:{}", config.host, config.port);
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|source| SimError::Bind {
            addr: addr.clone(),
            source,
        })?;
    let port = listener
        .local_addr()
        .map_err(|source| SimError::Bind {
            addr: addr.clone(),
            source,
        })?
        .port();
    let endpoint = format!("opc.tcp://{}:{}/", config.host, port);

    let (server, handle, nm) = build_server(&config, imports, port, &model, &online)?;
    check_imported(&config.nodesets, &handle)?;
    {
        let asp = nm.address_space().read();
        let ns = |uri: &str| handle.get_namespace_index(uri);
        let mut m = model.lock().unwrap_or_else(|e| e.into_inner());
        profile.build_model(
            &mut m,
            |id| {
                let node = resolve(id, &ns)?;
                let (ty, value, writable) = variable_info(&asp, &node)?;
                Some(NodeInfo {
                    ty,
                    initial: initial_value(value.as_ref(), ty),
                    writable,
                })
            },
            |id| resolve(id, &ns).is_some_and(|n| is_method(&asp, &n)),
        )?;
    }
    let (late, tys) = {
        let m = model.lock().unwrap_or_else(|e| e.into_inner());
        let late = (0..m.groups.len()).map(|_| AtomicU64::new(0)).collect();
        (late, m.vars.iter().map(|v| v.ty).collect())
    };
    let shared = Arc::new(Shared {
        model,
        live: RwLock::new(None),
        ids: RwLock::new(Arc::new(Vec::new())),
        online,
        frozen: AtomicBool::new(false),
        status_override: AtomicU32::new(0),
        restarts: AtomicU64::new(0),
        late,
        tys,
        started: Instant::now(),
        endpoint: endpoint.clone(),
    });
    let server_task = go_live(&shared, server, handle.clone(), nm, listener);
    info!(endpoint = %endpoint, "simulator listening");

    let (fault_tx, fault_rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(supervise(
        shared.clone(),
        config,
        port,
        profile.faults.clone(),
        Endpoint {
            handle,
            task: server_task,
        },
        fault_rx,
        shutdown,
    ));
    Ok(Simulator {
        shared,
        faults: fault_tx,
        task,
        port,
    })
}

/// Runs until `shutdown` is cancelled.
pub async fn run(config: SimConfig, shutdown: CancellationToken) -> Result<(), SimError> {
    start(config, shutdown).await?.wait().await
}

fn load_imports(nodesets: &[Source]) -> Result<Vec<NodeSet2Import>, SimError> {
    let mut problems = Vec::new();
    let mut imports = Vec::new();
    for ns in nodesets {
        // Parse once with the XML layer first: its errors carry the position of the element.
        if let Err(e) = opcua::xml::load_nodeset2_file(&ns.text) {
            problems.push(xml_problem(ns, &e));
            continue;
        }
        match NodeSet2Import::new_str("en", &ns.text, Vec::new()) {
            Ok(i) => imports.push(i),
            Err(e) => problems.push(Problem {
                source: ns.name.clone(),
                line: None,
                element: "UANodeSet".into(),
                message: format!("not a valid NodeSet2 file: {e}"),
            }),
        }
    }
    if problems.is_empty() {
        Ok(imports)
    } else {
        Err(SimError::Input(problems))
    }
}

fn xml_problem(ns: &Source, e: &opcua::xml::XmlError) -> Problem {
    let (line, element) = if e.span.end > 0 {
        let start = e.span.start.min(ns.text.len());
        let end = e.span.end.min(ns.text.len()).min(start + 160);
        let snippet = ns
            .text
            .get(start..end)
            .unwrap_or("")
            .split('\n')
            .next()
            .unwrap_or("");
        (Some(line_of(&ns.text, start)), snippet.trim().to_owned())
    } else {
        match &e.error {
            opcua::xml::XmlErrorInner::Xml(r) => {
                (Some(r.pos().row as usize), "document".to_owned())
            }
            _ => (None, "document".to_owned()),
        }
    };
    Problem {
        source: ns.name.clone(),
        line,
        element,
        message: format!("not a valid NodeSet2 file: {e}"),
    }
}

/// Every node of every nodeset must have made it into the address space; async-opcua skips
/// nodes it cannot import with only a log line, which we turn into an input error.
fn check_imported(nodesets: &[Source], handle: &ServerHandle) -> Result<(), SimError> {
    let nm = handle
        .node_managers()
        .get_of_type::<PlcNodeManager>()
        .ok_or_else(|| SimError::Server("node manager missing".into()))?;
    let asp = nm.address_space().read();
    let mut problems = Vec::new();
    for ns in nodesets {
        let Ok(doc) = opcua::xml::load_nodeset2_file(&ns.text) else {
            continue;
        };
        let Some(set) = doc.node_set else { continue };
        let uris: Vec<String> = set
            .namespace_uris
            .as_ref()
            .map(|u| u.uris.clone())
            .unwrap_or_default();
        for node in &set.nodes {
            let raw = &node.base().node_id.0;
            let resolved = file_node_id(raw, &uris)
                .and_then(|id| resolve(&id, &|u| handle.get_namespace_index(u)));
            let present = resolved.as_ref().is_some_and(|id| asp.find(id).is_some());
            if !present {
                let pattern = format!("NodeId=\"{raw}\"");
                let line = ns.text.find(&pattern).map(|o| line_of(&ns.text, o));
                problems.push(Problem {
                    source: ns.name.clone(),
                    line,
                    element: format!("<{} NodeId=\"{raw}\" BrowseName=\"{}\">", kind_name(node), node.base().browse_name.0),
                    message: "node could not be imported (bad data type, value or reference; see the warning logged above)".into(),
                });
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(SimError::Input(problems))
    }
}

fn kind_name(node: &opcua::xml::schema::ua_node_set::UANode) -> &'static str {
    use opcua::xml::schema::ua_node_set::UANode;
    match node {
        UANode::Object(_) => "UAObject",
        UANode::Variable(_) => "UAVariable",
        UANode::Method(_) => "UAMethod",
        UANode::View(_) => "UAView",
        UANode::ObjectType(_) => "UAObjectType",
        UANode::VariableType(_) => "UAVariableType",
        UANode::DataType(_) => "UADataType",
        UANode::ReferenceType(_) => "UAReferenceType",
    }
}

/// A node id as written in a nodeset file (`ns=1;s=X`, index into the file's NamespaceUris)
/// in namespace-URI form.
fn file_node_id(raw: &str, uris: &[String]) -> Option<String> {
    let Some(rest) = raw.strip_prefix("ns=") else {
        return Some(format!("nsu=http://opcfoundation.org/UA/;{raw}"));
    };
    let (idx, id) = rest.split_once(';')?;
    let idx: usize = idx.parse().ok()?;
    let uri = if idx == 0 {
        "http://opcfoundation.org/UA/"
    } else {
        uris.get(idx - 1)?
    };
    Some(format!("nsu={uri};{id}"))
}

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

fn build_server(
    config: &SimConfig,
    imports: Vec<NodeSet2Import>,
    port: u16,
    model: &Arc<Mutex<Model>>,
    online: &Arc<AtomicBool>,
) -> Result<(opcua::server::Server, ServerHandle, Arc<PlcNodeManager>), SimError> {
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
        .with_node_manager(InMemoryNodeManagerBuilder::new(PlcNodeManagerBuilder {
            imports,
            scale: config.scale,
            model: model.clone(),
            online: online.clone(),
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
    if let Some(first) = config.security.first() {
        let _ = first;
        builder = builder.default_endpoint("ep0");
    }
    {
        let l = builder.limits_mut();
        l.subscriptions.min_sampling_interval_ms = config.limits.min_sampling_interval_ms;
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
fn go_live(
    shared: &Arc<Shared>,
    server: opcua::server::Server,
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
        Binding {
            vars: ids
                .iter()
                .enumerate()
                .map(|(i, id)| (id.clone(), i))
                .collect(),
            methods,
            ids,
        }
    };
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

/// A running server: its handle and the task serving it.
struct Endpoint {
    handle: ServerHandle,
    task: JoinHandle<Result<(), String>>,
}

async fn supervise(
    shared: Arc<Shared>,
    config: SimConfig,
    port: u16,
    mut schedule: Vec<Fault>,
    endpoint: Endpoint,
    mut on_demand: mpsc::UnboundedReceiver<FaultKind>,
    shutdown: CancellationToken,
) -> Result<(), SimError> {
    let Endpoint {
        mut handle,
        task: mut server_task,
    } = endpoint;
    let mut server_done = false;
    schedule.extend(config.faults.iter().cloned());
    schedule.sort_by_key(|f| f.at);
    let start = tokio::time::Instant::now();
    let ticks = spawn_tickers(&shared, &shutdown);
    let stats_writer = config.stats_file.clone().map(|path| {
        let shared = shared.clone();
        let token = shutdown.clone();
        tokio::spawn(async move {
            loop {
                write_stats(&shared, &path);
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
            write_stats(&shared, &path);
        })
    });
    let mut next = 0;
    let result = loop {
        let due = schedule.get(next).map(|f| start + f.at);
        let fault = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = async { match due { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                next += 1;
                schedule[next - 1].kind.clone()
            }
            Some(f) = on_demand.recv() => f,
            r = &mut server_task, if !server_done => {
                server_done = true;
                break Err(SimError::Server(match r {
                    Ok(Ok(())) => "server stopped unexpectedly".into(),
                    Ok(Err(e)) => e,
                    Err(e) => e.to_string(),
                }));
            }
        };
        info!(fault = ?fault, "injecting fault");
        match fault {
            FaultKind::Restart { .. } | FaultKind::CloseSessions => {
                let down = match fault {
                    FaultKind::Restart { down } => down,
                    _ => Duration::ZERO,
                };
                shared.online.store(false, Ordering::Relaxed);
                *shared.live.write().unwrap_or_else(|e| e.into_inner()) = None;
                handle.cancel();
                let _ = (&mut server_task).await;
                server_done = true;
                tokio::select! {
                    _ = shutdown.cancelled() => break Ok(()),
                    _ = tokio::time::sleep(down) => {}
                }
                match restart(&shared, &config, port).await {
                    Ok((h, t)) => {
                        handle = h;
                        server_task = t;
                        server_done = false;
                        shared.restarts.fetch_add(1, Ordering::Relaxed);
                        info!(endpoint = %shared.endpoint, "endpoint back");
                    }
                    Err(e) => break Err(e),
                }
            }
            FaultKind::Freeze { duration } => {
                shared.frozen.store(true, Ordering::Relaxed);
                let s = shared.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(duration).await;
                    s.frozen.store(false, Ordering::Relaxed);
                });
            }
            FaultKind::Status { duration, code } => {
                shared.status_override.store(code, Ordering::Relaxed);
                shared.push_all();
                let s = shared.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(duration).await;
                    s.status_override.store(0, Ordering::Relaxed);
                    s.push_all();
                });
            }
        }
    };
    shutdown.cancel();
    shared.online.store(false, Ordering::Relaxed);
    handle.cancel();
    // A finished JoinHandle must not be polled again.
    if !server_done {
        let _ = tokio::time::timeout(Duration::from_secs(5), server_task).await;
    }
    for t in ticks {
        let _ = t.await;
    }
    if let Some(w) = stats_writer {
        let _ = w.await;
    }
    result
}

async fn restart(
    shared: &Arc<Shared>,
    config: &SimConfig,
    port: u16,
) -> Result<(ServerHandle, JoinHandle<Result<(), String>>), SimError> {
    let imports = load_imports(&config.nodesets)?;
    let (server, handle, nm) = build_server(config, imports, port, &shared.model, &shared.online)?;
    let addr = format!("{}:{}", config.host, port);
    let deadline = Instant::now() + Duration::from_secs(10);
    let listener = loop {
        match TcpListener::bind(&addr).await {
            Ok(l) => break l,
            Err(e) if Instant::now() < deadline => {
                warn!(error = %e, addr = %addr, "rebinding the endpoint, retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(source) => return Err(SimError::Bind { addr, source }),
        }
    };
    let task = go_live(shared, server, handle.clone(), nm, listener);
    Ok((handle, task))
}

fn spawn_tickers(shared: &Arc<Shared>, shutdown: &CancellationToken) -> Vec<JoinHandle<()>> {
    let groups: Vec<(usize, Duration)> = {
        let m = shared.model.lock().unwrap_or_else(|e| e.into_inner());
        m.groups
            .iter()
            .enumerate()
            .map(|(i, g)| (i, g.rate))
            .collect()
    };
    groups
        .into_iter()
        .map(|(g, rate)| {
            let shared = shared.clone();
            let token = shutdown.clone();
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(rate);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                let wall0 = Utc::now();
                let mono0 = tokio::time::Instant::now();
                loop {
                    let at = tokio::select! {
                        _ = token.cancelled() => break,
                        at = interval.tick() => at,
                    };
                    if at.elapsed() > rate / 2 {
                        shared.late[g].fetch_add(1, Ordering::Relaxed);
                    }
                    if shared.frozen.load(Ordering::Relaxed) {
                        continue;
                    }
                    let scheduled = wall0
                        + chrono::Duration::from_std(at.duration_since(mono0)).unwrap_or_default();
                    let online = shared.online.load(Ordering::Relaxed);
                    // On the blocking pool: a tick of 10,000 values keeps a thread busy for
                    // milliseconds, which must not be a runtime worker that serves clients.
                    let s2 = shared.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        let updates = {
                            let mut m = s2.model.lock().unwrap_or_else(|e| e.into_inner());
                            m.tick(g, scheduled, online)
                        };
                        s2.push(
                            updates
                                .into_iter()
                                .map(|u| (u.var, u.value, u.status, u.source_time)),
                        );
                    })
                    .await;
                }
            })
        })
        .collect()
}

fn write_stats(shared: &Shared, path: &std::path::Path) {
    let stats = shared.stats();
    let tmp = path.with_extension("tmp");
    let result = serde_json::to_vec(&stats)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        warn!(error = %e, path = %path.display(), "could not write the stats file");
    }
}

/// User + system CPU seconds of this process, from /proc (0 where unavailable).
pub fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return 0.0;
    };
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the command name.
    (ticks(11) + ticks(12)) / 100.0
}
