//! The drivers' own tests against mongo-sim: the MongoDB specification tests (unified format)
//! for change streams, retryable writes and CRUD, and pymongo's change-stream and collection
//! test modules, run unmodified by pymongo's own runner against an in-process mongo-sim.
//!
//! The tests come from pymongo's published source distribution, downloaded at a pinned
//! version and SHA-256 by `scripts/spec-tools.sh` (nothing of it is in this repository). Every
//! test either runs, or is skipped by the runner itself (its `runOnRequirements` are not met
//! by a single-node replica set at mongo-sim's version, or the driver does not support the
//! operation), or is listed in `tests/spec/skip.txt` with a reason. This test fails when a
//! test outside the skip list fails, when a listed test passes or no longer exists (the list
//! must shrink with the gaps it records), and when `CONFORMANCE.md` does not show exactly the
//! counts of this run (`UPDATE_CONFORMANCE=1` rewrites it).
//!
//! Skipped, with a message, only when python3 is missing; a failing download, pip install or
//! bootstrap fails the test. Against `MONGODB_URI` it does not run: the table describes
//! mongo-sim.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};
use tokio::process::Command;

/// The pymongo test modules run, in this order.
const MODULES: &[&str] = &[
    "test/test_change_stream.py",
    "test/test_retryable_writes_unified.py",
    "test/test_crud_unified.py",
    "test/test_collection.py",
];

/// The whole run may not take longer than this (it takes about two minutes).
const RUN_LIMIT: Duration = Duration::from_secs(20 * 60);

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn workspace_root() -> PathBuf {
    crate_dir()
        .parent()
        .expect("the crate lives in the workspace")
        .to_path_buf()
}

fn show(output: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A specification area of the conformance table and the tests that belong to it.
struct Area {
    name: &'static str,
    module: &'static str,
    /// Whether a test class of `module` belongs to this area.
    classes: fn(&str) -> bool,
}

fn unified(class: &str) -> bool {
    class.starts_with("TestUnified")
}

fn any_class(_: &str) -> bool {
    true
}

fn not_unified(class: &str) -> bool {
    !unified(class)
}

const AREAS: &[Area] = &[
    Area {
        name: "Change streams (unified specification tests)",
        module: "test/test_change_stream.py",
        classes: unified,
    },
    Area {
        name: "Change streams (pymongo `test_change_stream.py`)",
        module: "test/test_change_stream.py",
        classes: not_unified,
    },
    Area {
        name: "Retryable writes (unified specification tests)",
        module: "test/test_retryable_writes_unified.py",
        classes: any_class,
    },
    Area {
        name: "CRUD (unified specification tests)",
        module: "test/test_crud_unified.py",
        classes: any_class,
    },
    Area {
        name: "Collection (pymongo `test_collection.py`)",
        module: "test/test_collection.py",
        classes: any_class,
    },
];

fn area_of(test: &str) -> Option<&'static Area> {
    let mut parts = test.split("::");
    let module = parts.next()?;
    let class = parts.next().unwrap_or_default();
    AREAS
        .iter()
        .find(|a| a.module == module && (a.classes)(class))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Passed,
    Failed,
    /// Skipped by the runner itself.
    Skipped,
}

/// One test's result as `tests/spec/outcomes.py` wrote it.
struct Result {
    outcome: Outcome,
    reason: String,
}

fn parse_outcomes(text: &str) -> BTreeMap<String, Result> {
    let mut results = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let mut fields = line.splitn(3, '\t');
        let outcome = match fields.next() {
            Some("passed") => Outcome::Passed,
            Some("failed") => Outcome::Failed,
            Some("skipped") => Outcome::Skipped,
            other => panic!("unexpected outcome {other:?} in line {line:?}"),
        };
        let id = fields.next().expect("a node id").to_string();
        let reason = fields.next().unwrap_or_default().to_string();
        results.insert(id, Result { outcome, reason });
    }
    results
}

/// One entry of `tests/spec/skip.txt`: a test id (or, ending in `*`, a prefix that covers a
/// whole inapplicable file or class) and why it does not pass on mongo-sim.
struct SkipEntry {
    pattern: String,
    reason: String,
    line: usize,
}

