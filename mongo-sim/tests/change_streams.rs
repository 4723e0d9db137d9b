//! Change streams as the projector uses them: events and their fields, resume tokens, post-batch
//! resume tokens, invalidation, resumption by the driver and lost history (manual: "Change
//! Streams", "Change Events"; the drivers' change-streams specification).

mod common;

use common::{TestEnv, error_code, fail_point_turn, num, start, start_sim_only};
use mongo_sim::ServerOptions;
use mongodb::bson::{Bson, Document, Timestamp, doc};
use mongodb::change_stream::ChangeStream;
use mongodb::change_stream::event::ResumeToken;
use mongodb::options::FullDocumentType;
use std::time::{Duration, Instant};

const AWAIT: Duration = Duration::from_millis(200);

/// The next event, polling with short awaits up to a deadline.
async fn next_event(stream: &mut ChangeStream<Document>) -> Document {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Buffered events come first, even after the server closed the cursor.
        match stream.next_if_any().await {
            Ok(Some(event)) => return event,
            Ok(None) => {
                assert!(
                    stream.is_alive(),
                    "change stream closed while waiting for an event"
                );
                assert!(Instant::now() < deadline, "no change event within 10s");
            }
            Err(e) => panic!("change stream failed: {e}"),
        }
    }
}

/// The next error of a stream (the events before it are returned too).
async fn next_error(stream: &mut ChangeStream<Document>) -> (mongodb::error::Error, Vec<Document>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        match stream.next_if_any().await {
            Ok(Some(event)) => seen.push(event),
            Ok(None) => assert!(
                Instant::now() < deadline,
                "no error within 10s; events: {seen:?}"
            ),
            Err(e) => return (e, seen),
        }
    }
}

fn token_doc(event: &Document) -> Document {
    event.get_document("_id").expect("event _id").clone()
}

fn token_data(token: &Document) -> String {
    token
        .get_str("_data")
        .unwrap_or_else(|_| panic!("resume token must be {{_data: hex string}}: {token}"))
        .to_string()
}

fn resume_token(token: &Document) -> ResumeToken {
    let bytes = mongodb::bson::to_vec(token).unwrap();
    mongodb::bson::from_slice(&bytes).expect("resume token from document")
}

fn driver_token(stream: &ChangeStream<Document>) -> Document {
    let token = stream.resume_token().expect("stream has a resume token");
    mongodb::bson::to_document(&token).expect("resume token is a document")
}

fn op(event: &Document) -> &str {
    event.get_str("operationType").expect("operationType")
}

async fn watch_coll(env: &TestEnv, coll: &str) -> ChangeStream<Document> {
    env.coll(coll)
        .watch()
        .max_await_time(AWAIT)
        .await
        .expect("change stream opens")
        .with_type::<Document>()
}

