//! Strings: `$concat`, `$toLower`, `$toUpper`, `$split`, `$strcasecmp`, the byte and code
//! point forms of `$substr*`, `$strLen*` and `$indexOf*`, `$trim`/`$ltrim`/`$rtrim` and
//! `$replaceOne`/`$replaceAll`.

use crate::bsontype::type_name;
use crate::error::Result;
use crate::expr::Arity::{Exactly, Range, Variadic};
use crate::expr::calendar::{DEFAULT_DATE_FORMAT, format_date};
use crate::expr::common::{
    decimal_unsupported, format_double, is_nullish, loc, null, show, take, type_of, unrecognized,
};
use crate::expr::number::{Num, as_int32, index_arg, narrow};
use crate::expr::{Arity, Cx, Expr, Node, boxed, named_args};
use bson::Bson;

pub(crate) const OPERATORS: &[(&str, Arity)] = &[
    ("$strLenBytes", Exactly(1)),
    ("$toLower", Exactly(1)),
    ("$toUpper", Exactly(1)),
    ("$split", Exactly(2)),
    ("$concat", Variadic),
    ("$substrBytes", Exactly(3)),
    ("$strcasecmp", Exactly(2)),
    ("$strLenCP", Exactly(1)),
    ("$substrCP", Exactly(3)),
    ("$indexOfBytes", Range(2, 4)),
    ("$indexOfCP", Range(2, 4)),
];

pub(crate) fn eval(cx: &Cx, op: &str, args: &[Expr]) -> Result<Option<Bson>> {
    let mut vals = cx.eval_all(args)?;
    match op {
        "$concat" => concat(vals),
        "$strLenBytes" => str_len_bytes(&vals),
        "$toLower" => Ok(Some(Bson::String(
            coerce_to_string(vals[0].as_ref())?.to_ascii_lowercase(),
        ))),
        "$toUpper" => Ok(Some(Bson::String(
            coerce_to_string(vals[0].as_ref())?.to_ascii_uppercase(),
        ))),
        "$split" => split(take(&mut vals, 0), take(&mut vals, 1)),
        "$substrBytes" => substr_bytes(&vals),
        "$strcasecmp" => strcasecmp(&vals),
        "$strLenCP" => str_len_cp(&vals),
        "$substrCP" => eval_substr_cp(vals),
        "$indexOfBytes" | "$indexOfCP" => eval_index_of_string(op, &vals),
        _ => Err(unrecognized(op)),
    }
}

fn concat(vals: Vec<Option<Bson>>) -> Result<Option<Bson>> {
    let mut out = String::new();
    for v in vals {
        match v {
            None | Some(Bson::Null) | Some(Bson::Undefined) => return null(),
            Some(Bson::String(s)) => out.push_str(&s),
            Some(other) => {
                return Err(loc(
                    16702,
                    format!("$concat only supports strings, not {}", type_name(&other)),
                ));
            }
        }
    }
    Ok(Some(Bson::String(out)))
}

fn coerce_to_string(v: Option<&Bson>) -> Result<String> {
    Ok(match v {
        None | Some(Bson::Null) | Some(Bson::Undefined) => String::new(),
        Some(Bson::String(s)) | Some(Bson::Symbol(s)) => s.clone(),
        Some(Bson::Int32(i)) => i.to_string(),
        Some(Bson::Int64(i)) => i.to_string(),
        Some(Bson::Double(d)) => format_double(*d),
        Some(Bson::DateTime(d)) => format_date(d.timestamp_millis(), DEFAULT_DATE_FORMAT, 0)?,
        // Timestamp::toStringPretty: the seconds as a UTC date-time, then ":" and the increment.
        Some(Bson::Timestamp(t)) => format!(
            "{}:{}",
            format_date(t.time as i64 * 1000, "%Y-%m-%dT%H:%M:%S", 0)?,
            t.increment
        ),
        Some(Bson::JavaScriptCode(code)) => code.clone(),
        Some(Bson::Decimal128(_)) => return Err(decimal_unsupported()),
        Some(other) => {
            return Err(loc(
                16007,
                format!(
                    "can't convert from BSON type {} to String",
                    type_name(other)
                ),
            ));
        }
    })
}

