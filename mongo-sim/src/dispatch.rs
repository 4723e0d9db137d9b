//! One command from decoded document to reply: fail points, session and write-concern
//! fields, routing to its handler, error labels, `$clusterTime` and `operationTime`.
//!
//! A step-down interrupts every command still in progress (a blocked fail point, a getMore
//! waiting for events) with InterruptedDueToReplStateChange, labelled as a retryable write or
//! a resumable change-stream error where it is one; hellos and the step-down itself are not
//! interrupted.

use crate::commands::crud;
use crate::commands::ddl;
use crate::error::{self, CommandError, Result};
use crate::failpoint::{self, Triggered};
use crate::handshake;
use crate::retryable::RetryableWrite;
use crate::state::{CommandContext, ConnectionState, Shared};
use bson::{Binary, Bson, Document, doc, spec::BinarySubtype};
use std::sync::Arc;

/// The result of one command for the connection loop.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Reply(Document),
    /// A fail point asked for the socket to be closed without a reply.
    CloseConnection,
}

/// Commands that write; refused with NotWritablePrimary while stepped down, and the ones a
/// write concern applies to.
const WRITE_COMMANDS: &[&str] = &[
    "insert",
    "collMod",
    "update",
    "delete",
    "findAndModify",
    "create",
    "drop",
    "dropDatabase",
    "renameCollection",
    "createIndexes",
    "dropIndexes",
];

/// Whether the command writes: a write command, or an `aggregate` ending in `$out` or
/// `$merge`, to which a write concern applies and which a secondary refuses (manual: "$out",
/// "$merge").
fn writes_data(name: &str, cmd: &Document) -> bool {
    let writing_stage = |stage: &Bson| {
        stage
            .as_document()
            .is_some_and(|s| s.contains_key("$out") || s.contains_key("$merge"))
    };
    WRITE_COMMANDS.contains(&name)
        || (name == "aggregate"
            && matches!(cmd.get("pipeline"), Some(Bson::Array(p)) if p.last().is_some_and(writing_stage)))
}

/// Commands that read user data; refused with NotPrimaryNoSecondaryOk while stepped down.
const READ_COMMANDS: &[&str] = &[
    "find",
    "aggregate",
    "count",
    "distinct",
    "getMore",
    "listCollections",
    "listIndexes",
    "listDatabases",
];

/// Writes that may carry a `txnNumber` (retryable-writes spec, "Supported Write Operations").
const RETRYABLE_COMMANDS: &[&str] = &["insert", "update", "delete", "findAndModify"];

const OTHER_COMMANDS: &[&str] = &["killCursors", "configureFailPoint"];

fn is_known(name: &str) -> bool {
    WRITE_COMMANDS.contains(&name)
        || READ_COMMANDS.contains(&name)
        || OTHER_COMMANDS.contains(&name)
        || handshake::COMMANDS.contains(&name)
        || crate::admin::COMMANDS.contains(&name)
}

/// mongod's database name rules (manual: "Naming Restrictions").
fn check_db_name(db: &str) -> Result<()> {
    let invalid = db.is_empty()
        || db.len() >= 64
        || db
            .chars()
            .any(|c| matches!(c, '/' | '\\' | '.' | ' ' | '"' | '$' | '\0'));
    if invalid {
        return Err(CommandError::new(
            error::INVALID_NAMESPACE,
            format!("Invalid database name: '{db}'"),
        ));
    }
    Ok(())
}

fn with_code_name(mut e: CommandError) -> CommandError {
    if e.code_name.starts_with("Location") {
        e.code_name = failpoint::code_name(e.code);
    }
    e
}

/// Runs one command and produces its reply (or the instruction to hang up).
pub async fn run_command(
    shared: &Arc<Shared>,
    conn: &mut ConnectionState,
    mut cmd: Document,
) -> Outcome {
    count_operation(shared, &cmd);
    let result = execute(shared, conn, &mut cmd).await;
    shared.publish_oplog_head();
    match result {
        Err(Hangup) => Outcome::CloseConnection,
        Ok(reply) => Outcome::Reply(finish(shared, reply)),
    }
}

struct Hangup;

