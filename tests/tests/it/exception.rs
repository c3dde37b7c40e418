//! Report by exception on the connector's side (docs/edge.md#report-by-exception): the
//! telemetry of a deadband group equals an independent recomputation from the same run's
//! Parquet rows; a node's own max_interval sends heartbeats of an unchanged value; a node's
//! own min_interval thins a ramp, and the sample waiting at the stop still goes out.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tests::chunks::{read_all, series, Val};
use tests::*;

/// Above the largest step of the sine between two updates (0.094), so that about every
/// other sample stays back, more near the peaks.
const DEADBAND: f64 = 0.1;

fn config(dir: &Path, opc: &str, port: u16) -> connector::config::Config {
    let text = format!(
        r#"[line]
id = "line-x"
site = "plant"

[[plc]]
id = "sim"
endpoint = "{opc}"

  [[plc.group]]
  name = "process"
  publishing_interval = "100ms"
  sampling_interval = "0ms"
  nodes = [
    "{pressure}",
    {{ id = "{serial}", telemetry = {{ max_interval = "1s" }} }},
    {{ id = "{tank}", telemetry = {{ min_interval = "2s", deadband_absolute = 0.0 }} }},
  ]
  telemetry = {{ deadband_absolute = {DEADBAND} }}

[pki]
dir = "{pki}"
trust_unknown_servers = true

[sink.parquet]
dir = "{parquet}"
roll_interval = "1s"

[sink.mqtt]
url = "mqtt://127.0.0.1:{port}"
batch_max_delay = "100ms"

[buffer]
dir = "{buffer}"
"#,
        pressure = line_node("Filler.FillPressure"),
        serial = line_node("Filler.SerialNumber"),
        tank = line_node("Filler.TankLevel"),
        pki = dir.join("pki").display(),
        parquet = dir.join("parquet").display(),
        buffer = dir.join("buffer").display(),
    );
    connector::config::parse(Path::new("exception-test.toml"), &text)
        .unwrap_or_else(|e| panic!("config: {e}"))
}

/// Every telemetry sample of `node` so far, in arrival order.
fn sent(sub: &Subscriber, node: &str) -> Vec<Value> {
    sub.messages
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(_, p)| serde_json::from_slice::<Value>(p).ok())
        .flat_map(|m| m["samples"].as_array().cloned().unwrap_or_default())
        .filter(|s| s["node"] == node)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadbands_heartbeats_and_min_interval_thin_the_telemetry_not_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), |_| {}).await;
    let port = start_broker();
    let sub = Subscriber::start(port, "opcua/#").await;
    let running =
        connector::runner::start(&config(dir.path(), sim.sim.endpoint_url(), port)).unwrap();
    let (pressure, serial, tank) = (
        line_node("Filler.FillPressure"),
        line_node("Filler.SerialNumber"),
        line_node("Filler.TankLevel"),
    );
    eventually(
        "heartbeats of the serial number and a thinned ramp",
        Duration::from_secs(30),
        || {
            let beats = sent(&sub, &serial)
                .iter()
                .filter(|s| s["origin"] == "heartbeat")
                .count();
            let (p, t) = (sent(&sub, &pressure).len(), sent(&sub, &tank).len());
            async move { (beats >= 4 && p >= 6 && t >= 3).then_some(()) }
        },
    )
    .await;
    let mqtt = running.mqtt.clone().unwrap();
    running.stop().await;
    let rows = read_all(&dir.path().join("parquet"));
    // What the stop flushed may still be on its way from the broker to the subscriber.
    let last_tank = series(&rows, "process", &tank).last().map(|r| r.time);
    eventually(
        "the flushed samples at the subscriber",
        Duration::from_secs(10),
        || {
            let t = sent(&sub, &tank);
            let at = last_tank.and_then(chrono::DateTime::from_timestamp_micros);
            let done = at.is_some_and(|at| {
                t.last()
                    .is_some_and(|s| s["t"] == at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
            });
            async move { done.then_some(()) }
        },
    )
    .await;
    let values = |n: &str| -> Vec<(i64, f64)> {
        series(&rows, "process", n)
            .iter()
            .filter_map(|r| match r.value {
                Val::Double(x) => Some((r.time, x)),
                _ => None,
            })
            .collect()
    };

    // The deadband: recomputed from every raw row, against the last value sent.
    let raw = values(&pressure);
    let mut expected = Vec::new();
    for (t, v) in &raw {
        if expected
            .last()
            .is_none_or(|(_, last): &(i64, f64)| (v - last).abs() > DEADBAND)
        {
            expected.push((*t, *v));
        }
    }
    let got: Vec<(String, f64)> = sent(&sub, &pressure)
        .iter()
        .map(|s| {
            (
                s["t"].as_str().unwrap().to_owned(),
                s["v"].as_f64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, f64)> = expected
        .iter()
        .map(|(t, v)| {
            let t = chrono::DateTime::from_timestamp_micros(*t).unwrap();
            (t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(), *v)
        })
        .collect();
    // The same samples (source times) with the same values (serde_json's float parsing is
    // not always correctly rounded: within 1e-12 relative).
    let same = |a: &(String, f64), b: &(String, f64)| {
        a.0 == b.0 && (a.1 - b.1).abs() <= 1e-12 * a.1.abs().max(1.0)
    };
    assert!(
        got.len() == expected.len() && got.iter().zip(&expected).all(|(a, b)| same(a, b)),
        "the telemetry is the deadband of the raw rows:\n{got:?}\n{expected:?}"
    );
    assert!(
        got.len() * 4 < raw.len() * 3,
        "the deadband held samples back: {} raw, {} sent",
        raw.len(),
        got.len()
    );

    // Heartbeats: the unchanged serial number again, with its own source time.
    let s = sent(&sub, &serial);
    assert_eq!(s[0].get("origin"), None, "the first one is live: {s:?}");
    assert!(
        s[1..]
            .iter()
            .all(|x| x["origin"] == "heartbeat" && x["t"] == s[0]["t"] && x["v"] == s[0]["v"]),
        "{s:?}"
    );
    assert_eq!(
        series(&rows, "process", &serial).len(),
        1,
        "Parquet has the one sample"
    );

    // min_interval: the ramp thinned to about one sample per 2 s; the one waiting at the stop
    // went out, so the last value sent is the last one read.
    let ramp = values(&tank);
    let t = sent(&sub, &tank);
    assert!(t.len() * 2 < ramp.len(), "{} of {}", t.len(), ramp.len());
    let (last_sent, last_read) = (t.last().unwrap(), ramp.last().unwrap());
    let at = chrono::DateTime::from_timestamp_micros(last_read.0).unwrap();
    assert_eq!(
        last_sent["t"],
        at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
    );
    assert!((last_sent["v"].as_f64().unwrap() - last_read.1).abs() < 1e-9);
    let held = mqtt
        .exception_suppressed
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(held as usize >= raw.len() - got.len(), "{held}");
}
