//! `opcua-connector dtdl` against the simulator: every `[[write]]` becomes a writable
//! Property and every `[[method]]` a Command, and a method's request and response are the
//! arguments the PLC declares (names, types and descriptions as the simulator's nodeset has
//! them, which the config does not hold); a PLC that cannot be reached leaves its methods
//! described only, with a note on stderr.

use std::path::Path;

use serde_json::Value;
use tests::*;

/// One argument as the nodeset declares it: name, DataType (`i=N`), description.
#[derive(Debug)]
struct Declared {
    name: String,
    data_type: String,
    description: String,
}

/// The text between `open` and `close` in `s`, after `from`.
fn between<'a>(s: &'a str, open: &str, close: &str) -> Option<(&'a str, usize)> {
    let start = s.find(open)? + open.len();
    let end = s[start..].find(close)? + start;
    Some((&s[start..end], end + close.len()))
}

/// The arguments of a method's `InputArguments` / `OutputArguments` property in the
/// simulator's nodeset.
fn declared(method: &str, property: &str) -> Vec<Declared> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../nodesets/bottling-line.NodeSet2.xml");
    let xml = std::fs::read_to_string(&path).expect("the simulator's nodeset");
    let head = format!("NodeId=\"ns=1;s={method}.{property}\"");
    let start = xml
        .find(&head)
        .unwrap_or_else(|| panic!("{head} in the nodeset"));
    let end = xml[start..].find("</UAVariable>").expect("its end") + start;
    let mut rest = &xml[start..end];
    let mut out = Vec::new();
    while let Some((body, after)) = between(rest, "<uax:Argument>", "</uax:Argument>") {
        let text =
            |open: &str, close: &str| between(body, open, close).expect(open).0.trim().to_owned();
        out.push(Declared {
            name: text("<uax:Name>", "</uax:Name>"),
            data_type: text("<uax:Identifier>", "</uax:Identifier>"),
            description: text("<uax:Text>", "</uax:Text>"),
        });
        rest = &rest[after..];
    }
    assert!(!out.is_empty(), "{method}.{property} declares arguments");
    out
}

/// The DTDL schema the connector gives a built-in type (`i=N`).
fn schema_of(data_type: &str) -> &'static str {
    match data_type {
        "i=1" => "boolean",
        "i=2" | "i=3" | "i=4" | "i=5" | "i=6" => "integer",
        "i=7" | "i=8" | "i=9" => "long",
        "i=10" => "float",
        "i=11" => "double",
        "i=12" => "string",
        other => panic!("a type this test does not expect: {other}"),
    }
}

fn by_name<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .expect("a list")
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {list:#}"))
}

