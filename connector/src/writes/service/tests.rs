//! The service's state machine, driven through its real channels on paused time (the clock
//! moves only by `tokio::time::advance`), without a PLC: the session watch of the line's PLC
//! holds `None`, as while it is unreachable. Most tests run [`run`] itself; the `max_rate`
//! ones build the [`Service`] and seed the time of a last write, which only a PLC could make.
//! What needs a PLC session (a write or call that reaches the PLC, the node checks) is not
//! covered here.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::twin::TWIN_GET_TIMEOUT;
use super::write::rate_wait;
use super::{run, CommandTopics, Inputs, Service, Setup, STARTUP_GRACE};
use crate::cloud::control::{Answers, Inbound, Message, Outbound, ServiceEnds};
use crate::metrics::WriteMetrics;
use crate::opcua::link::Link;
use crate::writes::MAX_ID_BYTES;

/// The expanded `command_topic` of the line.
const BASE: &str = "opcua/plant-1/line-a/cmd";

/// One PLC, two writes (one with `max_rate`) and one method.
const LINE: &str = r#"
[line]
id = "line-a"
site = "plant-1"

[[plc]]
id = "filler"
endpoint = "opc.tcp://192.0.2.10:4840"

  [[plc.group]]
  name = "fast"
  publishing_interval = "100ms"
  nodes = ["ns=2;s=Filler.Speed"]

[[write]]
property = "speed"
plc = "filler"
node = "ns=2;s=Filler.SpeedSetpoint"
type = "Double"
min = 0
max = 1200
max_rate = "1s"

[[write]]
property = "recipe.name"
plc = "filler"
node = "ns=2;s=Filler.Recipe"
type = "String"

[[method]]
name = "reset"
plc = "filler"
object = "ns=2;s=Filler"
method = "ns=2;s=Filler.Reset"
"#;

const NOT_CONNECTED_TWIN: &str =
    "BadNotConnected: plc filler is not connected; written when it is back";
const NOT_CONNECTED_REQUEST: &str = "BadNotConnected: plc filler is not connected; not written";

/// The service's far ends: what the cloud connections and the PLC session task hold.
struct Ends {
    hub: mpsc::Sender<Inbound>,
    hub_out: mpsc::Receiver<Outbound>,
    mqtt: mpsc::Sender<Inbound>,
    mqtt_out: mpsc::Receiver<Outbound>,
    metrics: Arc<WriteMetrics>,
    /// The PLC's session as its session task publishes it: `None`, never connected.
    _plc: watch::Sender<Option<Link>>,
}

/// The setup of [`LINE`] with its state file at `state_file`, and the far ends.
fn setup(state_file: &Path) -> (Setup, Ends) {
    let config = crate::config::parse(Path::new("t.toml"), LINE).unwrap_or_else(|e| panic!("{e}"));
    let (hub_in_tx, hub_in) = mpsc::channel(16);
    let (hub_out, hub_out_rx) = Answers::channel(1024, Arc::default());
    let (mqtt_in_tx, mqtt_in) = mpsc::channel(16);
    let (mqtt_out, mqtt_out_rx) = Answers::channel(1024, Arc::default());
    let (plc_tx, plc_rx) = watch::channel(None);
    let metrics = Arc::new(WriteMetrics::default());
    let setup = Setup {
        writes: config.writes,
        methods: config.methods,
        links: vec![("filler".to_owned(), plc_rx)],
        hub: Some(ServiceEnds {
            inbound: hub_in.into(),
            outbound: hub_out,
        }),
        mqtt: Some((
            ServiceEnds {
                inbound: mqtt_in.into(),
                outbound: mqtt_out,
            },
            CommandTopics::new(BASE),
        )),
        state_file: state_file.to_owned(),
        metrics: metrics.clone(),
        limits: config
            .plcs
            .iter()
            .map(|p| (p.id.clone(), p.max_concurrent_commands))
            .collect(),
        pending_max_age: crate::config::load::DEFAULT_PENDING_WRITE_MAX_AGE,
        rules: None,
        hub_identity: None,
    };
    let ends = Ends {
        hub: hub_in_tx,
        hub_out: hub_out_rx,
        mqtt: mqtt_in_tx,
        mqtt_out: mqtt_out_rx,
        metrics,
        _plc: plc_tx,
    };
    (setup, ends)
}

/// Lets every task run what it can, without the clock moving.
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

/// Moves the paused clock on by `d`, 100 ms at a time, letting the tasks run at each step.
async fn step(d: Duration) {
    let mut left = d;
    while !left.is_zero() {
        let s = left.min(Duration::from_millis(100));
        tokio::time::advance(s).await;
        settle().await;
        left -= s;
    }
}

fn message(topic: &str, payload: &[u8]) -> Message {
    Message {
        topic: topic.to_owned(),
        payload: payload.to_vec(),
        response_topic: None,
        correlation: None,
    }
}

