//! The write service: one task per line that turns cloud requests into PLC writes and method
//! calls and answers them.
//!
//! - IoT Hub twin: after every hub ConnAck it GETs the full twin and applies each mapped
//!   desired property whose version is newer than the one last handled (persisted), then
//!   follows desired PATCH notifications. Every property is answered in reported properties
//!   with the IoT Plug and Play acknowledgement. A write that could not reach the PLC is
//!   answered 500 and kept; it is written when the PLC session is back, if no newer desired
//!   value replaced it.
//! - Plain MQTT: write requests on `{command_topic}/write` and method calls on
//!   `{command_topic}/method/{name}`, answered on `{command_topic}/write/response` and
//!   `{command_topic}/method/{name}/response` (or the MQTT 5 response topic, with the
//!   correlation data). A request id seen before is not applied again: its
//!   first answer is repeated.
//! - Direct methods (`$iothub/methods/POST/{name}/`) and MQTT method calls run the
//!   `[[method]]`'s OPC UA method.
//!
//! Writes and calls run as their own tasks (one at a time per twin property), so a slow PLC
//! holds up nothing else. Every attempt leaves an audit record (`target: "audit"`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use opcua::types::{StatusCode, Variant};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::ack::{reported_patch, write_response, TwinAck};
use super::coerce::coerce;
use super::plc::{self, CallError, Failure, Fitness, Signature};
use super::requests::{desired_patch, expired, find_mapping, parse_request};
use super::state::State;
use super::Refusal;
use crate::cloud::control::{Inbound, Message, Outbound, ServiceEnds};
use crate::cloud::hub::topics::{self, Incoming};
use crate::config::types::{MethodMapping, WriteMapping};
use crate::metrics::WriteMetrics;
use crate::opcua::link::Link;

/// How long a PLC write (old value, write, readback) may take.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// A twin GET without an answer is asked again after this.
const TWIN_GET_TIMEOUT: Duration = Duration::from_secs(10);
/// After a write failed for want of the PLC while its session looked up.
const RETRY_AFTER: Duration = Duration::from_secs(1);

fn add(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Topics of the plain-MQTT command interface.
#[derive(Debug, Clone)]
pub struct CommandTopics {
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
            write: format!("{base}/write"),
            write_response: format!("{base}/write/response"),
            method_prefix: format!("{base}/method/"),
        }
    }

    /// Where the answer to a call of method `name` goes.
    pub fn method_response(&self, name: &str) -> String {
        format!("{}{name}/response", self.method_prefix)
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
    pub links: Vec<(String, watch::Receiver<Option<Link>>)>,
    pub hub: Option<ServiceEnds>,
    pub mqtt: Option<(ServiceEnds, CommandTopics)>,
    /// The persisted state file.
    pub state_file: std::path::PathBuf,
    pub metrics: Arc<WriteMetrics>,
}

/// Who asked, for answers and the audit record.
#[derive(Debug, Clone)]
enum Origin {
    /// A desired property of the twin at this `$version`.
    Twin { version: i64 },
    /// A plain-MQTT write request.
    Request(Reply),
}

/// Where an MQTT answer goes.
#[derive(Debug, Clone)]
struct Reply {
    id: String,
    topic: String,
    correlation: Option<Vec<u8>>,
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
    Hub { rid: String },
    Mqtt(Reply),
}

struct Service {
    writes: Vec<WriteMapping>,
    methods: Vec<MethodMapping>,
    plcs: HashMap<String, PlcState>,
    props: HashMap<String, Property>,
    state: State,
    metrics: Arc<WriteMetrics>,
    hub_out: Option<mpsc::UnboundedSender<Outbound>>,
    mqtt_out: Option<mpsc::UnboundedSender<Outbound>>,
    topics: Option<CommandTopics>,
    done_tx: mpsc::UnboundedSender<Done>,
    rid: u64,
    twin_get: Option<(String, Instant)>,
    started: Instant,
    /// Requests that arrived before the PLCs were connected at start, replayed after.
    held: Vec<(bool, Inbound)>,
}

/// At start the hub is often connected before the PLCs: twin writes wait this long for their
/// PLC before being answered 500.
const STARTUP_GRACE: Duration = Duration::from_secs(5);

