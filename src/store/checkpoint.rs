//! Checkpoints: per projection, the resume token up to which every event has been applied,
//! skipped or parked, with its cluster time and a running count. Written with majority write
//! concern, every N events or T time (whichever first), and from the post-batch resume token
//! on quiet streams so that an idle projection's token never ages out of the oplog.
//!
//! When several replicas run, writes are fenced by the writer's lease epoch
//! ([`crate::store::lease`]): the document keeps the highest epoch that claimed it, and a write with
//! an older epoch is refused ([`StoreError::Fenced`]), so a paused former holder can never move
//! the position back. Checkpoints are keyed by the worker's name.

use crate::error::{DUPLICATE_KEY, StoreError, server_code};
use bson::{Bson, DateTime, Document, Timestamp, doc};
use mongodb::change_stream::event::ResumeToken;
use mongodb::{Collection, Database};

/// A stored position.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub token: ResumeToken,
    pub cluster_time: Option<Timestamp>,
    /// Events handled (applied, skipped, duplicate, parked) since the projection first started.
    pub events_handled: i64,
    pub(crate) updated_at: DateTime,
    /// The change stream that issued `token`: the worker's own name, or another stream's
    /// (the live rebuild hands its own token to every worker). Only a worker's own stream's
    /// token is resumed after: mongod refuses to resume after an event that the resuming
    /// stream's `$match` would not produce, so a token from elsewhere is started from at its
    /// cluster time. `None` (written before this field existed) means the worker's own.
    pub token_from: Option<String>,
    /// For `start = "now"`: the cluster time from which this worker's share is covered (the
    /// moment its first start opened the stream, or the position it first inherited). A
    /// sibling that starts later from "now" starts there instead, so that "now" means one
    /// moment for the whole projection ([`crate::model::partition::choose_start`]).
    pub(crate) origin: Option<Timestamp>,
}

impl Checkpoint {
    /// A position at `token` issued by the worker's own stream, with no cluster time or origin.
    pub fn new(token: ResumeToken, events_handled: i64) -> Self {
        Checkpoint {
            token,
            cluster_time: None,
            events_handled,
            updated_at: DateTime::now(),
            token_from: None,
            origin: None,
        }
    }

    /// True when `token` came from `worker`'s own change stream.
    pub(crate) fn token_is_from(&self, worker: &str) -> bool {
        self.token_from.as_deref().is_none_or(|from| from == worker)
    }
}

/// The checkpoint collection.
#[derive(Clone)]
pub struct CheckpointStore {
    coll: Collection<Document>,
}

impl CheckpointStore {
    pub fn new(db: &Database, collection: &str) -> Self {
        Self {
            coll: crate::store::majority_collection(db, collection),
        }
    }

    pub async fn load(&self, projection: &str) -> Result<Option<Checkpoint>, StoreError> {
        let Some(d) = self.coll.find_one(doc! {"_id": projection}).await? else {
            return Ok(None);
        };
        let token = match d.get("resumeToken") {
            Some(t @ Bson::Document(_)) => {
                bson::from_bson::<ResumeToken>(t.clone()).map_err(|e| {
                    StoreError::internal(format!(
                        "checkpoint of {projection} has an unreadable resume token: {e}"
                    ))
                })?
            }
            // Claimed by a lease holder that has not saved a position yet.
            None if d.contains_key("epoch") => return Ok(None),
            _ => {
                return Err(StoreError::internal(format!(
                    "checkpoint of {projection} has no resumeToken"
                )));
            }
        };
        Ok(Some(Checkpoint {
            token,
            cluster_time: d.get_timestamp("clusterTime").ok(),
            events_handled: match d.get("eventsHandled") {
                Some(Bson::Int64(n)) => *n,
                Some(Bson::Int32(n)) => *n as i64,
                _ => 0,
            },
            updated_at: d
                .get_datetime("updatedAt")
                .copied()
                .unwrap_or_else(|_| DateTime::now()),
            token_from: d.get_str("tokenFrom").ok().map(str::to_string),
            origin: d.get_timestamp("origin").ok(),
        }))
    }

    /// Writes the position of a worker holding the lease with `epoch`: only while the stored
    /// checkpoint's epoch is not newer (an upsert whose filter misses an existing document
    /// fails with a duplicate key, which means a newer holder claimed it).
    pub async fn save(
        &self,
        projection: &str,
        checkpoint: &Checkpoint,
        epoch: i64,
    ) -> Result<(), StoreError> {
        let update = Self::update(checkpoint, Some(epoch))?;
        self.fenced_update(projection, epoch, update).await
    }

    /// Writes the position without a lease (leases disabled, operator tools, tests): the
    /// stored epoch, if any, is kept.
    pub async fn save_unfenced(
        &self,
        projection: &str,
        checkpoint: &Checkpoint,
    ) -> Result<(), StoreError> {
        self.coll
            .update_one(doc! {"_id": projection}, Self::update(checkpoint, None)?)
            .upsert(true)
            .await?;
        Ok(())
    }

