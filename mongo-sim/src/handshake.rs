//! Handshake and topology: `hello`/`isMaster` as the primary of a single-node replica set,
//! `ping`, `buildInfo`, `hostInfo`, `serverStatus`, `endSessions`, and the test-only
//! `replSetStepDown`.

use bson::oid::ObjectId;

/// The replica set's view of itself: who is primary, since when, and any step-down in force.
pub struct Topology {
    pub election_id: ObjectId,
    pub set_version: i32,
}

impl Topology {
    pub fn new() -> Self {
        Self {
            election_id: ObjectId::new(),
            set_version: 1,
        }
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}
