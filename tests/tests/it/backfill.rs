//! History backfill (docs/connector.md#history-backfill): the connector process behind a relay
//! that cuts the OPC UA connection while the simulator keeps counting (10 values/s per
//! counter). With the simulator's history the counters are contiguous over a 60 s cut, the
//! cut's rows are marked `origin = history` and none comes twice; without history the gap
//! is counted and logged, and no row is invented.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tests::*;

/// The cut of the must-show (`BACKFILL_CUT_SECONDS` shortens it for a quick local run).
fn cut_length() -> Duration {
    let s = std::env::var("BACKFILL_CUT_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(s)
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

fn config(dir: &Path, opc: u16, metrics: u16) -> std::path::PathBuf {
    let nodes: Vec<String> = COUNTERS
        .iter()
        .map(|c| format!("\"{}\"", counter_id(c)))
        .collect();
    let text = format!(
        r#"[line]
id = "line-b"

[[plc]]
id = "sim"
endpoint = "{opc}"

  [[plc.group]]
  name = "fast"
  publishing_interval = "100ms"
  sampling_interval = "0ms"
  nodes = [{nodes}]
  backfill = true

[pki]
dir = "{pki}"
trust_unknown_servers = true

[sink.parquet]
dir = "{parquet}"
roll_interval = "2s"

[metrics]
listen = "127.0.0.1:{metrics}"
"#,
        opc = url(opc),
        nodes = nodes.join(", "),
        pki = dir.join("pki").display(),
        parquet = dir.join("parquet").display(),
    );
    let path = dir.join("line.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs the connector through a relay, cuts the relay for `cut`, waits until `settled` holds
/// on its metrics, stops it; returns the rows, the log, the metrics before the stop and the
/// cut's start and end (µs, our clock).
async fn run_with_cut(
    sim: &Sim,
    dir: &Path,
    cut: Duration,
    settled: impl Fn(&str) -> bool,
) -> (Vec<Row>, String, String, (i64, i64)) {
    let opc = Relay::start(sim.sim.port()).await;
    let metrics_port = free_port();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], metrics_port).into();
    let path = config(dir, opc.port, metrics_port);
    let log = dir.join("connector.log");
    let mut conn = ConnectorProcess::run(&path, &log, &[("RUST_LOG", "info")]);
    eventually(
        "samples before the cut",
        Duration::from_secs(30),
        || async {
            (metric(&metrics_text(addr).await, "samples_received_total") >= 50).then_some(())
        },
    )
    .await;
    let from = now_us();
    opc.set_down(true);
    // The outage itself (not a wait for a condition): the simulator counts on meanwhile.
    tokio::time::sleep(cut).await;
    opc.set_down(false);
    let to = now_us();
    let text = eventually("the outage handled", Duration::from_secs(120), || async {
        let text = metrics_text(addr).await;
        settled(&text).then_some(text)
    })
    .await;
    // Live samples after the outage too, then a stop that drains every row to Parquet.
    let received = metric(&text, "samples_received_total");
    eventually(
        "live samples after the outage",
        Duration::from_secs(30),
        || async {
            (metric(&metrics_text(addr).await, "samples_received_total") >= received + 50)
                .then_some(())
        },
    )
    .await;
    conn.terminate();
    assert!(conn.exit_within(Duration::from_secs(30)).await.success());
    let rows = read_all(&dir.join("parquet"));
    let log = std::fs::read_to_string(&log).unwrap();
    (rows, log, text, (from, to))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_60s_cut_is_backfilled_from_history_contiguous_marked_and_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), |_| {}).await;
    let cut = cut_length();
    let (rows, log, metrics, (from, to)) = run_with_cut(&sim, dir.path(), cut, |m| {
        metric(m, "backfill_gaps_total") >= COUNTERS.len() as u64
    })
    .await;
    assert_eq!(metric(&metrics, "backfill_unfilled_total"), 0, "{log}");
    assert!(log.contains("backfill done"), "{log}");
    let mut backfilled = 0;
    for c in COUNTERS {
        let s = series(&rows, "fast", &counter_id(c));
        let values: Vec<i128> = s
            .iter()
            .map(|r| {
                r.value
                    .as_i128()
                    .unwrap_or_else(|| panic!("{c}: {:?}", r.value))
            })
            .collect();
        if counter_defects(&values) != (0, 0) {
            eprintln!("{log}");
            for w in s.windows(2) {
                if w[0].value == w[1].value || w[1].time <= w[0].time {
                    eprintln!(
                        "{c}: {:?} {} {:?} | {:?} {} {:?}",
                        w[0].value, w[0].time, w[0].origin, w[1].value, w[1].time, w[1].origin
                    );
                }
            }
        }
        assert_eq!(counter_defects(&values), (0, 0), "{c}: gaps or duplicates");
        let mut times: Vec<i64> = s.iter().map(|r| r.time).collect();
        times.dedup();
        assert_eq!(times.len(), s.len(), "{c}: a time twice");
        // The counter spans the cut, and every row well inside it was read from history.
        assert!(
            s.first().unwrap().time < from && s.last().unwrap().time > to,
            "{c}"
        );
        let inside: Vec<&Row> = s
            .iter()
            .filter(|r| r.time > from + 1_000_000 && r.time < to - 1_000_000)
            .collect();
        let expected = (cut.as_secs() as usize - 2) * 10;
        assert!(
            inside.len() + 10 >= expected,
            "{c}: {} rows inside the cut, ~{expected} expected",
            inside.len()
        );
        assert!(
            inside.iter().all(|r| r.origin == "history"),
            "{c}: a live row inside the cut"
        );
        let history = s.iter().filter(|r| r.origin == "history").count();
        assert!(history >= inside.len(), "{c}");
        backfilled += history;
        assert!(s
            .iter()
            .all(|r| r.origin == "history" || r.origin == "live"));
    }
    assert_eq!(
        metric(&metrics, "backfilled_samples_total") as usize,
        backfilled,
        "every backfilled sample counted, and landed"
    );
    eprintln!(
        "backfill: cut {} s, {backfilled} samples of {} counters read from history",
        cut.as_secs(),
        COUNTERS.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_history_the_gap_is_reported_and_nothing_invented() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), |c| c.history = false).await;
    let (rows, log, metrics, _) = run_with_cut(&sim, dir.path(), Duration::from_secs(5), |m| {
        metric(m, "backfill_unfilled_total") >= COUNTERS.len() as u64
    })
    .await;
    assert_eq!(metric(&metrics, "backfilled_samples_total"), 0);
    assert_eq!(metric(&metrics, "backfill_gaps_total"), 0);
    assert!(
        log.contains("values of an outage not backfilled") && log.contains("Historizing is false"),
        "{log}"
    );
    assert!(rows.iter().all(|r| r.origin == "live"));
    for c in COUNTERS {
        let values: Vec<i128> = series(&rows, "fast", &counter_id(c))
            .iter()
            .map(|r| {
                r.value
                    .as_i128()
                    .unwrap_or_else(|| panic!("{c}: {:?}", r.value))
            })
            .collect();
        let (gaps, dups) = counter_defects(&values);
        assert!(
            gaps >= 1 && dups == 0,
            "{c}: the outage's gap stays a gap ({gaps}, {dups})"
        );
    }
}
