//! Reads and writes on documents: insert, update, delete, find, findAndModify, count,
//! distinct and (non-change-stream) aggregate.
//!
//! Every command holds the data lock from start to end, so each is atomic and the oplog
//! order is the order in which commands ran.

#![allow(clippy::result_large_err)] // CommandError carries mongod's extra reply fields.

use crate::aggregate::{Pipeline, Projection, SortSpec};
use crate::bsontype::{as_i64, type_name};
use crate::commands::statement::{Statement, StatementKind, run_statement};
use crate::compare::{as_f64, compare, values_equal};
use crate::cursor::{CursorEntry, CursorKind, QueryCursor, take_batch};
use crate::error::{self, CommandError, Result};
use crate::expr::Variables;
use crate::fields::{check_known_fields, missing, opt_bool, opt_count, opt_document, wrong_type};
use crate::oplog::{Namespace, OplogOp};
use crate::query::Matcher;
use crate::retryable::StatementResult;
use crate::state::{CommandContext, Shared};
use crate::storage::{
    Collection, Data, MAX_USER_DOCUMENT_SIZE, bson_size, document_key, identical_documents,
};
use crate::update::{UpdateContext, UpdateSpec, build_upsert};
use bson::oid::ObjectId;
use bson::{Bson, Document, doc};
use std::cmp::Ordering;
use std::collections::VecDeque;
use std::sync::Arc;

/// How many documents a first batch holds when the client gives no `batchSize` (manual:
/// "Cursor Batches").
pub const DEFAULT_FIRST_BATCH: usize = 101;

/// The `{cursor: {firstBatch, id, ns}}` reply, registering a cursor for what does not fit in
/// the first batch.
pub fn cursor_reply(
    shared: &Shared,
    ns: Namespace,
    cursor_ns: String,
    results: Vec<Document>,
    batch_size: Option<usize>,
    single_batch: bool,
) -> Document {
    let mut remaining = VecDeque::from(results);
    let first = take_batch(&mut remaining, batch_size.unwrap_or(DEFAULT_FIRST_BATCH));
    let id = if remaining.is_empty() || single_batch {
        0
    } else {
        shared.cursors.lock().register(CursorEntry {
            ns,
            kind: CursorKind::Query(QueryCursor::new(remaining)),
        })
    };
    doc! {"cursor": {"firstBatch": first, "id": id, "ns": cursor_ns}}
}

/// The collection a command names in its first field.
pub fn collection_name<'a>(cmd: &'a Document, command: &str) -> Result<&'a str> {
    match cmd.iter().next() {
        Some((_, Bson::String(s))) => Ok(s),
        Some((_, other)) => Err(CommandError::new(
            error::INVALID_NAMESPACE,
            format!("collection name has invalid type {}", type_name(other)),
        )),
        None => Err(missing(command, command)),
    }
}

fn invalid_namespace(ns: &Namespace) -> CommandError {
    CommandError::new(
        error::INVALID_NAMESPACE,
        format!("Invalid namespace specified '{ns}'"),
    )
}

/// Rejects namespaces mongod does not accept at all (manual: "Naming Restrictions").
pub fn validate_namespace(ns: &Namespace) -> Result<()> {
    let bad_db = ns.db.is_empty()
        || ns
            .db
            .chars()
            .any(|c| matches!(c, '/' | '\\' | '.' | ' ' | '"' | '$' | '\0'));
    if bad_db {
        return Err(CommandError::new(
            error::INVALID_NAMESPACE,
            format!("Invalid database name: '{}'", ns.db),
        ));
    }
    if ns.coll.is_empty() || ns.coll.contains('\0') {
        return Err(invalid_namespace(ns));
    }
    Ok(())
}

/// Rejects namespaces a user may not write to: names with `$`, `system.*`, and the oplog.
pub fn validate_write_namespace(ns: &Namespace) -> Result<()> {
    validate_namespace(ns)?;
    if ns.coll.contains('$') || ns.coll.starts_with("system.") || is_oplog(ns) {
        return Err(invalid_namespace(ns));
    }
    Ok(())
}

fn is_oplog(ns: &Namespace) -> bool {
    ns.db == "local" && ns.coll == "oplog.rs"
}

/// Only the simple collation is supported; anything else fails loudly.
pub fn check_collation(collation: Option<&Bson>) -> Result<()> {
    match collation {
        None => Ok(()),
        Some(Bson::Document(d)) if d.is_empty() => Ok(()),
        Some(Bson::Document(d))
            if d.len() == 1 && d.get("locale") == Some(&Bson::String("simple".into())) =>
        {
            Ok(())
        }
        Some(_) => Err(CommandError::not_supported(
            "collations other than the simple collation are not supported",
        )),
    }
}

/// `$$NOW`, `$$CLUSTER_TIME` and the command's `let` variables.
pub(crate) fn variables(data: &Data, cmd: &Document, command: &str) -> Result<Variables> {
    let vars = Variables::new(bson::DateTime::now(), data.oplog.last_ts());
    match opt_document(cmd, command, "let")? {
        Some(l) => vars.with_let(l),
        None => Ok(vars),
    }
}

fn count_bson(n: usize) -> Bson {
    match i32::try_from(n) {
        Ok(i) => Bson::Int32(i),
        Err(_) => Bson::Int64(n as i64),
    }
}

/// Checks a `hint` against the collection's indexes (manual: "cursor.hint()").
/// `min`/`max` of `find` (manual: "cursor.min()", "cursor.max()"): the documents whose key in
/// the hinted index lies at or above `min` and below `max`, in that index's order. Both bounds
/// name the index's fields in its order.
fn within_key_bounds<'a>(
    selected: Vec<(u64, &'a Document)>,
    coll: Option<&Collection>,
    hint: Option<&Bson>,
    min: Option<&Document>,
    max: Option<&Document>,
) -> Result<Vec<(u64, &'a Document)>> {
    let Some(hint) = hint else {
        return Err(CommandError::location(
            51173,
            "When using min()/max() a hint of which index to use must be provided",
        ));
    };
    let index = coll.and_then(|c| match hint {
        Bson::String(name) => c.index_by_name(name),
        Bson::Document(key) => c.index_by_key(key),
        _ => None,
    });
    let Some(index) = index else {
        return Ok(Vec::new());
    };
    let pattern: Vec<(String, bool)> = index
        .spec
        .key
        .iter()
        .map(|(k, v)| (k.clone(), as_f64(v).is_some_and(|d| d < 0.0)))
        .collect();
    for bound in [min, max].into_iter().flatten() {
        let same =
            bound.len() == pattern.len() && bound.keys().zip(&pattern).all(|(k, (f, _))| k == f);
        if !same {
            return Err(CommandError::location(
                51174,
                "The index chosen is not valid for min()/max(): its key pattern does not match the bounds",
            ));
        }
    }
    let key_order = |d: &Document, bound: &Document| -> Ordering {
        for ((field, descending), b) in pattern.iter().zip(bound.values()) {
            let v = crate::path::get_path(d, field).unwrap_or(&Bson::Null);
            let c = compare(v, b);
            let c = if *descending { c.reverse() } else { c };
            if c != Ordering::Equal {
                return c;
            }
        }
        Ordering::Equal
    };
    let mut kept: Vec<(u64, &Document)> = selected
        .into_iter()
        .filter(|(_, d)| {
            min.is_none_or(|m| key_order(d, m) != Ordering::Less)
                && max.is_none_or(|m| key_order(d, m) == Ordering::Less)
        })
        .collect();
    let empty = Document::new();
    let reference = min.or(max).unwrap_or(&empty);
    kept.sort_by(|a, b| {
        let (a, b) = (a.1, b.1);
        pattern
            .iter()
            .zip(reference.keys())
            .map(|((field, descending), _)| {
                let x = crate::path::get_path(a, field).unwrap_or(&Bson::Null);
                let y = crate::path::get_path(b, field).unwrap_or(&Bson::Null);
                let c = compare(x, y);
                if *descending { c.reverse() } else { c }
            })
            .find(|c| *c != Ordering::Equal)
            .unwrap_or(Ordering::Equal)
    });
    Ok(kept)
}

pub(crate) fn check_hint(coll: Option<&Collection>, hint: Option<&Bson>) -> Result<()> {
    let (Some(coll), Some(hint)) = (coll, hint) else {
        return Ok(());
    };
    let known = match hint {
        Bson::String(name) => coll.index_by_name(name).is_some(),
        Bson::Document(d) if d.is_empty() => true,
        Bson::Document(d) if d.contains_key("$natural") => true,
        Bson::Document(d) => coll.index_by_key(d).is_some(),
        other => {
            return Err(CommandError::failed_to_parse(format!(
                "hint must be either a string or nested object, not {}",
                type_name(other)
            )));
        }
    };
    if known {
        Ok(())
    } else {
        Err(CommandError::bad_value(
            "error processing query: planner returned error :: caused by :: hint provided does not correspond to an existing index",
        ))
    }
}

/// Direction of a `{$natural: 1|-1}` sort or hint.
fn natural_direction(d: &Document) -> Result<Option<bool>> {
    match d.get("$natural") {
        None => Ok(None),
        Some(v) => match as_i64(v) {
            Some(1) => Ok(Some(true)),
            Some(-1) => Ok(Some(false)),
            _ => Err(CommandError::bad_value(
                "$natural sort cannot be set to a value other than -1 or 1",
            )),
        },
    }
}

/// How results are ordered.
enum Order {
    Natural { forward: bool },
    Spec(SortSpec),
}

impl Order {
    fn parse(sort: Option<&Document>, hint: Option<&Bson>) -> Result<Order> {
        match sort {
            Some(s) if !s.is_empty() => {
                if let Some(forward) = natural_direction(s)? {
                    if s.len() > 1 {
                        return Err(CommandError::bad_value(
                            "$natural sort cannot be combined with other sort fields",
                        ));
                    }
                    return Ok(Order::Natural { forward });
                }
                Ok(Order::Spec(SortSpec::parse(s)?))
            }
            _ => {
                let forward = match hint {
                    Some(Bson::Document(h)) => natural_direction(h)?.unwrap_or(true),
                    _ => true,
                };
                Ok(Order::Natural { forward })
            }
        }
    }

    fn apply<T>(&self, items: &mut [T], doc_of: impl Fn(&T) -> &Document) {
        match self {
            Order::Natural { forward: true } => {}
            Order::Natural { forward: false } => items.reverse(),
            Order::Spec(spec) => items.sort_by(|a, b| spec.compare(doc_of(a), doc_of(b))),
        }
    }
}

/// Where a read takes its documents from.
pub(crate) enum Source<'a> {
    Collection(&'a Collection),
    /// `local.oplog.rs`, rendered from the oplog.
    Owned(Vec<Document>),
    Missing,
}

