//! A projection split into K partitions: K workers, each with its own change-stream filter,
//! catch-up scan, parked sweep and checkpoint, that together apply every event exactly once.
//!
//! - The server's partition filter and the hash computed here agree, for ids of every common
//!   type: against mongod this checks mongo-sim's `$toHashedIndexKey` too.
//! - Three daemon instances, each running one partition: every instance handles exactly its
//!   own aggregates, the union is the in-order fold, each worker has its own checkpoint and
//!   audits its own share.
//! - A parked sweep only sees its partition's entries.
//! - Going from 1 to 3 partitions (stop, reconfigure, restart) loses nothing.
//! - Three replicas under leases take one partition each.

mod common;

use bson::{Bson, Document, doc, oid::ObjectId};
use common::{TestEnv, event, eventually, recording_projection, wait_until_tailing};
use futures_util::TryStreamExt;
use mongo_projector::audit::{Audit, AuditOptions};
use mongo_projector::checkpoint::CheckpointStore;
use mongo_projector::config::{Config, StartFrom};
use mongo_projector::daemon::Daemon;
use mongo_projector::park::ParkedStore;
use mongo_projector::partition::{Partition, workers};
use mongo_projector::stats::StatsSnapshot;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

/// The partition (of `count`) an aggregate id belongs to, from mongod's hash as computed here.
fn partition_of(id: &Bson, count: u32) -> u32 {
    Partition::of_hash(mongo_sim::hasher::hash64(id).unwrap(), count)
}

