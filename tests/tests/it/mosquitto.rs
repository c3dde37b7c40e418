//! The connector against mosquitto, a broker nobody here wrote: plain MQTT and mutual TLS
//! with a CA, server and client certificate generated for the test ([`tests::certs`]).
//! `.ci/run` installs mosquitto and openssl; without them this test fails and says so.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use connector::config;
use connector::runner;
use simulator::FaultKind;
use tests::*;

fn start_mosquitto(dir: &Path, plain: u16, tls: u16) -> Mosquitto {
    let conf = format!(
        "user root\nper_listener_settings false\nallow_anonymous true\n\
         listener {plain} 127.0.0.1\n\
         listener {tls} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
         require_certificate true\nuse_identity_as_username true\n",
        d = dir.display()
    );
    mosquitto(dir, &conf, &[plain, tls])
}

fn config(dir: &Path, opc: &str, url: &str, tls: &str) -> config::Config {
    counters_config(
        dir,
        opc,
        &format!(
            "[sink.mqtt]\nurl = \"{url}\"\nqos = 1\nbatch_max_samples = 50\nbatch_max_delay = \"100ms\"\n{tls}\n\n[buffer]\ndir = \"{}\"\n",
            dir.join("buffer").display()
        ),
    )
}

async fn run_once(dir: &Path, sim: &Sim, url: &str, tls: &str, sub_port: u16) {
    let sub = Subscriber::start(sub_port, "opcua/#").await;
    let running = runner::start(&config(dir, sim.sim.endpoint_url(), url, tls)).expect("runner");
    eventually(
        &format!("messages via {url}"),
        Duration::from_secs(20),
        || async { (sub.count() >= 20).then_some(()) },
    )
    .await;
    let before = sub.count();
    running.stop().await;
    let msgs = sub.messages.lock().unwrap().clone();
    assert!(msgs.len() >= before);
    let mut last: std::collections::BTreeMap<String, i128> = Default::default();
    let mut seqs = Vec::new();
    for (_, body) in &msgs {
        let v: serde_json::Value = serde_json::from_slice(body).expect("JSON");
        seqs.push(v["seq"].as_u64().unwrap());
        for s in v["samples"].as_array().unwrap() {
            let node = s["node"].as_str().unwrap().to_owned();
            let x: i128 = json_int(&s["v"]);
            if let Some(prev) = last.insert(node.clone(), x) {
                assert_eq!(x, prev + 1, "{url}: {node} went from {prev} to {x}");
            }
        }
    }
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "{url}: seq in order: {seqs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_and_mutual_tls_to_mosquitto_deliver_every_sample_in_order() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let (plain, tls) = (free_port(), free_port());
    let _broker = start_mosquitto(dir.path(), plain, tls);
    let sim = start_sim(dir.path(), |_| {}).await;

    run_once(
        &dir.path().join("plain"),
        &sim,
        &format!("mqtt://127.0.0.1:{plain}"),
        "",
        plain,
    )
    .await;
    let d = dir.path().display();
    let tls_table = format!("tls = {{ ca_file = \"{d}/ca.pem\", cert_file = \"{d}/client.pem\", key_file = \"{d}/client.key\" }}");
    run_once(
        &dir.path().join("tls"),
        &sim,
        &format!("mqtts://127.0.0.1:{tls}"),
        &tls_table,
        plain,
    )
    .await;
    sim.sim.inject(FaultKind::Freeze {
        duration: Duration::from_secs(1),
    });
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// A broker that hangs (SIGSTOP: the socket stays open, nothing answers) is noticed within
/// 1.5 x keep_alive; after SIGCONT the connector reconnects and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_broker_is_noticed_within_one_and_a_half_keep_alives() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), |_| {}).await;
    let (broker, port) = plain_mosquitto(dir.path());
    let sub = Subscriber::start(port, "opcua/#").await;
    let cfg = counters_config(
        dir.path(),
        sim.sim.endpoint_url(),
        &format!(
            "[sink.mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nqos = 1\nkeep_alive = \"2s\"\nbatch_max_delay = \"100ms\"\n\n[buffer]\ndir = \"{}\"\n",
            dir.path().join("buffer").display()
        ),
    );
    let running = runner::start(&cfg).expect("runner");
    let m = running.mqtt.clone().unwrap();
    eventually("messages acknowledged", Duration::from_secs(20), || {
        let n = m.messages_acked.load(Ordering::Relaxed);
        async move { (n >= 10).then_some(()) }
    })
    .await;
    signal(broker.pid(), "-STOP");
    let stopped = std::time::Instant::now();
    eventually("the hung broker noticed", Duration::from_secs(10), || {
        let up = m.connected.load(Ordering::Relaxed);
        async move { (!up).then_some(()) }
    })
    .await;
    let noticed = stopped.elapsed();
    signal(broker.pid(), "-CONT");
    eprintln!(
        "hung broker noticed after {:.2} s (keep_alive 2 s)",
        noticed.as_secs_f64()
    );
    assert!(noticed <= Duration::from_secs(3), "{noticed:?}");
    eventually("reconnected", Duration::from_secs(20), || {
        let back = m.connected.load(Ordering::Relaxed) && m.reconnects.load(Ordering::Relaxed) >= 1;
        async move { back.then_some(()) }
    })
    .await;
    freeze_and_settle(&sim, || sub.count()).await;
    running.stop().await;
    let unique = unique_by_seq(&sub.messages.lock().unwrap());
    decode(&unique).assert_complete(&sim);
}
