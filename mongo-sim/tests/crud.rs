//! CRUD commands through the driver and as raw commands: replies must carry exactly the counts
//! and fields mongod reports.

mod common;

use common::{aggregate, collect, expect_code, num, start};
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::ReturnDocument;

fn ids(docs: &[Document]) -> Vec<Bson> {
    docs.iter()
        .map(|d| d.get("_id").cloned().unwrap())
        .collect()
}

// Manual: "insert" — reply {n, ok}; a document without _id gets an ObjectId _id as first field.
#[tokio::test]
async fn insert_reports_n_and_adds_object_id() {
    let env = start("insert_reports_n").await;
    let reply = env
        .run(doc! {"insert": "c", "documents": [{"a": 1}, {"_id": 7, "a": 2}]})
        .await;
    assert_eq!(num(reply.get("n")), 2.0, "{reply}");
    assert!(reply.get("writeErrors").is_none());
    let docs = collect(
        env.coll("c")
            .find(doc! {})
            .sort(doc! {"a": 1})
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(docs.len(), 2);
    assert!(docs[0].get_object_id("_id").is_ok(), "{:?}", docs[0]);
    assert_eq!(docs[0].keys().next().unwrap(), "_id", "_id comes first");
    assert_eq!(docs[1], doc! {"_id": 7, "a": 2});

    let res = env
        .coll("c")
        .insert_many(vec![doc! {"_id": 8}, doc! {"_id": 9}])
        .await
        .unwrap();
    assert_eq!(res.inserted_ids.len(), 2);
    assert_eq!(env.coll("c").count_documents(doc! {}).await.unwrap(), 4);
}

// Manual: "insert" — ordered inserts stop at the first error; unordered ones go on. Each
// write error names the index of the failing document.
#[tokio::test]
async fn ordered_and_unordered_insert_errors() {
    let env = start("ordered_insert_errors").await;
    let reply = env
        .run(doc! {"insert": "c", "documents": [{"_id": 1}, {"_id": 1}, {"_id": 2}]})
        .await;
    assert_eq!(num(reply.get("n")), 1.0, "{reply}");
    let errors = reply.get_array("writeErrors").expect("writeErrors");
    assert_eq!(errors.len(), 1);
    let first = errors[0].as_document().unwrap();
    assert_eq!(num(first.get("index")), 1.0);
    assert_eq!(num(first.get("code")), 11000.0);

    let reply = env
        .run(doc! {"insert": "d", "ordered": false,
        "documents": [{"_id": 1}, {"_id": 1}, {"_id": 2}, {"_id": 2}]})
        .await;
    assert_eq!(num(reply.get("n")), 2.0, "{reply}");
    let errors = reply.get_array("writeErrors").expect("writeErrors");
    let indexes: Vec<f64> = errors
        .iter()
        .map(|e| num(e.as_document().unwrap().get("index")))
        .collect();
    assert_eq!(indexes, vec![1.0, 3.0]);
}

// Manual: "Field Update Operators" ($set, $unset, $inc, $mul, $min, $max, $rename,
// $currentDate); since 5.0 new fields are added in lexicographic order.
#[tokio::test]
async fn field_update_operators() {
    let env = start("field_update_operators").await;
    let c = env.coll("c");
    c.insert_one(doc! {"_id": 1, "n": 5, "m": 3, "lo": 10, "hi": 10, "old": "x", "gone": true})
        .await
        .unwrap();
    c.update_one(
        doc! {"_id": 1},
        doc! {
            "$set": {"z": 1, "a.b.c": "deep", "y": 2},
            "$unset": {"gone": ""},
            "$inc": {"n": 2, "fresh": 1},
            "$mul": {"m": 2.5},
            "$min": {"lo": 3},
            "$max": {"hi": 20},
            "$rename": {"old": "renamed"},
            "$currentDate": {"when": true},
        },
    )
    .await
    .unwrap();
    let got = c.find_one(doc! {"_id": 1}).await.unwrap().unwrap();
    assert_eq!(got.get_i32("n").unwrap(), 7);
    assert_eq!(got.get_f64("m").unwrap(), 7.5);
    assert_eq!(got.get_i32("lo").unwrap(), 3);
    assert_eq!(got.get_i32("hi").unwrap(), 20);
    assert_eq!(got.get_i32("fresh").unwrap(), 1);
    assert_eq!(got.get_str("renamed").unwrap(), "x");
    assert!(got.get("old").is_none() && got.get("gone").is_none());
    assert_eq!(got.get_document("a").unwrap(), &doc! {"b": {"c": "deep"}});
    assert!(got.get_datetime("when").is_ok());
    let keys: Vec<&str> = got.keys().map(String::as_str).collect();
    // Existing fields keep their place; new ones follow in lexicographic order.
    assert_eq!(
        keys,
        vec![
            "_id", "n", "m", "lo", "hi", "a", "fresh", "renamed", "when", "y", "z"
        ],
        "{got}"
    );
}

// Manual: "Array Update Operators" ($push with $each/$slice, $addToSet, $pull, $pop).
#[tokio::test]
async fn array_update_operators() {
    let env = start("array_update_operators").await;
    let c = env.coll("c");
    c.insert_one(
        doc! {"_id": 1, "list": [1, 2], "set": ["a"], "nums": [1, 5, 8, 2], "q": [1, 2, 3]},
    )
    .await
    .unwrap();
    c.update_one(
        doc! {"_id": 1},
        doc! {
            "$push": {"list": {"$each": [3, 4, 5], "$slice": -4}, "newList": "x"},
            "$addToSet": {"set": {"$each": ["a", "b", "b"]}},
            "$pull": {"nums": {"$gte": 5}},
            "$pop": {"q": -1},
        },
    )
    .await
    .unwrap();
    let got = c.find_one(doc! {"_id": 1}).await.unwrap().unwrap();
    assert_eq!(
        got,
        doc! {"_id": 1, "list": [2, 3, 4, 5], "set": ["a", "b"], "nums": [1, 2], "q": [2, 3], "newList": ["x"]}
    );
}

// Manual: "$inc" — incrementing a non-numeric field fails (TypeMismatch 14); "Update
// Operators" — two operators on the same path conflict (40); "_id" is immutable (66).
#[tokio::test]
async fn update_operator_errors() {
    let env = start("update_operator_errors").await;
    let c = env.coll("c");
    c.insert_one(doc! {"_id": 1, "s": "text"}).await.unwrap();
    expect_code(
        c.update_one(doc! {"_id": 1}, doc! {"$inc": {"s": 1}}).await,
        14,
    );
    expect_code(
        c.update_one(doc! {"_id": 1}, doc! {"$set": {"a": 1}, "$inc": {"a": 1}})
            .await,
        40,
    );
    expect_code(
        c.update_one(doc! {"_id": 1}, doc! {"$set": {"_id": 2}})
            .await,
        66,
    );
    // An unknown update operator fails the statement with FailedToParse (9): a write error
    // in an ok: 1 reply.
    let reply = env
        .run(doc! {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"$bogus": {"a": 1}}}]})
        .await;
    let errors = reply.get_array("writeErrors").expect("writeErrors");
    assert_eq!(
        num(errors[0].as_document().unwrap().get("code")),
        9.0,
        "{reply}"
    );
    assert_eq!(num(reply.get("n")), 0.0);
    assert_eq!(
        c.find_one(doc! {"_id": 1}).await.unwrap().unwrap(),
        doc! {"_id": 1, "s": "text"}
    );
}

