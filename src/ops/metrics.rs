//! The metrics catalogue and the monitor behind `/metrics`, `/healthz`, `/readyz` and
//! `/status`.
//!
//! Workers only count, into their [`ProjectionStats`]; this module turns those counters into
//! Prometheus metric families at scrape time (no I/O on the scrape path), and a background poll
//! keeps the figures that need a query fresh: parked counts, the oplog's oldest entry, and
//! whether the server answers.

use crate::config::{Config, HttpConfig};
use crate::error::StopReason;
use crate::ops::stats::RebuildFigures;
use crate::ops::stats::{ProjectionStats, unix_millis};
use crate::store::park::ParkedStore;
use bson::{Bson, Document, doc};
use mongodb::Client;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{Encoder, Registry, TextEncoder};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How a metric behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One entry of the catalogue.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

macro_rules! catalogue {
    ($($ident:ident = $name:literal, $kind:ident, $help:literal;)*) => {
        $(pub const $ident: MetricDef = MetricDef { name: $name, kind: Kind::$kind, help: $help };)*
        /// Every metric the daemon exports (besides the standard `process_*` ones), each with
        /// the label `projection` (restarts also `reason`, audit drift also `kind`).
        pub const CATALOGUE: &[MetricDef] = &[$($ident),*];
    };
}

catalogue! {
    EVENTS_RECEIVED = "mongo_projector_events_received_total", Counter, "Change events received from the stream.";
    EVENTS_APPLIED = "mongo_projector_events_applied_total", Counter, "Events applied to the read model.";
    EVENTS_SKIPPED = "mongo_projector_events_skipped_total", Counter, "Events without a handler that only advanced the sequence.";
    EVENTS_DUPLICATE = "mongo_projector_events_duplicate_total", Counter, "Redelivered events absorbed by the sequence guard.";
    GAPS_HEALED = "mongo_projector_gaps_healed_total", Counter, "Missing predecessors read back from the event collection and applied.";
    EVENTS_PARKED = "mongo_projector_events_parked", Gauge, "Events parked now, waiting for their predecessor.";
    PARKED_OLDEST = "mongo_projector_parked_oldest_timestamp_seconds", Gauge, "Unix time at which the oldest parked or dead-lettered event was first parked; absent when none is.";
    DEAD_LETTERS = "mongo_projector_dead_letters", Gauge, "Dead-lettered events waiting for an operator.";
    EVENTS_DEAD_LETTERED = "mongo_projector_events_dead_lettered_total", Counter, "Events dead-lettered (malformed, refused by the server, or a gap never filled).";
    EVENTS_MALFORMED = "mongo_projector_events_malformed_total", Counter, "Event documents that could not be decoded.";
    APPLY_DURATION = "mongo_projector_apply_duration_seconds", Histogram, "Duration of guarded writes.";
    LAG = "mongo_projector_lag_seconds", Gauge, "How long the oldest event not yet applied has waited (now minus its cluster time; the newest applied event's while between batches; the start of a scan of the event collection while one runs); 0 when caught up.";
    CHECKPOINT_WRITTEN = "mongo_projector_checkpoint_timestamp_seconds", Gauge, "Unix time of the last checkpoint write.";
    BEYOND_CHECKPOINT = "mongo_projector_events_beyond_checkpoint", Gauge, "Events handled or in flight beyond the stored checkpoint: what a kill -9 would deliver again (at most checkpoints.every_events).";
    OPLOG_HEADROOM = "mongo_projector_oplog_headroom_seconds", Gauge, "Cluster time covered by the stored checkpoint minus the oldest oplog entry's time: how long until the stored token would be lost.";
    STREAM_RESTARTS = "mongo_projector_stream_restarts_total", Counter, "Change stream re-opens, by reason.";
    HISTORY_LOST = "mongo_projector_history_lost_recoveries_total", Counter, "Recoveries from a resume token no longer in the oplog.";
    CAUGHT_UP = "mongo_projector_caught_up", Gauge, "1 when the stream's last answer was an empty batch after every event was handled.";
    STREAM_ANSWER = "mongo_projector_stream_answer_timestamp_seconds", Gauge, "Unix time at which the stream last answered (an event or an empty batch).";
    CHECKPOINTS = "mongo_projector_checkpoints_total", Counter, "Checkpoint writes.";
    AUDIT_DRIFT = "mongo_projector_audit_drift_aggregates", Gauge, "Aggregates out of step with their events at the last background audit, by kind (behind, ahead, missing, gap).";
    AUDIT_RUNS = "mongo_projector_audit_runs_total", Counter, "Completed background drift audits.";
    AUDIT_LAST_RUN = "mongo_projector_audit_last_run_timestamp_seconds", Gauge, "Unix time when the last background drift audit completed.";
    REBUILD_PHASE = "mongo_projector_rebuild_phase", Gauge, "1 for the phase a live rebuild is in (label phase: building, catching_up, swapping, done), 0 for the others.";
    REBUILD_EVENTS_SCANNED = "mongo_projector_rebuild_events_scanned_total", Counter, "Events a live rebuild read from the event collection.";
    REBUILD_EVENTS_STREAMED = "mongo_projector_rebuild_events_streamed_total", Counter, "Events a live rebuild read from the change stream after its scan.";
    REBUILD_EVENTS_APPLIED = "mongo_projector_rebuild_events_applied_total", Counter, "Events a live rebuild applied to its shadow read model.";
    REBUILD_LAG = "mongo_projector_rebuild_lag_seconds", Gauge, "Now minus the cluster time of the newest event a live rebuild read from the stream.";
    LEASE_HELD = "mongo_projector_lease_held", Gauge, "1 while this instance holds the worker's lease and runs it, 0 in standby (only with leases enabled).";
    LEASE_ACQUISITIONS = "mongo_projector_lease_acquisitions_total", Counter, "Times this instance acquired the worker's lease.";
    LEASE_LOSSES = "mongo_projector_lease_losses_total", Counter, "Leases lost while active: taken by another holder, not renewed within the ttl, or fenced.";
    CHECKPOINT_FENCED = "mongo_projector_checkpoint_fenced_total", Counter, "Checkpoint writes refused because a newer lease holder claimed the checkpoint.";
    BUILD_INFO = "mongo_projector_build_info", Gauge, "1, with the version and the source revision of this binary as labels (no projection label).";
    CONNECTED = "mongo_projector_connected", Gauge, "1 while MongoDB answers this instance's ping (every http.poll_every), 0 otherwise (no projection label).";
    WORKER_STOPPED = "mongo_projector_worker_stopped", Gauge, "1 for the reason a worker stopped for good (label reason: unauthorized, namespace, unsupported, retries_exhausted, internal), 0 for the others; all 0 while it runs.";
}

