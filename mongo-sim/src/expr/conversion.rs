//! Types and conversions: `$convert`, `$toString`, `$toInt`, `$toLong`, `$toDouble`,
//! `$toDate`, `$toBool`, `$toObjectId`, `$type` and `$isNumber` (manual: "$convert
//! (aggregation)", conversion table).

use crate::bsontype::type_name;
use crate::error::{CONVERSION_FAILURE, CommandError, Result};
use crate::expr::Arity::Exactly;
use crate::expr::calendar::{DEFAULT_DATE_FORMAT, format_date, parse_date_string};
use crate::expr::common::{
    decimal_unsupported, format_double, is_nullish, null, take, type_of, unrecognized,
};
use crate::expr::number::Num;
use crate::expr::{Arity, Cx, Expr, Node, is_const, named_args, opt_const};
use bson::{Bson, oid::ObjectId};

pub(crate) const OPERATORS: &[(&str, Arity)] = &[
    ("$toString", Exactly(1)),
    ("$toInt", Exactly(1)),
    ("$toLong", Exactly(1)),
    ("$toDouble", Exactly(1)),
    ("$toDate", Exactly(1)),
    ("$toBool", Exactly(1)),
    ("$toObjectId", Exactly(1)),
    ("$type", Exactly(1)),
    ("$isNumber", Exactly(1)),
];

pub(crate) fn eval(cx: &Cx, op: &str, args: &[Expr]) -> Result<Option<Bson>> {
    let mut vals = cx.eval_all(args)?;
    match op {
        "$type" => Ok(Some(Bson::String(type_of(vals[0].as_ref()).to_string()))),
        "$isNumber" => Ok(Some(Bson::Boolean(
            vals[0].as_ref().is_some_and(crate::compare::is_number),
        ))),
        "$toString" | "$toInt" | "$toLong" | "$toDouble" | "$toDate" | "$toBool"
        | "$toObjectId" => to_type(op, take(&mut vals, 0)),
        _ => Err(unrecognized(op)),
    }
}

/// `$toString`, `$toInt`, ...: `$convert` without `onError` or `onNull`.
fn to_type(op: &str, v: Option<Bson>) -> Result<Option<Bson>> {
    if is_nullish(v.as_ref()) {
        return null();
    }
    let target = match op {
        "$toString" => Target::String,
        "$toInt" => Target::Int,
        "$toLong" => Target::Long,
        "$toDouble" => Target::Double,
        "$toDate" => Target::Date,
        "$toBool" => Target::Bool,
        _ => Target::ObjectId,
    };
    match convert(&v.unwrap_or(Bson::Null), target) {
        Ok(v) => Ok(Some(v)),
        Err(ConvertError::Failure(msg)) => Err(CommandError::new(
            CONVERSION_FAILURE,
            conversion_message(&msg),
        )),
        Err(ConvertError::Other(e)) => Err(e),
    }
}

/// `$convert`.
#[derive(Debug, Clone)]
pub(crate) struct Convert {
    input: Box<Expr>,
    to: Box<Expr>,
    on_error: Option<Box<Expr>>,
    on_null: Option<Box<Expr>>,
}

pub(crate) fn parse_convert(arg: &Bson) -> Result<Node> {
    let Bson::Document(d) = arg else {
        return Err(CommandError::failed_to_parse(format!(
            "$convert expects an object of named arguments but found: {}",
            type_name(arg)
        )));
    };
    let [input, to, on_error, on_null] =
        named_args(d, ["input", "to", "onError", "onNull"], |k| {
            CommandError::failed_to_parse(format!("$convert found an unknown argument: {k}"))
        })?;
    let input = input
        .ok_or_else(|| CommandError::failed_to_parse("Missing 'input' parameter to $convert"))?;
    let to =
        to.ok_or_else(|| CommandError::failed_to_parse("Missing 'to' parameter to $convert"))?;
    if let Some(c) = to.as_constant()
        && !is_nullish(Some(c))
        && matches!(target_type(c)?, Target::Decimal)
    {
        return Err(decimal_unsupported());
    }
    Ok(Node::Convert(Convert {
        input,
        to,
        on_error,
        on_null,
    }))
}

