//! Boolean and comparison operators: `$and`, `$or`, `$not`, `$eq`, `$ne`, `$gt`, `$gte`,
//! `$lt`, `$lte` and `$cmp` (which tell a missing value from null).

use crate::error::Result;
use crate::expr::Arity::{Exactly, Variadic};
use crate::expr::common::{cmp_values, unrecognized};
use crate::expr::{Arity, Cx, Expr, is_truthy};
use bson::Bson;
use std::cmp::Ordering;

pub(crate) const OPERATORS: &[(&str, Arity)] = &[
    ("$not", Exactly(1)),
    ("$eq", Exactly(2)),
    ("$ne", Exactly(2)),
    ("$gt", Exactly(2)),
    ("$gte", Exactly(2)),
    ("$lt", Exactly(2)),
    ("$lte", Exactly(2)),
    ("$cmp", Exactly(2)),
    ("$and", Variadic),
    ("$or", Variadic),
];

/// `$and` and `$or` stop at the first argument that decides; the others evaluate all of theirs.
pub(crate) fn eval(cx: &Cx, op: &str, args: &[Expr]) -> Result<Option<Bson>> {
    match op {
        "$and" => eval_and(cx, args),
        "$or" => eval_or(cx, args),
        "$not" => {
            let vals = cx.eval_all(args)?;
            Ok(Some(Bson::Boolean(!is_truthy(vals[0].as_ref()))))
        }
        "$eq" | "$ne" | "$gt" | "$gte" | "$lt" | "$lte" | "$cmp" => {
            eval_comparison(op, &cx.eval_all(args)?)
        }
        _ => Err(unrecognized(op)),
    }
}

fn eval_and(cx: &Cx, args: &[Expr]) -> Result<Option<Bson>> {
    for a in args {
        if !is_truthy(cx.eval(a)?.as_ref()) {
            return Ok(Some(Bson::Boolean(false)));
        }
    }
    Ok(Some(Bson::Boolean(true)))
}

fn eval_or(cx: &Cx, args: &[Expr]) -> Result<Option<Bson>> {
    for a in args {
        if is_truthy(cx.eval(a)?.as_ref()) {
            return Ok(Some(Bson::Boolean(true)));
        }
    }
    Ok(Some(Bson::Boolean(false)))
}

fn eval_comparison(op: &str, vals: &[Option<Bson>]) -> Result<Option<Bson>> {
    let c = cmp_values(&vals[0], &vals[1]);
    Ok(Some(match op {
        "$eq" => Bson::Boolean(c == Ordering::Equal),
        "$ne" => Bson::Boolean(c != Ordering::Equal),
        "$gt" => Bson::Boolean(c == Ordering::Greater),
        "$gte" => Bson::Boolean(c != Ordering::Less),
        "$lt" => Bson::Boolean(c == Ordering::Less),
        "$lte" => Bson::Boolean(c != Ordering::Greater),
        _ => Bson::Int32(c as i32),
    }))
}

#[cfg(test)]
mod tests {
    use crate::expr::tests::{error, value};
    use bson::bson;

    #[test]
    fn comparisons_distinguish_missing_from_null() {
        assert_eq!(value(bson!({"$eq": [1, 1.0]})), bson!(true));
        assert_eq!(value(bson!({"$eq": ["$missing", null]})), bson!(false));
        assert_eq!(value(bson!({"$lt": ["$missing", null]})), bson!(true));
        assert_eq!(value(bson!({"$eq": [[1, 2], [1, 2]]})), bson!(true));
        // No array expansion: [1, 2] is an array, greater than any number.
        assert_eq!(value(bson!({"$gt": [[1, 2], 5]})), bson!(true));
        assert_eq!(value(bson!({"$gte": ["b", "a"]})), bson!(true));
        assert_eq!(value(bson!({"$lte": [null, 0]})), bson!(true));
        assert_eq!(value(bson!({"$ne": [1, "1"]})), bson!(true));
        assert_eq!(value(bson!({"$cmp": [2, 1]})), bson!(1));
        assert_eq!(value(bson!({"$cmp": ["a", "b"]})), bson!(-1));
    }

    #[test]
    fn booleans_and_in() {
        assert_eq!(value(bson!({"$and": [1, true]})), bson!(true));
        assert_eq!(value(bson!({"$and": [1, "$missing"]})), bson!(false));
        assert_eq!(value(bson!({"$and": []})), bson!(true));
        assert_eq!(value(bson!({"$or": [0, null]})), bson!(false));
        assert_eq!(value(bson!({"$or": [0, [] ]})), bson!(true));
        assert_eq!(value(bson!({"$not": [0]})), bson!(true));
        assert_eq!(value(bson!({"$in": [2, [1, 2.0]]})), bson!(true));
        assert_eq!(value(bson!({"$in": [[1], [1, [1]]]})), bson!(true));
        assert_eq!(value(bson!({"$in": [3, [1, 2]]})), bson!(false));
        let e = error(bson!({"$in": [1, "$missing"]}));
        assert_eq!(
            (e.code, e.errmsg.as_str()),
            (
                40081,
                "$in requires an array as a second argument, found: missing"
            )
        );
    }
}
