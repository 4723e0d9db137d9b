//! Conditionals: `$cond` (array or `{if, then, else}` form), `$ifNull` and `$switch`. Only
//! the branch taken is evaluated, and constant conditions are settled at parse time.

use crate::bsontype::type_name;
use crate::error::Result;
use crate::expr::Arity::{Exactly, Variadic};
use crate::expr::common::{is_nullish, loc, object_arg, unrecognized};
use crate::expr::{Arity, Cx, Expr, Family, Node, boxed, is_truthy};
use bson::Bson;

pub(crate) const OPERATORS: &[(&str, Arity)] = &[("$cond", Exactly(3)), ("$ifNull", Variadic)];

pub(crate) fn eval(cx: &Cx, op: &str, args: &[Expr]) -> Result<Option<Bson>> {
    match op {
        "$cond" => eval_cond(cx, args),
        "$ifNull" => eval_if_null(cx, args),
        _ => Err(unrecognized(op)),
    }
}

fn eval_cond(cx: &Cx, args: &[Expr]) -> Result<Option<Bson>> {
    let branch = if is_truthy(cx.eval(&args[0])?.as_ref()) {
        &args[1]
    } else {
        &args[2]
    };
    cx.eval(branch)
}

/// The first argument that is not nullish, else the last one.
fn eval_if_null(cx: &Cx, args: &[Expr]) -> Result<Option<Bson>> {
    for (i, a) in args.iter().enumerate() {
        let v = cx.eval(a)?;
        if !is_nullish(v.as_ref()) || i == args.len() - 1 {
            return Ok(v);
        }
    }
    Ok(Some(Bson::Null))
}

/// `$switch`: the first branch whose `case` is true, else `default`.
#[derive(Debug, Clone)]
pub(crate) struct Switch {
    branches: Vec<(Expr, Expr)>,
    default: Option<Box<Expr>>,
}

impl Switch {
    pub(crate) fn eval(&self, cx: &Cx) -> Result<Option<Bson>> {
        let Switch { branches, default } = self;
        for (case, then) in branches {
            if is_truthy(cx.eval(case)?.as_ref()) {
                return cx.eval(then);
            }
        }
        match default {
            Some(d) => cx.eval(d),
            None => Err(loc(
                40066,
                "$switch could not find a matching branch for an input, and no default was specified.",
            )),
        }
    }
}

/// ExpressionSwitch::optimize: constant-false cases are dropped, a constant-true case becomes
/// the default and ends the branch list.
pub(crate) fn fold_switch(switch: Switch) -> Result<Expr> {
    let Switch { branches, default } = switch;
    let mut kept = Vec::with_capacity(branches.len());
    let mut default = default;
    for (case, then) in branches {
        match case.as_constant() {
            Some(c) if is_truthy(Some(c)) => {
                default = Some(boxed(then));
                break;
            }
            Some(_) => {}
            None => kept.push((case, then)),
        }
    }
    if kept.is_empty() {
        return match default {
            Some(d) => Ok(*d),
            None => Err(loc(
                40069,
                "One cannot execute a switch statement where all the cases evaluate to false without a default.",
            )),
        };
    }
    Ok(Expr {
        node: Node::Switch(Switch {
            branches: kept,
            default,
        }),
    })
}

pub(crate) fn parse_cond_object(arg: &Bson) -> Result<Node> {
    let d = object_arg(arg, 17083, "$cond requires an object")?;
    let (mut i, mut t, mut e) = (None, None, None);
    for (k, v) in d {
        let slot = match k.as_str() {
            "if" => &mut i,
            "then" => &mut t,
            "else" => &mut e,
            _ => return Err(loc(17083, format!("Unrecognized parameter to $cond: {k}"))),
        };
        *slot = Some(Expr::parse(v)?);
    }
    let i = i.ok_or_else(|| loc(17080, "Missing 'if' parameter to $cond"))?;
    let t = t.ok_or_else(|| loc(17081, "Missing 'then' parameter to $cond"))?;
    let e = e.ok_or_else(|| loc(17082, "Missing 'else' parameter to $cond"))?;
    Ok(Node::Op {
        family: Family::Conditional,
        op: "$cond",
        args: vec![i, t, e],
    })
}