// Manual: "update" command output — n counts matched documents, nModified only the ones
// actually changed.
#[tokio::test]
async fn update_counts_matched_and_modified() {
    let env = start("update_counts").await;
    env.run(doc! {"insert": "c", "documents": [{"_id": 1, "a": 1}, {"_id": 2, "a": 1}, {"_id": 3, "a": 2}]})
        .await;
    let reply = env
        .run(doc! {"update": "c", "updates": [{"q": {"a": 1}, "u": {"$set": {"a": 1}}, "multi": true}]})
        .await;
    assert_eq!(num(reply.get("n")), 2.0, "{reply}");
    assert_eq!(num(reply.get("nModified")), 0.0);
    assert!(reply.get("upserted").is_none());
    let reply = env
        .run(doc! {"update": "c", "updates": [
            {"q": {"a": 1}, "u": {"$set": {"b": 1}}, "multi": true},
            {"q": {"_id": 3}, "u": {"$set": {"b": 1}}},
            {"q": {"_id": 99}, "u": {"$set": {"b": 1}}},
        ]})
        .await;
    assert_eq!(num(reply.get("n")), 3.0, "{reply}");
    assert_eq!(num(reply.get("nModified")), 3.0);

    let res = env
        .coll("c")
        .update_many(doc! {}, doc! {"$set": {"b": 2}})
        .await
        .unwrap();
    assert_eq!((res.matched_count, res.modified_count), (3, 3));
    assert_eq!(res.upserted_id, None);
}

// Manual: "db.collection.update() — Upsert Behavior": the new document is seeded from the
// equality clauses of the query (including $eq, dotted paths and $and), then the update
// applies; $setOnInsert only on insert.
#[tokio::test]
async fn upsert_seeds_from_equality_filter() {
    let env = start("upsert_seeds").await;
    let reply = env
        .run(doc! {"update": "c", "updates": [{
            "q": {"a": 1, "b.c": 2, "d": {"$gt": 5}, "e": {"$eq": 3}, "$and": [{"f": "x"}]},
            "u": {"$set": {"x": 1}, "$setOnInsert": {"created": true}},
            "upsert": true,
        }]})
        .await;
    assert_eq!(num(reply.get("n")), 1.0, "{reply}");
    assert_eq!(num(reply.get("nModified")), 0.0);
    let upserted = reply.get_array("upserted").expect("upserted");
    assert_eq!(upserted.len(), 1);
    let entry = upserted[0].as_document().unwrap();
    assert_eq!(num(entry.get("index")), 0.0);
    let id = entry.get_object_id("_id").expect("generated ObjectId _id");
    let got = env.coll("c").find_one(doc! {}).await.unwrap().unwrap();
    assert_eq!(got.get_object_id("_id").unwrap(), id);
    assert_eq!(got.get_i32("a").unwrap(), 1);
    assert_eq!(got.get_document("b").unwrap(), &doc! {"c": 2});
    assert!(
        got.get("d").is_none(),
        "non-equality clauses do not seed: {got}"
    );
    assert_eq!(got.get_i32("e").unwrap(), 3);
    assert_eq!(got.get_str("f").unwrap(), "x");
    assert_eq!(got.get_i32("x").unwrap(), 1);
    assert!(got.get_bool("created").unwrap());

    // Matching now: $setOnInsert does nothing.
    let res = env
        .coll("c")
        .update_one(
            doc! {"a": 1},
            doc! {"$set": {"x": 2}, "$setOnInsert": {"created": false}},
        )
        .upsert(true)
        .await
        .unwrap();
    assert_eq!((res.matched_count, res.modified_count), (1, 1));
    assert_eq!(res.upserted_id, None);
    let got = env.coll("c").find_one(doc! {}).await.unwrap().unwrap();
    assert!(got.get_bool("created").unwrap());

    // The _id of the filter is the _id of the upserted document.
    let res = env
        .coll("c")
        .update_one(doc! {"_id": "k"}, doc! {"$inc": {"n": 1}})
        .upsert(true)
        .await
        .unwrap();
    assert_eq!(res.upserted_id, Some(Bson::String("k".into())));
    assert_eq!(
        env.coll("c").find_one(doc! {"_id": "k"}).await.unwrap(),
        Some(doc! {"_id": "k", "n": 1})
    );
}

// Manual: "db.collection.replaceOne()" — the replacement keeps the _id; an upserted
// replacement takes only the _id from the filter; changing _id is ImmutableField (66).
#[tokio::test]
async fn replacement_documents() {
    let env = start("replacement_documents").await;
    let c = env.coll("c");
    c.insert_one(doc! {"_id": 1, "a": 1, "b": 1}).await.unwrap();
    let res = c.replace_one(doc! {"_id": 1}, doc! {"c": 3}).await.unwrap();
    assert_eq!((res.matched_count, res.modified_count), (1, 1));
    assert_eq!(
        c.find_one(doc! {"_id": 1}).await.unwrap(),
        Some(doc! {"_id": 1, "c": 3})
    );
    let res = c
        .replace_one(doc! {"_id": 2, "a": 5}, doc! {"b": 2})
        .upsert(true)
        .await
        .unwrap();
    assert_eq!(res.upserted_id, Some(Bson::Int32(2)));
    assert_eq!(
        c.find_one(doc! {"_id": 2}).await.unwrap(),
        Some(doc! {"_id": 2, "b": 2})
    );
    expect_code(
        c.replace_one(doc! {"_id": 1}, doc! {"_id": 5, "c": 4})
            .await,
        66,
    );
    // A replacement whose _id equals the current one is allowed.
    c.replace_one(doc! {"_id": 1}, doc! {"_id": 1, "c": 4})
        .await
        .unwrap();
    assert_eq!(
        c.find_one(doc! {"_id": 1}).await.unwrap(),
        Some(doc! {"_id": 1, "c": 4})
    );
}

