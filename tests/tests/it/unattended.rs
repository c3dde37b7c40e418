//! Running unattended: a dead writer thread is noticed (unhealthy, exit 1), a second instance
//! on the same directories is refused, and a SIGTERM under load ends within the shutdown
//! budget with every chunk complete.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use connector::runner;
use tests::*;

/// The counters to Parquet, with `/metrics` on `metrics` (`127.0.0.1:0` in-process).
pub fn line_text(dir: &Path, opc: &str, metrics: &str) -> String {
    let nodes: Vec<String> = COUNTERS
        .iter()
        .map(|c| format!("\"{}\"", counter_id(c)))
        .collect();
    format!(
        "[line]\nid = \"line-u\"\n\n[[plc]]\nid = \"sim\"\nendpoint = \"{opc}\"\n\n  [[plc.group]]\n  name = \"fast\"\n  \
         publishing_interval = \"100ms\"\n  sampling_interval = \"0ms\"\n  nodes = [{}]\n\n\
         [pki]\ndir = \"{}\"\ntrust_unknown_servers = true\n\n[sink.parquet]\ndir = \"{}\"\n\n\
         [metrics]\nlisten = \"{metrics}\"\n",
        nodes.join(", "),
        dir.join("pki").display(),
        dir.join("parquet").display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_writer_thread_makes_the_line_unhealthy_at_once_and_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), |_| {}).await;
    let text = line_text(dir.path(), sim.sim.endpoint_url(), "127.0.0.1:0");
    let config = connector::config::parse(Path::new("line.toml"), &text).unwrap();
    let hooks = runner::Hooks {
        writer_panic_after: Some(20),
        ..Default::default()
    };
    let running = runner::start_with(&config, &hooks).expect("runner");
    let addr = running.metrics_addr.unwrap();
    let m = running.metrics.plcs[0].clone();
    eventually("healthy", Duration::from_secs(20), || async {
        (http_get(addr, "/healthz").await.0 == 200).then_some(())
    })
    .await;
    eventually("the writer dies", Duration::from_secs(20), || {
        let m = m.clone();
        async move { m.writer_dead.load(Ordering::Relaxed).then_some(()) }
    })
    .await;
    let died = Instant::now();
    let (status, body) = eventually("/healthz says so", Duration::from_secs(2), || async {
        let (status, body) = http_get(addr, "/healthz").await;
        (status == 503).then_some((status, body))
    })
    .await;
    eprintln!(
        "/healthz {status} {:.0} ms after the writer died: {}",
        died.elapsed().as_secs_f64() * 1000.0,
        body.trim()
    );
    assert!(body.contains("plc sim: writer thread died"), "{body}");
    assert!(
        running.fatal.is_cancelled(),
        "the line reports a fatal error"
    );
    // Nothing after it is dropped silently: the samples the session still hands on count.
    eventually("dropped samples counted", Duration::from_secs(5), || {
        let m = m.clone();
        async move { (m.samples_dropped.load(Ordering::Relaxed) > 0).then_some(()) }
    })
    .await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_exits_1_when_a_writer_thread_dies() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), |_| {}).await;
    let port = free_port();
    let path = dir.path().join("line.toml");
    std::fs::write(
        &path,
        line_text(
            dir.path(),
            sim.sim.endpoint_url(),
            &format!("127.0.0.1:{port}"),
        ),
    )
    .unwrap();
    let started = Instant::now();
    let log_path = dir.path().join("connector.log");
    let mut child = ConnectorProcess::run(
        &path,
        &log_path,
        &[
            ("OPCUA_CONNECTOR_FAULT_WRITER_PANIC_AFTER", "20"),
            ("RUST_LOG", "warn"),
        ],
    );
    let status = child.exit_within(Duration::from_secs(60)).await;
    let log = std::fs::read_to_string(&log_path).unwrap();
    eprintln!(
        "exit {:?} after {:.1} s",
        status.code(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("writer thread died"), "{log}");
    assert!(log.contains("stopped after a fatal error"), "{log}");
}

fn spawn(path: &Path, log: &Path) -> ConnectorProcess {
    ConnectorProcess::run(path, log, &[("RUST_LOG", "info")])
}

