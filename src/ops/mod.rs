//! What operators see and do to a running daemon: counters, the metrics and probes served over
//! HTTP, and the signals that stop it.

pub mod http;
pub mod metrics;
pub mod shutdown;
pub mod stats;
