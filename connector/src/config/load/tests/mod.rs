//! The check's tests: what every file shares here, then one file per concern.

use super::*;

mod dps;
mod hub;
mod plc;
mod rules;
mod sinks;
mod upload;
mod writes;

const FILE: &str = "line.toml";

fn problems(text: &str) -> Vec<String> {
    match parse(Path::new(FILE), text) {
        Ok(c) => panic!("expected problems, got {c:#?}"),
        Err(e) => e.problems().iter().map(ToString::to_string).collect(),
    }
}

/// `all` holds a problem containing each of `expect`, and no more problems than that.
fn assert_exactly(all: &[String], expect: &[&str]) {
    for e in expect {
        assert!(
            all.iter().any(|p| p.contains(e)),
            "missing {e:?} in {all:#?}"
        );
    }
    assert_eq!(all.len(), expect.len(), "{all:#?}");
}

/// The one problem of `text`, asserting its `file:LINE: key` prefix.
fn assert_problem(text: &str, line: usize, key: &str, message_part: &str) {
    let all = problems(text);
    let prefix = format!("{FILE}:{line}: {key}: ");
    assert!(
        all.iter()
            .any(|p| p.starts_with(&prefix) && p.contains(message_part)),
        "no problem starting {prefix:?} containing {message_part:?} in {all:#?}"
    );
}

const MINIMAL: &str = r#"
[line]
id = "line-a"

[[plc]]
id = "filler"
endpoint = "opc.tcp://192.0.2.10:4840"

  [[plc.group]]
  name = "fast"
  publishing_interval = "100ms"
  nodes = ["nsu=urn:example:filler;s=Filler.Speed"]
"#;

