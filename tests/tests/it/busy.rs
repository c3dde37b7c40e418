//! A busy server (#10): the connector and a second client (node-opcua) subscribed to the same
//! node-opcua server, 5,000 counters changing at 50,000 values/s in all, publishing 500 ms,
//! sampling 0, queue size 12. The connector must lose nothing: no value with the Overflow
//! bit, no counter step missing, no notification message lost.
//!
//! The peers are scripts of ours in `tests/node/` (`.ci/run` installs node-opcua there with
//! `npm ci`). Rate, items, runs and the length of a run are parameters (`BUSY_RATE`,
//! `BUSY_ITEMS`, `BUSY_RUNS`, `BUSY_SECONDS`) to measure what a machine sustains; the
//! assertion of 0 lost is not one of them. It loads both cores of a small machine: `tests/run`
//! runs this module after the others, alone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use connector::config;
use connector::runner;
use tests::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

fn param(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("node")
}

/// A node script, killed when dropped, with its stdout lines.
pub(crate) struct Peer {
    child: Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    name: &'static str,
}

impl Peer {
    pub(crate) fn start(name: &'static str, args: &[String]) -> Peer {
        let dir = node_dir();
        assert!(
            dir.join("node_modules/node-opcua").is_dir(),
            "node-opcua is not installed in {}: run `npm ci` there (.ci/run does)",
            dir.display()
        );
        let mut child = Command::new("node")
            .arg(dir.join(name))
            .args(args)
            .current_dir(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("node {name}: {e}"));
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(l)) = out.next_line().await {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Peer { child, lines, name }
    }

