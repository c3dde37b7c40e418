//! Structures of the bundled simulator (docs/connector.md#samples, docs/simulator.md#structures):
//! `Filler.Batch` (FillerBatch: a String, a UInt32, a nested FillerRecipe and an array of
//! NozzleStatus) and `Filler.NozzleStatus` (NozzleStatus[4]) are pure functions of their update
//! number n. The connector process decodes them with the server's DataTypeDefinitions: every
//! field of every Parquet row and of every MQTT sample must be the formula's exact value, and
//! the fields chosen with `flatten` land as rows (and samples) of their own; fields that are
//! not in the value land without a value and with BadNoMatch, each warned about once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tests::*;

const BAD_NO_MATCH: u32 = 0x806F_0000;
const MISSING_WARNING: &str = "a flattened field is not in the structure's value";
const GROUP: &str = "structs";
/// Samples of each structure to see before the stop (one per 500 ms update).
const WANTED: usize = 8;

/// The flattened fields of `Batch`, as configured: five present, two not in the value (an
/// index past the array's end, a name the definition lacks).
const FLATTEN: [&str; 7] = [
    "Count",
    "Recipe.Name",
    "Recipe.TargetVolume",
    "Nozzles[2].FillLevel",
    "Nozzles[3]",
    "Nozzles[9].Ok",
    "Missing",
];

fn batch_node() -> String {
    format!("nsu={LINE_NS};s=Filler.Batch")
}

fn nozzles_node() -> String {
    format!("nsu={LINE_NS};s=Filler.NozzleStatus")
}

#[derive(Debug, Clone, PartialEq)]
struct Nozzle {
    index: u64,
    fill_level: f64,
    ok: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct Batch {
    id: String,
    count: u64,
    recipe_name: String,
    target_volume: f64,
    nozzles: Vec<Nozzle>,
}

/// N(i) at update n (docs/simulator.md#structures).
fn nozzle(n: u64, i: u64) -> Nozzle {
    Nozzle {
        index: i,
        fill_level: 500.0 + i as f64 + (n % 10) as f64 * 0.25,
        ok: !(n + i).is_multiple_of(7),
    }
}

fn nozzles(n: u64) -> Vec<Nozzle> {
    (0..4).map(|i| nozzle(n, i)).collect()
}

/// Batch at update n (docs/simulator.md#structures).
fn batch(n: u64) -> Batch {
    Batch {
        id: format!("B-{:05}", n / 100),
        count: n,
        recipe_name: "Cola 0.5 l".to_owned(),
        target_volume: 500.0,
        nozzles: nozzles(n),
    }
}

/// The fields of a structure (or of an array of structures) in OPC UA JSON: every
/// `{"Body": …}` / `{"UaTypeId": …, "UaBody": …}` wrapper taken off, at every depth.
fn fields(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            if let Some(body @ (Value::Object(_) | Value::Array(_))) = m.get("Body") {
                return fields(body);
            }
            if let Some(body) = m.get("UaBody") {
                return fields(body);
            }
            Value::Object(m.iter().map(|(k, x)| (k.clone(), fields(x))).collect())
        }
        Value::Array(a) => Value::Array(a.iter().map(fields).collect()),
        other => other.clone(),
    }
}

/// A variant holding a structure or an array of them, as documented
/// (`{"Type":22,"Body":{"UaTypeId":…,"UaBody":{…}}}`, or `"Body":[{…},…]`): its fields.
fn structure(v: &Value, what: &str) -> Value {
    assert_eq!(v["Type"], 22, "{what}: an ExtensionObject variant: {v}");
    let has_type_id = |x: &Value| x.get("UaTypeId").is_some() && x.get("UaBody").is_some();
    match &v["Body"] {
        Value::Array(a) => assert!(a.iter().all(has_type_id), "{what}: {v}"),
        body => assert!(has_type_id(body), "{what}: {v}"),
    }
    fields(v)
}

fn structure_text(text: &str, what: &str) -> Value {
    let v: Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"));
    structure(&v, what)
}

/// The object's fields, which must be exactly `names`.
fn object<'a>(v: &'a Value, names: &[&str], what: &str) -> &'a serde_json::Map<String, Value> {
    let m = v
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not a structure: {v}"));
    let got: BTreeSet<&str> = m.keys().map(String::as_str).collect();
    let want: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(got, want, "{what}: the fields of {v}");
    m
}