impl Convert {
    pub(crate) fn eval(&self, cx: &Cx) -> Result<Option<Bson>> {
        let Convert {
            input,
            to,
            on_error,
            on_null,
        } = self;
        // ExpressionConvert::evaluate: a bad 'to' fails even for a null input, and a
        // null input wins over a null 'to'.
        let to = cx.eval(to)?;
        let value = cx.eval(input)?;
        let target = match &to {
            Some(t) if !is_nullish(Some(t)) => Some(target_type(t)?),
            _ => None,
        };
        if is_nullish(value.as_ref()) {
            return match on_null {
                Some(e) => cx.eval(e),
                None => Ok(Some(Bson::Null)),
            };
        }
        let Some(target) = target else {
            return Ok(Some(Bson::Null));
        };
        let value = value.unwrap_or(Bson::Null);
        match convert(&value, target) {
            Ok(v) => Ok(Some(v)),
            Err(ConvertError::Failure(msg)) => match on_error {
                Some(e) => cx.eval(e),
                None => Err(CommandError::new(
                    CONVERSION_FAILURE,
                    conversion_message(&msg),
                )),
            },
            Err(ConvertError::Other(e)) => Err(e),
        }
    }

    pub(crate) fn is_foldable(&self) -> bool {
        is_const(&self.input)
            && is_const(&self.to)
            && opt_const(&self.on_error)
            && opt_const(&self.on_null)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Target {
    Double,
    String,
    ObjectId,
    Bool,
    Date,
    Int,
    Long,
    Decimal,
    /// A BSON type no conversion produces (`object`, `regex`, ...), by its alias.
    Other(&'static str),
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Double => "double",
            Target::String => "string",
            Target::ObjectId => "objectId",
            Target::Bool => "bool",
            Target::Date => "date",
            Target::Int => "int",
            Target::Long => "long",
            Target::Decimal => "decimal",
            Target::Other(n) => n,
        }
    }
}

const TYPE_ALIASES: &[(&str, i32)] = &[
    ("double", 1),
    ("string", 2),
    ("object", 3),
    ("array", 4),
    ("binData", 5),
    ("undefined", 6),
    ("objectId", 7),
    ("bool", 8),
    ("date", 9),
    ("null", 10),
    ("regex", 11),
    ("dbPointer", 12),
    ("javascript", 13),
    ("symbol", 14),
    ("javascriptWithScope", 15),
    ("int", 16),
    ("timestamp", 17),
    ("long", 18),
    ("decimal", 19),
    ("minKey", -1),
    ("maxKey", 127),
];

fn target_from_alias(name: &'static str) -> Target {
    match name {
        "double" => Target::Double,
        "string" => Target::String,
        "objectId" => Target::ObjectId,
        "bool" => Target::Bool,
        "date" => Target::Date,
        "int" => Target::Int,
        "long" => Target::Long,
        "decimal" => Target::Decimal,
        other => Target::Other(other),
    }
}

fn target_type(to: &Bson) -> Result<Target> {
    match to {
        // "missing" is what `$type` returns for a missing value, so mongod accepts it here.
        Bson::String(s) if s == "missing" => Ok(Target::Other("missing")),
        Bson::String(s) => TYPE_ALIASES
            .iter()
            .find(|(n, _)| n == s)
            .map(|(n, _)| target_from_alias(n))
            .ok_or_else(|| CommandError::bad_value(format!("Unknown type name: {s}"))),
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) => {
            let n = Num::of(to)?.map(Num::f64).unwrap_or(f64::NAN);
            if n.fract() != 0.0 {
                return Err(CommandError::failed_to_parse(
                    "In $convert, numeric 'to' argument is not an integer",
                ));
            }
            TYPE_ALIASES
                .iter()
                .find(|(_, code)| *code as f64 == n)
                .map(|(name, _)| target_from_alias(name))
                .ok_or_else(|| {
                    CommandError::failed_to_parse(format!(
                        "In $convert, numeric value for 'to' does not correspond to a BSON type: {n}"
                    ))
                })
        }
        other => Err(CommandError::failed_to_parse(format!(
            "$convert's 'to' argument must be a string or number, but is {}",
            type_name(other)
        ))),
    }
}

