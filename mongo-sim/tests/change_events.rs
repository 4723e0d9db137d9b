//! What change events look like beyond the basic insert/update/delete: expanded events
//! (`showExpandedEvents`), pre- and post-images (`changeStreamPreAndPostImages`), update
//! descriptions of pipeline updates, events split by `$changeStreamSplitLargeEvent`, and the
//! read concern a change stream accepts (manual: "Change Events", "Change Streams with
//! Document Pre- and Post-Images", "Large Change Stream Events"; the change-streams
//! specification's unified tests).

mod common;

use common::{TestEnv, error_code, start};
use mongodb::bson::{Binary, Bson, Document, doc};
use std::time::{Duration, Instant};

/// Opens a change stream with a raw `aggregate`; returns the cursor id.
async fn open(env: &TestEnv, target: Bson, spec: Document, more: Vec<Document>) -> i64 {
    let mut pipeline = vec![doc! {"$changeStream": spec}];
    pipeline.extend(more);
    let reply = env
        .run(doc! {"aggregate": target, "pipeline": pipeline, "cursor": {}})
        .await;
    reply.get_document("cursor").unwrap().get_i64("id").unwrap()
}

/// Events from `getMore`s on `id` until `n` arrived, polling up to a deadline.
async fn events(env: &TestEnv, coll: &str, id: i64, n: usize) -> Vec<Document> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while seen.len() < n {
        assert!(Instant::now() < deadline, "only {seen:?} within 10s");
        let reply = env
            .run(doc! {"getMore": id, "collection": coll, "maxTimeMS": 100_i64})
            .await;
        let batch = reply
            .get_document("cursor")
            .unwrap()
            .get_array("nextBatch")
            .unwrap();
        seen.extend(batch.iter().map(|e| e.as_document().unwrap().clone()));
    }
    seen
}

/// The error of the next `getMore` that fails, polling up to a deadline.
async fn get_more_error(env: &TestEnv, coll: &str, id: i64) -> mongodb::error::Error {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no error within 10s");
        let cmd = doc! {"getMore": id, "collection": coll, "maxTimeMS": 100_i64};
        if let Err(e) = env.db.run_command(cmd).await {
            return e;
        }
    }
}

fn op(e: &Document) -> &str {
    e.get_str("operationType").unwrap()
}

async fn uuid_of(env: &TestEnv, coll: &str) -> Binary {
    let reply = env
        .run(doc! {"listCollections": 1, "filter": {"name": coll}})
        .await;
    let first = reply
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap()[0]
        .as_document()
        .unwrap()
        .clone();
    match first.get_document("info").unwrap().get("uuid") {
        Some(Bson::Binary(b)) => b.clone(),
        other => panic!("no uuid: {other:?}"),
    }
}