/// What was published since the last look: (topic, body as JSON, `Null` when empty).
fn sent(out: &mut mpsc::Receiver<Outbound>) -> Vec<(String, Value)> {
    let mut all = Vec::new();
    while let Ok(o) = out.try_recv() {
        let body = if o.payload.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&o.payload).unwrap()
        };
        all.push((o.topic, body));
    }
    all
}

fn count(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn twin_get(rid: &str) -> (String, Value) {
    (format!("$iothub/twin/GET/?$rid={rid}"), Value::Null)
}

fn reported(rid: &str, body: Value) -> (String, Value) {
    (
        format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}"),
        body,
    )
}

fn write_answer(body: Value) -> (String, Value) {
    (format!("{BASE}/write/response"), body)
}

/// [`run`] on [`LINE`], its PLC never connected.
struct Line {
    ends: Ends,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    started: Instant,
}

impl Line {
    async fn start(state_file: &Path) -> Line {
        Line::start_with(state_file, |_| {}).await
    }

    async fn start_with(state_file: &Path, tweak: impl FnOnce(&mut Setup)) -> Line {
        let (mut setup, ends) = setup(state_file);
        tweak(&mut setup);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(setup, shutdown.clone()));
        let started = Instant::now();
        settle().await;
        Line {
            ends,
            shutdown,
            task,
            started,
        }
    }

    /// Stops the service; its state is saved when this returns.
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }

    /// Moves the clock past the startup grace (requests are held until then).
    async fn after_grace(&self) {
        let left = (self.started + STARTUP_GRACE + Duration::from_millis(200)) - Instant::now();
        step(left).await;
    }

    async fn hub_connected(&self) {
        self.ends.hub.send(Inbound::Connected).await.unwrap();
        settle().await;
    }

    async fn hub(&self, topic: &str, payload: &[u8]) {
        let m = Inbound::Message(message(topic, payload));
        self.ends.hub.send(m).await.unwrap();
        settle().await;
    }

    async fn desired(&self, body: Value) {
        let version = body["$version"].as_i64().unwrap();
        let topic = format!("$iothub/twin/PATCH/properties/desired/?$version={version}");
        self.hub(&topic, body.to_string().as_bytes()).await;
    }

    async fn mqtt_message(&self, m: Message) {
        self.ends.mqtt.send(Inbound::Message(m)).await.unwrap();
        settle().await;
    }

    async fn mqtt(&self, topic: &str, payload: &[u8]) {
        self.mqtt_message(message(topic, payload)).await;
    }

    async fn write(&self, body: Value) {
        let topic = format!("{BASE}/write");
        self.mqtt(&topic, body.to_string().as_bytes()).await;
    }

    fn hub_sent(&mut self) -> Vec<(String, Value)> {
        sent(&mut self.ends.hub_out)
    }

    fn mqtt_sent(&mut self) -> Vec<(String, Value)> {
        sent(&mut self.ends.mqtt_out)
    }

    fn metrics(&self) -> &WriteMetrics {
        &self.ends.metrics
    }
}

// ---- IoT Hub twin ----

#[tokio::test(start_paused = true)]
async fn twin_get_after_connack_is_asked_again_after_its_timeout_not_before() {
    let dir = tempfile::tempdir().unwrap();
    let mut line = Line::start(&dir.path().join("state.jsonl")).await;
    assert!(line.hub_sent().is_empty(), "nothing before the ConnAck");
    line.hub_connected().await;
    assert_eq!(line.hub_sent(), [twin_get("1")]);
    let asked = Instant::now();
    let mut again = None;
    for _ in 0..150 {
        step(Duration::from_millis(100)).await;
        let out = line.hub_sent();
        if !out.is_empty() {
            assert_eq!(out, [twin_get("2")]);
            again = Some(asked.elapsed());
            break;
        }
    }
    let again = again.expect("the twin GET was not asked again");
    assert!(
        again >= TWIN_GET_TIMEOUT && again <= TWIN_GET_TIMEOUT + Duration::from_millis(200),
        "asked again after {again:?}"
    );
    // And again, every TWIN_GET_TIMEOUT while there is no answer.
    step(TWIN_GET_TIMEOUT).await;
    assert_eq!(line.hub_sent(), [twin_get("3")]);
    line.stop().await;
}

#[tokio::test(start_paused = true)]
async fn twin_get_refused_by_the_hub_is_asked_again_after_2_s() {
    let dir = tempfile::tempdir().unwrap();
    let mut line = Line::start(&dir.path().join("state.jsonl")).await;
    line.hub_connected().await;
    assert_eq!(line.hub_sent(), [twin_get("1")]);
    line.hub("$iothub/twin/res/429/?$rid=1", b"").await;
    step(Duration::from_millis(1800)).await;
    assert!(line.hub_sent().is_empty());
    step(Duration::from_millis(400)).await;
    assert_eq!(line.hub_sent(), [twin_get("2")]);
    // An answer to another rid (a reported PATCH) is not the twin: the GET stays open.
    line.hub("$iothub/twin/res/204/?$rid=1&$version=4", b"")
        .await;
    step(TWIN_GET_TIMEOUT).await;
    assert_eq!(line.hub_sent(), [twin_get("3")]);
    line.stop().await;
}

