//! Events and alarms (docs/connector.md#events-and-alarms): the simulator's alarm
//! `Filler.TemperatureHigh` (active while the product temperature is above
//! `Filler.TemperatureLimit`) raised and cleared by cloud writes of the limit, acknowledged by a
//! cloud method call through the write service; the events arrive in order with their fields
//! in the events table and as telemetry, and the acknowledgement reaches the PLC.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use tests::*;

use crate::writes::{answers, publisher, until_answered};

const CONDITION: &str = "Filler.TemperatureHigh";

/// An event row's (active, acked, retain, message).
type State<'a> = (Option<bool>, Option<bool>, Option<bool>, &'a str);

fn config(dir: &Path, opc: &str, port: u16) -> connector::config::Config {
    let text = format!(
        r#"[line]
id = "line-e"
site = "plant"

[[plc]]
id = "sim"
endpoint = "{opc}"

  [[plc.group]]
  name = "fast"
  publishing_interval = "100ms"
  nodes = ["{counter}"]

  [[plc.events]]
  name = "alarms"
  types = ["i=2915"]
  publishing_interval = "100ms"
  fields = [{{ path = "Quality", type = "i=2782" }}, {{ path = "ClientUserId", type = "i=2782" }}]

[pki]
dir = "{pki}"
trust_unknown_servers = true

[sink.parquet]
dir = "{parquet}"
roll_interval = "1s"

[sink.mqtt]
url = "mqtt://127.0.0.1:{port}"
allow_insecure_commands = true

[buffer]
dir = "{buffer}"

[[write]]
property = "temperatureLimit"
plc = "sim"
node = "{limit}"
type = "Float"

[[method]]
name = "acknowledgeTemperatureHigh"
plc = "sim"
object = "{condition}"
method = "i=9111"
timeout = "5s"
"#,
        counter = line_node("Filler.BottlesFilled"),
        pki = dir.join("pki").display(),
        parquet = dir.join("parquet").display(),
        buffer = dir.join("buffer").display(),
        limit = line_node("Filler.TemperatureLimit"),
        condition = line_node(CONDITION),
    );
    connector::config::parse(Path::new("events-test.toml"), &text)
        .unwrap_or_else(|e| panic!("config: {e}"))
}