// Manual: "Updates with Aggregation Pipeline" and "update" command `let` (5.0+): `$$var`
// refers to the command's let variables.
#[tokio::test]
async fn update_pipeline_with_let_variables() {
    let env = start("update_pipeline_let").await;
    let c = env.coll("accounts");
    c.insert_one(doc! {"_id": "acc-1", "balance": 100, "note": "x"})
        .await
        .unwrap();
    let res = c
        .update_one(
            doc! {"_id": "acc-1"},
            vec![
                doc! {"$set": {
                    "balance": {"$subtract": ["$balance", "$$event.data.amount"]},
                    "lastEvent": "$$event.type",
                }},
                doc! {"$unset": "note"},
            ],
        )
        .let_vars(doc! {"event": {"type": "Withdrawn", "data": {"amount": 30}}})
        .await
        .unwrap();
    assert_eq!((res.matched_count, res.modified_count), (1, 1));
    assert_eq!(
        c.find_one(doc! {"_id": "acc-1"}).await.unwrap(),
        Some(doc! {"_id": "acc-1", "balance": 70, "lastEvent": "Withdrawn"})
    );

    // Upsert with a pipeline: the seed comes from the filter, then the pipeline runs.
    let res = c
        .update_one(
            doc! {"_id": "acc-2"},
            vec![doc! {"$set": {"balance": {"$add": [{"$ifNull": ["$balance", 0]}, "$$amount"]}}}],
        )
        .let_vars(doc! {"amount": 5})
        .upsert(true)
        .await
        .unwrap();
    assert_eq!(res.upserted_id, Some(Bson::String("acc-2".into())));
    assert_eq!(
        c.find_one(doc! {"_id": "acc-2"}).await.unwrap(),
        Some(doc! {"_id": "acc-2", "balance": 5})
    );

    // find also takes let (manual: "find" command, `let`).
    let found = collect(
        c.find(doc! {"$expr": {"$eq": ["$balance", "$$target"]}})
            .let_vars(doc! {"target": 70})
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(ids(&found), vec![Bson::String("acc-1".into())]);
}

// Manual: "delete" — reply n; limit 1 deletes one, limit 0 all matching.
#[tokio::test]
async fn delete_counts() {
    let env = start("delete_counts").await;
    env.run(doc! {"insert": "c", "documents": [{"_id": 1, "a": 1}, {"_id": 2, "a": 1}, {"_id": 3, "a": 1}, {"_id": 4, "a": 2}]})
        .await;
    let reply = env
        .run(doc! {"delete": "c", "deletes": [{"q": {"a": 1}, "limit": 1}]})
        .await;
    assert_eq!(num(reply.get("n")), 1.0, "{reply}");
    let reply = env
        .run(doc! {"delete": "c", "deletes": [{"q": {"a": 1}, "limit": 0}, {"q": {"a": 9}, "limit": 0}]})
        .await;
    assert_eq!(num(reply.get("n")), 2.0, "{reply}");
    let res = env.coll("c").delete_many(doc! {}).await.unwrap();
    assert_eq!(res.deleted_count, 1);
    let res = env.coll("c").delete_one(doc! {}).await.unwrap();
    assert_eq!(res.deleted_count, 0);
}

// Manual: "find" and "getMore" — batches, cursor ids (int64, 0 when exhausted), ns,
// sort/skip/limit/projection.
#[tokio::test]
async fn find_batches_across_get_more() {
    let env = start("find_batches").await;
    let docs: Vec<Document> = (0..25)
        .map(|i| doc! {"_id": i, "v": 24 - i, "pad": "p"})
        .collect();
    env.coll("c").insert_many(docs).await.unwrap();

    let all = collect(
        env.coll("c")
            .find(doc! {"v": {"$gte": 0}})
            .sort(doc! {"v": 1})
            .batch_size(4)
            .projection(doc! {"pad": 0})
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(all.len(), 25);
    assert_eq!(all[0], doc! {"_id": 24, "v": 0});
    assert_eq!(all[24], doc! {"_id": 0, "v": 24});

    let page = collect(
        env.coll("c")
            .find(doc! {})
            .sort(doc! {"_id": -1})
            .skip(3)
            .limit(5)
            .batch_size(2)
            .projection(doc! {"v": 1, "_id": 0})
            .await
            .unwrap(),
    )
    .await;
    let vs: Vec<i32> = page.iter().map(|d| d.get_i32("v").unwrap()).collect();
    assert_eq!(vs, vec![3, 4, 5, 6, 7]);
    assert!(page.iter().all(|d| d.len() == 1));

    let reply = env
        .run(doc! {"find": "c", "filter": {}, "sort": {"_id": 1}, "batchSize": 10})
        .await;
    let cursor = reply.get_document("cursor").unwrap();
    assert_eq!(cursor.get_str("ns").unwrap(), format!("{}.c", env.db_name));
    assert_eq!(cursor.get_array("firstBatch").unwrap().len(), 10);
    let id = match cursor.get("id") {
        Some(Bson::Int64(id)) => *id,
        other => panic!("cursor id must be int64, got {other:?}"),
    };
    assert_ne!(id, 0);
    let more = env
        .run(doc! {"getMore": id, "collection": "c", "batchSize": 10})
        .await;
    let cursor = more.get_document("cursor").unwrap();
    assert_eq!(cursor.get_i64("id").unwrap(), id);
    let batch = cursor.get_array("nextBatch").unwrap();
    assert_eq!(batch[0].as_document().unwrap().get_i32("_id").unwrap(), 10);
    let last = env
        .run(doc! {"getMore": id, "collection": "c", "batchSize": 10})
        .await;
    let cursor = last.get_document("cursor").unwrap();
    assert_eq!(cursor.get_array("nextBatch").unwrap().len(), 5);
    assert_eq!(
        cursor.get_i64("id").unwrap(),
        0,
        "exhausted cursor has id 0"
    );

    // Everything fits in the first batch: id 0 at once.
    let reply = env.run(doc! {"find": "c", "filter": {"_id": 1}}).await;
    assert_eq!(
        reply.get_document("cursor").unwrap().get_i64("id").unwrap(),
        0
    );
    // singleBatch closes the cursor after the first batch.
    let reply = env
        .run(doc! {"find": "c", "batchSize": 3, "singleBatch": true})
        .await;
    let cursor = reply.get_document("cursor").unwrap();
    assert_eq!(cursor.get_array("firstBatch").unwrap().len(), 3);
    assert_eq!(cursor.get_i64("id").unwrap(), 0);
}

// Manual: "killCursors" — killed ids are reported, a later getMore is CursorNotFound (43).
#[tokio::test]
async fn kill_cursors_then_get_more_fails() {
    let env = start("kill_cursors").await;
    let docs: Vec<Document> = (0..10).map(|i| doc! {"_id": i}).collect();
    env.coll("c").insert_many(docs).await.unwrap();
    let reply = env.run(doc! {"find": "c", "batchSize": 2}).await;
    let id = reply.get_document("cursor").unwrap().get_i64("id").unwrap();
    let killed = env
        .run(doc! {"killCursors": "c", "cursors": [id, 12345_i64]})
        .await;
    assert_eq!(
        killed.get_array("cursorsKilled").unwrap(),
        &vec![Bson::Int64(id)]
    );
    assert_eq!(
        killed.get_array("cursorsNotFound").unwrap(),
        &vec![Bson::Int64(12345)]
    );
    let (code, _) = env.run_err(doc! {"getMore": id, "collection": "c"}).await;
    assert_eq!(code, 43);
}

// Manual: "findAndModify" — value before/after, lastErrorObject {n, updatedExisting,
// upserted}, sort picks the document, remove.
#[tokio::test]
async fn find_and_modify() {
    let env = start("find_and_modify").await;
    let c = env.coll("c");
    c.insert_many(vec![doc! {"_id": 1, "q": 1}, doc! {"_id": 2, "q": 1}])
        .await
        .unwrap();
    let before = c
        .find_one_and_update(doc! {"q": 1}, doc! {"$inc": {"n": 1}})
        .sort(doc! {"_id": -1})
        .await
        .unwrap();
    assert_eq!(before, Some(doc! {"_id": 2, "q": 1}));
    let after = c
        .find_one_and_update(doc! {"_id": 2}, doc! {"$inc": {"n": 1}})
        .return_document(ReturnDocument::After)
        .projection(doc! {"n": 1})
        .await
        .unwrap();
    assert_eq!(after, Some(doc! {"_id": 2, "n": 2}));

    let reply = env
        .run(doc! {"findAndModify": "c", "query": {"_id": 1}, "update": {"$set": {"x": 1}}})
        .await;
    assert_eq!(
        reply.get_document("lastErrorObject").unwrap(),
        &doc! {"n": 1, "updatedExisting": true},
        "{reply}"
    );
    assert_eq!(
        reply.get_document("value").unwrap(),
        &doc! {"_id": 1, "q": 1}
    );

    let reply = env
        .run(
            doc! {"findAndModify": "c", "query": {"_id": 3}, "update": {"$set": {"x": 1}},
            "upsert": true, "new": true},
        )
        .await;
    let leo = reply.get_document("lastErrorObject").unwrap();
    assert_eq!(num(leo.get("n")), 1.0, "{reply}");
    assert!(!leo.get_bool("updatedExisting").unwrap());
    assert_eq!(leo.get_i32("upserted").unwrap(), 3);
    assert_eq!(
        reply.get_document("value").unwrap(),
        &doc! {"_id": 3, "x": 1}
    );

    let reply = env
        .run(doc! {"findAndModify": "c", "query": {"_id": 99}, "update": {"$set": {"x": 1}}})
        .await;
    assert_eq!(
        reply.get_document("lastErrorObject").unwrap(),
        &doc! {"n": 0, "updatedExisting": false},
        "{reply}"
    );
    assert_eq!(reply.get("value"), Some(&Bson::Null));

    let replaced = c
        .find_one_and_replace(doc! {"_id": 1}, doc! {"r": true})
        .return_document(ReturnDocument::After)
        .await
        .unwrap();
    assert_eq!(replaced, Some(doc! {"_id": 1, "r": true}));

    let reply = env
        .run(doc! {"findAndModify": "c", "query": {"_id": 1}, "remove": true})
        .await;
    assert_eq!(
        reply.get_document("lastErrorObject").unwrap(),
        &doc! {"n": 1},
        "{reply}"
    );
    let deleted = c.find_one_and_delete(doc! {"_id": 2}).await.unwrap();
    assert_eq!(deleted, Some(doc! {"_id": 2, "q": 1, "n": 2}));
    assert_eq!(c.count_documents(doc! {}).await.unwrap(), 1);
}

// Manual: "count" (query, skip, limit) and "distinct" (array values are unwound).
#[tokio::test]
async fn count_and_distinct() {
    let env = start("count_and_distinct").await;
    let c = env.coll("c");
    c.insert_many(vec![
        doc! {"_id": 1, "k": "a", "tags": [1, 2]},
        doc! {"_id": 2, "k": "b", "tags": 2},
        doc! {"_id": 3, "k": "a", "tags": [3]},
        doc! {"_id": 4, "k": "c"},
    ])
    .await
    .unwrap();
    let reply = env.run(doc! {"count": "c", "query": {"k": "a"}}).await;
    assert_eq!(num(reply.get("n")), 2.0, "{reply}");
    let reply = env
        .run(doc! {"count": "c", "query": {}, "skip": 1, "limit": 2})
        .await;
    assert_eq!(num(reply.get("n")), 2.0, "{reply}");
    assert_eq!(c.estimated_document_count().await.unwrap(), 4);
    assert_eq!(c.count_documents(doc! {"k": "a"}).await.unwrap(), 2);
    let reply = env.run(doc! {"count": "missing"}).await;
    assert_eq!(num(reply.get("n")), 0.0);

    let mut keys = c.distinct("k", doc! {}).await.unwrap();
    keys.sort_by_key(|b| b.as_str().unwrap_or_default().to_string());
    assert_eq!(
        keys,
        vec![Bson::from("a"), Bson::from("b"), Bson::from("c")]
    );
    let mut tags: Vec<i32> = c
        .distinct("tags", doc! {})
        .await
        .unwrap()
        .iter()
        .map(|b| b.as_i32().unwrap())
        .collect();
    tags.sort();
    assert_eq!(tags, vec![1, 2, 3]);
    let filtered = c.distinct("k", doc! {"_id": {"$gt": 2}}).await.unwrap();
    assert_eq!(filtered.len(), 2);
}

// Manual: "Aggregation Pipeline Stages" ($match $sort $skip $limit $project $addFields $set
// $unset $count).
#[tokio::test]
async fn aggregate_shaping_stages() {
    let env = start("aggregate_shaping").await;
    let c = env.coll("c");
    let docs: Vec<Document> = (1..=10)
        .map(|i| doc! {"_id": i, "v": i * 10, "odd": i % 2 == 1, "x": "drop"})
        .collect();
    c.insert_many(docs).await.unwrap();
    let out = aggregate(
        &c,
        vec![
            doc! {"$match": {"odd": true}},
            doc! {"$sort": {"v": -1}},
            doc! {"$skip": 1},
            doc! {"$limit": 2},
            doc! {"$addFields": {"w": {"$multiply": ["$v", 2]}}},
            doc! {"$set": {"tag": "t"}},
            doc! {"$unset": ["x", "odd"]},
            doc! {"$project": {"v": 1, "w": 1, "tag": 1}},
        ],
    )
    .await;
    assert_eq!(
        out,
        vec![
            doc! {"_id": 7, "v": 70, "w": 140, "tag": "t"},
            doc! {"_id": 5, "v": 50, "w": 100, "tag": "t"},
        ]
    );
    let excluded = aggregate(
        &c,
        vec![
            doc! {"$match": {"_id": 1}},
            doc! {"$project": {"x": 0, "_id": 0}},
        ],
    )
    .await;
    assert_eq!(excluded, vec![doc! {"v": 10, "odd": true}]);
    let counted = aggregate(
        &c,
        vec![doc! {"$match": {"v": {"$gt": 35}}}, doc! {"$count": "n"}],
    )
    .await;
    assert_eq!(counted, vec![doc! {"n": 7}]);
    // $count over nothing returns no document at all.
    let none = aggregate(&c, vec![doc! {"$match": {"v": -1}}, doc! {"$count": "n"}]).await;
    assert!(none.is_empty());
}

// Manual: "$group" with accumulators $sum $avg $min $max $first $last $push $count.
#[tokio::test]
async fn aggregate_group_accumulators() {
    let env = start("aggregate_group").await;
    let c = env.coll("c");
    c.insert_many(vec![
        doc! {"_id": 1, "k": "a", "v": 3},
        doc! {"_id": 2, "k": "b", "v": 1},
        doc! {"_id": 3, "k": "a", "v": 5},
        doc! {"_id": 4, "k": "a", "v": 4},
        doc! {"_id": 5, "k": "b", "v": "text"},
    ])
    .await
    .unwrap();
    let out = aggregate(
        &c,
        vec![
            doc! {"$sort": {"_id": 1}},
            doc! {"$group": {
                "_id": "$k",
                "total": {"$sum": "$v"},
                "n": {"$sum": 1},
                "lo": {"$min": "$v"},
                "hi": {"$max": "$v"},
                "first": {"$first": "$v"},
                "last": {"$last": "$v"},
                "all": {"$push": "$_id"},
                "cnt": {"$count": {}},
            }},
            doc! {"$sort": {"_id": 1}},
        ],
    )
    .await;
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(
        out[0],
        doc! {"_id": "a", "total": 12, "n": 3, "lo": 3, "hi": 5, "first": 3, "last": 4, "all": [1, 3, 4], "cnt": 3}
    );
    // $sum ignores non-numbers; $min/$max compare across types by BSON order (strings > numbers).
    assert_eq!(
        out[1],
        doc! {"_id": "b", "total": 1, "n": 2, "lo": 1, "hi": "text", "first": 1, "last": "text", "all": [2, 5], "cnt": 2}
    );
    let whole = aggregate(
        &c,
        vec![doc! {"$group": {"_id": null, "avg": {"$avg": "$v"}, "n": {"$sum": 1}}}],
    )
    .await;
    assert_eq!(whole, vec![doc! {"_id": null, "avg": 3.25, "n": 5}]);
}

// Manual: "Aggregation Pipeline Stages" — an unknown stage is 40324; "aggregate" needs a
// cursor option (9) unless explain.
#[tokio::test]
async fn aggregate_errors() {
    let env = start("aggregate_errors").await;
    env.coll("c").insert_one(doc! {"a": 1}).await.unwrap();
    let (code, _) = env
        .run_err(doc! {"aggregate": "c", "pipeline": [{"$noSuchStage": {}}], "cursor": {}})
        .await;
    assert_eq!(code, 40324);
    let (code, _) = env
        .run_err(doc! {"aggregate": "c", "pipeline": [{"$match": {}}]})
        .await;
    assert_eq!(code, 9);
}

// Manual: "Database Commands" — unknown command 59, unknown field 40415 (IDL parsing).
#[tokio::test]
async fn unknown_command_and_unknown_field() {
    let env = start("unknown_command_field").await;
    let (code, reply) = env.run_err(doc! {"frobnicate": "c"}).await;
    assert_eq!(code, 59);
    assert_eq!(reply.get_str("codeName").unwrap(), "CommandNotFound");
    let (code, reply) = env
        .run_err(doc! {"find": "c", "filter": {}, "bogusField": 1})
        .await;
    assert_eq!(code, 40415, "{reply}");
    assert!(
        reply
            .get_str("errmsg")
            .unwrap()
            .contains("BSON field 'find.bogusField' is an unknown field"),
        "{reply}"
    );
    let (code, _) = env
        .run_err(doc! {"insert": "c", "documents": [{}], "bogus": true})
        .await;
    assert_eq!(code, 40415);
}

// mongod supports collation; mongo-sim may not. Either the option is honoured (manual:
// "Collation", strength 2 is case-insensitive) or rejected with 115 CommandNotSupported —
// never ignored.
#[tokio::test]
async fn unsupported_option_is_rejected_not_ignored() {
    let env = start("unsupported_option").await;
    env.coll("c")
        .insert_many(vec![doc! {"_id": 1, "s": "a"}, doc! {"_id": 2, "s": "A"}])
        .await
        .unwrap();
    let result = env
        .db
        .run_command(
            doc! {"find": "c", "filter": {"s": "a"}, "collation": {"locale": "en", "strength": 2}},
        )
        .await;
    match result {
        Ok(reply) => {
            let batch = reply
                .get_document("cursor")
                .unwrap()
                .get_array("firstBatch")
                .unwrap();
            assert_eq!(batch.len(), 2, "collation honoured: {reply}");
        }
        Err(e) => assert_eq!(common::error_code(&e), Some(115), "{e}"),
    }
}

async fn seed_items(env: &common::TestEnv) -> mongodb::Collection<Document> {
    let c = env.coll("c");
    c.insert_one(doc! {"_id": 1, "items": [{"k": "a", "q": 1}, {"k": "b", "q": 2}]})
        .await
        .unwrap();
    c
}

// Manual: "$ (update)" — the first array element matched by the query; without the array in
// the query the statement fails (2 BadValue, as a write error).
#[tokio::test]
async fn positional_operator_update() {
    let env = start("positional_dollar").await;
    let c = seed_items(&env).await;
    c.update_one(
        doc! {"_id": 1, "items.k": "b"},
        doc! {"$set": {"items.$.q": 9}},
    )
    .await
    .unwrap();
    assert_eq!(
        c.find_one(doc! {"_id": 1}).await.unwrap(),
        Some(doc! {"_id": 1, "items": [{"k": "a", "q": 1}, {"k": "b", "q": 9}]})
    );
    let reply = env
        .run(doc! {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"$set": {"items.$.q": 0}}}]})
        .await;
    let errors = reply.get_array("writeErrors").expect("writeErrors");
    assert_eq!(
        num(errors[0].as_document().unwrap().get("code")),
        2.0,
        "{reply}"
    );
}

