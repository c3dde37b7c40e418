//! The DTDL generator on configs written here: what each config entry becomes, the names
//! DTDL allows, and the errors for names that collide.

use std::path::Path;

use opcua::types::{LocalizedText, NodeId, UAString};
use serde_json::Value;

use super::*;
use crate::config::parse;

const LINE: &str = r#"
[line]
id = "line-a"
site = "plant-1"

[[plc]]
id = "filler"
endpoint = "opc.tcp://127.0.0.1:4840/"

  [[plc.group]]
  name = "fast"
  publishing_interval = "100ms"
  backfill = true
  nodes = ["nsu=urn:x;s=Speed", "nsu=urn:x;s=Temp"]

  [[plc.group]]
  name = "process"
  publishing_interval = "1s"
  nodes = ["nsu=urn:x;s=Pressure"]

    [plc.group.telemetry]
    window = "1m"
    aggregates = ["count", "mean", "max"]

  [[plc.events]]
  name = "alarms"
  fields = [{ path = "ActiveState/Id", type = "i=2915" }]

[hub]
connection_string_env = "IOTHUB_CS"
insecure_endpoint = "127.0.0.1:1883"

[[write]]
property = "fillerSpeedSetpoint"
plc = "filler"
node = "nsu=urn:x;s=SpeedSetpoint"
type = "Double"
min = 0.0
max = 1200.0

[[write]]
property = "recipe.name"
plc = "filler"
node = "nsu=urn:x;s=RecipeName"
type = "String"

[[write]]
property = "recipe.batch"
plc = "filler"
node = "nsu=urn:x;s=Batch"
type = "UInt16"
max_rate = "1m"

[[write]]
property = "valve"
plc = "filler"
node = "nsu=urn:x;s=Valve"
type = "Boolean"
readback = false

[[method]]
name = "resetCounters"
plc = "filler"
object = "nsu=urn:x;s=Filler"
method = "nsu=urn:x;s=Filler.ResetCounters"

[[method]]
name = "start"
plc = "filler"
object = "nsu=urn:x;s=Filler"
method = "nsu=urn:x;s=Filler.Start"

[[rule]]
name = "hot"
when = { node = "nsu=urn:x;s=Temp", above = 16.0 }
on_fire = [{ alert = "filler hot", severity = 700 }]
"#;

fn config(text: &str) -> Config {
    parse(Path::new("line-a.toml"), text).unwrap_or_else(|e| panic!("{e}"))
}

fn arg(name: &str, builtin: u32, description: &str) -> Argument {
    Argument {
        name: UAString::from(name),
        data_type: NodeId::new(0, builtin),
        value_rank: -1,
        array_dimensions: None,
        description: LocalizedText::new("", description),
    }
}

/// What the simulator's ResetCounters declares.
fn reset_signature() -> Arguments {
    Arguments::Plc(Signature {
        inputs: vec![arg("Reason", 12, "why the counters are reset")],
        outputs: vec![arg("CountersReset", 7, ""), arg("PreviousTotal", 9, "")],
    })
}

fn arguments(pairs: Vec<(&str, Arguments)>) -> BTreeMap<String, Arguments> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn known() -> BTreeMap<String, Arguments> {
    arguments(vec![
        ("resetCounters", reset_signature()),
        ("start", Arguments::Plc(Signature::default())),
    ])
}

/// The element of `contents` named `name`.
fn content<'a>(m: &'a Model, name: &str) -> &'a Value {
    m.interface["contents"]
        .as_array()
        .expect("contents")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {:#}", m.interface))
}

/// The field `name` of an Object schema.
fn field_of<'a>(object: &'a Value, name: &str) -> &'a Value {
    object["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no field {name} in {object:#}"))
}

fn field_names(object: &Value) -> Vec<&str> {
    object["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .map(|f| f["name"].as_str().expect("a name"))
        .collect()
}

/// Every `name` in the document is a DTDL name, and every text within DTDL's limits.
fn assert_dtdl_limits(v: &Value) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                match (k.as_str(), x) {
                    ("name", Value::String(n)) => assert!(is_dtdl_name(n), "name {n:?}"),
                    ("description" | "comment", Value::String(t)) => {
                        assert!(t.chars().count() <= 512, "{k} of {} chars", t.len())
                    }
                    ("displayName", Value::String(t)) => assert!(t.chars().count() <= 64),
                    _ => assert_dtdl_limits(x),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(assert_dtdl_limits),
        _ => {}
    }
}

