//! The error policy over the wire: faults injected with mongod's `failCommand` fail point on
//! the daemon's own connections (its `appName`), each taking its path, with nothing lost or
//! applied twice.
//!
//! - An unknown error code on the read model's `update`: retried (counted), then applied once.
//! - `ResumableChangeStreamError` on `getMore`: the driver resumes by itself; the daemon never
//!   re-opens.
//! - A network error on `update`: retried in place, applied once.
//! - `Unauthorized` on the checkpoint write: the worker stops at once with its reason, and a
//!   restart once the privilege is back applies everything exactly once.
//! - A server that refuses every `update` of one read model: that worker stops after
//!   `source.unknown_error_retries` pauses, with its reason in `/status` and the metric, its log
//!   bounded; the other projection goes on; a restart after the fault loses nothing.
//! - The same refusal on the lease path (every checkpoint claim refused): the worker backs off
//!   between attempts and stops, instead of taking its lease thousands of times a second.
//!
//! Runs against the embedded `mongo-sim`, or a replica set named by `MONGODB_URI` started with
//! `--setParameter enableTestCommands=1`.

mod common;

use bson::{Document, doc};
use common::replica::{Replica, start_instance};
use common::{TestEnv, event, eventually, fail_point, recording_projection, seen};
use mongo_projector::config::{Config, ProjectionConfig};
use mongo_projector::error::StopReason;
use mongo_projector::ops::metrics::Monitor;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
/// The daemon's connections carry this `appName`; fail points single them out.
const DAEMON: &str = "policy-daemon";

/// Warnings and errors the daemons of this binary logged, for bounding the log volume.
fn log() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .try_init();
        buffer
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Log lines that mention `word`.
fn log_lines(word: &str) -> usize {
    let text = String::from_utf8_lossy(&log().lock().unwrap()).to_string();
    text.lines().filter(|l| l.contains(word)).count()
}

/// The recording projection named `name`, reading the test's events into its own read model.
fn projection(config: &Config, name: &str) -> ProjectionConfig {
    let mut p = config.projections[0].clone();
    p.name = name.to_string();
    p.target = name.to_string();
    p.parking.collection = format!("{name}_parked");
    p
}

/// The test configuration: the recording projection under the given names, three retries of
/// errors not known to be transient, leases as asked.
fn config(env: &TestEnv, names: &[&str], leases: bool) -> Config {
    let mut config = env.config();
    recording_projection(&mut config);
    config.projections = names.iter().map(|n| projection(&config, n)).collect();
    config.source.unknown_error_retries = 3;
    config.leases.enabled = leases;
    config.leases.ttl = Duration::from_secs(2);
    config.leases.renew_every = Duration::from_millis(400);
    config
}

async fn insert(env: &TestEnv, aggregate: &str, from: i64, to: i64) {
    env.events()
        .insert_many((from..=to).map(|s| event(aggregate, s, "A", doc! {})))
        .await
        .unwrap();
}

async fn sequence_in(env: &TestEnv, target: &str, aggregate: &str) -> Option<i64> {
    env.db
        .collection::<Document>(target)
        .find_one(doc! {"_id": aggregate})
        .await
        .unwrap()
        .and_then(|d| d.get_i64("lastSequenceNumber").ok())
}

async fn wait_applied(env: &TestEnv, target: &str, aggregate: &str, seq: i64) {
    eventually(&format!("{target}/{aggregate} at {seq}"), WAIT, || async {
        sequence_in(env, target, aggregate).await == Some(seq)
    })
    .await;
}

fn restarts(replica: &Replica, worker: &str) -> u64 {
    replica.worker(worker).restarts_by_reason().values().sum()
}

