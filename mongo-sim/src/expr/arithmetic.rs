//! Arithmetic: `$add`, `$subtract`, `$multiply`, `$divide`, `$mod`, `$abs`, `$floor`,
//! `$ceil`, `$round`, `$trunc`, `$pow` and `$sqrt`, `$exp`, `$ln`, `$log10`, `$log`, with
//! mongod's promotion of int to long to double and its date arithmetic in `$add`/`$subtract`.

use crate::bsontype::type_name;
use crate::error::{BAD_VALUE, CommandError, OVERFLOW, Result};
use crate::expr::Arity::{Exactly, Range, Variadic};
use crate::expr::common::{format_double, is_nullish, loc, null, take, unrecognized};
use crate::expr::number::{Num, Sum, as_int32, narrow};
use crate::expr::{Arity, Cx, Expr};
use bson::Bson;

pub(crate) const OPERATORS: &[(&str, Arity)] = &[
    ("$abs", Exactly(1)),
    ("$ceil", Exactly(1)),
    ("$floor", Exactly(1)),
    ("$subtract", Exactly(2)),
    ("$divide", Exactly(2)),
    ("$mod", Exactly(2)),
    ("$add", Variadic),
    ("$multiply", Variadic),
    ("$sqrt", Exactly(1)),
    ("$exp", Exactly(1)),
    ("$ln", Exactly(1)),
    ("$log10", Exactly(1)),
    ("$log", Exactly(2)),
    ("$round", Range(1, 2)),
    ("$trunc", Range(1, 2)),
    ("$pow", Exactly(2)),
];

pub(crate) fn eval(cx: &Cx, op: &str, args: &[Expr]) -> Result<Option<Bson>> {
    let mut vals = cx.eval_all(args)?;
    match op {
        "$add" => eval_add(vals),
        "$multiply" => eval_multiply(vals),
        "$subtract" => eval_subtract(take(&mut vals, 0), take(&mut vals, 1)),
        "$divide" => eval_divide(take(&mut vals, 0), take(&mut vals, 1)),
        "$mod" => eval_mod(take(&mut vals, 0), take(&mut vals, 1)),
        "$abs" | "$floor" | "$ceil" => eval_abs_floor_ceil(op, take(&mut vals, 0)),
        "$sqrt" | "$exp" | "$ln" | "$log10" => eval_single_numeric(op, take(&mut vals, 0)),
        "$log" => eval_log(take(&mut vals, 0), take(&mut vals, 1)),
        "$round" | "$trunc" => eval_round_or_trunc(op, vals),
        "$pow" => eval_pow(take(&mut vals, 0), take(&mut vals, 1)),
        _ => Err(unrecognized(op)),
    }
}

fn eval_add(vals: Vec<Option<Bson>>) -> Result<Option<Bson>> {
    let mut sum = Sum::default();
    let mut date: Option<i64> = None;
    for v in vals {
        let Some(v) = v else {
            return Ok(Some(Bson::Null));
        };
        match &v {
            Bson::Null | Bson::Undefined => return Ok(Some(Bson::Null)),
            Bson::DateTime(d) => {
                if date.is_some() {
                    return Err(loc(16612, "only one date allowed in an $add expression"));
                }
                date = Some(d.timestamp_millis());
            }
            other => match Num::of(other)? {
                Some(n) => sum.add(n),
                None => {
                    return Err(CommandError::type_mismatch(format!(
                        "$add only supports numeric or date types, not {}",
                        type_name(other)
                    )));
                }
            },
        }
    }
    if let Some(ms) = date {
        let offset = if sum.is_double() {
            let t = sum.total_f64().round();
            if !t.is_finite() || t.abs() >= 9.2e18 {
                return Err(CommandError::new(OVERFLOW, "date overflow in $add"));
            }
            t as i64
        } else {
            sum.long_total
        };
        let total = ms
            .checked_add(offset)
            .ok_or_else(|| CommandError::new(OVERFLOW, "date overflow in $add"))?;
        return Ok(Some(Bson::DateTime(bson::DateTime::from_millis(total))));
    }
    Ok(Some(sum.result()))
}