// Manual: "$ (update)" with findAndModify, and an upsert that inserts (no match to use).
#[tokio::test]
async fn positional_operator_find_and_modify_and_upsert() {
    let env = start("positional_fam").await;
    seed_items(&env).await;
    let reply = env
        .run(doc! {
            "findAndModify": "c",
            "query": {"items": {"$elemMatch": {"k": "b"}}},
            "update": {"$inc": {"items.$.q": 10}},
            "new": true,
        })
        .await;
    assert_eq!(
        reply.get_document("value").unwrap(),
        &doc! {"_id": 1, "items": [{"k": "a", "q": 1}, {"k": "b", "q": 12}]},
        "{reply}"
    );
    let reply = env
        .run(doc! {"update": "c", "updates": [{
            "q": {"_id": 2, "items.k": "z"},
            "u": {"$set": {"items.$.q": 0}},
            "upsert": true,
        }]})
        .await;
    let errors = reply.get_array("writeErrors").expect("writeErrors");
    assert_eq!(
        num(errors[0].as_document().unwrap().get("code")),
        2.0,
        "{reply}"
    );
}

// Manual: "$ (projection)" — only the array element the query matched.
#[tokio::test]
async fn positional_projection() {
    let env = start("positional_projection").await;
    let c = seed_items(&env).await;
    let found = c
        .find_one(doc! {"items.q": {"$gt": 1}})
        .projection(doc! {"items.$": 1})
        .await
        .unwrap();
    assert_eq!(found, Some(doc! {"_id": 1, "items": [{"k": "b", "q": 2}]}));
}

