//! Simulator <-> connector (MQTT 5 sender, `version = "5"`) <-> broker <-> subscribers.
//!
//! Two brokers: mosquitto (MQTT 5 in, a 3.1.1 subscriber out) and the embedded rumqttd with a
//! v4 and a v5 listener (an MQTT 5 subscriber on the v5 listener). rumqttd 0.20 cannot route
//! a v5 PUBLISH that has properties to a v4 subscriber: its v4 listener thread panics
//! (`unreachable!` in `protocol/v4/mod.rs`, "packets with Properties ... not possible in v4")
//! and every later v4 connection fails. So the 3.1.1-subscriber leg runs on mosquitto.

use std::io::Read as _;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use connector::config;
use connector::runner;
use tests::*;

/// An embedded rumqttd listening for MQTT 3.1.1 and MQTT 5 clients: `(v4 port, v5 port)`.
fn start_broker_v4_v5() -> (u16, u16) {
    let (v4, v5) = start_rumqttd(true);
    (v4, v5.expect("v5 listener"))
}

fn line_config(dir: &Path, opc_endpoint: &str, broker_port: u16, extra: &str) -> config::Config {
    counters_config(
        dir,
        opc_endpoint,
        &format!(
            "[sink.mqtt]\nurl = \"mqtt://127.0.0.1:{broker_port}\"\nversion = \"5\"\nqos = 1\nbatch_max_samples = 50\nbatch_max_delay = \"100ms\"\n{extra}\n\n[buffer]\ndir = \"{}\"\n",
            dir.join("buffer").display()
        ),
    )
}

/// What an MQTT 5 subscriber saw of a message's properties: (content type, user properties).
type Props = (Option<String>, Vec<(String, String)>);