fn eval_multiply(vals: Vec<Option<Bson>>) -> Result<Option<Bson>> {
    let mut long_product: i64 = 1;
    let mut double_product = 1.0f64;
    let (mut any_long, mut any_double, mut overflowed) = (false, false, false);
    for v in vals {
        let Some(v) = v else {
            return Ok(Some(Bson::Null));
        };
        if matches!(v, Bson::Null | Bson::Undefined) {
            return Ok(Some(Bson::Null));
        }
        let Some(n) = Num::of(&v)? else {
            return Err(CommandError::type_mismatch(format!(
                "$multiply only supports numeric types, not {}",
                type_name(&v)
            )));
        };
        match n.int() {
            Some(i) if !overflowed => {
                any_long |= n.is_long();
                match long_product.checked_mul(i) {
                    Some(p) => long_product = p,
                    None => {
                        overflowed = true;
                        double_product *= long_product as f64 * i as f64;
                        long_product = 1;
                    }
                }
            }
            Some(i) => double_product *= i as f64,
            None => {
                any_double = true;
                double_product *= n.f64();
            }
        }
    }
    Ok(Some(if any_double || overflowed {
        Bson::Double(long_product as f64 * double_product)
    } else {
        narrow(long_product, any_long)
    }))
}

fn eval_subtract(a: Option<Bson>, b: Option<Bson>) -> Result<Option<Bson>> {
    if is_nullish(a.as_ref()) || is_nullish(b.as_ref()) {
        return Ok(Some(Bson::Null));
    }
    let (a, b) = (a.unwrap_or(Bson::Null), b.unwrap_or(Bson::Null));
    // ExpressionSubtract::apply capitalises "Date" when the minuend is a date.
    let mismatch = || {
        let from = match a {
            Bson::DateTime(_) => "Date",
            _ => type_name(&a),
        };
        CommandError::type_mismatch(format!("can't $subtract {} from {from}", type_name(&b)))
    };
    match (&a, &b) {
        (Bson::DateTime(x), Bson::DateTime(y)) => Ok(Some(Bson::Int64(
            x.timestamp_millis().wrapping_sub(y.timestamp_millis()),
        ))),
        (Bson::DateTime(x), other) => {
            let Some(n) = Num::of(other)? else {
                return Err(mismatch());
            };
            // The subtrahend is truncated to whole milliseconds (coerceToLong).
            let offset = match n.int() {
                Some(i) => i,
                None => n.f64() as i64,
            };
            let ms = x.timestamp_millis().wrapping_sub(offset);
            Ok(Some(Bson::DateTime(bson::DateTime::from_millis(ms))))
        }
        _ => {
            let (Some(x), Some(y)) = (Num::of(&a)?, Num::of(&b)?) else {
                return Err(mismatch());
            };
            Ok(Some(match (x.int(), y.int()) {
                (Some(i), Some(j)) => match i.checked_sub(j) {
                    Some(r) => narrow(r, x.is_long() || y.is_long()),
                    None => Bson::Double(i as f64 - j as f64),
                },
                _ => Bson::Double(x.f64() - y.f64()),
            }))
        }
    }
}

fn two_numbers(op: &str, a: &Bson, b: &Bson) -> Result<(Num, Num)> {
    match (Num::of(a)?, Num::of(b)?) {
        (Some(x), Some(y)) => Ok((x, y)),
        _ => Err(CommandError::type_mismatch(format!(
            "{op} only supports numeric types, not {} and {}",
            type_name(a),
            type_name(b)
        ))),
    }
}

fn eval_divide(a: Option<Bson>, b: Option<Bson>) -> Result<Option<Bson>> {
    if is_nullish(a.as_ref()) || is_nullish(b.as_ref()) {
        return Ok(Some(Bson::Null));
    }
    let (a, b) = (a.unwrap_or(Bson::Null), b.unwrap_or(Bson::Null));
    let (x, y) = two_numbers("$divide", &a, &b)?;
    if y.f64() == 0.0 {
        return Err(CommandError::new(BAD_VALUE, "can't $divide by zero"));
    }
    Ok(Some(Bson::Double(x.f64() / y.f64())))
}

