//! Running workers: every worker of every projection in one process, and across replicas
//! under leases.

pub mod daemon;
pub mod replicas;
