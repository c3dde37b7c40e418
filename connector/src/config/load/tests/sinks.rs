//! `[sink.mqtt]` and `[buffer]` (and what `[hub]` shares with them).

use super::hub::{hub_of, HUB_CS};
use super::*;

/// MINIMAL plus a table; its first key is on line 15 (the header on 14).
pub(super) fn with_table(table: &str, body: &str) -> String {
    format!("{MINIMAL}\n[{table}]\n{body}\n")
}

pub(super) fn parse_ok(text: &str) -> Config {
    parse(Path::new(FILE), text).unwrap_or_else(|e| panic!("{e}"))
}

fn mqtt_of(body: &str) -> MqttSinkConfig {
    parse_ok(&with_table("sink.mqtt", body)).mqtt.unwrap()
}

#[test]
fn unknown_keys_in_broker_hub_and_buffer_are_reported() {
    let text = with_table("sink.mqtt", "url = \"mqtt://x\"\nretain = true");
    assert_problem(&text, 16, "sink.mqtt.retain", "unknown key `retain`");
    let text = with_table("hub", &format!("{HUB_CS}\nmodel = \"dtmi:x;1\""));
    assert_problem(&text, 17, "hub.model", "unknown key `model`");
    let text = with_table("buffer", "max_size = \"1GiB\"");
    assert_problem(&text, 15, "buffer.max_size", "unknown key `max_size`");
    let text = with_table("hub", "x509 = { host = \"h\", device = \"d\" }");
    assert_problem(&text, 15, "hub.x509.device", "unknown key `device`");
}

#[test]
fn mqtt_defaults_fill_in_everything_but_the_url() {
    let m = mqtt_of("url = \"mqtt://broker.local\"");
    assert_eq!(
        m,
        MqttSinkConfig {
            url: "mqtt://broker.local".into(),
            host: "broker.local".into(),
            port: 1883,
            tls: None,
            transport: MqttTransport::Tcp,
            proxy: None,
            version: MqttVersion::V311,
            client_id: "opcua-connector-line-a".into(),
            username: None,
            password: None,
            // MINIMAL has no line.site.
            topic: "opcua/{line}/{plc}/{group}".into(),
            command_topic: "opcua/{line}/cmd".into(),
            qos: 1,
            batch_max_samples: NonZeroUsize::new(1000).unwrap(),
            batch_max_delay: Duration::from_millis(200),
            max_message_bytes: 256 << 10,
            payload: Payload::Json,
            keep_alive: Duration::from_secs(30),
            allow_insecure_commands: false,
            status: None,
        }
    );
    let with_site = with_table("sink.mqtt", "url = \"mqtt://b\"")
        .replace("id = \"line-a\"", "id = \"line-a\"\nsite = \"plant-1\"");
    assert_eq!(
        parse_ok(&with_site).mqtt.unwrap().topic,
        "opcua/{site}/{line}/{plc}/{group}"
    );
}

#[test]
fn mqtt_url_gives_host_and_port_with_scheme_defaults() {
    let tls = "\ntls = { ca_file = \"ca.pem\" }";
    let cases = [
        ("mqtt://b.example", "", "b.example", 1883),
        ("mqtt://b.example:1884/", "", "b.example", 1884),
        ("mqtts://b.example", tls, "b.example", 8883),
        ("mqtts://10.0.0.5:9883", tls, "10.0.0.5", 9883),
        ("mqtt://[::1]:1885", "", "::1", 1885),
        ("mqtt://[fd00::7]", "", "fd00::7", 1883),
    ];
    for (url, extra, host, port) in cases {
        let m = mqtt_of(&format!("url = \"{url}\"{extra}"));
        assert_eq!((m.url.as_str(), m.host.as_str(), m.port), (url, host, port));
    }
}

