//! Collections, databases and indexes: create, drop, dropDatabase, renameCollection,
//! listCollections, listDatabases, createIndexes, listIndexes, dropIndexes.

#![allow(clippy::result_large_err)] // CommandError carries mongod's extra reply fields.

use crate::catalog::{CollectionOptions, View};
use crate::commands::crud::{
    check_collation, collection_name, cursor_reply, validate_namespace, validate_write_namespace,
};
use crate::compare::as_f64;
use crate::error::{self, CommandError, Result};
use crate::expr::Variables;
use crate::fields::{check_known_fields, missing, opt_bool, opt_count, opt_document, require_str};
use crate::oplog::{Namespace, OplogOp};
use crate::query::Matcher;
use crate::state::{CommandContext, Shared};
use crate::storage::{IndexSpec, same_key_pattern, shell_document};
use bson::{Binary, Bson, Document, doc};

fn cursor_batch_size(cmd: &Document, command: &str) -> Result<Option<usize>> {
    match opt_document(cmd, command, "cursor")? {
        Some(c) => Ok(opt_count(c, &format!("{command}.cursor"), "batchSize")?.map(|n| n as usize)),
        None => Ok(None),
    }
}

fn filter_variables(shared: &Shared) -> Variables {
    let ts = shared.data.lock().oplog.last_ts();
    Variables::new(bson::DateTime::now(), ts)
}

/// Keeps the entries a `filter` document selects.
fn filtered(
    entries: Vec<Document>,
    filter: Option<&Document>,
    vars: &Variables,
) -> Result<Vec<Document>> {
    let Some(filter) = filter.filter(|f| !f.is_empty()) else {
        return Ok(entries);
    };
    let matcher = Matcher::parse(filter)?;
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        if matcher.matches(&e, vars)? {
            out.push(e);
        }
    }
    Ok(out)
}

/// `create` (manual: "create"): a collection with its options (validation, pre- and
/// post-images), or a read-only view (`viewOn`, `pipeline`). Capped, time-series, clustered
/// and encrypted collections fail with 115.
pub fn create(shared: &Shared, ctx: &CommandContext, cmd: &Document) -> Result<Document> {
    const CMD: &str = "create";
    const UNSUPPORTED: &[&str] = &[
        "autoIndexId",
        "idIndex",
        "storageEngine",
        "indexOptionDefaults",
        "timeseries",
        "expireAfterSeconds",
        "clusteredIndex",
        "encryptedFields",
    ];
    let coll = collection_name(cmd, CMD)?;
    let mut allowed = vec![
        "capped",
        "size",
        "max",
        "collation",
        "validator",
        "validationLevel",
        "validationAction",
        "changeStreamPreAndPostImages",
        "viewOn",
        "pipeline",
    ];
    allowed.extend_from_slice(UNSUPPORTED);
    check_known_fields(cmd, CMD, &allowed)?;
    let ns = Namespace::new(ctx.db.clone(), coll);
    validate_write_namespace(&ns)?;
    if let Some(option) = UNSUPPORTED.iter().find(|o| cmd.contains_key(**o)) {
        return Err(CommandError::not_supported(format!(
            "the create option '{option}' is not supported"
        )));
    }
    check_collation(cmd.get("collation"))?;
    let view = if cmd.contains_key("viewOn") || cmd.contains_key("pipeline") {
        Some(View::parse(cmd, CMD)?)
    } else {
        None
    };
    let mut options = CollectionOptions::default();
    options.apply(cmd, CMD)?;
    options.capped = crate::catalog::Capped::parse(cmd)?;
    let mut data = shared.data.lock();
    if data.collection(&ns).is_some() || data.view(&ns).is_some() {
        return Err(CommandError::new(
            error::NAMESPACE_EXISTS,
            format!("Collection {ns} already exists."),
        ));
    }
    match view {
        Some(view) => {
            let description = view.to_document();
            data.databases
                .entry(ns.db.clone())
                .or_default()
                .views
                .insert(ns.coll.clone(), view);
            // A view has no UUID; only expanded change streams report its creation.
            data.oplog.record(OplogOp::Create { ns, description }, None);
        }
        None => {
            let db = data.databases.entry(ns.db.clone()).or_default();
            let mut collection = crate::storage::Collection::new();
            collection.options = options;
            let description = crate::catalog::create_description(&collection.options);
            let ui = collection.ui();
            db.collections.insert(ns.coll.clone(), collection);
            data.oplog
                .record(OplogOp::Create { ns, description }, Some(ui));
        }
    }
    Ok(Document::new())
}

/// `drop` (manual: "drop"): `{nIndexesWas, ns}`; dropping a missing collection succeeds
/// (mongod 7.0).
pub fn drop(shared: &Shared, ctx: &CommandContext, cmd: &Document) -> Result<Document> {
    const CMD: &str = "drop";
    let coll = collection_name(cmd, CMD)?;
    check_known_fields(cmd, CMD, &[])?;
    let ns = Namespace::new(ctx.db.clone(), coll);
    validate_namespace(&ns)?;
    if ns.db == "local" && ns.coll == "oplog.rs" {
        return Err(CommandError::new(
            error::ILLEGAL_OPERATION,
            "can't drop live oplog while replicating",
        ));
    }
    let mut data = shared.data.lock();
    // Dropping a view removes its definition; mongod reports it only to expanded streams
    // through `system.views`, which this server does not keep.
    if let Some(db) = data.databases.get_mut(&ns.db)
        && db.views.remove(&ns.coll).is_some()
    {
        data.forget_if_empty(&ns.db);
        return Ok(doc! {"ns": ns.to_string()});
    }
    let removed = data
        .databases
        .get_mut(&ns.db)
        .and_then(|db| db.collections.remove(&ns.coll));
    let Some(removed) = removed else {
        return Ok(Document::new());
    };
    data.oplog
        .record(OplogOp::Drop { ns: ns.clone() }, Some(removed.ui()));
    data.forget_if_empty(&ns.db);
    Ok(doc! {"nIndexesWas": removed.indexes.len() as i32, "ns": ns.to_string()})
}

