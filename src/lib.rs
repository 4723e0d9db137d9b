//! mongo-projector: keeps MongoDB read models in step with an event-sourced event collection.
//!
//! Data flows one way: change stream ([`source`]) -> decode ([`event`]) -> apply with the
//! sequence guard ([`apply`], updates built by [`projection`]) -> checkpoint ([`checkpoint`]).
//! Events that cannot be applied yet are parked ([`park`]); see `ARCHITECTURE.md`.

pub mod config;
pub mod event;
pub mod projection;
