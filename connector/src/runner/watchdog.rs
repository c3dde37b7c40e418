//! systemd's service protocol (`sd_notify`): `READY=1` once the line is up (configuration
//! valid, outputs open, connections started), `STOPPING=1` when it stops, and `WATCHDOG=1`
//! every quarter of the watchdog period while every thread of the pipeline keeps going.
//!
//! Not a timer alone: each PLC's writer thread beats once per loop (at least every 50 ms,
//! busy or idle: a batch written or a tick), and each cloud connection and the write service
//! beat from a task on their own runtimes, so a thread stuck in a call that never returns (a
//! deadlock, a write to a hung disk) stops beating. This loop runs on the runtime of the PLC
//! sessions and `/metrics`, so a stuck runtime stops it as well. What this cannot see is a
//! task that waits forever on something that never comes while its runtime runs on: that is
//! left to the tasks' own timeouts. A thread without a beat for half the period is stuck:
//! the pings stop, `STATUS=` names it (shown by `systemctl status`), the log says it once,
//! and systemd kills and restarts the service when `WatchdogSec` runs out. One that moves
//! again before that (a stall shorter than about 1.25 periods) resumes them.
//!
//! Without `NOTIFY_SOCKET` (not started by systemd as `Type=notify`) all of it does nothing.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::metrics::Beat;

/// A stage the watchdog checks: its name in messages and its beat.
pub type Watched = (String, Arc<Beat>);

/// How often a runtime's beat task beats.
const BEAT_EVERY: Duration = Duration::from_millis(250);

/// Tells the service manager that the line is up.
pub fn ready(line: &str, plcs: usize) {
    let status = format!("running: line {line}, {plcs} PLC(s)");
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// Tells the service manager that the line is stopping (draining its outputs).
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: draining the outputs"),
    ]);
}

/// Beats `beat` from a task of the current runtime until the runtime's main future ends:
/// proves that the runtime (a cloud connection's, the write service's) still runs tasks.
pub async fn beating<F: std::future::Future>(beat: Arc<Beat>, work: F) -> F::Output {
    let beats = async {
        let mut every = tokio::time::interval(BEAT_EVERY);
        loop {
            every.tick().await;
            beat.beat();
        }
    };
    tokio::select! {
        out = work => out,
        never = beats => never,
    }
}

/// The watchdog loop: pings while every watched stage beats, until `stop`. Returns at once
/// when the service manager asked for no watchdog.
pub async fn watch(stages: Vec<Watched>, stop: CancellationToken) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let (every, limit) = timing(period);
    info!(
        watchdog_s = period.as_secs_f64(),
        stages = stages.len(),
        "service watchdog on: pinging while every stage makes progress"
    );
    let mut was_stuck = false;
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match stuck(&stages, limit) {
            None => {
                if was_stuck {
                    info!("every stage makes progress again: watchdog pings resume");
                    send(&[NotifyState::Status("running")]);
                    was_stuck = false;
                }
                send(&[NotifyState::Watchdog]);
            }
            Some(what) => {
                if !was_stuck {
                    error!(stage = %what.0, stalled_s = what.1.as_secs_f64(),
                        "a stage of the pipeline makes no progress: watchdog pings stop, the service manager will restart the connector");
                    let status = format!(
                        "stuck: {} makes no progress ({:.1} s); watchdog pings stopped",
                        what.0,
                        what.1.as_secs_f64()
                    );
                    send(&[NotifyState::Status(&status)]);
                    was_stuck = true;
                }
            }
        }
    }
}

/// How often to check and ping (a quarter of the period: more often than the half systemd
/// asks for, so that one missed ping is not yet a restart and a stage can recover), and how
/// long a stage may go without a beat (half the period, at least a second: a slow fsync is
/// not a hang).
fn timing(period: Duration) -> (Duration, Duration) {
    (
        (period / 4).max(Duration::from_millis(100)),
        (period / 2).max(Duration::from_secs(1)),
    )
}

/// The stage that has gone longest without a beat, if longer than `limit`.
fn stuck(stages: &[Watched], limit: Duration) -> Option<(String, Duration)> {
    stages
        .iter()
        .map(|(name, beat)| (name, beat.age()))
        .filter(|(_, age)| *age > limit)
        .max_by_key(|(_, age)| *age)
        .map(|(name, age)| (name.clone(), age))
}

fn send(state: &[NotifyState<'_>]) {
    static FAILED: std::sync::Once = std::sync::Once::new();
    if let Err(e) = sd_notify::notify(state) {
        FAILED.call_once(|| {
            warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_without_a_beat_for_longer_than_the_limit_is_stuck() {
        let fresh = Arc::new(Beat::default());
        let old = Arc::new(Beat::default());
        let stages = vec![("a".to_string(), fresh.clone()), ("b".into(), old)];
        assert_eq!(stuck(&stages, Duration::from_secs(60)), None);
        std::thread::sleep(Duration::from_millis(30));
        fresh.beat();
        let (name, age) = stuck(&stages, Duration::from_millis(20)).expect("b is stuck");
        assert_eq!(name, "b");
        assert!(age >= Duration::from_millis(30), "{age:?}");
    }

    #[test]
    fn pings_every_quarter_period_and_tolerates_half_a_period_or_a_second() {
        assert_eq!(
            timing(Duration::from_secs(30)),
            (Duration::from_millis(7_500), Duration::from_secs(15))
        );
        assert_eq!(
            timing(Duration::from_millis(200)),
            (Duration::from_millis(100), Duration::from_secs(1))
        );
    }
}
