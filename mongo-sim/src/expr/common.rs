//! What every operator family shares: mongod's error and message shapes (`loc`, `show`,
//! `type_of`), the name rules for fields and user variables, and small readers of arguments.

use crate::bsontype::type_name;
use crate::compare::compare;
use crate::error::{COMMAND_NOT_SUPPORTED, CommandError, INVALID_PIPELINE_OPERATOR, Result};
use bson::{Bson, Document};
use std::cmp::Ordering;

pub(crate) fn loc(code: i32, msg: impl Into<String>) -> CommandError {
    CommandError::location(code, msg)
}

pub(crate) fn type_of(v: Option<&Bson>) -> &'static str {
    v.map(type_name).unwrap_or("missing")
}

pub(crate) fn is_nullish(v: Option<&Bson>) -> bool {
    matches!(v, None | Some(Bson::Null) | Some(Bson::Undefined))
}

/// The null most operators return for a nullish argument.
pub(crate) fn null() -> Result<Option<Bson>> {
    Ok(Some(Bson::Null))
}

/// The `i`th evaluated argument, moved out of `vals` (missing when there is none).
pub(crate) fn take(vals: &mut [Option<Bson>], i: usize) -> Option<Bson> {
    vals.get_mut(i).and_then(Option::take)
}

/// mongod's error for an operator it does not know (168 InvalidPipelineOperator).
pub(crate) fn unrecognized(op: &str) -> CommandError {
    CommandError::new(
        INVALID_PIPELINE_OPERATOR,
        format!("Unrecognized expression '{op}'"),
    )
}

/// A value as mongod's `Value::toString` prints it in messages: `"str"`, `{a: 1}`, `[1, 2]`.
pub(crate) fn show(v: &Bson) -> String {
    match v {
        Bson::String(s) => format!("\"{s}\""),
        Bson::Double(d) => format_double(*d),
        Bson::Int32(i) => i.to_string(),
        Bson::Int64(i) => i.to_string(),
        Bson::Boolean(b) => b.to_string(),
        Bson::Null => "null".to_string(),
        Bson::Undefined => "undefined".to_string(),
        Bson::Document(d) => {
            let fields: Vec<String> = d.iter().map(|(k, v)| format!("{k}: {}", show(v))).collect();
            format!("{{{}}}", fields.join(", "))
        }
        Bson::Array(items) => {
            let items: Vec<String> = items.iter().map(show).collect();
            format!("[{}]", items.join(", "))
        }
        other => other.to_string(),
    }
}

/// A document as `BSONObj::toString` prints it: `{ $add: [ 1 ], b: "x" }`.
pub(crate) fn show_obj(d: &Document) -> String {
    fn element(v: &Bson) -> String {
        match v {
            Bson::Document(d) => show_obj(d),
            Bson::Array(items) if items.is_empty() => "[]".to_string(),
            Bson::Array(items) => {
                let items: Vec<String> = items.iter().map(element).collect();
                format!("[ {} ]", items.join(", "))
            }
            Bson::Double(d) if d.is_finite() && d.fract() == 0.0 && d.abs() < 1e16 => {
                format!("{d:.1}")
            }
            Bson::Double(d) => d.to_string(),
            other => show(other),
        }
    }
    if d.is_empty() {
        return "{}".to_string();
    }
    let fields: Vec<String> = d
        .iter()
        .map(|(k, v)| format!("{k}: {}", element(v)))
        .collect();
    format!("{{ {} }}", fields.join(", "))
}

/// A double as mongod 7.0 prints it in `$toString` and messages (`str::stream() << double`,
/// which is printf `%g`): six significant digits, `1e+06` style outside [1e-4, 1e6).
pub(crate) fn format_double(d: f64) -> String {
    if d.is_nan() {
        return "NaN".to_string();
    }
    if d.is_infinite() {
        return if d > 0.0 { "Infinity" } else { "-Infinity" }.to_string();
    }
    if d == 0.0 {
        return if d.is_sign_negative() { "-0" } else { "0" }.to_string();
    }
    let sci = format!("{d:.5e}");
    let Some((mantissa, exp)) = sci.split_once('e') else {
        return d.to_string();
    };
    let exp: i32 = exp.parse().unwrap_or(0);
    let trim = |s: &str| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s.to_string()
        }
    };
    if (-4..6).contains(&exp) {
        trim(&format!("{d:.*}", (5 - exp) as usize))
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mantissa), exp.abs())
    }
}

pub(crate) fn decimal_unsupported() -> CommandError {
    CommandError::new(
        COMMAND_NOT_SUPPORTED,
        "Decimal128 values are not supported in aggregation expressions by this server",
    )
}

/// mongod's `FieldPath::uassertValidFieldName`.
pub(crate) fn validate_field_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(loc(
            15998,
            "FieldPath field names may not be empty strings.",
        ));
    }
    if name.starts_with('$') {
        return Err(loc(
            16410,
            "FieldPath field names may not start with '$'. Consider using $getField or $setField.",
        ));
    }
    if name.contains('\0') {
        return Err(loc(
            16411,
            "FieldPath field names may not contain '\0'. Consider using $getField or $setField.",
        ));
    }
    if name.contains('.') {
        return Err(loc(
            16412,
            "FieldPath field names may not contain '.'. Consider using $getField or $setField.",
        ));
    }
    Ok(())
}

/// `Variables::validateNameForUserWrite`: names a `$let`, `$map`, `$filter` or command `let`
/// may bind.
pub(crate) fn validate_user_var_name(name: &str) -> Result<()> {
    // CURRENT is the one system variable users may rebind.
    if name == "CURRENT" {
        return Ok(());
    }
    let Some(first) = name.chars().next() else {
        return Err(loc(16866, "empty variable names are not allowed"));
    };
    if !first.is_ascii_lowercase() && first.is_ascii() {
        return Err(loc(
            16867,
            format!("'{name}' starts with an invalid character for a user variable name"),
        ));
    }
    check_var_name_chars(name, 16868)
}

pub(crate) fn check_var_name_chars(name: &str, code: i32) -> Result<()> {
    match name
        .chars()
        .skip(1)
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || !c.is_ascii()))
    {
        Some(bad) => Err(loc(
            code,
            format!("'{name}' contains an invalid character for a variable name: '{bad}'"),
        )),
        None => Ok(()),
    }
}

pub(crate) fn object_arg<'a>(v: &'a Bson, code: i32, msg: &str) -> Result<&'a Document> {
    match v {
        Bson::Document(d) => Ok(d),
        _ => Err(loc(code, msg.to_string())),
    }
}

pub(crate) fn cmp_values(a: &Option<Bson>, b: &Option<Bson>) -> Ordering {
    // Missing compares as undefined: below null (canonical type order, EOO == Undefined).
    let a = a.clone().unwrap_or(Bson::Undefined);
    let b = b.clone().unwrap_or(Bson::Undefined);
    compare(&a, &b)
}