// Manual: "$[] (update)" — every element of the array.
#[tokio::test]
async fn all_positional_operator_update() {
    let env = start("all_positional").await;
    let c = seed_items(&env).await;
    c.update_one(doc! {"_id": 1}, doc! {"$inc": {"items.$[].q": 1}})
        .await
        .unwrap();
    assert_eq!(
        c.find_one(doc! {"_id": 1}).await.unwrap(),
        Some(doc! {"_id": 1, "items": [{"k": "a", "q": 2}, {"k": "b", "q": 3}]})
    );
}

// Manual: "$[<identifier>] (update)" with arrayFilters — the elements the filter selects.
#[tokio::test]
async fn filtered_positional_operator_update() {
    let env = start("filtered_positional").await;
    let c = seed_items(&env).await;
    c.update_one(doc! {"_id": 1}, doc! {"$set": {"items.$[it].flag": true}})
        .array_filters(vec![doc! {"it.q": {"$gte": 2}}])
        .await
        .unwrap();
    assert_eq!(
        c.find_one(doc! {"_id": 1}).await.unwrap(),
        Some(doc! {"_id": 1, "items": [{"k": "a", "q": 1}, {"k": "b", "q": 2, "flag": true}]})
    );
}

// Manual: "Project Fields to Return from Query" — dotted inclusion through arrays of
// documents, and _id is kept unless excluded; mixing inclusion and exclusion is an error (31254).
#[tokio::test]
async fn find_projection_paths() {
    let env = start("find_projection_paths").await;
    let c = env.coll("c");
    c.insert_one(
        doc! {"_id": 1, "a": {"x": 1, "y": 2}, "items": [{"k": "a", "q": 1}, {"k": "b"}], "z": 0},
    )
    .await
    .unwrap();
    let got = c
        .find_one(doc! {"_id": 1})
        .projection(doc! {"a.x": 1, "items.k": 1})
        .await
        .unwrap();
    assert_eq!(
        got,
        Some(doc! {"_id": 1, "a": {"x": 1}, "items": [{"k": "a"}, {"k": "b"}]})
    );
    let got = c
        .find_one(doc! {"_id": 1})
        .projection(doc! {"a.y": 0, "items": 0, "_id": 0})
        .await
        .unwrap();
    assert_eq!(got, Some(doc! {"a": {"x": 1}, "z": 0}));
    let (code, _) = env
        .run_err(doc! {"find": "c", "projection": {"a": 1, "z": 0}})
        .await;
    assert_eq!(code, 31254);
}