#[tokio::test(start_paused = true)]
async fn twin_get_answer_is_reconciled_with_the_acks_already_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut line = Line::start(&dir.path().join("state.jsonl")).await;
    line.hub_connected().await;
    assert_eq!(line.hub_sent(), [twin_get("1")]);
    let twin = json!({
        "desired": {
            "speed": 100,
            "recipe": {"name": "Sparkling"},
            "color": "red",
            "mode": "auto",
            "$version": 7,
        },
        "reported": {
            // Handled before: the state file may be lost, the twin remembers.
            "speed": {"value": 100, "ac": 200, "av": 7, "ad": "written"},
            "color": {"value": "red", "ac": 400, "av": 7, "ad": "not mapped: color"},
            "$version": 3,
        },
    });
    line.hub("$iothub/twin/res/200/?$rid=1", twin.to_string().as_bytes())
        .await;
    // The unmapped property not acknowledged yet is refused at once.
    assert_eq!(
        line.hub_sent(),
        [reported(
            "2",
            json!({"mode": {"value": "auto", "ac": 400, "av": 7, "ad": "not mapped: mode"}})
        )]
    );
    // The mapped one not acknowledged yet waits for its PLC (startup grace), then 500; the
    // twin GET was answered, so it is not asked again.
    step(Duration::from_secs(20)).await;
    assert_eq!(
        line.hub_sent(),
        [reported(
            "3",
            json!({"recipe": {"name": {"value": "Sparkling", "ac": 500, "av": 7,
                "ad": NOT_CONNECTED_TWIN}}})
        )]
    );
    assert_eq!(count(&line.metrics().writes_refused), 1);
    assert_eq!(count(&line.metrics().writes_unreachable), 1);
    line.stop().await;
}

#[tokio::test(start_paused = true)]
async fn twin_write_to_a_plc_not_connected_is_answered_500_after_the_startup_grace() {
    let dir = tempfile::tempdir().unwrap();
    let mut line = Line::start(&dir.path().join("state.jsonl")).await;
    line.desired(json!({"speed": 100, "$version": 3})).await;
    let mut answered = None;
    for _ in 0..100 {
        let out = line.hub_sent();
        if !out.is_empty() {
            assert_eq!(
                out,
                [reported(
                    "1",
                    json!({"speed": {"value": 100, "ac": 500, "av": 3, "ad": NOT_CONNECTED_TWIN}})
                )]
            );
            answered = Some(line.started.elapsed());
            break;
        }
        step(Duration::from_millis(100)).await;
    }
    let answered = answered.expect("never answered");
    assert!(
        answered >= STARTUP_GRACE && answered <= STARTUP_GRACE + Duration::from_millis(200),
        "answered after {answered:?}"
    );
    assert_eq!(count(&line.metrics().writes_unreachable), 1);
    // Answered once; the write is kept for when the PLC is back.
    step(Duration::from_secs(10)).await;
    assert!(line.hub_sent().is_empty());
    // A newer desired value replaces it and is answered (at once, the grace is over).
    line.desired(json!({"speed": 200, "$version": 4})).await;
    assert_eq!(
        line.hub_sent(),
        [reported(
            "2",
            json!({"speed": {"value": 200, "ac": 500, "av": 4, "ad": NOT_CONNECTED_TWIN}})
        )]
    );
    assert_eq!(count(&line.metrics().writes_unreachable), 2);
    assert_eq!(count(&line.metrics().writes_refused), 0);
    line.stop().await;
}

#[tokio::test(start_paused = true)]
async fn twin_unmapped_desired_property_is_refused_400_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut line = Line::start(&dir.path().join("state.jsonl")).await;
    line.desired(json!({"$version": 4, "color": "red", "gone": null, "recipe": {"size": 2}}))
        .await;
    assert_eq!(
        line.hub_sent(),
        [reported(
            "1",
            json!({
                "color": {"value": "red", "ac": 400, "av": 4, "ad": "not mapped: color"},
                "recipe": {"size": {"value": 2, "ac": 400, "av": 4, "ad": "not mapped: recipe.size"}},
            })
        )]
    );
    assert_eq!(count(&line.metrics().writes_refused), 2);
    assert_eq!(count(&line.metrics().writes_unreachable), 0);
    line.stop().await;
}

