//! Indexes: unique constraints enforced on every write path with mongod's DuplicateKey shape,
//! and the index DDL commands.

mod common;

use common::{collect, expect_code, num, server_response, start};
use mongodb::IndexModel;
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::IndexOptions;

/// The single write error of a raw write reply (ok: 1 with writeErrors).
fn only_write_error(reply: &Document) -> Document {
    let errors = reply
        .get_array("writeErrors")
        .unwrap_or_else(|_| panic!("expected writeErrors in {reply}"));
    assert_eq!(errors.len(), 1, "{reply}");
    errors[0].as_document().unwrap().clone()
}

fn assert_duplicate(err: &Document, key_pattern: Document, key_value: Document) {
    assert_eq!(num(err.get("code")), 11000.0, "{err}");
    assert_eq!(
        err.get_document("keyPattern").unwrap(),
        &key_pattern,
        "{err}"
    );
    assert_eq!(err.get_document("keyValue").unwrap(), &key_value, "{err}");
    let msg = err.get_str("errmsg").unwrap();
    assert!(
        msg.starts_with("E11000 duplicate key error collection: "),
        "{msg}"
    );
}

async fn unique_index(env: &common::TestEnv, coll: &str, keys: Document) -> String {
    let model = IndexModel::builder()
        .keys(keys)
        .options(IndexOptions::builder().unique(true).build())
        .build();
    env.coll(coll).create_index(model).await.unwrap().index_name
}

// Manual: "Unique Indexes" and the DuplicateKey error (keyPattern/keyValue in the write error).
#[tokio::test]
async fn unique_index_rejects_duplicates_on_insert() {
    let env = start("unique_on_insert").await;
    let name = unique_index(&env, "users", doc! {"email": 1}).await;
    assert_eq!(name, "email_1");
    let users = env.coll("users");
    users
        .insert_one(doc! {"_id": 1, "email": "a@x"})
        .await
        .unwrap();
    let err = expect_code(
        users.insert_one(doc! {"_id": 2, "email": "a@x"}).await,
        11000,
    );
    assert!(err.to_string().contains("email_1"), "{err}");

    let reply = env
        .run(doc! {"insert": "users", "documents": [{"_id": 3, "email": "a@x"}]})
        .await;
    assert_eq!(num(reply.get("n")), 0.0);
    let we = only_write_error(&reply);
    assert_eq!(num(we.get("index")), 0.0);
    assert_duplicate(&we, doc! {"email": 1}, doc! {"email": "a@x"});
    let msg = we.get_str("errmsg").unwrap();
    assert!(
        msg.contains(&format!(
            "{}.users index: email_1 dup key: {{ email: \"a@x\" }}",
            env.db_name
        )),
        "{msg}"
    );
    assert_eq!(users.count_documents(doc! {}).await.unwrap(), 1);
}

// Manual: "Unique Indexes — Missing Document Field": a missing field is indexed as null, so a
// second document without it is a duplicate.
#[tokio::test]
async fn unique_index_treats_missing_as_null() {
    let env = start("unique_missing_null").await;
    unique_index(&env, "c", doc! {"email": 1}).await;
    env.coll("c").insert_one(doc! {"_id": 1}).await.unwrap();
    let reply = env
        .run(doc! {"insert": "c", "documents": [{"_id": 2}]})
        .await;
    assert_duplicate(
        &only_write_error(&reply),
        doc! {"email": 1},
        doc! {"email": null},
    );
}

