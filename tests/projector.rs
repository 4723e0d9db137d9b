//! The daemon over the wire: in-order projection, redelivery after a crash, healing, parking,
//! dead-lettering, malformed events, history lost, graceful stop, and fail points.
//!
//! Each test runs against the embedded `mongo-sim`, or against the replica set named by
//! `MONGODB_URI` (fail points there need `enableTestCommands`).

mod common;

use bson::{Bson, Document, doc};
use common::{
    TestEnv, documents, event, eventually, fail_point, recording_projection, seen, stored_document,
    stored_sequence, wait_for_sequence, wait_until_tailing,
};
use mongo_projector::cluster::daemon::Daemon;
use mongo_projector::store::checkpoint::{Checkpoint, CheckpointStore};
use mongo_projector::tools::demo::compare_with_fold;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

/// A daemon running in the background of a test.
struct Running {
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<mongo_projector::ops::stats::StatsSnapshot>,
}

fn start(env: &TestEnv, config: &mongo_projector::config::Config) -> Running {
    let shutdown = CancellationToken::new();
    let daemon = Daemon::new(config, &env.client, &shutdown);
    let handle = tokio::spawn(async move {
        let report = daemon.run().await;
        assert!(report.all_ok(), "daemon failed: {:?}", report.results);
        daemon.total()
    });
    Running { shutdown, handle }
}

impl Running {
    async fn stop(self) -> mongo_projector::ops::stats::StatsSnapshot {
        self.shutdown.cancel();
        self.handle.await.expect("daemon task")
    }
}

