//! One worker's pipeline: change stream ([`stream`]) -> decode -> route by aggregate
//! ([`dispatcher`]) -> guarded apply in lanes ([`lanes`], [`apply`]) -> acknowledge
//! ([`watermark`]) -> checkpoint ([`checkpointer`]), joined by [`tail`]; the fold of the event
//! collection ([`scan`]) feeds the same lanes. [`worker`] composes them into a projection's
//! worker, starting where [`start`] says.

pub mod apply;
pub mod checkpointer;
pub mod dispatcher;
pub mod lanes;
pub mod scan;
pub mod start;
pub mod stream;
pub mod tail;
pub mod watermark;
pub mod worker;
