//! What the daemon works on, as pure values: an event decoded from its document, the guarded
//! update an event becomes, and the share of a projection a worker takes.

pub mod event;
pub mod partition;
pub mod projection;
