//! Leases and fenced checkpoints over the wire: the lease state machine, checkpoint writes
//! refused for an older epoch, and several daemon instances sharing one server (one active
//! worker per projection, takeover after a crash or a pause, restart of every instance).
//!
//! Runs against the embedded `mongo-sim`, or the replica set named by `MONGODB_URI`.

mod common;

use bson::doc;
use common::replica::{Replica, leased_config, start_replica};
use common::{
    TestEnv, event, eventually, fail_point, seen, stored_document, stored_sequence,
    wait_until_tailing,
};
use mongo_projector::config::Config;
use mongo_projector::error::StoreError;
use mongo_projector::ops::metrics::Monitor;
use mongo_projector::store::checkpoint::{Checkpoint, CheckpointStore};
use mongo_projector::store::lease::{LeaseStore, Renewal};
use mongodb::change_stream::event::ResumeToken;
use std::sync::atomic::Ordering;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// A resume token the server really issued (a token is opaque; tests must not forge one).
async fn tokens(env: &TestEnv, n: usize) -> Vec<ResumeToken> {
    let mut stream = env.events().watch().await.unwrap();
    for i in 0..n {
        env.events()
            .insert_one(doc! {"_id": i as i64})
            .await
            .unwrap();
    }
    let mut out = Vec::new();
    while out.len() < n {
        if stream.next_if_any().await.unwrap().is_some() {
            out.push(stream.resume_token().unwrap());
        }
    }
    out
}

fn checkpoint(token: &ResumeToken, handled: i64) -> Checkpoint {
    Checkpoint::new(token.clone(), handled)
}

#[tokio::test]
async fn a_lease_has_one_holder_until_it_expires_or_is_released() {
    let env = TestEnv::new("lease_state").await;
    let store = LeaseStore::new(&env.db, "projector_leases");
    let ttl = Duration::from_secs(30);

    let a = store
        .try_acquire("w", "a", ttl)
        .await
        .unwrap()
        .expect("free");
    assert_eq!(a.epoch, 1);
    assert_eq!(store.try_acquire("w", "b", ttl).await.unwrap(), None);
    // Taking our own lease again renews it and keeps the epoch.
    let again = store.try_acquire("w", "a", ttl).await.unwrap().unwrap();
    assert_eq!(again.epoch, 1);
    assert!(store.renew(&a, ttl).await.unwrap());

    store.release(&a).await.unwrap();
    let state = store.current("w").await.unwrap().unwrap();
    assert_eq!((state.holder, state.epoch), (None, 1));
    assert!(
        !store.renew(&a, ttl).await.unwrap(),
        "a released lease is lost"
    );
    let b = store
        .try_acquire("w", "b", ttl)
        .await
        .unwrap()
        .expect("released");
    assert_eq!(b.epoch, 2);

    // An expired lease can be taken by another; the former holder's renewal then fails.
    let short = store
        .try_acquire("x", "a", Duration::from_millis(200))
        .await
        .unwrap()
        .unwrap();
    let taken = std::sync::Arc::new(std::sync::Mutex::new(None));
    eventually("the short lease expires", WAIT, || {
        let (store, taken) = (store.clone(), taken.clone());
        async move {
            let lease = store.try_acquire("x", "b", ttl).await.unwrap();
            let got = lease.is_some();
            *taken.lock().unwrap() = lease;
            got
        }
    })
    .await;
    let taken = taken.lock().unwrap().clone().unwrap();
    assert_eq!(taken.epoch, short.epoch + 1);
    assert_eq!(store.renewal(&short, ttl).await.unwrap(), Renewal::Lost);
}

#[tokio::test]
async fn a_handover_request_reserves_the_lease_for_the_requester() {
    let env = TestEnv::new("lease_handover").await;
    let store = LeaseStore::new(&env.db, "projector_leases");
    let ttl = Duration::from_secs(30);
    let a = store.try_acquire("w", "a", ttl).await.unwrap().unwrap();

    store.request_handover("w", "rebuild", ttl).await.unwrap();
    assert_eq!(
        store.renewal(&a, ttl).await.unwrap(),
        Renewal::HandoverRequested
    );
    store.release(&a).await.unwrap();
    // Neither the former holder nor a third instance may take it while the request stands.
    assert_eq!(store.try_acquire("w", "a", ttl).await.unwrap(), None);
    assert_eq!(store.try_acquire("w", "c", ttl).await.unwrap(), None);
    let r = store
        .try_acquire("w", "rebuild", ttl)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.epoch, a.epoch + 1);
    assert!(store.renew(&r, ttl).await.unwrap(), "the requester renews");

    store.release(&r).await.unwrap();
    store.clear_handover("w", "rebuild").await.unwrap();
    let state = store.current("w").await.unwrap().unwrap();
    assert_eq!(state.handover_to, None);
    assert!(store.try_acquire("w", "a", ttl).await.unwrap().is_some());
}

