//! The connector's own state for the cloud: on an MQTT broker a retained status topic with a
//! last will (`online` while connected, `offline` with the reason when the connection ends or
//! the connector stops), on IoT Hub the reported property `connectorStatus`. Both carry the
//! connector's version, the PLC sessions and the destination's backlog, and are sent after
//! every connect and on change (a PLC session up or down, the backlog falling behind by more
//! than [`BEHIND`] or catching up), at most once per `interval`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Map, Value};

use crate::metrics::PlcMetrics;

/// A backlog whose oldest message waited longer than this is "behind" (a change worth an
/// update); messages waiting for their acknowledgement in normal flow are not.
pub const BEHIND: Duration = Duration::from_secs(5);

/// What waits in a destination's buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    pub messages: u64,
    pub bytes: u64,
    /// Age of the oldest waiting message.
    pub oldest: Option<Duration>,
}

impl Backlog {
    fn behind(&self) -> bool {
        self.oldest.is_some_and(|a| a > BEHIND)
    }
}

/// The reported property that holds the connector's state on IoT Hub.
pub const REPORTED_PROPERTY: &str = "connectorStatus";

/// What every status message is made from: the line, and its PLC sessions once they exist.
#[derive(Debug)]
pub struct StatusBoard {
    line: String,
    /// The line's PLCs, as configured (disconnected until their sessions exist).
    names: Vec<String>,
    plcs: OnceLock<Vec<Arc<PlcMetrics>>>,
}

impl StatusBoard {
    pub fn new(line: &str, plcs: Vec<String>) -> Arc<StatusBoard> {
        Arc::new(StatusBoard {
            line: line.to_owned(),
            names: plcs,
            plcs: OnceLock::new(),
        })
    }

    /// The PLC sessions, once the runner has started them.
    pub fn set_plcs(&self, plcs: Vec<Arc<PlcMetrics>>) {
        let _ = self.plcs.set(plcs);
    }

    /// Whether each PLC's session is up, in the config's order.
    fn connected(&self) -> Vec<bool> {
        self.plcs.get().map_or_else(
            || vec![false; self.names.len()],
            |p| {
                p.iter()
                    .map(|m| m.connected.load(Ordering::Relaxed))
                    .collect()
            },
        )
    }

    /// (plc, connected) of every PLC, in the config's order.
    fn sessions(&self) -> Vec<(String, bool)> {
        let starting = || self.names.iter().map(|n| (n.clone(), false)).collect();
        self.plcs.get().map_or_else(starting, |p| {
            p.iter()
                .map(|m| (m.plc.clone(), m.connected.load(Ordering::Relaxed)))
                .collect()
        })
    }
}

/// Where a destination's status goes.
#[derive(Debug, Clone)]
pub enum StatusKind {
    /// A retained topic with a last will (`[sink.mqtt] status_topic`).
    Retained { topic: String },
    /// The hub's reported properties (`[hub] status_interval`).
    Reported,
}

#[derive(Debug, Clone)]
pub struct StatusPlan {
    pub kind: StatusKind,
    pub board: Arc<StatusBoard>,
    /// The shortest time between two updates (but the one after a connect).
    pub interval: Duration,
}

/// One message to publish: topic, body, retained.
pub type StatusMessage = (String, Vec<u8>, bool);

fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// What decides "changed": which sessions are up, and whether the backlog is behind.
type Key = (Vec<bool>, bool);

/// Decides when a sender publishes its status, and makes the messages.
#[derive(Debug)]
pub struct StatusReporter {
    plan: StatusPlan,
    /// Sent since the last connect: when, and what it said.
    last: Option<(Instant, Key)>,
    /// The last one was not taken: send again once the interval has passed.
    again: bool,
    /// When [`Self::due`] looks again (`None`: at once).
    next_look: Option<Instant>,
    rid: u64,
}

impl StatusReporter {
    pub fn new(plan: StatusPlan) -> StatusReporter {
        StatusReporter {
            plan,
            last: None,
            again: false,
            next_look: None,
            rid: 0,
        }
    }

    /// The last will to register at connect (retained topics only): `offline`, reason
    /// `connection lost`, `at` the time the connection it stands for was opened.
    pub fn will(&self) -> Option<(String, Vec<u8>)> {
        match &self.plan.kind {
            StatusKind::Retained { topic } => Some((
                topic.clone(),
                self.offline_body("connection lost", SystemTime::now()),
            )),
            StatusKind::Reported => None,
        }
    }