// Manual: "Change Events" — insert, update (updateDescription), replace and delete events with
// _id, clusterTime, wallTime, ns and documentKey; fullDocument only where documented.
#[tokio::test]
async fn collection_stream_reports_crud_events() {
    let env = start("cs_crud_events").await;
    let c = env.coll("c");
    let mut stream = watch_coll(&env, "c").await;
    c.insert_one(doc! {"_id": 1, "a": 1, "c": 1, "n": {"x": 0}})
        .await
        .unwrap();
    c.update_one(
        doc! {"_id": 1},
        doc! {"$set": {"a": 2, "n.x": 1}, "$unset": {"c": ""}},
    )
    .await
    .unwrap();
    c.replace_one(doc! {"_id": 1}, doc! {"r": true})
        .await
        .unwrap();
    c.delete_one(doc! {"_id": 1}).await.unwrap();

    let ns = doc! {"db": &env.db_name, "coll": "c"};
    let insert = next_event(&mut stream).await;
    assert_eq!(op(&insert), "insert");
    assert_eq!(insert.get_document("ns").unwrap(), &ns);
    assert_eq!(
        insert.get_document("documentKey").unwrap(),
        &doc! {"_id": 1}
    );
    assert_eq!(
        insert.get_document("fullDocument").unwrap(),
        &doc! {"_id": 1, "a": 1, "c": 1, "n": {"x": 0}}
    );
    assert!(insert.get_timestamp("clusterTime").is_ok(), "{insert}");
    assert!(insert.get_datetime("wallTime").is_ok(), "{insert}");

    let update = next_event(&mut stream).await;
    assert_eq!(op(&update), "update");
    assert_eq!(
        update.get_document("documentKey").unwrap(),
        &doc! {"_id": 1}
    );
    assert!(
        update.get("fullDocument").is_none(),
        "no lookup by default: {update}"
    );
    let desc = update.get_document("updateDescription").unwrap();
    assert_eq!(
        desc.get_document("updatedFields").unwrap(),
        &doc! {"a": 2, "n.x": 1}
    );
    assert_eq!(
        desc.get_array("removedFields").unwrap(),
        &vec![Bson::from("c")]
    );
    assert!(desc.get_array("truncatedArrays").is_ok(), "{desc}");

    let replace = next_event(&mut stream).await;
    assert_eq!(op(&replace), "replace");
    assert_eq!(
        replace.get_document("fullDocument").unwrap(),
        &doc! {"_id": 1, "r": true}
    );
    let delete = next_event(&mut stream).await;
    assert_eq!(op(&delete), "delete");
    assert_eq!(
        delete.get_document("documentKey").unwrap(),
        &doc! {"_id": 1}
    );
    assert!(delete.get("fullDocument").is_none());

    let events = [&insert, &update, &replace, &delete];
    for pair in events.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        assert!(
            token_data(&token_doc(a)) < token_data(&token_doc(b)),
            "resume tokens strictly increase"
        );
        assert!(
            a.get_timestamp("clusterTime").unwrap() < b.get_timestamp("clusterTime").unwrap(),
            "clusterTime increases"
        );
    }
    for event in events {
        let data = token_data(&token_doc(event));
        assert!(
            !data.is_empty() && data.chars().all(|ch| ch.is_ascii_hexdigit()),
            "hex token: {data}"
        );
    }
}

// Manual: "Change Streams" — tokens and cluster times are strictly ordered across a batch
// insert (one oplog entry per document).
#[tokio::test]
async fn tokens_strictly_ordered_across_many_events() {
    let env = start("cs_tokens_ordered").await;
    let mut stream = watch_coll(&env, "c").await;
    let docs: Vec<Document> = (0..20).map(|i| doc! {"_id": i}).collect();
    env.coll("c").insert_many(docs).await.unwrap();
    let mut last: Option<(String, Timestamp)> = None;
    for i in 0..20 {
        let event = next_event(&mut stream).await;
        assert_eq!(event.get_document("documentKey").unwrap(), &doc! {"_id": i});
        let here = (
            token_data(&token_doc(&event)),
            event.get_timestamp("clusterTime").unwrap(),
        );
        if let Some(prev) = &last {
            assert!(prev.0 < here.0, "token order at {i}");
            assert!(prev.1 < here.1, "clusterTime order at {i}");
        }
        last = Some(here);
    }
}

// Manual: "Lookup Full Document for Update Operations" — the current document, or null when it
// has been deleted since.
#[tokio::test]
async fn update_lookup_returns_current_document() {
    let env = start("cs_update_lookup").await;
    let c = env.coll("c");
    let mut stream = c
        .watch()
        .full_document(FullDocumentType::UpdateLookup)
        .max_await_time(AWAIT)
        .await
        .unwrap()
        .with_type::<Document>();
    c.insert_one(doc! {"_id": 1, "v": 1}).await.unwrap();
    let inserted = next_event(&mut stream).await;
    assert_eq!(op(&inserted), "insert");
    c.update_one(doc! {"_id": 1}, doc! {"$inc": {"v": 1}})
        .await
        .unwrap();
    let update = next_event(&mut stream).await;
    assert_eq!(op(&update), "update");
    assert_eq!(
        update.get_document("fullDocument").unwrap(),
        &doc! {"_id": 1, "v": 2}
    );
    c.update_one(doc! {"_id": 1}, doc! {"$inc": {"v": 1}})
        .await
        .unwrap();
    c.delete_one(doc! {"_id": 1}).await.unwrap();
    let update = next_event(&mut stream).await;
    assert_eq!(op(&update), "update");
    assert_eq!(update.get("fullDocument"), Some(&Bson::Null), "{update}");
    assert_eq!(op(&next_event(&mut stream).await), "delete");
}

