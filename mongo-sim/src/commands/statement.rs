//! One statement of a write command (an insert's document, an update or delete statement, a
//! findAndModify): run on the data, or, for a retryable write, replayed when it was already
//! applied, else run and recorded in the session's [`crate::retryable`] record.
//!
//! The `onPrimaryTransactionalWrite` fail point fires after each statement that wrote, as
//! mongod's does in `onWriteOpCompletedOnPrimary`: it closes the connection
//! (`closeConnection`, true unless given as false) and, with `failBeforeCommitExceptionCode`,
//! fails the statement so that its write is undone and not recorded.

use crate::error::{CommandError, Result};
use crate::oplog::{Namespace, Savepoint};
use crate::retryable::StatementResult;
use crate::state::{CommandContext, Shared};
use crate::storage::{Collection, Data};
use bson::Bson;

/// What became of one statement run through [`run_statement`].
pub(crate) enum Statement<T> {
    /// Applied now, or replayed from its first execution.
    Done(T),
    /// Failed; nothing of it was applied.
    Failed(CommandError),
}

/// How to run, record and replay one kind of statement.
pub(crate) struct StatementKind<'a, T> {
    pub(crate) run: &'a mut dyn FnMut(&mut Data) -> Result<T>,
    pub(crate) record: &'a dyn Fn(&T) -> StatementResult,
    pub(crate) replay: &'a dyn Fn(StatementResult) -> Option<T>,
    /// Whether the statement wrote, so that it counts for the fail point.
    pub(crate) wrote: &'a dyn Fn(&T) -> bool,
}

/// Runs the `index`-th statement of the command on `ns`: replayed when this retryable write
/// already applied it, otherwise run, recorded, and passed through `onPrimaryTransactionalWrite`.
pub(crate) fn run_statement<T>(
    shared: &Shared,
    ctx: &CommandContext,
    data: &mut Data,
    ns: &Namespace,
    index: usize,
    kind: StatementKind<'_, T>,
) -> Statement<T> {
    let Some(write) = &ctx.retryable else {
        return match (kind.run)(data) {
            Ok(v) => Statement::Done(v),
            Err(e) => Statement::Failed(e),
        };
    };
    let stmt = write.stmt_id(index);
    if let Some(done) = data.transactions.executed(write, stmt)
        && let Some(v) = (kind.replay)(done)
    {
        return Statement::Done(v);
    }
    let watched = shared
        .failpoints
        .lock()
        .is_set("onPrimaryTransactionalWrite");
    let before = watched.then(|| Snapshot::take(data, ns));
    let value = match (kind.run)(data) {
        Ok(v) => v,
        Err(e) => return Statement::Failed(e),
    };
    if (kind.wrote)(&value)
        && let Some(fired) = shared.failpoints.lock().fire("onPrimaryTransactionalWrite")
    {
        let close = !matches!(fired.get("closeConnection"), Some(Bson::Boolean(false)));
        if close {
            ctx.request_hang_up();
        }
        if let Some(code) = fired
            .get("failBeforeCommitExceptionCode")
            .and_then(crate::bsontype::as_i64)
        {
            if let Some(snapshot) = before {
                snapshot.restore(data, ns);
            }
            return Statement::Failed(CommandError::from_code(
                code as i32,
                format!(
                    "Failing write for {}:{} due to failpoint. The write must not be reflected.",
                    write.display, write.txn_number
                ),
            ));
        }
    }
    data.transactions.record(write, stmt, (kind.record)(&value));
    Statement::Done(value)
}

/// The state one statement may change: its collection and the oplog's end, kept while
/// `onPrimaryTransactionalWrite` may ask for the statement to be undone.
struct Snapshot {
    collection: Option<Collection>,
    oplog: Savepoint,
}

impl Snapshot {
    fn take(data: &Data, ns: &Namespace) -> Snapshot {
        Snapshot {
            collection: data.collection(ns).cloned(),
            oplog: data.oplog.savepoint(),
        }
    }

    fn restore(self, data: &mut Data, ns: &Namespace) {
        match self.collection {
            Some(c) => {
                if let Some(slot) = data.collection_mut(ns) {
                    *slot = c;
                }
            }
            None => {
                if let Some(db) = data.databases.get_mut(&ns.db) {
                    db.collections.remove(&ns.coll);
                }
                data.forget_if_empty(&ns.db);
            }
        }
        data.oplog.rollback(self.oplog);
    }
}
