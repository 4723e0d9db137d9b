//! Property: for any per-aggregate histories, any interleaving of their deliveries, any
//! duplication of deliveries, events reaching the event collection early or only when
//! delivered, and any restart points, the read model equals the in-order fold.
//!
//! The read model of the recording projection lists every applied sequence number
//! (`seen: [1, 2, ...]`) and counts applications, so "equals the in-order fold" means exactly
//! `seen == [1..=n]` and `applications == n` for every aggregate.

mod common;

use bson::{Bson, Document, doc};
use mongo_projector::apply::Applier;
use mongo_projector::event::decode_event;
use proptest::prelude::*;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

struct Shared {
    runtime: tokio::runtime::Runtime,
    env: common::TestEnv,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let env = runtime.block_on(common::TestEnv::new("property"));
        Shared { runtime, env }
    })
}

/// One generated scenario.
#[derive(Debug, Clone)]
struct Scenario {
    /// History length per aggregate.
    lengths: Vec<i64>,
    /// Deliveries as (aggregate index, sequence), in delivery order, with duplicates.
    deliveries: Vec<(usize, i64)>,
    /// True: every event is in the event collection before the first delivery.
    stored_up_front: bool,
    /// Delivery indexes before which the applier is re-created (a restart).
    restarts: Vec<usize>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    prop::collection::vec(1i64..7, 1..4).prop_flat_map(|lengths| {
        let all: Vec<(usize, i64)> = lengths
            .iter()
            .enumerate()
            .flat_map(|(a, n)| (1..=*n).map(move |s| (a, s)))
            .collect();
        let total = all.len();
        (
            Just(lengths),
            Just(all).prop_shuffle(),
            prop::collection::vec((0..total, 0..total + 1), 0..total.max(1)),
            any::<bool>(),
            prop::collection::vec(0..total + 1, 0..3),
        )
            .prop_map(|(lengths, order, dups, stored_up_front, restarts)| {
                let mut deliveries = order.clone();
                for (which, at) in dups {
                    let at = at.min(deliveries.len());
                    deliveries.insert(at, order[which]);
                }
                Scenario {
                    lengths,
                    deliveries,
                    stored_up_front,
                    restarts,
                }
            })
    })
}

fn applier(env: &common::TestEnv, db: &mongodb::Database) -> Applier {
    let mut config = env.config();
    common::recording_projection(&mut config);
    let mut p = config.projections[0].clone();
    p.database = db.name().to_string();
    p.parking.retry_initial = Duration::from_millis(1);
    p.parking.retry_max = Duration::from_millis(1);
    p.parking.max_attempts = 1_000;
    Applier::new(Arc::new(p), db, Arc::new(Default::default()))
}

async fn run(scenario: &Scenario, case: u64) -> Result<(), TestCaseError> {
    let env = &shared().env;
    let db = env.client.database(&format!("{}_{case}", env.db.name()));
    let events = db.collection::<Document>("events");
    let doc_of = |(a, s): (usize, i64)| {
        common::event(
            &format!("agg-{a}"),
            s,
            if s % 2 == 0 { "A" } else { "B" },
            doc! {},
        )
    };
    if scenario.stored_up_front {
        let all: Vec<Document> = scenario
            .lengths
            .iter()
            .enumerate()
            .flat_map(|(a, n)| (1..=*n).map(move |s| (a, s)))
            .map(doc_of)
            .collect();
        events.insert_many(all).await.unwrap();
    }
    let mut current = applier(env, &db);
    let mut inserted = std::collections::HashSet::new();
    for (i, delivery) in scenario.deliveries.iter().enumerate() {
        if scenario.restarts.contains(&i) {
            current = applier(env, &db);
        }
        let document = doc_of(*delivery);
        if !scenario.stored_up_front && inserted.insert(*delivery) {
            events.insert_one(document.clone()).await.unwrap();
        }
        let event = decode_event(&document, &current.config.fields).unwrap();
        current.handle(&event).await.unwrap();
    }
    // Everything has been delivered and stored: retrying what is parked settles every aggregate.
    for _ in 0..50 {
        if current.parked.counts().await.unwrap() == (0, 0) {
            break;
        }
        current.sweep_parked().await.unwrap();
    }
    prop_assert_eq!(current.parked.counts().await.unwrap(), (0, 0));
    for (a, n) in scenario.lengths.iter().enumerate() {
        let d = db
            .collection::<Document>("accounts")
            .find_one(doc! {"_id": format!("agg-{a}")})
            .await
            .unwrap()
            .unwrap();
        let seen: Vec<i64> = d
            .get_array("seen")
            .unwrap()
            .iter()
            .filter_map(Bson::as_i64)
            .collect();
        prop_assert_eq!(seen, (1..=*n).collect::<Vec<_>>());
        prop_assert_eq!(d.get_i64("applications").unwrap(), *n);
        prop_assert_eq!(d.get_i64("lastSequenceNumber").unwrap(), *n);
    }
    db.drop().await.unwrap();
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn the_read_model_equals_the_in_order_fold(s in scenario()) {
        static CASE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let case = CASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        shared().runtime.block_on(run(&s, case))?;
    }
}