// Manual: "Unique Compound Index" — uniqueness of the combination of values.
#[tokio::test]
async fn unique_compound_index() {
    let env = start("unique_compound").await;
    let name = unique_index(&env, "c", doc! {"a": 1, "b": -1}).await;
    assert_eq!(name, "a_1_b_-1");
    let c = env.coll("c");
    c.insert_many(vec![
        doc! {"a": 1, "b": 1},
        doc! {"a": 1, "b": 2},
        doc! {"a": 2, "b": 1},
    ])
    .await
    .unwrap();
    let reply = env
        .run(doc! {"insert": "c", "documents": [{"a": 1, "b": 2, "z": 0}]})
        .await;
    assert_duplicate(
        &only_write_error(&reply),
        doc! {"a": 1, "b": -1},
        doc! {"a": 1, "b": 2},
    );
    // An update that would create a duplicate fails and leaves the document unchanged.
    let reply = env
        .run(doc! {"update": "c", "updates": [{"q": {"a": 2}, "u": {"$set": {"a": 1}}}]})
        .await;
    assert_duplicate(
        &only_write_error(&reply),
        doc! {"a": 1, "b": -1},
        doc! {"a": 1, "b": 1},
    );
    assert_eq!(num(reply.get("n")), 0.0);
    assert_eq!(num(reply.get("nModified")), 0.0);
    assert_eq!(c.count_documents(doc! {"a": 2}).await.unwrap(), 1);
}

// Manual: "Upsert with Duplicate Values" — an upsert whose insert collides fails with 11000.
#[tokio::test]
async fn upsert_hits_unique_index() {
    let env = start("upsert_unique").await;
    unique_index(&env, "users", doc! {"email": 1}).await;
    env.coll("users")
        .insert_one(doc! {"_id": 1, "name": "n1", "email": "a@x"})
        .await
        .unwrap();
    let reply = env
        .run(doc! {"update": "users", "updates": [
            {"q": {"name": "n2"}, "u": {"$set": {"email": "a@x"}}, "upsert": true}
        ]})
        .await;
    assert_duplicate(
        &only_write_error(&reply),
        doc! {"email": 1},
        doc! {"email": "a@x"},
    );
    assert_eq!(num(reply.get("n")), 0.0);
    assert!(reply.get("upserted").is_none());

    // findAndModify reports the same error as a command error with keyPattern/keyValue.
    let result = env
        .db
        .run_command(doc! {"findAndModify": "users", "query": {"name": "n3"},
        "update": {"$set": {"email": "a@x"}}, "upsert": true})
        .await;
    let err = expect_code(result, 11000);
    let raw = server_response(&err).expect("server reply behind the error");
    assert_eq!(
        raw.get_document("keyPattern").unwrap(),
        &doc! {"email": 1},
        "{raw}"
    );
    assert_eq!(
        raw.get_document("keyValue").unwrap(),
        &doc! {"email": "a@x"}
    );
    assert_eq!(env.coll("users").count_documents(doc! {}).await.unwrap(), 1);
}

