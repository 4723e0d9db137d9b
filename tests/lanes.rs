//! Parallel lanes and batched guarded writes keep every guarantee of the one-at-a-time path.
//!
//! - Property: any histories, any interleaving and duplication of deliveries, cut into batches
//!   of any size and routed by the daemon's dispatcher to several lanes that write
//!   concurrently, with restarts that forget every lane's cache: the read model equals the
//!   in-order fold.
//! - The daemon with many lanes and tiny batches: many aggregates interleaved, a crash between
//!   checkpoints that leaves at most `every_events` applied events beyond the checkpoint, a
//!   restart: every aggregate applied exactly once, in order.

mod common;

use bson::{Document, doc};
use common::fold::{Histories, applier, histories, shared};
use common::{
    TestEnv, event, eventually, recording_projection, seen, stored_sequence, wait_until_tailing,
};
use mongo_projector::cluster::daemon::Daemon;
use mongo_projector::model::event::decode_event;
use mongo_projector::pipeline::apply::Applier;
use mongo_projector::pipeline::dispatcher::Dispatcher;
use mongo_projector::pipeline::lanes::Lanes;
use mongo_projector::store::checkpoint::CheckpointStore;
use proptest::prelude::*;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
struct Scenario {
    histories: Histories,
    /// Sizes of the consecutive batches the deliveries are cut into.
    batch_sizes: Vec<usize>,
    lanes: usize,
    /// Batch indexes before which every lane starts afresh (a restart).
    restarts: Vec<usize>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        histories(8, 6),
        prop::collection::vec(1usize..12, 1..40),
        2usize..4,
        prop::collection::vec(0usize..10, 0..3),
    )
        .prop_map(|(histories, batch_sizes, lanes, restarts)| Scenario {
            histories,
            batch_sizes,
            lanes,
            restarts,
        })
}

async fn run(s: &Scenario, case: u64) -> Result<(), TestCaseError> {
    let env = &shared("lanes_property").env;
    let db = env.client.database(&format!("{}_{case}", env.db.name()));
    let events = db.collection::<Document>("events");
    s.histories.store_up_front(&db).await;
    let shutdown = CancellationToken::new();
    // The daemon's own stages: lanes writing concurrently behind a dispatcher. A restart is a
    // fresh applier and fresh lanes, whose caches remember nothing.
    let stages = |current: &Applier| {
        let lanes = Lanes::spawn(current, s.lanes, &shutdown, Duration::ZERO, Duration::ZERO);
        Dispatcher::<()>::new(lanes, usize::MAX)
    };
    let mut current = applier(env, &db);
    let mut dispatcher = stages(&current);
    let mut inserted = std::collections::HashSet::new();
    let mut rest = &s.histories.deliveries[..];
    let mut batch_no = 0;
    let mut sizes = s.batch_sizes.iter().cycle();
    while !rest.is_empty() {
        if s.restarts.contains(&batch_no) {
            let (watermark, failure) = dispatcher.finish().await;
            prop_assert!(failure.is_none() && watermark.in_flight() == 0);
            current = applier(env, &db);
            dispatcher = stages(&current);
        }
        let size = (*sizes.next().unwrap()).min(rest.len());
        let (batch, tail) = rest.split_at(size);
        rest = tail;
        batch_no += 1;
        for delivery in batch {
            let document = Histories::event(*delivery);
            if !s.histories.stored_up_front && inserted.insert(*delivery) {
                events.insert_one(document.clone()).await.unwrap();
            }
            let e = decode_event(&document, &current.config.fields).unwrap();
            let ticket = dispatcher.issue(());
            dispatcher.route(ticket, e).await.unwrap();
        }
        // The batch ends here: each lane gets what it has, as when nothing more is ready.
        dispatcher.hand_out_partial().await.unwrap();
    }
    let (watermark, failure) = dispatcher.finish().await;
    prop_assert!(failure.is_none(), "{failure:?}");
    prop_assert_eq!(
        watermark.in_flight(),
        0,
        "every event reached its disposition"
    );
    s.histories.check_fold(&current, &db).await?;
    db.drop().await.unwrap();
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn batched_lanes_fold_exactly_like_one_event_at_a_time(s in scenario()) {
        static CASE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let case = CASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        shared("lanes_property").runtime.block_on(run(&s, case))?;
    }
}

