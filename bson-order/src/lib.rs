//! BSON comparison and sort order, as mongod defines it: the order of sorts, of `$lt`/`$gt`,
//! of indexes, and of the drift audit's merge join of two `_id`-sorted streams (which must
//! agree with the server's order exactly, or the join would miss documents).
//!
//! MongoDB compares values of different types by a canonical type order
//! (manual: "Comparison/Sort Order"): MinKey < Null < Numbers < Symbol/String < Object <
//! Array < BinData < ObjectId < Boolean < Date < Timestamp < Regular Expression < MaxKey.
//! Numbers of any width compare by value (`1 == 1.0 == NumberLong(1)`), and NaN sorts below
//! every other number. Everything that orders or compares documents uses [`compare`].

use bson::{Bson, Document};
use std::cmp::Ordering;

/// mongod's canonical type rank (`canonicalizeBSONType`).
pub fn type_rank(v: &Bson) -> i32 {
    match v {
        Bson::MinKey => -1,
        Bson::Undefined => 0,
        Bson::Null => 5,
        Bson::Double(_) | Bson::Int32(_) | Bson::Int64(_) | Bson::Decimal128(_) => 10,
        Bson::String(_) | Bson::Symbol(_) => 15,
        Bson::Document(_) => 20,
        Bson::Array(_) => 25,
        Bson::Binary(_) => 30,
        Bson::ObjectId(_) => 35,
        Bson::Boolean(_) => 40,
        Bson::DateTime(_) => 45,
        Bson::Timestamp(_) => 47,
        Bson::RegularExpression(_) => 50,
        Bson::DbPointer(_) => 55,
        Bson::JavaScriptCode(_) => 60,
        Bson::JavaScriptCodeWithScope(_) => 65,
        Bson::MaxKey => 127,
    }
}

/// A number as f64, for cross-width comparison. `None` for non-numbers.
pub fn as_f64(v: &Bson) -> Option<f64> {
    match v {
        Bson::Double(d) => Some(*d),
        Bson::Int32(i) => Some(*i as f64),
        Bson::Int64(i) => Some(*i as f64),
        Bson::Decimal128(d) => d.to_string().parse::<f64>().ok(),
        _ => None,
    }
}

/// True for int, long, double and decimal.
pub fn is_number(v: &Bson) -> bool {
    matches!(
        v,
        Bson::Double(_) | Bson::Int32(_) | Bson::Int64(_) | Bson::Decimal128(_)
    )
}

fn compare_numbers(a: &Bson, b: &Bson) -> Ordering {
    // Exact integer comparison where both sides are integers, so that large int64 values
    // are not rounded through f64.
    let int = |v: &Bson| match v {
        Bson::Int32(i) => Some(*i as i64),
        Bson::Int64(i) => Some(*i),
        _ => None,
    };
    if let (Some(x), Some(y)) = (int(a), int(b)) {
        return x.cmp(&y);
    }
    let x = as_f64(a).unwrap_or(f64::NAN);
    let y = as_f64(b).unwrap_or(f64::NAN);
    match (x.is_nan(), y.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
    }
}

/// Total order over BSON values, as used by sorts, `$lt`/`$gt`, `$min`/`$max` and indexes.
pub fn compare(a: &Bson, b: &Bson) -> Ordering {
    let (ra, rb) = (type_rank(a), type_rank(b));
    if ra != rb {
        return ra.cmp(&rb);
    }
    match (a, b) {
        _ if ra == 10 => compare_numbers(a, b),
        (Bson::String(x) | Bson::Symbol(x), Bson::String(y) | Bson::Symbol(y)) => {
            x.as_bytes().cmp(y.as_bytes())
        }
        (Bson::Document(x), Bson::Document(y)) => compare_documents(x, y),
        (Bson::Array(x), Bson::Array(y)) => {
            for (p, q) in x.iter().zip(y.iter()) {
                let c = compare(p, q);
                if c != Ordering::Equal {
                    return c;
                }
            }
            x.len().cmp(&y.len())
        }
        (Bson::Binary(x), Bson::Binary(y)) => x
            .bytes
            .len()
            .cmp(&y.bytes.len())
            .then_with(|| u8::from(x.subtype).cmp(&u8::from(y.subtype)))
            .then_with(|| x.bytes.cmp(&y.bytes)),
        (Bson::ObjectId(x), Bson::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (Bson::Boolean(x), Bson::Boolean(y)) => x.cmp(y),
        (Bson::DateTime(x), Bson::DateTime(y)) => x.timestamp_millis().cmp(&y.timestamp_millis()),
        (Bson::Timestamp(x), Bson::Timestamp(y)) => {
            (x.time, x.increment).cmp(&(y.time, y.increment))
        }
        (Bson::RegularExpression(x), Bson::RegularExpression(y)) => x
            .pattern
            .cmp(&y.pattern)
            .then_with(|| x.options.cmp(&y.options)),
        (Bson::JavaScriptCode(x), Bson::JavaScriptCode(y)) => x.cmp(y),
        (Bson::JavaScriptCodeWithScope(x), Bson::JavaScriptCodeWithScope(y)) => x
            .code
            .cmp(&y.code)
            .then_with(|| compare_documents(&x.scope, &y.scope)),
        (Bson::DbPointer(_), Bson::DbPointer(_)) => {
            // DBPointer's fields are private in the bson crate; compare the encoded form.
            format!("{a:?}").cmp(&format!("{b:?}"))
        }
        _ => Ordering::Equal, // MinKey, MaxKey, Null, Undefined: one value each.
    }
}

/// Document order: element by element, by type rank, then field name, then value.
pub fn compare_documents(x: &Document, y: &Document) -> Ordering {
    let mut xi = x.iter();
    let mut yi = y.iter();
    loop {
        match (xi.next(), yi.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some((ka, va)), Some((kb, vb))) => {
                let c = type_rank(va)
                    .cmp(&type_rank(vb))
                    .then_with(|| ka.as_bytes().cmp(kb.as_bytes()))
                    .then_with(|| compare(va, vb));
                if c != Ordering::Equal {
                    return c;
                }
            }
        }
    }
}

