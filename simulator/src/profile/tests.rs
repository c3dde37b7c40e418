//! Unit tests of the profile: syntax errors, bad durations and statuses, missing nodes,
//! behaviours that do not fit their node and spikes, each located by file, line and element;
//! the bundled profile against the bundled nodeset.

use super::*;

#[test]
fn unknown_key_names_file_and_line() {
    let text = "seed = 1\n[[group]]\nname = \"g\"\nrate = \"1s\"\nspeed = 3\n";
    let err = Profile::parse("p.toml", text).unwrap_err().to_string();
    assert!(err.starts_with("p.toml:5:"), "{err}");
    assert!(err.contains("speed"), "{err}");
}

#[test]
fn bad_duration_and_bad_status_are_both_reported() {
    let text = r#"
[[group]]
name = "g"
rate = "fast"
  [[group.node]]
  node = "nsu=urn:x;s=A"
  sim = { kind = "counter" }
  status = ["Good", "VeryBad"]
"#;
    let SimError::Input(problems) = Profile::parse("p.toml", text).unwrap_err() else {
        panic!("not an input error")
    };
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert_eq!(problems[0].line, Some(4));
    assert_eq!(problems[0].element, "group[0].rate");
    assert_eq!(problems[1].element, "group[0].node[0].status[1]");
}

#[test]
fn missing_node_and_misfit_behaviour_name_the_element() {
    let text = r#"
[[group]]
name = "g"
rate = "100ms"
  [[group.node]]
  node = "nsu=urn:x;s=Missing"
  sim = { kind = "counter" }
  [[group.node]]
  node = "nsu=urn:x;s=Flag"
  sim = { kind = "sine" }
"#;
    let p = Profile::parse("p.toml", text).unwrap();
    let mut m = Model::new(1, Duration::ZERO);
    let lookup = |id: &str| {
        (id == "nsu=urn:x;s=Flag").then_some(NodeInfo {
            ty: VarType {
                kind: Kind::Boolean,
                array: None,
            },
            initial: Value::Bool(false),
            writable: false,
        })
    };
    let SimError::Input(problems) = p.build_model(&mut m, lookup, |_| false).unwrap_err() else {
        panic!("not an input error")
    };
    assert_eq!(problems.len(), 2);
    assert_eq!(problems[0].line, Some(6));
    assert!(problems[0]
        .message
        .contains("no variable nsu=urn:x;s=Missing"));
    assert_eq!(problems[1].line, Some(9));
    assert!(problems[1].message.contains("sine does not fit a Boolean"));
}

fn node_info(kind: Kind, writable: bool) -> NodeInfo {
    NodeInfo {
        ty: VarType { kind, array: None },
        initial: Value::Int(0),
        writable,
    }
}

#[test]
fn spike_is_parsed_with_defaults_and_set_on_the_variable() {
    let text = r#"
[[group]]
name = "g"
rate = "100ms"
  [[group.node]]
  node = "nsu=urn:x;s=T"
  sim = { kind = "sine", offset = 12.5 }
  spike = { every = "120s", at = "60s", add = 6.0, length = "20s", noise = -0.4 }
  [[group.node]]
  node = "nsu=urn:x;s=N"
  sim = { kind = "counter" }
  spike = { every = "1s", add = 100, length = "500ms" }
"#;
    let p = Profile::parse("p.toml", text).unwrap();
    let mut m = Model::new(1, Duration::ZERO);
    let lookup = |id: &str| {
        Some(node_info(
            if id.ends_with("T") {
                Kind::Float
            } else {
                Kind::Int32
            },
            false,
        ))
    };
    p.build_model(&mut m, lookup, |_| false).unwrap();
    assert_eq!(
        m.vars[0].spike,
        Some(Spike {
            every: Duration::from_secs(120),
            at: Duration::from_secs(60),
            add: 6.0,
            length: Duration::from_secs(20),
            noise: 0.4,
        })
    );
    assert_eq!(
        m.vars[1].spike,
        Some(Spike {
            every: Duration::from_secs(1),
            at: Duration::ZERO,
            add: 100.0,
            length: Duration::from_millis(500),
            noise: 0.0,
        })
    );
}