/// Views may be defined on views, up to this depth (mongod's `ViewGraph::kMaxViewDepth`).
const MAX_VIEW_DEPTH: usize = 20;

/// The documents of the view at `ns`: its pipeline run over its source.
fn view_documents(data: &Data, ns: &Namespace, depth: usize) -> Result<Vec<Document>> {
    let Some(view) = data.view(ns) else {
        return Ok(data
            .collection(ns)
            .map(|c| c.documents.values().map(|d| Document::clone(d)).collect())
            .unwrap_or_default());
    };
    if depth >= MAX_VIEW_DEPTH {
        return Err(CommandError::new(
            error::ErrorCode {
                code: 288,
                name: "ViewDepthLimitExceeded",
            },
            format!(
                "View depth too deep or view cycle detected. Maximum depth is {MAX_VIEW_DEPTH}"
            ),
        ));
    }
    let source = Namespace::new(ns.db.clone(), view.view_on.clone());
    let input = view_documents(data, &source, depth + 1)?;
    let vars = Variables::new(bson::DateTime::now(), data.oplog.last_ts());
    Pipeline::parse(&view.pipeline)?.run(input, &vars)
}

/// The first `want` oplog entries matching, in natural order (oldest first when `forward`),
/// each with its record id; renders only the entries it looks at.
fn oplog_in_natural_order(
    oplog: &crate::oplog::Oplog,
    matcher: &Matcher,
    vars: &Variables,
    forward: bool,
    want: usize,
) -> Result<Vec<(u64, Document)>> {
    let entries = oplog.entries();
    let positions: Box<dyn Iterator<Item = usize>> = if forward {
        Box::new(0..entries.len())
    } else {
        Box::new((0..entries.len()).rev())
    };
    let mut out = Vec::new();
    for i in positions {
        if out.len() >= want {
            break;
        }
        let d = entries[i].to_document();
        if matcher.matches(&d, vars)? {
            out.push((i as u64 + 1, d));
        }
    }
    Ok(out)
}