#[test]
fn websocket_urls_carry_a_path_and_need_tls_for_wss() {
    let tls = "\ntls = { ca_file = \"ca.pem\" }";
    let cases = [
        ("wss://b.example", tls, 443, "/mqtt"),
        ("wss://b.example:8443/ws", tls, 8443, "/ws"),
        ("ws://b.example", "", 80, "/mqtt"),
        ("ws://b.example:9001/", "", 9001, "/"),
    ];
    for (url, extra, port, path) in cases {
        let m = mqtt_of(&format!("url = \"{url}\"{extra}"));
        assert_eq!(
            (m.port, m.transport),
            (
                port,
                MqttTransport::WebSockets {
                    path: path.to_owned()
                }
            ),
            "{url}"
        );
        assert_eq!(m.tls.is_some(), url.starts_with("wss"));
    }
    let text = with_table("sink.mqtt", "url = \"wss://b\"");
    assert_problem(&text, 15, "sink.mqtt.tls.ca_file", "or wss:// url needs it");
}

#[test]
fn the_system_roots_are_an_opt_in_that_check_warns_about() {
    let text = with_table(
        "sink.mqtt",
        "url = \"wss://b\"\ntls = { ca_file = \"system\" }",
    );
    let config = parse_ok(&text);
    assert_eq!(
        config.mqtt.unwrap().tls.unwrap().ca_file,
        Some(CaRoots::System)
    );
    assert!(
        config
            .warnings
            .iter()
            .any(|w| w.key == "sink.mqtt.tls.ca_file"
                && w.line == Some(16)
                && w.message.contains("every root certificate")),
        "{:?}",
        config.warnings
    );
    let text = with_table(
        "hub",
        "connection_string_env = \"CS\"\nca_file = \"system\"",
    );
    let config = parse_ok(&text);
    assert_eq!(config.hub.unwrap().ca_file, Some(CaRoots::System));
    assert!(config.warnings.iter().any(|w| w.key == "hub.ca_file"));
}

#[test]
fn a_proxy_is_an_http_url_with_credentials_from_env_or_file() {
    let m = mqtt_of(
        "url = \"mqtt://b\"\nproxy = \"http://proxy.plant:3128\"\nproxy_username = \"edge\"\nproxy_password_env = \"PROXY_PW\"",
    );
    assert_eq!(
        m.proxy,
        Some(ProxyConfig {
            url: "http://proxy.plant:3128".into(),
            host: "proxy.plant".into(),
            port: 3128,
            username: Some("edge".into()),
            password: Some(Secret::Env("PROXY_PW".into())),
        })
    );
    let h = hub_of(&format!("{HUB_CS}\nproxy = \"http://10.0.0.1\""));
    assert_eq!(
        h.proxy.map(|p| (p.host, p.port)),
        Some(("10.0.0.1".into(), 80))
    );
    for (body, key, part) in [
        (
            "proxy = \"https://p:3128\"",
            "sink.mqtt.proxy",
            "must be http://host:port",
        ),
        (
            "proxy = \"http://u:pw@p:3128\"",
            "sink.mqtt.proxy",
            "credentials in the proxy url",
        ),
        (
            "proxy = \"http://p:3128/x\"",
            "sink.mqtt.proxy",
            "without a path",
        ),
        (
            "proxy_username = \"u\"",
            "sink.mqtt.proxy_username",
            "need a proxy",
        ),
        (
            "proxy = \"http://p\"\nproxy_password_file = \"pw\"",
            "sink.mqtt.proxy_password_file",
            "needs proxy_username",
        ),
    ] {
        let text = with_table("sink.mqtt", &format!("url = \"mqtt://b\"\n{body}"));
        assert_problem(&text, 15 + body.lines().count(), key, part);
    }
    let text = with_table(
        "sink.mqtt",
        "url = \"mqtt://b\"\nproxy = \"http://u:hunter2@p\"",
    );
    let e = parse(Path::new(FILE), &text).unwrap_err().to_string();
    assert!(!e.contains("hunter2"), "{e}");
}

