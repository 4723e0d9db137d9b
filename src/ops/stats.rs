//! Per-projection counters of what happened to events, shared between the worker that counts
//! and whoever reports (the demo's summary now, the metrics endpoint later).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    /// Unix milliseconds when the stream last answered (an event or an empty batch): the
    /// liveness signal. 0 before the first answer.
    pub(crate) last_progress_ms: AtomicU64,
    /// Cluster time (seconds) of the newest handled event: the lag signal.
    pub(crate) last_event_cluster_secs: AtomicU64,
    /// True once the stream has answered with an empty batch after the last event.
    pub(crate) caught_up: AtomicBool,
    /// Cluster time (seconds) of the oldest event read but not yet handled; 0 when none.
    pub(crate) oldest_pending_cluster_secs: AtomicU64,
    /// Unix milliseconds of the last successful checkpoint write.
    pub(crate) last_checkpoint_ms: AtomicU64,
    /// Cluster time (seconds) of the newest event covered by the stored checkpoint.
    pub(crate) checkpoint_cluster_secs: AtomicU64,
    /// Duration of guarded writes (one event, or one batch).
    pub(crate) apply_seconds: DurationHistogram,
    /// The last background drift audit's findings.
    pub audit: AuditFigures,
    last_error: Mutex<Option<String>>,
    /// Events handled or in flight beyond the stored checkpoint (the crash window).
    pub(crate) beyond_checkpoint: AtomicU64,
    /// Set once the worker has begun its work: its stream answered, or its scan of the event
    /// collection started (the startup probe waits for it).
    pub started: AtomicBool,
    /// Set once the worker stopped for good ([`crate::error::StopReason`]).
    stopped: Mutex<Option<crate::error::StopReason>>,
    /// Checkpoint writes refused because a newer lease holder claimed the checkpoint.
    pub checkpoint_fenced: AtomicU64,
    /// Lease state of this worker (see [`crate::store::lease`]).
    pub lease: LeaseStats,
}

/// A worker's lease, as this instance sees it.
#[derive(Debug, Default)]
pub struct LeaseStats {
    /// Whether leases are in use at all (`[leases] enabled`).
    pub enabled: AtomicBool,
    /// This instance holds the lease and runs the worker.
    pub held: AtomicBool,
    /// The last attempt found the lease held elsewhere (or this instance at its share): the
    /// worker waits. False before the first attempt, so a starting worker is not counted as
    /// a standby one.
    pub standby: AtomicBool,
    pub acquisitions: AtomicU64,
    /// Leases lost to expiry, to another holder, or to a refused checkpoint write.
    pub losses: AtomicU64,
    /// While active: our epoch. While standby: the holder and epoch last seen.
    pub view: Mutex<LeaseView>,
    /// This instance's holder id.
    pub instance: Mutex<String>,
}

/// The lease as last seen, for `/status`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LeaseView {
    pub holder: Option<String>,
    pub epoch: i64,
}

impl LeaseStats {
    pub(crate) fn set_view(&self, holder: Option<String>, epoch: i64) {
        *self.view.lock().unwrap_or_else(|e| e.into_inner()) = LeaseView { holder, epoch };
    }

