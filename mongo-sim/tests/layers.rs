//! mongo-sim's layers, as ARCHITECTURE.md draws them, checked against `src/`: a module names
//! (through `crate::`) only modules below it, in a lower layer or earlier in its own, so no
//! two modules depend on each other and a command's path reads from the top down. The page's
//! module table names every module once.
//!
//! `expr` counts as one module with everything below it (`expr::*`), so that it can be split
//! into submodules without touching this list.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Bottom to top. Inside a layer, a module may use those listed before it.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "foundation",
        &[
            "error", "bsontype", "compare", "fields", "path", "hasher", "wire",
        ],
    ),
    ("language", &["expr", "query", "aggregate", "update"]),
    (
        "data",
        &[
            "oplog",
            "catalog",
            "retryable",
            "storage",
            "updatedesc",
            "changeevent",
            "changestream",
            "cursor",
        ],
    ),
    (
        "state",
        &["profile", "sessions", "failpoint", "topology", "state"],
    ),
    (
        "commands",
        &[
            "commands",
            "commands::statement",
            "commands::crud",
            "commands::ddl",
            "commands::collmod",
            "commands::aggregation",
            "commands::getmore",
            "handshake",
            "admin",
        ],
    ),
    ("server", &["dispatch", "server"]),
    ("root", &["lib", "main"]),
];

/// Modules that count as one entry together with all their submodules.
const FOLDED: &[&str] = &["expr"];

/// The entry of LAYERS (and of the module table) a module counts as.
fn entry(module: &str) -> &str {
    let first = module.split("::").next().unwrap_or(module);
    if FOLDED.contains(&first) {
        first
    } else {
        module
    }
}

/// Where an entry stands, bottom first.
fn rank(module: &str) -> Option<usize> {
    let name = entry(module);
    LAYERS
        .iter()
        .flat_map(|(_, modules)| modules.iter())
        .position(|m| *m == name)
}

/// A module's code without its unit tests and without comment lines.
fn code_of(text: &str) -> String {
    let end = [
        "#[cfg(test)]\nmod tests",
        "#[cfg(test)]\npub(crate) mod tests",
    ]
    .iter()
    .filter_map(|marker| text.find(marker))
    .min()
    .unwrap_or(text.len());
    let mut code = String::new();
    for line in text[..end].lines() {
        if !line.trim_start().starts_with("//") {
            code.push_str(line);
            code.push('\n');
        }
    }
    code
}

