//! Applying events to a read model under the sequence guard, and deciding what an outcome
//! means: applied, duplicate (skip and count), or gap (heal from the event collection, else
//! park). See `projection` for the statement itself.

use crate::config::{ProjectionConfig, UnhandledPolicy};
use crate::error::StoreError;
use crate::event::{Event, Malformed, decode_event};
use crate::park::{ParkReason, ParkedEvent, ParkedStore};
use crate::projection::{Change, SEQUENCE_FIELD, guarded_statement};
use crate::stats::ProjectionStats;
use bson::{Bson, Document, doc};
use futures_util::TryStreamExt;
use mongodb::options::{ReadConcern, WriteConcern};
use mongodb::{Collection, Database};
use std::sync::Arc;

/// The result of one guarded write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The stored sequence was `seq - 1` (or the document was new and `seq == 1`).
    Applied,
    /// The stored sequence is already `>= seq`: a redelivery.
    Duplicate { stored: i64 },
    /// The stored sequence (0: no document) is below `seq - 1`.
    Gap { stored: i64 },
    /// The server refused the update itself (for example `$inc` on a string): never
    /// retryable as is.
    Rejected(String),
}

/// What finally happened to an event handed to [`Applier::handle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Applied,
    Skipped,
    Duplicate,
    Parked,
    DeadLettered,
}

/// The read-model collection, written with majority write concern through raw `update`
/// commands so that `n`, `upserted` and `writeErrors` can be read exactly.
#[derive(Clone)]
pub struct ReadModel {
    db: Database,
    collection: String,
}

impl ReadModel {
    pub fn new(db: Database, collection: impl Into<String>) -> Self {
        Self {
            db,
            collection: collection.into(),
        }
    }

    pub fn collection(&self) -> Collection<Document> {
        self.db.collection(&self.collection)
    }

    /// Runs one guarded statement for `event` and classifies the outcome.
    pub async fn apply(&self, event: &Event, statement: &Document) -> Result<Outcome, StoreError> {
        // A concurrent writer could move the document between the update and the probe; the
        // probe then sees exactly `seq - 1` and the update is simply tried again.
        for _ in 0..3 {
            let reply = self
                .db
                .run_command(doc! {
                    "update": &self.collection,
                    "updates": [statement.clone()],
                    "ordered": true,
                    "writeConcern": {"w": "majority"},
                })
                .await?;
            if let Ok(wce) = reply.get_document("writeConcernError") {
                return Err(StoreError::WriteConcern(
                    wce.get_str("errmsg").unwrap_or("unknown").to_string(),
                ));
            }
            if let Ok(errors) = reply.get_array("writeErrors")
                && let Some(Bson::Document(e)) = errors.first()
            {
                let code = e.get_i32("code").unwrap_or(0);
                let first_event_redelivered = code == 11000
                    && event.sequence == 1
                    && e.get_document("keyPattern")
                        .map(|k| k.keys().eq(["_id"]))
                        .unwrap_or(true);
                if first_event_redelivered {
                    return Ok(Outcome::Duplicate {
                        stored: self
                            .stored_sequence(&event.aggregate_id)
                            .await?
                            .unwrap_or(1),
                    });
                }
                return Ok(Outcome::Rejected(format!(
                    "update refused with code {code}: {}",
                    e.get_str("errmsg").unwrap_or("")
                )));
            }
            let n = reply_count(&reply, "n")?;
            if n >= 1 {
                return Ok(Outcome::Applied);
            }
            match self.stored_sequence(&event.aggregate_id).await? {
                Some(stored) if stored >= event.sequence => {
                    return Ok(Outcome::Duplicate { stored });
                }
                Some(stored) if stored == event.sequence - 1 => continue,
                stored => {
                    return Ok(Outcome::Gap {
                        stored: stored.unwrap_or(0),
                    });
                }
            }
        }
        Err(StoreError::Reply(format!(
            "read model document {} kept changing under a guarded update",
            event.aggregate_id
        )))
    }