/// Runs until `shutdown`.
pub async fn run(setup: Setup, shutdown: CancellationToken) {
    let Setup {
        writes,
        methods,
        links,
        hub,
        mqtt,
        state_file,
        metrics,
    } = setup;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    // Session changes of every PLC, merged.
    let (link_tx, mut link_rx) = mpsc::unbounded_channel::<(String, Option<Link>)>();
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
    let (mut hub_in, hub_out) = match hub {
        Some(e) => (Some(e.inbound), Some(e.outbound)),
        None => (None, None),
    };
    let (mut mqtt_in, mqtt_out, topics) = match mqtt {
        Some((e, t)) => (Some(e.inbound), Some(e.outbound), Some(t)),
        None => (None, None, None),
    };
    let mut svc = Service {
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
    };
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(m) = recv(&mut hub_in) => svc.hub(m),
            Some(m) = recv(&mut mqtt_in) => {
                if svc.starting() {
                    svc.held.push((false, m));
                } else {
                    svc.mqtt(m);
                }
            }
            Some((plc, link)) = link_rx.recv() => svc.link(&plc, link),
            Some(d) = done_rx.recv() => svc.done(d),
            _ = tick.tick() => svc.tick(),
        }
    }
}

async fn recv<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
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

fn opt_variant(v: &Option<Variant>) -> String {
    v.as_ref()
        .map_or_else(|| "unknown".to_owned(), |v| text(&plc::variant_json(v)))
}

impl Service {
    fn next_rid(&mut self) -> String {
        self.rid += 1;
        self.rid.to_string()
    }

    fn publish_hub(&self, topic: String, body: &Value) {
        if let Some(out) = &self.hub_out {
            let _ = out.send(Outbound {
                topic,
                payload: body.to_string().into_bytes(),
                correlation: None,
            });
        }
    }

    fn reply(&self, to: &Reply, body: &Value) {
        if let Some(out) = &self.mqtt_out {
            let _ = out.send(Outbound {
                topic: to.topic.clone(),
                payload: body.to_string().into_bytes(),
                correlation: to.correlation.clone(),
            });
        }
    }

    fn twin_ack(&mut self, acks: &[TwinAck]) {
        if acks.is_empty() {
            return;
        }
        let rid = self.next_rid();
        self.publish_hub(topics::twin_patch_reported(&rid), &reported_patch(acks));
    }

    fn malformed(&self, what: &str, error: &dyn std::fmt::Display) {
        add(&self.metrics.malformed);
        warn!(target: "audit", what, error = %error, result = 400, "malformed request ignored: nothing written");
    }

    /// Just started and some PLC not connected (and checked) yet: requests wait a little
    /// rather than fail.
    fn starting(&self) -> bool {
        self.started.elapsed() < STARTUP_GRACE && self.plcs.values().any(|s| !s.checked)
    }

    // ---- IoT Hub ----

    fn hub(&mut self, m: Inbound) {
        let msg = match m {
            Inbound::Connected => {
                self.get_twin();
                return;
            }
            Inbound::Message(msg) => msg,
        };
        match topics::parse_incoming(&msg.topic) {
            Err(e) => self.malformed("hub topic", &e),
            Ok(Incoming::TwinResponse { status, rid, .. }) => {
                let ours = self.twin_get.as_ref().is_some_and(|(r, _)| *r == rid);
                if !ours {
                    if status >= 300 {
                        warn!(status, rid = %rid, "hub refused a reported-properties update");
                    } else {
                        debug!(status, rid = %rid, "reported properties updated");
                    }
                    return;
                }
                if status == 200 {
                    self.twin_get = None;
                    self.reconcile(&msg.payload);
                } else {
                    warn!(status, "twin GET failed; asking again in 2 s");
                    self.twin_get = Some((
                        rid,
                        Instant::now() - TWIN_GET_TIMEOUT + Duration::from_secs(2),
                    ));
                }
            }
            Ok(Incoming::DesiredPatch { .. }) => match desired_patch(&msg.payload, &self.writes) {
                Ok(patch) => {
                    let unmapped: Vec<(String, Value)> = patch
                        .unmapped
                        .iter()
                        .map(|p| (p.clone(), lookup(&msg.payload, p)))
                        .collect();
                    self.desired(
                        patch.version,
                        patch
                            .properties
                            .into_iter()
                            .map(|p| (p.property, p.value, patch.version))
                            .collect(),
                        unmapped,
                    );
                }
                Err(e) => self.malformed("desired properties patch", &e),
            },
            Ok(Incoming::MethodRequest { .. }) if self.starting() => {
                self.held.push((true, Inbound::Message(msg)));
            }
            Ok(Incoming::MethodRequest { name, rid }) => {
                let payload = match body_json(&msg.payload) {
                    Ok(v) => v,
                    Err(e) => {
                        add(&self.metrics.calls_bad_arguments);
                        self.malformed("direct method payload", &e);
                        self.publish_hub(
                            topics::method_response(400, &rid),
                            &json!({"error": format!("malformed payload: {e}")}),
                        );
                        return;
                    }
                };
                self.method(&name, payload, MethodAnswer::Hub { rid });
            }
        }
    }

