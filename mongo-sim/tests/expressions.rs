//! Aggregation expressions through `$project`, `$expr` and update pipelines, with mongod's
//! null, missing and type-error behaviour (manual: "Aggregation Operators").

mod common;

use common::{TestEnv, collect, error_code, start};
use futures_util::TryStreamExt;
use mongodb::bson::{Bson, DateTime, Document, doc};

async fn seeded(test: &str) -> TestEnv {
    let env = start(test).await;
    env.coll("c")
        .insert_one(doc! {
            "_id": 1, "a": 5, "b": 2, "d": 2.5, "s": "Hello", "nul": null,
            "arr": [1, 2, 3], "big": i32::MAX, "obj": {"x": 1},
            "date": DateTime::from_millis(1_000), "items": [{"k": "p"}, {"k": "q"}],
        })
        .await
        .unwrap();
    env
}

/// Evaluates `expr` against the seeded document: `Ok(None)` when the result is missing.
async fn eval(env: &TestEnv, expr: Bson) -> Result<Option<Bson>, i32> {
    let pipeline = vec![doc! {"$project": {"_id": 0, "r": expr}}];
    let run = async {
        let cursor = env.coll("c").aggregate(pipeline).await?;
        cursor.try_collect::<Vec<Document>>().await
    };
    match run.await {
        Ok(docs) => {
            assert_eq!(docs.len(), 1);
            Ok(docs[0].get("r").cloned())
        }
        Err(e) => Err(error_code(&e).unwrap_or_else(|| panic!("error without code: {e}"))),
    }
}

async fn value(env: &TestEnv, expr: Bson) -> Bson {
    let shown = format!("{expr}");
    match eval(env, expr).await {
        Ok(Some(v)) => v,
        Ok(None) => panic!("{shown} evaluated to missing"),
        Err(code) => panic!("{shown} failed with {code}"),
    }
}

async fn fails(env: &TestEnv, expr: Bson) -> i32 {
    let shown = format!("{expr}");
    match eval(env, expr).await {
        Ok(v) => panic!("{shown} evaluated to {v:?}, expected an error"),
        Err(code) => code,
    }
}

fn e(d: Document) -> Bson {
    Bson::Document(d)
}

// Manual: "$add", "$subtract", "$multiply", "$divide", "$mod" — int + int stays int and
// widens to long on overflow, any double makes a double, $divide always gives a double, null
// or missing operands give null, dates add milliseconds.
#[tokio::test]
async fn arithmetic() {
    let env = seeded("expr_arithmetic").await;
    assert_eq!(
        value(&env, e(doc! {"$add": ["$a", "$b"]})).await,
        Bson::Int32(7)
    );
    assert_eq!(
        value(&env, e(doc! {"$add": ["$a", "$d"]})).await,
        Bson::Double(7.5)
    );
    assert_eq!(
        value(&env, e(doc! {"$add": ["$big", 1]})).await,
        Bson::Int64(i64::from(i32::MAX) + 1)
    );
    assert_eq!(
        value(&env, e(doc! {"$add": ["$a", "$nul"]})).await,
        Bson::Null
    );
    assert_eq!(
        value(&env, e(doc! {"$add": ["$a", "$missing"]})).await,
        Bson::Null
    );
    assert_eq!(
        value(&env, e(doc! {"$add": ["$date", 500]})).await,
        Bson::DateTime(DateTime::from_millis(1_500))
    );
    assert_eq!(
        value(&env, e(doc! {"$subtract": ["$a", "$b"]})).await,
        Bson::Int32(3)
    );
    assert_eq!(
        value(&env, e(doc! {"$subtract": ["$date", "$date"]})).await,
        Bson::Int64(0)
    );
    assert_eq!(
        value(&env, e(doc! {"$subtract": ["$nul", 1]})).await,
        Bson::Null
    );
    assert_eq!(
        value(&env, e(doc! {"$multiply": ["$a", "$d"]})).await,
        Bson::Double(12.5)
    );
    assert_eq!(
        value(&env, e(doc! {"$multiply": ["$a", "$b", 3]})).await,
        Bson::Int32(30)
    );
    assert_eq!(
        value(&env, e(doc! {"$divide": ["$a", "$b"]})).await,
        Bson::Double(2.5)
    );
    assert_eq!(
        value(&env, e(doc! {"$divide": [4, 2]})).await,
        Bson::Double(2.0)
    );
    assert_eq!(
        value(&env, e(doc! {"$mod": ["$a", "$b"]})).await,
        Bson::Int32(1)
    );
    assert_eq!(value(&env, e(doc! {"$abs": -3})).await, Bson::Int32(3));
}

