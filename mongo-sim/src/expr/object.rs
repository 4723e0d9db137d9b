//! Objects: `$mergeObjects`, `$objectToArray`, `$arrayToObject`, `$getField`, `$setField`
//! and `$unsetField`.

use crate::bsontype::type_name;
use crate::error::Result;
use crate::expr::Arity::{Exactly, Variadic};
use crate::expr::common::{loc, null, show, take, unrecognized};
use crate::expr::{Arity, Cx, Expr, Node, boxed};
use bson::{Bson, Document};

pub(crate) const OPERATORS: &[(&str, Arity)] = &[
    ("$objectToArray", Exactly(1)),
    ("$arrayToObject", Exactly(1)),
    ("$mergeObjects", Variadic),
];

pub(crate) fn eval(cx: &Cx, op: &str, args: &[Expr]) -> Result<Option<Bson>> {
    let mut vals = cx.eval_all(args)?;
    match op {
        "$mergeObjects" => merge_objects(vals),
        "$objectToArray" => object_to_array(take(&mut vals, 0)),
        "$arrayToObject" => eval_array_to_object(take(&mut vals, 0)),
        _ => Err(unrecognized(op)),
    }
}

fn merge_objects(vals: Vec<Option<Bson>>) -> Result<Option<Bson>> {
    let mut out = Document::new();
    for v in vals {
        match v {
            None | Some(Bson::Null) | Some(Bson::Undefined) => {}
            Some(Bson::Document(d)) => {
                for (k, v) in d {
                    out.insert(k, v);
                }
            }
            Some(other) => {
                return Err(loc(
                    40400,
                    format!(
                        "$mergeObjects requires object inputs, but input {} is of type {}",
                        show(&other),
                        type_name(&other)
                    ),
                ));
            }
        }
    }
    Ok(Some(Bson::Document(out)))
}

fn object_to_array(v: Option<Bson>) -> Result<Option<Bson>> {
    match v {
        None | Some(Bson::Null) | Some(Bson::Undefined) => null(),
        Some(Bson::Document(d)) => Ok(Some(Bson::Array(
            d.into_iter()
                .map(|(k, v)| Bson::Document(bson::doc! {"k": k, "v": v}))
                .collect(),
        ))),
        Some(other) => Err(loc(
            40390,
            format!(
                "$objectToArray requires a document input, found: {}",
                type_name(&other)
            ),
        )),
    }
}

fn eval_array_to_object(v: Option<Bson>) -> Result<Option<Bson>> {
    match v {
        None | Some(Bson::Null) | Some(Bson::Undefined) => null(),
        Some(Bson::Array(items)) => array_to_object(items).map(Some),
        Some(other) => Err(loc(
            40386,
            format!(
                "$arrayToObject requires an array input, found: {}",
                type_name(&other)
            ),
        )),
    }
}

/// `$arrayToObject`: the first element decides between `[k, v]` pairs and `{k, v}`
/// documents; the messages (including mongod's missing space in "mustall") are mongod's.
fn array_to_object(items: Vec<Bson>) -> Result<Bson> {
    let mut out = Document::new();
    let array_format = match items.first() {
        None => return Ok(Bson::Document(out)),
        Some(Bson::Array(_)) => true,
        Some(Bson::Document(_)) => false,
        Some(other) => {
            return Err(loc(
                40398,
                format!(
                    "Unrecognised input type format for $arrayToObject: {}",
                    type_name(other)
                ),
            ));
        }
    };
    for item in items {
        let (k, v) = if array_format {
            pair_from_array(item)?
        } else {
            pair_from_document(item)?
        };
        out.insert(k, v);
    }
    Ok(Bson::Document(out))
}

