//! The committed schema is what the code generates, and it takes every value the loader takes.

use std::path::Path;

use super::*;
use crate::config::parse;

fn workspace_file(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

#[test]
fn committed_schema_is_the_generated_one() {
    let path = workspace_file(SCHEMA_PATH);
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = config_schema();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        panic!(
            "{} is not the schema of the config types (first difference at line {}): \
             regenerate it with `{REGENERATE}` and commit it",
            path.display(),
            line + 1
        );
    }
}

/// A small evaluator of the JSON Schema keywords the config schema uses; any other keyword
/// fails the test, so that a new one is looked at here (and in the python test, which uses a
/// real validator) before it is relied on.
fn valid(schema: &Value, v: &Value) -> bool {
    let Value::Object(s) = schema else {
        panic!("not a schema: {schema}");
    };
    s.iter().all(|(key, rule)| match key.as_str() {
        "$id" | "$schema" | "title" | "description" => true,
        "type" => match rule.as_str() {
            Some("string") => v.is_string(),
            Some("integer") => v.is_i64() || v.is_u64(),
            Some("number") => v.is_number(),
            Some("boolean") => v.is_boolean(),
            Some("object") => v.is_object(),
            Some("array") => v.is_array(),
            _ => panic!("type {rule}"),
        },
        "enum" => rule.as_array().is_some_and(|e| e.contains(v)),
        "anyOf" => rule
            .as_array()
            .is_some_and(|a| a.iter().any(|s| valid(s, v))),
        "not" => !valid(rule, v),
        "pattern" => v.as_str().is_none_or(|text| {
            regex::Regex::new(rule.as_str().unwrap())
                .unwrap()
                .is_match(text)
        }),
        "minimum" => v.as_f64().is_none_or(|n| n >= rule.as_f64().unwrap()),
        "maximum" => v.as_f64().is_none_or(|n| n <= rule.as_f64().unwrap()),
        "minItems" => v
            .as_array()
            .is_none_or(|a| a.len() as u64 >= rule.as_u64().unwrap()),
        "items" => v
            .as_array()
            .is_none_or(|a| a.iter().all(|item| valid(rule, item))),
        "minProperties" => v
            .as_object()
            .is_none_or(|o| o.len() as u64 >= rule.as_u64().unwrap()),
        "maxProperties" => v
            .as_object()
            .is_none_or(|o| o.len() as u64 <= rule.as_u64().unwrap()),
        "required" => v.as_object().is_none_or(|o| {
            rule.as_array()
                .unwrap()
                .iter()
                .all(|k| o.contains_key(k.as_str().unwrap()))
        }),
        "properties" => v.as_object().is_none_or(|o| {
            o.iter()
                .all(|(k, x)| rule.get(k).is_none_or(|sub| valid(sub, x)))
        }),
        "additionalProperties" => {
            let known = s.get("properties").and_then(Value::as_object);
            let extra = |k: &String| !known.is_some_and(|props| props.contains_key(k));
            match rule {
                // A table of fixed keys: no other key.
                Value::Bool(false) => v.as_object().is_none_or(|o| !o.keys().any(extra)),
                // A map (`options = { ... }`): every other key's value follows the schema.
                Value::Object(_) => v.as_object().is_none_or(|o| {
                    o.iter()
                        .filter(|(k, _)| extra(k))
                        .all(|(_, x)| valid(rule, x))
                }),
                _ => panic!("additionalProperties {rule}"),
            }
        }
        other => panic!("keyword {other:?}: teach `valid` (and check the python test)"),
    })
}

fn schema() -> Value {
    serde_json::from_str(&config_schema()).unwrap()
}

fn toml_to_json(text: &str) -> Value {
    let table: toml::Table = toml::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    serde_json::to_value(table).unwrap()
}

#[test]
fn every_config_in_configs_is_valid_and_starts_with_the_schema_line() {
    let schema = schema();
    let mut seen = 0;
    for entry in std::fs::read_dir(workspace_file("configs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("#:schema ./opcua-connector.schema.json\n"),
            "{}: the first line is `#:schema ./opcua-connector.schema.json` (editors read it)",
            path.display()
        );
        assert!(
            valid(&schema, &toml_to_json(&text)),
            "{} does not follow the schema",
            path.display()
        );
        seen += 1;
    }
    assert!(seen >= 2);
}

