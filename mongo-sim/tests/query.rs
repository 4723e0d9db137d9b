//! Query predicates and sort order as mongod evaluates them (manual: "Query and Projection
//! Operators", "Comparison/Sort Order").

mod common;

use common::{TestEnv, collect, start};
use mongodb::bson::{
    Binary, Bson, DateTime, Document, Regex, Timestamp, doc, oid::ObjectId, spec::BinarySubtype,
};

async fn ids(env: &TestEnv, filter: Document) -> Vec<Bson> {
    let docs = collect(
        env.coll("c")
            .find(filter.clone())
            .sort(doc! {"_id": 1})
            .await
            .unwrap_or_else(|e| panic!("find {filter} failed: {e}")),
    )
    .await;
    docs.iter()
        .map(|d| d.get("_id").cloned().unwrap())
        .collect()
}

fn list(v: &[i32]) -> Vec<Bson> {
    v.iter().map(|i| Bson::Int32(*i)).collect()
}

async fn seed(env: &TestEnv) {
    env.coll("c")
        .insert_many(vec![
            doc! {"_id": 1, "n": 1, "s": "apple", "tags": ["a", "b"], "sub": {"x": 1, "y": "p"}},
            doc! {"_id": 2, "n": 2.5, "s": "Banana", "tags": ["b", "c"], "sub": {"x": 2}},
            doc! {"_id": 3, "n": 3_i64, "s": "cherry", "tags": [], "items": [{"k": "a", "q": 5}, {"k": "b", "q": 1}]},
            doc! {"_id": 4, "n": "4", "tags": "a", "items": [{"k": "a", "q": 1}, {"k": "c", "q": 9}]},
            doc! {"_id": 5, "n": null, "s": "date", "arr": [1, [2, 3]]},
            doc! {"_id": 6, "s": "elder", "sub": {"x": [1, 5]}, "nums": [3, 8, 12]},
        ])
        .await
        .unwrap();
}

// Manual: "Comparison Query Operators" — numbers compare across int32/int64/double; $gt etc.
// only match values of the same type bracket; {f: null} matches null and missing; $ne and
// $nin match missing fields.
#[tokio::test]
async fn comparison_operators() {
    let env = start("comparison_operators").await;
    seed(&env).await;
    assert_eq!(ids(&env, doc! {"n": 1.0}).await, list(&[1]));
    assert_eq!(ids(&env, doc! {"n": 3}).await, list(&[3]));
    assert_eq!(ids(&env, doc! {"n": {"$gt": 1}}).await, list(&[2, 3]));
    assert_eq!(
        ids(&env, doc! {"n": {"$gte": 1, "$lt": 3}}).await,
        list(&[1, 2])
    );
    assert_eq!(ids(&env, doc! {"n": {"$lte": 2.5}}).await, list(&[1, 2]));
    assert_eq!(ids(&env, doc! {"n": {"$gt": "0"}}).await, list(&[4]));
    assert_eq!(ids(&env, doc! {"n": null}).await, list(&[5, 6]));
    assert_eq!(
        ids(&env, doc! {"n": {"$ne": 1}}).await,
        list(&[2, 3, 4, 5, 6])
    );
    assert_eq!(ids(&env, doc! {"n": {"$eq": "4"}}).await, list(&[4]));
    assert_eq!(
        ids(&env, doc! {"n": {"$in": [1, "4", null]}}).await,
        list(&[1, 4, 5, 6])
    );
    assert_eq!(
        ids(&env, doc! {"n": {"$nin": [1, 2.5, null]}}).await,
        list(&[3, 4])
    );
    assert_eq!(
        ids(&env, doc! {"s": {"$gte": "b", "$lt": "d"}}).await,
        list(&[3])
    );
}