/// The events of the `alarms` stream in the telemetry so far, in message order.
fn telemetry_events(sub: &Subscriber) -> Vec<Value> {
    let mut out = Vec::new();
    for m in answers(sub, "opcua/plant/line-e/sim/alarms") {
        assert_eq!(m["group"], "alarms");
        assert!(m.get("samples").is_none(), "{m}");
        out.extend(m["events"].as_array().cloned().unwrap_or_default());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarm_events_land_in_order_and_an_acknowledge_from_the_cloud_reaches_the_plc() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), |_| {}).await;
    let port = start_broker();
    let sub = Subscriber::start(port, "opcua/#").await;
    let config = config(dir.path(), sim.sim.endpoint_url(), port);
    let running = connector::runner::start(&config).expect("connector");
    let plc = running.metrics.plcs[0].clone();
    eventually(
        "the group and the event stream subscribed",
        Duration::from_secs(30),
        || {
            let items = plc
                .monitored_items
                .load(std::sync::atomic::Ordering::Relaxed);
            async move { (items >= 2).then_some(()) }
        },
    )
    .await;
    let client = publisher(port).await;
    let write = |id: &'static str, value: f64| {
        let client = client.clone();
        async move {
            let body = json!({"id": id, "property": "temperatureLimit", "value": value});
            client
                .publish(
                    "opcua/plant/line-e/cmd/write",
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    body.to_string(),
                )
                .await
                .unwrap();
        }
    };
    let answered = |topic: &'static str, id: &'static str| {
        let sub = &sub;
        move || answers(sub, topic).into_iter().find(|a| a["id"] == id)
    };
    let responses = "opcua/plant/line-e/cmd/write/response";

    // Raise: the limit below the product temperature.
    let a = until_answered(
        "limit 0 written",
        || write("w-raise", 0.0),
        answered(responses, "w-raise"),
    )
    .await;
    assert_eq!(a["status"], 200, "{a}");
    let raised = eventually("the activation event", Duration::from_secs(20), || {
        let e = telemetry_events(&sub)
            .into_iter()
            .find(|e| e["active"] == true);
        async move { e }
    })
    .await;
    assert_eq!(raised["acked"], false, "{raised}");
    assert_eq!(raised["retain"], true);
    assert_eq!(raised["severity"], 700);
    assert_eq!(raised["message"], "Filler product temperature above limit");
    assert_eq!(raised["condition_name"], "TemperatureHigh");
    assert_eq!(raised["condition_id"], line_node(CONDITION));
    assert_eq!(raised["source_node"], line_node("Filler"));
    assert_eq!(raised["source_name"], "Filler");
    assert_eq!(raised["event_type"], "i=2915");
    assert_eq!(raised["fields"]["Quality"], json!(0), "{raised}");

    // Acknowledge from the cloud with the event's id, through [[method]].
    let event_id = raised["event_id"].as_str().unwrap().to_owned();
    let methods = "opcua/plant/line-e/cmd/method/acknowledgeTemperatureHigh";
    let ack = |id: &'static str| {
        let client = client.clone();
        let body = json!({"id": id, "args": {"EventId": event_id, "Comment": "valve checked"}});
        async move {
            client
                .publish(methods, rumqttc::QoS::AtLeastOnce, false, body.to_string())
                .await
                .unwrap();
        }
    };
    let method_responses = "opcua/plant/line-e/cmd/method/acknowledgeTemperatureHigh/response";
    let a = until_answered(
        "acknowledged",
        || ack("m-ack"),
        answered(method_responses, "m-ack"),
    )
    .await;
    assert_eq!(a["status"], 200, "{a}");
    assert_eq!(
        sim.sim.stats().acknowledgements,
        1,
        "the PLC took the acknowledgement"
    );
    // Acknowledged once: the same acknowledgement again (a new request id) is the PLC's refusal
    let a = until_answered(
        "acknowledged again",
        || ack("m-ack-2"),
        answered(method_responses, "m-ack-2"),
    )
    .await;
    assert_eq!(a["status"], 500, "{a}");
    // (the simulator calls the id of a superseded event unknown: the acknowledgement made a
    // new one)
    let error = a["error"].as_str().unwrap();
    assert!(
        error.contains("BadEventIdUnknown") || error.contains("BadConditionBranchAlreadyAcked"),
        "{a}"
    );
    assert_eq!(sim.sim.stats().acknowledgements, 1);

    // Clear: the limit back above the temperature.
    let a = until_answered(
        "limit 1000 written",
        || write("w-clear", 1000.0),
        answered(responses, "w-clear"),
    )
    .await;
    assert_eq!(a["status"], 200, "{a}");
    eventually("the clear event", Duration::from_secs(20), || {
        let n = telemetry_events(&sub)
            .iter()
            .filter(|e| e["active"] == false)
            .count();
        async move { (n >= 1).then_some(()) }
    })
    .await;
    running.stop().await;

    // The events table: activate, acknowledge, clear, in order, with their fields.
    let rows = read_events(&dir.path().join("parquet-events"));
    let states: Vec<State> = rows
        .iter()
        .map(|r| (r.active, r.acked, r.retain, r.message.as_str()))
        .collect();
    assert_eq!(
        states,
        [
            (
                Some(true),
                Some(false),
                Some(true),
                "Filler product temperature above limit"
            ),
            (
                Some(true),
                Some(true),
                Some(true),
                "Acknowledged: valve checked"
            ),
            (
                Some(false),
                Some(true),
                Some(false),
                "Filler product temperature back within limit"
            ),
        ],
        "{rows:#?}"
    );
    let raised_id = base64::engine::general_purpose::STANDARD
        .decode(raised["event_id"].as_str().unwrap())
        .unwrap();
    assert_eq!(rows[0].event_id, raised_id);
    assert!(rows
        .windows(2)
        .all(|w| w[0].time <= w[1].time && w[0].event_id != w[1].event_id));
    for r in &rows {
        assert_eq!((r.plc.as_str(), r.group.as_str()), ("sim", "alarms"));
        assert_eq!(
            r.condition_id.as_deref(),
            Some(line_node(CONDITION).as_str())
        );
        assert_eq!(r.condition_name.as_deref(), Some("TemperatureHigh"));
        assert_eq!((r.severity, r.event_type.as_str()), (700, "i=2915"));
        assert_eq!(
            (r.source_node.clone(), r.source_name.as_str()),
            (line_node("Filler"), "Filler")
        );
        assert_eq!((r.enabled, r.confirmed), (Some(true), Some(true)));
        let fields: Value = serde_json::from_str(r.fields_json.as_deref().unwrap()).unwrap();
        assert_eq!(fields["Quality"], json!(0), "{fields}");
    }
    assert_eq!(rows[1].comment.as_deref(), Some("valve checked"));
    let user: Value = serde_json::from_str(rows[1].fields_json.as_deref().unwrap()).unwrap();
    assert_eq!(user["ClientUserId"], "ANONYMOUS", "{user}");
    // The same three in the telemetry.
    let messages: Vec<String> = telemetry_events(&sub)
        .iter()
        .map(|e| e["message"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        messages,
        rows.iter().map(|r| r.message.clone()).collect::<Vec<_>>()
    );
    // No event in the samples' data set.
    assert!(read_all(&dir.path().join("parquet"))
        .iter()
        .all(|r| r.group == "fast"));
}
