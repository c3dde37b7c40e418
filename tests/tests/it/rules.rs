//! Local rules (docs/edge.md): the seed example on the simulator. A scripted spike of
//! `Filler.ProductTemperature` makes the rule `cool-filler` open `Filler.CoolingValve` through
//! the `[[write]]` allow-list and close it when the temperature is back (hysteresis); the PLC
//! sees exactly one write per firing and per clear (the simulator's write log), a rule without
//! hysteresis on the same noisy signal chatters, the audit records name the rule, alerts reach
//! the broker; and with the broker and the hub down the rule still acts.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use simulator::model::Value as SimValue;
use tests::chunks::{read_all, series, Val};
use tests::*;

const FIRE: f64 = 18.0;
const CLEAR: f64 = 14.0;

/// The bundled line with Filler.ProductTemperature every 100 ms and a noisy spike of +6.0 for
/// 2 s every 4 s from 1 s: about 18.5 +- 2.0 during a spike (crossing 18.0 up and down),
/// 12.5 +- 0.9 between them.
fn spiky(c: &mut simulator::SimConfig) {
    let p = c.profile.as_mut().expect("bundled profile");
    let slow = "name = \"filler-slow\"\nrate = \"2s\"";
    assert!(p.text.contains(slow));
    p.text = p
        .text
        .replace(slow, "name = \"filler-slow\"\nrate = \"100ms\"");
    let spike =
        "spike = { every = \"120s\", at = \"60s\", add = 6.0, length = \"20s\", noise = 0.4 }";
    assert!(p.text.contains(spike));
    p.text = p.text.replace(
        spike,
        "spike = { every = \"4s\", at = \"1s\", add = 6.0, length = \"2s\", noise = 1.2 }",
    );
}

/// The seed example's config; `sinks` are the telemetry destinations.
fn config(dir: &Path, opc: &str, metrics: u16, sinks: &str) -> std::path::PathBuf {
    let text = format!(
        r#"[line]
id = "line-r"
site = "plant"

[[plc]]
id = "sim"
endpoint = "{opc}"

  [[plc.group]]
  name = "filler"
  publishing_interval = "50ms"
  sampling_interval = "0ms"
  nodes = ["{temp}", "{valve}"]

[pki]
dir = "{pki}"
trust_unknown_servers = true

[sink.parquet]
dir = "{parquet}"
roll_interval = "1s"

{sinks}

[buffer]
dir = "{buffer}"

[metrics]
listen = "127.0.0.1:{metrics}"

[[write]]
property = "coolingValve"
plc = "sim"
node = "{valve}"
type = "Boolean"

[[method]]
name = "resetFiller"
plc = "sim"
object = "{filler}"
method = "{reset}"

[[rule]]
name = "cool-filler"
when = {{ node = "{temp}", above = {FIRE:.1} }}
clear = {{ node = "{temp}", below = {CLEAR:.1} }}
on_fire = [{{ write = "coolingValve", value = true }}, {{ alert = "Filler product temperature spike: cooling valve opened", severity = 700 }}, {{ call = "resetFiller", args = ["temperature spike"] }}]
on_clear = [{{ write = "coolingValve", value = false }}]

[[rule]]
name = "chatty"
when = {{ node = "{temp}", above = {FIRE:.1} }}
on_fire = [{{ alert = "above {FIRE:.1} (no hysteresis)", severity = 100 }}]
"#,
        temp = line_node("Filler.ProductTemperature"),
        valve = line_node("Filler.CoolingValve"),
        filler = line_node("Filler"),
        reset = line_node("Filler.ResetCounters"),
        pki = dir.join("pki").display(),
        parquet = dir.join("parquet").display(),
        buffer = dir.join("buffer").display(),
    );
    let path = dir.join("rules.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The valve writes the PLC accepted, oldest first.
fn valve_writes(sim: &Sim) -> Vec<bool> {
    let s = sim
        .sim
        .node_stats(&line_node("Filler.CoolingValve"))
        .expect("valve stats");
    s.write_log
        .iter()
        .map(|w| match &w.value {
            SimValue::Bool(b) => *b,
            other => panic!("valve written with {other:?}"),
        })
        .collect()
}

/// Lines of the connector's log that contain every one of `parts`.
fn log_lines(log: &Path, parts: &[&str]) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .count()
}

/// Runs the connector until the valve was opened and closed `cycles` times, then stops it in
/// a quiet moment (the valve just closed, the next spike 2 s away).
async fn run_cycles(sim: &Sim, config: &Path, log: &Path, metrics: u16, cycles: usize) -> String {
    let mut connector = ConnectorProcess::run(config, log, &[("HUB_CS", HUB_CS)]);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], metrics));
    eventually(
        "the rule opened and closed the valve",
        Duration::from_secs(20 + 6 * cycles as u64),
        || {
            let w = valve_writes(sim);
            async move { (w.len() >= 2 * cycles && w.last() == Some(&false)).then_some(()) }
        },
    )
    .await;
    let body = metrics_text(addr).await;
    connector.terminate();
    assert!(connector
        .exit_within(Duration::from_secs(15))
        .await
        .success());
    body
}

