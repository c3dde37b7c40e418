//! `[dps]`, and `[hub]` without an identity beside it.

use super::*;

/// MINIMAL, `[hub]` with `hub` on line 15, `[dps]` with `dps` from line 18.
fn with_dps(hub: &str, dps: &str) -> String {
    format!("{MINIMAL}\n[hub]\n{hub}\n\n[dps]\n{dps}\n")
}

const GROUP: &str =
    "id_scope = \"0ne00000A0A\"\nca_file = \"dps-ca.pem\"\ngroup_key_env = \"DPS_GROUP_KEY\"";

fn dps_of(text: &str) -> (HubConfig, DpsConfig) {
    let c = parse(Path::new(FILE), text).unwrap_or_else(|e| panic!("{e}"));
    let hub = c.hub.expect("hub");
    let HubAuth::Dps(d) = &hub.auth else {
        panic!("not a DPS identity: {:?}", hub.auth)
    };
    let d = (**d).clone();
    (hub, d)
}

#[test]
fn a_group_enrollment_gets_the_documented_defaults() {
    let (hub, dps) = dps_of(&with_dps("ca_file = \"hub-ca.pem\"", GROUP));
    assert_eq!(
        dps,
        DpsConfig {
            id_scope: "0ne00000A0A".into(),
            registration_id: "line-a".into(),
            global_endpoint: "global.azure-devices-provisioning.net".into(),
            endpoint: None,
            ca_file: CaRoots::File("dps-ca.pem".into()),
            credential: DpsCredential::GroupKey(Secret::Env("DPS_GROUP_KEY".into())),
        }
    );
    // [hub] keeps its other keys, for the assigned hub.
    assert_eq!(hub.ca_file, Some(CaRoots::File("hub-ca.pem".into())));
    assert_eq!(hub.sas_ttl, Duration::from_secs(3600));
    // The variable is not read while loading.
    assert!(std::env::var_os("DPS_GROUP_KEY").is_none());
}

#[test]
fn individual_and_x509_enrollments_and_a_test_endpoint_round_trip() {
    let (_, d) = dps_of(&with_dps(
        "ca_file = \"hub-ca.pem\"\nsas_ttl = \"10m\"",
        "id_scope = \"0ne0012ABCD\"\nregistration_id = \"filler-plant1-007\"\nendpoint = \"127.0.0.1:8884\"\n\
         ca_file = \"system\"\nsymmetric_key_file = \"/run/secrets/dps\"",
    ));
    assert_eq!(d.registration_id, "filler-plant1-007");
    assert_eq!(d.endpoint.as_deref(), Some("127.0.0.1:8884"));
    assert_eq!(d.ca_file, CaRoots::System);
    assert_eq!(
        d.credential,
        DpsCredential::SymmetricKey(Secret::File("/run/secrets/dps".into()))
    );
    let (_, d) = dps_of(&with_dps(
        "ca_file = \"hub-ca.pem\"",
        "id_scope = \"0ne00000A0A\"\nglobal_endpoint = \"dps.example\"\nca_file = \"ca.pem\"\n\
         x509 = { cert_file = \"d.pem\", key_file = \"d.key\" }",
    ));
    assert_eq!(d.global_endpoint, "dps.example");
    assert_eq!(
        d.credential,
        DpsCredential::X509 {
            cert_file: "d.pem".into(),
            key_file: "d.key".into()
        }
    );
}

#[test]
fn the_system_roots_of_dps_are_warned_about() {
    let text = with_dps(
        "ca_file = \"hub-ca.pem\"",
        "id_scope = \"0ne00000A0A\"\nca_file = \"system\"\ngroup_key_env = \"K\"",
    );
    let c = parse(Path::new(FILE), &text).unwrap();
    assert!(
        c.warnings
            .iter()
            .any(|w| w.key == "dps.ca_file" && w.line == Some(19)),
        "{:?}",
        c.warnings
    );
}

#[test]
fn missing_keys_are_reported_at_the_table() {
    let all = problems(&with_dps(
        "ca_file = \"hub-ca.pem\"",
        "registration_id = \"r\"",
    ));
    assert_exactly(
        &all,
        &[
            "line.toml:17: dps.id_scope: missing",
            "line.toml:17: dps.ca_file: missing",
            "line.toml:17: dps: missing credential",
        ],
    );
}