fn eval_mod(a: Option<Bson>, b: Option<Bson>) -> Result<Option<Bson>> {
    if is_nullish(a.as_ref()) || is_nullish(b.as_ref()) {
        return Ok(Some(Bson::Null));
    }
    let (a, b) = (a.unwrap_or(Bson::Null), b.unwrap_or(Bson::Null));
    let (Some(x), Some(y)) = (Num::of(&a)?, Num::of(&b)?) else {
        return Err(loc(
            16611,
            format!(
                "$mod only supports numeric types, not {} and {}",
                type_name(&a),
                type_name(&b)
            ),
        ));
    };
    if y.f64() == 0.0 {
        return Err(loc(16610, "can't $mod by zero"));
    }
    // As ExpressionMod::apply: fmod when the dividend is a double or the divisor a
    // non-integral double; otherwise long if either side is long, else int.
    let divisor_integral = as_int32(&b)?.is_some();
    Ok(Some(match (x, y) {
        (Num::Double(_), _) => Bson::Double(x.f64() % y.f64()),
        (_, Num::Double(_)) if !divisor_integral => Bson::Double(x.f64() % y.f64()),
        (Num::Long(_), _) | (_, Num::Long(_)) => {
            Bson::Int64(x.int().unwrap_or(0).wrapping_rem(y.f64() as i64))
        }
        _ => Bson::Int32((x.int().unwrap_or(0) as i32).wrapping_rem(y.f64() as i32)),
    }))
}

fn numeric_arg(op: &str, v: &Bson) -> Result<Num> {
    Num::of(v)?.ok_or_else(|| {
        loc(
            28765,
            format!("{op} only supports numeric types, not {}", type_name(v)),
        )
    })
}

fn eval_abs(v: &Bson) -> Result<Bson> {
    Ok(match numeric_arg("$abs", v)? {
        Num::Int(i) => match i.checked_abs() {
            Some(a) => Bson::Int32(a),
            None => Bson::Int64((i as i64).abs()),
        },
        Num::Long(i) => Bson::Int64(
            i.checked_abs()
                .ok_or_else(|| loc(28680, "can't take $abs of long long min"))?,
        ),
        Num::Double(d) => Bson::Double(d.abs()),
    })
}

/// `$abs`, `$floor` and `$ceil`: integers come back as they are.
fn eval_abs_floor_ceil(op: &str, v: Option<Bson>) -> Result<Option<Bson>> {
    if is_nullish(v.as_ref()) {
        return null();
    }
    let v = v.unwrap_or(Bson::Null);
    if op == "$abs" {
        return Ok(Some(eval_abs(&v)?));
    }
    Ok(Some(match numeric_arg(op, &v)? {
        Num::Double(d) if op == "$floor" => Bson::Double(d.floor()),
        Num::Double(d) => Bson::Double(d.ceil()),
        _ => v,
    }))
}

/// ExpressionSingleNumericArg subclasses: always a double result here.
fn eval_single_numeric(op: &str, v: Option<Bson>) -> Result<Option<Bson>> {
    if is_nullish(v.as_ref()) {
        return null();
    }
    let x = numeric_arg(op, &v.unwrap_or(Bson::Null))?.f64();
    let out = match op {
        "$sqrt" => {
            if x < 0.0 {
                return Err(loc(
                    28714,
                    "$sqrt's argument must be greater than or equal to 0",
                ));
            }
            x.sqrt()
        }
        "$exp" => x.exp(),
        _ => {
            if x <= 0.0 {
                return Err(loc(
                    if op == "$ln" { 28766 } else { 28761 },
                    format!(
                        "{op}'s argument must be a positive number, but is {}",
                        format_double(x)
                    ),
                ));
            }
            if op == "$ln" { x.ln() } else { x.log10() }
        }
    };
    Ok(Some(Bson::Double(out)))
}