    /// The `lastSequenceNumber` stored for an aggregate (None: no document, or none recorded).
    pub async fn stored_sequence(&self, aggregate_id: &Bson) -> Result<Option<i64>, StoreError> {
        let found = self
            .collection()
            .find_one(doc! {"_id": aggregate_id.clone()})
            .projection(doc! {SEQUENCE_FIELD: 1})
            .await?;
        Ok(found.and_then(|d| match d.get(SEQUENCE_FIELD) {
            Some(Bson::Int64(n)) => Some(*n),
            Some(Bson::Int32(n)) => Some(*n as i64),
            _ => None,
        }))
    }
}

fn reply_count(reply: &Document, field: &str) -> Result<i64, StoreError> {
    match reply.get(field) {
        Some(Bson::Int32(n)) => Ok(*n as i64),
        Some(Bson::Int64(n)) => Ok(*n),
        _ => Err(StoreError::Reply(format!(
            "update reply without {field}: {reply}"
        ))),
    }
}

/// Everything needed to take one event to its final disposition: guarded apply, healing from
/// the event collection, parking, and releasing parked successors.
pub struct Applier {
    pub config: Arc<ProjectionConfig>,
    pub read_model: ReadModel,
    pub events: Collection<Document>,
    pub parked: ParkedStore,
    pub stats: Arc<ProjectionStats>,
}

impl Applier {
    pub fn new(config: Arc<ProjectionConfig>, db: &Database, stats: Arc<ProjectionStats>) -> Self {
        let majority = mongodb::options::CollectionOptions::builder()
            .write_concern(WriteConcern::majority())
            .read_concern(ReadConcern::majority())
            .build();
        let events = db.collection_with_options::<Document>(&config.events, majority);
        Self {
            read_model: ReadModel::new(db.clone(), config.target.clone()),
            parked: ParkedStore::new(db, &config.parking.collection, &config.name),
            events,
            config,
            stats,
        }
    }

    fn change_for(&self, event: &Event) -> Option<Change> {
        match self.config.handlers.get(&event.event_type) {
            Some(h) => Some(Change::Handler(h.clone())),
            None => match self.config.unhandled {
                UnhandledPolicy::Skip => Some(Change::AdvanceOnly),
                UnhandledPolicy::Park => None,
            },
        }
    }

    /// Takes a decoded event to its final disposition. `Err` only for transient store
    /// errors; the caller retries the same event.
    pub async fn handle(&self, event: &Event) -> Result<Disposition, StoreError> {
        let disposition = self.handle_inner(event).await?;
        if matches!(disposition, Disposition::Applied | Disposition::Skipped) {
            self.release_successors(event).await?;
        }
        Ok(disposition)
    }

    /// Records a malformed event as dead-lettered.
    pub async fn dead_letter_malformed(
        &self,
        malformed: &Malformed,
        token: Option<&Bson>,
    ) -> Result<(), StoreError> {
        self.parked.dead_letter_malformed(malformed, token).await?;
        ProjectionStats::add(&self.stats.malformed, 1);
        ProjectionStats::add(&self.stats.dead_lettered, 1);
        tracing::warn!(projection = %self.config.name, reason = %malformed.reason, "malformed event dead-lettered");
        Ok(())
    }

    /// One guarded attempt, without healing or parking: `Err(stored)` on a gap.
    async fn apply_once(&self, event: &Event) -> Result<Result<Disposition, i64>, StoreError> {
        let Some(change) = self.change_for(event) else {
            self.park(
                event,
                ParkReason::Unhandled,
                format!("no handler for event type {:?}", event.event_type),
            )
            .await?;
            return Ok(Ok(Disposition::Parked));
        };
        let statement = match guarded_statement(event, &change) {
            Ok(s) => s,
            Err(e) => {
                self.dead_letter(event, ParkReason::HandlerError, e.0)
                    .await?;
                return Ok(Ok(Disposition::DeadLettered));
            }
        };
        let applied = if matches!(change, Change::AdvanceOnly) {
            Disposition::Skipped
        } else {
            Disposition::Applied
        };
        let started = std::time::Instant::now();
        let outcome = self.read_model.apply(event, &statement).await?;
        self.stats.apply_seconds.observe(started.elapsed());
        Ok(match outcome {
            Outcome::Applied => {
                self.count_applied(applied);
                Ok(applied)
            }
            Outcome::Duplicate { .. } => {
                ProjectionStats::add(&self.stats.duplicates, 1);
                Ok(Disposition::Duplicate)
            }
            Outcome::Rejected(reason) => {
                self.dead_letter(event, ParkReason::HandlerError, reason)
                    .await?;
                Ok(Disposition::DeadLettered)
            }
            Outcome::Gap { stored } => Err(stored),
        })
    }