fn uint(v: &Value, what: &str) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{what}: not an unsigned integer: {v}"))
}

fn double(v: &Value, what: &str) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("{what}: not a number: {v}"))
}

fn text(v: &Value, what: &str) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: not a string: {v}"))
        .to_owned()
}

fn nozzle_of(v: &Value, what: &str) -> Nozzle {
    let m = object(v, &["Index", "FillLevel", "Ok"], what);
    Nozzle {
        index: uint(&m["Index"], what),
        fill_level: double(&m["FillLevel"], what),
        ok: m["Ok"]
            .as_bool()
            .unwrap_or_else(|| panic!("{what}: Ok is not a Boolean: {v}")),
    }
}

fn nozzles_of(v: &Value, what: &str) -> Vec<Nozzle> {
    v.as_array()
        .unwrap_or_else(|| panic!("{what}: not an array: {v}"))
        .iter()
        .map(|x| nozzle_of(x, what))
        .collect()
}

fn batch_of(v: &Value, what: &str) -> Batch {
    let m = object(v, &["Id", "Count", "Recipe", "Nozzles"], what);
    let recipe = object(&m["Recipe"], &["Name", "TargetVolume"], what);
    Batch {
        id: text(&m["Id"], what),
        count: uint(&m["Count"], what),
        recipe_name: text(&recipe["Name"], what),
        target_volume: double(&recipe["TargetVolume"], what),
        nozzles: nozzles_of(&m["Nozzles"], what),
    }
}

/// What a flattened field of the batch of update n holds.
#[derive(Debug, PartialEq)]
enum Field {
    Int(i64),
    Double(f64),
    Str(String),
    Element(Nozzle),
    /// Not in the value: no value, BadNoMatch.
    Missing,
}

/// The field's `type`, and its value at update n.
fn flattened(field: &str, n: u64) -> (&'static str, Field) {
    match field {
        "Count" => ("UInt32", Field::Int(n as i64)),
        "Recipe.Name" => ("String", Field::Str("Cola 0.5 l".to_owned())),
        "Recipe.TargetVolume" => ("Double", Field::Double(500.0)),
        "Nozzles[2].FillLevel" => ("Double", Field::Double(nozzle(n, 2).fill_level)),
        "Nozzles[3]" => ("NozzleStatus", Field::Element(nozzle(n, 3))),
        "Nozzles[9].Ok" | "Missing" => ("Null", Field::Missing),
        other => panic!("not a configured field: {other}"),
    }
}

/// A flattened Parquet row's value as a [`Field`] (its status must fit).
fn field_of_row(r: &Row) -> Field {
    let what = format!("row {} at {}", r.name, r.time);
    match &r.value {
        Val::Null => {
            assert_eq!(r.status, BAD_NO_MATCH, "{what}: no value, BadNoMatch");
            Field::Missing
        }
        value => {
            assert_eq!(r.status, 0, "{what}: Good");
            match value {
                Val::Int(i) => Field::Int(*i),
                Val::Double(d) => Field::Double(*d),
                Val::Str(s) => Field::Str(s.clone()),
                Val::Json(j) => Field::Element(nozzle_of(&structure_text(j, &what), &what)),
                other => panic!("{what}: unexpected value {other:?}"),
            }
        }
    }
}

/// A flattened MQTT sample's `v` as a [`Field`] (its `st` must fit).
fn field_of_sample(s: &Value) -> Field {
    let what = format!("sample {s}");
    let st = s.get("st").map_or(0, |st| uint(st, &what));
    match &s["v"] {
        Value::Null => {
            assert_eq!(st, u64::from(BAD_NO_MATCH), "{what}: no value, BadNoMatch");
            Field::Missing
        }
        v => {
            assert_eq!(st, 0, "{what}: Good (no `st`)");
            match v {
                Value::Number(x) if x.is_i64() => Field::Int(x.as_i64().unwrap()),
                Value::Number(x) => Field::Double(x.as_f64().unwrap()),
                Value::String(t) => Field::Str(t.clone()),
                Value::Object(_) => Field::Element(nozzle_of(&structure(v, &what), &what)),
                other => panic!("{what}: unexpected value {other}"),
            }
        }
    }
}

