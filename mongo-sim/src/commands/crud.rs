//! Reads and writes on documents: insert, update, delete, find, findAndModify, count,
//! distinct and (non-change-stream) aggregate.

use crate::error::{CommandError, Result};
use crate::state::{CommandContext, Shared};
use crate::storage::Data;
use bson::Document;

/// Results of a `find` or `aggregate` still to be returned by `getMore`.
pub struct QueryCursor {}

impl QueryCursor {
    /// The next batch (default: everything left, bounded by 16 MiB) and whether the cursor is
    /// exhausted.
    pub fn next_batch(
        &mut self,
        data: &Data,
        batch_size: Option<usize>,
    ) -> Result<(Vec<Document>, bool)> {
        let _ = (data, batch_size);
        Ok((Vec::new(), true))
    }
}

macro_rules! not_yet {
    ($($name:ident),*) => {$(
        pub fn $name(shared: &Shared, ctx: &CommandContext, cmd: &Document) -> Result<Document> {
            let _ = (shared, ctx, cmd);
            Err(CommandError::not_supported(concat!(stringify!($name), " is not implemented yet")))
        }
    )*};
}

not_yet!(
    insert,
    update,
    delete,
    find,
    find_and_modify,
    count,
    distinct,
    aggregate
);
