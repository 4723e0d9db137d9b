//! `getMore` and `killCursors` (manual: "getMore", "killCursors"): the commands on the
//! cursors of the registry (`cursor`). A getMore checks its cursor out, so a change stream can
//! wait for new writes without holding any lock, and labels a change stream's resumable
//! failure once the cursor is checked out, as mongod does.

use crate::changestream;
use crate::cursor::{CursorKind, Cursors};
use crate::error::{self, CommandError, Result};
use crate::oplog::Namespace;
use crate::state::{CommandContext, Shared};
use bson::{Bson, Document, doc};
use std::sync::Arc;
use std::time::Duration;

/// `getMore` (manual: "getMore"): the next batch of a cursor.
pub(crate) async fn get_more(
    shared: &Arc<Shared>,
    ctx: &CommandContext,
    cmd: &Document,
) -> Result<Document> {
    let id = match cmd.get("getMore") {
        Some(Bson::Int64(id)) => *id,
        Some(other) => {
            return Err(CommandError::type_mismatch(format!(
                "BSON field 'getMore.getMore' is the wrong type '{}', expected type 'long'",
                crate::bsontype::type_name(other)
            )));
        }
        None => {
            return Err(CommandError::failed_to_parse(
                "getMore requires a cursor id",
            ));
        }
    };
    let coll = match cmd.get("collection") {
        Some(Bson::String(c)) => c.clone(),
        _ => return Err(no_such_key("getMore", "collection")),
    };
    let batch_size = match cmd.get("batchSize") {
        None => None,
        Some(v) => match crate::bsontype::as_i64(v) {
            Some(n) if n >= 0 => Some(n as usize),
            _ => {
                return Err(CommandError::bad_value(
                    "Batch size for getMore must be positive",
                ));
            }
        },
    };
    let max_time = match cmd.get("maxTimeMS") {
        None => None,
        Some(v) => match crate::bsontype::as_i64(v) {
            Some(n) if n >= 0 => Some(Duration::from_millis(n as u64)),
            _ => {
                return Err(CommandError::bad_value(
                    "maxTimeMS must be a non-negative integer",
                ));
            }
        },
    };
    let ns = Namespace::new(ctx.db.clone(), coll);
    let mut entry = shared.cursors.lock().checkout(id)?;
    // A getMore abandoned while it waits (interrupted by a step-down, or its connection
    // closed) destroys its cursor, as in mongod, instead of leaving it checked out forever.
    let mut checked_out = CheckedOut {
        cursors: &shared.cursors,
        id,
        armed: true,
    };
    if entry.ns != ns {
        let belongs = entry.ns.to_string();
        checked_out.armed = false;
        shared.cursors.lock().checkin(id, entry);
        return Err(CommandError::new(
            error::UNAUTHORIZED,
            format!(
                "Requested getMore on namespace '{ns}', but cursor belongs to a different namespace {belongs}"
            ),
        ));
    }
    let change_stream = matches!(entry.kind, CursorKind::ChangeStream(_));
    let outcome = match (injected_failure(shared, ctx, &ns), &mut entry.kind) {
        (Some(e), _) => Err(e),
        (None, CursorKind::Query(q)) => {
            let data = shared.data.lock();
            q.next_batch(&data, batch_size)
                .map(|(batch, done)| (batch, None, done))
        }
        (None, CursorKind::ChangeStream(cs)) => changestream::get_more(
            &shared.data,
            shared.subscribe_oplog(),
            cs,
            batch_size,
            max_time,
        )
        .await
        .map(|(batch, pbrt, done)| (batch, Some(pbrt), done)),
    };
    // mongod labels a resumable failure of a change stream's getMore once the cursor is
    // checked out (its `isResumableChangeStreamError` needs the originating aggregate), so
    // failures after checkout get the label and `failCommand`'s, before it, do not
    // (change-streams spec, "Resumable Error").
    let outcome = outcome.map_err(|e| {
        if change_stream
            && error::RESUMABLE_CHANGE_STREAM_CODES.contains(&e.code)
            && e.labels.is_empty()
        {
            e.with_label("ResumableChangeStreamError")
        } else {
            e
        }
    });
    checked_out.armed = false;
    match outcome {
        Err(e) => {
            // A failed getMore destroys the cursor, as in mongod.
            shared.cursors.lock().kill(id);
            Err(e)
        }
        Ok((batch, pbrt, done)) => {
            let ns_string = entry.ns.to_string();
            let reply_id = if done {
                shared.cursors.lock().kill(id);
                0
            } else {
                shared.cursors.lock().checkin(id, entry);
                id
            };
            let mut cursor = doc! {"nextBatch": batch, "id": reply_id, "ns": ns_string};
            if let Some(pbrt) = pbrt {
                cursor.insert("postBatchResumeToken", pbrt);
            }
            Ok(doc! {"cursor": cursor})
        }
    }
}

/// A required field missing, as mongod reports it for these two commands (NoSuchKey).
fn no_such_key(command: &str, field: &str) -> CommandError {
    CommandError::new(
        error::NO_SUCH_KEY,
        format!("BSON field '{command}.{field}' is missing but a required field"),
    )
}