fn strcasecmp(vals: &[Option<Bson>]) -> Result<Option<Bson>> {
    let a = coerce_to_string(vals[0].as_ref())?.to_ascii_uppercase();
    let b = coerce_to_string(vals[1].as_ref())?.to_ascii_uppercase();
    Ok(Some(Bson::Int32(a.as_bytes().cmp(b.as_bytes()) as i32)))
}

fn str_len_bytes(vals: &[Option<Bson>]) -> Result<Option<Bson>> {
    match &vals[0] {
        Some(Bson::String(s)) => Ok(Some(narrow(s.len() as i64, false))),
        other => Err(loc(
            34473,
            format!(
                "$strLenBytes requires a string argument, found: {}",
                type_of(other.as_ref())
            ),
        )),
    }
}

fn str_len_cp(vals: &[Option<Bson>]) -> Result<Option<Bson>> {
    match &vals[0] {
        Some(Bson::String(s)) => Ok(Some(narrow(s.chars().count() as i64, false))),
        other => Err(loc(
            34471,
            format!(
                "$strLenCP requires a string argument, found: {}",
                type_of(other.as_ref())
            ),
        )),
    }
}

fn split(s: Option<Bson>, sep: Option<Bson>) -> Result<Option<Bson>> {
    if is_nullish(s.as_ref()) || is_nullish(sep.as_ref()) {
        return null();
    }
    let Some(Bson::String(s)) = s else {
        return Err(loc(
            40085,
            format!(
                "$split requires an expression that evaluates to a string as a first argument, found: {}",
                type_of(s.as_ref())
            ),
        ));
    };
    let Some(Bson::String(sep)) = sep else {
        return Err(loc(
            40086,
            format!(
                "$split requires an expression that evaluates to a string as a second argument, found: {}",
                type_of(sep.as_ref())
            ),
        ));
    };
    if sep.is_empty() {
        return Err(loc(40087, "$split requires a non-empty separator"));
    }
    Ok(Some(Bson::Array(
        s.split(sep.as_str())
            .map(|p| Bson::String(p.to_string()))
            .collect(),
    )))
}

fn substr_bytes(vals: &[Option<Bson>]) -> Result<Option<Bson>> {
    let s = coerce_to_string(vals[0].as_ref())?;
    let start = match vals[1].as_ref().map(Num::of).transpose()?.flatten() {
        Some(n) => n,
        None => {
            return Err(loc(
                16034,
                format!(
                    "$substrBytes:  starting index must be a numeric type (is BSON type {})",
                    type_of(vals[1].as_ref())
                ),
            ));
        }
    };
    let len = match vals[2].as_ref().map(Num::of).transpose()?.flatten() {
        Some(n) => n,
        None => {
            return Err(loc(
                16035,
                format!(
                    "$substrBytes:  length must be a numeric type (is BSON type {})",
                    type_of(vals[2].as_ref())
                ),
            ));
        }
    };
    let start_f = start.f64().trunc();
    if start_f < 0.0 {
        return Err(loc(
            50752,
            format!(
                "$substrBytes:  starting index must be non-negative (got: {})",
                start_f as i64
            ),
        ));
    }
    let bytes = s.as_bytes();
    let start = (start_f as usize).min(bytes.len());
    let len_f = len.f64().trunc();
    let end = if len_f < 0.0 {
        bytes.len()
    } else {
        start.saturating_add(len_f as usize).min(bytes.len())
    };
    let is_continuation = |i: usize| i < bytes.len() && (bytes[i] & 0xC0) == 0x80;
    if is_continuation(start) {
        return Err(loc(
            28656,
            "$substrBytes:  Invalid range, starting index is a UTF-8 continuation byte.",
        ));
    }
    if is_continuation(end) {
        return Err(loc(
            28657,
            "$substrBytes:  Invalid range, ending index is in the middle of a UTF-8 character.",
        ));
    }
    Ok(Some(Bson::String(s[start..end].to_string())))
}