// Manual: "Change Events" (create, createIndexes, dropIndexes, modify, rename's
// operationDescription; collectionUUID), shown only with showExpandedEvents (6.0+).
#[tokio::test]
async fn expanded_streams_report_ddl_with_collection_uuid() {
    let env = start("cs_expanded").await;
    let expanded = open(&env, 1.into(), doc! {"showExpandedEvents": true}, vec![]).await;
    let plain = open(&env, 1.into(), doc! {}, vec![]).await;
    env.run(doc! {"create": "a"}).await;
    env.run(doc! {"createIndexes": "a", "indexes": [{"key": {"x": 1}, "name": "x_1"}]})
        .await;
    env.run(doc! {"collMod": "a", "changeStreamPreAndPostImages": {"enabled": true}})
        .await;
    env.run(doc! {"dropIndexes": "a", "index": "x_1"}).await;
    env.run(doc! {"create": "b"}).await;
    let uuid_b = uuid_of(&env, "b").await;
    let uuid_a = uuid_of(&env, "a").await;
    let from = format!("{}.a", env.db_name);
    let to = format!("{}.b", env.db_name);
    env.admin(doc! {"renameCollection": from, "to": to, "dropTarget": true})
        .await;
    env.run(doc! {"create": "v", "viewOn": "b", "pipeline": []})
        .await;

    let got = events(&env, "$cmd.aggregate", expanded, 7).await;
    let types: Vec<&str> = got.iter().map(op).collect();
    assert_eq!(
        types,
        [
            "create",
            "createIndexes",
            "modify",
            "dropIndexes",
            "create",
            "rename",
            "create"
        ]
    );
    for e in &got[..6] {
        assert!(e.contains_key("collectionUUID"), "{e}");
    }
    assert_eq!(
        got[0].get("collectionUUID"),
        Some(&Bson::Binary(uuid_a.clone()))
    );
    let create = got[0].get_document("operationDescription").unwrap();
    assert_eq!(
        create.get_document("idIndex").unwrap(),
        &doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"}
    );
    let indexes = got[1]
        .get_document("operationDescription")
        .unwrap()
        .get_array("indexes")
        .unwrap();
    assert_eq!(
        indexes[0].as_document().unwrap().get_str("name").unwrap(),
        "x_1"
    );
    let modify = &got[2];
    assert_eq!(
        modify.get_document("operationDescription").unwrap(),
        &doc! {"changeStreamPreAndPostImages": {"enabled": true}}
    );
    let before = modify
        .get_document("stateBeforeChange")
        .unwrap()
        .get_document("collectionOptions")
        .unwrap();
    assert_eq!(before.get("uuid"), Some(&Bson::Binary(uuid_a)));
    assert!(!before.contains_key("changeStreamPreAndPostImages"));
    let rename = got[5].get_document("operationDescription").unwrap();
    assert_eq!(
        rename.get_document("to").unwrap(),
        &doc! {"db": env.db_name.clone(), "coll": "b"}
    );
    assert_eq!(rename.get("dropTarget"), Some(&Bson::Binary(uuid_b)));
    let view = &got[6];
    assert!(!view.contains_key("collectionUUID"));
    assert_eq!(
        view.get_document("operationDescription").unwrap(),
        &doc! {"viewOn": "b", "pipeline": []}
    );

    // Without showExpandedEvents only the rename is reported, without the new fields.
    let got = events(&env, "$cmd.aggregate", plain, 1).await;
    assert_eq!(op(&got[0]), "rename");
    assert!(!got[0].contains_key("collectionUUID"));
    assert!(!got[0].contains_key("operationDescription"));
}

// Manual: "Change Streams with Document Pre- and Post-Images": images exist only for writes
// made while the option was enabled; `whenAvailable` gives null otherwise, `required` fails.
#[tokio::test]
async fn images_follow_the_collection_option_at_write_time() {
    let env = start("cs_images").await;
    env.coll("c")
        .insert_many([doc! {"_id": 1, "v": 1}, doc! {"_id": 2, "v": 2}])
        .await
        .unwrap();
    let when = open(
        &env,
        "c".into(),
        doc! {"fullDocument": "whenAvailable", "fullDocumentBeforeChange": "whenAvailable"},
        vec![],
    )
    .await;
    let required = open(
        &env,
        "c".into(),
        doc! {"fullDocumentBeforeChange": "required"},
        vec![],
    )
    .await;
    let set = |id: i32, v: i32| doc! {"update": "c", "updates": [{"q": {"_id": id}, "u": {"$set": {"v": v}}}]};
    env.run(set(1, 10)).await;
    env.run(doc! {"collMod": "c", "changeStreamPreAndPostImages": {"enabled": true}})
        .await;
    env.run(set(1, 11)).await;
    env.run(doc! {"delete": "c", "deletes": [{"q": {"_id": 2}, "limit": 1}]})
        .await;

    let got = events(&env, "c", when, 3).await;
    assert_eq!(got[0].get("fullDocument"), Some(&Bson::Null));
    assert_eq!(got[0].get("fullDocumentBeforeChange"), Some(&Bson::Null));
    assert_eq!(
        got[1].get_document("fullDocument").unwrap(),
        &doc! {"_id": 1, "v": 11}
    );
    assert_eq!(
        got[1].get_document("fullDocumentBeforeChange").unwrap(),
        &doc! {"_id": 1, "v": 10}
    );
    assert_eq!(op(&got[2]), "delete");
    assert_eq!(
        got[2].get_document("fullDocumentBeforeChange").unwrap(),
        &doc! {"_id": 2, "v": 2}
    );
    // The first update had no pre-image: a stream that requires one fails on it.
    let err = get_more_error(&env, "c", required).await;
    assert_eq!(error_code(&err), Some(47), "{err}");
}