#[test]
fn full_config_round_trips_to_expected_types() {
    let text = r#"
[line]
id = "line-a"
site = "plant-1"

[[plc]]
id = "filler"
endpoint = "opc.tcp://192.0.2.10:4840"
security_policy = "Basic256Sha256"
security_mode = "SignAndEncrypt"
auth = { username = "connector", password_env = "FILLER_PW" }

  [[plc.group]]
  name = "fast"
  publishing_interval = "100ms"
  sampling_interval = "50ms"
  queue_size = 0
  deadband = { absolute = 0.5 }
  nodes = [
    "nsu=urn:example:filler;s=Filler.Speed",
    { id = "ns=2;i=1042", name = "tank_level" },
    "i=2258",
    "nsu=urn:x;g=6F9619FF-8B86-D011-B42D-00C04FC964FF",
    "nsu=urn:x;b=AQID",
  ]
  browse = [{ root = "nsu=urn:example:filler;s=Filler", recursive = true, include = "*Temp*" }]

  [[plc.group]]
  name = "slow"
  publishing_interval = "1s"
  queue_size = 10
  deadband.percent = 1
  browse = [{ root = "ns=2;s=Tank", exclude = "*Raw*" }]
  backfill = true
  backfill_max = "30m"

[[plc]]
id = "labeler"
endpoint = "opc.tcp://labeler.local:4840/ua"
security_policy = "Aes256_Sha256_RsaPss"
security_mode = "Sign"
auth = { cert_file = "certs/labeler.der", key_file = "certs/labeler.pem" }

[pki]
dir = "/var/lib/opcua-connector/pki"
trust_unknown_servers = true

[sink.parquet]
dir = "data"
compression = "zstd:9"
roll_rows = 500_000
roll_bytes = "64MiB"
roll_interval = "1m"
queue_samples = 200_000

[sink.mqtt]
url = "mqtts://broker.example:8884"
version = "5"
client_id = "line-a-connector"
username = "connector"
password_env = "MQTT_PASSWORD"
topic = "plants/{site}/{line}/{plc}/{group}/samples"
qos = 0
batch_max_samples = 2000
batch_max_delay = "500ms"
max_message_bytes = "128KiB"
payload = "json+gzip"
keep_alive = "1m"
tls = { ca_file = "certs/ca.pem", cert_file = "certs/client.pem", key_file = "certs/client.key" }

[hub]
connection_string_file = "/run/secrets/iothub"
sas_ttl = "30m"
ca_file = "certs/digicert-global-root-g2.pem"
batch_max_samples = 250
batch_max_delay = "1s"
payload = "json+gzip"

[buffer]
dir = "/var/lib/opcua-connector/buffer"
max_bytes = "10GiB"
when_full = "pause"
segment_bytes = "64MiB"

[[write]]
property = "fillerSpeedSetpoint"
plc = "filler"
node = "nsu=urn:example:filler;s=Filler.SpeedSetpoint"
type = "Double"
min = 0.0
max = 1200
readback = false
max_rate = "1s"

[[method]]
name = "resetCounters"
plc = "filler"
object = "nsu=urn:example:filler;s=Filler"
method = "nsu=urn:example:filler;s=Filler.ResetCounters"
timeout = "30s"

[metrics]
listen = "127.0.0.1:9464"
"#;
    let config = parse(Path::new(FILE), text).unwrap_or_else(|e| panic!("{e}"));
    let uri = |u: &str, s: &str| NodeRef::Uri {
        namespace_uri: u.into(),
        identifier: Identifier::String(s.into()),
    };
    let ms = Duration::from_millis;
    let expected = Config {
        source: PathBuf::from(FILE),
        line: Line {
            id: "line-a".into(),
            site: Some("plant-1".into()),
        },
        plcs: vec![
            Plc {
                id: "filler".into(),
                endpoint: "opc.tcp://192.0.2.10:4840".into(),
                security_policy: SecurityPolicy::Basic256Sha256,
                security_mode: SecurityMode::SignAndEncrypt,
                auth: Auth::UserName {
                    username: "connector".into(),
                    password: Secret::Env("FILLER_PW".into()),
                },
                groups: vec![
                    Group {
                        telemetry: None,
                        exception: None,
                        backfill: None,
                        name: "fast".into(),
                        publishing_interval: ms(100),
                        sampling_interval: ms(50),
                        queue_size: QueueSize::Auto,
                        deadband: Deadband::Absolute(0.5),
                        nodes: vec![
                            NodeEntry {
                                node: uri("urn:example:filler", "Filler.Speed"),
                                alias: None,
                                flatten: vec![],
                                exception: None,
                            },
                            NodeEntry {
                                node: NodeRef::Index {
                                    namespace: 2,
                                    identifier: Identifier::Numeric(1042),
                                },
                                alias: Some("tank_level".into()),
                                flatten: vec![],
                                exception: None,
                            },
                            NodeEntry {
                                node: NodeRef::Index {
                                    namespace: 0,
                                    identifier: Identifier::Numeric(2258),
                                },
                                alias: None,
                                flatten: vec![],
                                exception: None,
                            },
                            NodeEntry {
                                node: NodeRef::Uri {
                                    namespace_uri: "urn:x".into(),
                                    identifier: Identifier::Guid(
                                        "6f9619ff-8b86-d011-b42d-00c04fc964ff".into(),
                                    ),
                                },
                                alias: None,
                                flatten: vec![],
                                exception: None,
                            },
                            NodeEntry {
                                node: NodeRef::Uri {
                                    namespace_uri: "urn:x".into(),
                                    identifier: Identifier::Opaque("AQID".into()),
                                },
                                alias: None,
                                flatten: vec![],
                                exception: None,
                            },
                        ],
                        browse: vec![BrowseSelection {
                            root: uri("urn:example:filler", "Filler"),
                            recursive: true,
                            include: Some("*Temp*".into()),
                            exclude: None,
                        }],
                    },
                    Group {
                        telemetry: None,
                        exception: None,
                        backfill: Some(BackfillConfig {
                            max: Duration::from_secs(1800),
                            rate: BackfillConfig::DEFAULT_RATE,
                        }),
                        name: "slow".into(),
                        publishing_interval: ms(1000),
                        sampling_interval: ms(1000),
                        queue_size: QueueSize::Fixed(NonZeroUsize::new(10).unwrap()),
                        deadband: Deadband::Percent(1.0),
                        nodes: vec![],
                        browse: vec![BrowseSelection {
                            root: NodeRef::Index {
                                namespace: 2,
                                identifier: Identifier::String("Tank".into()),
                            },
                            recursive: false,
                            include: None,
                            exclude: Some("*Raw*".into()),
                        }],
                    },
                ],
                events: vec![],
                max_concurrent_commands: 4,
            },
            Plc {
                id: "labeler".into(),
                endpoint: "opc.tcp://labeler.local:4840/ua".into(),
                security_policy: SecurityPolicy::Aes256Sha256RsaPss,
                security_mode: SecurityMode::Sign,
                auth: Auth::Certificate {
                    cert_file: "certs/labeler.der".into(),
                    key_file: "certs/labeler.pem".into(),
                },
                groups: vec![],
                events: vec![],
                max_concurrent_commands: 4,
            },
        ],
        pki: Pki {
            dir: "/var/lib/opcua-connector/pki".into(),
            trust_unknown_servers: true,
        },
        parquet: Some(ParquetSinkConfig {
            dir: "data".into(),
            events_dir: "data-events".into(),
            compression: Compression::Zstd { level: 9 },
            roll_rows: NonZeroUsize::new(500_000).unwrap(),
            roll_bytes: 64 << 20,
            roll_interval: Duration::from_secs(60),
            queue_samples: NonZeroUsize::new(200_000).unwrap(),
            retention: crate::config::ParquetRetention::default(),
            upload: None,
        }),
        writes: vec![WriteMapping {
            property: "fillerSpeedSetpoint".into(),
            plc: "filler".into(),
            node: uri("urn:example:filler", "Filler.SpeedSetpoint"),
            write_type: WriteType::Double,
            min: Some(0.0),
            max: Some(1200.0),
            readback: false,
            max_rate: Some(Duration::from_secs(1)),
        }],
        methods: vec![MethodMapping {
            name: "resetCounters".into(),
            plc: "filler".into(),
            object: uri("urn:example:filler", "Filler"),
            method: uri("urn:example:filler", "Filler.ResetCounters"),
            timeout: Duration::from_secs(30),
        }],
        metrics: Some(MetricsConfig {
            listen: "127.0.0.1:9464".parse().unwrap(),
        }),
        mqtt: Some(MqttSinkConfig {
            url: "mqtts://broker.example:8884".into(),
            host: "broker.example".into(),
            port: 8884,
            tls: Some(TlsConfig {
                ca_file: Some(CaRoots::File("certs/ca.pem".into())),
                cert_file: Some("certs/client.pem".into()),
                key_file: Some("certs/client.key".into()),
            }),
            transport: MqttTransport::Tcp,
            proxy: None,
            version: MqttVersion::V5,
            client_id: "line-a-connector".into(),
            username: Some("connector".into()),
            password: Some(Secret::Env("MQTT_PASSWORD".into())),
            topic: "plants/{site}/{line}/{plc}/{group}/samples".into(),
            command_topic: "opcua/{site}/{line}/cmd".into(),
            qos: 0,
            batch_max_samples: NonZeroUsize::new(2000).unwrap(),
            batch_max_delay: ms(500),
            max_message_bytes: 128 << 10,
            payload: Payload::JsonGzip,
            keep_alive: Duration::from_secs(60),
            allow_insecure_commands: false,
            status: None,
        }),
        hub: Some(HubConfig {
            auth: HubAuth::ConnectionString(Secret::File("/run/secrets/iothub".into())),
            sas_ttl: Duration::from_secs(30 * 60),
            insecure_endpoint: None,
            https_endpoint: None,
            endpoint: None,
            transport: HubTransport::Mqtt,
            proxy: None,
            ca_file: Some(CaRoots::File("certs/digicert-global-root-g2.pem".into())),
            batch_max_samples: NonZeroUsize::new(250).unwrap(),
            batch_max_delay: Duration::from_secs(1),
            payload: Payload::JsonGzip,
            pending_write_max_age: Duration::from_secs(3600),
            status_interval: None,
            model_id: None,
        }),
        buffer: BufferConfig {
            dir: "/var/lib/opcua-connector/buffer".into(),
            max_bytes: 10 << 30,
            when_full: WhenFull::Pause,
            segment_bytes: 64 << 20,
            min_free: 256 << 20,
        },
        rules: vec![],
        warnings: vec![],
    };
    assert_eq!(config, expected);
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = parse(Path::new(FILE), MINIMAL).unwrap_or_else(|e| panic!("{e}"));
    let p = &c.plcs[0];
    assert_eq!(
        (p.security_policy, p.security_mode),
        (SecurityPolicy::None, SecurityMode::None)
    );
    assert_eq!(p.auth, Auth::Anonymous);
    let g = &p.groups[0];
    assert_eq!(g.sampling_interval, g.publishing_interval);
    assert_eq!(
        (g.queue_size, g.deadband),
        (QueueSize::Auto, Deadband::None)
    );
    assert_eq!(
        c.pki,
        Pki {
            dir: "pki".into(),
            trust_unknown_servers: false
        }
    );
    assert_eq!((c.parquet, c.metrics, c.line.site), (None, None, None));

    let with_sink = format!("{MINIMAL}\n[sink.parquet]\n");
    let c = parse(Path::new(FILE), &with_sink).unwrap_or_else(|e| panic!("{e}"));
    let sink = c.parquet.unwrap();
    assert_eq!(sink.dir, PathBuf::from("data"));
    assert_eq!(sink.compression, Compression::Zstd { level: 3 });
    assert_eq!(sink.roll_rows.get(), 1_000_000);
    assert_eq!(sink.roll_bytes, 128 << 20);
    assert_eq!(sink.roll_interval, Duration::from_secs(300));
    assert_eq!(sink.queue_samples.get(), 1_000_000);
}

