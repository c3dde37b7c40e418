//! The IoT Hub dialect over real TLS, with the `[hub] endpoint` override pointing at loopback:
//! SAS device and IoT Edge module identities through the hub front (TLS, CONNECT checked with
//! the key, [`tests::front`]), an X.509 device through mosquitto's TLS listener with
//! `require_certificate`, and the refusals: a wrong key and an untrusted certificate are
//! retried with the long back-off while telemetry stays buffered. Certificates are made by the
//! test (openssl).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use connector::runner;
use tests::front::{sas_check, tls_server};
use tests::*;

const HOST: &str = "testhub.azure-devices.net";
const KEY: &str = "c2VjcmV0LWRldmljZS1rZXktMDAxLTAxMjM0NTY3ODk=";
const OTHER_KEY: &str = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk=";

/// The hub's check of a SAS identity: client id, username and a token signed with `key`.
fn sas_identity(
    device: &'static str,
    module: Option<&'static str>,
    key: &'static str,
) -> impl Fn(&front::Connect) -> bool + Send + Sync + 'static {
    move |c| {
        let (client_id, resource) = match module {
            None => (device.to_owned(), format!("{HOST}/devices/{device}")),
            Some(m) => (
                format!("{device}/{m}"),
                format!("{HOST}/devices/{device}/modules/{m}"),
            ),
        };
        c.client_id == client_id
            && c.username == format!("{HOST}/{client_id}/?api-version=2021-04-12")
            && sas_check(&c.password, &resource, key, front::now_s()).is_ok()
    }
}

fn hub_line(dir: &Path, opc: &str, identity: &str, port: u16) -> connector::config::Config {
    let d = dir.display();
    counters_config(
        dir,
        opc,
        &format!(
            "[hub]\n{identity}\nendpoint = \"127.0.0.1:{port}\"\nca_file = \"{d}/ca.pem\"\nbatch_max_delay = \"100ms\"\n\n\
             [buffer]\ndir = \"{d}/buffer\"\n"
        ),
    )
}

fn connection_string(env: &str, device: &str, module: Option<&str>, key: &str) -> String {
    let module = module.map_or_else(String::new, |m| format!("ModuleId={m};"));
    std::env::set_var(
        env,
        format!("HostName={HOST};DeviceId={device};{module}SharedAccessKey={key}"),
    );
    format!("connection_string_env = \"{env}\"")
}

/// Every message on the device's telemetry topic, every counter sample once.
pub(super) fn assert_complete_hub(sim: &Sim, messages: &[(String, Vec<u8>)], prefix: &str) {
    for (topic, _) in messages {
        assert!(topic.starts_with(prefix), "{topic} starts with {prefix}");
    }
    assert_bodies_complete(sim, messages.iter().map(|(_, b)| b.as_slice()));
}

/// Waits for telemetry, settles, stops the connector, and checks every counter sample arrived
/// once on `prefix`.
async fn delivered_complete(
    what: &str,
    sim: &Sim,
    sub: &Subscriber,
    running: runner::Running,
    prefix: &str,
) {
    eventually(what, Duration::from_secs(40), || async {
        (sub.count() >= 10).then_some(())
    })
    .await;
    freeze_and_settle(sim, || sub.count()).await;
    running.stop().await;
    assert_complete_hub(sim, &sub.messages.lock().unwrap(), prefix);
}

