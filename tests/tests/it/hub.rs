//! The Azure IoT Hub device dialect against a hub test double: a front ([`tests::front`]) of
//! an embedded broker that reads every MQTT CONNECT and checks the client id, the username (with
//! the IoT Plug and Play model id) and the SAS password (verified with the device key) before
//! letting the connection through.

use std::path::Path;
use std::time::Duration;

use connector::config;
use connector::runner;
use tests::*;

const HOST: &str = "testhub.azure-devices.net";
const DEVICE: &str = "line-a-edge";
const KEY: &str = "c2VjcmV0LWRldmljZS1rZXktMDAxLTAxMjM0NTY3ODk=";
/// The IoT Plug and Play model the line announces (`[hub] model_id`), and as the username
/// carries it.
const MODEL: &str = "dtmi:com:example:opcua_connector:LineA;1";
const MODEL_IN_USERNAME: &str = "dtmi%3Acom%3Aexample%3Aopcua_connector%3ALineA%3B1";

/// The hub double: the front checking client id, username and SAS (with the device key)
/// before the broker.
async fn hub_double(broker: u16) -> MqttFront {
    MqttFront::start(broker, None, |c| {
        c.client_id == DEVICE
            && c.username
                == format!("{HOST}/{DEVICE}/?api-version=2021-04-12&model-id={MODEL_IN_USERNAME}")
            && front::sas_check(
                &c.password,
                &format!("{HOST}/devices/{DEVICE}"),
                KEY,
                front::now_s(),
            )
            .is_ok()
    })
    .await
}

fn hub_config(dir: &Path, opc: &str, hub_port: u16, env: &str) -> config::Config {
    counters_config(
        dir,
        opc,
        &format!(
            "[hub]\nconnection_string_env = \"{env}\"\ninsecure_endpoint = \"127.0.0.1:{hub_port}\"\nsas_ttl = \"3s\"\nbatch_max_delay = \"100ms\"\nmodel_id = \"{MODEL}\"\n\n[buffer]\ndir = \"{}\"\n",
            dir.join("buffer").display()
        ),
    )
}

