//! Simulator <-> connector <-> Parquet files, in one process over loopback.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use connector::config;
use connector::metrics::Metrics;
use connector::runner::{self, Running};
use simulator::FaultKind;
use tests::*;

struct Line {
    dir: tempfile::TempDir,
}

impl Line {
    fn new() -> Line {
        Line {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
    fn out(&self) -> std::path::PathBuf {
        self.dir.path().join("out")
    }
    fn pki(&self) -> &Path {
        self.dir.path()
    }
    /// A line config with the five counters at 100 ms plus `extra` TOML for the plc.
    fn config(&self, endpoint: &str, plc_extra: &str, group_extra: &str) -> config::Config {
        let nodes: Vec<String> = COUNTERS
            .iter()
            .map(|c| format!("\"{}\"", counter_id(c)))
            .collect();
        let text = format!(
            r#"
[line]
id = "line-t"
site = "test-site"

[[plc]]
id = "sim"
endpoint = "{endpoint}"
{plc_extra}

  [[plc.group]]
  name = "fast"
  publishing_interval = "100ms"
  sampling_interval = "0ms"
  nodes = [{nodes}]
{group_extra}

[pki]
dir = "{pki}"
trust_unknown_servers = true

[sink.parquet]
dir = "{out}"
roll_interval = "2s"
"#,
            nodes = nodes.join(", "),
            pki = self.dir.path().join("connector-pki").display(),
            out = self.out().display(),
        );
        config::parse(Path::new("test.toml"), &text).unwrap_or_else(|e| panic!("test config: {e}"))
    }
}

async fn received(m: &Metrics) -> u64 {
    m.total(|p| &p.samples_received)
}

/// Freezes the simulator, waits until the connector has received everything, stops it.
async fn settle_and_stop(sim: &Sim, running: Running) {
    let m = running.metrics.clone();
    freeze_and_settle(sim, || m.total(|p| &p.samples_received) as usize).await;
    running.stop().await;
}

/// Ground truth of one of the bottling line's counters.
fn truth(sim: &Sim, name: &str) -> i128 {
    truth_last(sim, &counter_id(name))
}

fn counter_values(rows: &[Row], name: &str) -> Vec<i128> {
    series(rows, "fast", &counter_id(name))
        .iter()
        .map(|r| {
            r.value
                .as_i128()
                .unwrap_or_else(|| panic!("{name}: not an integer: {:?}", r.value))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_land_in_parquet_without_gap_or_duplicate_against_ground_truth() {
    let line = Line::new();
    let sim = start_sim(line.pki(), |_| {}).await;
    let running =
        runner::start(&line.config(sim.sim.endpoint_url(), "", "")).expect("runner starts");
    let m = running.metrics.clone();
    eventually("300 samples", Duration::from_secs(20), || {
        let m = m.clone();
        async move { (received(&m).await >= 300).then_some(()) }
    })
    .await;
    settle_and_stop(&sim, running).await;

    let rows = read_all(&line.out());
    assert!(!rows.is_empty(), "rows written");
    assert_eq!(
        m.total(|p| &p.samples_written),
        rows.len() as u64,
        "every received sample written"
    );
    for name in COUNTERS {
        let v = counter_values(&rows, name);
        assert!(v.len() >= 40, "{name}: {} values", v.len());
        assert_eq!(
            counter_defects(&v),
            (0, 0),
            "{name}: gaps/duplicates in {v:?}"
        );
        assert_eq!(
            *v.last().unwrap(),
            truth(&sim, name),
            "{name}: last value is the simulator's last"
        );
    }
    let r = &rows[0];
    assert_eq!(
        (r.line.as_str(), r.plc.as_str(), r.group.as_str()),
        ("line-t", "sim", "fast")
    );
    assert!(rows
        .iter()
        .all(|r| r.status == 0 && r.server_time.is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_resumes_within_2s_after_the_plc_restarts() {
    let line = Line::new();
    let sim = start_sim(line.pki(), |c| {
        c.faults = vec!["restart@3s:2s".parse().unwrap()]
    })
    .await;
    let running =
        runner::start(&line.config(sim.sim.endpoint_url(), "", "")).expect("runner starts");
    let m = running.metrics.clone();
    // Wait until the endpoint is back, then until the next sample arrives.
    eventually("simulator restarted", Duration::from_secs(20), || async {
        (sim.sim.stats().restarts == 1).then_some(())
    })
    .await;
    let back = Instant::now();
    let at_back = received(&m).await;
    eventually("samples after the restart", Duration::from_secs(10), || {
        let m = m.clone();
        async move { (received(&m).await > at_back + 5).then_some(()) }
    })
    .await;
    let resumed = back.elapsed();
    eprintln!(
        "data resumed {:.0} ms after the endpoint was back",
        resumed.as_secs_f64() * 1000.0
    );
    assert!(
        resumed < Duration::from_secs(2),
        "resumed after {resumed:?}"
    );
    assert!(m.total(|p| &p.reconnects) >= 1);
    settle_and_stop(&sim, running).await;
    let rows = read_all(&line.out());
    for name in COUNTERS {
        let v = counter_values(&rows, name);
        let (gaps, dups) = counter_defects(&v);
        // One gap: the values produced while the endpoint was down.
        assert!(
            gaps <= 1 && dups == 0,
            "{name}: {gaps} gaps {dups} duplicates"
        );
        assert_eq!(*v.last().unwrap(), truth(&sim, name));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_keeps_the_session_and_loses_nothing() {
    let line = Line::new();
    let sim = start_sim(line.pki(), |_| {}).await;
    let relay = Relay::start(sim.sim.port()).await;
    let running = runner::start(&line.config(&url(relay.port), "", "")).expect("runner starts");
    let m = running.metrics.clone();
    eventually("100 samples", Duration::from_secs(20), || {
        let m = m.clone();
        async move { (received(&m).await >= 100).then_some(()) }
    })
    .await;
    relay.cut();
    let cut_at = received(&m).await;
    eventually("samples after the cut", Duration::from_secs(15), || {
        let m = m.clone();
        async move { (received(&m).await > cut_at + 50).then_some(()) }
    })
    .await;
    assert!(
        relay.connections.load(Ordering::Relaxed) >= 2,
        "the connector dialled the relay again"
    );
    settle_and_stop(&sim, running).await;
    let rows = read_all(&line.out());
    for name in COUNTERS {
        let v = counter_values(&rows, name);
        assert_eq!(
            counter_defects(&v),
            (0, 0),
            "{name}: nothing lost or repeated across the cut: {v:?}"
        );
        assert_eq!(*v.last().unwrap(), truth(&sim, name));
    }
    eprintln!(
        "cut: reconnects {}, gaps {}, republished {}, lost {}",
        m.total(|p| &p.reconnects),
        m.total(|p| &p.sequence_gaps),
        m.total(|p| &p.republished),
        m.total(|p| &p.lost_messages)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribes_100k_monitored_items_in_under_5s() {
    let line = Line::new();
    let sim = start_sim(line.pki(), |c| c.scale = Some("100000@1s".parse().unwrap())).await;
    let text_group = r#"
  [[plc.group]]
  name = "scale"
  publishing_interval = "1s"
  sampling_interval = "0ms"
  browse = [{ root = "nsu=urn:opcua-connector:simulator:scale;s=Scale", recursive = false }]
"#;
    let running =
        runner::start(&line.config(sim.sim.endpoint_url(), "", text_group)).expect("runner starts");
    let m = running.metrics.clone();
    eventually("100,005 monitored items", Duration::from_secs(60), || {
        let m = m.clone();
        async move {
            (m.total(|p| &p.monitored_items) == 100_005 && m.total(|p| &p.subscribe_us) > 0)
                .then_some(())
        }
    })
    .await;
    let took = Duration::from_micros(m.total(|p| &p.subscribe_us));
    eprintln!(
        "100,005 monitored items (browse + create) subscribed in {:.2} s",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(5), "subscribe took {took:?}");
    eventually("scaled values arrive", Duration::from_secs(10), || {
        let m = m.clone();
        async move { (received(&m).await > 150_000).then_some(()) }
    })
    .await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn username_over_basic256sha256_sign_and_encrypt_and_an_untrusted_server_is_refused() {
    let line = Line::new();
    let sim = start_sim(line.pki(), |c| {
        c.users = vec![("connector".into(), "s3cret-pw".into())];
        c.anonymous = false;
    })
    .await;
    std::env::set_var("E2E_FILLER_PW", "s3cret-pw");
    let secure = r#"security_policy = "Basic256Sha256"
security_mode = "SignAndEncrypt"
auth = { username = "connector", password_env = "E2E_FILLER_PW" }"#;
    let running =
        runner::start(&line.config(sim.sim.endpoint_url(), secure, "")).expect("runner starts");
    let m = running.metrics.clone();
    eventually("secure samples", Duration::from_secs(20), || {
        let m = m.clone();
        async move { (received(&m).await >= 50).then_some(()) }
    })
    .await;
    running.stop().await;

    // A second connector with its own, empty PKI that does not trust unknown servers.
    let strict = Line::new();
    let mut config = strict.config(sim.sim.endpoint_url(), secure, "");
    config.pki.trust_unknown_servers = false;
    let running = runner::start(&config).expect("runner starts");
    let rejected = config.pki.dir.join("rejected");
    let file = eventually(
        "server certificate in rejected/",
        Duration::from_secs(20),
        || {
            let rejected = rejected.clone();
            async move {
                std::fs::read_dir(&rejected)
                    .ok()?
                    .flatten()
                    .map(|e| e.path())
                    .find(|p| p.extension().is_some_and(|x| x == "der"))
            }
        },
    )
    .await;
    eprintln!("refused certificate stored as {}", file.display());
    let m = running.metrics.clone();
    assert_eq!(received(&m).await, 0, "no data from an untrusted server");
    assert!(!m.plcs[0].connected.load(Ordering::Relaxed));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_and_uncertain_samples_are_kept_with_their_status() {
    let line = Line::new();
    let sim = start_sim(line.pki(), |_| {}).await;
    let running =
        runner::start(&line.config(sim.sim.endpoint_url(), "", "")).expect("runner starts");
    let m = running.metrics.clone();
    eventually("first samples", Duration::from_secs(20), || {
        let m = m.clone();
        async move { (received(&m).await >= 20).then_some(()) }
    })
    .await;
    let code = opcua::types::StatusCode::BadCommunicationError.bits();
    sim.sim.inject(FaultKind::Status {
        duration: Duration::from_millis(1500),
        code,
    });
    let at = received(&m).await;
    eventually(
        "samples during and after the status fault",
        Duration::from_secs(15),
        || {
            let m = m.clone();
            async move { (received(&m).await > at + 150).then_some(()) }
        },
    )
    .await;
    settle_and_stop(&sim, running).await;
    let rows = read_all(&line.out());
    for name in COUNTERS {
        let s = series(&rows, "fast", &counter_id(name));
        let bad = s.iter().filter(|r| r.status == code).count();
        assert!(
            bad >= 5,
            "{name}: {bad} samples kept with BadCommunicationError"
        );
        let good_after = s
            .iter()
            .skip_while(|r| r.status != code)
            .skip_while(|r| r.status == code)
            .count();
        assert!(good_after > 0, "{name}: Good again after the fault");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_reports_counters_and_health() {
    let line = Line::new();
    let sim = start_sim(line.pki(), |_| {}).await;
    let config = line.config(
        sim.sim.endpoint_url(),
        "",
        "\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
    );
    let running = runner::start(&config).expect("runner starts");
    let addr = running.metrics_addr.expect("metrics served");
    let m = running.metrics.clone();
    eventually("50 samples", Duration::from_secs(20), || {
        let m = m.clone();
        async move { (received(&m).await >= 50).then_some(()) }
    })
    .await;
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let build = format!(
        "opcua_connector_build_info{{line=\"line-t\",version=\"{}\",commit=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        connector::COMMIT
    );
    assert!(body.contains(&build), "{build} in {body}");
    let value = |name: &str| -> f64 {
        let prefix = format!("opcua_connector_{name}{{line=\"line-t\",plc=\"sim\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("{name} in {body}"))
            .parse()
            .unwrap()
    };
    assert!(value("samples_received_total") >= 50.0);
    assert_eq!(value("samples_discarded_total"), 0.0, "nothing given up");
    assert_eq!(value("plc_connected"), 1.0);
    assert_eq!(value("monitored_items"), 5.0);
    assert!(body.contains("# TYPE opcua_connector_samples_received_total counter"));
    assert!(!body.contains("nsu="), "labels never carry node ids");
    assert_eq!(http_get(addr, "/healthz").await.0, 200);
    assert_eq!(http_get(addr, "/nope").await.0, 404);

    sim.sim.inject(FaultKind::Restart {
        down: Duration::from_secs(5),
    });
    let why = eventually(
        "/healthz turns 503 while the PLC is away",
        Duration::from_secs(10),
        || async {
            let (status, body) = http_get(addr, "/healthz").await;
            (status == 503).then_some(body)
        },
    )
    .await;
    assert!(why.contains("plc sim not connected"), "{why}");
    running.stop().await;
}
