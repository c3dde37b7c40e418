//! The state shared by the simulator handle, the supervisor and the tickers, and the pushing
//! of model values into the live address space (which notifies subscribers).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use chrono::Utc;
use opcua::server::SubscriptionCache;
use opcua::types::{DataValue, DateTime, NodeId, StatusCode};
use tracing::warn;

use crate::convert::to_variant;
use crate::model::{Model, Value, VarType};
use crate::server::{PlcNodeManager, Services};

/// The server currently serving the model.
pub(super) struct Live {
    pub(super) nm: Arc<PlcNodeManager>,
    pub(super) subscriptions: Arc<SubscriptionCache>,
}

/// One simulator's state, behind an `Arc`.
pub(super) struct Shared {
    pub(super) model: Arc<Mutex<Model>>,
    /// `None` while the endpoint is down (restart or close-sessions fault).
    pub(super) live: RwLock<Option<Arc<Live>>>,
    /// Node id of every model variable (by index) in the current server.
    pub(super) ids: RwLock<Arc<Vec<NodeId>>>,
    /// The endpoint is up; values produced while it is down count as produced offline.
    pub(super) online: Arc<AtomicBool>,
    /// A freeze fault is active: the tickers do not advance the model.
    pub(super) frozen: AtomicBool,
    /// A status fault's code, reported instead of every variable's own status; 0 when none.
    pub(super) status_override: AtomicU32,
    pub(super) restarts: AtomicU64,
    /// Per group: ticks that ran more than half a period late.
    pub(super) late: Vec<AtomicU64>,
    /// Each variable's type; fixed once the model is built.
    pub(super) tys: Vec<VarType>,
    pub(super) started: Instant,
    pub(super) endpoint: String,
    pub(super) logins: Arc<super::auth::Logins>,
    /// History and service counts (they outlive server restarts).
    pub(super) services: Services,
}

impl Shared {
    /// Pushes model updates (or every variable's current value) into the live address space.
    /// `produced`: these are new values (not the current ones sent again after a restart or a
    /// status fault), so the historized ones go into the history, online or not, exactly as
    /// subscribers get them.
    pub(super) fn push(
        &self,
        updates: impl Iterator<Item = (usize, Value, u32, chrono::DateTime<Utc>)>,
        produced: bool,
    ) {
        let live = self.live.read().unwrap_or_else(|e| e.into_inner()).clone();
        let history = self.services.history.as_ref().filter(|_| produced);
        if live.is_none() && history.is_none() {
            return;
        }
        let ids = self.ids.read().unwrap_or_else(|e| e.into_inner()).clone();
        let tys = &self.tys;
        let overridden = self.status_override.load(Ordering::Relaxed);
        let now = DateTime::now();
        let values: Vec<(&NodeId, DataValue)> = updates
            .filter_map(|(idx, value, status, t)| {
                let status = if overridden != 0 { overridden } else { status };
                let kept = history.filter(|h| h.is_historized(idx));
                let variant = match &live {
                    Some(live) => live.nm.inner().variant(idx, &value, tys[idx]),
                    None if kept.is_some() => to_variant(&value, tys[idx]),
                    None => return None,
                };
                let dv = DataValue {
                    value: Some(variant),
                    status: Some(StatusCode::from(status)),
                    source_timestamp: Some(DateTime::from(t)),
                    server_timestamp: Some(now),
                    ..DataValue::null()
                };
                if let Some(h) = kept {
                    h.record(idx, &dv);
                }
                Some((ids.get(idx)?, dv))
            })
            .collect();
        let Some(live) = live else { return };
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

    /// Sends an alarm event to the live server's subscribers (nobody hears it while the
    /// endpoint is down).
    pub(super) fn emit_event(&self, event: &crate::alarm::ConditionEvent) {
        let live = self.live.read().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(live) = live {
            crate::alarm::emit(&live.subscriptions, event);
        }
    }

    /// Pushes every variable's current value and status (after a (re)start or a status fault).
    pub(super) fn push_all(&self) {
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
        self.push(all.into_iter(), false);
    }
}
