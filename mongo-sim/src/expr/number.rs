//! Numbers as the operators see them: int, long and double (Decimal128 is refused), mongod's
//! promotion from int to long to double, and the integral arguments many operators take.

use crate::bsontype::type_name;
use crate::error::Result;
use crate::expr::common::{decimal_unsupported, loc, show};
use bson::Bson;

#[derive(Debug, Clone, Copy)]
pub(crate) enum Num {
    Int(i32),
    Long(i64),
    Double(f64),
}

impl Num {
    pub(crate) fn of(v: &Bson) -> Result<Option<Num>> {
        Ok(match v {
            Bson::Int32(i) => Some(Num::Int(*i)),
            Bson::Int64(i) => Some(Num::Long(*i)),
            Bson::Double(d) => Some(Num::Double(*d)),
            Bson::Decimal128(_) => return Err(decimal_unsupported()),
            _ => None,
        })
    }

    pub(crate) fn f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Long(i) => i as f64,
            Num::Double(d) => d,
        }
    }

    pub(crate) fn int(self) -> Option<i64> {
        match self {
            Num::Int(i) => Some(i as i64),
            Num::Long(i) => Some(i),
            Num::Double(_) => None,
        }
    }

    pub(crate) fn is_long(self) -> bool {
        matches!(self, Num::Long(_))
    }
}

/// mongod's `Value::integral()`: a number representable as a 32-bit integer.
pub(crate) fn as_int32(v: &Bson) -> Result<Option<i64>> {
    Ok(match Num::of(v)? {
        Some(Num::Int(i)) => Some(i as i64),
        Some(Num::Long(i)) => i32::try_from(i).ok().map(i64::from),
        Some(Num::Double(d))
            if d.fract() == 0.0 && d >= i32::MIN as f64 && d <= i32::MAX as f64 =>
        {
            Some(d as i64)
        }
        _ => None,
    })
}

/// A number with an integral value that fits a long (a double such as `2.0` included); the
/// date operators take their counts and parts this way.
pub(crate) fn as_int64(v: &Bson) -> Result<Option<i64>> {
    Ok(match Num::of(v)? {
        Some(Num::Int(i)) => Some(i as i64),
        Some(Num::Long(i)) => Some(i),
        Some(Num::Double(d))
            if d.fract() == 0.0 && d >= i64::MIN as f64 && d < 9.223372036854776e18 =>
        {
            Some(d as i64)
        }
        _ => None,
    })
}

/// An integer result: int when every input was int and it fits, long otherwise.
pub(crate) fn narrow(v: i64, any_long: bool) -> Bson {
    match i32::try_from(v) {
        Ok(i) if !any_long => Bson::Int32(i),
        _ => Bson::Int64(v),
    }
}

/// Running sum with mongod's promotion: int overflows into long, long into double.
#[derive(Default)]
pub(crate) struct Sum {
    pub(crate) long_total: i64,
    double_total: f64,
    any_long: bool,
    any_double: bool,
    overflowed: bool,
}

impl Sum {
    pub(crate) fn add(&mut self, n: Num) {
        match n.int() {
            Some(i) if !self.overflowed => {
                self.any_long |= n.is_long();
                match self.long_total.checked_add(i) {
                    Some(t) => self.long_total = t,
                    None => {
                        self.overflowed = true;
                        self.double_total += self.long_total as f64 + i as f64;
                        self.long_total = 0;
                    }
                }
            }
            Some(i) => self.double_total += i as f64,
            None => {
                self.any_double = true;
                self.double_total += n.f64();
            }
        }
    }

    pub(crate) fn is_double(&self) -> bool {
        self.any_double || self.overflowed
    }

    pub(crate) fn total_f64(&self) -> f64 {
        self.long_total as f64 + self.double_total
    }

    pub(crate) fn result(&self) -> Bson {
        if self.is_double() {
            Bson::Double(self.total_f64())
        } else {
            narrow(self.long_total, self.any_long)
        }
    }
}

/// uassertIfNotIntegralAndNonNegative, shared by the `$indexOf*` operators.
pub(crate) fn index_arg(op: &str, v: &Bson, what: &str) -> Result<usize> {
    let Some(i) = as_int32(v)? else {
        // mongod's message lacks the space after the operator name.
        return Err(loc(
            40096,
            format!(
                "{op}requires an integral {what}, found a value of type: {}, with value: {}",
                type_name(v),
                show(v)
            ),
        ));
    };
    if i < 0 {
        return Err(loc(
            40097,
            format!("{op} requires a nonnegative {what}, found: {}", show(v)),
        ));
    }
    Ok(i as usize)
}
