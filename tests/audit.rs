//! The drift audit over the wire: a read model run by the daemon to a known state, then
//! corrupted on purpose; the audit names exactly what was done to it, `--repair` makes it equal
//! the in-order fold again, the command's exit codes and output, and the background audit's
//! metrics.

mod common;

use bson::{Bson, Document, doc};
use common::{TestEnv, event, eventually, metric_sample, wait_for_sequence};
use futures_util::TryStreamExt;
use mongo_projector::cluster::daemon::Daemon;
use mongo_projector::tools::audit::{Audit, AuditOptions, AuditReport, DriftKind};
use mongo_projector::tools::demo::{account_from_read_model, compare_with_fold, fold};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

fn opened(id: &str) -> Document {
    event(
        id,
        1,
        "AccountOpened",
        doc! {"owner": id, "currency": "EUR"},
    )
}

fn deposited(id: &str, seq: i64, amount: i64) -> Document {
    event(id, seq, "Deposited", doc! {"amount": amount})
}

/// Aggregates and their events: healthy ones, and the ones the test corrupts afterwards.
fn history() -> Vec<Document> {
    let mut events = Vec::new();
    for id in ["ok-1", "ok-2", "ok-3"] {
        events.extend([opened(id), deposited(id, 2, 7)]);
    }
    // Its last event is idempotent: lowering the stored sequence alone leaves a document that
    // applying event 3 again turns back into the fold.
    events.extend([
        opened("lowered"),
        deposited("lowered", 2, 10),
        event("lowered", 3, "AccountClosed", doc! {}),
    ]);
    for id in ["raised", "deleted", "invalid"] {
        events.extend([opened(id), deposited(id, 2, 5), deposited(id, 3, 6)]);
    }
    events.extend([
        opened("rolled-back"),
        deposited("rolled-back", 2, 10),
        deposited("rolled-back", 3, 20),
        event("rolled-back", 4, "Withdrawn", doc! {"amount": 5i64}),
    ]);
    // Sequence 4 never written: the daemon folds 1..3 and parks 5.
    events.extend([
        opened("gap"),
        deposited("gap", 2, 1),
        deposited("gap", 3, 2),
        deposited("gap", 5, 4),
    ]);
    events
}

async fn audit(
    env: &TestEnv,
    config: &mongo_projector::config::Config,
    repair: bool,
) -> AuditReport {
    Audit::new(
        mongo_projector::model::partition::Worker::whole(Arc::new(config.projections[0].clone())),
        &env.db,
    )
    .run(AuditOptions {
        examples: 100,
        repair,
        settle: Duration::ZERO,
    })
    .await
    .expect("audit")
}

