//! Command handlers, grouped by what they act on.

pub mod crud;
pub mod ddl;
