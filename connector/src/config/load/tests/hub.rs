//! `[hub]`: its identity, transport, endpoints, roots and batching.

use super::sinks::{parse_ok, with_table};
use super::*;

pub(super) const HUB_CS: &str = "connection_string_env = \"IOTHUB_CS\"\nca_file = \"ca.pem\"";

pub(super) fn hub_of(body: &str) -> HubConfig {
    parse_ok(&with_table("hub", body)).hub.unwrap()
}

#[test]
fn hub_endpoint_keeps_tls_and_websockets_is_a_transport() {
    let h = hub_of(&format!(
        "{HUB_CS}\nendpoint = \"hub.plant.local:8883\"\ntransport = \"websockets\""
    ));
    assert_eq!(
        (h.endpoint.as_deref(), h.transport),
        (Some("hub.plant.local:8883"), HubTransport::WebSockets)
    );
    assert_eq!(hub_of(HUB_CS).transport, HubTransport::Mqtt);
    for (body, key, part) in [
        ("endpoint = \"h\"", "hub.endpoint", "has no port"),
        (
            "endpoint = \"mqtts://h:1\"",
            "hub.endpoint",
            "without a scheme",
        ),
        (
            "transport = \"amqp\"",
            "hub.transport",
            "unknown transport \"amqp\"",
        ),
    ] {
        let text = with_table("hub", &format!("{HUB_CS}\n{body}"));
        assert_problem(&text, 17, key, part);
    }
    let text = with_table(
        "hub",
        "connection_string_env = \"CS\"\ninsecure_endpoint = \"127.0.0.1:1\"\nendpoint = \"127.0.0.1:2\"",
    );
    assert_problem(&text, 17, "hub.endpoint", "not both");
    let text = with_table(
        "hub",
        "connection_string_env = \"CS\"\ninsecure_endpoint = \"127.0.0.1:1\"\ntransport = \"websockets\"",
    );
    assert_problem(&text, 17, "hub.transport", "not with insecure_endpoint");
    // endpoint is TLS: the CA is still required.
    let text = with_table(
        "hub",
        "connection_string_env = \"CS\"\nendpoint = \"127.0.0.1:2\"",
    );
    assert_problem(&text, 14, "hub.ca_file", "missing");
}

#[test]
fn https_transport_sends_on_a_schedule_and_serves_no_requests() {
    let h = hub_of(&format!("{HUB_CS}\ntransport = \"https\""));
    assert_eq!(
        h.transport,
        HubTransport::Https {
            send_every: Duration::from_secs(60)
        }
    );
    let h = hub_of(&format!(
        "{HUB_CS}\ntransport = \"https\"\nsend_every = \"5s\""
    ));
    assert_eq!(
        h.transport,
        HubTransport::Https {
            send_every: Duration::from_secs(5)
        }
    );
    for (body, key, part) in [
        (
            "transport = \"https\"\nsend_every = \"10ms\"",
            "hub.send_every",
            "at least 1s",
        ),
        (
            "send_every = \"5s\"",
            "hub.send_every",
            "goes with transport",
        ),
        (
            "transport = \"https\"\nstatus_interval = \"5s\"",
            "hub.status_interval",
            "need the twin",
        ),
    ] {
        let text = with_table("hub", &format!("{HUB_CS}\n{body}"));
        assert_problem(&text, 16 + body.lines().count(), key, part);
    }
    let text = format!(
        "{}\n[[write]]\nproperty = \"speed\"\nplc = \"filler\"\nnode = \"ns=2;s=Speed\"\ntype = \"Double\"\n",
        with_table("hub", &format!("{HUB_CS}\ntransport = \"https\""))
    );
    assert_problem(&text, 19, "write[0]", "carries telemetry only");
}