impl SkipEntry {
    fn matches(&self, test: &str) -> bool {
        match self.pattern.strip_suffix('*') {
            Some(prefix) => test.starts_with(prefix),
            None => test == self.pattern,
        }
    }
}

fn parse_skip_list(text: &str) -> Vec<SkipEntry> {
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (pattern, reason) = line
            .split_once(" | ")
            .unwrap_or_else(|| panic!("skip.txt:{}: expected `test id | reason`", i + 1));
        let reason = reason.trim();
        assert!(
            !reason.is_empty(),
            "skip.txt:{}: every entry needs a reason",
            i + 1
        );
        entries.push(SkipEntry {
            pattern: pattern.trim().to_string(),
            reason: reason.to_string(),
            line: i + 1,
        });
    }
    entries
}

/// Per area: how many tests, and what became of them.
#[derive(Default)]
struct Counts {
    total: usize,
    not_applicable: usize,
    passed: usize,
    skip_listed: usize,
    /// Failed and not in the skip list.
    failed: usize,
}

/// What the run showed, judged against the skip list.
struct Verdict {
    counts: Vec<Counts>,
    /// Failures outside the skip list: the test fails.
    unexpected: Vec<String>,
    /// Skip-list entries that match a test that passed or was skipped by the runner, or no
    /// test at all: the list is out of date, and the test fails.
    stale: Vec<String>,
    /// Runner skip reasons per area, with how many tests each covers.
    runner_skips: Vec<BTreeMap<String, usize>>,
    /// Skip-list entries per area, with how many failing tests each covers.
    listed: Vec<Vec<(String, String, usize)>>,
}

fn judge(results: &BTreeMap<String, Result>, skips: &[SkipEntry]) -> Verdict {
    let mut v = Verdict {
        counts: AREAS.iter().map(|_| Counts::default()).collect(),
        unexpected: Vec::new(),
        stale: Vec::new(),
        runner_skips: AREAS.iter().map(|_| BTreeMap::new()).collect(),
        listed: AREAS.iter().map(|_| Vec::new()).collect(),
    };
    let mut used = vec![BTreeMap::<usize, usize>::new(); AREAS.len()];
    for (id, r) in results {
        let Some(area) = area_of(id) else {
            v.unexpected
                .push(format!("{id}: belongs to no area of the table"));
            continue;
        };
        let a = AREAS
            .iter()
            .position(|x| std::ptr::eq(x, area))
            .expect("area");
        let c = &mut v.counts[a];
        c.total += 1;
        let entry = skips.iter().position(|s| s.matches(id));
        match (r.outcome, entry) {
            (Outcome::Skipped, None) => {
                c.not_applicable += 1;
                *v.runner_skips[a].entry(r.reason.clone()).or_default() += 1;
            }
            (Outcome::Passed, None) => c.passed += 1,
            (Outcome::Failed, None) => {
                c.failed += 1;
                v.unexpected.push(format!("{id}: {}", r.reason));
            }
            (Outcome::Failed, Some(e)) => {
                c.skip_listed += 1;
                *used[a].entry(e).or_default() += 1;
            }
            (outcome, Some(e)) => {
                let what = if outcome == Outcome::Passed {
                    "passes"
                } else {
                    "is skipped by the runner"
                };
                v.stale.push(format!(
                    "{id} {what} but skip.txt:{} lists it",
                    skips[e].line
                ));
            }
        }
    }
    for (i, entry) in skips.iter().enumerate() {
        let area = used.iter().position(|u| u.contains_key(&i));
        match area {
            Some(a) => v.listed[a].push((entry.pattern.clone(), entry.reason.clone(), used[a][&i])),
            None if !v
                .stale
                .iter()
                .any(|s| s.ends_with(&format!("skip.txt:{} lists it", entry.line))) =>
            {
                v.stale.push(format!(
                    "skip.txt:{} `{}` matches no failing test",
                    entry.line, entry.pattern
                ));
            }
            None => {}
        }
    }
    v
}

fn percent(part: usize, whole: usize) -> String {
    if whole == 0 {
        return "-".to_string();
    }
    format!("{:.1}%", part as f64 * 100.0 / whole as f64)
}

