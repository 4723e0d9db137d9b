//! `$sum`, `$avg`, `$max` and `$min` used as expressions rather than in `$group`.

use crate::compare::compare;
use crate::error::Result;
use crate::expr::Arity::Variadic;
use crate::expr::number::{Num, Sum};
use crate::expr::{Arity, Cx, Expr};
use bson::Bson;
use std::cmp::Ordering;

pub(crate) const OPERATORS: &[(&str, Arity)] = &[
    ("$max", Variadic),
    ("$min", Variadic),
    ("$sum", Variadic),
    ("$avg", Variadic),
];

pub(crate) fn eval(cx: &Cx, op: &str, args: &[Expr]) -> Result<Option<Bson>> {
    eval_accumulator(op, cx.eval_all(args)?)
}

/// `$sum`/`$avg`/`$max`/`$min` used as expressions: one array argument is operated over
/// element-wise, several arguments are operated over as given (manual: "$sum (aggregation)").
fn eval_accumulator(op: &str, vals: Vec<Option<Bson>>) -> Result<Option<Bson>> {
    let items: Vec<Bson> = match vals.as_slice() {
        [Some(Bson::Array(items))] => items.clone(),
        _ => vals.into_iter().flatten().collect(),
    };
    match op {
        "$sum" | "$avg" => {
            let mut sum = Sum::default();
            let mut count = 0u64;
            for v in &items {
                if let Some(n) = Num::of(v)? {
                    sum.add(n);
                    count += 1;
                }
            }
            if op == "$sum" {
                return Ok(Some(sum.result()));
            }
            if count == 0 {
                return Ok(Some(Bson::Null));
            }
            Ok(Some(Bson::Double(sum.total_f64() / count as f64)))
        }
        _ => {
            let want = if op == "$max" {
                Ordering::Greater
            } else {
                Ordering::Less
            };
            let mut best: Option<Bson> = None;
            for v in items {
                if matches!(v, Bson::Null | Bson::Undefined) {
                    continue;
                }
                if best.as_ref().is_none_or(|b| compare(&v, b) == want) {
                    best = Some(v);
                }
            }
            Ok(Some(best.unwrap_or(Bson::Null)))
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::expr::tests::value;
    use bson::{Bson, bson};

    #[test]
    fn accumulator_expressions() {
        assert_eq!(value(bson!({"$sum": [[1, 2, "x", null]]})), bson!(3));
        assert_eq!(value(bson!({"$sum": [1, 2_i64]})), Bson::Int64(3));
        assert_eq!(
            value(bson!({"$sum": [i32::MAX, 1]})),
            Bson::Int64(2_147_483_648)
        );
        assert_eq!(value(bson!({"$sum": [1, 0.5]})), bson!(1.5));
        assert_eq!(value(bson!({"$sum": "$missing"})), bson!(0));
        // Several arguments: arrays are not traversed.
        assert_eq!(value(bson!({"$sum": [[1, 2], 3]})), bson!(3));
        assert_eq!(value(bson!({"$avg": [[1, 2, 3, 4]]})), bson!(2.5));
        assert_eq!(value(bson!({"$avg": [[]]})), Bson::Null);
        assert_eq!(value(bson!({"$max": [1, "a", null]})), bson!("a"));
        assert_eq!(value(bson!({"$min": [[3, 1, 2]]})), bson!(1));
        assert_eq!(value(bson!({"$min": [null, "$missing"]})), Bson::Null);
    }
}
