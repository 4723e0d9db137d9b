//! `aggregate` (manual: "aggregate"): over a collection or a view, or over the database
//! (`aggregate: 1`) from a stage that makes its own documents (`$documents`,
//! `$listLocalSessions`); a final `$out` or `$merge` writes the results to a collection
//! (manual: "$out", "$merge") instead of returning them. A first stage `$changeStream` opens a
//! change stream (`changestream`) instead.
//!
//! `$out` builds the new contents in a temporary collection (with the target's indexes and
//! options) and renames it over the target, as mongod does, so the target changes all at
//! once or not at all. `$merge` writes each result by its `on` fields as `whenMatched` and
//! `whenNotMatched` say. Both honour `bypassDocumentValidation` and the command's `let`.

use crate::aggregate::Pipeline;
use crate::bsontype::as_i64;
use crate::commands::crud::{
    Source, check_collation, check_hint, check_not_view, check_valid, collection_name,
    cursor_reply, insert_prepared, opt_usize, prepare_insert, update_record, validate_namespace,
    validate_write_namespace, variables,
};
use crate::cursor::{CursorEntry, CursorKind};
use crate::error::{self, CommandError, Result};
use crate::expr::{Expr, Variables};
use crate::fields::{check_known_fields, missing, opt_bool, wrong_type};
use crate::oplog::{Namespace, OplogOp};
use crate::query::Matcher;
use crate::state::{CommandContext, Shared};
use crate::storage::{Collection, Data};
use crate::update::{UpdateContext, UpdateSpec};
use bson::{Bson, Document, doc};

const CMD: &str = "aggregate";

/// `aggregate` whose first stage is `$changeStream`: opens the stream and registers its cursor,
/// unless its first batch already closed it; the full command reply body (`cursor: {firstBatch,
/// postBatchResumeToken, id, ns}`).
pub(crate) fn change_stream(
    shared: &Shared,
    ctx: &CommandContext,
    cmd: &Document,
    pipeline: &[Bson],
) -> Result<Document> {
    let (cursor, batch) = crate::changestream::open(&shared.data, &ctx.db, cmd, pipeline)?;
    let ns = cursor.ns();
    let token = cursor.post_batch_resume_token();
    let id = if cursor.is_closed() {
        0
    } else {
        shared.cursors.lock().register(CursorEntry {
            ns: ns.clone(),
            kind: CursorKind::ChangeStream(Box::new(cursor)),
        })
    };
    Ok(doc! {
        "cursor": {
            "firstBatch": batch,
            "postBatchResumeToken": token,
            "id": id,
            "ns": ns.to_string(),
        }
    })
}

/// `aggregate` other than a change stream.
pub fn aggregate(shared: &Shared, ctx: &CommandContext, cmd: &Document) -> Result<Document> {
    let pipeline = match cmd.get("pipeline") {
        Some(Bson::Array(a)) => a,
        Some(other) => return Err(wrong_type(CMD, "pipeline", other, "array")),
        None => return Err(missing(CMD, "pipeline")),
    };
    check_known_fields(
        cmd,
        CMD,
        &[
            "pipeline",
            "cursor",
            "let",
            "allowDiskUse",
            "explain",
            "hint",
            "collation",
            "bypassDocumentValidation",
        ],
    )?;
    if opt_bool(cmd, CMD, "explain")?.unwrap_or(false) {
        return Err(CommandError::not_supported("explain is not supported"));
    }
    let batch_size = batch_size(cmd)?;
    opt_bool(cmd, CMD, "allowDiskUse")?;
    let bypass = opt_bool(cmd, CMD, "bypassDocumentValidation")?.unwrap_or(false);
    check_collation(cmd.get("collation"))?;
    let (stages, write) = split_write_stage(pipeline, &ctx.db)?;
    let target = match cmd.iter().next() {
        Some((_, Bson::String(s))) => {
            let ns = Namespace::new(ctx.db.clone(), s.as_str());
            validate_namespace(&ns)?;
            Some(ns)
        }
        Some((_, v)) if as_i64(v) == Some(1) => None,
        _ => {
            return Err(collection_name(cmd, CMD)
                .err()
                .unwrap_or_else(|| missing(CMD, CMD)));
        }
    };
    let mut data = shared.data.lock();
    let vars = variables(&data, cmd, CMD)?;
    let results = match &target {
        Some(ns) => over_collection(&data, ns, stages, &vars, cmd.get("hint"))?,
        None => over_database(shared, stages, &vars)?,
    };
    let cursor_ns = target
        .clone()
        .unwrap_or_else(|| Namespace::new(ctx.db.clone(), "$cmd.aggregate"));
    if let Some(write) = write {
        match write {
            WriteStage::Out(to) => out(&mut data, &to, results, bypass)?,
            WriteStage::Merge(merge) => merge.run(&mut data, results, bypass, &vars)?,
        }
        drop(data);
        let shown = cursor_ns.to_string();
        return Ok(cursor_reply(
            shared,
            cursor_ns,
            shown,
            Vec::new(),
            None,
            false,
        ));
    }
    drop(data);
    let shown = cursor_ns.to_string();
    Ok(cursor_reply(
        shared, cursor_ns, shown, results, batch_size, false,
    ))
}