/// `serverStatus.opcounters` as mongod counts them: inserted documents, update and delete
/// statements, finds, getMores, and every other command.
fn count_operation(shared: &Shared, cmd: &Document) {
    let name = cmd.keys().next().map(String::as_str).unwrap_or_default();
    let statements = |field: &str| match cmd.get(field) {
        Some(Bson::Array(a)) => a.len() as i64,
        _ => 0,
    };
    let (slot, n) = match name {
        "insert" => (0, statements("documents")),
        "find" => (1, 1),
        "update" => (2, statements("updates")),
        "delete" => (3, statements("deletes")),
        "getMore" => (4, 1),
        _ => (5, 1),
    };
    shared.topology.lock().opcounters[slot] += n;
}

/// mongod's NotPrimaryError category: LegacyNotPrimary, PrimarySteppedDown,
/// NotWritablePrimary, InterruptedDueToReplStateChange, NotPrimaryNoSecondaryOk,
/// NotPrimaryOrSecondary.
const NOT_PRIMARY_CODES: &[i64] = &[10058, 189, 10107, 11602, 13435, 13436];

/// Whether the reply fails, or fails its write concern, with a NotPrimaryError.
fn is_not_primary_error(reply: &Document) -> bool {
    let code = |d: &Document| d.get("code").and_then(crate::bsontype::as_i64);
    let failed = !reply_ok(reply) && code(reply).is_some_and(|c| NOT_PRIMARY_CODES.contains(&c));
    let wce = matches!(
        reply.get("writeConcernError"),
        Some(Bson::Document(wce)) if code(wce).is_some_and(|c| NOT_PRIMARY_CODES.contains(&c))
    );
    failed || wce
}

/// Adds `ok`, `$clusterTime` and `operationTime` as mongod does on every reply, and the
/// `topologyVersion` a replica-set member adds to NotPrimaryError replies, by which drivers
/// tell a stale error (a fail point's, or one from before the last change) from a new state
/// (SDAM, "topologyVersion" and "Error handling").
fn finish(shared: &Shared, mut reply: Document) -> Document {
    if !reply.contains_key("ok") {
        reply.insert("ok", 1.0);
    }
    if is_not_primary_error(&reply) {
        let topology_version = shared.topology.lock().topology_version();
        reply.insert("topologyVersion", topology_version);
    }
    let ts = shared.data.lock().oplog.last_ts();
    reply.insert(
        "$clusterTime",
        doc! {
            "clusterTime": ts,
            "signature": {
                "hash": Binary { subtype: BinarySubtype::Generic, bytes: vec![0u8; 20] },
                "keyId": 0i64,
            },
        },
    );
    reply.insert("operationTime", ts);
    reply
}

