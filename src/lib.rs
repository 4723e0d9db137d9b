//! mongo-projector: keeps MongoDB read models in step with an event-sourced event collection.
//!
//! Data flows one way: change stream ([`source`]) -> decode ([`event`]) -> apply with the
//! sequence guard ([`apply`], updates built by [`projection`]) -> checkpoint ([`checkpoint`]).
//! Events that cannot be applied yet are parked ([`park`]); see `ARCHITECTURE.md`.

pub mod apply;
pub mod audit;
pub mod backoff;
#[cfg(feature = "embedded")]
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod daemon;
#[cfg(feature = "embedded")]
pub mod demo;
pub mod doctor;
pub mod error;
pub mod event;
pub mod http;
pub mod lanes;
pub mod lease;
pub mod metrics;
pub mod park;
pub mod partition;
pub mod projection;
pub mod rebuild;
pub mod replicas;
pub mod shutdown;
pub mod source;
pub mod stats;
pub mod watermark;

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
