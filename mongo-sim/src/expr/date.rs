//! Dates: `$dateToString`, `$dateToParts`, `$dateFromParts`, `$dateAdd`, `$dateSubtract`,
//! `$dateDiff`, `$dateTrunc` and the parts `$year`, `$month`, ... `$isoWeekYear`, each with
//! an optional `timezone` (UTC, fixed offsets and the fixed zones of the zone database).
//! The calendar arithmetic itself is in `calendar`.

use crate::bsontype::type_name;
use crate::error::{CommandError, OVERFLOW, Result};
use crate::expr::calendar::{
    DEFAULT_DATE_FORMAT, DateParts, MS_PER_DAY, TimeUnit, coerce_to_date, date_add, date_diff,
    day_of_week_index, days_from_civil, format_date, resolve_timezone, truncate_date,
    unrecognized_zone, validate_date_format,
};
use crate::expr::common::{is_nullish, loc, object_arg, show, show_obj};
use crate::expr::number::as_int64;
use crate::expr::{Cx, Expr, Node, boxed, is_const, named_args, opt_const};
use bson::{Bson, Document};
use std::collections::HashMap;

pub(crate) const DATE_PART_OPS: &[&str] = &[
    "$year",
    "$month",
    "$dayOfMonth",
    "$hour",
    "$minute",
    "$second",
    "$millisecond",
    "$dayOfWeek",
    "$dayOfYear",
    "$week",
    "$isoWeek",
    "$isoWeekYear",
    "$isoDayOfWeek",
];

/// `$dateToString`.
#[derive(Debug, Clone)]
pub(crate) struct DateToString {
    date: Box<Expr>,
    format: Option<Box<Expr>>,
    timezone: Option<Box<Expr>>,
    on_null: Option<Box<Expr>>,
}

/// `$year`, `$month`, ... with an optional timezone.
#[derive(Debug, Clone)]
pub(crate) struct DatePart {
    op: &'static str,
    date: Box<Expr>,
    timezone: Option<Box<Expr>>,
}

/// `$dateAdd`/`$dateSubtract`.
#[derive(Debug, Clone)]
pub(crate) struct DateArith {
    op: &'static str,
    start: Box<Expr>,
    unit: Box<Expr>,
    amount: Box<Expr>,
    timezone: Option<Box<Expr>>,
}

