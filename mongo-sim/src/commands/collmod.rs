//! `collMod` (manual: "collMod"): changes a collection's options (validation, pre- and
//! post-images), one index's `expireAfterSeconds`, or a view's definition, and records a
//! `modify` entry that expanded change streams report with the options before the change.

use crate::catalog::View;
use crate::commands::crud::collection_name;
use crate::error::{self, CommandError, Result};
use crate::fields::{GENERIC_FIELDS, check_known_fields, wrong_type};
use crate::oplog::{Namespace, OplogOp};
use crate::state::{CommandContext, Shared};
use crate::storage::Collection;
use bson::{Binary, Bson, Document, doc};

const CMD: &str = "collMod";

/// The fields `collMod` accepts (mongod 7.0's `coll_mod.idl`); the ones it cannot change here
/// fail with 115.
const FIELDS: &[&str] = &[
    "validator",
    "validationLevel",
    "validationAction",
    "changeStreamPreAndPostImages",
    "index",
    "viewOn",
    "pipeline",
    "expireAfterSeconds",
    "timeseries",
    "recordIdsReplicated",
    "cappedSize",
    "cappedMax",
    "dryRun",
];

/// Runs `collMod`.
pub fn coll_mod(shared: &Shared, ctx: &CommandContext, cmd: &Document) -> Result<Document> {
    let coll = collection_name(cmd, CMD)?;
    check_known_fields(cmd, CMD, FIELDS)?;
    let ns = Namespace::new(ctx.db.clone(), coll);
    crate::commands::crud::validate_write_namespace(&ns)?;
    for unsupported in [
        "expireAfterSeconds",
        "timeseries",
        "recordIdsReplicated",
        "cappedSize",
        "cappedMax",
        "dryRun",
    ] {
        if cmd.contains_key(unsupported) {
            return Err(CommandError::not_supported(format!(
                "collMod option '{unsupported}' is not supported"
            )));
        }
    }
    let mut data = shared.data.lock();
    if let Some(db) = data.databases.get_mut(&ns.db)
        && let Some(view) = db.views.get_mut(&ns.coll)
    {
        return modify_view(view, cmd);
    }
    if cmd.contains_key("viewOn") || cmd.contains_key("pipeline") {
        return Err(CommandError::new(
            error::INVALID_OPTIONS,
            format!("option only supported on a view: {}", viewish_field(cmd)),
        ));
    }
    let Some(c) = data.collection_mut(&ns) else {
        return Err(CommandError::new(
            error::NAMESPACE_NOT_FOUND,
            "ns does not exist",
        ));
    };
    let mut options = c.options.clone();
    options.apply(cmd, CMD)?;
    let mut reply = Document::new();
    let mut state_before = doc! {"collectionOptions": collection_options(c)};
    if let Some(index) = cmd.get("index") {
        let (old_index, changes) = modify_index(c, index)?;
        state_before.insert("indexOptions", old_index);
        reply.extend(changes);
    }
    c.options = options;
    let ui = c.ui();
    let description: Document = cmd
        .iter()
        .skip(1)
        .filter(|(k, _)| !GENERIC_FIELDS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    data.oplog.record(
        OplogOp::Modify {
            ns,
            description,
            state_before,
        },
        Some(ui),
    );
    Ok(reply)
}

/// The options as the `modify` event's `stateBeforeChange.collectionOptions` reports them:
/// the UUID, then the options.
fn collection_options(c: &Collection) -> Document {
    let mut d = doc! {"uuid": Binary::from_uuid(c.uuid)};
    d.extend(c.options.to_document());
    d
}

fn viewish_field(cmd: &Document) -> &'static str {
    if cmd.contains_key("viewOn") {
        "viewOn"
    } else {
        "pipeline"
    }
}

/// `collMod` on a view: only `viewOn` and `pipeline` may change, together.
fn modify_view(view: &mut View, cmd: &Document) -> Result<Document> {
    for key in cmd.keys().skip(1) {
        if !GENERIC_FIELDS.contains(&key.as_str()) && key != "viewOn" && key != "pipeline" {
            return Err(CommandError::new(
                error::INVALID_OPTIONS,
                format!("option not supported on a view: {key}"),
            ));
        }
    }
    if cmd.contains_key("viewOn") != cmd.contains_key("pipeline") {
        return Err(CommandError::new(
            error::INVALID_OPTIONS,
            "Must specify both 'viewOn' and 'pipeline' when modifying a view and auth is enabled",
        ));
    }
    if cmd.contains_key("viewOn") {
        *view = View::parse(cmd, CMD)?;
    }
    Ok(Document::new())
}

/// `index: {keyPattern | name, expireAfterSeconds}`: returns the index's options before and
/// the reply fields (`expireAfterSeconds_old`, `expireAfterSeconds_new`).
fn modify_index(c: &mut Collection, index: &Bson) -> Result<(Document, Document)> {
    let Bson::Document(spec) = index else {
        return Err(wrong_type(CMD, "index", index, "object"));
    };
    let position = match (spec.get("name"), spec.get("keyPattern")) {
        (Some(Bson::String(name)), None) => c.indexes.iter().position(|i| &i.spec.name == name),
        (None, Some(Bson::Document(key))) => c
            .indexes
            .iter()
            .position(|i| crate::storage::same_key_pattern(&i.spec.key, key)),
        _ => {
            return Err(CommandError::new(
                error::INVALID_OPTIONS,
                "must specify either index name or key pattern",
            ));
        }
    };
    let Some(position) = position else {
        return Err(CommandError::new(
            error::INDEX_NOT_FOUND,
            format!("cannot find index {index} for ns"),
        ));
    };
    let mut reply = Document::new();
    let index = &mut c.indexes[position];
    let before = index.spec.to_document();
    for (k, v) in spec {
        match k.as_str() {
            "name" | "keyPattern" => {}
            "expireAfterSeconds" => {
                let old = index.spec.expire_after_seconds.clone();
                if old.is_none() {
                    return Err(CommandError::new(
                        error::INVALID_OPTIONS,
                        "no expireAfterSeconds field to update",
                    ));
                }
                reply.insert("expireAfterSeconds_old", old.unwrap_or(Bson::Null));
                reply.insert("expireAfterSeconds_new", v.clone());
                index.spec.expire_after_seconds = Some(v.clone());
            }
            other => {
                return Err(CommandError::not_supported(format!(
                    "collMod index option '{other}' is not supported"
                )));
            }
        }
    }
    Ok((before, reply))
}
