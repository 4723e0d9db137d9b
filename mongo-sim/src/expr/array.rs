//! Arrays: `$size`, `$arrayElemAt`, `$first`, `$last`, `$concatArrays`, `$in`, `$isArray`,
//! `$indexOfArray`, `$range`, `$reverseArray`, `$slice`, `$zip`, `$sortArray`, and the
//! operators that bind a variable per element: `$filter`, `$map` and `$reduce`.

use crate::bsontype::type_name;
use crate::compare::compare;
use crate::error::{CommandError, Result};
use crate::expr::Arity::{Exactly, Range, Variadic};
use crate::expr::common::{
    cmp_values, format_double, is_nullish, loc, null, object_arg, show, take, type_of,
    unrecognized, validate_field_name, validate_user_var_name,
};
use crate::expr::number::{Num, as_int32, index_arg, narrow};
use crate::expr::{Arity, Cx, Expr, Node, boxed, is_truthy};
use bson::Bson;
use std::cmp::Ordering;

pub(crate) const OPERATORS: &[(&str, Arity)] = &[
    ("$size", Exactly(1)),
    ("$first", Exactly(1)),
    ("$last", Exactly(1)),
    ("$isArray", Exactly(1)),
    ("$reverseArray", Exactly(1)),
    ("$in", Exactly(2)),
    ("$arrayElemAt", Exactly(2)),
    ("$concatArrays", Variadic),
    ("$slice", Range(2, 3)),
    ("$range", Range(2, 3)),
    ("$indexOfArray", Range(2, 4)),
];

pub(crate) fn eval(cx: &Cx, op: &str, args: &[Expr]) -> Result<Option<Bson>> {
    let mut vals = cx.eval_all(args)?;
    match op {
        "$in" => eval_in(&vals),
        "$size" => eval_size(take(&mut vals, 0)),
        "$arrayElemAt" => array_elem_at(op, take(&mut vals, 0), take(&mut vals, 1)),
        "$first" => array_elem_at(op, take(&mut vals, 0), Some(Bson::Int32(0))),
        "$last" => array_elem_at(op, take(&mut vals, 0), Some(Bson::Int32(-1))),
        "$concatArrays" => concat_arrays(vals),
        "$isArray" => Ok(Some(Bson::Boolean(matches!(vals[0], Some(Bson::Array(_)))))),
        "$range" => eval_range(&vals),
        "$slice" => eval_slice(vals),
        "$reverseArray" => reverse_array(take(&mut vals, 0)),
        "$indexOfArray" => index_of_array(&vals),
        _ => Err(unrecognized(op)),
    }
}

fn eval_in(vals: &[Option<Bson>]) -> Result<Option<Bson>> {
    match &vals[1] {
        Some(Bson::Array(items)) => {
            let needle = vals[0].clone();
            Ok(Some(Bson::Boolean(items.iter().any(|i| {
                cmp_values(&needle, &Some(i.clone())) == Ordering::Equal
            }))))
        }
        other => Err(loc(
            40081,
            format!(
                "$in requires an array as a second argument, found: {}",
                type_of(other.as_ref())
            ),
        )),
    }
}

fn eval_size(v: Option<Bson>) -> Result<Option<Bson>> {
    match v {
        Some(Bson::Array(items)) => Ok(Some(narrow(items.len() as i64, false))),
        other => Err(loc(
            17124,
            format!(
                "The argument to $size must be an array, but was of type: {}",
                type_of(other.as_ref())
            ),
        )),
    }
}

fn expect_int_index(op: &str, v: &Bson, code_type: i32, code_int: i32) -> Result<i64> {
    let n = Num::of(v)?.ok_or_else(|| {
        loc(
            code_type,
            format!(
                "{op}'s second argument must be a numeric value, but is {}",
                type_name(v)
            ),
        )
    })?;
    let i = match n {
        Num::Int(i) => i as i64,
        Num::Long(i) => i,
        Num::Double(d) if d.fract() == 0.0 => d as i64,
        Num::Double(_) => i64::MAX,
    };
    if i32::try_from(i).is_err() {
        return Err(loc(
            code_int,
            format!(
                "{op}'s second argument must be representable as a 32-bit integer: {}",
                format_double(n.f64())
            ),
        ));
    }
    Ok(i)
}