#[test]
fn one_credential_exactly_and_never_inline() {
    let both = format!("{GROUP}\nsymmetric_key_env = \"DPS_KEY\"");
    assert_problem(
        &with_dps("ca_file = \"c\"", &both),
        20,
        "dps.group_key_env",
        "give one credential",
    );
    let with_x509 = format!("{GROUP}\nx509 = {{ cert_file = \"d.pem\", key_file = \"d.key\" }}");
    assert_problem(
        &with_dps("ca_file = \"c\"", &with_x509),
        21,
        "dps.x509",
        "give one credential",
    );
    let both_sources = format!("{GROUP}\ngroup_key_file = \"k\"");
    assert_problem(
        &with_dps("ca_file = \"c\"", &both_sources),
        21,
        "dps.group_key_file",
        "give group_key_env or group_key_file, not both",
    );
    let secret = "c2VjcmV0LWRwcy1pbmRpdmlkdWFsLWtleS0wMDE=";
    let inline = format!("id_scope = \"0ne1\"\nca_file = \"c\"\nsymmetric_key = \"{secret}\"");
    let all = problems(&with_dps("ca_file = \"c\"", &inline));
    assert_exactly(
        &all,
        &["line.toml:20: dps.symmetric_key: an inline key is not allowed"],
    );
    assert!(!all[0].contains(secret), "{all:?}");
    let x509 = "id_scope = \"0ne1\"\nca_file = \"c\"\nx509 = { cert_file = \"d.pem\" }";
    assert_problem(
        &with_dps("ca_file = \"c\"", x509),
        20,
        "dps.x509.key_file",
        "missing",
    );
}

#[test]
fn ids_and_endpoints_are_checked() {
    let cases = [
        ("id_scope = \"0ne/1\"", "dps.id_scope", "is not an ID scope"),
        (
            "registration_id = \"line a\"",
            "dps.registration_id",
            "is not a DPS registration id",
        ),
        ("endpoint = \"127.0.0.1\"", "dps.endpoint", "has no port"),
        (
            "global_endpoint = \"https://dps\"",
            "dps.global_endpoint",
            "is not a host name",
        ),
    ];
    for (line, key, message) in cases {
        let body = format!("{line}\nca_file = \"c\"\ngroup_key_env = \"K\"");
        let body = if line.starts_with("id_scope") {
            body
        } else {
            format!("id_scope = \"0ne1\"\n{body}")
        };
        let at = if line.starts_with("id_scope") { 18 } else { 19 };
        assert_problem(&with_dps("ca_file = \"c\"", &body), at, key, message);
    }
    // The default registration id is the line id: one DPS does not take is reported.
    let text = with_dps("ca_file = \"c\"", GROUP).replace("id = \"line-a\"", "id = \"line_a_\"");
    assert_problem(
        &text,
        17,
        "dps.registration_id",
        "the default, line.id \"line_a_\", is not a DPS registration id",
    );
}

#[test]
fn with_dps_the_hub_names_no_identity() {
    let text = with_dps("connection_string_env = \"CS\"\nca_file = \"c\"", GROUP);
    assert_exactly(
        &problems(&text),
        &["line.toml:15: hub.connection_string_env: with [dps] the hub identity is assigned"],
    );
    let text = with_dps(
        "ca_file = \"c\"\nx509 = { host = \"h\", device_id = \"d\", cert_file = \"c.pem\", key_file = \"c.key\" }",
        GROUP,
    );
    assert_problem(&text, 16, "hub.x509", "remove x509 from [hub]");
    let x509 = "id_scope = \"0ne1\"\nca_file = \"c\"\nx509 = { cert_file = \"d.pem\", key_file = \"d.key\" }";
    let text = with_dps("ca_file = \"c\"\nsas_ttl = \"5m\"", x509);
    assert_problem(&text, 16, "hub.sas_ttl", "uses no SAS token");
    // The hub's ca_file is still required: it checks the assigned hub.
    assert_problem(
        &with_dps("payload = \"json\"", GROUP),
        14,
        "hub.ca_file",
        "missing",
    );
}

#[test]
fn dps_without_a_hub_says_to_add_one() {
    let text = format!("{MINIMAL}\n[dps]\n{GROUP}\n");
    assert_exactly(
        &problems(&text),
        &["line.toml:14: dps: [dps] assigns the identity of [hub], and there is no [hub]: add [hub] with its ca_file"],
    );
}

#[test]
fn iot_hub_file_upload_is_refused_with_dps() {
    let text = format!(
        "{}\n[sink.parquet.upload]\nvia = \"iothub\"\n",
        with_dps("ca_file = \"c\"", GROUP)
    );
    let all = problems(&text);
    assert!(
        all.iter().any(|p| p.starts_with("line.toml:23: sink.parquet.upload.via: IoT Hub's file upload is not available with [dps]")),
        "{all:#?}"
    );
}

#[test]
fn the_plan_says_where_the_identity_comes_from_without_a_secret() {
    let config = parse(
        Path::new(FILE),
        &with_dps("ca_file = \"hub-ca.pem\"", GROUP),
    )
    .unwrap();
    let plan = crate::config::plan::plan(&config);
    for part in [
        "iot hub: device assigned by DPS, id scope 0ne00000A0A, registration id \"line-a\", group enrollment, device key derived from the group key in env DPS_GROUP_KEY",
        "DPS: MQTT 3.1.1 over TLS to global.azure-devices-provisioning.net:8883, ca dps-ca.pem",
        "the assignment is kept in data/buffer/dps/assignment.json",
    ] {
        assert!(plan.contains(part), "{part:?} not in\n{plan}");
    }
}

#[test]
fn a_dps_identity_is_not_sent_over_https() {
    let text = with_dps("ca_file = \"hub-ca.pem\"\ntransport = \"https\"", GROUP);
    assert_problem(&text, 16, "hub.transport", "reached over MQTT");
}
