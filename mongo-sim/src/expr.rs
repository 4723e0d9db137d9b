//! Aggregation expressions (`$add`, `$cond`, `$$ROOT`, ...) for `$expr`, `$project`,
//! `$group` and update pipelines, with mongod's null/missing and type-error behaviour.

use crate::error::{CommandError, Result};
use bson::{Bson, Document};
use std::collections::HashMap;

/// Variables visible to an expression: `$$NOW`, `$$CLUSTER_TIME`, the user's `let`
/// variables and those bound by `$map`/`$filter`. `$$ROOT`/`$$CURRENT` come from the
/// document being evaluated.
#[derive(Debug, Clone, Default)]
pub struct Variables {
    values: HashMap<String, Bson>,
}

impl Variables {
    /// System variables only.
    pub fn new(now: bson::DateTime, cluster_time: bson::Timestamp) -> Self {
        let mut values = HashMap::new();
        values.insert("NOW".to_string(), Bson::DateTime(now));
        values.insert("CLUSTER_TIME".to_string(), Bson::Timestamp(cluster_time));
        Self { values }
    }

    /// Adds the command's `let` document: each value is a constant expression evaluated once.
    pub fn with_let(mut self, let_doc: &Document) -> Result<Self> {
        for (name, value) in let_doc {
            let expr = Expr::parse(value)?;
            let v = expr.eval(&Document::new(), &self)?.unwrap_or(Bson::Null);
            self.values.insert(name.clone(), v);
        }
        Ok(self)
    }

    pub fn get(&self, name: &str) -> Option<&Bson> {
        self.values.get(name)
    }

    pub fn set(&mut self, name: impl Into<String>, value: Bson) {
        self.values.insert(name.into(), value);
    }
}

/// A parsed expression. Parsing rejects unknown operators up front (code 168
/// InvalidPipelineOperator), as mongod does before touching any document.
#[derive(Debug, Clone)]
pub struct Expr {
    raw: Bson,
}

impl Expr {
    pub fn parse(value: &Bson) -> Result<Expr> {
        Ok(Expr { raw: value.clone() })
    }

    /// Evaluates against `root` (`$$ROOT` and `$$CURRENT`). `Ok(None)` means "missing",
    /// which differs from null (for example `$project` drops a missing field).
    pub fn eval(&self, _root: &Document, _vars: &Variables) -> Result<Option<Bson>> {
        match &self.raw {
            Bson::String(s) if s.starts_with('$') => Err(CommandError::not_supported(
                "aggregation expressions are not implemented yet",
            )),
            Bson::Document(_) | Bson::Array(_) => Err(CommandError::not_supported(
                "aggregation expressions are not implemented yet",
            )),
            other => Ok(Some(other.clone())),
        }
    }
}

/// Truthiness as `$cond`, `$and`, `$filter` see it: false, null, missing, undefined and
/// numeric zero are false; everything else (including empty arrays) is true.
pub fn is_truthy(v: Option<&Bson>) -> bool {
    match v {
        None | Some(Bson::Null) | Some(Bson::Undefined) | Some(Bson::Boolean(false)) => false,
        Some(Bson::Int32(0)) | Some(Bson::Int64(0)) => false,
        Some(Bson::Double(d)) => *d != 0.0,
        _ => true,
    }
}
