//! mongo-projector: keeps MongoDB read models in step with an event-sourced event collection.
//!
//! Data flows one way: change stream ([`source`]) -> decode ([`event`]) -> apply with the
//! sequence guard ([`apply`], updates built by [`projection`]) -> checkpoint ([`checkpoint`]).
//! Events that cannot be applied yet are parked ([`park`]); see `ARCHITECTURE.md`.

pub mod apply;
pub mod audit;
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod daemon;
pub mod demo;
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