#[test]
fn the_interface_has_a_telemetry_per_stream_a_property_per_write_and_a_command_per_method() {
    let m = interface(&config(LINE), &known()).unwrap();
    let i = &m.interface;
    assert_eq!(i["@context"], "dtmi:dtdl:context;3");
    assert_eq!(i["@type"], "Interface");
    assert_eq!(i["@id"], "dtmi:opcua_connector:plant_1:line_a;1");
    assert!(m.derived_id);
    let kinds: Vec<(&str, &str)> = i["contents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["@type"].as_str().unwrap(), c["name"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("Telemetry", "filler_fast"),
            ("Telemetry", "filler_process"),
            ("Telemetry", "filler_alarms"),
            ("Telemetry", "filler_alerts"),
            ("Property", "fillerSpeedSetpoint"),
            ("Property", "recipe"),
            ("Property", "valve"),
            ("Command", "resetCounters"),
            ("Command", "start"),
        ]
    );
    assert_dtdl_limits(i);
    assert!(m.notes.is_empty(), "{:?}", m.notes);
}

#[test]
fn a_group_telemetry_describes_the_message_body_the_connector_sends() {
    let m = interface(&config(LINE), &known()).unwrap();
    let fast = content(&m, "filler_fast");
    let body = &fast["schema"];
    assert_eq!(body["@type"], "Object");
    assert_eq!(
        field_names(body),
        ["schema", "epoch", "line", "plc", "group", "seq", "samples"]
    );
    assert_eq!(field_of(body, "seq")["schema"], "long");
    let samples = &field_of(body, "samples")["schema"];
    assert_eq!(samples["@type"], "Array");
    let sample = &samples["elementSchema"];
    assert_eq!(
        field_names(sample),
        ["node", "name", "t", "v", "type", "st", "origin"]
    );
    assert_eq!(field_of(sample, "t")["schema"], "dateTime");
    // Backfilled samples say so; there is no heartbeat without report by exception.
    let origin = &field_of(sample, "origin")["schema"];
    assert_eq!(origin["@type"], "Enum");
    assert_eq!(origin["enumValues"][0]["enumValue"], "history");
    assert_eq!(origin["enumValues"].as_array().unwrap().len(), 1);
    assert!(fast["description"]
        .as_str()
        .unwrap()
        .contains("plc=filler and group=fast"));

    // A shaped group sends windows (with its aggregates only) beside samples.
    let process = &content(&m, "filler_process")["schema"];
    let windows = &field_of(process, "windows")["schema"]["elementSchema"];
    assert_eq!(
        field_names(windows),
        ["node", "name", "start", "end", "count", "max", "mean", "bad", "partial"]
    );
    assert_eq!(field_of(windows, "count")["schema"], "long");
    assert_eq!(field_of(windows, "mean")["schema"], "double");
    let sample = &field_of(process, "samples")["schema"]["elementSchema"];
    assert!(!field_names(sample).contains(&"origin"));

    // Events and alerts have their arrays.
    let alarms = &content(&m, "filler_alarms")["schema"];
    let event = &field_of(alarms, "events")["schema"]["elementSchema"];
    assert_eq!(field_of(event, "severity")["schema"], "integer");
    assert_eq!(field_of(event, "fields")["schema"]["@type"], "Map");
    let alerts = &content(&m, "filler_alerts")["schema"];
    let alert = &field_of(alerts, "alerts")["schema"]["elementSchema"];
    assert_eq!(
        field_of(alert, "state")["schema"]["enumValues"][1]["name"],
        "cleared"
    );
}