/// `cmd` is mutable only so that `insert` can move its documents into storage.
async fn execute(
    shared: &Arc<Shared>,
    conn: &mut ConnectionState,
    cmd: &mut Document,
) -> std::result::Result<Document, Hangup> {
    let name = cmd.keys().next().cloned().unwrap_or_default();
    let db = match cmd.get("$db") {
        Some(Bson::String(db)) => db.clone(),
        Some(other) => {
            return Ok(crate::fields::wrong_type(&name, "$db", other, "string").to_reply());
        }
        None => {
            return Ok(
                CommandError::location(40571, "OP_MSG requests require a $db argument").to_reply(),
            );
        }
    };
    if let Err(e) = check_db_name(&db) {
        return Ok(e.to_reply());
    }
    if !is_known(&name) {
        return Ok(CommandError::new(
            error::COMMAND_NOT_FOUND,
            format!("no such command: '{name}'"),
        )
        .to_reply());
    }
    let lsid = match cmd.get("lsid") {
        Some(Bson::Document(d)) => Some(d.clone()),
        _ => None,
    };
    if let Some(lsid) = &lsid {
        shared.sessions.lock().touch(lsid);
    }
    let txn_number = cmd.get("txnNumber").and_then(crate::bsontype::as_i64);
    let retryable_write = match (&lsid, txn_number) {
        (Some(lsid), Some(txn)) if RETRYABLE_COMMANDS.contains(&name.as_str()) => {
            Some(RetryableWrite::of(cmd, lsid, txn))
        }
        _ => None,
    };
    let retryable = retryable_write.is_some();
    let ctx = CommandContext {
        db: db.clone(),
        connection_id: conn.id,
        app_name: conn.app_name.clone(),
        lsid,
        txn_number,
        retryable: retryable_write,
        ..Default::default()
    };
    // Subscribed before anything can wait, so a later step-down is never missed.
    let mut interrupts = shared.topology.lock().subscribe_interrupts();
    let interruptible = !matches!(
        name.as_str(),
        "hello" | "isMaster" | "ismaster" | "replSetStepDown"
    );

    let triggered = if name == "configureFailPoint" {
        None
    } else {
        // getMore names its collection in `collection`; the others in the command field.
        let coll_field = if name == "getMore" {
            "collection"
        } else {
            &name
        };
        let ns = match cmd.get(coll_field) {
            Some(Bson::String(coll)) => Some(format!("{db}.{coll}")),
            _ => None,
        };
        shared
            .failpoints
            .lock()
            .evaluate(&name, ctx.app_name.as_deref(), ns.as_deref())
    };
    let labelling = Labelling {
        retryable_write: retryable,
        change_stream: is_change_stream_operation(shared, &name, cmd),
    };
    let mut fp_labels = None;
    let mut fp_wce = None;
    if let Some(Triggered {
        close_connection,
        block,
        error,
        write_concern_error,
        error_labels,
    }) = triggered
    {
        if close_connection {
            return Err(Hangup);
        }
        if let Some(block) = block {
            tokio::select! {
                _ = tokio::time::sleep(block) => {}
                _ = interrupted(&mut interrupts), if interruptible => {
                    return Ok(label(interrupted_error(), labelling).to_reply());
                }
            }
        }
        if let Some(e) = error {
            // Labels given to the fail point replace the ones mongod would add. A getMore
            // fails here before its cursor is checked out, where mongod cannot tell it belongs
            // to a change stream: it gets no ResumableChangeStreamError (change-streams spec
            // test "does not resume if error does not contain ResumableChangeStreamError").
            let labelling = Labelling {
                change_stream: labelling.change_stream && name != "getMore",
                ..labelling
            };
            return Ok(match error_labels {
                Some(_) => e.to_reply(),
                None => label(e, labelling).to_reply(),
            });
        }
        fp_labels = error_labels;
        fp_wce = write_concern_error;
    }

    if let Some(e) = max_time_always_times_out(shared, &name, cmd) {
        return Ok(label(e, labelling).to_reply());
    }
    // `biased`: a command that finishes without waiting is never interrupted.
    let result = tokio::select! {
        biased;
        result = checks_then_run(shared, conn, &ctx, &name, cmd) => result,
        _ = interrupted(&mut interrupts), if interruptible => Err(interrupted_error()),
    };
    if ctx.hang_up_requested() {
        return Err(Hangup);
    }
    if labelling.change_stream || name == "killCursors" {
        track_change_stream_cursors(shared, &name, cmd, result.as_ref().ok());
    }
    let Ran { mut reply, writes } = match result {
        Ok(ran) => ran,
        Err(e) => return Ok(label(with_code_name(e), labelling).to_reply()),
    };

    if writes && reply_ok(&reply) {
        let wce = match fp_wce {
            Some(wce) => Some(wce),
            None => write_concern_error(cmd),
        };
        if let Some(wce) = wce {
            let code = wce.get("code").and_then(crate::bsontype::as_i64);
            reply.insert("writeConcernError", wce);
            match fp_labels {
                Some(labels) => {
                    reply.insert("errorLabels", labels);
                }
                None => {
                    if retryable
                        && code.is_some_and(|c| error::RETRYABLE_WRITE_CODES.contains(&(c as i32)))
                    {
                        reply.insert("errorLabels", vec!["RetryableWriteError"]);
                    }
                }
            }
        }
    }
    Ok(reply)
}

/// mongod's `maxTimeAlwaysTimeOut` fail point: an operation with a time limit exceeds it at
/// its first interrupt check.
fn max_time_always_times_out(shared: &Shared, name: &str, cmd: &Document) -> Option<CommandError> {
    let limited = cmd
        .get("maxTimeMS")
        .and_then(crate::bsontype::as_i64)
        .is_some_and(|ms| ms > 0);
    if !limited || name == "configureFailPoint" {
        return None;
    }
    shared.failpoints.lock().fire("maxTimeAlwaysTimeOut")?;
    Some(CommandError::new(
        error::MAX_TIME_MS_EXPIRED,
        "operation exceeded time limit",
    ))
}

