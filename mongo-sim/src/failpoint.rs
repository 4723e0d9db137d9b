//! mongod's `failCommand` fail point (`configureFailPoint`), for fault injection in tests.

/// Configured fail points.
#[derive(Default)]
pub struct FailPoints {}
