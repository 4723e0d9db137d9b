//! Collections beyond their documents: options kept and listed (validation, capped bounds),
//! `collMod`, read-only views, and index options (`partialFilterExpression`, hashed keys,
//! `background`), as the manual's "Schema Validation", "Views", "Capped Collections",
//! "Partial Indexes" and "Hashed Indexes" pages describe them; and the operator commands a
//! driver's test harness asks at start-up (`getCmdLineOpts`, `getParameter`).

mod common;

use common::{collect, error_code, num, start};
use mongodb::bson::{Bson, Document, doc};

async fn list_entry(env: &common::TestEnv, name: &str) -> Document {
    let reply = env
        .run(doc! {"listCollections": 1, "filter": {"name": name}})
        .await;
    reply
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap()[0]
        .as_document()
        .unwrap()
        .clone()
}

/// The first write error of a write command's reply.
fn write_error(reply: Document) -> Document {
    match reply.get_array("writeErrors") {
        Ok(errors) => errors[0].as_document().unwrap().clone(),
        Err(_) => panic!("expected a write error: {reply}"),
    }
}

// Manual: "Schema Validation": a validator refuses failing inserts and updates with 121 and
// `errInfo.failingDocumentId`; `bypassDocumentValidation` lets them through; `collMod`
// changes the validator, and `moderate` spares documents that already failed.
#[tokio::test]
async fn validators_refuse_documents_unless_bypassed() {
    let env = start("validation").await;
    env.run(doc! {"create": "c", "validator": {"a": {"$gte": 0}}})
        .await;
    let options = list_entry(&env, "c").await;
    assert_eq!(
        options.get_document("options").unwrap(),
        &doc! {"validator": {"a": {"$gte": 0}}, "validationLevel": "strict", "validationAction": "error"}
    );
    let error = write_error(
        env.run(doc! {"insert": "c", "documents": [{"_id": 1, "a": -1}]})
            .await,
    );
    assert_eq!(error.get_i32("code").unwrap(), 121);
    let info = error.get_document("errInfo").unwrap();
    assert_eq!(info.get_i32("failingDocumentId").unwrap(), 1);
    assert!(info.get_document("details").is_ok());
    env.run(
        doc! {"insert": "c", "documents": [{"_id": 1, "a": -1}], "bypassDocumentValidation": true},
    )
    .await;
    env.run(doc! {"insert": "c", "documents": [{"_id": 2, "a": 1}]})
        .await;
    let error = write_error(
        env.run(doc! {"update": "c", "updates": [{"q": {"_id": 2}, "u": {"$set": {"a": -5}}}]})
            .await,
    );
    assert_eq!(error.get_i32("code").unwrap(), 121);
    env.run(doc! {"collMod": "c", "validationLevel": "moderate"})
        .await;
    // Document 1 already fails the validator: under `moderate` its updates are not checked.
    env.run(doc! {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"$set": {"a": -2}}}]})
        .await;
    let (code, _) = env
        .run_err(doc! {"findAndModify": "c", "query": {"_id": 2}, "update": {"$set": {"a": -5}}})
        .await;
    assert_eq!(code, 121);
    let (code, _) = env
        .run_err(doc! {"collMod": "missing", "validationLevel": "off"})
        .await;
    assert_eq!(code, 26);
}

// Manual: "Views": reads run the view's pipeline over its source (views on views too);
// writes fail with 166 CommandNotSupportedOnView; listCollections shows the definition.
#[tokio::test]
async fn views_are_read_through_their_pipeline_and_refuse_writes() {
    let env = start("views").await;
    env.coll("c")
        .insert_many([
            doc! {"_id": 1, "x": 1},
            doc! {"_id": 2, "x": 2},
            doc! {"_id": 3, "x": 3},
        ])
        .await
        .unwrap();
    env.run(doc! {"create": "big", "viewOn": "c", "pipeline": [{"$match": {"x": {"$gte": 2}}}]})
        .await;
    env.run(doc! {"create": "bigger", "viewOn": "big", "pipeline": [{"$match": {"x": 3}}]})
        .await;
    let entry = list_entry(&env, "big").await;
    assert_eq!(entry.get_str("type").unwrap(), "view");
    assert!(
        entry
            .get_document("info")
            .unwrap()
            .get_bool("readOnly")
            .unwrap()
    );
    let count = env.run(doc! {"count": "big"}).await;
    assert_eq!(count.get_i32("n").unwrap(), 2);
    let found = collect(env.coll("bigger").find(doc! {}).await.unwrap()).await;
    assert_eq!(found, vec![doc! {"_id": 3, "x": 3}]);
    assert_eq!(env.coll("big").estimated_document_count().await.unwrap(), 2);
    let (code, _) = env
        .run_err(doc! {"insert": "big", "documents": [{"x": 9}]})
        .await;
    assert_eq!(code, 166);
    let (code, _) = env
        .run_err(doc! {"create": "big", "viewOn": "c", "pipeline": []})
        .await;
    assert_eq!(code, 48);
    env.run(doc! {"drop": "bigger"}).await;
    assert!(
        env.db
            .list_collection_names()
            .await
            .unwrap()
            .iter()
            .all(|n| n != "bigger")
    );
}

