//! A PLC that refuses us: wrong credentials must not become a login a second, forever (many
//! PLCs lock the account after a few failures), and must be said once, clearly.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use connector::config;
use connector::metrics::PlcMetrics;
use connector::opcua::session;
use tests::*;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::{Layer, SubscriberExt};

/// The log lines of the connector, kept for the test to count.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

fn plc_config(dir: &Path, endpoint: &str) -> config::Config {
    let pw = dir.join("password");
    std::fs::write(&pw, "wrong\n").unwrap();
    let auth = format!(
        "auth = {{ username = \"operator\", password_file = \"{}\" }}",
        pw.display()
    );
    line_config(dir, endpoint, &auth, true)
}

fn line_config(dir: &Path, endpoint: &str, plc_extra: &str, trust: bool) -> config::Config {
    let text = format!(
        r#"
[line]
id = "line-t"
site = "test-site"

[[plc]]
id = "locked"
endpoint = "{endpoint}"
{plc_extra}

  [[plc.group]]
  name = "fast"
  publishing_interval = "100ms"
  nodes = ["{node}"]

[pki]
dir = "{pki}"
trust_unknown_servers = {trust}

[sink.parquet]
dir = "{out}"
"#,
        node = counter_id(COUNTERS[0]),
        pki = dir.join("connector-pki").display(),
        out = dir.join("out").display(),
    );
    config::parse(Path::new("test.toml"), &text).unwrap_or_else(|e| panic!("test config: {e}"))
}

/// Captures the connector's log lines (DEBUG and up) of the current thread from now on.
fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("connector", tracing::Level::DEBUG),
            ),
    );
    (captured, tracing::subscriber::set_default(subscriber))
}

/// Must-show of #10: ~2 minutes. The data and the write session of a PLC with a wrong
/// password: logins counted by the simulator after the first minute, and our log lines.
#[tokio::test(flavor = "current_thread")]
async fn a_wrong_password_is_retried_slowly_and_said_once_per_session() {
    let (captured, _guard) = capture();

    let dir = tempfile::tempdir().unwrap();
    let sim_pki = dir.path().join("sim");
    let token = CancellationToken::new();
    let mut sim_config = simulator::SimConfig::bottling_line(sim_pki);
    sim_config.users = vec![("operator".into(), "right".into())];
    let sim = simulator::start(sim_config, token.clone()).await.unwrap();
    let config = plc_config(dir.path(), sim.endpoint_url());
    let plc = config.plcs[0].clone();

    let started = Instant::now();
    let stop = CancellationToken::new();
    let metrics = PlcMetrics::new(&plc.id);
    let (tx, _rx) = connector::pipeline::channel(16, metrics.clone());
    let data = tokio::spawn(session::run(
        plc.clone(),
        config.pki.clone(),
        tx,
        metrics.clone(),
        stop.clone(),
    ));
    let (link, _link_rx) = tokio::sync::watch::channel(None);
    let writes = tokio::spawn(session::run_writes(
        plc.clone(),
        config.pki.clone(),
        link,
        stop.clone(),
    ));

    let at = |secs: u64| started + Duration::from_secs(secs);
    tokio::time::sleep_until(at(60).into()).await;
    let first_minute = sim.logins();
    tokio::time::sleep_until(at(120).into()).await;
    let second_minute = sim.logins();
    stop.cancel();
    data.await.unwrap();
    writes.await.unwrap();
    token.cancel();

    let lines = captured.lines();
    let errors: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .collect();
    let data_lines = errors
        .iter()
        .filter(|l| l.contains("the data session was refused"))
        .count();
    let write_lines = errors
        .iter()
        .filter(|l| l.contains("the write session was refused"))
        .count();
    let window = second_minute.attempts - first_minute.attempts;
    println!(
        "wrong password: logins in the first minute {} (refused {}), in the second minute {window} \
         (both sessions); error lines: data {data_lines}, write {write_lines}, all {}",
        first_minute.attempts,
        first_minute.refused,
        errors.len()
    );
    for l in &errors {
        println!("  {l}");
    }
    assert!(
        first_minute.attempts >= 2,
        "both sessions tried: {first_minute:?}"
    );
    assert_eq!(second_minute.attempts, second_minute.refused);
    assert!(
        window <= 2,
        "logins per minute after the first minute: {window} (> 2)"
    );
    assert_eq!(
        (data_lines, write_lines),
        (1, 1),
        "one line per session and cause"
    );
    assert!(
        errors[0].contains("wrong user name or password"),
        "the line says what to fix: {}",
        errors[0]
    );
    assert_eq!(errors.len(), 2, "nothing else logged per attempt");
}

/// An untrusted server certificate: both sessions refuse the server, each says so once
/// (naming the rejected/ and trusted/ folders) and tries again only after 10 s.
#[tokio::test(flavor = "current_thread")]
async fn an_untrusted_server_certificate_is_said_once_per_session_and_retried_slowly() {
    let (captured, _guard) = capture();
    let dir = tempfile::tempdir().unwrap();
    let token = CancellationToken::new();
    let sim_config = simulator::SimConfig::bottling_line(dir.path().join("sim"));
    let sim = simulator::start(sim_config, token.clone()).await.unwrap();
    let config = line_config(
        dir.path(),
        sim.endpoint_url(),
        "security_policy = \"Basic256Sha256\"\nsecurity_mode = \"SignAndEncrypt\"",
        false,
    );
    let plc = config.plcs[0].clone();
    let stop = CancellationToken::new();
    let metrics = PlcMetrics::new(&plc.id);
    let (tx, _rx) = connector::pipeline::channel(16, metrics.clone());
    let data = tokio::spawn(session::run(
        plc.clone(),
        config.pki.clone(),
        tx,
        metrics.clone(),
        stop.clone(),
    ));
    let (link, _link_rx) = tokio::sync::watch::channel(None);
    let writes = tokio::spawn(session::run_writes(
        plc.clone(),
        config.pki.clone(),
        link,
        stop.clone(),
    ));
    let refused = |who: &str| {
        let needle = format!("the {who} session was refused");
        captured
            .lines()
            .iter()
            .filter(|l| l.contains(&needle))
            .count()
    };
    eventually("both sessions refused", Duration::from_secs(30), || {
        let both = refused("data") >= 1 && refused("write") >= 1;
        async move { both.then_some(()) }
    })
    .await;
    let first = Instant::now();
    // A measured window, not a synchronisation: no second attempt may come within it.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let failures_9s = PlcMetrics::get(&metrics.connect_failures);
    eventually("the second attempt", Duration::from_secs(20), || {
        let n = PlcMetrics::get(&metrics.connect_failures);
        async move { (n >= 2).then_some(()) }
    })
    .await;
    let second_after = first.elapsed();
    stop.cancel();
    data.await.unwrap();
    writes.await.unwrap();
    token.cancel();

    let lines = captured.lines();
    let errors: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .collect();
    println!(
        "untrusted server: data-session failures 9 s after the first {failures_9s}, second \
         attempt after {second_after:?}; error lines {}",
        errors.len()
    );
    for l in &errors {
        println!("  {l}");
    }
    assert_eq!(failures_9s, 1, "no second attempt within 9 s");
    assert!(second_after >= Duration::from_secs(9), "{second_after:?}");
    assert_eq!(errors.len(), 2, "one line per session");
    for l in errors {
        assert!(
            (l.contains("BadCertificateUntrusted") || l.contains("BadSecurityChecksFailed"))
                && l.contains("rejected/")
                && l.contains("trusted/"),
            "the line says what to do: {l}"
        );
    }
}
