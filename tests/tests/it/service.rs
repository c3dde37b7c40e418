//! Running as a systemd service (`Type=notify`), without systemd: the test listens on the
//! notification socket itself and reads what the connector says: `READY=1` once the line is
//! up, `WATCHDOG=1` while the pipeline makes progress, a `STATUS=` naming the stage and no
//! more pings once a writer thread hangs (test hook), `STOPPING=1` on SIGTERM. With stderr on
//! the "journal" (`JOURNAL_STREAM` naming the log file), every line carries its priority.

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use tokio::net::UnixDatagram;

use super::unattended::line_text;
use tests::*;

/// The watchdog period the test asks for: pings every 2 s.
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
async fn ready_then_watchdog_pings_while_the_pipeline_moves_and_none_once_a_writer_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), |_| {}).await;
    let path = dir.path().join("line.toml");
    std::fs::write(
        &path,
        line_text(dir.path(), sim.sim.endpoint_url(), "127.0.0.1:0"),
    )
    .unwrap();
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
                "OPCUA_CONNECTOR_FAULT_WRITER_HANG_WHEN",
                hang.to_str().unwrap(),
            ),
            ("RUST_LOG", "info"),
        ],
    );
    let log = || std::fs::read_to_string(&log_path).unwrap();

    // READY first (nothing is said before the line is up), then pings.
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
    for _ in 0..2 {
        until(&sock, &mut seen, 3 * WATCHDOG, "WATCHDOG=1", |m| {
            m == "WATCHDOG=1\n"
        })
        .await;
    }
    eventually("the PLC subscribed", Duration::from_secs(20), || {
        let log = log();
        async move { log.contains("subscribed").then_some(()) }
    })
    .await;

    // The writer thread hangs: within a period the pings stop and the status names it.
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
    // Three ping intervals without a ping (a healthy line pings every WATCHDOG / 2).
    let quiet_until = Instant::now() + WATCHDOG * 3 / 2;
    while let Some(m) = next(&sock, quiet_until).await {
        assert!(
            !m.contains("WATCHDOG=1"),
            "a ping after the hang: {m:?}; {seen:?}"
        );
        seen.push(m);
    }

    // SIGTERM: STOPPING=1, and the process still ends (the hung writer costs its share).
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

    // The journal's view of the log: every line starts with its priority, no timestamps,
    // no colours; the hang is an error (<3>), the start an info line (<6>).
    let log = log();
    assert!(!log.contains('\u{1b}'), "{log}");
    for line in log.lines() {
        let p = line.strip_prefix('<').and_then(|l| l.split_once('>'));
        assert!(
            p.is_some_and(|(n, rest)| matches!(n, "3" | "4" | "6" | "7")
                && !rest.starts_with(|c: char| c.is_ascii_digit())),
            "not a journal line: {line:?}\n{log}"
        );
    }
    assert!(
        log.lines()
            .any(|l| l.starts_with("<6>") && l.contains("running;")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.starts_with("<3>") && l.contains("makes no progress")),
        "{log}"
    );
}
