//! The layers of `src/` as ARCHITECTURE.md draws them, checked against the code: a module uses
//! only modules below it (a lower layer, or an earlier entry of its own layer), so there is no
//! import cycle and the flow reads bottom-up. ARCHITECTURE.md's module table names every module
//! once, so the page cannot drift from the layout.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Bottom to top. Inside a layer, a module may use those listed before it.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "foundation",
        &["config::env", "config", "backoff", "error", "ops::stats"],
    ),
    (
        "model",
        &[
            "model",
            "model::event",
            "model::partition",
            "model::projection",
        ],
    ),
    (
        "store",
        &["store", "store::checkpoint", "store::lease", "store::park"],
    ),
    (
        "pipeline",
        &[
            "pipeline",
            "pipeline::watermark",
            "pipeline::apply",
            "pipeline::lanes",
            "pipeline::dispatcher",
            "pipeline::stream",
            "pipeline::checkpointer",
            "pipeline::scan",
            "pipeline::start",
            "pipeline::tail",
            "pipeline::worker",
        ],
    ),
    (
        "cluster",
        &["cluster", "cluster::replicas", "cluster::daemon"],
    ),
    (
        "ops",
        &["ops", "ops::shutdown", "ops::metrics", "ops::http"],
    ),
    (
        "tools",
        &[
            "tools",
            "tools::audit",
            "tools::rebuild",
            "tools::doctor",
            "tools::demo",
            "tools::bench",
        ],
    ),
    ("app", &["app"]),
    (
        "cli",
        &[
            "cli::args",
            "cli::confirm",
            "cli",
            "cli::audit",
            "cli::demo",
            "cli::doctor",
            "cli::parked",
            "cli::rebuild",
            "cli::run",
        ],
    ),
    ("root", &["lib", "main"]),
];

/// Every module of `src/` by its path (`pipeline::tail`), with its code outside unit tests and
/// comments.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, root, out);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(root).unwrap().with_extension("");
            let mut name = relative.to_string_lossy().replace('/', "::");
            if let Some(parent) = name.strip_suffix("::mod") {
                name = parent.to_string();
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let tests = [
                "#[cfg(test)]\nmod tests",
                "#[cfg(test)]\npub(crate) mod tests",
            ];
            let end = tests
                .iter()
                .filter_map(|t| text.find(t))
                .min()
                .unwrap_or(text.len());
            let code = &text[..end];
            let code: Vec<&str> = code
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect();
            out.insert(name, code.join("\n"));
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    walk(&root, &root, &mut out);
    out
}

/// The modules one module's code names through `crate::`, resolved to the longest module path.
fn uses(code: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let parts: Vec<&str> = path.split("::").collect();
        if let Some(module) = (1..=parts.len())
            .rev()
            .map(|k| parts[..k].join("::"))
            .find(|m| known.contains(m))
        {
            found.insert(module);
        }
    }
    found
}

#[test]
fn every_module_uses_only_modules_below_it() {
    let modules = modules();
    let known: BTreeSet<String> = modules.keys().cloned().collect();
    let order: Vec<&str> = LAYERS.iter().flat_map(|(_, m)| m.iter().copied()).collect();
    let listed: BTreeSet<String> = order.iter().map(|m| m.to_string()).collect();
    assert_eq!(
        known, listed,
        "every module of src/ has its place in LAYERS (and ARCHITECTURE.md's drawing)"
    );
    let rank = |m: &str| order.iter().position(|o| *o == m).unwrap();
    let mut upward = Vec::new();
    for (module, code) in &modules {
        assert!(
            !code.contains("crate::{") && !code.contains("super::"),
            "{module}: name modules by their full path (crate::a::b), so this check sees them"
        );
        for used in uses(code, &known) {
            if used != *module && rank(&used) > rank(module) {
                upward.push(format!("{module} uses {used}"));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "modules use modules above them: {upward:#?}"
    );
}

#[test]
fn the_architecture_page_names_every_module_once() {
    let page = include_str!("../ARCHITECTURE.md");
    let section = page
        .split("## mongo-sim")
        .next()
        .expect("ARCHITECTURE.md has a mongo-projector part");
    let mut named = BTreeMap::<String, usize>::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cell = row.split('|').nth(1).unwrap();
        for name in cell.split('`').skip(1).step_by(2) {
            *named.entry(name.to_string()).or_default() += 1;
        }
    }
    let known: BTreeSet<String> = modules().into_keys().collect();
    for module in &known {
        assert_eq!(
            named.get(module),
            Some(&1),
            "ARCHITECTURE.md's module table names `{module}` once"
        );
    }
    let unknown: Vec<&String> = named.keys().filter(|n| !known.contains(*n)).collect();
    assert!(
        unknown.is_empty(),
        "ARCHITECTURE.md's module table names modules that do not exist: {unknown:?}"
    );
}

#[test]
fn the_use_reader_sees_paths_and_ignores_items() {
    let known: BTreeSet<String> = ["store", "store::park", "pipeline::apply"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let code = "use crate::store::park::Parked;\nlet c = crate::store::majority(db);\n\
                crate::pipeline::apply::Applier::new()";
    let found: Vec<String> = uses(code, &known).into_iter().collect();
    assert_eq!(found, ["pipeline::apply", "store", "store::park"]);
}