fn array_elem_at(op: &str, arr: Option<Bson>, idx: Option<Bson>) -> Result<Option<Bson>> {
    if is_nullish(arr.as_ref()) || is_nullish(idx.as_ref()) {
        return Ok(Some(Bson::Null));
    }
    let items = match arr {
        Some(Bson::Array(items)) => items,
        other => {
            let what = if op == "$arrayElemAt" {
                "$arrayElemAt's first argument"
            } else {
                &format!("{op}'s argument")
            };
            return Err(loc(
                28689,
                format!(
                    "{what} must be an array, but is {}",
                    type_of(other.as_ref())
                ),
            ));
        }
    };
    let i = expect_int_index(
        "$arrayElemAt",
        idx.as_ref().unwrap_or(&Bson::Null),
        28690,
        28691,
    )?;
    let len = items.len() as i64;
    let pos = if i < 0 { len + i } else { i };
    if pos < 0 || pos >= len {
        return Ok(None);
    }
    Ok(items.into_iter().nth(pos as usize))
}

fn concat_arrays(vals: Vec<Option<Bson>>) -> Result<Option<Bson>> {
    let mut out = Vec::new();
    for v in vals {
        match v {
            None | Some(Bson::Null) | Some(Bson::Undefined) => return null(),
            Some(Bson::Array(items)) => out.extend(items),
            Some(other) => {
                return Err(loc(
                    28664,
                    format!(
                        "$concatArrays only supports arrays, not {}",
                        type_name(&other)
                    ),
                ));
            }
        }
    }
    Ok(Some(Bson::Array(out)))
}

/// Not (yet) among the shared constants in `error`.
const EXCEEDED_MEMORY_LIMIT: crate::error::ErrorCode = crate::error::ErrorCode {
    code: 146,
    name: "ExceededMemoryLimit",
};

/// One `$range` bound; `what` and `article` build mongod's exact messages.
fn range_arg(v: Option<&Bson>, which: usize) -> Result<i64> {
    let (what, a, sep, code_num) = match which {
        0 => ("starting value", "a", " ", 34443),
        1 => ("ending value", "an", " ", 34445),
        _ => ("step value", "a", "", 34447),
    };
    let numeric = match v {
        Some(b) => Num::of(b)?.is_some(),
        None => false,
    };
    if !numeric {
        return Err(loc(
            code_num,
            format!(
                "$range requires a numeric {what}, found value of type:{sep}{}",
                type_of(v)
            ),
        ));
    }
    let v = v.unwrap_or(&Bson::Null);
    as_int32(v)?.ok_or_else(|| {
        loc(
            code_num + 1,
            format!(
                "$range requires {a} {what} that can be represented as a 32-bit integer, found value: {}",
                show(v)
            ),
        )
    })
}

fn eval_range(vals: &[Option<Bson>]) -> Result<Option<Bson>> {
    let start = range_arg(vals[0].as_ref(), 0)?;
    let end = range_arg(vals[1].as_ref(), 1)?;
    let step = match vals.get(2) {
        Some(v) => range_arg(v.as_ref(), 2)?,
        None => 1,
    };
    if step == 0 {
        return Err(loc(34449, "$range requires a non-zero step value"));
    }
    // internalQueryMaxRangeBytes (64MiB) bounds the output, as in ExpressionRange.
    const MAX_RANGE_BYTES: i64 = 64 * 1024 * 1024;
    let steps = (end - start) / step;
    let length = if steps >= 0 { 1 + steps } else { 0 };
    let needed = 24 + length * 16;
    if needed >= MAX_RANGE_BYTES {
        return Err(CommandError::new(
            EXCEEDED_MEMORY_LIMIT,
            format!(
                "$range would use too much memory ({needed} bytes) and cannot spill to disk. Memory limit: {MAX_RANGE_BYTES} bytes"
            ),
        ));
    }
    let mut out = Vec::new();
    let mut i = start;
    while (step > 0 && i < end) || (step < 0 && i > end) {
        out.push(Bson::Int32(i as i32));
        i += step;
    }
    Ok(Some(Bson::Array(out)))
}

