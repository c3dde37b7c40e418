//! `opcua-connector demo`: the bundled simulator and the connector in one process, writing
//! Parquet, with live progress and a summary.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use simulator::SimConfig;
use tokio_util::sync::CancellationToken;

use super::{Failure, Outcome};
use crate::config::{self, Pki};
use crate::metrics::PlcMetrics;
use crate::runner;

/// The demo line config, compiled in so the demo works from any directory.
pub const DEMO_CONFIG: &str = include_str!("../../../configs/demo.toml");

#[derive(Debug, Clone)]
pub struct DemoArgs {
    pub duration: Duration,
    pub out: PathBuf,
}

pub async fn demo(args: DemoArgs) -> Outcome {
    let runtime = |m: String| Failure::Runtime(m);
    std::fs::create_dir_all(&args.out)
        .map_err(|e| runtime(format!("cannot create {}: {e}", args.out.display())))?;
    let pki_root = args.out.join(".pki");

    // 1. The bundled simulator on a free loopback port.
    let sim_token = CancellationToken::new();
    let sim = simulator::start(
        SimConfig::bottling_line(pki_root.join("simulator")),
        sim_token.clone(),
    )
    .await
    .map_err(|e| runtime(format!("cannot start the simulator: {e}")))?;

    // 2. configs/demo.toml (the file if present, else the bundled copy), pointed at it.
    let path = Path::new("configs/demo.toml");
    let text = std::fs::read_to_string(path).unwrap_or_else(|_| DEMO_CONFIG.to_owned());
    let mut config = config::parse(path, &text).map_err(|e| Failure::Usage(e.to_string()))?;
    for plc in &mut config.plcs {
        plc.endpoint = sim.endpoint_url().to_owned();
    }
    if let Some(p) = config.parquet.as_mut() {
        p.dir = args.out.clone();
    }
    // The write service's state (the demo's rule writes through it) beside the data.
    config.buffer.dir = args.out.join(".buffer");
    // The simulator makes a fresh certificate on first start; the demo trusts it.
    config.pki = Pki {
        dir: pki_root.join("connector"),
        trust_unknown_servers: true,
    };

    eprintln!(
        "demo: simulator at {}, connector writing Parquet to {} for {}",
        sim.endpoint_url(),
        args.out.display(),
        humantime::format_duration(args.duration)
    );
    let running = runner::start(&config).map_err(|e| runtime(e.to_string()))?;
    let metrics = running.metrics.clone();

    // 3. Live progress once a second until the duration is over or Ctrl-C: a line redrawn in
    // place on a terminal; elsewhere (a service log, a CI run) a plain line every 10 s.
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + args.duration;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = 0u64;
    let stop = super::stop_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            _ = &mut stop => { eprintln!(); eprintln!("demo: interrupted"); break; }
            _ = tick.tick() => {
                let received = metrics.total(|p| &p.samples_received);
                let elapsed = started.elapsed().as_secs_f64();
                let line = format!(
                    "{:>4.0} s  {:>7} samples/s  {:>9} samples  {:>3} items  {:>3} files  {:>9} on disk",
                    elapsed,
                    received - last,
                    received,
                    metrics.total(|p| &p.monitored_items),
                    metrics.total(|p| &p.chunks_written),
                    bytes(metrics.total(|p| &p.bytes_written)),
                );
                if terminal {
                    eprint!("\r  {line}   ");
                    let _ = std::io::stderr().flush();
                } else if (elapsed.round() as u64).is_multiple_of(10) && elapsed >= 1.0 {
                    eprintln!("demo: {line}");
                }
                last = received;
            }
        }
    }
    if terminal {
        eprintln!();
    }
    // Stop the simulated values and let the last notifications land, so the files end at
    // the simulator's ground truth; then stop and drain.
    sim.inject(simulator::FaultKind::Freeze {
        duration: Duration::from_secs(3600),
    });
    let mut last_seen = u64::MAX;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = metrics.total(|p| &p.samples_received);
        if now == last_seen {
            break;
        }
        last_seen = now;
    }
    running.stop().await;

    // 4. Ground truth for checks (an underscore file: Parquet readers skip it).
    let stats = sim.stats();
    let truth = args.out.join("_simulator_stats.json");
    if let Ok(json) = serde_json::to_vec_pretty(&stats) {
        let _ = std::fs::write(&truth, json);
    }
    sim_token.cancel();
    let _ = sim.wait().await;

    // 5. Summary.
    let rows = metrics.total(|p| &p.samples_written);
    let on_disk = metrics.total(|p| &p.bytes_written);
    let files = metrics.total(|p| &p.chunks_written);
    let elapsed = started.elapsed().as_secs_f64();
    println!("demo finished after {elapsed:.1} s");
    println!(
        "  samples received     {}",
        metrics.total(|p| &p.samples_received)
    );
    println!(
        "  samples written      {rows}  ({:.0}/s)",
        rows as f64 / elapsed.max(0.001)
    );
    println!("  parquet files        {files} in {}", args.out.display());
    println!(
        "  bytes on disk        {}  ({:.2} bytes/sample)",
        bytes(on_disk),
        on_disk as f64 / (rows.max(1)) as f64
    );
    println!(
        "  reconnects           {}",
        metrics.total(|p| &p.reconnects)
    );
    for p in &metrics.plcs {
        let failed = PlcMetrics::get(&p.failed_items);
        if failed > 0 || PlcMetrics::get(&p.write_errors) > 0 {
            println!(
                "  plc {}: {failed} nodes skipped, {} write errors (see the log)",
                p.plc,
                p.write_errors.load(Ordering::Relaxed)
            );
        }
    }
    if let Some(r) = &metrics.rules {
        for c in &r.rules {
            let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            println!(
                "  rule {:<15} fired {}, cleared {}, errors {} (a spike every 2 min from 1 min: try --duration 2m)",
                c.rule,
                get(&c.firings),
                get(&c.clears),
                get(&c.errors)
            );
        }
    }
    println!("  simulator truth      {}", truth.display());
    let glob = format!("{}/**/*.parquet", args.out.display());
    println!();
    println!("Try:");
    println!(
        "  duckdb -c \"SELECT name, count(*) AS samples, min(time), max(time) FROM read_parquet('{glob}', hive_partitioning=true) GROUP BY name ORDER BY name\""
    );
    println!(
        "  python3 -c \"import pyarrow.parquet as pq; t = pq.read_table('{}'); print(t.num_rows); print(t.schema)\"",
        args.out.display()
    );
    Ok(())
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}