// Manual: "listCollections" — {name, type, options, info {readOnly, uuid}, idIndex}; nameOnly
// gives just name and type; "create" on an existing name is NamespaceExists (48);
// "renameCollection" onto an existing collection needs dropTarget (48 otherwise).
#[tokio::test]
async fn list_create_rename_collections() {
    let env = start("collections_ddl").await;
    env.run(doc! {"create": "c1"}).await;
    env.coll("c2").insert_one(doc! {"_id": 1}).await.unwrap();
    let reply = env
        .run(doc! {"listCollections": 1, "filter": {"name": "c1"}})
        .await;
    let batch = reply
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap();
    assert_eq!(batch.len(), 1, "{reply}");
    let info = batch[0].as_document().unwrap();
    assert_eq!(info.get_str("name").unwrap(), "c1");
    assert_eq!(info.get_str("type").unwrap(), "collection");
    assert_eq!(info.get_document("options").unwrap(), &doc! {});
    assert!(
        !info
            .get_document("info")
            .unwrap()
            .get_bool("readOnly")
            .unwrap()
    );
    assert!(matches!(
        info.get_document("info").unwrap().get("uuid"),
        Some(Bson::Binary(b)) if b.subtype == mongodb::bson::spec::BinarySubtype::Uuid
    ));
    assert_eq!(
        info.get_document("idIndex").unwrap(),
        &doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"}
    );
    let reply = env.run(doc! {"listCollections": 1, "nameOnly": true}).await;
    let mut names: Vec<Document> = reply
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap()
        .iter()
        .map(|b| b.as_document().unwrap().clone())
        .collect();
    names.sort_by_key(|d| d.get_str("name").unwrap().to_string());
    assert_eq!(
        names,
        vec![
            doc! {"name": "c1", "type": "collection"},
            doc! {"name": "c2", "type": "collection"}
        ]
    );

    let (code, _) = env.run_err(doc! {"create": "c1"}).await;
    assert_eq!(code, 48);
    let from = format!("{}.c2", env.db_name);
    let to = format!("{}.c1", env.db_name);
    let result = env
        .client
        .database("admin")
        .run_command(doc! {"renameCollection": &from, "to": &to})
        .await;
    expect_code(result, 48);
    env.admin(doc! {"renameCollection": &from, "to": &to, "dropTarget": true})
        .await;
    assert_eq!(
        env.coll("c1").find_one(doc! {}).await.unwrap(),
        Some(doc! {"_id": 1})
    );
    assert_eq!(env.db.list_collection_names().await.unwrap(), vec!["c1"]);
}