/// Two instances on the same directories: the second exits 2 naming the directory and the
/// first one's pid; the first stops on SIGTERM within 5 s with every chunk complete, and
/// everything it created is its owner's only (umask 077).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_exits_2_and_sigterm_stops_the_first_within_5_s() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), |_| {}).await;
    let port = free_port();
    let path = dir.path().join("line.toml");
    let text = line_text(
        dir.path(),
        sim.sim.endpoint_url(),
        &format!("127.0.0.1:{port}"),
    );
    std::fs::write(&path, text).unwrap();
    let mut first = spawn(&path, &dir.path().join("first.log"));
    let pid = first.pid();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    eventually(
        "the first one writes samples",
        Duration::from_secs(30),
        || async {
            let received = metric(&metrics_text(addr).await, "samples_received_total");
            (received > 100).then_some(())
        },
    )
    .await;

    // The metrics port differs so that only the directories collide.
    let other = dir.path().join("other.toml");
    let text = line_text(
        dir.path(),
        sim.sim.endpoint_url(),
        &format!("127.0.0.1:{}", free_port()),
    );
    std::fs::write(&other, text).unwrap();
    let second_log = dir.path().join("second.log");
    let mut second = spawn(&other, &second_log);
    let status = second.exit_within(Duration::from_secs(20)).await;
    let log = std::fs::read_to_string(&second_log).unwrap();
    eprintln!("second instance: {status}: {}", log.trim());
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains(&format!("pid {pid}")), "{log}");
    assert!(
        log.contains(&dir.path().join("pki").display().to_string()),
        "{log}"
    );

    let term = Instant::now();
    first.terminate();
    let status = first.exit_within(Duration::from_secs(30)).await;
    let took = term.elapsed();
    eprintln!("SIGTERM to exit: {:.2} s, {status}", took.as_secs_f64());
    assert!(status.success(), "{status}");
    assert!(took <= Duration::from_secs(5), "stopped in {took:?}");
    let rows = read_all(&dir.path().join("parquet"));
    assert!(
        rows.len() > 100,
        "every chunk complete and readable: {}",
        rows.len()
    );

    // Owner-only: every file and directory the connector made.
    let mut stack = vec![dir.path().join("parquet"), dir.path().join("pki")];
    let mut checked = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.ends_with("simulator") {
                continue; // the in-process simulator's, made by this test
            }
            let mode =
                std::os::unix::fs::PermissionsExt::mode(&e.metadata().unwrap().permissions());
            assert_eq!(mode & 0o077, 0, "{} is {:o}", p.display(), mode & 0o777);
            checked += 1;
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    assert!(checked >= 3, "{checked} files checked");
}