/// A `[k, v]` element of `$arrayToObject`'s input.
fn pair_from_array(item: Bson) -> Result<(String, Bson)> {
    let Bson::Array(pair) = item else {
        return Err(loc(
            40396,
            format!(
                "$arrayToObject requires a consistent input format. Elements mustall be arrays or all be objects. Array was detected, now found: {}",
                type_name(&item)
            ),
        ));
    };
    if pair.len() != 2 {
        return Err(loc(
            40397,
            format!(
                "$arrayToObject requires an array of size 2 arrays,found array of size: {}",
                pair.len()
            ),
        ));
    }
    let mut it = pair.into_iter();
    let (k, v) = (
        it.next().unwrap_or(Bson::Null),
        it.next().unwrap_or(Bson::Null),
    );
    let Bson::String(k) = k else {
        return Err(loc(
            40395,
            format!(
                "$arrayToObject requires an array of key-value pairs, where the key must be of type string. Found key type: {}",
                type_name(&k)
            ),
        ));
    };
    if k.contains('\0') {
        return Err(loc(
            4940400,
            "Key field cannot contain an embedded null byte",
        ));
    }
    Ok((k, v))
}

/// A `{k, v}` element of `$arrayToObject`'s input.
fn pair_from_document(item: Bson) -> Result<(String, Bson)> {
    let Bson::Document(d) = item else {
        return Err(loc(
            40391,
            format!(
                "$arrayToObject requires a consistent input format. Elements mustall be arrays or all be objects. Object was detected, now found: {}",
                type_name(&item)
            ),
        ));
    };
    if d.len() != 2 {
        return Err(loc(
            40392,
            format!(
                "$arrayToObject requires an object keys of 'k' and 'v'. Found incorrect number of keys:{}",
                d.len()
            ),
        ));
    }
    let (Some(k), Some(v)) = (d.get("k"), d.get("v")) else {
        return Err(loc(
            40393,
            format!(
                "$arrayToObject requires an object with keys 'k' and 'v'. Missing either or both keys from: {}",
                show(&Bson::Document(d.clone()))
            ),
        ));
    };
    let Bson::String(k) = k else {
        return Err(loc(
            40394,
            format!(
                "$arrayToObject requires an object with keys 'k' and 'v', where the value of 'k' must be of type string. Found type: {}",
                type_name(k)
            ),
        ));
    };
    if k.contains('\0') {
        return Err(loc(
            4940401,
            "Key field cannot contain an embedded null byte",
        ));
    }
    Ok((k.clone(), v.clone()))
}

/// `$getField`: a field of `input` (`$$CURRENT` by default), any name allowed.
#[derive(Debug, Clone)]
pub(crate) struct GetField {
    field: String,
    input: Box<Expr>,
}

/// `$setField`/`$unsetField`: `input` with one field set or (to missing) removed.
#[derive(Debug, Clone)]
pub(crate) struct SetField {
    field: String,
    input: Box<Expr>,
    value: Box<Expr>,
}

fn current() -> Expr {
    Expr {
        node: Node::Var {
            name: "CURRENT".to_string(),
            path: Vec::new(),
        },
    }
}

/// ExpressionGetField::parse: a bare value (or an object whose first key is an operator) is
/// the field name with `$$CURRENT` as input; otherwise `{field, input}`, both required.
pub(crate) fn parse_get_field(arg: &Bson) -> Result<Node> {
    let (field, input) = match arg {
        Bson::Document(d) if d.keys().next().is_some_and(|k| !k.starts_with('$')) => {
            let (mut field, mut input) = (None, None);
            for (k, v) in d {
                match k.as_str() {
                    "field" => field = Some(v),
                    "input" => input = Some(Expr::parse(v)?),
                    _ => {
                        return Err(loc(
                            3041701,
                            format!("$getField found an unknown argument: {k}"),
                        ));
                    }
                }
            }
            let field =
                field.ok_or_else(|| loc(3041702, "$getField requires 'field' to be specified"))?;
            let input =
                input.ok_or_else(|| loc(3041703, "$getField requires 'input' to be specified"))?;
            (field, input)
        }
        other => (other, current()),
    };
    let field = constant_field_name(field, "$getField", [5654600, 5654601, 5654602])?;
    Ok(Node::GetField(GetField {
        field,
        input: boxed(input),
    }))
}

