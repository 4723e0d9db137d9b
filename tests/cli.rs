//! The `mongo-projector` binary: configuration checking, and a real SIGTERM while running.

mod common;

use bson::doc;
use common::process::{binary, temp_file};
use common::{TestEnv, event, eventually, stored_document, stored_sequence};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The standard output of a command that must have succeeded (its output shown if not).
fn stdout_of_success(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Inserts two events of `aggregate`: its opening (owner "o") and a deposit of 5.
async fn open_with_a_deposit(env: &TestEnv, aggregate: &str) {
    env.events()
        .insert_many(vec![
            event(
                aggregate,
                1,
                "AccountOpened",
                doc! {"owner": "o", "currency": "EUR"},
            ),
            event(aggregate, 2, "Deposited", doc! {"amount": 5i64}),
        ])
        .await
        .unwrap();
}

#[test]
fn check_config_accepts_the_example() {
    let out = binary()
        .args(["check-config", "--config", "config/example.toml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid (1 projection(s))"));
}

#[test]
fn check_config_lists_every_problem_and_exits_2() {
    let path = temp_file(
        "bad.toml",
        r#"
        [checkpoints]
        every = 5
        [[projections]]
        name = "p"
        database = "db"
        events = "events"
        target = "t"
        speling = true
        handlers = { A = { "$sett" = { a = 1 } } }
        "#,
    );
    let out = binary()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("3 problems"), "{stderr}");
    assert!(
        stderr.contains("checkpoints.every: expected a duration string"),
        "{stderr}"
    );
    assert!(
        stderr.contains("projections[0].speling: unknown key"),
        "{stderr}"
    );
    assert!(
        stderr.contains("projections[0].handlers.A: \"$sett\" is not an update operator"),
        "{stderr}"
    );
}

#[test]
fn run_without_mongodb_uri_says_so() {
    let out = binary()
        .args(["run", "--config", "config/example.toml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("MONGODB_URI")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("MONGODB_URI is not set"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_checkpoints_and_exits_zero() {
    let env = TestEnv::new("sigterm").await;
    let config = env.example_text();
    let path = temp_file("sigterm.toml", &config);
    let mut child = binary()
        .args(["run", "--config"])
        .arg(&path)
        .env("MONGODB_URI", &env.uri)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    open_with_a_deposit(&env, "s").await;
    eventually(
        "the daemon applied both events",
        Duration::from_secs(30),
        || async { stored_sequence(&env, "s").await == Some(2) },
    )
    .await;
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0), "graceful stop exits 0");
    let checkpoint =
        mongo_projector::store::checkpoint::CheckpointStore::new(&env.db, "projector_checkpoints")
            .load("accounts")
            .await
            .unwrap()
            .expect("a final checkpoint");
    assert!(checkpoint.events_handled >= 2, "{checkpoint:?}");
}