enum ConvertError {
    /// A ConversionFailure that `onError` may replace; the text before mongod's
    /// " in $convert with no onError value" suffix.
    Failure(String),
    Other(CommandError),
}

impl From<CommandError> for ConvertError {
    fn from(e: CommandError) -> Self {
        ConvertError::Other(e)
    }
}

fn conversion_message(msg: &str) -> String {
    match msg.split_once(": ") {
        Some((head, tail))
            if head.starts_with("Failed to parse")
                || head.starts_with("Illegal hexadecimal")
                || head.starts_with("Error parsing")
                || head.starts_with("Conversion would")
                || head.starts_with("Attempt to") =>
        {
            format!("{head} in $convert with no onError value: {tail}")
        }
        _ => format!("{msg} in $convert with no onError value"),
    }
}

fn unsupported(from: &Bson, to: Target) -> ConvertError {
    ConvertError::Failure(format!(
        "Unsupported conversion from {} to {}",
        type_name(from),
        to.name()
    ))
}

/// performCastDoubleToInt/Long: the range check is on the value before truncation.
fn double_to_integer(d: f64, to_int: bool) -> std::result::Result<i64, ConvertError> {
    if d.is_nan() {
        return Err(ConvertError::Failure(
            "Attempt to convert NaN value to integer type".to_string(),
        ));
    }
    if d.is_infinite() {
        return Err(ConvertError::Failure(
            "Attempt to convert infinity value to integer type".to_string(),
        ));
    }
    let in_range = if to_int {
        d >= i32::MIN as f64 && d <= i32::MAX as f64
    } else {
        d >= i64::MIN as f64 && d < 9_223_372_036_854_775_808.0
    };
    if !in_range {
        return Err(ConvertError::Failure(format!(
            "Conversion would overflow target type: {}",
            format_double(d)
        )));
    }
    Ok(d.trunc() as i64)
}

/// parseStringToNumber rejects hexadecimal input before parsing.
fn reject_hex(s: &str) -> std::result::Result<(), ConvertError> {
    if s.starts_with("0x") {
        return Err(ConvertError::Failure(format!(
            "Illegal hexadecimal input: {s}"
        )));
    }
    Ok(())
}

fn parse_integer(s: &str) -> std::result::Result<i64, ConvertError> {
    reject_hex(s)?;
    let fail = |why: &str| ConvertError::Failure(format!("Failed to parse number '{s}': {why}"));
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(fail("Did not consume whole string."));
    }
    s.parse::<i64>().map_err(|_| fail("Overflow"))
}

fn convert(v: &Bson, to: Target) -> std::result::Result<Bson, ConvertError> {
    if let Bson::Decimal128(_) = v {
        return Err(decimal_unsupported().into());
    }
    match to {
        Target::Decimal => Err(decimal_unsupported().into()),
        Target::Other(_) => Err(unsupported(v, to)),
        Target::Bool => Ok(Bson::Boolean(match v {
            Bson::Boolean(b) => *b,
            Bson::Int32(i) => *i != 0,
            Bson::Int64(i) => *i != 0,
            Bson::Double(d) => *d != 0.0,
            _ => true,
        })),
        Target::Double => to_double(v),
        Target::Int | Target::Long => to_integer(v, to),
        Target::String => to_string(v),
        Target::ObjectId => to_object_id(v),
        Target::Date => to_date(v),
    }
}

