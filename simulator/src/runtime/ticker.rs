//! The tickers: one task per model group that advances the group at its rate (skipping
//! missed ticks, counting late ones, pausing while a freeze fault is active) and pushes the
//! changed values into the live address space.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::shared::Shared;

/// Spawns one ticker per group; they stop when `shutdown` is cancelled.
pub(super) fn spawn_tickers(
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
) -> Vec<JoinHandle<()>> {
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
                        let (updates, alarm_event) = {
                            let mut m = s2.model.lock().unwrap_or_else(|e| e.into_inner());
                            let updates = m.tick(g, scheduled, online);
                            let alarm = s2
                                .services
                                .alarm
                                .as_ref()
                                .filter(|a| updates.iter().any(|u| a.watches(u.var)));
                            (updates, alarm.and_then(|a| a.evaluate(&m)))
                        };
                        s2.push(
                            updates
                                .into_iter()
                                .map(|u| (u.var, u.value, u.status, u.source_time)),
                            true,
                        );
                        if let Some(event) = alarm_event {
                            s2.emit_event(&event);
                        }
                    })
                    .await;
                }
            })
        })
        .collect()
}
