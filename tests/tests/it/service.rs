//! Running as a systemd service (`Type=notify`), without systemd: the test listens on the
//! notification socket itself and reads what the connector says: `READY=1` once the line is
//! up, `WATCHDOG=1` while the pipeline goes on (its broker unreachable all along: that is not
//! a stall), a `STATUS=` naming the stage and no more pings while a writer thread hangs (test
//! hook), pings again once it goes on, `STOPPING=1` on SIGTERM and no ping after it. With
//! stderr on the "journal" (`JOURNAL_STREAM` naming the log file), every line carries its
//! priority.

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use tokio::net::UnixDatagram;

use super::unattended::line_text;
use tests::*;

/// The watchdog period the test asks for: pings every 1 s.
const WATCHDOG: Duration = Duration::from_secs(4);

/// The next notification, or `None` at `deadline`.
async fn next(sock: &UnixDatagram, deadline: Instant) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, sock.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Ok(Err(e)) => panic!("notification socket: {e}"),
        Err(_) => None,
    }
}

/// Reads notifications until one satisfies `want`; every one read is kept in `seen`.
async fn until(
    sock: &UnixDatagram,
    seen: &mut Vec<String>,
    within: Duration,
    what: &str,
    want: impl Fn(&str) -> bool,
) {
    let deadline = Instant::now() + within;
    while let Some(m) = next(sock, deadline).await {
        let done = want(&m);
        seen.push(m);
        if done {
            return;
        }
    }
    panic!("no notification {what} within {within:?}; seen: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_then_pings_while_the_pipeline_goes_on_none_while_a_writer_hangs_then_again() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), |_| {}).await;
    let path = dir.path().join("line.toml");
    // A broker that is never there: its connection retries, which is not a stall.
    let mqtt = format!(
        "\n[sink.mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\n\n[buffer]\ndir = \"{}\"\n",
        free_port(),
        dir.path().join("buffer").display()
    );
    let text = line_text(dir.path(), sim.sim.endpoint_url(), "127.0.0.1:0") + &mqtt;
    std::fs::write(&path, text).unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let log_path = dir.path().join("connector.log");
    std::fs::write(&log_path, "").unwrap();
    let log_meta = std::fs::metadata(&log_path).unwrap();
    let journal = format!("{}:{}", log_meta.dev(), log_meta.ino());
    let hang = dir.path().join("hang");
    let watchdog_usec = WATCHDOG.as_micros().to_string();
    let mut child = ConnectorProcess::run(
        &path,
        &log_path,
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", &watchdog_usec),
            ("JOURNAL_STREAM", &journal),
            (
                "OPCUA_CONNECTOR_FAULT_WRITER_HANG_WHILE",
                hang.to_str().unwrap(),
            ),
            ("RUST_LOG", "info"),
        ],
    );
    let log = || std::fs::read_to_string(&log_path).unwrap();
    let ping = |m: &str| m == "WATCHDOG=1\n";

    // READY first (nothing is said before the line is up).
    let mut seen = Vec::new();
    until(&sock, &mut seen, Duration::from_secs(30), "READY=1", |m| {
        m.lines().any(|l| l == "READY=1")
    })
    .await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0].contains("STATUS=running: line line-u, 1 PLC(s)"),
        "{seen:?}"
    );
    eventually("the PLC subscribed", Duration::from_secs(20), || {
        let log = log();
        async move { log.contains("subscribed").then_some(()) }
    })
    .await;
    // Pings for a whole period while samples flow and the broker stays away.
    for _ in 0..4 {
        until(&sock, &mut seen, WATCHDOG, "WATCHDOG=1", ping).await;
    }
    assert!(!seen.iter().any(|m| m.contains("stuck")), "{seen:?}");

    // The writer thread hangs: within 3/4 of a period the pings stop and the status names it.
    std::fs::write(&hang, "").unwrap();
    let hung_at = Instant::now();
    until(&sock, &mut seen, 3 * WATCHDOG, "STATUS=stuck", |m| {
        m.starts_with("STATUS=stuck: the writer thread of plc sim makes no progress")
    })
    .await;
    let noticed = hung_at.elapsed();
    assert!(
        noticed <= WATCHDOG + Duration::from_secs(1),
        "noticed after {noticed:?}"
    );
    // Four ping intervals without a ping (a healthy line pings every WATCHDOG / 4).
    let quiet_until = Instant::now() + WATCHDOG;
    while let Some(m) = next(&sock, quiet_until).await {
        assert!(!ping(&m), "a ping while the writer hangs: {seen:?}");
        seen.push(m);
    }

    // It goes on: the status says so and the pings resume.
    std::fs::remove_file(&hang).unwrap();
    until(&sock, &mut seen, WATCHDOG, "STATUS=running", |m| {
        m == "STATUS=running\n"
    })
    .await;
    until(&sock, &mut seen, WATCHDOG, "WATCHDOG=1", ping).await;

    // SIGTERM: STOPPING=1, a clean exit with the chunk completed, and no ping after STOPPING.
    child.terminate();
    until(
        &sock,
        &mut seen,
        Duration::from_secs(10),
        "STOPPING=1",
        |m| m.lines().any(|l| l == "STOPPING=1"),
    )
    .await;
    let status = child.exit_within(Duration::from_secs(15)).await;
    assert!(status.success(), "{status:?}\n{}", log());
    while let Some(m) = next(&sock, Instant::now() + Duration::from_millis(100)).await {
        assert!(!ping(&m), "a ping after STOPPING=1: {seen:?}");
    }
    assert!(
        !parquet_files(&dir.path().join("parquet")).is_empty(),
        "no chunk"
    );

    // The journal's view of the log: every line starts with its priority, no timestamps,
    // no colours; the hang is an error (<3>), the start and the recovery info lines (<6>).
    let log = log();
    assert!(!log.contains('\u{1b}'), "{log}");
    for line in log.lines() {
        let p = line.strip_prefix('<').and_then(|l| l.split_once('>'));
        assert!(
            p.is_some_and(|(n, rest)| matches!(n, "2" | "3" | "4" | "6" | "7")
                && !rest.starts_with(|c: char| c.is_ascii_digit())),
            "not a journal line: {line:?}\n{log}"
        );
    }
    let has = |prefix: &str, text: &str| {
        log.lines()
            .any(|l| l.starts_with(prefix) && l.contains(text))
    };
    assert!(has("<6>", "running;"), "{log}");
    assert!(has("<3>", "makes no progress"), "{log}");
    assert!(has("<6>", "makes progress again"), "{log}");
}

#[test]
fn a_failed_start_says_why_as_an_error_on_the_journal() {
    // An invalid file: exit 2, and every line of the reason is an error (<3>), so that
    // `journalctl -p warning` shows why the service does not start.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("line.toml");
    std::fs::write(&path, "[line]\nid = \"x\"\nsurprise = 1\n").unwrap();
    let log_path = dir.path().join("connector.log");
    std::fs::write(&log_path, "").unwrap();
    let meta = std::fs::metadata(&log_path).unwrap();
    let journal = format!("{}:{}", meta.dev(), meta.ino());
    let mut child = ConnectorProcess::run(&path, &log_path, &[("JOURNAL_STREAM", &journal)]);
    let status = child.0.wait().unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("<3>error: "), "{log}");
    assert!(log.contains("surprise"), "{log}");
    assert!(log.lines().all(|l| l.starts_with("<3>")), "{log}");
}
