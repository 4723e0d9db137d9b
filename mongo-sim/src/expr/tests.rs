//! What the operator families' tests share, and the tests that cross families: parsing,
//! literals, object and array expressions, messages.

use crate::error::{CommandError, Result};
use crate::expr::{Expr, Variables};
use bson::{Bson, Document, Timestamp, bson, doc};

pub(crate) fn vars() -> Variables {
    Variables::new(
        bson::DateTime::from_millis(1_700_000_000_000),
        Timestamp {
            time: 1_700_000_000,
            increment: 1,
        },
    )
}

pub(crate) fn eval_in(expr: Bson, root: &Document) -> Result<Option<Bson>> {
    Expr::parse(&expr)?.eval(root, &vars())
}

pub(crate) fn eval(expr: Bson) -> Option<Bson> {
    eval_in(expr.clone(), &doc! {}).unwrap_or_else(|e| panic!("{expr}: {e}"))
}

pub(crate) fn value(expr: Bson) -> Bson {
    eval(expr.clone()).unwrap_or_else(|| panic!("{expr} was missing"))
}

pub(crate) fn error(expr: Bson) -> CommandError {
    match eval_in(expr.clone(), &doc! {}) {
        Err(e) => e,
        Ok(v) => panic!("{expr} succeeded with {v:?}"),
    }
}

pub(crate) fn parse_error(expr: Bson) -> CommandError {
    match Expr::parse(&expr) {
        Err(e) => e,
        Ok(_) => panic!("{expr} parsed"),
    }
}

pub(crate) fn date(ms: i64) -> Bson {
    Bson::DateTime(bson::DateTime::from_millis(ms))
}

#[test]
fn literals_and_literal_operator() {
    assert_eq!(value(bson!(5)), bson!(5));
    assert_eq!(value(bson!("abc")), bson!("abc"));
    assert_eq!(value(bson!({"$literal": "$a"})), bson!("$a"));
    assert_eq!(value(bson!({"$literal": [1, 2]})), bson!([1, 2]));
}

#[test]
fn object_and_array_expressions_handle_missing() {
    let root = doc! {"a": 1};
    assert_eq!(
        eval_in(
            bson!({"x": "$a", "y": "$nope", "z": {"w": "$$REMOVE"}}),
            &root
        )
        .unwrap(),
        Some(bson!({"x": 1, "z": {}}))
    );
    assert_eq!(
        eval_in(bson!(["$a", "$nope"]), &root).unwrap(),
        Some(bson!([1, null]))
    );
}

#[test]
fn parse_errors_match_mongod() {
    let e = parse_error(bson!({"$foo": 1}));
    assert_eq!(
        (e.code, e.code_name.as_str()),
        (168, "InvalidPipelineOperator")
    );
    assert_eq!(e.errmsg, "Unrecognized expression '$foo'");
    let e = parse_error(bson!({"$subtract": [1]}));
    assert_eq!(e.code, 16020);
    assert_eq!(
        e.errmsg,
        "Expression $subtract takes exactly 2 arguments. 1 were passed in."
    );
    assert_eq!(parse_error(bson!({"$add": [1], "b": 1})).code, 15983);
    let e = parse_error(bson!({"a": 1, "$b": 1}));
    assert_eq!(e.code, 16410);
    assert!(
        e.errmsg
            .starts_with("FieldPath field names may not start with '$'")
    );
    assert_eq!(parse_error(bson!("$")).code, 16872);
    assert_eq!(parse_error(bson!("$a..b")).code, 15998);
    assert_eq!(parse_error(bson!("$a.$b")).code, 16410);
    assert_eq!(parse_error(bson!({"$round": [1, 2, 3]})).code, 28667);
    assert_eq!(parse_error(bson!({"$ifNull": ["$a"]})).code, 1257300);
    assert_eq!(parse_error(bson!({"$isArray": [1, 2]})).code, 16020);
    // Unimplemented operators fail at parse time, even nested and never evaluated.
    assert_eq!(
        parse_error(bson!({"$cond": [true, 1, {"$dateFromString": {}}]})).code,
        168
    );
    assert_eq!(parse_error(bson!({"$toDecimal": 1})).code, 115);
}