/// `$slice` as an expression (ExpressionSlice): `[array, n]` or `[array, position, n]`.
fn eval_slice(vals: Vec<Option<Bson>>) -> Result<Option<Bson>> {
    let has_position = vals.len() == 3;
    let mut it = vals.into_iter();
    let (array, arg2, count) = (
        it.next().flatten(),
        it.next().flatten(),
        it.next().flatten(),
    );
    if is_nullish(array.as_ref()) || is_nullish(arg2.as_ref()) {
        return Ok(Some(Bson::Null));
    }
    let Some(Bson::Array(items)) = array else {
        return Err(loc(
            28724,
            format!(
                "First argument to $slice must be an array, but is of type: {}",
                type_of(array.as_ref())
            ),
        ));
    };
    let n2 = slice_int(
        &arg2.unwrap_or(Bson::Null),
        (
            28725,
            "Second argument to $slice must be a numeric value, but is of type: ",
        ),
        (
            28726,
            "Second argument to $slice can't be represented as a 32-bit integer: ",
        ),
    )?;
    let len = items.len() as i64;
    let (start, end) = if !has_position {
        if n2 >= 0 {
            (0, n2.min(len))
        } else {
            ((len + n2).max(0), len)
        }
    } else {
        let start = if n2 < 0 {
            (len + n2).max(0)
        } else {
            n2.min(len)
        };
        if is_nullish(count.as_ref()) {
            return Ok(Some(Bson::Null));
        }
        let c = slice_int(
            &count.unwrap_or(Bson::Null),
            (
                28727,
                "Third argument to $slice must be numeric, but is of type: ",
            ),
            (
                28728,
                "Third argument to $slice can't be represented as a 32-bit integer: ",
            ),
        )?;
        if c <= 0 {
            return Err(loc(
                28729,
                format!("Third argument to $slice must be positive: {c}"),
            ));
        }
        (start, (start + c).min(len))
    };
    Ok(Some(Bson::Array(
        items[start as usize..end as usize].to_vec(),
    )))
}

/// The position or count of `$slice`: a number representable as a 32-bit integer. The
/// errors are mongod's code and message prefix for a non-number and for any other value.
fn slice_int(v: &Bson, not_numeric: (i32, &str), not_int32: (i32, &str)) -> Result<i64> {
    let Some(n) = Num::of(v)? else {
        return Err(loc(
            not_numeric.0,
            format!("{}{}", not_numeric.1, type_name(v)),
        ));
    };
    as_int32(v)?.ok_or_else(|| {
        loc(
            not_int32.0,
            format!("{}{}", not_int32.1, format_double(n.f64())),
        )
    })
}

fn reverse_array(v: Option<Bson>) -> Result<Option<Bson>> {
    match v {
        None | Some(Bson::Null) | Some(Bson::Undefined) => null(),
        Some(Bson::Array(mut items)) => {
            items.reverse();
            Ok(Some(Bson::Array(items)))
        }
        Some(other) => Err(loc(
            34435,
            format!(
                "The argument to $reverseArray must be an array, but was of type: {}",
                type_name(&other)
            ),
        )),
    }
}

fn index_of_array(vals: &[Option<Bson>]) -> Result<Option<Bson>> {
    let items = match &vals[0] {
        None | Some(Bson::Null) | Some(Bson::Undefined) => return null(),
        Some(Bson::Array(items)) => items.clone(),
        Some(other) => {
            return Err(loc(
                40090,
                format!(
                    "$indexOfArray requires an array as a first argument, found: {}",
                    type_name(other)
                ),
            ));
        }
    };
    let start = match vals.get(2) {
        Some(v) => index_arg(
            "$indexOfArray",
            v.as_ref().unwrap_or(&Bson::Undefined),
            "starting index",
        )?,
        None => 0,
    };
    let end = match vals.get(3) {
        Some(v) => index_arg(
            "$indexOfArray",
            v.as_ref().unwrap_or(&Bson::Undefined),
            "ending index",
        )?,
        None => items.len(),
    }
    .min(items.len());
    let needle = &vals[1];
    for (i, item) in items.iter().enumerate().take(end).skip(start) {
        if cmp_values(needle, &Some(item.clone())) == Ordering::Equal {
            return Ok(Some(narrow(i as i64, false)));
        }
    }
    Ok(Some(Bson::Int32(-1)))
}

/// `$filter`: the elements for which `cond` is true, at most `limit` of them.
#[derive(Debug, Clone)]
pub(crate) struct Filter {
    input: Box<Expr>,
    var: String,
    cond: Box<Expr>,
    limit: Option<Box<Expr>>,
}

/// `$map`: `in` evaluated for each element.
#[derive(Debug, Clone)]
pub(crate) struct Map {
    input: Box<Expr>,
    var: String,
    body: Box<Expr>,
}

/// `$reduce`: `in` folded over the elements from `initialValue`.
#[derive(Debug, Clone)]
pub(crate) struct Reduce {
    input: Box<Expr>,
    initial: Box<Expr>,
    body: Box<Expr>,
}

/// `as` of `$map`/`$filter`; mongod reads a non-string as the empty name.
fn parse_as(v: &Bson) -> Result<String> {
    let name = match v {
        Bson::String(s) => s.as_str(),
        _ => "",
    };
    validate_user_var_name(name)?;
    Ok(name.to_string())
}