#[tokio::test(start_paused = true)]
async fn twin_version_already_handled_is_not_answered_again() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.jsonl");
    let mut line = Line::start(&state).await;
    // Out of range: refused (400) before any PLC is needed, so handled at version 5.
    line.desired(json!({"speed": 5000, "$version": 5})).await;
    let refused = json!({"speed": {"value": 5000, "ac": 400, "av": 5,
        "ad": "out of range: 5000 not in [0, 1200]"}});
    assert_eq!(line.hub_sent(), [reported("1", refused)]);
    // The same patch again, an older one, and the full twin at that version: nothing.
    line.desired(json!({"speed": 5000, "$version": 5})).await;
    line.desired(json!({"speed": 10, "$version": 4})).await;
    line.hub_connected().await;
    assert_eq!(line.hub_sent(), [twin_get("2")]);
    let twin = json!({"desired": {"speed": 5000, "$version": 5}, "reported": {"$version": 1}});
    line.hub("$iothub/twin/res/200/?$rid=2", twin.to_string().as_bytes())
        .await;
    step(Duration::from_secs(10)).await;
    assert!(line.hub_sent().is_empty());
    assert_eq!(count(&line.metrics().writes_refused), 1);
    assert_eq!(count(&line.metrics().writes_unreachable), 0);
    // Remembered across a restart (the state file).
    line.stop().await;
    let mut line = Line::start(&state).await;
    line.desired(json!({"speed": 5000, "$version": 5})).await;
    step(Duration::from_secs(10)).await;
    assert!(line.hub_sent().is_empty());
    // A newer version is answered.
    line.desired(json!({"speed": 6000, "$version": 6})).await;
    let out = line.hub_sent();
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].1["speed"]["ac"], 400);
    assert_eq!(out[0].1["speed"]["av"], 6);
    line.stop().await;
}

#[tokio::test(start_paused = true)]
async fn hub_message_on_an_unknown_topic_is_counted_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let mut line = Line::start(&dir.path().join("state.jsonl")).await;
    line.hub("$iothub/something/else", b"{}").await;
    let patch = "$iothub/twin/PATCH/properties/desired/?$version=1";
    line.hub(patch, b"{").await;
    line.hub(patch, br#"{"speed": 1}"#).await; // no $version
    line.hub("$iothub/twin/res/200/?$rid=1", b"{}").await; // not an answer to our GET
    assert_eq!(count(&line.metrics().malformed), 3);
    assert!(line.hub_sent().is_empty());
    line.stop().await;
}

// ---- plain MQTT write requests ----

#[tokio::test(start_paused = true)]
async fn mqtt_requests_wait_for_the_startup_grace_then_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let mut line = Line::start(&dir.path().join("state.jsonl")).await;
    line.write(json!({"id": "r1", "property": "speed", "value": 10}))
        .await;
    line.mqtt(&format!("{BASE}/method/reset"), br#"{"id": "m1"}"#)
        .await;
    step(STARTUP_GRACE - Duration::from_millis(100)).await;
    assert!(line.mqtt_sent().is_empty(), "held while the PLC may come");
    step(Duration::from_millis(300)).await;
    assert_eq!(
        line.mqtt_sent(),
        [
            write_answer(
                json!({"id": "r1", "status": 500, "detail": NOT_CONNECTED_REQUEST,
                "value": 10})
            ),
            (
                format!("{BASE}/method/reset/response"),
                json!({"id": "m1", "method": "reset", "status": 500,
                    "error": "BadNotConnected: plc filler is not connected"})
            ),
        ]
    );
    assert_eq!(count(&line.metrics().writes_unreachable), 1);
    assert_eq!(count(&line.metrics().calls_failed), 1);
    line.stop().await;
}

#[tokio::test(start_paused = true)]
async fn mqtt_expired_request_is_refused_400() {
    let dir = tempfile::tempdir().unwrap();
    let mut line = Line::start(&dir.path().join("state.jsonl")).await;
    line.after_grace().await;
    line.write(json!({"id": "r1", "property": "speed", "value": 10,
        "expires": "2020-01-01T00:00:00Z"}))
        .await;
    assert_eq!(
        line.mqtt_sent(),
        [write_answer(
            json!({"id": "r1", "status": 400, "detail": "expired", "value": 10})
        )]
    );
    assert_eq!(count(&line.metrics().writes_refused), 1);
    assert_eq!(count(&line.metrics().writes_unreachable), 0);
    line.stop().await;
}

#[tokio::test(start_paused = true)]
async fn mqtt_malformed_request_is_counted_and_answered_400() {
    let dir = tempfile::tempdir().unwrap();
    let mut line = Line::start(&dir.path().join("state.jsonl")).await;
    line.after_grace().await;
    let topic = format!("{BASE}/write");
    line.mqtt(&topic, b"{not json").await;
    let out = line.mqtt_sent();
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].0, format!("{BASE}/write/response"));
    assert_eq!(out[0].1["id"], "");
    assert_eq!(out[0].1["status"], 400);
    assert!(out[0].1.get("value").is_none());
    let detail = out[0].1["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("malformed: key must be a string"),
        "{detail}"
    );
    // With a readable id, the answer carries it; with an MQTT 5 response topic, it goes there
    // with the correlation data.
    let mut m = message(&topic, br#"{"id": "r2", "property": "speed"}"#);
    m.response_topic = Some(format!("{BASE}/replies/r2"));
    m.correlation = Some(b"c-2".to_vec());
    line.mqtt_message(m).await;
    let out = line.ends.mqtt_out.try_recv().unwrap();
    assert_eq!(out.topic, format!("{BASE}/replies/r2"));
    assert_eq!(out.correlation.as_deref(), Some(&b"c-2"[..]));
    let body: Value = serde_json::from_slice(&out.payload).unwrap();
    assert_eq!(body["id"], "r2");
    assert_eq!(body["status"], 400);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("malformed: missing field `value`"),
        "{body}"
    );
    // A topic that is neither the write topic nor a method: counted, not answered.
    line.mqtt(&format!("{BASE}/other"), b"{}").await;
    assert!(line.mqtt_sent().is_empty());
    assert_eq!(count(&line.metrics().malformed), 3);
    // An MQTT 5 response topic outside {base}/ is ignored (counted): the answer goes to the
    // default topic.
    for outside in [
        "elsewhere/r3",
        "opcua/plant-1/line-a/cmdx/r3",
        &format!("{BASE}/#"),
    ] {
        let mut m = message(&topic, br#"{"id": "r3", "property": "speed"}"#);
        m.response_topic = Some(outside.to_owned());
        line.mqtt_message(m).await;
        let out = line.ends.mqtt_out.try_recv().unwrap();
        assert_eq!(out.topic, format!("{BASE}/write/response"), "{outside}");
    }
    assert_eq!(count(&line.metrics().malformed), 9);
    assert_eq!(count(&line.metrics().writes_refused), 0);
    line.stop().await;
}