#[test]
fn types() {
    assert_eq!(value(bson!({"$type": "$missing"})), bson!("missing"));
    assert_eq!(value(bson!({"$type": 1_i64})), bson!("long"));
    assert_eq!(value(bson!({"$type": [[]]})), bson!("array"));
    assert_eq!(value(bson!({"$isNumber": 1.5})), bson!(true));
    assert_eq!(value(bson!({"$isNumber": "1"})), bson!(false));
    let dec = Bson::Decimal128(bson::Decimal128::from_bytes([0; 16]));
    assert_eq!(error(bson!({"$add": [dec, 1]})).code, 115);
}

#[test]
fn substr_alias_and_subtract_details() {
    assert_eq!(value(bson!({"$substr": ["hello", 1.9, 2]})), bson!("el"));
    assert_eq!(value(bson!({"$substrBytes": ["hello", 9, 2]})), bson!(""));
    assert_eq!(value(bson!({"$substrBytes": [5, 0, -1]})), bson!("5"));
    assert_eq!(value(bson!({"$subtract": [date(1000), 1.9]})), date(999));
    let e = error(bson!({"$subtract": [date(0), "a"]}));
    assert_eq!(e.errmsg, "can't $subtract string from Date");
    assert_eq!(value(bson!({"$split": [5, null]})), Bson::Null);
    assert_eq!(value(bson!({"$size": [[]]})), bson!(0));
}

#[test]
fn messages_show_values_as_mongod() {
    let e = parse_error(bson!({"$add": [1, 2.0], "b": "x"}));
    assert_eq!(
        e.errmsg,
        "An object representing an expression must have exactly one field: { $add: [ 1, 2.0 ], b: \"x\" }"
    );
    let e = error(bson!({"$mergeObjects": [[1, "a"]]}));
    assert_eq!(
        e.errmsg,
        "$mergeObjects requires object inputs, but input [1, \"a\"] is of type array"
    );
    let e = error(bson!({"$arrayElemAt": [[1], 1.5]}));
    assert_eq!(
        e.errmsg,
        "$arrayElemAt's second argument must be representable as a 32-bit integer: 1.5"
    );
}

#[test]
fn set_string_and_misc_operators() {
    assert_eq!(
        value(bson!({"$setUnion": [[3, 1, 1], [2, 1.0]]})),
        bson!([1, 2, 3])
    );
    assert_eq!(value(bson!({"$setUnion": [[1], null]})), Bson::Null);
    assert_eq!(
        value(bson!({"$setIntersection": [[3, 1, 2], [2, 3, 4]]})),
        bson!([2, 3])
    );
    assert_eq!(error(bson!({"$setUnion": [[1], 1]})).code, 17043);
    assert_eq!(
        value(bson!({"$setDifference": [[3, 1, 3, 2], [2]]})),
        bson!([3, 1])
    );
    assert_eq!(error(bson!({"$setDifference": [1, [2]]})).code, 17048);
    assert_eq!(
        value(bson!({"$setEquals": [[1, 2, 2], [2, 1]]})),
        bson!(true)
    );
    assert_eq!(parse_error(bson!({"$setEquals": [[1]]})).code, 17045);
    assert_eq!(error(bson!({"$setEquals": [[1], "$nope"]})).code, 17044);
    assert_eq!(value(bson!({"$setIsSubset": [[1], [1, 2]]})), bson!(true));
    assert_eq!(error(bson!({"$setIsSubset": [[1], null]})).code, 17042);
    assert_eq!(value(bson!({"$allElementsTrue": [[1, true]]})), bson!(true));
    assert_eq!(value(bson!({"$anyElementTrue": [[0, null]]})), bson!(false));
    assert_eq!(error(bson!({"$allElementsTrue": "$nope"})).code, 17040);
    assert_eq!(value(bson!({"$strcasecmp": ["abc", "ABD"]})), bson!(-1));
    assert_eq!(value(bson!({"$strLenCP": "héllo"})), bson!(5));
    assert_eq!(value(bson!({"$substrCP": ["héllo", 1, 3]})), bson!("éll"));
    assert_eq!(error(bson!({"$substrCP": ["a", 0, -1]})).code, 34454);
    assert_eq!(value(bson!({"$trim": {"input": "  a b \n"}})), bson!("a b"));
    assert_eq!(
        value(bson!({"$ltrim": {"input": "xxaxx", "chars": "x"}})),
        bson!("axx")
    );
    assert_eq!(value(bson!({"$rtrim": {"input": null}})), Bson::Null);
    assert_eq!(error(bson!({"$trim": {"input": 1}})).code, 50699);
    assert_eq!(parse_error(bson!({"$trim": {"chars": "x"}})).code, 50695);
    assert_eq!(
        value(bson!({"$replaceAll": {"input": "a-b-c", "find": "-", "replacement": "+"}})),
        bson!("a+b+c")
    );
    assert_eq!(
        value(bson!({"$replaceOne": {"input": "a-b-c", "find": "-", "replacement": ""}})),
        bson!("ab-c")
    );
    assert_eq!(
        value(bson!({"$replaceAll": {"input": "ab", "find": "", "replacement": "."}})),
        bson!(".a.b.")
    );
    assert_eq!(
        error(bson!({"$replaceOne": {"input": 1, "find": "a", "replacement": null}})).code,
        51746
    );
    assert_eq!(
        value(bson!({"$zip": {"inputs": [[1, 2], ["a"]]}})),
        bson!([[1, "a"]])
    );
    assert_eq!(
        value(
            bson!({"$zip": {"inputs": [[1, 2], ["a"]], "useLongestLength": true, "defaults": [0, "z"]}})
        ),
        bson!([[1, "a"], [2, "z"]])
    );
    assert_eq!(
        parse_error(bson!({"$zip": {"inputs": [[1]], "defaults": [1]}})).code,
        34466
    );
    let ts = Bson::Timestamp(Timestamp {
        time: 7,
        increment: 3,
    });
    assert_eq!(value(bson!({"$tsSecond": ts.clone()})), Bson::Int64(7));
    assert_eq!(value(bson!({"$tsIncrement": ts})), Bson::Int64(3));
    assert_eq!(error(bson!({"$tsSecond": 1})).code, 5687301);
    assert_eq!(value(bson!({"$binarySize": "héllo"})), bson!(6));
    assert_eq!(value(bson!({"$bsonSize": {"$literal": {}}})), bson!(5));
    assert_eq!(error(bson!({"$bsonSize": 1})).code, 31393);
}

