//! IoT Hub cloud-to-device messages on the hub double: a write request and a method call sent
//! as C2D messages are applied once (the simulator's write and call counters) and answered as
//! device-to-cloud messages correlated by the C2D message id; a repeat of the same request is
//! answered as a duplicate and not applied; an unrelated message and a 1 MB one are counted
//! and not acted upon, and the connection carries on.

use std::time::Duration;

use serde_json::{json, Value};
use tests::*;

use crate::writes::{hub_section, line_config, start, stats, DEVICE};

fn c2d_topic(properties: &str) -> String {
    format!("devices/{DEVICE}/messages/devicebound/{properties}")
}

/// The answers received with `messageType` and correlation id `cid`.
fn answers_to(sub: &Subscriber, message_type: &str, cid: &str) -> Vec<Value> {
    let suffix = format!("&messageType={message_type}&$.cid={cid}");
    sub.messages
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| t.ends_with(&suffix))
        .map(|(_, b)| serde_json::from_slice(b).unwrap())
        .collect()
}

async fn answer(sub: &Subscriber, message_type: &str, cid: &str, nth: usize) -> Value {
    eventually(
        &format!("{message_type} {nth} to {cid}"),
        Duration::from_secs(20),
        || {
            let found = answers_to(sub, message_type, cid).into_iter().nth(nth);
            async move { found }
        },
    )
    .await
}

fn c2d_count(metrics: &str, kind: &str) -> u64 {
    let series = format!("opcua_connector_c2d_messages_total{{line=\"line-w\",kind=\"{kind}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series)?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2d_requests_are_applied_once_and_answered_other_messages_counted() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), |_| {}).await;
    let (_broker, port) = plain_mosquitto(dir.path());
    let hub = HubDouble::start(port).await;
    let metrics_port = free_port();
    let sinks = format!(
        "{}\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n",
        hub_section("C2D_HUB_CS", port)
    );
    let config = line_config(dir.path(), sim.sim.endpoint_url(), &sinks);
    let d2c = Subscriber::start(port, &format!("devices/{DEVICE}/messages/events/#")).await;
    let running = start(&config, &hub).await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{metrics_port}").parse().unwrap();

    // At once after the hub connect, before the PLC's write session is up (as messages queued
    // in the hub while the connector was away arrive): held, then applied.
    // A write request as C2D: applied once, answered 200 with the message id as $.cid.
    let before = stats(&sim, "Filler.SpeedSetpoint").write_attempts;
    let write = json!({"id": "c2d-w-1", "property": "fillerSpeedSetpoint", "value": 640.0});
    let topic = c2d_topic(
        "%24.mid=mid-1&%24.to=%2Fdevices%2Fline-w-edge%2Fmessages%2FdeviceBound&request=write",
    );
    hub.send_raw(&topic, write.to_string().into_bytes()).await;
    let a = answer(&d2c, "writeResponse", "mid-1", 0).await;
    assert_eq!(
        (a["id"].as_str(), a["status"].as_u64()),
        (Some("c2d-w-1"), Some(200)),
        "{a}"
    );
    assert_eq!(
        stats(&sim, "Filler.SpeedSetpoint").write_attempts,
        before + 1
    );
    assert_eq!(
        stats(&sim, "Filler.SpeedSetpoint").last,
        simulator::model::Value::Float(640.0)
    );

    // Delivered again (the same request id): answered as a duplicate, not written again.
    hub.send_raw(&topic, write.to_string().into_bytes()).await;
    let again = answer(&d2c, "writeResponse", "mid-1", 1).await;
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(
        stats(&sim, "Filler.SpeedSetpoint").write_attempts,
        before + 1
    );

    // Outside the allow-list's range: refused 400, nothing reaches the PLC.
    let bad = json!({"id": "c2d-w-2", "property": "fillerSpeedSetpoint", "value": 5000});
    hub.send_raw(
        &c2d_topic("%24.mid=mid-2&request=write"),
        bad.to_string().into_bytes(),
    )
    .await;
    let a = answer(&d2c, "writeResponse", "mid-2", 0).await;
    assert_eq!(a["status"], 400, "{a}");
    assert_eq!(
        stats(&sim, "Filler.SpeedSetpoint").write_attempts,
        before + 1
    );

    // A method call as C2D.
    let calls = sim
        .sim
        .method_calls(&line_node("Filler.ResetCounters"))
        .unwrap();
    hub.send_raw(
        &c2d_topic("%24.mid=mid-3&request=method&method=resetCounters"),
        json!({"id": "c2d-m-1", "args": {"Reason": "c2d test"}})
            .to_string()
            .into_bytes(),
    )
    .await;
    let a = answer(&d2c, "methodResponse", "mid-3", 0).await;
    assert_eq!(a["status"], 200, "{a}");
    assert_eq!(
        sim.sim.method_calls(&line_node("Filler.ResetCounters")),
        Some(calls + 1)
    );

    // Not a request: counted, nothing answered or written.
    hub.send_raw(
        &c2d_topic("%24.mid=mid-4&note=hello"),
        b"shift change at 14:00".to_vec(),
    )
    .await;
    // 1 MB: refused, counted, the connection carries on.
    let huge = json!({"id": "c2d-w-3", "property": "fillerSpeedSetpoint", "value": 1.0, "pad": "x".repeat(1 << 20)});
    hub.send_raw(
        &c2d_topic("%24.mid=mid-5&request=write"),
        huge.to_string().into_bytes(),
    )
    .await;
    let text = eventually(
        "other and refused counted",
        Duration::from_secs(20),
        || async {
            let t = metrics_text(addr).await;
            (c2d_count(&t, "other") == 1 && c2d_count(&t, "refused") == 1).then_some(t)
        },
    )
    .await;
    assert_eq!(c2d_count(&text, "request"), 4, "{text}");
    let next = json!({"id": "c2d-w-4", "property": "fillerSpeedSetpoint", "value": 650.0});
    hub.send_raw(
        &c2d_topic("%24.mid=mid-6&request=write"),
        next.to_string().into_bytes(),
    )
    .await;
    assert_eq!(
        answer(&d2c, "writeResponse", "mid-6", 0).await["status"],
        200
    );
    assert!(answers_to(&d2c, "writeResponse", "mid-5").is_empty());
    assert!(answers_to(&d2c, "writeResponse", "mid-4").is_empty());
    assert_eq!(
        stats(&sim, "Filler.SpeedSetpoint").write_attempts,
        before + 2
    );
    running.stop().await;
}
