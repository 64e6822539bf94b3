//! The module picture, checked: the library's top-level modules form an acyclic graph whose
//! arrows point down, from the entry points through the composition root and the adapters to
//! the core; the core never names an adapter or an entry point; the ports speak only the
//! domain. Edges are `crate::<module>` paths in each module's non-test code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Where the adapters and entry points live; nothing else may name them.
const OUTER: &[&str] = &["agent", "app", "aws", "sqlite", "http", "lambda", "serve"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// Source without comments or test modules.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap().flatten() {
        let p = entry.path();
        let name = p.file_stem().unwrap().to_string_lossy().to_string();
        if name == "lib" || name == "bin" {
            continue;
        }
        let mut files = vec![];
        if p.is_dir() {
            rust_files(&p, &mut files);
        } else {
            files.push(p);
        }
        modules.insert(name, files);
    }
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    modules
        .iter()
        .map(|(name, files)| {
            let mut deps = BTreeSet::new();
            for f in files.iter().filter(|f| !f.ends_with("tests.rs")) {
                let text = code(&std::fs::read_to_string(f).unwrap());
                for part in text.split("crate::").skip(1) {
                    let dep: String = part
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    if dep != *name && names.contains(&dep) {
                        deps.insert(dep);
                    }
                }
            }
            (name.clone(), deps)
        })
        .collect()
}

#[test]
fn the_module_graph_is_acyclic_and_points_down() {
    let g = graph();
    assert!(g.len() > 10, "modules not found: {g:?}");
    // Kahn's algorithm: whatever cannot be ordered is on a cycle.
    let mut left = g.clone();
    while let Some(leaf) = left
        .iter()
        .find(|(_, deps)| deps.iter().all(|d| !left.contains_key(d)))
        .map(|(n, _)| n.clone())
    {
        left.remove(&leaf);
    }
    assert!(left.is_empty(), "modules on a cycle: {left:?}");

    for (name, deps) in &g {
        if OUTER.contains(&name.as_str()) {
            continue;
        }
        let outer: Vec<&String> = deps
            .iter()
            .filter(|d| OUTER.contains(&d.as_str()))
            .collect();
        assert!(
            outer.is_empty(),
            "the core module `{name}` names {outer:?}; only entry points and the composition root may"
        );
    }
    let ports: Vec<&String> = g["ports"].iter().collect();
    assert_eq!(
        ports,
        ["domain", "error"],
        "ports depend on the domain alone"
    );
}
