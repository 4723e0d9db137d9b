//! Open cursors (query results and change streams): the registry that hands out their ids,
//! and the results of a `find` or `aggregate` still to be returned.
//!
//! A cursor is checked out of the registry while a `getMore` runs on it
//! (`commands::getmore`), so a change stream can wait for new writes without holding any lock.

use crate::changestream::ChangeStreamCursor;
use crate::error::{self, CommandError, Result};
use crate::oplog::Namespace;
use crate::storage::{Data, bson_size};
use bson::Document;
use std::collections::{HashMap, VecDeque};

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

    /// Takes the cursor out of the registry for one `getMore`; CursorInUse while another has it.
    pub(crate) fn checkout(&mut self, id: i64) -> Result<CursorEntry> {
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

    /// Puts a checked-out cursor back.
    pub(crate) fn checkin(&mut self, id: i64, entry: CursorEntry) {
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

/// The byte budget of one batch: a reply must stay within the 16 MiB message limit.
const BATCH_BYTES: usize = 16 * 1024 * 1024;

/// Results of a `find` or `aggregate` still to be returned by `getMore`.
pub struct QueryCursor {
    remaining: VecDeque<Document>,
}

impl QueryCursor {
    /// A cursor over results already computed (a snapshot taken when the command ran).
    pub fn new(remaining: VecDeque<Document>) -> QueryCursor {
        QueryCursor { remaining }
    }

    /// The next batch (default: everything left, bounded by 16 MiB) and whether the cursor is
    /// exhausted.
    pub fn next_batch(
        &mut self,
        data: &Data,
        batch_size: Option<usize>,
    ) -> Result<(Vec<Document>, bool)> {
        let _ = data;
        let limit = batch_size.filter(|n| *n > 0).unwrap_or(usize::MAX);
        let batch = take_batch(&mut self.remaining, limit);
        Ok((batch, self.remaining.is_empty()))
    }
}

/// Takes up to `limit` documents, stopping before the batch would exceed 16 MiB (one
/// document always goes, as mongod never returns an empty batch for a large document).
pub(crate) fn take_batch(remaining: &mut VecDeque<Document>, limit: usize) -> Vec<Document> {
    let mut batch = Vec::new();
    let mut bytes = 0;
    while batch.len() < limit {
        let Some(next) = remaining.front() else {
            break;
        };
        let size = bson_size(next);
        if !batch.is_empty() && bytes + size > BATCH_BYTES {
            break;
        }
        bytes += size;
        if let Some(doc) = remaining.pop_front() {
            batch.push(doc);
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn a_query_cursor_hands_out_its_results_batch_by_batch() {
        let data = Data::new(10);
        let mut q = QueryCursor::new((0..3).map(|i| doc! {"i": i}).collect());
        let (b, done) = q.next_batch(&data, Some(2)).unwrap();
        assert_eq!((b.len(), done), (2, false));
        let (b, done) = q.next_batch(&data, None).unwrap();
        assert_eq!((b.len(), done), (1, true));
    }
}