// Manual: "Capped Collections": the size is required and rounded as mongod rounds it; the
// oldest documents go when the collection is full.
#[tokio::test]
async fn capped_collections_keep_the_newest_documents() {
    let env = start("capped").await;
    let (code, _) = env.run_err(doc! {"create": "c", "capped": true}).await;
    assert_eq!(code, 72);
    env.run(doc! {"create": "c", "capped": true, "size": 4096, "max": 3})
        .await;
    let entry = list_entry(&env, "c").await;
    let options = entry.get_document("options").unwrap();
    assert_eq!(options.get("capped"), Some(&Bson::Boolean(true)));
    assert_eq!(num(options.get("size")), 4096.0);
    assert_eq!(num(options.get("max")), 3.0);
    for i in 0..5 {
        env.coll("c").insert_one(doc! {"_id": i}).await.unwrap();
    }
    let left = collect(env.coll("c").find(doc! {}).await.unwrap()).await;
    assert_eq!(
        left,
        vec![doc! {"_id": 2}, doc! {"_id": 3}, doc! {"_id": 4}]
    );
}

// Manual: "Partial Indexes" (only matching documents are indexed, so a unique partial index
// constrains only them) and "Hashed Indexes" (not unique; listed with their "hashed" key).
#[tokio::test]
async fn partial_and_hashed_indexes() {
    let env = start("index_kinds").await;
    env.run(doc! {"createIndexes": "c", "indexes": [
        {"key": {"k": 1}, "name": "k_1", "unique": true, "partialFilterExpression": {"live": true}},
        {"key": {"h": "hashed"}, "name": "h_hashed", "background": true},
    ]})
    .await;
    let c = env.coll("c");
    c.insert_many([
        doc! {"_id": 1, "k": 1, "live": false},
        doc! {"_id": 2, "k": 1, "live": false},
        doc! {"_id": 3, "k": 1, "live": true, "h": "x"},
    ])
    .await
    .unwrap();
    let err = c
        .insert_one(doc! {"_id": 4, "k": 1, "live": true})
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), Some(11000));
    let found = collect(c.find(doc! {"h": "x"}).await.unwrap()).await;
    assert_eq!(found.len(), 1);
    let err = c
        .insert_one(doc! {"_id": 5, "h": [1, 2]})
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), Some(16766));
    let indexes = env.run(doc! {"listIndexes": "c"}).await;
    let specs: Vec<Document> = indexes
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap()
        .iter()
        .map(|d| d.as_document().unwrap().clone())
        .collect();
    assert_eq!(
        specs[1].get_document("partialFilterExpression").unwrap(),
        &doc! {"live": true}
    );
    assert_eq!(specs[2].get_document("key").unwrap(), &doc! {"h": "hashed"});
    assert_eq!(specs[2].get("background"), Some(&Bson::Boolean(true)));
    let (code, _) = env
        .run_err(doc! {"createIndexes": "c", "indexes": [
            {"key": {"p": 1}, "name": "p_1", "partialFilterExpression": {"a": {"$bogus": 1}}}
        ]})
        .await;
    assert_eq!(code, 2);
}

// `find` with `min`/`max` and a hint (manual: "cursor.min()"): the hinted index's key bounds.
#[tokio::test]
async fn find_min_and_max_bound_the_hinted_index() {
    let env = start("min_max").await;
    let c = env.coll("c");
    c.insert_many((1..=5).map(|x| doc! {"_id": x, "x": 6 - x}))
        .await
        .unwrap();
    env.run(doc! {"createIndexes": "c", "indexes": [{"key": {"x": 1}, "name": "x_1"}]})
        .await;
    let reply = env
        .run(doc! {"find": "c", "min": {"x": 2}, "max": {"x": 4}, "hint": "x_1"})
        .await;
    let xs: Vec<i32> = reply
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap()
        .iter()
        .map(|d| d.as_document().unwrap().get_i32("x").unwrap())
        .collect();
    assert_eq!(xs, [2, 3]);
    let (code, _) = env.run_err(doc! {"find": "c", "min": {"x": 2}}).await;
    assert_eq!(code, 51173);
}

// pymongo's test harness asks these before any test: whether auth is on, and whether test
// commands (fail points) are enabled.
#[tokio::test]
async fn start_up_commands_describe_the_server() {
    let env = start("start_up").await;
    let opts = env.admin(doc! {"getCmdLineOpts": 1}).await;
    let parsed = opts.get_document("parsed").unwrap();
    assert!(!parsed.contains_key("security"));
    assert!(opts.get_array("argv").is_ok());
    let params = env.admin(doc! {"getParameter": "*"}).await;
    assert_eq!(params.get("enableTestCommands"), Some(&Bson::Boolean(true)));
    let (code, _) = env.run_err(doc! {"getCmdLineOpts": 1}).await;
    assert_eq!(code, 13);
}