impl<'a> Source<'a> {
    /// The documents of `ns`: a collection's, the oplog's, or those a view's pipeline makes
    /// of its source (manual: "Views": a read of a view runs its pipeline first).
    pub(crate) fn open(data: &'a Data, ns: &Namespace) -> Result<Source<'a>> {
        if is_oplog(ns) {
            return Ok(Source::Owned(data.oplog.as_documents()));
        }
        if data.view(ns).is_some() {
            return Ok(Source::Owned(view_documents(data, ns, 0)?));
        }
        Ok(match data.collection(ns) {
            Some(c) => Source::Collection(c),
            None => Source::Missing,
        })
    }

    pub(crate) fn collection(&self) -> Option<&Collection> {
        match self {
            Source::Collection(c) => Some(c),
            _ => None,
        }
    }

    /// Matching documents with their record ids, in natural order.
    pub(crate) fn select(
        &self,
        matcher: &Matcher,
        vars: &Variables,
    ) -> Result<Vec<(u64, &Document)>> {
        let mut out = Vec::new();
        match self {
            Source::Collection(c) => {
                for rid in c.candidates(matcher) {
                    if let Some(d) = c.documents.get(&rid)
                        && matcher.matches(d, vars)?
                    {
                        out.push((rid, &**d));
                    }
                }
            }
            Source::Owned(docs) => {
                for (i, d) in docs.iter().enumerate() {
                    if matcher.matches(d, vars)? {
                        out.push((i as u64 + 1, d));
                    }
                }
            }
            Source::Missing => {}
        }
        Ok(out)
    }

    pub(crate) fn all(&self) -> Vec<Document> {
        match self {
            Source::Collection(c) => c.documents.values().map(|d| Document::clone(d)).collect(),
            Source::Owned(docs) => docs.clone(),
            Source::Missing => Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// insert

/// The document as stored: `_id` first, an ObjectId generated when missing (manual:
/// "insert", "_id Field"). Takes the document by value so that the common case, `_id`
/// already first as drivers send it, stores it without a copy.
pub(crate) fn prepare_insert(doc: Document) -> Result<Document> {
    let prepared = match doc.get("_id") {
        Some(Bson::Array(_)) => {
            return Err(CommandError::bad_value("can't use an array for _id"));
        }
        Some(Bson::RegularExpression(_)) => {
            return Err(CommandError::bad_value("can't use a regex for _id"));
        }
        Some(Bson::Undefined) => {
            return Err(CommandError::bad_value("can't use a undefined for _id"));
        }
        // Manual: "Field Names" — `$`-prefixed names are allowed anywhere except in `_id`.
        Some(Bson::Document(id)) if id.keys().any(|k| k.starts_with('$')) => {
            let field = id
                .keys()
                .find(|k| k.starts_with('$'))
                .cloned()
                .unwrap_or_default();
            return Err(CommandError::new(
                error::DOLLAR_PREFIXED_FIELD_NAME,
                format!(
                    "_id fields may not contain '$'-prefixed fields: {field} is not valid for storage."
                ),
            ));
        }
        Some(_) if doc.keys().next().is_some_and(|k| k == "_id") => doc,
        Some(_) => {
            let mut doc = doc;
            let id = doc.remove("_id").unwrap_or(Bson::Null);
            let mut d = Document::new();
            d.insert("_id", id);
            d.extend(doc);
            d
        }
        None => {
            let mut d = Document::new();
            d.insert("_id", ObjectId::new());
            d.extend(doc);
            d
        }
    };
    let size = bson_size(&prepared);
    if size > MAX_USER_DOCUMENT_SIZE {
        return Err(CommandError::new(
            error::BSON_OBJECT_TOO_LARGE,
            format!(
                "object to insert too large. size in bytes: {size}, max size: {MAX_USER_DOCUMENT_SIZE}"
            ),
        ));
    }
    Ok(prepared)
}

/// Refuses a document the collection's validator rejects (manual: "Schema Validation");
/// `old` is the version an update replaces.
pub(crate) fn check_valid(
    coll: &Collection,
    new: &Document,
    old: Option<&Document>,
    bypass: bool,
    cluster_time: bson::Timestamp,
) -> Result<()> {
    if coll.options.validator.is_none() {
        return Ok(());
    }
    let vars = Variables::new(bson::DateTime::now(), cluster_time);
    coll.options.validate(new, old, bypass, &vars)
}

/// Writes to a view fail as mongod's do (manual: "Views", read-only).
pub fn check_not_view(data: &Data, ns: &Namespace) -> Result<()> {
    match data.view(ns) {
        Some(_) => Err(crate::catalog::not_supported_on_view(ns)),
        None => Ok(()),
    }
}

/// Stores a prepared document and records its insert; `bypass` skips document validation
/// (`bypassDocumentValidation`).
pub(crate) fn insert_prepared(
    data: &mut Data,
    ns: &Namespace,
    doc: Document,
    bypass: bool,
) -> Result<u64> {
    let cluster_time = data.oplog.last_ts();
    let (coll, _) = data.ensure_collection(ns);
    check_valid(coll, &doc, None, bypass, cluster_time)?;
    let (rid, stored) = coll.insert_document(ns, doc)?;
    coll.evict_over_cap();
    let ui = coll.ui();
    data.oplog.record(
        OplogOp::Insert {
            ns: ns.clone(),
            document: stored,
        },
        Some(ui),
    );
    Ok(rid)
}

fn check_batch_size(n: usize) -> Result<()> {
    if n == 0 || n > 100_000 {
        return Err(CommandError::from_code(
            16,
            format!("Write batch sizes must be between 1 and 100000. Got {n} operations."),
        ));
    }
    Ok(())
}

fn statement_array<'a>(cmd: &'a Document, command: &str, field: &str) -> Result<&'a [Bson]> {
    match cmd.get(field) {
        Some(Bson::Array(a)) => {
            check_batch_size(a.len())?;
            Ok(a)
        }
        Some(other) => Err(wrong_type(command, field, other, "array")),
        None => Err(missing(command, field)),
    }
}

fn write_reply(n: usize, errors: Vec<Document>) -> Document {
    let mut reply = doc! {"n": count_bson(n)};
    if !errors.is_empty() {
        reply.insert("writeErrors", errors);
    }
    reply
}

/// `insert` (manual: "insert"): `{n, writeErrors?}`; an ordered insert stops at the first
/// failing document, an unordered one tries them all.
///
/// The documents are moved out of `cmd` into storage rather than copied; nothing reads them
/// from the command afterwards.
pub fn insert(shared: &Shared, ctx: &CommandContext, cmd: &mut Document) -> Result<Document> {
    let coll = collection_name(cmd, "insert")?;
    check_known_fields(
        cmd,
        "insert",
        &[
            "documents",
            "ordered",
            "bypassDocumentValidation",
            "stmtId",
            "stmtIds",
        ],
    )?;
    let ns = Namespace::new(ctx.db.clone(), coll);
    validate_write_namespace(&ns)?;
    let documents = statement_array(cmd, "insert", "documents")?;
    let ordered = opt_bool(cmd, "insert", "ordered")?.unwrap_or(true);
    let bypass = opt_bool(cmd, "insert", "bypassDocumentValidation")?.unwrap_or(false);
    for (i, d) in documents.iter().enumerate() {
        if !matches!(d, Bson::Document(_)) {
            return Err(wrong_type("insert", &format!("documents.{i}"), d, "object"));
        }
    }
    let docs = match cmd.get_mut("documents") {
        Some(Bson::Array(a)) => std::mem::take(a),
        _ => Vec::new(),
    };
    let mut data = shared.data.lock();
    check_not_view(&data, &ns)?;
    let mut n = 0;
    let mut errors = Vec::new();
    let docs = docs.into_iter().filter_map(|d| match d {
        Bson::Document(d) => Some(d),
        _ => None,
    });
    for (i, d) in docs.enumerate() {
        let mut doc = Some(d);
        let mut run = |data: &mut Data| {
            let d = doc.take().unwrap_or_default();
            prepare_insert(d).and_then(|p| insert_prepared(data, &ns, p, bypass))
        };
        let kind = StatementKind {
            run: &mut run,
            record: &|_| StatementResult::Insert,
            replay: &|r| (r == StatementResult::Insert).then_some(0),
            wrote: &|_| true,
        };
        match run_statement(shared, ctx, &mut data, &ns, i, kind) {
            Statement::Done(_) => n += 1,
            Statement::Failed(e) => {
                errors.push(e.to_write_error(i));
                if ordered {
                    break;
                }
            }
        }
        if ctx.hang_up_requested() {
            break;
        }
    }
    Ok(write_reply(n, errors))
}

// ---------------------------------------------------------------------------------------
// update

/// One statement of an `update` command, validated as mongod's IDL parser does.
struct UpdateStatement {
    q: Document,
    u: Bson,
    upsert: bool,
    multi: bool,
    array_filters: Vec<Document>,
    constants: Option<Document>,
    hint: Option<Bson>,
}

fn parse_update_statement(stmt: &Bson) -> Result<UpdateStatement> {
    const CMD: &str = "update.updates";
    let Bson::Document(s) = stmt else {
        return Err(wrong_type("update", "updates", stmt, "object"));
    };
    for key in s.keys() {
        if ![
            "q",
            "u",
            "upsert",
            "multi",
            "arrayFilters",
            "hint",
            "collation",
            "c",
            "upsertSupplied",
        ]
        .contains(&key.as_str())
        {
            return Err(CommandError::new(
                error::UNKNOWN_FIELD,
                format!("BSON field '{CMD}.{key}' is an unknown field."),
            ));
        }
    }
    let q = match s.get("q") {
        Some(Bson::Document(q)) => q.clone(),
        Some(other) => return Err(wrong_type(CMD, "q", other, "object")),
        None => return Err(missing(CMD, "q")),
    };
    let u = match s.get("u") {
        Some(u @ (Bson::Document(_) | Bson::Array(_))) => u.clone(),
        Some(_) => {
            return Err(CommandError::failed_to_parse(
                "Update argument must be either an object or an array",
            ));
        }
        None => return Err(missing(CMD, "u")),
    };
    check_collation(s.get("collation"))?;
    let array_filters = parse_array_filters(s, CMD)?;
    let constants = opt_document(s, CMD, "c")?.cloned();
    if constants.is_some() && !matches!(u, Bson::Array(_)) {
        return Err(CommandError::failed_to_parse(
            "Constant values may only be specified for pipeline updates",
        ));
    }
    Ok(UpdateStatement {
        q,
        u,
        upsert: opt_bool(s, CMD, "upsert")?.unwrap_or(false),
        multi: opt_bool(s, CMD, "multi")?.unwrap_or(false),
        array_filters,
        constants,
        hint: s.get("hint").cloned(),
    })
}

fn parse_array_filters(d: &Document, command: &str) -> Result<Vec<Document>> {
    match d.get("arrayFilters") {
        None => Ok(Vec::new()),
        Some(Bson::Array(a)) => a
            .iter()
            .map(|f| match f {
                Bson::Document(f) => Ok(f.clone()),
                other => Err(wrong_type(command, "arrayFilters", other, "object")),
            })
            .collect(),
        Some(other) => Err(wrong_type(command, "arrayFilters", other, "array")),
    }
}

fn altered_id(new_id: &Bson) -> CommandError {
    CommandError::new(
        error::IMMUTABLE_FIELD,
        format!(
            "After applying the update, the (immutable) field '_id' was found to have been altered to _id: {}",
            crate::storage::shell_value(new_id)
        ),
    )
}

/// A replacement keeps the stored `_id` (first) and takes every other field from the
/// replacement document (manual: "Replace a Document").
fn replacement_document(old_id: &Bson, replacement: &Document) -> Result<Document> {
    if let Some(new_id) = replacement.get("_id")
        && !values_equal(new_id, old_id)
    {
        return Err(altered_id(new_id));
    }
    let mut d = Document::new();
    d.insert("_id", old_id.clone());
    for (k, v) in replacement {
        if k != "_id" {
            d.insert(k.clone(), v.clone());
        }
    }
    Ok(d)
}

/// Applies `spec` to the document at `rid`, storing and recording it when it changed.
/// Returns whether it changed (a no-op update writes nothing, manual: "update").
pub(crate) fn update_record(
    data: &mut Data,
    ns: &Namespace,
    rid: u64,
    spec: &UpdateSpec,
    ctx: &UpdateContext<'_>,
    bypass: bool,
) -> Result<bool> {
    let cluster_time = data.oplog.last_ts();
    let Some((coll, oplog)) = data.collection_and_oplog(ns) else {
        return Ok(false);
    };
    let Some(before) = coll.documents.get(&rid) else {
        return Ok(false);
    };
    let old_id = before.get("_id").cloned().unwrap_or(Bson::Null);
    let after = match spec {
        UpdateSpec::Replacement(replacement) => replacement_document(&old_id, replacement)?,
        _ => {
            let mut after = Document::clone(before);
            spec.apply(&mut after, ctx)?;
            match after.get("_id") {
                None => {
                    let mut with_id = doc! {"_id": old_id.clone()};
                    with_id.extend(after);
                    with_id
                }
                Some(new_id) if !values_equal(new_id, &old_id) => {
                    return Err(altered_id(new_id));
                }
                Some(_) => after,
            }
        }
    };
    if identical_documents(&after, before) {
        return Ok(false);
    }
    let size = bson_size(&after);
    if size > MAX_USER_DOCUMENT_SIZE {
        return Err(CommandError::from_code(
            17419,
            format!("Resulting document after update is larger than {MAX_USER_DOCUMENT_SIZE}"),
        ));
    }
    check_valid(coll, &after, Some(before), bypass, cluster_time)?;
    let key = doc! {"_id": old_id};
    let recorded = after.clone();
    let before = coll.replace_document(ns, rid, after)?;
    let ui = coll.ui();
    let images = coll.options.pre_and_post_images;
    let op = if spec.is_replacement() {
        OplogOp::Replace {
            ns: ns.clone(),
            document_key: key,
            document: recorded,
            pre_image: images.then_some(before),
        }
    } else {
        OplogOp::Update {
            ns: ns.clone(),
            document_key: key,
            before: Arc::unwrap_or_clone(before),
            after: recorded,
            pipeline: matches!(spec, UpdateSpec::Pipeline(_)),
            images,
        }
    };
    oplog.record(op, Some(ui));
    Ok(true)
}

/// The fields an upsert's filter pins by plain equality (also inside `$and`), or `None` when
/// it has any other condition.
fn equality_fields(filter: &Document, out: &mut Vec<(String, Bson)>) -> Option<()> {
    for (k, v) in filter {
        if k == "$and" {
            let Bson::Array(clauses) = v else {
                return None;
            };
            for c in clauses {
                let Bson::Document(c) = c else {
                    return None;
                };
                equality_fields(c, out)?;
            }
        } else if k.starts_with('$') {
            return None;
        } else {
            match v {
                Bson::Document(d) if d.keys().next().is_some_and(|k| k.starts_with('$')) => {
                    if d.len() == 1
                        && let Some(eq) = d.get("$eq")
                    {
                        out.push((k.clone(), eq.clone()));
                    } else {
                        return None;
                    }
                }
                other => out.push((k.clone(), other.clone())),
            }
        }
    }
    Some(())
}

/// Whether an upsert that hit a duplicate key is retried as an update (manual: "Upsert with
/// Duplicate Values"): the filter is equality on exactly the unique index's key fields and
/// the update left those fields as the filter has them.
fn upsert_retry_allowed(filter: &Document, inserted: &Document, err: &CommandError) -> bool {
    let Ok(pattern) = err.extra.get_document("keyPattern") else {
        return false;
    };
    let mut eqs = Vec::new();
    if equality_fields(filter, &mut eqs).is_none() || eqs.len() != pattern.len() {
        return false;
    }
    pattern.keys().all(|field| {
        eqs.iter().any(|(f, v)| {
            f == field && crate::path::get_path(inserted, field).is_some_and(|x| values_equal(x, v))
        })
    })
}

/// What an upsert did when nothing matched at first.
enum Upserted {
    Inserted {
        id: Bson,
        rid: u64,
    },
    /// A duplicate key made it retry as an update of the existing document.
    Updated {
        rid: u64,
        modified: bool,
    },
}

/// What an upsert is evaluated with: the variables, `arrayFilters`, and whether document
/// validation is bypassed.
struct UpsertEnv<'a> {
    vars: &'a Variables,
    array_filters: &'a [Document],
    bypass: bool,
}

fn upsert(
    data: &mut Data,
    ns: &Namespace,
    filter: &Document,
    matcher: &Matcher,
    spec: &UpdateSpec,
    env: &UpsertEnv<'_>,
) -> Result<Upserted> {
    let UpsertEnv {
        vars,
        array_filters,
        bypass,
    } = *env;
    let insert_ctx = UpdateContext {
        is_upsert_insert: true,
        vars,
        array_filters,
        query: None,
    };
    let built = match spec {
        // A replacement upsert inserts the replacement with the filter's `_id` equality,
        // if any (manual: "update", "Upsert with Replacement Document").
        UpdateSpec::Replacement(replacement) => {
            let mut eqs = Vec::new();
            let id = equality_fields(filter, &mut eqs)
                .and_then(|_| eqs.into_iter().find(|(f, _)| f == "_id"))
                .map(|(_, v)| v);
            match (id, replacement.get("_id")) {
                (Some(id), Some(rid)) if !values_equal(&id, rid) => return Err(altered_id(rid)),
                (Some(id), _) => replacement_document(&id, replacement)?,
                (None, _) => replacement.clone(),
            }
        }
        _ => build_upsert(filter, spec, &insert_ctx)?,
    };
    let doc = prepare_insert(built)?;
    let id = doc.get("_id").cloned().unwrap_or(Bson::Null);
    let copy = doc.clone();
    match insert_prepared(data, ns, doc, bypass) {
        Ok(rid) => Ok(Upserted::Inserted { id, rid }),
        Err(e)
            if e.code == error::DUPLICATE_KEY.code && upsert_retry_allowed(filter, &copy, &e) =>
        {
            let rids = match data.collection(ns) {
                Some(c) => c.matching(matcher, vars, true)?,
                None => Vec::new(),
            };
            let Some(rid) = rids.first().copied() else {
                return Err(e);
            };
            let ctx = UpdateContext {
                is_upsert_insert: false,
                vars,
                array_filters,
                query: Some(matcher),
            };
            let modified = update_record(data, ns, rid, spec, &ctx, bypass)?;
            Ok(Upserted::Updated { rid, modified })
        }
        Err(e) => Err(e),
    }
}

#[derive(Default)]
struct UpdateOutcome {
    n: usize,
    modified: usize,
    upserted: Option<Bson>,
}

fn run_update_statement(
    data: &mut Data,
    ns: &Namespace,
    stmt: &UpdateStatement,
    base_vars: &Variables,
    bypass: bool,
) -> Result<UpdateOutcome> {
    let matcher = Matcher::parse(&stmt.q)?;
    let spec = UpdateSpec::parse(&stmt.u)?;
    if stmt.multi && spec.is_replacement() {
        return Err(CommandError::failed_to_parse(
            "multi update is not supported for replacement-style update",
        ));
    }
    let mut vars_owned;
    let vars = match &stmt.constants {
        Some(c) => {
            vars_owned = base_vars.clone();
            for (k, v) in c {
                vars_owned.set(k.clone(), v.clone());
            }
            &vars_owned
        }
        None => base_vars,
    };
    check_hint(data.collection(ns), stmt.hint.as_ref())?;
    let rids = match data.collection(ns) {
        Some(c) => c.matching(&matcher, vars, !stmt.multi)?,
        None => Vec::new(),
    };
    let mut outcome = UpdateOutcome::default();
    if rids.is_empty() {
        if stmt.upsert {
            match upsert(
                data,
                ns,
                &stmt.q,
                &matcher,
                &spec,
                &UpsertEnv {
                    vars,
                    array_filters: &stmt.array_filters,
                    bypass,
                },
            )? {
                Upserted::Inserted { id, .. } => {
                    outcome.n = 1;
                    outcome.upserted = Some(id);
                }
                Upserted::Updated { modified, .. } => {
                    outcome.n = 1;
                    outcome.modified = modified as usize;
                }
            }
        }
        return Ok(outcome);
    }
    let ctx = UpdateContext {
        is_upsert_insert: false,
        vars,
        array_filters: &stmt.array_filters,
        query: Some(&matcher),
    };
    for rid in rids {
        outcome.n += 1;
        if update_record(data, ns, rid, &spec, &ctx, bypass)? {
            outcome.modified += 1;
        }
    }
    Ok(outcome)
}

/// `update` (manual: "update"): `{n, upserted?, nModified, writeErrors?}`; `n` counts matched
/// documents plus upserts, `nModified` only documents that changed.
pub fn update(shared: &Shared, ctx: &CommandContext, cmd: &Document) -> Result<Document> {
    let coll = collection_name(cmd, "update")?;
    check_known_fields(
        cmd,
        "update",
        &[
            "updates",
            "ordered",
            "let",
            "bypassDocumentValidation",
            "stmtId",
            "stmtIds",
        ],
    )?;
    let ns = Namespace::new(ctx.db.clone(), coll);
    validate_write_namespace(&ns)?;
    let statements = statement_array(cmd, "update", "updates")?
        .iter()
        .map(parse_update_statement)
        .collect::<Result<Vec<_>>>()?;
    let ordered = opt_bool(cmd, "update", "ordered")?.unwrap_or(true);
    let bypass = opt_bool(cmd, "update", "bypassDocumentValidation")?.unwrap_or(false);
    let mut data = shared.data.lock();
    check_not_view(&data, &ns)?;
    let vars = variables(&data, cmd, "update")?;
    let (mut n, mut modified) = (0, 0);
    let mut upserted = Vec::new();
    let mut errors = Vec::new();
    for (i, stmt) in statements.iter().enumerate() {
        let mut run = |data: &mut Data| run_update_statement(data, &ns, stmt, &vars, bypass);
        let kind = StatementKind {
            run: &mut run,
            record: &|o: &UpdateOutcome| StatementResult::Update {
                n: o.n,
                modified: o.modified,
                upserted: o.upserted.clone(),
            },
            replay: &|r| match r {
                StatementResult::Update {
                    n,
                    modified,
                    upserted,
                } => Some(UpdateOutcome {
                    n,
                    modified,
                    upserted,
                }),
                _ => None,
            },
            wrote: &|o: &UpdateOutcome| o.modified > 0 || o.upserted.is_some(),
        };
        match run_statement(shared, ctx, &mut data, &ns, i, kind) {
            Statement::Done(o) => {
                n += o.n;
                modified += o.modified;
                if let Some(id) = o.upserted {
                    upserted.push(doc! {"index": i as i32, "_id": id});
                }
            }
            Statement::Failed(e) => {
                errors.push(e.to_write_error(i));
                if ordered {
                    break;
                }
            }
        }
        if ctx.hang_up_requested() {
            break;
        }
    }
    let mut reply = doc! {"n": count_bson(n)};
    if !upserted.is_empty() {
        reply.insert("upserted", upserted);
    }
    reply.insert("nModified", count_bson(modified));
    if !errors.is_empty() {
        reply.insert("writeErrors", errors);
    }
    Ok(reply)
}

// ---------------------------------------------------------------------------------------
// delete

struct DeleteStatement {
    q: Document,
    just_one: bool,
    hint: Option<Bson>,
}

fn parse_delete_statement(stmt: &Bson) -> Result<DeleteStatement> {
    const CMD: &str = "delete.deletes";
    let Bson::Document(s) = stmt else {
        return Err(wrong_type("delete", "deletes", stmt, "object"));
    };
    for key in s.keys() {
        if !["q", "limit", "hint", "collation"].contains(&key.as_str()) {
            return Err(CommandError::new(
                error::UNKNOWN_FIELD,
                format!("BSON field '{CMD}.{key}' is an unknown field."),
            ));
        }
    }
    let q = match s.get("q") {
        Some(Bson::Document(q)) => q.clone(),
        Some(other) => return Err(wrong_type(CMD, "q", other, "object")),
        None => return Err(missing(CMD, "q")),
    };
    let limit = match s.get("limit") {
        Some(v) => as_i64(v).ok_or_else(|| wrong_type(CMD, "limit", v, "long"))?,
        None => return Err(missing(CMD, "limit")),
    };
    if limit != 0 && limit != 1 {
        return Err(CommandError::failed_to_parse(format!(
            "The limit field in delete objects must be 0 or 1. Got {limit}"
        )));
    }
    check_collation(s.get("collation"))?;
    Ok(DeleteStatement {
        q,
        just_one: limit == 1,
        hint: s.get("hint").cloned(),
    })
}

fn delete_record(data: &mut Data, ns: &Namespace, rid: u64) -> Option<Arc<Document>> {
    let (coll, oplog) = data.collection_and_oplog(ns)?;
    let old = coll.delete_document(rid)?;
    let ui = coll.ui();
    let pre_image = coll.options.pre_and_post_images.then(|| old.clone());
    oplog.record(
        OplogOp::Delete {
            ns: ns.clone(),
            document_key: document_key(&old),
            pre_image,
        },
        Some(ui),
    );
    Some(old)
}

/// Deletes what one statement selects; returns how many documents it deleted.
fn run_delete_statement(
    data: &mut Data,
    ns: &Namespace,
    stmt: &DeleteStatement,
    vars: &Variables,
) -> Result<usize> {
    let matcher = Matcher::parse(&stmt.q)?;
    let rids = match data.collection(ns) {
        Some(c) => {
            check_hint(Some(c), stmt.hint.as_ref())?;
            c.matching(&matcher, vars, stmt.just_one)?
        }
        None => Vec::new(),
    };
    Ok(rids
        .into_iter()
        .filter(|rid| delete_record(data, ns, *rid).is_some())
        .count())
}

/// `delete` (manual: "delete"): `{n, writeErrors?}`.
pub fn delete(shared: &Shared, ctx: &CommandContext, cmd: &Document) -> Result<Document> {
    let coll = collection_name(cmd, "delete")?;
    check_known_fields(
        cmd,
        "delete",
        &["deletes", "ordered", "let", "stmtId", "stmtIds"],
    )?;
    let ns = Namespace::new(ctx.db.clone(), coll);
    validate_write_namespace(&ns)?;
    let statements = statement_array(cmd, "delete", "deletes")?
        .iter()
        .map(parse_delete_statement)
        .collect::<Result<Vec<_>>>()?;
    let ordered = opt_bool(cmd, "delete", "ordered")?.unwrap_or(true);
    let mut data = shared.data.lock();
    check_not_view(&data, &ns)?;
    let vars = variables(&data, cmd, "delete")?;
    let mut n = 0;
    let mut errors = Vec::new();
    for (i, stmt) in statements.iter().enumerate() {
        let mut run = |data: &mut Data| run_delete_statement(data, &ns, stmt, &vars);
        let kind = StatementKind {
            run: &mut run,
            record: &|n: &usize| StatementResult::Delete { n: *n },
            replay: &|r| match r {
                StatementResult::Delete { n } => Some(n),
                _ => None,
            },
            wrote: &|n: &usize| *n > 0,
        };
        match run_statement(shared, ctx, &mut data, &ns, i, kind) {
            Statement::Done(deleted) => n += deleted,
            Statement::Failed(e) => {
                errors.push(e.to_write_error(i));
                if ordered {
                    break;
                }
            }
        }
        if ctx.hang_up_requested() {
            break;
        }
    }
    Ok(write_reply(n, errors))
}

// ---------------------------------------------------------------------------------------
// find

pub(crate) fn opt_usize(cmd: &Document, command: &str, field: &str) -> Result<Option<usize>> {
    Ok(opt_count(cmd, command, field)?.map(|n| n as usize))
}

fn filter_of(cmd: &Document, command: &str, field: &str) -> Result<Document> {
    Ok(opt_document(cmd, command, field)?
        .cloned()
        .unwrap_or_default())
}

/// `find` (manual: "find"): `{cursor: {firstBatch, id, ns}}`, the first batch holding up to
/// `batchSize` (default 101) documents and a cursor for the rest.
pub fn find(shared: &Shared, ctx: &CommandContext, cmd: &Document) -> Result<Document> {
    const CMD: &str = "find";
    let coll = collection_name(cmd, CMD)?;
    check_known_fields(
        cmd,
        CMD,
        &[
            "filter",
            "sort",
            "projection",
            "skip",
            "limit",
            "batchSize",
            "singleBatch",
            "hint",
            "let",
            "allowDiskUse",
            "noCursorTimeout",
            "returnKey",
            "showRecordId",
            "tailable",
            "awaitData",
            "collation",
            "min",
            "max",
            "oplogReplay",
            "allowPartialResults",
            "readOnce",
            "term",
        ],
    )?;
    let ns = Namespace::new(ctx.db.clone(), coll);
    validate_namespace(&ns)?;
    let filter = filter_of(cmd, CMD, "filter")?;
    let sort = opt_document(cmd, CMD, "sort")?;
    let projection = opt_document(cmd, CMD, "projection")?;
    let skip = opt_usize(cmd, CMD, "skip")?.unwrap_or(0);
    let limit = opt_usize(cmd, CMD, "limit")?.filter(|n| *n > 0);
    let batch_size = opt_usize(cmd, CMD, "batchSize")?;
    let single_batch = opt_bool(cmd, CMD, "singleBatch")?.unwrap_or(false);
    let show_record_id = opt_bool(cmd, CMD, "showRecordId")?.unwrap_or(false);
    let tailable = opt_bool(cmd, CMD, "tailable")?.unwrap_or(false);
    let await_data = opt_bool(cmd, CMD, "awaitData")?.unwrap_or(false);
    opt_bool(cmd, CMD, "allowDiskUse")?;
    opt_bool(cmd, CMD, "noCursorTimeout")?;
    if opt_bool(cmd, CMD, "returnKey")?.unwrap_or(false) {
        return Err(CommandError::not_supported("returnKey is not supported"));
    }
    let min = opt_document(cmd, CMD, "min")?;
    let max = opt_document(cmd, CMD, "max")?;
    if await_data && !tailable {
        return Err(CommandError::failed_to_parse(
            "Cannot set 'awaitData' without also setting 'tailable'",
        ));
    }
    check_collation(cmd.get("collation"))?;
    let hint = cmd.get("hint");
    let matcher = Matcher::parse(&filter)?;
    let order = Order::parse(sort, hint)?;
    let projection = projection.map(Projection::parse).transpose()?;

    let data = shared.data.lock();
    if tailable {
        let capped = data
            .collection(&ns)
            .is_some_and(|c| c.options.capped.is_some());
        if is_oplog(&ns) || capped {
            return Err(CommandError::not_supported(
                "tailable cursors are not supported",
            ));
        }
        return Err(CommandError::bad_value(format!(
            "error processing query: ns={ns} planner returned error :: caused by :: tailable cursor requested on non capped collection"
        )));
    }
    let vars = variables(&data, cmd, CMD)?;
    // The oplog in natural order with a limit (the "oldest entry" or "newest entry" query of
    // monitoring tools) renders only the entries it reads, as mongod's collection scan stops
    // at the limit; rendering the whole oplog under the lock would stall every client.
    let early: Option<Vec<(u64, Document)>> = match (&order, limit) {
        (Order::Natural { forward }, Some(l)) if is_oplog(&ns) && hint.is_none() => Some(
            oplog_in_natural_order(&data.oplog, &matcher, &vars, *forward, skip + l)?,
        ),
        _ => None,
    };
    // With the documents already read, nothing else is opened (`Missing` renders nothing).
    let source = match early {
        Some(_) => Source::Missing,
        None => Source::open(&data, &ns)?,
    };
    check_hint(source.collection(), hint)?;
    let mut selected = match &early {
        Some(docs) => docs.iter().map(|(rid, d)| (*rid, d)).collect(),
        None => source.select(&matcher, &vars)?,
    };
    if min.is_some() || max.is_some() {
        selected = within_key_bounds(selected, source.collection(), hint, min, max)?;
    }
    if early.is_none() && (sort.is_some() || (min.is_none() && max.is_none())) {
        order.apply(&mut selected, |(_, d)| d);
    }
    let end = limit.map_or(selected.len(), |l| (skip + l).min(selected.len()));
    let mut results = Vec::with_capacity(end.saturating_sub(skip));
    for (rid, d) in selected.iter().take(end).skip(skip) {
        let mut out = match &projection {
            Some(p) => p.apply_matched(d, &vars, &matcher).map_err(|mut e| {
                if matches!(e.code, 51246 | 51247) {
                    e.errmsg = format!(
                        "Executor error during find command :: caused by :: {}",
                        e.errmsg
                    );
                }
                e
            })?,
            None => (*d).clone(),
        };
        if show_record_id {
            out.insert("$recordId", *rid as i64);
        }
        results.push(out);
    }
    drop(data);
    let cursor_ns = ns.to_string();
    Ok(cursor_reply(
        shared,
        ns,
        cursor_ns,
        results,
        batch_size,
        single_batch,
    ))
}

// ---------------------------------------------------------------------------------------
// findAndModify

/// `findAndModify` (manual: "findAndModify"): `{lastErrorObject: {n, updatedExisting?,
/// upserted?}, value}`.
pub fn find_and_modify(shared: &Shared, ctx: &CommandContext, cmd: &Document) -> Result<Document> {
    const CMD: &str = "findAndModify";
    let coll = collection_name(cmd, CMD)?;
    check_known_fields(
        cmd,
        CMD,
        &[
            "query",
            "sort",
            "remove",
            "update",
            "new",
            "fields",
            "upsert",
            "arrayFilters",
            "let",
            "bypassDocumentValidation",
            "hint",
            "collation",
            "stmtId",
        ],
    )?;
    let ns = Namespace::new(ctx.db.clone(), coll);
    validate_write_namespace(&ns)?;
    let query = filter_of(cmd, CMD, "query")?;
    let sort = opt_document(cmd, CMD, "sort")?;
    let remove = opt_bool(cmd, CMD, "remove")?.unwrap_or(false);
    let return_new = opt_bool(cmd, CMD, "new")?.unwrap_or(false);
    let upsert_requested = opt_bool(cmd, CMD, "upsert")?.unwrap_or(false);
    let fields = opt_document(cmd, CMD, "fields")?;
    let array_filters = parse_array_filters(cmd, CMD)?;
    let update_arg = cmd.get("update");
    // mongod's findAndModify request validation (find_and_modify_request / write_ops).
    if remove {
        if update_arg.is_some() {
            return Err(CommandError::failed_to_parse(
                "Cannot specify both an update and remove=true",
            ));
        }
        if upsert_requested {
            return Err(CommandError::failed_to_parse(
                "Cannot specify both upsert=true and remove=true ",
            ));
        }
        if return_new {
            return Err(CommandError::failed_to_parse(
                "Cannot specify both new=true and remove=true; 'remove' always returns the deleted document",
            ));
        }
        if cmd.contains_key("arrayFilters") {
            return Err(CommandError::failed_to_parse(
                "Cannot specify arrayFilters and remove=true",
            ));
        }
    } else if update_arg.is_none() {
        return Err(CommandError::failed_to_parse(
            "Either an update or remove=true must be specified",
        ));
    }
    check_collation(cmd.get("collation"))?;
    let hint = cmd.get("hint");
    let spec = update_arg.map(UpdateSpec::parse).transpose()?;
    let matcher = Matcher::parse(&query)?;
    let order = Order::parse(sort, None)?;
    let projection = fields.map(Projection::parse).transpose()?;

    let request = FindAndModify {
        ns,
        query,
        matcher,
        order,
        projection,
        spec,
        return_new,
        upsert_requested,
        array_filters,
        bypass: opt_bool(cmd, CMD, "bypassDocumentValidation")?.unwrap_or(false),
    };
    let mut data = shared.data.lock();
    check_not_view(&data, &request.ns)?;
    let vars = variables(&data, cmd, CMD)?;
    check_hint(data.collection(&request.ns), hint)?;
    let mut run = |data: &mut Data| request.apply(data, &vars);
    let kind = StatementKind {
        run: &mut run,
        record: &|reply: &Document| StatementResult::FindAndModify(reply.clone()),
        replay: &|r| match r {
            StatementResult::FindAndModify(reply) => Some(reply),
            _ => None,
        },
        wrote: &|reply: &Document| {
            reply
                .get_document("lastErrorObject")
                .is_ok_and(|l| l.get("n").and_then(as_i64) == Some(1))
        },
    };
    let ns = request.ns.clone();
    match run_statement(shared, ctx, &mut data, &ns, 0, kind) {
        Statement::Done(reply) => Ok(reply),
        Statement::Failed(e) => Err(e),
    }
}

/// A parsed `findAndModify`.
struct FindAndModify {
    ns: Namespace,
    query: Document,
    matcher: Matcher,
    order: Order,
    projection: Option<Projection>,
    /// `None` for `remove: true`.
    spec: Option<UpdateSpec>,
    return_new: bool,
    upsert_requested: bool,
    array_filters: Vec<Document>,
    bypass: bool,
}

impl FindAndModify {
    /// The record the command acts on: the first match in `sort` (or natural) order.
    fn target(&self, data: &Data, vars: &Variables) -> Result<Option<u64>> {
        let source = Source::open(data, &self.ns)?;
        let selected = source.select(&self.matcher, vars)?;
        Ok(match &self.order {
            Order::Natural { forward } => {
                if *forward {
                    selected.first().map(|(rid, _)| *rid)
                } else {
                    selected.last().map(|(rid, _)| *rid)
                }
            }
            Order::Spec(s) => selected
                .iter()
                .min_by(|a, b| s.compare(a.1, b.1))
                .map(|(rid, _)| *rid),
        })
    }

