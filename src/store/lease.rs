//! Leases: at most one active holder per worker name across every replica of the daemon.
//!
//! A lease is one document, `{_id: name, holder, epoch, expiresAt, renewedAt, handoverTo?,
//! handoverUntil?}`, changed only by conditional single-document updates. Expiry is judged by
//! the server's clock (`$$NOW`), never by an instance's: the clocks of replicas differ. The
//! epoch grows whenever the lease changes hands (or is taken again after expiring), and fences
//! checkpoint writes ([`crate::store::checkpoint::CheckpointStore::save`]): a former holder that was
//! paused past its lease can still reach the server, but never move the checkpoint.
//!
//! Beside the leases, every instance announces itself with a heartbeat document
//! ([`InstanceStore`]), expiring like a lease, so that instances can share the leases fairly.

use crate::error::{DUPLICATE_KEY, StoreError, server_code};
use bson::{Bson, DateTime, Document, doc};
use mongodb::options::ReturnDocument;
use mongodb::{Collection, Database};
use std::time::Duration;

/// A lease this instance holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The worker name the lease is for (a projection, or one of its partitions).
    pub name: String,
    pub holder: String,
    /// Grows each time the lease changes hands; the fencing token of checkpoint writes.
    pub epoch: i64,
}

/// A lease document as stored, for status pages and tests.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseState {
    pub name: String,
    /// `None` once released.
    pub holder: Option<String>,
    pub epoch: i64,
    pub(crate) expires_at: Option<DateTime>,
    pub(crate) renewed_at: Option<DateTime>,
    /// A pending request to hand the lease to this instance.
    pub handover_to: Option<String>,
    pub(crate) handover_until: Option<DateTime>,
}

/// What a renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Still ours, extended by the ttl.
    Renewed,
    /// Taken by another holder (ours had expired), or released.
    Lost,
    /// Still ours but another instance asked for it: stop gracefully and release.
    HandoverRequested,
}

/// The lease collection.
#[derive(Clone)]
pub struct LeaseStore {
    coll: Collection<Document>,
}

/// Milliseconds of a ttl, as added to `$$NOW`.
fn millis(ttl: Duration) -> i64 {
    ttl.as_millis().min(i64::MAX as u128) as i64
}

/// `{$or: [...]}` matching when no handover request for someone other than `holder` stands.
fn no_handover_for_others(holder: &str) -> Document {
    doc! {"$or": [
        {"handoverTo": null},
        {"handoverTo": holder},
        {"$expr": {"$lte": ["$handoverUntil", "$$NOW"]}},
    ]}
}

impl LeaseStore {
    /// Leases in `collection` of `db`, with majority write and read concern: a lease acknowledged
    /// by a primary that then rolls back would let two holders believe they hold it.
    pub fn new(db: &Database, collection: &str) -> Self {
        Self {
            coll: crate::store::majority_collection(db, collection),
        }
    }

    /// Takes the lease when it is free, expired, or already ours. Taking it from another (or
    /// after expiry) increments the epoch; renewing our own keeps it. `Ok(None)` = held by
    /// another or reserved for a handover requester other than `holder`.
    ///
    /// One conditional upsert: when the filter does not match an existing document, the upsert
    /// tries to insert a second one with the same `_id` and fails with a duplicate key.
    pub async fn try_acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let filter = doc! {
            "_id": name,
            "$and": [
                {"$or": [
                    {"holder": holder},
                    {"holder": null},
                    {"$expr": {"$lte": ["$expiresAt", "$$NOW"]}},
                ]},
                no_handover_for_others(holder),
            ],
        };
        // Every expression of one `$set` stage reads the document as it was before the stage,
        // so `epoch` sees the previous holder and expiry.
        let update = vec![doc! {"$set": {
            "epoch": {"$cond": {
                "if": {"$and": [
                    {"$eq": ["$holder", {"$literal": holder}]},
                    {"$gt": ["$expiresAt", "$$NOW"]},
                ]},
                "then": "$epoch",
                "else": {"$add": [{"$ifNull": ["$epoch", 0i64]}, 1i64]},
            }},
            "holder": {"$literal": holder},
            "expiresAt": {"$add": ["$$NOW", millis(ttl)]},
            "renewedAt": "$$NOW",
        }}];
        let result = self
            .coll
            .find_one_and_update(filter, update)
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await;
        match result {
            Ok(Some(d)) => Ok(Some(Lease {
                name: name.to_string(),
                holder: holder.to_string(),
                epoch: epoch_of(&d),
            })),
            Ok(None) => Err(StoreError::Reply(format!(
                "lease {name}: an upsert returned no document"
            ))),
            Err(e) if server_code(&e) == Some(DUPLICATE_KEY) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Extends our lease; `Ok(false)` when it is no longer ours (lost), or when another
    /// instance asked for it to be handed over (see [`LeaseStore::renewal`] to tell these apart).
    pub async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool, StoreError> {
        Ok(self.renewal(lease, ttl).await? == Renewal::Renewed)
    }

    /// Extends our lease unless it was lost or a handover to another instance was requested.
    pub async fn renewal(&self, lease: &Lease, ttl: Duration) -> Result<Renewal, StoreError> {
        let filter = doc! {
            "_id": &lease.name,
            "holder": &lease.holder,
            "epoch": lease.epoch,
            "$and": [no_handover_for_others(&lease.holder)],
        };
        let update = vec![doc! {"$set": {
            "expiresAt": {"$add": ["$$NOW", millis(ttl)]},
            "renewedAt": "$$NOW",
        }}];
        if self.coll.update_one(filter, update).await?.matched_count == 1 {
            return Ok(Renewal::Renewed);
        }
        // Not renewed: still ours means only the handover condition failed.
        let still_ours = self
            .coll
            .find_one(doc! {"_id": &lease.name, "holder": &lease.holder, "epoch": lease.epoch})
            .await?
            .is_some();
        Ok(if still_ours {
            Renewal::HandoverRequested
        } else {
            Renewal::Lost
        })
    }

    /// Raises our lease's epoch above `above` while we still hold it: for a checkpoint that
    /// carries a newer epoch than the lease, which happens only when the lease documents were
    /// lost (collection dropped or renamed) while the checkpoints were kept. `None` when the
    /// lease is no longer ours.
    pub(crate) async fn raise_epoch(
        &self,
        lease: &Lease,
        above: i64,
    ) -> Result<Option<Lease>, StoreError> {
        let epoch = above.max(lease.epoch) + 1;
        let matched = self
            .coll
            .update_one(
                doc! {"_id": &lease.name, "holder": &lease.holder, "epoch": lease.epoch},
                doc! {"$set": {"epoch": epoch}},
            )
            .await?
            .matched_count;
        Ok((matched == 1).then(|| Lease {
            epoch,
            ..lease.clone()
        }))
    }

    /// Gives the lease up at once (graceful stop), keeping the epoch: the next holder takes
    /// it without waiting for the ttl.
    pub async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.coll
            .update_one(
                doc! {"_id": &lease.name, "holder": &lease.holder, "epoch": lease.epoch},
                doc! {"$currentDate": {"expiresAt": true}, "$unset": {"holder": ""}},
            )
            .await?;
        Ok(())
    }

