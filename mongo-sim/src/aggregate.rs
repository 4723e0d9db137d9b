//! Aggregation pipelines over in-memory documents: `$match $sort $limit $skip $project
//! $addFields/$set $unset $group $count $replaceRoot`, the `find` projection and sort, and the
//! restricted stage set used by update pipelines and change streams.

use crate::error::{CommandError, Result};
use crate::expr::Variables;
use bson::{Bson, Document};
use std::cmp::Ordering;

/// A parsed pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    stages: Vec<Document>,
}

impl Pipeline {
    /// Parses and validates every stage (unknown stage: 40324 "Unrecognized pipeline stage name").
    pub fn parse(stages: &[Bson]) -> Result<Pipeline> {
        let stages = stages
            .iter()
            .map(|s| match s {
                Bson::Document(d) => Ok(d.clone()),
                _ => Err(CommandError::type_mismatch(
                    "Each element of the 'pipeline' array must be an object",
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Pipeline { stages })
    }

    /// Names of the stages, in order (`"$match"`, ...).
    pub fn stage_names(&self) -> Vec<String> {
        self.stages
            .iter()
            .filter_map(|s| s.keys().next().cloned())
            .collect()
    }

    pub fn run(&self, input: Vec<Document>, vars: &Variables) -> Result<Vec<Document>> {
        let _ = vars;
        if self.stages.is_empty() {
            return Ok(input);
        }
        Err(CommandError::not_supported(
            "aggregation stages are not implemented yet",
        ))
    }
}

/// The stages allowed in an update pipeline (`$addFields $set $project $unset $replaceRoot
/// $replaceWith`), applied to one document.
#[derive(Debug, Clone)]
pub struct UpdatePipeline {
    stages: Vec<Document>,
}

impl UpdatePipeline {
    pub fn parse(stages: &[Bson]) -> Result<UpdatePipeline> {
        Ok(UpdatePipeline {
            stages: Pipeline::parse(stages)?.stages,
        })
    }

    pub fn apply(&self, doc: &Document, vars: &Variables) -> Result<Document> {
        let _ = (doc, vars, &self.stages);
        Err(CommandError::not_supported(
            "update pipelines are not implemented yet",
        ))
    }
}

/// A `find` projection (inclusion, exclusion, `_id` rules, `$slice`/`$elemMatch` where
/// supported).
#[derive(Debug, Clone)]
pub struct Projection {
    spec: Document,
}

impl Projection {
    pub fn parse(spec: &Document) -> Result<Projection> {
        Ok(Projection { spec: spec.clone() })
    }

    pub fn apply(&self, doc: &Document, vars: &Variables) -> Result<Document> {
        let _ = vars;
        if self.spec.is_empty() {
            return Ok(doc.clone());
        }
        Err(CommandError::not_supported(
            "projections are not implemented yet",
        ))
    }
}

/// A sort specification (`{a: 1, b: -1}`), comparing as mongod does (arrays by their
/// smallest element ascending, largest descending).
#[derive(Debug, Clone)]
pub struct SortSpec {
    keys: Vec<(String, bool)>,
}

impl SortSpec {
    pub fn parse(spec: &Document) -> Result<SortSpec> {
        let mut keys = Vec::new();
        for (k, v) in spec {
            let asc = match v {
                Bson::Int32(1) | Bson::Int64(1) => true,
                Bson::Double(d) if *d == 1.0 => true,
                Bson::Int32(-1) | Bson::Int64(-1) => false,
                Bson::Double(d) if *d == -1.0 => false,
                _ => {
                    return Err(CommandError::bad_value(
                        "$sort key ordering must be 1 (for ascending) or -1 (for descending)",
                    ));
                }
            };
            keys.push((k.clone(), asc));
        }
        Ok(SortSpec { keys })
    }

    pub fn compare(&self, a: &Document, b: &Document) -> Ordering {
        for (path, asc) in &self.keys {
            let x = crate::path::get_path(a, path)
                .cloned()
                .unwrap_or(Bson::Null);
            let y = crate::path::get_path(b, path)
                .cloned()
                .unwrap_or(Bson::Null);
            let c = crate::compare::compare(&x, &y);
            let c = if *asc { c } else { c.reverse() };
            if c != Ordering::Equal {
                return c;
            }
        }
        Ordering::Equal
    }
}
