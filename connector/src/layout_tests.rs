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
    ("ratelog", &[]),
    ("buffer", &["config", "metrics", "ratelog"]),
    (
        "cloud",
        &["config", "metrics", "ratelog", "backoff", "buffer"],
    ),
    (
        "sinks",
        &[
            "config", "metrics", "ratelog", "sample", "backoff", "buffer", "cloud",
        ],
    ),
    (
        "pipeline",
        &["config", "metrics", "ratelog", "sample", "sinks"],
    ),
    (
        "opcua",
        &[
            "config", "metrics", "ratelog", "sample", "backoff", "pipeline",
        ],
    ),
    (
        "writes",
        &["config", "metrics", "ratelog", "backoff", "opcua", "cloud"],
    ),
    (
        "rules",
        &[
            "config", "metrics", "ratelog", "sample", "pipeline", "sinks", "writes",
        ],
    ),
    ("http", &["config", "metrics", "ratelog", "buffer"]),
    (
        "runner",
        &[
            "config", "metrics", "ratelog", "sample", "backoff", "opcua", "pipeline", "sinks",
            "cloud", "buffer", "writes", "http", "rules",
        ],
    ),
    (
        "commands",
        &[
            "config", "metrics", "ratelog", "sample", "backoff", "opcua", "pipeline", "sinks",
            "cloud", "buffer", "writes", "http", "rules", "runner",
        ],
    ),
];

/// The names that start the paths of a `use` tree: `a` of `a::b`, `a` and `c` of
/// `{a::b, c::{d, e}}` (inner groups belong to their head).
fn heads(tree: &str) -> Vec<String> {
    let ident = |t: &str| -> String {
        t.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let Some(group) = tree.trim_start().strip_prefix('{') else {
        return vec![ident(tree)];
    };
    let mut out = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                out.push(ident(&group[start..i]));
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(ident(&group[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    out.retain(|n| !n.is_empty());
    out
}

/// The top-level modules that `text`, the file of module `path` (`["cloud", "mqtt", "flow"]`),
/// names through `crate::...` or through `super::` chains that climb to the crate root.
/// Comments and the test module at the end of a file are not read.
fn crate_imports(path: &[&str], text: &str) -> BTreeSet<String> {
    let code: String = text
        .split("#[cfg(test)]\nmod ")
        .next()
        .unwrap_or("")
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue; // `my_crate::`, not `crate::`
        }
        out.extend(heads(rest));
    }
    // `super::` from the file's module: each one climbs a level; past the top-level module
    // it reaches the crate root, where the next name is a top-level module.
    let mut rest = code.as_str();
    while let Some(i) = rest.find("super::") {
        let before = rest[..i].chars().next_back();
        let mut tail = &rest[i..];
        let mut levels = 0;
        while let Some(t) = tail.strip_prefix("super::") {
            levels += 1;
            tail = t;
        }
        rest = tail;
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        if levels == path.len() {
            out.extend(heads(tail));
        }
    }
    out.retain(|n| n != "self" && n != "*");
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
        let rel = f.strip_prefix(&src).unwrap().with_extension("");
        let mut path: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if path.last().is_some_and(|l| l == "mod") {
            path.pop();
        }
        let top = path[0].clone();
        if ["lib", "main", "layout_tests"].contains(&top.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let path: Vec<&str> = path.iter().map(String::as_str).collect();
        let mut used = crate_imports(&path, &text);
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
fn crate_paths_are_read_in_every_form() {
    let text = "use crate::a::b;\nuse crate::{c::{D, x}, e};\nlet x = crate::f::g();\n\
                // crate::commented\nuse my_crate::no;\nuse super::super::h::I;\n\
                use super::sibling;\n#[cfg(test)]\nmod tests { use crate::in_tests; }";
    let found = crate_imports(&["m", "n"], text);
    let names: Vec<&str> = found.iter().map(String::as_str).collect();
    assert_eq!(names, ["a", "c", "e", "f", "h"]);
    // From a top-level module file one `super::` is the crate root.
    let found = crate_imports(&["m"], "use super::{p, q::R};");
    let names: Vec<&str> = found.iter().map(String::as_str).collect();
    assert_eq!(names, ["p", "q"]);
}
