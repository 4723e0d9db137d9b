//! The daemon's own state in MongoDB: checkpoints, leases and parked events.

pub mod checkpoint;
pub mod lease;
pub mod park;

/// A collection with majority write and read concern, as every store of state that must
/// survive a failover (checkpoints, leases, rebuild state) and every read of events uses: a
/// write acknowledged only by a primary that then rolls back would be lost.
pub(crate) fn majority_collection(
    db: &mongodb::Database,
    name: &str,
) -> mongodb::Collection<bson::Document> {
    let options = mongodb::options::CollectionOptions::builder()
        .write_concern(mongodb::options::WriteConcern::majority())
        .read_concern(mongodb::options::ReadConcern::majority())
        .build();
    db.collection_with_options(name, options)
}