    /// After a ConnAck: the next [`Self::due`] sends at once.
    pub fn connected(&mut self) {
        self.last = None;
        self.next_look = None;
    }

    /// The status to publish now, if any: after a connect, or on change once `interval`
    /// has passed since the last one. Looked at no more often than [`Self::recheck`] (the
    /// sender asks at every turn of its loop); `backlog` is read only then.
    pub fn due(&mut self, backlog: impl FnOnce() -> Backlog) -> Option<StatusMessage> {
        let now = Instant::now();
        if self.next_look.is_some_and(|at| now < at) {
            return None;
        }
        self.next_look = Some(now + self.recheck());
        let backlog = backlog();
        let key: Key = (self.plan.board.connected(), backlog.behind());
        if let Some((at, last)) = &self.last {
            if (*last == key && !self.again) || at.elapsed() < self.plan.interval {
                return None;
            }
        }
        self.last = Some((now, key));
        self.again = false;
        let state = self.online(&self.plan.board.sessions(), backlog);
        Some(match &self.plan.kind {
            StatusKind::Retained { topic } => (topic.clone(), state.to_string().into_bytes(), true),
            StatusKind::Reported => {
                self.rid += 1;
                let body = json!({ REPORTED_PROPERTY: state });
                (
                    crate::cloud::hub::twin_patch_reported(&format!("status-{}", self.rid)),
                    body.to_string().into_bytes(),
                    false,
                )
            }
        })
    }

    /// The message could not be handed to the client: sent again at the next chance.
    pub fn not_sent(&mut self) {
        self.last = None;
        self.next_look = None;
    }

    /// A topic the hub answers on: `Some(taken)` when it is the answer to one of our reported
    /// PATCHes (`$iothub/twin/res/{status}/?$rid=status-N`), `None` for anything else. One not
    /// taken (429 throttled, 4xx, 5xx) is sent again once the interval has passed.
    pub fn answered(&mut self, topic: &str) -> Option<bool> {
        use crate::cloud::hub::{parse_incoming, Incoming};
        let Ok(Incoming::TwinResponse { status, rid, .. }) = parse_incoming(topic) else {
            return None;
        };
        if !rid.starts_with("status-") {
            return None;
        }
        let taken = (200..300).contains(&status);
        if !taken {
            static LOG: crate::ratelog::RateLog = crate::ratelog::RateLog::per_minute();
            if let Some(suppressed) = LOG.hit() {
                tracing::warn!(status, suppressed,
                    "hub: the connectorStatus update was not taken; sent again after status_interval");
            }
            self.again = true;
            self.next_look = None;
        }
        Some(taken)
    }

    /// The broker refused the status message (an MQTT 5 PUBACK reason code, e.g. 0x87 not
    /// authorized by an ACL): logged (at most once a minute), sent again after the interval.
    pub fn refused(&mut self, reason: &str) {
        static LOG: crate::ratelog::RateLog = crate::ratelog::RateLog::per_minute();
        if let Some(suppressed) = LOG.hit() {
            let topic = match &self.plan.kind {
                StatusKind::Retained { topic } => topic.as_str(),
                StatusKind::Reported => "",
            };
            tracing::warn!(
                topic,
                reason,
                suppressed,
                "mqtt: the broker refused the status message; sent again after status_interval"
            );
        }
        self.again = true;
        self.next_look = None;
    }

    /// Whether the answers to reported PATCHes are to be subscribed to.
    pub fn reports(&self) -> bool {
        matches!(self.plan.kind, StatusKind::Reported)
    }

    /// How long until [`Self::due`] may have something to send after a change.
    pub fn recheck(&self) -> Duration {
        Duration::from_secs(1).min(self.plan.interval)
    }

    /// The message of a clean stop (retained topics only).
    pub fn stopped(&self) -> Option<(String, Vec<u8>)> {
        match &self.plan.kind {
            StatusKind::Retained { topic } => Some((
                topic.clone(),
                self.offline_body("stopped", SystemTime::now()),
            )),
            StatusKind::Reported => None,
        }
    }

