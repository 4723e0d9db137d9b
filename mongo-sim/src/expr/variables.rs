//! Field paths (`"$a.b"`), variables (`"$$name.a"`, `$$ROOT`, `$$REMOVE`, ...) and `$let`.

use crate::bsontype::type_name;
use crate::error::Result;
use crate::expr::common::{
    check_var_name_chars, loc, object_arg, validate_field_name, validate_user_var_name,
};
use crate::expr::{Cx, Expr, Node, boxed};
use bson::{Bson, Document};

fn parse_field_path(path: &str) -> Result<Vec<String>> {
    if path.is_empty() {
        return Err(loc(
            40352,
            "FieldPath cannot be constructed with empty string",
        ));
    }
    path.split('.')
        .map(|p| validate_field_name(p).map(|_| p.to_string()))
        .collect()
}

const SYSTEM_VARS: &[&str] = &[
    "ROOT",
    "CURRENT",
    "REMOVE",
    "NOW",
    "CLUSTER_TIME",
    "JS_SCOPE",
    "IS_MR",
];

/// `Variables::uassertValidNameForUserRead` plus the builtin lookup: an uppercase name must be
/// a system variable (user variables cannot start with one).
fn validate_var_read(name: &str) -> Result<()> {
    let Some(first) = name.chars().next() else {
        return Err(loc(16869, "empty variable names are not allowed"));
    };
    if !first.is_ascii_alphabetic() && first.is_ascii() {
        return Err(loc(
            16870,
            format!("'{name}' starts with an invalid character for a variable name"),
        ));
    }
    check_var_name_chars(name, 16871)?;
    if first.is_ascii_uppercase() && !SYSTEM_VARS.contains(&name) {
        return Err(loc(17276, format!("Use of undefined variable: {name}")));
    }
    Ok(())
}

pub(crate) fn parse_string_ref(s: &str) -> Result<Node> {
    if let Some(var) = s.strip_prefix("$$") {
        let (name, rest) = match var.split_once('.') {
            Some((n, r)) => (n, Some(r)),
            None => (var, None),
        };
        validate_var_read(name)?;
        let path = match rest {
            Some(r) => parse_field_path(r)?,
            None => Vec::new(),
        };
        return Ok(Node::Var {
            name: name.to_string(),
            path,
        });
    }
    let path = &s[1..];
    if path.is_empty() {
        return Err(loc(16872, "'$' by itself is not a valid FieldPath"));
    }
    Ok(Node::Path(parse_field_path(path)?))
}

/// mongod's `ExpressionFieldPath::evaluatePath`: a path through an array of documents yields
/// the array of the values found (non-documents and missing values are skipped).
fn walk_path(v: &Bson, path: &[String]) -> Option<Bson> {
    let Some((head, rest)) = path.split_first() else {
        return Some(v.clone());
    };
    match v {
        Bson::Document(d) => walk_path(d.get(head)?, rest),
        Bson::Array(items) => Some(Bson::Array(
            items
                .iter()
                .filter(|i| matches!(i, Bson::Document(_)))
                .filter_map(|i| walk_path(i, path))
                .collect(),
        )),
        _ => None,
    }
}

fn walk_doc(d: &Document, path: &[String]) -> Option<Bson> {
    let (head, rest) = path.split_first()?;
    walk_path(d.get(head)?, rest)
}

/// A `"$a.b"` path, read from `$$CURRENT` (the document unless `CURRENT` is rebound).
pub(crate) fn eval_path(cx: &Cx, path: &[String]) -> Option<Bson> {
    match cx.vars.lookup("CURRENT") {
        Some(Some(current)) => walk_path(current, path),
        Some(None) => None,
        None => walk_doc(cx.root, path),
    }
}

/// A `"$$name.a.b"` reference: the system variables, then those in scope.
pub(crate) fn eval_var(cx: &Cx, name: &str, path: &[String]) -> Result<Option<Bson>> {
    let value = match name {
        "ROOT" if !path.is_empty() => return Ok(walk_doc(cx.root, path)),
        "ROOT" => return Ok(Some(Bson::Document(cx.root.clone()))),
        "REMOVE" => return Ok(None),
        "JS_SCOPE" => {
            return Err(loc(4631100, "Use of undefined variable '$$JS_SCOPE'."));
        }
        "IS_MR" => return Err(loc(4631101, "Use of undefined variable '$$IS_MR'.")),
        _ => match cx.vars.lookup(name) {
            Some(Some(v)) => v,
            Some(None) => return Ok(None),
            None if name == "NOW" || name == "CLUSTER_TIME" => {
                return Err(loc(
                    51144,
                    format!("Builtin variable '$${name}' is not available"),
                ));
            }
            None if name == "CURRENT" => {
                return Ok(if path.is_empty() {
                    Some(Bson::Document(cx.root.clone()))
                } else {
                    walk_doc(cx.root, path)
                });
            }
            None => {
                return Err(loc(17276, format!("Use of undefined variable: {name}")));
            }
        },
    };
    Ok(walk_path(value, path))
}

/// `$let`: `vars` are bound in the scope of `in`.
#[derive(Debug, Clone)]
pub(crate) struct Let {
    vars: Vec<(String, Expr)>,
    body: Box<Expr>,
}

