//! Parked and dead-lettered events: kept in a MongoDB collection with their reason, attempts
//! and next-attempt time, so that nothing that could not be applied disappears. Parked events
//! are retried with backoff and released as soon as their predecessor is applied;
//! dead-lettered ones wait for an operator (`mongo-projector parked retry|skip`).

use crate::config::ParkingConfig;
use crate::error::StoreError;
use crate::model::event::{Event, Malformed};
use crate::model::partition::{Partition, Worker};
use bson::{Bson, DateTime, Document, doc};
use futures_util::TryStreamExt;
use mongodb::options::WriteConcern;
use mongodb::{Collection, Database};
use std::time::Duration;

/// Why an event was parked or dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkReason {
    /// Its predecessor has not been applied and is not in the event collection yet.
    Gap,
    /// No handler for its type and the projection parks such events.
    Unhandled,
    /// The handler cannot be applied to it (missing field, update refused by the server).
    HandlerError,
    /// The event document itself is unusable.
    Malformed,
}

impl ParkReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ParkReason::Gap => "gap",
            ParkReason::Unhandled => "unhandled",
            ParkReason::HandlerError => "handler_error",
            ParkReason::Malformed => "malformed",
        }
    }
}

/// State of a parked entry.
pub(crate) const PARKED: &str = "parked";
pub(crate) const DEAD: &str = "dead";

/// One parked entry as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct ParkedEvent {
    pub id: Document,
    pub event: Document,
    pub reason: String,
    pub detail: String,
    pub state: String,
    pub attempts: u32,
    pub first_parked_at: DateTime,
    pub(crate) next_attempt_at: Option<DateTime>,
}

impl ParkedEvent {
    fn from_document(d: &Document) -> Option<ParkedEvent> {
        Some(ParkedEvent {
            id: d.get_document("_id").ok()?.clone(),
            event: d.get_document("event").cloned().unwrap_or_default(),
            reason: d.get_str("reason").unwrap_or("").to_string(),
            detail: d.get_str("detail").unwrap_or("").to_string(),
            state: d.get_str("state").unwrap_or("").to_string(),
            attempts: match d.get("attempts") {
                Some(Bson::Int32(n)) => (*n).max(0) as u32,
                Some(Bson::Int64(n)) => (*n).clamp(0, u32::MAX as i64) as u32,
                _ => 0,
            },
            first_parked_at: d
                .get_datetime("firstParkedAt")
                .copied()
                .unwrap_or_else(|_| DateTime::now()),
            next_attempt_at: d.get_datetime("nextAttemptAt").ok().copied(),
        })
    }
}

/// The parked-events collection of one projection.
#[derive(Clone)]
pub struct ParkedStore {
    coll: Collection<Document>,
    projection: String,
    /// A partitioned worker's share: its sweeps and counts see only the entries of aggregates
    /// in its partition (entries are keyed by the projection, so every K shares them).
    partition: Option<Partition>,
}

fn later(base: DateTime, by: Duration) -> DateTime {
    DateTime::from_millis(
        base.timestamp_millis()
            .saturating_add(by.as_millis().min(i64::MAX as u128) as i64),
    )
}

/// Backoff before attempt `attempts + 1`: doubling from `initial`, capped at `max`.
pub(crate) fn backoff(attempts: u32, initial: Duration, max: Duration) -> Duration {
    let factor = 1u32.checked_shl(attempts.min(30)).unwrap_or(u32::MAX);
    initial.saturating_mul(factor).min(max)
}

impl ParkedStore {
    pub fn new(db: &Database, collection: &str, projection: &str) -> Self {
        let options = mongodb::options::CollectionOptions::builder()
            .write_concern(WriteConcern::majority())
            .build();
        Self {
            coll: db.collection_with_options(collection, options),
            projection: projection.to_string(),
            partition: None,
        }
    }

    /// The store as one worker sees it: the projection's entries, restricted to the worker's
    /// partition (by the entry's `aggregateId`) when it is one.
    pub fn for_worker(db: &Database, worker: &Worker) -> Self {
        let mut store = Self::new(
            db,
            &worker.projection.parking.collection,
            &worker.projection.name,
        );
        store.partition = worker.partition;
        store
    }

    /// `filter` restricted to this store's partition.
    fn mine(&self, mut filter: Document) -> Document {
        if let Some(p) = self.partition {
            filter.insert("$expr", p.expr("aggregateId"));
        }
        filter
    }

    /// True when some entry of this store's share is parked (not dead).
    pub(crate) async fn any_parked(&self) -> Result<bool, StoreError> {
        Ok(self
            .coll
            .find_one(self.mine(doc! {"projection": &self.projection, "state": PARKED}))
            .projection(doc! {"_id": 1})
            .await?
            .is_some())
    }

