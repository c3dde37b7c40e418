//! The write service: one task per line that turns cloud requests into PLC writes and method
//! calls and answers them.
//!
//! - IoT Hub twin (`twin`): after every hub ConnAck it GETs the full twin and applies each
//!   mapped desired property whose version is newer than the one last handled (persisted),
//!   then follows desired PATCH notifications. Every property is answered in reported
//!   properties with the IoT Plug and Play acknowledgement. A write that could not reach the
//!   PLC is answered 500 and kept; it is written when the PLC session is back, if no newer
//!   desired value replaced it.
//! - Plain MQTT (`requests`, `methods`): write requests on `{command_topic}/write` and
//!   method calls on `{command_topic}/method/{name}`, answered on
//!   `{command_topic}/write/response` and `{command_topic}/method/{name}/response` (or the
//!   MQTT 5 response topic, with the correlation data). A request id seen before is not
//!   applied again: its first answer is repeated.
//! - Direct methods (`$iothub/methods/POST/{name}/`) and MQTT method calls (`methods`) run
//!   the `[[method]]`'s OPC UA method.
//!
//! The PLC write itself, shared by the twin and the MQTT requests (`max_rate`, the node's
//! fitness, the write task, the answer to its result), is in `write`. This module holds the
//! rest: the setup, the service's state, the [`run`] loop that routes the control channels'
//! messages, the PLC session changes (node checks at connect), finished tasks and the 200 ms
//! tick (requests held at start, twin GET retries, waiting twin writes).
//!
//! Writes and calls run as their own tasks (one at a time per twin property), so a slow PLC
//! holds up nothing else. Every attempt leaves an audit record (`target: "audit"`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opcua::types::StatusCode;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::plc::{self, CallError, Failure, Fitness, Signature};
use super::requests::MAX_ERROR_CHARS;
use super::state::{cut, State};
use super::MAX_ID_BYTES;
use crate::cloud::control::INBOUND_QUEUE;
use crate::cloud::control::{Answers, Inbound, Outbound, Requests, ServiceEnds};
use crate::cloud::hub::topics::{self, Incoming};
use crate::cloud::hub::CurrentIdentity;
use crate::config::load::DEFAULT_MAX_CONCURRENT_COMMANDS;
use crate::config::types::{MethodMapping, WriteMapping};
use crate::metrics::{RuleCounters, RuleMetrics, WriteMetrics};
use crate::opcua::link::{Link, LinkReceiver};
use crate::ratelog::RateLog;

mod c2d;
mod methods;
mod requests;
mod rules;
mod twin;
mod write;

pub use rules::RuleCommand;

#[cfg(test)]
mod tests;

/// How long a PLC write (old value, write, readback) may take.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// At start the hub is often connected before the PLCs: twin writes wait this long for their
/// PLC before being answered 500, and MQTT requests and direct methods are held (replayed at
/// the tick once it has passed or every PLC is connected and checked) rather than fail.
const STARTUP_GRACE: Duration = Duration::from_secs(5);

fn add(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Topics of the plain-MQTT command interface.
#[derive(Debug, Clone)]
pub struct CommandTopics {
    /// The expanded `command_topic`: MQTT 5 response topics must be under `{base}/`.
    pub base: String,
    pub write: String,
    pub write_response: String,
    /// `{base}/method/`: a method name follows (answers on `{base}/method/{name}/response`,
    /// outside the `{base}/method/+` subscription).
    pub method_prefix: String,
}

impl CommandTopics {
    /// From the expanded `command_topic` base.
    pub fn new(base: &str) -> CommandTopics {
        CommandTopics {
            base: base.to_owned(),
            write: format!("{base}/write"),
            write_response: format!("{base}/write/response"),
            method_prefix: format!("{base}/method/"),
        }
    }

    /// Where the answer to a call of method `name` goes.
    pub fn method_response(&self, name: &str) -> String {
        format!("{}{name}/response", self.method_prefix)
    }

    /// Whether an MQTT 5 response topic may be used: only under `{base}/` (a request must not
    /// make the connector publish elsewhere on the broker with its credentials).
    pub fn response_allowed(&self, topic: &str) -> bool {
        topic
            .strip_prefix(&self.base)
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|rest| !rest.is_empty() && !rest.contains(['+', '#']))
    }

    /// What the sender subscribes to.
    pub fn subscriptions(&self) -> Vec<String> {
        vec![self.write.clone(), format!("{}+", self.method_prefix)]
    }
}