/// `dropDatabase` (manual: "dropDatabase"): drops every collection (a `drop` entry each),
/// then records the database drop.
pub fn drop_database(shared: &Shared, ctx: &CommandContext, cmd: &Document) -> Result<Document> {
    const CMD: &str = "dropDatabase";
    check_known_fields(cmd, CMD, &[])?;
    let db = ctx.db.clone();
    match db.as_str() {
        "admin" | "config" => {
            return Err(CommandError::new(
                error::ILLEGAL_OPERATION,
                format!("Dropping the '{db}' database is prohibited."),
            ));
        }
        "local" => {
            return Err(CommandError::new(
                error::ILLEGAL_OPERATION,
                "Cannot drop 'local' database while replication is active",
            ));
        }
        _ => {}
    }
    let mut data = shared.data.lock();
    let Some(database) = data.databases.remove(&db) else {
        return Ok(Document::new());
    };
    for (name, coll) in &database.collections {
        data.oplog.record(
            OplogOp::Drop {
                ns: Namespace::new(db.clone(), name.clone()),
            },
            Some(coll.ui()),
        );
    }
    data.oplog
        .record(OplogOp::DropDatabase { db: db.clone() }, None);
    Ok(doc! {"dropped": db})
}

fn parse_full_namespace(s: &str, which: &str) -> Result<Namespace> {
    match s.split_once('.') {
        Some((db, coll)) if !db.is_empty() && !coll.is_empty() => Ok(Namespace::new(db, coll)),
        _ => Err(CommandError::new(
            error::INVALID_NAMESPACE,
            format!("Invalid {which} namespace: {s}"),
        )),
    }
}

/// `renameCollection` (manual: "renameCollection"): within one database; `dropTarget`
/// replaces an existing target (recorded as its drop, then the rename).
pub fn rename_collection(
    shared: &Shared,
    ctx: &CommandContext,
    cmd: &Document,
) -> Result<Document> {
    const CMD: &str = "renameCollection";
    if ctx.db != "admin" {
        return Err(CommandError::from_code(
            13,
            "renameCollection may only be run against the admin database.",
        ));
    }
    check_known_fields(cmd, CMD, &["to", "dropTarget", "stayTemp"])?;
    let from = parse_full_namespace(collection_name(cmd, CMD)?, "source")?;
    let to = parse_full_namespace(require_str(cmd, CMD, "to")?, "target")?;
    validate_namespace(&from)?;
    validate_write_namespace(&to).map_err(|_| {
        CommandError::new(
            error::INVALID_NAMESPACE,
            format!("Invalid target namespace: {to}"),
        )
    })?;
    let drop_target = opt_bool(cmd, CMD, "dropTarget")?.unwrap_or(false);
    opt_bool(cmd, CMD, "stayTemp")?;
    if from == to {
        return Err(CommandError::new(
            error::ILLEGAL_OPERATION,
            "Can't rename a collection to itself",
        ));
    }
    let mut data = shared.data.lock();
    if data.collection(&from).is_none() {
        return Err(CommandError::new(
            error::NAMESPACE_NOT_FOUND,
            format!("Source collection {from} does not exist"),
        ));
    }
    if from.db != to.db {
        return Err(CommandError::not_supported(
            "renameCollection across databases is not supported",
        ));
    }
    // A `dropTarget` rename is one oplog entry naming the replaced collection's UUID
    // (mongod 4.2+), not a drop followed by a rename.
    let mut replaced = None;
    if let Some(target) = data.collection(&to) {
        if !drop_target {
            return Err(CommandError::new(
                error::NAMESPACE_EXISTS,
                "target namespace exists",
            ));
        }
        replaced = Some(target.ui());
        if let Some(db) = data.databases.get_mut(&to.db) {
            db.collections.remove(&to.coll);
        }
    }
    let Some(moved) = data
        .databases
        .get_mut(&from.db)
        .and_then(|db| db.collections.remove(&from.coll))
    else {
        return Err(CommandError::new(
            error::NAMESPACE_NOT_FOUND,
            format!("Source collection {from} does not exist"),
        ));
    };
    let ui = moved.ui();
    data.databases
        .entry(to.db.clone())
        .or_default()
        .collections
        .insert(to.coll.clone(), moved);
    data.oplog.record(
        OplogOp::Rename {
            from: from.clone(),
            to: to.clone(),
            drop_target: replaced,
        },
        Some(ui),
    );
    data.forget_if_empty(&from.db);
    Ok(Document::new())
}

fn id_index_document() -> Document {
    doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"}
}

