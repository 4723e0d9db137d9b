//! Command field validation shared by every handler: mongod rejects a field it does not know
//! (`BSON field 'insert.foo' is an unknown field.`, code 40415) and a field of the wrong type
//! (code 14 TypeMismatch), and ignores the generic arguments every command may carry.

use crate::bsontype::type_name;
use crate::error::{self, CommandError, Result};
use bson::{Bson, Document};

/// Arguments any command may carry (mongod's `generic_argument.idl`), which handlers ignore.
pub const GENERIC_FIELDS: &[&str] = &[
    "$db",
    "lsid",
    "txnNumber",
    "autocommit",
    "startTransaction",
    "$clusterTime",
    "$readPreference",
    "readConcern",
    "writeConcern",
    "apiVersion",
    "apiStrict",
    "apiDeprecationErrors",
    "comment",
    "maxTimeMS",
    "$audit",
    "$client",
    "mayBypassWriteBlocking",
    "$configServerState",
    "$gleStats",
    "$oplogQueryData",
    "$replData",
    "$topologyTime",
    "$configTime",
    "databaseVersion",
    "shardVersion",
    "clientOperationKey",
];

/// Rejects any field of `cmd` that is neither generic nor in `allowed`. The first key (the
/// command name itself) is skipped.
pub fn check_known_fields(cmd: &Document, command: &str, allowed: &[&str]) -> Result<()> {
    for key in cmd.keys().skip(1) {
        if !allowed.contains(&key.as_str()) && !GENERIC_FIELDS.contains(&key.as_str()) {
            return Err(CommandError::new(
                error::UNKNOWN_FIELD,
                format!("BSON field '{command}.{key}' is an unknown field."),
            ));
        }
    }
    Ok(())
}

/// The TypeMismatch mongod reports for a field of the wrong type.
pub fn wrong_type(command: &str, field: &str, value: &Bson, expected: &str) -> CommandError {
    CommandError::type_mismatch(format!(
        "BSON field '{command}.{field}' is the wrong type '{}', expected type '{expected}'",
        type_name(value)
    ))
}

/// The error for a missing required field (code 40414 in mongod's IDL parser).
pub fn missing(command: &str, field: &str) -> CommandError {
    CommandError::location(
        40414,
        format!("BSON field '{command}.{field}' is missing but a required field"),
    )
}

/// A required string field.
pub fn require_str<'a>(cmd: &'a Document, command: &str, field: &str) -> Result<&'a str> {
    match cmd.get(field) {
        Some(Bson::String(s)) => Ok(s),
        Some(other) => Err(wrong_type(command, field, other, "string")),
        None => Err(missing(command, field)),
    }
}

/// An optional document field.
pub fn opt_document<'a>(
    cmd: &'a Document,
    command: &str,
    field: &str,
) -> Result<Option<&'a Document>> {
    match cmd.get(field) {
        None => Ok(None),
        Some(Bson::Document(d)) => Ok(Some(d)),
        Some(other) => Err(wrong_type(command, field, other, "object")),
    }
}

/// An optional boolean field (numbers are accepted as mongod's IDL "safeBool" does).
pub fn opt_bool(cmd: &Document, command: &str, field: &str) -> Result<Option<bool>> {
    match cmd.get(field) {
        None => Ok(None),
        Some(v) => crate::bsontype::as_bool(v)
            .map(Some)
            .ok_or_else(|| wrong_type(command, field, v, "bool")),
    }
}

/// An optional non-negative integer field.
pub fn opt_count(cmd: &Document, command: &str, field: &str) -> Result<Option<i64>> {
    match cmd.get(field) {
        None => Ok(None),
        Some(v) => match crate::bsontype::as_i64(v) {
            Some(n) if n >= 0 => Ok(Some(n)),
            Some(n) => Err(CommandError::bad_value(format!(
                "BSON field '{field}' value must be >= 0, actual value '{n}'"
            ))),
            None => Err(wrong_type(command, field, v, "long")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn unknown_fields_are_rejected_with_mongod_message() {
        let cmd = doc! {"insert": "c", "documents": [], "$db": "x", "bogus": 1};
        let err = check_known_fields(&cmd, "insert", &["documents", "ordered"]).unwrap_err();
        assert_eq!(err.code, 40415);
        assert_eq!(err.errmsg, "BSON field 'insert.bogus' is an unknown field.");
        assert!(check_known_fields(&doc! {"insert": "c", "lsid": {}}, "insert", &[]).is_ok());
    }
}
