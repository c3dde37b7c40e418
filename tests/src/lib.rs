//! End-to-end harness: the simulator on 127.0.0.1:0, the connector in-process or as a
//! process, a TCP relay that can cut connections, brokers and subscribers; the Parquet
//! reader of the chunks is in [`chunks`].

// Test code: an unwrap is a failed test with its reason (workspace lint `unwrap_used`).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use simulator::{SimConfig, Simulator};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub mod certs;
pub mod chunks;
pub mod dps_double;
pub mod front;
pub mod https_hub;
pub mod hub_double;
pub mod proxy;
pub mod ws_front;
pub use certs::{certificates, openssl, signed};
pub use chunks::*;
pub use dps_double::{DpsDouble, Enrollment};
pub use front::MqttFront;
pub use hub_double::{free_port, mosquitto, plain_mosquitto, HubDouble, Mosquitto};

pub const LINE_NS: &str = simulator::BOTTLING_LINE_NAMESPACE;

/// The five deterministic counters of the bottling line.
pub const COUNTERS: [&str; 5] = [
    "Filler.BottlesFilled",
    "Filler.BottlesRejected",
    "Capper.CapsApplied",
    "Labeler.LabelsApplied",
    "Conveyor.ItemsTransported",
];

/// The node id of a bottling-line variable: `nsu=<line namespace>;s=<name>`.
pub fn line_node(name: &str) -> String {
    format!("nsu={LINE_NS};s={name}")
}

/// The node id of one of the [`COUNTERS`].
pub fn counter_id(name: &str) -> String {
    line_node(name)
}

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// An embedded simulator that stops when dropped.
pub struct Sim {
    pub sim: Simulator,
    pub token: CancellationToken,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

pub async fn start_sim(pki: &Path, tweak: impl FnOnce(&mut SimConfig)) -> Sim {
    init_logs();
    let mut config = SimConfig::bottling_line(pki.join("simulator"));
    tweak(&mut config);
    let token = CancellationToken::new();
    let sim = simulator::start(config, token.clone())
        .await
        .expect("simulator starts");
    Sim { sim, token }
}

/// Polls `check` until it returns `Some` or the deadline passes (then panics naming `what`).
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A loopback TCP relay in front of a server, whose connections a test can cut: the
/// network fails, the server and its sessions do not. `set_down(true)` also refuses new
/// connections (a broker or PLC that is away).
pub struct Relay {
    pub port: u16,
    down: Arc<std::sync::atomic::AtomicBool>,
    stalled: Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
    pub connections: Arc<AtomicU64>,
    active: Arc<Mutex<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(target_port: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("relay bind");
        let port = listener.local_addr().expect("addr").port();
        let (cut, cut_rx) = tokio::sync::watch::channel(0u64);
        let connections = Arc::new(AtomicU64::new(0));
        let active = Arc::new(Mutex::new(0));
        let (c2, a2) = (connections.clone(), active.clone());
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let d2 = down.clone();
        let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = stalled.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    break;
                };
                if d2.load(Ordering::Relaxed) {
                    drop(inbound);
                    continue;
                }
                c2.fetch_add(1, Ordering::Relaxed);
                let mut cut_rx = cut_rx.clone();
                let generation = *cut_rx.borrow_and_update();
                let a3 = a2.clone();
                let s3 = s2.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(("127.0.0.1", target_port)).await else {
                        return;
                    };
                    *a3.lock().unwrap() += 1;
                    let (mut ri, mut wi) = inbound.into_split();
                    let (mut ro, mut wo) = outbound.into_split();
                    tokio::select! {
                        _ = tokio::io::copy(&mut ri, &mut wo) => {}
                        _ = forward_unless_stalled(&mut ro, &mut wi, &s3) => {}
                        _ = async { while *cut_rx.borrow_and_update() == generation { if cut_rx.changed().await.is_err() { std::future::pending::<()>().await } } } => {}
                    }
                    *a3.lock().unwrap() -= 1;
                });
            }
        });
        Relay {
            port,
            down,
            stalled,
            cut,
            connections,
            active,
            task,
        }
    }

    /// Takes the far side away (cuts open connections, refuses new ones) or brings it back.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
        if down {
            self.cut();
        }
    }

    /// Holds back everything the far side sends (connections stay open, nothing arrives):
    /// a PLC that stopped answering.
    pub fn stall(&self, on: bool) {
        self.stalled.store(on, Ordering::Relaxed);
    }

    /// Drops every open connection (both directions, at once).
    pub fn cut(&self) {
        self.cut.send_modify(|g| *g += 1);
    }

    pub fn active(&self) -> u64 {
        *self.active.lock().unwrap()
    }
}