pub(crate) fn parse_filter(arg: &Bson) -> Result<Node> {
    let d = object_arg(
        arg,
        28646,
        "$filter only supports an object as its argument",
    )?;
    let (mut input, mut var, mut cond, mut limit) = (None, None, None, None);
    for (k, v) in d {
        match k.as_str() {
            "input" => input = Some(Expr::parse(v)?),
            "as" => var = Some(parse_as(v)?),
            "cond" => cond = Some(Expr::parse(v)?),
            "limit" => limit = Some(boxed(Expr::parse(v)?)),
            _ => {
                return Err(loc(
                    28647,
                    format!("Unrecognized parameter to $filter: {k}"),
                ));
            }
        }
    }
    let input = input.ok_or_else(|| loc(28648, "Missing 'input' parameter to $filter"))?;
    let cond = cond.ok_or_else(|| loc(28650, "Missing 'cond' parameter to $filter"))?;
    Ok(Node::Filter(Filter {
        input: boxed(input),
        var: var.unwrap_or_else(|| "this".to_string()),
        cond: boxed(cond),
        limit,
    }))
}

pub(crate) fn parse_map(arg: &Bson) -> Result<Node> {
    let d = object_arg(arg, 16878, "$map only supports an object as its argument")?;
    let (mut input, mut var, mut body) = (None, None, None);
    for (k, v) in d {
        match k.as_str() {
            "input" => input = Some(Expr::parse(v)?),
            "as" => var = Some(parse_as(v)?),
            "in" => body = Some(Expr::parse(v)?),
            _ => return Err(loc(16879, format!("Unrecognized parameter to $map: {k}"))),
        }
    }
    let input = input.ok_or_else(|| loc(16880, "Missing 'input' parameter to $map"))?;
    let body = body.ok_or_else(|| loc(16882, "Missing 'in' parameter to $map"))?;
    Ok(Node::Map(Map {
        input: boxed(input),
        var: var.unwrap_or_else(|| "this".to_string()),
        body: boxed(body),
    }))
}

pub(crate) fn parse_reduce(arg: &Bson) -> Result<Node> {
    let Bson::Document(d) = arg else {
        return Err(loc(
            40075,
            format!(
                "$reduce requires an object as an argument, found: {}",
                type_name(arg)
            ),
        ));
    };
    let (mut input, mut initial, mut body) = (None, None, None);
    for (k, v) in d {
        match k.as_str() {
            "input" => input = Some(Expr::parse(v)?),
            "initialValue" => initial = Some(Expr::parse(v)?),
            "in" => body = Some(Expr::parse(v)?),
            _ => {
                return Err(loc(
                    40076,
                    format!("$reduce found an unknown argument: {k}"),
                ));
            }
        }
    }
    let input = input.ok_or_else(|| loc(40077, "$reduce requires 'input' to be specified"))?;
    let initial =
        initial.ok_or_else(|| loc(40078, "$reduce requires 'initialValue' to be specified"))?;
    let body = body.ok_or_else(|| loc(40079, "$reduce requires 'in' to be specified"))?;
    Ok(Node::Reduce(Reduce {
        input: boxed(input),
        initial: boxed(initial),
        body: boxed(body),
    }))
}

/// The array `input` evaluates to, `None` when it is nullish; `not_array` is the error for
/// anything else.
fn input_array(
    cx: &Cx,
    input: &Expr,
    not_array: impl FnOnce(&Bson) -> CommandError,
) -> Result<Option<Vec<Bson>>> {
    match cx.eval(input)? {
        None | Some(Bson::Null) | Some(Bson::Undefined) => Ok(None),
        Some(Bson::Array(items)) => Ok(Some(items)),
        Some(other) => Err(not_array(&other)),
    }
}

impl Filter {
    pub(crate) fn eval(&self, cx: &Cx) -> Result<Option<Bson>> {
        let Filter {
            input,
            var,
            cond,
            limit,
        } = self;
        let items = input_array(cx, input, |other| {
            loc(
                28651,
                format!("input to $filter must be an array not {}", type_name(other)),
            )
        })?;
        let Some(items) = items else {
            return null();
        };
        if items.is_empty() {
            return Ok(Some(Bson::Array(items)));
        }
        // The limit is only evaluated for a non-empty input, as in mongod.
        let limit = match limit {
            Some(l) => filter_limit(cx, l)?,
            None => None,
        };
        let mut scope = cx.vars.clone();
        let mut out = Vec::new();
        for item in items {
            if limit.is_some_and(|l| out.len() >= l) {
                break;
            }
            scope.set(var.clone(), item.clone());
            if is_truthy(cx.with_vars(&scope).eval(cond)?.as_ref()) {
                out.push(item);
            }
        }
        Ok(Some(Bson::Array(out)))
    }
}