fn batch_size(cmd: &Document) -> Result<Option<usize>> {
    match cmd.get("cursor") {
        Some(Bson::Document(c)) => {
            for key in c.keys() {
                if key != "batchSize" {
                    return Err(CommandError::new(
                        error::UNKNOWN_FIELD,
                        format!("BSON field 'aggregate.cursor.{key}' is an unknown field."),
                    ));
                }
            }
            opt_usize(c, "aggregate.cursor", "batchSize")
        }
        Some(other) => Err(wrong_type(CMD, "cursor", other, "object")),
        None => Err(CommandError::failed_to_parse(
            "The 'cursor' option is required, except for aggregate with the explain argument",
        )),
    }
}

/// Runs `stages` over a collection's (or view's) documents; a leading `$match` picks them
/// through the indexes as a find filter does.
fn over_collection(
    data: &Data,
    ns: &Namespace,
    stages: &[Bson],
    vars: &Variables,
    hint: Option<&Bson>,
) -> Result<Vec<Document>> {
    let (leading, rest) = match stages.first() {
        Some(Bson::Document(stage)) if stage.len() == 1 => match stage.get("$match") {
            Some(Bson::Document(filter)) => (Some(Matcher::parse(filter)?), &stages[1..]),
            _ => (None, stages),
        },
        _ => (None, stages),
    };
    if let Some(name) = collectionless_stage(rest) {
        return Err(CommandError::new(
            error::INVALID_NAMESPACE,
            format!("{name} can only be run with {{aggregate: 1}}"),
        ));
    }
    let parsed = Pipeline::parse(rest)?;
    let source = Source::open(data, ns)?;
    check_hint(source.collection(), hint)?;
    let input = match &leading {
        Some(m) => source
            .select(m, vars)?
            .into_iter()
            .map(|(_, d)| d.clone())
            .collect(),
        None => source.all(),
    };
    parsed.run(input, vars)
}

/// The first stage's name, when it is one that makes its own documents.
fn collectionless_stage(stages: &[Bson]) -> Option<&str> {
    let Some(Bson::Document(first)) = stages.first() else {
        return None;
    };
    let name = first.keys().next()?;
    ["$documents", "$listLocalSessions"]
        .contains(&name.as_str())
        .then_some(name.as_str())
}

/// `aggregate: 1`: the first stage makes the documents the rest of the pipeline reads.
fn over_database(shared: &Shared, stages: &[Bson], vars: &Variables) -> Result<Vec<Document>> {
    let first = match stages.first() {
        Some(Bson::Document(first)) => first,
        _ => {
            return Err(CommandError::new(
                error::INVALID_NAMESPACE,
                "{aggregate: 1} is not valid for an empty pipeline.",
            ));
        }
    };
    let name = first.keys().next().cloned().unwrap_or_default();
    let arg = first.get(&name).cloned().unwrap_or(Bson::Null);
    let input = match name.as_str() {
        "$documents" => documents(&arg, vars)?,
        "$listLocalSessions" => list_local_sessions(shared, &arg)?,
        "$currentOp" | "$listSessions" => {
            return Err(CommandError::not_supported(format!(
                "{name} is not supported"
            )));
        }
        other => {
            return Err(CommandError::new(
                error::INVALID_NAMESPACE,
                format!("{{aggregate: 1}} is not valid for '{other}'; a collection is required."),
            ));
        }
    };
    Pipeline::parse(&stages[1..])?.run(input, vars)
}