// Manual: "$add"/"$subtract"/"$multiply"/"$divide" errors — non-numeric operands are
// TypeMismatch (14); division by zero is BadValue (2); wrong arity is 16020.
#[tokio::test]
async fn arithmetic_errors() {
    let env = seeded("expr_arithmetic_errors").await;
    assert_eq!(fails(&env, e(doc! {"$add": ["$a", "$s"]})).await, 14);
    assert_eq!(fails(&env, e(doc! {"$subtract": ["$a", "$s"]})).await, 14);
    assert_eq!(fails(&env, e(doc! {"$multiply": ["$a", "$s"]})).await, 14);
    assert_eq!(fails(&env, e(doc! {"$divide": ["$a", 0]})).await, 2);
    assert_eq!(fails(&env, e(doc! {"$subtract": ["$a"]})).await, 16020);
}

// Manual: "Comparison Expression Operators" — values of different types compare by BSON
// order, and missing is less than null (so {$eq: ["$missing", null]} is false).
#[tokio::test]
async fn comparisons() {
    let env = seeded("expr_comparisons").await;
    assert_eq!(
        value(&env, e(doc! {"$eq": ["$a", 5.0]})).await,
        Bson::Boolean(true)
    );
    assert_eq!(
        value(&env, e(doc! {"$gt": ["$s", "$a"]})).await,
        Bson::Boolean(true)
    );
    assert_eq!(
        value(&env, e(doc! {"$cmp": ["$a", "$b"]})).await,
        Bson::Int32(1)
    );
    assert_eq!(
        value(&env, e(doc! {"$cmp": ["$b", "$a"]})).await,
        Bson::Int32(-1)
    );
    assert_eq!(
        value(&env, e(doc! {"$ne": ["$a", "$b"]})).await,
        Bson::Boolean(true)
    );
    assert_eq!(
        value(&env, e(doc! {"$lte": ["$a", 5]})).await,
        Bson::Boolean(true)
    );
    assert_eq!(
        value(&env, e(doc! {"$eq": ["$missing", null]})).await,
        Bson::Boolean(false)
    );
    assert_eq!(
        value(&env, e(doc! {"$gt": ["$nul", "$missing"]})).await,
        Bson::Boolean(true)
    );
    assert_eq!(
        value(&env, e(doc! {"$eq": ["$obj", {"x": 1}]})).await,
        Bson::Boolean(true)
    );
}

// Manual: "$cond", "$ifNull", "$switch"; "Boolean Expression Operators" — null, missing, 0
// and false are false; everything else (including "" and []) is true.
#[tokio::test]
async fn conditionals_and_truthiness() {
    let env = seeded("expr_conditionals").await;
    assert_eq!(
        value(
            &env,
            e(doc! {"$cond": [{"$gte": ["$a", 5]}, "big", "small"]})
        )
        .await,
        Bson::from("big")
    );
    assert_eq!(
        value(
            &env,
            e(doc! {"$cond": {"if": "$nul", "then": 1, "else": 2}})
        )
        .await,
        Bson::Int32(2)
    );
    assert_eq!(
        value(&env, e(doc! {"$ifNull": ["$nul", "$missing", "fallback"]})).await,
        Bson::from("fallback")
    );
    assert_eq!(
        value(&env, e(doc! {"$ifNull": ["$a", 0]})).await,
        Bson::Int32(5)
    );
    assert_eq!(
        value(
            &env,
            e(doc! {"$switch": {"branches": [
                {"case": {"$lt": ["$a", 0]}, "then": "neg"},
                {"case": {"$gt": ["$a", 3]}, "then": "big"},
            ], "default": "other"}})
        )
        .await,
        Bson::from("big")
    );
    assert_eq!(
        fails(
            &env,
            e(doc! {"$switch": {"branches": [{"case": {"$lt": ["$a", 0]}, "then": 1}]}})
        )
        .await,
        40066
    );
    // With only constant-false cases the optimizer already rejects it (40069).
    assert_eq!(
        fails(
            &env,
            e(doc! {"$switch": {"branches": [{"case": false, "then": 1}]}})
        )
        .await,
        40069
    );
    assert_eq!(
        value(&env, e(doc! {"$and": [1, "", []]})).await,
        Bson::Boolean(true)
    );
    assert_eq!(
        value(&env, e(doc! {"$and": [0, true]})).await,
        Bson::Boolean(false)
    );
    assert_eq!(
        value(&env, e(doc! {"$or": ["$nul", "$missing", false]})).await,
        Bson::Boolean(false)
    );
    assert_eq!(
        value(&env, e(doc! {"$not": ["$nul"]})).await,
        Bson::Boolean(true)
    );
    assert_eq!(
        value(&env, e(doc! {"$not": [[]]})).await,
        Bson::Boolean(false)
    );
}