// The projector's guarded upsert: `{_id, lastSequenceNumber: seq - 1}` with upsert. mongod
// does not retry the internal insert here (manual: "Upsert with Duplicate Values" — the query
// has a field outside the index key), so a stale or replayed event surfaces as 11000 on _id_.
#[tokio::test]
async fn guarded_upsert_outcomes() {
    let env = start("guarded_upsert").await;
    let guarded = |id: &str, expected_prev: i64, seq: i64| {
        doc! {
            "q": {"_id": id, "lastSequenceNumber": expected_prev},
            "u": {"$set": {"lastSequenceNumber": seq}, "$inc": {"count": 1}},
            "upsert": true,
        }
    };
    // First event for a new aggregate: inserted.
    let reply = env
        .run(doc! {"update": "acc", "updates": [guarded("acc-1", 0, 1)]})
        .await;
    assert_eq!(num(reply.get("n")), 1.0, "{reply}");
    assert_eq!(num(reply.get("nModified")), 0.0);
    assert_eq!(
        reply.get_array("upserted").unwrap(),
        &vec![Bson::Document(doc! {"index": 0, "_id": "acc-1"})]
    );
    assert!(reply.get("writeErrors").is_none());

    // Next event in order: updated in place.
    let reply = env
        .run(doc! {"update": "acc", "updates": [guarded("acc-1", 1, 2)]})
        .await;
    assert_eq!(num(reply.get("n")), 1.0, "{reply}");
    assert_eq!(num(reply.get("nModified")), 1.0);
    assert!(reply.get("upserted").is_none());

    // Replay of event 2 (expects 1, document is at 2): the insert collides on _id.
    let reply = env
        .run(doc! {"update": "acc", "updates": [guarded("acc-1", 1, 2)]})
        .await;
    assert_eq!(num(reply.get("n")), 0.0, "{reply}");
    assert_eq!(num(reply.get("nModified")), 0.0);
    assert!(reply.get("upserted").is_none());
    let we = only_write_error(&reply);
    assert_eq!(num(we.get("index")), 0.0);
    assert_duplicate(&we, doc! {"_id": 1}, doc! {"_id": "acc-1"});
    assert!(
        we.get_str("errmsg")
            .unwrap()
            .contains("index: _id_ dup key: { _id: \"acc-1\" }"),
        "{we}"
    );

    // A gap (expects 4, document is at 2) collides the same way.
    let result = env
        .coll("acc")
        .update_one(
            doc! {"_id": "acc-1", "lastSequenceNumber": 4_i64},
            doc! {"$set": {"lastSequenceNumber": 5_i64}},
        )
        .upsert(true)
        .await;
    expect_code(result, 11000);

    assert_eq!(
        env.coll("acc")
            .find_one(doc! {"_id": "acc-1"})
            .await
            .unwrap(),
        Some(doc! {"_id": "acc-1", "lastSequenceNumber": 2_i64, "count": 2})
    );

    // In an ordered batch the collision stops the batch; unordered goes on.
    let reply = env
        .run(doc! {"update": "acc", "updates": [guarded("acc-1", 0, 1), guarded("acc-2", 0, 1)]})
        .await;
    assert_eq!(num(reply.get("n")), 0.0, "{reply}");
    assert_eq!(only_write_error(&reply).get_i32("index").unwrap(), 0);
    let reply = env
        .run(doc! {"update": "acc", "ordered": false,
        "updates": [guarded("acc-1", 0, 1), guarded("acc-2", 0, 1)]})
        .await;
    assert_eq!(num(reply.get("n")), 1.0, "{reply}");
    assert_eq!(
        reply.get_array("upserted").unwrap(),
        &vec![Bson::Document(doc! {"index": 1, "_id": "acc-2"})]
    );
}