fn eval_log(arg: Option<Bson>, base: Option<Bson>) -> Result<Option<Bson>> {
    if is_nullish(arg.as_ref()) || is_nullish(base.as_ref()) {
        return null();
    }
    let (arg, base) = (arg.unwrap_or(Bson::Null), base.unwrap_or(Bson::Null));
    let Some(x) = Num::of(&arg)? else {
        return Err(loc(
            28756,
            format!("$log's argument must be numeric, not {}", type_name(&arg)),
        ));
    };
    let Some(b) = Num::of(&base)? else {
        return Err(loc(
            28757,
            format!("$log's base must be numeric, not {}", type_name(&base)),
        ));
    };
    let (x, b) = (x.f64(), b.f64());
    if x <= 0.0 {
        return Err(loc(
            28758,
            format!(
                "$log's argument must be a positive number, but is {}",
                format_double(x)
            ),
        ));
    }
    if b <= 0.0 || b == 1.0 {
        return Err(loc(
            28759,
            format!(
                "$log's base must be a positive number not equal to 1, but is {}",
                format_double(b)
            ),
        ));
    }
    Ok(Some(Bson::Double(x.ln() / b.ln())))
}

fn eval_round_or_trunc(op: &str, vals: Vec<Option<Bson>>) -> Result<Option<Bson>> {
    let has_place = vals.len() > 1;
    let mut it = vals.into_iter();
    let (v, place) = (it.next().flatten(), it.next().flatten());
    if is_nullish(v.as_ref()) {
        return null();
    }
    let v = v.unwrap_or(Bson::Null);
    if Num::of(&v)?.is_none() {
        return Err(loc(
            51081,
            format!("{op} only supports numeric types, not {}", type_name(&v)),
        ));
    }
    let place = if has_place {
        match place_arg(op, place.as_ref())? {
            Some(p) => p,
            None => return null(),
        }
    } else {
        0
    };
    Ok(Some(round_number(op, &v, place)?))
}

/// The precision of `$round`/`$trunc` (evaluateRoundOrTrunc); `None` when it is nullish.
fn place_arg(op: &str, v: Option<&Bson>) -> Result<Option<i64>> {
    if is_nullish(v) {
        return Ok(None);
    }
    let v = v.unwrap_or(&Bson::Null);
    let Some(place) = as_int32(v)? else {
        return Err(loc(
            51082,
            format!("precision argument to  {op} must be a integral value"),
        ));
    };
    if !(-20..=100).contains(&place) {
        return Err(loc(
            51083,
            format!("cannot apply {op} with precision value {place} value must be in [-20, 100]"),
        ));
    }
    Ok(Some(place))
}

/// `$round` (half to even) and `$trunc` at `place` decimal digits. Doubles are rounded on
/// their 34-significant-digit decimal form, as mongod does through Decimal128.
fn round_number(op: &str, v: &Bson, place: i64) -> Result<Bson> {
    let half_even = op == "$round";
    let n = Num::of(v)?.ok_or_else(|| {
        loc(
            51081,
            format!("{op} only supports numeric types, not {}", type_name(v)),
        )
    })?;
    match n {
        Num::Double(d) => {
            if !d.is_finite() || d == 0.0 {
                return Ok(Bson::Double(d));
            }
            Ok(Bson::Double(round_decimal_string(d, place, half_even)))
        }
        Num::Int(_) | Num::Long(_) => {
            let i = n.int().unwrap_or(0);
            if place >= 0 {
                return Ok(v.clone());
            }
            let p = 10i128.pow((-place) as u32);
            let x = i as i128;
            let q = x / p;
            let r = x % p;
            let mut q = q;
            if half_even {
                let twice = 2 * r.abs();
                if twice > p || (twice == p && q % 2 != 0) {
                    q += x.signum();
                }
            }
            let out = q * p;
            Ok(match (n, i32::try_from(out), i64::try_from(out)) {
                (Num::Int(_), Ok(o), _) => Bson::Int32(o),
                (_, _, Ok(o)) => Bson::Int64(o),
                _ => Bson::Double(out as f64),
            })
        }
    }
}