    pub fn collection(&self) -> &Collection<Document> {
        &self.coll
    }

    fn key(&self, aggregate_id: &Bson, sequence: i64) -> Document {
        doc! {"projection": &self.projection, "aggregateId": aggregate_id.clone(), "sequenceNumber": sequence}
    }

    fn describe(event: &Event) -> Document {
        doc! {
            "aggregateId": event.aggregate_id.clone(),
            "sequenceNumber": event.sequence,
            "eventType": &event.event_type,
            // Parking is the rare path: the event is stored as a document operators can read.
            "event": event.document.to_document().unwrap_or_default(),
        }
    }

    /// Parks `event` unless it is already parked or dead. True when it was newly parked.
    pub async fn park(
        &self,
        event: &Event,
        reason: ParkReason,
        detail: &str,
        cfg: &ParkingConfig,
    ) -> Result<bool, StoreError> {
        let now = DateTime::now();
        let mut on_insert = Self::describe(event);
        on_insert.extend(doc! {
            "projection": &self.projection,
            "state": PARKED,
            "reason": reason.as_str(),
            "detail": detail,
            "attempts": 0i32,
            "firstParkedAt": now,
            "nextAttemptAt": later(now, cfg.retry_initial),
        });
        let result = self
            .coll
            .update_one(
                doc! {"_id": self.key(&event.aggregate_id, event.sequence)},
                doc! {"$setOnInsert": on_insert},
            )
            .upsert(true)
            .await?;
        Ok(result.upserted_id.is_some())
    }

    /// Marks `event` dead-lettered (creating the entry if needed).
    pub(crate) async fn dead_letter(
        &self,
        event: &Event,
        reason: ParkReason,
        detail: &str,
    ) -> Result<(), StoreError> {
        let now = DateTime::now();
        let mut on_insert = Self::describe(event);
        on_insert
            .extend(doc! {"projection": &self.projection, "attempts": 0i32, "firstParkedAt": now});
        self.coll
            .update_one(
                doc! {"_id": self.key(&event.aggregate_id, event.sequence)},
                doc! {
                    "$set": {"state": DEAD, "reason": reason.as_str(), "detail": detail, "deadLetteredAt": now},
                    "$unset": {"nextAttemptAt": ""},
                    "$setOnInsert": on_insert,
                },
            )
            .upsert(true)
            .await?;
        Ok(())
    }

    /// Dead-letters an event that cannot even be decoded. `token` (the change event's resume
    /// token) keys it, so a redelivery does not create a second entry.
    pub(crate) async fn dead_letter_malformed(
        &self,
        malformed: &Malformed,
        token: Option<&Bson>,
    ) -> Result<(), StoreError> {
        let now = DateTime::now();
        let source_id = malformed
            .document
            .as_ref()
            .and_then(|d| d.get("_id").cloned())
            .or_else(|| token.cloned())
            .unwrap_or_else(|| Bson::ObjectId(bson::oid::ObjectId::new()));
        let id = doc! {"projection": &self.projection, "malformed": source_id};
        self.coll
            .update_one(
                doc! {"_id": id},
                doc! {"$setOnInsert": {
                    "projection": &self.projection,
                    "state": DEAD,
                    "reason": ParkReason::Malformed.as_str(),
                    "detail": &malformed.reason,
                    "event": malformed.document.clone().map(Bson::Document).unwrap_or(Bson::Null),
                    "attempts": 0i32,
                    "firstParkedAt": now,
                    "deadLetteredAt": now,
                }},
            )
            .upsert(true)
            .await?;
        Ok(())
    }

    /// The parked (not dead) event with this position, as its event document.
    pub(crate) async fn find_waiting(
        &self,
        aggregate_id: &Bson,
        sequence: i64,
    ) -> Result<Option<Document>, StoreError> {
        let found = self
            .coll
            .find_one(doc! {"_id": self.key(aggregate_id, sequence), "state": PARKED})
            .await?;
        Ok(found.and_then(|d| d.get_document("event").ok().cloned()))
    }

    pub async fn remove(&self, aggregate_id: &Bson, sequence: i64) -> Result<bool, StoreError> {
        let r = self
            .coll
            .delete_one(doc! {"_id": self.key(aggregate_id, sequence)})
            .await?;
        Ok(r.deleted_count > 0)
    }

    /// Removes one entry by its `_id`.
    pub(crate) async fn remove_entry(&self, id: &Document) -> Result<bool, StoreError> {
        let r = self.coll.delete_one(doc! {"_id": id.clone()}).await?;
        Ok(r.deleted_count > 0)
    }