#[tokio::test]
async fn a_handover_request_expires_unless_renewed() {
    let env = TestEnv::new("lease_handover_expiry").await;
    let store = LeaseStore::new(&env.db, "projector_leases");
    let ttl = Duration::from_secs(30);
    let a = store.try_acquire("w", "a", ttl).await.unwrap().unwrap();
    store
        .request_handover("w", "rebuild", Duration::from_millis(200))
        .await
        .unwrap();
    eventually("the handover request expires", WAIT, || {
        let store = store.clone();
        let a = a.clone();
        async move { store.renewal(&a, ttl).await.unwrap() == Renewal::Renewed }
    })
    .await;
}

#[tokio::test]
async fn a_checkpoint_write_with_an_older_epoch_is_refused() {
    let env = TestEnv::new("fenced_checkpoint").await;
    let store = CheckpointStore::new(&env.db, "projector_checkpoints");
    let t = tokens(&env, 3).await;

    store.save("w", &checkpoint(&t[0], 1), 1).await.unwrap();
    // A new holder claims the checkpoint: the position stays, the epoch moves.
    store.claim("w", 2).await.unwrap();
    assert_eq!(store.epoch("w").await.unwrap(), Some(2));
    assert_eq!(store.load("w").await.unwrap().unwrap().token, t[0]);

    // The former holder's late write is refused and moves nothing.
    let late = store.save("w", &checkpoint(&t[1], 2), 1).await;
    assert!(matches!(late, Err(StoreError::Fenced(_))), "{late:?}");
    assert_eq!(store.load("w").await.unwrap().unwrap().token, t[0]);
    assert!(matches!(
        store.claim("w", 1).await,
        Err(StoreError::Fenced(_))
    ));

    store.save("w", &checkpoint(&t[2], 3), 2).await.unwrap();
    let stored = store.load("w").await.unwrap().unwrap();
    assert_eq!((stored.token, stored.events_handled), (t[2].clone(), 3));
}

#[tokio::test]
async fn a_claimed_checkpoint_without_a_position_loads_as_none() {
    let env = TestEnv::new("claimed_checkpoint").await;
    let store = CheckpointStore::new(&env.db, "projector_checkpoints");
    store.claim("w", 1).await.unwrap();
    assert_eq!(store.load("w").await.unwrap(), None);
    // Reset keeps the epoch: an older holder stays fenced after an operator reset.
    let t = tokens(&env, 1).await;
    store.save("w", &checkpoint(&t[0], 1), 1).await.unwrap();
    assert!(store.reset("w").await.unwrap());
    assert_eq!(store.load("w").await.unwrap(), None);
    assert_eq!(store.epoch("w").await.unwrap(), Some(1));
}

// ---------------------------------------------------------------------------------------
// Several daemon instances sharing one server (`common::replica`).

/// Inserts events `from..=to` of each aggregate, interleaved.
async fn insert(env: &TestEnv, aggregates: &[&str], from: i64, to: i64) {
    let mut batch = Vec::new();
    for s in from..=to {
        for a in aggregates {
            batch.push(event(a, s, "A", doc! {}));
        }
    }
    env.events().insert_many(batch).await.unwrap();
}

async fn wait_until_applied(env: &TestEnv, aggregates: &[&str], upto: i64) {
    for a in aggregates {
        eventually(&format!("{a} at {upto}"), WAIT, || async {
            stored_sequence(env, a).await == Some(upto)
        })
        .await;
    }
}

/// The read model is the in-order fold: every sequence applied exactly once, in order.
async fn assert_folded(env: &TestEnv, aggregates: &[&str], upto: i64) {
    for a in aggregates {
        assert_eq!(seen(env, a).await, (1..=upto).collect::<Vec<_>>(), "{a}");
        let d = stored_document(env, a).await.unwrap();
        assert_eq!(d.get_i64("applications").unwrap(), upto, "{a}");
    }
}

