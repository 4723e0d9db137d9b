//! mongod's hash of one BSON value, as hashed indexes, hashed sharding and the
//! `$toHashedIndexKey` expression compute it (`BSONElementHasher::hash64` in
//! src/mongo/db/hasher.cpp).
//!
//! MD5 over the seed (a 4-byte little-endian int, 0 by default) and then, recursively, each
//! element: its canonical type (a 4-byte little-endian int: numbers share 10, strings and
//! symbols 15, ...), its field name with the terminating NUL (inside objects and arrays only),
//! and its value. Numbers of every type are first squashed to a 64-bit integer
//! (`safeNumberLongForHash`: doubles truncated, NaN to 0, out of range clamped, 2^63 to
//! -2^63), so values that compare equal hash the same. Objects, arrays and code with scope
//! hash their elements and end with the end-of-object element (canonical type 0, nothing
//! else). Other values hash their BSON value bytes. The result is the digest's first 8 bytes
//! read as a little-endian int64.

// CommandError is the crate-wide error type; its size is decided in `error`, not here.
#![allow(clippy::result_large_err)]

use crate::error::{COMMAND_NOT_SUPPORTED, CommandError, Result};
use bson::{Bson, doc};
use md5::{Digest, Md5};

/// mongod's `BSONElementHasher::DEFAULT_HASH_SEED`.
pub const DEFAULT_SEED: i32 = 0;

/// The hash of `value` with the default seed, exactly as mongod computes it.
pub fn hash64(value: &Bson) -> Result<i64> {
    let mut md5 = Md5::new();
    md5.update(DEFAULT_SEED.to_le_bytes());
    element(&mut md5, value, None)?;
    let digest = md5.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    Ok(i64::from_le_bytes(first))
}

/// `BSONElement::safeNumberLongForHash`.
fn number_for_hash(v: &Bson) -> Result<i64> {
    const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;
    Ok(match v {
        Bson::Int32(i) => i64::from(*i),
        Bson::Int64(i) => *i,
        Bson::Double(d) if d.is_nan() => 0,
        // Kept from older servers, whose cast of 2^63 wrapped around.
        Bson::Double(d) if *d == TWO_POW_63 => i64::MIN,
        Bson::Double(d) if *d >= TWO_POW_63 => i64::MAX,
        Bson::Double(d) if *d < -TWO_POW_63 => i64::MIN,
        Bson::Double(d) => *d as i64,
        _ => {
            return Err(CommandError::new(
                COMMAND_NOT_SUPPORTED,
                "Decimal128 values cannot be hashed by this server",
            ));
        }
    })
}

/// The bytes of a scalar's BSON value (what follows the type byte and field name).
fn value_bytes(v: &Bson) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    doc! {"": v.clone()}.to_writer(&mut bytes).map_err(|e| {
        CommandError::new(COMMAND_NOT_SUPPORTED, format!("cannot encode value: {e}"))
    })?;
    // int32 document length, type byte, empty name's NUL, value, document's final NUL.
    Ok(bytes[6..bytes.len() - 1].to_vec())
}

fn element(md5: &mut Md5, v: &Bson, name: Option<&str>) -> Result<()> {
    md5.update(crate::compare::type_rank(v).to_le_bytes());
    if let Some(name) = name {
        md5.update(name.as_bytes());
        md5.update([0]);
    }
    match v {
        Bson::Document(d) => {
            for (k, x) in d {
                element(md5, x, Some(k))?;
            }
            end_of_object(md5);
        }
        Bson::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                element(md5, x, Some(&i.to_string()))?;
            }
            end_of_object(md5);
        }
        Bson::JavaScriptCodeWithScope(c) => {
            md5.update(c.code.as_bytes());
            md5.update([0]);
            for (k, x) in &c.scope {
                element(md5, x, Some(k))?;
            }
            end_of_object(md5);
        }
        Bson::Double(_) | Bson::Int32(_) | Bson::Int64(_) | Bson::Decimal128(_) => {
            md5.update(number_for_hash(v)?.to_le_bytes());
        }
        other => md5.update(value_bytes(other)?),
    }
    Ok(())
}

/// The end-of-object element: canonical type 0, no name, no value.
fn end_of_object(md5: &mut Md5) {
    md5.update(0i32.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::oid::ObjectId;

    #[test]
    fn the_manual_example_and_mongods_own_startup_check() {
        // Manual, "$toHashedIndexKey": "string to hash" -> Long("763543691661428748").
        assert_eq!(
            hash64(&Bson::String("string to hash".into())).unwrap(),
            763_543_691_661_428_748
        );
        // hasher.cpp's startup test: the element {check: 42} (an int) hashes to this.
        assert_eq!(hash64(&Bson::Int32(42)).unwrap(), -944_302_157_085_130_861);
    }

    #[test]
    fn numbers_that_compare_equal_hash_the_same() {
        let h = hash64(&Bson::Int32(42)).unwrap();
        assert_eq!(hash64(&Bson::Int64(42)).unwrap(), h);
        assert_eq!(hash64(&Bson::Double(42.0)).unwrap(), h);
        // Doubles are truncated first, as hashed indexes document.
        assert_eq!(hash64(&Bson::Double(42.9)).unwrap(), h);
        assert_ne!(hash64(&Bson::Int32(43)).unwrap(), h);
        assert_eq!(
            hash64(&Bson::Double(f64::NAN)).unwrap(),
            hash64(&Bson::Int64(0)).unwrap()
        );
        assert_eq!(
            hash64(&Bson::Double(9_223_372_036_854_775_808.0)).unwrap(),
            hash64(&Bson::Int64(i64::MIN)).unwrap()
        );
        assert_eq!(
            hash64(&Bson::Double(f64::INFINITY)).unwrap(),
            hash64(&Bson::Int64(i64::MAX)).unwrap()
        );
    }

    #[test]
    fn types_are_part_of_the_hash() {
        let s = hash64(&Bson::String("42".into())).unwrap();
        assert_ne!(s, hash64(&Bson::Int32(42)).unwrap());
        assert_eq!(s, hash64(&Bson::Symbol("42".into())).unwrap());
        let id = ObjectId::parse_str("5b2be413c06d924ab26ff9ca").unwrap();
        assert_ne!(
            hash64(&Bson::ObjectId(id)).unwrap(),
            hash64(&Bson::String(id.to_hex())).unwrap()
        );
        // Field names and order count inside objects.
        assert_ne!(
            hash64(&Bson::Document(doc! {"a": 1, "b": 2})).unwrap(),
            hash64(&Bson::Document(doc! {"b": 2, "a": 1})).unwrap()
        );
    }

    #[test]
    fn decimals_are_refused_not_guessed() {
        let d = Bson::Decimal128(bson::Decimal128::from_bytes([0; 16]));
        assert_eq!(hash64(&d).unwrap_err().code, 115);
    }
}
