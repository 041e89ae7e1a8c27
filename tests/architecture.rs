//! The layout of docs/architecture.md holds: `src/lib.rs` lists the modules in groups by stage of
//! the pipeline (infrastructure, model, capture, build, write, install), each group after a
//! comment line; a module uses only modules of its own group or of earlier ones, and no two
//! modules use each other, directly or not.

use std::collections::BTreeSet;
use std::path::Path;

/// The modules of `src/lib.rs` with the index of their group.
fn modules_by_group() -> Vec<(String, usize)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut group = 0;
    let mut modules = Vec::new();
    let mut in_group = false;
    for line in std::fs::read_to_string(src.join("lib.rs")).unwrap().lines() {
        if let Some(rest) = line.strip_prefix("mod ") {
            in_group = true;
            modules.push((rest.trim_end_matches(';').trim().to_owned(), group));
        } else if line.starts_with("//") && !line.starts_with("//!") && in_group {
            group += 1;
            in_group = false;
        }
    }
    modules
}

/// The crate modules a file's non-test code names (`crate::x`, `use crate::{x, y::z}`).
fn used_modules(code: &str) -> BTreeSet<String> {
    let code = code.split("#[cfg(test)]").next().unwrap_or("");
    let mut used = BTreeSet::new();
    for (index, _) in code.match_indices("crate::") {
        let rest = &code[index + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = group.split('}').next().unwrap_or("");
            for item in group.split(',') {
                let name = item.trim().split("::").next().unwrap_or("").trim();
                if !name.is_empty() {
                    used.insert(name.to_owned());
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            used.insert(name);
        }
    }
    used
}

fn uses(module: &str) -> BTreeSet<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let code = std::fs::read_to_string(src.join(format!("{module}.rs"))).unwrap();
    let mut used = used_modules(&code);
    used.remove(module);
    used
}

#[test]
fn modules_use_only_their_own_group_or_earlier_ones() {
    let modules = modules_by_group();
    let groups: Vec<usize> = modules.iter().map(|(_, group)| *group).collect();
    assert!(
        modules.len() > 10 && groups.iter().max() >= Some(&4),
        "{modules:?}"
    );
    let group_of = |name: &str| modules.iter().find(|(m, _)| m == name).map(|(_, g)| *g);
    let mut violations = Vec::new();
    for (module, group) in &modules {
        for used in uses(module) {
            if let Some(used_group) = group_of(&used) {
                if used_group > *group {
                    violations.push(format!("{module} uses {used}, of a later stage"));
                }
            }
        }
    }
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn no_modules_use_each_other() {
    let modules: Vec<String> = modules_by_group().into_iter().map(|(m, _)| m).collect();
    // Depth-first search for a cycle in the "uses" graph.
    fn visit(
        module: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        modules: &[String],
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|m| m == module) {
            return Some(path[start..].to_vec());
        }
        if done.contains(module) {
            return None;
        }
        path.push(module.to_owned());
        for used in uses(module) {
            if modules.contains(&used) {
                if let Some(cycle) = visit(&used, path, done, modules) {
                    return Some(cycle);
                }
            }
        }
        path.pop();
        done.insert(module.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for module in &modules {
        let cycle = visit(module, &mut Vec::new(), &mut done, &modules);
        assert!(cycle.is_none(), "an import cycle: {cycle:?}");
    }
}

#[test]
fn every_source_file_is_a_listed_module() {
    let listed: BTreeSet<String> = modules_by_group().into_iter().map(|(m, _)| m).collect();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for entry in std::fs::read_dir(src).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(module) = name.strip_suffix(".rs") {
            if module != "lib" {
                assert!(listed.contains(module), "src/{name} is not in lib.rs");
            }
        }
    }
}
