//! The commands of `opcua-connector`. Each returns an [`Outcome`] that `main` maps to the
//! exit code: 0 success, 2 bad configuration or usage, 1 runtime failure.

pub mod browse;
pub mod check;
#[cfg(feature = "demo")]
pub mod demo;
pub mod dtdl;
pub mod logs;
pub mod run;
pub mod schema;

use std::fmt;

/// Why a command failed, and so its exit code.
#[derive(Debug)]
pub enum Failure {
    /// Bad configuration or usage: exit 2.
    Usage(String),
    /// Runtime failure: exit 1.
    Runtime(String),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => 2,
            Failure::Runtime(_) => 1,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Usage(m) | Failure::Runtime(m) => f.write_str(m),
        }
    }
}

pub type Outcome = Result<(), Failure>;

/// SIGINT or SIGTERM: the handlers are installed by this call, not when the future is first
/// polled, so a stop that comes right after start (a service manager acting on READY=1) is
/// a drain, not the default action that kills the process.
pub fn stop_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
