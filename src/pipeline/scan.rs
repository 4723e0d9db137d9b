//! The fold of the event collection: a worker's share of the stored events, read in
//! `{aggregateId, sequenceNumber}` order (the unique index's) and handed to the same lanes as
//! the change stream's. A first start from the beginning, a recovery from a lost history and
//! the live rebuild's scan are all this scan; its tickets carry the aggregate id, so that the
//! watermark says up to which aggregate everything is applied (where a rebuild resumes).

use crate::error::StoreError;
use crate::model::event::decode_raw_event;
use crate::model::partition::Worker;
use crate::pipeline::apply::Applier;
use crate::pipeline::dispatcher::Dispatcher;
use bson::{Bson, Document, RawDocumentBuf, doc};
use futures_util::TryStreamExt;
use mongodb::{Collection, Cursor, Database};
use tokio_util::sync::CancellationToken;

/// Documents asked for per batch of the scan's cursor.
const SCAN_BATCH: u32 = 1000;

/// A worker's share of the event collection, in fold order.
pub(crate) struct Scan {
    /// Read as BSON bytes: an event's fields are read in place, without a document tree.
    events: Collection<RawDocumentBuf>,
    filter: Document,
    sort: Document,
    aggregate_field: String,
}

/// An open scan.
pub(crate) struct ScanCursor {
    cursor: Cursor<RawDocumentBuf>,
    /// Documents read so far.
    pub scanned: u64,
    /// Set once every document was read.
    pub(crate) exhausted: bool,
}

impl Scan {
    /// Every stored event of `worker`'s share (the projection's filter, the partition).
    pub fn new(worker: &Worker, db: &Database) -> Self {
        let p = &worker.projection;
        let f = &p.fields;
        let mut filter = p.filter.clone().unwrap_or_default();
        worker.restrict(&mut filter, &f.aggregate_id);
        Scan {
            events: crate::store::majority_collection(db, &p.events).clone_with_type(),
            filter,
            sort: doc! {&f.aggregate_id: 1, &f.sequence_number: 1},
            aggregate_field: f.aggregate_id.clone(),
        }
    }

    /// Only the aggregates from `aggregate` on (in BSON order): a resumed scan. The aggregate
    /// itself is read again whole; the sequence guard absorbs what was already applied.
    pub(crate) fn resuming_at(mut self, aggregate: Option<&Bson>) -> Self {
        if let Some(from) = aggregate {
            let resume = resume_filter(&self.aggregate_field, from);
            self.filter = doc! {"$and": [self.filter, resume]};
        }
        self
    }

    pub async fn open(&self) -> Result<ScanCursor, StoreError> {
        let cursor = self
            .events
            .find(self.filter.clone())
            .sort(self.sort.clone())
            .batch_size(SCAN_BATCH)
            .await?;
        Ok(ScanCursor {
            cursor,
            scanned: 0,
            exhausted: false,
        })
    }
}

impl ScanCursor {
    /// Reads up to `limit` documents into the dispatcher (a malformed one is dead-lettered);
    /// the number read, 0 at the end or on shutdown.
    pub(crate) async fn feed(
        &mut self,
        limit: u64,
        dispatcher: &mut Dispatcher<Bson>,
        applier: &Applier,
        shutdown: &CancellationToken,
    ) -> Result<u64, StoreError> {
        let fields = &applier.config.fields;
        let mut read = 0;
        while read < limit && !shutdown.is_cancelled() {
            let Some(doc) = self.cursor.try_next().await? else {
                self.exhausted = true;
                break;
            };
            read += 1;
            self.scanned += 1;
            match decode_raw_event(&doc, fields) {
                Ok(event) => {
                    let ticket = dispatcher.issue(event.aggregate_id.clone());
                    dispatcher.route(ticket, event).await?;
                }
                Err(malformed) => applier.dead_letter_malformed(&malformed, None).await?,
            }
            dispatcher.take_ready_reports()?;
        }
        Ok(read)
    }
}

/// The filter that resumes a scan at aggregate `from`. A range query only matches ids of
/// `from`'s own type (manual: "Comparison/Sort Order", type bracketing), so ids of the types
/// sorted after it are added explicitly; ids of unusual types resume from the start (the
/// guard absorbs what is already applied).
fn resume_filter(field: &str, from: &Bson) -> Document {
    const AFTER_OBJECT_ID: [&str; 5] = ["bool", "date", "timestamp", "regex", "maxKey"];
    let later: Vec<&str> = match from {
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => {
            let mut l = vec!["string", "symbol", "object", "array", "binData", "objectId"];
            l.extend(AFTER_OBJECT_ID);
            l
        }
        Bson::String(_) => {
            let mut l = vec!["object", "array", "binData", "objectId"];
            l.extend(AFTER_OBJECT_ID);
            l
        }
        Bson::ObjectId(_) => AFTER_OBJECT_ID.to_vec(),
        _ => return doc! {},
    };
    doc! {"$or": [{field: {"$gte": from.clone()}}, {field: {"$type": later}}]}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_scan_also_covers_ids_of_later_types() {
        assert_eq!(
            resume_filter("a", &Bson::String("m".into())),
            doc! {"$or": [{"a": {"$gte": "m"}}, {"a": {"$type": ["object", "array", "binData", "objectId", "bool", "date", "timestamp", "regex", "maxKey"]}}]}
        );
        assert_eq!(resume_filter("a", &Bson::Null), doc! {});
    }
}