// Manual: "String Expression Operators" — $concat is null when any argument is null or
// missing and rejects non-strings (16702); $toUpper of null is "".
#[tokio::test]
async fn strings() {
    let env = seeded("expr_strings").await;
    assert_eq!(
        value(&env, e(doc! {"$concat": ["$s", ", ", "world"]})).await,
        Bson::from("Hello, world")
    );
    assert_eq!(
        value(&env, e(doc! {"$concat": ["$s", "$nul"]})).await,
        Bson::Null
    );
    assert_eq!(
        value(&env, e(doc! {"$concat": ["$s", "$missing"]})).await,
        Bson::Null
    );
    assert_eq!(fails(&env, e(doc! {"$concat": ["$s", "$a"]})).await, 16702);
    assert_eq!(
        value(&env, e(doc! {"$toUpper": "$s"})).await,
        Bson::from("HELLO")
    );
    assert_eq!(
        value(&env, e(doc! {"$toLower": "$s"})).await,
        Bson::from("hello")
    );
    assert_eq!(
        value(&env, e(doc! {"$toUpper": "$nul"})).await,
        Bson::from("")
    );
    assert_eq!(
        value(&env, e(doc! {"$strLenCP": "$s"})).await,
        Bson::Int32(5)
    );
    assert_eq!(
        value(&env, e(doc! {"$split": ["a,b,c", ","]})).await,
        Bson::Array(vec!["a".into(), "b".into(), "c".into()])
    );
    assert_eq!(
        value(&env, e(doc! {"$substrCP": ["$s", 1, 3]})).await,
        Bson::from("ell")
    );
}

// Manual: "$convert" and the $toX shorthands — failures are ConversionFailure (241) unless
// onError is given; null input gives null (or onNull).
#[tokio::test]
async fn conversions() {
    let env = seeded("expr_conversions").await;
    assert_eq!(
        value(&env, e(doc! {"$toString": "$a"})).await,
        Bson::from("5")
    );
    assert_eq!(value(&env, e(doc! {"$toInt": "42"})).await, Bson::Int32(42));
    assert_eq!(value(&env, e(doc! {"$toLong": "$a"})).await, Bson::Int64(5));
    assert_eq!(
        value(&env, e(doc! {"$toDouble": "2.5"})).await,
        Bson::Double(2.5)
    );
    assert_eq!(
        value(&env, e(doc! {"$toBool": 0})).await,
        Bson::Boolean(false)
    );
    assert_eq!(value(&env, e(doc! {"$toString": "$nul"})).await, Bson::Null);
    assert_eq!(fails(&env, e(doc! {"$toInt": "abc"})).await, 241);
    assert_eq!(
        value(
            &env,
            e(doc! {"$convert": {"input": "abc", "to": "int", "onError": -1}})
        )
        .await,
        Bson::Int32(-1)
    );
    assert_eq!(
        value(
            &env,
            e(doc! {"$convert": {"input": "$nul", "to": "int", "onNull": 0}})
        )
        .await,
        Bson::Int32(0)
    );
}

// Manual: "$type (aggregation)" — "missing" for an absent field.
#[tokio::test]
async fn type_names() {
    let env = seeded("expr_type_names").await;
    for (path, name) in [
        ("$a", "int"),
        ("$d", "double"),
        ("$s", "string"),
        ("$nul", "null"),
        ("$arr", "array"),
        ("$obj", "object"),
        ("$date", "date"),
        ("$missing", "missing"),
    ] {
        assert_eq!(
            value(&env, e(doc! {"$type": path})).await,
            Bson::from(name),
            "{path}"
        );
    }
    assert_eq!(
        value(&env, e(doc! {"$isArray": ["$arr"]})).await,
        Bson::Boolean(true)
    );
    assert_eq!(
        value(&env, e(doc! {"$isNumber": "$s"})).await,
        Bson::Boolean(false)
    );
}

