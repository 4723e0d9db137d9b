//! What the catalog knows about a collection besides its documents and indexes: the options
//! given to `create` and changed by `collMod` (document validation, change-stream pre- and
//! post-images), and read-only views (`create` with `viewOn` and `pipeline`).
//!
//! Options are reported back by `listCollections` in the shape mongod stores them; document
//! validation follows the manual's "Schema Validation" (levels `strict`/`moderate`/`off`,
//! actions `error`/`warn`, `bypassDocumentValidation`), and pre-images are recorded for a
//! write only while `changeStreamPreAndPostImages` is enabled, as mongod's
//! `config.system.preimages` is written only then (manual: "Change Streams with Document
//! Pre- and Post-Images").

use crate::bsontype::type_name;
use crate::error::{CommandError, ErrorCode, Result};
use crate::expr::Variables;
use crate::fields::wrong_type;
use crate::query::Matcher;
use bson::{Bson, Document, doc};

/// mongod's DocumentValidationFailure.
pub const DOCUMENT_VALIDATION_FAILURE: ErrorCode = ErrorCode {
    code: 121,
    name: "DocumentValidationFailure",
};

/// When the validator applies (manual: "Specify Validation Level for Existing Documents").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ValidationLevel {
    Off,
    #[default]
    Strict,
    /// Updates to documents that already fail validation are not checked.
    Moderate,
}

/// What a failing document does (manual: "Choose How to Handle Invalid Documents").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ValidationAction {
    #[default]
    Error,
    /// Accepted; mongod logs a warning.
    Warn,
}

/// The options of one collection.
#[derive(Debug, Clone, Default)]
pub struct CollectionOptions {
    pub validator: Option<Document>,
    pub validation_level: ValidationLevel,
    pub validation_action: ValidationAction,
    /// `changeStreamPreAndPostImages: {enabled: true}`: writes record their pre-image.
    pub pre_and_post_images: bool,
    /// A capped collection's bounds (manual: "Capped Collections").
    pub capped: Option<Capped>,
}

/// How large a capped collection may grow: the oldest documents go once it holds more bytes
/// than `size` or more documents than `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capped {
    pub size: i64,
    pub max: Option<i64>,
}

impl Capped {
    /// `capped`, `size` and `max` of a `create` command (manual: "create"): a size is
    /// required; up to 4096 it becomes 4096, above it is rounded up to a multiple of 256.
    pub fn parse(cmd: &Document) -> Result<Option<Capped>> {
        let capped = match cmd.get("capped") {
            None => false,
            Some(v) => crate::bsontype::as_bool(v)
                .ok_or_else(|| wrong_type("create", "capped", v, "bool"))?,
        };
        if !capped {
            return Ok(None);
        }
        let number = |field: &str| -> Result<Option<i64>> {
            match cmd.get(field) {
                None => Ok(None),
                Some(v) => crate::bsontype::as_i64(v)
                    .map(Some)
                    .ok_or_else(|| wrong_type("create", field, v, "long")),
            }
        };
        let Some(size) = number("size")? else {
            return Err(CommandError::new(
                crate::error::INVALID_OPTIONS,
                "the 'size' field is required when 'capped' is true",
            ));
        };
        if size < 0 {
            return Err(CommandError::bad_value("size has to be >= 0"));
        }
        let size = if size <= 4096 {
            4096
        } else {
            (size + 255) / 256 * 256
        };
        let max = number("max")?.filter(|m| *m > 0);
        Ok(Some(Capped { size, max }))
    }
}

impl CollectionOptions {
    /// The options as `listCollections` shows them (and as `stateBeforeChange` of a `modify`
    /// event reports them): a validator comes with its level and action.
    pub fn to_document(&self) -> Document {
        let mut d = Document::new();
        if let Some(capped) = self.capped {
            d.insert("capped", true);
            d.insert("size", capped.size);
            if let Some(max) = capped.max {
                d.insert("max", max);
            }
        }
        if let Some(v) = &self.validator {
            d.insert("validator", v.clone());
            d.insert("validationLevel", level_name(self.validation_level));
            d.insert("validationAction", action_name(self.validation_action));
        }
        if self.pre_and_post_images {
            d.insert("changeStreamPreAndPostImages", doc! {"enabled": true});
        }
        d
    }

