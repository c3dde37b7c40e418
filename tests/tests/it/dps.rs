//! The Device Provisioning Service over real TLS: the DPS double ([`tests::dps_double`],
//! behind its own TLS front that checks the registration's SAS token) assigns the device, and
//! the hub front (TLS, the assigned device's SAS token checked with the same device key)
//! relays to the broker the test subscribes to, refusing (as IoT Hub) any topic that is not
//! the connected device's own. Both fronts are reached through the `endpoint` overrides with
//! the test CA. Registration, polling, the cached assignment across a restart, re-provisioning
//! when the hub refuses the identity (while running, and at a restart with the cache), a
//! rotated key, a throttled registration, an individual enrollment, an X.509 enrollment, and a
//! wrong key paced while telemetry stays buffered.

use std::sync::atomic::Ordering;
use std::time::Duration;

use connector::cloud::dps::cache::fingerprint;
use connector::runner;
use serde_json::{json, Value};
use tests::dps_double::dps_check;
use tests::front::{derived_key, sas_check, tls_server};
use tests::*;

use super::hub_tls::assert_complete_hub;

const HOST: &str = "plant-hub.azure-devices.net";
const SCOPE: &str = "0ne00000A0A";
const REG: &str = "line-m-edge";
// shared/research/dps-vectors.md.
const GROUP_KEY: &str = "R3JvdXBFbnJvbGxtZW50S2V5LXBsYW50LTEtMDEyMzQ1Njc4OWFiY2RlZg==";
const KEY: &str = "c2VjcmV0LWRwcy1pbmRpdmlkdWFsLWtleS0wMDE=";
const OTHER_GROUP_KEY: &str = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk=";
const ROTATED_KEY: &str = "cm90YXRlZC1kcHMtaW5kaXZpZHVhbC1rZXktMDAy";

/// The hub's check of a SAS device: client id, username and a token signed with `key`.
fn hub_identity(device: &str, key: &str) -> impl Fn(&front::Connect) -> bool + Send + Sync {
    let (device, key) = (device.to_owned(), key.to_owned());
    move |c| {
        c.client_id == device
            && c.username == format!("{HOST}/{device}/?api-version=2021-04-12")
            && sas_check(
                &c.password,
                &format!("{HOST}/devices/{device}"),
                &key,
                front::now_s(),
            )
            .is_ok()
    }
}

/// The hub's check of an X.509 device: client id, username, no password, and the
/// certificate DPS registered (`der`).
fn hub_certificate(device: &str, der: Vec<u8>) -> impl Fn(&front::Connect) -> bool + Send + Sync {
    let device = device.to_owned();
    move |c| {
        c.client_id == device
            && c.username == format!("{HOST}/{device}/?api-version=2021-04-12")
            && c.password.is_empty()
            && c.client_cert_der.as_ref() == Some(&der)
    }
}

/// The first certificate of a PEM file, DER.
fn certificate_der(pem: &std::path::Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::from_pem_file(pem)
        .unwrap()
        .to_vec()
}

/// From the first message of `device` on, only `device`'s telemetry.
fn assert_only_from_the_first(device: &str, messages: &[(String, Vec<u8>)]) {
    let own = format!("devices/{device}/messages/events/");
    let first = messages
        .iter()
        .position(|(t, _)| t.starts_with(&own))
        .unwrap_or_else(|| panic!("no message as {device}"));
    let others: Vec<&String> = messages[first..]
        .iter()
        .map(|(t, _)| t)
        .filter(|t| !t.starts_with(&own))
        .collect();
    assert!(others.is_empty(), "after the first as {device}: {others:?}");
}

/// A broker, the DPS double and the hub front before it, the simulator and a subscriber to
/// every device's telemetry.
struct Plant {
    dir: tempfile::TempDir,
    _broker: Mosquitto,
    dps: DpsDouble,
    hub: MqttFront,
    sim: Sim,
    sub: Subscriber,
}

impl Plant {
    /// DPS assigns `device` of [`HOST`]; the hub takes it with `hub_key`.
    async fn start(enrollment: Enrollment, device: &str, hub_key: &str) -> Plant {
        let dir = tempfile::tempdir().unwrap();
        certificates(dir.path());
        Plant::start_in(
            dir,
            enrollment,
            device,
            hub_identity(device, hub_key),
            false,
        )
        .await
    }