    /// Applies `event`; on a gap, heals from the event collection and tries once more, then
    /// parks it.
    async fn handle_inner(&self, event: &Event) -> Result<Disposition, StoreError> {
        let stored = match self.apply_once(event).await? {
            Ok(done) => return Ok(done),
            Err(stored) => stored,
        };
        let stored = if self.heal(event, stored).await? {
            match self.apply_once(event).await? {
                Ok(done) => return Ok(done),
                Err(stored) => stored,
            }
        } else {
            self.read_model
                .stored_sequence(&event.aggregate_id)
                .await?
                .unwrap_or(0)
        };
        self.park(
            event,
            ParkReason::Gap,
            format!("waiting for sequence {} (stored {stored})", stored + 1),
        )
        .await?;
        Ok(Disposition::Parked)
    }

    fn count_applied(&self, d: Disposition) {
        if d == Disposition::Skipped {
            ProjectionStats::add(&self.stats.skipped, 1);
        } else {
            ProjectionStats::add(&self.stats.applied, 1);
        }
    }

    /// Reads the missing predecessors of `event` from the event collection and applies them
    /// in order. True when the aggregate is now at `event.sequence - 1`.
    async fn heal(&self, event: &Event, stored: i64) -> Result<bool, StoreError> {
        let f = &self.config.fields;
        let filter = doc! {
            &f.aggregate_id: event.aggregate_id.clone(),
            &f.sequence_number: {"$gt": stored, "$lt": event.sequence},
        };
        let mut cursor = self
            .events
            .find(filter)
            .sort(doc! {&f.sequence_number: 1})
            .await?;
        let mut expected = stored + 1;
        while let Some(doc) = cursor.try_next().await? {
            let missing = match decode_event(&doc, f) {
                Ok(e) => e,
                Err(malformed) => {
                    // A stored event that cannot be decoded blocks its aggregate: keep it visible.
                    self.dead_letter_malformed(&malformed, None).await?;
                    return Ok(false);
                }
            };
            if missing.sequence != expected {
                return Ok(false);
            }
            match self.apply_once(&missing).await? {
                Ok(Disposition::Applied | Disposition::Skipped | Disposition::Duplicate) => {
                    ProjectionStats::add(&self.stats.healed, 1);
                    tracing::debug!(
                        projection = %self.config.name,
                        aggregate = %missing.aggregate_id,
                        sequence = missing.sequence,
                        "missing predecessor read back from the event collection"
                    );
                    // A parked copy of the healed event is no longer needed.
                    self.parked
                        .remove(&missing.aggregate_id, missing.sequence)
                        .await?;
                }
                Ok(Disposition::Parked | Disposition::DeadLettered) | Err(_) => return Ok(false),
            }
            expected += 1;
        }
        Ok(expected == event.sequence)
    }

    /// Applies parked events that directly follow `event`, for as long as they chain.
    async fn release_successors(&self, event: &Event) -> Result<(), StoreError> {
        let mut next = event.sequence + 1;
        while let Some(parked) = self.parked.find_waiting(&event.aggregate_id, next).await? {
            let successor = match decode_event(&parked, &self.config.fields) {
                Ok(e) => e,
                Err(_) => return Ok(()),
            };
            match self.apply_once(&successor).await? {
                Ok(Disposition::Applied | Disposition::Skipped | Disposition::Duplicate) => {
                    self.parked
                        .remove(&successor.aggregate_id, successor.sequence)
                        .await?;
                    ProjectionStats::add(&self.stats.released, 1);
                    next += 1;
                }
                Ok(Disposition::Parked | Disposition::DeadLettered) | Err(_) => return Ok(()),
            }
        }
        Ok(())
    }