/// A tmpfs of `mib` MiB at `at` (removed when dropped), or why it cannot be made.
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn mount(at: &Path, mib: u32) -> Result<SmallFs, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(SmallFs(at.to_owned()))
    }

    fn free(&self) -> u64 {
        connector::buffer::free_bytes(&self.0)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A small file system (tmpfs, 16 MiB) for Parquet and the buffer while the broker is away,
/// then filled to the last byte by another program: retention and the buffer's policy keep
/// the connector writing, nothing crashes, and the repeated errors are logged a few times,
/// not once per batch (they are counted in full). Needs root to mount; skipped otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_file_system_is_kept_in_bounds_and_a_full_one_does_not_stop_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let small = match SmallFs::mount(&dir.path().join("small"), 16) {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("SKIPPED: cannot mount a tmpfs here ({why}); run the suite as root");
            return;
        }
    };
    let sim = start_sim(dir.path(), |c| c.scale = Some("500@100ms".parse().unwrap())).await;
    let broker = start_broker();
    let relay = Relay::start(broker).await;
    relay.set_down(true);
    let sub = Subscriber::start(broker, "opcua/#").await;
    let port = free_port();
    let text = format!(
        r#"[line]
id = "line-f"

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

[sink.parquet]
dir = "{small}/parquet"
roll_interval = "1s"
max_bytes = "256KiB"
min_free = "2MiB"

[sink.mqtt]
url = "mqtt://127.0.0.1:{relay}"
qos = 1
batch_max_samples = 1000

[buffer]
dir = "{small}/buffer"
max_bytes = "64MiB"
segment_bytes = "512KiB"
min_free = "4MiB"
when_full = "drop_oldest"

[metrics]
listen = "127.0.0.1:{port}"
"#,
        opc = sim.sim.endpoint_url(),
        pki = dir.path().join("pki").display(),
        small = small.0.display(),
        relay = relay.port,
    );
    let path = dir.path().join("line.toml");
    std::fs::write(&path, text).unwrap();
    let log_path = dir.path().join("connector.log");
    let mut child = spawn(&path, &log_path);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let metrics = || metrics_text(addr);
    // Phase 1: the limits hold while data piles up (broker away).
    let body = eventually(
        "retention deletes chunks and the buffer drops its oldest",
        Duration::from_secs(90),
        || async {
            let b = metrics().await;
            (metric(&b, "parquet_retention_deleted_chunks_total") >= 3
                && metric(&b, "buffer_dropped_total") > 0)
                .then_some(b)
        },
    )
    .await;
    let free = small.free();
    eprintln!(
        "small fs: {free} bytes free; parquet kept {} B, {} chunks deleted; buffer {} B, {} dropped",
        metric(&body, "parquet_kept_bytes"),
        metric(&body, "parquet_retention_deleted_chunks_total"),
        metric(&body, "buffer_bytes"),
        metric(&body, "buffer_dropped_total"),
    );
    assert!(free >= 1 << 20, "the limits left room: {free}");
    assert!(metric(&body, "buffer_bytes") <= 12 << 20);

    // Phase 2: another program takes every byte left.
    let filler = small.0.join("filler");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 << 10];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    let full_at = metric(&metrics().await, "samples_received_total");
    let errors_at = metric(&metrics().await, "write_errors_total");
    eventually(
        "30,000 more samples received on a full disk",
        Duration::from_secs(60),
        || async {
            (metric(&metrics().await, "samples_received_total") > full_at + 30_000).then_some(())
        },
    )
    .await;
    assert!(child.0.try_wait().unwrap().is_none(), "still running");
    let body = metrics().await;
    let errors = metric(&body, "write_errors_total") - errors_at;
    let log = std::fs::read_to_string(&log_path).unwrap();
    let error_lines = log.lines().filter(|l| l.contains("ERROR")).count();
    let discarded = metric(&body, "samples_discarded_total");
    eprintln!(
        "full disk: {errors} write errors counted, {discarded} samples discarded, {error_lines} ERROR lines logged in all; written {}",
        metric(&body, "samples_written_total")
    );
    assert!(error_lines <= 20, "errors are rate-limited:\n{log}");
    // Retention makes room, so chunks are normally still written; samples given up by a
    // failed chunk would be counted, and never without a write error to say why.
    assert!(
        discarded == 0 || errors > 0,
        "errors {errors}, discarded {discarded}"
    );

    // Phase 3: the space comes back: chunks are completed again.
    std::fs::remove_file(&filler).unwrap();
    let written = metric(&metrics().await, "samples_written_total");
    eventually("chunks again", Duration::from_secs(30), || async {
        (metric(&metrics().await, "samples_written_total") > written + 10_000).then_some(())
    })
    .await;

    // Phase 4: the broker back. No seq lost silently: every seq reserved is delivered, or
    // counted as dropped (drop_oldest), refused (buffer and memory hold full) or dead-lettered.
    relay.set_down(false);
    sim.sim.inject(simulator::FaultKind::Freeze {
        duration: Duration::from_secs(300),
    });
    let body = eventually("the buffer delivered", Duration::from_secs(60), || async {
        let b = metrics().await;
        let idle = metric_opt(&b, "buffer_pending_messages") == Some(0)
            && metric(&b, "telemetry_connected") == 1;
        idle.then_some(b)
    })
    .await;
    let next = connector::buffer::seq::FILES
        .iter()
        .filter_map(|f| {
            std::fs::read_to_string(small.0.join("buffer/mqtt").join(f))
                .ok()?
                .lines()
                .find_map(|l| l.strip_prefix("sim/scale "))?
                .parse::<u64>()
                .ok()
        })
        .max()
        .expect("seq state");
    let delivered = sub.seqs();
    let (dropped, refused, dead) = (
        metric(&body, "buffer_dropped_total"),
        metric(&body, "telemetry_refused_full_total"),
        metric(&body, "telemetry_dead_letters_total"),
    );
    eprintln!(
        "seqs: {} reserved = {} delivered + {dropped} dropped + {refused} refused + {dead} dead letters",
        next - 1,
        delivered.len()
    );
    assert_eq!(next - 1, delivered.len() as u64 + dropped + refused + dead);
    child.terminate();
    let status = child.exit_within(Duration::from_secs(30)).await;
    assert!(
        status.success(),
        "{status}\n{}",
        std::fs::read_to_string(&log_path).unwrap()
    );
}