#[test]
fn writes_are_writable_properties_with_their_type_and_limits() {
    let m = interface(&config(LINE), &known()).unwrap();
    let speed = content(&m, "fillerSpeedSetpoint");
    assert_eq!(speed["writable"], true);
    assert_eq!(speed["schema"], "double");
    let d = speed["description"].as_str().unwrap();
    assert!(
        d.contains("from 0 to 1200") && d.contains("read back"),
        "{d}"
    );
    assert!(speed["comment"]
        .as_str()
        .unwrap()
        .contains("node nsu=urn:x;s=SpeedSetpoint"));

    // A dotted path nests as the twin does.
    let recipe = content(&m, "recipe");
    assert_eq!(recipe["writable"], true);
    assert_eq!(field_names(&recipe["schema"]), ["name", "batch"]);
    assert_eq!(field_of(&recipe["schema"], "name")["schema"], "string");
    let batch = field_of(&recipe["schema"], "batch");
    assert_eq!(batch["schema"], "integer");
    let d = batch["description"].as_str().unwrap();
    assert!(
        d.contains("from 0 to 65535") && d.contains("at most one write every 1m"),
        "{d}"
    );

    let valve = content(&m, "valve");
    assert_eq!(valve["schema"], "boolean");
    assert!(valve["description"]
        .as_str()
        .unwrap()
        .contains("not read back"));
}

#[test]
fn every_write_type_has_a_dtdl_v3_primitive_schema() {
    let v3 = ["boolean", "integer", "long", "float", "double", "string"];
    for t in WriteType::ALL {
        assert!(v3.contains(&write_schema(t)), "{t:?}");
    }
    assert_eq!(write_schema(WriteType::Int32), "integer");
    assert_eq!(write_schema(WriteType::UInt32), "long");
    assert_eq!(write_schema(WriteType::Int64), "long");
    assert_eq!(write_schema(WriteType::Float), "float");
    assert_eq!(write_schema(WriteType::ByteString), "string");
}

#[test]
fn a_method_read_from_the_plc_has_its_arguments_as_request_and_response() {
    let m = interface(&config(LINE), &known()).unwrap();
    let reset = content(&m, "resetCounters");
    assert_eq!(reset["@type"], "Command");
    let request = &reset["request"];
    assert_eq!(request["@type"], "CommandRequest");
    assert_eq!(field_names(&request["schema"]), ["Reason"]);
    let reason = field_of(&request["schema"], "Reason");
    assert_eq!(reason["schema"], "string");
    assert_eq!(reason["description"], "why the counters are reset");
    let response = &reset["response"]["schema"];
    assert_eq!(field_names(response), ["CountersReset", "PreviousTotal"]);
    assert_eq!(field_of(response, "CountersReset")["schema"], "long");
    assert_eq!(field_of(response, "PreviousTotal")["schema"], "long");

    // No arguments: no request, no response.
    let start = content(&m, "start");
    assert!(start.get("request").is_none() && start.get("response").is_none());
}

#[test]
fn output_arguments_keep_their_types_ranks_and_the_names_the_answer_uses() {
    let mut list = arg("Levels", 11, "");
    list.value_rank = 1;
    let sig = Signature {
        inputs: vec![arg("When", 13, ""), arg("Blob", 15, "")],
        outputs: vec![
            list,
            arg("", 1, ""),
            arg("Label", 21, ""),
            arg("At", 13, ""),
            Argument {
                data_type: NodeId::new(2, 3001),
                ..arg("Recipe", 0, "")
            },
        ],
    };
    let m = interface(
        &config(LINE),
        &arguments(vec![("resetCounters", Arguments::Plc(sig))]),
    )
    .unwrap();
    let reset = content(&m, "resetCounters");
    let out = &reset["response"]["schema"];
    assert_eq!(
        field_names(out),
        ["Levels", "out1", "Label", "At", "Recipe"]
    );
    assert_eq!(
        field_of(out, "Levels")["schema"],
        serde_json::json!({"@type": "Array", "elementSchema": "double"})
    );
    assert_eq!(field_of(out, "out1")["schema"], "boolean");
    assert_eq!(field_of(out, "Label")["schema"]["@type"], "Object");
    assert_eq!(field_of(out, "At")["schema"], "dateTime");
    assert!(field_of(out, "Recipe")["description"]
        .as_str()
        .unwrap()
        .contains("ns=2;i=3001"));
    // A DateTime input is not one the connector converts: said in the field and in a note.
    let when = field_of(&reset["request"]["schema"], "When");
    assert!(when["description"]
        .as_str()
        .unwrap()
        .contains("not supported"));
    assert!(
        m.notes
            .iter()
            .any(|n| n.contains("argument \"When\"") && n.contains("refused")),
        "{:?}",
        m.notes
    );
    assert_eq!(
        field_of(&reset["request"]["schema"], "Blob")["schema"],
        "string"
    );
}