#[test]
fn unknown_key_is_reported_with_line_and_key_path() {
    let text = MINIMAL.replace(
        "  name = \"fast\"\n",
        "  name = \"fast\"\n  publish_interval = \"1s\"\n",
    );
    assert_problem(
        &text,
        11,
        "plc[0].group[0].publish_interval",
        "unknown key `publish_interval`",
    );
}

#[test]
fn toml_syntax_error_is_reported_with_its_line() {
    let text = MINIMAL.replace("id = \"filler\"", "id = \"filler");
    let all = problems(&text);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert!(all[0].starts_with(&format!("{FILE}:6:")), "{all:#?}");
}

#[test]
fn bare_number_duration_asks_for_a_unit() {
    let text = MINIMAL.replace("\"100ms\"", "100");
    assert_problem(
        &text,
        11,
        "plc[0].group[0].publishing_interval",
        "add a unit",
    );
    let text = MINIMAL.replace("\"100ms\"", "\"100 parsecs\"");
    assert_problem(
        &text,
        11,
        "plc[0].group[0].publishing_interval",
        "is not a duration",
    );
    let text = MINIMAL.replace("\"100ms\"", "\"0ms\"");
    assert_problem(
        &text,
        11,
        "plc[0].group[0].publishing_interval",
        "greater than 0",
    );
    // A duration past any use would overflow a clock it is added to (e.g. `max_rate`).
    let text = MINIMAL.replace("\"100ms\"", "\"500000000000y\"");
    assert_problem(
        &text,
        11,
        "plc[0].group[0].publishing_interval",
        "at most 10 years",
    );
    let text = MINIMAL.replace("\"100ms\"", "\"3650days\"");
    assert!(
        parse(Path::new(FILE), &text).is_ok(),
        "10 years less a bit is taken"
    );
}