/// Every module of `src/` by its path (`commands::crud`; `mod.rs` names its folder), with its
/// code as [`code_of`] keeps it.
fn modules() -> BTreeMap<String, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = BTreeMap::new();
    let mut folders = vec![root.clone()];
    while let Some(folder) = folders.pop() {
        for item in std::fs::read_dir(&folder).unwrap() {
            let path = item.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let name = path.strip_prefix(&root).unwrap().with_extension("");
                let name = name.to_string_lossy().replace('/', "::");
                let name = name.strip_suffix("::mod").unwrap_or(&name).to_string();
                found.insert(name, code_of(&std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    found
}

/// One `crate::` path of some code: the module it names (its longest prefix that is a module)
/// and whether a `{` group follows that module's path directly.
struct Use {
    module: String,
    grouped: bool,
}

/// Every `crate::` path in `code` that names a module of `known`.
fn uses(code: &str, known: &BTreeSet<String>) -> Vec<Use> {
    let in_path = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    code.split("crate::")
        .skip(1)
        .filter_map(|after| {
            let end = after.find(|c| !in_path(c)).unwrap_or(after.len());
            let mut module = after[..end].trim_end_matches(':');
            while !known.contains(module) {
                module = &module[..module.rfind("::")?];
            }
            Some(Use {
                module: module.to_string(),
                grouped: after[module.len()..].starts_with("::{"),
            })
        })
        .collect()
}

/// What is wrong with one module's uses: upward ones, and groups that hide which submodule of
/// another entry they import (`crate::commands::{crud, ddl}`).
fn violations(module: &str, code: &str, known: &BTreeSet<String>) -> Vec<String> {
    let mut wrong = Vec::new();
    if code.contains("crate::{") || code.contains("super::") {
        wrong.push(format!(
            "{module}: names modules by their full path (crate::a::b), never crate::{{..}} or super::"
        ));
    }
    let here = rank(module);
    for used in uses(code, known) {
        let parent_of_other_entries = known.iter().any(|k| {
            k.starts_with(&format!("{}::", used.module)) && entry(k) != entry(&used.module)
        });
        if used.grouped && parent_of_other_entries {
            wrong.push(format!(
                "{module}: imports from crate::{}::{{..}}; name each submodule by its full path",
                used.module
            ));
        }
        if entry(&used.module) != entry(module) && rank(&used.module) > here {
            wrong.push(format!("{module} uses {}", used.module));
        }
    }
    wrong.sort();
    wrong.dedup();
    wrong
}

#[test]
fn every_module_uses_only_modules_below_it() {
    let modules = modules();
    let known: BTreeSet<String> = modules.keys().cloned().collect();
    let unlisted: Vec<&String> = known.iter().filter(|m| rank(m).is_none()).collect();
    assert!(
        unlisted.is_empty(),
        "every module of src/ has its place in LAYERS (and ARCHITECTURE.md's drawing): {unlisted:?}"
    );
    let entries: BTreeSet<&str> = known.iter().map(|m| entry(m)).collect();
    let gone: Vec<&str> = LAYERS
        .iter()
        .flat_map(|(_, modules)| modules.iter().copied())
        .filter(|m| !entries.contains(m))
        .collect();
    assert!(
        gone.is_empty(),
        "LAYERS lists modules src/ no longer has: {gone:?}"
    );
    let wrong: Vec<String> = modules
        .iter()
        .flat_map(|(module, code)| violations(module, code, &known))
        .collect();
    assert!(
        wrong.is_empty(),
        "modules use modules above them: {wrong:#?}"
    );
}

/// How often the first cells of the module table in `section` name each module.
fn table_names(section: &str) -> BTreeMap<&str, usize> {
    let mut named = BTreeMap::new();
    let first_cells = section
        .lines()
        .filter(|line| line.starts_with("| `"))
        .filter_map(|row| row.split('|').nth(1));
    for name in first_cells.flat_map(|cell| cell.split('`').skip(1).step_by(2)) {
        *named.entry(name).or_insert(0) += 1;
    }
    named
}

#[test]
fn the_architecture_page_names_every_module_once() {
    let page = include_str!("../../ARCHITECTURE.md");
    let (_, section) = page
        .split_once("\n## mongo-sim")
        .expect("ARCHITECTURE.md has a mongo-sim section");
    let named = table_names(section);
    let modules = modules();
    let entries: BTreeSet<&str> = modules.keys().map(|m| entry(m)).collect();
    let miscounted = entries
        .iter()
        .map(|m| (*m, named.get(m).copied().unwrap_or(0)))
        .filter(|(_, times)| *times != 1)
        .map(|(m, times)| format!("`{m}` named {times} times"));
    let unknown = named
        .keys()
        .filter(|n| !entries.contains(*n))
        .map(|n| format!("`{n}` is no module of src/"));
    let wrong: Vec<String> = miscounted.chain(unknown).collect();
    assert!(
        wrong.is_empty(),
        "ARCHITECTURE.md's mongo-sim module table names each module once: {wrong:?}"
    );
}

#[test]
fn the_use_reader_sees_modules_groups_and_folded_submodules() {
    let known: BTreeSet<String> = ["commands", "commands::crud", "expr", "expr::eval", "state"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let code = "use crate::commands::crud::{insert, update};\nlet s = crate::state::Shared::new();\n\
                use crate::expr::{eval, Variables};\nuse crate::commands::{crud};";
    let found: Vec<(String, bool)> = uses(code, &known)
        .into_iter()
        .map(|u| (u.module, u.grouped))
        .collect();
    let expected = [
        ("commands::crud", true),
        ("state", false),
        ("expr", true),
        ("commands", true),
    ];
    let expected: Vec<(String, bool)> = expected.iter().map(|(m, g)| (m.to_string(), *g)).collect();
    assert_eq!(found, expected);
    // `expr::eval` and `expr` are one entry: importing a group from `expr` hides nothing.
    assert_eq!(entry("expr::eval"), "expr");
    assert_eq!(rank("expr::eval"), rank("expr"));
    assert_eq!(
        violations("dispatch", code, &known),
        ["dispatch: imports from crate::commands::{..}; name each submodule by its full path"]
    );
    assert_eq!(
        violations("error", "use crate::state::Shared;", &known),
        ["error uses state"]
    );
}
