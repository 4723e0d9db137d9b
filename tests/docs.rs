//! The README documents every metric, endpoint and configuration key the code knows, so the
//! documentation cannot drift from the code.

use mongo_projector::config::Config;
use mongo_projector::ops::metrics::CATALOGUE;
use mongo_projector::tools::doctor::{SUPPORTED_NEWEST, SUPPORTED_OLDEST};

const README: &str = include_str!("../README.md");

#[test]
fn every_metric_is_documented() {
    for m in CATALOGUE {
        assert!(
            README.contains(&format!("| `{}` |", m.name)),
            "README lacks a row for metric {}",
            m.name
        );
    }
}

#[test]
fn every_endpoint_is_documented() {
    for e in ["/metrics", "/healthz", "/readyz", "/startupz", "/status"] {
        assert!(
            README.contains(&format!("| `{e}` |")),
            "README lacks a row for endpoint {e}"
        );
    }
}

/// The keys the configuration reader understands at one table, read from its own "unknown
/// key" message so that the list comes from the code.
fn known_keys(text_with_unknown_key: &str, table: &str) -> Vec<String> {
    let errors = Config::parse(text_with_unknown_key).unwrap_err().0;
    let line = errors
        .iter()
        .find(|e| e.starts_with(&format!("{table}zzz_unknown: unknown key")))
        .unwrap_or_else(|| panic!("no unknown-key report for {table:?} in {errors:#?}"));
    let list = line
        .split("known keys: ")
        .nth(1)
        .unwrap()
        .trim_end_matches(')');
    list.split(", ").map(str::to_string).collect()
}

#[test]
fn every_configuration_key_is_documented() {
    let minimal = r#"
        [[projections]]
        name = "p"
        database = "d"
        events = "e"
        target = "t"
        handlers = { A = { "$set" = { a = 1 } } }
    "#;
    let mut documented = Vec::new();
    for table in [
        "http",
        "checkpoints",
        "shutdown",
        "source",
        "audit",
        "leases",
    ] {
        let text = format!("[{table}]\nzzz_unknown = 1\n{minimal}");
        for key in known_keys(&text, &format!("{table}.")) {
            documented.push(format!("{table}.{key}"));
        }
    }
    let with = |extra: &str| {
        format!(
            "{}\n{extra}",
            minimal.replace("handlers =", "zzz_unknown = 1\nhandlers =")
        )
    };
    for key in known_keys(&with(""), "projections[0].") {
        if key != "fields" && key != "parking" && key != "handlers" {
            documented.push(format!("projections[].{key}"));
        }
    }
    let parking = minimal.to_string() + "[projections.parking]\nzzz_unknown = 1\n";
    for key in known_keys(&parking, "projections[0].parking.") {
        documented.push(format!("projections[].parking.{key}"));
    }
    let fields = minimal.to_string() + "[projections.fields]\nzzz_unknown = 1\n";
    for key in known_keys(&fields, "projections[0].fields.") {
        assert!(
            README.contains(&format!("`{key}`")),
            "README does not name event field key {key}"
        );
    }
    assert!(documented.len() > 20, "{documented:?}");
    for key in documented {
        let (table, leaf) = key.rsplit_once('.').unwrap();
        let mentioned = README.lines().any(|l| {
            l.starts_with("| `")
                && l.contains(table)
                && (l.contains(&format!(".{leaf}`")) || l.contains(&format!("`.{leaf}`")))
        });
        assert!(mentioned, "README's configuration table lacks {key}");
    }
}

#[test]
fn every_environment_override_is_documented() {
    for variable in mongo_projector::config::env::all_variables() {
        assert!(
            README.contains(&format!("| `{variable}` |")),
            "README lacks a row for {variable}"
        );
    }
}

/// The release series from the oldest to the newest supported, one per major version.
fn supported_series() -> Vec<String> {
    (SUPPORTED_OLDEST.0..=SUPPORTED_NEWEST.0)
        .map(|major| {
            let minor = if major == SUPPORTED_OLDEST.0 {
                SUPPORTED_OLDEST.1
            } else {
                0
            };
            format!("{major}.{minor}")
        })
        .collect()
}

#[test]
fn the_supported_versions_are_stated_tested_and_enforced_alike() {
    let series = supported_series();
    let (last, rest) = series.split_last().unwrap();
    let stated = format!("supports **MongoDB {} and {last}**", rest.join(", "));
    assert!(README.contains(&stated), "README lacks {stated:?}");
    let workflow = include_str!("../.github/workflows/ci.yml");
    let quoted: Vec<String> = series.iter().map(|v| format!("\"{v}\"")).collect();
    let matrix = format!("mongodb: [{}]", quoted.join(", "));
    assert!(
        workflow.contains(&matrix),
        "the CI workflow's matrix is not {matrix}"
    );
}
