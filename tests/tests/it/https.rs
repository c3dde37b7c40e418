//! `[hub] transport = "https"`, the ephemeral pattern, against the HTTPS hub double (TLS with
//! the test CA, SAS checked with the device key): every schedule opens one connection, POSTs
//! what is buffered and closes it; a 60 s outage of the hub is buffered and delivered after,
//! every counter sample once.

use std::sync::atomic::Ordering;
use std::time::Duration;

use connector::runner;
use tests::front::tls_server;
use tests::https_hub::HttpsHub;
use tests::*;

const HOST: &str = "testhub.azure-devices.net";
const DEVICE: &str = "line-https";
const KEY: &str = "c2VjcmV0LWRldmljZS1rZXktMDAxLTAxMjM0NTY3ODk=";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_batches_arrive_on_fresh_connections_and_a_60_s_outage_is_delivered_after() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let d = dir.path().display();
    let tls = tls_server(
        &dir.path().join("server.pem"),
        &dir.path().join("server.key"),
        None,
    );
    let hub = HttpsHub::start(tls, HOST, DEVICE, KEY).await;
    let sim = start_sim(dir.path(), |_| {}).await;
    let env = "E2E_HUB_HTTPS_CS";
    std::env::set_var(
        env,
        format!("HostName={HOST};DeviceId={DEVICE};SharedAccessKey={KEY}"),
    );
    let cfg = counters_config(
        dir.path(),
        sim.sim.endpoint_url(),
        &format!(
            "[hub]\nconnection_string_env = \"{env}\"\ntransport = \"https\"\nsend_every = \"2s\"\n\
             endpoint = \"127.0.0.1:{}\"\nca_file = \"{d}/ca.pem\"\nbatch_max_delay = \"100ms\"\n\n\
             [buffer]\ndir = \"{d}/buffer\"\n",
            hub.port
        ),
    );
    let running = runner::start(&cfg).expect("runner");
    let m = running.hub.clone().expect("hub metrics");
    eventually("three schedules delivered", Duration::from_secs(30), || {
        let used = hub
            .posts()
            .iter()
            .map(|p| p.connection)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        async move { (used >= 3).then_some(()) }
    })
    .await;

    // The hub away for 60 s: the schedules fail, the telemetry stays buffered.
    hub.set_down(true);
    // A schedule under way when the hub went down may finish on its open connection.
    eventually(
        "every open connection closed",
        Duration::from_secs(30),
        || {
            let open = hub.connections().iter().any(|(_, closed)| closed.is_none());
            async move { (!open).then_some(()) }
        },
    )
    .await;
    let before = hub.accepted().len();
    let buffered = m.messages_buffered.load(Ordering::Relaxed);
    let outage = std::time::Instant::now();
    eventually("60 s of outage", Duration::from_secs(90), || {
        let over = outage.elapsed() >= Duration::from_secs(60);
        async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            over.then_some(())
        }
    })
    .await;
    let during = m.messages_buffered.load(Ordering::Relaxed) - buffered;
    assert!(
        during >= 100,
        "about 10 batches a second buffered during the outage: {during}"
    );
    assert_eq!(
        hub.accepted().len(),
        before,
        "nothing accepted while the hub was away"
    );
    hub.set_down(false);
    eventually("the backlog delivered", Duration::from_secs(60), || {
        let acked = m.messages_acked.load(Ordering::Relaxed);
        let all = m.messages_buffered.load(Ordering::Relaxed);
        async move { (acked >= all && acked > 0).then_some(()) }
    })
    .await;
    freeze_and_settle(&sim, || hub.accepted().len()).await;
    running.stop().await;

    let posts = hub.posts();
    assert!(
        posts.iter().all(|p| p.status == 204),
        "every POST authorized and on the device's path"
    );
    let first = &posts[0];
    assert_eq!(first.header("content-type"), Some("application/json"));
    assert_eq!(first.header("iothub-contentencoding"), Some("utf-8"));
    assert_eq!(
        (
            first.header("iothub-app-plc"),
            first.header("iothub-app-group")
        ),
        (Some("sim"), Some("fast"))
    );
    assert_bodies_complete(&sim, posts.iter().map(|p| p.body.as_slice()));
    // Connections: closed before the next schedule's opened (ephemeral), each used once.
    let connections = hub.connections();
    assert!(connections.len() >= 5, "{}", connections.len());
    for (i, w) in connections.windows(2).enumerate() {
        let closed = w[0]
            .1
            .unwrap_or_else(|| panic!("connection {i} was left open"));
        assert!(
            closed <= w[1].0,
            "connection {i} closed before connection {} opened",
            i + 1
        );
    }
}
