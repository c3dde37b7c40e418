//! `[[rule]]` and report by exception (`[plc.group.telemetry]` deadbands and intervals).

use super::*;

/// A line with a temperature, a valve the rules may write and a method, over a broker.
const LINE: &str = r#"
[line]
id = "line-a"

[[plc]]
id = "filler"
endpoint = "opc.tcp://192.0.2.10:4840"

  [[plc.group]]
  name = "slow"
  publishing_interval = "1s"
  nodes = ["nsu=urn:x;s=Temp", "nsu=urn:x;s=State", "i=2258"]

[sink.mqtt]
url = "mqtts://broker.local"
tls = { ca_file = "ca.pem" }

[[write]]
property = "valve"
plc = "filler"
node = "nsu=urn:x;s=Valve"
type = "Boolean"

[[write]]
property = "speed"
plc = "filler"
node = "nsu=urn:x;s=Speed"
type = "Double"
min = 0
max = 100

[[method]]
name = "reset"
plc = "filler"
object = "nsu=urn:x;s=Filler"
method = "nsu=urn:x;s=Reset"
"#;

/// The 1-based line of the first line of `text` that contains `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in {text}"))
        + 1
}

const COOL: &str = r#"
[[rule]]
name = "cool"
when = { node = "nsu=urn:x;s=Temp", above = 16.0, for = "4s" }
clear = { all = [{ node = "nsu=urn:x;s=Temp", below = 14.0 }, { node = "nsu=urn:x;s=State", equals = "Running" }] }
min_interval = "30s"
on_fire = [{ write = "valve", value = true }, { alert = "too warm", severity = 700 }, { call = "reset", args = ["rule"] }]
on_clear = [{ write = "valve", value = false }]
"#;

#[test]
fn a_rule_loads_into_its_types() {
    let c = parse(Path::new(FILE), &format!("{LINE}{COOL}")).unwrap();
    let r = &c.rules[0];
    assert_eq!(r.name, "cool");
    let temp = |op| Condition {
        test: Test::Node(NodeTest {
            plc: "filler".into(),
            node: "nsu=urn:x;s=Temp".into(),
            op,
        }),
        hold: Duration::ZERO,
    };
    assert_eq!(
        r.when,
        Condition {
            hold: Duration::from_secs(4),
            ..temp(Op::Above(16.0))
        }
    );
    let Some(Condition {
        test: Test::All(parts),
        ..
    }) = &r.clear
    else {
        panic!("{:?}", r.clear)
    };
    assert_eq!(parts[0], temp(Op::Below(14.0)));
    assert!(
        matches!(&parts[1].test, Test::Node(NodeTest { op: Op::Equals(Scalar::Text(t)), .. }) if t == "Running")
    );
    assert_eq!(r.min_interval, Duration::from_secs(30));
    assert_eq!(
        r.on_fire,
        vec![
            Action::Write {
                property: "valve".into(),
                value: serde_json::json!(true)
            },
            Action::Alert {
                message: "too warm".into(),
                severity: 700
            },
            Action::Call {
                method: "reset".into(),
                args: vec![serde_json::json!("rule")]
            },
        ]
    );
    assert_eq!(r.on_clear.len(), 1);
}

#[test]
fn bad_rules_name_file_line_and_key_all_at_once() {
    let bad = r#"
[[rule]]
name = "a"
when = { node = "nsu=urn:x;s=Nowhere", above = 1 }
on_fire = [{ write = "door", value = true }]

[[rule]]
name = "b"
when = { node = "nsu=urn:x;s=Temp", above = 1, below = 0 }
on_fire = [{ write = "speed", value = 500 }, { write = "valve", value = "open" }]

[[rule]]
name = "c"
when = { any = [] }
on_fire = [{ call = "reset" }, { call = "reset", args = [1] }]

[[rule]]
name = "d"
when = { node = "nsu=urn:x;s=Temp", between = [5, 1], for = "soon" }
on_fire = [{ alert = "x", value = 1 }]

[[rule]]
name = "e"
when = { node = "ns=2;s=Temp", above = 1 }
on_fire = []
"#;
    let text = format!("{LINE}{bad}");
    let all = problems(&text);
    let at = |needle: &str, key: &str, part: &str| {
        format!("{FILE}:{}: {key}: ", line_of(&text, needle)) + part
    };
    let expect = [
        at(
            "s=Nowhere",
            "rule[0].when.node",
            "is not listed in a group of plc \"filler\"",
        ),
        at(
            "write = \"door\"",
            "rule[0].on_fire[0].write",
            "no [[write]] property \"door\"",
        ),
        at(
            "above = 1, below = 0",
            "rule[1].when",
            "one test per condition (also below)",
        ),
        at(
            "value = 500",
            "rule[1].on_fire[0].value",
            "outside the [[write]]'s limits [0, 100]",
        ),
        at(
            "value = \"open\"",
            "rule[1].on_fire[1].value",
            "is written as Boolean",
        ),
        at("any = []", "rule[2].when.any", "empty"),
        at("args = [1]", "rule[2].on_fire[1]", "conflicting actions"),
        at("between = [5, 1]", "rule[3].when.between", "low <= high"),
        at("between = [5, 1]", "rule[3].when.for", "not a duration"),
        at(
            "alert = \"x\", value = 1",
            "rule[3].on_fire[0].value",
            "value goes with write only",
        ),
        at("ns=2;s=Temp", "rule[4].when.node", "nsu= form"),
        at("on_fire = []", "rule[4].on_fire", "the rule does nothing"),
    ];
    for e in &expect {
        // The message part after the key prefix.
        let (prefix, part) = e.split_at(e.find(": ").unwrap() + 2);
        let (prefix, part) = {
            let k = part.find(": ").unwrap() + 2;
            (format!("{prefix}{}", &part[..k]), &part[k..])
        };
        assert!(
            all.iter()
                .any(|p| p.starts_with(&prefix) && p.contains(part)),
            "no {prefix:?} with {part:?} in {all:#?}"
        );
    }
    assert_eq!(all.len(), expect.len(), "{all:#?}");
}