    /// Asks the holder of `name` to hand it to `requester` (used by a live rebuild before its
    /// swap): the holder, at its next renewal, stops its worker gracefully (final checkpoint),
    /// releases, and does not take the lease again while the request stands; only `requester`
    /// can acquire it then. The request expires after `ttl` unless renewed by calling again.
    pub async fn request_handover(
        &self,
        name: &str,
        requester: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let update = vec![doc! {"$set": {
            "handoverTo": {"$literal": requester},
            "handoverUntil": {"$add": ["$$NOW", millis(ttl)]},
        }}];
        self.coll
            .update_one(doc! {"_id": name}, update)
            .upsert(true)
            .await?;
        Ok(())
    }

    /// Withdraws the request (after the requester released the lease again).
    pub async fn clear_handover(&self, name: &str, requester: &str) -> Result<(), StoreError> {
        self.coll
            .update_one(
                doc! {"_id": name, "handoverTo": requester},
                doc! {"$unset": {"handoverTo": "", "handoverUntil": ""}},
            )
            .await?;
        Ok(())
    }

    /// The current lease document, for status and tests.
    pub async fn current(&self, name: &str) -> Result<Option<LeaseState>, StoreError> {
        let Some(d) = self.coll.find_one(doc! {"_id": name}).await? else {
            return Ok(None);
        };
        let string = |k: &str| d.get_str(k).ok().map(str::to_string);
        let date = |k: &str| d.get_datetime(k).ok().copied();
        Ok(Some(LeaseState {
            name: name.to_string(),
            holder: string("holder"),
            epoch: epoch_of(&d),
            expires_at: date("expiresAt"),
            renewed_at: date("renewedAt"),
            handover_to: string("handoverTo"),
            handover_until: date("handoverUntil"),
        }))
    }
}

fn epoch_of(d: &Document) -> i64 {
    match d.get("epoch") {
        Some(Bson::Int64(n)) => *n,
        Some(Bson::Int32(n)) => *n as i64,
        Some(Bson::Double(n)) => *n as i64,
        _ => 0,
    }
}

/// Heartbeats of running instances, `{_id: holder, expiresAt, renewedAt}`: how many instances
/// share the leases.
#[derive(Clone)]
pub(crate) struct InstanceStore {
    coll: Collection<Document>,
}

impl InstanceStore {
    pub fn new(db: &Database, collection: &str) -> Self {
        Self {
            coll: crate::store::majority_collection(db, collection),
        }
    }

    /// Announces `holder` as alive for `ttl`, forgets instances whose heartbeat expired, and
    /// returns how many are alive (this one included).
    pub async fn heartbeat(&self, holder: &str, ttl: Duration) -> Result<usize, StoreError> {
        let update = vec![doc! {"$set": {
            "expiresAt": {"$add": ["$$NOW", millis(ttl)]},
            "renewedAt": "$$NOW",
        }}];
        self.coll
            .update_one(doc! {"_id": holder}, update)
            .upsert(true)
            .await?;
        let expired = doc! {"$expr": {"$lte": ["$expiresAt", "$$NOW"]}};
        self.coll.delete_many(expired).await?;
        let live = self.coll.count_documents(doc! {}).await?;
        Ok((live as usize).max(1))
    }

    /// Removes `holder`'s heartbeat (graceful stop), so others count it gone at once.
    pub(crate) async fn leave(&self, holder: &str) -> Result<(), StoreError> {
        self.coll.delete_one(doc! {"_id": holder}).await?;
        Ok(())
    }
}