    /// The next stdout line that starts with `prefix`, within `deadline`.
    pub(crate) async fn line(&mut self, prefix: &str, deadline: Duration) -> String {
        let name = self.name;
        tokio::time::timeout(deadline, async {
            loop {
                match self.lines.recv().await {
                    Some(l) if l.starts_with(prefix) => return l,
                    Some(_) => {}
                    None => panic!("{name} ended before printing {prefix:?}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{name}: no {prefix:?} line within {deadline:?}"))
    }

    /// The newest line starting with `prefix` printed so far (waiting for one if none is).
    async fn latest(&mut self, prefix: &str) -> String {
        let mut found = None;
        while let Ok(l) = self.lines.try_recv() {
            if l.starts_with(prefix) {
                found = Some(l);
            }
        }
        match found {
            Some(l) => l,
            None => self.line(prefix, Duration::from_secs(5)).await,
        }
    }

    /// SIGTERM, then the line starting with `prefix` it prints on the way out.
    async fn stop(&mut self, prefix: &str) -> String {
        let pid = self.child.id().unwrap();
        let _ = std::process::Command::new("kill")
            .arg(pid.to_string())
            .status();
        let line = self.line(prefix, Duration::from_secs(20)).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        line
    }
}

fn busy_config(dir: &Path, port: u16) -> config::Config {
    let text = format!(
        r#"
[line]
id = "line-busy"
site = "test-site"

[[plc]]
id = "busy"
endpoint = "opc.tcp://127.0.0.1:{port}"

  [[plc.group]]
  name = "busy"
  publishing_interval = "500ms"
  sampling_interval = "0ms"
  queue_size = 12
  browse = [{{ root = "ns=1;s=Busy", recursive = false }}]

[pki]
dir = "{pki}"
trust_unknown_servers = true

[sink.parquet]
dir = "{out}"
roll_interval = "5s"
"#,
        pki = dir.join("pki").display(),
        out = dir.join("out").display(),
    );
    config::parse(Path::new("busy.toml"), &text).unwrap_or_else(|e| panic!("busy config: {e}"))
}

/// Counter steps missing per node: values between the smallest and the largest received
/// that never arrived (duplicates are not losses; order does not matter).
fn missing_steps(rows: &[Row]) -> (u64, usize) {
    let mut per_node: HashMap<&str, Vec<i128>> = HashMap::new();
    for r in rows {
        if let Some(v) = r.value.as_i128() {
            per_node.entry(r.node.as_str()).or_default().push(v);
        }
    }
    let mut missing = 0u64;
    for values in per_node.values_mut() {
        values.sort_unstable();
        values.dedup();
        let span = values[values.len() - 1] - values[0] + 1;
        missing += (span - values.len() as i128) as u64;
    }
    (missing, per_node.len())
}

#[derive(Debug)]
struct Run {
    seconds: f64,
    rate: f64,
    server_late_ticks: u64,
    received: u64,
    lost_steps: u64,
    overflows: u64,
    loss_events: u64,
    gaps: u64,
    backpressure_waits: u64,
    other: String,
}

async fn one_run(items: u64, rate: u64, seconds: u64) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = Peer::start(
        "busy_server.js",
        &[
            port.to_string(),
            items.to_string(),
            rate.to_string(),
            param("BUSY_SERVER_ITEMS_PER_SUB", 0).to_string(),
        ],
    );
    server.line("ready", Duration::from_secs(60)).await;
    let mut other = Peer::start(
        "busy_client.js",
        &[format!("opc.tcp://127.0.0.1:{port}"), items.to_string()],
    );
    other.line("subscribed", Duration::from_secs(60)).await;

    let running = runner::start(&busy_config(dir.path(), port)).unwrap();
    let m = running.metrics.plcs[0].clone();
    eventually(
        "the connector subscribed every item",
        Duration::from_secs(60),
        || {
            let m = m.clone();
            async move {
                (PlcMetrics::get(&m.monitored_items) == items
                    && PlcMetrics::get(&m.samples_received) > 0)
                    .then_some(())
            }
        },
    )
    .await;
    let first = server.latest("ticks").await;
    // The measured window: the rate runs for `seconds` while both clients subscribe.
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let last = server.latest("ticks").await;
    let other_result = other.stop("{").await;
    running.stop().await;
    server.stop("final").await;

    let ticks = |l: &str| -> (u64, u64) {
        let w: Vec<&str> = l.split_whitespace().collect();
        let n = |i: usize| w.get(i).and_then(|s| s.parse().ok()).unwrap_or(0);
        (n(1), n(3))
    };
    let (t0, _) = ticks(&first);
    let (t1, late) = ticks(&last);
    let rows = read_all(&dir.path().join("out"));
    let (lost_steps, nodes) = missing_steps(&rows);
    assert_eq!(nodes as u64, items, "every node delivered values");
    Run {
        seconds: seconds as f64,
        rate: (t1 - t0) as f64 * items as f64 / seconds as f64,
        server_late_ticks: late,
        received: PlcMetrics::get(&m.samples_received),
        lost_steps,
        overflows: PlcMetrics::get(&m.overflows),
        loss_events: PlcMetrics::get(&m.loss_events),
        gaps: PlcMetrics::get(&m.sequence_gaps),
        backpressure_waits: PlcMetrics::get(&m.backpressure_waits),
        other: other_result,
    }
}

use connector::metrics::PlcMetrics;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_server_loses_nothing_beside_a_second_client() {
    init_logs();
    let items = param("BUSY_ITEMS", 5000);
    let rate = param("BUSY_RATE", 50_000);
    let runs = param("BUSY_RUNS", 5);
    let seconds = param("BUSY_SECONDS", 10);
    let mut results = Vec::new();
    for i in 1..=runs {
        let r = one_run(items, rate, seconds).await;
        println!(
            "busy run {i}/{runs}: asked {rate} values/s on {items} items, server made {:.0}/s \
             ({} ticks late) over {:.0} s; connector: received {}, lost {} (counter steps), \
             overflows {}, loss events {}, sequence gaps {}, backpressure waits {}; \
             node-opcua client: {}",
            r.rate,
            r.server_late_ticks,
            r.seconds,
            r.received,
            r.lost_steps,
            r.overflows,
            r.loss_events,
            r.gaps,
            r.backpressure_waits,
            r.other
        );
        results.push(r);
    }
    for (i, r) in results.iter().enumerate() {
        assert_eq!(
            (r.lost_steps, r.overflows, r.loss_events),
            (0, 0, 0),
            "run {}: the connector lost values: {r:?}",
            i + 1
        );
    }
}

/// The connector process with a data and a write session on a node-opcua server: a first
/// start (empty pki dir) and a clean shutdown log no ERROR (#10: the two sessions raced to
/// create the certificate; node-opcua answers the pending Publish requests of a closed
/// session with BadSessionClosed, which async-opcua logs as an error).
#[tokio::test]
async fn a_first_start_and_a_clean_shutdown_log_no_error() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = Peer::start(
        "busy_server.js",
        &[port.to_string(), "200".into(), "2000".into(), "0".into()],
    );
    server.line("ready", Duration::from_secs(60)).await;
    let broker = start_broker();
    let text = format!(
        r#"
[line]
id = "line-quiet"
site = "test-site"

[[plc]]
id = "busy"
endpoint = "opc.tcp://127.0.0.1:{port}"

  [[plc.group]]
  name = "busy"
  publishing_interval = "100ms"
  sampling_interval = "0ms"
  browse = [{{ root = "ns=1;s=Busy", recursive = false }}]

[pki]
dir = "{pki}"
trust_unknown_servers = true

[sink.mqtt]
url = "mqtt://127.0.0.1:{broker}"
# Loopback test broker without users: the explicit opt-in for writes over plain MQTT.
allow_insecure_commands = true

[buffer]
dir = "{buffer}"

[[write]]
property = "busy0"
plc = "busy"
node = "ns=1;s=Busy.0"
type = "UInt32"
"#,
        pki = dir.path().join("pki").display(),
        buffer = dir.path().join("buffer").display(),
    );
    let config = dir.path().join("line.toml");
    std::fs::write(&config, text).unwrap();
    let log = dir.path().join("connector.log");
    let mut child = std::process::Command::new(connector_bin())
        .args(["run", "--config", config.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn connector");
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    eventually("the connector subscribed", Duration::from_secs(60), || {
        let done = read().contains("subscribed");
        async move { done.then_some(()) }
    })
    .await;
    let _ = std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    server.stop("final").await;
    let text = read();
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("ERROR")).collect();
    println!(
        "first start and shutdown: exit {status}, {} log lines, {} ERROR",
        text.lines().count(),
        errors.len()
    );
    assert!(status.success(), "exit {status}\n{text}");
    assert!(errors.is_empty(), "ERROR lines:\n{}", errors.join("\n"));
}

fn connector_bin() -> PathBuf {
    // target/debug/deps/it-* -> target/debug/opcua-connector (tests/run builds it first).
    let exe = std::env::current_exe().expect("test exe");
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .join("opcua-connector");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        bin.display()
    );
    bin
}