#[test]
fn every_problem_in_a_file_is_reported() {
    let text = r#"
[line]
id = "line a"

[[plc]]
id = "filler"
endpoint = "http://192.0.2.10"
security_policy = "Basic256Sha256"

  [[plc.group]]
  name = "fast"
  publishing_interval = "100"
  sampling_interval = "5 fortnights"
  deadband = { absolute = 1, percent = 2 }
  nodes = ["ns=x;i=1", "i=85", "i=85"]

  [[plc.group]]
  name = "fast"
  publishing_interval = "1s"

[sink.parquet]
compression = "zstd:40"
roll_bytes = "12 parsecs"
roll_rows = 0

[[write]]
property = "speed"
plc = "capper"
node = "ns=2;s=Speed"
type = "Real"

[[write]]
property = "speed"
plc = "filler"
node = "ns=2;s=Speed"
type = "Int16"
min = 10
max = 1

[[method]]
name = "reset"
plc = "filler"
object = "ns=2;s=Filler"
method = "ns=2;s=Filler.Reset"
timeout = "0s"

[metrics]
listen = "localhost:9464"
"#;
    let all = problems(text);
    let expect = [
        ":3: line.id: ",
        ":7: plc[0].endpoint: ",
        ":8: plc[0].security_policy: ",
        ":12: plc[0].group[0].publishing_interval: ",
        ":13: plc[0].group[0].sampling_interval: ",
        ":14: plc[0].group[0].deadband: ",
        ":15: plc[0].group[0].nodes[0]: ",
        ":15: plc[0].group[0].nodes[2]: ",
        ":18: plc[0].group[1].name: ",
        ":17: plc[0].group[1]: ",
        ":22: sink.parquet.compression: ",
        ":23: sink.parquet.roll_bytes: ",
        ":24: sink.parquet.roll_rows: ",
        ":28: write[0].plc: ",
        ":30: write[0].type: ",
        ":33: write[1].property: ",
        ":38: write[1].max: ",
        ":45: method[0].timeout: ",
        ":48: metrics.listen: ",
    ];
    assert_exactly(&all, &expect);
}