/// `CONFORMANCE.md` as this run shows it.
fn conformance(v: &Verdict) -> String {
    let mut out = String::new();
    out.push_str(
        "# mongo-sim conformance\n\n\
         Generated by `mongo-sim/tests/spec.rs` (`cargo test -p mongo-sim --test spec`), which\n\
         runs the MongoDB drivers' specification tests and pymongo's own test modules, taken\n\
         unmodified from pymongo 4.20.0's source distribution, against mongo-sim, and fails\n\
         when this file differs from its run. Do not edit by hand: `UPDATE_CONFORMANCE=1\n\
         cargo test -p mongo-sim --test spec` rewrites it.\n\n\
         *Not applicable*: skipped by pymongo's runner itself, because the test's\n\
         `runOnRequirements` are not met by a single-node replica set reporting MongoDB 7.0\n\
         (sharded or load-balanced topologies, server 8.0+, authentication, serverless) or the\n\
         driver does not support the operation. *Skip list*: applicable tests that fail on\n\
         mongo-sim, each listed in `mongo-sim/tests/spec/skip.txt` with its reason; a listed\n\
         test that passes fails the run.\n\n",
    );
    out.push_str(
        "| area | tests | not applicable | applicable | passed | skip list | passed / applicable |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for (area, c) in AREAS.iter().zip(&v.counts) {
        let applicable = c.total - c.not_applicable;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            area.name,
            c.total,
            c.not_applicable,
            applicable,
            c.passed,
            c.skip_listed,
            percent(c.passed, applicable)
        );
    }
    out.push_str("\n## Skip list\n");
    for (area, listed) in AREAS.iter().zip(&v.listed) {
        if listed.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n### {}\n", area.name);
        for (pattern, reason, n) in listed {
            let tests = if *n == 1 {
                String::new()
            } else {
                format!(" ({n} tests)")
            };
            let _ = writeln!(out, "- `{pattern}`{tests}: {reason}");
        }
    }
    out.push_str("\n## Not applicable: the runner's reasons\n");
    for (area, skips) in AREAS.iter().zip(&v.runner_skips) {
        if skips.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n### {}\n", area.name);
        let mut by_count: Vec<_> = skips.iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (reason, n) in by_count {
            let _ = writeln!(out, "- {n} × {reason}");
        }
    }
    out
}

/// Runs `scripts/spec-tools.sh`; returns the unpacked source distribution.
async fn prepare(root: &Path) -> PathBuf {
    let tools = Command::new("bash")
        .arg(root.join("scripts/spec-tools.sh"))
        .current_dir(root)
        .output()
        .await
        .expect("bash runs scripts/spec-tools.sh");
    assert!(
        tools.status.success(),
        "spec-tools.sh failed: {}",
        show(&tools)
    );
    let stdout = String::from_utf8_lossy(&tools.stdout);
    let dir = stdout
        .lines()
        .last()
        .expect("spec-tools.sh names the sources");
    PathBuf::from(dir.trim())
}