#[tokio::test(start_paused = true)]
async fn mqtt_oversized_ids_and_properties_are_refused_400_and_not_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.jsonl");
    let mut line = Line::start(&state).await;
    line.after_grace().await;
    let long = "i".repeat(MAX_ID_BYTES + 1);
    let fits = "i".repeat(MAX_ID_BYTES);
    line.write(json!({"id": long, "property": "speed", "value": "v".repeat(100_000)}))
        .await;
    line.write(json!({"id": "r1", "property": "p".repeat(129), "value": 1}))
        .await;
    line.write(json!({"id": fits, "property": "speed", "value": 5000}))
        .await;
    let out = line.mqtt_sent();
    assert_eq!(out.len(), 3, "{out:?}");
    assert_eq!(
        out[0].1,
        json!({"id": "", "status": 400, "detail": "malformed: id is 129 bytes; at most 128"})
    );
    assert_eq!(
        out[1].1,
        json!({"id": "r1", "status": 400, "detail": "malformed: property is 129 bytes; at most 128"})
    );
    assert_eq!(out[2].1["id"], json!(fits));
    assert_eq!(out[2].1["status"], 400);
    assert_eq!(count(&line.metrics().malformed), 2);
    // A method call with a long id, or a long method name: refused, not remembered.
    line.mqtt(
        &format!("{BASE}/method/reset"),
        json!({"id": long}).to_string().as_bytes(),
    )
    .await;
    line.mqtt(
        &format!("{BASE}/method/{}", "m".repeat(200)),
        br#"{"id": "m1"}"#,
    )
    .await;
    let out = line.mqtt_sent();
    assert_eq!(out.len(), 1, "the long name is not answered: {out:?}");
    assert_eq!(out[0].1["id"], "");
    assert_eq!(out[0].1["error"], "malformed: id is 129 bytes; at most 128");
    assert_eq!(count(&line.metrics().malformed), 4);
    line.stop().await;
    let kept = std::fs::read_to_string(&state).unwrap();
    assert!(!kept.contains(&long), "the long id is not kept");
    assert!(!kept.contains("vvvv"), "no value is kept");
    assert!(kept.contains(&fits));
}

#[tokio::test(start_paused = true)]
async fn mqtt_repeated_request_id_is_answered_as_duplicate_not_applied_twice() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.jsonl");
    let mut line = Line::start(&state).await;
    line.after_grace().await;
    line.write(json!({"id": "r3", "property": "speed", "value": 10}))
        .await;
    let first = json!({"id": "r3", "status": 500, "detail": NOT_CONNECTED_REQUEST, "value": 10});
    assert_eq!(line.mqtt_sent(), [write_answer(first.clone())]);
    // The same id, even with another value: the first answer, marked.
    line.write(json!({"id": "r3", "property": "speed", "value": 20}))
        .await;
    // Remembered without the value (the state keeps id, status and detail).
    let mut again = first.clone();
    again["duplicate"] = json!(true);
    again.as_object_mut().unwrap().remove("value");
    assert_eq!(line.mqtt_sent(), [write_answer(again.clone())]);
    assert_eq!(count(&line.metrics().duplicates), 1);
    assert_eq!(
        count(&line.metrics().writes_unreachable),
        1,
        "not applied twice"
    );
    // Across a restart too.
    line.stop().await;
    let mut line = Line::start(&state).await;
    line.after_grace().await;
    line.write(json!({"id": "r3", "property": "speed", "value": 10}))
        .await;
    assert_eq!(line.mqtt_sent(), [write_answer(again)]);
    assert_eq!(count(&line.metrics().writes_unreachable), 0);
    line.stop().await;
}

