//! Calendar arithmetic for the date operators, in UTC or a fixed offset (manual:
//! "$dateToString (aggregation)", format specifiers): civil dates from day counts and back,
//! ISO weeks, time zone arguments, time units, and formatting and parsing of date strings.

use crate::bsontype::type_name;
use crate::error::{CommandError, OVERFLOW, Result};
use crate::expr::common::loc;
use bson::Bson;

pub(crate) const DEFAULT_DATE_FORMAT: &str = "%Y-%m-%dT%H:%M:%S.%LZ";
pub(crate) const MS_PER_DAY: i64 = 86_400_000;

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn iso_weeks_in_year(y: i64) -> i64 {
    let p = |y: i64| (y + y.div_euclid(4) - y.div_euclid(100) + y.div_euclid(400)).rem_euclid(7);
    if p(y) == 4 || p(y - 1) == 3 { 53 } else { 52 }
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

pub(crate) fn validate_date_format(format: &str) -> Result<()> {
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            continue;
        }
        match chars.next() {
            None => return Err(loc(18535, "Unmatched '%' at end of format string")),
            Some(
                'd' | 'G' | 'H' | 'j' | 'L' | 'm' | 'M' | 'S' | 'w' | 'u' | 'U' | 'V' | 'Y' | 'z'
                | 'Z' | '%',
            ) => {}
            Some(other) => {
                return Err(loc(
                    18536,
                    format!("Invalid format character '%{other}' in format string"),
                ));
            }
        }
    }
    Ok(())
}

/// mongod's error for a time zone it does not know (or, here, cannot place a date in).
pub(crate) fn unrecognized_zone(tz: &str) -> CommandError {
    loc(
        40485,
        format!("unrecognized time zone identifier: \"{tz}\""),
    )
}

/// Like [`parse_timezone`], but a name shaped like a zone-database entry
/// (`America/New_York`) is `Ok(None)`: mongod would accept it, and a null date still gives
/// null, but this server cannot place an instant in it, so formatting a real date with it
/// fails with 40485.
pub(crate) fn resolve_timezone(tz: &str) -> Result<Option<i32>> {
    match parse_timezone(tz) {
        Ok(offset) => Ok(Some(offset)),
        Err(_) if looks_like_zone_name(tz) => Ok(None),
        Err(e) => Err(e),
    }
}

fn looks_like_zone_name(tz: &str) -> bool {
    tz.contains('/')
        && tz.split('/').all(|part| {
            part.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+'))
        })
}

/// A `timezone` argument as an offset in minutes. Only UTC and fixed offsets are known; an
/// Olson name is reported as unrecognized rather than silently treated as UTC.
fn parse_timezone(tz: &str) -> Result<i32> {
    // The zone database names whose offset is fixed; every other Olson name is rejected.
    const UTC_NAMES: &[&str] = &[
        "UTC",
        "GMT",
        "UCT",
        "GMT0",
        "GMT+0",
        "GMT-0",
        "Greenwich",
        "Universal",
        "Zulu",
        "Etc/UTC",
        "Etc/GMT",
        "Etc/UCT",
        "Etc/GMT0",
        "Etc/GMT+0",
        "Etc/GMT-0",
        "Etc/Greenwich",
        "Etc/Universal",
        "Etc/Zulu",
    ];
    if UTC_NAMES.contains(&tz) {
        return Ok(0);
    }
    let bad = || unrecognized_zone(tz);
    // Etc/GMT+5 is five hours *behind* UTC (POSIX sign convention).
    if let Some(rest) = tz.strip_prefix("Etc/GMT") {
        let hours: i32 = rest.parse().map_err(|_| bad())?;
        let valid = rest.starts_with(['+', '-'])
            && ((rest.starts_with('+') && hours <= 12) || (rest.starts_with('-') && hours >= -14));
        return if valid { Ok(-hours * 60) } else { Err(bad()) };
    }
    offset_minutes(tz).ok_or_else(bad)
}

