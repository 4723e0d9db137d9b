//! Property: for any per-aggregate histories, any interleaving of their deliveries, any
//! duplication of deliveries, events reaching the event collection early or only when
//! delivered, and any restart points, the read model equals the in-order fold.
//!
//! The read model of the recording projection lists every applied sequence number
//! (`seen: [1, 2, ...]`) and counts applications, so "equals the in-order fold" means exactly
//! `seen == [1..=n]` and `applications == n` for every aggregate.

mod common;

use common::fold::{Histories, applier, histories, shared};
use mongo_projector::model::event::decode_event;
use proptest::prelude::*;

/// One generated scenario.
#[derive(Debug, Clone)]
struct Scenario {
    histories: Histories,
    /// Delivery indexes before which the applier is re-created (a restart).
    restarts: Vec<usize>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    histories(7, 4).prop_flat_map(|histories| {
        let total = histories.deliveries.len();
        (Just(histories), prop::collection::vec(0..total + 1, 0..3)).prop_map(
            |(histories, restarts)| Scenario {
                histories,
                restarts,
            },
        )
    })
}

async fn run(scenario: &Scenario, case: u64) -> Result<(), TestCaseError> {
    let env = &shared("property").env;
    let db = env.client.database(&format!("{}_{case}", env.db.name()));
    let events = db.collection::<bson::Document>("events");
    let h = &scenario.histories;
    h.store_up_front(&db).await;
    let mut current = applier(env, &db);
    let mut inserted = std::collections::HashSet::new();
    for (i, delivery) in h.deliveries.iter().enumerate() {
        if scenario.restarts.contains(&i) {
            current = applier(env, &db);
        }
        let document = Histories::event(*delivery);
        if !h.stored_up_front && inserted.insert(*delivery) {
            events.insert_one(document.clone()).await.unwrap();
        }
        let event = decode_event(&document, &current.config.fields).unwrap();
        current.handle(&event).await.unwrap();
    }
    h.check_fold(&current, &db).await?;
    db.drop().await.unwrap();
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn the_read_model_equals_the_in_order_fold(s in scenario()) {
        static CASE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let case = CASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        shared("property").runtime.block_on(run(&s, case))?;
    }
}