// Manual: "Modify Change Stream Output" — $match and $project after $changeStream; removing
// _id makes the stream fail with ChangeStreamFatalError (280).
#[tokio::test]
async fn match_and_project_after_change_stream() {
    let env = start("cs_match_project").await;
    let c = env.coll("c");
    let mut stream = c
        .watch()
        .pipeline(vec![
            doc! {"$match": {"operationType": "insert", "fullDocument.keep": true}},
            doc! {"$project": {"fullDocument.secret": 0, "wallTime": 0}},
        ])
        .max_await_time(AWAIT)
        .await
        .unwrap()
        .with_type::<Document>();
    c.insert_one(doc! {"_id": 1, "keep": false}).await.unwrap();
    c.insert_one(doc! {"_id": 2, "keep": true, "secret": "s"})
        .await
        .unwrap();
    c.delete_one(doc! {"_id": 2}).await.unwrap();
    c.insert_one(doc! {"_id": 3, "keep": true}).await.unwrap();
    let first = next_event(&mut stream).await;
    assert_eq!(
        first.get_document("fullDocument").unwrap(),
        &doc! {"_id": 2, "keep": true}
    );
    assert!(first.get("wallTime").is_none());
    let second = next_event(&mut stream).await;
    assert_eq!(
        second.get_document("documentKey").unwrap(),
        &doc! {"_id": 3}
    );

    let mut broken = c
        .watch()
        .pipeline(vec![doc! {"$project": {"_id": 0}}])
        .max_await_time(AWAIT)
        .await
        .unwrap()
        .with_type::<Document>();
    c.insert_one(doc! {"_id": 4}).await.unwrap();
    let (err, seen) = next_error(&mut broken).await;
    assert!(seen.is_empty());
    assert_eq!(error_code(&err), Some(280), "{err}");
}

// Manual: "Change Events" (drop, rename, invalidate) and "Resume a Change Stream" — after an
// invalidate, startAfter its token opens a new stream, resumeAfter is InvalidResumeToken (260).
#[tokio::test]
async fn drop_invalidates_collection_stream() {
    let env = start("cs_drop_invalidates").await;
    let c = env.coll("c");
    let mut stream = watch_coll(&env, "c").await;
    c.insert_one(doc! {"_id": 1}).await.unwrap();
    c.drop().await.unwrap();
    assert_eq!(op(&next_event(&mut stream).await), "insert");
    let drop = next_event(&mut stream).await;
    assert_eq!(op(&drop), "drop");
    assert_eq!(
        drop.get_document("ns").unwrap(),
        &doc! {"db": &env.db_name, "coll": "c"}
    );
    let invalidate = next_event(&mut stream).await;
    assert_eq!(op(&invalidate), "invalidate");
    assert!(invalidate.get_timestamp("clusterTime").is_ok());
    let deadline = Instant::now() + Duration::from_secs(10);
    while stream.is_alive() {
        assert_eq!(
            stream.next_if_any().await.unwrap(),
            None,
            "nothing after invalidate"
        );
        assert!(
            Instant::now() < deadline,
            "stream stays open after invalidate"
        );
    }
    let token = resume_token(&token_doc(&invalidate));

    let mut after = c
        .watch()
        .start_after(token.clone())
        .max_await_time(AWAIT)
        .await
        .expect("startAfter an invalidate token")
        .with_type::<Document>();
    c.insert_one(doc! {"_id": 2}).await.unwrap();
    let event = next_event(&mut after).await;
    assert_eq!(op(&event), "insert");
    assert_eq!(event.get_document("documentKey").unwrap(), &doc! {"_id": 2});

    let resumed = c.watch().resume_after(token).max_await_time(AWAIT).await;
    match resumed {
        Err(e) => assert_eq!(error_code(&e), Some(260), "{e}"),
        Ok(stream) => {
            let mut stream = stream.with_type::<Document>();
            let (e, _) = next_error(&mut stream).await;
            assert_eq!(error_code(&e), Some(260), "{e}");
        }
    }
}

// Manual: "Change Events" — rename on the source collection's stream, then invalidate.
#[tokio::test]
async fn rename_invalidates_collection_stream() {
    let env = start("cs_rename").await;
    env.coll("src").insert_one(doc! {"_id": 1}).await.unwrap();
    let mut stream = watch_coll(&env, "src").await;
    env.admin(doc! {
        "renameCollection": format!("{}.src", env.db_name),
        "to": format!("{}.dst", env.db_name),
    })
    .await;
    let rename = next_event(&mut stream).await;
    assert_eq!(op(&rename), "rename");
    assert_eq!(
        rename.get_document("ns").unwrap(),
        &doc! {"db": &env.db_name, "coll": "src"}
    );
    assert_eq!(
        rename.get_document("to").unwrap(),
        &doc! {"db": &env.db_name, "coll": "dst"}
    );
    assert_eq!(op(&next_event(&mut stream).await), "invalidate");
}