/// The `field` of `$getField`/`$setField`: it must be a constant string at parse time, that
/// is a plain string or `$literal`/`$const` (checked before any constant folding, as mongod
/// checks the freshly parsed expression). `codes`: field path, non-constant, non-string.
fn constant_field_name(v: &Bson, op: &str, codes: [i32; 3]) -> Result<String> {
    let value = match v {
        Bson::String(s) if s.starts_with('$') => {
            let e = Expr::parse(v)?;
            let fp = match &e.node {
                Node::Path(p) => format!("${}", p.join(".")),
                _ => s.clone(),
            };
            if matches!(e.node, Node::Path(_)) || s.starts_with("$$") {
                return Err(loc(
                    codes[0],
                    format!(
                        "'{fp}' is a field path reference which is not allowed in this context. Did you mean {{$literal: '{fp}'}}?"
                    ),
                ));
            }
            v
        }
        Bson::Document(d)
            if d.len() == 1 && (d.contains_key("$literal") || d.contains_key("$const")) =>
        {
            d.values().next().unwrap_or(&Bson::Null)
        }
        Bson::Document(_) | Bson::Array(_) => {
            Expr::parse(v)?;
            return Err(loc(
                codes[1],
                format!(
                    "{op} requires 'field' to evaluate to a constant, but got a non-constant argument"
                ),
            ));
        }
        other => other,
    };
    match value {
        Bson::String(s) => Ok(s.clone()),
        other => Err(loc(
            codes[2],
            format!(
                "{op} requires 'field' to evaluate to type String, but got {}",
                type_name(other)
            ),
        )),
    }
}

/// ExpressionSetField::parse, also for `$unsetField` (whose value is `$$REMOVE`).
pub(crate) fn parse_set_field(op: &str, arg: &Bson) -> Result<Node> {
    let Bson::Document(d) = arg else {
        return Err(loc(
            4161100,
            format!("{op} only supports an object as its argument"),
        ));
    };
    let unset = op == "$unsetField";
    let (mut field, mut input, mut value) = (None, None, None);
    for (k, v) in d {
        match k.as_str() {
            "field" => field = Some(v),
            "input" => input = Some(Expr::parse(v)?),
            "value" if !unset => value = Some(Expr::parse(v)?),
            _ => return Err(loc(4161101, format!("{op} found an unknown argument: {k}"))),
        }
    }
    if unset {
        value = Some(Expr {
            node: Node::Var {
                name: "REMOVE".to_string(),
                path: Vec::new(),
            },
        });
    }
    let field =
        field.ok_or_else(|| loc(4161102, format!("{op} requires 'field' to be specified")))?;
    let value =
        value.ok_or_else(|| loc(4161103, format!("{op} requires 'value' to be specified")))?;
    let input =
        input.ok_or_else(|| loc(4161109, format!("{op} requires 'input' to be specified")))?;
    let field = constant_field_name(field, op, [4161108, 4161106, 4161107])?;
    Ok(Node::SetField(SetField {
        field,
        input: boxed(input),
        value: boxed(value),
    }))
}

impl GetField {
    /// ExpressionGetField::evaluate: missing input gives missing, null gives null, any other
    /// non-document gives missing.
    pub(crate) fn eval(&self, cx: &Cx) -> Result<Option<Bson>> {
        let GetField { field, input } = self;
        match cx.eval(input)? {
            None => Ok(None),
            Some(Bson::Null) | Some(Bson::Undefined) => Ok(Some(Bson::Null)),
            Some(Bson::Document(d)) => Ok(d.get(field).cloned()),
            Some(_) => Ok(None),
        }
    }
}