/// `$dateFromParts`: the named parts in the order mongod evaluates them.
#[derive(Debug, Clone)]
pub(crate) struct DateFromParts {
    parts: Vec<(&'static str, Expr)>,
    iso: bool,
    timezone: Option<Box<Expr>>,
}

/// `$dateToParts`.
#[derive(Debug, Clone)]
pub(crate) struct DateToParts {
    date: Box<Expr>,
    timezone: Option<Box<Expr>>,
    iso8601: Option<Box<Expr>>,
}

/// `$dateTrunc`.
#[derive(Debug, Clone)]
pub(crate) struct DateTrunc {
    date: Box<Expr>,
    unit: Box<Expr>,
    bin_size: Option<Box<Expr>>,
    timezone: Option<Box<Expr>>,
    start_of_week: Option<Box<Expr>>,
}

/// `$dateDiff`.
#[derive(Debug, Clone)]
pub(crate) struct DateDiff {
    start: Box<Expr>,
    end: Box<Expr>,
    unit: Box<Expr>,
    timezone: Option<Box<Expr>>,
    start_of_week: Option<Box<Expr>>,
}

pub(crate) fn parse_date_to_string(arg: &Bson) -> Result<Node> {
    let d = object_arg(
        arg,
        18629,
        "$dateToString only supports an object as its argument",
    )?;
    let [date, format, timezone, on_null] =
        named_args(d, ["date", "format", "timezone", "onNull"], |k| {
            loc(
                18534,
                format!("Unrecognized argument to $dateToString: {k}"),
            )
        })?;
    let date = date.ok_or_else(|| loc(18628, "Missing 'date' parameter to $dateToString"))?;
    Ok(Node::DateToString(DateToString {
        date,
        format,
        timezone,
        on_null,
    }))
}

/// DateExpressionAcceptingTimeZone::parse: `<date>`, `[<date>]`, an operator object, or
/// `{date, timezone}`.
pub(crate) fn parse_date_part(op: &str, arg: &Bson) -> Result<Node> {
    let op = DATE_PART_OPS
        .iter()
        .copied()
        .find(|o| *o == op)
        .unwrap_or("$year");
    let (date, timezone) = match arg {
        Bson::Document(d) if d.keys().next().is_some_and(|k| !k.starts_with('$')) => {
            let (mut date, mut timezone) = (None, None);
            for (k, v) in d {
                match k.as_str() {
                    "date" => date = Some(Expr::parse(v)?),
                    "timezone" => timezone = Some(boxed(Expr::parse(v)?)),
                    _ => {
                        return Err(loc(40535, format!("unrecognized option to {op}: \"{k}\"")));
                    }
                }
            }
            let date = date.ok_or_else(|| {
                loc(
                    40539,
                    format!(
                        "missing 'date' argument to {op}, provided: {op}: {}",
                        show_obj(d)
                    ),
                )
            })?;
            (date, timezone)
        }
        Bson::Array(items) => {
            if items.len() != 1 {
                return Err(loc(
                    40536,
                    format!(
                        "{op} accepts exactly one argument if given an array, but was given {}",
                        items.len()
                    ),
                ));
            }
            (Expr::parse(&items[0])?, None)
        }
        other => (Expr::parse(other)?, None),
    };
    Ok(Node::DatePart(DatePart {
        op,
        date: boxed(date),
        timezone,
    }))
}

/// The parts `$dateFromParts` takes: the time of day, evaluated first, then the date as a
/// calendar date or as an ISO week date.
const TIME_PARTS: [&str; 4] = ["hour", "minute", "second", "millisecond"];
const CALENDAR_PARTS: [&str; 3] = ["year", "month", "day"];
const ISO_WEEK_PARTS: [&str; 3] = ["isoWeekYear", "isoWeek", "isoDayOfWeek"];

pub(crate) fn parse_date_from_parts(arg: &Bson) -> Result<Node> {
    let Bson::Document(d) = arg else {
        return Err(loc(
            40519,
            "$dateFromParts only supports an object as its argument",
        ));
    };
    let mut given: Vec<(&'static str, Expr)> = Vec::new();
    let mut timezone = None;
    for (k, v) in d {
        if k == "timezone" {
            timezone = Some(boxed(Expr::parse(v)?));
            continue;
        }
        let known = TIME_PARTS
            .iter()
            .chain(&CALENDAR_PARTS)
            .chain(&ISO_WEEK_PARTS);
        let Some(name) = known.copied().find(|f| f == k) else {
            return Err(loc(
                40518,
                format!("Unrecognized argument to $dateFromParts: {k}"),
            ));
        };
        given.retain(|(n, _)| *n != name);
        given.push((name, Expr::parse(v)?));
    }
    let has = |n: &str| given.iter().any(|(g, _)| *g == n);
    if !has("year") && !has("isoWeekYear") {
        return Err(loc(
            40516,
            "$dateFromParts requires either 'year' or 'isoWeekYear' to be present",
        ));
    }
    if has("year") && (has("isoWeekYear") || has("isoWeek") || has("isoDayOfWeek")) {
        return Err(loc(
            40489,
            "$dateFromParts does not allow mixing natural dates with ISO dates",
        ));
    }
    if has("isoWeekYear") && (has("year") || has("month") || has("day")) {
        return Err(loc(
            40525,
            "$dateFromParts does not allow mixing ISO dates with natural dates",
        ));
    }
    let iso = has("isoWeekYear");
    // Evaluation order: time parts first, then the date parts.
    let date_parts = if iso { ISO_WEEK_PARTS } else { CALENDAR_PARTS };
    let mut parts = Vec::new();
    for name in TIME_PARTS.iter().chain(&date_parts) {
        if let Some(pos) = given.iter().position(|(n, _)| n == name) {
            parts.push(given.remove(pos));
        }
    }
    Ok(Node::DateFromParts(DateFromParts {
        parts,
        iso,
        timezone,
    }))
}

pub(crate) fn parse_date_to_parts(arg: &Bson) -> Result<Node> {
    let Bson::Document(d) = arg else {
        return Err(loc(
            40524,
            "$dateToParts only supports an object as its argument",
        ));
    };
    let [date, timezone, iso8601] = named_args(d, ["date", "timezone", "iso8601"], |k| {
        loc(40520, format!("Unrecognized argument to $dateToParts: {k}"))
    })?;
    let date = date.ok_or_else(|| loc(40522, "Missing 'date' parameter to $dateToParts"))?;
    Ok(Node::DateToParts(DateToParts {
        date,
        timezone,
        iso8601,
    }))
}

pub(crate) fn parse_date_trunc(arg: &Bson) -> Result<Node> {
    let Bson::Document(d) = arg else {
        return Err(loc(
            5439007,
            "$dateTrunc only supports an object as its argument",
        ));
    };
    let [date, unit, bin_size, timezone, start_of_week] = named_args(
        d,
        ["date", "unit", "binSize", "timezone", "startOfWeek"],
        |k| {
            loc(
                5439008,
                format!(
                    "Unrecognized argument to $dateTrunc: {k}. Expected arguments are date, unit, and optionally, binSize, timezone, startOfWeek"
                ),
            )
        },
    )?;
    let date = date.ok_or_else(|| loc(5439009, "Missing 'date' parameter to $dateTrunc"))?;
    let unit = unit.ok_or_else(|| loc(5439010, "Missing 'unit' parameter to $dateTrunc"))?;
    Ok(Node::DateTrunc(DateTrunc {
        date,
        unit,
        bin_size,
        timezone,
        start_of_week,
    }))
}

/// addContextToAssertionException for the timezone argument of `$dateDiff`/`$dateTrunc`.
fn zone_context(op: &str, mut e: CommandError) -> CommandError {
    e.errmsg = format!(
        "{op} parameter 'timezone' value parsing failed :: caused by :: {}",
        e.errmsg
    );
    e
}

pub(crate) fn parse_date_diff(arg: &Bson) -> Result<Node> {
    let Bson::Document(d) = arg else {
        return Err(loc(
            5166301,
            "$dateDiff only supports an object as its argument",
        ));
    };
    let [start, end, unit, timezone, start_of_week] = named_args(
        d,
        ["startDate", "endDate", "unit", "timezone", "startOfWeek"],
        |k| loc(5166302, format!("Unrecognized argument to $dateDiff: {k}")),
    )?;
    let start = start.ok_or_else(|| loc(5166303, "Missing 'startDate' parameter to $dateDiff"))?;
    let end = end.ok_or_else(|| loc(5166304, "Missing 'endDate' parameter to $dateDiff"))?;
    let unit = unit.ok_or_else(|| loc(5166305, "Missing 'unit' parameter to $dateDiff"))?;
    Ok(Node::DateDiff(DateDiff {
        start,
        end,
        unit,
        timezone,
        start_of_week,
    }))
}

/// commonDateArithmeticsParse.
pub(crate) fn parse_date_arith(op: &str, arg: &Bson) -> Result<Node> {
    let op = if op == "$dateAdd" {
        "$dateAdd"
    } else {
        "$dateSubtract"
    };
    let Bson::Document(d) = arg else {
        return Err(loc(
            5166400,
            format!("{op} expects an object as its argument"),
        ));
    };
    let [start, unit, amount, timezone] = named_args(
        d,
        ["startDate", "unit", "amount", "timezone"],
        |k| {
            loc(
                5166401,
                format!(
                    "Unrecognized argument to {op}: {k}. Expected arguments are startDate, unit, amount, and optionally timezone."
                ),
            )
        },
    )?;
    let (Some(start), Some(unit), Some(amount)) = (start, unit, amount) else {
        return Err(loc(
            5166402,
            format!("{op} requires startDate, unit, and amount to be present"),
        ));
    };
    Ok(Node::DateArith(DateArith {
        op,
        start,
        unit,
        amount,
        timezone,
    }))
}

/// An offset in minutes, or the name of a zone-database zone this server cannot place a
/// date in (which fails only once a date has to be placed in it).
type Zone = std::result::Result<i32, String>;

/// A sub-expression's value, unless it is nullish.
fn present(cx: &Cx, e: &Expr) -> Result<Option<Bson>> {
    Ok(cx.eval(e)?.filter(|v| !is_nullish(Some(v))))
}

/// makeTimeZone: `None` when the timezone is nullish (the result is then null);
/// `Some(Err(name))` for a zone-database name this server cannot resolve.
fn eval_zone(cx: &Cx, timezone: Option<&Expr>) -> Result<Option<Zone>> {
    let Some(t) = timezone else {
        return Ok(Some(Ok(0)));
    };
    match cx.eval(t)? {
        None | Some(Bson::Null) | Some(Bson::Undefined) => Ok(None),
        Some(Bson::String(s)) => Ok(Some(resolve_timezone(&s)?.ok_or(s))),
        Some(other) => Err(loc(
            40517,
            format!(
                "timezone must evaluate to a string, found {}",
                type_name(&other)
            ),
        )),
    }
}

impl DateToString {
    pub(crate) fn eval(&self, cx: &Cx) -> Result<Option<Bson>> {
        let DateToString {
            date,
            format,
            timezone,
            on_null,
        } = self;
        // Order of checks as in mongod's ExpressionDateToString::evaluate: a bad
        // format or timezone fails even for a null date; a null date wins over a null
        // format or timezone.
        let date = cx.eval(date)?;
        let format = match format {
            Some(f) => match cx.eval(f)? {
                None | Some(Bson::Null) | Some(Bson::Undefined) => Some(None),
                Some(Bson::String(s)) => {
                    validate_date_format(&s)?;
                    Some(Some(s))
                }
                Some(other) => {
                    return Err(loc(
                        18533,
                        format!(
                            "$dateToString requires that 'format' be a string, found: {} with value {}",
                            type_name(&other),
                            show(&other)
                        ),
                    ));
                }
            },
            None => None,
        };
        let offset = match timezone {
            Some(t) => match cx.eval(t)? {
                None | Some(Bson::Null) | Some(Bson::Undefined) => None,
                Some(Bson::String(s)) => Some((resolve_timezone(&s)?, s)),
                Some(other) => {
                    return Err(loc(
                        40517,
                        format!(
                            "timezone must evaluate to a string, found {}",
                            type_name(&other)
                        ),
                    ));
                }
            },
            None => Some((Some(0), String::new())),
        };
        if is_nullish(date.as_ref()) {
            return match on_null {
                Some(e) => cx.eval(e),
                None => Ok(Some(Bson::Null)),
            };
        }
        let Some((offset, zone_name)) = offset else {
            return Ok(Some(Bson::Null));
        };
        let format = match format {
            Some(None) => return Ok(Some(Bson::Null)),
            Some(Some(f)) => f,
            None => DEFAULT_DATE_FORMAT.to_string(),
        };
        let ms = coerce_to_date(date.as_ref().unwrap_or(&Bson::Null))?;
        let offset = offset.ok_or_else(|| unrecognized_zone(&zone_name))?;
        Ok(Some(Bson::String(format_date(ms, &format, offset)?)))
    }

    pub(crate) fn is_foldable(&self) -> bool {
        is_const(&self.date)
            && opt_const(&self.format)
            && opt_const(&self.timezone)
            && opt_const(&self.on_null)
    }
}

impl DatePart {
    pub(crate) fn eval(&self, cx: &Cx) -> Result<Option<Bson>> {
        let DatePart { op, date, timezone } = self;
        let date = match cx.eval(date)? {
            None | Some(Bson::Null) | Some(Bson::Undefined) => return Ok(Some(Bson::Null)),
            Some(v) => coerce_to_date(&v)?,
        };
        let offset = match timezone {
            None => 0,
            Some(t) => match cx.eval(t)? {
                None | Some(Bson::Null) | Some(Bson::Undefined) => {
                    return Ok(Some(Bson::Null));
                }
                Some(Bson::String(s)) => {
                    resolve_timezone(&s)?.ok_or_else(|| unrecognized_zone(&s))?
                }
                Some(other) => {
                    return Err(loc(
                        40533,
                        format!(
                            "{op} requires a string for the timezone argument, but was given a {} ({})",
                            type_name(&other),
                            show(&other)
                        ),
                    ));
                }
            },
        };
        let p = DateParts::new(date, offset);
        let v = match *op {
            "$year" => p.year,
            "$month" => p.month,
            "$dayOfMonth" => p.day,
            "$hour" => p.hour,
            "$minute" => p.minute,
            "$second" => p.second,
            "$millisecond" => p.milli,
            "$dayOfWeek" => p.weekday_sun0 + 1,
            "$dayOfYear" => p.yday0 + 1,
            "$week" => p.week(),
            "$isoWeek" => p.iso_week,
            "$isoDayOfWeek" => p.iso_wday,
            // TimeZone::isoYear returns a long long.
            _ => return Ok(Some(Bson::Int64(p.iso_year))),
        };
        Ok(Some(Bson::Int32(v as i32)))
    }

    pub(crate) fn is_foldable(&self) -> bool {
        is_const(&self.date) && opt_const(&self.timezone)
    }
}

impl DateArith {
    pub(crate) fn eval(&self, cx: &Cx) -> Result<Option<Bson>> {
        let DateArith {
            op,
            start,
            unit,
            amount,
            timezone,
        } = self;
        let null = Ok(Some(Bson::Null));
        let Some(start) = present(cx, start)? else {
            return null;
        };
        let Some(unit) = present(cx, unit)? else {
            return null;
        };
        let Some(amount) = present(cx, amount)? else {
            return null;
        };
        // An unresolvable zone-database name fails only once the date is computed.
        let Some(offset) = eval_zone(cx, timezone.as_deref())? else {
            return null;
        };
        let start = coerce_to_date(&start).map_err(|_| {
            loc(
                5166403,
                format!("{op} requires startDate to be convertible to a date"),
            )
        })?;
        let Bson::String(unit) = unit else {
            return Err(loc(
                5166404,
                format!("{op} expects string defining the time unit"),
            ));
        };
        let unit = TimeUnit::parse(&unit)?;
        let Some(amount) = as_int64(&amount)? else {
            return Err(loc(
                5166405,
                format!("{op} expects integer amount of time units"),
            ));
        };
        let amount = if *op == "$dateSubtract" {
            amount.checked_neg().ok_or_else(|| {
                loc(
                    6045000,
                    format!("invalid $dateSubtract 'amount' parameter value: {amount}"),
                )
            })?
        } else {
            amount
        };
        let offset = offset.map_err(|name| unrecognized_zone(&name))?;
        let ms = date_add(start, unit, amount, offset)?;
        Ok(Some(Bson::DateTime(bson::DateTime::from_millis(ms))))
    }

    pub(crate) fn is_foldable(&self) -> bool {
        is_const(&self.start)
            && is_const(&self.unit)
            && is_const(&self.amount)
            && opt_const(&self.timezone)
    }
}

impl DateFromParts {
    /// ExpressionDateFromParts::evaluate: out-of-range parts roll over (month 13 is January of
    /// the next year) as timelib does.
    pub(crate) fn eval(&self, cx: &Cx) -> Result<Option<Bson>> {
        let Some((values, offset)) = self.eval_parts(cx)? else {
            return Ok(Some(Bson::Null));
        };
        let get = |n: &str, default: i64| values.get(n).copied().unwrap_or(default);
        let days = days_of_parts(self.iso, &get)?;
        let offset = offset.map_err(|name| unrecognized_zone(&name))?;
        let ms = days
            .checked_mul(MS_PER_DAY)
            .and_then(|v| v.checked_add(get("hour", 0).checked_mul(3_600_000)?))
            .and_then(|v| v.checked_add(get("minute", 0).checked_mul(60_000)?))
            .and_then(|v| v.checked_add(get("second", 0).checked_mul(1000)?))
            .and_then(|v| v.checked_add(get("millisecond", 0)))
            .and_then(|v| v.checked_sub(offset as i64 * 60_000))
            .ok_or_else(|| CommandError::new(OVERFLOW, "date overflow in $dateFromParts"))?;
        Ok(Some(Bson::DateTime(bson::DateTime::from_millis(ms))))
    }

    /// The parts' values and the time zone, evaluated in mongod's order: the time zone
    /// between the time parts and the date parts. `None` when one of them is nullish.
    fn eval_parts(&self, cx: &Cx) -> Result<Option<(HashMap<&'static str, i64>, Zone)>> {
        let timezone = self.timezone.as_deref();
        let mut values = HashMap::new();
        let mut offset = None;
        for (name, e) in &self.parts {
            if offset.is_none() && matches!(*name, "year" | "isoWeekYear") {
                match eval_zone(cx, timezone)? {
                    Some(z) => offset = Some(z),
                    None => return Ok(None),
                }
            }
            let v = cx.eval(e)?;
            if is_nullish(v.as_ref()) {
                return Ok(None);
            }
            values.insert(*name, part_value(name, &v.unwrap_or(Bson::Null))?);
        }
        let offset = match offset {
            Some(z) => z,
            None => match eval_zone(cx, timezone)? {
                Some(z) => z,
                None => return Ok(None),
            },
        };
        Ok(Some((values, offset)))
    }

    pub(crate) fn is_foldable(&self) -> bool {
        self.parts.iter().all(|(_, e)| is_const(e)) && opt_const(&self.timezone)
    }
}

/// One part of `$dateFromParts`: an integer, within 16 bits for all but the years and the
/// second and millisecond counts.
fn part_value(name: &str, v: &Bson) -> Result<i64> {
    let Some(n) = as_int64(v)? else {
        return Err(loc(
            40515,
            format!(
                "'{name}' must evaluate to an integer, found {} with value {}",
                type_name(v),
                show(v)
            ),
        ));
    };
    let bounded = matches!(
        name,
        "month" | "day" | "hour" | "minute" | "isoWeek" | "isoDayOfWeek"
    );
    if bounded && !(-32768..=32767).contains(&n) {
        return Err(loc(
            31034,
            format!(
                "'{name}' must evaluate to a value in the range [-32768, 32767]; value {n} is not in range"
            ),
        ));
    }
    Ok(n)
}

/// Days since the epoch of the date `$dateFromParts` names by its ISO or calendar parts
/// (`get` gives a part's value or its default).
fn days_of_parts(iso: bool, get: &dyn Fn(&str, i64) -> i64) -> Result<i64> {
    Ok(if iso {
        let year = get("isoWeekYear", 1970);
        if !(1..=9999).contains(&year) {
            return Err(loc(
                31095,
                format!(
                    "'isoWeekYear' must evaluate to an integer in the range 1 to 9999, found {year}"
                ),
            ));
        }
        // Monday of ISO week 1 is the Monday on or before January 4th.
        let jan4 = days_from_civil(year, 1, 4);
        let jan4_iso_wday = (jan4 + 3).rem_euclid(7) + 1;
        jan4 - (jan4_iso_wday - 1) + (get("isoWeek", 1) - 1) * 7 + (get("isoDayOfWeek", 1) - 1)
    } else {
        let year = get("year", 1970);
        if !(1..=9999).contains(&year) {
            return Err(loc(
                40523,
                format!("'year' must evaluate to an integer in the range 1 to 9999, found {year}"),
            ));
        }
        let months = year * 12 + get("month", 1) - 1;
        let (y, m) = (months.div_euclid(12), months.rem_euclid(12) + 1);
        days_from_civil(y, m, 1) + get("day", 1) - 1
    })
}

impl DateToParts {
    /// ExpressionDateToParts::evaluate: timezone and iso8601 are checked before the date.
    pub(crate) fn eval(&self, cx: &Cx) -> Result<Option<Bson>> {
        let DateToParts {
            date,
            timezone,
            iso8601,
        } = self;
        let date = cx.eval(date)?;
        let Some(offset) = eval_zone(cx, timezone.as_deref())? else {
            return Ok(Some(Bson::Null));
        };
        let iso = match iso8601 {
            None => false,
            Some(e) => match cx.eval(e)? {
                None | Some(Bson::Null) | Some(Bson::Undefined) => {
                    return Ok(Some(Bson::Null));
                }
                Some(Bson::Boolean(b)) => b,
                Some(other) => {
                    return Err(loc(
                        40521,
                        format!(
                            "iso8601 must evaluate to a bool, found {}",
                            type_name(&other)
                        ),
                    ));
                }
            },
        };
        let Some(date) = date.filter(|v| !is_nullish(Some(v))) else {
            return Ok(Some(Bson::Null));
        };
        let ms = coerce_to_date(&date)?;
        let offset = offset.map_err(|name| unrecognized_zone(&name))?;
        Ok(Some(Bson::Document(parts_document(
            &DateParts::new(ms, offset),
            iso,
        ))))
    }

    pub(crate) fn is_foldable(&self) -> bool {
        is_const(&self.date) && opt_const(&self.timezone) && opt_const(&self.iso8601)
    }
}

/// `$dateToParts`' result: ISO week-date or calendar parts, then the time of day.
fn parts_document(p: &DateParts, iso: bool) -> Document {
    let int = |v: i64| Bson::Int32(v as i32);
    if iso {
        bson::doc! {
            "isoWeekYear": int(p.iso_year),
            "isoWeek": int(p.iso_week),
            "isoDayOfWeek": int(p.iso_wday),
            "hour": int(p.hour),
            "minute": int(p.minute),
            "second": int(p.second),
            "millisecond": int(p.milli),
        }
    } else {
        bson::doc! {
            "year": int(p.year),
            "month": int(p.month),
            "day": int(p.day),
            "hour": int(p.hour),
            "minute": int(p.minute),
            "second": int(p.second),
            "millisecond": int(p.milli),
        }
    }
}

impl DateTrunc {
    pub(crate) fn eval(&self, cx: &Cx) -> Result<Option<Bson>> {
        let DateTrunc {
            date,
            unit,
            bin_size,
            timezone,
            start_of_week,
        } = self;
        let null = Ok(Some(Bson::Null));
        let Some(date) = present(cx, date)? else {
            return null;
        };
        let Some(unit) = present(cx, unit)? else {
            return null;
        };
        let bin_size = match bin_size {
            Some(b) => match present(cx, b)? {
                Some(v) => Some(v),
                None => return null,
            },
            None => None,
        };
        let Some((week_start, offset)) =
            week_and_zone(cx, "$dateTrunc", &unit, start_of_week, timezone)?
        else {
            return null;
        };
        let ms = coerce_to_date(&date).map_err(|_| {
            loc(
                5439012,
                format!(
                    "$dateTrunc requires 'date' to be a date, but got {}",
                    type_name(&date)
                ),
            )
        })?;
        let unit = unit_arg("$dateTrunc", unit)?;
        let bin = match bin_size {
            None => 1,
            Some(v) => bin_size_arg(&v)?,
        };
        let week_start = week_start_index("$dateTrunc", week_start)?;
        let offset = offset.map_err(|name| unrecognized_zone(&name))?;
        let out = truncate_date(ms, unit, bin, offset, week_start)?;
        Ok(Some(Bson::DateTime(bson::DateTime::from_millis(out))))
    }

    pub(crate) fn is_foldable(&self) -> bool {
        is_const(&self.date)
            && is_const(&self.unit)
            && opt_const(&self.bin_size)
            && opt_const(&self.timezone)
            && opt_const(&self.start_of_week)
    }
}

/// `binSize` of `$dateTrunc`: a positive 64-bit integer.
fn bin_size_arg(v: &Bson) -> Result<i64> {
    let Some(n) = as_int64(v)? else {
        return Err(loc(
            5439017,
            format!(
                "$dateTrunc requires 'binSize' to be a 64-bit integer, but got value '{}' of type {}",
                show(v),
                type_name(v)
            ),
        ));
    };
    if n <= 0 {
        return Err(loc(
            5439018,
            format!("$dateTrunc requires 'binSize' to be greater than 0, but got value {n}"),
        ));
    }
    Ok(n)
}

impl DateDiff {
    pub(crate) fn eval(&self, cx: &Cx) -> Result<Option<Bson>> {
        let DateDiff {
            start,
            end,
            unit,
            timezone,
            start_of_week,
        } = self;
        let null = Ok(Some(Bson::Null));
        let Some(start) = present(cx, start)? else {
            return null;
        };
        let Some(end) = present(cx, end)? else {
            return null;
        };
        let Some(unit) = present(cx, unit)? else {
            return null;
        };
        let Some((week_start, offset)) =
            week_and_zone(cx, "$dateDiff", &unit, start_of_week, timezone)?
        else {
            return null;
        };
        let as_date = |v: &Bson, what: &str| {
            coerce_to_date(v).map_err(|_| {
                loc(
                    5166307,
                    format!(
                        "$dateDiff requires '{what}' to be a date, but got {}",
                        type_name(v)
                    ),
                )
            })
        };
        let (start, end) = (as_date(&start, "startDate")?, as_date(&end, "endDate")?);
        let unit = unit_arg("$dateDiff", unit)?;
        let week_start = week_start_index("$dateDiff", week_start)?;
        let offset = offset.map_err(|name| unrecognized_zone(&name))?;
        Ok(Some(Bson::Int64(date_diff(
            start, end, unit, offset, week_start,
        )?)))
    }

    pub(crate) fn is_foldable(&self) -> bool {
        is_const(&self.start)
            && is_const(&self.end)
            && is_const(&self.unit)
            && opt_const(&self.timezone)
            && opt_const(&self.start_of_week)
    }
}

/// `startOfWeek` (read only for the unit "week") and `timezone` of `$dateTrunc` and
/// `$dateDiff`, in mongod's order; `None` when either is nullish (the result is then null).
fn week_and_zone(
    cx: &Cx,
    op: &str,
    unit: &Bson,
    start_of_week: &Option<Box<Expr>>,
    timezone: &Option<Box<Expr>>,
) -> Result<Option<(Option<Bson>, Zone)>> {
    let is_week = matches!(unit, Bson::String(u) if u == "week");
    let week_start = match start_of_week {
        Some(e) if is_week => match present(cx, e)? {
            Some(v) => Some(v),
            None => return Ok(None),
        },
        _ => None,
    };
    let Some(zone) = eval_zone(cx, timezone.as_deref()).map_err(|e| zone_context(op, e))? else {
        return Ok(None);
    };
    Ok(Some((week_start, zone)))
}

/// The `unit` of `$dateTrunc` and `$dateDiff`.
fn unit_arg(op: &str, unit: Bson) -> Result<TimeUnit> {
    let Bson::String(unit) = unit else {
        return Err(loc(
            5439013,
            format!(
                "{op} requires 'unit' to be a string, but got {}",
                type_name(&unit)
            ),
        ));
    };
    TimeUnit::parse(&unit).map_err(|_| {
        loc(
            5439014,
            format!("{op} parameter 'unit' value cannot be recognized as a time unit: {unit}"),
        )
    })
}

/// A `startOfWeek` as a day index (0 = Sunday); Sunday when there is none.
fn week_start_index(op: &str, week_start: Option<Bson>) -> Result<i64> {
    match week_start {
        None => Ok(0),
        Some(v) => day_of_week_index(op, &v),
    }
}

#[cfg(test)]
mod tests {
    use crate::expr::Expr;
    use crate::expr::tests::{date, error, eval_in, parse_error, value};
    use bson::{Bson, bson, doc};

    #[test]
    fn date_to_string() {
        // 2024-03-05T07:08:09.123Z, a Tuesday.
        let d = date(1_709_622_489_123);
        assert_eq!(
            value(bson!({"$dateToString": {"date": d.clone()}})),
            bson!("2024-03-05T07:08:09.123Z")
        );
        assert_eq!(
            value(bson!({"$dateToString": {"date": d.clone(),
                "format": "%Y/%m/%d %H:%M:%S %j %w %u %U %V %G %z %Z %%"}})),
            bson!("2024/03/05 07:08:09 065 3 2 09 10 2024 +0000 0 %")
        );
        assert_eq!(
            value(
                bson!({"$dateToString": {"date": d.clone(), "format": "%H:%M %z", "timezone": "+05:30"}})
            ),
            bson!("12:38 +0530")
        );
        assert_eq!(
            value(
                bson!({"$dateToString": {"date": d.clone(), "format": "%d %H %Z", "timezone": "-0800"}})
            ),
            bson!("04 23 -480")
        );
        assert_eq!(
            value(bson!({"$dateToString": {"date": "$missing", "onNull": "none"}})),
            bson!("none")
        );
        assert_eq!(value(bson!({"$dateToString": {"date": null}})), Bson::Null);
        assert_eq!(
            value(bson!({"$dateToString": {"date": d.clone(), "timezone": null}})),
            Bson::Null
        );
        // 2021-01-01 is a Friday in ISO week 53 of 2020.
        assert_eq!(
            value(
                bson!({"$dateToString": {"date": date(1_609_459_200_000), "format": "%G-W%V-%u"}})
            ),
            bson!("2020-W53-5")
        );
        let e =
            parse_error(bson!({"$dateToString": {"date": d.clone(), "timezone": "Europe/Paris"}}));
        assert_eq!(e.code, 40485);
        assert!(e.errmsg.starts_with("unrecognized time zone identifier"));
        assert_eq!(
            value(bson!({"$dateToString": {"date": d.clone(), "timezone": "$$REMOVE"}})),
            Bson::Null
        );
        assert_eq!(
            parse_error(bson!({"$dateToString": {"date": d.clone(), "format": "%Q"}})).code,
            18536
        );
        assert_eq!(
            parse_error(bson!({"$dateToString": {"date": d.clone(), "format": "%"}})).code,
            18535
        );
        assert_eq!(
            parse_error(bson!({"$dateToString": {"format": "%Y"}})).code,
            18628
        );
        assert_eq!(
            parse_error(bson!({"$dateToString": {"date": 1, "x": 1}})).code,
            18534
        );
        assert_eq!(error(bson!({"$dateToString": {"date": "x"}})).code, 16006);
        assert_eq!(
            error(bson!({"$dateToString": {"date": d, "format": 5}})).code,
            18533
        );
    }

    #[test]
    fn date_parts() {
        // 2021-01-03T10:20:30.456Z, a Sunday in ISO week 53 of 2020.
        let root = doc! {"d": bson::DateTime::from_millis(1_609_669_230_456)};
        let part = |op: &str| eval_in(bson!({op: "$d"}), &root).unwrap().unwrap();
        assert_eq!(part("$year"), bson!(2021));
        assert_eq!(part("$month"), bson!(1));
        assert_eq!(part("$dayOfMonth"), bson!(3));
        assert_eq!(part("$hour"), bson!(10));
        assert_eq!(part("$minute"), bson!(20));
        assert_eq!(part("$second"), bson!(30));
        assert_eq!(part("$millisecond"), bson!(456));
        assert_eq!(part("$dayOfWeek"), bson!(1));
        assert_eq!(part("$dayOfYear"), bson!(3));
        assert_eq!(part("$week"), bson!(1));
        assert_eq!(part("$isoWeek"), bson!(53));
        assert_eq!(part("$isoDayOfWeek"), bson!(7));
        assert_eq!(part("$isoWeekYear"), Bson::Int64(2020));
        let tz = bson!({"$hour": {"date": "$d", "timezone": "-11:00"}});
        assert_eq!(eval_in(tz, &root).unwrap(), Some(bson!(23)));
        assert_eq!(
            eval_in(bson!({"$year": ["$d"]}), &root).unwrap(),
            Some(bson!(2021))
        );
        assert_eq!(value(bson!({"$year": "$nope"})), Bson::Null);
        assert_eq!(error(bson!({"$year": "x"})).code, 16006);
        assert_eq!(
            parse_error(bson!({"$year": {"date": 1, "tz": 1}})).code,
            40535
        );
        assert_eq!(
            parse_error(bson!({"$year": {"timezone": "UTC"}})).code,
            40539
        );
        assert_eq!(parse_error(bson!({"$year": [1, 2]})).code, 40536);
        let e = eval_in(
            bson!({"$year": {"date": "$d", "timezone": "Mars/Base"}}),
            &root,
        );
        assert_eq!(e.unwrap_err().code, 40485);
        let e = eval_in(bson!({"$year": {"date": "$d", "timezone": 5}}), &root).unwrap_err();
        assert_eq!(e.code, 40533);
    }

    #[test]
    fn zone_database_names_fail_only_when_a_date_needs_them() {
        // As mongod (date_to_string.js): a null date with a zone name gives null.
        let f = bson!({"$dateToString": {"date": "$nope", "timezone": "America/New_York"}});
        assert_eq!(value(f), Bson::Null);
        let root = doc! {"d": bson::DateTime::from_millis(0)};
        let f = bson!({"$dateToString": {"date": "$d", "timezone": "America/New_York"}});
        assert_eq!(eval_in(f, &root).unwrap_err().code, 40485);
        // A name that is no zone at all fails even for a null date, as in mongod.
        let f = bson!({"$dateToString": {"date": "$nope", "timezone": "Nowhere"}});
        assert_eq!(error(f).code, 40485);
        // A bad format is checked before the null date, at evaluation.
        let f = bson!({"$dateToString": {"date": "$nope", "format": "%Q"}});
        assert_eq!(Expr::parse(&f).map(|_| ()), Ok(()));
        assert_eq!(error(f).code, 18536);
    }

    #[test]
    fn date_add_and_subtract() {
        let jan31 = date(1_612_051_200_000); // 2021-01-31T00:00:00Z
        let add = |unit: &str, amount: i64| {
            value(bson!({"$dateAdd": {"startDate": jan31.clone(), "unit": unit, "amount": amount}}))
        };
        assert_eq!(add("month", 1), date(1_614_470_400_000)); // 2021-02-28, clamped
        assert_eq!(add("year", -1), date(1_580_428_800_000)); // 2020-01-31
        assert_eq!(add("quarter", 1), date(1_619_740_800_000)); // 2021-04-30
        assert_eq!(add("day", 1), date(1_612_137_600_000));
        assert_eq!(add("hour", -1), date(1_612_047_600_000));
        assert_eq!(add("millisecond", 5), date(1_612_051_200_005));
        let sub =
            bson!({"$dateSubtract": {"startDate": jan31.clone(), "unit": "week", "amount": 1}});
        assert_eq!(value(sub), date(1_612_051_200_000 - 7 * 86_400_000));
        // The month is moved in the given zone: 2021-01-31T00:00Z is Jan 30 19:00 at -05:00,
        // which becomes Feb 28 19:00 there (clamped), 2021-03-01T00:00Z.
        let tz = bson!({"$dateAdd": {"startDate": jan31.clone(), "unit": "month", "amount": 1,
            "timezone": "-05:00"}});
        assert_eq!(value(tz), date(1_614_556_800_000));
        let null = bson!({"$dateAdd": {"startDate": "$nope", "unit": "day", "amount": 1}});
        assert_eq!(value(null), Bson::Null);
        let e =
            error(bson!({"$dateAdd": {"startDate": jan31.clone(), "unit": "days", "amount": 1}}));
        assert_eq!(
            (e.code, e.errmsg.as_str()),
            (9, "unknown time unit value: days")
        );
        let e =
            error(bson!({"$dateAdd": {"startDate": jan31.clone(), "unit": "day", "amount": 1.5}}));
        assert_eq!(e.code, 5166405);
        let e = error(bson!({"$dateAdd": {"startDate": "x", "unit": "day", "amount": 1}}));
        assert_eq!(e.code, 5166403);
        assert_eq!(
            parse_error(bson!({"$dateAdd": {"unit": "day", "amount": 1}})).code,
            5166402
        );
        assert_eq!(
            parse_error(bson!({"$dateAdd": {"startDate": 1, "x": 1}})).code,
            5166401
        );
        let e = error(
            bson!({"$dateSubtract": {"startDate": jan31, "unit": "day", "amount": i64::MIN}}),
        );
        assert_eq!(e.code, 6045000);
    }

    #[test]
    fn date_diff_counts_boundaries() {
        // 2021-01-31T23:30:00Z and 2021-02-01T00:10:00Z.
        let (s, e) = (date(1_612_135_800_000), date(1_612_138_200_000));
        let diff = |unit: &str| {
            value(
                bson!({"$dateDiff": {"startDate": s.clone(), "endDate": e.clone(), "unit": unit}}),
            )
        };
        assert_eq!(diff("month"), Bson::Int64(1));
        assert_eq!(diff("year"), Bson::Int64(0));
        assert_eq!(diff("day"), Bson::Int64(1));
        assert_eq!(diff("hour"), Bson::Int64(1));
        assert_eq!(diff("minute"), Bson::Int64(40));
        assert_eq!(diff("millisecond"), Bson::Int64(2_400_000));
        // Sunday 2021-01-31 to Monday 2021-02-01: a Monday week boundary, not a Sunday one.
        assert_eq!(diff("week"), Bson::Int64(0));
        let monday = bson!({"$dateDiff": {"startDate": s.clone(), "endDate": e.clone(),
            "unit": "week", "startOfWeek": "MON"}});
        assert_eq!(value(monday), Bson::Int64(1));
        let tz = bson!({"$dateDiff": {"startDate": s.clone(), "endDate": e.clone(), "unit": "day",
            "timezone": "+01:00"}});
        assert_eq!(value(tz), Bson::Int64(0));
        let back =
            bson!({"$dateDiff": {"startDate": e.clone(), "endDate": s.clone(), "unit": "minute"}});
        assert_eq!(value(back), Bson::Int64(-40));
        let e2 = error(bson!({"$dateDiff": {"startDate": s.clone(), "endDate": 1, "unit": "day"}}));
        assert_eq!(e2.code, 5166307);
        let e2 = error(
            bson!({"$dateDiff": {"startDate": s.clone(), "endDate": e.clone(), "unit": "days"}}),
        );
        assert_eq!(e2.code, 5439014);
        let e2 = error(
            bson!({"$dateDiff": {"startDate": s, "endDate": e, "unit": "week", "startOfWeek": "x"}}),
        );
        assert_eq!(e2.code, 5439016);
        assert_eq!(
            parse_error(bson!({"$dateDiff": {"startDate": 1, "unit": "day"}})).code,
            5166304
        );
    }

    #[test]
    fn date_to_parts_and_zone_error_order() {
        let d = date(1_609_669_230_456); // 2021-01-03T10:20:30.456Z
        assert_eq!(
            value(bson!({"$dateToParts": {"date": d.clone()}})),
            bson!({"year": 2021, "month": 1, "day": 3, "hour": 10, "minute": 20, "second": 30,
                "millisecond": 456})
        );
        assert_eq!(
            value(bson!({"$dateToParts": {"date": d.clone(), "iso8601": true, "timezone": "+01"}})),
            bson!({"isoWeekYear": 2020, "isoWeek": 53, "isoDayOfWeek": 7, "hour": 11,
                "minute": 20, "second": 30, "millisecond": 456})
        );
        assert_eq!(
            value(bson!({"$dateToParts": {"date": "$nope"}})),
            Bson::Null
        );
        assert_eq!(
            error(bson!({"$dateToParts": {"date": d.clone(), "iso8601": 1}})).code,
            40521
        );
        assert_eq!(
            parse_error(bson!({"$dateToParts": {"timezone": "UTC"}})).code,
            40522
        );
        // As mongod (date_to_parts.js): a zone it knows and a non-date gives the date error.
        let root = doc! {"_id": 0, "tz": "Europe/London"};
        let e = eval_in(
            bson!({"$dateToParts": {"date": "$_id", "timezone": "$tz"}}),
            &root,
        );
        assert_eq!(
            e.unwrap_err().errmsg,
            "can't convert from BSON type int to Date"
        );
        let e = eval_in(
            bson!({"$dateToString": {"date": "$_id", "timezone": "$tz"}}),
            &root,
        );
        assert_eq!(e.unwrap_err().code, 16006);
    }

    #[test]
    fn date_from_parts() {
        let p = |spec: Bson| value(bson!({"$dateFromParts": spec}));
        assert_eq!(
            p(
                bson!({"year": 2021, "month": 1, "day": 3, "hour": 10, "minute": 20,
            "second": 30, "millisecond": 456})
            ),
            date(1_609_669_230_456)
        );
        // Month 13 rolls into the next year; day 0 is the previous month's last day.
        assert_eq!(
            p(bson!({"year": 2020, "month": 13, "day": 3})),
            date(1_609_632_000_000)
        );
        assert_eq!(
            p(bson!({"year": 2021, "month": 3, "day": 0})),
            date(1_614_470_400_000)
        );
        assert_eq!(
            p(bson!({"year": 2021, "timezone": "+01:00"})),
            date(1_609_455_600_000)
        );
        // ISO 2020-W53-7 is Sunday 2021-01-03.
        assert_eq!(
            p(bson!({"isoWeekYear": 2020, "isoWeek": 53, "isoDayOfWeek": 7})),
            date(1_609_632_000_000)
        );
        assert_eq!(p(bson!({"year": "$nope"})), Bson::Null);
        assert_eq!(error(bson!({"$dateFromParts": {"year": 0}})).code, 40523);
        assert_eq!(
            error(bson!({"$dateFromParts": {"year": 2021, "month": 40000}})).code,
            31034
        );
        assert_eq!(
            error(bson!({"$dateFromParts": {"year": 2021, "hour": 1.5}})).code,
            40515
        );
        assert_eq!(
            parse_error(bson!({"$dateFromParts": {"month": 1}})).code,
            40516
        );
        assert_eq!(
            parse_error(bson!({"$dateFromParts": {"year": 1, "isoWeek": 1}})).code,
            40489
        );
        assert_eq!(
            parse_error(bson!({"$dateFromParts": {"isoWeekYear": 1, "day": 1}})).code,
            40525
        );
        assert_eq!(
            parse_error(bson!({"$dateFromParts": {"year": 1, "x": 1}})).code,
            40518
        );
    }

    #[test]
    fn date_trunc() {
        let d = date(1_609_669_230_456); // Sunday 2021-01-03T10:20:30.456Z
        let t = |unit: &str, bin: i64| {
            value(bson!({"$dateTrunc": {"date": d.clone(), "unit": unit, "binSize": bin}}))
        };
        assert_eq!(t("hour", 1), date(1_609_668_000_000));
        assert_eq!(t("day", 1), date(1_609_632_000_000));
        assert_eq!(t("month", 1), date(1_609_459_200_000));
        assert_eq!(t("year", 1), date(1_609_459_200_000));
        assert_eq!(t("quarter", 2), date(1_609_459_200_000));
        assert_eq!(t("month", 5), date(1_604_188_800_000)); // 2020-11-01: 250 months from 2000
        assert_eq!(t("minute", 15), date(1_609_668_900_000)); // 10:15
        // Weeks start on Sunday by default; 2021-01-03 is a Sunday.
        assert_eq!(t("week", 1), date(1_609_632_000_000));
        let monday =
            bson!({"$dateTrunc": {"date": d.clone(), "unit": "week", "startOfWeek": "monday"}});
        assert_eq!(value(monday), date(1_609_113_600_000)); // 2020-12-28
        let tz = bson!({"$dateTrunc": {"date": d.clone(), "unit": "day", "timezone": "-11"}});
        assert_eq!(value(tz), date(1_609_585_200_000)); // 2021-01-02T00:00-11:00
        assert_eq!(
            value(bson!({"$dateTrunc": {"date": null, "unit": "day"}})),
            Bson::Null
        );
        let e = error(bson!({"$dateTrunc": {"date": d.clone(), "unit": "day", "binSize": 0}}));
        assert_eq!(e.code, 5439018);
        let e = error(bson!({"$dateTrunc": {"date": 1, "unit": "day"}}));
        assert_eq!(e.code, 5439012);
        let e = error(bson!({"$dateTrunc": {"date": d, "unit": "day", "timezone": "Nowhere"}}));
        assert_eq!(e.code, 40485);
        assert!(
            e.errmsg.starts_with(
                "$dateTrunc parameter 'timezone' value parsing failed :: caused by :: "
            )
        );
        assert_eq!(
            parse_error(bson!({"$dateTrunc": {"date": 1}})).code,
            5439010
        );
    }
}