/// One batch holding two aggregates' runs of consecutive events, as a fold reads them, where
/// the server refuses a link in the middle of the first run: the links before it are applied,
/// the refused event is dead-lettered and its successors park behind it, and the other
/// aggregate's run, which the refusal stopped the ordered write before, is applied in full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_link_stops_only_its_own_chain() {
    let env = TestEnv::new("refused_link").await;
    let db = env.db.clone();
    let mut applier = applier(&env, &db);
    // `seen` is an array once the first event is applied: `$inc` on it is refused.
    let mut projection = (*applier.config).clone();
    projection.handlers.insert(
        "Poison".to_string(),
        mongo_projector::config::Handler::Operators(doc! {"$inc": {"seen": 1}}),
    );
    applier = Applier::new(
        &mongo_projector::model::partition::Worker::whole(std::sync::Arc::new(projection)),
        &db,
        std::sync::Arc::new(Default::default()),
    );
    let mut documents = Vec::new();
    for seq in 1..=5 {
        let kind = if seq == 3 { "Poison" } else { "A" };
        documents.push(event("agg-a", seq, kind, doc! {}));
    }
    for seq in 1..=3 {
        documents.push(event("agg-b", seq, "B", doc! {}));
    }
    db.collection::<Document>("events")
        .insert_many(documents.clone())
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let lanes = Lanes::spawn(&applier, 1, &shutdown, Duration::ZERO, Duration::ZERO);
    let mut dispatcher = Dispatcher::<()>::new(lanes, usize::MAX);
    for document in &documents {
        let e = decode_event(document, &applier.config.fields).unwrap();
        let ticket = dispatcher.issue(());
        dispatcher.route(ticket, e).await.unwrap();
    }
    dispatcher.hand_out_partial().await.unwrap();
    let (watermark, failure) = dispatcher.finish().await;
    assert!(failure.is_none(), "{failure:?}");
    assert_eq!(
        watermark.in_flight(),
        0,
        "every event reached its disposition"
    );
    let recorded = |id: &'static str| {
        let db = db.clone();
        async move {
            let d = db
                .collection::<Document>("accounts")
                .find_one(doc! {"_id": id})
                .await
                .unwrap()
                .unwrap();
            let seen: Vec<i64> = d
                .get_array("seen")
                .unwrap()
                .iter()
                .filter_map(bson::Bson::as_i64)
                .collect();
            (seen, d.get_i64("lastSequenceNumber").unwrap())
        }
    };
    assert_eq!(recorded("agg-a").await, (vec![1, 2], 2));
    assert_eq!(recorded("agg-b").await, (vec![1, 2, 3], 3));
    // agg-a 3 dead-lettered; 4 and 5 parked behind it.
    assert_eq!(applier.parked.counts().await.unwrap(), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_lanes_and_small_batches_survive_a_crash_exactly_once() {
    let env = TestEnv::new("lanes_crash").await;
    let mut config = env.config();
    recording_projection(&mut config);
    config.source.lanes = 4;
    config.source.batch_size = 7;
    config.checkpoints.every_events = 13;
    config.checkpoints.every = Duration::from_secs(3600);
    let aggregates: Vec<String> = (0..12).map(|i| format!("l{i}")).collect();
    // Round-robin over the aggregates, with one aggregate's long run in the middle so that a
    // batch holds many consecutive events of one aggregate.
    let interleaved = |from: i64, to: i64| -> Vec<Document> {
        let mut out = Vec::new();
        for seq in from..=to {
            for a in &aggregates {
                out.push(event(a, seq, "A", doc! {}));
            }
        }
        out
    };
    let shutdown = CancellationToken::new();
    let daemon = Daemon::new(&config, &env.client, &shutdown);
    let crashed = tokio::spawn(async move { daemon.run().await });
    // Events read by the stream, not by the first start's catch-up scan.
    wait_until_tailing(&env, "accounts").await;
    env.events().insert_many(interleaved(1, 20)).await.unwrap();
    eventually("some events applied", WAIT, || async {
        stored_sequence(&env, "l3").await.unwrap_or(0) >= 5
    })
    .await;
    crashed.abort(); // no final checkpoint: whatever followed the last one is redelivered
    let _ = crashed.await;
    // The crash bound: with 4 lanes of 7-event batches far more could be written at once,
    // but no more than `every_events` events were applied beyond the stored checkpoint.
    let mut applied = 0;
    for a in &aggregates {
        applied += stored_sequence(&env, a).await.unwrap_or(0);
    }
    let checkpoint = CheckpointStore::new(&env.db, "projector_checkpoints")
        .load("accounts")
        .await
        .unwrap()
        .expect("a checkpoint before the crash");
    let redelivered = applied - checkpoint.events_handled;
    assert!(
        (0..=13).contains(&redelivered),
        "{applied} applied, {} checkpointed",
        checkpoint.events_handled
    );
    env.events().insert_many(interleaved(21, 30)).await.unwrap();
    let solo: Vec<Document> = (1..=40).map(|s| event("solo", s, "B", doc! {})).collect();
    env.events().insert_many(solo).await.unwrap();
    let shutdown = CancellationToken::new();
    let daemon = Daemon::new(&config, &env.client, &shutdown);
    let handle = tokio::spawn(async move {
        let report = daemon.run().await;
        assert!(report.all_ok(), "{:?}", report.results);
        daemon.total()
    });
    for a in &aggregates {
        eventually(&format!("{a} at 30"), WAIT, || async {
            stored_sequence(&env, a).await == Some(30)
        })
        .await;
    }
    eventually("solo at 40", WAIT, || async {
        stored_sequence(&env, "solo").await == Some(40)
    })
    .await;
    shutdown.cancel();
    let stats = handle.await.unwrap();
    for a in &aggregates {
        assert_eq!(seen(&env, a).await, (1..=30).collect::<Vec<_>>(), "{a}");
    }
    assert_eq!(seen(&env, "solo").await, (1..=40).collect::<Vec<_>>());
    assert_eq!(stats.parked, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_with_lanes_redelivers_nothing() {
    let env = TestEnv::new("lanes_graceful").await;
    let mut config = env.config();
    recording_projection(&mut config);
    config.source.lanes = 3;
    config.source.batch_size = 5;
    config.checkpoints.every_events = 1_000_000;
    config.checkpoints.every = Duration::from_secs(3600);
    let run = |config: mongo_projector::config::Config| {
        let shutdown = CancellationToken::new();
        let daemon = Daemon::new(&config, &env.client, &shutdown);
        let handle = tokio::spawn(async move {
            let report = daemon.run().await;
            assert!(report.all_ok(), "{:?}", report.results);
            daemon.total()
        });
        (shutdown, handle)
    };
    let (shutdown, handle) = run(config.clone());
    wait_until_tailing(&env, "accounts").await;
    let docs: Vec<Document> = (1..=25)
        .flat_map(|s| (0..6).map(move |a| event(&format!("g{a}"), s, "A", doc! {})))
        .collect();
    env.events().insert_many(docs).await.unwrap();
    for a in 0..6 {
        eventually("all applied", WAIT, || async {
            stored_sequence(&env, &format!("g{a}")).await == Some(25)
        })
        .await;
    }
    shutdown.cancel();
    handle.await.unwrap();
    env.events()
        .insert_many((0..6).map(|a| event(&format!("g{a}"), 26, "A", doc! {})))
        .await
        .unwrap();
    let (shutdown, handle) = run(config);
    for a in 0..6 {
        eventually("26 applied", WAIT, || async {
            stored_sequence(&env, &format!("g{a}")).await == Some(26)
        })
        .await;
    }
    shutdown.cancel();
    let stats = handle.await.unwrap();
    assert_eq!(stats.duplicates, 0, "{stats:?}");
    assert_eq!(stats.applied, 6, "{stats:?}");
}