    fn get_twin(&mut self) {
        if self.hub_out.is_none() {
            return;
        }
        let rid = self.next_rid();
        info!(rid = %rid, "asking the hub for the twin");
        if let Some(out) = &self.hub_out {
            let _ = out.send(Outbound {
                topic: topics::twin_get(&rid),
                payload: Vec::new(),
                correlation: None,
            });
        }
        self.twin_get = Some((rid, Instant::now()));
    }

    /// The full twin: apply what is newer than what was handled.
    fn reconcile(&mut self, body: &[u8]) {
        let twin: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return self.malformed("twin", &e),
        };
        let (Some(desired), reported) = (twin.get("desired"), twin.get("reported")) else {
            return self.malformed("twin", &"no \"desired\" section");
        };
        let patch = match desired_patch(desired.to_string().as_bytes(), &self.writes) {
            Ok(p) => p,
            Err(e) => return self.malformed("twin desired section", &e),
        };
        // Acknowledgements already in the twin count as handled (a lost state file must not
        // make the connector write old values again).
        if let Some(reported) = reported {
            let paths = patch.properties.iter().map(|p| &p.property);
            for path in paths.chain(&patch.unmapped) {
                let ack = lookup_value(reported, path);
                let code = ack.and_then(|a| a.get("ac")).and_then(Value::as_i64);
                let av = ack.and_then(|a| a.get("av")).and_then(Value::as_i64);
                if let (Some(200 | 400), Some(av)) = (code, av) {
                    self.state.raise_handled(path, av);
                }
            }
        }
        let version_of = |path: &str| {
            let mut node = desired.get("$metadata");
            for part in path.split('.') {
                node = node.and_then(|n| n.get(part));
            }
            node.and_then(|n| n.get("$lastUpdatedVersion"))
                .and_then(Value::as_i64)
                .unwrap_or(patch.version)
        };
        let props: Vec<(String, Value, i64)> = patch
            .properties
            .iter()
            .map(|p| (p.property.clone(), p.value.clone(), version_of(&p.property)))
            .collect();
        let unmapped: Vec<(String, Value)> = patch
            .unmapped
            .iter()
            .filter(|p| version_of(p) > self.state.handled(p))
            .map(|p| {
                (
                    p.clone(),
                    lookup_value(desired, p).cloned().unwrap_or(Value::Null),
                )
            })
            .collect();
        info!(
            version = patch.version,
            mapped = props.len(),
            unmapped = unmapped.len(),
            "twin received"
        );
        self.desired(patch.version, props, unmapped);
    }

    /// Desired properties at document `version`: (property, value, the property's version).
    fn desired(
        &mut self,
        version: i64,
        props: Vec<(String, Value, i64)>,
        unmapped: Vec<(String, Value)>,
    ) {
        let mut acks = Vec::new();
        for (path, value) in unmapped {
            if value.is_null() {
                // A desired property removed from the twin: nothing was asked.
                continue;
            }
            add(&self.metrics.writes_refused);
            let refusal = Refusal::NotMapped {
                property: path.clone(),
            };
            info!(target: "audit", who = %format!("twin v{version}"), property = %path, new = %text(&value), result = 400, detail = %refusal, "write refused");
            self.state.set_handled(&path, version);
            acks.push(TwinAck {
                property: path,
                value,
                code: 400,
                version,
                description: refusal.to_string(),
            });
        }
        self.twin_ack(&acks);
        for (property, value, prop_version) in props {
            if prop_version <= self.state.handled(&property) {
                debug!(property = %property, version = prop_version, "desired version already handled");
                continue;
            }
            let p = self.props.entry(property.clone()).or_default();
            if value.is_null() {
                // IoT Hub removes a desired property by patching it to null: the PLC keeps its
                // value, and a waiting write of an older value is dropped.
                info!(target: "audit", who = %format!("twin v{version}"), property = %property, result = "removed", "desired property removed: nothing written");
                p.pending = None;
                self.state.set_handled(&property, version);
                continue;
            }
            p.pending = Some(Want {
                version,
                value,
                told_unreachable: false,
                not_before: None,
            });
            self.kick(&property);
        }
    }

    /// Starts the pending twin write of `property` if it can go now.
    fn kick(&mut self, property: &str) {
        let Some(mapping) = find_mapping(&self.writes, property).cloned() else {
            return;
        };
        let Some(p) = self.props.get_mut(property) else {
            return;
        };
        if p.running {
            return;
        }
        let Some(want) = p.pending.clone() else {
            return;
        };
        let origin = Origin::Twin {
            version: want.version,
        };
        let now = Instant::now();
        if want.not_before.is_some_and(|t| now < t) {
            return;
        }
        // Checks that need no PLC: type and range.
        let variant = match coerce(&want.value, &mapping) {
            Ok(v) => v,
            Err(r) => {
                p.pending = None;
                return self.refused(&mapping, origin, want.value, &r);
            }
        };
        if let Some(rate) = mapping.max_rate {
            if let Some(last) = p.last_write {
                if now < last + rate {
                    // Latest wins: written once the interval has passed.
                    if let Some(w) = p.pending.as_mut() {
                        w.not_before = Some(last + rate);
                    }
                    return;
                }
            }
        }
        let plc = self.plcs.get(&mapping.plc);
        let ready = plc.and_then(|s| s.link.clone().filter(|_| s.checked));
        let Some(link) = ready else {
            let grace_end = self.started + STARTUP_GRACE;
            let never = plc.is_some_and(|s| !s.ever_linked);
            // Connected, its nodes being checked: kicked again when the check is done.
            let checking = plc.is_some_and(|s| s.link.is_some());
            if checking || (never && now < grace_end) {
                return;
            }
            if !want.told_unreachable {
                if let Some(w) = p.pending.as_mut() {
                    w.told_unreachable = true;
                }
                add(&self.metrics.writes_unreachable);
                let detail = format!(
                    "BadNotConnected: plc {} is not connected; written when it is back",
                    mapping.plc
                );
                info!(target: "audit", who = %format!("twin v{}", want.version), plc = %mapping.plc, node = %mapping.node, new = %text(&want.value), result = 500, detail = %detail, "write waits for the plc");
                self.twin_ack(&[TwinAck {
                    property: mapping.property.clone(),
                    value: want.value,
                    code: 500,
                    version: want.version,
                    description: detail,
                }]);
            }
            return;
        };
        p.pending = None;
        self.start_write(&mapping, origin, want.value, variant, link);
    }

    fn refused(&mut self, mapping: &WriteMapping, origin: Origin, value: Value, r: &Refusal) {
        add(&self.metrics.writes_refused);
        let who = who(&origin);
        info!(target: "audit", who = %who, plc = %mapping.plc, node = %mapping.node, property = %mapping.property, new = %text(&value), result = 400, detail = %r, "write refused");
        self.answer_write(&mapping.property, origin, value, 400, r.to_string());
    }

    fn answer_write(
        &mut self,
        property: &str,
        origin: Origin,
        value: Value,
        code: u16,
        detail: String,
    ) {
        match origin {
            Origin::Twin { version } => {
                self.state.set_handled(property, version);
                self.twin_ack(&[TwinAck {
                    property: property.to_owned(),
                    value,
                    code,
                    version,
                    description: detail,
                }]);
            }
            Origin::Request(reply) => {
                let body = write_response(&reply.id, code, &detail, Some(&value));
                self.state.finish(&reply.id, body.clone());
                self.reply(&reply, &body);
            }
        }
    }

    fn start_write(
        &mut self,
        mapping: &WriteMapping,
        origin: Origin,
        value: Value,
        variant: Variant,
        link: Link,
    ) {
        let plc_state = self.plcs.get(&mapping.plc);
        let fitness = plc_state.and_then(|s| s.fitness.get(&mapping.property).cloned());
        match fitness {
            Some(Fitness::NotWritable) => {
                return self.refused(mapping, origin, value, &Refusal::NotWritable);
            }
            Some(Fitness::WrongType { node_type }) => {
                let r = Refusal::WrongType {
                    expected: node_type,
                    got: mapping.write_type.name(),
                };
                return self.refused(mapping, origin, value, &r);
            }
            Some(Fitness::Unknown(status)) => {
                add(&self.metrics.writes_failed);
                let detail = format!(
                    "{}: node {} on plc {}",
                    plc::status_name(status),
                    mapping.node,
                    mapping.plc
                );
                info!(target: "audit", who = %who(&origin), plc = %mapping.plc, node = %mapping.node, new = %text(&value), result = 500, detail = %detail, "write failed");
                return self.answer_write(&mapping.property.clone(), origin, value, 500, detail);
            }
            Some(Fitness::Writable) | None => {}
        }
        let node = match link.ns.resolve(&mapping.node) {
            Ok(n) => n,
            Err(e) => {
                add(&self.metrics.writes_failed);
                let detail = format!("BadNodeIdUnknown: {e}");
                return self.answer_write(&mapping.property.clone(), origin, value, 500, detail);
            }
        };
        if let Some(p) = self.props.get_mut(&mapping.property) {
            p.last_write = Some(Instant::now());
            if matches!(origin, Origin::Twin { .. }) {
                p.running = true;
            }
        }
        let done = self.done_tx.clone();
        let (property, readback) = (mapping.property.clone(), mapping.readback);
        tokio::spawn(async move {
            let result = plc::write(&link, &node, variant, readback, WRITE_TIMEOUT).await;
            let _ = done.send(Done::Written {
                property,
                origin,
                value,
                result,
            });
        });
    }

    fn written(
        &mut self,
        property: String,
        origin: Origin,
        value: Value,
        result: Result<plc::Written, Failure>,
    ) {
        let Some(mapping) = find_mapping(&self.writes, &property).cloned() else {
            return;
        };
        let twin = matches!(origin, Origin::Twin { .. });
        if twin {
            if let Some(p) = self.props.get_mut(&property) {
                p.running = false;
            }
        }
        let who = who(&origin);
        match result {
            Ok(w) => {
                add(&self.metrics.writes_ok);
                let now = w
                    .now
                    .as_ref()
                    .map(plc::variant_json)
                    .unwrap_or_else(|| value.clone());
                info!(target: "audit", who = %who, plc = %mapping.plc, node = %mapping.node, property = %property, old = %opt_variant(&w.old), new = %text(&now), result = 200, plc_ms = w.took.as_secs_f64() * 1000.0, "written");
                let detail = if mapping.readback {
                    "written; read back"
                } else {
                    "written"
                };
                self.answer_write(&property, origin, now, 200, detail.to_owned());
            }
            Err(Failure::NotWritable(s)) => {
                add(&self.metrics.writes_refused);
                let detail = format!("node not writable ({})", plc::status_name(s));
                info!(target: "audit", who = %who, plc = %mapping.plc, node = %mapping.node, new = %text(&value), result = 400, detail = %detail, "write refused by the plc");
                self.answer_write(&property, origin, value, 400, detail);
            }
            Err(Failure::Refused(s)) => {
                add(&self.metrics.writes_failed);
                let detail = plc::status_name(s);
                info!(target: "audit", who = %who, plc = %mapping.plc, node = %mapping.node, new = %text(&value), result = 500, detail = %detail, "write refused by the plc");
                self.answer_write(&property, origin, value, 500, detail);
            }
            Err(Failure::Unreachable(s)) => {
                add(&self.metrics.writes_unreachable);
                info!(target: "audit", who = %who, plc = %mapping.plc, node = %mapping.node, new = %text(&value), result = 500, detail = %plc::status_name(s), "write did not reach the plc");
                match origin {
                    Origin::Twin { version } => {
                        let detail = format!(
                            "{}: plc {} unreachable; written when it is back",
                            plc::status_name(s),
                            mapping.plc
                        );
                        let p = self.props.entry(property.clone()).or_default();
                        // Keep it unless a newer desired value replaced it meanwhile.
                        if p.pending.is_none() {
                            p.pending = Some(Want {
                                version,
                                value: value.clone(),
                                told_unreachable: true,
                                not_before: Some(Instant::now() + RETRY_AFTER),
                            });
                            self.twin_ack(&[TwinAck {
                                property: property.clone(),
                                value,
                                code: 500,
                                version,
                                description: detail,
                            }]);
                        }
                    }
                    Origin::Request(_) => {
                        let detail = format!(
                            "{}: plc {} unreachable; not written",
                            plc::status_name(s),
                            mapping.plc
                        );
                        self.answer_write(&property, origin, value, 500, detail);
                    }
                }
            }
        }
        if twin {
            self.kick(&property);
        }
    }

    // ---- plain MQTT ----

    fn mqtt(&mut self, m: Inbound) {
        let Inbound::Message(msg) = m else {
            return;
        };
        let Some(topics) = self.topics.clone() else {
            return;
        };
        if msg.topic == topics.write {
            let to = |id: &str, msg: &Message| Reply {
                id: id.to_owned(),
                topic: msg
                    .response_topic
                    .clone()
                    .unwrap_or_else(|| topics.write_response.clone()),
                correlation: msg.correlation.clone(),
            };
            let req = match parse_request(&msg.payload) {
                Ok(r) => r,
                Err(e) => {
                    self.malformed("write request", &e);
                    let id = request_id(&msg.payload);
                    self.reply(
                        &to(&id, &msg),
                        &write_response(&id, 400, &e.to_string(), None),
                    );
                    return;
                }
            };
            let reply = to(&req.id, &msg);
            if self.duplicate(&reply) {
                return;
            }
            let origin = Origin::Request(reply.clone());
            let Some(mapping) = find_mapping(&self.writes, &req.property).cloned() else {
                add(&self.metrics.writes_refused);
                let r = Refusal::NotMapped {
                    property: req.property.clone(),
                };
                info!(target: "audit", who = %who(&origin), property = %req.property, new = %text(&req.value), result = 400, detail = %r, "write refused");
                self.state.begin(&req.id);
                return self.answer_write(&req.property, origin, req.value, 400, r.to_string());
            };
            let checking = self
                .plcs
                .get(&mapping.plc)
                .is_some_and(|s| s.link.is_some() && !s.checked);
            if checking {
                // Just connected, its nodes being checked: answered right after.
                self.held.push((false, Inbound::Message(msg)));
                return;
            }
            self.state.begin(&req.id);
            if expired(&req, Utc::now()) {
                return self.refused(&mapping, origin, req.value, &Refusal::Expired);
            }
            let variant = match coerce(&req.value, &mapping) {
                Ok(v) => v,
                Err(r) => return self.refused(&mapping, origin, req.value, &r),
            };
            if let (Some(rate), Some(last)) = (
                mapping.max_rate,
                self.props.get(&mapping.property).and_then(|p| p.last_write),
            ) {
                if last.elapsed() < rate {
                    let r = Refusal::Malformed(format!(
                        "rate limited: at most one write per {} ms to {}",
                        rate.as_millis(),
                        mapping.property
                    ));
                    return self.refused(&mapping, origin, req.value, &r);
                }
            }
            let link = self
                .plcs
                .get(&mapping.plc)
                .and_then(|s| s.link.clone().filter(|_| s.checked));
            match link {
                Some(link) => self.start_write(&mapping, origin, req.value, variant, link),
                None => {
                    add(&self.metrics.writes_unreachable);
                    let detail = format!(
                        "BadNotConnected: plc {} is not connected; not written",
                        mapping.plc
                    );
                    info!(target: "audit", who = %who(&origin), plc = %mapping.plc, node = %mapping.node, new = %text(&req.value), result = 500, detail = %detail, "write failed");
                    self.answer_write(&mapping.property, origin, req.value, 500, detail);
                }
            }
        } else if let Some(name) = msg.topic.strip_prefix(&topics.method_prefix) {
            let name = name.to_owned();
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Call {
                id: String,
                #[serde(default)]
                args: Value,
                #[serde(default)]
                expires: Option<chrono::DateTime<chrono::FixedOffset>>,
            }
            let to = |id: &str| Reply {
                id: id.to_owned(),
                topic: msg
                    .response_topic
                    .clone()
                    .unwrap_or_else(|| topics.method_response(&name)),
                correlation: msg.correlation.clone(),
            };
            let call = match serde_json::from_slice::<Call>(&msg.payload) {
                Ok(c) if !c.id.is_empty() => c,
                Ok(_) => {
                    add(&self.metrics.calls_bad_arguments);
                    self.malformed("method request", &"empty id");
                    return self.reply(
                        &to(""),
                        &method_body("", &name, 400, Err("empty id".into())),
                    );
                }
                Err(e) => {
                    add(&self.metrics.calls_bad_arguments);
                    self.malformed("method request", &e);
                    let id = request_id(&msg.payload);
                    return self.reply(
                        &to(&id),
                        &method_body(&id, &name, 400, Err(format!("malformed: {e}"))),
                    );
                }
            };
            let reply = to(&call.id);
            if self.duplicate(&reply) {
                return;
            }
            self.state.begin(&call.id);
            if call.expires.is_some_and(|t| Utc::now() >= t) {
                add(&self.metrics.calls_bad_arguments);
                info!(target: "audit", who = %format!("request {}", call.id), method = %name, result = 400, detail = "expired", "call refused");
                let body = method_body(&call.id, &name, 400, Err("expired".into()));
                self.state.finish(&call.id, body.clone());
                return self.reply(&reply, &body);
            }
            self.method(&name, call.args, MethodAnswer::Mqtt(reply));
        } else {
            self.malformed("mqtt topic", &msg.topic);
        }
    }

    /// A request id seen before: answers it again (or says it is in progress), true.
    fn duplicate(&mut self, reply: &Reply) -> bool {
        let Some(previous) = self.state.answer(&reply.id).cloned() else {
            return false;
        };
        add(&self.metrics.duplicates);
        info!(target: "audit", who = %format!("request {}", reply.id), result = "duplicate", "request id seen before: not applied again");
        let body = if previous.is_null() {
            {
                let mut b = write_response(
                    &reply.id,
                    202,
                    "duplicate request id: the first request is in progress",
                    None,
                );
                b["duplicate"] = Value::Bool(true);
                b
            }
        } else {
            let mut b = previous;
            b["duplicate"] = Value::Bool(true);
            b
        };
        self.reply(reply, &body);
        true
    }

    // ---- methods ----

    fn method(&mut self, name: &str, payload: Value, answer: MethodAnswer) {
        let who = match &answer {
            MethodAnswer::Hub { rid } => format!("direct method rid {rid}"),
            MethodAnswer::Mqtt(r) => format!("request {}", r.id),
        };
        let Some(m) = self.methods.iter().find(|m| m.name == name).cloned() else {
            add(&self.metrics.calls_unknown);
            info!(target: "audit", who = %who, method = %name, result = 404, "unknown method");
            let err = format!("unknown method {name:?}");
            return self.method_answer(&answer, name, 404, Err(err));
        };
        let state = self.plcs.get(&m.plc);
        let Some(link) = state.and_then(|s| s.link.clone()) else {
            add(&self.metrics.calls_failed);
            let err = format!("BadNotConnected: plc {} is not connected", m.plc);
            info!(target: "audit", who = %who, method = %name, plc = %m.plc, result = 500, detail = %err, "call failed");
            return self.method_answer(&answer, name, 500, Err(err));
        };
        let cached = state.and_then(|s| s.signatures.get(name).cloned());
        let done = self.done_tx.clone();
        let name = name.to_owned();
        info!(target: "audit", who = %who, method = %name, plc = %m.plc, object = %m.object, args = %text(&payload), "calling");
        tokio::spawn(async move {
            let generation = link.generation;
            let ids = (link.ns.resolve(&m.object), link.ns.resolve(&m.method));
            let (object, method) = match ids {
                (Ok(o), Ok(me)) => (o, me),
                _ => {
                    let _ = done.send(Done::Called {
                        name,
                        answer,
                        generation,
                        signature: None,
                        result: Err(CallError::Failed(StatusCode::BadNodeIdUnknown)),
                    });
                    return;
                }
            };
            let sig = match cached {
                Some(s) => s,
                None => match tokio::time::timeout(m.timeout, plc::signature(&link, &method)).await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(status)) => {
                        let _ = done.send(Done::Called {
                            name,
                            answer,
                            generation,
                            signature: None,
                            result: Err(CallError::Failed(status)),
                        });
                        return;
                    }
                    Err(_) => {
                        let _ = done.send(Done::Called {
                            name,
                            answer,
                            generation,
                            signature: None,
                            result: Err(CallError::Timeout),
                        });
                        return;
                    }
                },
            };
            let result = plc::call(&link, &object, &method, &sig, &payload, m.timeout).await;
            let _ = done.send(Done::Called {
                name,
                answer,
                generation,
                signature: Some(sig),
                result,
            });
        });
    }

    fn called(
        &mut self,
        name: String,
        answer: MethodAnswer,
        generation: u64,
        signature: Option<Signature>,
        result: Result<Value, CallError>,
    ) {
        if let (Some(sig), Some(m)) = (signature, self.methods.iter().find(|m| m.name == name)) {
            if let Some(s) = self.plcs.get_mut(&m.plc) {
                if s.link.as_ref().is_some_and(|l| l.generation == generation) {
                    s.signatures.insert(name.clone(), sig);
                }
            }
        }
        let (code, out) = match result {
            Ok(v) => {
                add(&self.metrics.calls_ok);
                (200, Ok(v))
            }
            Err(CallError::BadArguments(m)) => {
                add(&self.metrics.calls_bad_arguments);
                (400, Err(format!("bad arguments: {m}")))
            }
            Err(CallError::Timeout) => {
                add(&self.metrics.calls_timeout);
                (504, Err("the PLC did not answer in time".to_owned()))
            }
            Err(CallError::Failed(s)) => {
                add(&self.metrics.calls_failed);
                (500, Err(plc::status_name(s)))
            }
        };
        let who = match &answer {
            MethodAnswer::Hub { rid } => format!("direct method rid {rid}"),
            MethodAnswer::Mqtt(r) => format!("request {}", r.id),
        };
        match &out {
            Ok(v) => {
                info!(target: "audit", who = %who, method = %name, result = code, outputs = %text(v), "called")
            }
            Err(e) => {
                info!(target: "audit", who = %who, method = %name, result = code, detail = %e, "call failed")
            }
        }
        self.method_answer(&answer, &name, code, out);
    }

    fn method_answer(
        &mut self,
        answer: &MethodAnswer,
        name: &str,
        code: u16,
        out: Result<Value, String>,
    ) {
        match answer {
            MethodAnswer::Hub { rid } => {
                let body = match out {
                    Ok(v) => v,
                    Err(e) => json!({ "error": e }),
                };
                self.publish_hub(topics::method_response(code, rid), &body);
            }
            MethodAnswer::Mqtt(reply) => {
                let body = method_body(&reply.id, name, code, out);
                self.state.finish(&reply.id, body.clone());
                self.reply(reply, &body);
            }
        }
    }

    // ---- PLC sessions ----

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
        if !self.held.is_empty() && !self.starting() {
            for (hub, m) in std::mem::take(&mut self.held) {
                if hub {
                    self.hub(m);
                } else {
                    self.mqtt(m);
                }
            }
        }
        if let Some((_, at)) = &self.twin_get {
            if at.elapsed() >= TWIN_GET_TIMEOUT {
                warn!("no answer to the twin GET; asking again");
                self.get_twin();
            }
        }
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