    /// Parked events of this store's share whose next attempt is due, oldest first.
    pub async fn due(&self, limit: i64) -> Result<Vec<ParkedEvent>, StoreError> {
        let cursor = self
            .coll
            .find(self.mine(doc! {"projection": &self.projection, "state": PARKED, "nextAttemptAt": {"$lte": DateTime::now()}}))
            .sort(doc! {"nextAttemptAt": 1})
            .limit(limit)
            .await?;
        let docs: Vec<Document> = cursor.try_collect().await?;
        Ok(docs.iter().filter_map(ParkedEvent::from_document).collect())
    }

    /// Counts one more failed attempt; dead-letters the entry past its limits. True when it
    /// was dead-lettered now.
    pub(crate) async fn reschedule(
        &self,
        parked: &ParkedEvent,
        cfg: &ParkingConfig,
    ) -> Result<bool, StoreError> {
        let now = DateTime::now();
        let attempts = parked.attempts + 1;
        let age = Duration::from_millis(
            (now.timestamp_millis() - parked.first_parked_at.timestamp_millis()).max(0) as u64,
        );
        let update = if attempts >= cfg.max_attempts || age >= cfg.max_age {
            doc! {
                "$set": {"state": DEAD, "attempts": attempts as i64, "lastAttemptAt": now, "deadLetteredAt": now,
                         "detail": format!("{} (dead-lettered after {attempts} attempts over {})", parked.detail, humantime::format_duration(Duration::from_secs(age.as_secs())))},
                "$unset": {"nextAttemptAt": ""},
            }
        } else {
            doc! {"$set": {
                "attempts": attempts as i64,
                "lastAttemptAt": now,
                "nextAttemptAt": later(now, backoff(attempts, cfg.retry_initial, cfg.retry_max)),
            }}
        };
        let dead = update
            .get_document("$set")
            .map(|s| s.contains_key("deadLetteredAt"))
            .unwrap_or(false);
        let r = self
            .coll
            .update_one(doc! {"_id": parked.id.clone(), "state": PARKED}, update)
            .await?;
        Ok(dead && r.modified_count > 0)
    }

    /// Entries of this projection, optionally for one aggregate, oldest first.
    pub async fn list(
        &self,
        aggregate_id: Option<&Bson>,
        limit: i64,
    ) -> Result<Vec<ParkedEvent>, StoreError> {
        let mut filter = doc! {"projection": &self.projection};
        if let Some(a) = aggregate_id {
            filter.insert("aggregateId", a.clone());
        }
        let docs: Vec<Document> = self
            .coll
            .find(filter)
            .sort(doc! {"firstParkedAt": 1})
            .limit(limit)
            .await?
            .try_collect()
            .await?;
        Ok(docs.iter().filter_map(ParkedEvent::from_document).collect())
    }

    /// Makes entries (dead ones too) due for another attempt now. Returns how many.
    pub async fn retry_now(&self, aggregate_id: Option<&Bson>) -> Result<u64, StoreError> {
        let mut filter = doc! {"projection": &self.projection, "aggregateId": {"$exists": true}};
        if let Some(a) = aggregate_id {
            filter.insert("aggregateId", a.clone());
        }
        let r = self
            .coll
            .update_many(
                filter,
                doc! {"$set": {"state": PARKED, "attempts": 0i64, "nextAttemptAt": DateTime::now(), "firstParkedAt": DateTime::now()}, "$unset": {"deadLetteredAt": ""}},
            )
            .await?;
        Ok(r.modified_count)
    }

    /// When the oldest entry (parked or dead) of this store's share was first parked.
    pub(crate) async fn oldest_first_parked(&self) -> Result<Option<DateTime>, StoreError> {
        let oldest = self
            .coll
            .find_one(self.mine(doc! {"projection": &self.projection}))
            .sort(doc! {"firstParkedAt": 1})
            .projection(doc! {"firstParkedAt": 1})
            .await?;
        Ok(oldest.and_then(|d| d.get_datetime("firstParkedAt").ok().copied()))
    }

    /// Counts of this store's share by state: (parked, dead).
    pub async fn counts(&self) -> Result<(u64, u64), StoreError> {
        let parked = self
            .coll
            .count_documents(self.mine(doc! {"projection": &self.projection, "state": PARKED}))
            .await?;
        let dead = self
            .coll
            .count_documents(self.mine(doc! {"projection": &self.projection, "state": DEAD}))
            .await?;
        Ok((parked, dead))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let ms = Duration::from_millis;
        assert_eq!(backoff(0, ms(100), ms(1000)), ms(100));
        assert_eq!(backoff(1, ms(100), ms(1000)), ms(200));
        assert_eq!(backoff(3, ms(100), ms(1000)), ms(800));
        assert_eq!(backoff(4, ms(100), ms(1000)), ms(1000));
        assert_eq!(backoff(200, ms(100), ms(1000)), ms(1000));
    }
}