/// Runs pymongo's test modules against `port` with pytest; returns the outcomes file.
async fn run_pytest(root: &Path, sources: &Path, port: u16, work: &Path) -> String {
    std::fs::create_dir_all(work).expect("work directory");
    let outcomes = work.join("outcomes.tsv");
    let _ = std::fs::remove_file(&outcomes);
    let log = std::fs::File::create(work.join("pytest.log")).expect("log file");
    let mut child = Command::new(root.join(".venv/bin/python"))
        .args([
            "-m",
            "pytest",
            "-p",
            "outcomes",
            "-p",
            "no:cacheprovider",
            "-q",
        ])
        .arg(format!("--junitxml={}", work.join("junit.xml").display()))
        .args(MODULES)
        .current_dir(sources)
        .env("DB_IP", "127.0.0.1")
        .env("DB_PORT", port.to_string())
        .env("PYTHONPATH", crate_dir().join("tests/spec"))
        .env("SPEC_OUTCOMES", &outcomes)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("the virtualenv's python runs");
    let status = tokio::time::timeout(RUN_LIMIT, child.wait())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "pytest ran longer than {RUN_LIMIT:?}; see {}",
                work.display()
            )
        })
        .expect("pytest runs");
    // Exit codes 0 (all passed) and 1 (some failed) both produce a full report.
    assert!(
        matches!(status.code(), Some(0 | 1)),
        "pytest did not complete ({status}); see {}",
        work.join("pytest.log").display()
    );
    std::fs::read_to_string(&outcomes).unwrap_or_else(|e| {
        panic!(
            "no outcomes from pytest ({e}); see {}",
            work.join("pytest.log").display()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_specification_tests_pass() {
    if common::real_uri().is_some() {
        println!("skipping the specification tests: the conformance table describes mongo-sim");
        return;
    }
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipping the specification tests: python3 is not installed");
        return;
    }
    let root = workspace_root();
    let sources = prepare(&root).await;
    let sim = mongo_sim::MongoSim::start(mongo_sim::ServerOptions::default())
        .await
        .expect("mongo-sim starts in process");
    let port = sim.port();
    let work = std::env::temp_dir().join(format!("mongo-sim-spec-{}", std::process::id()));
    let started = Instant::now();
    let text = run_pytest(&root, &sources, port, &work).await;
    println!("pymongo's tests ran in {:.0?}", started.elapsed());

    let skip_text =
        std::fs::read_to_string(crate_dir().join("tests/spec/skip.txt")).expect("skip.txt");
    let results = parse_outcomes(&text);
    assert!(
        !results.is_empty(),
        "pytest reported no tests; see {}",
        work.display()
    );
    let verdict = judge(&results, &parse_skip_list(&skip_text));
    let table = conformance(&verdict);
    let path = crate_dir().join("CONFORMANCE.md");
    if std::env::var_os("UPDATE_CONFORMANCE").is_some() {
        std::fs::write(&path, &table).expect("CONFORMANCE.md written");
    }
    let mut problems = String::new();
    for f in &verdict.unexpected {
        let _ = writeln!(problems, "FAILED (not in skip.txt): {f}");
    }
    for s in &verdict.stale {
        let _ = writeln!(problems, "STALE SKIP ENTRY: {s}");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != table {
        let _ = writeln!(
            problems,
            "CONFORMANCE.md does not match this run (UPDATE_CONFORMANCE=1 rewrites it):\n{table}"
        );
    }
    assert!(
        problems.is_empty(),
        "{problems}\npytest's log: {}",
        work.join("pytest.log").display()
    );
    drop(sim);
    // Kept for diagnosis only when the run failed.
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn skip_entries_match_ids_or_prefixes() {
    let entries = parse_skip_list(
        "# comment\n\
         test/a.py::TestX::test_y | a reason\n\
         test/a.py::TestZ* | whole class\n",
    );
    assert_eq!(entries.len(), 2);
    assert!(entries[0].matches("test/a.py::TestX::test_y"));
    assert!(!entries[0].matches("test/a.py::TestX::test_y2"));
    assert!(entries[1].matches("test/a.py::TestZed::test_q"));
    assert!(!entries[1].matches("test/a.py::TestX::test_y"));
}

#[test]
fn listed_tests_that_pass_and_unlisted_failures_are_reported() {
    let results = parse_outcomes(
        "passed\ttest/test_crud_unified.py::TestA::test_1\t\n\
         failed\ttest/test_crud_unified.py::TestA::test_2\tboom\n\
         failed\ttest/test_crud_unified.py::TestB::test_3\tunsupported\n\
         skipped\ttest/test_crud_unified.py::TestC::test_4\trunOnRequirements not satisfied\n",
    );
    let skips = parse_skip_list(
        "test/test_crud_unified.py::TestA::test_1 | listed but passes\n\
         test/test_crud_unified.py::TestB::test_3 | not supported\n\
         test/test_crud_unified.py::TestGone::test_5 | no such test\n",
    );
    let v = judge(&results, &skips);
    assert_eq!(v.unexpected.len(), 1);
    assert!(v.unexpected[0].contains("test_2: boom"));
    assert_eq!(v.stale.len(), 2, "{:?}", v.stale);
    let crud = &v.counts[3];
    assert_eq!(
        (
            crud.total,
            crud.not_applicable,
            crud.skip_listed,
            crud.failed
        ),
        (4, 1, 1, 1)
    );
}