fn round_decimal_string(d: f64, place: i64, half_even: bool) -> f64 {
    let s = format!("{:.33e}", d.abs());
    let Some((mantissa, exp)) = s.split_once('e') else {
        return d;
    };
    let exp: i64 = exp.parse().unwrap_or(0);
    let digits: Vec<u8> = mantissa
        .bytes()
        .filter(|b| b.is_ascii_digit())
        .map(|b| b - b'0')
        .collect();
    // Number of digits kept: those before the decimal point (exp + 1) plus `place`.
    let keep = exp + 1 + place;
    if keep >= digits.len() as i64 {
        return d;
    }
    let mut kept: Vec<u8> = if keep > 0 {
        digits[..keep as usize].to_vec()
    } else {
        Vec::new()
    };
    let dropped: &[u8] = if keep >= 0 {
        &digits[keep as usize..]
    } else {
        &[]
    };
    let round_up = if !half_even || keep < 0 {
        false
    } else {
        let first = dropped.first().copied().unwrap_or(0);
        let rest_nonzero = dropped.iter().skip(1).any(|&x| x != 0);
        let last_odd = kept.last().is_some_and(|x| x % 2 == 1);
        first > 5 || (first == 5 && (rest_nonzero || last_odd))
    };
    let mut carry = round_up;
    for digit in kept.iter_mut().rev() {
        if !carry {
            break;
        }
        if *digit == 9 {
            *digit = 0;
        } else {
            *digit += 1;
            carry = false;
        }
    }
    let mut scale_exp = exp + 1 - kept.len() as i64;
    if carry {
        kept.insert(0, 1);
        scale_exp = exp + 2 - kept.len() as i64;
    }
    if kept.is_empty() {
        return 0.0f64.copysign(d);
    }
    let text: String = kept.iter().map(|x| (x + b'0') as char).collect();
    let value: f64 = format!("{text}e{scale_exp}").parse().unwrap_or(d.abs());
    value.copysign(d)
}

/// ExpressionPow: integer powers stay integers while they fit in a long.
fn eval_pow(base: Option<Bson>, exp: Option<Bson>) -> Result<Option<Bson>> {
    if is_nullish(base.as_ref()) || is_nullish(exp.as_ref()) {
        return Ok(Some(Bson::Null));
    }
    let (base, exp) = (base.unwrap_or(Bson::Null), exp.unwrap_or(Bson::Null));
    let Some(b) = Num::of(&base)? else {
        return Err(loc(
            28762,
            format!("$pow's base must be numeric, not {}", type_name(&base)),
        ));
    };
    let Some(e) = Num::of(&exp)? else {
        return Err(loc(
            28763,
            format!("$pow's exponent must be numeric, not {}", type_name(&exp)),
        ));
    };
    if b.f64() == 0.0 && e.f64() < 0.0 {
        return Err(loc(
            28764,
            "$pow cannot take a base of 0 and a negative exponent",
        ));
    }
    let (Some(bi), Some(ei)) = (b.int(), e.int()) else {
        return Ok(Some(Bson::Double(b.f64().powf(e.f64()))));
    };
    let any_long = b.is_long() || e.is_long();
    let exact = match bi {
        0 => Some(if ei == 0 { 1 } else { 0 }),
        1 => Some(1),
        -1 => Some(if ei % 2 == 0 { 1 } else { -1 }),
        _ if !(0..=63).contains(&ei) => None,
        _ => bi.checked_pow(ei as u32),
    };
    Ok(Some(match exact {
        Some(v) => narrow(v, any_long),
        None => Bson::Double((bi as f64).powf(ei as f64)),
    }))
}

#[cfg(test)]
mod tests {
    use crate::expr::tests::{date, error, value};
    use bson::{Bson, bson};

