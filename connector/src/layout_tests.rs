//! The house rule of `lib.rs`, checked on the source: which top-level module may import
//! which. The allow-list is the data flow; it has no cycle, so no two modules import each
//! other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each top-level module and the modules it may import.
const ALLOWED: &[(&str, &[&str])] = &[
    ("config", &[]),
    ("sample", &[]),
    ("metrics", &[]),
    ("backoff", &[]),
    ("buffer", &["config", "metrics"]),
    ("cloud", &["config", "metrics", "backoff", "buffer"]),
    ("sinks", &["config", "metrics", "sample", "buffer", "cloud"]),
    ("pipeline", &["config", "metrics", "sample", "sinks"]),
    (
        "opcua",
        &["config", "metrics", "sample", "backoff", "pipeline"],
    ),
    (
        "writes",
        &["config", "metrics", "backoff", "opcua", "cloud"],
    ),
    ("http", &["config", "metrics", "buffer"]),
    (
        "runner",
        &[
            "config", "metrics", "sample", "backoff", "opcua", "pipeline", "sinks", "cloud",
            "buffer", "writes", "http",
        ],
    ),
    (
        "commands",
        &[
            "config", "metrics", "sample", "backoff", "opcua", "pipeline", "sinks", "cloud",
            "buffer", "writes", "http", "runner",
        ],
    ),
];

/// The top-level modules named after `crate::` in `text` (`crate::a::b`, `crate::{a, b::c}`).
fn crate_imports(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.insert(name);
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// Top-level module -> the top-level modules its files import.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let top = top.trim_end_matches(".rs").to_owned();
        if ["lib", "main", "layout_tests"].contains(&top.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let mut used = crate_imports(&text);
        used.remove(&top);
        graph.entry(top).or_default().extend(used);
    }
    graph
}

#[test]
fn every_import_between_top_level_modules_runs_with_the_flow() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let graph = imports();
    let mut wrong = Vec::new();
    for (module, used) in &graph {
        let Some(ok) = allowed.get(module.as_str()) else {
            wrong.push(format!(
                "{module}: a new top-level module; add it to ALLOWED"
            ));
            continue;
        };
        for u in used {
            if !ok.contains(&u.as_str()) {
                wrong.push(format!("{module} imports {u}"));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the flow: {wrong:#?}");
    // Every module of the list exists, so the list stays true.
    for (module, _) in ALLOWED {
        assert!(
            graph.contains_key(*module),
            "{module} is in ALLOWED but not in src/"
        );
    }
}

#[test]
fn the_allowed_imports_have_no_cycle() {
    // Each module may only import modules listed before it.
    let mut seen = BTreeSet::new();
    for (module, deps) in ALLOWED {
        for d in *deps {
            assert!(seen.contains(d), "{module} may import {d}, listed after it");
        }
        seen.insert(*module);
    }
}

#[test]
fn crate_paths_are_read_in_both_forms() {
    let found = crate_imports("use crate::a::b;\nuse crate::{c::D, e};\nlet x = crate::f::g();");
    let names: Vec<&str> = found.iter().map(String::as_str).collect();
    assert_eq!(names, ["a", "c", "e", "f"]);
}