/// `$substrCP` (ExpressionSubstrCP): start and length count code points.
fn eval_substr_cp(vals: Vec<Option<Bson>>) -> Result<Option<Bson>> {
    let s = coerce_to_string(vals[0].as_ref())?;
    let int_arg = |v: &Option<Bson>, what: &str, code_num: i32, code_int: i32| -> Result<i64> {
        let b = v.as_ref();
        if b.map(Num::of).transpose()?.flatten().is_none() {
            return Err(loc(
                code_num,
                format!(
                    "$substrCP: {what} must be a numeric type (is BSON type {})",
                    type_of(b)
                ),
            ));
        }
        let b = b.unwrap_or(&Bson::Null);
        as_int32(b)?.ok_or_else(|| {
            loc(
                code_int,
                format!(
                    "$substrCP: {what} cannot be represented as a 32-bit integral value: {}",
                    show(b)
                ),
            )
        })
    };
    let start = int_arg(&vals[1], "starting index", 34450, 34451)?;
    let len = int_arg(&vals[2], "length", 34452, 34453)?;
    if len < 0 {
        return Err(loc(
            34454,
            "$substrCP: length must be a nonnegative integer.",
        ));
    }
    if start < 0 {
        return Err(loc(
            34455,
            "$substrCP: the starting index must be nonnegative integer.",
        ));
    }
    let out: String = s.chars().skip(start as usize).take(len as usize).collect();
    Ok(Some(Bson::String(out)))
}

/// `$indexOfBytes`/`$indexOfCP`: the first index of the token within [start, end), or -1.
fn eval_index_of_string(op: &str, vals: &[Option<Bson>]) -> Result<Option<Bson>> {
    let bytes = op == "$indexOfBytes";
    let (code1, code2) = if bytes {
        (40091, 40092)
    } else {
        (40093, 40094)
    };
    let input = match &vals[0] {
        None | Some(Bson::Null) | Some(Bson::Undefined) => return Ok(Some(Bson::Null)),
        Some(Bson::String(s)) => s,
        Some(other) => {
            return Err(loc(
                code1,
                format!(
                    "{op} requires a string as the first argument, found: {}",
                    type_name(other)
                ),
            ));
        }
    };
    let Some(Bson::String(token)) = &vals[1] else {
        return Err(loc(
            code2,
            format!(
                "{op} requires a string as the second argument, found: {}",
                type_of(vals[1].as_ref())
            ),
        ));
    };
    let units: Vec<usize> = if bytes {
        (0..=input.len()).collect()
    } else {
        input
            .char_indices()
            .map(|(i, _)| i)
            .chain(std::iter::once(input.len()))
            .collect()
    };
    let len = units.len() - 1;
    let start = match vals.get(2) {
        Some(v) => index_arg(op, v.as_ref().unwrap_or(&Bson::Undefined), "starting index")?,
        None => 0,
    };
    let end = match vals.get(3) {
        Some(v) => index_arg(op, v.as_ref().unwrap_or(&Bson::Undefined), "ending index")?,
        None => len,
    }
    .min(len);
    if start > len || end < start {
        return Ok(Some(Bson::Int32(-1)));
    }
    // As `input.substr(0, end).find(token, start)`: the match must end by the end index.
    let limit = units[end];
    let found = (start..=end).find(|&i| {
        let at = units[i];
        at + token.len() <= limit && input.as_bytes()[at..].starts_with(token.as_bytes())
    });
    Ok(Some(Bson::Int32(found.map_or(-1, |i| i as i32))))
}

/// `$trim`/`$ltrim`/`$rtrim`.
#[derive(Debug, Clone)]
pub(crate) struct Trim {
    op: &'static str,
    input: Box<Expr>,
    chars: Option<Box<Expr>>,
}