fn filter_limit(cx: &Cx, l: &Expr) -> Result<Option<usize>> {
    let v = cx.eval(l)?;
    if is_nullish(v.as_ref()) {
        return Ok(None);
    }
    let v = v.unwrap_or(Bson::Null);
    let Some(n) = as_int32(&v)? else {
        return Err(loc(
            327391,
            format!(
                "$filter: limit must be represented as a 32-bit integral value: {}",
                show(&v)
            ),
        ));
    };
    if n < 1 {
        return Err(loc(
            327392,
            format!("$filter: limit must be greater than 0: {}", show(&v)),
        ));
    }
    Ok(Some(n as usize))
}

impl Map {
    pub(crate) fn eval(&self, cx: &Cx) -> Result<Option<Bson>> {
        let Map { input, var, body } = self;
        let items = input_array(cx, input, |other| {
            loc(
                16883,
                format!("input to $map must be an array not {}", type_name(other)),
            )
        })?;
        let Some(items) = items else {
            return null();
        };
        let mut scope = cx.vars.clone();
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            scope.set(var.clone(), item);
            out.push(cx.with_vars(&scope).eval(body)?.unwrap_or(Bson::Null));
        }
        Ok(Some(Bson::Array(out)))
    }
}

impl Reduce {
    pub(crate) fn eval(&self, cx: &Cx) -> Result<Option<Bson>> {
        let Reduce {
            input,
            initial,
            body,
        } = self;
        let items = input_array(cx, input, |other| {
            loc(
                40080,
                format!(
                    "$reduce requires that 'input' be an array, found: {}",
                    show(other)
                ),
            )
        })?;
        let Some(items) = items else {
            return null();
        };
        let mut acc = cx.eval(initial)?;
        let mut scope = cx.vars.clone();
        for item in items {
            scope.set("this", item);
            scope.bind("value", acc);
            acc = cx.with_vars(&scope).eval(body)?;
        }
        Ok(acc)
    }
}

/// `$zip`: the arrays transposed, to the shortest length or (padded) the longest.
#[derive(Debug, Clone)]
pub(crate) struct Zip {
    inputs: Vec<Expr>,
    defaults: Vec<Expr>,
    longest: bool,
}

/// `inputs` or `defaults` of `$zip`: an array of expressions.
fn expression_list(v: &Bson, what: &str, code: i32) -> Result<Vec<Expr>> {
    let Bson::Array(items) = v else {
        return Err(loc(
            code,
            format!(
                "{what} must be an array of expressions, found {}",
                type_name(v)
            ),
        ));
    };
    items.iter().map(Expr::parse).collect()
}

pub(crate) fn parse_zip(arg: &Bson) -> Result<Node> {
    let Bson::Document(d) = arg else {
        return Err(loc(
            34460,
            format!(
                "$zip only supports an object as an argument, found {}",
                type_name(arg)
            ),
        ));
    };
    let (mut inputs, mut defaults, mut longest) = (Vec::new(), Vec::new(), false);
    for (k, v) in d {
        match k.as_str() {
            "inputs" => inputs = expression_list(v, "inputs", 34461)?,
            "defaults" => defaults = expression_list(v, "defaults", 34462)?,
            "useLongestLength" => {
                // mongod names the type of the whole argument here, which is always object.
                let Bson::Boolean(b) = v else {
                    return Err(loc(34463, "useLongestLength must be a bool, found object"));
                };
                longest = *b;
            }
            _ => return Err(loc(34464, format!("$zip found an unknown argument: {k}"))),
        }
    }
    if inputs.is_empty() {
        return Err(loc(34465, "$zip requires at least one input array"));
    }
    if !longest && !defaults.is_empty() {
        return Err(loc(
            34466,
            "cannot specify defaults unless useLongestLength is true",
        ));
    }
    if !defaults.is_empty() && defaults.len() != inputs.len() {
        return Err(loc(34467, "defaults and inputs must have the same length"));
    }
    Ok(Node::Zip(Zip {
        inputs,
        defaults,
        longest,
    }))
}

impl Zip {
    pub(crate) fn eval(&self, cx: &Cx) -> Result<Option<Bson>> {
        let Zip {
            inputs,
            defaults,
            longest,
        } = self;
        let mut arrays = Vec::with_capacity(inputs.len());
        for e in inputs {
            match cx.eval(e)? {
                None | Some(Bson::Null) | Some(Bson::Undefined) => {
                    return Ok(Some(Bson::Null));
                }
                Some(Bson::Array(items)) => arrays.push(items),
                Some(other) => {
                    return Err(loc(
                        34468,
                        format!(
                            "$zip found a non-array expression in input: {}",
                            show(&other)
                        ),
                    ));
                }
            }
        }
        let min = arrays.iter().map(Vec::len).min().unwrap_or(0);
        let max = arrays.iter().map(Vec::len).max().unwrap_or(0);
        let mut fill = vec![Bson::Null; arrays.len()];
        if min != max {
            for (slot, d) in fill.iter_mut().zip(defaults) {
                *slot = cx.eval(d)?.unwrap_or(Bson::Null);
            }
        }
        let len = if *longest { max } else { min };
        let rows = (0..len)
            .map(|row| {
                Bson::Array(
                    arrays
                        .iter()
                        .zip(&fill)
                        .map(|(a, f)| a.get(row).cloned().unwrap_or_else(|| f.clone()))
                        .collect(),
                )
            })
            .collect();
        Ok(Some(Bson::Array(rows)))
    }
}