fn to_double(v: &Bson) -> std::result::Result<Bson, ConvertError> {
    let to = Target::Double;
    Ok(Bson::Double(match v {
        Bson::Double(d) => *d,
        Bson::Int32(i) => *i as f64,
        Bson::Int64(i) => *i as f64,
        Bson::Boolean(b) => f64::from(u8::from(*b)),
        Bson::DateTime(d) => d.timestamp_millis() as f64,
        Bson::String(s) => {
            reject_hex(s)?;
            let ok = !s.is_empty() && !s.starts_with(char::is_whitespace);
            match s.parse::<f64>() {
                Ok(d) if ok => d,
                _ => {
                    return Err(ConvertError::Failure(format!(
                        "Failed to parse number '{s}': Did not consume whole string."
                    )));
                }
            }
        }
        _ => return Err(unsupported(v, to)),
    }))
}

fn to_integer(v: &Bson, to: Target) -> std::result::Result<Bson, ConvertError> {
    let i = match v {
        Bson::Int32(i) => *i as i64,
        Bson::Int64(i) => *i,
        Bson::Double(d) => double_to_integer(*d, to == Target::Int)?,
        Bson::Boolean(b) => i64::from(*b),
        Bson::DateTime(d) if to == Target::Long => d.timestamp_millis(),
        Bson::String(s) => {
            let i = parse_integer(s)?;
            if to == Target::Int && i32::try_from(i).is_err() {
                return Err(ConvertError::Failure(format!(
                    "Failed to parse number '{s}': Overflow"
                )));
            }
            i
        }
        _ => return Err(unsupported(v, to)),
    };
    if to != Target::Int {
        return Ok(Bson::Int64(i));
    }
    match i32::try_from(i) {
        Ok(i) => Ok(Bson::Int32(i)),
        // performCastLongToInt reports no value after the colon.
        Err(_) => Err(ConvertError::Failure(
            "Conversion would overflow target type: ".to_string(),
        )),
    }
}

fn to_string(v: &Bson) -> std::result::Result<Bson, ConvertError> {
    let to = Target::String;
    Ok(Bson::String(match v {
        Bson::String(s) => s.clone(),
        Bson::Double(d) => format_double(*d),
        Bson::Int32(i) => i.to_string(),
        Bson::Int64(i) => i.to_string(),
        Bson::Boolean(b) => b.to_string(),
        Bson::ObjectId(o) => o.to_hex(),
        Bson::DateTime(d) => format_date(d.timestamp_millis(), DEFAULT_DATE_FORMAT, 0)?,
        _ => return Err(unsupported(v, to)),
    }))
}

fn to_object_id(v: &Bson) -> std::result::Result<Bson, ConvertError> {
    let to = Target::ObjectId;
    Ok(match v {
        Bson::ObjectId(o) => Bson::ObjectId(*o),
        Bson::String(s) => {
            if s.len() != 24 {
                return Err(ConvertError::Failure(format!(
                    "Failed to parse objectId '{s}': Invalid string length for parsing to OID, expected 24 but found {}",
                    s.len()
                )));
            }
            match ObjectId::parse_str(s) {
                Ok(o) => Bson::ObjectId(o),
                Err(_) => {
                    return Err(ConvertError::Failure(format!(
                        "Failed to parse objectId '{s}': Invalid character found in hex string"
                    )));
                }
            }
        }
        _ => return Err(unsupported(v, to)),
    })
}

fn to_date(v: &Bson) -> std::result::Result<Bson, ConvertError> {
    let to = Target::Date;
    let ms = match v {
        Bson::DateTime(d) => d.timestamp_millis(),
        Bson::Int64(i) => *i,
        Bson::Double(d) => double_to_integer(*d, false)?,
        Bson::ObjectId(o) => o.timestamp().timestamp_millis(),
        Bson::Timestamp(t) => t.time as i64 * 1000,
        Bson::String(s) => parse_date_string(s).ok_or_else(|| {
            ConvertError::Failure(format!(
                "Error parsing date string '{s}': the string does not match a supported date format"
            ))
        })?,
        _ => return Err(unsupported(v, to)),
    };
    Ok(Bson::DateTime(bson::DateTime::from_millis(ms)))
}