pub(crate) fn parse_trim(op: &str, arg: &Bson) -> Result<Node> {
    let op = match op {
        "$ltrim" => "$ltrim",
        "$rtrim" => "$rtrim",
        _ => "$trim",
    };
    let Bson::Document(d) = arg else {
        return Err(loc(
            50696,
            format!(
                "{op} only supports an object as an argument, found {}",
                type_name(arg)
            ),
        ));
    };
    let (mut input, mut chars) = (None, None);
    for (k, v) in d {
        match k.as_str() {
            "input" => input = Some(boxed(Expr::parse(v)?)),
            "chars" => chars = Some(boxed(Expr::parse(v)?)),
            _ => return Err(loc(50694, format!("{op} found an unknown argument: {k}"))),
        }
    }
    let input = input.ok_or_else(|| loc(50695, format!("{op} requires an 'input' field")))?;
    Ok(Node::Trim(Trim { op, input, chars }))
}

/// The whitespace `$trim` removes by default (ExpressionTrim's kDefaultTrimWhitespaceChars).
const TRIM_WHITESPACE: &[char] = &[
    '\0', ' ', '\t', '\n', '\u{0B}', '\u{0C}', '\r', '\u{A0}', '\u{1680}', '\u{2000}', '\u{2001}',
    '\u{2002}', '\u{2003}', '\u{2004}', '\u{2005}', '\u{2006}', '\u{2007}', '\u{2008}', '\u{2009}',
    '\u{200A}',
];

impl Trim {
    pub(crate) fn eval(&self, cx: &Cx) -> Result<Option<Bson>> {
        let Trim { op, input, chars } = self;
        let input = match cx.eval(input)? {
            None | Some(Bson::Null) | Some(Bson::Undefined) => return Ok(Some(Bson::Null)),
            Some(Bson::String(s)) => s,
            Some(other) => {
                return Err(loc(
                    50699,
                    format!(
                        "{op} requires its input to be a string, got {} (of type {}) instead.",
                        show(&other),
                        type_name(&other)
                    ),
                ));
            }
        };
        let set: Vec<char> = match chars {
            None => TRIM_WHITESPACE.to_vec(),
            Some(c) => match cx.eval(c)? {
                None | Some(Bson::Null) | Some(Bson::Undefined) => {
                    return Ok(Some(Bson::Null));
                }
                Some(Bson::String(s)) => s.chars().collect(),
                Some(other) => {
                    return Err(loc(
                        50700,
                        format!(
                            "{op} requires 'chars' to be a string, got {} (of type {}) instead.",
                            show(&other),
                            type_name(&other)
                        ),
                    ));
                }
            },
        };
        let trimmed = match *op {
            "$ltrim" => input.trim_start_matches(set.as_slice()),
            "$rtrim" => input.trim_end_matches(set.as_slice()),
            _ => input.trim_matches(set.as_slice()),
        };
        Ok(Some(Bson::String(trimmed.to_string())))
    }
}

/// `$replaceOne`/`$replaceAll`.
#[derive(Debug, Clone)]
pub(crate) struct Replace {
    op: &'static str,
    input: Box<Expr>,
    find: Box<Expr>,
    replacement: Box<Expr>,
}

pub(crate) fn parse_replace(op: &str, arg: &Bson) -> Result<Node> {
    let op = if op == "$replaceAll" {
        "$replaceAll"
    } else {
        "$replaceOne"
    };
    let Bson::Document(d) = arg else {
        return Err(loc(
            51751,
            format!(
                "{op} requires an object as an argument, found: {}",
                type_name(arg)
            ),
        ));
    };
    let [input, find, replacement] = named_args(d, ["input", "find", "replacement"], |k| {
        loc(51750, format!("{op} found an unknown argument: {k}"))
    })?;
    let input =
        input.ok_or_else(|| loc(51749, format!("{op} requires 'input' to be specified")))?;
    let find = find.ok_or_else(|| loc(51748, format!("{op} requires 'find' to be specified")))?;
    let replacement = replacement.ok_or_else(|| {
        loc(
            51747,
            format!("{op} requires 'replacement' to be specified"),
        )
    })?;
    Ok(Node::Replace(Replace {
        op,
        input,
        find,
        replacement,
    }))
}

