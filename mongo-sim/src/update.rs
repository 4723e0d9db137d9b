//! Updates: replacement documents, update operators and update pipelines, plus the upsert
//! seed document built from a filter's equality conditions.

use crate::error::{CommandError, Result};
use crate::expr::Variables;
use bson::{Bson, Document};

/// What `update`/`findAndModify` asked for, parsed and validated once.
#[derive(Debug, Clone)]
pub enum UpdateSpec {
    /// A whole new document (no `$` operators): keeps `_id`, replaces the rest.
    Replacement(Document),
    /// A document of update operators.
    Operators(Document),
    /// An update pipeline (array of stages), evaluated with the command's `let` variables.
    Pipeline(Vec<Bson>),
}

/// Where an update is applied.
pub struct UpdateContext<'a> {
    /// True when the update runs on the seed of an upsert-insert (`$setOnInsert` applies).
    pub is_upsert_insert: bool,
    pub vars: &'a Variables,
    pub array_filters: &'a [Document],
}

impl UpdateSpec {
    pub fn parse(u: &Bson) -> Result<UpdateSpec> {
        match u {
            Bson::Document(d) if d.keys().next().is_some_and(|k| k.starts_with('$')) => {
                Ok(UpdateSpec::Operators(d.clone()))
            }
            Bson::Document(d) => Ok(UpdateSpec::Replacement(d.clone())),
            Bson::Array(a) => Ok(UpdateSpec::Pipeline(a.clone())),
            _ => Err(CommandError::failed_to_parse(
                "Update argument must be either an object or an array",
            )),
        }
    }

    /// True for a replacement document (its change event is `replace`, not `update`).
    pub fn is_replacement(&self) -> bool {
        matches!(self, UpdateSpec::Replacement(_))
    }

    /// Applies the update to `doc` in place. Changing `_id` is an error (66 ImmutableField).
    pub fn apply(&self, doc: &mut Document, ctx: &UpdateContext<'_>) -> Result<()> {
        let _ = (doc, ctx);
        Err(CommandError::not_supported(
            "updates are not implemented yet",
        ))
    }
}

/// The document an upsert starts from: the filter's equality conditions (`{a: 1}`,
/// `{a: {$eq: 1}}`, inside `$and`), with dotted paths expanded.
pub fn upsert_seed(filter: &Document) -> Result<Document> {
    let _ = filter;
    Ok(Document::new())
}

/// The document an upsert inserts when nothing matched: the seed from the filter's equalities
/// (only `_id` for a replacement), the update applied with `$setOnInsert` in force, and an
/// ObjectId `_id` first when neither provided one.
pub fn build_upsert(
    filter: &Document,
    spec: &UpdateSpec,
    ctx: &UpdateContext<'_>,
) -> Result<Document> {
    let mut doc = upsert_seed(filter)?;
    spec.apply(&mut doc, ctx)?;
    Ok(doc)
}