#[test]
fn spike_unknown_or_missing_keys_name_file_and_line() {
    let node = "[[group]]\nname = \"g\"\nrate = \"1s\"\n  [[group.node]]\n  node = \"nsu=urn:x;s=A\"\n  sim = { kind = \"sine\" }\n";
    let text = format!("{node}  spike = {{ every = \"2s\", add = 1.0, lenght = \"1s\" }}\n");
    let err = Profile::parse("p.toml", &text).unwrap_err().to_string();
    assert!(err.starts_with("p.toml:7:"), "{err}");
    assert!(err.contains("lenght"), "{err}");
    let text = format!("{node}  spike = {{ every = \"2s\", length = \"1s\" }}\n");
    let err = Profile::parse("p.toml", &text).unwrap_err().to_string();
    assert!(err.starts_with("p.toml:7:"), "{err}");
    assert!(err.contains("add"), "{err}");
}

#[test]
fn spike_bad_durations_and_lengths_are_each_reported_at_their_key() {
    let text = r#"
[[group]]
name = "g"
rate = "1s"
  [[group.node]]
  node = "nsu=urn:x;s=A"
  sim = { kind = "sine" }
  spike = { every = "often", at = "later", add = 1.0, length = "1s" }
  [[group.node]]
  node = "nsu=urn:x;s=B"
  sim = { kind = "sine" }
  spike = { every = "1s", add = 1.0, length = "1s" }
  [[group.node]]
  node = "nsu=urn:x;s=C"
  sim = { kind = "sine" }
  spike = { every = "1s", add = 1.0, length = "0s", noise = nan }
  [[group.node]]
  node = "nsu=urn:x;s=D"
  sim = { kind = "sine" }
  [group.node.spike]
  every = "1s"
  add = inf
  length = "100ms"
"#;
    let SimError::Input(problems) = Profile::parse("p.toml", text).unwrap_err() else {
        panic!("not an input error")
    };
    let found: Vec<(Option<usize>, &str)> = problems
        .iter()
        .map(|p| (p.line, p.element.as_str()))
        .collect();
    assert_eq!(
        found,
        vec![
            (Some(8), "group[0].node[0].spike.every"),
            (Some(8), "group[0].node[0].spike.at"),
            (Some(12), "group[0].node[1].spike.every"),
            (Some(16), "group[0].node[2].spike.length"),
            (Some(16), "group[0].node[2].spike.noise"),
            (Some(22), "group[0].node[3].spike.add"),
        ],
        "{problems:?}"
    );
    assert!(problems[0].message.contains("bad duration \"often\""));
    assert!(problems[2].message.contains("longer than its length"));
    assert!(problems[3].message.contains("above zero"));
}

#[test]
fn spike_on_a_non_numeric_or_written_variable_is_refused_with_its_line() {
    let text = r#"
[[group]]
name = "g"
rate = "100ms"
  [[group.node]]
  node = "nsu=urn:x;s=Flag"
  sim = { kind = "toggle" }
  spike = { every = "1s", add = 1.0, length = "100ms" }
  [[group.node]]
  node = "nsu=urn:x;s=Sp"
  sim = { kind = "setpoint", value = 1.0 }
  spike = { every = "1s", add = 1.0, length = "100ms" }
"#;
    let p = Profile::parse("p.toml", text).unwrap();
    let mut m = Model::new(1, Duration::ZERO);
    let lookup = |id: &str| {
        Some(if id.ends_with("Flag") {
            node_info(Kind::Boolean, false)
        } else {
            node_info(Kind::Double, true)
        })
    };
    let SimError::Input(problems) = p.build_model(&mut m, lookup, |_| false).unwrap_err() else {
        panic!("not an input error")
    };
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert_eq!(problems[0].line, Some(8));
    assert_eq!(problems[0].element, "group[0].node[0].spike");
    assert!(
        problems[0]
            .message
            .contains("numeric variable, not Boolean"),
        "{problems:?}"
    );
    assert_eq!(problems[1].line, Some(12));
    assert!(problems[1].message.contains("not setpoint"), "{problems:?}");
}