/// `$documents` (manual: "$documents"): an expression that evaluates to an array of documents.
fn documents(arg: &Bson, vars: &Variables) -> Result<Vec<Document>> {
    let value = Expr::parse(arg)?.eval(&Document::new(), vars)?;
    let Some(Bson::Array(items)) = value else {
        return Err(CommandError::location(5858203, "an array is expected"));
    };
    items
        .into_iter()
        .map(|v| match v {
            Bson::Document(d) => Ok(d),
            _ => Err(CommandError::location(
                5858203,
                "an array of objects is expected",
            )),
        })
        .collect()
}

/// `$listLocalSessions` (manual: "$listLocalSessions"): `{}` or `{allUsers: true}` list every
/// cached session (without authentication all belong to one user); `users` filters by user,
/// and no user exists here.
fn list_local_sessions(shared: &Shared, arg: &Bson) -> Result<Vec<Document>> {
    let Bson::Document(spec) = arg else {
        return Err(wrong_type(
            "$listLocalSessions",
            "$listLocalSessions",
            arg,
            "object",
        ));
    };
    for key in spec.keys() {
        if key != "allUsers" && key != "users" {
            return Err(CommandError::new(
                error::UNKNOWN_FIELD,
                format!("BSON field '$listLocalSessions.{key}' is an unknown field."),
            ));
        }
    }
    if matches!(spec.get("users"), Some(Bson::Array(users)) if !users.is_empty()) {
        return Ok(Vec::new());
    }
    Ok(shared.sessions.lock().list())
}

/// A final stage that writes the results.
enum WriteStage {
    Out(Namespace),
    Merge(Merge),
}

/// Splits off a final `$out` or `$merge`; either one elsewhere fails as in mongod.
fn split_write_stage<'a>(
    pipeline: &'a [Bson],
    db: &str,
) -> Result<(&'a [Bson], Option<WriteStage>)> {
    for (i, stage) in pipeline.iter().enumerate() {
        let Bson::Document(stage) = stage else {
            continue;
        };
        let Some(name) = stage.keys().next() else {
            continue;
        };
        if name != "$out" && name != "$merge" {
            continue;
        }
        if i + 1 != pipeline.len() {
            return Err(CommandError::location(
                40601,
                format!("{name} can only be the final stage in the pipeline"),
            ));
        }
        let arg = stage.get(name).cloned().unwrap_or(Bson::Null);
        let write = if name == "$out" {
            WriteStage::Out(out_target(&arg, db)?)
        } else {
            WriteStage::Merge(Merge::parse(&arg, db)?)
        };
        return Ok((&pipeline[..i], Some(write)));
    }
    Ok((pipeline, None))
}

/// A write stage's target: a collection name in this database, or `{db, coll}`.
fn target_namespace(arg: &Bson, db: &str, stage: &str) -> Result<Namespace> {
    let ns = match arg {
        Bson::String(coll) => Namespace::new(db, coll.as_str()),
        Bson::Document(d) => {
            let coll = match d.get("coll") {
                Some(Bson::String(c)) => c.clone(),
                Some(other) => return Err(wrong_type(stage, "coll", other, "string")),
                None => return Err(missing(stage, "coll")),
            };
            let target_db = match d.get("db") {
                Some(Bson::String(d)) => d.clone(),
                Some(other) => return Err(wrong_type(stage, "db", other, "string")),
                None => db.to_string(),
            };
            Namespace::new(target_db, coll)
        }
        other => return Err(wrong_type(stage, stage, other, "string")),
    };
    validate_write_namespace(&ns)?;
    Ok(ns)
}

fn out_target(arg: &Bson, db: &str) -> Result<Namespace> {
    if let Bson::Document(d) = arg {
        for key in d.keys() {
            match key.as_str() {
                "db" | "coll" => {}
                "timeseries" => {
                    return Err(CommandError::not_supported(
                        "$out to a time-series collection is not supported",
                    ));
                }
                other => {
                    return Err(CommandError::new(
                        error::UNKNOWN_FIELD,
                        format!("BSON field '$out.{other}' is an unknown field."),
                    ));
                }
            }
        }
    }
    target_namespace(arg, db, "$out")
}