/// Copies `from` to `to`, holding data back while `stalled` is set.
async fn forward_unless_stalled(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    stalled: &std::sync::atomic::AtomicBool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while stalled.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `opc.tcp://127.0.0.1:PORT/` URL of a port.
pub fn url(port: u16) -> String {
    format!("opc.tcp://127.0.0.1:{port}/")
}

/// An embedded MQTT broker (rumqttd) on a free loopback port. rumqttd has no shutdown: its
/// threads live until the test process ends.
pub fn start_broker() -> u16 {
    start_rumqttd(false).0
}

/// An embedded rumqttd listening for MQTT 3.1.1 and, with `v5`, MQTT 5 clients on another
/// port: `(v4 port, v5 port)`. Its threads live until the test process ends.
pub fn start_rumqttd(v5: bool) -> (u16, Option<u16>) {
    let v4 = free_port();
    let v5 = v5.then(free_port);
    let listener = |version: u8, port: u16| {
        format!(
            r#"
[v{version}.1]
name = "v{version}-1"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
  [v{version}.1.connections]
  connection_timeout_ms = 60000
  max_payload_size = 1048576
  max_inflight_count = 500
  dynamic_filters = true
"#
        )
    };
    let mut text = String::from(
        "id = 0\n[router]\nid = 0\nmax_connections = 100\nmax_outgoing_packet_count = 2000\n\
         max_segment_size = 104857600\nmax_segment_count = 10\n",
    );
    text.push_str(&listener(4, v4));
    if let Some(p) = v5 {
        text.push_str(&listener(5, p));
    }
    let config: rumqttd::Config = toml::from_str(&text).expect("broker config");
    let mut broker = rumqttd::Broker::new(config);
    std::thread::spawn(move || {
        let _ = broker.start();
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    for port in std::iter::once(v4).chain(v5) {
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "broker up on {port}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    (v4, v5)
}

/// Messages received: (topic, payload).
pub type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A subscriber that collects every message on `filter` with QoS 1.
pub struct Subscriber {
    pub messages: Received,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    pub async fn start(port: u16, filter: &str) -> Subscriber {
        let mut o = rumqttc::MqttOptions::new(format!("test-sub-{port}"), "127.0.0.1", port);
        o.set_max_packet_size(2 << 20, 2 << 20);
        o.set_keep_alive(Duration::from_secs(30));
        let (client, mut el) = rumqttc::AsyncClient::new(o, 100);
        el.set_network_options(connector::cloud::mqtt::sender::network_options());
        let messages: Received = Arc::default();
        let (m2, f2) = (messages.clone(), filter.to_owned());
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        let _ = client
                            .subscribe(f2.clone(), rumqttc::QoS::AtLeastOnce)
                            .await;
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        m2.lock()
                            .unwrap()
                            .push((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(10), ready_rx).await;
        Subscriber { messages, task }
    }

    pub fn count(&self) -> usize {
        self.messages.lock().unwrap().len()
    }

    /// The distinct `seq` values of the messages received so far, in order.
    pub fn seqs(&self) -> std::collections::BTreeSet<u64> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| {
                serde_json::from_slice::<serde_json::Value>(b).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A line `line-m` (site `plant`) with one plc `sim` at `opc` whose group `fast` monitors the
/// five counters at 100 ms, the connector's PKI in `dir`, plus `sinks` (TOML sections such as
/// `[sink.mqtt]`, `[hub]`, `[buffer]`).
pub fn counters_config(dir: &Path, opc: &str, sinks: &str) -> connector::config::Config {
    let nodes: Vec<String> = COUNTERS
        .iter()
        .map(|c| format!("\"{}\"", counter_id(c)))
        .collect();
    let text = format!(
        "[line]\nid = \"line-m\"\nsite = \"plant\"\n\n[[plc]]\nid = \"sim\"\nendpoint = \"{opc}\"\n\n  \
         [[plc.group]]\n  name = \"fast\"\n  publishing_interval = \"100ms\"\n  sampling_interval = \"0ms\"\n  \
         nodes = [{}]\n\n[pki]\ndir = \"{}\"\ntrust_unknown_servers = true\n\n{sinks}\n",
        nodes.join(", "),
        dir.join("pki").display(),
    );
    connector::config::parse(Path::new("test-line.toml"), &text)
        .unwrap_or_else(|e| panic!("test config: {e}"))
}

/// The simulator's last value of an integer node (ground truth).
pub fn truth_last(sim: &Sim, node: &str) -> i128 {
    match sim
        .sim
        .node_stats(node)
        .unwrap_or_else(|| panic!("no ground truth for {node}"))
        .last
    {
        simulator::model::Value::Int(i) => i.into(),
        simulator::model::Value::UInt(u) => u.into(),
        other => panic!("{node}: not an integer: {other:?}"),
    }
}

/// Freezes the simulated values and waits until `count` stops growing (the last
/// notifications or messages have arrived).
pub async fn freeze_and_settle(sim: &Sim, count: impl Fn() -> usize) {
    sim.sim.inject(simulator::FaultKind::Freeze {
        duration: Duration::from_secs(300),
    });
    let mut last = usize::MAX;
    eventually("values settle", Duration::from_secs(30), || {
        let now = count();
        let settled = now == last;
        last = now;
        async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            settled.then_some(())
        }
    })
    .await;
}

/// An integer sample value of a telemetry payload (a JSON number, or a string for 64-bit).
pub fn json_int(v: &serde_json::Value) -> i128 {
    match v {
        serde_json::Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .unwrap_or_else(|| panic!("not an integer: {n}")),
        serde_json::Value::String(t) => t.parse().unwrap_or_else(|_| panic!("not an integer: {t}")),
        other => panic!("not an integer: {other}"),
    }
}

/// Telemetry of the `counters_config` line decoded: seqs per `plc/group` stream and
/// `(seq, value)` per node, in arrival order.
pub struct Decoded {
    pub seqs: BTreeMap<String, Vec<u64>>,
    pub values: BTreeMap<String, Vec<(u64, i128)>>,
}

/// The messages without repeats by (topic, epoch, seq), first arrival kept: what a consumer
/// following docs/mqtt.md does.
pub fn unique_by_seq(messages: &[(String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    let mut seen = std::collections::HashSet::new();
    messages
        .iter()
        .filter(|(t, b)| {
            let v: serde_json::Value = serde_json::from_slice(b).unwrap();
            let epoch = v["epoch"].as_str().unwrap().to_owned();
            seen.insert((t.clone(), epoch, v["seq"].as_u64().unwrap()))
        })
        .cloned()
        .collect()
}

impl Decoded {
    /// Every stream's seq in order and once; every counter without a gap or repeat, ending
    /// at the simulator's ground truth.
    pub fn assert_complete(&self, sim: &Sim) {
        for (stream, seqs) in &self.seqs {
            assert!(
                seqs.windows(2).all(|w| w[1] == w[0] + 1),
                "{stream}: seq in order, once: {seqs:?}"
            );
        }
        for name in COUNTERS {
            let v: Vec<i128> = self.values[&counter_id(name)]
                .iter()
                .map(|(_, x)| *x)
                .collect();
            assert_eq!(counter_defects(&v), (0, 0), "{name}: {v:?}");
            assert_eq!(
                *v.last().unwrap(),
                truth_last(sim, &counter_id(name)),
                "{name} ends at the ground truth"
            );
        }
    }
}

/// Every counter sample once, in order, up to the simulator's last value, from the bodies of
/// telemetry messages (any transport) with repeats dropped by (epoch, plc, group, seq).
pub fn assert_bodies_complete<'a>(sim: &Sim, bodies: impl IntoIterator<Item = &'a [u8]>) {
    let mut values: BTreeMap<String, Vec<(u64, i128)>> = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    for body in bodies {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        let seq = v["seq"].as_u64().unwrap();
        let key = (
            v["epoch"].to_string(),
            v["plc"].to_string(),
            v["group"].to_string(),
            seq,
        );
        if !seen.insert(key) {
            continue;
        }
        for s in v["samples"].as_array().unwrap() {
            values
                .entry(s["node"].as_str().unwrap().to_owned())
                .or_default()
                .push((seq, json_int(&s["v"])));
        }
    }
    for name in COUNTERS {
        let mut v = values[&counter_id(name)].clone();
        v.sort_by_key(|(seq, _)| *seq);
        let v: Vec<i128> = v.into_iter().map(|(_, x)| x).collect();
        assert_eq!(counter_defects(&v), (0, 0), "{name}: {v:?}");
        assert_eq!(*v.last().unwrap(), truth_last(sim, &counter_id(name)));
    }
}

/// Decodes JSON v1 messages published on `opcua/plant/line-m/{plc}/{group}` (asserted).
pub fn decode(messages: &[(String, Vec<u8>)]) -> Decoded {
    let mut d = Decoded {
        seqs: BTreeMap::new(),
        values: BTreeMap::new(),
    };
    for (topic, body) in messages {
        let v: serde_json::Value =
            serde_json::from_slice(body).unwrap_or_else(|e| panic!("{topic}: not JSON: {e}"));
        assert_eq!(v["schema"], 2);
        let epoch = v["epoch"].as_str().expect("epoch");
        assert!(
            epoch.len() == 16 && epoch.bytes().all(|b| b.is_ascii_hexdigit()),
            "{epoch}"
        );
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
            d.values
                .entry(node)
                .or_default()
                .push((seq, json_int(&s["v"])));
        }
    }
    d
}

/// A GET on the connector's `/metrics` endpoint: (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to /metrics");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The `opcua-connector` binary next to the test executable (`cargo test` builds it).
pub fn connector_bin() -> std::path::PathBuf {
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

/// `opcua-connector run --config CONFIG` as a process, stderr appended to `log`, with `env`
/// set; killed (SIGKILL) and reaped if the test ends first.
pub struct ConnectorProcess(pub std::process::Child);

impl ConnectorProcess {
    pub fn run(config: &Path, log: &Path, env: &[(&str, &str)]) -> ConnectorProcess {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the connector log");
        let mut cmd = std::process::Command::new(connector_bin());
        cmd.args(["run", "--config", &config.display().to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        ConnectorProcess(cmd.spawn().expect("spawn the connector"))
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// SIGTERM: stop and drain.
    pub fn terminate(&self) {
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -TERM {}", self.pid());
    }

    /// SIGKILL, and reaped.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// Its exit status, waiting at most `within`.
    pub async fn exit_within(&mut self, within: Duration) -> std::process::ExitStatus {
        eventually("the connector exits", within, || {
            let s = self.0.try_wait().expect("wait for the connector");
            async move { s }
        })
        .await
    }
}

impl Drop for ConnectorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `/metrics` text at `addr`, empty while nothing listens there (the process starting).
pub async fn metrics_text(addr: std::net::SocketAddr) -> String {
    match TcpStream::connect(addr).await {
        Ok(_) => http_get(addr, "/metrics").await.1,
        Err(_) => String::new(),
    }
}

/// The sum of the samples of metric `opcua_connector_<name>{...}` in a `/metrics` text, `None`
/// if it has none.
pub fn metric_opt(body: &str, name: &str) -> Option<u64> {
    let prefix = format!("opcua_connector_{name}{{");
    let values: Vec<f64> = body
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() as u64)
}

/// [`metric_opt`], 0 when absent.
pub fn metric(body: &str, name: &str) -> u64 {
    metric_opt(body, name).unwrap_or(0)
}
