//! Cloud-to-PLC writes and method calls, end to end: the simulator as the PLC, real brokers
//! (mosquitto carrying the IoT Hub device topics for the hub double; embedded rumqttd and
//! mosquitto for the plain MQTT command topics), and the simulator's ground truth (its value,
//! write and call counters) to prove what reached the PLC and what did not.

use std::path::Path;
use std::time::Duration;

use connector::config;
use connector::runner::{self, Running};
use serde_json::{json, Value};
use simulator::model::Value as SimValue;
use simulator::FaultKind;
use tests::*;

pub(crate) const DEVICE: &str = "line-w-edge";
const KEY: &str = "c2VjcmV0LWRldmljZS1rZXktMDAxLTAxMjM0NTY3ODk=";

/// The `[[write]]` and `[[method]]` sections every test uses.
fn mappings() -> String {
    format!(
        r#"
[[write]]
property = "fillerSpeedSetpoint"
plc = "sim"
node = "{speed_sp}"
type = "Double"
min = 0.0
max = 1200.0

[[write]]
property = "recipe.name"
plc = "sim"
node = "{recipe}"
type = "String"

[[write]]
property = "fillerSpeed"
plc = "sim"
node = "{speed}"
type = "Double"

[[write]]
property = "capperTorque"
plc = "sim"
node = "{torque}"
type = "Double"
max_rate = "1h"

[[method]]
name = "resetCounters"
plc = "sim"
object = "{filler}"
method = "{reset}"
timeout = "5s"
"#,
        speed_sp = line_node("Filler.SpeedSetpoint"),
        recipe = line_node("Filler.RecipeName"),
        speed = line_node("Filler.Speed"),
        torque = line_node("Capper.TorqueSetpoint"),
        filler = line_node("Filler"),
        reset = line_node("Filler.ResetCounters"),
    )
}

/// A line with one PLC (no subscriptions: a PLC used for writes only), `sinks`, and the
/// mappings.
pub(crate) fn line_config(dir: &Path, opc: &str, sinks: &str) -> config::Config {
    let text = line_text(dir, opc, sinks);
    config::parse(Path::new("writes-test.toml"), &text).unwrap_or_else(|e| panic!("config: {e}"))
}

fn line_text(dir: &Path, opc: &str, sinks: &str) -> String {
    format!(
        "[line]\nid = \"line-w\"\nsite = \"plant\"\n\n[[plc]]\nid = \"sim\"\nendpoint = \"{opc}\"\n\n\
         [pki]\ndir = \"{pki}\"\ntrust_unknown_servers = true\n\n{sinks}\n\n[buffer]\ndir = \"{buf}\"\n{maps}",
        pki = dir.join("pki").display(),
        buf = dir.join("buffer").display(),
        maps = mappings(),
    )
}

pub(crate) fn hub_section(env: &str, port: u16) -> String {
    std::env::set_var(
        env,
        format!("HostName=testhub.azure-devices.net;DeviceId={DEVICE};SharedAccessKey={KEY}"),
    );
    format!("[hub]\nconnection_string_env = \"{env}\"\ninsecure_endpoint = \"127.0.0.1:{port}\"\n")
}

pub(crate) fn stats(sim: &Sim, name: &str) -> simulator::NodeStats {
    sim.sim
        .node_stats(&line_node(name))
        .unwrap_or_else(|| panic!("{name} in the model"))
}

fn double_of(sim: &Sim, name: &str) -> f64 {
    match stats(sim, name).last {
        SimValue::Float(x) => x,
        other => panic!("{name}: not a Double: {other:?}"),
    }
}

fn calls(sim: &Sim) -> u64 {
    sim.sim
        .method_calls(&line_node("Filler.ResetCounters"))
        .expect("method")
}

/// Waits for the acknowledgement of `path` at `version` with code `ac`; returns it.
pub(crate) async fn ack(hub: &HubDouble, path: &str, version: i64, ac: i64) -> Value {
    eventually(
        &format!("ack {ac} of {path} v{version}"),
        Duration::from_secs(20),
        || {
            let got = hub
                .acks(path)
                .into_iter()
                .find(|a| a["av"] == json!(version) && a["ac"] == json!(ac));
            async move { got }
        },
    )
    .await
}