// Manual: "listIndexes" — {v: 2, key, name} plus options such as unique.
#[tokio::test]
async fn list_indexes() {
    let env = start("list_indexes").await;
    unique_index(&env, "c", doc! {"email": 1}).await;
    env.coll("c")
        .create_index(IndexModel::builder().keys(doc! {"a": 1, "b": -1}).build())
        .await
        .unwrap();
    let reply = env.run(doc! {"listIndexes": "c"}).await;
    let cursor = reply.get_document("cursor").unwrap();
    assert_eq!(cursor.get_str("ns").unwrap(), format!("{}.c", env.db_name));
    let specs: Vec<Document> = cursor
        .get_array("firstBatch")
        .unwrap()
        .iter()
        .map(|b| b.as_document().unwrap().clone())
        .collect();
    assert_eq!(specs.len(), 3, "{specs:?}");
    assert_eq!(specs[0], doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"});
    assert_eq!(
        specs[1],
        doc! {"v": 2, "key": {"email": 1}, "name": "email_1", "unique": true}
    );
    assert_eq!(
        specs[2],
        doc! {"v": 2, "key": {"a": 1, "b": -1}, "name": "a_1_b_-1"}
    );
    let mut names = env.coll("c").list_index_names().await.unwrap();
    names.sort();
    assert_eq!(names, vec!["_id_", "a_1_b_-1", "email_1"]);
    // listIndexes on a missing collection is NamespaceNotFound (26).
    let (code, _) = env.run_err(doc! {"listIndexes": "missing"}).await;
    assert_eq!(code, 26);
}

// Manual: "createIndexes" — creating an existing index is a no-op, same name with other keys
// is IndexKeySpecsConflict (86), same keys under another name IndexOptionsConflict (85); it
// creates the collection; existing duplicates prevent a unique index (11000).
#[tokio::test]
async fn create_indexes_rules() {
    let env = start("create_indexes_rules").await;
    let reply = env
        .run(doc! {"createIndexes": "c", "indexes": [{"key": {"a": 1}, "name": "a_1"}]})
        .await;
    assert_eq!(num(reply.get("numIndexesBefore")), 1.0, "{reply}");
    assert_eq!(num(reply.get("numIndexesAfter")), 2.0);
    assert!(reply.get_bool("createdCollectionAutomatically").unwrap());
    let names = env.db.list_collection_names().await.unwrap();
    assert!(names.contains(&"c".to_string()));

    let again = env
        .run(doc! {"createIndexes": "c", "indexes": [{"key": {"a": 1}, "name": "a_1"}]})
        .await;
    assert_eq!(num(again.get("numIndexesBefore")), 2.0, "{again}");
    assert_eq!(num(again.get("numIndexesAfter")), 2.0);

    let (code, _) = env
        .run_err(doc! {"createIndexes": "c", "indexes": [{"key": {"b": 1}, "name": "a_1"}]})
        .await;
    assert_eq!(code, 86);
    let (code, _) = env
        .run_err(doc! {"createIndexes": "c", "indexes": [{"key": {"a": 1}, "name": "other"}]})
        .await;
    assert_eq!(code, 85);

    env.coll("d")
        .insert_many(vec![doc! {"k": 1}, doc! {"k": 1}])
        .await
        .unwrap();
    let (code, _) = env
        .run_err(doc! {"createIndexes": "d", "indexes": [{"key": {"k": 1}, "name": "k_1", "unique": true}]})
        .await;
    assert_eq!(code, 11000);
    let names = env.coll("d").list_index_names().await.unwrap();
    assert_eq!(names, vec!["_id_"]);
}

// Manual: "dropIndexes" — by name, by key, "*" (all but _id_); _id_ cannot be dropped (72);
// an unknown index is IndexNotFound (27).
#[tokio::test]
async fn drop_indexes() {
    let env = start("drop_indexes").await;
    for keys in [doc! {"a": 1}, doc! {"b": 1}, doc! {"c": 1}] {
        env.coll("c")
            .create_index(IndexModel::builder().keys(keys).build())
            .await
            .unwrap();
    }
    env.run(doc! {"dropIndexes": "c", "index": "a_1"}).await;
    env.run(doc! {"dropIndexes": "c", "index": {"b": 1}}).await;
    assert_eq!(
        env.coll("c").list_index_names().await.unwrap(),
        vec!["_id_", "c_1"]
    );
    let (code, _) = env
        .run_err(doc! {"dropIndexes": "c", "index": "nope_1"})
        .await;
    assert_eq!(code, 27);
    let (code, _) = env
        .run_err(doc! {"dropIndexes": "c", "index": "_id_"})
        .await;
    assert_eq!(code, 72);
    env.run(doc! {"dropIndexes": "c", "index": "*"}).await;
    assert_eq!(
        env.coll("c").list_index_names().await.unwrap(),
        vec!["_id_"]
    );

    // A dropped unique index no longer constrains.
    unique_index(&env, "u", doc! {"k": 1}).await;
    env.coll("u").drop_index("k_1").await.unwrap();
    env.coll("u")
        .insert_many(vec![doc! {"k": 1}, doc! {"k": 1}])
        .await
        .unwrap();
    let all = collect(env.coll("u").find(doc! {}).await.unwrap()).await;
    assert_eq!(all.len(), 2);
}

// Manual: "Unique Indexes" — on an array field every element is a key, so two documents may
// not share an element; numerically equal values of different types are the same key.
#[tokio::test]
async fn unique_multikey_and_numeric_keys() {
    let env = start("unique_multikey").await;
    unique_index(&env, "c", doc! {"tags": 1}).await;
    env.coll("c")
        .insert_one(doc! {"_id": 1, "tags": ["a", "b"]})
        .await
        .unwrap();
    let reply = env
        .run(doc! {"insert": "c", "documents": [{"_id": 2, "tags": ["c", "b"]}]})
        .await;
    assert_duplicate(
        &only_write_error(&reply),
        doc! {"tags": 1},
        doc! {"tags": "b"},
    );
    // One document may repeat its own element.
    env.coll("c")
        .insert_one(doc! {"_id": 3, "tags": ["x", "x"]})
        .await
        .unwrap();

    unique_index(&env, "n", doc! {"k": 1}).await;
    env.coll("n").insert_one(doc! {"k": 1}).await.unwrap();
    let reply = env
        .run(doc! {"insert": "n", "documents": [{"k": 1.0}, {"k": 1_i64}]})
        .await;
    let errors = reply.get_array("writeErrors").unwrap();
    assert_eq!(
        errors.len(),
        1,
        "ordered insert stops at the first: {reply}"
    );
    assert_eq!(num(errors[0].as_document().unwrap().get("code")), 11000.0);

    unique_index(&env, "nested", doc! {"a.b": 1}).await;
    env.coll("nested")
        .insert_one(doc! {"a": {"b": 1}})
        .await
        .unwrap();
    let reply = env
        .run(doc! {"insert": "nested", "documents": [{"a": {"b": 1, "c": 2}}]})
        .await;
    assert_duplicate(&only_write_error(&reply), doc! {"a.b": 1}, doc! {"a.b": 1});
}

// Manual: "Sparse Indexes" — a unique sparse index ignores documents without the field.
#[tokio::test]
async fn unique_sparse_index_allows_many_missing() {
    let env = start("unique_sparse").await;
    env.run(doc! {"createIndexes": "c", "indexes": [
        {"key": {"email": 1}, "name": "email_1", "unique": true, "sparse": true}
    ]})
    .await;
    env.coll("c")
        .insert_many(vec![
            doc! {"_id": 1},
            doc! {"_id": 2},
            doc! {"_id": 3, "email": "a"},
        ])
        .await
        .unwrap();
    let reply = env
        .run(doc! {"insert": "c", "documents": [{"_id": 4, "email": "a"}]})
        .await;
    assert_duplicate(
        &only_write_error(&reply),
        doc! {"email": 1},
        doc! {"email": "a"},
    );
}

// Manual: "$in" — with an index on the field, mongod probes the index once per listed value;
// the result is the same as a collection scan's: array fields match on any element and
// numbers of any width compare equal. (Without a sort the order is unspecified; both are
// sorted by `_id` here.)
#[tokio::test]
async fn in_on_an_indexed_field_finds_what_a_scan_finds() {
    let env = start("in_indexed").await;
    let docs = vec![
        doc! {"_id": 1, "a": 1},
        doc! {"_id": 2, "a": "x"},
        doc! {"_id": 3, "a": [5, 2]},
        doc! {"_id": 4, "a": 2.0},
        doc! {"_id": 5},
        doc! {"_id": 6, "a": 3i64},
        doc! {"_id": 7, "a": "y"},
    ];
    env.coll("scan").insert_many(docs.clone()).await.unwrap();
    env.coll("indexed").insert_many(docs).await.unwrap();
    env.coll("indexed")
        .create_index(IndexModel::builder().keys(doc! {"a": 1}).build())
        .await
        .unwrap();
    for filter in [
        doc! {"a": {"$in": [2, "x", 3]}},
        doc! {"a": {"$in": [1]}, "_id": {"$gt": 0}},
        doc! {"_id": {"$in": [7, 1, 4]}},
    ] {
        let by_id = doc! {"_id": 1};
        let scanned = collect(
            env.coll("scan")
                .find(filter.clone())
                .sort(by_id.clone())
                .await
                .unwrap(),
        )
        .await;
        let probed = collect(
            env.coll("indexed")
                .find(filter.clone())
                .sort(by_id)
                .await
                .unwrap(),
        )
        .await;
        assert!(!scanned.is_empty(), "{filter}");
        assert_eq!(probed, scanned, "{filter}");
    }
    let ids = |docs: Vec<Document>| -> Vec<Bson> {
        docs.iter()
            .map(|d| d.get("_id").cloned().unwrap())
            .collect()
    };
    let found = collect(
        env.coll("indexed")
            .find(doc! {"a": {"$in": [2, "x", 3]}})
            .sort(doc! {"_id": 1})
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        ids(found),
        vec![
            Bson::Int32(2),
            Bson::Int32(3),
            Bson::Int32(4),
            Bson::Int32(6)
        ]
    );
}