#[test]
fn unknown_keys_missing_keys_and_wrong_values_are_refused() {
    let schema = schema();
    let ok = toml_to_json(BASE);
    assert!(valid(&schema, &ok));
    for text in [
        // A typo in a key, in a section name, in a nested inline table.
        BASE.replace("publishing_interval", "publishing_intervall"),
        format!("{BASE}[sink.parquett]\n"),
        BASE.replace(
            "nodes = [\"i=85\"]",
            "nodes = [{ id = \"i=85\", nam = \"x\" }]",
        ),
        // Required keys and tables.
        BASE.replace("name = \"g\"\n", ""),
        BASE.replace("[line]\nid = \"l\"\nsite = \"s\"\n", ""),
        BASE.split("[[plc]]").next().unwrap_or_default().to_owned(),
        // A value outside a fixed set, a bare number for a duration, an inline password.
        BASE.replace("endpoint", "security_mode = \"SignAndEncrypt!\"\nendpoint"),
        BASE.replace("\"1s\"", "1000"),
        BASE.replace(
            "endpoint",
            "auth = { username = \"u\", password = \"x\" }\nendpoint",
        ),
    ] {
        assert!(!valid(&schema, &toml_to_json(&text)), "valid:\n{text}");
    }
}

/// Every object of the schema refuses the keys it does not list, as the loader does.
#[test]
fn every_table_refuses_unknown_keys() {
    fn walk(v: &Value, path: &str, tables: &mut usize) {
        match v {
            Value::Object(o) => {
                if o.contains_key("properties") {
                    assert_eq!(
                        o.get("additionalProperties"),
                        Some(&Value::Bool(false)),
                        "{path}"
                    );
                    *tables += 1;
                }
                for (k, x) in o {
                    walk(x, &format!("{path}/{k}"), tables);
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, path, tables)),
            _ => {}
        }
    }
    let mut tables = 0;
    walk(&schema(), "", &mut tables);
    assert!(tables >= 18, "{tables} tables");
}

/// A file the loader accepts: one plc with one group.
const BASE: &str = "[line]\nid = \"l\"\nsite = \"s\"\n\n[[plc]]\nid = \"p\"\n\
                    endpoint = \"opc.tcp://127.0.0.1:4840\"\n\n[[plc.group]]\nname = \"g\"\n\
                    publishing_interval = \"1s\"\nnodes = [\"i=85\"]\n";

/// One key tried with many values: the schema at `pointer`, a file with the value `{}` in
/// it, and whether the schema should take exactly what the loader takes (else it may take
/// more).
struct Case {
    pointer: &'static str,
    file: fn(&str) -> String,
    exact: bool,
    values: &'static [&'static str],
}

const DURATIONS: &[&str] = &[
    r#""250ms""#,
    r#""5s""#,
    r#""1m""#,
    r#""1h 30m""#,
    r#""1h30m""#,
    r#""10y""#,
    r#""0ms""#,
    r#""0s""#,
    r#""1.5h""#,
    r#"" 5s ""#,
    r#""5 s""#,
    r#""1 0s""#,
    r#""2days""#,
    r#""1µs""#,
    r#""3 weeks""#,
    r#""1M""#,
    r#""\u2003 5s\u0085""#,
    r#""11y""#,
    r#""5x""#,
    r#""1.s""#,
    r#""5""#,
    r#""5.0""#,
    r#""""#,
    r#"" ""#,
    r#""abc""#,
    r#""s5""#,
    r#""-5s""#,
    r#""5s!""#,
    r#""1h30""#,
    r#""1_000ms""#,
    "5",
    "5.0",
    "true",
];

const SIZES: &[&str] = &[
    r#""64MiB""#,
    r#""128MB""#,
    r#""1GiB""#,
    r#""512 KiB""#,
    r#""100B""#,
    r#""1.5GiB""#,
    r#""1_024B""#,
    r#""0B""#,
    r#"" 1 kib ""#,
    r#"".5KiB""#,
    r#""1.b""#,
    r#""1KIB""#,
    r#""1kB""#,
    r#""\u00a01TB\u0085""#,
    r#""99999999999999999999TiB""#,
    r#""1..2MB""#,
    "1048576",
    "0",
    "-1",
    "1.5",
    r#""1""#,
    r#""MiB""#,
    r#""1 MiBs""#,
    r#""1e3B""#,
    r#""_B""#,
    r#""1 XB""#,
    r#""1 Mi B""#,
];