/// Everything the service needs.
pub struct Setup {
    pub writes: Vec<WriteMapping>,
    pub methods: Vec<MethodMapping>,
    /// Per PLC id, its session as the session task publishes it.
    pub links: Vec<(String, LinkReceiver)>,
    pub hub: Option<ServiceEnds>,
    pub mqtt: Option<(ServiceEnds, CommandTopics)>,
    /// The persisted state file.
    pub state_file: std::path::PathBuf,
    pub metrics: Arc<WriteMetrics>,
    /// `max_concurrent_commands` by PLC id (absent: the default).
    pub limits: HashMap<String, usize>,
    /// `[hub] pending_write_max_age`.
    pub pending_max_age: Duration,
    /// The local rules' writes and calls, when `[[rule]]` is configured.
    pub rules: Option<(mpsc::UnboundedReceiver<RuleCommand>, Arc<RuleMetrics>)>,
    /// The hub identity (`host/device[/module]`) the twin belongs to, when `[hub]` is
    /// configured (the one in use at each ConnAck: DPS may assign another): a state written
    /// for another is set aside.
    pub hub_identity: Option<CurrentIdentity>,
}

/// Who asked, for answers and the audit record.
#[derive(Debug, Clone)]
enum Origin {
    /// A desired property of the twin at this `$version`.
    Twin { version: i64 },
    /// A plain-MQTT write request.
    Request(Reply),
    /// A local rule: not answered; a failure counts as the rule's error.
    Rule(Arc<RuleCounters>),
}

/// Where an MQTT answer goes.
#[derive(Debug, Clone)]
struct Reply {
    id: String,
    topic: String,
    correlation: Option<Vec<u8>>,
    /// Answered on the hub's connection (a cloud-to-device request), not the broker's.
    via_hub: bool,
}

/// A desired value waiting to be written.
#[derive(Debug, Clone)]
struct Want {
    version: i64,
    value: Value,
    /// Already answered 500 "unreachable" (answer once, then wait).
    told_unreachable: bool,
    not_before: Option<Instant>,
}

#[derive(Debug, Default)]
struct Property {
    pending: Option<Want>,
    running: bool,
    last_write: Option<Instant>,
    /// The desired version last seen for this property and when it first arrived (the age
    /// of a waiting write).
    arrived: Option<(i64, Instant)>,
}

/// The state of one PLC as the service knows it.
struct PlcState {
    link: Option<Link>,
    /// Fitness of each write mapping of this PLC (by property), for `link`'s generation.
    fitness: HashMap<String, Fitness>,
    checked: bool,
    /// Connected at least once since the start.
    ever_linked: bool,
    signatures: HashMap<String, Signature>,
    /// Writes and calls running on this PLC, and how many may.
    running: usize,
    limit: usize,
}

impl PlcState {
    fn busy(&self) -> bool {
        self.running >= self.limit
    }
}

enum Done {
    Checked {
        plc: String,
        generation: u64,
        result: Result<Vec<(String, Fitness)>, StatusCode>,
    },
    Written {
        property: String,
        origin: Origin,
        value: Value,
        result: Result<plc::Written, Failure>,
    },
    Called {
        name: String,
        answer: MethodAnswer,
        generation: u64,
        signature: Option<Signature>,
        result: Result<Value, CallError>,
    },
}

/// Where a method's result goes.
#[derive(Debug, Clone)]
enum MethodAnswer {
    Hub {
        rid: String,
    },
    Mqtt(Reply),
    /// A local rule: not answered; a failure counts as the rule's error.
    Rule(Arc<RuleCounters>),
}

struct Service {
    writes: Vec<WriteMapping>,
    methods: Vec<MethodMapping>,
    plcs: HashMap<String, PlcState>,
    props: HashMap<String, Property>,
    state: State,
    metrics: Arc<WriteMetrics>,
    hub_out: Option<Answers>,
    mqtt_out: Option<Answers>,
    topics: Option<CommandTopics>,
    done_tx: mpsc::UnboundedSender<Done>,
    rid: u64,
    /// The open twin GET: its request id and when to ask again without an answer.
    twin_get: Option<(String, Instant)>,
    started: Instant,
    /// Requests that arrived before the PLCs were connected at start, replayed after.
    held: Vec<(bool, Inbound)>,
    /// Replaying held requests (counted when they first came).
    replaying: bool,
    /// The rule writes waiting and running, per property.
    rule_writes: rules::RuleWrites,
    /// Twin acknowledgements sent and waiting to be sent again.
    acks: twin::Acks,
    pending_max_age: Duration,
    rule_metrics: Option<Arc<RuleMetrics>>,
    hub_identity: Option<CurrentIdentity>,
}