/// `$sortArray`: the elements sorted by value or by fields of document elements.
#[derive(Debug, Clone)]
pub(crate) struct SortArray {
    input: Box<Expr>,
    sort_by: SortBy,
}

#[derive(Debug, Clone)]
enum SortBy {
    Value(bool),
    Fields(Vec<(String, bool)>),
}

/// A `sortBy` direction: 1 or -1 (as a number of any type). `in_pattern` selects the
/// error mongod gives for a bad value inside a `{field: dir}` pattern.
fn sort_direction(v: &Bson, in_pattern: bool) -> Result<bool> {
    match Num::of(v)?.map(Num::f64) {
        Some(1.0) => Ok(true),
        Some(-1.0) => Ok(false),
        _ if in_pattern => Err(loc(
            2942505,
            "BadValue: The $sort element value must be either 1 or -1",
        )),
        Some(_) => Err(loc(
            2942506,
            "The $sort element value must be either 1 or -1",
        )),
        None => Err(loc(
            2942507,
            "The $sort is invalid: use 1/-1 to sort the whole element, or {field:1/-1} to sort embedded fields",
        )),
    }
}

pub(crate) fn parse_sort_array(arg: &Bson) -> Result<Node> {
    let Bson::Document(d) = arg else {
        return Err(loc(
            2942500,
            format!(
                "$sortArray requires an object as an argument, found: {}",
                type_name(arg)
            ),
        ));
    };
    let (mut input, mut sort_by) = (None, None);
    for (k, v) in d {
        match k.as_str() {
            "input" => input = Some(Expr::parse(v)?),
            "sortBy" => {
                sort_by = Some(match v {
                    Bson::Document(spec) => {
                        if spec.is_empty() {
                            return Err(loc(
                                2942505,
                                "BadValue: $sort stage must have at least one sort key",
                            ));
                        }
                        let mut fields = Vec::new();
                        for (f, dir) in spec {
                            for part in f.split('.') {
                                validate_field_name(part)?;
                            }
                            fields.push((f.clone(), sort_direction(dir, true)?));
                        }
                        SortBy::Fields(fields)
                    }
                    other => SortBy::Value(sort_direction(other, false)?),
                })
            }
            _ => {
                return Err(loc(
                    2942501,
                    format!("$sortArray found an unknown argument: {k}"),
                ));
            }
        }
    }
    let input = input.ok_or_else(|| loc(2942502, "$sortArray requires 'input' to be specified"))?;
    let sort_by =
        sort_by.ok_or_else(|| loc(2942503, "$sortArray requires 'sortBy' to be specified"))?;
    Ok(Node::SortArray(SortArray {
        input: boxed(input),
        sort_by,
    }))
}

impl SortArray {
    pub(crate) fn eval(&self, cx: &Cx) -> Result<Option<Bson>> {
        let SortArray { input, sort_by } = self;
        let items = input_array(cx, input, |other| {
            loc(
                2942504,
                format!(
                    "The input argument to $sortArray must be an array, but was of type: {}",
                    type_name(other)
                ),
            )
        })?;
        let Some(mut items) = items else {
            return null();
        };
        match sort_by {
            SortBy::Value(asc) => items.sort_by(|a, b| {
                let c = compare(a, b);
                if *asc { c } else { c.reverse() }
            }),
            SortBy::Fields(fields) => items.sort_by(|a, b| {
                for (path, asc) in fields {
                    let c = compare(&sort_key(a, path, *asc), &sort_key(b, path, *asc));
                    let c = if *asc { c } else { c.reverse() };
                    if c != Ordering::Equal {
                        return c;
                    }
                }
                Ordering::Equal
            }),
        }
        Ok(Some(Bson::Array(items)))
    }
}