async fn sas_over_tls(device: &'static str, module: Option<&'static str>, env: &str) {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let (_broker, plain) = plain_mosquitto(dir.path());
    let tls = tls_server(
        &dir.path().join("server.pem"),
        &dir.path().join("server.key"),
        None,
    );
    let hub = MqttFront::start(plain, Some(tls), sas_identity(device, module, KEY)).await;
    // As IoT Hub: a device or module publishing or subscribing outside its own topics loses
    // its connection.
    hub.guard(front::hub_topics);
    let sim = start_sim(dir.path(), |_| {}).await;
    let sub = Subscriber::start(plain, "devices/#").await;
    let identity = connection_string(env, device, module, KEY);
    let running = runner::start(&hub_line(
        dir.path(),
        sim.sim.endpoint_url(),
        &identity,
        hub.port,
    ))
    .expect("runner");
    let prefix = match module {
        None => format!("devices/{device}/messages/events/"),
        Some(m) => format!("devices/{device}/modules/{m}/messages/events/"),
    };
    delivered_complete("telemetry over TLS", &sim, &sub, running, &prefix).await;
    let connects = hub.connects();
    assert!(
        !connects.is_empty() && connects.iter().all(|c| c.accepted && !c.client_cert),
        "{connects:?}"
    );
    assert_eq!(hub.violations(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sas_device_over_tls_reaches_the_hub_with_a_checked_token() {
    sas_over_tls("line-tls", None, "E2E_HUB_TLS_DEVICE").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_iot_edge_module_over_tls_reaches_the_hub_with_a_checked_token() {
    sas_over_tls("line-tls", Some("opcua-connector"), "E2E_HUB_TLS_MODULE").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_over_tls_is_refused_paced_and_its_telemetry_delivered_once_accepted() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let (_broker, plain) = plain_mosquitto(dir.path());
    let tls = tls_server(
        &dir.path().join("server.pem"),
        &dir.path().join("server.key"),
        None,
    );
    let hub = MqttFront::start(plain, Some(tls), sas_identity("line-key", None, KEY)).await;
    let sim = start_sim(dir.path(), |_| {}).await;
    let sub = Subscriber::start(plain, "devices/#").await;
    let identity = connection_string("E2E_HUB_TLS_WRONG", "line-key", None, OTHER_KEY);
    let running = runner::start(&hub_line(
        dir.path(),
        sim.sim.endpoint_url(),
        &identity,
        hub.port,
    ))
    .expect("runner");
    let m = running.hub.clone().expect("hub metrics");
    eventually(
        "two refusals, telemetry buffered",
        Duration::from_secs(30),
        || {
            let (refused, buffered) = (hub.refused(), m.messages_buffered.load(Ordering::Relaxed));
            async move { (refused >= 2 && buffered >= 10).then_some(()) }
        },
    )
    .await;
    assert_eq!(sub.count(), 0, "nothing reaches the hub with a wrong key");
    let times: Vec<_> = hub.connects().iter().map(|c| c.at).collect();
    let gap = times[1] - times[0];
    assert!(
        gap >= Duration::from_millis(4500),
        "a refused key is retried after the long back-off (5 s), not at once: {gap:?}"
    );
    // The hub learns the key the device has (the operator fixed the registration).
    hub.set_check(sas_identity("line-key", None, OTHER_KEY));
    delivered_complete(
        "accepted after the fix",
        &sim,
        &sub,
        running,
        "devices/line-key/messages/events/",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_x509_device_reaches_mosquitto_requiring_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    signed(
        dir.path(),
        "device",
        "/CN=line-x509",
        "extendedKeyUsage=clientAuth\n",
    );
    let (plain, tls) = (free_port(), free_port());
    let d = dir.path().display();
    let conf = format!(
        "user root\nper_listener_settings false\nallow_anonymous true\nset_tcp_nodelay true\n\
         listener {plain} 127.0.0.1\n\
         listener {tls} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\nrequire_certificate true\n"
    );
    let _broker = mosquitto(dir.path(), &conf, &[plain, tls]);
    let sim = start_sim(dir.path(), |_| {}).await;
    let sub = Subscriber::start(plain, "devices/#").await;
    let identity = format!(
        "x509 = {{ host = \"{HOST}\", device_id = \"line-x509\", cert_file = \"{d}/device.pem\", key_file = \"{d}/device.key\" }}"
    );
    let running = runner::start(&hub_line(
        dir.path(),
        sim.sim.endpoint_url(),
        &identity,
        tls,
    ))
    .expect("runner");
    delivered_complete(
        "telemetry with the certificate",
        &sim,
        &sub,
        running,
        "devices/line-x509/messages/events/",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_device_certificate_is_refused_paced_and_telemetry_stays_buffered() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    // The device's certificate comes from a CA the hub does not know.
    let rogue = dir.path().join("rogue");
    std::fs::create_dir(&rogue).unwrap();
    certificates(&rogue);
    let (_broker, plain) = plain_mosquitto(dir.path());
    let tls = tls_server(
        &dir.path().join("server.pem"),
        &dir.path().join("server.key"),
        Some(&dir.path().join("ca.pem")),
    );
    let hub = MqttFront::start(plain, Some(tls), |_| true).await;
    let sim = start_sim(dir.path(), |_| {}).await;
    let sub = Subscriber::start(plain, "devices/#").await;
    let r = rogue.display();
    let identity = format!(
        "x509 = {{ host = \"{HOST}\", device_id = \"line-rogue\", cert_file = \"{r}/client.pem\", key_file = \"{r}/client.key\" }}"
    );
    let running = runner::start(&hub_line(
        dir.path(),
        sim.sim.endpoint_url(),
        &identity,
        hub.port,
    ))
    .expect("runner");
    let m = running.hub.clone().expect("hub metrics");
    eventually(
        "two refused handshakes, telemetry buffered",
        Duration::from_secs(30),
        || {
            let (tries, buffered) = (
                hub.attempts().len(),
                m.messages_buffered.load(Ordering::Relaxed),
            );
            async move { (tries >= 2 && buffered >= 10).then_some(()) }
        },
    )
    .await;
    running.stop().await;
    let times = hub.attempts();
    let gap = times[1] - times[0];
    assert!(
        gap >= Duration::from_millis(4500),
        "a refused certificate is retried after the long back-off (5 s), not at once: {gap:?}"
    );
    assert!(
        hub.connects().is_empty(),
        "no CONNECT got past the handshake"
    );
    assert_eq!(sub.count(), 0);
    assert!(!m.connected.load(Ordering::Relaxed));
}
