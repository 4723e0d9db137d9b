//! `aggregate` beyond reading one collection: `$out` and `$merge` writing the results
//! (manual: "$out", "$merge"), database-level pipelines starting with `$documents` or
//! `$listLocalSessions`, `let` variables reaching a pipeline that writes, and the write
//! concern such a pipeline is held to.

mod common;

use common::{collect, start};
use mongodb::bson::{Bson, Document, doc};

async fn all(env: &common::TestEnv, coll: &str) -> Vec<Document> {
    let options = mongodb::options::FindOptions::builder()
        .sort(doc! {"_id": 1})
        .build();
    collect(
        env.coll(coll)
            .find(doc! {})
            .with_options(options)
            .await
            .unwrap(),
    )
    .await
}

fn first_batch(reply: &Document) -> Vec<Document> {
    reply
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap()
        .iter()
        .map(|d| d.as_document().unwrap().clone())
        .collect()
}

// Manual: "$out": the results replace the target's documents (its indexes stay), the reply
// has an empty cursor, and `let` variables are available to the pipeline.
#[tokio::test]
async fn out_replaces_the_target_keeping_its_indexes() {
    let env = start("agg_out").await;
    env.coll("src")
        .insert_many([
            doc! {"_id": 1, "x": 1},
            doc! {"_id": 2, "x": 2},
            doc! {"_id": 3, "x": 3},
        ])
        .await
        .unwrap();
    env.coll("dst")
        .insert_one(doc! {"_id": 9, "old": true})
        .await
        .unwrap();
    env.run(doc! {"createIndexes": "dst", "indexes": [{"key": {"x": 1}, "name": "x_1", "unique": true}]})
        .await;
    let reply = env
        .run(doc! {
            "aggregate": "src",
            "pipeline": [{"$match": {"$expr": {"$gte": ["$_id", "$$from"]}}}, {"$out": "dst"}],
            "let": {"from": 2},
            "cursor": {},
        })
        .await;
    assert!(first_batch(&reply).is_empty());
    assert_eq!(
        all(&env, "dst").await,
        vec![doc! {"_id": 2, "x": 2}, doc! {"_id": 3, "x": 3}]
    );
    let indexes = env.run(doc! {"listIndexes": "dst"}).await;
    assert_eq!(first_batch(&indexes).len(), 2);
    // A result the target's unique index refuses leaves the target as it was.
    env.coll("src")
        .insert_one(doc! {"_id": 4, "x": 3})
        .await
        .unwrap();
    let (code, _) = env
        .run_err(doc! {"aggregate": "src", "pipeline": [{"$out": "dst"}], "cursor": {}})
        .await;
    assert_eq!(code, 11000);
    assert_eq!(all(&env, "dst").await.len(), 2);
    // $out must be last.
    let (code, _) = env
        .run_err(
            doc! {"aggregate": "src", "pipeline": [{"$out": "dst"}, {"$match": {}}], "cursor": {}},
        )
        .await;
    assert_eq!(code, 40601);
}

// Manual: "$merge": whenMatched/whenNotMatched decide per result; `fail` surfaces the
// duplicate key error with its keyPattern and keyValue.
#[tokio::test]
async fn merge_writes_each_result_as_asked() {
    let env = start("agg_merge").await;
    env.coll("dst")
        .insert_many([
            doc! {"_id": 1, "a": 1, "keep": true},
            doc! {"_id": 2, "a": 2},
        ])
        .await
        .unwrap();
    let merge = |spec: Document| {
        doc! {"aggregate": 1, "cursor": {}, "pipeline": [
            {"$documents": [{"_id": 1, "a": 10}, {"_id": 3, "a": 30}]},
            {"$merge": spec},
        ]}
    };
    env.run(merge(doc! {"into": "dst"})).await;
    assert_eq!(
        all(&env, "dst").await,
        vec![
            doc! {"_id": 1, "a": 10, "keep": true},
            doc! {"_id": 2, "a": 2},
            doc! {"_id": 3, "a": 30}
        ]
    );
    env.run(merge(
        doc! {"into": "dst", "whenMatched": "replace", "whenNotMatched": "discard"},
    ))
    .await;
    assert_eq!(all(&env, "dst").await[0], doc! {"_id": 1, "a": 10});
    env.run(merge(
        doc! {"into": "dst", "whenMatched": [{"$set": {"a": {"$add": ["$a", "$$new.a"]}}}]},
    ))
    .await;
    assert_eq!(all(&env, "dst").await[0], doc! {"_id": 1, "a": 20});
    let (code, reply) = env
        .run_err(merge(doc! {"into": "dst", "whenMatched": "fail"}))
        .await;
    assert_eq!(code, 11000);
    assert_eq!(reply.get_document("keyPattern").unwrap(), &doc! {"_id": 1});
    assert_eq!(reply.get_document("keyValue").unwrap(), &doc! {"_id": 1});
    let (code, _) = env.run_err(merge(doc! {"into": "dst", "on": "a"})).await;
    assert_eq!(code, 51183);
}

// Manual: "$listLocalSessions": the sessions commands used on this server; and a
// database-level pipeline must start with a stage that makes its own documents.
#[tokio::test]
async fn database_level_pipelines_start_from_their_own_documents() {
    let env = start("agg_db").await;
    let reply = env
        .run(doc! {"aggregate": 1, "cursor": {}, "pipeline": [
            {"$listLocalSessions": {}}, {"$limit": 1},
        ]})
        .await;
    let sessions = first_batch(&reply);
    assert_eq!(sessions.len(), 1, "the command's own session is cached");
    let id = sessions[0].get_document("_id").unwrap();
    assert!(matches!(id.get("id"), Some(Bson::Binary(_))));
    assert!(matches!(id.get("uid"), Some(Bson::Binary(_))));
    let (code, _) = env
        .run_err(doc! {"aggregate": 1, "cursor": {}, "pipeline": [{"$match": {}}]})
        .await;
    assert_eq!(code, 73);
}

// A pipeline that writes is held to the write concern like any write (pymongo's
// test_collection "test_aggregate"): two acknowledgements cannot come from one node.
#[tokio::test]
async fn a_pipeline_that_writes_reports_the_write_concern_error() {
    let env = start("agg_wc").await;
    env.coll("src").insert_one(doc! {"_id": 1}).await.unwrap();
    let reply = env
        .run(
            doc! {"aggregate": "src", "pipeline": [{"$out": "dst"}], "cursor": {},
            "writeConcern": {"w": 2}},
        )
        .await;
    assert_eq!(
        reply
            .get_document("writeConcernError")
            .unwrap()
            .get_i32("code")
            .unwrap(),
        100
    );
}