impl SetField {
    pub(crate) fn eval(&self, cx: &Cx) -> Result<Option<Bson>> {
        let SetField {
            field,
            input,
            value,
        } = self;
        match cx.eval(input)? {
            None | Some(Bson::Null) | Some(Bson::Undefined) => Ok(Some(Bson::Null)),
            Some(Bson::Document(mut d)) => {
                match cx.eval(value)? {
                    Some(v) => {
                        d.insert(field.clone(), v);
                    }
                    None => {
                        d.remove(field);
                    }
                }
                Ok(Some(Bson::Document(d)))
            }
            Some(_) => Err(loc(
                4161105,
                "$setField requires 'input' to evaluate to type Object",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::expr::tests::{error, eval_in, parse_error, value};
    use bson::{Bson, bson, doc};

    #[test]
    fn objects() {
        assert_eq!(
            value(bson!({"$mergeObjects": [{"a": 1, "b": 1}, null, "$missing", {"b": 2, "c": 3}]})),
            bson!({"a": 1, "b": 2, "c": 3})
        );
        assert_eq!(value(bson!({"$mergeObjects": []})), bson!({}));
        assert_eq!(error(bson!({"$mergeObjects": [{"a": 1}, 5]})).code, 40400);
        assert_eq!(
            value(bson!({"$objectToArray": {"$literal": {"a": 1, "b": 2}}})),
            bson!([{"k": "a", "v": 1}, {"k": "b", "v": 2}])
        );
        assert_eq!(value(bson!({"$objectToArray": null})), Bson::Null);
        assert_eq!(error(bson!({"$objectToArray": 1})).code, 40390);
        assert_eq!(
            value(bson!({"$arrayToObject": [[["a", 1], ["b", 2], ["a", 3]]]})),
            bson!({"a": 3, "b": 2})
        );
        assert_eq!(
            value(bson!({"$arrayToObject": [[{"k": "a", "v": 1}]]})),
            bson!({"a": 1})
        );
        assert_eq!(error(bson!({"$arrayToObject": 1})).code, 40386);
        assert_eq!(error(bson!({"$arrayToObject": [[["a"]]]})).code, 40397);
        assert_eq!(
            error(bson!({"$arrayToObject": [[["a", 1], {"k": "b", "v": 2}]]})).code,
            40396
        );
        let root = doc! {"a.b": 1, "c": {"d": 2}};
        assert_eq!(
            eval_in(bson!({"$getField": "a.b"}), &root).unwrap(),
            Some(bson!(1))
        );
        assert_eq!(
            eval_in(bson!({"$getField": {"field": "d", "input": "$c"}}), &root).unwrap(),
            Some(bson!(2))
        );
        assert_eq!(eval_in(bson!({"$getField": "zz"}), &root).unwrap(), None);
        assert_eq!(
            value(bson!({"$getField": {"field": "d", "input": null}})),
            Bson::Null
        );
        assert_eq!(
            parse_error(bson!({"$getField": {"field": "x"}})).code,
            3041703
        );
        let e = parse_error(bson!({"$getField": {"field": "$x", "input": {}}}));
        assert_eq!(e.code, 5654600);
        assert_eq!(
            e.errmsg,
            "'$x' is a field path reference which is not allowed in this context. Did you mean {$literal: '$x'}?"
        );
        let e = parse_error(bson!({"$getField": {"$concat": ["a", "b"]}}));
        assert_eq!(e.code, 5654601);
        assert_eq!(parse_error(bson!({"$getField": 5})).code, 5654602);
        // A non-document input reads as missing; a missing input too.
        assert_eq!(
            eval_in(bson!({"$getField": {"field": "d", "input": 5}}), &root).unwrap(),
            None
        );
        assert_eq!(
            eval_in(
                bson!({"$getField": {"field": "d", "input": "$nope"}}),
                &root
            )
            .unwrap(),
            None
        );
        assert_eq!(
            parse_error(bson!({"$setField": {"field": "$x", "input": "$$ROOT", "value": 5}})).code,
            4161108
        );
        assert_eq!(
            parse_error(bson!({"$setField": {"field": "x", "input": "$$ROOT"}})).code,
            4161103
        );
        assert_eq!(
            eval_in(bson!({"$unsetField": {"field": "d", "input": "$c"}}), &root).unwrap(),
            Some(bson!({}))
        );
        assert_eq!(
            error(bson!({"$setField": {"field": "x", "input": 1, "value": 1}})).code,
            4161105
        );
        assert_eq!(
            eval_in(
                bson!({"$setField": {"field": {"$literal": "$x"}, "input": "$c", "value": 5}}),
                &root
            )
            .unwrap(),
            Some(bson!({"d": 2, "$x": 5}))
        );
        assert_eq!(
            eval_in(
                bson!({"$setField": {"field": "d", "input": "$c", "value": "$$REMOVE"}}),
                &root
            )
            .unwrap(),
            Some(bson!({}))
        );
    }
}