#[test]
fn a_method_whose_plc_was_not_reachable_is_described_and_noted() {
    let why = "plc filler at opc.tcp://127.0.0.1:4840/ not reachable: BadCommunicationError";
    let m = interface(
        &config(LINE),
        &arguments(vec![
            ("resetCounters", Arguments::Unknown(why.to_owned())),
            ("start", Arguments::Plc(Signature::default())),
        ]),
    )
    .unwrap();
    let reset = content(&m, "resetCounters");
    assert!(reset.get("request").is_none());
    assert!(reset["description"]
        .as_str()
        .unwrap()
        .contains("object by argument name"));
    assert_eq!(m.notes.len(), 1, "{:?}", m.notes);
    assert!(
        m.notes[0].contains("method[0] (name \"resetCounters\")") && m.notes[0].contains(why),
        "{}",
        m.notes[0]
    );
}

#[test]
fn the_model_id_of_the_hub_is_the_interface_id() {
    let text = LINE.replace(
        "insecure_endpoint = \"127.0.0.1:1883\"",
        "insecure_endpoint = \"127.0.0.1:1883\"\nmodel_id = \"dtmi:com:example:Filling;4\"",
    );
    let m = interface(&config(&text), &known()).unwrap();
    assert_eq!(m.interface["@id"], "dtmi:com:example:Filling;4");
    assert!(!m.derived_id);
}