/// `Field::Int` and `Field::Double` of equal value are the same field for JSON, which has
/// only numbers (`500` may stand for 500.0).
fn same_field(expected: &Field, got: &Field) -> bool {
    match (expected, got) {
        (Field::Double(e), Field::Int(g)) => *e == *g as f64,
        _ => expected == got,
    }
}

fn config(dir: &Path, opc: u16, broker: u16) -> PathBuf {
    let flatten: Vec<String> = FLATTEN.iter().map(|f| format!("\"{f}\"")).collect();
    let text = format!(
        r#"[line]
id = "line-s"

[[plc]]
id = "sim"
endpoint = "{opc}"

  [[plc.group]]
  name = "{GROUP}"
  publishing_interval = "200ms"
  nodes = [
    {{ id = "{batch}", name = "Batch", flatten = [{flatten}] }},
    "{nozzles}",
  ]

[pki]
dir = "{pki}"
trust_unknown_servers = true

[sink.parquet]
dir = "{parquet}"
roll_interval = "1s"

[sink.mqtt]
url = "mqtt://127.0.0.1:{broker}"
qos = 1
batch_max_delay = "100ms"

[buffer]
dir = "{buffer}"
"#,
        opc = url(opc),
        batch = batch_node(),
        nozzles = nozzles_node(),
        flatten = flatten.join(", "),
        pki = dir.join("pki").display(),
        parquet = dir.join("parquet").display(),
        buffer = dir.join("buffer").display(),
    );
    let path = dir.join("line.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Every sample of the telemetry received, repeats (by epoch and seq) dropped.
fn samples(messages: &[(String, Vec<u8>)]) -> Vec<Value> {
    let mut out = Vec::new();
    for (topic, body) in unique_by_seq(messages) {
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["schema"], 2, "{topic}");
        assert_eq!(
            (v["plc"].as_str(), v["group"].as_str()),
            (Some("sim"), Some(GROUP))
        );
        out.extend(v["samples"].as_array().expect("samples").iter().cloned());
    }
    out
}

/// A sample's `t` in µs since the epoch.
fn sample_time(s: &Value) -> i64 {
    let t = s["t"].as_str().unwrap_or_else(|| panic!("no t: {s}"));
    chrono::DateTime::parse_from_rfc3339(t)
        .unwrap_or_else(|e| panic!("{t}: {e}"))
        .timestamp_micros()
}

fn of_node<'a>(samples: &'a [Value], node: &str) -> Vec<&'a Value> {
    samples.iter().filter(|s| s["node"] == node).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_structures_land_exact_in_parquet_and_mqtt_with_flattened_rows() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), |_| {}).await;
    // Both structures read as null before the simulator's first update: start after it.
    eventually(
        "the simulator's first structure update",
        Duration::from_secs(10),
        || async {
            let produced = |node: &str| {
                sim.sim
                    .node_stats(node)
                    .unwrap_or_else(|| panic!("the simulator has no {node}"))
                    .produced
            };
            (produced(&batch_node()) >= 1 && produced(&nozzles_node()) >= 1).then_some(())
        },
    )
    .await;
    let broker = start_broker();
    let sub = Subscriber::start(broker, "opcua/#").await;
    let path = config(dir.path(), sim.sim.port(), broker);
    let log_path = dir.path().join("connector.log");
    let mut conn = ConnectorProcess::run(&path, &log_path, &[("RUST_LOG", "info")]);
    // Both nodes update in the same tick: once the batch has been seen WANTED times, so has
    // the nozzles' array (checked on the rows below, with the counts and the log at hand).
    eventually(
        "Batch samples in the telemetry",
        Duration::from_secs(30),
        || {
            let s = samples(&sub.messages.lock().unwrap());
            let enough = of_node(&s, &batch_node())
                .iter()
                .filter(|x| x["name"] == "Batch")
                .count()
                >= WANTED;
            async move { enough.then_some(()) }
        },
    )
    .await;
    conn.terminate();
    assert!(conn.exit_within(Duration::from_secs(30)).await.success());
    let log = std::fs::read_to_string(&log_path).unwrap();
    let rows = read_all(&dir.path().join("parquet"));
    let telemetry = samples(&sub.messages.lock().unwrap());

    // One row of each structure per update (the first or last tick may lack one of them).
    let batches = series(&rows, GROUP, &batch_node());
    let (structs, flats): (Vec<&Row>, Vec<&Row>) = batches.iter().partition(|r| r.name == "Batch");
    let nozzle_rows = series(&rows, GROUP, &nozzles_node());
    assert!(
        structs.len() >= WANTED && nozzle_rows.len().abs_diff(structs.len()) <= 1,
        "{} Batch rows, {} NozzleStatus rows\n{log}",
        structs.len(),
        nozzle_rows.len()
    );

    // Parquet: every Batch row is the formula's batch of its Count, every field exact.
    let mut count_at: BTreeMap<i64, u64> = BTreeMap::new();
    for r in &structs {
        let what = format!("Batch row at {}", r.time);
        assert_eq!((r.plc.as_str(), r.status), ("sim", 0), "{what}");
        assert_eq!(r.type_name, "FillerBatch", "{what}");
        assert_eq!(r.origin, "live", "{what}");
        let Val::Json(j) = &r.value else {
            panic!("{what}: not in value_json: {:?}", r.value)
        };
        let got = batch_of(&structure_text(j, &what), &what);
        assert_eq!(got, batch(got.count), "{what}: {j}");
        assert!(
            count_at.insert(r.time, got.count).is_none(),
            "{what}: twice"
        );
    }
    let counts: Vec<i128> = count_at.values().map(|&n| i128::from(n)).collect();
    assert_eq!(
        counter_defects(&counts),
        (0, 0),
        "one row per update: {counts:?}"
    );

    // Flattening: per Batch row exactly one row per field, with its identity and timestamps.
    let names: BTreeSet<&str> = flats.iter().map(|r| r.name.as_str()).collect();
    let want: BTreeSet<String> = FLATTEN.iter().map(|f| format!("Batch.{f}")).collect();
    assert_eq!(
        names,
        want.iter().map(String::as_str).collect(),
        "the flattened rows' names"
    );
    assert_eq!(
        flats.len(),
        FLATTEN.len() * structs.len(),
        "one row per field"
    );
    for r in &structs {
        let n = count_at[&r.time];
        for field in FLATTEN {
            let name = format!("Batch.{field}");
            let what = format!("{name} at {} (n = {n})", r.time);
            let at: Vec<&&Row> = flats
                .iter()
                .filter(|x| x.name == name && x.time == r.time)
                .collect();
            assert_eq!(at.len(), 1, "{what}: one row");
            let x = at[0];
            assert_eq!(
                (&x.plc, &x.group, &x.node, x.server_time, &x.origin),
                (&r.plc, &r.group, &r.node, r.server_time, &r.origin),
                "{what}"
            );
            let (type_name, expected) = flattened(field, n);
            assert_eq!(x.type_name, type_name, "{what}");
            let got = field_of_row(x);
            assert!(
                same_field(&expected, &got),
                "{what}: {got:?} != {expected:?}"
            );
            // The column of its type: UInt32 in value_int, Double in value_double.
            match expected {
                Field::Int(_) => assert!(matches!(x.value, Val::Int(_)), "{what}"),
                Field::Double(_) => assert!(matches!(x.value, Val::Double(_)), "{what}"),
                _ => {}
            }
        }
    }
    assert_eq!(
        log.matches(MISSING_WARNING).count(),
        2,
        "one warning per missing field\n{log}"
    );
    for field in ["Nozzles[9].Ok", "Missing"] {
        assert!(
            log.lines()
                .any(|l| l.contains(MISSING_WARNING) && l.contains(field)),
            "the warning names {field}\n{log}"
        );
    }

    // Parquet: every NozzleStatus row is N(0..4) of one update, the same as the batch's of
    // that tick.
    let mut paired = 0;
    for r in &nozzle_rows {
        let what = format!("NozzleStatus row at {}", r.time);
        assert_eq!((r.name.as_str(), r.status), ("NozzleStatus", 0), "{what}");
        assert_eq!(r.type_name, "Array<NozzleStatus>", "{what}");
        let Val::Json(j) = &r.value else {
            panic!("{what}: not in value_json: {:?}", r.value)
        };
        let got = nozzles_of(&structure_text(j, &what), &what);
        assert_eq!(got.len(), 4, "{what}: {j}");
        // Only n % 10 and n % 7 matter: some n below 70 gives exactly these elements.
        assert!(
            (0..70).any(|n| got == nozzles(n)),
            "{what}: no update n gives {got:?}"
        );
        // Both nodes update in the same tick (source times a few ms apart): the batch of the
        // same tick holds the same nozzles.
        let near = count_at
            .range(r.time - 100_000..r.time + 100_000)
            .next()
            .map(|(_, n)| *n);
        if let Some(n) = near {
            assert_eq!(got, nozzles(n), "{what}: the batch's n = {n}");
            paired += 1;
        }
    }
    assert!(
        paired + 2 >= nozzle_rows.len(),
        "{paired} of {} NozzleStatus rows have a batch of the same tick",
        nozzle_rows.len()
    );

    // MQTT: the same structures and fields, each sample as its Parquet row.
    let row_at: BTreeMap<(&str, i64), &Row> = rows
        .iter()
        .map(|r| ((r.name.as_str(), r.time), r))
        .collect();
    let batch_samples: Vec<&Value> = of_node(&telemetry, &batch_node());
    let mut sample_count_at: BTreeMap<i64, u64> = BTreeMap::new();
    for s in batch_samples.iter().filter(|s| s["name"] == "Batch") {
        let what = format!("Batch sample {s}");
        assert_eq!(s["type"], "FillerBatch", "{what}");
        assert!(s.get("st").is_none(), "{what}: Good");
        assert!(s["v"].is_object(), "{what}: `v` embedded as an object");
        let got = batch_of(&structure(&s["v"], &what), &what);
        assert_eq!(got, batch(got.count), "{what}");
        let t = sample_time(s);
        assert_eq!(count_at.get(&t), Some(&got.count), "{what}: as in Parquet");
        sample_count_at.insert(t, got.count);
    }
    assert!(sample_count_at.len() >= WANTED, "{telemetry:?}");
    let newest = *sample_count_at.keys().next_back().unwrap();
    for field in FLATTEN {
        let name = format!("Batch.{field}");
        let of_field: Vec<&&Value> = batch_samples
            .iter()
            .filter(|s| s["name"] == name.as_str())
            .collect();
        let times: BTreeSet<i64> = of_field.iter().map(|s| sample_time(s)).collect();
        assert_eq!(times.len(), of_field.len(), "{name}: one sample per time");
        // Every batch sample has its fields beside it (the last one's may have been cut off
        // by the stop).
        for t in sample_count_at.keys().filter(|&&t| t != newest) {
            assert!(times.contains(t), "{name}: no sample at {t}");
        }
        for s in of_field {
            let what = format!("sample {s}");
            let t = sample_time(s);
            let n = *sample_count_at
                .get(&t)
                .unwrap_or_else(|| panic!("{what}: no batch sample at its time"));
            let (type_name, expected) = flattened(field, n);
            assert_eq!(s["type"], type_name, "{what}");
            let got = field_of_sample(s);
            assert!(
                same_field(&expected, &got),
                "{what}: {got:?} != {expected:?}"
            );
            let row = row_at
                .get(&(name.as_str(), t))
                .unwrap_or_else(|| panic!("{what}: no Parquet row"));
            let in_parquet = field_of_row(row);
            assert!(
                same_field(&in_parquet, &got),
                "{what}: {got:?}, in Parquet {in_parquet:?}"
            );
        }
    }
    let nozzle_samples = of_node(&telemetry, &nozzles_node());
    assert!(nozzle_samples.len() + 1 >= WANTED, "{telemetry:?}");
    for s in nozzle_samples {
        let what = format!("NozzleStatus sample {s}");
        assert_eq!(
            (&s["name"], &s["type"]),
            (
                &Value::from("NozzleStatus"),
                &Value::from("Array<NozzleStatus>")
            ),
            "{what}"
        );
        assert!(s.get("st").is_none(), "{what}: Good");
        let got = nozzles_of(&structure(&s["v"], &what), &what);
        assert!((0..70).any(|n| got == nozzles(n)), "{what}");
        let row = row_at
            .get(&("NozzleStatus", sample_time(s)))
            .unwrap_or_else(|| panic!("{what}: no Parquet row"));
        let Val::Json(j) = &row.value else {
            panic!("{what}: {row:?}")
        };
        assert_eq!(got, nozzles_of(&structure_text(j, &what), &what), "{what}");
    }
    eprintln!(
        "structures: {} Batch rows (n {}..={}), {} NozzleStatus rows, {} Batch samples in MQTT",
        structs.len(),
        counts.first().unwrap(),
        counts.last().unwrap(),
        nozzle_rows.len(),
        sample_count_at.len()
    );
}