#[test]
fn the_bundled_profile_gives_every_instance_variable_of_the_line_exactly_one_behaviour() {
    // Instance variables: string ids whose parent is a machine (`ns=1;s=Filler`), not a
    // variable (properties such as `ns=1;s=Filler.Speed.EURange`) or a method.
    let mut vars: Vec<String> = crate::runtime::BOTTLING_LINE_NODESET
        .split("<UAVariable ")
        .skip(1)
        .filter_map(|el| {
            let id = el.strip_prefix("NodeId=\"ns=1;s=")?.split('"').next()?;
            let parent = el
                .split(" ParentNodeId=\"ns=1;s=")
                .nth(1)?
                .split('"')
                .next()?;
            (!parent.contains('.')).then(|| format!("nsu=urn:opcua-connector:bottling-line;s={id}"))
        })
        .collect();
    vars.sort();
    let p = Profile::parse(
        "bottling-line.sim.toml",
        crate::runtime::BOTTLING_LINE_PROFILE,
    )
    .expect("the bundled profile parses");
    let mut named: Vec<String> = p.node_ids().map(str::to_owned).collect();
    named.sort();
    assert_eq!(vars.len(), 76, "instance variables of the line: {vars:?}");
    assert!(vars.contains(&"nsu=urn:opcua-connector:bottling-line;s=Filler.CoolingValve".into()));
    assert_eq!(named, vars, "each exactly once in the profile");
}

#[test]
fn the_bundled_product_temperature_spikes_by_6_for_20_s_every_120_s_from_60_s() {
    let p = Profile::parse(
        "bottling-line.sim.toml",
        crate::runtime::BOTTLING_LINE_PROFILE,
    )
    .expect("the bundled profile parses");
    let n = p
        .groups
        .iter()
        .flat_map(|g| &g.nodes)
        .find(|n| n.id.ends_with(";s=Filler.ProductTemperature"))
        .expect("ProductTemperature");
    let (spike, _) = n.spike.expect("a spike");
    assert_eq!(
        spike,
        Spike {
            every: Duration::from_secs(120),
            at: Duration::from_secs(60),
            add: 6.0,
            length: Duration::from_secs(20),
            noise: 0.4,
        }
    );
    let RawSimChecked::Ready(sine) = n.sim.clone() else {
        panic!("ProductTemperature is a sine")
    };
    let t0 = chrono::Utc::now();
    let mut m = Model::new(p.seed, Duration::ZERO);
    let g = m.add_group("filler-slow", Duration::from_secs(2));
    let ty = VarType {
        kind: Kind::Float,
        array: None,
    };
    let v = m.add_var(n.id.clone(), ty, sine, vec![], g, Value::Float(12.5));
    m.vars[v].spike = Some(spike);
    // Ticks every 2 s on odd seconds (a tick on a window's first second would sit on its edge).
    for k in 0..200 {
        let secs = 2 * k + 1;
        m.tick(g, t0 + chrono::Duration::seconds(secs), true);
        let x = m.vars[v].value.as_f64().unwrap();
        let inside = secs >= 60 && (secs - 60) % 120 < 20;
        let (mid, spread) = if inside {
            (18.5, 0.8 + 0.05 + 0.4)
        } else {
            (12.5, 0.8 + 0.05)
        };
        assert!(
            (x - mid).abs() <= spread + 1e-9,
            "t = {secs} s: {x} (spike: {inside})"
        );
        assert!(x < 80.0, "the TemperatureHigh limit is never reached");
    }
}