// Manual: "$exists", "$type" (names, numbers, "number" alias, arrays of types).
#[tokio::test]
async fn element_operators() {
    let env = start("element_operators").await;
    seed(&env).await;
    assert_eq!(
        ids(&env, doc! {"n": {"$exists": true}}).await,
        list(&[1, 2, 3, 4, 5])
    );
    assert_eq!(ids(&env, doc! {"n": {"$exists": false}}).await, list(&[6]));
    assert_eq!(ids(&env, doc! {"n": {"$type": "string"}}).await, list(&[4]));
    assert_eq!(ids(&env, doc! {"n": {"$type": 1}}).await, list(&[2]));
    assert_eq!(ids(&env, doc! {"n": {"$type": "long"}}).await, list(&[3]));
    assert_eq!(
        ids(&env, doc! {"n": {"$type": "number"}}).await,
        list(&[1, 2, 3])
    );
    assert_eq!(
        ids(&env, doc! {"n": {"$type": ["null", "int"]}}).await,
        list(&[1, 5])
    );
    assert_eq!(
        ids(&env, doc! {"tags": {"$type": "array"}}).await,
        list(&[1, 2, 3])
    );
    // $type matches array elements too.
    assert_eq!(
        ids(&env, doc! {"tags": {"$type": "string"}}).await,
        list(&[1, 2, 4])
    );
}

// Manual: "Logical Query Operators" ($and $or $nor $not).
#[tokio::test]
async fn logical_operators() {
    let env = start("logical_operators").await;
    seed(&env).await;
    assert_eq!(
        ids(&env, doc! {"$or": [{"n": 1}, {"s": "date"}]}).await,
        list(&[1, 5])
    );
    assert_eq!(
        ids(&env, doc! {"$and": [{"n": {"$gt": 1}}, {"n": {"$lt": 3}}]}).await,
        list(&[2])
    );
    assert_eq!(
        ids(
            &env,
            doc! {"$nor": [{"n": {"$type": "number"}}, {"s": "date"}]}
        )
        .await,
        list(&[4, 6])
    );
    // $not also selects documents without the field.
    assert_eq!(
        ids(&env, doc! {"n": {"$not": {"$gt": 1}}}).await,
        list(&[1, 4, 5, 6])
    );
    assert_eq!(
        ids(
            &env,
            doc! {"s": {"$not": Regex { pattern: "^[a-c]".into(), options: String::new() }}}
        )
        .await,
        list(&[2, 4, 5, 6])
    );
}

// Manual: "$regex" — pattern string with $options, or a BSON regex.
#[tokio::test]
async fn regex_matching() {
    let env = start("regex_matching").await;
    seed(&env).await;
    assert_eq!(
        ids(&env, doc! {"s": {"$regex": "^b", "$options": "i"}}).await,
        list(&[2])
    );
    assert_eq!(
        ids(
            &env,
            doc! {"s": Regex { pattern: "^[cd]".into(), options: String::new() }}
        )
        .await,
        list(&[3, 5])
    );
    assert_eq!(ids(&env, doc! {"tags": {"$regex": "c"}}).await, list(&[2]));
}

// Manual: "Query an Array", "$elemMatch", "$size", "$all": a scalar condition matches any
// element, an array value matches the whole array exactly, and $elemMatch needs one element
// to satisfy every condition.
#[tokio::test]
async fn array_operators() {
    let env = start("array_operators").await;
    seed(&env).await;
    assert_eq!(ids(&env, doc! {"tags": "a"}).await, list(&[1, 4]));
    assert_eq!(ids(&env, doc! {"tags": ["a", "b"]}).await, list(&[1]));
    assert_eq!(
        ids(&env, doc! {"tags": ["b", "a"]}).await,
        Vec::<Bson>::new()
    );
    assert_eq!(ids(&env, doc! {"tags": {"$size": 0}}).await, list(&[3]));
    assert_eq!(ids(&env, doc! {"tags": {"$size": 2}}).await, list(&[1, 2]));
    assert_eq!(
        ids(&env, doc! {"tags": {"$all": ["b", "a"]}}).await,
        list(&[1])
    );
    assert_eq!(
        ids(&env, doc! {"nums": {"$gt": 10, "$lt": 5}}).await,
        list(&[6])
    );
    assert_eq!(
        ids(&env, doc! {"nums": {"$elemMatch": {"$gt": 10, "$lt": 5}}}).await,
        Vec::<Bson>::new()
    );
    assert_eq!(
        ids(&env, doc! {"nums": {"$elemMatch": {"$gt": 7, "$lt": 9}}}).await,
        list(&[6])
    );
    assert_eq!(
        ids(
            &env,
            doc! {"items": {"$elemMatch": {"k": "a", "q": {"$gte": 5}}}}
        )
        .await,
        list(&[3])
    );
    // Without $elemMatch, the conditions may be met by different elements.
    assert_eq!(
        ids(&env, doc! {"items.k": "a", "items.q": {"$gte": 5}}).await,
        list(&[3, 4])
    );
    // Nested arrays: an array value matches an element that is that array.
    assert_eq!(ids(&env, doc! {"arr": [2, 3]}).await, list(&[5]));
    assert_eq!(ids(&env, doc! {"arr": 2}).await, Vec::<Bson>::new());
}

