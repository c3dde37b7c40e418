//! The benchmark command: simulator and connector as separate processes on loopback, one
//! scenario per run, one Markdown table row per scenario (see docs/benchmarks.md).
//!
//! cargo build --release --workspace && target/release/loadtest S1 S3 --duration 30s

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

#[derive(Debug, Parser)]
struct Args {
    /// Scenarios: S1 (10k @ 1 s), S2 (100k @ 1 s), S3p (10k @ 100 ms, Parquet only), S3 / S3g (S3p plus MQTT QoS 1, json / json+gzip, to an embedded broker), S5 (subscribe 100k).
    scenarios: Vec<String>,
    /// How long each scenario runs once subscribed.
    #[arg(long, default_value = "30s", value_parser = humantime_parse)]
    duration: Duration,
    /// Keep the output directories.
    #[arg(long)]
    keep: bool,
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
}

fn scenario(id: &str) -> Option<Scenario> {
    let (tags, interval, mqtt) = match id {
        "S1" => (10_000, "1s", None),
        "S2" | "S5" => (100_000, "1s", None),
        "S3p" => (10_000, "100ms", None),
        "S3" => (10_000, "100ms", Some("json")),
        "S3g" => (10_000, "100ms", Some("json+gzip")),
        _ => return None,
    };
    let id = ["S1", "S2", "S3p", "S3", "S3g", "S5"]
        .into_iter()
        .find(|s| *s == id)?;
    Some(Scenario {
        id,
        tags,
        interval,
        publishing: interval,
        mqtt,
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

fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
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
}

fn run(s: &Scenario, duration: Duration, keep: bool) -> Result<Row> {
    let bins = bin_dir()?;
    let work = tempfile::tempdir()?;
    let dir = work.path().to_path_buf();
    let stats = dir.join("truth.json");
    let mut sim = Command::new(bins.join("opcua-simulator"))
        .args(["--port", "0", "--pki-dir"])
        .arg(dir.join("sim-pki"))
        .args([
            "--scale",
            &format!("{}@{}", s.tags, s.interval),
            "--stats-file",
        ])
        .arg(&stats)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("start opcua-simulator (build it: cargo build --release --workspace)")?;
    let mut line = String::new();
    BufReader::new(sim.stdout.take().context("stdout")?).read_line(&mut line)?;
    let endpoint = line
        .trim()
        .strip_prefix("endpoint: ")
        .context("endpoint line")?
        .to_owned();
    let out = dir.join("out");
    let config = dir.join("line.toml");
    // MQTT: an embedded broker and a subscriber in this process, counting bytes and samples.
    let mqtt_counts = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let mut mqtt_section = String::new();
    let _rt = match s.mqtt {
        None => None,
        Some(payload) => {
            let port = tests::start_broker();
            mqtt_section = format!(
                "\n[sink.mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nqos = 1\npayload = \"{payload}\"\n\n[buffer]\ndir = \"{}\"\n",
                dir.join("buffer").display()
            );
            let rt = tokio::runtime::Runtime::new()?;
            let counts = mqtt_counts.clone();
            let gzip = payload == "json+gzip";
            rt.spawn(async move {
                let sub = tests::Subscriber::start(port, "opcua/#").await;
                let mut seen = 0;
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
                        }
                        seen += 1;
                    }
                    let _ = seen;
                }
            });
            Some(rt)
        }
    };
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

[pki]
dir = "{}"
trust_unknown_servers = true

[sink.parquet]
dir = "{}"
{}"#,
            s.publishing,
            dir.join("pki").display(),
            out.display(),
            mqtt_section
        ),
    )?;
    let mut conn = Command::new(bins.join("opcua-connector"))
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("start opcua-connector")?;
    let pid = conn.id();
    // Wait for the "subscribed" log line.
    let stderr = conn.stderr.take().context("stderr")?;
    let (tx, rx) = std::sync::mpsc::channel::<f64>();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
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
    let (cpu0, _) = proc_usage(pid);
    let (sim_cpu0, _) = proc_usage(sim.id());
    let t0 = Instant::now();
    std::thread::sleep(duration);
    let (cpu1, rss) = proc_usage(pid);
    let (sim_cpu1, sim_rss) = proc_usage(sim.id());
    let window = t0.elapsed().as_secs_f64();
    eprintln!(
        "{}: simulator {:.0} % of one core, peak RSS {:.0} MB",
        s.id,
        (sim_cpu1 - sim_cpu0) / window * 100.0,
        sim_rss as f64 / 1e6
    );
    terminate(&mut conn);
    terminate(&mut sim);

    let rows = read_all(&out);
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
    let bytes: u64 = tests::parquet_files(&out)
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
            (n > 0).then(|| b as f64 / n as f64)
        },
        subscribe_s,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut ids = args.scenarios.clone();
    if ids.is_empty() {
        ids = vec!["S1".into(), "S3p".into(), "S2".into()];
    }
    println!("| scenario | samples/s offered | samples/s written | lost | duplicated | connector CPU µs/sample | connector peak RSS MB | Parquet bytes/sample | MQTT bytes/sample | subscribe time s | p50/p99 latency ms |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for id in ids {
        let Some(s) = scenario(&id) else {
            eprintln!("unknown scenario {id} (S1, S2, S3p, S3, S3g, S5)");
            std::process::exit(2);
        };
        match run(&s, args.duration, args.keep) {
            Ok(r) => println!(
                "| {} | {:.0} | {:.0} | {} | {} | {:.2} | {:.1} | {:.2} | {} | {:.2} | - |",
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
                r.subscribe_s
            ),
            Err(e) => println!("| {} | failed: {e:#} |", s.id),
        }
    }
    Ok(())
}
