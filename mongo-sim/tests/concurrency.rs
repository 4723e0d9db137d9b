//! Many clients and connections at once: writes from concurrent clients are neither lost nor
//! duplicated, single-document updates are atomic (manual: "Atomicity and Transactions"), and
//! the server serves hundreds of simultaneous connections.

mod common;

use common::{collect, num, poll_until, start};
use futures_util::future::join_all;
use mongodb::IndexModel;
use mongodb::bson::{Document, doc};
use mongodb::options::{IndexOptions, ReturnDocument};
use std::collections::HashSet;
use std::time::Duration;

// Manual: "Unique Indexes" and "insert" — inserts from many clients at once are all applied,
// each exactly once, and a unique index sees every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_clients_insert_without_loss() {
    let env = start("concurrent_inserts").await;
    env.coll("c")
        .create_index(
            IndexModel::builder()
                .keys(doc! {"k": 1})
                .options(IndexOptions::builder().unique(true).build())
                .build(),
        )
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for client_no in 0..10 {
        let client = env.other_client(|_| {}).await;
        let db_name = env.db_name.clone();
        tasks.push(tokio::spawn(async move {
            let coll = client.database(&db_name).collection::<Document>("c");
            for i in 0..50 {
                coll.insert_one(doc! {"k": format!("{client_no}-{i}")})
                    .await
                    .expect("insert");
            }
            coll.insert_many((0..50).map(|i| doc! {"k": format!("{client_no}-m{i}")}))
                .await
                .expect("insert_many");
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let docs = collect(env.coll("c").find(doc! {}).batch_size(97).await.unwrap()).await;
    assert_eq!(docs.len(), 1000);
    let keys: HashSet<String> = docs
        .iter()
        .map(|d| d.get_str("k").unwrap().to_string())
        .collect();
    assert_eq!(keys.len(), 1000);
    let ids: HashSet<String> = docs
        .iter()
        .map(|d| d.get_object_id("_id").unwrap().to_hex())
        .collect();
    assert_eq!(ids.len(), 1000);
}

// Manual: "Atomicity and Transactions" — a single-document write is atomic, so concurrent
// $inc and findAndModify never lose or duplicate an increment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_single_document_updates_are_atomic() {
    let env = start("concurrent_atomic_updates").await;
    env.coll("counters")
        .insert_many(vec![
            doc! {"_id": "inc", "n": 0},
            doc! {"_id": "seq", "n": 0},
        ])
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let coll = env.coll("counters");
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..25 {
                coll.update_one(doc! {"_id": "inc"}, doc! {"$inc": {"n": 1}})
                    .await
                    .unwrap();
                let after = coll
                    .find_one_and_update(doc! {"_id": "seq"}, doc! {"$inc": {"n": 1}})
                    .return_document(ReturnDocument::After)
                    .await
                    .unwrap()
                    .unwrap();
                got.push(after.get_i32("n").unwrap());
            }
            got
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort();
    assert_eq!(all, (1..=200).collect::<Vec<i32>>());
    let inc = env
        .coll("counters")
        .find_one(doc! {"_id": "inc"})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(inc.get_i32("n").unwrap(), 200);
}

// Manual: "getMore" — concurrent cursors are independent: each reader sees the whole
// collection exactly once across its getMores.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cursors_are_independent() {
    let env = start("concurrent_cursors").await;
    env.coll("c")
        .insert_many((0..100).map(|i| doc! {"_id": i}))
        .await
        .unwrap();
    let readers = (0..8).map(|_| {
        let coll = env.coll("c");
        async move {
            let docs = collect(
                coll.find(doc! {})
                    .sort(doc! {"_id": 1})
                    .batch_size(7)
                    .await
                    .unwrap(),
            )
            .await;
            docs.iter()
                .map(|d| d.get_i32("_id").unwrap())
                .collect::<Vec<_>>()
        }
    });
    for ids in join_all(readers).await {
        assert_eq!(ids, (0..100).collect::<Vec<i32>>());
    }
}

// Manual: "serverStatus" (connections.current) and "ping" — 200 connections open at once,
// each answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_connections_answer_ping() {
    let env = start("two_hundred_connections").await;
    let before = env.admin(doc! {"serverStatus": 1}).await;
    let current_before = num(before.get_document("connections").unwrap().get("current"));
    let pool = env
        .other_client(|o| {
            o.max_pool_size = Some(200);
            o.min_pool_size = Some(200);
            // The driver opens at most max_connecting connections at a time (default 2).
            o.max_connecting = Some(200);
        })
        .await;
    pool.database("admin")
        .run_command(doc! {"ping": 1})
        .await
        .unwrap();
    let current = poll_until(Duration::from_secs(30), "200 pooled connections", || {
        let env = &env;
        async move {
            let status = env.admin(doc! {"serverStatus": 1}).await;
            let current = num(status.get_document("connections").unwrap().get("current"));
            (current >= current_before + 200.0).then_some(current)
        }
    })
    .await;
    assert!(current >= 200.0);
    let pings = (0..200).map(|_| {
        let admin = pool.database("admin");
        async move { admin.run_command(doc! {"ping": 1}).await }
    });
    let replies = join_all(pings).await;
    for reply in replies {
        let reply = reply.expect("ping answered");
        assert_eq!(num(reply.get("ok")), 1.0);
    }
}

// Manual: "Change Streams" — every write from concurrent clients appears exactly once, in
// increasing clusterTime order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn change_stream_sees_every_concurrent_write_once() {
    let env = start("concurrent_change_stream").await;
    env.run(doc! {"create": "c"}).await;
    let mut stream = env
        .coll("c")
        .watch()
        .max_await_time(Duration::from_millis(200))
        .await
        .unwrap()
        .with_type::<Document>();
    let mut writers = Vec::new();
    for w in 0..5 {
        let client = env.other_client(|_| {}).await;
        let db_name = env.db_name.clone();
        writers.push(tokio::spawn(async move {
            let coll = client.database(&db_name).collection::<Document>("c");
            for i in 0..20 {
                coll.insert_one(doc! {"_id": format!("{w}-{i}")})
                    .await
                    .unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let mut seen = HashSet::new();
    let mut last = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < 100 {
        match stream.next_if_any().await.unwrap() {
            Some(event) => {
                let id = event
                    .get_document("documentKey")
                    .unwrap()
                    .get_str("_id")
                    .unwrap()
                    .to_string();
                assert!(seen.insert(id.clone()), "event for {id} seen twice");
                let time = event.get_timestamp("clusterTime").unwrap();
                if let Some(prev) = last {
                    assert!(time > prev, "clusterTime increases");
                }
                last = Some(time);
            }
            None => assert!(
                std::time::Instant::now() < deadline,
                "only {} of 100 events",
                seen.len()
            ),
        }
    }
}