/// One `listCollections` entry per collection and view of `db`, in name order: a
/// collection with its options, UUID and `_id` index, a view with its definition.
fn collection_entries(data: &crate::storage::Data, db: &str, name_only: bool) -> Vec<Document> {
    let mut entries: Vec<(String, Document)> = Vec::new();
    if let Some(database) = data.databases.get(db) {
        for (name, c) in &database.collections {
            let entry = if name_only {
                doc! {"name": name.clone(), "type": "collection"}
            } else {
                doc! {
                    "name": name.clone(),
                    "type": "collection",
                    "options": c.options.to_document(),
                    "info": {"readOnly": false, "uuid": Binary::from_uuid(c.uuid)},
                    "idIndex": id_index_document(),
                }
            };
            entries.push((name.clone(), entry));
        }
        for (name, view) in &database.views {
            let entry = if name_only {
                doc! {"name": name.clone(), "type": "view"}
            } else {
                doc! {
                    "name": name.clone(),
                    "type": "view",
                    "options": view.to_document(),
                    "info": {"readOnly": true},
                }
            };
            entries.push((name.clone(), entry));
        }
    }
    if db == "local" && !entries.iter().any(|(n, _)| n == "oplog.rs") {
        let entry = if name_only {
            doc! {"name": "oplog.rs", "type": "collection"}
        } else {
            doc! {
                "name": "oplog.rs",
                "type": "collection",
                "options": {"capped": true, "size": 1_i64 << 30},
                "info": {"readOnly": false},
            }
        };
        entries.push(("oplog.rs".to_string(), entry));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries.into_iter().map(|(_, e)| e).collect()
}

/// `listCollections` (manual: "listCollections"): one entry per collection, filtered by
/// `filter` over `{name, type, options, info}`.
pub fn list_collections(shared: &Shared, ctx: &CommandContext, cmd: &Document) -> Result<Document> {
    const CMD: &str = "listCollections";
    check_known_fields(
        cmd,
        CMD,
        &[
            "filter",
            "nameOnly",
            "authorizedCollections",
            "cursor",
            "includePendingDrops",
        ],
    )?;
    let filter = opt_document(cmd, CMD, "filter")?;
    let name_only = opt_bool(cmd, CMD, "nameOnly")?.unwrap_or(false);
    opt_bool(cmd, CMD, "authorizedCollections")?;
    let batch_size = cursor_batch_size(cmd, CMD)?;
    let vars = filter_variables(shared);
    let entries = {
        let data = shared.data.lock();
        collection_entries(&data, &ctx.db, name_only)
    };
    let entries = filtered(entries, filter, &vars)?;
    let ns = Namespace::new(ctx.db.clone(), "$cmd.listCollections");
    let cursor_ns = ns.to_string();
    Ok(cursor_reply(
        shared, ns, cursor_ns, entries, batch_size, false,
    ))
}

/// `listDatabases` (manual: "listDatabases"): every database holding a collection, plus
/// `local`, which a replica-set member always has.
pub fn list_databases(shared: &Shared, ctx: &CommandContext, cmd: &Document) -> Result<Document> {
    const CMD: &str = "listDatabases";
    if ctx.db != "admin" {
        return Err(CommandError::from_code(
            13,
            "listDatabases may only be run against the admin database.",
        ));
    }
    check_known_fields(cmd, CMD, &["filter", "nameOnly", "authorizedDatabases"])?;
    let filter = opt_document(cmd, CMD, "filter")?;
    let name_only = opt_bool(cmd, CMD, "nameOnly")?.unwrap_or(false);
    opt_bool(cmd, CMD, "authorizedDatabases")?;
    let vars = filter_variables(shared);
    let mut sizes: Vec<(String, i64)> = {
        let data = shared.data.lock();
        data.databases
            .iter()
            .filter(|(_, db)| !db.collections.is_empty())
            .map(|(name, db)| {
                let bytes: usize = db
                    .collections
                    .values()
                    .map(|c| c.data_size() + 4096 * (1 + c.indexes.len()))
                    .sum();
                (name.clone(), bytes.div_ceil(4096) as i64 * 4096)
            })
            .collect()
    };
    if !sizes.iter().any(|(n, _)| n == "local") {
        sizes.push(("local".to_string(), 40960));
        sizes.sort_by(|a, b| a.0.cmp(&b.0));
    }
    let entries: Vec<Document> = sizes
        .iter()
        .map(|(name, size)| {
            if name_only {
                doc! {"name": name}
            } else {
                doc! {"name": name, "sizeOnDisk": *size, "empty": false}
            }
        })
        .collect();
    let entries = filtered(entries, filter, &vars)?;
    if name_only {
        return Ok(doc! {"databases": entries});
    }
    let total: i64 = entries
        .iter()
        .filter_map(|e| e.get_i64("sizeOnDisk").ok())
        .sum();
    Ok(doc! {
        "databases": entries,
        "totalSize": total,
        "totalSizeMb": total / (1024 * 1024),
    })
}

fn spec_error(spec: &Document, cause: &str) -> CommandError {
    CommandError::failed_to_parse(format!(
        "Error in specification {} :: caused by :: {cause}",
        shell_document(spec)
    ))
}

/// A hashed index has one hashed field and cannot be unique (manual: "Hashed Indexes").
fn check_hashed(key: &Document, unique: bool) -> Result<()> {
    let hashed = key
        .values()
        .filter(|v| matches!(v, Bson::String(k) if k == "hashed"))
        .count();
    if hashed > 1 {
        return Err(CommandError::location(
            31303,
            format!(
                "A maximum of one index field is allowed to be hashed but found {hashed} for 'key' {}",
                shell_document(key)
            ),
        ));
    }
    if hashed == 1 && unique {
        return Err(CommandError::location(
            16764,
            "Currently hashed indexes cannot guarantee uniqueness. Use a regular index.",
        ));
    }
    Ok(())
}

/// Validates one `createIndexes` element (manual: "createIndexes", index specification
/// options); index kinds other than ascending/descending B-trees fail with 115.
fn parse_index_spec(raw: &Bson) -> Result<IndexSpec> {
    const UNSUPPORTED: &[&str] = &[
        "storageEngine",
        "weights",
        "default_language",
        "language_override",
        "textIndexVersion",
        "2dsphereIndexVersion",
        "bits",
        "min",
        "max",
        "bucketSize",
        "wildcardProjection",
        "hidden",
        "clustered",
        "prepareUnique",
    ];
    let Bson::Document(spec) = raw else {
        return Err(CommandError::type_mismatch(
            "Each element of the 'indexes' array must be an object",
        ));
    };
    for field in spec.keys() {
        let known = [
            "key",
            "name",
            "unique",
            "sparse",
            "expireAfterSeconds",
            "background",
            "v",
            "collation",
            "ns",
            "partialFilterExpression",
            // Obsolete, accepted and dropped from the spec (mongod's index_key_validate).
            "dropDups",
        ]
        .contains(&field.as_str());
        if UNSUPPORTED.contains(&field.as_str()) {
            return Err(CommandError::not_supported(format!(
                "the index option '{field}' is not supported"
            )));
        }
        if !known {
            return Err(CommandError::from_code(
                197,
                format!(
                    "The field '{field}' is not valid for an index specification. Specification: {}",
                    shell_document(spec)
                ),
            ));
        }
    }
    let key = match spec.get("key") {
        Some(Bson::Document(k)) => k.clone(),
        Some(_) => {
            return Err(spec_error(spec, "The field 'key' must be an object"));
        }
        None => {
            return Err(spec_error(
                spec,
                "The 'key' field is a required property of an index specification",
            ));
        }
    };
    let name = match spec.get("name") {
        Some(Bson::String(n)) if !n.is_empty() => n.clone(),
        Some(Bson::String(_)) => {
            return Err(CommandError::new(
                error::CANNOT_CREATE_INDEX,
                "index name cannot be empty",
            ));
        }
        Some(_) => return Err(spec_error(spec, "The field 'name' must be a string")),
        None => {
            return Err(spec_error(
                spec,
                "The 'name' field is a required property of an index specification",
            ));
        }
    };
    if key.is_empty() {
        return Err(CommandError::new(
            error::CANNOT_CREATE_INDEX,
            "Index keys cannot be empty.",
        ));
    }
    for (field, value) in &key {
        if field.starts_with('$') || field.contains(".$") {
            if field.ends_with("$**") {
                return Err(CommandError::not_supported(
                    "wildcard indexes are not supported",
                ));
            }
            return Err(CommandError::new(
                error::CANNOT_CREATE_INDEX,
                "Index key contains an illegal field name: field name starts with '$'.",
            ));
        }
        if field.is_empty() {
            return Err(CommandError::new(
                error::CANNOT_CREATE_INDEX,
                "Index keys cannot be an empty field.",
            ));
        }
        match value {
            Bson::String(kind) if kind == "hashed" => {}
            Bson::String(kind) => {
                return Err(
                    if ["text", "2dsphere", "2d", "geoHaystack"].contains(&kind.as_str()) {
                        CommandError::not_supported(format!("{kind} indexes are not supported"))
                    } else {
                        CommandError::new(
                            error::CANNOT_CREATE_INDEX,
                            format!("Unknown index plugin '{kind}'"),
                        )
                    },
                );
            }
            v => match as_f64(v) {
                Some(d) if d != 0.0 && !d.is_nan() => {}
                Some(_) => {
                    return Err(CommandError::new(
                        error::CANNOT_CREATE_INDEX,
                        "Values in the index key pattern can't be 0.",
                    ));
                }
                None => {
                    return Err(CommandError::new(
                        error::CANNOT_CREATE_INDEX,
                        format!(
                            "Values in v:2 index key pattern cannot be of type {}. Only numbers > 0, numbers < 0, and strings are allowed.",
                            crate::bsontype::type_name(v)
                        ),
                    ));
                }
            },
        }
    }
    check_collation(spec.get("collation"))?;
    let unique = opt_bool(spec, "createIndexes.indexes", "unique")?.unwrap_or(false);
    let sparse = opt_bool(spec, "createIndexes.indexes", "sparse")?.unwrap_or(false);
    let background = opt_bool(spec, "createIndexes.indexes", "background")?;
    check_hashed(&key, unique)?;
    let expire_after_seconds = match spec.get("expireAfterSeconds") {
        None => None,
        Some(v) if as_f64(v).is_some_and(|d| d >= 0.0) => {
            if key.len() > 1 {
                return Err(CommandError::new(
                    error::CANNOT_CREATE_INDEX,
                    "TTL indexes are single-field indexes, compound indexes do not support TTL.",
                ));
            }
            Some(v.clone())
        }
        Some(_) => {
            return Err(CommandError::new(
                error::CANNOT_CREATE_INDEX,
                "TTL index 'expireAfterSeconds' option must be numeric and non-negative",
            ));
        }
    };
    let partial_filter = match spec.get("partialFilterExpression") {
        None => None,
        Some(Bson::Document(f)) => {
            if sparse {
                return Err(CommandError::new(
                    error::CANNOT_CREATE_INDEX,
                    "cannot mix \"partialFilterExpression\" and \"sparse\" options",
                ));
            }
            Matcher::parse(f)?;
            Some(f.clone())
        }
        Some(other) => {
            return Err(crate::fields::wrong_type(
                "createIndexes.indexes",
                "partialFilterExpression",
                other,
                "object",
            ));
        }
    };
    Ok(IndexSpec {
        name,
        key,
        unique,
        sparse,
        expire_after_seconds,
        partial_filter,
        background,
    })
}

/// `createIndexes` (manual: "createIndexes"): builds every requested index or none, creating
/// the collection when needed.
pub fn create_indexes(shared: &Shared, ctx: &CommandContext, cmd: &Document) -> Result<Document> {
    const CMD: &str = "createIndexes";
    let coll = collection_name(cmd, CMD)?;
    check_known_fields(cmd, CMD, &["indexes", "commitQuorum"])?;
    let ns = Namespace::new(ctx.db.clone(), coll);
    validate_write_namespace(&ns)?;
    let raw = match cmd.get("indexes") {
        Some(Bson::Array(a)) => a,
        Some(other) => return Err(crate::fields::wrong_type(CMD, "indexes", other, "array")),
        None => return Err(missing(CMD, "indexes")),
    };
    if raw.is_empty() {
        return Err(CommandError::bad_value(
            "Must specify at least one index to create",
        ));
    }
    let requested = raw
        .iter()
        .map(parse_index_spec)
        .collect::<Result<Vec<_>>>()?;
    let mut data = shared.data.lock();
    crate::commands::crud::check_not_view(&data, &ns)?;
    let mut to_build: Vec<IndexSpec> = Vec::new();
    let existing_count = data.collection(&ns).map_or(1, |c| c.indexes.len());
    for spec in requested {
        if spec.name == "_id_" && same_key_pattern(&spec.key, &doc! {"_id": 1}) {
            continue;
        }
        let existing = data.collection(&ns).map(|c| {
            (
                c.index_by_name(&spec.name).map(|i| i.spec.clone()),
                c.index_by_key(&spec.key).map(|i| i.spec.clone()),
            )
        });
        let (by_name, by_key) = existing.unwrap_or((None, None));
        let by_name = by_name.or_else(|| to_build.iter().find(|s| s.name == spec.name).cloned());
        let by_key = by_key.or_else(|| {
            to_build
                .iter()
                .find(|s| same_key_pattern(&s.key, &spec.key))
                .cloned()
        });
        if let Some(current) = by_name {
            if !same_key_pattern(&current.key, &spec.key) {
                return Err(CommandError::new(
                    error::INDEX_KEY_SPECS_CONFLICT,
                    format!(
                        "An existing index has the same name as the requested index. When index names are not specified, they are auto generated and can cause conflicts. Please refer to our documentation. Requested index: {}, existing index: {}",
                        shell_document(&spec.to_document()),
                        shell_document(&current.to_document())
                    ),
                ));
            }
            if !current.same_options(&spec) {
                return Err(CommandError::new(
                    error::INDEX_OPTIONS_CONFLICT,
                    format!(
                        "An equivalent index already exists with the same name but different options. Requested index: {}, existing index: {}",
                        shell_document(&spec.to_document()),
                        shell_document(&current.to_document())
                    ),
                ));
            }
            continue;
        }
        if let Some(current) = by_key {
            return Err(CommandError::new(
                error::INDEX_OPTIONS_CONFLICT,
                format!(
                    "Index already exists with a different name: {}",
                    current.name
                ),
            ));
        }
        to_build.push(spec);
    }
    let (coll, created) = data.ensure_collection(&ns);
    if to_build.is_empty() {
        return Ok(doc! {
            "numIndexesBefore": existing_count as i32,
            "numIndexesAfter": existing_count as i32,
            "note": "all indexes already exist",
        });
    }
    let before = coll.indexes.len();
    let empty = coll.documents.is_empty();
    let built: Vec<Document> = to_build.iter().map(IndexSpec::to_document).collect();
    for spec in to_build {
        if let Err(e) = coll.create_index(&ns, spec) {
            coll.indexes.truncate(before);
            return Err(e);
        }
    }
    let after = coll.indexes.len();
    let ui = coll.ui();
    // mongod logs one `createIndexes` entry per index built on an empty collection, and one
    // `commitIndexBuild` naming all of them otherwise.
    let batches: Vec<Vec<Document>> = if empty {
        built.into_iter().map(|i| vec![i]).collect()
    } else {
        vec![built]
    };
    for indexes in batches {
        let op = OplogOp::CreateIndexes {
            ns: ns.clone(),
            indexes,
        };
        data.oplog.record(op, Some(ui.clone()));
    }
    Ok(doc! {
        "numIndexesBefore": before as i32,
        "numIndexesAfter": after as i32,
        "createdCollectionAutomatically": created,
    })
}

/// `listIndexes` (manual: "listIndexes").
pub fn list_indexes(shared: &Shared, ctx: &CommandContext, cmd: &Document) -> Result<Document> {
    const CMD: &str = "listIndexes";
    let coll = collection_name(cmd, CMD)?;
    check_known_fields(
        cmd,
        CMD,
        &["cursor", "includeBuildUUIDs", "includeIndexBuildInfo"],
    )?;
    let ns = Namespace::new(ctx.db.clone(), coll);
    validate_namespace(&ns)?;
    let batch_size = cursor_batch_size(cmd, CMD)?;
    let entries: Vec<Document> = {
        let data = shared.data.lock();
        let Some(c) = data.collection(&ns) else {
            return Err(CommandError::new(
                error::NAMESPACE_NOT_FOUND,
                format!("ns does not exist: {ns}"),
            ));
        };
        c.indexes.iter().map(|i| i.spec.to_document()).collect()
    };
    // mongod 7.0 registers the listIndexes cursor on the collection itself
    // (list_indexes.cpp: `ListIndexesReplyCursor(cursorId, nss, ...)`).
    let cursor_ns = ns.to_string();
    Ok(cursor_reply(
        shared, ns, cursor_ns, entries, batch_size, false,
    ))
}

/// `dropIndexes` (manual: "dropIndexes"): by name, key pattern, list of names, or `"*"` for
/// every index but `_id_`.
pub fn drop_indexes(shared: &Shared, ctx: &CommandContext, cmd: &Document) -> Result<Document> {
    const CMD: &str = "dropIndexes";
    let coll = collection_name(cmd, CMD)?;
    check_known_fields(cmd, CMD, &["index"])?;
    let ns = Namespace::new(ctx.db.clone(), coll);
    validate_namespace(&ns)?;
    let index = cmd.get("index").ok_or_else(|| missing(CMD, "index"))?;
    let mut data = shared.data.lock();
    let Some(c) = data.collection_mut(&ns) else {
        return Err(CommandError::new(
            error::NAMESPACE_NOT_FOUND,
            format!("ns not found {ns}"),
        ));
    };
    let was = c.indexes.len() as i32;
    let cannot_drop_id = || CommandError::new(error::INVALID_OPTIONS, "cannot drop _id index");
    let names: Vec<String> = match index {
        Bson::String(s) if s == "*" => c.indexes[1..].iter().map(|i| i.spec.name.clone()).collect(),
        Bson::String(s) => vec![s.clone()],
        Bson::Array(a) => a
            .iter()
            .map(|n| match n {
                Bson::String(s) if s != "*" => Ok(s.clone()),
                _ => Err(CommandError::type_mismatch(
                    "dropIndexes 'index' array must contain index names",
                )),
            })
            .collect::<Result<_>>()?,
        Bson::Document(key) => match c.index_by_key(key) {
            Some(i) => vec![i.spec.name.clone()],
            None => {
                return Err(CommandError::new(
                    error::INDEX_NOT_FOUND,
                    format!("can't find index with key: {}", shell_document(key)),
                ));
            }
        },
        other => {
            return Err(crate::fields::wrong_type(CMD, "index", other, "string"));
        }
    };
    for name in &names {
        if name == "_id_" {
            return Err(cannot_drop_id());
        }
        if c.index_by_name(name).is_none() {
            return Err(CommandError::new(
                error::INDEX_NOT_FOUND,
                format!("index not found with name [{name}]"),
            ));
        }
    }
    let mut dropped = Vec::new();
    for name in &names {
        if let Some(index) = c.index_by_name(name) {
            dropped.push(index.spec.to_document());
        }
        c.drop_index(name);
    }
    let ui = c.ui();
    for index in dropped {
        let op = OplogOp::DropIndexes {
            ns: ns.clone(),
            index,
        };
        data.oplog.record(op, Some(ui.clone()));
    }
    if matches!(index, Bson::String(s) if s == "*") {
        return Ok(doc! {"nIndexesWas": was, "msg": "non-_id indexes dropped for collection"});
    }
    Ok(doc! {"nIndexesWas": was})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::crud;
    use crate::state::ServerOptions;

    fn shared() -> Shared {
        Shared::new(ServerOptions::default(), "127.0.0.1:1".into())
    }

    fn ctx(db: &str) -> CommandContext {
        CommandContext {
            db: db.into(),
            ..Default::default()
        }
    }

    fn ops(s: &Shared) -> Vec<String> {
        s.data
            .lock()
            .oplog
            .entries()
            .iter()
            .map(|e| match &e.op {
                OplogOp::Create { ns, .. } => format!("create {ns}"),
                OplogOp::Drop { ns } => format!("drop {ns}"),
                OplogOp::Rename { from, to, .. } => format!("rename {from} {to}"),
                OplogOp::DropDatabase { db } => format!("dropDatabase {db}"),
                OplogOp::Insert { ns, .. } => format!("insert {ns}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    fn first_batch(r: &Document) -> Vec<Document> {
        r.get_document("cursor")
            .unwrap()
            .get_array("firstBatch")
            .unwrap()
            .iter()
            .map(|d| d.as_document().unwrap().clone())
            .collect()
    }

    #[test]
    fn create_rejects_existing_and_unsupported_options() {
        let s = shared();
        assert_eq!(
            create(&s, &ctx("db"), &doc! {"create": "c"}).unwrap(),
            doc! {}
        );
        let err = create(&s, &ctx("db"), &doc! {"create": "c"}).unwrap_err();
        assert_eq!(
            (err.code, err.errmsg.as_str()),
            (48, "Collection db.c already exists.")
        );
        for opt in [
            doc! {"create": "x", "autoIndexId": false},
            doc! {"create": "x", "timeseries": {"timeField": "t"}},
            doc! {"create": "x", "clusteredIndex": {}},
        ] {
            assert_eq!(create(&s, &ctx("db"), &opt).unwrap_err().code, 115, "{opt}");
        }
        let err = create(&s, &ctx("db"), &doc! {"create": "system.foo"}).unwrap_err();
        assert_eq!(err.code, 73);
        assert_eq!(ops(&s), vec!["create db.c"]);
    }

    #[test]
    fn drop_reports_indexes_and_tolerates_missing() {
        let s = shared();
        assert_eq!(
            drop(&s, &ctx("db"), &doc! {"drop": "nope"}).unwrap(),
            doc! {}
        );
        create(&s, &ctx("db"), &doc! {"create": "c"}).unwrap();
        assert_eq!(
            drop(&s, &ctx("db"), &doc! {"drop": "c"}).unwrap(),
            doc! {"nIndexesWas": 1, "ns": "db.c"}
        );
        assert_eq!(ops(&s), vec!["create db.c", "drop db.c"]);
        assert!(s.data.lock().databases.is_empty());
    }

    #[test]
    fn drop_database_records_each_collection_then_the_database() {
        let s = shared();
        create(&s, &ctx("db"), &doc! {"create": "a"}).unwrap();
        create(&s, &ctx("db"), &doc! {"create": "b"}).unwrap();
        assert_eq!(
            drop_database(&s, &ctx("db"), &doc! {"dropDatabase": 1}).unwrap(),
            doc! {"dropped": "db"}
        );
        assert_eq!(
            ops(&s),
            vec![
                "create db.a",
                "create db.b",
                "drop db.a",
                "drop db.b",
                "dropDatabase db"
            ]
        );
    }

    #[test]
    fn rename_collection_rules() {
        let s = shared();
        let err = rename_collection(
            &s,
            &ctx("db"),
            &doc! {"renameCollection": "db.a", "to": "db.b"},
        )
        .unwrap_err();
        assert_eq!(
            (err.code, err.errmsg.as_str()),
            (
                13,
                "renameCollection may only be run against the admin database."
            )
        );
        let err = rename_collection(
            &s,
            &ctx("admin"),
            &doc! {"renameCollection": "db.a", "to": "db.b"},
        )
        .unwrap_err();
        assert_eq!(
            (err.code, err.errmsg.as_str()),
            (26, "Source collection db.a does not exist")
        );
        create(&s, &ctx("db"), &doc! {"create": "a"}).unwrap();
        create(&s, &ctx("db"), &doc! {"create": "b"}).unwrap();
        let uuid = s.data.lock().collection_uuid(&Namespace::new("db", "a"));
        let err = rename_collection(
            &s,
            &ctx("admin"),
            &doc! {"renameCollection": "db.a", "to": "db.b"},
        )
        .unwrap_err();
        assert_eq!(
            (err.code, err.errmsg.as_str()),
            (48, "target namespace exists")
        );
        rename_collection(
            &s,
            &ctx("admin"),
            &doc! {"renameCollection": "db.a", "to": "db.b", "dropTarget": true},
        )
        .unwrap();
        assert_eq!(
            s.data.lock().collection_uuid(&Namespace::new("db", "b")),
            uuid
        );
        assert!(
            s.data
                .lock()
                .collection(&Namespace::new("db", "a"))
                .is_none()
        );
        assert_eq!(
            ops(&s),
            vec!["create db.a", "create db.b", "rename db.a db.b"]
        );
    }

    #[test]
    fn list_collections_and_databases_shapes() {
        let s = shared();
        create(&s, &ctx("db"), &doc! {"create": "c"}).unwrap();
        let uuid = s
            .data
            .lock()
            .collection_uuid(&Namespace::new("db", "c"))
            .unwrap();
        let r =
            list_collections(&s, &ctx("db"), &doc! {"listCollections": 1, "cursor": {}}).unwrap();
        assert_eq!(
            r,
            doc! {"cursor": {"firstBatch": [{
            "name": "c", "type": "collection", "options": {},
            "info": {"readOnly": false, "uuid": Binary::from_uuid(uuid)},
            "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}}],
            "id": 0i64, "ns": "db.$cmd.listCollections"}}
        );
        let r = list_collections(
            &s,
            &ctx("db"),
            &doc! {"listCollections": 1, "nameOnly": true},
        )
        .unwrap();
        assert_eq!(
            first_batch(&r),
            vec![doc! {"name": "c", "type": "collection"}]
        );

        let err = list_databases(&s, &ctx("db"), &doc! {"listDatabases": 1}).unwrap_err();
        assert_eq!(err.code, 13);
        let r = list_databases(&s, &ctx("admin"), &doc! {"listDatabases": 1}).unwrap();
        let names: Vec<&str> = r
            .get_array("databases")
            .unwrap()
            .iter()
            .map(|d| d.as_document().unwrap().get_str("name").unwrap())
            .collect();
        assert_eq!(names, vec!["db", "local"]);
        assert!(r.get_i64("totalSize").unwrap() > 0);
        let r = list_databases(
            &s,
            &ctx("admin"),
            &doc! {"listDatabases": 1, "nameOnly": true},
        )
        .unwrap();
        assert_eq!(r, doc! {"databases": [{"name": "db"}, {"name": "local"}]});
    }

    #[test]
    fn create_indexes_replies_and_conflicts() {
        let s = shared();
        let r = create_indexes(
            &s,
            &ctx("db"),
            &doc! {"createIndexes": "c", "indexes": [{"key": {"a": 1, "b": -1}, "name": "a_1_b_-1", "unique": true}]},
        )
        .unwrap();
        assert_eq!(
            r,
            doc! {"numIndexesBefore": 1, "numIndexesAfter": 2, "createdCollectionAutomatically": true}
        );
        assert_eq!(ops(&s).len(), 2);
        assert!(ops(&s)[1].starts_with("CreateIndexes"));
        let r = create_indexes(
            &s,
            &ctx("db"),
            &doc! {"createIndexes": "c", "indexes": [{"key": {"a": 1, "b": -1}, "name": "a_1_b_-1", "unique": true}]},
        )
        .unwrap();
        assert_eq!(
            r,
            doc! {"numIndexesBefore": 2, "numIndexesAfter": 2, "note": "all indexes already exist"}
        );
        let err = create_indexes(
            &s,
            &ctx("db"),
            &doc! {"createIndexes": "c", "indexes": [{"key": {"z": 1}, "name": "a_1_b_-1"}]},
        )
        .unwrap_err();
        assert_eq!(err.code, 86);
        let err = create_indexes(
            &s,
            &ctx("db"),
            &doc! {"createIndexes": "c", "indexes": [{"key": {"a": 1, "b": -1}, "name": "other", "unique": true}]},
        )
        .unwrap_err();
        assert_eq!(
            (err.code, err.errmsg.as_str()),
            (85, "Index already exists with a different name: a_1_b_-1")
        );
        let err = create_indexes(
            &s,
            &ctx("db"),
            &doc! {"createIndexes": "c", "indexes": [{"key": {"z": 1}}]},
        )
        .unwrap_err();
        assert_eq!(err.code, 9);
        for kind in ["text", "2dsphere", "2d"] {
            let err = create_indexes(
                &s,
                &ctx("db"),
                &doc! {"createIndexes": "c", "indexes": [{"key": {"t": kind}, "name": "t"}]},
            )
            .unwrap_err();
            assert_eq!(err.code, 115);
        }
        // Hashed indexes exist, but not unique ones, and with one hashed field at most.
        let hashed = |spec: Document| {
            create_indexes(
                &s,
                &ctx("db"),
                &doc! {"createIndexes": "c", "indexes": [spec]},
            )
        };
        hashed(doc! {"key": {"h": "hashed"}, "name": "h_hashed"}).unwrap();
        let err = hashed(doc! {"key": {"u": "hashed"}, "name": "u", "unique": true}).unwrap_err();
        assert_eq!(err.code, 16764);
        let err = hashed(doc! {"key": {"p": "hashed", "q": "hashed"}, "name": "pq"}).unwrap_err();
        assert_eq!(err.code, 31303);
    }

    #[test]
    fn unique_index_over_duplicates_fails_and_is_enforced_afterwards() {
        let s = shared();
        crud::insert(
            &s,
            &ctx("db"),
            &mut doc! {"insert": "c", "documents": [{"_id": 1, "a": 1}, {"_id": 2, "a": 1}]},
        )
        .unwrap();
        let err = create_indexes(
            &s,
            &ctx("db"),
            &doc! {"createIndexes": "c", "indexes": [{"key": {"a": 1}, "name": "a_1", "unique": true}]},
        )
        .unwrap_err();
        assert_eq!(err.code, 11000);
        assert_eq!(
            err.errmsg,
            "E11000 duplicate key error collection: db.c index: a_1 dup key: { a: 1 }"
        );
        let r = list_indexes(&s, &ctx("db"), &doc! {"listIndexes": "c"}).unwrap();
        assert_eq!(
            first_batch(&r),
            vec![doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"}]
        );
        assert_eq!(
            r.get_document("cursor").unwrap().get_str("ns").unwrap(),
            "db.c"
        );
    }

    #[test]
    fn list_and_drop_indexes_errors() {
        let s = shared();
        let err = list_indexes(&s, &ctx("db"), &doc! {"listIndexes": "c"}).unwrap_err();
        assert_eq!(
            (err.code, err.errmsg.as_str()),
            (26, "ns does not exist: db.c")
        );
        create_indexes(
            &s,
            &ctx("db"),
            &doc! {"createIndexes": "c", "indexes": [
            {"key": {"a": 1}, "name": "a_1", "unique": true},
            {"key": {"b": 1}, "name": "b_1", "sparse": true, "expireAfterSeconds": 60}]},
        )
        .unwrap();
        let r = list_indexes(&s, &ctx("db"), &doc! {"listIndexes": "c"}).unwrap();
        assert_eq!(
            first_batch(&r),
            vec![
                doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"},
                doc! {"v": 2, "key": {"a": 1}, "name": "a_1", "unique": true},
                doc! {"v": 2, "key": {"b": 1}, "name": "b_1", "sparse": true, "expireAfterSeconds": 60},
            ]
        );
        let err =
            drop_indexes(&s, &ctx("db"), &doc! {"dropIndexes": "c", "index": "_id_"}).unwrap_err();
        assert_eq!(
            (err.code, err.errmsg.as_str()),
            (72, "cannot drop _id index")
        );
        let err =
            drop_indexes(&s, &ctx("db"), &doc! {"dropIndexes": "c", "index": "x"}).unwrap_err();
        assert_eq!(
            (err.code, err.errmsg.as_str()),
            (27, "index not found with name [x]")
        );
        assert_eq!(
            drop_indexes(
                &s,
                &ctx("db"),
                &doc! {"dropIndexes": "c", "index": {"a": 1}}
            )
            .unwrap(),
            doc! {"nIndexesWas": 3}
        );
        assert_eq!(
            drop_indexes(&s, &ctx("db"), &doc! {"dropIndexes": "c", "index": "*"}).unwrap(),
            doc! {"nIndexesWas": 2, "msg": "non-_id indexes dropped for collection"}
        );
        let r = crud::insert(
            &s,
            &ctx("db"),
            &mut doc! {"insert": "c", "documents": [{"a": 1}, {"a": 1}]},
        )
        .unwrap();
        assert_eq!(r.get_i32("n").unwrap(), 2);
    }
}
