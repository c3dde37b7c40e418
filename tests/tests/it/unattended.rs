//! Running unattended: a dead writer thread is noticed (unhealthy, exit 1), a second instance
//! on the same directories is refused, and a SIGTERM under load ends within the shutdown
//! budget with every chunk complete.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use connector::runner;
use tests::*;

/// A connector process, killed if the test ends first.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The counters to Parquet, with `/metrics` on `metrics` (`127.0.0.1:0` in-process).
fn line_text(dir: &Path, opc: &str, metrics: &str) -> String {
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
    let mut child = Child(
        Command::new(connector_bin())
            .args(["run", "--config", path.to_str().unwrap()])
            .env("OPCUA_CONNECTOR_FAULT_WRITER_PANIC_AFTER", "20")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .expect("spawn connector"),
    );
    let status = eventually("the connector exits", Duration::from_secs(60), || {
        let s = child.0.try_wait().unwrap();
        async move { s }
    })
    .await;
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

fn spawn(path: &Path, log: &Path) -> Child {
    Child(
        Command::new(connector_bin())
            .args(["run", "--config", path.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("spawn connector"),
    )
}

async fn exit_status(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    eventually("the connector exits", within, || {
        let s = child.0.try_wait().unwrap();
        async move { s }
    })
    .await
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
    let pid = first.0.id();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    eventually(
        "the first one writes samples",
        Duration::from_secs(30),
        || async {
            let (status, body) = match tokio::net::TcpStream::connect(addr).await {
                Ok(_) => http_get(addr, "/metrics").await,
                Err(_) => (0, String::new()),
            };
            let written = body
                .lines()
                .find(|l| l.starts_with("opcua_connector_samples_received_total"))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
            (status == 200 && written > 100).then_some(())
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
    let status = exit_status(&mut second, Duration::from_secs(20)).await;
    let log = std::fs::read_to_string(&second_log).unwrap();
    eprintln!("second instance: {status}: {}", log.trim());
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains(&format!("pid {pid}")), "{log}");
    assert!(
        log.contains(&dir.path().join("pki").display().to_string()),
        "{log}"
    );

    let term = Instant::now();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let status = exit_status(&mut first, Duration::from_secs(30)).await;
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