#[test]
fn status_topics_are_per_line_and_intervals_at_least_a_second() {
    let m = mqtt_of("url = \"mqtt://b\"\nstatus_topic = \"opcua/{line}/status\"");
    assert_eq!(
        m.status,
        Some(("opcua/{line}/status".into(), Duration::from_secs(30)))
    );
    let m = mqtt_of(
        "url = \"mqtt://b\"\nstatus_topic = \"opcua/{line}/status\"\nstatus_interval = \"5s\"",
    );
    assert_eq!(m.status.map(|s| s.1), Some(Duration::from_secs(5)));
    assert_eq!(
        hub_of(&format!("{HUB_CS}\nstatus_interval = \"1m\"")).status_interval,
        Some(Duration::from_secs(60))
    );
    for (body, line, key, part) in [
        (
            "status_topic = \"opcua/{plc}/status\"",
            16,
            "sink.mqtt.status_topic",
            "per line",
        ),
        (
            "status_topic = \"opcua/#\"",
            16,
            "sink.mqtt.status_topic",
            "#",
        ),
        (
            "status_interval = \"5s\"",
            16,
            "sink.mqtt.status_interval",
            "needs status_topic",
        ),
        (
            "status_topic = \"s/{line}\"\nstatus_interval = \"100ms\"",
            17,
            "sink.mqtt.status_interval",
            "at least 1s",
        ),
    ] {
        let text = with_table("sink.mqtt", &format!("url = \"mqtt://b\"\n{body}"));
        assert_problem(&text, line, key, part);
    }
}

#[test]
fn mqtt_url_problems_name_the_url_key() {
    for (url, part) in [
        (
            "tcp://b:1883",
            "must be mqtt://host[:port], mqtts://host[:port], ws://",
        ),
        ("mqtt://", "no host"),
        ("mqtt://:1883", "no host"),
        ("mqtt://b:0", "port \"0\" must be 1..=65535"),
        ("mqtt://b:99999", "must be 1..=65535"),
        ("mqtt://b/topic", "only WebSockets urls have a path"),
        ("wss://b/mqtt?x=1", "without a query"),
        ("mqtt://[::1", "unclosed ["),
    ] {
        let text = with_table("sink.mqtt", &format!("url = \"{url}\""));
        assert_problem(&text, 15, "sink.mqtt.url", part);
    }
    let text = with_table("sink.mqtt", "qos = 1");
    assert_problem(&text, 14, "sink.mqtt.url", "missing");
}

#[test]
fn credentials_in_the_mqtt_url_are_refused_without_echoing_them() {
    let text = with_table("sink.mqtt", "url = \"mqtt://user:hunter2@b\"");
    assert_problem(&text, 15, "sink.mqtt.url", "credentials in the url");
    assert!(!problems(&text).concat().contains("hunter2"));
}

#[test]
fn mqtt_version_is_3_1_1_or_5() {
    assert_eq!(
        mqtt_of("url = \"mqtt://b\"\nversion = \"5\"").version,
        MqttVersion::V5
    );
    assert_eq!(
        mqtt_of("url = \"mqtt://b\"\nversion = 5").version,
        MqttVersion::V5
    );
    assert_eq!(
        mqtt_of("url = \"mqtt://b\"\nversion = \"3.1.1\"").version,
        MqttVersion::V311
    );
    let text = with_table("sink.mqtt", "url = \"mqtt://b\"\nversion = \"3.1\"");
    assert_problem(&text, 16, "sink.mqtt.version", "use \"3.1.1\" or \"5\"");
    let text = with_table("sink.mqtt", "url = \"mqtt://b\"\nversion = 4");
    assert_problem(&text, 16, "sink.mqtt.version", "unknown MQTT version 4");
}

#[test]
fn mqtt_password_comes_from_env_or_file_with_a_username() {
    let m = mqtt_of("url = \"mqtt://b\"\nusername = \"u\"\npassword_file = \"/run/pw\"");
    assert_eq!(
        (m.username.as_deref(), m.password),
        (Some("u"), Some(Secret::File("/run/pw".into())))
    );
    let base = "url = \"mqtt://b\"\nusername = \"u\"\n";
    let text = with_table("sink.mqtt", &format!("{base}password = \"hunter2\""));
    assert_problem(
        &text,
        17,
        "sink.mqtt.password",
        "inline passwords are not allowed",
    );
    assert!(!problems(&text).concat().contains("hunter2"));
    let text = with_table(
        "sink.mqtt",
        &format!("{base}password_env = \"PW\"\npassword_file = \"pw\""),
    );
    assert_problem(
        &text,
        18,
        "sink.mqtt.password_file",
        "give password_env or password_file, not both",
    );
    let text = with_table("sink.mqtt", &format!("{base}password_env = \"MY-PW\""));
    assert_problem(
        &text,
        17,
        "sink.mqtt.password_env",
        "is not an environment variable name",
    );
    let text = with_table("sink.mqtt", "url = \"mqtt://b\"\npassword_env = \"PW\"");
    assert_problem(
        &text,
        16,
        "sink.mqtt.password_env",
        "a password needs a username",
    );
    let text = with_table("sink.mqtt", "url = \"mqtt://b\"\nusername = \"\"");
    assert_problem(&text, 16, "sink.mqtt.username", "must not be empty");
    let text = with_table("sink.mqtt", "url = \"mqtt://b\"\nclient_id = \" \"");
    assert_problem(&text, 16, "sink.mqtt.client_id", "must not be empty");
}

