//! Operators of no other family: `$rand`, `$toHashedIndexKey`, the data sizes `$binarySize`
//! and `$bsonSize`, and the timestamp parts `$tsSecond` and `$tsIncrement`.

use crate::bsontype::type_name;
use crate::error::{CommandError, Result};
use crate::expr::Arity::Exactly;
use crate::expr::common::{loc, null, unrecognized};
use crate::expr::{Arity, Cx, Expr, Node};
use bson::Bson;

pub(crate) const OPERATORS: &[(&str, Arity)] = &[
    ("$toHashedIndexKey", Exactly(1)),
    ("$tsSecond", Exactly(1)),
    ("$tsIncrement", Exactly(1)),
    ("$binarySize", Exactly(1)),
    ("$bsonSize", Exactly(1)),
];

pub(crate) fn eval(cx: &Cx, op: &str, args: &[Expr]) -> Result<Option<Bson>> {
    let vals = cx.eval_all(args)?;
    match op {
        // mongod's ExpressionToHashedIndexKey: a missing value hashes as null, as in a hashed
        // index (manual: "$toHashedIndexKey", documented from 7.0 and added to earlier release
        // series' patch releases by SERVER-49214; an expression like any other, so allowed in
        // `$expr` of `find` and of a change stream's `$match`).
        "$toHashedIndexKey" => Ok(Some(Bson::Int64(crate::hasher::hash64(
            vals[0].as_ref().unwrap_or(&Bson::Null),
        )?))),
        "$tsSecond" | "$tsIncrement" => timestamp_part(op, &vals),
        "$binarySize" => binary_size(&vals),
        "$bsonSize" => bson_size(&vals),
        _ => Err(unrecognized(op)),
    }
}

/// `$rand` takes an empty object.
pub(crate) fn parse_rand(arg: &Bson) -> Result<Node> {
    match arg {
        Bson::Document(d) if d.is_empty() => Ok(Node::Rand),
        Bson::Document(_) => Err(loc(3040501, "$rand does not currently accept arguments")),
        _ => Err(loc(10065, "invalid parameter: expected an object ($rand)")),
    }
}

fn timestamp_part(op: &str, vals: &[Option<Bson>]) -> Result<Option<Bson>> {
    match &vals[0] {
        None | Some(Bson::Null) | Some(Bson::Undefined) => null(),
        Some(Bson::Timestamp(t)) => Ok(Some(Bson::Int64(if op == "$tsSecond" {
            t.time as i64
        } else {
            t.increment as i64
        }))),
        Some(other) => Err(loc(
            if op == "$tsSecond" { 5687301 } else { 5687302 },
            format!(
                " Argument to {op} must be a timestamp, but is {}",
                type_name(other)
            ),
        )),
    }
}

fn binary_size(vals: &[Option<Bson>]) -> Result<Option<Bson>> {
    match &vals[0] {
        None | Some(Bson::Null) | Some(Bson::Undefined) => null(),
        Some(Bson::String(s)) => Ok(Some(Bson::Int32(s.len() as i32))),
        Some(Bson::Binary(b)) => Ok(Some(Bson::Int32(b.bytes.len() as i32))),
        Some(other) => Err(loc(
            51276,
            format!(
                "$binarySize requires a string or BinData argument, found: {}",
                type_name(other)
            ),
        )),
    }
}

fn bson_size(vals: &[Option<Bson>]) -> Result<Option<Bson>> {
    match &vals[0] {
        None | Some(Bson::Null) | Some(Bson::Undefined) => null(),
        Some(Bson::Document(d)) => {
            let bytes = bson::to_vec(d)
                .map_err(|e| CommandError::new(crate::error::INTERNAL_ERROR, e.to_string()))?;
            Ok(Some(Bson::Int32(bytes.len() as i32)))
        }
        Some(other) => Err(loc(
            31393,
            format!(
                "$bsonSize requires a document input, found: {}",
                type_name(other)
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::expr::Expr;
    use crate::expr::tests::{eval_in, parse_error, value, vars};
    use bson::{Bson, bson, doc};

    #[test]
    fn to_hashed_index_key_is_mongods_hash() {
        // The manual's example ("$toHashedIndexKey").
        assert_eq!(
            value(bson!({"$toHashedIndexKey": "string to hash"})),
            Bson::Int64(763_543_691_661_428_748)
        );
        let root = doc! {"a": 42, "b": 42i64, "c": 42.0, "d": null};
        let hash = |path: &str| {
            eval_in(bson!({"$toHashedIndexKey": path}), &root)
                .unwrap()
                .unwrap()
        };
        // Numbers that compare equal hash the same, whatever their type.
        assert_eq!(hash("$a"), Bson::Int64(-944_302_157_085_130_861));
        assert_eq!(hash("$b"), hash("$a"));
        assert_eq!(hash("$c"), hash("$a"));
        // A missing value hashes as null, as a hashed index stores it.
        assert_eq!(hash("$missing"), hash("$d"));
        assert_eq!(
            parse_error(bson!({"$toHashedIndexKey": [1, 2]})).code,
            16020
        );
        // The partition test of a hashed value: $mod keeps the dividend's sign.
        let m = eval_in(bson!({"$mod": [{"$toHashedIndexKey": "$a"}, 3]}), &root)
            .unwrap()
            .unwrap();
        assert_eq!(m, Bson::Int64(-944_302_157_085_130_861i64 % 3));
    }

    #[test]
    fn rand_is_a_fresh_double_in_the_unit_interval() {
        let e = Expr::parse(&bson!({"$rand": {}})).unwrap();
        let draws: Vec<f64> = (0..20)
            .map(|_| match e.eval(&doc! {}, &vars()).unwrap() {
                Some(Bson::Double(d)) => d,
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        assert!(draws.windows(2).any(|w| w[0] != w[1]));
        assert_eq!(parse_error(bson!({"$rand": {"a": 1}})).code, 3040501);
    }
}
