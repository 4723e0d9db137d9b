//! The replica set's view of itself as a single-node primary: the election term and
//! `electionId`, a step-down in force, `topologyVersion` and its change notifications, and the
//! counters `serverStatus` reports.
//!
//! `topologyVersion` is `{processId, counter}`: the process id is fixed for the server's life
//! and the counter moves on every step-down and step-up. Awaitable hellos wait on the counter;
//! commands in progress wait on the interrupt generation a step-down moves.

use bson::oid::ObjectId;
use bson::{Document, doc};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The replica set's view of itself: who is primary, since when, and any step-down in force.
pub struct Topology {
    pub election_id: ObjectId,
    pub set_version: i32,
    /// The election term; `electionId` is derived from it as mongod does.
    pub term: i64,
    /// Until when a `replSetStepDown` keeps this node a secondary.
    pub stepped_down_until: Option<Instant>,
    /// `topologyVersion.processId`: one per server start.
    pub process_id: ObjectId,
    /// `topologyVersion.counter`; awaitable hellos wait for it to move.
    version: watch::Sender<i64>,
    /// Bumped by each step-down; commands in progress then fail with 11602.
    interrupts: watch::Sender<u64>,
    pub connections_current: i64,
    pub connections_total_created: i64,
    /// `serverStatus.opcounters`: insert, query, update, delete, getmore, command.
    pub opcounters: [i64; 6],
}

/// mongod's `OID::fromTerm`: the maximal timestamp followed by the term, so a later term
/// always gives a larger `electionId`.
fn election_id_for_term(term: i64) -> ObjectId {
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&[0x7f, 0xff, 0xff, 0xff]);
    bytes[4..].copy_from_slice(&term.to_be_bytes());
    ObjectId::from_bytes(bytes)
}

impl Topology {
    pub fn new() -> Self {
        Self {
            election_id: election_id_for_term(1),
            set_version: 1,
            term: 1,
            stepped_down_until: None,
            process_id: ObjectId::new(),
            version: watch::channel(0).0,
            interrupts: watch::channel(0).0,
            connections_current: 0,
            connections_total_created: 0,
            opcounters: [0; 6],
        }
    }

    /// Whether this node is primary now; a step-down that has run out ends with a new
    /// election (a larger term and `electionId`).
    pub fn is_primary(&mut self) -> bool {
        match self.stepped_down_until {
            None => true,
            Some(until) if Instant::now() >= until => {
                self.stepped_down_until = None;
                self.term += 1;
                self.election_id = election_id_for_term(self.term);
                self.version.send_modify(|counter| *counter += 1);
                true
            }
            Some(_) => false,
        }
    }

    /// Steps down for `secs`: the topology changes and commands in progress are interrupted.
    pub fn step_down(&mut self, secs: u64) {
        self.stepped_down_until = Some(Instant::now() + Duration::from_secs(secs));
        self.version.send_modify(|counter| *counter += 1);
        self.interrupts.send_modify(|generation| *generation += 1);
    }

    /// `topologyVersion.counter` now.
    pub fn counter(&self) -> i64 {
        *self.version.borrow()
    }

    /// `topologyVersion` as hello reports it.
    pub fn topology_version(&self) -> Document {
        doc! {"processId": self.process_id, "counter": self.counter()}
    }

    /// A receiver that sees every later topology change.
    pub fn subscribe_changes(&self) -> watch::Receiver<i64> {
        self.version.subscribe()
    }

    /// A receiver that sees every later step-down.
    pub fn subscribe_interrupts(&self) -> watch::Receiver<u64> {
        self.interrupts.subscribe()
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}