#[test]
fn hub_defaults_and_connection_string_sources() {
    let h = hub_of(HUB_CS);
    assert_eq!(
        h,
        HubConfig {
            auth: HubAuth::ConnectionString(Secret::Env("IOTHUB_CS".into())),
            sas_ttl: Duration::from_secs(3600),
            insecure_endpoint: None,
            https_endpoint: None,
            endpoint: None,
            transport: HubTransport::Mqtt,
            proxy: None,
            ca_file: Some(CaRoots::File("ca.pem".into())),
            batch_max_samples: NonZeroUsize::new(500).unwrap(),
            batch_max_delay: Duration::from_millis(200),
            payload: Payload::Json,
            pending_write_max_age: Duration::from_secs(3600),
            status_interval: None,
            model_id: None,
        }
    );
    // The variable is not read while loading: IOTHUB_CS does not exist here.
    assert!(std::env::var_os("IOTHUB_CS").is_none());
    let h = hub_of("connection_string_file = \"/run/secrets/cs\"\ninsecure_endpoint = \"127.0.0.1:1883\"\nsas_ttl = \"2s\"");
    assert_eq!(
        h.auth,
        HubAuth::ConnectionString(Secret::File("/run/secrets/cs".into()))
    );
    assert_eq!(
        (h.insecure_endpoint.as_deref(), h.ca_file, h.sas_ttl),
        (Some("127.0.0.1:1883"), None, Duration::from_secs(2))
    );
}

#[test]
fn hub_model_id_is_a_versioned_dtmi() {
    let h = hub_of(&format!(
        "{HUB_CS}\nmodel_id = \"dtmi:com:example:BottlingLine;2\""
    ));
    assert_eq!(
        h.model_id.as_deref(),
        Some("dtmi:com:example:BottlingLine;2")
    );
    assert_eq!(hub_of(HUB_CS).model_id, None);
    for (value, why) in [
        ("dtmi:com:example:BottlingLine", "has no version"),
        ("urn:com:example;1", "is not a DTMI"),
        (
            "dtmi:com:example:Bottling-Line;1",
            "segment \"Bottling-Line\"",
        ),
        ("dtmi:dtdl:Line;1", "reserves"),
    ] {
        let text = with_table("hub", &format!("{HUB_CS}\nmodel_id = \"{value}\""));
        assert_problem(&text, 17, "hub.model_id", why);
    }
}

#[test]
fn hub_x509_identity_round_trips() {
    let h = hub_of(
            "ca_file = \"ca.pem\"\n[hub.x509]\nhost = \"myhub.azure-devices.net\"\ndevice_id = \"line-a-edge\"\n\
             module_id = \"opcua-connector\"\ncert_file = \"d.pem\"\nkey_file = \"d.key\"",
        );
    assert_eq!(
        h.auth,
        HubAuth::X509 {
            host: "myhub.azure-devices.net".into(),
            device_id: "line-a-edge".into(),
            module_id: Some("opcua-connector".into()),
            cert_file: "d.pem".into(),
            key_file: "d.key".into(),
        }
    );
}

#[test]
fn hub_needs_exactly_one_identity() {
    let text = with_table("hub", "ca_file = \"ca.pem\"");
    assert_problem(
        &text,
        14,
        "hub",
        "missing identity: give connection_string_env, connection_string_file or x509",
    );
    let text = with_table(
        "hub",
        "ca_file = \"ca.pem\"\nconnection_string_env = \"A\"\nconnection_string_file = \"f\"",
    );
    assert_problem(
        &text,
        17,
        "hub.connection_string_file",
        "give connection_string_env or connection_string_file, not both",
    );
    let text = with_table(
            "hub",
            "ca_file = \"ca.pem\"\nconnection_string_env = \"A\"\nx509 = { host = \"h\", device_id = \"d\", cert_file = \"c\", key_file = \"k\" }",
        );
    assert_problem(
        &text,
        16,
        "hub.connection_string_env",
        "give a connection string or x509, not both",
    );
    let text = with_table(
        "hub",
        "ca_file = \"ca.pem\"\nconnection_string_env = \"1X\"",
    );
    assert_problem(
        &text,
        16,
        "hub.connection_string_env",
        "not an environment variable name",
    );
}