async fn parked_entries(env: &TestEnv, state: &str) -> Vec<Document> {
    documents(&env.parked(), doc! {"state": state}).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_in_order_are_folded_into_the_read_model() {
    let env = TestEnv::new("in_order").await;
    let config = env.config();
    let running = start(&env, &config);
    let mut events = Vec::new();
    for a in ["acc-1", "acc-2", "acc-3"] {
        events.push(event(
            a,
            1,
            "AccountOpened",
            doc! {"owner": a, "currency": "EUR"},
        ));
        events.push(event(a, 2, "Deposited", doc! {"amount": 100i64}));
        events.push(event(a, 3, "Withdrawn", doc! {"amount": 30i64}));
        events.push(event(a, 4, "Audited", doc! {}));
    }
    env.events().insert_many(events).await.unwrap();
    for a in ["acc-1", "acc-2", "acc-3"] {
        wait_for_sequence(&env, a, 4).await;
    }
    let stats = running.stop().await;
    assert_eq!(
        compare_with_fold(&env.db, "events", "accounts")
            .await
            .unwrap(),
        Vec::<String>::new()
    );
    let account = stored_document(&env, "acc-2").await.unwrap();
    assert_eq!(account.get_i64("balance").unwrap(), 70);
    assert_eq!(account.get_str("status").unwrap(), "open");
    assert_eq!((stats.applied, stats.skipped, stats.parked), (9, 3, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_stream_redelivers_without_applying_twice() {
    let env = TestEnv::new("crash").await;
    let mut config = env.config();
    recording_projection(&mut config);
    config.checkpoints.every_events = 7; // the crash lands between checkpoints
    config.checkpoints.every = Duration::from_secs(3600);
    let shutdown = CancellationToken::new();
    let daemon = Daemon::new(&config, &env.client, &shutdown);
    let crashed = tokio::spawn(async move { daemon.run().await });
    let batch: Vec<Document> = (1..=40).map(|s| event("agg", s, "A", doc! {})).collect();
    env.events().insert_many(batch).await.unwrap();
    eventually("some events applied", WAIT, || async {
        stored_sequence(&env, "agg").await.unwrap_or(0) >= 10
    })
    .await;
    crashed.abort(); // no final checkpoint: whatever followed the last one is redelivered
    let _ = crashed.await;
    let more: Vec<Document> = (41..=60).map(|s| event("agg", s, "A", doc! {})).collect();
    env.events().insert_many(more).await.unwrap();
    let running = start(&env, &config);
    wait_for_sequence(&env, "agg", 60).await;
    running.stop().await;
    assert_eq!(seen(&env, "agg").await, (1..=60).collect::<Vec<_>>());
    let doc = stored_document(&env, "agg").await.unwrap();
    assert_eq!(doc.get_i64("applications").unwrap(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_is_healed_from_the_event_collection() {
    let env = TestEnv::new("heal").await;
    let mut config = env.config();
    recording_projection(&mut config);
    // Position the projection just after event 2 although event 2 was never applied: the stream
    // then delivers 3 first, and 2 must be read back from the event collection.
    let mut watch = env.events().watch().await.unwrap();
    env.events()
        .insert_one(event("h", 1, "A", doc! {}))
        .await
        .unwrap();
    env.events()
        .insert_one(event("h", 2, "A", doc! {}))
        .await
        .unwrap();
    let mut delivered = Vec::new();
    while delivered.len() < 2 {
        if let Some(change) = watch.next_if_any().await.unwrap() {
            delivered.push(change);
        }
    }
    assert_eq!(
        delivered[1]
            .full_document
            .as_ref()
            .unwrap()
            .get_i64("sequenceNumber")
            .unwrap(),
        2
    );
    let token = delivered[1].id.clone();
    env.db
        .collection::<Document>("accounts")
        .insert_one(
            doc! {"_id": "h", "seen": [1i64], "applications": 1i64, "lastSequenceNumber": 1i64},
        )
        .await
        .unwrap();
    CheckpointStore::new(&env.db, "projector_checkpoints")
        .save_unfenced("accounts", &Checkpoint::new(token, 2))
        .await
        .unwrap();
    env.events()
        .insert_one(event("h", 3, "A", doc! {}))
        .await
        .unwrap();
    let running = start(&env, &config);
    wait_for_sequence(&env, "h", 3).await;
    let stats = running.stop().await;
    assert_eq!(seen(&env, "h").await, vec![1, 2, 3]);
    assert_eq!(stats.healed, 1);
    assert_eq!(stats.parked, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_true_gap_is_parked_and_released_when_its_predecessor_arrives() {
    let env = TestEnv::new("park").await;
    let mut config = env.config();
    recording_projection(&mut config);
    let running = start(&env, &config);
    env.events()
        .insert_one(event("p", 1, "A", doc! {}))
        .await
        .unwrap();
    env.events()
        .insert_one(event("p", 3, "A", doc! {}))
        .await
        .unwrap();
    env.events()
        .insert_one(event("p", 4, "B", doc! {}))
        .await
        .unwrap();
    eventually("3 and 4 parked", WAIT, || async {
        parked_entries(&env, "parked").await.len() == 2
    })
    .await;
    assert_eq!(stored_sequence(&env, "p").await, Some(1));
    let entry = &parked_entries(&env, "parked").await[0];
    assert_eq!(entry.get_str("reason").unwrap(), "gap");
    env.events()
        .insert_one(event("p", 2, "A", doc! {}))
        .await
        .unwrap();
    wait_for_sequence(&env, "p", 4).await;
    let stats = running.stop().await;
    assert_eq!(seen(&env, "p").await, vec![1, 2, 3, 4]);
    let left = parked_entries(&env, "parked").await;
    assert!(left.is_empty(), "{left:?} {stats:?}");
    assert_eq!(stats.parked, 2);
    assert_eq!(stats.released, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_never_filled_is_dead_lettered_and_an_operator_can_skip_it() {
    let env = TestEnv::new("dead").await;
    let mut config = env.config();
    recording_projection(&mut config);
    let parking = &mut config.projections[0].parking;
    parking.max_attempts = 3;
    parking.retry_initial = Duration::from_millis(10);
    parking.retry_max = Duration::from_millis(20);
    parking.sweep_every = Duration::from_millis(20);
    let running = start(&env, &config);
    env.events()
        .insert_one(event("d", 1, "A", doc! {}))
        .await
        .unwrap();
    env.events()
        .insert_one(event("d", 3, "A", doc! {}))
        .await
        .unwrap();
    eventually("3 dead-lettered", WAIT, || async {
        parked_entries(&env, "dead").await.len() == 1
    })
    .await;
    let stats = running.stop().await;
    assert!(stats.dead_lettered >= 1);
    let dead = &parked_entries(&env, "dead").await[0];
    assert_eq!(dead.get_i64("sequenceNumber").unwrap(), 3);
    assert!(
        dead.get_str("detail")
            .unwrap()
            .contains("dead-lettered after 3 attempts"),
        "{dead}"
    );

    // The operator gives up on the missing event 2: 3 cannot be skipped before 2 exists in
    // the read model's sequence, so 2 is declared skipped by advancing past it by hand.
    let applier = mongo_projector::pipeline::apply::Applier::new(
        &mongo_projector::model::partition::Worker::whole(std::sync::Arc::new(
            config.projections[0].clone(),
        )),
        &env.db,
        std::sync::Arc::new(Default::default()),
    );
    let entries = applier
        .parked
        .list(Some(&Bson::String("d".into())), 10)
        .await
        .unwrap();
    let refused = applier.skip_parked(&entries[0]).await.unwrap();
    assert!(refused.unwrap_err().contains("resolve sequence 2 first"));
    env.events()
        .insert_one(event("d", 2, "A", doc! {}))
        .await
        .unwrap();
    assert_eq!(applier.parked.retry_now(None).await.unwrap(), 1);
    let running = start(&env, &config);
    wait_for_sequence(&env, "d", 3).await;
    running.stop().await;
    assert_eq!(seen(&env, "d").await, vec![1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_events_are_dead_lettered_with_a_reason_and_the_stream_goes_on() {
    let env = TestEnv::new("malformed").await;
    let config = env.config();
    let running = start(&env, &config);
    env.events()
        .insert_many(vec![
            doc! {"aggregateId": "m", "eventType": "Deposited", "data": {"amount": 1i64}},
            doc! {"aggregateId": 42.5, "sequenceNumber": 1i64, "eventType": "AccountOpened"},
            event(
                "ok",
                1,
                "AccountOpened",
                doc! {"owner": "o", "currency": "EUR"},
            ),
            event("ok", 2, "Deposited", doc! {"amount": "ten"}),
            event("ok", 3, "Deposited", doc! {"amount": 5i64}),
        ])
        .await
        .unwrap();
    eventually("three dead letters", WAIT, || async {
        parked_entries(&env, "dead").await.len() == 3
    })
    .await;
    let stats = running.stop().await;
    let dead = parked_entries(&env, "dead").await;
    let reasons: Vec<String> = dead
        .iter()
        .map(|d| d.get_str("detail").unwrap().to_string())
        .collect();
    assert!(
        reasons.iter().any(|r| r == "missing sequenceNumber"),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("aggregateId has type Double")),
        "{reasons:?}"
    );
    // `$inc` by a string is refused by the server: the event is kept with the server's reason.
    assert!(reasons.iter().any(|r| r.contains("code 14")), "{reasons:?}");
    assert_eq!(stats.malformed, 2);
    assert_eq!(stored_sequence(&env, "ok").await, Some(1));
    // Event 3 waits behind the dead-lettered 2 instead of being applied out of order.
    assert_eq!(parked_entries(&env, "parked").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_lost_is_recovered_from_the_event_collection() {
    let Some(env) = TestEnv::with_small_oplog("history_lost", 64).await else {
        return;
    };
    let mut config = env.config();
    recording_projection(&mut config);
    let running = start(&env, &config);
    env.events()
        .insert_many((1..=5).map(|s| event("x", s, "A", doc! {})))
        .await
        .unwrap();
    wait_for_sequence(&env, "x", 5).await;
    running.stop().await;
    // While the daemon is down, more than the oplog holds is written.
    env.events()
        .insert_many((6..=20).map(|s| event("x", s, "B", doc! {})))
        .await
        .unwrap();
    let noise = env.db.collection::<Document>("noise");
    for i in 0..100 {
        noise.insert_one(doc! {"i": i}).await.unwrap();
    }
    let running = start(&env, &config);
    wait_for_sequence(&env, "x", 20).await;
    env.events()
        .insert_one(event("x", 21, "A", doc! {}))
        .await
        .unwrap();
    wait_for_sequence(&env, "x", 21).await;
    let stats = running.stop().await;
    assert_eq!(stats.history_lost_recoveries, 1);
    assert_eq!(seen(&env, "x").await, (1..=21).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_leaves_a_checkpoint_that_a_restart_continues_from() {
    let env = TestEnv::new("graceful").await;
    let mut config = env.config();
    recording_projection(&mut config);
    config.checkpoints.every_events = 1_000_000;
    config.checkpoints.every = Duration::from_secs(3600);
    let running = start(&env, &config);
    wait_until_tailing(&env, "accounts").await;
    env.events()
        .insert_many((1..=30).map(|s| event("g", s, "A", doc! {})))
        .await
        .unwrap();
    wait_for_sequence(&env, "g", 30).await;
    running.stop().await;
    let checkpoint = CheckpointStore::new(&env.db, "projector_checkpoints")
        .load("accounts")
        .await
        .unwrap()
        .unwrap();
    assert!(checkpoint.events_handled >= 30, "{checkpoint:?}");
    env.events()
        .insert_many((31..=35).map(|s| event("g", s, "A", doc! {})))
        .await
        .unwrap();
    let running = start(&env, &config);
    wait_for_sequence(&env, "g", 35).await;
    let stats = running.stop().await;
    assert_eq!(
        stats.duplicates, 0,
        "a restart after a graceful stop redelivers nothing"
    );
    assert_eq!(stats.applied, 5);
    assert_eq!(seen(&env, "g").await, (1..=35).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_points_on_get_more_update_and_checkpoint_are_survived() {
    let mut env = TestEnv::new("faults").await;
    // ShutdownInProgress (91) below marks the server Unknown until the driver's monitor hears
    // from it again. A 4.4+ server streams hello, so that is when the awaitable hello in
    // progress returns: up to heartbeatFrequencyMS later (10 s by default, and twice per
    // fault here, against a 20 s WAIT). A short heartbeat keeps each fault well inside WAIT.
    let mut options = mongodb::options::ClientOptions::parse(&env.uri)
        .await
        .expect("URI parses");
    options.heartbeat_freq = Some(Duration::from_millis(500));
    env.client = mongodb::Client::with_options(options).expect("client");
    let mut config = env.config();
    recording_projection(&mut config);
    config.checkpoints.every_events = 3;
    let running = start(&env, &config);
    env.events()
        .insert_many((1..=5).map(|s| event("f", s, "A", doc! {})))
        .await
        .unwrap();
    wait_for_sequence(&env, "f", 5).await;

    // A dropped connection on getMore: the driver resumes the stream by itself.
    fail_point(
        &env,
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["getMore"], "closeConnection": true},
    )
    .await;
    env.events()
        .insert_many((6..=10).map(|s| event("f", s, "A", doc! {})))
        .await
        .unwrap();
    wait_for_sequence(&env, "f", 10).await;

    // A non-resumable error on getMore: the daemon re-opens from its position.
    fail_point(
        &env,
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["getMore"], "errorCode": 11601},
    )
    .await;
    env.events()
        .insert_many((11..=15).map(|s| event("f", s, "A", doc! {})))
        .await
        .unwrap();
    wait_for_sequence(&env, "f", 15).await;

    // The guarded update fails twice with a retryable error: retried in place, applied once.
    let ns = format!("{}.accounts", env.db.name());
    fail_point(
        &env,
        doc! {"times": 2}.into(),
        doc! {"failCommands": ["update"], "errorCode": 91, "namespace": ns},
    )
    .await;
    env.events()
        .insert_one(event("f", 16, "A", doc! {}))
        .await
        .unwrap();
    wait_for_sequence(&env, "f", 16).await;

    // The checkpoint write fails: progress continues, the checkpoint catches up later.
    let ns = format!("{}.projector_checkpoints", env.db.name());
    fail_point(
        &env,
        doc! {"times": 2}.into(),
        doc! {"failCommands": ["update"], "errorCode": 91, "namespace": ns},
    )
    .await;
    env.events()
        .insert_many((17..=25).map(|s| event("f", s, "A", doc! {})))
        .await
        .unwrap();
    wait_for_sequence(&env, "f", 25).await;
    let stats = running.stop().await;
    assert!(stats.stream_restarts >= 1, "{stats:?}");
    assert_eq!(seen(&env, "f").await, (1..=25).collect::<Vec<_>>());
    let checkpoint = CheckpointStore::new(&env.db, "projector_checkpoints")
        .load("accounts")
        .await
        .unwrap()
        .unwrap();
    assert!(checkpoint.events_handled >= 25, "{checkpoint:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_workload_folds_exactly() {
    let env = TestEnv::new("demo").await;
    let options = mongo_projector::tools::demo::DemoOptions {
        accounts: 40,
        events: 800,
        writers: 3,
        out_of_order_accounts: 5,
        seed: 11,
        database: Some(env.db.name().to_string()),
    };
    let report = mongo_projector::tools::demo::run_demo(&env.client, &options)
        .await
        .unwrap();
    assert!(report.passed(), "{:?}", report.mismatches);
    assert!(report.events_written >= 800);
    assert_eq!(report.dead_lettered_entries, 1, "the one malformed event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_event_collection_stops_its_projection_and_the_others_go_on() {
    let env = TestEnv::new("invalidate").await;
    let mut config = env.config();
    let mut other = config.projections[0].clone();
    other.name = "mirror".into();
    other.events = "other_events".into();
    other.target = "mirror".into();
    other.parking.collection = "mirror_parked".into();
    config.projections.push(other);
    let shutdown = CancellationToken::new();
    let daemon = Daemon::new(&config, &env.client, &shutdown);
    let stats = daemon.stats();
    let handle = tokio::spawn(async move { daemon.run().await });
    let other_events = env.db.collection::<Document>("other_events");
    other_events
        .insert_one(event(
            "o",
            1,
            "AccountOpened",
            doc! {"owner": "o", "currency": "EUR"},
        ))
        .await
        .unwrap();
    env.events()
        .insert_one(event(
            "a",
            1,
            "AccountOpened",
            doc! {"owner": "a", "currency": "EUR"},
        ))
        .await
        .unwrap();
    wait_for_sequence(&env, "a", 1).await;
    eventually("mirror applied its first event", WAIT, || async {
        env.db
            .collection::<Document>("mirror")
            .count_documents(doc! {})
            .await
            .unwrap()
            == 1
    })
    .await;
    other_events.drop().await.unwrap();
    env.events()
        .insert_one(event("a", 2, "Deposited", doc! {"amount": 3i64}))
        .await
        .unwrap();
    wait_for_sequence(&env, "a", 2).await;
    let mirror = stats[1].1.clone();
    eventually("the mirror projection stopped", WAIT, || async {
        mirror
            .last_error()
            .is_some_and(|e| e.starts_with("projection stopped:"))
    })
    .await;
    shutdown.cancel();
    let report = handle.await.unwrap();
    let (name, result) = &report.results[1];
    assert_eq!(name, "mirror");
    let message = &result.as_ref().unwrap_err().message;
    assert!(message.contains("was dropped or renamed"), "{message}");
    assert!(
        report.results[0].1.is_ok(),
        "the accounts projection went on: {:?}",
        report.results[0]
    );
    assert_eq!(stats[0].1.snapshot().applied, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_projection_keeps_its_token_inside_the_oplog() {
    let Some(env) = TestEnv::with_small_oplog("idle_token", 64).await else {
        return;
    };
    let mut config = env.config();
    recording_projection(&mut config);
    let running = start(&env, &config);
    env.events()
        .insert_one(event("i", 1, "A", doc! {}))
        .await
        .unwrap();
    wait_for_sequence(&env, "i", 1).await;
    // Far more than the oplog holds is written elsewhere while the projection has nothing to do.
    let noise = env.db.collection::<Document>("noise");
    for i in 0..200 {
        noise.insert_one(doc! {"i": i}).await.unwrap();
    }
    let now = env.events().watch().await.unwrap().resume_token().unwrap();
    let data = |t: &mongodb::change_stream::event::ResumeToken| {
        bson::to_bson(t)
            .unwrap()
            .as_document()
            .unwrap()
            .get_str("_data")
            .unwrap()
            .to_string()
    };
    let now = data(&now);
    let store = CheckpointStore::new(&env.db, "projector_checkpoints");
    eventually(
        "the checkpoint follows the post-batch resume token",
        WAIT,
        || async {
            match store.load("accounts").await.unwrap() {
                Some(c) => data(&c.token) >= now,
                None => false,
            }
        },
    )
    .await;
    running.stop().await;
    let running = start(&env, &config);
    env.events()
        .insert_one(event("i", 2, "A", doc! {}))
        .await
        .unwrap();
    wait_for_sequence(&env, "i", 2).await;
    let stats = running.stop().await;
    assert_eq!(
        stats.history_lost_recoveries, 0,
        "the stored token was still in the oplog"
    );
    assert_eq!(seen(&env, "i").await, vec![1, 2]);
}

/// A checkpoint that cannot be read at start-up (a transient error) is read again: starting
/// without it would begin as configured, which for `start = "now"` skips every event written
/// since the checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_unreadable_at_start_is_read_again_not_skipped() {
    let env = TestEnv::new("unreadable_checkpoint").await;
    let mut config = env.config();
    recording_projection(&mut config);
    config.projections[0].start = mongo_projector::config::StartFrom::Now;
    config.leases.enabled = false;
    let first = start(&env, &config);
    wait_until_tailing(&env, "accounts").await;
    env.events()
        .insert_one(event("u", 1, "A", doc! {}))
        .await
        .unwrap();
    wait_for_sequence(&env, "u", 1).await;
    first.stop().await;
    // Written while the daemon is down: only the stored checkpoint covers them.
    env.events()
        .insert_many([event("u", 2, "A", doc! {}), event("v", 1, "A", doc! {})])
        .await
        .unwrap();
    // The restarted daemon's first `find`, the read of its checkpoint, fails (BadValue is
    // not retried by the driver).
    fail_point(
        &env,
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["find"], "errorCode": 2, "appName": "restarted"},
    )
    .await;
    let restarted = common::replica::start_instance(&env, &config, "restarted", |_| true).await;
    wait_for_sequence(&env, "u", 2).await;
    wait_for_sequence(&env, "v", 1).await;
    restarted.stop().await;
    assert_eq!(seen(&env, "u").await, [1, 2]);
    assert_eq!(seen(&env, "v").await, [1]);
}