/// The metrics of live rebuilds: reported for the rebuilds a monitor watches, not for the
/// daemon's projections.
fn is_rebuild_metric(def: &MetricDef) -> bool {
    def.name.starts_with("mongo_projector_rebuild_")
}

/// Figures that need a query, refreshed by [`Monitor::poll`].
#[derive(Debug, Default)]
pub(crate) struct PolledGauges {
    pub parked: AtomicI64,
    pub dead: AtomicI64,
    /// Unix ms of the oldest parked entry's first parking; 0 when none.
    pub(crate) oldest_parked_ms: AtomicU64,
}

/// One projection as the monitor sees it.
pub struct Watched {
    pub name: String,
    pub stats: Arc<ProjectionStats>,
    pub(crate) parked_store: ParkedStore,
    pub(crate) polled: PolledGauges,
}

/// Server-wide figures.
#[derive(Debug, Default)]
pub struct ServerGauges {
    pub connected: AtomicBool,
    /// Unix ms at which the server last became reachable (its first answer, or its first after
    /// an outage): liveness counts a stream's silence from then at the earliest.
    pub(crate) reachable_since_ms: AtomicU64,
    /// Set once the daemon was initialized: connected, and every worker begun or in standby.
    pub(crate) initialized: AtomicBool,
    /// Seconds of the oldest oplog entry's `ts`; 0 when unknown (not readable there).
    pub(crate) oplog_oldest_secs: AtomicU64,
}

/// Everything the HTTP endpoints report.
pub struct Monitor {
    pub http: HttpConfig,
    pub projections: Vec<Watched>,
    pub server: ServerGauges,
    /// Live rebuilds reported by this process (`mongo-projector rebuild --metrics-address`).
    rebuilds: std::sync::Mutex<Vec<(String, Arc<RebuildFigures>)>>,
    registry: Registry,
    started: Instant,
}

/// The collector that reads the stats at scrape time.
struct ProjectorCollector {
    monitor: std::sync::Weak<Monitor>,
    descs: Vec<Desc>,
}