// Manual: "$unwind" (includeArrayIndex as long, preserveNullAndEmptyArrays), "$replaceRoot"
// (a non-document newRoot fails with 40228), "$sortByCount", "$addToSet".
#[tokio::test]
async fn aggregate_unwind_replace_root_sort_by_count() {
    let env = start("aggregate_unwind").await;
    let c = env.coll("c");
    c.insert_many(vec![
        doc! {"_id": 1, "tags": ["a", "b"], "k": "x", "sub": {"v": 1}},
        doc! {"_id": 2, "tags": [], "k": "x", "sub": {"v": 2}},
        doc! {"_id": 3, "k": "y", "sub": {"v": 3}},
        doc! {"_id": 4, "tags": "c", "k": "x", "sub": 5},
    ])
    .await
    .unwrap();
    let unwound = aggregate(
        &c,
        vec![
            doc! {"$unwind": {"path": "$tags", "includeArrayIndex": "i"}},
            doc! {"$project": {"tags": 1, "i": 1}},
        ],
    )
    .await;
    assert_eq!(
        unwound,
        vec![
            doc! {"_id": 1, "tags": "a", "i": 0_i64},
            doc! {"_id": 1, "tags": "b", "i": 1_i64},
            doc! {"_id": 4, "tags": "c", "i": Bson::Null},
        ]
    );
    let preserved = aggregate(
        &c,
        vec![doc! {"$unwind": {"path": "$tags", "preserveNullAndEmptyArrays": true}}],
    )
    .await;
    assert_eq!(preserved.len(), 5);

    let counted = aggregate(&c, vec![doc! {"$sortByCount": "$k"}]).await;
    assert_eq!(
        counted,
        vec![doc! {"_id": "x", "count": 3}, doc! {"_id": "y", "count": 1}]
    );
    let mut sets = aggregate(
        &c,
        vec![doc! {"$group": {"_id": "$k", "ids": {"$addToSet": "$k"}}}],
    )
    .await;
    sets.sort_by_key(|d| d.get_str("_id").unwrap().to_string());
    assert_eq!(sets[0], doc! {"_id": "x", "ids": ["x"]});

    let roots = aggregate(
        &c,
        vec![
            doc! {"$match": {"_id": {"$lte": 2}}},
            doc! {"$replaceRoot": {"newRoot": "$sub"}},
        ],
    )
    .await;
    assert_eq!(roots, vec![doc! {"v": 1}, doc! {"v": 2}]);
    let (code, _) = env
        .run_err(doc! {"aggregate": "c", "pipeline": [{"$replaceRoot": {"newRoot": "$sub"}}], "cursor": {}})
        .await;
    assert_eq!(code, 40228, "newRoot of a number");
}

// Manual: "Write Concern" — on a single-node replica set w: "majority" is satisfied, w: 2 can
// never be: the write is applied and the reply (ok: 1) carries writeConcernError 100
// UnsatisfiableWriteConcern.
#[tokio::test]
async fn write_concern_on_a_single_node() {
    let env = start("write_concern_single_node").await;
    let hello = env.admin(doc! {"hello": 1}).await;
    if hello.get_array("hosts").map(|h| h.len()).unwrap_or(0) > 1 {
        println!("skipping: w: 2 is satisfiable on a multi-member deployment");
        return;
    }
    let reply = env
        .run(doc! {"insert": "c", "documents": [{"_id": 1}], "writeConcern": {"w": "majority", "wtimeout": 1000}})
        .await;
    assert!(reply.get("writeConcernError").is_none(), "{reply}");
    let reply = env
        .run(doc! {"insert": "c", "documents": [{"_id": 2}], "writeConcern": {"w": 2}})
        .await;
    assert_eq!(num(reply.get("n")), 1.0, "{reply}");
    let wce = reply
        .get_document("writeConcernError")
        .expect("writeConcernError");
    assert_eq!(num(wce.get("code")), 100.0, "{wce}");
    assert_eq!(
        wce.get_str("codeName").unwrap(),
        "UnsatisfiableWriteConcern"
    );
    assert_eq!(env.coll("c").count_documents(doc! {}).await.unwrap(), 2);
}

