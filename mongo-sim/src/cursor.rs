//! Open cursors (query results and change streams): ids, `getMore` and `killCursors`.
//!
//! A cursor is checked out of the registry while a `getMore` runs on it, so a change stream
//! can wait for new writes without holding any lock.

use crate::changestream::{self, ChangeStreamCursor};
use crate::commands::crud::QueryCursor;
use crate::error::{self, CommandError, Result};
use crate::oplog::Namespace;
use crate::state::{CommandContext, Shared};
use bson::{Bson, Document, doc};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub enum CursorKind {
    Query(QueryCursor),
    ChangeStream(Box<ChangeStreamCursor>),
}

pub struct CursorEntry {
    pub ns: Namespace,
    pub kind: CursorKind,
}

/// The registry of open cursors.
#[derive(Default)]
pub struct Cursors {
    open: HashMap<i64, Option<CursorEntry>>,
}

impl Cursors {
    /// Registers a cursor and returns its id: a random positive int64, as mongod hands out.
    pub fn register(&mut self, entry: CursorEntry) -> i64 {
        loop {
            let id = rand::random::<i64>() & i64::MAX;
            if id != 0 && !self.open.contains_key(&id) {
                self.open.insert(id, Some(entry));
                return id;
            }
        }
    }

    fn checkout(&mut self, id: i64) -> Result<CursorEntry> {
        match self.open.get_mut(&id) {
            None => Err(CommandError::new(
                error::CURSOR_NOT_FOUND,
                format!("cursor id {id} not found"),
            )),
            Some(slot) => slot.take().ok_or_else(|| {
                CommandError::new(
                    error::CURSOR_IN_USE,
                    format!("cursor id {id} is already in use"),
                )
            }),
        }
    }

    fn checkin(&mut self, id: i64, entry: CursorEntry) {
        // A killCursors while the cursor was checked out removed the slot: drop it then.
        if let Some(slot) = self.open.get_mut(&id) {
            *slot = Some(entry);
        }
    }

    /// Removes a cursor; false when there was none.
    pub fn kill(&mut self, id: i64) -> bool {
        self.open.remove(&id).is_some()
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

/// `getMore` (manual: "getMore"): the next batch of a cursor.
pub async fn get_more(
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
        _ => {
            return Err(CommandError::new(
                error::NO_SUCH_KEY,
                "BSON field 'getMore.collection' is missing but a required field",
            ));
        }
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
        (None, CursorKind::ChangeStream(cs)) => {
            changestream::get_more(shared, cs, batch_size, max_time)
                .await
                .map(|(batch, pbrt, done)| (batch, Some(pbrt), done))
        }
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
pub fn kill_cursors(shared: &Shared, _ctx: &CommandContext, cmd: &Document) -> Result<Document> {
    let ids = match cmd.get("cursors") {
        Some(Bson::Array(ids)) => ids.clone(),
        _ => {
            return Err(CommandError::new(
                error::NO_SUCH_KEY,
                "BSON field 'killCursors.cursors' is missing but a required field",
            ));
        }
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