    async fn park(
        &self,
        event: &Event,
        reason: ParkReason,
        detail: String,
    ) -> Result<(), StoreError> {
        let first_time = self
            .parked
            .park(event, reason, &detail, &self.config.parking)
            .await?;
        if first_time {
            ProjectionStats::add(&self.stats.parked, 1);
            tracing::info!(
                projection = %self.config.name,
                aggregate = %event.aggregate_id,
                sequence = event.sequence,
                reason = reason.as_str(),
                %detail,
                "event parked"
            );
        }
        Ok(())
    }

    async fn dead_letter(
        &self,
        event: &Event,
        reason: ParkReason,
        detail: String,
    ) -> Result<(), StoreError> {
        self.parked.dead_letter(event, reason, &detail).await?;
        ProjectionStats::add(&self.stats.dead_lettered, 1);
        tracing::warn!(
            projection = %self.config.name,
            aggregate = %event.aggregate_id,
            sequence = event.sequence,
            reason = reason.as_str(),
            %detail,
            "event dead-lettered"
        );
        Ok(())
    }

    /// Operator action: gives up on a parked or dead-lettered event by advancing its
    /// aggregate's sequence past it without applying its handler, then releases the parked
    /// events that follow. Only possible when the event is the next one its aggregate needs.
    pub async fn skip_parked(
        &self,
        parked: &ParkedEvent,
    ) -> Result<Result<(), String>, StoreError> {
        let event = match decode_event(&parked.event, &self.config.fields) {
            Ok(e) => e,
            Err(_) => {
                // A malformed entry has no place in any sequence: skipping it only acknowledges it.
                self.parked.remove_entry(&parked.id).await?;
                return Ok(Ok(()));
            }
        };
        let statement =
            guarded_statement(&event, &Change::AdvanceOnly).map_err(|e| StoreError::Reply(e.0))?;
        match self.read_model.apply(&event, &statement).await? {
            Outcome::Applied | Outcome::Duplicate { .. } => {
                self.parked.remove_entry(&parked.id).await?;
                tracing::warn!(
                    projection = %self.config.name,
                    aggregate = %event.aggregate_id,
                    sequence = event.sequence,
                    "parked event skipped by an operator"
                );
                self.release_successors(&event).await?;
                Ok(Ok(()))
            }
            Outcome::Gap { stored } => Ok(Err(format!(
                "cannot skip sequence {} of {}: the read model is at {stored}; resolve sequence {} first",
                event.sequence,
                event.aggregate_id,
                stored + 1
            ))),
            Outcome::Rejected(reason) => Ok(Err(reason)),
        }
    }

    /// Retries parked events whose next attempt is due; dead-letters those past their limits.
    /// Returns how many were resolved (applied or found already applied).
    pub async fn sweep_parked(&self) -> Result<u64, StoreError> {
        let mut resolved = 0;
        for parked in self.parked.due(64).await? {
            let Ok(event) = decode_event(&parked.event, &self.config.fields) else {
                continue;
            };
            if parked.reason == ParkReason::Unhandled.as_str() && self.change_for(&event).is_none()
            {
                self.parked
                    .reschedule(&parked, &self.config.parking)
                    .await?;
                continue;
            }
            match self.handle_inner(&event).await? {
                Disposition::Applied | Disposition::Skipped | Disposition::Duplicate => {
                    self.parked
                        .remove(&event.aggregate_id, event.sequence)
                        .await?;
                    ProjectionStats::add(&self.stats.released, 1);
                    self.release_successors(&event).await?;
                    resolved += 1;
                }
                Disposition::Parked => {
                    if self
                        .parked
                        .reschedule(&parked, &self.config.parking)
                        .await?
                    {
                        ProjectionStats::add(&self.stats.dead_lettered, 1);
                        tracing::warn!(
                            projection = %self.config.name,
                            aggregate = %event.aggregate_id,
                            sequence = event.sequence,
                            attempts = parked.attempts + 1,
                            "parked event dead-lettered: its predecessor never arrived"
                        );
                    }
                }
                Disposition::DeadLettered => {}
            }
        }
        Ok(resolved)
    }
}
