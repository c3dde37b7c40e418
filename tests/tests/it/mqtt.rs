//! Simulator <-> connector <-> MQTT broker (embedded rumqttd) <-> a subscriber.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use connector::config;
use connector::runner;
use tests::*;

fn line_config(dir: &Path, opc_endpoint: &str, broker_port: u16, extra: &str) -> config::Config {
    counters_config(
        dir,
        opc_endpoint,
        &format!(
            "[sink.mqtt]\nurl = \"mqtt://127.0.0.1:{broker_port}\"\nqos = 1\nbatch_max_samples = 50\nbatch_max_delay = \"100ms\"\n{extra}\n\n[buffer]\ndir = \"{}\"\n",
            dir.join("buffer").display()
        ),
    )
}

async fn settle(sim: &Sim, sub: &Subscriber) {
    freeze_and_settle(sim, || sub.count()).await;
}

fn truth(sim: &Sim, name: &str) -> i128 {
    truth_last(sim, &counter_id(name))
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
    running.stop().await;
    let d = decode(&sub.messages.lock().unwrap());
    d.assert_complete(&sim);
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
    running.stop().await;
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
    let unique = unique_by_seq(&sub.messages.lock().unwrap());
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

/// The next seq of stream `sim/fast` in the seq state of `dir` (the higher of its two slot
/// files, `seq.a` and `seq.b`: each line `<stream> <next>`).
fn next_seq(dir: &Path) -> Option<u64> {
    connector::buffer::seq::FILES
        .iter()
        .filter_map(|f| {
            std::fs::read_to_string(dir.join(f))
                .ok()?
                .lines()
                .find_map(|l| l.strip_prefix("sim/fast "))
                .and_then(|n| n.parse().ok())
        })
        .max()
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
    let seq_dir = dir.path().join("buffer/mqtt");
    let mut child = spawn();
    // Let it buffer ~40 messages with the broker away, then kill -9.
    let reserved = eventually("40 messages buffered", Duration::from_secs(30), || async {
        let next = next_seq(&seq_dir)?;
        (next > 40).then_some(next)
    })
    .await;
    child.kill().expect("kill -9");
    let _ = child.wait();
    let reserved_at_kill = next_seq(&seq_dir).unwrap();
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

    let seqs: Vec<u64> = sub.seqs().into_iter().collect();
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

fn scale_config(dir: &Path, opc: &str, broker_port: u16, buffer: &str) -> config::Config {
    let text = format!(
        r#"
[line]
id = "line-s"

[[plc]]
id = "sim"
endpoint = "{opc}"

  [[plc.group]]
  name = "scale"
  publishing_interval = "100ms"
  sampling_interval = "0ms"
  browse = [{{ root = "nsu=urn:opcua-connector:simulator:scale;s=Scale" }}]

[pki]
dir = "{pki}"
trust_unknown_servers = true

[sink.mqtt]
url = "mqtt://127.0.0.1:{broker_port}"
qos = 1
batch_max_samples = 1000
batch_max_delay = "200ms"

[buffer]
dir = "{bdir}"
{buffer}
"#,
        pki = dir.join("pki").display(),
        bdir = dir.join("buffer").display(),
    );
    config::parse(Path::new("scale-test.toml"), &text)
        .unwrap_or_else(|e| panic!("test config: {e}"))
}

/// Per scaled counter node, the values received (repeats by (topic, seq) dropped).
fn scaled_counters(messages: &[(String, Vec<u8>)]) -> (BTreeMap<String, Vec<i128>>, usize) {
    let mut seen = std::collections::HashSet::new();
    let mut repeats = 0;
    let mut by_seq: Vec<(u64, serde_json::Value)> = Vec::new();
    for (t, b) in messages {
        let v: serde_json::Value = serde_json::from_slice(b).unwrap();
        let seq = v["seq"].as_u64().unwrap();
        if seen.insert((t.clone(), seq)) {
            by_seq.push((seq, v));
        } else {
            repeats += 1;
        }
    }
    by_seq.sort_by_key(|(s, _)| *s);
    let mut out: BTreeMap<String, Vec<i128>> = BTreeMap::new();
    for (_, v) in by_seq {
        for s in v["samples"].as_array().unwrap() {
            if s["type"] == "Boolean" || s["type"] == "Double" {
                continue;
            }
            let x: i128 = json_int(&s["v"]);
            out.entry(s["node"].as_str().unwrap().to_owned())
                .or_default()
                .push(x);
        }
    }
    (out, repeats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30s_broker_outage_at_10k_samples_per_second_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), |c| {
        c.scale = Some("1000@100ms".parse().unwrap())
    })
    .await;
    let broker = start_broker();
    let relay = Relay::start(broker).await;
    let sub = Subscriber::start(broker, "opcua/#").await;
    let running = runner::start(&scale_config(
        dir.path(),
        sim.sim.endpoint_url(),
        relay.port,
        "",
    ))
    .expect("runner");
    let m = running.metrics.clone();
    eventually("samples flow", Duration::from_secs(30), || async {
        (sub.count() >= 20).then_some(())
    })
    .await;
    relay.set_down(true);
    let received_at_down = m.total(|p| &p.samples_received);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let during = m.total(|p| &p.samples_received) - received_at_down;
    let backlog = running.outboxes[0].buffer.lock().unwrap().stats();
    relay.set_down(false);
    let back = std::time::Instant::now();
    // The backlog is drained when the buffer has nothing pending any more.
    let drained = eventually("the backlog drains", Duration::from_secs(120), || {
        let pending = running.outboxes[0].buffer.lock().unwrap().stats().pending;
        async move { (pending <= 5).then_some(back.elapsed()) }
    })
    .await;
    eprintln!(
        "30 s outage at {:.0} samples/s: {} messages / {:.1} MB buffered; drained in {:.2} s ({:.0} samples/s)",
        during as f64 / 30.0,
        backlog.pending,
        backlog.bytes_on_disk as f64 / 1e6,
        drained.as_secs_f64(),
        during as f64 / drained.as_secs_f64()
    );
    assert!(
        during as f64 / 30.0 >= 9_000.0,
        "about 10,000 samples/s during the outage"
    );
    freeze_and_settle(&sim, || sub.count()).await;
    running.stop().await;
    let (counters, repeats) = scaled_counters(&sub.messages.lock().unwrap());
    assert_eq!(counters.len(), 600, "every scaled counter arrived");
    for (node, v) in &counters {
        assert_eq!(counter_defects(v), (0, 0), "{node}: zero loss, order kept");
        assert_eq!(
            *v.last().unwrap(),
            truth_last(&sim, node),
            "{node} ends at the ground truth"
        );
    }
    eprintln!("repeats dropped by seq: {repeats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_applies_its_policy_counts_it_and_the_connector_keeps_running() {
    // drop_oldest: the oldest buffered messages go (counted); the newest reach the broker.
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), |c| c.scale = Some("500@100ms".parse().unwrap())).await;
    let broker = start_broker();
    let relay = Relay::start(broker).await;
    relay.set_down(true);
    let cfg = scale_config(
        &dir.path().join("drop"),
        sim.sim.endpoint_url(),
        relay.port,
        "max_bytes = \"2MiB\"\nsegment_bytes = \"512KiB\"\nwhen_full = \"drop_oldest\"",
    );
    let running = runner::start(&cfg).expect("runner");
    let m = running.metrics.clone();
    let ob = running.outboxes[0].clone();
    eventually(
        "the buffer drops its oldest",
        Duration::from_secs(60),
        || {
            let s = ob.buffer.lock().unwrap().stats();
            async move { (s.dropped > 0).then_some(()) }
        },
    )
    .await;
    let s = ob.buffer.lock().unwrap().stats();
    assert!(s.bytes_on_disk <= 2 << 20, "bounded by max_bytes: {s:?}");
    let before = m.total(|p| &p.samples_received);
    eventually("samples keep flowing", Duration::from_secs(10), || {
        let m = m.clone();
        async move { (m.total(|p| &p.samples_received) > before + 5000).then_some(()) }
    })
    .await;
    let sub = Subscriber::start(broker, "opcua/#").await;
    relay.set_down(false);
    eventually(
        "the newest messages arrive",
        Duration::from_secs(30),
        || async { (sub.count() >= 5).then_some(()) },
    )
    .await;
    running.stop().await;
    eprintln!(
        "drop_oldest: {} messages dropped, {} bytes kept",
        s.dropped, s.bytes_on_disk
    );

    // pause: nothing buffered is dropped; new messages wait in memory (counted), and the
    // writer thread never waits, so samples keep flowing (into Parquet, were it configured).
    let cfg = scale_config(
        &dir.path().join("pause"),
        sim.sim.endpoint_url(),
        relay.port,
        "max_bytes = \"2MiB\"\nsegment_bytes = \"512KiB\"\nwhen_full = \"pause\"",
    );
    relay.set_down(true);
    let running = runner::start(&cfg).expect("runner");
    let mqtt = running.mqtt.clone().unwrap();
    let ob = running.outboxes[0].clone();
    eventually("the outbox holds", Duration::from_secs(60), || {
        let waits = mqtt
            .held_in_memory
            .load(std::sync::atomic::Ordering::Relaxed);
        async move { (waits > 0).then_some(()) }
    })
    .await;
    let s = ob.buffer.lock().unwrap().stats();
    assert_eq!(s.dropped, 0, "pause never drops");
    assert!(s.bytes_on_disk <= 2 << 20, "bounded by max_bytes: {s:?}");
    let m = running.metrics.clone();
    let before = m.total(|p| &p.samples_received);
    eventually(
        "samples keep flowing while paused",
        Duration::from_secs(10),
        || {
            let m = m.clone();
            async move { (m.total(|p| &p.samples_received) > before + 5000).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        m.total(|p| &p.backpressure_waits),
        0,
        "the OPC UA side was never held back"
    );
    relay.set_down(false);
    eventually(
        "the buffer empties after the broker returns",
        Duration::from_secs(60),
        || {
            let s = ob.buffer.lock().unwrap().stats();
            async move { (s.pending <= 5).then_some(()) }
        },
    )
    .await;
    running.stop().await;
}

/// The seq state deleted between two runs: the second run starts a new epoch at seq 1, and a
/// consumer that de-duplicates on (epoch, seq), as docs/mqtt.md says, loses nothing (one that
/// keyed on seq alone would drop the second run's messages as repeats).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_seq_file_starts_a_new_epoch_and_a_consumer_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), |_| {}).await;
    let broker = start_broker();
    let sub = Subscriber::start(broker, "opcua/#").await;
    let cfg = line_config(dir.path(), sim.sim.endpoint_url(), broker, "");
    let epochs = |range: std::ops::Range<usize>| -> BTreeMap<String, usize> {
        let mut e = BTreeMap::new();
        for (_, b) in &sub.messages.lock().unwrap()[range] {
            let v: serde_json::Value = serde_json::from_slice(b).unwrap();
            *e.entry(v["epoch"].as_str().unwrap().to_owned())
                .or_insert(0) += 1;
        }
        e
    };
    let running = runner::start(&cfg).expect("runner");
    eventually("20 messages", Duration::from_secs(20), || async {
        (sub.count() >= 20).then_some(())
    })
    .await;
    running.stop().await;
    let first_run = sub.count();
    for f in connector::buffer::seq::FILES {
        std::fs::remove_file(dir.path().join("buffer/mqtt").join(f)).unwrap();
    }

    let running = runner::start(&cfg).expect("runner");
    eventually("20 more messages", Duration::from_secs(20), || async {
        (sub.count() >= first_run + 20).then_some(())
    })
    .await;
    settle(&sim, &sub).await;
    running.stop().await;

    let (one, two) = (epochs(0..first_run), epochs(first_run..sub.count()));
    eprintln!("epochs: first run {one:?}, second run {two:?}");
    assert_eq!(one.len(), 1, "one epoch in the first run");
    assert_eq!(two.len(), 1, "one epoch in the second run");
    assert_ne!(one.keys().next(), two.keys().next(), "a new epoch");
    let messages = sub.messages.lock().unwrap().clone();
    let unique = unique_by_seq(&messages);
    assert_eq!(unique.len(), messages.len(), "nothing taken for a repeat");
    // Each run: seqs from 1, in order; the counters without a gap while it ran (samples of
    // the moment between the runs may never have been read), the second ending at the truth.
    for (run, part) in [&messages[..first_run], &messages[first_run..]]
        .into_iter()
        .enumerate()
    {
        let d = decode(part);
        for (stream, seqs) in &d.seqs {
            assert_eq!(seqs[0], 1, "run {run} {stream}: starts at seq 1");
        }
        for name in COUNTERS {
            let v: Vec<i128> = d.values[&counter_id(name)]
                .iter()
                .map(|(_, x)| *x)
                .collect();
            assert_eq!(counter_defects(&v), (0, 0), "run {run} {name}: {v:?}");
            if run == 1 {
                assert_eq!(*v.last().unwrap(), truth(&sim, name));
            }
        }
    }
}