    #[test]
    fn add_promotes_and_handles_dates() {
        assert_eq!(value(bson!({"$add": [1, 2]})), bson!(3));
        assert_eq!(
            value(bson!({"$add": [i32::MAX, 1]})),
            Bson::Int64(2_147_483_648)
        );
        assert_eq!(value(bson!({"$add": [1, 2_i64]})), Bson::Int64(3));
        assert_eq!(
            value(bson!({"$add": [i64::MAX, 1_i64]})),
            Bson::Double(i64::MAX as f64 + 1.0)
        );
        assert_eq!(value(bson!({"$add": [1, 0.5]})), bson!(1.5));
        assert_eq!(value(bson!({"$add": [1, null]})), Bson::Null);
        assert_eq!(value(bson!({"$add": [1, "$missing"]})), Bson::Null);
        assert_eq!(value(bson!({"$add": []})), bson!(0));
        assert_eq!(value(bson!({"$add": [date(1000), 500]})), date(1500));
        assert_eq!(value(bson!({"$add": [date(1000), 1.6]})), date(1002));
        let e = error(bson!({"$add": [date(1), date(2)]}));
        assert_eq!(e.code, 16612);
        assert_eq!(e.errmsg, "only one date allowed in an $add expression");
        let e = error(bson!({"$add": [1, "a"]}));
        assert_eq!((e.code, e.code_name.as_str()), (14, "TypeMismatch"));
        assert_eq!(
            e.errmsg,
            "$add only supports numeric or date types, not string"
        );
    }

    #[test]
    fn subtract_multiply_divide_mod() {
        assert_eq!(value(bson!({"$subtract": [5, 3]})), bson!(2));
        assert_eq!(
            value(bson!({"$subtract": [i32::MIN, 1]})),
            Bson::Int64(i32::MIN as i64 - 1)
        );
        assert_eq!(value(bson!({"$subtract": [5, 0.5]})), bson!(4.5));
        assert_eq!(
            value(bson!({"$subtract": [date(5000), date(1000)]})),
            Bson::Int64(4000)
        );
        assert_eq!(value(bson!({"$subtract": [date(5000), 1000]})), date(4000));
        assert_eq!(value(bson!({"$subtract": [null, 1]})), Bson::Null);
        let e = error(bson!({"$subtract": [1, date(0)]}));
        assert_eq!(
            (e.code, e.errmsg.as_str()),
            (14, "can't $subtract date from int")
        );
        assert_eq!(error(bson!({"$subtract": ["a", 1]})).code, 14);

        assert_eq!(value(bson!({"$multiply": [2, 3]})), bson!(6));
        assert_eq!(
            value(bson!({"$multiply": [i32::MAX, 2]})),
            Bson::Int64(i32::MAX as i64 * 2)
        );
        assert_eq!(
            value(bson!({"$multiply": [i64::MAX, 2_i64]})),
            Bson::Double(i64::MAX as f64 * 2.0)
        );
        assert_eq!(value(bson!({"$multiply": [2, 1.5]})), bson!(3.0));
        assert_eq!(value(bson!({"$multiply": [2, "$missing"]})), Bson::Null);
        assert_eq!(error(bson!({"$multiply": [2, "x"]})).code, 14);

        assert_eq!(value(bson!({"$divide": [6, 3]})), bson!(2.0));
        assert_eq!(value(bson!({"$divide": [null, 3]})), Bson::Null);
        let e = error(bson!({"$divide": [1, 0]}));
        assert_eq!((e.code, e.errmsg.as_str()), (2, "can't $divide by zero"));
        assert_eq!(error(bson!({"$divide": ["a", 1]})).code, 14);

        assert_eq!(value(bson!({"$mod": [7, 3]})), bson!(1));
        assert_eq!(value(bson!({"$mod": [-7, 3]})), bson!(-1));
        assert_eq!(value(bson!({"$mod": [7_i64, 3]})), Bson::Int64(1));
        assert_eq!(value(bson!({"$mod": [7.5, 2]})), bson!(1.5));
        let e = error(bson!({"$mod": [1, 0]}));
        assert_eq!((e.code, e.errmsg.as_str()), (16610, "can't $mod by zero"));
        assert_eq!(value(bson!({"$mod": [7, 2.0]})), bson!(1));
        assert_eq!(value(bson!({"$mod": [7, 2.5]})), bson!(2.0));
        let e = error(bson!({"$mod": [1, "a"]}));
        assert_eq!(
            (e.code, e.errmsg.as_str()),
            (
                16611,
                "$mod only supports numeric types, not int and string"
            )
        );
    }