fn label(name: &str, value: &str) -> proto::LabelPair {
    let mut l = proto::LabelPair::default();
    l.set_name(name.to_string());
    l.set_value(value.to_string());
    l
}

fn sample(labels: Vec<proto::LabelPair>, kind: Kind, value: f64) -> proto::Metric {
    let mut m = proto::Metric::from_label(labels);
    match kind {
        Kind::Counter => {
            let mut c = proto::Counter::default();
            c.set_value(value);
            m.set_counter(c);
        }
        _ => {
            let mut g = proto::Gauge::default();
            g.set_value(value);
            m.set_gauge(g);
        }
    }
    m
}

fn family(def: MetricDef, metrics: Vec<proto::Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(def.name.to_string());
    f.set_help(def.help.to_string());
    f.set_field_type(match def.kind {
        Kind::Counter => MetricType::COUNTER,
        Kind::Gauge => MetricType::GAUGE,
        Kind::Histogram => MetricType::HISTOGRAM,
    });
    f.set_metric(metrics);
    f
}

impl Collector for ProjectorCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(monitor) = self.monitor.upgrade() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for def in CATALOGUE {
            let mut metrics = Vec::new();
            if is_rebuild_metric(def) {
                metrics = monitor.rebuild_samples(def);
            }
            if def.name == BUILD_INFO.name {
                metrics.push(sample(
                    vec![label("version", VERSION), label("revision", revision())],
                    Kind::Gauge,
                    1.0,
                ));
            }
            if def.name == CONNECTED.name {
                let connected = monitor.server.connected.load(Ordering::Relaxed);
                metrics.push(sample(
                    Vec::new(),
                    Kind::Gauge,
                    f64::from(u8::from(connected)),
                ));
            }
            for p in monitor
                .projections
                .iter()
                .filter(|_| !is_rebuild_metric(def) && !is_process_metric(def))
            {
                let labels = || vec![label("projection", &p.name)];
                match def.name {
                    n if n == STREAM_RESTARTS.name => {
                        for (reason, count) in p.stats.restarts_by_reason() {
                            metrics.push(sample(
                                vec![label("projection", &p.name), label("reason", &reason)],
                                Kind::Counter,
                                count as f64,
                            ));
                        }
                    }
                    n if n == WORKER_STOPPED.name => {
                        let stopped = p.stats.stopped();
                        for reason in StopReason::ALL.iter().filter(|r| **r != StopReason::Fenced) {
                            metrics.push(sample(
                                vec![
                                    label("projection", &p.name),
                                    label("reason", reason.label()),
                                ],
                                Kind::Gauge,
                                f64::from(u8::from(stopped == Some(*reason))),
                            ));
                        }
                    }
                    n if n == AUDIT_DRIFT.name => {
                        for (kind, count) in p.stats.audit.drift() {
                            metrics.push(sample(
                                vec![label("projection", &p.name), label("kind", kind)],
                                Kind::Gauge,
                                count as f64,
                            ));
                        }
                    }
                    n if n == APPLY_DURATION.name => {
                        let (buckets, count, sum) = p.stats.apply_seconds.read();
                        let mut h = proto::Histogram::default();
                        h.set_sample_count(count);
                        h.set_sample_sum(sum);
                        h.bucket = buckets
                            .into_iter()
                            .map(|(bound, cumulative)| {
                                let mut b = proto::Bucket::default();
                                b.set_upper_bound(bound);
                                b.set_cumulative_count(cumulative);
                                b
                            })
                            .collect();
                        let mut m = proto::Metric::from_label(labels());
                        m.set_histogram(h);
                        metrics.push(m);
                    }
                    _ => {
                        if let Some(v) = monitor.value(def, p) {
                            metrics.push(sample(labels(), def.kind, v));
                        }
                    }
                }
            }
            if !metrics.is_empty() {
                out.push(family(*def, metrics));
            }
        }
        out
    }
}

/// Gauges of a worker's own stream and checkpoint, not exported while it is in standby.
const STALE_IN_STANDBY: &[MetricDef] = &[
    LAG,
    CHECKPOINT_WRITTEN,
    BEYOND_CHECKPOINT,
    OPLOG_HEADROOM,
    CAUGHT_UP,
    STREAM_ANSWER,
];

/// Metrics of the process, not of a projection: no `projection` label.
fn is_process_metric(def: &MetricDef) -> bool {
    def.name == BUILD_INFO.name || def.name == CONNECTED.name
}