// Manual: "Change Events" — a database stream sees every collection, drop and rename without
// invalidating, then dropDatabase (after a drop per collection) and invalidate.
#[tokio::test]
async fn database_stream_and_drop_database() {
    let env = start("cs_database_stream").await;
    let mut stream = env
        .db
        .watch()
        .max_await_time(AWAIT)
        .await
        .unwrap()
        .with_type::<Document>();
    env.coll("c1").insert_one(doc! {"_id": 1}).await.unwrap();
    env.coll("c2").insert_one(doc! {"_id": 2}).await.unwrap();
    env.coll("c1").drop().await.unwrap();
    env.admin(doc! {
        "renameCollection": format!("{}.c2", env.db_name),
        "to": format!("{}.c3", env.db_name),
    })
    .await;
    env.db.drop().await.unwrap();

    let e1 = next_event(&mut stream).await;
    assert_eq!(
        (
            op(&e1),
            e1.get_document("ns").unwrap().get_str("coll").unwrap()
        ),
        ("insert", "c1")
    );
    let e2 = next_event(&mut stream).await;
    assert_eq!(
        (
            op(&e2),
            e2.get_document("ns").unwrap().get_str("coll").unwrap()
        ),
        ("insert", "c2")
    );
    let e3 = next_event(&mut stream).await;
    assert_eq!(
        (
            op(&e3),
            e3.get_document("ns").unwrap().get_str("coll").unwrap()
        ),
        ("drop", "c1")
    );
    let e4 = next_event(&mut stream).await;
    assert_eq!(op(&e4), "rename");
    assert_eq!(
        e4.get_document("to").unwrap().get_str("coll").unwrap(),
        "c3"
    );
    let e5 = next_event(&mut stream).await;
    assert_eq!(
        (
            op(&e5),
            e5.get_document("ns").unwrap().get_str("coll").unwrap()
        ),
        ("drop", "c3")
    );
    let e6 = next_event(&mut stream).await;
    assert_eq!(op(&e6), "dropDatabase");
    assert_eq!(e6.get_document("ns").unwrap(), &doc! {"db": &env.db_name});
    let e7 = next_event(&mut stream).await;
    assert_eq!(op(&e7), "invalidate");
}

// Manual: "Watch a Deployment" — a cluster-wide stream sees every database.
#[tokio::test]
async fn cluster_stream_sees_all_databases() {
    let env = start("cs_cluster_stream").await;
    let other = format!("{}_b", env.db_name);
    let mut stream = env
        .client
        .watch()
        .pipeline(vec![
            doc! {"$match": {"ns.db": {"$in": [&env.db_name, &other]}}},
        ])
        .max_await_time(AWAIT)
        .await
        .unwrap()
        .with_type::<Document>();
    env.coll("x").insert_one(doc! {"_id": 1}).await.unwrap();
    env.client
        .database(&other)
        .collection::<Document>("y")
        .insert_one(doc! {"_id": 2})
        .await
        .unwrap();
    let a = next_event(&mut stream).await;
    assert_eq!(
        a.get_document("ns").unwrap(),
        &doc! {"db": &env.db_name, "coll": "x"}
    );
    let b = next_event(&mut stream).await;
    assert_eq!(
        b.get_document("ns").unwrap(),
        &doc! {"db": &other, "coll": "y"}
    );
    env.client.database(&other).drop().await.unwrap();
}

