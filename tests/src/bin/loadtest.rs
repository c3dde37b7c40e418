//! The benchmark command: simulator and connector as separate processes on loopback, one
//! scenario per run, one Markdown table row per scenario (see docs/benchmarks.md).
//!
//! cargo build --release --workspace && target/release/loadtest S1 S3 --duration 30s
//! (`--shape 1m`: S3 with shaped telemetry; `--rules`: a local rule's latency under the load)

// Test code: an unwrap is a failed test with its reason (workspace lint `unwrap_used`).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use tests::{read_all, Val};

#[path = "loadtest/rules.rs"]
mod rules;

#[derive(Debug, Parser)]
struct Args {
    /// Scenarios: S1 (10k @ 1 s), S2 (100k @ 1 s), S3p (10k @ 100 ms, Parquet only), S3 / S3g (S3p plus MQTT QoS 1, json / json+gzip, to an embedded broker), S5 (subscribe 100k), S6 (S3 in the IoT Hub dialect to mosquitto plus 100 twin writes, timed), S6idle (the same writes with 10 tags).
    scenarios: Vec<String>,
    /// How long each scenario runs once subscribed.
    #[arg(long, default_value = "30s", value_parser = humantime_parse)]
    duration: Duration,
    /// Keep the output directories.
    #[arg(long)]
    keep: bool,
    /// Upload every completed chunk: "azurite" (the Azure Storage emulator of tests/node on
    /// loopback, plain HTTP; its container is made with the interop venv's
    /// azure-storage-blob, so run tests/run once first) or "file" (a directory beside the
    /// output, read back with it).
    #[arg(long, value_parser = ["azurite", "file"])]
    upload: Option<String>,
    /// The Parquet sink's roll_interval, e.g. "10s" (default: the sink's, 5m).
    #[arg(long)]
    roll: Option<String>,
    /// Shaped telemetry: the group's `[plc.group.telemetry] window`, e.g. "1m" (S3, S3g, S6);
    /// MQTT bytes/sample is then per raw sample offered, and the messages and windows are
    /// printed on stderr.
    #[arg(long)]
    shape: Option<String>,
    /// A local rule under the load: a scripted temperature spike every 100 ms opens and closes
    /// a valve; its latencies are printed on stderr. The value is the publishing interval of
    /// the rule's group (default 10ms).
    #[arg(long, num_args = 0..=1, default_missing_value = "10ms")]
    rules: Option<String>,
    /// The upload's keep_local, e.g. "0s" (default: kept).
    #[arg(long, requires = "upload")]
    keep_local: Option<String>,
    /// With --upload azurite: start Azurite this long into the run (a backlog builds, then
    /// goes up as fast as it can: the upload's capacity).
    #[arg(long, value_parser = humantime_parse, requires = "upload")]
    store_after: Option<Duration>,
}

fn humantime_parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Some(v) = s.strip_suffix("ms") {
        return v
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|e| e.to_string());
    }
    if let Some(v) = s.strip_suffix('s') {
        return v
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|e| e.to_string());
    }
    Err(format!("bad duration {s:?}"))
}

struct Scenario {
    id: &'static str,
    tags: usize,
    interval: &'static str,
    publishing: &'static str,
    /// MQTT payload ("json" or "json+gzip") to an embedded broker, besides Parquet.
    mqtt: Option<&'static str>,
    /// Telemetry in the IoT Hub dialect (to mosquitto with a hub double) and 100 twin writes
    /// during the run, timed from the desired patch to its acknowledgement.
    hub: bool,
}

fn scenario(id: &str) -> Option<Scenario> {
    let (tags, interval, mqtt) = match id {
        "S1" => (10_000, "1s", None),
        "S2" | "S5" => (100_000, "1s", None),
        "S3p" => (10_000, "100ms", None),
        "S3" => (10_000, "100ms", Some("json")),
        "S3g" => (10_000, "100ms", Some("json+gzip")),
        "S6" => (10_000, "100ms", Some("json")),
        "S6idle" => (10, "100ms", Some("json")),
        _ => return None,
    };
    let id = ["S1", "S2", "S3p", "S3", "S3g", "S5", "S6", "S6idle"]
        .into_iter()
        .find(|s| *s == id)?;
    Some(Scenario {
        id,
        tags,
        interval,
        publishing: interval,
        mqtt,
        hub: id.starts_with("S6"),
    })
}

