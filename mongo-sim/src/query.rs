//! Query filters (`find`, `update`, `delete`, `$match`): comparison, logical, element,
//! array and `$expr` operators over dotted paths with array element matching.

use crate::error::{CommandError, Result};
use crate::expr::Variables;
use bson::Document;

/// A parsed filter. Parsing rejects unknown operators (code 2 BadValue "unknown operator").
#[derive(Debug, Clone)]
pub struct Matcher {
    filter: Document,
}

impl Matcher {
    pub fn parse(filter: &Document) -> Result<Matcher> {
        Ok(Matcher {
            filter: filter.clone(),
        })
    }

    /// True when `doc` satisfies the filter. Errors come only from `$expr` evaluation.
    pub fn matches(&self, doc: &Document, _vars: &Variables) -> Result<bool> {
        if self.filter.is_empty() {
            return Ok(true);
        }
        let _ = doc;
        Err(CommandError::not_supported(
            "query filters are not implemented yet",
        ))
    }

    /// The value `path` must equal for the filter to match, when the filter pins it to one
    /// scalar (`{path: v}` or `{path: {$eq: v}}`, also inside a top-level `$and`). Storage uses
    /// it to look documents up through an index; the full filter is still applied afterwards.
    /// `None` for arrays, documents, regexes, null and anything not a plain equality.
    pub fn equality_on(&self, path: &str) -> Option<&bson::Bson> {
        let _ = path;
        None
    }

    /// The filter as given.
    pub fn filter(&self) -> &Document {
        &self.filter
    }
}