pub(crate) fn parse_let(arg: &Bson) -> Result<Node> {
    let d = object_arg(arg, 16874, "$let only supports an object as its argument")?;
    let (mut vars, mut body) = (None, None);
    for (k, v) in d {
        match k.as_str() {
            "vars" => {
                let Bson::Document(vd) = v else {
                    return Err(loc(
                        10065,
                        format!(
                            "invalid parameter: expected an object (vars), found: {}",
                            type_name(v)
                        ),
                    ));
                };
                let mut bound = Vec::new();
                for (name, e) in vd {
                    validate_user_var_name(name)?;
                    bound.push((name.clone(), Expr::parse(e)?));
                }
                vars = Some(bound);
            }
            "in" => body = Some(Expr::parse(v)?),
            _ => return Err(loc(16875, format!("Unrecognized parameter to $let: {k}"))),
        }
    }
    let vars = vars.ok_or_else(|| loc(16876, "Missing 'vars' parameter to $let"))?;
    let body = body.ok_or_else(|| loc(16877, "Missing 'in' parameter to $let"))?;
    Ok(Node::Let(Let {
        vars,
        body: boxed(body),
    }))
}

impl Let {
    pub(crate) fn eval(&self, cx: &Cx) -> Result<Option<Bson>> {
        let Let { vars, body } = self;
        let mut scope = cx.vars.clone();
        for (name, ve) in vars {
            // Every binding sees the outer scope only, as in mongod.
            let v = cx.eval(ve)?;
            scope.bind(name, v);
        }
        cx.with_vars(&scope).eval(body)
    }
}

#[cfg(test)]
mod tests {
    use crate::expr::tests::{date, error, eval, eval_in, parse_error, value, vars};
    use crate::expr::{Expr, Variables};
    use bson::{Bson, Timestamp, bson, doc};

    #[test]
    fn field_paths_traverse_arrays_of_documents() {
        let root = doc! {"a": {"b": 1}, "arr": [{"x": 1}, {"y": 2}, {"x": 3}, 7, [{"x": 9}]]};
        assert_eq!(eval_in(bson!("$a.b"), &root).unwrap(), Some(bson!(1)));
        assert_eq!(eval_in(bson!("$a.c"), &root).unwrap(), None);
        assert_eq!(eval_in(bson!("$a.b.c"), &root).unwrap(), None);
        // Non-documents (including nested arrays) are skipped; numeric parts are field names.
        assert_eq!(
            eval_in(bson!("$arr.x"), &root).unwrap(),
            Some(bson!([1, 3]))
        );
        assert_eq!(eval_in(bson!("$arr.0"), &root).unwrap(), Some(bson!([])));
        let nested = doc! {"a": [{"b": [{"c": 1}, {"c": 2}]}, {"b": {"c": 3}}]};
        assert_eq!(
            eval_in(bson!("$a.b.c"), &nested).unwrap(),
            Some(bson!([[1, 2], 3]))
        );
    }

    #[test]
    fn variables() {
        let root = doc! {"a": 1, "d": {"e": 2}};
        assert_eq!(
            eval_in(bson!("$$ROOT"), &root).unwrap(),
            Some(Bson::Document(root.clone()))
        );
        assert_eq!(
            eval_in(bson!("$$CURRENT.a"), &root).unwrap(),
            Some(bson!(1))
        );
        assert_eq!(eval_in(bson!("$$ROOT.d.e"), &root).unwrap(), Some(bson!(2)));
        assert_eq!(eval(bson!("$$REMOVE")), None);
        assert_eq!(value(bson!("$$NOW")), date(1_700_000_000_000));
        assert_eq!(
            value(bson!("$$CLUSTER_TIME")),
            Bson::Timestamp(Timestamp {
                time: 1_700_000_000,
                increment: 1
            })
        );
        let e = error(bson!("$$x"));
        assert_eq!(
            (e.code, e.errmsg.as_str()),
            (17276, "Use of undefined variable: x")
        );
        assert_eq!(parse_error(bson!("$$FOO")).code, 17276);
        assert_eq!(parse_error(bson!("$$")).code, 16869);
        assert_eq!(parse_error(bson!("$$1a")).code, 16870);
        let v = vars()
            .with_let(&doc! {"x": {"a": [{"b": 5}]}, "y": {"$add": [1, 2]}})
            .unwrap();
        let e = Expr::parse(&bson!(["$$x.a.b", "$$y"])).unwrap();
        assert_eq!(e.eval(&doc! {}, &v).unwrap(), Some(bson!([[5], 3])));
        assert_eq!(vars().with_let(&doc! {"Bad": 1}).unwrap_err().code, 16867);
    }

    #[test]
    fn variable_rules() {
        let e = parse_error(bson!({"$let": {"vars": {"a-b": 1}, "in": 1}}));
        assert_eq!(
            (e.code, e.errmsg.as_str()),
            (
                16868,
                "'a-b' contains an invalid character for a variable name: '-'"
            )
        );
        assert_eq!(
            parse_error(bson!({"$let": {"vars": {"": 1}, "in": 1}})).code,
            16866
        );
        assert_eq!(parse_error(bson!("$$a-b")).code, 16871);
        assert_eq!(error(bson!("$$JS_SCOPE")).code, 4631100);
        let no_system = Variables::default();
        let e = Expr::parse(&bson!("$$NOW"))
            .unwrap()
            .eval(&doc! {}, &no_system)
            .unwrap_err();
        assert_eq!(e.code, 51144);
        let e = vars().with_let(&doc! {"x": "$a"}).unwrap_err();
        assert_eq!(e.code, 31474);
        assert_eq!(
            vars()
                .with_let(&doc! {"x": {"$literal": "$a"}})
                .unwrap()
                .get("x"),
            Some(&bson!("$a"))
        );
        let v = vars()
            .with_let(&doc! {"t": {"$add": ["$$NOW", 1]}})
            .unwrap();
        assert_eq!(v.get("t"), Some(&date(1_700_000_000_001)));
    }
}
