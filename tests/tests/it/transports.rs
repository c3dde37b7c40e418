//! The ways through a plant's firewall: MQTT over WebSockets with TLS (`wss://`, IoT Hub on
//! 443) to mosquitto's websockets listener, through tinyproxy (HTTP CONNECT) with and without
//! basic authentication. Both peers are real programs nobody here wrote; `.ci/run` installs
//! them. For the hub, a TLS front ([`tests::ws_front`]) before mosquitto's plain websockets
//! listener checks the upgrade request's path and subprotocol, as the hub does.

use std::path::Path;
use std::time::Duration;

use connector::runner;
use tests::front::tls_server;
use tests::proxy::Tinyproxy;
use tests::ws_front::{Upgrade, WsFront};
use tests::*;

/// mosquitto with a plain listener (subscribers, the hub double) and a websockets listener
/// with TLS (the test CA's server certificate for 127.0.0.1): (process, plain, websockets).
fn ws_mosquitto(dir: &Path) -> (Mosquitto, u16, u16) {
    let (plain, ws) = (free_port(), free_port());
    let d = dir.display();
    let conf = format!(
        "user root\nper_listener_settings false\nallow_anonymous true\nset_tcp_nodelay true\nmax_queued_messages 100000\n\
         listener {plain} 127.0.0.1\n\
         listener {ws} 127.0.0.1\nprotocol websockets\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n"
    );
    (mosquitto(dir, &conf, &[plain, ws]), plain, ws)
}

/// mosquitto with a plain listener and a plain websockets listener (behind a [`WsFront`]):
/// (process, plain, websockets).
fn plain_ws_mosquitto(dir: &Path) -> (Mosquitto, u16, u16) {
    let (plain, ws) = (free_port(), free_port());
    let conf = format!(
        "user root\nper_listener_settings false\nallow_anonymous true\nset_tcp_nodelay true\nmax_queued_messages 100000\n\
         listener {plain} 127.0.0.1\n\
         listener {ws} 127.0.0.1\nprotocol websockets\n"
    );
    (mosquitto(dir, &conf, &[plain, ws]), plain, ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_through_an_authenticating_proxy_delivers_every_counter_sample_once() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let (_broker, plain, ws) = ws_mosquitto(dir.path());
    let proxy = Tinyproxy::start(dir.path(), Some(("edge", "proxy-pw-1")));
    let pw = dir.path().join("proxy.pw");
    std::fs::write(&pw, "proxy-pw-1\n").unwrap();
    let sim = start_sim(dir.path(), |_| {}).await;
    let sub = Subscriber::start(plain, "opcua/#").await;
    let d = dir.path().display();
    let cfg = counters_config(
        dir.path(),
        sim.sim.endpoint_url(),
        &format!(
            "[sink.mqtt]\nurl = \"wss://127.0.0.1:{ws}/mqtt\"\nqos = 1\nbatch_max_samples = 50\nbatch_max_delay = \"100ms\"\n\
             tls = {{ ca_file = \"{d}/ca.pem\" }}\nproxy = \"{}\"\nproxy_username = \"edge\"\nproxy_password_file = \"{}\"\n\n\
             [buffer]\ndir = \"{d}/buffer\"\n",
            proxy.url(),
            pw.display()
        ),
    );
    let running = runner::start(&cfg).expect("runner");
    eventually("telemetry over wss", Duration::from_secs(30), || async {
        (sub.count() >= 20).then_some(())
    })
    .await;
    freeze_and_settle(&sim, || sub.count()).await;
    running.stop().await;
    let unique = unique_by_seq(&sub.messages.lock().unwrap());
    decode(&unique).assert_complete(&sim);
    let target = format!("127.0.0.1:{ws}");
    assert!(
        proxy.connects_to(&target) >= 1,
        "the proxy tunnelled the connection to {target}:\n{}",
        proxy.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_over_websockets_through_a_proxy_carries_telemetry() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let (_broker, plain, ws_plain) = plain_ws_mosquitto(dir.path());
    let tls = tls_server(
        &dir.path().join("server.pem"),
        &dir.path().join("server.key"),
        None,
    );
    let front = WsFront::start(ws_plain, tls, "/$iothub/websocket").await;
    let ws = front.port;
    let proxy = Tinyproxy::start(dir.path(), None);
    let sim = start_sim(dir.path(), |_| {}).await;
    let sub = Subscriber::start(plain, "devices/#").await;
    let env = "E2E_HUB_WSS_CS";
    std::env::set_var(
        env,
        "HostName=testhub.azure-devices.net;DeviceId=line-ws;SharedAccessKey=c2VjcmV0LWRldmljZS1rZXktMDAxLTAxMjM0NTY3ODk=",
    );
    let d = dir.path().display();
    let cfg = counters_config(
        dir.path(),
        sim.sim.endpoint_url(),
        &format!(
            "[hub]\nconnection_string_env = \"{env}\"\nendpoint = \"127.0.0.1:{ws}\"\ntransport = \"websockets\"\n\
             ca_file = \"{d}/ca.pem\"\nproxy = \"{}\"\nbatch_max_delay = \"100ms\"\n\n[buffer]\ndir = \"{d}/buffer\"\n",
            proxy.url()
        ),
    );
    let running = runner::start(&cfg).expect("runner");
    eventually(
        "hub telemetry over wss",
        Duration::from_secs(30),
        || async { (sub.count() >= 10).then_some(()) },
    )
    .await;
    running.stop().await;
    for (topic, _) in sub.messages.lock().unwrap().iter() {
        assert!(
            topic.starts_with("devices/line-ws/messages/events/"),
            "{topic}"
        );
    }
    let target = format!("127.0.0.1:{ws}");
    assert!(proxy.connects_to(&target) >= 1, "{}", proxy.log());
    // The hub's WebSocket path, asking for the mqtt subprotocol, on every connection.
    let upgrades = front.upgrades();
    let hub = Upgrade {
        path: "/$iothub/websocket".into(),
        protocol: Some("mqtt".into()),
        accepted: true,
    };
    assert!(
        !upgrades.is_empty() && upgrades.iter().all(|u| *u == hub),
        "{upgrades:?}"
    );
}
