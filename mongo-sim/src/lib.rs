//! mongo-sim: a wire-compatible MongoDB test server that behaves as the primary of a
//! single-node replica set.
//!
//! It speaks OP_MSG to the official drivers, keeps data in memory, records every write in a
//! bounded oplog, serves change streams with resume tokens, and offers mongod's `failCommand`
//! fail point. Where it does not implement something it fails the way mongod fails an unknown
//! command or option, never silently.

// Every handler returns mongod's full error shape; boxing it would only add noise.
#![allow(clippy::result_large_err)]

pub mod admin;
pub mod aggregate;
pub mod bsontype;
pub mod catalog;
pub mod changeevent;
pub mod changestream;
pub mod commands;
pub mod compare;
pub mod cursor;
pub mod dispatch;
pub mod error;
pub mod expr;
pub mod failpoint;
pub mod fields;
pub mod handshake;
pub mod hasher;
pub mod oplog;
pub mod path;
pub mod profile;
pub mod query;
pub mod retryable;
pub mod server;
pub mod sessions;
pub mod state;
pub mod storage;
pub(crate) mod topology;
pub mod update;
pub mod updatedesc;
pub mod wire;

pub use server::MongoSim;
pub use state::ServerOptions;