// Manual: "Resume a Change Stream" — resumeAfter and startAfter continue after the token;
// startAtOperationTime includes events at that time.
#[tokio::test]
async fn resume_after_start_after_and_operation_time() {
    let env = start("cs_resume").await;
    let c = env.coll("c");
    let mut stream = watch_coll(&env, "c").await;
    let reply = env
        .run(doc! {"insert": "c", "documents": [{"_id": 1}]})
        .await;
    let first_op_time = reply.get_timestamp("operationTime").expect("operationTime");
    c.insert_one(doc! {"_id": 2}).await.unwrap();
    c.insert_one(doc! {"_id": 3}).await.unwrap();
    let e1 = next_event(&mut stream).await;
    let e2 = next_event(&mut stream).await;
    let e3 = next_event(&mut stream).await;
    assert_eq!(e1.get_timestamp("clusterTime").unwrap(), first_op_time);
    let keys = |events: &[Document]| -> Vec<Document> {
        events
            .iter()
            .map(|e| e.get_document("documentKey").unwrap().clone())
            .collect()
    };
    assert_eq!(
        keys(&[e1.clone(), e2.clone(), e3.clone()]),
        vec![doc! {"_id": 1}, doc! {"_id": 2}, doc! {"_id": 3}]
    );

    let mut resumed = c
        .watch()
        .resume_after(resume_token(&token_doc(&e1)))
        .max_await_time(AWAIT)
        .await
        .unwrap()
        .with_type::<Document>();
    let r = [
        next_event(&mut resumed).await,
        next_event(&mut resumed).await,
    ];
    assert_eq!(keys(&r), vec![doc! {"_id": 2}, doc! {"_id": 3}]);
    assert_eq!(
        token_doc(&r[0]),
        token_doc(&e2),
        "the same event has the same token"
    );

    let mut started = c
        .watch()
        .start_after(resume_token(&token_doc(&e2)))
        .max_await_time(AWAIT)
        .await
        .unwrap()
        .with_type::<Document>();
    assert_eq!(
        keys(&[next_event(&mut started).await]),
        vec![doc! {"_id": 3}]
    );

    let mut at = c
        .watch()
        .start_at_operation_time(e2.get_timestamp("clusterTime").unwrap())
        .max_await_time(AWAIT)
        .await
        .unwrap()
        .with_type::<Document>();
    let r = [next_event(&mut at).await, next_event(&mut at).await];
    assert_eq!(keys(&r), vec![doc! {"_id": 2}, doc! {"_id": 3}]);
}

// Change-streams specification, "postBatchResumeToken": every reply, including empty ones,
// carries one; the driver's resume_token() is it after an empty batch. Manual: "getMore" —
// cursor ids are int64 and an awaiting getMore waits up to maxTimeMS.
#[tokio::test]
async fn post_batch_resume_token_on_every_batch() {
    let env = start("cs_pbrt").await;
    env.run(doc! {"create": "c"}).await;
    let reply = env
        .run(doc! {"aggregate": "c", "pipeline": [{"$changeStream": {}}], "cursor": {}})
        .await;
    let cursor = reply.get_document("cursor").unwrap();
    assert!(cursor.get_array("firstBatch").unwrap().is_empty());
    let id = match cursor.get("id") {
        Some(Bson::Int64(id)) if *id != 0 => *id,
        other => panic!("change stream cursor id must be a nonzero int64: {other:?}"),
    };
    assert_eq!(cursor.get_str("ns").unwrap(), format!("{}.c", env.db_name));
    let pbrt0 = token_data(cursor.get_document("postBatchResumeToken").unwrap());

    let started = Instant::now();
    let more = env
        .run(doc! {"getMore": id, "collection": "c", "maxTimeMS": 300_i64})
        .await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "an empty getMore waits maxTimeMS"
    );
    let cursor = more.get_document("cursor").unwrap();
    assert!(cursor.get_array("nextBatch").unwrap().is_empty());
    assert_eq!(cursor.get("id"), Some(&Bson::Int64(id)));
    let pbrt1 = token_data(cursor.get_document("postBatchResumeToken").unwrap());
    assert!(pbrt1 >= pbrt0);

    // A waiting getMore returns once a write arrives.
    let db = env.db.clone();
    let waiting = tokio::spawn(async move {
        db.run_command(doc! {"getMore": id, "collection": "c", "maxTimeMS": 10_000_i64})
            .await
    });
    env.coll("c").insert_one(doc! {"_id": 1}).await.unwrap();
    let more = waiting.await.unwrap().expect("getMore");
    let cursor = more.get_document("cursor").unwrap();
    let batch = cursor.get_array("nextBatch").unwrap();
    assert_eq!(batch.len(), 1, "{more}");
    let event_token = token_data(&token_doc(batch[0].as_document().unwrap()));
    let pbrt2 = token_data(cursor.get_document("postBatchResumeToken").unwrap());
    assert!(event_token > pbrt1);
    assert!(pbrt2 >= event_token);
    env.run(doc! {"killCursors": "c", "cursors": [id]}).await;

    // Through the driver.
    let mut stream = watch_coll(&env, "c").await;
    assert_eq!(stream.next_if_any().await.unwrap(), None);
    let empty_token = token_data(&driver_token(&stream));
    env.coll("c").insert_one(doc! {"_id": 2}).await.unwrap();
    let event = next_event(&mut stream).await;
    let event_token = token_data(&token_doc(&event));
    assert!(event_token > empty_token);
    assert_eq!(token_data(&driver_token(&stream)), event_token);
    // An empty getMore waits maxAwaitTimeMS for new events before answering.
    let started = Instant::now();
    assert_eq!(stream.next_if_any().await.unwrap(), None);
    assert!(
        started.elapsed() >= AWAIT,
        "the driver's getMore waited maxAwaitTimeMS"
    );
    let later = token_data(&driver_token(&stream));
    assert!(
        later >= event_token,
        "PBRT of an empty batch never goes back"
    );
}