/// The fields of an Object schema: the arguments as the model gives them.
fn assert_arguments(object: &Value, declared: &[Declared]) {
    assert_eq!(object["@type"], "Object");
    let fields = object["fields"].as_array().expect("fields");
    assert_eq!(fields.len(), declared.len(), "{object:#}");
    for (f, d) in fields.iter().zip(declared) {
        assert_eq!(f["name"], d.name.as_str());
        assert_eq!(f["schema"], schema_of(&d.data_type), "{}", d.name);
        let text = f["description"].as_str().unwrap_or_default();
        assert!(
            text.starts_with(&d.description),
            "{}: the PLC's description {:?}, got {text:?}",
            d.name,
            d.description
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtdl_lists_every_write_and_method_with_the_arguments_the_plc_declares() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), |_| {}).await;
    // A PLC that is not there: a port this test holds (so that no server another test starts
    // can take it, which made this test flaky), whose connections are closed at once.
    let closer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = closer.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in closer.incoming() {
            drop(stream);
        }
    });
    let config = dir.path().join("line.toml");
    let text = format!(
        r#"[line]
id = "line-d"
site = "plant"

[[plc]]
id = "sim"
endpoint = "{sim_url}"

  [[plc.group]]
  name = "fast"
  publishing_interval = "100ms"
  nodes = ["{bottles}"]

[[plc]]
id = "gone"
endpoint = "opc.tcp://127.0.0.1:{gone}/"

[pki]
dir = "{pki}"
trust_unknown_servers = true

[hub]
connection_string_env = "DTDL_TEST_CS"
insecure_endpoint = "127.0.0.1:1883"
model_id = "dtmi:com:example:opcua_connector:LineD;1"

[[write]]
property = "fillerSpeedSetpoint"
plc = "sim"
node = "{speed_sp}"
type = "Double"
min = 0.0
max = 1200.0

[[write]]
property = "recipe.name"
plc = "sim"
node = "{recipe}"
type = "String"

[[write]]
property = "goneSetpoint"
plc = "gone"
node = "nsu=urn:gone;s=Setpoint"
type = "Int32"

[[method]]
name = "resetCounters"
plc = "sim"
object = "{filler}"
method = "{reset}"

[[method]]
name = "startFiller"
plc = "sim"
object = "{filler}"
method = "{start}"

[[method]]
name = "stopCapper"
plc = "sim"
object = "{capper}"
method = "{stop}"

[[method]]
name = "goneMethod"
plc = "gone"
object = "nsu=urn:gone;s=Machine"
method = "nsu=urn:gone;s=Machine.Do"
"#,
        sim_url = sim.sim.endpoint_url(),
        bottles = line_node("Filler.BottlesFilled"),
        pki = dir.path().join("pki").display(),
        speed_sp = line_node("Filler.SpeedSetpoint"),
        recipe = line_node("Filler.RecipeName"),
        filler = line_node("Filler"),
        reset = line_node("Filler.ResetCounters"),
        start = line_node("Filler.Start"),
        capper = line_node("Capper"),
        stop = line_node("Capper.Stop"),
    );
    std::fs::write(&config, text).unwrap();

    let out = tokio::process::Command::new(connector_bin())
        .args([
            "dtdl",
            "--config",
            config.to_str().unwrap(),
            "--timeout",
            "5s",
        ])
        .output()
        .await
        .expect("run opcua-connector dtdl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let model: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(model["@context"], "dtmi:dtdl:context;3");
    assert_eq!(model["@type"], "Interface");
    assert_eq!(model["@id"], "dtmi:com:example:opcua_connector:LineD;1");
    let contents = &model["contents"];

    // Every [[write]]: a writable Property (the dotted one nested as the twin nests it).
    for (name, schema) in [
        ("fillerSpeedSetpoint", "double"),
        ("goneSetpoint", "integer"),
    ] {
        let p = by_name(contents, name);
        assert_eq!(
            (p["@type"].as_str(), p["writable"].as_bool()),
            (Some("Property"), Some(true))
        );
        assert_eq!(p["schema"], schema);
    }
    let recipe = by_name(contents, "recipe");
    assert_eq!(recipe["writable"], true);
    assert_eq!(
        by_name(&recipe["schema"]["fields"], "name")["schema"],
        "string"
    );

    // Every [[method]]: a Command; ResetCounters with the arguments the simulator declares.
    let reset = by_name(contents, "resetCounters");
    assert_eq!(reset["@type"], "Command");
    assert_arguments(
        &reset["request"]["schema"],
        &declared("Filler.ResetCounters", "InputArguments"),
    );
    assert_arguments(
        &reset["response"]["schema"],
        &declared("Filler.ResetCounters", "OutputArguments"),
    );
    for name in ["startFiller", "stopCapper"] {
        let c = by_name(contents, name);
        assert_eq!(c["@type"], "Command");
        assert!(
            c.get("request").is_none() && c.get("response").is_none(),
            "{c:#}"
        );
    }
    // The PLC that is not there: described, and said so.
    let gone_method = by_name(contents, "goneMethod");
    assert_eq!(gone_method["@type"], "Command");
    assert!(gone_method.get("request").is_none());
    assert!(
        stderr.contains("note: method[3] (name \"goneMethod\")")
            && stderr.contains("plc gone at")
            && stderr.contains("not reachable"),
        "{stderr}"
    );
    assert!(!stderr.contains("resetCounters"), "{stderr}");
    // The group's telemetry.
    assert_eq!(by_name(contents, "sim_fast")["@type"], "Telemetry");
    drop(sim);
}
