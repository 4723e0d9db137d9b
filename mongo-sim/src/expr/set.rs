//! Set operators over arrays: `$setUnion`, `$setIntersection`, `$setDifference`,
//! `$setEquals`, `$setIsSubset`, `$allElementsTrue` and `$anyElementTrue`.

use crate::bsontype::type_name;
use crate::compare::compare;
use crate::error::Result;
use crate::expr::Arity::{Exactly, Variadic};
use crate::expr::common::{is_nullish, loc, type_of, unrecognized};
use crate::expr::{Arity, Cx, Expr, is_truthy};
use bson::Bson;
use std::cmp::Ordering;

pub(crate) const OPERATORS: &[(&str, Arity)] = &[
    ("$setUnion", Variadic),
    ("$setIntersection", Variadic),
    ("$setEquals", Variadic),
    ("$setDifference", Exactly(2)),
    ("$setIsSubset", Exactly(2)),
    ("$allElementsTrue", Exactly(1)),
    ("$anyElementTrue", Exactly(1)),
];

/// Union and intersection come out sorted, difference keeps the first array's order.
pub(crate) fn eval(cx: &Cx, op: &str, args: &[Expr]) -> Result<Option<Bson>> {
    let vals = cx.eval_all(args)?;
    match op {
        "$setUnion" | "$setIntersection" => union_or_intersection(op, vals),
        "$setDifference" => difference(vals),
        "$setEquals" => equals(vals),
        "$setIsSubset" => is_subset(vals),
        "$allElementsTrue" | "$anyElementTrue" => all_or_any_element_true(op, &vals),
        _ => Err(unrecognized(op)),
    }
}

/// Sorted, deduplicated values, as mongod's ordered ValueSet yields them.
fn value_set(items: impl IntoIterator<Item = Bson>) -> Vec<Bson> {
    let mut out: Vec<Bson> = items.into_iter().collect();
    out.sort_by(compare);
    out.dedup_by(|a, b| compare(a, b) == Ordering::Equal);
    out
}

fn set_contains(set: &[Bson], v: &Bson) -> bool {
    set.binary_search_by(|x| compare(x, v)).is_ok()
}

fn union_or_intersection(op: &str, vals: Vec<Option<Bson>>) -> Result<Option<Bson>> {
    let union = op == "$setUnion";
    let mut acc: Option<Vec<Bson>> = None;
    for v in vals {
        let items = match v {
            None | Some(Bson::Null) | Some(Bson::Undefined) => {
                return Ok(Some(Bson::Null));
            }
            Some(Bson::Array(items)) => items,
            Some(other) => {
                return Err(loc(
                    if union { 17043 } else { 17047 },
                    format!(
                        "All operands of {op} must be arrays. One argument is of type: {}",
                        type_name(&other)
                    ),
                ));
            }
        };
        let next = value_set(items);
        acc = Some(match acc {
            None => next,
            Some(prev) if union => value_set(prev.into_iter().chain(next)),
            Some(prev) => prev
                .into_iter()
                .filter(|x| set_contains(&next, x))
                .collect(),
        });
    }
    Ok(Some(Bson::Array(acc.unwrap_or_default())))
}

fn difference(vals: Vec<Option<Bson>>) -> Result<Option<Bson>> {
    let mut it = vals.into_iter();
    let (lhs, rhs) = (it.next().flatten(), it.next().flatten());
    if is_nullish(lhs.as_ref()) || is_nullish(rhs.as_ref()) {
        return Ok(Some(Bson::Null));
    }
    let Some(Bson::Array(lhs)) = lhs else {
        return Err(loc(
            17048,
            format!(
                "both operands of $setDifference must be arrays. First argument is of type: {}",
                type_of(lhs.as_ref())
            ),
        ));
    };
    let Some(Bson::Array(rhs)) = rhs else {
        return Err(loc(
            17049,
            format!(
                "both operands of $setDifference must be arrays. Second argument is of type: {}",
                type_of(rhs.as_ref())
            ),
        ));
    };
    let mut seen = value_set(rhs);
    let mut out = Vec::new();
    for item in lhs {
        if !set_contains(&seen, &item) {
            let at = seen
                .binary_search_by(|x| compare(x, &item))
                .unwrap_or_else(|i| i);
            seen.insert(at, item.clone());
            out.push(item);
        }
    }
    Ok(Some(Bson::Array(out)))
}

fn equals(vals: Vec<Option<Bson>>) -> Result<Option<Bson>> {
    let mut sets = Vec::with_capacity(vals.len());
    for (i, v) in vals.into_iter().enumerate() {
        let Some(Bson::Array(items)) = v else {
            return Err(loc(
                17044,
                format!(
                    "All operands of $setEquals must be arrays. {}-th argument is of type: {}",
                    i + 1,
                    type_of(v.as_ref())
                ),
            ));
        };
        sets.push(value_set(items));
    }
    let first = &sets[0];
    let equal = sets.iter().all(|s| {
        s.len() == first.len()
            && s.iter()
                .zip(first)
                .all(|(a, b)| compare(a, b) == Ordering::Equal)
    });
    Ok(Some(Bson::Boolean(equal)))
}

fn is_subset(vals: Vec<Option<Bson>>) -> Result<Option<Bson>> {
    let mut it = vals.into_iter();
    let (lhs, rhs) = (it.next().flatten(), it.next().flatten());
    let Some(Bson::Array(lhs)) = lhs else {
        return Err(loc(
            17046,
            format!(
                "both operands of $setIsSubset must be arrays. First argument is of type: {}",
                type_of(lhs.as_ref())
            ),
        ));
    };
    let Some(Bson::Array(rhs)) = rhs else {
        return Err(loc(
            17042,
            format!(
                "both operands of $setIsSubset must be arrays. Second argument is of type: {}",
                type_of(rhs.as_ref())
            ),
        ));
    };
    let rhs = value_set(rhs);
    Ok(Some(Bson::Boolean(
        lhs.iter().all(|x| set_contains(&rhs, x)),
    )))
}

fn all_or_any_element_true(op: &str, vals: &[Option<Bson>]) -> Result<Option<Bson>> {
    let Some(Bson::Array(items)) = &vals[0] else {
        return Err(loc(
            if op == "$allElementsTrue" {
                17040
            } else {
                17041
            },
            format!(
                "{op}'s argument must be an array, but is {}",
                type_of(vals[0].as_ref())
            ),
        ));
    };
    let all = op == "$allElementsTrue";
    let hit = if all {
        items.iter().all(|i| is_truthy(Some(i)))
    } else {
        items.iter().any(|i| is_truthy(Some(i)))
    };
    Ok(Some(Bson::Boolean(hit)))
}