/// Resolves at the next step-down.
async fn interrupted(interrupts: &mut tokio::sync::watch::Receiver<u64>) {
    if interrupts.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// What a stepping-down mongod answers commands it kills (manual: "replSetStepDown").
fn interrupted_error() -> CommandError {
    CommandError::new(
        error::INTERRUPTED_DUE_TO_REPL_STATE_CHANGE,
        "operation was interrupted because a node stepped down",
    )
}

fn reply_ok(reply: &Document) -> bool {
    match reply.get("ok") {
        None => true,
        Some(v) => crate::bsontype::as_i64(v) == Some(1),
    }
}

/// Which error labels a failure of this command may carry.
#[derive(Debug, Clone, Copy)]
struct Labelling {
    retryable_write: bool,
    change_stream: bool,
}

/// Adds the labels mongod adds: `RetryableWriteError` to a failed retryable write
/// (retryable-writes spec, "Determining Retryable Errors") and `ResumableChangeStreamError` to
/// a resumable failure of a change stream's aggregate or getMore (change-streams spec,
/// "Resumable Error").
fn label(mut e: CommandError, labelling: Labelling) -> CommandError {
    if labelling.retryable_write && error::RETRYABLE_WRITE_CODES.contains(&e.code) {
        e = e.with_label("RetryableWriteError");
    }
    if labelling.change_stream
        && error::RESUMABLE_CHANGE_STREAM_CODES.contains(&e.code)
        && !e
            .labels
            .iter()
            .any(|l| l == "NonResumableChangeStreamError")
    {
        e = e.with_label("ResumableChangeStreamError");
    }
    e
}

fn opens_change_stream(cmd: &Document) -> bool {
    matches!(
        cmd.get("pipeline"),
        Some(Bson::Array(p)) if matches!(
            p.first(),
            Some(Bson::Document(stage)) if stage.contains_key("$changeStream")
        )
    )
}

/// An aggregate opening a change stream, or a getMore on one.
fn is_change_stream_operation(shared: &Shared, name: &str, cmd: &Document) -> bool {
    match name {
        "aggregate" => opens_change_stream(cmd),
        "getMore" => match cmd.get("getMore") {
            Some(Bson::Int64(id)) => shared.change_stream_cursors.lock().contains(id),
            _ => false,
        },
        _ => false,
    }
}

fn reply_cursor_id(reply: &Document) -> Option<i64> {
    reply
        .get_document("cursor")
        .ok()
        .and_then(|c| c.get("id"))
        .and_then(crate::bsontype::as_i64)
}

/// Keeps the set of open change-stream cursors current.
fn track_change_stream_cursors(shared: &Shared, name: &str, cmd: &Document, ran: Option<&Ran>) {
    let mut open = shared.change_stream_cursors.lock();
    match name {
        "aggregate" => {
            if let Some(id) = ran.and_then(|r| reply_cursor_id(&r.reply))
                && id != 0
            {
                open.insert(id);
            }
        }
        "getMore" => {
            let Some(Bson::Int64(id)) = cmd.get("getMore") else {
                return;
            };
            // A failed getMore destroys its cursor; so does reaching the end.
            let alive = ran.and_then(|r| reply_cursor_id(&r.reply)).unwrap_or(0) != 0;
            if !alive {
                open.remove(id);
            }
        }
        "killCursors" => {
            if let Ok(ids) = cmd.get_array("cursors") {
                for id in ids {
                    if let Bson::Int64(id) = id {
                        open.remove(id);
                    }
                }
            }
        }
        _ => {}
    }
}

struct Ran {
    reply: Document,
    /// The command writes, so its write concern applies.
    writes: bool,
}

/// The write concern's failure on a single node: more than one acknowledging member or an
/// unknown tag cannot be satisfied (manual: "Write Concern"; `Not enough data-bearing nodes`).
fn write_concern_error(cmd: &Document) -> Option<Document> {
    let Some(Bson::Document(wc)) = cmd.get("writeConcern") else {
        return None;
    };
    let w = wc.get("w")?;
    let (code, code_name, errmsg) = match w {
        Bson::String(tag) if tag != "majority" => (
            79,
            "UnknownReplWriteConcern",
            format!("No write concern mode named '{tag}' found in replica set configuration"),
        ),
        Bson::String(_) => return None,
        w => match crate::bsontype::as_i64(w) {
            Some(n) if n > 1 => (
                100,
                "UnsatisfiableWriteConcern",
                "Not enough data-bearing nodes".to_string(),
            ),
            _ => return None,
        },
    };
    // mongod echoes the write concern it failed to satisfy in `errInfo`.
    let mut echoed = doc! {"w": w.clone()};
    if let Some(j) = wc.get("j") {
        echoed.insert("j", j.clone());
    }
    echoed.insert(
        "wtimeout",
        wc.get("wtimeout").cloned().unwrap_or(Bson::Int32(0)),
    );
    echoed.insert("provenance", "clientSupplied");
    Some(doc! {
        "code": code,
        "codeName": code_name,
        "errmsg": errmsg,
        "errInfo": {"writeConcern": echoed},
    })
}

/// Validates generic arguments (manual: "Read Concern", "Write Concern", "Transactions").
fn check_generic_arguments(name: &str, cmd: &Document) -> Result<()> {
    if cmd.contains_key("autocommit") || cmd.contains_key("startTransaction") {
        return Err(CommandError::not_supported(
            "mongo-sim does not support multi-document transactions",
        ));
    }
    if let Some(rc) = cmd.get("readConcern") {
        let Bson::Document(rc) = rc else {
            return Err(crate::fields::wrong_type(name, "readConcern", rc, "object"));
        };
        match rc.get("level") {
            None => {}
            Some(Bson::String(level))
                if matches!(level.as_str(), "local" | "majority" | "available") => {}
            Some(Bson::String(level)) => {
                return Err(CommandError::not_supported(format!(
                    "mongo-sim does not support readConcern level '{level}'"
                )));
            }
            Some(other) => {
                return Err(crate::fields::wrong_type(
                    "readConcern",
                    "level",
                    other,
                    "string",
                ));
            }
        }
    }
    if let Some(wc) = cmd.get("writeConcern") {
        let Bson::Document(wc) = wc else {
            return Err(crate::fields::wrong_type(
                name,
                "writeConcern",
                wc,
                "object",
            ));
        };
        match wc.get("w") {
            None | Some(Bson::String(_)) => {}
            Some(w) => match crate::bsontype::as_i64(w) {
                Some(n) if (0..=50).contains(&n) => {}
                Some(_) => {
                    return Err(CommandError::failed_to_parse(
                        "w has to be a non-negative number and not greater than 50; found: ",
                    ));
                }
                None => {
                    return Err(CommandError::failed_to_parse(
                        "w has to be a number, string, or object",
                    ));
                }
            },
        }
    }
    Ok(())
}

fn not_secondary_ok_read(cmd: &Document) -> bool {
    match cmd.get("$readPreference") {
        Some(Bson::Document(rp)) => !matches!(rp.get_str("mode"), Ok(m) if m != "primary"),
        _ => true,
    }
}

async fn checks_then_run(
    shared: &Arc<Shared>,
    conn: &mut ConnectionState,
    ctx: &CommandContext,
    name: &str,
    cmd: &mut Document,
) -> Result<Ran> {
    check_generic_arguments(name, cmd)?;
    crate::profile::authorize(shared.options.user.as_ref(), name, &ctx.db, cmd)?;
    shared.options.release.refuse_unknown_operators(name, cmd)?;
    let writes = writes_data(name, cmd);
    if writes || READ_COMMANDS.contains(&name) {
        let primary = shared.topology.lock().is_primary();
        if !primary && writes {
            return Err(CommandError::new(
                error::NOT_WRITABLE_PRIMARY,
                "not primary",
            ));
        }
        if !primary && not_secondary_ok_read(cmd) {
            return Err(CommandError::new(
                error::NOT_PRIMARY_NO_SECONDARY_OK,
                "not primary and secondaryOk=false",
            ));
        }
    }
    if let Some(write) = &ctx.retryable {
        shared.data.lock().transactions.begin(write)?;
    }
    let reply = route(shared, conn, ctx, name, cmd).await?;
    Ok(Ran { reply, writes })
}

async fn route(
    shared: &Arc<Shared>,
    conn: &mut ConnectionState,
    ctx: &CommandContext,
    name: &str,
    cmd: &mut Document,
) -> Result<Document> {
    let s: &Shared = shared;
    match name {
        "insert" => crud::insert(s, ctx, cmd),
        "update" => crud::update(s, ctx, cmd),
        "delete" => crud::delete(s, ctx, cmd),
        "find" => crud::find(s, ctx, cmd),
        "findAndModify" => crud::find_and_modify(s, ctx, cmd),
        "count" => crud::count(s, ctx, cmd),
        "distinct" => crud::distinct(s, ctx, cmd),
        "aggregate" => {
            let pipeline = match cmd.get("pipeline") {
                Some(Bson::Array(p)) => p,
                Some(other) => {
                    return Err(crate::fields::wrong_type(
                        "aggregate",
                        "pipeline",
                        other,
                        "array",
                    ));
                }
                None => return Err(crate::fields::missing("aggregate", "pipeline")),
            };
            let change_stream = opens_change_stream(cmd);
            if change_stream {
                crate::commands::aggregation::change_stream(s, ctx, cmd, pipeline)
            } else {
                crate::commands::aggregation::aggregate(s, ctx, cmd)
            }
        }
        "getMore" => crate::commands::getmore::get_more(shared, ctx, cmd).await,
        "killCursors" => crate::commands::getmore::kill_cursors(s, ctx, cmd),
        "create" => ddl::create(s, ctx, cmd),
        "collMod" => crate::commands::collmod::coll_mod(s, ctx, cmd),
        "drop" => ddl::drop(s, ctx, cmd),
        "dropDatabase" => ddl::drop_database(s, ctx, cmd),
        "renameCollection" => ddl::rename_collection(s, ctx, cmd),
        "listCollections" => ddl::list_collections(s, ctx, cmd),
        "listDatabases" => ddl::list_databases(s, ctx, cmd),
        "createIndexes" => ddl::create_indexes(s, ctx, cmd),
        "listIndexes" => ddl::list_indexes(s, ctx, cmd),
        "dropIndexes" => ddl::drop_indexes(s, ctx, cmd),
        "configureFailPoint" => failpoint::configure(&s.failpoints, &ctx.db, cmd),
        "getCmdLineOpts" | "getParameter" => crate::admin::run(s, ctx, name, cmd),
        other => handshake::run(s, conn, ctx, other, cmd).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ServerOptions;

    fn shared() -> Arc<Shared> {
        Arc::new(Shared::new(
            ServerOptions::default(),
            "127.0.0.1:1".to_string(),
        ))
    }

    async fn run(s: &Arc<Shared>, cmd: Document) -> Document {
        let mut conn = ConnectionState::new(1, "p".into());
        match run_command(s, &mut conn, cmd).await {
            Outcome::Reply(r) => r,
            Outcome::CloseConnection => panic!("connection closed"),
        }
    }

    #[tokio::test]
    async fn every_reply_carries_ok_and_cluster_time() {
        let s = shared();
        let r = run(&s, doc! {"ping": 1, "$db": "admin"}).await;
        assert_eq!(r.get_f64("ok").unwrap(), 1.0);
        let ct = r.get_document("$clusterTime").unwrap();
        assert!(ct.get_timestamp("clusterTime").is_ok());
        let sig = ct.get_document("signature").unwrap();
        assert_eq!(sig.get_binary_generic("hash").unwrap(), &vec![0u8; 20]);
        assert_eq!(sig.get_i64("keyId").unwrap(), 0);
        assert!(r.get_timestamp("operationTime").is_ok());
    }

    #[tokio::test]
    async fn db_and_command_name_are_validated() {
        let s = shared();
        let r = run(&s, doc! {"ping": 1}).await;
        assert_eq!(r.get_i32("code").unwrap(), 40571);
        assert_eq!(r.get_f64("ok").unwrap(), 0.0);
        let r = run(&s, doc! {"ping": 1, "$db": "a.b"}).await;
        assert_eq!(r.get_i32("code").unwrap(), 73);
        let r = run(&s, doc! {"frobnicate": 1, "$db": "a"}).await;
        assert_eq!(r.get_i32("code").unwrap(), 59);
        assert_eq!(
            r.get_str("errmsg").unwrap(),
            "no such command: 'frobnicate'"
        );
    }

    #[tokio::test]
    async fn transactions_and_unknown_read_concerns_are_refused() {
        let s = shared();
        let r = run(
            &s,
            doc! {"ping": 1, "$db": "a", "startTransaction": true, "autocommit": false},
        )
        .await;
        assert_eq!(r.get_i32("code").unwrap(), 115);
        let r = run(
            &s,
            doc! {"ping": 1, "$db": "a", "readConcern": {"level": "snapshot"}},
        )
        .await;
        assert_eq!(r.get_i32("code").unwrap(), 115);
        let r = run(
            &s,
            doc! {"ping": 1, "$db": "a", "readConcern": {"level": "majority"}},
        )
        .await;
        assert_eq!(r.get_f64("ok").unwrap(), 1.0);
    }

    #[tokio::test]
    async fn fail_point_error_close_and_labels() {
        let s = shared();
        run(
            &s,
            doc! {"configureFailPoint": "failCommand", "mode": {"times": 1}, "$db": "admin",
            "data": {"failCommands": ["ping"], "errorCode": 91}},
        )
        .await;
        let r = run(&s, doc! {"ping": 1, "$db": "a"}).await;
        assert_eq!(r.get_i32("code").unwrap(), 91);
        // Not a retryable write: no label.
        assert!(!r.contains_key("errorLabels"));
        assert_eq!(
            run(&s, doc! {"ping": 1, "$db": "a"})
                .await
                .get_f64("ok")
                .unwrap(),
            1.0
        );
        run(
            &s,
            doc! {"configureFailPoint": "failCommand", "mode": "alwaysOn", "$db": "admin",
            "data": {"failCommands": ["insert"], "errorCode": 10107}},
        )
        .await;
        let r = run(
            &s,
            doc! {"insert": "c", "documents": [], "$db": "a",
            "lsid": {"id": Binary { subtype: BinarySubtype::Uuid, bytes: vec![1; 16] }},
            "txnNumber": 1i64},
        )
        .await;
        assert_eq!(r.get_i32("code").unwrap(), 10107);
        assert_eq!(
            r.get_array("errorLabels").unwrap(),
            &vec![Bson::String("RetryableWriteError".into())]
        );
        run(
            &s,
            doc! {"configureFailPoint": "failCommand", "mode": "alwaysOn", "$db": "admin",
            "data": {"failCommands": ["ping"], "closeConnection": true}},
        )
        .await;
        let mut conn = ConnectionState::new(1, "p".into());
        assert_eq!(
            run_command(&s, &mut conn, doc! {"ping": 1, "$db": "a"}).await,
            Outcome::CloseConnection
        );
        // configureFailPoint itself is never failed.
        let r = run(
            &s,
            doc! {"configureFailPoint": "failCommand", "mode": "off", "$db": "admin"},
        )
        .await;
        assert_eq!(r.get_f64("ok").unwrap(), 1.0);
    }

    #[test]
    fn write_concern_errors_for_a_single_node() {
        let wce = write_concern_error(&doc! {"insert": "c", "writeConcern": {"w": 2}}).unwrap();
        assert_eq!(wce.get_i32("code").unwrap(), 100);
        assert_eq!(
            wce.get_document("errInfo").unwrap(),
            &doc! {"writeConcern": {"w": 2, "wtimeout": 0, "provenance": "clientSupplied"}}
        );
        assert_eq!(
            wce.get_str("errmsg").unwrap(),
            "Not enough data-bearing nodes"
        );
        let wce = write_concern_error(&doc! {"insert": "c", "writeConcern": {"w": "dc1"}}).unwrap();
        assert_eq!(wce.get_i32("code").unwrap(), 79);
        assert!(write_concern_error(&doc! {"writeConcern": {"w": "majority"}}).is_none());
        assert!(write_concern_error(&doc! {"writeConcern": {"w": 1}}).is_none());
        assert!(write_concern_error(&doc! {"writeConcern": {"w": 0}}).is_none());
    }

    #[tokio::test]
    async fn stepped_down_node_refuses_writes_and_primary_reads() {
        let s = shared();
        s.topology.lock().step_down(60);
        let r = run(&s, doc! {"insert": "c", "documents": [], "$db": "a"}).await;
        assert_eq!(r.get_i32("code").unwrap(), 10107);
        assert_eq!(r.get_str("errmsg").unwrap(), "not primary");
        assert_eq!(
            r.get_document("topologyVersion").unwrap(),
            &s.topology.lock().topology_version()
        );
        let r = run(&s, doc! {"find": "c", "$db": "a"}).await;
        assert_eq!(r.get_i32("code").unwrap(), 13435);
        assert!(r.contains_key("topologyVersion"));
        // Other errors carry none.
        let r = run(&s, doc! {"ping": 1}).await;
        assert!(!r.contains_key("topologyVersion"));
    }

    #[tokio::test]
    async fn retryable_write_replays_and_rejects_old_txn_numbers() {
        let s = shared();
        let lsid = doc! {"id": Binary { subtype: BinarySubtype::Uuid, bytes: vec![2; 16] }};
        let cmd = |txn: i64| {
            doc! {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"$inc": {"n": 1}}, "upsert": true}],
            "$db": "a", "lsid": lsid.clone(), "txnNumber": txn}
        };
        let first = run(&s, cmd(5)).await;
        assert_eq!(first.get_i32("n").unwrap(), 1);
        assert!(first.contains_key("upserted"));
        // The retry is answered from the first execution: same reply, nothing applied again.
        let retry = run(&s, cmd(5)).await;
        assert_eq!(retry.get_i32("n").unwrap(), 1);
        assert_eq!(
            retry.get_array("upserted").unwrap(),
            first.get_array("upserted").unwrap()
        );
        let stored = s
            .data
            .lock()
            .lookup_document(&crate::oplog::Namespace::new("a", "c"), &doc! {"_id": 1});
        assert_eq!(stored.unwrap().get_i32("n").unwrap(), 1);
        let r = run(&s, cmd(4)).await;
        assert_eq!(r.get_i32("code").unwrap(), 225);
        assert_eq!(r.get_str("codeName").unwrap(), "TransactionTooOld");
    }

    #[tokio::test]
    async fn change_stream_aggregate_failures_are_labelled_resumable() {
        let s = shared();
        run(
            &s,
            doc! {"configureFailPoint": "failCommand", "mode": "alwaysOn", "$db": "admin",
            "data": {"failCommands": ["aggregate", "getMore"], "errorCode": 6}},
        )
        .await;
        let r = run(
            &s,
            doc! {"aggregate": "c", "pipeline": [{"$changeStream": {}}], "cursor": {}, "$db": "a"},
        )
        .await;
        assert_eq!(r.get_i32("code").unwrap(), 6);
        assert_eq!(
            r.get_array("errorLabels").unwrap(),
            &vec![Bson::String("ResumableChangeStreamError".into())]
        );
        // An ordinary aggregate is not a change stream.
        let r = run(
            &s,
            doc! {"aggregate": "c", "pipeline": [], "cursor": {}, "$db": "a"},
        )
        .await;
        assert!(!r.contains_key("errorLabels"));
        // failCommand fails a getMore before its cursor is checked out: mongod cannot tell it
        // is a change stream's, and adds no label.
        s.change_stream_cursors.lock().insert(77);
        let r = run(&s, doc! {"getMore": 77i64, "collection": "c", "$db": "a"}).await;
        assert_eq!(r.get_i32("code").unwrap(), 6);
        assert!(!r.contains_key("errorLabels"));
        // Labels given to the fail point are reported exactly.
        run(
            &s,
            doc! {"configureFailPoint": "failCommand", "mode": "alwaysOn", "$db": "admin",
            "data": {"failCommands": ["getMore"], "errorCode": 6, "errorLabels": []}},
        )
        .await;
        let r = run(&s, doc! {"getMore": 77i64, "collection": "c", "$db": "a"}).await;
        assert_eq!(r.get_i32("code").unwrap(), 6);
        assert!(!r.contains_key("errorLabels"));
        // killCursors forgets the cursor.
        run(
            &s,
            doc! {"configureFailPoint": "failCommand", "mode": "off", "$db": "admin"},
        )
        .await;
        run(
            &s,
            doc! {"killCursors": "c", "cursors": [77i64], "$db": "a"},
        )
        .await;
        assert!(s.change_stream_cursors.lock().is_empty());
    }
}