// Manual: "Array Expression Operators" — $size rejects non-arrays (17124), $in needs an
// array (40081), $arrayElemAt past the end is missing.
#[tokio::test]
async fn arrays() {
    let env = seeded("expr_arrays").await;
    assert_eq!(value(&env, e(doc! {"$size": "$arr"})).await, Bson::Int32(3));
    assert_eq!(fails(&env, e(doc! {"$size": "$a"})).await, 17124);
    assert_eq!(
        value(&env, e(doc! {"$arrayElemAt": ["$arr", -1]})).await,
        Bson::Int32(3)
    );
    assert_eq!(
        eval(&env, e(doc! {"$arrayElemAt": ["$arr", 10]})).await,
        Ok(None)
    );
    assert_eq!(
        value(&env, e(doc! {"$in": [2, "$arr"]})).await,
        Bson::Boolean(true)
    );
    assert_eq!(fails(&env, e(doc! {"$in": [2, "$a"]})).await, 40081);
    assert_eq!(
        value(
            &env,
            e(doc! {"$filter": {"input": "$arr", "as": "x", "cond": {"$gt": ["$$x", 1]}}})
        )
        .await,
        Bson::Array(vec![Bson::Int32(2), Bson::Int32(3)])
    );
    assert_eq!(
        value(
            &env,
            e(doc! {"$map": {"input": "$arr", "in": {"$multiply": ["$$this", 10]}}})
        )
        .await,
        Bson::Array(vec![Bson::Int32(10), Bson::Int32(20), Bson::Int32(30)])
    );
    assert_eq!(
        value(&env, e(doc! {"$reduce": {"input": "$arr", "initialValue": 0, "in": {"$add": ["$$value", "$$this"]}}})).await,
        Bson::Int32(6)
    );
    assert_eq!(
        value(&env, e(doc! {"$concatArrays": ["$arr", [4]]})).await,
        Bson::Array(vec![1.into(), 2.into(), 3.into(), 4.into()])
    );
    assert_eq!(
        value(&env, e(doc! {"$concatArrays": ["$arr", "$nul"]})).await,
        Bson::Null
    );
    // A path through an array of documents yields the array of values.
    assert_eq!(
        value(&env, Bson::from("$items.k")).await,
        Bson::Array(vec!["p".into(), "q".into()])
    );
}

// Manual: "$let", "$literal", "$mergeObjects", system variables ($$ROOT, $$CURRENT); unknown
// expressions and undefined variables (17276) fail the pipeline.
#[tokio::test]
async fn variables_literals_and_objects() {
    let env = seeded("expr_variables").await;
    assert_eq!(
        value(
            &env,
            e(doc! {"$let": {"vars": {"x": "$a"}, "in": {"$add": ["$$x", 1]}}})
        )
        .await,
        Bson::Int32(6)
    );
    assert_eq!(
        value(&env, e(doc! {"$literal": {"$add": [1, 2]}})).await,
        e(doc! {"$add": [1, 2]})
    );
    assert_eq!(
        value(&env, e(doc! {"$literal": "$a"})).await,
        Bson::from("$a")
    );
    assert_eq!(
        value(&env, e(doc! {"$mergeObjects": ["$obj", {"y": 2}, "$nul"]})).await,
        e(doc! {"x": 1, "y": 2})
    );
    assert_eq!(value(&env, Bson::from("$$ROOT.a")).await, Bson::Int32(5));
    assert_eq!(
        value(&env, Bson::from("$$CURRENT.obj.x")).await,
        Bson::Int32(1)
    );
    assert_eq!(fails(&env, Bson::from("$$undefinedVar")).await, 17276);
    // In $project an unknown $-name is "Unknown expression" (31325, projection parsing);
    // elsewhere it is InvalidPipelineOperator (168).
    assert_eq!(fails(&env, e(doc! {"$bogusOperator": 1})).await, 31325);
    let (code, _) = env
        .run_err(doc! {"aggregate": "c", "pipeline": [{"$addFields": {"r": {"$bogusOperator": 1}}}], "cursor": {}})
        .await;
    assert_eq!(code, 168);
}

// Manual: "$expr" in find and "Updates with Aggregation Pipeline" use the same expressions.
#[tokio::test]
async fn expressions_in_expr_and_update_pipelines() {
    let env = seeded("expr_in_find_update").await;
    env.coll("c")
        .insert_one(doc! {"_id": 2, "a": 1, "b": 2})
        .await
        .unwrap();
    let found = collect(
        env.coll("c")
            .find(doc! {"$expr": {"$gt": ["$a", {"$multiply": ["$b", 2]}]}})
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].get_i32("_id").unwrap(), 1);
    env.coll("c")
        .update_many(
            doc! {},
            vec![doc! {"$set": {
                "size": {"$cond": [{"$gte": ["$a", 5]}, "big", "small"]},
                "sum": {"$add": ["$a", "$b"]},
            }}],
        )
        .await
        .unwrap();
    let two = env
        .coll("c")
        .find_one(doc! {"_id": 2})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        two,
        doc! {"_id": 2, "a": 1, "b": 2, "size": "small", "sum": 3}
    );
    let one = env
        .coll("c")
        .find_one(doc! {"_id": 1})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(one.get_str("size").unwrap(), "big");
    assert_eq!(one.get_i32("sum").unwrap(), 7);
    // A computed field that is missing is not written.
    env.coll("c")
        .update_one(doc! {"_id": 2}, vec![doc! {"$set": {"gone": "$missing"}}])
        .await
        .unwrap();
    let two = env
        .coll("c")
        .find_one(doc! {"_id": 2})
        .await
        .unwrap()
        .unwrap();
    assert!(two.get("gone").is_none(), "{two}");
}
