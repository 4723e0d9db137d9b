//! Leases and fenced checkpoints over the wire: the lease state machine, checkpoint writes
//! refused for an older epoch, and several daemon instances sharing one server (one active
//! worker per projection, takeover after a crash or a pause, restart of every instance).
//!
//! Runs against the embedded `mongo-sim`, or the replica set named by `MONGODB_URI`.

mod common;

use bson::{DateTime, doc};
use common::{TestEnv, eventually};
use mongo_projector::checkpoint::{Checkpoint, CheckpointStore};
use mongo_projector::error::StoreError;
use mongo_projector::lease::{LeaseStore, Renewal};
use mongodb::change_stream::event::ResumeToken;
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
    Checkpoint {
        token: token.clone(),
        cluster_time: None,
        events_handled: handled,
        updated_at: DateTime::now(),
    }
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