    /// In `dir`, where the test CA's certificates are: DPS with `enrollment` assigns `device`
    /// of [`HOST`]; the hub front takes the CONNECTs `hub_check` takes, and only the device's
    /// own topics. With `client_certificates` both fronts ask for a certificate of the CA.
    async fn start_in(
        dir: tempfile::TempDir,
        enrollment: Enrollment,
        device: &str,
        hub_check: impl Fn(&front::Connect) -> bool + Send + Sync + 'static,
        client_certificates: bool,
    ) -> Plant {
        let (broker, plain) = plain_mosquitto(dir.path());
        let ca = dir.path().join("ca.pem");
        let tls = tls_server(
            &dir.path().join("server.pem"),
            &dir.path().join("server.key"),
            client_certificates.then_some(ca.as_path()),
        );
        let dps = DpsDouble::start(plain, tls.clone(), SCOPE, enrollment, (HOST, device)).await;
        let hub = MqttFront::start(plain, Some(tls), hub_check).await;
        hub.guard(front::hub_topics);
        let sim = start_sim(dir.path(), |_| {}).await;
        let sub = Subscriber::start(plain, "devices/#").await;
        Plant {
            dir,
            _broker: broker,
            dps,
            hub,
            sim,
            sub,
        }
    }

    /// The counters line with `[hub]` (plus `hub_extra`) and `[dps]` with `credential`.
    fn config(&self, credential: &str, hub_extra: &str) -> connector::config::Config {
        let d = self.dir.path().display();
        counters_config(
            self.dir.path(),
            self.sim.sim.endpoint_url(),
            &format!(
                "[hub]\nendpoint = \"127.0.0.1:{}\"\nca_file = \"{d}/ca.pem\"\nbatch_max_delay = \"100ms\"\n{hub_extra}\n\n\
                 [dps]\nid_scope = \"{SCOPE}\"\nregistration_id = \"{REG}\"\nendpoint = \"127.0.0.1:{}\"\nca_file = \"{d}/ca.pem\"\n{credential}\n\n\
                 [buffer]\ndir = \"{d}/buffer\"\n",
                self.hub.port, self.dps.front.port
            ),
        )
    }

    fn messages(&self) -> Vec<(String, Vec<u8>)> {
        self.sub.messages.lock().unwrap().clone()
    }

    /// Messages on `device`'s telemetry topic.
    fn count(&self, device: &str) -> usize {
        let prefix = format!("devices/{device}/messages/events/");
        self.messages()
            .iter()
            .filter(|(t, _)| t.starts_with(&prefix))
            .count()
    }

    /// An individual enrollment with [`KEY`] assigning `device`: the plant, the key file and
    /// the `[dps]` line that names it.
    async fn individual(device: &str) -> (Plant, std::path::PathBuf, String) {
        let enrollment = Enrollment::Individual {
            registration_id: REG.into(),
            key: KEY.into(),
        };
        let p = Plant::start(enrollment, device, KEY).await;
        let file = p.dir.path().join("dps.key");
        std::fs::write(&file, format!("{KEY}\n")).unwrap();
        let credential = format!("symmetric_key_file = \"{}\"", file.display());
        (p, file, credential)
    }