/// This binary's version.
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The source revision the running binary was built from, as the binary sets it at start-up
/// ([`set_revision`]); "unknown" otherwise (tests, benchmarks).
static REVISION: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// Called once by the binary with its build's revision (`build.rs`).
pub fn set_revision(revision: &'static str) {
    let _ = REVISION.set(revision);
}

fn revision() -> &'static str {
    REVISION.get().copied().unwrap_or("unknown")
}

/// A worker waiting for its lease: it runs no stream, so it counts neither for liveness nor
/// for readiness (a standby replica is live and ready, so a rolling update can proceed).
fn standby(p: &Watched) -> bool {
    let lease = &p.stats.lease;
    lease.enabled.load(Ordering::Relaxed)
        && lease.standby.load(Ordering::Relaxed)
        && !lease.held.load(Ordering::Relaxed)
}

/// `/status`'s lease of one worker: `active` with our epoch, `standby` with the holder (if
/// any) as last seen, `starting` before the first attempt (or while the server cannot be
/// asked), or `null` without leases.
fn lease_status(p: &Watched) -> serde_json::Value {
    let lease = &p.stats.lease;
    if !lease.enabled.load(Ordering::Relaxed) {
        return serde_json::Value::Null;
    }
    let view = lease.view();
    serde_json::json!({
        "state": if lease.held.load(Ordering::Relaxed) {
            "active"
        } else if lease.standby.load(Ordering::Relaxed) {
            "standby"
        } else {
            "starting"
        },
        "instance": lease.instance(),
        "holder": view.holder,
        "epoch": view.epoch,
        "acquisitions": lease.acquisitions.load(Ordering::Relaxed),
        "losses": lease.losses.load(Ordering::Relaxed),
    })
}

fn since_secs(unix_ms: u64) -> f64 {
    (unix_millis().saturating_sub(unix_ms)) as f64 / 1000.0
}