    pub fn view(&self) -> LeaseView {
        self.view.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Marks the worker as run under a lease, by the instance `holder`.
    pub(crate) fn enable(&self, holder: &str) {
        self.enabled.store(true, Ordering::Relaxed);
        *self.instance.lock().unwrap_or_else(|e| e.into_inner()) = holder.to_string();
    }

    pub fn instance(&self) -> String {
        self.instance
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Upper bounds (seconds) of the apply-duration histogram's buckets.
pub(crate) const APPLY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A fixed-bucket histogram of durations, lock-free to observe.
#[derive(Debug, Default)]
pub(crate) struct DurationHistogram {
    /// Cumulative counts are computed when read; each slot counts observations in its bucket.
    slots: [AtomicU64; APPLY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl DurationHistogram {
    pub(crate) fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = APPLY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(APPLY_BUCKETS.len());
        self.slots[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            d.as_micros().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }

    /// (cumulative counts per bucket bound, count, sum in seconds), Prometheus-style.
    pub fn read(&self) -> (Vec<(f64, u64)>, u64, f64) {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(APPLY_BUCKETS.len());
        for (i, bound) in APPLY_BUCKETS.iter().enumerate() {
            cumulative += self.slots[i].load(Ordering::Relaxed);
            buckets.push((*bound, cumulative));
        }
        let count = cumulative + self.slots[APPLY_BUCKETS.len()].load(Ordering::Relaxed);
        (
            buckets,
            count,
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        )
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one stream restart for `reason`.
    pub(crate) fn count_restart(&self, reason: &str) {
        Self::add(&self.stream_restarts, 1);
        let mut by_reason = self
            .restarts_by_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *by_reason.entry(reason.to_string()).or_default() += 1;
    }

    /// The stream answered (with events or an empty batch).
    pub(crate) fn record_progress(&self, caught_up: bool) {
        self.started.store(true, Ordering::Relaxed);
        self.last_progress_ms
            .store(unix_millis(), Ordering::Relaxed);
        self.caught_up.store(caught_up, Ordering::Relaxed);
    }

    /// An event was handled; `cluster_secs` is its cluster time when known.
    pub(crate) fn record_event_time(&self, cluster_secs: Option<u32>) {
        if let Some(t) = cluster_secs {
            self.last_event_cluster_secs
                .fetch_max(t as u64, Ordering::Relaxed);
        }
    }

    /// 0 when caught up. Otherwise the read model reflects everything before the oldest event
    /// still in flight, so the lag is how long that event has waited (`now_ms` minus its
    /// cluster time); with nothing in flight (between batches of a backlog), the newest applied
    /// event is the best known position. While the event collection is scanned, the scan's
    /// start stands for the oldest event in flight. 0 when neither is known.
    pub(crate) fn lag_seconds(&self, now_ms: u64) -> f64 {
        if self.caught_up.load(Ordering::Relaxed) {
            return 0.0;
        }
        let since = match self.oldest_pending_cluster_secs.load(Ordering::Relaxed) {
            0 => self.last_event_cluster_secs.load(Ordering::Relaxed),
            pending => pending,
        };
        match since {
            0 => 0.0,
            t => (now_ms as f64 / 1000.0 - t as f64).max(0.0),
        }
    }

    /// A scan of the event collection began (a first start from the beginning, or recovery
    /// from a lost history): the read model lacks events written up to now until it ends, so
    /// the lag counts from here. A scan retried after an error keeps the first start.
    pub(crate) fn record_scan_started(&self) {
        self.started.store(true, Ordering::Relaxed);
        let _ = self.oldest_pending_cluster_secs.compare_exchange(
            0,
            unix_millis() / 1000,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        self.record_progress(false);
    }

    /// The oldest event not yet handled changed (`None`: nothing is in flight).
    pub(crate) fn record_oldest_pending(&self, cluster_secs: Option<u32>) {
        self.oldest_pending_cluster_secs
            .store(cluster_secs.map_or(0, u64::from), Ordering::Relaxed);
    }

    pub(crate) fn record_checkpoint(&self, cluster_secs: Option<u32>) {
        Self::add(&self.checkpoints, 1);
        self.last_checkpoint_ms
            .store(unix_millis(), Ordering::Relaxed);
        if let Some(t) = cluster_secs {
            self.checkpoint_cluster_secs
                .fetch_max(t as u64, Ordering::Relaxed);
        }
    }

    /// Remembers the newest error, for the status endpoint.
    pub(crate) fn set_last_error(&self, e: impl Into<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.into());
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records that the worker stopped for good, and why.
    pub(crate) fn set_stopped(&self, reason: crate::error::StopReason) {
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
    }

    /// Why the worker stopped for good; `None` while it runs (or waits for its lease).
    pub fn stopped(&self) -> Option<crate::error::StopReason> {
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_from_the_oldest_event_in_flight() {
        let now_ms = 1_000_000_000;
        let s = ProjectionStats::default();
        assert_eq!(s.lag_seconds(now_ms), 0.0, "nothing known yet");
        // The newest applied event is an hour old, but the projection was idle since.
        s.record_event_time(Some(1_000_000 - 3600));
        s.record_progress(true);
        assert_eq!(s.lag_seconds(now_ms), 0.0, "caught up");
        // One event arrives, two seconds old: the lag is its wait, not the idle hour.
        s.record_progress(false);
        s.record_oldest_pending(Some(1_000_000 - 2));
        assert_eq!(s.lag_seconds(now_ms), 2.0);
        // A daemon that has applied nothing yet still shows its stuck first event.
        let fresh = ProjectionStats::default();
        fresh.record_progress(false);
        fresh.record_oldest_pending(Some(1_000_000 - 5));
        assert_eq!(fresh.lag_seconds(now_ms), 5.0);
        // Nothing in flight between batches: the newest applied event is the position.
        s.record_oldest_pending(None);
        assert_eq!(s.lag_seconds(now_ms), 3600.0);
    }

    #[test]
    fn a_scan_of_the_collection_is_lag_from_its_start() {
        let s = ProjectionStats::default();
        s.record_progress(true);
        s.record_scan_started();
        let started = s.oldest_pending_cluster_secs.load(Ordering::Relaxed);
        assert!(started > 0);
        assert_eq!(
            s.lag_seconds(started * 1000 + 7000),
            7.0,
            "not caught up while scanning"
        );
        // A scan retried after an error is still as far behind as the first attempt.
        s.oldest_pending_cluster_secs
            .store(started - 60, Ordering::Relaxed);
        s.record_scan_started();
        assert_eq!(s.lag_seconds(started * 1000), 60.0);
        // Done: the stream's events take over.
        s.record_oldest_pending(None);
        assert_eq!(s.lag_seconds(started * 1000), 0.0);
    }
}

/// The figures of a worker's last background drift audit, read by the metrics at scrape time.
/// The audit reports them under its own kind names, so these figures know nothing of it.
#[derive(Debug, Default)]
pub struct AuditFigures {
    /// Completed runs.
    pub runs: AtomicU64,
    /// Unix milliseconds when the last run completed; 0 before the first.
    pub last_run_ms: AtomicU64,
    /// Aggregates found by the last run, by kind.
    drift: Mutex<Vec<(&'static str, u64)>>,
}

impl AuditFigures {
    /// A completed run found `drift` (aggregates by kind).
    pub fn record(&self, drift: Vec<(&'static str, u64)>) {
        *self.drift.lock().unwrap_or_else(|p| p.into_inner()) = drift;
        self.last_run_ms.store(unix_millis(), Ordering::Relaxed);
        self.runs.fetch_add(1, Ordering::Relaxed);
    }

    /// Aggregates by kind found by the last run; empty before the first run.
    pub fn drift(&self) -> Vec<(&'static str, u64)> {
        self.drift.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A live rebuild's progress, for its logs and the rebuild metrics: the phase it is in among
/// its phases (named by the rebuild), the counters of its writes into the shadow, and the
/// newest event it read from the stream.
#[derive(Debug)]
pub struct RebuildFigures {
    phases: &'static [&'static str],
    phase: AtomicU64,
    /// Counters of the guarded writes into the shadow.
    pub stats: std::sync::Arc<ProjectionStats>,
    /// Events read by the scan in this run.
    pub scanned: AtomicU64,
}

impl RebuildFigures {
    /// Figures of a rebuild whose phases are `phases`, in order, the last one meaning done.
    pub fn new(phases: &'static [&'static str]) -> Self {
        Self {
            phases,
            phase: AtomicU64::new(0),
            stats: Default::default(),
            scanned: AtomicU64::new(0),
        }
    }

    /// Every phase, in order.
    pub fn phases(&self) -> &'static [&'static str] {
        self.phases
    }

    /// The position of the current phase in [`RebuildFigures::phases`].
    pub fn phase_index(&self) -> usize {
        (self.phase.load(Ordering::Relaxed) as usize).min(self.phases.len().saturating_sub(1))
    }

    pub fn set_phase_index(&self, index: usize) {
        self.phase.store(index as u64, Ordering::Relaxed);
    }

    /// Events read from the stream in this run.
    pub fn streamed(&self) -> u64 {
        self.stats.received.load(Ordering::Relaxed)
    }

    /// Events applied (or only sequence-advanced) to the shadow in this run.
    pub fn applied(&self) -> u64 {
        let s = self.stats.snapshot();
        s.applied + s.skipped
    }

    /// Now minus the cluster time of the newest event applied from the stream; 0 before any
    /// and once done.
    pub fn lag_seconds(&self) -> f64 {
        if self.phase_index() + 1 >= self.phases.len() {
            return 0.0;
        }
        match self.stats.last_event_cluster_secs.load(Ordering::Relaxed) {
            0 => 0.0,
            t => (unix_millis() as f64 / 1000.0 - t as f64).max(0.0),
        }
    }
}
