//! Running the simulator: [`start`] builds the model from the nodesets and profile, binds the
//! endpoint and returns a [`Simulator`] handle; [`run`] starts and waits. The parts:
//!
//! - `config`: [`SimConfig`], [`Limits`], [`Source`], the bundled bottling line and the
//!   `--security` parsing.
//! - `nodeset_check`: parsing and importing the NodeSet2 files, and checking that every node
//!   made it into the address space, with the line of each problem.
//! - `server_build`: the async-opcua server for a config, and binding the model to it.
//! - `shared`: the state shared by the handle, the supervisor and the tickers, and the
//!   pushing of values into the address space.
//! - `supervisor`: scheduled and on-demand faults, restarts, and the orderly stop.
//! - `ticker`: one task per group advancing the model at the group's rate.
//! - `stats`: the ground truth ([`Stats`]), the `--stats-file` writer and the CPU time.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::convert::initial_value;
use crate::error::SimError;
use crate::faults::FaultKind;
use crate::history::History;
use crate::model::Behaviour;
use crate::model::Model;
use crate::profile::{NodeInfo, Profile};
use crate::server::{is_method, variable_info, Services};

mod auth;
mod config;
mod nodeset_check;
mod server_build;
mod shared;
mod stats;
mod supervisor;
mod ticker;

pub use auth::{LoginStats, Logins};
pub use config::{
    all_security, parse_security, Limits, SimConfig, Source, BOTTLING_LINE_NAMESPACE,
    BOTTLING_LINE_NODESET, BOTTLING_LINE_PROFILE, DEFAULT_PUBLISH_TICK, MIN_PUBLISH_TICK,
};
pub use server_build::resolve;
pub use stats::{process_cpu_seconds, GroupStats, NodeStats, Stats};

use nodeset_check::{check_imported, load_imports};
use server_build::{build_server, go_live};
use shared::Shared;
use supervisor::{supervise, Endpoint};

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

    /// The bound port (the free one picked when the config asked for 0).
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
        Some(NodeStats::of(&model.vars[model.var_index(id)?]))
    }

    /// How many times method `id` (`nsu=...` form) ran.
    pub fn method_calls(&self, id: &str) -> Option<u64> {
        let model = self.shared.model.lock().unwrap_or_else(|e| e.into_inner());
        Some(model.methods[model.method_index(id)?].calls)
    }

    /// Logins with a user name or certificate so far, and how many were refused.
    pub fn logins(&self) -> LoginStats {
        self.shared.logins.stats()
    }

    /// Ground truth of every node and group, now.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Waits until the simulator stopped: after the shutdown token was cancelled, or with the
    /// error that stopped it (the server task ended, or a restart failed).
    pub async fn wait(self) -> Result<(), SimError> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(SimError::Server(format!("simulator task failed: {e}"))),
        }
    }
}

/// Starts the simulator: loads nodesets and profile, binds the endpoint and begins ticking.
/// Bad input returns `SimError::Input` naming the file, line and element.
pub async fn start(config: SimConfig, shutdown: CancellationToken) -> Result<Simulator, SimError> {
    if config.publish_tick < config::MIN_PUBLISH_TICK {
        return Err(SimError::input(
            "--publish-tick",
            None,
            "publish_tick",
            format!(
                "{:?} is below the fastest subscription tick, 1ms",
                config.publish_tick
            ),
        ));
    }
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

    let logins = Arc::new(Logins::default());
    let services = Services {
        history: config
            .history
            .then(|| Arc::new(History::new(config.history_window))),
        counts: Arc::default(),
        alarm: Some(Arc::default()),
    };
    let (server, handle, nm) =
        build_server(&config, imports, port, &model, &online, &logins, &services)?;
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
        if let Some(h) = &services.history {
            h.enable(&historized(&m));
        }
        let var = |s: &str| m.var_index(&format!("nsu={BOTTLING_LINE_NAMESPACE};s={s}"));
        if let (Some(alarm), Some(t), Some(l)) = (
            &services.alarm,
            var(crate::alarm::TEMPERATURE),
            var(crate::alarm::LIMIT),
        ) {
            alarm.bind_vars(t, l);
        }
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
        services,
        logins,
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

/// Which model variables keep a history: every `counter` of the profile (not the `--scale`
/// variables).
fn historized(m: &Model) -> Vec<bool> {
    let scale = format!("nsu={};", crate::scale::NAMESPACE);
    m.vars
        .iter()
        .map(|v| matches!(v.behaviour, Behaviour::Counter { .. }) && !v.id.starts_with(&scale))
        .collect()
}

/// Runs until `shutdown` is cancelled.
pub async fn run(config: SimConfig, shutdown: CancellationToken) -> Result<(), SimError> {
    start(config, shutdown).await?.wait().await
}