impl Monitor {
    /// A monitor for every projection of `config`, given each one's stats.
    pub fn new(
        config: &Config,
        client: &Client,
        stats: Vec<(String, Arc<ProjectionStats>)>,
    ) -> Arc<Monitor> {
        let projections = stats
            .into_iter()
            .filter_map(|(name, stats)| {
                let p = crate::model::partition::find_worker(config, &name)?;
                Some(Watched {
                    parked_store: ParkedStore::for_worker(
                        &client.database(&p.projection.database),
                        &p,
                    ),
                    name,
                    stats,
                    polled: PolledGauges::default(),
                })
            })
            .collect();
        let monitor = Arc::new(Monitor {
            http: config.http.clone(),
            projections,
            server: ServerGauges::default(),
            rebuilds: Default::default(),
            registry: Registry::new(),
            started: Instant::now(),
        });
        let descs = CATALOGUE
            .iter()
            .filter_map(|d| {
                let labels = if d.name == BUILD_INFO.name {
                    vec!["version".to_string(), "revision".to_string()]
                } else if d.name == CONNECTED.name {
                    Vec::new()
                } else if d.name == STREAM_RESTARTS.name || d.name == WORKER_STOPPED.name {
                    vec!["projection".to_string(), "reason".to_string()]
                } else if d.name == AUDIT_DRIFT.name {
                    vec!["projection".to_string(), "kind".to_string()]
                } else if d.name == REBUILD_PHASE.name {
                    vec!["projection".to_string(), "phase".to_string()]
                } else {
                    vec!["projection".to_string()]
                };
                Desc::new(
                    d.name.to_string(),
                    d.help.to_string(),
                    labels,
                    Default::default(),
                )
                .ok()
            })
            .collect();
        let collector = ProjectorCollector {
            monitor: Arc::downgrade(&monitor),
            descs,
        };
        if let Err(e) = monitor.registry.register(Box::new(collector)) {
            tracing::error!(error = %e, "cannot register the projector metrics");
        }
        #[cfg(target_os = "linux")]
        if let Err(e) = monitor.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )) {
            tracing::warn!(error = %e, "cannot register process metrics");
        }
        monitor
    }

    /// The value of a plain (non-histogram, non-restart) metric for one projection; `None`
    /// when it is not known yet.
    fn value(&self, def: &MetricDef, p: &Watched) -> Option<f64> {
        // A standby worker's progress figures are those of its last active period, if any:
        // absent, so that alerts on them (taking the max over instances) see the active one.
        if standby(p) && STALE_IN_STANDBY.iter().any(|d| d.name == def.name) {
            return None;
        }
        let s = p.stats.snapshot();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Some(match def.name {
            n if n == EVENTS_RECEIVED.name => s.received as f64,
            n if n == EVENTS_APPLIED.name => s.applied as f64,
            n if n == EVENTS_SKIPPED.name => s.skipped as f64,
            n if n == EVENTS_DUPLICATE.name => s.duplicates as f64,
            n if n == GAPS_HEALED.name => s.healed as f64,
            n if n == EVENTS_DEAD_LETTERED.name => s.dead_lettered as f64,
            n if n == EVENTS_MALFORMED.name => s.malformed as f64,
            n if n == HISTORY_LOST.name => s.history_lost_recoveries as f64,
            n if n == CHECKPOINTS.name => s.checkpoints as f64,
            n if n == EVENTS_PARKED.name => p.polled.parked.load(Ordering::Relaxed) as f64,
            n if n == DEAD_LETTERS.name => p.polled.dead.load(Ordering::Relaxed) as f64,
            n if n == PARKED_OLDEST.name => {
                match p.polled.oldest_parked_ms.load(Ordering::Relaxed) {
                    0 => return None,
                    ms => ms as f64 / 1000.0,
                }
            }
            n if n == LAG.name => self.lag_seconds(p),
            n if n == CHECKPOINT_WRITTEN.name => match load(&p.stats.last_checkpoint_ms) {
                0 => return None,
                ms => ms as f64 / 1000.0,
            },
            n if n == BEYOND_CHECKPOINT.name => load(&p.stats.beyond_checkpoint) as f64,
            n if n == OPLOG_HEADROOM.name => {
                let oldest = self.server.oplog_oldest_secs.load(Ordering::Relaxed);
                let covered = load(&p.stats.checkpoint_cluster_secs);
                if oldest == 0 || covered == 0 {
                    return None;
                }
                covered as f64 - oldest as f64
            }
            n if n == CAUGHT_UP.name => {
                f64::from(u8::from(p.stats.caught_up.load(Ordering::Relaxed)))
            }
            n if n == STREAM_ANSWER.name => match load(&p.stats.last_progress_ms) {
                0 => return None,
                ms => ms as f64 / 1000.0,
            },
            n if n == AUDIT_RUNS.name => load(&p.stats.audit.runs) as f64,
            n if n == AUDIT_LAST_RUN.name => match load(&p.stats.audit.last_run_ms) {
                0 => return None,
                ms => ms as f64 / 1000.0,
            },
            n if n == LEASE_HELD.name => {
                if !p.stats.lease.enabled.load(Ordering::Relaxed) {
                    return None;
                }
                f64::from(u8::from(p.stats.lease.held.load(Ordering::Relaxed)))
            }
            n if n == LEASE_ACQUISITIONS.name => load(&p.stats.lease.acquisitions) as f64,
            n if n == LEASE_LOSSES.name => load(&p.stats.lease.losses) as f64,
            n if n == CHECKPOINT_FENCED.name => load(&p.stats.checkpoint_fenced) as f64,
            _ => return None,
        })
    }

    /// Reports a live rebuild's progress under the rebuild metrics.
    pub fn watch_rebuild(&self, projection: &str, progress: Arc<RebuildFigures>) {
        if let Ok(mut rebuilds) = self.rebuilds.lock() {
            rebuilds.push((projection.to_string(), progress));
        }
    }

    fn rebuild_samples(&self, def: &MetricDef) -> Vec<proto::Metric> {
        let Ok(rebuilds) = self.rebuilds.lock() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (name, r) in rebuilds.iter() {
            let labels = || vec![label("projection", name)];
            match def.name {
                n if n == REBUILD_PHASE.name => {
                    for (i, phase) in r.phases().iter().enumerate() {
                        out.push(sample(
                            vec![label("projection", name), label("phase", phase)],
                            Kind::Gauge,
                            f64::from(u8::from(r.phase_index() == i)),
                        ));
                    }
                }
                n if n == REBUILD_EVENTS_SCANNED.name => out.push(sample(
                    labels(),
                    def.kind,
                    r.scanned.load(Ordering::Relaxed) as f64,
                )),
                n if n == REBUILD_EVENTS_STREAMED.name => {
                    out.push(sample(labels(), def.kind, r.streamed() as f64))
                }
                n if n == REBUILD_EVENTS_APPLIED.name => {
                    out.push(sample(labels(), def.kind, r.applied() as f64))
                }
                n if n == REBUILD_LAG.name => out.push(sample(labels(), def.kind, r.lag_seconds())),
                _ => {}
            }
        }
        out
    }

    /// See [`ProjectionStats::lag_seconds`].
    pub(crate) fn lag_seconds(&self, p: &Watched) -> f64 {
        p.stats.lag_seconds(unix_millis())
    }

    /// Since the stream last answered; since start before its first answer.
    pub(crate) fn seconds_since_progress(&self, p: &Watched) -> f64 {
        match p.stats.last_progress_ms.load(Ordering::Relaxed) {
            0 => self.started.elapsed().as_secs_f64(),
            ms => since_secs(ms),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// Since a running worker's stream last answered, counting no further back than the
    /// moment the server became reachable again: silence during an outage is the outage's.
    fn silent_for(&self, p: &Watched) -> f64 {
        let since_reachable = match self.server.reachable_since_ms.load(Ordering::Relaxed) {
            0 => self.started.elapsed().as_secs_f64(),
            ms => since_secs(ms),
        };
        self.seconds_since_progress(p).min(since_reachable)
    }

    /// Liveness: what a restart of the process can fix. It fails when a running worker's
    /// stream has not answered for `liveness_timeout` while MongoDB does answer: that worker
    /// is stuck. MongoDB unreachable is not the process's fault (a restart cannot fix the
    /// database), and a worker stopped for good said why (readiness reports it); neither fails
    /// liveness.
    pub fn liveness(&self) -> (bool, Vec<String>) {
        if !self.server.connected.load(Ordering::Relaxed) {
            return (true, Vec::new());
        }
        let limit = self.http.liveness_timeout.as_secs_f64();
        let stale: Vec<String> = self
            .projections
            .iter()
            .filter(|p| !standby(p) && p.stats.stopped().is_none() && self.silent_for(p) > limit)
            .map(|p| {
                format!(
                    "{}: no answer from its change stream for {:.1}s while MongoDB answers",
                    p.name,
                    self.silent_for(p)
                )
            })
            .collect();
        (stale.is_empty(), stale)
    }

    /// Readiness: this instance can do its work now. It fails while MongoDB does not answer,
    /// while a worker has not begun (its stream not answered once, its first scan not
    /// started), and once a worker stopped for good; with `http.readiness_max_lag` set, also
    /// while a projection lags more than that. The pod serves no traffic, so readiness only
    /// gates rollouts and `helm install --wait`: lag is for alerts, and off by default.
    pub fn readiness(&self) -> (bool, Vec<String>) {
        let mut problems = Vec::new();
        if !self.server.connected.load(Ordering::Relaxed) {
            problems.push("MongoDB does not answer".to_string());
        }
        for p in self.projections.iter().filter(|p| !standby(p)) {
            if let Some(reason) = p.stats.stopped() {
                problems.push(format!(
                    "{}: stopped ({}): {}",
                    p.name,
                    reason.label(),
                    p.stats.last_error().unwrap_or_default()
                ));
                continue;
            }
            if !p.stats.started.load(Ordering::Relaxed) {
                problems.push(format!("{}: not started yet", p.name));
            }
            if let Some(limit) = self.http.readiness_max_lag {
                let lag = self.lag_seconds(p);
                if lag > limit.as_secs_f64() {
                    problems.push(format!(
                        "{}: lag {lag:.1}s over {:.1}s",
                        p.name,
                        limit.as_secs_f64()
                    ));
                }
            }
        }
        (problems.is_empty(), problems)
    }

    /// Startup: the daemon has initialized once: MongoDB answered, and every worker has begun
    /// (its stream answered, or its first scan started), is in standby, or stopped with its
    /// reason. Sticky: once initialized, liveness and readiness take over.
    pub(crate) fn startup(&self) -> (bool, Vec<String>) {
        if self.server.initialized.load(Ordering::Relaxed) {
            return (true, Vec::new());
        }
        let mut waiting = Vec::new();
        if self.server.reachable_since_ms.load(Ordering::Relaxed) == 0 {
            waiting.push("MongoDB has not answered yet".to_string());
        }
        for p in &self.projections {
            let begun = standby(p)
                || p.stats.stopped().is_some()
                || p.stats.started.load(Ordering::Relaxed);
            if !begun {
                waiting.push(format!("{}: not started yet", p.name));
            }
        }
        if waiting.is_empty() {
            self.server.initialized.store(true, Ordering::Relaxed);
        }
        (waiting.is_empty(), waiting)
    }

    /// Each projection's position, lag, parked counts and last error.
    pub fn status(&self) -> serde_json::Value {
        let projections: Vec<serde_json::Value> = self
            .projections
            .iter()
            .map(|p| {
                let s = p.stats.snapshot();
                serde_json::json!({
                    "name": p.name,
                    "eventsReceived": s.received,
                    "eventsApplied": s.applied,
                    "eventsSkipped": s.skipped,
                    "duplicates": s.duplicates,
                    "gapsHealed": s.healed,
                    "lagSeconds": self.lag_seconds(p),
                    "caughtUp": p.stats.caught_up.load(Ordering::Relaxed),
                    "secondsSinceProgress": self.seconds_since_progress(p),
                    "lastEventClusterTime": p.stats.last_event_cluster_secs.load(Ordering::Relaxed),
                    "checkpointClusterTime": p.stats.checkpoint_cluster_secs.load(Ordering::Relaxed),
                    "checkpoints": s.checkpoints,
                    "parked": p.polled.parked.load(Ordering::Relaxed),
                    "deadLetters": p.polled.dead.load(Ordering::Relaxed),
                    "streamRestarts": p.stats.restarts_by_reason(),
                    "historyLostRecoveries": s.history_lost_recoveries,
                    "lastError": p.stats.last_error(),
                    "stopped": p.stats.stopped().map(|r| serde_json::json!({
                        "reason": r.label(),
                        "fix": r.fix(),
                    })),
                    "checkpointFenced": p.stats.checkpoint_fenced.load(Ordering::Relaxed),
                    "lease": lease_status(p),
                })
            })
            .collect();
        serde_json::json!({
            "connected": self.server.connected.load(Ordering::Relaxed),
            "projections": projections,
        })
    }

    /// Refreshes the polled figures once.
    pub async fn poll_once(&self, client: &Client) {
        // Bounded: while the server is away the driver would wait its whole server selection
        // timeout (30 s by default) before failing the ping.
        let wait = self
            .http
            .poll_every
            .clamp(Duration::from_secs(1), Duration::from_secs(10));
        let ping =
            tokio::time::timeout(wait, client.database("admin").run_command(doc! {"ping": 1}))
                .await;
        let answered = matches!(ping, Ok(Ok(_)));
        let was = self.server.connected.swap(answered, Ordering::Relaxed);
        if answered && (!was || self.server.reachable_since_ms.load(Ordering::Relaxed) == 0) {
            self.server
                .reachable_since_ms
                .store(unix_millis(), Ordering::Relaxed);
        }
        if !answered {
            return;
        }
        // The oldest retained oplog entry (manual: "Replica Set Oplog"); not readable on every
        // deployment (Atlas shared tiers, missing privileges), in which case headroom is absent.
        let oldest = client
            .database("local")
            .collection::<Document>("oplog.rs")
            .find_one(doc! {})
            .sort(doc! {"$natural": 1})
            .projection(doc! {"ts": 1})
            .await;
        let oldest_secs = match oldest {
            Ok(Some(d)) => match d.get("ts") {
                Some(Bson::Timestamp(ts)) => ts.time as u64,
                _ => 0,
            },
            _ => 0,
        };
        self.server
            .oplog_oldest_secs
            .store(oldest_secs, Ordering::Relaxed);
        for p in &self.projections {
            if let Ok((parked, dead)) = p.parked_store.counts().await {
                p.polled.parked.store(parked as i64, Ordering::Relaxed);
                p.polled.dead.store(dead as i64, Ordering::Relaxed);
            }
            let ms = match p.parked_store.oldest_first_parked().await {
                Ok(Some(t)) => t.timestamp_millis().max(0) as u64,
                _ => 0,
            };
            p.polled.oldest_parked_ms.store(ms, Ordering::Relaxed);
        }
    }

    /// Polls every `poll_every` until `shutdown`.
    pub(crate) async fn poll(
        self: Arc<Self>,
        client: Client,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        loop {
            self.poll_once(&client).await;
            tokio::select! {
                _ = tokio::time::sleep(self.http.poll_every) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}
