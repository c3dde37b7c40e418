//! Simulator <-> connector <-> MQTT broker (embedded rumqttd) <-> a subscriber.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use connector::config;
use connector::runner;
use simulator::FaultKind;
use tests::*;

fn line_config(dir: &Path, opc_endpoint: &str, broker_port: u16, extra: &str) -> config::Config {
    let nodes: Vec<String> = COUNTERS
        .iter()
        .map(|c| format!("\"{}\"", counter_id(c)))
        .collect();
    let text = format!(
        r#"
[line]
id = "line-m"
site = "plant"

[[plc]]
id = "sim"
endpoint = "{opc_endpoint}"

  [[plc.group]]
  name = "fast"
  publishing_interval = "100ms"
  sampling_interval = "0ms"
  nodes = [{nodes}]

[pki]
dir = "{pki}"
trust_unknown_servers = true

[sink.mqtt]
url = "mqtt://127.0.0.1:{broker_port}"
qos = 1
batch_max_samples = 50
batch_max_delay = "100ms"
{extra}

[buffer]
dir = "{buffer}"
"#,
        nodes = nodes.join(", "),
        pki = dir.join("pki").display(),
        buffer = dir.join("buffer").display(),
    );
    config::parse(Path::new("mqtt-test.toml"), &text).unwrap_or_else(|e| panic!("test config: {e}"))
}

/// Messages decoded: (seq, samples) per stream, and the counter values per node.
struct Decoded {
    seqs: BTreeMap<String, Vec<u64>>,
    values: BTreeMap<String, Vec<(u64, i128)>>,
}

fn decode(messages: &[(String, Vec<u8>)]) -> Decoded {
    let mut d = Decoded {
        seqs: BTreeMap::new(),
        values: BTreeMap::new(),
    };
    for (topic, body) in messages {
        let v: serde_json::Value =
            serde_json::from_slice(body).unwrap_or_else(|e| panic!("{topic}: not JSON: {e}"));
        assert_eq!(v["schema"], 1);
        let stream = format!(
            "{}/{}",
            v["plc"].as_str().unwrap(),
            v["group"].as_str().unwrap()
        );
        assert_eq!(topic, &format!("opcua/plant/line-m/{stream}"));
        let seq = v["seq"].as_u64().expect("seq");
        d.seqs.entry(stream).or_default().push(seq);
        for s in v["samples"].as_array().expect("samples") {
            let node = s["node"].as_str().unwrap().to_owned();
            let x: i128 = match &s["v"] {
                serde_json::Value::Number(n) => n.as_i64().map(i128::from).expect("integer"),
                serde_json::Value::String(t) => t.parse().expect("integer string"),
                other => panic!("{node}: {other}"),
            };
            d.values.entry(node).or_default().push((seq, x));
        }
    }
    d
}

async fn settle(sim: &Sim, sub: &Subscriber) {
    sim.sim.inject(FaultKind::Freeze {
        duration: Duration::from_secs(120),
    });
    let mut last = usize::MAX;
    eventually("messages settle", Duration::from_secs(20), || {
        let now = sub.count();
        let settled = now == last;
        last = now;
        async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            settled.then_some(())
        }
    })
    .await;
}

fn truth(sim: &Sim, name: &str) -> i128 {
    match sim.sim.node_stats(&counter_id(name)).expect("truth").last {
        simulator::model::Value::Int(i) => i.into(),
        simulator::model::Value::UInt(u) => u.into(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_counter_sample_arrives_once_in_seq_order() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), |_| {}).await;
    let broker = start_broker();
    let sub = Subscriber::start(broker, "opcua/#").await;
    let running = runner::start(&line_config(dir.path(), sim.sim.endpoint_url(), broker, ""))
        .expect("runner");
    eventually("30 messages", Duration::from_secs(20), || async {
        (sub.count() >= 30).then_some(())
    })
    .await;
    settle(&sim, &sub).await;
    let mqtt = running.mqtt.clone().expect("mqtt metrics");
    running.stop(Duration::from_secs(10)).await;
    let d = decode(&sub.messages.lock().unwrap());
    for (stream, seqs) in &d.seqs {
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "{stream}: seq in order, once: {seqs:?}"
        );
    }
    for name in COUNTERS {
        let v: Vec<i128> = d.values[&counter_id(name)]
            .iter()
            .map(|(_, x)| *x)
            .collect();
        assert_eq!(counter_defects(&v), (0, 0), "{name}: {v:?}");
        assert_eq!(
            *v.last().unwrap(),
            truth(&sim, name),
            "{name} ends at the ground truth"
        );
    }
    let acked = mqtt
        .messages_acked
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        acked as usize,
        sub.count(),
        "every message acknowledged, none left buffered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_loses_nothing_and_the_backlog_drains_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), |_| {}).await;
    let broker = start_broker();
    let relay = Relay::start(broker).await;
    let sub = Subscriber::start(broker, "opcua/#").await;
    let running = runner::start(&line_config(
        dir.path(),
        sim.sim.endpoint_url(),
        relay.port,
        "",
    ))
    .expect("runner");
    eventually("first messages", Duration::from_secs(20), || async {
        (sub.count() >= 10).then_some(())
    })
    .await;
    relay.set_down(true);
    let down_at = Instant::now();
    tokio::time::sleep_until((down_at + Duration::from_secs(5)).into()).await;
    let during = sub.count();
    relay.set_down(false);
    let back = Instant::now();
    eventually("the backlog arrives", Duration::from_secs(20), || async {
        (sub.count() >= during + 40).then_some(())
    })
    .await;
    eprintln!(
        "outage 5 s: backlog of ~{} messages started arriving within {:.2} s",
        50,
        back.elapsed().as_secs_f64()
    );
    settle(&sim, &sub).await;
    running.stop(Duration::from_secs(10)).await;
    let d = decode(&sub.messages.lock().unwrap());
    for (stream, seqs) in &d.seqs {
        let mut uniq = seqs.clone();
        uniq.sort_unstable();
        uniq.dedup();
        assert!(
            uniq.windows(2).all(|w| w[1] == w[0] + 1),
            "{stream}: no seq missing: {uniq:?}"
        );
        // Repeats are allowed only as the messages in flight when the broker went away.
        assert!(
            seqs.len() - uniq.len() <= 120,
            "{stream}: {} repeats",
            seqs.len() - uniq.len()
        );
    }
    // Drop repeats by (stream, seq), as a consumer does; then every counter is contiguous.
    let mut seen = std::collections::HashSet::new();
    let unique: Vec<(String, Vec<u8>)> = sub
        .messages
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, b)| {
            let v: serde_json::Value = serde_json::from_slice(b).unwrap();
            seen.insert((t.clone(), v["seq"].as_u64().unwrap()))
        })
        .cloned()
        .collect();
    let d = decode(&unique);
    for name in COUNTERS {
        let mut pairs = d.values[&counter_id(name)].clone();
        pairs.sort_by_key(|(seq, _)| *seq);
        let v: Vec<i128> = pairs.into_iter().map(|(_, x)| x).collect();
        assert_eq!(
            counter_defects(&v),
            (0, 0),
            "{name}: zero loss, order kept: {v:?}"
        );
        assert_eq!(*v.last().unwrap(), truth(&sim, name));
    }
}