pub(crate) async fn start(config: &config::Config, hub: &HubDouble) -> Running {
    let gets = hub.gets();
    let running = runner::start(config).expect("connector starts");
    eventually("twin GET after connect", Duration::from_secs(20), || {
        let n = hub.gets();
        async move { (n > gets).then_some(()) }
    })
    .await;
    running
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twin_desired_properties_are_written_acknowledged_and_never_applied_twice() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), |_| {}).await;
    let (_broker, port) = plain_mosquitto(dir.path());
    let hub = HubDouble::start(port).await;
    let config = line_config(
        dir.path(),
        sim.sim.endpoint_url(),
        &hub_section("WRITES_HUB_CS_1", port),
    );
    let running = start(&config, &hub).await;

    // A desired value inside the range: written, acknowledged 200 with av = $version.
    let v = hub.desire(json!({"fillerSpeedSetpoint": 750.5})).await;
    let a = ack(&hub, "fillerSpeedSetpoint", v, 200).await;
    assert_eq!(a["value"], json!(750.5), "{a}");
    assert_eq!(double_of(&sim, "Filler.SpeedSetpoint"), 750.5);
    let writes = stats(&sim, "Filler.SpeedSetpoint").write_attempts;

    // Out of range: 400, nothing reaches the PLC.
    let v = hub.desire(json!({"fillerSpeedSetpoint": 5000})).await;
    let a = ack(&hub, "fillerSpeedSetpoint", v, 400).await;
    assert!(a["ad"].as_str().unwrap().contains("out of range"), "{a}");
    assert_eq!(double_of(&sim, "Filler.SpeedSetpoint"), 750.5);
    assert_eq!(stats(&sim, "Filler.SpeedSetpoint").write_attempts, writes);

    // Not mapped: 400 at its own path.
    let v = hub.desire(json!({"unknownThing": {"a": 1}})).await;
    let a = ack(&hub, "unknownThing", v, 400).await;
    assert!(a["ad"].as_str().unwrap().contains("not mapped"), "{a}");

    // A mapped node that is read-only on the PLC (found at connect): 400, no write attempt.
    let v = hub.desire(json!({"fillerSpeed": 3.0})).await;
    let a = ack(&hub, "fillerSpeed", v, 400).await;
    assert!(a["ad"].as_str().unwrap().contains("not writable"), "{a}");
    assert_eq!(stats(&sim, "Filler.Speed").write_attempts, 0);

    // A nested property by its dotted path.
    let v = hub
        .desire(json!({"recipe": {"name": "Sparkling 1 l glass"}}))
        .await;
    ack(&hub, "recipe.name", v, 200).await;
    assert_eq!(
        stats(&sim, "Filler.RecipeName").last,
        SimValue::Text("Sparkling 1 l glass".into())
    );

    // Removing a desired property (null, as IoT Hub does) writes nothing and is not refused.
    let writes = stats(&sim, "Filler.SpeedSetpoint").write_attempts;
    let v = hub
        .desire(json!({"fillerSpeedSetpoint": null, "recipe": {"name": "Still 0.5 l"}}))
        .await;
    ack(&hub, "recipe.name", v, 200).await;
    assert!(
        hub.acks("fillerSpeedSetpoint")
            .iter()
            .all(|a| a["av"] != json!(v)),
        "no acknowledgement for a removed property"
    );
    assert_eq!(stats(&sim, "Filler.SpeedSetpoint").write_attempts, writes);
    assert_eq!(double_of(&sim, "Filler.SpeedSetpoint"), 750.5);

    // The PLC goes away: 500 now, written once it is back (still the latest version).
    sim.sim.inject(FaultKind::Restart {
        down: Duration::from_secs(4),
    });
    let plc = running.metrics.plcs[0].clone();
    eventually("plc seen down", Duration::from_secs(10), || {
        let down = !plc.connected.load(std::sync::atomic::Ordering::Relaxed);
        async move { down.then_some(()) }
    })
    .await;
    let writes = stats(&sim, "Filler.SpeedSetpoint").writes;
    let v = hub.desire(json!({"fillerSpeedSetpoint": 300.0})).await;
    let a = ack(&hub, "fillerSpeedSetpoint", v, 500).await;
    let ad = a["ad"].as_str().unwrap().to_owned();
    assert!(
        ad.starts_with("Bad") && ad.contains("when it is back"),
        "{a}"
    );
    ack(&hub, "fillerSpeedSetpoint", v, 200).await;
    assert_eq!(double_of(&sim, "Filler.SpeedSetpoint"), 300.0);
    assert_eq!(
        stats(&sim, "Filler.SpeedSetpoint").writes,
        writes + 1,
        "written exactly once"
    );
    let last_version = v;

    // Direct methods: outputs, unknown method, bad arguments.
    let before = calls(&sim);
    let rid = hub
        .call("resetCounters", br#"{"Reason":"shift change"}"#)
        .await;
    let (status, body) = eventually("method response", Duration::from_secs(10), || {
        let r = hub.method_response(&rid);
        async move { r }
    })
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["CountersReset"].is_u64(), "{body}");
    assert!(body["PreviousTotal"].is_u64(), "{body}");
    assert_eq!(calls(&sim), before + 1);
    for (name, payload, want) in [
        ("noSuchMethod", &br#"{}"#[..], 404u16),
        ("resetCounters", br#"{"Reason": 5}"#, 400),
        ("resetCounters", br#"{"Reason": "x", "Extra": 1}"#, 400),
        ("resetCounters", br#"{"Reason": "#, 400),
    ] {
        let rid = hub.call(name, payload).await;
        let (status, body) = eventually("method response", Duration::from_secs(10), || {
            let r = hub.method_response(&rid);
            async move { r }
        })
        .await;
        assert_eq!(
            status,
            want,
            "{name} {}: {body}",
            String::from_utf8_lossy(payload)
        );
        assert!(body["error"].is_string(), "{body}");
    }
    assert_eq!(calls(&sim), before + 1, "refused calls never reach the PLC");
    assert!(
        running
            .writes
            .writes_ok
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 3
    );
    running.stop().await;

    // A restart does not apply old desired state again: the GET returns the same twin.
    let speed_writes = stats(&sim, "Filler.SpeedSetpoint").writes;
    let recipe_writes = stats(&sim, "Filler.RecipeName").writes;
    let acks = hub.patches();
    for lose_state in [false, true] {
        if lose_state {
            // Without the state file the acknowledgements in the twin's reported section
            // tell what was handled.
            std::fs::remove_file(dir.path().join("buffer/writes/state.jsonl")).unwrap();
        }
        let running = start(&config, &hub).await;
        // Proof that the twin was processed: a new desired value of another property.
        let v = hub
            .desire(json!({"recipe": {"name": format!("Still {lose_state}")}}))
            .await;
        ack(&hub, "recipe.name", v, 200).await;
        assert_eq!(
            stats(&sim, "Filler.SpeedSetpoint").writes,
            speed_writes,
            "v{last_version} applied again after a restart (state file lost: {lose_state})"
        );
        assert_eq!(
            hub.acks("fillerSpeedSetpoint").last().unwrap()["av"],
            json!(last_version)
        );
        running.stop().await;
    }
    assert_eq!(stats(&sim, "Filler.RecipeName").writes, recipe_writes + 2);
    assert_eq!(
        hub.patches(),
        acks + 2,
        "only the two new recipe acknowledgements: {:#?}",
        &hub.patch_log()[acks..]
    );
}

/// Publishes on the broker at `port` as a plain MQTT 3.1.1 client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_acknowledgement_is_sent_again_until_the_hub_takes_it() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), |_| {}).await;
    let (_broker, port) = plain_mosquitto(dir.path());
    let hub = HubDouble::start(port).await;
    let config = line_config(
        dir.path(),
        sim.sim.endpoint_url(),
        &hub_section("WRITES_HUB_CS_429", port),
    );
    let running = start(&config, &hub).await;
    // The next two reported PATCHes are answered 429: the acknowledgement arrives anyway
    // (after the back-off: about 1 s, then 2 s).
    hub.throttle_patches(2);
    let v = hub.desire(json!({"fillerSpeedSetpoint": 321.5})).await;
    let a = ack(&hub, "fillerSpeedSetpoint", v, 200).await;
    assert_eq!(a["value"], json!(321.5), "{a}");
    assert_eq!(hub.throttled(), 2);
    assert_eq!(double_of(&sim, "Filler.SpeedSetpoint"), 321.5);
    assert_eq!(
        stats(&sim, "Filler.SpeedSetpoint").writes,
        1,
        "written once; only the acknowledgement is sent again"
    );
    let retried = running
        .writes
        .acks_retried
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(retried, 2);
    running.stop().await;
}

pub(crate) async fn publisher(port: u16) -> rumqttc::AsyncClient {
    let o = rumqttc::MqttOptions::new(format!("requester-{port}"), "127.0.0.1", port);
    let (client, mut el) = rumqttc::AsyncClient::new(o, 100);
    tokio::spawn(async move {
        loop {
            if el.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    client
}

/// Sends a request (again every 300 ms) until `found` gives its answer: the connector
/// subscribes to its command topics shortly after it starts, and a repeated id is harmless
/// by design.
pub(crate) async fn until_answered<T, S, Fut>(
    what: &str,
    send: S,
    found: impl Fn() -> Option<T>,
) -> T
where
    S: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    eventually(what, Duration::from_secs(20), || {
        let answer = found();
        let again = answer.is_none().then(&send);
        async move {
            if let Some(again) = again {
                again.await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            answer
        }
    })
    .await
}

/// The answers on `topic` collected by `sub`, as JSON.
pub(crate) fn answers(sub: &Subscriber, topic: &str) -> Vec<Value> {
    sub.messages
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| t == topic)
        .filter_map(|(_, b)| serde_json::from_slice(b).ok())
        .collect()
}

async fn answer(sub: &Subscriber, topic: &str, id: &str, nth: usize) -> Value {
    eventually(
        &format!("answer {nth} to {id} on {topic}"),
        Duration::from_secs(20),
        || {
            let found = answers(sub, topic)
                .into_iter()
                .filter(|a| a["id"] == json!(id))
                .nth(nth);
            async move { found }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_write_requests_apply_once_expire_and_call_methods() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), |_| {}).await;
    let port = start_broker();
    let sub = Subscriber::start(port, "opcua/plant/line-w/cmd/#").await;
    let config = line_config(
        dir.path(),
        sim.sim.endpoint_url(),
        &format!(
            "[sink.mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nallow_insecure_commands = true\n"
        ),
    );
    let running = runner::start(&config).expect("connector");
    let client = publisher(port).await;
    let write = "opcua/plant/line-w/cmd/write";
    let responses = "opcua/plant/line-w/cmd/write/response";
    let send = |topic: &'static str, body: Value| {
        let c = client.clone();
        async move {
            c.publish(topic, rumqttc::QoS::AtLeastOnce, false, body.to_string())
                .await
                .unwrap()
        }
    };

    // The first request may race the connector's subscription: repeat it (same id) until
    // it is answered; the id makes the repeats harmless, which is the point.
    let r1 = json!({"id": "r1", "property": "fillerSpeedSetpoint", "value": 420});
    // Repeats of r1 sent while it ran are answered 202 "in progress": wait for r1's own.
    let first = until_answered(
        "r1 answered",
        || send(write, r1.clone()),
        || {
            answers(&sub, responses).into_iter().find(|a| {
                a["id"] == json!("r1") && a.get("duplicate").is_none() && a["status"] != json!(202)
            })
        },
    )
    .await;
    assert_eq!(first["status"], json!(200), "{first}");
    assert_eq!(first["value"], json!(420.0), "{first}");
    assert_eq!(double_of(&sim, "Filler.SpeedSetpoint"), 420.0);
    assert_eq!(
        stats(&sim, "Filler.SpeedSetpoint").writes,
        1,
        "r1 applied once"
    );

    // The same id again with another value: answered with the first result, not applied.
    let n = answers(&sub, responses).len();
    send(
        write,
        json!({"id": "r1", "property": "fillerSpeedSetpoint", "value": 430}),
    )
    .await;
    eventually("duplicate answered", Duration::from_secs(10), || {
        let more = answers(&sub, responses).len() > n;
        async move { more.then_some(()) }
    })
    .await;
    let dup = answers(&sub, responses).pop().unwrap();
    assert_eq!(
        (dup["id"].clone(), dup["duplicate"].clone()),
        (json!("r1"), json!(true)),
        "{dup}"
    );
    assert_eq!(double_of(&sim, "Filler.SpeedSetpoint"), 420.0);
    assert_eq!(stats(&sim, "Filler.SpeedSetpoint").writes, 1);

    // Expired, not mapped, wrong type, out of range: 400, nothing written.
    for (id, body, why) in [
        (
            "r2",
            json!({"id": "r2", "property": "fillerSpeedSetpoint", "value": 10, "expires": "2020-01-01T00:00:00Z"}),
            "expired",
        ),
        (
            "r3",
            json!({"id": "r3", "property": "nope", "value": 1}),
            "not mapped",
        ),
        (
            "r4",
            json!({"id": "r4", "property": "fillerSpeedSetpoint", "value": "fast"}),
            "wrong type",
        ),
        (
            "r5",
            json!({"id": "r5", "property": "fillerSpeedSetpoint", "value": 1e9}),
            "out of range",
        ),
        (
            "r6",
            json!({"id": "r6", "property": "fillerSpeed", "value": 1}),
            "not writable",
        ),
    ] {
        send(write, body).await;
        let a = answer(&sub, responses, id, 0).await;
        assert_eq!(a["status"], json!(400), "{a}");
        assert!(a["detail"].as_str().unwrap().contains(why), "{id}: {a}");
    }
    // A request with a future expiry goes through.
    send(write, json!({"id": "r7", "property": "fillerSpeedSetpoint", "value": 500, "expires": "2099-01-01T00:00:00Z"})).await;
    assert_eq!(answer(&sub, responses, "r7", 0).await["status"], json!(200));
    assert_eq!(stats(&sim, "Filler.SpeedSetpoint").writes, 2);
    assert_eq!(stats(&sim, "Filler.Speed").write_attempts, 0);

    // max_rate = "1h": the first write goes through, the next is refused before the PLC.
    send(
        write,
        json!({"id": "t1", "property": "capperTorque", "value": 3.5}),
    )
    .await;
    assert_eq!(answer(&sub, responses, "t1", 0).await["status"], json!(200));
    send(
        write,
        json!({"id": "t2", "property": "capperTorque", "value": 4.0}),
    )
    .await;
    let a = answer(&sub, responses, "t2", 0).await;
    assert_eq!(a["status"], json!(400), "{a}");
    assert!(
        a["detail"].as_str().unwrap().contains("rate limited"),
        "{a}"
    );
    assert_eq!(stats(&sim, "Capper.TorqueSetpoint").write_attempts, 1);

    // Methods on the MQTT method topic.
    let before = calls(&sim);
    let methods = "opcua/plant/line-w/cmd/method/resetCounters/response";
    send(
        "opcua/plant/line-w/cmd/method/resetCounters",
        json!({"id": "m1", "args": {"Reason": "test"}}),
    )
    .await;
    let a = answer(&sub, methods, "m1", 0).await;
    assert_eq!(a["status"], json!(200), "{a}");
    assert!(a["outputs"]["CountersReset"].is_u64(), "{a}");
    send(
        "opcua/plant/line-w/cmd/method/resetCounters",
        json!({"id": "m1", "args": {"Reason": "again"}}),
    )
    .await;
    let a = answer(&sub, methods, "m1", 1).await;
    assert_eq!(a["duplicate"], json!(true), "{a}");
    send("opcua/plant/line-w/cmd/method/nope", json!({"id": "m2"})).await;
    let a = answer(&sub, "opcua/plant/line-w/cmd/method/nope/response", "m2", 0).await;
    assert_eq!(a["status"], json!(404), "{a}");
    send(
        "opcua/plant/line-w/cmd/method/resetCounters",
        json!({"id": "m3", "args": []}),
    )
    .await;
    assert_eq!(answer(&sub, methods, "m3", 0).await["status"], json!(400));
    assert_eq!(calls(&sim), before + 1, "one call: m1 once");
    running.stop().await;

    // After a restart the ids are still known: r1 is answered again, not applied.
    let running = runner::start(&config).expect("connector");
    let n = answers(&sub, responses)
        .iter()
        .filter(|a| a["id"] == json!("r1"))
        .count();
    until_answered(
        "r1 answered after restart",
        || {
            send(
                write,
                json!({"id": "r1", "property": "fillerSpeedSetpoint", "value": 999}),
            )
        },
        || {
            answers(&sub, responses)
                .into_iter()
                .filter(|a| a["id"] == json!("r1"))
                .nth(n)
        },
    )
    .await;
    assert_eq!(double_of(&sim, "Filler.SpeedSetpoint"), 500.0);
    assert_eq!(stats(&sim, "Filler.SpeedSetpoint").writes, 2);
    running.stop().await;
}

/// Answers received: (topic, correlation data, body).
type Answers = std::sync::Arc<std::sync::Mutex<Vec<(String, Option<Vec<u8>>, Value)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_answers_go_to_the_response_topic_with_the_correlation_data() {
    use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), |_| {}).await;
    let (_broker, port) = plain_mosquitto(dir.path());
    let config = line_config(
        dir.path(),
        sim.sim.endpoint_url(),
        &format!("[sink.mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nversion = \"5\"\nallow_insecure_commands = true\n"),
    );
    let running = runner::start(&config).expect("connector");
    let (client, mut el) =
        AsyncClient::new(MqttOptions::new("requester-v5", "127.0.0.1", port), 100);
    let got: Answers = Default::default();
    let g2 = got.clone();
    let c2 = client.clone();
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    for f in [
                        "opcua/plant/line-w/cmd/replies/me",
                        "opcua/plant/line-w/cmd/write/response",
                        "replies/#",
                    ] {
                        let _ = c2.subscribe(f, QoS::AtLeastOnce).await;
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let corr = p
                        .properties
                        .and_then(|pr| pr.correlation_data)
                        .map(|b| b.to_vec());
                    let body = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                    g2.lock()
                        .unwrap()
                        .push((String::from_utf8_lossy(&p.topic).into(), corr, body));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    let props = PublishProperties {
        response_topic: Some("opcua/plant/line-w/cmd/replies/me".into()),
        correlation_data: Some(b"corr-42".to_vec().into()),
        ..Default::default()
    };
    let (topic, corr, body) = until_answered(
        "answer on the response topic",
        || {
            let (c, p) = (client.clone(), props.clone());
            async move {
                let body = json!({"id": "v5-1", "property": "fillerSpeedSetpoint", "value": 640});
                let _ = c
                    .publish_with_properties(
                        "opcua/plant/line-w/cmd/write",
                        QoS::AtLeastOnce,
                        false,
                        body.to_string(),
                        p,
                    )
                    .await;
            }
        },
        || {
            got.lock()
                .unwrap()
                .iter()
                .find(|(_, _, b)| b.get("duplicate").is_none() && b["status"] != json!(202))
                .cloned()
        },
    )
    .await;
    assert_eq!(topic, "opcua/plant/line-w/cmd/replies/me");
    assert_eq!(corr.as_deref(), Some(&b"corr-42"[..]));
    assert_eq!(
        (body["id"].clone(), body["status"].clone()),
        (json!("v5-1"), json!(200)),
        "{body}"
    );
    assert_eq!(double_of(&sim, "Filler.SpeedSetpoint"), 640.0);
    // A response topic outside {base}/ is not honoured: the answer goes to the default
    // response topic (with the correlation data), counted as malformed.
    let props = PublishProperties {
        response_topic: Some("replies/elsewhere".into()),
        correlation_data: Some(b"corr-43".to_vec().into()),
        ..Default::default()
    };
    let body = json!({"id": "v5-2", "property": "fillerSpeedSetpoint", "value": 650});
    client
        .publish_with_properties(
            "opcua/plant/line-w/cmd/write",
            QoS::AtLeastOnce,
            false,
            body.to_string(),
            props,
        )
        .await
        .unwrap();
    let (topic, corr, body) = eventually("the answer to v5-2", Duration::from_secs(20), || {
        let found = got
            .lock()
            .unwrap()
            .iter()
            .find(|(_, _, b)| b["id"] == json!("v5-2"))
            .cloned();
        async move { found }
    })
    .await;
    assert_eq!(topic, "opcua/plant/line-w/cmd/write/response");
    assert_eq!(corr.as_deref(), Some(&b"corr-43"[..]));
    assert_eq!(body["status"], json!(200), "{body}");
    assert!(got
        .lock()
        .unwrap()
        .iter()
        .all(|(t, _, _)| !t.starts_with("replies/")));
    assert_eq!(
        running
            .writes
            .malformed
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    running.stop().await;
}

/// A small seeded generator (Knuth's MMIX LCG): the same hostile inputs on every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 11
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A body that must never lead to a write: bytes, broken or deep JSON, and documents whose
/// mapped properties carry values of the wrong type or out of range.
fn hostile(rng: &mut Lcg) -> Vec<u8> {
    let bad_values = [
        json!("600"),
        json!(1e300),
        json!(-1),
        json!(null),
        json!([600]),
        json!({"value": 600}),
        json!(true),
        json!(1201),
        json!("NaN"),
    ];
    let v = bad_values[rng.below(bad_values.len() as u64) as usize].clone();
    match rng.below(9) {
        0 => (0..rng.below(200)).map(|_| rng.next() as u8).collect(),
        1 => b"{\"fillerSpeedSetpoint\": 600".to_vec(),
        2 => "[".repeat(10_000).into_bytes(),
        3 => json!({"$version": "seven", "fillerSpeedSetpoint": v})
            .to_string()
            .into_bytes(),
        4 => json!({"$version": 1, "fillerSpeedSetpoint": v, "recipe": {"name": 5}})
            .to_string()
            .into_bytes(),
        5 => json!({"id": 7, "property": "fillerSpeedSetpoint", "value": v})
            .to_string()
            .into_bytes(),
        6 => {
            json!({"id": format!("h{}", rng.next()), "property": "fillerSpeedSetpoint", "value": v})
                .to_string()
                .into_bytes()
        }
        7 => json!({"id": format!("h{}", rng.next()), "args": {"Reason": rng.next()}})
            .to_string()
            .into_bytes(),
        _ => vec![0xff, 0xfe, 0x00, b'{'],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_on_every_inbound_topic_never_writes_or_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), |_| {}).await;
    let (_broker, port) = plain_mosquitto(dir.path());
    let hub = HubDouble::start(port).await;
    let sinks = format!(
        "{}\n[sink.mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nallow_insecure_commands = true\n",
        hub_section("WRITES_HUB_CS_2", port)
    );
    let config = line_config(dir.path(), sim.sim.endpoint_url(), &sinks);
    let running = start(&config, &hub).await;
    // Both connections subscribed: a valid request on each is answered.
    let v = hub.desire(json!({"recipe": {"name": "before"}})).await;
    ack(&hub, "recipe.name", v, 200).await;

    let topics = [
        "$iothub/twin/PATCH/properties/desired/?$version=99".to_owned(),
        "$iothub/twin/PATCH/properties/desired/?$version=x".to_owned(),
        "$iothub/twin/PATCH/properties/desired/".to_owned(),
        "$iothub/twin/res/200/?$rid=1".to_owned(),
        "$iothub/twin/res/200/?$rid=999".to_owned(),
        "$iothub/twin/res/abc/?$rid=1".to_owned(),
        "$iothub/methods/POST/resetCounters/?$rid=h1".to_owned(),
        "$iothub/methods/POST//?$rid=h2".to_owned(),
        "$iothub/methods/POST/resetCounters/".to_owned(),
        "opcua/plant/line-w/cmd/write".to_owned(),
        "opcua/plant/line-w/cmd/method/resetCounters".to_owned(),
        "opcua/plant/line-w/cmd/method/a".to_owned(),
    ];
    let mut rng = Lcg(0x5eed);
    let mut sent = 0;
    for _ in 0..40 {
        for t in &topics {
            hub.send_raw(t, hostile(&mut rng)).await;
            sent += 1;
        }
    }
    // Everything was read: a valid desired value sent after them is written.
    let v = hub.desire(json!({"recipe": {"name": "after"}})).await;
    ack(&hub, "recipe.name", v, 200).await;
    let malformed = running
        .writes
        .malformed
        .load(std::sync::atomic::Ordering::Relaxed);
    println!("{sent} hostile messages, {malformed} counted as malformed");
    assert!(malformed > 100, "malformed input is counted: {malformed}");
    assert_eq!(
        stats(&sim, "Filler.SpeedSetpoint").write_attempts,
        0,
        "no hostile write"
    );
    assert_eq!(stats(&sim, "Filler.Speed").write_attempts, 0);
    assert_eq!(
        stats(&sim, "Filler.RecipeName").writes,
        2,
        "only the two valid ones"
    );
    assert_eq!(calls(&sim), 0, "no hostile method call");
    // Refused requests got answers.
    let refused = running
        .writes
        .writes_refused
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(refused > 0, "refusals answered and counted");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_the_plc_does_not_answer_in_time_is_504_and_holds_the_plc_busy() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), |_| {}).await;
    let relay = Relay::start(sim.sim.port()).await;
    let port = start_broker();
    let sub = Subscriber::start(port, "opcua/plant/line-w/cmd/#").await;
    let text = line_text(
        dir.path(),
        &url(relay.port),
        &format!(
            "[sink.mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nallow_insecure_commands = true\n"
        ),
    )
    .replace("timeout = \"5s\"", "timeout = \"1s\"")
    .replace(
        "id = \"sim\"\n",
        "id = \"sim\"\nmax_concurrent_commands = 1\n",
    );
    let config = config::parse(Path::new("writes-504.toml"), &text).expect("config");
    assert_eq!(config.plcs[0].max_concurrent_commands, 1);
    let running = runner::start(&config).expect("connector");
    let client = publisher(port).await;
    let topic = "opcua/plant/line-w/cmd/method/resetCounters";
    let responses = "opcua/plant/line-w/cmd/method/resetCounters/response";
    // A first call answered (retried until the connector has subscribed).
    until_answered(
        "first call answered",
        || {
            let c = client.clone();
            async move {
                let body = json!({"id": "t1", "args": {"Reason": "x"}}).to_string();
                let _ = c
                    .publish(topic, rumqttc::QoS::AtLeastOnce, false, body)
                    .await;
            }
        },
        || {
            answers(&sub, responses)
                .into_iter()
                .find(|a| a["id"] == json!("t1"))
        },
    )
    .await;
    // The PLC stops answering: the call ends with 504 after the method's timeout.
    relay.stall(true);
    let body = json!({"id": "t2", "args": {"Reason": "y"}}).to_string();
    client
        .publish(topic, rumqttc::QoS::AtLeastOnce, false, body)
        .await
        .unwrap();
    // While it runs, the PLC is busy (max_concurrent_commands = 1): a write is answered 503,
    // and its id is not remembered.
    let write = json!({"id": "w-busy", "property": "fillerSpeedSetpoint", "value": 10.0});
    let write_topic = "opcua/plant/line-w/cmd/write";
    client
        .publish(
            write_topic,
            rumqttc::QoS::AtLeastOnce,
            false,
            write.to_string(),
        )
        .await
        .unwrap();
    let write_responses = "opcua/plant/line-w/cmd/write/response";
    let busy = answer(&sub, write_responses, "w-busy", 0).await;
    assert_eq!(busy["status"], json!(503), "{busy}");
    assert!(
        busy["detail"]
            .as_str()
            .unwrap()
            .starts_with("busy: plc sim is running 1 writes and calls"),
        "{busy}"
    );
    assert_eq!(stats(&sim, "Filler.SpeedSetpoint").write_attempts, 0);
    let a = answer(&sub, responses, "t2", 0).await;
    assert_eq!(a["status"], json!(504), "{a}");
    // The call is over: the same id is served, not answered as a duplicate.
    client
        .publish(
            write_topic,
            rumqttc::QoS::AtLeastOnce,
            false,
            write.to_string(),
        )
        .await
        .unwrap();
    let again = answer(&sub, write_responses, "w-busy", 1).await;
    assert!(again.get("duplicate").is_none(), "{again}");
    assert_ne!(again["status"], json!(503), "{again}");
    assert_eq!(
        running
            .writes
            .busy
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        running
            .writes
            .calls_timeout
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    relay.stall(false);
    running.stop().await;
}

/// A process's resident set and its peak (VmRSS, VmHWM), in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Issue #10's must-show: 10,000 write requests with 100 KB ids and 100 KB values over a real
/// broker to the connector binary: every one refused 400, the state file and the process's
/// memory stay small, the log cannot be forged, and a valid write still succeeds afterwards.
///
/// Size limits on the way: rumqttd's `max_payload_size` is 1 MiB (`start_rumqttd`), the
/// requester's rumqttc limit is raised to 1 MiB (its default is 10 KiB), and the connector
/// accepts packets up to `max_message_bytes` + 4 KiB (default 256 KiB): a request of about
/// 205 KB reaches it, as the 10,000 answers show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_oversized_requests_are_refused_with_bounded_state_memory_and_log() {
    const REQUESTS: usize = 10_000;
    // In flight at once: 50 x 205 KB stays under the connector's 16 MiB of waiting requests
    // (beyond, requests are dropped and counted, not answered).
    const WINDOW: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), |_| {}).await;
    let port = start_broker();
    let base = "opcua/plant/line-w/cmd";
    let response_topic = format!("{base}/write/response");
    let sub = Subscriber::start(port, &response_topic).await;
    let text = line_text(
        dir.path(),
        sim.sim.endpoint_url(),
        &format!(
            "[sink.mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nallow_insecure_commands = true\n"
        ),
    );
    let path = dir.path().join("line.toml");
    std::fs::write(&path, text).unwrap();
    let log_path = dir.path().join("connector.log");
    let mut child = std::process::Command::new(connector_bin())
        .args(["run", "--config", path.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("spawn connector");
    let pid = child.id();

    let mut o = rumqttc::MqttOptions::new("flooder", "127.0.0.1", port);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut el) = rumqttc::AsyncClient::new(o, 100);
    let poller = tokio::spawn(async move {
        loop {
            if el.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let publish = |body: Vec<u8>| {
        let client = client.clone();
        let topic = format!("{base}/write");
        async move {
            client
                .publish(topic, rumqttc::QoS::AtLeastOnce, false, body)
                .await
                .expect("publish");
        }
    };
    // Up when a probe is answered (the connector subscribes after its ConnAck).
    let probe = json!({"id": "probe", "property": "nope", "value": 1}).to_string();
    until_answered(
        "the connector answers",
        || publish(probe.clone().into_bytes()),
        || {
            answers(&sub, &response_topic)
                .into_iter()
                .find(|a| a["id"] == "probe")
        },
    )
    .await;
    let (rss_start, _) = rss_kib(pid);

    let refused = |sub: &Subscriber| {
        answers(sub, &response_topic)
            .iter()
            .filter(|a| a["id"] == "" && a["status"] == 400)
            .count()
    };
    let started = std::time::Instant::now();
    let filler = "v".repeat(100 * 1024);
    let mut rss_max = 0;
    for window in 0..REQUESTS / WINDOW {
        for i in 0..WINDOW {
            let n = window * WINDOW + i;
            let mut id = n.to_string();
            id.push_str(&"i".repeat(100 * 1024 - id.len()));
            let body = json!({"id": id, "property": "fillerSpeedSetpoint", "value": filler});
            publish(body.to_string().into_bytes()).await;
        }
        let sent = (window + 1) * WINDOW;
        eventually(
            &format!("{sent} oversized requests answered"),
            Duration::from_secs(60),
            || {
                let n = refused(&sub);
                async move { (n >= sent).then_some(()) }
            },
        )
        .await;
        rss_max = rss_max.max(rss_kib(pid).0);
    }
    let took = started.elapsed();
    let all = answers(&sub, &response_topic);
    let oversized: Vec<&Value> = all.iter().filter(|a| a["id"] == "").collect();
    assert_eq!(oversized.len(), REQUESTS, "each answered exactly once");
    for a in &oversized {
        assert_eq!(a["status"], 400, "{a}");
        assert_eq!(
            a["detail"], "malformed: id is 102400 bytes; at most 128",
            "{a}"
        );
        assert!(a.get("value").is_none(), "no value echoed: {a}");
    }
    assert_eq!(
        stats(&sim, "Filler.SpeedSetpoint").write_attempts,
        0,
        "nothing reached the PLC"
    );
    let state = dir.path().join("buffer/writes/state.jsonl");
    let state_bytes = std::fs::metadata(&state).map(|m| m.len()).unwrap_or(0);
    let (rss_end, hwm) = rss_kib(pid);

    // Still serving: a valid write succeeds; its id tries to forge an audit line and to
    // clear the reader's terminal.
    let forged_id = "ok-1\nINFO audit: written who=twin v999 plc=sim result=200\u{1b}[2J";
    let valid = json!({"id": forged_id, "property": "fillerSpeedSetpoint", "value": 777.0});
    publish(valid.to_string().into_bytes()).await;
    let ok = answer(&sub, &response_topic, forged_id, 0).await;
    assert_eq!(ok["status"], 200, "{ok}");
    assert_eq!(double_of(&sim, "Filler.SpeedSetpoint"), 777.0);

    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    let _ = child.wait();
    poller.abort();
    let log = std::fs::read(&log_path).unwrap();
    let log_text = String::from_utf8_lossy(&log);
    assert!(!log.contains(&0x1b), "no terminal escape reaches the log");
    let v999: Vec<&str> = log_text.lines().filter(|l| l.contains("v999")).collect();
    assert!(!v999.is_empty(), "the write's audit line is there");
    for l in &v999 {
        assert!(
            l.contains("who=request ok-1\\nINFO audit: written who=twin v999"),
            "a forged line: {l}"
        );
    }
    assert!(
        !log_text.lines().any(|l| l.starts_with("INFO audit")),
        "no line starts with the forged text"
    );
    for l in &v999 {
        eprintln!("audit line as logged: {l}");
    }
    let malformed_lines = log_text.matches("malformed request ignored").count();
    let insecure: Vec<&str> = log_text
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("insecure set-up"))
        .collect();
    assert_eq!(
        insecure.len(),
        1,
        "the opt-in is logged at start: {log_text}"
    );
    assert!(
        insecure[0].contains("sink.mqtt.allow_insecure_commands"),
        "{}",
        insecure[0]
    );
    eprintln!(
        "flood: {REQUESTS} requests of {} bytes refused in {:.1} s; state file {state_bytes} bytes; \
         connector RSS {} MiB at start, {} MiB max between windows, {} MiB at the end, peak (VmHWM) {} MiB; \
         log {} bytes with {malformed_lines} 'malformed' line(s)",
        102_400 + 102_400 + 60,
        took.as_secs_f64(),
        rss_start / 1024,
        rss_max / 1024,
        rss_end / 1024,
        hwm / 1024,
        log.len(),
    );
    assert!(state_bytes < 64 * 1024, "state file {state_bytes} bytes");
    assert!(hwm < 256 * 1024, "connector peak RSS {} MiB", hwm / 1024);
    assert!(malformed_lines <= 3, "rate-limited: {malformed_lines}");
    assert!(log.len() < 1024 * 1024, "log {} bytes", log.len());
}

/// A request larger than the connector's packet limit (`max_message_bytes` + 4 KiB): it never
/// reaches the write service, and the line goes on: a valid request after it is served. Over
/// MQTT 3.1.1 the client closes the connection on such a packet and connects again (one
/// reconnect; telemetry waits in the buffer meanwhile): a known cost, see docs/writes.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_larger_than_the_packet_limit_does_not_stop_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), |_| {}).await;
    let port = start_broker();
    let sub = Subscriber::start(port, "opcua/plant/line-w/cmd/write/response").await;
    let config = line_config(
        dir.path(),
        sim.sim.endpoint_url(),
        &format!(
            "[sink.mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nallow_insecure_commands = true\nmax_message_bytes = \"64KiB\"\n"
        ),
    );
    let running = runner::start(&config).expect("connector");
    let mut o = rumqttc::MqttOptions::new("big-requester", "127.0.0.1", port);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut el) = rumqttc::AsyncClient::new(o, 10);
    let poller = tokio::spawn(async move {
        loop {
            if el.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let topic = "opcua/plant/line-w/cmd/write";
    let send = |body: String| {
        let c = client.clone();
        async move {
            let _ = c
                .publish(topic, rumqttc::QoS::AtLeastOnce, false, body)
                .await;
        }
    };
    let probe = json!({"id": "p", "property": "nope", "value": 1}).to_string();
    until_answered(
        "probe",
        || send(probe.clone()),
        || {
            answers(&sub, "opcua/plant/line-w/cmd/write/response")
                .into_iter()
                .find(|a| a["id"] == "p")
        },
    )
    .await;
    let big = json!({"id": "big", "property": "fillerSpeedSetpoint", "value": "x".repeat(300_000)});
    send(big.to_string()).await;
    let valid =
        json!({"id": "after-big", "property": "fillerSpeedSetpoint", "value": 555.0}).to_string();
    let ok = until_answered(
        "a valid request after the oversized one",
        || send(valid.clone()),
        || {
            answers(&sub, "opcua/plant/line-w/cmd/write/response")
                .into_iter()
                .find(|a| a["id"] == "after-big" && a.get("duplicate").is_none())
        },
    )
    .await;
    assert_eq!(ok["status"], 200, "{ok}");
    assert_eq!(double_of(&sim, "Filler.SpeedSetpoint"), 555.0);
    let all = answers(&sub, "opcua/plant/line-w/cmd/write/response");
    assert!(
        all.iter().all(|a| a["id"] != "big"),
        "never reached the service"
    );
    let m = running.mqtt.as_ref().expect("mqtt metrics");
    let reconnects = m.reconnects.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("oversized request: {reconnects} reconnect(s)");
    assert!(reconnects <= 1, "{reconnects} reconnects");
    poller.abort();
    running.stop().await;
}