fn who(origin: &Origin) -> String {
    match origin {
        Origin::Twin { version } => format!("twin v{version}"),
        Origin::Request(r) => format!("request {}", r.id),
    }
}

/// A method response for MQTT: `{"id", "method", "status", "outputs"}` or `... "error"}`.
fn method_body(id: &str, method: &str, status: u16, out: Result<Value, String>) -> Value {
    let mut b = json!({ "id": id, "method": method, "status": status });
    match out {
        Ok(v) => b["outputs"] = v,
        Err(e) => b["error"] = Value::from(e),
    }
    b
}

/// A method payload: JSON, or nothing (null).
fn body_json(payload: &[u8]) -> Result<Value, serde_json::Error> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(payload)
}

/// The `id` of a request that did not parse, if it has a string one.
fn request_id(payload: &[u8]) -> String {
    serde_json::from_slice::<Value>(payload)
        .ok()
        .and_then(|v| {
            v.get("id")
                .and_then(Value::as_str)
                .map(|s| s.chars().take(200).collect())
        })
        .unwrap_or_default()
}

/// The value at a dotted path of a JSON document.
fn lookup_value<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    let mut node = doc;
    for part in path.split('.') {
        node = node.get(part)?;
    }
    Some(node)
}

fn lookup(body: &[u8], path: &str) -> Value {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| lookup_value(&v, path).cloned())
        .unwrap_or(Value::Null)
}