const CASES: &[Case] = &[
    Case {
        pointer: "/properties/plc/items/properties/group/items/properties/sampling_interval",
        file: |v| format!("{BASE}sampling_interval = {v}\n"),
        exact: false,
        values: DURATIONS,
    },
    Case {
        pointer: "/properties/sink/properties/parquet/properties/max_bytes",
        file: |v| format!("{BASE}[sink.parquet]\nmax_bytes = {v}\n"),
        exact: false,
        values: SIZES,
    },
    Case {
        pointer: "/properties/sink/properties/parquet/properties/compression",
        file: |v| format!("{BASE}[sink.parquet]\ncompression = {v}\n"),
        exact: true,
        values: &[
            r#""zstd""#,
            r#""snappy""#,
            r#""gzip""#,
            r#""none""#,
            r#""zstd:1""#,
            r#""zstd:9""#,
            r#""zstd:10""#,
            r#""zstd:22""#,
            r#""zstd:+3""#,
            r#""zstd:003""#,
            r#""zstd:0""#,
            r#""zstd:23""#,
            r#""zstd:-1""#,
            r#""zstd:""#,
            r#""zstd: 3""#,
            r#""zstd:3 ""#,
            r#""ZSTD""#,
            r#""lz4""#,
            r#""""#,
            "3",
        ],
    },
    Case {
        pointer: "/properties/buffer/properties/when_full",
        file: |v| format!("{BASE}[buffer]\nwhen_full = {v}\n"),
        exact: true,
        values: &[
            r#""drop_oldest""#,
            r#""pause""#,
            r#""drop_newest""#,
            r#""Pause""#,
            "1",
        ],
    },
    Case {
        pointer: "/properties/sink/properties/mqtt/properties/version",
        file: |v| format!("{BASE}[sink.mqtt]\nurl = \"mqtt://127.0.0.1\"\nversion = {v}\n"),
        exact: true,
        values: &[
            r#""3.1.1""#,
            r#""5""#,
            r#""5.0""#,
            "5",
            r#""3.1""#,
            "3",
            "5.0",
            r#""v5""#,
            r#""5 ""#,
        ],
    },
    Case {
        pointer: "/properties/sink/properties/mqtt/properties/qos",
        file: |v| format!("{BASE}[sink.mqtt]\nurl = \"mqtt://127.0.0.1\"\nqos = {v}\n"),
        exact: true,
        values: &["0", "1", "2", "-1", r#""1""#],
    },
    Case {
        pointer: "/properties/sink/properties/mqtt/properties/payload",
        file: |v| format!("{BASE}[sink.mqtt]\nurl = \"mqtt://127.0.0.1\"\npayload = {v}\n"),
        exact: true,
        values: &[r#""json""#, r#""json+gzip""#, r#""gzip""#, r#""JSON""#],
    },
    Case {
        pointer: "/properties/plc/items/properties/security_policy",
        file: |v| {
            let mode = if v == r#""None""# { "None" } else { "Sign" };
            BASE.replace(
                "endpoint",
                &format!("security_policy = {v}\nsecurity_mode = \"{mode}\"\nendpoint"),
            )
        },
        exact: true,
        values: &[
            r#""None""#,
            r#""Basic256Sha256""#,
            r#""Aes128_Sha256_RsaOaep""#,
            r#""Aes256_Sha256_RsaPss""#,
            r#""Basic128Rsa15""#,
            r#""none""#,
        ],
    },
    Case {
        pointer: "/properties/plc/items/properties/security_mode",
        file: |v| {
            let policy = if v == r#""None""# {
                "None"
            } else {
                "Basic256Sha256"
            };
            BASE.replace(
                "endpoint",
                &format!("security_mode = {v}\nsecurity_policy = \"{policy}\"\nendpoint"),
            )
        },
        exact: true,
        values: &[
            r#""None""#,
            r#""Sign""#,
            r#""SignAndEncrypt""#,
            r#""Encrypt""#,
        ],
    },
    Case {
        pointer: "/properties/write/items/properties/type",
        file: |v| {
            format!("{BASE}[[write]]\nproperty = \"x\"\nplc = \"p\"\nnode = \"i=85\"\ntype = {v}\n")
        },
        exact: true,
        values: &[
            r#""Boolean""#,
            r#""SByte""#,
            r#""Byte""#,
            r#""Int16""#,
            r#""UInt16""#,
            r#""Int32""#,
            r#""UInt32""#,
            r#""Int64""#,
            r#""UInt64""#,
            r#""Float""#,
            r#""Double""#,
            r#""String""#,
            r#""double""#,
            r#""DateTime""#,
        ],
    },
    Case {
        pointer: "/properties/plc/items/properties/auth",
        file: |v| BASE.replace("endpoint", &format!("auth = {v}\nendpoint")),
        exact: false,
        values: &[
            r#""anonymous""#,
            r#"{ username = "u", password_env = "PW" }"#,
            r#"{ username = "u", password_file = "/run/pw" }"#,
            r#"{ cert_file = "c.der", key_file = "k.pem" }"#,
            r#""Anonymous""#,
            r#"{ username = "u", password = "x" }"#,
            r#"{ user = "u" }"#,
        ],
    },
    Case {
        pointer: "/properties/plc/items/properties/group/items/properties/queue_size",
        file: |v| format!("{BASE}queue_size = {v}\n"),
        exact: true,
        values: &["0", "1", "4294967295", "4294967296", "-1", r#""1""#],
    },
    Case {
        pointer: "/properties/plc/items/properties/group/items/properties/deadband",
        file: |v| format!("{BASE}deadband = {v}\n"),
        exact: true,
        values: &[
            "{ absolute = 0.5 }",
            "{ absolute = 0 }",
            "{ percent = 100 }",
            "{ percent = 2.5 }",
            "{ absolute = 1, percent = 2 }",
            "{}",
            "{ percent = 101 }",
            "{ absolute = -1 }",
            "{ relative = 1 }",
        ],
    },
];

/// The direction that matters: a file the loader takes is never flagged by an editor. Where
/// the schema stands for a fixed set (`exact`), it takes nothing else either.
#[test]
fn the_schema_takes_every_value_the_loader_takes() {
    let schema = schema();
    let mut wrong = Vec::new();
    for case in CASES {
        let sub = schema
            .pointer(case.pointer)
            .unwrap_or_else(|| panic!("no {}", case.pointer));
        for literal in case.values {
            let text = (case.file)(literal);
            let loader = parse(Path::new("t.toml"), &text).is_ok();
            let value = toml_to_json(&format!("v = {literal}"))["v"].clone();
            let by_schema = valid(sub, &value);
            // The same through the whole file, as an editor sees it.
            assert_eq!(by_schema, valid(&schema, &toml_to_json(&text)), "{text}");
            if (loader && !by_schema) || (case.exact && loader != by_schema) {
                wrong.push(format!(
                    "{}: {literal}: loader {loader}, schema {by_schema}",
                    case.pointer
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// Durations and sizes are looser than the loader, but not shapeless: what is plainly not a
/// duration or a size is flagged.
#[test]
fn plain_mistakes_in_durations_and_sizes_are_refused() {
    let schema = schema();
    let duration = schema.pointer(CASES[0].pointer).unwrap();
    for bad in [
        r#""5""#, r#""""#, r#""abc""#, r#""5.0""#, "5", "5.0", r#""-5s""#,
    ] {
        let v = toml_to_json(&format!("v = {bad}"))["v"].clone();
        assert!(!valid(duration, &v), "duration {bad}");
    }
    let size = schema.pointer(CASES[1].pointer).unwrap();
    for bad in [r#""1""#, r#""MiB""#, "-1", "1.5", r#""1 XB""#, r#""1e3B""#] {
        let v = toml_to_json(&format!("v = {bad}"))["v"].clone();
        assert!(!valid(size, &v), "size {bad}");
    }
}

/// The docs' examples of each section, on a minimal file, follow the schema (the loader's
/// tests check the same examples).
#[test]
fn section_examples_in_configuration_md_follow_the_schema() {
    let schema = schema();
    let doc = std::fs::read_to_string(workspace_file("docs/configuration.md")).unwrap();
    let mut seen = 0;
    for block in doc.split("```toml\n").skip(1) {
        let block = block.split("```").next().unwrap_or_default();
        let text = if block.starts_with("[line]") {
            format!("{block}\n[[plc]]\nid = \"p\"\nendpoint = \"opc.tcp://h\"\n")
        } else if block.starts_with("[[plc]]") {
            format!("[line]\nid = \"l\"\n{block}")
        } else if block.starts_with("  [[plc.group]]") {
            BASE.split("[[plc.group]]")
                .next()
                .unwrap_or_default()
                .to_owned()
                + block
        } else if block.starts_with('[') {
            format!("{BASE}\n{block}")
        } else {
            continue; // lines to choose from (`auth = ...`), not a file
        };
        assert!(
            valid(&schema, &toml_to_json(&text)),
            "does not follow the schema:\n{text}"
        );
        seen += 1;
    }
    assert!(seen >= 12, "only {seen} examples");
}
