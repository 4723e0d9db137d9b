//! `mongo-projector doctor` and the same checks at `run`'s start, through the real binary:
//! against a server that can do everything the configuration asks, against servers that
//! cannot (an older release, a missing operator, a user without a privilege, all played by
//! the test server), and with a bad configuration.

mod common;

use bson::doc;
use common::process::{binary, temp_file};
use common::{TestEnv, event, eventually, stored_sequence};
use mongo_sim::ServerOptions;
use mongo_sim::profile::{Release, SimulatedUser};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The example configuration on the test's database, serving its endpoint on a free port.
fn config_file(env: &TestEnv, name: &str) -> PathBuf {
    let text = env
        .example_text()
        .replace("address = \"0.0.0.0:9464\"", "address = \"127.0.0.1:0\"");
    temp_file(name, &text)
}

/// Runs `mongo-projector doctor` with `args` against `uri` (off the async runtime).
async fn doctor(uri: &str, config: &PathBuf, args: &[&str]) -> Output {
    let mut command = binary();
    command
        .arg("doctor")
        .arg("--config")
        .arg(config)
        .args(args)
        .env("MONGODB_URI", uri)
        .env("RUST_LOG", "warn");
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Every line of a text report, with the counts line last.
fn check_lines(out: &Output) -> Vec<String> {
    let text = stdout(out);
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let (counts, checks) = lines.split_last().expect("a report");
    assert!(counts.ends_with(" fail"), "{text}");
    for line in checks {
        let status = line.split_whitespace().next().unwrap_or_default();
        assert!(
            ["ok", "warn", "fail"].contains(&status) && line.contains(": "),
            "not a check line: {line:?} in\n{text}"
        );
    }
    checks.to_vec()
}

/// The line of the check called `name`.
fn line<'a>(lines: &'a [String], name: &str) -> &'a str {
    lines
        .iter()
        .find(|l| {
            l.split_once(' ')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(&format!("{name}:")))
        })
        .unwrap_or_else(|| panic!("no check {name:?} in {lines:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_passes_with_every_check_printed() {
    let env = TestEnv::new("doctor_example").await;
    let config = config_file(&env, "example.toml");
    let out = doctor(&env.uri, &config, &[]).await;
    let lines = check_lines(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{lines:#?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db = env.db.name();
    for name in [
        "connection",
        "topology",
        "server version",
        &format!("{db}: majority write concern"),
        &format!("{db}: guarded upsert"),
        &format!("{db}: update pipeline with $$NOW"),
        &format!("{db}: change stream"),
        "accounts: unique index",
        "oplog window",
    ] {
        let l = line(&lines, name);
        assert!(l.starts_with("ok ") || l.starts_with("warn "), "{l}");
    }
    assert!(
        lines.iter().any(|l| l.contains(" privileges")),
        "{lines:#?}"
    );
    // The scratch collections are gone.
    let left: Vec<String> = env
        .db
        .list_collection_names()
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.starts_with("mongo_projector_doctor"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_reports_every_check_for_machines() {
    let env = TestEnv::new("doctor_json").await;
    let config = config_file(&env, "json.toml");
    // A stored checkpoint gets a line of its own, judged against the oplog.
    env.events()
        .insert_one(event(
            "a",
            1,
            "AccountOpened",
            doc! {"owner": "o", "currency": "EUR"},
        ))
        .await
        .unwrap();
    let daemon = common::start_monitored(&env, &{
        let mut c = env.config();
        c.http.address = "127.0.0.1:0".parse().unwrap();
        c
    })
    .await;
    common::wait_until_tailing(&env, "accounts").await;
    daemon.stop().await;
    let out = doctor(&env.uri, &config, &["--json", "--rebuild"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("one JSON object");
    assert_eq!(report["ok"], true);
    let checks = report["checks"].as_array().unwrap();
    assert_eq!(
        report["counts"]["ok"].as_u64().unwrap()
            + report["counts"]["warn"].as_u64().unwrap()
            + report["counts"]["fail"].as_u64().unwrap(),
        checks.len() as u64
    );
    for c in checks {
        assert!(c["name"].is_string() && c["reason"].is_string(), "{c}");
        assert!(
            ["ok", "warn"].contains(&c["status"].as_str().unwrap()),
            "{c}"
        );
    }
    let named = |name: &str| {
        checks
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {report:#}"))
    };
    assert_eq!(named("checkpoint accounts")["status"], "ok");
    assert_eq!(named("checkpoint accounts")["projection"], "accounts");
    // --rebuild: renameCollection is run for real.
    assert_eq!(
        named(&format!("{}: renameCollection", env.db.name()))["status"],
        "ok"
    );
    assert_eq!(named("accounts: unique index")["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_server_fails_and_names_the_upgrade() {
    let options = ServerOptions {
        release: Release {
            version: "5.0.9".parse().unwrap(),
            missing_operators: Vec::new(),
        },
        ..ServerOptions::default()
    };
    let Some(env) =
        TestEnv::simulating("doctor_old", options, "the test server's --server-version").await
    else {
        return;
    };
    let config = config_file(&env, "old.toml");
    let out = doctor(&env.uri, &config, &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let lines = check_lines(&out);
    let version = line(&lines, "server version");
    assert!(
        version.starts_with("fail  server version: MongoDB 5.0.9 is older than 6.0"),
        "{version}"
    );
    assert!(
        version.contains("fix: upgrade the deployment to MongoDB 6.0 or later"),
        "{version}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_privilege_fails_and_names_the_grant() {
    let options = ServerOptions {
        user: Some(SimulatedUser::read_write_any_database_except(
            "projector",
            &["changeStream"],
        )),
        ..ServerOptions::default()
    };
    let Some(env) =
        TestEnv::simulating("doctor_privilege", options, "the test server's --user").await
    else {
        return;
    };
    let config = config_file(&env, "privilege.toml");
    let out = doctor(&env.uri, &config, &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let lines = check_lines(&out);
    let db = env.db.name();
    let events = line(&lines, &format!("privileges {db}.events"));
    assert!(
        events.starts_with(&format!(
            "fail  privileges {db}.events: projector@admin lacks changeStream"
        )),
        "{events}"
    );
    assert!(
        events.contains(&format!(
            "db.grantRolesToUser(\"projector\", [{{role: \"readWrite\", db: \"{db}\"}}])"
        )),
        "{events}"
    );
    // The read model needs nothing the user lacks.
    assert!(line(&lines, &format!("privileges {db}.accounts")).starts_with("ok "));
    // Opening a change stream for real is refused too.
    let stream = line(&lines, &format!("{db}: change stream"));
    assert!(
        stream.starts_with("fail ") && stream.contains("Unauthorized (13)"),
        "{stream}"
    );
}

#[test]
fn a_bad_configuration_exits_2() {
    let path = temp_file(
        "bad.toml",
        "[[projections]]\nname = \"p\"\ndatabase = \"d\"\nevents = \"e\"\ntarget = \"t\"\n",
    );
    let out = binary()
        .args(["doctor", "--config"])
        .arg(&path)
        .env("MONGODB_URI", "mongodb://127.0.0.1:1/?replicaSet=rs0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("projections[0].handlers: missing"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = binary()
        .args(["doctor", "--config", "config/example.toml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("MONGODB_URI")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("MONGODB_URI is not set"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_never_shows_the_password() {
    let env = TestEnv::new("doctor_password").await;
    let Some(rest) = env.uri.strip_prefix("mongodb://") else {
        eprintln!("skipped: MONGODB_URI is not a mongodb:// URI");
        return;
    };
    if rest
        .split(['/', '?'])
        .next()
        .unwrap_or_default()
        .contains('@')
    {
        eprintln!("skipped against MONGODB_URI: it carries credentials already");
        return;
    }
    // Credentials the server does not know: authentication fails, the check says so.
    let uri = format!("mongodb://doctor:s3cr3t-pw@{rest}");
    let config = config_file(&env, "password.toml");
    let out = doctor(&uri, &config, &[]).await;
    let text = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(!text.contains("s3cr3t-pw"), "{text}");
    let lines = check_lines(&out);
    let connection = line(&lines, "connection");
    assert!(
        connection.starts_with("fail  connection: mongodb://doctor:***@"),
        "{connection}"
    );
}

/// The example with its projection split in 3 (`$toHashedIndexKey`) and a second, unsplit
/// projection `ledger` over the same events.
fn two_projections(env: &TestEnv) -> String {
    let example = env
        .example_text()
        .replace("address = \"0.0.0.0:9464\"", "address = \"127.0.0.1:0\"");
    let split = example.replace("# partitions = 1 ", "partitions = 3   ");
    assert_ne!(split, example, "the example's partitions line moved");
    format!(
        "{split}\n[[projections]]\nname = \"ledger\"\ndatabase = \"{}\"\nevents = \"events\"\ntarget = \"ledger\"\nstart = \"beginning\"\n[projections.handlers]\nDeposited = {{ \"$inc\" = {{ total = \"${{data.amount}}\" }} }}\n",
        env.db.name()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_starts_only_the_projections_the_server_can_serve() {
    let options = ServerOptions {
        release: Release {
            missing_operators: vec!["$toHashedIndexKey".to_string()],
            ..Release::default()
        },
        ..ServerOptions::default()
    };
    let Some(env) = TestEnv::simulating(
        "run_refuses",
        options,
        "the test server's --without-operator",
    )
    .await
    else {
        return;
    };
    let path = temp_file("refuses.toml", &two_projections(&env));
    let mut child = binary()
        .args(["run", "--config"])
        .arg(&path)
        .env("MONGODB_URI", &env.uri)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    env.events()
        .insert_many(vec![
            event(
                "l",
                1,
                "AccountOpened",
                doc! {"owner": "o", "currency": "EUR"},
            ),
            event("l", 2, "Deposited", doc! {"amount": 7i64}),
        ])
        .await
        .unwrap();
    let ledger = env.db.collection::<bson::Document>("ledger");
    eventually(
        "ledger applied both events",
        Duration::from_secs(30),
        || async {
            ledger
                .find_one(doc! {"_id": "l", "lastSequenceNumber": 2i64})
                .await
                .unwrap()
                .is_some()
        },
    )
    .await;
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let stderr = child.stderr.take().unwrap();
    let (status, log) = tokio::task::spawn_blocking(move || {
        let mut log = String::new();
        std::io::Read::read_to_string(&mut { stderr }, &mut log).unwrap();
        (child.wait().unwrap(), log)
    })
    .await
    .unwrap();
    // A refused projection is a stopped worker: a graceful stop then exits 1, as with any
    // worker stopped for good.
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("accounts: $toHashedIndexKey: partitions = 3 needs $toHashedIndexKey, which this server does not know"),
        "{log}"
    );
    assert!(log.contains("projection not started"), "{log}");
    // No worker of accounts ever ran: none took a lease or stored a checkpoint, and its read
    // model is untouched, while ledger's did all of that.
    for collection in ["projector_leases", "projector_checkpoints"] {
        let names: Vec<String> = common::documents(&env.db.collection(collection), doc! {})
            .await
            .iter()
            .filter_map(|d| d.get_str("_id").ok().map(str::to_string))
            .collect();
        assert!(
            names.contains(&"ledger".to_string()),
            "{collection}: {names:?}"
        );
        assert!(
            !names.iter().any(|n| n.starts_with("accounts")),
            "{collection}: {names:?}"
        );
    }
    assert_eq!(stored_sequence(&env, "l").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_refuses_a_server_none_of_the_projections_can_use() {
    let options = ServerOptions {
        release: Release {
            version: "5.0.9".parse().unwrap(),
            missing_operators: Vec::new(),
        },
        ..ServerOptions::default()
    };
    let Some(env) = TestEnv::simulating(
        "run_refuses_all",
        options,
        "the test server's --server-version",
    )
    .await
    else {
        return;
    };
    let path = config_file(&env, "all.toml");
    let mut command = binary();
    command
        .args(["run", "--config"])
        .arg(&path)
        .env("MONGODB_URI", &env.uri)
        .env("RUST_LOG", "warn");
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no projection can run on this server"),
        "{stderr}"
    );
    assert!(
        stderr.contains("fail  server version: MongoDB 5.0.9 is older than 6.0"),
        "{stderr}"
    );
}