/// TimeZoneDatabase::parseUtcOffset: `±HH`, `±HHMM` or `±HH:MM` (minutes are not range
/// checked there either).
fn offset_minutes(spec: &str) -> Option<i32> {
    let b = spec.as_bytes();
    let sign = match b.first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits = |r: std::ops::Range<usize>| -> Option<i32> {
        let part = b.get(r)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let (h, m) = match b.len() {
        3 => (digits(1..3)?, 0),
        5 => (digits(1..3)?, digits(3..5)?),
        6 if b[3] == b':' => (digits(1..3)?, digits(4..6)?),
        _ => return None,
    };
    Some(sign * (h * 60 + m))
}

pub(crate) fn coerce_to_date(v: &Bson) -> Result<i64> {
    match v {
        Bson::DateTime(d) => Ok(d.timestamp_millis()),
        Bson::Timestamp(t) => Ok(t.time as i64 * 1000),
        Bson::ObjectId(o) => Ok(o.timestamp().timestamp_millis()),
        other => Err(loc(
            16006,
            format!("can't convert from BSON type {} to Date", type_name(other)),
        )),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum TimeUnit {
    Year,
    Quarter,
    Month,
    Week,
    Day,
    Hour,
    Minute,
    Second,
    Millisecond,
}

impl TimeUnit {
    pub(crate) fn parse(name: &str) -> Result<TimeUnit> {
        Ok(match name {
            "year" => TimeUnit::Year,
            "quarter" => TimeUnit::Quarter,
            "month" => TimeUnit::Month,
            "week" => TimeUnit::Week,
            "day" => TimeUnit::Day,
            "hour" => TimeUnit::Hour,
            "minute" => TimeUnit::Minute,
            "second" => TimeUnit::Second,
            "millisecond" => TimeUnit::Millisecond,
            _ => {
                return Err(CommandError::failed_to_parse(format!(
                    "unknown time unit value: {name}"
                )));
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            TimeUnit::Year => "year",
            TimeUnit::Quarter => "quarter",
            TimeUnit::Month => "month",
            TimeUnit::Week => "week",
            TimeUnit::Day => "day",
            TimeUnit::Hour => "hour",
            TimeUnit::Minute => "minute",
            TimeUnit::Second => "second",
            TimeUnit::Millisecond => "millisecond",
        }
    }
}

/// mongod's `dateAdd` in a fixed-offset zone: calendar units move the local date and clamp the
/// day to the end of the month; smaller units add their length.
pub(crate) fn date_add(ms: i64, unit: TimeUnit, amount: i64, offset_minutes: i32) -> Result<i64> {
    let overflow = || loc(5166406, "dateAdd overflowed");
    if unit == TimeUnit::Millisecond {
        return ms.checked_add(amount).ok_or_else(overflow);
    }
    // isDateAddAmountValid: the amount must roughly fit the range of a date.
    let max_days: i64 = (u64::MAX / MS_PER_DAY as u64 + 1) as i64;
    let max_years = max_days / 365 + 1;
    let limit = match unit {
        TimeUnit::Year => max_years,
        TimeUnit::Quarter => max_years * 4,
        TimeUnit::Month => max_years * 12,
        TimeUnit::Week => max_days / 7,
        TimeUnit::Day => max_days,
        TimeUnit::Hour => max_days * 24,
        TimeUnit::Minute => max_days * 24 * 60,
        _ => max_days * 24 * 60 * 60,
    };
    if !(-limit < amount && amount < limit) {
        return Err(loc(
            5976500,
            format!(
                "invalid dateAdd 'amount' parameter value: {amount} {}",
                unit.name()
            ),
        ));
    }
    let step_ms: Option<i64> = match unit {
        TimeUnit::Week => Some(7 * MS_PER_DAY),
        TimeUnit::Day => Some(MS_PER_DAY),
        TimeUnit::Hour => Some(3_600_000),
        TimeUnit::Minute => Some(60_000),
        TimeUnit::Second => Some(1000),
        _ => None,
    };
    if let Some(step) = step_ms {
        return amount
            .checked_mul(step)
            .and_then(|d| ms.checked_add(d))
            .ok_or_else(overflow);
    }
    let months = match unit {
        TimeUnit::Year => amount.checked_mul(12),
        TimeUnit::Quarter => amount.checked_mul(3),
        _ => Some(amount),
    }
    .ok_or_else(overflow)?;
    let local = ms
        .checked_add(offset_minutes as i64 * 60_000)
        .ok_or_else(overflow)?;
    let days = local.div_euclid(MS_PER_DAY);
    let in_day = local.rem_euclid(MS_PER_DAY);
    let (y, m, d) = civil_from_days(days);
    let total = (y * 12 + (m - 1))
        .checked_add(months)
        .ok_or_else(overflow)?;
    let (ny, nm) = (total.div_euclid(12), total.rem_euclid(12) + 1);
    let nd = d.min(days_in_month(ny, nm));
    days_from_civil(ny, nm, nd)
        .checked_mul(MS_PER_DAY)
        .and_then(|v| v.checked_add(in_day))
        .and_then(|v| v.checked_sub(offset_minutes as i64 * 60_000))
        .ok_or_else(overflow)
}

/// parseDayOfWeek: full or three-letter English names, any case; 0 = Sunday.
pub(crate) fn day_of_week_index(op: &str, v: &Bson) -> Result<i64> {
    let Bson::String(s) = v else {
        return Err(loc(
            5439015,
            format!(
                "{op} requires 'startOfWeek' to be a string, but got {}",
                type_name(v)
            ),
        ));
    };
    const DAYS: [&str; 7] = [
        "sunday",
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
    ];
    let lower = s.to_ascii_lowercase();
    DAYS.iter()
        .position(|d| *d == lower || d[..3] == lower)
        .map(|i| i as i64)
        .ok_or_else(|| {
            loc(
                5439016,
                format!(
                    "{op} parameter 'startOfWeek' value cannot be recognized as a day of a week: {s}"
                ),
            )
        })
}

/// mongod's `truncateDate` in a fixed-offset zone: bins of `bin` units aligned to
/// 2000-01-01T00:00 local time (for weeks, to the first `week_start` day on or after it).
pub(crate) fn truncate_date(
    ms: i64,
    unit: TimeUnit,
    bin: i64,
    offset_minutes: i32,
    week_start: i64,
) -> Result<i64> {
    let overflow = || CommandError::new(OVERFLOW, "date overflow in $dateTrunc");
    let shift = offset_minutes as i64 * 60_000;
    let local = ms.checked_add(shift).ok_or_else(overflow)?;
    let reference_day = days_from_civil(2000, 1, 1);
    let local_out = match unit {
        TimeUnit::Year | TimeUnit::Quarter | TimeUnit::Month => {
            let per = match unit {
                TimeUnit::Year => 12,
                TimeUnit::Quarter => 3,
                _ => 1,
            };
            let span = bin.checked_mul(per).ok_or_else(overflow)?;
            let (y, m, _) = civil_from_days(local.div_euclid(MS_PER_DAY));
            let months = (y - 2000) * 12 + (m - 1);
            let start = months.div_euclid(span) * span;
            let (ny, nm) = (2000 + start.div_euclid(12), start.rem_euclid(12) + 1);
            days_from_civil(ny, nm, 1)
                .checked_mul(MS_PER_DAY)
                .ok_or_else(overflow)?
        }
        _ => {
            let unit_ms = match unit {
                TimeUnit::Week => 7 * MS_PER_DAY,
                TimeUnit::Day => MS_PER_DAY,
                TimeUnit::Hour => 3_600_000,
                TimeUnit::Minute => 60_000,
                TimeUnit::Second => 1000,
                _ => 1,
            };
            let mut reference = reference_day;
            if unit == TimeUnit::Week {
                // 2000-01-01 was a Saturday (weekday 6 counting from Sunday).
                reference += (week_start - 6).rem_euclid(7);
            }
            let reference = reference * MS_PER_DAY;
            let span = bin.checked_mul(unit_ms).ok_or_else(overflow)?;
            let delta = (local as i128 - reference as i128).div_euclid(span as i128) * span as i128;
            i64::try_from(reference as i128 + delta).map_err(|_| overflow())?
        }
    };
    local_out.checked_sub(shift).ok_or_else(overflow)
}

/// mongod's `dateDiff` in a fixed-offset zone: the number of `unit` boundaries crossed between
/// the two instants' local times (weeks begin on `week_start`, 0 = Sunday).
pub(crate) fn date_diff(
    start: i64,
    end: i64,
    unit: TimeUnit,
    offset_minutes: i32,
    week_start: i64,
) -> Result<i64> {
    if unit == TimeUnit::Millisecond {
        return end
            .checked_sub(start)
            .ok_or_else(|| loc(5166308, "dateDiff overflowed"));
    }
    let shift = offset_minutes as i64 * 60_000;
    let (ls, le) = (start.saturating_add(shift), end.saturating_add(shift));
    let floor_diff = |unit_ms: i64| le.div_euclid(unit_ms) - ls.div_euclid(unit_ms);
    let (a, b) = (
        DateParts::new(start, offset_minutes),
        DateParts::new(end, offset_minutes),
    );
    Ok(match unit {
        TimeUnit::Year => b.year - a.year,
        TimeUnit::Quarter => (b.month - 1) / 3 - (a.month - 1) / 3 + (b.year - a.year) * 4,
        TimeUnit::Month => b.month - a.month + (b.year - a.year) * 12,
        TimeUnit::Week => {
            // Days since the epoch shifted so that weeks start on `week_start`; the epoch
            // (1970-01-01) was a Thursday.
            let week_of =
                |local: i64| (local.div_euclid(MS_PER_DAY) + 4 - week_start).div_euclid(7);
            week_of(le) - week_of(ls)
        }
        TimeUnit::Day => floor_diff(MS_PER_DAY),
        TimeUnit::Hour => floor_diff(3_600_000),
        TimeUnit::Minute => floor_diff(60_000),
        _ => floor_diff(1000),
    })
}

/// The calendar fields of an instant in a fixed-offset zone.
pub(crate) struct DateParts {
    pub(crate) year: i64,
    pub(crate) month: i64,
    pub(crate) day: i64,
    pub(crate) hour: i64,
    pub(crate) minute: i64,
    pub(crate) second: i64,
    pub(crate) milli: i64,
    /// 0 = Sunday.
    pub(crate) weekday_sun0: i64,
    /// 0-based day of the year.
    pub(crate) yday0: i64,
    /// 1 = Monday ... 7 = Sunday.
    pub(crate) iso_wday: i64,
    pub(crate) iso_year: i64,
    pub(crate) iso_week: i64,
}

impl DateParts {
    pub(crate) fn new(ms: i64, offset_minutes: i32) -> Self {
        let local = ms.saturating_add(offset_minutes as i64 * 60_000);
        let days = local.div_euclid(MS_PER_DAY);
        let in_day = local.rem_euclid(MS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        let weekday_sun0 = (days + 4).rem_euclid(7);
        let yday0 = days - days_from_civil(year, 1, 1);
        let iso_wday = (weekday_sun0 + 6) % 7 + 1;
        let mut iso_year = year;
        let mut iso_week = (yday0 + 1 - iso_wday + 10) / 7;
        if iso_week < 1 {
            iso_year = year - 1;
            iso_week = iso_weeks_in_year(iso_year);
        } else if iso_week > iso_weeks_in_year(year) {
            iso_year = year + 1;
            iso_week = 1;
        }
        DateParts {
            year,
            month,
            day,
            hour: in_day / 3_600_000,
            minute: in_day / 60_000 % 60,
            second: in_day / 1000 % 60,
            milli: in_day % 1000,
            weekday_sun0,
            yday0,
            iso_wday,
            iso_year,
            iso_week,
        }
    }

    /// TimeZone::week: weeks start on Sunday; days before the first Sunday are week 0.
    pub(crate) fn week(&self) -> i64 {
        (self.yday0 + 7 - self.weekday_sun0) / 7
    }
}

pub(crate) fn format_date(ms: i64, format: &str, offset_minutes: i32) -> Result<String> {
    let p = DateParts::new(ms, offset_minutes);
    let DateParts {
        year: y,
        month: m,
        day: d,
        hour,
        minute,
        second,
        milli,
        weekday_sun0,
        yday0,
        iso_wday,
        iso_year,
        iso_week,
    } = p;
    let out_of_range = |year: i64| {
        loc(
            18537,
            format!(
                "Could not convert date to string: date component was outside the supported range of 0-9999: {year}"
            ),
        )
    };
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(spec) = chars.next() else {
            return Err(loc(18535, "Unmatched '%' at end of format string"));
        };
        match spec {
            'Y' => {
                if !(0..=9999).contains(&y) {
                    return Err(out_of_range(y));
                }
                out.push_str(&format!("{y:04}"));
            }
            'G' => {
                if !(0..=9999).contains(&iso_year) {
                    return Err(out_of_range(iso_year));
                }
                out.push_str(&format!("{iso_year:04}"));
            }
            'm' => out.push_str(&format!("{m:02}")),
            'd' => out.push_str(&format!("{d:02}")),
            'H' => out.push_str(&format!("{hour:02}")),
            'M' => out.push_str(&format!("{minute:02}")),
            'S' => out.push_str(&format!("{second:02}")),
            'L' => out.push_str(&format!("{milli:03}")),
            'j' => out.push_str(&format!("{:03}", yday0 + 1)),
            'w' => out.push_str(&(weekday_sun0 + 1).to_string()),
            'u' => out.push_str(&iso_wday.to_string()),
            'U' => out.push_str(&format!("{:02}", p.week())),
            'V' => out.push_str(&format!("{iso_week:02}")),
            'z' => {
                let sign = if offset_minutes < 0 { '-' } else { '+' };
                let a = offset_minutes.abs();
                out.push_str(&format!("{sign}{:02}{:02}", a / 60, a % 60));
            }
            'Z' => out.push_str(&offset_minutes.to_string()),
            '%' => out.push('%'),
            other => {
                return Err(loc(
                    18536,
                    format!("Invalid format character '%{other}' in format string"),
                ));
            }
        }
    }
    Ok(out)
}

/// ISO-8601 style date strings as `$toDate` accepts them: `YYYY-MM-DD`, optionally followed
/// by `THH:MM[:SS[.fff]]` (or a space) and `Z` or a `±HH[:]MM` offset.
pub(crate) fn parse_date_string(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let y = num(0, 4)?;
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    let (mo, d) = (num(5, 2)?, num(8, 2)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) {
        return None;
    }
    let mut ms = days_from_civil(y, mo, d) * MS_PER_DAY;
    let mut i = 10;
    if i == b.len() {
        return Some(ms);
    }
    if !matches!(b[i], b'T' | b' ') {
        return None;
    }
    i += 1;
    let h = num(i, 2)?;
    if b.get(i + 2) != Some(&b':') {
        return None;
    }
    let mi = num(i + 3, 2)?;
    i += 5;
    let mut sec = 0;
    let mut milli = 0;
    if b.get(i) == Some(&b':') {
        sec = num(i + 1, 2)?;
        i += 3;
        if b.get(i) == Some(&b'.') {
            let start = i + 1;
            let mut end = start;
            while end < b.len() && b[end].is_ascii_digit() {
                end += 1;
            }
            if end == start {
                return None;
            }
            let frac = &s[start..end.min(start + 3)];
            milli = format!("{frac:0<3}").parse::<i64>().ok()?;
            i = end;
        }
    }
    if h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    ms += h * 3_600_000 + mi * 60_000 + sec * 1000 + milli;
    match b.get(i) {
        None => Some(ms),
        Some(b'Z') if i + 1 == b.len() => Some(ms),
        Some(b'+' | b'-') => {
            let offset = offset_minutes(&s[i..])?;
            Some(ms - offset as i64 * 60_000)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::tests::{date, value};
    use bson::bson;

    #[test]
    fn time_zones() {
        assert_eq!(parse_timezone("Etc/GMT+5").unwrap(), -300);
        assert_eq!(parse_timezone("Etc/GMT-14").unwrap(), 840);
        assert_eq!(parse_timezone("GMT").unwrap(), 0);
        assert_eq!(parse_timezone("+05").unwrap(), 300);
        assert_eq!(parse_timezone("-05:30").unwrap(), -330);
        assert_eq!(parse_timezone("Z").unwrap_err().code, 40485);
        assert_eq!(parse_timezone("+5").unwrap_err().code, 40485);
        let e = parse_timezone("America/New_York").unwrap_err();
        assert_eq!(
            e.errmsg,
            "unrecognized time zone identifier: \"America/New_York\""
        );
        let d = bson!({"$dateToString": {"date": date(0), "format": "%H %Z", "timezone": "+0130"}});
        assert_eq!(value(d), bson!("01 90"));
    }
}