/// An MQTT 5 subscriber that collects every message on `filter` (QoS 1) with its properties;
/// gzip payloads (user property `content-encoding: gzip`) are stored decompressed.
struct Subscriber5 {
    messages: Received,
    props: Arc<Mutex<Vec<Props>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber5 {
    async fn start(port: u16, filter: &str) -> Subscriber5 {
        use rumqttc::v5::mqttbytes::v5::Packet;
        let mut o = rumqttc::v5::MqttOptions::new(format!("test-sub5-{port}"), "127.0.0.1", port);
        o.set_max_packet_size(Some(2 << 20));
        o.set_keep_alive(Duration::from_secs(30));
        let (client, mut el) = rumqttc::v5::AsyncClient::new(o, 100);
        let messages: Received = Arc::default();
        let props: Arc<Mutex<Vec<Props>>> = Arc::default();
        let (m2, p2, f2) = (messages.clone(), props.clone(), filter.to_owned());
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(rumqttc::v5::Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client
                            .subscribe(f2.clone(), rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
                            .await;
                    }
                    Ok(rumqttc::v5::Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(rumqttc::v5::Event::Incoming(Packet::Publish(p))) => {
                        let pr = p.properties.clone().unwrap_or_default();
                        let gzip = pr
                            .user_properties
                            .iter()
                            .any(|(k, v)| k == "content-encoding" && v == "gzip");
                        let body = if gzip {
                            let mut out = Vec::new();
                            flate2::read::GzDecoder::new(&p.payload[..])
                                .read_to_end(&mut out)
                                .expect("gzip payload");
                            out
                        } else {
                            p.payload.to_vec()
                        };
                        let topic = String::from_utf8_lossy(&p.topic).into_owned();
                        m2.lock().unwrap().push((topic, body));
                        p2.lock()
                            .unwrap()
                            .push((pr.content_type, pr.user_properties));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(10), ready_rx).await;
        Subscriber5 {
            messages,
            props,
            task,
        }
    }
}

impl Drop for Subscriber5 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// mosquitto on a free loopback port (MQTT 3.1.1 and 5 on the same listener).
fn start_mosquitto(dir: &Path) -> (Mosquitto, u16) {
    let port = free_port();
    // An optional `extra.conf` in `dir` (e.g. an ACL) is appended.
    let extra = std::fs::read_to_string(dir.join("extra.conf")).unwrap_or_default();
    let conf = format!("user root\nallow_anonymous true\nlistener {port} 127.0.0.1\n{extra}");
    (mosquitto(dir, &conf, &[port]), port)
}

/// Runs the line against `broker_port` until 30 messages arrived in `received`, freezes the
/// simulator, waits until nothing new arrives, stops, and checks: every stream's seq in order
/// and once, every counter without a gap or repeat and ending at the ground truth, every
/// message acknowledged, no reconnect.
async fn run_and_check(dir: &Path, sim: &Sim, broker_port: u16, extra: &str, received: &Received) {
    let count = || received.lock().unwrap().len();
    let running = runner::start(&line_config(
        dir,
        sim.sim.endpoint_url(),
        broker_port,
        extra,
    ))
    .expect("runner starts the MQTT 5 sender");
    eventually("30 messages", Duration::from_secs(20), || async {
        (count() >= 30).then_some(())
    })
    .await;
    freeze_and_settle(sim, &count).await;
    let mqtt = running.mqtt.clone().expect("mqtt metrics");
    running.stop().await;
    let d = decode(&received.lock().unwrap());
    assert!(!d.seqs.is_empty(), "messages arrived");
    d.assert_complete(sim);
    let acked = mqtt
        .messages_acked
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        acked as usize,
        count(),
        "every message acknowledged by a successful v5 PUBACK, none left buffered"
    );
    assert_eq!(
        mqtt.reconnects.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "no reconnect (a rejected PUBACK would force one)"
    );
}

/// MQTT 5 into mosquitto, read back by a 3.1.1 subscriber (and an MQTT 5 one for the
/// properties).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_via_mosquitto_every_counter_sample_arrives_once_in_seq_order() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), |_| {}).await;
    let (_broker, port) = start_mosquitto(dir.path());
    let sub = Subscriber::start(port, "opcua/#").await;
    let sub5 = Subscriber5::start(port, "opcua/#").await;
    run_and_check(dir.path(), &sim, port, "", &sub.messages).await;
    let props = sub5.props.lock().unwrap().clone();
    assert_eq!(props.len(), sub.count(), "the v5 subscriber saw them all");
    for (content_type, user) in &props {
        assert_eq!(content_type.as_deref(), Some("application/json"));
        assert!(user.is_empty(), "no content-encoding for json: {user:?}");
    }
}

/// MQTT 5 json+gzip into rumqttd's v5 listener, read back by an MQTT 5 subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_gzip_via_rumqttd_every_counter_sample_arrives_once_in_seq_order() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), |_| {}).await;
    let (_v4, v5) = start_broker_v4_v5();
    let sub5 = Subscriber5::start(v5, "opcua/#").await;
    run_and_check(
        dir.path(),
        &sim,
        v5,
        "payload = \"json+gzip\"",
        &sub5.messages,
    )
    .await;
    let props = sub5.props.lock().unwrap().clone();
    assert!(!props.is_empty());
    for (content_type, user) in &props {
        assert_eq!(content_type.as_deref(), Some("application/json"));
        assert_eq!(
            user,
            &vec![("content-encoding".to_owned(), "gzip".to_owned())]
        );
    }
}