    #[test]
    fn abs_floor_ceil_round_trunc() {
        assert_eq!(value(bson!({"$abs": -3})), bson!(3));
        assert_eq!(value(bson!({"$abs": i32::MIN})), Bson::Int64(2_147_483_648));
        assert_eq!(value(bson!({"$abs": null})), Bson::Null);
        assert_eq!(error(bson!({"$abs": i64::MIN})).code, 28680);
        assert_eq!(error(bson!({"$abs": "x"})).code, 28765);
        assert_eq!(value(bson!({"$floor": -1.5})), bson!(-2.0));
        assert_eq!(value(bson!({"$ceil": 1.2})), bson!(2.0));
        assert_eq!(value(bson!({"$floor": 3})), bson!(3));
        assert_eq!(value(bson!({"$round": 2.5})), bson!(2.0));
        assert_eq!(value(bson!({"$round": 3.5})), bson!(4.0));
        assert_eq!(value(bson!({"$round": [1.45, 1]})), bson!(1.4));
        assert_eq!(value(bson!({"$round": [1.55, 1]})), bson!(1.6));
        assert_eq!(value(bson!({"$round": [1234, -2]})), bson!(1200));
        assert_eq!(value(bson!({"$round": [1250, -2]})), bson!(1200));
        assert_eq!(value(bson!({"$round": [9.99, 1]})), bson!(10.0));
        assert_eq!(value(bson!({"$trunc": [-1.99, 1]})), bson!(-1.9));
        assert_eq!(value(bson!({"$trunc": 7.9})), bson!(7.0));
        assert_eq!(value(bson!({"$round": [null, 1]})), Bson::Null);
        assert_eq!(error(bson!({"$round": [1.5, 101]})).code, 51083);
        assert_eq!(error(bson!({"$round": [1.5, 1.5]})).code, 51082);
        assert_eq!(error(bson!({"$trunc": ["a"]})).code, 51081);
        assert_eq!(value(bson!({"$round": [1.5, "$missing"]})), Bson::Null);
        assert_eq!(value(bson!({"$round": [2_i64, -1]})), Bson::Int64(0));
        assert_eq!(value(bson!({"$round": [15, -1]})), bson!(20));
        assert_eq!(value(bson!({"$round": [0.125, 2]})), bson!(0.12));
        assert_eq!(value(bson!({"$round": [-2.5]})), bson!(-2.0));
    }

    #[test]
    fn math_functions() {
        assert_eq!(value(bson!({"$sqrt": 16})), bson!(4.0));
        assert_eq!(error(bson!({"$sqrt": -1})).code, 28714);
        assert_eq!(value(bson!({"$exp": 0})), bson!(1.0));
        assert_eq!(value(bson!({"$ln": 1})), bson!(0.0));
        assert_eq!(error(bson!({"$ln": 0})).code, 28766);
        assert_eq!(value(bson!({"$log10": 1000})), bson!(3.0));
        assert_eq!(error(bson!({"$log10": -1})).code, 28761);
        assert_eq!(value(bson!({"$log": [8, 2]})), bson!(3.0));
        assert_eq!(value(bson!({"$log": [8, null]})), Bson::Null);
        assert_eq!(error(bson!({"$log": [8, 1]})).code, 28759);
        assert_eq!(error(bson!({"$log": ["a", 2]})).code, 28756);
        assert_eq!(error(bson!({"$sqrt": "a"})).code, 28765);
        assert_eq!(value(bson!({"$sqrt": "$nope"})), Bson::Null);
    }
}
