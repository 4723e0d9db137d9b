//! Per-projection counters of what happened to events, shared between the worker that counts
//! and whoever reports (the demo's summary now, the metrics endpoint later).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters for one projection. Monotonic; read with [`ProjectionStats::snapshot`].
#[derive(Debug, Default)]
pub struct ProjectionStats {
    pub received: AtomicU64,
    pub applied: AtomicU64,
    pub duplicates: AtomicU64,
    /// Events of a type without handler that only advanced the sequence.
    pub skipped: AtomicU64,
    /// Missing predecessors read back from the event collection and applied.
    pub healed: AtomicU64,
    pub parked: AtomicU64,
    /// Parked events applied later, when their predecessor arrived or on retry.
    pub released: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub malformed: AtomicU64,
    pub stream_restarts: AtomicU64,
    pub history_lost_recoveries: AtomicU64,
    pub checkpoints: AtomicU64,
    /// Stream restarts by reason (`network`, `server_error_11601`, ...).
    restarts_by_reason: Mutex<BTreeMap<String, u64>>,
}

/// A copy of the counters at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub received: u64,
    pub applied: u64,
    pub duplicates: u64,
    pub skipped: u64,
    pub healed: u64,
    pub parked: u64,
    pub released: u64,
    pub dead_lettered: u64,
    pub malformed: u64,
    pub stream_restarts: u64,
    pub history_lost_recoveries: u64,
    pub checkpoints: u64,
}

impl ProjectionStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one stream restart for `reason`.
    pub fn count_restart(&self, reason: &str) {
        Self::add(&self.stream_restarts, 1);
        let mut by_reason = self
            .restarts_by_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *by_reason.entry(reason.to_string()).or_default() += 1;
    }

    /// Stream restarts so far, by reason.
    pub fn restarts_by_reason(&self) -> BTreeMap<String, u64> {
        self.restarts_by_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            received: get(&self.received),
            applied: get(&self.applied),
            duplicates: get(&self.duplicates),
            skipped: get(&self.skipped),
            healed: get(&self.healed),
            parked: get(&self.parked),
            released: get(&self.released),
            dead_lettered: get(&self.dead_lettered),
            malformed: get(&self.malformed),
            stream_restarts: get(&self.stream_restarts),
            history_lost_recoveries: get(&self.history_lost_recoveries),
            checkpoints: get(&self.checkpoints),
        }
    }
}

impl std::ops::Add for StatsSnapshot {
    type Output = StatsSnapshot;
    fn add(self, o: StatsSnapshot) -> StatsSnapshot {
        StatsSnapshot {
            received: self.received + o.received,
            applied: self.applied + o.applied,
            duplicates: self.duplicates + o.duplicates,
            skipped: self.skipped + o.skipped,
            healed: self.healed + o.healed,
            parked: self.parked + o.parked,
            released: self.released + o.released,
            dead_lettered: self.dead_lettered + o.dead_lettered,
            malformed: self.malformed + o.malformed,
            stream_restarts: self.stream_restarts + o.stream_restarts,
            history_lost_recoveries: self.history_lost_recoveries + o.history_lost_recoveries,
            checkpoints: self.checkpoints + o.checkpoints,
        }
    }
}
