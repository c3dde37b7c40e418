//! Unit tests of the profile: syntax errors, bad durations and statuses, missing nodes and
//! behaviours that do not fit their node, each located by file, line and element.

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
