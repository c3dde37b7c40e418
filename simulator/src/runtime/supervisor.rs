//! Supervision of a running simulator: runs the scheduled and on-demand faults (restarting
//! the endpoint, closing sessions, freezing values, overriding statuses), watches the server
//! task, and on shutdown stops the server, the tickers and the stats writer.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opcua::server::ServerHandle;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::config::SimConfig;
use super::nodeset_check::load_imports;
use super::server_build::{build_server, go_live};
use super::shared::Shared;
use super::stats::spawn_stats_writer;
use super::ticker::spawn_tickers;
use crate::error::SimError;
use crate::faults::{Fault, FaultKind};

/// A running server: its handle and the task serving it.
pub(super) struct Endpoint {
    pub(super) handle: ServerHandle,
    pub(super) task: JoinHandle<Result<(), String>>,
}

/// Runs until `shutdown` is cancelled or the server stops or cannot be restarted. Starts the
/// tickers (and the stats writer), then injects the profile's and the config's scheduled
/// faults at their times and the faults sent through `on_demand` as they come. A restart
/// fault rebuilds the server on the same `port` after its down time; a close-sessions fault
/// does so at once.
pub(super) async fn supervise(
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
    let stats_writer = config
        .stats_file
        .clone()
        .map(|path| spawn_stats_writer(&shared, path, &shutdown));
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

/// Brings the endpoint back after a restart fault: a new server from the nodesets, bound to
/// the same port (retried for up to 10 s while the old socket is released), then live.
async fn restart(
    shared: &Arc<Shared>,
    config: &SimConfig,
    port: u16,
) -> Result<(ServerHandle, JoinHandle<Result<(), String>>), SimError> {
    let imports = load_imports(&config.nodesets)?;
    let (server, handle, nm) = build_server(
        config,
        imports,
        port,
        &shared.model,
        &shared.online,
        &shared.logins,
        &shared.services,
    )?;
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