    /// Raises the checkpoint's epoch to `epoch` without moving its position: a new lease
    /// holder does this before loading, so that every later write of an older holder is
    /// refused. Fails with [`StoreError::Fenced`] when an even newer holder claimed it.
    pub async fn claim(&self, projection: &str, epoch: i64) -> Result<(), StoreError> {
        self.fenced_update(projection, epoch, doc! {"$set": {"epoch": epoch}})
            .await
    }

    /// The epoch of the newest holder that claimed or wrote the checkpoint.
    pub async fn epoch(&self, projection: &str) -> Result<Option<i64>, StoreError> {
        Ok(self
            .coll
            .find_one(doc! {"_id": projection})
            .await?
            .and_then(|d| d.get("epoch").and_then(Bson::as_i64)))
    }

    /// The update that stores `checkpoint`, with `epoch` when fenced. Optional fields it
    /// lacks are removed, so that nothing of an earlier writer's position survives (a rebuild's
    /// `tokenFrom` after the worker's own save, for instance).
    fn update(checkpoint: &Checkpoint, epoch: Option<i64>) -> Result<Document, StoreError> {
        let token = bson::to_bson(&checkpoint.token)
            .map_err(|e| StoreError::internal(format!("resume token: {e}")))?;
        let mut set = doc! {
            "resumeToken": token,
            "eventsHandled": checkpoint.events_handled,
            "updatedAt": checkpoint.updated_at,
        };
        if let Some(epoch) = epoch {
            set.insert("epoch", epoch);
        }
        let mut unset = Document::new();
        let optional = [
            ("clusterTime", checkpoint.cluster_time.map(Bson::Timestamp)),
            ("tokenFrom", checkpoint.token_from.clone().map(Bson::String)),
            ("origin", checkpoint.origin.map(Bson::Timestamp)),
        ];
        for (field, value) in optional {
            match value {
                Some(v) => set.insert(field, v),
                None => unset.insert(field, ""),
            };
        }
        let mut update = doc! {"$set": set};
        if !unset.is_empty() {
            update.insert("$unset", unset);
        }
        Ok(update)
    }

    /// Every checkpoint whose name is `projection` or starts with `projection/` (its partition
    /// workers under any partition count), with its name. A checkpoint that cannot be read is
    /// left out with a warning: it vouches for nothing, which can only make a worker start
    /// earlier ([`crate::model::partition::choose_start`]), never later.
    pub async fn load_family(
        &self,
        projection: &str,
    ) -> Result<Vec<(String, Checkpoint)>, StoreError> {
        let pattern = format!("^{}(/|$)", regex_escape(projection));
        let ids: Vec<Document> = futures_util::TryStreamExt::try_collect(
            self.coll
                .find(doc! {"_id": {"$regex": pattern}})
                .projection(doc! {"_id": 1})
                .await?,
        )
        .await?;
        let mut family = Vec::new();
        for id in ids {
            let Ok(name) = id.get_str("_id") else {
                continue;
            };
            match self.load(name).await {
                Ok(Some(c)) => family.push((name.to_string(), c)),
                Ok(None) => {}
                Err(e @ StoreError::Stop(..)) => {
                    tracing::warn!(checkpoint = name, error = %e, "unreadable checkpoint left out of its projection's family")
                }
                Err(e) => return Err(e),
            }
        }
        Ok(family)
    }

    async fn fenced_update(
        &self,
        projection: &str,
        epoch: i64,
        update: Document,
    ) -> Result<(), StoreError> {
        let filter = doc! {
            "_id": projection,
            "$or": [{"epoch": {"$lte": epoch}}, {"epoch": {"$exists": false}}],
        };
        match self.coll.update_one(filter, update).upsert(true).await {
            Ok(_) => Ok(()),
            Err(e) if server_code(&e) == Some(DUPLICATE_KEY) => Err(StoreError::Fenced(format!(
                "checkpoint of {projection} belongs to a lease holder newer than epoch {epoch}"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Forgets a projection's position (it then starts as configured). A lease epoch stored
    /// with it is kept, so that fencing still refuses older holders.
    pub async fn reset(&self, projection: &str) -> Result<bool, StoreError> {
        let deleted = self
            .coll
            .delete_one(doc! {"_id": projection, "epoch": {"$exists": false}})
            .await?
            .deleted_count;
        if deleted > 0 {
            return Ok(true);
        }
        let unset = doc! {
            "resumeToken": "", "clusterTime": "", "eventsHandled": "", "updatedAt": "",
            "tokenFrom": "", "origin": "",
        };
        Ok(self
            .coll
            .update_one(
                doc! {"_id": projection, "resumeToken": {"$exists": true}},
                doc! {"$unset": unset},
            )
            .await?
            .modified_count
            > 0)
    }
}

/// `s` with the characters that mean something in a regular expression escaped.
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$-".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