const HUB_CS: &str =
    "HostName=hub.example;DeviceId=line-r;SharedAccessKey=c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seQ==";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temperature_spike_opens_the_cooling_valve_once_per_firing() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), spiky).await;
    let port = start_broker();
    let sub = Subscriber::start(port, "opcua/#").await;
    let metrics = free_port();
    let sinks = format!(
        "[sink.mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nallow_insecure_commands = true\nbatch_max_delay = \"100ms\""
    );
    let path = config(dir.path(), sim.sim.endpoint_url(), metrics, &sinks);
    let log = dir.path().join("connector.log");
    run_cycles(&sim, &path, &log, metrics, 3).await;

    // The PLC saw open, close, open, close, ...: exactly one write per firing and per clear.
    let writes = valve_writes(&sim);
    let opened = writes.iter().filter(|w| **w).count();
    let closed = writes.len() - opened;
    for (i, w) in writes.iter().enumerate() {
        assert_eq!(
            *w,
            i % 2 == 0,
            "the valve writes alternate, opening first: {writes:?}"
        );
    }
    let fired = log_lines(&log, &["rule fired", "cool-filler"]);
    let cleared = log_lines(&log, &["rule cleared", "cool-filler"]);
    assert!(opened >= 3, "{writes:?}");
    assert_eq!(opened, fired, "one write per firing");
    assert_eq!(closed, cleared, "one write per clear");
    // Every firing also called the filler's ResetCounters, audited under the rule's name.
    assert_eq!(
        log_lines(&log, &["audit", "called", "who=rule cool-filler"]),
        fired
    );
    // Every write has its audit record naming the rule.
    assert_eq!(
        log_lines(&log, &["audit", "written", "who=rule cool-filler"]),
        writes.len(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );

    // The signal chattered: within the spikes it crossed 18.0 upwards many more times than it
    // spiked, and the rule without hysteresis fired at each crossing.
    // Up to the last valve write: the connector stops right after it, and a spike that began
    // while it was stopping is not one the rule could answer.
    let last_write = sim
        .sim
        .node_stats(&line_node("Filler.CoolingValve"))
        .and_then(|s| s.write_log.last().map(|w| w.at_us))
        .expect("a write");
    let rows = read_all(&dir.path().join("parquet"));
    let temps: Vec<f64> = series(&rows, "filler", &line_node("Filler.ProductTemperature"))
        .iter()
        .filter(|r| r.time <= last_write)
        .filter_map(|r| match r.value {
            Val::Double(x) => Some(x),
            _ => None,
        })
        .collect();
    let (mut episodes, mut crossings, mut armed, mut above) = (0, 0, true, false);
    for t in &temps {
        if *t > FIRE && !above {
            crossings += 1;
        }
        above = *t > FIRE;
        if *t > FIRE && armed {
            episodes += 1;
            armed = false;
        } else if *t < CLEAR {
            armed = true;
        }
    }
    assert_eq!(
        episodes, opened,
        "one firing per spike in the data ({temps:?})"
    );
    let chatty = log_lines(&log, &["rule fired", "chatty"]);
    assert!(
        crossings > episodes && chatty > opened,
        "a noisy signal: {crossings} crossings, {chatty} firings without hysteresis, {opened} with"
    );

    // Alerts reached the broker: one per firing of cool-filler, with the values.
    let alerts: Vec<Value> = sub
        .messages
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| t == "opcua/plant/line-r/sim/alerts")
        .flat_map(|(_, p)| {
            let m: Value = serde_json::from_slice(p).unwrap();
            m["alerts"].as_array().cloned().unwrap_or_default()
        })
        .collect();
    let ours: Vec<&Value> = alerts
        .iter()
        .filter(|a| a["rule"] == "cool-filler")
        .collect();
    assert_eq!(ours.len(), opened, "{alerts:?}");
    for a in &ours {
        assert_eq!(a["state"], "fired");
        assert_eq!(a["severity"], 700);
        let v = a["values"][0]["v"].as_f64().expect("the temperature");
        assert!(v > FIRE, "{a}");
    }
    assert_eq!(
        alerts.iter().filter(|a| a["rule"] == "chatty").count(),
        chatty
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rule_acts_with_the_broker_and_the_hub_down() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), spiky).await;
    let metrics = free_port();
    // Nothing listens on either port.
    let (broker, hub) = (free_port(), free_port());
    let sinks = format!(
        "[sink.mqtt]\nurl = \"mqtt://127.0.0.1:{broker}\"\nallow_insecure_commands = true\n\n[hub]\nconnection_string_env = \"HUB_CS\"\ninsecure_endpoint = \"127.0.0.1:{hub}\""
    );
    let path = config(dir.path(), sim.sim.endpoint_url(), metrics, &sinks);
    let log = dir.path().join("connector.log");
    let body = run_cycles(&sim, &path, &log, metrics, 2).await;
    let writes = valve_writes(&sim);
    let opened = writes.iter().filter(|w| **w).count();
    assert!(opened >= 2, "{writes:?}");
    assert_eq!(opened, log_lines(&log, &["rule fired", "cool-filler"]));
    assert_eq!(
        log_lines(&log, &["audit", "written", "who=rule cool-filler"]),
        writes.len()
    );
    // Neither destination was reachable; the alerts wait in both buffers.
    assert_eq!(metric(&body, "telemetry_connected"), 0, "{body}");
    assert!(metric(&body, "rule_firings_total") >= 2, "{body}");
    let line = |name: &str, sink: &str| {
        body.lines()
            .find(|l| {
                l.starts_with(&format!("opcua_connector_{name}{{"))
                    && l.contains(&format!("sink=\"{sink}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(-1.0)
    };
    assert!(
        line("telemetry_alerts_buffered_total", "mqtt") >= 2.0,
        "{body}"
    );
    assert!(
        line("telemetry_alerts_buffered_total", "hub") >= 2.0,
        "{body}"
    );
}
