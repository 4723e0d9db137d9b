//! mongo-projector: keeps MongoDB read models in step with an event-sourced event collection.
//!
//! Data flows one way: change stream -> decode -> route by aggregate -> guarded apply ->
//! acknowledge -> checkpoint ([`pipeline`]); what an event and an update are lives in
//! [`model`], the state kept in MongoDB in [`store`], running workers side by side and across
//! replicas in [`cluster`], what operators see in [`ops`], and the tools built on all of it
//! (audit, rebuild, doctor, demo, bench) in [`tools`]. See `ARCHITECTURE.md`.

pub mod app;
pub mod backoff;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod error;
pub mod model;
pub mod ops;
pub mod pipeline;
pub mod store;
pub mod tools;