/// A broker that refuses the messages (mosquitto answers a denied PUBLISH from an MQTT 5
/// client with PUBACK 0x87 "not authorized"): nothing is acked, everything stays buffered;
/// once the ACL allows the topic, the backlog goes out from seq 1, in order, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_rejected_messages_stay_buffered_and_go_out_in_order_once_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), |_| {}).await;
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "topic read opcua/#\n").unwrap();
    std::fs::write(
        dir.path().join("extra.conf"),
        format!("acl_file {}\n", acl.display()),
    )
    .unwrap();
    let (broker, port) = start_mosquitto(dir.path());
    let sub = Subscriber::start(port, "opcua/#").await;
    let running = runner::start(&line_config(dir.path(), sim.sim.endpoint_url(), port, ""))
        .expect("runner starts the MQTT 5 sender");
    let mqtt = running.mqtt.clone().expect("mqtt metrics");
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    eventually(
        "a rejection forces a reconnect",
        Duration::from_secs(20),
        || async { (load(&mqtt.reconnects) >= 1).then_some(()) },
    )
    .await;
    // Refused again after the reconnect: the broker keeps refusing, nothing got through.
    eventually(
        "a second rejection after the reconnect",
        Duration::from_secs(20),
        || async { (load(&mqtt.rejected) >= 2).then_some(()) },
    )
    .await;
    assert_eq!(sub.count(), 0, "the broker delivered nothing");
    assert_eq!(
        load(&mqtt.messages_acked),
        0,
        "a rejected message is not acked"
    );
    let buffered = load(&mqtt.messages_buffered);
    assert!(buffered > 5, "messages wait in the buffer: {buffered}");

    std::fs::write(&acl, "topic readwrite opcua/#\n").unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &broker.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success(), "mosquitto reloads its ACL");
    eventually("the backlog arrives", Duration::from_secs(40), || async {
        (sub.count() as u64 >= buffered + 10).then_some(())
    })
    .await;
    freeze_and_settle(&sim, || sub.count()).await;
    running.stop().await;
    // Drop repeats by (stream, seq), as a consumer does (a message accepted behind a rejected
    // one is sent again after the reconnect); then nothing is missing.
    let unique = unique_by_seq(&sub.messages.lock().unwrap());
    let d = decode(&unique);
    for (stream, seqs) in &d.seqs {
        assert_eq!(
            seqs.first(),
            Some(&1),
            "{stream}: the backlog starts at seq 1"
        );
    }
    d.assert_complete(&sim);
}

/// A status topic the broker's ACL denies (PUBACK 0x87 to an MQTT 5 client) while the
/// telemetry topics are allowed: the refusal is counted in
/// `telemetry_status_failures_total`, the status is offered again after its interval, and the
/// telemetry flows, every counter sample once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_a_refused_status_topic_is_counted_and_the_telemetry_flows() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), |_| {}).await;
    let acl = dir.path().join("acl");
    // Telemetry is opcua/plant/line-m/{plc}/{group}; the status topic has one level less.
    // Anyone may read everything (the subscriber would see a status the broker took).
    std::fs::write(
        &acl,
        "topic read #\ntopic readwrite opcua/plant/line-m/+/+\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("extra.conf"),
        format!("acl_file {}\n", acl.display()),
    )
    .unwrap();
    let (_broker, port) = start_mosquitto(dir.path());
    let sub = Subscriber::start(port, "opcua/#").await;
    let status = "status_topic = \"opcua/{site}/{line}/status\"\nstatus_interval = \"1s\"";
    let mut config = line_config(dir.path(), sim.sim.endpoint_url(), port, status);
    config.metrics = Some(connector::config::MetricsConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
    });
    let running = runner::start(&config).expect("runner starts the MQTT 5 sender");
    let mqtt = running.mqtt.clone().expect("mqtt metrics");
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    eventually(
        "two status refusals counted, telemetry flowing",
        Duration::from_secs(30),
        || async { (load(&mqtt.status_failures) >= 2 && sub.count() >= 20).then_some(()) },
    )
    .await;
    freeze_and_settle(&sim, || sub.count()).await;
    let text = metrics_text(running.metrics_addr.expect("metrics address")).await;
    let reconnects = load(&mqtt.reconnects);
    running.stop().await;
    let failures = text
        .lines()
        .find(|l| l.starts_with("opcua_connector_telemetry_status_failures_total{"))
        .unwrap_or_else(|| panic!("no status failures in /metrics:\n{text}"));
    let n: u64 = failures.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 2, "{failures}");
    assert_eq!(reconnects, 0, "a refused status drops no connection");
    let messages = sub.messages.lock().unwrap().clone();
    assert!(
        messages.iter().all(|(t, _)| !t.ends_with("/status")),
        "the broker delivered no status"
    );
    decode(&messages).assert_complete(&sim);
}