    fn online(&self, sessions: &[(String, bool)], backlog: Backlog) -> Value {
        let plcs: Map<String, Value> = sessions
            .iter()
            .map(|(p, up)| {
                let s = if *up { "connected" } else { "disconnected" };
                (p.clone(), Value::from(s))
            })
            .collect();
        json!({
            "state": "online",
            "at": rfc3339(SystemTime::now()),
            "version": env!("CARGO_PKG_VERSION"),
            "line": self.plan.board.line,
            "plcs": plcs,
            "plcs_connected": sessions.iter().filter(|(_, up)| *up).count(),
            "plcs_total": sessions.len(),
            "backlog": {
                "messages": backlog.messages,
                "bytes": backlog.bytes,
                "oldest_s": backlog.oldest.map_or(0.0, |a| a.as_secs_f64()),
            },
        })
    }

    fn offline_body(&self, reason: &str, at: SystemTime) -> Vec<u8> {
        json!({
            "state": "offline",
            "reason": reason,
            "at": rfc3339(at),
            "version": env!("CARGO_PKG_VERSION"),
            "line": self.plan.board.line,
        })
        .to_string()
        .into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reporter(kind: StatusKind, interval: Duration) -> (StatusReporter, Arc<PlcMetrics>) {
        let board = StatusBoard::new("line-a", vec!["filler".into()]);
        let plc = PlcMetrics::new("filler");
        board.set_plcs(vec![plc.clone()]);
        let r = StatusReporter::new(StatusPlan {
            kind,
            board,
            interval,
        });
        (r, plc)
    }

    fn body(m: &StatusMessage) -> Value {
        serde_json::from_slice(&m.1).unwrap()
    }

    #[test]
    fn a_connect_sends_at_once_then_only_changes_after_the_interval() {
        let topic = "opcua/p/line-a/status".to_owned();
        let (mut r, plc) = reporter(
            StatusKind::Retained {
                topic: topic.clone(),
            },
            Duration::ZERO,
        );
        r.connected();
        let empty = Backlog::default();
        let flowing = Backlog {
            messages: 2,
            bytes: 100,
            oldest: Some(Duration::from_millis(300)),
        };
        let behind = Backlog {
            messages: 6,
            bytes: 120,
            oldest: Some(Duration::from_secs(6)),
        };
        let first = r.due(|| empty).expect("after a connect");
        assert_eq!((first.0.as_str(), first.2), (topic.as_str(), true));
        let v = body(&first);
        assert_eq!(v["state"], "online");
        assert_eq!(v["plcs"]["filler"], "disconnected");
        assert_eq!(
            (v["plcs_connected"].as_u64(), v["plcs_total"].as_u64()),
            (Some(0), Some(1))
        );
        assert!(r.due(|| empty).is_none(), "nothing changed");
        assert!(
            r.due(|| flowing).is_none(),
            "messages in flight are no change"
        );
        assert!(r.due(|| behind).is_some(), "the backlog fell behind");
        assert!(r.due(|| behind).is_none(), "still behind: no change");
        plc.connected.store(true, Ordering::Relaxed);
        let v = body(&r.due(|| behind).expect("a session came up"));
        assert_eq!(v["plcs"]["filler"], "connected");
        assert_eq!(v["backlog"]["messages"], 6);
        let will: Value = serde_json::from_slice(&r.will().unwrap().1).unwrap();
        assert_eq!(
            (will["state"].as_str(), will["reason"].as_str()),
            (Some("offline"), Some("connection lost"))
        );
        let stopped: Value = serde_json::from_slice(&r.stopped().unwrap().1).unwrap();
        assert_eq!(stopped["reason"], "stopped");
    }

    #[test]
    fn changes_within_the_interval_wait_and_the_hub_gets_reported_patches() {
        let (mut r, plc) = reporter(StatusKind::Reported, Duration::from_secs(3600));
        r.connected();
        let m = r.due(Backlog::default).unwrap();
        assert_eq!(m.0, "$iothub/twin/PATCH/properties/reported/?$rid=status-1");
        assert!(!m.2);
        assert_eq!(body(&m)[REPORTED_PROPERTY]["state"], "online");
        plc.connected.store(true, Ordering::Relaxed);
        assert!(r.due(Backlog::default).is_none(), "within the interval");
        r.connected();
        let m = r.due(Backlog::default).expect("a reconnect sends at once");
        assert_eq!(m.0, "$iothub/twin/PATCH/properties/reported/?$rid=status-2");
        assert!(r.will().is_none() && r.stopped().is_none());
    }
}
