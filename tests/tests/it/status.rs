//! The connector's own status in the cloud: the retained status topic of `[sink.mqtt]` with
//! its last will (mosquitto publishes it when the process is killed), the `stopped` message of
//! a clean stop, and the hub's reported property `connectorStatus` following a PLC session
//! (a PATCH the hub throttles is sent again).

use std::path::Path;
use std::time::Duration;

use connector::runner;
use serde_json::Value;
use tests::*;

const STATUS: &str = "opcua/plant/line-m/status";

/// The status messages received so far, parsed.
fn statuses(sub: &Subscriber) -> Vec<Value> {
    sub.messages
        .lock()
        .unwrap()
        .iter()
        .map(|(t, b)| {
            assert_eq!(t, STATUS);
            serde_json::from_slice(b).unwrap()
        })
        .collect()
}

async fn wait_status(sub: &Subscriber, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    eventually(what, Duration::from_secs(30), || {
        let found = statuses(sub).into_iter().rev().find(|v| ok(v));
        async move { found }
    })
    .await
}

fn status_sinks(dir: &Path, port: u16) -> String {
    format!(
        "[sink.mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nstatus_topic = \"opcua/{{site}}/{{line}}/status\"\nstatus_interval = \"1s\"\n\n\
         [buffer]\ndir = \"{}\"\n",
        dir.join("buffer").display()
    )
}

/// The status retained on the broker now, as a new subscriber sees it.
async fn retained(port: u16) -> Value {
    let sub = Subscriber::start(port, STATUS).await;
    eventually("the retained status", Duration::from_secs(10), || async {
        (sub.count() > 0).then_some(())
    })
    .await;
    statuses(&sub).remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_topic_says_online_and_the_will_offline_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), |_| {}).await;
    let (_broker, port) = plain_mosquitto(dir.path());
    let sub = Subscriber::start(port, STATUS).await;
    let text = format!(
        "[line]\nid = \"line-m\"\nsite = \"plant\"\n\n[[plc]]\nid = \"sim\"\nendpoint = \"{}\"\n\n  [[plc.group]]\n  name = \"fast\"\n  \
         publishing_interval = \"100ms\"\n  nodes = [\"{}\"]\n\n[pki]\ndir = \"{}\"\ntrust_unknown_servers = true\n\n{}",
        sim.sim.endpoint_url(),
        counter_id("Filler.BottlesFilled"),
        dir.path().join("pki").display(),
        status_sinks(dir.path(), port)
    );
    let config = dir.path().join("line.toml");
    std::fs::write(&config, text).unwrap();
    let mut process = ConnectorProcess::run(&config, &dir.path().join("connector.log"), &[]);
    let online = wait_status(&sub, "online with the PLC connected", |v| {
        v["state"] == "online" && v["plcs"]["sim"] == "connected"
    })
    .await;
    assert_eq!(online["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        (online["line"].as_str(), online["plcs_total"].as_u64()),
        (Some("line-m"), Some(1))
    );
    assert!(online["backlog"]["messages"].is_u64(), "{online}");
    assert_eq!(retained(port).await["state"], "online");

    process.kill();
    let will = wait_status(&sub, "the last will", |v| v["state"] == "offline").await;
    assert_eq!(will["reason"], "connection lost");
    assert!(
        will["at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{will}"
    );
    drop(sub);
    let after = retained(port).await;
    assert_eq!(
        (after["state"].as_str(), after["reason"].as_str()),
        (Some("offline"), Some("connection lost")),
        "the will is retained: {after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_leaves_offline_stopped_retained() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), |_| {}).await;
    let (_broker, port) = plain_mosquitto(dir.path());
    let sub = Subscriber::start(port, STATUS).await;
    let cfg = counters_config(
        dir.path(),
        sim.sim.endpoint_url(),
        &status_sinks(dir.path(), port),
    );
    let running = runner::start(&cfg).expect("runner");
    wait_status(&sub, "online", |v| v["state"] == "online").await;
    running.stop().await;
    drop(sub);
    let after = retained(port).await;
    assert_eq!(
        (after["state"].as_str(), after["reason"].as_str()),
        (Some("offline"), Some("stopped")),
        "{after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_twin_reports_the_connector_state_and_follows_the_plc_session() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), |_| {}).await;
    let (_broker, port) = plain_mosquitto(dir.path());
    let hub = HubDouble::start(port).await;
    let env = "E2E_STATUS_HUB_CS";
    std::env::set_var(
        env,
        "HostName=testhub.azure-devices.net;DeviceId=line-status;SharedAccessKey=c2VjcmV0LWRldmljZS1rZXktMDAxLTAxMjM0NTY3ODk=",
    );
    let cfg = counters_config(
        dir.path(),
        sim.sim.endpoint_url(),
        &format!(
            "[hub]\nconnection_string_env = \"{env}\"\ninsecure_endpoint = \"127.0.0.1:{port}\"\nstatus_interval = \"1s\"\n\n\
             [buffer]\ndir = \"{}\"\n",
            dir.path().join("buffer").display()
        ),
    );
    let running = runner::start(&cfg).expect("runner");
    // The first patch from `from` on whose PLC session is `state`.
    let reported = |state: &'static str, from: usize| {
        let hub = &hub;
        async move {
            eventually(
                &format!("connectorStatus with the PLC {state}"),
                Duration::from_secs(30),
                || {
                    let found = hub
                        .patch_log()
                        .into_iter()
                        .skip(from)
                        .find(|p| p["connectorStatus"]["plcs"]["sim"] == state);
                    async move { found }
                },
            )
            .await
        }
    };
    let up = reported("connected", 0).await;
    let s = &up["connectorStatus"];
    assert_eq!(
        (
            s["state"].as_str(),
            s["version"].as_str(),
            s["plcs_connected"].as_u64()
        ),
        (Some("online"), Some(env!("CARGO_PKG_VERSION")), Some(1)),
        "{up}"
    );
    // The hub throttles the next PATCH (429): counted, and sent again after the interval.
    hub.throttle_patches(1);
    let before = hub.patch_log().len();
    sim.sim.inject(simulator::FaultKind::Restart {
        down: Duration::from_secs(4),
    });
    let down = reported("disconnected", before).await;
    assert_eq!(
        hub.throttled(),
        1,
        "the first report of the change was throttled"
    );
    let m = running.hub.clone().expect("hub metrics");
    assert_eq!(
        m.status_failures.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(down["connectorStatus"]["plcs_connected"], 0);
    let n = hub.patch_log().len();
    let back = reported("connected", n).await;
    assert_eq!(back["connectorStatus"]["plcs_connected"], 1);
    // On change only: no patch while nothing changes. An absence, so watched over a window
    // of three intervals (not a wait for something to happen).
    let settled = hub.patch_log().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        hub.patch_log().len() <= settled + 1,
        "no update without a change: {:?}",
        &hub.patch_log()[settled..]
    );
    running.stop().await;
}