fn kinds(report: &AuditReport) -> BTreeSet<(String, String)> {
    report
        .examples
        .iter()
        .map(|d| {
            (
                d.kind.as_str().to_string(),
                d.aggregate.as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn set(items: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    items
        .iter()
        .map(|(k, a)| (k.to_string(), a.to_string()))
        .collect()
}

async fn events_of(env: &TestEnv, id: &str) -> Vec<Document> {
    env.events()
        .find(doc! {"aggregateId": id})
        .sort(doc! {"sequenceNumber": 1})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_names_each_corruption_and_repair_restores_the_fold() {
    let env = TestEnv::new("audit_repair").await;
    let config = env.config();
    env.events().insert_many(history()).await.unwrap();
    let shutdown = CancellationToken::new();
    let daemon = Daemon::new(&config, &env.client, &shutdown);
    let running = tokio::spawn(async move {
        let report = daemon.run().await;
        assert!(report.all_ok(), "{:?}", report.results);
    });
    for (id, seq) in [
        ("ok-1", 2),
        ("ok-2", 2),
        ("ok-3", 2),
        ("lowered", 3),
        ("raised", 3),
        ("deleted", 3),
        ("invalid", 3),
        ("rolled-back", 4),
        ("gap", 3),
    ] {
        wait_for_sequence(&env, id, seq).await;
    }
    let clean = audit(&env, &config, false).await;
    assert_eq!(clean.checked, 9, "{clean:?}");
    assert_eq!(kinds(&clean), set(&[("gap", "gap")]), "{clean:?}");

    // The corruptions, while the daemon keeps running.
    let accounts = env.accounts();
    let set_fields = |id: &str, fields: Document| {
        let accounts = accounts.clone();
        let id = id.to_string();
        async move {
            let r = accounts
                .update_one(doc! {"_id": id}, doc! {"$set": fields})
                .await
                .unwrap();
            assert_eq!(r.matched_count, 1);
        }
    };
    set_fields("lowered", doc! {"lastSequenceNumber": 2i64}).await;
    set_fields("raised", doc! {"lastSequenceNumber": 9i64}).await;
    set_fields("invalid", doc! {"lastSequenceNumber": "three"}).await;
    // Rolled back to its state after event 2: balance 10 (the fold after 4 events is 25).
    set_fields(
        "rolled-back",
        doc! {"balance": 10i64, "lastSequenceNumber": 2i64},
    )
    .await;
    accounts.delete_one(doc! {"_id": "deleted"}).await.unwrap();
    accounts
        .insert_one(
            doc! {"_id": "ghost", "owner": "nobody", "balance": 3i64, "lastSequenceNumber": 4i64},
        )
        .await
        .unwrap();

    let found = audit(&env, &config, false).await;
    assert_eq!(
        kinds(&found),
        set(&[
            ("behind", "lowered"),
            ("behind", "rolled-back"),
            ("ahead", "raised"),
            ("ahead", "invalid"),
            ("ahead", "ghost"),
            ("missing", "deleted"),
            ("gap", "gap"),
        ]),
        "{found:?}"
    );
    assert_eq!(found.counts, [2, 3, 1, 1]);
    assert_eq!(found.checked, 10);
    let rolled = found
        .examples
        .iter()
        .find(|d| d.aggregate.as_str() == Some("rolled-back"))
        .unwrap();
    assert_eq!(
        (rolled.stored.clone(), rolled.events.map(|e| e.highest)),
        (mongo_projector::tools::audit::Stored::Sequence(2), Some(4))
    );
    assert!(found.unresolved());

    let repaired = audit(&env, &config, true).await;
    assert_eq!(repaired.counts, [2, 3, 1, 1], "{repaired:?}");
    let r = repaired.repair.clone().unwrap();
    assert_eq!(r.failures, Vec::<String>::new());
    assert_eq!((r.repaired, r.refolded), (6, 3), "{r:?}");
    // lowered: 3; rolled-back: 3, 4; raised and invalid: 1..3 each; deleted: 1..3.
    assert_eq!(r.applied + r.duplicates, 12, "{r:?}");

    // Every aggregate equals the in-order fold of its events, except that the one with a gap
    // stops before the hole (its event 5 stays parked).
    let mismatches = compare_with_fold(&env.db, "events", "accounts")
        .await
        .unwrap();
    assert_eq!(mismatches.len(), 1, "{mismatches:?}");
    assert!(mismatches[0].starts_with("gap:"), "{mismatches:?}");
    let gap_events = events_of(&env, "gap").await;
    let gap_doc = accounts
        .find_one(doc! {"_id": "gap"})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(account_from_read_model(&gap_doc), fold(&gap_events[..3]));
    assert_eq!(
        accounts
            .count_documents(doc! {"_id": "ghost"})
            .await
            .unwrap(),
        0
    );

    let again = audit(&env, &config, false).await;
    assert_eq!(kinds(&again), set(&[("gap", "gap")]), "{again:?}");
    assert_eq!(again.checked, 9);

    shutdown.cancel();
    running.await.unwrap();
}

/// The `audit` command: a config file pointing at this test's database.
fn audit_command(env: &TestEnv, name: &str, projection: &str) -> Command {
    let text = env.example_text();
    let dir = std::env::temp_dir().join(format!("mongo-projector-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_mongo-projector"));
    c.args(["audit", "--projection", projection, "--config"])
        .arg(path)
        .env("MONGODB_URI", &env.uri)
        .env("RUST_LOG", "error");
    c
}

async fn output(mut command: Command) -> (Option<i32>, String, String) {
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_exits_1_on_drift_0_once_repaired_and_2_on_error() {
    let env = TestEnv::new("audit_cli").await;
    env.events()
        .insert_many(vec![
            opened("a"),
            deposited("a", 2, 5),
            opened("b"),
            deposited("b", 2, 8),
        ])
        .await
        .unwrap();
    // "a" applied up to 1 only; "b" never projected.
    env.accounts()
        .insert_one(doc! {"_id": "a", "owner": "a", "currency": "EUR", "balance": 0i64, "status": "open", "lastSequenceNumber": 1i64})
        .await
        .unwrap();

    // With a settle time both are held back and looked at again: still out of step.
    let mut table = audit_command(&env, "table", "accounts");
    table.args(["--settle", "50ms"]);
    let (code, stdout, stderr) = output(table).await;
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("2 aggregates checked, 2 out of step"),
        "{stdout}"
    );
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(
        rows.contains(&vec!["behind", "\"a\"", "1", "2"]),
        "{stdout}"
    );
    assert!(
        rows.contains(&vec!["missing", "\"b\"", "-", "2"]),
        "{stdout}"
    );

    let mut json = audit_command(&env, "json", "accounts");
    json.arg("--json");
    let (code, stdout, _) = output(json).await;
    assert_eq!(code, Some(1));
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["drift"]["behind"], 1, "{v}");
    assert_eq!(v["drift"]["missing"], 1, "{v}");
    assert_eq!(v["examples"][1]["aggregate"], "b", "{v}");

    // A repair is shown first: --dry-run stops there, and without a terminal to ask on,
    // nothing is repaired without --yes.
    for (name, flags, expected) in [
        ("dry", &["--repair", "--dry-run"][..], 0),
        ("unconfirmed", &["--repair"][..], 2),
    ] {
        let mut c = audit_command(&env, name, "accounts");
        c.args(flags).stdin(std::process::Stdio::null());
        let (code, stdout, stderr) = output(c).await;
        assert_eq!(code, Some(expected), "{stdout}{stderr}");
        assert!(
            stdout.contains("missing"),
            "the findings come first: {stdout}"
        );
        assert_eq!(
            compare_with_fold(&env.db, "events", "accounts")
                .await
                .unwrap()
                .len(),
            2,
            "{name}: nothing repaired"
        );
    }
    let mut repair = audit_command(&env, "repair", "accounts");
    repair.args(["--repair", "--yes"]);
    let (code, stdout, stderr) = output(repair).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("repair: 2 aggregates repaired (3 events applied"),
        "{stdout}"
    );
    assert_eq!(
        compare_with_fold(&env.db, "events", "accounts")
            .await
            .unwrap(),
        Vec::<String>::new()
    );

    let (code, stdout, _) = output(audit_command(&env, "after", "accounts")).await;
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("0 out of step"), "{stdout}");

    let (code, _, stderr) = output(audit_command(&env, "unknown", "nope")).await;
    assert_eq!(code, Some(2));
    assert!(stderr.contains("no projection \"nope\""), "{stderr}");

    let mut no_uri = audit_command(&env, "no_uri", "accounts");
    no_uri.env_remove("MONGODB_URI");
    let (code, _, stderr) = output(no_uri).await;
    assert_eq!(code, Some(2));
    assert!(stderr.contains("MONGODB_URI is not set"), "{stderr}");
}

/// A plain HTTP/1.1 GET of `path`: the body.
async fn get(address: SocketAddr, path: &str) -> String {
    common::http_get(address, path).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_audit_exports_drift_by_kind() {
    let env = TestEnv::new("audit_metrics").await;
    let mut config = env.config();
    config.audit.every = Some(Duration::from_millis(100));
    // Also the time an aggregate that looks behind or missing gets before it is counted.
    config.http.readiness_max_lag = Some(Duration::from_millis(500));
    config.http.address = "127.0.0.1:0".parse().unwrap();
    env.events()
        .insert_many(vec![opened("a"), deposited("a", 2, 5)])
        .await
        .unwrap();
    // A read-model document whose aggregate has no events: ahead, for every run.
    env.accounts()
        .insert_one(doc! {"_id": "ghost", "lastSequenceNumber": 2i64})
        .await
        .unwrap();
    let served = common::start_monitored(&env, &config).await;
    let address = served.address;
    let projection = "projection=\"accounts\"";
    eventually(
        "the audit reports the ghost document alone",
        WAIT,
        || async {
            let scrape = get(address, "/metrics").await;
            let drift = |kind: &str| {
                metric_sample(
                    &scrape,
                    "mongo_projector_audit_drift_aggregates",
                    &[projection, &format!("kind=\"{kind}\"")],
                )
            };
            drift("ahead") == Some(1.0)
                && drift("behind") == Some(0.0)
                && drift("missing") == Some(0.0)
                && drift("gap") == Some(0.0)
        },
    )
    .await;
    let scrape = get(address, "/metrics").await;
    let runs = metric_sample(&scrape, "mongo_projector_audit_runs_total", &[projection]).unwrap();
    assert!(runs >= 1.0, "{scrape}");
    let last = metric_sample(
        &scrape,
        "mongo_projector_audit_last_run_timestamp_seconds",
        &[projection],
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(last > 0.0 && last <= now, "{last} vs {now}");

    // Healed by hand: the next runs report nothing.
    env.accounts()
        .delete_one(doc! {"_id": "ghost"})
        .await
        .unwrap();
    eventually("the audit reports no drift", WAIT, || async {
        let scrape = get(address, "/metrics").await;
        metric_sample(
            &scrape,
            "mongo_projector_audit_drift_aggregates",
            &[projection, "kind=\"ahead\""],
        ) == Some(0.0)
    })
    .await;
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_of_every_type_are_matched_in_the_servers_order() {
    let env = TestEnv::new("audit_ids").await;
    let config = env.config();
    let oid = bson::oid::ObjectId::new();
    let binary = Bson::Binary(bson::Binary {
        subtype: bson::spec::BinarySubtype::Generic,
        bytes: vec![1, 2, 3],
    });
    // (id in the events, the same id as the read model stores it): numbers of another width
    // are the same id to the server.
    let ids = [
        (Bson::Int32(10), Bson::Int64(10)),
        (Bson::Int64(9), Bson::Int32(9)),
        (Bson::Int32(100), Bson::Int32(100)),
        (Bson::String("B".into()), Bson::String("B".into())),
        (Bson::String("a".into()), Bson::String("a".into())),
        (Bson::String("ä".into()), Bson::String("ä".into())),
        (Bson::ObjectId(oid), Bson::ObjectId(oid)),
        (binary.clone(), binary),
    ];
    for (event_id, model_id) in &ids {
        let mut e = opened("x");
        e.insert("aggregateId", event_id.clone());
        env.events().insert_one(e).await.unwrap();
        env.accounts()
            .insert_one(doc! {"_id": model_id.clone(), "lastSequenceNumber": 1i64})
            .await
            .unwrap();
    }
    let report = audit(&env, &config, false).await;
    assert_eq!(report.checked, ids.len() as u64, "{report:?}");
    assert_eq!(report.drifted(), 0, "{report:?}");

    // One more event for the numeric id 9 and one document for an id without events, between
    // the others in BSON order.
    let mut e = deposited("x", 2, 1);
    e.insert("aggregateId", 9i64);
    env.events().insert_one(e).await.unwrap();
    env.accounts()
        .insert_one(doc! {"_id": "Zed", "lastSequenceNumber": 1i64})
        .await
        .unwrap();
    let report = audit(&env, &config, false).await;
    assert_eq!(report.checked, ids.len() as u64 + 1, "{report:?}");
    let found: Vec<(DriftKind, Bson)> = report
        .examples
        .iter()
        .map(|d| (d.kind, d.aggregate.clone()))
        .collect();
    assert_eq!(
        found,
        vec![
            (DriftKind::Behind, Bson::Int64(9)),
            (DriftKind::Ahead, Bson::String("Zed".into())),
        ]
    );
}