fn namespace(env: &TestEnv, collection: &str) -> String {
    format!("{}.{collection}", env.db.name())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fault_takes_its_path_and_nothing_is_lost_or_applied_twice() {
    let env = TestEnv::new("policy_paths").await;
    let config = config(&env, &["accounts"], false);
    let daemon = start_instance(&env, &config, DAEMON, |_| true).await;
    common::wait_until_tailing(&env, "accounts").await;
    insert(&env, "a", 1, 3).await;
    wait_applied(&env, "accounts", "a", 3).await;

    // An unknown code on the read model's update: the worker counts it, pauses, re-opens
    // from its position, and applies the events once.
    fail_point(
        &env,
        doc! {"times": 2}.into(),
        doc! {"failCommands": ["update"], "errorCode": 2, "appName": DAEMON,
        "namespace": namespace(&env, "accounts")},
    )
    .await;
    insert(&env, "a", 4, 6).await;
    wait_applied(&env, "accounts", "a", 6).await;
    let by_reason = daemon.worker("accounts").restarts_by_reason();
    assert!(
        by_reason.get("server_error_2").is_some_and(|n| *n >= 1),
        "{by_reason:?}"
    );

    // A labelled getMore error: the driver resumes the stream; the daemon does not re-open.
    let before = restarts(&daemon, "accounts");
    let recoveries = daemon.worker("accounts").snapshot().history_lost_recoveries;
    fail_point(
        &env,
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["getMore"], "errorCode": 2, "appName": DAEMON,
        "errorLabels": ["ResumableChangeStreamError"]},
    )
    .await;
    insert(&env, "a", 7, 9).await;
    wait_applied(&env, "accounts", "a", 9).await;
    assert_eq!(restarts(&daemon, "accounts"), before, "the driver resumed");
    assert_eq!(
        daemon.worker("accounts").snapshot().history_lost_recoveries,
        recoveries
    );

    // A dropped connection on the read model's update: retried in place.
    fail_point(
        &env,
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["update"], "closeConnection": true, "appName": DAEMON,
        "namespace": namespace(&env, "accounts")},
    )
    .await;
    insert(&env, "a", 10, 12).await;
    wait_applied(&env, "accounts", "a", 12).await;
    assert_eq!(restarts(&daemon, "accounts"), before, "retried in place");

    // Unauthorized on the checkpoint write: the worker stops at once, with its reason.
    fail_point(
        &env,
        "alwaysOn".into(),
        doc! {"failCommands": ["update"], "errorCode": 13, "appName": DAEMON,
        "namespace": namespace(&env, "projector_checkpoints")},
    )
    .await;
    insert(&env, "a", 13, 15).await;
    let stats = daemon.worker("accounts").clone();
    eventually("the worker stopped", WAIT, || async {
        stats.stopped() == Some(StopReason::Unauthorized)
    })
    .await;
    let report = daemon.handle.await.unwrap();
    let (_, result) = &report.results[0];
    assert_eq!(
        result.as_ref().err().map(|e| e.reason),
        Some(StopReason::Unauthorized),
        "{report:?}"
    );
    assert!(stats.last_error().unwrap().contains("projection stopped"));
    fail_point(&env, "off".into(), doc! {}).await;

    // Privilege back: a restart applies what is left, exactly once.
    insert(&env, "a", 16, 18).await;
    let restarted = start_instance(&env, &config, DAEMON, |_| true).await;
    wait_applied(&env, "accounts", "a", 18).await;
    restarted.stop().await;
    assert_eq!(seen(&env, "a").await, (1..=18).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_refusing_every_update_stops_that_worker_in_bounded_time_and_loses_nothing() {
    log();
    let env = TestEnv::new("policy_refused").await;
    let config = config(&env, &["stubborn", "ledger"], false);
    let daemon = start_instance(&env, &config, DAEMON, |_| true).await;
    let monitor = Monitor::new(&config, &daemon.client, daemon.stats.clone());
    common::wait_until_tailing(&env, "stubborn").await;
    common::wait_until_tailing(&env, "ledger").await;
    // Every update of the stubborn read model is refused with BadValue, for as long as it takes.
    fail_point(
        &env,
        "alwaysOn".into(),
        doc! {"failCommands": ["update"], "errorCode": 2, "appName": DAEMON,
        "namespace": namespace(&env, "stubborn")},
    )
    .await;
    insert(&env, "s", 1, 5).await;
    let stubborn = daemon.worker("stubborn").clone();
    eventually("the stubborn worker stopped", WAIT, || async {
        stubborn.stopped() == Some(StopReason::RetriesExhausted)
    })
    .await;
    // The other projection went on.
    wait_applied(&env, "ledger", "s", 5).await;
    // Bounded: three retries, each after a pause, then the stop.
    let by_reason = stubborn.restarts_by_reason();
    assert_eq!(by_reason.get("server_error_2"), Some(&3), "{by_reason:?}");
    let lines = log_lines("stubborn");
    assert!(
        (4..=12).contains(&lines),
        "{lines} log lines about the stubborn worker"
    );
    // Visible in /status and the metric.
    let status = monitor.status();
    let entry = status["projections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "stubborn")
        .unwrap()
        .clone();
    assert_eq!(entry["stopped"]["reason"], "retries_exhausted", "{entry}");
    assert!(monitor.render().contains(
        r#"mongo_projector_worker_stopped{projection="stubborn",reason="retries_exhausted"} 1"#
    ));
    let (ready, problems) = monitor.readiness();
    assert!(!ready && problems.iter().any(|p| p.contains("stubborn: stopped")));
    let (live, _) = monitor.liveness();
    assert!(live, "a stopped worker is not a stalled one");
    // Nothing more is logged once stopped: the worker is not retrying any more.
    insert(&env, "s", 6, 6).await;
    wait_applied(&env, "ledger", "s", 6).await;
    assert_eq!(log_lines("stubborn"), lines);
    daemon.stop_allowing_failures().await;

    // The fault is over: a restart applies everything, exactly once.
    fail_point(&env, "off".into(), doc! {}).await;
    let restarted = start_instance(&env, &config, DAEMON, |_| true).await;
    wait_applied(&env, "stubborn", "s", 6).await;
    restarted.stop().await;
    let recorded = env
        .db
        .collection::<Document>("stubborn")
        .find_one(doc! {"_id": "s"})
        .await
        .unwrap()
        .unwrap();
    let seen: Vec<i64> = recorded
        .get_array("seen")
        .unwrap()
        .iter()
        .filter_map(bson::Bson::as_i64)
        .collect();
    assert_eq!(seen, (1..=6).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_checkpoint_claim_backs_off_and_stops_instead_of_spinning() {
    let env = TestEnv::new("policy_claim").await;
    let config = config(&env, &["claimed"], true);
    // The lease can be taken, but its checkpoint can never be claimed.
    fail_point(
        &env,
        "alwaysOn".into(),
        doc! {"failCommands": ["update"], "errorCode": 2, "appName": DAEMON,
        "namespace": namespace(&env, "projector_checkpoints")},
    )
    .await;
    let daemon = start_instance(&env, &config, DAEMON, |_| true).await;
    let stats = daemon.worker("claimed").clone();
    eventually("the worker stopped", WAIT, || async {
        stats.stopped() == Some(StopReason::RetriesExhausted)
    })
    .await;
    // One acquisition per attempt: the first, then one after each of the three pauses.
    let acquisitions = stats
        .lease
        .acquisitions
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(acquisitions, 4);
    assert!(stats.last_error().unwrap().contains("claim"));
    daemon.stop_allowing_failures().await;
    fail_point(&env, "off".into(), doc! {}).await;
}