fn sort_key(v: &Bson, path: &str, asc: bool) -> Bson {
    let found = match v {
        Bson::Document(d) => crate::path::get_path(d, path).cloned(),
        _ => None,
    };
    match found {
        // An array sorts by its smallest element ascending and its largest descending, as
        // in a `$sort` stage.
        Some(Bson::Array(items)) if !items.is_empty() => {
            let pick = items.iter().reduce(|a, b| {
                let c = compare(a, b);
                if (asc && c == Ordering::Greater) || (!asc && c == Ordering::Less) {
                    b
                } else {
                    a
                }
            });
            pick.cloned().unwrap_or(Bson::Null)
        }
        Some(Bson::Array(_)) => Bson::Undefined,
        Some(v) => v,
        None => Bson::Null,
    }
}

#[cfg(test)]
mod tests {
    use crate::expr::tests::{error, eval, eval_in, parse_error, value};
    use bson::{Bson, bson, doc};

    #[test]
    fn array_operators() {
        assert_eq!(value(bson!({"$size": [[1, 2, 3]]})), bson!(3));
        let e = error(bson!({"$size": "$missing"}));
        assert_eq!(e.code, 17124);
        assert_eq!(
            e.errmsg,
            "The argument to $size must be an array, but was of type: missing"
        );
        assert_eq!(value(bson!({"$arrayElemAt": [[1, 2, 3], -1]})), bson!(3));
        assert_eq!(eval(bson!({"$arrayElemAt": [[1, 2, 3], 5]})), None);
        assert_eq!(value(bson!({"$arrayElemAt": [null, 0]})), Bson::Null);
        assert_eq!(error(bson!({"$arrayElemAt": ["a", 0]})).code, 28689);
        assert_eq!(error(bson!({"$arrayElemAt": [[1], "a"]})).code, 28690);
        assert_eq!(error(bson!({"$arrayElemAt": [[1], 1.5]})).code, 28691);
        assert_eq!(value(bson!({"$first": [[4, 5]]})), bson!(4));
        assert_eq!(value(bson!({"$last": [[4, 5]]})), bson!(5));
        assert_eq!(eval(bson!({"$first": [[]]})), None);
        assert_eq!(value(bson!({"$first": "$missing"})), Bson::Null);
        assert_eq!(error(bson!({"$last": 1})).code, 28689);
        assert_eq!(
            value(bson!({"$concatArrays": [[1], [2, 3]]})),
            bson!([1, 2, 3])
        );
        assert_eq!(value(bson!({"$concatArrays": [[1], null]})), Bson::Null);
        assert_eq!(error(bson!({"$concatArrays": [[1], 1]})).code, 28664);
        assert_eq!(value(bson!({"$range": [0, 10, 3]})), bson!([0, 3, 6, 9]));
        assert_eq!(value(bson!({"$range": [5, 0, -2]})), bson!([5, 3, 1]));
        assert_eq!(error(bson!({"$range": [0, 5, 0]})).code, 34449);
        assert_eq!(error(bson!({"$range": ["a", 5]})).code, 34443);
        assert_eq!(error(bson!({"$range": [0.5, 5]})).code, 34444);
        assert_eq!(value(bson!({"$slice": [[1, 2, 3], 2]})), bson!([1, 2]));
        assert_eq!(value(bson!({"$slice": [[1, 2, 3], -2]})), bson!([2, 3]));
        assert_eq!(value(bson!({"$slice": [[1, 2, 3], 1, 5]})), bson!([2, 3]));
        assert_eq!(value(bson!({"$slice": [[1, 2, 3], -5, 1]})), bson!([1]));
        assert_eq!(value(bson!({"$slice": [null, 1]})), Bson::Null);
        assert_eq!(error(bson!({"$slice": [[1], 1, 0]})).code, 28729);
        assert_eq!(error(bson!({"$slice": [1, 1]})).code, 28724);
        assert_eq!(value(bson!({"$reverseArray": [[1, 2]]})), bson!([2, 1]));
        assert_eq!(value(bson!({"$reverseArray": null})), Bson::Null);
        assert_eq!(error(bson!({"$reverseArray": 1})).code, 34435);
        assert_eq!(value(bson!({"$indexOfArray": [[1, 2, 3, 2], 2]})), bson!(1));
        assert_eq!(
            value(bson!({"$indexOfArray": [[1, 2, 3, 2], 2, 2]})),
            bson!(3)
        );
        assert_eq!(
            value(bson!({"$indexOfArray": [[1, 2, 3, 2], 2, 0, 1]})),
            bson!(-1)
        );
        assert_eq!(value(bson!({"$indexOfArray": [null, 2]})), Bson::Null);
        assert_eq!(error(bson!({"$indexOfArray": [1, 2]})).code, 40090);
        assert_eq!(error(bson!({"$indexOfArray": [[1], 1, -1]})).code, 40097);
        assert_eq!(value(bson!({"$isArray": [[1]]})), bson!(true));
        assert_eq!(value(bson!({"$isArray": "$missing"})), bson!(false));
        assert_eq!(
            value(bson!({"$sortArray": {"input": [3, 1, 2], "sortBy": -1}})),
            bson!([3, 2, 1])
        );
        assert_eq!(
            value(bson!({"$sortArray": {"input": [{"a": 2}, {"a": 1}], "sortBy": {"a": 1}}})),
            bson!([{"a": 1}, {"a": 2}])
        );
        assert_eq!(
            parse_error(bson!({"$sortArray": {"input": [], "sortBy": 2}})).code,
            2942506
        );
    }