#[test]
fn inline_connection_string_is_refused_without_echoing_it() {
    let text = with_table(
            "hub",
            "ca_file = \"ca.pem\"\nconnection_string = \"HostName=h;DeviceId=d;SharedAccessKey=c2VjcmV0\"",
        );
    assert_problem(
        &text,
        16,
        "hub.connection_string",
        "use connection_string_env",
    );
    let all = problems(&text);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert!(!all.concat().contains("c2VjcmV0"));
}

#[test]
fn hub_x509_fields_are_checked() {
    let x509 = |fields: &str| {
        with_table(
            "hub",
            &format!("ca_file = \"ca.pem\"\nx509 = {{ {fields} }}"),
        )
    };
    let text = x509("host = \"h.example\", device_id = \"d\", cert_file = \"c.pem\"");
    assert_problem(&text, 16, "hub.x509.key_file", "missing");
    let text = x509("device_id = \"d\", cert_file = \"c.pem\", key_file = \"k\"");
    assert_problem(&text, 16, "hub.x509.host", "missing");
    let text = x509("host = \"h.example\", cert_file = \"c.pem\", key_file = \"k\"");
    assert_problem(&text, 16, "hub.x509.device_id", "missing");
    let text = x509("host = \"https://h\", device_id = \"d\", cert_file = \"c\", key_file = \"k\"");
    assert_problem(&text, 16, "hub.x509.host", "is not a host name");
    let text = x509("host = \"h\", device_id = \"a/b\", cert_file = \"c\", key_file = \"k\"");
    assert_problem(&text, 16, "hub.x509.device_id", "is not an IoT Hub id");
    let text = x509(
        "host = \"h\", device_id = \"d\", module_id = \"\", cert_file = \"c\", key_file = \"k\"",
    );
    assert_problem(&text, 16, "hub.x509.module_id", "is not an IoT Hub id");
    let text = with_table(
            "hub",
            "ca_file = \"ca.pem\"\nsas_ttl = \"1h\"\nx509 = { host = \"h\", device_id = \"d\", cert_file = \"c\", key_file = \"k\" }",
        );
    assert_problem(
        &text,
        16,
        "hub.sas_ttl",
        "x509 authentication uses no SAS token",
    );
}

#[test]
fn hub_ttl_endpoint_ca_and_batching_are_checked() {
    for (body, line, key, part) in [
        ("sas_ttl = \"1s\"", 17, "hub.sas_ttl", "must be at least 2s"),
        ("sas_ttl = 3600", 17, "hub.sas_ttl", "add a unit"),
        (
            "batch_max_samples = 0",
            17,
            "hub.batch_max_samples",
            "positive integer",
        ),
        (
            "batch_max_delay = \"0s\"",
            17,
            "hub.batch_max_delay",
            "greater than 0",
        ),
        (
            "payload = \"avro\"",
            17,
            "hub.payload",
            "use json or json+gzip",
        ),
        (
            "insecure_endpoint = \"127.0.0.1:1883\"",
            16,
            "hub.ca_file",
            "not used with insecure_endpoint",
        ),
    ] {
        let text = with_table("hub", &format!("{HUB_CS}\n{body}"));
        assert_problem(&text, line, key, part);
    }
    for (endpoint, part) in [
        ("127.0.0.1", "has no port"),
        ("mqtt://127.0.0.1:1883", "without a scheme"),
        (":1883", "no host"),
        ("h:x", "must be 1..=65535"),
    ] {
        let text = with_table(
            "hub",
            &format!("connection_string_env = \"CS\"\ninsecure_endpoint = \"{endpoint}\""),
        );
        assert_problem(&text, 16, "hub.insecure_endpoint", part);
    }
    let text = with_table("hub", "connection_string_env = \"CS\"");
    assert_problem(&text, 14, "hub.ca_file", "missing: give ca_file");
}