#[tokio::test(start_paused = true)]
async fn mqtt_request_for_an_unmapped_or_unfit_value_is_refused_400() {
    let dir = tempfile::tempdir().unwrap();
    let mut line = Line::start(&dir.path().join("state.jsonl")).await;
    line.after_grace().await;
    line.write(json!({"id": "r4", "property": "nope", "value": 1}))
        .await;
    line.write(json!({"id": "r5", "property": "speed", "value": "fast"}))
        .await;
    line.write(json!({"id": "r6", "property": "speed", "value": 5000}))
        .await;
    assert_eq!(
        line.mqtt_sent(),
        [
            write_answer(
                json!({"id": "r4", "status": 400, "detail": "not mapped: nope",
                "value": 1})
            ),
            write_answer(json!({"id": "r5", "status": 400,
                "detail": "wrong type: expected Double, got string", "value": "fast"})),
            write_answer(json!({"id": "r6", "status": 400,
                "detail": "out of range: 5000 not in [0, 1200]", "value": 5000})),
        ]
    );
    assert_eq!(count(&line.metrics().writes_refused), 3);
    assert_eq!(count(&line.metrics().writes_unreachable), 0);
    line.stop().await;
}

// ---- max_rate ----

#[test]
fn rate_wait_allows_one_write_per_interval() {
    let rate = Duration::from_secs(1);
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    assert_eq!(rate_wait(rate, None, t0), None, "never written");
    assert_eq!(rate_wait(rate, Some(t0), t0), Some(t0 + rate));
    assert_eq!(rate_wait(rate, Some(t0), t0 + ms(999)), Some(t0 + rate));
    assert_eq!(rate_wait(rate, Some(t0), t0 + rate), None, "inclusive");
    assert_eq!(rate_wait(rate, Some(t0), t0 + ms(5000)), None);
}

/// The service of [`LINE`] without its loop, `max_rate`'s last write of `speed` seeded.
fn service(state_file: &Path) -> (Service, Inputs, Ends) {
    let (setup, ends) = setup(state_file);
    let (mut svc, inputs) = Service::new(setup);
    svc.props.get_mut("speed").unwrap().last_write = Some(Instant::now());
    (svc, inputs, ends)
}

fn request(body: Value) -> Inbound {
    Inbound::Message(message(
        &format!("{BASE}/write"),
        body.to_string().as_bytes(),
    ))
}

#[tokio::test(start_paused = true)]
async fn mqtt_request_within_max_rate_of_the_last_write_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut svc, _inputs, mut ends) = service(&dir.path().join("state.jsonl"));
    let rate_limited = "malformed: rate limited: at most one write per 1000 ms to speed";
    svc.mqtt(request(
        json!({"id": "a", "property": "speed", "value": 10}),
    ));
    tokio::time::advance(Duration::from_millis(999)).await;
    svc.mqtt(request(
        json!({"id": "b", "property": "speed", "value": 11}),
    ));
    tokio::time::advance(Duration::from_millis(1)).await;
    svc.mqtt(request(
        json!({"id": "c", "property": "speed", "value": 12}),
    ));
    assert_eq!(
        sent(&mut ends.mqtt_out),
        [
            write_answer(json!({"id": "a", "status": 400, "detail": rate_limited, "value": 10})),
            write_answer(json!({"id": "b", "status": 400, "detail": rate_limited, "value": 11})),
            // Past the interval: on to the PLC, which is not connected.
            write_answer(
                json!({"id": "c", "status": 500, "detail": NOT_CONNECTED_REQUEST,
                "value": 12})
            ),
        ]
    );
    assert_eq!(count(&ends.metrics.writes_refused), 2);
    assert_eq!(count(&ends.metrics.malformed), 0);
    assert_eq!(count(&ends.metrics.writes_unreachable), 1);
}

#[tokio::test(start_paused = true)]
async fn twin_value_within_max_rate_waits_for_the_interval_and_the_latest_wins() {
    let dir = tempfile::tempdir().unwrap();
    let (mut svc, _inputs, mut ends) = service(&dir.path().join("state.jsonl"));
    let patch = |version: i64, speed: i64| {
        let body = json!({"speed": speed, "$version": version});
        Inbound::Message(message(
            &format!("$iothub/twin/PATCH/properties/desired/?$version={version}"),
            body.to_string().as_bytes(),
        ))
    };
    // Past the startup grace, a write 400 ms ago.
    tokio::time::advance(STARTUP_GRACE).await;
    let last = Instant::now() - Duration::from_millis(400);
    svc.props.get_mut("speed").unwrap().last_write = Some(last);
    svc.hub(patch(8, 10));
    let want = svc.props["speed"].pending.clone().unwrap();
    assert_eq!(want.not_before, Some(last + Duration::from_secs(1)));
    tokio::time::advance(Duration::from_millis(300)).await;
    svc.hub(patch(9, 20));
    svc.tick();
    assert!(sent(&mut ends.hub_out).is_empty(), "too early");
    tokio::time::advance(Duration::from_millis(299)).await;
    svc.tick();
    assert!(sent(&mut ends.hub_out).is_empty(), "too early");
    tokio::time::advance(Duration::from_millis(1)).await;
    svc.tick();
    // On to the PLC, which is not connected: only the latest value is answered.
    assert_eq!(
        sent(&mut ends.hub_out),
        [reported(
            "1",
            json!({"speed": {"value": 20, "ac": 500, "av": 9, "ad": NOT_CONNECTED_TWIN}})
        )]
    );
    assert_eq!(count(&ends.metrics.writes_unreachable), 1);
}