// Change-streams specification, "Resumable Error": the driver resumes after a network error
// on getMore without losing or repeating events. Manual: "failCommand" (closeConnection);
// mongod needs enableTestCommands for fail points.
#[tokio::test]
async fn driver_resumes_after_connection_closed_on_get_more() {
    let env = start("cs_driver_resume").await;
    let _turn = fail_point_turn().await;
    let c = env.coll("c");
    let mut stream = watch_coll(&env, "c").await;
    c.insert_one(doc! {"_id": 1}).await.unwrap();
    assert_eq!(
        next_event(&mut stream)
            .await
            .get_document("documentKey")
            .unwrap(),
        &doc! {"_id": 1}
    );
    env.fail_command(
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["getMore"], "closeConnection": true},
    )
    .await;
    c.insert_one(doc! {"_id": 2}).await.unwrap();
    c.insert_one(doc! {"_id": 3}).await.unwrap();
    let a = next_event(&mut stream).await;
    let b = next_event(&mut stream).await;
    env.fail_command_off().await;
    assert_eq!(a.get_document("documentKey").unwrap(), &doc! {"_id": 2});
    assert_eq!(b.get_document("documentKey").unwrap(), &doc! {"_id": 3});
}

// Change-streams specification, "change-streams-resume-errorLabels": since 4.4 mongod labels a
// retryable error of a change stream's getMore (here failCommand's ShutdownInProgress, 91) with
// ResumableChangeStreamError, and the driver resumes on that label alone.
#[tokio::test]
async fn driver_resumes_after_labelled_error_on_get_more() {
    let env = start("cs_resume_label").await;
    let _turn = fail_point_turn().await;
    let c = env.coll("c");
    let mut stream = watch_coll(&env, "c").await;
    c.insert_one(doc! {"_id": 1}).await.unwrap();
    assert_eq!(
        next_event(&mut stream)
            .await
            .get_document("documentKey")
            .unwrap(),
        &doc! {"_id": 1}
    );
    // An error after the cursor is checked out is labelled by the server's own rules, and
    // the driver resumes.
    let after_checkout = |times: i32| {
        doc! {"configureFailPoint": "failGetMoreAfterCursorCheckout", "mode": {"times": times},
        "data": {"errorCode": 91, "appName": env.app_name.clone()}}
    };
    env.admin(after_checkout(1)).await;
    c.insert_one(doc! {"_id": 2}).await.unwrap();
    let event = next_event(&mut stream).await;
    assert_eq!(event.get_document("documentKey").unwrap(), &doc! {"_id": 2});

    // The label itself, as mongod sends it on a raw getMore.
    let open_raw = || async {
        let reply = env
            .run(doc! {"aggregate": "c", "pipeline": [{"$changeStream": {}}], "cursor": {}})
            .await;
        reply.get_document("cursor").unwrap().get_i64("id").unwrap()
    };
    let id = open_raw().await;
    env.admin(after_checkout(1)).await;
    let err = env
        .db
        .run_command(doc! {"getMore": id, "collection": "c", "maxTimeMS": 100_i64})
        .await
        .expect_err("getMore fails");
    assert_eq!(error_code(&err), Some(91));
    assert!(err.contains_label("ResumableChangeStreamError"), "{err}");

    // failCommand fails the getMore before the cursor is checked out: no label, so the
    // driver does not resume (change-streams spec tests, "does not resume if error does not
    // contain ResumableChangeStreamError").
    let id = open_raw().await;
    env.fail_command(
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["getMore"], "errorCode": 91},
    )
    .await;
    let err = env
        .db
        .run_command(doc! {"getMore": id, "collection": "c", "maxTimeMS": 100_i64})
        .await
        .expect_err("getMore fails");
    assert_eq!(error_code(&err), Some(91));
    assert!(!err.contains_label("ResumableChangeStreamError"), "{err}");
    env.fail_command(
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["getMore"], "errorCode": 91},
    )
    .await;
    c.insert_one(doc! {"_id": 3}).await.unwrap();
    let (err, events) = next_error(&mut stream).await;
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(error_code(&err), Some(91));
}