/// Waits until `expected` is the only active replica and the lease names it.
async fn wait_until_active(env: &TestEnv, replicas: &[&Replica], expected: &str) {
    let leases = LeaseStore::new(&env.db, "projector_leases");
    eventually(&format!("{expected} the only active replica"), WAIT, || {
        let leases = leases.clone();
        let active: Vec<String> = replicas
            .iter()
            .filter(|r| r.holds("accounts"))
            .map(|r| r.holder.clone())
            .collect();
        async move {
            let current = leases.current("accounts").await.unwrap();
            active == [expected] && current.and_then(|c| c.holder).as_deref() == Some(expected)
        }
    })
    .await;
}

/// Waits until exactly one replica is active and the lease names it; returns its holder.
async fn wait_for_holder(env: &TestEnv, replicas: &[&Replica]) -> String {
    let leases = LeaseStore::new(&env.db, "projector_leases");
    let holder = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    eventually("one replica active", WAIT, || {
        let (leases, holder) = (leases.clone(), holder.clone());
        let active: Vec<String> = replicas
            .iter()
            .filter(|r| r.holds("accounts"))
            .map(|r| r.holder.clone())
            .collect();
        async move {
            let current = leases.current("accounts").await.unwrap();
            match (active.as_slice(), current.and_then(|c| c.holder)) {
                ([one], Some(h)) if *one == h => {
                    *holder.lock().unwrap() = h;
                    true
                }
                _ => false,
            }
        }
    })
    .await;
    holder.lock().unwrap().clone()
}

const AGGREGATES: &[&str] = &["a", "b", "c", "d"];

/// Starts the one replica `holder` and waits until it holds the lease and tails the events.
async fn start_sole_replica(env: &TestEnv, config: &Config, holder: &str) -> Replica {
    let replica = start_replica(env, config, holder).await;
    assert_eq!(wait_for_holder(env, &[&replica]).await, holder);
    wait_until_tailing(env, "accounts").await;
    replica
}

/// Inserts events `from..=to` of every aggregate and waits until they are applied.
async fn insert_and_wait(env: &TestEnv, from: i64, to: i64) {
    insert(env, AGGREGATES, from, to).await;
    wait_until_applied(env, AGGREGATES, to).await;
}