// ---- methods ----

#[tokio::test(start_paused = true)]
async fn unknown_method_is_404_over_the_hub_and_mqtt() {
    let dir = tempfile::tempdir().unwrap();
    let mut line = Line::start(&dir.path().join("state.jsonl")).await;
    line.after_grace().await;
    line.hub("$iothub/methods/POST/nope/?$rid=7", b"{}").await;
    assert_eq!(
        line.hub_sent(),
        [(
            "$iothub/methods/res/404/?$rid=7".to_owned(),
            json!({"error": "unknown method \"nope\""})
        )]
    );
    line.mqtt(&format!("{BASE}/method/nope"), br#"{"id": "m1"}"#)
        .await;
    assert_eq!(
        line.mqtt_sent(),
        [(
            format!("{BASE}/method/nope/response"),
            json!({"id": "m1", "method": "nope", "status": 404,
                "error": "unknown method \"nope\""})
        )]
    );
    assert_eq!(count(&line.metrics().calls_unknown), 2);
    assert_eq!(count(&line.metrics().calls_failed), 0);
    line.stop().await;
}

#[tokio::test(start_paused = true)]
async fn method_of_a_plc_not_connected_is_500() {
    let dir = tempfile::tempdir().unwrap();
    let mut line = Line::start(&dir.path().join("state.jsonl")).await;
    // Held during the startup grace, then answered.
    line.hub("$iothub/methods/POST/reset/?$rid=8", b"").await;
    step(STARTUP_GRACE - Duration::from_millis(100)).await;
    assert!(line.hub_sent().is_empty());
    step(Duration::from_millis(300)).await;
    let error = "BadNotConnected: plc filler is not connected";
    assert_eq!(
        line.hub_sent(),
        [(
            "$iothub/methods/res/500/?$rid=8".to_owned(),
            json!({"error": error})
        )]
    );
    line.mqtt(
        &format!("{BASE}/method/reset"),
        br#"{"id": "m2", "args": {"Reason": "x"}}"#,
    )
    .await;
    let answer = json!({"id": "m2", "method": "reset", "status": 500, "error": error});
    let topic = format!("{BASE}/method/reset/response");
    assert_eq!(line.mqtt_sent(), [(topic.clone(), answer.clone())]);
    assert_eq!(count(&line.metrics().calls_failed), 2);
    // A call id seen before: its first answer, marked, not called again.
    line.mqtt(&format!("{BASE}/method/reset"), br#"{"id": "m2"}"#)
        .await;
    let mut again = answer;
    again["duplicate"] = json!(true);
    assert_eq!(line.mqtt_sent(), [(topic, again)]);
    assert_eq!(count(&line.metrics().calls_failed), 2);
    assert_eq!(count(&line.metrics().duplicates), 1);
    line.stop().await;
}

#[tokio::test(start_paused = true)]
async fn method_with_bad_json_or_expired_is_400() {
    let dir = tempfile::tempdir().unwrap();
    let mut line = Line::start(&dir.path().join("state.jsonl")).await;
    line.after_grace().await;
    line.hub("$iothub/methods/POST/reset/?$rid=9", b"{oops")
        .await;
    let out = line.hub_sent();
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].0, "$iothub/methods/res/400/?$rid=9");
    let error = out[0].1["error"].as_str().unwrap();
    assert!(error.starts_with("malformed payload: "), "{error}");
    assert_eq!(count(&line.metrics().calls_bad_arguments), 1);
    assert_eq!(count(&line.metrics().malformed), 1);

    let topic = format!("{BASE}/method/reset");
    line.mqtt(&topic, br#"{"id": "m3", "argz": 1}"#).await;
    line.mqtt(&topic, b"not json").await;
    line.mqtt(&topic, br#"{"id": ""}"#).await;
    line.mqtt(
        &topic,
        br#"{"id": "m4", "expires": "2020-01-01T00:00:00Z"}"#,
    )
    .await;
    let out = line.mqtt_sent();
    assert_eq!(out.len(), 4, "{out:?}");
    for (t, body) in &out {
        assert_eq!(*t, format!("{BASE}/method/reset/response"));
        assert_eq!(body["status"], 400, "{body}");
        assert_eq!(body["method"], "reset", "{body}");
    }
    let ids: Vec<&Value> = out.iter().map(|(_, b)| &b["id"]).collect();
    assert_eq!(ids, [&json!("m3"), &json!(""), &json!(""), &json!("m4")]);
    let errors: Vec<&str> = out
        .iter()
        .map(|(_, b)| b["error"].as_str().unwrap())
        .collect();
    assert!(
        errors[0].starts_with("malformed: unknown field `argz`"),
        "{}",
        errors[0]
    );
    assert!(errors[1].starts_with("malformed: "), "{}", errors[1]);
    assert_eq!(errors[2], "malformed: empty id");
    assert_eq!(errors[3], "expired");
    assert_eq!(count(&line.metrics().calls_bad_arguments), 5);
    assert_eq!(
        count(&line.metrics().malformed),
        4,
        "expiry is not malformed"
    );
    assert_eq!(count(&line.metrics().calls_failed), 0);
    line.stop().await;
}

#[test]
fn command_topics_of_a_base() {
    let t = CommandTopics::new(BASE);
    assert_eq!(t.write, format!("{BASE}/write"));
    assert_eq!(t.write_response, format!("{BASE}/write/response"));
    assert_eq!(
        t.method_response("reset"),
        format!("{BASE}/method/reset/response")
    );
    assert_eq!(
        t.subscriptions(),
        [format!("{BASE}/write"), format!("{BASE}/method/+")]
    );
}

#[tokio::test(start_paused = true)]
async fn throttled_or_unanswered_acknowledgements_are_sent_again_latest_wins() {
    let dir = tempfile::tempdir().unwrap();
    let mut line = Line::start(&dir.path().join("state.jsonl")).await;
    line.desired(json!({"speed": 5000, "$version": 5})).await;
    let v5 = json!({"speed": {"value": 5000, "ac": 400, "av": 5,
        "ad": "out of range: 5000 not in [0, 1200]"}});
    assert_eq!(line.hub_sent(), [reported("1", v5.clone())]);
    // Throttled: sent again after the back-off (1 s + jitter), with a new request id.
    line.hub("$iothub/twin/res/429/?$rid=1", b"").await;
    step(Duration::from_millis(900)).await;
    assert!(line.hub_sent().is_empty(), "not before the back-off");
    step(Duration::from_millis(500)).await;
    assert_eq!(line.hub_sent(), [reported("2", v5.clone())]);
    assert_eq!(count(&line.metrics().acks_retried), 1);
    // A 5xx for it, and a newer acknowledgement of the same property meanwhile: only the
    // newer one exists; the old one is not sent again.
    line.hub("$iothub/twin/res/503/?$rid=2", b"").await;
    line.desired(json!({"speed": 6000, "$version": 6})).await;
    let v6 = json!({"speed": {"value": 6000, "ac": 400, "av": 6,
        "ad": "out of range: 6000 not in [0, 1200]"}});
    assert_eq!(line.hub_sent(), [reported("3", v6.clone())]);
    step(Duration::from_secs(5)).await;
    assert!(
        line.hub_sent().is_empty(),
        "the older ack is not sent again"
    );
    // Accepted (204): nothing more. No answer at all: sent again after 30 s.
    line.hub("$iothub/twin/res/204/?$rid=3&$version=2", b"")
        .await;
    line.desired(json!({"speed": 7000, "$version": 7})).await;
    assert_eq!(line.hub_sent().len(), 1);
    step(Duration::from_secs(29)).await;
    assert!(line.hub_sent().is_empty());
    step(Duration::from_secs(4)).await;
    let again = line.hub_sent();
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].1["speed"]["av"], 7);
    // Another 4xx: logged and counted, not sent again.
    line.hub("$iothub/twin/res/400/?$rid=5", b"").await;
    step(Duration::from_secs(120)).await;
    assert!(line.hub_sent().is_empty());
    assert_eq!(count(&line.metrics().acks_refused), 1);
    assert_eq!(count(&line.metrics().acks_retried), 3);
    line.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_twin_write_waiting_longer_than_pending_write_max_age_is_acknowledged_expired() {
    let dir = tempfile::tempdir().unwrap();
    let mut line = Line::start_with(&dir.path().join("state.jsonl"), |s| {
        s.pending_max_age = Duration::from_secs(60);
    })
    .await;
    // The PLC never connects: answered 500 after the grace, kept.
    line.desired(json!({"speed": 300, "$version": 3})).await;
    line.after_grace().await;
    let out = line.hub_sent();
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].1["speed"]["ac"], 500);
    line.hub("$iothub/twin/res/204/?$rid=1", b"").await;
    // Past the maximum age: acknowledged 400 expired (same av), no longer waiting.
    step(Duration::from_secs(50)).await;
    assert!(line.hub_sent().is_empty(), "not before 60 s");
    step(Duration::from_secs(5)).await;
    let out = line.hub_sent();
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].1["speed"]["ac"], 400);
    assert_eq!(out[0].1["speed"]["av"], 3);
    let ad = out[0].1["speed"]["ad"].as_str().unwrap();
    assert!(ad.starts_with("expired: waited 60 s for the plc"), "{ad}");
    let rid = out[0].0.rsplit('=').next().unwrap().to_owned();
    line.hub(&format!("$iothub/twin/res/204/?$rid={rid}"), b"")
        .await;
    step(Duration::from_secs(120)).await;
    assert!(line.hub_sent().is_empty(), "handled: nothing more");
    assert_eq!(count(&line.metrics().writes_refused), 1);
    line.stop().await;
}