// Manual: "Change Streams — Resumability" / error code 286 ChangeStreamHistoryLost with the
// NonResumableChangeStreamError label, once the oplog no longer holds the resume point.
#[tokio::test]
async fn history_lost_after_oplog_rolls_over() {
    let Some(env) = start_sim_only(
        "cs_history_lost",
        ServerOptions {
            oplog_capacity: 16,
            ..Default::default()
        },
        "needs a 16-entry oplog",
    )
    .await
    else {
        return;
    };
    let c = env.coll("c");
    let mut stream = watch_coll(&env, "c").await;
    let mut lagging = watch_coll(&env, "c").await;
    c.insert_one(doc! {"_id": 0}).await.unwrap();
    let token = token_doc(&next_event(&mut stream).await);
    drop(stream);
    for i in 1..=40 {
        c.insert_one(doc! {"_id": i}).await.unwrap();
    }
    let check = |e: &mongodb::error::Error| {
        assert_eq!(error_code(e), Some(286), "{e}");
        assert!(e.contains_label("NonResumableChangeStreamError"), "{e}");
    };
    match c.watch().resume_after(resume_token(&token)).await {
        Err(e) => check(&e),
        Ok(s) => {
            let mut s = s.with_type::<Document>();
            let (e, seen) = next_error(&mut s).await;
            assert!(seen.is_empty(), "no events from a lost position: {seen:?}");
            check(&e);
        }
    }
    // So does a start time older than the oldest retained entry.
    match c
        .watch()
        .start_at_operation_time(Timestamp {
            time: 1,
            increment: 0,
        })
        .await
    {
        Err(e) => check(&e),
        Ok(s) => {
            let mut s = s.with_type::<Document>();
            let (e, _) = next_error(&mut s).await;
            check(&e);
        }
    }
    // A stream that fell behind the oplog fails the same way on its next getMore.
    let (e, seen) = next_error(&mut lagging).await;
    assert!(seen.is_empty(), "{seen:?}");
    check(&e);
    let status = env.admin(doc! {"replSetGetStatus": 1}).await;
    assert!(num(status.get("ok")) == 1.0);
}

// Manual: "Change Events" — an upsert that inserts is an insert event, findAndModify updates
// are update events, delete_many gives one delete per document.
#[tokio::test]
async fn events_from_upserts_find_and_modify_and_multi_deletes() {
    let env = start("cs_more_events").await;
    let c = env.coll("c");
    let mut stream = watch_coll(&env, "c").await;
    c.update_one(doc! {"_id": 1}, doc! {"$set": {"v": 1}})
        .upsert(true)
        .await
        .unwrap();
    c.find_one_and_update(doc! {"_id": 1}, doc! {"$inc": {"v": 1}})
        .await
        .unwrap();
    c.insert_one(doc! {"_id": 2}).await.unwrap();
    c.delete_many(doc! {}).await.unwrap();
    let insert = next_event(&mut stream).await;
    assert_eq!(op(&insert), "insert");
    assert_eq!(
        insert.get_document("fullDocument").unwrap(),
        &doc! {"_id": 1, "v": 1}
    );
    let update = next_event(&mut stream).await;
    assert_eq!(op(&update), "update");
    assert_eq!(
        update
            .get_document("updateDescription")
            .unwrap()
            .get_document("updatedFields")
            .unwrap(),
        &doc! {"v": 2}
    );
    assert_eq!(op(&next_event(&mut stream).await), "insert");
    let mut deleted = [next_event(&mut stream).await, next_event(&mut stream).await];
    assert!(deleted.iter().all(|e| op(e) == "delete"));
    deleted.sort_by_key(|e| {
        e.get_document("documentKey")
            .unwrap()
            .get_i32("_id")
            .unwrap()
    });
    assert_eq!(
        deleted[1].get_document("documentKey").unwrap(),
        &doc! {"_id": 2}
    );
}