/// Inserts events `from..=to` of every aggregate, waits until they are applied and checks
/// the read model is their in-order fold.
async fn insert_and_check_folded(env: &TestEnv, from: i64, to: i64) {
    insert_and_wait(env, from, to).await;
    assert_folded(env, AGGREGATES, to).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_instances_one_is_active_and_events_are_applied_once_in_order() {
    let env = TestEnv::new("two_instances").await;
    let config = leased_config(&env);
    let a = start_replica(&env, &config, "inst-a").await;
    let b = start_replica(&env, &config, "inst-b").await;
    let holder = wait_for_holder(&env, &[&a, &b]).await;
    wait_until_tailing(&env, "accounts").await;
    let (active, standby) = if holder == a.holder {
        (&a, &b)
    } else {
        (&b, &a)
    };

    insert_and_check_folded(&env, 1, 40).await;
    let standby_stats = standby.worker("accounts").snapshot();
    assert_eq!(
        (standby_stats.received, standby_stats.applied),
        (0, 0),
        "the standby instance read nothing"
    );
    assert_eq!(active.worker("accounts").snapshot().applied, 160);

    // The standby instance is live and ready, and says who holds the lease.
    let monitor = Monitor::new(&config, &standby.client, standby.stats.clone());
    monitor.poll_once(&standby.client).await;
    assert!(monitor.readiness().0, "{:?}", monitor.readiness().1);
    assert!(monitor.liveness().0);
    let status = monitor.status();
    let lease = &status["projections"][0]["lease"];
    assert_eq!(lease["state"], "standby");
    assert_eq!(lease["holder"], holder.as_str());
    assert_eq!(lease["instance"], standby.holder.as_str());
    let metrics = monitor.render();
    assert!(
        metrics.contains("mongo_projector_lease_held{projection=\"accounts\"} 0"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("mongo_projector_lag_seconds{"),
        "a standby worker has no lag of its own: {metrics}"
    );
    let on_active = Monitor::new(&config, &active.client, active.stats.clone());
    let status = on_active.status();
    let lease = &status["projections"][0]["lease"];
    let current = LeaseStore::new(&env.db, "projector_leases")
        .current("accounts")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lease["state"], "active");
    assert_eq!(lease["epoch"], current.epoch);
    assert!(
        on_active
            .render()
            .contains("mongo_projector_lease_held{projection=\"accounts\"} 1")
    );

    // A graceful stop releases the lease: the standby instance takes over without waiting
    // for the ttl, and goes on from the final checkpoint.
    let (active, standby) = if holder == a.holder { (a, b) } else { (b, a) };
    active.stop().await;
    let leases = LeaseStore::new(&env.db, "projector_leases");
    let after = leases.current("accounts").await.unwrap().unwrap();
    assert_ne!(after.holder.as_deref(), Some(holder.as_str()), "released");
    wait_until_active(&env, &[&standby], &standby.holder).await;
    insert_and_check_folded(&env, 41, 50).await;
    assert_eq!(standby.worker("accounts").snapshot().received, 40);
    standby.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holder_hands_its_lease_over_on_request() {
    let env = TestEnv::new("handover").await;
    let config = leased_config(&env);
    let a = start_sole_replica(&env, &config, "inst-a").await;
    insert_and_wait(&env, 1, 10).await;

    let leases = LeaseStore::new(&env.db, "projector_leases");
    let ttl = Duration::from_secs(60);
    leases
        .request_handover("accounts", "rebuild", ttl)
        .await
        .unwrap();
    eventually("A stops and releases", WAIT, || async {
        !a.holds("accounts")
            && leases
                .current("accounts")
                .await
                .unwrap()
                .unwrap()
                .holder
                .is_none()
    })
    .await;
    let taken = leases
        .try_acquire("accounts", "rebuild", ttl)
        .await
        .unwrap()
        .expect("reserved for the requester");
    // A's final checkpoint covers everything it applied.
    let checkpoints = CheckpointStore::new(&env.db, "projector_checkpoints");
    assert_eq!(
        checkpoints
            .load("accounts")
            .await
            .unwrap()
            .unwrap()
            .events_handled,
        40
    );
    leases.release(&taken).await.unwrap();
    leases.clear_handover("accounts", "rebuild").await.unwrap();

    wait_until_active(&env, &[&a], "inst-a").await;
    let back = leases.current("accounts").await.unwrap().unwrap();
    assert_eq!(back.epoch, taken.epoch + 1);
    insert_and_check_folded(&env, 11, 20).await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_lease_documents_do_not_lock_the_workers_out() {
    let env = TestEnv::new("lease_docs_lost").await;
    let config = leased_config(&env);
    // Checkpoints fenced at epoch 7, but no lease document (its collection was dropped).
    let checkpoints = CheckpointStore::new(&env.db, "projector_checkpoints");
    checkpoints.claim("accounts", 7).await.unwrap();
    let a = start_sole_replica(&env, &config, "inst-a").await;
    let leases = LeaseStore::new(&env.db, "projector_leases");
    let lease = leases.current("accounts").await.unwrap().unwrap();
    assert_eq!(lease.epoch, 8);
    assert_eq!(checkpoints.epoch("accounts").await.unwrap(), Some(8));
    insert_and_check_folded(&env, 1, 10).await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_holder_dies_another_instance_takes_over_without_loss() {
    let env = TestEnv::new("holder_dies").await;
    let mut config = leased_config(&env);
    config.checkpoints.every_events = 7; // the crash lands between checkpoints
    config.checkpoints.every = Duration::from_secs(3600);
    config.source.batch_size = 5;
    let a = start_sole_replica(&env, &config, "inst-a").await;
    let b = start_replica(&env, &config, "inst-b").await;
    let leases = LeaseStore::new(&env.db, "projector_leases");
    let first = leases.current("accounts").await.unwrap().unwrap();

    insert(&env, AGGREGATES, 1, 100).await;
    eventually("some events applied", WAIT, || async {
        stored_sequence(&env, "a").await.unwrap_or(0) >= 10
    })
    .await;
    a.kill().await; // no final checkpoint, no release: the lease has to expire
    insert(&env, AGGREGATES, 101, 120).await;

    wait_until_active(&env, &[&b], "inst-b").await;
    wait_until_applied(&env, AGGREGATES, 120).await;
    assert_folded(&env, AGGREGATES, 120).await;
    let now = leases.current("accounts").await.unwrap().unwrap();
    assert_eq!(now.epoch, first.epoch + 1);
    let checkpoints = CheckpointStore::new(&env.db, "projector_checkpoints");
    assert_eq!(
        checkpoints.epoch("accounts").await.unwrap(),
        Some(now.epoch)
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_holder_is_fenced_and_cannot_move_the_checkpoint_back() {
    let env = TestEnv::new("holder_paused").await;
    let config = leased_config(&env);
    let a = start_sole_replica(&env, &config, "inst-a").await;
    insert_and_wait(&env, 1, 20).await;
    let b = start_replica(&env, &config, "inst-b").await;
    let leases = LeaseStore::new(&env.db, "projector_leases");
    let first = leases.current("accounts").await.unwrap().unwrap();

    // Every update of instance A (its lease renewals, read-model writes and checkpoint
    // writes) stalls far past its 2 s lease. Manual: "failCommand" in the server's
    // fail points (blockConnection, blockTimeMS, appName).
    fail_point(
        &env,
        "alwaysOn".into(),
        doc! {
            "failCommands": ["update", "findAndModify"],
            "blockConnection": true,
            "blockTimeMS": 5000,
            "appName": "inst-a",
        },
    )
    .await;
    insert(&env, AGGREGATES, 21, 40).await;

    wait_until_active(&env, &[&a, &b], "inst-b").await;
    let taken = leases.current("accounts").await.unwrap().unwrap();
    assert_eq!(taken.epoch, first.epoch + 1);
    wait_until_applied(&env, AGGREGATES, 40).await;
    fail_point(&env, "off".into(), doc! {}).await;

    // A's stalled writes reach the server late: its checkpoint write is refused.
    let a_stats = a.worker("accounts").clone();
    eventually("A's late checkpoint write refused", WAIT, || async {
        a_stats.checkpoint_fenced.load(Ordering::Relaxed) >= 1
    })
    .await;
    assert_eq!(a_stats.lease.losses.load(Ordering::Relaxed), 1);
    let checkpoints = CheckpointStore::new(&env.db, "projector_checkpoints");
    assert_eq!(
        checkpoints.epoch("accounts").await.unwrap(),
        Some(taken.epoch)
    );

    // B goes on from its own position; nothing was applied twice.
    insert_and_check_folded(&env, 41, 50).await;
    assert!(b.holds("accounts"));
    b.stop().await;
    a.stop().await;
    let stored = checkpoints.load("accounts").await.unwrap().unwrap();
    assert!(stored.events_handled >= 200, "{stored:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_restarted_continue_from_the_checkpoint() {
    let env = TestEnv::new("three_restart").await;
    let config = leased_config(&env);
    let mut replicas = Vec::new();
    for h in ["inst-a", "inst-b", "inst-c"] {
        replicas.push(start_replica(&env, &config, h).await);
    }
    wait_for_holder(&env, &replicas.iter().collect::<Vec<_>>()).await;
    wait_until_tailing(&env, "accounts").await;
    insert_and_wait(&env, 1, 30).await;
    for r in replicas.drain(..) {
        r.stop().await;
    }
    let checkpoints = CheckpointStore::new(&env.db, "projector_checkpoints");
    let before = checkpoints.load("accounts").await.unwrap().unwrap();
    assert_eq!(before.events_handled, 120);

    insert(&env, AGGREGATES, 31, 60).await;
    for h in ["inst-a2", "inst-b2", "inst-c2"] {
        replicas.push(start_replica(&env, &config, h).await);
    }
    wait_for_holder(&env, &replicas.iter().collect::<Vec<_>>()).await;
    wait_until_applied(&env, AGGREGATES, 60).await;
    assert_folded(&env, AGGREGATES, 60).await;
    let received: u64 = replicas
        .iter()
        .map(|r| r.worker("accounts").snapshot().received)
        .sum();
    let per: Vec<_> = replicas
        .iter()
        .map(|r| {
            let w = r.worker("accounts");
            (
                r.holder.clone(),
                w.snapshot(),
                w.lease.acquisitions.load(Ordering::Relaxed),
                w.lease.losses.load(Ordering::Relaxed),
            )
        })
        .collect();
    assert_eq!(
        received, 120,
        "continued from the checkpoint, not the beginning: {per:#?}"
    );
    for r in replicas {
        r.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_the_leases_fairly() {
    let env = TestEnv::new("fair_share").await;
    let mut config = leased_config(&env);
    let mut second = config.projections[0].clone();
    second.name = "accounts2".into();
    second.target = "accounts2".into();
    second.parking.collection = "accounts2_parked".into();
    config.projections.push(second);

    let a = start_replica(&env, &config, "inst-a").await;
    eventually("A holds both leases", WAIT, || async { a.held() == 2 }).await;
    let b = start_replica(&env, &config, "inst-b").await;
    eventually("one lease each", WAIT, || async {
        a.held() == 1 && b.held() == 1
    })
    .await;
    insert_and_check_folded(&env, 1, 10).await;

    // When B leaves, A takes both again.
    b.stop().await;
    eventually("A holds both leases again", WAIT, || async {
        a.held() == 2
    })
    .await;
    a.stop().await;
}