/// What the loop of [`run`] waits on besides the tick.
struct Inputs {
    hub_in: Option<Requests>,
    mqtt_in: Option<Requests>,
    /// Session changes of every PLC, merged.
    link_rx: mpsc::UnboundedReceiver<(String, Option<Link>)>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    rules_in: Option<mpsc::UnboundedReceiver<RuleCommand>>,
}

/// Runs until `shutdown`.
pub async fn run(setup: Setup, shutdown: CancellationToken) {
    let (mut svc, mut inputs) = Service::new(setup);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(m) = recv(&mut inputs.hub_in) => svc.hub(m),
            Some(m) = recv(&mut inputs.mqtt_in) => {
                if svc.starting() && svc.held.len() < INBOUND_QUEUE {
                    svc.held.push((false, m));
                } else {
                    svc.mqtt(m);
                }
            }
            Some((plc, link)) = inputs.link_rx.recv() => svc.link(&plc, link),
            Some(cmd) = recv_rule(&mut inputs.rules_in) => svc.rule(cmd),
            Some(d) = inputs.done_rx.recv() => svc.done(d),
            _ = tick.tick() => svc.tick(),
        }
    }
}

async fn recv_rule(rx: &mut Option<mpsc::UnboundedReceiver<RuleCommand>>) -> Option<RuleCommand> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv(rx: &mut Option<Requests>) -> Option<Inbound> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// A value for a log line, cut to 200 characters.
fn text(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 200 {
        format!("{}...", s.chars().take(200).collect::<String>())
    } else {
        s
    }
}

fn who(origin: &Origin) -> String {
    match origin {
        Origin::Twin { version } => format!("twin v{version}"),
        Origin::Request(r) => format!("request {}", r.id),
        Origin::Rule(r) => format!("rule {}", r.rule),
    }
}

