//! A foreign server's own certificate on a secure channel: node-opcua offers only
//! Basic256Sha256 / SignAndEncrypt with a user name and password, under the certificate it
//! makes itself, whose subject alternative names list DNS names and addresses before the
//! application URI (async-opcua 0.19 alone refuses that: "Application uri ... does not match
//! first alt name"; the connector checks the names in any order, `opcua::trust`). Values
//! flow, and a write from the cloud (an MQTT request) reaches the server.

use std::time::Duration;

use connector::config;
use connector::metrics::PlcMetrics;
use connector::runner;
use serde_json::json;
use tests::{eventually, free_port, start_broker, Subscriber};
use x509_cert::der::Decode;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;

use crate::busy::Peer;
use crate::writes::{answers, publisher, until_answered};

const USER: &str = "operator";
const PASSWORD: &str = "node-secure-pw";

/// The kinds of the certificate's alternative names, in order ("dns", "ip", "uri").
fn name_kinds(hex: &str) -> Vec<&'static str> {
    let der: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let cert = x509_cert::Certificate::from_der(&der).unwrap();
    let (_, san) = cert
        .tbs_certificate
        .get::<SubjectAltName>()
        .unwrap()
        .unwrap();
    san.0
        .iter()
        .map(|n| match n {
            GeneralName::DnsName(_) => "dns",
            GeneralName::IpAddress(_) => "ip",
            GeneralName::UniformResourceIdentifier(_) => "uri",
            _ => "other",
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic256sha256_with_a_user_against_node_opcua_values_flow_and_a_write_works() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let node_pki = dir.path().join("node-pki");
    let mut server = Peer::start(
        "secure_server.js",
        &[
            port.to_string(),
            node_pki.display().to_string(),
            USER.to_owned(),
            PASSWORD.to_owned(),
        ],
    );
    let certificate = server.line("certificate ", Duration::from_secs(60)).await;
    server.line("ready", Duration::from_secs(60)).await;
    let kinds = name_kinds(certificate.trim_start_matches("certificate "));
    assert_eq!(kinds.first(), Some(&"dns"), "a DNS name first: {kinds:?}");
    assert!(kinds.contains(&"uri"), "{kinds:?}");

    let broker = start_broker();
    let sub = Subscriber::start(broker, "opcua/plant/line-s/cmd/#").await;
    std::env::set_var("SECURE_NODE_PASSWORD", PASSWORD);
    let text = format!(
        r#"
[line]
id = "line-s"
site = "plant"

[[plc]]
id = "node"
endpoint = "opc.tcp://127.0.0.1:{port}"
security_policy = "Basic256Sha256"
security_mode = "SignAndEncrypt"
auth = {{ username = "{USER}", password_env = "SECURE_NODE_PASSWORD" }}

  [[plc.group]]
  name = "secure"
  publishing_interval = "100ms"
  nodes = ["ns=1;s=Secure.Counter"]

[pki]
dir = "{pki}"
trust_unknown_servers = true

[sink.parquet]
dir = "{out}"

[sink.mqtt]
url = "mqtt://127.0.0.1:{broker}"
allow_insecure_commands = true

[buffer]
dir = "{buffer}"

[[write]]
property = "setpoint"
plc = "node"
node = "ns=1;s=Secure.Setpoint"
type = "Double"
"#,
        pki = dir.path().join("pki").display(),
        out = dir.path().join("out").display(),
        buffer = dir.path().join("buffer").display(),
    );
    let config = config::parse(std::path::Path::new("secure-test.toml"), &text)
        .unwrap_or_else(|e| panic!("config: {e}"));
    let running = runner::start(&config).expect("connector");
    let m = running.metrics.plcs[0].clone();
    eventually(
        "counter values flow over the secure channel",
        Duration::from_secs(60),
        || {
            let n = PlcMetrics::get(&m.samples_received);
            async move { (n >= 10).then_some(()) }
        },
    )
    .await;

    let client = publisher(broker).await;
    let request = json!({"id": "s1", "property": "setpoint", "value": 42.5});
    let answer = until_answered(
        "the write answered",
        || {
            let (c, body) = (client.clone(), request.to_string());
            async move {
                c.publish(
                    "opcua/plant/line-s/cmd/write",
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    body,
                )
                .await
                .unwrap();
            }
        },
        || {
            answers(&sub, "opcua/plant/line-s/cmd/write/response")
                .into_iter()
                .find(|a| a["id"] == json!("s1") && a["status"] != json!(202))
        },
    )
    .await;
    assert_eq!(answer["status"], json!(200), "{answer}");
    assert_eq!(answer["value"], json!(42.5), "{answer}");
    // The server saw the write.
    server.line("written 42.5", Duration::from_secs(10)).await;
    running.stop().await;
}