#[cfg(test)]
mod tests {
    use crate::expr::tests::{date, error, eval, eval_in, parse_error, value};
    use bson::{Bson, Timestamp, bson, doc, oid::ObjectId};

    #[test]
    fn conversions() {
        assert_eq!(value(bson!({"$toString": 1.5})), bson!("1.5"));
        assert_eq!(value(bson!({"$toString": 2.0})), bson!("2"));
        assert_eq!(value(bson!({"$toString": 1e20})), bson!("1e+20"));
        assert_eq!(value(bson!({"$toString": 0.0001})), bson!("0.0001"));
        assert_eq!(value(bson!({"$toString": 0.00001})), bson!("1e-05"));
        assert_eq!(value(bson!({"$toString": true})), bson!("true"));
        assert_eq!(
            value(bson!({"$toString": date(0)})),
            bson!("1970-01-01T00:00:00.000Z")
        );
        let oid = ObjectId::parse_str("5f1d7a3e9d1b2c3d4e5f6a7b").unwrap();
        assert_eq!(
            value(bson!({"$toString": oid})),
            bson!("5f1d7a3e9d1b2c3d4e5f6a7b")
        );
        assert_eq!(
            value(bson!({"$toObjectId": "5f1d7a3e9d1b2c3d4e5f6a7b"})),
            Bson::ObjectId(oid)
        );
        assert_eq!(error(bson!({"$toObjectId": "abc"})).code, 241);
        assert_eq!(value(bson!({"$toString": null})), Bson::Null);
        assert_eq!(value(bson!({"$toInt": "42"})), bson!(42));
        assert_eq!(value(bson!({"$toInt": 4.9})), bson!(4));
        assert_eq!(value(bson!({"$toInt": true})), bson!(1));
        assert_eq!(value(bson!({"$toLong": "-42"})), Bson::Int64(-42));
        assert_eq!(value(bson!({"$toLong": date(7)})), Bson::Int64(7));
        assert_eq!(value(bson!({"$toDouble": "1.5e3"})), bson!(1500.0));
        assert_eq!(value(bson!({"$toDouble": "$missing"})), Bson::Null);
        assert_eq!(value(bson!({"$toBool": 0})), bson!(false));
        assert_eq!(value(bson!({"$toBool": ""})), bson!(true));
        assert_eq!(value(bson!({"$toDate": 86_400_000_i64})), date(86_400_000));
        assert_eq!(
            value(bson!({"$toDate": "2024-02-29T12:30:00.5Z"})),
            date(1_709_209_800_500)
        );
        assert_eq!(
            value(bson!({"$toDate": "2024-02-29T12:30:00+01:00"})),
            date(1_709_206_200_000)
        );
        assert_eq!(
            value(bson!({"$toDate": "2024-02-29"})),
            date(1_709_164_800_000)
        );
        assert_eq!(error(bson!({"$toDate": "2023-02-29"})).code, 241);
        assert_eq!(error(bson!({"$toDate": 5})).code, 241);

        let e = error(bson!({"$toInt": "abc"}));
        assert_eq!((e.code, e.code_name.as_str()), (241, "ConversionFailure"));
        assert!(
            e.errmsg
                .starts_with("Failed to parse number 'abc' in $convert with no onError value: "),
            "{}",
            e.errmsg
        );
        assert_eq!(error(bson!({"$toInt": 1e10})).code, 241);
        assert_eq!(error(bson!({"$toInt": f64::NAN})).code, 241);
        assert_eq!(error(bson!({"$toInt": 3_000_000_000_i64})).code, 241);
        assert_eq!(error(bson!({"$toInt": "99999999999"})).code, 241);
        assert_eq!(error(bson!({"$toInt": date(0)})).code, 241);
        let e = error(bson!({"$toString": {"a": 1}}));
        assert_eq!(
            e.errmsg,
            "Unsupported conversion from object to string in $convert with no onError value"
        );
    }