#[test]
fn one_rule_owns_a_property_and_alerts_need_a_destination() {
    let two = r#"
[[rule]]
name = "open"
when = { node = "nsu=urn:x;s=Temp", above = 20 }
on_fire = [{ write = "valve", value = true }]

[[rule]]
name = "close"
when = { node = "nsu=urn:x;s=Temp", below = 10 }
on_fire = [{ write = "valve", value = false }]
"#;
    let text = format!("{LINE}{two}");
    assert_problem(
        &text,
        line_of(&text, "value = false"),
        "rule[1].on_fire[0].write",
        "written by rule \"open\" too",
    );
    // Without [sink.mqtt] or [hub], an alert goes nowhere.
    let alone = format!(
        "{MINIMAL}\n[[rule]]\nname = \"x\"\nwhen = {{ node = \"nsu=urn:example:filler;s=Filler.Speed\", above = 1 }}\non_fire = [{{ alert = \"fast\" }}]\n"
    );
    assert_problem(
        &alone,
        line_of(&alone, "alert = \"fast\""),
        "rule[0].on_fire[0].alert",
        "configure [sink.mqtt] or [hub]",
    );
    // An unknown key is refused by name.
    let odd = format!("{LINE}{}", COOL.replace("min_interval", "cooldown"));
    let all = problems(&odd);
    assert!(
        all.iter()
            .any(|p| p.contains("rule[0]") && p.contains("unknown key `cooldown`")),
        "{all:#?}"
    );
}

#[test]
fn report_by_exception_of_a_group_and_a_node() {
    let text = r#"
[line]
id = "line-a"

[[plc]]
id = "filler"
endpoint = "opc.tcp://192.0.2.10:4840"

  [[plc.group]]
  name = "slow"
  publishing_interval = "1s"
  nodes = ["nsu=urn:x;s=A", { id = "nsu=urn:x;s=B", telemetry = { deadband_absolute = 5.0, max_interval = "10m" } }]
  telemetry = { deadband_percent = 1.5, min_interval = "2s", max_interval = "5m", to = ["hub"] }
"#;
    let c = parse(Path::new(FILE), text).unwrap();
    let g = &c.plcs[0].groups[0];
    let group = Exception {
        deadband_absolute: None,
        deadband_percent: Some(1.5),
        min_interval: Duration::from_secs(2),
        max_interval: Some(Duration::from_secs(300)),
        mqtt: false,
        hub: true,
    };
    assert_eq!(g.exception.as_ref(), Some(&group));
    assert_eq!(g.telemetry, None);
    assert_eq!(g.nodes[0].exception, None);
    assert_eq!(
        g.nodes[1].exception,
        Some(Exception {
            deadband_absolute: Some(5.0),
            max_interval: Some(Duration::from_secs(600)),
            ..group
        })
    );
}

