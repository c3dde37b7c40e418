//! The line, its PLCs, groups and nodes.

use super::*;

#[test]
fn bad_node_id_names_the_id() {
    let text = MINIMAL.replace(
        "nsu=urn:example:filler;s=Filler.Speed",
        "nsu=urn:example:filler;x=Speed",
    );
    assert_problem(
        &text,
        12,
        "plc[0].group[0].nodes[0]",
        "bad node id \"nsu=urn:example:filler;x=Speed\"",
    );
}

#[test]
fn inline_password_is_refused_with_alternatives() {
    let text = MINIMAL.replace(
            "endpoint = \"opc.tcp://192.0.2.10:4840\"",
            "endpoint = \"opc.tcp://192.0.2.10:4840\"\nauth = { username = \"u\", password = \"hunter2\" }",
        );
    assert_problem(&text, 8, "plc[0].auth.password", "use password_env");
    assert!(!problems(&text).concat().contains("hunter2"));
}

#[test]
fn duplicate_plc_id_points_at_the_second() {
    let text = format!("{MINIMAL}\n[[plc]]\nid = \"filler\"\nendpoint = \"opc.tcp://h:4840\"\n");
    assert_problem(&text, 15, "plc[1].id", "duplicate plc id \"filler\"");
}

#[test]
fn security_policy_and_mode_must_agree() {
    let text = MINIMAL.replace(
        "endpoint = \"opc.tcp://192.0.2.10:4840\"",
        "endpoint = \"opc.tcp://192.0.2.10:4840\"\nsecurity_mode = \"Sign\"",
    );
    assert_problem(&text, 8, "plc[0].security_mode", "None goes only with None");
    let text = text.replace("\"Sign\"", "\"Encrypt\"");
    assert_problem(
        &text,
        8,
        "plc[0].security_mode",
        "unknown security mode \"Encrypt\"",
    );
}

#[test]
fn missing_line_and_group_without_nodes_are_problems() {
    let text = MINIMAL.replace("[line]\nid = \"line-a\"\n", "").replace(
        "  nodes = [\"nsu=urn:example:filler;s=Filler.Speed\"]\n",
        "",
    );
    let all = problems(&text);
    assert!(
        all.contains(&format!(
            "{FILE}: line: missing [line] table with the line id"
        )),
        "{all:#?}"
    );
    assert!(
        all.iter()
            .any(|p| p.starts_with(&format!("{FILE}:7: plc[0].group[0]: a group needs"))),
        "{all:#?}"
    );
}

#[test]
fn flattened_fields_parse_and_bad_ones_name_their_key() {
    let node = "\"nsu=urn:example:filler;s=Filler.Speed\"";
    let text = MINIMAL.replace(
        &format!("[{node}]"),
        &format!("[{{ id = {node}, name = \"M\", flatten = [\"Speed\", \"Main.Speed\", \"Axes[1].Position\", \"Grid[0][2]\"] }}]"),
    );
    let config = parse(Path::new(FILE), &text).expect("valid");
    let paths: Vec<String> = config.plcs[0].groups[0].nodes[0]
        .flatten
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        paths,
        ["Speed", "Main.Speed", "Axes[1].Position", "Grid[0][2]"]
    );
    assert_eq!(
        config.plcs[0].groups[0].nodes[0].flatten[2].steps,
        [
            FieldStep::Field("Axes".into()),
            FieldStep::Index(1),
            FieldStep::Field("Position".into())
        ]
    );
    let bad = MINIMAL.replace(
        &format!("[{node}]"),
        &format!("[{{ id = {node}, flatten = [\"Speed\", \"Speed\", \"[0]\", \"A..B\", \"A[x]\", \"A]\"] }}]"),
    );
    let all = problems(&bad);
    let key = "plc[0].group[0].nodes[0].flatten";
    assert_exactly(
        &all,
        &[
            &format!("{FILE}:12: {key}[1]: field Speed is listed twice"),
            &format!("{key}[2]: not a field path"),
            &format!("{key}[3]: not a field path (Name, Name.Field, Name[0].Field): \"A..B\": empty field name"),
            &format!("{key}[4]: not a field path"),
            &format!("{key}[5]: not a field path"),
        ],
    );
    let empty = MINIMAL.replace(
        &format!("[{node}]"),
        &format!("[{{ id = {node}, flatten = [] }}]"),
    );
    assert_problem(&empty, 12, key, "empty");
}