fn bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.parent().context("exe dir")?.to_path_buf())
}

/// CPU seconds (user + system) and peak RSS in bytes of a process, from /proc.
fn proc_usage(pid: u32) -> (f64, u64) {
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rfind(')').map(|i| s[i + 2..].to_owned())?;
            let f: Vec<&str> = after.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(0.0);
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024;
    (cpu, rss)
}

/// SIGTERM, then waits (at most 30 s, then SIGKILL): how long it took and the exit code.
fn terminate(child: &mut Child) -> (Duration, Option<i32>) {
    let start = Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    while start.elapsed() < Duration::from_secs(30) {
        if let Ok(Some(status)) = child.try_wait() {
            return (start.elapsed(), status.code());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    (start.elapsed(), None)
}

struct Row {
    offered: f64,
    written: f64,
    lost: u64,
    duplicated: u64,
    cpu_us: f64,
    rss_mb: f64,
    bytes_per_sample: f64,
    mqtt_bytes_per_sample: Option<f64>,
    subscribe_s: f64,
    /// SIGTERM to exit of the connector under load, and its exit code.
    stop: (Duration, Option<i32>),
    /// Twin write round trip p50 / p99 / max, ms (S6).
    write_ms: Option<(f64, f64, f64)>,
}

/// A process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The Azure Storage emulator's published development key (not a secret).
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Azurite's blob service on `port` with its data in `dir`, and the container "chunks".
fn azurite(dir: &std::path::Path, port: u16) -> Result<Killed> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let azurite = Killed(
        Command::new(root.join("node/node_modules/.bin/azurite-blob"))
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--location")
            .arg(dir)
            .args(["--silent", "--skipApiVersionCheck", "--loose"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start Azurite (npm ci in tests/node; tests/run does it)")?,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("Azurite does not listen on {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let create = format!(
        "from azure.storage.blob import BlobServiceClient as C; C.from_connection_string(\
         'DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};\
         BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;').create_container('chunks')"
    );
    let status = Command::new(root.join("../.venv/bin/python"))
        .args(["-c", &create])
        .status()
        .context("the interop venv (.venv, made by tests/run)")?;
    if !status.success() {
        bail!("cannot create Azurite's container");
    }
    Ok(azurite)
}

/// The connector's counter `name` (summed over labels) from `/metrics`.
/// p50, p99 and the largest of `v` (not empty), nearest rank.
fn quantiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1];
    (q(0.5), q(0.99), v[v.len() - 1])
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Bytes of the files under `dir`.
fn disk_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

fn run(s: &Scenario, args: &Args) -> Result<Row> {
    let (duration, keep) = (args.duration, args.keep);
    let bins = bin_dir()?;
    let work = tempfile::tempdir()?;
    let dir = work.path().to_path_buf();
    let stats = dir.join("truth.json");
    let sim = Command::new(bins.join("opcua-simulator"))
        .args(["--port", "0", "--pki-dir"])
        .arg(dir.join("sim-pki"))
        .args([
            "--scale",
            &format!("{}@{}", s.tags, s.interval),
            "--stats-file",
        ])
        .arg(&stats)
        .args(if args.rules.is_some() {
            vec![
                "--profile".to_owned(),
                rules::profile(&dir)?.display().to_string(),
                "--publish-tick".to_owned(),
                "1ms".to_owned(),
            ]
        } else {
            Vec::new()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("start opcua-simulator (build it: cargo build --release --workspace)")?;
    // Killed on every way out, a failed run too.
    let mut sim = Killed(sim);
    let mut line = String::new();
    BufReader::new(sim.0.stdout.take().context("stdout")?).read_line(&mut line)?;
    let endpoint = line
        .trim()
        .strip_prefix("endpoint: ")
        .context("endpoint line")?
        .to_owned();
    let out = dir.join("out");
    let config = dir.join("line.toml");
    // MQTT: an embedded broker and a subscriber in this process, counting bytes and samples.
    // (bytes, samples, messages, windows)
    let mqtt_counts = Arc::new((
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
    ));
    let mut mqtt_section = String::new();
    let mut _mosquitto = None;
    let mut hub_port = 0;
    // The hub double (S6) times writes; the counting subscriber parses every telemetry
    // message. Each has its own runtime so the parsing does not delay the timing.
    let rt = tokio::runtime::Runtime::new()?;
    let count_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    if let Some(payload) = s.mqtt {
        let (port, filter) = if s.hub {
            let (m, port) = tests::plain_mosquitto(&dir);
            _mosquitto = Some(m);
            hub_port = port;
            mqtt_section = format!(
                "\n[hub]\nconnection_string_env = \"LOADTEST_HUB_CS\"\ninsecure_endpoint = \"127.0.0.1:{port}\"\npayload = \"{payload}\"\n\n[buffer]\ndir = \"{}\"\n\n\
                 [[write]]\nproperty = \"fillerSpeedSetpoint\"\nplc = \"sim\"\nnode = \"nsu={};s=Filler.SpeedSetpoint\"\ntype = \"Double\"\nmin = 0.0\nmax = 1200.0\n",
                dir.join("buffer").display(),
                tests::LINE_NS,
            );
            (port, "devices/#")
        } else {
            let port = tests::start_broker();
            mqtt_section = format!(
                "\n[sink.mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nqos = 1\npayload = \"{payload}\"\n\n[buffer]\ndir = \"{}\"\n",
                dir.join("buffer").display()
            );
            (port, "opcua/#")
        };
        let counts = mqtt_counts.clone();
        let gzip = payload == "json+gzip";
        count_rt.spawn(async move {
            let sub = tests::Subscriber::start(port, filter).await;
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let msgs = sub.messages.lock().unwrap().split_off(0);
                for (_, body) in msgs {
                    counts.0.fetch_add(body.len() as u64, Ordering::Relaxed);
                    let json = if gzip {
                        let mut out = Vec::new();
                        let _ = std::io::Read::read_to_end(
                            &mut flate2::read::GzDecoder::new(&body[..]),
                            &mut out,
                        );
                        out
                    } else {
                        body
                    };
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&json) {
                        let n = v["samples"].as_array().map_or(0, Vec::len) as u64;
                        counts.1.fetch_add(n, Ordering::Relaxed);
                        let w = v["windows"].as_array().map_or(0, Vec::len) as u64;
                        counts.3.fetch_add(w, Ordering::Relaxed);
                        counts.2.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    let hub = if s.hub {
        Some(rt.block_on(tests::HubDouble::start(hub_port)))
    } else {
        None
    };
    let mut parquet_extra = String::new();
    if let Some(roll) = &args.roll {
        parquet_extra.push_str(&format!("roll_interval = \"{roll}\"\n"));
    }
    let uploaded = dir.join("uploaded");
    let mut _azurite = None;
    let mut azurite_port = 0;
    let metrics_port = tests::free_port();
    if let Some(kind) = &args.upload {
        let keep_local = args
            .keep_local
            .as_ref()
            .map_or(String::new(), |k| format!("keep_local = \"{k}\"\n"));
        if kind == "azurite" {
            let port = tests::free_port();
            azurite_port = port;
            if args.store_after.is_none() {
                _azurite = Some(azurite(&dir.join("azurite"), port)?);
            }
            parquet_extra.push_str(&format!(
                "\n[sink.parquet.upload]\nto = \"az://chunks/bench\"\n{keep_local}\
                 options = {{ azure_storage_account_name = \"devstoreaccount1\", azure_storage_endpoint = \"http://127.0.0.1:{port}/devstoreaccount1\", azure_allow_http = \"true\" }}\n\
                 secret_env = {{ azure_storage_account_key = \"LOADTEST_AZURE_KEY\" }}\n"
            ));
        } else {
            parquet_extra.push_str(&format!(
                "\n[sink.parquet.upload]\nto = \"file://{}\"\n{keep_local}",
                uploaded.display()
            ));
        }
    }
    if args.upload.is_some() || args.rules.is_some() {
        mqtt_section.push_str(&format!(
            "\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"
        ));
    }
    let mut shape = args.shape.as_ref().map_or(String::new(), |w| {
        format!("\n    [plc.group.telemetry]\n    window = \"{w}\"\n")
    });
    if let Some(publishing) = &args.rules {
        shape.push_str(&rules::group(publishing));
        // The [[write]] of the rule is also open to the broker's write requests.
        mqtt_section =
            mqtt_section.replace("qos = 1\n", "qos = 1\nallow_insecure_commands = true\n");
        mqtt_section.push_str(&rules::rule());
    }
    std::fs::write(
        &config,
        format!(
            r#"[line]
id = "bench"

[[plc]]
id = "sim"
endpoint = "{endpoint}"

  [[plc.group]]
  name = "scale"
  publishing_interval = "{}"
  sampling_interval = "0ms"
  browse = [{{ root = "nsu=urn:opcua-connector:simulator:scale;s=Scale" }}]
{shape}
[pki]
dir = "{}"
trust_unknown_servers = true

[sink.parquet]
dir = "{}"
{}{}"#,
            s.publishing,
            dir.join("pki").display(),
            out.display(),
            parquet_extra,
            mqtt_section
        ),
    )?;
    let conn = Command::new(bins.join("opcua-connector"))
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .env(
            "LOADTEST_HUB_CS",
            "HostName=loadtest.azure-devices.net;DeviceId=bench-edge;SharedAccessKey=c2VjcmV0LWRldmljZS1rZXktMDAxLTAxMjM0NTY3ODk=",
        )
        .env("LOADTEST_AZURE_KEY", AZURITE_KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("start opcua-connector")?;
    let mut conn = Killed(conn);
    let pid = conn.0.id();
    // Wait for the "subscribed" log line.
    let stderr = conn.0.stderr.take().context("stderr")?;
    let (tx, rx) = std::sync::mpsc::channel::<f64>();
    let plc_ms = Arc::new(std::sync::Mutex::new(Vec::<f64>::new()));
    let plc_ms2 = plc_ms.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            // The audit record of a write says how long its PLC part took.
            if l.contains("\"audit\"") && l.contains("\"written\"") {
                if let Some(ms) = serde_json::from_str::<serde_json::Value>(&l)
                    .ok()
                    .and_then(|v| v["fields"]["plc_ms"].as_f64())
                {
                    plc_ms2.lock().unwrap().push(ms);
                }
            }
            if l.contains("\"subscribed\"") {
                if let Some(ms) = serde_json::from_str::<serde_json::Value>(&l)
                    .ok()
                    .and_then(|v| v["fields"]["subscribe_ms"].as_f64())
                {
                    let _ = tx.send(ms / 1000.0);
                }
            }
        }
    });
    let subscribe_s = rx
        .recv_timeout(Duration::from_secs(120))
        .context("connector did not subscribe")?;
    let scrape = || {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], metrics_port));
        let text = rt.block_on(tests::http_get(addr, "/metrics")).1;
        let m = |n: &str| metric(&text, &format!("opcua_connector_parquet_upload_{n}"));
        (
            m("chunks_total"),
            m("bytes_total"),
            m("failures_total"),
            m("pending_chunks"),
        )
    };
    let upload0 = args.upload.as_ref().map(|_| scrape());
    // The local disk, every 5 s (a run with keep_local shows whether it stays flat).
    let disk = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    {
        let (disk, sampling, out) = (disk.clone(), sampling.clone(), out.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                disk.lock().unwrap().push(disk_bytes(&out));
                std::thread::sleep(Duration::from_secs(5));
            }
        });
    }
    let (cpu0, _) = proc_usage(pid);
    let (sim_cpu0, _) = proc_usage(sim.0.id());
    let t0 = Instant::now();
    let mut write_ms = None;
    if let Some(hub) = &hub {
        // 100 twin writes spread over the run, each timed from the desired patch to its
        // acknowledgement 200 (broker hops, connector, OPC UA read-write-readback).
        let gap = (duration / 100).max(Duration::from_millis(50));
        let times = rt.block_on(async {
            let mut times = Vec::new();
            for i in 0..100 {
                let next = tokio::time::Instant::now() + gap;
                let v = hub
                    .desire(serde_json::json!({"fillerSpeedSetpoint": 100.0 + f64::from(i)}))
                    .await;
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    if let Some(d) = hub.round_trip("fillerSpeedSetpoint", v, 200) {
                        times.push(d.as_secs_f64() * 1000.0);
                        break;
                    }
                    if Instant::now() > deadline {
                        eprintln!("S6: write v{v} not acknowledged within 10 s");
                        break;
                    }
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                tokio::time::sleep_until(next).await;
            }
            times
        });
        if !times.is_empty() {
            let n = times.len();
            let (p50, p99, max) = quantiles(times);
            write_ms = Some((p50, p99, max));
            eprintln!("S6: {n} of 100 twin writes acknowledged; round trip ms p50 {p50:.2} p99 {p99:.2} max {max:.2}");
            let plc = plc_ms.lock().unwrap().clone();
            if !plc.is_empty() {
                let (p50, p99, max) = quantiles(plc);
                eprintln!("S6: of which the PLC part (read old value, write, read back) ms p50 {p50:.2} p99 {p99:.2} max {max:.2}");
            }
        }
        std::thread::sleep(duration.saturating_sub(t0.elapsed()));
    } else if upload0.is_some() {
        // Uploaded bytes and pending chunks every second. With --store-after a backlog waits
        // for the store: how fast it drains (first byte to nothing pending) is the upload's
        // capacity, at 1 s resolution.
        let mut series = Vec::new();
        while t0.elapsed() < duration {
            if let (Some(after), None) = (args.store_after, &_azurite) {
                if t0.elapsed() >= after {
                    _azurite = Some(azurite(&dir.join("azurite"), azurite_port)?);
                }
            }
            let (_, bytes, _, pending) = scrape();
            series.push((t0.elapsed().as_secs_f64(), bytes, pending));
            std::thread::sleep(Duration::from_secs(1));
        }
        let start = series.iter().position(|w| w.1 > series[0].1);
        let end = start.and_then(|i| series[i..].iter().position(|w| w.2 == 0.0).map(|j| i + j));
        if let (Some(i), Some(j), Some(after)) = (start, end, args.store_after) {
            let (t_prev, b_prev) = (series[i.saturating_sub(1)].0, series[i.saturating_sub(1)].1);
            let mb = (series[j].1 - b_prev) / 1e6;
            let secs = (series[j].0 - t_prev).max(1.0);
            eprintln!(
                "{}: backlog of {:.0} s: {mb:.1} MB up in at most {secs:.0} s = at least {:.1} MB/s",
                s.id,
                after.as_secs_f64(),
                mb / secs
            );
        }
    } else {
        std::thread::sleep(duration);
    }
    let (cpu1, rss) = proc_usage(pid);
    let (sim_cpu1, sim_rss) = proc_usage(sim.0.id());
    let window = t0.elapsed().as_secs_f64();
    sampling.store(false, Ordering::Relaxed);
    if let Some((c0, b0, _, _)) = upload0 {
        let (c1, b1, failures, pending) = scrape();
        let mb = (b1 - b0) / 1e6;
        eprintln!(
            "{}: upload ({}) {:.0} chunks, {mb:.1} MB in {window:.0} s = {:.2} MB/s; failed attempts {failures:.0}, pending at the end {pending:.0}; connector CPU {:.1} s in the window",
            s.id,
            args.upload.as_deref().unwrap_or_default(),
            c1 - c0,
            mb / window,
            cpu1 - cpu0
        );
    }
    {
        let d = disk.lock().unwrap();
        let kb = |b: u64| b as f64 / 1e3;
        let after_1m: Vec<u64> = d.iter().skip(12).copied().collect();
        if let (Some(max), Some(last)) = (after_1m.iter().max(), d.last()) {
            eprintln!(
                "{}: local Parquet directory after the first minute: min {:.0} kB, max {:.0} kB, last {:.0} kB ({} samples every 5 s)",
                s.id,
                kb(*after_1m.iter().min().unwrap_or(max)),
                kb(*max),
                kb(*last),
                after_1m.len()
            );
        }
    }
    eprintln!(
        "{}: simulator {:.0} % of one core, peak RSS {:.0} MB",
        s.id,
        (sim_cpu1 - sim_cpu0) / window * 100.0,
        sim_rss as f64 / 1e6
    );
    let rule_metrics = args.rules.is_some().then(|| {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], metrics_port));
        rt.block_on(tests::http_get(addr, "/metrics")).1
    });
    let stop = terminate(&mut conn.0);
    terminate(&mut sim.0);

    // The chunks: local, and those a file:// upload holds that are no longer local.
    let mut rows = read_all(&out);
    let mut chunk_files = tests::parquet_files(&out);
    for f in tests::parquet_files(&uploaded) {
        let local = f.strip_prefix(&uploaded).map(|r| out.join(r));
        if local.is_ok_and(|l| !l.exists()) {
            rows.extend(tests::read_file(&f));
            chunk_files.push(f);
        }
    }
    if let Some(text) = &rule_metrics {
        let plc = plc_ms.lock().unwrap().clone();
        rules::report(s.id, text, &stats, &rows, plc)?;
    }
    // Loss and duplicates from the counters (their value is the tick number).
    let mut per_node: HashMap<&str, Vec<i128>> = HashMap::new();
    for r in &rows {
        if let Val::Int(v) = r.value {
            if r.type_name != "Boolean" && !r.node.contains("Double") {
                per_node.entry(r.node.as_str()).or_default().push(v.into());
            }
        }
    }
    let (mut lost, mut dups) = (0u64, 0u64);
    for v in per_node.values_mut() {
        v.sort_unstable();
        let distinct = {
            let mut d = v.clone();
            d.dedup();
            d
        };
        dups += (v.len() - distinct.len()) as u64;
        if let (Some(first), Some(last)) = (distinct.first(), distinct.last()) {
            lost += (last - first + 1) as u64 - distinct.len() as u64;
        }
    }
    let bytes: u64 = chunk_files
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let tick_s = humantime_parse(s.interval)
        .map_err(anyhow::Error::msg)?
        .as_secs_f64();
    let offered = s.tags as f64 / tick_s;
    if keep {
        let kept = std::env::temp_dir().join(format!("loadtest-{}", s.id));
        let _ = std::fs::remove_dir_all(&kept);
        std::fs::rename(&dir, &kept)?;
        eprintln!("kept {}", kept.display());
        std::mem::forget(work);
    }
    if rows.is_empty() {
        bail!("no rows written");
    }
    Ok(Row {
        offered,
        written: rows.len() as f64 / window.max(0.001),
        lost,
        duplicated: dups,
        cpu_us: (cpu1 - cpu0) * 1e6 / (offered * window),
        rss_mb: rss as f64 / 1e6,
        bytes_per_sample: bytes as f64 / rows.len() as f64,
        mqtt_bytes_per_sample: {
            let (b, n) = (
                mqtt_counts.0.load(Ordering::Relaxed),
                mqtt_counts.1.load(Ordering::Relaxed),
            );
            let (messages, windows) = (
                mqtt_counts.2.load(Ordering::Relaxed),
                mqtt_counts.3.load(Ordering::Relaxed),
            );
            if args.shape.is_some() {
                let raw = offered * window;
                eprintln!(
                    "{}: shaped telemetry: {messages} messages ({:.1}/s), {windows} windows, {n} raw samples, {b} bytes ({:.3} bytes per sample offered)",
                    s.id,
                    messages as f64 / window.max(0.001),
                    b as f64 / raw.max(1.0)
                );
                (raw > 0.0).then(|| b as f64 / raw)
            } else {
                if messages > 0 {
                    eprintln!(
                        "{}: telemetry: {messages} messages ({:.1}/s)",
                        s.id,
                        messages as f64 / window.max(0.001)
                    );
                }
                (n > 0).then(|| b as f64 / n as f64)
            }
        },
        subscribe_s,
        stop,
        write_ms,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut ids = args.scenarios.clone();
    if ids.is_empty() {
        ids = vec!["S1".into(), "S3p".into(), "S2".into()];
    }
    println!("| scenario | samples/s offered | samples/s written | lost | duplicated | connector CPU µs/sample | connector peak RSS MB | Parquet bytes/sample | MQTT bytes/sample | subscribe time s | SIGTERM to exit s (code) | p50/p99 latency ms |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for id in ids {
        let Some(s) = scenario(&id) else {
            eprintln!("unknown scenario {id} (S1, S2, S3p, S3, S3g, S5, S6, S6idle)");
            std::process::exit(2);
        };
        match run(&s, &args) {
            Ok(r) => println!(
                "| {} | {:.0} | {:.0} | {} | {} | {:.2} | {:.1} | {:.2} | {} | {:.2} | {:.2} ({}) | {} |",
                s.id,
                r.offered,
                r.written,
                r.lost,
                r.duplicated,
                r.cpu_us,
                r.rss_mb,
                r.bytes_per_sample,
                r.mqtt_bytes_per_sample
                    .map_or("-".to_owned(), |b| format!("{b:.1}")),
                r.subscribe_s,
                r.stop.0.as_secs_f64(),
                r.stop.1.map_or("killed".to_owned(), |c| c.to_string()),
                r.write_ms.map_or("-".to_owned(), |(p50, p99, _)| format!(
                    "write {p50:.2} / {p99:.2}"
                ))
            ),
            Err(e) => println!("| {} | failed: {e:#} |", s.id),
        }
    }
    Ok(())
}