    #[test]
    fn filter_map_reduce_let() {
        let root = doc! {"xs": [1, 2, 3, 4]};
        let f = bson!({"$filter": {"input": "$xs", "as": "x", "cond": {"$gt": ["$$x", 2]}}});
        assert_eq!(eval_in(f, &root).unwrap(), Some(bson!([3, 4])));
        let f = bson!({"$filter": {"input": "$xs", "cond": {"$gt": ["$$this", 1]}, "limit": 2}});
        assert_eq!(eval_in(f, &root).unwrap(), Some(bson!([2, 3])));
        assert_eq!(
            value(bson!({"$filter": {"input": "$missing", "cond": true}})),
            Bson::Null
        );
        assert_eq!(
            error(bson!({"$filter": {"input": 1, "cond": true}})).code,
            28651
        );
        assert_eq!(parse_error(bson!({"$filter": {"input": []}})).code, 28650);
        assert_eq!(
            parse_error(bson!({"$filter": {"input": [], "cond": 1, "x": 1}})).code,
            28647
        );

        let m = bson!({"$map": {"input": "$xs", "as": "x", "in": {"$multiply": ["$$x", 10]}}});
        assert_eq!(eval_in(m, &root).unwrap(), Some(bson!([10, 20, 30, 40])));
        let m = bson!({"$map": {"input": [1], "in": "$$REMOVE"}});
        assert_eq!(value(m), bson!([null]));
        assert_eq!(value(bson!({"$map": {"input": null, "in": 1}})), Bson::Null);
        assert_eq!(error(bson!({"$map": {"input": "a", "in": 1}})).code, 16883);
        assert_eq!(parse_error(bson!({"$map": {"input": []}})).code, 16882);
        assert_eq!(
            parse_error(bson!({"$map": {"input": [], "as": "X", "in": 1}})).code,
            16867
        );

        let r = bson!({"$reduce": {"input": "$xs", "initialValue": 0,
            "in": {"$add": ["$$value", "$$this"]}}});
        assert_eq!(eval_in(r, &root).unwrap(), Some(bson!(10)));
        assert_eq!(
            value(bson!({"$reduce": {"input": null, "initialValue": 0, "in": 1}})),
            Bson::Null
        );
        assert_eq!(
            error(bson!({"$reduce": {"input": 1, "initialValue": 0, "in": 1}})).code,
            40080
        );
        assert_eq!(
            parse_error(bson!({"$reduce": {"input": [], "in": 1}})).code,
            40078
        );

        let l = bson!({"$let": {"vars": {"a": 2, "b": {"$add": [1, 1]}},
            "in": {"$multiply": ["$$a", "$$b"]}}});
        assert_eq!(value(l), bson!(4));
        assert_eq!(parse_error(bson!({"$let": {"vars": {}}})).code, 16877);
        // A variable bound to a missing value is defined and reads as missing.
        let l =
            bson!({"$let": {"vars": {"m": "$nope"}, "in": {"x": "$$m", "y": {"$type": "$$m"}}}});
        assert_eq!(value(l), bson!({"y": "missing"}));
        // The limit is not evaluated for an empty input.
        let f = bson!({"$filter": {"input": [], "cond": true, "limit": "bad"}});
        assert_eq!(value(f), bson!([]));
        let f = bson!({"$filter": {"input": [1], "cond": true, "limit": 0}});
        assert_eq!(error(f).code, 327392);
        let f = bson!({"$filter": {"input": [1], "cond": true, "limit": 1.5}});
        assert_eq!(error(f).code, 327391);
        // CURRENT may be rebound, which moves where "$field" paths start.
        let l = bson!({"$let": {"vars": {"CURRENT": {"a": 7}}, "in": ["$a", "$$ROOT.a"]}});
        assert_eq!(eval_in(l, &doc! {"a": 1}).unwrap(), Some(bson!([7, 1])));
        // A binding does not leak outside its $let.
        let e = error(bson!([{"$let": {"vars": {"a": 1}, "in": "$$a"}}, "$$a"]));
        assert_eq!(e.code, 17276);
    }
}