// Manual: "Change Events" (update) — a small pipeline update is reported as an update with
// the changed and removed fields, like an operator update.
#[tokio::test]
async fn pipeline_update_is_an_update_event() {
    let env = start("cs_pipeline_update").await;
    let c = env.coll("c");
    c.insert_one(doc! {"_id": 1, "balance": 100, "note": "x", "pad": "p".repeat(200)})
        .await
        .unwrap();
    let mut stream = watch_coll(&env, "c").await;
    c.update_one(
        doc! {"_id": 1},
        vec![
            doc! {"$set": {"balance": {"$subtract": ["$balance", "$$amount"]}}},
            doc! {"$unset": "note"},
        ],
    )
    .let_vars(doc! {"amount": 30})
    .await
    .unwrap();
    let event = next_event(&mut stream).await;
    assert_eq!(op(&event), "update", "{event}");
    let desc = event.get_document("updateDescription").unwrap();
    assert_eq!(
        desc.get_document("updatedFields").unwrap(),
        &doc! {"balance": 70}
    );
    assert_eq!(
        desc.get_array("removedFields").unwrap(),
        &vec![Bson::from("note")]
    );
}

// Manual: "aggregate" (cursor.batchSize) and "$changeStream" — batches respect batchSize, and an
// unknown $changeStream option is an unknown field (40415).
#[tokio::test]
async fn change_stream_batch_size_and_options() {
    let env = start("cs_batch_size").await;
    env.run(doc! {"create": "c"}).await;
    let reply = env
        .run(doc! {"aggregate": "c", "pipeline": [{"$changeStream": {}}], "cursor": {"batchSize": 2}})
        .await;
    let id = reply.get_document("cursor").unwrap().get_i64("id").unwrap();
    let docs: Vec<Document> = (0..5).map(|i| doc! {"_id": i}).collect();
    env.coll("c").insert_many(docs).await.unwrap();
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen < 5 {
        let more = env
            .run(doc! {"getMore": id, "collection": "c", "batchSize": 2, "maxTimeMS": 200_i64})
            .await;
        let batch = more
            .get_document("cursor")
            .unwrap()
            .get_array("nextBatch")
            .unwrap()
            .len();
        assert!(batch <= 2, "batchSize respected: {more}");
        seen += batch;
        assert!(Instant::now() < deadline, "only {seen} of 5 events");
    }
    assert_eq!(seen, 5);
    let (code, _) = env
        .run_err(
            doc! {"aggregate": "c", "pipeline": [{"$changeStream": {"bogus": 1}}], "cursor": {}},
        )
        .await;
    assert_eq!(code, 40415);
}

// Manual: "Open A Change Stream" — a collection's stream reports only that collection; a
// database's stream does not see other databases.
#[tokio::test]
async fn streams_are_scoped_to_their_namespace() {
    let env = start("cs_scoped").await;
    let mut coll_stream = watch_coll(&env, "c").await;
    let mut db_stream = env
        .db
        .watch()
        .max_await_time(AWAIT)
        .await
        .unwrap()
        .with_type::<Document>();
    let other_db = env.client.database(&format!("{}_o", env.db_name));
    other_db
        .collection::<Document>("c")
        .insert_one(doc! {"_id": "other-db"})
        .await
        .unwrap();
    env.coll("d")
        .insert_one(doc! {"_id": "other-coll"})
        .await
        .unwrap();
    env.coll("c")
        .insert_one(doc! {"_id": "mine"})
        .await
        .unwrap();
    let event = next_event(&mut coll_stream).await;
    assert_eq!(
        event.get_document("documentKey").unwrap(),
        &doc! {"_id": "mine"}
    );
    let first = next_event(&mut db_stream).await;
    assert_eq!(
        first.get_document("documentKey").unwrap(),
        &doc! {"_id": "other-coll"}
    );
    let second = next_event(&mut db_stream).await;
    assert_eq!(
        second.get_document("documentKey").unwrap(),
        &doc! {"_id": "mine"}
    );
    other_db.drop().await.unwrap();
}