fn connector_bin() -> std::path::PathBuf {
    // target/debug/deps/mqtt-* -> target/debug/opcua-connector (tests/run builds it first).
    let exe = std::env::current_exe().expect("test exe");
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .join("opcua-connector");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (tests/run does)",
        bin.display()
    );
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_the_broker_is_down_then_restart_delivers_the_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), |_| {}).await;
    let broker = start_broker();
    let relay = Relay::start(broker).await;
    relay.set_down(true);
    let nodes: Vec<String> = COUNTERS
        .iter()
        .map(|c| format!("\"{}\"", counter_id(c)))
        .collect();
    let text = format!(
        "[line]\nid = \"line-m\"\nsite = \"plant\"\n\n[[plc]]\nid = \"sim\"\nendpoint = \"{}\"\n\n  [[plc.group]]\n  name = \"fast\"\n  publishing_interval = \"100ms\"\n  sampling_interval = \"0ms\"\n  nodes = [{}]\n\n[pki]\ndir = \"{}\"\ntrust_unknown_servers = true\n\n[sink.mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\nqos = 1\nbatch_max_samples = 50\nbatch_max_delay = \"100ms\"\n\n[buffer]\ndir = \"{}\"\n",
        sim.sim.endpoint_url(),
        nodes.join(", "),
        dir.path().join("pki").display(),
        relay.port,
        dir.path().join("buffer").display()
    );
    let path = dir.path().join("line.toml");
    std::fs::write(&path, text).unwrap();
    let spawn = || {
        std::process::Command::new(connector_bin())
            .args(["run", "--config", path.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn connector")
    };
    let seq_file = dir.path().join("buffer/mqtt/seq");
    let mut child = spawn();
    // Let it buffer ~40 messages with the broker away, then kill -9.
    let reserved = eventually("40 messages buffered", Duration::from_secs(30), || async {
        let text = std::fs::read_to_string(&seq_file).ok()?;
        let next: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
        (next > 40).then_some(next)
    })
    .await;
    child.kill().expect("kill -9");
    let _ = child.wait();
    let reserved_at_kill: u64 = std::fs::read_to_string(&seq_file)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(reserved_at_kill >= reserved);

    relay.set_down(false);
    let sub = Subscriber::start(broker, "opcua/#").await;
    let mut child = spawn();
    eventually(
        "the backlog and new messages",
        Duration::from_secs(30),
        || {
            let n = sub.count() as u64;
            async move { (n > reserved_at_kill + 10).then_some(()) }
        },
    )
    .await;
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let _ = child.wait();

    let mut seqs: Vec<u64> = sub
        .messages
        .lock()
        .unwrap()
        .iter()
        .map(|(_, b)| {
            serde_json::from_slice::<serde_json::Value>(b).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    // Every message buffered before the kill is delivered: seq 1 .. (reserved_at_kill - 1),
    // except at most the last few whose seq was reserved but whose append the kill cut short.
    let before: Vec<u64> = seqs
        .iter()
        .copied()
        .filter(|s| *s < reserved_at_kill)
        .collect();
    assert_eq!(before.first(), Some(&1), "the backlog starts at seq 1");
    assert!(
        before.windows(2).all(|w| w[1] == w[0] + 1),
        "no buffered message lost: {before:?}"
    );
    assert!(
        reserved_at_kill - 1 - before.last().unwrap() <= 3,
        "at most the message being written when killed: {before:?} vs {reserved_at_kill}"
    );
    eprintln!(
        "kill -9 with the broker down: {} buffered messages delivered after restart",
        before.len()
    );
}