impl Replace {
    pub(crate) fn eval(&self, cx: &Cx) -> Result<Option<Bson>> {
        let Replace {
            op,
            input,
            find,
            replacement,
        } = self;
        let values = [
            ("input", 51746, cx.eval(input)?),
            ("find", 51745, cx.eval(find)?),
            ("replacement", 51744, cx.eval(replacement)?),
        ];
        for (what, code, v) in &values {
            if !is_nullish(v.as_ref()) && !matches!(v, Some(Bson::String(_))) {
                return Err(loc(
                    *code,
                    format!(
                        "{op} requires that '{what}' be a string, found: {}",
                        show(v.as_ref().unwrap_or(&Bson::Null))
                    ),
                ));
            }
        }
        let [
            (_, _, Some(Bson::String(input))),
            (_, _, Some(Bson::String(find))),
            (_, _, Some(Bson::String(replacement))),
        ] = values
        else {
            return Ok(Some(Bson::Null));
        };
        let out = if *op == "$replaceAll" {
            if find.is_empty() {
                // An empty 'find' matches before every byte and at the end.
                let mut out = String::new();
                for c in input.chars() {
                    out.push_str(&replacement);
                    out.push(c);
                }
                out.push_str(&replacement);
                out
            } else {
                input.replace(find.as_str(), &replacement)
            }
        } else {
            input.replacen(find.as_str(), &replacement, 1)
        };
        Ok(Some(Bson::String(out)))
    }
}

#[cfg(test)]
mod tests {
    use crate::expr::tests::{error, value};
    use bson::{Bson, bson};

    #[test]
    fn strings() {
        assert_eq!(value(bson!({"$concat": ["a", "b"]})), bson!("ab"));
        assert_eq!(value(bson!({"$concat": ["a", null]})), Bson::Null);
        assert_eq!(value(bson!({"$concat": ["a", "$missing"]})), Bson::Null);
        let e = error(bson!({"$concat": ["a", 1]}));
        assert_eq!(
            (e.code, e.errmsg.as_str()),
            (16702, "$concat only supports strings, not int")
        );
        assert_eq!(value(bson!({"$toLower": "AbC"})), bson!("abc"));
        assert_eq!(value(bson!({"$toUpper": 1})), bson!("1"));
        assert_eq!(value(bson!({"$toUpper": null})), bson!(""));
        assert_eq!(error(bson!({"$toLower": [[1]]})).code, 16007);
        assert_eq!(value(bson!({"$strLenBytes": "héllo"})), bson!(6));
        assert_eq!(error(bson!({"$strLenBytes": 1})).code, 34473);
        assert_eq!(
            value(bson!({"$split": ["a,b,,c", ","]})),
            bson!(["a", "b", "", "c"])
        );
        assert_eq!(value(bson!({"$split": [null, ","]})), Bson::Null);
        assert_eq!(error(bson!({"$split": [1, ","]})).code, 40085);
        assert_eq!(error(bson!({"$split": ["a", 1]})).code, 40086);
        assert_eq!(error(bson!({"$split": ["a", ""]})).code, 40087);
        assert_eq!(
            value(bson!({"$substrBytes": ["hello", 1, 3]})),
            bson!("ell")
        );
        assert_eq!(
            value(bson!({"$substrBytes": ["hello", 2, -1]})),
            bson!("llo")
        );
        assert_eq!(value(bson!({"$substrBytes": [null, 0, 1]})), bson!(""));
        assert_eq!(error(bson!({"$substrBytes": ["é", 1, 1]})).code, 28656);
        assert_eq!(error(bson!({"$substrBytes": ["é", 0, 1]})).code, 28657);
        assert_eq!(error(bson!({"$substrBytes": ["a", "x", 1]})).code, 16034);
    }
}