pub(crate) fn parse_switch(arg: &Bson) -> Result<Node> {
    let Bson::Document(d) = arg else {
        return Err(loc(
            40060,
            format!(
                "$switch requires an object as an argument, found: {}",
                type_name(arg)
            ),
        ));
    };
    let mut branches = Vec::new();
    let mut default = None;
    for (k, v) in d {
        match k.as_str() {
            "branches" => {
                let Bson::Array(items) = v else {
                    return Err(loc(
                        40061,
                        format!(
                            "$switch expected an array for 'branches', found: {}",
                            type_name(v)
                        ),
                    ));
                };
                for b in items {
                    branches.push(parse_branch(b)?);
                }
            }
            "default" => default = Some(boxed(Expr::parse(v)?)),
            _ => {
                return Err(loc(
                    40067,
                    format!("$switch found an unknown argument: {k}"),
                ));
            }
        }
    }
    if branches.is_empty() {
        return Err(loc(40068, "$switch requires at least one branch."));
    }
    Ok(Node::Switch(Switch { branches, default }))
}

/// One `{case, then}` of `$switch`'s branches.
fn parse_branch(b: &Bson) -> Result<(Expr, Expr)> {
    let Bson::Document(bd) = b else {
        return Err(loc(
            40062,
            format!(
                "$switch expected each branch to be an object, found: {}",
                type_name(b)
            ),
        ));
    };
    let (mut case, mut then) = (None, None);
    for (bk, bv) in bd {
        match bk.as_str() {
            "case" => case = Some(Expr::parse(bv)?),
            "then" => then = Some(Expr::parse(bv)?),
            _ => {
                return Err(loc(
                    40063,
                    format!("$switch found an unknown argument to a branch: {bk}"),
                ));
            }
        }
    }
    let case = case.ok_or_else(|| {
        loc(
            40064,
            "$switch requires each branch have a 'case' expression",
        )
    })?;
    let then = then.ok_or_else(|| {
        loc(
            40065,
            "$switch requires each branch have a 'then' expression.",
        )
    })?;
    Ok((case, then))
}

#[cfg(test)]
mod tests {
    use crate::expr::tests::{error, eval, eval_in, parse_error, value};
    use bson::{bson, doc};

    #[test]
    fn conditionals() {
        assert_eq!(value(bson!({"$ifNull": ["$missing", null, 3]})), bson!(3));
        assert_eq!(value(bson!({"$ifNull": [0, 3]})), bson!(0));
        assert_eq!(eval(bson!({"$ifNull": [null, "$missing"]})), None);
        // Only the chosen branch is evaluated...
        let root = doc! {"z": 0};
        let lazy = bson!({"$cond": [true, 1, {"$divide": [1, "$z"]}]});
        assert_eq!(eval_in(lazy, &root).unwrap(), Some(bson!(1)));
        // ...but constant operands are folded at parse time, as mongod's optimize() does.
        let e = parse_error(bson!({"$cond": [true, 1, {"$divide": [1, 0]}]}));
        assert_eq!(e.code, 2);
        assert_eq!(parse_error(bson!({"$add": [1, "a"]})).code, 14);
        assert_eq!(
            value(bson!({"$cond": {"if": 0, "then": 1, "else": 2}})),
            bson!(2)
        );
        assert_eq!(
            value(bson!({"$cond": {"if": [], "then": 1, "else": 2}})),
            bson!(1)
        );
        assert_eq!(
            parse_error(bson!({"$cond": {"if": 0, "then": 1}})).code,
            17082
        );
        assert_eq!(
            parse_error(bson!({"$cond": {"if": 0, "then": 1, "else": 2, "x": 1}})).code,
            17083
        );
        let sw = bson!({"$switch": {"branches": [
            {"case": {"$gt": ["$a", 5]}, "then": "big"},
            {"case": {"$gt": ["$a", 1]}, "then": "mid"}
        ], "default": "small"}});
        assert_eq!(
            eval_in(sw.clone(), &doc! {"a": 3}).unwrap(),
            Some(bson!("mid"))
        );
        assert_eq!(eval_in(sw, &doc! {"a": 0}).unwrap(), Some(bson!("small")));
        let nodefault = bson!({"$switch": {"branches": [{"case": "$nope", "then": 1}]}});
        assert_eq!(error(nodefault).code, 40066);
        let all_false = bson!({"$switch": {"branches": [{"case": false, "then": 1}]}});
        assert_eq!(parse_error(all_false).code, 40069);
        let const_true = bson!({"$switch": {"branches": [
            {"case": "$nope", "then": 1}, {"case": true, "then": 2}, {"case": "$x", "then": 3}
        ]}});
        assert_eq!(value(const_true), bson!(2));
        assert_eq!(
            parse_error(bson!({"$switch": {"branches": []}})).code,
            40068
        );
        assert_eq!(
            parse_error(bson!({"$switch": {"branches": [{"case": 1}]}})).code,
            40065
        );
    }
}