#[test]
fn range_memory_limit_and_extreme_dates() {
    let e = error(bson!({"$range": [0, i32::MAX]}));
    assert_eq!((e.code, e.code_name.as_str()), (146, "ExceededMemoryLimit"));
    let far = Bson::DateTime(bson::DateTime::from_millis(i64::MAX));
    let e = error(bson!({"$dateToString": {"date": far, "timezone": "+01"}}));
    assert_eq!(e.code, 18537);
}

#[test]
fn index_of_strings_and_pow() {
    assert_eq!(
        value(bson!({"$indexOfBytes": ["cafétéria", "é"]})),
        bson!(3)
    );
    assert_eq!(value(bson!({"$indexOfCP": ["cafétéria", "é"]})), bson!(3));
    assert_eq!(
        value(bson!({"$indexOfCP": ["cafétéria", "é", 4]})),
        bson!(5)
    );
    assert_eq!(
        value(bson!({"$indexOfBytes": ["abc", "c", 0, 2]})),
        bson!(-1)
    );
    assert_eq!(value(bson!({"$indexOfBytes": ["abc", "", 3]})), bson!(3));
    assert_eq!(value(bson!({"$indexOfBytes": ["abc", "a", 5]})), bson!(-1));
    assert_eq!(value(bson!({"$indexOfBytes": [null, "a"]})), Bson::Null);
    assert_eq!(error(bson!({"$indexOfBytes": ["a", null]})).code, 40092);
    assert_eq!(error(bson!({"$indexOfCP": [1, "a"]})).code, 40093);
    let e = error(bson!({"$indexOfBytes": ["a", "a", -1]}));
    assert_eq!(
        e.errmsg,
        "$indexOfBytes requires a nonnegative starting index, found: -1"
    );
    assert_eq!(value(bson!({"$pow": [2, 10]})), bson!(1024));
    assert_eq!(value(bson!({"$pow": [2, 40]})), Bson::Int64(1 << 40));
    assert_eq!(value(bson!({"$pow": [2_i64, 2]})), Bson::Int64(4));
    assert_eq!(
        value(bson!({"$pow": [2, 64]})),
        bson!(18446744073709551616.0)
    );
    assert_eq!(value(bson!({"$pow": [2, -1]})), bson!(0.5));
    assert_eq!(value(bson!({"$pow": [-1, -3]})), bson!(-1));
    assert_eq!(value(bson!({"$pow": [4, 0.5]})), bson!(2.0));
    assert_eq!(error(bson!({"$pow": [0, -1]})).code, 28764);
    assert_eq!(error(bson!({"$pow": ["a", 1]})).code, 28762);
}