/// The simulator, the hub double in front of an embedded broker, a subscriber to the
/// telemetry, and the connector with a connection string signed with `key` (in `env`).
async fn start_line(
    dir: &Path,
    env: &str,
    key: &str,
) -> (Sim, MqttFront, Subscriber, runner::Running) {
    let sim = start_sim(dir, |_| {}).await;
    let broker = start_broker();
    let seen = hub_double(broker).await;
    let hub_port = seen.port;
    let sub = Subscriber::start(broker, "devices/#").await;
    std::env::set_var(
        env,
        format!("HostName={HOST};DeviceId={DEVICE};SharedAccessKey={key}"),
    );
    let running =
        runner::start(&hub_config(dir, sim.sim.endpoint_url(), hub_port, env)).expect("runner");
    (sim, seen, sub, running)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_telemetry_with_sas_renewal_reaches_the_double_complete_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, seen, sub, running) = start_line(dir.path(), "E2E_HUB_CS", KEY).await;
    let hub = running.hub.clone().expect("hub metrics");
    // A 3 s token renews at 2.55 s: wait for two renewals while telemetry flows.
    eventually("two SAS renewals", Duration::from_secs(30), || {
        let n = hub.renewals.load(std::sync::atomic::Ordering::Relaxed);
        async move { (n >= 2).then_some(()) }
    })
    .await;
    eventually(
        "telemetry after the renewals",
        Duration::from_secs(10),
        || async { (sub.count() >= 30).then_some(()) },
    )
    .await;
    freeze_and_settle(&sim, || sub.count()).await;
    running.stop().await;

    let connects = seen.connects();
    assert!(
        connects.len() >= 3,
        "first connect and two renewals: {connects:?}"
    );
    assert!(
        connects.iter().all(|c| c.accepted),
        "every CONNECT had the right client id, username and a valid SAS token: {connects:?}"
    );
    // Renewals too announce the IoT Plug and Play model.
    assert!(connects.iter().all(|c| c.client_id == DEVICE
        && c.username
            == format!("{HOST}/{DEVICE}/?api-version=2021-04-12&model-id={MODEL_IN_USERNAME}")));
    let ses: Vec<u64> = connects
        .iter()
        .map(|c| c.password.rsplit("&se=").next().unwrap().parse().unwrap())
        .collect();
    assert!(
        ses.windows(2).all(|w| w[1] >= w[0]),
        "renewed tokens expire later: {ses:?}"
    );

    let mut seen_seq = std::collections::HashSet::new();
    let mut values: std::collections::BTreeMap<String, Vec<(u64, i128)>> = Default::default();
    for (topic, body) in sub.messages.lock().unwrap().iter() {
        assert!(
            topic.starts_with(&format!("devices/{DEVICE}/messages/events/")),
            "{topic}"
        );
        for p in [
            "$.ct=application%2Fjson",
            "$.ce=utf-8",
            "plc=sim",
            "group=fast",
        ] {
            assert!(topic.contains(p), "{topic} carries {p}");
        }
        assert!(body.len() <= 256 * 1024);
        let v: serde_json::Value = serde_json::from_slice(body).expect("JSON");
        let seq = v["seq"].as_u64().unwrap();
        if !seen_seq.insert(seq) {
            continue; // a repeat after a reconnect: dropped by seq, as a consumer does
        }
        for s in v["samples"].as_array().unwrap() {
            let x: i128 = json_int(&s["v"]);
            values
                .entry(s["node"].as_str().unwrap().to_owned())
                .or_default()
                .push((seq, x));
        }
    }
    for name in COUNTERS {
        let mut v = values[&counter_id(name)].clone();
        v.sort_by_key(|(seq, _)| *seq);
        let v: Vec<i128> = v.into_iter().map(|(_, x)| x).collect();
        assert_eq!(
            counter_defects(&v),
            (0, 0),
            "{name}: nothing lost across renewals: {v:?}"
        );
        assert_eq!(*v.last().unwrap(), truth_last(&sim, &counter_id(name)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_signed_with_the_wrong_key_is_refused_and_telemetry_stays_buffered() {
    let dir = tempfile::tempdir().unwrap();
    let wrong_key = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk=";
    let (_sim, seen, sub, running) = start_line(dir.path(), "E2E_HUB_CS_WRONG", wrong_key).await;
    let hub = running.hub.clone().expect("hub metrics");
    eventually(
        "refused connects and buffered telemetry",
        Duration::from_secs(20),
        || {
            let refused = seen.refused();
            let buffered = hub
                .messages_buffered
                .load(std::sync::atomic::Ordering::Relaxed);
            async move { (refused >= 2 && buffered >= 10).then_some(()) }
        },
    )
    .await;
    assert_eq!(seen.accepted(), 0);
    assert_eq!(sub.count(), 0, "nothing reaches the hub with a bad token");
    assert!(!hub.connected.load(std::sync::atomic::Ordering::Relaxed));
    running.stop().await;
}

/// A wrong key, for minutes: the connector backs off to at most 2 CONNECTs a minute after the
/// first minute (IoT Hub throttles and may block a device that retries every second) and says
/// why once, not per attempt. The connector runs as a process so that its log is read whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_retried_at_most_twice_a_minute_with_one_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), |_| {}).await;
    let broker = start_broker();
    let seen = hub_double(broker).await;
    let hub_port = seen.port;
    let env = "E2E_HUB_CS_WRONG_PACING";
    let text = format!(
        "[line]\nid = \"line-p\"\n\n[[plc]]\nid = \"sim\"\nendpoint = \"{}\"\n\n  [[plc.group]]\n  name = \"fast\"\n  \
         publishing_interval = \"100ms\"\n  nodes = [\"{}\"]\n\n[pki]\ndir = \"{}\"\ntrust_unknown_servers = true\n\n\
         [hub]\nconnection_string_env = \"{env}\"\ninsecure_endpoint = \"127.0.0.1:{hub_port}\"\n\n[buffer]\ndir = \"{}\"\n",
        sim.sim.endpoint_url(),
        counter_id(COUNTERS[0]),
        dir.path().join("pki").display(),
        dir.path().join("buffer").display(),
    );
    let path = dir.path().join("line.toml");
    std::fs::write(&path, text).unwrap();
    let log_path = dir.path().join("connector.log");
    let start = std::time::Instant::now();
    let connection = format!(
        "HostName={HOST};DeviceId={DEVICE};SharedAccessKey=d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk="
    );
    let mut child = ConnectorProcess::run(
        &path,
        &log_path,
        &[(env, connection.as_str()), ("RUST_LOG", "info")],
    );
    // Two minutes and a bit: the second minute is the one that counts.
    eventually(
        "two minutes of refusals",
        Duration::from_secs(150),
        || async { (start.elapsed() >= Duration::from_secs(125)).then_some(()) },
    )
    .await;
    child.terminate();
    child.exit_within(Duration::from_secs(30)).await;
    let connects = seen.connects();
    let offsets: Vec<f64> = connects
        .iter()
        .map(|c| c.at.duration_since(start).as_secs_f64())
        .collect();
    let second_minute = offsets
        .iter()
        .filter(|t| (60.0..120.0).contains(*t))
        .count();
    let log = std::fs::read_to_string(&log_path).unwrap();
    let lines = log.matches("refused the credentials").count();
    eprintln!(
        "wrong key: CONNECTs at {offsets:.1?} s; {second_minute} in the second minute; {lines} log line(s)"
    );
    assert!(connects.iter().all(|c| !c.accepted));
    assert!(connects.len() >= 3, "it kept trying: {offsets:?}");
    assert!(second_minute <= 2, "{offsets:?}");
    assert_eq!(lines, 1, "one line for the one cause:\n{log}");
}