// Manual: "Transactions" — mongo-sim may not offer transactions, but then it must refuse them;
// accepting the writes without transaction semantics would be wrong. If it accepts them,
// aborting must roll back.
#[tokio::test]
async fn transactions_are_honoured_or_refused() {
    let env = start("transactions").await;
    env.run(doc! {"create": "c"}).await;
    let coll = env.coll("c");
    let mut session = env.client.start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    match coll.insert_one(doc! {"_id": 1}).session(&mut session).await {
        Err(e) => {
            assert!(
                common::error_code(&e).is_some(),
                "refused by the server: {e}"
            );
            assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 0);
        }
        Ok(_) => {
            assert_eq!(
                coll.count_documents(doc! {}).await.unwrap(),
                0,
                "uncommitted writes are invisible outside the transaction"
            );
            session.abort_transaction().await.unwrap();
            assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 0);
        }
    }
}

// Manual: "comment" (any command, 4.4+), "maxTimeMS", "readConcern" and aggregate `let` are
// accepted options of the commands drivers send.
#[tokio::test]
async fn common_command_options_are_accepted() {
    let env = start("common_options").await;
    env.coll("c")
        .insert_many(vec![doc! {"_id": 1, "v": 1}, doc! {"_id": 2, "v": 2}])
        .await
        .unwrap();
    let reply = env
        .run(
            doc! {"find": "c", "filter": {"v": 2}, "comment": "why", "maxTimeMS": 5000,
            "readConcern": {"level": "majority"}},
        )
        .await;
    assert_eq!(
        reply
            .get_document("cursor")
            .unwrap()
            .get_array("firstBatch")
            .unwrap()
            .len(),
        1
    );
    env.run(
        doc! {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"$set": {"w": 1}}}],
        "comment": {"source": "test"}, "writeConcern": {"w": 1}},
    )
    .await;
    env.run(doc! {"insert": "c", "documents": [{"_id": 3}], "comment": "x", "bypassDocumentValidation": false})
        .await;
    env.run(doc! {"delete": "c", "deletes": [{"q": {"_id": 3}, "limit": 1}], "comment": "x"})
        .await;
    let out = collect(
        env.coll("c")
            .aggregate(vec![
                doc! {"$match": {"$expr": {"$eq": ["$v", "$$want"]}}},
                doc! {"$project": {"_id": 1}},
            ])
            .let_vars(doc! {"want": 1})
            .comment("agg")
            .max_time(std::time::Duration::from_secs(5))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(out, vec![doc! {"_id": 1}]);
}

// Manual: "Documents — The _id Field": _id may not be an array; such an insert fails as a write
// error, BadValue (2) "can't use an array for _id" (mongod's insert validation). An upsert may
// not set a different _id than the one its query fixes (66 ImmutableField).
#[tokio::test]
async fn id_field_rules() {
    let env = start("id_field_rules").await;
    let reply = env
        .run(doc! {"insert": "c", "documents": [{"_id": [1, 2]}, {"_id": 3}], "ordered": false})
        .await;
    assert_eq!(num(reply.get("n")), 1.0, "{reply}");
    let errors = reply.get_array("writeErrors").expect("writeErrors");
    assert_eq!(errors.len(), 1);
    let we = errors[0].as_document().unwrap();
    assert_eq!(num(we.get("index")), 0.0);
    assert_eq!(num(we.get("code")), 2.0, "{we}");
    assert_eq!(we.get_str("errmsg").unwrap(), "can't use an array for _id");
    // A document _id is fine.
    env.coll("c")
        .insert_one(doc! {"_id": {"a": 1, "b": 2}})
        .await
        .unwrap();
    expect_code(
        env.coll("c")
            .update_one(doc! {"_id": 10}, doc! {"$set": {"_id": 11}})
            .upsert(true)
            .await,
        66,
    );
    assert_eq!(env.coll("c").count_documents(doc! {}).await.unwrap(), 2);
}

// Manual: "Replica Set Oplog" — `local.oplog.rs` is read like a collection, and `$natural`
// order is the order of writes. A limited natural-order read returns exactly what the full
// scan returns in that order, whichever direction, filter and skip.
#[tokio::test]
async fn the_oplog_read_in_natural_order_with_a_limit_agrees_with_the_full_scan() {
    let env = start("oplog_natural_limit").await;
    for i in 0..5 {
        env.coll("c").insert_one(doc! {"_id": i}).await.unwrap();
    }
    let oplog = env
        .client
        .database("local")
        .collection::<Document>("oplog.rs");
    let all = collect(
        oplog
            .find(doc! {})
            .sort(doc! {"$natural": 1})
            .await
            .unwrap(),
    )
    .await;
    assert!(all.len() >= 5, "{all:?}");
    let oldest = oplog
        .find_one(doc! {})
        .sort(doc! {"$natural": 1})
        .await
        .unwrap();
    assert_eq!(oldest.as_ref(), all.first());

    let ns = format!("{}.c", env.db.name());
    let inserts: Vec<Document> = all
        .iter()
        .filter(|d| d.get_str("op") == Ok("i") && d.get_str("ns") == Ok(&ns))
        .cloned()
        .collect();
    assert_eq!(inserts.len(), 5);
    let newest_two = collect(
        oplog
            .find(doc! {"op": "i", "ns": &ns})
            .sort(doc! {"$natural": -1})
            .limit(2)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(newest_two, vec![inserts[4].clone(), inserts[3].clone()]);
    let second = collect(
        oplog
            .find(doc! {"op": "i", "ns": &ns})
            .sort(doc! {"$natural": 1})
            .skip(1)
            .limit(1)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(second, vec![inserts[1].clone()]);
}

// mongod 5.0+ stores `$`-prefixed field names, but a replacement document may not have one
// at its top (DollarPrefixedFieldName, "not allowed in the context of an update's
// replacement document"); an operator update may not mix in a plain field (FailedToParse).
#[tokio::test]
async fn replacements_refuse_top_level_dollar_fields() {
    let env = start("replacement_dollar").await;
    env.coll("c").insert_one(doc! {"_id": 1}).await.unwrap();
    let reply = env
        .run(doc! {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"a": 1, "$set": {"b": 1}}}]})
        .await;
    let error = reply.get_array("writeErrors").unwrap()[0]
        .as_document()
        .unwrap()
        .clone();
    assert_eq!(error.get_i32("code").unwrap(), 52);
    let reply = env
        .run(doc! {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"$set": {"b": 1}, "a": 1}}]})
        .await;
    let error = reply.get_array("writeErrors").unwrap()[0]
        .as_document()
        .unwrap()
        .clone();
    assert_eq!(error.get_i32("code").unwrap(), 9);
    let reply = env
        .run(doc! {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"a": {"$b": 1}}}]})
        .await;
    assert_eq!(reply.get_i32("nModified").unwrap(), 1);
}