/// Equality as `$eq` sees it for two whole values (numbers by value, documents field order
/// sensitive, no array expansion).
pub fn values_equal(a: &Bson, b: &Bson) -> bool {
    compare(a, b) == Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{Bson, doc, oid::ObjectId};

    #[test]
    fn numbers_compare_by_value_across_widths() {
        assert!(values_equal(&Bson::Int32(1), &Bson::Double(1.0)));
        assert!(values_equal(&Bson::Int64(1), &Bson::Int32(1)));
        assert_eq!(
            compare(&Bson::Int64(i64::MAX), &Bson::Int64(i64::MAX - 1)),
            Ordering::Greater
        );
        assert_eq!(
            compare(&Bson::Double(f64::NAN), &Bson::Int32(-5)),
            Ordering::Less
        );
    }

    /// The manual's "Comparison/Sort Order", lowest to highest: MinKey, Null, Numbers,
    /// Symbol and String, Object, Array, BinData, ObjectId, Boolean, Date, Timestamp, Regular
    /// Expression, MaxKey; within a type, the rules the same page gives.
    #[test]
    fn the_manuals_sort_order() {
        use bson::{Binary, Regex, Timestamp, spec::BinarySubtype};
        let bin = |subtype: BinarySubtype, bytes: &[u8]| {
            Bson::Binary(Binary {
                subtype,
                bytes: bytes.to_vec(),
            })
        };
        let oid = |hex: &str| Bson::ObjectId(ObjectId::parse_str(hex).unwrap());
        let ordered = vec![
            Bson::MinKey,
            Bson::Null,
            // Numbers by value, whatever their width.
            Bson::Double(f64::NEG_INFINITY),
            Bson::Int64(-3),
            Bson::Double(-2.5),
            Bson::Int32(0),
            Bson::Double(0.5),
            Bson::Int32(1),
            Bson::Int64(2),
            Bson::Double(1e300),
            // Strings by their bytes (the simple binary collation): upper case first.
            Bson::String("".into()),
            Bson::String("B".into()),
            Bson::String("a".into()),
            Bson::String("ab".into()),
            // Objects field by field: type, then name, then value.
            Bson::Document(doc! {}),
            Bson::Document(doc! {"a": 1}),
            Bson::Document(doc! {"a": 1, "b": 1}),
            Bson::Document(doc! {"b": 0}),
            // The value's type decides before the field's name.
            Bson::Document(doc! {"a": "x"}),
            Bson::Array(vec![]),
            Bson::Array(vec![Bson::Int32(1)]),
            Bson::Array(vec![Bson::Int32(1), Bson::Int32(0)]),
            // BinData: length first, then subtype, then the bytes.
            bin(BinarySubtype::Generic, &[9]),
            bin(BinarySubtype::Uuid, &[0]),
            bin(BinarySubtype::Generic, &[0, 0]),
            oid("000000000000000000000000"),
            oid("5b2be413c06d924ab26ff9ca"),
            Bson::Boolean(false),
            Bson::Boolean(true),
            Bson::DateTime(bson::DateTime::from_millis(-1)),
            Bson::DateTime(bson::DateTime::from_millis(0)),
            Bson::Timestamp(Timestamp {
                time: 1,
                increment: 9,
            }),
            Bson::Timestamp(Timestamp {
                time: 2,
                increment: 0,
            }),
            Bson::RegularExpression(Regex {
                pattern: "a".into(),
                options: "".into(),
            }),
            Bson::RegularExpression(Regex {
                pattern: "a".into(),
                options: "i".into(),
            }),
            Bson::MaxKey,
        ];
        for (i, a) in ordered.iter().enumerate() {
            for (j, b) in ordered.iter().enumerate() {
                assert_eq!(compare(a, b), i.cmp(&j), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn canonical_type_order() {
        let ordered = vec![
            Bson::MinKey,
            Bson::Null,
            Bson::Int32(5),
            Bson::String("a".into()),
            Bson::Document(doc! {}),
            Bson::Array(vec![]),
            Bson::ObjectId(ObjectId::new()),
            Bson::Boolean(false),
            Bson::DateTime(bson::DateTime::from_millis(0)),
            Bson::MaxKey,
        ];
        for w in ordered.windows(2) {
            assert_eq!(
                compare(&w[0], &w[1]),
                Ordering::Less,
                "{:?} < {:?}",
                w[0],
                w[1]
            );
        }
    }

    #[test]
    fn documents_compare_field_by_field() {
        assert_eq!(
            compare_documents(&doc! {"a": 1}, &doc! {"a": 2}),
            Ordering::Less
        );
        assert_eq!(
            compare_documents(&doc! {"a": 1}, &doc! {"a": 1, "b": 0}),
            Ordering::Less
        );
        assert_eq!(
            compare_documents(&doc! {"b": 1}, &doc! {"a": 1}),
            Ordering::Greater
        );
    }
}