    /// Applies the options `create` or `collMod` names in `cmd` (`command` for messages);
    /// other fields are left to the caller.
    pub fn apply(&mut self, cmd: &Document, command: &str) -> Result<()> {
        if let Some(v) = cmd.get("validator") {
            let Bson::Document(v) = v else {
                return Err(wrong_type(command, "validator", v, "object"));
            };
            Matcher::parse(v)?;
            self.validator = (!v.is_empty()).then(|| v.clone());
        }
        if let Some(v) = cmd.get("validationLevel") {
            self.validation_level = match v {
                Bson::String(s) if s == "off" => ValidationLevel::Off,
                Bson::String(s) if s == "strict" => ValidationLevel::Strict,
                Bson::String(s) if s == "moderate" => ValidationLevel::Moderate,
                Bson::String(s) => return Err(bad_enum(command, "validationLevel", s)),
                other => return Err(wrong_type(command, "validationLevel", other, "string")),
            };
        }
        if let Some(v) = cmd.get("validationAction") {
            self.validation_action = match v {
                Bson::String(s) if s == "error" => ValidationAction::Error,
                Bson::String(s) if s == "warn" => ValidationAction::Warn,
                Bson::String(s) => return Err(bad_enum(command, "validationAction", s)),
                other => return Err(wrong_type(command, "validationAction", other, "string")),
            };
        }
        if let Some(v) = cmd.get("changeStreamPreAndPostImages") {
            let Bson::Document(d) = v else {
                return Err(wrong_type(
                    command,
                    "changeStreamPreAndPostImages",
                    v,
                    "object",
                ));
            };
            let path = format!("{command}.changeStreamPreAndPostImages");
            crate::fields::check_known_fields(&prefixed(d), &path, &["enabled"])?;
            self.pre_and_post_images = match d.get("enabled") {
                Some(Bson::Boolean(b)) => *b,
                Some(other) => return Err(wrong_type(&path, "enabled", other, "bool")),
                None => return Err(crate::fields::missing(&path, "enabled")),
            };
        }
        Ok(())
    }

    /// Checks a document about to be stored (`old`: the version it replaces, for updates)
    /// against the validator (manual: "Schema Validation"). A failing document is refused with
    /// 121 DocumentValidationFailure and `errInfo: {failingDocumentId, details}`.
    pub fn validate(
        &self,
        new: &Document,
        old: Option<&Document>,
        bypass: bool,
        vars: &Variables,
    ) -> Result<()> {
        let Some(validator) = &self.validator else {
            return Ok(());
        };
        if bypass
            || self.validation_level == ValidationLevel::Off
            || self.validation_action == ValidationAction::Warn
        {
            return Ok(());
        }
        let matcher = Matcher::parse(validator)?;
        if self.validation_level == ValidationLevel::Moderate
            && let Some(old) = old
            && !matcher.matches(old, vars)?
        {
            return Ok(());
        }
        if matcher.matches(new, vars)? {
            return Ok(());
        }
        let id = new.get("_id").cloned().unwrap_or(Bson::Null);
        Err(
            CommandError::new(DOCUMENT_VALIDATION_FAILURE, "Document failed validation")
                .with_extra(doc! {
                    "errInfo": {
                        "failingDocumentId": id,
                        "details": failure_details(validator, new, vars)?,
                    }
                }),
        )
    }
}

/// `details` of a validation failure, in the shape of mongod's (5.0+) explanation: the
/// top-level clauses the document does not satisfy, each with how it was specified.
fn failure_details(validator: &Document, doc: &Document, vars: &Variables) -> Result<Document> {
    let mut failing = Vec::new();
    for (index, (field, spec)) in validator.iter().enumerate() {
        let clause = doc! {field.clone(): spec.clone()};
        if !Matcher::parse(&clause)?.matches(doc, vars)? {
            let considered = crate::path::get_path(doc, field).cloned();
            let mut d = doc! {
                "operatorName": clause_operator(field, spec),
                "specifiedAs": clause,
                "reason": "expression did not match",
            };
            if let Some(v) = considered {
                d.insert("consideredType", type_name(&v));
                d.insert("consideredValue", v);
            } else if !field.starts_with('$') {
                d.insert("reason", "field was missing");
            }
            failing.push((index, d));
        }
    }
    if failing.len() == 1 {
        return Ok(failing.pop().map(|(_, d)| d).unwrap_or_default());
    }
    let clauses: Vec<Bson> = failing
        .into_iter()
        .map(|(index, details)| Bson::Document(doc! {"index": index as i32, "details": details}))
        .collect();
    Ok(doc! {"operatorName": "$and", "clausesNotSatisfied": clauses})
}

fn clause_operator(field: &str, spec: &Bson) -> String {
    if field.starts_with('$') {
        return field.to_string();
    }
    match spec {
        Bson::Document(d) => d
            .keys()
            .next()
            .filter(|k| k.starts_with('$'))
            .cloned()
            .unwrap_or_else(|| "$eq".to_string()),
        _ => "$eq".to_string(),
    }
}

/// A document whose first key is a placeholder, so `check_known_fields` (which skips the
/// command name) looks at every field of `d`.
fn prefixed(d: &Document) -> Document {
    let mut out = doc! {"": 1};
    out.extend(d.clone());
    out
}

fn level_name(level: ValidationLevel) -> &'static str {
    match level {
        ValidationLevel::Off => "off",
        ValidationLevel::Strict => "strict",
        ValidationLevel::Moderate => "moderate",
    }
}

