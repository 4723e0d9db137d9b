//! Command handlers, grouped by what they act on.

pub mod collmod;
pub mod crud;
pub mod ddl;
