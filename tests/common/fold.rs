//! What the two property tests (one event at a time, and batched lanes) share: generated
//! per-aggregate histories with shuffled and duplicated deliveries, the recording projection's
//! applier, and the final check that the read model equals the in-order fold.

use bson::{Bson, Document, doc};
use mongo_projector::pipeline::apply::Applier;
use proptest::prelude::*;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// A runtime and a server shared by every case of one property test binary.
pub struct Shared {
    pub runtime: tokio::runtime::Runtime,
    pub env: super::TestEnv,
}

/// The binary's [`Shared`], created on first use with databases named after `name`.
pub fn shared(name: &str) -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let env = runtime.block_on(super::TestEnv::new(name));
        Shared { runtime, env }
    })
}

/// Histories and how they are delivered.
#[derive(Debug, Clone)]
pub struct Histories {
    /// History length per aggregate.
    pub lengths: Vec<i64>,
    /// Deliveries as (aggregate index, sequence), in delivery order, with duplicates.
    pub deliveries: Vec<(usize, i64)>,
    /// True: every event is in the event collection before the first delivery.
    pub stored_up_front: bool,
}

/// Up to `max_aggregates - 1` aggregates of 1 to `max_length - 1` events, delivered in any
/// order or in the order a fold of the event collection reads them (by aggregate, then
/// sequence: long runs of one aggregate), some more than once.
pub fn histories(max_length: i64, max_aggregates: usize) -> impl Strategy<Value = Histories> {
    prop::collection::vec(1i64..max_length, 1..max_aggregates).prop_flat_map(|lengths| {
        let all: Vec<(usize, i64)> = lengths
            .iter()
            .enumerate()
            .flat_map(|(a, n)| (1..=*n).map(move |s| (a, s)))
            .collect();
        let total = all.len();
        (
            Just(lengths),
            prop_oneof![Just(all.clone()), Just(all).prop_shuffle()],
            prop::collection::vec((0..total, 0..total + 1), 0..total.max(1)),
            any::<bool>(),
        )
            .prop_map(|(lengths, order, dups, stored_up_front)| {
                let mut deliveries = order.clone();
                for (which, at) in dups {
                    let at = at.min(deliveries.len());
                    deliveries.insert(at, order[which]);
                }
                Histories {
                    lengths,
                    deliveries,
                    stored_up_front,
                }
            })
    })
}

impl Histories {
    /// The event document of one delivery (types alternate so both handlers run).
    pub fn event((a, seq): (usize, i64)) -> Document {
        super::event(
            &format!("agg-{a}"),
            seq,
            if seq % 2 == 0 { "A" } else { "B" },
            doc! {},
        )
    }

    /// Stores every event up front when the scenario says so.
    pub async fn store_up_front(&self, db: &mongodb::Database) {
        if !self.stored_up_front {
            return;
        }
        let all: Vec<Document> = self
            .lengths
            .iter()
            .enumerate()
            .flat_map(|(a, n)| (1..=*n).map(move |s| (a, s)))
            .map(Self::event)
            .collect();
        db.collection::<Document>("events")
            .insert_many(all)
            .await
            .unwrap();
    }

    /// Everything has been delivered and stored: retrying what is parked settles every
    /// aggregate, and each then lists exactly `1..=n`, applied once each.
    pub async fn check_fold(
        &self,
        applier: &Applier,
        db: &mongodb::Database,
    ) -> Result<(), TestCaseError> {
        for _ in 0..50 {
            if applier.parked.counts().await.unwrap() == (0, 0) {
                break;
            }
            // As the daemon's sweep does, one aggregate's entries in their lane's order.
            for parked in applier.due_parked().await.unwrap() {
                applier.retry_parked(&parked).await.unwrap();
            }
        }
        prop_assert_eq!(applier.parked.counts().await.unwrap(), (0, 0));
        for (a, n) in self.lengths.iter().enumerate() {
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
        Ok(())
    }
}

/// The recording projection's applier on `db`, retrying parked events at once.
pub fn applier(env: &super::TestEnv, db: &mongodb::Database) -> Applier {
    let mut config = env.config();
    super::recording_projection(&mut config);
    let mut p = config.projections[0].clone();
    p.database = db.name().to_string();
    p.parking.retry_initial = Duration::from_millis(1);
    p.parking.retry_max = Duration::from_millis(1);
    p.parking.max_attempts = 1_000;
    Applier::new(
        &mongo_projector::model::partition::Worker::whole(Arc::new(p)),
        db,
        Arc::new(Default::default()),
    )
}
