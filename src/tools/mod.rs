//! Tools built on the core: the drift audit, the live rebuild, the server check (`doctor`),
//! and, with the embedded test server, the demo and the benchmark.

pub mod audit;
#[cfg(feature = "embedded")]
pub mod bench;
#[cfg(feature = "embedded")]
pub mod demo;
pub mod doctor;
pub mod rebuild;
