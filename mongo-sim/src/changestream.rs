//! Change streams: `aggregate` with `$changeStream` opens one over a collection, a database
//! or the cluster; `getMore` reads events from the oplog, waiting for new writes up to
//! `maxTimeMS`; resume tokens are positions in the oplog.

use crate::error::{CommandError, Result};
use crate::state::{CommandContext, Shared};
use bson::{Bson, Document};
use std::sync::Arc;
use std::time::Duration;

/// An open change stream's position and options.
pub struct ChangeStreamCursor {}

/// Opens a change stream for `aggregate` whose first stage is `$changeStream`; returns the
/// full command reply body (`cursor: {firstBatch, id, ns, postBatchResumeToken}`).
pub fn open(
    shared: &Shared,
    ctx: &CommandContext,
    cmd: &Document,
    pipeline: &[Bson],
) -> Result<Document> {
    let _ = (shared, ctx, cmd, pipeline);
    Err(CommandError::not_supported(
        "change streams are not implemented yet",
    ))
}

/// One `getMore` on a change stream: the batch, the post-batch resume token, and whether the
/// cursor is now closed (after `invalidate`).
pub async fn get_more(
    shared: &Arc<Shared>,
    cursor: &mut ChangeStreamCursor,
    batch_size: Option<usize>,
    max_time: Option<Duration>,
) -> Result<(Vec<Document>, Document, bool)> {
    let _ = (shared, cursor, batch_size, max_time);
    Err(CommandError::not_supported(
        "change streams are not implemented yet",
    ))
}

/// `replSetGetStatus`: one PRIMARY member, with the oplog's first and last optimes.
pub fn repl_set_get_status(
    shared: &Shared,
    ctx: &CommandContext,
    cmd: &Document,
) -> Result<Document> {
    let _ = (shared, ctx, cmd);
    Err(CommandError::not_supported(
        "replSetGetStatus is not implemented yet",
    ))
}