    fn cached_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("buffer/dps/assignment.json")).unwrap()
    }

    fn cached(&self) -> Value {
        serde_json::from_str(&self.cached_text()).unwrap()
    }

    /// Waits until `device`'s telemetry topic has had `n` messages.
    async fn wait_for(&self, device: &str, n: usize) {
        eventually(
            &format!("{n} messages as {device}"),
            Duration::from_secs(40),
            || {
                let seen = self.count(device);
                async move { (seen >= n).then_some(()) }
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_enrollment_registers_polls_and_every_sample_reaches_the_assigned_device() {
    let p = Plant::start(
        Enrollment::Group {
            key: GROUP_KEY.into(),
        },
        "dev-a",
        &derived_key(GROUP_KEY, REG),
    )
    .await;
    std::env::set_var("E2E_DPS_GROUP", GROUP_KEY);
    let mut config = p.config("group_key_env = \"E2E_DPS_GROUP\"", "");
    config.metrics = Some(connector::config::MetricsConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
    });
    let running = runner::start(&config).expect("runner");
    eventually(
        "telemetry as the assigned device",
        Duration::from_secs(30),
        || {
            let n = p.count("dev-a");
            async move { (n >= 10).then_some(()) }
        },
    )
    .await;
    freeze_and_settle(&p.sim, || p.sub.count()).await;
    let m = running.metrics.dps.clone().expect("dps metrics");
    let text = metrics_text(running.metrics_addr.expect("metrics address")).await;
    running.stop().await;
    for line in [
        "opcua_connector_dps_registrations_total{line=\"line-m\",result=\"assigned\"} 1",
        "opcua_connector_dps_registrations_total{line=\"line-m\",result=\"refused\"} 0",
        "opcua_connector_dps_polls_total{line=\"line-m\"} 2",
        "opcua_connector_dps_cache_used_total{line=\"line-m\"} 0",
        "opcua_connector_dps_cache_errors_total{line=\"line-m\"} 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} not in /metrics:\n{text}"
        );
    }
    // One registration: 202 to the register and to the first poll, 200 to the second.
    assert_eq!(p.dps.registrations(), 1);
    assert_eq!(p.dps.polls(), 2);
    assert_eq!(p.dps.register_bodies(), [json!({"registrationId": REG})]);
    let dps = p.dps.front.connects();
    assert!(
        dps.len() == 1 && dps[0].accepted && dps[0].client_id == REG,
        "{dps:?}"
    );
    assert!(
        dps[0].username.starts_with(&format!(
            "{SCOPE}/registrations/{REG}/api-version=2019-03-31&ClientVersion=opcua-connector%2F"
        )),
        "{}",
        dps[0].username
    );
    let hub = p.hub.connects();
    assert!(!hub.is_empty() && hub.iter().all(|c| c.accepted), "{hub:?}");
    assert_eq!(m.assigned.load(Ordering::Relaxed), 1);
    assert_eq!(m.polls.load(Ordering::Relaxed), 2);
    let cached = p.cached();
    assert_eq!(
        (
            &cached["id_scope"],
            &cached["registration_id"],
            &cached["credential"],
            &cached["assigned_hub"],
            &cached["device_id"]
        ),
        (
            &json!(SCOPE),
            &json!(REG),
            &json!("group_key"),
            &json!(HOST),
            &json!("dev-a")
        )
    );
    assert_eq!(
        cached["credential_fingerprint"],
        json!(fingerprint(derived_key(GROUP_KEY, REG).as_bytes()))
    );
    assert_complete_hub(&p.sim, &p.messages(), "devices/dev-a/messages/events/");
    assert_eq!(p.hub.violations(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_uses_the_cached_assignment_without_registering() {
    let p = Plant::start(
        Enrollment::Group {
            key: GROUP_KEY.into(),
        },
        "dev-a",
        &derived_key(GROUP_KEY, REG),
    )
    .await;
    std::env::set_var("E2E_DPS_GROUP_RESTART", GROUP_KEY);
    let config = p.config("group_key_env = \"E2E_DPS_GROUP_RESTART\"", "");
    let running = runner::start(&config).expect("runner");
    eventually(
        "telemetry before the restart",
        Duration::from_secs(30),
        || {
            let n = p.count("dev-a");
            async move { (n >= 5).then_some(()) }
        },
    )
    .await;
    running.stop().await;
    assert_eq!(p.dps.registrations(), 1);
    let before = p.count("dev-a");
    let running = runner::start(&config).expect("runner again");
    eventually(
        "telemetry after the restart",
        Duration::from_secs(30),
        || {
            let n = p.count("dev-a");
            async move { (n >= before + 10).then_some(()) }
        },
    )
    .await;
    let m = running.metrics.dps.clone().expect("dps metrics");
    running.stop().await;
    assert_eq!(p.dps.registrations(), 1, "the cache was used");
    assert_eq!(p.dps.front.connects().len(), 1, "DPS was not even asked");
    assert_eq!(
        (
            m.cache_used.load(Ordering::Relaxed),
            m.assigned.load(Ordering::Relaxed)
        ),
        (1, 0)
    );
    assert_eq!(p.count("dev-a"), p.sub.count(), "all as the cached device");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_refusing_the_identity_registers_once_more_and_loses_nothing() {
    let device_key = derived_key(GROUP_KEY, REG);
    let p = Plant::start(
        Enrollment::Group {
            key: GROUP_KEY.into(),
        },
        "dev-a",
        &device_key,
    )
    .await;
    std::env::set_var("E2E_DPS_GROUP_MOVE", GROUP_KEY);
    // A 3 s token: the connector reconnects every 2 s, and so meets the hub's new mind.
    let running =
        runner::start(&p.config("group_key_env = \"E2E_DPS_GROUP_MOVE\"", "sas_ttl = \"3s\""))
            .expect("runner");
    eventually("telemetry as dev-a", Duration::from_secs(30), || {
        let n = p.count("dev-a");
        async move { (n >= 10).then_some(()) }
    })
    .await;
    // The device is re-provisioned: DPS now assigns dev-b, and the hub no longer takes dev-a.
    p.dps.assign(HOST, "dev-b");
    p.hub.set_check(hub_identity("dev-b", &device_key));
    eventually("telemetry as dev-b", Duration::from_secs(40), || {
        let n = p.count("dev-b");
        async move { (n >= 10).then_some(()) }
    })
    .await;
    freeze_and_settle(&p.sim, || p.sub.count()).await;
    let m = running.metrics.dps.clone().expect("dps metrics");
    running.stop().await;
    assert_eq!(p.dps.registrations(), 2, "exactly one new registration");
    assert_eq!(m.reprovisions.load(Ordering::Relaxed), 1);
    assert_eq!(p.cached()["device_id"], "dev-b");
    // Once dev-b is connected, everything goes out as dev-b, what was buffered as dev-a too.
    let messages = p.messages();
    assert_only_from_the_first("dev-b", &messages);
    assert!(
        p.hub
            .connects()
            .iter()
            .any(|c| !c.accepted && c.client_id == "dev-a"),
        "the hub refused dev-a"
    );
    // Every counter sample once, in order, across both identities.
    assert_complete_hub(&p.sim, &messages, "devices/dev-");
    // What was buffered as dev-a went out on dev-b's topic: the hub would have dropped the
    // connection otherwise.
    assert_eq!(p.hub.violations(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_whose_cached_identity_the_hub_refuses_registers_at_once() {
    let device_key = derived_key(GROUP_KEY, REG);
    let p = Plant::start(
        Enrollment::Group {
            key: GROUP_KEY.into(),
        },
        "dev-a",
        &device_key,
    )
    .await;
    std::env::set_var("E2E_DPS_GROUP_STALE", GROUP_KEY);
    let config = p.config("group_key_env = \"E2E_DPS_GROUP_STALE\"", "");
    let running = runner::start(&config).expect("runner");
    p.wait_for("dev-a", 5).await;
    running.stop().await;
    // While the connector is stopped the device is moved: DPS now assigns dev-b, and the hub
    // no longer takes dev-a.
    p.dps.assign(HOST, "dev-b");
    p.hub.set_check(hub_identity("dev-b", &device_key));
    let running = runner::start(&config).expect("runner again");
    p.wait_for("dev-b", 10).await;
    let m = running.metrics.dps.clone().expect("dps metrics");
    running.stop().await;
    let counted = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    assert_eq!(
        (
            counted(&m.cache_used),
            counted(&m.reprovisions),
            counted(&m.assigned)
        ),
        (1, 1, 1),
        "the cache tried, refused, one registration"
    );
    assert_eq!(p.dps.registrations(), 2);
    assert_eq!(p.cached()["device_id"], "dev-b");
    let refused = p
        .hub
        .connects()
        .into_iter()
        .find(|c| !c.accepted)
        .expect("the hub refused the cached identity");
    assert_eq!(refused.client_id, "dev-a");
    // A cached identity refused at start is re-registered at once, not after the 5 s back-off.
    let again = p.dps.register_times()[1];
    let waited = again.saturating_duration_since(refused.at);
    assert!(waited < Duration::from_millis(4500), "{waited:?}");
    // The broker routed every dev-a message of the first run before the second run existed:
    // from the first dev-b message on, only dev-b.
    assert_only_from_the_first("dev-b", &p.messages());
    assert_eq!(p.hub.violations(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_registers_again_instead_of_offering_the_hub_the_old_assignment() {
    let (p, file, credential) = Plant::individual("dev-i").await;
    let config = p.config(&credential, "");
    let running = runner::start(&config).expect("runner");
    p.wait_for("dev-i", 5).await;
    running.stop().await;
    let before = p.cached();
    // The key is rotated: in the enrollment, in the file, and (by the registration that
    // follows, as DPS does) on the hub.
    p.dps.front.set_check(dps_check(
        SCOPE,
        Enrollment::Individual {
            registration_id: REG.into(),
            key: ROTATED_KEY.into(),
        },
    ));
    p.hub.set_check(hub_identity("dev-i", ROTATED_KEY));
    std::fs::write(&file, format!("{ROTATED_KEY}\n")).unwrap();
    let n = p.count("dev-i");
    let running = runner::start(&config).expect("runner again");
    p.wait_for("dev-i", n + 10).await;
    let m = running.metrics.dps.clone().expect("dps metrics");
    running.stop().await;
    assert_eq!(p.dps.registrations(), 2, "registered with the new key");
    assert_eq!(m.cache_used.load(Ordering::Relaxed), 0);
    assert_eq!(p.hub.refused(), 0, "the hub was not offered the old key");
    let after = p.cached();
    assert_eq!(
        after["credential_fingerprint"],
        json!(fingerprint(ROTATED_KEY.as_bytes()))
    );
    assert_ne!(
        after["credential_fingerprint"],
        before["credential_fingerprint"]
    );
    let text = p.cached_text();
    assert!(
        !text.contains(KEY) && !text.contains(ROTATED_KEY),
        "no key in the cache: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_registration_waits_the_retry_after_dps_gives() {
    let p = Plant::start(
        Enrollment::Group {
            key: GROUP_KEY.into(),
        },
        "dev-t",
        &derived_key(GROUP_KEY, REG),
    )
    .await;
    p.dps.throttle(1, 3);
    std::env::set_var("E2E_DPS_GROUP_THROTTLED", GROUP_KEY);
    let running = runner::start(&p.config("group_key_env = \"E2E_DPS_GROUP_THROTTLED\"", ""))
        .expect("runner");
    p.wait_for("dev-t", 10).await;
    freeze_and_settle(&p.sim, || p.sub.count()).await;
    let m = running.metrics.dps.clone().expect("dps metrics");
    running.stop().await;
    let times = p.dps.register_times();
    assert_eq!(times.len(), 2, "429, then assigned");
    let gap = times[1] - times[0];
    assert!(
        gap >= Duration::from_millis(2900),
        "the retry waits DPS's retry-after (3 s), not the 1 s back-off: {gap:?}"
    );
    let counted = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    assert_eq!(
        (
            counted(&m.throttled),
            counted(&m.errors),
            counted(&m.assigned)
        ),
        (1, 0, 1)
    );
    // Buffered meanwhile, every sample delivered.
    assert_complete_hub(&p.sim, &p.messages(), "devices/dev-t/messages/events/");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_x509_enrollment_registers_with_its_certificate_and_the_hub_takes_the_same_one() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    // DPS takes the certificate's CN as the registration id.
    signed(
        dir.path(),
        REG,
        &format!("/CN={REG}"),
        "extendedKeyUsage=clientAuth\n",
    );
    let der = certificate_der(&dir.path().join(format!("{REG}.pem")));
    let enrollment = Enrollment::X509 {
        registration_id: REG.into(),
        certificate: der.clone(),
    };
    let p = Plant::start_in(
        dir,
        enrollment,
        "dev-x",
        hub_certificate("dev-x", der.clone()),
        true,
    )
    .await;
    let d = p.dir.path().display();
    let credential =
        format!("x509 = {{ cert_file = \"{d}/{REG}.pem\", key_file = \"{d}/{REG}.key\" }}");
    let running = runner::start(&p.config(&credential, "")).expect("runner");
    p.wait_for("dev-x", 10).await;
    freeze_and_settle(&p.sim, || p.sub.count()).await;
    running.stop().await;
    assert_eq!(p.dps.registrations(), 1);
    let dps = p.dps.front.connects();
    assert!(
        dps.len() == 1 && dps[0].accepted && dps[0].client_cert && dps[0].password.is_empty(),
        "{dps:?}"
    );
    let hub = p.hub.connects();
    assert!(
        !hub.is_empty() && hub.iter().all(|c| c.accepted && c.client_cert),
        "{hub:?}"
    );
    let cached = p.cached();
    assert_eq!(
        (&cached["credential"], &cached["device_id"]),
        (&json!("x509"), &json!("dev-x"))
    );
    assert_eq!(cached["credential_fingerprint"], json!(fingerprint(&der)));
    assert_complete_hub(&p.sim, &p.messages(), "devices/dev-x/messages/events/");
    assert_eq!(p.hub.violations(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_individual_enrollment_registers_with_its_own_key() {
    let (p, _, credential) = Plant::individual("dev-i").await;
    let running = runner::start(&p.config(&credential, "")).expect("runner");
    eventually("telemetry as dev-i", Duration::from_secs(30), || {
        let n = p.count("dev-i");
        async move { (n >= 10).then_some(()) }
    })
    .await;
    running.stop().await;
    assert_eq!(p.dps.registrations(), 1);
    assert_eq!(p.cached()["credential"], "symmetric_key");
    assert_eq!(p.count("dev-i"), p.sub.count());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_refused_by_dps_paced_and_the_telemetry_stays_buffered() {
    let p = Plant::start(
        Enrollment::Group {
            key: GROUP_KEY.into(),
        },
        "dev-w",
        &derived_key(GROUP_KEY, REG),
    )
    .await;
    std::env::set_var("E2E_DPS_GROUP_WRONG", OTHER_GROUP_KEY);
    let running =
        runner::start(&p.config("group_key_env = \"E2E_DPS_GROUP_WRONG\"", "")).expect("runner");
    let hub_m = running.hub.clone().expect("hub metrics");
    let m = running.metrics.dps.clone().expect("dps metrics");
    eventually(
        "two refusals, telemetry buffered",
        Duration::from_secs(30),
        || {
            let (refused, buffered) = (
                p.dps.front.refused(),
                hub_m.messages_buffered.load(Ordering::Relaxed),
            );
            async move { (refused >= 2 && buffered >= 10).then_some(()) }
        },
    )
    .await;
    let connects = p.dps.front.connects();
    let gap = connects[1].at - connects[0].at;
    let counted = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let (refused, errors) = (counted(&m.refused), counted(&m.errors));
    assert!(
        gap >= Duration::from_millis(4500),
        "a refused key is retried after the long back-off (5 s), not at once: {gap:?} (counted refused {refused}, errors {errors}; {connects:?})"
    );
    assert!(
        refused >= 2 && errors == 0,
        "refused {refused}, errors {errors}"
    );
    assert_eq!(p.dps.registrations(), 0);
    assert!(p.hub.connects().is_empty(), "no identity, no hub");
    assert_eq!(p.sub.count(), 0);
    // The group key is corrected (read again at each attempt): what was buffered arrives.
    std::env::set_var("E2E_DPS_GROUP_WRONG", GROUP_KEY);
    eventually("assigned after the fix", Duration::from_secs(40), || {
        let n = p.count("dev-w");
        async move { (n >= 10).then_some(()) }
    })
    .await;
    freeze_and_settle(&p.sim, || p.sub.count()).await;
    running.stop().await;
    assert_eq!(p.dps.registrations(), 1);
    assert_complete_hub(&p.sim, &p.messages(), "devices/dev-w/messages/events/");
}

#[test]
fn the_double_refuses_what_dps_refuses() {
    let connect = |client_id: &str, password: String| front::Connect {
        client_id: client_id.into(),
        username: format!("{SCOPE}/registrations/{client_id}/api-version=2019-03-31"),
        password,
        client_cert: false,
        client_cert_der: None,
        accepted: false,
        at: std::time::Instant::now(),
    };
    let token = |reg: &str, key: &str| {
        connector::cloud::dps::protocol::password(SCOPE, reg, key, front::now_s() + 60).unwrap()
    };
    let group = dps_check(
        SCOPE,
        Enrollment::Group {
            key: GROUP_KEY.into(),
        },
    );
    assert!(group(&connect(
        REG,
        token(REG, &derived_key(GROUP_KEY, REG))
    )));
    assert!(
        !group(&connect(REG, token(REG, GROUP_KEY))),
        "the group key itself"
    );
    assert!(!group(&connect(
        "other",
        token(REG, &derived_key(GROUP_KEY, REG))
    )));
    let single = dps_check(
        SCOPE,
        Enrollment::Individual {
            registration_id: REG.into(),
            key: KEY.into(),
        },
    );
    assert!(single(&connect(REG, token(REG, KEY))));
    assert!(!single(&connect("other", token("other", KEY))));
}