#[test]
fn mqtt_topic_allows_only_known_placeholders_and_no_wildcards() {
    assert_eq!(
        mqtt_of("url = \"mqtt://b\"\ntopic = \"x/{line}/{plc}-{group}\"").topic,
        "x/{line}/{plc}-{group}"
    );
    for (topic, part) in [
        ("opcua/{machine}", "unknown placeholder {machine}"),
        (
            "opcua/{site}/{line}",
            "uses {site} but line.site is not set",
        ),
        ("opcua/+/x", "wildcard"),
        ("opcua/#", "wildcard"),
        ("$SYS/x", "starts with $"),
        ("opcua/{line", "'{' without '}'"),
        ("opcua/{li{ne}", "'{' without '}'"),
        ("opcua/line}", "'}' without '{'"),
        ("", "must not be empty"),
    ] {
        let text = with_table(
            "sink.mqtt",
            &format!("url = \"mqtt://b\"\ntopic = \"{topic}\""),
        );
        assert_problem(&text, 16, "sink.mqtt.topic", part);
    }
}

#[test]
fn mqtt_qos_2_is_refused_with_the_reason() {
    assert_eq!(mqtt_of("url = \"mqtt://b\"\nqos = 0").qos, 0);
    let text = with_table("sink.mqtt", "url = \"mqtt://b\"\nqos = 2");
    assert_problem(&text, 16, "sink.mqtt.qos", "qos 2 is not supported: use 1");
    assert_problem(&text, 16, "sink.mqtt.qos", "drop duplicates");
    let text = with_table("sink.mqtt", "url = \"mqtt://b\"\nqos = -1");
    assert_problem(&text, 16, "sink.mqtt.qos", "must be 0 or 1");
}

#[test]
fn mqtt_batching_sizes_and_keep_alive_are_checked() {
    let m = mqtt_of(
        "url = \"mqtt://b\"\nbatch_max_samples = 1\nbatch_max_delay = \"1s\"\n\
             max_message_bytes = \"1KiB\"\nkeep_alive = \"20m\"\npayload = \"json+gzip\"",
    );
    assert_eq!(
        (
            m.batch_max_samples.get(),
            m.batch_max_delay,
            m.max_message_bytes
        ),
        (1, Duration::from_secs(1), 1024)
    );
    assert_eq!(
        (m.keep_alive, m.payload),
        (Duration::from_secs(1200), Payload::JsonGzip)
    );
    for (body, key, part) in [
        (
            "batch_max_samples = 0",
            "batch_max_samples",
            "positive integer",
        ),
        ("batch_max_delay = 200", "batch_max_delay", "add a unit"),
        (
            "batch_max_delay = \"0ms\"",
            "batch_max_delay",
            "greater than 0",
        ),
        (
            "max_message_bytes = \"512B\"",
            "max_message_bytes",
            "too small",
        ),
        (
            "max_message_bytes = \"1GiB\"",
            "max_message_bytes",
            "MQTT packet limit",
        ),
        (
            "max_message_bytes = \"256 parsecs\"",
            "max_message_bytes",
            "unknown size unit",
        ),
        ("payload = \"xml\"", "payload", "use json or json+gzip"),
        (
            "keep_alive = \"500ms\"",
            "keep_alive",
            "whole seconds from 1s to 65535s",
        ),
        (
            "keep_alive = \"0s\"",
            "keep_alive",
            "whole seconds from 1s to 65535s",
        ),
        (
            "keep_alive = \"1d\"",
            "keep_alive",
            "whole seconds from 1s to 65535s",
        ),
    ] {
        let text = with_table("sink.mqtt", &format!("url = \"mqtt://b\"\n{body}"));
        assert_problem(&text, 16, &format!("sink.mqtt.{key}"), part);
    }
}

