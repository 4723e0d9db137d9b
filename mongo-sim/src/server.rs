//! The TCP listener and the in-process API: [`MongoSim::start`] binds, serves connections
//! until shut down, and reports the URI drivers connect with.

use crate::state::ServerOptions;

/// A running server.
pub struct MongoSim {
    uri: String,
}

impl MongoSim {
    pub async fn start(options: ServerOptions) -> std::io::Result<MongoSim> {
        let _ = options;
        Err(std::io::Error::other("not implemented yet"))
    }

    /// `mongodb://HOST:PORT/?replicaSet=NAME`.
    pub fn uri(&self) -> &str {
        &self.uri
    }
}