/// `$out`: the results, validated and indexed like the target, replace the target's
/// documents through a temporary collection renamed over it.
fn out(data: &mut Data, target: &Namespace, docs: Vec<Document>, bypass: bool) -> Result<()> {
    check_not_view(data, target)?;
    let cluster_time = data.oplog.last_ts();
    let mut tmp = Collection::new();
    let existing = data.collection(target);
    let replaced = existing.map(Collection::ui);
    if let Some(existing) = existing {
        tmp.options = existing.options.clone();
        for index in &existing.indexes[1..] {
            tmp.create_index(target, index.spec.clone())?;
        }
    }
    let mut stored = Vec::with_capacity(docs.len());
    for d in docs {
        let d = prepare_insert(d)?;
        check_valid(&tmp, &d, None, bypass, cluster_time)?;
        stored.push(tmp.insert_document(target, d)?.1);
    }
    let tmp_ns = Namespace::new(
        target.db.clone(),
        format!("tmp.agg_out.{}", hex::encode(tmp.uuid.bytes())),
    );
    let ui = tmp.ui();
    let description = crate::catalog::create_description(&tmp.options);
    let oplog = &mut data.oplog;
    oplog.record(
        OplogOp::Create {
            ns: tmp_ns.clone(),
            description,
        },
        Some(ui.clone()),
    );
    let indexes: Vec<Document> = tmp.indexes[1..]
        .iter()
        .map(|i| i.spec.to_document())
        .collect();
    if !indexes.is_empty() {
        let op = OplogOp::CreateIndexes {
            ns: tmp_ns.clone(),
            indexes,
        };
        oplog.record(op, Some(ui.clone()));
    }
    for document in stored {
        let op = OplogOp::Insert {
            ns: tmp_ns.clone(),
            document,
        };
        oplog.record(op, Some(ui.clone()));
    }
    let rename = OplogOp::Rename {
        from: tmp_ns,
        to: target.clone(),
        drop_target: replaced,
    };
    oplog.record(rename, Some(ui));
    data.databases
        .entry(target.db.clone())
        .or_default()
        .collections
        .insert(target.coll.clone(), tmp);
    Ok(())
}

/// What `$merge` does with a result that matches a target document.
enum WhenMatched {
    Replace,
    KeepExisting,
    Merge,
    Fail,
    /// An update pipeline; `$$new` is the result document.
    Pipeline(Vec<Bson>),
}

/// What `$merge` does with a result that matches none.
#[derive(PartialEq)]
enum WhenNotMatched {
    Insert,
    Discard,
    Fail,
}

/// A parsed `$merge` (manual: "$merge").
struct Merge {
    into: Namespace,
    on: Vec<String>,
    let_vars: Option<Document>,
    when_matched: WhenMatched,
    when_not_matched: WhenNotMatched,
}

impl Merge {
    fn parse(arg: &Bson, db: &str) -> Result<Merge> {
        const STAGE: &str = "$merge";
        let spec = match arg {
            Bson::String(_) => doc! {"into": arg.clone()},
            Bson::Document(d) => d.clone(),
            other => return Err(wrong_type(STAGE, STAGE, other, "object")),
        };
        let mut merge = Merge {
            into: target_namespace(
                spec.get("into").ok_or_else(|| missing(STAGE, "into"))?,
                db,
                STAGE,
            )?,
            on: vec!["_id".to_string()],
            let_vars: None,
            when_matched: WhenMatched::Merge,
            when_not_matched: WhenNotMatched::Insert,
        };
        for (key, value) in &spec {
            match (key.as_str(), value) {
                ("into", _) => {}
                ("on", Bson::String(f)) => merge.on = vec![f.clone()],
                ("on", Bson::Array(fields)) => {
                    merge.on = fields
                        .iter()
                        .map(|f| match f {
                            Bson::String(f) => Ok(f.clone()),
                            other => Err(wrong_type(STAGE, "on", other, "string")),
                        })
                        .collect::<Result<_>>()?;
                }
                ("let", Bson::Document(l)) => merge.let_vars = Some(l.clone()),
                ("whenMatched", Bson::String(mode)) => {
                    merge.when_matched = match mode.as_str() {
                        "replace" => WhenMatched::Replace,
                        "keepExisting" => WhenMatched::KeepExisting,
                        "merge" => WhenMatched::Merge,
                        "fail" => WhenMatched::Fail,
                        other => return Err(bad_mode("whenMatched", other)),
                    };
                }
                ("whenMatched", Bson::Array(p)) => {
                    merge.when_matched = WhenMatched::Pipeline(p.clone());
                }
                ("whenNotMatched", Bson::String(mode)) => {
                    merge.when_not_matched = match mode.as_str() {
                        "insert" => WhenNotMatched::Insert,
                        "discard" => WhenNotMatched::Discard,
                        "fail" => WhenNotMatched::Fail,
                        other => return Err(bad_mode("whenNotMatched", other)),
                    };
                }
                ("on" | "let" | "whenMatched" | "whenNotMatched", other) => {
                    return Err(wrong_type(STAGE, key, other, "object"));
                }
                (other, _) => {
                    return Err(CommandError::new(
                        error::UNKNOWN_FIELD,
                        format!("BSON field '$merge.{other}' is an unknown field."),
                    ));
                }
            }
        }
        Ok(merge)
    }