#[test]
fn mqtt_tls_goes_with_mqtts_and_needs_a_ca() {
    let m = mqtt_of("url = \"mqtts://b\"\ntls = { ca_file = \"ca.pem\" }");
    assert_eq!(
        m.tls,
        Some(TlsConfig {
            ca_file: Some(CaRoots::File("ca.pem".into())),
            cert_file: None,
            key_file: None
        })
    );
    let text = with_table("sink.mqtt", "url = \"mqtts://b\"");
    assert_problem(
        &text,
        15,
        "sink.mqtt.tls.ca_file",
        "missing: give tls.ca_file",
    );
    let text = with_table(
        "sink.mqtt",
        "url = \"mqtts://b\"\ntls = { cert_file = \"c.pem\", key_file = \"c.key\" }",
    );
    assert_problem(&text, 15, "sink.mqtt.tls.ca_file", "give");
    let text = with_table(
        "sink.mqtt",
        "url = \"mqtt://b\"\ntls = { ca_file = \"ca.pem\" }",
    );
    assert_problem(
        &text,
        16,
        "sink.mqtt.tls",
        "tls needs an mqtts:// or wss:// url",
    );
    let text = with_table(
        "sink.mqtt",
        "url = \"mqtts://b\"\ntls = { ca_file = \"ca.pem\", cert_file = \"c.pem\" }",
    );
    assert_problem(
        &text,
        16,
        "sink.mqtt.tls.key_file",
        "needs cert_file and key_file",
    );
    let text = with_table(
        "sink.mqtt",
        "url = \"mqtts://b\"\n[sink.mqtt.tls]\nca_file = \"ca.pem\"\nkey_file = \"c.key\"",
    );
    assert_problem(
        &text,
        18,
        "sink.mqtt.tls.cert_file",
        "needs cert_file and key_file",
    );
}

#[test]
fn buffer_defaults_and_checks() {
    assert_eq!(parse_ok(MINIMAL).buffer, BufferConfig::default());
    assert_eq!(
        parse_ok(&with_table("buffer", "")).buffer,
        BufferConfig {
            dir: "data/buffer".into(),
            max_bytes: 2 << 30,
            when_full: WhenFull::DropOldest,
            segment_bytes: 16 << 20,
            min_free: 256 << 20,
        }
    );
    for (body, line, key, part) in [
        (
            "when_full = \"block\"",
            15,
            "buffer.when_full",
            "use drop_oldest or pause",
        ),
        ("dir = \"\"", 15, "buffer.dir", "must not be empty"),
        (
            "max_bytes = \"0B\"",
            15,
            "buffer.max_bytes",
            "greater than 0",
        ),
        (
            "max_bytes = 1.5",
            15,
            "buffer.max_bytes",
            "not a whole number",
        ),
        (
            "segment_bytes = \"0MiB\"",
            15,
            "buffer.segment_bytes",
            "greater than 0",
        ),
        (
            "max_bytes = \"1MiB\"\nsegment_bytes = \"16MiB\"",
            16,
            "buffer.segment_bytes",
            "segment_bytes 16MiB is larger than max_bytes 1MiB",
        ),
        (
            "max_bytes = \"8MiB\"",
            15,
            "buffer.segment_bytes",
            "larger than max_bytes 8MiB",
        ),
    ] {
        assert_problem(&with_table("buffer", body), line, key, part);
    }
}