#[test]
fn the_demo_passes_and_reports_what_happened() {
    let out = binary()
        .args([
            "demo",
            "--accounts",
            "30",
            "--events",
            "600",
            "--writers",
            "3",
        ])
        .output()
        .unwrap();
    let stdout = stdout_of_success(&out);
    for line in [
        "applied:",
        "healed from the store:",
        "parked:",
        "dead-lettered:         1 (malformed: 1)",
        "OK: all ",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_on_the_server_named_by_mongodb_uri() {
    let env = TestEnv::new("demo_uri").await;
    let demo = |db: String| {
        let mut c = binary();
        c.args(["demo", "--uri-from-env", "--database", &db])
            .args(["--accounts", "20", "--events", "300", "--writers", "2"])
            .env("MONGODB_URI", &env.uri);
        c
    };
    let out = tokio::task::spawn_blocking({
        let mut c = demo(env.db.name().to_string());
        move || c.output().unwrap()
    })
    .await
    .unwrap();
    let stdout = stdout_of_success(&out);
    assert!(
        stdout.contains(&format!("database: {}", env.db.name())),
        "{stdout}"
    );
    assert!(stdout.contains("OK: all "), "{stdout}");
    // A second run would mix its workload with the first one's: refused.
    let again = tokio::task::spawn_blocking({
        let mut c = demo(env.db.name().to_string());
        move || c.output().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("is not empty"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[test]
fn rebuild_help_names_its_options() {
    let out = binary().args(["rebuild", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for option in [
        "--projection",
        "--offline",
        "--restart",
        "--allow-behind",
        "--max-lag",
        "--metrics-address",
    ] {
        assert!(help.contains(option), "{option} missing from:\n{help}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_swaps_a_recomputed_read_model_in() {
    let env = TestEnv::new("cli_rebuild").await;
    let config = env.example_text();
    let path = temp_file(
        "rebuild.toml",
        &config.replace("enabled = true ", "enabled = false"),
    );
    open_with_a_deposit(&env, "r").await;
    // A read model the current handlers would not produce.
    env.accounts()
        .insert_one(
            doc! {"_id": "r", "owner": "stale", "balance": 0i64, "lastSequenceNumber": 2i64},
        )
        .await
        .unwrap();
    let rebuild = |offline: bool| {
        let mut c = binary();
        c.args(["rebuild", "--projection", "accounts", "--yes", "--config"])
            .arg(&path)
            .env("MONGODB_URI", &env.uri)
            .env("RUST_LOG", "warn");
        if offline {
            c.arg("--offline");
        }
        c
    };
    let refused = tokio::task::spawn_blocking({
        let mut c = rebuild(false);
        move || c.output().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--offline"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let out = tokio::task::spawn_blocking({
        let mut c = rebuild(true);
        move || c.output().unwrap()
    })
    .await
    .unwrap();
    let stdout = stdout_of_success(&out);
    assert!(
        stdout.contains("rebuilt accounts: 2 events scanned"),
        "{stdout}"
    );
    let account = stored_document(&env, "r").await.unwrap();
    assert_eq!(account.get_str("owner").unwrap(), "o");
    assert_eq!(account.get_i64("balance").unwrap(), 5);
}

#[test]
fn environment_overrides_are_validated_listed_and_named_in_errors() {
    let run = |vars: &[(&str, &str)]| {
        let mut command = binary();
        command
            .args(["check-config"])
            .env("MONGO_PROJECTOR_CONFIG", "config/example.toml")
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        for (k, v) in vars {
            command.env(k, v);
        }
        command.output().unwrap()
    };
    // `--config` from MONGO_PROJECTOR_CONFIG, overrides listed.
    let out = run(&[
        ("MONGO_PROJECTOR_HTTP_ADDRESS", "127.0.0.1:9465"),
        ("MONGO_PROJECTOR_CHECKPOINTS_EVERY_EVENTS", "5000"),
    ]);
    let stdout = stdout_of_success(&out);
    assert!(
        stdout.contains("MONGO_PROJECTOR_HTTP_ADDRESS overrides http.address"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "MONGO_PROJECTOR_CHECKPOINTS_EVERY_EVENTS overrides checkpoints.every_events"
        )
    );
    // A malformed value and an unknown variable: configuration errors naming them, exit 2.
    let out = run(&[
        ("MONGO_PROJECTOR_CHECKPOINTS_EVERY_EVENTS", "many"),
        ("MONGO_PROJECTOR_HTTP_PORT", "9465"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("MONGO_PROJECTOR_CHECKPOINTS_EVERY_EVENTS: expected an integer"),
        "{stderr}"
    );
    assert!(
        stderr.contains("MONGO_PROJECTOR_HTTP_PORT: no such setting"),
        "{stderr}"
    );
}

#[test]
fn the_connection_string_may_come_from_a_file_and_is_never_printed() {
    let uri_file = temp_file(
        "uri",
        "mongodb://user:s3cret@127.0.0.1:1/?serverSelectionTimeoutMS=200\n",
    );
    // `audit` needs the server: with an unreachable one it fails, and says so without the
    // password.
    let out = binary()
        .args([
            "audit",
            "--config",
            "config/example.toml",
            "--projection",
            "accounts",
        ])
        .env_remove("MONGODB_URI")
        .env("MONGODB_URI_FILE", &uri_file)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(!all.contains("s3cret"), "{all}");
    assert!(!all.contains("MONGODB_URI is not set"), "{all}");
    let missing = binary()
        .args([
            "audit",
            "--config",
            "config/example.toml",
            "--projection",
            "accounts",
        ])
        .env_remove("MONGODB_URI")
        .env("MONGODB_URI_FILE", "/nonexistent/uri")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("MONGODB_URI_FILE /nonexistent/uri: cannot read")
    );
}

/// `parked skip` gives events up for good: it needs an aggregate (or `--all`), shows what it
/// would skip, and skips only with `--yes` (standard input is no terminal here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_skip_needs_a_target_and_a_confirmation() {
    let env = TestEnv::new("skip_cli").await;
    let config = temp_file(&format!("skip-{}.toml", env.db.name()), &env.example_text());
    // Two aggregates whose sequence 2 the server refused (dead-lettered); 1 is applied.
    let parked = env.db.collection::<bson::Document>("accounts_parked");
    for a in ["x", "y"] {
        env.accounts()
            .insert_one(doc! {"_id": a, "lastSequenceNumber": 1i64})
            .await
            .unwrap();
        let e = event(a, 2, "Deposited", doc! {"amount": 1i64});
        parked
            .insert_one(doc! {
                "_id": {"projection": "accounts", "aggregateId": a, "sequenceNumber": 2i64},
                "projection": "accounts", "aggregateId": a, "sequenceNumber": 2i64,
                "eventType": "Deposited", "event": e, "state": "dead", "reason": "rejected",
                "detail": "", "attempts": 0i32, "firstParkedAt": bson::DateTime::now(),
                "nextAttemptAt": bson::DateTime::now(),
            })
            .await
            .unwrap();
    }
    let skip = |args: &[&str]| {
        let mut c = binary();
        c.args(["parked", "skip", "--projection", "accounts", "--config"])
            .arg(&config)
            .args(args)
            .env("MONGODB_URI", &env.uri)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null());
        c.output().unwrap()
    };
    let remaining = || async { parked.count_documents(doc! {}).await.unwrap() };
    let out = skip(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--aggregate"));
    let out = skip(&["--aggregate", "x", "--dry-run"]);
    let stdout = stdout_of_success(&out);
    assert!(
        stdout.contains("would skip") && stdout.contains("\"x\""),
        "{stdout}"
    );
    assert!(!stdout.contains("\"y\""), "{stdout}");
    assert_eq!(remaining().await, 2, "a dry run skips nothing");
    let out = skip(&["--aggregate", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    assert_eq!(remaining().await, 2, "not confirmed");
    let out = skip(&["--aggregate", "x", "--yes"]);
    stdout_of_success(&out);
    assert_eq!(remaining().await, 1);
    assert_eq!(
        stored_sequence(&env, "x").await,
        Some(2),
        "x moved past its gap"
    );
    let out = skip(&["--all", "--yes"]);
    stdout_of_success(&out);
    assert_eq!(remaining().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_dry_run_shows_the_plan_and_changes_nothing() {
    let env = TestEnv::new("rebuild_dry").await;
    open_with_a_deposit(&env, "d").await;
    let config = temp_file(&format!("dry-{}.toml", env.db.name()), &env.example_text());
    let out = binary()
        .args([
            "rebuild",
            "--projection",
            "accounts",
            "--dry-run",
            "--config",
        ])
        .arg(&config)
        .env("MONGODB_URI", &env.uri)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let stdout = stdout_of_success(&out);
    assert!(
        stdout.contains("rebuild accounts from its events"),
        "{stdout}"
    );
    assert!(stdout.contains("accounts_rebuild"), "{stdout}");
    assert!(stdout.contains("dry run: nothing changed"), "{stdout}");
    let names = env.db.list_collection_names().await.unwrap();
    assert!(!names.iter().any(|n| n.contains("rebuild")), "{names:?}");
}