    /// Runs the command on the data; the reply's `lastErrorObject` and `value`.
    fn apply(&self, data: &mut Data, vars: &Variables) -> Result<Document> {
        let ns = &self.ns;
        let target = self.target(data, vars)?;
        let project = |d: &Document| -> Result<Bson> {
            Ok(Bson::Document(match &self.projection {
                Some(p) => p.apply_matched(d, vars, &self.matcher)?,
                None => d.clone(),
            }))
        };
        let Some(spec) = &self.spec else {
            let removed = target.and_then(|rid| delete_record(data, ns, rid));
            return Ok(match removed {
                Some(old) => doc! {"lastErrorObject": {"n": 1}, "value": project(&old)?},
                None => doc! {"lastErrorObject": {"n": 0}, "value": Bson::Null},
            });
        };
        let stored = |data: &Data, rid: u64| -> Result<Bson> {
            match data.collection(ns).and_then(|c| c.documents.get(&rid)) {
                Some(d) => project(d),
                None => Ok(Bson::Null),
            }
        };
        let return_new = self.return_new;
        match target {
            Some(rid) => {
                let before = if return_new {
                    Bson::Null
                } else {
                    stored(data, rid)?
                };
                let ctx_update = UpdateContext {
                    is_upsert_insert: false,
                    vars,
                    array_filters: &self.array_filters,
                    query: Some(&self.matcher),
                };
                update_record(data, ns, rid, spec, &ctx_update, self.bypass)?;
                let value = if return_new {
                    stored(data, rid)?
                } else {
                    before
                };
                Ok(doc! {"lastErrorObject": {"n": 1, "updatedExisting": true}, "value": value})
            }
            None if self.upsert_requested => {
                let env = UpsertEnv {
                    vars,
                    array_filters: &self.array_filters,
                    bypass: self.bypass,
                };
                let (rid, last_error) =
                    match upsert(data, ns, &self.query, &self.matcher, spec, &env)? {
                        Upserted::Inserted { id, rid } => {
                            (rid, doc! {"n": 1, "updatedExisting": false, "upserted": id})
                        }
                        Upserted::Updated { rid, .. } => {
                            (rid, doc! {"n": 1, "updatedExisting": true})
                        }
                    };
                let value = if return_new {
                    stored(data, rid)?
                } else {
                    Bson::Null
                };
                Ok(doc! {"lastErrorObject": last_error, "value": value})
            }
            None => Ok(
                doc! {"lastErrorObject": {"n": 0, "updatedExisting": false}, "value": Bson::Null},
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------
// count, distinct

/// `count` (manual: "count"): `{n}` after `skip` and `limit` (a negative limit counts as its
/// absolute value).
pub fn count(shared: &Shared, ctx: &CommandContext, cmd: &Document) -> Result<Document> {
    const CMD: &str = "count";
    let coll = collection_name(cmd, CMD)?;
    check_known_fields(
        cmd,
        CMD,
        &["query", "limit", "skip", "hint", "collation", "fields"],
    )?;
    let ns = Namespace::new(ctx.db.clone(), coll);
    validate_namespace(&ns)?;
    let query = filter_of(cmd, CMD, "query")?;
    let skip = opt_usize(cmd, CMD, "skip")?.unwrap_or(0);
    let limit = match cmd.get("limit") {
        None => None,
        Some(v) => Some(
            as_i64(v)
                .ok_or_else(|| wrong_type(CMD, "limit", v, "long"))?
                .unsigned_abs() as usize,
        ),
    }
    .filter(|n| *n > 0);
    check_collation(cmd.get("collation"))?;
    let matcher = Matcher::parse(&query)?;
    let data = shared.data.lock();
    let vars = variables(&data, cmd, CMD)?;
    let source = Source::open(&data, &ns)?;
    check_hint(source.collection(), cmd.get("hint"))?;
    let total = source.select(&matcher, &vars)?.len();
    let mut n = total.saturating_sub(skip);
    if let Some(l) = limit {
        n = n.min(l);
    }
    Ok(doc! {"n": count_bson(n)})
}

/// Values at `path`, expanding arrays along the way and at the end, as `distinct` sees them.
fn distinct_values<'a>(v: &'a Bson, parts: &[&str], out: &mut Vec<&'a Bson>) {
    let Some((head, rest)) = parts.split_first() else {
        match v {
            Bson::Array(a) => out.extend(a.iter()),
            other => out.push(other),
        }
        return;
    };
    match v {
        Bson::Document(d) => {
            if let Some(child) = d.get(*head) {
                distinct_values(child, rest, out);
            }
        }
        Bson::Array(a) => {
            if let Some(child) = head.parse::<usize>().ok().and_then(|i| a.get(i)) {
                distinct_values(child, rest, out);
            } else {
                for elem in a {
                    if let Bson::Document(d) = elem
                        && let Some(child) = d.get(*head)
                    {
                        distinct_values(child, rest, out);
                    }
                }
            }
        }
        _ => {}
    }
}

/// `distinct` (manual: "distinct"): `{values}`, array values contributing their elements,
/// in BSON order.
pub fn distinct(shared: &Shared, ctx: &CommandContext, cmd: &Document) -> Result<Document> {
    const CMD: &str = "distinct";
    let coll = collection_name(cmd, CMD)?;
    check_known_fields(cmd, CMD, &["key", "query", "hint", "collation"])?;
    let ns = Namespace::new(ctx.db.clone(), coll);
    validate_namespace(&ns)?;
    let key = crate::fields::require_str(cmd, CMD, "key")?;
    if key.is_empty() {
        return Err(CommandError::failed_to_parse(
            "FieldPath cannot be constructed with empty string",
        ));
    }
    let query = filter_of(cmd, CMD, "query")?;
    check_collation(cmd.get("collation"))?;
    let matcher = Matcher::parse(&query)?;
    let data = shared.data.lock();
    let vars = variables(&data, cmd, CMD)?;
    let source = Source::open(&data, &ns)?;
    check_hint(source.collection(), cmd.get("hint"))?;
    let parts: Vec<&str> = key.split('.').collect();
    let mut values: Vec<&Bson> = Vec::new();
    for (_, d) in source.select(&matcher, &vars)? {
        if let Some(v) = d.get(parts[0]) {
            distinct_values(v, &parts[1..], &mut values);
        }
    }
    values.sort_by(|a, b| compare(a, b));
    values.dedup_by(|a, b| compare(a, b) == Ordering::Equal);
    let values: Vec<Bson> = values.into_iter().cloned().collect();
    Ok(doc! {"values": values})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ServerOptions;

    fn shared() -> Shared {
        Shared::new(ServerOptions::default(), "127.0.0.1:1".into())
    }

    fn ctx() -> CommandContext {
        CommandContext {
            db: "db".into(),
            ..Default::default()
        }
    }

    fn oplog_ops(s: &Shared) -> Vec<String> {
        s.data
            .lock()
            .oplog
            .entries()
            .iter()
            .map(|e| {
                match &e.op {
                    OplogOp::Insert { .. } => "insert",
                    OplogOp::Update { .. } => "update",
                    OplogOp::Replace { .. } => "replace",
                    OplogOp::Delete { .. } => "delete",
                    OplogOp::Create { .. } => "create",
                    OplogOp::Drop { .. } => "drop",
                    OplogOp::Rename { .. } => "rename",
                    OplogOp::DropDatabase { .. } => "dropDatabase",
                    OplogOp::CreateIndexes { .. } => "createIndexes",
                    OplogOp::DropIndexes { .. } => "dropIndexes",
                    OplogOp::Modify { .. } => "modify",
                }
                .to_string()
            })
            .collect()
    }

    fn unique_index(s: &Shared) {
        let mut data = s.data.lock();
        let (c, _) = data.ensure_collection(&Namespace::new("db", "c"));
        c.create_index(
            &Namespace::new("db", "c"),
            crate::storage::IndexSpec {
                name: "aggregateId_1_sequenceNumber_1".into(),
                key: doc! {"aggregateId": 1, "sequenceNumber": 1},
                unique: true,
                sparse: false,
                expire_after_seconds: None,
                partial_filter: None,
                background: None,
            },
        )
        .unwrap();
    }

    fn find_all(s: &Shared) -> Vec<Document> {
        let r = find(s, &ctx(), &doc! {"find": "c"}).unwrap();
        r.get_document("cursor")
            .unwrap()
            .get_array("firstBatch")
            .unwrap()
            .iter()
            .map(|d| d.as_document().unwrap().clone())
            .collect()
    }

    #[test]
    fn insert_generates_id_first_and_records_create_then_inserts() {
        let s = shared();
        let r = insert(
            &s,
            &ctx(),
            &mut doc! {"insert": "c", "documents": [{"a": 1}, {"b": 2, "_id": 7}]},
        )
        .unwrap();
        assert_eq!(r, doc! {"n": 1 + 1});
        let docs = find_all(&s);
        assert_eq!(docs[0].keys().next().unwrap(), "_id");
        assert!(matches!(docs[0].get("_id"), Some(Bson::ObjectId(_))));
        assert_eq!(docs[1], doc! {"_id": 7, "b": 2});
        assert_eq!(oplog_ops(&s), vec!["create", "insert", "insert"]);
    }

    #[test]
    fn duplicate_keys_are_write_errors_ordered_stops_unordered_continues() {
        let s = shared();
        unique_index(&s);
        let docs = vec![
            doc! {"_id": 1, "aggregateId": "a", "sequenceNumber": 5},
            doc! {"_id": 2, "aggregateId": "a", "sequenceNumber": 5},
            doc! {"_id": 3, "aggregateId": "a", "sequenceNumber": 6},
        ];
        let r = insert(
            &s,
            &ctx(),
            &mut doc! {"insert": "c", "documents": docs.clone()},
        )
        .unwrap();
        assert_eq!(r.get_i32("n").unwrap(), 1);
        let errors = r.get_array("writeErrors").unwrap();
        assert_eq!(errors.len(), 1);
        let e = errors[0].as_document().unwrap();
        assert_eq!(e.get_i32("index").unwrap(), 1);
        assert_eq!(e.get_i32("code").unwrap(), 11000);
        assert_eq!(
            e.get_str("errmsg").unwrap(),
            "E11000 duplicate key error collection: db.c index: aggregateId_1_sequenceNumber_1 dup key: { aggregateId: \"a\", sequenceNumber: 5 }"
        );
        assert_eq!(
            e.get_document("keyPattern").unwrap(),
            &doc! {"aggregateId": 1, "sequenceNumber": 1}
        );
        assert_eq!(
            e.get_document("keyValue").unwrap(),
            &doc! {"aggregateId": "a", "sequenceNumber": 5}
        );

        let r = insert(
            &s,
            &ctx(),
            &mut doc! {"insert": "c", "documents": [
              {"_id": 1, "aggregateId": "b", "sequenceNumber": 1},
              {"_id": 4, "aggregateId": "b", "sequenceNumber": 1},
              {"_id": 5, "aggregateId": "b", "sequenceNumber": 1}],
            "ordered": false},
        )
        .unwrap();
        assert_eq!(r.get_i32("n").unwrap(), 1);
        let errors = r.get_array("writeErrors").unwrap();
        assert_eq!(errors.len(), 2);
        assert!(
            errors[0]
                .as_document()
                .unwrap()
                .get_str("errmsg")
                .unwrap()
                .contains("index: _id_ dup key: { _id: 1 }")
        );
        assert_eq!(
            errors[1].as_document().unwrap().get_i32("index").unwrap(),
            2
        );
    }

    #[test]
    fn bad_ids_and_oversized_documents_are_rejected() {
        let s = shared();
        let r = insert(
            &s,
            &ctx(),
            &mut doc! {"insert": "c", "documents": [{"_id": [1]}, {"_id": bson::Regex{pattern: "a".into(), options: "".into()}}], "ordered": false},
        )
        .unwrap();
        let errors = r.get_array("writeErrors").unwrap();
        let e0 = errors[0].as_document().unwrap();
        assert_eq!(e0.get_i32("code").unwrap(), 2);
        assert_eq!(e0.get_str("errmsg").unwrap(), "can't use an array for _id");
        assert_eq!(
            errors[1].as_document().unwrap().get_str("errmsg").unwrap(),
            "can't use a regex for _id"
        );
        let r = insert(
            &s,
            &ctx(),
            &mut doc! {"insert": "c", "documents": [{"_id": {"$gt": 1}}]},
        )
        .unwrap();
        let e = r.get_array("writeErrors").unwrap()[0]
            .as_document()
            .unwrap()
            .clone();
        assert_eq!(e.get_i32("code").unwrap(), 52);
        let r = insert(
            &s,
            &ctx(),
            &mut doc! {"insert": "c", "documents": [{"_id": 1, "$a": {"$b": 1}}]},
        )
        .unwrap();
        assert_eq!(r, doc! {"n": 1});
        let big = "x".repeat(MAX_USER_DOCUMENT_SIZE);
        let r = insert(
            &s,
            &ctx(),
            &mut doc! {"insert": "c", "documents": [{"s": big}]},
        )
        .unwrap();
        let e = r.get_array("writeErrors").unwrap()[0]
            .as_document()
            .unwrap()
            .clone();
        assert_eq!(e.get_i32("code").unwrap(), 10334);
    }

    #[test]
    fn invalid_namespaces_and_unknown_fields() {
        let s = shared();
        for coll in ["", "a$b", "system.users"] {
            let err =
                insert(&s, &ctx(), &mut doc! {"insert": coll, "documents": [{}]}).unwrap_err();
            assert_eq!(err.code, 73);
            assert_eq!(
                err.errmsg,
                format!("Invalid namespace specified 'db.{coll}'")
            );
        }
        let err = insert(
            &s,
            &ctx(),
            &mut doc! {"insert": "c", "documents": [{}], "x": 1},
        )
        .unwrap_err();
        assert_eq!(err.code, 40415);
        let err = update(
            &s,
            &ctx(),
            &doc! {"update": "c", "updates": [{"q": {}, "u": {}, "bogus": 1}]},
        )
        .unwrap_err();
        assert_eq!(
            err.errmsg,
            "BSON field 'update.updates.bogus' is an unknown field."
        );
        let err = update(
            &s,
            &ctx(),
            &doc! {"update": "c", "updates": [{"q": {}, "u": {}, "collation": {"locale": "fr"}}]},
        )
        .unwrap_err();
        assert_eq!(err.code, 115);
    }

    #[test]
    fn replacement_update_counts_matched_and_modified() {
        let s = shared();
        insert(
            &s,
            &ctx(),
            &mut doc! {"insert": "c", "documents": [{"_id": 1, "a": 1}]},
        )
        .unwrap();
        let r = update(
            &s,
            &ctx(),
            &doc! {"update": "c", "updates": [{"q": {}, "u": {"a": 2}}]},
        )
        .unwrap();
        assert_eq!(r, doc! {"n": 1, "nModified": 1});
        assert_eq!(find_all(&s), vec![doc! {"_id": 1, "a": 2}]);
        let r = update(
            &s,
            &ctx(),
            &doc! {"update": "c", "updates": [{"q": {}, "u": {"a": 2}}]},
        )
        .unwrap();
        assert_eq!(r, doc! {"n": 1, "nModified": 0});
        assert_eq!(oplog_ops(&s), vec!["create", "insert", "replace"]);
        // Reordering fields is a change, as mongod compares the stored bytes.
        insert(
            &s,
            &ctx(),
            &mut doc! {"insert": "d", "documents": [{"_id": 1, "a": 1, "b": 2}]},
        )
        .unwrap();
        let r = update(
            &s,
            &ctx(),
            &doc! {"update": "d", "updates": [{"q": {}, "u": {"b": 2, "a": 1}}]},
        )
        .unwrap();
        assert_eq!(r, doc! {"n": 1, "nModified": 1});
        let r = update(
            &s,
            &ctx(),
            &doc! {"update": "d", "updates": [{"q": {}, "u": {"b": 2, "a": 1.0}}]},
        )
        .unwrap();
        assert_eq!(r, doc! {"n": 1, "nModified": 1});
        let r = update(
            &s,
            &ctx(),
            &doc! {"update": "c", "updates": [{"q": {}, "u": {"a": 3}, "multi": true}]},
        )
        .unwrap();
        let e = r.get_array("writeErrors").unwrap()[0]
            .as_document()
            .unwrap()
            .clone();
        assert_eq!(e.get_i32("code").unwrap(), 9);
        assert_eq!(
            e.get_str("errmsg").unwrap(),
            "multi update is not supported for replacement-style update"
        );
    }

    #[test]
    fn replacement_that_collides_on_a_unique_index_is_a_write_error() {
        let s = shared();
        unique_index(&s);
        insert(
            &s,
            &ctx(),
            &mut doc! {"insert": "c", "documents": [
            {"_id": 1, "aggregateId": "a", "sequenceNumber": 1},
            {"_id": 2, "aggregateId": "a", "sequenceNumber": 2}]},
        )
        .unwrap();
        let r = update(
            &s,
            &ctx(),
            &doc! {"update": "c", "updates": [{"q": {}, "u": {"aggregateId": "a", "sequenceNumber": 2}}]},
        )
        .unwrap();
        let e = r.get_array("writeErrors").unwrap()[0]
            .as_document()
            .unwrap()
            .clone();
        assert_eq!(e.get_i32("code").unwrap(), 11000);
        assert_eq!(r.get_i32("nModified").unwrap(), 0);
    }

    #[test]
    fn upsert_inserts_the_seed_and_reports_upserted() {
        let s = shared();
        let r = update(
            &s,
            &ctx(),
            &doc! {"update": "c", "updates": [{"q": {"k": "x"}, "u": {"$set": {"v": 1}}, "upsert": true}]},
        )
        .unwrap();
        assert_eq!(r.get_i32("n").unwrap(), 1);
        assert_eq!(r.get_i32("nModified").unwrap(), 0);
        let up = r.get_array("upserted").unwrap()[0]
            .as_document()
            .unwrap()
            .clone();
        assert_eq!(up.get_i32("index").unwrap(), 0);
        let docs = find_all(&s);
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].get("_id"), up.get("_id"));
        assert_eq!(docs[0].get_str("k").unwrap(), "x");
        assert_eq!(docs[0].get_i32("v").unwrap(), 1);
        let ops = oplog_ops(&s);
        assert_eq!(ops, vec!["create", "insert"]);
    }

    #[test]
    fn replacement_upsert_keeps_the_filter_id() {
        let s = shared();
        let r = update(
            &s,
            &ctx(),
            &doc! {"update": "c", "updates": [{"q": {"_id": 5}, "u": {"v": 1}, "upsert": true}]},
        )
        .unwrap();
        assert_eq!(
            r.get_array("upserted").unwrap()[0].as_document().unwrap(),
            &doc! {"index": 0, "_id": 5}
        );
        assert_eq!(find_all(&s), vec![doc! {"_id": 5, "v": 1}]);
    }

    #[test]
    fn guarded_upsert_against_an_existing_document_fails_with_duplicate_key() {
        // The filter {_id, version} does not match the stored version, so the upsert tries to
        // insert a second document with the same _id; the filter is not equality on exactly
        // the _id index's fields, so mongod reports E11000 instead of retrying.
        let s = shared();
        insert(
            &s,
            &ctx(),
            &mut doc! {"insert": "c", "documents": [{"_id": "p", "version": 2}]},
        )
        .unwrap();
        let r = update(
            &s,
            &ctx(),
            &doc! {"update": "c", "updates": [{"q": {"_id": "p", "version": 1}, "u": {"$set": {"version": 2}}, "upsert": true}]},
        )
        .unwrap();
        let e = r.get_array("writeErrors").unwrap()[0]
            .as_document()
            .unwrap()
            .clone();
        assert_eq!(e.get_i32("code").unwrap(), 11000);
        assert_eq!(e.get_document("keyValue").unwrap(), &doc! {"_id": "p"});
        assert_eq!(r.get_i32("n").unwrap(), 0);
    }

    #[test]
    fn upsert_retry_rule_requires_equality_on_exactly_the_index_fields() {
        let err = crate::storage::duplicate_key_error(
            &Namespace::new("db", "c"),
            "_id_",
            &doc! {"_id": 1},
            doc! {"_id": 1},
        );
        assert!(upsert_retry_allowed(
            &doc! {"_id": 1},
            &doc! {"_id": 1, "a": 1},
            &err
        ));
        assert!(upsert_retry_allowed(
            &doc! {"$and": [{"_id": {"$eq": 1}}]},
            &doc! {"_id": 1},
            &err
        ));
        assert!(!upsert_retry_allowed(
            &doc! {"_id": 1, "v": 2},
            &doc! {"_id": 1, "v": 2},
            &err
        ));
        assert!(!upsert_retry_allowed(
            &doc! {"_id": {"$gt": 1}},
            &doc! {"_id": 2},
            &err
        ));
        let compound = crate::storage::duplicate_key_error(
            &Namespace::new("db", "c"),
            "a_1_b_1",
            &doc! {"a": 1, "b": 1},
            doc! {"a": 1, "b": 1},
        );
        assert!(upsert_retry_allowed(
            &doc! {"b": 1, "a": 1},
            &doc! {"_id": 0, "a": 1, "b": 1},
            &compound
        ));
        assert!(!upsert_retry_allowed(
            &doc! {"a": 1, "b": 1},
            &doc! {"_id": 0, "a": 1, "b": 2},
            &compound
        ));
    }

    #[test]
    fn operator_update_records_before_and_after() {
        let s = shared();
        insert(
            &s,
            &ctx(),
            &mut doc! {"insert": "c", "documents": [{"_id": 1, "a": 1}]},
        )
        .unwrap();
        let r = update(
            &s,
            &ctx(),
            &doc! {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"$set": {"a": 2}}}]},
        )
        .unwrap();
        assert_eq!(r, doc! {"n": 1, "nModified": 1});
        let data = s.data.lock();
        let last = data.oplog.entries().back().unwrap();
        match &last.op {
            OplogOp::Update {
                before,
                after,
                document_key,
                ..
            } => {
                assert_eq!(before, &doc! {"_id": 1, "a": 1});
                assert_eq!(after, &doc! {"_id": 1, "a": 2});
                assert_eq!(document_key, &doc! {"_id": 1});
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn delete_limits_and_records() {
        let s = shared();
        insert(
            &s,
            &ctx(),
            &mut doc! {"insert": "c", "documents": [{"_id": 1}, {"_id": 2}, {"_id": 3}]},
        )
        .unwrap();
        let err = delete(
            &s,
            &ctx(),
            &doc! {"delete": "c", "deletes": [{"q": {}, "limit": 2}]},
        )
        .unwrap_err();
        assert_eq!(err.code, 9);
        assert_eq!(
            err.errmsg,
            "The limit field in delete objects must be 0 or 1. Got 2"
        );
        let r = delete(
            &s,
            &ctx(),
            &doc! {"delete": "c", "deletes": [{"q": {}, "limit": 1}]},
        )
        .unwrap();
        assert_eq!(r, doc! {"n": 1});
        assert_eq!(find_all(&s), vec![doc! {"_id": 2}, doc! {"_id": 3}]);
        let r = delete(
            &s,
            &ctx(),
            &doc! {"delete": "c", "deletes": [{"q": {}, "limit": 0}]},
        )
        .unwrap();
        assert_eq!(r, doc! {"n": 2});
        let ops = oplog_ops(&s);
        assert_eq!(&ops[ops.len() - 3..], &["delete", "delete", "delete"]);
        let data = s.data.lock();
        match &data.oplog.entries().back().unwrap().op {
            OplogOp::Delete { document_key, .. } => assert_eq!(document_key, &doc! {"_id": 3}),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unknown_hints_are_write_errors() {
        let s = shared();
        insert(
            &s,
            &ctx(),
            &mut doc! {"insert": "c", "documents": [{"_id": 1}]},
        )
        .unwrap();
        let r = delete(
            &s,
            &ctx(),
            &doc! {"delete": "c", "deletes": [{"q": {}, "limit": 1, "hint": "nope_1"}]},
        )
        .unwrap();
        let e = r.get_array("writeErrors").unwrap()[0]
            .as_document()
            .unwrap()
            .clone();
        assert_eq!(e.get_i32("code").unwrap(), 2);
        let r = update(
            &s,
            &ctx(),
            &doc! {"update": "c", "updates": [{"q": {}, "u": {"a": 1}, "hint": {"a": 1}}]},
        )
        .unwrap();
        assert_eq!(r.get_array("writeErrors").unwrap().len(), 1);
        let r = update(
            &s,
            &ctx(),
            &doc! {"update": "c", "updates": [{"q": {}, "u": {"a": 1}, "hint": "_id_"}]},
        )
        .unwrap();
        assert_eq!(r, doc! {"n": 1, "nModified": 1});
    }

    #[test]
    fn delete_by_id_uses_the_filter() {
        let s = shared();
        insert(
            &s,
            &ctx(),
            &mut doc! {"insert": "c", "documents": [{"_id": 1}, {"_id": 2}]},
        )
        .unwrap();
        let r = delete(
            &s,
            &ctx(),
            &doc! {"delete": "c", "deletes": [{"q": {"_id": 2}, "limit": 1}]},
        )
        .unwrap();
        assert_eq!(r, doc! {"n": 1});
        assert_eq!(find_all(&s), vec![doc! {"_id": 1}]);
    }

    #[test]
    fn find_batches_through_a_query_cursor() {
        let s = shared();
        let docs: Vec<Document> = (0..250).map(|i| doc! {"_id": i}).collect();
        insert(&s, &ctx(), &mut doc! {"insert": "c", "documents": docs}).unwrap();
        let r = find(&s, &ctx(), &doc! {"find": "c"}).unwrap();
        let cursor = r.get_document("cursor").unwrap();
        assert_eq!(cursor.get_array("firstBatch").unwrap().len(), 101);
        assert_eq!(cursor.get_str("ns").unwrap(), "db.c");
        let id = cursor.get_i64("id").unwrap();
        assert_ne!(id, 0);
        assert_eq!(s.cursors.lock().len(), 1);

        let r = find(
            &s,
            &ctx(),
            &doc! {"find": "c", "batchSize": 10, "skip": 5, "limit": 12},
        )
        .unwrap();
        let cursor = r.get_document("cursor").unwrap();
        let first = cursor.get_array("firstBatch").unwrap();
        assert_eq!(first.len(), 10);
        assert_eq!(first[0].as_document().unwrap(), &doc! {"_id": 5});

        let r = find(
            &s,
            &ctx(),
            &doc! {"find": "c", "batchSize": 10, "singleBatch": true},
        )
        .unwrap();
        assert_eq!(r.get_document("cursor").unwrap().get_i64("id").unwrap(), 0);

        let r = find(
            &s,
            &ctx(),
            &doc! {"find": "c", "sort": {"$natural": -1}, "limit": 2},
        )
        .unwrap();
        let first = r
            .get_document("cursor")
            .unwrap()
            .get_array("firstBatch")
            .unwrap()
            .clone();
        assert_eq!(
            first,
            vec![
                Bson::Document(doc! {"_id": 249}),
                Bson::Document(doc! {"_id": 248})
            ]
        );
    }

    #[test]
    fn find_on_a_missing_collection_and_tailable_errors() {
        let s = shared();
        let r = find(&s, &ctx(), &doc! {"find": "nope"}).unwrap();
        assert_eq!(
            r,
            doc! {"cursor": {"firstBatch": [], "id": 0i64, "ns": "db.nope"}}
        );
        let err = find(&s, &ctx(), &doc! {"find": "c", "tailable": true}).unwrap_err();
        assert_eq!(err.code, 2);
        assert!(
            err.errmsg
                .contains("tailable cursor requested on non capped collection")
        );
        let err = find(&s, &ctx(), &doc! {"find": "c", "limit": -1}).unwrap_err();
        assert_eq!(err.code, 2);
    }

    #[test]
    fn find_with_filter_projection_and_sort() {
        let s = shared();
        insert(&s, &ctx(), &mut doc! {"insert": "c", "documents": [
            {"_id": 1, "a": 2, "b": "x"}, {"_id": 2, "a": 1, "b": "y"}, {"_id": 3, "a": 2, "b": "z"}]}).unwrap();
        let r = find(
            &s,
            &ctx(),
            &doc! {"find": "c", "filter": {"a": 2}, "sort": {"b": -1}, "projection": {"b": 1, "_id": 0}},
        )
        .unwrap();
        assert_eq!(
            r.get_document("cursor")
                .unwrap()
                .get_array("firstBatch")
                .unwrap(),
            &vec![
                Bson::Document(doc! {"b": "z"}),
                Bson::Document(doc! {"b": "x"})
            ]
        );
    }

    #[test]
    fn find_and_modify_argument_errors() {
        let s = shared();
        let cases = [
            (
                doc! {"findAndModify": "c", "remove": true, "update": {}},
                "Cannot specify both an update and remove=true",
            ),
            (
                doc! {"findAndModify": "c"},
                "Either an update or remove=true must be specified",
            ),
            (
                doc! {"findAndModify": "c", "remove": true, "new": true},
                "Cannot specify both new=true and remove=true; 'remove' always returns the deleted document",
            ),
            (
                doc! {"findAndModify": "c", "remove": true, "upsert": true},
                "Cannot specify both upsert=true and remove=true ",
            ),
        ];
        for (cmd, msg) in cases {
            let err = find_and_modify(&s, &ctx(), &cmd).unwrap_err();
            assert_eq!((err.code, err.errmsg.as_str()), (9, msg));
        }
    }

    #[test]
    fn find_and_modify_replaces_removes_and_upserts() {
        let s = shared();
        insert(
            &s,
            &ctx(),
            &mut doc! {"insert": "c", "documents": [{"_id": 1, "a": 1}]},
        )
        .unwrap();
        let r = find_and_modify(
            &s,
            &ctx(),
            &doc! {"findAndModify": "c", "query": {}, "update": {"a": 2}},
        )
        .unwrap();
        assert_eq!(
            r,
            doc! {"lastErrorObject": {"n": 1, "updatedExisting": true}, "value": {"_id": 1, "a": 1}}
        );
        let r = find_and_modify(
            &s,
            &ctx(),
            &doc! {"findAndModify": "c", "query": {}, "update": {"a": 3}, "new": true},
        )
        .unwrap();
        assert_eq!(r.get_document("value").unwrap(), &doc! {"_id": 1, "a": 3});
        let r = find_and_modify(
            &s,
            &ctx(),
            &doc! {"findAndModify": "c", "query": {}, "remove": true},
        )
        .unwrap();
        assert_eq!(
            r,
            doc! {"lastErrorObject": {"n": 1}, "value": {"_id": 1, "a": 3}}
        );
        let r = find_and_modify(
            &s,
            &ctx(),
            &doc! {"findAndModify": "c", "query": {}, "remove": true},
        )
        .unwrap();
        assert_eq!(r, doc! {"lastErrorObject": {"n": 0}, "value": null});
        let r = find_and_modify(&s, &ctx(), &doc! {"findAndModify": "c", "query": {"_id": 9}, "update": {"a": 1}, "upsert": true, "new": true}).unwrap();
        assert_eq!(
            r,
            doc! {"lastErrorObject": {"n": 1, "updatedExisting": false, "upserted": 9}, "value": {"_id": 9, "a": 1}}
        );
        assert_eq!(
            oplog_ops(&s),
            vec!["create", "insert", "replace", "replace", "delete", "insert"]
        );
    }

    #[test]
    fn count_and_distinct() {
        let s = shared();
        insert(
            &s,
            &ctx(),
            &mut doc! {"insert": "c", "documents": [
            {"_id": 1, "t": [2, 1]}, {"_id": 2, "t": 1.0}, {"_id": 3, "t": "a"}, {"_id": 4}]},
        )
        .unwrap();
        assert_eq!(
            count(&s, &ctx(), &doc! {"count": "c"}).unwrap(),
            doc! {"n": 4}
        );
        assert_eq!(
            count(&s, &ctx(), &doc! {"count": "c", "skip": 1, "limit": -2}).unwrap(),
            doc! {"n": 2}
        );
        assert_eq!(
            count(&s, &ctx(), &doc! {"count": "missing"}).unwrap(),
            doc! {"n": 0}
        );
        let r = distinct(&s, &ctx(), &doc! {"distinct": "c", "key": "t"}).unwrap();
        assert_eq!(r, doc! {"values": [1, 2, "a"]});
    }

    #[test]
    fn aggregate_requires_cursor_and_a_collectionless_first_stage_at_database_level() {
        use crate::commands::aggregation::aggregate;
        let s = shared();
        let err = aggregate(&s, &ctx(), &doc! {"aggregate": "c", "pipeline": []}).unwrap_err();
        assert_eq!(err.code, 9);
        assert_eq!(
            err.errmsg,
            "The 'cursor' option is required, except for aggregate with the explain argument"
        );
        let err = aggregate(
            &s,
            &ctx(),
            &doc! {"aggregate": 1, "pipeline": [{"$match": {}}], "cursor": {}},
        )
        .unwrap_err();
        assert_eq!(err.code, 73);
        let err = aggregate(
            &s,
            &ctx(),
            &doc! {"aggregate": "c", "pipeline": [], "cursor": {}, "explain": true},
        )
        .unwrap_err();
        assert_eq!(err.code, 115);
        insert(
            &s,
            &ctx(),
            &mut doc! {"insert": "c", "documents": [{"_id": 1}, {"_id": 2}, {"_id": 3}]},
        )
        .unwrap();
        let r = aggregate(
            &s,
            &ctx(),
            &doc! {"aggregate": "c", "pipeline": [], "cursor": {"batchSize": 2}},
        )
        .unwrap();
        let cursor = r.get_document("cursor").unwrap();
        assert_eq!(cursor.get_array("firstBatch").unwrap().len(), 2);
        assert_ne!(cursor.get_i64("id").unwrap(), 0);
    }

    #[test]
    fn insert_many_with_a_unique_compound_index_keeps_every_document() {
        let s = shared();
        unique_index(&s);
        for batch in 0..20 {
            let docs: Vec<Document> = (0..1000)
                .map(|i| doc! {"aggregateId": format!("agg-{batch}"), "sequenceNumber": i, "payload": {"x": i, "y": "some text"}})
                .collect();
            let r = insert(&s, &ctx(), &mut doc! {"insert": "c", "documents": docs}).unwrap();
            assert_eq!(r.get_i32("n").unwrap(), 1000);
        }
        assert_eq!(
            s.data
                .lock()
                .collection(&Namespace::new("db", "c"))
                .unwrap()
                .documents
                .len(),
            20_000
        );
    }
}
