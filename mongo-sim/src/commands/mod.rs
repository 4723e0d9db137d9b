//! Command handlers, grouped by what they act on.

pub mod aggregation;
pub mod collmod;
pub mod crud;
pub mod ddl;
pub(crate) mod getmore;
pub(crate) mod statement;