/// The error `failGetMoreAfterCursorCheckout` injects, when it fires for this getMore: its
/// `errorCode` (InternalError when none), narrowed by `appName` and `namespace` as
/// `failCommand` is.
fn injected_failure(shared: &Shared, ctx: &CommandContext, ns: &Namespace) -> Option<CommandError> {
    let ns = ns.to_string();
    let applies = |data: &Document| {
        let app = data.get_str("appName").ok();
        let namespace = data.get_str("namespace").ok();
        app.is_none_or(|a| ctx.app_name.as_deref() == Some(a)) && namespace.is_none_or(|n| n == ns)
    };
    let data = shared
        .failpoints
        .lock()
        .fire_if("failGetMoreAfterCursorCheckout", applies)?;
    let code = data
        .get("errorCode")
        .and_then(crate::bsontype::as_i64)
        .and_then(|c| i32::try_from(c).ok())
        .unwrap_or(error::INTERNAL_ERROR.code);
    Some(CommandError::from_code(
        code,
        "Hit the 'failGetMoreAfterCursorCheckout' failpoint",
    ))
}

/// Kills a checked-out cursor when dropped while armed; disarmed once its getMore has an
/// outcome of its own.
struct CheckedOut<'a> {
    cursors: &'a parking_lot::Mutex<Cursors>,
    id: i64,
    armed: bool,
}

impl Drop for CheckedOut<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.cursors.lock().kill(self.id);
        }
    }
}

/// `killCursors` (manual: "killCursors"): reply lists killed, not found, alive and unknown ids.
pub(crate) fn kill_cursors(
    shared: &Shared,
    _ctx: &CommandContext,
    cmd: &Document,
) -> Result<Document> {
    let ids = match cmd.get("cursors") {
        Some(Bson::Array(ids)) => ids.clone(),
        _ => return Err(no_such_key("killCursors", "cursors")),
    };
    let mut killed = Vec::new();
    let mut not_found = Vec::new();
    let mut cursors = shared.cursors.lock();
    for id in ids {
        let Bson::Int64(n) = id else {
            return Err(CommandError::type_mismatch(
                "BSON field 'killCursors.cursors' is the wrong type, expected type 'long'",
            ));
        };
        if cursors.kill(n) {
            killed.push(Bson::Int64(n));
        } else {
            not_found.push(Bson::Int64(n));
        }
    }
    Ok(doc! {
        "cursorsKilled": killed,
        "cursorsNotFound": not_found,
        "cursorsAlive": [],
        "cursorsUnknown": [],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::aggregation::change_stream;
    use crate::oplog::OplogOp;
    use crate::state::ServerOptions;

    fn shared() -> Arc<Shared> {
        let host = "127.0.0.1:27017".to_string();
        Arc::new(Shared::new(ServerOptions::default(), host))
    }

    fn ctx() -> CommandContext {
        CommandContext {
            db: "db".to_string(),
            ..CommandContext::default()
        }
    }

    fn write(shared: &Shared, op: OplogOp) {
        shared.data.lock().oplog.record(op, None);
        shared.publish_oplog_head();
    }

    fn stream(spec: Document) -> [Bson; 1] {
        [Bson::Document(doc! {"$changeStream": spec})]
    }

    #[test]
    fn an_invalidate_in_the_first_batch_closes_the_cursor() {
        let s = shared();
        let start = s.data.lock().oplog.tick();
        let ns = Namespace::new("db", "c");
        write(&s, OplogOp::Drop { ns });
        let cmd = doc! {"aggregate": "c", "cursor": {}};
        let spec = doc! {"startAtOperationTime": start};
        let reply = change_stream(&s, &ctx(), &cmd, &stream(spec)).unwrap();
        let cursor = reply.get_document("cursor").unwrap();
        assert_eq!(cursor.get_i64("id").unwrap(), 0);
        assert_eq!(cursor.get_array("firstBatch").unwrap().len(), 2);
        assert!(s.cursors.lock().is_empty());
    }

    #[tokio::test]
    async fn change_stream_cursors_are_registered_under_the_namespace_get_more_names() {
        let s = shared();
        let cmd = doc! {"aggregate": 1, "cursor": {}};
        let reply = change_stream(&s, &ctx(), &cmd, &stream(doc! {})).unwrap();
        let cursor = reply.get_document("cursor").unwrap();
        let keys: Vec<&str> = cursor.keys().map(String::as_str).collect();
        assert_eq!(keys, ["firstBatch", "postBatchResumeToken", "id", "ns"]);
        assert_eq!(cursor.get_str("ns").unwrap(), "db.$cmd.aggregate");
        let id = cursor.get_i64("id").unwrap();
        assert_ne!(id, 0);
        let document = Arc::new(doc! {"_id": 1, "x": 1});
        let ns = Namespace::new("db", "c");
        write(&s, OplogOp::Insert { ns, document });
        let get_more_cmd = doc! {"getMore": id, "collection": "$cmd.aggregate", "maxTimeMS": 0};
        let reply = get_more(&s, &ctx(), &get_more_cmd).await.unwrap();
        let cursor = reply.get_document("cursor").unwrap();
        assert_eq!(cursor.get_i64("id").unwrap(), id);
        assert_eq!(cursor.get_array("nextBatch").unwrap().len(), 1);
        assert!(cursor.get_document("postBatchResumeToken").is_ok());
    }
}