// Manual: "Query on Embedded/Nested Documents" and "Query an Array of Embedded Documents" —
// dotted paths traverse arrays; a numeric component indexes an array.
#[tokio::test]
async fn dotted_paths() {
    let env = start("dotted_paths").await;
    seed(&env).await;
    assert_eq!(ids(&env, doc! {"sub.x": 1}).await, list(&[1, 6]));
    assert_eq!(ids(&env, doc! {"sub.x": {"$gte": 2}}).await, list(&[2, 6]));
    assert_eq!(ids(&env, doc! {"sub": {"x": 2}}).await, list(&[2]));
    // Whole-document equality is field-order sensitive.
    assert_eq!(
        ids(&env, doc! {"sub": {"y": "p", "x": 1}}).await,
        Vec::<Bson>::new()
    );
    assert_eq!(ids(&env, doc! {"items.k": "c"}).await, list(&[4]));
    assert_eq!(ids(&env, doc! {"items.0.q": 5}).await, list(&[3]));
    assert_eq!(ids(&env, doc! {"tags.1": "c"}).await, list(&[2]));
    assert_eq!(
        ids(&env, doc! {"sub.y": {"$exists": true}}).await,
        list(&[1])
    );
    assert_eq!(
        ids(&env, doc! {"no.such.path": null}).await,
        list(&[1, 2, 3, 4, 5, 6])
    );
}

// Manual: "$expr" — aggregation expressions compare fields of the same document.
#[tokio::test]
async fn expr_compares_fields() {
    let env = start("expr_compares_fields").await;
    env.coll("c")
        .insert_many(vec![
            doc! {"_id": 1, "spent": 80, "budget": 100},
            doc! {"_id": 2, "spent": 120, "budget": 100},
            doc! {"_id": 3, "spent": 100},
        ])
        .await
        .unwrap();
    assert_eq!(
        ids(&env, doc! {"$expr": {"$gt": ["$spent", "$budget"]}}).await,
        list(&[2, 3]),
        "a missing field is less than any number in $gt"
    );
    assert_eq!(
        ids(
            &env,
            doc! {"$expr": {"$lt": [{"$multiply": ["$spent", 1.1]}, "$budget"]}}
        )
        .await,
        list(&[1])
    );
}