/// The `id` of a request that did not parse, if it has a string one no longer than
/// [`MAX_ID_BYTES`] (a longer one is not echoed: the answer has an empty id).
fn request_id(payload: &[u8]) -> String {
    serde_json::from_slice::<Value>(payload)
        .ok()
        .and_then(|v| {
            v.get("id")
                .and_then(Value::as_str)
                .filter(|s| s.len() <= MAX_ID_BYTES)
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

impl Service {
    /// The service of `setup` (its state file read), and what its loop waits on; spawns the
    /// task per PLC that forwards the PLC's session changes.
    fn new(setup: Setup) -> (Service, Inputs) {
        let Setup {
            writes,
            methods,
            links,
            hub,
            mqtt,
            state_file,
            metrics,
            limits,
            pending_max_age,
            rules,
            hub_identity,
        } = setup;
        let (rules_in, rule_metrics) = match rules {
            Some((rx, m)) => (Some(rx), Some(m)),
            None => (None, None),
        };
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        // Session changes of every PLC, merged.
        let (link_tx, link_rx) = mpsc::unbounded_channel::<(String, Option<Link>)>();
        let mut plcs = HashMap::new();
        for (plc, mut rx) in links {
            plcs.insert(
                plc.clone(),
                PlcState {
                    link: None,
                    fitness: HashMap::new(),
                    checked: false,
                    ever_linked: false,
                    signatures: HashMap::new(),
                    running: 0,
                    limit: limits
                        .get(&plc)
                        .copied()
                        .unwrap_or(DEFAULT_MAX_CONCURRENT_COMMANDS)
                        .max(1),
                },
            );
            let tx = link_tx.clone();
            tokio::spawn(async move {
                loop {
                    let now = rx.borrow_and_update().clone();
                    if tx.send((plc.clone(), now)).is_err() || rx.changed().await.is_err() {
                        break;
                    }
                }
            });
        }
        let (hub_in, hub_out) = match hub {
            Some(e) => (Some(e.inbound), Some(e.outbound)),
            None => (None, None),
        };
        let (mqtt_in, mqtt_out, topics) = match mqtt {
            Some((e, t)) => (Some(e.inbound), Some(e.outbound), Some(t)),
            None => (None, None, None),
        };
        let svc = Service {
            props: writes
                .iter()
                .map(|w| (w.property.clone(), Property::default()))
                .collect(),
            writes,
            methods,
            plcs,
            state: State::open(&state_file),
            metrics,
            hub_out,
            mqtt_out,
            topics,
            done_tx,
            rid: 0,
            twin_get: None,
            started: Instant::now(),
            held: Vec::new(),
            replaying: false,
            rule_writes: rules::RuleWrites::default(),
            acks: twin::Acks::new(),
            pending_max_age,
            rule_metrics,
            hub_identity,
        };
        let inputs = Inputs {
            hub_in,
            mqtt_in,
            link_rx,
            done_rx,
            rules_in,
        };
        (svc, inputs)
    }

    fn next_rid(&mut self) -> String {
        self.rid += 1;
        self.rid.to_string()
    }

    fn publish_hub(&self, topic: String, body: &Value) {
        if let Some(out) = &self.hub_out {
            out.send(Outbound {
                topic,
                payload: body.to_string().into_bytes(),
                correlation: None,
            });
        }
    }

    fn reply(&self, to: &Reply, body: &Value) {
        let out = if to.via_hub {
            &self.hub_out
        } else {
            &self.mqtt_out
        };
        if let Some(out) = out {
            out.send(Outbound {
                topic: to.topic.clone(),
                payload: body.to_string().into_bytes(),
                correlation: to.correlation.clone(),
            });
        }
    }

    /// A request that cannot be understood: counted, and logged the first time and then once
    /// a minute with the count left out (a flood cannot fill the log).
    fn malformed(&self, what: &str, error: &dyn std::fmt::Display) {
        static LOG: RateLog = RateLog::per_minute();
        add(&self.metrics.malformed);
        if let Some(suppressed) = LOG.hit() {
            let error = cut(&error.to_string(), MAX_ERROR_CHARS);
            warn!(target: "audit", what, error = %error, result = 400, suppressed, "malformed request ignored: nothing written");
        }
    }

    /// Just started and some PLC not connected (and checked) yet: requests wait a little
    /// rather than fail.
    fn starting(&self) -> bool {
        self.started.elapsed() < STARTUP_GRACE && self.plcs.values().any(|s| !s.checked)
    }

    /// The PLC `plc` runs `max_concurrent_commands` writes and calls already: counted, and
    /// logged (rate-limited); the text of the 503 answer.
    fn busy(&self, plc: &str) -> Option<String> {
        static LOG: RateLog = RateLog::per_minute();
        let s = self.plcs.get(plc).filter(|s| s.busy())?;
        add(&self.metrics.busy);
        let detail = format!(
            "busy: plc {plc} is running {} writes and calls (max_concurrent_commands); ask again later",
            s.running
        );
        if let Some(suppressed) = LOG.hit() {
            warn!(target: "audit", plc = %plc, result = 503, suppressed, "{detail}");
        }
        Some(detail)
    }

    /// A write or call on `plc` started (`+1`) or ended (`-1`).
    fn running(&mut self, plc: &str, started: bool) {
        if let Some(s) = self.plcs.get_mut(plc) {
            s.running = if started {
                s.running + 1
            } else {
                s.running.saturating_sub(1)
            };
        }
    }

    // ---- routing ----

    /// A message of the hub's control channel: the twin's, or a direct method.
    fn hub(&mut self, m: Inbound) {
        let msg = match m {
            Inbound::Connected => {
                self.check_identity();
                self.get_twin();
                return;
            }
            Inbound::Message(msg) => msg,
        };
        match topics::parse_incoming(&msg.topic) {
            Err(e) => self.malformed("hub topic", &e),
            Ok(Incoming::TwinResponse { status, rid, .. }) => {
                self.twin_response(status, rid, &msg.payload)
            }
            Ok(Incoming::DesiredPatch { .. }) => self.desired_patched(&msg.payload),
            Ok(Incoming::MethodRequest { .. })
                if self.starting() && self.held.len() < INBOUND_QUEUE =>
            {
                self.held.push((true, Inbound::Message(msg)));
            }
            Ok(Incoming::MethodRequest { name, rid }) => {
                self.direct_method(&name, rid, &msg.payload)
            }
            Ok(Incoming::CloudToDevice { properties }) => self.c2d(properties, msg),
        }
    }

    /// A message of the broker's control channel: a write request or a method call.
    fn mqtt(&mut self, m: Inbound) {
        let Inbound::Message(msg) = m else {
            return;
        };
        let Some(topics) = self.topics.clone() else {
            return;
        };
        let mut msg = msg;
        if let Some(rt) = msg.response_topic.take() {
            if topics.response_allowed(&rt) {
                msg.response_topic = Some(rt);
            } else {
                self.malformed(
                    "mqtt 5 response topic",
                    &format!(
                        "{:?} is not under {}/: ignored, answered on the default topic",
                        cut(&rt, 64),
                        topics.base
                    ),
                );
            }
        }
        if msg.topic == topics.write {
            self.write_request(msg, &topics);
        } else if let Some(name) = msg.topic.strip_prefix(&topics.method_prefix) {
            let name = name.to_owned();
            self.mqtt_method(name, msg, &topics);
        } else {
            self.malformed("mqtt topic", &msg.topic);
        }
    }

    // ---- PLC sessions, finished tasks, the tick ----

    fn link(&mut self, plc: &str, link: Option<Link>) {
        let Some(s) = self.plcs.get_mut(plc) else {
            return;
        };
        s.fitness.clear();
        s.signatures.clear();
        s.checked = false;
        s.link = link.clone();
        let Some(link) = link else {
            return;
        };
        s.ever_linked = true;
        let mappings: Vec<WriteMapping> = self
            .writes
            .iter()
            .filter(|w| w.plc == plc)
            .cloned()
            .collect();
        let done = self.done_tx.clone();
        let plc = plc.to_owned();
        tokio::spawn(async move {
            let refs: Vec<&WriteMapping> = mappings.iter().collect();
            let result = tokio::time::timeout(WRITE_TIMEOUT, plc::check(&link, &refs))
                .await
                .unwrap_or(Err(StatusCode::BadTimeout))
                .map(|f| mappings.iter().map(|m| m.property.clone()).zip(f).collect());
            let _ = done.send(Done::Checked {
                plc,
                generation: link.generation,
                result,
            });
        });
    }

    fn done(&mut self, d: Done) {
        match d {
            Done::Checked {
                plc,
                generation,
                result,
            } => {
                let Some(s) = self.plcs.get_mut(&plc) else {
                    return;
                };
                if s.link.as_ref().map(|l| l.generation) != Some(generation) {
                    return;
                }
                match result {
                    Ok(list) => {
                        for (property, f) in &list {
                            match f {
                                Fitness::Writable => {}
                                other => {
                                    warn!(plc = %plc, property = %property, problem = ?other, "a [[write]] mapping does not fit its node; writes to it are refused")
                                }
                            }
                        }
                        s.fitness = list.into_iter().collect();
                    }
                    Err(status) => {
                        warn!(plc = %plc, status = %status, "cannot check the [[write]] nodes; the PLC decides at each write");
                    }
                }
                s.checked = true;
                let props: Vec<String> = self
                    .writes
                    .iter()
                    .filter(|w| w.plc == plc)
                    .map(|w| w.property.clone())
                    .collect();
                for p in props {
                    self.kick(&p);
                }
            }
            Done::Written {
                property,
                origin,
                value,
                result,
            } => self.written(property, origin, value, result),
            Done::Called {
                name,
                answer,
                generation,
                signature,
                result,
            } => self.called(name, answer, generation, signature, result),
        }
    }

    fn tick(&mut self) {
        self.rule_tick();
        if !self.held.is_empty() && !self.starting() {
            self.replaying = true;
            for (hub, m) in std::mem::take(&mut self.held) {
                if hub {
                    self.hub(m);
                } else {
                    self.mqtt(m);
                }
            }
            self.replaying = false;
        }
        self.twin_get_overdue();
        self.acks_due();
        let waiting: Vec<String> = self
            .props
            .iter()
            .filter(|(_, p)| p.pending.is_some() && !p.running)
            .map(|(k, _)| k.clone())
            .collect();
        for p in waiting {
            self.kick(&p);
        }
    }
}