    /// Writes every result into the target.
    fn run(
        &self,
        data: &mut Data,
        results: Vec<Document>,
        bypass: bool,
        vars: &Variables,
    ) -> Result<()> {
        check_not_view(data, &self.into)?;
        self.check_unique_on(data)?;
        let mut vars = vars.clone();
        if let Some(l) = &self.let_vars {
            vars = vars.with_let(l)?;
        }
        for result in results {
            self.merge_one(data, result, bypass, &mut vars)?;
        }
        Ok(())
    }

    /// mongod requires a unique index on the `on` fields, so that a result matches at most
    /// one document (51183).
    fn check_unique_on(&self, data: &Data) -> Result<()> {
        if self.on == ["_id"] {
            return Ok(());
        }
        let unique = data.collection(&self.into).is_some_and(|c| {
            c.indexes.iter().any(|i| {
                i.spec.unique
                    && i.spec.partial_filter.is_none()
                    && i.spec.key.len() == self.on.len()
                    && self.on.iter().all(|f| i.spec.key.contains_key(f))
            })
        });
        if unique {
            return Ok(());
        }
        Err(CommandError::location(
            51183,
            "Cannot find index to verify that join fields will be unique",
        ))
    }

    fn merge_one(
        &self,
        data: &mut Data,
        mut result: Document,
        bypass: bool,
        vars: &mut Variables,
    ) -> Result<()> {
        if self.on == ["_id"] && !result.contains_key("_id") {
            result = prepare_insert(result)?;
        }
        let mut filter = Document::new();
        for field in &self.on {
            match crate::path::get_path(&result, field) {
                Some(v) if !matches!(v, Bson::Null | Bson::Undefined | Bson::Array(_)) => {
                    filter.insert(field.clone(), v.clone());
                }
                _ => {
                    return Err(CommandError::location(
                        51132,
                        format!(
                            "$merge write error: 'on' field '{field}' cannot be missing, null, undefined or an array"
                        ),
                    ));
                }
            }
        }
        let matcher = Matcher::parse(&filter)?;
        let found = match data.collection(&self.into) {
            Some(c) => c.matching(&matcher, vars, true)?.first().copied(),
            None => None,
        };
        let Some(rid) = found else {
            return match self.when_not_matched {
                WhenNotMatched::Insert => {
                    insert_prepared(data, &self.into, prepare_insert(result)?, bypass).map(|_| ())
                }
                WhenNotMatched::Discard => Ok(()),
                WhenNotMatched::Fail => Err(CommandError::location(
                    13113,
                    "$merge could not find a matching document in the target collection for at \
                     least one document in the source collection",
                )),
            };
        };
        let spec = match &self.when_matched {
            WhenMatched::KeepExisting => return Ok(()),
            // mongod inserts and lets the unique index refuse the duplicate (11000).
            WhenMatched::Fail => {
                return insert_prepared(data, &self.into, prepare_insert(result)?, bypass)
                    .map(|_| ());
            }
            WhenMatched::Replace => UpdateSpec::Replacement(result),
            WhenMatched::Merge => {
                UpdateSpec::parse(&Bson::Document(doc! {"$set": Bson::Document(result)}))?
            }
            WhenMatched::Pipeline(p) => {
                vars.set("new", Bson::Document(result));
                UpdateSpec::parse(&Bson::Array(p.clone()))?
            }
        };
        let ctx = UpdateContext {
            is_upsert_insert: false,
            vars,
            array_filters: &[],
            query: Some(&matcher),
        };
        update_record(data, &self.into, rid, &spec, &ctx, bypass).map(|_| ())
    }
}

fn bad_mode(field: &str, value: &str) -> CommandError {
    CommandError::bad_value(format!(
        "Enumeration value '{value}' for field '$merge.{field}' is not a valid value."
    ))
}