#[test]
fn status_interval_adds_connector_status_as_a_read_only_property() {
    let without = interface(&config(LINE), &known()).unwrap();
    let names: Vec<&Value> = without.interface["contents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["name"])
        .collect();
    assert!(
        !names.contains(&&Value::from("connectorStatus")),
        "{names:?}"
    );
    let text = LINE.replace(
        "insecure_endpoint = \"127.0.0.1:1883\"",
        "insecure_endpoint = \"127.0.0.1:1883\"\nstatus_interval = \"30s\"",
    );
    let m = interface(&config(&text), &known()).unwrap();
    let p = content(&m, "connectorStatus");
    assert_eq!(
        (&p["@type"], &p["writable"]),
        (&Value::from("Property"), &Value::from(false))
    );
    // The fields of the document the connector reports (cloud::status).
    assert_eq!(
        field_names(&p["schema"]),
        [
            "state",
            "at",
            "version",
            "line",
            "plcs",
            "plcs_connected",
            "plcs_total",
            "backlog"
        ]
    );
    assert_eq!(
        field_names(&field_of(&p["schema"], "backlog")["schema"]),
        ["messages", "bytes", "oldest_s"]
    );
    assert_eq!(field_of(&p["schema"], "plcs")["schema"]["@type"], "Map");
    assert_dtdl_limits(&m.interface);
}

#[test]
fn derived_model_ids_are_dtmis_whatever_the_line_is_called() {
    let line = |id: &str, site: Option<&str>| Line {
        id: id.to_owned(),
        site: site.map(str::to_owned),
    };
    for (l, want) in [
        (line("line-a", None), "dtmi:opcua_connector:line_a;1"),
        (
            line("bottling-demo", Some("demo-plant")),
            "dtmi:opcua_connector:demo_plant:bottling_demo;1",
        ),
        (
            line("42", Some("7.b")),
            "dtmi:opcua_connector:site_7_b:line_42;1",
        ),
        (line("__x__", Some("-")), "dtmi:opcua_connector:site:x;1"),
    ] {
        assert_eq!(derived_model_id(&l), want);
    }
    let long = derived_model_id(&line(&"l".repeat(300), Some(&"s".repeat(300))));
    assert!(check_model_id(&long).is_ok(), "{long}");
}

#[test]
fn names_are_sanitised_to_dtdl_rules() {
    assert_eq!(dtdl_name("fillerSpeed", "p"), "fillerSpeed");
    assert_eq!(
        dtdl_name("filler-speed.set point", "p"),
        "filler_speed_set_point"
    );
    assert_eq!(dtdl_name("1st", "p"), "p_1st");
    assert_eq!(dtdl_name("_x_", "p"), "x");
    assert_eq!(dtdl_name("Drehzahl_ä", "p"), "Drehzahl");
    assert_eq!(dtdl_name("---", "p"), "p");
    let long = dtdl_name(&format!("{}_b", "a".repeat(63)), "p");
    assert_eq!(long, "a".repeat(63));
    assert!(is_dtdl_name(&long));
    assert!(!is_dtdl_name(&"a".repeat(65)));
    assert!(!is_dtdl_name("a_"));
}

#[test]
fn renamed_properties_and_methods_are_noted() {
    let text = LINE
        .replace("property = \"valve\"", "property = \"cooling-valve\"")
        .replace("name = \"start\"", "name = \"start.line\"");
    let m = interface(&config(&text), &known()).unwrap();
    content(&m, "cooling_valve");
    content(&m, "start_line");
    assert!(
        m.notes
            .iter()
            .any(|n| n.starts_with("write[3] (property \"cooling-valve\")")
                && n.contains("\"cooling_valve\"")),
        "{:?}",
        m.notes
    );
    assert!(
        m.notes
            .iter()
            .any(|n| n.starts_with("method[1] (name \"start.line\")")),
        "{:?}",
        m.notes
    );
}

#[test]
fn names_that_collide_are_refused_naming_both_entries() {
    // The write's name is the group's Telemetry name.
    let text = LINE.replace("property = \"valve\"", "property = \"filler_fast\"");
    let e = interface(&config(&text), &known()).unwrap_err();
    assert!(
        e.contains("write[3] (property \"filler_fast\")")
            && e.contains("plc[0].group[0] (plc \"filler\", group \"fast\")")
            && e.contains("\"filler_fast\""),
        "{e}"
    );
    // Two methods whose names differ only in what DTDL drops.
    let text = LINE
        .replace("name = \"start\"", "name = \"reset-Counters\"")
        .replace("name = \"resetCounters\"", "name = \"reset_Counters\"");
    let e = interface(&config(&text), &BTreeMap::new()).unwrap_err();
    assert!(
        e.contains("method[1] (name \"reset-Counters\") and method[0] (name \"reset_Counters\")"),
        "{e}"
    );
    // A value and an object of values at one twin path.
    let text = LINE.replace("property = \"valve\"", "property = \"recipe\"");
    let e = interface(&config(&text), &known()).unwrap_err();
    assert!(
        e.contains("write[3] (property \"recipe\")") && e.contains("both a value and an object"),
        "{e}"
    );
    // Arguments of one method.
    let sig = Signature {
        inputs: vec![arg("a-b", 12, ""), arg("a_b", 12, "")],
        outputs: Vec::new(),
    };
    let e = interface(
        &config(LINE),
        &arguments(vec![("resetCounters", Arguments::Plc(sig))]),
    )
    .unwrap_err();
    assert!(
        e.contains("argument \"a_b\"") && e.contains("argument \"a-b\""),
        "{e}"
    );
}

#[test]
fn long_texts_are_cut_to_dtdl_limits() {
    let long = "x".repeat(600);
    let sig = Signature {
        inputs: vec![arg("Reason", 12, &long)],
        outputs: Vec::new(),
    };
    let m = interface(
        &config(LINE),
        &arguments(vec![("resetCounters", Arguments::Plc(sig))]),
    )
    .unwrap();
    assert_dtdl_limits(&m.interface);
    let reason = field_of(&content(&m, "resetCounters")["request"]["schema"], "Reason");
    assert!(reason["description"].as_str().unwrap().ends_with('…'));
}