#[test]
fn every_problem_in_broker_hub_and_buffer_is_reported() {
    let text = format!(
            "{MINIMAL}\n[sink.mqtt]\nurl = \"mqtts://b\"\nqos = 2\ntopic = \"a/{{site}}\"\n\
             keep_alive = \"1ms\"\n\n[hub]\nconnection_string_env = \"A\"\nconnection_string_file = \"b\"\n\
             sas_ttl = \"1s\"\n\n[buffer]\nwhen_full = \"wait\"\n"
        );
    let all = problems(&text);
    let expect = [
        ":15: sink.mqtt.tls.ca_file: ",
        ":16: sink.mqtt.qos: ",
        ":17: sink.mqtt.topic: ",
        ":18: sink.mqtt.keep_alive: ",
        ":22: hub.connection_string_file: ",
        ":23: hub.sas_ttl: ",
        ":20: hub.ca_file: ",
        ":26: buffer.when_full: ",
    ];
    assert_exactly(&all, &expect);
}

#[test]
fn buffer_segments_must_hold_the_largest_message() {
    // A segment is at most max_bytes / 2: 512KiB here, for broker messages up to 1MiB.
    let text = format!(
        "{MINIMAL}\n[sink.mqtt]\nurl = \"mqtt://b\"\nmax_message_bytes = \"1MiB\"\n\n\
             [buffer]\nmax_bytes = \"1MiB\"\nsegment_bytes = \"1MiB\"\n"
    );
    assert_eq!(
            problems(&text),
            [format!(
                "{FILE}:18: buffer.segment_bytes: [buffer] segments of 524288 bytes (segment_bytes, at most max_bytes / 2) cannot hold a message of 1048576 bytes: raise segment_bytes and max_bytes or lower max_message_bytes"
            )]
        );
    // IoT Hub's messages are up to 256KiB; a segment needs 1KiB more.
    let hub_and_buffer = |segment: &str| {
        format!(
            "{}\n[buffer]\nsegment_bytes = \"{segment}\"\n",
            with_table("hub", HUB_CS)
        )
    };
    assert_problem(
            &hub_and_buffer("256KiB"),
            18,
            "buffer.segment_bytes",
            "segments of 262144 bytes (segment_bytes, at most max_bytes / 2) cannot hold a message of 262144 bytes",
        );
    assert_eq!(
        parse_ok(&hub_and_buffer("257KiB")).buffer.segment_bytes,
        (HUB_MAX_MESSAGE_BYTES + 1024) as u64
    );
    // Without [buffer], the default segments are checked (and there is no line to show).
    let text = with_table(
        "sink.mqtt",
        "url = \"mqtt://b\"\nmax_message_bytes = \"100MiB\"",
    );
    let all = problems(&text);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert!(
        all[0].starts_with(&format!(
            "{FILE}: buffer.segment_bytes: [buffer] segments of 16777216 bytes"
        )),
        "{all:#?}"
    );
    // Without a broker or hub the buffer is not used: any segment will do.
    parse_ok(&with_table(
        "buffer",
        "max_bytes = \"2KiB\"\nsegment_bytes = \"1KiB\"",
    ));
}

#[test]
fn the_events_table_goes_beside_the_samples_never_inside() {
    let c = parse(
        Path::new(FILE),
        &format!("{MINIMAL}\n[sink.parquet]\ndir = \"/var/lib/oc/parquet\"\n"),
    )
    .expect("valid");
    let p = c.parquet.unwrap();
    assert_eq!(p.events_dir, Path::new("/var/lib/oc/parquet-events"));
    let inside =
        format!("{MINIMAL}\n[sink.parquet]\ndir = \"/data\"\nevents_dir = \"/data/events\"\n");
    assert_problem(
        &inside,
        16,
        "sink.parquet.events_dir",
        "must not contain each other",
    );
    for (dir, events) in [("data/", "data-events"), ("./data/.", "./data-events")] {
        let c = parse(
            Path::new(FILE),
            &format!("{MINIMAL}\n[sink.parquet]\ndir = \"{dir}\"\n"),
        )
        .expect("valid");
        assert_eq!(c.parquet.unwrap().events_dir, Path::new(events), "{dir}");
    }
    let relative =
        format!("{MINIMAL}\n[sink.parquet]\ndir = \"data\"\nevents_dir = \"./data/x/../ev\"\n");
    assert_problem(
        &relative,
        16,
        "sink.parquet.events_dir",
        "must not contain each other",
    );
}