fn action_name(action: ValidationAction) -> &'static str {
    match action {
        ValidationAction::Error => "error",
        ValidationAction::Warn => "warn",
    }
}

fn bad_enum(command: &str, field: &str, value: &str) -> CommandError {
    CommandError::bad_value(format!(
        "Enumeration value '{value}' for field '{command}.{field}' is not a valid value."
    ))
}

/// The `operationDescription` of a collection's `create` event: its `_id` index and the
/// options it was created with.
pub fn create_description(options: &CollectionOptions) -> Document {
    let mut d = doc! {"idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}};
    d.extend(options.to_document());
    d
}

/// A read-only view (manual: "Views"): documents are those `pipeline` produces from
/// `view_on`, a collection or another view of the same database.
#[derive(Debug, Clone)]
pub struct View {
    pub view_on: String,
    pub pipeline: Vec<Bson>,
}

impl View {
    /// Parses `viewOn` and `pipeline` of a `create` (or `collMod`) command.
    pub fn parse(cmd: &Document, command: &str) -> Result<View> {
        let view_on = match cmd.get("viewOn") {
            Some(Bson::String(s)) if !s.is_empty() => s.clone(),
            Some(Bson::String(_)) => {
                return Err(CommandError::bad_value("'viewOn' cannot be empty"));
            }
            Some(other) => return Err(wrong_type(command, "viewOn", other, "string")),
            None => return Err(crate::fields::missing(command, "viewOn")),
        };
        let pipeline = match cmd.get("pipeline") {
            Some(Bson::Array(p)) => p.clone(),
            Some(other) => return Err(wrong_type(command, "pipeline", other, "array")),
            None => Vec::new(),
        };
        crate::aggregate::Pipeline::parse(&pipeline)?;
        Ok(View { view_on, pipeline })
    }

    /// `{viewOn, pipeline}` as `listCollections` and the `create` event describe the view.
    pub fn to_document(&self) -> Document {
        doc! {"viewOn": self.view_on.clone(), "pipeline": self.pipeline.clone()}
    }
}

/// mongod's CommandNotSupportedOnView, for writes and other commands a view refuses.
pub fn not_supported_on_view(ns: &crate::oplog::Namespace) -> CommandError {
    CommandError::new(
        ErrorCode {
            code: 166,
            name: "CommandNotSupportedOnView",
        },
        format!("Namespace {ns} is a view, not a collection"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Variables {
        Variables::new(
            bson::DateTime::now(),
            bson::Timestamp {
                time: 1,
                increment: 1,
            },
        )
    }

    #[test]
    fn options_round_trip_through_list_collections_shape() {
        let mut o = CollectionOptions::default();
        o.apply(
            &doc! {"create": "c", "validator": {"a": {"$exists": true}},
            "changeStreamPreAndPostImages": {"enabled": true}},
            "create",
        )
        .unwrap();
        assert_eq!(
            o.to_document(),
            doc! {
                "validator": {"a": {"$exists": true}},
                "validationLevel": "strict",
                "validationAction": "error",
                "changeStreamPreAndPostImages": {"enabled": true},
            }
        );
        let err = o
            .apply(
                &doc! {"collMod": "c", "validationLevel": "sometimes"},
                "collMod",
            )
            .unwrap_err();
        assert_eq!(err.code, 2);
        let err = o
            .apply(
                &doc! {"collMod": "c", "changeStreamPreAndPostImages": {"on": true}},
                "collMod",
            )
            .unwrap_err();
        assert_eq!(err.code, 40415);
    }

    #[test]
    fn validation_levels_actions_and_bypass() {
        let mut o = CollectionOptions::default();
        o.apply(
            &doc! {"create": "c", "validator": {"a": {"$gte": 0}}},
            "create",
        )
        .unwrap();
        let bad = doc! {"_id": 7, "a": -1};
        let good = doc! {"_id": 7, "a": 1};
        let err = o.validate(&bad, None, false, &vars()).unwrap_err();
        assert_eq!(err.code, 121);
        let info = err.extra.get_document("errInfo").unwrap();
        assert_eq!(info.get_i32("failingDocumentId").unwrap(), 7);
        assert_eq!(
            info.get_document("details")
                .unwrap()
                .get_str("operatorName")
                .unwrap(),
            "$gte"
        );
        assert!(o.validate(&good, None, false, &vars()).is_ok());
        assert!(o.validate(&bad, None, true, &vars()).is_ok());
        o.validation_level = ValidationLevel::Moderate;
        // An update of a document that already failed is not checked under `moderate`.
        assert!(o.validate(&bad, Some(&bad), false, &vars()).is_ok());
        assert!(o.validate(&bad, Some(&good), false, &vars()).is_err());
        o.validation_action = ValidationAction::Warn;
        assert!(o.validate(&bad, Some(&good), false, &vars()).is_ok());
    }
}