async fn seen(env: &TestEnv, aggregate: &str) -> Vec<i64> {
    env.accounts()
        .find_one(doc! {"_id": aggregate})
        .await
        .unwrap()
        .and_then(|d| d.get_array("seen").ok().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(Bson::as_i64)
        .collect()
}

/// Events `from..=to` of every aggregate, interleaved across aggregates.
fn interleaved(aggregates: &[String], from: i64, to: i64) -> Vec<Document> {
    (from..=to)
        .flat_map(|seq| aggregates.iter().map(move |a| event(a, seq, "A", doc! {})))
        .collect()
}

/// A daemon running the workers `select` accepts, until `shutdown`; returns its totals.
fn start(
    env: &TestEnv,
    config: &Config,
    shutdown: &CancellationToken,
    select: impl Fn(Option<Partition>) -> bool,
) -> JoinHandle<StatsSnapshot> {
    let daemon = Daemon::with_workers(config, &env.client, shutdown, |w| select(w.partition));
    tokio::spawn(async move {
        let report = daemon.run().await;
        assert!(report.all_ok(), "{:?}", report.results);
        daemon.total()
    })
}

async fn all_at(env: &TestEnv, aggregates: &[String], seq: i64) {
    for a in aggregates {
        eventually(&format!("{a} at {seq}"), WAIT, || async {
            common::stored_sequence(env, a).await == Some(seq)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_filters_split_the_collection_as_the_hash_says() {
    let env = TestEnv::new("partition_filters").await;
    let oid = ObjectId::parse_str("5b2be413c06d924ab26ff9ca").unwrap();
    let mut ids: Vec<Bson> = (0..40).map(|i| Bson::String(format!("acc-{i}"))).collect();
    ids.extend((0..20).map(|i| Bson::Int32(i - 10)));
    ids.extend([
        Bson::Int64(1 << 40),
        Bson::Double(2.5),
        Bson::ObjectId(oid),
        Bson::ObjectId(ObjectId::new()),
    ]);
    let docs: Vec<Document> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| doc! {"_id": n as i64, "aggregateId": id.clone()})
        .collect();
    env.events().insert_many(docs).await.unwrap();
    for count in [2u32, 3, 5] {
        let mut owner: BTreeMap<i64, u32> = BTreeMap::new();
        for index in 0..count {
            let found: Vec<Document> = env
                .events()
                .find(Partition { index, count }.filter("aggregateId"))
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            for d in found {
                let n = d.get_i64("_id").unwrap();
                let id = d.get("aggregateId").unwrap();
                assert_eq!(partition_of(id, count), index, "{id} among {count}");
                assert!(owner.insert(n, index).is_none(), "{id} in two partitions");
            }
        }
        assert_eq!(
            owner.len(),
            ids.len(),
            "every id in one of {count} partitions"
        );
        // Not all in one partition: the hash spreads them.
        let used: BTreeSet<u32> = owner.values().copied().collect();
        assert_eq!(used.len(), count as usize, "{owner:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_apply_their_own_partitions_exactly_once() {
    let env = TestEnv::new("partition_instances").await;
    let mut config = env.config();
    recording_projection(&mut config);
    config.projections[0].partitions = 3;
    // A fixed split of the workers between instances (leases would share them out instead).
    config.leases.enabled = false;
    config.source.lanes = 2;
    config.source.batch_size = 16;
    let aggregates: Vec<String> = (0..36).map(|i| format!("acc-{i}")).collect();
    let per_partition = |index: u32| {
        aggregates
            .iter()
            .filter(|a| partition_of(&Bson::String(a.to_string()), 3) == index)
            .count() as u64
    };
    // Stored before the start: each worker's catch-up scan must take only its share.
    env.events()
        .insert_many(interleaved(&aggregates, 1, 5))
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let instances: Vec<JoinHandle<StatsSnapshot>> = (0..3u32)
        .map(|i| {
            start(&env, &config, &shutdown, move |p| {
                p.map(|p| p.index) == Some(i)
            })
        })
        .collect();
    for i in 0..3 {
        wait_until_tailing(&env, &format!("accounts/p{i}of3")).await;
    }
    // Then through the change streams, in several inserts.
    for seq in 6..=12 {
        env.events()
            .insert_many(interleaved(&aggregates, seq, seq))
            .await
            .unwrap();
    }
    all_at(&env, &aggregates, 12).await;
    shutdown.cancel();
    let mut totals = Vec::new();
    for handle in instances {
        totals.push(handle.await.unwrap());
    }
    for a in &aggregates {
        assert_eq!(seen(&env, a).await, (1..=12).collect::<Vec<_>>(), "{a}");
    }
    for (i, stats) in totals.iter().enumerate() {
        let mine = per_partition(i as u32);
        assert!(mine > 0, "partition {i} has aggregates");
        assert_eq!(stats.received, 7 * mine, "partition {i}: {stats:?}");
        assert_eq!(stats.applied, 12 * mine, "partition {i}: {stats:?}");
        assert_eq!(stats.duplicates, 0, "partition {i}: {stats:?}");
    }
    let checkpoints = CheckpointStore::new(&env.db, "projector_checkpoints");
    for i in 0..3 {
        let name = format!("accounts/p{i}of3");
        assert!(checkpoints.load(&name).await.unwrap().is_some(), "{name}");
    }
    assert!(checkpoints.load("accounts").await.unwrap().is_none());
    // Each worker's drift audit checks its own share, and finds nothing.
    for worker in workers(&config.projections[0]) {
        let index = worker.partition.unwrap().index;
        let report = Audit::new(std::sync::Arc::new(worker), &env.db)
            .run(AuditOptions {
                examples: 5,
                repair: false,
                settle: Duration::ZERO,
            })
            .await
            .unwrap();
        assert_eq!(report.checked, per_partition(index), "partition {index}");
        assert_eq!(report.drifted(), 0, "partition {index}: {report:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_sweep_sees_only_its_partition() {
    let env = TestEnv::new("partition_parked").await;
    let mut config = env.config();
    config.projections[0].partitions = 3;
    let past = bson::DateTime::from_millis(0);
    let aggregates: Vec<String> = (0..30).map(|i| format!("p-{i}")).collect();
    let entries: Vec<Document> = aggregates
        .iter()
        .map(|a| {
            doc! {
                "_id": {"projection": "accounts", "aggregateId": a, "sequenceNumber": 2i64},
                "projection": "accounts", "aggregateId": a, "sequenceNumber": 2i64,
                "eventType": "A", "event": event(a, 2, "A", doc! {}),
                "state": "parked", "reason": "gap", "detail": "", "attempts": 0i32,
                "firstParkedAt": past, "nextAttemptAt": past,
            }
        })
        .collect();
    env.parked().insert_many(entries).await.unwrap();
    let mut swept = BTreeSet::new();
    for worker in workers(&config.projections[0]) {
        let p = worker.partition.unwrap();
        let store = ParkedStore::for_worker(&env.db, &worker);
        let due = store.due(64).await.unwrap();
        for entry in &due {
            let id = entry.event.get("aggregateId").unwrap();
            assert_eq!(
                partition_of(id, 3),
                p.index,
                "{id} swept by {}",
                worker.name
            );
            assert!(swept.insert(id.as_str().unwrap().to_string()));
        }
        assert_eq!(store.counts().await.unwrap(), (due.len() as u64, 0));
    }
    assert_eq!(swept.len(), aggregates.len());
    // The operator's view (the projection, unpartitioned) still lists them all.
    let all = ParkedStore::new(&env.db, "accounts_parked", "accounts");
    assert_eq!(all.counts().await.unwrap(), (aggregates.len() as u64, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn going_from_one_to_three_partitions_loses_nothing() {
    let env = TestEnv::new("partition_change").await;
    let mut config = env.config();
    recording_projection(&mut config);
    let aggregates: Vec<String> = (0..30).map(|i| format!("k-{i}")).collect();
    let shutdown = CancellationToken::new();
    let before = start(&env, &config, &shutdown, |_| true);
    wait_until_tailing(&env, "accounts").await;
    env.events()
        .insert_many(interleaved(&aggregates, 1, 5))
        .await
        .unwrap();
    all_at(&env, &aggregates, 5).await;
    shutdown.cancel();
    before.await.unwrap();
    // Written while nothing runs: only the old checkpoint covers them.
    env.events()
        .insert_many(interleaved(&aggregates, 6, 10))
        .await
        .unwrap();
    config.projections[0].partitions = 3;
    // "now" would skip 6..=10 if the new workers ignored the old checkpoint.
    config.projections[0].start = StartFrom::Now;
    let shutdown = CancellationToken::new();
    let after = start(&env, &config, &shutdown, |_| true);
    all_at(&env, &aggregates, 10).await;
    env.events()
        .insert_many(interleaved(&aggregates, 11, 12))
        .await
        .unwrap();
    all_at(&env, &aggregates, 12).await;
    shutdown.cancel();
    let stats = after.await.unwrap();
    for a in &aggregates {
        assert_eq!(seen(&env, a).await, (1..=12).collect::<Vec<_>>(), "{a}");
    }
    assert_eq!(stats.applied, 7 * aggregates.len() as u64, "{stats:?}");
    let checkpoints = CheckpointStore::new(&env.db, "projector_checkpoints");
    for i in 0..3 {
        let name = format!("accounts/p{i}of3");
        assert!(checkpoints.load(&name).await.unwrap().is_some(), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_under_leases_take_one_partition_each() {
    use std::sync::atomic::Ordering;
    let env = TestEnv::new("partition_leases").await;
    let mut config = env.config();
    recording_projection(&mut config);
    config.projections[0].partitions = 3;
    config.leases.ttl = Duration::from_secs(2);
    config.leases.renew_every = Duration::from_millis(400);
    let aggregates: Vec<String> = (0..30).map(|i| format!("r-{i}")).collect();
    let mut replicas = Vec::new();
    for holder in ["inst-a", "inst-b", "inst-c"] {
        let mut config = config.clone();
        config.leases.holder = Some(holder.to_string());
        let client = mongodb::Client::with_uri_str(&env.uri).await.unwrap();
        let shutdown = CancellationToken::new();
        let daemon = Daemon::new(&config, &client, &shutdown);
        let stats = daemon.stats();
        let handle = tokio::spawn(async move {
            let report = daemon.run().await;
            assert!(report.all_ok(), "{:?}", report.results);
        });
        replicas.push((client, shutdown, handle, stats));
    }
    let held = |stats: &[(
        String,
        std::sync::Arc<mongo_projector::stats::ProjectionStats>,
    )]| {
        stats
            .iter()
            .filter(|(_, s)| s.lease.held.load(Ordering::Relaxed))
            .map(|(name, _)| name.clone())
            .collect::<Vec<_>>()
    };
    // The fair share of 3 workers among 3 live instances is one each.
    eventually("one partition per replica", WAIT, || async {
        replicas
            .iter()
            .all(|(_, _, _, stats)| held(stats).len() == 1)
    })
    .await;
    let owners: BTreeSet<String> = replicas
        .iter()
        .flat_map(|(_, _, _, stats)| held(stats))
        .collect();
    assert_eq!(owners.len(), 3, "{owners:?}");
    for i in 0..3 {
        wait_until_tailing(&env, &format!("accounts/p{i}of3")).await;
    }
    for seq in 1..=8 {
        env.events()
            .insert_many(interleaved(&aggregates, seq, seq))
            .await
            .unwrap();
    }
    all_at(&env, &aggregates, 8).await;
    for (_, shutdown, handle, _) in replicas {
        shutdown.cancel();
        handle.await.unwrap();
    }
    for a in &aggregates {
        assert_eq!(seen(&env, a).await, (1..=8).collect::<Vec<_>>(), "{a}");
    }
}