// The change-streams spec test "Test array truncation": a pipeline update that shortens an
// array reports `truncatedArrays`; "disambiguatedPaths" for numeric field names (6.1+).
#[tokio::test]
async fn update_descriptions_truncate_arrays_and_disambiguate_paths() {
    let env = start("cs_update_desc").await;
    env.coll("c")
        .insert_many([
            doc! {"_id": 1, "array": ["foo", {"a": "bar"}, 1, 2, 3]},
            doc! {"_id": 2, "a": [{"1": 1}]},
        ])
        .await
        .unwrap();
    let id = open(&env, "c".into(), doc! {"showExpandedEvents": true}, vec![]).await;
    env.run(doc! {"update": "c", "updates": [
        {"q": {"_id": 1}, "u": [{"$set": {"array": ["foo", {"a": "bar"}]}}]}
    ]})
    .await;
    env.run(doc! {"update": "c", "updates": [{"q": {"_id": 2}, "u": {"$set": {"a.0.1": 2}}}]})
        .await;
    let got = events(&env, "c", id, 2).await;
    assert_eq!(
        got[0].get_document("updateDescription").unwrap(),
        &doc! {
            "updatedFields": {},
            "removedFields": [],
            "truncatedArrays": [{"field": "array", "newSize": 2}],
            "disambiguatedPaths": {},
        }
    );
    let desc = got[1].get_document("updateDescription").unwrap();
    assert_eq!(
        desc.get_document("updatedFields").unwrap(),
        &doc! {"a.0.1": 2}
    );
    assert_eq!(
        desc.get_document("disambiguatedPaths").unwrap(),
        &doc! {"a.0.1": ["a", 0, "1"]}
    );
}

// Manual: "Large Change Stream Events": an event over 16 MiB fails the stream with
// BSONObjectTooLarge unless `$changeStreamSplitLargeEvent` splits it into fragments.
#[tokio::test]
async fn large_events_are_split_or_refused() {
    let env = start("cs_split").await;
    env.run(doc! {"create": "c", "changeStreamPreAndPostImages": {"enabled": true}})
        .await;
    let big = |c: &str| "q".repeat(10 * 1024 * 1024).replace('q', c);
    env.coll("c")
        .insert_one(doc! {"_id": 1, "value": big("q")})
        .await
        .unwrap();
    let spec = doc! {"fullDocumentBeforeChange": "required"};
    let split = open(
        &env,
        "c".into(),
        spec.clone(),
        vec![doc! {"$changeStreamSplitLargeEvent": {}}],
    )
    .await;
    let whole = open(&env, "c".into(), spec, vec![]).await;
    env.run(
        doc! {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"$set": {"value": big("z")}}}]},
    )
    .await;
    let got = events(&env, "c", split, 2).await;
    assert_eq!(
        got[0].get_document("splitEvent").unwrap(),
        &doc! {"fragment": 1, "of": 2}
    );
    assert_eq!(
        got[1].get_document("splitEvent").unwrap(),
        &doc! {"fragment": 2, "of": 2}
    );
    assert!(got[0].get_document("_id").unwrap() != got[1].get_document("_id").unwrap());
    let err = get_more_error(&env, "c", whole).await;
    assert_eq!(error_code(&err), Some(10334), "{err}");
    // The stage must come last.
    let (code, _) = env
        .run_err(doc! {"aggregate": "c", "cursor": {}, "pipeline": [
            {"$changeStream": {}}, {"$changeStreamSplitLargeEvent": {}}, {"$match": {}}
        ]})
        .await;
    assert_eq!(code, 7182802);
}

// Change streams read majority-committed data: an explicit other level is refused with
// InvalidOptions (pymongo's test_change_stream "test_read_concern").
#[tokio::test]
async fn change_streams_refuse_read_concern_local() {
    let env = start("cs_read_concern").await;
    let (code, _) = env
        .run_err(
            doc! {"aggregate": "c", "cursor": {}, "pipeline": [{"$changeStream": {}}],
            "readConcern": {"level": "local"}},
        )
        .await;
    assert_eq!(code, 72);
    env.run(
        doc! {"aggregate": "c", "cursor": {}, "pipeline": [{"$changeStream": {}}],
        "readConcern": {"level": "majority"}},
    )
    .await;
}