    #[test]
    fn convert_with_on_error_and_on_null() {
        assert_eq!(
            value(bson!({"$convert": {"input": "12", "to": "int"}})),
            bson!(12)
        );
        assert_eq!(
            value(bson!({"$convert": {"input": "12", "to": 18}})),
            Bson::Int64(12)
        );
        assert_eq!(
            value(bson!({"$convert": {"input": "x", "to": "int", "onError": "bad"}})),
            bson!("bad")
        );
        assert_eq!(
            value(bson!({"$convert": {"input": null, "to": "int", "onNull": -1}})),
            bson!(-1)
        );
        assert_eq!(
            value(bson!({"$convert": {"input": "$missing", "to": "int"}})),
            Bson::Null
        );
        assert_eq!(
            eval(bson!({"$convert": {"input": null, "to": "int", "onNull": "$$REMOVE"}})),
            None
        );
        assert_eq!(
            error(bson!({"$convert": {"input": 1, "to": "int", "x": 1}})).code,
            9
        );
        assert_eq!(error(bson!({"$convert": {"input": 1}})).code, 9);
        // onError does not cover a bad 'to'.
        let e = error(bson!({"$convert": {"input": 1, "to": "nope", "onError": 0}}));
        assert_eq!((e.code, e.errmsg.as_str()), (2, "Unknown type name: nope"));
        assert_eq!(
            parse_error(bson!({"$convert": {"input": 1, "to": "decimal"}})).code,
            115
        );
        assert_eq!(
            error(bson!({"$convert": {"input": 1, "to": "object"}})).code,
            241
        );
    }

    #[test]
    fn conversion_details() {
        // mongod 7.0 prints doubles with printf's %g.
        assert_eq!(value(bson!({"$toString": 1.23456789})), bson!("1.23457"));
        assert_eq!(value(bson!({"$toString": 1234567.0})), bson!("1.23457e+06"));
        assert_eq!(value(bson!({"$toString": 123456.0})), bson!("123456"));
        assert_eq!(value(bson!({"$toString": -0.5})), bson!("-0.5"));
        assert_eq!(
            value(bson!({"$toString": f64::INFINITY})),
            bson!("Infinity")
        );
        let e = error(bson!({"$toInt": "0x1F"}));
        assert_eq!(
            (e.code, e.errmsg.as_str()),
            (
                241,
                "Illegal hexadecimal input in $convert with no onError value: 0x1F"
            )
        );
        let e = error(bson!({"$toInt": 2147483647.5}));
        assert_eq!(
            e.errmsg,
            "Conversion would overflow target type in $convert with no onError value: 2.14748e+09"
        );
        let e = error(bson!({"$toInt": f64::NAN}));
        assert_eq!(
            e.errmsg,
            "Attempt to convert NaN value to integer type in $convert with no onError value"
        );
        assert_eq!(parse_error(bson!({"$toInt": [1, 2]})).code, 50723);
        let root = doc! {"t": "int"};
        let c = bson!({"$convert": {"input": null, "to": null, "onNull": 7}});
        assert_eq!(value(c), bson!(7));
        let c = bson!({"$convert": {"input": 5, "to": "$nope"}});
        assert_eq!(value(c), Bson::Null);
        let c = bson!({"$convert": {"input": "$nope", "to": "bogus", "onNull": 1}});
        assert_eq!(error(c).code, 2);
        let c = bson!({"$convert": {"input": "7", "to": "$t"}});
        assert_eq!(eval_in(c, &root).unwrap(), Some(bson!(7)));
        let c = bson!({"$convert": {"input": 1, "to": "missing", "onError": "x"}});
        assert_eq!(value(c), bson!("x"));
        assert_eq!(error(bson!({"$convert": {"input": 1, "to": 1.5}})).code, 9);
        assert_eq!(error(bson!({"$convert": {"input": 1, "to": 99}})).code, 9);
        assert_eq!(value(bson!({"$toBool": {"$literal": {}}})), bson!(true));
        assert_eq!(
            value(bson!({"$toDate": Bson::Timestamp(Timestamp { time: 5, increment: 1 })})),
            date(5000)
        );
    }
}
