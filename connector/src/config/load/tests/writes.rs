//! `[[write]]` and `[[method]]`.

use super::*;

#[test]
fn write_to_missing_plc_lists_the_plcs() {
    let text = format!(
            "{MINIMAL}\n[[write]]\nproperty = \"p\"\nplc = \"capper\"\nnode = \"ns=2;i=1\"\ntype = \"Double\"\n"
        );
    assert_problem(
        &text,
        16,
        "write[0].plc",
        "no plc \"capper\" in this file (plcs: filler)",
    );
}

const WRITE: &str =
    "\n[[write]]\nproperty = \"p\"\nplc = \"filler\"\nnode = \"ns=2;i=1\"\ntype = \"Double\"\n";

fn warnings(text: &str) -> Vec<String> {
    match parse(Path::new(FILE), text) {
        Ok(c) => c.warnings.iter().map(ToString::to_string).collect(),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn commands_over_a_plain_anonymous_broker_need_the_opt_in() {
    let plain = "\n[sink.mqtt]\nurl = \"mqtt://broker.local\"\n";
    // Refused with file:line:key (the url is on line 15)...
    assert_problem(
        &format!("{MINIMAL}{plain}{WRITE}"),
        15,
        "sink.mqtt.url",
        "set allow_insecure_commands = true to accept it",
    );
    // ... also for methods only.
    let method = "\n[[method]]\nname = \"m\"\nplc = \"filler\"\nobject = \"ns=2;i=1\"\nmethod = \"ns=2;i=2\"\n";
    assert_problem(
        &format!("{MINIMAL}{plain}{method}"),
        15,
        "sink.mqtt.url",
        "allow_insecure_commands",
    );
    // With the opt-in: valid, and said out loud.
    let opted = "\n[sink.mqtt]\nurl = \"mqtt://broker.local\"\nallow_insecure_commands = true\n";
    let w = warnings(&format!("{MINIMAL}{opted}{WRITE}"));
    assert_exactly(
        &w,
        &["line.toml:16: sink.mqtt.allow_insecure_commands: writes and methods are served over plain mqtt:// without credentials"],
    );
    // Without mappings nothing is served: no problem, no warning.
    assert!(warnings(&format!("{MINIMAL}{plain}")).is_empty());
    // TLS, or a username: no opt-in needed (a username in clear is a warning).
    let tls = "\n[sink.mqtt]\nurl = \"mqtts://broker.local\"\ntls = { ca_file = \"ca.pem\" }\n";
    assert!(warnings(&format!("{MINIMAL}{tls}{WRITE}")).is_empty());
    let user =
        "\n[sink.mqtt]\nurl = \"mqtt://broker.local\"\nusername = \"u\"\npassword_env = \"P\"\n";
    assert_exactly(
        &warnings(&format!("{MINIMAL}{user}{WRITE}")),
        &["line.toml:15: sink.mqtt.url: plain mqtt:// with a username: the password crosses the network in clear"],
    );
}

#[test]
fn hub_insecure_endpoint_only_on_loopback() {
    let hub = |endpoint: &str| {
        format!("{MINIMAL}\n[hub]\nconnection_string_env = \"CS\"\ninsecure_endpoint = \"{endpoint}\"\n")
    };
    for remote in ["10.0.0.5:1883", "hub.example.com:1883", "0.0.0.0:1883"] {
        assert_problem(
            &hub(remote),
            16,
            "hub.insecure_endpoint",
            "is not a loopback address",
        );
    }
    for local in ["127.0.0.1:1883", "localhost:1883", "[::1]:1883"] {
        assert_exactly(
            &warnings(&hub(local)),
            &["line.toml:16: hub.insecure_endpoint: plain MQTT to the hub (no TLS)"],
        );
    }
}

#[test]
fn a_password_on_an_unencrypted_opcua_channel_and_public_metrics_are_warned() {
    let text = MINIMAL.replace(
        "endpoint = \"opc.tcp://192.0.2.10:4840\"",
        "endpoint = \"opc.tcp://192.0.2.10:4840\"\nauth = { username = \"u\", password_env = \"P\" }",
    );
    assert_exactly(
        &warnings(&text),
        &["line.toml:5: plc[0].auth: a username on a channel with security_mode = \"None\": the password crosses the network in clear"],
    );
    let signed = text.replace(
        "auth =",
        "security_policy = \"Basic256Sha256\"\nsecurity_mode = \"SignAndEncrypt\"\nauth =",
    );
    assert!(warnings(&signed).is_empty());
    assert_exactly(
        &warnings(&format!(
            "{MINIMAL}\n[metrics]\nlisten = \"0.0.0.0:9464\"\n"
        )),
        &["line.toml:15: metrics.listen: 0.0.0.0:9464 is not a loopback address"],
    );
    assert!(warnings(&format!(
        "{MINIMAL}\n[metrics]\nlisten = \"127.0.0.1:9464\"\n"
    ))
    .is_empty());
}

#[test]
fn max_concurrent_commands_and_pending_write_max_age() {
    let c = parse(Path::new(FILE), MINIMAL).unwrap();
    assert_eq!(
        c.plcs[0].max_concurrent_commands,
        DEFAULT_MAX_CONCURRENT_COMMANDS
    );
    let text = MINIMAL.replace(
        "endpoint = \"opc.tcp://192.0.2.10:4840\"",
        "endpoint = \"opc.tcp://192.0.2.10:4840\"\nmax_concurrent_commands = 1",
    );
    assert_eq!(
        parse(Path::new(FILE), &text).unwrap().plcs[0].max_concurrent_commands,
        1
    );
    assert_problem(
        &text.replace("max_concurrent_commands = 1", "max_concurrent_commands = 0"),
        8,
        "plc[0].max_concurrent_commands",
        "",
    );
    let hub = "\n[hub]\nconnection_string_env = \"CS\"\ninsecure_endpoint = \"127.0.0.1:1883\"\n";
    let c = parse(Path::new(FILE), &format!("{MINIMAL}{hub}")).unwrap();
    assert_eq!(
        c.hub.unwrap().pending_write_max_age,
        DEFAULT_PENDING_WRITE_MAX_AGE
    );
    let c = parse(
        Path::new(FILE),
        &format!("{MINIMAL}{hub}pending_write_max_age = \"10m\"\n"),
    )
    .unwrap();
    assert_eq!(
        c.hub.unwrap().pending_write_max_age,
        std::time::Duration::from_secs(600)
    );
}