// Manual: "Comparison/Sort Order" — MinKey < null < numbers < strings < objects < arrays <
// BinData < ObjectId < booleans < dates < timestamps < regex < MaxKey; a missing field sorts
// as null; an array sorts by its smallest element ascending.
#[tokio::test]
async fn bson_type_order_in_sort() {
    let env = start("bson_type_order").await;
    let oid = ObjectId::new();
    env.coll("c")
        .insert_many(vec![
            doc! {"_id": 1, "v": Bson::MaxKey},
            doc! {"_id": 2, "v": Regex { pattern: "x".into(), options: String::new() }},
            doc! {"_id": 3, "v": Timestamp { time: 1, increment: 1 }},
            doc! {"_id": 4, "v": DateTime::from_millis(0)},
            doc! {"_id": 5, "v": true},
            doc! {"_id": 6, "v": false},
            doc! {"_id": 7, "v": oid},
            doc! {"_id": 8, "v": Binary { subtype: BinarySubtype::Generic, bytes: vec![1] }},
            doc! {"_id": 9, "v": {"a": 1}},
            doc! {"_id": 10, "v": "b"},
            doc! {"_id": 11, "v": "a"},
            doc! {"_id": 12, "v": 10_i64},
            doc! {"_id": 13, "v": 2.5},
            doc! {"_id": 14, "v": 1},
            doc! {"_id": 15, "v": null},
            doc! {"_id": 16, "v": Bson::MinKey},
            doc! {"_id": 17},
            doc! {"_id": 18, "v": [7, 3]},
        ])
        .await
        .unwrap();
    let sorted = collect(
        env.coll("c")
            .find(doc! {})
            .sort(doc! {"v": 1, "_id": 1})
            .await
            .unwrap(),
    )
    .await;
    let order: Vec<i32> = sorted.iter().map(|d| d.get_i32("_id").unwrap()).collect();
    assert_eq!(
        order,
        vec![
            16, 15, 17, 14, 13, 18, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1
        ]
    );
    // Descending: an array sorts by its largest element.
    let sorted = collect(
        env.coll("c")
            .find(doc! {"v": {"$type": "number"}})
            .sort(doc! {"v": -1})
            .await
            .unwrap(),
    )
    .await;
    let order: Vec<i32> = sorted.iter().map(|d| d.get_i32("_id").unwrap()).collect();
    assert_eq!(order, vec![12, 18, 13, 14]);
    // Comparison operators stay within a type bracket.
    let found = ids(&env, doc! {"v": {"$gt": 2}}).await;
    assert_eq!(found, list(&[12, 13, 18]));
}

// Manual: "Query and Projection Operators" — an unknown operator is BadValue (2).
#[tokio::test]
async fn unknown_query_operators_fail() {
    let env = start("unknown_query_operators").await;
    seed(&env).await;
    let (code, reply) = env
        .run_err(doc! {"find": "c", "filter": {"n": {"$bogus": 1}}})
        .await;
    assert_eq!(code, 2);
    assert!(
        reply
            .get_str("errmsg")
            .unwrap()
            .contains("unknown operator: $bogus"),
        "{reply}"
    );
    let (code, reply) = env
        .run_err(doc! {"find": "c", "filter": {"$bogus": 1}})
        .await;
    assert_eq!(code, 2);
    assert!(
        reply
            .get_str("errmsg")
            .unwrap()
            .contains("unknown top level operator: $bogus"),
        "{reply}"
    );
    let (code, _) = env.run_err(doc! {"find": "c", "filter": {"$or": []}}).await;
    assert_eq!(code, 2, "$or needs a nonempty array");
}

// Manual: "Comparison/Sort Order" — strings compare by binary (UTF-8) order without a
// collation, so upper case sorts before lower case; null compares equal to missing, so $gte
// and $lte null match both while $gt and $lt null match nothing.
#[tokio::test]
async fn string_order_and_null_bounds() {
    let env = start("string_order_null_bounds").await;
    env.coll("c")
        .insert_many(vec![
            doc! {"_id": 1, "s": "b"},
            doc! {"_id": 2, "s": "B"},
            doc! {"_id": 3, "s": "a"},
            doc! {"_id": 4, "s": "A"},
            doc! {"_id": 5, "s": null},
            doc! {"_id": 6},
        ])
        .await
        .unwrap();
    let sorted = collect(
        env.coll("c")
            .find(doc! {"s": {"$type": "string"}})
            .sort(doc! {"s": 1})
            .await
            .unwrap(),
    )
    .await;
    let order: Vec<&str> = sorted.iter().map(|d| d.get_str("s").unwrap()).collect();
    assert_eq!(order, vec!["A", "B", "a", "b"]);
    assert_eq!(ids(&env, doc! {"s": {"$gte": null}}).await, list(&[5, 6]));
    assert_eq!(ids(&env, doc! {"s": {"$lte": null}}).await, list(&[5, 6]));
    assert_eq!(
        ids(&env, doc! {"s": {"$gt": null}}).await,
        Vec::<Bson>::new()
    );
    assert_eq!(
        ids(&env, doc! {"s": {"$exists": true, "$ne": null}}).await,
        list(&[1, 2, 3, 4])
    );
    assert_eq!(
        ids(
            &env,
            doc! {"s": {"$in": [Regex { pattern: "^a".into(), options: "i".into() }]}}
        )
        .await,
        list(&[3, 4])
    );
}