#[test]
fn io_error_names_the_path() {
    let e = load(Path::new("/nonexistent/line.toml")).unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }));
    assert!(
        e.to_string()
            .starts_with("cannot read /nonexistent/line.toml: "),
        "{e}"
    );
}

#[test]
fn node_ids_parse_in_every_form_and_display_as_written() {
    for id in [
        "nsu=urn:a:b;s=X.Y",
        "nsu=http://x/;i=7",
        "ns=3;s=a;b",
        "i=85",
        "ns=1;b=AAE=",
        "nsu=u;g=00000000-0000-0000-0000-000000000001",
    ] {
        let node: NodeRef = id.parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(node.to_string(), id);
    }
    for bad in [
        "",
        "85",
        "nsu=;s=X",
        "nsu=urn:a",
        "ns=70000;i=1",
        "ns=1;i=-1",
        "i=x",
        "s=",
        "g=123",
        "b=!!",
        "q=1",
    ] {
        let e = bad.parse::<NodeRef>().unwrap_err();
        assert!(
            e.to_string().starts_with(&format!("bad node id {bad:?}: ")),
            "{e}"
        );
    }
}

#[test]
fn sizes_parse_with_binary_and_decimal_units() {
    assert_eq!(parse_size("64MiB"), Ok(64 << 20));
    assert_eq!(parse_size("128MB"), Ok(128_000_000));
    assert_eq!(parse_size("1GiB"), Ok(1 << 30));
    assert_eq!(parse_size("512 KiB"), Ok(512 << 10));
    assert_eq!(parse_size("1.5kib"), Ok(1536));
    assert_eq!(parse_size("100B"), Ok(100));
    assert!(parse_size("1024").unwrap_err().contains("no unit"));
    assert!(parse_size("12 parsecs")
        .unwrap_err()
        .contains("unknown size unit"));
    assert!(parse_size("MiB").is_err());
    assert!(parse_size("99999999999TiB")
        .unwrap_err()
        .contains("too large"));
    assert_eq!(format_size(128 << 20), "128MiB");
    assert_eq!(format_size(1 << 30), "1GiB");
    assert_eq!(format_size(1500), "1500B");
}

#[test]
fn integer_size_is_bytes() {
    let text = format!("{MINIMAL}\n[sink.parquet]\nroll_bytes = 1048576\n");
    let c = parse(Path::new(FILE), &text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.parquet.map(|p| p.roll_bytes), Some(1 << 20));
}

#[test]
fn section_examples_in_configuration_md_are_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let base = MINIMAL.replace("id = \"line-a\"", "id = \"line-a\"\nsite = \"plant-1\"");
    let mut seen = 0;
    for block in doc.split("```toml\n").skip(1) {
        let block = block.split("```").next().unwrap_or_default();
        let sections = ["[sink.", "[hub]", "[buffer]", "[pki]", "[metrics]"];
        if sections.iter().any(|s| block.starts_with(s)) {
            parse(Path::new("example.toml"), &format!("{base}\n{block}"))
                .unwrap_or_else(|e| panic!("{e}\nin example:\n{block}"));
            seen += 1;
        }
    }
    assert!(
        seen >= 8,
        "only {seen} examples found in {}",
        path.display()
    );
}

#[test]
fn every_file_in_configs_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            load(&path).unwrap_or_else(|e| panic!("{e}"));
            seen += 1;
        }
    }
    assert!(
        seen >= 2,
        "expected demo.toml and line-a.toml in {}",
        dir.display()
    );
}

#[test]
fn the_packaged_example_is_valid_and_secure() {
    // Installed as /etc/opcua-connector/example.toml by the .deb.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("debian/example.toml");
    let config = load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    // The service runs in the line's state directory: relative paths land there.
    assert!(config.pki.dir.is_relative() && config.buffer.dir.is_relative());
}