#[test]
fn backfill_settings_need_backfill_and_sane_values() {
    let group = "  nodes = [\"nsu=urn:example:filler;s=Filler.Speed\"]\n";
    let with = |extra: &str| MINIMAL.replace(group, &format!("{group}{extra}"));
    let all = problems(&with("  backfill_max = \"10m\"\n  backfill_rate = 0\n"));
    assert_exactly(
        &all,
        &[
            &format!(
                "{FILE}:14: plc[0].group[0].backfill_rate: backfill_rate 0 must be 1..=1000000"
            ),
            &format!("{FILE}:13: plc[0].group[0].backfill_max: only with backfill = true"),
            &format!("{FILE}:14: plc[0].group[0].backfill_rate: only with backfill = true"),
        ],
    );
    let c = parse(Path::new(FILE), &with("  backfill = true\n")).expect("valid");
    assert_eq!(
        c.plcs[0].groups[0].backfill,
        Some(BackfillConfig {
            max: Duration::from_secs(3600),
            rate: 10_000
        })
    );
}

#[test]
fn event_streams_parse_with_defaults_and_bad_ones_name_their_key() {
    let text = format!(
        "{MINIMAL}\n  [[plc.events]]\n  name = \"alarms\"\n  types = [\"i=2915\"]\n  fields = [{{ path = \"ActiveState/Id\", type = \"i=2915\" }}, {{ path = \"nsu=http://x.org/UA/;Tank/Level\" }}]\n"
    );
    let c = parse(Path::new(FILE), &text).expect("valid");
    let e = &c.plcs[0].events[0];
    assert_eq!(e.name, "alarms");
    assert_eq!(
        e.source,
        NodeRef::Index {
            namespace: 0,
            identifier: Identifier::Numeric(2253)
        }
    );
    assert_eq!(
        (e.publishing_interval, e.queue_size),
        (Duration::from_secs(1), 1000)
    );
    assert_eq!(
        e.fields[0].path,
        [(None, "ActiveState".to_owned()), (None, "Id".to_owned())]
    );
    assert_eq!(
        e.fields[1].path,
        [
            (Some("http://x.org/UA/".to_owned()), "Tank".to_owned()),
            (None, "Level".to_owned())
        ]
    );
    assert_eq!(
        e.fields[1].type_id,
        NodeRef::Index {
            namespace: 0,
            identifier: Identifier::Numeric(2041)
        }
    );
    let bad = format!(
        "{MINIMAL}\n  [[plc.events]]\n  name = \"fast\"\n  source = \"nope\"\n  queue_size = 0\n  fields = [{{ path = \"A//B\" }}, {{ type = \"i=2041\" }}]\n"
    );
    let all = problems(&bad);
    for (line, key, part) in [
        (
            15,
            "plc[0].events[0].name",
            "is also the name of plc[0].group[0]",
        ),
        (16, "plc[0].events[0].source", "bad node id"),
        (17, "plc[0].events[0].queue_size", "must be 1..=100000"),
        (18, "plc[0].events[0].fields[0].path", "empty browse name"),
        (18, "plc[0].events[0].fields[1].path", "missing"),
    ] {
        let prefix = format!("{FILE}:{line}: {key}: ");
        assert!(
            all.iter()
                .any(|p| p.starts_with(&prefix) && p.contains(part)),
            "no {prefix:?} with {part:?} in {all:#?}"
        );
    }
    assert_eq!(all.len(), 5, "{all:#?}");
    let unknown = format!("{MINIMAL}\n  [[plc.events]]\n  name = \"a\"\n  colour = 1\n");
    assert_problem(
        &unknown,
        16,
        "plc[0].events[0].colour",
        "unknown key `colour`",
    );
}

#[test]
fn shaped_telemetry_windows_divide_a_day_and_name_known_aggregates() {
    let group = "  nodes = [\"nsu=urn:example:filler;s=Filler.Speed\"]\n";
    let with = |extra: &str| MINIMAL.replace(group, &format!("{group}{extra}"));
    let c = parse(
        Path::new(FILE),
        &with("\n    [plc.group.telemetry]\n    window = \"1m\"\n    aggregates = [\"max\", \"min\"]\n    to = [\"hub\"]\n"),
    )
    .expect("valid");
    let t = c.plcs[0].groups[0].telemetry.as_ref().unwrap();
    assert_eq!(
        (t.window, t.aggregates.as_slice(), t.mqtt, t.hub),
        (
            Duration::from_secs(60),
            ["min", "max"].as_slice(),
            false,
            true
        )
    );
    let all = problems(&with(
        "\n    [plc.group.telemetry]\n    window = \"7s\"\n    aggregates = [\"median\", \"min\", \"min\"]\n    to = [\"kafka\"]\n",
    ));
    let key = "plc[0].group[0].telemetry";
    assert_exactly(
        &all,
        &[
            &format!("{FILE}:15: {key}.window: window 7s must be at least 1s and divide a day"),
            &format!("{FILE}:16: {key}.aggregates[0]: unknown aggregate \"median\""),
            &format!("{FILE}:16: {key}.aggregates[2]: min is listed twice"),
            &format!("{FILE}:17: {key}.to[0]: unknown destination \"kafka\""),
        ],
    );
}