#[test]
fn windows_and_report_by_exception_are_alternatives() {
    let group = |telemetry: &str| {
        format!(
            "\n[line]\nid = \"l\"\n\n[[plc]]\nid = \"p\"\nendpoint = \"opc.tcp://h:4840\"\n\n  [[plc.group]]\n  name = \"g\"\n  publishing_interval = \"1s\"\n  nodes = [\"nsu=urn:x;s=A\"]\n  telemetry = {telemetry}\n"
        )
    };
    let both = group("{ window = \"1m\", deadband_absolute = 1.0 }");
    assert_problem(
        &both,
        13,
        "plc[0].group[0].telemetry.deadband_absolute",
        "alternatives",
    );
    let odd = group("{ window = \"7m\" }");
    assert_problem(&odd, 13, "plc[0].group[0].telemetry.window", "divide a day");
    let neither = group("{ to = [\"hub\"] }");
    assert_problem(&neither, 13, "plc[0].group[0].telemetry.window", "missing");
    let aggregates = group("{ aggregates = [\"max\"], min_interval = \"1s\" }");
    assert_problem(
        &aggregates,
        13,
        "plc[0].group[0].telemetry.aggregates",
        "need a window",
    );
    let inverted = group("{ min_interval = \"10s\", max_interval = \"5s\" }");
    assert_problem(
        &inverted,
        13,
        "plc[0].group[0].telemetry.max_interval",
        "longer than min_interval",
    );
    let negative = group("{ deadband_percent = 150.0 }");
    assert_problem(
        &negative,
        13,
        "plc[0].group[0].telemetry.deadband_percent",
        "0..=100",
    );
    // A node's own keys need the group's report by exception.
    let lonely = "\n[line]\nid = \"l\"\n\n[[plc]]\nid = \"p\"\nendpoint = \"opc.tcp://h:4840\"\n\n  [[plc.group]]\n  name = \"g\"\n  publishing_interval = \"1s\"\n  nodes = [{ id = \"nsu=urn:x;s=A\", telemetry = { deadband_absolute = 1.0 } }]\n";
    assert_problem(
        lonely,
        12,
        "plc[0].group[0].nodes[0].telemetry",
        "the group has no report by exception",
    );
}

#[test]
fn rule_values_nodes_and_groups_that_would_fail_at_run_time_are_refused() {
    let text = r#"
[line]
id = "line-a"

[[plc]]
id = "filler"
endpoint = "opc.tcp://192.0.2.10:4840"

  [[plc.group]]
  name = "alerts"
  publishing_interval = "1s"
  nodes = ["nsu=urn:x;s=Temp", { id = "nsu=urn:x;s=Batch", flatten = ["Count"] }, "i=2258"]

[sink.mqtt]
url = "mqtts://broker.local"
tls = { ca_file = "ca.pem" }

[[write]]
property = "count"
plc = "filler"
node = "nsu=urn:x;s=Count"
type = "Int16"

[[write]]
property = "raw"
plc = "filler"
node = "nsu=urn:x;s=Raw"
type = "ByteString"

[[rule]]
name = "a"
when = { node = "nsu=urn:x;s=Batch", above = 1 }
on_fire = [{ write = "count", value = 1.5 }, { write = "raw", value = "not base64!" }]

[[rule]]
name = "b"
when = { node = "nsu=http://opcfoundation.org/UA/;i=2258", above = 1 }
on_fire = [{ write = "count", value = 70000 }]

[[rule]]
name = "c"
when = { node = "nsu=urn:x;s=Temp", above = 1 }
on_fire = [{ alert = "hot" }]
"#;
    let all = problems(text);
    let at = |needle: &str, key: &str, part: &str| {
        let prefix = format!("{FILE}:{}: {key}: ", line_of(text, needle));
        assert!(
            all.iter()
                .any(|p| p.starts_with(&prefix) && p.contains(part)),
            "no {prefix:?} with {part:?} in {all:#?}"
        );
    };
    at(
        "s=Batch\", above",
        "rule[0].when.node",
        "structure with flatten",
    );
    at(
        "value = 1.5",
        "rule[0].on_fire[0].value",
        "is written as Int16",
    );
    at(
        "value = 1.5",
        "rule[0].on_fire[1].value",
        "is written as ByteString",
    );
    at(
        "opcfoundation",
        "rule[1].when.node",
        "namespace 0 is named without nsu=",
    );
    at(
        "value = 70000",
        "rule[1].on_fire[0].value",
        "is not a Int16",
    );
    at(
        "value = 70000",
        "rule[1].on_fire[0].write",
        "written by rule \"a\" too",
    );
    at(
        "alert = \"hot\"",
        "rule[2].on_fire[0].alert",
        "has a group named \"alerts\"",
    );
    assert_eq!(all.len(), 7, "{all:#?}");
}

#[test]
fn a_node_min_interval_beyond_the_group_max_interval_is_refused() {
    let text = "\n[line]\nid = \"l\"\n\n[[plc]]\nid = \"p\"\nendpoint = \"opc.tcp://h:4840\"\n\n  [[plc.group]]\n  name = \"g\"\n  publishing_interval = \"1s\"\n  nodes = [{ id = \"nsu=urn:x;s=A\", telemetry = { min_interval = \"10m\" } }]\n  telemetry = { max_interval = \"5m\" }\n";
    assert_problem(
        text,
        12,
        "plc[0].group[0].nodes[0].telemetry.min_interval",
        "max_interval must be longer than min_interval",
    );
}
